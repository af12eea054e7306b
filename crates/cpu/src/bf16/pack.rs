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
        for p in 0..kp {
            for r in 0..mr {
                panel[p * mr + r] = a_word(a, r0 + r, p);
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
pub(crate) fn pack_b(b: &MatRef<'_>, par: bool) -> Vec<u32> {
    let (n, kp) = (b.cols, pairs(b.rows));
    let mut out = vec![0u32; n.div_ceil(NR) * NR * kp];
    if kp == 0 {
        return out;
    }
    // A transposed weight (`k` contiguous) is read along `k`, column after column; otherwise
    // along rows of B: either way the reads stream and the writes stay in one panel.
    let k_contiguous = b.rows > 1 && b.at(1, 0) == b.at(0, 0).wrapping_add(1);
    let fill = |(j, panel): (usize, &mut [u32])| {
        let (c0, nr) = (j * NR, NR.min(n - j * NR));
        if k_contiguous {
            for c in 0..nr {
                for p in 0..kp {
                    panel[p * NR + c] = b_word(b, p, c0 + c);
                }
            }
        } else {
            for p in 0..kp {
                for c in 0..nr {
                    panel[p * NR + c] = b_word(b, p, c0 + c);
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

/// `b` as a row-major f32 copy rounded to bf16 (the fallback's packed form: the same values
/// the kernel's packing keeps, so both backends multiply the same operand).
pub(crate) fn to_f32(b: &MatRef<'_>) -> Vec<f32> {
    (0..b.rows)
        .flat_map(|i| (0..b.cols).map(move |j| crate::precision::round_bf16(get(b, i, j))))
        .collect()
}
