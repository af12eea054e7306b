//! [`GgufFile`]: a memory-mapped GGUF file with its metadata and tensor table.
use super::reader::{TensorInfo, parse_header};
use super::value::{FromGguf, GgufValue};
use crate::error::{ModelError, Result};
use kiln_cpu::{Bytes, QMatrix};
use memmap2::Mmap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A GGUF v2/v3 file, memory-mapped: the header is parsed on open, tensor data is read lazily.
///
/// ```no_run
/// # fn main() -> kiln_models::Result<()> {
/// use kiln_models::gguf::GgufFile;
/// let file = GgufFile::open("model.gguf")?;
/// let layers: u32 = file.require("llama.block_count")?;
/// let embedding = file.dequantize("token_embd.weight")?; // row-major f32, PyTorch order
/// # let _ = (layers, embedding); Ok(()) }
/// ```
pub struct GgufFile {
    path: PathBuf,
    mmap: Arc<Mmap>,
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and memory-maps `path` and parses its header.
    ///
    /// # Errors
    /// [`ModelError::Io`] if the file cannot be opened; [`ModelError::Gguf`],
    /// [`ModelError::GgufKey`] or [`ModelError::GgufTensor`] if it is not a valid GGUF v2/v3
    /// file (bad magic, truncated, absurd counts or lengths, data out of bounds, unknown type).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(|e| ModelError::io(&path, e))?;
        // SAFETY: the map is read-only; like every mmap-based loader we assume the file is not
        // truncated or modified by another process while it is mapped.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
        Self::from_mmap(path, mmap)
    }

    /// A file already mapped (or an anonymous map holding a file's bytes, as the GGUF writer
    /// builds to read its own header back); `path` names it in errors.
    pub(crate) fn from_mmap(path: PathBuf, mmap: Mmap) -> Result<Self> {
        let header = parse_header(&mmap, &path)?;
        let key_index = header
            .metadata
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        let tensor_index = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Self {
            path,
            mmap: Arc::new(mmap),
            version: header.version,
            metadata: header.metadata,
            key_index,
            tensors: header.tensors,
            tensor_index,
            alignment: header.alignment,
            data_offset: header.data_offset,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of tensor data (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the tensor data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All metadata entries, in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, &GgufValue)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The raw value of metadata key `key`.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// The value of `key` converted to `T`; `Ok(None)` if absent.
    ///
    /// # Errors
    /// [`ModelError::GgufKey`] if the value has another type or does not fit `T`.
    pub fn get_as<T: FromGguf>(&self, key: &str) -> Result<Option<T>> {
        self.get(key)
            .map(|v| T::from_gguf(v).ok_or_else(|| self.wrong_type(key, T::EXPECTED, v)))
            .transpose()
    }

    /// The value of `key` converted to `T`.
    ///
    /// # Errors
    /// [`ModelError::GgufKey`] if the key is absent, has another type or does not fit `T`.
    pub fn require<T: FromGguf>(&self, key: &str) -> Result<T> {
        self.get_as(key)?
            .ok_or_else(|| self.key_error(key, "missing"))
    }

    /// `key` as u32 (any integer type in range); `Ok(None)` if absent.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>> {
        self.get_as(key)
    }

    /// `key` as f32 (a float, or an integer); `Ok(None)` if absent.
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>> {
        self.get_as(key)
    }

    /// `key` as bool; `Ok(None)` if absent.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get_as(key)
    }

    /// `key` as a string slice; `Ok(None)` if absent.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        self.get(key)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| self.wrong_type(key, "a string", v))
            })
            .transpose()
    }

    /// `key` as an array of string slices; `Ok(None)` if absent.
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_array()
            .and_then(|items| {
                items
                    .iter()
                    .map(GgufValue::as_str)
                    .collect::<Option<Vec<_>>>()
            })
            .map(Some)
            .ok_or_else(|| self.wrong_type(key, "an array of strings", v))
    }

    /// `general.architecture` (`llama`, `qwen2`...).
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")?
            .ok_or_else(|| self.key_error("general.architecture", "missing"))
    }

    /// All tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The info of the tensor named `name` (GGUF naming).
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of tensor `name` (bounds were checked on open).
    pub fn tensor_data(&self, name: &str) -> Result<&[u8]> {
        let info = self.tensor(name).ok_or_else(|| self.missing_tensor(name))?;
        let start = info.file_offset as usize;
        Ok(&self.mmap[start..start + info.n_bytes as usize])
    }

    /// Tensor `name` as a `[rows, cols]` matrix kept in its storage format over the shared map
    /// (nothing copied), or `None` for a tensor that is not 2-d.
    ///
    /// # Errors
    /// [`ModelError::UnsupportedGgufType`] for a type kiln cannot compute with;
    /// [`ModelError::MissingWeights`] if there is no such tensor.
    pub fn stored_matrix(&self, name: &str) -> Result<Option<QMatrix>> {
        let info = self.tensor(name).ok_or_else(|| self.missing_tensor(name))?;
        let [rows, cols] = info.shape()[..] else {
            return Ok(None);
        };
        let Some(ty) = info.ggml_type.quant_type() else {
            return Err(ModelError::UnsupportedGgufType {
                path: self.path.clone(),
                tensor: name.to_owned(),
                ggml_type: info.ggml_type.name(),
            });
        };
        let tensor_err = |e: kiln_cpu::CpuError| ModelError::GgufTensor {
            path: self.path.clone(),
            tensor: name.to_owned(),
            reason: e.to_string(),
        };
        let bytes = Bytes::mapped(
            self.mmap.clone(),
            info.file_offset as usize,
            info.n_bytes as usize,
        )
        .map_err(tensor_err)?;
        QMatrix::new(ty, rows, cols, bytes)
            .map(Some)
            .map_err(tensor_err)
    }

    /// Drops the resident file pages of tensor `name` (see [`crate::WeightSource::release`]).
    pub(crate) fn release(&self, name: &str) {
        if let Some(info) = self.tensor(name) {
            crate::safetensors_source::release_pages(
                &self.mmap,
                info.file_offset as usize,
                info.n_bytes as usize,
            );
        }
    }

    /// Tensor `name` dequantised to f32, row-major in PyTorch order (see [`TensorInfo::shape`]).
    ///
    /// # Errors
    /// [`ModelError::UnsupportedGgufType`] for a type kiln cannot dequantise;
    /// [`ModelError::MissingWeights`] if there is no such tensor.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.tensor(name).ok_or_else(|| self.missing_tensor(name))?;
        let data = self.tensor_data(name)?;
        let Some(ty) = info.ggml_type.quant_type() else {
            return Err(ModelError::UnsupportedGgufType {
                path: self.path.clone(),
                tensor: name.to_owned(),
                ggml_type: info.ggml_type.name(),
            });
        };
        let mut out = vec![0f32; info.n_elements()];
        kiln_cpu::quant::dequantize(ty, data, &mut out).map_err(|e| ModelError::GgufTensor {
            path: self.path.clone(),
            tensor: name.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(out)
    }

    pub(crate) fn key_error(&self, key: &str, reason: impl Into<String>) -> ModelError {
        ModelError::GgufKey {
            path: self.path.clone(),
            key: key.to_owned(),
            reason: reason.into(),
        }
    }

    fn wrong_type(&self, key: &str, expected: &str, found: &GgufValue) -> ModelError {
        let shown = match found {
            GgufValue::Array(a) => format!("an ARRAY of {} elements", a.len()),
            GgufValue::String(s) if s.len() > 40 => format!("a STRING of {} bytes", s.len()),
            other => format!("{} {other:?}", other.type_name()),
        };
        self.key_error(key, format!("expected {expected}, found {shown}"))
    }

    fn missing_tensor(&self, name: &str) -> ModelError {
        ModelError::MissingWeights {
            path: self.path.clone(),
            keys: vec![name.to_owned()],
        }
    }
}
