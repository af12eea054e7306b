//! Golden loss curve: 5 LoRA steps on the tiny Llama with warmup, linear decay, global-norm
//! clipping and AdamW must give PyTorch + PEFT's losses (tools/fixtures/train_curve.py).
#![allow(clippy::unwrap_used)]
mod common;

use burn::module::Module;
use burn::tensor::{Tensor, TensorData};
use common::*;
use kiln_lora::{LoraAdapter, read_safetensors};
use kiln_models::DecoderInput;
use kiln_train::{
    AdamWOptions, Batch, LrSchedule, MicroOutcome, NonFinitePolicy, ScheduleKind, ScheduleOptions,
    Trainer, TrainerOptions,
};
use serde_json::Value;

fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

/// The tiny model with the fixture's PEFT adapter (alpha 8, r 4) on q_proj and v_proj.
fn model_with_fixture_adapter() -> kiln_models::CausalLm {
    let dir = fixture("tiny/llama/train_curve");
    let tensors = read_safetensors(&dir.join("adapter_model.safetensors")).unwrap();
    let device = device();
    let mut model = tiny_model().set_require_grad(false);
    let mut inserted = 0;
    for (i, layer) in model.model.layers.iter_mut().enumerate() {
        for (name, proj) in layer.self_attn.input_projections_mut() {
            if name != "q_proj" && name != "v_proj" {
                continue;
            }
            let key = format!("base_model.model.model.layers.{i}.self_attn.{name}");
            let a = &tensors[&format!("{key}.lora_A.weight")]; // [r, in]
            let b = &tensors[&format!("{key}.lora_B.weight")]; // [out, r]
            let (r, d_in, d_out) = (a.shape[0], a.shape[1], b.shape[0]);
            let a = Tensor::<2>::from_data(
                TensorData::new(transpose(&a.data, r, d_in), [d_in, r]),
                &device,
            );
            let b = Tensor::<2>::from_data(
                TensorData::new(transpose(&b.data, d_out, r), [r, d_out]),
                &device,
            );
            let adapter =
                LoraAdapter::from_factors("default", a, b, None, 8.0, 8.0 / r as f64, 0.0);
            proj.insert_adapter(adapter, &key).unwrap();
            proj.set_active(&["default".to_string()]);
            inserted += 1;
        }
    }
    assert_eq!(inserted, 4);
    model
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()))
        .collect()
}

#[test]
fn five_lora_steps_match_pytorch_peft() {
    let _g = serial();
    let text = std::fs::read_to_string(fixture("tiny/llama/train_curve/curve.json")).unwrap();
    let curve: Value = serde_json::from_str(&text).unwrap();
    let b = &curve["batch"];
    let ids = ints(&b["input_ids"]);
    let rows = b["input_ids"].as_array().unwrap().len();
    let t = ids.len() / rows;
    let input = DecoderInput::new(ids.iter().map(|&i| i as u32).collect(), rows, t)
        .with_attention_mask(
            ints(&b["attention_mask"])
                .iter()
                .map(|&m| m as u8)
                .collect(),
        );
    let data = vec![Batch::new(input, ints(&b["labels"])).unwrap()];
    let steps = curve["steps"].as_array().unwrap();
    let schedule = ScheduleOptions {
        kind: ScheduleKind::Linear,
        warmup_steps: Some(2),
        warmup_ratio: None,
        min_lr: 0.0,
    };
    let options = TrainerOptions {
        grad_accum: 1,
        max_grad_norm: Some(1.0),
        schedule: LrSchedule::new(&schedule, 1e-3, steps.len()),
        adamw: AdamWOptions {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
        },
        seed: 0,
        on_non_finite: NonFinitePolicy::Stop,
        early_stopping: None,
        gradient_checkpointing: false,
        backward: kiln_train::BackwardPath::Fused,
        precision: Some(kiln_train::Precision::F32),
    };
    let mut trainer = Trainer::new(model_with_fixture_adapter(), &device(), options).unwrap();
    for want in steps {
        let MicroOutcome::Stepped(m) = trainer.step(&data).unwrap() else {
            panic!("step did not complete")
        };
        let loss = want["loss"].as_f64().unwrap();
        let lr = want["lr"].as_f64().unwrap();
        let norm = want["grad_norm"].as_f64().unwrap();
        println!(
            "step {}: kiln loss {:.7} torch {loss:.7}; grad norm {:.6} vs {norm:.6}",
            m.step, m.loss, m.grad_norm
        );
        assert!(
            (m.loss - loss).abs() < 1e-5,
            "step {}: loss {} vs {loss}",
            m.step,
            m.loss
        );
        assert!(
            (m.lr - lr).abs() < 1e-12,
            "step {}: lr {} vs {lr}",
            m.step,
            m.lr
        );
        assert!(
            (m.grad_norm - norm).abs() < 1e-4 * norm,
            "step {}: grad norm {} vs {norm}",
            m.step,
            m.grad_norm
        );
    }
}
