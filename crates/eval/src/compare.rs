//! A/B comparison of two harness runs on the same examples (base vs adapter, adapter vs
//! adapter): per-metric table, wins/ties/losses per example, a paired bootstrap confidence
//! interval of the difference, and the examples whose answers changed; as Markdown and JSON.
//!
//! The table shows each system's corpus score (corpus BLEU and chrF as sacrebleu computes
//! them); the bootstrap and the wins/ties/losses use the per-example values (sentence BLEU,
//! sentence chrF, 0/1 exact match, ROUGE F, per-example mean NLL). For `nll` lower is better:
//! a "win" is a lower NLL, and `prob_b_better` is the probability that B's NLL is lower.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::bootstrap::paired_bootstrap;
use crate::error::{EvalError, Result};
use crate::harness::EvalReport;
use crate::io::{write_atomic, write_json};

/// Comparison of one metric.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricComparison {
    pub metric: String,
    pub higher_is_better: bool,
    /// Corpus scores (when the metric has one) of A and B.
    pub corpus_a: Option<f64>,
    pub corpus_b: Option<f64>,
    /// Means of the per-example values.
    pub mean_a: f64,
    pub mean_b: f64,
    /// `mean_b - mean_a` with its bootstrap percentile interval.
    pub delta: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// Probability (over resamples) that B is better.
    pub prob_b_better: f64,
    /// Examples where B is better / equal / worse.
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
}

/// An example whose extracted answer differs between A and B.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChangedExample {
    pub index: usize,
    pub prompt: String,
    pub references: Vec<String>,
    pub output_a: String,
    pub output_b: String,
    pub scores_a: BTreeMap<String, f64>,
    pub scores_b: BTreeMap<String, f64>,
}

/// The whole A/B report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    pub n: usize,
    pub confidence: f64,
    pub resamples: usize,
    pub seed: u64,
    pub metrics: Vec<MetricComparison>,
    pub changed: Vec<ChangedExample>,
}

/// Bootstrap settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompareOptions {
    pub resamples: usize,
    pub confidence: f64,
    pub seed: u64,
}

impl Default for CompareOptions {
    /// sacrebleu's paired bootstrap uses 1000 resamples; 95% interval.
    fn default() -> Self {
        Self {
            resamples: 1000,
            confidence: 0.95,
            seed: 12345,
        }
    }
}

fn per_example(report: &EvalReport, metric: &str) -> Option<Vec<f64>> {
    report
        .records
        .iter()
        .map(|r| r.scores.get(metric).copied())
        .collect()
}

/// Compares `b` (candidate) with `a` (baseline) on every metric both have per example.
pub fn compare(a: &EvalReport, b: &EvalReport, opts: CompareOptions) -> Result<Comparison> {
    let bad = |reason: String| EvalError::Incomparable {
        a: a.label.clone(),
        b: b.label.clone(),
        reason,
    };
    if a.records.len() != b.records.len() {
        return Err(bad(format!(
            "{} examples against {}",
            a.records.len(),
            b.records.len()
        )));
    }
    if let Some((i, _)) = a
        .records
        .iter()
        .zip(&b.records)
        .enumerate()
        .find(|(_, (x, y))| x.prompt != y.prompt || x.references != y.references)
    {
        return Err(bad(format!(
            "example {i} has a different prompt or reference"
        )));
    }
    let names: Vec<String> = a
        .records
        .first()
        .map(|r| r.scores.keys().cloned().collect())
        .unwrap_or_default();
    let mut metrics = Vec::new();
    for name in names {
        let (Some(va), Some(vb)) = (per_example(a, &name), per_example(b, &name)) else {
            continue;
        };
        let higher = name != "nll";
        let sign = if higher { 1.0 } else { -1.0 };
        let sa: Vec<f64> = va.iter().map(|x| sign * x).collect();
        let sb: Vec<f64> = vb.iter().map(|x| sign * x).collect();
        let c = paired_bootstrap(&sa, &sb, opts.resamples, opts.confidence, opts.seed)?;
        let (ci_low, ci_high) = if higher {
            (c.ci_low, c.ci_high)
        } else {
            (-c.ci_high, -c.ci_low)
        };
        let corpus_key = if name == "nll" {
            "mean_nll"
        } else {
            name.as_str()
        };
        metrics.push(MetricComparison {
            corpus_a: a.corpus.get(corpus_key).copied(),
            corpus_b: b.corpus.get(corpus_key).copied(),
            mean_a: sign * c.mean_a,
            mean_b: sign * c.mean_b,
            delta: sign * c.delta,
            ci_low,
            ci_high,
            prob_b_better: c.prob_b_better,
            wins: c.wins,
            ties: c.ties,
            losses: c.losses,
            higher_is_better: higher,
            metric: name,
        });
    }
    let changed = a
        .records
        .iter()
        .zip(&b.records)
        .filter(|(x, y)| x.answer != y.answer)
        .map(|(x, y)| ChangedExample {
            index: x.index,
            prompt: x.prompt.clone(),
            references: x.references.clone(),
            output_a: x.output.clone(),
            output_b: y.output.clone(),
            scores_a: x.scores.clone(),
            scores_b: y.scores.clone(),
        })
        .collect();
    Ok(Comparison {
        a: a.label.clone(),
        b: b.label.clone(),
        n: a.records.len(),
        confidence: opts.confidence,
        resamples: opts.resamples,
        seed: opts.seed,
        metrics,
        changed,
    })
}

fn fmt_opt(x: Option<f64>) -> String {
    x.map_or_else(|| "–".into(), |v| format!("{v:.4}"))
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let flat = flat.replace('|', "\\|");
    if flat.chars().count() > max {
        format!("{}…", flat.chars().take(max).collect::<String>())
    } else {
        flat
    }
}

impl Comparison {
    /// The report as Markdown: the metric table, then up to `max_changed` changed examples.
    pub fn to_markdown(&self, max_changed: usize) -> String {
        let mut s = String::new();
        let pct = self.confidence * 100.0;
        let _ = writeln!(s, "# A/B comparison\n");
        let _ = writeln!(
            s,
            "A = `{}`, B = `{}`, {} examples; {pct:.0}% paired bootstrap interval of B − A over {} resamples (seed {}).\n",
            self.a, self.b, self.n, self.resamples, self.seed
        );
        let _ = writeln!(
            s,
            "| metric | A (corpus) | B (corpus) | A (mean) | B (mean) | B − A | {pct:.0}% CI | P(B better) | wins / ties / losses |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---|---:|---|");
        for m in &self.metrics {
            let arrow = if m.higher_is_better { "↑" } else { "↓" };
            let _ = writeln!(
                s,
                "| {} {arrow} | {} | {} | {:.4} | {:.4} | {:+.4} | [{:+.4}, {:+.4}] | {:.3} | {} / {} / {} |",
                m.metric,
                fmt_opt(m.corpus_a),
                fmt_opt(m.corpus_b),
                m.mean_a,
                m.mean_b,
                m.delta,
                m.ci_low,
                m.ci_high,
                m.prob_b_better,
                m.wins,
                m.ties,
                m.losses
            );
        }
        let _ = writeln!(
            s,
            "\n## Changed answers ({} of {})\n",
            self.changed.len(),
            self.n
        );
        if !self.changed.is_empty() {
            let _ = writeln!(s, "| # | reference | A | B |");
            let _ = writeln!(s, "|---:|---|---|---|");
            for c in self.changed.iter().take(max_changed) {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} |",
                    c.index,
                    one_line(&c.references.join(" / "), 60),
                    one_line(&c.output_a, 60),
                    one_line(&c.output_b, 60)
                );
            }
            if self.changed.len() > max_changed {
                let _ = writeln!(
                    s,
                    "\n{} more in the JSON report.",
                    self.changed.len() - max_changed
                );
            }
        }
        s
    }

    /// Writes `comparison.md` and `comparison.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_json(&dir.join("comparison.json"), self)?;
        write_atomic(&dir.join("comparison.md"), self.to_markdown(20).as_bytes())
    }
}
