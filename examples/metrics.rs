//! Score a hypothesis file against reference files, like the `sacrebleu` command line.
//!
//! ```text
//! cargo run --release --example metrics -- --hyp hyp.txt --ref ref.txt [--ref ref2.txt] \
//!     --metric bleu,chrf,rouge,exact_match [--tokenize 13a|intl|none] [--lowercase] [--stem] \
//!     [--chrf-word-order 2] [--per-sentence]
//! ```
//!
//! One segment per line; prints one JSON object (corpus scores, per-sentence scores with
//! `--per-sentence`).

use std::path::PathBuf;

use clap::Parser;
use kiln::eval::exact_match::{Normalize, NumberFormat};
use kiln::eval::refs::read_corpus;
use kiln::eval::report::{Metric, ReportConfig, metrics_report};
use kiln::eval::{Bleu, BleuTokenizer, Chrf, Rouge, RougeType};

#[derive(Parser)]
#[command(about = "BLEU/chrF equal to sacrebleu, ROUGE equal to rouge-score, exact match")]
struct Args {
    /// Hypotheses, one per line.
    #[arg(long)]
    hyp: PathBuf,
    /// References, one per line; repeat for several references per example.
    #[arg(long = "ref", required = true)]
    refs: Vec<PathBuf>,
    /// Comma-separated: bleu, chrf, rouge, exact_match.
    #[arg(long, default_value = "bleu,chrf")]
    metric: String,
    /// BLEU tokenizer: 13a, intl or none.
    #[arg(long, default_value = "13a")]
    tokenize: String,
    /// Lowercase for BLEU and chrF.
    #[arg(long)]
    lowercase: bool,
    /// Porter-stem ROUGE tokens (rouge-score's use_stemmer).
    #[arg(long)]
    stem: bool,
    /// chrF word n-gram order (2 gives chrF++).
    #[arg(long, default_value_t = 0)]
    chrf_word_order: usize,
    /// Also print per-sentence scores.
    #[arg(long)]
    per_sentence: bool,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let (hyps, refs) = read_corpus(&a.hyp, &a.refs)?;
    let tokenizer: BleuTokenizer = a.tokenize.parse()?;
    let cfg = ReportConfig {
        metrics: Metric::parse_list(&a.metric)?,
        bleu: Bleu::default()
            .with_tokenizer(tokenizer)
            .with_lowercase(a.lowercase),
        chrf: Chrf::default()
            .with_orders(6, a.chrf_word_order)?
            .with_lowercase(a.lowercase),
        rouge: Rouge::new(RougeType::ALL.to_vec(), a.stem),
        exact_match: Normalize::squad().with_numbers(NumberFormat::StripThousands),
        per_sentence: a.per_sentence,
    };
    let report = metrics_report(&cfg, &hyps, &refs)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
