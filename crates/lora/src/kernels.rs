//! `x · W (+ b)` for kiln's layers: the host products of [`kiln_cpu::host`] where the tensors
//! allow them (burn's CPU backend outside autodiff: inference, evaluation and generation), burn's
//! ops elsewhere. Training keeps burn's `matmul`, whose backward autodiff records (products by a
//! frozen matrix are an autodiff operation of their own, `frozen_op.rs`); other backends (wgpu,
//! cuda) keep theirs.

use crate::base::Frozen;
use burn::tensor::Tensor;
use kiln_cpu::Precision;

/// `x · w (+ bias)`: burn's [`linear`](burn::tensor::module::linear) with a faster CPU path.
///
/// # Shapes
/// - x: `[..., d_in]`
/// - w: `[d_in, d_out]` (any strides: a transposed view is read in place)
/// - bias: `[d_out]`
/// - output: `[..., d_out]`
pub fn linear<const D: usize>(x: Tensor<D>, w: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<D> {
    linear_in(x, w, bias, Precision::F32)
}

/// [`linear`] in `precision`: with [`Precision::Bf16`] the CPU path rounds the input to bf16,
/// multiplies on the bf16 kernel (the weight rounded as it is packed; products of fewer than 16
/// rows run the f32 product on the rounded input) and rounds the result, as a bf16 `nn.Linear`
/// does. Other backends and autodiff keep f32.
///
/// # Shapes
/// As [`linear`].
pub fn linear_in<const D: usize>(
    x: Tensor<D>,
    w: Tensor<2>,
    bias: Option<Tensor<1>>,
    precision: Precision,
) -> Tensor<D> {
    match try_linear_in(&x, &w, bias.as_ref(), precision) {
        Some(y) => y,
        None => burn::tensor::module::linear(x, w, bias),
    }
}

/// `x · Wᵀ (+ bias)` by a frozen matrix `W` (`[out, in]`) kept in its storage format. On burn's
/// CPU backend the products dequantize tiles on the fly ([`kiln_cpu::QMatrix::matmul_t`]);
/// elsewhere the weight is dequantized for this call into a tensor on the input's device and
/// dropped afterwards. Under autodiff the product is one operation whose backward pass
/// re-dequantizes `W` for `dy · W`: the graph keeps neither `W` in f32 nor `x`, and computes no
/// gradient for `W` (see `frozen_op.rs`).
///
/// # Shapes
/// - x: `[..., in]`
/// - output: `[..., out]`
pub fn frozen_linear<const D: usize>(
    x: Tensor<D>,
    w: &Frozen,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    frozen_linear_in(x, w, bias, Precision::F32)
}

/// [`frozen_linear`] in `precision`: with [`Precision::Bf16`] the CPU path rounds the input,
/// multiplies each dequantized tile rounded to bf16 on the bf16 kernel and rounds the result
/// (decoding's products of up to 4 rows take their dot products from the stored codes on the
/// rounded input). Other backends and autodiff keep f32.
///
/// # Shapes
/// As [`frozen_linear`].
#[allow(unused_variables)]
pub fn frozen_linear_in<const D: usize>(
    x: Tensor<D>,
    w: &Frozen,
    bias: Option<Tensor<1>>,
    precision: Precision,
) -> Tensor<D> {
    #[cfg(feature = "cpu")]
    if let Some(y) = kiln_cpu::host::try_frozen_linear(&x, w.matrix(), bias.as_ref(), precision) {
        return y;
    }
    let y = crate::frozen_op::product(x, w.handle());
    match bias {
        Some(b) => y + b.unsqueeze::<D>(),
        None => y,
    }
}

/// [`linear`]'s fast path alone: `None` when it does not apply (autodiff, another backend or
/// dtype, mismatched shapes), and the caller uses burn's ops.
pub fn try_linear<const D: usize>(
    x: &Tensor<D>,
    w: &Tensor<2>,
    bias: Option<&Tensor<1>>,
) -> Option<Tensor<D>> {
    try_linear_in(x, w, bias, Precision::F32)
}

/// [`try_linear`] in `precision` (see [`linear_in`]).
#[allow(unused_variables)]
pub fn try_linear_in<const D: usize>(
    x: &Tensor<D>,
    w: &Tensor<2>,
    bias: Option<&Tensor<1>>,
    precision: Precision,
) -> Option<Tensor<D>> {
    #[cfg(feature = "cpu")]
    {
        kiln_cpu::host::try_linear(x, w, bias, precision)
    }
    #[cfg(not(feature = "cpu"))]
    {
        None
    }
}

/// One adapter's share of a routed forward ([`try_routed`]).
pub(crate) struct RoutedTerm<'a> {
    /// A `[in, r]`.
    pub a: Tensor<2>,
    /// B `[r, out]`.
    pub b: Tensor<2>,
    pub scale: f64,
    /// Each row's weight of this adapter (0: the row does not use it).
    pub weights: &'a [f32],
}

/// `y + Σ_terms w_row · scale · (x A) B` on the host, each term over only the rows that use it,
/// or `None` when this path does not apply (autodiff, another backend, shapes).
///
/// Why: a served batch routes each row through its own adapters. With burn's ops every adapter
/// ran its low-rank path on every row and was masked by a per-row weight afterwards, half a
/// dozen tensor operations per projection; one client with an adapter decoded at 42 tokens/s
/// against 115 on the base (SmolLM2, 210 projections per token).
///
/// # Shapes
/// - y: `[b, ..., out]`, x: `[b, ..., in]`, each `weights`: `[b]`
#[allow(unused_variables)]
pub(crate) fn try_routed<const D: usize>(
    y: &Tensor<D>,
    x: &Tensor<D>,
    terms: &[RoutedTerm<'_>],
) -> Option<Tensor<D>> {
    #[cfg(feature = "cpu")]
    {
        host::routed(y, x, terms)
    }
    #[cfg(not(feature = "cpu"))]
    {
        None
    }
}

#[cfg(feature = "cpu")]
mod host {
    use super::RoutedTerm;
    use burn::tensor::Tensor;
    use kiln_cpu::host::{Storage, tensor};
    use kiln_cpu::{MatMut, MatRef, Threads, matmul};

    pub(super) fn routed<const D: usize>(
        y: &Tensor<D>,
        x: &Tensor<D>,
        terms: &[RoutedTerm<'_>],
    ) -> Option<Tensor<D>> {
        let (xs, ys) = (Storage::of(x)?, Storage::of(y)?);
        let (xv, yv) = (xs.view(), ys.view());
        let (shape, yshape) = (xv.shape().to_vec(), yv.shape().to_vec());
        let (din, dout, rows) = (*shape.last()?, *yshape.last()?, *shape.first()?);
        if rows == 0 || shape[..D - 1] != yshape[..D - 1] {
            return None;
        }
        let per_row = shape[..D - 1].iter().product::<usize>() / rows;
        let (xc, yc) = (xv.as_standard_layout(), yv.as_standard_layout());
        let xx = xc.as_slice()?;
        let mut out = yc.as_slice()?.to_vec();
        for term in terms {
            let (a, b) = (Storage::of(&term.a)?, Storage::of(&term.b)?);
            let (av, bv) = (a.view(), b.view());
            let (am, bm) = (MatRef::of_view(&av)?, MatRef::of_view(&bv)?);
            let rank = av.shape()[1];
            if av.shape() != [din, rank] || bv.shape() != [rank, dout] || term.weights.len() != rows
            {
                return None;
            }
            let used: Vec<usize> = (0..rows).filter(|&r| term.weights[r] != 0.0).collect();
            let m = used.len() * per_row;
            if m == 0 {
                continue;
            }
            let mut xu = Vec::with_capacity(m * din);
            for &r in &used {
                xu.extend_from_slice(&xx[r * per_row * din..][..per_row * din]);
            }
            let mut h = vec![0f32; m * rank];
            let xm = MatRef::new(&xu, m, din);
            matmul(
                MatMut::new(&mut h, m, rank),
                xm,
                am,
                1.0,
                false,
                Threads::All,
            );
            // As the tensor path: (x A) · scale, then · B, then · the row's weight (skipped at 1).
            let scale = term.scale as f32;
            h.iter_mut().for_each(|v| *v *= scale);
            let mut d = vec![0f32; m * dout];
            let hm = MatRef::new(&h, m, rank);
            matmul(
                MatMut::new(&mut d, m, dout),
                hm,
                bm,
                1.0,
                false,
                Threads::All,
            );
            for (i, &r) in used.iter().enumerate() {
                let w = term.weights[r];
                let dst = &mut out[r * per_row * dout..][..per_row * dout];
                let src = &d[i * per_row * dout..][..per_row * dout];
                if w == 1.0 {
                    dst.iter_mut().zip(src).for_each(|(o, v)| *o += v);
                } else {
                    dst.iter_mut().zip(src).for_each(|(o, v)| *o += v * w);
                }
            }
        }
        tensor(&yshape, out)
    }
}
