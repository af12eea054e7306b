//! Kahneman–Tversky optimisation with TRL 1.16's definitions and metric names (`KTOTrainer`,
//! <https://huggingface.co/papers/2402.01306>): `loss_type` `kto` and `apo_zero_unpaired`
//! (<https://huggingface.co/papers/2408.06266>), `beta`, `desirable_weight`, `undesirable_weight`.
//!
//! A record is a prompt, a completion and a label (desirable or not). With `x` the policy's
//! log-ratio to the reference of the completion's summed log-probability, and `z` the KL estimate:
//! - `kto`: desirable `1 - σ(β (x - z))`, undesirable `1 - σ(β (z - x))`;
//! - `apo_zero_unpaired`: desirable `1 - σ(β x)`, undesirable `σ(β x)` (no KL term).
//!
//! Each loss is multiplied by its label's weight and the micro-batch's loss is their mean over
//! its records (divided by the gradient accumulation steps). `z` is TRL's estimate: every record
//! of a micro-batch is paired with the completion of the record before it in its batch
//! ([`kiln_data::kto_examples`]), and `z` is the mean over the micro-batch of those mismatched
//! sequences' policy-to-reference log-ratios, clamped at 0, a constant of the loss (the policy's
//! log-probabilities of the KL sequences are computed without gradient, each step, before the
//! gradient pass). TRL's sampler is sequential for the KL pairing; so is this one.
//!
//! The reference log-probabilities (of the records and of their KL sequences) are computed once,
//! before the first step, with the model as it starts, as DPO's ([`crate::dpo`]): the base model
//! for a new adapter, or the starting adapter frozen (TRL's "ref" copy).
//!
//! Metrics, as TRL's `log` averages them over the step's micro-batches: `kl` (every
//! micro-batch), `rewards/chosen` and `logps/chosen` (means over the desirable records of each
//! micro-batch that has one; absent from a step without any), `rewards/rejected` and
//! `logps/rejected` likewise, `rewards/margins` (chosen minus rejected, of the micro-batches with
//! both) and `num_tokens` (input tokens trained on so far). TRL's `entropy` and `logits/*` are not
//! logged: they need the full logits, which the fused backward never forms.
use crate::error::{Result, TrainError};
use crate::model::CausalModel;
use crate::preference::{
    DpoOptions, KtoLoss, PreferenceLoss, SeqBatch, Side, check_common, sigmoid,
};
use crate::trainer::{MicroOutcome, Trainer, host_grads};
use burn::tensor::Device;
use kiln_data::{KtoExample, UnpairedIds, kto_examples};
use kiln_models::backprop::{BackpropOptions, Precision};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One optimizer step's metrics, with TRL's names in `metrics.jsonl`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KtoStepMetrics {
    pub step: usize,
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    /// The KL estimate (0 for `apo_zero_unpaired`).
    pub kl: f64,
    #[serde(rename = "rewards/chosen", skip_serializing_if = "Option::is_none")]
    pub rewards_chosen: Option<f64>,
    #[serde(rename = "logps/chosen", skip_serializing_if = "Option::is_none")]
    pub logps_chosen: Option<f64>,
    #[serde(rename = "rewards/rejected", skip_serializing_if = "Option::is_none")]
    pub rewards_rejected: Option<f64>,
    #[serde(rename = "logps/rejected", skip_serializing_if = "Option::is_none")]
    pub logps_rejected: Option<f64>,
    #[serde(rename = "rewards/margins", skip_serializing_if = "Option::is_none")]
    pub rewards_margins: Option<f64>,
    /// Input tokens trained on so far (TRL's `num_tokens`).
    pub num_tokens: u64,
    /// Input tokens of the step (without padding, KL sequences not counted).
    pub tokens: usize,
}

/// The per-micro-batch values TRL appends to its metric lists; a step logs each list's mean.
#[derive(Debug, Default)]
struct StepStats {
    kl: Vec<f64>,
    rewards_chosen: Vec<f64>,
    logps_chosen: Vec<f64>,
    rewards_rejected: Vec<f64>,
    logps_rejected: Vec<f64>,
    margins: Vec<f64>,
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// One micro-batch: its records laid out, their labels and, for `kto`, their KL sequences.
struct KtoBatch {
    main: SeqBatch,
    kl: Option<SeqBatch>,
    labels: Vec<bool>,
}

/// One record's loss and its derivative by `x`, its policy-to-reference log-ratio.
fn record_loss(loss: KtoLoss, beta: f64, desirable: bool, x: f64, kl: f64) -> (f64, f64) {
    // d/du (1 - σ(u)) = -σ(u) σ(-u), d/du σ(u) = σ(u) σ(-u).
    let ds = |u: f64| sigmoid(u) * sigmoid(-u);
    match (loss, desirable) {
        (KtoLoss::Kto, true) => {
            let u = beta * (x - kl);
            (1.0 - sigmoid(u), -beta * ds(u))
        }
        (KtoLoss::Kto, false) => {
            let u = beta * (kl - x);
            (1.0 - sigmoid(u), beta * ds(u))
        }
        (KtoLoss::ApoZeroUnpaired, true) => {
            let u = beta * x;
            (1.0 - sigmoid(u), -beta * ds(u))
        }
        (KtoLoss::ApoZeroUnpaired, false) => {
            let u = beta * x;
            (sigmoid(u), beta * ds(u))
        }
    }
}

/// The micro-batch's loss (the weighted mean over its records, divided by `accum`), the
/// derivative by each counted label's log-probability, and its metric values appended to
/// `stats`. `reference`: the reference's per-row sums; `kl`: the batch's KL estimate.
#[allow(clippy::too_many_arguments)]
fn micro_loss(
    loss_type: KtoLoss,
    options: &DpoOptions,
    batch: &KtoBatch,
    reference: &[f64],
    kl: f64,
    logps: &[f32],
    accum: usize,
    stats: &mut StepStats,
) -> (f64, Vec<f32>) {
    let n = batch.labels.len();
    let sums = batch.main.row_sums(logps);
    let scale = 1.0 / (n * accum) as f64;
    let (beta, mut loss) = (options.beta, 0.0);
    let mut d_row = vec![0f64; n];
    let (mut chosen, mut rejected) = (Vec::new(), Vec::new());
    for (i, &desirable) in batch.labels.iter().enumerate() {
        let x = sums[i] - reference[i];
        let (l, d) = record_loss(loss_type, beta, desirable, x, kl);
        let w = if desirable {
            options.desirable_weight
        } else {
            options.undesirable_weight
        };
        loss += w * l;
        d_row[i] = w * d * scale;
        let side = if desirable {
            &mut chosen
        } else {
            &mut rejected
        };
        side.push((beta * x, sums[i]));
    }
    stats.kl.push(kl);
    let means = |v: &[(f64, f64)]| {
        let k = v.len() as f64;
        (!v.is_empty()).then(|| {
            (
                v.iter().map(|p| p.0).sum::<f64>() / k,
                v.iter().map(|p| p.1).sum::<f64>() / k,
            )
        })
    };
    let (c, r) = (means(&chosen), means(&rejected));
    if let Some((rw, lp)) = c {
        stats.rewards_chosen.push(rw);
        stats.logps_chosen.push(lp);
    }
    if let Some((rw, lp)) = r {
        stats.rewards_rejected.push(rw);
        stats.logps_rejected.push(lp);
    }
    if let (Some(c), Some(r)) = (c, r) {
        stats.margins.push(c.0 - r.0);
    }
    let g = batch.main.rows.iter().map(|&r| d_row[r] as f32).collect();
    (loss * scale, g)
}

/// The reference's per-row sums of one micro-batch: of its records and of their KL sequences.
#[derive(Debug, Clone)]
struct Reference {
    main: Vec<f64>,
    kl: Option<Vec<f64>>,
}

/// A KTO run: the [`Trainer`] (AdamW, clipping, schedule, callbacks), the records with their KL
/// completions, and the reference log-probabilities.
pub struct KtoTrainer<M: CausalModel> {
    pub trainer: Trainer<M>,
    pub options: DpoOptions,
    loss: KtoLoss,
    examples: Vec<KtoExample>,
    /// Per micro-batch of an epoch (in order), the reference's sums.
    reference: Vec<Reference>,
    precision: Precision,
    /// Records left out because their prompt alone fills `max_length` (as TRL drops them).
    pub dropped: usize,
    pub history: Vec<KtoStepMetrics>,
}

fn check_options(options: &DpoOptions) -> Result<KtoLoss> {
    let PreferenceLoss::Kto(loss) = options.loss_type else {
        return Err(TrainError::option(
            "loss_type",
            "KtoTrainer trains kto or apo_zero_unpaired",
        ));
    };
    check_common(options)?;
    if loss == KtoLoss::Kto && options.batch_size < 2 {
        // TRL's check: with one record per batch the KL pair is the record itself.
        return Err(TrainError::option(
            "batch_size",
            "KTO's KL estimate pairs records within a micro-batch: at least 2",
        ));
    }
    for (key, w) in [
        ("desirable_weight", options.desirable_weight),
        ("undesirable_weight", options.undesirable_weight),
    ] {
        if !w.is_finite() || w < 0.0 {
            return Err(TrainError::option(key, "must be finite and not negative"));
        }
    }
    Ok(loss)
}

impl<M: CausalModel> KtoTrainer<M> {
    /// Takes the trainer (its model as training starts is the reference) and the tokenized
    /// records in training order; computes the reference log-probabilities of the micro-batches
    /// the first `total_steps` steps read (of the whole dataset with
    /// `precompute_ref_log_probs`).
    pub fn new(
        trainer: Trainer<M>,
        records: Vec<UnpairedIds>,
        options: DpoOptions,
        total_steps: usize,
    ) -> Result<Self> {
        let loss = check_options(&options)?;
        let (examples, dropped) = kto_examples(records, options.batch_size, options.max_length);
        if dropped > 0 {
            tracing::warn!("{dropped} records dropped: the prompt alone fills max_length");
        }
        if examples.is_empty() {
            return Err(TrainError::option("data", "no record to train on"));
        }
        let precision = trainer.options.precision.unwrap_or_else(Precision::native);
        let mut this = Self {
            trainer,
            options,
            loss,
            examples,
            reference: Vec::new(),
            precision,
            dropped,
            history: Vec::new(),
        };
        let needed = if this.options.precompute_ref_log_probs {
            this.per_epoch()
        } else {
            (total_steps * this.trainer.options.grad_accum).min(this.per_epoch())
        };
        for j in 0..needed {
            let batch = this.batch(j);
            let main = this.sums(&batch.main)?;
            let kl = batch.kl.as_ref().map(|b| this.sums(b)).transpose()?;
            this.reference.push(Reference { main, kl });
        }
        Ok(this)
    }

    /// The model's per-row completion log-probability sums of `batch`, without gradient.
    fn sums(&self, batch: &SeqBatch) -> Result<Vec<f64>> {
        let logps = self
            .trainer
            .model()
            .try_logps(&batch.input, &batch.labels, self.precision)
            .ok_or_else(no_fused_path)??;
        Ok(batch.row_sums(&logps))
    }

    /// Writes a checkpoint of the run between steps (the [`Trainer`]'s format).
    pub fn save_checkpoint(&mut self, root: &Path, keep_last: usize) -> Result<PathBuf> {
        self.trainer.save_checkpoint(root, keep_last)
    }

    /// Continues from checkpoint `dir`; `self` is built as the run started (the same starting
    /// model, records, options and `total_steps`), so the reference is the uninterrupted run's.
    pub fn resume(mut self, device: &Device, dir: &Path) -> Result<Self> {
        self.trainer = self.trainer.resumed(device, dir)?;
        Ok(self)
    }

    /// Micro-batches per epoch.
    fn per_epoch(&self) -> usize {
        self.examples.len().div_ceil(self.options.batch_size)
    }

    /// Micro-batch `j` of an epoch: its records, and their KL sequences for `kto`.
    fn batch(&self, j: usize) -> KtoBatch {
        let b = self.options.batch_size;
        let end = ((j + 1) * b).min(self.examples.len());
        let examples = &self.examples[j * b..end];
        let max = self.options.max_length;
        let lay = |seqs: Vec<Side>| {
            let refs: Vec<&Side> = seqs.iter().collect();
            SeqBatch::new(&refs, self.options.pad_id, |_| false)
        };
        let main = lay(examples.iter().map(|e| e.ids.sequence(max)).collect());
        let kl = (self.loss == KtoLoss::Kto).then(|| {
            lay(examples
                .iter()
                .map(|e| e.ids.sequence_with(&e.kl_completion, max))
                .collect())
        });
        KtoBatch {
            main,
            kl,
            labels: examples.iter().map(|e| e.ids.label).collect(),
        }
    }

    /// The KL estimate of micro-batch `j`: the mean policy-to-reference log-ratio of its KL
    /// sequences at the current weights, clamped at 0 (0 without KL sequences).
    fn kl_estimate(&self, batch: &KtoBatch, reference: &Reference) -> Result<f64> {
        let (Some(b), Some(r)) = (&batch.kl, &reference.kl) else {
            return Ok(0.0);
        };
        let policy = self.sums(b)?;
        let n = policy.len() as f64;
        // TRL reduces in f32: the mean's rounding is far below the 1e-4 the fixtures check.
        let mean = policy.iter().zip(r).map(|(p, q)| p - q).sum::<f64>() / n;
        Ok(mean.max(0.0))
    }

    /// One optimizer step over `grad_accum` micro-batches. `None` when the step was skipped
    /// (non-finite loss or gradient under the `skip` policy).
    pub fn step(&mut self) -> Result<Option<KtoStepMetrics>> {
        let accum = self.trainer.options.grad_accum;
        let start = self.trainer.state.position;
        self.trainer.begin_step();
        let mut stats = StepStats::default();
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
            let kl = self.kl_estimate(&batch, &reference)?;
            let (loss_type, opts, b, s) = (self.loss, &self.options, &batch, &mut stats);
            let model = self.trainer.model();
            let loss = Box::new(move |logps: &[f32]| {
                micro_loss(loss_type, opts, b, &reference.main, kl, logps, accum, s)
            });
            let out = model
                .try_backprop_logp(&batch.main.input, &batch.main.labels, loss, options)
                .ok_or_else(no_fused_path)??;
            let grads = host_grads(model, out.grads).ok_or_else(no_fused_path)?;
            self.trainer
                .add_micro_batch(out.loss, batch.main.tokens, grads);
        }
        let m = match self.trainer.apply_step()? {
            MicroOutcome::Stepped(m) => m,
            _ => return Ok(None),
        };
        let metrics = KtoStepMetrics {
            step: m.step,
            loss: m.loss,
            grad_norm: m.grad_norm,
            lr: m.lr,
            kl: mean(&stats.kl).unwrap_or(0.0),
            rewards_chosen: mean(&stats.rewards_chosen),
            logps_chosen: mean(&stats.logps_chosen),
            rewards_rejected: mean(&stats.rewards_rejected),
            logps_rejected: mean(&stats.logps_rejected),
            rewards_margins: mean(&stats.margins),
            num_tokens: self.trainer.state.tokens_seen,
            tokens: m.tokens,
        };
        self.history.push(metrics.clone());
        Ok(Some(metrics))
    }
}

fn no_fused_path() -> TrainError {
    TrainError::option(
        "model",
        "KTO goes through kiln's fused CPU backward, which does not cover this model or device \
         (cpu device; LoRA, DoRA without dropout, or full fine-tuning)",
    )
}
