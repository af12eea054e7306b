//! Generate text with a model, streaming tokens as they come.
//!
//! ```text
//! cargo run --release --example generate -- --prompt "Write a haiku about Rust." --chat
//! cargo run --release --example generate -- --model DIR --prompt "def fib(n):" --temperature 0.8 --top-p 0.9 --seed 1
//! ```
//!
//! With `--num-return-sequences N` the prompt is sampled N times in one batch (as GRPO samples a
//! group), the sequences are printed when all are done and standard error gets the tokens/s;
//! `--ignore-eos` makes every sequence run to `--max-new-tokens` (transformers:
//! `min_new_tokens = max_new_tokens`), for timing equal work (`tools/bench_generate.py`).
use anyhow::{Result, bail};
use clap::Parser;
use kiln::data::{ChatTemplate, Message, Role};
use kiln::lora::LoraModel;
use kiln::models::fetch::resolve_model;
use kiln::models::{GenerationConfig, Pretrained, Sampling, generate, parse_device};
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "Generate text with a causal language model")]
struct Args {
    /// Model directory or .gguf file. Default: $KILN_MODEL, else the cached SmolLM2-135M-Instruct.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    chat: bool,
    /// System message (with --chat).
    #[arg(long)]
    system: Option<String>,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// 0 means greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
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
    /// Sequences sampled from the prompt in one batch (transformers' `num_return_sequences`).
    #[arg(long, default_value_t = 1)]
    num_return_sequences: usize,
    /// With `--precision bf16` and quantized matrices: also hold every matrix in the bf16
    /// kernel's layout (2 bytes per weight more), so a batch of rows multiplies by it directly
    /// instead of dequantizing each weight at every step (as `serve --bf16-weights`).
    #[arg(long)]
    bf16_weights: bool,
    /// Generate `--max-new-tokens` tokens whatever the model emits (for timing).
    #[arg(long)]
    ignore_eos: bool,
    /// PEFT adapter directory, `DIR` or `DIR=WEIGHT`; repeat for a weighted mix.
    #[arg(long = "adapter", value_parser = kiln::lora::parse_adapter_arg)]
    adapters: Vec<(PathBuf, f64)>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = parse_device(&args.device)?;
    let path = resolve_model(args.model.as_deref(), true)?;
    let mut lm = Pretrained::load_as(&path, &device, args.quantize)?;
    if !args.adapters.is_empty() {
        let mut lora = LoraModel::new(lm.model);
        let name = lora.load_mix(&args.adapters)?;
        eprintln!("adapter `{name}` active ({} loaded)", args.adapters.len());
        lm.model = lora.into_inner();
    }
    lm.model.set_precision(args.precision);
    if args.bf16_weights {
        lm.model.hold_bf16_weights()?;
    }
    let ids = if args.chat {
        let Some(template) = ChatTemplate::select(
            None,
            lm.extras.chat_template.as_deref(),
            lm.extras.chat_template_origin.as_deref(),
            lm.extras.bos_token.as_deref(),
            lm.extras.eos_token.as_deref(),
        )?
        else {
            bail!("{} has no chat template; drop --chat", path.display())
        };
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(Message {
                role: Role::System,
                content: system.clone(),
            });
        }
        messages.push(Message {
            role: Role::User,
            content: args.prompt.clone(),
        });
        lm.encode(&template.render(&messages, true)?, false)?
    } else {
        lm.encode(&args.prompt, true)?
    };
    let sampling = Sampling::from_settings(args.temperature, args.top_k, args.top_p)?;
    let config = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        sampling,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        eos_token_ids: if args.ignore_eos {
            Vec::new()
        } else {
            lm.eos_token_ids()
        },
        stop_strings: Vec::new(),
    };
    if args.num_return_sequences != 1 {
        return sample_many(&lm, ids, &config, args.num_return_sequences);
    }
    // Stream: decode the growing output and print what is new since the last token.
    let mut produced: Vec<u32> = Vec::new();
    let mut printed = 0;
    let mut stdout = std::io::stdout();
    generate(
        &lm.model,
        &[ids],
        &config,
        Some(&lm.tokenizer),
        &mut |_, id| {
            produced.push(id);
            if let Ok(text) = lm.decode(&produced, true)
                && text.len() > printed
                && text.is_char_boundary(printed)
            {
                let _ = write!(stdout, "{}", &text[printed..]);
                let _ = stdout.flush();
                printed = text.len();
            }
        },
    )?;
    println!();
    Ok(())
}

/// Samples `ids` `n` times in one batch, prints each sequence and the tokens/s.
fn sample_many(lm: &Pretrained, ids: Vec<u32>, config: &GenerationConfig, n: usize) -> Result<()> {
    if n == 0 {
        bail!("--num-return-sequences must be at least 1");
    }
    let started = std::time::Instant::now();
    let out = generate(
        &lm.model,
        &vec![ids; n],
        config,
        Some(&lm.tokenizer),
        &mut |_, _| {},
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let tokens: usize = out.iter().map(|g| g.tokens.len()).sum();
    for (i, g) in out.iter().enumerate() {
        println!("[{i}] {}", lm.decode(&g.tokens, true)?);
    }
    eprintln!(
        "{{\"sequences\": {n}, \"new_tokens\": {tokens}, \"seconds\": {seconds:.3}, \"tokens_per_s\": {:.1}}}",
        tokens as f64 / seconds
    );
    Ok(())
}
