//! The GRPO recipe: model and tokenizer → prompt-only records → LoRA adapter (new, or continued
//! from a PEFT adapter, whose starting weights are then the reference) → [`GrpoTrainer`]
//! steps → `metrics.jsonl` (TRL's names, generation and training seconds apart),
//! `loss_curve.png` and the adapter in PEFT's format; checkpoints every `save_steps` (with
//! where the sampling stands) and an exact `resume`.
use crate::error::{Result, TrainError};
use crate::grpo::{GrpoLearner, GrpoOptions, GrpoStepMetrics};
use crate::grpo_online::{GrpoTrainer, PromptEncoder, PromptRecord, Reward, read_prompt_records};
use crate::model::CausalModel;
use crate::recipe::{Recipe, RecipeTrainer, Settings, chat_template, load_model, recipe_settings};
use burn::tensor::Device;
use kiln_lora::LoraModel;
use kiln_models::backprop::Precision;
use kiln_models::{CausalLm, GenerationConfig, Pretrained, Quantization, Sampling, parse_device};
use std::path::{Path, PathBuf};

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
    /// Training precision (`None`: bf16 on CPUs with bf16 units, f32 elsewhere); the rollouts
    /// sample in it too.
    pub precision: Option<Precision>,
    /// Hold the frozen quantized base also in bf16 once for the run
    /// ([`GrpoLearner::hold_bf16_weights`]; bf16 precision only): rollouts of several sequences
    /// multiply by it directly instead of dequantizing at every product, for 2 bytes per base
    /// weight more (about 270 MB on SmolLM2-135M, 14 GB on a 7B model).
    pub bf16_weights: bool,
    pub device: String,
    /// A Jinja chat template file instead of the model's.
    pub chat_template: Option<PathBuf>,
    /// Write a checkpoint under `output_dir/checkpoints/` every this many steps (a multiple of
    /// `num_iterations`).
    pub save_steps: Option<usize>,
    /// Checkpoints kept (the newest).
    pub save_total_limit: usize,
    /// Continue from the newest checkpoint under `output_dir/checkpoints/` when there is one
    /// (built as the run started, then restored: the steps sample and train as an
    /// uninterrupted run's).
    pub resume: bool,
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
            bf16_weights: false,
            device: "cpu".into(),
            chat_template: None,
            save_steps: None,
            save_total_limit: 2,
            resume: false,
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

impl GrpoRun {
    /// The settings the recipes share.
    fn settings(&self) -> Settings<'_> {
        recipe_settings!(self,
            init_adapter: self.init_adapter.as_deref(),
            resume: self.resume,
            save_steps: self.save_steps,
            save_total_limit: self.save_total_limit,
        )
    }
}

/// The prompt encoder (`lm`'s tokenizer and the run's chat template) and the sampling settings
/// of `run`.
fn prompts_and_sampling(
    run: &GrpoRun,
    lm: &Pretrained,
) -> Result<(PromptEncoder, GenerationConfig)> {
    let template = chat_template(run.chat_template.as_deref(), lm)?;
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
    Ok((encoder, generation))
}

/// The model (with its new or continued adapter), the prompt encoder and the generation
/// settings of `run`.
pub fn grpo_setup(run: &GrpoRun) -> Result<(LoraModel<CausalLm>, PromptEncoder, GenerationConfig)> {
    let device = parse_device(&run.device)?;
    let (_, lm) = load_model(&run.model, &device, Quantization::default())?;
    let (encoder, generation) = prompts_and_sampling(run, &lm)?;
    let model = run.settings().adapter(lm.model, |_| {})?;
    Ok((model, encoder, generation))
}

impl<M: CausalModel> RecipeTrainer for GrpoTrainer<M> {
    type Metrics = GrpoStepMetrics;
    fn steps_done(&self) -> usize {
        self.learner.trainer.state.step
    }
    fn step(&mut self) -> Result<Option<GrpoStepMetrics>> {
        GrpoTrainer::step(self)
    }
    fn set_run_id(&mut self, id: &str) {
        self.learner.trainer.set_run_id(id);
    }
    fn save_checkpoint(&mut self, root: &Path, keep: usize) -> Result<()> {
        GrpoTrainer::save_checkpoint(self, root, keep).map(drop)
    }
    fn resume(self, device: &Device, dir: &Path) -> Result<Self> {
        GrpoTrainer::resume(self, device, dir)
    }
    /// A batch without any reward is skipped; as many skips as steps end the run.
    fn check(&self, max_steps: usize) -> Result<()> {
        if self.skipped_batches >= max_steps {
            return Err(TrainError::option(
                "reward",
                format!(
                    "{} generation batches in a row had no completion with a reward",
                    self.skipped_batches
                ),
            ));
        }
        Ok(())
    }
}

/// Trains a LoRA adapter with GRPO on `records` (or `run.data` when `None`) scored by
/// `rewards` (summed with their weights), and writes `output_dir/{metrics.jsonl, tensorboard/,
/// loss_curve.png, adapter/}`; `on_step` sees each step's metrics.
pub fn run_grpo(
    run: &GrpoRun,
    records: Option<Vec<PromptRecord>>,
    rewards: Vec<(Reward, f64)>,
    on_step: impl FnMut(&GrpoStepMetrics),
) -> Result<GrpoSummary> {
    let recipe = Recipe::open(run.settings())?;
    let records = match records {
        Some(r) => r,
        None => read_prompt_records(&run.data)?,
    };
    let lm = recipe.load_model()?;
    let (encoder, generation) = prompts_and_sampling(run, &lm)?;
    let trainer = recipe.settings.policy_trainer(lm.model, &recipe.device)?;
    let mut options = run.grpo.clone();
    options.pad_id = generation.eos_token_ids.first().copied().unwrap_or(0);
    let mut learner = GrpoLearner::new(trainer, options)?;
    if run.bf16_weights {
        let bytes = learner.hold_bf16_weights()?;
        tracing::info!(
            "frozen base held in bf16 for the rollouts: {} MB",
            bytes >> 20
        );
    }
    let grpo = GrpoTrainer::new(learner, records, rewards, generation, encoder)?;
    let grpo = recipe.train(grpo, on_step)?;
    let (history, skipped_batches) = (grpo.history.clone(), grpo.skipped_batches);
    let adapter_dir = recipe.save_adapter(&grpo.learner.trainer.into_model())?;
    Ok(GrpoSummary {
        history,
        skipped_batches,
        adapter_dir,
    })
}
