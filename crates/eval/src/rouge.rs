//! ROUGE-N, ROUGE-L and ROUGE-Lsum exactly as Google's `rouge-score` 0.1.2 computes them.
//!
//! Tokenizer: Python `lower()`, every run of characters outside `[a-z0-9]` is a separator, and
//! with stemming on, tokens longer than three characters go through NLTK's Porter stemmer
//! ([`crate::porter`]). ROUGE-Lsum splits on `\n` (empty lines dropped) and uses the union LCS
//! of each reference sentence with all prediction sentences, without double counting.
//!
//! With several references, each ROUGE type takes the reference with the highest F
//! (`RougeScorer.score_multi`; first on ties). Corpus figures are plain means of the
//! per-example precision, recall and F (no `BootstrapAggregator`).

use std::borrow::Cow;
use std::cell::RefCell;
use std::str::FromStr;

use rayon::prelude::*;

use crate::error::{EvalError, Result};
use crate::hash::FxHashMap;
use crate::porter;
use crate::refs::check_corpus;
pub use crate::rouge_match::RougeScore;
use crate::rouge_match::{lcs_table, score_ngrams, summary_lcs};
use crate::text::py_lower;

/// A ROUGE variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RougeType {
    /// ROUGE-N on n-grams (`rouge1`, `rouge2`, ...).
    N(usize),
    /// ROUGE-L: longest common subsequence of the whole texts.
    L,
    /// ROUGE-Lsum: summary-level union LCS over newline-separated sentences.
    Lsum,
}

impl RougeType {
    /// The default set: rouge1, rouge2, rougeL, rougeLsum.
    pub const ALL: [RougeType; 4] = [Self::N(1), Self::N(2), Self::L, Self::Lsum];

    /// rouge-score's name (`rouge1`, `rougeL`, `rougeLsum`).
    pub fn name(self) -> String {
        match self {
            Self::N(n) => format!("rouge{n}"),
            Self::L => "rougeL".into(),
            Self::Lsum => "rougeLsum".into(),
        }
    }
}

impl FromStr for RougeType {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "rougeL" => Ok(Self::L),
            "rougeLsum" => Ok(Self::Lsum),
            _ => match s
                .strip_prefix("rouge")
                .and_then(|n| n.parse::<usize>().ok())
            {
                Some(n) if (1..=9).contains(&n) && s.len() == 6 => Ok(Self::N(n)),
                _ => Err(EvalError::UnknownOption {
                    what: "ROUGE type",
                    value: s.into(),
                    expected: "rouge1..rouge9, rougeL, rougeLsum",
                }),
            },
        }
    }
}

/// Corpus ROUGE: per-example scores and their plain means, one entry per requested type.
#[derive(Debug, Clone, PartialEq)]
pub struct RougeCorpus {
    pub types: Vec<RougeType>,
    /// `per_example[i][t]`: example `i`, type `types[t]`.
    pub per_example: Vec<Vec<RougeScore>>,
    /// Means over examples of precision, recall and F for each type.
    pub mean: Vec<RougeScore>,
}

/// A ROUGE scorer (rouge-score's `RougeScorer(types, use_stemmer)` with its default tokenizer).
#[derive(Debug, Clone, PartialEq)]
pub struct Rouge {
    pub types: Vec<RougeType>,
    pub stem: bool,
}

impl Default for Rouge {
    fn default() -> Self {
        Self {
            types: RougeType::ALL.to_vec(),
            stem: false,
        }
    }
}

/// rouge-score lowercases with Python's `str.lower()` before dropping everything outside
/// `[a-z0-9]`.
fn lower(text: &str) -> Cow<'_, str> {
    if !text.is_ascii() {
        Cow::Owned(py_lower(text))
    } else if text.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(text.to_ascii_lowercase())
    } else {
        Cow::Borrowed(text)
    }
}

/// Porter stems, memoised per thread (word frequencies are Zipfian, so most lookups hit).
fn stem_cached(tok: &str) -> String {
    thread_local! {
        static CACHE: RefCell<FxHashMap<String, String>> = RefCell::new(FxHashMap::default());
    }
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if let Some(s) = c.get(tok) {
            return s.clone();
        }
        let s = porter::stem(tok);
        if c.len() >= 200_000 {
            c.clear();
        }
        c.insert(tok.to_owned(), s.clone());
        s
    })
}

/// Per-example token ids. Equal ids mean equal (stemmed) token strings.
struct Vocab<'a> {
    /// Surface token -> id (caches stemming).
    surface: FxHashMap<&'a str, u32>,
    /// Token after optional stemming -> id.
    keys: FxHashMap<Cow<'a, str>, u32>,
    stem: bool,
}

impl<'a> Vocab<'a> {
    fn new(stem: bool) -> Self {
        Self {
            surface: FxHashMap::default(),
            keys: FxHashMap::default(),
            stem,
        }
    }

    /// Token ids of an already [`lower`]ed text.
    fn tokens(&mut self, low: &'a str) -> Vec<u32> {
        let mut out = Vec::new();
        for tok in low
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|t| !t.is_empty())
        {
            if let Some(&id) = self.surface.get(tok) {
                out.push(id);
                continue;
            }
            // Only tokens longer than three characters are stemmed.
            let key: Cow<'a, str> = if self.stem && tok.len() > 3 {
                Cow::Owned(stem_cached(tok))
            } else {
                Cow::Borrowed(tok)
            };
            if key.is_empty() {
                continue;
            }
            let next = self.keys.len() as u32;
            let id = *self.keys.entry(key).or_insert(next);
            self.surface.insert(tok, id);
            out.push(id);
        }
        out
    }
}

impl Rouge {
    /// A scorer for the given types.
    pub fn new(types: Vec<RougeType>, stem: bool) -> Self {
        Self { types, stem }
    }

    /// rouge-score's tokenizer, as strings (for inspection and tests).
    pub fn tokenize(&self, text: &str) -> Vec<String> {
        let low = lower(text);
        let mut v = Vocab::new(self.stem);
        let ids = v.tokens(&low);
        let mut names = vec![String::new(); v.keys.len()];
        for (s, &i) in &v.keys {
            names[i as usize] = s.to_string();
        }
        ids.into_iter().map(|i| names[i as usize].clone()).collect()
    }

    /// Scores of `prediction` against one reference, one per type (`RougeScorer.score(target, prediction)`).
    pub fn score(&self, prediction: &str, reference: &str) -> Vec<RougeScore> {
        let (pl, rl) = (lower(prediction), lower(reference));
        let mut v = Vocab::new(self.stem);
        let needs_flat = self.types.iter().any(|t| *t != RougeType::Lsum);
        let (p, r) = if needs_flat {
            (v.tokens(&pl), v.tokens(&rl))
        } else {
            (vec![], vec![])
        };
        let mut table = Vec::new();
        self.types
            .iter()
            .map(|t| match *t {
                RougeType::N(n) => score_ngrams(&p, &r, n),
                RougeType::L => {
                    if p.is_empty() || r.is_empty() {
                        return RougeScore::default();
                    }
                    let lcs = lcs_table(&r, &p, &mut table);
                    RougeScore::new(lcs as f64 / p.len() as f64, lcs as f64 / r.len() as f64)
                }
                RougeType::Lsum => {
                    let ps: Vec<Vec<u32>> = sentences(&pl).map(|s| v.tokens(s)).collect();
                    let rs: Vec<Vec<u32>> = sentences(&rl).map(|s| v.tokens(s)).collect();
                    summary_lcs(&rs, &ps, v.keys.len(), &mut table)
                }
            })
            .collect()
    }

    /// `RougeScorer.score_multi`: per type, the reference with the highest F (first on ties).
    pub fn score_multi<S: AsRef<str>>(
        &self,
        prediction: &str,
        references: &[S],
    ) -> Result<Vec<RougeScore>> {
        let mut best: Option<Vec<RougeScore>> = None;
        for r in references {
            let s = self.score(prediction, r.as_ref());
            best = Some(match best {
                None => s,
                Some(b) => b
                    .into_iter()
                    .zip(s)
                    .map(|(b, s)| if s.fmeasure > b.fmeasure { s } else { b })
                    .collect(),
            });
        }
        best.ok_or(EvalError::NoReference { index: 0 })
    }

    /// Per-example scores (in parallel) and their means. `refs[i]` are the references of
    /// example `i`. Errors as [`crate::Bleu::corpus_score`].
    pub fn corpus_score<H, R, S>(&self, hyps: &[H], refs: &[R]) -> Result<RougeCorpus>
    where
        H: AsRef<str> + Sync,
        R: AsRef<[S]> + Sync,
        S: AsRef<str> + Sync,
    {
        check_corpus(hyps.len(), refs)?;
        let per_example: Vec<Vec<RougeScore>> = hyps
            .par_iter()
            .zip(refs.par_iter())
            .enumerate()
            .map(|(i, (h, r))| {
                self.score_multi(h.as_ref(), r.as_ref())
                    .map_err(|_| EvalError::NoReference { index: i })
            })
            .collect::<Result<_>>()?;
        let k = per_example.len() as f64;
        let mean = (0..self.types.len())
            .map(|t| {
                let (mut p, mut r, mut f) = (0.0, 0.0, 0.0);
                for e in &per_example {
                    p += e[t].precision;
                    r += e[t].recall;
                    f += e[t].fmeasure;
                }
                RougeScore {
                    precision: p / k,
                    recall: r / k,
                    fmeasure: f / k,
                }
            })
            .collect();
        Ok(RougeCorpus {
            types: self.types.clone(),
            per_example,
            mean,
        })
    }
}

fn sentences(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n').filter(|s| !s.is_empty())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_like_rouge_score() {
        let r = Rouge::default();
        assert_eq!(
            r.tokenize("The quick-brown FOX, 3.5 times!"),
            ["the", "quick", "brown", "fox", "3", "5", "times"]
        );
        assert_eq!(
            Rouge::new(vec![], true).tokenize("running dogs ran"),
            ["run", "dog", "ran"]
        );
        assert!(r.tokenize("日本語 …").is_empty());
    }

    #[test]
    fn known_example_from_rouge_score_readme() {
        let s = Rouge::new(vec![RougeType::N(1), RougeType::L], false).score(
            "The quick brown dog jumps on the log.",
            "The quick brown fox jumps over the lazy dog",
        );
        assert!((s[0].precision - 0.75).abs() < 1e-12 && (s[0].recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((s[1].fmeasure - 0.5882352941176471).abs() < 1e-12);
    }

    #[test]
    fn parse_types() {
        assert_eq!("rouge2".parse::<RougeType>().ok(), Some(RougeType::N(2)));
        assert_eq!("rougeLsum".parse::<RougeType>().ok(), Some(RougeType::Lsum));
        assert!("rouge0".parse::<RougeType>().is_err() && "bleu".parse::<RougeType>().is_err());
    }
}
