//! The one way kiln writes a file it must not leave half-written (weights, adapters, GGUF
//! exports): a temporary file in the same directory, flushed and fsynced, renamed over the
//! target, then the directory fsynced. A crash leaves either the old file or the new one.
//!
//! Why here: every crate that saves files (kiln-lora's adapters, kiln-models' exports) needs the
//! same durability policy; one helper at the bottom of the crate graph keeps it one policy.
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// An I/O failure on `path` during an atomic write.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct IoError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Writes `path` atomically: `write` fills a buffered temporary file `.{name}.tmp-{pid}` next
/// to it, which is fsynced and renamed over `path`. On any error the temporary file is removed
/// and `path` is untouched.
///
/// # Errors
/// What `write` returns, or an [`IoError`] (converted into `E`) naming the file that failed.
pub fn write_atomic<E: From<IoError>>(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<(), E>,
) -> Result<(), E> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = write_then_sync(&tmp, write).and_then(|()| {
        std::fs::rename(&tmp, path).map_err(|source| {
            E::from(IoError {
                path: path.to_path_buf(),
                source,
            })
        })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    sync_parent(path);
    Ok(())
}

fn write_then_sync<E: From<IoError>>(
    tmp: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<(), E>,
) -> Result<(), E> {
    let err = |source| {
        E::from(IoError {
            path: tmp.to_path_buf(),
            source,
        })
    };
    let file = File::create(tmp).map_err(err)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    write(&mut w)?;
    let file = w.into_inner().map_err(|e| err(e.into_error()))?;
    file.sync_all().map_err(err)
}

/// Makes the rename durable where the platform allows opening a directory (best effort).
fn sync_parent(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(dir) = File::open(parent) {
        let _ = dir.sync_all();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(String);
    impl From<IoError> for E {
        fn from(e: IoError) -> Self {
            E(e.to_string())
        }
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = std::env::temp_dir().join(format!("kiln-cpu-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.bin");
        write_atomic(&path, |w| w.write_all(b"old").map_err(|e| E(e.to_string()))).unwrap();
        let failed = write_atomic(&path, |w| {
            w.write_all(b"new").map_err(|e| E(e.to_string()))?;
            Err(E("stop".into()))
        });
        assert_eq!(failed.unwrap_err().0, "stop");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
