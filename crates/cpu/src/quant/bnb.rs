//! bitsandbytes' formats: NF4 and FP4 (`bitsandbytes.functional.quantize_4bit`, blocks of 64
//! with double quantization of the absmax), and LLM.int8's row-wise int8
//! (`int8_vectorwise_quant`), quantized at load bit for bit as bitsandbytes 0.50 does on the
//! CPU, so a kiln QLoRA run starts from the very weights a PyTorch one does.
//!
//! Layouts as bitsandbytes stores them: the tensor is flattened row-major and cut into blocks of
//! 64 (the last one may be partial); 4-bit codes are packed two to a byte, the first element in
//! the high nibble, an odd count padded with the code of 0. Each block's absmax is itself
//! quantized (`compress_statistics=True`): `offset` is their mean, `absmax - offset` is cut into
//! blocks of 256, each scaled by its own absmax (`absmax2`) and coded with the signed dynamic
//! map (`code2`). Checked against bitsandbytes by `crates/cpu/tests/bnb.rs`
//! (`tools/fixtures/bnb_quant.py`).
//!
//! Dequantization follows the flat blocks, as CUDA, the torch fallback and bitsandbytes' scalar
//! C++ loop do. bitsandbytes 0.50's AVX-512 loop (taken when `cols` is a multiple of 16) indexes
//! the absmax as `row · (cols / 64) + col / 64`, which is only the flat block when `cols` is a
//! multiple of 64: for a `[4, 80]` NF4 weight it is off by up to 0.66 on an AVX-512 machine.
//! kiln does not reproduce that; every real weight has `cols` a multiple of 64.
mod quantize;
mod torch_ops;

pub use quantize::{FourBit, quantize_4bit, quantize_int8};

use super::{QMatrix, QuantType};
use crate::error::{CpuError, Result};

/// NF4's 16 levels (`bitsandbytes.functional.get_4bit_type("nf4")`, as f32).
pub const NF4_LEVELS: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// FP4's 16 levels: bitsandbytes' `[0, 0.0625, 8, 12, 4, 6, 2, 3]` and their negatives,
/// divided in f32 by their absmax 12 (`get_4bit_type("fp4")`). Code 8 is a sign-magnitude
/// "-0" but its level is +0.0, as `get_4bit_type` (Python's `-0` is the integer 0), the torch
/// fallback and the AVX-512 dequantizer have it; only bitsandbytes' scalar C++ loop (CPUs
/// without AVX-512) writes -0.0 there.
pub const FP4_LEVELS: [f32; 16] = [
    0.0,
    0.0625 / 12.0,
    8.0 / 12.0,
    1.0,
    4.0 / 12.0,
    6.0 / 12.0,
    2.0 / 12.0,
    3.0 / 12.0,
    0.0,
    -0.0625 / 12.0,
    -8.0 / 12.0,
    -1.0,
    -4.0 / 12.0,
    -6.0 / 12.0,
    -2.0 / 12.0,
    -3.0 / 12.0,
];

/// The factor of bitsandbytes' `int8_vectorwise_dequant`: its literal `7.874015718698502e-3`
/// is the f32 nearest 1/127 printed as a double, and torch multiplies by it in f32.
pub(super) const INV_127: f32 = 1.0 / 127.0;

/// Per-block statistics of a bitsandbytes matrix.
#[derive(Clone, Debug)]
pub enum Stats {
    /// NF4/FP4: `absmax[b] = code2[qabsmax[b]] · absmax2[b / blocksize2] + offset` (two f32
    /// roundings, as `dequantize_blockwise` then `+= offset`), weight `i` of block `b` is
    /// `levels[code] · absmax[b]`.
    Blockwise4 {
        /// Weights per block (64).
        blocksize: usize,
        /// The 16 levels the codes index.
        levels: [f32; 16],
        /// One code per block (double quantization).
        qabsmax: Vec<u8>,
        /// The second level's 256-entry code (the signed dynamic map).
        code2: Box<[f32; 256]>,
        /// One scale per `blocksize2` blocks.
        absmax2: Vec<f32>,
        /// Blocks per second-level block (256).
        blocksize2: usize,
        /// The mean subtracted before the second quantization.
        offset: f32,
    },
    /// int8 rows (`SCB`): `w[r, c] = (q[r, c] · scale[r]) · (1/127)`, each product rounded to
    /// f32, as `int8_vectorwise_dequant` computes it.
    Rows {
        /// One absmax per row.
        scales: Vec<f32>,
    },
}

impl Stats {
    /// Bytes the statistics hold.
    pub fn bytes(&self) -> usize {
        match self {
            Stats::Blockwise4 {
                qabsmax, absmax2, ..
            } => qabsmax.len() + 4 * (256 + absmax2.len() + 1),
            Stats::Rows { scales } => 4 * scales.len(),
        }
    }

    /// Dequantizes stored row `r` (`cols` weights) of codes `data` into `out`.
    pub(crate) fn dequantize_row(
        &self,
        ty: QuantType,
        data: &[u8],
        r: usize,
        cols: usize,
        out: &mut [f32],
    ) {
        match self {
            Stats::Blockwise4 {
                blocksize,
                levels,
                qabsmax,
                code2,
                absmax2,
                blocksize2,
                offset,
            } => {
                debug_assert!(matches!(ty, QuantType::Nf4 | QuantType::Fp4));
                let (start, end) = (r * cols, (r + 1) * cols);
                let mut i = start;
                while i < end {
                    let b = i / blocksize;
                    let block_end = ((b + 1) * blocksize).min(end);
                    let absmax = code2[qabsmax[b] as usize] * absmax2[b / blocksize2] + offset;
                    for j in i..block_end {
                        let byte = data[j / 2];
                        let q = if j % 2 == 0 { byte >> 4 } else { byte & 0x0F };
                        out[j - start] = levels[q as usize] * absmax;
                    }
                    i = block_end;
                }
            }
            Stats::Rows { scales } => {
                let s = scales[r];
                for (o, &q) in out[..cols].iter_mut().zip(&data[r * cols..(r + 1) * cols]) {
                    *o = ((q as i8) as f32 * s) * INV_127;
                }
            }
        }
    }
}

/// What `--quantize` asks for: the frozen base weights quantized at load, as bitsandbytes'
/// `Linear4bit` (NF4, FP4) or `Linear8bitLt` (int8) hold them.
///
/// ```
/// use kiln_cpu::quant::bnb::QuantizeOnLoad;
///
/// let q: QuantizeOnLoad = "NF4".parse()?;
/// let w = vec![0.5f32; 2 * 64];
/// let m = q.quantize(&w, 2, 64)?;
/// assert_eq!((m.shape(), m.to_f32()[0]), ([2, 64], 0.5));
/// assert!("q4".parse::<QuantizeOnLoad>().is_err());
/// # Ok::<(), kiln_cpu::CpuError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantizeOnLoad {
    /// NF4, blocks of 64, double-quantized absmax (QLoRA's default).
    Nf4,
    /// FP4, blocks of 64, double-quantized absmax.
    Fp4,
    /// LLM.int8's row-wise absmax int8 (no outlier decomposition).
    Int8,
}

impl QuantizeOnLoad {
    /// The accepted spellings, as the error lists them.
    pub const NAMES: [&'static str; 3] = ["nf4", "fp4", "int8"];

    /// The storage format it produces.
    pub fn quant_type(self) -> QuantType {
        match self {
            QuantizeOnLoad::Nf4 => QuantType::Nf4,
            QuantizeOnLoad::Fp4 => QuantType::Fp4,
            QuantizeOnLoad::Int8 => QuantType::Int8,
        }
    }

    /// Quantizes a row-major `[rows, cols]` f32 matrix as transformers + bitsandbytes quantize a
    /// checkpoint: NF4/FP4 from the f32 values; int8 from the values rounded to f16, as
    /// `Int8Params._quantize` casts the weight to `float16` before `int8_vectorwise_quant`
    /// (`crates/models/tests/quantized_reference.rs`).
    ///
    /// # Errors
    /// [`CpuError::Layout`] when `data` does not hold `rows · cols` values;
    /// [`CpuError::Quantize`] on a NaN or infinite weight.
    pub fn quantize(&self, data: &[f32], rows: usize, cols: usize) -> Result<QMatrix> {
        match self {
            QuantizeOnLoad::Nf4 => quantize_4bit(data, rows, cols, FourBit::Nf4),
            QuantizeOnLoad::Fp4 => quantize_4bit(data, rows, cols, FourBit::Fp4),
            QuantizeOnLoad::Int8 => {
                let f16: Vec<f32> = data
                    .iter()
                    .map(|&x| half::f16::from_f32(x).to_f32())
                    .collect();
                quantize_int8(&f16, rows, cols)
            }
        }
    }
}

impl std::str::FromStr for QuantizeOnLoad {
    type Err = CpuError;

    /// `nf4`, `fp4` or `int8`, in any case.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "nf4" => Ok(QuantizeOnLoad::Nf4),
            "fp4" => Ok(QuantizeOnLoad::Fp4),
            "int8" => Ok(QuantizeOnLoad::Int8),
            _ => Err(CpuError::UnknownQuantization {
                given: s.to_string(),
                accepted: Self::NAMES.join(", "),
            }),
        }
    }
}

impl std::fmt::Display for QuantizeOnLoad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.quant_type().name())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn quantize_on_load_parses_any_case_and_lists_the_choices() {
        assert_eq!(
            "NF4".parse::<QuantizeOnLoad>().unwrap(),
            QuantizeOnLoad::Nf4
        );
        assert_eq!(
            "fp4".parse::<QuantizeOnLoad>().unwrap(),
            QuantizeOnLoad::Fp4
        );
        assert_eq!(
            "Int8".parse::<QuantizeOnLoad>().unwrap(),
            QuantizeOnLoad::Int8
        );
        let err = "q4_0".parse::<QuantizeOnLoad>().unwrap_err().to_string();
        assert!(
            err.contains("q4_0") && err.contains("nf4, fp4, int8"),
            "{err}"
        );
    }
}
