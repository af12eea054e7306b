//! A tiny llama GGUF written by gguf-py with llama.cpp's q/k permutation
//! (`tools/fixtures/gguf_quants.py`): Hugging Face names and layout, un-permuted weights, the
//! config and the tokenizer transformers derives from the same file.
#![allow(clippy::unwrap_used)]
use kiln_models::ModelError;
use kiln_models::WeightSource;
use kiln_models::gguf::{
    GgufFile, GgufWeights, chat_template, hf_config_from_gguf, tokenizer_from_gguf,
};
use safetensors::SafeTensors;
use serde_json::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/gguf");

fn open() -> GgufFile {
    GgufFile::open(format!("{DIR}/tiny_llama_reader_only.gguf")).expect("fixture opens")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(format!("{DIR}/tiny_llama.json")).expect("json fixture");
    serde_json::from_str(&text).expect("json")
}

#[test]
fn weights_are_hf_named_and_unpermuted() {
    let weights = GgufWeights::new(open()).expect("weights");
    let bytes = std::fs::read(format!("{DIR}/tiny_llama.safetensors")).expect("expected weights");
    let reference = SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut names = weights.names();
    names.sort();
    let mut want_names: Vec<String> = reference.names().into_iter().map(str::to_owned).collect();
    want_names.sort();
    assert_eq!(
        names, want_names,
        "HF names, with lm_head (output.weight is present)"
    );
    assert_eq!(weights.unmapped(), vec!["rope_freqs.weight"]);
    for name in &names {
        let view = reference.tensor(name).expect("tensor");
        assert_eq!(weights.shape(name).as_deref(), Some(view.shape()), "{name}");
        let want: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(weights.load_f32(name).expect("loads"), want, "{name}");
    }
    assert_eq!(
        weights
            .dtype("model.layers.0.self_attn.q_proj.weight")
            .as_deref(),
        Some("Q8_0")
    );
    assert!(weights.load_f32("lm_head.bias").is_err());
}

#[test]
fn config_equals_transformers() {
    let config = hf_config_from_gguf(&open()).expect("config");
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
fn tokenizer_encodes_like_transformers() {
    let file = open();
    let tokenizer = tokenizer_from_gguf(&file).expect("tokenizer");
    let want = expected();
    for sample in want["tokenizer_samples"].as_array().expect("samples") {
        let text = sample["text"].as_str().expect("text");
        let ids: Vec<u32> = serde_json::from_value(sample["ids"].clone()).expect("ids");
        let got = tokenizer.encode(text, true).expect("encodes");
        assert_eq!(got.get_ids(), ids.as_slice(), "{text:?}");
    }
    assert_eq!(
        chat_template(&file).as_deref(),
        Some("{{ messages[0]['content'] }}")
    );
}

/// The fixture's bytes with metadata string `from` replaced by `to` (same length).
fn patched(from: &str, to: &str) -> tempfile::NamedTempFile {
    assert_eq!(from.len(), to.len());
    let mut bytes = std::fs::read(format!("{DIR}/tiny_llama_reader_only.gguf")).expect("fixture");
    let at = bytes
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .expect("string in fixture");
    bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
    let f = tempfile::Builder::new()
        .suffix(".gguf")
        .tempfile()
        .expect("temp");
    std::fs::write(f.path(), bytes).expect("write");
    f
}

#[test]
fn unsupported_architecture_is_a_typed_error() {
    let f = patched("\x05\0\0\0\0\0\0\0llama", "\x05\0\0\0\0\0\0\0gemma");
    let file = GgufFile::open(f.path()).expect("still a valid GGUF");
    let err = hf_config_from_gguf(&file).expect_err("gemma is not supported yet");
    assert!(
        matches!(err, ModelError::UnsupportedModelType { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("gemma"), "{err}");
    assert!(matches!(
        GgufWeights::new(file),
        Err(ModelError::UnsupportedModelType { .. })
    ));
}

#[test]
fn missing_hyper_parameter_names_the_key() {
    let f = patched("llama.block_count", "llama.block_cOunt");
    let file = GgufFile::open(f.path()).expect("valid GGUF");
    let err = hf_config_from_gguf(&file).expect_err("no block count");
    assert!(err.to_string().contains("llama.block_count"), "{err}");
}

#[test]
fn sentencepiece_tokenizer_is_a_clear_error() {
    let f = patched("\x04\0\0\0\0\0\0\0gpt2", "\x04\0\0\0\0\0\0\0lama");
    let file = GgufFile::open(f.path()).expect("valid GGUF");
    let err = tokenizer_from_gguf(&file).expect_err("unknown model");
    assert!(matches!(err, ModelError::Tokenizer { .. }), "{err}");
    assert!(err.to_string().contains("lama"), "{err}");
}

#[test]
fn missing_merges_names_the_key() {
    let f = patched("tokenizer.ggml.merges", "tokenizer.ggml.merged");
    let file = GgufFile::open(f.path()).expect("valid GGUF");
    let err = tokenizer_from_gguf(&file).expect_err("no merges");
    assert!(err.to_string().contains("tokenizer.ggml.merges"), "{err}");
}

#[test]
fn tied_model_has_no_lm_head() {
    let f = patched(
        "\x0d\0\0\0\0\0\0\0output.weight",
        "\x0d\0\0\0\0\0\0\0outpux.weight",
    );
    let file = GgufFile::open(f.path()).expect("valid GGUF");
    assert_eq!(
        hf_config_from_gguf(&file).expect("config")["tie_word_embeddings"],
        true
    );
    let weights = GgufWeights::new(file).expect("weights");
    assert!(!weights.names().iter().any(|n| n == "lm_head.weight"));
}
