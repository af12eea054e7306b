//! Golden tests: tiny random llama / mistral / qwen2 checkpoints written by transformers
//! (`tools/fixtures/generate.py`) give the same logits and loss in kiln.
#![allow(clippy::unwrap_used)]
mod common;
use common::{Reference, fixtures, max_abs_diff};
use kiln_models::{
    CausalLm, DecoderConfig, DecoderInput, Pretrained, Quantization, SafetensorsWeights,
    build_causal_lm, causal_lm_loss, default_device,
};

fn check(name: &str, checkpoint: &str) {
    let dir = fixtures().join("tiny").join(checkpoint);
    let reference = Reference::open(
        fixtures()
            .join("tiny")
            .join(name)
            .join("expected.safetensors"),
    );
    let device = default_device();
    // The tiny checkpoints hold no tokenizer.json: the model loads alone, as transformers'
    // `AutoModelForCausalLM.from_pretrained` loads it.
    let model = CausalLm::load(&dir, &device, Quantization::default()).unwrap();

    let [b, t] = <[usize; 2]>::try_from(reference.shape("input_ids")).unwrap();
    let ids: Vec<u32> = reference
        .i64("input_ids")
        .iter()
        .map(|&i| i as u32)
        .collect();
    let mask: Vec<u8> = reference
        .i64("attention_mask")
        .iter()
        .map(|&m| m as u8)
        .collect();
    let input = DecoderInput::new(ids, b, t)
        .with_attention_mask(mask.clone())
        .with_position_ids(reference.i64("position_ids"));
    let logits = model.forward(&input).unwrap();
    let v = logits.dims()[2];
    let got: Vec<f32> = logits.clone().into_data().try_into_vec().unwrap();
    let want = reference.f32("logits");
    // Compare real (non-padded) positions only.
    let (mut g, mut w) = (Vec::new(), Vec::new());
    for (k, &m) in mask.iter().enumerate() {
        if m == 1 {
            g.extend_from_slice(&got[k * v..(k + 1) * v]);
            w.extend_from_slice(&want[k * v..(k + 1) * v]);
        }
    }
    let diff = max_abs_diff(&g, &w);
    assert!(diff <= 1e-4, "{name}: max |Δ logit| = {diff}");

    let loss: f32 = causal_lm_loss(logits, &reference.i64("labels"))
        .unwrap()
        .into_scalar();
    let want_loss = reference.f32("loss")[0];
    assert!(
        (loss - want_loss).abs() <= 1e-5,
        "{name}: loss {loss} vs {want_loss}"
    );
}

#[test]
fn llama_gqa_tied() {
    check("llama", "llama");
}

#[test]
fn llama_linear_rope_scaling() {
    check("llama_linear", "llama_linear");
}

#[test]
fn llama_llama3_rope_scaling() {
    check("llama_llama3", "llama_llama3");
}

#[test]
fn mistral_sliding_window() {
    check("mistral", "mistral");
}

#[test]
fn qwen2_qkv_bias() {
    check("qwen2", "qwen2");
}

#[test]
fn f16_checkpoint() {
    check("llama_f16", "llama_f16");
}

#[test]
fn bf16_checkpoint() {
    check("llama_bf16", "llama_bf16");
}

#[test]
fn sharded_checkpoint_equals_single_file() {
    // The sharded copy holds the `llama` weights: same reference.
    check("llama", "llama_sharded");
}

/// Text needs the tokenizer: a checkpoint without one loads as a model (`CausalLm::load`, used
/// by every golden test above) and `Pretrained` says what is missing and why.
#[test]
fn a_checkpoint_without_a_tokenizer_loads_as_a_model_and_text_says_why_not() {
    let dir = fixtures().join("tiny").join("llama");
    assert!(!dir.join("tokenizer.json").exists());
    let err = Pretrained::load(&dir, &default_device())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tokenizer.json not found: text needs the model's tokenizer"),
        "{err}"
    );
}

/// transformers' greedy `generate` on the tiny Llama (`fixtures/tiny/llama/generate.json`): one
/// prompt alone, and a batch whose first row is a shorter prompt left-padded by two. kiln pads
/// the batch itself; every row's new tokens equal transformers'.
#[test]
fn greedy_generation_alone_and_left_padded_equals_transformers() {
    use kiln_models::{GenerationConfig, generate};
    let dir = fixtures().join("tiny").join("llama");
    let config = DecoderConfig::from_file(&dir.join("config.json")).unwrap();
    let model = build_causal_lm(
        &config,
        &SafetensorsWeights::open(&dir).unwrap(),
        &default_device(),
    )
    .unwrap();
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("generate.json")).unwrap()).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let settings = GenerationConfig {
        max_new_tokens: g["max_new_tokens"].as_u64().unwrap() as usize,
        eos_token_ids: vec![g["eos_token_id"].as_u64().unwrap() as u32],
        ..GenerationConfig::default()
    };
    let run = |prompts: &[Vec<u32>]| -> Vec<Vec<u32>> {
        generate(&model, prompts, &settings, None, &mut |_, _| {})
            .unwrap()
            .into_iter()
            .map(|o| o.tokens)
            .collect()
    };
    let alone = run(&[ids(&g["prompt_ids"][0])]);
    assert_eq!(alone[0], ids(&g["greedy_new_ids"][0]));
    // The batch's prompts without their padding (attention mask 0).
    let batch = &g["batch"];
    let prompts: Vec<Vec<u32>> = (0..2)
        .map(|r| {
            ids(&batch["input_ids"][r])
                .into_iter()
                .zip(ids(&batch["attention_mask"][r]))
                .filter(|(_, m)| *m == 1)
                .map(|(t, _)| t)
                .collect()
        })
        .collect();
    assert_eq!(prompts[0].len(), 3);
    let got = run(&prompts);
    for (r, row) in got.iter().enumerate() {
        assert_eq!(*row, ids(&batch["greedy_new_ids"][r]), "row {r}");
    }
}
