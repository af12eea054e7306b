//! The command-line examples run end to end on the real SmolLM2 (CI fetches it): `sft` trains,
//! resumes and names its base as PEFT expects, `eval` scores the adapter it wrote, `render`
//! prints a conversation without an assistant turn as transformers does. `cargo test` (the
//! README's command) builds the examples before it runs tests; these tests run the binaries it
//! built. Run alone (`cargo test --test examples`), cargo does not rebuild the examples: build
//! them first (`cargo build --examples --features serve`).
use std::path::{Path, PathBuf};
use std::process::Command;

/// The default model, or `None` (skipped, with the fetch command printed) outside CI; with
/// `KILN_REQUIRE_MODEL` set, as in CI, a missing model fails the test.
fn smollm2() -> Option<PathBuf> {
    let path = kiln::models::fetch::smollm2_path();
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

/// Runs example `name` (built by `cargo test` next to this test's binary) and returns stdout;
/// a failure shows its stderr.
fn run(name: &str, args: &[&str]) -> String {
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .join("examples")
        .join(name);
    let out = Command::new(&bin)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{name} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[test]
fn render_prints_a_conversation_without_an_assistant_turn_as_transformers_does() {
    let Some(model) = smollm2() else { return };
    let out = run(
        "render",
        &[
            "--model",
            model.to_str().unwrap(),
            "--messages-json",
            r#"[{"role":"user","content":"Hi"}]"#,
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // transformers 5.23: AutoTokenizer.from_pretrained(cache, gguf_file=...)
    //   .apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert_eq!(
        v["text"],
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
         Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
}

#[test]
fn sft_trains_resumes_and_eval_scores_its_adapter() {
    let Some(model) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (m, o) = (model.to_str().unwrap(), out.to_str().unwrap());
    let common = [
        "--model",
        m,
        "--data",
        "fixtures/parquet/chat.jsonl",
        "--output-dir",
        o,
        "--max-seq-len",
        "64",
        "--batch-size",
        "2",
    ];
    run("sft", &[&common[..], &["--max-steps", "2"]].concat());
    let resumed = run(
        "sft",
        &[&common[..], &["--max-steps", "3", "--resume"]].concat(),
    );
    assert!(resumed.contains("resuming from"), "{resumed}");
    // The resumed run appends step 3 after the checkpoint's steps 1 and 2, each once.
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3]);
    // The adapter names the default model's Hub id, as PEFT needs to load its base.
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        config["base_model_name_or_path"],
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    );
    let card = std::fs::read_to_string(out.join("adapter/README.md")).unwrap();
    assert!(card.starts_with("---\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\n"));

    let adapter = out.join("adapter");
    let report = dir.path().join("eval");
    let scored = run(
        "eval",
        &[
            "--model",
            m,
            "--adapter",
            adapter.to_str().unwrap(),
            "--data",
            "fixtures/parquet/chat.jsonl",
            "--limit",
            "2",
            "--max-new-tokens",
            "8",
            "--metric",
            "exact_match,perplexity",
            "--output-dir",
            report.to_str().unwrap(),
        ],
    );
    assert!(scored.contains("perplexity"), "{scored}");
    let ppl = scored
        .lines()
        .find_map(|l| l.trim().strip_prefix("perplexity"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("a perplexity line");
    assert!(ppl.is_finite() && ppl > 1.0, "{scored}");
}
