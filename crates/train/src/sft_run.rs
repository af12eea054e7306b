//! The SFT recipe: config → model → data → LoRA adapter (or every parameter) → [`fit`] →
//! adapter in PEFT's format, model card, optional GGUF and merged exports. The `sft` example is
//! a command line around [`run_sft`]; `census_qa` and `tutor` make their own data and evaluate
//! around the same steps ([`Sft`]).
//!
//! ```no_run
//! use kiln_train::{RunMode, SftConfig, run_sft};
//!
//! let mut config = SftConfig::new("models/SmolLM2-135M-Instruct");
//! config.data.train = vec!["data/tutor.jsonl".into()];
//! config.max_steps = Some(20);
//! config.lora = Some(kiln_lora::LoraConfig::new(
//!     16,
//!     32.0,
//!     kiln_lora::TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]),
//! ));
//! let summary = run_sft(&config, RunMode::Fresh, |event| println!("{event}"))?;
//! println!("adapter in {}", summary.output.display());
//! # Ok::<(), kiln_train::TrainError>(())
//! ```
use crate::batch::BatchSource;
use crate::callback::Callback;
use crate::card::TrainingMetadata;
use crate::config::SftConfig;
use crate::data::{SftData, encoder_for, prepare_data, stream_options};
use crate::error::Result;
use crate::export::Export;
use crate::generation_eval::GenerationEvalCallback;
use crate::logging::standard_callbacks;
use crate::recipe::{adapter, chat_template, load_model, pad_id};
use crate::run::{FitOptions, RunSummary, fit};
use crate::rundir::{RunDir, RunMode};
use crate::stream::StreamedBatches;
use crate::trainer::{Trainer, TrainerOptions};
use burn::module::Module;
use kiln_data::ChatTemplate;
use kiln_lora::LoraModel;
use kiln_models::gguf::GgufExport;
use kiln_models::{CausalLm, Pretrained, parse_device};
use std::fmt;
use std::path::PathBuf;

/// What a run reports on the way, for a command line to print (`Display` gives the line).
#[derive(Debug, Clone, PartialEq)]
pub enum SftEvent {
    /// The model file or directory about to load.
    Model(PathBuf),
    /// The prepared data.
    Data {
        train_examples: usize,
        tokens: usize,
        trained_tokens: usize,
        truncated: usize,
        dropped: usize,
        val_examples: usize,
    },
    /// `data.streaming`: rows counted in the training files.
    Streaming {
        micro_batches: usize,
        examples: usize,
        tokens: usize,
    },
    /// `eval.generation_examples` is set but there is no held-out data.
    NoGenerationEval,
    /// Trainable parameters (PEFT's `print_trainable_parameters` line for LoRA).
    Parameters(String),
    /// Continuing from this checkpoint.
    Resuming(PathBuf),
    /// Micro-batches per epoch and the steps this run trains to.
    Plan {
        micro_batches: usize,
        steps_per_epoch: usize,
        total_steps: usize,
    },
    /// An export written: what and where.
    Saved(&'static str, PathBuf),
}

impl fmt::Display for SftEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Model(p) => write!(f, "model: {}", p.display()),
            Self::Data {
                train_examples,
                tokens,
                trained_tokens,
                truncated,
                dropped,
                val_examples,
            } => write!(
                f,
                "data: {train_examples} training examples ({tokens} tokens, {trained_tokens} \
                 trained, {truncated} truncated, {dropped} dropped), {val_examples} validation"
            ),
            Self::Streaming {
                micro_batches,
                examples,
                tokens,
            } => write!(
                f,
                "streaming {micro_batches} packed micro-batches per epoch ({examples} examples, \
                 {tokens} tokens) from the files"
            ),
            Self::NoGenerationEval => {
                write!(f, "no validation data: generation evaluation skipped")
            }
            Self::Parameters(report) => f.write_str(report),
            Self::Resuming(dir) => write!(f, "resuming from {}", dir.display()),
            Self::Plan {
                micro_batches,
                steps_per_epoch,
                total_steps,
            } => write!(
                f,
                "{micro_batches} micro-batches per epoch ({steps_per_epoch} steps); training \
                 {total_steps} steps"
            ),
            Self::Saved(what, p) => write!(f, "{what}: {}", p.display()),
        }
    }
}

/// The batches a run trains on, and the example counts its model card states.
#[derive(Clone, Copy)]
pub struct SftBatches<'a> {
    pub train: &'a dyn BatchSource,
    pub validation: Option<&'a dyn BatchSource>,
    pub train_examples: usize,
    pub val_examples: usize,
}

impl fmt::Debug for SftBatches<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SftBatches")
            .field("train", &self.train.len())
            .field("validation", &self.validation.map(|v| v.len()))
            .field("train_examples", &self.train_examples)
            .field("val_examples", &self.val_examples)
            .finish()
    }
}

impl<'a> SftBatches<'a> {
    /// The batches of [`prepare_data`] (validation when it holds any).
    pub fn from_data(data: &'a SftData) -> Self {
        Self {
            train: &data.train,
            validation: (!data.validation.is_empty())
                .then_some(&data.validation as &dyn BatchSource),
            train_examples: data.train_examples,
            val_examples: data.val_examples,
        }
    }
}

/// The trained model: an adapter on the frozen base, or every parameter.
#[derive(Debug, Clone)]
pub enum TrainedModel {
    Lora(LoraModel<CausalLm>),
    Full(CausalLm),
}

impl TrainedModel {
    /// The model to run (adapters applied unmerged).
    pub fn causal_lm(&self) -> &CausalLm {
        match self {
            Self::Lora(m) => &m.model,
            Self::Full(m) => m,
        }
    }

    /// The decoder with the adapter's weights (merged one layer at a time by the exporters).
    pub fn into_causal_lm(self) -> CausalLm {
        match self {
            Self::Lora(m) => m.into_inner(),
            Self::Full(m) => m,
        }
    }
}

/// A finished training run, before its files are written ([`Trained::save`]): the caller may
/// evaluate [`Trained::model`] and add to [`Trained::metadata`] (evaluation rows, data) first.
#[derive(Debug)]
pub struct Trained {
    pub model: TrainedModel,
    pub summary: RunSummary,
    /// The model card's content; [`Trained::save`] writes it.
    pub metadata: TrainingMetadata,
    /// `output_dir/adapter` (LoRA) or `output_dir/trained` (full fine-tuning).
    pub output: PathBuf,
}

/// The steps of an SFT run on one [`SftConfig`]. [`run_sft`] runs them all; a program that
/// makes its own data or evaluates before and after calls them one by one:
/// [`Sft::from_config`] → [`Sft::load_model`] → [`Sft::chat_template`] → (data) →
/// [`Sft::train`] → (evaluation) → [`Trained::save`].
#[derive(Debug)]
pub struct Sft {
    config: SftConfig,
    run: RunDir,
}

impl Sft {
    /// Validates `config` and opens its output directory as `mode` says: before anything
    /// loads, a run refuses to mix with another one in the same directory.
    pub fn from_config(config: SftConfig, mode: RunMode) -> Result<Self> {
        config.validate()?;
        let run = RunDir::open(&config.output_dir, mode)?;
        Ok(Self { config, run })
    }

    pub fn config(&self) -> &SftConfig {
        &self.config
    }

    /// The run directory (its id is written into checkpoints).
    pub fn run_dir(&self) -> &RunDir {
        &self.run
    }

    /// Loads the config's model (a directory, GGUF file or Hub id; the default model when
    /// empty, fetched if missing) held as `quantization` says. The config then names the file
    /// or directory loaded (the model card's base and the adapter's base id come from it).
    pub fn load_model(&mut self) -> Result<Pretrained> {
        let device = parse_device(&self.config.device)?;
        let (path, lm) = load_model(&self.config.model, &device, self.config.quantization)?;
        self.config.model = path;
        Ok(lm)
    }

    /// The run's chat template ([`ChatTemplate::select`]): `chat_template` when set, else the
    /// model's own, else none.
    pub fn chat_template(&self, lm: &Pretrained) -> Result<Option<ChatTemplate>> {
        chat_template(self.config.chat_template.as_deref(), lm)
    }

    /// The config's data files as batches ([`prepare_data`]).
    pub fn prepare_data(
        &self,
        lm: &Pretrained,
        template: Option<&ChatTemplate>,
    ) -> Result<SftData> {
        let c = &self.config;
        prepare_data(
            &c.data,
            c.micro_batch_size,
            c.seed,
            &lm.tokenizer,
            template,
            pad_id(lm),
        )
    }

    /// Attaches the config's adapter to `lm`'s model (or opens every parameter for full
    /// fine-tuning), trains on `data` from scratch or from the run's latest checkpoint, and
    /// returns the trained model with its summary. `callbacks` run besides the standard ones
    /// (`metrics.jsonl`, TensorBoard, progress bar).
    pub fn train(
        &self,
        lm: &Pretrained,
        data: SftBatches<'_>,
        callbacks: Vec<Box<dyn Callback>>,
        on_event: &mut dyn FnMut(SftEvent),
    ) -> Result<Trained> {
        let c = &self.config;
        let device = parse_device(&c.device)?;
        // The new adapter's A is drawn on the host from the run's seed, dropout on the device.
        device.seed(c.seed);
        let (model, summary, output, counts) = match c.peft_config() {
            Some(lora) => {
                let model = adapter(lm.model.clone(), None, || lora, c.seed)?;
                on_event(SftEvent::Parameters(model.trainable_parameters_report()));
                let (summary, m) = self.fit(model, data, callbacks, on_event)?;
                let m = m.valid();
                let n = m.param_count();
                let out = c.output_dir.join("adapter");
                (TrainedModel::Lora(m), summary, out, (n.trainable, n.all))
            }
            None => {
                let model = lm.model.clone().into_full_training();
                let n: usize = crate::params::param_infos(&model)
                    .iter()
                    .map(|p| p.numel())
                    .sum();
                on_event(SftEvent::Parameters(format!(
                    "trainable params: {n} (full fine-tuning)"
                )));
                let (summary, m) = self.fit(model, data, callbacks, on_event)?;
                let out = c.output_dir.join("trained");
                (TrainedModel::Full(m.valid()), summary, out, (n, n))
            }
        };
        let mut metadata = TrainingMetadata::new(c, &summary);
        metadata.train_examples = data.train_examples;
        metadata.val_examples = data.val_examples;
        metadata.trainable_params = counts.0;
        metadata.all_params = counts.1;
        Ok(Trained {
            model,
            summary,
            metadata,
            output,
        })
    }

    /// The trainer, fresh or from the latest checkpoint, run to the config's steps.
    fn fit<M: crate::model::CausalModel>(
        &self,
        model: M,
        data: SftBatches<'_>,
        callbacks: Vec<Box<dyn Callback>>,
        on_event: &mut dyn FnMut(SftEvent),
    ) -> Result<(RunSummary, M)> {
        let c = &self.config;
        let device = parse_device(&c.device)?;
        let micro_batches = data.train.len();
        let total = c.total_steps(micro_batches).max(1);
        let options = TrainerOptions::from_config(c, total);
        let mut trainer = match self.run.latest_checkpoint()? {
            Some(dir) => {
                on_event(SftEvent::Resuming(dir.clone()));
                Trainer::resume(model, &device, options, &dir)?
            }
            None => Trainer::new(model, &device, options)?,
        };
        trainer.set_run_id(self.run.id());
        on_event(SftEvent::Plan {
            micro_batches,
            steps_per_epoch: micro_batches.div_ceil(c.grad_accum),
            total_steps: total,
        });
        let done = trainer.state.step;
        for cb in standard_callbacks(&c.output_dir, total, done)?
            .into_iter()
            .chain(callbacks)
        {
            trainer.add_callback(cb);
        }
        let summary = fit(
            &mut trainer,
            data.train,
            data.validation,
            &FitOptions::from_config(c, total),
        )?;
        Ok((summary, trainer.into_model()))
    }
}

/// `lm`'s tokenizer and metadata around another decoder (a trained one, for the exporters).
fn with_model(lm: &Pretrained, model: CausalLm) -> Pretrained {
    Pretrained {
        model,
        tokenizer: lm.tokenizer.clone(),
        extras: lm.extras.clone(),
        source: lm.source.clone(),
        hf_config: lm.hf_config.clone(),
    }
}

impl Trained {
    /// Writes the adapter in PEFT's format (or the trained weights), the model card and
    /// `training_metadata.json` into [`Trained::output`], then the exports the config asks for
    /// (`export.gguf`: `output_dir/model-<TYPE>.gguf`; `export.merged`: `output_dir/merged`).
    /// `lm` is the model the run loaded (its tokenizer and metadata go into the exports).
    /// Returns the merged model's [`Pretrained`] when `export.merged` wrote it (to check it
    /// against the adapted model's outputs, as `census_qa` does).
    pub fn save(
        &self,
        lm: &Pretrained,
        on_event: &mut dyn FnMut(SftEvent),
    ) -> Result<Option<Pretrained>> {
        match &self.model {
            TrainedModel::Lora(m) => m.export(&self.output)?,
            TrainedModel::Full(m) => m.export(&self.output)?,
        }
        self.metadata.write(&self.output)?;
        let export = &self.metadata.config.export;
        let out = &self.metadata.config.output_dir;
        if let Some(file_type) = export.gguf {
            // `save_gguf` merges the adapter one layer at a time as it writes: the base stays
            // as stored and no merged copy of the whole model exists.
            let path = out.join(format!("model-{file_type}.gguf"));
            let trained = with_model(lm, self.model.clone().into_causal_lm());
            trained.save_gguf(&path, GgufExport { file_type })?;
            on_event(SftEvent::Saved("GGUF", path));
        }
        if !export.merged {
            return Ok(None);
        }
        // `save_hf` merges the adapter one layer at a time as it writes (no merged copy of
        // the whole model).
        let merged = with_model(lm, self.model.clone().into_causal_lm());
        let dir = out.join("merged");
        merged.save_hf(&dir)?;
        on_event(SftEvent::Saved("merged model", dir));
        Ok(Some(merged))
    }
}

/// What [`run_sft`] did.
#[derive(Debug, Clone)]
pub struct SftSummary {
    pub run: RunSummary,
    /// `output_dir/adapter` or `output_dir/trained`.
    pub output: PathBuf,
    pub metadata: TrainingMetadata,
}

/// The generation evaluation of `eval.generation_examples` on the held-out records.
fn generation_eval(
    config: &SftConfig,
    lm: &Pretrained,
    data: &SftData,
    template: Option<ChatTemplate>,
    on_event: &mut dyn FnMut(SftEvent),
) -> Result<Option<GenerationEvalCallback>> {
    let Some(n) = config.eval.generation_examples else {
        return Ok(None);
    };
    if data.validation_records.is_empty() {
        on_event(SftEvent::NoGenerationEval);
        return Ok(None);
    }
    let mut harness = kiln_eval::HarnessConfig {
        metrics: config.eval.generation_metrics.clone(),
        batch_size: config.micro_batch_size,
        ..Default::default()
    };
    harness.generation.max_new_tokens = config.eval.generation_max_new_tokens;
    harness.generation.eos_token_ids = lm.eos_token_ids();
    Ok(Some(GenerationEvalCallback::new(
        &data.validation_records,
        Some(n),
        lm.tokenizer.clone(),
        template,
        harness,
        config.output_dir.clone(),
    )?))
}

/// Runs supervised fine-tuning as `config` says: opens `output_dir` (`mode`: fresh, resume or
/// overwrite), loads the model, prepares the data (or streams it), trains with LoRA or every
/// parameter (resuming from the latest checkpoint), and writes `checkpoints/`,
/// `metrics.jsonl`, `tensorboard/`, `loss_curve.png`, the adapter with its model card, and the
/// exports of `config.export`. `on_event` sees what a command line prints.
pub fn run_sft(
    config: &SftConfig,
    mode: RunMode,
    mut on_event: impl FnMut(SftEvent),
) -> Result<SftSummary> {
    let mut sft = Sft::from_config(config.clone(), mode)?;
    let lm = sft.load_model()?;
    let c = sft.config();
    let template = sft.chat_template(&lm)?;
    let data = sft.prepare_data(&lm, template.as_ref())?;
    // data.streaming: the training files are read while training, through an encoder of their
    // own (the generation evaluation takes the first template over).
    let stream_template = match c.data.streaming {
        true => sft.chat_template(&lm)?,
        false => None,
    };
    let encoder = match c.data.streaming {
        true => Some(encoder_for(
            &c.data,
            &lm.tokenizer,
            stream_template.as_ref(),
        )?),
        false => None,
    };
    let streamed = match &encoder {
        Some(e) => {
            let options = stream_options(&c.data, c.micro_batch_size, c.seed, pad_id(&lm));
            let s = StreamedBatches::new(e, options)?;
            on_event(SftEvent::Streaming {
                micro_batches: s.len(),
                examples: s.stats().kept,
                tokens: s.stats().tokens,
            });
            Some(s)
        }
        None => None,
    };
    let s = &data.stats;
    on_event(SftEvent::Data {
        train_examples: data.train_examples,
        tokens: s.tokens,
        trained_tokens: s.trained_tokens,
        truncated: s.truncated,
        dropped: s.dropped_too_long + s.dropped_nothing_to_train,
        val_examples: data.val_examples,
    });
    let mut batches = SftBatches::from_data(&data);
    if let Some(s) = &streamed {
        batches.train = s;
        batches.train_examples = s.stats().kept;
    }
    let callbacks: Vec<Box<dyn Callback>> =
        match generation_eval(c, &lm, &data, template, &mut on_event)? {
            Some(cb) => vec![Box::new(cb)],
            None => Vec::new(),
        };
    let trained = sft.train(&lm, batches, callbacks, &mut on_event)?;
    trained.save(&lm, &mut on_event)?;
    Ok(SftSummary {
        run: trained.summary,
        output: trained.output,
        metadata: trained.metadata,
    })
}
