//! Row-wise pieces of the decoder and their backward passes, on host rows: RMSNorm, the gated
//! activation and RoPE. Each forward equals its tensor version in `norm.rs`, `mlp.rs` and
//! `rope.rs`.
use crate::config::Activation;
use kiln_cpu::fastexp::exp;
use kiln_cpu::{Precision, round_bf16};
use rayon::prelude::*;

/// Rows per rayon task: at least this many elements.
const CHUNK: usize = 16 * 1024;

fn rows_per_task(d: usize) -> usize {
    (CHUNK / d.max(1)).max(1)
}

/// RMSNorm with its scale already offset (`1 + w` for Gemma).
#[derive(Debug)]
pub(super) struct Norm {
    /// The scale the forward multiplies by.
    pub scale: Vec<f32>,
    pub eps: f32,
}

impl Norm {
    /// `y = x · rstd · scale` per row of `d`; returns `y` and `rstd` per row.
    pub fn forward(&self, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let d = self.scale.len();
        let mut y = vec![0f32; x.len()];
        let mut rstd = vec![0f32; x.len() / d];
        let step = rows_per_task(d);
        y.par_chunks_mut(step * d)
            .zip(rstd.par_chunks_mut(step))
            .zip(x.par_chunks(step * d))
            .for_each(|((y, r), x)| {
                for ((y, r), x) in y.chunks_exact_mut(d).zip(r).zip(x.chunks_exact(d)) {
                    let ms = x.iter().map(|v| v * v).sum::<f32>() / d as f32;
                    *r = 1.0 / (ms + self.eps).sqrt();
                    for ((y, x), w) in y.iter_mut().zip(x).zip(&self.scale) {
                        *y = x * *r * w;
                    }
                }
            });
        (y, rstd)
    }

    /// Adds the input gradient to `dx` and returns the scale's gradient `Σ_rows dy · x · rstd`
    /// when `weight_grad`.
    ///
    /// With `g = dy · scale`: `dx = rstd · g - x · rstd³ · mean(g · x)`.
    pub fn backward(
        &self,
        x: &[f32],
        rstd: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        weight_grad: bool,
    ) -> Option<Vec<f32>> {
        let d = self.scale.len();
        let step = rows_per_task(d);
        dx.par_chunks_mut(step * d)
            .zip(x.par_chunks(step * d))
            .zip(dy.par_chunks(step * d).zip(rstd.par_chunks(step)))
            .for_each(|((dx, x), (dy, rstd))| {
                for (((dx, x), dy), &r) in dx
                    .chunks_exact_mut(d)
                    .zip(x.chunks_exact(d))
                    .zip(dy.chunks_exact(d))
                    .zip(rstd)
                {
                    let dot: f32 = dy
                        .iter()
                        .zip(&self.scale)
                        .zip(x)
                        .map(|((g, w), x)| g * w * x)
                        .sum();
                    let c = r * r * r * dot / d as f32;
                    for (((dx, x), g), w) in dx.iter_mut().zip(x).zip(dy).zip(&self.scale) {
                        *dx += r * g * w - x * c;
                    }
                }
            });
        weight_grad.then(|| {
            x.par_chunks(step * d)
                .zip(dy.par_chunks(step * d).zip(rstd.par_chunks(step)))
                .map(|(x, (dy, rstd))| {
                    let mut g = vec![0f32; d];
                    for ((x, dy), r) in x.chunks_exact(d).zip(dy.chunks_exact(d)).zip(rstd) {
                        for ((g, x), dy) in g.iter_mut().zip(x).zip(dy) {
                            *g += dy * x * r;
                        }
                    }
                    g
                })
                .reduce(
                    || vec![0f32; d],
                    |mut a, b| {
                        a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                        a
                    },
                )
        })
    }
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// SiLU and its derivative: `(g σ(g), σ(g) (1 + g (1 − σ(g))))`.
#[inline(always)]
fn silu_and_grad(g: f32) -> (f32, f32) {
    let s = 1.0 / (1.0 + exp(-g));
    (g * s, s * (1.0 + g * (1.0 - s)))
}

/// tanh-approximated GELU and its derivative: `0.5 g (1 + tanh(z))`, `z = c (g + 0.044715 g³)`.
#[inline(always)]
fn gelu_tanh_and_grad(g: f32) -> (f32, f32) {
    let z = SQRT_2_OVER_PI * (g + 0.044_715 * g * g * g);
    let th = z.tanh();
    let dz = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044_715 * g * g);
    (
        0.5 * g * (1.0 + th),
        0.5 * (1.0 + th) + 0.5 * g * (1.0 - th * th) * dz,
    )
}

// `gated` and `gated_backward` run one loop per activation with the activation inlined: a
// `match` inside the loop kept it a scalar call per element (`act_and_grad` was 11% of a
// SmolLM2 LoRA step in `perf`); with SiLU inlined the loop vectorises.

/// `act(gate) · up`; in bf16 the activation's output and the product are rounded, as
/// autocast's bf16 `act_fn(gate_proj(x)) * up_proj(x)` is.
pub(super) fn gated(act: Activation, p: Precision, gate: &[f32], up: &[f32]) -> Vec<f32> {
    let mut out = match (act, p) {
        (Activation::Silu, Precision::F32) => gated_with(silu_and_grad, gate, up),
        (Activation::Silu, Precision::Bf16) => gated_with(bf16(silu_and_grad), gate, up),
        (Activation::GeluTanh | Activation::Gelu, Precision::F32) => {
            gated_with(gelu_tanh_and_grad, gate, up)
        }
        (Activation::GeluTanh | Activation::Gelu, Precision::Bf16) => {
            gated_with(bf16(gelu_tanh_and_grad), gate, up)
        }
    };
    p.round(&mut out);
    out
}

/// `f` with its value rounded to bf16 (its derivative kept).
#[inline(always)]
fn bf16(f: impl Fn(f32) -> (f32, f32) + Sync) -> impl Fn(f32) -> (f32, f32) + Sync {
    move |g| {
        let (a, da) = f(g);
        (round_bf16(a), da)
    }
}

fn gated_with(f: impl Fn(f32) -> (f32, f32) + Sync, gate: &[f32], up: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; gate.len()];
    out.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .for_each(|(o, (g, u))| {
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = f(g).0 * u;
            }
        });
    out
}

/// Backward of [`gated`]: `(d gate, d up)` from `d out`.
pub(super) fn gated_backward(
    act: Activation,
    p: Precision,
    gate: &[f32],
    up: &[f32],
    dout: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    match (act, p) {
        (Activation::Silu, Precision::F32) => gated_backward_with(silu_and_grad, gate, up, dout),
        (Activation::Silu, Precision::Bf16) => {
            gated_backward_with(bf16(silu_and_grad), gate, up, dout)
        }
        (Activation::GeluTanh | Activation::Gelu, Precision::F32) => {
            gated_backward_with(gelu_tanh_and_grad, gate, up, dout)
        }
        (Activation::GeluTanh | Activation::Gelu, Precision::Bf16) => {
            gated_backward_with(bf16(gelu_tanh_and_grad), gate, up, dout)
        }
    }
}

fn gated_backward_with(
    f: impl Fn(f32) -> (f32, f32) + Sync,
    gate: &[f32],
    up: &[f32],
    dout: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let mut dg = vec![0f32; gate.len()];
    let mut du = vec![0f32; gate.len()];
    dg.par_chunks_mut(CHUNK)
        .zip(du.par_chunks_mut(CHUNK))
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .zip(dout.par_chunks(CHUNK))
        .for_each(|(((dg, du), (g, u)), d)| {
            for ((((dg, du), &g), &u), &d) in dg.iter_mut().zip(du).zip(g).zip(u).zip(d) {
                let (a, da) = f(g);
                *dg = d * u * da;
                *du = d * a;
            }
        });
    (dg, du)
}

/// RoPE tables on the host: `cos`, `sin` `[rows, rotary_dim]`, one row per token.
#[derive(Debug)]
pub(super) struct RopeTables {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub dim: usize,
}

impl RopeTables {
    /// Rotates the first `dim` channels of every head of every token row in place, or applies
    /// the transposed rotation (the backward pass) with `inverse`.
    ///
    /// # Shapes
    /// - x: `[rows, heads · head_dim]`
    pub fn rotate(&self, x: &mut [f32], head_dim: usize, inverse: bool) {
        let (rd, half) = (self.dim, self.dim / 2);
        let width = x.len() / (self.cos.len() / rd).max(1);
        let sign = if inverse { -1.0 } else { 1.0 };
        x.par_chunks_mut(width).enumerate().for_each(|(row, xr)| {
            let c = &self.cos[row * rd..][..rd];
            let s = &self.sin[row * rd..][..rd];
            for h in xr.chunks_exact_mut(head_dim) {
                for i in 0..half {
                    let (a, b) = (h[i], h[i + half]);
                    // forward: [a c - b s, b c + a s]; inverse: the transpose.
                    h[i] = a * c[i] - sign * b * s[i];
                    h[i + half] = b * c[i + half] + sign * a * s[i + half];
                }
            }
        });
    }
}
