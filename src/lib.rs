//! kiln: fine-tune large language models in Rust on [burn].
//!
//! This facade re-exports the workspace crates so that downstream code adds one dependency:
//!
//! - [`models`]: decoders loaded from Hugging Face and GGUF checkpoints, generation.
//! - [`lora`]: LoRA adapters with PEFT parity.
//! - [`data`]: datasets, chat templates, labels, packing.
//! - [`eval`]: metrics and evaluation harness.
//! - `serve` (cargo feature `serve`): an OpenAI-compatible HTTP server (kiln-serve).
pub use burn;
pub use kiln_data as data;
pub use kiln_eval as eval;
pub use kiln_lora as lora;
pub use kiln_models as models;
#[cfg(feature = "serve")]
pub use kiln_serve as serve;
pub use kiln_train as train;
