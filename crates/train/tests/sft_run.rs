//! The SFT recipe on the real SmolLM2: `run_sft` stopped after 2 steps and resumed to 3 writes
//! the same adapter, byte for byte, as one 3-step run, `metrics.jsonl` holds each step once,
//! and the step-by-step `Sft` API gives `run_sft`'s adapter.
//!
//! Needs the model in kiln's cache (`tools/fetch_model.sh`; CI sets `KILN_REQUIRE_MODEL=1`).
#![allow(clippy::unwrap_used)]
mod common;

use kiln_lora::{LoraConfig, TargetModules};
use kiln_models::fetch;
use kiln_train::{RunMode, Sft, SftBatches, SftConfig, SftEvent, run_sft};
use std::path::Path;

fn config(out: &Path, steps: usize) -> SftConfig {
    let mut c = SftConfig::new(fetch::smollm2_path());
    c.output_dir = out.to_path_buf();
    c.data.train = vec![common::fixture("parquet/chat.jsonl")];
    c.data.max_seq_len = 64;
    c.micro_batch_size = 2;
    c.max_steps = Some(steps);
    c.precision = Some(kiln_train::Precision::F32);
    // A constant learning rate: a 2-step run resumed to 3 steps then follows the 3-step run's
    // schedule (a decaying one depends on the total).
    c.schedule.kind = kiln_train::ScheduleKind::Constant;
    c.schedule.warmup_steps = Some(0);
    c.lora = Some(LoraConfig::new(
        4,
        8.0,
        TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]),
    ));
    c
}

fn adapter(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap()
}

#[test]
fn run_sft_resumes_to_the_same_adapter_and_sft_steps_match_it() {
    let _g = common::serial();
    if !common::model_cached(&fetch::smollm2_path(), "tools/fetch_model.sh") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (whole, split, steps) = (
        dir.path().join("whole"),
        dir.path().join("split"),
        dir.path().join("steps"),
    );
    let done = run_sft(&config(&whole, 3), RunMode::Fresh, |_| {}).unwrap();
    assert_eq!(done.run.steps, 3);
    assert_eq!(done.output, whole.join("adapter"));
    // The default model's Hub id, as PEFT needs to load the base.
    assert_eq!(
        done.metadata.config.hub_id().as_deref(),
        Some("HuggingFaceTB/SmolLM2-135M-Instruct")
    );

    run_sft(&config(&split, 2), RunMode::Fresh, |_| {}).unwrap();
    let mut events = Vec::new();
    run_sft(&config(&split, 3), RunMode::Resume, |e| events.push(e)).unwrap();
    assert!(
        events.iter().any(|e| matches!(e, SftEvent::Resuming(_))),
        "{events:?}"
    );
    assert!(
        adapter(&whole) == adapter(&split),
        "resumed adapter differs"
    );
    let metrics = std::fs::read_to_string(split.join("metrics.jsonl")).unwrap();
    let train_steps: Vec<u64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(train_steps, [1, 2, 3]);

    // The same run through the recipe's steps.
    let mut sft = Sft::from_config(config(&steps, 3), RunMode::Fresh).unwrap();
    let lm = sft.load_model().unwrap();
    let template = sft.chat_template(&lm).unwrap();
    let data = sft.prepare_data(&lm, template.as_ref()).unwrap();
    let trained = sft
        .train(&lm, SftBatches::from_data(&data), Vec::new(), &mut |_| {})
        .unwrap();
    assert_eq!(trained.metadata.train_examples, data.train_examples);
    trained.save(&lm, &mut |_| {}).unwrap();
    assert!(
        adapter(&whole) == adapter(&steps),
        "Sft steps differ from run_sft"
    );
    assert!(steps.join("adapter/README.md").is_file());
    assert!(steps.join("loss_curve.png").is_file());
}
