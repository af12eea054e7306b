//! Write a model, with PEFT adapters merged, as one GGUF file llama.cpp loads
//! ([`Pretrained::save_gguf`]): the base kept as stored while loading, each adapter merged into
//! one layer at a time as the file is written.
//!
//! ```text
//! cargo run --release --example export_gguf -- --model M.gguf --adapter out/adapter --type Q4_K_M --out m.gguf
//! ```
use anyhow::Result;
use clap::Parser;
use kiln::lora::LoraModel;
use kiln::models::fetch::resolve_model;
use kiln::models::gguf::{GgufExport, GgufFileType};
use kiln::models::{Pretrained, parse_device};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "Write a model (adapters merged) as a GGUF file")]
struct Args {
    /// Model directory or .gguf file (default: $KILN_MODEL, else the cached SmolLM2).
    #[arg(long)]
    model: Option<PathBuf>,
    /// PEFT adapter directory, `DIR` or `DIR=WEIGHT`; repeat for a weighted mix.
    #[arg(long = "adapter", value_parser = kiln::lora::parse_adapter_arg)]
    adapters: Vec<(PathBuf, f64)>,
    /// Q8_0, Q4_K_M, Q4_0, F16, BF16 or F32.
    #[arg(long = "type", default_value = "Q8_0")]
    file_type: GgufFileType,
    /// The file to write.
    #[arg(long)]
    out: PathBuf,
    /// How to hold the model while exporting: stored (the default), f32, nf4, fp4 or int8.
    #[arg(long, default_value = "stored")]
    quantize: kiln::models::Quantization,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = parse_device("cpu")?;
    let path = resolve_model(args.model.as_deref(), true)?;
    let mut lm = Pretrained::load_as(&path, &device, args.quantize)?;
    if !args.adapters.is_empty() {
        let mut lora = LoraModel::new(lm.model);
        lora.load_mix(&args.adapters)?;
        lm.model = lora.into_inner();
    }
    let t0 = std::time::Instant::now();
    lm.save_gguf(
        &args.out,
        GgufExport {
            file_type: args.file_type,
        },
    )?;
    println!(
        "wrote {} ({}) in {:.1} s",
        args.out.display(),
        args.file_type,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
