//! Model configuration: a serde mirror of Hugging Face `config.json`, parsed once into
//! [`DecoderConfig`], the knobs the one decoder of this crate understands.
//!
//! Families differ only in knobs (torchtune's "one decoder" approach): Gemma 2/3 turn on
//! `(1 + weight)` norms, the embedding scale, GeGLU, sandwich norms, soft-capping and
//! `query_pre_attn_scalar`; Gemma 3 adds q/k norms and a second RoPE for sliding layers; Phi-3
//! fuses `qkv_proj` and `gate_up_proj` and may rotate only part of each head.
mod defaults;
mod rope;

use crate::error::{ModelError, Result};
pub use rope::RopeParams;
use serde::Deserialize;
use std::path::Path;

/// The model families kiln implements, parsed from `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    /// `gemma2`.
    Gemma2,
    /// `gemma3_text`, or the language model of a multimodal `gemma3` ([`ModuleLayout`]).
    Gemma3,
    /// `phi3`.
    Phi3,
}

impl Family {
    /// Every `model_type` string kiln accepts.
    pub const SUPPORTED: &'static str = "llama, mistral, qwen2, gemma2, gemma3, gemma3_text, phi3";

    fn parse(model_type: &str) -> Option<Self> {
        match model_type {
            "llama" => Some(Self::Llama),
            "mistral" => Some(Self::Mistral),
            "qwen2" => Some(Self::Qwen2),
            "gemma2" => Some(Self::Gemma2),
            "gemma3_text" | "gemma3" => Some(Self::Gemma3),
            "phi3" => Some(Self::Phi3),
            _ => None,
        }
    }

    /// Gemma 2 or Gemma 3: `(1 + weight)` norms, scaled embeddings, sandwich norms.
    pub fn is_gemma(self) -> bool {
        matches!(self, Self::Gemma2 | Self::Gemma3)
    }

    /// The `model_type` string of `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Gemma2 => "gemma2",
            Self::Gemma3 => "gemma3_text",
            Self::Phi3 => "phi3",
        }
    }
}

/// The activation of the gated MLP, parsed from `hidden_act` / `hidden_activation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu` / `swish`: SwiGLU.
    Silu,
    /// `gelu_pytorch_tanh` / `gelu_new`: GeGLU with the tanh approximation (Gemma).
    GeluTanh,
    /// `gelu`: exact (erf) GELU.
    Gelu,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "silu" | "swish" => Some(Self::Silu),
            "gelu_pytorch_tanh" | "gelu_new" => Some(Self::GeluTanh),
            "gelu" => Some(Self::Gelu),
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
    /// Phi-3's LongRoPE (`longrope`, formerly `su`): per-frequency divisors, `short_factor` while
    /// the positions of a forward stay within `original_max_position_embeddings`, `long_factor`
    /// beyond; `cos`/`sin` are multiplied by `attention_factor`.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_position_embeddings: usize,
        attention_factor: f64,
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

/// Where the decoder sits in the checkpoint's module tree, which is also where PEFT adapters
/// name its modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModuleLayout {
    /// A text model (`*ForCausalLM`): `model.embed_tokens`, `model.layers.N.…`, `model.norm`,
    /// `lm_head`.
    #[default]
    CausalLm,
    /// The language model of a multimodal `gemma3` checkpoint (`Gemma3ForConditionalGeneration`):
    /// `model.language_model.embed_tokens`, `model.language_model.layers.N.…`, …, `lm_head`. Its
    /// vision tower (`model.vision_tower`) and projector (`model.multi_modal_projector`) are not
    /// loaded; text-only inputs do not use them.
    Gemma3Multimodal,
}

impl ModuleLayout {
    /// The module path of the decoder body: `model` or `model.language_model`.
    pub fn body(self) -> &'static str {
        match self {
            Self::CausalLm => "model",
            Self::Gemma3Multimodal => "model.language_model",
        }
    }
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
    /// RoPE base of full-attention layers (of every layer without [`Self::rope_local`]).
    pub rope_theta: f64,
    /// RoPE scaling of full-attention layers.
    pub rope_scaling: RopeScaling,
    /// RoPE of sliding-window layers when it differs (Gemma 3's `rope_local_base_freq`).
    pub rope_local: Option<RopeParams>,
    /// Channels of each head that rotate (`head_dim * partial_rotary_factor`); the rest pass.
    pub rotary_dim: usize,
    pub max_position_embeddings: usize,
    /// Activation of the gated MLP.
    pub activation: Activation,
    /// RMSNorm scales by `1 + weight` (Gemma) instead of `weight`.
    pub norm_unit_offset: bool,
    /// Embeddings are multiplied by this (Gemma: √hidden, rounded to f32).
    pub embed_scale: Option<f32>,
    /// Norms before and after both attention and MLP (Gemma's `pre_feedforward_layernorm`,
    /// `post_feedforward_layernorm`; `post_attention_layernorm` then normalises the attention
    /// output instead of the MLP input).
    pub sandwich_norms: bool,
    /// RMSNorm of each query and key head before RoPE (Gemma 3's `q_norm`, `k_norm`).
    pub qk_norm: bool,
    /// Multiplier of the attention scores: `query_pre_attn_scalar^-0.5` (Gemma) or
    /// `head_dim^-0.5`.
    pub attn_scale: f64,
    /// `cap · tanh(scores / cap)` before the mask (Gemma 2's `attn_logit_softcapping`).
    pub attn_softcap: Option<f64>,
    /// `cap · tanh(logits / cap)` on the output logits (`final_logit_softcapping`).
    pub final_softcap: Option<f64>,
    /// One `qkv_proj` instead of `q_proj`, `k_proj`, `v_proj` (Phi-3).
    pub fused_qkv: bool,
    /// One `gate_up_proj` (gate rows first) instead of `gate_proj`, `up_proj` (Phi-3).
    pub fused_gate_up: bool,
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
    /// Module paths of the checkpoint (and of PEFT adapters trained on it).
    pub layout: ModuleLayout,
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
    /// Gemma's name for the MLP activation.
    pub hidden_activation: Option<String>,
    /// Gemma: attention scores are scaled by `query_pre_attn_scalar^-0.5`.
    pub query_pre_attn_scalar: Option<f64>,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
    /// Gemma 3 (older configs): every `sliding_window_pattern`-th layer is global.
    pub sliding_window_pattern: Option<usize>,
    /// Gemma 3 (older configs): RoPE base of sliding layers.
    pub rope_local_base_freq: Option<f64>,
    /// Phi-3 and others (older configs): fraction of each head that rotates.
    pub partial_rotary_factor: Option<f64>,
    /// Phi-3: context length of pre-training, for LongRoPE.
    pub original_max_position_embeddings: Option<usize>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
    pad_token_id: Option<u32>,
    /// Set when the config is the `text_config` of a multimodal `gemma3` config.
    #[serde(skip)]
    pub layout: ModuleLayout,
}

/// The largest width (vocabulary, hidden, intermediate, heads, head size) a config may declare:
/// 2^24, 64 times the largest vocabulary in use (262,144), so products of two sizes fit in u64.
pub const MAX_DIM: usize = 1 << 24;
/// The most layers a config may declare (the largest released models have a few hundred).
pub const MAX_LAYERS: usize = 1 << 16;

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
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ModelError::Json {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Self::from_value(value, path)
    }

    /// Reads a parsed `config.json` (or the config derived from GGUF metadata), as transformers
    /// would: the `text_config` of a multimodal `gemma3` config (as its
    /// `Gemma3ForConditionalGeneration` runs it, see [`ModuleLayout::Gemma3Multimodal`]), and the
    /// family's defaults for missing keys.
    pub fn from_value(value: serde_json::Value, path: &Path) -> Result<Self> {
        let (value, layout) = defaults::normalise(value, path)?;
        let mut config: Self = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = match layout {
                ModuleLayout::CausalLm => e.path().to_string(),
                ModuleLayout::Gemma3Multimodal => format!("text_config.{}", e.path()),
            };
            let reason = e.into_inner().to_string();
            match key.as_str() {
                "." | "text_config.." => ModelError::Json {
                    path: path.to_path_buf(),
                    reason,
                },
                _ => ModelError::Config {
                    path: path.to_path_buf(),
                    key,
                    reason,
                },
            }
        })?;
        config.layout = layout;
        Ok(config)
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
        let (act_key, act) = if family.is_gemma() {
            ("hidden_activation", self.hidden_activation.as_deref())
        } else {
            ("hidden_act", self.hidden_act.as_deref())
        };
        let activation = match act {
            None => Activation::Silu,
            Some(name) => Activation::parse(name).ok_or_else(|| {
                bad(
                    act_key,
                    format!("`{name}` (supported: silu, gelu_pytorch_tanh, gelu_new, gelu)"),
                )
            })?,
        };
        let num_heads = self.num_attention_heads;
        let num_kv_heads = self.num_key_value_heads.unwrap_or(num_heads);
        if num_heads == 0 {
            return Err(bad(
                "num_attention_heads",
                "must be positive (GGUF: `<arch>.attention.head_count`)".into(),
            ));
        }
        if num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
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
        self.check_sizes(head_dim, path)?;
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err(bad(
                "rms_norm_eps",
                format!(
                    "{} is not a non-negative number (the norm would divide by NaN)",
                    self.rms_norm_eps
                ),
            ));
        }
        let rope = self.resolve_rope(family, path)?;
        let rotary_dim = (head_dim as f64 * rope.partial_rotary_factor) as usize;
        if rotary_dim == 0 || rotary_dim > head_dim || !rotary_dim.is_multiple_of(2) {
            return Err(bad(
                "partial_rotary_factor",
                format!(
                    "{} gives {rotary_dim} rotary channels of head_dim {head_dim}",
                    rope.partial_rotary_factor
                ),
            ));
        }
        for params in std::iter::once(&rope.global).chain(rope.local.as_ref()) {
            if let RopeScaling::LongRope {
                short_factor,
                long_factor,
                ..
            } = &params.scaling
                && (short_factor.len() != rotary_dim / 2 || long_factor.len() != rotary_dim / 2)
            {
                return Err(bad(
                    "rope_scaling",
                    format!(
                        "short_factor has {} and long_factor {} entries, expected rotary_dim / 2 = {}",
                        short_factor.len(),
                        long_factor.len(),
                        rotary_dim / 2
                    ),
                ));
            }
        }
        let layer_attention = self.layer_attention(family, path)?;
        let gemma = family.is_gemma();
        let attn_scale = match (gemma, self.query_pre_attn_scalar) {
            (true, Some(s)) if s > 0.0 => s.powf(-0.5),
            (true, Some(s)) => {
                return Err(bad(
                    "query_pre_attn_scalar",
                    format!("{s} must be positive"),
                ));
            }
            _ => (head_dim as f64).powf(-0.5),
        };
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
            rope_theta: rope.global.theta,
            rope_scaling: rope.global.scaling,
            rope_local: rope.local,
            rotary_dim,
            max_position_embeddings: self.max_position_embeddings,
            activation,
            norm_unit_offset: gemma,
            embed_scale: gemma.then(|| (self.hidden_size as f64).sqrt() as f32),
            sandwich_norms: gemma,
            qk_norm: family == Family::Gemma3,
            attn_scale,
            // transformers' Gemma 3 attention does not pass `attn_logit_softcapping` on.
            attn_softcap: self
                .attn_logit_softcapping
                .filter(|_| family == Family::Gemma2),
            final_softcap: self.final_logit_softcapping.filter(|_| gemma),
            fused_qkv: family == Family::Phi3,
            fused_gate_up: family == Family::Phi3,
            qkv_bias: family == Family::Qwen2 || self.attention_bias,
            o_bias: self.attention_bias,
            mlp_bias: self.mlp_bias,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            layer_attention,
            bos_token_id: self.bos_token_id,
            eos_token_ids,
            pad_token_id: self.pad_token_id,
            layout: self.layout,
        })
    }

    /// Sizes must be positive, and no larger than [`MAX_DIM`] ([`MAX_LAYERS`] layers): the
    /// loader checks every shape against the weights before allocating, but products of these
    /// sizes must not overflow first, and a per-layer table is built from the layer count.
    fn check_sizes(&self, head_dim: usize, path: &Path) -> Result<()> {
        let sizes = [
            ("vocab_size", self.vocab_size, MAX_DIM),
            ("hidden_size", self.hidden_size, MAX_DIM),
            ("intermediate_size", self.intermediate_size, MAX_DIM),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_DIM),
            (
                "num_key_value_heads",
                self.num_key_value_heads.unwrap_or(1),
                MAX_DIM,
            ),
            ("head_dim", head_dim, MAX_DIM),
        ];
        for (key, v, max) in sizes {
            let reason = if v == 0 {
                "must be positive".to_string()
            } else if v > max {
                format!("{v} is larger than kiln accepts ({max}); a corrupt config?")
            } else {
                continue;
            };
            return Err(ModelError::Config {
                path: path.to_path_buf(),
                key: key.into(),
                reason,
            });
        }
        Ok(())
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
            Family::Mistral | Family::Phi3 => match self.sliding_window {
                Some(w) => vec![AttentionKind::Sliding { window: w }; n],
                None => vec![AttentionKind::Full; n],
            },
            // Gemma 2 alternates sliding and global layers; Gemma 3 makes every
            // `sliding_window_pattern`-th layer global (default 6).
            Family::Gemma2 | Family::Gemma3 => {
                let w = window("sliding_window")?;
                let p = match family {
                    Family::Gemma2 => 2,
                    _ => self.sliding_window_pattern.unwrap_or(6),
                };
                if p == 0 {
                    return Err(ModelError::Config {
                        path: path.to_path_buf(),
                        key: "sliding_window_pattern".into(),
                        reason: "must be positive".into(),
                    });
                }
                (0..n)
                    .map(|i| {
                        if (i + 1) % p != 0 {
                            AttentionKind::Sliding { window: w }
                        } else {
                            AttentionKind::Full
                        }
                    })
                    .collect()
            }
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
        let zero = BASE.replace(r#""num_attention_heads": 2"#, r#""num_attention_heads": 0"#);
        let err = parse(&format!(r#"{{"model_type": "llama", {zero}}}"#));
        let msg = err.map(|_| ()).unwrap_err().to_string();
        assert!(msg.contains("`num_attention_heads`"), "{msg}");
        for eps in ["-1e-6", "-1"] {
            let err = parse(&format!(
                r#"{{"model_type": "llama", {BASE}, "rms_norm_eps": {eps}}}"#
            ));
            let msg = err.map(|_| ()).unwrap_err().to_string();
            assert!(msg.contains("rms_norm_eps"), "{eps}: {msg}");
        }
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

    #[test]
    fn gemma3_old_style_config_of_the_270m_model() {
        // google/gemma-3-270m's config.json (transformers 4 keys).
        let c = parse(
            r#"{"model_type": "gemma3_text", "vocab_size": 262144, "hidden_size": 640,
            "intermediate_size": 2048, "num_hidden_layers": 18, "num_attention_heads": 4,
            "num_key_value_heads": 1, "head_dim": 256, "query_pre_attn_scalar": 256,
            "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "rope_scaling": null,
            "sliding_window": 512, "hidden_activation": "gelu_pytorch_tanh"}"#,
        )
        .unwrap();
        assert_eq!(c.family, Family::Gemma3);
        assert_eq!(
            (c.rope_theta, c.rope_scaling.clone()),
            (1e6, RopeScaling::Default)
        );
        assert_eq!(c.rope_local.as_ref().unwrap().theta, 1e4);
        assert_eq!(c.activation, Activation::GeluTanh);
        assert!(c.tie_word_embeddings, "Gemma default");
        assert_eq!(c.final_softcap, None);
        // Pattern 6: layers 5, 11, 17 are global.
        let global: Vec<usize> = (0..18)
            .filter(|&i| c.layer_attention[i] == AttentionKind::Full)
            .collect();
        assert_eq!(global, vec![5, 11, 17]);
        assert_eq!(c.attn_scale, 1.0 / 16.0);
    }

    #[test]
    fn gemma3_scaling_applies_to_global_layers_only() {
        let c = parse(&format!(
            r#"{{"model_type": "gemma3_text", {BASE}, "num_key_value_heads": 1, "rope_scaling": {{"rope_type": "linear", "factor": 8.0}}}}"#
        ))
        .unwrap();
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 8.0 });
        assert_eq!(c.rope_local.unwrap().scaling, RopeScaling::Default);
    }

    #[test]
    fn phi3_su_scaling_becomes_longrope_with_transformers_attention_factor() {
        let c = parse(&format!(
            r#"{{"model_type": "phi3", {BASE}, "max_position_embeddings": 131072,
            "original_max_position_embeddings": 4096,
            "rope_scaling": {{"type": "su", "short_factor": [1.0, 1.0], "long_factor": [2.0, 3.0]}}}}"#
        ))
        .unwrap();
        let RopeScaling::LongRope {
            original_max_position_embeddings,
            attention_factor,
            ..
        } = c.rope_scaling
        else {
            panic!("{:?}", c.rope_scaling)
        };
        assert_eq!(original_max_position_embeddings, 4096);
        let want = (1.0 + (32.0f64).ln() / (4096.0f64).ln()).sqrt();
        assert!((attention_factor - want).abs() < 1e-12);
        let err = parse(&format!(
            r#"{{"model_type": "phi3", {BASE}, "rope_scaling": {{"type": "longrope", "short_factor": [1.0], "long_factor": [2.0]}}}}"#
        ))
        .unwrap_err();
        assert!(err.to_string().contains("short_factor has 1"), "{err}");
    }

    #[test]
    fn unknown_activation_is_a_typed_error() {
        let err = parse(&format!(
            r#"{{"model_type": "gemma2", {BASE}, "hidden_activation": "relu"}}"#
        ))
        .unwrap_err();
        assert!(err.to_string().contains("hidden_activation"), "{err}");
    }
}
