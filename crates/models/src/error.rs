//! The one error type of `kiln-models`.
use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
///
/// Variants carry the file, key and shapes at fault so that a user can act on the message.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (config, index, tokenizer config) does not parse or lacks a field.
    #[error("{path}: {reason}")]
    Json { path: PathBuf, reason: String },
    /// `model_type` (or GGUF `general.architecture`) names a family kiln does not implement.
    #[error("{path}: unsupported model_type `{model_type}` (supported: {supported})")]
    UnsupportedModelType {
        path: PathBuf,
        model_type: String,
        supported: String,
    },
    /// A config value is missing or out of range.
    #[error("{path}: config key `{key}`: {reason}")]
    Config {
        path: PathBuf,
        key: String,
        reason: String,
    },
    /// A safetensors file is truncated, corrupt or holds an unsupported dtype.
    #[error("{path}: invalid safetensors: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    /// A GGUF file is truncated or corrupt, or uses a feature kiln does not read.
    #[error("{path}: invalid GGUF: {reason}")]
    Gguf { path: PathBuf, reason: String },
    /// A GGUF tensor uses a quantisation kiln cannot dequantise.
    #[error("{path}: tensor `{tensor}` has unsupported GGUF type {ggml_type}")]
    UnsupportedGgufType {
        path: PathBuf,
        tensor: String,
        ggml_type: String,
    },
    /// A weight the model needs is not in the checkpoint.
    #[error("{path}: missing weight(s): {}", keys.join(", "))]
    MissingWeights { path: PathBuf, keys: Vec<String> },
    /// The checkpoint holds weights the model does not use.
    #[error("{path}: unexpected weight(s) not used by the model: {}", keys.join(", "))]
    UnexpectedWeights { path: PathBuf, keys: Vec<String> },
    /// A weight's shape does not fit the config.
    #[error("{path}: weight `{key}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A weight holds NaN or infinity (a corrupt or badly converted checkpoint).
    #[error("{path}: weight `{tensor}` holds a non-finite value ({detail})")]
    NonFiniteWeight {
        path: PathBuf,
        tensor: String,
        detail: String,
    },
    /// The tokenizer cannot be built or used.
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    /// Inputs to a forward pass or to generation do not fit together.
    #[error("invalid input: {0}")]
    Input(String),
    /// A tensor's values could not be read back from its backend (a dtype or device failure,
    /// not the caller's input).
    #[error("reading {what} from the backend: {reason}")]
    Backend { what: String, reason: String },
    /// The device string given on a command line does not name a compiled-in backend.
    #[error("device `{0}`: {1}")]
    Device(String, String),
    /// Fetching the default model failed.
    #[error("fetching the default model: {0}")]
    Fetch(String),
    /// A model could not be taken from the Hugging Face Hub (feature `hub`).
    #[error("Hugging Face model `{repo}`: {reason}")]
    Hub { repo: String, reason: String },
    /// A GGUF metadata key is missing, has the wrong type or an unusable value.
    #[error("{path}: GGUF metadata key `{key}`: {reason}")]
    GgufKey {
        path: PathBuf,
        key: String,
        reason: String,
    },
    /// A GGUF tensor's description or data is invalid (bad shape, data out of bounds...).
    #[error("{path}: GGUF tensor `{tensor}`: {reason}")]
    GgufTensor {
        path: PathBuf,
        tensor: String,
        reason: String,
    },
}

/// Result alias of `kiln-models`.
pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<kiln_cpu::io::IoError> for ModelError {
    fn from(e: kiln_cpu::io::IoError) -> Self {
        Self::Io {
            path: e.path,
            source: e.source,
        }
    }
}
