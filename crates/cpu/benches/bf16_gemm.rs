//! f32 `matmul` against the bf16 products (`kiln_cpu::bf16`) on the shapes of SmolLM2 training
//! and inference, on all of rayon's threads (`RAYON_NUM_THREADS=1` for one).
//!
//! Why: the bf16 kernel is only worth having where it beats the f32 product it replaces; this
//! is the measurement (criterion reports `elem/s` = FLOP/s, 2·m·k·n per product).
//! `cargo bench -p kiln-cpu --bench bf16_gemm`; `-- --quick` for a fast pass.
//!
//! MEASURED: see the table at the end of this file.
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kiln_cpu::bf16::{bf16_backend, matmul_bf16, matmul_bf16_packed, pack_b};
use kiln_cpu::precision::round_bf16;
use kiln_cpu::{MatMut, MatRef, Threads, matmul};
use std::hint::black_box;
use std::time::Duration;

/// (m, k, n): training 4 × 256 tokens (x·Wᵀ of q/o, gate/up, down), forward 1 × 256, decode,
/// the tied 49,152-word head.
const SHAPES: [(usize, usize, usize); 6] = [
    (1024, 576, 576),
    (1024, 576, 1536),
    (1024, 1536, 576),
    (256, 576, 1536),
    (1, 576, 1536),
    (1024, 576, 49152),
];

fn values(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| round_bf16((i as f32 * 0.618).sin()))
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group(format!("bf16_gemm/{}", bf16_backend()));
    g.sample_size(10).warm_up_time(Duration::from_millis(500));
    for (m, k, n) in SHAPES {
        let (x, w) = (values(m * k), values(n * k)); // x [m, k], w [n, k]
        let mut y = vec![0f32; m * n];
        let (xv, wt) = (MatRef::new(&x, m, k), MatRef::new(&w, n, k).t());
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        g.measurement_time(Duration::from_secs(if n > 10_000 { 8 } else { 2 }));
        let id = format!("{m}x{k}x{n}");
        g.bench_function(BenchmarkId::new("f32_matmul", &id), |bch| {
            bch.iter(|| matmul(MatMut::new(&mut y, m, n), xv, wt, 1.0, false, Threads::All))
        });
        g.bench_function(BenchmarkId::new("bf16", &id), |bch| {
            bch.iter(|| matmul_bf16(MatMut::new(&mut y, m, n), xv, wt, 1.0, false, Threads::All))
        });
        let packed = pack_b(wt);
        g.bench_function(BenchmarkId::new("bf16_packed", &id), |bch| {
            bch.iter(|| {
                let dst = MatMut::new(&mut y, m, n);
                matmul_bf16_packed(dst, xv, black_box(&packed), 1.0, false, Threads::All)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
