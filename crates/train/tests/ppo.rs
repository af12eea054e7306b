//! PPO against TRL's PPO update (`PPOTrainer.train`'s loop as TRL last shipped it, run by
//! tools/fixtures/trl_ppo.py with TRL 1.16's helpers; fixtures/ppo/) with PEFT LoRA on the tiny
//! Llama: policy dpo/adapter_init_b (reference = the policy with its adapter disabled), value
//! model reward/model with reward/adapter_init, fixed queries, responses and scores (so no
//! sampling differs). For `k1` (with `missing_eos_penalty`) and `k3_clip` (ratios and values
//! clip in the second epoch): the rollout tensors (log-probabilities, reference log-probabilities,
//! values, rewards, advantages, returns), every micro-batch's losses and statistics, TRL's
//! logged metrics and both adapters after each of the 2 optimizer steps are within 1e-5 of
//! TRL's. Tolerance: both sides compute in f32 (kiln's fused CPU kernels, PyTorch's) with
//! different summation orders, about 1e-6 relative on the losses; Adam's first steps move
//! every weight by about lr = 1e-3, so 1e-5 on the weights is a 1% error on the update.
//! Invariants: GAE against a hand computation, whitening's mean and variance, policy =
//! reference gives a zero KL. Bad input: typed errors naming the rollout.
#![allow(clippy::unwrap_used)]
mod common;

use common::*;
use kiln_lora::{LoraModel, read_safetensors};
use kiln_models::{CausalLm, SequenceClassifier};
use kiln_train::{
    KlEstimator, PpoBatch, PpoLearner, PpoOptions, Rollout, TrainError, Trainer, TrainerOptions,
    gae, whiten,
};
use serde_json::Value;

type Learner = PpoLearner<LoraModel<CausalLm>, LoraModel<SequenceClassifier>>;

fn policy() -> LoraModel<CausalLm> {
    let mut m = LoraModel::new(tiny_model());
    m.load_adapter(&fixture("dpo/adapter_init_b"), "default")
        .unwrap();
    m
}

fn value_model() -> LoraModel<SequenceClassifier> {
    let cls = SequenceClassifier::load(&fixture("reward/model"), &device()).unwrap();
    let mut m = LoraModel::new(cls);
    m.load_adapter(&fixture("reward/adapter_init"), "default")
        .unwrap();
    m
}

fn load(case: &str) -> Value {
    let text = std::fs::read_to_string(fixture("ppo").join(format!("{case}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn rollouts(want: &Value) -> Vec<Rollout> {
    let q = want["queries"].as_array().unwrap();
    let r = want["responses"].as_array().unwrap();
    let s = floats(&want["raw_scores"]);
    (0..q.len())
        .map(|i| Rollout {
            prompt: ids(&q[i]),
            completion: ids(&r[i]),
            reward: Some(s[i]),
            truncated: false,
        })
        .collect()
}

/// TRL's PPO: AdamW at a constant rate, no gradient clipping.
fn no_clip(accum: usize, lr: f64) -> TrainerOptions {
    TrainerOptions {
        max_grad_norm: None,
        ..trainer_options(accum, lr, 8)
    }
}

fn options(h: &Value) -> PpoOptions {
    PpoOptions {
        kl_coef: h["kl_coef"].as_f64().unwrap(),
        kl_estimator: h["kl_estimator"].as_str().unwrap().parse().unwrap(),
        cliprange: h["cliprange"].as_f64().unwrap(),
        cliprange_value: h["cliprange_value"].as_f64().unwrap(),
        vf_coef: h["vf_coef"].as_f64().unwrap(),
        gamma: h["gamma"].as_f64().unwrap(),
        lam: h["lam"].as_f64().unwrap(),
        whiten_rewards: false,
        num_ppo_epochs: h["num_ppo_epochs"].as_u64().unwrap() as usize,
        num_mini_batches: h["num_mini_batches"].as_u64().unwrap() as usize,
        missing_eos_penalty: h["missing_eos_penalty"].as_f64(),
        batch_size: h["batch"].as_u64().unwrap() as usize,
        eos_id: 2,
        pad_id: 0,
        seed: 0,
    }
}

fn learner(want: &Value) -> Learner {
    let h = &want["hyper"];
    let (accum, lr) = (
        h["accum"].as_u64().unwrap() as usize,
        h["lr"].as_f64().unwrap(),
    );
    let policy = policy();
    let mut reference = policy.clone();
    reference.disable_adapters();
    let p = Trainer::new(policy, &device(), no_clip(accum, lr)).unwrap();
    let v = Trainer::new(value_model(), &device(), no_clip(accum, lr)).unwrap();
    PpoLearner::new(p, v, reference, options(h)).unwrap()
}

fn max_diff(name: &str, what: &str, got: &[f64], want: &Value) -> f64 {
    let want = floats(want);
    assert_eq!(got.len(), want.len(), "{name}: {what} length");
    got.iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, f64::max)
}

fn check_rollout(name: &str, batch: &PpoBatch, want: &Value) {
    let r = &want["rollout"];
    let mut worst = 0f64;
    for (i, row) in batch.rows.iter().enumerate() {
        let f = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
        for (what, got) in [
            ("logprobs", f(&row.logprobs)),
            ("ref_logprobs", f(&row.ref_logprobs)),
            ("values", f(&row.values)),
            ("rewards", row.rewards.clone()),
            ("advantages", row.advantages.clone()),
            ("returns", row.returns.clone()),
        ] {
            let d = max_diff(name, what, &got, &r[what][i]);
            assert!(d < 1e-5, "{name}: row {i} {what} differs from TRL's by {d}");
            worst = worst.max(d);
        }
        let s = r["scores"][i].as_f64().unwrap();
        assert!(
            (row.score - s).abs() < 1e-6,
            "{name}: score {} vs {s}",
            row.score
        );
    }
    println!("{name}: rollout tensors within {worst:.2e} of TRL's");
}

fn check_adapters(name: &str, step: usize, l: &Learner) {
    for (which, ours) in [
        (
            "policy",
            l.policy.model().adapter_state_dict("default").unwrap(),
        ),
        (
            "value",
            l.value.model().adapter_state_dict("default").unwrap(),
        ),
    ] {
        let path = fixture("ppo").join(format!("{name}_{which}_step{step}.safetensors"));
        let want = read_safetensors(&path).unwrap();
        assert_eq!(ours.len(), want.len(), "{name}: {which} tensors");
        let mut err = 0f32;
        for (key, t) in &want {
            let o = ours
                .get(key)
                .unwrap_or_else(|| panic!("{which}: {key} missing"));
            assert_eq!(o.shape, t.shape, "{name}: {key}");
            for (a, b) in o.data.iter().zip(&t.data) {
                err = err.max((a - b).abs());
            }
        }
        assert!(
            err < 1e-5,
            "{name}: {which} after step {step} differs by {err}"
        );
        println!("{name}: {which} adapter after step {step} within {err:.2e}");
    }
}

fn orders(want: &Value) -> Vec<Vec<usize>> {
    want["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| ids(o).into_iter().map(|i| i as usize).collect())
        .collect()
}

/// Step by step: rollout tensors, each micro-batch's numbers and the adapters after each step.
fn steps_match(name: &str) {
    let _g = serial();
    let want = load(name);
    let mut l = learner(&want);
    let batch = l.prepare(rollouts(&want), 0.0).unwrap();
    check_rollout(name, &batch, &want);
    let micro = want["micro"].as_array().unwrap();
    let mut k = 0;
    for (e, order) in orders(&want).iter().enumerate() {
        let stats = l.step(&batch, order).unwrap().unwrap();
        for s in stats {
            let w = &micro[k];
            k += 1;
            for (what, got) in [
                ("pg_loss", s.pg_loss),
                ("vf_loss", s.vf_loss),
                ("approxkl", s.approxkl),
                ("pg_clipfrac", s.pg_clipfrac),
                ("vf_clipfrac", s.vf_clipfrac),
                ("ratio", s.ratio),
            ] {
                let t = w[what].as_f64().unwrap();
                assert!(
                    (got - t).abs() < 1e-5,
                    "{name}: micro-batch {k} {what} {got} vs TRL {t}"
                );
            }
        }
        check_adapters(name, e + 1, &l);
    }
    assert_eq!(k, micro.len());
}

/// The whole update through `update`: TRL's logged metrics and the final adapters.
fn update_matches(name: &str) {
    let _g = serial();
    let want = load(name);
    let mut l = learner(&want);
    let batch = l.prepare(rollouts(&want), 0.0).unwrap();
    let got = l.update(&batch, Some(&orders(&want))).unwrap();
    let got = serde_json::to_value(&got).unwrap();
    let mut worst = 0f64;
    for (k, t) in want["metrics"].as_object().unwrap() {
        if k == "policy/entropy_avg" {
            continue; // needs every logit: not returned by the fused head (module docs)
        }
        let (g, t) = (got[k].as_f64().unwrap(), t.as_f64().unwrap());
        assert!((g - t).abs() < 1e-5, "{name}: {k} {g} vs TRL {t}");
        worst = worst.max((g - t).abs());
    }
    println!("{name}: TRL's metrics within {worst:.2e}");
    let steps = want["hyper"]["num_ppo_epochs"].as_u64().unwrap() as usize;
    check_adapters(name, steps, &l);
}

#[test]
fn k1_steps_match_trl() {
    steps_match("k1");
}

#[test]
fn k3_clip_steps_match_trl() {
    steps_match("k3_clip");
}

#[test]
fn k1_update_metrics_match_trl() {
    update_matches("k1");
}

#[test]
fn k3_clip_update_metrics_match_trl() {
    update_matches("k3_clip");
}

#[test]
fn gae_matches_a_hand_computation() {
    let (g, l) = (0.9, 0.8);
    let r = [0.1, -0.2, 1.0];
    let v = [0.5, 0.3, 0.2];
    // δ_t = r_t + γ V_{t+1} - V_t (V_3 = 0); A_2 = δ_2, A_1 = δ_1 + γλ A_2, A_0 = δ_0 + γλ A_1.
    let d2 = 1.0 - 0.2;
    let d1 = -0.2 + 0.9 * 0.2 - 0.3;
    let d0 = 0.1 + 0.9 * 0.3 - 0.5;
    let a2 = d2;
    let a1 = d1 + 0.72 * a2;
    let a0 = d0 + 0.72 * a1;
    let got = gae(&r, &v, g, l);
    for (x, y) in got.iter().zip([a0, a1, a2]) {
        assert!((x - y).abs() < 1e-12, "{got:?}");
    }
    // γ = λ = 1: A_t = Σ_{s≥t} r_s - V_t.
    let got = gae(&r, &v, 1.0, 1.0);
    assert!((got[0] - (0.9 - 0.5)).abs() < 1e-12);
    assert!((got[1] - (0.8 - 0.3)).abs() < 1e-12);
}

#[test]
fn whitening_gives_zero_mean_and_unit_variance() {
    let mut rows = vec![vec![1.0, 2.0, 5.0], vec![-3.0], vec![0.5, 0.25]];
    whiten(&mut rows, true).unwrap();
    let all: Vec<f64> = rows.iter().flatten().copied().collect();
    let n = all.len() as f64;
    let mean = all.iter().sum::<f64>() / n;
    let var = all.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    assert!(
        mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-6,
        "{mean} {var}"
    );
    assert!(matches!(
        whiten(&mut [vec![1.0]], true),
        Err(TrainError::Option { .. })
    ));
}

#[test]
fn kl_is_zero_when_policy_is_reference() {
    let _g = serial();
    let want = load("k3_clip");
    let h = &want["hyper"];
    let p = Trainer::new(policy(), &device(), no_clip(2, 1e-3)).unwrap();
    let v = Trainer::new(value_model(), &device(), no_clip(2, 1e-3)).unwrap();
    let l = PpoLearner::new(p, v, policy(), options(h)).unwrap();
    let batch = l.prepare(rollouts(&want), 0.0).unwrap();
    for row in &batch.rows {
        assert_eq!(row.logprobs, row.ref_logprobs);
        assert!(row.kl.iter().all(|&k| k == 0.0));
    }
    assert_eq!(KlEstimator::K3.estimate(-1.5, -1.5), 0.0);
    assert!(KlEstimator::K3.estimate(-1.0, -2.0) > 0.0);
    assert_eq!(KlEstimator::K1.estimate(-1.0, -2.0), 1.0);
}

#[test]
fn bad_rollouts_are_typed_errors() {
    let _g = serial();
    let want = load("k1");
    let l = learner(&want);
    let mut r = rollouts(&want);
    r[2].reward = Some(f64::NAN);
    let e = l.prepare(r, 0.0).unwrap_err();
    assert!(matches!(e, TrainError::Batch { index: 2, .. }), "{e}");
    let mut r = rollouts(&want);
    r[1].completion.clear();
    let e = l.prepare(r, 0.0).unwrap_err();
    assert!(matches!(e, TrainError::Batch { index: 1, .. }), "{e}");
    let mut r = rollouts(&want);
    r[3].reward = None;
    let e = l.prepare(r, 0.0).unwrap_err();
    assert!(matches!(e, TrainError::Batch { index: 3, .. }), "{e}");
    let r = rollouts(&want)[..3].to_vec();
    let e = l.prepare(r, 0.0).unwrap_err();
    assert!(matches!(e, TrainError::Option { .. }), "{e}");
    assert!("k2".parse::<KlEstimator>().is_err());
}

/// The recipe on the tiny Llama (the DPO fixture's tokenizer and chat template): sampling,
/// scoring by a function, updates, `metrics.jsonl` with TRL's names, both adapters; the first
/// update's KL is 0 (a new adapter has B = 0: policy = reference) and a second run with the
/// same seed repeats the metrics exactly.
#[test]
fn run_ppo_writes_trl_metrics_and_repeats() {
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
    let run_once = |dir: &str| {
        let run = kiln_train::PpoRun {
            base: kiln_train::GrpoRun {
                model: model.path().to_path_buf(),
                data: fixture("grpo/prompts.jsonl"),
                output_dir: out.path().join(dir),
                max_steps: 2,
                lr: 1e-2,
                lora_r: 4,
                lora_alpha: 8.0,
                precision: Some(kiln_train::Precision::F32),
                ..kiln_train::GrpoRun::default()
            },
            ppo: PpoOptions {
                batch_size: 2,
                num_ppo_epochs: 2,
                missing_eos_penalty: Some(0.5),
                ..PpoOptions::default()
            },
            grad_accum: 1,
            response_length: 6,
        };
        let f = |_: &kiln_train::PromptRecord, text: &str| Some(text.chars().count() as f64 / 10.0);
        let reward = kiln_train::PpoReward::Functions(vec![(
            kiln_train::Reward::Custom {
                name: "length".into(),
                f: Box::new(f),
            },
            1.0,
        )]);
        kiln_train::run_ppo(&run, None, reward, |_| {}).unwrap()
    };
    let a = run_once("a");
    assert_eq!(a.history.len(), 2);
    assert!(a.history[0].kl.abs() < 1e-6, "{:?}", a.history[0]);
    let text = std::fs::read_to_string(out.path().join("a/metrics.jsonl")).unwrap();
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    for k in [
        "objective/kl",
        "objective/entropy",
        "objective/non_score_reward",
        "objective/rlhf_reward",
        "objective/scores",
        "policy/approxkl_avg",
        "policy/clipfrac_avg",
        "loss/policy_avg",
        "loss/value_avg",
        "val/clipfrac_avg",
        "val/ratio",
        "val/num_eos_tokens",
        "generation_s",
        "training_s",
    ] {
        assert!(first[k].is_number(), "metrics.jsonl lacks {k}: {first}");
    }
    for d in ["a/adapter", "a/value_adapter"] {
        assert!(
            out.path()
                .join(d)
                .join("adapter_model.safetensors")
                .exists()
        );
    }
    let b = run_once("b");
    for (x, y) in a.history.iter().zip(&b.history) {
        assert_eq!(
            (x.scores, x.kl, x.policy_loss_avg, x.value_loss_avg),
            (y.scores, y.kl, y.policy_loss_avg, y.value_loss_avg)
        );
    }
}
