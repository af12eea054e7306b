//! Quick timing of one adapted projection (576 -> 1536, r = 16, batch 4 x 256), forward +
//! backward on the CPU, without criterion: kiln `LoraLinear`, burn `apply_lora`, full fine-tuning.
//! The criterion version is `benches/lora_layer.rs`; this one runs in the dev profile
//! (dependencies at opt-level 3) for a fast side-by-side number.
//!
//! Run: `cargo run -p kiln-lora --example layer_timing`
use std::time::Instant;

use burn::module::{Lora, Module};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Distribution, Tensor};
use kiln_lora::{AdapterSpec, InitLoraWeights, LoraLinear};

const SHAPE: [usize; 3] = [4, 256, 576];

fn time(name: &str, xs: &[Tensor<3>], mut step: impl FnMut(Tensor<3>)) {
    step(xs[0].clone()); // warm-up
    let mut ms: Vec<f64> = (0..10)
        .map(|i| {
            let t = Instant::now();
            step(xs[i % xs.len()].clone());
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    println!("{name:<24} median {:>8.2} ms  (min {:.2})", ms[5], ms[0]);
}

fn main() {
    let device = Device::default().autodiff();
    let xs: Vec<Tensor<3>> = (0..4)
        .map(|_| Tensor::random(SHAPE, Distribution::Normal(0.0, 1.0), &device))
        .collect();
    let mut kiln = LoraLinear::new(
        Tensor::random([576, 1536], Distribution::Normal(0.0, 0.02), &device),
        None,
    );
    let spec = AdapterSpec {
        r: 16,
        alpha: 32.0,
        scale: 2.0,
        dropout: 0.0,
        init: InitLoraWeights::Random,
        use_dora: false,
    };
    kiln.add_adapter("default", &spec).expect("adapter");
    kiln.set_active(&["default".to_string()]);
    time("kiln LoraLinear", &xs, |x| {
        let grads = kiln.forward(x).sum().backward();
        let a = kiln.adapter("default").expect("adapter");
        a.lora_a.grad(&grads).expect("grad").into_data();
    });
    let burn_lora: Linear = LinearConfig::new(576, 1536)
        .with_bias(false)
        .init(&device)
        .apply_lora(Lora::new(16, 32.0));
    time("burn apply_lora", &xs, |x| {
        let grads = burn_lora.forward(x).sum().backward();
        let a = burn_lora.weight.adapter().expect("adapter");
        a.a.grad(&grads).expect("grad").into_data();
    });
    let full: Linear = LinearConfig::new(576, 1536).with_bias(false).init(&device);
    time("full fine-tuning", &xs, |x| {
        let grads = full.forward(x).sum().backward();
        full.weight.grad(&grads).expect("grad").into_data();
    });
}
