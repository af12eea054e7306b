//! Supervised fine-tuning of any supported model on any supported dataset file, from a TOML (or
//! JSON) config with flags that override it.
//!
//! ```text
//! cargo run --release --example sft -- --config examples/sft_tutor.toml
//! cargo run --release --example sft -- --data data/tutor.jsonl --max-steps 20 --lora-r 8
//! cargo run --release --example sft -- --config run.toml --resume    # continue the latest checkpoint
//! ```
//!
//! Writes into `--output-dir`: `checkpoints/`, `metrics.jsonl`, `tensorboard/`,
//! `loss_curve.png`, and `adapter/` (PEFT files, `README.md` model card,
//! `training_metadata.json`) or, for full fine-tuning, `trained/`. With
//! `[eval] generation_examples = N` (or `--eval-generation N`) the trained model also answers N
//! held-out examples at the end: `eval_generation.jsonl` / `.json` and a `generation_eval` line
//! in `metrics.jsonl`.
use anyhow::{Context, Result};
use clap::Parser;
use kiln::data::ChatTemplate;
use kiln::eval::HarnessConfig;
use kiln::lora::{LoraConfig, LoraModel, TargetModules};
use kiln::models::fetch::resolve_model;
use kiln::models::{CausalLm, Pretrained, parse_device};
use kiln::train::{
    BatchSource, CausalModel, Export, FitOptions, GenerationEvalCallback, RunDir, RunMode,
    SftConfig, StreamedBatches, Trainer, TrainerOptions, TrainingMetadata, encoder_for, fit,
    prepare_data, standard_callbacks, stream_options,
};
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(about = "Supervised fine-tuning (LoRA or full) from a config file and flags")]
struct Args {
    /// TOML or JSON run config (`SftConfig`); flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    model: Option<PathBuf>,
    /// The base model's Hugging Face Hub id (`org/name`), written as the adapter's
    /// `base_model_name_or_path` and the model card's `base_model` (default: from the model's
    /// location when it tells, see `SftConfig::base_model_id`).
    #[arg(long)]
    base_model_id: Option<String>,
    /// Training data file(s), in any format the data crate reads (JSONL, JSON, CSV).
    #[arg(long)]
    data: Vec<PathBuf>,
    #[arg(long)]
    output_dir: Option<PathBuf>,
    #[arg(long)]
    max_steps: Option<usize>,
    /// LoRA rank; with no `[lora]` in the config, adds LoRA on q,k,v,o.
    #[arg(long)]
    lora_r: Option<usize>,
    #[arg(long)]
    lora_alpha: Option<f64>,
    /// Train every parameter instead of an adapter.
    #[arg(long)]
    full: bool,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    grad_accum: Option<usize>,
    #[arg(long)]
    max_seq_len: Option<usize>,
    /// Continue the run in `<output-dir>` from its latest checkpoint (a new run when there is
    /// none yet).
    #[arg(long)]
    resume: bool,
    /// Replace a previous run in `<output-dir>`. Without `--resume` or `--overwrite`, a
    /// non-empty output directory is refused.
    #[arg(long)]
    overwrite: bool,
    #[arg(long)]
    device: Option<String>,
    /// How to hold the model's matrices: stored (the default), f32, nf4, fp4 or int8 (config
    /// key `quantization`).
    #[arg(long)]
    quantize: Option<kiln::models::Quantization>,
    /// Also write the trained model (adapter merged) as one GGUF file llama.cpp loads,
    /// `<output-dir>/model-<TYPE>.gguf`: Q8_0, Q4_K_M, Q4_0, F16, BF16 or F32.
    #[arg(long)]
    export_gguf: Option<kiln::models::gguf::GgufFileType>,
    /// `f32` or `bf16` (bf16 products and saved activations on kiln's fused CPU backward, as
    /// `torch.autocast`). Default: bf16 on CPUs with bf16 units (AVX512-BF16) where the fused
    /// backward covers the model, f32 elsewhere.
    #[arg(long)]
    precision: Option<kiln::train::Precision>,
    /// Generation metrics on up to N held-out examples at the end of training.
    #[arg(long)]
    eval_generation: Option<usize>,
    /// A Jinja chat template file to use instead of the model's own (for GGUF files that carry
    /// none, like the Gemma 3 270M file: `fixtures/chat_templates/gemma3.jinja`).
    #[arg(long)]
    chat_template: Option<PathBuf>,
}

/// The config file (or defaults) with the flags applied, validated.
fn config(args: &Args) -> Result<SftConfig> {
    let mut c = match &args.config {
        Some(p) => SftConfig::from_file(p)?,
        None => SftConfig::new(resolve_model(args.model.as_deref(), true)?),
    };
    if let Some(m) = &args.model {
        c.model = m.clone();
    }
    if c.model.as_os_str().is_empty() {
        c.model = resolve_model(None, true)?;
    }
    if args.config.is_none() && args.max_steps.is_none() {
        c.epochs = Some(1.0);
    }
    if !args.data.is_empty() {
        c.data.train = args.data.clone();
    }
    if let Some(v) = &args.output_dir {
        c.output_dir = v.clone();
    }
    if let Some(v) = &args.base_model_id {
        c.base_model_id = Some(v.clone());
    }
    if let Some(v) = args.max_steps {
        c.max_steps = Some(v);
    }
    if args.full {
        c.lora = None;
    } else if args.lora_r.is_some() || args.lora_alpha.is_some() || c.lora.is_none() {
        let mut lora = c.lora.take().unwrap_or_else(|| {
            LoraConfig::new(
                16,
                32.0,
                TargetModules::Names(
                    ["q_proj", "k_proj", "v_proj", "o_proj"]
                        .map(String::from)
                        .to_vec(),
                ),
            )
        });
        if let Some(r) = args.lora_r {
            lora.r = r;
        }
        if let Some(a) = args.lora_alpha {
            lora.lora_alpha = a;
        }
        c.lora = Some(lora);
    }
    if let Some(v) = args.lr {
        c.optimizer.lr = v;
    }
    if let Some(v) = args.batch_size {
        c.micro_batch_size = v;
    }
    if let Some(v) = args.grad_accum {
        c.grad_accum = v;
    }
    if let Some(v) = args.max_seq_len {
        c.data.max_seq_len = v;
    }
    if let Some(v) = &args.device {
        c.device = v.clone();
    }
    if let Some(v) = args.quantize {
        c.quantization = v;
    }
    if let Some(v) = args.precision {
        c.precision = Some(v);
    }
    if let Some(n) = args.eval_generation {
        c.eval.generation_examples = Some(n);
    }
    c.validate()?;
    Ok(c)
}

/// Builds the trainer, fresh or from the latest checkpoint, and runs it.
fn train<M: CausalModel + Export>(
    model: M,
    config: &SftConfig,
    (train_source, data): (&dyn BatchSource, &kiln::train::SftData),
    run: &RunDir,
    export_dir: &Path,
    generation_eval: Option<GenerationEvalCallback>,
) -> Result<(kiln::train::RunSummary, M)> {
    let device = parse_device(&config.device)?;
    let per_epoch = train_source.len().div_ceil(config.grad_accum);
    let total = config.total_steps(train_source.len()).max(1);
    let options = TrainerOptions::from_config(config, total);
    let mut trainer = match run.latest_checkpoint()? {
        Some(dir) => {
            println!("resuming from {}", dir.display());
            Trainer::resume(model, &device, options, &dir)?
        }
        None => Trainer::new(model, &device, options)?,
    };
    trainer.set_run_id(run.id());
    println!(
        "{} micro-batches per epoch ({per_epoch} steps); training {total} steps",
        train_source.len()
    );
    let done = trainer.state.step;
    for c in standard_callbacks(&config.output_dir, total, done)? {
        trainer.add_callback(c);
    }
    if let Some(c) = generation_eval {
        trainer.add_callback(Box::new(c));
    }
    let val = (!data.validation.is_empty()).then_some(&data.validation);
    let summary = fit(
        &mut trainer,
        train_source,
        val.map(|v| v as &dyn kiln::train::BatchSource),
        &FitOptions::from_config(config, total),
    )?;
    let model = trainer.into_model();
    model.export(export_dir)?;
    Ok((summary, model))
}

fn main() -> Result<()> {
    kiln::train::keep_freed_memory();
    let args = Args::parse();
    let config = config(&args)?;
    // Before loading anything: refuse to mix this run with another one in the same directory.
    let run = RunDir::open(
        &config.output_dir,
        RunMode::from_flags(args.resume, args.overwrite)?,
    )?;
    let device = parse_device(&config.device)?;
    let path = resolve_model(Some(&config.model), true)?;
    let lm = Pretrained::load_as(&path, &device, config.quantization)?;
    let (bos, eos) = (
        lm.extras.bos_token.as_deref(),
        lm.extras.eos_token.as_deref(),
    );
    let make_template = || {
        ChatTemplate::select(
            args.chat_template.as_deref(),
            lm.extras.chat_template.as_deref(),
            lm.extras.chat_template_origin.as_deref(),
            bos,
            eos,
        )
    };
    let mut template = make_template()?;
    let pad = lm.eos_token_ids().first().copied().unwrap_or(0);
    let data = prepare_data(
        &config.data,
        config.micro_batch_size,
        config.seed,
        &lm.tokenizer,
        template.as_ref(),
        pad,
    )
    .context("preparing the data")?;
    // data.streaming: the training files are read while training, through an encoder of their
    // own (the generation evaluation below may take the template).
    let stream_template = match config.data.streaming {
        true => make_template()?,
        false => None,
    };
    let stream_encoder = match config.data.streaming {
        true => Some(encoder_for(
            &config.data,
            &lm.tokenizer,
            stream_template.as_ref(),
        )?),
        false => None,
    };
    let streamed = match &stream_encoder {
        Some(encoder) => {
            let options = stream_options(&config.data, config.micro_batch_size, config.seed, pad);
            let s = StreamedBatches::new(encoder, options).context("counting the streamed rows")?;
            println!(
                "streaming {} packed micro-batches per epoch ({} examples, {} tokens) from the files",
                s.len(),
                s.stats().kept,
                s.stats().tokens
            );
            Some(s)
        }
        None => None,
    };
    let train_source: &dyn BatchSource = match &streamed {
        Some(s) => s,
        None => &data.train,
    };
    println!(
        "data: {} training examples ({} tokens, {} trained, {} truncated, {} dropped), {} validation",
        data.train_examples,
        data.stats.tokens,
        data.stats.trained_tokens,
        data.stats.truncated,
        data.stats.dropped_too_long + data.stats.dropped_nothing_to_train,
        data.val_examples
    );
    let generation_eval = match config.eval.generation_examples {
        Some(n) if !data.validation_records.is_empty() => {
            let mut harness = HarnessConfig {
                metrics: config.eval.generation_metrics.clone(),
                batch_size: config.micro_batch_size,
                ..Default::default()
            };
            harness.generation.max_new_tokens = config.eval.generation_max_new_tokens;
            harness.generation.eos_token_ids = lm.eos_token_ids();
            // The data is prepared: the callback takes the compiled template over.
            let template = template.take();
            Some(GenerationEvalCallback::new(
                &data.validation_records,
                Some(n),
                lm.tokenizer.clone(),
                template,
                harness,
                config.output_dir.clone(),
            )?)
        }
        Some(_) => {
            println!("no validation data: generation evaluation skipped");
            None
        }
        None => None,
    };
    device.seed(config.seed);
    kiln::lora::manual_seed(config.seed);
    // The trained model with the loaded tokenizer, written as GGUF when asked.
    let export_gguf = |model: CausalLm| -> Result<()> {
        let Some(file_type) = args.export_gguf else {
            return Ok(());
        };
        let trained = Pretrained {
            model,
            tokenizer: lm.tokenizer.clone(),
            extras: lm.extras.clone(),
            source: lm.source.clone(),
            hf_config: lm.hf_config.clone(),
        };
        let path = config.output_dir.join(format!("model-{file_type}.gguf"));
        trained.save_gguf(&path, kiln::models::gguf::GgufExport { file_type })?;
        println!("GGUF: {}", path.display());
        Ok(())
    };
    let (summary, counts, out) = match config.peft_config() {
        Some(lora) => {
            let model = LoraModel::with_adapter(lm.model, "default", lora)?;
            println!("{}", model.trainable_parameters_report());
            let out = config.output_dir.join("adapter");
            let (s, m) = train(
                model,
                &config,
                (train_source, &data),
                &run,
                &out,
                generation_eval,
            )?;
            let c = m.param_count();
            // `save_gguf` merges the adapter one layer at a time as it writes.
            export_gguf(m.into_inner())?;
            (s, (c.trainable, c.all), out)
        }
        None => {
            let model: CausalLm = lm.model.into_full_training();
            let n = kiln::train::params::param_infos(&model)
                .iter()
                .map(|p| p.numel())
                .sum::<usize>();
            println!("trainable params: {n} (full fine-tuning)");
            let out = config.output_dir.join("trained");
            let (s, m) = train(
                model,
                &config,
                (train_source, &data),
                &run,
                &out,
                generation_eval,
            )?;
            export_gguf(m)?;
            (s, (n, n), out)
        }
    };
    let mut meta = TrainingMetadata::new(&config, &summary);
    meta.train_examples = streamed
        .as_ref()
        .map_or(data.train_examples, |s| s.stats().kept);
    meta.val_examples = data.val_examples;
    meta.trainable_params = counts.0;
    meta.all_params = counts.1;
    meta.write(&out)?;
    println!(
        "done: {} steps, final train loss {:.4}, validation loss {}; saved {}",
        summary.steps,
        summary.final_train_loss.unwrap_or(f64::NAN),
        summary
            .final_eval
            .as_ref()
            .map_or("-".to_string(), |e| format!("{:.4}", e.val_loss)),
        out.display()
    );
    Ok(())
}
