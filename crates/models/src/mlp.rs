//! The gated feed-forward block: `down_proj(act(gate) * up)`, SwiGLU (Llama, Phi-3) or GeGLU with
//! the tanh approximation (Gemma); gate and up separate or fused into `gate_up_proj` (Phi-3).
use crate::config::Activation;
use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::{gelu, silu};
use kiln_lora::LoraLinear;

/// `down_proj(act(gate_proj(x)) * up_proj(x))`.
///
/// The projections are the checkpoint's modules: `gate_proj` and `up_proj`, or Phi-3's fused
/// `gate_up_proj` (output rows `[gate; up]`) with the other two `None`.
#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: Option<LoraLinear>,
    pub up_proj: Option<LoraLinear>,
    pub gate_up_proj: Option<LoraLinear>,
    pub down_proj: LoraLinear,
    #[module(skip)]
    pub activation: Activation,
}

impl Mlp {
    /// The projections present, with their module names, in checkpoint order.
    pub fn projections(&self) -> Vec<(&'static str, &LoraLinear)> {
        [
            ("gate_proj", self.gate_proj.as_ref()),
            ("up_proj", self.up_proj.as_ref()),
            ("gate_up_proj", self.gate_up_proj.as_ref()),
            ("down_proj", Some(&self.down_proj)),
        ]
        .into_iter()
        .filter_map(|(n, l)| l.map(|l| (n, l)))
        .collect()
    }

    /// Same as [`Self::projections`], mutably.
    pub fn projections_mut(&mut self) -> Vec<(&'static str, &mut LoraLinear)> {
        [
            ("gate_proj", self.gate_proj.as_mut()),
            ("up_proj", self.up_proj.as_mut()),
            ("gate_up_proj", self.gate_up_proj.as_mut()),
            ("down_proj", Some(&mut self.down_proj)),
        ]
        .into_iter()
        .filter_map(|(n, l)| l.map(|l| (n, l)))
        .collect()
    }

    /// # Shapes
    /// - x: `[b, t, hidden]`
    /// - output: `[b, t, hidden]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let (gate, up) = match (&self.gate_up_proj, &self.gate_proj, &self.up_proj) {
            (Some(fused), ..) => {
                let gu = fused.forward(x); // [b, t, 2 * intermediate]
                let [b, t, n] = gu.dims();
                (
                    gu.clone().slice([0..b, 0..t, 0..n / 2]),
                    gu.slice([0..b, 0..t, n / 2..n]),
                )
            }
            (None, Some(gate), Some(up)) => (gate.forward(x.clone()), up.forward(x)),
            _ => panic!("Mlp needs gate_up_proj or both gate_proj and up_proj"),
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
