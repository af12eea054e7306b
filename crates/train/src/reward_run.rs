//! The reward-model recipe: a causal LM (directory, GGUF file or repo id) → a new `score` head
//! (one label, N(0, `initializer_range`)) → preference pairs tokenized as TRL's
//! `RewardTrainer` → a LoRA adapter with the head in `modules_to_save` → [`RewardTrainer`]
//! steps → `metrics.jsonl`, `loss_curve.png` and `adapter/` (PEFT's files, task SEQ_CLS: loads
//! with `PeftModel.from_pretrained` on `AutoModelForSequenceClassification`). The
//! `reward_model` example is a command line around [`run_reward`]. Checkpoints every
//! `save_steps` and an exact `resume`, as the other recipes.
use crate::error::{Result, TrainError};
use crate::recipe::{Recipe, RecipeTrainer, Settings, recipe_settings};
use crate::reward::{
    ClassifierModel, PairEval, RewardOptions, RewardPair, RewardStepMetrics, RewardTrainer,
};
use crate::trainer::Trainer;
use burn::tensor::Device;
use kiln_data::{FieldMap, PreferenceEncoder, read_reward_records, shuffled};
use kiln_lora::LoraModel;
use kiln_models::backprop::Precision;
use kiln_models::{ClassifierConfig, Pretrained, SequenceClassifier};
use std::path::{Path, PathBuf};

/// A reward-model run (TRL's `RewardConfig` names where it has them).
#[derive(Debug, Clone, PartialEq)]
pub struct RewardRun {
    /// A model directory, GGUF file or Hugging Face repo id (a causal LM: the head is new).
    pub model: PathBuf,
    /// JSON Lines of preference pairs (standard, conversational or implicit prompt), with an
    /// optional `margin` column.
    pub data: PathBuf,
    pub output_dir: PathBuf,
    pub max_steps: usize,
    pub lr: f64,
    pub batch_size: usize,
    pub grad_accum: usize,
    /// Pairs with a side longer than this are left out (TRL's `max_length`).
    pub max_length: Option<usize>,
    /// The margin of pairs without a `margin` column.
    pub margin: Option<f64>,
    pub center_rewards_coefficient: Option<f64>,
    pub max_grad_norm: Option<f64>,
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub targets: Vec<String>,
    /// Seeds the head's and the adapter's init, and the pair order when `shuffle`.
    pub seed: u64,
    pub shuffle: bool,
    pub precision: Option<Precision>,
    pub device: String,
    /// A Jinja chat template file instead of the model's.
    pub chat_template: Option<PathBuf>,
    /// Write a checkpoint under `output_dir/checkpoints/` every this many steps (the adapter,
    /// the head, AdamW's state and the data position).
    pub save_steps: Option<usize>,
    /// Checkpoints kept (the newest).
    pub save_total_limit: usize,
    /// Continue from the newest checkpoint under `output_dir/checkpoints/` when there is one
    /// (built as the run started, then restored: the steps equal an uninterrupted run's).
    pub resume: bool,
    /// Delete a previous kiln run in `output_dir` first.
    pub overwrite: bool,
}

impl Default for RewardRun {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            data: PathBuf::new(),
            output_dir: PathBuf::from("runs/reward"),
            max_steps: 100,
            lr: 1e-4,
            batch_size: 2,
            grad_accum: 1,
            max_length: Some(1024),
            margin: None,
            center_rewards_coefficient: None,
            max_grad_norm: Some(1.0),
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

/// What a reward-model run did.
#[derive(Debug, Clone)]
pub struct RewardSummary {
    pub pairs: usize,
    /// Pairs left out for a side longer than `max_length`.
    pub dropped: usize,
    /// Loss, pairwise accuracy and margin on the training pairs before the first step.
    pub before: PairEval,
    /// The same after the last step.
    pub after: PairEval,
    pub history: Vec<RewardStepMetrics>,
    pub adapter_dir: PathBuf,
}

impl RewardRun {
    /// The settings the recipes share (always a new adapter).
    fn settings(&self) -> Settings<'_> {
        recipe_settings!(self,
            init_adapter: None,
            resume: self.resume,
            save_steps: self.save_steps,
            save_total_limit: self.save_total_limit,
        )
    }
}

/// The pairs of `run.data` tokenized as TRL's `RewardTrainer` (shuffled with `seed` when asked).
fn load_pairs(recipe: &Recipe<'_>, run: &RewardRun, lm: &Pretrained) -> Result<Vec<RewardPair>> {
    let eos = lm.extras.eos_token.as_deref();
    let template = recipe.chat_template(lm)?;
    let encoder = PreferenceEncoder::new(&lm.tokenizer, template.as_ref(), eos);
    let records = read_reward_records(&run.data, &FieldMap::default())?;
    let mut pairs = Vec::with_capacity(records.len());
    for r in &records {
        let [chosen, rejected] = encoder.encode_sequences(&r.pair, &r.at)?;
        pairs.push(RewardPair {
            chosen,
            rejected,
            margin: r.margin.or(run.margin),
        });
    }
    if run.shuffle {
        let order = shuffled((0..pairs.len()).collect(), run.seed);
        pairs = order.into_iter().map(|i| pairs[i].clone()).collect();
    }
    Ok(pairs)
}

/// The causal LM of `lm` with a new one-label head (pad token: the tokenizer's, else its EOS,
/// as TRL sets it) and a new LoRA adapter training the head in full.
fn reward_model(
    recipe: &Recipe<'_>,
    lm: Pretrained,
) -> Result<(LoraModel<SequenceClassifier>, u32)> {
    let seed = recipe.settings.seed;
    let id = |t: Option<&str>| t.and_then(|t| lm.tokenizer.token_to_id(t));
    let pad = id(lm.extras.pad_token.as_deref())
        .or_else(|| id(lm.extras.eos_token.as_deref()))
        .ok_or_else(|| {
            TrainError::option(
                "model",
                "the tokenizer names neither a pad nor an EOS token",
            )
        })?;
    let mut head = ClassifierConfig::new(1);
    head.pad_token_id = Some(pad);
    if let Some(r) = lm
        .hf_config
        .get("initializer_range")
        .and_then(|r| r.as_f64())
    {
        head.initializer_range = r;
    }
    lm.model.device().seed(seed);
    let cls = SequenceClassifier::from_causal_lm(lm.model, head);
    let model = recipe.settings.adapter(cls, |config| {
        config.modules_to_save = Some(vec![kiln_models::classifier::SCORE.into()]);
        config.task_type = Some("SEQ_CLS".into());
    })?;
    Ok((model, pad))
}

impl<M: ClassifierModel> RecipeTrainer for RewardTrainer<M> {
    type Metrics = RewardStepMetrics;
    fn steps_done(&self) -> usize {
        self.trainer.state.step
    }
    fn step(&mut self) -> Result<Option<RewardStepMetrics>> {
        RewardTrainer::step(self)
    }
    fn set_run_id(&mut self, id: &str) {
        self.trainer.set_run_id(id);
    }
    fn save_checkpoint(&mut self, root: &Path, keep: usize) -> Result<()> {
        self.trainer.save_checkpoint(root, keep).map(drop)
    }
    fn resume(self, device: &Device, dir: &Path) -> Result<Self> {
        RewardTrainer::resume(self, device, dir)
    }
}

/// Trains a reward model (LoRA adapter and `score` head) with TRL's Bradley–Terry loss and
/// writes `output_dir/{metrics.jsonl, tensorboard/, loss_curve.png, adapter/}`; `on_step` sees each step's
/// metrics. The summary holds the loss and pairwise accuracy on the training pairs before and
/// after.
pub fn run_reward(
    run: &RewardRun,
    on_step: impl FnMut(&RewardStepMetrics),
) -> Result<RewardSummary> {
    let recipe = Recipe::open(run.settings())?;
    let lm = recipe.load_model()?;
    let pairs = load_pairs(&recipe, run, &lm)?;
    let n = pairs.len();
    let (model, pad_id) = reward_model(&recipe, lm)?;
    let trainer = Trainer::new(model, &recipe.device, recipe.settings.trainer_options())?;
    let options = RewardOptions {
        batch_size: run.batch_size,
        max_length: run.max_length,
        center_rewards_coefficient: run.center_rewards_coefficient,
        pad_id,
    };
    let rm = RewardTrainer::new(trainer, pairs, options)?;
    let before = rm.evaluate()?;
    let rm = recipe.train(rm, on_step)?;
    let after = rm.evaluate()?;
    let (dropped, history) = (rm.dropped, rm.history.clone());
    let adapter_dir = recipe.save_adapter(&rm.trainer.into_model())?;
    Ok(RewardSummary {
        pairs: n,
        dropped,
        before,
        after,
        history,
        adapter_dir,
    })
}
