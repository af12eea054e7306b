//! burn's tensor path on a frozen base kept in its storage format: the frozen product is one
//! autodiff operation (`frozen_op.rs`) whose gradients must equal burn's autodiff through a
//! dense layer holding the same dequantized weight.
#![allow(clippy::unwrap_used)]
use burn::tensor::{Device, Tensor, TensorData};
use kiln_cpu::quant::bnb::QuantizeOnLoad;
use kiln_cpu::{Bytes, QMatrix, QuantType};
use kiln_lora::adapter::dora_weight_norm;
use kiln_lora::{LoraAdapter, LoraLinear};

use crate::fake::{host, tensor};

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

const IN: usize = 256;
const OUT: usize = 48;

/// `[OUT, IN]` (PyTorch layout) quantized as `ty`.
fn quantized(ty: QuantType) -> QMatrix {
    let w = crate::fake::values(OUT * IN, 11);
    match ty {
        QuantType::Nf4 => QuantizeOnLoad::Nf4.quantize(&w, OUT, IN).unwrap(),
        QuantType::Fp4 => QuantizeOnLoad::Fp4.quantize(&w, OUT, IN).unwrap(),
        QuantType::Int8 => QuantizeOnLoad::Int8.quantize(&w, OUT, IN).unwrap(),
        ty => {
            let bytes = kiln_cpu::quant::quantize(ty, &w, IN, "w").unwrap();
            QMatrix::new(ty, OUT, IN, Bytes::Owned(bytes.into())).unwrap()
        }
    }
}

/// The same layer twice: the frozen matrix as stored, and a dense `[in, out]` copy of its
/// dequantized values; both carry the same adapter (LoRA, or DoRA with its magnitude).
fn twins(q: QMatrix, dora: bool, dropout: f64, device: &Device) -> (LoraLinear, LoraLinear) {
    let dense_w = Tensor::<2>::from_data(TensorData::new(q.to_f32(), [OUT, IN]), device);
    let bias = tensor([OUT], 3, device);
    let dense = LoraLinear::new(dense_w.clone().transpose(), Some(bias.clone()));
    let frozen = LoraLinear::frozen(q, Some(bias), device);
    let (a, b) = (tensor([IN, 4], 5, device), tensor([4, OUT], 6, device));
    let scale = 8.0 / 2.0; // rsLoRA's alpha / √r for alpha 8, r 4
    let mag = dora.then(|| {
        let norm = dora_weight_norm(&dense_w.transpose(), &a, &b, scale);
        norm * (tensor([OUT], 7, device).mul_scalar(0.2) + 1.0)
    });
    let adapter = |l: &mut LoraLinear| {
        let fresh = LoraAdapter::from_factors(
            "default",
            a.clone(),
            b.clone(),
            mag.clone(),
            8.0,
            scale,
            dropout,
        );
        l.insert_adapter(fresh, "w").unwrap();
        l.set_active(&["default".into()]);
    };
    let (mut dense, mut frozen) = (dense, frozen);
    adapter(&mut dense);
    adapter(&mut frozen);
    assert!(frozen.weight.as_frozen().is_some(), "kept as stored");
    (dense, frozen)
}

/// Output and gradients (of x, A, B and the magnitude) of `Σ y ⊙ r` for a fixed `r`.
fn run(l: &LoraLinear, device: &Device, seed: u64) -> Vec<(String, Vec<f32>)> {
    let x = tensor([2, 5, IN], 9, device).require_grad();
    let r = tensor([2, 5, OUT], 10, device);
    device.seed(seed);
    let y = l.forward(x.clone());
    let grads = (y.clone() * r).sum().backward();
    let a = &l.adapters[0];
    let mut out = vec![
        ("y".to_string(), host(y.inner())),
        ("dx".to_string(), host(x.grad(&grads).unwrap())),
        ("dA".to_string(), host(a.lora_a.val().grad(&grads).unwrap())),
        ("dB".to_string(), host(a.lora_b.val().grad(&grads).unwrap())),
    ];
    if let Some(m) = &a.magnitude {
        out.push(("dm".to_string(), host(m.val().grad(&grads).unwrap())));
    }
    out
}

/// The backends the frozen operation is checked on: burn's ndarray backend, and with the `wgpu`
/// feature the wgpu device too (f32: lavapipe's bf16 is known to be wrong). burn's default
/// device is wgpu once that feature is on, so the CPU device is named explicitly.
fn devices() -> Vec<Device> {
    // `mut` is unused without the `wgpu` feature.
    #[allow(deprecated, unused_mut)]
    let mut devices = vec![Device::ndarray()];
    #[cfg(feature = "wgpu")]
    devices.push(Device::wgpu(Default::default()));
    devices
}

/// The frozen operation's output and gradients equal burn's autodiff on the dequantized
/// weight, for ggml and bitsandbytes formats, LoRA and DoRA, with and without gradient
/// checkpointing, on each backend of [`devices`].
#[test]
fn frozen_gradients_equal_autodiff_on_the_dequantized_weight() {
    for device in devices().into_iter().flat_map(|d| {
        let d = d.autodiff();
        [d.clone(), d.gradient_checkpointing()]
    }) {
        for ty in [
            QuantType::Q4_0,
            QuantType::Q8_0,
            QuantType::Q4_K,
            QuantType::Q6_K,
            QuantType::Nf4,
            QuantType::Fp4,
            QuantType::Int8,
        ] {
            // Dropout's masks come from burn's global RNG, which other tests of this binary
            // draw from concurrently: the trainer-level test (`kiln-train`, `frozen_base.rs`)
            // covers DoRA with dropout.
            for (dora, dropout) in [(false, 0.0), (true, 0.0)] {
                let (dense, frozen) = twins(quantized(ty), dora, dropout, &device);
                let want = run(&dense, &device, 3);
                let got = run(&frozen, &device, 3);
                assert_eq!(want.len(), got.len());
                for ((name, w), (_, g)) in want.iter().zip(&got) {
                    let scale = w.iter().fold(1f32, |m, v| m.max(v.abs()));
                    let diff = max_abs_diff(w, g);
                    assert!(
                        diff <= 2e-5 * scale,
                        "{device:?} {ty:?} dora {dora} dropout {dropout} {name}: max |diff| {diff} (scale {scale})"
                    );
                }
            }
        }
    }
}

/// A frozen layer on an autodiff device with no tracked input gives burn's product and
/// records nothing to differentiate (evaluation under a training device).
#[test]
fn frozen_untracked_input_is_a_plain_product() {
    for device in devices() {
        let device = device.autodiff();
        let (dense, frozen) = twins(quantized(QuantType::Q4_0), false, 0.0, &device);
        let x = tensor([3, IN], 9, &device);
        let (want, got) = (host(dense.forward(x.clone())), host(frozen.forward(x)));
        assert!(max_abs_diff(&want, &got) < 1e-4, "{device:?}");
    }
}

/// Bytes the wgpu device's allocator holds in live allocations (padding excluded).
#[cfg(feature = "wgpu")]
fn bytes_in_use(device: &Device) -> u64 {
    device.memory_pool_usage().unwrap().bytes_in_use
}

/// The memory property on wgpu: a stack of frozen layers run forward under autodiff keeps no
/// dense f32 copy of any layer's weight until the backward, only what the backward reads (the
/// activations). Measured by the device allocator's live bytes after the forward; the same
/// stack written with burn's product by the dequantized weight (what the operation replaces,
/// and its fallback on a backend it does not know) keeps every layer's weight, and the test
/// checks that it does, so a dispatch that silently fell back would fail it.
#[cfg(feature = "wgpu")]
#[test]
fn frozen_layers_keep_no_dense_weight_on_wgpu() {
    const LAYERS: usize = 6;
    const DIM: usize = 512;
    const ROWS: usize = 4;
    let device = Device::wgpu(Default::default()).autodiff();
    let weight_bytes = (DIM * DIM * 4) as u64; // 1 MiB in f32
    let matrices: Vec<QMatrix> = (0..LAYERS)
        .map(|i| {
            let w = crate::fake::values(DIM * DIM, 20 + i);
            QuantizeOnLoad::Nf4.quantize(&w, DIM, DIM).unwrap()
        })
        .collect();
    // Forward through every layer; returns the live bytes the graph added, and dx.
    let forward = |layer: &dyn Fn(usize, Tensor<2>) -> Tensor<2>| {
        let x = tensor([ROWS, DIM], 9, &device).require_grad();
        let before = bytes_in_use(&device);
        let h = (0..LAYERS).fold(x.clone(), |h, i| layer(i, h));
        h.clone().sum().into_scalar::<f32>(); // runs the queued kernels
        let held = bytes_in_use(&device).saturating_sub(before);
        let grads = h.sum().backward();
        (held, host(x.grad(&grads).unwrap()))
    };
    let layers: Vec<LoraLinear> = matrices
        .iter()
        .map(|q| LoraLinear::frozen(q.clone(), None, &device))
        .collect();
    let (frozen_held, frozen_dx) = forward(&|i, h| layers[i].forward(h));
    let (dense_held, dense_dx) = forward(&|i, h| {
        let w = matrices[i].to_f32();
        let w = Tensor::<2>::from_data(TensorData::new(w, [DIM, DIM]), &device);
        h.matmul(w.transpose())
    });
    println!("live bytes after the forward: frozen {frozen_held}, burn's product {dense_held}");
    let scale = dense_dx.iter().fold(1f32, |m, v| m.max(v.abs()));
    let diff = max_abs_diff(&frozen_dx, &dense_dx);
    assert!(
        diff <= 2e-5 * scale,
        "dx: max |diff| {diff} (scale {scale})"
    );
    assert!(
        dense_held >= LAYERS as u64 * weight_bytes,
        "burn's product keeps every weight: {dense_held} bytes held"
    );
    assert!(
        frozen_held < weight_bytes,
        "the frozen layers hold {frozen_held} bytes after the forward (one weight: {weight_bytes})"
    );
}
