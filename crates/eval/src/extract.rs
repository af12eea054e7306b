//! Answer extraction from generated text: first line, final number, or a regular expression.

use std::str::FromStr;
use std::sync::OnceLock;

use regex::Regex;

use crate::error::EvalError;

/// How the answer is read out of a generation.
#[derive(Debug, Clone)]
pub enum Extractor {
    /// The whole text, trimmed.
    Full,
    /// The first line that is not blank, trimmed.
    FirstLine,
    /// The last number in the text (`-1,234.5` gives `-1234.5`; `$` and thousands separators dropped).
    FinalNumber,
    /// The first match of a regex: capture group 1 when the pattern has one, else the whole match.
    Regex(Regex),
}

impl Extractor {
    /// Extract the answer, or `None` when nothing matches.
    pub fn extract(&self, text: &str) -> Option<String> {
        match self {
            Self::Full => Some(text.trim().to_owned()),
            Self::FirstLine => text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(str::to_owned),
            Self::FinalNumber => {
                let m = final_number_re().find_iter(text).last()?;
                Some(m.as_str().replace([',', '$'], ""))
            }
            Self::Regex(re) => {
                let c = re.captures(text)?;
                c.get(1).or_else(|| c.get(0)).map(|m| m.as_str().to_owned())
            }
        }
    }
}

fn final_number_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"-?\$?\d(?:[\d,]*\d)?(?:\.\d+)?").expect("static pattern"))
}

impl FromStr for Extractor {
    type Err = EvalError;
    /// `full`, `first_line`, `final_number` or `regex:<pattern>`.
    fn from_str(s: &str) -> Result<Self, EvalError> {
        match s {
            "full" => Ok(Self::Full),
            "first_line" => Ok(Self::FirstLine),
            "final_number" => Ok(Self::FinalNumber),
            _ => match s.strip_prefix("regex:") {
                Some(p) => Regex::new(p)
                    .map(Self::Regex)
                    .map_err(|e| EvalError::Regex {
                        pattern: p.into(),
                        source: Box::new(e),
                    }),
                None => Err(EvalError::UnknownOption {
                    what: "answer extractor",
                    value: s.into(),
                    expected: "full, first_line, final_number, regex:<pattern>",
                }),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn extractors() -> Result<(), EvalError> {
        let text = "\n  Paris is the answer.\nIt has 2,140,526 people; area 105.4 km2, so -3.5\n";
        assert_eq!(
            Extractor::FirstLine.extract(text).as_deref(),
            Some("Paris is the answer.")
        );
        assert_eq!(
            Extractor::FinalNumber
                .extract("Total: $1,234.50.")
                .as_deref(),
            Some("1234.50")
        );
        assert_eq!(
            Extractor::FinalNumber.extract(text).as_deref(),
            Some("-3.5")
        );
        assert_eq!(Extractor::FinalNumber.extract("no digits"), None);
        let re: Extractor = "regex:answer is (\\w+)".parse()?;
        assert_eq!(re.extract("The answer is B.").as_deref(), Some("B"));
        assert_eq!(
            "regex:\\d+"
                .parse::<Extractor>()?
                .extract("x 42 y")
                .as_deref(),
            Some("42")
        );
        assert!(matches!(
            "regex:(".parse::<Extractor>(),
            Err(EvalError::Regex { .. })
        ));
        assert!(matches!(
            "last".parse::<Extractor>(),
            Err(EvalError::UnknownOption { .. })
        ));
        Ok(())
    }
}
