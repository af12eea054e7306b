//! BLEU exactly as sacrebleu 2.x computes it (`sacrebleu.metrics.bleu.BLEU`).
//!
//! Defaults are sacrebleu's: `13a` tokenizer, mixed case, exponential smoothing, n-grams up to
//! 4, no effective order for corpus BLEU. [`Bleu::sentence`] mirrors `sacrebleu.sentence_bleu`
//! (effective order on). Multiple references per example clip n-gram counts by the maximum
//! over references, and the brevity penalty uses the closest reference length (ties: the
//! shorter), as sacrebleu does.

use rayon::prelude::*;

use crate::bleu_score::compute_bleu;
pub use crate::bleu_score::{BleuScore, BleuStats, MAX_NGRAM_ORDER, Smooth};
use crate::error::{EvalError, Result};
use crate::ngram::{self, Counts, Interner, Key};
use crate::refs::{check_corpus, nrefs_signature};
use crate::text::{py_lower, py_rstrip};
use crate::tokenizer::{BleuTokenizer, Scratch};

/// The sacrebleu version whose behaviour (and signature string) this module reproduces.
pub const SACREBLEU_VERSION: &str = "2.6.0";

/// BLEU configuration. `Bleu::default()` is sacrebleu's `BLEU()`.
#[derive(Debug, Clone, PartialEq)]
pub struct Bleu {
    pub tokenizer: BleuTokenizer,
    pub lowercase: bool,
    pub smooth: Smooth,
    pub effective_order: bool,
    max_order: usize,
}

impl Default for Bleu {
    fn default() -> Self {
        Self {
            tokenizer: BleuTokenizer::Tok13a,
            lowercase: false,
            smooth: Smooth::Exp,
            effective_order: false,
            max_order: MAX_NGRAM_ORDER,
        }
    }
}

/// Key buffers for one key width.
#[derive(Default)]
struct KeyBufs<K> {
    keys: Vec<K>,
    hyp: Counts<K>,
    refs: Counts<K>,
    one: Counts<K>,
    merge: Counts<K>,
}

/// Per-thread buffers for segment statistics.
#[derive(Default)]
struct Work {
    hyp: String,
    refs: Vec<String>,
    scratch: Scratch,
    interner: Interner,
    /// Ids of all references then the hypothesis; `ends[k]` closes segment `k`.
    ids: Vec<u32>,
    ends: Vec<usize>,
    k64: KeyBufs<u64>,
    k128: KeyBufs<u128>,
}

impl Bleu {
    /// sacrebleu's `sentence_bleu` defaults: as [`Bleu::default`] with effective order.
    pub fn sentence() -> Self {
        Self {
            effective_order: true,
            ..Self::default()
        }
    }

    /// Set the tokenizer.
    pub fn with_tokenizer(mut self, t: BleuTokenizer) -> Self {
        self.tokenizer = t;
        self
    }

    /// Lowercase hypotheses and references before tokenizing.
    pub fn with_lowercase(mut self, yes: bool) -> Self {
        self.lowercase = yes;
        self
    }

    /// Set the smoothing method.
    pub fn with_smooth(mut self, s: Smooth) -> Self {
        self.smooth = s;
        self
    }

    /// Stop at the largest n-gram order with a non-zero hypothesis count.
    pub fn with_effective_order(mut self, yes: bool) -> Self {
        self.effective_order = yes;
        self
    }

    /// Maximum n-gram order, 1..=4 (sacrebleu's default is 4).
    pub fn with_max_ngram_order(mut self, n: usize) -> Result<Self> {
        if !(1..=MAX_NGRAM_ORDER).contains(&n) {
            return Err(EvalError::InvalidOption {
                what: "max_ngram_order",
                reason: format!("{n} is not in 1..={MAX_NGRAM_ORDER}"),
            });
        }
        self.max_order = n;
        Ok(self)
    }

    /// The maximum n-gram order.
    pub fn max_ngram_order(&self) -> usize {
        self.max_order
    }

    /// sacrebleu's signature for `nrefs` references per example (`None`: a varying number).
    pub fn signature(&self, nrefs: Option<usize>) -> String {
        format!(
            "nrefs:{}|case:{}|eff:{}|tok:{}|smooth:{}|version:{SACREBLEU_VERSION}",
            nrefs_signature(nrefs),
            if self.lowercase { "lc" } else { "mixed" },
            if self.effective_order { "yes" } else { "no" },
            self.tokenizer.signature(),
            self.smooth.signature()
        )
    }

    /// Corpus BLEU of `hyps` against `refs`, where `refs[i]` lists the references of example
    /// `i` (a varying number is allowed and gives `nrefs:var`, as sacrebleu's `None` placeholders).
    ///
    /// Errors: no hypotheses ([`EvalError::Empty`]), `refs.len() != hyps.len()`
    /// ([`EvalError::LengthMismatch`]; sacrebleu's API silently truncates with `zip`, its
    /// command line refuses), or an example without references ([`EvalError::NoReference`]).
    pub fn corpus_score<H, R, S>(&self, hyps: &[H], refs: &[R]) -> Result<BleuScore>
    where
        H: AsRef<str> + Sync,
        R: AsRef<[S]> + Sync,
        S: AsRef<str>,
    {
        let nrefs = check_corpus(hyps.len(), refs)?;
        let stats = self.segment_stats(hyps, refs)?;
        let mut sum = BleuStats::default();
        for s in stats {
            sum += s;
        }
        Ok(self.score_from_stats(&sum, nrefs))
    }

    /// Sentence BLEU of each example (uses this configuration; build it with [`Bleu::sentence`]
    /// to match `sacrebleu.sentence_bleu`).
    pub fn sentence_scores<H, R, S>(&self, hyps: &[H], refs: &[R]) -> Result<Vec<BleuScore>>
    where
        H: AsRef<str> + Sync,
        R: AsRef<[S]> + Sync,
        S: AsRef<str>,
    {
        check_corpus(hyps.len(), refs)?;
        let stats = self.segment_stats(hyps, refs)?;
        Ok(stats
            .iter()
            .zip(refs)
            .map(|(s, r)| self.score_from_stats(s, Some(r.as_ref().len())))
            .collect())
    }

    /// BLEU of one hypothesis against its references.
    pub fn sentence_score<S: AsRef<str>>(&self, hyp: &str, refs: &[S]) -> Result<BleuScore> {
        if refs.is_empty() {
            return Err(EvalError::NoReference { index: 0 });
        }
        let s = self.stats_one(hyp, refs, &mut Work::default());
        Ok(self.score_from_stats(&s, Some(refs.len())))
    }

    /// Per-example sufficient statistics (computed in parallel).
    pub fn segment_stats<H, R, S>(&self, hyps: &[H], refs: &[R]) -> Result<Vec<BleuStats>>
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

    fn preprocess_into(&self, s: &str, out: &mut String, scratch: &mut Scratch) {
        if self.lowercase {
            let low = py_lower(s);
            self.tokenizer.tokenize_into(py_rstrip(&low), out, scratch);
        } else {
            self.tokenizer.tokenize_into(py_rstrip(s), out, scratch);
        }
    }

    fn stats_one<S: AsRef<str>>(&self, hyp: &str, refs: &[S], w: &mut Work) -> BleuStats {
        self.preprocess_into(hyp, &mut w.hyp, &mut w.scratch);
        w.refs.resize_with(refs.len(), String::new);
        for (r, out) in refs.iter().zip(w.refs.iter_mut()) {
            self.preprocess_into(r.as_ref(), out, &mut w.scratch);
        }
        let expected = w.hyp.len() + w.refs.iter().map(String::len).sum::<usize>();
        w.interner.reset(expected / 2 + 1);
        w.ids.clear();
        w.ends.clear();
        for seg in w.refs.iter().chain(std::iter::once(&w.hyp)) {
            let interner = &mut w.interner;
            w.ids
                .extend(words(seg, self.tokenizer).map(|t| interner.id(t)));
            w.ends.push(w.ids.len());
        }
        let bits = ngram::width(w.interner.count() as u32);
        if bits * self.max_order as u32 <= 64 {
            self.count(&w.ids, &w.ends, bits, &mut w.k64)
        } else {
            self.count(&w.ids, &w.ends, 32, &mut w.k128)
        }
    }

    fn count<K: Key>(
        &self,
        ids: &[u32],
        ends: &[usize],
        bits: u32,
        b: &mut KeyBufs<K>,
    ) -> BleuStats {
        let n_refs = ends.len() - 1;
        let mut ref_lens = Vec::with_capacity(n_refs);
        let mut start = 0;
        for (k, &end) in ends[..n_refs].iter().enumerate() {
            ref_lens.push((end - start) as u64);
            ngram_keys(&ids[start..end], self.max_order, bits, &mut b.keys);
            if k == 0 {
                ngram::count_into(&mut b.keys, &mut b.refs);
            } else {
                ngram::count_into(&mut b.keys, &mut b.one);
                ngram::merge_max(&mut b.refs, &b.one, &mut b.merge);
            }
            start = end;
        }
        let hyp = &ids[start..];
        let hyp_len = hyp.len() as u64;
        ngram_keys(hyp, self.max_order, bits, &mut b.keys);
        ngram::count_into(&mut b.keys, &mut b.hyp);
        let mut stats = BleuStats {
            sys_len: hyp_len,
            ref_len: closest_ref_len(hyp_len, &ref_lens),
            ..Default::default()
        };
        ngram::for_each_match(&b.hyp, &b.refs, |key, c, m| {
            let n = ngram::order_of(key, bits) - 1;
            stats.total[n] += u64::from(c);
            stats.correct[n] += u64::from(m);
        });
        stats
    }

    /// BLEU from (summed) statistics: sacrebleu's `compute_bleu`, operation for operation.
    pub fn score_from_stats(&self, s: &BleuStats, nrefs: Option<usize>) -> BleuScore {
        compute_bleu(
            s,
            self.max_order,
            self.smooth,
            self.effective_order,
            self.signature(nrefs),
        )
    }
}

/// Tokens of a tokenized line: `13a` and `intl` output single-space-joined tokens; `none`
/// leaves the text alone, so Python's `str.split()` applies.
fn words(line: &str, tok: BleuTokenizer) -> Box<dyn Iterator<Item = &str> + '_> {
    match tok {
        BleuTokenizer::None => Box::new(crate::text::py_split(line)),
        _ => Box::new(line.split(' ').filter(|t| !t.is_empty())),
    }
}

/// All n-gram keys of orders 1..=n_max of `ids`, into `keys` (cleared first).
fn ngram_keys<K: Key>(ids: &[u32], n_max: usize, bits: u32, keys: &mut Vec<K>) {
    keys.clear();
    for n in 1..=n_max {
        if ids.len() >= n {
            keys.extend(ids.windows(n).map(|w| ngram::pack::<K>(w, bits)));
        }
    }
}

/// The reference length closest to `hyp_len`; ties go to the shorter reference.
fn closest_ref_len(hyp_len: u64, ref_lens: &[u64]) -> u64 {
    let mut best: Option<(u64, u64)> = None;
    for &r in ref_lens {
        let d = hyp_len.abs_diff(r);
        best = match best {
            Some((bd, bl)) if d > bd || (d == bd && r >= bl) => Some((bd, bl)),
            _ => Some((d, r)),
        };
    }
    best.map_or(0, |(_, l)| l)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn closest_reference_length_prefers_shorter_on_ties() {
        assert_eq!(closest_ref_len(5, &[7, 3]), 3);
        assert_eq!(closest_ref_len(5, &[6, 4, 9]), 4);
        assert_eq!(closest_ref_len(5, &[9, 6]), 6);
    }

    #[test]
    fn perfect_match_is_100() -> Result<()> {
        let s = Bleu::default()
            .corpus_score(&["the cat sat on the mat"], &[["the cat sat on the mat"]])?;
        assert!((s.score - 100.0).abs() < 1e-12);
        assert_eq!(
            s.signature,
            "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"
        );
        Ok(())
    }

    #[test]
    fn wide_vocabularies_use_128_bit_keys() -> Result<()> {
        // More than 2^16 distinct tokens: 4-grams no longer fit in 64 bits.
        let n = 70_000;
        let r: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
        let mut h = r.clone();
        h[100] = "x".into();
        let s = Bleu::default().corpus_score(&[h.join(" ")], &[[r.join(" ")]])?;
        let want: Vec<u64> = (1..=4u64).map(|k| n as u64 - k + 1 - k).collect();
        assert_eq!(s.counts, want);
        assert_eq!(
            s.totals,
            (1..=4u64).map(|k| n as u64 - k + 1).collect::<Vec<_>>()
        );
        Ok(())
    }

    #[test]
    fn smoothing_signatures() {
        let b = Bleu::default().with_smooth(Smooth::Floor(0.1));
        assert!(
            b.signature(None).contains("nrefs:var|")
                && b.signature(None).contains("smooth:floor[0.10]")
        );
        assert!(matches!(
            "bogus".parse::<Smooth>(),
            Err(EvalError::UnknownOption { .. })
        ));
        assert!(Bleu::default().with_max_ngram_order(5).is_err());
    }
}
