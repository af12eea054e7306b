//! The one error type of kiln-train.
use std::path::{Path, PathBuf};

/// Everything that can go wrong while configuring, running or resuming training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Reading or writing a file or directory.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A config file that does not parse or has an invalid value.
    #[error("config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    /// An invalid option value (config key and why).
    #[error("option `{key}`: {reason}")]
    Option { key: String, reason: String },
    /// A batch that does not fit the model or the trainer.
    #[error("batch {index}: {reason}")]
    Batch { index: usize, reason: String },
    /// Loss or gradient became NaN or infinite.
    #[error(
        "non-finite {what} ({value}) at step {step}; the last good state is in {}",
        checkpoint.as_ref().map_or_else(|| "no checkpoint (checkpointing is off)".to_string(), |p| p.display().to_string())
    )]
    NonFinite {
        what: &'static str,
        value: f64,
        step: usize,
        checkpoint: Option<PathBuf>,
    },
    /// An output directory that a run may not use as asked (see [`crate::RunDir`]).
    #[error("output directory {path} {reason}")]
    RunDir { path: PathBuf, reason: String },
    /// A checkpoint that is missing a file or does not match the model.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    /// Model forward or loss errors.
    #[error(transparent)]
    Model(#[from] kiln_models::ModelError),
    /// Adapter errors.
    #[error(transparent)]
    Lora(#[from] kiln_lora::LoraError),
    /// Dataset reading, rendering and encoding errors.
    #[error(transparent)]
    Data(#[from] kiln_data::DataError),
    /// Evaluation errors (generation metrics at the end of training).
    #[error(transparent)]
    Eval(#[from] kiln_eval::EvalError),
}

/// Result alias of kiln-train.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

impl TrainError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A bad option value.
    pub fn option(key: &str, reason: impl Into<String>) -> Self {
        Self::Option {
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    /// A broken checkpoint.
    pub fn checkpoint(path: &Path, reason: impl Into<String>) -> Self {
        Self::Checkpoint {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

impl From<kiln_cpu::io::IoError> for TrainError {
    fn from(e: kiln_cpu::io::IoError) -> Self {
        Self::Io {
            path: e.path,
            source: e.source,
        }
    }
}
