//! ggml tensor types: their ids in a GGUF file, block sizes and byte sizes; and the llama.cpp file
//! types (`LLAMA_FTYPE_*`) the writer produces, which the writer and its metadata both read.
//!
//! The table follows `GGML_QUANT_SIZES` of gguf-py and `ggml_type` of ggml.h.
use crate::error::{ModelError, Result};
use kiln_cpu::QuantType;

/// A ggml tensor type, as stored in a GGUF tensor info.
///
/// Every type known to ggml is listed so that the reader can compute each tensor's byte size and
/// check its bounds; only some of them can be dequantised (see [`GgmlType::is_dequantizable`]).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
    NVFP4,
    Q1_0,
}

/// Elements per super-block of the k-quants.
pub(crate) const QK_K: usize = 256;

impl GgmlType {
    /// The type with ggml id `id`, if ggml defines one.
    pub fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            16 => IQ2_XXS,
            17 => IQ2_XS,
            18 => IQ3_XXS,
            19 => IQ1_S,
            20 => IQ4_NL,
            21 => IQ3_S,
            22 => IQ2_S,
            23 => IQ4_XS,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            29 => IQ1_M,
            30 => BF16,
            34 => TQ1_0,
            35 => TQ2_0,
            39 => MXFP4,
            40 => NVFP4,
            41 => Q1_0,
            _ => return None,
        })
    }

    /// `(elements per block, bytes per block)`.
    pub fn block_layout(self) -> (usize, usize) {
        use GgmlType::*;
        match self {
            F32 => (1, 4),
            F16 => (1, 2),
            Q4_0 => (32, 2 + 16),
            Q4_1 => (32, 2 + 2 + 16),
            Q5_0 => (32, 2 + 4 + 16),
            Q5_1 => (32, 2 + 2 + 4 + 16),
            Q8_0 => (32, 2 + 32),
            Q8_1 => (32, 4 + 4 + 32),
            Q2_K => (QK_K, 2 + 2 + QK_K / 16 + QK_K / 4),
            Q3_K => (QK_K, 2 + QK_K / 4 + QK_K / 8 + 12),
            Q4_K => (QK_K, 2 + 2 + QK_K / 2 + 12),
            Q5_K => (QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12),
            Q6_K => (QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16),
            Q8_K => (QK_K, 4 + QK_K + QK_K / 8),
            IQ2_XXS => (QK_K, 2 + QK_K / 4),
            IQ2_XS => (QK_K, 2 + QK_K / 4 + QK_K / 32),
            IQ3_XXS => (QK_K, 2 + QK_K / 4 + QK_K / 8),
            IQ1_S => (QK_K, 2 + QK_K / 8 + QK_K / 16),
            IQ4_NL => (32, 2 + 16),
            IQ3_S => (QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4),
            IQ2_S => (QK_K, 2 + QK_K / 4 + QK_K / 16),
            IQ4_XS => (QK_K, 2 + 2 + QK_K / 2 + QK_K / 64),
            I8 => (1, 1),
            I16 => (1, 2),
            I32 => (1, 4),
            I64 => (1, 8),
            F64 => (1, 8),
            IQ1_M => (QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32),
            BF16 => (1, 2),
            TQ1_0 => (QK_K, 2 + 4 * 13),
            TQ2_0 => (QK_K, 2 + 64),
            MXFP4 => (32, 1 + 16),
            NVFP4 => (64, 4 + 32),
            Q1_0 => (128, 2 + 16),
        }
    }

    /// The format kiln computes with for this type, if kiln can read it.
    pub fn quant_type(self) -> Option<QuantType> {
        use GgmlType::*;
        Some(match self {
            F32 => QuantType::F32,
            F16 => QuantType::F16,
            BF16 => QuantType::Bf16,
            Q4_0 => QuantType::Q4_0,
            Q4_1 => QuantType::Q4_1,
            Q5_0 => QuantType::Q5_0,
            Q5_1 => QuantType::Q5_1,
            Q8_0 => QuantType::Q8_0,
            Q4_K => QuantType::Q4_K,
            Q5_K => QuantType::Q5_K,
            Q6_K => QuantType::Q6_K,
            _ => return None,
        })
    }

    /// Whether kiln can dequantise this type to f32.
    pub fn is_dequantizable(self) -> bool {
        self.quant_type().is_some()
    }

    /// The name ggml gives the type (`Q4_K`, `BF16`...).
    pub fn name(self) -> String {
        format!("{self:?}")
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// The file types [`save_gguf`](super::save_gguf) writes, as llama.cpp names them (`LLAMA_FTYPE_*`).
/// In config files, the name as a string (`export.gguf = "Q8_0"`).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
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

impl TryFrom<String> for GgufFileType {
    type Error = ModelError;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<GgufFileType> for String {
    fn from(t: GgufFileType) -> Self {
        t.name().to_string()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sizes_match_ggml() {
        assert_eq!(GgmlType::from_id(3), Some(GgmlType::Q4_1));
        assert_eq!(
            GgmlType::from_id(4),
            None,
            "id 4 (Q4_2) was removed from ggml"
        );
        assert_eq!(GgmlType::Q4_K.block_layout(), (256, 144));
        assert_eq!(GgmlType::Q5_K.block_layout(), (256, 176));
        assert_eq!(GgmlType::Q6_K.block_layout(), (256, 210));
        assert_eq!(GgmlType::Q8_0.block_layout(), (32, 34));
        assert!(!GgmlType::Q2_K.is_dequantizable());
        assert_eq!(GgmlType::IQ4_XS.to_string(), "IQ4_XS");
    }
}
