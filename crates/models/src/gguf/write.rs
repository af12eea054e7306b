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
use super::types::GgufFileType;
use super::value::GgufValue;
use super::write_meta;
use crate::error::{ModelError, Result};
use crate::export_hf::{ModelTensor, Values, model_tensors};
use crate::pretrained::Pretrained;
use kiln_cpu::QuantType;
use rayon::prelude::*;
use std::path::Path;

const ALIGNMENT: usize = 32;

/// What [`save_gguf`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgufExport {
    /// How 2-d tensors are stored; 1-d tensors (norms, biases) stay f32.
    pub file_type: GgufFileType,
}

/// A tensor as the file describes it: GGUF name, ggml dims (innermost first), type and the
/// length of its data.
pub(crate) struct OutTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: QuantType,
    pub len: usize,
}

/// One tensor to write: where its values come from and how they are re-laid-out.
struct Planned<'a> {
    out: OutTensor,
    source: ModelTensor<'a>,
    /// Gemma's norms are stored as `1 + w`.
    plus_one: bool,
    /// For llama's q/k: the source row of each GGUF row (`None`: the same row).
    rows_from: Option<Vec<u32>>,
}

/// f32 values dequantized or converted per block of rows (one block in memory at a time).
const ROWS_BYTES: usize = 16 << 20;

/// See [`Pretrained::save_gguf`]. Tensor by tensor: each is read (a frozen matrix dequantized a
/// block of rows at a time, a layer with active adapters merged into a copy of it), re-laid-out,
/// quantized and written before the next, so the peak is one tensor in f32 at most, not the
/// model.
pub fn save_gguf(lm: &Pretrained, path: &Path, export: GgufExport) -> Result<()> {
    let arch = write_meta::arch_of(lm)?;
    let plan = plan(lm, arch, export.file_type, path)?;
    let metadata = write_meta::metadata(lm, arch, export.file_type)?;
    let outs: Vec<&OutTensor> = plan.iter().map(|p| &p.out).collect();
    let header = header_bytes(&metadata, &outs);
    let data_len: usize = plan.iter().map(|p| padded(p.out.len)).sum();
    write_meta::check_round_trip(lm, path, &header, header.len() + data_len)?;
    kiln_cpu::io::write_atomic(path, |w| {
        w.write_all(&header).map_err(|e| ModelError::io(path, e))?;
        for p in &plan {
            write_tensor(w, p, path)?;
        }
        Ok(())
    })
}

fn padded(n: usize) -> usize {
    n.div_ceil(ALIGNMENT) * ALIGNMENT
}

/// Every tensor of `lm` renamed, with the type and layout llama.cpp stores it in (q/k rows
/// permuted for llama, Gemma norms as `1 + w`); nothing read yet.
fn plan<'a>(
    lm: &'a Pretrained,
    arch: GgufArch,
    ft: GgufFileType,
    path: &Path,
) -> Result<Vec<Planned<'a>>> {
    let c = &lm.model.config;
    let has_output = lm.model.lm_head.is_some();
    let mut out = Vec::new();
    for source in model_tensors(lm, true) {
        let (hf, shape) = (&source.name, &source.shape);
        let tensor_err = |reason: String| ModelError::GgufTensor {
            path: path.to_path_buf(),
            tensor: hf.clone(),
            reason,
        };
        let name = names::gguf_name_for(arch, hf)
            .ok_or_else(|| tensor_err(format!("no llama.cpp name for {arch:?}")))?;
        let plus_one = arch.norms_offset_by_one() && name.ends_with("norm.weight");
        let mut rows_from = None;
        if let (GgufArch::Llama, Some(is_q)) = (arch, names::is_query_or_key(&name)) {
            let heads = if is_q { c.num_heads } else { c.num_kv_heads };
            let rows = shape[0];
            if heads == 0 || rows % (2 * heads) != 0 {
                return Err(tensor_err(format!(
                    "{rows} rows are not {heads} heads of rotary pairs"
                )));
            }
            rows_from = Some(qk_rows_from(rows, heads));
        }
        let cols = *shape.last().unwrap_or(&1);
        let ty = if shape.len() < 2 {
            QuantType::F32
        } else {
            tensor_type(ft, &name, c.num_layers, has_output, cols)
        };
        let (block, bytes) = ty.block_layout();
        let numel: usize = shape.iter().product();
        let len = numel / block * bytes;
        let dims = shape.iter().rev().map(|&d| d as u64).collect();
        out.push(Planned {
            out: OutTensor {
                name,
                dims,
                ty,
                len,
            },
            source,
            plus_one,
            rows_from,
        });
    }
    Ok(out)
}

/// Reads, re-lays-out, quantizes and writes one tensor, a block of rows at a time.
fn write_tensor(w: &mut dyn std::io::Write, p: &Planned<'_>, path: &Path) -> Result<()> {
    let io = |e| ModelError::io(path, e);
    let t = &p.out;
    let tensor_err = |reason: String| ModelError::GgufTensor {
        path: path.to_path_buf(),
        tensor: p.source.name.clone(),
        reason,
    };
    let shape = &p.source.shape;
    let (rows, cols) = match shape[..] {
        [r, c] => (r, c),
        _ => (1, shape.iter().product()),
    };
    // A frozen matrix is read per block of rows; anything else is one f32 tensor.
    let dense = match &p.source.values {
        Values::Frozen(_) => None,
        _ => Some(p.source.to_vec()?),
    };
    let per_block = (ROWS_BYTES / 4 / cols.max(1)).clamp(1, rows.max(1));
    let mut buf = vec![0f32; per_block * cols];
    let mut written = 0;
    for r0 in (0..rows).step_by(per_block) {
        let n = per_block.min(rows - r0);
        let block = &mut buf[..n * cols];
        // Rows in parallel, as the quantization after: dequantizing a block format on one
        // thread would otherwise be the serial part of the export.
        block
            .par_chunks_mut(cols.max(1))
            .enumerate()
            .for_each(|(i, row)| {
                let src = p.rows_from.as_ref().map_or(r0 + i, |m| m[r0 + i] as usize);
                match (&dense, &p.source.values) {
                    (Some(d), _) => row.copy_from_slice(&d[src * cols..(src + 1) * cols]),
                    (None, Values::Frozen(q)) => q.dequantize_rows(src, 1, row),
                    (None, _) => unreachable!("only frozen matrices are read per row"),
                }
            });
        if p.plus_one {
            block.iter_mut().for_each(|v| *v += 1.0);
        }
        let data = kiln_cpu::quant::quantize(t.ty, block, cols.max(1), &t.name)
            .map_err(|e| tensor_err(e.to_string()))?;
        w.write_all(&data).map_err(io)?;
        written += data.len();
    }
    if written != t.len {
        return Err(tensor_err(format!(
            "{written} bytes written where the header says {}",
            t.len
        )));
    }
    w.write_all(&[0u8; ALIGNMENT][..padded(t.len) - t.len])
        .map_err(io)
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

/// llama.cpp's q/k `permute` for the llama architecture as a row map: within each of `n_head`
/// heads of `2 · dim` rows, GGUF row `2 · i + p` is row `p · dim + i` of the Hugging Face
/// weight (the inverse of `weights::qk_row_map`, which the reader uses).
pub(crate) fn qk_rows_from(rows: usize, n_head: usize) -> Vec<u32> {
    let mut from = vec![0u32; rows];
    for (hf, &g) in super::weights::qk_row_map(rows, n_head).iter().enumerate() {
        from[g as usize] = hf as u32;
    }
    from
}

/// The rows of `data` (`[rows, cols]` row-major) permuted by [`qk_rows_from`].
#[cfg(test)]
pub(crate) fn permute_rows(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    qk_rows_from(rows, n_head)
        .iter()
        .flat_map(|&hf| data[hf as usize * cols..(hf as usize + 1) * cols].to_vec())
        .collect()
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
fn header_bytes(metadata: &[(String, GgufValue)], tensors: &[&OutTensor]) -> Vec<u8> {
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
        offset += padded(t.len);
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
