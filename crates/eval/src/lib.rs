//! kiln-eval: evaluation metrics computed exactly as the tools people already trust.
//!
//! - [`Bleu`] and [`Chrf`]: sacrebleu 2.6 (corpus and sentence BLEU, `13a`/`intl`/`none`
//!   tokenizers, smoothing, signature strings; chrF and chrF++).
//! - [`Rouge`]: Google's `rouge-score` 0.1.2 (ROUGE-N, ROUGE-L, ROUGE-Lsum, optional
//!   [`porter`] stemming equal to NLTK's).
//! - [`exact_match`]: exact match with explicit normalisation, numeric match with tolerance,
//!   and answer extraction ([`Extractor`]).
//! - [`bootstrap`]: paired bootstrap confidence interval and wins/ties/losses for A/B comparisons.
//! - [`report`]: the JSON object the `metrics` example prints.
//!
//! All metric modules are model-free; values are golden-tested against the Python tools
//! (`tools/fixtures/metrics.py`, fixtures in `fixtures/metrics/`).
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

pub mod bleu;
mod bleu_score;
pub mod bootstrap;
pub mod chrf;
mod error;
pub mod exact_match;
pub mod extract;
mod hash;
mod ngram;
pub mod porter;
pub mod refs;
pub mod report;
pub mod rouge;
mod rouge_match;
pub mod text;
pub mod tokenizer;

pub use bleu::{Bleu, BleuScore, BleuStats, SACREBLEU_VERSION, Smooth};
pub use bootstrap::{PairedComparison, paired_bootstrap};
pub use chrf::{Chrf, ChrfScore};
pub use error::{EvalError, Result};
pub use exact_match::{Normalize, NumericTolerance};
pub use extract::Extractor;
pub use rouge::{Rouge, RougeCorpus, RougeScore, RougeType};
pub use tokenizer::BleuTokenizer;
