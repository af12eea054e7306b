//! Direct preference optimisation with TRL's definitions and metric names (`DPOTrainer`,
//! TRL 1.16): `loss_type` `sigmoid`, `ipo`, `hinge`, `robust` (with `label_smoothing`), `beta`.
//!
//! A pair's log-probability under a model is the sum of its completion tokens' log-probabilities
//! (prompt and padding masked). A micro-batch holds the chosen sequences then the rejected ones,
//! right-padded, as TRL's collator lays them out; its loss is the mean over its pairs, divided
//! by the gradient accumulation steps. The gradient comes from one fused forward and backward
//! ([`CausalModel::try_backprop_logp`]): the loss is a function of the per-token
//! log-probabilities, so its derivative by each reaches the logits directly.
//!
//! The reference log-probabilities are computed once, before the first step, with the model
//! as it starts: for a new LoRA adapter (B = 0) that is the base model (PEFT's
//! `disable_adapter`), and when training continues from an existing adapter it is that adapter,
//! frozen, as TRL's "ref" copy. One model in memory, and the same host forward as the policy's,
//! so at step 0 policy and reference agree bit for bit (the sigmoid loss is exactly ln 2).
use crate::error::{Result, TrainError};
use crate::model::CausalModel;
use crate::trainer::{MicroOutcome, Trainer, host_grads};
use kiln_data::{PreferenceIds, TruncationMode};
use kiln_models::DecoderInput;
use kiln_models::backprop::{BackpropOptions, Precision};
use serde::Serialize;

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

/// The DPO-specific options (TRL's `DPOConfig` names).
#[derive(Debug, Clone, PartialEq)]
pub struct DpoOptions {
    pub beta: f64,
    pub loss_type: DpoLoss,
    /// ε of the robust loss, in `[0, 0.5)`.
    pub label_smoothing: f64,
    /// Pairs per micro-batch.
    pub batch_size: usize,
    /// Tokens per sequence (prompt + completion), truncated per `truncation`.
    pub max_length: Option<usize>,
    pub truncation: TruncationMode,
    /// The id right padding uses.
    pub pad_id: u32,
}

impl Default for DpoOptions {
    fn default() -> Self {
        Self {
            beta: 0.1,
            loss_type: DpoLoss::Sigmoid,
            label_smoothing: 0.0,
            batch_size: 1,
            max_length: Some(1024),
            truncation: TruncationMode::KeepStart,
            pad_id: 0,
        }
    }
}

/// One optimizer step's metrics, with TRL's names in `metrics.jsonl`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DpoStepMetrics {
    pub step: usize,
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    #[serde(rename = "rewards/chosen")]
    pub rewards_chosen: f64,
    #[serde(rename = "rewards/rejected")]
    pub rewards_rejected: f64,
    #[serde(rename = "rewards/accuracies")]
    pub rewards_accuracies: f64,
    #[serde(rename = "rewards/margins")]
    pub rewards_margins: f64,
    #[serde(rename = "logps/chosen")]
    pub logps_chosen: f64,
    #[serde(rename = "logps/rejected")]
    pub logps_rejected: f64,
    /// Input tokens of the step (prompt and completions, without padding).
    pub tokens: usize,
}

/// A micro-batch of pairs laid out as TRL's collator does: rows `0..n` chosen, `n..2n`
/// rejected, right-padded; labels only on completion tokens.
pub(crate) struct PairBatch {
    pub input: DecoderInput,
    pub labels: Vec<i64>,
    /// The row of each counted label, in the order of the labels.
    pub rows: Vec<usize>,
    /// Completion tokens per row (TRL's unshifted completion mask, for `ipo`).
    pub completion_len: Vec<usize>,
    pub pairs: usize,
    /// Real tokens.
    pub tokens: usize,
}

impl PairBatch {
    pub(crate) fn new(pairs: &[&PreferenceIds], options: &DpoOptions) -> Self {
        let seqs: Vec<(Vec<u32>, Vec<bool>)> = [false, true]
            .into_iter()
            .flat_map(|rejected| {
                pairs
                    .iter()
                    .map(move |p| p.sequence(rejected, options.max_length, options.truncation))
            })
            .collect();
        let t = seqs.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        let b = seqs.len();
        let (mut ids, mut mask, mut labels) = (
            vec![options.pad_id; b * t],
            vec![0u8; b * t],
            vec![-100i64; b * t],
        );
        let (mut rows, mut completion_len, mut tokens) = (Vec::new(), Vec::new(), 0);
        for (r, (s, completion)) in seqs.iter().enumerate() {
            for (i, (&id, &c)) in s.iter().zip(completion).enumerate() {
                ids[r * t + i] = id;
                mask[r * t + i] = 1;
                if c {
                    labels[r * t + i] = i64::from(id);
                    if i > 0 {
                        rows.push(r);
                    }
                }
            }
            completion_len.push(completion.iter().filter(|&&c| c).count());
            tokens += s.len();
        }
        Self {
            input: DecoderInput::new(ids, b, t).with_attention_mask(mask),
            labels,
            rows,
            completion_len,
            pairs: pairs.len(),
            tokens,
        }
    }

    /// Per row, the sum of its counted labels' log-probabilities.
    pub(crate) fn row_sums(&self, logps: &[f32]) -> Vec<f64> {
        let mut sums = vec![0f64; 2 * self.pairs];
        for (&lp, &r) in logps.iter().zip(&self.rows) {
            sums[r] += f64::from(lp);
        }
        sums
    }
}

/// `log σ(x) = min(x, 0) - ln(1 + e^{-|x|})`, stable for large |x|.
fn log_sigmoid(x: f64) -> f64 {
    x.min(0.0) - (-x.abs()).exp().ln_1p()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// One pair's loss and its derivatives by the chosen and the rejected log-probability sums.
/// `chosen`/`rejected`: the policy's log-ratio to the reference of each; `lengths`: their
/// completion tokens (for `ipo`).
pub(crate) fn pair_loss(
    options: &DpoOptions,
    chosen: f64,
    rejected: f64,
    lengths: (usize, usize),
) -> (f64, f64, f64) {
    let beta = options.beta;
    let u = beta * (chosen - rejected);
    // (loss, dloss/du) for the losses of u = β Δ.
    let of_u = |loss: f64, d: f64| (loss, beta * d, -beta * d);
    match options.loss_type {
        DpoLoss::Sigmoid => of_u(-log_sigmoid(u), -sigmoid(-u)),
        DpoLoss::Hinge => {
            let m = 1.0 - u;
            of_u(m.max(0.0), if m > 0.0 { -1.0 } else { 0.0 })
        }
        DpoLoss::Robust => {
            let e = options.label_smoothing;
            let loss = (-(1.0 - e) * log_sigmoid(u) + e * log_sigmoid(-u)) / (1.0 - 2.0 * e);
            let d = (-(1.0 - e) * sigmoid(-u) - e * sigmoid(u)) / (1.0 - 2.0 * e);
            of_u(loss, d)
        }
        DpoLoss::Ipo => {
            let (lc, lr) = (lengths.0.max(1) as f64, lengths.1.max(1) as f64);
            let m = chosen / lc - rejected / lr - 1.0 / (2.0 * beta);
            (m * m, 2.0 * m / lc, -2.0 * m / lr)
        }
    }
}

/// What one micro-batch's pairs give the step's metrics (means over its pairs).
#[derive(Debug, Clone, Copy, Default)]
struct PairStats {
    rewards_chosen: f64,
    rewards_rejected: f64,
    accuracies: f64,
    margins: f64,
    logps_chosen: f64,
    logps_rejected: f64,
}

impl PairStats {
    fn add(&mut self, o: &PairStats, k: f64) {
        self.rewards_chosen += o.rewards_chosen * k;
        self.rewards_rejected += o.rewards_rejected * k;
        self.accuracies += o.accuracies * k;
        self.margins += o.margins * k;
        self.logps_chosen += o.logps_chosen * k;
        self.logps_rejected += o.logps_rejected * k;
    }
}

/// The micro-batch's loss (its pairs' mean times `scale`), the derivative by each counted
/// label's log-probability, and its metrics. `reference`: the reference's row sums.
fn micro_loss(
    options: &DpoOptions,
    batch: &PairBatch,
    reference: &[f64],
    logps: &[f32],
    accum: usize,
) -> (f64, Vec<f32>, PairStats) {
    let n = batch.pairs;
    let sums = batch.row_sums(logps);
    let scale = 1.0 / (n * accum) as f64;
    let mut d_row = vec![0f64; 2 * n];
    let (mut loss, mut stats) = (0.0, PairStats::default());
    let mean = 1.0 / n as f64;
    for p in 0..n {
        let (c, r) = (sums[p] - reference[p], sums[n + p] - reference[n + p]);
        let lengths = (batch.completion_len[p], batch.completion_len[n + p]);
        let (l, dc, dr) = pair_loss(options, c, r, lengths);
        loss += l;
        d_row[p] = dc * scale;
        d_row[n + p] = dr * scale;
        let (rc, rr) = (options.beta * c, options.beta * r);
        stats.add(
            &PairStats {
                rewards_chosen: rc,
                rewards_rejected: rr,
                accuracies: f64::from(u8::from(rc > rr)),
                margins: rc - rr,
                logps_chosen: sums[p],
                logps_rejected: sums[n + p],
            },
            mean,
        );
    }
    let g = batch.rows.iter().map(|&r| d_row[r] as f32).collect();
    (loss * scale, g, stats)
}

/// A DPO run: the [`Trainer`] (AdamW, clipping, schedule, callbacks), the tokenized pairs and
/// the reference log-probabilities.
pub struct DpoTrainer<M: CausalModel> {
    pub trainer: Trainer<M>,
    pub options: DpoOptions,
    pairs: Vec<PreferenceIds>,
    /// Per micro-batch of an epoch (in order), the reference's per-row sums.
    reference: Vec<Vec<f64>>,
    precision: Precision,
    /// Pairs left out because their prompt alone fills `max_length` under `keep_start` (TRL
    /// drops them: no completion token would remain).
    pub dropped: usize,
    pub history: Vec<DpoStepMetrics>,
}

impl<M: CausalModel> DpoTrainer<M> {
    /// Takes the trainer (its model as training starts is the reference) and the pairs in
    /// training order; computes the reference log-probabilities of the micro-batches the
    /// first `total_steps` steps read.
    pub fn new(
        trainer: Trainer<M>,
        pairs: Vec<PreferenceIds>,
        options: DpoOptions,
        total_steps: usize,
    ) -> Result<Self> {
        if options.batch_size == 0 {
            return Err(TrainError::option("batch_size", "must be at least 1"));
        }
        if options.beta.is_nan() || options.beta <= 0.0 {
            return Err(TrainError::option("beta", "must be positive"));
        }
        if !(0.0..0.5).contains(&options.label_smoothing) {
            return Err(TrainError::option("label_smoothing", "must be in [0, 0.5)"));
        }
        let before = pairs.len();
        let pairs: Vec<PreferenceIds> = match (options.max_length, options.truncation) {
            (Some(max), TruncationMode::KeepStart) => {
                pairs.into_iter().filter(|p| p.prompt.len() < max).collect()
            }
            _ => pairs,
        };
        let dropped = before - pairs.len();
        if dropped > 0 {
            tracing::warn!("{dropped} pairs dropped: their prompt alone fills max_length");
        }
        if pairs.is_empty() {
            return Err(TrainError::option("data", "no preference pair to train on"));
        }
        let precision = trainer.options.precision.unwrap_or_else(Precision::native);
        let mut this = Self {
            trainer,
            options,
            pairs,
            reference: Vec::new(),
            precision,
            dropped,
            history: Vec::new(),
        };
        let needed = (total_steps * this.trainer.options.grad_accum).min(this.per_epoch());
        for j in 0..needed {
            let batch = this.batch(j);
            let logps = this
                .trainer
                .model()
                .try_logps(&batch.input, &batch.labels, precision)
                .ok_or_else(no_fused_path)??;
            this.reference.push(batch.row_sums(&logps));
        }
        Ok(this)
    }

    /// Micro-batches per epoch.
    fn per_epoch(&self) -> usize {
        self.pairs.len().div_ceil(self.options.batch_size)
    }

    /// Micro-batch `j` of an epoch.
    fn batch(&self, j: usize) -> PairBatch {
        let b = self.options.batch_size;
        let end = ((j + 1) * b).min(self.pairs.len());
        let pairs: Vec<&PreferenceIds> = self.pairs[j * b..end].iter().collect();
        PairBatch::new(&pairs, &self.options)
    }

    /// One optimizer step over `grad_accum` micro-batches. `None` when the step was skipped
    /// (non-finite loss or gradient under the `skip` policy).
    pub fn step(&mut self) -> Result<Option<DpoStepMetrics>> {
        let accum = self.trainer.options.grad_accum;
        let start = self.trainer.state.position;
        self.trainer.begin_step();
        let mut stats = PairStats::default();
        let options = BackpropOptions {
            checkpoint: self.trainer.options.gradient_checkpointing,
            precision: self.precision,
        };
        for a in 0..accum {
            let j = ((start + a as u64) % self.per_epoch() as u64) as usize;
            let batch = self.batch(j);
            let reference = self.reference.get(j).cloned().ok_or_else(|| {
                TrainError::option(
                    "max_steps",
                    "more steps than the reference was computed for",
                )
            })?;
            let mut micro = PairStats::default();
            let model = self.trainer.model();
            let (opts, b, m) = (&self.options, &batch, &mut micro);
            let loss = Box::new(move |logps: &[f32]| {
                let (loss, g, s) = micro_loss(opts, b, &reference, logps, accum);
                *m = s;
                (loss, g)
            });
            let out = model
                .try_backprop_logp(&batch.input, &batch.labels, loss, options)
                .ok_or_else(no_fused_path)??;
            let grads = host_grads(model, out.grads).ok_or_else(no_fused_path)?;
            self.trainer.add_micro_batch(out.loss, batch.tokens, grads);
            stats.add(&micro, 1.0 / accum as f64);
        }
        let m = match self.trainer.apply_step()? {
            MicroOutcome::Stepped(m) => m,
            _ => return Ok(None),
        };
        let metrics = DpoStepMetrics {
            step: m.step,
            loss: m.loss,
            grad_norm: m.grad_norm,
            lr: m.lr,
            rewards_chosen: stats.rewards_chosen,
            rewards_rejected: stats.rewards_rejected,
            rewards_accuracies: stats.accuracies,
            rewards_margins: stats.margins,
            logps_chosen: stats.logps_chosen,
            logps_rejected: stats.logps_rejected,
            tokens: m.tokens,
        };
        self.history.push(metrics.clone());
        Ok(Some(metrics))
    }
}

fn no_fused_path() -> TrainError {
    TrainError::option(
        "model",
        "DPO trains through kiln's fused CPU backward, which does not cover this model or \
         device (cpu device; LoRA, DoRA without dropout, or full fine-tuning)",
    )
}
