//! Initial adapter values drawn on the host from a seeded generator, so that one seed gives the
//! same adapter on every backend.
//!
//! burn's `Tensor::random` draws from the device's own generator: the CPU and wgpu backends give
//! different values for the same `device.seed(s)` (LoRA losses were 4.7e-3 apart by step 3 of
//! the same run, issue #23). Values are drawn here instead, with PEFT's distributions, and
//! uploaded. Like `torch.manual_seed`, [`manual_seed`] sets the seed for every adapter created
//! afterwards (on the calling thread); each layer draws from its own stream, seeded by the seed, the adapter name and
//! the layer's path, so the values do not depend on the order layers are visited in.
use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cell::Cell;

thread_local! {
    /// Per thread, so that tests running side by side do not change each other's adapters.
    static SEED: Cell<u64> = const { Cell::new(0) };
}

/// Sets the seed of the initial values of adapters created afterwards on this thread
/// (`torch.manual_seed` for adapters; default 0).
pub fn manual_seed(seed: u64) {
    SEED.with(|s| s.set(seed));
}

/// The generator of the adapter `name` on the layer at `path` (FNV-1a of both, mixed with the
/// seed of [`manual_seed`]). `StdRng`'s algorithm is pinned by `Cargo.lock`.
pub(crate) fn layer_rng(name: &str, path: &str) -> StdRng {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes().chain([0]).chain(path.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    StdRng::seed_from_u64(SEED.with(Cell::get) ^ h)
}

/// `U(-bound, bound)` values of `shape`, on `device`.
pub(crate) fn uniform(
    rng: &mut StdRng,
    shape: [usize; 2],
    bound: f64,
    device: &Device,
) -> Tensor<2> {
    let data: Vec<f32> = (0..shape[0] * shape[1])
        .map(|_| rng.random_range(-bound..=bound) as f32)
        .collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// `N(0, std²)` values of `shape`, on `device` (Box-Muller on the host generator).
pub(crate) fn normal(rng: &mut StdRng, shape: [usize; 2], std: f64, device: &Device) -> Tensor<2> {
    let data: Vec<f32> = (0..shape[0] * shape[1])
        .map(|_| {
            let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]: ln stays finite
            let u2: f64 = rng.random();
            (std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}
