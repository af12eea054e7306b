//! The run loop: steps, evaluation every N, checkpoints every N (keep last K), early stopping,
//! the NaN policy, and the files written at the end (checkpoint, loss curve).
use crate::batch::BatchSource;
use crate::callback::EvalMetrics;
use crate::config::SftConfig;
use crate::error::{Result, TrainError};
use crate::model::CausalModel;
use crate::plot::write_loss_curve;
use crate::trainer::{MicroOutcome, Trainer};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Scheduling of a run around the trainer.
#[derive(Debug, Clone, PartialEq)]
pub struct FitOptions {
    /// Optimizer steps to reach.
    pub total_steps: usize,
    /// Outputs: `checkpoints/`, `metrics.jsonl`, `loss_curve.png`...
    pub output_dir: PathBuf,
    pub eval_every: Option<usize>,
    pub eval_max_batches: Option<usize>,
    pub save_every: Option<usize>,
    pub keep_last: usize,
    /// Write a checkpoint at the end.
    pub save_at_end: bool,
}

impl FitOptions {
    /// The options of `config` for `total_steps` steps.
    pub fn from_config(config: &SftConfig, total_steps: usize) -> Self {
        Self {
            total_steps,
            output_dir: config.output_dir.clone(),
            eval_every: config.eval.every,
            eval_max_batches: config.eval.max_batches,
            save_every: config.save.every,
            keep_last: config.save.keep_last,
            save_at_end: true,
        }
    }

    /// `output_dir/checkpoints`.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.output_dir.join("checkpoints")
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub steps: usize,
    pub skipped_steps: usize,
    pub final_train_loss: Option<f64>,
    pub final_eval: Option<EvalMetrics>,
    pub best_val_loss: Option<f64>,
    pub stopped_early: bool,
    pub tokens_seen: u64,
    pub elapsed_secs: f64,
    pub checkpoint: Option<PathBuf>,
}

/// Trains until `options.total_steps` (or early stopping), evaluating and checkpointing on the
/// way. On a non-finite loss or gradient under the `stop` policy it writes a checkpoint of the
/// last good state and returns [`TrainError::NonFinite`] naming it.
pub fn fit<M: CausalModel>(
    trainer: &mut Trainer<M>,
    train: &dyn BatchSource,
    val: Option<&dyn BatchSource>,
    options: &FitOptions,
) -> Result<RunSummary> {
    let ckpt_root = options.checkpoint_dir();
    let mut stopped_early = false;
    let mut last_ckpt = None;
    let mut last_eval: Option<EvalMetrics> = None;
    while trainer.state.step < options.total_steps {
        match trainer.step(train) {
            Ok(MicroOutcome::Stepped(m)) => {
                if let (Some(every), Some(v)) = (options.eval_every, val)
                    && m.step % every == 0
                {
                    last_eval = Some(trainer.evaluate(v, options.eval_max_batches)?);
                    if trainer.should_stop_early() {
                        stopped_early = true;
                    }
                }
                if let Some(every) = options.save_every
                    && m.step % every == 0
                {
                    last_ckpt = Some(trainer.save_checkpoint(&ckpt_root, options.keep_last)?);
                }
                if stopped_early {
                    tracing::info!("early stopping at step {}", m.step);
                    break;
                }
            }
            Ok(_) => continue,
            Err(TrainError::NonFinite {
                what, value, step, ..
            }) => {
                let dir = trainer.save_checkpoint(&ckpt_root, options.keep_last)?;
                return Err(TrainError::NonFinite {
                    what,
                    value,
                    step,
                    checkpoint: Some(dir),
                });
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(v) = val
        && last_eval
            .as_ref()
            .is_none_or(|e| e.step != trainer.state.step)
    {
        last_eval = Some(trainer.evaluate(v, options.eval_max_batches)?);
    }
    if options.save_at_end
        && last_ckpt.as_ref().is_none_or(|p: &PathBuf| {
            !p.ends_with(crate::checkpoint::checkpoint_name(&trainer.state))
        })
    {
        last_ckpt = Some(trainer.save_checkpoint(&ckpt_root, options.keep_last)?);
    }
    write_curves(trainer, &options.output_dir.join("loss_curve.png"))?;
    let model = trainer.model().valid();
    let step = trainer.state.step;
    for c in trainer.callbacks() {
        c.on_fit_end(step, model.causal_lm())?;
    }
    for c in trainer.callbacks() {
        c.on_end()?;
    }
    Ok(RunSummary {
        steps: trainer.state.step,
        skipped_steps: trainer.state.skipped_steps,
        final_train_loss: trainer.state.history.last().map(|m| m.loss),
        final_eval: last_eval,
        best_val_loss: trainer.state.best_val_loss,
        stopped_early,
        tokens_seen: trainer.state.tokens_seen,
        elapsed_secs: trainer.elapsed(),
        checkpoint: last_ckpt,
    })
}

/// The training and validation loss curves of the trainer's history as a PNG.
pub fn write_curves<M: CausalModel>(trainer: &Trainer<M>, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    }
    let train: Vec<(usize, f64)> = trainer
        .state
        .history
        .iter()
        .map(|m| (m.step, m.loss))
        .collect();
    let val: Vec<(usize, f64)> = trainer
        .state
        .evals
        .iter()
        .map(|m| (m.step, m.val_loss))
        .collect();
    write_loss_curve(path, &train, &val)
}
