//! Writing report files without destroying earlier good output.
use std::path::Path;

use crate::error::{EvalError, Result};

/// Writes `bytes` to `path` through kiln's one atomic writer ([`kiln_cpu::io::write_atomic`]:
/// temporary file, fsync, rename), creating the directory first.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| EvalError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    kiln_cpu::io::write_atomic(path, |w| {
        w.write_all(bytes).map_err(|source| EvalError::Io {
            path: path.to_path_buf(),
            source,
        })
    })
}

/// Pretty JSON of `value`, written atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| EvalError::InvalidOption {
        what: "JSON report",
        reason: e.to_string(),
    })?;
    write_atomic(path, format!("{text}\n").as_bytes())
}
