//! Grouped-query attention forward and backward on host rows, in 64-query blocks that multiply
//! only the keys the block can see (as `kernels.rs` does for inference).
//!
//! The forward keeps the log-sum-exp of every query row; the backward recomputes the
//! probabilities from it (FlashAttention's recipe, Dao et al. 2022,
//! <https://arxiv.org/abs/2205.14135>) instead of storing the `[heads, t, t]` matrices.
//! A query row that sees no key (padding) averages every value row, as the tensor path's
//! softmax over equal `MASKED` scores does; its scores get no gradient there either.
//!
//! In bf16 ([`Precision::Bf16`]) the scores `q kᵀ` and the probabilities that multiply `v`
//! are rounded to bf16, as autocast's bf16 `matmul`s give and take them, and the products of
//! bf16 operands go through [`kiln_cpu::matmul_in`] (which keeps blocks smaller than 128 × 128,
//! so the 64-query blocks, on the f32 product); the softmax itself, the log-sum-exp and the
//! gradients stay f32.
use super::softcap;
use crate::mask::MASKED;
use kiln_cpu::Precision;
use kiln_cpu::fastexp::{exp, sum};
use kiln_cpu::{MatMut, MatRef, Threads, matmul, matmul_in};
use rayon::prelude::*;

/// Queries per block.
const BLOCK: usize = 64;

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dims {
    pub batch: usize,
    pub t: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// Gemma 2: scores become `cap · tanh(scores / cap)` before the mask.
    pub softcap: Option<f32>,
    pub precision: Precision,
}

impl Dims {
    pub(super) fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }

    pub(super) fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// A raw pointer that parallel tasks write through, each to its own columns.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: tasks write disjoint column blocks (one kv head's group each); see the callers.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer (a method, so closures capture the `Send` wrapper, not the raw field).
    fn at(&self, offset: usize) -> *mut f32 {
        // SAFETY: callers stay inside the buffer (see the per-call comments).
        unsafe { self.0.add(offset) }
    }
}

/// The visible key range of query rows `i0..i1` of batch row `bi`: `None` if no row sees any.
fn key_range(mask: &[f32], t: usize, bi: usize, i0: usize, i1: usize) -> Option<(usize, usize)> {
    let rows = &mask[(bi * t + i0) * t..(bi * t + i1) * t];
    let seen = |j: &usize| rows.chunks_exact(t).any(|m| m[*j] != MASKED);
    Some(((0..t).find(seen)?, (0..t).rev().find(seen)?))
}

/// An additive `[b, t, t]` mask and what the query blocks read from it, found once per call
/// (every layer of an attention kind shares it, forward and backward).
pub(super) struct Mask {
    values: Vec<f32>,
    t: usize,
    /// Per batch row and query block: the first and last key any of its rows sees.
    ranges: Vec<Option<(usize, usize)>>,
    /// Per batch row and query: whether the row sees no key.
    blind: Vec<bool>,
}

impl Mask {
    /// # Shapes
    /// - values: `[batch, t, t]` additive (0 or [`MASKED`])
    pub fn new(values: Vec<f32>, batch: usize, t: usize) -> Self {
        let ranges = (0..batch)
            .flat_map(|bi| (0..t).step_by(BLOCK).map(move |i0| (bi, i0)))
            .map(|(bi, i0)| key_range(&values, t, bi, i0, (i0 + BLOCK).min(t)))
            .collect();
        let blind = values
            .chunks_exact(t.max(1))
            .map(|row| row.iter().all(|&m| m == MASKED))
            .collect();
        Self {
            values,
            t,
            ranges,
            blind,
        }
    }

    /// The key range of the query block starting at `i0` (a multiple of `BLOCK`).
    fn range(&self, bi: usize, i0: usize) -> Option<(usize, usize)> {
        self.ranges[bi * self.t.div_ceil(BLOCK) + i0 / BLOCK]
    }

    /// Whether query `i` of batch row `bi` sees no key.
    fn blind(&self, bi: usize, i: usize) -> bool {
        self.blind[bi * self.t + i]
    }

    /// Keys `j0..j0 + len` of query `i`'s row.
    fn row(&self, bi: usize, i: usize, j0: usize, len: usize) -> &[f32] {
        &self.values[(bi * self.t + i) * self.t + j0..][..len]
    }
}

/// Attention output `[b·t, heads·hd]` and log-sum-exp `[b, heads, t]` (0 for rows that see
/// nothing).
///
/// # Shapes
/// - q: `[b·t, heads·hd]`; k, v: `[b·t, kv_heads·hd]`, token-major; mask: `[b, t, t]`
pub(super) fn forward(
    dims: Dims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &Mask,
) -> (Vec<f32>, Vec<f32>) {
    let Dims {
        batch,
        t,
        heads,
        kv_heads,
        head_dim: hd,
        scale,
        softcap,
        precision,
    } = dims;
    let (qw, kw_) = (dims.q_width(), dims.kv_width());
    let groups = heads / kv_heads;
    let mut out = vec![0f32; batch * t * qw];
    let mut lse = vec![0f32; batch * heads * t];
    let (out_p, lse_p) = (Shared(out.as_mut_ptr()), Shared(lse.as_mut_ptr()));
    (0..batch * kv_heads).into_par_iter().for_each(|task| {
        let (bi, g) = (task / kv_heads, task % kv_heads);
        let kg = MatRef::columns(&k[bi * t * kw_..], t, kw_, g * hd, hd);
        let vg = MatRef::columns(&v[bi * t * kw_..], t, kw_, g * hd, hd);
        let mut scores = Vec::new();
        for hi in g * groups..(g + 1) * groups {
            let qh = MatRef::columns(&q[bi * t * qw..], t, qw, hi * hd, hd);
            // SAFETY: this task alone writes head `hi`'s columns of batch row `bi` and its
            // log-sum-exp rows; `out` holds b·t rows of `qw`.
            let lse_h =
                unsafe { std::slice::from_raw_parts_mut(lse_p.at((bi * heads + hi) * t), t) };
            for i0 in (0..t).step_by(BLOCK) {
                let i1 = (i0 + BLOCK).min(t);
                let n = i1 - i0;
                // SAFETY: as above, rows i0..i1 of batch row `bi`, columns of head `hi`.
                let dst = |rows_from: usize, rows: usize| unsafe {
                    MatMut::columns_raw(out_p.at((bi * t + rows_from) * qw), rows, qw, hi * hd, hd)
                };
                let Some((j0, j1)) = mask.range(bi, i0) else {
                    (i0..i1).for_each(|i| average_rows(vg, dst(i, 1), precision));
                    lse_h[i0..i1].fill(0.0);
                    continue;
                };
                let kw = j1 + 1 - j0;
                // Overwritten by the product below: only new room is zeroed.
                scores.resize(n * kw, 0f32);
                matmul_in(
                    precision,
                    MatMut::new(&mut scores, n, kw),
                    qh.rows(i0, n),
                    kg.rows(j0, kw).t(),
                    scale,
                    false,
                    Threads::One,
                );
                precision.round(&mut scores); // bf16: q kᵀ is a bf16 product
                if let Some(cap) = softcap {
                    softcap::cap_in_place(&mut scores, cap);
                    precision.round(&mut scores); // bf16: elementwise ops on a bf16 tensor
                }
                let mut blind_rows = Vec::new();
                for (r, s) in scores.chunks_exact_mut(kw).enumerate() {
                    let m = mask.row(bi, i0 + r, j0, kw);
                    match softmax_row(s, m, mask.blind(bi, i0 + r)) {
                        Some(l) => lse_h[i0 + r] = l,
                        None => {
                            lse_h[i0 + r] = 0.0;
                            blind_rows.push(i0 + r);
                        }
                    }
                }
                precision.round(&mut scores); // bf16: the probabilities enter p · v as bf16
                matmul_in(
                    precision,
                    dst(i0, n),
                    MatRef::new(&scores, n, kw),
                    vg.rows(j0, kw),
                    1.0,
                    false,
                    Threads::One,
                );
                for i in blind_rows {
                    average_rows(vg, dst(i, 1), precision);
                }
            }
        }
    });
    (out, lse)
}

/// Masks and normalises one row of scores in place (masked keys get 0) and returns its
/// log-sum-exp, or `None` (row zeroed) when it sees no key (`blind`). NaN scores stay NaN.
fn softmax_row(s: &mut [f32], mask: &[f32], blind: bool) -> Option<f32> {
    if blind {
        s.fill(0.0);
        return None;
    }
    let mut max = f32::NEG_INFINITY;
    for (s, &m) in s.iter().zip(mask) {
        if m != MASKED {
            max = max.max(s + m);
        }
    }
    for (s, &m) in s.iter_mut().zip(mask) {
        *s = if m == MASKED { 0.0 } else { exp(*s + m - max) };
    }
    let sum = sum(s);
    s.iter_mut().for_each(|s| *s /= sum);
    Some(max + sum.ln())
}

/// One output row: the mean of all value rows of `v` (`[t, hd]`), weights `1/t` in the
/// step's precision.
fn average_rows(v: MatRef<'_>, dst: MatMut<'_>, precision: Precision) {
    let t = v.rows;
    let mut ones = vec![1.0 / t as f32; t];
    precision.round(&mut ones);
    matmul_in(
        precision,
        dst,
        MatRef::new(&ones, 1, t),
        v,
        1.0,
        false,
        Threads::One,
    );
}

/// Gradients `(dq, dk, dv)` of [`forward`] from the output gradient `dout`.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    dims: Dims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &Mask,
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let Dims {
        batch,
        t,
        heads,
        kv_heads,
        head_dim: hd,
        scale,
        softcap,
        precision,
    } = dims;
    let (qw, kw_) = (dims.q_width(), dims.kv_width());
    let groups = heads / kv_heads;
    // The products by `dout` (dv, dp) run in bf16 only when it holds bf16 values: in full
    // fine-tuning it is one rounded product's gradient, but with an adapter on the output
    // projection it is a sum of two, which kiln keeps in f32 (rounding it would move kiln's
    // gradients away from autocast's in `fused_bf16_matches_torch_autocast`), so those two
    // products stay f32 there.
    let dout_precision = if precision.holds(dout) {
        precision
    } else {
        Precision::F32
    };
    let mut dq = vec![0f32; batch * t * qw];
    let mut dk = vec![0f32; batch * t * kw_];
    let mut dv = vec![0f32; batch * t * kw_];
    let (dq_p, dk_p, dv_p) = (
        Shared(dq.as_mut_ptr()),
        Shared(dk.as_mut_ptr()),
        Shared(dv.as_mut_ptr()),
    );
    (0..batch * kv_heads).into_par_iter().for_each(|task| {
        let (bi, g) = (task / kv_heads, task % kv_heads);
        let kg = MatRef::columns(&k[bi * t * kw_..], t, kw_, g * hd, hd);
        let vg = MatRef::columns(&v[bi * t * kw_..], t, kw_, g * hd, hd);
        // SAFETY (all three): this task alone writes kv head `g`'s columns of batch row `bi`
        // (dk, dv) and the columns of its query heads (dq); each buffer holds b·t rows.
        let dkg = |r0: usize, rows: usize| unsafe {
            MatMut::columns_raw(dk_p.at((bi * t + r0) * kw_), rows, kw_, g * hd, hd)
        };
        let dvg = |r0: usize, rows: usize| unsafe {
            MatMut::columns_raw(dv_p.at((bi * t + r0) * kw_), rows, kw_, g * hd, hd)
        };
        let (mut p, mut dp, mut capped) = (Vec::new(), Vec::new(), Vec::new());
        for hi in g * groups..(g + 1) * groups {
            let qh = MatRef::columns(&q[bi * t * qw..], t, qw, hi * hd, hd);
            let doh = MatRef::columns(&dout[bi * t * qw..], t, qw, hi * hd, hd);
            let lse_h = &lse[(bi * heads + hi) * t..][..t];
            for i0 in (0..t).step_by(BLOCK) {
                let i1 = (i0 + BLOCK).min(t);
                let n = i1 - i0;
                if let Some((j0, j1)) = mask.range(bi, i0) {
                    let kw = j1 + 1 - j0;
                    // Overwritten by the product below: only new room is zeroed.
                    p.resize(n * kw, 0f32);
                    matmul_in(
                        precision,
                        MatMut::new(&mut p, n, kw),
                        qh.rows(i0, n),
                        kg.rows(j0, kw).t(),
                        scale,
                        false,
                        Threads::One,
                    );
                    precision.round(&mut p);
                    if let Some(cap) = softcap {
                        softcap::cap_in_place(&mut p, cap);
                        precision.round(&mut p);
                        capped.clone_from(&p);
                    }
                    for (r, pr) in p.chunks_exact_mut(kw).enumerate() {
                        let (l, unseen) = (lse_h[i0 + r], mask.blind(bi, i0 + r));
                        let m = mask.row(bi, i0 + r, j0, kw);
                        for (s, &m) in pr.iter_mut().zip(m) {
                            *s = if m == MASKED || unseen {
                                0.0
                            } else {
                                exp(*s + m - l)
                            };
                        }
                    }
                    // dv += pᵀ dout (p as it multiplied v); dp = dout vᵀ;
                    // ds = p (dp - rowsum(dout · out)).
                    let pv = precision.input(&p);
                    matmul_in(
                        dout_precision,
                        dvg(j0, kw),
                        MatRef::new(&pv, n, kw).t(),
                        doh.rows(i0, n),
                        1.0,
                        true,
                        Threads::One,
                    );
                    // Overwritten by the product below: only new room is zeroed.
                    dp.resize(n * kw, 0f32);
                    matmul_in(
                        dout_precision,
                        MatMut::new(&mut dp, n, kw),
                        doh.rows(i0, n),
                        vg.rows(j0, kw).t(),
                        1.0,
                        false,
                        Threads::One,
                    );
                    let bf16 = precision == Precision::Bf16;
                    for (r, (ds, pr)) in dp.chunks_exact_mut(kw).zip(p.chunks_exact(kw)).enumerate()
                    {
                        let i = i0 + r;
                        let delta = if bf16 {
                            // autocast: dp is a bf16 product; the f32 softmax's backward
                            // reads its own f32 output, not the rounded `out`.
                            precision.round(ds);
                            dot(ds, pr)
                        } else {
                            let o = &out[(bi * t + i) * qw + hi * hd..][..hd];
                            dot(o, &dout[(bi * t + i) * qw + hi * hd..][..hd])
                        };
                        for (ds, p) in ds.iter_mut().zip(pr) {
                            *ds = p * (*ds - delta);
                        }
                        if let Some(cap) = softcap {
                            // Through the cap: d raw = d capped · (1 - tanh²).
                            let c = &capped[r * kw..][..kw];
                            ds.iter_mut()
                                .zip(c)
                                .for_each(|(ds, &c)| *ds *= softcap::slope(c, cap));
                        }
                        // The scores' gradient enters their bf16 product as bf16.
                        precision.round(ds);
                    }
                    // dq = scale · ds k; dk += scale · dsᵀ q.
                    // SAFETY: rows i0..i1 of batch row `bi`, columns of head `hi` (this task's).
                    let dqh = unsafe {
                        MatMut::columns_raw(dq_p.at((bi * t + i0) * qw), n, qw, hi * hd, hd)
                    };
                    let ds = MatRef::new(&dp, n, kw);
                    let kj = kg.rows(j0, kw);
                    matmul_in(precision, dqh, ds, kj, scale, false, Threads::One);
                    if bf16 {
                        for i in i0..i1 {
                            // SAFETY: as above (row i, head `hi`'s columns).
                            let row = unsafe {
                                std::slice::from_raw_parts_mut(
                                    dq_p.at((bi * t + i) * qw + hi * hd),
                                    hd,
                                )
                            };
                            precision.round(row);
                        }
                    }
                    matmul_in(
                        precision,
                        dkg(j0, kw),
                        ds.t(),
                        qh.rows(i0, n),
                        scale,
                        true,
                        Threads::One,
                    );
                }
                // Rows that see no key come last: the block's product wrote zeros to their dq.
                for i in (i0..i1).filter(|&i| mask.blind(bi, i)) {
                    // SAFETY: row i of batch row `bi`, columns of head `hi` (this task's).
                    let dqi = unsafe {
                        MatMut::columns_raw(dq_p.at((bi * t + i) * qw), 1, qw, hi * hd, hd)
                    };
                    let row = BlindRow {
                        q: qh.rows(i, 1),
                        out: &out[(bi * t + i) * qw + hi * hd..][..hd],
                        dout: &dout[(bi * t + i) * qw + hi * hd..][..hd],
                        scale,
                        softcap,
                        precision,
                    };
                    row.backward(kg, vg, dqi, dkg(0, t), dvg(0, t));
                }
            }
        }
    });
    (dq, dk, dv)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

/// A query row that sees no key. Its scores are all `MASKED + s`, which rounds to `MASKED`, so
/// the forward averages the values; autodiff (burn's and PyTorch's) still differentiates
/// `MASKED + s` as `s`, giving uniform probabilities `1/t` and `ds = (dp - dout · out) / t`.
/// Reproduced here so both paths agree even on this row (it matters only when a padding row's
/// prediction is counted in the loss).
struct BlindRow<'a> {
    /// `[1, hd]`
    q: MatRef<'a>,
    /// `[hd]` each.
    out: &'a [f32],
    dout: &'a [f32],
    scale: f32,
    softcap: Option<f32>,
    precision: Precision,
}

impl BlindRow<'_> {
    fn backward(
        &self,
        k: MatRef<'_>,
        v: MatRef<'_>,
        dq: MatMut<'_>,
        dk: MatMut<'_>,
        dv: MatMut<'_>,
    ) {
        // f32 products even in bf16: `ds` below is not rounded (kiln reproduces autodiff's
        // uniform-probability gradient here, not a bf16 product), and these rare padding rows'
        // products have one row or an inner dimension of 1, where packing operands for the
        // bf16 kernel costs more than it saves.
        let (t, hd) = (k.rows, k.cols);
        let dout = MatRef::new(self.dout, 1, hd);
        let mut p = vec![1.0 / t as f32; t];
        self.precision.round(&mut p);
        matmul(dv, MatRef::new(&p, 1, t).t(), dout, 1.0, true, Threads::One);
        let mut ds = vec![0f32; t];
        matmul(
            MatMut::new(&mut ds, 1, t),
            dout,
            v.t(),
            1.0,
            false,
            Threads::One,
        );
        let delta = dot(self.out, self.dout);
        ds.iter_mut().for_each(|x| *x = (*x - delta) / t as f32);
        if let Some(cap) = self.softcap {
            // The uniform probabilities' gradient still passes through the cap of each score.
            let mut s = vec![0f32; t];
            let dst = MatMut::new(&mut s, 1, t);
            matmul(dst, self.q, k.t(), self.scale, false, Threads::One);
            self.precision.round(&mut s);
            softcap::cap_in_place(&mut s, cap);
            self.precision.round(&mut s);
            ds.iter_mut()
                .zip(&s)
                .for_each(|(ds, &c)| *ds *= softcap::slope(c, cap));
        }
        let ds = MatRef::new(&ds, 1, t);
        matmul(dq, ds, k, self.scale, false, Threads::One);
        matmul(dk, ds.t(), self.q, self.scale, true, Threads::One);
    }
}
