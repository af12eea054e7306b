//! The quantizers: NF4/FP4 as `bitsandbytes.functional.quantize_4bit(blocksize=64,
//! compress_statistics=True)` and int8 as `int8_vectorwise_quant`, on bitsandbytes 0.50's CPU
//! path, reproduced operation by operation in f32 so the bytes are the same.
//!
//! 4-bit codes (bitsandbytes' default backend, torch ops): a full block is scaled by
//! `x · (1 / max(absmax, 1e-38))`, the partial last block by `x / max(absmax, 1e-38)` (whose
//! stored absmax is the clamped one), clamped to [-1, 1], and `torch.bucketize`d against the
//! midpoints of the sorted levels: a value on a midpoint takes the lower level. FP4's levels
//! are sorted by `torch.argsort`, which puts +0 (code 0) before -0 (code 8): a small positive
//! value codes as -0 and a small negative one as +0. Absmax codes (the native C++ kernel)
//! come from a 65536-bin table, not the nearest code, and a block whose absmax is 0 codes 0.
use super::torch_ops::{SIGNED_DYNAMIC_MAP, lookup_bin, lookup_table, torch_mean};
use super::{FP4_LEVELS, NF4_LEVELS, Stats};
use crate::error::{CpuError, Result};
use crate::quant::{Bytes, QMatrix, QuantType};
use rayon::prelude::*;
use std::sync::OnceLock;

/// Weights per 4-bit block.
const BLOCK: usize = 64;
/// Absmax values per second-level block.
const BLOCK2: usize = 256;
/// Blocks per rayon task (a few KB of codes).
const TASK_BLOCKS: usize = 256;

/// The two 4-bit formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FourBit {
    /// Normal-float 4 (QLoRA).
    Nf4,
    /// bitsandbytes' 4-bit float.
    Fp4,
}

impl FourBit {
    fn levels(self) -> [f32; 16] {
        match self {
            FourBit::Nf4 => NF4_LEVELS,
            FourBit::Fp4 => FP4_LEVELS,
        }
    }

    /// Codes in ascending order of their level, ties as `torch.argsort` left them.
    fn sorted_codes(self) -> [u8; 16] {
        match self {
            FourBit::Nf4 => std::array::from_fn(|i| i as u8),
            FourBit::Fp4 => [11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3],
        }
    }
}

/// Picks 4-bit codes for scaled values: `torch.bucketize` against the 15 midpoints (the number
/// of midpoints below the value), then the sorted position's code.
struct Coder {
    bounds: [f32; 15],
    codes: [u8; 16],
}

impl Coder {
    fn new(kind: FourBit) -> Self {
        let (levels, codes) = (kind.levels(), kind.sorted_codes());
        let bounds = std::array::from_fn(|i| {
            (levels[codes[i] as usize] + levels[codes[i + 1] as usize]) / 2.0
        });
        Self { bounds, codes }
    }

    /// Codes of up to 64 scaled values: one pass per midpoint over the whole block, which the
    /// compiler vectorises (a per-value search would branch on every weight).
    fn code_block(&self, s: &[f32; BLOCK], q: &mut [u8; BLOCK]) {
        *q = [0; BLOCK];
        for &b in &self.bounds {
            for (q, &v) in q.iter_mut().zip(s) {
                *q += u8::from(b < v);
            }
        }
        for q in q.iter_mut() {
            *q = self.codes[*q as usize];
        }
    }
}

/// A non-finite weight as the typed error, naming where it is.
fn check_finite(block: &[f32], first: usize, cols: usize) -> Result<()> {
    match block.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(j) => {
            let i = first + j;
            Err(CpuError::Quantize {
                what: format!("the weight at [{}, {}]", i / cols.max(1), i % cols.max(1)),
                reason: format!("it is {}", block[j]),
            })
        }
    }
}

/// Codes one block (`x.len()` ≤ 64 weights into `out`, `ceil(len / 2)` bytes) and returns its
/// stored absmax.
fn code_block(coder: &Coder, x: &[f32], out: &mut [u8]) -> f32 {
    let absmax = x
        .iter()
        .fold(0f32, |m, &v| if v.abs() > m { v.abs() } else { m });
    let clamped = absmax.max(1e-38);
    // The padding of an odd count is a scaled 0.
    let mut s = [0f32; BLOCK];
    if x.len() == BLOCK {
        let inv = 1.0 / clamped;
        for (s, &v) in s.iter_mut().zip(x) {
            *s = (v * inv).clamp(-1.0, 1.0);
        }
    } else {
        for (s, &v) in s.iter_mut().zip(x) {
            *s = (v / clamped).clamp(-1.0, 1.0);
        }
    }
    let mut q = [0u8; BLOCK];
    coder.code_block(&s, &mut q);
    for (o, pair) in out.iter_mut().zip(q.chunks_exact(2)) {
        *o = (pair[0] << 4) | pair[1];
    }
    if x.len() == BLOCK { absmax } else { clamped }
}

/// The signed dynamic map and the native quantizer's table for it, built once.
fn dynamic_map() -> &'static (Box<[f32; 256]>, Vec<u8>) {
    static MAP: OnceLock<(Box<[f32; 256]>, Vec<u8>)> = OnceLock::new();
    MAP.get_or_init(|| {
        let code = Box::new(SIGNED_DYNAMIC_MAP);
        let lut = lookup_table(&code);
        (code, lut)
    })
}

/// `quantize_blockwise(absmax - offset, blocksize=256)` on bitsandbytes' native CPU kernel:
/// the codes and one scale per 256 values.
fn quantize_absmax(centered: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let (_, lut) = dynamic_map();
    let mut codes = vec![0u8; centered.len()];
    let scales = centered
        .par_chunks(BLOCK2)
        .zip(codes.par_chunks_mut(BLOCK2))
        .map(|(x, q)| {
            let absmax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            if absmax != 0.0 {
                let inv = 1.0 / absmax;
                for (q, &v) in q.iter_mut().zip(x) {
                    *q = lut[lookup_bin(v * inv)];
                }
            }
            absmax
        })
        .collect();
    (codes, scales)
}

/// Quantizes a row-major `[rows, cols]` matrix to NF4 or FP4 exactly as bitsandbytes 0.50's
/// `quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type=...)` does on the CPU:
/// the same packed codes, absmax codes, second-level scales, offset and dynamic map, byte for
/// byte (the offset as a single-threaded torch computes it; see the module docs).
///
/// Speed: a 3072×8192 matrix (25M weights) takes 201 ms (criterion median, `cargo bench -p
/// kiln-cpu --bench quantize`, 2026-12-07) on this repository's 2-core AVX-512 machine while
/// it was shared (load average 8), so a 3.8B-parameter model (about 150 such matrices) takes
/// about 30 s at worst (an idle machine was not available to measure).
///
/// # Errors
/// [`CpuError::Layout`] when `data` does not hold `rows · cols` values;
/// [`CpuError::Quantize`] on a NaN or infinite weight (naming its position).
pub fn quantize_4bit(data: &[f32], rows: usize, cols: usize, kind: FourBit) -> Result<QMatrix> {
    let n = rows
        .checked_mul(cols)
        .filter(|&n| n == data.len())
        .ok_or_else(|| {
            CpuError::Layout(format!(
                "{} values are not a [{rows}, {cols}] matrix",
                data.len()
            ))
        })?;
    let coder = Coder::new(kind);
    let blocks = n.div_ceil(BLOCK);
    let mut codes = vec![0u8; n.div_ceil(2)];
    let mut absmax = vec![0f32; blocks];
    data.par_chunks(BLOCK * TASK_BLOCKS)
        .zip(codes.par_chunks_mut(BLOCK / 2 * TASK_BLOCKS))
        .zip(absmax.par_chunks_mut(TASK_BLOCKS))
        .enumerate()
        .try_for_each(|(t, ((x, q), a))| {
            check_finite(x, t * BLOCK * TASK_BLOCKS, cols)?;
            for ((x, q), a) in x.chunks(BLOCK).zip(q.chunks_mut(BLOCK / 2)).zip(a) {
                *a = code_block(&coder, x, q);
            }
            Ok(())
        })?;
    let offset = if blocks == 0 {
        0.0
    } else {
        torch_mean(&absmax)
    };
    let centered: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
    let (qabsmax, absmax2) = quantize_absmax(&centered);
    let (code2, _) = dynamic_map();
    let stats = Stats::Blockwise4 {
        blocksize: BLOCK,
        levels: kind.levels(),
        qabsmax,
        code2: code2.clone(),
        absmax2,
        blocksize2: BLOCK2,
        offset,
    };
    let ty = match kind {
        FourBit::Nf4 => QuantType::Nf4,
        FourBit::Fp4 => QuantType::Fp4,
    };
    Ok(QMatrix::with_stats(
        ty,
        rows,
        cols,
        Bytes::Owned(codes.into()),
        stats,
    ))
}

/// Quantizes a row-major `[rows, cols]` matrix to LLM.int8's row-wise int8 exactly as
/// bitsandbytes 0.50's `int8_vectorwise_quant(w)` (threshold 0) does: `SCB[r]` is the row's
/// absmax and `CB = round(w · ((1 / SCB) · 127))` (torch evaluates `127.0 / SCB` as a reciprocal
/// times 127), each step rounded to f32 and the last half to even (`torch.round`); an all-zero
/// row codes 0.
///
/// # Errors
/// [`CpuError::Layout`] when `data` does not hold `rows · cols` values;
/// [`CpuError::Quantize`] on a NaN or infinite weight.
pub fn quantize_int8(data: &[f32], rows: usize, cols: usize) -> Result<QMatrix> {
    if rows.checked_mul(cols) != Some(data.len()) {
        return Err(CpuError::Layout(format!(
            "{} values are not a [{rows}, {cols}] matrix",
            data.len()
        )));
    }
    let mut codes = vec![0u8; data.len()];
    let mut scales = vec![0f32; rows];
    if cols > 0 {
        data.par_chunks(cols)
            .zip(codes.par_chunks_mut(cols))
            .zip(scales.par_iter_mut())
            .enumerate()
            .try_for_each(|(r, ((x, q), s))| {
                check_finite(x, r * cols, cols)?;
                *s = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                if *s != 0.0 {
                    // `127.0 / row_stats` is `Tensor.__rtruediv__`: a reciprocal, then × 127.
                    let factor = (1.0 / *s) * 127.0;
                    for (q, &v) in q.iter_mut().zip(x) {
                        *q = (v * factor).round_ties_even() as i8 as u8;
                    }
                }
                Ok(())
            })?;
    }
    let stats = Stats::Rows { scales };
    Ok(QMatrix::with_stats(
        QuantType::Int8,
        rows,
        cols,
        Bytes::Owned(codes.into()),
        stats,
    ))
}
