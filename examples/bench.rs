//! kiln's side of `../shared/bench/pytorch_peft_baseline.py`: the same workloads on the same
//! model file, one mode per process (so peak RSS is per mode), one JSON line out with the
//! baseline's field names. `tools/bench_side_by_side.sh` runs both back to back.
//!
//! ```text
//! cargo run --release --example bench -- --mode infer
//! cargo run --release --example bench -- --mode lora
//! cargo run --release --example bench -- --mode full --batch-size 8 --seq-len 512 --steps 3
//! ```
//!
//! - `infer`: forward of batch `--batch-size` (default 1) x `--seq-len` (256) random ids (no
//!   autodiff), `--warmup` (2) + `--steps` (5) timed; greedy decoding of 64 new tokens after a
//!   16-token prompt with the KV cache, 1 warm-up + 3 timed (the flags do not change decoding).
//!   The field names keep the baseline's `forward_b1x256_*` whatever the shape; `batch` and
//!   `seq` say what ran. Inference runs in f32 unless `--precision bf16` is given
//!   ([`kiln::models::CausalLm::set_precision`]: bf16 products on the bf16 kernel).
//! - `lora`: LoRA r=16, alpha=32, dropout 0 on q,k,v,o,gate,up,down; AdamW lr 1e-4 (weight
//!   decay 0.01 as torch's default); batch `--batch-size` (default 4) x `--seq-len` (256) random
//!   ids, labels = ids; `--warmup` (2) + `--steps` (5) timed optimizer steps through
//!   [`kiln::train::Trainer`] (forward, backward, step).
//! - `full`: the same with every parameter trainable.
//!
//! Every timed call copies its result to the host, so the time includes the whole computation.
//!
//! Achieved speed: `step_gflop` is the timed call's matrix-product work counted as
//! `tools/step_flops.py` counts it (projections, head, attention in 64-query blocks, LoRA's thin
//! products; see [`step_flop`]), `gflops_per_s` that over the median time, and
//! `fraction_of_peak` that over `peak_gflops`, the best of ten products 1024³ on all threads in
//! the step's precision, measured at start: `kiln_cpu::matmul` for f32, `kiln_cpu::bf16`'s
//! product with the right-hand side packed once for bf16 (`peak_precision` says which).
use anyhow::Result;
use clap::{Parser, ValueEnum};
use kiln::lora::{LoraConfig, LoraModel, TargetModules};
use kiln::models::DecoderConfig;
use kiln::models::fetch::resolve_model;
use kiln::models::{CausalLm, DecoderInput, GenerationConfig, generate, parse_device};
use kiln::train::{
    AdamWOptions, BackwardPath, Batch, LrSchedule, MicroOutcome, NonFinitePolicy, ScheduleKind,
    ScheduleOptions, Trainer, TrainerOptions,
};
use kiln_cpu::{MatMut, MatRef, Threads};
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
    /// How to hold the model's matrices: stored (the default: the file's own format, e.g. a
    /// GGUF's blocks), f32, nf4, fp4 or int8 (quantized at load as bitsandbytes does).
    #[arg(long, default_value = "stored")]
    quantize: kiln::models::Quantization,
    /// Recompute activations in the backward pass (training modes).
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Gradients through kiln's fused CPU backward (default) or burn's autodiff.
    #[arg(long, value_enum, default_value = "fused")]
    backward: Backward,
    /// `f32`, or `bf16` products and saved activations (fused backward only). Default: bf16
    /// on CPUs with bf16 units, f32 elsewhere (as the trainer's default).
    #[arg(long)]
    precision: Option<kiln::train::Precision>,
    /// `infer` with `--precision bf16`: keep each quantized matrix in the bf16 kernel's layout
    /// too, instead of dequantizing and packing it at every product (as `serve --bf16-weights`).
    #[arg(long)]
    bf16_weights: bool,
    /// Sequences per step (default: 1 for `infer`, 4 for training).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Timed steps (forwards for `infer`).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Untimed steps before them.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
}

impl Args {
    fn batch(&self) -> usize {
        self.batch_size.unwrap_or(match self.mode {
            Mode::Infer => 1,
            _ => 4,
        })
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Backward {
    Fused,
    Autodiff,
}

/// LoRA rank of the `lora` mode.
const RANK: usize = 16;
/// Queries per block of kiln's attention (the blocks see only the keys they may attend to).
const ATTN_BLOCK: usize = 64;

/// Matrix-product FLOPs of one timed call, as `tools/step_flops.py` counts them: every
/// projection once forward, again for the input gradient and again for the weight gradient in
/// full fine-tuning; the head on the `batch * (seq - 1)` counted rows (logits, input gradient,
/// weight gradient in full fine-tuning) or on every row for `infer` (which returns all logits);
/// attention in blocks of 64 queries over the keys each block sees (2 products forward, 5 more
/// backward as the probabilities are recomputed); 6 thin products per LoRA adapter on the seven
/// projections. Sliding windows are not subtracted (they cut nothing up to the window).
fn step_flop(c: &DecoderConfig, mode: Mode, batch: usize, seq: usize) -> f64 {
    let (d, f, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let (q, kv) = (c.num_heads * hd, c.num_kv_heads * hd);
    // (in, out) of q, k, v, o, gate, up, down (fused qkv / gate_up multiply the same)
    let proj = [(d, q), (d, kv), (d, kv), (q, d), (d, f), (d, f), (f, d)];
    let (tokens, counted) = ((batch * seq) as f64, (batch * seq.saturating_sub(1)) as f64);
    let layers = c.num_layers as f64;
    let layer_params: usize = proj.iter().map(|(i, o)| i * o).sum();
    let product = 2.0 * layer_params as f64 * tokens * layers;
    let head_row = 2.0 * (c.vocab_size * d) as f64;
    let keys: usize = (0..seq.div_ceil(ATTN_BLOCK))
        .map(|i| seq.min(ATTN_BLOCK * (i + 1)))
        .sum();
    let attn_product = 2.0 * (ATTN_BLOCK * hd * keys * batch * c.num_heads) as f64;
    let adapter_dims: usize = proj.iter().map(|(i, o)| i + o).sum();
    let adapters = 3.0 * 2.0 * tokens * (RANK * adapter_dims) as f64 * layers;
    match mode {
        Mode::Infer => product + head_row * tokens + 2.0 * attn_product * layers,
        Mode::Lora => {
            2.0 * product + 2.0 * head_row * counted + 7.0 * attn_product * layers + adapters
        }
        Mode::Full => 3.0 * product + 3.0 * head_row * counted + 7.0 * attn_product * layers,
    }
}

/// The machine's practical product speed in `precision`: best of ten products 1024³ on all
/// threads (`kiln_cpu::matmul` in f32, the bf16 kernel with a packed right-hand side in bf16),
/// in GFLOP/s.
fn peak_gflops(precision: kiln::train::Precision) -> f64 {
    const N: usize = 1024;
    let a: Vec<f32> = (0..N * N)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3)
        .collect();
    let b: Vec<f32> = (0..N * N)
        .map(|i| ((i * 104_729) % 1000) as f32 * 1e-3)
        .collect();
    let mut c = vec![0.0f32; N * N];
    let mut best = f64::INFINITY;
    let bf16 = precision == kiln::train::Precision::Bf16;
    let packed = bf16.then(|| kiln_cpu::bf16::pack_b(MatRef::new(&b, N, N)));
    for i in 0..12 {
        let t0 = Instant::now();
        let (dst, am) = (MatMut::new(&mut c, N, N), MatRef::new(&a, N, N));
        match &packed {
            Some(p) => kiln_cpu::bf16::matmul_bf16_packed(dst, am, p, 1.0, false, Threads::All),
            None => kiln_cpu::matmul(dst, am, MatRef::new(&b, N, N), 1.0, false, Threads::All),
        }
        let dt = t0.elapsed().as_secs_f64();
        if i >= 2 {
            best = best.min(dt);
        }
    }
    std::hint::black_box(&c);
    2.0 * (N * N * N) as f64 / best / 1e9
}

/// The achieved-speed fields of a result: work, GFLOP/s at the median time, fraction of peak.
fn speed(flop: f64, median_s: f64, peak: f64) -> serde_json::Value {
    let gflops = flop / median_s / 1e9;
    json!({
        "step_gflop": (flop / 1e9 * 10.0).round() / 10.0,
        "gflops_per_s": (gflops * 10.0).round() / 10.0,
        "peak_gflops": (peak * 10.0).round() / 10.0,
        "fraction_of_peak": (gflops / peak * 1e3).round() / 1e3,
    })
}

/// Adds the fields of `extra` (an object) to `v` (an object).
fn merge(mut v: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    if let (Some(v), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
        v.extend(extra);
    }
    v
}

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

fn infer(lm: &CausalLm, args: &Args, peak: f64) -> Result<serde_json::Value> {
    let vocab = lm.config.vocab_size;
    let (batch, seq) = (args.batch(), args.seq_len);
    let mut forward = Vec::new();
    for i in 0..args.warmup + args.steps {
        // New ids every run so nothing can be cached between runs.
        let ids = random_ids(batch * seq, vocab, i as u64);
        let t0 = Instant::now();
        let logits = lm.forward(&DecoderInput::new(ids, batch, seq))?;
        let host = logits.into_data().try_into_vec::<f32>();
        let dt = t0.elapsed().as_secs_f64();
        anyhow::ensure!(host.map(|v| v.len()).unwrap_or(0) == batch * seq * vocab);
        if i >= args.warmup {
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
        let out = generate(lm, std::slice::from_ref(&prompt), cfg, None, &mut |_, _| {})?;
        let dt = t0.elapsed().as_secs_f64();
        if i > 0 {
            anyhow::ensure!(out[0].tokens.len() == 64);
            gen_times.push(dt);
            let t0 = Instant::now();
            let h = lm.forward_hidden(&DecoderInput::new(prompt, 1, 16), None)?;
            let [_, t, d] = h.dims();
            let last = lm.logits(h.slice([0..1, t - 1..t, 0..d]));
            let _ = last.into_data().try_into_vec::<f32>();
            prefill.push(t0.elapsed().as_secs_f64());
        }
    }
    let (f, g, p) = (median(&forward), median(&gen_times), median(&prefill));
    let flop = step_flop(&lm.config, Mode::Infer, batch, seq);
    let result = json!({
        "mode": "infer",
        "precision": lm.precision.to_string(),
        "bf16_weights": args.bf16_weights,
        "batch": batch,
        "seq": seq,
        "forward_b1x256_times_s": round4(&forward),
        "forward_b1x256_median_s": f,
        "forward_tokens_per_s": (batch * seq) as f64 / f,
        "generate_64_times_s": round4(&gen_times),
        "generate_64_median_s": g,
        "decode_tokens_per_s_incl_prefill": 64.0 / g,
        "prefill16_median_s": p,
        "decode_tokens_per_s_excl_prefill": 64.0 / (g - p).max(1e-9),
        "peak_rss_mb": peak_rss_mb(),
    });
    Ok(merge(result, speed(flop, f, peak)))
}

fn train(lm: CausalLm, mode: Mode, args: &Args, peak: f64) -> Result<serde_json::Value> {
    let device = parse_device(&args.device)?;
    let vocab = lm.config.vocab_size;
    let (batch, seq) = (args.batch(), args.seq_len);
    let flop = step_flop(&lm.config, mode, batch, seq);
    let precision = args
        .precision
        .unwrap_or_else(kiln::train::Precision::native);
    // The adapters' initial A is drawn from the device's RNG: seeded, so every run of this
    // benchmark trains the same adapter and reports the same losses.
    device.seed(0);
    kiln::lora::manual_seed(0);
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
            let mut config = LoraConfig::new(RANK, 32.0, TargetModules::Names(targets));
            config.lora_dropout = 0.0;
            LoraModel::with_adapter(lm, "default", config)?.into_inner()
        }
        _ => lm.into_full_training(),
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
        schedule: LrSchedule::new(&schedule, 1e-4, args.warmup + args.steps),
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
        precision: Some(precision),
    };
    let mut trainer = Trainer::new(model, &device, options)?;
    let trainable: usize = trainer.trainable().iter().map(|p| p.numel()).sum();
    let total: usize = kiln::train::param_infos(trainer.model())
        .iter()
        .map(|p| p.numel())
        .sum();
    let (mut times, mut losses) = (Vec::new(), Vec::new());
    for i in 0..(args.warmup + args.steps) as u64 {
        let ids = random_ids(batch * seq, vocab, 1000 + i);
        let data = vec![Batch::language_modelling(ids, batch, seq)?];
        let t0 = Instant::now();
        // The step reads the loss and the gradient norm on the host: it is synchronous.
        let MicroOutcome::Stepped(m) = trainer.step(&data)? else {
            anyhow::bail!("step {i} did not complete")
        };
        let dt = t0.elapsed().as_secs_f64();
        losses.push((m.loss * 1e4).round() / 1e4);
        if i >= args.warmup as u64 {
            times.push(dt);
        }
        // Each step's data is its own one-batch source: rewind the position.
        trainer.state.position = 0;
    }
    let med = median(&times);
    let result = json!({
        "mode": match mode { Mode::Lora => "lora", _ => "full" },
        "batch": batch,
        "seq": seq,
        "trainable_params": trainable,
        "total_params": total,
        "step_times_s": round4(&times),
        "median_step_s": med,
        "tokens_per_s": (batch * seq) as f64 / med,
        "losses": losses,
        "peak_rss_mb": peak_rss_mb(),
        "gradient_checkpointing": args.gradient_checkpointing,
        "backward": format!("{:?}", args.backward).to_lowercase(),
        "precision": precision.to_string(),
    });
    Ok(merge(result, speed(flop, med, peak)))
}

fn main() -> Result<()> {
    kiln::train::keep_freed_memory();
    let args = Args::parse();
    anyhow::ensure!(
        args.steps > 0 && args.batch() > 0 && args.seq_len > 1,
        "--steps, --batch-size must be positive and --seq-len at least 2"
    );
    let precision = match args.mode {
        Mode::Infer => args.precision.unwrap_or(kiln::train::Precision::F32),
        _ => args
            .precision
            .unwrap_or_else(kiln::train::Precision::native),
    };
    let peak = peak_gflops(precision);
    let device = parse_device(&args.device)?;
    let path = resolve_model(args.model.as_deref(), true)?;
    // Random token ids: the model is loaded without its tokenizer.
    let mut lm = CausalLm::load(&path, &device, args.quantize)?;
    let result = match args.mode {
        Mode::Infer => {
            lm.set_precision(precision);
            if args.bf16_weights {
                lm.hold_bf16_weights()?;
            }
            infer(&lm, &args, peak)?
        }
        mode => train(lm, mode, &args, peak)?,
    };
    let result = merge(result, json!({ "peak_precision": precision.to_string() }));
    println!("RESULT {result}");
    Ok(())
}
