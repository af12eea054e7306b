//! Gemma's soft-capping `cap · tanh(x / cap)` (Gemma 2's attention scores, Gemma 2 and 3's output
//! logits) and its backward on host rows.
//!
//! `tanh` is built on [`kiln_cpu::fastexp::exp`] (`1 - 2 / (e^{2x} + 1)`) so the loops vectorise:
//! the capped logits of a Gemma 3 step are `tokens × 262,144` values, and a call into libm's
//! scalar `tanhf` per logit would cost as much as the head's product. Its absolute error is a few
//! 1e-7 (tested against `f32::tanh`), well inside the tolerance by which the fused path equals
//! the tensor path.
use kiln_cpu::fastexp::exp;
use kiln_cpu::round_bf16;

/// `tanh(x)`, absolute error below 1e-6. NaN gives NaN.
#[inline(always)]
pub(super) fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// `cap · tanh(s / cap)` in place.
pub(super) fn cap_in_place(s: &mut [f32], cap: f32) {
    s.iter_mut().for_each(|v| *v = cap * tanh(*v / cap));
}

/// The factor `1 - tanh²(s / cap)` by which a capped value's gradient reaches `s`, from the
/// capped value `c = cap · tanh(s / cap)`.
#[inline(always)]
pub(super) fn slope(c: f32, cap: f32) -> f32 {
    let th = c / cap;
    1.0 - th * th
}

/// One row of soft-capped logits' cross-entropy: caps `z` (`[vocab]` raw logits), returns the
/// NLL of `target` and leaves in `z` the gradient of `inv · NLL` with respect to the raw logits,
/// `inv · (softmax(c) - onehot) · (1 - tanh²)`. With `bf16` the capped logits are rounded, as
/// transformers' bf16 `tanh(logits / cap) * cap` leaves them.
///
/// Two exponentials per logit (the sum, then the gradient) instead of a stored copy of the row:
/// a Gemma row is 1 MB.
pub(super) fn capped_nll_grad(z: &mut [f32], target: usize, inv: f32, cap: f32, bf16: bool) -> f64 {
    cap_in_place(z, cap);
    if bf16 {
        z.iter_mut().for_each(|v| *v = round_bf16(*v));
    }
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let picked = z[target];
    // Eight running sums (vector registers), as `fastexp::sum`, without storing the row.
    let mut acc = [0f32; 8];
    for c in z.chunks(8) {
        acc.iter_mut().zip(c).for_each(|(a, &v)| *a += exp(v - max));
    }
    let sum: f32 = acc.iter().sum();
    let nll = (max + sum.ln() - picked) as f64;
    let k = inv / sum;
    z.iter_mut()
        .for_each(|v| *v = exp(*v - max) * k * slope(*v, cap));
    z[target] -= inv * slope(picked, cap);
    nll
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tanh_is_libm_tanh() {
        let mut worst = 0f32;
        for i in -40_000..=40_000 {
            let x = i as f32 * 1e-3;
            worst = worst.max((tanh(x) - x.tanh()).abs());
        }
        assert!(worst < 1e-6, "max |diff| {worst}");
        assert_eq!(tanh(200.0), 1.0);
        assert_eq!(tanh(-200.0), -1.0);
        assert!(tanh(f32::NAN).is_nan());
    }

    /// The row's NLL and gradient equal the closed form on a small row, by finite differences.
    #[test]
    fn capped_nll_grad_matches_finite_differences() {
        let raw = [0.3f32, -2.0, 5.0, 1.5, -0.7];
        let (cap, target, inv) = (3.0f32, 3, 0.5f32);
        let nll = |z: &[f32]| -> f64 {
            let c: Vec<f64> = z
                .iter()
                .map(|&v| cap as f64 * (v as f64 / cap as f64).tanh())
                .collect();
            let lse = c.iter().map(|v| v.exp()).sum::<f64>().ln();
            lse - c[target]
        };
        let mut g = raw.to_vec();
        let got = capped_nll_grad(&mut g, target, inv, cap, false);
        assert!((got - nll(&raw)).abs() < 1e-5, "{got} vs {}", nll(&raw));
        for i in 0..raw.len() {
            let (mut up, mut down) = (raw.to_vec(), raw.to_vec());
            up[i] += 1e-3;
            down[i] -= 1e-3;
            let want = inv as f64 * (nll(&up) - nll(&down)) / 2e-3;
            assert!((g[i] as f64 - want).abs() < 1e-4, "{i}: {} vs {want}", g[i]);
        }
    }
}
