//! The fused CPU backward (`CausalLm::try_backprop`) against burn's autodiff on the same model
//! and batch: loss and every gradient, for LoRA and full fine-tuning, on the Llama (tied head,
//! GQA), Qwen2 (q/k/v biases, separate head) and Mistral (sliding window) fixtures, with padding,
//! ignored labels, packed segments and a padding row whose prediction counts.
#![allow(clippy::unwrap_used)]
mod common;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use common::fixtures;
use kiln_lora::{AdapterSpec, InitLoraWeights, LoraLinear};
use kiln_models::backprop::{BackpropOptions, Precision};
use kiln_models::{
    CausalLm, DecoderConfig, DecoderInput, Quantization, SafetensorsWeights, build_causal_lm_as,
    default_device,
};

/// burn's CPU RNG is global: tests that seed it and draw run one at a time.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

fn load(name: &str) -> CausalLm {
    load_as(name, Quantization::F32)
}

fn load_as(name: &str, quantization: Quantization) -> CausalLm {
    let dir = fixtures().join("tiny").join(name);
    let config = DecoderConfig::from_file(&dir.join("config.json")).unwrap();
    let weights = SafetensorsWeights::open(&dir).unwrap();
    build_causal_lm_as(&config, &weights, &default_device(), quantization).unwrap()
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

/// Base frozen, random LoRA (r 4) on all seven projections of every layer.
fn with_lora(mut model: CausalLm, dropout: f64, dora: bool) -> CausalLm {
    default_device().seed(7);
    model = model.set_require_grad(false);
    let spec = AdapterSpec {
        r: 4,
        alpha: 8.0,
        scale: 2.0,
        dropout,
        init: InitLoraWeights::Random,
        use_dora: dora,
    };
    for_each_projection(&mut model, |proj| {
        proj.add_adapter("default", &spec).unwrap();
        proj.set_active(&["default".to_string()]);
    });
    model
}

/// Two rows of 13: row 0 right-padded by 3 with its first labels ignored, row 1 left-padded by
/// 2 with every real token counted (so the padding row before it predicts a label: a query
/// that sees no key, whose gradient the tensor path still propagates).
fn padded_batch() -> (DecoderInput, Vec<i64>) {
    padded_batch_of(500)
}

/// [`padded_batch`] with ids below `ids + 3` (the Gemma and Phi-3 fixtures have 256 tokens).
fn padded_batch_of(ids_below: usize) -> (DecoderInput, Vec<i64>) {
    let t = 13;
    let mut ids = Vec::new();
    let (mut mask, mut labels) = (Vec::new(), Vec::new());
    for r in 0..2 {
        for i in 0..t {
            let real = if r == 0 { i < t - 3 } else { i >= 2 };
            let id = ((r * 37 + i * 11 + 5) % ids_below + 3) as u32;
            ids.push(if real { id } else { 0 });
            mask.push(real as u8);
            labels.push(if !real || (r == 0 && i < 2) {
                -100
            } else {
                id as i64
            });
        }
    }
    let input = DecoderInput::new(ids, 2, t).with_attention_mask(mask);
    (input, labels)
}

/// One row of two packed sequences (7 + 6 tokens) with positions restarting.
fn packed_batch() -> (DecoderInput, Vec<i64>) {
    packed_batch_of(500)
}

/// [`packed_batch`] with ids below `ids + 1`.
fn packed_batch_of(ids_below: u32) -> (DecoderInput, Vec<i64>) {
    let ids: Vec<u32> = (0..13).map(|i| (i * 29 + 3) % ids_below + 1).collect();
    let segments: Vec<u32> = (0..13).map(|i| (i >= 7) as u32).collect();
    let mut labels: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    labels[7] = -100;
    let input = DecoderInput::new(ids, 1, 13).with_segment_ids(segments);
    (input, labels)
}

/// Autodiff's loss and gradients of `loss_sum / norm`.
fn autodiff(
    model: &CausalLm,
    input: &DecoderInput,
    labels: &[i64],
    norm: f64,
) -> (f64, GradientsParams) {
    let sum = model.loss_sum(input, labels).unwrap().sum;
    let loss = sum / norm;
    let value = loss.clone().into_scalar::<f32>() as f64;
    (value, GradientsParams::from_grads(loss.backward(), model))
}

fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

/// Fused and autodiff agree on the loss and on every gradient (relative to the gradient's
/// largest entry), and the fused path covers exactly the parameters autodiff differentiates.
fn assert_same(model: CausalLm, input: &DecoderInput, labels: &[i64], what: &str) {
    let model = model.fork(&default_device().autodiff()).train();
    let norm = 11.0;
    let (want_loss, want) = autodiff(&model, input, labels, norm);
    let fused = model.try_backprop(input, labels, norm, BackpropOptions::default());
    let fused = fused
        .unwrap_or_else(|| panic!("{what}: fused path not taken"))
        .unwrap();
    let loss = fused.loss_sum / norm;
    assert!(
        (loss - want_loss).abs() < 1e-5 * want_loss.abs().max(1.0),
        "{what}: loss {loss} vs {want_loss}"
    );
    let n = fused.grads.len();
    let worst = compare_grads(fused.grads, want, what);
    println!("{what}: loss {loss:.6}, {n} gradients, worst relative difference {worst:.2e}");
}

/// Every gradient of `grads` equals autodiff's `want` within 1e-4 of the gradient's largest
/// entry, and they cover the same parameters; returns the worst relative difference.
fn compare_grads(grads: kiln_cpu::Grads, mut want: GradientsParams, what: &str) -> f32 {
    let n = grads.len();
    assert_eq!(
        n,
        want.len(),
        "{what}: gradients of {n} parameters, autodiff has {}",
        want.len()
    );
    let mut worst = 0f32;
    for (id, shape, got) in grads.into_entries() {
        let want: Vec<f32> = match shape.len() {
            1 => host(want.remove::<1>(id).unwrap().unsqueeze()),
            _ => host(
                want.remove::<2>(id)
                    .unwrap_or_else(|| panic!("{what}: {id} {shape:?}")),
            ),
        };
        assert_eq!(got.len(), want.len(), "{what}: {shape:?}");
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let err = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0f32, f32::max)
            / scale;
        worst = worst.max(err);
        // `KILN_DEBUG` prints every gradient's difference; the assertion holds either way.
        if std::env::var("KILN_DEBUG").is_ok() {
            println!("{what} {shape:?} err {err:.2e} scale {scale:.3e}");
        }
        assert!(
            err < 1e-4,
            "{what}: gradient {shape:?} differs by {err} of its largest entry"
        );
    }
    worst
}

#[test]
fn fused_lora_gradients_equal_autodiff() {
    let _g = serial();
    let (input, labels) = padded_batch();
    for name in ["llama", "qwen2", "mistral"] {
        assert_same(with_lora(load(name), 0.0, false), &input, &labels, name);
    }
    let (input, labels) = packed_batch();
    assert_same(
        with_lora(load("llama"), 0.0, false),
        &input,
        &labels,
        "llama packed",
    );
}

/// The tiny fixtures of the other families, on the padded and the packed batch:
/// - Gemma 2: `(1 + w)` norms, sandwich norms, √d embedding scale, GeGLU, attention logit
///   soft-capping (2.0) and final logit soft-capping (3.0), sliding (window 4) and global layers
///   alternating, `query_pre_attn_scalar` (20, not `head_dim` 24);
/// - Gemma 3: q/k norms, a second RoPE base for sliding layers (linear-scaled global RoPE),
///   final soft-capping (4.0), two sliding layers per global one;
/// - Phi-3: fused `qkv_proj` and `gate_up_proj` with the adapter on the fused modules (as PEFT),
///   partial rotary (half of `head_dim`), a sliding window of 6, a separate head; and LongRoPE
///   (`phi3_longrope`, whose 13 tokens pass its original context of 8, so the long factors and
///   the attention factor apply).
#[test]
fn fused_gemma_and_phi3_gradients_equal_autodiff() {
    let _g = serial();
    for name in ["gemma2", "gemma3", "phi3", "phi3_longrope"] {
        let (input, labels) = padded_batch_of(250);
        assert_same(with_lora(load(name), 0.0, false), &input, &labels, name);
        let (input, labels) = packed_batch_of(250);
        let what = format!("{name} packed");
        assert_same(with_lora(load(name), 0.0, false), &input, &labels, &what);
        let (input, labels) = padded_batch_of(250);
        let model = load(name).set_require_grad(true);
        assert_same(model, &input, &labels, &format!("{name} full"));
    }
}

/// The fixtures' knobs that the test above relies on are on.
#[test]
fn gemma_and_phi3_fixtures_have_their_knobs_on() {
    let g2 = load("gemma2");
    assert_eq!(g2.config.final_softcap, Some(3.0));
    let a = &g2.model.layers[0].self_attn;
    assert_eq!(a.softcap, Some(2.0));
    assert!((a.scale - 20f64.powf(-0.5)).abs() < 1e-9, "{}", a.scale);
    assert!(g2.model.layers[0].pre_feedforward_layernorm.is_some());
    assert!(g2.model.norm.unit_offset());
    assert!(g2.config.embed_scale.is_some());
    let g3 = load("gemma3");
    assert!(g3.model.layers[0].self_attn.q_norm.is_some());
    assert!(g3.rope_local.is_some());
    assert_eq!(g3.config.final_softcap, Some(4.0));
    for g in [&g2, &g3] {
        let kinds = &g.config.layer_attention;
        assert!(
            kinds.contains(&kiln_models::AttentionKind::Full),
            "{kinds:?}"
        );
        assert!(kinds.contains(&kiln_models::AttentionKind::Sliding { window: 4 }));
    }
    let p = load("phi3");
    assert!(matches!(
        p.model.layers[0].self_attn.qkv,
        kiln_models::QkvProj::Fused { .. }
    ));
    assert!(matches!(
        p.model.layers[0].mlp.gate_up,
        kiln_models::GateUpProj::Fused { .. }
    ));
    assert!(p.rope.dim() < p.model.layers[0].self_attn.head_dim);
}

/// A frozen base kept in its storage format (bf16 as the file holds it, tied embedding included;
/// NF4 quantized at load, the embedding dense as bitsandbytes leaves it; Gemma 3 and Phi-3's
/// fused projections too): the fused path's tile-dequantizing products give the loss and
/// adapter gradients burn's autodiff gives on the dequantized weights, and no gradient of a
/// frozen matrix exists.
#[test]
fn fused_lora_on_a_frozen_base_equals_autodiff() {
    let _g = serial();
    let (input, labels) = padded_batch_of(250);
    let nf4 = Quantization::Bnb("nf4".parse().unwrap());
    for (name, q) in [
        ("llama_bf16", Quantization::Stored),
        ("llama", nf4),
        ("qwen2", nf4),
        ("gemma3", nf4),
        ("phi3", nf4),
    ] {
        let model = load_as(name, q);
        let frozen = model.model.layers[0].self_attn.o_proj.weight.as_frozen();
        assert!(frozen.is_some(), "{name}: {q} keeps o_proj frozen");
        assert_eq!(
            model.model.embed_tokens.as_frozen().is_some(),
            q == Quantization::Stored,
            "{name}: {q} table"
        );
        assert_same(
            with_lora(model, 0.0, false),
            &input,
            &labels,
            &format!("{name} {q}"),
        );
    }
}

#[test]
fn fused_full_fine_tuning_gradients_equal_autodiff() {
    let _g = serial();
    let (input, labels) = padded_batch();
    for name in ["llama", "qwen2"] {
        let model = load(name).set_require_grad(true);
        assert_same(model, &input, &labels, &format!("{name} full"));
    }
}

/// Recomputing each layer in the backward pass gives bit-identical results.
#[test]
fn fused_checkpointing_is_bit_identical() {
    let _g = serial();
    for name in ["mistral", "gemma2", "gemma3", "phi3"] {
        checkpointing_is_bit_identical(name);
    }
}

fn checkpointing_is_bit_identical(name: &str) {
    let (input, labels) = padded_batch_of(250);
    let model = with_lora(load(name), 0.0, false)
        .fork(&default_device().autodiff())
        .train();
    let a = model
        .try_backprop(&input, &labels, 5.0, BackpropOptions::default())
        .unwrap()
        .unwrap();
    let b = model
        .try_backprop(
            &input,
            &labels,
            5.0,
            BackpropOptions {
                checkpoint: true,
                ..Default::default()
            },
        )
        .unwrap()
        .unwrap();
    assert_eq!(a.loss_sum, b.loss_sum);
    let mut bg: Vec<_> = b.grads.into_entries().collect();
    for (id, _, g) in a.grads.into_entries() {
        let i = bg.iter().position(|(j, _, _)| *j == id).unwrap();
        assert_eq!(g, bg.swap_remove(i).2);
    }
}

/// Adapter dropout draws the masks burn's `Dropout` draws (same RNG, order and shapes), so
/// with the same seed both paths give the same loss and gradients; with gradient
/// checkpointing the recomputed layers replay the masks of the first forward (on Qwen2's
/// separate projections and Phi-3's fused ones).
#[test]
fn fused_dropout_uses_the_autodiff_masks() {
    let _g = serial();
    for (name, checkpoint) in [("qwen2", false), ("qwen2", true), ("phi3", true)] {
        dropout_matches_autodiff(name, checkpoint);
    }
}

fn dropout_matches_autodiff(name: &str, checkpoint: bool) {
    let (input, labels) = padded_batch_of(250);
    let model = with_lora(load(name), 0.3, false);
    let dev = default_device();
    let model = model.fork(&dev.clone().autodiff()).train();
    let options = BackpropOptions {
        checkpoint,
        ..Default::default()
    };
    dev.seed(11);
    let (want_loss, mut want) = autodiff(&model, &input, &labels, 7.0);
    dev.seed(11);
    let fused = model
        .try_backprop(&input, &labels, 7.0, options)
        .unwrap()
        .unwrap();
    let loss = fused.loss_sum / 7.0;
    assert!(
        (loss - want_loss).abs() < 1e-5 * want_loss,
        "{name} checkpoint {checkpoint}: {loss} vs {want_loss}"
    );
    for (id, shape, got) in fused.grads.into_entries() {
        let want = host(want.remove::<2>(id).unwrap());
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let err = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0f32, f32::max);
        assert!(
            err / scale < 1e-4,
            "{name} checkpoint {checkpoint}: {shape:?}: {}",
            err / scale
        );
    }
    // A different seed draws different masks: the comparison above can fail.
    dev.seed(12);
    let other = model
        .try_backprop(&input, &labels, 7.0, options)
        .unwrap()
        .unwrap();
    assert!((other.loss_sum / 7.0 - want_loss).abs() > 1e-4);
}

/// DoRA adapters (magnitudes moved off the initial norms, so `m / ‖W + sBA‖` is not 1) on
/// the Llama layout, Gemma 3, Phi-3's fused projections, and an NF4-frozen base: the loss,
/// the factors' and the magnitudes' gradients equal autodiff's.
#[test]
fn fused_dora_gradients_equal_autodiff() {
    let _g = serial();
    let (input, labels) = padded_batch_of(250);
    let nf4 = Quantization::Bnb("nf4".parse().unwrap());
    for (name, q) in [
        ("llama", Quantization::F32),
        ("gemma3", Quantization::F32),
        ("phi3", Quantization::F32),
        ("llama", nf4),
    ] {
        let mut model = with_lora(load_as(name, q), 0.0, true);
        let mut i = 0;
        for_each_projection(&mut model, |proj| {
            let mag = proj.adapters[0].magnitude.as_mut().unwrap();
            let v = mag.val();
            let n = v.dims()[0];
            let wobble: Vec<f32> = (0..n)
                .map(|j| 1.0 + 0.3 * ((i + j) % 5) as f32 / 5.0)
                .collect();
            let w = Tensor::<1>::from_data(
                burn::tensor::TensorData::new(wobble, [n]),
                &default_device(),
            );
            *mag = burn::module::Param::from_tensor(v * w).set_require_grad(true);
            i += 1;
        });
        assert_same(model, &input, &labels, &format!("{name} {q} dora"));
    }
}

/// What the fused path does not cover falls back (`None`): DoRA with dropout.
#[test]
fn fused_path_declines_what_it_does_not_cover() {
    let _g = serial();
    let (input, labels) = padded_batch();
    let dev = default_device().autodiff();
    let cases = [("dora, dropout", with_lora(load("llama"), 0.1, true), false)];
    for (what, model, checkpoint) in cases {
        let model = model.fork(&dev).train();
        let options = BackpropOptions {
            checkpoint,
            ..Default::default()
        };
        let out = model.try_backprop(&input, &labels, 1.0, options);
        assert!(out.is_none(), "{what}");
    }
}

/// Bad labels are a typed error, not a panic.
#[test]
fn fused_path_rejects_labels_outside_the_vocabulary() {
    let _g = serial();
    let (input, mut labels) = padded_batch();
    labels[5] = 100_000;
    let model = with_lora(load("llama"), 0.0, false)
        .fork(&default_device().autodiff())
        .train();
    let err = model
        .try_backprop(&input, &labels, 1.0, BackpropOptions::default())
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("100000"), "{err}");
}

/// A NaN weight makes the loss NaN, as in the tensor path (NaN scores are not mistaken for
/// rows that see no key), so the trainer's non-finite policy sees it.
#[test]
fn fused_loss_propagates_nan() {
    let _g = serial();
    let (input, labels) = padded_batch();
    let mut model = with_lora(load("llama"), 0.0, false);
    let q = model.model.layers[0]
        .self_attn
        .qkv
        .get_mut("q_proj")
        .unwrap();
    let a = &mut q.adapters[0].lora_a;
    let mut values: Vec<f32> = a.val().into_data().try_into_vec().unwrap();
    values[0] = f32::NAN;
    let shape = a.val().dims();
    *a = burn::module::Param::from_tensor(Tensor::from_data(
        burn::tensor::TensorData::new(values, shape),
        &default_device(),
    ));
    let model = model.fork(&default_device().autodiff()).train();
    let out = model
        .try_backprop(&input, &labels, 1.0, BackpropOptions::default())
        .unwrap()
        .unwrap();
    assert!(out.loss_sum.is_nan(), "{}", out.loss_sum);
}

/// The tiny Llama fixture's batch (`expected.safetensors`, from transformers) with its
/// normaliser (the counted labels, as transformers' mean).
fn fixture_batch() -> (DecoderInput, Vec<i64>, f64) {
    let reference = common::Reference::open(
        fixtures()
            .join("tiny")
            .join("llama")
            .join("expected.safetensors"),
    );
    let [b, t] = <[usize; 2]>::try_from(reference.shape("input_ids")).unwrap();
    let ids = reference.i64("input_ids").into_iter().map(|i| i as u32);
    let mask = reference.i64("attention_mask").into_iter().map(|m| m as u8);
    let input = DecoderInput::new(ids.collect(), b, t)
        .with_attention_mask(mask.collect())
        .with_position_ids(reference.i64("position_ids"));
    let labels = reference.i64("labels");
    let counted = (0..b)
        .flat_map(|r| (1..t).map(move |i| r * t + i))
        .filter(|&k| labels[k] != kiln_models::IGNORE_INDEX)
        .count();
    (input, labels, counted as f64)
}

/// The tiny Llama with every parameter training, on the autodiff device the trainer uses.
fn full_model() -> CausalLm {
    full("llama")
}

/// Fixture `name` with every parameter training, on the autodiff device.
fn full(name: &str) -> CausalLm {
    load(name)
        .set_require_grad(true)
        .fork(&default_device().autodiff())
        .train()
}

type ByParam = std::collections::HashMap<burn::module::ParamId, Vec<f32>>;

/// Loss and global gradient norm of one full fine-tuning step on the fixture batch.
fn full_step(model: &CausalLm, options: BackpropOptions) -> (f64, f64, ByParam) {
    let (input, labels, norm) = fixture_batch();
    step_on(model, &input, &labels, norm, options)
}

/// Loss and global gradient norm of one step on a batch.
fn step_on(
    model: &CausalLm,
    input: &DecoderInput,
    labels: &[i64],
    norm: f64,
    options: BackpropOptions,
) -> (f64, f64, ByParam) {
    let out = model
        .try_backprop(input, labels, norm, options)
        .unwrap()
        .unwrap();
    let grads: ByParam = out.grads.into_entries().map(|(id, _, g)| (id, g)).collect();
    let sq: f64 = grads.values().flatten().map(|&g| (g as f64).powi(2)).sum();
    (out.loss_sum / norm, sq.sqrt(), grads)
}

fn autocast_reference(key: &str) -> f64 {
    let path = fixtures().join("tiny/llama/bf16_autocast.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    json[key].as_f64().unwrap()
}

/// The tiny Llama with PEFT's adapter (`peft/lora`) training on the frozen base.
fn peft_lora_model() -> CausalLm {
    let mut m = kiln_lora::LoraModel::new(load("llama"));
    let dir = fixtures()
        .join("tiny")
        .join("llama")
        .join("peft")
        .join("lora");
    m.load_adapter(&dir, "default").unwrap();
    m.model.fork(&default_device().autodiff()).train()
}

/// One step of `model` in f32 and in bf16 against PyTorch's f32 and
/// `torch.autocast("cpu", dtype=torch.bfloat16)` numbers under `prefix` in
/// `bf16_autocast.json` (`tools/fixtures/bf16_autocast.py`).
fn check_autocast(model: &CausalLm, prefix: &str) {
    let bf16 = BackpropOptions {
        precision: Precision::Bf16,
        ..Default::default()
    };
    let (loss32, norm32, _) = full_step(model, BackpropOptions::default());
    let (loss16, norm16, _) = full_step(model, bf16);
    let want = |key: &str| autocast_reference(&format!("{prefix}{key}"));
    let (want_loss32, want_norm32) = (want("loss_f32"), want("grad_norm_f32"));
    let (want_loss16, want_norm16) = (want("loss_bf16_autocast"), want("grad_norm_bf16_autocast"));
    println!("{prefix}: f32 {loss32} {norm32}; bf16 {loss16} {norm16}");
    // |got - want| < tol, named in the failure.
    let close = |what: &str, got: f64, want: f64, tol: f64| {
        assert!(
            (got - want).abs() < tol,
            "{prefix}{what}: {got} vs PyTorch's {want} (tolerance {tol})"
        )
    };
    close("f32 loss", loss32, want_loss32, 1e-5);
    close("f32 grad norm", norm32, want_norm32, 1e-4 * want_norm32);
    // bf16 rounding moves PyTorch's loss by ~5e-4..1e-3 from f32's here. kiln rounds the
    // forward where autocast does and lands on PyTorch's bf16 loss; the backward rounds the
    // products' gradients too, but the rounding points of PyTorch's backward kernels differ
    // in places (GQA head sums, RoPE), so the gradient norm agrees to 3e-4 relative.
    let gap = (want_loss16 - want_loss32).abs();
    assert!(
        gap > 1e-4,
        "{prefix}: the fixture's bf16 and f32 losses are {gap} apart"
    );
    close("bf16 loss", loss16, want_loss16, 2e-6);
    close("bf16 grad norm", norm16, want_norm16, 3e-4 * want_norm16);
    assert!(
        (norm16 - norm32).abs() > 1e-4 * norm32,
        "{prefix}: bf16 gradients are f32's"
    );
}

/// bf16 mixed precision gives PyTorch's autocast loss and gradient norm, for full fine-tuning
/// and for PEFT's LoRA adapter, while f32 gives PyTorch's f32 numbers.
#[test]
fn fused_bf16_matches_torch_autocast() {
    let _g = serial();
    check_autocast(&full_model(), "");
    check_autocast(&peft_lora_model(), "lora_");
}

/// In bf16, recomputing each layer in the backward pass still gives bit-identical results,
/// with a tied head (Llama) and a separate one (Qwen2, q/k/v biases), and on the Gemma 2,
/// Gemma 3 and Phi-3 layouts; and bf16 is not f32.
#[test]
fn fused_bf16_checkpointing_is_bit_identical() {
    let _g = serial();
    let options = |checkpoint| BackpropOptions {
        checkpoint,
        precision: Precision::Bf16,
    };
    let (input, labels) = padded_batch_of(250);
    for name in ["llama", "qwen2", "gemma2", "gemma3", "phi3"] {
        let model = full(name);
        let step = |o| step_on(&model, &input, &labels, 11.0, o);
        let (loss_a, _, a) = step(options(false));
        let (loss_b, _, b) = step(options(true));
        assert_eq!(loss_a, loss_b, "{name}");
        assert!(a == b, "{name}: gradients differ");
        let (loss32, _, _) = step(BackpropOptions::default());
        let gap = (loss_a - loss32).abs();
        assert!(
            gap > 1e-6 && gap < 1e-2 * loss32,
            "{name}: bf16 {loss_a}, f32 {loss32}"
        );
    }
}

/// The per-sequence log-probability sums of `labels` by autodiff, and the loss
/// `L = Σ_r c_r · s_r + k · (s_0 - s_1)²` on them (a non-linear loss with per-sequence
/// weights, the shape of DPO's): with `s_r = Σ_i logp_{r,i}`.
fn logp_loss_autodiff(
    model: &CausalLm,
    input: &DecoderInput,
    labels: &[i64],
    c: [f32; 2],
    k: f32,
) -> (f64, GradientsParams) {
    let logits = model.forward(input).unwrap();
    let [b, t, v] = logits.dims();
    let lsm = burn::tensor::activation::log_softmax(logits, 2);
    let dev = lsm.device();
    let mut s = Vec::new();
    for r in 0..b {
        let mut onehot = vec![0f32; b * t * v];
        for i in 1..t {
            let l = labels[r * t + i];
            if l >= 0 {
                onehot[(r * t + i - 1) * v + l as usize] = 1.0;
            }
        }
        let oh = Tensor::<3>::from_data(burn::tensor::TensorData::new(onehot, [b, t, v]), &dev);
        s.push((lsm.clone() * oh).sum());
    }
    let diff = s[0].clone() - s[1].clone();
    let loss = s[0].clone() * c[0] + s[1].clone() * c[1] + diff.clone() * diff * k;
    let value = loss.clone().into_scalar::<f32>() as f64;
    (value, GradientsParams::from_grads(loss.backward(), model))
}

/// `try_backprop_logp` with a non-trivial loss of the log-probabilities equals autodiff on
/// the loss and every gradient (LoRA on Llama with a tied head, Qwen2 with a separate head,
/// Gemma 2 with final soft-capping; and full fine-tuning of Llama), and its log-probabilities
/// sum to minus the NLL path's loss.
#[test]
fn fused_logp_loss_equals_autodiff() {
    let _g = serial();
    let (c, k) = ([-0.7f32, 0.4], 0.05f32);
    let cases = [
        ("llama", with_lora(load("llama"), 0.0, false), 500),
        ("qwen2", with_lora(load("qwen2"), 0.0, false), 500),
        ("gemma2", with_lora(load("gemma2"), 0.0, false), 250),
        ("llama full", load("llama").set_require_grad(true), 500),
    ];
    for (what, model, ids) in cases {
        let (input, labels) = padded_batch_of(ids);
        let model = model.fork(&default_device().autodiff()).train();
        let (want_loss, want) = logp_loss_autodiff(&model, &input, &labels, c, k);
        // The row of each counted label, in the order the closure receives them.
        let t = input.seq_len;
        let rows: Vec<usize> = (0..labels.len())
            .filter(|&j| j % t != 0 && labels[j] != -100)
            .map(|j| j / t)
            .collect();
        let loss = |logps: &[f32]| {
            let mut s = [0f64; 2];
            for (&lp, &r) in logps.iter().zip(&rows) {
                s[r] += lp as f64;
            }
            let diff = s[0] - s[1];
            let value = c[0] as f64 * s[0] + c[1] as f64 * s[1] + k as f64 * diff * diff;
            let g = rows
                .iter()
                .map(|&r| {
                    let sign = if r == 0 { 1.0 } else { -1.0 };
                    (c[r] as f64 + 2.0 * k as f64 * diff * sign) as f32
                })
                .collect();
            (value, g)
        };
        let fused = model
            .try_backprop_logp(&input, &labels, loss, BackpropOptions::default())
            .unwrap()
            .unwrap();
        assert!(
            (fused.loss - want_loss).abs() < 1e-5 * want_loss.abs().max(1.0),
            "{what}: loss {} vs {want_loss}",
            fused.loss
        );
        let nll = model
            .try_backprop(&input, &labels, 1.0, BackpropOptions::default())
            .unwrap()
            .unwrap()
            .loss_sum;
        let sum: f64 = fused.logps.iter().map(|&l| l as f64).sum();
        assert!(
            (sum + nll).abs() < 1e-4,
            "{what}: Σ logp {sum} vs NLL {nll}"
        );
        let only = model
            .try_logps(&input, &labels, Precision::F32)
            .unwrap()
            .unwrap();
        assert_eq!(only, fused.logps, "{what}: forward-only log-probabilities");
        let n = fused.grads.len();
        let worst = compare_grads(fused.grads, want, what);
        println!(
            "{what}: loss {want_loss:.6}, {n} gradients, worst relative difference {worst:.2e}"
        );
    }
}

/// A loss that returns a derivative per label of another length is an error, not a panic.
#[test]
fn fused_logp_loss_checks_its_derivatives() {
    let _g = serial();
    let (input, labels) = padded_batch();
    let model = with_lora(load("llama"), 0.0, false)
        .fork(&default_device().autodiff())
        .train();
    let out = model
        .try_backprop_logp(
            &input,
            &labels,
            |_| (0.0, vec![1.0]),
            BackpropOptions::default(),
        )
        .unwrap();
    let err = out.unwrap_err().to_string();
    assert!(err.contains("1 gradients for"), "{err}");
}

/// Log-softmax of `logits` at `target`, in f64.
fn log_prob(logits: &[f32], target: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&z| (z as f64 - max).exp()).sum();
    (logits[target] as f64 - max - sum.ln()) as f32
}

/// Index of the largest logit.
fn argmax(logits: &[f32]) -> usize {
    (0..logits.len())
        .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
        .unwrap()
}

/// Decodes `steps` tokens greedily from a left-padded batch of prompts on the burn path with a
/// KV cache (prefill, then one token per row and step); returns each row's tokens and their
/// log-probabilities.
fn decode_cached(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    mask: &[Vec<u8>],
    steps: usize,
) -> (Vec<Vec<u32>>, Vec<Vec<f32>>) {
    let (b, t0, v) = (prompts.len(), prompts[0].len(), model.config.vocab_size);
    let mut cache = kiln_models::KvCache::default();
    let mut input = DecoderInput::new(prompts.concat(), b, t0).with_attention_mask(mask.concat());
    let (mut tokens, mut logps) = (vec![Vec::new(); b], vec![Vec::new(); b]);
    for _ in 0..steps {
        let t = input.seq_len;
        let hidden = model.forward_hidden(&input, Some(&mut cache)).unwrap();
        let logits: Vec<f32> = model.logits(hidden).into_data().try_into_vec().unwrap();
        let mut next = Vec::new();
        for r in 0..b {
            let last = &logits[(r * t + t - 1) * v..][..v];
            let id = argmax(last);
            tokens[r].push(id as u32);
            logps[r].push(log_prob(last, id));
            next.push(id as u32);
        }
        input = DecoderInput::new(next, b, 1);
    }
    assert_eq!(cache.len(), t0 + steps - 1);
    (tokens, logps)
}

/// The fused host path's log-probabilities of `tokens` after the left-padded prompts, over the
/// whole sequence at once (row-major).
fn host_logps(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    mask: &[Vec<u8>],
    tokens: &[Vec<u32>],
) -> Vec<f32> {
    let (b, t0, n) = (prompts.len(), prompts[0].len(), tokens[0].len());
    let (mut ids, mut full_mask, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..b {
        ids.extend(prompts[r].iter().chain(&tokens[r]));
        full_mask.extend(mask[r].iter().copied().chain(std::iter::repeat_n(1, n)));
        labels.extend(std::iter::repeat_n(-100, t0).chain(tokens[r].iter().map(|&i| i as i64)));
    }
    let input = DecoderInput::new(ids, b, t0 + n).with_attention_mask(full_mask);
    model
        .try_logps(&input, &labels, Precision::F32)
        .unwrap()
        .unwrap()
}

/// One input preparation for both compute paths (positions, key padding, masks and rotary
/// tables come from `Prepared`, the cache's bookkeeping from `KvCache`): transformers'
/// left-padded batch (`tiny/llama/generate.json`) decoded on the burn path with a KV cache picks
/// transformers' greedy tokens, and the fused host path over the whole padded sequence gives
/// every one of those tokens the log-probability the cached step gave it. The same agreement
/// holds for a sliding window shorter than the decoded length (Mistral), Gemma 3's local RoPE
/// and sliding layers, and Phi-3's fused projections and partial rotary.
#[test]
fn cached_burn_path_and_host_path_agree_on_a_padded_batch() {
    let dir = fixtures().join("tiny/llama");
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("generate.json")).unwrap()).unwrap();
    let batch = &g["batch"];
    let rows = |key: &str| -> Vec<Vec<u32>> {
        serde_json::from_value::<Vec<Vec<u32>>>(batch[key].clone()).unwrap()
    };
    let prompts = rows("input_ids");
    let mask: Vec<Vec<u8>> = rows("attention_mask")
        .into_iter()
        .map(|r| r.into_iter().map(|m| m as u8).collect())
        .collect();
    let want = rows("greedy_new_ids");
    let model = load("llama");
    let (tokens, cached) = decode_cached(&model, &prompts, &mask, want[0].len());
    assert_eq!(tokens, want, "transformers' greedy tokens");
    let host = host_logps(&model, &prompts, &mask, &tokens);
    let worst = common::max_abs_diff(&host, &cached.concat());
    assert!(
        worst <= 1e-4,
        "llama: host vs cached log-probabilities {worst}"
    );

    // The other families' fixtures have 256 tokens: the same layout of prompts, smaller ids.
    let small: Vec<Vec<u32>> = prompts
        .iter()
        .map(|r| {
            r.iter()
                .map(|&i| if i == 0 { 0 } else { i % 250 + 3 })
                .collect()
        })
        .collect();
    for name in ["mistral", "gemma3", "phi3"] {
        let model = load(name);
        let (tokens, cached) = decode_cached(&model, &small, &mask, 8);
        let host = host_logps(&model, &small, &mask, &tokens);
        let worst = common::max_abs_diff(&host, &cached.concat());
        assert!(
            worst <= 1e-4,
            "{name}: host vs cached log-probabilities {worst}"
        );
    }
}

/// `rope_per_row` reaches both paths: with LongRoPE (original context 8) a batch of a short
/// row and a long one gives the short row the short frequencies on each path, and the two
/// paths' log-probabilities agree (the fused path used to build its tables for the whole batch).
#[test]
fn both_paths_choose_longrope_frequencies_per_row() {
    let model = load("phi3_longrope");
    let v = model.config.vocab_size;
    let t = 12;
    let ids: Vec<u32> = (0..2 * t).map(|i| (i * 7 % 250 + 3) as u32).collect();
    // Row 0: 6 real tokens after 6 padding (positions 0..5); row 1: 12 real tokens.
    let mask: Vec<u8> = (0..2 * t).map(|i| (i >= 6) as u8).collect();
    let labels: Vec<i64> = (0..2 * t)
        .map(|i| {
            if mask[i] == 1 && i % t > 6 {
                ids[i] as i64
            } else {
                -100
            }
        })
        .collect();
    let input = DecoderInput::new(ids.clone(), 2, t)
        .with_attention_mask(mask)
        .with_rope_per_row();
    let logits: Vec<f32> = model
        .forward(&input)
        .unwrap()
        .into_data()
        .try_into_vec()
        .unwrap();
    let want: Vec<f32> = (0..2 * t)
        .filter(|&i| labels[i] != -100)
        .map(|i| log_prob(&logits[(i - 1) * v..][..v], labels[i] as usize))
        .collect();
    let host = model
        .try_logps(&input, &labels, Precision::F32)
        .unwrap()
        .unwrap();
    let worst = common::max_abs_diff(&host, &want);
    assert!(worst <= 1e-4, "host vs burn log-probabilities {worst}");
    // Per row differs from one table for the batch: the short row sees other frequencies.
    let batch_wide = model
        .try_logps(
            &DecoderInput {
                rope_per_row: false,
                ..input
            },
            &labels,
            Precision::F32,
        )
        .unwrap()
        .unwrap();
    assert!(common::max_abs_diff(&host[..5], &batch_wide[..5]) > 1e-4);
}
