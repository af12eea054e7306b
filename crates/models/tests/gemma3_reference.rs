//! The real model: Gemma 3 270M (Q4_K_M GGUF, 262,144-token vocabulary) in kiln against
//! transformers loading the same file in float32 (`fixtures/gemma3_270m/`, written by
//! `tools/fixtures/gemma3_270m.py`): same token ids from the GGUF tokenizer, same top-10 at the
//! last position, max |Δ logit| ≤ 5e-3 (on the top 512 and every 128th logit), mean NLL within
//! 2e-3 and the same 20-token greedy continuation, for a plain, a chat-formatted and a code prompt.
//!
//! Needs the model in kiln's cache (`tools/fetch_gemma3.sh`); without it the test prints SKIPPED
//! and passes, unless `KILN_REQUIRE_MODEL=1` (CI fetches it first).
#![allow(clippy::unwrap_used)]
mod common;
use common::{Reference, fixtures};
use kiln_models::{
    DecoderInput, GenerationConfig, Pretrained, causal_lm_loss, default_device, fetch, generate,
};
use serde_json::Value;

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn model_path() -> Option<std::path::PathBuf> {
    let path = fetch::gemma3_270m_path();
    if !path.is_file() {
        assert!(
            std::env::var("KILN_REQUIRE_MODEL").is_err(),
            "{} missing and KILN_REQUIRE_MODEL is set",
            path.display()
        );
        println!(
            "SKIPPED: {} missing (run tools/fetch_gemma3.sh)",
            path.display()
        );
        return None;
    }
    Some(path)
}

fn reference() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("gemma3_270m/reference.json")).unwrap(),
    )
    .unwrap()
}

#[test]
fn gemma3_270m_matches_transformers() {
    let Some(path) = model_path() else { return };
    let lm = Pretrained::load(&path, &default_device()).unwrap();
    let reference = reference();
    let config = &reference["config"];
    let c = &lm.model.config;
    assert_eq!(c.vocab_size, 262_144);
    assert_eq!(
        c.num_layers,
        config["num_hidden_layers"].as_u64().unwrap() as usize
    );
    assert!(lm.model.lm_head.is_none(), "tied: no copy of the embedding");
    let last = Reference::open(fixtures().join("gemma3_270m/last_logits.safetensors"));
    for (k, p) in reference["prompts"].as_array().unwrap().iter().enumerate() {
        let kind = p["kind"].as_str().unwrap();
        let ids = lm.encode(p["text"].as_str().unwrap(), true).unwrap();
        assert_eq!(ids, ids_of(&p["input_ids"]), "{kind}: token ids");

        let logits = lm.model.forward(&DecoderInput::single(&ids)).unwrap();
        let [_, t, v] = logits.dims();
        let host: Vec<f32> = logits.clone().into_data().try_into_vec().unwrap();
        let got_last = &host[(t - 1) * v..];
        let at: Vec<usize> = last
            .i64(&format!("prompt{k}_ids"))
            .iter()
            .map(|&i| i as usize)
            .collect();
        let got: Vec<f32> = at.iter().map(|&i| got_last[i]).collect();
        let diff = common::max_abs_diff(&got, &last.f32(&format!("prompt{k}")));
        assert!(
            diff <= 5e-3,
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
            (nll - want_nll).abs() <= 2e-3,
            "{kind}: mean NLL {nll} vs {want_nll}"
        );

        let settings = GenerationConfig {
            max_new_tokens: 20,
            eos_token_ids: lm.eos_token_ids(),
            ..Default::default()
        };
        let out = generate(&lm.model, &[ids], &settings, None, &mut |_, _| {}).unwrap();
        assert_eq!(
            out[0].tokens,
            ids_of(&p["greedy_20"]),
            "{kind}: greedy continuation"
        );
        println!("{kind}: max |Δ logit| {diff:.2e}, NLL {nll:.5} vs {want_nll:.5}");
    }
}

#[test]
fn gemma3_270m_tokenizer_matches_transformers() {
    let Some(path) = model_path() else { return };
    let file = kiln_models::gguf::GgufFile::open(&path).unwrap();
    let tokenizer = kiln_models::gguf::tokenizer_from_gguf(&file).unwrap();
    let samples: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("gemma3_270m/tokenizer_samples.json")).unwrap(),
    )
    .unwrap();
    for s in samples.as_array().unwrap() {
        let text = s["text"].as_str().unwrap();
        let ids = tokenizer.encode(text, true).unwrap().get_ids().to_vec();
        assert_eq!(ids, ids_of(&s["ids"]), "{text:?}");
    }
}
