//! Supervised fine-tuning of any supported model on any supported dataset file, from a TOML (or
//! JSON) config with flags that override it: a command line around `kiln::train::run_sft`.
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
use anyhow::Result;
use clap::Parser;
use kiln::lora::{LoraConfig, TargetModules};
use kiln::models::fetch::resolve_model;
use kiln::train::{RunMode, SftConfig, run_sft};
use std::path::PathBuf;

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
    /// `<output-dir>/model-<TYPE>.gguf`: Q8_0, Q4_K_M, Q4_0, F16, BF16 or F32 (config key
    /// `export.gguf`).
    #[arg(long)]
    export_gguf: Option<kiln::models::gguf::GgufFileType>,
    /// Also write the merged model as a Hugging Face directory, `<output-dir>/merged` (config
    /// key `export.merged`).
    #[arg(long)]
    save_merged: bool,
    /// `f32` or `bf16` (bf16 products and saved activations on kiln's fused CPU backward, as
    /// `torch.autocast`). Default: bf16 on CPUs with bf16 units (AVX512-BF16) where the fused
    /// backward covers the model, f32 elsewhere.
    #[arg(long)]
    precision: Option<kiln::train::Precision>,
    /// Generation metrics on up to N held-out examples at the end of training.
    #[arg(long)]
    eval_generation: Option<usize>,
    /// A Jinja chat template file to use instead of the model's own (for GGUF files that carry
    /// none, like the Gemma 3 270M file: `fixtures/chat_templates/gemma3.jinja`; config key
    /// `chat_template`).
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
    if let Some(v) = &args.chat_template {
        c.chat_template = Some(v.clone());
    }
    if let Some(v) = args.export_gguf {
        c.export.gguf = Some(v);
    }
    if args.save_merged {
        c.export.merged = true;
    }
    c.validate()?;
    Ok(c)
}

fn main() -> Result<()> {
    kiln::train::keep_freed_memory();
    let args = Args::parse();
    let config = config(&args)?;
    let mode = RunMode::from_flags(args.resume, args.overwrite)?;
    let done = run_sft(&config, mode, |event| println!("{event}"))?;
    println!(
        "done: {} steps, final train loss {:.4}, validation loss {}; saved {}",
        done.run.steps,
        done.run.final_train_loss.unwrap_or(f64::NAN),
        done.run
            .final_eval
            .as_ref()
            .map_or("-".to_string(), |e| format!("{:.4}", e.val_loss)),
        done.output.display()
    );
    Ok(())
}
