//! Comparing kiln's byte-level BPE encoder with `tokenizers`, shared by kiln-data's
//! `tests/bpe_equivalence.rs` and kiln-train's `tests/bpe_gguf.rs` (included by path there:
//! kiln-train builds SmolLM2's tokenizer from the GGUF, which needs kiln-models).
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use kiln_data::bpe::ByteLevelBpe;
use kiln_data::tokenizers::{Model, Tokenizer};
use kiln_data::{ChatTemplate, Reader, Record};

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(rel)
}

/// Asserts identical ids, and offsets that give each token its own bytes: a model token spans
/// its bytes plus any dropped inside it (bytes whose character is not a token, which
/// `tokenizers` drops), an added token its text; only dropped bytes lie between tokens.
pub fn check(tok: &Tokenizer, bpe: &ByteLevelBpe, text: &str) {
    let want = tok.encode(text, false).unwrap();
    let (ids, offsets) = bpe.encode(text);
    assert_eq!(ids, want.get_ids(), "ids of {text:?}");
    assert_eq!(offsets.len(), ids.len());
    let chars = kiln_data::bpe::byte_chars();
    let byte_of: HashMap<char, u8> = chars
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
        assert!(pos <= start && start < end, "offsets of {text:?}");
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

/// `n` generated conversations (seed `seed`) rendered with the template `fixtures/chat_templates/
/// {name}.jinja`.
pub fn generated_chats(name: &str, n: usize, seed: u64, generation_prompt: bool) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chats.jsonl");
    kiln_data::synthetic::write_messages_jsonl(&path, n, seed).unwrap();
    let source = std::fs::read_to_string(fixture(&format!("chat_templates/{name}.jinja"))).unwrap();
    let template = ChatTemplate::new(source, Some("<|im_start|>"), Some("<|im_end|>")).unwrap();
    let (records, _) = Reader::open(&[path.display().to_string()])
        .unwrap()
        .read_all()
        .unwrap();
    records
        .iter()
        .map(|r| match r {
            Record::Conversation(m) => template.render(m, generation_prompt).unwrap(),
            other => panic!("not a conversation: {other:?}"),
        })
        .collect()
}

/// Long inputs: runs of one kind far past the piece cache's limit, and many chats in one text.
pub fn long_texts(chats: &[String]) -> Vec<String> {
    vec![
        " ".repeat(5000),
        "\n".repeat(700) + "x",
        "a".repeat(10_000),
        "1234567890".repeat(500),
        "\u{5317}\u{6d77}\u{9053}".repeat(2000),
        "!?".repeat(3000) + " end",
        chats.concat(),
    ]
}

/// SmolLM2-135M-Instruct's tokenizer (from `tokenizer.json` or the GGUF): transformers' ids for
/// its samples, then `tokenizers`' on chats rendered with SmolLM2's template, adversarial
/// Unicode and long inputs.
pub fn smollm2_suite(tok: &Tokenizer) {
    let bpe = ByteLevelBpe::new(tok).expect("SmolLM2's tokenizer is byte-level BPE");
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
        check(tok, &bpe, text);
    }
    let chats = generated_chats("smollm2", 2000, 3, true);
    for text in chats.iter().chain(&long_texts(&chats)) {
        check(tok, &bpe, text);
    }
    for i in 0..4000 {
        check(
            tok,
            &bpe,
            &kiln_data::synthetic::adversarial_text(i, 1 + i as usize % 80),
        );
    }
}
