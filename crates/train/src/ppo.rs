//! Proximal policy optimisation with TRL's definitions and metric names (the `PPOTrainer` TRL
//! kept in `trl/experimental/ppo` until it was removed before 1.16; the fixture generator
//! `tools/fixtures/trl_ppo.py` says which version): a policy, a frozen reference, a value model
//! (a [`SequenceClassifier`](kiln_models::SequenceClassifier) with one label, its `score` head
//! read at every token) and rollouts scored by a reward model or a function.
//!
//! One update on a batch of rollouts ([`PpoLearner::prepare`], then [`PpoLearner::update`]):
//! 1. the policy's and the reference's log-probabilities of each completion token, and the
//!    value model's value before each completion token and after the last one;
//! 2. the score minus `missing_eos_penalty` when the completion has no EOS; per token the
//!    non-score reward `-kl_coef · kl` (`k1`: `p - p_ref`; `k3`: `e^x - 1 - x`, `x = p_ref - p`),
//!    the score added one column after the last token (TRL's `sequence_length + 1`; on the last
//!    token when the completion is the batch's longest); optionally whitened (`whiten_rewards`);
//! 3. GAE (`gamma`, `lam`) back from the last column, returns = advantages + values, and the
//!    advantages whitened over every completion token of the batch (unbiased variance);
//! 4. `num_ppo_epochs` passes over the batch in a shuffled order, split into `num_mini_batches`
//!    optimizer steps of micro-batches of `batch_size` rollouts; per micro-batch the clipped
//!    policy loss `mean max(-A r, -A clip(r, 1 ± cliprange))` over its completion tokens and
//!    the clipped value loss `0.5 mean max((v - R)², (clip(v, v_old ± cliprange_value) - R)²)`
//!    over its value columns, `pg_loss + vf_coef · vf_loss` divided by the micro-batches of the
//!    step. The policy's gradient comes from the fused log-probability head
//!    ([`CausalModel::try_backprop_logp`]), the value model's from the fused `score` head read
//!    at every value column ([`kiln_models::SequenceClassifier::try_backprop_scores_at`]).
//!
//! The two models keep their own [`Trainer`] (AdamW is per parameter, so two optimizers with
//! TRL's one set of hyperparameters are the same update as TRL's single optimizer over both;
//! TRL's PPO does not clip gradients: give both trainers `max_grad_norm: None` to match it).
//!
//! Not TRL's (each documented where it matters): log-probabilities at temperature 1 (TRL
//! divides the logits by `temperature + 1e-7`; the fixture uses 1, where the two agree to
//! 1e-7); no `policy/entropy_avg` (the fused head returns the labels' log-probabilities only);
//! padding is read from the completion lengths, not from pad-id tokens (the same unless a
//! completion contains the pad id); with `num_mini_batches > 1` TRL's accelerate accumulation
//! steps only every `gradient_accumulation_steps` micro-batches and averages its statistics
//! with unfilled zeros, kiln steps once per mini-batch and averages the filled ones (the two
//! agree at TRL's default of 1 mini-batch).
use crate::error::{Result, TrainError};
use crate::grpo::{Rollout, SeqBatch};
use crate::model::CausalModel;
use crate::reward::ClassifierModel;
use crate::trainer::{MicroOutcome, Trainer, host_grads};
use burn::module::Module;
use kiln_models::backprop::{BackpropOptions, Precision};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::Serialize;

/// TRL's `kl_estimator`: the per-token estimate of KL(policy ‖ reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KlEstimator {
    /// `log π - log π_ref` (unbiased, can be negative).
    #[default]
    K1,
    /// `e^x - 1 - x` with `x = log π_ref - log π` (unbiased, non-negative, lower variance).
    K3,
}

impl std::str::FromStr for KlEstimator {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "k1" => Ok(Self::K1),
            "k3" => Ok(Self::K3),
            _ => Err(TrainError::option(
                "kl_estimator",
                format!("`{s}`: expected k1 or k3"),
            )),
        }
    }
}

impl KlEstimator {
    /// The estimate at one token from the policy's and the reference's log-probabilities.
    pub fn estimate(self, logp: f64, ref_logp: f64) -> f64 {
        let x = ref_logp - logp;
        match self {
            Self::K1 => -x,
            Self::K3 => x.exp() - 1.0 - x,
        }
    }
}

/// The PPO options (TRL's `PPOConfig` names and defaults, except `batch_size` and `seed`).
#[derive(Debug, Clone, PartialEq)]
pub struct PpoOptions {
    pub kl_coef: f64,
    pub kl_estimator: KlEstimator,
    /// Policy ratio clipping `1 ± cliprange`.
    pub cliprange: f64,
    /// Value clipping `v_old ± cliprange_value`.
    pub cliprange_value: f64,
    pub vf_coef: f64,
    pub gamma: f64,
    pub lam: f64,
    pub whiten_rewards: bool,
    pub num_ppo_epochs: usize,
    pub num_mini_batches: usize,
    /// Subtracted from the score of a completion without EOS.
    pub missing_eos_penalty: Option<f64>,
    /// Rollouts per micro-batch (TRL's `per_device_train_batch_size`).
    pub batch_size: usize,
    pub eos_id: u32,
    /// The id right padding uses.
    pub pad_id: u32,
    /// Seeds the epochs' shuffles ([`PpoLearner::update`]).
    pub seed: u64,
}

impl Default for PpoOptions {
    fn default() -> Self {
        Self {
            kl_coef: 0.05,
            kl_estimator: KlEstimator::K1,
            cliprange: 0.2,
            cliprange_value: 0.2,
            vf_coef: 0.1,
            gamma: 1.0,
            lam: 0.95,
            whiten_rewards: false,
            num_ppo_epochs: 4,
            num_mini_batches: 1,
            missing_eos_penalty: None,
            batch_size: 1,
            eos_id: 2,
            pad_id: 0,
            seed: 0,
        }
    }
}

impl PpoOptions {
    fn check(&self) -> Result<()> {
        if self.batch_size == 0 || self.num_ppo_epochs == 0 || self.num_mini_batches == 0 {
            return Err(TrainError::option(
                "batch_size",
                "batch_size, num_ppo_epochs and num_mini_batches must be at least 1",
            ));
        }
        let finite = [
            ("kl_coef", self.kl_coef),
            ("cliprange", self.cliprange),
            ("cliprange_value", self.cliprange_value),
            ("vf_coef", self.vf_coef),
            ("gamma", self.gamma),
            ("lam", self.lam),
            (
                "missing_eos_penalty",
                self.missing_eos_penalty.unwrap_or(0.0),
            ),
        ];
        for (key, v) in finite {
            if !v.is_finite() || v < 0.0 {
                return Err(TrainError::option(key, "must be finite and non-negative"));
            }
        }
        Ok(())
    }
}

/// TRL's generalised advantage estimate of one rollout: from the last column back,
/// `δ_t = r_t + γ V_{t+1} - V_t`, `A_t = δ_t + γ λ A_{t+1}`, with `V` past the end 0.
///
/// # Shapes
/// - rewards, values: `[columns]` (the rollout's value columns); output `[columns]`
pub fn gae(rewards: &[f64], values: &[f64], gamma: f64, lam: f64) -> Vec<f64> {
    let mut adv = vec![0.0; rewards.len()];
    let mut last = 0.0;
    for t in (0..rewards.len()).rev() {
        let next = values.get(t + 1).copied().unwrap_or(0.0);
        let delta = rewards[t] + gamma * next - values[t];
        last = delta + gamma * lam * last;
        adv[t] = last;
    }
    adv
}

/// TRL's `masked_whiten` over every value of every row: `(x - mean) / sqrt(var + 1e-8)` with
/// the unbiased variance, the mean added back unless `shift_mean`.
///
/// # Errors
/// [`TrainError::Option`] for fewer than two values (TRL's "the sum of the mask is zero").
pub fn whiten(rows: &mut [Vec<f64>], shift_mean: bool) -> Result<()> {
    let n: usize = rows.iter().map(Vec::len).sum();
    if n < 2 {
        return Err(TrainError::option(
            "batch_size",
            "whitening needs at least two tokens in the batch",
        ));
    }
    let mean = rows.iter().flatten().sum::<f64>() / n as f64;
    let var = rows
        .iter()
        .flatten()
        .map(|x| (x - mean).powi(2))
        .sum::<f64>()
        / (n - 1) as f64;
    let inv = 1.0 / (var + 1e-8).sqrt();
    for x in rows.iter_mut().flatten() {
        *x = (*x - mean) * inv + if shift_mean { 0.0 } else { mean };
    }
    Ok(())
}

/// One rollout's tensors of an update, per completion token (`n`) or value column (`m`:
/// `n + 1`, or `n` when the completion is the batch's longest).
#[derive(Debug, Clone, PartialEq)]
pub struct PpoRow {
    /// The policy's log-probabilities when the batch was prepared, `[n]`.
    pub logprobs: Vec<f32>,
    pub ref_logprobs: Vec<f32>,
    /// The value model's values, `[m]`.
    pub values: Vec<f32>,
    /// The score after `missing_eos_penalty`.
    pub score: f64,
    /// Per-token KL estimate, `[n]`.
    pub kl: Vec<f64>,
    /// `-kl_coef · kl`, `[n]`.
    pub non_score_reward: Vec<f64>,
    /// Rewards (`[m]`) as GAE reads them.
    pub rewards: Vec<f64>,
    /// Whitened advantages, `[n]`.
    pub advantages: Vec<f64>,
    /// Advantages (before whitening) plus values, `[m]`.
    pub returns: Vec<f64>,
}

/// A batch of rollouts ready for an update.
#[derive(Debug, Clone)]
pub struct PpoBatch {
    pub rollouts: Vec<Rollout>,
    pub rows: Vec<PpoRow>,
    /// The longest completion (TRL's response columns).
    pub columns: usize,
    /// Seconds spent generating the rollouts (the caller's; reported in the metrics).
    pub generation_s: f64,
    /// Seconds of [`PpoLearner::prepare`]'s forwards.
    pub prepare_s: f64,
}

/// What one micro-batch gives the update's metrics (TRL's per-micro-batch statistics).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PpoMicroStats {
    pub pg_loss: f64,
    pub vf_loss: f64,
    /// `0.5 · mean(Δlogp²)` over the micro-batch's `[rows, columns]` (padding counts, as TRL).
    pub approxkl: f64,
    pub pg_clipfrac: f64,
    pub vf_clipfrac: f64,
    /// Mean ratio over `[rows, columns]` (padding counts as 1, as TRL).
    pub ratio: f64,
}

/// One update's metrics, with TRL's names in `metrics.jsonl`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PpoMetrics {
    /// Updates done.
    pub step: usize,
    /// Rollouts trained on so far.
    pub episode: usize,
    pub lr: f64,
    #[serde(rename = "objective/kl")]
    pub kl: f64,
    /// `mean(-Σ logp)` with TRL's padding value 1 per column past a completion's end.
    #[serde(rename = "objective/entropy")]
    pub entropy: f64,
    #[serde(rename = "objective/non_score_reward")]
    pub non_score_reward: f64,
    #[serde(rename = "objective/rlhf_reward")]
    pub rlhf_reward: f64,
    #[serde(rename = "objective/scores")]
    pub scores: f64,
    #[serde(rename = "policy/approxkl_avg")]
    pub approxkl_avg: f64,
    #[serde(rename = "policy/clipfrac_avg")]
    pub clipfrac_avg: f64,
    #[serde(rename = "loss/policy_avg")]
    pub policy_loss_avg: f64,
    #[serde(rename = "loss/value_avg")]
    pub value_loss_avg: f64,
    #[serde(rename = "val/clipfrac_avg")]
    pub value_clipfrac_avg: f64,
    #[serde(rename = "val/ratio")]
    pub ratio: f64,
    #[serde(rename = "val/ratio_var")]
    pub ratio_var: f64,
    #[serde(rename = "val/num_eos_tokens")]
    pub num_eos_tokens: usize,
    /// Input tokens of the update's training forwards (prompts and completions, per epoch).
    pub tokens: usize,
    /// Seconds generating the rollouts.
    pub generation_s: f64,
    /// Seconds of the rollout forwards (policy, reference, values) and the optimizer steps.
    pub training_s: f64,
}

fn no_fused_path() -> TrainError {
    TrainError::option(
        "model",
        "PPO goes through kiln's fused CPU backward, which does not cover this model or device \
         (cpu device; LoRA, DoRA without dropout, or full fine-tuning)",
    )
}

/// PPO's optimisation half: the policy's and the value model's [`Trainer`]s, the reference and
/// the options. Rollouts (prompt, completion, score) come from anywhere.
///
/// One update is [`Self::prepare`] (log-probabilities, reference log-probabilities, values,
/// the score one column after the last token, the per-token KL penalty, GAE, whitened
/// advantages) then [`Self::update`] (`num_ppo_epochs` shuffled passes of clipped policy and
/// value losses, `num_mini_batches` optimizer steps each). The formulas, and where kiln differs
/// from TRL, are in the header of `crates/train/src/ppo.rs`.
pub struct PpoLearner<M: CausalModel, V: ClassifierModel> {
    pub policy: Trainer<M>,
    pub value: Trainer<V>,
    pub options: PpoOptions,
    reference: M,
    precision: Precision,
    updates: usize,
    episode: usize,
    /// The learning rate of the last optimizer step.
    lr: f64,
}

impl<M: CausalModel, V: ClassifierModel> PpoLearner<M, V> {
    /// `reference`: the frozen model the KL is measured against (TRL with PEFT: the policy with
    /// its adapter disabled). The value model's head must have one label.
    pub fn new(
        policy: Trainer<M>,
        value: Trainer<V>,
        reference: M,
        options: PpoOptions,
    ) -> Result<Self> {
        options.check()?;
        let labels = value.model().classifier().head.num_labels;
        if labels != 1 {
            return Err(TrainError::option(
                "num_labels",
                format!("a value model has one score per token; this head has {labels} labels"),
            ));
        }
        let precision = policy.options.precision.unwrap_or_else(Precision::native);
        Ok(Self {
            policy,
            value,
            options,
            reference,
            precision,
            updates: 0,
            episode: 0,
            lr: 0.0,
        })
    }

    fn backprop_options(&self) -> BackpropOptions {
        BackpropOptions {
            checkpoint: self.policy.options.gradient_checkpointing,
            precision: self.precision,
        }
    }

    /// Per rollout, its completion tokens' log-probabilities under `model`.
    fn logps_of(&self, model: &M, rollouts: &[Rollout]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(rollouts.len());
        for micro in rollouts.chunks(self.options.batch_size) {
            let refs: Vec<&Rollout> = micro.iter().collect();
            let batch = SeqBatch::new(&refs, self.options.pad_id);
            let logps = model
                .try_logps(&batch.input, &batch.labels, self.precision)
                .ok_or_else(no_fused_path)??;
            out.extend(batch.per_row(&logps));
        }
        Ok(out)
    }

    /// Per rollout, the value model's values at its value columns.
    fn values_of(&self, rollouts: &[Rollout], columns: usize) -> Result<Vec<Vec<f32>>> {
        let model = self.value.model().classifier().valid();
        let mut out = Vec::with_capacity(rollouts.len());
        for micro in rollouts.chunks(self.options.batch_size) {
            let refs: Vec<&Rollout> = micro.iter().collect();
            let batch = SeqBatch::new(&refs, self.options.pad_id);
            let (rows, counts) = value_rows(&refs, batch.input.seq_len, columns);
            let v = model.scores_at(&batch.input, &rows)?;
            let mut at = 0;
            for c in counts {
                out.push(v[at..at + c].to_vec());
                at += c;
            }
        }
        Ok(out)
    }

    /// Checks the rollouts (a non-empty prompt and completion, a finite score) and computes
    /// what the update trains on (steps 1-3 of the module docs).
    ///
    /// # Errors
    /// [`TrainError::Batch`] naming the rollout for an empty prompt or completion or a missing
    /// or non-finite score; [`TrainError::Option`] when the rollouts do not split into
    /// `num_mini_batches` mini-batches of whole micro-batches.
    pub fn prepare(&self, rollouts: Vec<Rollout>, generation_s: f64) -> Result<PpoBatch> {
        let start = std::time::Instant::now();
        self.check_rollouts(&rollouts)?;
        let columns = rollouts
            .iter()
            .map(|r| r.completion.len())
            .max()
            .unwrap_or(0);
        let logprobs = self.logps_of(self.policy.model(), &rollouts)?;
        let ref_logprobs = self.logps_of(&self.reference, &rollouts)?;
        let values = self.values_of(&rollouts, columns)?;
        let o = &self.options;
        let mut rows: Vec<PpoRow> = Vec::with_capacity(rollouts.len());
        for (i, r) in rollouts.iter().enumerate() {
            let mut score = r.reward.unwrap_or(f64::NAN);
            if let Some(p) = o.missing_eos_penalty
                && !r.completion.contains(&o.eos_id)
            {
                score -= p;
            }
            let kl: Vec<f64> = logprobs[i]
                .iter()
                .zip(&ref_logprobs[i])
                .map(|(&p, &q)| o.kl_estimator.estimate(f64::from(p), f64::from(q)))
                .collect();
            let non_score_reward: Vec<f64> = kl.iter().map(|k| -o.kl_coef * k).collect();
            let m = values[i].len();
            let mut rewards = non_score_reward.clone();
            rewards.resize(m, 0.0);
            let n = r.completion.len();
            rewards[if n < columns { n } else { n - 1 }] += score;
            rows.push(PpoRow {
                logprobs: logprobs[i].clone(),
                ref_logprobs: ref_logprobs[i].clone(),
                values: values[i].clone(),
                score,
                kl,
                non_score_reward,
                rewards,
                advantages: Vec::new(),
                returns: Vec::new(),
            });
        }
        self.advantages(&mut rows)?;
        Ok(PpoBatch {
            rollouts,
            rows,
            columns,
            generation_s,
            prepare_s: start.elapsed().as_secs_f64(),
        })
    }

    fn check_rollouts(&self, rollouts: &[Rollout]) -> Result<()> {
        let per_mini = self.options.batch_size * self.options.num_mini_batches;
        if rollouts.is_empty() || !rollouts.len().is_multiple_of(per_mini) {
            return Err(TrainError::option(
                "batch_size",
                format!(
                    "{} rollouts do not make {} mini-batches of whole micro-batches of {}",
                    rollouts.len(),
                    self.options.num_mini_batches,
                    self.options.batch_size
                ),
            ));
        }
        for (index, r) in rollouts.iter().enumerate() {
            let reason = if r.prompt.is_empty() || r.completion.is_empty() {
                "a rollout needs a non-empty prompt and completion".to_string()
            } else {
                match r.reward {
                    Some(s) if s.is_finite() => continue,
                    Some(s) => format!("the score is {s}, not a finite number"),
                    None => "no score (the reward model or function gave none)".to_string(),
                }
            };
            return Err(TrainError::Batch { index, reason });
        }
        Ok(())
    }

    /// Rewards whitening (optional), GAE, returns and the advantages' whitening of `rows`.
    fn advantages(&self, rows: &mut [PpoRow]) -> Result<()> {
        let o = &self.options;
        if o.whiten_rewards {
            let mut r: Vec<Vec<f64>> = rows.iter().map(|r| r.rewards.clone()).collect();
            whiten(&mut r, false)?;
            for (row, r) in rows.iter_mut().zip(r) {
                row.rewards = r;
            }
        }
        let mut adv = Vec::with_capacity(rows.len());
        for row in rows.iter_mut() {
            let values: Vec<f64> = row.values.iter().map(|&v| f64::from(v)).collect();
            let a = gae(&row.rewards, &values, o.gamma, o.lam);
            row.returns = a.iter().zip(&values).map(|(a, v)| a + v).collect();
            adv.push(a[..row.logprobs.len()].to_vec());
        }
        whiten(&mut adv, true)?;
        for (row, a) in rows.iter_mut().zip(adv) {
            row.advantages = a;
        }
        Ok(())
    }
}

/// The value columns of each rollout as rows of its micro-batch's `[b * t]` input (position
/// `prompt - 1 + j`, the state before completion token `j`, for `j < m`) and their counts.
fn value_rows(micro: &[&Rollout], t: usize, columns: usize) -> (Vec<usize>, Vec<usize>) {
    let mut rows = Vec::new();
    let mut counts = Vec::with_capacity(micro.len());
    for (i, r) in micro.iter().enumerate() {
        let m = (r.completion.len() + 1).min(columns);
        let p = r.prompt.len();
        rows.extend((0..m).map(|j| i * t + p - 1 + j));
        counts.push(m);
    }
    (rows, counts)
}

/// `d max(a, b)` given each branch's derivative, as torch's `maximum` (ties split).
fn max_grad(a: f64, b: f64, da: f64, db: f64) -> f64 {
    if a > b {
        da
    } else if a < b {
        db
    } else {
        0.5 * (da + db)
    }
}

/// The clipped policy loss of a micro-batch (mean over its completion tokens), `∂/∂logp` of
/// each token scaled by `scale`, and its statistics. `logps` in label order (row by row).
pub(crate) fn policy_loss(
    options: &PpoOptions,
    rows: &[&PpoRow],
    columns: usize,
    logps: &[f32],
    scale: f64,
) -> (f64, Vec<f32>, PpoMicroStats) {
    let (lo, hi) = (1.0 - options.cliprange, 1.0 + options.cliprange);
    let n = logps.len().max(1) as f64;
    let (mut loss, mut clipped, mut sq, mut ratios) = (0.0, 0.0, 0.0, 0.0);
    let mut grads = Vec::with_capacity(logps.len());
    let old = rows
        .iter()
        .flat_map(|r| r.logprobs.iter().zip(&r.advantages));
    for (&p, (&o, &a)) in logps.iter().zip(old) {
        let diff = f64::from(p) - f64::from(o);
        let ratio = diff.exp();
        let c = ratio.clamp(lo, hi);
        let (l1, l2) = (-a * ratio, -a * c);
        let d2 = if (lo..=hi).contains(&ratio) {
            -a * ratio
        } else {
            0.0
        };
        loss += l1.max(l2) / n;
        grads.push((max_grad(l1, l2, -a * ratio, d2) / n * scale) as f32);
        clipped += f64::from(u8::from(l2 > l1)) / n;
        sq += diff * diff;
        ratios += ratio;
    }
    let cells = (rows.len() * columns).max(1) as f64;
    let pad = cells - logps.len() as f64;
    let stats = PpoMicroStats {
        pg_loss: loss,
        approxkl: 0.5 * sq / cells,
        pg_clipfrac: clipped,
        ratio: (ratios + pad) / cells,
        ..PpoMicroStats::default()
    };
    (loss, grads, stats)
}

/// The clipped value loss of a micro-batch (`0.5 ·` mean over its value columns), `∂/∂v` of
/// each value scaled by `scale`, and the share of clipped columns. `vpred` row by row.
pub(crate) fn value_loss(
    options: &PpoOptions,
    rows: &[&PpoRow],
    vpred: &[f32],
    scale: f64,
) -> (f64, Vec<f32>, f64) {
    let c = options.cliprange_value;
    let n = vpred.len().max(1) as f64;
    let (mut loss, mut clipped) = (0.0, 0.0);
    let mut grads = Vec::with_capacity(vpred.len());
    let old = rows.iter().flat_map(|r| r.values.iter().zip(&r.returns));
    for (&v, (&o, &ret)) in vpred.iter().zip(old) {
        let (v, o) = (f64::from(v), f64::from(o));
        let vc = v.clamp(o - c, o + c);
        let (l1, l2) = ((v - ret).powi(2), (vc - ret).powi(2));
        let d2 = if (o - c..=o + c).contains(&v) {
            vc - ret
        } else {
            0.0
        };
        loss += 0.5 * l1.max(l2) / n;
        grads.push((max_grad(l1, l2, v - ret, d2) / n * scale) as f32);
        clipped += f64::from(u8::from(l2 > l1)) / n;
    }
    (loss, grads, clipped)
}

impl<M: CausalModel, V: ClassifierModel> PpoLearner<M, V> {
    /// One optimizer step of both models on the rollouts `rows` of `batch` (in micro-batches
    /// of `batch_size`): each micro-batch's `pg_loss + vf_coef · vf_loss` divided by the
    /// micro-batches of the step. `None` when a trainer skipped the step (non-finite loss or
    /// gradient under the `skip` policy).
    pub fn step(&mut self, batch: &PpoBatch, rows: &[usize]) -> Result<Option<Vec<PpoMicroStats>>> {
        let micros: Vec<&[usize]> = rows.chunks(self.options.batch_size).collect();
        let scale = 1.0 / micros.len().max(1) as f64;
        let options = self.backprop_options();
        self.policy.begin_step();
        self.value.begin_step();
        let mut all = Vec::with_capacity(micros.len());
        for micro in micros {
            let rollouts: Vec<&Rollout> = micro.iter().map(|&i| &batch.rollouts[i]).collect();
            let prows: Vec<&PpoRow> = micro.iter().map(|&i| &batch.rows[i]).collect();
            let seq = SeqBatch::new(&rollouts, self.options.pad_id);
            let mut stats = PpoMicroStats::default();
            let (o, pr, st) = (&self.options, &prows, &mut stats);
            let loss = Box::new(move |logps: &[f32]| {
                let (l, g, s) = policy_loss(o, pr, batch.columns, logps, scale);
                *st = s;
                (l * scale, g)
            });
            let model = self.policy.model();
            let out = model
                .try_backprop_logp(&seq.input, &seq.labels, loss, options)
                .ok_or_else(no_fused_path)??;
            let grads = host_grads(model, out.grads).ok_or_else(no_fused_path)?;
            self.policy.add_micro_batch(out.loss, seq.tokens, grads);

            let (vrows, _) = value_rows(&rollouts, seq.input.seq_len, batch.columns);
            let (mut vf, mut vclip) = (0.0, 0.0);
            let vscale = scale * self.options.vf_coef;
            let (o, pr, vf_out, vc_out) = (&self.options, &prows, &mut vf, &mut vclip);
            let vloss = move |v: &[f32]| {
                let (l, g, c) = value_loss(o, pr, v, vscale);
                (*vf_out, *vc_out) = (l, c);
                (l * vscale, g)
            };
            let model = self.value.model();
            let out = model
                .classifier()
                .try_backprop_scores_at(&seq.input, &vrows, vloss, options)
                .ok_or_else(no_fused_path)??;
            let grads = host_grads(model, out.grads).ok_or_else(no_fused_path)?;
            self.value.add_micro_batch(out.loss, seq.tokens, grads);
            stats.vf_loss = vf;
            stats.vf_clipfrac = vclip;
            all.push(stats);
        }
        let p = self.policy.apply_step()?;
        let v = self.value.apply_step()?;
        match (p, v) {
            (MicroOutcome::Stepped(m), MicroOutcome::Stepped(_)) => {
                self.lr = m.lr;
                Ok(Some(all))
            }
            _ => Ok(None),
        }
    }

    /// A whole update (step 4 of the module docs): `num_ppo_epochs` passes over `batch`, each
    /// in a new order (`orders[epoch]` when given, else shuffled from `seed`), split into
    /// `num_mini_batches` optimizer steps. Returns TRL's metrics of the update.
    ///
    /// # Errors
    /// [`TrainError::Option`] for an order that is not a permutation of the batch, and the
    /// trainers' errors.
    pub fn update(
        &mut self,
        batch: &PpoBatch,
        orders: Option<&[Vec<usize>]>,
    ) -> Result<PpoMetrics> {
        let start = std::time::Instant::now();
        let n = batch.rollouts.len();
        let mini = n / self.options.num_mini_batches;
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.options.seed ^ self.updates as u64);
        let mut stats = Vec::new();
        for epoch in 0..self.options.num_ppo_epochs {
            let order = match orders.and_then(|o| o.get(epoch)) {
                Some(o) => check_order(o, n)?,
                None => {
                    let mut o: Vec<usize> = (0..n).collect();
                    o.shuffle(&mut rng);
                    o
                }
            };
            for rows in order.chunks(mini) {
                if let Some(s) = self.step(batch, rows)? {
                    stats.extend(s);
                }
            }
        }
        self.updates += 1;
        self.episode += n;
        let mut m = batch_metrics(batch, self.options.eos_id);
        fill_micro_metrics(&mut m, &stats);
        m.step = self.updates;
        m.episode = self.episode;
        m.lr = self.lr;
        m.tokens = batch
            .rollouts
            .iter()
            .map(|r| r.prompt.len() + r.completion.len())
            .sum::<usize>()
            * self.options.num_ppo_epochs;
        m.generation_s = batch.generation_s;
        m.training_s = batch.prepare_s + start.elapsed().as_secs_f64();
        Ok(m)
    }
}

fn check_order(order: &[usize], n: usize) -> Result<Vec<usize>> {
    let mut seen = vec![false; n];
    for &i in order {
        if i >= n || std::mem::replace(&mut seen[i], true) {
            return Err(TrainError::option(
                "orders",
                format!("{order:?} is not a permutation of 0..{n}"),
            ));
        }
    }
    if order.len() != n {
        return Err(TrainError::option(
            "orders",
            format!("{order:?} is not a permutation of 0..{n}"),
        ));
    }
    Ok(order.to_vec())
}

/// The batch's objective metrics (TRL's means over rollouts of per-rollout sums).
fn batch_metrics(batch: &PpoBatch, eos: u32) -> PpoMetrics {
    let n = batch.rows.len().max(1) as f64;
    let mean = |f: &dyn Fn(&PpoRow) -> f64| batch.rows.iter().map(f).sum::<f64>() / n;
    let kl = mean(&|r| r.kl.iter().sum());
    let non_score_reward = mean(&|r| r.non_score_reward.iter().sum());
    let scores = mean(&|r| r.score);
    let columns = batch.columns as f64;
    let entropy = mean(&|r| {
        -r.logprobs.iter().map(|&p| f64::from(p)).sum::<f64>() - (columns - r.logprobs.len() as f64)
    });
    PpoMetrics {
        kl,
        entropy,
        non_score_reward,
        rlhf_reward: non_score_reward + scores,
        scores,
        num_eos_tokens: batch
            .rollouts
            .iter()
            .map(|r| r.completion.iter().filter(|&&t| t == eos).count())
            .sum(),
        ..PpoMetrics::default()
    }
}

/// Means (and the ratio's unbiased variance) of the update's micro-batch statistics.
fn fill_micro_metrics(m: &mut PpoMetrics, stats: &[PpoMicroStats]) {
    let k = stats.len().max(1) as f64;
    let avg = |f: fn(&PpoMicroStats) -> f64| stats.iter().map(f).sum::<f64>() / k;
    m.approxkl_avg = avg(|s| s.approxkl);
    m.clipfrac_avg = avg(|s| s.pg_clipfrac);
    m.policy_loss_avg = avg(|s| s.pg_loss);
    m.value_loss_avg = avg(|s| s.vf_loss);
    m.value_clipfrac_avg = avg(|s| s.vf_clipfrac);
    m.ratio = avg(|s| s.ratio);
    m.ratio_var = if stats.len() > 1 {
        stats
            .iter()
            .map(|s| (s.ratio - m.ratio).powi(2))
            .sum::<f64>()
            / (k - 1.0)
    } else {
        f64::NAN
    };
}
