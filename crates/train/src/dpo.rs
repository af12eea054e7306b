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
//! The reference log-probabilities are computed once, before the first step (for the
//! micro-batches the run's steps read, or the whole dataset with TRL's
//! `precompute_ref_log_probs`), kept per pair, with the model as it starts: for a new LoRA adapter (B = 0) that is the base model (PEFT's
//! `disable_adapter`), and when training continues from an existing adapter it is that adapter,
//! frozen, as TRL's "ref" copy. One model in memory, and the same host forward as the policy's,
//! so at step 0 policy and reference agree bit for bit (the sigmoid loss is exactly ln 2).
use crate::error::{Result, TrainError};
use crate::model::CausalModel;
use crate::orpo_cpo::{self, RefFree};
use crate::preference::{
    DpoLoss, DpoOptions, PairBatch, PairStats, PreferenceLoss, Side, check_common, log_sigmoid,
    sigmoid,
};
use crate::trainer::{MicroOutcome, Trainer, host_grads};
use burn::tensor::Device;
use kiln_data::{AnswerIds, PreferenceIds};
use kiln_models::backprop::{BackpropOptions, Precision};
use serde::Serialize;
use std::path::{Path, PathBuf};

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
    /// ORPO and CPO: the chosen sequences' cross-entropy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nll_loss: Option<f64>,
    /// ORPO: the mean of `log σ(L)`, `L` the log odds ratio.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_odds_ratio: Option<f64>,
    /// ORPO: the mean of `L`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_odds_chosen: Option<f64>,
    /// Input tokens of the step (prompt and completions, without padding).
    pub tokens: usize,
}

/// One pair's loss and its derivatives by the chosen and the rejected log-probability sums.
/// `chosen`/`rejected`: the policy's log-ratio to the reference of each; `lengths`: their
/// completion tokens (for `ipo`).
pub(crate) fn pair_loss(
    options: &DpoOptions,
    loss: DpoLoss,
    chosen: f64,
    rejected: f64,
    lengths: (usize, usize),
) -> (f64, f64, f64) {
    let beta = options.beta;
    let u = beta * (chosen - rejected);
    // (loss, dloss/du) for the losses of u = β Δ.
    let of_u = |loss: f64, d: f64| (loss, beta * d, -beta * d);
    match loss {
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

/// The micro-batch's loss (its pairs' mean times `scale`), the derivative by each counted
/// label's log-probability, and its metrics. `reference`: the reference's row sums.
fn micro_loss(
    options: &DpoOptions,
    loss_type: DpoLoss,
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
        let (l, dc, dr) = pair_loss(options, loss_type, c, r, lengths);
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
                ..PairStats::default()
            },
            mean,
        );
    }
    let g = batch.rows.iter().map(|&r| d_row[r] as f32).collect();
    (loss * scale, g, stats)
}

/// The tokenized pairs a preference run trains on: as TRL's `DPOTrainer` makes them, or as
/// its experimental `ORPOTrainer`/`CPOTrainer` do (see [`kiln_data::AnswerIds`]).
#[derive(Debug, Clone)]
pub enum PreferencePairs {
    Dpo(Vec<PreferenceIds>),
    Answers(Vec<AnswerIds>),
}

impl From<Vec<PreferenceIds>> for PreferencePairs {
    fn from(p: Vec<PreferenceIds>) -> Self {
        Self::Dpo(p)
    }
}

impl From<Vec<AnswerIds>> for PreferencePairs {
    fn from(p: Vec<AnswerIds>) -> Self {
        Self::Answers(p)
    }
}

impl PreferencePairs {
    /// Each pair's chosen and rejected sequences, truncated per `options`.
    fn sides(self, options: &DpoOptions) -> Vec<[Side; 2]> {
        let (max, mode) = (options.max_length, options.truncation);
        match self {
            Self::Dpo(p) => p
                .iter()
                .map(|p| [p.sequence(false, max, mode), p.sequence(true, max, mode)])
                .collect(),
            Self::Answers(p) => p
                .iter()
                .map(|p| [p.sequence(false, max), p.sequence(true, max)])
                .collect(),
        }
    }
}

/// A preference run (DPO, ORPO or CPO): the [`Trainer`] (AdamW, clipping, schedule,
/// callbacks), the tokenized pairs and, for DPO, the reference log-probabilities.
pub struct DpoTrainer<M: CausalModel> {
    pub trainer: Trainer<M>,
    pub options: DpoOptions,
    pairs: Vec<[Side; 2]>,
    /// DPO: per pair in training order, the reference's chosen and rejected log-probability
    /// sums (`None` for pairs no step of the run reads, unless precomputed).
    reference: Vec<Option<[f64; 2]>>,
    precision: Precision,
    /// Pairs left out because truncation leaves a side without a completion token to count
    /// (TRL's `DPOTrainer` drops them under `keep_start`; its ORPO/CPO would average over
    /// zero tokens and train on NaN).
    pub dropped: usize,
    pub history: Vec<DpoStepMetrics>,
}

fn check_options(options: &DpoOptions) -> Result<()> {
    if let PreferenceLoss::Kto(_) = options.loss_type {
        return Err(TrainError::option(
            "loss_type",
            "KTO trains on unpaired records: use KtoTrainer (run_kto)",
        ));
    }
    check_common(options)
}

impl<M: CausalModel> DpoTrainer<M> {
    /// Takes the trainer (for DPO its model as training starts is the reference) and the pairs
    /// in training order; for DPO computes the reference log-probabilities of the
    /// micro-batches the first `total_steps` steps read.
    pub fn new(
        trainer: Trainer<M>,
        pairs: impl Into<PreferencePairs>,
        options: DpoOptions,
        total_steps: usize,
    ) -> Result<Self> {
        check_options(&options)?;
        let all = pairs.into().sides(&options);
        let before = all.len();
        // A side needs a completion label past position 0 (the first token has no prediction).
        let pairs: Vec<[Side; 2]> = all
            .into_iter()
            .filter(|p| p.iter().all(|(_, m)| m.iter().skip(1).any(|&c| c)))
            .collect();
        let dropped = before - pairs.len();
        if dropped > 0 {
            tracing::warn!(
                "{dropped} pairs dropped: truncation to max_length leaves no completion"
            );
        }
        if pairs.is_empty() {
            return Err(TrainError::option("data", "no preference pair to train on"));
        }
        let precision = trainer.options.precision.unwrap_or_else(Precision::native);
        let mut this = Self {
            trainer,
            options,
            reference: vec![None; pairs.len()],
            pairs,
            precision,
            dropped,
            history: Vec::new(),
        };
        if this.options.loss_type.needs_reference() {
            this.compute_reference(total_steps)?;
        }
        Ok(this)
    }

    /// The reference's log-probability sums of every pair the first `total_steps` steps read
    /// (of every pair with `precompute_ref_log_probs`), in the training micro-batches.
    fn compute_reference(&mut self, total_steps: usize) -> Result<()> {
        let needed = if self.options.precompute_ref_log_probs {
            self.per_epoch()
        } else {
            (total_steps * self.trainer.options.grad_accum).min(self.per_epoch())
        };
        let b = self.options.batch_size;
        for j in 0..needed {
            let batch = self.batch(j);
            let logps = self
                .trainer
                .model()
                .try_logps(&batch.input, &batch.labels, self.precision)
                .ok_or_else(no_fused_path)??;
            let sums = batch.row_sums(&logps);
            let n = batch.pairs;
            for p in 0..n {
                self.reference[j * b + p] = Some([sums[p], sums[n + p]]);
            }
        }
        Ok(())
    }

    /// Per pair in training order, the reference's summed log-probabilities of the chosen and
    /// the rejected completion (TRL's `ref_chosen_logps`, `ref_rejected_logps`); `None` for a
    /// pair no step reads (without `precompute_ref_log_probs`) and for the reference-free
    /// losses.
    pub fn ref_log_probs(&self) -> &[Option<[f64; 2]>] {
        &self.reference
    }

    /// The reference's row sums of micro-batch `j` (chosen rows, then rejected).
    fn batch_reference(&self, j: usize) -> Result<Vec<f64>> {
        let b = self.options.batch_size;
        let end = ((j + 1) * b).min(self.pairs.len());
        let pairs = self.reference[j * b..end]
            .iter()
            .map(|r| {
                r.ok_or_else(|| {
                    TrainError::option(
                        "max_steps",
                        "more steps than the reference was computed for",
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(pairs
            .iter()
            .map(|r| r[0])
            .chain(pairs.iter().map(|r| r[1]))
            .collect())
    }

    /// Writes a checkpoint of the run between steps under `root` (the [`Trainer`]'s format:
    /// trainable weights, AdamW state, step and data position), keeping the newest `keep_last`.
    pub fn save_checkpoint(&mut self, root: &Path, keep_last: usize) -> Result<PathBuf> {
        self.trainer.save_checkpoint(root, keep_last)
    }

    /// Continues from checkpoint `dir`. `self` is built as the run started (the same starting
    /// model, pairs, options and `total_steps`), so a DPO reference is computed from the
    /// starting weights exactly as the uninterrupted run's; the trainable weights, the AdamW
    /// state and the position then come from the checkpoint, and the steps that follow equal
    /// the uninterrupted run's bit for bit.
    pub fn resume(mut self, device: &Device, dir: &Path) -> Result<Self> {
        self.trainer = self.trainer.resumed(device, dir)?;
        Ok(self)
    }

    /// Micro-batches per epoch.
    fn per_epoch(&self) -> usize {
        self.pairs.len().div_ceil(self.options.batch_size)
    }

    /// Micro-batch `j` of an epoch.
    fn batch(&self, j: usize) -> PairBatch {
        let b = self.options.batch_size;
        let end = ((j + 1) * b).min(self.pairs.len());
        let pairs: Vec<&[Side; 2]> = self.pairs[j * b..end].iter().collect();
        let orpo = self.options.loss_type == PreferenceLoss::Orpo;
        PairBatch::new(&pairs, self.options.pad_id, orpo)
    }

    /// The loss closure's body for micro-batch `j`: DPO against its reference, or ORPO/CPO.
    #[allow(clippy::type_complexity)]
    fn loss_fn(
        &self,
        j: usize,
    ) -> Result<Box<dyn Fn(&DpoOptions, &PairBatch, &[f32], usize) -> (f64, Vec<f32>, PairStats)>>
    {
        let o = &self.options;
        Ok(match (o.loss_type, o.loss_type.ref_free()) {
            (PreferenceLoss::Dpo(kind), _) => {
                let reference = self.batch_reference(j)?;
                Box::new(move |o, b, logps, accum| micro_loss(o, kind, b, &reference, logps, accum))
            }
            (_, Some(loss)) => {
                Box::new(move |o: &DpoOptions, b: &PairBatch, logps: &[f32], accum| {
                    let h = RefFree {
                        loss,
                        beta: o.beta,
                        label_smoothing: o.label_smoothing,
                        cpo_alpha: o.cpo_alpha,
                        simpo_gamma: o.simpo_gamma,
                    };
                    orpo_cpo::micro_loss(&h, b, logps, accum)
                })
            }
            (_, None) => return Err(TrainError::option("loss_type", "no loss")),
        })
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
            let body = self.loss_fn(j)?;
            let mut micro = PairStats::default();
            let model = self.trainer.model();
            let (opts, b, m) = (&self.options, &batch, &mut micro);
            let loss = Box::new(move |logps: &[f32]| {
                let (loss, g, s) = body(opts, b, logps, accum);
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
        let loss = self.options.loss_type;
        let orpo = loss == PreferenceLoss::Orpo;
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
            nll_loss: (!loss.needs_reference()).then_some(stats.nll_loss),
            log_odds_ratio: orpo.then_some(stats.log_odds_ratio),
            log_odds_chosen: orpo.then_some(stats.log_odds_chosen),
            tokens: m.tokens,
        };
        self.history.push(metrics.clone());
        Ok(Some(metrics))
    }
}

fn no_fused_path() -> TrainError {
    TrainError::option(
        "model",
        "preference training goes through kiln's fused CPU backward, which does not cover this model or \
         device (cpu device; LoRA, DoRA without dropout, or full fine-tuning)",
    )
}
