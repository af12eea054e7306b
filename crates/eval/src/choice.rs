//! Multiple choice and classification by log-likelihood of each option, scored as
//! lm-evaluation-harness 0.4 scores `multiple_choice` tasks:
//!
//! - each option is a request `(context, delimiter + option)` (delimiter `" "` by default);
//! - `acc`: the option with the highest summed log-likelihood is the prediction;
//! - `acc_norm`: the highest log-likelihood divided by the option's length in characters;
//! - `acc_bytes`: divided by its length in UTF-8 bytes.
//!
//! Ties go to the first option (numpy's `argmax`).
use kiln_models::CausalLm;

use crate::error::{EvalError, Result};
use crate::loglik::{Loglik, PairEncoder, score_pairs_with};

/// One question: a context, its options and the index of the right one.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChoiceItem {
    pub context: String,
    pub choices: Vec<String>,
    pub gold: usize,
}

/// The scores of one item.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ChoiceResult {
    pub logliks: Vec<Loglik>,
    /// Argmax of the summed log-likelihoods.
    pub pred: usize,
    /// Argmax of log-likelihood per character.
    pub pred_norm: usize,
    /// Argmax of log-likelihood per byte.
    pub pred_bytes: usize,
    pub gold: usize,
}

/// Accuracies over a set of items (0..1).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ChoiceAccuracy {
    pub n: usize,
    pub acc: f64,
    pub acc_norm: f64,
    pub acc_bytes: f64,
}

/// First index of the maximum, as `np.argmax`.
fn argmax(v: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, x) in v.enumerate() {
        if x > best.1 || (i == 0) {
            best = (i, x);
        }
    }
    best.0
}

/// Scores every option of every item (all requests batched together, `batch_size` rows per
/// forward pass). A progress bar with requests/s is drawn on a terminal.
pub fn score_choices(
    model: &CausalLm,
    encoder: &PairEncoder<'_>,
    items: &[ChoiceItem],
    delimiter: &str,
    batch_size: usize,
) -> Result<Vec<ChoiceResult>> {
    let mut pairs = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if item.choices.is_empty() || item.gold >= item.choices.len() {
            return Err(EvalError::InvalidOption {
                what: "multiple-choice item",
                reason: format!(
                    "item {i} has {} choices and gold index {}",
                    item.choices.len(),
                    item.gold
                ),
            });
        }
        for c in &item.choices {
            pairs.push(encoder.encode_pair(&item.context, &format!("{delimiter}{c}"))?);
        }
    }
    let bar = indicatif::ProgressBar::new(pairs.len() as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "choices [{elapsed_precise}] {bar:30} {pos}/{len} requests ({per_sec}, ETA {eta})",
    ) {
        bar.set_style(style);
    }
    let scored = score_pairs_with(model, &pairs, batch_size, &mut |k| bar.inc(k as u64))?;
    bar.finish_and_clear();
    let mut scores = scored.into_iter();
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let logliks: Vec<Loglik> = scores.by_ref().take(item.choices.len()).collect();
        let per = |len: fn(&str) -> usize| {
            argmax(
                logliks
                    .iter()
                    .zip(&item.choices)
                    .map(|(l, c)| l.logprob / len(c) as f64),
            )
        };
        out.push(ChoiceResult {
            pred: argmax(logliks.iter().map(|l| l.logprob)),
            pred_norm: per(|c| c.chars().count()),
            pred_bytes: per(str::len),
            gold: item.gold,
            logliks,
        });
    }
    Ok(out)
}

/// Accuracy, length-normalised accuracy and byte-normalised accuracy.
pub fn choice_accuracy(results: &[ChoiceResult]) -> Result<ChoiceAccuracy> {
    if results.is_empty() {
        return Err(EvalError::Empty {
            what: "the multiple-choice results".into(),
        });
    }
    let n = results.len() as f64;
    let frac = |f: fn(&ChoiceResult) -> usize| {
        results.iter().filter(|r| f(r) == r.gold).count() as f64 / n
    };
    Ok(ChoiceAccuracy {
        n: results.len(),
        acc: frac(|r| r.pred),
        acc_norm: frac(|r| r.pred_norm),
        acc_bytes: frac(|r| r.pred_bytes),
    })
}
