//! Exact resume of preference runs: a run checkpointed after step 1
//! (`DpoTrainer::save_checkpoint`) and resumed in a new trainer built as the run started
//! (`DpoTrainer::resume`) logs the same metrics for steps 2 and 3 and ends with the same adapter,
//! bit for bit, as the run that was never interrupted: DPO from an existing adapter (its
//! reference is that adapter, recomputed from the starting weights) and ORPO, both with
//! gradient accumulation 2 (the data position crosses the checkpoint).
#![allow(clippy::unwrap_used)]
mod common;

use common::*;
use kiln_data::{ChatTemplate, FieldMap, PreferenceEncoder};
use kiln_lora::LoraModel;
use kiln_train::{DpoOptions, DpoStepMetrics, DpoTrainer, PreferencePairs, Trainer};

fn pairs(answers: bool) -> PreferencePairs {
    let dir = fixture("dpo");
    let tokenizer =
        kiln_data::tokenizers::Tokenizer::from_file(dir.join("tokenizer/tokenizer.json")).unwrap();
    let template = ChatTemplate::from_file(
        &dir.join("tokenizer/chat_template.jinja"),
        None,
        Some("<|im_end|>"),
    )
    .unwrap();
    let enc = PreferenceEncoder::new(&tokenizer, Some(&template), Some("<|im_end|>"));
    let records =
        kiln_data::read_preferences(&dir.join("conversational.jsonl"), &FieldMap::default())
            .unwrap();
    if answers {
        let p = records
            .iter()
            .map(|(at, p)| enc.encode_answers(p, at, None, 2));
        PreferencePairs::Answers(p.map(Result::unwrap).collect())
    } else {
        let p = records.iter().map(|(at, p)| enc.encode(p, at));
        PreferencePairs::Dpo(p.map(Result::unwrap).collect())
    }
}

const STEPS: usize = 3;

fn start(loss: &str) -> DpoTrainer<LoraModel<kiln_models::CausalLm>> {
    let mut model = LoraModel::new(tiny_model());
    model
        .load_adapter(&fixture("dpo/adapter_init_b"), "default")
        .unwrap();
    let mut trainer_options = options(2, 1e-3, STEPS);
    trainer_options.precision = Some(kiln_train::Precision::F32);
    let trainer = Trainer::new(model, &device(), trainer_options).unwrap();
    let options = DpoOptions {
        loss_type: loss.parse().unwrap(),
        beta: 0.5,
        batch_size: 1,
        max_length: Some(64),
        ..DpoOptions::default()
    };
    DpoTrainer::new(trainer, pairs(loss == "orpo"), options, STEPS).unwrap()
}

fn adapter(run: &DpoTrainer<LoraModel<kiln_models::CausalLm>>) -> Vec<(String, Vec<f32>)> {
    let state = run.trainer.model().adapter_state_dict("default").unwrap();
    state.into_iter().map(|(k, t)| (k, t.data)).collect()
}

fn check(loss: &str) {
    let mut whole = start(loss);
    let want: Vec<DpoStepMetrics> = (0..STEPS).map(|_| whole.step().unwrap().unwrap()).collect();
    let root = std::env::temp_dir().join(format!("kiln_pref_resume_{loss}_{}", std::process::id()));
    let mut first = start(loss);
    first.step().unwrap().unwrap();
    let dir = first.save_checkpoint(&root, 1).unwrap();
    drop(first);
    let mut resumed = start(loss).resume(&device(), &dir).unwrap();
    assert_eq!(resumed.trainer.state.step, 1, "{loss}");
    for want in &want[1..] {
        let got = resumed.step().unwrap().unwrap();
        // `tokens_per_s`-like timings are not in DpoStepMetrics: every field must agree.
        assert_eq!(&got, want, "{loss}: step {}", want.step);
    }
    assert!(
        adapter(&resumed) == adapter(&whole),
        "{loss}: final adapter differs"
    );
    assert!(
        adapter(&resumed) != adapter(&start(loss)),
        "{loss}: the adapter trained"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn dpo_resume_equals_an_uninterrupted_run() {
    let _g = serial();
    check("sigmoid");
}

#[test]
fn orpo_resume_equals_an_uninterrupted_run() {
    let _g = serial();
    check("orpo");
}

/// The recipe (`run_dpo`, `dpo --save-steps 1` then `--resume`): a run stopped after step 1 and
/// resumed to step 3 writes the same `metrics.jsonl` and the same adapter files, byte for byte,
/// as a run of 3 steps (ORPO, and DPO whose reference comes from the starting model).
#[test]
fn recipe_resume_writes_the_same_files() {
    let _g = serial();
    let dir = std::env::temp_dir().join(format!("kiln_pref_recipe_resume_{}", std::process::id()));
    let model_dir = preference_model_dir(&dir);
    for loss in ["orpo", "sigmoid"] {
        let run = |out: &str, max_steps: usize, resume: bool| {
            let run = kiln_train::DpoRun {
                model: model_dir.clone(),
                data: fixture("dpo/conversational.jsonl"),
                output_dir: dir.join(loss).join(out),
                max_steps,
                lr: 1e-3,
                dpo: DpoOptions {
                    loss_type: loss.parse().unwrap(),
                    batch_size: 2,
                    max_length: Some(64),
                    ..DpoOptions::default()
                },
                lora_r: 4,
                lora_alpha: 8.0,
                save_steps: Some(1),
                resume,
                precision: Some(kiln_train::Precision::F32),
                ..kiln_train::DpoRun::default()
            };
            kiln_train::run_dpo(&run, |_| {}).unwrap();
        };
        run("whole", 3, false);
        // A fresh run pointed at an existing run's directory is refused and changes nothing
        // (issue #23's run-directory rule, as for SFT).
        let before = std::fs::read(dir.join(loss).join("whole/metrics.jsonl")).unwrap();
        let again = kiln_train::DpoRun {
            model: model_dir.clone(),
            data: fixture("dpo/conversational.jsonl"),
            output_dir: dir.join(loss).join("whole"),
            max_steps: 1,
            ..kiln_train::DpoRun::default()
        };
        let err = kiln_train::run_dpo(&again, |_| {}).unwrap_err().to_string();
        assert!(
            err.contains("--overwrite") || err.contains("overwrite"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(dir.join(loss).join("whole/metrics.jsonl")).unwrap(),
            before
        );
        run("stopped", 1, false);
        run("stopped", 3, true);
        let read = |out: &str, f: &str| std::fs::read(dir.join(loss).join(out).join(f)).unwrap();
        for f in ["metrics.jsonl", "adapter/adapter_model.safetensors"] {
            assert!(
                read("whole", f) == read("stopped", f),
                "{loss}: {f} differs"
            );
        }
        let lines = String::from_utf8(read("stopped", "metrics.jsonl")).unwrap();
        assert_eq!(lines.lines().count(), 3, "{loss}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
