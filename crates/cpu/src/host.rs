//! Host views of burn's CPU tensors, and the products kiln runs on them in place of burn's.
//!
//! A tensor on the ndarray backend (after [`Tensor::inner`] when it lives on an autodiff device)
//! is an `Arc`'d array: reading it here copies nothing. [`Storage`] is that array as kiln's
//! kernels hold it (inference in `kiln-lora` and `kiln-models`, the fused backward pass, AdamW);
//! this module is the only place that names burn-ndarray's types.
//!
//! [`try_linear`] and [`try_frozen_linear`] are `x · W (+ b)` on these views through the one
//! product of [`crate::matmul`] (or the bf16 kernel), for the tensors outside autodiff that
//! inference, evaluation and generation pass; `None` sends the caller to burn's ops.
//!
//! Why not burn's `matmul`: burn-ndarray multiplies through `matrixmultiply`, which packs the
//! whole right-hand matrix on every call. For the one-row products of decoding that packing costs
//! more than the product, and its 8-row micro-kernel wastes 7/8 of its work; a transposed operand
//! (a tied `lm_head` reading the `[vocab, hidden]` embedding) is first copied whole. `cargo bench
//! --bench lora_layer` (`frozen linear`) measures both.
// burn 0.22 deprecates burn-ndarray in favour of burn-flex, but ndarray is kiln's default CPU
// backend: flex measured slower here (README, "Backends").
#![allow(deprecated)]

use crate::gemm::{MatMut, MatRef, Threads, matmul};
use crate::precision::Precision;
use crate::quant::QMatrix;
use burn::backend::NdArray;
use burn::backend::tensor::FloatTensor;
use burn::tensor::Tensor;
use burn_ndarray::NdArrayTensor;
use ndarray::{ArcArray, ArrayView, IxDyn};

/// The f32 values of a tensor on burn's ndarray backend, shared with it (a clone of its
/// `Arc`'d array, no copy).
#[derive(Debug, Clone)]
pub struct Storage(NdArrayTensor);

impl Storage {
    /// `t`'s values when it is an f32 tensor on the ndarray backend outside autodiff, else
    /// `None` (an autodiff tensor must keep to burn's ops, which record the backward pass).
    pub fn of<const D: usize>(t: &Tensor<D>) -> Option<Self> {
        let p = t.clone().try_into_primitive::<NdArray>().ok()?;
        matches!(p, NdArrayTensor::F32(_)).then_some(Self(p))
    }

    /// `t`'s values on the ndarray backend, autodiff or not: for code that computes gradients
    /// itself.
    pub fn values<const D: usize>(t: &Tensor<D>) -> Option<Self> {
        Self::of(&t.clone().inner())
    }

    /// The values as an array view (any strides).
    pub fn view(&self) -> ArrayView<'_, f32, IxDyn> {
        match &self.0 {
            NdArrayTensor::F32(s) => s.view(),
            _ => unreachable!("`Storage` holds f32 tensors only"),
        }
    }

    /// Whether `self` and `other` are the same buffer seen the same way.
    pub fn same(&self, other: &Self) -> bool {
        let (a, b) = (self.view(), other.view());
        a.as_ptr() == b.as_ptr() && a.shape() == b.shape() && a.strides() == b.strides()
    }

    /// Whether this is the only holder of the buffer (its tensor was dropped or replaced).
    pub fn is_unique(&self) -> bool {
        match &self.0 {
            NdArrayTensor::F32(s) => s.is_unique(),
            _ => false,
        }
    }
}

/// burn's ndarray device, the one these views read (kiln's CPU device).
pub fn device() -> burn::tensor::Device {
    burn::tensor::Device::ndarray()
}

/// A tensor's values, row-major, copied to the host (for small tensors: adapters, norms).
pub fn to_vec<const D: usize>(t: &Tensor<D>) -> Option<Vec<f32>> {
    Some(Storage::values(t)?.view().iter().copied().collect())
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
    Some(Tensor::from_primitive::<NdArray>(primitive(shape, data)?))
}

/// The ndarray backend's primitive of `shape` holding `data` (row-major).
fn primitive(shape: &[usize], data: Vec<f32>) -> Option<NdArrayTensor> {
    let array = ArcArray::from_shape_vec(IxDyn(shape), data).ok()?;
    Some(NdArrayTensor::from(array))
}

/// `f(lhs, m, out)` on the host for a backend primitive holding an f32 matrix `[m, k]`, giving
/// the `[m, n]` primitive `out`; `None` for another dtype or shape (the caller takes burn's
/// ops). For autodiff operations of their own (`kiln-lora`'s products by a frozen matrix).
pub fn primitive_product(
    lhs: &FloatTensor<NdArray>,
    k: usize,
    n: usize,
    f: impl FnOnce(&[f32], usize, &mut [f32]),
) -> Option<FloatTensor<NdArray>> {
    let NdArrayTensor::F32(s) = lhs else {
        return None;
    };
    let v = s.view();
    let [m, cols] = v.shape() else {
        return None;
    };
    if *cols != k {
        return None;
    }
    let m = *m;
    let c = v.as_standard_layout();
    let mut out = vec![0f32; m * n];
    f(c.as_slice()?, m, &mut out);
    primitive(&[m, n], out)
}

/// Weights up to this many elements are copied to row-major when they are not.
const SMALL_WEIGHT: usize = 1 << 16;

/// `x · w (+ bias)` on the host, or `None` when this path does not apply (autodiff, another
/// backend or dtype, mismatched shapes: burn's `linear` then runs and reports errors). With
/// [`Precision::Bf16`] the input is rounded to bf16, multiplied on the bf16 kernel (the weight
/// rounded as it is packed) and the result rounded, as a bf16 `nn.Linear` does.
///
/// # Shapes
/// - x: `[..., d_in]`
/// - w: `[d_in, d_out]` (any strides: a transposed view is read in place)
/// - bias: `[d_out]`
/// - output: `[..., d_out]`
pub fn try_linear<const D: usize>(
    x: &Tensor<D>,
    w: &Tensor<2>,
    bias: Option<&Tensor<1>>,
    precision: Precision,
) -> Option<Tensor<D>> {
    let (xs, ws) = (Storage::of(x)?, Storage::of(w)?);
    let bias = match bias {
        Some(b) => Some(Storage::of(b)?),
        None => None,
    };
    let (xv, wv) = (xs.view(), ws.view());
    let (k, n) = (wv.shape()[0], wv.shape()[1]);
    let x_shape = xv.shape().to_vec();
    if x_shape.last() != Some(&k) {
        return None;
    }
    let m = x_shape[..D - 1].iter().product::<usize>();
    let xc = xv.as_standard_layout();
    let lhs = xc.as_slice()?;
    let mut out = vec![0f32; m * n];
    if precision == Precision::Bf16 {
        let xr = Precision::Bf16.input(lhs);
        if m > 0 && n > 0 && k > 0 {
            let dst = MatMut::new(&mut out, m, n);
            let w = MatRef::of_view(&wv)?;
            crate::bf16::matmul_bf16(dst, MatRef::new(&xr, m, k), w, 1.0, false, Threads::All);
        }
        Precision::Bf16.round(&mut out);
    } else {
        // gemm's summation order follows the weight's layout, so the same values stored
        // transposed could round differently. Small weights (adapters) are made row-major, so
        // an adapter gives bit-identical outputs however it was built or loaded; large ones
        // (a tied head read through the embedding) are read in place.
        let wv = if wv.len() <= SMALL_WEIGHT && !wv.is_standard_layout() {
            wv.as_standard_layout()
        } else {
            ndarray::CowArray::from(wv)
        };
        let wv = wv.view();
        let w = MatRef::of_view(&wv)?;
        matmul(
            MatMut::new(&mut out, m, n),
            MatRef::new(lhs, m, k),
            w,
            1.0,
            false,
            Threads::All,
        );
    }
    let bias = match &bias {
        Some(b) => {
            let bv = b.view();
            let bc = bv.as_standard_layout();
            Some(bc.as_slice()?.to_vec())
        }
        None => None,
    };
    finish(x_shape, out, bias.as_deref(), n)
}

/// `x · Wᵀ (+ bias)` by a frozen matrix `W` (`[out, in]`) in its storage format, on the host
/// ([`QMatrix::matmul_t`]); `None` as for [`try_linear`]. With [`Precision::Bf16`] the input is
/// rounded, each dequantized tile rounded to bf16 and multiplied on the bf16 kernel, and the
/// result rounded (decoding's products of up to 4 rows take their dot products from the stored
/// codes on the rounded input).
///
/// # Shapes
/// - x: `[..., in]`
/// - output: `[..., out]`
pub fn try_frozen_linear<const D: usize>(
    x: &Tensor<D>,
    w: &QMatrix,
    bias: Option<&Tensor<1>>,
    precision: Precision,
) -> Option<Tensor<D>> {
    let xs = Storage::of(x)?;
    let bias = match bias {
        Some(b) => Some(to_vec(b)?),
        None => None,
    };
    let xv = xs.view();
    let (k, n) = (w.cols(), w.rows());
    let x_shape = xv.shape().to_vec();
    if x_shape.last() != Some(&k) || bias.as_ref().is_some_and(|b| b.len() != n) {
        return None;
    }
    let m = x_shape[..D - 1].iter().product::<usize>();
    let xc = xv.as_standard_layout();
    let mut out = vec![0f32; m * n];
    match precision {
        Precision::F32 => w.matmul_t(xc.as_slice()?, m, &mut out, false, Precision::F32),
        Precision::Bf16 => {
            // Rounded in one vectorised pass over the slice: through ndarray's element iterator
            // this copy took 10% of a bf16 forward's samples (perf, SmolLM2 1 × 256).
            let xr = Precision::Bf16.input(xc.as_slice()?);
            // Decoding (a few rows): dot products from the stored codes (`quant::dots`).
            let p = if m <= 4 {
                Precision::F32
            } else {
                Precision::Bf16
            };
            w.matmul_t(&xr, m, &mut out, false, p);
            Precision::Bf16.round(&mut out);
        }
    }
    finish(x_shape, out, bias.as_deref(), n)
}

/// `out` (`[m, n]`) plus the bias, as a tensor of `x`'s leading shape and `n` columns.
fn finish<const D: usize>(
    mut shape: Vec<usize>,
    mut out: Vec<f32>,
    bias: Option<&[f32]>,
    n: usize,
) -> Option<Tensor<D>> {
    if let Some(b) = bias {
        if b.len() != n {
            return None;
        }
        for row in out.chunks_exact_mut(n) {
            row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
        }
    }
    shape[D - 1] = n;
    tensor(&shape, out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec::<f32>().unwrap()
    }

    /// The host product is taken and equals burn's, for plain and transposed weights, with and
    /// without bias, for one row (decoding) and many.
    #[test]
    fn linear_equals_burn_linear() {
        let dev = Device::default();
        for rows in [1usize, 3, 70] {
            let x = Tensor::<3>::random([2, rows, 24], Distribution::Default, &dev);
            let w = Tensor::<2>::random([24, 40], Distribution::Default, &dev);
            let wt = Tensor::<2>::random([40, 24], Distribution::Default, &dev).transpose();
            let b = Tensor::<1>::random([40], Distribution::Default, &dev);
            for w in [w, wt] {
                for b in [None, Some(b.clone())] {
                    let want = host(burn::tensor::module::linear(
                        x.clone(),
                        w.clone(),
                        b.clone(),
                    ));
                    let got = try_linear(&x, &w, b.as_ref(), Precision::F32).unwrap();
                    assert_eq!(got.dims(), [2, rows, 40]);
                    let got = host(got);
                    let worst = got
                        .iter()
                        .zip(&want)
                        .map(|(g, w)| (g - w).abs())
                        .fold(0f32, f32::max);
                    assert!(worst < 1e-5, "rows {rows}: max |diff| {worst}");
                }
            }
        }
    }

    /// Round trips between tensors and host buffers keep values and shapes; a tensor under
    /// autodiff is not [`Storage::of`] but its [`Storage::values`] are.
    #[test]
    fn views_round_trip() {
        let t: Tensor<2> = tensor(&[2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap();
        assert_eq!(to_vec(&t).unwrap(), [1., 2., 3., 4., 5., 6.]);
        let s = Storage::of(&t).unwrap();
        assert!(s.same(&Storage::of(&t).unwrap()) && !s.is_unique());
        assert_eq!(
            into_vec(t.clone().transpose()).unwrap(),
            [1., 4., 2., 5., 3., 6.]
        );
        assert_eq!(into_vec(t).unwrap(), [1., 2., 3., 4., 5., 6.]);
        let dev = Device::default().autodiff();
        let a = Tensor::<1>::from_floats([1.0, 2.0], &dev).require_grad();
        assert!(Storage::of(&a).is_none());
        assert_eq!(Storage::values(&a).unwrap().view().len(), 2);
    }
}
