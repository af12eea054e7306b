//! Hugging Face chat templates rendered with minijinja exactly as transformers renders them.
//!
//! transformers compiles templates with jinja2 (`trim_blocks`, `lstrip_blocks`, loop controls),
//! adds `raise_exception`, `strftime_now` and its own `tojson` (no HTML escaping,
//! `ensure_ascii=False`, `indent`/`separators`/`sort_keys` options, Python's `json.dumps`
//! spacing), and renders with `messages`, `tools=None`, `documents=None`,
//! `add_generation_prompt` and the tokenizer's special tokens. [`ChatTemplate`] does the same;
//! Python string methods (`.strip()`, `.startswith()`, `.split()`, `.items()` ...) come from
//! minijinja-contrib's `pycompat`. Not supported: transformers' `{% generation %}` tag.

use std::path::Path;

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

use crate::error::{DataError, Result};
use crate::jsonfmt::python_json;
use crate::record::Message;
use crate::timefmt::strftime_now;

const NAME: &str = "chat_template";

/// A compiled chat template with the special tokens of its model.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    /// Where the template came from, for errors: a file path, or `model.gguf
    /// (tokenizer.chat_template)`.
    origin: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("source_len", &self.source.len())
            .finish()
    }
}

#[derive(Serialize)]
struct MessageView<'a> {
    role: &'a str,
    content: &'a str,
}

impl ChatTemplate {
    /// Compiles a template. `bos_token`/`eos_token` are the strings the template sees (left
    /// undefined when `None`, as transformers does for unset special tokens). Errors call it
    /// `<inline chat template>`; [`ChatTemplate::with_origin`] names where it came from.
    pub fn new(
        source: impl Into<String>,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<Self> {
        Self::with_origin(source, "<inline chat template>", bos_token, eos_token)
    }

    /// Reads and compiles the template file `path`; errors name the file.
    pub fn from_file(
        path: &Path,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<Self> {
        let source = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::with_origin(source, path.display().to_string(), bos_token, eos_token)
    }

    /// The template a run uses: the file `file` when given (a `--chat-template` flag), else
    /// the model's own `model` source (errors name `origin`, or "the model's chat template"),
    /// else none.
    pub fn select(
        file: Option<&Path>,
        model: Option<&str>,
        origin: Option<&str>,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<Option<Self>> {
        match (file, model) {
            (Some(p), _) => Self::from_file(p, bos_token, eos_token).map(Some),
            (None, Some(src)) => Self::with_origin(
                src,
                origin.unwrap_or("the model's chat template"),
                bos_token,
                eos_token,
            )
            .map(Some),
            (None, None) => Ok(None),
        }
    }

    /// [`ChatTemplate::new`] with `origin` (a file path, a model's key) named in every error.
    pub fn with_origin(
        source: impl Into<String>,
        origin: impl Into<String>,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<Self> {
        let (source, origin) = (source.into(), origin.into());
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.clone())
            .map_err(|e| DataError::TemplateSyntax {
                origin: origin.clone(),
                message: describe(&e),
            })?;
        Ok(Self {
            env,
            source,
            origin,
            bos_token: bos_token.map(str::to_string),
            eos_token: eos_token.map(str::to_string),
        })
    }

    /// The template source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Where the template came from (named in its errors).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Renders a conversation as `tokenizer.apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=...)` does.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, &serde_json::Map::new())
    }

    /// Like [`ChatTemplate::render`] with extra template variables (`date_string`, `tools`,
    /// `enable_thinking` ...), as the keyword arguments of `apply_chat_template`.
    pub fn render_with(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        let views: Vec<MessageView<'_>> = messages
            .iter()
            .map(|m| MessageView {
                role: m.role.as_str(),
                content: &m.content,
            })
            .collect();
        let mut ctx = std::collections::BTreeMap::<&str, Value>::new();
        ctx.insert("tools", Value::from(()));
        ctx.insert("documents", Value::from(()));
        for (k, v) in extra {
            ctx.insert(k, Value::from_serialize(v));
        }
        if let Some(b) = &self.bos_token {
            ctx.insert("bos_token", Value::from(b.as_str()));
        }
        if let Some(e) = &self.eos_token {
            ctx.insert("eos_token", Value::from(e.as_str()));
        }
        ctx.insert("messages", Value::from_serialize(&views));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| DataError::TemplateSyntax {
                origin: self.origin.clone(),
                message: describe(&e),
            })?;
        tmpl.render(Value::from_serialize(&ctx))
            .map_err(|e| DataError::TemplateRender {
                origin: self.origin.clone(),
                message: describe(&e),
            })
    }

    /// Fallback for models without a template: the Alpaca prompt
    /// (`### Instruction:` / `### Response:`), system message as the preamble, `eos_token` after
    /// each response.
    pub fn alpaca(eos_token: Option<&str>) -> Result<Self> {
        Self::with_origin(ALPACA, "<built-in Alpaca template>", None, eos_token)
    }

    /// Fallback for models without a template: Llama-2/Mistral style
    /// `<s>[INST] user [/INST] assistant</s>`, system message folded into the first instruction.
    pub fn inst(bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self> {
        Self::with_origin(INST, "<built-in [INST] template>", bos_token, eos_token)
    }
}

const ALPACA: &str = "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n\n' }}\
{% set loop_messages = messages[1:] %}{% else %}{{ 'Below is an instruction that describes a task. \
Write a response that appropriately completes the request.\n\n' }}{% set loop_messages = messages %}\
{% endif %}{% for message in loop_messages %}{% if message['role'] == 'user' %}\
{{ '### Instruction:\n' + message['content'] + '\n\n### Response:\n' }}\
{% elif message['role'] == 'assistant' %}{{ message['content'] + (eos_token or '') + '\n\n' }}\
{% endif %}{% endfor %}";

const INST: &str = "{{ bos_token or '' }}{% if messages[0]['role'] == 'system' %}\
{% set system = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}\
{% else %}{% set system = '' %}{% set loop_messages = messages %}{% endif %}\
{% for message in loop_messages %}{% if message['role'] == 'user' %}\
{{ '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}\
{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + (eos_token or '') }}\
{% endif %}{% endfor %}";

fn describe(e: &Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                let n = i64::try_from(v)?;
                Some(" ".repeat(usize::try_from(n.max(0)).unwrap_or(0)))
            }
        },
    };
    let separators = match separators.as_deref() {
        Some([item, key]) => Some((item.clone(), key.clone())),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair",
            ));
        }
        None => None,
    };
    let json = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let out = python_json(
        &json,
        indent.as_deref(),
        separators,
        ensure_ascii.unwrap_or(false),
        sort_keys.unwrap_or(false),
    );
    Ok(Value::from(out))
}

/// A chat template found next to a model, with its special tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSource {
    pub template: String,
    /// The file it was read from (`chat_template.jinja`, or `tokenizer_config.json`).
    pub origin: String,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

impl TemplateSource {
    /// Compiles it.
    pub fn compile(&self) -> Result<ChatTemplate> {
        ChatTemplate::with_origin(
            self.template.clone(),
            self.origin.clone(),
            self.bos_token.as_deref(),
            self.eos_token.as_deref(),
        )
    }
}

/// Reads the template of a Hugging Face model directory: `chat_template.jinja` when present
/// (it wins, as in transformers), else `tokenizer_config.json`'s `chat_template` (a string, or a
/// list of `{name, template}` where `name` picks one, default `"default"`). Special tokens come
/// from `tokenizer_config.json` (strings or `{"content": …}` objects).
pub fn load_chat_template(dir: &Path, name: Option<&str>) -> Result<TemplateSource> {
    let config_path = dir.join("tokenizer_config.json");
    let config: serde_json::Value = match std::fs::read_to_string(&config_path) {
        Ok(s) => serde_json::from_str(&s).map_err(|e| DataError::Malformed {
            at: crate::Location {
                file: config_path.clone(),
                line: e.line(),
            },
            format: "JSON",
            message: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Value::Null,
        Err(source) => {
            return Err(DataError::Io {
                path: config_path,
                source,
            });
        }
    };
    let jinja = dir.join("chat_template.jinja");
    let (template, origin) = if jinja.exists() {
        let text = std::fs::read_to_string(&jinja).map_err(|source| DataError::Io {
            path: jinja.clone(),
            source,
        })?;
        (text, jinja.display().to_string())
    } else {
        let text =
            template_from_config(&config, name).map_err(|field| DataError::MissingField {
                at: crate::Location {
                    file: config_path.clone(),
                    line: 1,
                },
                field,
            })?;
        (text, config_path.display().to_string())
    };
    let token = |key: &str| match config.get(key) {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(v) => v
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        None => None,
    };
    Ok(TemplateSource {
        template,
        origin,
        bos_token: token("bos_token"),
        eos_token: token("eos_token"),
    })
}

/// The `chat_template` of a parsed `tokenizer_config.json`; `Err(field)` when absent.
pub fn template_from_config(
    config: &serde_json::Value,
    name: Option<&str>,
) -> std::result::Result<String, String> {
    match config.get("chat_template") {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(serde_json::Value::Array(list)) => {
            let want = name.unwrap_or("default");
            list.iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(want))
                .and_then(|t| t.get("template").and_then(|s| s.as_str()))
                .map(str::to_string)
                .ok_or_else(|| format!("chat_template[name={want}]"))
        }
        _ => Err("chat_template".into()),
    }
}
