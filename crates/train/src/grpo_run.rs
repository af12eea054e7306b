//! The GRPO recipe: model and tokenizer → prompt-only records → LoRA adapter (new, or continued
//! from a PEFT adapter, whose starting weights are then the reference) → [`GrpoTrainer`]
//! steps → `metrics.jsonl` (TRL's names, generation and training seconds apart),
//! `loss_curve.png` and the adapter in PEFT's format. No checkpoints or resume yet (a run is
//! re-run from its start).
use crate::error::{Result, TrainError};
use crate::export::Export;
use crate::grpo::{GrpoLearner, GrpoOptions, GrpoStepMetrics};
use crate::grpo_online::{GrpoTrainer, PromptEncoder, PromptRecord, Reward, read_prompt_records};
use crate::logging::JsonlLogger;
use crate::plot::write_loss_curve;
use crate::rundir::{RunDir, RunMode};
use crate::trainer::{Trainer, TrainerOptions};
use kiln_data::ChatTemplate;
use kiln_lora::{LoraConfig, LoraModel, TargetModules};
use kiln_models::backprop::Precision;
use kiln_models::fetch::resolve_model;
use kiln_models::{GenerationConfig, Pretrained, Sampling, parse_device};
use std::path::PathBuf;

/// A GRPO run (TRL's `GRPOConfig` names where it has them).
#[derive(Debug, Clone, PartialEq)]
pub struct GrpoRun {
    /// A model directory, GGUF file or Hugging Face repo id (empty: `$KILN_MODEL`, else the
    /// cached default model).
    pub model: PathBuf,
    /// JSON Lines of prompt-only records (used when [`run_grpo`] gets no records).
    pub data: PathBuf,
    pub output_dir: PathBuf,
    pub max_steps: usize,
    pub lr: f64,
    pub grpo: GrpoOptions,
    pub grad_accum: usize,
    pub max_grad_norm: Option<f64>,
    /// Sampling temperature (0 is refused: a group needs different samples).
    pub temperature: f32,
    pub top_p: f32,
    /// 0 = off.
    pub top_k: usize,
    pub stop_strings: Vec<String>,
    /// Continue from this PEFT adapter (it trains, and its starting weights are the reference).
    pub init_adapter: Option<PathBuf>,
    /// A new adapter's rank, alpha and target modules (without `init_adapter`).
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub targets: Vec<String>,
    pub seed: u64,
    pub precision: Option<Precision>,
    pub device: String,
    /// A Jinja chat template file instead of the model's.
    pub chat_template: Option<PathBuf>,
    /// Delete a previous kiln run in `output_dir` first.
    pub overwrite: bool,
}

impl Default for GrpoRun {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            data: PathBuf::new(),
            output_dir: PathBuf::from("runs/grpo"),
            max_steps: 100,
            lr: 1e-6,
            grpo: GrpoOptions::default(),
            grad_accum: 1,
            max_grad_norm: Some(1.0),
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            stop_strings: Vec::new(),
            init_adapter: None,
            lora_r: 16,
            lora_alpha: 32.0,
            targets: ["q_proj", "k_proj", "v_proj", "o_proj"]
                .map(String::from)
                .to_vec(),
            seed: 42,
            precision: None,
            device: "cpu".into(),
            chat_template: None,
            overwrite: false,
        }
    }
}

/// What a GRPO run did.
#[derive(Debug, Clone)]
pub struct GrpoSummary {
    pub history: Vec<GrpoStepMetrics>,
    /// Generation batches skipped whole (no group with a reward).
    pub skipped_batches: usize,
    pub adapter_dir: PathBuf,
}

/// The trainer options of `run`: AdamW without weight decay, constant learning rate.
fn trainer_options(run: &GrpoRun) -> TrainerOptions {
    TrainerOptions::constant_lr(
        run.lr,
        run.max_steps,
        run.grad_accum,
        run.max_grad_norm,
        run.seed,
        run.precision,
    )
}

/// The model (with its new or continued adapter), the prompt encoder and the generation
/// settings of `run`.
pub fn grpo_setup(
    run: &GrpoRun,
) -> Result<(
    LoraModel<kiln_models::CausalLm>,
    PromptEncoder,
    GenerationConfig,
)> {
    let device = parse_device(&run.device)?;
    // An empty path: $KILN_MODEL, else the cached default model.
    let given = (!run.model.as_os_str().is_empty()).then_some(run.model.as_path());
    let path = resolve_model(given, true)?;
    let lm = Pretrained::load(&path, &device)?;
    let template = ChatTemplate::select(
        run.chat_template.as_deref(),
        lm.extras.chat_template.as_deref(),
        lm.extras.chat_template_origin.as_deref(),
        lm.extras.bos_token.as_deref(),
        lm.extras.eos_token.as_deref(),
    )?;
    if run.temperature <= 0.0 {
        return Err(TrainError::option(
            "temperature",
            "GRPO samples: the temperature must be positive",
        ));
    }
    let generation = GenerationConfig {
        max_new_tokens: run.grpo.max_completion_length,
        sampling: Sampling::Sample {
            temperature: run.temperature,
            top_k: run.top_k,
            top_p: run.top_p,
        },
        eos_token_ids: lm.eos_token_ids(),
        stop_strings: run.stop_strings.clone(),
        seed: run.seed,
        ..GenerationConfig::default()
    };
    let encoder = PromptEncoder {
        tokenizer: lm.tokenizer.clone(),
        template,
    };
    let model = match &run.init_adapter {
        Some(dir) => {
            let mut m = LoraModel::new(lm.model);
            m.load_adapter(dir, "default")?;
            m
        }
        None => {
            let targets = TargetModules::Names(run.targets.clone());
            let config = LoraConfig::new(run.lora_r, run.lora_alpha, targets);
            kiln_lora::manual_seed(run.seed);
            LoraModel::with_adapter(lm.model, "default", config)?
        }
    };
    Ok((model, encoder, generation))
}

/// Trains a LoRA adapter with GRPO on `records` (or `run.data` when `None`) scored by
/// `rewards` (summed with their weights), and writes `output_dir/{metrics.jsonl, tensorboard/,
/// loss_curve.png, adapter/}`; `on_step` sees each step's metrics.
pub fn run_grpo(
    run: &GrpoRun,
    records: Option<Vec<PromptRecord>>,
    rewards: Vec<(Reward, f64)>,
    mut on_step: impl FnMut(&GrpoStepMetrics),
) -> Result<GrpoSummary> {
    if run.max_steps == 0 {
        return Err(TrainError::option("max_steps", "must be at least 1"));
    }
    let run_dir = RunDir::open(&run.output_dir, RunMode::from_flags(false, run.overwrite)?)?;
    let records = match records {
        Some(r) => r,
        None => read_prompt_records(&run.data)?,
    };
    let (model, encoder, generation) = grpo_setup(run)?;
    let device = parse_device(&run.device)?;
    device.seed(run.seed);
    let mut options = run.grpo.clone();
    options.pad_id = generation.eos_token_ids.first().copied().unwrap_or(0);
    let trainer = Trainer::new(model, &device, trainer_options(run))?;
    let learner = GrpoLearner::new(trainer, options)?;
    let mut grpo = GrpoTrainer::new(learner, records, rewards, generation, encoder)?;
    grpo.learner.trainer.set_run_id(run_dir.id());
    let metrics = run.output_dir.join("metrics.jsonl");
    let mut log =
        JsonlLogger::open(&metrics)?.with_tensorboard(&run.output_dir.join("tensorboard"), 0)?;
    let mut curve = Vec::new();
    // A batch without any reward is skipped; as many skips as steps end the run.
    while grpo.learner.trainer.state.step < run.max_steps {
        if grpo.skipped_batches >= run.max_steps {
            return Err(TrainError::option(
                "reward",
                format!(
                    "{} generation batches in a row had no completion with a reward",
                    grpo.skipped_batches
                ),
            ));
        }
        if let Some(m) = grpo.step()? {
            log.write("train", &m)?;
            curve.push((m.step, m.loss));
            on_step(&m);
        }
    }
    drop(log);
    write_loss_curve(&run.output_dir.join("loss_curve.png"), &curve, &[])?;
    let (history, skipped_batches) = (grpo.history.clone(), grpo.skipped_batches);
    let adapter_dir = run.output_dir.join("adapter");
    grpo.learner.trainer.into_model().export(&adapter_dir)?;
    Ok(GrpoSummary {
        history,
        skipped_batches,
        adapter_dir,
    })
}
