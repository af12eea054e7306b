//! Decoding's products by a frozen matrix, taken straight from the stored codes: for each weight
//! row, 32 weights at a time are dequantized into registers by the very function that
//! dequantizes them for the tile products (`ggml.rs`, `bnb.rs`'s arithmetic), and multiplied into
//! up to [`MAX_ROWS`] rows of `x` at once; nothing is written to memory but the results.
//!
//! Why: decoding multiplies one row by every weight, so each weight is used once per token and a
//! product is as fast as its reads and its dequantization. Dequantizing a row into an L1 buffer
//! and reading it back for `kiln_cpu::dot` (the previous path) made SmolLM2's Q4_1 decode only
//! 1.24× the f32 path although it reads 7× fewer bytes. Here the AVX-512 build (`avx512.rs`,
//! intrinsics) widens 32 codes at a time into two zmm and multiplies them into two zmm
//! accumulators per row of `x`; the AVX2 + FMA and baseline builds are the plain Rust below
//! (`dots_any`: LLVM vectorizes it, less well), chosen once at run time in that order.
//! Measured on the 2-core Zen 4 under a load average of 14 (so ratios, not absolute numbers):
//! `bench --mode infer` on SmolLM2-135M Q4_1, decode tokens/s excluding the prefill, two
//! alternating pairs: `f32` 10.0 and 10.7, `stored` 18.6 and 18.1 (1.86× and 1.69×; the row
//! buffer path was 1.24×); criterion `qmatmul` (one row): Q4_1 1536 × 576 0.22 ms against
//! 0.47 ms for the f32 product of the widened weight, the Q8_0 tied head 49152 × 576 26 ms
//! against 73 ms. The first plain-Rust AVX-512 build ran the Q4_1 product in 0.95 ms (LLVM
//! unrolled each 32-weight loop and vectorized it two lanes at a time): hence the intrinsics.
//!
//! Rounding: every weight is the value the dequantization gives, bit for bit (same function, same
//! operations); only the order of the f32 additions of the dot product differs from
//! dequantize-then-dot (and the FMA builds round each product-and-add once).
use super::bnb::Stats;
use super::{QMatrix, QuantType, ggml};
use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
mod avx512;

/// Rows of `x` one call handles (decoding: one row per sequence of the batch, up to 4).
pub(crate) const MAX_ROWS: usize = 4;
/// Weights per group: the unit dequantized into registers.
const G: usize = 32;

/// The instruction set the dot-product kernels run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// AVX-512 (F, BW, VL, DQ) with FMA and F16C: intrinsics (`dots/avx512.rs`).
    Avx512,
    /// AVX2 with FMA.
    Avx2,
    /// The baseline instruction set (any CPU): separate multiply and add.
    Scalar,
}

impl Isa {
    /// Every instruction set, widest first.
    pub(crate) const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Scalar];

    /// The name `KILN_QDOT_ISA` takes.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Scalar => "scalar",
        }
    }

    /// Whether this CPU runs it.
    pub(crate) fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                Isa::Avx512 => {
                    has!("avx512f")
                        && has!("avx512bw")
                        && has!("avx512vl")
                        && has!("avx512dq")
                        && has!("avx2")
                        && has!("fma")
                        && has!("f16c")
                }
                Isa::Avx2 => has!("avx2") && has!("fma"),
                Isa::Scalar => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Scalar
        }
    }

    /// The widest available, decided once per process; `KILN_QDOT_ISA=avx2|scalar` picks a
    /// narrower one (to compare; an unavailable name is ignored).
    pub(crate) fn detected() -> Isa {
        static CHOSEN: OnceLock<Isa> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let forced = std::env::var("KILN_QDOT_ISA").ok();
            if let Some(isa) = Isa::ALL
                .into_iter()
                .find(|i| forced.as_deref() == Some(i.name()) && i.available())
            {
                return isa;
            }
            Isa::ALL
                .into_iter()
                .find(|i| i.available())
                .unwrap_or(Isa::Scalar)
        })
    }
}

/// Whether [`dots`] takes `w` from its codes (otherwise the caller dequantizes rows): the ggml
/// block formats and bf16, NF4/FP4 whose rows are whole blocks of statistics, int8 whose rows
/// are whole groups.
pub(crate) fn supported(w: &QMatrix) -> bool {
    use QuantType::*;
    match (w.ty, w.stats.as_deref()) {
        (Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q5_K | Q6_K, None) => true,
        (Bf16, None) => w.cols.is_multiple_of(G),
        (Nf4 | Fp4, Some(Stats::Blockwise4 { blocksize, .. })) => {
            blocksize.is_multiple_of(G) && w.cols.is_multiple_of(*blocksize)
        }
        (Int8, Some(Stats::Rows { .. })) => w.cols.is_multiple_of(G),
        _ => false,
    }
}

/// `out[(r - r0) · m + i] = x[i] · W[r]` for logical rows `r0..r1` of `w` and the `m ≤ 4` rows
/// of `x`, on `isa`.
///
/// # Shapes
/// - x: `[m, k]` row-major (`k = w.cols()`)
/// - out: at least `[r1 - r0, m]`
///
/// # Panics
/// When `isa` is not available, `w` is not [`supported`], or the shapes do not match (kiln bugs).
pub(crate) fn dots(
    isa: Isa,
    w: &QMatrix,
    x: &[f32],
    m: usize,
    r0: usize,
    r1: usize,
    out: &mut [f32],
) {
    assert!(
        isa.available() && supported(w),
        "qdot on {isa:?} for {}",
        w.ty
    );
    assert!((1..=MAX_ROWS).contains(&m) && x.len() >= m * w.cols && out.len() >= (r1 - r0) * m);
    match isa {
        // SAFETY: `available` checked the CPU has the features these functions enable.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe {
            match m {
                1 => avx512::dots::<1>(w, x, (r0, r1), out),
                2 => avx512::dots::<2>(w, x, (r0, r1), out),
                3 => avx512::dots::<3>(w, x, (r0, r1), out),
                _ => avx512::dots::<4>(w, x, (r0, r1), out),
            }
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { dots_avx2(w, x, m, r0, r1, out) },
        _ => dots_any::<false>(w, x, m, r0, r1, out),
    }
}

/// [`dots_any`] compiled for AVX2.
///
/// # Safety
/// The CPU has avx2 and fma.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_avx2(w: &QMatrix, x: &[f32], m: usize, r0: usize, r1: usize, out: &mut [f32]) {
    dots_any::<true>(w, x, m, r0, r1, out);
}

/// One monomorphic loop per row count.
#[inline(always)]
fn dots_any<const FMA: bool>(
    w: &QMatrix,
    x: &[f32],
    m: usize,
    r0: usize,
    r1: usize,
    out: &mut [f32],
) {
    match m {
        1 => rows::<1, FMA>(w, x, r0, r1, out),
        2 => rows::<2, FMA>(w, x, r0, r1, out),
        3 => rows::<3, FMA>(w, x, r0, r1, out),
        _ => rows::<4, FMA>(w, x, r0, r1, out),
    }
}

/// `a · b + c`, fused where the build has FMA.
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// Accumulators of `M` rows of `x`: 32 lanes each, element `j` of a group into lane `j`.
struct Acc<const M: usize>([[f32; G]; M]);

impl<const M: usize> Acc<M> {
    #[inline(always)]
    fn new() -> Self {
        Acc([[0.0; G]; M])
    }

    /// `acc[i] += x[i][at..at + 32] · w` for every row `i` (row stride `k`).
    #[inline(always)]
    fn add<const FMA: bool>(&mut self, w: &[f32; G], x: &[f32], k: usize, at: usize) {
        for (i, acc) in self.0.iter_mut().enumerate() {
            let xs = &x[i * k + at..i * k + at + G];
            for j in 0..G {
                acc[j] = madd::<FMA>(xs[j], w[j], acc[j]);
            }
        }
    }

    /// Row `i`'s dot product.
    #[inline(always)]
    fn sum(&self, i: usize) -> f32 {
        let a = &self.0[i];
        let mut half = [0f32; G / 2];
        for j in 0..G / 2 {
            half[j] = a[j] + a[j + G / 2];
        }
        half.iter().sum()
    }
}

/// Logical rows `r0..r1` by the `M` rows of `x`, dispatched on the format. The closures carry
/// `#[inline(always)]` (a bare function item would be called, not inlined, in the builds with
/// target features).
#[inline(always)]
#[allow(clippy::redundant_closure)]
fn rows<const M: usize, const FMA: bool>(
    w: &QMatrix,
    x: &[f32],
    r0: usize,
    r1: usize,
    out: &mut [f32],
) {
    use QuantType::*;
    match (w.ty, w.stats.as_deref()) {
        (Q4_0, _) => for_rows::<M, FMA, 18, 1>(
            w,
            x,
            r0,
            r1,
            out,
            #[inline(always)]
            |b, _, o| ggml::q4_0(b, o),
        ),
        (Q4_1, _) => for_rows::<M, FMA, 20, 1>(
            w,
            x,
            r0,
            r1,
            out,
            #[inline(always)]
            |b, _, o| ggml::q4_1(b, o),
        ),
        (Q5_0, _) => for_rows::<M, FMA, 22, 1>(
            w,
            x,
            r0,
            r1,
            out,
            #[inline(always)]
            |b, _, o| ggml::q5_0(b, o),
        ),
        (Q5_1, _) => for_rows::<M, FMA, 24, 1>(
            w,
            x,
            r0,
            r1,
            out,
            #[inline(always)]
            |b, _, o| ggml::q5_1(b, o),
        ),
        (Q8_0, _) => for_rows::<M, FMA, 34, 1>(
            w,
            x,
            r0,
            r1,
            out,
            #[inline(always)]
            |b, _, o| ggml::q8_0(b, o),
        ),
        (Q4_K, _) => for_rows::<M, FMA, 144, 8>(
            w,
            x,
            r0,
            r1,
            out,
            #[inline(always)]
            |b, g, o| ggml::q4_k_group(b, g, o),
        ),
        (Q5_K, _) => for_rows::<M, FMA, 176, 8>(
            w,
            x,
            r0,
            r1,
            out,
            #[inline(always)]
            |b, g, o| ggml::q5_k_group(b, g, o),
        ),
        (Q6_K, _) => for_rows::<M, FMA, 210, 8>(
            w,
            x,
            r0,
            r1,
            out,
            #[inline(always)]
            |b, g, o| ggml::q6_k_group(b, g, o),
        ),
        (Bf16, _) => for_rows::<M, FMA, 64, 1>(
            w,
            x,
            r0,
            r1,
            out,
            #[inline(always)]
            |b, _, o| {
                for (o, h) in o.iter_mut().zip(b.as_chunks::<2>().0) {
                    *o = f32::from_bits((u16::from_le_bytes(*h) as u32) << 16);
                }
            },
        ),
        (_, Some(stats)) => bnb_rows::<M, FMA>(w, stats, x, r0, r1, out),
        _ => unreachable!("checked by supported()"),
    }
}

/// Rows of a format stored in blocks of `TS` bytes holding `GROUPS` groups of 32 weights;
/// `group(block, g, out)` dequantizes group `g` of a block.
#[inline(always)]
fn for_rows<const M: usize, const FMA: bool, const TS: usize, const GROUPS: usize>(
    w: &QMatrix,
    x: &[f32],
    r0: usize,
    r1: usize,
    out: &mut [f32],
    group: impl Fn(&[u8; TS], usize, &mut [f32; G]),
) {
    let (k, rb, data) = (w.cols, w.row_bytes(), w.data.as_slice());
    for (r, o) in (r0..r1).zip(out.chunks_exact_mut(M)) {
        let s = w.stored_row(r);
        let mut acc = Acc::<M>::new();
        let (blocks, _) = data[s * rb..(s + 1) * rb].as_chunks::<TS>();
        for (b, block) in blocks.iter().enumerate() {
            for g in 0..GROUPS {
                let mut v = [0f32; G];
                group(block, g, &mut v);
                acc.add::<FMA>(&v, x, k, (b * GROUPS + g) * G);
            }
        }
        for (i, o) in o.iter_mut().enumerate() {
            *o = acc.sum(i);
        }
    }
}

/// Rows of bitsandbytes' formats, with `Stats::dequantize_row`'s arithmetic: NF4/FP4 (rows are
/// whole blocks, checked by [`supported`]) and int8.
#[inline(always)]
fn bnb_rows<const M: usize, const FMA: bool>(
    w: &QMatrix,
    stats: &Stats,
    x: &[f32],
    r0: usize,
    r1: usize,
    out: &mut [f32],
) {
    let (k, data) = (w.cols, w.data.as_slice());
    for (r, o) in (r0..r1).zip(out.chunks_exact_mut(M)) {
        let s = w.stored_row(r);
        let mut acc = Acc::<M>::new();
        match stats {
            Stats::Blockwise4 {
                blocksize,
                levels,
                qabsmax,
                code2,
                absmax2,
                blocksize2,
                offset,
            } => {
                // Two weights a byte, the first in the high nibble; a row starts on a block.
                let codes = &data[s * k / 2..(s + 1) * k / 2];
                for (g, bytes) in codes.as_chunks::<{ G / 2 }>().0.iter().enumerate() {
                    let b = (s * k + g * G) / blocksize;
                    let absmax = code2[qabsmax[b] as usize] * absmax2[b / blocksize2] + offset;
                    let mut v = [0f32; G];
                    for (pair, &byte) in v.as_chunks_mut::<2>().0.iter_mut().zip(bytes) {
                        pair[0] = levels[(byte >> 4) as usize] * absmax;
                        pair[1] = levels[(byte & 0x0F) as usize] * absmax;
                    }
                    acc.add::<FMA>(&v, x, k, g * G);
                }
            }
            Stats::Rows { scales } => {
                let sc = scales[s];
                let codes = &data[s * k..(s + 1) * k];
                for (g, bytes) in codes.as_chunks::<G>().0.iter().enumerate() {
                    let mut v = [0f32; G];
                    for (v, &q) in v.iter_mut().zip(bytes) {
                        *v = ((q as i8) as f32 * sc) * super::bnb::INV_127;
                    }
                    acc.add::<FMA>(&v, x, k, g * G);
                }
            }
        }
        for (i, o) in o.iter_mut().enumerate() {
            *o = acc.sum(i);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! The kernels against dequantize-then-dot on random blocks of every format, on every
    //! instruction set this CPU has. Under `qemu-x86_64 -cpu Haswell` (no AVX-512) the same
    //! tests check the AVX2 and baseline builds and that dispatch never picks AVX-512:
    //!
    //! ```text
    //! cargo test -p kiln-cpu --lib --no-run   # prints the test binary's path
    //! qemu-x86_64 -cpu Haswell target/debug/deps/kiln_cpu-<hash> quant::
    //! ```
    use super::super::bnb::{FourBit, quantize_4bit, quantize_int8};
    use super::super::{Bytes, QMatrix, QuantType};
    use super::*;
    use crate::precision::Precision;

    /// xorshift: the same numbers on every machine.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// In [-1, 1).
        fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    /// Byte offsets of a block's f16 scale fields.
    fn scale_fields(ty: QuantType) -> &'static [usize] {
        use QuantType::*;
        match ty {
            Q4_0 | Q5_0 | Q8_0 => &[0],
            Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
            Q6_K => &[208],
            _ => &[],
        }
    }

    /// An `[rows, cols]` matrix of `ty` with random codes and scales (finite, varied signs).
    fn random(ty: QuantType, rows: usize, cols: usize, seed: u64) -> QMatrix {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let dense: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
        match ty {
            QuantType::Nf4 => return quantize_4bit(&dense, rows, cols, FourBit::Nf4).unwrap(),
            QuantType::Fp4 => return quantize_4bit(&dense, rows, cols, FourBit::Fp4).unwrap(),
            QuantType::Int8 => return quantize_int8(&dense, rows, cols).unwrap(),
            _ => {}
        }
        let (block, bytes) = ty.block_layout();
        let mut data: Vec<u8> = (0..rows * cols / block * bytes)
            .map(|_| rng.next() as u8)
            .collect();
        if ty == QuantType::Bf16 {
            for (b, v) in data.as_chunks_mut::<2>().0.iter_mut().zip(&dense) {
                *b = half::bf16::from_f32(*v).to_le_bytes();
            }
        }
        for b in data.chunks_exact_mut(bytes) {
            for &at in scale_fields(ty) {
                let d = half::f16::from_f32(rng.unit() * 0.05);
                b[at..at + 2].copy_from_slice(&d.to_le_bytes());
            }
        }
        QMatrix::new(ty, rows, cols, Bytes::Owned(data.into())).unwrap()
    }

    /// `got` against the f64 dot products of `x` with the dequantized rows: within the bound of
    /// any order of `k` f32 additions, `(k + 2) · 2⁻²⁴ · Σ|x||w|` (the weights themselves must be
    /// the dequantized values exactly).
    fn check(w: &QMatrix, x: &[f32], m: usize, got: &[f32], what: &str) {
        let (n, k) = (w.rows(), w.cols());
        let dense = w.to_f32();
        for r in 0..n {
            for i in 0..m {
                let (xs, ws) = (&x[i * k..(i + 1) * k], &dense[r * k..(r + 1) * k]);
                let exact: f64 = xs.iter().zip(ws).map(|(a, b)| *a as f64 * *b as f64).sum();
                let mag: f64 = xs
                    .iter()
                    .zip(ws)
                    .map(|(a, b)| (*a as f64 * *b as f64).abs())
                    .sum();
                let bound = (k + 2) as f64 * 2f64.powi(-24) * mag + 1e-30;
                let g = got[r * m + i] as f64;
                assert!(
                    (g - exact).abs() <= bound,
                    "{what} {} row {r} x{i}: {g} vs {exact} (bound {bound})",
                    w.quant_type()
                );
            }
        }
    }

    const TYPES: [(QuantType, usize); 13] = [
        (QuantType::Q4_0, 96),
        (QuantType::Q4_1, 96),
        (QuantType::Q5_0, 96),
        (QuantType::Q5_1, 96),
        (QuantType::Q8_0, 96),
        (QuantType::Q4_K, 512),
        (QuantType::Q5_K, 512),
        (QuantType::Q6_K, 512),
        (QuantType::Bf16, 96),
        (QuantType::Nf4, 128),
        (QuantType::Fp4, 192),
        (QuantType::Int8, 96),
        // int8 rows of 32-multiples only; 40 goes through the dequantized row.
        (QuantType::Int8, 40),
    ];

    /// Every format, every instruction set here, 1–4 rows of `x`, through a row map too.
    #[test]
    fn dots_equal_dequantize_then_dot() {
        println!("qdot isa: {:?}", Isa::detected());
        for (t, &(ty, k)) in TYPES.iter().enumerate() {
            let n = 37;
            let mut w = random(ty, n, k, t as u64 + 1);
            if ty == QuantType::Int8 && k == 40 {
                assert!(!supported(&w));
                continue;
            }
            assert!(supported(&w), "{ty}");
            let mut rng = Rng(77 + t as u64);
            let x: Vec<f32> = (0..MAX_ROWS * k).map(|_| rng.unit() * 3.0).collect();
            for mapped in [false, true] {
                if mapped {
                    w = w.with_row_map((0..n as u32).rev().collect()).unwrap();
                }
                for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
                    for m in 1..=MAX_ROWS {
                        let mut got = vec![f32::NAN; n * m];
                        dots(isa, &w, &x, m, 0, n, &mut got);
                        check(&w, &x, m, &got, isa.name());
                        // A sub-range of rows lands at the start of `out`.
                        let mut part = vec![f32::NAN; 5 * m];
                        dots(isa, &w, &x, m, 30, 35, &mut part);
                        assert_eq!(part, got[30 * m..35 * m], "{ty} {isa:?} m {m}");
                    }
                }
            }
        }
    }

    /// `matmul_t` with m = 1..5 (the dot-product path and the tile path above it), accumulating
    /// or not, for odd column counts where the format allows them (NF4, FP4, int8: through the
    /// dequantized-row fallback).
    #[test]
    fn matmul_t_agrees_for_every_row_count() {
        let shapes = [
            (QuantType::Q4_1, 5, 64),
            (QuantType::Q8_0, 70, 160),
            (QuantType::Q4_K, 9, 256),
            (QuantType::Q6_K, 9, 768),
            (QuantType::Nf4, 7, 81),
            (QuantType::Fp4, 3, 17),
            (QuantType::Int8, 6, 33),
            (QuantType::Nf4, 40, 320),
        ];
        for (s, &(ty, n, k)) in shapes.iter().enumerate() {
            let w = random(ty, n, k, 100 + s as u64);
            let mut rng = Rng(5 + s as u64);
            for m in 1..=5 {
                let x: Vec<f32> = (0..m * k).map(|_| rng.unit()).collect();
                for accumulate in [false, true] {
                    let mut y = vec![0.5f32; m * n];
                    w.matmul_t(&x, m, &mut y, accumulate, Precision::F32);
                    // got[r · m + i] = y[i · n + r] (minus the 0.5 it accumulated onto)
                    let got: Vec<f32> = (0..n * m)
                        .map(|j| y[(j % m) * n + j / m] - if accumulate { 0.5 } else { 0.0 })
                        .collect();
                    // The tile path's gemm and the subtraction add a few roundings of their own.
                    let (dense, mut worst) = (w.to_f32(), 0f64);
                    for r in 0..n {
                        for i in 0..m {
                            let (xs, ws) = (&x[i * k..(i + 1) * k], &dense[r * k..(r + 1) * k]);
                            let exact: f64 =
                                xs.iter().zip(ws).map(|(a, b)| *a as f64 * *b as f64).sum();
                            let mag: f64 = xs
                                .iter()
                                .zip(ws)
                                .map(|(a, b)| (*a as f64 * *b as f64).abs())
                                .sum();
                            let err = (got[r * m + i] as f64 - exact).abs();
                            worst =
                                worst.max(err / ((k + 4) as f64 * 2f64.powi(-24) * (mag + 1.0)));
                        }
                    }
                    assert!(worst <= 1.0, "{ty} [{n}, {k}] m {m}: {worst} of the bound");
                }
            }
        }
    }

    /// Dispatch picks the widest instruction set the CPU has (AVX2 or the baseline under
    /// `qemu-x86_64 -cpu Haswell`), unless `KILN_QDOT_ISA` names a narrower one.
    #[test]
    fn dispatch_follows_the_cpu() {
        let widest = Isa::ALL.into_iter().find(|i| i.available()).unwrap();
        match std::env::var("KILN_QDOT_ISA") {
            Ok(_) => assert!(Isa::detected().available()),
            Err(_) => assert_eq!(Isa::detected(), widest),
        }
        println!("widest qdot isa here: {widest:?}");
    }
}
