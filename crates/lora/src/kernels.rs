//! Matrix products by a frozen weight, on burn's CPU backend through the `gemm` crate.
//!
//! Why not burn's `matmul`: burn-ndarray multiplies through `matrixmultiply`, which packs the
//! whole right-hand matrix on every call. For the one-row products of decoding that packing costs
//! more than the product, and its 8-row micro-kernel wastes 7/8 of its work; a transposed operand
//! (a tied `lm_head` reading the `[vocab, hidden]` embedding) is first copied whole. `gemm` reads
//! any strides, has matrix-vector paths and splits the work over rayon's threads. `cargo bench
//! --bench lora_layer` (`frozen linear`) measures both.
//!
//! Only tensors outside autodiff on the ndarray backend take this path: inference, evaluation
//! and generation. Training keeps burn's `matmul`, whose backward autodiff records (products by
//! a frozen matrix are an autodiff operation of their own, `frozen_op.rs`); other backends
//! (wgpu, cuda) keep theirs.

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
    if let Some(y) = cpu::frozen_linear(&x, w.matrix(), bias.as_ref(), precision) {
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
        cpu::linear(x, w, bias, precision)
    }
    #[cfg(not(feature = "cpu"))]
    {
        None
    }
}

// burn 0.22 deprecates burn-ndarray in favour of burn-flex, but ndarray is kiln's default CPU
// backend: flex measured slower here (README, "Backends").
#[cfg(feature = "cpu")]
#[allow(deprecated)]
mod cpu {
    use crate::host::{storage, tensor, view};
    use burn::tensor::Tensor;
    use kiln_cpu::bf16::matmul_bf16;
    use kiln_cpu::precision::round_bf16;
    use kiln_cpu::{MatMut, MatRef, Precision, Threads};

    /// Weights up to this many elements are copied to row-major when they are not.
    const SMALL_WEIGHT: usize = 1 << 16;

    /// `round(round(x) · w)` for `x` `[m, k]` row-major, on the bf16 kernel.
    fn bf16_product(x: &[f32], m: usize, k: usize, w: MatRef<'_>, n: usize) -> Vec<f32> {
        let xr: Vec<f32> = x.iter().map(|&v| round_bf16(v)).collect();
        let mut out = vec![0f32; m * n];
        if m > 0 && n > 0 && k > 0 {
            let dst = MatMut::new(&mut out, m, n);
            matmul_bf16(dst, MatRef::new(&xr, m, k), w, 1.0, false, Threads::All);
        }
        Precision::Bf16.round(&mut out);
        out
    }

    /// `out` (`[m, n]`) plus the bias, as a tensor of `x`'s leading shape and `n` columns.
    fn finish<const D: usize>(
        mut shape: Vec<usize>,
        mut out: Vec<f32>,
        bias: Option<burn_ndarray::NdArrayTensor>,
        n: usize,
    ) -> Option<Tensor<D>> {
        if let Some(b) = bias {
            let bv = view(&b);
            let bc = bv.as_standard_layout();
            let b = bc.as_slice()?;
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

    pub(super) fn linear<const D: usize>(
        x: &Tensor<D>,
        w: &Tensor<2>,
        bias: Option<&Tensor<1>>,
        precision: Precision,
    ) -> Option<Tensor<D>> {
        let (xs, ws) = (storage(x)?, storage(w)?);
        let bias = match bias {
            Some(b) => Some(storage(b)?),
            None => None,
        };
        let (xv, wv) = (view(&xs), view(&ws));
        let (k, n) = (wv.shape()[0], wv.shape()[1]);
        let x_shape = xv.shape().to_vec();
        if x_shape.last() != Some(&k) {
            return None; // let burn report the shape error
        }
        let m = x_shape[..D - 1].iter().product::<usize>();
        let xc = xv.as_standard_layout();
        let lhs = xc.as_slice()?;
        if precision == Precision::Bf16 {
            let wd = wv.view().into_dyn();
            let out = bf16_product(lhs, m, k, MatRef::of_view(&wd)?, n);
            return finish(x_shape, out, bias, n);
        }
        // gemm's summation order follows the weight's layout, so the same values stored
        // transposed could round differently. Small weights (adapters) are made row-major, so
        // an adapter gives bit-identical outputs however it was built or loaded; large ones
        // (a tied head read through the embedding) are read in place.
        let small = wv.len() <= SMALL_WEIGHT;
        let wv = if small && !wv.is_standard_layout() {
            wv.as_standard_layout()
        } else {
            ndarray::CowArray::from(wv)
        };
        let (w_rs, w_cs) = (wv.strides()[0], wv.strides()[1]);
        let mut out = vec![0f32; m * n];
        if m > 0 && n > 0 && k > 0 {
            // SAFETY: `lhs` holds m·k contiguous rows, `wv` is a live [k, n] view whose element
            // strides are `w_rs`, `w_cs`, and `out` holds m·n row-major outputs; gemm reads and
            // writes within those bounds only.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    out.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    lhs.as_ptr(),
                    1,
                    k as isize,
                    wv.as_ptr(),
                    w_cs,
                    w_rs,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(rayon::current_num_threads()),
                );
            }
        }
        finish(x_shape, out, bias, n)
    }

    pub(super) fn frozen_linear<const D: usize>(
        x: &Tensor<D>,
        w: &kiln_cpu::QMatrix,
        bias: Option<&Tensor<1>>,
        precision: Precision,
    ) -> Option<Tensor<D>> {
        let xs = storage(x)?;
        let bias = match bias {
            Some(b) => Some(crate::host::to_vec(b)?),
            None => None,
        };
        let xv = view(&xs);
        let (k, n) = (w.cols(), w.rows());
        let x_shape = xv.shape().to_vec();
        if x_shape.last() != Some(&k) || bias.as_ref().is_some_and(|b| b.len() != n) {
            return None; // burn's path reports the shape error
        }
        let m = x_shape[..D - 1].iter().product::<usize>();
        let xc = xv.as_standard_layout();
        let mut out = vec![0f32; m * n];
        match precision {
            Precision::F32 => w.matmul_t(xc.as_slice()?, m, &mut out, false, Precision::F32),
            Precision::Bf16 => {
                let xr: Vec<f32> = xc.iter().map(|&v| round_bf16(v)).collect();
                // Decoding (a few rows): dot products from the stored codes (`dots.rs`).
                let p = if m <= 4 {
                    Precision::F32
                } else {
                    Precision::Bf16
                };
                w.matmul_t(&xr, m, &mut out, false, p);
                Precision::Bf16.round(&mut out);
            }
        }
        if let Some(b) = bias {
            for row in out.chunks_exact_mut(n) {
                row.iter_mut().zip(&b).for_each(|(y, b)| *y += b);
            }
        }
        let mut shape = x_shape;
        shape[D - 1] = n;
        tensor(&shape, out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec::<f32>().unwrap()
    }

    /// The fast path is taken and equals burn's product, for plain and transposed weights, with
    /// and without bias, for one row (decoding) and many.
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
                    #[cfg(feature = "cpu")]
                    assert!(cpu::linear(&x, &w, b.as_ref(), Precision::F32).is_some());
                    let want = host(burn::tensor::module::linear(
                        x.clone(),
                        w.clone(),
                        b.clone(),
                    ));
                    let got = linear(x.clone(), w.clone(), b);
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
}
