//! What the preference trainers share: the loss kinds ([`PreferenceLoss`] and TRL's `loss_type`
//! of each family), the options ([`DpoOptions`]: TRL's `DPOConfig`, `ORPOConfig`, `CPOConfig` and
//! `KTOConfig` names), the batch layout of TRL's collators and the log-sigmoid.
//!
//! A module of its own so that the DPO, ORPO/CPO and KTO trainers each depend on it and not on
//! one another.
use crate::error::{Result, TrainError};
use kiln_data::TruncationMode;
use kiln_models::DecoderInput;

/// TRL's `loss_type` of the DPO family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DpoLoss {
    /// `-log σ(β Δ)`.
    #[default]
    Sigmoid,
    /// `(Δ_avg - 1 / (2β))²` on the log-ratios averaged over each completion's tokens.
    Ipo,
    /// `relu(1 - β Δ)`.
    Hinge,
    /// `(-(1 - ε) log σ(β Δ) + ε log σ(-β Δ)) / (1 - 2ε)`, ε the label smoothing.
    Robust,
}

impl std::str::FromStr for DpoLoss {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "sigmoid" => Self::Sigmoid,
            "ipo" => Self::Ipo,
            "hinge" => Self::Hinge,
            "robust" => Self::Robust,
            _ => {
                return Err(TrainError::option(
                    "loss_type",
                    format!("`{s}`: expected sigmoid, ipo, hinge or robust"),
                ));
            }
        })
    }
}

/// The preference options (TRL's `DPOConfig`, `ORPOConfig`, `CPOConfig` and `KTOConfig` names).
#[derive(Debug, Clone, PartialEq)]
pub struct DpoOptions {
    /// β of DPO and CPO, λ of ORPO.
    pub beta: f64,
    pub loss_type: PreferenceLoss,
    /// ε of DPO's robust loss and CPO's sigmoid and simpo losses, in `[0, 0.5)`.
    pub label_smoothing: f64,
    /// CPO: the weight of the chosen completions' cross-entropy (TRL default 1).
    pub cpo_alpha: f64,
    /// SimPO's target reward margin γ (TRL default 0.5).
    pub simpo_gamma: f64,
    /// KTO: the weight of the desirable records' losses (TRL default 1).
    pub desirable_weight: f64,
    /// KTO: the weight of the undesirable records' losses (TRL default 1).
    pub undesirable_weight: f64,
    /// Pairs (KTO: records) per micro-batch.
    pub batch_size: usize,
    /// Tokens per sequence (prompt + completion), truncated per `truncation`.
    pub max_length: Option<usize>,
    pub truncation: TruncationMode,
    /// The id right padding uses.
    pub pad_id: u32,
    /// DPO and KTO: compute the reference log-probabilities of the whole dataset in one pass
    /// before training (TRL's `precompute_ref_log_probs`), kept per record, instead of only
    /// those of the micro-batches the run's steps read. Either way kiln computes the reference
    /// once, before the first step, in the training micro-batches (so the values are the same
    /// bit for bit): no step runs a reference forward (TRL without this option runs one per
    /// step).
    pub precompute_ref_log_probs: bool,
}

impl Default for DpoOptions {
    fn default() -> Self {
        Self {
            beta: 0.1,
            loss_type: PreferenceLoss::Dpo(DpoLoss::Sigmoid),
            label_smoothing: 0.0,
            cpo_alpha: 1.0,
            simpo_gamma: 0.5,
            desirable_weight: 1.0,
            undesirable_weight: 1.0,
            batch_size: 1,
            max_length: Some(1024),
            truncation: TruncationMode::KeepStart,
            pad_id: 0,
            precompute_ref_log_probs: false,
        }
    }
}

/// TRL's KTO `loss_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KtoLoss {
    /// Desirable `1 - σ(β (x - z))`, undesirable `1 - σ(β (z - x))`, `z` the KL estimate.
    #[default]
    Kto,
    /// Desirable `1 - σ(β x)`, undesirable `σ(β x)`.
    ApoZeroUnpaired,
}

/// TRL's CPO `loss_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpoLoss {
    /// `-(1 - ε) log σ(β x) - ε log σ(-β x)`, `x` on summed log-probabilities.
    Sigmoid,
    /// `relu(1 - β x)`, summed log-probabilities.
    Hinge,
    /// `(x - 1 / (2β))²`, averaged log-probabilities.
    Ipo,
    /// The sigmoid loss of `x - γ / β`, averaged log-probabilities.
    Simpo,
}

/// Which preference loss a run trains with (the `--loss` of the `dpo` example).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreferenceLoss {
    /// TRL's `DPOTrainer` (a reference model).
    Dpo(DpoLoss),
    /// TRL's `ORPOTrainer` (no reference model).
    Orpo,
    /// TRL's `CPOTrainer` (no reference model).
    Cpo(CpoLoss),
    /// TRL's `KTOTrainer` (a reference model; unpaired records, [`KtoTrainer`](crate::KtoTrainer)).
    Kto(KtoLoss),
}

impl Default for PreferenceLoss {
    fn default() -> Self {
        Self::Dpo(DpoLoss::Sigmoid)
    }
}

impl From<DpoLoss> for PreferenceLoss {
    fn from(l: DpoLoss) -> Self {
        Self::Dpo(l)
    }
}

impl std::str::FromStr for PreferenceLoss {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "orpo" => Self::Orpo,
            "cpo" | "cpo_sigmoid" => Self::Cpo(CpoLoss::Sigmoid),
            "cpo_hinge" => Self::Cpo(CpoLoss::Hinge),
            "cpo_ipo" => Self::Cpo(CpoLoss::Ipo),
            "simpo" => Self::Cpo(CpoLoss::Simpo),
            "kto" => Self::Kto(KtoLoss::Kto),
            "apo_zero_unpaired" => Self::Kto(KtoLoss::ApoZeroUnpaired),
            _ => Self::Dpo(s.parse().map_err(|_| {
                TrainError::option(
                    "loss_type",
                    format!(
                        "`{s}`: expected sigmoid, ipo, hinge, robust (DPO), orpo, cpo, \
                         cpo_hinge, cpo_ipo, simpo, kto or apo_zero_unpaired (KTO)"
                    ),
                )
            })?),
        })
    }
}

impl PreferenceLoss {
    /// Whether the loss compares with a reference model (DPO, KTO) or not (ORPO, CPO).
    pub fn needs_reference(self) -> bool {
        matches!(self, Self::Dpo(_) | Self::Kto(_))
    }

    /// Whether the loss trains on unpaired records (KTO).
    pub fn unpaired(self) -> bool {
        matches!(self, Self::Kto(_))
    }
}

/// The checks every preference loss shares.
pub(crate) fn check_common(options: &DpoOptions) -> Result<()> {
    if options.batch_size == 0 {
        return Err(TrainError::option("batch_size", "must be at least 1"));
    }
    if options.beta.is_nan() || options.beta <= 0.0 {
        return Err(TrainError::option("beta", "must be positive"));
    }
    if !(0.0..0.5).contains(&options.label_smoothing) {
        return Err(TrainError::option("label_smoothing", "must be in [0, 0.5)"));
    }
    if !options.cpo_alpha.is_finite() || !options.simpo_gamma.is_finite() {
        return Err(TrainError::option(
            "cpo_alpha",
            "cpo_alpha and simpo_gamma must be finite",
        ));
    }
    Ok(())
}

/// One side of a pair: its ids and which of them are completion tokens.
pub(crate) type Side = (Vec<u32>, Vec<bool>);

/// Sequences laid out for one fused forward as TRL's collators do: right-padded rows, labels on
/// the completion tokens (and on the prompt tokens of the rows `prompt_labels` picks).
pub(crate) struct SeqBatch {
    pub input: DecoderInput,
    pub labels: Vec<i64>,
    /// The row of each counted label, in the order of the labels.
    pub rows: Vec<usize>,
    /// Whether each counted label is a completion token.
    pub completion: Vec<bool>,
    /// Completion tokens per row (TRL's unshifted completion mask, for DPO's `ipo`).
    pub completion_len: Vec<usize>,
    /// Counted completion labels per row (TRL's shifted loss mask, for averages).
    pub counted: Vec<usize>,
    /// Real tokens.
    pub tokens: usize,
}

impl SeqBatch {
    /// # Shapes
    /// - `input`: `[rows, longest sequence]`; `labels` likewise, flattened
    pub(crate) fn new(seqs: &[&Side], pad_id: u32, prompt_labels: impl Fn(usize) -> bool) -> Self {
        let t = seqs.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        let b = seqs.len();
        let (mut ids, mut mask, mut labels) =
            (vec![pad_id; b * t], vec![0u8; b * t], vec![-100i64; b * t]);
        let (mut rows, mut completion, mut tokens) = (Vec::new(), Vec::new(), 0);
        let (mut completion_len, mut counted) = (vec![0; b], vec![0; b]);
        for (r, (s, comp)) in seqs.iter().enumerate() {
            for (i, (&id, &c)) in s.iter().zip(comp).enumerate() {
                ids[r * t + i] = id;
                mask[r * t + i] = 1;
                completion_len[r] += usize::from(c);
                if c || prompt_labels(r) {
                    labels[r * t + i] = i64::from(id);
                    if i > 0 {
                        rows.push(r);
                        completion.push(c);
                        counted[r] += usize::from(c);
                    }
                }
            }
            tokens += s.len();
        }
        Self {
            input: DecoderInput::new(ids, b, t).with_attention_mask(mask),
            labels,
            rows,
            completion,
            completion_len,
            counted,
            tokens,
        }
    }

    /// Per row, the sum of its counted completion labels' log-probabilities.
    pub(crate) fn row_sums(&self, logps: &[f32]) -> Vec<f64> {
        let mut sums = vec![0f64; self.completion_len.len()];
        for ((&lp, &r), &c) in logps.iter().zip(&self.rows).zip(&self.completion) {
            if c {
                sums[r] += f64::from(lp);
            }
        }
        sums
    }
}

/// A micro-batch of pairs laid out as TRL's collator does: rows `0..n` chosen, `n..2n`
/// rejected, right-padded; labels on completion tokens (and, for ORPO's cross-entropy, on the
/// chosen prompts).
pub(crate) struct PairBatch {
    pub seqs: SeqBatch,
    pub pairs: usize,
}

impl std::ops::Deref for PairBatch {
    type Target = SeqBatch;
    fn deref(&self) -> &SeqBatch {
        &self.seqs
    }
}

impl PairBatch {
    /// `chosen_prompt_labels`: also label the chosen rows' prompt tokens (ORPO).
    pub(crate) fn new(pairs: &[&[Side; 2]], pad_id: u32, chosen_prompt_labels: bool) -> Self {
        let seqs: Vec<&Side> = (0..2)
            .flat_map(|side| pairs.iter().map(move |p| &p[side]))
            .collect();
        let n = pairs.len();
        Self {
            seqs: SeqBatch::new(&seqs, pad_id, |r| chosen_prompt_labels && r < n),
            pairs: n,
        }
    }
}

/// `log σ(x) = min(x, 0) - ln(1 + e^{-|x|})`, stable for large |x|.
pub(crate) fn log_sigmoid(x: f64) -> f64 {
    x.min(0.0) - (-x.abs()).exp().ln_1p()
}

pub(crate) fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// What one micro-batch's pairs give the step's metrics (means over its pairs).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PairStats {
    pub rewards_chosen: f64,
    pub rewards_rejected: f64,
    pub accuracies: f64,
    pub margins: f64,
    pub logps_chosen: f64,
    pub logps_rejected: f64,
    pub log_odds_ratio: f64,
    pub log_odds_chosen: f64,
    pub nll_loss: f64,
}

impl PairStats {
    pub(crate) fn add(&mut self, o: &PairStats, k: f64) {
        self.rewards_chosen += o.rewards_chosen * k;
        self.rewards_rejected += o.rewards_rejected * k;
        self.accuracies += o.accuracies * k;
        self.margins += o.margins * k;
        self.logps_chosen += o.logps_chosen * k;
        self.logps_rejected += o.logps_rejected * k;
        self.log_odds_ratio += o.log_odds_ratio * k;
        self.log_odds_chosen += o.log_odds_chosen * k;
        self.nll_loss += o.nll_loss * k;
    }
}
