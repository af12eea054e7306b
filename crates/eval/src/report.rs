//! The JSON report of the `metrics` example: corpus scores (and optionally per-sentence scores)
//! for a hypothesis file against one or more reference files.
//!
//! BLEU and chrF objects carry the fields of `sacrebleu --format json` (`name`, `score`,
//! `signature`, `verbose_score` and the signature's key/value pairs), except that `score` keeps
//! full precision instead of two decimals. ROUGE objects hold mean precision, recall and F
//! (0..1, rouge-score's scale) per type; `exact_match` is the fraction of matches.

use std::str::FromStr;

use serde_json::{Map, Value, json};

use crate::error::{EvalError, Result};
use crate::{Bleu, BleuScore, Chrf, ChrfScore, Normalize, Rouge};

/// A metric the report can compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Bleu,
    Chrf,
    Rouge,
    ExactMatch,
}

impl FromStr for Metric {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "bleu" => Ok(Self::Bleu),
            "chrf" => Ok(Self::Chrf),
            "rouge" => Ok(Self::Rouge),
            "exact_match" | "em" => Ok(Self::ExactMatch),
            other => Err(EvalError::UnknownOption {
                what: "metric",
                value: other.into(),
                expected: "bleu, chrf, rouge, exact_match",
            }),
        }
    }
}

impl Metric {
    /// Parse a comma-separated list (`bleu,chrf`).
    pub fn parse_list(s: &str) -> Result<Vec<Metric>> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(str::parse)
            .collect()
    }
}

/// What to compute and how.
#[derive(Debug, Clone, Default)]
pub struct ReportConfig {
    pub metrics: Vec<Metric>,
    /// BLEU settings for the corpus score (sentence scores use the same with effective order).
    pub bleu: Bleu,
    pub chrf: Chrf,
    pub rouge: Rouge,
    pub exact_match: Normalize,
    pub per_sentence: bool,
}

fn sacrebleu_json(name: &str, score: f64, signature: &str, verbose: Option<String>) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(name));
    m.insert("score".into(), json!(score));
    m.insert("signature".into(), json!(signature));
    if let Some(v) = verbose {
        m.insert("verbose_score".into(), json!(v));
    }
    for kv in signature.split('|') {
        if let Some((k, v)) = kv.split_once(':') {
            m.insert(k.into(), json!(v));
        }
    }
    Value::Object(m)
}

/// BLEU as sacrebleu's JSON object.
pub fn bleu_json(s: &BleuScore) -> Value {
    sacrebleu_json("BLEU", s.score, &s.signature, Some(s.verbose()))
}

/// chrF as sacrebleu's JSON object.
pub fn chrf_json(s: &ChrfScore) -> Value {
    sacrebleu_json(&s.name, s.score, &s.signature, None)
}

/// Compute the configured metrics; `refs[i]` are the references of example `i`.
pub fn metrics_report<H, R, S>(cfg: &ReportConfig, hyps: &[H], refs: &[R]) -> Result<Value>
where
    H: AsRef<str> + Sync,
    R: AsRef<[S]> + Sync,
    S: AsRef<str> + Sync,
{
    let nrefs = crate::refs::check_corpus(hyps.len(), refs)?;
    let mut out = Map::new();
    out.insert("n".into(), json!(hyps.len()));
    out.insert("nrefs".into(), json!(crate::refs::nrefs_signature(nrefs)));
    let mut per: Vec<Map<String, Value>> = if cfg.per_sentence {
        vec![Map::new(); hyps.len()]
    } else {
        vec![]
    };
    for m in &cfg.metrics {
        match m {
            Metric::Bleu => {
                out.insert(
                    "bleu".into(),
                    bleu_json(&cfg.bleu.corpus_score(hyps, refs)?),
                );
                if cfg.per_sentence {
                    let sb = cfg.bleu.clone().with_effective_order(true);
                    for (p, s) in per.iter_mut().zip(sb.sentence_scores(hyps, refs)?) {
                        p.insert("bleu".into(), json!(s.score));
                    }
                }
            }
            Metric::Chrf => {
                out.insert(
                    "chrf".into(),
                    chrf_json(&cfg.chrf.corpus_score(hyps, refs)?),
                );
                if cfg.per_sentence {
                    for (p, s) in per.iter_mut().zip(cfg.chrf.sentence_scores(hyps, refs)?) {
                        p.insert("chrf".into(), json!(s.score));
                    }
                }
            }
            Metric::Rouge => {
                let r = cfg.rouge.corpus_score(hyps, refs)?;
                let mut o = Map::new();
                o.insert("use_stemmer".into(), json!(cfg.rouge.stem));
                o.insert("aggregate".into(), json!("mean"));
                for (t, s) in r.types.iter().zip(&r.mean) {
                    o.insert(t.name(), json!(s));
                }
                out.insert("rouge".into(), Value::Object(o));
                if cfg.per_sentence {
                    for (p, e) in per.iter_mut().zip(&r.per_example) {
                        for (t, s) in r.types.iter().zip(e) {
                            p.insert(t.name(), json!(s.fmeasure));
                        }
                    }
                }
            }
            Metric::ExactMatch => {
                let (mean, scores) = cfg.exact_match.corpus(hyps, refs)?;
                out.insert(
                    "exact_match".into(),
                    json!({ "score": mean, "normalize": format!("{:?}", cfg.exact_match) }),
                );
                for (p, s) in per.iter_mut().zip(scores) {
                    p.insert("exact_match".into(), json!(s));
                }
            }
        }
    }
    if cfg.per_sentence {
        out.insert(
            "per_sentence".into(),
            Value::Array(per.into_iter().map(Value::Object).collect()),
        );
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn report_has_sacrebleu_fields() -> Result<()> {
        let cfg = ReportConfig {
            metrics: Metric::parse_list("bleu,chrf,rouge,exact_match")?,
            per_sentence: true,
            ..Default::default()
        };
        let v = metrics_report(&cfg, &["a b c d", "x"], &[["a b c d"], ["y"]])?;
        assert_eq!(v["bleu"]["name"], "BLEU");
        assert_eq!(v["bleu"]["tok"], "13a");
        assert_eq!(v["chrf"]["name"], "chrF2");
        assert_eq!(v["rouge"]["rouge1"]["fmeasure"], 0.5);
        assert_eq!(v["exact_match"]["score"], 0.5);
        assert!((v["per_sentence"][0]["bleu"].as_f64().unwrap_or(0.0) - 100.0).abs() < 1e-9);
        assert!(Metric::parse_list("bleu,ter").is_err());
        Ok(())
    }
}
