//! The request bodies of OpenAI's API that kiln serves, as `serde` reads them. Fields kiln does
//! not implement (`logprobs`, `tools`, `presence_penalty`...) are ignored, as servers compatible
//! with OpenAI's API commonly do; responses are built as JSON in the server module.
use serde::Deserialize;

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub params: SamplingParams,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    #[serde(flatten)]
    pub params: SamplingParams,
}

/// The generation fields both endpoints share.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SamplingParams {
    /// New tokens at most (`max_completion_tokens` is the newer name for chat).
    #[serde(alias = "max_completion_tokens")]
    pub max_tokens: Option<usize>,
    /// 0 is greedy; OpenAI's default is 1.
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    /// Choices to generate.
    pub n: Option<usize>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
}

/// `stream_options`: `include_usage` adds a last chunk with the token counts.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// A completion prompt: text, or token ids as OpenAI's API also accepts (one prompt only).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

/// One chat message. `content` is a string or a list of parts of which the text parts count.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

/// Message content: a string or OpenAI's list of typed parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One part of a message's content; only `{"type": "text", "text": ...}` is read.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

impl Content {
    /// The text of the message; `None` when a part is not text (images are not served).
    pub fn text(&self) -> Option<String> {
        match self {
            Content::Text(s) => Some(s.clone()),
            Content::Parts(parts) => parts
                .iter()
                .map(|p| (p.kind == "text").then(|| p.text.clone().unwrap_or_default()))
                .collect(),
        }
    }
}

/// `POST /v1/adapters`.
#[derive(Debug, Clone, Deserialize)]
pub struct LoadAdapterRequest {
    pub name: String,
    pub path: std::path::PathBuf,
}
