//! Decoding's products by a frozen matrix (`QMatrix::matmul_t` with one row of `x`), against
//! the f32 product by the same weight widened to f32 (`kiln_cpu::matmul`, what `--quantize f32`
//! runs), on SmolLM2's shapes (a Q4_1 projection, the Q8_0 tied head) and a Gemma-sized Q4_K
//! projection. `KILN_QDOT_ISA=avx2|scalar` runs the narrower builds of the kernel.
use criterion::{Criterion, criterion_group, criterion_main};
use kiln_cpu::{Bytes, MatMut, MatRef, Precision, QMatrix, QuantType, Threads, matmul};
use std::hint::black_box;

/// Codes from a xorshift, scales small and finite.
fn random(ty: QuantType, rows: usize, cols: usize) -> QMatrix {
    let (block, bytes) = ty.block_layout();
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut data: Vec<u8> = (0..rows * cols / block * bytes)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect();
    let scales: &[usize] = match ty {
        QuantType::Q6_K => &[208],
        QuantType::Q4_0 | QuantType::Q8_0 | QuantType::Q5_0 => &[0],
        _ => &[0, 2],
    };
    for b in data.chunks_exact_mut(bytes) {
        for &at in scales {
            b[at..at + 2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        }
    }
    QMatrix::new(ty, rows, cols, Bytes::Owned(data.into())).expect("layout")
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_m1");
    g.sample_size(20);
    for (name, ty, n, k) in [
        ("q4_1_1536x576", QuantType::Q4_1, 1536, 576),
        ("q8_0_head_49152x576", QuantType::Q8_0, 49152, 576),
        ("q4_k_2048x1024", QuantType::Q4_K, 2048, 1024),
        ("q6_k_2048x1024", QuantType::Q6_K, 2048, 1024),
    ] {
        let w = random(ty, n, k);
        let x: Vec<f32> = (0..k).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut y = vec![0f32; n];
        g.bench_function(format!("stored_{name}"), |b| {
            b.iter(|| w.matmul_t(black_box(&x), 1, &mut y, false, Precision::F32))
        });
        let dense = w.to_f32();
        g.bench_function(format!("f32_{name}"), |b| {
            b.iter(|| {
                let wt = MatRef::new(&dense, n, k).t();
                let dst = MatMut::new(&mut y, 1, n);
                matmul(
                    dst,
                    MatRef::new(black_box(&x), 1, k),
                    wt,
                    1.0,
                    false,
                    Threads::All,
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
