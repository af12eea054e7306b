//! Tokenizer and chat template of a Hugging Face model directory.
use crate::error::{ModelError, Result};
use serde_json::Value;
use std::path::Path;
use tokenizers::Tokenizer;

/// Special tokens and the chat template found next to a tokenizer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenizerExtras {
    /// Jinja chat template, if the model has one.
    pub chat_template: Option<String>,
    /// Where the chat template was read from (a file, or a GGUF key), for its errors.
    pub chat_template_origin: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
}

/// Loads `dir/tokenizer.json`.
pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Err(ModelError::io(
            &path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "tokenizer.json not found: text needs the model's tokenizer (work on token ids \
                 loads the model alone: `CausalLm::load`, `score --ids-json`, `bench`)",
            ),
        ));
    }
    Tokenizer::from_file(&path).map_err(|e| ModelError::Tokenizer {
        path,
        reason: e.to_string(),
    })
}

/// A special token in `tokenizer_config.json` is a string or an `AddedToken` object.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    }
}

/// Reads the chat template (`chat_template.jinja`, else `tokenizer_config.json`'s
/// `chat_template`: a string, or a list of `{name, template}` of which `default` is taken)
/// and the special tokens of `tokenizer_config.json`. Missing files give empty extras.
pub fn load_extras(dir: &Path) -> Result<TokenizerExtras> {
    let mut extras = TokenizerExtras::default();
    let config_path = dir.join("tokenizer_config.json");
    if config_path.is_file() {
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| ModelError::io(&config_path, e))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| ModelError::Json {
            path: config_path.clone(),
            reason: e.to_string(),
        })?;
        extras.bos_token = token_string(json.get("bos_token"));
        extras.eos_token = token_string(json.get("eos_token"));
        extras.pad_token = token_string(json.get("pad_token"));
        extras.chat_template = match json.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or_else(|| list.first())
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(str::to_string),
            _ => None,
        };
        if extras.chat_template.is_some() {
            extras.chat_template_origin = Some(config_path.display().to_string());
        }
    }
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        extras.chat_template =
            Some(std::fs::read_to_string(&jinja).map_err(|e| ModelError::io(&jinja, e))?);
        extras.chat_template_origin = Some(jinja.display().to_string());
    }
    Ok(extras)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn template_list_prefers_default_and_tokens_may_be_objects() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"eos_token": {"content": "</s>", "lstrip": false}, "bos_token": "<s>",
               "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
        )
        .unwrap();
        let e = load_extras(dir.path()).unwrap();
        assert_eq!(e.chat_template.as_deref(), Some("D"));
        assert_eq!(e.eos_token.as_deref(), Some("</s>"));
        assert_eq!(e.bos_token.as_deref(), Some("<s>"));
    }

    #[test]
    fn broken_tokenizer_config_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer_config.json"), "{not json").unwrap();
        let err = load_extras(dir.path()).unwrap_err();
        assert!(err.to_string().contains("tokenizer_config.json"), "{err}");
    }
}
