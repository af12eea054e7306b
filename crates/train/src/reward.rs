//! Reward models and sequence classification on the `score` head
//! ([`kiln_models::SequenceClassifier`]), with TRL 1.16's `RewardTrainer` definitions and metric
//! names, and transformers' sequence-classification losses.
//!
//! - Reward model: a micro-batch holds the chosen sequences then the rejected ones, right-padded
//!   (TRL's `DataCollatorForPreference`); its loss is the Bradley–Terry
//!   `mean(-log σ(r_chosen - r_rejected - margin))` (margin 0 without the column), plus
//!   `center_rewards_coefficient · mean((r_chosen + r_rejected)²)` when set. Metrics per step
//!   (means over the step's micro-batches, as TRL averages its lists): `accuracy`
//!   (r_chosen > r_rejected), `margin` (mean r_chosen - r_rejected), `min_reward`,
//!   `mean_reward`, `max_reward` and `num_tokens` (input tokens trained on so far).
//! - Classification and regression ([`ScoreLabel`]): transformers' `ForSequenceClassificationLoss`
//!   by `problem_type`: cross-entropy over `num_labels`, MSE, or binary cross-entropy with logits,
//!   each a mean over the micro-batch's rows.
//!
//! The loss is a function of the pooled scores only, so one fused forward and backward
//! ([`SequenceClassifier::try_backprop_scores`]) trains the LoRA adapters and the head
//! (PEFT's `modules_to_save = ["score"]`) together; the [`Trainer`] does accumulation
//! (each micro-batch's loss divided by the accumulation steps, as transformers' Trainer),
//! clipping, AdamW and the schedule.
use crate::error::{Result, TrainError};
use crate::model::CausalModel;
use crate::preference::{log_sigmoid, sigmoid};
use crate::trainer::{MicroOutcome, Trainer, host_grads};
use burn::module::Module;
use kiln_lora::LoraModel;
use kiln_models::backprop::{BackpropOptions, Precision};
use kiln_models::{DecoderInput, ProblemType, SequenceClassifier};
use serde::Serialize;

/// A model with a `score` head the reward trainer can train.
pub trait ClassifierModel: CausalModel {
    fn classifier(&self) -> &SequenceClassifier;
}

impl ClassifierModel for SequenceClassifier {
    fn classifier(&self) -> &SequenceClassifier {
        self
    }
}

impl ClassifierModel for LoraModel<SequenceClassifier> {
    fn classifier(&self) -> &SequenceClassifier {
        &self.model
    }
}

/// One tokenized pair: the whole chosen and rejected sequences and the optional margin.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardPair {
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
    pub margin: Option<f64>,
}

/// The reward options (TRL's `RewardConfig` names).
#[derive(Debug, Clone, PartialEq)]
pub struct RewardOptions {
    /// Pairs per micro-batch.
    pub batch_size: usize,
    /// Pairs with a side longer than this are left out (TRL filters them; default 1024).
    pub max_length: Option<usize>,
    /// Weight of `mean((r_chosen + r_rejected)²)`, which keeps the rewards centred on 0.
    pub center_rewards_coefficient: Option<f64>,
    /// The id right padding uses (the head's `pad_token_id`, so padding is never pooled).
    pub pad_id: u32,
}

impl Default for RewardOptions {
    fn default() -> Self {
        Self {
            batch_size: 1,
            max_length: Some(1024),
            center_rewards_coefficient: None,
            pad_id: 0,
        }
    }
}

/// One optimizer step's metrics, with TRL's names in `metrics.jsonl`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RewardStepMetrics {
    pub step: usize,
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    pub accuracy: f64,
    pub margin: f64,
    pub min_reward: f64,
    pub mean_reward: f64,
    pub max_reward: f64,
    /// Input tokens trained on so far (without padding), as TRL's `num_tokens`.
    pub num_tokens: u64,
}

/// A reward model's numbers on a set of pairs ([`RewardTrainer::evaluate`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PairEval {
    /// Mean `-log σ(r_chosen - r_rejected - margin)`.
    pub loss: f64,
    /// Share of pairs with `r_chosen > r_rejected`.
    pub accuracy: f64,
    /// Mean `r_chosen - r_rejected`.
    pub margin: f64,
    /// Each pair's (chosen, rejected) scores.
    pub scores: Vec<(f32, f32)>,
}

/// What one micro-batch's pairs give the step's metrics.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PairStats {
    accuracy: f64,
    margin: f64,
    min: f64,
    mean: f64,
    max: f64,
}

/// Rows of `seqs` right-padded with `pad` into one input.
pub(crate) fn padded(seqs: &[&[u32]], pad: u32) -> (DecoderInput, usize) {
    let t = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    let b = seqs.len();
    let (mut ids, mut mask) = (vec![pad; b * t], vec![0u8; b * t]);
    let mut tokens = 0;
    for (r, s) in seqs.iter().enumerate() {
        ids[r * t..][..s.len()].copy_from_slice(s);
        mask[r * t..][..s.len()].fill(1);
        tokens += s.len();
    }
    (
        DecoderInput::new(ids, b, t).with_attention_mask(mask),
        tokens,
    )
}

/// The Bradley–Terry loss of `n` pairs' scores (`s[..n]` chosen, `s[n..]` rejected) scaled by
/// `scale`, its derivative by each score, and the pairs' metrics.
pub(crate) fn bradley_terry(
    s: &[f32],
    margins: &[f64],
    center: Option<f64>,
    scale: f64,
) -> (f64, Vec<f32>, PairStats) {
    let n = s.len() / 2;
    let inv = 1.0 / n as f64;
    let (mut loss, mut grad) = (0.0, vec![0f32; 2 * n]);
    let mut stats = PairStats {
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        ..PairStats::default()
    };
    for p in 0..n {
        let (c, r) = (f64::from(s[p]), f64::from(s[n + p]));
        let u = c - r - margins.get(p).copied().unwrap_or(0.0);
        loss -= log_sigmoid(u) * inv;
        let mut dc = -sigmoid(-u) * inv;
        let mut dr = -dc;
        if let Some(k) = center {
            loss += k * (c + r).powi(2) * inv;
            dc += 2.0 * k * (c + r) * inv;
            dr += 2.0 * k * (c + r) * inv;
        }
        grad[p] = (dc * scale) as f32;
        grad[n + p] = (dr * scale) as f32;
        stats.accuracy += f64::from(u8::from(c > r)) * inv;
        stats.margin += (c - r) * inv;
    }
    for &v in s {
        let v = f64::from(v);
        stats.min = stats.min.min(v);
        stats.max = stats.max.max(v);
        stats.mean += v / s.len() as f64;
    }
    (loss * scale, grad, stats)
}

/// The label of one row for classification or regression fine-tuning.
#[derive(Debug, Clone, PartialEq)]
pub enum ScoreLabel {
    /// A class id (single-label classification).
    Class(usize),
    /// Target values, one per label (regression; multi-label classification's 0/1 targets).
    Values(Vec<f32>),
}

/// transformers' `ForSequenceClassificationLoss` of `scores` (`[b, num_labels]`) for `labels`,
/// the mean over rows, and its derivative by each score.
///
/// # Errors
/// [`TrainError::Option`] when a label does not fit the head (class id ≥ num_labels, a target
/// of the wrong length, a class id for regression).
pub fn classification_loss(
    scores: &[f32],
    labels: &[ScoreLabel],
    num_labels: usize,
    problem: ProblemType,
) -> Result<(f64, Vec<f32>)> {
    let b = labels.len();
    if scores.len() != b * num_labels {
        return Err(TrainError::option(
            "labels",
            format!(
                "{b} labels for {} scores of {num_labels} labels",
                scores.len()
            ),
        ));
    }
    let mut grad = vec![0f32; scores.len()];
    let mut loss = 0.0;
    for (i, (label, z)) in labels
        .iter()
        .zip(scores.chunks_exact(num_labels))
        .enumerate()
    {
        let g = &mut grad[i * num_labels..][..num_labels];
        match (problem, label) {
            (ProblemType::SingleLabelClassification, ScoreLabel::Class(c)) if *c < num_labels => {
                let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f64 = z.iter().map(|v| f64::from(v - max).exp()).sum();
                loss += f64::from(max) + sum.ln() - f64::from(z[*c]);
                for (g, v) in g.iter_mut().zip(z) {
                    *g = (f64::from(v - max).exp() / sum / b as f64) as f32;
                }
                g[*c] -= 1.0 / b as f32;
            }
            (ProblemType::Regression, ScoreLabel::Values(y)) if y.len() == num_labels => {
                // MSELoss: the mean over every element.
                let k = (b * num_labels) as f64;
                for ((g, v), y) in g.iter_mut().zip(z).zip(y) {
                    let d = f64::from(v - y);
                    loss += d * d / num_labels as f64;
                    *g = (2.0 * d / k) as f32;
                }
            }
            (ProblemType::MultiLabelClassification, ScoreLabel::Values(y))
                if y.len() == num_labels =>
            {
                let k = (b * num_labels) as f64;
                for ((g, v), y) in g.iter_mut().zip(z).zip(y) {
                    let (x, y) = (f64::from(*v), f64::from(*y));
                    loss -= (y * log_sigmoid(x) + (1.0 - y) * log_sigmoid(-x)) / num_labels as f64;
                    *g = ((sigmoid(x) - y) / k) as f32;
                }
            }
            _ => {
                return Err(TrainError::option(
                    "labels",
                    format!(
                        "row {i}: label {label:?} does not fit {} with {num_labels} labels",
                        problem.as_str()
                    ),
                ));
            }
        }
    }
    Ok((loss / b as f64, grad))
}

fn check_options(options: &RewardOptions) -> Result<()> {
    if options.batch_size == 0 {
        return Err(TrainError::option("batch_size", "must be at least 1"));
    }
    if let Some(c) = options.center_rewards_coefficient
        && !c.is_finite()
    {
        return Err(TrainError::option(
            "center_rewards_coefficient",
            "must be finite",
        ));
    }
    Ok(())
}

/// A reward-model run: the [`Trainer`] and the tokenized pairs in training order.
pub struct RewardTrainer<M: ClassifierModel> {
    pub trainer: Trainer<M>,
    pub options: RewardOptions,
    pairs: Vec<RewardPair>,
    precision: Precision,
    /// Pairs left out for a side longer than `max_length`.
    pub dropped: usize,
    pub history: Vec<RewardStepMetrics>,
}

impl<M: ClassifierModel> RewardTrainer<M> {
    /// Takes the trainer (its model's head must have one label) and the pairs in training order.
    pub fn new(
        trainer: Trainer<M>,
        pairs: Vec<RewardPair>,
        options: RewardOptions,
    ) -> Result<Self> {
        check_options(&options)?;
        let labels = trainer.model().classifier().head.num_labels;
        if labels != 1 {
            return Err(TrainError::option(
                "num_labels",
                format!("a reward model has one score per sequence; this head has {labels} labels"),
            ));
        }
        let before = pairs.len();
        let fits = |p: &RewardPair| {
            options
                .max_length
                .is_none_or(|m| p.chosen.len() <= m && p.rejected.len() <= m)
        };
        let pairs: Vec<RewardPair> = pairs.into_iter().filter(fits).collect();
        let dropped = before - pairs.len();
        if dropped > 0 {
            tracing::warn!("{dropped} pairs dropped: a side is longer than max_length");
        }
        if pairs
            .iter()
            .any(|p| p.chosen.is_empty() || p.rejected.is_empty())
        {
            return Err(TrainError::option("data", "a pair has an empty sequence"));
        }
        if pairs.is_empty() {
            return Err(TrainError::option("data", "no preference pair to train on"));
        }
        let precision = trainer.options.precision.unwrap_or_else(Precision::native);
        Ok(Self {
            trainer,
            options,
            pairs,
            precision,
            dropped,
            history: Vec::new(),
        })
    }

    /// Continues from checkpoint `dir` ([`Trainer::save_checkpoint`]'s). `self` is built as the
    /// run started (the same model with its new head and adapter, pairs and options); the
    /// trainable weights (adapter and head), the AdamW state and the position then come from
    /// the checkpoint, and the steps that follow equal the uninterrupted run's bit for bit.
    pub fn resume(mut self, device: &burn::tensor::Device, dir: &std::path::Path) -> Result<Self> {
        self.trainer = self.trainer.resumed(device, dir)?;
        Ok(self)
    }

    fn per_epoch(&self) -> usize {
        self.pairs.len().div_ceil(self.options.batch_size)
    }

    /// Micro-batch `j` of an epoch: its input (chosen rows, then rejected), margins and tokens.
    fn batch(&self, j: usize) -> (DecoderInput, Vec<f64>, usize) {
        let b = self.options.batch_size;
        let pairs = &self.pairs[j * b..((j + 1) * b).min(self.pairs.len())];
        let seqs: Vec<&[u32]> = pairs
            .iter()
            .map(|p| &p.chosen[..])
            .chain(pairs.iter().map(|p| &p.rejected[..]))
            .collect();
        let (input, tokens) = padded(&seqs, self.options.pad_id);
        let margins = pairs.iter().map(|p| p.margin.unwrap_or(0.0)).collect();
        (input, margins, tokens)
    }

    /// The Bradley–Terry loss (with the margins, without centring), pairwise accuracy and mean
    /// margin of every pair under the current model (burn's forward, no backward).
    pub fn evaluate(&self) -> Result<PairEval> {
        let mut eval = PairEval::default();
        let n = self.pairs.len() as f64;
        for j in 0..self.per_epoch() {
            let (input, margins, _) = self.batch(j);
            let s = self.trainer.model().classifier().valid().scores(&input)?;
            let k = s.len() / 2;
            for (p, m) in margins.iter().enumerate() {
                let (c, r) = (s[p], s[k + p]);
                let d = f64::from(c) - f64::from(r);
                eval.loss -= log_sigmoid(d - m) / n;
                eval.accuracy += f64::from(u8::from(c > r)) / n;
                eval.margin += d / n;
                eval.scores.push((c, r));
            }
        }
        Ok(eval)
    }

    /// One optimizer step over `grad_accum` micro-batches. `None` when the step was skipped
    /// (non-finite loss or gradient under the `skip` policy).
    pub fn step(&mut self) -> Result<Option<RewardStepMetrics>> {
        let accum = self.trainer.options.grad_accum;
        let start = self.trainer.state.position;
        self.trainer.begin_step();
        let options = BackpropOptions {
            checkpoint: self.trainer.options.gradient_checkpointing,
            precision: self.precision,
        };
        let center = self.options.center_rewards_coefficient;
        let mut stats = PairStats::default();
        let k = 1.0 / accum as f64;
        for a in 0..accum {
            let j = ((start + a as u64) % self.per_epoch() as u64) as usize;
            let (input, margins, tokens) = self.batch(j);
            let mut micro = PairStats::default();
            let model = self.trainer.model();
            let m = &mut micro;
            let loss = |s: &[f32]| {
                let (loss, g, st) = bradley_terry(s, &margins, center, k);
                *m = st;
                (loss, g)
            };
            let out = model
                .classifier()
                .try_backprop_scores(&input, loss, options)
                .ok_or_else(no_fused_path)??;
            let grads = host_grads(model, out.grads).ok_or_else(no_fused_path)?;
            self.trainer.add_micro_batch(out.loss, tokens, grads);
            stats.accuracy += micro.accuracy * k;
            stats.margin += micro.margin * k;
            stats.min += micro.min * k;
            stats.mean += micro.mean * k;
            stats.max += micro.max * k;
        }
        let m = match self.trainer.apply_step()? {
            MicroOutcome::Stepped(m) => m,
            _ => return Ok(None),
        };
        let metrics = RewardStepMetrics {
            step: m.step,
            loss: m.loss,
            grad_norm: m.grad_norm,
            lr: m.lr,
            accuracy: stats.accuracy,
            margin: stats.margin,
            min_reward: stats.min,
            mean_reward: stats.mean,
            max_reward: stats.max,
            num_tokens: self.trainer.state.tokens_seen,
        };
        self.history.push(metrics.clone());
        Ok(Some(metrics))
    }
}

/// The fused backward does not cover the model.
pub(crate) fn no_fused_path() -> TrainError {
    TrainError::option(
        "model",
        "reward and classification training go through kiln's fused CPU backward, which does not \
         cover this model or device (cpu device; LoRA without dropout on the head, or full \
         fine-tuning)",
    )
}
