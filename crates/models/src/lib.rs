//! kiln-models: decoder-only language models for fine-tuning, loaded from Hugging Face
//! safetensors checkpoints and GGUF files, with a KV cache and text generation.
//!
//! One decoder ([`CausalLm`]) with knobs ([`DecoderConfig`]) serves the Llama family
//! (`llama`, `mistral`, `qwen2`), Gemma 2 (`gemma2`), Gemma 3 (`gemma3_text`, and the language
//! model of a multimodal `gemma3` checkpoint, see [`ModuleLayout`]) and Phi-3 (`phi3`): norm style, embedding scale, activation, sandwich norms, q/k
//! norms, soft-capping, per-layer sliding windows and RoPE bases, partial rotary, LongRoPE and
//! fused projections are settings, not copies of the model. Every projection is a
//! [`kiln_lora::LoraLinear`] under its checkpoint name (Phi-3's `qkv_proj` and `gate_up_proj`
//! included), so PEFT adapters attach to any of them by name.
mod adapters;
mod attention;
#[cfg(feature = "cpu")]
pub mod backprop;
pub mod classifier;
pub mod config;
mod decoder;
mod device;
mod error;
mod export_hf;
#[cfg(feature = "cpu")]
pub mod fetch;
pub mod generate;
pub mod gguf;
pub mod hub;
mod kernels;
mod kv;
mod load;
mod loss;
mod mask;
mod mlp;
mod multimodal;
mod norm;
mod prepare;
mod pretrained;
mod proj;
mod rope;
mod safetensors_header;
mod safetensors_source;
pub mod tokenizer;
mod weights;

pub use classifier::{ClassifierConfig, ProblemType, SequenceClassifier};
pub use config::{
    Activation, AttentionKind, DecoderConfig, Family, HfConfig, ModuleLayout, RopeParams,
    RopeScaling,
};
// The decoder's building blocks, named for code that walks a loaded model's layers.
pub use attention::Attention;
pub use decoder::{CausalLm, DecoderInput, DecoderLayer, Model};
pub use device::{DeviceKind, default_device, parse_device};
pub use error::{ModelError, Result};
pub use generate::{FinishReason, Generated, GenerationConfig, Sampling, generate};
pub use kv::{KvCache, LayerCache};
pub use load::{Quantization, build_causal_lm, build_causal_lm_as, estimate_weight_bytes};
pub use loss::{
    IGNORE_INDEX, LossSum, causal_lm_loss, causal_lm_loss_sum, causal_lm_loss_sum_hidden,
};
pub use mlp::Mlp;
pub use norm::RmsNorm;
pub use pretrained::Pretrained;
pub use proj::{GateUpProj, QkvProj};
pub use rope::Rope;
pub use safetensors_source::{SafetensorsWeights, write_f32_safetensors};
pub use weights::WeightSource;
