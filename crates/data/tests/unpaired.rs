//! Unpaired records read and tokenized as TRL 1.16's `KTOTrainer` does: the ids of the standard
//! and conversational forms and of a pair file unpaired equal TRL's (`fixtures/kto/tokenized.json`,
//! written by tools/fixtures/trl_kto.py), the standard `Bon|jour` boundary merge included; the
//! KL completions rotated within each batch and the records whose prompt fills `max_length`
//! dropped as TRL does; bad records give errors naming file and line.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use kiln_data::{
    ChatTemplate, DataError, FieldMap, KtoExample, PreferenceEncoder, UnpairedIds, kto_examples,
    read_unpaired,
};
use serde::Deserialize;

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures"))
}

#[derive(Deserialize, Debug)]
#[allow(non_snake_case)]
struct Want {
    prompt_ids: Vec<u32>,
    completion_ids: Vec<u32>,
    KL_completion_ids: Vec<u32>,
    label: bool,
}

fn encode(path: &std::path::Path) -> Vec<UnpairedIds> {
    let tok = fixtures().join("dpo/tokenizer");
    let tokenizer = tokenizers::Tokenizer::from_file(tok.join("tokenizer.json")).unwrap();
    let template =
        ChatTemplate::from_file(&tok.join("chat_template.jinja"), None, Some("<|im_end|>"))
            .unwrap();
    let enc = PreferenceEncoder::new(&tokenizer, Some(&template), Some("<|im_end|>"));
    read_unpaired(path, &FieldMap::default())
        .unwrap()
        .iter()
        .map(|(at, r)| enc.encode_unpaired(r, at).unwrap())
        .collect()
}

#[test]
fn every_form_tokenizes_as_trl() {
    let text = std::fs::read_to_string(fixtures().join("kto/tokenized.json")).unwrap();
    let want: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut merged = 0;
    for (case, file) in [
        ("conversational/2/None", "kto/conversational.jsonl"),
        ("standard/3/None", "kto/standard.jsonl"),
        ("conversational/2/14", "kto/conversational.jsonl"),
        ("paired/2/None", "dpo/conversational.jsonl"),
    ] {
        let mut parts = case.split('/');
        let (_, batch, max) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        let (batch, max) = (batch.parse().unwrap(), max.parse().ok());
        let ids = encode(&fixtures().join(file));
        let n = ids.len();
        let (got, dropped): (Vec<KtoExample>, usize) = kto_examples(ids, batch, max);
        let want: Vec<Want> = serde_json::from_value(want[case].clone()).unwrap();
        assert_eq!(got.len(), want.len(), "{case}");
        assert_eq!(dropped, n - want.len(), "{case}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.ids.prompt, w.prompt_ids, "{case} record {i} prompt");
            assert_eq!(g.ids.completion, w.completion_ids, "{case} record {i}");
            assert_eq!(g.kl_completion, w.KL_completion_ids, "{case} record {i} KL");
            assert_eq!(g.ids.label, w.label, "{case} record {i} label");
        }
        // `Answer: Bon` + `jour.`: the prompt's end merges into the completion's first token,
        // so the prompt keeps fewer ids than the prompt text alone has.
        if case.starts_with("standard") {
            let tok = fixtures().join("dpo/tokenizer/tokenizer.json");
            let tokenizer = tokenizers::Tokenizer::from_file(tok).unwrap();
            let alone = tokenizer
                .encode("Question: Say hello in French.\nAnswer: Bon", true)
                .unwrap();
            merged += usize::from(got[3].ids.prompt.len() < alone.get_ids().len());
        }
    }
    assert_eq!(merged, 1, "the boundary merge is covered");
}

/// Truncation keeps the first `max_length` tokens of prompt + completion (and of the KL
/// sequence: another record's completion after this prompt).
#[test]
fn sequences_keep_the_start() {
    let r = UnpairedIds {
        prompt: vec![1, 2, 3],
        completion: vec![4, 5, 6],
        label: true,
    };
    assert_eq!(
        r.sequence(Some(4)),
        (vec![1, 2, 3, 4], vec![false, false, false, true])
    );
    assert_eq!(
        r.sequence_with(&[9], None),
        (vec![1, 2, 3, 9], vec![false, false, false, true])
    );
}

fn read_err(name: &str, text: &str) -> DataError {
    let dir = std::env::temp_dir().join(format!("kiln_unpaired_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let err = read_unpaired(&path, &FieldMap::default()).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    err
}

#[test]
fn bad_records_name_file_line_and_field() {
    let good = r#"{"prompt": "Q", "completion": " A", "label": true}"#;
    let cases = [
        (r#"{"prompt": "Q", "label": true}"#, "`completion`"),
        (r#"{"prompt": "Q", "completion": " A"}"#, "`label`"),
        (r#"{"completion": " A", "label": false}"#, "`prompt`"),
        (
            r#"{"prompt": "Q", "completion": " A", "label": 1}"#,
            "boolean",
        ),
        (
            r#"{"prompt": "Q", "completion": " A", "label": "true"}"#,
            "boolean",
        ),
        (
            r#"{"prompt": "Q", "completion": "", "label": true}"#,
            "empty completion",
        ),
        (
            r#"{"prompt": [{"role": "user", "content": "Q"}], "completion": [], "label": true}"#,
            "empty completion",
        ),
        (
            r#"{"prompt": "Q", "completion": [{"role": "assistant", "content": "A"}], "label": true}"#,
            "both strings or both message lists",
        ),
    ];
    for (bad, what) in cases {
        let err = read_err("bad.jsonl", &format!("{good}\n\n{bad}\n"));
        let msg = err.to_string();
        assert!(msg.contains("bad.jsonl:3"), "{msg}");
        assert!(msg.contains(what), "{bad}: {msg}");
    }
}
