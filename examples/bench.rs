//! kiln's side of `../shared/bench/pytorch_peft_baseline.py`: the same workloads on the same
//! model file, one mode per process (so peak RSS is per mode), one JSON line out with the
//! baseline's field names. `tools/bench_side_by_side.sh` runs both back to back.
//!
//! ```text
//! cargo run --release --example bench -- --mode infer
//! cargo run --release --example bench -- --mode lora
//! cargo run --release --example bench -- --mode full
//! ```
//!
//! - `infer`: forward of batch 1 x 256 random ids (no autodiff), 2 warm-up + 5 timed; greedy
//!   decoding of 64 new tokens after a 16-token prompt with the KV cache, 1 warm-up + 3 timed.
//! - `lora`: LoRA r=16, alpha=32, dropout 0 on q,k,v,o,gate,up,down; AdamW lr 1e-4 (weight
//!   decay 0.01 as torch's default); batch 4 x 256 random ids, labels = ids; 2 warm-up + 5
//!   timed optimizer steps through [`kiln::train::Trainer`] (forward, backward, step).
//! - `full`: the same with every parameter trainable.
//!
//! Every timed call copies its result to the host, so the time includes the whole computation.
use anyhow::Result;
use clap::{Parser, ValueEnum};
use kiln::lora::{LoraConfig, LoraModel, TargetModules};
use kiln::models::fetch::resolve_model;
use kiln::models::{DecoderInput, GenerationConfig, Pretrained, generate, parse_device};
use kiln::train::{
    AdamWOptions, BackwardPath, Batch, LrSchedule, MicroOutcome, NonFinitePolicy, ScheduleKind,
    ScheduleOptions, Trainer, TrainerOptions,
};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    Infer,
    Lora,
    Full,
}

#[derive(Parser, Debug)]
#[command(about = "kiln's side of the PyTorch+PEFT baseline benchmark")]
struct Args {
    #[arg(long, value_enum)]
    mode: Mode,
    /// Model directory or .gguf (default: the cached SmolLM2-135M-Instruct).
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// How to hold the model's matrices: f32, stored (the file's own format, e.g. a GGUF's
    /// blocks), nf4, fp4 or int8 (quantized at load as bitsandbytes does).
    #[arg(long, default_value = "f32")]
    quantize: kiln::models::Quantization,
    /// Recompute activations in the backward pass (training modes).
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Gradients through kiln's fused CPU backward (default) or burn's autodiff.
    #[arg(long, value_enum, default_value = "fused")]
    backward: Backward,
    /// `f32`, or `bf16` products and saved activations (fused backward only).
    #[arg(long, default_value = "f32")]
    precision: kiln::train::Precision,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Backward {
    Fused,
    Autodiff,
}

const BATCH: usize = 4;
const SEQ: usize = 256;

/// Deterministic pseudo-random ids in `0..vocab`, different for every `salt`.
fn random_ids(n: usize, vocab: usize, salt: u64) -> Vec<u32> {
    let mut s = 0x2545_F491_4F6C_DD1D_u64 ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % vocab as u64) as u32
        })
        .collect()
}

/// Peak resident set size of this process in MB (Linux `VmHWM`).
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn round4(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| (x * 1e4).round() / 1e4).collect()
}

fn infer(lm: &Pretrained) -> Result<serde_json::Value> {
    let vocab = lm.model.config.vocab_size;
    let mut forward = Vec::new();
    for i in 0..7 {
        // New ids every run so nothing can be cached between runs.
        let ids = random_ids(256, vocab, i);
        let t0 = Instant::now();
        let logits = lm.model.forward(&DecoderInput::new(ids, 1, 256))?;
        let host = logits.into_data().try_into_vec::<f32>();
        let dt = t0.elapsed().as_secs_f64();
        anyhow::ensure!(host.map(|v| v.len()).unwrap_or(0) == 256 * vocab);
        if i >= 2 {
            forward.push(dt);
        }
    }
    let config = GenerationConfig {
        max_new_tokens: 64,
        ..GenerationConfig::default()
    };
    let mut gen_times = Vec::new();
    let mut prefill = Vec::new();
    for i in 0..4 {
        let prompt = random_ids(16, vocab, 100 + i);
        let warm = GenerationConfig {
            max_new_tokens: 8,
            ..config.clone()
        };
        let cfg = if i == 0 { &warm } else { &config };
        let t0 = Instant::now();
        let out = generate(
            &lm.model,
            std::slice::from_ref(&prompt),
            cfg,
            None,
            &mut |_, _| {},
        )?;
        let dt = t0.elapsed().as_secs_f64();
        if i > 0 {
            anyhow::ensure!(out[0].tokens.len() == 64);
            gen_times.push(dt);
            let t0 = Instant::now();
            let h = lm
                .model
                .forward_hidden(&DecoderInput::new(prompt, 1, 16), None)?;
            let [_, t, d] = h.dims();
            let last = lm.model.logits(h.slice([0..1, t - 1..t, 0..d]));
            let _ = last.into_data().try_into_vec::<f32>();
            prefill.push(t0.elapsed().as_secs_f64());
        }
    }
    let (f, g, p) = (median(&forward), median(&gen_times), median(&prefill));
    Ok(json!({
        "mode": "infer",
        "forward_b1x256_times_s": round4(&forward),
        "forward_b1x256_median_s": f,
        "forward_tokens_per_s": 256.0 / f,
        "generate_64_times_s": round4(&gen_times),
        "generate_64_median_s": g,
        "decode_tokens_per_s_incl_prefill": 64.0 / g,
        "prefill16_median_s": p,
        "decode_tokens_per_s_excl_prefill": 64.0 / (g - p).max(1e-9),
        "peak_rss_mb": peak_rss_mb(),
    }))
}

fn train(lm: Pretrained, mode: Mode, args: &Args) -> Result<serde_json::Value> {
    let device = parse_device(&args.device)?;
    let vocab = lm.model.config.vocab_size;
    // The adapters' initial A is drawn from the device's RNG: seeded, so every run of this
    // benchmark trains the same adapter and reports the same losses.
    device.seed(0);
    let model = match mode {
        Mode::Lora => {
            let targets = [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
            ]
            .iter()
            .chain(&["down_proj"])
            .map(|s| s.to_string())
            .collect();
            let mut config = LoraConfig::new(16, 32.0, TargetModules::Names(targets));
            config.lora_dropout = 0.0;
            LoraModel::with_adapter(lm.model, "default", config)?.into_inner()
        }
        _ => burn::module::Module::set_require_grad(lm.model, true),
    };
    let schedule = ScheduleOptions {
        kind: ScheduleKind::Constant,
        warmup_steps: Some(0),
        warmup_ratio: None,
        min_lr: 0.0,
    };
    let options = TrainerOptions {
        grad_accum: 1,
        max_grad_norm: None,
        schedule: LrSchedule::new(&schedule, 1e-4, 7),
        adamw: AdamWOptions {
            lr: 1e-4,
            weight_decay: 0.01,
            ..AdamWOptions::default()
        },
        seed: 0,
        on_non_finite: NonFinitePolicy::Stop,
        early_stopping: None,
        gradient_checkpointing: args.gradient_checkpointing,
        backward: match args.backward {
            Backward::Fused => BackwardPath::Fused,
            Backward::Autodiff => BackwardPath::Autodiff,
        },
        precision: args.precision,
    };
    let mut trainer = Trainer::new(model, &device, options)?;
    let trainable: usize = trainer.trainable().iter().map(|p| p.numel()).sum();
    let total: usize = kiln::train::params::param_infos(trainer.model())
        .iter()
        .map(|p| p.numel())
        .sum();
    let (mut times, mut losses) = (Vec::new(), Vec::new());
    for i in 0..7u64 {
        let ids = random_ids(BATCH * SEQ, vocab, 1000 + i);
        let data = vec![Batch::language_modelling(ids, BATCH, SEQ)?];
        let t0 = Instant::now();
        // The step reads the loss and the gradient norm on the host: it is synchronous.
        let MicroOutcome::Stepped(m) = trainer.step(&data)? else {
            anyhow::bail!("step {i} did not complete")
        };
        let dt = t0.elapsed().as_secs_f64();
        losses.push((m.loss * 1e4).round() / 1e4);
        if i >= 2 {
            times.push(dt);
        }
        // Each step's data is its own one-batch source: rewind the position.
        trainer.state.position = 0;
    }
    let med = median(&times);
    Ok(json!({
        "mode": match mode { Mode::Lora => "lora", _ => "full" },
        "trainable_params": trainable,
        "total_params": total,
        "step_times_s": round4(&times),
        "median_step_s": med,
        "tokens_per_s": (BATCH * SEQ) as f64 / med,
        "losses": losses,
        "peak_rss_mb": peak_rss_mb(),
        "gradient_checkpointing": args.gradient_checkpointing,
        "backward": format!("{:?}", args.backward).to_lowercase(),
        "precision": args.precision.to_string(),
    }))
}

fn main() -> Result<()> {
    kiln::train::keep_freed_memory();
    let args = Args::parse();
    let device = parse_device(&args.device)?;
    let path = resolve_model(args.model.as_deref(), true)?;
    let lm = Pretrained::load_as(&path, &device, args.quantize)?;
    let result = match args.mode {
        Mode::Infer => infer(&lm)?,
        mode => train(lm, mode, &args)?,
    };
    println!("RESULT {result}");
    Ok(())
}
