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
//!
//! A sequence-classification head trained with kiln (`reward_model`'s recipe with
//! `num_labels` labels, `ClassifierTrainer`, or PEFT: a `SEQ_CLS` adapter with `score` in
//! `modules_to_save`) routes what no rule matched, label `i` to `labels[i]`:
//! ```toml
//! [classifier]
//! base = "/models/SmolLM2-135M-Instruct.Q4_1.gguf"  # the model the adapter was trained on
//! adapter = "runs/router/adapter"
//! labels = ["census", "tutor", "base"]
//! min_probability = 0.5   # below it (softmax of the scores), the default (optional)
//! ```
//! The classifier is a second model in memory (the base loaded again with its adapter); it
//! reads the text as the tokenizer encodes it with its special tokens, as transformers'
//! text-classification pipeline does, and runs on the request's thread.
use crate::error::{Result, ServeError};
use kiln_lora::LoraModel;
use kiln_models::classifier::{ClassifierConfig, SequenceClassifier};
use kiln_models::{DecoderInput, Pretrained, default_device};
use regex::Regex;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    default: Option<String>,
    #[serde(default, rename = "rule")]
    rules: Vec<RuleFile>,
    #[serde(default)]
    classifier: Option<ClassifierFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassifierFile {
    base: PathBuf,
    adapter: PathBuf,
    labels: Vec<String>,
    #[serde(default)]
    min_probability: Option<f64>,
}

/// A classification head that picks an adapter: label `i` → `labels[i]`.
struct Classifier {
    model: Mutex<LoraModel<SequenceClassifier>>,
    /// The base's tokenizer, with its special tokens.
    encode: Encode,
    labels: Vec<String>,
    min_probability: f64,
}

type Encode = Box<dyn Fn(&str) -> Result<Vec<u32>> + Send + Sync>;

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("labels", &self.labels)
            .finish()
    }
}

impl Classifier {
    /// Loads `file.base` with the head of `file.labels.len()` labels and `file.adapter`.
    fn load(file: ClassifierFile, path: &Path) -> Result<Self> {
        let err = |reason: String| ServeError::Config {
            path: path.to_path_buf(),
            reason,
        };
        if file.labels.len() < 2 {
            return Err(err("[classifier] needs two labels or more".into()));
        }
        let min_probability = file.min_probability.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&min_probability) {
            return Err(err(format!(
                "[classifier] min_probability {min_probability} is not in [0, 1]"
            )));
        }
        let base = Pretrained::load(&file.base, &default_device())?;
        let Pretrained {
            model: lm,
            tokenizer,
            source,
            ..
        } = base;
        let mut model = LoraModel::new(SequenceClassifier::from_causal_lm(
            lm,
            ClassifierConfig::new(file.labels.len()),
        ));
        model.load_adapter(&file.adapter, "default")?;
        let encode: Encode = Box::new(move |text: &str| {
            let ids = tokenizer
                .encode(text, true)
                .map_err(|e| ServeError::Config {
                    path: source.clone(),
                    reason: format!("tokenizer: {e}"),
                })?;
            Ok(ids.get_ids().to_vec())
        });
        Ok(Self {
            model: Mutex::new(model),
            encode,
            labels: file.labels,
            min_probability,
        })
    }

    /// The label for `text`, or `None` below `min_probability`.
    fn pick(&self, text: &str) -> Result<Option<&str>> {
        let ids = (self.encode)(text)?;
        if ids.is_empty() {
            return Ok(None);
        }
        let input = DecoderInput::single(&ids);
        let scores = {
            let model = self
                .model
                .lock()
                .map_err(|_| ServeError::Input("the router's classifier failed earlier".into()))?;
            model.model.scores(&input)?
        };
        let (best, top) = scores
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |a, (i, &v)| if v > a.1 { (i, v) } else { a },
            );
        let sum: f64 = scores.iter().map(|&v| f64::from(v - top).exp()).sum();
        let probability = 1.0 / sum;
        Ok((probability >= self.min_probability).then(|| self.labels[best].as_str()))
    }
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

/// The routing rules, and the classifier for what they leave.
#[derive(Debug)]
pub struct Router {
    default: String,
    rules: Vec<Rule>,
    classifier: Option<Classifier>,
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
        let classifier = file
            .classifier
            .map(|c| Classifier::load(c, path))
            .transpose()?;
        Ok(Self {
            default: file.default.unwrap_or_else(|| "base".into()),
            rules,
            classifier,
        })
    }

    /// The adapter (or `"base"`) for `text`: the first matching rule, else the classifier's
    /// label, else the default.
    ///
    /// # Errors
    /// The classifier's (tokenizer or model) errors.
    pub fn pick(&self, text: &str) -> Result<&str> {
        let lower = text.to_lowercase();
        let rule = self.rules.iter().find(|r| {
            r.keywords.iter().any(|k| lower.contains(k.as_str()))
                || r.regex.as_ref().is_some_and(|re| re.is_match(text))
        });
        if let Some(r) = rule {
            return Ok(&r.adapter);
        }
        let label = match &self.classifier {
            Some(c) => c.pick(text)?,
            None => None,
        };
        Ok(label.unwrap_or(&self.default))
    }

    /// Every adapter a rule, a classifier label or the default names.
    pub fn targets(&self) -> Vec<&str> {
        let mut t: Vec<&str> = self.rules.iter().map(|r| r.adapter.as_str()).collect();
        if let Some(c) = &self.classifier {
            t.extend(c.labels.iter().map(String::as_str));
        }
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
        assert_eq!(r.pick("please select rows").unwrap(), "sql");
        assert_eq!(r.pick("What is the INCOME of row 3?").unwrap(), "census");
        assert_eq!(r.pick("incomes").unwrap(), "chat", "regex word boundary");
        assert_eq!(r.pick("hello").unwrap(), "chat");
        let bad = Router::from_toml("[[rule]]\nadapter = \"x\"\n", Path::new("r.toml"));
        assert!(bad.unwrap_err().to_string().contains("r.toml"));
        let bad = Router::from_toml(
            "[[rule]]\nadapter = \"x\"\nregex = \"(\"\n",
            Path::new("r.toml"),
        );
        assert!(bad.unwrap_err().to_string().contains("rule 1"));
    }
}
