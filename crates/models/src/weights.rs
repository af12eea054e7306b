//! Where a model's weights come from: safetensors files or a GGUF file, seen through one trait.
//!
//! Every source names tensors with Hugging Face checkpoint keys
//! (`model.layers.0.self_attn.q_proj.weight`) and hands out row-major f32 data in PyTorch's
//! layout (a linear weight is `[out, in]`), whatever the file stores: f16/bf16 are widened,
//! GGUF blocks are dequantised and llama.cpp's q/k row permutation is undone.
use crate::error::Result;
use kiln_cpu::QMatrix;
use std::path::Path;

/// A read-only store of named tensors, in Hugging Face naming and PyTorch layout.
pub trait WeightSource {
    /// The file (or directory) the weights come from, for error messages.
    fn path(&self) -> &Path;
    /// All tensor names the source holds, in Hugging Face naming.
    fn names(&self) -> Vec<String>;
    /// The shape of a tensor in PyTorch order (`[out, in]` for a linear weight), if present.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// The tensor's values as f32, row-major in PyTorch order.
    fn load_f32(&self, name: &str) -> Result<Vec<f32>>;
    /// The storage dtype of a tensor as the file names it (`F32`, `BF16`, `Q4_K`...).
    fn dtype(&self, name: &str) -> Option<String>;
    /// A 2-d tensor kept in its storage format (memory-mapped, nothing widened), in PyTorch
    /// layout; `None` when the source holds it in f32 or cannot keep it (then
    /// [`Self::load_f32`] is the way).
    fn load_stored(&self, name: &str) -> Result<Option<QMatrix>> {
        let _ = name;
        Ok(None)
    }
    /// A hint that `name`'s file pages are no longer needed (its values were copied out): a
    /// memory-mapped source drops them from memory, so a large checkpoint widened or quantized
    /// at load never has all of its file resident at once. Nothing that is still mapped by a
    /// frozen matrix is released ([`Self::load_stored`] keeps those).
    fn release(&self, name: &str) {
        let _ = name;
    }
}
