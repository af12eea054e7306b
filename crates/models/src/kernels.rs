//! Fused attention for inference on burn's CPU backend.
//!
//! Why not burn's ops: the tensor path builds the `[b, heads, t, t_keys]` score matrix, adds the
//! mask, takes `exp` of every entry (the masked half of a causal prompt included, each through
//! glibc's slow underflow path), normalises, multiplies by the values and transposes the result:
//! five passes over the scores and four allocations per layer. This kernel walks each query row
//! once, skips masked keys (their probability is exactly 0 in the tensor path too) and writes the
//! `[b, t, heads · head_dim]` output `o_proj` reads. Same maths, so the two agree to float
//! rounding (`attention_kernel_equals_tensor_path` below).
//!
//! Only tensors outside autodiff on the ndarray backend take this path (inference, evaluation,
//! generation); training and other backends keep the tensor ops.
use burn::tensor::Tensor;

/// Attention of `q` over `k`/`v` with an additive mask, or `None` when the fast path does not
/// apply.
///
/// # Shapes
/// - q: `[b, heads, t, hd]`
/// - k, v: `[b, kv_heads, t_keys, hd]`
/// - mask: `[b, 1, t, t_keys]`, additive, [`crate::mask::MASKED`] where hidden
/// - output: `[b, t, heads · hd]`
#[allow(unused_variables)]
pub fn try_attention(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    mask: &Tensor<4>,
    scale: f64,
    softcap: Option<f64>,
) -> Option<Tensor<3>> {
    #[cfg(feature = "cpu")]
    {
        cpu::attention(q, k, v, mask, scale as f32, softcap.map(|c| c as f32))
    }
    #[cfg(not(feature = "cpu"))]
    {
        None
    }
}

/// Keys and values of a host KV cache (`[b, heads, stride, head_dim]` buffers whose first `len`
/// tokens are filled), read in place by [`try_attention_host`].
#[cfg(feature = "cpu")]
pub(crate) struct HostKeys<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub heads: usize,
    pub len: usize,
    pub stride: usize,
    pub head_dim: usize,
}

/// [`try_attention`] over a host KV cache, its keys read where they are.
///
/// # Shapes
/// - q: `[b, heads, t, hd]`
/// - mask: `[b, 1, t, len]` additive
/// - output: `[b, t, heads · hd]`
#[cfg(feature = "cpu")]
pub(crate) fn try_attention_host(
    q: &Tensor<4>,
    kv: &HostKeys<'_>,
    mask: &Tensor<4>,
    scale: f64,
    softcap: Option<f64>,
) -> Option<Tensor<3>> {
    cpu::attention_host(q, kv, mask, scale as f32, softcap.map(|c| c as f32))
}

/// `x / sqrt(mean(x²) + eps) · w` over the last axis (`w + 1` for Gemma's unit offset), or
/// `None` when the fast path does not apply.
///
/// # Shapes
/// - x: `[..., d]`
/// - weight: `[d]`
#[allow(unused_variables)]
pub fn try_rms_norm<const D: usize>(
    x: &Tensor<D>,
    weight: &Tensor<1>,
    eps: f64,
    unit_offset: bool,
) -> Option<Tensor<D>> {
    #[cfg(feature = "cpu")]
    {
        cpu::rms_norm(x, weight, eps as f32, unit_offset)
    }
    #[cfg(not(feature = "cpu"))]
    {
        None
    }
}

/// `act(gate) · up` for the gated MLP in one pass, or `None` when the fast path does not apply.
///
/// # Shapes
/// - gate, up: `[..., intermediate]`, same shape
#[allow(unused_variables)]
pub fn try_gated<const D: usize>(
    act: crate::config::Activation,
    gate: &Tensor<D>,
    up: &Tensor<D>,
) -> Option<Tensor<D>> {
    #[cfg(feature = "cpu")]
    {
        cpu::gated(act, gate, up)
    }
    #[cfg(not(feature = "cpu"))]
    {
        None
    }
}

/// Rotary embedding of the first `rotary_dim` channels (the rest pass unchanged), as
/// `apply_rotary` in `rope.rs` (its caller), or `None` when the fast path does not apply.
///
/// # Shapes
/// - x: `[b, heads, t, head_dim]`
/// - cos, sin: `[b, 1, t, rotary_dim]`
#[allow(unused_variables)]
pub fn try_rotary(x: &Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Option<Tensor<4>> {
    #[cfg(feature = "cpu")]
    {
        cpu::rotary(x, cos, sin)
    }
    #[cfg(not(feature = "cpu"))]
    {
        None
    }
}

#[cfg(feature = "cpu")]
mod cpu {
    use crate::mask::MASKED;
    use burn::tensor::Tensor;
    use kiln_cpu::fastexp::{exp, sum};
    use kiln_cpu::host::{Storage, tensor};
    use kiln_cpu::{MatMut, MatRef, Threads, dot, matmul};
    use rayon::prelude::*;

    pub(super) fn attention(
        q: &Tensor<4>,
        k: &Tensor<4>,
        v: &Tensor<4>,
        mask: &Tensor<4>,
        scale: f32,
        softcap: Option<f32>,
    ) -> Option<Tensor<3>> {
        let (qs, ks, vs, ms) = (
            Storage::of(q)?,
            Storage::of(k)?,
            Storage::of(v)?,
            Storage::of(mask)?,
        );
        let (qv, kv, vv, mv) = (qs.view(), ks.view(), vs.view(), ms.view());
        let (qd, kd) = (qv.shape(), kv.shape());
        let (b, h, t, hd) = (qd[0], qd[1], qd[2], qd[3]);
        let (kvh, tk) = (kd[1], kd[2]);
        if kd[0] != b
            || kd[3] != hd
            || vv.shape() != kd
            || mv.shape() != [b, 1, t, tk]
            || kvh == 0
            || h % kvh != 0
            || tk == 0
        {
            return None;
        }
        let (kc, vc) = (kv.as_standard_layout(), vv.as_standard_layout());
        let keys = super::HostKeys {
            k: kc.as_slice()?,
            v: vc.as_slice()?,
            heads: kvh,
            len: tk,
            stride: tk,
            head_dim: hd,
        };
        attend_heads(&qs, &keys, &ms, scale, softcap)
    }

    pub(super) fn attention_host(
        q: &Tensor<4>,
        kv: &super::HostKeys<'_>,
        mask: &Tensor<4>,
        scale: f32,
        softcap: Option<f32>,
    ) -> Option<Tensor<3>> {
        let (qs, ms) = (Storage::of(q)?, Storage::of(mask)?);
        let [b, _, _, hd] = q.dims();
        // The last block needs only its `len` filled tokens (the slices may start at a
        // cache's front offset and stop short of the last block's room).
        if kv.len == 0
            || kv.head_dim != hd
            || b * kv.heads == 0
            || kv.k.len() < ((b * kv.heads - 1) * kv.stride + kv.len) * hd
            || kv.v.len() != kv.k.len()
        {
            return None;
        }
        attend_heads(&qs, kv, &ms, scale, softcap)
    }

    /// The attention of every (row, head) of `q` over `kv`, scattered into `[b, t, heads · hd]`.
    fn attend_heads(
        qs: &Storage,
        kv: &super::HostKeys<'_>,
        ms: &Storage,
        scale: f32,
        softcap: Option<f32>,
    ) -> Option<Tensor<3>> {
        let (qv, mv) = (qs.view(), ms.view());
        let qd = qv.shape();
        let (b, h, t, hd) = (qd[0], qd[1], qd[2], qd[3]);
        let (kvh, tk, stride) = (kv.heads, kv.len, kv.stride);
        if mv.shape() != [b, 1, t, tk] || kvh == 0 || h % kvh != 0 || tk == 0 || tk > stride {
            return None;
        }
        let groups = h / kvh;
        let (qc, mc) = (qv.as_standard_layout(), mv.as_standard_layout());
        let (qx, mx) = (qc.as_slice()?, mc.as_slice()?);
        let (kx, vx) = (kv.k, kv.v);
        // One task per (batch row, head), each over blocks of queries; the per-head outputs are
        // scattered into `[b, t, heads · hd]` afterwards.
        let heads: Vec<Vec<f32>> = (0..b * h)
            .into_par_iter()
            .map(|task| {
                let (bi, hi) = (task / h, task % h);
                let g = hi / groups;
                let head = Head {
                    q: &qx[(bi * h + hi) * t * hd..][..t * hd],
                    k: &kx[(bi * kvh + g) * stride * hd..][..tk * hd],
                    v: &vx[(bi * kvh + g) * stride * hd..][..tk * hd],
                    mask: &mx[bi * t * tk..][..t * tk],
                    hd,
                    scale,
                    softcap,
                };
                head.attend()
            })
            .collect();
        let mut out = vec![0f32; b * t * h * hd];
        for (task, o) in heads.iter().enumerate() {
            let (bi, hi) = (task / h, task % h);
            for (i, row) in o.chunks_exact(hd).enumerate() {
                out[((bi * t + i) * h + hi) * hd..][..hd].copy_from_slice(row);
            }
        }
        tensor(&[b, t, h * hd], out)
    }

    /// One query head against its key/value head.
    struct Head<'a> {
        /// `[t, hd]`
        q: &'a [f32],
        /// `[tk, hd]`
        k: &'a [f32],
        /// `[tk, hd]`
        v: &'a [f32],
        /// `[t, tk]` additive
        mask: &'a [f32],
        hd: usize,
        scale: f32,
        softcap: Option<f32>,
    }

    /// Queries per block: one score matrix `[BLOCK, keys]` at a time.
    const BLOCK: usize = 64;

    impl Head<'_> {
        /// `softmax(scale · q kᵀ + mask) v`, `[t, hd]`, block by block: each block multiplies
        /// only the key range its rows can see (a causal block skips the keys after its last
        /// query, a sliding window those before its first).
        fn attend(&self) -> Vec<f32> {
            let hd = self.hd;
            let (t, tk) = (self.q.len() / hd, self.k.len() / hd);
            let mut out = vec![0f32; t * hd];
            let mut scores = Vec::new();
            for i0 in (0..t).step_by(BLOCK) {
                let i1 = (i0 + BLOCK).min(t);
                let rows = &self.mask[i0 * tk..i1 * tk];
                let seen = |j: &usize| rows.chunks_exact(tk).any(|m| m[*j] != MASKED);
                let (Some(j0), Some(j1)) = ((0..tk).find(seen), (0..tk).rev().find(seen)) else {
                    // No query of the block sees a key (padding): the tensor path's softmax
                    // of equal `MASKED + s` values averages every value row.
                    self.average_values(&mut out[i0 * hd..i1 * hd]);
                    continue;
                };
                let (n, kw) = (i1 - i0, j1 + 1 - j0);
                scores.clear();
                scores.resize(n * kw, 0f32);
                // scores[r, c] = scale · q[i0 + r] · k[j0 + c]
                matmul(
                    MatMut::new(&mut scores, n, kw),
                    MatRef::new(&self.q[i0 * hd..], n, hd),
                    MatRef::new(&self.k[j0 * hd..], kw, hd).t(),
                    self.scale,
                    false,
                    Threads::One,
                );
                for (r, srow) in scores.chunks_exact_mut(kw).enumerate() {
                    let m = &rows[r * tk + j0..r * tk + j0 + kw];
                    if m.iter().all(|&m| m == MASKED) {
                        self.average_values(&mut out[(i0 + r) * hd..(i0 + r + 1) * hd]);
                        srow.fill(0.0);
                        continue;
                    }
                    self.softmax_row(srow, m);
                }
                // out[i0 + r] = Σ_c p[r, c] · v[j0 + c]; rows left to average keep their values
                // because their probabilities are all zero and gemm accumulates.
                matmul(
                    MatMut::new(&mut out[i0 * hd..], n, hd),
                    MatRef::new(&scores, n, kw),
                    MatRef::new(&self.v[j0 * hd..], kw, hd),
                    1.0,
                    true,
                    Threads::One,
                );
            }
            out
        }

        /// Soft-cap, mask and normalise one row of scores in place (masked keys get 0).
        fn softmax_row(&self, s: &mut [f32], mask: &[f32]) {
            let mut max = f32::NEG_INFINITY;
            for (s, &m) in s.iter_mut().zip(mask) {
                if let Some(cap) = self.softcap {
                    *s = (*s / cap).tanh() * cap;
                }
                *s += m;
                if m != MASKED {
                    max = max.max(*s);
                }
            }
            for (s, &m) in s.iter_mut().zip(mask) {
                *s = if m == MASKED { 0.0 } else { exp(*s - max) };
            }
            let sum = sum(s);
            s.iter_mut().for_each(|s| *s /= sum);
        }

        /// Rows that see no key: the mean of all value rows.
        fn average_values(&self, out: &mut [f32]) {
            let hd = self.hd;
            let tk = self.v.len() / hd;
            for o in out.chunks_exact_mut(hd) {
                o.fill(0.0);
                for v in self.v.chunks_exact(hd) {
                    o.iter_mut().zip(v).for_each(|(o, v)| *o += v);
                }
                o.iter_mut().for_each(|o| *o /= tk as f32);
            }
        }
    }

    /// Rows of at least this many elements per rayon task.
    const CHUNK: usize = 16 * 1024;

    pub(super) fn rms_norm<const D: usize>(
        x: &Tensor<D>,
        weight: &Tensor<1>,
        eps: f32,
        unit_offset: bool,
    ) -> Option<Tensor<D>> {
        let (xs, ws) = (Storage::of(x)?, Storage::of(weight)?);
        let (xv, wv) = (xs.view(), ws.view());
        let shape = xv.shape().to_vec();
        let d = *shape.last()?;
        if wv.len() != d || d == 0 {
            return None;
        }
        let (xc, wc) = (xv.as_standard_layout(), wv.as_standard_layout());
        let (xx, w) = (xc.as_slice()?, wc.as_slice()?);
        let w: Vec<f32> = w
            .iter()
            .map(|&w| if unit_offset { w + 1.0 } else { w })
            .collect();
        let mut out = vec![0f32; xx.len()];
        let rows_per_task = (CHUNK / d).max(1);
        out.par_chunks_mut(rows_per_task * d)
            .zip(xx.par_chunks(rows_per_task * d))
            .for_each(|(o, x)| {
                for (o, x) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                    let inv = 1.0 / (dot(x, x) / d as f32 + eps).sqrt();
                    for ((o, x), w) in o.iter_mut().zip(x).zip(&w) {
                        *o = x * inv * w;
                    }
                }
            });
        tensor(&shape, out)
    }

    pub(super) fn gated<const D: usize>(
        act: crate::config::Activation,
        gate: &Tensor<D>,
        up: &Tensor<D>,
    ) -> Option<Tensor<D>> {
        use crate::config::Activation;
        let (gs, us) = (Storage::of(gate)?, Storage::of(up)?);
        let (gv, uv) = (gs.view(), us.view());
        if gv.shape() != uv.shape() {
            return None;
        }
        let shape = gv.shape().to_vec();
        let (gc, uc) = (gv.as_standard_layout(), uv.as_standard_layout());
        let (g, u) = (gc.as_slice()?, uc.as_slice()?);
        // One loop per activation, each with the activation inlined (not a function pointer),
        // so the loop vectorises: through a `fn` pointer SiLU was a scalar call per element,
        // 6.5% of a SmolLM2 forward in `perf`.
        let out = match act {
            Activation::Silu => map2(g, u, |g, u| g / (1.0 + exp(-g)) * u),
            Activation::GeluTanh => map2(g, u, |g, u| {
                const SQRT_2_OVER_PI: f32 = 0.797_884_6;
                0.5 * g * (1.0 + (SQRT_2_OVER_PI * (g + 0.044_715 * g * g * g)).tanh()) * u
            }),
            Activation::Gelu => return None,
        };
        tensor(&shape, out)
    }

    /// `f(a[i], b[i])` for every `i`, in parallel chunks.
    fn map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
        let mut out = vec![0f32; a.len()];
        out.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(o, (a, b))| {
                for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                    *o = f(a, b);
                }
            });
        out
    }

    pub(super) fn rotary(x: &Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Option<Tensor<4>> {
        let (xs, cs, ss) = (Storage::of(x)?, Storage::of(cos)?, Storage::of(sin)?);
        let (xv, cv, sv) = (xs.view(), cs.view(), ss.view());
        let shape = xv.shape().to_vec();
        let (b, h, t, d) = (shape[0], shape[1], shape[2], shape[3]);
        let rd = cv.shape()[3];
        if cv.shape() != [b, 1, t, rd] || sv.shape() != cv.shape() || rd > d || rd % 2 != 0 {
            return None;
        }
        let (xc, cc, sc) = (
            xv.as_standard_layout(),
            cv.as_standard_layout(),
            sv.as_standard_layout(),
        );
        let (xx, co, si) = (xc.as_slice()?, cc.as_slice()?, sc.as_slice()?);
        let half = rd / 2;
        let mut out = vec![0f32; xx.len()];
        let rows_per_task = (CHUNK / d).max(1);
        out.par_chunks_mut(rows_per_task * d)
            .enumerate()
            .for_each(|(task, o)| {
                for (r, o) in o.chunks_exact_mut(d).enumerate() {
                    let row = task * rows_per_task + r; // (bi, hi, ti) flattened
                    let (bi, ti) = (row / (h * t), row % t);
                    let x = &xx[row * d..(row + 1) * d];
                    let c = &co[(bi * t + ti) * rd..][..rd];
                    let s = &si[(bi * t + ti) * rd..][..rd];
                    for i in 0..half {
                        o[i] = x[i] * c[i] - x[i + half] * s[i];
                        o[i + half] = x[i + half] * c[i + half] + x[i] * s[i + half];
                    }
                    o[rd..].copy_from_slice(&x[rd..]);
                }
            });
        tensor(&shape, out)
    }
}
