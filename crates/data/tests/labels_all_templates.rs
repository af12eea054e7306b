//! Completion-only labels on every golden template: the trained tokens decode to each
//! assistant answer followed by the template's end-of-turn token, and nothing else.
#![allow(clippy::unwrap_used)]

mod common;

use kiln_data::{
    ChatTemplate, EncodeOptions, Encoded, Encoder, IGNORE_INDEX, Message, Record, Role,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    template: String,
    add_generation_prompt: bool,
    bos_token: Option<String>,
    eos_token: Option<String>,
    messages: Vec<Message>,
    extra: serde_json::Map<String, serde_json::Value>,
    expected: Option<String>,
}

#[derive(Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

fn end_marker(template: &str) -> &'static str {
    match template {
        "smollm2" | "qwen2_5" | "chatml" => "<|im_end|>",
        "llama3_1" | "llama3_2" => "<|eot_id|>",
        "gemma2" | "gemma3" => "<end_of_turn>",
        "mistral_nemo" => "</s>",
        "phi3_5" => "<|end|>",
        other => panic!("unknown template {other}"),
    }
}

#[test]
fn trained_tokens_are_answers_and_end_markers() {
    let tok = common::tokenizer();
    let text = std::fs::read_to_string(common::fixtures().join("expected.json")).expect("fixture");
    let cases = serde_json::from_str::<Cases>(&text).expect("json").cases;
    let mut checked = std::collections::BTreeMap::<String, usize>::new();
    for c in cases {
        let Some(rendered) = &c.expected else {
            continue;
        };
        if c.add_generation_prompt || !c.messages.iter().any(|m| m.role == Role::Assistant) {
            continue;
        }
        let t = ChatTemplate::new(
            common::template(&c.template),
            c.bos_token.as_deref(),
            c.eos_token.as_deref(),
        )
        .expect("template");
        let enc = Encoder::new(&tok, Some(&t), EncodeOptions::default())
            .expect("encoder")
            .with_template_vars(c.extra.clone());
        let record = Record::Conversation(c.messages.clone());
        assert_eq!(&enc.render(&record).expect("render").text, rendered);
        let Encoded::Kept { example, .. } = enc.encode(&record).expect("encode") else {
            panic!("{}: dropped", c.template)
        };
        let marker = end_marker(&c.template);
        let want: String = c
            .messages
            .iter()
            .filter(|m| m.role == Role::Assistant)
            .map(|m| {
                let exact = format!("{}{marker}", m.content);
                if rendered.contains(&exact) {
                    exact
                } else {
                    format!("{}{marker}", m.content.trim())
                }
            })
            .collect();
        let trained: Vec<u32> = example
            .labels
            .iter()
            .filter(|&&l| l != IGNORE_INDEX)
            .map(|&l| l as u32)
            .collect();
        assert_eq!(
            tok.decode(&trained, false).expect("decode"),
            want,
            "{}",
            c.template
        );
        *checked.entry(c.template.clone()).or_default() += 1;
    }
    assert_eq!(checked.len(), 9, "{checked:?}");
}
