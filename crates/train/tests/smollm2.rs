//! The real model, SmolLM2-135M-Instruct: LoRA r=16 on all seven projection kinds has PEFT's
//! trainable-parameter count, the loss goes down over 3 training steps, and the saved adapter
//! reloads into a fresh model with identical logits.
//!
//! Needs the model in kiln's cache (`tools/fetch_model.sh`; CI fetches it and sets
//! `KILN_REQUIRE_MODEL=1`, which turns a missing model into a failure).
#![allow(clippy::unwrap_used)]
mod common;

use burn::module::Module;
use kiln_lora::{LoraConfig, LoraModel, TargetModules};
use kiln_models::{DecoderInput, Pretrained, default_device, fetch};
use kiln_train::{
    AdamWOptions, Batch, Export, LrSchedule, MicroOutcome, NonFinitePolicy, ScheduleKind,
    ScheduleOptions, Trainer, TrainerOptions,
};

fn host(t: burn::tensor::Tensor<3>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

#[test]
fn smollm2_lora_count_loss_decrease_save_reload() {
    let path = fetch::smollm2_path();
    if !common::model_cached(&path, "tools/fetch_model.sh") {
        return;
    }
    let device = default_device();
    let lm = Pretrained::load(&path, &device).unwrap();
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
        16,
        32.0,
        TargetModules::Names(targets.map(String::from).to_vec()),
    );
    config.lora_dropout = 0.0;
    device.seed(11);
    let text = "The population of Tottori in 2020 was 553,407. The population of Shimane in 2020 \
                was 671,126. Tottori is the least populous prefecture of Japan.";
    let ids = lm.encode(text, false).unwrap();
    let model = LoraModel::with_adapter(lm.model, "default", config).unwrap();
    // PEFT's count for this config on SmolLM2-135M.
    assert_eq!(model.param_count().trainable, 4_884_480);
    let report = model.trainable_parameters_report();
    assert!(
        report.starts_with("trainable params: 4,884,480 || all params: "),
        "{report}"
    );

    let t = ids.len().min(40);
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
    assert!(
        losses[2] < losses[0] - 0.05,
        "loss did not go down: {losses:?}"
    );

    let trained = trainer.into_model().valid();
    let dir = tempfile::tempdir().unwrap();
    trained.export(dir.path()).unwrap();
    assert!(dir.path().join("adapter_config.json").is_file());
    let probe = DecoderInput::new(data[0].input.ids.clone(), 2, t);
    let want = host(trained.model.forward(&probe).unwrap());

    let fresh = Pretrained::load(&path, &device).unwrap();
    let base = host(fresh.model.forward(&probe).unwrap());
    let mut reloaded = LoraModel::new(fresh.model);
    reloaded.load_adapter(dir.path(), "default").unwrap();
    let got = host(reloaded.model.forward(&probe).unwrap());
    let diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    };
    assert!(
        diff(&got, &want) <= 1e-5,
        "reloaded vs trained: {}",
        diff(&got, &want)
    );
    // And the adapter does change the model.
    assert!(diff(&base, &want) > 1e-2);
}
