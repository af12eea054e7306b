//! Routing for `model: "auto"`: a TOML file of rules that send a request to an adapter by
//! keywords or a regular expression over the last user message (or the prompt).
//!
//! ```toml
//! default = "base"            # when no rule matches (optional, default "base")
//! [[rule]]
//! adapter = "sql"
//! keywords = ["select", "join"]   # any of them, case-insensitive
//! [[rule]]
//! adapter = "census"
//! regex = "(?i)\\b(income|age|occupation)\\b"
//! ```
//! Rules are tried in file order; the first that matches wins.
use crate::error::{Result, ServeError};
use regex::Regex;
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    default: Option<String>,
    #[serde(default, rename = "rule")]
    rules: Vec<RuleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    adapter: String,
    #[serde(default)]
    keywords: Vec<String>,
    #[serde(default)]
    regex: Option<String>,
}

#[derive(Debug)]
struct Rule {
    adapter: String,
    keywords: Vec<String>,
    regex: Option<Regex>,
}

/// The routing rules.
#[derive(Debug)]
pub struct Router {
    default: String,
    rules: Vec<Rule>,
}

impl Router {
    /// Reads `path`.
    ///
    /// # Errors
    /// [`ServeError::Config`] naming the file for unreadable TOML, an unknown key, a rule with
    /// neither keywords nor regex, or an invalid regex.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ServeError::Io {
            what: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses rules from TOML text; `path` names it in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let err = |reason: String| ServeError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let file: File = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut rules = Vec::new();
        for (i, r) in file.rules.into_iter().enumerate() {
            if r.keywords.is_empty() && r.regex.is_none() {
                return Err(err(format!(
                    "rule {} (adapter `{}`) has neither keywords nor regex",
                    i + 1,
                    r.adapter
                )));
            }
            let regex = r
                .regex
                .map(|s| Regex::new(&s).map_err(|e| err(format!("rule {}: {e}", i + 1))))
                .transpose()?;
            rules.push(Rule {
                adapter: r.adapter,
                keywords: r.keywords.iter().map(|k| k.to_lowercase()).collect(),
                regex,
            });
        }
        Ok(Self {
            default: file.default.unwrap_or_else(|| "base".into()),
            rules,
        })
    }

    /// The adapter (or `"base"`) for `text`.
    pub fn pick(&self, text: &str) -> &str {
        let lower = text.to_lowercase();
        self.rules
            .iter()
            .find(|r| {
                r.keywords.iter().any(|k| lower.contains(k.as_str()))
                    || r.regex.as_ref().is_some_and(|re| re.is_match(text))
            })
            .map_or(self.default.as_str(), |r| r.adapter.as_str())
    }

    /// Every adapter a rule or the default names.
    pub fn targets(&self) -> Vec<&str> {
        let mut t: Vec<&str> = self.rules.iter().map(|r| r.adapter.as_str()).collect();
        t.push(&self.default);
        t
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_rule_wins() {
        let r = Router::from_toml(
            "default = \"chat\"\n[[rule]]\nadapter = \"sql\"\nkeywords = [\"SELECT\"]\n\
             [[rule]]\nadapter = \"census\"\nregex = \"(?i)\\\\bincome\\\\b\"\n",
            Path::new("r.toml"),
        )
        .unwrap();
        assert_eq!(r.pick("please select rows"), "sql");
        assert_eq!(r.pick("What is the INCOME of row 3?"), "census");
        assert_eq!(r.pick("incomes"), "chat", "regex word boundary");
        assert_eq!(r.pick("hello"), "chat");
        let bad = Router::from_toml("[[rule]]\nadapter = \"x\"\n", Path::new("r.toml"));
        assert!(bad.unwrap_err().to_string().contains("r.toml"));
        let bad = Router::from_toml(
            "[[rule]]\nadapter = \"x\"\nregex = \"(\"\n",
            Path::new("r.toml"),
        );
        assert!(bad.unwrap_err().to_string().contains("rule 1"));
    }
}
