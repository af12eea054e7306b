//! Preference pairs read and tokenized as TRL 1.16's `DPOTrainer` does: the ids of the three
//! forms (standard strings, conversational with the ChatML template, implicit prompt) equal
//! TRL's (`fixtures/dpo/tokenized.json`, written by tools/fixtures/trl_dpo.py), including a
//! standard prompt ending inside a word (BPE merges across the boundary); truncation as TRL's
//! collator; bad records give errors naming file and line.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use kiln_data::{
    ChatTemplate, DataError, FieldMap, Location, PreferenceEncoder, PreferenceIds, TruncationMode,
    read_preferences,
};
use serde::Deserialize;

fn dpo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/dpo"))
}

#[derive(Deserialize, Debug, PartialEq)]
struct Ids {
    prompt_ids: Vec<u32>,
    chosen_ids: Vec<u32>,
    rejected_ids: Vec<u32>,
}

#[test]
fn every_form_tokenizes_as_trl() {
    let tokenizer =
        tokenizers::Tokenizer::from_file(dpo().join("tokenizer/tokenizer.json")).unwrap();
    let template = ChatTemplate::from_file(
        &dpo().join("tokenizer/chat_template.jinja"),
        None,
        Some("<|im_end|>"),
    )
    .unwrap();
    let enc = PreferenceEncoder::new(&tokenizer, Some(&template), Some("<|im_end|>"));
    let text = std::fs::read_to_string(dpo().join("tokenized.json")).unwrap();
    let want: std::collections::HashMap<String, Vec<Ids>> = serde_json::from_str(&text).unwrap();
    for form in ["standard", "conversational", "implicit"] {
        let path = dpo().join(format!("{form}.jsonl"));
        let pairs = read_preferences(&path, &FieldMap::default()).unwrap();
        assert_eq!(pairs.len(), want[form].len());
        for ((at, pair), want) in pairs.iter().zip(&want[form]) {
            let got = enc.encode(pair, at).unwrap();
            let got = Ids {
                prompt_ids: got.prompt,
                chosen_ids: got.chosen,
                rejected_ids: got.rejected,
            };
            assert_eq!(&got, want, "{form} {at}");
        }
    }
    // The boundary: line 4's prompt ends in "Bon"; TRL leaves the diverging prompt end out and
    // prompt + completion is the tokenization of the whole text.
    let pairs = read_preferences(&dpo().join("standard.jsonl"), &FieldMap::default()).unwrap();
    let (at, pair) = &pairs[3];
    let ids = enc.encode(pair, at).unwrap();
    let whole = tokenizer
        .encode(
            "Question: Say hello in French.\nAnswer: Bonjour.<|im_end|>",
            true,
        )
        .unwrap();
    let mut joined = ids.prompt.clone();
    joined.extend(&ids.chosen);
    assert_eq!(joined, whole.get_ids());
    let prompt_alone = tokenizer
        .encode("Question: Say hello in French.\nAnswer: Bon", true)
        .unwrap();
    assert!(
        ids.prompt.len() < prompt_alone.get_ids().len(),
        "the boundary merges"
    );
}

#[test]
fn truncation_keeps_start_or_end_per_sequence() {
    let ids = PreferenceIds {
        prompt: vec![1, 2, 3],
        chosen: vec![4, 5],
        rejected: vec![6],
    };
    let t = |rejected, max, mode| ids.sequence(rejected, max, mode);
    assert_eq!(
        t(false, None, TruncationMode::KeepStart),
        (vec![1, 2, 3, 4, 5], vec![false, false, false, true, true])
    );
    assert_eq!(
        t(false, Some(4), TruncationMode::KeepStart),
        (vec![1, 2, 3, 4], vec![false, false, false, true])
    );
    assert_eq!(
        t(false, Some(3), TruncationMode::KeepEnd),
        (vec![3, 4, 5], vec![false, true, true])
    );
    assert_eq!(
        t(true, Some(4), TruncationMode::KeepEnd),
        (vec![1, 2, 3, 6], vec![false, false, false, true])
    );
    assert!("keep_middle".parse::<TruncationMode>().is_err());
}

fn read_one(line: &str) -> Result<Vec<(Location, kiln_data::Preference)>, DataError> {
    let dir = std::env::temp_dir().join(format!("kiln_pref_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("bad{}.jsonl", line.len()));
    std::fs::write(
        &path,
        format!("{{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}}\n{line}\n"),
    )
    .unwrap();
    let out = read_preferences(&path, &FieldMap::default());
    std::fs::remove_file(&path).unwrap();
    out
}

#[test]
fn bad_records_name_file_line_and_field() {
    let err = read_one(r#"{"prompt": "a", "chosen": "b"}"#)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad") && err.contains(":2:") && err.contains("`rejected`"),
        "{err}"
    );
    let err = read_one(r#"{"prompt": "a", "chosen": "", "rejected": "c"}"#).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, DataError::BadConversation { .. })
            && msg.contains(":2:")
            && msg.contains("empty completion"),
        "{msg}"
    );
    // Implicit prompt where chosen and rejected are the same conversation: nothing is left.
    let same = r#"{"chosen": [{"role": "user", "content": "q"}], "rejected": [{"role": "user", "content": "q"}]}"#;
    let err = read_one(same);
    assert!(
        err.is_ok(),
        "one message each: the last is the completion, as TRL splits it"
    );
    let err = read_one(r#"{"prompt": "a", "chosen": 3, "rejected": "c"}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains(":2:") && err.contains("chosen"), "{err}");
    let err = read_one("{not json").unwrap_err().to_string();
    assert!(err.contains(":2:") && err.contains("malformed"), "{err}");
}

#[test]
fn implicit_prompt_is_the_common_prefix() {
    let line = r#"{"chosen": "The sky is blue.", "rejected": "The sky is green."}"#;
    let pairs = read_one(line).unwrap();
    match &pairs[1].1 {
        kiln_data::Preference::Standard {
            prompt,
            chosen,
            rejected,
        } => {
            // TRL backs off one character when the prefix ends after a space.
            assert_eq!(
                (prompt.as_str(), chosen.as_str(), rejected.as_str()),
                ("The sky is", " blue.", " green.")
            );
        }
        p => panic!("{p:?}"),
    }
}
