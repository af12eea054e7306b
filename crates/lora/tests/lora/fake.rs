//! A tiny model with HF-style module paths: two projections, an embedding and an LM head.
#![allow(clippy::unwrap_used)]
use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use kiln_lora::{AdapterTarget, BaseWeight, LoraLinear, OtherParam, OtherParamMut};

pub const Q: &str = "model.layers.0.self_attn.q_proj";
pub const V: &str = "model.layers.0.self_attn.v_proj";

#[derive(Module, Debug)]
pub struct Tiny {
    pub embed: BaseWeight,   // [vocab 10, hidden 6]
    pub q_proj: LoraLinear,  // 6 -> 6, with bias
    pub v_proj: LoraLinear,  // 6 -> 4
    pub lm_head: LoraLinear, // 4 -> 10
}

/// Deterministic, non-trivial values.
pub fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32 / 1000.0 - 0.5) * 0.8)
        .collect()
}

pub fn tensor<const D: usize>(shape: [usize; D], seed: usize, device: &Device) -> Tensor<D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(values(n, seed), shape.to_vec()), device)
}

impl Tiny {
    pub fn new(device: &Device) -> Self {
        Self {
            embed: BaseWeight::Dense(Param::from_tensor(tensor([10, 6], 1, device))),
            q_proj: LoraLinear::new(tensor([6, 6], 2, device), Some(tensor([6], 3, device))),
            v_proj: LoraLinear::new(tensor([6, 4], 4, device), None),
            lm_head: LoraLinear::new(tensor([4, 10], 5, device), None),
        }
    }

    /// # Shapes
    /// - x: `[batch, 6]` -> `[batch, 10]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let h = self.q_proj.forward(x);
        let h = self.v_proj.forward(h);
        self.lm_head.forward(h)
    }
}

impl AdapterTarget for Tiny {
    fn visit_linears(&self, f: &mut dyn FnMut(&str, &LoraLinear)) {
        f(Q, &self.q_proj);
        f(V, &self.v_proj);
        f("lm_head", &self.lm_head);
    }
    fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut LoraLinear)) {
        f(Q, &mut self.q_proj);
        f(V, &mut self.v_proj);
        f("lm_head", &mut self.lm_head);
    }
    fn visit_other_params(&self, f: &mut dyn FnMut(&str, &str, OtherParam<'_>)) {
        f(
            "model.embed_tokens",
            "weight",
            OtherParam::Table(&self.embed),
        );
    }
    fn visit_other_params_mut(&mut self, f: &mut dyn FnMut(&str, &str, OtherParamMut<'_>)) {
        f(
            "model.embed_tokens",
            "weight",
            OtherParamMut::Table(&mut self.embed),
        );
    }
}

pub fn input(device: &Device) -> Tensor<2> {
    tensor([5, 6], 9, device)
}

pub fn random(shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::random(shape, Distribution::Normal(0.0, 0.5), device)
}

pub fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

pub fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}
