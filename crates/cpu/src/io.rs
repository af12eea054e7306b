//! The one way kiln writes a file it must not leave half-written (weights, adapters, GGUF
//! exports): a temporary file in the same directory, flushed and fsynced, renamed over the
//! target, then the directory fsynced. A crash leaves either the old file or the new one.
//!
//! Why here: every crate that saves files (kiln-lora's adapters, kiln-models' exports,
//! kiln-train's checkpoints, kiln-eval's reports) needs the same durability policy; one helper at
//! the bottom of the crate graph keeps it one policy. [`write_f32_safetensors`] is the one
//! safetensors writer for host tensors, streamed through it.
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

/// Writes f32 tensors to a safetensors file through [`write_atomic`], one tensor's bytes at a
/// time: `specs` gives every tensor's name and shape (the header goes first, tensors in that
/// order), `values(i)` produces tensor `i`'s values when its turn comes, dropped once written.
/// `metadata` becomes the header's `__metadata__` (PyTorch's writers put `{"format": "pt"}`).
/// For specs sorted by name the bytes equal `safetensors::serialize`'s (tested).
///
/// Why not `safetensors::serialize`: it needs every tensor's bytes at once and returns the whole
/// file as one buffer, three copies of the model in memory for a merged 135M model
/// (`census_qa --save-merged` peaked at 2.8 GB); this writes the same format (8-byte header
/// length, JSON header padded with spaces to 8 bytes, data in header order) tensor by tensor.
///
/// # Errors
/// What `values` returns; an [`IoError`] naming the file for a failed write, a name given
/// twice or values that do not fill their shape.
pub fn write_f32_safetensors<E: From<IoError>>(
    path: &Path,
    specs: &[(String, Vec<usize>)],
    metadata: &[(&str, &str)],
    mut values: impl FnMut(usize) -> Result<Vec<f32>, E>,
) -> Result<(), E> {
    let invalid = |msg: String| {
        E::from(IoError {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, msg),
        })
    };
    let mut json = String::from("{");
    if !metadata.is_empty() {
        let meta: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        json += &format!("\"__metadata__\":{},", serde_json::Value::Object(meta));
    }
    let (mut offset, mut seen) = (0usize, std::collections::HashSet::new());
    for (name, shape) in specs {
        if !seen.insert(name.as_str()) {
            return Err(invalid(format!("tensor `{name}` written twice")));
        }
        let end = offset + shape.iter().product::<usize>() * 4;
        json += &format!(
            "{}:{{\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[{offset},{end}]}},",
            serde_json::Value::from(name.as_str()),
            serde_json::Value::from(shape.clone()),
        );
        offset = end;
    }
    if json.ends_with(',') {
        json.pop();
    }
    json.push('}');
    let mut json = json.into_bytes();
    json.resize(json.len().div_ceil(8) * 8, b' ');
    write_atomic(path, |w| {
        let io = |source| {
            E::from(IoError {
                path: path.to_path_buf(),
                source,
            })
        };
        w.write_all(&(json.len() as u64).to_le_bytes())
            .map_err(io)?;
        w.write_all(&json).map_err(io)?;
        let mut buf = Vec::new();
        for (i, (name, shape)) in specs.iter().enumerate() {
            let v = values(i)?;
            if shape.iter().product::<usize>() != v.len() {
                let n = v.len();
                return Err(invalid(format!(
                    "tensor `{name}`: {n} values for shape {shape:?}"
                )));
            }
            buf.clear();
            buf.extend(v.iter().flat_map(|x| x.to_le_bytes()));
            w.write_all(&buf).map_err(io)?;
        }
        Ok(())
    })
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

    /// The streamed writer's bytes equal `safetensors::serialize`'s for name-sorted tensors,
    /// with and without metadata; a duplicate name or short values fail and leave nothing.
    #[test]
    fn safetensors_bytes_equal_the_reference_serializer() {
        use safetensors::{Dtype, tensor::TensorView};
        let dir = std::env::temp_dir().join(format!("kiln-cpu-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = vec![
            (
                "a.weight".into(),
                vec![2, 3],
                (0..6).map(|i| i as f32 * 0.5).collect(),
            ),
            ("b \"odd\" name".into(), vec![3], vec![-1.0, 2.5, 1e-30]),
            ("c".into(), vec![], vec![7.0]),
        ];
        let specs: Vec<_> = tensors
            .iter()
            .map(|(n, s, _)| (n.clone(), s.clone()))
            .collect();
        for meta in [vec![], vec![("format", "pt")]] {
            let path = dir.join("t.safetensors");
            write_f32_safetensors(&path, &specs, &meta, |i| Ok::<_, E>(tensors[i].2.clone()))
                .unwrap();
            let bytes: Vec<Vec<u8>> = tensors
                .iter()
                .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
                .collect();
            let views = tensors.iter().zip(&bytes).map(|((n, s, _), b)| {
                (
                    n.clone(),
                    TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
                )
            });
            let meta = (!meta.is_empty()).then(|| {
                meta.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            });
            let want = safetensors::serialize(views, meta).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), want);
        }
        let twice = [specs[0].clone(), specs[0].clone()];
        let path = dir.join("bad.safetensors");
        assert!(write_f32_safetensors(&path, &twice, &[], |_| Ok::<_, E>(vec![0.0; 6])).is_err());
        assert!(write_f32_safetensors(&path, &specs, &[], |_| Ok::<_, E>(vec![0.0; 2])).is_err());
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
