//! The one thing kiln-lora needs from a model: a walk over its adaptable layers.
use burn::module::Param;
use burn::tensor::Tensor;

use crate::base::{BaseWeight, Layout};
use crate::linear::LoraLinear;

/// A model that adapters can attach to. `kiln-models`' decoder implements it; kiln-lora knows
/// no model beyond this trait.
///
/// Paths use Hugging Face module naming (the names in the checkpoint without the parameter
/// suffix), e.g. `model.layers.0.self_attn.q_proj`, `lm_head`, `model.embed_tokens`; PEFT's
/// keys are `base_model.model.<path>.lora_A.weight`, so matching these names is what makes PEFT
/// files load.
pub trait AdapterTarget {
    /// Calls `f` on every adaptable linear layer, with its module path, in a fixed order.
    fn visit_linears(&self, f: &mut dyn FnMut(&str, &LoraLinear));

    /// Same as [`visit_linears`](Self::visit_linears), mutably.
    fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut LoraLinear));

    /// Calls `f` on every parameter that is not inside a [`LoraLinear`] and that
    /// `modules_to_save` may train in full or `bias = "all"` may train, with the module path and
    /// the parameter name (e.g. `("model.embed_tokens", "weight")`, `("model.norm", "weight")`).
    /// Tensors are in the checkpoint's own layout (an embedding is `[vocab, hidden]`).
    /// The default has none.
    fn visit_other_params(&self, f: &mut dyn FnMut(&str, &str, OtherParam<'_>)) {
        let _ = f;
    }

    /// Same as [`visit_other_params`](Self::visit_other_params), mutably.
    fn visit_other_params_mut(&mut self, f: &mut dyn FnMut(&str, &str, OtherParamMut<'_>)) {
        let _ = f;
    }

    /// Path of the output layer, which `target_modules = "all-linear"` leaves out (PEFT skips the
    /// model's output embedding). `None` when the head is tied to the input embedding and is not
    /// a [`LoraLinear`].
    fn output_layer(&self) -> Option<&str> {
        Some("lm_head")
    }

    /// Module path prefixes of an older layout of the same checkpoint, as `(old, current)`:
    /// adapter keys `base_model.model.<old>…` are read as `base_model.model.<current>…`, as PEFT
    /// renames them when it loads an adapter saved by an older transformers. The default has
    /// none.
    fn legacy_path_prefixes(&self) -> &[(&'static str, &'static str)] {
        &[]
    }

    /// Module path prefixes of the checkpoint's modules that the model does not hold (the vision
    /// tower of a multimodal checkpoint loaded as a text model): adapter tensors under them are
    /// skipped when loading, since they cannot change what the model computes. The default has
    /// none.
    fn skipped_path_prefixes(&self) -> &[&'static str] {
        &[]
    }
}

/// A parameter outside the linear layers, by rank.
#[derive(Debug, Clone, Copy)]
pub enum OtherParam<'a> {
    /// A vector (a norm's scale, a bias).
    Vector(&'a Param<Tensor<1>>),
    /// A matrix (an embedding table, dense or kept in its storage format).
    Table(&'a BaseWeight),
}

/// A mutable parameter outside the linear layers, by rank.
#[derive(Debug)]
pub enum OtherParamMut<'a> {
    /// A vector (a norm's scale, a bias).
    Vector(&'a mut Param<Tensor<1>>),
    /// A matrix (an embedding table, dense or kept in its storage format).
    Table(&'a mut BaseWeight),
}

impl OtherParam<'_> {
    /// Shape of the parameter.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            OtherParam::Vector(p) => p.dims().to_vec(),
            OtherParam::Table(p) => p.dims(Layout::Table).to_vec(),
        }
    }
}
