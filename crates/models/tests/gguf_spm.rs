//! A sentencepiece-style GGUF vocabulary (`tokenizer.ggml.model = llama`: byte tokens, scores,
//! no merges) encodes like transformers' GGUF tokenizer (`tools/fixtures/gguf_quants.py`).
#![allow(clippy::unwrap_used)]
use kiln_models::gguf::{GgufFile, tokenizer_from_gguf};
use serde_json::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/gguf");

#[test]
fn sentencepiece_vocabulary_encodes_like_transformers() {
    let file = GgufFile::open(format!("{DIR}/tiny_spm.gguf")).expect("fixture opens");
    let tokenizer = tokenizer_from_gguf(&file).expect("tokenizer");
    let text = std::fs::read_to_string(format!("{DIR}/tiny_spm.json")).expect("json fixture");
    let expected: Value = serde_json::from_str(&text).expect("json");
    let samples = expected["tokenizer_samples"].as_array().expect("samples");
    assert!(samples.len() >= 5);
    for sample in samples {
        let text = sample["text"].as_str().expect("text");
        let ids: Vec<u32> = serde_json::from_value(sample["ids"].clone()).expect("ids");
        let got = tokenizer.encode(text, true).expect("encodes");
        assert_eq!(got.get_ids(), ids.as_slice(), "{text:?}");
    }
    // Byte fallback and the `▁` decoder give the text back.
    let ids = tokenizer.encode("日本 é x", false).expect("encodes");
    assert_eq!(
        tokenizer.decode(ids.get_ids(), true).expect("decodes"),
        "日本 é x"
    );
}
