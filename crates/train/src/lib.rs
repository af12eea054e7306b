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
mod adamw;
mod alloc;
mod batch;
mod callback;
mod card;
mod checkpoint;
mod classify;
mod config;
mod data;
mod dpo;
mod dpo_run;
mod error;
mod export;
mod generation_eval;
mod grpo;
mod grpo_online;
mod grpo_run;
mod kto;
mod kto_run;
mod logging;
mod model;
mod orpo_cpo;
mod params;
mod plot;
mod ppo;
mod ppo_run;
mod preference;
mod recipe;
mod reward;
mod reward_run;
mod run;
mod rundir;
mod schedule;
mod sft_run;
mod stream;
mod tensorboard;
mod trainer;

pub use adamw::FusedAdamW;
pub use alloc::{keep_freed_memory, release_freed_memory};
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
    SftData, encode_located_records, encode_records, encoder_for, packed_batches, padded_batches,
    prepare_data, stream_options,
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
pub use params::{
    HostParams, ParamInfo, param_infos, params_to_host, restore_params, trainable_params,
};
pub use plot::write_loss_curve;
pub use ppo::{
    KlEstimator, PpoBatch, PpoLearner, PpoMetrics, PpoMicroStats, PpoOptions, PpoRow, gae, whiten,
};
pub use ppo_run::{PpoReward, PpoRun, PpoSummary, run_ppo};
pub use preference::{CpoLoss, DpoLoss, DpoOptions, KtoLoss, PreferenceLoss};
pub use reward::{
    ClassifierModel, PairEval, RewardOptions, RewardPair, RewardStepMetrics, RewardTrainer,
    ScoreLabel, classification_loss,
};
pub use reward_run::{RewardRun, RewardSummary, run_reward};
pub use run::{FitOptions, RunSummary, fit, write_curves};
pub use rundir::{RUN_FILE, RunDir, RunMode};
pub use schedule::LrSchedule;
pub use sft_run::{Sft, SftBatches, SftEvent, SftSummary, Trained, TrainedModel, run_sft};
pub use stream::{StreamOptions, StreamedBatches};
pub use tensorboard::{TensorBoardWriter, read_tfrecords};
pub use trainer::{MicroOutcome, TrainState, Trainer, TrainerOptions, training_device};
