//! The decoder's forward pass and decoding speed on the CPU: the tiny fixture model, and
//! SmolLM2-135M-Instruct (from kiln's cache; those groups are skipped without it) at batch
//! 1 x 256 and 4 x 256, plus 16 greedy tokens with the KV cache after a 16-token prompt.
//! Every iteration uses new ids and copies the logits to the host.
//!
//! Run: `cargo bench --bench model` (add `--features openblas` for BLAS GEMMs). The side-by-side
//! comparison with PyTorch is `tools/bench_side_by_side.sh`.
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kiln::models::{
    CausalLm, DecoderConfig, DecoderInput, GenerationConfig, Pretrained, SafetensorsWeights,
    build_causal_lm, default_device, fetch, generate,
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
}

criterion_group!(benches, bench);
criterion_main!(benches);
