//! kiln's quantized bases against the reference stacks (`tools/fixtures/quantized_models.py`,
//! `fixtures/quantized/`): the tiny Llama and Gemma 2 quantized at load (NF4, FP4, LLM.int8)
//! equal transformers + bitsandbytes, and the tiny Llama written as Q4_0 / Q8_0 GGUF and kept
//! in its blocks equals transformers' GGUF loader, with and without the PEFT LoRA adapter.
//!
//! The reference stores every `STRIDE`-th vocabulary column of the logits and the log-sum-exp
//! over the whole vocabulary, at every position of two rows of ten ids.
#![allow(clippy::unwrap_used)]
mod common;

use burn::tensor::{Device, Tensor};
use common::{Reference, fixtures, max_abs_diff};
use kiln_cpu::QuantType;
use kiln_lora::LoraModel;
use kiln_models::{
    CausalLm, DecoderConfig, DecoderInput, GenerationConfig, Pretrained, Quantization,
    SafetensorsWeights, build_causal_lm_as, default_device, generate,
};
use std::path::PathBuf;

/// Largest |Δ| allowed between kiln's and the reference's logits.
const TOLERANCE: f32 = 1e-4;

fn reference() -> Reference {
    Reference::open(fixtures().join("quantized").join("logits.safetensors"))
}

fn gguf(name: &str) -> PathBuf {
    fixtures()
        .join("quantized")
        .join(format!("tiny_llama_{name}.gguf"))
}

fn manifest_stride() -> usize {
    let path = fixtures().join("quantized").join("manifest.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    json["stride"].as_u64().unwrap() as usize
}

fn input(r: &Reference) -> DecoderInput {
    let [b, t] = <[usize; 2]>::try_from(r.shape("input_ids")).unwrap();
    let ids = r.i64("input_ids").iter().map(|&i| i as u32).collect();
    DecoderInput::new(ids, b, t)
}

/// Strided columns and per-position log-sum-exp of `[b, t, vocab]` logits, as the fixture holds.
fn summarize(logits: Tensor<3>, stride: usize) -> (Vec<f32>, Vec<f32>) {
    let v = logits.dims()[2];
    let all: Vec<f32> = logits.into_data().convert::<f32>().try_into_vec().unwrap();
    let mut cols = Vec::new();
    let mut lse = Vec::new();
    for row in all.chunks_exact(v) {
        cols.extend(row.iter().step_by(stride));
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
        lse.push((max + sum.ln()) as f32);
    }
    (cols, lse)
}

/// Logits of `model` (with the family's PEFT adapter when `adapter`) against case `case`;
/// returns the max |Δ| over the stored columns and the log-sum-exps.
fn compare(model: CausalLm, family: &str, adapter: bool, case: &str) -> f32 {
    let r = reference();
    let input = input(&r);
    let logits = if adapter {
        let mut m = LoraModel::new(model);
        let dir = fixtures()
            .join("tiny")
            .join(family)
            .join("peft")
            .join("lora");
        m.load_adapter(&dir, "default").unwrap();
        m.model.forward(&input).unwrap()
    } else {
        model.forward(&input).unwrap()
    };
    let (cols, lse) = summarize(logits, manifest_stride());
    let case = if adapter {
        format!("{case}.lora")
    } else {
        case.to_string()
    };
    let d_cols = max_abs_diff(&cols, &r.f32(&format!("{case}.logits")));
    let d_lse = max_abs_diff(&lse, &r.f32(&format!("{case}.lse")));
    let d = d_cols.max(d_lse);
    eprintln!("{case}: max |Δ logit| {d_cols:.3e}, max |Δ logsumexp| {d_lse:.3e}");
    assert!(
        d <= TOLERANCE,
        "{case}: max |Δ| vs the reference = {d} (logits {d_cols}, logsumexp {d_lse})"
    );
    d
}

fn bnb_model(family: &str, kind: &str, device: &Device) -> CausalLm {
    let dir = fixtures().join("tiny").join(family);
    let config = DecoderConfig::from_file(&dir.join("config.json")).unwrap();
    let weights = SafetensorsWeights::open(&dir).unwrap();
    let q: Quantization = kind.parse().unwrap();
    let model = build_causal_lm_as(&config, &weights, device, q).unwrap();
    // As transformers + bitsandbytes: every projection of the layers quantized, the embedding
    // (and the tied lm_head) dense f32.
    for layer in &model.model.layers {
        let a = &layer.self_attn;
        for (_, p) in a
            .input_projections()
            .into_iter()
            .chain([("o_proj", &a.o_proj)])
        {
            let frozen = p.weight.as_frozen().expect("projection frozen");
            assert_eq!(frozen.matrix().quant_type().name(), kind, "{family}");
        }
        let m = &layer.mlp;
        for (_, p) in m.gate_up.named() {
            assert_eq!(
                p.weight.as_frozen().unwrap().matrix().quant_type().name(),
                kind
            );
        }
        assert!(m.down_proj.weight.as_frozen().is_some());
    }
    assert!(
        model.model.embed_tokens.as_dense().is_some(),
        "{family} {kind}: the embedding stays f32"
    );
    assert!(model.lm_head.is_none(), "tiny models tie lm_head");
    model
}

fn bnb_case(family: &str, kind: &str) {
    let device = default_device();
    for adapter in [false, true] {
        let model = bnb_model(family, kind, &device);
        compare(model, family, adapter, &format!("{family}.{kind}"));
    }
}

#[test]
fn llama_nf4_equals_bitsandbytes() {
    bnb_case("llama", "nf4");
}

#[test]
fn llama_fp4_equals_bitsandbytes() {
    bnb_case("llama", "fp4");
}

#[test]
fn llama_int8_equals_bitsandbytes() {
    bnb_case("llama", "int8");
}

#[test]
fn gemma2_nf4_equals_bitsandbytes() {
    bnb_case("gemma2", "nf4");
}

#[test]
fn gemma2_fp4_equals_bitsandbytes() {
    bnb_case("gemma2", "fp4");
}

#[test]
fn gemma2_int8_equals_bitsandbytes() {
    bnb_case("gemma2", "int8");
}

fn stored_gguf(name: &str, ty: QuantType) {
    let device = default_device();
    for adapter in [false, true] {
        let p = Pretrained::load_as(&gguf(name), &device, Quantization::Stored).unwrap();
        let model = p.model;
        let o_proj = &model.model.layers[0].self_attn.o_proj.weight;
        assert_eq!(o_proj.as_frozen().unwrap().matrix().quant_type(), ty);
        let q_proj = model.model.layers[1].self_attn.qkv.get("q_proj").unwrap();
        assert_eq!(q_proj.weight.as_frozen().unwrap().matrix().quant_type(), ty);
        let table = model.model.embed_tokens.as_frozen().unwrap();
        assert_eq!(
            table.matrix().quant_type(),
            ty,
            "the embedding stays in its blocks"
        );
        compare(model, "llama", adapter, &format!("gguf_{name}"));
    }
}

#[test]
fn gguf_q4_0_stored_equals_transformers() {
    stored_gguf("q4_0", QuantType::Q4_0);
}

#[test]
fn gguf_q8_0_stored_equals_transformers() {
    stored_gguf("q8_0", QuantType::Q8_0);
}

/// Greedy decoding with the KV cache through the blocks gives the tokens of the same weights
/// widened to f32.
#[test]
fn gguf_stored_greedy_generation_equals_f32() {
    let device = default_device();
    let prompts = vec![vec![1, 17, 200, 45], vec![1, 5, 9, 230, 180, 33, 77]];
    let config = GenerationConfig {
        max_new_tokens: 12,
        ..GenerationConfig::default()
    };
    for name in ["q4_0", "q8_0"] {
        let run = |q: Quantization| {
            let p = Pretrained::load_as(&gguf(name), &device, q).unwrap();
            generate(&p.model, &prompts, &config, None, &mut |_, _| {}).unwrap()
        };
        let stored = run(Quantization::Stored);
        let f32 = run(Quantization::F32);
        for (row, (s, f)) in stored.iter().zip(&f32).enumerate() {
            assert_eq!(s.tokens.len(), 12, "{name} row {row}");
            assert_eq!(s.tokens, f.tokens, "{name} row {row}");
        }
    }
}

/// `nf4` on a GGUF already in blocks is the documented conversion: each layer matrix is
/// dequantized from Q4_0 and quantized again as NF4 (bitsandbytes' codes of the dequantized
/// values); the embedding stays f32 as transformers keeps it.
#[test]
fn bnb_on_a_quantized_gguf_converts_the_blocks() {
    let device = default_device();
    let nf4 = Quantization::Bnb("nf4".parse().unwrap());
    let stored = Pretrained::load_as(&gguf("q4_0"), &device, Quantization::Stored).unwrap();
    let converted = Pretrained::load_as(&gguf("q4_0"), &device, nf4).unwrap();
    let q4 = stored.model.model.layers[0]
        .self_attn
        .o_proj
        .weight
        .as_frozen()
        .unwrap();
    let nf = converted.model.model.layers[0]
        .self_attn
        .o_proj
        .weight
        .as_frozen()
        .unwrap();
    assert_eq!(q4.matrix().quant_type(), QuantType::Q4_0);
    assert_eq!(nf.matrix().quant_type(), QuantType::Nf4);
    let [rows, cols] = q4.matrix().shape();
    let want = kiln_cpu::quant::bnb::QuantizeOnLoad::Nf4
        .quantize(&q4.matrix().to_f32(), rows, cols)
        .unwrap();
    assert_eq!(
        nf.matrix().data(),
        want.data(),
        "NF4 codes of the Q4_0 values"
    );
    assert_eq!(nf.matrix().to_f32(), want.to_f32());
    assert!(converted.model.model.embed_tokens.as_frozen().is_none());
}

#[test]
fn unknown_quantization_lists_the_accepted_values() {
    let msg = "q3".parse::<Quantization>().unwrap_err().to_string();
    for want in ["q3", "f32", "stored", "nf4", "fp4", "int8"] {
        assert!(msg.contains(want), "{msg}");
    }
    for (s, q) in [
        ("f32", Quantization::F32),
        ("stored", Quantization::Stored),
        ("NF4", Quantization::Bnb("nf4".parse().unwrap())),
    ] {
        assert_eq!(s.parse::<Quantization>().unwrap(), q);
    }
}

/// PEFT counts a quantized weight's elements in "all params" (it doubles a packed 4-bit
/// tensor's numel): a base kept in blocks counts as many parameters as the f32 one.
#[test]
fn parameter_counts_include_frozen_matrices() {
    let device = default_device();
    let count = |q: Quantization| {
        let p = Pretrained::load_as(&gguf("q4_0"), &device, q).unwrap();
        let config = kiln_lora::LoraConfig::new(
            4,
            8.0,
            kiln_lora::TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]),
        );
        LoraModel::with_adapter(p.model, "default", config)
            .unwrap()
            .param_count()
    };
    let (stored, dense) = (count(Quantization::Stored), count(Quantization::F32));
    assert_eq!(stored.all, dense.all);
    assert_eq!(stored.trainable, dense.trainable);
    assert!(stored.trainable > 0 && stored.all > stored.trainable);
}
