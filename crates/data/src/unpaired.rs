//! Unpaired preference records as TRL 1.16's `KTOTrainer` reads and tokenizes them (KTO's data).
//!
//! A JSON Lines record is `prompt`, `completion` and a boolean `label` (true: a desirable
//! completion), with prompt and completion both strings (standard) or both message lists
//! (conversational). A file of preference pairs (`prompt`/`chosen`/`rejected`, or the implicit
//! prompt form) is unpaired as TRL's `unpair_preference_dataset` does: per chunk of 1,000 pairs,
//! the chosen completions (label true) then the rejected ones (label false).
//!
//! Tokenization follows TRL's `_prepare_dataset`: a standard completion gets the EOS text appended
//! when it does not end with it, and the prompt and prompt + completion are tokenized with the
//! tokenizer's special tokens; a conversational record is rendered with the chat template (the
//! prompt with the generation prompt) and tokenized without. The completion starts where the
//! prompt's ids and the whole's stop agreeing, so prompt + completion ids are always exactly the
//! whole's (a prompt end that merges into the completion is left out, as TRL does). Truncation
//! keeps the first `max_length` tokens of each sequence ([`UnpairedIds::sequence`]); TRL 1.16's KTO
//! has no `max_prompt_length` or `truncation_mode`.
use std::path::Path;

use serde_json::Value;

use crate::error::{DataError, Location, Result};
use crate::preference::{Preference, PreferenceEncoder, messages, parse_preference};
use crate::record::{FieldMap, Message};

/// A prompt and one completion, in one of TRL's forms.
#[derive(Debug, Clone, PartialEq)]
pub enum Unpaired {
    /// Strings, concatenated without a template.
    Standard { prompt: String, completion: String },
    /// Message lists, rendered with the chat template.
    Conversational {
        prompt: Vec<Message>,
        completion: Vec<Message>,
    },
}

/// An unpaired record: the example and whether its completion is desirable.
#[derive(Debug, Clone, PartialEq)]
pub struct UnpairedRecord {
    pub example: Unpaired,
    pub label: bool,
}

/// A tokenized unpaired record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpairedIds {
    pub prompt: Vec<u32>,
    pub completion: Vec<u32>,
    pub label: bool,
}

impl UnpairedIds {
    /// Prompt + `completion` (this record's, or another's for KTO's mismatched KL pairs) and which
    /// tokens belong to the completion, the first `max_length` kept as TRL's collator does.
    ///
    /// # Shapes
    /// - output: `(ids [n], completion mask [n])`, `n ≤ max_length`
    pub fn sequence_with(
        &self,
        completion: &[u32],
        max_length: Option<usize>,
    ) -> (Vec<u32>, Vec<bool>) {
        let mut ids = self.prompt.clone();
        ids.extend_from_slice(completion);
        let mut mask = vec![false; self.prompt.len()];
        mask.resize(ids.len(), true);
        if let Some(max) = max_length {
            ids.truncate(max);
            mask.truncate(max);
        }
        (ids, mask)
    }

    /// Prompt + this record's completion ([`Self::sequence_with`]).
    pub fn sequence(&self, max_length: Option<usize>) -> (Vec<u32>, Vec<bool>) {
        self.sequence_with(&self.completion, max_length)
    }
}

/// A record as KTO trains on it: its ids and the completion of its mismatched KL pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KtoExample {
    pub ids: UnpairedIds,
    /// TRL's `KL_completion_ids`: another record's completion, after this record's prompt.
    pub kl_completion: Vec<u32>,
}

/// TRL's KTO preparation after tokenization: the records whose prompt alone fills
/// `max_length` are dropped (truncation would leave them no completion token; their count is
/// returned), then each record takes as KL completion the completion of the record before it
/// in its batch of `batch_size` consecutive records (the first the batch's last): TRL's
/// mismatched (prompt, completion) pairs, `(x_1, y_n), (x_2, y_1), …, (x_n, y_{n-1})`.
pub fn kto_examples(
    ids: Vec<UnpairedIds>,
    batch_size: usize,
    max_length: Option<usize>,
) -> (Vec<KtoExample>, usize) {
    let before = ids.len();
    let kept: Vec<UnpairedIds> = ids
        .into_iter()
        .filter(|r| max_length.is_none_or(|m| r.prompt.len() < m))
        .collect();
    let dropped = before - kept.len();
    let mut out = Vec::with_capacity(kept.len());
    for chunk in kept.chunks(batch_size.max(1)) {
        for (i, r) in chunk.iter().enumerate() {
            let prev = if i == 0 { chunk.len() - 1 } else { i - 1 };
            out.push(KtoExample {
                ids: r.clone(),
                kl_completion: chunk[prev].completion.clone(),
            });
        }
    }
    (out, dropped)
}

/// Parses one JSON object with `prompt`, `completion` and a boolean `label`. Errors name `at`
/// and the field.
pub fn parse_unpaired(obj: &Value, fields: &FieldMap, at: &Location) -> Result<UnpairedRecord> {
    let need = |k: &str| {
        obj.get(fields.get(k))
            .filter(|v| !v.is_null())
            .ok_or_else(|| DataError::MissingField {
                at: at.clone(),
                field: fields.get(k).to_string(),
            })
    };
    let wrong = |k: &str, expected: &str| DataError::WrongType {
        at: at.clone(),
        field: fields.get(k).to_string(),
        expected: expected.to_string(),
    };
    let (prompt, completion) = (need("prompt")?, need("completion")?);
    let label = need("label")?
        .as_bool()
        .ok_or_else(|| wrong("label", "a boolean (true: the completion is desirable)"))?;
    let example = match (prompt, completion) {
        (Value::String(p), Value::String(c)) => Unpaired::Standard {
            prompt: p.clone(),
            completion: c.clone(),
        },
        (Value::Array(_), Value::Array(_)) => Unpaired::Conversational {
            prompt: messages(prompt, fields.get("prompt"), at)?,
            completion: messages(completion, fields.get("completion"), at)?,
        },
        _ => {
            return Err(wrong(
                "completion",
                "the prompt's form: both strings or both message lists",
            ));
        }
    };
    let empty = match &example {
        Unpaired::Standard { completion, .. } => completion.is_empty(),
        Unpaired::Conversational { completion, .. } => completion.is_empty(),
    };
    if empty {
        return Err(DataError::BadConversation {
            at: at.clone(),
            field: fields.get("completion").to_string(),
            message: "empty completion".into(),
        });
    }
    Ok(UnpairedRecord { example, label })
}

/// TRL's `unpair_preference_dataset`: per chunk of 1,000 pairs (its `map` batch), the chosen
/// completions labelled true, then the rejected ones labelled false.
fn unpair(pairs: Vec<(Location, Preference)>) -> Vec<(Location, UnpairedRecord)> {
    let mut out = Vec::with_capacity(2 * pairs.len());
    for chunk in pairs.chunks(1000) {
        for label in [true, false] {
            out.extend(chunk.iter().map(|(at, p)| {
                let example = match p.clone() {
                    Preference::Standard {
                        prompt,
                        chosen,
                        rejected,
                    } => Unpaired::Standard {
                        prompt,
                        completion: if label { chosen } else { rejected },
                    },
                    Preference::Conversational {
                        prompt,
                        chosen,
                        rejected,
                    } => Unpaired::Conversational {
                        prompt,
                        completion: if label { chosen } else { rejected },
                    },
                };
                (at.clone(), UnpairedRecord { example, label })
            }));
        }
    }
    out
}

/// Reads every record of a JSON Lines file of unpaired records (blank lines skipped), or of
/// preference pairs, unpaired, when its first record has no `completion` but `chosen` and
/// `rejected` (as TRL decides from the first record). Errors name the file and line.
pub fn read_unpaired(path: &Path, fields: &FieldMap) -> Result<Vec<(Location, UnpairedRecord)>> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut objects = Vec::new();
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
        objects.push((at, obj));
    }
    let has = |obj: &Value, k: &str| obj.get(fields.get(k)).is_some();
    let paired = objects
        .first()
        .is_some_and(|(_, o)| !has(o, "completion") && has(o, "chosen") && has(o, "rejected"));
    if paired {
        let pairs = objects
            .iter()
            .map(|(at, o)| Ok((at.clone(), parse_preference(o, fields, at)?)))
            .collect::<Result<Vec<_>>>()?;
        return Ok(unpair(pairs));
    }
    objects
        .iter()
        .map(|(at, o)| Ok((at.clone(), parse_unpaired(o, fields, at)?)))
        .collect()
}

impl PreferenceEncoder<'_> {
    /// The record's prompt and completion ids as TRL's `KTOTrainer` makes them (see the module
    /// docs). Errors (template, tokenizer, a completion left without a token) name `at`.
    pub fn encode_unpaired(&self, record: &UnpairedRecord, at: &Location) -> Result<UnpairedIds> {
        let within = |e: DataError| DataError::AtRecord {
            at: at.clone(),
            source: Box::new(e),
        };
        let (prompt, whole) = match &record.example {
            Unpaired::Standard { prompt, completion } => {
                let whole = match self.eos() {
                    Some(e) if !completion.ends_with(e) => format!("{prompt}{completion}{e}"),
                    _ => format!("{prompt}{completion}"),
                };
                (self.ids(prompt, true), self.ids(&whole, true))
            }
            Unpaired::Conversational { prompt, completion } => {
                let template = self
                    .template()
                    .ok_or(DataError::InvalidOption {
                        option: "template",
                        message: "conversational records need a chat template".into(),
                    })
                    .map_err(within)?;
                let mut all = prompt.clone();
                all.extend_from_slice(completion);
                (
                    template
                        .render(prompt, true)
                        .and_then(|t| self.ids(&t, false)),
                    template
                        .render(&all, false)
                        .and_then(|t| self.ids(&t, false)),
                )
            }
        };
        let (prompt, whole) = (prompt.map_err(within)?, whole.map_err(within)?);
        let n = prompt
            .iter()
            .zip(&whole)
            .take_while(|(a, b)| a == b)
            .count();
        if n == whole.len() {
            return Err(DataError::BadConversation {
                at: at.clone(),
                field: "completion".into(),
                message: "the completion has no token of its own".into(),
            });
        }
        Ok(UnpairedIds {
            prompt: prompt[..n].to_vec(),
            completion: whole[n..].to_vec(),
            label: record.label,
        })
    }
}
