//! Tensor names: llama.cpp's (`blk.0.attn_q.weight`) to Hugging Face's
//! (`model.layers.0.self_attn.q_proj.weight`), for the Llama-family layout (`llama`, `qwen2`).
//!
//! The table is the one gguf-py's `TensorNameMap` gives transformers for these architectures.

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

/// The Hugging Face name of GGUF tensor `name`, or `None` if it is not part of the layout
/// (`rope_freqs.weight`, for instance, which transformers also ignores).
pub fn hf_name(name: &str) -> Option<String> {
    let (stem, suffix) = split_suffix(name)?;
    if let Some((layer, part)) = split_layer(stem, "blk.") {
        let (_, hf) = BLOCK.iter().find(|(g, _)| *g == part)?;
        return Some(format!("model.layers.{layer}.{hf}{suffix}"));
    }
    let (_, hf) = GLOBAL.iter().find(|(g, _)| *g == stem)?;
    Some(format!("{hf}{suffix}"))
}

/// The GGUF name of Hugging Face tensor `name` (inverse of [`hf_name`]).
pub fn gguf_name(name: &str) -> Option<String> {
    let (stem, suffix) = split_suffix(name)?;
    if let Some((layer, part)) = split_layer(stem, "model.layers.") {
        let (g, _) = BLOCK.iter().find(|(_, h)| *h == part)?;
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
