//! A tiny Phi-3 GGUF with a sentencepiece vocabulary (`tools/fixtures/phi3_gguf.py`): kiln builds
//! the tokenizer transformers builds from it (`phi3_tokenizer`: the prefix `▁` from a normalizer),
//! derives the same config, and the model loaded from the file gives transformers' logits.
#![allow(clippy::unwrap_used)]
mod common;
use common::{Reference, fixtures, max_abs_diff};
use kiln_models::gguf::{GgufFile, hf_config_from_gguf, tokenizer_from_gguf};
use kiln_models::{DecoderInput, Pretrained, default_device};
use serde_json::Value;

fn path(ext: &str) -> std::path::PathBuf {
    fixtures().join("gguf").join(format!("tiny_phi3.{ext}"))
}

fn expected() -> Value {
    let text = std::fs::read_to_string(path("json")).expect("json fixture");
    serde_json::from_str(&text).expect("json")
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).expect("ids")
}

#[test]
fn phi3_tokenizer_encodes_and_decodes_like_transformers() {
    let file = GgufFile::open(path("gguf")).expect("fixture opens");
    let tokenizer = tokenizer_from_gguf(&file).expect("tokenizer");
    let want = expected();
    let samples = want["tokenizer_samples"].as_array().expect("samples");
    assert!(samples.len() >= 15);
    for s in samples {
        let text = s["text"].as_str().expect("text");
        let with = tokenizer.encode(text, true).expect("encodes");
        assert_eq!(with.get_ids(), ids(&s["ids"]).as_slice(), "{text:?}");
        let tokens: Vec<String> = serde_json::from_value(s["tokens"].clone()).expect("tokens");
        assert_eq!(with.get_tokens(), tokens.as_slice(), "{text:?}");
        let without = tokenizer.encode(text, false).expect("encodes");
        assert_eq!(
            without.get_ids(),
            ids(&s["ids_no_special"]).as_slice(),
            "{text:?} without special tokens"
        );
        let decoded = tokenizer.decode(with.get_ids(), false).expect("decodes");
        assert_eq!(decoded, s["decoded"].as_str().expect("decoded"), "{text:?}");
        let skipped = tokenizer.decode(with.get_ids(), true).expect("decodes");
        assert_eq!(
            skipped,
            s["decoded_skip_special"].as_str().expect("decoded"),
            "{text:?} skipping special tokens"
        );
    }
    // The cases that tell Phi-3's rule from Llama's `Metaspace`: a leading space keeps its own `▁`,
    // and the text after a special token gets one.
    let tokens = |t: &str| tokenizer.encode(t, false).unwrap().get_tokens().to_vec();
    assert_eq!(tokens(" Hello"), ["▁", "▁Hello"]);
    assert_eq!(
        tokens("<|user|>\nHello"),
        ["<|user|>", "▁", "<0x0A>", "Hel", "lo"]
    );
}

#[test]
fn phi3_config_equals_transformers() {
    let file = GgufFile::open(path("gguf")).expect("fixture opens");
    let config = hf_config_from_gguf(&file).expect("config");
    let want = expected();
    let want = want["config"].as_object().expect("config object");
    let got = config.as_object().expect("object");
    for (key, value) in want {
        assert_eq!(got.get(key), Some(value), "{key}");
    }
    let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        extra.is_empty(),
        "keys transformers does not set: {extra:?}"
    );
}

#[test]
fn phi3_gguf_model_gives_transformers_logits() {
    let lm = Pretrained::load(&path("gguf"), &default_device()).expect("loads");
    let config = &lm.model.config;
    assert!(config.fused_qkv && config.fused_gate_up);
    assert_eq!(
        config.rotary_dim, config.head_dim,
        "rope.dimension_count is not read"
    );
    assert!(
        config
            .layer_attention
            .iter()
            .all(|k| *k == kiln_models::AttentionKind::Full),
        "transformers does not read phi3.attention.sliding_window"
    );
    assert_eq!(lm.extras.eos_token.as_deref(), Some("<|endoftext|>"));
    assert!(
        lm.extras
            .chat_template
            .as_deref()
            .is_some_and(|t| t.contains("<|assistant|>"))
    );
    assert!(
        lm.eos_token_ids()
            .contains(&lm.tokenizer.token_to_id("<|end|>").unwrap())
    );
    let reference = Reference::open(path("safetensors"));
    let want = expected();
    for (i, prompt) in want["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .enumerate()
    {
        let text = prompt["text"].as_str().expect("text");
        let special = prompt["add_special_tokens"].as_bool().expect("flag");
        let prompt_ids = ids(&prompt["ids"]);
        assert_eq!(lm.encode(text, special).unwrap(), prompt_ids, "{text:?}");
        let logits = lm
            .model
            .forward(&DecoderInput::single(&prompt_ids))
            .unwrap();
        let got: Vec<f32> = logits.into_data().try_into_vec().unwrap();
        let diff = max_abs_diff(&got, &reference.f32(&format!("prompt{i}")));
        assert!(diff <= 1e-4, "prompt {i}: max |Δ logit| = {diff}");
        println!(
            "prompt {i} ({} tokens): max |Δ logit| {diff:.2e}",
            prompt_ids.len()
        );
    }
}
