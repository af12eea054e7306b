//! Model configuration: a serde mirror of Hugging Face `config.json`, parsed once into
//! [`DecoderConfig`], the knobs the one decoder of this crate understands.
use crate::error::{ModelError, Result};
use serde::Deserialize;
use std::path::Path;

/// The model families kiln implements, parsed from `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
}

impl Family {
    /// Every `model_type` string kiln accepts.
    pub const SUPPORTED: &'static str = "llama, mistral, qwen2";

    fn parse(model_type: &str) -> Option<Self> {
        match model_type {
            "llama" => Some(Self::Llama),
            "mistral" => Some(Self::Mistral),
            "qwen2" => Some(Self::Qwen2),
            _ => None,
        }
    }
}

/// How rotary frequencies are rescaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// Which tokens a layer's attention may see besides the causal constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKind {
    /// Every earlier token.
    Full,
    /// Only the last `window` tokens, the query's own included.
    Sliding { window: usize },
}

/// The decoder's knobs, resolved from a Hugging Face config.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    /// q, k and v projections carry a bias (Qwen2, Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// The output projection carries a bias (Llama with `attention_bias`).
    pub o_bias: bool,
    /// gate/up/down carry a bias (Llama with `mlp_bias`).
    pub mlp_bias: bool,
    /// `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Attention kind of each layer.
    pub layer_attention: Vec<AttentionKind>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

/// `eos_token_id` is an int or a list of ints in the wild.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

/// A serde mirror of the `config.json` fields kiln reads. Unknown fields are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<serde_json::Value>,
    /// transformers 5 moves `rope_theta` and scaling here.
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    pub tie_word_embeddings: Option<bool>,
    pub sliding_window: Option<usize>,
    pub use_sliding_window: Option<bool>,
    pub max_window_layers: Option<usize>,
    pub layer_types: Option<Vec<String>>,
    pub hidden_act: Option<String>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
    pad_token_id: Option<u32>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    2048
}

impl HfConfig {
    /// Reads and parses `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses `config.json` text; `path` is used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| ModelError::Json {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Resolves the decoder knobs, checking that the values fit together.
    pub fn to_decoder_config(&self, path: &Path) -> Result<DecoderConfig> {
        let bad = |key: &str, reason: String| ModelError::Config {
            path: path.to_path_buf(),
            key: key.into(),
            reason,
        };
        let family =
            Family::parse(&self.model_type).ok_or_else(|| ModelError::UnsupportedModelType {
                path: path.to_path_buf(),
                model_type: self.model_type.clone(),
                supported: Family::SUPPORTED.into(),
            })?;
        if let Some(act) = &self.hidden_act
            && act != "silu"
        {
            return Err(bad("hidden_act", format!("`{act}` (only `silu`)")));
        }
        let num_heads = self.num_attention_heads;
        let num_kv_heads = self.num_key_value_heads.unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
            return Err(bad(
                "num_key_value_heads",
                format!("{num_kv_heads} must divide num_attention_heads {num_heads}"),
            ));
        }
        let head_dim = match self.head_dim {
            Some(d) => d,
            None if self.hidden_size.is_multiple_of(num_heads) => self.hidden_size / num_heads,
            None => {
                return Err(bad(
                    "hidden_size",
                    format!("{} not divisible by {num_heads} heads", self.hidden_size),
                ));
            }
        };
        if head_dim % 2 != 0 {
            return Err(bad("head_dim", format!("{head_dim} must be even for RoPE")));
        }
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
        ] {
            if v == 0 {
                return Err(bad(key, "must be positive".into()));
            }
        }
        let (rope_theta, rope_scaling) = self.rope(path)?;
        let layer_attention = self.layer_attention(family, path)?;
        let eos_token_ids = match &self.eos_token_id {
            None => vec![],
            Some(OneOrMany::One(id)) => vec![*id],
            Some(OneOrMany::Many(ids)) => ids.clone(),
        };
        Ok(DecoderConfig {
            family,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: self.max_position_embeddings,
            qkv_bias: family == Family::Qwen2 || self.attention_bias,
            o_bias: self.attention_bias,
            mlp_bias: self.mlp_bias,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            layer_attention,
            bos_token_id: self.bos_token_id,
            eos_token_ids,
            pad_token_id: self.pad_token_id,
        })
    }

    /// `rope_theta` and scaling, from the top level or transformers 5's `rope_parameters`.
    fn rope(&self, path: &Path) -> Result<(f64, RopeScaling)> {
        let params = self.rope_parameters.as_ref();
        let theta = self
            .rope_theta
            .or_else(|| {
                params
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(|v| v.as_f64())
            })
            .unwrap_or(10_000.0);
        let scaling = self.rope_scaling.as_ref().or(params);
        let scaling = match scaling {
            None | Some(serde_json::Value::Null) => RopeScaling::Default,
            Some(v) => parse_rope_scaling(v, path)?,
        };
        Ok((theta, scaling))
    }

    fn layer_attention(&self, family: Family, path: &Path) -> Result<Vec<AttentionKind>> {
        let n = self.num_hidden_layers;
        let window = |key: &str| {
            self.sliding_window.ok_or_else(|| ModelError::Config {
                path: path.to_path_buf(),
                key: key.into(),
                reason: "sliding attention requested but `sliding_window` is missing".into(),
            })
        };
        if let Some(types) = &self.layer_types {
            if types.len() != n {
                return Err(ModelError::Config {
                    path: path.to_path_buf(),
                    key: "layer_types".into(),
                    reason: format!("{} entries for {n} layers", types.len()),
                });
            }
            return types
                .iter()
                .map(|t| match t.as_str() {
                    "full_attention" => Ok(AttentionKind::Full),
                    "sliding_attention" => Ok(AttentionKind::Sliding {
                        window: window("layer_types")?,
                    }),
                    other => Err(ModelError::Config {
                        path: path.to_path_buf(),
                        key: "layer_types".into(),
                        reason: format!("unknown layer type `{other}`"),
                    }),
                })
                .collect();
        }
        let kinds = match family {
            Family::Mistral => match self.sliding_window {
                Some(w) => vec![AttentionKind::Sliding { window: w }; n],
                None => vec![AttentionKind::Full; n],
            },
            Family::Qwen2 if self.use_sliding_window == Some(true) => {
                let w = window("sliding_window")?;
                let first = self.max_window_layers.unwrap_or(n);
                (0..n)
                    .map(|i| {
                        if i >= first {
                            AttentionKind::Sliding { window: w }
                        } else {
                            AttentionKind::Full
                        }
                    })
                    .collect()
            }
            _ => vec![AttentionKind::Full; n],
        };
        Ok(kinds)
    }
}

fn parse_rope_scaling(v: &serde_json::Value, path: &Path) -> Result<RopeScaling> {
    let bad = |reason: String| ModelError::Config {
        path: path.to_path_buf(),
        key: "rope_scaling".into(),
        reason,
    };
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let num = |key: &str| {
        v.get(key)
            .and_then(|x| x.as_f64())
            .ok_or_else(|| bad(format!("`{kind}` scaling needs `{key}`")))
    };
    match kind {
        "default" => Ok(RopeScaling::Default),
        "linear" => Ok(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        }),
        other => Err(bad(format!(
            "rope type `{other}` is not supported (default, linear, llama3)"
        ))),
    }
}

impl DecoderConfig {
    /// Reads `config.json` and resolves it.
    pub fn from_file(path: &Path) -> Result<Self> {
        HfConfig::from_file(path)?.to_decoder_config(path)
    }

    /// Query heads per key/value head.
    pub fn kv_groups(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<DecoderConfig> {
        let p = Path::new("config.json");
        HfConfig::from_json_str(json, p)?.to_decoder_config(p)
    }

    const BASE: &str = r#""vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 2, "num_attention_heads": 2"#;

    #[test]
    fn rope_parameters_of_transformers_5_are_read() {
        let c = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "rope_parameters": {{"rope_type": "linear", "rope_theta": 5000.0, "factor": 2.0}}}}"#
        ))
        .unwrap();
        assert_eq!(c.rope_theta, 5000.0);
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 2.0 });
        assert_eq!(c.num_kv_heads, 2);
        assert_eq!(c.head_dim, 4);
    }

    #[test]
    fn unknown_model_type_is_a_typed_error() {
        let err = parse(&format!(r#"{{"model_type": "bert", {BASE}}}"#)).unwrap_err();
        assert!(
            matches!(err, ModelError::UnsupportedModelType { ref model_type, .. } if model_type == "bert")
        );
    }

    #[test]
    fn bad_gqa_is_rejected_naming_the_key() {
        let err = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "num_key_value_heads": 3}}"#
        ))
        .unwrap_err();
        assert!(err.to_string().contains("num_key_value_heads"), "{err}");
    }

    #[test]
    fn mistral_window_and_qwen2_bias() {
        let m = parse(&format!(
            r#"{{"model_type": "mistral", {BASE}, "sliding_window": 4}}"#
        ))
        .unwrap();
        assert_eq!(
            m.layer_attention,
            vec![AttentionKind::Sliding { window: 4 }; 2]
        );
        let q = parse(&format!(
            r#"{{"model_type": "qwen2", {BASE}, "eos_token_id": [1, 2]}}"#
        ))
        .unwrap();
        assert!(q.qkv_bias && !q.o_bias);
        assert_eq!(q.eos_token_ids, vec![1, 2]);
        assert_eq!(q.layer_attention, vec![AttentionKind::Full; 2]);
    }
}
