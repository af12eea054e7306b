//! Score text with a model: per-token log-probabilities, mean NLL (transformers' loss with
//! `labels = input_ids`), perplexity and the last position's top-k logits, as one JSON object.
//!
//! ```text
//! cargo run --release --example score -- --text "The capital of France is Paris."
//! cargo run --release --example score -- --model DIR --ids-json '[[1,2,3],[4,5]]' --logits-out l.safetensors
//! ```
use anyhow::{Context, Result, bail};
use clap::Parser;
use kiln::lora::LoraModel;
use kiln::models::fetch::resolve_model;
use kiln::models::{CausalLm, DecoderInput, Pretrained, parse_device, write_f32_safetensors};
use serde_json::json;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "Score text or token ids with a causal language model")]
struct Args {
    /// Model directory (config.json + safetensors; tokenizer.json for --text) or .gguf file.
    /// Default: $KILN_MODEL, else the cached SmolLM2-135M-Instruct (fetched if missing).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Text to score (encoded with the tokenizer's special tokens).
    #[arg(long, conflicts_with = "ids_json")]
    text: Option<String>,
    /// Token ids as JSON: a list of rows, e.g. '[[1,2,3],[4,5]]'.
    #[arg(long)]
    ids_json: Option<String>,
    /// Write the full f32 logits `[b, t, vocab]` (rows right-padded with zeros) as tensor `logits`.
    #[arg(long)]
    logits_out: Option<PathBuf>,
    /// How many of the last position's largest logits to print per row.
    #[arg(long, default_value_t = 10)]
    top_k: usize,
    /// cpu, wgpu or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
    /// How to hold the model's matrices: stored (the default: the file's own format, e.g. a
    /// GGUF's blocks), f32, nf4, fp4 or int8 (quantized at load as bitsandbytes does).
    #[arg(long, default_value = "stored")]
    quantize: kiln::models::Quantization,
    /// Precision of the products by the weights: f32 (the reference) or bf16 (as a model loaded
    /// with `torch_dtype=torch.bfloat16` multiplies: inputs, weights and outputs of the products
    /// rounded to bf16, on the CPU's bf16 unit where it has one; norms and attention stay f32).
    #[arg(long, default_value = "f32")]
    precision: kiln::lora::Precision,
    /// PEFT adapter directory, `DIR` or `DIR=WEIGHT`; repeat for a weighted mix.
    #[arg(long = "adapter", value_parser = kiln::lora::parse_adapter_arg)]
    adapters: Vec<(PathBuf, f64)>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = parse_device(&args.device)?;
    let path = resolve_model(args.model.as_deref(), true)?;
    // Token ids need no tokenizer: the model is loaded alone (a checkpoint saved without
    // `tokenizer.json` scores too).
    let (mut model, rows): (CausalLm, Vec<Vec<u32>>) = match (&args.text, &args.ids_json) {
        (Some(text), None) => {
            let lm = Pretrained::load_as(&path, &device, args.quantize)?;
            let ids = lm.encode(text, true)?;
            (lm.model, vec![ids])
        }
        (None, Some(json)) => (
            CausalLm::load(&path, &device, args.quantize)?,
            serde_json::from_str(json).context("--ids-json must be a list of lists of ids")?,
        ),
        _ => bail!("give --text or --ids-json"),
    };
    if !args.adapters.is_empty() {
        let mut lora = LoraModel::new(model);
        lora.load_mix(&args.adapters)?;
        model = lora.into_inner();
    }
    model.set_precision(args.precision);
    if rows.is_empty() || rows.iter().any(Vec::is_empty) {
        bail!("every row needs at least one token");
    }
    let b = rows.len();
    let t = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(b * t);
    let mut mask = Vec::with_capacity(b * t);
    for r in &rows {
        ids.extend(r.iter().copied().chain(std::iter::repeat_n(0, t - r.len())));
        mask.extend(std::iter::repeat_n(1u8, r.len()).chain(std::iter::repeat_n(0, t - r.len())));
    }
    let logits = model.forward(&DecoderInput::new(ids, b, t).with_attention_mask(mask))?;
    let v = logits.dims()[2];
    let mut host: Vec<f32> = logits
        .into_data()
        .try_into_vec()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut out_rows = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        let mut logprobs = Vec::new();
        for i in 1..row.len() {
            let l = &host[(r * t + i - 1) * v..(r * t + i) * v];
            let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = max as f64 + l.iter().map(|x| ((x - max) as f64).exp()).sum::<f64>().ln();
            logprobs.push(l[row[i] as usize] as f64 - lse);
        }
        let nll = -logprobs.iter().sum::<f64>() / logprobs.len().max(1) as f64;
        let last = &host[(r * t + row.len() - 1) * v..(r * t + row.len()) * v];
        let mut order: Vec<usize> = (0..v).collect();
        order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
        let top: Vec<_> = order
            .iter()
            .take(args.top_k)
            .map(|&i| json!([i, last[i]]))
            .collect();
        out_rows.push(json!({
            "ids": row, "token_logprobs": logprobs, "mean_nll": nll, "perplexity": nll.exp(), "top_k": top,
        }));
        for i in row.len()..t {
            host[(r * t + i) * v..(r * t + i + 1) * v].fill(0.0);
        }
    }
    if let Some(path) = &args.logits_out {
        write_f32_safetensors(path, &[("logits", vec![b, t, v], &host)])?;
    }
    println!("{}", json!({ "model": path, "rows": out_rows }));
    Ok(())
}
