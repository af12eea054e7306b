//! kiln-cpu's errors.

/// What can go wrong in the CPU runtime.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// Bytes, shapes or a row map that do not describe the matrix they claim to.
    #[error("quantized layout: {0}")]
    Layout(String),
    /// A value a quantizer cannot represent (NaN, infinity).
    #[error("cannot quantize {what}: {reason}")]
    Quantize { what: String, reason: String },
    /// A quantization name that is not one kiln quantizes to at load.
    #[error("unknown quantization {given:?}: expected one of {accepted}")]
    UnknownQuantization { given: String, accepted: String },
}

/// kiln-cpu's result type.
pub type Result<T> = std::result::Result<T, CpuError>;
