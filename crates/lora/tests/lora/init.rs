//! Initial adapter values are drawn on the host: one seed gives one adapter, whatever the
//! device's own generator says (issue #23: the same seed gave different adapters on wgpu and
//! on the CPU), with PEFT's distributions.
use burn::tensor::Device;
use kiln_lora::{AdapterSpec, InitLoraWeights, LoraLinear, manual_seed};

use crate::fake::{host, tensor};

fn spec(init: InitLoraWeights) -> AdapterSpec {
    AdapterSpec {
        r: 8,
        alpha: 16.0,
        scale: 2.0,
        dropout: 0.0,
        init,
        use_dora: false,
    }
}

/// `(A, B)` of a fresh adapter on a `[64, 32]` layer at `path`, after `device.seed(device_seed)`.
fn factors(seed: u64, device_seed: u64, init: InitLoraWeights, path: &str) -> (Vec<f32>, Vec<f32>) {
    let device = Device::default();
    device.seed(device_seed);
    manual_seed(seed);
    let mut layer = LoraLinear::new(tensor([64, 32], 1, &device), None);
    layer.add_adapter_at("default", &spec(init), path).unwrap();
    let a = layer.adapter("default").unwrap();
    (host(a.lora_a.val()), host(a.lora_b.val()))
}

#[test]
fn the_seed_alone_decides_the_adapter() {
    let p = "model.layers.0.self_attn.q_proj";
    let (a, b) = factors(7, 1, InitLoraWeights::Kaiming, p);
    assert_eq!(
        factors(7, 2, InitLoraWeights::Kaiming, p),
        (a.clone(), b.clone()),
        "device seed"
    );
    assert_ne!(
        factors(8, 1, InitLoraWeights::Kaiming, p).0,
        a,
        "another seed"
    );
    let other = factors(
        7,
        1,
        InitLoraWeights::Kaiming,
        "model.layers.1.self_attn.q_proj",
    );
    assert_ne!(other.0, a, "each layer draws its own values");
    // PEFT's kaiming_uniform_(a=√5) on lora_A: U(-1/√in, 1/√in), B zeros.
    let bound = 1.0 / 64f32.sqrt();
    assert!(a.iter().all(|v| v.abs() <= bound), "bound");
    let mean = a.iter().sum::<f32>() / a.len() as f32;
    let var = a.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / a.len() as f32;
    assert!(mean.abs() < 0.1 * bound, "mean {mean}");
    assert!(
        (var / (bound * bound / 3.0) - 1.0).abs() < 0.15,
        "variance {var}"
    );
    assert!(b.iter().all(|&v| v == 0.0));
    // Gaussian: N(0, (1/r)²).
    let (g, _) = factors(7, 1, InitLoraWeights::Gaussian, p);
    let std = (g.iter().map(|v| v * v).sum::<f32>() / g.len() as f32).sqrt();
    assert!((std * 8.0 - 1.0).abs() < 0.1, "std {std}");
}
