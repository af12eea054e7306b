//! Gradients computed outside burn's autodiff (kiln's fused CPU backward pass), by parameter.
use burn::module::ParamId;
use std::collections::HashMap;

/// Gradients by parameter, summed over every contribution (a tied embedding gets two).
#[derive(Debug, Default)]
pub struct Grads {
    map: HashMap<ParamId, (Vec<usize>, Vec<f32>)>,
}

impl Grads {
    /// Adds `values` (of `shape`) to the gradient of `id`.
    pub fn add(&mut self, id: ParamId, shape: &[usize], values: &[f32]) {
        let entry = self
            .map
            .entry(id)
            .or_insert_with(|| (shape.to_vec(), vec![0.0; values.len()]));
        entry.1.iter_mut().zip(values).for_each(|(g, v)| *g += v);
    }

    /// The gradient buffer of `id` (zeros the first time), to accumulate into in place.
    pub fn slot(&mut self, id: ParamId, shape: &[usize]) -> &mut [f32] {
        let n = shape.iter().product();
        &mut self
            .map
            .entry(id)
            .or_insert_with(|| (shape.to_vec(), vec![0.0; n]))
            .1
    }

    /// Every gradient with its shape.
    pub fn into_entries(self) -> impl Iterator<Item = (ParamId, Vec<usize>, Vec<f32>)> {
        self.map.into_iter().map(|(id, (s, v))| (id, s, v))
    }

    /// Number of parameters with a gradient.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
