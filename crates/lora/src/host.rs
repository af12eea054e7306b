//! Host views of burn's CPU tensors, shared by kiln's CPU kernels (inference in
//! [`crate::kernels`], the fused backward pass in [`crate::backprop`] and in `kiln-models`); the
//! strided matrices and the product itself are in `kiln_cpu::gemm`.
//!
//! A tensor on the ndarray backend (after [`Tensor::inner`] when it lives on an autodiff device)
//! is an `Arc`'d array: reading it here copies nothing.
// burn 0.22 deprecates burn-ndarray in favour of burn-flex, but ndarray is kiln's default CPU
// backend: flex measured slower here (README, "Backends").
#![allow(deprecated)]

use burn::backend::NdArray;
use burn::tensor::Tensor;
use burn_ndarray::NdArrayTensor;
use ndarray::{ArcArray, ArrayView, IxDyn};

/// The f32 primitive of a tensor on the ndarray backend outside autodiff, else `None` (an
/// autodiff tensor must keep to burn's ops, which record the backward pass).
pub fn storage<const D: usize>(t: &Tensor<D>) -> Option<NdArrayTensor> {
    let p = t.clone().try_into_primitive::<NdArray>().ok()?;
    matches!(p, NdArrayTensor::F32(_)).then_some(p)
}

/// The f32 primitive of a tensor on the ndarray backend, autodiff or not: its values only, for
/// code that computes gradients itself.
pub fn values<const D: usize>(t: &Tensor<D>) -> Option<NdArrayTensor> {
    storage(&t.clone().inner())
}

/// The array view of an f32 primitive from [`storage`].
pub fn view(p: &NdArrayTensor) -> ArrayView<'_, f32, IxDyn> {
    match p {
        NdArrayTensor::F32(s) => s.view(),
        _ => unreachable!("`storage` keeps f32 tensors only"),
    }
}

/// A tensor's values, row-major, copied to the host (for small tensors: adapters, norms).
pub fn to_vec<const D: usize>(t: &Tensor<D>) -> Option<Vec<f32>> {
    let p = values(t)?;
    Some(view(&p).iter().copied().collect())
}

/// Takes a tensor on the ndarray backend outside autodiff and returns its values row-major,
/// without a copy when the tensor owns its buffer alone in row-major order (else copied once).
/// `None` for any other backend or dtype.
pub fn into_vec<const D: usize>(t: Tensor<D>) -> Option<Vec<f32>> {
    let NdArrayTensor::F32(s) = t.try_into_primitive::<NdArray>().ok()? else {
        return None;
    };
    let array = s.into_owned().into_owned();
    if array.is_standard_layout() {
        // Row-major: the values are `n` consecutive elements of the buffer from the offset.
        let n = array.len();
        let (mut data, offset) = array.into_raw_vec_and_offset();
        data.drain(..offset.unwrap_or(0).min(data.len()));
        data.truncate(n);
        return Some(data);
    }
    Some(array.iter().copied().collect())
}

/// A tensor of `shape` on the ndarray backend holding `data` (row-major).
pub fn tensor<const D: usize>(shape: &[usize], data: Vec<f32>) -> Option<Tensor<D>> {
    let array = ArcArray::from_shape_vec(IxDyn(shape), data).ok()?;
    Some(Tensor::from_primitive::<NdArray>(NdArrayTensor::from(
        array,
    )))
}
