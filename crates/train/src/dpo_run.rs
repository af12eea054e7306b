//! The preference recipe (DPO, ORPO, CPO): model and tokenizer → preference pairs → LoRA
//! adapter (new, or continued from a PEFT adapter) → [`DpoTrainer`] steps (checkpointed, and
//! resumed exactly) → `metrics.jsonl`, `tensorboard/`, `loss_curve.png` and the adapter in PEFT's format. The
//! `dpo` example is a command line around [`run_dpo`].
use crate::dpo::{DpoStepMetrics, DpoTrainer, PreferencePairs};
use crate::error::{Result, TrainError};
use crate::model::CausalModel;
use crate::preference::DpoOptions;
use crate::recipe::{Recipe, RecipeTrainer, Settings, pad_id, recipe_settings};
use burn::tensor::Device;
use kiln_data::{FieldMap, PreferenceEncoder, read_preferences, shuffled};
use kiln_models::Pretrained;
use kiln_models::backprop::Precision;
use std::path::{Path, PathBuf};

/// A preference run, DPO, ORPO, CPO or KTO (TRL's config names where it has them).
#[derive(Debug, Clone, PartialEq)]
pub struct DpoRun {
    /// A model directory, GGUF file or Hugging Face repo id.
    pub model: PathBuf,
    /// JSON Lines of preference pairs (standard, conversational or implicit prompt); for KTO
    /// ([`run_kto`](crate::run_kto)) unpaired records, or pairs it unpairs.
    pub data: PathBuf,
    pub output_dir: PathBuf,
    pub max_steps: usize,
    pub lr: f64,
    pub dpo: DpoOptions,
    pub grad_accum: usize,
    pub max_grad_norm: Option<f64>,
    /// Continue from this PEFT adapter (it trains, and its starting weights are the reference).
    pub init_adapter: Option<PathBuf>,
    /// A new adapter's rank, alpha and target modules (without `init_adapter`).
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub targets: Vec<String>,
    /// Shuffles the pairs once (TRL's sampler shuffles too; the order is not TRL's).
    pub seed: u64,
    pub shuffle: bool,
    pub precision: Option<Precision>,
    pub device: String,
    /// A Jinja chat template file instead of the model's.
    pub chat_template: Option<PathBuf>,
    /// Write a checkpoint under `output_dir/checkpoints/` every this many steps.
    pub save_steps: Option<usize>,
    /// Checkpoints kept (the newest).
    pub save_total_limit: usize,
    /// Continue from the newest checkpoint under `output_dir/checkpoints/` when there is one
    /// (built as the run started, then restored: the steps equal an uninterrupted run's).
    pub resume: bool,
    /// Delete a previous kiln run in `output_dir` first (without it, or `resume`, a non-empty
    /// `output_dir` is refused: [`RunDir`](crate::RunDir)'s rule, as for SFT).
    pub overwrite: bool,
}

impl Default for DpoRun {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            data: PathBuf::new(),
            output_dir: PathBuf::from("runs/dpo"),
            max_steps: 100,
            lr: 1e-6,
            dpo: DpoOptions::default(),
            grad_accum: 1,
            max_grad_norm: Some(1.0),
            init_adapter: None,
            lora_r: 16,
            lora_alpha: 32.0,
            targets: ["q_proj", "k_proj", "v_proj", "o_proj"]
                .map(String::from)
                .to_vec(),
            seed: 42,
            shuffle: true,
            precision: None,
            device: "cpu".into(),
            chat_template: None,
            save_steps: None,
            save_total_limit: 2,
            resume: false,
            overwrite: false,
        }
    }
}

/// What a DPO run did.
#[derive(Debug, Clone)]
pub struct DpoSummary {
    pub pairs: usize,
    /// Pairs left out because their prompt alone fills `max_length` (`keep_start`).
    pub dropped: usize,
    pub history: Vec<DpoStepMetrics>,
    pub adapter_dir: PathBuf,
}

impl DpoRun {
    /// The settings the recipes share.
    pub(crate) fn settings(&self) -> Settings<'_> {
        recipe_settings!(self,
            init_adapter: self.init_adapter.as_deref(),
            resume: self.resume,
            save_steps: self.save_steps,
            save_total_limit: self.save_total_limit,
        )
    }
}

/// Reads and tokenizes the pairs of `path` (shuffled with `seed` when asked): as TRL's
/// `DPOTrainer` for DPO, as its `ORPOTrainer`/`CPOTrainer` for the reference-free losses.
fn load_pairs(recipe: &Recipe<'_>, run: &DpoRun, lm: &Pretrained) -> Result<PreferencePairs> {
    let (bos, eos) = (
        lm.extras.bos_token.as_deref(),
        lm.extras.eos_token.as_deref(),
    );
    let template = recipe.chat_template(lm)?;
    let encoder = PreferenceEncoder::new(&lm.tokenizer, template.as_ref(), eos);
    let records = read_preferences(&run.data, &FieldMap::default())?;
    let order = |n: usize| -> Vec<usize> {
        let idx: Vec<usize> = (0..n).collect();
        if run.shuffle {
            shuffled(idx, run.seed)
        } else {
            idx
        }
    };
    if run.dpo.loss_type.needs_reference() {
        let pairs = records
            .iter()
            .map(|(at, p)| encoder.encode(p, at))
            .collect::<kiln_data::Result<Vec<_>>>()?;
        return Ok(PreferencePairs::Dpo(
            order(pairs.len())
                .into_iter()
                .map(|i| pairs[i].clone())
                .collect(),
        ));
    }
    // TRL's ORPO/CPO read the tokenizer's own BOS and EOS ids.
    let id = |t: Option<&str>| t.and_then(|t| lm.tokenizer.token_to_id(t));
    let eos_id = id(eos).ok_or_else(|| {
        TrainError::option(
            "model",
            "ORPO and CPO append the tokenizer's EOS token, and this model names none",
        )
    })?;
    let pairs = records
        .iter()
        .map(|(at, p)| encoder.encode_answers(p, at, id(bos), eos_id))
        .collect::<kiln_data::Result<Vec<_>>>()?;
    Ok(PreferencePairs::Answers(
        order(pairs.len())
            .into_iter()
            .map(|i| pairs[i].clone())
            .collect(),
    ))
}

impl<M: CausalModel> RecipeTrainer for DpoTrainer<M> {
    type Metrics = DpoStepMetrics;
    fn steps_done(&self) -> usize {
        self.trainer.state.step
    }
    fn step(&mut self) -> Result<Option<DpoStepMetrics>> {
        DpoTrainer::step(self)
    }
    fn set_run_id(&mut self, id: &str) {
        self.trainer.set_run_id(id);
    }
    fn save_checkpoint(&mut self, root: &Path, keep: usize) -> Result<()> {
        DpoTrainer::save_checkpoint(self, root, keep).map(drop)
    }
    fn resume(self, device: &Device, dir: &Path) -> Result<Self> {
        DpoTrainer::resume(self, device, dir)
    }
}

/// Trains a LoRA adapter with DPO, ORPO or CPO (`run.dpo.loss_type`) and writes
/// `output_dir/{metrics.jsonl, tensorboard/, loss_curve.png, adapter/}` (and `checkpoints/step-N/` every
/// `save_steps`); `on_step` sees each step's metrics (a progress line). With `resume`, the run
/// continues from its newest checkpoint (the summary's history then holds the steps run now).
pub fn run_dpo(run: &DpoRun, on_step: impl FnMut(&DpoStepMetrics)) -> Result<DpoSummary> {
    if run.dpo.loss_type.unpaired() {
        return Err(TrainError::option(
            "loss_type",
            "KTO trains on unpaired records: run_kto",
        ));
    }
    let recipe = Recipe::open(run.settings())?;
    let lm = recipe.load_model()?;
    let pairs = load_pairs(&recipe, run, &lm)?;
    let n = match &pairs {
        PreferencePairs::Dpo(p) => p.len(),
        PreferencePairs::Answers(p) => p.len(),
    };
    let mut options = run.dpo.clone();
    options.pad_id = pad_id(&lm);
    let trainer = recipe.settings.policy_trainer(lm.model, &recipe.device)?;
    let dpo = DpoTrainer::new(trainer, pairs, options, run.max_steps)?;
    let dpo = recipe.train(dpo, on_step)?;
    let (dropped, history) = (dpo.dropped, dpo.history.clone());
    let adapter_dir = recipe.save_adapter(&dpo.trainer.into_model())?;
    Ok(DpoSummary {
        pairs: n,
        dropped,
        history,
        adapter_dir,
    })
}
