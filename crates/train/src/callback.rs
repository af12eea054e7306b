//! Metrics records and the callbacks that receive them (logging, progress, evaluation hooks).
use crate::error::Result;
use kiln_models::CausalLm;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// 1-based optimizer step.
    pub step: usize,
    /// Mean token NLL over the step's micro-batches.
    pub loss: f64,
    /// Learning rate used by this step.
    pub lr: f64,
    /// Global gradient L2 norm before clipping.
    pub grad_norm: f64,
    /// Input tokens (non-padding) of the step.
    pub tokens: usize,
    /// Input tokens per second over the step.
    pub tokens_per_s: f64,
    /// Seconds since the start of training (across resumes).
    pub elapsed: f64,
}

/// One evaluation on the validation data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Optimizer steps done when evaluated.
    pub step: usize,
    /// Mean token NLL.
    pub val_loss: f64,
    /// `exp(val_loss)`.
    pub val_perplexity: f64,
    /// Label tokens evaluated.
    pub val_tokens: usize,
}

/// Hooks called by the trainer and the run loop. Every method defaults to doing nothing.
pub trait Callback {
    /// After each optimizer step.
    fn on_step(&mut self, metrics: &StepMetrics) -> Result<()> {
        let _ = metrics;
        Ok(())
    }

    /// After each evaluation.
    fn on_eval(&mut self, metrics: &EvalMetrics) -> Result<()> {
        let _ = metrics;
        Ok(())
    }

    /// After a checkpoint is written to `dir`.
    fn on_checkpoint(&mut self, dir: &Path) -> Result<()> {
        let _ = dir;
        Ok(())
    }

    /// At the end of training, after the final evaluation and checkpoint, with the trained
    /// model (adapters applied, no autodiff): where generation metrics are computed.
    fn on_fit_end(&mut self, step: usize, model: &CausalLm) -> Result<()> {
        let _ = (step, model);
        Ok(())
    }

    /// At the end of the run.
    fn on_end(&mut self) -> Result<()> {
        Ok(())
    }
}
