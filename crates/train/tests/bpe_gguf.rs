//! kiln-data's byte-level BPE encoder on tokenizers kiln-models builds from GGUF files: the
//! real SmolLM2-135M-Instruct's (49,152 tokens) and the tiny fixture's give `tokenizers`' ids,
//! with offsets that tile the text, on transformers' samples, generated chats rendered with
//! SmolLM2's template and adversarial Unicode. Gemma 3's sentencepiece tokenizer is left to
//! `tokenizers`.
//!
//! The SmolLM2 part needs the model in kiln's cache (`tools/fetch_model.sh`; CI fetches it and
//! sets `KILN_REQUIRE_MODEL=1`, which turns a missing model into a failure).
#![allow(clippy::unwrap_used)]

use std::path::Path;

use kiln_data::bpe::ByteLevelBpe;
use kiln_data::tokenizers::{Model, Tokenizer};
use kiln_data::{ChatTemplate, Reader, Record};
use kiln_models::gguf::{GgufFile, tokenizer_from_gguf};

fn gguf_tokenizer(path: &Path) -> Tokenizer {
    tokenizer_from_gguf(&GgufFile::open(path).unwrap()).unwrap()
}

/// `Some(path)` when the model is cached; `None` (test skipped) unless `KILN_REQUIRE_MODEL`.
fn cached(path: &Path) -> Option<&Path> {
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var("KILN_REQUIRE_MODEL").is_err(),
        "{} missing",
        path.display()
    );
    println!(
        "SKIPPED: {} missing (run tools/fetch_model.sh)",
        path.display()
    );
    None
}

/// GPT-2's byte → character table.
fn byte_chars() -> Vec<char> {
    let mut extra = 0u32;
    (0u32..256)
        .map(|b| {
            let printable =
                (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
            let c = if printable {
                b
            } else {
                extra += 1;
                255 + extra
            };
            char::from_u32(c).unwrap()
        })
        .collect()
}

/// Asserts identical ids, and offsets that give each token its own bytes: a model token spans
/// its bytes plus any dropped inside it (bytes whose character is not a token, which
/// `tokenizers` drops), an added token its text; only dropped bytes lie between tokens.
fn check(tok: &Tokenizer, bpe: &ByteLevelBpe, text: &str) {
    let want = tok.encode(text, false).unwrap();
    let (ids, offsets) = bpe.encode(text);
    assert_eq!(ids, want.get_ids(), "ids of {text:?}");
    assert_eq!(offsets.len(), ids.len());
    let chars = byte_chars();
    let byte_of: std::collections::HashMap<char, u8> = chars
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect();
    let dropped: Vec<bool> = chars
        .iter()
        .map(|c| tok.get_model().token_to_id(&c.to_string()).is_none())
        .collect();
    let added = tok.get_added_tokens_decoder();
    let bytes = text.as_bytes();
    let mut pos = 0;
    for (&id, &(start, end)) in ids.iter().zip(&offsets) {
        assert!(
            pos <= start && start < end,
            "offsets of {text:?}: {offsets:?}"
        );
        assert!(bytes[pos..start].iter().all(|&b| dropped[usize::from(b)]));
        if let Some(t) = added.get(&id) {
            assert_eq!(&text[start..end], t.content, "token {id} of {text:?}");
        } else {
            let kept: Vec<u8> = bytes[start..end]
                .iter()
                .copied()
                .filter(|&b| !dropped[usize::from(b)])
                .collect();
            let token: Vec<u8> = tok
                .id_to_token(id)
                .unwrap()
                .chars()
                .map(|c| byte_of[&c])
                .collect();
            assert_eq!(kept, token, "token {id} of {text:?}");
        }
        pos = end;
    }
    assert!(
        bytes[pos..].iter().all(|&b| dropped[usize::from(b)]),
        "offsets cover {text:?}"
    );
}

fn fixture(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(rel)
}

fn adversarial(n: u64) -> impl Iterator<Item = String> {
    (0..n).map(|i| kiln_data::synthetic::adversarial_text(i, 1 + i as usize % 80))
}

#[test]
fn smollm2_gguf_tokenizer_matches_tokenizers() {
    let path = kiln_models::fetch::smollm2_path();
    let Some(path) = cached(&path) else {
        return;
    };
    let tok = gguf_tokenizer(path);
    let bpe = ByteLevelBpe::new(&tok).expect("SmolLM2's tokenizer is byte-level BPE");

    // transformers' ids (SmolLM2's tokenizer.json) for its samples.
    let samples: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("smollm2/tokenizer_samples.json")).unwrap(),
    )
    .unwrap();
    let samples = samples.as_array().unwrap();
    assert_eq!(samples.len(), 15);
    for s in samples {
        let text = s["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(s["ids"].clone()).unwrap();
        assert_eq!(bpe.encode(text).0, want, "{text:?}");
        check(&tok, &bpe, text);
    }

    // Generated chats rendered with SmolLM2's own template.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("chats.jsonl");
    kiln_data::synthetic::write_messages_jsonl(&data, 2000, 3).unwrap();
    let template = ChatTemplate::new(
        std::fs::read_to_string(fixture("chat_templates/smollm2.jinja")).unwrap(),
        Some("<|im_start|>"),
        Some("<|im_end|>"),
    )
    .unwrap();
    let (records, _) = Reader::open(&[data.display().to_string()])
        .unwrap()
        .read_all()
        .unwrap();
    for r in &records {
        let Record::Conversation(messages) = r else {
            panic!("{r:?}");
        };
        check(&tok, &bpe, &template.render(messages, true).unwrap());
    }
    for text in adversarial(4000) {
        check(&tok, &bpe, &text);
    }
}

#[test]
fn tiny_gguf_tokenizers_use_the_encoder_where_it_applies() {
    let tok = gguf_tokenizer(&fixture("gguf/tiny_llama.gguf"));
    let bpe = ByteLevelBpe::new(&tok).expect("the tiny GGUF is byte-level BPE");
    for text in adversarial(3000) {
        check(&tok, &bpe, &text);
    }
    // Sentencepiece vocabularies (byte fallback, Metaspace) stay with `tokenizers`.
    let spm = gguf_tokenizer(&fixture("gguf/tiny_spm.gguf"));
    assert!(ByteLevelBpe::new(&spm).is_none());
}
