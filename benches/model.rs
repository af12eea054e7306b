//! The decoder's forward pass and decoding speed on the CPU: the tiny fixture model, and
//! SmolLM2-135M-Instruct (from kiln's cache; those groups are skipped without it) at batch
//! 1 x 256 and 4 x 256, plus 16 greedy tokens with the KV cache after a 16-token prompt, and
//! one LoRA training step (r 16 on the seven projections, batch 4 x 256, AdamW) through kiln's
//! fused CPU backward and through burn's autodiff. Every iteration uses new ids and copies the
//! logits (or the loss and gradient norm) to the host.
//!
//! Run: `cargo bench --bench model` (add `--features openblas` for BLAS GEMMs). The side-by-side
//! comparison with PyTorch is `tools/bench_side_by_side.sh`.
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kiln::lora::{LoraConfig, LoraModel, TargetModules};
use kiln::models::{
    CausalLm, DecoderConfig, DecoderInput, GenerationConfig, Pretrained, SafetensorsWeights,
    build_causal_lm, default_device, fetch, generate,
};
use kiln::train::{
    AdamWOptions, BackwardPath, Batch, LrSchedule, MicroOutcome, NonFinitePolicy, ScheduleKind,
    ScheduleOptions, Trainer, TrainerOptions,
};
use std::cell::Cell;

fn ids(n: usize, vocab: usize, salt: u64) -> Vec<u32> {
    let mut s = 0x9E37_79B9_7F4A_7C15_u64.wrapping_mul(salt + 1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % vocab as u64) as u32
        })
        .collect()
}

fn forward(c: &mut Criterion, name: &str, model: &CausalLm, b: usize, t: usize, samples: usize) {
    let vocab = model.config.vocab_size;
    let salt = Cell::new(0u64);
    let mut g = c.benchmark_group(name);
    g.sample_size(samples)
        .throughput(Throughput::Elements((b * t) as u64));
    g.bench_function(format!("forward_{b}x{t}"), |bench| {
        bench.iter_batched(
            || {
                salt.set(salt.get() + 1);
                DecoderInput::new(ids(b * t, vocab, salt.get()), b, t)
            },
            |input| {
                let logits = model.forward(&input).expect("forward");
                logits
                    .into_data()
                    .try_into_vec::<f32>()
                    .expect("host")
                    .len()
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny/llama");
    let config = DecoderConfig::from_file(&dir.join("config.json")).expect("tiny config");
    let weights = SafetensorsWeights::open(&dir).expect("tiny weights");
    let tiny = build_causal_lm(&config, &weights, &default_device()).expect("tiny model");
    forward(c, "tiny_llama", &tiny, 2, 12, 50);

    let path = fetch::smollm2_path();
    if !path.is_file() {
        eprintln!(
            "SmolLM2 groups skipped: {} missing (tools/fetch_model.sh)",
            path.display()
        );
        return;
    }
    let lm = Pretrained::load(&path, &default_device()).expect("SmolLM2");
    forward(c, "smollm2", &lm.model, 1, 256, 10);
    forward(c, "smollm2", &lm.model, 4, 256, 10);

    let vocab = lm.model.config.vocab_size;
    let salt = Cell::new(100u64);
    let config = GenerationConfig {
        max_new_tokens: 16,
        ..GenerationConfig::default()
    };
    let mut g = c.benchmark_group("smollm2_decode");
    g.sample_size(10).throughput(Throughput::Elements(16));
    g.bench_function("greedy_16_after_16", |bench| {
        bench.iter_batched(
            || {
                salt.set(salt.get() + 1);
                ids(16, vocab, salt.get())
            },
            |prompt| {
                let out = generate(&lm.model, &[prompt], &config, None, &mut |_, _| {})
                    .expect("generate");
                out[0].tokens.len()
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
    lora_step(c, lm.model);
}

/// One optimizer step of LoRA r 16 on all seven projections, batch 4 x 256 (the side-by-side
/// benchmark's `lora` mode), per backward path.
fn lora_step(c: &mut Criterion, model: CausalLm) {
    let names = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];
    let targets = TargetModules::Names(names.iter().map(|s| s.to_string()).collect());
    let config = LoraConfig::new(16, 32.0, targets);
    let vocab = model.config.vocab_size;
    let model = LoraModel::with_adapter(model, "default", config)
        .expect("adapter")
        .into_inner();
    let salt = Cell::new(1000u64);
    let mut g = c.benchmark_group("smollm2_lora_step_4x256");
    g.sample_size(10).throughput(Throughput::Elements(1024));
    for (name, backward) in [
        ("fused", BackwardPath::Fused),
        ("autodiff", BackwardPath::Autodiff),
    ] {
        let schedule = ScheduleOptions {
            kind: ScheduleKind::Constant,
            warmup_steps: Some(0),
            warmup_ratio: None,
            min_lr: 0.0,
        };
        let options = TrainerOptions {
            grad_accum: 1,
            max_grad_norm: Some(1.0),
            schedule: LrSchedule::new(&schedule, 1e-4, 1),
            adamw: AdamWOptions::default(),
            seed: 0,
            on_non_finite: NonFinitePolicy::Stop,
            early_stopping: None,
            gradient_checkpointing: false,
            backward,
            precision: Some(kiln::train::Precision::F32),
        };
        let mut trainer = Trainer::new(model.clone(), &default_device(), options).expect("trainer");
        g.bench_function(name, |bench| {
            bench.iter_batched(
                || {
                    salt.set(salt.get() + 1);
                    let ids = ids(1024, vocab, salt.get());
                    vec![Batch::language_modelling(ids, 4, 256).expect("batch")]
                },
                |data| {
                    trainer.state.position = 0;
                    match trainer.step(&data).expect("step") {
                        MicroOutcome::Stepped(m) => m.loss,
                        other => panic!("{other:?}"),
                    }
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
