//! The sequence-classification head (`SequenceClassifier`) against transformers 5.23's
//! `LlamaForSequenceClassification` on the tiny Llama (fixtures/reward/, written by
//! tools/fixtures/trl_reward.py): pooled scores with right padding, left padding and none, for
//! 1 and 3 labels; the fused backward of a loss of the scores against burn's autodiff (LoRA
//! and the head training together); typed errors for a missing or misshapen `score.weight`.
#![allow(clippy::unwrap_used)]
mod common;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use common::fixtures;
use kiln_lora::{AdapterSpec, InitLoraWeights};
use kiln_models::backprop::{BackpropOptions, Precision};
use kiln_models::{DecoderInput, ModelError, SequenceClassifier, default_device};
use serde_json::Value;

fn reference() -> Value {
    let text = std::fs::read_to_string(fixtures().join("reward/scores.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn batch(v: &Value) -> DecoderInput {
    let rows = v["input_ids"].as_array().unwrap();
    let t = rows[0].as_array().unwrap().len();
    let flat = |k: &str| -> Vec<u64> {
        v[k].as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()))
            .collect()
    };
    let ids = flat("input_ids").into_iter().map(|x| x as u32).collect();
    let mask = flat("attention_mask")
        .into_iter()
        .map(|x| x as u8)
        .collect();
    DecoderInput::new(ids, rows.len(), t).with_attention_mask(mask)
}

fn flat_f32(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
        })
        .collect()
}

#[test]
fn scores_equal_transformers() {
    let want = reference();
    let input = batch(&want);
    for (dir, key, labels) in [("model", "scores", 1), ("model3", "scores3", 3)] {
        let m = SequenceClassifier::load(&fixtures().join("reward").join(dir), &default_device())
            .unwrap();
        assert_eq!(m.head.num_labels, labels);
        assert_eq!(m.head.pad_token_id, Some(0));
        let got = m.scores(&input).unwrap();
        let expected = flat_f32(&want[key]);
        assert_eq!(got.len(), expected.len());
        let err = got
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            err < 1e-5,
            "{dir}: scores {got:?} vs transformers {expected:?}"
        );
        println!(
            "{dir}: {} scores within {err:.2e} of transformers",
            got.len()
        );
    }
    let m3 =
        SequenceClassifier::load(&fixtures().join("reward/model3"), &default_device()).unwrap();
    assert_eq!(m3.head.id2label, ["negative", "neutral", "positive"]);
}

#[test]
fn pooled_rows_follow_transformers_rule() {
    let m = SequenceClassifier::load(&fixtures().join("reward/model"), &default_device()).unwrap();
    // Right padding, left padding, a pad in the middle, all padding.
    let ids = vec![5, 6, 0, 0, 0, 0, 5, 6, 5, 0, 6, 0, 0, 0, 0, 0];
    let rows = m.pooled_rows(&DecoderInput::new(ids, 4, 4)).unwrap();
    assert_eq!(rows, [1, 7, 10, 12]);
}

/// Base frozen, random LoRA (r 4) on every projection, the head trainable.
fn trainable() -> SequenceClassifier {
    let device = default_device();
    device.seed(7);
    let m = SequenceClassifier::load(&fixtures().join("reward/model"), &device).unwrap();
    let mut m = m.set_require_grad(false);
    let spec = AdapterSpec {
        r: 4,
        alpha: 8.0,
        scale: 2.0,
        dropout: 0.0,
        init: InitLoraWeights::Random,
        use_dora: false,
    };
    use kiln_lora::AdapterTarget;
    m.lm.visit_linears_mut(&mut |_, l| {
        l.add_adapter("default", &spec).unwrap();
        l.set_active(&["default".to_string()]);
    });
    m.score.set_base_trainable(true);
    m
}

#[test]
fn fused_score_gradients_equal_autodiff() {
    let want = reference();
    let input = batch(&want);
    let model = trainable().fork(&default_device().autodiff()).train();
    // A loss that reads every score with a different weight, and squares one.
    let weights = [0.7f32, -1.3, 0.4, 2.1];
    let scores = model.forward(&input).unwrap();
    let b = weights.len();
    let device = scores.device();
    let w = Tensor::<2>::from_data(TensorData::new(weights.to_vec(), [b, 1]), &device);
    let loss = (scores.clone() * w).sum() + scores.slice([0..1, 0..1]).powf_scalar(2.0).sum();
    let want_loss = loss.clone().into_scalar::<f32>() as f64;
    let mut want = GradientsParams::from_grads(loss.backward(), &model);
    let fused = model
        .try_backprop_scores(
            &input,
            |s: &[f32]| {
                let l: f32 = s.iter().zip(&weights).map(|(s, w)| s * w).sum::<f32>() + s[0] * s[0];
                let mut g = weights.to_vec();
                g[0] += 2.0 * s[0];
                (l as f64, g)
            },
            BackpropOptions {
                checkpoint: false,
                precision: Precision::F32,
            },
        )
        .expect("fused path taken")
        .unwrap();
    assert!(
        (fused.loss - want_loss).abs() < 1e-5,
        "loss {} vs autodiff {want_loss}",
        fused.loss
    );
    assert_eq!(fused.grads.len(), want.len(), "parameters with a gradient");
    let mut worst = 0f32;
    for (id, shape, got) in fused.grads.into_entries() {
        assert_eq!(shape.len(), 2);
        let w: Vec<f32> = want
            .remove::<2>(id)
            .unwrap()
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let scale = w.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let err = got
            .iter()
            .zip(&w)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
            / scale;
        assert!(
            err < 1e-4,
            "gradient {shape:?} differs by {err} of its largest entry"
        );
        worst = worst.max(err);
    }
    println!("fused score backward: worst relative gradient difference {worst:.2e}");
}

/// A copy of fixtures/reward/model with its config edited, or its head file replaced.
fn edited(config: impl Fn(&mut Value), head: Option<&[usize]>) -> tempfile::TempDir {
    let src = fixtures().join("reward/model");
    let dir = tempfile::tempdir().unwrap();
    let mut c: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config(&mut c);
    std::fs::write(dir.path().join("config.json"), c.to_string()).unwrap();
    for f in [
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
    ] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let shard = dir.path().join("model-00002-of-00002.safetensors");
    match head {
        None => {
            std::fs::copy(src.join("model-00002-of-00002.safetensors"), shard).unwrap();
        }
        Some(shape) => {
            let values = vec![0.5f32; shape.iter().product()];
            let tensors = [("score.weight", shape.to_vec(), &values[..])];
            kiln_models::write_f32_safetensors(&shard, &tensors).unwrap();
        }
    }
    dir
}

#[test]
fn bad_heads_give_typed_errors() {
    let device = default_device();
    // config says 3 labels, the file holds 1.
    let dir = edited(|c| c["num_labels"] = 3.into(), None);
    match SequenceClassifier::load(dir.path(), &device) {
        Err(ModelError::Config { key, .. }) => assert_eq!(key, "id2label"),
        other => panic!("num_labels 3 with one id2label name: {other:?}"),
    }
    let dir = edited(
        |c| {
            c["num_labels"] = 3.into();
            c.as_object_mut().unwrap().remove("id2label");
        },
        None,
    );
    match SequenceClassifier::load(dir.path(), &device) {
        Err(ModelError::ShapeMismatch {
            key,
            expected,
            found,
            ..
        }) => {
            assert_eq!(key, "score.weight");
            assert_eq!((expected, found), (vec![3, 64], vec![1, 64]));
        }
        other => panic!("num_labels mismatch: {other:?}"),
    }
    // A head of the wrong width.
    let dir = edited(|_| {}, Some(&[1, 32]));
    let err = SequenceClassifier::load(dir.path(), &device).unwrap_err();
    assert!(
        matches!(&err, ModelError::ShapeMismatch { key, .. } if key == "score.weight"),
        "{err}"
    );
    // A causal LM checkpoint has no head.
    let err = SequenceClassifier::load(&fixtures().join("tiny/llama"), &device).unwrap_err();
    assert!(
        matches!(&err, ModelError::MissingWeights { keys, .. } if keys == &["score.weight"]),
        "{err}"
    );
    assert!(err.to_string().contains("tiny/llama"), "{err}");
}
