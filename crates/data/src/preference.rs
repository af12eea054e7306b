//! Preference pairs as TRL's `DPOTrainer` reads and tokenizes them (the DPO family's data).
//!
//! Three forms of a JSON Lines record, as TRL accepts them:
//! - standard: `prompt`, `chosen`, `rejected` strings, concatenated without a template; the EOS
//!   token is appended to each completion that does not end with it;
//! - conversational: the three are message lists, rendered with the chat template (the prompt
//!   with the generation prompt, prompt + completion without);
//! - implicit prompt: no `prompt`; `chosen` and `rejected` (strings or conversations) share it
//!   as their common prefix (TRL's `extract_prompt`).
//!
//! Tokenization follows TRL: the prompt and each prompt + completion are tokenized whole, and the
//! completion starts where the prompt's ids and both full sequences' ids stop agreeing. So
//! `prompt_ids + chosen_ids` are always exactly the ids of the rendered prompt + chosen, even
//! where a token merges across the boundary (then the prompt's diverging end is left out, as TRL
//! does). Truncation to `max_length` (`keep_start`/`keep_end`) applies per sequence when a batch
//! is built ([`PreferenceIds::sequence`]).
use std::path::Path;

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::error::{DataError, Location, Result};
use crate::record::{FieldMap, Message, Role};
use crate::template::ChatTemplate;

/// A preference pair in one of TRL's forms (after the implicit prompt is extracted).
#[derive(Debug, Clone, PartialEq)]
pub enum Preference {
    /// Strings, concatenated without a template.
    Standard {
        prompt: String,
        chosen: String,
        rejected: String,
    },
    /// Message lists, rendered with the chat template.
    Conversational {
        prompt: Vec<Message>,
        chosen: Vec<Message>,
        rejected: Vec<Message>,
    },
}

/// Which end of a sequence longer than `max_length` is kept (TRL's `truncation_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TruncationMode {
    /// Keep the first `max_length` tokens.
    #[default]
    KeepStart,
    /// Keep the last `max_length` tokens.
    KeepEnd,
}

impl std::str::FromStr for TruncationMode {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "keep_start" => Ok(Self::KeepStart),
            "keep_end" => Ok(Self::KeepEnd),
            _ => Err(DataError::UnknownName {
                what: "truncation mode",
                value: s.to_string(),
                expected: "keep_start, keep_end",
            }),
        }
    }
}

/// A tokenized pair: the shared prompt and the two completions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferenceIds {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

impl PreferenceIds {
    /// Prompt + chosen (`rejected = false`) or prompt + rejected, and which tokens belong to the
    /// completion, truncated per sequence to `max_length` as TRL's collator does.
    ///
    /// # Shapes
    /// - output: `(ids [n], completion mask [n])`, `n ≤ max_length`
    pub fn sequence(
        &self,
        rejected: bool,
        max_length: Option<usize>,
        mode: TruncationMode,
    ) -> (Vec<u32>, Vec<bool>) {
        let completion = if rejected {
            &self.rejected
        } else {
            &self.chosen
        };
        let mut ids = self.prompt.clone();
        ids.extend_from_slice(completion);
        let mut mask = vec![false; self.prompt.len()];
        mask.resize(ids.len(), true);
        if let Some(max) = max_length.filter(|&m| ids.len() > m) {
            match mode {
                TruncationMode::KeepStart => {
                    ids.truncate(max);
                    mask.truncate(max);
                }
                TruncationMode::KeepEnd => {
                    let cut = ids.len() - max;
                    ids.drain(..cut);
                    mask.drain(..cut);
                }
            }
        }
        (ids, mask)
    }
}

/// Parses one JSON object into a [`Preference`]: `chosen`/`rejected` required and not empty,
/// `prompt` optional (else extracted as the common prefix). Errors name `at` and the field.
pub fn parse_preference(obj: &Value, fields: &FieldMap, at: &Location) -> Result<Preference> {
    let get = |k: &str| obj.get(fields.get(k)).filter(|v| !v.is_null());
    let need = |k: &str| {
        get(k).ok_or_else(|| DataError::MissingField {
            at: at.clone(),
            field: fields.get(k).to_string(),
        })
    };
    let (chosen, rejected) = (need("chosen")?, need("rejected")?);
    let pair = match (get("prompt"), chosen, rejected) {
        (Some(Value::String(p)), Value::String(c), Value::String(r)) => Preference::Standard {
            prompt: p.clone(),
            chosen: c.clone(),
            rejected: r.clone(),
        },
        (None, Value::String(c), Value::String(r)) => {
            let idx = implicit_split(c.as_bytes(), r.as_bytes(), |i| c.as_bytes()[i] == b' ');
            // Back off to a character boundary (the common prefix may end inside one).
            let idx = (0..=idx)
                .rev()
                .find(|&i| c.is_char_boundary(i))
                .unwrap_or(0);
            Preference::Standard {
                prompt: c[..idx].to_string(),
                chosen: c[idx..].to_string(),
                rejected: r[idx..].to_string(),
            }
        }
        (prompt, c, r) => {
            let msgs = |v: &Value, k: &str| messages(v, fields.get(k), at);
            let (c, r) = (msgs(c, "chosen")?, msgs(r, "rejected")?);
            match prompt {
                Some(p) => Preference::Conversational {
                    prompt: msgs(p, "prompt")?,
                    chosen: c,
                    rejected: r,
                },
                None => {
                    let idx = implicit_split(&c, &r, |_| false);
                    Preference::Conversational {
                        prompt: c[..idx].to_vec(),
                        chosen: c[idx..].to_vec(),
                        rejected: r[idx..].to_vec(),
                    }
                }
            }
        }
    };
    let empty = match &pair {
        Preference::Standard {
            chosen, rejected, ..
        } => [chosen.is_empty(), rejected.is_empty()],
        Preference::Conversational {
            chosen, rejected, ..
        } => [chosen.is_empty(), rejected.is_empty()],
    };
    for (is_empty, k) in empty.into_iter().zip(["chosen", "rejected"]) {
        if is_empty {
            return Err(DataError::BadConversation {
                at: at.clone(),
                field: fields.get(k).to_string(),
                message: "empty completion (after the shared prompt)".into(),
            });
        }
    }
    Ok(pair)
}

/// TRL's `extract_prompt`: the index of the first element where `a` and `b` differ (minus one
/// when `space_before(index - 1)`), or the last index both have when neither differs.
fn implicit_split<T: PartialEq>(a: &[T], b: &[T], space_before: impl Fn(usize) -> bool) -> usize {
    let n = a.len().min(b.len());
    for idx in 0..n {
        if a[idx] != b[idx] {
            // Python's `chosen[idx - 1]` at idx 0 reads the last element.
            let prev = if idx == 0 { a.len() - 1 } else { idx - 1 };
            return if space_before(prev) && idx > 0 {
                idx - 1
            } else {
                idx
            };
        }
    }
    n.saturating_sub(1)
}

/// A message list (`role`/`content` objects) under the field `name`.
pub(crate) fn messages(v: &Value, name: &str, at: &Location) -> Result<Vec<Message>> {
    let wrong = |field: String, expected: &str| DataError::WrongType {
        at: at.clone(),
        field,
        expected: expected.to_string(),
    };
    let items = v
        .as_array()
        .ok_or_else(|| wrong(name.to_string(), "a string or a list of messages"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| wrong(format!("{name}[{i}].role"), "a role string"))?;
            let role: Role = role.parse().map_err(|_| {
                wrong(
                    format!("{name}[{i}].role"),
                    "system, user, assistant or tool",
                )
            })?;
            let content = m
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| wrong(format!("{name}[{i}].content"), "a string"))?;
            Ok(Message::new(role, content))
        })
        .collect()
}

/// Reads every record of a JSON Lines file of preference pairs (blank lines skipped), each
/// error naming the file and line.
pub fn read_preferences(path: &Path, fields: &FieldMap) -> Result<Vec<(Location, Preference)>> {
    let mut out = Vec::new();
    for_each_object(path, |at, obj| {
        out.push((at.clone(), parse_preference(obj, fields, at)?));
        Ok(())
    })?;
    Ok(out)
}

/// A reward model's training record (TRL's `RewardTrainer`): a preference pair and its
/// optional `margin` column.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardRecord {
    pub at: Location,
    pub pair: Preference,
    pub margin: Option<f64>,
}

/// Reads the preference pairs of a JSON Lines file with their optional numeric `margin`
/// (blank lines skipped), each error naming the file and line.
pub fn read_reward_records(path: &Path, fields: &FieldMap) -> Result<Vec<RewardRecord>> {
    let mut out = Vec::new();
    for_each_object(path, |at, obj| {
        let margin = match obj.get(fields.get("margin")).filter(|v| !v.is_null()) {
            None => None,
            Some(v) => Some(v.as_f64().ok_or_else(|| DataError::WrongType {
                at: at.clone(),
                field: fields.get("margin").to_string(),
                expected: "a number".into(),
            })?),
        };
        out.push(RewardRecord {
            at: at.clone(),
            pair: parse_preference(obj, fields, at)?,
            margin,
        });
        Ok(())
    })?;
    Ok(out)
}

/// Calls `f` on each JSON object of a JSON Lines file with its location.
fn for_each_object(path: &Path, mut f: impl FnMut(&Location, &Value) -> Result<()>) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = Location {
            file: path.to_path_buf(),
            line: i + 1,
        };
        let obj: Value = serde_json::from_str(line).map_err(|e| DataError::Malformed {
            at: at.clone(),
            format: "JSON Lines",
            message: e.to_string(),
        })?;
        f(&at, &obj)?;
    }
    Ok(())
}

/// Tokenizes [`Preference`] pairs as TRL's `DPOTrainer` does (see the module docs).
pub struct PreferenceEncoder<'a> {
    tokenizer: &'a Tokenizer,
    template: Option<&'a ChatTemplate>,
    eos: Option<String>,
}

impl<'a> PreferenceEncoder<'a> {
    /// `template` renders conversational pairs; `eos` (the tokenizer's EOS token text) is
    /// appended to standard completions that do not end with it.
    pub fn new(
        tokenizer: &'a Tokenizer,
        template: Option<&'a ChatTemplate>,
        eos: Option<&str>,
    ) -> Self {
        Self {
            tokenizer,
            template,
            eos: eos.map(str::to_string),
        }
    }

    pub(crate) fn template(&self) -> Option<&ChatTemplate> {
        self.template
    }

    /// The EOS text appended to standard completions.
    pub(crate) fn eos(&self) -> Option<&str> {
        self.eos.as_deref()
    }

    pub(crate) fn ids(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| DataError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The whole chosen and rejected sequences as TRL's `RewardTrainer` tokenizes them: a
    /// standard pair's prompt + completion (+ EOS unless the completion ends with it) with the
    /// tokenizer's special tokens; a conversational pair's prompt + completion messages
    /// rendered without a generation prompt. Errors name `at`.
    pub fn encode_sequences(&self, pair: &Preference, at: &Location) -> Result<[Vec<u32>; 2]> {
        let within = |e: DataError| DataError::AtRecord {
            at: at.clone(),
            source: Box::new(e),
        };
        let one = |chosen: bool| -> Result<Vec<u32>> {
            match pair {
                Preference::Standard {
                    prompt,
                    chosen: c,
                    rejected: r,
                } => {
                    let s = if chosen { c } else { r };
                    let text = match &self.eos {
                        Some(e) if !s.ends_with(e.as_str()) => format!("{prompt}{s}{e}"),
                        _ => format!("{prompt}{s}"),
                    };
                    self.ids(&text, true)
                }
                Preference::Conversational {
                    prompt,
                    chosen: c,
                    rejected: r,
                } => {
                    let template = self.template.ok_or(DataError::InvalidOption {
                        option: "template",
                        message: "conversational preference records need a chat template".into(),
                    })?;
                    let mut m = prompt.clone();
                    m.extend_from_slice(if chosen { c } else { r });
                    self.ids(&template.render(&m, false)?, false)
                }
            }
        };
        Ok([one(true).map_err(within)?, one(false).map_err(within)?])
    }

    /// The pair's prompt and completion ids; errors (template, tokenizer, a completion left
    /// empty by the boundary) name `at`.
    pub fn encode(&self, pair: &Preference, at: &Location) -> Result<PreferenceIds> {
        let within = |e: DataError| DataError::AtRecord {
            at: at.clone(),
            source: Box::new(e),
        };
        let (prompt, chosen, rejected) = match pair {
            Preference::Standard {
                prompt,
                chosen,
                rejected,
            } => {
                // Standard text goes through the tokenizer as TRL calls it: with special tokens.
                let eos = |s: &str| match &self.eos {
                    Some(e) if !s.ends_with(e.as_str()) => format!("{prompt}{s}{e}"),
                    _ => format!("{prompt}{s}"),
                };
                (
                    self.ids(prompt, true),
                    self.ids(&eos(chosen), true),
                    self.ids(&eos(rejected), true),
                )
            }
            Preference::Conversational {
                prompt,
                chosen,
                rejected,
            } => {
                let template = self.template.ok_or(DataError::InvalidOption {
                    option: "template",
                    message: "conversational preference records need a chat template".into(),
                });
                let template = template.map_err(within)?;
                let full = |c: &[Message]| -> Result<Vec<u32>> {
                    let mut m = prompt.clone();
                    m.extend_from_slice(c);
                    self.ids(&template.render(&m, false)?, false)
                };
                let p = template
                    .render(prompt, true)
                    .and_then(|t| self.ids(&t, false));
                (p, full(chosen), full(rejected))
            }
        };
        let (prompt, chosen, rejected) = (
            prompt.map_err(within)?,
            chosen.map_err(within)?,
            rejected.map_err(within)?,
        );
        let common = |a: &[u32], b: &[u32]| a.iter().zip(b).take_while(|(x, y)| x == y).count();
        let n = common(&prompt, &chosen).min(common(&prompt, &rejected));
        let ids = PreferenceIds {
            prompt: prompt[..n].to_vec(),
            chosen: chosen[n..].to_vec(),
            rejected: rejected[n..].to_vec(),
        };
        for (c, k) in [(&ids.chosen, "chosen"), (&ids.rejected, "rejected")] {
            if c.is_empty() {
                return Err(DataError::BadConversation {
                    at: at.clone(),
                    field: k.to_string(),
                    message: "the completion has no token of its own".into(),
                });
            }
        }
        Ok(ids)
    }
}
