//! A cheap check on load that a stored matrix holds no NaN or infinity.
//!
//! Why: a corrupt or badly converted checkpoint with a NaN scale used to load silently and give
//! `null` log-probabilities. Dense formats are scanned value by value (a pass over the bytes,
//! far cheaper than the file read); block formats only by their f16 scales and minimums, since
//! their integer codes are finite by construction.
use super::{QMatrix, QuantType};

/// A non-finite f16 has all five exponent bits set.
fn f16_bad(b: &[u8], at: usize) -> bool {
    u16::from_le_bytes([b[at], b[at + 1]]) & 0x7c00 == 0x7c00
}

impl QMatrix {
    /// The first stored row holding a NaN or infinite value (dense formats) or block scale or
    /// minimum (ggml block formats), or `None`. bitsandbytes matrices are quantized by kiln
    /// from values already checked, and report `None`.
    pub fn first_non_finite_row(&self) -> Option<usize> {
        use QuantType::*;
        let data = self.data();
        let (block, bytes) = self.ty.block_layout();
        // Byte offsets of the f16 fields to check in each block, or every element.
        let fields: &[usize] = match self.ty {
            F32 => {
                return data
                    .chunks_exact(4)
                    .position(|c| {
                        u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7f80_0000 == 0x7f80_0000
                    })
                    .map(|i| i / self.cols);
            }
            Bf16 => {
                return data
                    .chunks_exact(2)
                    .position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7f80 == 0x7f80)
                    .map(|i| i / self.cols);
            }
            F16 => &[0],
            Q4_0 | Q5_0 | Q8_0 => &[0],
            Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
            Q6_K => &[208],
            Nf4 | Fp4 | Int8 => return None,
        };
        let blocks_per_row = self.cols / block;
        data.chunks_exact(bytes)
            .position(|b| fields.iter().any(|&at| f16_bad(b, at)))
            .map(|i| i / blocks_per_row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::Bytes;

    fn matrix(ty: QuantType, rows: usize, cols: usize, poke: Option<(usize, [u8; 2])>) -> QMatrix {
        let (block, bytes) = ty.block_layout();
        // Bytes 0x11 everywhere: small finite scales and values.
        let mut data = vec![0x11u8; rows * cols / block * bytes];
        if ty == QuantType::F32 {
            data = (0..rows * cols)
                .flat_map(|_| 1.0f32.to_le_bytes())
                .collect();
        }
        if let Some((at, v)) = poke {
            data[at..at + 2].copy_from_slice(&v);
        }
        QMatrix::new(ty, rows, cols, Bytes::Owned(data.into())).unwrap()
    }

    #[test]
    fn finds_the_row_of_a_bad_scale_and_nothing_else() {
        let nan = 0x7e00u16.to_le_bytes();
        let inf = 0x7c00u16.to_le_bytes();
        for ty in [
            QuantType::Q4_0,
            QuantType::Q4_1,
            QuantType::Q8_0,
            QuantType::Q4_K,
            QuantType::Q6_K,
        ] {
            let (block, bytes) = ty.block_layout();
            let cols = block * 2;
            assert_eq!(
                matrix(ty, 3, cols, None).first_non_finite_row(),
                None,
                "{ty}"
            );
            let field = if ty == QuantType::Q6_K { 208 } else { 0 };
            // The second block of row 2.
            let at = (2 * 2 + 1) * bytes + field;
            assert_eq!(
                matrix(ty, 3, cols, Some((at, nan))).first_non_finite_row(),
                Some(2),
                "{ty}"
            );
            assert_eq!(
                matrix(ty, 3, cols, Some((at, inf))).first_non_finite_row(),
                Some(2),
                "{ty}"
            );
        }
        // Q4_1's minimum counts too.
        let at = 20 + 2;
        assert_eq!(
            matrix(QuantType::Q4_1, 3, 32, Some((at, nan))).first_non_finite_row(),
            Some(1)
        );
        // f16 elements, f32 elements (the high half of element 5 of [2, 4]).
        assert_eq!(
            matrix(QuantType::F16, 2, 4, Some((10, inf))).first_non_finite_row(),
            Some(1)
        );
        assert_eq!(
            matrix(QuantType::F32, 2, 4, None).first_non_finite_row(),
            None
        );
        assert_eq!(
            matrix(QuantType::F32, 2, 4, Some((22, [0xc0, 0x7f]))).first_non_finite_row(),
            Some(1)
        );
        assert_eq!(
            matrix(QuantType::Bf16, 2, 4, Some((6, [0xc0, 0x7f]))).first_non_finite_row(),
            Some(0)
        );
    }
}
