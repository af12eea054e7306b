//! The Hugging Face `config.json` a GGUF file's metadata stands for, derived as transformers
//! derives it (`load_gguf_checkpoint` with `GGUF_CONFIG_MAPPING` of `integrations/ggml.py`).
use super::file::GgufFile;
use crate::error::{ModelError, Result};
use serde_json::{Map, Value};

/// The GGUF architectures (`general.architecture`) kiln reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufArch {
    /// `llama` (also SmolLM2, and Mistral files converted by llama.cpp): q/k rows are permuted.
    Llama,
    /// `qwen2`: q/k/v biases, no permutation.
    Qwen2,
    /// `gemma2`: norms stored as `1 + weight`.
    Gemma2,
    /// `gemma3` (text only; `gemma3_text` in transformers): norms stored as `1 + weight`.
    Gemma3,
    /// `phi3`: fused `attn_qkv` and gate/up in `ffn_up`.
    Phi3,
}

impl GgufArch {
    /// Parses `general.architecture` of `file`.
    ///
    /// # Errors
    /// [`ModelError::UnsupportedModelType`] for another architecture; [`ModelError::GgufKey`] if
    /// the key is missing or not a string.
    pub fn of(file: &GgufFile) -> Result<Self> {
        match file.architecture()? {
            "llama" => Ok(Self::Llama),
            "qwen2" => Ok(Self::Qwen2),
            "gemma2" => Ok(Self::Gemma2),
            "gemma3" => Ok(Self::Gemma3),
            "phi3" => Ok(Self::Phi3),
            other => Err(ModelError::UnsupportedModelType {
                path: file.path().to_path_buf(),
                model_type: format!("{other} (GGUF general.architecture)"),
                supported: "llama, qwen2, gemma2, gemma3, phi3".into(),
            }),
        }
    }

    /// The metadata key prefix (`llama`).
    pub fn key(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Gemma2 => "gemma2",
            Self::Gemma3 => "gemma3",
            Self::Phi3 => "phi3",
        }
    }

    /// The `model_type` transformers gives the derived config (`gemma3` files hold only the text
    /// model: `gemma3_text`).
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Gemma3 => "gemma3_text",
            other => other.key(),
        }
    }

    /// Whether the file stores RMSNorm weights as `1 + weight` (transformers'
    /// `Gemma2TensorProcessor` subtracts 1 from every `*norm.weight`).
    pub fn norms_offset_by_one(self) -> bool {
        matches!(self, Self::Gemma2 | Self::Gemma3)
    }
}

/// `(GGUF key after "<arch>.", config.json key)`, in transformers' order. Gemma files add
/// `attention.sliding_window`; transformers reads no other key of theirs (soft-caps,
/// `query_pre_attn_scalar`, the local RoPE base and the layer pattern get its config defaults).
const ARCH_KEYS: [(&str, &str); 10] = [
    ("context_length", "max_position_embeddings"),
    ("block_count", "num_hidden_layers"),
    ("feed_forward_length", "intermediate_size"),
    ("embedding_length", "hidden_size"),
    ("rope.freq_base", "rope_theta"),
    ("attention.head_count", "num_attention_heads"),
    ("attention.head_count_kv", "num_key_value_heads"),
    ("attention.layer_norm_rms_epsilon", "rms_norm_eps"),
    ("vocab_size", "vocab_size"),
    ("attention.sliding_window", "sliding_window"),
];

/// Keys without which no decoder can be built.
const REQUIRED: [&str; 4] = [
    "block_count",
    "embedding_length",
    "feed_forward_length",
    "attention.head_count",
];

/// `(GGUF key, config.json key)` of the special token ids.
const TOKEN_KEYS: [(&str, &str); 4] = [
    ("tokenizer.ggml.bos_token_id", "bos_token_id"),
    ("tokenizer.ggml.eos_token_id", "eos_token_id"),
    ("tokenizer.ggml.unknown_token_id", "unk_token_id"),
    ("tokenizer.ggml.padding_token_id", "pad_token_id"),
];

/// The Hugging Face `config.json` equivalent of `file`'s metadata.
///
/// As transformers: `model_type` from `general.architecture` (`mistral` for a llama file whose
/// `general.name` is exactly `mistral`), the hyper-parameters of `ARCH_KEYS`, `head_dim` from
/// `llama.rope.dimension_count`, `vocab_size` from the metadata or else the token list,
/// `tie_word_embeddings` when there is no `output.weight`, and the special token ids.
/// Beyond transformers: `head_dim` from `<arch>.attention.key_length` when present, `vocab_size`
/// from the embedding rows as a last resort, and `rope_scaling` from `<arch>.rope.scaling.*`
/// (transformers drops it for llama files, which changes the model).
///
/// # Errors
/// [`ModelError::UnsupportedModelType`] for an architecture other than llama/qwen2;
/// [`ModelError::GgufKey`] if a required key is missing or has the wrong type.
pub fn hf_config_from_gguf(file: &GgufFile) -> Result<Value> {
    let arch = GgufArch::of(file)?;
    let prefix = arch.key();
    let key = |k: &str| format!("{prefix}.{k}");
    for k in REQUIRED {
        if file.get(&key(k)).is_none() {
            return Err(file.key_error(&key(k), "missing (needed to build the model)"));
        }
    }
    let mut config = Map::new();
    config.insert(
        "tie_word_embeddings".into(),
        Value::Bool(file.tensor("output.weight").is_none()),
    );
    let is_mistral = arch == GgufArch::Llama && file.get_str("general.name")? == Some("mistral");
    let model_type = if is_mistral {
        "mistral"
    } else {
        arch.model_type()
    };
    config.insert("model_type".into(), model_type.into());
    for (gguf_key, hf_key) in ARCH_KEYS {
        if gguf_key == "attention.sliding_window" && !arch.norms_offset_by_one() {
            continue; // read for Gemma only, as transformers' GGUF_CONFIG_MAPPING does
        }
        if let Some(v) = file.get(&key(gguf_key)) {
            config.insert(hf_key.into(), scalar(file, &key(gguf_key), v.to_json())?);
        }
    }
    let head_dim = match arch {
        GgufArch::Llama => file.get(&key("rope.dimension_count")),
        _ => None,
    };
    let head_dim = file.get(&key("attention.key_length")).or(head_dim);
    if let Some(v) = head_dim {
        config.insert("head_dim".into(), v.to_json());
    }
    for (gguf_key, hf_key) in TOKEN_KEYS {
        if let Some(v) = file.get(gguf_key) {
            config.insert(hf_key.into(), scalar(file, gguf_key, v.to_json())?);
        }
    }
    if !config.contains_key("vocab_size") {
        let n_tokens = file
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(<[_]>::len);
        let rows = file.tensor("token_embd.weight").map(|t| t.shape()[0]);
        match n_tokens.or(rows) {
            Some(n) => config.insert("vocab_size".into(), n.into()),
            None => return Err(file.key_error("tokenizer.ggml.tokens", "missing: no vocab size")),
        };
    }
    if let Some(scaling) = rope_scaling(file, prefix)? {
        config.insert("rope_scaling".into(), scaling);
    }
    Ok(Value::Object(config))
}

/// `e` blamed on the GGUF metadata key of `file` that the config.json key it names was derived
/// from (`num_attention_heads` -> `llama.attention.head_count`); other errors unchanged.
pub(crate) fn blame_gguf_key(file: &GgufFile, e: ModelError) -> ModelError {
    let ModelError::Config { path, key, reason } = e else {
        return e;
    };
    let Ok(arch) = GgufArch::of(file) else {
        return ModelError::Config { path, key, reason };
    };
    let prefix = arch.key();
    let from = |k: &str| format!("{prefix}.{k}");
    let gguf = match key.as_str() {
        "head_dim" if file.get(&from("attention.key_length")).is_some() => {
            Some(from("attention.key_length"))
        }
        "head_dim" => Some(from("rope.dimension_count")),
        hf => ARCH_KEYS
            .iter()
            .find(|(_, h)| *h == hf)
            .map(|(g, _)| from(g))
            .or_else(|| {
                TOKEN_KEYS
                    .iter()
                    .find(|(_, h)| *h == hf)
                    .map(|(g, _)| g.to_string())
            }),
    };
    match gguf {
        Some(gguf) => ModelError::GgufKey {
            path,
            key: gguf,
            reason: format!("{reason} (as config.json `{key}`)"),
        },
        None => ModelError::Config { path, key, reason },
    }
}

/// Rejects arrays and strings where config.json wants a number.
fn scalar(file: &GgufFile, key: &str, v: Value) -> Result<Value> {
    match v {
        Value::Number(_) => Ok(v),
        other => Err(file.key_error(key, format!("expected a number, found {other}"))),
    }
}

/// `{"rope_type": ..., "factor": ..., "original_max_position_embeddings": ...}` from
/// `<arch>.rope.scaling.{type,factor,original_context_length}`, if a scaling other than `none`.
fn rope_scaling(file: &GgufFile, prefix: &str) -> Result<Option<Value>> {
    let Some(kind) = file.get_str(&format!("{prefix}.rope.scaling.type"))? else {
        return Ok(None);
    };
    if kind == "none" {
        return Ok(None);
    }
    let factor_key = format!("{prefix}.rope.scaling.factor");
    let factor: f64 = file.require(&factor_key)?;
    let mut scaling = Map::new();
    scaling.insert("rope_type".into(), kind.into());
    scaling.insert("factor".into(), factor.into());
    let original = format!("{prefix}.rope.scaling.original_context_length");
    if let Some(n) = file.get_as::<u64>(&original)? {
        scaling.insert("original_max_position_embeddings".into(), n.into());
    }
    Ok(Some(Value::Object(scaling)))
}

/// The chat template (`tokenizer.chat_template`), if the file has one.
pub fn chat_template(file: &GgufFile) -> Option<String> {
    file.get_str("tokenizer.chat_template")
        .ok()
        .flatten()
        .map(str::to_owned)
}
