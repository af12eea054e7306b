//! The preference recipe (DPO, ORPO, CPO): model and tokenizer → preference pairs → LoRA
//! adapter (new, or continued from a PEFT adapter) → [`DpoTrainer`] steps (checkpointed, and
//! resumed exactly) → `metrics.jsonl`, `tensorboard/`, `loss_curve.png` and the adapter in PEFT's format. The
//! `dpo` example is a command line around [`run_dpo`].
use crate::dpo::{DpoStepMetrics, DpoTrainer, PreferencePairs};
use crate::error::{Result, TrainError};
use crate::export::Export;
use crate::logging::JsonlLogger;
use crate::plot::write_loss_curve;
use crate::preference::DpoOptions;
use crate::rundir::{RunDir, RunMode};
use crate::trainer::{Trainer, TrainerOptions};
use burn::tensor::Device;
use kiln_data::{ChatTemplate, FieldMap, PreferenceEncoder, read_preferences, shuffled};
use kiln_lora::{LoraConfig, LoraModel, TargetModules};
use kiln_models::backprop::Precision;
use kiln_models::fetch::resolve_model;
use kiln_models::{CausalLm, Pretrained, parse_device};
use std::path::{Path, PathBuf};

/// A preference run, DPO, ORPO, CPO or KTO (TRL's config names where it has them).
#[derive(Debug, Clone, PartialEq)]
pub struct DpoRun {
    /// A model directory, GGUF file or Hugging Face repo id.
    pub model: PathBuf,
    /// JSON Lines of preference pairs (standard, conversational or implicit prompt); for KTO
    /// ([`crate::kto_run::run_kto`]) unpaired records, or pairs it unpairs.
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
    /// `output_dir` is refused: [`RunDir`]'s rule, as for SFT).
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

/// The chat template conversational records are rendered with: `run.chat_template`, else the
/// model's.
pub(crate) fn chat_template(run: &DpoRun, lm: &Pretrained) -> Result<Option<ChatTemplate>> {
    Ok(ChatTemplate::select(
        run.chat_template.as_deref(),
        lm.extras.chat_template.as_deref(),
        lm.extras.chat_template_origin.as_deref(),
        lm.extras.bos_token.as_deref(),
        lm.extras.eos_token.as_deref(),
    )?)
}

/// Reads and tokenizes the pairs of `path` (shuffled with `seed` when asked): as TRL's
/// `DPOTrainer` for DPO, as its `ORPOTrainer`/`CPOTrainer` for the reference-free losses.
fn load_pairs(run: &DpoRun, lm: &Pretrained) -> Result<PreferencePairs> {
    let (bos, eos) = (
        lm.extras.bos_token.as_deref(),
        lm.extras.eos_token.as_deref(),
    );
    let template = chat_template(run, lm)?;
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

/// The trainer options of `run`: AdamW without weight decay, constant learning rate.
pub(crate) fn trainer_options(run: &DpoRun) -> TrainerOptions {
    TrainerOptions::constant_lr(
        run.lr,
        run.max_steps,
        run.grad_accum,
        run.max_grad_norm,
        run.seed,
        run.precision,
    )
}

/// `(step, loss)` of every training line of `metrics.jsonl` (a resumed run's earlier steps too).
pub(crate) fn logged_losses(path: &Path) -> Result<Vec<(usize, f64)>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v.get("step")?.as_u64()? as usize, v.get("loss")?.as_f64()?)))
        .collect())
}

/// Checks `run`, opens its directory (a fresh run never appends to another run's files) and
/// loads the model and tokenizer.
pub(crate) fn start(run: &DpoRun) -> Result<(RunDir, Device, Pretrained)> {
    if run.max_steps == 0 {
        return Err(TrainError::option("max_steps", "must be at least 1"));
    }
    let mode = RunMode::from_flags(run.resume, run.overwrite)?;
    let run_dir = RunDir::open(&run.output_dir, mode)?;
    let device = parse_device(&run.device)?;
    let path = resolve_model(Some(&run.model), true)?;
    let lm = Pretrained::load(&path, &device)?;
    Ok((run_dir, device, lm))
}

/// The trainer of the policy: `run.init_adapter` (trainable) or a new LoRA adapter (A drawn on
/// the host from the run's seed, B = 0).
pub(crate) fn policy_trainer(
    run: &DpoRun,
    model: CausalLm,
    device: &Device,
) -> Result<Trainer<LoraModel<CausalLm>>> {
    let model = match &run.init_adapter {
        Some(dir) => {
            let mut m = LoraModel::new(model);
            m.load_adapter(dir, "default")?;
            m
        }
        None => {
            let targets = TargetModules::Names(run.targets.clone());
            let config = LoraConfig::new(run.lora_r, run.lora_alpha, targets);
            kiln_lora::manual_seed(run.seed);
            LoraModel::with_adapter(model, "default", config)?
        }
    };
    device.seed(run.seed);
    Trainer::new(model, device, trainer_options(run))
}

/// Trains a LoRA adapter with DPO, ORPO or CPO (`run.dpo.loss_type`) and writes
/// `output_dir/{metrics.jsonl, tensorboard/, loss_curve.png, adapter/}` (and `checkpoints/step-N/` every
/// `save_steps`); `on_step` sees each step's metrics (a progress line). With `resume`, the run
/// continues from its newest checkpoint (the summary's history then holds the steps run now).
pub fn run_dpo(run: &DpoRun, mut on_step: impl FnMut(&DpoStepMetrics)) -> Result<DpoSummary> {
    if run.dpo.loss_type.unpaired() {
        return Err(TrainError::option(
            "loss_type",
            "KTO trains on unpaired records: run_kto",
        ));
    }
    let (run_dir, device, lm) = start(run)?;
    let pairs = load_pairs(run, &lm)?;
    let n = match &pairs {
        PreferencePairs::Dpo(p) => p.len(),
        PreferencePairs::Answers(p) => p.len(),
    };
    let mut options = run.dpo.clone();
    options.pad_id = lm.eos_token_ids().first().copied().unwrap_or(0);
    let trainer = policy_trainer(run, lm.model, &device)?;
    let mut dpo = DpoTrainer::new(trainer, pairs, options, run.max_steps)?;
    let (root, metrics) = (
        run_dir.checkpoint_dir(),
        run.output_dir.join("metrics.jsonl"),
    );
    // A checkpoint of another run in this directory is refused (run ids), as for SFT.
    let log = match run_dir.latest_checkpoint()?.filter(|_| run.resume) {
        Some(dir) => {
            dpo = dpo.resume(&device, &dir)?;
            tracing::info!("resumed from {}", dir.display());
            JsonlLogger::open_at(&metrics, dpo.trainer.state.step)?
        }
        None => JsonlLogger::open(&metrics)?,
    };
    let tensorboard = run.output_dir.join("tensorboard");
    let mut log = log.with_tensorboard(&tensorboard, dpo.trainer.state.step)?;
    dpo.trainer.set_run_id(run_dir.id());
    let every = run.save_steps.filter(|&e| e > 0);
    while dpo.trainer.state.step < run.max_steps {
        if let Some(m) = dpo.step()? {
            log.write("train", &m)?;
            on_step(&m);
            if every.is_some_and(|e| m.step % e == 0) {
                dpo.save_checkpoint(&root, run.save_total_limit)?;
            }
        }
    }
    drop(log);
    let curve = logged_losses(&metrics)?;
    write_loss_curve(&run.output_dir.join("loss_curve.png"), &curve, &[])?;
    let (dropped, history) = (dpo.dropped, dpo.history.clone());
    let adapter_dir = run.output_dir.join("adapter");
    dpo.trainer.into_model().export(&adapter_dir)?;
    Ok(DpoSummary {
        pairs: n,
        dropped,
        history,
        adapter_dir,
    })
}
