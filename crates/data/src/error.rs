//! The one error type of kiln-data.

use std::path::PathBuf;

/// Where a record came from: file and 1-based line (JSON Lines, text) or row (CSV, JSON array).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// File the record was read from (`<memory>` for in-memory records).
    pub file: PathBuf,
    /// 1-based line (JSONL, text files, CSV data rows counted from the header line) or array index + 1.
    pub line: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// Everything that can go wrong while reading, rendering, tokenizing and packing data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line or file is not valid JSON/CSV.
    #[error("{at}: malformed {format}: {message}")]
    Malformed {
        at: Location,
        format: &'static str,
        message: String,
    },
    /// A required field is absent.
    #[error("{at}: missing field `{field}`")]
    MissingField { at: Location, field: String },
    /// A field has the wrong JSON type or an invalid value.
    #[error("{at}: field `{field}`: expected {expected}")]
    WrongType {
        at: Location,
        field: String,
        expected: String,
    },
    /// A conversation with no messages, or with no assistant turn to train on.
    #[error("{at}: field `{field}`: {message}")]
    BadConversation {
        at: Location,
        field: String,
        message: String,
    },
    /// A record that reads fine but cannot be encoded (wrapped in [`DataError::AtRecord`] by
    /// the streaming path, which knows the location).
    #[error("field `{field}`: {message}")]
    Unencodable { field: String, message: String },
    /// The record's format could not be detected from its keys.
    #[error("{at}: cannot detect the record format from keys [{keys}]; set the format explicitly")]
    UnknownFormat { at: Location, keys: String },
    /// A string option (format, role, policy, ...) that is not one of the accepted names.
    #[error("unknown {what} `{value}`; expected one of: {expected}")]
    UnknownName {
        what: &'static str,
        value: String,
        expected: &'static str,
    },
    /// Every record was skipped or filtered out: training would run zero steps.
    #[error("the dataset is empty after reading and filtering ({reason})")]
    EmptyDataset { reason: String },
    /// A glob pattern is invalid or matched no file.
    #[error("pattern `{pattern}`: {message}")]
    Glob { pattern: String, message: String },
    /// The chat template does not compile; `origin` names its file (or the model key it came
    /// from).
    #[error("{origin}: chat template syntax: {message}")]
    TemplateSyntax { origin: String, message: String },
    /// The chat template failed while rendering (including its own `raise_exception`).
    #[error("{origin}: chat template: {message}")]
    TemplateRender { origin: String, message: String },
    /// An assistant turn's text was not found in the rendered conversation.
    #[error(
        "assistant message {index} not found in the rendered text (does the template alter it?)"
    )]
    SpanNotFound { index: usize },
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A token the configuration names is not in the tokenizer's vocabulary.
    #[error("token `{0}` is not in the tokenizer vocabulary")]
    UnknownToken(String),
    /// An invalid option value (zero length, ratio outside 0..1, ...).
    #[error("invalid option `{option}`: {message}")]
    InvalidOption {
        option: &'static str,
        message: String,
    },
    /// A record failed after reading (rendering, tokenizing): the inner error with its location.
    #[error("{at}: {source}")]
    AtRecord {
        at: Location,
        #[source]
        source: Box<DataError>,
    },
    /// A table column is missing or not numeric (table → QA generator).
    #[error("{at}: column `{column}`: {message}")]
    Table {
        at: Location,
        column: String,
        message: String,
    },
}

/// Result alias of kiln-data.
pub type Result<T> = std::result::Result<T, DataError>;
