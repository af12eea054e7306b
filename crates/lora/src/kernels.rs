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
