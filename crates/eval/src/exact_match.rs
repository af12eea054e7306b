//! Exact match with explicit normalisation, and numeric match with tolerance.
//!
//! [`Normalize::squad`] reproduces the official SQuAD v1.1 `normalize_answer` (lowercase,
//! drop ASCII punctuation, drop the articles a/an/the, collapse whitespace). Number handling
//! runs first, so `"1,234"` and `"1234"` agree once thousands separators are removed.

use std::str::FromStr;
use std::sync::OnceLock;

use regex::Regex;

use crate::error::{EvalError, Result};
use crate::text::py_split;

/// `string.punctuation`.
const ASCII_PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// How numbers are rewritten before comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NumberFormat {
    /// Leave numbers as written.
    #[default]
    Keep,
    /// Remove thousands separators: `1,234,567.5` becomes `1234567.5`.
    StripThousands,
    /// Also parse each number and print it canonically: `1,234.50` and `01234.5` become `1234.5`.
    Canonical,
}

impl FromStr for NumberFormat {
    type Err = EvalError;
    /// `keep`, `strip_thousands` or `canonical`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "keep" => Ok(Self::Keep),
            "strip_thousands" => Ok(Self::StripThousands),
            "canonical" => Ok(Self::Canonical),
            other => Err(EvalError::UnknownOption {
                what: "number format",
                value: other.into(),
                expected: "keep, strip_thousands, canonical",
            }),
        }
    }
}

/// Normalisation applied to both sides before an exact comparison. Steps run in this order:
/// numbers, lowercase, punctuation, articles, whitespace. `Normalize::default()` changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Normalize {
    pub numbers: NumberFormat,
    /// Python `str.lower()`.
    pub lowercase: bool,
    /// Remove ASCII punctuation (`string.punctuation`).
    pub remove_punctuation: bool,
    /// Replace the whole words a, an, the by a space (SQuAD's `\b(a|an|the)\b`).
    pub remove_articles: bool,
    /// Strip and collapse whitespace runs to one space.
    pub collapse_whitespace: bool,
}

impl Normalize {
    /// SQuAD v1.1's `normalize_answer`.
    pub fn squad() -> Self {
        Self {
            numbers: NumberFormat::Keep,
            lowercase: true,
            remove_punctuation: true,
            remove_articles: true,
            collapse_whitespace: true,
        }
    }

    /// Lowercase and collapse whitespace only.
    pub fn loose() -> Self {
        Self {
            lowercase: true,
            collapse_whitespace: true,
            ..Self::default()
        }
    }

    /// Set the number handling.
    pub fn with_numbers(mut self, n: NumberFormat) -> Self {
        self.numbers = n;
        self
    }

    /// Normalise one string.
    pub fn apply(&self, s: &str) -> String {
        let mut t = match self.numbers {
            NumberFormat::Keep => s.to_owned(),
            NumberFormat::StripThousands => strip_thousands(s),
            NumberFormat::Canonical => {
                let t = strip_thousands(s);
                number_re()
                    .replace_all(&t, |c: &regex::Captures| canonical_number(&c[0]))
                    .into_owned()
            }
        };
        if self.lowercase {
            t = crate::text::py_lower(&t);
        }
        if self.remove_punctuation {
            t.retain(|c| !ASCII_PUNCTUATION.contains(c));
        }
        if self.remove_articles {
            t = articles_re().replace_all(&t, " ").into_owned();
        }
        if self.collapse_whitespace {
            t = py_split(&t).collect::<Vec<_>>().join(" ");
        }
        t
    }

    /// Whether `prediction` equals any reference after normalisation.
    pub fn matches<S: AsRef<str>>(&self, prediction: &str, references: &[S]) -> bool {
        let p = self.apply(prediction);
        references.iter().any(|r| self.apply(r.as_ref()) == p)
    }

    /// Per-example exact match (1.0 or 0.0) and its mean; `refs[i]` lists accepted answers.
    pub fn corpus<H: AsRef<str>, R: AsRef<[S]>, S: AsRef<str>>(
        &self,
        hyps: &[H],
        refs: &[R],
    ) -> Result<(f64, Vec<f64>)> {
        crate::refs::check_corpus(hyps.len(), refs)?;
        let per: Vec<f64> = hyps
            .iter()
            .zip(refs)
            .map(|(h, r)| {
                if self.matches(h.as_ref(), r.as_ref()) {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        Ok((per.iter().sum::<f64>() / per.len() as f64, per))
    }
}

impl FromStr for Normalize {
    type Err = EvalError;
    /// A preset: `exact` ([`Normalize::default`], nothing changed), `squad`
    /// ([`Normalize::squad`]) or `loose` ([`Normalize::loose`]); numbers are kept as written
    /// (see [`Normalize::with_numbers`]).
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "exact" => Ok(Self::default()),
            "squad" => Ok(Self::squad()),
            "loose" => Ok(Self::loose()),
            other => Err(EvalError::UnknownOption {
                what: "normalisation",
                value: other.into(),
                expected: "exact, squad, loose",
            }),
        }
    }
}

fn thousands_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\b\d{1,3}(?:,\d{3})+\b").expect("static pattern"))
}

fn number_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"-?\d+(?:\.\d+)?").expect("static pattern"))
}

fn articles_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\b(a|an|the)\b").expect("static pattern"))
}

fn strip_thousands(s: &str) -> String {
    thousands_re()
        .replace_all(s, |c: &regex::Captures| c[0].replace(',', ""))
        .into_owned()
}

fn canonical_number(s: &str) -> String {
    match s.parse::<f64>() {
        Ok(v) if v == v.trunc() && v.abs() < 1e15 => format!("{}", v as i64),
        Ok(v) => format!("{v}"),
        Err(_) => s.to_owned(),
    }
}

/// Parse a number as people write answers: surrounding whitespace, a leading `$`, a trailing
/// `%` or `.`, thousands separators (`1,234.5`) and a leading `+` are accepted.
pub fn parse_number(s: &str) -> Option<f64> {
    let t = s.trim();
    let t = t.strip_suffix('.').unwrap_or(t);
    let t = t.strip_suffix('%').unwrap_or(t).trim_end();
    let (neg, t) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let t = t.strip_prefix('$').unwrap_or(t);
    if t.is_empty() || !t.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let plain = if t.contains(',') {
        if !thousands_re().is_match(t) {
            return None;
        }
        let p = strip_thousands(t);
        if p.contains(',') {
            return None;
        }
        p
    } else {
        t.to_owned()
    };
    if !plain.bytes().all(|b| {
        b.is_ascii_digit() || b == b'.' || b == b'e' || b == b'E' || b == b'-' || b == b'+'
    }) {
        return None;
    }
    let v: f64 = plain.parse().ok()?;
    Some(if neg { -v } else { v })
}

/// Tolerance for [`NumericTolerance::matches`], with `math.isclose` semantics:
/// `|a - b| <= max(rel * max(|a|, |b|), abs)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NumericTolerance {
    pub abs: f64,
    pub rel: f64,
}

impl Default for NumericTolerance {
    /// Exact up to rounding: `abs = 0`, `rel = 1e-9` (Python's `math.isclose` default).
    fn default() -> Self {
        Self {
            abs: 0.0,
            rel: 1e-9,
        }
    }
}

impl NumericTolerance {
    /// A tolerance; both must be finite and non-negative.
    pub fn new(abs: f64, rel: f64) -> Result<Self> {
        if !(abs >= 0.0 && rel >= 0.0 && abs.is_finite() && rel.is_finite()) {
            return Err(EvalError::InvalidOption {
                what: "numeric tolerance",
                reason: format!("abs={abs}, rel={rel}"),
            });
        }
        Ok(Self { abs, rel })
    }

    /// Whether both strings parse as numbers ([`parse_number`]) within tolerance. Text that
    /// is not a number never matches.
    pub fn matches(&self, prediction: &str, reference: &str) -> bool {
        match (parse_number(prediction), parse_number(reference)) {
            (Some(a), Some(b)) => (a - b).abs() <= (self.rel * a.abs().max(b.abs())).max(self.abs),
            _ => false,
        }
    }

    /// Whether `prediction` matches any reference ([`NumericTolerance::matches`]).
    pub fn matches_any<S: AsRef<str>>(&self, prediction: &str, references: &[S]) -> bool {
        references
            .iter()
            .any(|r| self.matches(prediction, r.as_ref()))
    }

    /// Per-example numeric match (1.0 or 0.0) and its mean; `refs[i]` lists accepted answers.
    /// The corpus is checked as for the other metrics (not empty, one reference list per
    /// hypothesis, none empty).
    pub fn corpus<H: AsRef<str>, R: AsRef<[S]>, S: AsRef<str>>(
        &self,
        hyps: &[H],
        refs: &[R],
    ) -> Result<(f64, Vec<f64>)> {
        crate::refs::check_corpus(hyps.len(), refs)?;
        let per: Vec<f64> = hyps
            .iter()
            .zip(refs)
            .map(|(h, r)| f64::from(u8::from(self.matches_any(h.as_ref(), r.as_ref()))))
            .collect();
        Ok((per.iter().sum::<f64>() / per.len() as f64, per))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn squad_normalisation() {
        assert_eq!(
            Normalize::squad().apply("  The  Eiffel-Tower, in   Paris! "),
            "eiffeltower in paris"
        );
        assert_eq!(Normalize::squad().apply("An apple a day"), "apple day");
        assert_eq!(Normalize::default().apply(" A b "), " A b ");
    }

    #[test]
    fn numbers() {
        let n = Normalize::loose().with_numbers(NumberFormat::StripThousands);
        assert!(n.matches("1,234 apples", &["1234 apples"]));
        assert_eq!(n.apply("12,34 and 1234,567"), "12,34 and 1234,567");
        let c = Normalize::loose().with_numbers(NumberFormat::Canonical);
        assert!(c.matches("$1,234.50", &["$01234.5"]));
        assert!(!Normalize::loose().matches("1,234", &["1234"]));
    }

    #[test]
    fn numeric_tolerance() -> Result<()> {
        assert_eq!(parse_number(" $1,234.5. "), Some(1234.5));
        assert_eq!(parse_number("-3%"), Some(-3.0));
        assert_eq!(parse_number("12,34"), None);
        assert_eq!(parse_number("abc"), None);
        let t = NumericTolerance::new(0.01, 0.0)?;
        assert!(t.matches("3.141", "3.14") && !t.matches("3.16", "3.14"));
        assert!(NumericTolerance::new(0.0, 0.05)?.matches("104", "100"));
        assert!(!NumericTolerance::default().matches("x", "x"));
        assert!(NumericTolerance::new(-1.0, 0.0).is_err());
        assert!(NumericTolerance::new(f64::NAN, 0.0).is_err());
        Ok(())
    }

    #[test]
    fn numeric_corpus() -> Result<()> {
        let t = NumericTolerance::new(0.05, 0.0)?;
        let hyps = ["1,234.5", "3.14", "x", "7"];
        let refs = [vec!["1234.5"], vec!["9", "3.1"], vec!["3"], vec!["7.06"]];
        let (mean, per) = t.corpus(&hyps, &refs)?;
        assert_eq!(per, vec![1.0, 1.0, 0.0, 0.0]);
        assert_eq!(mean, 0.5);
        assert!(matches!(
            t.corpus(&hyps, &refs[..3]),
            Err(EvalError::LengthMismatch {
                expected: 4,
                found: 3,
                ..
            })
        ));
        let none: [&str; 0] = [];
        let no_refs: [[&str; 1]; 0] = [];
        assert!(matches!(
            t.corpus(&none, &no_refs),
            Err(EvalError::Empty { .. })
        ));
        Ok(())
    }

    #[test]
    fn presets_and_number_formats_parse() -> Result<()> {
        assert_eq!("exact".parse::<Normalize>()?, Normalize::default());
        assert_eq!("squad".parse::<Normalize>()?, Normalize::squad());
        assert_eq!(" loose ".parse::<Normalize>()?, Normalize::loose());
        assert!(matches!(
            "SQuAD".parse::<Normalize>(),
            Err(EvalError::UnknownOption { .. })
        ));
        assert_eq!("keep".parse::<NumberFormat>()?, NumberFormat::Keep);
        assert_eq!(
            "strip_thousands".parse::<NumberFormat>()?,
            NumberFormat::StripThousands
        );
        assert_eq!(
            "canonical".parse::<NumberFormat>()?,
            NumberFormat::Canonical
        );
        assert!(matches!(
            "thousands".parse::<NumberFormat>(),
            Err(EvalError::UnknownOption { .. })
        ));
        Ok(())
    }
}
