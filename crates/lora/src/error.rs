//! The one error type of `kiln-lora`.
use std::path::PathBuf;

/// Everything that can go wrong while building, loading or saving adapters.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    /// A tensor does not have the shape the layer needs.
    #[error("`{key}`: shape {found:?}, expected {expected:?}")]
    Shape {
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// An adapter file holds a tensor for a module the model does not have or the config does
    /// not target.
    #[error("`{key}`: {reason}")]
    UnexpectedKey { key: String, reason: String },
    /// An adapter file lacks a tensor the config requires.
    #[error("`{key}` is missing from {file}")]
    MissingKey { key: String, file: PathBuf },
    /// The config targets nothing in the model.
    #[error("adapter `{adapter}`: target_modules {targets} match no linear layer of the model")]
    NoTarget { adapter: String, targets: String },
    /// `modules_to_save` names a module the model does not expose.
    #[error("adapter `{adapter}`: modules_to_save entry `{module}` matches no module of the model")]
    NoModuleToSave { adapter: String, module: String },
    /// A config field holds a value kiln cannot use.
    #[error("adapter config field `{field}`: {reason}")]
    Config { field: String, reason: String },
    /// The adapter is not a LoRA adapter (e.g. LoHa, IA3).
    #[error("unsupported PEFT type `{0}` (kiln loads only LORA adapters)")]
    UnsupportedPeftType(String),
    /// An adapter name is unknown.
    #[error("no adapter named `{0}`")]
    UnknownAdapter(String),
    /// An adapter name is already taken.
    #[error("an adapter named `{0}` already exists")]
    DuplicateAdapter(String),
    /// The operation cannot run in the current state (e.g. deleting a merged adapter).
    #[error("{0}")]
    State(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `adapter_config.json` is not valid JSON for a LoRA config.
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// `adapter_model.safetensors` could not be parsed or written.
    #[error("{path}: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    /// A tensor in the adapter file has a dtype kiln does not read.
    #[error("`{key}` in {path}: unsupported dtype {dtype}")]
    Dtype {
        key: String,
        path: PathBuf,
        dtype: String,
    },
}

/// Result alias of `kiln-lora`.
pub type Result<T> = std::result::Result<T, LoraError>;

impl From<kiln_cpu::io::IoError> for LoraError {
    fn from(e: kiln_cpu::io::IoError) -> Self {
        Self::Io {
            path: e.path,
            source: e.source,
        }
    }
}
