//! Tensor names: llama.cpp's (`blk.0.attn_q.weight`) to Hugging Face's
//! (`model.layers.0.self_attn.q_proj.weight`), per architecture: the Llama-family layout
//! (`llama`, `qwen2`), Gemma 2/3 (where `ffn_norm` is the pre-MLP norm and
//! `post_attention_norm` / `post_ffw_norm` the post-norms) and Phi-3 (fused `attn_qkv`, and
//! `ffn_up` holding the fused gate and up projections).
//!
//! The tables are the ones gguf-py's `TensorNameMap` gives transformers for these architectures.
use super::config::GgufArch;

/// Whole-model tensors: `(gguf, hf)` without the `.weight`/`.bias` suffix.
const GLOBAL: [(&str, &str); 3] = [
    ("token_embd", "model.embed_tokens"),
    ("output_norm", "model.norm"),
    ("output", "lm_head"),
];

/// Per-layer tensors: `(gguf after "blk.N.", hf after "model.layers.N.")`.
const BLOCK: [(&str, &str); 9] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

/// Gemma 2 / Gemma 3 per-layer tensors.
const GEMMA_BLOCK: [(&str, &str); 13] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("post_attention_norm", "post_attention_layernorm"),
    ("ffn_norm", "pre_feedforward_layernorm"),
    ("post_ffw_norm", "post_feedforward_layernorm"),
];

/// Phi-3 per-layer tensors.
const PHI3_BLOCK: [(&str, &str); 6] = [
    ("attn_qkv", "self_attn.qkv_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_up", "mlp.gate_up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

fn block(arch: GgufArch) -> &'static [(&'static str, &'static str)] {
    match arch {
        GgufArch::Llama | GgufArch::Qwen2 => &BLOCK,
        GgufArch::Gemma2 | GgufArch::Gemma3 => &GEMMA_BLOCK,
        GgufArch::Phi3 => &PHI3_BLOCK,
    }
}

/// Splits `name` into its stem and its `.weight`/`.bias` suffix.
fn split_suffix(name: &str) -> Option<(&str, &str)> {
    [".weight", ".bias"]
        .into_iter()
        .find_map(|s| name.strip_suffix(s).map(|stem| (stem, s)))
}

/// Splits `prefix` + `N.` + rest into `(N, rest)`.
fn split_layer<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let rest = name.strip_prefix(prefix)?;
    let (index, rest) = rest.split_once('.')?;
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((index.parse().ok()?, rest))
}

/// The Hugging Face name of GGUF tensor `name` in the Llama-family layout (see [`hf_name_for`]).
pub fn hf_name(name: &str) -> Option<String> {
    hf_name_for(GgufArch::Llama, name)
}

/// The GGUF name of Hugging Face tensor `name` in the Llama-family layout (see [`gguf_name_for`]).
pub fn gguf_name(name: &str) -> Option<String> {
    gguf_name_for(GgufArch::Llama, name)
}

/// The Hugging Face name of GGUF tensor `name` of architecture `arch`, or `None` if it is not
/// part of the layout (`rope_freqs.weight`, Phi-3's `rope_factors_long.weight`..., which
/// transformers also ignores).
pub fn hf_name_for(arch: GgufArch, name: &str) -> Option<String> {
    let (stem, suffix) = split_suffix(name)?;
    if let Some((layer, part)) = split_layer(stem, "blk.") {
        let (_, hf) = block(arch).iter().find(|(g, _)| *g == part)?;
        return Some(format!("model.layers.{layer}.{hf}{suffix}"));
    }
    let (_, hf) = GLOBAL.iter().find(|(g, _)| *g == stem)?;
    Some(format!("{hf}{suffix}"))
}

/// The GGUF name of Hugging Face tensor `name` (inverse of [`hf_name_for`]).
pub fn gguf_name_for(arch: GgufArch, name: &str) -> Option<String> {
    let (stem, suffix) = split_suffix(name)?;
    if let Some((layer, part)) = split_layer(stem, "model.layers.") {
        let (g, _) = block(arch).iter().find(|(_, h)| *h == part)?;
        return Some(format!("blk.{layer}.{g}{suffix}"));
    }
    let (g, _) = GLOBAL.iter().find(|(_, h)| *h == stem)?;
    Some(format!("{g}{suffix}"))
}

/// Whether GGUF tensor `name` is a q or k projection (weight or bias), whose rows llama.cpp
/// permutes for the llama architecture; `Some(true)` for q, `Some(false)` for k.
pub(crate) fn is_query_or_key(name: &str) -> Option<bool> {
    let (stem, _) = split_suffix(name)?;
    match split_layer(stem, "blk.")?.1 {
        "attn_q" => Some(true),
        "attn_k" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        let pairs = [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output_norm.weight", "model.norm.weight"),
            ("output.weight", "lm_head.weight"),
            (
                "blk.0.attn_q.weight",
                "model.layers.0.self_attn.q_proj.weight",
            ),
            (
                "blk.12.attn_k.bias",
                "model.layers.12.self_attn.k_proj.bias",
            ),
            (
                "blk.3.attn_v.weight",
                "model.layers.3.self_attn.v_proj.weight",
            ),
            (
                "blk.3.attn_output.weight",
                "model.layers.3.self_attn.o_proj.weight",
            ),
            (
                "blk.29.ffn_gate.weight",
                "model.layers.29.mlp.gate_proj.weight",
            ),
            ("blk.1.ffn_up.weight", "model.layers.1.mlp.up_proj.weight"),
            (
                "blk.1.ffn_down.weight",
                "model.layers.1.mlp.down_proj.weight",
            ),
            (
                "blk.1.attn_norm.weight",
                "model.layers.1.input_layernorm.weight",
            ),
            (
                "blk.1.ffn_norm.weight",
                "model.layers.1.post_attention_layernorm.weight",
            ),
        ];
        for (g, h) in pairs {
            assert_eq!(hf_name(g).as_deref(), Some(h), "{g}");
            assert_eq!(gguf_name(h).as_deref(), Some(g), "{h}");
        }
    }

    #[test]
    fn gemma_and_phi3_layouts() {
        let gemma = [
            (
                "blk.2.ffn_norm.weight",
                "model.layers.2.pre_feedforward_layernorm.weight",
            ),
            (
                "blk.2.post_attention_norm.weight",
                "model.layers.2.post_attention_layernorm.weight",
            ),
            (
                "blk.2.post_ffw_norm.weight",
                "model.layers.2.post_feedforward_layernorm.weight",
            ),
            (
                "blk.0.attn_q_norm.weight",
                "model.layers.0.self_attn.q_norm.weight",
            ),
        ];
        for (g, h) in gemma {
            assert_eq!(hf_name_for(GgufArch::Gemma3, g).as_deref(), Some(h), "{g}");
            assert_eq!(
                gguf_name_for(GgufArch::Gemma3, h).as_deref(),
                Some(g),
                "{h}"
            );
        }
        let phi3 = [
            (
                "blk.1.attn_qkv.weight",
                "model.layers.1.self_attn.qkv_proj.weight",
            ),
            (
                "blk.1.ffn_up.weight",
                "model.layers.1.mlp.gate_up_proj.weight",
            ),
            (
                "blk.1.ffn_norm.weight",
                "model.layers.1.post_attention_layernorm.weight",
            ),
        ];
        for (g, h) in phi3 {
            assert_eq!(hf_name_for(GgufArch::Phi3, g).as_deref(), Some(h), "{g}");
            assert_eq!(gguf_name_for(GgufArch::Phi3, h).as_deref(), Some(g), "{h}");
        }
        assert_eq!(
            hf_name_for(GgufArch::Phi3, "rope_factors_long.weight"),
            None
        );
    }

    #[test]
    fn unknown_names_are_not_mapped() {
        for g in [
            "rope_freqs.weight",
            "blk.x.attn_q.weight",
            "blk.-1.attn_q.weight",
            "blk.0.attn_qkv.weight",
            "token_embd",
            "blk..attn_q.weight",
        ] {
            assert_eq!(hf_name(g), None, "{g}");
        }
        assert_eq!(is_query_or_key("blk.0.attn_q.bias"), Some(true));
        assert_eq!(is_query_or_key("blk.0.attn_k.weight"), Some(false));
        assert_eq!(is_query_or_key("blk.0.attn_v.weight"), None);
    }
}
