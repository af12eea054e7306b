//! kiln-data's byte-level BPE encoder on tokenizers kiln-models builds from GGUF files: the
//! real SmolLM2-135M-Instruct's (49,152 tokens) and the tiny fixture's give `tokenizers`' ids,
//! with offsets that tile the text, on transformers' samples, generated chats rendered with
//! SmolLM2's template, adversarial Unicode and long inputs (kiln-data's `tests/bpe_check`).
//! Sentencepiece tokenizers are left to `tokenizers`.
//!
//! The SmolLM2 part needs the model in kiln's cache (`tools/fetch_model.sh`; CI fetches it and
//! sets `KILN_REQUIRE_MODEL=1`, which turns a missing model into a failure).
#![allow(clippy::unwrap_used)]

#[path = "../../data/tests/bpe_check/mod.rs"]
mod bpe_check;
mod common;

use std::path::Path;

use bpe_check::{check, fixture};
use kiln_data::bpe::ByteLevelBpe;
use kiln_data::tokenizers::Tokenizer;
use kiln_models::gguf::{GgufFile, tokenizer_from_gguf};

fn gguf_tokenizer(path: &Path) -> Tokenizer {
    tokenizer_from_gguf(&GgufFile::open(path).unwrap()).unwrap()
}

#[test]
fn smollm2_gguf_tokenizer_matches_tokenizers() {
    let path = kiln_models::fetch::smollm2_path();
    if common::model_cached(&path, "tools/fetch_model.sh") {
        bpe_check::smollm2_suite(&gguf_tokenizer(&path));
    }
}

#[test]
fn tiny_gguf_tokenizers_use_the_encoder_where_it_applies() {
    let tok = gguf_tokenizer(&fixture("gguf/tiny_llama_reader_only.gguf"));
    let bpe = ByteLevelBpe::new(&tok).expect("the tiny GGUF is byte-level BPE");
    for i in 0..3000 {
        check(
            &tok,
            &bpe,
            &kiln_data::synthetic::adversarial_text(i, 1 + i as usize % 80),
        );
    }
    // Sentencepiece vocabularies (byte fallback, Metaspace) stay with `tokenizers`.
    let spm = gguf_tokenizer(&fixture("gguf/tiny_spm.gguf"));
    assert!(ByteLevelBpe::new(&spm).is_none());
}
