//! GRPO against TRL 1.16's `GRPOTrainer` with PEFT LoRA on the tiny Llama (fixtures/grpo/,
//! tools/fixtures/trl_grpo.py), trained on the fixture's preset completions and rewards (so no
//! sampling differs): for loss types `grpo`, `dapo`, `dr_grpo`, beta 0 and beta > 0, gradient
//! accumulation, `scale_rewards` group/batch/none and two iterations on one generation batch
//! (clipping), two optimizer steps give the advantages, loss, KL and the adapter after each
//! step within 1e-5 of TRL's and the other logged metrics within 1e-4.
//! Invariants: identical rewards in a group give zero advantage, and with beta 0 a batch of
//! such groups gives a zero gradient and leaves the adapter as it was.
#![allow(clippy::unwrap_used)]
mod common;

use common::*;
use kiln_lora::{LoraModel, read_safetensors};
use kiln_models::CausalLm;
use kiln_train::{GrpoLearner, GrpoOptions, Rollout, ScaleRewards, Trainer, advantages};
use serde_json::Value;

fn model() -> LoraModel<CausalLm> {
    let mut m = LoraModel::new(tiny_model());
    m.load_adapter(&fixture("dpo/adapter_init_b"), "default")
        .unwrap();
    m
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The rollouts of the fixture's generation `g`.
fn rollouts(want: &Value, g: usize) -> Vec<Rollout> {
    let gen_ = &want["generations"][g];
    let prompts = gen_["prompt_ids"].as_array().unwrap();
    let comps = gen_["completion_ids"].as_array().unwrap();
    let rewards = gen_["rewards"].as_array().unwrap();
    (0..comps.len())
        .map(|i| {
            let completion = ids(&comps[i]);
            Rollout {
                prompt: ids(&prompts[i]),
                truncated: completion.last() != Some(&2),
                completion,
                reward: rewards[i].as_f64(),
            }
        })
        .collect()
}

fn options(h: &Value) -> GrpoOptions {
    GrpoOptions {
        beta: h["beta"].as_f64().unwrap(),
        epsilon: h["epsilon"].as_f64().unwrap(),
        epsilon_high: h["epsilon_high"].as_f64(),
        loss_type: h["loss_type"].as_str().unwrap().parse().unwrap(),
        scale_rewards: h["scale_rewards"].as_str().unwrap().parse().unwrap(),
        num_generations: h["num_generations"].as_u64().unwrap() as usize,
        num_iterations: h["num_iterations"].as_u64().unwrap() as usize,
        max_completion_length: h["max_completion_length"].as_u64().unwrap() as usize,
        batch_size: h["batch"].as_u64().unwrap() as usize,
        pad_id: 0,
        use_bias_correction_kl: true,
    }
}

const METRICS: [&str; 13] = [
    "grad_norm",
    "reward",
    "reward_std",
    "frac_reward_zero_std",
    "completions/mean_length",
    "completions/min_length",
    "completions/max_length",
    "completions/clipped_ratio",
    "clip_ratio/low_mean",
    "clip_ratio/high_mean",
    "clip_ratio/region_mean",
    "clip_ratio/low_min",
    "clip_ratio/high_max",
];

fn check_adapter(name: &str, step: usize, model: &LoraModel<CausalLm>) {
    let path = fixture("grpo").join(format!("{name}_step{step}.safetensors"));
    let want = read_safetensors(&path).unwrap();
    let ours = model.adapter_state_dict("default").unwrap();
    assert_eq!(ours.len(), want.len(), "{name}: adapter tensors");
    let mut err = 0f32;
    for (key, t) in &want {
        let o = ours.get(key).unwrap_or_else(|| panic!("{key} missing"));
        assert_eq!(o.shape, t.shape, "{name}: {key}");
        for (a, b) in o.data.iter().zip(&t.data) {
            err = err.max((a - b).abs());
        }
    }
    assert!(
        err < 1e-5,
        "{name}: adapter after step {step} differs by {err}"
    );
    println!("{name}: adapter after step {step} within {err:.2e}");
}

fn run_case(name: &str) {
    let text = std::fs::read_to_string(fixture("grpo").join(format!("{name}.json"))).unwrap();
    let want: Value = serde_json::from_str(&text).unwrap();
    let h = &want["hyper"];
    let options = options(h);
    let mu = options.num_iterations;
    let accum = h["accum"].as_u64().unwrap() as usize;
    let trainer = Trainer::new(
        model(),
        &device(),
        trainer_options(accum, h["lr"].as_f64().unwrap(), 2),
    )
    .unwrap();
    let mut learner = GrpoLearner::new(trainer, options).unwrap();
    let mut batch = None;
    for (s, w) in want["steps"].as_array().unwrap().iter().enumerate() {
        if s % mu == 0 {
            let g = s / mu;
            let prepared = learner.prepare(rollouts(&want, g)).unwrap();
            let trl = want["generations"][g]["advantages"].as_array().unwrap();
            for (a, t) in prepared.advantages.iter().zip(trl) {
                let t = t.as_f64().unwrap();
                assert!((a - t).abs() < 1e-5, "{name}: advantage {a} vs TRL {t}");
            }
            batch = Some(prepared);
        }
        let got = learner.step(batch.as_mut().unwrap()).unwrap().unwrap();
        let got = serde_json::to_value(&got).unwrap();
        let close = |k: &str, tol: f64| {
            let (g, t) = (got[k].as_f64().unwrap(), w[k].as_f64().unwrap());
            assert!(
                (g - t).abs() <= tol,
                "{name} step {}: {k} {g} vs TRL {t}",
                s + 1
            );
        };
        close("loss", 1e-5);
        if w.get("kl").is_some() {
            close("kl", 1e-5);
        } else {
            assert!(got.get("kl").is_none(), "{name}: kl logged with beta 0");
        }
        for k in METRICS {
            if w.get(k).is_some() {
                close(k, 1e-4);
            }
        }
        check_adapter(name, s + 1, learner.trainer.model());
    }
}

#[test]
fn grpo_beta0_matches_trl() {
    run_case("grpo_beta0");
}

#[test]
fn grpo_beta_matches_trl() {
    run_case("grpo_beta");
}

#[test]
fn dapo_matches_trl() {
    run_case("dapo");
}

#[test]
fn dr_grpo_matches_trl() {
    run_case("dr_grpo");
}

#[test]
fn dapo_accumulation_matches_trl() {
    run_case("dapo_accum");
}

#[test]
fn two_iterations_clip_as_trl() {
    run_case("grpo_iter2");
}

#[test]
fn identical_rewards_give_zero_advantage() {
    let rewards = [1.0, 1.0, 1.0, 0.5, 0.0, 2.0].map(Some);
    for scale in [ScaleRewards::Group, ScaleRewards::Batch, ScaleRewards::None] {
        let (adv, zero) = advantages(&rewards, 3, scale);
        assert_eq!(&adv[..3], &[0.0; 3], "{scale:?}");
        assert!(adv[3..].iter().all(|&a| a != 0.0), "{scale:?}: {adv:?}");
        if scale != ScaleRewards::Batch {
            assert_eq!(zero, [true, true, true, false, false, false]);
        }
    }
    // An unscored completion gets 0 and stays out of its group's statistics.
    let (adv, _) = advantages(&[Some(1.0), None, Some(3.0)], 3, ScaleRewards::None);
    assert_eq!(adv, [-1.0, 0.0, 1.0]);
}

#[test]
fn identical_rewards_give_no_gradient_without_kl() {
    let text = std::fs::read_to_string(fixture("grpo/grpo_beta0.json")).unwrap();
    let want: Value = serde_json::from_str(&text).unwrap();
    let mut rollouts = rollouts(&want, 0);
    for r in &mut rollouts {
        r.reward = Some(if r.prompt == rollouts_first_prompt(&want) {
            0.3
        } else {
            -2.0
        });
    }
    let options = GrpoOptions {
        loss_type: "grpo".parse().unwrap(),
        num_generations: 4,
        max_completion_length: 6,
        ..GrpoOptions::default()
    };
    let trainer = Trainer::new(model(), &device(), trainer_options(1, 1e-2, 1)).unwrap();
    let before = trainer.model().adapter_state_dict("default").unwrap();
    let mut learner = GrpoLearner::new(trainer, options).unwrap();
    let mut batch = learner.prepare(rollouts).unwrap();
    assert!(batch.advantages.iter().all(|&a| a == 0.0));
    let m = learner.step(&mut batch).unwrap().unwrap();
    assert_eq!(m.grad_norm, 0.0);
    assert_eq!(m.loss, 0.0);
    let after = learner
        .trainer
        .model()
        .adapter_state_dict("default")
        .unwrap();
    for (k, t) in &before {
        assert_eq!(t.data, after[k].data, "{k} moved");
    }
}

fn rollouts_first_prompt(want: &Value) -> Vec<u32> {
    ids(&want["generations"][0]["prompt_ids"][0])
}

// The online loop: prompts, sampling, rewards.

use kiln_data::ChatTemplate;
use kiln_models::{GenerationConfig, Sampling};
use kiln_train::{GrpoTrainer, PromptEncoder, PromptRecord, Reward, read_prompt_records};
use std::sync::{Arc, Mutex};

fn encoder() -> PromptEncoder {
    let dir = fixture("dpo/tokenizer");
    PromptEncoder {
        tokenizer: kiln_data::tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap(),
        template: Some(
            ChatTemplate::from_file(&dir.join("chat_template.jinja"), None, Some("<|im_end|>"))
                .unwrap(),
        ),
    }
}

fn online(seed: u64, reward: Reward) -> GrpoTrainer<LoraModel<CausalLm>> {
    online_with(model(), kiln_train::Precision::F32, false, seed, reward)
}

/// The online trainer on `model` training in `precision`, with the frozen base held in bf16
/// when `hold`.
fn online_with(
    model: LoraModel<CausalLm>,
    precision: kiln_train::Precision,
    hold: bool,
    seed: u64,
    reward: Reward,
) -> GrpoTrainer<LoraModel<CausalLm>> {
    let options = GrpoOptions {
        loss_type: "grpo".parse().unwrap(),
        beta: 0.1,
        num_generations: 4,
        max_completion_length: 6,
        batch_size: 8,
        ..GrpoOptions::default()
    };
    let mut topts = trainer_options(1, 1e-3, 2);
    topts.precision = Some(precision);
    let trainer = Trainer::new(model, &device(), topts).unwrap();
    let mut learner = GrpoLearner::new(trainer, options).unwrap();
    if hold {
        assert!(learner.hold_bf16_weights().unwrap() > 0);
    }
    let generation = GenerationConfig {
        sampling: Sampling::Sample {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.9,
        },
        eos_token_ids: vec![2],
        seed,
        ..GenerationConfig::default()
    };
    let records = read_prompt_records(&fixture("grpo/prompts.jsonl")).unwrap();
    GrpoTrainer::new(learner, records, vec![(reward, 1.0)], generation, encoder()).unwrap()
}

/// A reward that records every completion it sees and scores it with `f`.
fn recording(seen: &Arc<Mutex<Vec<String>>>, f: fn(&PromptRecord, &str) -> Option<f64>) -> Reward {
    let seen = Arc::clone(seen);
    Reward::Custom {
        name: "recording".into(),
        f: Box::new(move |r, c| {
            seen.lock().unwrap().push(c.to_string());
            f(r, c)
        }),
    }
}

#[test]
fn prompts_tokenize_as_trl() {
    let text = std::fs::read_to_string(fixture("grpo/grpo_beta0.json")).unwrap();
    let want: Value = serde_json::from_str(&text).unwrap();
    let t = online(0, Reward::regex(".*").unwrap());
    let trl = &want["generations"][0]["prompt_ids"];
    assert_eq!(t.prompt_ids()[0], ids(&trl[0]));
    assert_eq!(t.prompt_ids()[1], ids(&trl[4]));
}

#[test]
fn seeded_sampling_repeats_exactly() {
    let run = |seed| {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut t = online(seed, recording(&seen, |_, c| Some(c.len() as f64)));
        let m = t.step().unwrap().unwrap();
        let adapter = t
            .learner
            .trainer
            .model()
            .adapter_state_dict("default")
            .unwrap();
        let seen = seen.lock().unwrap().clone();
        let mut weights: Vec<(String, Vec<f32>)> =
            adapter.into_iter().map(|(k, t)| (k, t.data)).collect();
        weights.sort_by(|x, y| x.0.cmp(&y.0));
        (seen, m.loss, weights)
    };
    let (a, b, c) = (run(5), run(5), run(6));
    assert_eq!(a.0.len(), 8);
    assert_eq!(a, b, "same seed, same completions, loss and adapter");
    assert_ne!(a.0, c.0, "another seed samples other completions");
}

/// The quantized tiny Llama (Q4_0 GGUF) with the fixture's initial adapter.
fn quantized_model() -> LoraModel<CausalLm> {
    let path = fixture("quantized/tiny_llama_q4_0.gguf");
    let lm = kiln_models::Pretrained::load_as(&path, &device(), kiln_models::Quantization::Stored)
        .unwrap();
    let mut m = LoraModel::new(lm.model);
    m.load_adapter(&fixture("dpo/adapter_init_b"), "default")
        .unwrap();
    m
}

/// The first layer's frozen `q_proj` matrix of the trainer's policy.
fn q_proj(t: &GrpoTrainer<LoraModel<CausalLm>>) -> Arc<kiln_cpu::QMatrix> {
    let lm = &t.learner.trainer.model().model;
    match &lm.model.layers[0]
        .self_attn
        .qkv
        .get("q_proj")
        .unwrap()
        .weight
    {
        kiln_lora::BaseWeight::Frozen(f) => f.shared(),
        kiln_lora::BaseWeight::Dense(_) => panic!("q_proj is not frozen"),
    }
}

/// Rollouts at bf16 on the frozen base's bf16 layouts held once for the run: seeded sampling
/// repeats exactly (completions, loss, adapter), another seed samples otherwise; the layouts
/// are made once (the policy keeps the same matrix, with its layout, through the steps while
/// the adapter moves) and sample what the per-product dequantization samples. Holding needs
/// bf16 training, a quantized base and no step taken yet.
#[test]
fn bf16_rollouts_on_held_layouts_repeat_exactly() {
    use kiln_train::Precision::{Bf16, F32};
    let run = |seed, hold| {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let reward = recording(&seen, |_, c| Some(c.len() as f64));
        let mut t = online_with(quantized_model(), Bf16, hold, seed, reward);
        let held = q_proj(&t);
        let mut losses = Vec::new();
        for _ in 0..2 {
            losses.push(t.step().unwrap().unwrap().loss);
        }
        let after = q_proj(&t);
        if hold {
            assert!(Arc::ptr_eq(&held, &after), "the base matrix was replaced");
            assert!(after.bf16_layout_bytes() > 0);
            let err = t.learner.hold_bf16_weights().unwrap_err().to_string();
            assert!(err.contains("before the first step"), "{err}");
        } else {
            assert_eq!(after.bf16_layout_bytes(), 0);
        }
        let adapter = t
            .learner
            .trainer
            .model()
            .adapter_state_dict("default")
            .unwrap();
        let mut weights: Vec<(String, Vec<f32>)> =
            adapter.into_iter().map(|(k, t)| (k, t.data)).collect();
        weights.sort_by(|x, y| x.0.cmp(&y.0));
        let seen = seen.lock().unwrap().clone();
        (seen, losses, weights)
    };
    let (a, b, c) = (run(5, true), run(5, true), run(6, true));
    assert_eq!(a.0.len(), 16);
    assert_ne!(a.2, model_weights_at_start(), "the adapter trained");
    assert_eq!(a, b, "same seed, same completions, losses and adapter");
    assert_ne!(a.0, c.0, "another seed samples other completions");
    assert_eq!(
        a.0,
        run(5, false).0,
        "held layouts sample as the per-product path"
    );

    let trainer = |m, p| {
        let mut o = trainer_options(1, 1e-3, 2);
        o.precision = Some(p);
        let options = GrpoOptions {
            num_generations: 4,
            batch_size: 8,
            ..GrpoOptions::default()
        };
        GrpoLearner::new(Trainer::new(m, &device(), o).unwrap(), options).unwrap()
    };
    let f32_err = trainer(quantized_model(), F32).hold_bf16_weights();
    assert!(f32_err.unwrap_err().to_string().contains("precision bf16"));
    let dense_err = trainer(model(), Bf16).hold_bf16_weights();
    assert!(
        dense_err
            .unwrap_err()
            .to_string()
            .contains("no quantized matrix")
    );
}

/// The initial adapter's weights, sorted by name.
fn model_weights_at_start() -> Vec<(String, Vec<f32>)> {
    let mut w: Vec<(String, Vec<f32>)> = quantized_model()
        .adapter_state_dict("default")
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.data))
        .collect();
    w.sort_by(|x, y| x.0.cmp(&y.0));
    w
}

#[test]
fn nan_reward_is_an_error_naming_the_record() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut t = online(0, recording(&seen, |_, _| Some(f64::NAN)));
    let err = t.step().err().unwrap().to_string();
    assert!(
        err.contains("prompts.jsonl:1") && err.contains("recording"),
        "{err}"
    );
}

#[test]
fn groups_without_reward_are_skipped_and_counted() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let first_only = |r: &PromptRecord, _: &str| (r.at.line == 2).then_some(1.0);
    let mut t = online(0, recording(&seen, first_only));
    let m = t.step().unwrap().unwrap();
    assert_eq!(m.skipped_groups, 1);
    assert!(m.tokens > 0);
    let mut t = online(0, recording(&seen, |_, _| None));
    assert!(t.step().unwrap().is_none());
    assert_eq!(t.skipped_batches, 1);
    assert_eq!(
        t.learner.trainer.state.step, 0,
        "no optimizer step on a batch without reward"
    );
}

#[test]
fn built_in_rewards() {
    let rec = PromptRecord::from_json(
        serde_json::json!({"prompt": "q", "answer": "1,234.5", "word": "grew"}),
        kiln_data::Location {
            file: "x.jsonl".into(),
            line: 3,
        },
    )
    .unwrap();
    let num = Reward::NumericMatch {
        column: "answer".into(),
        tolerance: 1e-6,
    };
    assert_eq!(num.score(&rec, "It is 1234.5 people."), Some(1.0));
    assert_eq!(num.score(&rec, "It is 1,235 people."), Some(0.0));
    assert_eq!(num.score(&rec, "no number"), Some(0.0));
    let exact = Reward::ExactMatch {
        column: "word".into(),
    };
    assert_eq!(exact.score(&rec, " grew\n"), Some(1.0));
    assert_eq!(exact.score(&rec, "shrank"), Some(0.0));
    let re = Reward::regex(r"<answer>\d+</answer>").unwrap();
    assert_eq!(re.score(&rec, "<answer>12</answer>"), Some(1.0));
    assert_eq!(re.score(&rec, "x <answer>12</answer>"), Some(0.0));
    let missing = PromptRecord::from_json(
        serde_json::json!({"question": "q"}),
        kiln_data::Location {
            file: "x.jsonl".into(),
            line: 7,
        },
    );
    assert!(missing.err().unwrap().to_string().contains("x.jsonl:7"));
}

/// The recipe (`run_grpo`) with `save_steps` 1: a run stopped after step 2 and resumed to step
/// 4 samples the same completions (a reward that records them), logs the same metrics (every
/// value but the timings) and writes the same adapter, byte for byte, as a run of 4 steps;
/// with `num_iterations` 2 a checkpoint inside a generation batch is refused.
#[test]
fn recipe_resume_equals_an_uninterrupted_run() {
    let dir = std::env::temp_dir().join(format!("kiln_grpo_resume_{}", std::process::id()));
    let model_dir = preference_model_dir(&dir);
    let run = |out: &str, max_steps: usize, resume: bool, num_iterations: usize| {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let reward = recording(&seen, |_, c| Some(c.len() as f64));
        let run = kiln_train::GrpoRun {
            model: model_dir.clone(),
            output_dir: dir.join(out),
            max_steps,
            lr: 1e-2,
            grpo: GrpoOptions {
                loss_type: "grpo".parse().unwrap(),
                beta: 0.1,
                num_generations: 4,
                max_completion_length: 6,
                batch_size: 8,
                num_iterations,
                ..GrpoOptions::default()
            },
            init_adapter: Some(fixture("dpo/adapter_init_b")),
            lora_r: 4,
            lora_alpha: 8.0,
            save_steps: Some(1),
            resume,
            precision: Some(kiln_train::Precision::F32),
            ..kiln_train::GrpoRun::default()
        };
        let records = read_prompt_records(&fixture("grpo/prompts.jsonl")).unwrap();
        let out = kiln_train::run_grpo(&run, Some(records), vec![(reward, 1.0)], |_| {});
        let seen = seen.lock().unwrap().clone();
        out.map(|_| seen)
    };
    let whole = run("whole", 4, false, 1).unwrap();
    let first = run("stopped", 2, false, 1).unwrap();
    let rest = run("stopped", 4, true, 1).unwrap();
    assert_eq!(whole.len(), 32);
    assert_eq!([first, rest].concat(), whole, "the same completions");
    let read = |out: &str, f: &str| std::fs::read(dir.join(out).join(f)).unwrap();
    assert!(
        read("whole", "adapter/adapter_model.safetensors")
            == read("stopped", "adapter/adapter_model.safetensors"),
        "adapters differ"
    );
    let untimed = |out: &str| -> Vec<Value> {
        metrics_lines(&dir.join(out).join("metrics.jsonl"))
            .into_iter()
            .map(|mut v| {
                let m = v.as_object_mut().unwrap();
                m.remove("generation_s");
                m.remove("training_s");
                v
            })
            .collect()
    };
    let (w, s) = (untimed("whole"), untimed("stopped"));
    assert_eq!(w.len(), 4);
    assert_eq!(w, s, "metrics.jsonl");
    let err = run("mid_batch", 2, false, 2).unwrap_err().to_string();
    assert!(err.contains("num_iterations"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
