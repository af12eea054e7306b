//! bitsandbytes' formats: NF4 and FP4 (`bitsandbytes.functional.quantize_4bit`, blocks of 64
//! with double quantization of the absmax), and LLM.int8's row-wise int8.
//!
//! Layouts as bitsandbytes stores them: the tensor is flattened row-major, 4-bit codes are
//! packed two to a byte with the first element in the high nibble; each block of `blocksize`
//! weights has an absmax, itself quantized (`compress_statistics=True`) as
//! `absmax - offset` in blocks of 256 with the signed dynamic map, `offset` being the mean.
use super::QuantType;

/// NF4's 16 levels (`bitsandbytes.functional.get_4bit_type("nf4")`).
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

/// Per-block statistics of a bitsandbytes matrix.
#[derive(Clone, Debug)]
pub enum Stats {
    /// NF4/FP4: `absmax[b] = code2[qabsmax[b]] · absmax2[b / blocksize2] + offset`.
    Blockwise4 {
        /// Weights per block (64).
        blocksize: usize,
        /// The 16 levels the codes index.
        levels: [f32; 16],
        /// One code per block (double quantization).
        qabsmax: Vec<u8>,
        /// The second level's 256-entry code (the signed dynamic map).
        code2: Vec<f32>,
        /// One scale per `blocksize2` blocks.
        absmax2: Vec<f32>,
        /// Blocks per second-level block (256).
        blocksize2: usize,
        /// The mean subtracted before the second quantization.
        offset: f32,
    },
    /// int8 rows: `w[r, c] = q[r, c] · scale[r] / 127`.
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
                qabsmax,
                code2,
                absmax2,
                ..
            } => qabsmax.len() + 4 * (code2.len() + absmax2.len() + 1),
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
                let start = r * cols;
                for (c, o) in out[..cols].iter_mut().enumerate() {
                    let i = start + c;
                    let b = i / blocksize;
                    let absmax = code2[qabsmax[b] as usize] * absmax2[b / blocksize2] + offset;
                    let byte = data[i / 2];
                    let q = if i % 2 == 0 { byte >> 4 } else { byte & 0x0F };
                    *o = levels[q as usize] * absmax;
                }
            }
            Stats::Rows { scales } => {
                let s = scales[r] / 127.0;
                for (o, &q) in out[..cols].iter_mut().zip(&data[r * cols..(r + 1) * cols]) {
                    *o = (q as i8) as f32 * s;
                }
            }
        }
    }
}
