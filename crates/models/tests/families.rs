//! Gemma 2, Gemma 3 and Phi-3: tiny random checkpoints written by transformers
//! (`tools/fixtures/families.py`) give transformers' logits and loss in kiln, PEFT LoRA adapters
//! (on `qkv_proj` / `gate_up_proj` for Phi-3) give PEFT's logits merged and unmerged, and cached
//! decoding equals the full forward.
#![allow(clippy::unwrap_used)]
mod common;
use burn::tensor::Tensor;
use common::{Reference, fixtures, max_abs_diff};
use kiln_lora::LoraModel;
use kiln_models::{
    AttentionKind, CausalLm, DecoderConfig, DecoderInput, Family, KvCache, SafetensorsWeights,
    build_causal_lm, causal_lm_loss, default_device,
};

struct Case {
    model: CausalLm,
    input: DecoderInput,
    mask: Vec<u8>,
    labels: Vec<i64>,
    reference: Reference,
}

fn case(name: &str) -> Case {
    let dir = fixtures().join("tiny").join(name);
    let reference = Reference::open(dir.join("expected.safetensors"));
    let config = DecoderConfig::from_file(&dir.join("config.json")).unwrap();
    let source = SafetensorsWeights::open(&dir).unwrap();
    let model = build_causal_lm(&config, &source, &default_device()).unwrap();
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
    let labels = reference.i64("labels");
    Case {
        model,
        input,
        mask,
        labels,
        reference,
    }
}

/// Rows of `[positions, vocab]` values where `mask` is 1.
fn real(all: &[f32], mask: &[u8]) -> Vec<f32> {
    let v = all.len() / mask.len();
    mask.iter()
        .enumerate()
        .filter(|(_, m)| **m == 1)
        .flat_map(|(k, _)| all[k * v..(k + 1) * v].to_vec())
        .collect()
}

fn host(t: Tensor<3>) -> Vec<f32> {
    t.into_data().try_into_vec().unwrap()
}

fn base_parity(name: &str) {
    let c = case(name);
    let logits = c.model.forward(&c.input).unwrap();
    let got = real(&host(logits.clone()), &c.mask);
    let diff = max_abs_diff(&got, &real(&c.reference.f32("logits"), &c.mask));
    assert!(diff <= 1e-4, "{name}: max |Δ logit| = {diff}");
    let want_loss = c.reference.f32("loss")[0];
    let loss: f32 = causal_lm_loss(logits, &c.labels).unwrap().into_scalar();
    assert!(
        (loss - want_loss).abs() <= 1e-5,
        "{name}: loss {loss} vs {want_loss}"
    );
    // The training path projects only counted positions; soft-capping must apply there too.
    let sum = c.model.loss_sum(&c.input, &c.labels).unwrap();
    let mean: f32 = sum.sum.into_scalar::<f32>() / sum.tokens as f32;
    assert!(
        (mean - want_loss).abs() <= 1e-5,
        "{name}: loss_sum mean {mean} vs {want_loss}"
    );
    println!("{name}: max |Δ logit| {diff:.2e}, loss {loss} vs {want_loss}");
}

fn adapter_parity(name: &str) {
    let c = case(name);
    let dir = fixtures().join("tiny").join(name).join("peft").join("lora");
    let want = Reference::open(dir.join("expected.safetensors"));
    let mut m = LoraModel::new(c.model);
    m.load_adapter(&dir, "default").unwrap();
    let logits = m.model.forward(&c.input).unwrap();
    let loss: f32 = causal_lm_loss(logits.clone(), &c.labels)
        .unwrap()
        .into_scalar();
    let got = real(&host(logits), &c.mask);
    let d = max_abs_diff(&got, &real(&want.f32("logits"), &c.mask));
    assert!(d <= 1e-5, "{name}: adapter max |Δ logit| vs PEFT = {d}");
    println!("{name}: LoRA max |Δ logit| vs PEFT {d:.2e}");
    let want_loss = want.f32("loss")[0];
    assert!(
        (loss - want_loss).abs() <= 1e-5,
        "{name}: adapter loss {loss} vs {want_loss}"
    );
    m.merge().unwrap();
    let merged = real(&host(m.model.forward(&c.input).unwrap()), &c.mask);
    let d = max_abs_diff(&merged, &got);
    assert!(d <= 1e-5, "{name}: merged vs unmerged {d}");
    let d = max_abs_diff(&merged, &real(&want.f32("logits_merged"), &c.mask));
    assert!(d <= 1e-5, "{name}: merged vs PEFT merged {d}");
}

/// Row 0 of the fixture batch (12 tokens, no padding): a 5-token prefill and then one token at a
/// time through the KV cache give the full forward's logits at every position.
fn cached_equals_full(name: &str) {
    let c = case(name);
    let t = c.input.seq_len;
    let ids = &c.input.ids[..t];
    let full = host(c.model.forward(&DecoderInput::single(ids)).unwrap());
    let mut cache = KvCache::default();
    let mut got = Vec::new();
    let prefill = 5;
    let mut start = 0;
    for end in std::iter::once(prefill).chain(prefill + 1..=t) {
        let hidden = c
            .model
            .forward_hidden(&DecoderInput::single(&ids[start..end]), Some(&mut cache))
            .unwrap();
        got.extend(host(c.model.logits(hidden)));
        start = end;
    }
    assert_eq!(cache.len(), t);
    let d = max_abs_diff(&got, &full);
    assert!(d <= 1e-4, "{name}: cached vs full forward {d}");
}

#[test]
fn gemma2_matches_transformers() {
    base_parity("gemma2");
}

#[test]
fn gemma3_matches_transformers() {
    base_parity("gemma3");
}

#[test]
fn phi3_matches_transformers() {
    base_parity("phi3");
}

#[test]
fn phi3_longrope_matches_transformers() {
    base_parity("phi3_longrope");
}

/// LongRoPE below its original context (8) uses the short factors; greedy decoding that crosses
/// it recomputes the cache with the long factors, as transformers' Phi-3 does
/// (`tools/fixtures/longrope_decode.py`, `decode.safetensors`; its script checks that the two
/// halves of the decode differ from a forward of the whole sequence where they must).
#[test]
fn phi3_longrope_short_factors_and_the_switch_while_decoding_match_transformers() {
    use kiln_models::{GenerationConfig, generate};
    let c = case("phi3_longrope");
    let r = Reference::open(
        fixtures()
            .join("tiny/phi3_longrope")
            .join("decode.safetensors"),
    );
    let ids = |k: &str| -> Vec<u32> { r.i64(k).iter().map(|&i| i as u32).collect() };
    let short = host(
        c.model
            .forward(&DecoderInput::single(&ids("short_ids")))
            .unwrap(),
    );
    let d = max_abs_diff(&short, &r.f32("short_logits"));
    assert!(d <= 1e-4, "short factors: max |Δ logit| = {d}");
    let settings = GenerationConfig {
        max_new_tokens: 8,
        eos_token_ids: vec![],
        ..GenerationConfig::default()
    };
    assert_eq!(c.model.recompute_cache_at(), Some(8));
    let out = generate(
        &c.model,
        &[ids("prompt_ids")],
        &settings,
        None,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(out[0].tokens, ids("new_ids"));
}

#[test]
fn gemma2_lora_matches_peft() {
    adapter_parity("gemma2");
}

#[test]
fn gemma3_lora_matches_peft() {
    adapter_parity("gemma3");
}

#[test]
fn phi3_fused_lora_matches_peft() {
    adapter_parity("phi3");
}

#[test]
fn gemma2_cached_decode_equals_full_forward() {
    cached_equals_full("gemma2");
}

#[test]
fn gemma3_cached_decode_equals_full_forward() {
    cached_equals_full("gemma3");
}

#[test]
fn phi3_cached_decode_equals_full_forward() {
    cached_equals_full("phi3");
}

#[test]
fn configs_resolve_to_the_family_knobs() {
    let load = |n: &str| {
        DecoderConfig::from_file(&fixtures().join("tiny").join(n).join("config.json")).unwrap()
    };
    let g2 = load("gemma2");
    assert_eq!(g2.family, Family::Gemma2);
    assert_eq!(g2.head_dim, 24);
    assert_eq!(g2.attn_softcap, Some(2.0));
    assert_eq!(g2.final_softcap, Some(3.0));
    assert_eq!((g2.attn_scale - 20f64.powf(-0.5)).abs(), 0.0);
    assert_eq!(g2.embed_scale, Some(8.0));
    assert_eq!(
        g2.layer_attention,
        vec![AttentionKind::Sliding { window: 4 }, AttentionKind::Full]
    );
    let g3 = load("gemma3");
    assert!(g3.qk_norm && g3.sandwich_norms && g3.norm_unit_offset);
    assert_eq!(g3.attn_softcap, None, "transformers ignores it for Gemma 3");
    assert_eq!(g3.rope_theta, 100_000.0);
    assert_eq!(g3.rope_local.as_ref().unwrap().theta, 10_000.0);
    let p = load("phi3");
    assert!(p.fused_qkv && p.fused_gate_up);
    assert_eq!((p.head_dim, p.rotary_dim), (16, 8));
    assert_eq!(
        p.layer_attention,
        vec![AttentionKind::Sliding { window: 6 }; 2]
    );
}
