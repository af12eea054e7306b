//! The steps every training recipe shares with SFT ([`Sft`](crate::Sft)): the model and
//! tokenizer from a path (or the default model), the chat template, the adapter (continued from
//! a PEFT directory or new), the run directory, the metrics log (`metrics.jsonl` with
//! TensorBoard scalars), the step loop with its checkpoints, and at the end the loss curve and
//! the adapter. The DPO/ORPO/CPO, KTO, reward-model and GRPO recipes (`*_run.rs`) differ only in
//! their data and their trainer.
use crate::error::{Result, TrainError};
use crate::export::Export;
use crate::logging::JsonlLogger;
use crate::plot::write_loss_curve;
use crate::rundir::{RunDir, RunMode};
use crate::trainer::{Trainer, TrainerOptions};
use burn::module::Module;
use burn::tensor::Device;
use kiln_data::ChatTemplate;
use kiln_lora::{AdapterTarget, LoraConfig, LoraModel, TargetModules};
use kiln_models::backprop::Precision;
use kiln_models::fetch::resolve_model;
use kiln_models::{CausalLm, Pretrained, Quantization, parse_device};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The model `model` names (a directory, GGUF file or Hub id; empty: `$KILN_MODEL`, else the
/// default model, fetched if missing) with its tokenizer, on `device`, held as `quantization`
/// says. Returns the path loaded too.
pub(crate) fn load_model(
    model: &Path,
    device: &Device,
    quantization: Quantization,
) -> Result<(PathBuf, Pretrained)> {
    let given = Some(model).filter(|p| !p.as_os_str().is_empty());
    let path = resolve_model(given, true)?;
    let lm = Pretrained::load_as(&path, device, quantization)?;
    Ok((path, lm))
}

/// The chat template a run renders with ([`ChatTemplate::select`]): the Jinja file `file` when
/// given, else the model's own, else none.
pub(crate) fn chat_template(file: Option<&Path>, lm: &Pretrained) -> Result<Option<ChatTemplate>> {
    Ok(ChatTemplate::select(
        file,
        lm.extras.chat_template.as_deref(),
        lm.extras.chat_template_origin.as_deref(),
        lm.extras.bos_token.as_deref(),
        lm.extras.eos_token.as_deref(),
    )?)
}

/// The pad id of `lm`'s batches: its first end-of-sequence id.
pub(crate) fn pad_id(lm: &Pretrained) -> u32 {
    lm.eos_token_ids().first().copied().unwrap_or(0)
}

/// The adapter a run trains, named `default`: the PEFT adapter in `init_adapter` (it trains
/// on), else a new one of `config`, its A drawn on the host from `seed` and B = 0.
pub(crate) fn adapter<M: Module + AdapterTarget>(
    model: M,
    init_adapter: Option<&Path>,
    config: impl FnOnce() -> LoraConfig,
    seed: u64,
) -> Result<LoraModel<M>> {
    Ok(match init_adapter {
        Some(dir) => {
            let mut m = LoraModel::new(model);
            m.load_adapter(dir, "default")?;
            m
        }
        None => {
            kiln_lora::manual_seed(seed);
            LoraModel::with_adapter(model, "default", config())?
        }
    })
}

/// What the recipes' runs ([`DpoRun`](crate::DpoRun), [`RewardRun`](crate::RewardRun),
/// [`GrpoRun`](crate::GrpoRun)) have in common, borrowed from them.
pub(crate) struct Settings<'a> {
    pub model: &'a Path,
    pub device: &'a str,
    pub output_dir: &'a Path,
    pub max_steps: usize,
    pub lr: f64,
    pub grad_accum: usize,
    pub max_grad_norm: Option<f64>,
    pub seed: u64,
    pub precision: Option<Precision>,
    pub chat_template: Option<&'a Path>,
    pub init_adapter: Option<&'a Path>,
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub targets: &'a [String],
    /// Continue from the newest checkpoint under `output_dir/checkpoints/` when there is one.
    pub resume: bool,
    pub overwrite: bool,
    /// A checkpoint every this many steps, the newest `save_total_limit` kept.
    pub save_steps: Option<usize>,
    pub save_total_limit: usize,
}

/// The [`Settings`] of a run struct whose fields carry the shared names (`model`, `device`,
/// `output_dir`, `max_steps`, `lr`, `grad_accum`, `max_grad_norm`, `seed`, `precision`,
/// `chat_template`, `lora_r`, `lora_alpha`, `targets`, `overwrite`), with the fields given after
/// it (`init_adapter`, `resume`, `save_steps`, `save_total_limit`) set as written.
macro_rules! recipe_settings {
    ($run:expr, $($field:ident: $value:expr),* $(,)?) => {
        $crate::recipe::Settings {
            model: &$run.model,
            device: &$run.device,
            output_dir: &$run.output_dir,
            max_steps: $run.max_steps,
            lr: $run.lr,
            grad_accum: $run.grad_accum,
            max_grad_norm: $run.max_grad_norm,
            seed: $run.seed,
            precision: $run.precision,
            chat_template: $run.chat_template.as_deref(),
            lora_r: $run.lora_r,
            lora_alpha: $run.lora_alpha,
            targets: &$run.targets,
            overwrite: $run.overwrite,
            $($field: $value),*
        }
    };
}
pub(crate) use recipe_settings;

impl Settings<'_> {
    /// AdamW without weight decay, constant learning rate.
    pub(crate) fn trainer_options(&self) -> TrainerOptions {
        TrainerOptions::constant_lr(
            self.lr,
            self.max_steps,
            self.grad_accum,
            self.max_grad_norm,
            self.seed,
            self.precision,
        )
    }

    /// [`adapter`]: `init_adapter`, else a new one on `targets` with `lora_r` and `lora_alpha`
    /// (and what `configure` adds to its config).
    pub(crate) fn adapter<M: Module + AdapterTarget>(
        &self,
        model: M,
        configure: impl FnOnce(&mut LoraConfig),
    ) -> Result<LoraModel<M>> {
        let config = || {
            let targets = TargetModules::Names(self.targets.to_vec());
            let mut config = LoraConfig::new(self.lora_r, self.lora_alpha, targets);
            configure(&mut config);
            config
        };
        adapter(model, self.init_adapter, config, self.seed)
    }

    /// The trainer of a policy (DPO, KTO, GRPO): its adapter, then the device seeded (dropout).
    pub(crate) fn policy_trainer(
        &self,
        model: CausalLm,
        device: &Device,
    ) -> Result<Trainer<LoraModel<CausalLm>>> {
        let model = self.adapter(model, |_| {})?;
        device.seed(self.seed);
        Trainer::new(model, device, self.trainer_options())
    }
}

/// A recipe's trainer as [`Recipe::train`] drives it.
pub(crate) trait RecipeTrainer: Sized {
    /// One step's metrics (a `metrics.jsonl` line, with a `step` and a `loss`).
    type Metrics: Serialize;
    /// Optimizer steps done.
    fn steps_done(&self) -> usize;
    /// One optimizer step; `None` when none was made (a skipped step or batch).
    fn step(&mut self) -> Result<Option<Self::Metrics>>;
    /// The run id checkpoints record.
    fn set_run_id(&mut self, id: &str);
    /// Refuses to go on (GRPO: as many skipped batches as steps).
    fn check(&self, _max_steps: usize) -> Result<()> {
        Ok(())
    }
    /// Writes a checkpoint under `root`, keeping the newest `keep`.
    fn save_checkpoint(&mut self, _root: &Path, _keep: usize) -> Result<()> {
        Err(no_checkpoints())
    }
    /// Continues from the checkpoint in `dir`.
    fn resume(self, _device: &Device, _dir: &Path) -> Result<Self> {
        Err(no_checkpoints())
    }
}

fn no_checkpoints() -> TrainError {
    TrainError::option("save_steps", "this recipe writes no checkpoints")
}

/// A recipe run once its directory is open: the settings and the device.
pub(crate) struct Recipe<'a> {
    pub settings: Settings<'a>,
    pub run_dir: RunDir,
    pub device: Device,
}

impl<'a> Recipe<'a> {
    /// Checks the settings and opens the run directory (a fresh run never appends to another
    /// run's files: [`RunDir`]'s rule, as for SFT).
    pub(crate) fn open(settings: Settings<'a>) -> Result<Self> {
        if settings.max_steps == 0 {
            return Err(TrainError::option("max_steps", "must be at least 1"));
        }
        let mode = RunMode::from_flags(settings.resume, settings.overwrite)?;
        let run_dir = RunDir::open(settings.output_dir, mode)?;
        let device = parse_device(settings.device)?;
        Ok(Self {
            settings,
            run_dir,
            device,
        })
    }

    /// The run's model and tokenizer ([`load_model`]).
    pub(crate) fn load_model(&self) -> Result<Pretrained> {
        Ok(load_model(self.settings.model, &self.device, Quantization::default())?.1)
    }

    /// The run's chat template ([`chat_template`]).
    pub(crate) fn chat_template(&self, lm: &Pretrained) -> Result<Option<ChatTemplate>> {
        chat_template(self.settings.chat_template, lm)
    }

    /// Trains `t` to `max_steps`, first resuming it from the newest checkpoint when the run
    /// resumes: each step's metrics go to `metrics.jsonl` and TensorBoard (a resumed run first
    /// drops the lines of the steps after its checkpoint) and to `on_step`; a checkpoint every
    /// `save_steps`; then `loss_curve.png` from every logged step (a resumed run's earlier steps
    /// too).
    pub(crate) fn train<T: RecipeTrainer>(
        &self,
        mut t: T,
        mut on_step: impl FnMut(&T::Metrics),
    ) -> Result<T> {
        let s = &self.settings;
        // A checkpoint of another run in this directory is refused (run ids), as for SFT.
        if let Some(dir) = self.run_dir.latest_checkpoint()?.filter(|_| s.resume) {
            t = t.resume(&self.device, &dir)?;
            tracing::info!("resumed from {}", dir.display());
        }
        let done = t.steps_done();
        let metrics = s.output_dir.join("metrics.jsonl");
        let mut log = JsonlLogger::open_at(&metrics, done)?
            .with_tensorboard(&s.output_dir.join("tensorboard"), done)?;
        t.set_run_id(self.run_dir.id());
        let every = s.save_steps.filter(|&e| e > 0);
        while t.steps_done() < s.max_steps {
            t.check(s.max_steps)?;
            if let Some(m) = t.step()? {
                log.write("train", &m)?;
                on_step(&m);
                if every.is_some_and(|e| t.steps_done().is_multiple_of(e)) {
                    t.save_checkpoint(&self.run_dir.checkpoint_dir(), s.save_total_limit)?;
                }
            }
        }
        drop(log);
        let curve = logged_losses(&metrics)?;
        write_loss_curve(&s.output_dir.join("loss_curve.png"), &curve, &[])?;
        Ok(t)
    }

    /// Writes the trained adapter in PEFT's format to `output_dir/adapter` and returns that
    /// directory.
    pub(crate) fn save_adapter(&self, model: &impl Export) -> Result<PathBuf> {
        let dir = self.settings.output_dir.join("adapter");
        model.export(&dir)?;
        Ok(dir)
    }
}

/// `(step, loss)` of every training line of `metrics.jsonl` (a resumed run's earlier steps too).
fn logged_losses(path: &Path) -> Result<Vec<(usize, f64)>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v.get("step")?.as_u64()? as usize, v.get("loss")?.as_f64()?)))
        .collect())
}
