//! What transformers fills in before kiln reads a `config.json`: the text part of a multimodal
//! `gemma3` config (`text_config`), and the defaults of the family's config class
//! (`Gemma2Config`, `Gemma3TextConfig`, `Phi3Config`) for keys the file leaves out. Real Gemma 3
//! configs omit most text keys, and GGUF metadata omits `query_pre_attn_scalar` and friends.
use super::ModuleLayout;
use crate::error::{ModelError, Result};
use serde_json::{Value, json};
use std::path::Path;

/// `(key, default)` of `Gemma2Config` (transformers 5.23) that kiln reads.
fn gemma2() -> Value {
    json!({
        "vocab_size": 256000, "hidden_size": 2304, "intermediate_size": 9216,
        "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4,
        "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "pad_token_id": 0,
        "eos_token_id": 1, "bos_token_id": 2, "tie_word_embeddings": true,
        "attention_bias": false, "query_pre_attn_scalar": 256, "sliding_window": 4096,
        "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0
    })
}

/// Defaults of `Gemma3TextConfig` (transformers 5.23) that kiln reads; RoPE bases
/// (1e6 global, 1e4 local) and the sliding pattern (6) are filled where they are resolved.
fn gemma3_text() -> Value {
    json!({
        "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216,
        "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4,
        "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "pad_token_id": 0,
        "eos_token_id": 1, "bos_token_id": 2, "tie_word_embeddings": true,
        "attention_bias": false, "query_pre_attn_scalar": 256, "sliding_window": 4096,
        "final_logit_softcapping": null, "attn_logit_softcapping": null
    })
}

/// Defaults of `Phi3Config` (transformers 5.23) that change the model when absent.
fn phi3() -> Value {
    json!({
        "hidden_act": "silu", "rms_norm_eps": 1e-5, "tie_word_embeddings": false,
        "max_position_embeddings": 4096, "original_max_position_embeddings": 4096,
        "bos_token_id": 1, "eos_token_id": 32000, "pad_token_id": 32000
    })
}

/// The config transformers would build from `value`, and where its decoder sits: a `gemma3`
/// config is replaced by its `text_config` (model type `gemma3_text`) as
/// `Gemma3ForConditionalGeneration` runs it (ties the output to the embedding by the top-level
/// `tie_word_embeddings`, default true, and applies no `final_logit_softcapping`), and missing
/// keys get the family's defaults.
pub(super) fn normalise(mut value: Value, path: &Path) -> Result<(Value, ModuleLayout)> {
    let mut layout = ModuleLayout::CausalLm;
    if value.get("model_type").and_then(Value::as_str) == Some("gemma3") {
        let tie = value
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let text = value
            .get_mut("text_config")
            .map(Value::take)
            .filter(Value::is_object)
            .ok_or_else(|| ModelError::Config {
                path: path.to_path_buf(),
                key: "text_config".into(),
                reason: "a `gemma3` config needs its `text_config` object".into(),
            })?;
        value = text;
        value["model_type"] = json!("gemma3_text");
        value["tie_word_embeddings"] = json!(tie);
        value["final_logit_softcapping"] = Value::Null;
        layout = ModuleLayout::Gemma3Multimodal;
    }
    let defaults = match value.get("model_type").and_then(Value::as_str) {
        Some("gemma2") => gemma2(),
        Some("gemma3_text") => gemma3_text(),
        Some("phi3") => phi3(),
        _ => return Ok((value, layout)),
    };
    if let (Some(map), Value::Object(defaults)) = (value.as_object_mut(), defaults) {
        for (k, v) in defaults {
            map.entry(k).or_insert(v);
        }
    }
    Ok((value, layout))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn gemma3_text_config_is_taken_and_completed() {
        let v = json!({"model_type": "gemma3", "text_config": {"hidden_size": 640,
            "final_logit_softcapping": 30.0, "tie_word_embeddings": false}, "vision_config": {}});
        let (out, layout) = normalise(v, Path::new("config.json")).unwrap();
        assert_eq!(layout, ModuleLayout::Gemma3Multimodal);
        assert_eq!(out["model_type"], "gemma3_text");
        assert_eq!(out["hidden_size"], 640);
        assert_eq!(out["vocab_size"], 262208);
        // Gemma3ForConditionalGeneration: no final soft-cap, tied by the top-level flag.
        assert!(out["final_logit_softcapping"].is_null());
        assert_eq!(out["tie_word_embeddings"], true);
        assert!(out["attn_logit_softcapping"].is_null());
        let text = json!({"model_type": "gemma3_text", "final_logit_softcapping": 30.0});
        let (out, layout) = normalise(text, Path::new("config.json")).unwrap();
        assert_eq!(
            (out["final_logit_softcapping"].as_f64(), layout),
            (Some(30.0), ModuleLayout::CausalLm)
        );
        let err = normalise(json!({"model_type": "gemma3"}), Path::new("c.json")).unwrap_err();
        assert!(err.to_string().contains("text_config"), "{err}");
    }
}
