//! Weights from Hugging Face safetensors: one `model.safetensors` or shards listed in
//! `model.safetensors.index.json`, memory-mapped; f16 and bf16 are widened to f32.
use crate::error::{ModelError, Result};
use crate::weights::WeightSource;
use kiln_cpu::{Bytes, QMatrix, QuantType};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::tensor::{Dtype, Metadata, SafeTensors};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

struct Shard {
    path: PathBuf,
    mmap: Arc<Mmap>,
    /// Offset of the data section.
    data_start: usize,
    metadata: Metadata,
}

/// All tensors of a safetensors checkpoint.
pub struct SafetensorsWeights {
    root: PathBuf,
    shards: Vec<Shard>,
    /// Tensor name -> shard index.
    index: BTreeMap<String, usize>,
}

impl std::fmt::Debug for SafetensorsWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsWeights")
            .field("root", &self.root)
            .field("tensors", &self.index.len())
            .finish()
    }
}

/// Drops the resident pages of `len` bytes at `offset` of a read-only file map (they are read
/// from the file again if touched). A hint: failures are ignored.
pub(crate) fn release_pages(map: &Mmap, offset: usize, len: usize) {
    #[cfg(unix)]
    // SAFETY: the map is a read-only mapping of a file nobody writes while it is mapped (see
    // `open_shard`); MADV_DONTNEED on such a mapping only drops cached pages, and any later
    // read of the range, through a live slice or not, faults the same bytes back in from the file.
    unsafe {
        let _ = map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len);
    }
    #[cfg(not(unix))]
    let _ = (map, offset, len);
}

fn open_shard(path: &Path) -> Result<Shard> {
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the file is opened read-only; kiln never writes to a checkpoint it reads.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    let bad = |reason: String| ModelError::Safetensors {
        path: path.to_path_buf(),
        reason,
    };
    if mmap.len() < 8 {
        return Err(bad(format!(
            "file is {} bytes, shorter than the 8-byte header length",
            mmap.len()
        )));
    }
    let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| {
        bad(match crate::safetensors_header::diagnose(&mmap) {
            Some(culprit) => format!("{culprit} ({e})"),
            None => e.to_string(),
        })
    })?;
    let data_start = 8 + header_len;
    let data_len = mmap.len() - data_start;
    for (name, info) in metadata.tensors() {
        if info.data_offsets.1 > data_len {
            return Err(bad(format!(
                "tensor `{name}` ends at byte {} of a {data_len}-byte data section (truncated file?)",
                info.data_offsets.1
            )));
        }
    }
    Ok(Shard {
        path: path.to_path_buf(),
        mmap: Arc::new(mmap),
        data_start,
        metadata,
    })
}

impl SafetensorsWeights {
    /// Opens `dir/model.safetensors`, or the shards of `dir/model.safetensors.index.json`,
    /// or a single `.safetensors` file.
    pub fn open(path: &Path) -> Result<Self> {
        let mut files = Vec::new();
        if path.is_file() {
            files.push(path.to_path_buf());
        } else {
            let index = path.join("model.safetensors.index.json");
            if index.is_file() {
                let text =
                    std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
                let json: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| ModelError::Json {
                        path: index.clone(),
                        reason: e.to_string(),
                    })?;
                let map = json
                    .get("weight_map")
                    .and_then(|m| m.as_object())
                    .ok_or_else(|| ModelError::Json {
                        path: index.clone(),
                        reason: "missing object `weight_map`".into(),
                    })?;
                let mut names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
                names.sort_unstable();
                names.dedup();
                files.extend(names.into_iter().map(|n| path.join(n)));
            } else {
                let single = path.join("model.safetensors");
                if !single.is_file() {
                    return Err(ModelError::io(
                        &single,
                        std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            "no model.safetensors or model.safetensors.index.json",
                        ),
                    ));
                }
                files.push(single);
            }
        }
        let shards: Vec<Shard> = files.iter().map(|f| open_shard(f)).collect::<Result<_>>()?;
        let mut index = BTreeMap::new();
        for (i, shard) in shards.iter().enumerate() {
            for name in shard.metadata.tensors().keys() {
                index.insert(name.clone(), i);
            }
        }
        Ok(Self {
            root: path.to_path_buf(),
            shards,
            index,
        })
    }

    fn lookup(&self, name: &str) -> Option<(&Shard, &safetensors::tensor::TensorInfo)> {
        let shard = &self.shards[*self.index.get(name)?];
        let info = shard.metadata.info(name)?;
        Some((shard, info))
    }
}

impl WeightSource for SafetensorsWeights {
    fn path(&self) -> &Path {
        &self.root
    }

    fn names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.lookup(name).map(|(_, info)| info.shape.clone())
    }

    fn dtype(&self, name: &str) -> Option<String> {
        self.lookup(name)
            .map(|(_, info)| format!("{:?}", info.dtype))
    }

    fn release(&self, name: &str) {
        if let Some((shard, info)) = self.lookup(name) {
            let (start, end) = info.data_offsets;
            release_pages(&shard.mmap, shard.data_start + start, end - start);
        }
    }

    fn load_stored(&self, name: &str) -> Result<Option<QMatrix>> {
        let Some((shard, info)) = self.lookup(name) else {
            return Ok(None);
        };
        let ty = match info.dtype {
            Dtype::F16 => QuantType::F16,
            Dtype::BF16 => QuantType::Bf16,
            _ => return Ok(None),
        };
        let [rows, cols] = info.shape[..] else {
            return Ok(None);
        };
        let (start, end) = info.data_offsets;
        let bad = |reason: String| ModelError::Safetensors {
            path: shard.path.clone(),
            reason: format!("tensor `{name}`: {reason}"),
        };
        let bytes = Bytes::mapped(shard.mmap.clone(), shard.data_start + start, end - start)
            .map_err(|e| bad(e.to_string()))?;
        QMatrix::new(ty, rows, cols, bytes)
            .map(Some)
            .map_err(|e| bad(e.to_string()))
    }

    fn load_f32(&self, name: &str) -> Result<Vec<f32>> {
        let (shard, info) = self
            .lookup(name)
            .ok_or_else(|| ModelError::MissingWeights {
                path: self.root.clone(),
                keys: vec![name.into()],
            })?;
        let bytes = &shard.mmap
            [shard.data_start + info.data_offsets.0..shard.data_start + info.data_offsets.1];
        let count: usize = info.shape.iter().product();
        let bad = |reason: String| ModelError::Safetensors {
            path: shard.path.clone(),
            reason: format!("tensor `{name}`: {reason}"),
        };
        let width = match info.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            other => {
                return Err(bad(format!(
                    "dtype {other:?} is not supported (F32, F16, BF16)"
                )));
            }
        };
        if bytes.len() != count * width {
            return Err(bad(format!(
                "{} bytes for shape {:?} of {:?}",
                bytes.len(),
                info.shape,
                info.dtype
            )));
        }
        let mut out = vec![0f32; count];
        const CHUNK: usize = 1 << 16;
        match info.dtype {
            Dtype::F32 => out
                .par_chunks_mut(CHUNK)
                .zip(bytes.par_chunks(CHUNK * 4))
                .for_each(|(o, b)| {
                    for (v, c) in o.iter_mut().zip(b.chunks_exact(4)) {
                        *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    }
                }),
            Dtype::F16 => out
                .par_chunks_mut(CHUNK)
                .zip(bytes.par_chunks(CHUNK * 2))
                .for_each(|(o, b)| {
                    for (v, c) in o.iter_mut().zip(b.chunks_exact(2)) {
                        *v = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                    }
                }),
            _ => out
                .par_chunks_mut(CHUNK)
                .zip(bytes.par_chunks(CHUNK * 2))
                .for_each(|(o, b)| {
                    for (v, c) in o.iter_mut().zip(b.chunks_exact(2)) {
                        *v = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
                    }
                }),
        }
        Ok(out)
    }
}

/// Writes f32 tensors `(name, shape, values)` to a safetensors file atomically, with metadata
/// `{"format": "pt"}` as PyTorch writers do, through kiln's one safetensors writer
/// ([`kiln_cpu::io::write_f32_safetensors`], which also streams tensors one at a time).
pub fn write_f32_safetensors(path: &Path, tensors: &[(&str, Vec<usize>, &[f32])]) -> Result<()> {
    let specs: Vec<(String, Vec<usize>)> = tensors
        .iter()
        .map(|(n, s, _)| (n.to_string(), s.clone()))
        .collect();
    kiln_cpu::io::write_f32_safetensors(path, &specs, &[("format", "pt")], |i| {
        Ok::<_, ModelError>(tensors[i].2.to_vec())
    })
}
