//! burn's autodiff path (the one Gemma, Phi-3, DoRA and the wgpu/cuda backends train through)
//! on a frozen base kept in its storage format: three trainer steps give the losses, gradient
//! norms and adapter weights of the same run on a dense copy of the dequantized base.
#![allow(clippy::unwrap_used)]
mod common;

use burn::module::Module;
use common::*;
use kiln_lora::{AdapterSpec, InitLoraWeights, Layout, LoraLinear};
use kiln_models::{
    CausalLm, DecoderConfig, DecoderInput, Quantization, SafetensorsWeights, build_causal_lm_as,
};
use kiln_train::params::params_to_host;
use kiln_train::{BackwardPath, Batch, MicroOutcome, Trainer};

fn load(name: &str, quantization: Quantization) -> CausalLm {
    let dir = fixture(&format!("tiny/{name}"));
    let config = DecoderConfig::from_file(&dir.join("config.json")).unwrap();
    let weights = SafetensorsWeights::open(&dir).unwrap();
    build_causal_lm_as(&config, &weights, &device(), quantization).unwrap()
}

fn for_each_projection(model: &mut CausalLm, mut f: impl FnMut(&mut LoraLinear)) {
    for layer in &mut model.model.layers {
        let a = &mut layer.self_attn;
        a.input_projections_mut()
            .into_iter()
            .for_each(|(_, l)| f(l));
        f(&mut a.o_proj);
        let m = &mut layer.mlp;
        m.projections_mut().into_iter().for_each(|(_, l)| f(l));
    }
}

/// Base frozen, random LoRA or DoRA (r 4, dropout 0.1) on every projection.
fn with_adapters(mut model: CausalLm, dora: bool) -> CausalLm {
    device().seed(5);
    model = model.set_require_grad(false);
    let spec = AdapterSpec {
        r: 4,
        alpha: 8.0,
        scale: 2.0,
        dropout: 0.1,
        init: InitLoraWeights::Random,
        use_dora: dora,
    };
    for_each_projection(&mut model, |p| {
        p.add_adapter("default", &spec).unwrap();
        p.set_active(&["default".to_string()]);
    });
    model
}

/// The same model with every frozen matrix dequantized into a dense f32 tensor.
fn densified(mut model: CausalLm) -> CausalLm {
    for_each_projection(&mut model, |p| p.weight.densify(Layout::Linear));
    model.model.embed_tokens.densify(Layout::Table);
    model
}

/// Rows of 12 tokens within the tiny fixtures' 256-token vocabulary, padded and partly ignored.
fn batch(rows: std::ops::Range<usize>) -> Batch {
    let t = 12;
    let (mut ids, mut mask, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for r in rows.clone() {
        for i in 0..t {
            let id = ((r * 37 + i * 11 + 5) % 250 + 3) as u32;
            let real = i < t - r % 3;
            ids.push(if real { id } else { 0 });
            mask.push(real as u8);
            labels.push(if !real || i <= r % 2 { -100 } else { id as i64 });
        }
    }
    let input = DecoderInput::new(ids, rows.len(), t).with_attention_mask(mask);
    Batch::new(input, labels).unwrap()
}

/// Three steps through burn's autodiff: each step's (loss, grad norm), and the trained weights.
fn run(model: CausalLm, checkpointing: bool) -> (Vec<(f64, f64)>, kiln_train::HostParams) {
    let mut o = options(2, 1e-3, 3);
    o.backward = BackwardPath::Autodiff;
    o.gradient_checkpointing = checkpointing;
    let data = vec![batch(0..3), batch(3..6)];
    let mut trainer = Trainer::new(model, &device(), o).unwrap();
    let losses = (0..3)
        .map(|_| match trainer.step(&data).unwrap() {
            MicroOutcome::Stepped(m) => (m.loss, m.grad_norm),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(trainer.fused_micro_batches(), 0);
    (losses, params_to_host(trainer.model(), true).unwrap())
}

#[test]
fn frozen_base_trains_like_its_dequantized_copy() {
    let _g = serial();
    let nf4 = Quantization::Bnb("nf4".parse().unwrap());
    let int8 = Quantization::Bnb("int8".parse().unwrap());
    // `stored` keeps a matrix frozen when the file holds it in 16 bits or in blocks
    // (`llama_bf16`); the f32 fixtures are quantized at load.
    for (name, q, dora, checkpointing) in [
        ("gemma2", nf4, false, true),
        ("gemma2", int8, true, false),
        ("phi3", nf4, false, true),
        ("llama_bf16", Quantization::Stored, true, true),
    ] {
        let what = format!("{name} {q} dora {dora} checkpointing {checkpointing}");
        let frozen = with_adapters(load(name, q), dora);
        let o_proj = &frozen.model.layers[0].self_attn.o_proj;
        assert!(o_proj.weight.as_frozen().is_some(), "{what}: o_proj frozen");
        let dense = densified(frozen.clone());
        assert!(
            dense.model.layers[0]
                .self_attn
                .o_proj
                .weight
                .as_frozen()
                .is_none()
        );
        let (want, want_params) = run(dense, checkpointing);
        let (got, got_params) = run(frozen, checkpointing);
        for ((lg, ng), (lw, nw)) in got.iter().zip(&want) {
            assert!(
                (lg - lw).abs() < 1e-5 * lw.max(1.0),
                "{what}: loss {lg} vs {lw}"
            );
            assert!(
                (ng - nw).abs() < 1e-4 * nw.max(1.0),
                "{what}: norm {ng} vs {nw}"
            );
        }
        assert_eq!(
            got_params.tensors.keys().collect::<Vec<_>>(),
            want_params.tensors.keys().collect::<Vec<_>>(),
            "{what}: the same parameters train"
        );
        let diff = got_params
            .tensors
            .iter()
            .flat_map(|(k, (_, _, x))| {
                let y = &want_params.tensors[k].2;
                x.iter().zip(y).map(|(x, y)| (x - y).abs())
            })
            .fold(0f32, f32::max);
        // See `fused_backward_trains_like_autodiff` for the tolerance: a wrong gradient moves
        // weights by about lr (1e-3) per step.
        assert!(diff < 1e-4, "{what}: weights differ by {diff}");
    }
}
