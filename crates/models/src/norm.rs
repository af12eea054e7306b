//! Root-mean-square layer normalisation.
use burn::module::{Module, Param};
use burn::tensor::Tensor;

/// RMSNorm: `x / sqrt(mean(x²) + eps) * weight`, computed in f32 as transformers does.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// Scale `[hidden]`.
    pub weight: Param<Tensor<1>>,
    #[module(skip)]
    eps: f64,
}

impl RmsNorm {
    /// A norm with the given scale `[hidden]`.
    pub fn new(weight: Tensor<1>, eps: f64) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            eps,
        }
    }

    /// # Shapes
    /// - x: `[..., hidden]`
    /// - output: same as `x`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let variance = x.clone().square().mean_dim(D - 1);
        let normed = x * (variance + self.eps).sqrt().recip();
        normed * self.weight.val().unsqueeze()
    }
}
