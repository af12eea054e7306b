//! Parsing the GGUF header: metadata key/values and tensor infos, with every count and length
//! checked against the bytes actually present before anything is allocated.
//!
//! Layout (GGUF v2/v3, little-endian): magic `GGUF`, version u32, tensor count u64, metadata
//! count u64, the metadata entries (key string, value type u32, value), the tensor infos (name
//! string, n_dims u32, dims u64 × n_dims innermost first, ggml type u32, data offset u64), padding
//! to `general.alignment` (default 32), then the tensor data. Strings are a u64 byte length and
//! UTF-8 bytes; arrays are an element type u32, a count u64 and the elements.
use super::types::GgmlType;
use super::value::GgufValue;
use crate::error::{ModelError, Result};
use std::collections::HashSet;
use std::path::Path;

const MAGIC: &[u8; 4] = b"GGUF";
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal; deeper nesting than this is treated as corrupt.
const MAX_ARRAY_DEPTH: usize = 4;
const DEFAULT_ALIGNMENT: u64 = 32;

/// A tensor as the GGUF header describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// The GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions as GGUF lists them, innermost (contiguous) first: `[in, out]` for a linear weight.
    pub ggml_dims: Vec<u64>,
    /// Storage type.
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub file_offset: u64,
    /// Size of the data in bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// The shape in PyTorch order (outermost first): `[out, in]` for a linear weight.
    pub fn shape(&self) -> Vec<usize> {
        // Fits: `n_elements` was checked to fit in the file, so every dim fits in usize.
        self.ggml_dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements.
    pub fn n_elements(&self) -> usize {
        self.ggml_dims.iter().product::<u64>() as usize
    }
}

/// The parsed header of a GGUF file.
#[derive(Debug)]
pub(crate) struct Header {
    pub version: u32,
    pub metadata: Vec<(String, GgufValue)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    pub data_offset: u64,
}

/// Reads a GGUF header from the whole file `bytes`; `path` only names the file in errors.
pub(crate) fn parse_header(bytes: &[u8], path: &Path) -> Result<Header> {
    let gguf = |reason: String| ModelError::Gguf {
        path: path.to_path_buf(),
        reason,
    };
    let mut c = Cursor { bytes, pos: 0 };
    let magic = c
        .take(4)
        .map_err(|e| gguf(format!("reading the magic: {e}")))?;
    if magic != MAGIC {
        return Err(gguf(format!(
            "bad magic {magic:02x?}, expected `GGUF` (not a GGUF file)"
        )));
    }
    let version = c
        .u32()
        .map_err(|e| gguf(format!("reading the version: {e}")))?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(gguf(
                "GGUF version 1 is not supported (only 2 and 3)".into(),
            ));
        }
        v if v.swap_bytes() <= 3 => {
            return Err(gguf(format!(
                "version {v} looks byte-swapped: big-endian GGUF is not supported"
            )));
        }
        v => return Err(gguf(format!("unsupported GGUF version {v} (only 2 and 3)"))),
    }
    let n_tensors = c
        .u64()
        .map_err(|e| gguf(format!("reading the tensor count: {e}")))?;
    let n_kv = c
        .u64()
        .map_err(|e| gguf(format!("reading the metadata count: {e}")))?;
    // A metadata entry takes at least 13 bytes, a tensor info at least 32.
    c.check_count(n_kv, 13)
        .map_err(|e| gguf(format!("metadata count: {e}")))?;
    c.check_count(n_tensors, 32)
        .map_err(|e| gguf(format!("tensor count: {e}")))?;

    let mut metadata: Vec<(String, GgufValue)> = Vec::with_capacity(n_kv as usize);
    let mut keys = HashSet::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let key = c
            .string()
            .map_err(|e| gguf(format!("metadata entry #{i}: key: {e}")))?;
        let key_err = |reason: String| ModelError::GgufKey {
            path: path.to_path_buf(),
            key: key.clone(),
            reason,
        };
        let ty = c.u32().map_err(|e| key_err(format!("value type: {e}")))?;
        let value = c.value(ty, 0).map_err(key_err)?;
        if !keys.insert(key.clone()) {
            return Err(key_err("duplicate key".into()));
        }
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((key, value)) => match value.as_i128() {
            Some(a) if a > 0 && (a as u64).is_power_of_two() && a <= 1 << 30 => a as u64,
            _ => {
                return Err(ModelError::GgufKey {
                    path: path.to_path_buf(),
                    key: key.clone(),
                    reason: format!("alignment must be a power of two, found {value:?}"),
                });
            }
        },
    };

    let mut raw = Vec::with_capacity(n_tensors as usize);
    let mut seen = HashSet::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = c
            .string()
            .map_err(|e| gguf(format!("tensor info #{i}: name: {e}")))?;
        let tensor_err = |reason: String| ModelError::GgufTensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
            reason,
        };
        let (dims, ty, offset) = c.tensor_info().map_err(tensor_err)?;
        if !seen.insert(name.clone()) {
            return Err(tensor_err("duplicate tensor name".into()));
        }
        raw.push((name, dims, ty, offset));
    }
    let data_offset = align_up(c.pos as u64, alignment);

    let file_len = bytes.len() as u64;
    let mut tensors = Vec::with_capacity(raw.len());
    for (name, ggml_dims, ty, offset) in raw {
        let tensor_err = |reason: String| ModelError::GgufTensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
            reason,
        };
        let ggml_type = GgmlType::from_id(ty)
            .ok_or_else(|| tensor_err(format!("unknown ggml type id {ty}")))?;
        let n_bytes = data_size(&ggml_dims, ggml_type).map_err(tensor_err)?;
        if offset % alignment != 0 {
            return Err(tensor_err(format!(
                "data offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        let start = data_offset.checked_add(offset);
        let end = start.and_then(|s| s.checked_add(n_bytes));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len => tensors.push(TensorInfo {
                name,
                ggml_dims,
                ggml_type,
                file_offset: start,
                n_bytes,
            }),
            _ => {
                return Err(tensor_err(format!(
                    "data ({n_bytes} bytes at offset {offset} of the data section at {data_offset}) \
                     lies beyond the end of the file ({file_len} bytes; truncated?)"
                )));
            }
        }
    }
    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

/// Bytes taken by a tensor of `dims` (innermost first) and `ty`; checks the block structure.
fn data_size(dims: &[u64], ty: GgmlType) -> std::result::Result<u64, String> {
    let (block, type_size) = ty.block_layout();
    let n = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("dims {dims:?}: element count overflows"))?;
    if !dims[0].is_multiple_of(block as u64) {
        return Err(format!(
            "innermost dim {} is not a multiple of the {ty} block size {block}",
            dims[0]
        ));
    }
    (n / block as u64)
        .checked_mul(type_size as u64)
        .ok_or_else(|| format!("dims {dims:?}: byte size overflows"))
}

fn align_up(x: u64, alignment: u64) -> u64 {
    x.div_ceil(alignment).saturating_mul(alignment)
}

/// A bounds-checked little-endian reader; errors are plain reasons, given context by the caller.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

type CResult<T> = std::result::Result<T, String>;

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: u64) -> CResult<&'a [u8]> {
        let rem = self.remaining();
        if n > rem as u64 {
            return Err(format!(
                "needs {n} bytes at offset {}, only {rem} left (truncated or corrupt file)",
                self.pos
            ));
        }
        let out = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> CResult<[u8; N]> {
        let b = self.take(N as u64)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self) -> CResult<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> CResult<u64> {
        self.array().map(u64::from_le_bytes)
    }

    /// Fails when `count` items of at least `min_size` bytes each cannot fit in what is left.
    fn check_count(&self, count: u64, min_size: u64) -> CResult<()> {
        let rem = self.remaining() as u64;
        match count.checked_mul(min_size) {
            Some(need) if need <= rem => Ok(()),
            _ => Err(format!(
                "{count} items cannot fit in the {rem} bytes left at offset {} (corrupt file)",
                self.pos
            )),
        }
    }

    fn string(&mut self) -> CResult<String> {
        let len = self.u64()?;
        let bytes = self
            .take(len)
            .map_err(|e| format!("string of length {len}: {e}"))?;
        String::from_utf8(bytes.to_vec()).map_err(|e| format!("string is not valid UTF-8: {e}"))
    }

    fn value(&mut self, ty: u32, depth: usize) -> CResult<GgufValue> {
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>()?[0]),
            1 => GgufValue::I8(i8::from_le_bytes(self.array()?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array()?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array()?)),
            4 => GgufValue::U32(self.u32()?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array()?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(format!("bool byte is {b}, expected 0 or 1")),
            },
            8 => GgufValue::String(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"));
                }
                let elem_ty = self.u32()?;
                let count = self.u64()?;
                let min_size = min_value_size(elem_ty)
                    .ok_or_else(|| format!("array of unknown value type {elem_ty}"))?;
                self.check_count(count, min_size)
                    .map_err(|e| format!("array count: {e}"))?;
                let mut items = Vec::with_capacity(count as usize);
                for i in 0..count {
                    let item = self
                        .value(elem_ty, depth + 1)
                        .map_err(|e| format!("array element #{i}: {e}"))?;
                    items.push(item);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64()?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array()?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(format!("unknown value type {other}")),
        })
    }

    /// `(dims innermost first, ggml type id, relative data offset)`.
    fn tensor_info(&mut self) -> CResult<(Vec<u64>, u32, u64)> {
        let n_dims = self.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!("n_dims is {n_dims}, expected 1..={MAX_DIMS}"));
        }
        let dims = (0..n_dims)
            .map(|_| self.u64())
            .collect::<CResult<Vec<_>>>()?;
        let ty = self.u32()?;
        let offset = self.u64()?;
        Ok((dims, ty, offset))
    }
}

/// The fewest bytes a value of GGUF type `ty` can take, `None` for an unknown type.
fn min_value_size(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => return None,
    })
}
