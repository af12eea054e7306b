//! Writing a loaded model as a GGUF v3 file that llama.cpp, gguf-py and transformers load:
//! tensors under llama.cpp's names in ggml's layout (innermost dimension first), quantized as
//! llama.cpp's `--outtype` / `llama-quantize` would choose, and the metadata of
//! [`super::write_meta`].
//!
//! Why a writer of its own and not a call to gguf-py: kiln runs without Python, and the file must
//! be exactly what kiln holds (merged adapters included). The reader in this module is the first
//! check: before anything is written, the header is parsed back and the model config it implies
//! must equal the model's own (see [`super::write_meta::check_round_trip`]).
use super::config::GgufArch;
use super::names;
use super::value::GgufValue;
use super::write_meta;
use crate::error::{ModelError, Result};
use crate::export_hf::collect_tensors;
use crate::pretrained::Pretrained;
use kiln_cpu::QuantType;
use std::path::Path;

const ALIGNMENT: usize = 32;

/// The file types `save_gguf` writes, as llama.cpp names them (`LLAMA_FTYPE_*`).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufFileType {
    /// Every tensor f32.
    F32,
    /// 2-d tensors f16 (`convert_hf_to_gguf.py --outtype f16`).
    F16,
    /// 2-d tensors bf16.
    Bf16,
    /// 2-d tensors Q8_0 (`--outtype q8_0`).
    Q8_0,
    /// 2-d tensors Q4_0, `output.weight` Q6_K (`llama-quantize … Q4_0`).
    Q4_0,
    /// llama.cpp's `Q4_K_M` mix: Q4_K, with Q6_K for `output.weight` (or the tied token
    /// embedding), for `attn_v` and `ffn_down` of the layers llama.cpp's `use_more_bits` picks
    /// (the first and last eighth and every third between), Q5_K for a fused `attn_qkv`.
    Q4_K_M,
}

impl GgufFileType {
    /// `general.file_type`: llama.cpp's `llama_ftype` number.
    pub fn llama_ftype(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q8_0 => 7,
            Self::Q4_K_M => 15,
            Self::Bf16 => 32,
        }
    }

    /// The name as llama.cpp and kiln's `--export-gguf` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Bf16 => "BF16",
            Self::Q8_0 => "Q8_0",
            Self::Q4_0 => "Q4_0",
            Self::Q4_K_M => "Q4_K_M",
        }
    }
}

impl std::fmt::Display for GgufFileType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for GgufFileType {
    type Err = ModelError;

    /// Parses `F32`, `F16`, `BF16`, `Q8_0`, `Q4_0`, `Q4_K_M` (any case).
    fn from_str(s: &str) -> Result<Self> {
        let all = [
            Self::F32,
            Self::F16,
            Self::Bf16,
            Self::Q8_0,
            Self::Q4_0,
            Self::Q4_K_M,
        ];
        all.into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                ModelError::Input(format!(
                    "GGUF file type `{s}`: expected one of F32, F16, BF16, Q8_0, Q4_0, Q4_K_M"
                ))
            })
    }
}

/// What [`save_gguf`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgufExport {
    /// How 2-d tensors are stored; 1-d tensors (norms, biases) stay f32.
    pub file_type: GgufFileType,
}

/// A tensor ready to be written: GGUF name, ggml dims (innermost first), type and bytes.
pub(crate) struct OutTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: QuantType,
    pub data: Vec<u8>,
}

/// See [`Pretrained::save_gguf`].
pub fn save_gguf(lm: &Pretrained, path: &Path, export: GgufExport) -> Result<()> {
    let arch = write_meta::arch_of(lm)?;
    let tensors = gguf_tensors(lm, arch, export.file_type, path)?;
    let metadata = write_meta::metadata(lm, arch, export.file_type)?;
    let header = header_bytes(&metadata, &tensors);
    let data_len: usize = tensors.iter().map(|t| padded(t.data.len())).sum();
    write_meta::check_round_trip(lm, path, &header, header.len() + data_len)?;
    kiln_cpu::io::write_atomic(path, |w| {
        let io = |e| ModelError::io(path, e);
        w.write_all(&header).map_err(io)?;
        for t in &tensors {
            w.write_all(&t.data).map_err(io)?;
            w.write_all(&[0u8; ALIGNMENT][..padded(t.data.len()) - t.data.len()])
                .map_err(io)?;
        }
        Ok(())
    })
}

fn padded(n: usize) -> usize {
    n.div_ceil(ALIGNMENT) * ALIGNMENT
}

/// Every tensor of `lm` renamed, re-laid-out as llama.cpp stores it (q/k rows permuted for
/// llama, Gemma norms as `1 + w`) and quantized.
fn gguf_tensors(
    lm: &Pretrained,
    arch: GgufArch,
    ft: GgufFileType,
    path: &Path,
) -> Result<Vec<OutTensor>> {
    let c = &lm.model.config;
    let has_output = lm.model.lm_head.is_some();
    let mut out = Vec::new();
    for (hf, shape, mut values) in collect_tensors(lm)? {
        let tensor_err = |reason: String| ModelError::GgufTensor {
            path: path.to_path_buf(),
            tensor: hf.clone(),
            reason,
        };
        let name = names::gguf_name_for(arch, &hf)
            .ok_or_else(|| tensor_err(format!("no llama.cpp name for {arch:?}")))?;
        if arch.norms_offset_by_one() && name.ends_with("norm.weight") {
            values.iter_mut().for_each(|w| *w += 1.0);
        }
        if let (GgufArch::Llama, Some(is_q)) = (arch, names::is_query_or_key(&name)) {
            let heads = if is_q { c.num_heads } else { c.num_kv_heads };
            let rows = shape[0];
            if heads == 0 || rows % (2 * heads) != 0 {
                return Err(tensor_err(format!(
                    "{rows} rows are not {heads} heads of rotary pairs"
                )));
            }
            values = permute_rows(&values, rows, values.len() / rows, heads);
        }
        let cols = *shape.last().unwrap_or(&1);
        let ty = if shape.len() < 2 {
            QuantType::F32
        } else {
            tensor_type(ft, &name, c.num_layers, has_output, cols)
        };
        let data = kiln_cpu::quant::quantize(ty, &values, cols.max(1), &name)
            .map_err(|e| tensor_err(e.to_string()))?;
        let dims = shape.iter().rev().map(|&d| d as u64).collect();
        out.push(OutTensor {
            name,
            dims,
            ty,
            data,
        });
    }
    Ok(out)
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third between.
fn use_more_bits(layer: usize, n_layers: usize) -> bool {
    layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2
}

/// The storage type of 2-d tensor `name` (`cols` per row) in a file of type `ft`, as llama.cpp's
/// `llama_tensor_get_type` chooses for the types kiln writes, with its fallbacks for rows that
/// are not whole super-blocks (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0) and f16 for rows that are
/// not whole blocks of 32.
pub(crate) fn tensor_type(
    ft: GgufFileType,
    name: &str,
    n_layers: usize,
    has_output: bool,
    cols: usize,
) -> QuantType {
    let is_output = name == "output.weight" || (!has_output && name == "token_embd.weight");
    let layer = name
        .strip_prefix("blk.")
        .and_then(|r| r.split_once('.'))
        .and_then(|(n, _)| n.parse::<usize>().ok());
    let more_bits = layer.is_some_and(|i| use_more_bits(i, n_layers));
    let ty = match ft {
        GgufFileType::F32 => QuantType::F32,
        GgufFileType::F16 => QuantType::F16,
        GgufFileType::Bf16 => QuantType::Bf16,
        GgufFileType::Q8_0 => QuantType::Q8_0,
        GgufFileType::Q4_0 if is_output => QuantType::Q6_K,
        GgufFileType::Q4_0 => QuantType::Q4_0,
        GgufFileType::Q4_K_M => {
            let widened = name.ends_with("attn_v.weight") || name.ends_with("ffn_down.weight");
            if is_output || (widened && more_bits) {
                QuantType::Q6_K
            } else if name.ends_with("attn_qkv.weight") {
                QuantType::Q5_K
            } else {
                QuantType::Q4_K
            }
        }
    };
    let whole_super_blocks = cols.is_multiple_of(256);
    let fallback = match ty {
        QuantType::Q4_K if !whole_super_blocks => QuantType::Q5_0,
        QuantType::Q5_K if !whole_super_blocks => QuantType::Q5_1,
        QuantType::Q6_K if !whole_super_blocks => QuantType::Q8_0,
        other => other,
    };
    if !cols.is_multiple_of(fallback.block_layout().0) {
        QuantType::F16
    } else {
        fallback
    }
}

/// llama.cpp's q/k `permute` for the llama architecture: within each of `n_head` heads of
/// `2 · dim` rows, row `p · dim + i` goes to row `2 · i + p` (the inverse of
/// `weights::unpermute_rows`).
///
/// # Shapes
/// `data`: `[rows, cols]` row-major (a bias is `cols = 1`); returns the same shape.
pub(crate) fn permute_rows(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    for (hf, &gguf) in super::weights::qk_row_map(rows, n_head).iter().enumerate() {
        let g = gguf as usize;
        out[g * cols..(g + 1) * cols].copy_from_slice(&data[hf * cols..(hf + 1) * cols]);
    }
    out
}

/// ggml's type id of a storage type kiln writes.
fn ggml_type_id(ty: QuantType) -> u32 {
    match ty {
        QuantType::F32 => 0,
        QuantType::F16 => 1,
        QuantType::Q4_0 => 2,
        QuantType::Q4_1 => 3,
        QuantType::Q5_0 => 6,
        QuantType::Q5_1 => 7,
        QuantType::Q8_0 => 8,
        QuantType::Q4_K => 12,
        QuantType::Q5_K => 13,
        QuantType::Q6_K => 14,
        QuantType::Bf16 => 30,
        // Never chosen by `tensor_type`; bitsandbytes formats have no ggml id.
        QuantType::Nf4 | QuantType::Fp4 | QuantType::Int8 => u32::MAX,
    }
}

/// Magic, version 3, counts, metadata, tensor infos and the padding up to the data section.
fn header_bytes(metadata: &[(String, GgufValue)], tensors: &[OutTensor]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    b.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_str(&mut b, key);
        b.extend_from_slice(&type_id(value).to_le_bytes());
        put_value(&mut b, value);
    }
    let mut offset = 0usize;
    for t in tensors {
        put_str(&mut b, &t.name);
        b.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&ggml_type_id(t.ty).to_le_bytes());
        b.extend_from_slice(&(offset as u64).to_le_bytes());
        offset += padded(t.data.len());
    }
    b.resize(padded(b.len()), 0);
    b
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

/// GGUF's value type ids.
fn type_id(v: &GgufValue) -> u32 {
    match v {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    }
}

fn put_value(b: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => b.push(*x),
        GgufValue::I8(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U16(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => b.push(u8::from(*x)),
        GgufValue::String(s) => put_str(b, s),
        GgufValue::U64(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Array(items) => {
            // An empty array is written as an empty array of strings.
            let elem = items.first().map_or(8, type_id);
            b.extend_from_slice(&elem.to_le_bytes());
            b.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(b, item);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn permute_is_the_inverse_of_the_readers_unpermute() {
        let (rows, cols, heads) = (8, 3, 2);
        let x: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let p = permute_rows(&x, rows, cols, heads);
        assert_ne!(p, x);
        assert_eq!(
            super::super::weights::unpermute_rows(&p, rows, cols, heads),
            x
        );
    }

    #[test]
    fn q4_k_m_follows_llama_cpp() {
        use GgufFileType::Q4_K_M as M;
        // 32 layers: use_more_bits is true for 0..4, 28..32 and 4 + 3k + 2.
        let more: Vec<usize> = (0..32).filter(|&i| use_more_bits(i, 32)).collect();
        assert_eq!(
            more,
            vec![0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
        );
        let t = |name, has_output, cols| tensor_type(M, name, 32, has_output, cols);
        assert_eq!(t("blk.0.attn_v.weight", true, 4096), QuantType::Q6_K);
        assert_eq!(t("blk.4.attn_v.weight", true, 4096), QuantType::Q4_K);
        assert_eq!(t("blk.6.ffn_down.weight", true, 4096), QuantType::Q6_K);
        assert_eq!(t("blk.4.attn_q.weight", true, 4096), QuantType::Q4_K);
        assert_eq!(t("output.weight", true, 4096), QuantType::Q6_K);
        assert_eq!(t("token_embd.weight", true, 4096), QuantType::Q4_K);
        assert_eq!(t("token_embd.weight", false, 4096), QuantType::Q6_K);
        assert_eq!(t("blk.5.attn_qkv.weight", true, 4096), QuantType::Q5_K);
        // Rows of 64: llama.cpp's fallbacks.
        assert_eq!(t("blk.4.attn_q.weight", true, 64), QuantType::Q5_0);
        assert_eq!(t("blk.0.attn_v.weight", true, 64), QuantType::Q8_0);
        assert_eq!(t("blk.5.attn_qkv.weight", true, 64), QuantType::Q5_1);
        assert_eq!(t("blk.4.attn_q.weight", true, 48), QuantType::F16);
        assert_eq!("q4_k_m".parse::<GgufFileType>().unwrap(), M);
        assert!("Q3_K".parse::<GgufFileType>().is_err());
    }
}
