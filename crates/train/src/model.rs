//! What the trainer needs from a model: logits for a batch. Which parameters train is decided
//! by the model itself (`require_grad`): with LoRA only the active adapters, with full
//! fine-tuning everything (`model.set_require_grad(true)`).
use burn::module::{Module, ModuleDisplay};
use burn::tensor::Tensor;
use kiln_lora::{AdapterTarget, LoraModel};
use kiln_models::{CausalLm, DecoderInput};

/// A causal language model the trainer can train.
pub trait CausalModel: Module {
    /// Logits of every position.
    ///
    /// # Shapes
    /// - output: `[b, t, vocab]`
    fn logits(&self, input: &DecoderInput) -> kiln_models::Result<Tensor<3>>;
}

impl CausalModel for CausalLm {
    fn logits(&self, input: &DecoderInput) -> kiln_models::Result<Tensor<3>> {
        self.forward(input)
    }
}

impl<M: CausalModel + AdapterTarget + ModuleDisplay> CausalModel for LoraModel<M> {
    fn logits(&self, input: &DecoderInput) -> kiln_models::Result<Tensor<3>> {
        self.model.logits(input)
    }
}
