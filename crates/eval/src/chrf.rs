//! chrF and chrF++ exactly as sacrebleu 2.x computes them (`sacrebleu.metrics.chrf.CHRF`).
//!
//! Defaults: character n-grams up to 6 with whitespace removed, no word n-grams, β = 2,
//! effective-order averaging (no epsilon smoothing). `word_order = 2` gives chrF++. With several
//! references per example, the statistics of the reference with the best sentence F win
//! (first one on ties), and corpus chrF is computed from the summed statistics.

use std::borrow::Cow;

use rayon::prelude::*;

use crate::bleu::SACREBLEU_VERSION;
use crate::error::{EvalError, Result};
use crate::ngram::{self, Counts, Interner, Key};
use crate::refs::{check_corpus, nrefs_signature};
use crate::text::{py_lower, py_split};

/// Largest character n-gram order (6 code points of 21 bits fit in 128 bits).
pub const MAX_CHAR_ORDER: usize = 6;
/// Largest word n-gram order.
pub const MAX_WORD_ORDER: usize = 4;

/// `string.punctuation`, which chrF++ splits off word edges.
const PUNCTS: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// A chrF score on a 0..100 scale.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ChrfScore {
    /// `chrF2`, or `chrF2++` with word order 2.
    pub name: String,
    pub score: f64,
    /// sacrebleu's signature, e.g. `nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0`.
    pub signature: String,
}

/// chrF configuration. `Chrf::default()` is sacrebleu's `CHRF()`.
#[derive(Debug, Clone, PartialEq)]
pub struct Chrf {
    char_order: usize,
    word_order: usize,
    pub beta: u32,
    pub lowercase: bool,
    /// Keep whitespace inside character n-grams.
    pub whitespace: bool,
    pub eps_smoothing: bool,
}

impl Default for Chrf {
    fn default() -> Self {
        Self {
            char_order: 6,
            word_order: 0,
            beta: 2,
            lowercase: false,
            whitespace: false,
            eps_smoothing: false,
        }
    }
}

/// Per-order counted n-grams of one segment.
type Grams<K> = Vec<Counts<K>>;

/// Hypothesis and reference n-grams of one key type, with a key scratch vector.
#[derive(Default)]
struct GramBufs<K> {
    hyp: Grams<K>,
    refg: Grams<K>,
    keys: Vec<K>,
}

/// Per-thread buffers.
#[derive(Default)]
struct Work {
    c64: GramBufs<u64>,
    c128: GramBufs<u128>,
    words: GramBufs<u128>,
    units: Vec<u32>,
    interner: Interner,
}

impl Chrf {
    /// chrF++ (`word_order = 2`).
    pub fn plus_plus() -> Self {
        Self {
            word_order: 2,
            ..Self::default()
        }
    }

    /// Set character and word n-gram orders (`1..=6`, `0..=4`).
    pub fn with_orders(mut self, char_order: usize, word_order: usize) -> Result<Self> {
        if !(1..=MAX_CHAR_ORDER).contains(&char_order) || word_order > MAX_WORD_ORDER {
            return Err(EvalError::InvalidOption {
                what: "chrF orders",
                reason: format!(
                    "char order {char_order} must be in 1..={MAX_CHAR_ORDER}, word order {word_order} in 0..={MAX_WORD_ORDER}"
                ),
            });
        }
        self.char_order = char_order;
        self.word_order = word_order;
        Ok(self)
    }

    /// Lowercase before extracting n-grams.
    pub fn with_lowercase(mut self, yes: bool) -> Self {
        self.lowercase = yes;
        self
    }

    fn order(&self) -> usize {
        self.char_order + self.word_order
    }

    /// The metric name (`chrF2`, `chrF2++`).
    pub fn name(&self) -> String {
        format!("chrF{}{}", self.beta, "+".repeat(self.word_order))
    }

    /// sacrebleu's signature for `nrefs` references per example (`None`: varying).
    pub fn signature(&self, nrefs: Option<usize>) -> String {
        format!(
            "nrefs:{}|case:{}|eff:{}|nc:{}|nw:{}|space:{}|version:{SACREBLEU_VERSION}",
            nrefs_signature(nrefs),
            if self.lowercase { "lc" } else { "mixed" },
            if self.eps_smoothing { "no" } else { "yes" },
            self.char_order,
            self.word_order,
            if self.whitespace { "yes" } else { "no" }
        )
    }

    /// Corpus chrF; `refs[i]` are the references of example `i`. Errors as
    /// [`crate::Bleu::corpus_score`].
    pub fn corpus_score<H, R, S>(&self, hyps: &[H], refs: &[R]) -> Result<ChrfScore>
    where
        H: AsRef<str> + Sync,
        R: AsRef<[S]> + Sync,
        S: AsRef<str>,
    {
        let nrefs = check_corpus(hyps.len(), refs)?;
        let stats = self.segment_stats(hyps, refs)?;
        let mut sum = vec![0u64; 3 * self.order()];
        for s in &stats {
            for (a, b) in sum.iter_mut().zip(s) {
                *a += b;
            }
        }
        Ok(self.score(&sum, nrefs))
    }

    /// Sentence chrF of each example.
    pub fn sentence_scores<H, R, S>(&self, hyps: &[H], refs: &[R]) -> Result<Vec<ChrfScore>>
    where
        H: AsRef<str> + Sync,
        R: AsRef<[S]> + Sync,
        S: AsRef<str>,
    {
        let stats = self.segment_stats(hyps, refs)?;
        Ok(stats
            .iter()
            .zip(refs)
            .map(|(s, r)| self.score(s, Some(r.as_ref().len())))
            .collect())
    }

    /// Per-example statistics: `[hyp, ref, match]` for each order (chars first, then words).
    pub fn segment_stats<H, R, S>(&self, hyps: &[H], refs: &[R]) -> Result<Vec<Vec<u64>>>
    where
        H: AsRef<str> + Sync,
        R: AsRef<[S]> + Sync,
        S: AsRef<str>,
    {
        check_corpus(hyps.len(), refs)?;
        Ok(hyps
            .par_iter()
            .zip(refs.par_iter())
            .map_init(Work::default, |w, (h, r)| {
                self.stats_one(h.as_ref(), r.as_ref(), w)
            })
            .collect())
    }

    fn score(&self, stats: &[u64], nrefs: Option<usize>) -> ChrfScore {
        ChrfScore {
            name: self.name(),
            score: self.f_score(stats),
            signature: self.signature(nrefs),
        }
    }

    /// Character n-grams of one segment into `out` (one count list per order), `bits` bits
    /// per code point.
    fn char_grams<K: Key>(
        &self,
        seg: &str,
        bits: u32,
        units: &mut Vec<u32>,
        keys: &mut Vec<K>,
        out: &mut Grams<K>,
    ) {
        out.resize_with(self.char_order, Counts::new);
        units.clear();
        if self.whitespace {
            units.extend(seg.chars().map(u32::from));
        } else {
            units.extend(py_split(seg).flat_map(str::chars).map(u32::from));
        }
        for n in 1..=self.char_order {
            keys.clear();
            if units.len() >= n {
                keys.extend(units.windows(n).map(|x| ngram::pack::<K>(x, bits)));
            }
            ngram::count_into(keys, &mut out[n - 1]);
        }
    }

    /// chrF++ word n-grams (ids from the example's shared interner).
    fn word_grams(
        &self,
        seg: &str,
        words: &mut Interner,
        units: &mut Vec<u32>,
        b: &mut GramBufs<u128>,
        hyp: bool,
    ) {
        let out = if hyp { &mut b.hyp } else { &mut b.refg };
        out.resize_with(self.word_order, Counts::new);
        units.clear();
        units.extend(remove_punctuation(seg).into_iter().map(|x| words.id(x)));
        for n in 1..=self.word_order {
            b.keys.clear();
            if units.len() >= n {
                b.keys
                    .extend(units.windows(n).map(|x| ngram::pack::<u128>(x, 32)));
            }
            ngram::count_into(&mut b.keys, &mut out[n - 1]);
        }
    }

    fn stats_one<S: AsRef<str>>(&self, hyp: &str, refs: &[S], w: &mut Work) -> Vec<u64> {
        let lowercase = self.lowercase;
        let prep = |s| lower_if(s, lowercase);
        let hyp = prep(hyp);
        let refs: Vec<Cow<str>> = refs.iter().map(|r| prep(r.as_ref())).collect();
        let max = std::iter::once(&hyp)
            .chain(&refs)
            .flat_map(|s| s.chars())
            .map(u32::from)
            .max()
            .unwrap_or(1);
        let bits = ngram::width(max);
        if bits * self.char_order as u32 <= 64 {
            self.stats_k(
                &hyp,
                &refs,
                bits,
                &mut w.c64,
                &mut w.words,
                &mut w.units,
                &mut w.interner,
            )
        } else {
            self.stats_k(
                &hyp,
                &refs,
                21,
                &mut w.c128,
                &mut w.words,
                &mut w.units,
                &mut w.interner,
            )
        }
    }

    fn stats_k<K: Key>(
        &self,
        hyp: &str,
        refs: &[Cow<str>],
        bits: u32,
        c: &mut GramBufs<K>,
        wb: &mut GramBufs<u128>,
        units: &mut Vec<u32>,
        interner: &mut Interner,
    ) -> Vec<u64> {
        self.char_grams(hyp, bits, units, &mut c.keys, &mut c.hyp);
        if self.word_order > 0 {
            interner.reset(hyp.len() / 2 + 1);
            self.word_grams(hyp, interner, units, wb, true);
        }
        let mut best: Vec<u64> = Vec::new();
        let mut best_f = -1.0;
        for r in refs {
            self.char_grams(r, bits, units, &mut c.keys, &mut c.refg);
            let mut stats = Vec::with_capacity(3 * self.order());
            push_stats(&c.hyp, &c.refg, &mut stats);
            if self.word_order > 0 {
                self.word_grams(r, interner, units, wb, false);
                push_stats(&wb.hyp, &wb.refg, &mut stats);
            }
            let f = self.f_score(&stats);
            if f > best_f {
                best_f = f;
                best = stats;
            }
        }
        best
    }

    /// sacrebleu's `_compute_f_score`, operation for operation.
    pub fn f_score(&self, stats: &[u64]) -> f64 {
        let eps = 1e-16;
        let factor = f64::from(self.beta * self.beta);
        let (mut score, mut avg_prec, mut avg_rec, mut eff) = (0.0f64, 0.0f64, 0.0f64, 0usize);
        for s in stats.chunks_exact(3) {
            let (n_hyp, n_ref, n_match) = (s[0], s[1], s[2]);
            let prec = if n_hyp > 0 {
                n_match as f64 / n_hyp as f64
            } else {
                eps
            };
            let rec = if n_ref > 0 {
                n_match as f64 / n_ref as f64
            } else {
                eps
            };
            let denom = factor * prec + rec;
            score += if denom > 0.0 {
                (1.0 + factor) * prec * rec / denom
            } else {
                eps
            };
            if n_hyp > 0 && n_ref > 0 {
                avg_prec += prec;
                avg_rec += rec;
                eff += 1;
            }
        }
        if self.eps_smoothing {
            return 100.0 * score / self.order() as f64;
        }
        if eff == 0 {
            avg_prec = 0.0;
            avg_rec = 0.0;
        } else {
            avg_prec /= eff as f64;
            avg_rec /= eff as f64;
        }
        if avg_prec + avg_rec != 0.0 {
            let mut s = (1.0 + factor) * avg_prec * avg_rec;
            s /= (factor * avg_prec) + avg_rec;
            100.0 * s
        } else {
            0.0
        }
    }
}

/// `[hyp, ref, match]` per order; hypothesis n-grams count only when the reference has some
/// (as sacrebleu's `_get_match_statistics`).
fn push_stats<K: Key>(hyp: &Grams<K>, refg: &Grams<K>, stats: &mut Vec<u64>) {
    for (hc, rc) in hyp.iter().zip(refg) {
        let (mut n_hyp, mut n_match) = (0u64, 0u64);
        ngram::for_each_match(hc, rc, |_, c, m| {
            n_hyp += u64::from(c);
            n_match += u64::from(m);
        });
        let n_ref: u64 = rc.iter().map(|&(_, c)| u64::from(c)).sum();
        stats.extend([if rc.is_empty() { 0 } else { n_hyp }, n_ref, n_match]);
    }
}

fn lower_if(s: &str, yes: bool) -> Cow<'_, str> {
    if yes {
        Cow::Owned(py_lower(s))
    } else {
        Cow::Borrowed(s)
    }
}

/// chrF++'s word splitting: a punctuation mark at the end (else the start) of a multi-character
/// word becomes its own token (so `(hi)` gives `(hi` and `)`, as in sacrebleu).
fn remove_punctuation(sent: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for w in py_split(sent) {
        let mut it = w.chars();
        let first = it.next();
        let last = it.next_back();
        match (first, last) {
            (Some(f), Some(l)) => {
                if PUNCTS.contains(l) {
                    let cut = w.len() - l.len_utf8();
                    out.extend([&w[..cut], &w[cut..]]);
                } else if PUNCTS.contains(f) {
                    out.extend([&w[..1], &w[1..]]);
                } else {
                    out.push(w);
                }
            }
            _ => out.push(w),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn chrf_pp_word_split() {
        assert_eq!(
            remove_punctuation("(hi) a, b! «x»"),
            ["(hi", ")", "a", ",", "b", "!", "«x»"]
        );
    }

    #[test]
    fn identical_is_100_and_names() -> Result<()> {
        let s = Chrf::default().corpus_score(&["Grüße, Welt"], &[["Grüße, Welt"]])?;
        assert!((s.score - 100.0).abs() < 1e-12);
        assert_eq!(s.name, "chrF2");
        assert_eq!(Chrf::plus_plus().name(), "chrF2++");
        assert_eq!(
            s.signature,
            "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0"
        );
        assert!(Chrf::default().with_orders(7, 0).is_err());
        Ok(())
    }
}
