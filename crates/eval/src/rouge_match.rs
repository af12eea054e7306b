//! The matching algorithms behind ROUGE, transcribed from rouge-score 0.1.2: clipped n-gram
//! overlap, the LCS table, the LCS read-back (`_backtrack_norec`, whose tie-breaking decides
//! which LCS feeds the union) and summary-level union LCS.
//!
//! Tokens are per-example integer ids (equal ids = equal token strings).

use crate::hash::FxHashMap;

/// Precision, recall and F1 (0..1 scale, as rouge-score reports them).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct RougeScore {
    pub precision: f64,
    pub recall: f64,
    pub fmeasure: f64,
}

impl RougeScore {
    pub(crate) fn new(precision: f64, recall: f64) -> Self {
        let fmeasure = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        Self {
            precision,
            recall,
            fmeasure,
        }
    }
}

pub(crate) fn score_ngrams(pred: &[u32], target: &[u32], n: usize) -> RougeScore {
    if n > 4 {
        return score_long_ngrams(pred, target, n);
    }
    // Up to 4 ids (+1, so that 0 never occurs) pack losslessly into 128 bits.
    let grams = |t: &[u32]| -> Vec<u128> {
        if n == 0 || t.len() < n {
            return Vec::new();
        }
        let mut k: Vec<u128> = t
            .windows(n)
            .map(|w| w.iter().fold(0u128, |a, &x| (a << 32) | u128::from(x + 1)))
            .collect();
        k.sort_unstable();
        k
    };
    let (p, t) = (grams(pred), grams(target));
    let (mut i, mut j, mut inter) = (0, 0, 0usize);
    while i < p.len() && j < t.len() {
        match p[i].cmp(&t[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                inter += 1;
                i += 1;
                j += 1;
            }
        }
    }
    RougeScore::new(
        inter as f64 / p.len().max(1) as f64,
        inter as f64 / t.len().max(1) as f64,
    )
}

fn score_long_ngrams(pred: &[u32], target: &[u32], n: usize) -> RougeScore {
    let count = |t: &[u32]| {
        let mut m: FxHashMap<Vec<u32>, usize> = FxHashMap::default();
        if t.len() >= n {
            for w in t.windows(n) {
                *m.entry(w.to_vec()).or_default() += 1;
            }
        }
        m
    };
    let (p, t) = (count(pred), count(target));
    let inter: usize = t
        .iter()
        .map(|(k, &c)| c.min(p.get(k).copied().unwrap_or(0)))
        .sum();
    let np: usize = p.values().sum();
    let nt: usize = t.values().sum();
    RougeScore::new(
        inter as f64 / np.max(1) as f64,
        inter as f64 / nt.max(1) as f64,
    )
}

/// Fill the `(|r|+1) x (|c|+1)` LCS table into `t` (row-major) and return the LCS length.
pub(crate) fn lcs_table(r: &[u32], c: &[u32], t: &mut Vec<u32>) -> u32 {
    let cols = c.len() + 1;
    t.clear();
    t.resize((r.len() + 1) * cols, 0);
    for i in 1..=r.len() {
        for j in 1..=c.len() {
            t[i * cols + j] = if r[i - 1] == c[j - 1] {
                t[(i - 1) * cols + j - 1] + 1
            } else {
                t[(i - 1) * cols + j].max(t[i * cols + j - 1])
            };
        }
    }
    t[r.len() * cols + c.len()]
}

/// Indices into `r` of one LCS, read back exactly as rouge-score's `_backtrack_norec`.
fn lcs_indices(r: &[u32], c: &[u32], t: &mut Vec<u32>, out: &mut Vec<usize>) {
    lcs_table(r, c, t);
    let cols = c.len() + 1;
    let (mut i, mut j) = (r.len(), c.len());
    while i > 0 && j > 0 {
        if r[i - 1] == c[j - 1] {
            out.push(i - 1);
            i -= 1;
            j -= 1;
        } else if t[i * cols + j - 1] > t[(i - 1) * cols + j] {
            j -= 1;
        } else {
            i -= 1;
        }
    }
}

/// rouge-score's `_summary_level_lcs` (ROUGE paper section 3.2, no double counting).
pub(crate) fn summary_lcs(
    refs: &[Vec<u32>],
    cands: &[Vec<u32>],
    vocab: usize,
    t: &mut Vec<u32>,
) -> RougeScore {
    if refs.is_empty() || cands.is_empty() {
        return RougeScore::default();
    }
    let m: usize = refs.iter().map(Vec::len).sum();
    let n: usize = cands.iter().map(Vec::len).sum();
    if m == 0 || n == 0 {
        return RougeScore::default();
    }
    let mut cnt_r = vec![0i64; vocab];
    let mut cnt_c = vec![0i64; vocab];
    refs.iter().flatten().for_each(|&x| cnt_r[x as usize] += 1);
    cands.iter().flatten().for_each(|&x| cnt_c[x as usize] += 1);
    let mut hits = 0usize;
    let mut union = Vec::new();
    for r in refs {
        union.clear();
        for c in cands {
            lcs_indices(r, c, t, &mut union);
        }
        union.sort_unstable();
        union.dedup();
        for &i in &union {
            let tok = r[i] as usize;
            if cnt_c[tok] > 0 && cnt_r[tok] > 0 {
                hits += 1;
                cnt_c[tok] -= 1;
                cnt_r[tok] -= 1;
            }
        }
    }
    RougeScore::new(hits as f64 / n as f64, hits as f64 / m as f64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lcs_and_backtrack() {
        let mut t = Vec::new();
        assert_eq!(lcs_table(&[1, 2, 3, 4], &[2, 4, 3], &mut t), 2);
        let mut idx = Vec::new();
        lcs_indices(&[1, 2, 3, 4], &[2, 4, 3], &mut t, &mut idx);
        idx.reverse();
        // rouge-score's _backtrack_norec gives [1, 2] here (tokens 2 and 3 of the reference).
        assert_eq!(idx, vec![1, 2]);
    }

    #[test]
    fn ngram_overlap_is_clipped() {
        let s = score_ngrams(&[1, 1, 1], &[1, 2], 1);
        assert_eq!((s.precision, s.recall), (1.0 / 3.0, 0.5));
        let s = score_ngrams(&[1, 2, 3, 4, 5, 6], &[1, 2, 3, 4, 5, 7], 5);
        assert_eq!((s.precision, s.recall), (0.5, 0.5));
    }
}
