//! The few PyTorch numerics bitsandbytes' quantizers lean on, re-done in f32 in the same order
//! so kiln's statistics are bit-identical to bitsandbytes': `torch.mean` of the absmax (ATen's
//! cascade sum, then one division), `create_dynamic_map`'s values, and the
//! 65536-bin lookup table its native CPU `quantize_blockwise` picks dynamic-map codes with.
//!
//! Why not a plain (or f64) sum: the mean is stored (`offset`) and every absmax code depends on
//! it, so an ulp of difference changes bytes. ATen sums a contiguous f32 row in 16-lane vectors
//! (AVX-512 `Vectorized<float>`; 8 lanes on AVX2 machines, where torch itself gives other bits)
//! with four interleaved accumulators and a four-level cascade; this file does the same. Sums
//! above ATen's grain (32768 elements) are split across torch's threads; kiln follows a
//! single-threaded torch (`torch.set_num_threads(1)`), as the fixture is generated.

/// Lanes of ATen's `Vectorized<float>` on the AVX-512 build the fixture was made with.
const LANES: usize = 16;

/// ATen's `CeilLog2` (1 for x ≤ 2).
fn ceil_log2(x: usize) -> usize {
    if x <= 2 {
        1
    } else {
        (usize::BITS - (x - 1).leading_zeros()) as usize
    }
}

fn add<const W: usize>(a: &mut [f32; W], b: &[f32; W]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// ATen's `multi_row_sum` with four rows: element `i` of row `k` is `load(4 i + k)`.
fn multi_row_sum<const W: usize>(load: &impl Fn(usize) -> [f32; W], size: usize) -> [[f32; W]; 4] {
    const LEVELS: usize = 4;
    let power = 4.max(ceil_log2(size) / LEVELS);
    let step = 1usize << power;
    let mask = step - 1;
    let mut acc = [[[0f32; W]; 4]; LEVELS];
    let mut i = 0;
    while i + step <= size {
        for _ in 0..step {
            for (k, a) in acc[0].iter_mut().enumerate() {
                add(a, &load(4 * i + k));
            }
            i += 1;
        }
        for j in 1..LEVELS {
            let (lower, upper) = acc.split_at_mut(j);
            for (u, l) in upper[0].iter_mut().zip(lower[j - 1].iter_mut()) {
                add(u, &std::mem::replace(l, [0.0; W]));
            }
            if i & (mask << (j * power)) != 0 {
                break;
            }
        }
    }
    for i in i..size {
        for (k, a) in acc[0].iter_mut().enumerate() {
            add(a, &load(4 * i + k));
        }
    }
    let (first, rest) = acc.split_at_mut(1);
    for level in rest.iter() {
        for (a, u) in first[0].iter_mut().zip(level) {
            add(a, u);
        }
    }
    acc[0]
}

/// ATen's `row_sum`: four interleaved partial sums, the leftover elements into the first.
fn row_sum<const W: usize>(load: impl Fn(usize) -> [f32; W], size: usize) -> [f32; W] {
    let size_ilp = size / 4;
    let partial = multi_row_sum(&load, size_ilp);
    let mut sum = partial[0];
    for i in size_ilp * 4..size {
        add(&mut sum, &load(i));
    }
    for p in &partial[1..] {
        add(&mut sum, p);
    }
    sum
}

/// `torch.sum` of a contiguous f32 vector on one thread.
pub(super) fn torch_sum(x: &[f32]) -> f32 {
    if x.len() < LANES {
        return row_sum::<1>(|i| [x[i]], x.len())[0];
    }
    let vectors = x.len() / LANES;
    let lanes = row_sum::<LANES>(
        |i| {
            let mut v = [0f32; LANES];
            v.copy_from_slice(&x[i * LANES..(i + 1) * LANES]);
            v
        },
        vectors,
    );
    let mut sum = 0f32;
    for &t in &x[vectors * LANES..] {
        sum += t;
    }
    for l in lanes {
        sum += l;
    }
    sum
}

/// `torch.mean` of a contiguous f32 vector (the sum, then one f32 division).
pub(super) fn torch_mean(x: &[f32]) -> f32 {
    torch_sum(x) / x.len() as f32
}

/// `bitsandbytes.functional.create_dynamic_map(signed=True)` (7 exponent bits, 8 bits): for
/// each decade `10^(i-6)`, i in 0..7, the midpoints of `torch.linspace(0.1, 1, 2^i + 1)` scaled
/// by it, and their negatives, then 0 and 1, sorted. Written out as bitsandbytes 0.50 makes
/// them (`tools/fixtures/bnb_quant.py` checks them): torch's vectorised `linspace` rounds some
/// points differently from either closed form, and these 256 values are part of the format.
#[rustfmt::skip]
pub(super) const SIGNED_DYNAMIC_MAP: [f32; 256] = [
    -0.99296874, -0.9789063, -0.96484375, -0.9507812, -0.93671876, -0.92265624, -0.9085938,
    -0.89453125, -0.8804687, -0.86640626, -0.85234374, -0.8382813, -0.82421875, -0.8101562,
    -0.79609376, -0.78203124, -0.7679688, -0.75390625, -0.7398437, -0.72578126, -0.7117188,
    -0.6976563, -0.68359375, -0.6695312, -0.65546876, -0.6414063, -0.6273438, -0.61328125,
    -0.5992187, -0.58515626, -0.5710938, -0.5570313, -0.54296875, -0.5289062, -0.5148437,
    -0.50078124, -0.4867187, -0.47265625, -0.45859373, -0.44453126, -0.43046874, -0.41640624,
    -0.40234375, -0.38828123, -0.37421876, -0.36015624, -0.34609374, -0.33203125, -0.31796873,
    -0.30390626, -0.28984374, -0.27578127, -0.26171875, -0.24765624, -0.23359375, -0.21953125,
    -0.20546874, -0.19140625, -0.17734376, -0.16328125, -0.14921875, -0.13515624, -0.12109375,
    -0.107031256, -0.09859375, -0.09578126, -0.092968754, -0.09015625, -0.08734375, -0.08453125,
    -0.08171876, -0.07890625, -0.07609375, -0.07328125, -0.070468746, -0.067656256, -0.06484375,
    -0.06203125, -0.059218753, -0.05640625, -0.05359375, -0.05078125, -0.04796875, -0.04515625,
    -0.042343747, -0.03953125, -0.036718752, -0.03390625, -0.03109375, -0.028281251, -0.02546875,
    -0.02265625, -0.019843752, -0.01703125, -0.01421875, -0.01140625, -0.00971875, -0.009156249,
    -0.00859375, -0.00803125, -0.00746875, -0.00690625, -0.00634375, -0.00578125, -0.0052187503,
    -0.0046562497, -0.00409375, -0.0035312497, -0.00296875, -0.00240625, -0.00184375,
    -0.0012812499, -0.0009437501, -0.00083125, -0.00071875006, -0.0006062501, -0.00049375003,
    -0.00038125002, -0.00026875004, -0.00015625001, -8.875e-05, -6.625e-05, -4.375e-05,
    -2.1249998e-05, -7.75e-06, -3.2500002e-06, -5.5000004e-07, 0.0, 5.5000004e-07, 3.2500002e-06,
    7.75e-06, 2.1249998e-05, 4.375e-05, 6.625e-05, 8.875e-05, 0.00015625001, 0.00026875004,
    0.00038125002, 0.00049375003, 0.0006062501, 0.00071875006, 0.00083125, 0.0009437501,
    0.0012812499, 0.00184375, 0.00240625, 0.00296875, 0.0035312497, 0.00409375, 0.0046562497,
    0.0052187503, 0.00578125, 0.00634375, 0.00690625, 0.00746875, 0.00803125, 0.00859375,
    0.009156249, 0.00971875, 0.01140625, 0.01421875, 0.01703125, 0.019843752, 0.02265625,
    0.02546875, 0.028281251, 0.03109375, 0.03390625, 0.036718752, 0.03953125, 0.042343747,
    0.04515625, 0.04796875, 0.05078125, 0.05359375, 0.05640625, 0.059218753, 0.06203125,
    0.06484375, 0.067656256, 0.070468746, 0.07328125, 0.07609375, 0.07890625, 0.08171876,
    0.08453125, 0.08734375, 0.09015625, 0.092968754, 0.09578126, 0.09859375, 0.107031256,
    0.12109375, 0.13515624, 0.14921875, 0.16328125, 0.17734376, 0.19140625, 0.20546874, 0.21953125,
    0.23359375, 0.24765624, 0.26171875, 0.27578127, 0.28984374, 0.30390626, 0.31796873, 0.33203125,
    0.34609374, 0.36015624, 0.37421876, 0.38828123, 0.40234375, 0.41640624, 0.43046874, 0.44453126,
    0.45859373, 0.47265625, 0.4867187, 0.50078124, 0.5148437, 0.5289062, 0.54296875, 0.5570313,
    0.5710938, 0.58515626, 0.5992187, 0.61328125, 0.6273438, 0.6414063, 0.65546876, 0.6695312,
    0.68359375, 0.6976563, 0.7117188, 0.72578126, 0.7398437, 0.75390625, 0.7679688, 0.78203124,
    0.79609376, 0.8101562, 0.82421875, 0.8382813, 0.85234374, 0.86640626, 0.8804687, 0.89453125,
    0.9085938, 0.92265624, 0.93671876, 0.9507812, 0.96484375, 0.9789063, 0.99296874, 1.0,
];

/// Bins of the native quantizer's lookup table over [-1, 1].
const LUT_BINS: usize = 65536;

/// bitsandbytes' native CPU `quantize_blockwise` lookup: bin `i` (value `-1 + 2i / 65535`)
/// holds the first code whose midpoint with the next code is not below the value.
pub(super) fn lookup_table(code: &[f32; 256]) -> Vec<u8> {
    let mid: Vec<f32> = code.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
    let mut idx = 0;
    (0..LUT_BINS)
        .map(|i| {
            let v = -1.0 + (2.0 * i as f32) / (LUT_BINS - 1) as f32;
            while idx < mid.len() && mid[idx] < v {
                idx += 1;
            }
            idx as u8
        })
        .collect()
}

/// The bin of a scaled value (clamped to [-1, 1], rounded half up, truncated).
pub(super) fn lookup_bin(v: f32) -> usize {
    let v = v.clamp(-1.0, 1.0);
    ((v + 1.0) * 0.5 * (LUT_BINS - 1) as f32 + 0.5) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cascade_matches_a_plain_sum_where_no_rounding_happens() {
        let x: Vec<f32> = (0..1000).map(|i| (i % 7) as f32).collect();
        assert_eq!(
            torch_sum(&x),
            x.iter().map(|&v| v as f64).sum::<f64>() as f32
        );
        assert_eq!(torch_sum(&x[..5]), 10.0);
        assert_eq!(ceil_log2(1 << 20), 20);
        assert_eq!(ceil_log2((1 << 20) + 1), 21);
    }
}
