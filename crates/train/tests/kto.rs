//! KTO against TRL 1.16's `KTOTrainer` with PEFT LoRA on the tiny Llama (fixtures/kto/,
//! tools/fixtures/trl_kto.py): the collator's sequences (records and their mismatched KL pairs,
//! truncated to `max_length`), and per case 3 optimizer steps giving every metric kiln logs
//! within 1e-4 of TRL's (the same keys present: a step without desirable records logs no
//! `rewards/chosen`; measured worst 3.4e-6) and the adapter after step 1 within 1e-5 (measured
//! worst 7.3e-6, apo_zero_unpaired; 3.4e-7 for the kto cases).
#![allow(clippy::unwrap_used)]
mod common;

use common::*;
use kiln_data::{ChatTemplate, FieldMap, PreferenceEncoder, UnpairedIds, kto_examples};
use kiln_lora::{LoraModel, read_safetensors};
use kiln_models::CausalLm;
use kiln_train::{DpoOptions, DpoTrainer, KtoTrainer, PreferenceLoss, Trainer};
use serde_json::Value;

fn records(file: &str) -> Vec<UnpairedIds> {
    let dir = fixture("dpo/tokenizer");
    let tokenizer =
        kiln_data::tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let template =
        ChatTemplate::from_file(&dir.join("chat_template.jinja"), None, Some("<|im_end|>"))
            .unwrap();
    let enc = PreferenceEncoder::new(&tokenizer, Some(&template), Some("<|im_end|>"));
    kiln_data::read_unpaired(&fixture(file), &FieldMap::default())
        .unwrap()
        .iter()
        .map(|(at, r)| enc.encode_unpaired(r, at).unwrap())
        .collect()
}

/// The collator's batches of the conversational records at batch 2, max_length 20: each
/// record's ids and completion mask, and those of its KL sequence (the previous record's
/// completion after its prompt), truncated as TRL's.
#[test]
fn sequences_match_trl_collator() {
    let text = std::fs::read_to_string(fixture("kto/tokenized.json")).unwrap();
    let want: Value = serde_json::from_str(&text).unwrap();
    let (examples, dropped) = kto_examples(records("kto/conversational.jsonl"), 2, Some(20));
    assert_eq!(dropped, 0);
    let batches = want["collated"].as_array().unwrap();
    assert_eq!(batches.len(), examples.len().div_ceil(2));
    let mut truncated = 0;
    for (b, w) in batches.iter().enumerate() {
        for (r, e) in examples[2 * b..(2 * b + 2).min(examples.len())]
            .iter()
            .enumerate()
        {
            for (key, (ids, mask)) in [
                ("", e.ids.sequence(Some(20))),
                ("KL_", e.ids.sequence_with(&e.kl_completion, Some(20))),
            ] {
                let w_ids: Vec<u32> =
                    serde_json::from_value(w[format!("{key}input_ids")][r].clone()).unwrap();
                let w_mask: Vec<u8> =
                    serde_json::from_value(w[format!("{key}completion_mask")][r].clone()).unwrap();
                let n = ids.len();
                assert_eq!(ids[..], w_ids[..n], "batch {b} row {r} {key}ids");
                assert!(w_ids[n..].iter().all(|&p| p == 0), "padding");
                let mask: Vec<u8> = mask.iter().map(|&c| u8::from(c)).collect();
                assert_eq!(mask[..], w_mask[..n], "batch {b} row {r} {key}mask");
                let full = e.ids.prompt.len()
                    + if key.is_empty() {
                        e.ids.completion.len()
                    } else {
                        e.kl_completion.len()
                    };
                truncated += usize::from(full > 20);
            }
        }
    }
    assert!(truncated > 0, "truncation is covered");
}

fn model(init: &str) -> LoraModel<CausalLm> {
    let mut m = LoraModel::new(tiny_model());
    m.load_adapter(&fixture("dpo").join(init), "default")
        .unwrap();
    m
}

fn options(h: &Value) -> DpoOptions {
    DpoOptions {
        beta: h["beta"].as_f64().unwrap(),
        loss_type: h["loss_type"].as_str().unwrap().parse().unwrap(),
        desirable_weight: h["desirable_weight"].as_f64().unwrap(),
        undesirable_weight: h["undesirable_weight"].as_f64().unwrap(),
        batch_size: h["batch"].as_u64().unwrap() as usize,
        max_length: Some(h["max_length"].as_u64().unwrap() as usize),
        ..DpoOptions::default()
    }
}

/// The metrics kiln logs (TRL's `entropy` and `logits/*` are not among them).
const KEYS: [&str; 9] = [
    "loss",
    "grad_norm",
    "kl",
    "num_tokens",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
];

fn check_adapter(name: &str, ours: &std::collections::BTreeMap<String, kiln_lora::HostTensor>) {
    let path = fixture("kto").join(name).join("adapter_step1.safetensors");
    let step1 = read_safetensors(&path).unwrap();
    assert_eq!(ours.len(), step1.len(), "{name}: adapter tensors");
    let mut w_err = 0f32;
    for (key, t) in &step1 {
        let o = ours
            .get(key)
            .unwrap_or_else(|| panic!("{name}: {key} missing"));
        assert_eq!(o.shape, t.shape, "{name}: {key}");
        for (a, b) in o.data.iter().zip(&t.data) {
            w_err = w_err.max((a - b).abs());
        }
    }
    assert!(
        w_err < 1e-5,
        "{name}: adapter after step 1 differs by {w_err}"
    );
    println!("{name}: adapter after step 1 within {w_err:.2e}");
}

/// Every key of TRL's step present in ours and within 1e-4, and no key of ours absent there.
fn compare(name: &str, got: &Value, want: &Value) -> f64 {
    let mut worst = 0f64;
    for k in KEYS {
        assert_eq!(
            got.get(k).is_some(),
            want.get(k).is_some(),
            "{name} step {}: {k} logged by one side only",
            want["step"]
        );
        let (Some(g), Some(w)) = (got.get(k), want.get(k)) else {
            continue;
        };
        let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
        let err = (g - w).abs();
        worst = worst.max(err);
        assert!(
            err < 1e-4,
            "{name} step {}: {k} {g} vs TRL {w}",
            want["step"]
        );
    }
    worst
}

fn run_case(name: &str) {
    let text = std::fs::read_to_string(fixture("kto").join(name).join("metrics.json")).unwrap();
    let want: Value = serde_json::from_str(&text).unwrap();
    let (h, steps) = (&want["hyper"], want["steps"].as_array().unwrap());
    let accum = h["accum"].as_u64().unwrap() as usize;
    let lr = h["lr"].as_f64().unwrap();
    let init = h["init"].as_str().unwrap();
    let trainer = Trainer::new(model(init), &device(), trainer_options(accum, lr, 3)).unwrap();
    let data = format!("kto/{}.jsonl", h["form"].as_str().unwrap());
    let mut run = KtoTrainer::new(trainer, records(&data), options(h), steps.len()).unwrap();
    assert_eq!(run.dropped, 0);
    let mut worst = 0f64;
    for want in steps {
        let got = serde_json::to_value(run.step().unwrap().unwrap()).unwrap();
        worst = worst.max(compare(name, &got, want));
        if got["step"] == 1 {
            check_adapter(
                name,
                &run.trainer.model().adapter_state_dict("default").unwrap(),
            );
        }
    }
    println!("{name}: every metric of 3 steps within {worst:.2e} of TRL");
}

/// Batch 2; step 2 has only desirable records, step 3 only undesirable ones.
#[test]
fn kto_matches_trl() {
    let _g = serial();
    run_case("kto");
}

/// Batch 2 × accumulation 2 over two epochs (an epoch's last micro-batch holds one record, its
/// own KL pair), undesirable_weight 1.33, completions truncated at max_length 20.
#[test]
fn kto_accumulation_and_weights_match_trl() {
    let _g = serial();
    run_case("kto_accum");
}

/// Standard strings (the `Bon|jour` boundary merge), batch 3, beta 0.5, continuing from an
/// adapter with B ≠ 0 (the reference is that adapter, frozen).
#[test]
fn kto_standard_from_existing_adapter_matches_trl() {
    let _g = serial();
    run_case("kto_standard");
}

/// No KL term (`kl` logged as 0), desirable_weight 0.8, beta 0.2.
#[test]
fn apo_zero_unpaired_matches_trl() {
    let _g = serial();
    run_case("apo_zero_unpaired");
}

/// Invariant: at the first step the policy is the reference, so every log-ratio, reward and the
/// KL estimate are 0 and each record's `kto` loss is `1 - σ(0) = 1/2`: the step's loss is half
/// the mean weight of its records (here 1, 1.33, 1, 1: desirable, undesirable, desirable,
/// desirable), whatever the model.
#[test]
fn first_step_policy_equals_reference() {
    let _g = serial();
    let options = DpoOptions {
        loss_type: "kto".parse().unwrap(),
        undesirable_weight: 1.33,
        batch_size: 2,
        ..DpoOptions::default()
    };
    let trainer = Trainer::new(
        model("adapter_init_b"),
        &device(),
        trainer_options(2, 1e-3, 1),
    )
    .unwrap();
    let mut run =
        KtoTrainer::new(trainer, records("kto/conversational.jsonl"), options, 1).unwrap();
    let m = run.step().unwrap().unwrap();
    let want = 0.5 * (1.0 + 1.33 + 1.0 + 1.0) / 4.0;
    assert!((m.loss - want).abs() < 1e-7, "{} vs {want}", m.loss);
    assert_eq!(m.kl, 0.0);
    for r in [m.rewards_chosen, m.rewards_rejected, m.rewards_margins] {
        assert!(r.unwrap().abs() < 1e-9, "{r:?}");
    }
}

#[test]
fn bad_options_are_typed_errors() {
    let _g = serial();
    let new = |loss: &str, batch: usize| {
        let options = DpoOptions {
            loss_type: loss.parse().unwrap(),
            batch_size: batch,
            ..DpoOptions::default()
        };
        let trainer = Trainer::new(
            model("adapter_init"),
            &device(),
            trainer_options(1, 1e-3, 1),
        )
        .unwrap();
        KtoTrainer::new(trainer, records("kto/conversational.jsonl"), options, 1).err()
    };
    // KTO's KL estimate needs a second record in the micro-batch; APO-zero has none.
    let err = new("kto", 1).unwrap().to_string();
    assert!(err.contains("batch_size"), "{err}");
    assert!(new("apo_zero_unpaired", 1).is_none());
    let err = new("sigmoid", 2).unwrap().to_string();
    assert!(err.contains("kto or apo_zero_unpaired"), "{err}");
    // The pair trainer refuses KTO.
    let options = DpoOptions {
        loss_type: PreferenceLoss::Kto(kiln_train::KtoLoss::Kto),
        ..DpoOptions::default()
    };
    let trainer = Trainer::new(
        model("adapter_init"),
        &device(),
        trainer_options(1, 1e-3, 1),
    )
    .unwrap();
    let pairs: Vec<kiln_data::PreferenceIds> = Vec::new();
    let err = DpoTrainer::new(trainer, pairs, options, 1)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("KtoTrainer"), "{err}");
}

/// The recipe end to end (`run_kto`, what `dpo --loss kto` calls): a model directory of the tiny
/// Llama with the fixture's tokenizer, the conversational records in file order: `metrics.jsonl`
/// carries TRL's names and the kto case's values, and the adapter loads back.
#[test]
fn kto_recipe_writes_trl_metrics() {
    let _g = serial();
    let dir = std::env::temp_dir().join(format!("kiln_kto_recipe_{}", std::process::id()));
    let text = std::fs::read_to_string(fixture("kto/kto/metrics.json")).unwrap();
    let want: Value = serde_json::from_str(&text).unwrap();
    let run = preference_recipe(
        &dir,
        fixture("kto/conversational.jsonl"),
        options(&want["hyper"]),
    );
    let summary = kiln_train::run_kto(&run, |_| {}).unwrap();
    assert_eq!((summary.records, summary.desirable), (7, 3));
    assert_eq!(summary.history.len(), 3);
    let lines = metrics_lines(&dir.join("out/metrics.jsonl"));
    assert_eq!(lines.len(), 3);
    for (got, want) in lines.iter().zip(want["steps"].as_array().unwrap()) {
        compare("recipe", got, want);
    }
    // The pair recipe refuses KTO, and KTO a pair loss.
    assert!(kiln_train::run_dpo(&run, |_| {}).is_err());
    let mut back = LoraModel::new(tiny_model());
    back.load_adapter(&summary.adapter_dir, "default").unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Exact resume: a run checkpointed after step 1 and resumed in a trainer built as the run
/// started logs the same metrics for steps 2 and 3 (`num_tokens` included) and ends with the same
/// adapter, bit for bit, as the uninterrupted run (accumulation 2, from an existing adapter).
#[test]
fn kto_resume_equals_an_uninterrupted_run() {
    let _g = serial();
    let start = || {
        let options = DpoOptions {
            loss_type: "kto".parse().unwrap(),
            beta: 0.5,
            batch_size: 2,
            max_length: Some(20),
            ..DpoOptions::default()
        };
        let trainer = Trainer::new(
            model("adapter_init_b"),
            &device(),
            trainer_options(2, 1e-3, 3),
        )
        .unwrap();
        KtoTrainer::new(trainer, records("kto/conversational.jsonl"), options, 3).unwrap()
    };
    let adapter = |run: &KtoTrainer<LoraModel<CausalLm>>| {
        let state = run.trainer.model().adapter_state_dict("default").unwrap();
        state
            .into_iter()
            .map(|(k, t)| (k, t.data))
            .collect::<Vec<_>>()
    };
    let mut whole = start();
    let want: Vec<_> = (0..3).map(|_| whole.step().unwrap().unwrap()).collect();
    let root = std::env::temp_dir().join(format!("kiln_kto_resume_{}", std::process::id()));
    let mut first = start();
    first.step().unwrap().unwrap();
    let dir = first.save_checkpoint(&root, 1).unwrap();
    drop(first);
    let mut resumed = start().resume(&device(), &dir).unwrap();
    for want in &want[1..] {
        assert_eq!(&resumed.step().unwrap().unwrap(), want);
    }
    assert!(
        adapter(&resumed) == adapter(&whole),
        "final adapter differs"
    );
    assert!(
        adapter(&resumed) != adapter(&start()),
        "the adapter trained"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
