//! Forward + backward of one adapted projection (576 -> 1536, r = 16, batch 4 x 256) on the CPU:
//! kiln's `LoraLinear` under burn's autodiff (two thin GEMMs, no delta), the same layer through
//! kiln's fused CPU backward (`kiln_lora::backprop::HostLinear`), burn's `Module::apply_lora` on a burn `Linear`
//! (reparameterised weight `W + s·A B`, built every forward), and full fine-tuning of the plain
//! layer (gradient of the `[in, out]` weight).
//!
//! A second group times the inference product by a frozen weight (no autodiff): burn's `linear`
//! against `kiln_lora::kernels::linear` (the `gemm` crate), for one row (decoding), 256 rows
//! (a prompt) and a tied `lm_head` read through a transposed view of the embedding.
//!
//! Run: `cargo bench --bench lora_layer` (add `--features openblas` for BLAS GEMMs).
use burn::module::{Lora, Module};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Distribution, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use kiln_lora::{AdapterSpec, InitLoraWeights, LoraLinear};

const D_IN: usize = 576;
const D_OUT: usize = 1536;
const R: usize = 16;
const SHAPE: [usize; 3] = [4, 256, D_IN];

/// Inputs that require a gradient, as a layer's input inside a model does (the backward pass
/// then computes `dx` too, which the fused path always does).
fn inputs(device: &Device) -> Vec<Tensor<3>> {
    (0..4)
        .map(|_| Tensor::random(SHAPE, Distribution::Normal(0.0, 1.0), device).require_grad())
        .collect()
}

fn bench(c: &mut Criterion) {
    let device = Device::default().autodiff();
    let xs = inputs(&device);
    let mut g = c.benchmark_group("lora_layer_576x1536_r16_4x256");
    g.sample_size(20);

    let mut kiln = LoraLinear::new(
        Tensor::random([D_IN, D_OUT], Distribution::Normal(0.0, 0.02), &device),
        None,
    );
    let spec = AdapterSpec {
        r: R,
        alpha: 32.0,
        scale: 2.0,
        dropout: 0.0,
        init: InitLoraWeights::Random,
        use_dora: false,
    };
    kiln.add_adapter("default", &spec).expect("adapter");
    kiln.set_active(&["default".to_string()]);
    let mut i = 0;
    g.bench_function("kiln_lora_linear", |b| {
        b.iter(|| {
            i += 1;
            let y = kiln.forward(xs[i % xs.len()].clone());
            let grads = y.sum().backward();
            let a = kiln.adapter("default").expect("adapter");
            a.lora_a.grad(&grads).expect("grad").into_data()
        })
    });

    // The fused path: host forward and backward of the same layer, gradient of `sum(y)`.
    let host_xs: Vec<Vec<f32>> = xs
        .iter()
        .map(|x| x.clone().into_data().try_into_vec::<f32>().expect("host"))
        .collect();
    let host = kiln_lora::backprop::HostLinear::new(&kiln).expect("fused path applies");
    let m = SHAPE[0] * SHAPE[1];
    let ones = vec![1f32; m * D_OUT];
    g.bench_function("kiln_fused_host", |b| {
        b.iter(|| {
            i += 1;
            let x = &host_xs[i % host_xs.len()];
            let (y, saved) = host.forward(x, m);
            let mut dx = vec![0f32; m * D_IN];
            let mut grads = kiln_cpu::Grads::default();
            host.backward(x, &saved, &ones, m, &mut dx, &mut grads);
            (y.len(), grads.len())
        })
    });

    let burn_lora: Linear = LinearConfig::new(D_IN, D_OUT)
        .with_bias(false)
        .init(&device)
        .apply_lora(Lora::new(R, 32.0));
    g.bench_function("burn_apply_lora", |b| {
        b.iter(|| {
            i += 1;
            let y = burn_lora.forward(xs[i % xs.len()].clone());
            let grads = y.sum().backward();
            let adapter = burn_lora.weight.adapter().expect("adapter");
            adapter.a.grad(&grads).expect("grad").into_data()
        })
    });

    let full: Linear = LinearConfig::new(D_IN, D_OUT)
        .with_bias(false)
        .init(&device);
    g.bench_function("full_finetune_linear", |b| {
        b.iter(|| {
            i += 1;
            let y = full.forward(xs[i % xs.len()].clone());
            let grads = y.sum().backward();
            full.weight.grad(&grads).expect("grad").into_data()
        })
    });
    g.finish();
}

fn bench_frozen(c: &mut Criterion) {
    let device = Device::default();
    let mut g = c.benchmark_group("frozen_linear");
    g.sample_size(20);
    let w = Tensor::<2>::random([D_IN, D_OUT], Distribution::Normal(0.0, 0.02), &device);
    // SmolLM2's tied head: the [49152, 576] embedding, used transposed.
    let embed = Tensor::<2>::random([49_152, D_IN], Distribution::Normal(0.0, 0.02), &device);
    for (name, rows, weight) in [
        ("576x1536_1row", 1, w.clone()),
        ("576x1536_256rows", 256, w),
        ("tied_head_576x49152_1row", 1, embed.clone().transpose()),
        ("tied_head_576x49152_256rows", 256, embed.transpose()),
    ] {
        let xs: Vec<Tensor<3>> = (0..4)
            .map(|_| Tensor::random([1, rows, D_IN], Distribution::Normal(0.0, 1.0), &device))
            .collect();
        let mut i = 0;
        g.bench_function(format!("burn_{name}"), |b| {
            b.iter(|| {
                i += 1;
                burn::tensor::module::linear(xs[i % xs.len()].clone(), weight.clone(), None)
                    .into_data()
            })
        });
        g.bench_function(format!("kiln_{name}"), |b| {
            b.iter(|| {
                i += 1;
                kiln_lora::kernels::linear(xs[i % xs.len()].clone(), weight.clone(), None)
                    .into_data()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench, bench_frozen);
criterion_main!(benches);
