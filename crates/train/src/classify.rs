//! Classification and regression fine-tuning on the `score` head (the content-scoring use
//! case): labelled sequences, transformers' `ForSequenceClassificationLoss` by `problem_type`
//! ([`classification_loss`]), LoRA and the head trained together through the fused backward
//! ([`kiln_models::SequenceClassifier::try_backprop_scores`]), the [`Trainer`]'s accumulation,
//! clipping, AdamW and schedule (each micro-batch's mean loss divided by the accumulation steps,
//! as transformers' Trainer).
use crate::error::{Result, TrainError};
use crate::reward::{ClassifierModel, ScoreLabel, classification_loss, no_fused_path, padded};
use crate::trainer::{MicroOutcome, Trainer, host_grads};
use kiln_models::ProblemType;
use kiln_models::backprop::{BackpropOptions, Precision};
use serde::Serialize;

/// One labelled sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct LabeledSeq {
    pub ids: Vec<u32>,
    pub label: ScoreLabel,
}

/// One optimizer step's metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClassifyStepMetrics {
    pub step: usize,
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    /// Single-label classification: the share of rows whose highest score is their class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Input tokens trained on so far (without padding).
    pub num_tokens: u64,
}

/// A classification or regression run on labelled sequences, in training order.
pub struct ClassifierTrainer<M: ClassifierModel> {
    pub trainer: Trainer<M>,
    rows: Vec<LabeledSeq>,
    batch_size: usize,
    pad_id: u32,
    problem: ProblemType,
    precision: Precision,
    pub history: Vec<ClassifyStepMetrics>,
}

impl<M: ClassifierModel> ClassifierTrainer<M> {
    /// `problem`: the head's configured `problem_type`, else transformers' choice from the
    /// labels (integer class ids: single-label classification).
    pub fn new(
        trainer: Trainer<M>,
        rows: Vec<LabeledSeq>,
        batch_size: usize,
        pad_id: u32,
    ) -> Result<Self> {
        if batch_size == 0 {
            return Err(TrainError::option("batch_size", "must be at least 1"));
        }
        if rows.is_empty() || rows.iter().any(|r| r.ids.is_empty()) {
            return Err(TrainError::option("data", "no rows, or an empty row"));
        }
        let classes = rows.iter().all(|r| matches!(r.label, ScoreLabel::Class(_)));
        let problem = trainer.model().classifier().head.problem_type_for(classes);
        let precision = trainer.options.precision.unwrap_or_else(Precision::native);
        Ok(Self {
            trainer,
            rows,
            batch_size,
            pad_id,
            problem,
            precision,
            history: Vec::new(),
        })
    }

    fn per_epoch(&self) -> usize {
        self.rows.len().div_ceil(self.batch_size)
    }

    /// One optimizer step over `grad_accum` micro-batches; `None` when it was skipped.
    pub fn step(&mut self) -> Result<Option<ClassifyStepMetrics>> {
        let accum = self.trainer.options.grad_accum;
        let start = self.trainer.state.position;
        self.trainer.begin_step();
        let options = BackpropOptions {
            checkpoint: self.trainer.options.gradient_checkpointing,
            precision: self.precision,
        };
        let n = self.trainer.model().classifier().head.num_labels;
        let (mut correct, mut seen) = (0usize, 0usize);
        for a in 0..accum {
            let j = ((start + a as u64) % self.per_epoch() as u64) as usize;
            let b = self.batch_size;
            let rows = &self.rows[j * b..((j + 1) * b).min(self.rows.len())];
            let seqs: Vec<&[u32]> = rows.iter().map(|r| &r.ids[..]).collect();
            let labels: Vec<ScoreLabel> = rows.iter().map(|r| r.label.clone()).collect();
            let (input, tokens) = padded(&seqs, self.pad_id);
            let mut failed = None;
            let mut scores = Vec::new();
            let problem = self.problem;
            let loss = |s: &[f32]| {
                scores = s.to_vec();
                match classification_loss(s, &labels, n, problem) {
                    Ok((l, g)) => (
                        l / accum as f64,
                        g.iter().map(|g| g / accum as f32).collect(),
                    ),
                    Err(e) => {
                        failed = Some(e);
                        (0.0, vec![0.0; s.len()])
                    }
                }
            };
            let model = self.trainer.model();
            let out = model
                .classifier()
                .try_backprop_scores(&input, loss, options)
                .ok_or_else(no_fused_path)??;
            if let Some(e) = failed {
                return Err(e);
            }
            let grads = host_grads(model, out.grads).ok_or_else(no_fused_path)?;
            self.trainer.add_micro_batch(out.loss, tokens, grads);
            for (label, z) in labels.iter().zip(scores.chunks_exact(n)) {
                if let ScoreLabel::Class(c) = label {
                    let best = (0..n).max_by(|&x, &y| z[x].total_cmp(&z[y])).unwrap_or(0);
                    correct += usize::from(best == *c);
                }
                seen += 1;
            }
        }
        let m = match self.trainer.apply_step()? {
            MicroOutcome::Stepped(m) => m,
            _ => return Ok(None),
        };
        let metrics = ClassifyStepMetrics {
            step: m.step,
            loss: m.loss,
            grad_norm: m.grad_norm,
            lr: m.lr,
            accuracy: (self.problem == ProblemType::SingleLabelClassification)
                .then(|| correct as f64 / seen.max(1) as f64),
            num_tokens: self.trainer.state.tokens_seen,
        };
        self.history.push(metrics.clone());
        Ok(Some(metrics))
    }
}
