//! kiln-eval: evaluation metrics computed exactly as the tools people already trust.
//!
//! - [`Bleu`] and [`Chrf`]: sacrebleu 2.6 (corpus and sentence BLEU, `13a`/`intl`/`none`
//!   tokenizers, smoothing, signature strings; chrF and chrF++).
//! - [`Rouge`]: Google's `rouge-score` 0.1.2 (ROUGE-N, ROUGE-L, ROUGE-Lsum, optional
//!   [`porter`] stemming equal to NLTK's).
//! - [`exact_match`]: exact match with explicit normalisation, numeric match with tolerance,
//!   and answer extraction ([`Extractor`]).
//! - [`paired_bootstrap`]: paired bootstrap confidence interval and wins/ties/losses for A/B comparisons.
//! - [`report`]: the JSON object the `metrics` example prints.
//!
//!
//! With a model from `kiln-models` (with or without adapters):
//! - [`dataset_perplexity`]: token-weighted perplexity of a dataset (label masks honoured), and
//!   [`sliding_window_perplexity`], that of transformers' guide;
//! - [`score_pairs`] and [`score_choices`]: log-likelihood of continuations and multiple choice scored as
//!   lm-evaluation-harness does (`acc`, `acc_norm`);
//! - [`harness`]: generation-based evaluation over a dataset with per-example JSON Lines;
//! - [`compare()`]: A/B reports (Markdown and JSON) with paired bootstrap intervals.
//!
//! Metric values are golden-tested against the Python tools (`tools/fixtures/metrics.py`,
//! fixtures in `fixtures/metrics/`); the model-based scores against transformers and
//! lm-evaluation-harness (`tools/fixtures/eval_model.py`, `fixtures/eval/`).
//!
//! ```
//! use kiln_eval::{Bleu, Rouge};
//! let hyps = ["the cat sat on the mat"];
//! let refs = [["the cat is on the mat"]];
//! let bleu = Bleu::default().corpus_score(&hyps, &refs)?;
//! assert!((bleu.score - 37.9918).abs() < 1e-4); // sacrebleu: 37.99178428257963
//! let rouge = Rouge::default().corpus_score(&hyps, &refs)?;
//! assert!((rouge.mean[0].fmeasure - 5.0 / 6.0).abs() < 1e-12);
//! # Ok::<(), kiln_eval::EvalError>(())
//! ```

mod bleu;
mod bleu_score;
mod bootstrap;
mod choice;
mod chrf;
mod compare;
mod error;
pub mod exact_match;
mod extract;
pub mod harness;
mod hash;
pub mod io;
mod loglik;
mod ngram;
mod perplexity;
pub mod porter;
pub mod refs;
pub mod report;
mod rouge;
mod rouge_match;
pub mod text;
mod tokenizer;

pub use bleu::{Bleu, BleuScore, BleuStats, SACREBLEU_VERSION, Smooth};
pub use bootstrap::{PairedComparison, paired_bootstrap};
pub use choice::{ChoiceAccuracy, ChoiceItem, ChoiceResult, choice_accuracy, score_choices};
pub use chrf::{Chrf, ChrfScore};
pub use compare::{CompareOptions, Comparison, compare};
pub use error::{EvalError, Result};
pub use exact_match::{Normalize, NumberFormat, NumericTolerance};
pub use extract::Extractor;
pub use harness::{
    EvalExample, EvalMetric, EvalReport, ExampleRecord, HarnessConfig, Prompt, evaluate,
};
pub use loglik::{Loglik, PairEncoder, TokenPair, score_pairs, score_pairs_with};
pub use perplexity::{Perplexity, dataset_perplexity, sliding_window_perplexity};
pub use rouge::{Rouge, RougeCorpus, RougeScore, RougeType};
pub use tokenizer::BleuTokenizer;
