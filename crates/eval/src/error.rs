//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while reading inputs or computing a metric.
///
/// Variants name the file, line or example index at fault so that a user can find it.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid UTF-8 (sacrebleu and rouge-score also refuse such input).
    #[error("{path}:{line}: text is not valid UTF-8 (byte offset {byte} in the line)")]
    NotUtf8 {
        path: PathBuf,
        line: usize,
        byte: usize,
    },
    /// An input has no lines / no examples (the sacrebleu CLI also exits with an error).
    #[error("{what} is empty: there is nothing to score")]
    Empty { what: String },
    /// Hypotheses and a reference stream have different numbers of lines.
    #[error("{what} has {found} lines but the hypotheses have {expected}")]
    LengthMismatch {
        what: String,
        expected: usize,
        found: usize,
    },
    /// An example has no reference at all.
    #[error("example {index} has no reference")]
    NoReference { index: usize },
    /// A string option (tokenizer, metric name, smoothing, ...) was not recognised.
    #[error("unknown {what} {value:?}; expected one of {expected}")]
    UnknownOption {
        what: &'static str,
        value: String,
        expected: &'static str,
    },
    /// An option value is outside what the implementation supports.
    #[error("invalid option {what}: {reason}")]
    InvalidOption { what: &'static str, reason: String },
    /// A regular expression given by the user does not compile.
    #[error("invalid regular expression {pattern:?}: {source}")]
    Regex {
        pattern: String,
        #[source]
        source: Box<regex::Error>,
    },
    /// Two per-example score lists that must be paired have different lengths.
    #[error("paired scores differ in length: system A has {a}, system B has {b}")]
    Unpaired { a: usize, b: usize },
    /// The tokenizer failed on a text (shown truncated).
    #[error("tokenizer failed on {text:?}: {reason}")]
    Tokenizer { text: String, reason: String },
    /// Reading a tensor back from the backend failed.
    #[error("backend: {0}")]
    Backend(String),
    /// The model failed (bad input ids, shapes...).
    #[error(transparent)]
    Model(#[from] kiln_models::ModelError),
    /// Reading or encoding the evaluation data failed.
    #[error(transparent)]
    Data(#[from] kiln_data::DataError),
    /// Two reports to compare do not cover the same examples.
    #[error("cannot compare {a:?} and {b:?}: {reason}")]
    Incomparable {
        a: String,
        b: String,
        reason: String,
    },
}

/// The crate's result type.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;

impl From<kiln_cpu::io::IoError> for EvalError {
    fn from(e: kiln_cpu::io::IoError) -> Self {
        Self::Io {
            path: e.path,
            source: e.source,
        }
    }
}
