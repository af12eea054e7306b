//! GGUF checkpoints (llama.cpp's format): a memory-mapped reader, dequantisation to f32, and the
//! translation of a file into what the rest of kiln expects: Hugging Face tensor names and
//! PyTorch shapes ([`GgufWeights`]), a `config.json` equivalent ([`hf_config_from_gguf`]), the
//! tokenizer ([`tokenizer_from_gguf`]) and the chat template ([`chat_template`]); and the way
//! back: [`save_gguf`] writes a loaded model as a GGUF file llama.cpp and transformers load.
//!
//! Every derivation follows what transformers does when it loads the same file with
//! `from_pretrained(dir, gguf_file=...)` (`modeling_gguf_pytorch_utils.py`,
//! `integrations/ggml.py`, `integrations/gguf/gguf_tokenizer_mapping.py`), so that kiln and
//! transformers see the same weights, config and token ids.
//! Format reference: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>.
mod config;
mod file;
pub mod names;
mod reader;
mod spm;
mod tokenizer;
mod types;
mod value;
mod weights;
mod write;
mod write_meta;

pub(crate) use config::blame_gguf_key;
pub use config::{GgufArch, chat_template, hf_config_from_gguf};
pub use file::GgufFile;
pub use reader::TensorInfo;
pub use tokenizer::{GgufTokenizerKind, tokenizer_from_gguf};
pub use types::{GgmlType, GgufFileType};
pub use value::{FromGguf, GgufValue};
pub use weights::GgufWeights;
pub use write::{GgufExport, save_gguf};
