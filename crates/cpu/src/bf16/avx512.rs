//! The AVX512-BF16 micro-kernel: `vdpbf16ps` on packed bf16 pairs, f32 accumulators.
//!
//! Why this shape: one `vdpbf16ps` does 16 lanes × 2 products (64 flops), twice the work of an
//! f32 FMA on the same register width, and Zen 4 issues one zmm `vdpbf16ps` per cycle like one
//! zmm FMA. A tile of `MR = 8` rows × `NR = 48` columns keeps 24 accumulators in registers
//! (of 32) and reads, per pair of `k`, three zmm of B and eight broadcast words of A, so the
//! loads never limit the dot products. The bound of every loop is a constant but `kp`, so the
//! compiler keeps the accumulators in registers. Only compiled for x86-64, and only ever called
//! after `is_x86_feature_detected!` found avx512f and avx512bf16 (see `Backend::detected`).
//!
//! Rounding: `vdpbf16ps` treats bf16 subnormal inputs as zero and flushes subnormal results
//! (DAZ/FTZ); products of two bf16 values are exact in f32, so apart from subnormals the only
//! roundings are the f32 additions (in a different order than an f32 `gemm`), `alpha` and the
//! accumulation onto `dst`.
//!
//! Measured against the f32 `gemm`, oneDNN and torch: the table at the top of `mod.rs`
//! (with packed weights 90–140 GFLOP/s on 2 Zen 4 cores, about 2× the f32 `gemm`).
use super::{MR, NR};
use core::arch::x86_64::*;

/// zmm registers per tile row.
const V: usize = NR / 16;

/// The rows `i0..i1` (panels of `MR`) and columns `j0..j1` (panels of `NR`) of the product,
/// written at `c` (row stride `ldc`): `c = alpha · acc` or, with `accumulate`, `c += alpha · acc`.
///
/// # Safety
/// The CPU has avx512f and avx512bf16. `a` holds A packed by `pack_a` (m rows, `kp` pairs),
/// `b` holds B packed by `pack_b` (n columns, `kp` pairs), `c` is valid for reads and writes of
/// rows `i0..i1` × columns `j0..j1` (clipped to `m` × `n`) at row stride `ldc`, and nothing else
/// touches that block meanwhile. `i0`, `j0` are multiples of `MR`, `NR`.
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn block(
    kp: usize,
    a: *const u32,
    (m, i0, i1): (usize, usize, usize),
    b: *const u32,
    (n, j0, j1): (usize, usize, usize),
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    accumulate: bool,
) {
    let out = Out {
        ldc,
        alpha,
        accumulate,
    };
    for j in (j0..j1.min(n)).step_by(NR) {
        let nr = NR.min(n - j);
        // SAFETY (all pointer offsets below): panel j / NR of B starts at word j · kp (NR
        // words per pair), panel i / MR of A at word i · kp (MR words per pair, fewer in the
        // last panel), and (i, j) is inside the block the caller gave us.
        let bp = unsafe { b.add(j * kp) };
        for i in (i0..i1.min(m)).step_by(MR) {
            let (ap, cp) = unsafe { (a.add(i * kp), c.add(i * ldc + j)) };
            // SAFETY: per this function's contract and the offsets above.
            unsafe {
                match m - i {
                    1 => tile::<1>(kp, ap, bp, cp, nr, out),
                    2 => tile::<2>(kp, ap, bp, cp, nr, out),
                    3 => tile::<3>(kp, ap, bp, cp, nr, out),
                    4 => tile::<4>(kp, ap, bp, cp, nr, out),
                    5 => tile::<5>(kp, ap, bp, cp, nr, out),
                    6 => tile::<6>(kp, ap, bp, cp, nr, out),
                    7 => tile::<7>(kp, ap, bp, cp, nr, out),
                    _ => tile::<MR>(kp, ap, bp, cp, nr, out),
                }
            }
        }
    }
}

/// How a tile is written.
#[derive(Clone, Copy)]
struct Out {
    ldc: usize,
    alpha: f32,
    accumulate: bool,
}

/// One `R × NR` tile (`R ≤ MR`), of which the first `nr` columns are written.
///
/// # Safety
/// As for [`block`]: `a` is an A panel of `R` rows and `kp` pairs, `b` a B panel of `kp` pairs,
/// `c` the tile's first element, writable for `R` rows × `nr` columns.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn tile<const R: usize>(
    kp: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    nr: usize,
    out: Out,
) {
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    for p in 0..kp {
        let mut bv = [_mm512_setzero_si512(); V];
        for (v, x) in bv.iter_mut().enumerate() {
            // SAFETY: pair p of the B panel holds NR words, v · 16 + 16 ≤ NR.
            *x = unsafe { _mm512_loadu_si512(b.add(p * NR + v * 16).cast()) };
        }
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: pair p of the A panel holds R words.
            let w = unsafe { *a.add(p * R + r) };
            let av = as_bh(_mm512_set1_epi32(w as i32));
            for (x, &bw) in row.iter_mut().zip(&bv) {
                *x = _mm512_dpbf16_ps(*x, av, as_bh(bw));
            }
        }
    }
    // SAFETY: per this function's contract.
    unsafe { store(&acc, c, nr, out) }
}

/// The 32 bf16 values of `x` (a reinterpretation).
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
fn as_bh(x: __m512i) -> __m512bh {
    // SAFETY: both are 64-byte plain vectors; every bit pattern is a valid bf16 vector.
    unsafe { core::mem::transmute::<__m512i, __m512bh>(x) }
}

/// Writes the first `nr` columns of the accumulators at `c` (masked past `nr`).
///
/// # Safety
/// `c` is writable (and readable with `accumulate`) for `R` rows × `nr` columns at `out.ldc`.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn store<const R: usize>(acc: &[[__m512; V]; R], c: *mut f32, nr: usize, out: Out) {
    let alpha = _mm512_set1_ps(out.alpha);
    for v in 0..V {
        let valid = nr.saturating_sub(v * 16).min(16);
        if valid == 0 {
            break;
        }
        let mask: __mmask16 = if valid == 16 { !0 } else { (1 << valid) - 1 };
        for (r, row) in acc.iter().enumerate() {
            // SAFETY: the masked lanes are columns v · 16 .. v · 16 + valid ≤ nr of row r;
            // masked-off lanes are neither read nor written (and cannot fault).
            unsafe {
                let p = c.add(r * out.ldc + v * 16);
                let x = if out.accumulate {
                    _mm512_fmadd_ps(row[v], alpha, _mm512_maskz_loadu_ps(mask, p))
                } else {
                    _mm512_mul_ps(row[v], alpha)
                };
                _mm512_mask_storeu_ps(p, mask, x);
            }
        }
    }
}

/// Words of the run `x` (`(x[2p], x[2p + 1])`, low half first) into `dst[..x.len() / 2]`,
/// sixteen per `vcvtne2ps2bf16` (round to nearest even, as `pack::pair`; subnormals become
/// zero, which the kernel's `vdpbf16ps` would make of them anyway). Returns how many words it
/// wrote (whole blocks of sixteen); the caller packs the rest.
///
/// Why: packing rounds every value of every frozen weight twice per training step (the
/// quantized weights' dequantized tiles are packed per product); portable Rust vectorised it
/// to about 1 value per ns, this to several.
///
/// # Safety
/// The CPU has avx512f and avx512bf16.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn words_of_row(x: &[f32], dst: &mut [u32]) -> usize {
    let blocks = (x.len() / 32).min(dst.len() / 16);
    for i in 0..blocks {
        // SAFETY: block i reads x[32i..32i + 32] and writes dst[16i..16i + 16], inside both
        // slices (blocks bounds them); unaligned loads and stores.
        unsafe {
            let lo = _mm512_loadu_ps(x.as_ptr().add(32 * i));
            let hi = _mm512_loadu_ps(x.as_ptr().add(32 * i + 16));
            let words: __m512i = core::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(dst.as_mut_ptr().add(16 * i).cast(), words);
        }
    }
    16 * blocks
}

/// `dst[i] = (lo[i], hi[i])` as words, sixteen at a time (rounding as [`words_of_row`]).
/// Returns how many words it wrote (whole blocks of sixteen); the caller packs the rest.
///
/// # Safety
/// The CPU has avx512f and avx512bf16.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn words_of_runs(lo: &[f32], hi: &[f32], dst: &mut [u32]) -> usize {
    let blocks = lo.len().min(hi.len()).min(dst.len()) / 16;
    for i in 0..blocks {
        // SAFETY: block i reads lo/hi[16i..16i + 16] and writes dst[16i..16i + 16], inside
        // all three slices (blocks bounds them).
        unsafe {
            let l: __m256i =
                core::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(lo.as_ptr().add(16 * i))));
            let h: __m256i =
                core::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(hi.as_ptr().add(16 * i))));
            let words = _mm512_or_si512(
                _mm512_cvtepu16_epi32(l),
                _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)),
            );
            _mm512_storeu_si512(dst.as_mut_ptr().add(16 * i).cast(), words);
        }
    }
    16 * blocks
}
