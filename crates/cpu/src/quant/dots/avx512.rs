//! The AVX-512 build of the dot products from codes, in intrinsics: each group of 32 weights is
//! widened from its bytes into two zmm (`vpmovzxbd`/`vpmovsxbd`, shifts and masks for the
//! nibbles and high bits, `vpermps` for NF4/FP4's 16 levels) and multiplied into two zmm
//! accumulators per row of `x`.
//!
//! Why intrinsics here when the other builds are plain Rust: LLVM fully unrolls the plain loops
//! over a 32-weight group and then vectorizes them two lanes at a time, which ran a SmolLM2
//! Q4_1 projection (1536 × 576, one row) in 950 µs against 145 µs for the f32 product of the
//! same weight widened (criterion `qmatmul`, load average 14); see `dots.rs` for the result.
//!
//! Every weight is computed with the operations of the scalar dequantization (`ggml.rs`,
//! `bnb.rs`): the same multiplies and adds in the same order, no fused multiply-add, so each
//! weight is bit-identical to what dequantization writes. Only called after `Isa::Avx512`
//! was found available.
use super::super::bnb::{INV_127, Stats};
use super::super::{QMatrix, QuantType};
use core::arch::x86_64::*;

/// The f16 at `p` (unaligned) as f32; f16 → f32 is exact.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
#[inline]
unsafe fn half(p: *const u8) -> f32 {
    // SAFETY: the caller gives 2 readable bytes.
    let bits = unsafe { (p as *const u16).read_unaligned() };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// 16 bytes at `p` zero-extended to 16 lanes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
#[inline]
unsafe fn bytes16(p: *const u8) -> __m512i {
    // SAFETY: the caller gives 16 readable bytes.
    _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(p as *const __m128i) })
}

/// Format tags for [`group`] (a const parameter, so each format gets its own loop).
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q5_1: u8 = 3;
const Q8_0: u8 = 4;
const Q4_K: u8 = 5;
const Q5_K: u8 = 6;
const Q6_K: u8 = 7;
const BF16: u8 = 8;

/// Weights `32g..32g + 32` of the block at `b` of format `T`: lanes 0–15 and 16–31.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
#[inline]
unsafe fn group<const T: u8>(b: *const u8, g: usize) -> [__m512; 2] {
    let f = _mm512_cvtepi32_ps;
    let nib = _mm512_set1_epi32(0x0F);
    // SAFETY (all reads): `b` points at a whole block of format T (the caller walks rows of
    // whole blocks), and every offset below is inside that block's layout (`ggml.rs`).
    unsafe {
        match T {
            Q4_0 | Q4_1 | Q5_0 | Q5_1 => {
                let at = [2, 4, 6, 8][T as usize];
                let v = bytes16(b.add(at));
                let (mut lo, mut hi) = (_mm512_and_si512(v, nib), _mm512_srli_epi32(v, 4));
                if T == Q5_0 || T == Q5_1 {
                    let qh = (b.add(at - 4) as *const u32).read_unaligned();
                    let qh = _mm512_set1_epi32(qh as i32);
                    let shifts =
                        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
                    let bit = |s| {
                        let one = _mm512_and_si512(_mm512_srlv_epi32(qh, s), _mm512_set1_epi32(1));
                        _mm512_slli_epi32(one, 4)
                    };
                    lo = _mm512_or_si512(lo, bit(shifts));
                    hi = _mm512_or_si512(hi, bit(_mm512_add_epi32(shifts, _mm512_set1_epi32(16))));
                }
                let d = _mm512_set1_ps(half(b));
                match T {
                    Q4_0 | Q5_0 => {
                        let off = _mm512_set1_epi32(if T == Q4_0 { 8 } else { 16 });
                        [
                            _mm512_mul_ps(d, f(_mm512_sub_epi32(lo, off))),
                            _mm512_mul_ps(d, f(_mm512_sub_epi32(hi, off))),
                        ]
                    }
                    _ => {
                        let m = _mm512_set1_ps(half(b.add(2)));
                        [
                            _mm512_add_ps(_mm512_mul_ps(d, f(lo)), m),
                            _mm512_add_ps(_mm512_mul_ps(d, f(hi)), m),
                        ]
                    }
                }
            }
            Q8_0 => {
                let d = _mm512_set1_ps(half(b));
                let q = |at: usize| {
                    f(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                        b.add(at) as *const __m128i
                    )))
                };
                [_mm512_mul_ps(q(2), d), _mm512_mul_ps(q(18), d)]
            }
            Q4_K | Q5_K => {
                let s = core::slice::from_raw_parts(b.add(4), 12);
                let (sc, mn) = super::super::ggml::k_scale(s, g);
                let dl = _mm512_set1_ps(half(b) * sc as f32);
                let ml = _mm512_set1_ps(half(b.add(2)) * mn as f32);
                let (chunk, shift) = (g / 2, 4 * (g % 2) as u32);
                let qs = b.add(if T == Q4_K { 16 } else { 48 } + chunk * 32);
                let shift = _mm_cvtsi32_si128(shift as i32);
                let q = |at: usize| {
                    let v = _mm512_and_si512(_mm512_srl_epi32(bytes16(qs.add(at)), shift), nib);
                    if T == Q5_K {
                        let h =
                            _mm512_srl_epi32(bytes16(b.add(16 + at)), _mm_cvtsi32_si128(g as i32));
                        let h = _mm512_and_si512(h, _mm512_set1_epi32(1));
                        _mm512_or_si512(v, _mm512_slli_epi32(h, 4))
                    } else {
                        v
                    }
                };
                [
                    _mm512_sub_ps(_mm512_mul_ps(dl, f(q(0))), ml),
                    _mm512_sub_ps(_mm512_mul_ps(dl, f(q(16))), ml),
                ]
            }
            Q6_K => {
                let (h, t) = (g / 4, g % 4);
                let d = half(b.add(208));
                let s = 192 + h * 8 + t * 2;
                let dl0 = _mm512_set1_ps(d * (*b.add(s) as i8) as f32);
                let dl1 = _mm512_set1_ps(d * (*b.add(s + 1) as i8) as f32);
                let (lo_base, lo_shift) = (h * 64 + (t & 1) * 32, 4 * (t >> 1));
                let (ls, hs) = (
                    _mm_cvtsi32_si128(lo_shift as i32),
                    _mm_cvtsi32_si128(2 * t as i32),
                );
                let q = |at: usize| {
                    let lo =
                        _mm512_and_si512(_mm512_srl_epi32(bytes16(b.add(lo_base + at)), ls), nib);
                    let hi = _mm512_and_si512(
                        _mm512_srl_epi32(bytes16(b.add(128 + h * 32 + at)), hs),
                        _mm512_set1_epi32(3),
                    );
                    let q = _mm512_or_si512(lo, _mm512_slli_epi32(hi, 4));
                    f(_mm512_sub_epi32(q, _mm512_set1_epi32(32)))
                };
                [_mm512_mul_ps(dl0, q(0)), _mm512_mul_ps(dl1, q(16))]
            }
            _ => {
                // BF16: 32 values, 64 bytes.
                let v = |at: usize| {
                    let h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(b.add(at) as *const __m256i));
                    _mm512_castsi512_ps(_mm512_slli_epi32(h, 16))
                };
                [v(0), v(32)]
            }
        }
    }
}

/// Accumulators: two zmm per row of `x`.
#[derive(Clone, Copy)]
struct Acc<const M: usize>([[__m512; 2]; M]);

impl<const M: usize> Acc<M> {
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    #[inline]
    fn new() -> Self {
        Acc([[_mm512_setzero_ps(); 2]; M])
    }

    /// `acc[i] += x[i][at..at + 32] · [w0, w1]` (row stride `k`; `x` in the given lane order).
    ///
    /// # Safety
    /// `x` holds `M` rows of `k` floats and `at + 32 <= k`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    #[inline]
    unsafe fn add(&mut self, w: [__m512; 2], x: *const f32, k: usize, at: usize) {
        for (i, acc) in self.0.iter_mut().enumerate() {
            // SAFETY: per this function's contract.
            let (x0, x1) = unsafe {
                let p = x.add(i * k + at);
                (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)))
            };
            acc[0] = _mm512_fmadd_ps(x0, w[0], acc[0]);
            acc[1] = _mm512_fmadd_ps(x1, w[1], acc[1]);
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    #[inline]
    fn store(&self, out: &mut [f32]) {
        for (o, acc) in out.iter_mut().zip(&self.0) {
            *o = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
        }
    }
}

/// Rows `r0..r1` of a format stored in blocks of `TS` bytes of `GROUPS` groups.
///
/// # Safety
/// The CPU has the enabled features; `w` is of format `T`, `x` holds `M` rows of `w.cols`
/// floats and `out` at least `(r1 - r0) · M`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
unsafe fn blocks<const M: usize, const T: u8, const TS: usize, const GROUPS: usize>(
    w: &QMatrix,
    x: &[f32],
    (r0, r1): (usize, usize),
    out: &mut [f32],
) {
    let (k, rb, data) = (w.cols, w.row_bytes(), w.data.as_slice());
    for (r, o) in (r0..r1).zip(out.chunks_exact_mut(M)) {
        let s = w.stored_row(r);
        let row = &data[s * rb..(s + 1) * rb];
        let mut acc = Acc::<M>::new();
        for (b, block) in row.chunks_exact(TS).enumerate() {
            for g in 0..GROUPS {
                // SAFETY: `block` is one whole block; group g of it covers columns
                // (b · GROUPS + g) · 32 .. + 32, inside the row of `x`.
                unsafe {
                    let v = group::<T>(block.as_ptr(), g);
                    acc.add(v, x.as_ptr(), k, (b * GROUPS + g) * 32);
                }
            }
        }
        acc.store(o);
    }
}

/// Rows `r0..r1` of NF4/FP4 (rows of whole blocks) and int8.
///
/// # Safety
/// As [`blocks`], with `stats` the statistics of `w`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
unsafe fn bnb<const M: usize>(
    w: &QMatrix,
    stats: &Stats,
    x: &[f32],
    (r0, r1): (usize, usize),
    out: &mut [f32],
) {
    let (k, data) = (w.cols, w.data.as_slice());
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    let mut xs = [0f32; 4 * 32];
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
                // SAFETY: `levels` holds 16 floats.
                let table = unsafe { _mm512_loadu_ps(levels.as_ptr()) };
                let codes = &data[s * k / 2..(s + 1) * k / 2];
                for (g, bytes) in codes.chunks_exact(16).enumerate() {
                    let b = (s * k + g * 32) / blocksize;
                    let absmax = code2[qabsmax[b] as usize] * absmax2[b / blocksize2] + offset;
                    let absmax = _mm512_set1_ps(absmax);
                    // SAFETY: 16 bytes.
                    let v = unsafe { bytes16(bytes.as_ptr()) };
                    // Lane j: element 2j (high nibble) and element 2j + 1 (low nibble).
                    let wh = _mm512_mul_ps(
                        _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), table),
                        absmax,
                    );
                    let wl = _mm512_mul_ps(
                        _mm512_permutexvar_ps(_mm512_and_si512(v, _mm512_set1_epi32(0x0F)), table),
                        absmax,
                    );
                    // x de-interleaved into the same order: evens, then odds.
                    for i in 0..M {
                        // SAFETY: columns g · 32 .. + 32 of row i are inside `x`.
                        let (x0, x1) = unsafe {
                            let p = x.as_ptr().add(i * k + g * 32);
                            (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)))
                        };
                        let (xe, xo) = (
                            _mm512_permutex2var_ps(x0, even, x1),
                            _mm512_permutex2var_ps(x0, odd, x1),
                        );
                        // SAFETY: `xs` holds 4 rows of 32.
                        unsafe {
                            _mm512_storeu_ps(xs.as_mut_ptr().add(i * 32), xe);
                            _mm512_storeu_ps(xs.as_mut_ptr().add(i * 32 + 16), xo);
                        }
                    }
                    // SAFETY: `xs` holds M rows of 32.
                    unsafe { acc.add([wh, wl], xs.as_ptr(), 32, 0) };
                }
            }
            Stats::Rows { scales } => {
                let sc = _mm512_set1_ps(scales[s]);
                let inv = _mm512_set1_ps(INV_127);
                let codes = &data[s * k..(s + 1) * k];
                for (g, bytes) in codes.chunks_exact(32).enumerate() {
                    let q = |at: usize| {
                        // SAFETY: 16 bytes at `at` ≤ 16 of a 32-byte chunk.
                        let v =
                            unsafe { _mm_loadu_si128(bytes.as_ptr().add(at) as *const __m128i) };
                        let q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v));
                        _mm512_mul_ps(_mm512_mul_ps(q, sc), inv)
                    };
                    // SAFETY: columns g · 32 .. + 32 are inside the rows of `x`.
                    unsafe { acc.add([q(0), q(16)], x.as_ptr(), k, g * 32) };
                }
            }
        }
        acc.store(o);
    }
}

/// [`super::dots`] on AVX-512 for `M` rows of `x`.
///
/// # Safety
/// The CPU has avx512f/bw/vl/dq, avx2, fma and f16c; `w` is supported (`super::supported`);
/// shapes as [`super::dots`] checks them.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
pub(super) unsafe fn dots<const M: usize>(
    w: &QMatrix,
    x: &[f32],
    rows: (usize, usize),
    out: &mut [f32],
) {
    use QuantType as Q;
    // SAFETY: per this function's contract, each arm's format matches its tag.
    unsafe {
        match (w.ty, w.stats.as_deref()) {
            (Q::Q4_0, _) => blocks::<M, Q4_0, 18, 1>(w, x, rows, out),
            (Q::Q4_1, _) => blocks::<M, Q4_1, 20, 1>(w, x, rows, out),
            (Q::Q5_0, _) => blocks::<M, Q5_0, 22, 1>(w, x, rows, out),
            (Q::Q5_1, _) => blocks::<M, Q5_1, 24, 1>(w, x, rows, out),
            (Q::Q8_0, _) => blocks::<M, Q8_0, 34, 1>(w, x, rows, out),
            (Q::Q4_K, _) => blocks::<M, Q4_K, 144, 8>(w, x, rows, out),
            (Q::Q5_K, _) => blocks::<M, Q5_K, 176, 8>(w, x, rows, out),
            (Q::Q6_K, _) => blocks::<M, Q6_K, 210, 8>(w, x, rows, out),
            (Q::Bf16, _) => blocks::<M, BF16, 64, 1>(w, x, rows, out),
            (_, Some(stats)) => bnb::<M>(w, stats, x, rows, out),
            _ => {}
        }
    }
}
