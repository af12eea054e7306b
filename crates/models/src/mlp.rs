//! The gated feed-forward block: `down_proj(act(gate) * up)`, SwiGLU (Llama, Phi-3) or GeGLU with
//! the tanh approximation (Gemma); gate and up separate or fused into `gate_up_proj` (Phi-3).
use crate::config::Activation;
use crate::proj::{GateUpProj, projection_module};
use burn::tensor::Tensor;
use burn::tensor::activation::{gelu, silu};
use kiln_lora::LoraLinear;

/// `down_proj(act(gate_proj(x)) * up_proj(x))`.
///
/// The projections are the checkpoint's modules: `gate_proj` and `up_proj`, or Phi-3's fused
/// `gate_up_proj` (output rows `[gate; up]`) ([`GateUpProj`]), visited under those names (see
/// `proj.rs`).
#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate_up: GateUpProj,
    pub down_proj: LoraLinear,
    pub activation: Activation,
}

projection_module!(Mlp, gate_up, [down_proj]);

impl Mlp {
    /// The projections, with their module names, in checkpoint order.
    pub fn projections(&self) -> Vec<(&'static str, &LoraLinear)> {
        let mut out = self.gate_up.named();
        out.push(("down_proj", &self.down_proj));
        out
    }

    /// Same as [`Self::projections`], mutably.
    pub fn projections_mut(&mut self) -> Vec<(&'static str, &mut LoraLinear)> {
        let mut out = self.gate_up.named_mut();
        out.push(("down_proj", &mut self.down_proj));
        out
    }

    /// # Shapes
    /// - x: `[b, t, hidden]`
    /// - output: `[b, t, hidden]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let (gate, up) = match &self.gate_up {
            GateUpProj::Fused { gate_up_proj } => {
                let gu = gate_up_proj.forward(x); // [b, t, 2 * intermediate]
                let [b, t, n] = gu.dims();
                (
                    gu.clone().slice([0..b, 0..t, 0..n / 2]),
                    gu.slice([0..b, 0..t, n / 2..n]),
                )
            }
            GateUpProj::Separate { gate_proj, up_proj } => {
                (gate_proj.forward(x.clone()), up_proj.forward(x))
            }
        };
        let hidden = match crate::kernels::try_gated(self.activation, &gate, &up) {
            Some(h) => h,
            None => activate(self.activation, gate) * up,
        };
        self.down_proj.forward(hidden)
    }
}

/// Applies `act` elementwise.
pub fn activate<const D: usize>(act: Activation, x: Tensor<D>) -> Tensor<D> {
    match act {
        Activation::Silu => silu(x),
        Activation::Gelu => gelu(x),
        Activation::GeluTanh => gelu_tanh(x),
    }
}

/// `0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))`, PyTorch's `gelu(approximate="tanh")`.
/// (`x³` as `x · x · x`: a float power of a negative base would be NaN on some backends.)
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
    let cube = x.clone() * x.clone() * x.clone();
    let inner = (x.clone() + cube * 0.044715) * SQRT_2_OVER_PI;
    x * (inner.tanh() + 1.0) * 0.5
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn gelu_tanh_matches_pytorch_values() {
        // torch.nn.functional.gelu(torch.tensor([-3., -1., 0., 0.5, 2.]), approximate="tanh")
        let want = [-0.003_637_433, -0.158_808, 0.0, 0.345_714, 1.954_598];
        let x = Tensor::<1>::from_data(
            TensorData::new(vec![-3.0f32, -1.0, 0.0, 0.5, 2.0], [5]),
            &crate::default_device(),
        );
        let got: Vec<f32> = gelu_tanh(x).into_data().try_into_vec().unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
    }

    /// The fused CPU kernel is taken and equals `act(gate) · up` for SwiGLU and GeGLU.
    #[test]
    fn gated_kernel_equals_tensor_path() {
        use burn::tensor::Distribution;
        let dev = crate::default_device();
        let gate = Tensor::<3>::random([2, 9, 50], Distribution::Normal(0.0, 3.0), &dev);
        let up = Tensor::<3>::random([2, 9, 50], Distribution::Normal(0.0, 1.0), &dev);
        for act in [Activation::Silu, Activation::GeluTanh] {
            let fast = crate::kernels::try_gated(act, &gate, &up);
            #[cfg(feature = "cpu")]
            assert!(fast.is_some());
            let Some(fast) = fast else { continue };
            let want: Vec<f32> = (activate(act, gate.clone()) * up.clone())
                .into_data()
                .try_into_vec()
                .unwrap();
            let got: Vec<f32> = fast.into_data().try_into_vec().unwrap();
            let worst = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "{act:?}: max |diff| {worst}");
        }
    }
}
