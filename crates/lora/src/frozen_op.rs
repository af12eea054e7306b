//! The product by a frozen matrix as one autodiff operation: burn's tensor path (training on any
//! backend) multiplies by a quantized base without keeping its f32 values.
//!
//! Why an operation of its own: written with burn's ops, `x · dequantize(W)ᵀ` makes autodiff's
//! matmul checkpoint the dequantized `W` for the input's gradient `dy · W`, so every layer's
//! weight lives in f32 from its forward until its backward, the whole base at once (the tied
//! head of Gemma-2-2B alone is 2.4 GB in f32). This operation records a handle on the stored
//! matrix instead: the forward dequantizes `W` for the call and drops it, the backward computes
//! `dx = dy · W` dequantizing it again, and `W` is no input of the graph, so no gradient of it
//! exists. The input `x` is not kept either (the backward does not read it). On burn's ndarray
//! backend both products dequantize a tile of rows at a time ([`QMatrix::matmul_t`],
//! [`QMatrix::matmul`]), so not even one layer's weight is widened whole; other backends (wgpu,
//! cuda) get the layer's weight dequantized on their device for one product.
//!
//! burn 0.22 dispatches a `Tensor` to its backend at run time; the operation is written once for
//! `Autodiff<B, C>` with burn-autodiff's public [`Backward`] trait (as burn's own ops are) and
//! [`product`] picks `B` (ndarray, cube) and the checkpointing strategy `C` from the tensor.
//! Marked compute-bound, the operation composes with gradient checkpointing: its output is kept
//! when a later operation needs it, never recomputed.
// burn 0.22 deprecates burn-ndarray in favour of burn-flex, but ndarray is kiln's default CPU
// backend: flex measured slower here (README, "Backends").
#![allow(deprecated)]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, DType, TensorData, TensorMetadata};
use burn::tensor::Tensor;
use kiln_cpu::QMatrix;
use std::sync::Arc;

/// A backend's products by a frozen matrix `W` (`[n, k]`, PyTorch's layout). The default bodies
/// dequantize `W` whole on the tensor's device for the call; burn's ndarray backend overrides
/// them with kiln's tile kernels.
pub(crate) trait FrozenProduct: Backend {
    /// `y = x · Wᵀ`.
    ///
    /// # Shapes
    /// - x: `[m, k]` -> `[m, n]`
    fn frozen_matmul_t(x: FloatTensor<Self>, w: &QMatrix) -> FloatTensor<Self> {
        dense_matmul_t::<Self>(x, w)
    }

    /// `dx = dy · W`, the input gradient of [`Self::frozen_matmul_t`].
    ///
    /// # Shapes
    /// - dy: `[m, n]` -> `[m, k]`
    fn frozen_matmul(dy: FloatTensor<Self>, w: &QMatrix) -> FloatTensor<Self> {
        dense_matmul::<Self>(dy, w)
    }
}

/// `x · Wᵀ` by burn's product, `W` dequantized whole for the call.
fn dense_matmul_t<B: Backend>(x: FloatTensor<B>, w: &QMatrix) -> FloatTensor<B> {
    let wt = B::float_transpose(dequantized::<B>(w, &x));
    B::float_matmul(x, wt)
}

/// `dy · W` by burn's product, `W` dequantized whole for the call.
fn dense_matmul<B: Backend>(dy: FloatTensor<B>, w: &QMatrix) -> FloatTensor<B> {
    let wd = dequantized::<B>(w, &dy);
    B::float_matmul(dy, wd)
}

/// `W` (`[n, k]`) dequantized on the device and in the float type of `like`.
fn dequantized<B: Backend>(w: &QMatrix, like: &FloatTensor<B>) -> FloatTensor<B> {
    let t = B::float_from_data(TensorData::new(w.to_f32(), w.shape()), &like.device());
    match like.dtype() {
        DType::F32 => t,
        other => B::float_cast(t, other.into()),
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl FrozenProduct for burn::backend::Cube {}

#[cfg(feature = "cpu")]
impl FrozenProduct for burn::backend::NdArray {
    fn frozen_matmul_t(x: FloatTensor<Self>, w: &QMatrix) -> FloatTensor<Self> {
        let (k, n) = (w.cols(), w.rows());
        match kiln_cpu::host::primitive_product(&x, k, n, |x, m, y| {
            w.matmul_t(x, m, y, false, kiln_cpu::Precision::F32)
        }) {
            Some(y) => y,
            None => dense_matmul_t::<Self>(x, w),
        }
    }

    fn frozen_matmul(dy: FloatTensor<Self>, w: &QMatrix) -> FloatTensor<Self> {
        let (k, n) = (w.cols(), w.rows());
        match kiln_cpu::host::primitive_product(&dy, n, k, |dy, m, dx| {
            w.matmul(dy, m, dx, false, kiln_cpu::Precision::F32)
        }) {
            Some(dx) => dx,
            None => dense_matmul::<Self>(dy, w),
        }
    }
}

/// The backward step: `dx = dy · W`, nothing for `W`.
#[derive(Debug)]
struct FrozenBackward;

impl<B: FrozenProduct> Backward<B, 1> for FrozenBackward {
    /// The stored matrix (a shared handle: nothing is copied or widened).
    type State = Arc<QMatrix>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let w = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |dy| B::frozen_matmul(dy, &w));
    }
}

/// Records `x · Wᵀ` on the graph of `Autodiff<B, C>`.
fn autodiff_product<B: FrozenProduct, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    w: &Arc<QMatrix>,
) -> FloatTensor<Autodiff<B, C>> {
    let (x, node) = x.into_parts();
    let prep = <FrozenBackward as Backward<B, 1>>::prepare::<C>(FrozenBackward, [node]);
    match prep.compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(Arc::clone(w), B::frozen_matmul_t(x, w)),
        OpsKind::UnTracked(prep) => prep.finish(B::frozen_matmul_t(x, w)),
    }
}

/// `x · Wᵀ` by a frozen matrix `W` (`[out, in]`): one autodiff operation on an autodiff
/// device (see the module's doc), burn's product by `W` dequantized for this call elsewhere.
///
/// # Shapes
/// - x: `[..., in]`
/// - output: `[..., out]`
pub(crate) fn product<const D: usize>(x: Tensor<D>, w: &Arc<QMatrix>) -> Tensor<D> {
    let dims = x.dims();
    let (k, n) = (w.cols(), w.rows());
    let mut out = dims;
    out[D - 1] = n;
    if dims[D - 1] != k {
        // burn's product reports the shape error.
        let wt = Tensor::<2>::from_data(TensorData::new(w.to_f32(), w.shape()), &x.device());
        return burn::tensor::module::linear(x, wt.transpose(), None);
    }
    let m = dims[..D - 1].iter().product::<usize>();
    product_2d(x.reshape([m, k]), w).reshape(out)
}

/// [`product`] on `[m, k]`: tries each backend and checkpointing strategy kiln builds with.
fn product_2d(x: Tensor<2>, w: &Arc<QMatrix>) -> Tensor<2> {
    macro_rules! on {
        ($b:ty) => {
            if let Ok(p) = x
                .clone()
                .try_into_primitive::<Autodiff<$b, NoCheckpointing>>()
            {
                return Tensor::from_primitive::<Autodiff<$b, NoCheckpointing>>(
                    autodiff_product::<$b, NoCheckpointing>(p, w),
                );
            }
            if let Ok(p) = x
                .clone()
                .try_into_primitive::<Autodiff<$b, BalancedCheckpointing>>()
            {
                return Tensor::from_primitive::<Autodiff<$b, BalancedCheckpointing>>(
                    autodiff_product::<$b, BalancedCheckpointing>(p, w),
                );
            }
            if let Ok(p) = x.clone().try_into_primitive::<$b>() {
                return Tensor::from_primitive::<$b>(<$b>::frozen_matmul_t(p, w));
            }
        };
    }
    #[cfg(feature = "cpu")]
    on!(burn::backend::NdArray);
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    on!(burn::backend::Cube);
    // Another backend (LibTorch, Flex): burn's product, whose graph keeps the weight.
    let wt = Tensor::<2>::from_data(TensorData::new(w.to_f32(), w.shape()), &x.device());
    x.matmul(wt.transpose())
}
