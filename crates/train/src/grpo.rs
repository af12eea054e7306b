//! Group relative policy optimisation with TRL's definitions and metric names (`GRPOTrainer`,
//! TRL 1.16): group-normalised advantages (`scale_rewards` `group`, `batch`, `none`), the
//! clipped ratio objective (`epsilon`, `epsilon_high`), the k3 estimate of the KL to the
//! reference (`beta`; 0 = no reference pass), `num_iterations`, and `loss_type` `grpo`, `bnpo`,
//! `dr_grpo`, `dapo` with their normalisations under gradient accumulation.
//!
//! A generation batch ([`Rollouts`]) is one optimizer step's sequences: `prompts ×
//! num_generations` completions, consecutive completions of a prompt forming its group. It is
//! split into micro-batches of `batch_size` sequences in order (TRL shuffles them first; the
//! step's gradient does not depend on the split for equal micro-batches). Each micro-batch's
//! gradient comes from one fused forward and backward ([`CausalModel::try_backprop_logp`]):
//! the per-token loss is a function of each completion token's log-probability, so its
//! derivative reaches the logits directly.
//!
//! Per completion token with log-probability `p` (the policy's), `p_old` (the policy's when the
//! completion was generated: with one iteration `p` itself, detached, so the ratio is 1) and
//! `p_ref` (the reference's), advantage `A`:
//! `ℓ = -min(r A, clip(r, 1-ε_low, 1+ε_high) A) + β r (e^{p_ref-p} - (p_ref-p) - 1)`,
//! `r = e^{p-p_old}`; the KL's factor `r` is TRL 1.16's `use_bias_correction_kl` (default on;
//! off: without it). The logged `kl` is the mean of that product, as TRL's.
//!
//! The reference is the model as training starts (for a new LoRA adapter with B = 0, the base
//! model, PEFT's `disable_adapter`; for a continued adapter, that adapter frozen: TRL's "ref"
//! copy), kept as a second handle on the same frozen weights.
//!
//! Not TRL's: log-probabilities are the model's at temperature 1 (TRL divides the logits by the
//! sampling temperature before the log-softmax; the two agree at TRL's default temperature 1),
//! and no `entropy` metric (the fused head returns the labels' log-probabilities only).
use crate::error::{Result, TrainError};
use crate::model::CausalModel;
use crate::trainer::{MicroOutcome, Trainer, host_grads};
use kiln_models::DecoderInput;
use kiln_models::backprop::{BackpropOptions, Precision};
use serde::Serialize;

/// TRL's `loss_type` of GRPO (the ones with the clipped ratio objective).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GrpoLoss {
    /// Each sequence's token mean, averaged over the micro-batch's sequences.
    Grpo,
    /// Token mean over the micro-batch.
    Bnpo,
    /// Token sum over `micro-batch sequences × max_completion_length`.
    DrGrpo,
    /// Token sum over the generation batch's completion tokens (TRL's default).
    #[default]
    Dapo,
}

impl std::str::FromStr for GrpoLoss {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "grpo" => Self::Grpo,
            "bnpo" => Self::Bnpo,
            "dr_grpo" => Self::DrGrpo,
            "dapo" => Self::Dapo,
            _ => {
                return Err(TrainError::option(
                    "loss_type",
                    format!("`{s}`: expected grpo, bnpo, dr_grpo or dapo"),
                ));
            }
        })
    }
}

/// TRL's `scale_rewards`: what the advantages `r - mean(group)` are divided by (`+ 1e-4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScaleRewards {
    /// The group's standard deviation (`True`, `"group"`).
    #[default]
    Group,
    /// The generation batch's standard deviation.
    Batch,
    /// Not scaled (`False`, `"none"`; Dr. GRPO's recommendation).
    None,
}

impl std::str::FromStr for ScaleRewards {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "group" | "true" => Self::Group,
            "batch" => Self::Batch,
            "none" | "false" => Self::None,
            _ => {
                return Err(TrainError::option(
                    "scale_rewards",
                    format!("`{s}`: expected group, batch or none (true = group, false = none)"),
                ));
            }
        })
    }
}

/// The GRPO options (TRL's `GRPOConfig` names and defaults, except `batch_size`).
#[derive(Debug, Clone, PartialEq)]
pub struct GrpoOptions {
    /// KL coefficient; 0 skips the reference pass.
    pub beta: f64,
    /// Lower clipping bound `1 - epsilon` (and upper unless `epsilon_high`).
    pub epsilon: f64,
    pub epsilon_high: Option<f64>,
    pub loss_type: GrpoLoss,
    pub scale_rewards: ScaleRewards,
    /// Completions per prompt (a group).
    pub num_generations: usize,
    /// Optimizer steps on each generation batch (μ).
    pub num_iterations: usize,
    /// The longest completion generated (and `dr_grpo`'s normaliser).
    pub max_completion_length: usize,
    /// Sequences per micro-batch (TRL's `per_device_train_batch_size`).
    pub batch_size: usize,
    /// The id right padding uses.
    pub pad_id: u32,
    /// Multiply the per-token KL by the importance ratio (TRL's default, the unbiased
    /// reverse-KL gradient; also changes the gradient with one iteration).
    pub use_bias_correction_kl: bool,
}

impl Default for GrpoOptions {
    fn default() -> Self {
        Self {
            beta: 0.0,
            epsilon: 0.2,
            epsilon_high: None,
            loss_type: GrpoLoss::Dapo,
            scale_rewards: ScaleRewards::Group,
            num_generations: 8,
            num_iterations: 1,
            max_completion_length: 512,
            batch_size: 8,
            pad_id: 0,
            use_bias_correction_kl: true,
        }
    }
}

impl GrpoOptions {
    fn check(&self) -> Result<()> {
        if self.num_generations < 2 {
            return Err(TrainError::option(
                "num_generations",
                "must be at least 2 (a group's advantages are relative to its mean)",
            ));
        }
        if self.batch_size == 0 || self.num_iterations == 0 || self.max_completion_length == 0 {
            return Err(TrainError::option(
                "batch_size",
                "batch_size, num_iterations and max_completion_length must be at least 1",
            ));
        }
        let eps_ok = |e: f64| e.is_finite() && e >= 0.0;
        if !eps_ok(self.epsilon) || !self.epsilon_high.is_none_or(eps_ok) {
            return Err(TrainError::option(
                "epsilon",
                "epsilon and epsilon_high must be finite and non-negative",
            ));
        }
        if !self.beta.is_finite() || self.beta < 0.0 {
            return Err(TrainError::option(
                "beta",
                "must be finite and non-negative",
            ));
        }
        Ok(())
    }

    fn clip_range(&self) -> (f64, f64) {
        (
            1.0 - self.epsilon,
            1.0 + self.epsilon_high.unwrap_or(self.epsilon),
        )
    }
}

/// One sampled completion of a prompt and its reward.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub prompt: Vec<u32>,
    /// Generated ids (the final EOS included when generation ended on one).
    pub completion: Vec<u32>,
    /// `None`: no reward function could score it (its advantage is 0, as TRL's).
    pub reward: Option<f64>,
    /// Generation stopped at `max_completion_length` without EOS or stop string.
    pub truncated: bool,
}

/// Sample mean and Bessel-corrected standard deviation of the finite values (NaN when fewer
/// than two), as TRL's `nanmean`/`nanstd`.
pub(crate) fn nan_mean_std(values: &[f64]) -> (f64, f64) {
    let v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, f64::NAN);
    }
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// TRL's advantages of a generation batch: `r - mean(group)`, divided by `std + 1e-4` per
/// `scale`; unscored rollouts (`None`) are left out of the statistics and get 0. Also whether
/// each rollout's standard deviation is zero (TRL's `frac_reward_zero_std`).
///
/// # Shapes
/// - rewards: `[groups * num_generations]`, a group's rewards consecutive
pub fn advantages(
    rewards: &[Option<f64>],
    num_generations: usize,
    scale: ScaleRewards,
) -> (Vec<f64>, Vec<bool>) {
    let r: Vec<f64> = rewards.iter().map(|r| r.unwrap_or(f64::NAN)).collect();
    let batch_std = nan_mean_std(&r).1;
    let mut adv = Vec::with_capacity(r.len());
    let mut zero_std = Vec::with_capacity(r.len());
    for group in r.chunks(num_generations) {
        let (mean, group_std) = nan_mean_std(group);
        let std = if scale == ScaleRewards::Batch {
            batch_std
        } else {
            group_std
        };
        for &x in group {
            let a = x - mean;
            let a = if scale == ScaleRewards::None {
                a
            } else {
                a / (std + 1e-4)
            };
            adv.push(if a.is_nan() { 0.0 } else { a });
            // torch.isclose(std, 0): |std| <= 1e-8 (NaN is not close).
            zero_std.push(std.abs() <= 1e-8);
        }
    }
    (adv, zero_std)
}

/// A micro-batch of rollouts: `prompt + completion` per row, right-padded, labels on the
/// completion tokens.
pub(crate) struct SeqBatch {
    pub input: DecoderInput,
    pub labels: Vec<i64>,
    /// The row of each counted label, in the order of the labels.
    pub rows: Vec<usize>,
    /// Completion tokens per row.
    pub len: Vec<usize>,
    /// Real tokens.
    pub tokens: usize,
}

impl SeqBatch {
    pub(crate) fn new(rollouts: &[&Rollout], pad_id: u32) -> Self {
        let b = rollouts.len();
        let t = rollouts
            .iter()
            .map(|r| r.prompt.len() + r.completion.len())
            .max()
            .unwrap_or(0);
        let (mut ids, mut mask, mut labels) =
            (vec![pad_id; b * t], vec![0u8; b * t], vec![-100i64; b * t]);
        let (mut rows, mut len, mut tokens) = (Vec::new(), vec![0; b], 0);
        for (r, ro) in rollouts.iter().enumerate() {
            let p = ro.prompt.len();
            for (i, &id) in ro.prompt.iter().chain(&ro.completion).enumerate() {
                ids[r * t + i] = id;
                mask[r * t + i] = 1;
                // The first token has no prediction; a completion follows a non-empty prompt.
                if i >= p && i > 0 {
                    labels[r * t + i] = i64::from(id);
                    rows.push(r);
                    len[r] += 1;
                }
            }
            tokens += p + ro.completion.len();
        }
        Self {
            input: DecoderInput::new(ids, b, t).with_attention_mask(mask),
            labels,
            rows,
            len,
            tokens,
        }
    }

    /// `logps` (in label order) split per row.
    pub(crate) fn per_row(&self, logps: &[f32]) -> Vec<Vec<f32>> {
        let mut out: Vec<Vec<f32>> = self.len.iter().map(|&n| Vec::with_capacity(n)).collect();
        for (&lp, &r) in logps.iter().zip(&self.rows) {
            out[r].push(lp);
        }
        out
    }
}

/// A generation batch ready to train on: rollouts, advantages and, when needed, the
/// generation-time and reference log-probabilities of every completion token.
#[derive(Debug, Clone)]
pub struct Rollouts {
    pub rollouts: Vec<Rollout>,
    pub advantages: Vec<f64>,
    /// Per rollout, whether its group's (or batch's) reward standard deviation is zero.
    pub zero_std: Vec<bool>,
    /// `num_iterations > 1`: the policy's log-probabilities when the batch was generated.
    pub(crate) old: Option<Vec<Vec<f32>>>,
    /// `beta > 0`: the reference's.
    pub(crate) reference: Option<Vec<Vec<f32>>>,
    /// Optimizer steps already taken on this batch.
    pub iterations_done: usize,
}

/// The per-token loss and its derivative by `p` (see the module docs), and whether the
/// ratio was clipped low / high. `old`: `None` when the ratio is 1 (one iteration).
pub(crate) fn token_loss(
    options: &GrpoOptions,
    p: f64,
    old: Option<f64>,
    reference: Option<f64>,
    adv: f64,
) -> (f64, f64, f64, bool, bool) {
    let (lo, hi) = options.clip_range();
    let ratio = old.map_or(1.0, |o| (p - o).exp());
    let clipped = ratio.clamp(lo, hi);
    let (u1, u2) = (ratio * adv, clipped * adv);
    // torch.min's gradient goes to the smaller branch; the clipped branch has none outside
    // [lo, hi], and inside it both branches equal the unclipped one.
    let (mut loss, mut d) = if u1 <= u2 || (lo..=hi).contains(&ratio) {
        (-u1.min(u2), -adv * ratio)
    } else {
        (-u2, 0.0)
    };
    let mut kl = 0.0;
    if let Some(r) = reference {
        let x = r - p;
        kl = x.exp() - x - 1.0;
        if options.use_bias_correction_kl {
            // d(k3 · r)/dp = r (1 - e^x) + k3 r = r (p - p_ref): the ratio is differentiable even
            // where its value is 1.
            d += options.beta * ratio * (p - r);
            kl *= ratio;
        } else {
            d += options.beta * (1.0 - x.exp());
        }
        loss += options.beta * kl;
    }
    let low = ratio < lo && adv < 0.0;
    let high = ratio > hi && adv > 0.0;
    (loss, d, kl, low, high)
}

/// What one micro-batch gives the step's metrics (TRL's per-micro-batch values).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MicroStats {
    pub kl: f64,
    pub low_mean: f64,
    pub high_mean: f64,
    pub region_mean: f64,
    pub low_min: f64,
    pub high_max: f64,
}

/// The weight of each of a row's tokens in the micro-batch's loss (the loss type's
/// normalisation; `accum` micro-batches per step, `step_tokens` completion tokens in the step).
fn token_weight(
    options: &GrpoOptions,
    batch: &SeqBatch,
    row: usize,
    accum: usize,
    step_tokens: usize,
) -> f64 {
    let b = batch.len.len() as f64;
    let accum = accum as f64;
    match options.loss_type {
        GrpoLoss::Grpo => 1.0 / (b * batch.len[row].max(1) as f64 * accum),
        GrpoLoss::Bnpo => 1.0 / (batch.rows.len().max(1) as f64 * accum),
        GrpoLoss::DrGrpo => 1.0 / (b * options.max_completion_length as f64 * accum),
        GrpoLoss::Dapo => 1.0 / step_tokens.max(1) as f64,
    }
}

/// Inputs of one micro-batch's loss: per row its advantage and, when used, its old and
/// reference log-probabilities.
pub(crate) struct MicroInputs<'a> {
    pub advantages: &'a [f64],
    pub old: Option<&'a [Vec<f32>]>,
    pub reference: Option<&'a [Vec<f32>]>,
    pub accum: usize,
    pub step_tokens: usize,
}

/// The micro-batch's loss (already normalised for the step), `∂L/∂logp` of each counted
/// label, and its metrics.
pub(crate) fn micro_loss(
    options: &GrpoOptions,
    batch: &SeqBatch,
    inputs: &MicroInputs<'_>,
    logps: &[f32],
) -> (f64, Vec<f32>, MicroStats) {
    let mut pos = vec![0usize; batch.len.len()];
    let (mut loss, mut grads) = (0.0, Vec::with_capacity(logps.len()));
    let (mut kl, mut low, mut high, mut region) = (0.0, 0.0, 0.0, 0.0);
    let mut row_low = vec![0.0; batch.len.len()];
    let mut row_high = vec![0.0; batch.len.len()];
    for (&lp, &r) in logps.iter().zip(&batch.rows) {
        let i = pos[r];
        pos[r] += 1;
        let old = inputs.old.map(|o| f64::from(o[r][i]));
        let reference = inputs.reference.map(|o| f64::from(o[r][i]));
        let w = token_weight(options, batch, r, inputs.accum, inputs.step_tokens);
        let (l, d, k, lo, hi) =
            token_loss(options, f64::from(lp), old, reference, inputs.advantages[r]);
        loss += w * l;
        grads.push((w * d) as f32);
        kl += k;
        low += f64::from(u8::from(lo));
        high += f64::from(u8::from(hi));
        region += f64::from(u8::from(lo || hi));
        row_low[r] += f64::from(u8::from(lo));
        row_high[r] += f64::from(u8::from(hi));
    }
    let n = logps.len().max(1) as f64;
    let seq_mean = |v: &[f64]| -> Vec<f64> {
        v.iter()
            .zip(&batch.len)
            .filter(|&(_, &l)| l > 0)
            .map(|(x, &l)| x / l as f64)
            .collect()
    };
    let stats = MicroStats {
        kl: kl / n,
        low_mean: low / n,
        high_mean: high / n,
        region_mean: region / n,
        low_min: seq_mean(&row_low).into_iter().fold(f64::NAN, f64::min),
        high_max: seq_mean(&row_high).into_iter().fold(f64::NAN, f64::max),
    };
    (loss, grads, stats)
}

/// One optimizer step's metrics, with TRL's names in `metrics.jsonl`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GrpoStepMetrics {
    pub step: usize,
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    pub reward: f64,
    pub reward_std: f64,
    pub frac_reward_zero_std: f64,
    /// The mean per-token k3 KL to the reference (only with `beta > 0`, as TRL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl: Option<f64>,
    #[serde(rename = "completions/mean_length")]
    pub mean_length: f64,
    #[serde(rename = "completions/min_length")]
    pub min_length: f64,
    #[serde(rename = "completions/max_length")]
    pub max_length: f64,
    /// Completions cut at `max_completion_length`.
    #[serde(rename = "completions/clipped_ratio")]
    pub clipped_ratio: f64,
    #[serde(rename = "clip_ratio/low_mean")]
    pub clip_low_mean: f64,
    #[serde(rename = "clip_ratio/high_mean")]
    pub clip_high_mean: f64,
    #[serde(rename = "clip_ratio/region_mean")]
    pub clip_region_mean: f64,
    #[serde(rename = "clip_ratio/low_min")]
    pub clip_low_min: f64,
    #[serde(rename = "clip_ratio/high_max")]
    pub clip_high_max: f64,
    /// Input tokens of the step (prompts and completions, without padding).
    pub tokens: usize,
    /// Seconds generating the step's completions (0 on the further iterations of a batch).
    pub generation_s: f64,
    /// Seconds of reference and old log-probabilities, forward, backward and update.
    pub training_s: f64,
    /// Groups left out of the step because none of their completions got a reward.
    pub skipped_groups: usize,
}

fn no_fused_path() -> TrainError {
    TrainError::option(
        "model",
        "GRPO goes through kiln's fused CPU backward, which does not cover this model or device \
         (cpu device; LoRA, DoRA without dropout, or full fine-tuning)",
    )
}

/// GRPO's optimisation half: the [`Trainer`] (AdamW, clipping, schedule, callbacks), the
/// reference (the model as training started, when `beta > 0`) and the options. Generation
/// and rewards are `GrpoTrainer`'s; this takes [`Rollout`]s from anywhere.
pub struct GrpoLearner<M: CausalModel> {
    pub trainer: Trainer<M>,
    pub options: GrpoOptions,
    reference: Option<M>,
    precision: Precision,
}

impl<M: CausalModel> GrpoLearner<M> {
    /// Takes the trainer; its model as it is now is the reference when `beta > 0`.
    pub fn new(trainer: Trainer<M>, options: GrpoOptions) -> Result<Self> {
        options.check()?;
        let precision = trainer.options.precision.unwrap_or_else(Precision::native);
        let reference = (options.beta > 0.0).then(|| trainer.model().clone());
        Ok(Self {
            trainer,
            options,
            reference,
            precision,
        })
    }

    /// The precision of the training step's products (the trainer's, or the CPU's native one),
    /// which the rollouts sample in too.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Holds every quantized matrix of the frozen base also in the bf16 kernel's layout, once
    /// for the run ([`kiln_models::CausalLm::hold_bf16_weights`]; 2 bytes per base weight
    /// more): the base never changes, so the layout made here serves every bf16 product by it
    /// for the whole run — the rollouts' prefill and batched decoding, the policy's forward
    /// and the reference's log-probabilities (policy and reference share the matrices) —
    /// while the adapters' A and B, which change every step, are read as they are at each
    /// product. Returns the bytes added.
    ///
    /// # Errors
    /// When training is not in bf16 (f32 products never read the layout), after the first
    /// optimizer step, or when the model has no quantized matrix.
    pub fn hold_bf16_weights(&mut self) -> Result<usize> {
        if self.precision != Precision::Bf16 {
            return Err(TrainError::option(
                "bf16_weights",
                "bf16 weights serve bf16 products: train with precision bf16",
            ));
        }
        if self.trainer.state.step > 0 {
            return Err(TrainError::option(
                "bf16_weights",
                "hold the bf16 weights before the first step (the reference is the model as \
                 training starts)",
            ));
        }
        // The reference is a clone sharing the policy's matrices: dropped and cloned again
        // after, so both share the one layout instead of a second copy being made for it.
        let had_reference = self.reference.take().is_some();
        let lm = self.trainer.model_mut().causal_lm_mut();
        lm.set_precision(Precision::Bf16);
        let held = lm.hold_bf16_weights();
        if had_reference {
            self.reference = Some(self.trainer.model().clone());
        }
        Ok(held?)
    }

    /// Continues from checkpoint `dir`: `self` built as the run started (its reference too),
    /// the trainable weights, AdamW state and step from the checkpoint.
    pub(crate) fn resume(
        mut self,
        device: &burn::tensor::Device,
        dir: &std::path::Path,
    ) -> Result<Self> {
        self.trainer = self.trainer.resumed(device, dir)?;
        Ok(self)
    }

    /// Sequences per optimizer step: `batch_size × grad_accum`.
    pub fn step_sequences(&self) -> usize {
        self.options.batch_size * self.trainer.options.grad_accum
    }

    /// The micro-batches of a generation batch, in order.
    fn micro_batches<'a>(&self, rollouts: &'a [Rollout]) -> Vec<Vec<&'a Rollout>> {
        rollouts
            .chunks(self.options.batch_size)
            .map(|c| c.iter().collect())
            .collect()
    }

    /// Per rollout, its completion tokens' log-probabilities under `model`.
    fn logps_of(&self, model: &M, rollouts: &[Rollout]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(rollouts.len());
        for micro in self.micro_batches(rollouts) {
            let batch = SeqBatch::new(&micro, self.options.pad_id);
            let logps = model
                .try_logps(&batch.input, &batch.labels, self.precision)
                .ok_or_else(no_fused_path)??;
            out.extend(batch.per_row(&logps));
        }
        Ok(out)
    }

    /// Advantages, and the old and reference log-probabilities the loss needs, of a generation
    /// batch (`groups × num_generations` rollouts, groups consecutive).
    pub fn prepare(&self, rollouts: Vec<Rollout>) -> Result<Rollouts> {
        let g = self.options.num_generations;
        if rollouts.is_empty() || !rollouts.len().is_multiple_of(g) {
            return Err(TrainError::option(
                "num_generations",
                format!(
                    "{} rollouts do not make whole groups of {g}",
                    rollouts.len()
                ),
            ));
        }
        if let Some(i) = rollouts
            .iter()
            .position(|r| r.prompt.is_empty() || r.completion.is_empty())
        {
            return Err(TrainError::Batch {
                index: i,
                reason: "a rollout needs a non-empty prompt and completion".into(),
            });
        }
        let rewards: Vec<Option<f64>> = rollouts.iter().map(|r| r.reward).collect();
        let (advantages, zero_std) = advantages(&rewards, g, self.options.scale_rewards);
        let old = if self.options.num_iterations > 1 {
            Some(self.logps_of(self.trainer.model(), &rollouts)?)
        } else {
            None
        };
        let reference = match &self.reference {
            Some(m) => Some(self.logps_of(m, &rollouts)?),
            None => None,
        };
        Ok(Rollouts {
            rollouts,
            advantages,
            zero_std,
            old,
            reference,
            iterations_done: 0,
        })
    }

    /// One optimizer step on `batch` (all its rollouts, in micro-batches of `batch_size`).
    /// `None` when the step was skipped (non-finite loss or gradient under the `skip` policy).
    pub fn step(&mut self, batch: &mut Rollouts) -> Result<Option<GrpoStepMetrics>> {
        let start = std::time::Instant::now();
        let micros = self.micro_batches(&batch.rollouts);
        let accum = micros.len();
        let step_tokens: usize = batch.rollouts.iter().map(|r| r.completion.len()).sum();
        let options = BackpropOptions {
            checkpoint: self.trainer.options.gradient_checkpointing,
            precision: self.precision,
        };
        self.trainer.begin_step();
        let mut stats = MicroStats::default();
        let mut first = 0;
        for micro in &micros {
            let n = micro.len();
            let range = first..first + n;
            first += n;
            let seq = SeqBatch::new(micro, self.options.pad_id);
            let inputs = MicroInputs {
                advantages: &batch.advantages[range.clone()],
                old: batch.old.as_ref().map(|o| &o[range.clone()]),
                reference: batch.reference.as_ref().map(|o| &o[range.clone()]),
                accum,
                step_tokens,
            };
            let mut micro_stats = MicroStats::default();
            let (opts, s, m) = (&self.options, &seq, &mut micro_stats);
            let loss = Box::new(move |logps: &[f32]| {
                let (loss, g, st) = micro_loss(opts, s, &inputs, logps);
                *m = st;
                (loss, g)
            });
            let model = self.trainer.model();
            let out = model
                .try_backprop_logp(&seq.input, &seq.labels, loss, options)
                .ok_or_else(no_fused_path)??;
            let grads = host_grads(model, out.grads).ok_or_else(no_fused_path)?;
            self.trainer.add_micro_batch(out.loss, seq.tokens, grads);
            let k = 1.0 / accum as f64;
            stats.kl += micro_stats.kl * k;
            stats.low_mean += micro_stats.low_mean * k;
            stats.high_mean += micro_stats.high_mean * k;
            stats.region_mean += micro_stats.region_mean * k;
            stats.low_min += micro_stats.low_min * k;
            stats.high_max += micro_stats.high_max * k;
        }
        batch.iterations_done += 1;
        let m = match self.trainer.apply_step()? {
            MicroOutcome::Stepped(m) => m,
            _ => return Ok(None),
        };
        let mut metrics = batch_metrics(batch);
        metrics.step = m.step;
        metrics.loss = m.loss;
        metrics.grad_norm = m.grad_norm;
        metrics.lr = m.lr;
        metrics.tokens = m.tokens;
        metrics.kl = (self.options.beta > 0.0).then_some(stats.kl);
        metrics.clip_low_mean = stats.low_mean;
        metrics.clip_high_mean = stats.high_mean;
        metrics.clip_region_mean = stats.region_mean;
        metrics.clip_low_min = stats.low_min;
        metrics.clip_high_max = stats.high_max;
        metrics.training_s = start.elapsed().as_secs_f64();
        Ok(Some(metrics))
    }
}

/// The generation batch's reward and length metrics.
fn batch_metrics(batch: &Rollouts) -> GrpoStepMetrics {
    let rewards: Vec<f64> = batch
        .rollouts
        .iter()
        .map(|r| r.reward.unwrap_or(f64::NAN))
        .collect();
    let (reward, reward_std) = nan_mean_std(&rewards);
    let lens: Vec<f64> = batch
        .rollouts
        .iter()
        .map(|r| r.completion.len() as f64)
        .collect();
    let n = lens.len().max(1) as f64;
    GrpoStepMetrics {
        reward,
        reward_std,
        frac_reward_zero_std: batch.zero_std.iter().filter(|&&z| z).count() as f64 / n,
        mean_length: lens.iter().sum::<f64>() / n,
        min_length: lens.iter().copied().fold(f64::INFINITY, f64::min),
        max_length: lens.iter().copied().fold(0.0, f64::max),
        clipped_ratio: batch.rollouts.iter().filter(|r| r.truncated).count() as f64 / n,
        ..GrpoStepMetrics::default()
    }
}
