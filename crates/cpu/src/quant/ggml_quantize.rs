//! f32 to ggml's block formats: the inverse of [`super::ggml`]'s dequantizers, for writing GGUF
//! files that llama.cpp, gguf-py and transformers read.
//!
//! Why these algorithms and not simpler ones: a file kiln writes should carry the error a user
//! expects of the format's name. So `Q8_0`, `Q4_0`, `Q5_0` and `Q5_1` follow gguf-py's
//! `gguf.quants` numpy quantizers operation for operation (f32 arithmetic, the same rounding,
//! ties included; checked bit for bit against a gguf-py fixture), and the k-quants follow
//! llama.cpp's reference quantizers (`quantize_row_q4_K_ref` / `q5_K_ref` with the weighted
//! min/scale search `make_qkx2_quants`, `quantize_row_q6_K_ref` with the scale search
//! `make_qx_quants`), whose error is what Q4_K_M files are known by. Rows are independent and
//! quantized in parallel.
use super::QuantType;
use crate::error::{CpuError, Result};
use half::{bf16, f16};
use rayon::prelude::*;

/// llama.cpp's threshold below which a group counts as all zeros.
const GROUP_MAX_EPS: f32 = 1e-15;

/// Quantizes a row-major `[values.len() / cols, cols]` matrix into `ty`'s blocks, row by row
/// (each row is whole blocks), in parallel over rows. `name` names the tensor in errors.
///
/// # Errors
/// [`CpuError::Layout`] when `cols` is zero, does not divide `values.len()`, or is not a multiple
/// of `ty`'s block size, or `ty` has no quantizer here (Q4_1, bitsandbytes' formats);
/// [`CpuError::Quantize`] for a NaN or infinite value in a quantized format.
pub fn quantize(ty: QuantType, values: &[f32], cols: usize, name: &str) -> Result<Vec<u8>> {
    let (block, bytes) = ty.block_layout();
    if cols == 0 || !values.len().is_multiple_of(cols) || !cols.is_multiple_of(block) {
        return Err(CpuError::Layout(format!(
            "{name}: {} values in rows of {cols} are not whole rows of {ty} blocks of {block}",
            values.len()
        )));
    }
    if !matches!(ty, QuantType::F32 | QuantType::F16 | QuantType::Bf16)
        && let Some(bad) = values.iter().position(|v| !v.is_finite())
    {
        return Err(CpuError::Quantize {
            what: format!("{name} as {ty}"),
            reason: format!("element {bad} is {}", values[bad]),
        });
    }
    let row_bytes = cols / block * bytes;
    let mut out = vec![0u8; values.len() / cols * row_bytes];
    let kernel: fn(&[f32], &mut [u8]) = match ty {
        QuantType::F32 => |x, o| o.copy_from_slice(&x[0].to_le_bytes()),
        QuantType::F16 => |x, o| o.copy_from_slice(&f16::from_f32(x[0]).to_le_bytes()),
        QuantType::Bf16 => |x, o| o.copy_from_slice(&bf16::from_f32(x[0]).to_le_bytes()),
        QuantType::Q8_0 => q8_0,
        QuantType::Q4_0 => q4_0,
        QuantType::Q5_0 => q5_0,
        QuantType::Q5_1 => q5_1,
        QuantType::Q4_K => q4_k,
        QuantType::Q5_K => q5_k,
        QuantType::Q6_K => q6_k,
        QuantType::Q4_1 | QuantType::Nf4 | QuantType::Fp4 | QuantType::Int8 => {
            return Err(CpuError::Layout(format!("{name}: no {ty} quantizer")));
        }
    };
    // Enough rows per task that a task is worth scheduling (~16k elements).
    let rows_per_task = (16_384 / cols).max(1);
    out.par_chunks_mut(row_bytes * rows_per_task)
        .zip(values.par_chunks(cols * rows_per_task))
        .for_each(|(o, x)| {
            for (ob, xb) in o.chunks_exact_mut(bytes).zip(x.chunks_exact(block)) {
                kernel(xb, ob);
            }
        });
    Ok(out)
}

fn put_f16(o: &mut [u8], at: usize, v: f32) {
    o[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// ggml's `nearest_int`: round half to even (the `+ 1.5 · 2^23` trick).
fn nearest_int(v: f32) -> i32 {
    v.round_ties_even() as i32
}

/// The element of largest magnitude, the first one on ties (numpy's `argmax` of `abs`).
fn signed_absmax(x: &[f32]) -> f32 {
    let mut imax = 0;
    for (j, v) in x.iter().enumerate().skip(1) {
        if v.abs() > x[imax].abs() {
            imax = j;
        }
    }
    x[imax]
}

/// `d = absmax / 127`, `q = round(x / d)` (half away from zero, gguf-py's `np_roundf`).
fn q8_0(x: &[f32], o: &mut [u8]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    put_f16(o, 0, d);
    for (q, &v) in o[2..].iter_mut().zip(x) {
        *q = ((v * id).round() as i8) as u8;
    }
}

/// Symmetric codes `q = min(2·half − 1, trunc(x / d + half + 0.5))` with `d = max / −half`,
/// where `max` is the signed element of largest magnitude (Q4_0: half = 8; Q5_0: 16).
fn symmetric_codes(x: &[f32], half: f32) -> (f32, [u8; 32]) {
    let d = signed_absmax(x) / -half;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let top = (2.0 * half - 1.0) as u8;
    let mut q = [0u8; 32];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = ((v * id + (half + 0.5)).trunc() as u8).min(top);
    }
    (d, q)
}

/// Low nibbles of elements `j` and `j + 16` in byte `j`.
fn pack_nibbles(q: &[u8; 32], out: &mut [u8]) {
    for j in 0..16 {
        out[j] = (q[j] & 0x0F) | (q[j + 16] << 4);
    }
}

/// Bit 4 of element `i` as bit `i` of a little-endian u32.
fn fifth_bits(q: &[u8; 32]) -> [u8; 4] {
    let qh = q
        .iter()
        .enumerate()
        .fold(0u32, |h, (i, &v)| h | (u32::from(v >> 4) << i));
    qh.to_le_bytes()
}

fn q4_0(x: &[f32], o: &mut [u8]) {
    let (d, q) = symmetric_codes(x, 8.0);
    put_f16(o, 0, d);
    pack_nibbles(&q, &mut o[2..]);
}

fn q5_0(x: &[f32], o: &mut [u8]) {
    let (d, q) = symmetric_codes(x, 16.0);
    put_f16(o, 0, d);
    o[2..6].copy_from_slice(&fifth_bits(&q));
    pack_nibbles(&q, &mut o[6..]);
}

/// `d = (max − min) / 31`, `q = min(31, trunc((x − min) / d + 0.5))`.
fn q5_1(x: &[f32], o: &mut [u8]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let d = (max - min) / 31.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let mut q = [0u8; 32];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (((v - min) * id + 0.5).trunc() as u8).min(31);
    }
    put_f16(o, 0, d);
    put_f16(o, 2, min);
    o[4..8].copy_from_slice(&fifth_bits(&q));
    pack_nibbles(&q, &mut o[8..]);
}

/// The parameters of llama.cpp's `make_qkx2_quants` search.
struct Search {
    nmax: u8,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
}

/// llama.cpp's `make_qkx2_quants` (weighted squared error): codes `L` in `0..=nmax` of `x` with
/// `x ≈ scale · L − min`, trying `nstep + 1` scales around `nmax / (max − min)` and keeping the
/// least-squares fit of the best. Returns `(scale, min)`, `min ≥ 0`.
fn make_qkx2_quants(x: &[f32], w: &[f32], l: &mut [u8], s: &Search) -> (f32, f32) {
    let (mut min, mut max) = (x[0], x[0]);
    let (mut sum_w, mut sum_x) = (w[0], w[0] * x[0]);
    for i in 1..x.len() {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    min = min.min(0.0);
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let nmax = f32::from(s.nmax);
    let code = |iscale: f32, v: f32, min: f32| nearest_int(iscale * (v - min)).clamp(0, 255) as u8;
    let mut iscale = nmax / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best = 0f32;
    for i in 0..x.len() {
        l[i] = code(iscale, x[i], min).min(s.nmax);
        let diff = scale * f32::from(l[i]) + min - x[i];
        best += w[i] * (diff * diff);
    }
    let mut aux = [0u8; 32];
    for is in 0..=s.nstep {
        iscale = (s.rmin + s.rdelta * is as f32 + nmax) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..x.len() {
            aux[i] = code(iscale, x[i], min).min(s.nmax);
            let q = f32::from(aux[i]);
            sum_l += w[i] * q;
            sum_l2 += w[i] * q * q;
            sum_xl += w[i] * q * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det <= 0.0 {
            continue;
        }
        let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
        let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
        if this_min > 0.0 {
            this_min = 0.0;
            this_scale = sum_xl / sum_l2;
        }
        let mut err = 0f32;
        for i in 0..x.len() {
            let diff = this_scale * f32::from(aux[i]) + this_min - x[i];
            err += w[i] * (diff * diff);
        }
        if err < best {
            l[..x.len()].copy_from_slice(&aux[..x.len()]);
            best = err;
            scale = this_scale;
            min = this_min;
        }
    }
    (scale, -min)
}

/// Q4_K/Q5_K's first pass: per sub-block of 32, the weighted search for a scale and a minimum,
/// then both quantized to 6 bits against the super-block's largest; returns the f16 super-scales
/// `(d, dmin)` and the packed 12 scale bytes, and leaves the codes of the search in `l`.
fn k_scales_and_mins(x: &[f32], l: &mut [u8; 256], search: &Search) -> (f32, f32, [u8; 12]) {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2: f32 = xs.iter().fold(0.0, |s, v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        let mut w = [0f32; 32];
        for (w, v) in w.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        (scales[j], mins[j]) = make_qkx2_quants(xs, &w, &mut l[32 * j..32 * j + 32], search);
    }
    let max_scale = scales.iter().copied().fold(0f32, f32::max);
    let max_min = mins.iter().copied().fold(0f32, f32::max);
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..8 {
        let ls = nearest_int(inv_scale * scales[j]).clamp(0, 63) as u8;
        let lm = nearest_int(inv_min * mins[j]).clamp(0, 63) as u8;
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    (max_scale / 63.0, max_min / 63.0, packed)
}

/// Sub-block `j`'s 6-bit (scale, min) from the 12 packed bytes (ggml's `get_scale_min_k4`).
fn scale_min(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The K-quants with a minimum (Q4_K: 4-bit codes, Q5_K: 5-bit): the search, then every code
/// re-rounded against the stored (f16 and 6-bit) scales. Returns `(d, dmin, scales, codes)`.
fn k_quant_with_min(x: &[f32], search: &Search) -> ([u8; 4], [u8; 12], [u8; 256]) {
    let mut l = [0u8; 256];
    let (d, dmin, packed) = k_scales_and_mins(x, &mut l, search);
    let (d, dmin) = (f16::from_f32(d), f16::from_f32(dmin));
    for j in 0..8 {
        let (sc, m) = scale_min(j, &packed);
        let dj = d.to_f32() * f32::from(sc);
        if dj == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * f32::from(m);
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dm) / dj);
            l[32 * j + ii] = q.clamp(0, i32::from(search.nmax)) as u8;
        }
    }
    let mut head = [0u8; 4];
    head[..2].copy_from_slice(&d.to_le_bytes());
    head[2..].copy_from_slice(&dmin.to_le_bytes());
    (head, packed, l)
}

/// `d, dmin: f16, scales: [u8; 12], qs: [u8; 128]` (see `ggml::q4_k`).
fn q4_k(x: &[f32], o: &mut [u8]) {
    let search = Search {
        nmax: 15,
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
    };
    let (head, scales, l) = k_quant_with_min(x, &search);
    o[..4].copy_from_slice(&head);
    o[4..16].copy_from_slice(&scales);
    let qs = &mut o[16..];
    for c in 0..4 {
        for i in 0..32 {
            qs[32 * c + i] = l[64 * c + i] | (l[64 * c + 32 + i] << 4);
        }
    }
}

/// `d, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]` (see `ggml::q5_k`).
fn q5_k(x: &[f32], o: &mut [u8]) {
    let search = Search {
        nmax: 31,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
    };
    let (head, scales, l) = k_quant_with_min(x, &search);
    o[..4].copy_from_slice(&head);
    o[4..16].copy_from_slice(&scales);
    let (qh, qs) = o[16..].split_at_mut(32);
    qh.fill(0);
    for c in 0..4 {
        for i in 0..32 {
            let (lo, hi) = (l[64 * c + i], l[64 * c + 32 + i]);
            qh[i] |= ((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1));
            qs[32 * c + i] = (lo & 0x0F) | ((hi & 0x0F) << 4);
        }
    }
}

/// llama.cpp's `make_qx_quants` with `rmse_type = 1` (weights `x²`): symmetric codes
/// `L − nmax` in `−nmax..nmax` with `x ≈ scale · (L − nmax)`, the scale chosen among 19 candidates
/// around `nmax / max` by the weighted least-squares fit. Codes are stored offset (`0..2·nmax`).
fn make_qx_quants(x: &[f32], nmax: i32, l: &mut [u8]) -> f32 {
    let max = signed_absmax_first_strict(x);
    if max.abs() < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let code = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let fit = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let q = code(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * q;
            suml2 += w * q * q;
        }
        (sumlx, suml2)
    };
    let nmaxf = nmax as f32;
    let mut iscale = -nmaxf / max;
    let (sumlx, suml2) = fit(iscale);
    for (l, &v) in l.iter_mut().zip(x) {
        *l = (code(iscale, v) + nmax) as u8;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmaxf + 0.1 * is as f32) / max;
        let (sumlx, suml2) = fit(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (l, &v) in l.iter_mut().zip(x) {
                *l = (code(iscale, v) + nmax) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// The signed element of largest magnitude, the first on ties (llama.cpp's strict `>` scan).
fn signed_absmax_first_strict(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16` (see `ggml::q6_k`).
fn q6_k(x: &[f32], o: &mut [u8]) {
    let mut l = [0u8; 256];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for (ib, s) in scales.iter_mut().enumerate() {
        *s = make_qx_quants(&x[16 * ib..16 * ib + 16], 32, &mut l[16 * ib..16 * ib + 16]);
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = *s;
        }
    }
    o.fill(0);
    if max_abs_scale < GROUP_MAX_EPS {
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = f16::from_f32(1.0 / iscale);
    o[208..210].copy_from_slice(&d.to_le_bytes());
    for (ib, &s) in scales.iter().enumerate() {
        let q = nearest_int(iscale * s).clamp(-128, 127) as i8;
        o[192 + ib] = q as u8;
        let dj = d.to_f32() * f32::from(q);
        if dj == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * ib + ii] / dj).clamp(-32, 31);
            l[16 * ib + ii] = (q + 32) as u8;
        }
    }
    let (ql, rest) = o.split_at_mut(128);
    let qh = &mut rest[..64];
    for h in 0..2 {
        let (lh, ql, qh) = (&l[128 * h..], &mut ql[64 * h..], &mut qh[32 * h..]);
        for i in 0..32 {
            let (a, b, c, e) = (lh[i], lh[i + 32], lh[i + 64], lh[i + 96]);
            ql[i] = (a & 0x0F) | ((c & 0x0F) << 4);
            ql[i + 32] = (b & 0x0F) | ((e & 0x0F) << 4);
            qh[i] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn f16_rounded(v: f32) -> f32 {
        f16::from_f32(v).to_f32()
    }

    /// A deterministic, heavy-tailed pseudo-random matrix like a weight's.
    fn weights(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
                let tail = if i % 97 == 0 { 8.0 } else { 1.0 };
                u * 0.1 * tail
            })
            .collect()
    }

    fn round_trip(ty: QuantType, x: &[f32], cols: usize) -> Vec<f32> {
        let q = quantize(ty, x, cols, "t").unwrap();
        let mut out = vec![0f32; x.len()];
        super::super::dequantize(ty, &q, &mut out).unwrap();
        out
    }

    fn rmse(a: &[f32], b: &[f32]) -> f32 {
        let s: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
        (s / a.len() as f64).sqrt() as f32
    }

    #[test]
    fn errors_stay_within_each_formats_step() {
        let cols = 512;
        let x = weights(cols * 8, 7);
        // Per block the error is at most half a code step (d/2), plus the f16 rounding of d;
        // Q4_0/Q5_0 map the largest magnitude to the code −half, so the other sign's top value
        // may be clipped by one whole step.
        for (ty, block, levels, steps) in [
            (QuantType::Q8_0, 32, 127.0, 0.5),
            (QuantType::Q4_0, 32, 8.0, 1.0),
            (QuantType::Q5_0, 32, 16.0, 1.0),
        ] {
            let y = round_trip(ty, &x, cols);
            for (xb, yb) in x.chunks(block).zip(y.chunks(block)) {
                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                let step = f16_rounded(amax / levels).abs();
                for (a, b) in xb.iter().zip(yb) {
                    assert!((a - b).abs() <= step * steps + amax * 1e-3 + 1e-7, "{ty}");
                }
            }
        }
        // The k-quants fit scales by search; bound the error against the format's code count
        // and check the ordering of the formats by RMSE.
        let e = |ty| rmse(&x, &round_trip(ty, &x, cols));
        let (q4k, q5k, q6k, q8) = (
            e(QuantType::Q4_K),
            e(QuantType::Q5_K),
            e(QuantType::Q6_K),
            e(QuantType::Q8_0),
        );
        let (q4_0, q5_1) = (e(QuantType::Q4_0), e(QuantType::Q5_1));
        assert!(q8 < q6k && q6k < q5k && q5k < q4k, "{q8} {q6k} {q5k} {q4k}");
        assert!(q4k < q4_0 && q5_1 < q4_0, "{q4k} {q5_1} {q4_0}");
        let range = 0.1 * 8.0;
        assert!(q4k < range / 15.0 / 2.0, "{q4k}");
        assert!(q6k < range / 63.0 / 2.0, "{q6k}");
    }

    #[test]
    fn q8_0_is_round_half_away_and_zero_blocks_are_zero() {
        let mut x = vec![0f32; 64];
        x[0] = 127.0;
        x[1] = 0.5;
        x[2] = -1.5;
        let q = quantize(QuantType::Q8_0, &x, 64, "t").unwrap();
        assert_eq!(&q[2..5], &[127u8, 1, (-2i8) as u8]);
        assert!(q[34..].iter().all(|&b| b == 0));
        assert_eq!(
            round_trip(QuantType::Q6_K, &vec![0.0; 256], 256),
            vec![0.0; 256]
        );
        assert_eq!(
            round_trip(QuantType::Q4_K, &vec![0.0; 256], 256),
            vec![0.0; 256]
        );
    }

    /// `fixtures/gguf_export/gguf_py_quants.json` (tools/fixtures/gguf_py_quants.py): gguf-py's
    /// quantizers on a fixed matrix with a zero block, an outlier, a magnitude tie and .5 ties.
    #[test]
    fn matches_gguf_py_bit_for_bit() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/gguf_export/gguf_py_quants.json"
        );
        let f: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let x: Vec<f32> = f["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let cols = f["cols"].as_u64().unwrap() as usize;
        for ty in [
            QuantType::Q8_0,
            QuantType::Q4_0,
            QuantType::Q5_0,
            QuantType::Q5_1,
        ] {
            let hex = f[ty.name()].as_str().unwrap();
            let want: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            assert_eq!(quantize(ty, &x, cols, "t").unwrap(), want, "{ty}");
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(quantize(QuantType::Q4_K, &[0.0; 64], 64, "t").is_err());
        assert!(quantize(QuantType::Q8_0, &[0.0; 48], 48, "t").is_err());
        let mut x = vec![0f32; 32];
        x[3] = f32::NAN;
        let e = quantize(QuantType::Q8_0, &x, 32, "blk.0.attn_q.weight").unwrap_err();
        assert!(e.to_string().contains("blk.0.attn_q.weight"), "{e}");
        assert!(quantize(QuantType::Nf4, &[0.0; 64], 64, "t").is_err());
    }

    #[test]
    fn float_formats_round_to_nearest_even() {
        let x = [1.0f32, 1.0 + 1.0 / 4096.0, -3.0e-8, 65504.0];
        let y = round_trip(QuantType::F16, &x, 4);
        assert_eq!(y[0], 1.0);
        assert_eq!(y[1], 1.0, "a tie rounds to even");
        assert_eq!(y[3], 65504.0);
        let y = round_trip(QuantType::Bf16, &x, 4);
        assert_eq!(y[0], 1.0);
    }
}
