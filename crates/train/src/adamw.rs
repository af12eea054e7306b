//! AdamW as burn's `AdamW` computes it, in one pass over each parameter on the CPU.
//!
//! burn's AdamW runs about fourteen tensor operations per parameter (moments, bias corrections,
//! square root, decay, update), each reading and writing a whole `[out, in]` array. For full
//! fine-tuning of SmolLM2 that is 134 M parameters × 4 arrays streamed through memory fourteen
//! times per step. On the ndarray backend [`FusedAdamW`] updates the weight and both moments in
//! place, in one parallel pass, with the same f32 operations in the same order, so its results are
//! bit-identical to burn's (tested below); on any other backend it calls burn's `AdamW`. Its state
//! is burn's [`AdamWState`], so checkpoints are the same files either way.
//!
//! Update for step `t` (PyTorch's `torch.optim.AdamW`, as burn computes it):
//! `m ← β₁m + (1-β₁)g`, `v ← β₂v + (1-β₂)g²`, `θ ← θ(1 - lr·λ) - lr · (m/(1-β₁ᵗ)) / (√(v/(1-β₂ᵗ)) + ε)`.
use burn::optim::{AdamW, AdamWConfig, AdamWState, LearningRate, Optimizer};
use burn::tensor::{Device, Tensor};

/// AdamW with a fused CPU update (see the module docs).
#[derive(Clone)]
pub struct FusedAdamW {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
    /// burn's AdamW with the same settings, for other backends.
    fallback: AdamW,
}

impl FusedAdamW {
    /// AdamW with these moments' decays, ε and decoupled weight decay.
    pub fn new(beta_1: f32, beta_2: f32, epsilon: f32, weight_decay: f32) -> Self {
        let fallback = AdamWConfig::new()
            .with_beta_1(beta_1)
            .with_beta_2(beta_2)
            .with_epsilon(epsilon)
            .with_weight_decay(weight_decay)
            .build();
        Self {
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
            fallback,
        }
    }
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        #[cfg(feature = "cpu")]
        if host_ready(&tensor, &grad, state.as_ref()) {
            return self.host_step(lr, tensor, grad, state);
        }
        self.fallback.step(lr, tensor, grad, state)
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        AdamW::to_device(state, device)
    }
}

/// Whether the parameter, its gradient and its moments are f32 tensors on the ndarray backend
/// (and the state has no AMSGrad maximum, which kiln never asks for).
#[cfg(feature = "cpu")]
fn host_ready<const D: usize>(
    tensor: &Tensor<D>,
    grad: &Tensor<D>,
    state: Option<&AdamWState<D>>,
) -> bool {
    use kiln_cpu::host::Storage;
    let on_host = |t: &Tensor<D>| Storage::of(t).is_some();
    on_host(tensor)
        && on_host(grad)
        && tensor.dims() == grad.dims()
        && state.is_none_or(|s| {
            let m = &s.momentum;
            m.max_moment_2.is_none()
                && on_host(&m.moment_1)
                && on_host(&m.moment_2)
                && m.moment_1.dims() == tensor.dims()
                && m.moment_2.dims() == tensor.dims()
        })
}

#[cfg(feature = "cpu")]
impl FusedAdamW {
    /// The update on host buffers, reused in place when nothing else holds them. The caller
    /// checked [`host_ready`].
    fn host_step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<AdamWState<D>>,
    ) -> (Tensor<D>, Option<AdamWState<D>>) {
        use burn::optim::AdaptiveMomentumState;
        use kiln_cpu::host;
        let checked = "host_ready checked the backend, dtype and shapes";
        let dims = tensor.dims();
        let mut theta = host::into_vec(tensor).expect(checked);
        let g = host::into_vec(grad).expect(checked);
        let first = state.is_none();
        let (time, mut m, mut v) = match state {
            Some(s) => (
                s.momentum.time + 1,
                host::into_vec(s.momentum.moment_1).expect(checked),
                host::into_vec(s.momentum.moment_2).expect(checked),
            ),
            None => (1, vec![0.0; g.len()], vec![0.0; g.len()]),
        };
        let k = Constants::new(self, lr, time as i32, first);
        update(&k, &mut theta, &g, &mut m, &mut v);
        let back = |data| host::tensor(&dims, data).expect(checked);
        let state = AdamWState::new(AdaptiveMomentumState::new(time, back(m), back(v)));
        (back(theta), Some(state))
    }
}

/// The step's scalars, computed as burn computes them (f32, and the learning rate and decay
/// factor rounded from f64 as burn's scalar ops round them).
#[cfg(feature = "cpu")]
struct Constants {
    beta_1: f32,
    beta_2: f32,
    factor_1: f32,
    factor_2: f32,
    correction_1: f32,
    correction_2: f32,
    epsilon: f32,
    lr: f32,
    /// `1 - lr·λ`, or `None` without decay (burn then skips the multiplication).
    keep: Option<f32>,
    first: bool,
}

#[cfg(feature = "cpu")]
impl Constants {
    fn new(o: &FusedAdamW, lr: LearningRate, time: i32, first: bool) -> Self {
        let decay_rate = lr * o.weight_decay as f64;
        Self {
            beta_1: o.beta_1,
            beta_2: o.beta_2,
            factor_1: 1.0 - o.beta_1,
            factor_2: 1.0 - o.beta_2,
            correction_1: 1f32 - o.beta_1.powi(time),
            correction_2: 1f32 - o.beta_2.powi(time),
            epsilon: o.epsilon,
            lr: lr as f32,
            keep: (decay_rate != 0.0).then_some((1.0 - decay_rate) as f32),
            first,
        }
    }

    /// One element: burn's operations, in burn's order.
    #[inline(always)]
    fn apply(&self, theta: &mut f32, g: f32, m: &mut f32, v: &mut f32) {
        if self.first {
            *m = g * self.factor_1;
            *v = (g * g) * self.factor_2;
        } else {
            *m = *m * self.beta_1 + g * self.factor_1;
            *v = *v * self.beta_2 + (g * g) * self.factor_2;
        }
        let m_hat = *m / self.correction_1;
        let v_hat = *v / self.correction_2;
        let delta = m_hat / (v_hat.sqrt() + self.epsilon);
        let decayed = match self.keep {
            Some(keep) => *theta * keep,
            None => *theta,
        };
        *theta = decayed - delta * self.lr;
    }
}

/// Updates `theta`, `m` and `v` in place, in parallel chunks.
#[cfg(feature = "cpu")]
fn update(k: &Constants, theta: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 14;
    theta
        .par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((t, g), m), v)| {
            for i in 0..t.len() {
                k.apply(&mut t[i], g[i], &mut m[i], &mut v[i]);
            }
        });
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    fn host(t: &Tensor<2>) -> Vec<f32> {
        t.to_data().try_into_vec::<f32>().expect("an f32 tensor")
    }

    /// Five steps of both optimizers on the same gradients, with and without weight decay, with
    /// a transposed (non-row-major) parameter: every value bit-identical, moments included.
    #[test]
    fn equals_burns_adamw_bit_for_bit() {
        let device = Device::default();
        for decay in [0.0, 0.01] {
            let ours = FusedAdamW::new(0.9, 0.999, 1e-8, decay);
            let burns = AdamWConfig::new()
                .with_beta_1(0.9)
                .with_beta_2(0.999)
                .with_epsilon(1e-8)
                .with_weight_decay(decay)
                .build();
            let start = Tensor::<2>::random([24, 40], Distribution::Normal(0.0, 1.0), &device);
            let (mut a, mut b) = (start.clone().transpose(), start.transpose());
            let (mut sa, mut sb) = (None, None);
            for step in 0..5 {
                let scale = [1.0, 1e-3, 30.0, -2.0, 1e-6][step];
                let g = Tensor::<2>::random([40, 24], Distribution::Normal(0.0, 1.0), &device)
                    .mul_scalar(scale);
                let lr = 1e-3 * (step + 1) as f64;
                (a, sa) = ours.step(lr, a, g.clone(), sa);
                (b, sb) = burns.step(lr, b, g, sb);
                assert_eq!(
                    host(&a),
                    host(&b),
                    "weights after step {step}, decay {decay}"
                );
                let (ma, mb) = (
                    &sa.as_ref().unwrap().momentum,
                    &sb.as_ref().unwrap().momentum,
                );
                assert_eq!(ma.time, mb.time);
                assert_eq!(host(&ma.moment_1), host(&mb.moment_1));
                assert_eq!(host(&ma.moment_2), host(&mb.moment_2));
            }
        }
    }

    /// The first step from zero moments moves every weight by about `lr` (Adam's sign-like first
    /// update), against the gradient, plus the decay.
    #[test]
    fn first_step_moves_each_weight_by_lr_against_its_gradient() {
        let device = Device::default();
        let theta = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, -1.0, 0.5, 2.0], [2, 2]),
            &device,
        );
        let g = Tensor::<2>::from_data(
            TensorData::new(vec![0.3f32, -4.0, 1e-3, -0.2], [2, 2]),
            &device,
        );
        let (out, _) = FusedAdamW::new(0.9, 0.999, 1e-8, 0.1).step(0.01, theta, g, None);
        let expected = [
            0.999 - 0.01,
            -0.999 + 0.01,
            0.5 * 0.999 - 0.01,
            2.0 * 0.999 + 0.01,
        ];
        for (x, e) in host(&out).iter().zip(expected) {
            assert!((x - e).abs() < 1e-5, "{x} vs {e}");
        }
    }
}
