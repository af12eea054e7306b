//! The bf16 products (`kiln_cpu::bf16`) against a scalar reference, on every backend this CPU
//! has, for odd shapes, strided and transposed operands, `accumulate` on and off and `alpha ≠ 1`.
//!
//! Why a bound and not equality: the kernel adds the same exact products (a bf16 × bf16 product
//! is exact in f32) in another order than the f32 `gemm`. Any order of `k` f32 additions, then
//! `· alpha` and `+ c0`, stays within `(k + 2) · 2⁻²⁴ · (|alpha| · Σ|a||b| + |c0|)` of the exact
//! value (the classic summation bound), which is what [`check`] asserts against an f64 sum.
//! The fallback must equal today's f32 `matmul` bit for bit.
//!
//! On a CPU without AVX512-BF16, dispatch must pick the fallback and nothing may raise SIGILL:
//!
//! ```text
//! apt-get install -y qemu-user
//! CARGO_TARGET_DIR=/work/target-bf16 cargo test -p kiln-cpu --test bf16_gemm --no-run
//! qemu-x86_64 -cpu Haswell /work/target-bf16/debug/deps/bf16_gemm-<hash>
//! ```
#![allow(clippy::unwrap_used)]

use kiln_cpu::bf16::{
    Backend, PackedB, PackedWeight, bf16_backend, matmul_bf16, matmul_bf16_on, matmul_bf16_packed,
    matmul_bf16_packed_a, pack_a,
};
use kiln_cpu::round_bf16;
use kiln_cpu::{MatMut, MatRef, Precision, Threads, matmul, matmul_in};

/// bf16-valued pseudo-random numbers in [-2, 2).
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            round_bf16((s >> 8) as f32 / (1u32 << 22) as f32 - 2.0)
        })
        .collect()
}

/// An operand `[rows, cols]` stored row-major, or transposed (`[cols, rows]` read through `.t()`).
struct Operand {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
    transposed: bool,
}

impl Operand {
    fn new(rows: usize, cols: usize, transposed: bool, seed: u32) -> Self {
        let data = values(rows * cols, seed);
        Self {
            data,
            rows,
            cols,
            transposed,
        }
    }

    fn view(&self) -> MatRef<'_> {
        if self.transposed {
            MatRef::new(&self.data, self.cols, self.rows).t()
        } else {
            MatRef::new(&self.data, self.rows, self.cols)
        }
    }

    fn at(&self, i: usize, j: usize) -> f32 {
        if self.transposed {
            self.data[j * self.rows + i]
        } else {
            self.data[i * self.cols + j]
        }
    }
}

/// Destination: columns `1..1 + n` of a `[m, n + 3]` buffer whose other columns must stay put.
const PAD: usize = 3;

fn dst_buffer(m: usize, n: usize, seed: u32) -> Vec<f32> {
    values(m * (n + PAD), seed)
}

fn dst_view(buf: &mut [f32], m: usize, n: usize) -> MatMut<'_> {
    // SAFETY: one view of the buffer, columns 1..1 + n of a [m, n + PAD] buffer.
    unsafe { MatMut::columns_raw(buf.as_mut_ptr(), m, n + PAD, 1, n) }
}

/// Asserts `got` (a destination buffer) against the f64 product of `a` and `b` on `before`.
fn check(got: &[f32], before: &[f32], a: &Operand, b: &Operand, alpha: f32, accumulate: bool) {
    let (m, k, n, w) = (a.rows, a.cols, b.cols, b.cols + PAD);
    for i in 0..m {
        for c in (0..w).filter(|&c| c == 0 || c > n) {
            assert_eq!(
                got[i * w + c].to_bits(),
                before[i * w + c].to_bits(),
                "outside dst"
            );
        }
        for j in 0..n {
            let (mut sum, mut mag) = (0f64, 0f64);
            for l in 0..k {
                let p = a.at(i, l) as f64 * b.at(l, j) as f64;
                sum += p;
                mag += p.abs();
            }
            let c0 = if accumulate {
                before[i * w + 1 + j] as f64
            } else {
                0.0
            };
            let want = alpha as f64 * sum + c0;
            let bound = (k + 2) as f64 * 2f64.powi(-24) * (alpha.abs() as f64 * mag + c0.abs());
            let g = got[i * w + 1 + j] as f64;
            assert!(
                (g - want).abs() <= bound + 1e-30,
                "[{m}x{k}x{n}] ({i}, {j}): got {g}, want {want} ± {bound}"
            );
        }
    }
}

/// The backends this CPU can run.
fn backends() -> Vec<Backend> {
    [Backend::Avx512Bf16, Backend::F32Fallback]
        .into_iter()
        .filter(|b| b.available())
        .collect()
}

/// Every backend, plain and packed, every layout, on one shape.
fn check_shape(m: usize, k: usize, n: usize) {
    let mut seed = (m * 131 + k * 17 + n) as u32;
    for backend in backends() {
        for (at, bt) in [(false, false), (false, true), (true, false), (true, true)] {
            for (alpha, accumulate, threads) in [
                (1.0, false, Threads::All),
                (-0.75, true, Threads::One),
                (0.5, false, Threads::One),
            ] {
                seed += 1;
                let (a, b) = (
                    Operand::new(m, k, at, seed),
                    Operand::new(k, n, bt, seed + 7),
                );
                let before = dst_buffer(m, n, seed + 3);
                let mut got = before.clone();
                let dst = dst_view(&mut got, m, n);
                matmul_bf16_on(backend, dst, a.view(), b.view(), alpha, accumulate, threads);
                check(&got, &before, &a, &b, alpha, accumulate);
                let unpacked = got;
                let packed = PackedB::on(backend, b.view());
                let mut got = before.clone();
                let dst = dst_view(&mut got, m, n);
                matmul_bf16_packed(dst, a.view(), &packed, alpha, accumulate, threads);
                check(&got, &before, &a, &b, alpha, accumulate);
                if backend == Backend::detected() {
                    // A packed once (what a frozen weight's tiles reuse) gives the bits of
                    // `matmul_bf16` (which packs it per call).
                    let mut got = before.clone();
                    let dst = dst_view(&mut got, m, n);
                    let pa = pack_a(a.view());
                    matmul_bf16_packed_a(dst, &pa, b.view(), alpha, accumulate, threads);
                    assert_eq!(bits(&got), bits(&unpacked), "[{m}x{k}x{n}] packed A");
                }
            }
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// `matmul_in` is the f32 `matmul` in f32 and `matmul_bf16` in bf16 (for a result of at least
/// 128 × 128), bit for bit.
#[test]
fn matmul_in_picks_the_precisions_product() {
    let (m, k, n) = (140, 70, 190);
    let (a, b) = (Operand::new(m, k, false, 1), Operand::new(k, n, true, 2));
    let before = dst_buffer(m, n, 3);
    let (av, bv) = (a.view(), b.view());
    for p in [Precision::F32, Precision::Bf16] {
        let (mut got, mut want) = (before.clone(), before.clone());
        matmul_in(p, dst_view(&mut got, m, n), av, bv, 0.5, true, Threads::All);
        let dst = dst_view(&mut want, m, n);
        match p {
            Precision::F32 => matmul(dst, av, bv, 0.5, true, Threads::All),
            Precision::Bf16 => matmul_bf16(dst, av, bv, 0.5, true, Threads::All),
        }
        assert_eq!(bits(&got), bits(&want), "{p}");
    }
}

#[test]
fn odd_shapes_match_the_reference() {
    for (m, k, n) in [
        (1, 1, 1),
        (1, 7, 1),
        (3, 5, 2),
        (8, 16, 48),
        (9, 17, 49),
        (7, 2, 47),
        (17, 33, 97),
        (1, 64, 100),
        (100, 64, 1),
        (13, 1, 5),
        (64, 129, 200),
    ] {
        check_shape(m, k, n);
    }
}

/// Deep `k` splits the rows over several tasks (blocks of ~128 KiB pairs of A), wide `n` the
/// columns over several.
#[test]
fn many_tasks_match_the_reference() {
    check_shape(37, 4001, 30);
    check_shape(20, 40, 2000);
}

#[test]
fn empty_shapes() {
    for backend in backends() {
        let (a, b) = (vec![0f32; 0], vec![0f32; 0]);
        // k = 0: dst = 0, or unchanged with accumulate.
        let mut d = vec![5f32; 6];
        let (av, bv) = (MatRef::new(&a, 2, 0), MatRef::new(&b, 0, 3));
        matmul_bf16_on(
            backend,
            MatMut::new(&mut d, 2, 3),
            av,
            bv,
            1.0,
            true,
            Threads::All,
        );
        assert_eq!(d, vec![5.0; 6]);
        matmul_bf16_on(
            backend,
            MatMut::new(&mut d, 2, 3),
            av,
            bv,
            1.0,
            false,
            Threads::All,
        );
        assert_eq!(d, vec![0.0; 6]);
        // m = 0 and n = 0: nothing to do.
        let (mut e, empty): (Vec<f32>, Vec<f32>) = (vec![], vec![]);
        let x = vec![1f32; 4];
        let (a0, b0) = (MatRef::new(&empty, 0, 4), MatRef::new(&x, 4, 1));
        matmul_bf16_on(
            backend,
            MatMut::new(&mut e, 0, 1),
            a0,
            b0,
            1.0,
            false,
            Threads::One,
        );
        let (a1, b1) = (MatRef::new(&x, 1, 4), MatRef::new(&empty, 4, 0));
        matmul_bf16_on(
            backend,
            MatMut::new(&mut e, 1, 0),
            a1,
            b1,
            1.0,
            false,
            Threads::One,
        );
    }
}

/// A weight packed from f32 values that are not bf16 (a model's f32 weight) multiplies as
/// its bf16 rounding on every backend, for both layouts of [`PackedWeight`] (`x · W` and
/// `dy · Wᵀ`), and a layout is made once.
#[test]
fn packed_weights_multiply_as_their_bf16_rounding() {
    let (m, k, n) = (37, 50, 70);
    // W [k, n] stored transposed ([n, k], as a checkpoint's [out, in]), not bf16-exact.
    let mut w = Operand::new(k, n, true, 11);
    w.data
        .iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v += 1e-3 * (i % 7) as f32);
    assert!(
        !Precision::Bf16.holds(&w.data),
        "the test weight is bf16-exact"
    );
    let mut rounded = Operand::new(k, n, true, 11);
    rounded.data = w.data.iter().map(|&v| round_bf16(v)).collect();
    let x = Operand::new(m, k, false, 12);
    for backend in backends() {
        let before = dst_buffer(m, n, 13);
        let mut got = before.clone();
        let packed = PackedB::on(backend, w.view());
        matmul_bf16_packed(
            dst_view(&mut got, m, n),
            x.view(),
            &packed,
            1.0,
            true,
            Threads::All,
        );
        check(&got, &before, &x, &rounded, 1.0, true);
    }
    let pw = PackedWeight::default();
    let before = dst_buffer(m, n, 14);
    let mut got = before.clone();
    let fwd = pw.forward(w.view());
    matmul_bf16_packed(
        dst_view(&mut got, m, n),
        x.view(),
        fwd,
        2.0,
        false,
        Threads::All,
    );
    check(&got, &before, &x, &rounded, 2.0, false);
    // dy [m, n] · Wᵀ [n, k]
    let dy = Operand::new(m, n, false, 15);
    let rt = Operand {
        data: rounded.data.clone(),
        rows: n,
        cols: k,
        transposed: false,
    };
    let before = dst_buffer(m, k, 16);
    let mut got = before.clone();
    let bwd = pw.backward(w.view());
    matmul_bf16_packed(
        dst_view(&mut got, m, k),
        dy.view(),
        bwd,
        1.0,
        false,
        Threads::One,
    );
    check(&got, &before, &dy, &rt, 1.0, false);
    let one = pw.bytes();
    assert!(one >= 2 * k * n * 2, "{one} bytes for two layouts");
    pw.forward(w.view());
    assert_eq!(pw.bytes(), one, "a layout is packed once");
}

/// The fallback is today's `Precision::Bf16` product: the f32 `matmul`, bit for bit.
#[test]
fn fallback_is_the_f32_product() {
    let (m, k, n) = (33, 70, 61);
    let (a, b) = (Operand::new(m, k, false, 1), Operand::new(k, n, true, 2));
    let before = dst_buffer(m, n, 3);
    let (mut want, mut got) = (before.clone(), before.clone());
    matmul(
        dst_view(&mut want, m, n),
        a.view(),
        b.view(),
        0.5,
        true,
        Threads::All,
    );
    let dst = dst_view(&mut got, m, n);
    matmul_bf16_on(
        Backend::F32Fallback,
        dst,
        a.view(),
        b.view(),
        0.5,
        true,
        Threads::All,
    );
    assert_eq!(got, want);
}

/// Dispatch picks the kernel exactly when the CPU has it (under `qemu-x86_64 -cpu Haswell`:
/// the fallback), unless `KILN_BF16_BACKEND` forces the fallback.
#[cfg(target_arch = "x86_64")]
#[test]
fn dispatch_follows_the_cpu() {
    let has = std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bf16");
    let forced = std::env::var("KILN_BF16_BACKEND").ok();
    let want = if has && forced.as_deref() != Some("f32-fallback") {
        "avx512bf16"
    } else {
        "f32-fallback"
    };
    println!("bf16 backend: {}", bf16_backend());
    assert_eq!(bf16_backend(), want);
    assert_eq!(Backend::Avx512Bf16.available(), has);
    // The default entry point works whatever was picked.
    let (a, b) = (Operand::new(5, 9, false, 4), Operand::new(9, 6, false, 5));
    let before = dst_buffer(5, 6, 6);
    let mut got = before.clone();
    matmul_bf16(
        dst_view(&mut got, 5, 6),
        a.view(),
        b.view(),
        1.0,
        false,
        Threads::All,
    );
    check(&got, &before, &a, &b, 1.0, false);
}
