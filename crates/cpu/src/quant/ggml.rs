//! ggml's block formats (llama.cpp's quantized types) dequantised to f32.
//!
//! Block layouts are ggml's (`ggml-common.h`); the arithmetic follows gguf-py's
//! `gguf.quants.dequantize` operation for operation (f32 products, no fused multiply-add), so the
//! results are bit-identical to what transformers loads from the same file.
use super::QuantType;
use half::{bf16, f16};
use rayon::prelude::*;

/// Blocks' worth of elements handed to one rayon task.
const ELEMENTS_PER_TASK: usize = 1 << 15;

/// Dequantises whole blocks of `ty` (a ggml type or a 16-bit float) from `data` into `out`,
/// in parallel over blocks when `parallel`.
///
/// # Shapes
/// `out.len()` elements, a multiple of `ty`'s block size; `data.len()` is the matching number of
/// blocks times the block's byte size (checked by the caller).
pub(crate) fn dequantize_blocks(ty: QuantType, data: &[u8], out: &mut [f32], parallel: bool) {
    match ty {
        QuantType::F32 => run::<1, 4>(data, out, parallel, |b, o| o[0] = f32::from_le_bytes(*b)),
        QuantType::F16 => run::<1, 2>(data, out, parallel, |b, o| {
            o[0] = f16::from_le_bytes(*b).to_f32()
        }),
        QuantType::Bf16 => run::<1, 2>(data, out, parallel, |b, o| {
            o[0] = bf16::from_le_bytes(*b).to_f32()
        }),
        QuantType::Q4_0 => run(data, out, parallel, q4_0),
        QuantType::Q4_1 => run(data, out, parallel, q4_1),
        QuantType::Q5_0 => run(data, out, parallel, q5_0),
        QuantType::Q5_1 => run(data, out, parallel, q5_1),
        QuantType::Q8_0 => run(data, out, parallel, q8_0),
        QuantType::Q4_K => run(data, out, parallel, q4_k),
        QuantType::Q5_K => run(data, out, parallel, q5_k),
        QuantType::Q6_K => run(data, out, parallel, q6_k),
        QuantType::Nf4 | QuantType::Fp4 | QuantType::Int8 => {
            unreachable!("bitsandbytes formats carry tensor-wide statistics: see quant::bnb")
        }
    }
}

/// Applies `kernel` to every `(input block, output block)` pair, in parallel when asked.
fn run<const BS: usize, const TS: usize>(
    data: &[u8],
    out: &mut [f32],
    parallel: bool,
    kernel: impl Fn(&[u8; TS], &mut [f32; BS]) + Sync,
) {
    let (blocks, _) = data.as_chunks::<TS>();
    let (outs, _) = out.as_chunks_mut::<BS>();
    if !parallel {
        for (o, b) in outs.iter_mut().zip(blocks) {
            kernel(b, o);
        }
        return;
    }
    let per_task = (ELEMENTS_PER_TASK / BS).max(1);
    outs.par_chunks_mut(per_task)
        .zip(blocks.par_chunks(per_task))
        .for_each(|(outs, blocks)| {
            for (o, b) in outs.iter_mut().zip(blocks) {
                kernel(b, o);
            }
        });
}

#[inline(always)]
fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// `d: f16, qs: [u8; 16]`; `x = (q - 8) * d`, low nibbles first.
#[inline(always)]
pub(crate) fn q4_0(b: &[u8; 18], o: &mut [f32; 32]) {
    let d = half_at(b, 0);
    for (j, &q) in b[2..].iter().enumerate() {
        o[j] = d * ((q & 0x0F) as i32 - 8) as f32;
        o[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

/// `d: f16, m: f16, qs: [u8; 16]`; `x = q * d + m`.
#[inline(always)]
pub(crate) fn q4_1(b: &[u8; 20], o: &mut [f32; 32]) {
    let (d, m) = (half_at(b, 0), half_at(b, 2));
    for (j, &q) in b[4..].iter().enumerate() {
        o[j] = d * (q & 0x0F) as f32 + m;
        o[j + 16] = d * (q >> 4) as f32 + m;
    }
}

/// `d: f16, qh: u32, qs: [u8; 16]`; the 5th bit of element `i` is bit `i` of `qh`; `x = (q - 16) * d`.
#[inline(always)]
pub(crate) fn q5_0(b: &[u8; 22], o: &mut [f32; 32]) {
    let d = half_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (j, &q) in b[6..].iter().enumerate() {
        let lo = (q & 0x0F) as u32 | ((qh >> j) & 1) << 4;
        let hi = (q >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
        o[j] = d * (lo as i32 - 16) as f32;
        o[j + 16] = d * (hi as i32 - 16) as f32;
    }
}

/// `d: f16, m: f16, qh: u32, qs: [u8; 16]`; `x = q * d + m`.
#[inline(always)]
pub(crate) fn q5_1(b: &[u8; 24], o: &mut [f32; 32]) {
    let (d, m) = (half_at(b, 0), half_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (j, &q) in b[8..].iter().enumerate() {
        let lo = (q & 0x0F) as u32 | ((qh >> j) & 1) << 4;
        let hi = (q >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
        o[j] = d * lo as f32 + m;
        o[j + 16] = d * hi as f32 + m;
    }
}

/// `d: f16, qs: [i8; 32]`; `x = q * d`.
#[inline(always)]
pub(crate) fn q8_0(b: &[u8; 34], o: &mut [f32; 32]) {
    let d = half_at(b, 0);
    for (x, &q) in o.iter_mut().zip(&b[2..]) {
        *x = (q as i8) as f32 * d;
    }
}

/// Scale and minimum of sub-block `j` (0..8) of a Q4_K/Q5_K super-block, 6 bits each, packed
/// in 12 bytes.
#[inline(always)]
pub(crate) fn k_scale(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 0x3F, s[j + 4] & 0x3F)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 2) & 0x30),
            (s[j + 4] >> 4) | ((s[j] >> 2) & 0x30),
        )
    }
}

/// Sub-block `k` (elements `32k..32k + 32`) of a Q4_K super-block.
/// `d, dmin: f16, scales: [u8; 12], qs: [u8; 128]`; `x = (d * sc) * q - dmin * m`.
#[inline(always)]
pub(crate) fn q4_k_group(b: &[u8; 144], k: usize, o: &mut [f32; 32]) {
    let (d, dmin) = (half_at(b, 0), half_at(b, 2));
    let (sc, mn) = k_scale(&b[4..16], k);
    let (dl, ml) = (d * sc as f32, dmin * mn as f32);
    let (chunk, shift) = (k / 2, 4 * (k % 2));
    let qs = &b[16 + chunk * 32..16 + chunk * 32 + 32];
    for (x, &q) in o.iter_mut().zip(qs) {
        *x = dl * ((q >> shift) & 0x0F) as f32 - ml;
    }
}

/// Sub-block `k` of a Q5_K super-block: `d, dmin: f16, scales: [u8; 12], qh: [u8; 32],
/// qs: [u8; 128]`; the 5th bit of sub-block `k` is bit `k` of `qh[l]`.
#[inline(always)]
pub(crate) fn q5_k_group(b: &[u8; 176], k: usize, o: &mut [f32; 32]) {
    let (d, dmin) = (half_at(b, 0), half_at(b, 2));
    let (sc, mn) = k_scale(&b[4..16], k);
    let (dl, ml) = (d * sc as f32, dmin * mn as f32);
    let (chunk, shift) = (k / 2, 4 * (k % 2));
    let (qh, qs) = (&b[16..48], &b[48 + chunk * 32..48 + chunk * 32 + 32]);
    for l in 0..32 {
        let q = ((qs[l] >> shift) & 0x0F) | (((qh[l] >> k) & 1) << 4);
        o[l] = dl * q as f32 - ml;
    }
}

/// Elements `32g..32g + 32` (`g = 4h + t`) of a Q6_K super-block: `ql: [u8; 128],
/// qh: [u8; 64], scales: [i8; 16], d: f16`; 16 sub-blocks of 16, `x = (d * sc) * (q - 32)`.
#[inline(always)]
pub(crate) fn q6_k_group(b: &[u8; 210], g: usize, o: &mut [f32; 32]) {
    let (h, t) = (g / 4, g % 4);
    let d = half_at(b, 208);
    let s = 192 + h * 8 + t * 2;
    let dl = [d * (b[s] as i8) as f32, d * (b[s + 1] as i8) as f32];
    let (lo_base, lo_shift) = (h * 64 + (t & 1) * 32, 4 * (t >> 1));
    let (ql, qh) = (
        &b[lo_base..lo_base + 32],
        &b[128 + h * 32..128 + h * 32 + 32],
    );
    for l in 0..32 {
        let lo = (ql[l] >> lo_shift) & 0x0F;
        let hi = (qh[l] >> (2 * t)) & 0x03;
        let q = (lo | (hi << 4)) as i32 - 32;
        o[l] = dl[l / 16] * q as f32;
    }
}

/// A super-block of 256 from its 8 groups of 32.
#[inline(always)]
fn groups<const TS: usize>(
    b: &[u8; TS],
    o: &mut [f32; 256],
    group: impl Fn(&[u8; TS], usize, &mut [f32; 32]),
) {
    for (g, o) in o.as_chunks_mut::<32>().0.iter_mut().enumerate() {
        group(b, g, o);
    }
}

fn q4_k(b: &[u8; 144], o: &mut [f32; 256]) {
    groups(b, o, q4_k_group);
}

fn q5_k(b: &[u8; 176], o: &mut [f32; 256]) {
    groups(b, o, q5_k_group);
}

fn q6_k(b: &[u8; 210], o: &mut [f32; 256]) {
    groups(b, o, q6_k_group);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn dequant(ty: QuantType, b: &[u8], n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n];
        dequantize_blocks(ty, b, &mut out, false);
        out
    }

    #[test]
    fn q8_0_block_by_hand() {
        // d = 0.5 (f16 0x3800), q = 0, 1, -1, 2, ...
        let mut b = vec![0x00, 0x38];
        b.extend((0..32).map(|i: i32| (if i % 2 == 0 { i / 2 } else { -(i / 2 + 1) }) as i8 as u8));
        assert_eq!(
            &dequant(QuantType::Q8_0, &b, 32)[..4],
            &[0.0, -0.5, 0.5, -1.0]
        );
    }

    #[test]
    fn q4_1_block_by_hand() {
        // d = 1.0 (0x3c00), m = -2.0 (0xc000), qs[j] = j | (15 - j) << 4
        let mut b = vec![0x00, 0x3c, 0x00, 0xc0];
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let out = dequant(QuantType::Q4_1, &b, 32);
        assert_eq!(out[0], -2.0);
        assert_eq!(out[15], 13.0);
        assert_eq!(out[16], 13.0);
        assert_eq!(out[31], -2.0);
    }

    #[test]
    fn parallel_equals_serial() {
        let blocks = 3000;
        let data: Vec<u8> = (0..blocks * 18)
            .map(|i| (i * 37 % 251) as u8 & 0x3b)
            .collect();
        let mut a = vec![0f32; blocks * 32];
        let mut b = vec![0f32; blocks * 32];
        dequantize_blocks(QuantType::Q4_0, &data, &mut a, false);
        dequantize_blocks(QuantType::Q4_0, &data, &mut b, true);
        assert_eq!(a, b);
    }
}
