#![allow(clippy::unwrap_used)]
#![allow(dead_code)]
//! Shared test helpers: fixture paths and the tiny tokenizer.

use std::path::PathBuf;

pub fn fixtures() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/chat_templates"
    ))
}

pub fn tokenizer() -> tokenizers::Tokenizer {
    tokenizers::Tokenizer::from_file(fixtures().join("tokenizer.json")).expect("tokenizer fixture")
}

pub fn template(name: &str) -> String {
    std::fs::read_to_string(fixtures().join(format!("{name}.jinja"))).expect("template fixture")
}
