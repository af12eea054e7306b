//! Compute precision of kiln's CPU training step, and bf16 rounding and storage.
//!
//! `Bf16` is mixed precision as `torch.autocast("cpu", dtype=torch.bfloat16)` runs a training
//! step: every matrix product (the projections, LoRA's `A` and `B`, attention's scores and
//! probabilities × values, the output head) takes bf16 inputs (activations and weights rounded
//! to the nearest bf16, ties to even) and gives a bf16 output, accumulating in f32; in the
//! backward pass each product's incoming gradient and its results are rounded the same way.
//! Norms, softmax, the residual stream, the loss, the gradients' sums and the weights the
//! optimizer updates stay f32. Activations kept for the backward pass are stored as bf16
//! (2 bytes instead of 4), which is the memory it saves. The products whose operands are both
//! bf16 values run through [`crate::matmul_in`] on [`crate::bf16::matmul_bf16`]: the
//! CPU's bf16 unit where it has one (AVX512-BF16), the f32 product on the same values elsewhere.
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;
use std::mem::MaybeUninit;
use std::str::FromStr;

/// Precision of the training step's products and saved activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    #[serde(alias = "fp32", alias = "float32")]
    F32,
    /// bf16 products and saved activations, f32 elsewhere (see the module docs).
    #[serde(alias = "bfloat16")]
    Bf16,
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            _ => Err(format!("unknown precision `{s}`: expected f32 or bf16")),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        })
    }
}

/// The bf16 bits of `x`, rounded to nearest, ties to even (NaN stays a quiet NaN), as
/// `half::bf16::from_f32` and PyTorch round. Ours rather than `half`'s because `half`'s
/// conversion branches per value and these loops run over every activation of a training step;
/// the tests check both agree.
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    (round_bits(x) >> 16) as u16
}

/// The f32 bits of `x` rounded to bf16 (low half zero). Branch-free so loops vectorise.
#[inline(always)]
fn round_bits(x: f32) -> u32 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000;
    let quiet_nan = (b | 0x0040_0000) & 0xffff_0000;
    if x.is_nan() { quiet_nan } else { rounded }
}

/// The f32 value of bf16 bits.
#[inline(always)]
pub fn bf16_value(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// `x` rounded to the nearest bf16 value, as f32.
#[inline(always)]
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits(round_bits(x))
}

/// Elements per parallel task of the conversions below (large buffers use every core).
const PAR_CHUNK: usize = 1 << 15;

/// `dst[i] = f(src[i])`, in parallel for large buffers; `dst` may be uninitialised.
fn map_into<S: Copy + Sync, D: Send>(
    src: &[S],
    dst: &mut [MaybeUninit<D>],
    f: impl Fn(S) -> D + Sync,
) {
    if src.len() > PAR_CHUNK {
        use rayon::prelude::*;
        dst.par_chunks_mut(PAR_CHUNK)
            .zip(src.par_chunks(PAR_CHUNK))
            .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, &s)| _ = d.write(f(s))));
        return;
    }
    dst.iter_mut()
        .zip(src)
        .for_each(|(d, &s)| _ = d.write(f(s)));
}

/// `f` of every element of `src`, collected. The buffer is written once, never zeroed first:
/// zeroing the copies of `Precision::input` and `Stash` took 3% of a bf16 SmolLM2 LoRA step
/// (perf: glibc's `calloc` clears reused heap memory).
fn map_vec<S: Copy + Sync, D: Copy + Send>(src: &[S], f: impl Fn(S) -> D + Sync) -> Vec<D> {
    let mut out = Vec::with_capacity(src.len());
    map_into(src, &mut out.spare_capacity_mut()[..src.len()], f);
    // SAFETY: `map_into` wrote each of the first `src.len()` elements.
    unsafe { out.set_len(src.len()) };
    out
}

/// Rounds every value to bf16 in place.
pub fn round_slice(v: &mut [f32]) {
    if v.len() > PAR_CHUNK {
        use rayon::prelude::*;
        v.par_chunks_mut(PAR_CHUNK)
            .for_each(|c| c.iter_mut().for_each(|x| *x = round_bf16(*x)));
        return;
    }
    v.iter_mut().for_each(|x| *x = round_bf16(*x));
}

impl Precision {
    /// The precision kiln trains in when none is asked for: bf16 on CPUs with bf16 units
    /// (where [`crate::bf16`] runs its `vdpbf16ps` kernel and a bf16 step is the faster one),
    /// f32 elsewhere (a bf16 step there multiplies in f32 and only saves memory).
    pub fn native() -> Self {
        match crate::bf16::Backend::detected() {
            crate::bf16::Backend::Avx512Bf16 => Self::Bf16,
            crate::bf16::Backend::F32Fallback => Self::F32,
        }
    }

    /// Rounds `v` in place if this precision is bf16.
    pub fn round(self, v: &mut [f32]) {
        if self == Self::Bf16 {
            round_slice(v);
        }
    }

    /// Whether every value of `x` is representable in this precision (a product's input
    /// must be, in bf16).
    pub fn holds(self, x: &[f32]) -> bool {
        self == Self::F32 || x.iter().all(|&v| v.is_nan() || round_bf16(v) == v)
    }

    /// `x` as the input of a product: borrowed in f32, a rounded copy in bf16.
    pub fn input<'a>(self, x: &'a [f32]) -> Cow<'a, [f32]> {
        match self {
            Self::F32 => Cow::Borrowed(x),
            Self::Bf16 => Cow::Owned(map_vec(x, round_bf16)),
        }
    }

    /// Keeps `v` for the backward pass in this precision.
    pub fn stash(self, v: Vec<f32>) -> Stash {
        match self {
            Self::F32 => Stash::F32(v),
            Self::Bf16 => Stash::Bf16(map_vec(&v, bf16_bits)),
        }
    }
}

/// An activation kept for the backward pass: f32, or bf16 bits (rounded when stored).
#[derive(Debug, Clone, PartialEq)]
pub enum Stash {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
}

impl Stash {
    /// The values as f32 (borrowed, or widened from bf16).
    pub fn get(&self) -> Cow<'_, [f32]> {
        match self {
            Self::F32(v) => Cow::Borrowed(v),
            Self::Bf16(v) => Cow::Owned(map_vec(v, bf16_value)),
        }
    }

    /// Bytes of storage.
    pub fn bytes(&self) -> usize {
        match self {
            Self::F32(v) => v.len() * 4,
            Self::Bf16(v) => v.len() * 2,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn rounding_matches_half_including_ties_and_specials() {
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            -1.5,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40, // subnormal
            3.140_625,
            // Exact ties: 1 + 2^-8 (rounds down to even 1.0), 1 + 3·2^-8 (rounds up).
            f32::from_bits(0x3f80_8000),
            f32::from_bits(0x3f81_8000),
            f32::from_bits(0x3f80_8001),
        ];
        let mut s = 0x1234_5678u32;
        for _ in 0..10_000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            values.push(f32::from_bits(s));
        }
        for x in values.into_iter().filter(|x| !x.is_nan()) {
            assert_eq!(bf16_bits(x), bf16::from_f32(x).to_bits(), "{x:e}");
        }
        assert_eq!(round_bf16(f32::from_bits(0x3f80_8000)), 1.0);
        assert_eq!(round_bf16(f32::from_bits(0x3f81_8000)), 1.015_625);
        assert!(round_bf16(f32::NAN).is_nan());
        assert!(round_bf16(f32::from_bits(0x7f80_0001)).is_nan());
    }

    #[test]
    fn stash_keeps_rounded_values_in_half_the_bytes() {
        let v = vec![1.0f32, 1.0 + 1e-3, -2.5e-7, 65_504.3];
        let f = Precision::F32.stash(v.clone());
        assert_eq!((f.get().to_vec(), f.bytes()), (v.clone(), 16));
        let b = Precision::Bf16.stash(v.clone());
        assert_eq!(b.bytes(), 8);
        let want: Vec<f32> = v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
        assert_eq!(b.get().to_vec(), want);
        assert_ne!(want, v, "the test values are not all bf16-exact");
        // Rounding is idempotent: a stored input equals the product's rounded input.
        assert_eq!(Precision::Bf16.input(&want).to_vec(), want);
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert_eq!("float32".parse::<Precision>().unwrap(), Precision::F32);
        assert!("fp8".parse::<Precision>().unwrap_err().contains("fp8"));
        assert_eq!(Precision::Bf16.to_string(), "bf16");
        let json: Precision = serde_json::from_str("\"bf16\"").unwrap();
        assert_eq!(json, Precision::Bf16);
    }
}
