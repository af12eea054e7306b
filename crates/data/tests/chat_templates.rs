//! Golden test: every template renders byte-identically to transformers
//! (fixtures/chat_templates/expected.json, written by tools/fixtures/chat_templates.py).
#![allow(clippy::unwrap_used)]

mod common;

use kiln_data::{ChatTemplate, DataError, Message};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    template: String,
    conversation: String,
    add_generation_prompt: bool,
    bos_token: Option<String>,
    eos_token: Option<String>,
    extra: serde_json::Map<String, serde_json::Value>,
    messages: Vec<Message>,
    expected: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(common::fixtures().join("expected.json")).expect("fixture");
    serde_json::from_str::<Cases>(&text).expect("json").cases
}

#[test]
fn renders_like_transformers() {
    let cases = cases();
    let names: std::collections::BTreeSet<_> = cases.iter().map(|c| c.template.as_str()).collect();
    for want in [
        "smollm2",
        "qwen2_5",
        "llama3_1",
        "llama3_2",
        "mistral_nemo",
        "gemma2",
        "gemma3",
        "phi3_5",
    ] {
        assert!(names.contains(want), "no cases for {want}");
    }
    let mut failures = Vec::new();
    for c in &cases {
        let t = ChatTemplate::new(
            common::template(&c.template),
            c.bos_token.as_deref(),
            c.eos_token.as_deref(),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", c.template));
        let got = t.render_with(&c.messages, c.add_generation_prompt, &c.extra);
        let id = format!(
            "{} / {} / gen={}",
            c.template, c.conversation, c.add_generation_prompt
        );
        match (&c.expected, &c.error, got) {
            (Some(want), _, Ok(got)) if *want == got => {}
            (Some(want), _, got) => failures.push(format!("{id}:\n want {want:?}\n got  {got:?}")),
            (None, Some(msg), Err(DataError::TemplateRender { message, .. }))
                if message.contains(msg.as_str()) => {}
            (None, err, got) => failures.push(format!("{id}: want error {err:?}, got {got:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn template_syntax_error_is_reported() {
    let err = ChatTemplate::new("{% for m in messages %}{{ m.content }", None, None)
        .expect_err("bad syntax");
    assert!(matches!(err, DataError::TemplateSyntax { .. }), "{err}");
}

#[test]
fn template_errors_name_the_template_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.jinja");
    std::fs::write(&path, "{% for m in messages %}{{ m.content }").unwrap();
    let err = ChatTemplate::from_file(&path, None, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("{}: chat template syntax", path.display())),
        "{err}"
    );
    let path = dir.path().join("raises.jinja");
    std::fs::write(&path, "{{ raise_exception('only user turns') }}").unwrap();
    let t = ChatTemplate::from_file(&path, None, None).unwrap();
    let err = t.render(&[], false).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}: chat template: ", path.display())),
        "{err}"
    );
    assert!(err.contains("only user turns"), "{err}");
    // A model directory's template is named by the file it came from.
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"chat_template": "{% if %}"}"#,
    )
    .unwrap();
    let err = kiln_data::load_chat_template(dir.path(), None)
        .unwrap()
        .compile()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("tokenizer_config.json: chat template syntax"),
        "{err}"
    );
}

#[test]
fn tojson_and_string_methods_behave_like_python() {
    let src = "{{ {'name': 'f', 'x': [1, 2.5, 'é<&>']} | tojson }}|{{ messages[0].content.strip().title() }}\
|{{ messages[0].content.split()|join('+') }}|{{ messages[0].content.strip().startswith('hello') }}\
|{{ {'a': 1} | tojson(indent=2) }}|{% for x in [1,2,3] %}{% if x == 2 %}{% break %}{% endif %}{{ x }}{% endfor %}";
    let t = ChatTemplate::new(src, None, None).expect("compiles");
    let out = t
        .render(
            &[Message::new(kiln_data::Role::User, "  hello big world ")],
            false,
        )
        .expect("renders");
    // Checked with transformers render_jinja_template; json.dumps(..., ensure_ascii=False), str.title(), str.split(), str.startswith().
    assert_eq!(
        out,
        "{\"name\": \"f\", \"x\": [1, 2.5, \"é<&>\"]}|Hello Big World|hello+big+world|True|{\n  \"a\": 1\n}|1"
    );
}

#[test]
fn raise_exception_message_reaches_the_error() {
    let t =
        ChatTemplate::new("{{ raise_exception('no system role') }}", None, None).expect("compiles");
    let err = t.render(&[], false).expect_err("raises");
    assert!(err.to_string().contains("no system role"), "{err}");
}

#[test]
fn fallback_templates_render() {
    let msgs = [
        Message::new(kiln_data::Role::System, "Be brief."),
        Message::new(kiln_data::Role::User, "Hi"),
        Message::new(kiln_data::Role::Assistant, "Hello"),
    ];
    let inst = ChatTemplate::inst(Some("<s>"), Some("</s>")).expect("inst");
    assert_eq!(
        inst.render(&msgs, false).expect("render"),
        "<s>[INST] Be brief.\n\nHi [/INST] Hello</s>"
    );
    let alpaca = ChatTemplate::alpaca(Some("</s>")).expect("alpaca");
    assert_eq!(
        alpaca.render(&msgs[1..], false).expect("render"),
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nHi\n\n### Response:\nHello</s>\n\n"
    );
}

/// A run's template: the `--chat-template` file wins over the model's own; errors in the
/// model's template name its origin, or "the model's chat template" when the loader gave none.
#[test]
fn select_prefers_the_file_and_names_the_origin() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.jinja");
    std::fs::write(&file, "{{ messages[0]['content'] }}!").unwrap();
    let broken = "{% for %}";
    let t = ChatTemplate::select(Some(&file), Some(broken), None, None, None)
        .unwrap()
        .unwrap();
    let m = vec![kiln_data::Message::new(kiln_data::Role::User, "hi")];
    assert_eq!(t.render(&m, false).unwrap(), "hi!");
    let err = ChatTemplate::select(None, Some(broken), None, None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("the model's chat template"), "{err}");
    let err = ChatTemplate::select(
        None,
        Some(broken),
        Some("m/tokenizer_config.json"),
        None,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("m/tokenizer_config.json"), "{err}");
    assert!(
        ChatTemplate::select(None, None, None, None, None)
            .unwrap()
            .is_none()
    );
}
