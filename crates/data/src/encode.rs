//! Tokenize records and build their labels (completion-only by default).
//!
//! Labels are the input ids on trained tokens and [`IGNORE_INDEX`] (-100) elsewhere; the model
//! shifts them itself (label `i` is the target of the logits at `i - 1`, as in transformers).
//! A token is trained when its byte range in the rendered text overlaps a trained span
//! ([`crate::spans`]), the same rule as transformers' `return_assistant_tokens_mask`.

use std::str::FromStr;

use tokenizers::Tokenizer;

use crate::error::{DataError, Result};
use crate::record::{Message, Record, Role};
use crate::spans::assistant_spans;
use crate::template::ChatTemplate;

/// Label of a token that does not count in the loss.
pub const IGNORE_INDEX: i64 = -100;

/// Which tokens of a conversation are trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LabelMode {
    /// Every assistant turn (content and its end-of-turn token). Default.
    #[default]
    Completions,
    /// Only the last assistant turn.
    LastTurn,
    /// Every token, prompts included.
    AllTokens,
}

impl FromStr for LabelMode {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "completions" | "completion_only" | "assistant" => Ok(LabelMode::Completions),
            "last_turn" | "last" => Ok(LabelMode::LastTurn),
            "all" | "all_tokens" => Ok(LabelMode::AllTokens),
            _ => Err(DataError::UnknownName {
                what: "label mode",
                value: s.into(),
                expected: "completions, last_turn, all",
            }),
        }
    }
}

/// What to do with an example longer than `max_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncation {
    /// Keep the first `max_len` tokens. Default.
    #[default]
    Right,
    /// Keep the last `max_len` tokens (keeps the answer of a long prompt).
    Left,
    /// Drop the example.
    Drop,
}

impl FromStr for Truncation {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "right" => Ok(Truncation::Right),
            "left" => Ok(Truncation::Left),
            "drop" => Ok(Truncation::Drop),
            _ => Err(DataError::UnknownName {
                what: "truncation",
                value: s.into(),
                expected: "right, left, drop",
            }),
        }
    }
}

/// Options of [`Encoder`].
#[derive(Debug, Clone)]
pub struct EncodeOptions {
    pub labels: LabelMode,
    /// Longest example in tokens; `None` = unlimited.
    pub max_len: Option<usize>,
    pub truncation: Truncation,
    /// Append the EOS token to text and prompt/completion records, and to conversations whose
    /// template does not close the last assistant turn with a special token (ChatML, Llama 3,
    /// Gemma, Mistral, Phi-3 all do). The appended EOS is trained when the token before it is.
    pub append_eos: bool,
    /// Let the tokenizer's post-processor add its special tokens (BOS...). Off by default:
    /// chat templates write the BOS themselves.
    pub add_special_tokens: bool,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self {
            labels: LabelMode::Completions,
            max_len: None,
            truncation: Truncation::Right,
            append_eos: true,
            add_special_tokens: false,
        }
    }
}

/// A tokenized example. `labels[i]` is `input_ids[i]` or [`IGNORE_INDEX`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Example {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
}

impl Example {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Number of tokens that count in the loss.
    pub fn trained_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// An encoded record, or why it was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded {
    /// Fits (`truncated` tells whether tokens were cut).
    Kept { example: Example, truncated: bool },
    /// Longer than `max_len` under [`Truncation::Drop`].
    TooLong { len: usize },
    /// No token left to train on (e.g. truncation cut every answer).
    NothingToTrain,
}

/// Counts over a dataset's encoding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodeStats {
    pub kept: usize,
    pub truncated: usize,
    pub dropped_too_long: usize,
    pub dropped_nothing_to_train: usize,
    pub tokens: usize,
    pub trained_tokens: usize,
}

impl EncodeStats {
    /// Counts one outcome and returns its example, if kept.
    pub fn add(&mut self, e: Encoded) -> Option<Example> {
        match e {
            Encoded::Kept { example, truncated } => {
                self.kept += 1;
                self.truncated += usize::from(truncated);
                self.tokens += example.len();
                self.trained_tokens += example.trained_tokens();
                Some(example)
            }
            Encoded::TooLong { .. } => {
                self.dropped_too_long += 1;
                None
            }
            Encoded::NothingToTrain => {
                self.dropped_nothing_to_train += 1;
                None
            }
        }
    }
}

/// Renders, tokenizes and labels records. Holds no model: a tokenizer and a template.
pub struct Encoder<'a> {
    tokenizer: &'a Tokenizer,
    template: Option<&'a ChatTemplate>,
    opts: EncodeOptions,
    eos_id: Option<u32>,
    end_markers: Vec<String>,
    template_vars: serde_json::Map<String, serde_json::Value>,
    fast_offsets: Option<crate::offsets::TokenBytes>,
    fast_bpe: Option<crate::bpe::ByteLevelBpe>,
}

/// Byte range of each token in the text.
type Offsets = Vec<(usize, usize)>;

/// Text with the byte spans to train.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    /// Byte ranges of `text` that are trained (before the label mode is applied).
    pub spans: Vec<std::ops::Range<usize>>,
}

impl<'a> Encoder<'a> {
    /// `template` is needed for conversation and preference records. The EOS token is the
    /// template's `eos_token` when it is in the vocabulary.
    pub fn new(
        tokenizer: &'a Tokenizer,
        template: Option<&'a ChatTemplate>,
        opts: EncodeOptions,
    ) -> Result<Self> {
        if opts.max_len == Some(0) {
            return Err(DataError::InvalidOption {
                option: "max_len",
                message: "must be at least 1".into(),
            });
        }
        let eos_id = template
            .and_then(|t| t.eos_token())
            .and_then(|e| tokenizer.token_to_id(e));
        let end_markers = tokenizer
            .get_added_tokens_decoder()
            .values()
            .filter(|t| t.special)
            .map(|t| t.content.clone())
            .collect();
        Ok(Self {
            tokenizer,
            template,
            opts,
            eos_id,
            end_markers,
            template_vars: serde_json::Map::new(),
            fast_offsets: crate::offsets::TokenBytes::new(tokenizer),
            fast_bpe: crate::bpe::ByteLevelBpe::new(tokenizer),
        })
    }

    /// Sets the EOS token explicitly (needed when there is no template, for text records).
    pub fn with_eos_token(mut self, eos: &str) -> Result<Self> {
        self.eos_id = Some(
            self.tokenizer
                .token_to_id(eos)
                .ok_or_else(|| DataError::UnknownToken(eos.into()))?,
        );
        Ok(self)
    }

    /// Extra variables the template sees (`date_string`, `enable_thinking`, ...).
    pub fn with_template_vars(mut self, vars: serde_json::Map<String, serde_json::Value>) -> Self {
        self.template_vars = vars;
        self
    }

    pub fn options(&self) -> &EncodeOptions {
        &self.opts
    }

    /// kiln's byte-level BPE encoder, when the tokenizer has a shape it reproduces (then it
    /// tokenizes instead of `tokenizers`, unless `add_special_tokens` is set).
    pub fn byte_level_bpe(&self) -> Option<&crate::bpe::ByteLevelBpe> {
        self.fast_bpe.as_ref()
    }

    fn template(&self) -> Result<&ChatTemplate> {
        self.template.ok_or(DataError::InvalidOption {
            option: "template",
            message: "conversation records need a chat template".into(),
        })
    }

    /// Renders a record to text and the spans to train (all assistant turns; the label mode
    /// is applied by [`Encoder::encode`]).
    pub fn render(&self, record: &Record) -> Result<Rendered> {
        match record {
            Record::Conversation(messages) => self.render_conversation(messages),
            Record::PromptCompletion { prompt, completion } => Ok(Rendered {
                text: format!("{prompt}{completion}"),
                spans: std::iter::once(prompt.len()..prompt.len() + completion.len()).collect(),
            }),
            Record::Text(text) => Ok(Rendered {
                text: text.clone(),
                spans: std::iter::once(0..text.len()).collect(),
            }),
            Record::Preference { .. } => Err(DataError::InvalidOption {
                option: "record",
                message: "preference records are encoded with Encoder::encode_pair".into(),
            }),
            Record::Classification { .. } => Err(DataError::InvalidOption {
                option: "record",
                message: "classification records have no language-model labels".into(),
            }),
        }
    }

    fn render_conversation(&self, messages: &[Message]) -> Result<Rendered> {
        if !messages.iter().any(|m| m.role == Role::Assistant)
            && self.opts.labels != LabelMode::AllTokens
        {
            return Err(DataError::Unencodable {
                field: "messages".into(),
                message: "no assistant message to train on".into(),
            });
        }
        let text = self
            .template()?
            .render_with(messages, false, &self.template_vars)?;
        let spans = assistant_spans(&text, messages, &self.end_markers)?;
        Ok(Rendered { text, spans })
    }

    /// Tokenizes, labels and truncates one record.
    pub fn encode(&self, record: &Record) -> Result<Encoded> {
        let rendered = self.render(record)?;
        let eos = match record {
            Record::Conversation(_) => self.opts.append_eos && !self.turn_closed(&rendered),
            _ => self.opts.append_eos,
        };
        self.encode_rendered(&rendered, eos)
    }

    /// Encodes a preference record into (chosen, rejected) examples sharing the prompt.
    pub fn encode_pair(&self, record: &Record) -> Result<(Encoded, Encoded)> {
        let Record::Preference {
            prompt,
            chosen,
            rejected,
        } = record
        else {
            return Err(DataError::InvalidOption {
                option: "record",
                message: "encode_pair takes a preference record".into(),
            });
        };
        let one = |answer: &[Message]| -> Result<Encoded> {
            let mut messages = prompt.clone();
            messages.extend_from_slice(answer);
            let mut r = self.render_conversation(&messages)?;
            // Train on the answer turns only, never on assistant turns of the prompt.
            let prompt_turns = prompt.iter().filter(|m| m.role == Role::Assistant).count();
            r.spans.drain(..prompt_turns.min(r.spans.len()));
            let eos = self.opts.append_eos && !self.turn_closed(&r);
            self.encode_rendered(&r, eos)
        };
        Ok((one(chosen)?, one(rejected)?))
    }

    /// Token ids and byte offsets of `text`: kiln's byte-level BPE encoder when the tokenizer
    /// has a shape it reproduces (`crate::bpe`), else `tokenizers` (with offsets rebuilt from
    /// the tokens' bytes when they spell the text).
    fn tokenize(&self, text: &str) -> Result<(Vec<u32>, Offsets)> {
        let add = self.opts.add_special_tokens;
        if let Some(bpe) = self.fast_bpe.as_ref().filter(|_| !add) {
            return Ok(bpe.encode(text));
        }
        let err = |e: tokenizers::Error| DataError::Tokenizer(e.to_string());
        if let Some(fast) = &self.fast_offsets {
            let enc = self.tokenizer.encode_fast(text, add).map_err(err)?;
            if let Some(offsets) = fast.offsets(enc.get_ids(), text) {
                return Ok((enc.get_ids().to_vec(), offsets));
            }
        }
        let enc = self.tokenizer.encode(text, add).map_err(err)?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// Whether the last trained span ends with an end-of-turn special token.
    fn turn_closed(&self, r: &Rendered) -> bool {
        r.spans.last().is_some_and(|s| {
            let head = &r.text[..s.end];
            self.end_markers
                .iter()
                .any(|m| !m.is_empty() && head.ends_with(m.as_str()))
        })
    }

    /// Tokenizes rendered text and labels the tokens overlapping its spans; with `append_eos`
    /// the EOS token is added at the end unless the text already ends with it.
    pub fn encode_rendered(&self, rendered: &Rendered, append_eos: bool) -> Result<Encoded> {
        let (ids, offsets) = self.tokenize(&rendered.text)?;
        let (ids, offsets) = (ids.as_slice(), offsets.as_slice());
        let spans: &[std::ops::Range<usize>] = match self.opts.labels {
            LabelMode::LastTurn => rendered.spans.last().map_or(&[], std::slice::from_ref),
            _ => &rendered.spans,
        };
        let all = self.opts.labels == LabelMode::AllTokens;
        let mut labels = Vec::with_capacity(ids.len() + 1);
        let mut s = 0;
        for (&id, &(start, end)) in ids.iter().zip(offsets) {
            while s < spans.len() && spans[s].end <= start {
                s += 1;
            }
            let hit = s < spans.len() && spans[s].start < end && start < end;
            labels.push(if all || hit {
                i64::from(id)
            } else {
                IGNORE_INDEX
            });
        }
        let mut input_ids = ids.to_vec();
        if let Some(eos) = self
            .eos_id
            .filter(|e| append_eos && input_ids.last() != Some(e))
        {
            let trained = all || labels.last().is_some_and(|&l| l != IGNORE_INDEX);
            input_ids.push(eos);
            labels.push(if trained {
                i64::from(eos)
            } else {
                IGNORE_INDEX
            });
        }
        Ok(self.truncate(Example { input_ids, labels }))
    }

    fn truncate(&self, mut ex: Example) -> Encoded {
        let mut truncated = false;
        if let Some(max) = self.opts.max_len {
            let len = ex.len();
            if len > max {
                truncated = true;
                match self.opts.truncation {
                    Truncation::Drop => return Encoded::TooLong { len },
                    Truncation::Right => {
                        ex.input_ids.truncate(max);
                        ex.labels.truncate(max);
                    }
                    Truncation::Left => {
                        ex.input_ids.drain(..len - max);
                        ex.labels.drain(..len - max);
                    }
                }
            }
        }
        if ex.trained_tokens() == 0 {
            return Encoded::NothingToTrain;
        }
        Encoded::Kept {
            example: ex,
            truncated,
        }
    }
}
