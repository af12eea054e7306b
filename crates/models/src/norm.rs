//! Root-mean-square layer normalisation.
use burn::module::{Module, Param};
use burn::tensor::Tensor;

/// RMSNorm: `x / sqrt(mean(x²) + eps) * weight`, computed in f32 as transformers does; with
/// `unit_offset` (Gemma) the scale is `1 + weight`, so a zero weight is the identity scale.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// Scale `[hidden]`, as stored in the checkpoint.
    pub weight: Param<Tensor<1>>,
    #[module(skip)]
    eps: f64,
    #[module(skip)]
    unit_offset: bool,
}

impl RmsNorm {
    /// A norm with the given scale `[hidden]`.
    pub fn new(weight: Tensor<1>, eps: f64) -> Self {
        Self::with_offset(weight, eps, false)
    }

    /// A norm scaling by `1 + weight` when `unit_offset` (Gemma's `GemmaRMSNorm`).
    pub fn with_offset(weight: Tensor<1>, eps: f64, unit_offset: bool) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            eps,
            unit_offset,
        }
    }

    /// The epsilon added to the mean square.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// Whether the scale is `1 + weight`.
    pub fn unit_offset(&self) -> bool {
        self.unit_offset
    }

    /// # Shapes
    /// - x: `[..., hidden]`
    /// - output: same as `x`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let w = self.weight.val();
        match crate::kernels::try_rms_norm(&x, &w, self.eps, self.unit_offset) {
            Some(y) => y,
            None => self.forward_tensors(x),
        }
    }

    /// [`Self::forward`] with burn's tensor ops (every backend, and autodiff).
    fn forward_tensors<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let variance = x.clone().square().mean_dim(D - 1);
        let normed = x * (variance + self.eps).sqrt().recip();
        let scale = if self.unit_offset {
            self.weight.val() + 1.0
        } else {
            self.weight.val()
        };
        normed * scale.unsqueeze()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    /// The CPU kernel is taken and equals the tensor path, with and without Gemma's `1 + w`.
    #[test]
    fn rms_norm_kernel_equals_tensor_path() {
        let dev = Device::default();
        let x = Tensor::<3>::random([2, 7, 40], Distribution::Normal(0.0, 2.0), &dev);
        let w = Tensor::<1>::random([40], Distribution::Normal(0.0, 1.0), &dev);
        for offset in [false, true] {
            let norm = RmsNorm::with_offset(w.clone(), 1e-5, offset);
            let fast = crate::kernels::try_rms_norm(&x, &w, 1e-5, offset);
            #[cfg(feature = "cpu")]
            assert!(fast.is_some());
            let Some(fast) = fast else { continue };
            let want: Vec<f32> = norm
                .forward_tensors(x.clone())
                .into_data()
                .try_into_vec()
                .unwrap();
            let got: Vec<f32> = fast.into_data().try_into_vec().unwrap();
            let worst = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "offset {offset}: max |diff| {worst}");
        }
    }
}
