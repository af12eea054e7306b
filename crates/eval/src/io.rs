//! Writing report files without destroying earlier good output.
use std::path::Path;

use crate::error::{EvalError, Result};

/// Writes `bytes` to a temporary file next to `path`, then renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| EvalError::Io { path: p, source }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Pretty JSON of `value`, written atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| EvalError::InvalidOption {
        what: "JSON report",
        reason: e.to_string(),
    })?;
    write_atomic(path, format!("{text}\n").as_bytes())
}
