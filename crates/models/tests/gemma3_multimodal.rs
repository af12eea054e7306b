//! Multimodal Gemma 3 checkpoints (`Gemma3ForConditionalGeneration`, written by
//! `tools/fixtures/families.py`) load as their text decoder: in the original key layout
//! (`language_model.model.*`, as `save_pretrained` writes it, tied) and in the module layout
//! (`model.language_model.*`, untied), vision tower and projector skipped, giving transformers'
//! logits for text input. PEFT adapters trained on the multimodal model (keys
//! `model.language_model.layers.N…`, plus the vision tower's, which are skipped; or the older
//! `language_model.model.layers.N…`) give PEFT's logits, and kiln saves them under PEFT's names.
#![allow(clippy::unwrap_used)]
mod common;
use burn::tensor::Tensor;
use common::{Reference, fixtures, max_abs_diff};
use kiln_lora::{LoraModel, read_safetensors};
use kiln_models::ModelError;
use kiln_models::{
    CausalLm, DecoderConfig, DecoderInput, ModuleLayout, Pretrained, SafetensorsWeights,
    build_causal_lm, causal_lm_loss, default_device,
};
use std::path::{Path, PathBuf};

fn dir(name: &str) -> PathBuf {
    fixtures().join("tiny").join(name)
}

fn load(dir: &Path) -> CausalLm {
    let config = DecoderConfig::from_file(&dir.join("config.json")).unwrap();
    let source = SafetensorsWeights::open(dir).unwrap();
    build_causal_lm(&config, &source, &default_device()).unwrap()
}

struct Batch {
    input: DecoderInput,
    mask: Vec<u8>,
    labels: Vec<i64>,
    reference: Reference,
}

fn batch(name: &str) -> Batch {
    let reference = Reference::open(dir(name).join("expected.safetensors"));
    let [b, t] = <[usize; 2]>::try_from(reference.shape("input_ids")).unwrap();
    let ids = reference
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
    Batch {
        input,
        mask,
        labels: reference.i64("labels"),
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

fn base_parity(name: &str) -> f32 {
    let model = load(&dir(name));
    let b = batch(name);
    let logits = model.forward(&b.input).unwrap();
    let diff = max_abs_diff(
        &real(&host(logits.clone()), &b.mask),
        &real(&b.reference.f32("logits"), &b.mask),
    );
    assert!(diff <= 1e-4, "{name}: max |Δ logit| = {diff}");
    let loss: f32 = causal_lm_loss(logits, &b.labels).unwrap().into_scalar();
    let want = b.reference.f32("loss")[0];
    assert!((loss - want).abs() <= 1e-5, "{name}: loss {loss} vs {want}");
    println!("{name}: max |Δ logit| {diff:.2e}, loss {loss} vs {want}");
    diff
}

#[test]
fn original_layout_tied_matches_transformers() {
    base_parity("gemma3_mm");
}

#[test]
fn module_layout_untied_matches_transformers() {
    base_parity("gemma3_mm_untied");
}

#[test]
fn config_is_the_text_config_as_the_multimodal_model_runs_it() {
    let tied = DecoderConfig::from_file(&dir("gemma3_mm").join("config.json")).unwrap();
    assert_eq!(tied.layout, ModuleLayout::Gemma3Multimodal);
    assert_eq!(tied.num_layers, 3);
    // text_config says 4.0, but Gemma3ForConditionalGeneration applies no final soft-cap.
    assert_eq!(tied.final_softcap, None);
    assert!(tied.tie_word_embeddings);
    // The top-level `tie_word_embeddings: false` wins over text_config's true.
    let untied = DecoderConfig::from_file(&dir("gemma3_mm_untied").join("config.json")).unwrap();
    assert!(!untied.tie_word_embeddings);
    assert!(load(&dir("gemma3_mm_untied")).lm_head.is_some());
    // The text-only fixture keeps the Gemma3ForCausalLM layout and soft-cap.
    let text = DecoderConfig::from_file(&dir("gemma3").join("config.json")).unwrap();
    assert_eq!(
        (text.layout, text.final_softcap),
        (ModuleLayout::CausalLm, Some(4.0))
    );
}

/// `Pretrained::load` of the directory (with a tokenizer added) gives the same model.
#[test]
fn pretrained_load_reads_a_multimodal_directory() {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(dir("gemma3_mm").join(f), tmp.path().join(f)).unwrap();
    }
    let vocab: String = (0..256)
        .map(|i| format!("\"t{i}\": {i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let tokenizer = format!(
        r#"{{"version": "1.0", "added_tokens": [], "normalizer": null,
            "pre_tokenizer": {{"type": "WhitespaceSplit"}}, "post_processor": null,
            "decoder": null, "model": {{"type": "WordLevel", "vocab": {{{vocab}}},
            "unk_token": "t0"}}}}"#
    );
    std::fs::write(tmp.path().join("tokenizer.json"), tokenizer).unwrap();
    let lm = Pretrained::load(tmp.path(), &default_device()).unwrap();
    assert_eq!(lm.model.config.layout, ModuleLayout::Gemma3Multimodal);
    let b = batch("gemma3_mm");
    let t = b.input.seq_len;
    let row0 = &b.input.ids[..t];
    assert_eq!(
        lm.encode(
            &row0
                .iter()
                .map(|i| format!("t{i}"))
                .collect::<Vec<_>>()
                .join(" "),
            false
        )
        .unwrap(),
        row0
    );
    let got = host(lm.model.forward(&DecoderInput::single(row0)).unwrap());
    let want = b.reference.f32("logits");
    let diff = max_abs_diff(&got, &want[..got.len()]);
    assert!(diff <= 1e-4, "row 0: max |Δ logit| = {diff}");
}

fn adapter_parity(adapter: &str) -> f32 {
    let b = batch("gemma3_mm");
    let adapter_dir = dir("gemma3_mm").join("peft").join(adapter);
    let want = Reference::open(dir("gemma3_mm").join("peft/lora/expected.safetensors"));
    let mut m = LoraModel::new(load(&dir("gemma3_mm")));
    m.load_adapter(&adapter_dir, "default").unwrap();
    let logits = m.model.forward(&b.input).unwrap();
    let loss: f32 = causal_lm_loss(logits.clone(), &b.labels)
        .unwrap()
        .into_scalar();
    let got = real(&host(logits), &b.mask);
    let d = max_abs_diff(&got, &real(&want.f32("logits"), &b.mask));
    assert!(d <= 1e-5, "{adapter}: max |Δ logit| vs PEFT = {d}");
    let want_loss = want.f32("loss")[0];
    assert!(
        (loss - want_loss).abs() <= 1e-5,
        "{adapter}: loss {loss} vs {want_loss}"
    );
    m.merge().unwrap();
    let merged = real(&host(m.model.forward(&b.input).unwrap()), &b.mask);
    let dm = max_abs_diff(&merged, &real(&want.f32("logits_merged"), &b.mask));
    assert!(dm <= 1e-5, "{adapter}: merged vs PEFT merged {dm}");
    println!("{adapter}: max |Δ logit| vs PEFT {d:.2e}, merged {dm:.2e}");
    d
}

#[test]
fn peft_lora_on_the_multimodal_model_matches_peft() {
    adapter_parity("lora");
}

#[test]
fn peft_lora_with_transformers_4_keys_matches_peft() {
    adapter_parity("lora_v4_keys");
}

/// kiln writes the adapter back under PEFT's names for the multimodal model: the file's text
/// tensors, the same values, none of the vision tower's.
#[test]
fn saved_adapter_keeps_the_multimodal_module_paths() {
    let peft_dir = dir("gemma3_mm").join("peft").join("lora");
    let mut m = LoraModel::new(load(&dir("gemma3_mm")));
    m.load_adapter(&peft_dir, "default").unwrap();
    let out = tempfile::tempdir().unwrap();
    m.save_adapter(out.path(), "default").unwrap();
    let saved = read_safetensors(&out.path().join("adapter_model.safetensors")).unwrap();
    let mut original = read_safetensors(&peft_dir.join("adapter_model.safetensors")).unwrap();
    let vision = original
        .keys()
        .filter(|k| k.starts_with("base_model.model.model.vision_tower."))
        .count();
    assert!(vision > 0, "the fixture holds vision-tower LoRA tensors");
    original.retain(|k, _| k.starts_with("base_model.model.model.language_model.layers."));
    assert_eq!(
        saved.keys().collect::<Vec<_>>(),
        original.keys().collect::<Vec<_>>()
    );
    for (key, t) in &saved {
        assert_eq!(t.shape, original[key].shape, "{key}");
        let d = max_abs_diff(&t.data, &original[key].data);
        assert!(d <= 1e-7, "{key}: {d}");
    }
}

/// A `gemma3` config over a text model's weights is a typed error naming the missing language
/// model.
#[test]
fn multimodal_config_without_language_model_weights_is_a_typed_error() {
    let config = DecoderConfig::from_file(&dir("gemma3_mm").join("config.json")).unwrap();
    let text_weights = SafetensorsWeights::open(&dir("gemma3")).unwrap();
    let err = build_causal_lm(&config, &text_weights, &default_device()).unwrap_err();
    assert!(
        matches!(&err, ModelError::MissingWeights { keys, .. }
            if keys[0].contains("language_model.model.embed_tokens.weight")),
        "{err}"
    );
}
