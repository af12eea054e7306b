//! Completion-only labels against transformers' `return_assistant_tokens_mask`
//! (fixtures/chat_templates/labels.json), plus label options, truncation and EOS.
#![allow(clippy::unwrap_used)]

mod common;

use kiln_data::{
    ChatTemplate, EncodeOptions, Encoded, Encoder, Example, IGNORE_INDEX, LabelMode, Message,
    Record, Role, Truncation,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    conversation: String,
    messages: Vec<Message>,
    text: String,
    input_ids: Vec<u32>,
    assistant_masks: Vec<u8>,
}

#[derive(Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

fn chatml() -> ChatTemplate {
    ChatTemplate::new(
        common::template("chatml"),
        Some("<|im_start|>"),
        Some("<|im_end|>"),
    )
    .expect("chatml")
}

fn kept(e: Encoded) -> Example {
    match e {
        Encoded::Kept { example, .. } => example,
        other => panic!("not kept: {other:?}"),
    }
}

#[test]
fn labels_match_transformers_assistant_masks() {
    let tok = common::tokenizer();
    let t = chatml();
    let enc = Encoder::new(&tok, Some(&t), EncodeOptions::default()).expect("encoder");
    let text = std::fs::read_to_string(common::fixtures().join("labels.json")).expect("fixture");
    let cases = serde_json::from_str::<Cases>(&text).expect("json").cases;
    assert_eq!(cases.len(), 4);
    for c in cases {
        let record = Record::Conversation(c.messages.clone());
        if !c.messages.iter().any(|m| m.role == Role::Assistant) {
            assert!(c.assistant_masks.iter().all(|&m| m == 0));
            assert!(enc.encode(&record).is_err(), "nothing to train is an error");
            continue;
        }
        let rendered = enc.render(&record).expect("render");
        assert_eq!(rendered.text, c.text, "{}", c.conversation);
        let ex = kept(enc.encode(&record).expect("encode"));
        assert_eq!(ex.input_ids, c.input_ids, "{}: ids", c.conversation);
        let want: Vec<i64> = c
            .input_ids
            .iter()
            .zip(&c.assistant_masks)
            .map(|(&id, &m)| if m == 1 { i64::from(id) } else { IGNORE_INDEX })
            .collect();
        assert_eq!(ex.labels, want, "{}: labels", c.conversation);
    }
}

fn multi_turn() -> Record {
    Record::Conversation(vec![
        Message::new(Role::User, "Population of Osaka in 2020?"),
        Message::new(Role::Assistant, "8,837,685 people."),
        Message::new(Role::User, "And Kyoto?"),
        Message::new(Role::Assistant, "2,578,087 people."),
    ])
}

#[test]
fn last_turn_and_all_tokens_modes() {
    let tok = common::tokenizer();
    let t = chatml();
    let opts = |labels| EncodeOptions {
        labels,
        ..EncodeOptions::default()
    };
    let all = kept(
        Encoder::new(&tok, Some(&t), opts(LabelMode::Completions))
            .expect("enc")
            .encode(&multi_turn())
            .expect("ok"),
    );
    let last = kept(
        Encoder::new(&tok, Some(&t), opts(LabelMode::LastTurn))
            .expect("enc")
            .encode(&multi_turn())
            .expect("ok"),
    );
    let every = kept(
        Encoder::new(&tok, Some(&t), opts(LabelMode::AllTokens))
            .expect("enc")
            .encode(&multi_turn())
            .expect("ok"),
    );
    let decode = |ex: &Example| {
        let ids: Vec<u32> = ex
            .labels
            .iter()
            .filter(|&&l| l != IGNORE_INDEX)
            .map(|&l| l as u32)
            .collect();
        tok.decode(&ids, false).expect("decode")
    };
    assert_eq!(
        decode(&all),
        "8,837,685 people.<|im_end|>2,578,087 people.<|im_end|>"
    );
    assert_eq!(decode(&last), "2,578,087 people.<|im_end|>");
    assert_eq!(every.trained_tokens(), every.len());
    assert_eq!(all.input_ids, last.input_ids);
    // Pretty-printers mark exactly the trained runs.
    assert_eq!(
        kiln_data::show_trained_text(&tok, &last),
        "<|im_start|>user\nPopulation of Osaka in 2020?<|im_end|>\n<|im_start|>assistant\n8,837,685 people.<|im_end|>\n<|im_start|>user\nAnd Kyoto?<|im_end|>\n<|im_start|>assistant\n[[2,578,087 people.<|im_end|>]]\n"
    );
    let table = kiln_data::show_labels(&tok, &last);
    assert_eq!(table.lines().count(), last.len());
    assert!(
        table.lines().last().expect("line").ends_with(". \"\\n\""),
        "{table}"
    );
}

#[test]
fn truncation_policies_and_counts() {
    let tok = common::tokenizer();
    let t = chatml();
    let full = kept(
        Encoder::new(&tok, Some(&t), EncodeOptions::default())
            .expect("enc")
            .encode(&multi_turn())
            .expect("ok"),
    );
    let n = full.len();
    let with = |truncation, max| EncodeOptions {
        max_len: Some(max),
        truncation,
        ..EncodeOptions::default()
    };
    let mut stats = kiln_data::EncodeStats::default();
    let right = Encoder::new(&tok, Some(&t), with(Truncation::Right, n - 3))
        .expect("enc")
        .encode(&multi_turn())
        .expect("ok");
    let right = stats.add(right).expect("kept");
    assert_eq!(right.input_ids, full.input_ids[..n - 3]);
    let left = Encoder::new(&tok, Some(&t), with(Truncation::Left, 5))
        .expect("enc")
        .encode(&multi_turn())
        .expect("ok");
    let left = stats.add(left).expect("kept");
    assert_eq!(left.input_ids, full.input_ids[n - 5..]);
    assert_eq!(left.labels, full.labels[n - 5..]);
    let dropped = Encoder::new(&tok, Some(&t), with(Truncation::Drop, n - 1))
        .expect("enc")
        .encode(&multi_turn())
        .expect("ok");
    assert_eq!(dropped, Encoded::TooLong { len: n });
    assert!(stats.add(dropped).is_none());
    // Right truncation to the prompt only leaves nothing to train.
    let nothing = Encoder::new(&tok, Some(&t), with(Truncation::Right, 4))
        .expect("enc")
        .encode(&multi_turn())
        .expect("ok");
    assert_eq!(nothing, Encoded::NothingToTrain);
    stats.add(nothing);
    assert_eq!(
        (
            stats.kept,
            stats.truncated,
            stats.dropped_too_long,
            stats.dropped_nothing_to_train
        ),
        (2, 2, 1, 1)
    );
}

#[test]
fn eos_is_appended_to_text_and_completions_only_when_missing() {
    let tok = common::tokenizer();
    let t = chatml();
    let enc = Encoder::new(&tok, Some(&t), EncodeOptions::default()).expect("enc");
    let eos = tok.token_to_id("<|im_end|>").expect("eos");
    let text = kept(
        enc.encode(&Record::Text("The census of 2020.".into()))
            .expect("ok"),
    );
    assert_eq!(text.input_ids.last(), Some(&eos));
    assert_eq!(text.trained_tokens(), text.len());
    let pc = Record::PromptCompletion {
        prompt: "Capital of Japan:".into(),
        completion: " Tokyo".into(),
    };
    let pc = kept(enc.encode(&pc).expect("ok"));
    let trained: Vec<u32> = pc
        .labels
        .iter()
        .filter(|&&l| l >= 0)
        .map(|&l| l as u32)
        .collect();
    assert_eq!(
        tok.decode(&trained, false).expect("decode"),
        " Tokyo<|im_end|>"
    );
    // ChatML closes every assistant turn with <|im_end|>: nothing appended.
    let conv = kept(enc.encode(&multi_turn()).expect("ok"));
    assert_eq!(
        tok.decode(&conv.input_ids[conv.len() - 2..], false)
            .expect("decode"),
        "<|im_end|>\n"
    );
    // A template that does not close the turn gets a trained EOS.
    let open = ChatTemplate::new(
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}",
        None,
        Some("<|im_end|>"),
    )
    .expect("t");
    let enc = Encoder::new(&tok, Some(&open), EncodeOptions::default()).expect("enc");
    let ex = kept(enc.encode(&multi_turn()).expect("ok"));
    assert_eq!(ex.input_ids.last(), Some(&eos));
    assert_eq!(
        ex.labels.last(),
        Some(&IGNORE_INDEX),
        "EOS follows an untrained newline"
    );
}

#[test]
fn conversation_without_assistant_is_an_error() {
    let tok = common::tokenizer();
    let t = chatml();
    let enc = Encoder::new(&tok, Some(&t), EncodeOptions::default()).expect("enc");
    let err = enc
        .encode(&Record::Conversation(vec![Message::new(Role::User, "hi")]))
        .expect_err("no answer");
    assert!(err.to_string().contains("no assistant message"), "{err}");
    let err = Encoder::new(&tok, None, EncodeOptions::default())
        .expect("enc")
        .encode(&multi_turn())
        .expect_err("no template");
    assert!(err.to_string().contains("chat template"), "{err}");
}

#[test]
fn preference_pair_trains_only_the_answers() {
    let tok = common::tokenizer();
    let t = chatml();
    let enc = Encoder::new(&tok, Some(&t), EncodeOptions::default()).expect("enc");
    let rec = Record::Preference {
        prompt: vec![Message::new(Role::User, "Capital of Japan?")],
        chosen: vec![Message::new(Role::Assistant, "Tokyo.")],
        rejected: vec![Message::new(Role::Assistant, "Kyoto.")],
    };
    let (c, r) = enc.encode_pair(&rec).expect("pair");
    let (c, r) = (kept(c), kept(r));
    let trained = |ex: &Example| {
        let ids: Vec<u32> = ex
            .labels
            .iter()
            .filter(|&&l| l >= 0)
            .map(|&l| l as u32)
            .collect();
        tok.decode(&ids, false).expect("decode")
    };
    assert_eq!(trained(&c), "Tokyo.<|im_end|>");
    assert_eq!(trained(&r), "Kyoto.<|im_end|>");
}
