//! kiln-train: supervised fine-tuning (LoRA or full) with exact resume, metrics and model cards.
//!
//! - [`SftConfig`]: the run, from TOML or JSON; [`run_sft`] runs it (model → data → LoRA or full
//!   fine-tuning → checkpoints, metrics, adapter, model card, exports), [`Sft`] step by step.
//! - [`Trainer`]: micro-batch forward/backward with accumulation normalised by the step's label
//!   tokens, global-norm clipping, AdamW (burn's, fused on the CPU) with no decay on norms and biases, LR schedule,
//!   evaluation, callbacks; [`Trainer::save_checkpoint`] / [`Trainer::resume`] continue
//!   bit-identically.
//! - [`fit`]: the loop around it (eval every N, save every N, keep last K, early stopping,
//!   NaN policy, loss-curve PNG).
//! - Metrics: [`JsonlLogger`], [`TensorBoardWriter`], [`Progress`]; [`TrainingMetadata`] writes
//!   the model card.
pub mod adamw;
pub mod alloc;
pub mod batch;
pub mod callback;
pub mod card;
pub mod checkpoint;
pub mod classify;
pub mod config;
pub mod data;
pub mod dpo;
pub mod dpo_run;
pub mod error;
pub mod export;
pub mod generation_eval;
pub mod grpo;
pub mod grpo_online;
pub mod grpo_run;
pub mod kto;
pub mod kto_run;
pub mod logging;
pub mod model;
pub mod orpo_cpo;
pub mod params;
pub mod plot;
pub mod preference;
mod recipe;
pub mod reward;
pub mod reward_run;
pub mod run;
pub mod rundir;
pub mod schedule;
pub mod sft_run;
pub mod stream;
pub mod tensorboard;
pub mod trainer;

pub use adamw::FusedAdamW;
pub use alloc::keep_freed_memory;
pub use batch::{Batch, BatchSource, Shuffled};
pub use callback::{Callback, EvalMetrics, StepMetrics};
pub use card::{EvalRow, TrainingMetadata};
pub use checkpoint::{latest_checkpoint, list_checkpoints};
pub use classify::{ClassifierTrainer, ClassifyStepMetrics, LabeledSeq};
pub use config::{
    AdamWOptions, BackwardPath, DataOptions, EarlyStopping, EvalOptions, ExportOptions,
    NonFinitePolicy, SaveOptions, ScheduleKind, ScheduleOptions, SftConfig,
};
pub use data::{
    SftData, encode_records, encoder_for, packed_batches, padded_batches, prepare_data,
    stream_options,
};
pub use dpo::{DpoStepMetrics, DpoTrainer, PreferencePairs};
pub use dpo_run::{DpoRun, DpoSummary, run_dpo};
pub use error::{Result, TrainError};
pub use export::Export;
pub use generation_eval::GenerationEvalCallback;
pub use grpo::{
    GrpoLearner, GrpoLoss, GrpoOptions, GrpoStepMetrics, Rollout, Rollouts, ScaleRewards,
    advantages,
};
pub use grpo_online::{
    GrpoTrainer, Prompt, PromptEncoder, PromptRecord, Reward, RewardClosure, numbers_in,
    read_prompt_records,
};
pub use grpo_run::{GrpoRun, GrpoSummary, grpo_setup, run_grpo};
pub use kiln_lora::Precision;
pub use kto::{KtoStepMetrics, KtoTrainer};
pub use kto_run::{KtoSummary, run_kto};
pub use logging::{JsonlLogger, Progress, standard_callbacks};
pub use model::{CausalModel, LogpLossFn};
pub use params::{HostParams, ParamInfo};
pub use plot::write_loss_curve;
pub use preference::{CpoLoss, DpoLoss, DpoOptions, KtoLoss, PreferenceLoss};
pub use reward::{
    ClassifierModel, PairEval, RewardOptions, RewardPair, RewardStepMetrics, RewardTrainer,
    ScoreLabel, classification_loss,
};
pub use reward_run::{RewardRun, RewardSummary, run_reward};
pub use run::{FitOptions, RunSummary, fit};
pub use rundir::{RunDir, RunMode};
pub use schedule::LrSchedule;
pub use sft_run::{Sft, SftBatches, SftEvent, SftSummary, Trained, TrainedModel, run_sft};
pub use stream::{StreamOptions, StreamedBatches};
pub use tensorboard::TensorBoardWriter;
pub use trainer::{MicroOutcome, TrainState, Trainer, TrainerOptions, training_device};
