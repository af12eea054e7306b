//! The gated feed-forward block (SwiGLU).
use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;
use kiln_lora::LoraLinear;

/// `down_proj(silu(gate_proj(x)) * up_proj(x))`.
#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: LoraLinear,
    pub up_proj: LoraLinear,
    pub down_proj: LoraLinear,
}

impl Mlp {
    /// # Shapes
    /// - x: `[b, t, hidden]`
    /// - output: `[b, t, hidden]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = silu(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }
}
