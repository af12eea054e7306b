//! Reward models against TRL 1.16's `RewardTrainer` with PEFT LoRA (r 4, all seven projections,
//! `modules_to_save = ["score"]`, task SEQ_CLS) on the tiny Llama as
//! `LlamaForSequenceClassification` (fixtures/reward/, tools/fixtures/trl_reward.py): from the
//! same initial adapter and head, 2 optimizer steps give every logged metric within 1e-4 of
//! TRL's and the adapter and head after step 1 within 1e-5; the pairs tokenize as TRL's; the
//! sequence-classification losses equal transformers'; bad input gives typed errors.
#![allow(clippy::unwrap_used)]
mod common;

use common::*;
use kiln_data::{ChatTemplate, DataError, FieldMap, PreferenceEncoder, read_reward_records};
use kiln_lora::{LoraModel, read_safetensors};
use kiln_models::{ProblemType, SequenceClassifier};
use kiln_train::{
    RewardOptions, RewardPair, RewardTrainer, ScoreLabel, TrainError, Trainer, classification_loss,
};
use serde_json::Value;
use std::path::Path;

fn encoder_parts() -> (kiln_data::tokenizers::Tokenizer, ChatTemplate) {
    let dir = fixture("dpo/tokenizer");
    let tokenizer =
        kiln_data::tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let template =
        ChatTemplate::from_file(&dir.join("chat_template.jinja"), None, Some("<|im_end|>"))
            .unwrap();
    (tokenizer, template)
}

fn pairs(path: &Path) -> Vec<RewardPair> {
    let (tokenizer, template) = encoder_parts();
    let enc = PreferenceEncoder::new(&tokenizer, Some(&template), Some("<|im_end|>"));
    read_reward_records(path, &FieldMap::default())
        .unwrap()
        .iter()
        .map(|r| {
            let [chosen, rejected] = enc.encode_sequences(&r.pair, &r.at).unwrap();
            RewardPair {
                chosen,
                rejected,
                margin: r.margin,
            }
        })
        .collect()
}

fn data_path(case: &str) -> std::path::PathBuf {
    match case {
        "standard_margin" => fixture("reward/standard_margin.jsonl"),
        _ => fixture("dpo/conversational.jsonl"),
    }
}

fn model() -> LoraModel<SequenceClassifier> {
    let cls = SequenceClassifier::load(&fixture("reward/model"), &device()).unwrap();
    let mut m = LoraModel::new(cls);
    m.load_adapter(&fixture("reward/adapter_init"), "default")
        .unwrap();
    m
}

#[test]
fn pairs_tokenize_as_trl() {
    let text = std::fs::read_to_string(fixture("reward/tokenized.json")).unwrap();
    let want: Value = serde_json::from_str(&text).unwrap();
    for case in ["conversational", "standard_margin"] {
        let got = pairs(&data_path(case));
        let want = want[case].as_array().unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            let ids = |k: &str| -> Vec<u32> {
                w[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect()
            };
            assert_eq!(g.chosen, ids("chosen_ids"), "{case}");
            assert_eq!(g.rejected, ids("rejected_ids"), "{case}");
        }
    }
}

const METRICS: [&str; 8] = [
    "loss",
    "grad_norm",
    "accuracy",
    "margin",
    "min_reward",
    "mean_reward",
    "max_reward",
    "num_tokens",
];

fn run_case(name: &str) {
    let text = std::fs::read_to_string(fixture("reward").join(name).join("metrics.json")).unwrap();
    let want: Value = serde_json::from_str(&text).unwrap();
    let h = &want["hyper"];
    let steps = want["steps"].as_array().unwrap();
    let accum = h["accum"].as_u64().unwrap() as usize;
    let options = RewardOptions {
        batch_size: h["batch"].as_u64().unwrap() as usize,
        center_rewards_coefficient: h["center"].as_f64(),
        pad_id: 0,
        ..RewardOptions::default()
    };
    let lr = h["lr"].as_f64().unwrap();
    let trainer =
        Trainer::new(model(), &device(), trainer_options(accum, lr, steps.len())).unwrap();
    let mut rm = RewardTrainer::new(trainer, pairs(&data_path(name)), options).unwrap();
    let mut worst = 0f64;
    for want in steps {
        let got = serde_json::to_value(rm.step().unwrap().unwrap()).unwrap();
        for k in METRICS {
            let (g, w) = (got[k].as_f64().unwrap(), want[k].as_f64().unwrap());
            worst = worst.max((g - w).abs());
            assert!(
                (g - w).abs() < 1e-4,
                "{name} step {}: {k} {g} vs TRL {w}",
                want["step"]
            );
        }
        if got["step"] == 1 {
            let path = fixture("reward")
                .join(name)
                .join("adapter_step1.safetensors");
            let step1 = read_safetensors(&path).unwrap();
            let ours = rm.trainer.model().adapter_state_dict("default").unwrap();
            assert_eq!(
                ours.keys().collect::<Vec<_>>(),
                step1.keys().collect::<Vec<_>>(),
                "{name}: adapter keys"
            );
            let mut w_err = 0f32;
            for (key, t) in &step1 {
                let o = &ours[key];
                assert_eq!(o.shape, t.shape, "{name}: {key}");
                for (a, b) in o.data.iter().zip(&t.data) {
                    w_err = w_err.max((a - b).abs());
                }
            }
            assert!(
                w_err < 1e-5,
                "{name}: adapter and head after step 1 differ by {w_err}"
            );
            println!("{name}: adapter and head after step 1 within {w_err:.2e}");
        }
    }
    println!("{name}: every metric of 2 steps within {worst:.2e} of TRL");
}

#[test]
fn reward_conversational_matches_trl() {
    let _g = serial();
    run_case("conversational");
}

#[test]
fn reward_margin_center_accum_matches_trl() {
    let _g = serial();
    run_case("standard_margin");
}

fn reference() -> Value {
    let text = std::fs::read_to_string(fixture("reward/scores.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    let mut out = Vec::new();
    for x in v.as_array().unwrap() {
        match x.as_array() {
            Some(row) => out.extend(row.iter().map(|y| y.as_f64().unwrap() as f32)),
            None => out.push(x.as_f64().unwrap() as f32),
        }
    }
    out
}

#[test]
fn classification_and_regression_losses_equal_transformers() {
    let want = reference();
    let scores = floats(&want["scores"]);
    let labels: Vec<ScoreLabel> = floats(&want["regression_labels"])
        .into_iter()
        .map(|y| ScoreLabel::Values(vec![y]))
        .collect();
    let (loss, grad) = classification_loss(&scores, &labels, 1, ProblemType::Regression).unwrap();
    let w = want["regression_loss"].as_f64().unwrap();
    assert!((loss - w).abs() < 1e-6, "regression {loss} vs {w}");
    // d MSE / d s_i = 2 (s_i - y_i) / b
    let y = floats(&want["regression_labels"]);
    assert!((grad[1] - 2.0 * (scores[1] - y[1]) / 4.0).abs() < 1e-7);
    let scores3 = floats(&want["scores3"]);
    let classes: Vec<ScoreLabel> = want["class_labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| ScoreLabel::Class(c.as_u64().unwrap() as usize))
        .collect();
    let (loss, grad) = classification_loss(
        &scores3,
        &classes,
        3,
        ProblemType::SingleLabelClassification,
    )
    .unwrap();
    let w = want["classification_loss"].as_f64().unwrap();
    assert!((loss - w).abs() < 1e-6, "cross-entropy {loss} vs {w}");
    // Each row's gradient sums to zero (softmax - onehot).
    for row in grad.chunks(3) {
        assert!(row.iter().sum::<f32>().abs() < 1e-6);
    }
    let err = classification_loss(
        &scores3,
        &[ScoreLabel::Class(3)],
        3,
        ProblemType::SingleLabelClassification,
    );
    assert!(matches!(err, Err(TrainError::Option { .. })), "{err:?}");
}

#[test]
fn bad_reward_input_gives_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pairs.jsonl");
    std::fs::write(
        &path,
        "{\"prompt\": \"Q\", \"chosen\": \"a\", \"rejected\": \"b\"}\n{\"prompt\": \"Q\", \"rejected\": \"b\"}\n",
    )
    .unwrap();
    match read_reward_records(&path, &FieldMap::default()) {
        Err(DataError::MissingField { at, field }) => {
            assert_eq!(
                (at.file.as_path(), at.line, field.as_str()),
                (path.as_path(), 2, "chosen")
            );
        }
        other => panic!("missing chosen: {other:?}"),
    }
    std::fs::write(
        &path,
        "{\"chosen\": \"a b\", \"rejected\": \"a c\", \"margin\": \"big\"}\n",
    )
    .unwrap();
    let err = read_reward_records(&path, &FieldMap::default()).unwrap_err();
    assert!(
        matches!(&err, DataError::WrongType { field, .. } if field == "margin"),
        "{err}"
    );
    assert!(err.to_string().contains("pairs.jsonl"), "{err}");
    // The one-label adapter's head does not fit a head of three labels.
    let cls = SequenceClassifier::load(&fixture("reward/model3"), &device()).unwrap();
    let mut m = LoraModel::new(cls);
    match m.load_adapter(&fixture("reward/adapter_init"), "default") {
        Err(kiln_lora::LoraError::Shape {
            key,
            expected,
            found,
        }) => {
            assert_eq!(key, "base_model.model.score.weight");
            assert_eq!((expected, found), (vec![3, 64], vec![1, 64]));
        }
        other => panic!("head shape mismatch: {other:?}"),
    }
    // A head of three labels is not a reward model.
    let cls = SequenceClassifier::load(&fixture("reward/model3"), &device()).unwrap();
    let config = kiln_lora::LoraConfig::new(
        4,
        8.0,
        kiln_lora::TargetModules::Names(vec!["q_proj".into()]),
    );
    let m = LoraModel::with_adapter(cls, "default", config).unwrap();
    let trainer = Trainer::new(m, &device(), trainer_options(1, 1e-3, 1)).unwrap();
    let pair = RewardPair {
        chosen: vec![5, 6],
        rejected: vec![5, 7],
        margin: None,
    };
    match RewardTrainer::new(trainer, vec![pair], RewardOptions::default()) {
        Err(TrainError::Option { key, .. }) => assert_eq!(key, "num_labels"),
        Err(e) => panic!("3 labels: {e}"),
        Ok(_) => panic!("3 labels accepted"),
    }
}

/// A new kiln adapter for a reward model: LoRA r 4 (A and B random) on every projection, the
/// head in `modules_to_save`, task SEQ_CLS, after one reward step.
fn kiln_trained_adapter() -> LoraModel<SequenceClassifier> {
    let cls = SequenceClassifier::load(&fixture("reward/model"), &device()).unwrap();
    let targets = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];
    let mut config = kiln_lora::LoraConfig::new(
        4,
        8.0,
        kiln_lora::TargetModules::Names(targets.map(String::from).to_vec()),
    );
    config.init_lora_weights = kiln_lora::InitLoraWeights::Random;
    config.modules_to_save = Some(vec!["score".into()]);
    config.task_type = Some("SEQ_CLS".into());
    device().seed(11);
    kiln_lora::manual_seed(11);
    let m = LoraModel::with_adapter(cls, "default", config).unwrap();
    let trainer = Trainer::new(m, &device(), trainer_options(1, 1e-2, 1)).unwrap();
    let options = RewardOptions {
        batch_size: 3,
        ..RewardOptions::default()
    };
    let mut rm = RewardTrainer::new(trainer, pairs(&data_path("conversational")), options).unwrap();
    rm.step().unwrap().unwrap();
    rm.trainer.into_model()
}

fn batch_of_reference() -> kiln_models::DecoderInput {
    let want = reference();
    let flat = |k: &str| -> Vec<u64> {
        want[k]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()))
            .collect()
    };
    let b = want["input_ids"].as_array().unwrap().len();
    let ids: Vec<u32> = flat("input_ids").into_iter().map(|x| x as u32).collect();
    let t = ids.len() / b;
    let mask = flat("attention_mask")
        .into_iter()
        .map(|x| x as u8)
        .collect();
    kiln_models::DecoderInput::new(ids, b, t).with_attention_mask(mask)
}

/// fixtures/reward/kiln_written/ holds the adapter kiln writes after one reward step
/// (`KILN_WRITE_GOLDEN=1` rewrites it) and PEFT's scores with it
/// (`python3 tools/check_reward_adapter.py fixtures/reward/kiln_written`, which loads it with
/// `PeftModel.from_pretrained` on `AutoModelForSequenceClassification`): kiln still writes
/// these files (config exactly, tensors within 1e-6), and kiln's scores with the adapter loaded
/// back equal PEFT's within 1e-5.
#[test]
fn kiln_written_reward_adapter_loads_in_peft() {
    let _g = serial();
    let write = std::env::var("KILN_WRITE_GOLDEN").is_ok();
    let golden = fixture("reward/kiln_written");
    let tmp = tempfile::tempdir().unwrap();
    let dir = if write {
        golden.clone()
    } else {
        tmp.path().to_path_buf()
    };
    let trained = kiln_trained_adapter();
    trained.save_adapter(&dir, "default").unwrap();
    if write {
        let _ = std::fs::remove_file(dir.join("peft_scores.json"));
        panic!(
            "adapter rewritten; now run `python3 tools/check_reward_adapter.py {}`",
            dir.display()
        );
    }
    let json = |p: std::path::PathBuf| -> Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let config = json(dir.join("adapter_config.json"));
    assert_eq!(
        config,
        json(golden.join("adapter_config.json")),
        "adapter_config.json changed"
    );
    assert_eq!(config["task_type"], "SEQ_CLS");
    assert_eq!(config["modules_to_save"], serde_json::json!(["score"]));
    let ours = read_safetensors(&dir.join("adapter_model.safetensors")).unwrap();
    let theirs = read_safetensors(&golden.join("adapter_model.safetensors")).unwrap();
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    assert!(ours.contains_key("base_model.model.score.weight"));
    for (k, t) in &ours {
        let err = t
            .data
            .iter()
            .zip(&theirs[k].data)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err <= 1e-6, "{k} differs by {err}");
    }
    // Loaded back into a fresh model: the same scores as the trained model, and as PEFT's.
    let input = batch_of_reference();
    let before = trained.model.scores(&input).unwrap();
    let cls = SequenceClassifier::load(&fixture("reward/model"), &device()).unwrap();
    let mut fresh = LoraModel::new(cls);
    fresh.load_adapter(&golden, "default").unwrap();
    let got = fresh.model.scores(&input).unwrap();
    let want = floats(&json(golden.join("peft_scores.json"))["scores"]);
    let base = floats(&reference()["scores"]);
    let diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    assert!(diff(&got, &want) <= 1e-5, "kiln {got:?} vs PEFT {want:?}");
    assert!(
        diff(&got, &before) <= 1e-5,
        "reloaded {got:?} vs trained {before:?}"
    );
    assert!(diff(&got, &base) > 1e-3, "the adapter changes the scores");
    println!(
        "kiln-written adapter: scores within {:.2e} of PEFT's",
        diff(&got, &want)
    );
}

/// The rows of fixtures/reward/scores.json without their padding.
fn reference_rows() -> Vec<Vec<u32>> {
    let want = reference();
    let ids = want["input_ids"].as_array().unwrap();
    let masks = want["attention_mask"].as_array().unwrap();
    ids.iter()
        .zip(masks)
        .map(|(r, m)| {
            r.as_array()
                .unwrap()
                .iter()
                .zip(m.as_array().unwrap())
                .filter(|(_, m)| m.as_u64() == Some(1))
                .map(|(x, _)| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

/// Classification (3 labels, cross-entropy) and regression (1 label, MSE) fine-tuning: the
/// first step's loss (new LoRA, B = 0: the base's scores) equals transformers' loss on the same
/// rows and labels, and 8 steps on these 4 rows bring it down.
#[test]
fn classification_and_regression_fine_tuning() {
    let _g = serial();
    let want = reference();
    let rows = reference_rows();
    let reg = floats(&want["regression_labels"]);
    let classes = want["class_labels"].as_array().unwrap();
    for (dir, key) in [
        ("model3", "classification_loss"),
        ("model", "regression_loss"),
    ] {
        let labeled: Vec<kiln_train::LabeledSeq> = rows
            .iter()
            .enumerate()
            .map(|(i, ids)| kiln_train::LabeledSeq {
                ids: ids.clone(),
                label: match dir {
                    "model3" => ScoreLabel::Class(classes[i].as_u64().unwrap() as usize),
                    _ => ScoreLabel::Values(vec![reg[i]]),
                },
            })
            .collect();
        let cls = SequenceClassifier::load(&fixture("reward").join(dir), &device()).unwrap();
        let mut config = kiln_lora::LoraConfig::new(
            4,
            8.0,
            kiln_lora::TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]),
        );
        config.modules_to_save = Some(vec!["score".into()]);
        kiln_lora::manual_seed(3);
        let m = LoraModel::with_adapter(cls, "default", config).unwrap();
        let trainer = Trainer::new(m, &device(), trainer_options(1, 2e-2, 8)).unwrap();
        let mut ct = kiln_train::ClassifierTrainer::new(trainer, labeled, 4, 0).unwrap();
        let losses: Vec<f64> = (0..8).map(|_| ct.step().unwrap().unwrap().loss).collect();
        let w = want[key].as_f64().unwrap();
        assert!(
            (losses[0] - w).abs() < 1e-5,
            "{dir}: first loss {} vs transformers {w}",
            losses[0]
        );
        assert!(losses[7] < 0.5 * losses[0], "{dir}: losses {losses:?}");
        println!(
            "{dir}: loss {:.4} (transformers {w:.4}) -> {:.4} after 8 steps",
            losses[0], losses[7]
        );
    }
}

/// The recipe (`run_reward`, the `reward_model` example's library call) on the tiny Llama with
/// the fixture tokenizer: a new head and adapter, `metrics.jsonl` with TRL's names, an adapter
/// PEFT can load (task SEQ_CLS, `score.weight` under PEFT's name) that loads back into kiln,
/// and the pairs' loss going down.
#[test]
fn run_reward_writes_metrics_and_a_peft_adapter() {
    let _g = serial();
    let model = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("tiny/llama").join(f), model.path().join(f)).unwrap();
    }
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ] {
        std::fs::copy(fixture("dpo/tokenizer").join(f), model.path().join(f)).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let run = kiln_train::RewardRun {
        model: model.path().to_path_buf(),
        data: fixture("reward/standard_margin.jsonl"),
        output_dir: out.path().join("run"),
        max_steps: 6,
        lr: 1e-2,
        batch_size: 3,
        lora_r: 4,
        lora_alpha: 8.0,
        precision: Some(kiln_train::Precision::F32),
        ..kiln_train::RewardRun::default()
    };
    let summary = kiln_train::run_reward(&run, |_| {}).unwrap();
    assert_eq!((summary.pairs, summary.history.len()), (6, 6));
    assert!(summary.after.loss < summary.before.loss, "{summary:?}");
    let text = std::fs::read_to_string(out.path().join("run/metrics.jsonl")).unwrap();
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    for k in METRICS {
        assert!(first[k].is_number(), "metrics.jsonl lacks {k}: {first}");
    }
    let adapter = &summary.adapter_dir;
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["task_type"], "SEQ_CLS");
    let tensors = read_safetensors(&adapter.join("adapter_model.safetensors")).unwrap();
    assert_eq!(tensors["base_model.model.score.weight"].shape, [1, 64]);
    assert!(out.path().join("run/loss_curve.png").exists());
}

/// `run_reward` with `save_steps` 1 stopped after step 1 and resumed to step 3 writes the same
/// `metrics.jsonl` and the same adapter (LoRA and the `score` head), byte for byte, as a run of
/// 3 steps; a fresh run into the finished run's directory is refused.
#[test]
fn reward_recipe_resume_writes_the_same_files() {
    let _g = serial();
    let model = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("tiny/llama").join(f), model.path().join(f)).unwrap();
    }
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ] {
        std::fs::copy(fixture("dpo/tokenizer").join(f), model.path().join(f)).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let run = |name: &str, max_steps: usize, resume: bool| {
        let run = kiln_train::RewardRun {
            model: model.path().to_path_buf(),
            data: fixture("reward/standard_margin.jsonl"),
            output_dir: out.path().join(name),
            max_steps,
            lr: 1e-2,
            batch_size: 2,
            lora_r: 4,
            lora_alpha: 8.0,
            save_steps: Some(1),
            resume,
            precision: Some(kiln_train::Precision::F32),
            ..kiln_train::RewardRun::default()
        };
        kiln_train::run_reward(&run, |_| {})
    };
    run("whole", 3, false).unwrap();
    let err = run("whole", 1, false).unwrap_err().to_string();
    assert!(err.contains("overwrite"), "{err}");
    run("stopped", 1, false).unwrap();
    let resumed = run("stopped", 3, true).unwrap();
    assert_eq!(
        resumed.history.len(),
        2,
        "steps 2 and 3 run after the resume"
    );
    let read = |name: &str, f: &str| std::fs::read(out.path().join(name).join(f)).unwrap();
    for f in ["metrics.jsonl", "adapter/adapter_model.safetensors"] {
        assert!(read("whole", f) == read("stopped", f), "{f} differs");
    }
    let lines = String::from_utf8(read("stopped", "metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 3);
}
