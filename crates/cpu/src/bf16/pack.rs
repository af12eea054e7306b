//! Packing f32 operands into the bf16-pair panels the AVX512-BF16 micro-kernel reads.
//!
//! Why this layout: `vdpbf16ps` multiplies, in each 32-bit lane, two bf16 values of one
//! operand with two of the other and adds both products to an f32 lane. A lane therefore holds
//! two consecutive `k` of one row (of A) or one column (of B): one 32-bit word per pair, the even
//! `k` in the low half. A's panels hold `MR` rows per pair (one word per row, broadcast by the
//! kernel), B's hold `NR` columns per pair (three zmm loads). Odd `k`, short last panels and
//! B's last columns are padded with zeros, which add nothing to any sum the kernel keeps.
use super::{MR, NR};
use crate::gemm::MatRef;
use crate::precision::bf16_bits;
use rayon::prelude::*;

/// Words (u32 pairs) below which packing stays on the calling thread.
const PAR_WORDS: usize = 1 << 16;

/// The two bf16 values `(lo, hi)` as one word, `lo` in the low half.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    bf16_bits(lo) as u32 | (bf16_bits(hi) as u32) << 16
}

/// Element (i, j) of `x`. `i < x.rows` and `j < x.cols` (callers' loops).
#[inline(always)]
fn get(x: &MatRef<'_>, i: usize, j: usize) -> f32 {
    debug_assert!(i < x.rows && j < x.cols);
    // SAFETY: (i, j) is inside the view (the callers loop within rows × cols), and a view's
    // constructors check its bounds.
    unsafe { *x.at(i, j) }
}

/// Word of pair `p` of row `i` of `a` (`(a[i, 2p], a[i, 2p + 1])`, zero past `k`).
#[inline(always)]
fn a_word(a: &MatRef<'_>, i: usize, p: usize) -> u32 {
    let hi = if 2 * p + 1 < a.cols {
        get(a, i, 2 * p + 1)
    } else {
        0.0
    };
    pair(get(a, i, 2 * p), hi)
}

/// Word of pair `p` of column `j` of `b` (`(b[2p, j], b[2p + 1, j])`, zero past `k`).
#[inline(always)]
fn b_word(b: &MatRef<'_>, p: usize, j: usize) -> u32 {
    let hi = if 2 * p + 1 < b.rows {
        get(b, 2 * p + 1, j)
    } else {
        0.0
    };
    pair(get(b, 2 * p, j), hi)
}

/// Pairs of `k` (k rounded up to even, halved).
pub(crate) fn pairs(k: usize) -> usize {
    k.div_ceil(2)
}

/// Packs `a` ([m, k]) into `out`: panel `i` (rows `i·MR ..`, `mr ≤ MR` of them) starts at word
/// `i·MR·kp` and holds, pair after pair, one word per row (`out[base + p·mr + r]`). `out` is
/// resized to `m·kp` words. `par`: large operands are packed on all of rayon's threads.
pub(crate) fn pack_a(a: &MatRef<'_>, out: &mut Vec<u32>, par: bool) {
    let (m, kp) = (a.rows, pairs(a.cols));
    out.clear();
    out.resize(m * kp, 0);
    if kp == 0 {
        return;
    }
    let fill = |(i, panel): (usize, &mut [u32])| {
        let (r0, mr) = (i * MR, panel.len() / kp);
        match a.strides() {
            // Rows contiguous (activations): a row's words, one every `mr`.
            (_, 1) => {
                let row = |r: usize, k0: usize, len: usize| a.row_run(r0 + r, k0, len);
                transposed_words(mr, a.cols, row, panel, mr);
            }
            // Columns contiguous (a transposed operand): columns 2p and 2p + 1 side by side.
            (1, _) => {
                let at = a.t();
                for (p, dst) in panel.chunks_exact_mut(mr).enumerate() {
                    let lo = at.row_run(2 * p, r0, mr).unwrap_or_default();
                    let hi = (2 * p + 1 < a.cols).then(|| at.row_run(2 * p + 1, r0, mr));
                    words_of_runs(lo, hi.flatten(), dst);
                }
            }
            _ => {
                for p in 0..kp {
                    for r in 0..mr {
                        panel[p * mr + r] = a_word(a, r0 + r, p);
                    }
                }
            }
        }
    };
    if par && m * kp >= PAR_WORDS {
        out.par_chunks_mut(MR * kp).enumerate().for_each(fill);
    } else {
        out.chunks_mut(MR * kp).enumerate().for_each(fill);
    }
}

/// Packs `b` ([k, n]) into panels of `NR` columns: panel `j` starts at word `j·NR·kp` and holds,
/// pair after pair, `NR` words (`out[base + p·NR + c]`, zero for columns past `n`). `par` as
/// for [`pack_a`].
///
/// Why the contiguous cases: the products by quantized weights pack every dequantized tile
/// (forward `Wᵀ`, `k` contiguous; backward `W`, rows contiguous), so packing runs over every
/// frozen weight twice per step. Element by element through the view's strides it took 9% of a
/// bf16 SmolLM2 LoRA step (perf, 6 ns per word); streaming slices lets the compiler vectorise
/// the rounding.
pub(crate) fn pack_b(b: &MatRef<'_>, par: bool) -> Vec<u32> {
    let (n, kp) = (b.cols, pairs(b.rows));
    let mut out = vec![0u32; n.div_ceil(NR) * NR * kp];
    if kp == 0 {
        return out;
    }
    let fill = |(j, panel): (usize, &mut [u32])| {
        let (c0, nr) = (j * NR, NR.min(n - j * NR));
        match b.strides() {
            // Rows contiguous: rows 2p and 2p + 1 side by side, `nr` words per pair.
            (_, 1) => {
                for (p, dst) in panel.chunks_exact_mut(NR).enumerate() {
                    let lo = b.row_run(2 * p, c0, nr).unwrap_or_default();
                    let hi = (2 * p + 1 < b.rows).then(|| b.row_run(2 * p + 1, c0, nr));
                    words_of_runs(lo, hi.flatten(), &mut dst[..nr]);
                }
            }
            // `k` contiguous (a transposed weight): a column's words, one every `NR`.
            (1, _) => {
                let bt = b.t();
                let col = |c: usize, k0: usize, len: usize| bt.row_run(c0 + c, k0, len);
                transposed_words(nr, b.rows, col, panel, NR);
            }
            _ => {
                for p in 0..kp {
                    for c in 0..nr {
                        panel[p * NR + c] = b_word(b, p, c0 + c);
                    }
                }
            }
        }
    };
    if par && out.len() >= PAR_WORDS {
        out.par_chunks_mut(NR * kp).enumerate().for_each(fill);
    } else {
        out.chunks_mut(NR * kp).enumerate().for_each(fill);
    }
    out
}

/// Pairs per block of [`transposed_words`] (its scratch holds `NR` lines of them: 6 KB).
const PAIR_BLOCK: usize = 32;

/// The words of `lines` contiguous runs of `k` values each (`run(l, k0, len)`: values
/// `k0..k0 + len` of line `l`), pair `p` of line `l` at `dst[p · stride + l]`. A block of pairs
/// of every line goes to an L1 scratch first, so the rounding streams through contiguous memory
/// and the scattered stores become contiguous rows of `dst`.
fn transposed_words<'x>(
    lines: usize,
    k: usize,
    run: impl Fn(usize, usize, usize) -> Option<&'x [f32]>,
    dst: &mut [u32],
    stride: usize,
) {
    debug_assert!(lines <= NR);
    let mut scratch = [0u32; NR * PAIR_BLOCK];
    for p0 in (0..pairs(k)).step_by(PAIR_BLOCK) {
        let pb = PAIR_BLOCK.min(pairs(k) - p0);
        let k0 = 2 * p0;
        let len = (2 * pb).min(k - k0);
        for (l, words) in scratch.chunks_exact_mut(PAIR_BLOCK).take(lines).enumerate() {
            words_of_row(run(l, k0, len).unwrap_or_default(), &mut words[..pb]);
        }
        for p in 0..pb {
            let row = &mut dst[(p0 + p) * stride..][..lines];
            for (l, d) in row.iter_mut().enumerate() {
                *d = scratch[l * PAIR_BLOCK + p];
            }
        }
    }
}

/// The words of one contiguous run (`(x[2p], x[2p + 1])`, the last one's high half zero when
/// `x` has an odd length) into `dst`, one per pair.
fn words_of_row(x: &[f32], dst: &mut [u32]) {
    let done = simd::words_of_row(x, dst);
    let (x, dst) = (&x[2 * done..], &mut dst[done..]);
    let (pairs, tail) = x.as_chunks::<2>();
    for (d, &[lo, hi]) in dst.iter_mut().zip(pairs) {
        *d = pair(lo, hi);
    }
    if let [lo] = tail {
        dst[pairs.len()] = pair(*lo, 0.0);
    }
}

/// `dst[i] = (lo[i], hi[i])` as words (`hi` zero when absent).
fn words_of_runs(lo: &[f32], hi: Option<&[f32]>, dst: &mut [u32]) {
    match hi {
        Some(hi) => {
            let done = simd::words_of_runs(lo, hi, dst);
            let pairs = dst[done..].iter_mut().zip(&lo[done..]).zip(&hi[done..]);
            for ((d, &l), &h) in pairs {
                *d = pair(l, h);
            }
        }
        None => {
            for (d, &l) in dst.iter_mut().zip(lo) {
                *d = pair(l, 0.0);
            }
        }
    }
}

/// The conversions of `super::avx512` where the CPU has them: each returns how many words it
/// wrote (0 elsewhere), the portable loops do the rest.
#[cfg(target_arch = "x86_64")]
mod simd {
    pub(super) fn words_of_row(x: &[f32], dst: &mut [u32]) -> usize {
        if !crate::bf16::has_avx512bf16() {
            return 0;
        }
        // SAFETY: the CPU has avx512f and avx512bf16 (checked above).
        unsafe { crate::bf16::avx512::words_of_row(x, dst) }
    }

    pub(super) fn words_of_runs(lo: &[f32], hi: &[f32], dst: &mut [u32]) -> usize {
        if !crate::bf16::has_avx512bf16() {
            return 0;
        }
        // SAFETY: the CPU has avx512f and avx512bf16 (checked above).
        unsafe { crate::bf16::avx512::words_of_runs(lo, hi, dst) }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod simd {
    pub(super) fn words_of_row(_: &[f32], _: &mut [u32]) -> usize {
        0
    }

    pub(super) fn words_of_runs(_: &[f32], _: &[f32], _: &mut [u32]) -> usize {
        0
    }
}

/// `b` as a row-major f32 copy rounded to bf16 (the fallback's packed form: the same values
/// the kernel's packing keeps, so both backends multiply the same operand).
pub(crate) fn to_f32(b: &MatRef<'_>) -> Vec<f32> {
    (0..b.rows)
        .flat_map(|i| (0..b.cols).map(move |j| crate::precision::round_bf16(get(b, i, j))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values with ties, exact bf16 values, large and small exponents, signed zeros and
    /// infinities (no subnormals: the conversion instructions make them zero, as the kernel's
    /// `vdpbf16ps` does on reading them, so only the products can be compared there).
    fn values(n: usize) -> Vec<f32> {
        let special = [
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1.0 + 1.0 / 256.0,
            1e30,
        ];
        (0..n)
            .map(|i| match i % 7 {
                0 => special[(i / 7) % special.len()],
                1 => f32::from_bits(0x3f80_8000 + ((i as u32) << 17)), // ties
                _ => ((i as f32) * 0.618).sin() * (1 << (i % 20)) as f32,
            })
            .collect()
    }

    /// Row-major and transposed views of `[rows, cols]` values.
    fn views(data: &[f32], rows: usize, cols: usize) -> [MatRef<'_>; 2] {
        [
            MatRef::new(data, rows, cols),
            MatRef::new(data, cols, rows).t(),
        ]
    }

    #[test]
    fn contiguous_packing_equals_the_element_wise_words() {
        for (k, n) in [
            (1, 1),
            (2, 47),
            (3, 48),
            (31, 49),
            (33, 100),
            (64, 17),
            (65, 96),
        ] {
            let data = values(k * n);
            for (b, par) in views(&data, k, n).into_iter().zip([false, true]) {
                let got = pack_b(&b, par);
                let kp = pairs(k);
                for j in 0..n {
                    for p in 0..kp {
                        let at = (j / NR) * NR * kp + p * NR + j % NR;
                        assert_eq!(got[at], b_word(&b, p, j), "B k={k} n={n} p={p} j={j}");
                    }
                }
            }
            for a in views(&data, n, k) {
                let mut got = Vec::new();
                pack_a(&a, &mut got, false);
                let kp = pairs(k);
                for i in 0..n {
                    let (panel, r, mr) = (i / MR, i % MR, MR.min(n - i / MR * MR));
                    for p in 0..kp {
                        let at = panel * MR * kp + p * mr + r;
                        assert_eq!(got[at], a_word(&a, i, p), "A m={n} k={k} i={i} p={p}");
                    }
                }
            }
        }
    }
}
