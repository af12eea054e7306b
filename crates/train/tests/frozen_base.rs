//! burn's autodiff path (the one Gemma, Phi-3, DoRA and the wgpu/cuda backends train through)
//! on a frozen base kept in its storage format: three trainer steps give the losses, gradient
//! norms and adapter weights of the same run on a dense copy of the dequantized base. With the
//! `wgpu` feature the same runs go through the wgpu device (lavapipe in CI) too, and equal the
//! CPU's.
#![allow(clippy::unwrap_used)]
mod common;

use burn::module::Module;
use burn::tensor::Device;
use common::*;
use kiln_lora::{AdapterSpec, InitLoraWeights, Layout, LoraLinear};
use kiln_models::{
    CausalLm, DecoderConfig, DecoderInput, Quantization, SafetensorsWeights, build_causal_lm_as,
};
use kiln_train::params_to_host;
use kiln_train::{BackwardPath, Batch, HostParams, MicroOutcome, Trainer};

fn load(name: &str, quantization: Quantization, device: &Device) -> CausalLm {
    let dir = fixture(&format!("tiny/{name}"));
    let config = DecoderConfig::from_file(&dir.join("config.json")).unwrap();
    let weights = SafetensorsWeights::open(&dir).unwrap();
    build_causal_lm_as(&config, &weights, device, quantization).unwrap()
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

/// Base frozen, random LoRA or DoRA (r 4) on every projection.
fn with_adapters(mut model: CausalLm, dora: bool, dropout: f64, device: &Device) -> CausalLm {
    device.seed(5);
    model = model.set_require_grad(false);
    let spec = AdapterSpec {
        r: 4,
        alpha: 8.0,
        scale: 2.0,
        dropout,
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
fn run(model: CausalLm, checkpointing: bool, device: &Device) -> (Vec<(f64, f64)>, HostParams) {
    let mut o = options(2, 1e-3, 3);
    o.backward = BackwardPath::Autodiff;
    o.gradient_checkpointing = checkpointing;
    let data = vec![batch(0..3), batch(3..6)];
    let mut trainer = Trainer::new(model, device, o).unwrap();
    let losses = (0..3)
        .map(|_| match trainer.step(&data).unwrap() {
            MicroOutcome::Stepped(m) => (m.loss, m.grad_norm),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(trainer.fused_micro_batches(), 0);
    (losses, params_to_host(trainer.model(), true).unwrap())
}

/// Asserts that two runs of [`run`] agree: losses within `loss_tol`, gradient norms within
/// `norm_tol` (both relative to max(value, 1)) and the same trained weights within `weight_tol`.
fn assert_same_run(
    what: &str,
    (got, got_params): &(Vec<(f64, f64)>, HostParams),
    (want, want_params): &(Vec<(f64, f64)>, HostParams),
    [loss_tol, norm_tol, weight_tol]: [f64; 3],
) {
    for ((lg, ng), (lw, nw)) in got.iter().zip(want) {
        assert!(
            (lg - lw).abs() < loss_tol * lw.max(1.0),
            "{what}: loss {lg} vs {lw}"
        );
        assert!(
            (ng - nw).abs() < norm_tol * nw.max(1.0),
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
    assert!(
        f64::from(diff) < weight_tol,
        "{what}: weights differ by {diff}"
    );
}

/// The frozen model, after checking that its projections are kept as stored, and its copy
/// with every frozen matrix dequantized into a dense tensor.
fn frozen_and_dense(frozen: CausalLm, what: &str) -> (CausalLm, CausalLm) {
    let o_proj = &frozen.model.layers[0].self_attn.o_proj;
    assert!(o_proj.weight.as_frozen().is_some(), "{what}: o_proj frozen");
    let dense = densified(frozen.clone());
    let o_proj = &dense.model.layers[0].self_attn.o_proj;
    assert!(o_proj.weight.as_frozen().is_none(), "{what}: o_proj dense");
    (frozen, dense)
}

/// The (model, quantization, DoRA, gradient checkpointing) cases: `stored` keeps a matrix
/// frozen when the file holds it in 16 bits or in blocks (`llama_bf16`); the f32 fixtures are
/// quantized at load.
fn cases() -> [(&'static str, Quantization, bool, bool); 4] {
    let nf4 = Quantization::Bnb("nf4".parse().unwrap());
    let int8 = Quantization::Bnb("int8".parse().unwrap());
    [
        ("gemma2", nf4, false, true),
        ("gemma2", int8, true, false),
        ("phi3", nf4, false, true),
        ("llama_bf16", Quantization::Stored, true, true),
    ]
}

// See `fused_backward_trains_like_autodiff` for the weight tolerance: a wrong gradient moves
// weights by about lr (1e-3) per step.
const SAME_DEVICE: [f64; 3] = [1e-5, 1e-4, 1e-4];

#[test]
fn frozen_base_trains_like_its_dequantized_copy() {
    let _g = serial();
    let device = device();
    for (name, q, dora, checkpointing) in cases() {
        let what = format!("{name} {q} dora {dora} checkpointing {checkpointing}");
        let model = with_adapters(load(name, q, &device), dora, 0.1, &device);
        let (frozen, dense) = frozen_and_dense(model, &what);
        let want = run(dense, checkpointing, &device);
        let got = run(frozen, checkpointing, &device);
        assert_same_run(&what, &got, &want, SAME_DEVICE);
    }
}

/// burn's autodiff on wgpu (lavapipe in CI, f32) with the base kept as stored: three steps equal
/// the dense dequantized copy on wgpu (dropout 0.1, masks from the wgpu device's seeded
/// generator) and, without dropout, the CPU's run of the same adapters (copied from the CPU
/// model, since each device draws its own random initial values; every parameter is copied:
/// on a device without autodiff none counts as trainable yet).
#[cfg(feature = "wgpu")]
#[test]
fn frozen_base_trains_on_wgpu_like_its_dequantized_copy_and_the_cpu() {
    let _g = serial();
    let (cpu, gpu) = (device(), Device::wgpu(Default::default()));
    for (name, q, dora, checkpointing) in cases() {
        let what = format!("wgpu {name} {q} dora {dora} checkpointing {checkpointing}");
        let model = with_adapters(load(name, q, &gpu), dora, 0.1, &gpu);
        let (frozen, dense) = frozen_and_dense(model, &what);
        let want = run(dense, checkpointing, &gpu);
        let got = run(frozen, checkpointing, &gpu);
        assert_same_run(&what, &got, &want, SAME_DEVICE);

        let on_cpu = with_adapters(load(name, q, &cpu), dora, 0.0, &cpu);
        let init = params_to_host(&on_cpu, false).unwrap();
        let adapters = init
            .tensors
            .keys()
            .filter(|k| k.contains("adapters"))
            .count();
        assert!(
            adapters > 0,
            "{what}: no adapter copied: {:?}",
            init.tensors.keys().take(6).collect::<Vec<_>>()
        );
        let on_gpu = with_adapters(load(name, q, &gpu), dora, 0.0, &gpu);
        let on_gpu = kiln_train::restore_params(on_gpu, &init).unwrap();
        let want = run(on_cpu, checkpointing, &cpu);
        let got = run(on_gpu, checkpointing, &gpu);
        assert_same_run(&format!("{what} vs cpu"), &got, &want, SAME_DEVICE);
    }
}
