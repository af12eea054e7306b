//! f32 `matmul` against the bf16 products (`kiln_cpu::bf16`) on the shapes of SmolLM2 training
//! and inference, on all of rayon's threads (`RAYON_NUM_THREADS=1` for one).
//!
//! Why: the bf16 kernel is only worth having where it beats the f32 product it replaces; this
//! is the measurement (criterion reports `elem/s` = FLOP/s, 2·m·k·n per product).
//! `cargo bench -p kiln-cpu --bench bf16_gemm`; `-- --quick` for a fast pass.
//!
//!
//! GFLOP/s with 2 threads, AMD EPYC (Zen 4, avx512_bf16, no AMX, 2 cores), 2026-12-07, while
//! other engineers' builds kept the load average at 5–9, so all numbers are lower bounds and the
//! ranges are two runs. torch's own 2048³ `--mode sgemm`: f32 29, bf16 84 (median 77). Not
//! measurable: OpenBLAS `cblas_sbgemm` (Debian's 0.3.21 and PyPI's scipy-openblas32 0.3.34 are
//! built without BUILD_BFLOAT16: no `sbgemm` symbol), oneDNN's `dnnl_sgemm` (f32 only). oneDNN's
//! bf16 matmul primitive (`brg:avx512_core_bf16`, C++ API, weights as W `[n, k]`) is slower than
//! the own kernel on every shape and would add a C++ library to the default build; hence the own
//! kernel.
//!
//! | m × k × n | f32 `matmul` | **kiln bf16, packed B** | kiln bf16 (packs B per call) | oneDNN 2.6 bf16 (packed W) | torch 2.15 bf16 | torch f32 |
//! |---|---|---|---|---|---|---|
//! | 1024 × 576 × 576 | 49–51 | **90–123** | 76–82 | 26–47 (39–46) | 45 | 19 |
//! | 1024 × 576 × 1536 | 48–71 | **99–134** | 90–112 | 42–60 (52–60) | 58 | 25 |
//! | 1024 × 1536 × 576 | 49–64 | **107–121** | 86–111 | 40–77 (34–73) | 79 | 40 |
//! | 256 × 576 × 1536 | 46–65 | **105–140** | 64–89 | 18–41 (21–49) | 50 | 14 |
//! | 1 × 576 × 1536 (decode) | 23–28 | **24–34** | 23 (runs f32; 1.1 packing B) | 2 (3–10) | 0.1 | 11 |
//! | 1024 × 576 × 49152 (head) | 50–61 | **105–109** | 87–110 | 53–96 (70–97) | 103 | 36 |
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kiln_cpu::bf16::{bf16_backend, matmul_bf16, matmul_bf16_packed, pack_a, pack_b};
use kiln_cpu::round_bf16;
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

/// Packing alone, on the operands the products by quantized weights pack per call: a
/// dequantized 96-row tile as `Wᵀ` (forward, `k` contiguous) and as `W` (backward, rows
/// contiguous), and 1024 rows of activations (elements/s = values packed).
fn packing(c: &mut Criterion) {
    let mut g = c.benchmark_group(format!("bf16_pack/{}", bf16_backend()));
    g.sample_size(20).warm_up_time(Duration::from_millis(300));
    g.measurement_time(Duration::from_secs(2));
    let (tile, k) = (96, 1536);
    let w = values(tile * k); // [96, 1536]
    g.throughput(Throughput::Elements((tile * k) as u64));
    g.bench_function("b_transposed_tile_96x1536", |bch| {
        bch.iter(|| pack_b(black_box(MatRef::new(&w, tile, k)).t()))
    });
    g.bench_function("b_row_major_tile_96x1536", |bch| {
        bch.iter(|| pack_b(black_box(MatRef::new(&w, tile, k))))
    });
    let x = values(1024 * 576);
    g.throughput(Throughput::Elements((1024 * 576) as u64));
    g.bench_function("a_rows_1024x576", |bch| {
        bch.iter(|| pack_a(black_box(MatRef::new(&x, 1024, 576))))
    });
    g.bench_function("a_transposed_1024x576", |bch| {
        bch.iter(|| pack_a(black_box(MatRef::new(&x, 576, 1024)).t()))
    });
    g.finish();
}

criterion_group!(benches, bench, packing);
criterion_main!(benches);
