//! The real Gemma 3 270M (Q4_K_M GGUF): LoRA r=8 on the seven projection kinds has PEFT's
//! trainable-parameter count and the loss goes down over 3 training steps on the CPU (two rows
//! of 24 tokens, to stay cheap with the 262,144-token vocabulary), with the weights widened to
//! f32 and with the base kept as stored (Q4_K/Q6_K blocks, through burn's autodiff and the
//! frozen-product operation): the two runs give the same losses.
//!
//! Needs the model in kiln's cache (`tools/fetch_gemma3.sh`; CI fetches it and sets
//! `KILN_REQUIRE_MODEL=1`, which turns a missing model into a failure).
#![allow(clippy::unwrap_used)]
mod common;

use kiln_lora::{LoraConfig, LoraModel, TargetModules};
use kiln_models::{Pretrained, Quantization, default_device, fetch};
use kiln_train::{
    AdamWOptions, Batch, LrSchedule, MicroOutcome, NonFinitePolicy, ScheduleKind, ScheduleOptions,
    Trainer, TrainerOptions,
};

#[test]
fn gemma3_270m_lora_loss_decreases() {
    let path = fetch::gemma3_270m_path();
    if !common::model_cached(&path, "tools/fetch_gemma3.sh") {
        return;
    }
    let dense = losses(&path, Quantization::F32);
    let stored = losses(&path, Quantization::Stored);
    for (d, s) in dense.iter().zip(&stored) {
        assert!(
            (d - s).abs() < 1e-4 * d.max(1.0),
            "f32 {dense:?} vs stored {stored:?}"
        );
    }
}

/// Three LoRA steps on the model loaded with `quantization`: the losses, checked to go down.
fn losses(path: &std::path::Path, quantization: Quantization) -> Vec<f64> {
    let device = default_device();
    let lm = Pretrained::load_as(path, &device, quantization).unwrap();
    let targets = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];
    let mut config = LoraConfig::new(
        8,
        16.0,
        TargetModules::Names(targets.map(String::from).to_vec()),
    );
    config.lora_dropout = 0.0;
    device.seed(11);
    let text = "The population of Tottori in 2020 was 553,407. The population of Shimane in 2020 \
                was 671,126. Tottori is the least populous prefecture of Japan.";
    let ids = lm.encode(text, true).unwrap();
    let model = LoraModel::with_adapter(lm.model, "default", config).unwrap();
    // PEFT's count: 18 layers x 8 x (1664 + 896 + 896 + 1664 + 3 x 2688).
    assert_eq!(model.param_count().trainable, 1_898_496);

    let t = ids.len().min(24);
    let mut rows = ids[..t].to_vec();
    rows.extend_from_slice(&ids[ids.len() - t..]);
    let data = vec![Batch::language_modelling(rows, 2, t).unwrap()];
    let schedule = ScheduleOptions {
        kind: ScheduleKind::Constant,
        warmup_steps: Some(0),
        warmup_ratio: None,
        min_lr: 0.0,
    };
    let options = TrainerOptions {
        grad_accum: 1,
        max_grad_norm: Some(1.0),
        schedule: LrSchedule::new(&schedule, 1e-3, 3),
        adamw: AdamWOptions {
            lr: 1e-3,
            ..AdamWOptions::default()
        },
        seed: 0,
        on_non_finite: NonFinitePolicy::Stop,
        early_stopping: None,
        gradient_checkpointing: false,
        backward: kiln_train::BackwardPath::Fused,
        precision: Some(kiln_train::Precision::F32),
    };
    let mut trainer = Trainer::new(model, &device, options).unwrap();
    let mut losses = Vec::new();
    for _ in 0..3 {
        let MicroOutcome::Stepped(m) = trainer.step(&data).unwrap() else {
            panic!("no step")
        };
        losses.push(m.loss);
    }
    println!("gemma3 270m LoRA losses ({quantization}): {losses:?}");
    assert!(
        losses[2] < losses[0] - 0.05,
        "{quantization}: loss did not go down: {losses:?}"
    );
    losses
}
