//! BLEU's sufficient statistics, score type, smoothing, and the final formula.

use std::str::FromStr;

use crate::error::{EvalError, Result};

/// The largest n-gram order supported (n-grams are packed into 128 bits).
pub const MAX_NGRAM_ORDER: usize = 4;

/// BLEU smoothing (Chen and Cherry, 2014), as in sacrebleu.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Smooth {
    /// No smoothing.
    None,
    /// Method 1: zero-match precisions become `value / total` (default 0.1).
    Floor(f64),
    /// Method 2: add `value` to matches and totals for n > 1 (default 1).
    AddK(f64),
    /// Method 3, NIST / mteval-v13a: the k-th zero precision becomes `1 / (2^k total)`.
    #[default]
    Exp,
}

impl Smooth {
    /// The `smooth:` value of the signature (`exp`, `floor[0.10]`).
    pub fn signature(self) -> String {
        match self {
            Self::None => "none".into(),
            Self::Exp => "exp".into(),
            Self::Floor(v) => format!("floor[{v:.2}]"),
            Self::AddK(v) => format!("add-k[{v:.2}]"),
        }
    }
}

impl FromStr for Smooth {
    type Err = EvalError;
    /// `none`, `exp`, `floor` (0.1) or `add-k` (1), with sacrebleu's default values.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Self::None),
            "exp" => Ok(Self::Exp),
            "floor" => Ok(Self::Floor(0.1)),
            "add-k" => Ok(Self::AddK(1.0)),
            _ => Err(EvalError::UnknownOption {
                what: "BLEU smoothing",
                value: s.into(),
                expected: "none, exp, floor, add-k",
            }),
        }
    }
}

/// Sufficient statistics of one segment (or a sum of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BleuStats {
    pub sys_len: u64,
    pub ref_len: u64,
    /// Clipped n-gram matches, index `n - 1`.
    pub correct: [u64; MAX_NGRAM_ORDER],
    /// Hypothesis n-grams, index `n - 1`.
    pub total: [u64; MAX_NGRAM_ORDER],
}

impl std::ops::AddAssign for BleuStats {
    fn add_assign(&mut self, o: Self) {
        self.sys_len += o.sys_len;
        self.ref_len += o.ref_len;
        for n in 0..MAX_NGRAM_ORDER {
            self.correct[n] += o.correct[n];
            self.total[n] += o.total[n];
        }
    }
}

/// A BLEU score with its parts, like sacrebleu's `BLEUScore`. Scores are on a 0..100 scale.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BleuScore {
    pub score: f64,
    pub counts: Vec<u64>,
    pub totals: Vec<u64>,
    pub precisions: Vec<f64>,
    pub bp: f64,
    pub sys_len: u64,
    pub ref_len: u64,
    /// `sys_len / ref_len` (0 when `ref_len` is 0).
    pub ratio: f64,
    /// sacrebleu's reproducibility signature, e.g. `nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0`.
    pub signature: String,
}

impl BleuScore {
    /// sacrebleu's verbose part: `60.0/40.0/.../... (BP = 1.000 ratio = 1.000 hyp_len = 5 ref_len = 5)`.
    pub fn verbose(&self) -> String {
        let p: Vec<String> = self.precisions.iter().map(|p| format!("{p:.1}")).collect();
        format!(
            "{} (BP = {:.3} ratio = {:.3} hyp_len = {} ref_len = {})",
            p.join("/"),
            self.bp,
            self.ratio,
            self.sys_len,
            self.ref_len
        )
    }
}

/// sacrebleu's `BLEU.compute_bleu`, operation for operation (same float evaluation order).
pub fn compute_bleu(
    s: &BleuStats,
    n_max: usize,
    smooth: Smooth,
    effective_order: bool,
    signature: String,
) -> BleuScore {
    let (sys_len, ref_len) = (s.sys_len, s.ref_len);
    let mut bp = 1.0;
    if sys_len < ref_len {
        bp = if sys_len > 0 {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        } else {
            0.0
        };
    }
    let mut precisions = vec![0.0f64; n_max];
    let counts = s.correct[..n_max].to_vec();
    let totals = s.total[..n_max].to_vec();
    let ratio = if ref_len > 0 {
        sys_len as f64 / ref_len as f64
    } else {
        0.0
    };
    let mut score = 0.0;
    if counts.iter().any(|&c| c > 0) {
        let mut correct: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
        let mut total: Vec<f64> = totals.iter().map(|&c| c as f64).collect();
        let mut smooth_mteval = 1.0f64;
        let mut eff_order = n_max;
        for n in 1..=n_max {
            if let Smooth::AddK(k) = smooth
                && n > 1
            {
                correct[n - 1] += k;
                total[n - 1] += k;
            }
            if total[n - 1] == 0.0 {
                break;
            }
            if effective_order {
                eff_order = n;
            }
            if correct[n - 1] == 0.0 {
                match smooth {
                    Smooth::Exp => {
                        smooth_mteval *= 2.0;
                        precisions[n - 1] = 100.0 / (smooth_mteval * total[n - 1]);
                    }
                    Smooth::Floor(v) => precisions[n - 1] = 100.0 * v / total[n - 1],
                    Smooth::None | Smooth::AddK(_) => {}
                }
            } else {
                precisions[n - 1] = 100.0 * correct[n - 1] / total[n - 1];
            }
        }
        let log_sum: f64 = precisions[..eff_order]
            .iter()
            .map(|&p| if p == 0.0 { -9_999_999_999.0 } else { p.ln() })
            .fold(0.0, |a, b| a + b);
        score = bp * (log_sum / eff_order as f64).exp();
    }
    BleuScore {
        score,
        counts,
        totals,
        precisions,
        bp,
        sys_len,
        ref_len,
        ratio,
        signature,
    }
}
