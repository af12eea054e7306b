//! DPO against TRL 1.16's `DPOTrainer` with PEFT LoRA on the tiny Llama
//! (fixtures/dpo/, tools/fixtures/trl_dpo.py): for each loss type (`sigmoid`, `ipo`, `hinge`,
//! `robust`), gradient accumulation with `keep_end` truncation, and training on from an existing
//! adapter, and with `precompute_ref_log_probs` (from a new and from an existing adapter),
//! 3 optimizer steps give every logged metric within 1e-4 of TRL's and the adapter after
//! step 1 within 1e-5. Invariant: with policy = reference the sigmoid loss at step 0 is
//! exactly ln 2.
#![allow(clippy::unwrap_used)]
mod common;

use common::*;
use kiln_data::{ChatTemplate, FieldMap, PreferenceEncoder, PreferenceIds, TruncationMode};
use kiln_lora::{LoraModel, read_safetensors};
use kiln_models::CausalLm;
use kiln_train::{DpoOptions, DpoTrainer, Trainer};
use serde_json::Value;

fn pairs() -> Vec<PreferenceIds> {
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
    kiln_data::read_preferences(&dir.join("conversational.jsonl"), &FieldMap::default())
        .unwrap()
        .iter()
        .map(|(at, p)| enc.encode(p, at).unwrap())
        .collect()
}

fn model(init: &str) -> LoraModel<CausalLm> {
    let mut m = LoraModel::new(tiny_model());
    m.load_adapter(&fixture("dpo").join(init), "default")
        .unwrap();
    m
}

const METRICS: [&str; 8] = [
    "loss",
    "grad_norm",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
];

fn run_case(name: &str) {
    let text = std::fs::read_to_string(fixture("dpo").join(name).join("metrics.json")).unwrap();
    let want: Value = serde_json::from_str(&text).unwrap();
    let h = &want["hyper"];
    let steps = want["steps"].as_array().unwrap();
    let accum = h["accum"].as_u64().unwrap() as usize;
    let options = DpoOptions {
        beta: h["beta"].as_f64().unwrap(),
        loss_type: h["loss_type"].as_str().unwrap().parse().unwrap(),
        label_smoothing: h["label_smoothing"].as_f64().unwrap(),
        batch_size: h["batch"].as_u64().unwrap() as usize,
        max_length: Some(h["max_length"].as_u64().unwrap() as usize),
        truncation: h["truncation_mode"].as_str().unwrap().parse().unwrap(),
        precompute_ref_log_probs: h["precompute_ref_log_probs"].as_bool().unwrap_or(false),
        ..DpoOptions::default()
    };
    let lr = h["lr"].as_f64().unwrap();
    let trainer = Trainer::new(
        model(h["init"].as_str().unwrap()),
        &device(),
        trainer_options(accum, lr, steps.len()),
    )
    .unwrap();
    let mut dpo = DpoTrainer::new(trainer, pairs(), options, steps.len()).unwrap();
    let mut worst = 0f64;
    for want in steps {
        let got = dpo.step().unwrap().unwrap();
        let got = serde_json::to_value(&got).unwrap();
        for k in METRICS {
            let (g, w) = (got[k].as_f64().unwrap(), want[k].as_f64().unwrap());
            let err = (g - w).abs();
            worst = worst.max(err);
            assert!(
                err < 1e-4,
                "{name} step {}: {k} {g} vs TRL {w}",
                want["step"]
            );
        }
        if got["step"] == 1 {
            let step1 =
                read_safetensors(&fixture("dpo").join(name).join("adapter_step1.safetensors"))
                    .unwrap();
            let ours = dpo.trainer.model().adapter_state_dict("default").unwrap();
            assert_eq!(ours.len(), step1.len(), "{name}: adapter tensors");
            let mut w_err = 0f32;
            for (key, t) in &step1 {
                let o = ours
                    .get(key)
                    .unwrap_or_else(|| panic!("{name}: {key} missing"));
                assert_eq!(o.shape, t.shape, "{name}: {key}");
                for (i, (a, b)) in o.data.iter().zip(&t.data).enumerate() {
                    if std::env::var("KILN_DEBUG").is_ok() && (a - b).abs() > 1e-5 {
                        println!("{key}[{i}]: kiln {a} TRL {b}");
                    }
                    w_err = w_err.max((a - b).abs());
                }
            }
            assert!(
                w_err < 1e-5,
                "{name}: adapter after step 1 differs by {w_err}"
            );
            println!("{name}: adapter after step 1 within {w_err:.2e}");
        }
    }
    println!("{name}: every metric of 3 steps within {worst:.2e} of TRL");
}

#[test]
fn dpo_sigmoid_matches_trl() {
    let _g = serial();
    run_case("sigmoid");
}

#[test]
fn dpo_ipo_matches_trl() {
    let _g = serial();
    run_case("ipo");
}

#[test]
fn dpo_hinge_matches_trl() {
    let _g = serial();
    run_case("hinge");
}

#[test]
fn dpo_robust_matches_trl() {
    let _g = serial();
    run_case("robust");
}

#[test]
fn dpo_accumulation_and_keep_end_match_trl() {
    let _g = serial();
    run_case("sigmoid_accum");
}

#[test]
fn dpo_from_an_existing_adapter_matches_trl() {
    let _g = serial();
    run_case("sigmoid_init");
}

#[test]
fn dpo_precomputed_reference_matches_trl() {
    let _g = serial();
    run_case("sigmoid_precompute");
    run_case("sigmoid_init_precompute");
}

/// `precompute_ref_log_probs`: one pass over the whole dataset before training (every pair's
/// reference sums, though one step reads only its first micro-batch), the same values bit for
/// bit as the reference of the pairs the run reads (the same micro-batches), and the same step.
#[test]
fn precompute_ref_log_probs_covers_the_dataset_with_the_same_values() {
    let _g = serial();
    let run = |precompute| {
        let trainer = Trainer::new(
            model("adapter_init_b"),
            &device(),
            trainer_options(1, 1e-3, 1),
        )
        .unwrap();
        let options = DpoOptions {
            batch_size: 2,
            beta: 0.5,
            precompute_ref_log_probs: precompute,
            ..DpoOptions::default()
        };
        let mut dpo = DpoTrainer::new(trainer, pairs(), options, 1).unwrap();
        let reference = dpo.ref_log_probs().to_vec();
        (reference, dpo.step().unwrap().unwrap())
    };
    let (lazy, step_lazy) = run(false);
    let (all, step_all) = run(true);
    assert_eq!(all.len(), 6);
    assert!(all.iter().all(Option::is_some), "{all:?}");
    assert_eq!(lazy.iter().filter(|r| r.is_some()).count(), 2, "{lazy:?}");
    assert_eq!(lazy[..2], all[..2]);
    assert!(all.iter().flatten().all(|[c, r]| *c < 0.0 && *r < 0.0));
    assert_eq!(step_lazy, step_all);
}

/// Policy = reference at step 0: the sigmoid loss is ln 2 to the last bit of f32 log-probs
/// (the reference pass is the policy's own forward), rewards and margins are 0.
#[test]
fn dpo_sigmoid_starts_at_ln2() {
    let _g = serial();
    for init in ["adapter_init", "adapter_init_b"] {
        let trainer = Trainer::new(model(init), &device(), trainer_options(1, 1e-2, 1)).unwrap();
        let options = DpoOptions {
            batch_size: 3,
            ..DpoOptions::default()
        };
        let mut dpo = DpoTrainer::new(trainer, pairs(), options, 1).unwrap();
        let m = dpo.step().unwrap().unwrap();
        // -log σ(0) = ln(1 + e⁰): one rounding from `LN_2`.
        assert!(
            (m.loss - std::f64::consts::LN_2).abs() < 1e-15,
            "{init}: {}",
            m.loss
        );
        assert_eq!((m.rewards_chosen, m.rewards_margins), (0.0, 0.0), "{init}");
    }
}

/// TRL's filter under `keep_start`: a pair whose prompt alone fills `max_length` is dropped
/// (counted), and a run with nothing left is an error, not a zero-gradient run.
#[test]
fn dpo_drops_pairs_whose_prompt_fills_max_length() {
    let _g = serial();
    let options = |max| DpoOptions {
        max_length: Some(max),
        truncation: TruncationMode::KeepStart,
        ..DpoOptions::default()
    };
    let all = pairs();
    let shortest = all.iter().map(|p| p.prompt.len()).min().unwrap();
    let trainer = Trainer::new(
        model("adapter_init"),
        &device(),
        trainer_options(1, 1e-2, 1),
    )
    .unwrap();
    let dpo = DpoTrainer::new(trainer, all.clone(), options(shortest + 1), 1).unwrap();
    let n = all.iter().filter(|p| p.prompt.len() > shortest).count();
    assert_eq!(dpo.dropped, n);
    let trainer = Trainer::new(
        model("adapter_init"),
        &device(),
        trainer_options(1, 1e-2, 1),
    )
    .unwrap();
    let err = DpoTrainer::new(trainer, all, options(shortest), 1)
        .err()
        .unwrap();
    assert!(err.to_string().contains("no preference pair"), "{err}");
}

/// The recipe end to end (`run_dpo`, what the `dpo` example calls): a model directory of the
/// tiny Llama with the fixture's tokenizer and template, the conversational file in order, the
/// initial adapter: `metrics.jsonl` carries TRL's names and values (sigmoid case, within 1e-4),
/// and the PEFT adapter it writes loads back.
#[test]
fn dpo_recipe_writes_trl_metrics_and_a_peft_adapter() {
    let _g = serial();
    let dir = std::env::temp_dir().join(format!("kiln_dpo_recipe_{}", std::process::id()));
    let run = preference_recipe(
        &dir,
        fixture("dpo/conversational.jsonl"),
        DpoOptions {
            beta: 0.1,
            batch_size: 2,
            max_length: Some(64),
            ..DpoOptions::default()
        },
    );
    let summary = kiln_train::run_dpo(&run, |_| {}).unwrap();
    assert_eq!((summary.pairs, summary.history.len()), (6, 3));
    let text = std::fs::read_to_string(fixture("dpo/sigmoid/metrics.json")).unwrap();
    let want: Value = serde_json::from_str(&text).unwrap();
    let lines = metrics_lines(&dir.join("out/metrics.jsonl"));
    assert_eq!(lines.len(), 3);
    for (got, want) in lines.iter().zip(want["steps"].as_array().unwrap()) {
        for k in METRICS {
            let (g, w) = (got[k].as_f64().unwrap(), want[k].as_f64().unwrap());
            assert!(
                (g - w).abs() < 1e-4,
                "step {}: {k} {g} vs TRL {w}",
                got["step"]
            );
        }
    }
    assert!(dir.join("out/loss_curve.png").is_file());
    // TensorBoard: the version event and one event per step, with TRL's metric names.
    let tb: Vec<_> = std::fs::read_dir(dir.join("out/tensorboard"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(tb.len(), 1, "{tb:?}");
    let records = kiln_train::read_tfrecords(&std::fs::read(&tb[0]).unwrap()).unwrap();
    assert_eq!(records.len(), 1 + 3);
    for tag in ["train/loss", "train/rewards/margins", "train/logps/chosen"] {
        assert!(
            records[3].windows(tag.len()).any(|w| w == tag.as_bytes()),
            "{tag}"
        );
    }
    let mut back = LoraModel::new(tiny_model());
    back.load_adapter(&summary.adapter_dir, "default").unwrap();
    let saved = back.adapter_state_dict("default").unwrap();
    let init = read_safetensors(&fixture("dpo/adapter_init/adapter_model.safetensors")).unwrap();
    assert_eq!(saved.len(), init.len());
    let moved = saved
        .iter()
        .filter(|(k, t)| k.contains("lora_B") && t.data != init[*k].data)
        .count();
    assert_eq!(
        moved,
        init.keys().filter(|k| k.contains("lora_B")).count(),
        "every B trained"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
