//! Quantizing at load must not dominate loading: NF4 of a 3072×8192 matrix (the size of a
//! Phi-3-mini MLP projection; a 3.8B model is about 150 of them).
use criterion::{Criterion, criterion_group, criterion_main};
use kiln_cpu::quant::bnb::{FourBit, quantize_4bit};
use std::hint::black_box;

fn nf4(c: &mut Criterion) {
    let (rows, cols) = (3072, 8192);
    // Deterministic weights with a normal-ish spread (sum of uniforms), no RNG dependency.
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let w: Vec<f32> = (0..rows * cols)
        .map(|_| {
            let mut t = 0f32;
            for _ in 0..4 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                t += (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            }
            t * 0.02
        })
        .collect();
    let mut g = c.benchmark_group("quantize");
    g.sample_size(10);
    g.bench_function("nf4_3072x8192", |b| {
        b.iter(|| quantize_4bit(black_box(&w), rows, cols, FourBit::Nf4))
    });
    g.finish();
}

criterion_group!(benches, nf4);
criterion_main!(benches);
