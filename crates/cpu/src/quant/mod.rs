//! Frozen weights kept in their storage format: ggml's blocks as a GGUF file holds them
//! (memory-mapped), 16-bit floats as safetensors hold them, or bitsandbytes' NF4/FP4/int8
//! quantized at load. A [`QMatrix`] is a `[rows, cols]` matrix in PyTorch's layout (a linear
//! weight is `[out, in]`) whose products dequantize a tile of rows at a time into a small
//! buffer ([`matmul`]), so no f32 copy of the whole weight ever exists.
//!
//! Why tiles and not a dense copy: a 7B model is 28 GB in f32 and 3.8 GB in Q4_0; the products
//! of training and inference read each weight once per call, and dequantizing a tile that stays
//! in cache costs a few percent of the product it feeds (`cargo bench -p kiln-cpu --bench
//! qmatmul`).
pub mod bnb;
mod dots;
mod finite;
mod ggml;
mod ggml_quantize;
pub mod matmul;

pub use ggml_quantize::quantize;

use crate::error::{CpuError, Result};
use memmap2::Mmap;
use std::sync::Arc;

/// A storage format kiln multiplies by without widening the whole tensor.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantType {
    /// 32-bit floats (small tensors, or a GGUF's F32 weight).
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
    /// ggml `Q4_0`: 32 weights, an f16 scale, 4-bit codes centred on 8.
    Q4_0,
    /// ggml `Q4_1`: 32 weights, f16 scale and minimum, 4-bit codes.
    Q4_1,
    /// ggml `Q5_0`.
    Q5_0,
    /// ggml `Q5_1`.
    Q5_1,
    /// ggml `Q8_0`: 32 weights, an f16 scale, 8-bit codes.
    Q8_0,
    /// ggml `Q4_K`: super-blocks of 256 with 6-bit sub-block scales and minimums.
    Q4_K,
    /// ggml `Q5_K`.
    Q5_K,
    /// ggml `Q6_K`.
    Q6_K,
    /// bitsandbytes NF4 (`quantize_4bit(quant_type="nf4")`), see [`bnb`].
    Nf4,
    /// bitsandbytes FP4.
    Fp4,
    /// LLM.int8's row-wise absmax int8 (`int8_vectorwise_quant`), see [`bnb`].
    Int8,
}

impl QuantType {
    /// `(elements per block, bytes per block)` of the block formats; for bitsandbytes' formats
    /// the packed codes alone (2 weights a byte for NF4/FP4, 1 for int8), their statistics apart.
    pub fn block_layout(self) -> (usize, usize) {
        use QuantType::*;
        match self {
            F32 => (1, 4),
            F16 | Bf16 => (1, 2),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q4_K => (256, 144),
            Q5_K => (256, 176),
            Q6_K => (256, 210),
            Nf4 | Fp4 => (2, 1),
            Int8 => (1, 1),
        }
    }

    /// Bits stored per weight, statistics included (for memory estimates).
    pub fn bits_per_weight(self) -> f64 {
        let (block, bytes) = self.block_layout();
        let codes = bytes as f64 * 8.0 / block as f64;
        match self {
            // One u8 absmax code per 64 weights and an f32 per 256 blocks (double quantization).
            QuantType::Nf4 | QuantType::Fp4 => codes + 8.0 / 64.0 + 32.0 / (64.0 * 256.0),
            // An f32 scale per row: negligible.
            _ => codes,
        }
    }

    /// The name as files and flags spell it (`Q4_K`, `BF16`, `nf4`).
    pub fn name(self) -> &'static str {
        use QuantType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Bf16 => "BF16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Nf4 => "nf4",
            Fp4 => "fp4",
            Int8 => "int8",
        }
    }
}

impl std::fmt::Display for QuantType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The bytes of a quantized tensor: a range of a memory-mapped file, or owned.
#[derive(Clone)]
pub enum Bytes {
    /// `len` bytes at `offset` of a shared map (a GGUF or safetensors file).
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
    /// Bytes kiln produced (quantized at load, or a merge).
    Owned(Arc<[u8]>),
}

impl Bytes {
    /// The bytes. A mapped range was checked against the map when it was made.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped { map, offset, len } => &map[*offset..*offset + *len],
            Bytes::Owned(b) => b,
        }
    }

    /// A range of a shared map.
    ///
    /// # Errors
    /// [`CpuError::Layout`] when the range is outside the map.
    pub fn mapped(map: Arc<Mmap>, offset: usize, len: usize) -> Result<Self> {
        if offset.checked_add(len).is_none_or(|end| end > map.len()) {
            return Err(CpuError::Layout(format!(
                "bytes {offset}..{offset}+{len} outside a map of {} bytes",
                map.len()
            )));
        }
        Ok(Bytes::Mapped { map, offset, len })
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bytes::Mapped { offset, len, .. } => write!(f, "Mapped({len} bytes at {offset})"),
            Bytes::Owned(b) => write!(f, "Owned({} bytes)", b.len()),
        }
    }
}

/// A frozen `[rows, cols]` matrix (PyTorch layout: a linear weight is `[out, in]`) kept in its
/// storage format.
///
/// Row `r` of the logical matrix is stored row `row_map[r]` when a map is given (llama.cpp's
/// q/k permutation is undone this way, with no copy). Gemma's `1 + w` norms are small and are
/// never kept quantized.
#[derive(Clone, Debug)]
pub struct QMatrix {
    ty: QuantType,
    rows: usize,
    cols: usize,
    data: Bytes,
    row_map: Option<Arc<[u32]>>,
    /// bitsandbytes' per-block statistics (NF4/FP4 absmax, int8 row scales).
    stats: Option<Arc<bnb::Stats>>,
    /// The matrix also held in the bf16 kernel's layout ([`Self::hold_bf16_layout`]).
    bf16_layout: Option<Arc<crate::bf16::PackedB>>,
}

impl QMatrix {
    /// A matrix of a block format (ggml types, f16, bf16, f32) whose rows are whole blocks.
    ///
    /// # Errors
    /// [`CpuError::Layout`] when `cols` is not a multiple of the block size or `data` does not
    /// hold exactly `rows` rows; use [`bnb`] for bitsandbytes' formats.
    pub fn new(ty: QuantType, rows: usize, cols: usize, data: Bytes) -> Result<Self> {
        if matches!(ty, QuantType::Nf4 | QuantType::Fp4 | QuantType::Int8) {
            return Err(CpuError::Layout(format!(
                "{ty} needs its statistics: build it with quant::bnb"
            )));
        }
        let (block, bytes) = ty.block_layout();
        if !cols.is_multiple_of(block) {
            return Err(CpuError::Layout(format!(
                "{cols} columns are not whole {ty} blocks of {block}"
            )));
        }
        let want = rows
            .checked_mul(cols / block)
            .and_then(|b| b.checked_mul(bytes))
            .ok_or_else(|| CpuError::Layout(format!("[{rows}, {cols}] of {ty} overflows")))?;
        if data.as_slice().len() != want {
            return Err(CpuError::Layout(format!(
                "{} bytes do not hold [{rows}, {cols}] of {ty} ({want} bytes)",
                data.as_slice().len()
            )));
        }
        Ok(Self {
            ty,
            rows,
            cols,
            data,
            row_map: None,
            stats: None,
            bf16_layout: None,
        })
    }

    /// A bitsandbytes matrix (built by [`bnb`]).
    pub(crate) fn with_stats(
        ty: QuantType,
        rows: usize,
        cols: usize,
        data: Bytes,
        stats: bnb::Stats,
    ) -> Self {
        Self {
            ty,
            rows,
            cols,
            data,
            row_map: None,
            stats: Some(Arc::new(stats)),
            bf16_layout: None,
        }
    }

    /// The same matrix with logical row `r` read from stored row `map[r]`.
    ///
    /// # Errors
    /// [`CpuError::Layout`] unless `map` is a permutation of `0..rows`.
    pub fn with_row_map(mut self, map: Vec<u32>) -> Result<Self> {
        let mut seen = vec![false; self.rows];
        let ok = map.len() == self.rows
            && map.iter().all(|&r| {
                let r = r as usize;
                r < seen.len() && !std::mem::replace(&mut seen[r], true)
            });
        if !ok {
            return Err(CpuError::Layout(format!(
                "a row map of {} entries is not a permutation of {} rows",
                map.len(),
                self.rows
            )));
        }
        self.row_map = Some(map.into());
        self.bf16_layout = None;
        Ok(self)
    }

    /// Also holds this matrix in the bf16 kernel's packed layout (its values rounded to bf16,
    /// 2 bytes per weight more), so [`Self::matmul_t`] in bf16 multiplies by it directly instead
    /// of dequantizing and packing a tile of rows at every product.
    ///
    /// Why: serving decodes a batch of rows in one product per weight at every step, and at
    /// 32 rows the per-step dequantization and packing of SmolLM2's Q4_1 matrices was about a
    /// fifth of the step (perf, `serve --precision bf16`, 32 clients) — PyTorch serving holds
    /// bf16 weights. Decoding one to four sequences keeps reading the stored codes (fewer bytes
    /// per weight than bf16; `host::try_frozen_linear` picks that product), and the backward
    /// keeps its tiles. Made once: the whole matrix is dequantized to f32 for the packing and
    /// dropped.
    pub fn hold_bf16_layout(&mut self) {
        if self.bf16_layout.is_none() && self.rows > 0 && self.cols > 0 {
            let w = self.to_f32();
            let wt = crate::gemm::MatRef::new(&w, self.rows, self.cols).t();
            self.bf16_layout = Some(Arc::new(crate::bf16::pack_b(wt)));
        }
    }

    /// Bytes of the layout [`Self::hold_bf16_layout`] made (0 without one).
    pub fn bf16_layout_bytes(&self) -> usize {
        self.bf16_layout.as_ref().map_or(0, |l| l.bytes())
    }

    /// The storage format.
    pub fn quant_type(&self) -> QuantType {
        self.ty
    }

    /// Rows (`out` of a linear weight).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (`in` of a linear weight).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// Bytes held (codes and statistics), for memory reports.
    pub fn storage_bytes(&self) -> usize {
        self.data.as_slice().len() + self.stats.as_ref().map_or(0, |s| s.bytes())
    }

    /// The stored bytes (codes only), as a file would hold them.
    pub fn data(&self) -> &[u8] {
        self.data.as_slice()
    }

    /// bitsandbytes' statistics, for NF4/FP4/int8.
    pub fn stats(&self) -> Option<&bnb::Stats> {
        self.stats.as_deref()
    }

    /// Bytes per stored row of a block format.
    fn row_bytes(&self) -> usize {
        let (block, bytes) = self.ty.block_layout();
        self.cols / block * bytes
    }

    /// Dequantizes logical rows `r0..r0 + n` into `out` (`[n, cols]`, row-major), on the calling
    /// thread.
    ///
    /// # Panics
    /// When the rows are out of range or `out` is too short (a kiln bug, never user data).
    pub fn dequantize_rows(&self, r0: usize, n: usize, out: &mut [f32]) {
        assert!(r0 + n <= self.rows && out.len() >= n * self.cols);
        let cols = self.cols;
        if let Some(stats) = &self.stats {
            for (i, row) in out[..n * cols].chunks_exact_mut(cols).enumerate() {
                let r = self.stored_row(r0 + i);
                stats.dequantize_row(self.ty, self.data.as_slice(), r, cols, row);
            }
            return;
        }
        let rb = self.row_bytes();
        let data = self.data.as_slice();
        match &self.row_map {
            None => ggml::dequantize_blocks(
                self.ty,
                &data[r0 * rb..(r0 + n) * rb],
                &mut out[..n * cols],
                false,
            ),
            Some(_) => {
                for (i, row) in out[..n * cols].chunks_exact_mut(cols).enumerate() {
                    let r = self.stored_row(r0 + i);
                    ggml::dequantize_blocks(self.ty, &data[r * rb..(r + 1) * rb], row, false);
                }
            }
        }
    }

    /// The whole matrix in f32 (tests, merges and exports; never the training or inference path).
    pub fn to_f32(&self) -> Vec<f32> {
        use rayon::prelude::*;
        let mut out = vec![0f32; self.rows * self.cols];
        if self.cols == 0 {
            return out;
        }
        const ROWS: usize = 16;
        out.par_chunks_mut(ROWS * self.cols)
            .enumerate()
            .for_each(|(i, chunk)| {
                let n = chunk.len() / self.cols;
                self.dequantize_rows(i * ROWS, n, chunk);
            });
        out
    }

    fn stored_row(&self, r: usize) -> usize {
        self.row_map.as_ref().map_or(r, |m| m[r] as usize)
    }
}

/// Dequantizes whole blocks of a ggml format or 16/32-bit floats (`data` holds exactly
/// `out.len()` elements' blocks), in parallel: the GGUF reader's full-tensor path.
///
/// # Errors
/// [`CpuError::Layout`] when the sizes do not match or `ty` is a bitsandbytes format.
pub fn dequantize(ty: QuantType, data: &[u8], out: &mut [f32]) -> Result<()> {
    let (block, bytes) = ty.block_layout();
    if matches!(ty, QuantType::Nf4 | QuantType::Fp4 | QuantType::Int8)
        || !out.len().is_multiple_of(block)
        || data.len() != out.len() / block * bytes
    {
        return Err(CpuError::Layout(format!(
            "{} bytes of {ty} do not hold {} elements",
            data.len(),
            out.len()
        )));
    }
    ggml::dequantize_blocks(ty, data, out, true);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn q8_matrix(rows: usize, cols: usize) -> QMatrix {
        let mut data = Vec::new();
        for r in 0..rows {
            for b in 0..cols / 32 {
                // d = 1/64 (f16 0x2400), codes (r + 3b + j) mod 15 - 7
                data.extend_from_slice(&[0x00, 0x24]);
                data.extend((0..32).map(|j| (((r + 3 * b + j) % 15) as i8 - 7) as u8));
            }
        }
        QMatrix::new(QuantType::Q8_0, rows, cols, Bytes::Owned(data.into())).unwrap()
    }

    #[test]
    fn rows_dequantize_to_their_codes_and_the_map_reorders_them() {
        let m = q8_matrix(4, 64);
        let all = m.to_f32();
        // row 1, block 0, j = 1: (1 + 0 + 1) mod 15 - 7
        assert_eq!(all[64 + 1], (2 - 7) as f32 / 64.0);
        let mut two = vec![0f32; 128];
        m.dequantize_rows(2, 2, &mut two);
        assert_eq!(&two[..], &all[128..]);
        let mapped = m.with_row_map(vec![3, 2, 1, 0]).unwrap();
        mapped.dequantize_rows(0, 1, &mut two);
        assert_eq!(&two[..64], &all[192..]);
    }

    #[test]
    fn bad_layouts_are_errors() {
        let data = Bytes::Owned(vec![0u8; 34].into());
        assert!(QMatrix::new(QuantType::Q8_0, 1, 33, data.clone()).is_err());
        assert!(QMatrix::new(QuantType::Q8_0, 2, 32, data.clone()).is_err());
        let m = QMatrix::new(QuantType::Q8_0, 1, 32, data).unwrap();
        assert!(m.clone().with_row_map(vec![1]).is_err());
        assert!(m.with_row_map(vec![0, 0]).is_err());
    }
}
