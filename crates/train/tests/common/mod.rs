//! Shared helpers: the tiny Llama fixture with LoRA on q and v, fixed batches.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]
use burn::module::Module;
use burn::tensor::Device;
use kiln_lora::{AdapterSpec, InitLoraWeights};
use kiln_models::{
    CausalLm, DecoderConfig, DecoderInput, SafetensorsWeights, build_causal_lm, default_device,
};
use kiln_train::{
    AdamWOptions, Batch, LrSchedule, NonFinitePolicy, ScheduleKind, ScheduleOptions, TrainerOptions,
};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

/// burn's CPU RNG is global: tests that draw dropout masks run one at a time.
static RNG: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/")).join(rel)
}

pub fn device() -> Device {
    default_device()
}

pub fn tiny_model() -> CausalLm {
    let dir = fixture("tiny/llama");
    let config = DecoderConfig::from_file(&dir.join("config.json")).unwrap();
    let weights = SafetensorsWeights::open(&dir).unwrap();
    build_causal_lm(&config, &weights, &device()).unwrap()
}

/// Tiny model with every weight training (full fine-tuning).
pub fn tiny_full() -> CausalLm {
    tiny_model().set_require_grad(true)
}

/// Tiny model, base frozen, LoRA `r` on q_proj and v_proj of every layer with A and B random.
pub fn tiny_lora(r: usize, dropout: f64, seed: u64) -> CausalLm {
    let device = device();
    device.seed(seed);
    kiln_lora::manual_seed(seed);
    let mut model = tiny_model().set_require_grad(false);
    let spec = AdapterSpec {
        r,
        alpha: 2.0 * r as f64,
        scale: 2.0,
        dropout,
        init: InitLoraWeights::Random,
        use_dora: false,
    };
    for (i, layer) in model.model.layers.iter_mut().enumerate() {
        let a = &mut layer.self_attn;
        for (name, proj) in a.input_projections_mut() {
            if !matches!(name, "q_proj" | "v_proj") {
                continue;
            }
            let path = format!("model.layers.{i}.self_attn.{name}");
            proj.add_adapter_at("default", &spec, &path).unwrap();
            proj.set_active(&["default".to_string()]);
        }
    }
    model
}

/// A batch of `rows` rows of `t` tokens; row `r` is padded on the right by `r % 3` tokens and
/// its first `r % 2 + 1` labels are ignored, so rows count different numbers of tokens.
pub fn batch(rows: std::ops::Range<usize>, t: usize) -> Batch {
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    let mut labels = Vec::new();
    for r in rows.clone() {
        let pad = r % 3;
        for i in 0..t {
            let id = ((r * 37 + i * 11 + 5) % 500 + 3) as u32;
            let real = i < t - pad;
            ids.push(if real { id } else { 0 });
            mask.push(real as u8);
            labels.push(if !real || i <= r % 2 { -100 } else { id as i64 });
        }
    }
    let input = DecoderInput::new(ids, rows.len(), t).with_attention_mask(mask);
    Batch::new(input, labels).unwrap()
}

pub fn options(grad_accum: usize, lr: f64, total: usize) -> TrainerOptions {
    let schedule = ScheduleOptions {
        kind: ScheduleKind::Linear,
        warmup_steps: Some(1),
        warmup_ratio: None,
        min_lr: 0.0,
    };
    TrainerOptions {
        grad_accum,
        max_grad_norm: Some(1.0),
        schedule: LrSchedule::new(&schedule, lr, total),
        adamw: AdamWOptions {
            lr,
            weight_decay: 0.01,
            ..AdamWOptions::default()
        },
        seed: 7,
        on_non_finite: NonFinitePolicy::Stop,
        early_stopping: None,
        gradient_checkpointing: false,
        backward: kiln_train::BackwardPath::Fused,
        precision: Some(kiln_train::Precision::F32),
    }
}

/// Whether the model at `path` is in kiln's cache. When it is not the test is skipped (`fetch`
/// names the script that fetches it), unless `KILN_REQUIRE_MODEL` is set (as in CI): then it fails.
pub fn model_cached(path: &std::path::Path, fetch: &str) -> bool {
    if path.is_file() {
        return true;
    }
    assert!(
        std::env::var("KILN_REQUIRE_MODEL").is_err(),
        "{} missing",
        path.display()
    );
    println!("SKIPPED: {} missing (run {fetch})", path.display());
    false
}

/// A model directory under `dir` for the recipe tests: the tiny Llama's weights with the DPO
/// fixture's tokenizer and chat template (what TRL's fixtures were written with).
pub fn preference_model_dir(dir: &std::path::Path) -> std::path::PathBuf {
    let model_dir = dir.join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(fixture("tiny/llama").join(f), model_dir.join(f)).unwrap();
    }
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ] {
        std::fs::copy(fixture("dpo/tokenizer").join(f), model_dir.join(f)).unwrap();
    }
    model_dir
}

/// The recipe tests' run (the TRL fixtures' settings): the tiny Llama directory under `dir`
/// ([`preference_model_dir`]), `data` in file order, 3 steps at a constant 1e-3 from the DPO
/// fixture's initial adapter, f32, output in `dir/out`.
pub fn preference_recipe(
    dir: &std::path::Path,
    data: PathBuf,
    dpo: kiln_train::DpoOptions,
) -> kiln_train::DpoRun {
    kiln_train::DpoRun {
        model: preference_model_dir(dir),
        data,
        output_dir: dir.join("out"),
        max_steps: 3,
        lr: 1e-3,
        dpo,
        init_adapter: Some(fixture("dpo/adapter_init")),
        shuffle: false,
        precision: Some(kiln_train::Precision::F32),
        ..kiln_train::DpoRun::default()
    }
}

/// The JSON objects of a `metrics.jsonl`, one per line.
pub fn metrics_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The preference tests' trainer: constant learning rate, no warmup or decay, clipping at 1, f32
/// fused backward (TRL's fixtures were written with the same settings).
pub fn trainer_options(accum: usize, lr: f64, steps: usize) -> TrainerOptions {
    let schedule = ScheduleOptions {
        kind: ScheduleKind::Constant,
        warmup_steps: Some(0),
        warmup_ratio: None,
        min_lr: 0.0,
    };
    TrainerOptions {
        grad_accum: accum,
        max_grad_norm: Some(1.0),
        schedule: LrSchedule::new(&schedule, lr, steps),
        adamw: AdamWOptions {
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
        },
        seed: 0,
        on_non_finite: NonFinitePolicy::Stop,
        early_stopping: None,
        gradient_checkpointing: false,
        backward: kiln_train::BackwardPath::Fused,
        precision: Some(kiln_train::Precision::F32),
    }
}
