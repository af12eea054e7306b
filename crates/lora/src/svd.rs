//! A small exact SVD (one-sided Jacobi, f64) for PiSSA initialisation.
//!
//! One-sided Jacobi rotates pairs of columns until they are orthogonal; the column norms are then
//! the singular values. It is accurate to full precision and simple; it costs O(n² m) per sweep,
//! fine for one-off initialisation of projection matrices.

/// Top-`r` singular triplets of the row-major `[m, n]` matrix `a`.
///
/// Returns `(u [m, r], s [r], vt [r, n])`, row-major, singular values descending.
pub fn svd_top_r(a: &[f32], m: usize, n: usize, r: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    if m >= n {
        // Columns of A.
        let cols: Vec<Vec<f64>> = (0..n)
            .map(|j| (0..m).map(|i| a[i * n + j] as f64).collect())
            .collect();
        let (u, s, v) = jacobi(cols, n);
        (to_rows(&u, m, r), s[..r].to_vec(), to_cols_t(&v, n, r))
    } else {
        // A^T = U' S V'^T, so A = V' S U'^T.
        let cols: Vec<Vec<f64>> = (0..m)
            .map(|i| (0..n).map(|j| a[i * n + j] as f64).collect())
            .collect();
        let (u2, s, v2) = jacobi(cols, m);
        (to_rows(&v2, m, r), s[..r].to_vec(), to_cols_t(&u2, n, r))
    }
}

/// `k` columns `[k][len]` -> row-major `[len, r]` of the first `r` columns.
fn to_rows(cols: &[Vec<f64>], len: usize, r: usize) -> Vec<f64> {
    let mut out = vec![0.0; len * r];
    for (k, c) in cols.iter().take(r).enumerate() {
        for i in 0..len {
            out[i * r + k] = c[i];
        }
    }
    out
}

/// First `r` columns `[k][len]` -> row-major `[r, len]` (their transpose).
fn to_cols_t(cols: &[Vec<f64>], len: usize, r: usize) -> Vec<f64> {
    cols.iter()
        .take(r)
        .flat_map(|c| c[..len].to_vec())
        .collect()
}

/// Orthogonalises `n` columns; returns (U columns, singular values, V columns), sorted.
fn jacobi(mut a: Vec<Vec<f64>>, n: usize) -> (Vec<Vec<f64>>, Vec<f64>, Vec<Vec<f64>>) {
    let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f64>();
    let mut v: Vec<Vec<f64>> = (0..n)
        .map(|j| (0..n).map(|i| if i == j { 1.0 } else { 0.0 }).collect())
        .collect();
    for _sweep in 0..80 {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let alpha = dot(&a[p], &a[p]);
                let beta = dot(&a[q], &a[q]);
                let gamma = dot(&a[p], &a[q]);
                if gamma.abs() <= 1e-15 * (alpha * beta).sqrt() || gamma == 0.0 {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                rotate(&mut a, p, q, c, s);
                rotate(&mut v, p, q, c, s);
            }
        }
        if !rotated {
            break;
        }
    }
    let mut order: Vec<(f64, usize)> = a
        .iter()
        .enumerate()
        .map(|(j, c)| (dot(c, c).sqrt(), j))
        .collect();
    order.sort_by(|x, y| y.0.total_cmp(&x.0));
    let s: Vec<f64> = order.iter().map(|(s, _)| *s).collect();
    let u = order
        .iter()
        .map(|&(s, j)| {
            a[j].iter()
                .map(|x| if s > 0.0 { x / s } else { 0.0 })
                .collect()
        })
        .collect();
    let v = order.iter().map(|&(_, j)| v[j].clone()).collect();
    (u, s, v)
}

fn rotate(cols: &mut [Vec<f64>], p: usize, q: usize, c: f64, s: f64) {
    let (lo, hi) = cols.split_at_mut(q);
    for (x, y) in lo[p].iter_mut().zip(hi[0].iter_mut()) {
        let (xp, xq) = (*x, *y);
        *x = c * xp - s * xq;
        *y = s * xp + c * xq;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn check(m: usize, n: usize) {
        let a: Vec<f32> = (0..m * n)
            .map(|k| ((k * 37 % 23) as f32 - 11.0) / 7.0 + if k % (n + 1) == 0 { 3.0 } else { 0.0 })
            .collect();
        let k = m.min(n);
        let (u, s, vt) = svd_top_r(&a, m, n, k);
        assert!(s.windows(2).all(|w| w[0] >= w[1]));
        for i in 0..m {
            for j in 0..n {
                let x: f64 = (0..k).map(|t| u[i * k + t] * s[t] * vt[t * n + j]).sum();
                assert!((x - a[i * n + j] as f64).abs() < 1e-9, "{m}x{n} at {i},{j}");
            }
        }
    }

    #[test]
    fn reconstructs_tall_and_wide_matrices() {
        check(7, 4);
        check(4, 7);
        check(5, 5);
    }
}
