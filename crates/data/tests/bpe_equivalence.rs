//! kiln's byte-level BPE encoder gives `tokenizers`' ids, and exact byte offsets, on the fixture
//! tokenizers and on variants of them (Digits pre-tokenizer, Llama 3's and Qwen 2's split regexes,
//! added tokens matched before and after normalisation, `ignore_merges`, bytes missing from the
//! vocabulary), over generated chats, label fixtures, adversarial Unicode and long inputs;
//! tokenizers of other shapes are left to `tokenizers`. SmolLM2's real tokenizer runs the same
//! suite in kiln-train's `tests/bpe_gguf.rs` (built from the GGUF, which CI fetches; this crate
//! knows no model, and its former copy here read a file CI never has, so it always skipped).
#![allow(clippy::unwrap_used)]

mod bpe_check;
mod common;

use std::str::FromStr;

use bpe_check::check;
use kiln_data::bpe::ByteLevelBpe;
use kiln_data::{ChatTemplate, EncodeOptions, Encoder, LabelMode, Record};
use serde_json::{Value, json};
use tokenizers::Tokenizer;

const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn fixture_json(rel: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(bpe_check::fixture(rel)).unwrap()).unwrap()
}

fn from_json(v: &Value) -> Tokenizer {
    Tokenizer::from_str(&v.to_string()).unwrap()
}

fn texts() -> Vec<String> {
    let mut texts = bpe_check::generated_chats("chatml", 2000, 7, false);
    texts.extend((0..3000).map(|i| kiln_data::synthetic::adversarial_text(i, 1 + i as usize % 60)));
    let labels = fixture_json("chat_templates/labels.json");
    let mut stack = vec![&labels];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) if s.len() > 20 => texts.push(s.clone()),
            Value::Array(a) => stack.extend(a),
            Value::Object(o) => stack.extend(o.values()),
            _ => {}
        }
    }
    texts.extend(
        [
            "",
            " ",
            "'s",
            "it's 'S 're''ve'",
            "a   b\t\t c \n\n d  ",
            "  leading and trailing  ",
            "1234567890 ١٢٣ ½²",
            "<|im_start|><|im_end|><|im_start",
            "Hokkaido (83,424.44 km²) is larger.\t\r\n café <|eot_id|><s>",
        ]
        .map(String::from),
    );
    // Pieces longer than 32 bytes (merged with the heap rather than by scanning).
    texts.extend(
        [
            " Pneumonoultramicroscopicsilicovolcanoconiosis and antidisestablishmentarianism",
            "populationpopulationpopulationpopulation 12345678901234567890123456789012345",
            "北海道東京都大阪府京都府北海道東京都大阪府京都府 😀😀😀😀😀😀😀😀😀😀",
            "------------------------------------------------------------ ============",
        ]
        .map(String::from),
    );
    let long = bpe_check::long_texts(&texts[..300]);
    texts.extend(long);
    texts
}

#[test]
fn fixture_tokenizers_match_tokenizers() {
    let texts = texts();
    assert!(texts.len() > 5000);
    for rel in ["chat_templates/tokenizer.json", "eval/tokenizer.json"] {
        let tok = from_json(&fixture_json(rel));
        let bpe = ByteLevelBpe::new(&tok).unwrap_or_else(|| panic!("{rel} is supported"));
        for t in &texts {
            check(&tok, &bpe, t);
        }
    }
}

#[test]
fn variants_match_tokenizers() {
    let base = fixture_json("chat_templates/tokenizer.json");
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false,
        "trim_offsets": true, "use_regex": true});
    let mut variants = Vec::new();
    for individual in [true, false] {
        let mut v = base.clone();
        v["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": individual}, byte_level.clone()]});
        variants.push(v);
    }
    for pattern in [LLAMA3, QWEN2] {
        let mut v = base.clone();
        v["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated",
             "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false,
             "use_regex": false}]});
        variants.push(v);
    }
    let mut v = base.clone();
    v["model"]["ignore_merges"] = json!(true);
    variants.push(v);
    // Bytes whose character is not a token (and in no merge) are dropped by `tokenizers`.
    let mut v = base.clone();
    let merged: String = v["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| {
            m.as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
        })
        .collect();
    let vocab = v["model"]["vocab"].as_object_mut().unwrap();
    let mut removed = 0;
    for c in [
        "\u{104}", "\u{113}", "\u{120}", "\u{c0}", "\u{f5}", "\u{ff}", "\u{11c}", "a",
    ] {
        if !merged.contains(c) && vocab.remove(c).is_some() {
            removed += 1;
        }
    }
    assert!(removed >= 4, "{removed}");
    variants.push(v);
    // Added tokens: raw ones split first (leftmost-longest), normalised ones in the gaps, so
    // "abc" gives "ab" + "c" and "<|im" loses to "<|im_start|>".
    let mut v = base.clone();
    let added = v["added_tokens"].as_array_mut().unwrap();
    for (id, content, normalized, special) in [
        (1024, "ab", false, false),
        (1025, "abc", true, false),
        (1026, "<|im", false, false),
        (1027, "Tokyo", true, false),
        (1028, "im_start", true, true),
        (1029, " the", false, false),
    ] {
        added.push(
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": normalized, "special": special}),
        );
    }
    variants.push(v);

    let mut texts = texts();
    texts.truncate(2500);
    texts.extend(
        ["abc abcab <|im_start|> <|im im_start Tokyo the  the"]
            .map(String::from)
            .into_iter()
            .chain((0..1500).map(|i| kiln_data::synthetic::adversarial_text(10_000 + i, 40))),
    );
    for v in &variants {
        let tok = from_json(v);
        let bpe =
            ByteLevelBpe::new(&tok).unwrap_or_else(|| panic!("supported: {}", v["pre_tokenizer"]));
        for t in &texts {
            check(&tok, &bpe, t);
        }
    }
    let tok = from_json(&variants[6]);
    let (ids, _) = ByteLevelBpe::new(&tok)
        .unwrap()
        .encode("xabc<|im_start|><|im");
    let id = |t: &str| tok.token_to_id(t).unwrap();
    assert_eq!(&ids[1..3], [id("ab"), id("c")]);
    assert_eq!(&ids[3..], [id("<|im_start|>"), id("<|im")]);
}

#[test]
fn other_shapes_fall_back_to_tokenizers() {
    let base = fixture_json("chat_templates/tokenizer.json");
    let mut unsupported = Vec::new();
    let mut v = base.clone();
    v["pre_tokenizer"]["add_prefix_space"] = json!(true);
    unsupported.push(v);
    let mut v = base.clone();
    v["normalizer"] = json!({"type": "NFC"});
    unsupported.push(v);
    let mut v = base.clone();
    v["added_tokens"][2]["lstrip"] = json!(true);
    unsupported.push(v);
    let mut v = base.clone();
    v["model"]["dropout"] = json!(0.1);
    unsupported.push(v);
    let template = ChatTemplate::new(common::template("chatml"), None, Some("<|im_end|>")).unwrap();
    let opts = EncodeOptions {
        labels: LabelMode::AllTokens,
        append_eos: false,
        ..EncodeOptions::default()
    };
    let text = "Hokkaido  is 83,424 km² <|im_end|>\n  it's";
    for (i, v) in unsupported.iter().enumerate() {
        let tok = from_json(v);
        assert!(ByteLevelBpe::new(&tok).is_none(), "variant {i}");
        let enc = Encoder::new(&tok, Some(&template), opts.clone()).unwrap();
        assert!(enc.byte_level_bpe().is_none());
        if i == 3 {
            continue; // dropout: tokenizers' own ids are random
        }
        let got = match enc.encode(&Record::Text(text.into())).unwrap() {
            kiln_data::Encoded::Kept { example, .. } => example.input_ids,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            got,
            tok.encode(text, false).unwrap().get_ids(),
            "variant {i}"
        );
    }
    // The fixture itself goes through kiln's encoder, and gives the same example.
    let tok = common::tokenizer();
    let enc = Encoder::new(&tok, Some(&template), opts).unwrap();
    assert!(enc.byte_level_bpe().is_some());
    match enc.encode(&Record::Text(text.into())).unwrap() {
        kiln_data::Encoded::Kept { example, .. } => {
            assert_eq!(
                example.input_ids,
                tok.encode(text, false).unwrap().get_ids()
            );
        }
        other => panic!("{other:?}"),
    }
}
