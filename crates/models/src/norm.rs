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

    /// Whether the scale is `1 + weight`.
    pub fn unit_offset(&self) -> bool {
        self.unit_offset
    }

    /// # Shapes
    /// - x: `[..., hidden]`
    /// - output: same as `x`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
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
