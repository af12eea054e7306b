//! Normalised records: every input format becomes one of a few shapes.
//!
//! | format | keys (default names) | becomes |
//! |---|---|---|
//! | messages | `messages`: [{`role`, `content`}] | [`Record::Conversation`] |
//! | ShareGPT | `conversations`: [{`from`, `value`}] | [`Record::Conversation`] |
//! | alpaca | `instruction`, `input`?, `output`, `system`? | [`Record::Conversation`] |
//! | prompt/completion | `prompt`, `completion` (strings) | [`Record::PromptCompletion`] |
//! | text | `text` | [`Record::Text`] |
//! | preference | `prompt`, `chosen`, `rejected` (strings or message lists) | [`Record::Preference`] |
//! | classification | `text`, `label` (string, integer or score) | [`Record::Classification`] |
//!
//! Alpaca becomes `[system?, user: instruction + "\n\n" + input (when input is not empty), assistant: output]`.

use std::collections::HashMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{DataError, Location, Result};

/// Speaker of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    /// The name chat templates see (`"system"`, `"user"`, `"assistant"`, `"tool"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

impl FromStr for Role {
    type Err = DataError;
    /// Accepts the OpenAI names and ShareGPT's (`human`, `gpt`, `model`, `function_call`, `observation`...).
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "system" => Role::System,
            "user" | "human" => Role::User,
            "assistant" | "gpt" | "model" | "bot" => Role::Assistant,
            "tool" | "function" | "function_call" | "observation" | "ipython" => Role::Tool,
            _ => {
                return Err(DataError::UnknownName {
                    what: "role",
                    value: s.to_string(),
                    expected: "system, user/human, assistant/gpt/model, tool/function/observation",
                });
            }
        })
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// Target of a classification or regression record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Label {
    /// A class name.
    Name(String),
    /// A class index or a regression score.
    Value(f64),
}

/// A record in one of the normalised shapes.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A chat (messages, ShareGPT, alpaca): rendered with the chat template.
    Conversation(Vec<Message>),
    /// Raw prompt and completion strings, concatenated without a template.
    PromptCompletion { prompt: String, completion: String },
    /// A document for continued pre-training.
    Text(String),
    /// A preference pair; `prompt` ends before the answers, which are assistant turns.
    Preference {
        prompt: Vec<Message>,
        chosen: Vec<Message>,
        rejected: Vec<Message>,
    },
    /// A text with a class or a score.
    Classification { text: String, label: Label },
}

/// Record format; [`Format::Auto`] detects it per record from its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Auto,
    Messages,
    ShareGpt,
    Alpaca,
    PromptCompletion,
    Text,
    Preference,
    Classification,
}

impl FromStr for Format {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => Format::Auto,
            "messages" | "openai" | "chatml" => Format::Messages,
            "sharegpt" => Format::ShareGpt,
            "alpaca" => Format::Alpaca,
            "prompt_completion" | "completion" => Format::PromptCompletion,
            "text" => Format::Text,
            "preference" | "dpo" => Format::Preference,
            "classification" | "regression" => Format::Classification,
            _ => {
                return Err(DataError::UnknownName {
                    what: "record format",
                    value: s.to_string(),
                    expected: "auto, messages, sharegpt, alpaca, prompt_completion, text, preference, classification",
                });
            }
        })
    }
}

/// Renames of record fields: canonical name (`messages`, `role`, `content`, `conversations`,
/// `from`, `value`, `instruction`, `input`, `output`, `system`, `prompt`, `completion`, `text`,
/// `chosen`, `rejected`, `label`) → the name used in the user's files.
#[derive(Debug, Clone, Default)]
pub struct FieldMap {
    renames: HashMap<String, String>,
}

impl FieldMap {
    /// Use `actual` wherever the canonical field `canonical` is read.
    pub fn rename(mut self, canonical: &str, actual: &str) -> Self {
        self.renames
            .insert(canonical.to_string(), actual.to_string());
        self
    }

    /// The name to read for a canonical field.
    pub fn get<'a>(&'a self, canonical: &'a str) -> &'a str {
        self.renames
            .get(canonical)
            .map_or(canonical, String::as_str)
    }
}

/// Detects the format of one JSON object from its keys (after renames).
pub fn detect_format(obj: &Value, fields: &FieldMap, at: &Location) -> Result<Format> {
    let has = |k: &str| obj.get(fields.get(k)).is_some();
    Ok(if has("messages") {
        Format::Messages
    } else if has("conversations") {
        Format::ShareGpt
    } else if has("instruction") && has("output") {
        Format::Alpaca
    } else if has("chosen") && has("rejected") {
        Format::Preference
    } else if has("prompt") && has("completion") {
        Format::PromptCompletion
    } else if has("text") && has("label") {
        Format::Classification
    } else if has("text") {
        Format::Text
    } else {
        let keys = match obj.as_object() {
            Some(m) => m.keys().cloned().collect::<Vec<_>>().join(", "),
            None => String::new(),
        };
        return Err(DataError::UnknownFormat {
            at: at.clone(),
            keys,
        });
    })
}

/// Parses one JSON object into a [`Record`]; errors name the location and the field.
pub fn parse_record(
    obj: &Value,
    format: Format,
    fields: &FieldMap,
    at: &Location,
) -> Result<Record> {
    if !obj.is_object() {
        return Err(DataError::WrongType {
            at: at.clone(),
            field: "<record>".into(),
            expected: "a JSON object".into(),
        });
    }
    let p = Parser { obj, fields, at };
    let format = match format {
        Format::Auto => detect_format(obj, fields, at)?,
        f => f,
    };
    match format {
        Format::Auto => unreachable!("resolved above"),
        Format::Messages => {
            let msgs = p.messages(p.field("messages")?, "messages", "role", "content")?;
            p.non_empty(msgs, "messages").map(Record::Conversation)
        }
        Format::ShareGpt => {
            let msgs = p.messages(p.field("conversations")?, "conversations", "from", "value")?;
            p.non_empty(msgs, "conversations").map(Record::Conversation)
        }
        Format::Alpaca => {
            let mut msgs = Vec::new();
            if let Some(system) = p.opt_str("system")?.filter(|s| !s.is_empty()) {
                msgs.push(Message::new(Role::System, system));
            }
            let mut user = p.str("instruction")?.to_string();
            if let Some(input) = p.opt_str("input")?.filter(|s| !s.is_empty()) {
                user.push_str("\n\n");
                user.push_str(input);
            }
            msgs.push(Message::new(Role::User, user));
            msgs.push(Message::new(Role::Assistant, p.str("output")?));
            Ok(Record::Conversation(msgs))
        }
        Format::PromptCompletion => Ok(Record::PromptCompletion {
            prompt: p.str("prompt")?.to_string(),
            completion: p.str("completion")?.to_string(),
        }),
        Format::Text => Ok(Record::Text(p.str("text")?.to_string())),
        Format::Preference => {
            let prompt = match p.opt_field("prompt") {
                None => Vec::new(),
                Some(v) => p.turns(v, "prompt", Role::User)?,
            };
            let chosen = p.turns(p.field("chosen")?, "chosen", Role::Assistant)?;
            let rejected = p.turns(p.field("rejected")?, "rejected", Role::Assistant)?;
            let chosen = p.non_empty(chosen, "chosen")?;
            let rejected = p.non_empty(rejected, "rejected")?;
            Ok(Record::Preference {
                prompt,
                chosen,
                rejected,
            })
        }
        Format::Classification => {
            let text = p.str("text")?.to_string();
            let label = match p.field("label")? {
                Value::String(s) => Label::Name(s.clone()),
                Value::Number(n) => Label::Value(n.as_f64().unwrap_or(f64::NAN)),
                Value::Bool(b) => Label::Value(f64::from(u8::from(*b))),
                _ => return Err(p.wrong("label", "a string, number or boolean")),
            };
            Ok(Record::Classification { text, label })
        }
    }
}

struct Parser<'a> {
    obj: &'a Value,
    fields: &'a FieldMap,
    at: &'a Location,
}

impl<'a> Parser<'a> {
    fn opt_field(&self, canonical: &'a str) -> Option<&'a Value> {
        self.obj
            .get(self.fields.get(canonical))
            .filter(|v| !v.is_null())
    }

    fn field(&self, canonical: &'a str) -> Result<&'a Value> {
        self.opt_field(canonical)
            .ok_or_else(|| DataError::MissingField {
                at: self.at.clone(),
                field: self.fields.get(canonical).to_string(),
            })
    }

    fn wrong(&self, canonical: &str, expected: &str) -> DataError {
        DataError::WrongType {
            at: self.at.clone(),
            field: self.fields.get(canonical).to_string(),
            expected: expected.to_string(),
        }
    }

    fn str(&self, canonical: &'a str) -> Result<&'a str> {
        self.field(canonical)?
            .as_str()
            .ok_or_else(|| self.wrong(canonical, "a string"))
    }

    fn opt_str(&self, canonical: &'a str) -> Result<Option<&'a str>> {
        match self.opt_field(canonical) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.wrong(canonical, "a string")),
        }
    }

    fn non_empty(&self, msgs: Vec<Message>, canonical: &str) -> Result<Vec<Message>> {
        if msgs.is_empty() {
            return Err(DataError::BadConversation {
                at: self.at.clone(),
                field: self.fields.get(canonical).to_string(),
                message: "empty conversation".into(),
            });
        }
        Ok(msgs)
    }

    /// A list of `{role_key, content_key}` objects.
    fn messages(
        &self,
        list: &Value,
        canonical: &str,
        role_key: &str,
        content_key: &str,
    ) -> Result<Vec<Message>> {
        let items = list
            .as_array()
            .ok_or_else(|| self.wrong(canonical, "a list of messages"))?;
        let name = self.fields.get(canonical);
        let (role_key, content_key) = (self.fields.get(role_key), self.fields.get(content_key));
        items
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let wrong = |key: &str, expected: &str| DataError::WrongType {
                    at: self.at.clone(),
                    field: format!("{name}[{i}].{key}"),
                    expected: expected.to_string(),
                };
                let role = m
                    .get(role_key)
                    .and_then(Value::as_str)
                    .ok_or_else(|| wrong(role_key, "a role string"))?;
                let role = Role::from_str(role).map_err(|_| {
                    wrong(
                        role_key,
                        "system, user, assistant or tool (or ShareGPT's human/gpt)",
                    )
                })?;
                let content = match m.get(content_key) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None if role == Role::Assistant => String::new(),
                    _ => return Err(wrong(content_key, "a string")),
                };
                Ok(Message { role, content })
            })
            .collect()
    }

    /// A string (one message of `role`) or a message list.
    fn turns(&self, v: &Value, canonical: &str, role: Role) -> Result<Vec<Message>> {
        match v {
            Value::String(s) => Ok(vec![Message::new(role, s.clone())]),
            Value::Array(_) => self.messages(v, canonical, "role", "content"),
            _ => Err(self.wrong(canonical, "a string or a list of messages")),
        }
    }
}
