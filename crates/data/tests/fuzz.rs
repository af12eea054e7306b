//! Fuzz targets of kiln-data: mutated JSON Lines, CSV and Parquet files and chat templates must
//! give records or typed errors, never a panic, and never allocate more than 64 MiB plus a small
//! multiple of the input's size.
//!
//! Each target runs for `KILN_FUZZ_MS` ms (3 s by default); `tools/fuzz.sh` runs each for 10
//! minutes. A failure prints `ARBTEST_SEED=...`, which replays it.
#![allow(clippy::unwrap_used)]
mod common;
#[path = "../../../fuzz/kit.rs"]
mod kit;

use arbitrary::Unstructured;
use kiln_data::{
    BadRecords, ChatTemplate, EncodeOptions, Encoder, Message, Reader, Role, load_chat_template,
};
use std::path::{Path, PathBuf};

#[global_allocator]
static ALLOC: kit::Counting = kit::Counting;

const JSONL: &str = r#"{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]}
{"conversations": [{"from": "human", "value": "U"}, {"from": "gpt", "value": "A"}]}
{"instruction": "I", "input": "X", "output": "O", "system": "S"}
{"prompt": "P", "completion": "C"}
{"text": "T"}
{"prompt": "P", "chosen": "C", "rejected": [{"role": "assistant", "content": "R"}]}
{"text": "T", "label": 2}
"#;

const CSV: &str =
    "instruction,input,output\n\"Say, hi\",,hi\nTranslate,\"chat\nnoir\",\"black \"\"cat\"\"\"\n";

/// Reads `path` under the skip policy and encodes every record with the ChatML template: the
/// path of `sft` from a data file to token ids.
fn read_and_encode(path: &Path, tok: &kiln_data::tokenizers::Tokenizer, t: &ChatTemplate) {
    let Ok(reader) = Reader::open(&[path.display().to_string()]) else {
        return;
    };
    let Ok((records, _)) = kit::outcome(reader.policy(BadRecords::Skip).read_all()) else {
        return;
    };
    let Ok(encoder) = Encoder::new(tok, Some(t), EncodeOptions::default()) else {
        return;
    };
    for r in &records {
        let _ = encoder.encode(r);
    }
}

/// A mutation of a line-oriented text file: one line edited as JSON (when it parses), or the
/// bytes mutated.
fn mutate_lines(u: &mut Unstructured<'_>, text: &str) -> arbitrary::Result<Vec<u8>> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if u.ratio(1, 2)? {
        let i = u.choose_index(lines.len())?;
        if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&lines[i]) {
            kit::mutate_json(u, &mut v)?;
            lines[i] = v.to_string();
            return Ok((lines.join("\n") + "\n").into_bytes());
        }
    }
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..u.int_in_range(1..=3)? {
        kit::mutate_bytes(u, &mut bytes, &[])?;
    }
    Ok(bytes)
}

fn chatml() -> ChatTemplate {
    ChatTemplate::with_origin(
        common::template("chatml"),
        "chatml.jinja",
        None,
        Some("<|im_end|>"),
    )
    .unwrap()
}

fn fuzz_text_reader(target: &str, name: &str, seeds: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    let (tok, t) = (common::tokenizer(), chatml());
    kit::run(target, |u| {
        let seed = u.choose(seeds)?;
        let bytes = mutate_lines(u, seed)?;
        std::fs::write(&path, &bytes).unwrap();
        let ((), peak) = kit::peak_during(|| read_and_encode(&path, &tok, &t));
        assert!(
            peak <= kit::bound(bytes.len(), 16),
            "{peak} bytes for {} bytes",
            bytes.len()
        );
        Ok(())
    });
}

#[test]
fn fuzz_jsonl_reader() {
    let chat = std::fs::read_to_string(parquet_dir().join("chat.jsonl")).unwrap();
    fuzz_text_reader("jsonl_reader", "data.jsonl", &[JSONL.to_string(), chat]);
}

#[test]
fn fuzz_csv_reader() {
    fuzz_text_reader("csv_reader", "data.csv", &[CSV.to_string()]);
}

fn parquet_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/parquet"
    ))
}

#[test]
fn fuzz_parquet_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.parquet");
    let seeds: Vec<Vec<u8>> = ["alpaca.parquet", "chat_snappy.parquet", "chat_zstd.parquet"]
        .iter()
        .map(|n| std::fs::read(parquet_dir().join(n)).unwrap())
        .collect();
    let (tok, t) = (common::tokenizer(), chatml());
    kit::run("parquet_reader", |u| {
        let mut bytes = u.choose(&seeds)?.clone();
        // The footer: metadata length (4 bytes) before the closing magic.
        let fields = [(bytes.len() - 8, 4)];
        for _ in 0..u.int_in_range(1..=3)? {
            kit::mutate_bytes(u, &mut bytes, &fields)?;
        }
        std::fs::write(&path, &bytes).unwrap();
        if std::env::var_os("KILN_FUZZ_KEEP").is_some() {
            std::fs::write("/tmp/kiln-fuzz-last.parquet", &bytes).unwrap();
        }
        let ((), peak) = kit::peak_during(|| read_and_encode(&path, &tok, &t));
        assert!(
            peak <= kit::bound(bytes.len(), 64),
            "{peak} bytes for {} bytes",
            bytes.len()
        );
        Ok(())
    });
}

/// Pieces of Jinja that templates are made of, spliced in at random places.
const JINJA: &[&str] = &[
    "{%",
    "%}",
    "{{",
    "}}",
    "{#",
    "#}",
    "{% for m in messages %}",
    "{% endfor %}",
    "{% if ",
    "{% else %}",
    "{% endif %}",
    "messages[0]['content']",
    "loop.index0",
    "| tojson(indent=2)",
    "raise_exception('x')",
    "{% set ns = namespace(a=1) %}",
    "m.content.strip()",
    "'",
    "\"",
    "(",
    ")",
    "[",
    "]",
    "|",
    "~",
    "messages[-1]",
    "{{ bos_token }}",
    "{% macro f() %}{% endmacro %}",
];

fn mutate_template(u: &mut Unstructured<'_>, src: &str) -> arbitrary::Result<String> {
    let mut s = src.to_string();
    for _ in 0..u.int_in_range(1..=4)? {
        let mut at = u.int_in_range(0..=s.len())?;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        if u.ratio(2, 3)? {
            s.insert_str(at, u.choose(JINJA)?);
        } else {
            let mut end = (at + u.int_in_range(1..=12)?).min(s.len());
            while !s.is_char_boundary(end) {
                end += 1;
            }
            s.replace_range(at..end, "");
        }
    }
    Ok(s)
}

#[test]
fn fuzz_chat_template() {
    let names = [
        "chatml",
        "llama3_1",
        "gemma2",
        "phi3_5",
        "qwen2_5",
        "mistral_nemo",
        "smollm2",
    ];
    let sources: Vec<String> = names.iter().map(|n| common::template(n)).collect();
    let messages = [
        Message::new(Role::System, "be brief"),
        Message::new(Role::User, "hi {{ x }}"),
        Message::new(Role::Assistant, "hello"),
    ];
    kit::run("chat_template", |u| {
        let seed = u.choose(&sources)?;
        let src = mutate_template(u, seed)?;
        let n = u.int_in_range(0..=3)?;
        let ((), peak) = kit::peak_during(|| {
            let t = ChatTemplate::with_origin(&src, "fuzz.jinja", Some("<s>"), None);
            if let Ok(t) = t.and_then(|t| t.render(&messages[..n], n % 2 == 0).map(|_| t)) {
                kit::outcome(Ok::<_, ()>(t)).ok();
            } else {
                kit::outcome(Err::<(), _>(())).ok();
            }
        });
        assert!(peak <= kit::bound(src.len(), 64), "{peak} bytes");
        Ok(())
    });
}

#[test]
fn fuzz_chat_template_loader() {
    let dir = tempfile::tempdir().unwrap();
    let valid = serde_json::json!({
        "bos_token": "<s>",
        "eos_token": {"content": "</s>"},
        "chat_template": [{"name": "default", "template": "{{ messages[0]['content'] }}"}],
    });
    let path = dir.path().join("tokenizer_config.json");
    kit::run("chat_template_loader", |u| {
        let mut json = valid.clone();
        kit::mutate_json(u, &mut json)?;
        let mut text = serde_json::to_vec(&json).unwrap();
        if u.ratio(1, 4)? {
            kit::mutate_bytes(u, &mut text, &[])?;
        }
        std::fs::write(&path, &text).unwrap();
        let name = *u.choose(&[None, Some("default"), Some("tool_use")])?;
        let ((), peak) = kit::peak_during(|| {
            let _ = kit::outcome(load_chat_template(dir.path(), name).and_then(|t| t.compile()));
        });
        assert!(peak <= kit::bound(text.len(), 16), "{peak} bytes");
        Ok(())
    });
}
