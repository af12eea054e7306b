//! The real model: SmolLM2-135M-Instruct (Q4_1 GGUF) in kiln against transformers loading the
//! same file in float32 (`fixtures/smollm2/`, written by `tools/fixtures/generate.py`): same
//! token ids, same top-10 at the last position, max |Δ logit| ≤ 2e-3, mean NLL within 1e-3 and
//! the same 20-token greedy continuation, for a plain, a chat-templated and a code prompt.
//!
//! Needs the model in kiln's cache (`tools/fetch_model.sh`, or any example run); without it the
//! test prints SKIPPED and passes. CI fetches it first.
#![allow(clippy::unwrap_used)]
mod common;
use common::{Reference, fixtures};
use kiln_models::{
    DecoderInput, GenerationConfig, Pretrained, causal_lm_loss, default_device, fetch, generate,
};
use serde_json::Value;

#[test]
fn smollm2_matches_transformers() {
    let path = fetch::smollm2_path();
    if !path.is_file() {
        println!(
            "SKIPPED: {} missing (run tools/fetch_model.sh)",
            path.display()
        );
        return;
    }
    let lm = Pretrained::load(&path, &default_device()).unwrap();
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("smollm2/reference.json")).unwrap(),
    )
    .unwrap();
    let last = Reference::open(fixtures().join("smollm2/last_logits.safetensors"));
    let ids_of = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let mut eos = lm.eos_token_ids();
    eos.push(reference["generation_eos_token_id"].as_u64().unwrap() as u32);
    for (k, p) in reference["prompts"].as_array().unwrap().iter().enumerate() {
        let kind = p["kind"].as_str().unwrap();
        let want_ids = ids_of(&p["input_ids"]);
        let ids = lm
            .encode(
                p["text"].as_str().unwrap(),
                p["add_special_tokens"].as_bool().unwrap(),
            )
            .unwrap();
        assert_eq!(ids, want_ids, "{kind}: token ids");

        let logits = lm.model.forward(&DecoderInput::single(&ids)).unwrap();
        let [_, t, v] = logits.dims();
        let host: Vec<f32> = logits.clone().into_data().try_into_vec().unwrap();
        let got_last = &host[(t - 1) * v..];
        let want_last = last.f32(&format!("prompt{k}"));
        let diff = common::max_abs_diff(got_last, &want_last);
        assert!(
            diff <= 2e-3,
            "{kind}: max |Δ logit| at the last position = {diff}"
        );
        let mut order: Vec<usize> = (0..v).collect();
        order.sort_by(|&a, &b| got_last[b].total_cmp(&got_last[a]));
        let top10: Vec<u32> = order[..10].iter().map(|&i| i as u32).collect();
        assert_eq!(top10, ids_of(&p["top10_ids"]), "{kind}: top-10");

        let labels: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let nll: f32 = causal_lm_loss(logits, &labels).unwrap().into_scalar();
        let want_nll = p["mean_nll"].as_f64().unwrap() as f32;
        assert!(
            (nll - want_nll).abs() <= 1e-3,
            "{kind}: mean NLL {nll} vs {want_nll}"
        );

        let config = GenerationConfig {
            max_new_tokens: 20,
            eos_token_ids: eos.clone(),
            ..Default::default()
        };
        let out = generate(&lm.model, &[ids], &config, None, &mut |_, _| {}).unwrap();
        assert_eq!(
            out[0].tokens,
            ids_of(&p["greedy_20"]),
            "{kind}: greedy continuation"
        );
        println!("{kind}: max |Δ logit| {diff:.2e}, NLL {nll:.5} vs {want_nll:.5}");
    }
}
