//! The reward-model recipe: a causal LM (directory, GGUF file or repo id) → a new `score` head
//! (one label, N(0, `initializer_range`)) → preference pairs tokenized as TRL's
//! `RewardTrainer` → a LoRA adapter with the head in `modules_to_save` → [`RewardTrainer`]
//! steps → `metrics.jsonl`, `loss_curve.png` and `adapter/` (PEFT's files, task SEQ_CLS: loads
//! with `PeftModel.from_pretrained` on `AutoModelForSequenceClassification`). The
//! `reward_model` example is a command line around [`run_reward`].
use crate::error::{Result, TrainError};
use crate::logging::JsonlLogger;
use crate::plot::write_loss_curve;
use crate::reward::{PairEval, RewardOptions, RewardPair, RewardStepMetrics, RewardTrainer};
use crate::rundir::{RunDir, RunMode};
use crate::trainer::{Trainer, TrainerOptions};
use kiln_data::{ChatTemplate, FieldMap, PreferenceEncoder, read_reward_records, shuffled};
use kiln_lora::{LoraConfig, LoraModel, TargetModules};
use kiln_models::backprop::Precision;
use kiln_models::fetch::resolve_model;
use kiln_models::{ClassifierConfig, Pretrained, SequenceClassifier, parse_device};
use std::path::PathBuf;

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

/// The pairs of `run.data` tokenized as TRL's `RewardTrainer` (shuffled with `seed` when asked).
fn load_pairs(run: &RewardRun, lm: &Pretrained) -> Result<Vec<RewardPair>> {
    let (bos, eos) = (
        lm.extras.bos_token.as_deref(),
        lm.extras.eos_token.as_deref(),
    );
    let template = ChatTemplate::select(
        run.chat_template.as_deref(),
        lm.extras.chat_template.as_deref(),
        lm.extras.chat_template_origin.as_deref(),
        bos,
        eos,
    )?;
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

/// The trainer options of `run`: AdamW without weight decay, constant learning rate.
fn trainer_options(run: &RewardRun) -> TrainerOptions {
    TrainerOptions::constant_lr(
        run.lr,
        run.max_steps,
        run.grad_accum,
        run.max_grad_norm,
        run.seed,
        run.precision,
    )
}

/// The causal LM of `lm` with a new one-label head (pad token: the tokenizer's, else its EOS,
/// as TRL sets it) and a new LoRA adapter training the head in full.
fn reward_model(run: &RewardRun, lm: Pretrained) -> Result<(LoraModel<SequenceClassifier>, u32)> {
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
    lm.model.device().seed(run.seed);
    let cls = SequenceClassifier::from_causal_lm(lm.model, head);
    let mut config = LoraConfig::new(
        run.lora_r,
        run.lora_alpha,
        TargetModules::Names(run.targets.clone()),
    );
    config.modules_to_save = Some(vec![kiln_models::classifier::SCORE.into()]);
    config.task_type = Some("SEQ_CLS".into());
    kiln_lora::manual_seed(run.seed);
    Ok((LoraModel::with_adapter(cls, "default", config)?, pad))
}

/// Trains a reward model (LoRA adapter and `score` head) with TRL's Bradley–Terry loss and
/// writes `output_dir/{metrics.jsonl, tensorboard/, loss_curve.png, adapter/}`; `on_step` sees each step's
/// metrics. The summary holds the loss and pairwise accuracy on the training pairs before and
/// after.
pub fn run_reward(
    run: &RewardRun,
    mut on_step: impl FnMut(&RewardStepMetrics),
) -> Result<RewardSummary> {
    if run.max_steps == 0 {
        return Err(TrainError::option("max_steps", "must be at least 1"));
    }
    let run_dir = RunDir::open(&run.output_dir, RunMode::from_flags(false, run.overwrite)?)?;
    let device = parse_device(&run.device)?;
    let path = resolve_model(Some(&run.model), true)?;
    let lm = Pretrained::load(&path, &device)?;
    let pairs = load_pairs(run, &lm)?;
    let n = pairs.len();
    let (model, pad_id) = reward_model(run, lm)?;
    let trainer = Trainer::new(model, &device, trainer_options(run))?;
    let options = RewardOptions {
        batch_size: run.batch_size,
        max_length: run.max_length,
        center_rewards_coefficient: run.center_rewards_coefficient,
        pad_id,
    };
    let mut rm = RewardTrainer::new(trainer, pairs, options)?;
    rm.trainer.set_run_id(run_dir.id());
    let before = rm.evaluate()?;
    let mut log = JsonlLogger::open(&run.output_dir.join("metrics.jsonl"))?
        .with_tensorboard(&run.output_dir.join("tensorboard"), 0)?;
    while rm.trainer.state.step < run.max_steps {
        if let Some(m) = rm.step()? {
            log.write("train", &m)?;
            on_step(&m);
        }
    }
    drop(log);
    let after = rm.evaluate()?;
    let curve: Vec<(usize, f64)> = rm.history.iter().map(|m| (m.step, m.loss)).collect();
    write_loss_curve(&run.output_dir.join("loss_curve.png"), &curve, &[])?;
    let adapter_dir = run.output_dir.join("adapter");
    let (dropped, history) = (rm.dropped, rm.history.clone());
    rm.trainer
        .into_model()
        .save_adapter(&adapter_dir, "default")?;
    Ok(RewardSummary {
        pairs: n,
        dropped,
        before,
        after,
        history,
        adapter_dir,
    })
}
