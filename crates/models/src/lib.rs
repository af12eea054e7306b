//! kiln-models: decoder-only language models for fine-tuning, loaded from Hugging Face
//! safetensors checkpoints and GGUF files, with a KV cache and text generation.
//!
//! One decoder ([`CausalLm`]) with knobs ([`DecoderConfig`]) serves the Llama family
//! (`llama`, `mistral`, `qwen2`). Every projection is a [`kiln_lora::LoraLinear`], so adapters
//! attach to any of them.
pub mod adapters;
pub mod attention;
pub mod config;
pub mod decoder;
pub mod device;
pub mod error;
pub mod export_hf;
pub mod fetch;
pub mod generate;
pub mod gguf;
pub mod load;
pub mod loss;
pub mod mask;
pub mod mlp;
pub mod norm;
pub mod pretrained;
pub mod rope;
pub mod safetensors_source;
pub mod tokenizer;
pub mod weights;

pub use config::{AttentionKind, DecoderConfig, Family, HfConfig, RopeScaling};
pub use decoder::{CausalLm, DecoderInput, KvCache};
pub use device::{DeviceKind, default_device, parse_device};
pub use error::{ModelError, Result};
pub use generate::{FinishReason, Generated, GenerationConfig, Sampling, generate};
pub use load::build_causal_lm;
pub use loss::{
    IGNORE_INDEX, LossSum, causal_lm_loss, causal_lm_loss_sum, causal_lm_loss_sum_hidden,
};
pub use pretrained::Pretrained;
pub use safetensors_source::{SafetensorsWeights, write_f32_safetensors};
pub use weights::WeightSource;
