//! A linear layer with a frozen base weight that holds low-rank adapters by name.
//!
//! The adapted forward is `y = x W + b + Σ_active scale · ((dropout(x) A) B)`: two thin GEMMs per
//! adapter, never the `[in, out]` delta `A B`. burn's own `Module::apply_lora` reparameterises the
//! weight as `W + scale · A B` and therefore materialises that full delta (and its gradient) on
//! every forward: `in·out·r` extra FLOPs and an `[in, out]` temporary per call instead of
//! `tokens·r·(in+out)`; `benches/lora_layer.rs` measures the difference.
use crate::base::{BaseWeight, Layout, replace_value};
use crate::kernels::{frozen_linear_in, linear_in};
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use kiln_cpu::QMatrix;

use crate::adapter::{AdapterSpec, LoraAdapter, column_norm, dora_weight_norm};
use crate::error::{LoraError, Result};

/// A linear projection `y = x W + b` whose base weight is frozen, plus named adapters.
///
/// A dense weight is stored `[in, out]` (burn's layout, so the forward is one GEMM with no
/// transpose; checkpoints in PyTorch layout `[out, in]` are transposed once when loading); a
/// frozen one stays `[out, in]` in its storage format (see [`BaseWeight`]).
#[derive(Module, Debug)]
pub struct LoraLinear {
    /// Base weight, frozen unless made trainable.
    pub weight: BaseWeight,
    /// Base bias `[out]`, frozen.
    pub bias: Option<Param<Tensor<1>>>,
    /// Adapters in the order they were added.
    pub adapters: Vec<LoraAdapter>,
    #[module(skip)]
    state: LayerState,
}

/// The adapters one row of a batch runs, each with its weight (empty: the base alone).
pub type RowMix = Vec<(String, f32)>;

/// Which adapters run and which are folded into the weight.
#[derive(Debug, Clone, Default)]
struct LayerState {
    active: Vec<String>,
    disabled: bool,
    /// Merged adapters in merge order, with DoRA's weight norm at merge time.
    merged: Vec<(String, Option<Tensor<1>>)>,
    /// Per-row weighted adapters (batched serving): overrides `active` when set.
    rows: Option<Vec<RowMix>>,
    /// Precision of the base product outside autodiff (inference), see [`LoraLinear::set_precision`].
    precision: kiln_cpu::Precision,
}

impl LoraLinear {
    /// Wraps a base weight `[in, out]` and optional bias `[out]`; both are frozen.
    pub fn new(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        Self::with_base(BaseWeight::dense(weight), bias)
    }

    /// Wraps a frozen matrix `[out, in]` kept in its storage format, and an optional bias
    /// `[out]`, for a layer on `device`.
    pub fn frozen(weight: QMatrix, bias: Option<Tensor<1>>, device: &Device) -> Self {
        Self::with_base(BaseWeight::frozen(weight, device), bias)
    }

    fn with_base(weight: BaseWeight, bias: Option<Tensor<1>>) -> Self {
        Self {
            weight,
            bias: bias.map(|b| Param::from_tensor(b).set_require_grad(false)),
            adapters: Vec::new(),
            state: LayerState::default(),
        }
    }

    /// Input features.
    pub fn d_in(&self) -> usize {
        self.weight.dims(Layout::Linear)[0]
    }

    /// Output features.
    pub fn d_out(&self) -> usize {
        self.weight.dims(Layout::Linear)[1]
    }

    /// The base weight as a dense `[in, out]` tensor: the parameter itself, or a frozen matrix
    /// dequantized for this call (merges, DoRA's norm, exports; never the products).
    pub fn dense_weight(&self) -> Tensor<2> {
        self.weight.values(Layout::Linear)
    }

    /// `x W + b`, the base layer alone.
    fn base_forward<const D: usize>(&self, x: Tensor<D>, bias: Option<Tensor<1>>) -> Tensor<D> {
        let p = self.state.precision;
        match &self.weight {
            BaseWeight::Dense(w) => linear_in(x, w.val(), bias, p),
            BaseWeight::Frozen(f) => frozen_linear_in(x, f, bias, p),
        }
    }

    /// The precision of the base product in inference (outside autodiff, on the CPU backend):
    /// f32 (the default), or bf16 as a `torch_dtype=bfloat16` layer multiplies (input, weight and
    /// output rounded to bf16, f32 accumulation; see [`crate::kernels::linear_in`]). Adapters'
    /// low-rank products and training stay f32 (training has its own `precision` option).
    pub fn set_precision(&mut self, precision: kiln_cpu::Precision) {
        self.state.precision = precision;
    }

    /// Holds a frozen base matrix also in the bf16 kernel's layout, for bf16 inference
    /// ([`crate::Frozen::hold_bf16_layout`]); a dense base is left as it is. Returns the bytes added.
    pub fn hold_bf16_layout(&mut self) -> usize {
        match &mut self.weight {
            BaseWeight::Frozen(f) => f.hold_bf16_layout(),
            BaseWeight::Dense(_) => 0,
        }
    }

    /// Applies the layer with its active adapters.
    ///
    /// # Shapes
    /// - x: `[..., in]`
    /// - output: `[..., out]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let bias = self.bias.as_ref().map(|b| b.val());
        if let Some(rows) = &self.state.rows
            && !self.state.disabled
            && self.state.merged.is_empty()
            && rows.len() == x.dims()[0]
        {
            return self.routed_forward(x, bias, rows);
        }
        let running: Vec<&LoraAdapter> = if self.state.disabled || !self.state.merged.is_empty() {
            Vec::new()
        } else {
            self.state
                .active
                .iter()
                .filter_map(|n| self.adapter(n))
                .collect()
        };
        if running.is_empty() {
            return self.base_forward(x, bias);
        }
        let mut result = self.base_forward(x.clone(), bias.clone());
        for adapter in running {
            let dx = dropout(&adapter.dropout, x.clone());
            result = match &adapter.magnitude {
                None => result + adapter.lora_path(dx),
                Some(mag) => self.dora_forward(adapter, mag.val(), &x, dx, result, bias.clone()),
            };
        }
        result
    }

    /// The forward with adapters chosen per row of `x` (S-LoRA/Punica's batched adapters): the
    /// base product runs once for the whole batch, then each adapter's `scale · (x A) B` is added
    /// to every row, multiplied by that row's weight for it (0 for rows that did not ask for it,
    /// so they get exactly `+ 0`). A row with several weighted adapters gets
    /// `Σ wᵢ scaleᵢ (x Aᵢ) Bᵢ`, PEFT's `add_weighted_adapter(combination_type="cat")` applied
    /// without building the concatenated adapter. Nothing is merged into the shared weight. The
    /// low-rank products run over the whole batch once per distinct adapter:
    /// `tokens · r · (in + out)` FLOPs each, small next to the base `tokens · in · out` at the
    /// ranks adapters use.
    ///
    /// # Shapes
    /// - x: `[b, ..., in]`, `rows`: `b` entries; output `[b, ..., out]`
    fn routed_forward<const D: usize>(
        &self,
        x: Tensor<D>,
        bias: Option<Tensor<1>>,
        rows: &[RowMix],
    ) -> Tensor<D> {
        let mut result = self.base_forward(x.clone(), bias.clone());
        if let Some(done) = self.routed_host(&result, &x, rows) {
            return done;
        }
        let mut seen: Vec<&str> = Vec::new();
        for (name, _) in rows.iter().flatten() {
            if seen.contains(&name.as_str()) {
                continue;
            }
            seen.push(name);
            let Some(adapter) = self.adapter(name) else {
                continue;
            };
            let weights: Vec<f32> = rows
                .iter()
                .map(|r| r.iter().filter(|(n, _)| n == name).map(|(_, w)| *w).sum())
                .collect();
            if weights.iter().all(|&w| w == 0.0) {
                continue;
            }
            let delta = match &adapter.magnitude {
                None => adapter.lora_path(x.clone()),
                Some(mag) => {
                    self.dora_forward(
                        adapter,
                        mag.val(),
                        &x,
                        x.clone(),
                        result.clone(),
                        bias.clone(),
                    ) - result.clone()
                }
            };
            result = if weights.iter().all(|&w| w == 1.0) {
                result + delta
            } else {
                let mut shape = [1usize; D];
                shape[0] = rows.len();
                let weights = Tensor::<1>::from_data(
                    burn::tensor::TensorData::new(weights, [rows.len()]),
                    &x.device(),
                )
                .reshape(shape);
                result + delta * weights
            };
        }
        result
    }

    /// [`Self::routed_forward`]'s adapters on the host in one pass per adapter over the rows
    /// that use it ([`crate::kernels::try_routed`]); `None` where that does not apply (a DoRA
    /// adapter, autodiff, another backend).
    fn routed_host<const D: usize>(
        &self,
        result: &Tensor<D>,
        x: &Tensor<D>,
        rows: &[RowMix],
    ) -> Option<Tensor<D>> {
        let mut names: Vec<&str> = Vec::new();
        for (name, _) in rows.iter().flatten() {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
        let adapters: Vec<&LoraAdapter> = names.iter().filter_map(|n| self.adapter(n)).collect();
        if adapters.iter().any(|a| a.magnitude.is_some()) {
            return None;
        }
        let weights: Vec<Vec<f32>> = adapters
            .iter()
            .map(|a| {
                rows.iter()
                    .map(|r| {
                        r.iter()
                            .filter(|(n, _)| *n == a.name)
                            .map(|(_, w)| *w)
                            .sum()
                    })
                    .collect()
            })
            .collect();
        let terms: Vec<crate::kernels::RoutedTerm<'_>> = adapters
            .iter()
            .zip(&weights)
            .map(|(a, w)| crate::kernels::RoutedTerm {
                a: a.lora_a.val(),
                b: a.lora_b.val(),
                scale: a.scale,
                weights: w,
            })
            .collect();
        crate::kernels::try_routed(result, x, &terms)
    }

    /// Routes the rows of the following forwards to adapters: row `i` of the input (its first
    /// dimension) runs the base plus adapter `rows[i]` (`None`: the base alone), whatever the
    /// active set says; names this layer does not hold add nothing. An input whose batch differs
    /// from `rows.len()` runs the active set as before. `None` turns routing off.
    pub fn set_row_adapters(&mut self, rows: Option<Vec<Option<String>>>) {
        self.set_row_mixes(rows.map(|r| {
            r.into_iter()
                .map(|a| a.map(|n| vec![(n, 1.0)]).unwrap_or_default())
                .collect()
        }));
    }

    /// As [`set_row_adapters`](Self::set_row_adapters) with a weighted list of adapters per row:
    /// row `i` runs the base plus `Σ w · scale · (x A) B` over its `(name, w)` entries. A DoRA
    /// adapter's weight multiplies its whole change to the output, which is that adapter's
    /// own forward only at weight 1 alone in its row ([`crate::LoraModel::set_row_mixes`]
    /// refuses the other cases).
    pub fn set_row_mixes(&mut self, rows: Option<Vec<RowMix>>) {
        self.state.rows = rows;
    }

    /// PEFT's `DoraLinearVariant.forward` + `DoraLinearLayer.forward`:
    /// `result + (m/‖W + sBA‖ - 1) · base + m/‖W + sBA‖ · s·B A x`, the norm detached, where
    /// `base` is the running result without bias (or `dropout(x) W` when dropout is active).
    fn dora_forward<const D: usize>(
        &self,
        adapter: &LoraAdapter,
        magnitude: Tensor<1>,
        x: &Tensor<D>,
        dx: Tensor<D>,
        result: Tensor<D>,
        bias: Option<Tensor<1>>,
    ) -> Tensor<D> {
        // A frozen weight is dequantized for the (detached) norm alone and dropped here.
        let norm = dora_weight_norm(
            &self.dense_weight(),
            &adapter.lora_a.val(),
            &adapter.lora_b.val(),
            adapter.scale,
        );
        let out = self.d_out();
        let mut dims = [1usize; D];
        dims[D - 1] = out;
        let factor = (magnitude / norm).reshape(dims); // [1, .., out]
        let dropout_ran = adapter.dropout.prob > 0.0 && x.device().is_autodiff();
        let base = if dropout_ran {
            // `dropout(x) W`, by the frozen operation when the weight is kept as stored.
            self.base_forward(dx.clone(), None)
        } else {
            match bias {
                Some(b) => result.clone() - b.reshape(dims),
                None => result.clone(),
            }
        };
        let lora = adapter.lora_path(dx);
        result + factor.clone().sub_scalar(1.0) * base + factor * lora
    }

    /// The adapter called `name`.
    pub fn adapter(&self, name: &str) -> Option<&LoraAdapter> {
        self.adapters.iter().find(|a| a.name == name)
    }

    /// The adapter called `name`, mutably.
    pub fn adapter_mut(&mut self, name: &str) -> Option<&mut LoraAdapter> {
        self.adapters.iter_mut().find(|a| a.name == name)
    }

    /// Adds a freshly initialised adapter (inactive until [`set_active`](Self::set_active)).
    /// PiSSA replaces the base weight with its residual. Initial values are drawn on the host
    /// from [`crate::manual_seed`]'s seed and `name`.
    pub fn add_adapter(&mut self, name: &str, spec: &AdapterSpec) -> Result<()> {
        self.add_adapter_at(name, spec, "")
    }

    /// [`add_adapter`](Self::add_adapter) for the layer at `path` in its model: the initial
    /// values are drawn from a stream of their own (seed, name, path), so a model gets the same
    /// adapter whatever order its layers are visited in, on every backend.
    pub fn add_adapter_at(&mut self, name: &str, spec: &AdapterSpec, path: &str) -> Result<()> {
        if self.adapter(name).is_some() {
            return Err(LoraError::DuplicateAdapter(name.into()));
        }
        self.require_unmerged("add an adapter")?;
        let (adapter, residual) = LoraAdapter::init(
            name,
            spec,
            [self.d_in(), self.d_out()],
            &self.weight.device(),
            &|| self.dense_weight(),
            &mut crate::init::layer_rng(name, path),
        )?;
        if let Some(res) = residual {
            self.set_weight(res);
        }
        self.adapters.push(adapter);
        Ok(())
    }

    /// Adds an adapter built elsewhere (loaded from a file, combined), checking its shapes.
    /// `key` names the adapter's tensors in errors.
    pub fn insert_adapter(&mut self, adapter: LoraAdapter, key: &str) -> Result<()> {
        if self.adapter(&adapter.name).is_some() {
            return Err(LoraError::DuplicateAdapter(adapter.name.clone()));
        }
        self.check_shapes(&adapter, key)?;
        self.adapters.push(adapter);
        Ok(())
    }

    /// Replaces the weights of adapter `name` by those of `new` (same shapes), keeping the
    /// parameter ids so that an optimizer's state stays attached; the model is not rebuilt.
    pub fn swap_adapter_weights(&mut self, name: &str, new: LoraAdapter, key: &str) -> Result<()> {
        self.require_unmerged("hot-swap an adapter")?;
        self.check_shapes(&new, key)?;
        let slot = self
            .adapter_mut(name)
            .ok_or_else(|| LoraError::UnknownAdapter(name.into()))?;
        if slot.is_dora() != new.is_dora() {
            return Err(LoraError::UnexpectedKey {
                key: format!("{key}.lora_magnitude_vector"),
                reason: "DoRA and plain LoRA adapters cannot be swapped for each other".into(),
            });
        }
        replace_value(&mut slot.lora_a, new.lora_a.val());
        replace_value(&mut slot.lora_b, new.lora_b.val());
        if let (Some(m), Some(n)) = (slot.magnitude.as_mut(), new.magnitude) {
            replace_value(m, n.val());
        }
        slot.alpha = new.alpha;
        slot.scale = new.scale;
        Ok(())
    }

    fn check_shapes(&self, adapter: &LoraAdapter, key: &str) -> Result<()> {
        let (d_in, d_out) = (self.d_in(), self.d_out());
        let r = adapter.lora_a.shape().dims::<2>()[1];
        // Errors use PEFT's layouts: lora_A.weight [r, in], lora_B.weight [out, r].
        let a = adapter.lora_a.shape().dims::<2>();
        if a[0] != d_in {
            return Err(shape_err(
                format!("{key}.lora_A.weight"),
                [r, d_in],
                [a[1], a[0]],
            ));
        }
        let b = adapter.lora_b.shape().dims::<2>();
        if b != [r, d_out] {
            return Err(shape_err(
                format!("{key}.lora_B.weight"),
                [d_out, r],
                [b[1], b[0]],
            ));
        }
        if let Some(m) = &adapter.magnitude {
            let m = m.shape().dims::<1>();
            if m != [d_out] {
                return Err(LoraError::Shape {
                    key: format!("{key}.lora_magnitude_vector"),
                    expected: vec![d_out],
                    found: m.to_vec(),
                });
            }
        }
        Ok(())
    }

    /// Removes adapter `name`. Merged adapters must be unmerged first.
    pub fn delete_adapter(&mut self, name: &str) -> Result<LoraAdapter> {
        if self.state.merged.iter().any(|(n, _)| n == name) {
            return Err(LoraError::State(format!(
                "adapter `{name}` is merged; unmerge before deleting it"
            )));
        }
        let i = self
            .adapters
            .iter()
            .position(|a| a.name == name)
            .ok_or_else(|| LoraError::UnknownAdapter(name.into()))?;
        self.state.active.retain(|n| n != name);
        Ok(self.adapters.remove(i))
    }

    /// Makes exactly `names` active (in that order) and trainable; the others are frozen.
    /// Names this layer does not hold are ignored (an adapter need not target every layer).
    pub fn set_active(&mut self, names: &[String]) {
        self.state.active = names
            .iter()
            .filter(|n| self.adapter(n).is_some())
            .cloned()
            .collect();
        let active = self.state.active.clone();
        self.adapters = std::mem::take(&mut self.adapters)
            .into_iter()
            .map(|a| {
                let on = active.contains(&a.name);
                a.set_trainable(on)
            })
            .collect();
    }

    /// Names of the active adapters this layer holds.
    pub fn active_adapters(&self) -> &[String] {
        &self.state.active
    }

    /// Runs the base layer only (`true`) or the active adapters again (`false`).
    /// Disabling unmerges first, as PEFT's forward does.
    pub fn set_disabled(&mut self, disabled: bool) {
        if disabled {
            self.unmerge();
        }
        self.state.disabled = disabled;
    }

    /// Whether adapters are disabled.
    pub fn is_disabled(&self) -> bool {
        self.state.disabled
    }

    /// Whether the forward runs adapters on top of the weight (active, enabled and not merged),
    /// so that the weight alone is not the layer's function.
    pub fn has_unmerged_active_adapters(&self) -> bool {
        !self.state.disabled
            && self.state.merged.is_empty()
            && self.state.active.iter().any(|n| self.adapter(n).is_some())
    }

    /// Names of the adapters folded into the weight, in merge order.
    pub fn merged_adapters(&self) -> Vec<String> {
        self.state.merged.iter().map(|(n, _)| n.clone()).collect()
    }

    fn require_unmerged(&self, what: &str) -> Result<()> {
        if self.state.merged.is_empty() {
            Ok(())
        } else {
            Err(LoraError::State(format!(
                "cannot {what} while adapters are merged; unmerge first"
            )))
        }
    }

    /// Folds adapters into the base weight: `names`, or the active ones when `None`.
    /// Already merged adapters are skipped. DoRA: `W ← m/‖W₀ + sBA‖ · (W + sBA)` with `W₀` the
    /// weight without any merged adapter, as PEFT.
    pub fn merge(&mut self, names: Option<&[String]>) -> Result<()> {
        let names: Vec<String> = names
            .map(<[String]>::to_vec)
            .unwrap_or_else(|| self.state.active.clone());
        for name in names {
            if self.state.merged.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let adapter = self
                .adapter(&name)
                .ok_or_else(|| LoraError::UnknownAdapter(name.clone()))?;
            let delta = adapter.delta_weight().detach();
            let w = self.dense_weight().detach();
            let (new, norm) = match &adapter.magnitude {
                None => (w + delta, None),
                Some(m) => {
                    let base = self.unmerged_weight();
                    let norm = column_norm(base + delta.clone());
                    let factor = (m.val().detach() / norm.clone()).unsqueeze_dim::<2>(0); // [1, out]
                    ((w + delta) * factor, Some(norm))
                }
            };
            self.set_weight(new);
            self.state.merged.push((name, norm));
        }
        Ok(())
    }

    /// Restores the base weight by undoing merged adapters in reverse order.
    pub fn unmerge(&mut self) {
        while let Some((name, norm)) = self.state.merged.pop() {
            let w = self.dense_weight().detach();
            let Some(adapter) = self.adapter(&name) else {
                continue;
            };
            let delta = adapter.delta_weight().detach();
            let new = match (&adapter.magnitude, norm) {
                (Some(m), Some(norm)) => {
                    let factor = (m.val().detach() / norm).unsqueeze_dim::<2>(0);
                    w / factor - delta
                }
                _ => w - delta,
            };
            self.set_weight(new);
        }
    }

    /// Replaces the base weight's values by a dense `[in, out]` tensor (a frozen matrix becomes
    /// dense: merges and PiSSA's residual are f32), keeping the parameter's id.
    pub(crate) fn set_weight(&mut self, value: Tensor<2>) {
        self.weight.replace(value, Layout::Linear);
    }

    /// The weight with every merged adapter undone (without changing the layer).
    fn unmerged_weight(&self) -> Tensor<2> {
        let mut w = self.dense_weight().detach();
        for (name, norm) in self.state.merged.iter().rev() {
            if let Some(adapter) = self.adapter(name) {
                let delta = adapter.delta_weight().detach();
                w = match (&adapter.magnitude, norm) {
                    (Some(m), Some(norm)) => {
                        w / (m.val().detach() / norm.clone()).unsqueeze_dim::<2>(0) - delta
                    }
                    _ => w - delta,
                };
            }
        }
        w
    }

    /// Lets the base weight (and bias) train in full, for `modules_to_save`.
    pub fn set_base_trainable(&mut self, trainable: bool) {
        self.weight.set_trainable(trainable, Layout::Linear);
        self.set_bias_trainable(trainable);
    }

    /// Lets the base bias train (PEFT `bias = "all" | "lora_only"`).
    pub fn set_bias_trainable(&mut self, trainable: bool) {
        self.bias = self.bias.take().map(|b| b.set_require_grad(trainable));
    }
}

fn shape_err(key: String, expected: [usize; 2], found: [usize; 2]) -> LoraError {
    LoraError::Shape {
        key,
        expected: expected.to_vec(),
        found: found.to_vec(),
    }
}

/// burn's `Dropout` (same draws, same scaling) with its mask drawn by the CPU backend's
/// generator on every device, then uploaded: one seed gives the same masks on wgpu as on the CPU
/// (burn's `random_like` draws from each device's own generator, so wgpu trained differently
/// from the same seed). The trainer seeds the CPU generator per micro-batch whatever the device.
/// On the CPU it is burn's `Dropout` itself; builds without the `cpu` feature keep burn's.
///
/// # Shapes
/// - x, output: `[..., in]`
fn dropout<const D: usize>(d: &burn::nn::Dropout, x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "cpu")]
    if d.training.is_enabled()
        && d.prob > 0.0
        && x.device().is_autodiff()
        && kiln_cpu::host::Storage::values(&x).is_none()
    {
        use burn::tensor::Distribution;
        let keep = 1.0 - d.prob;
        let draws = Tensor::<D>::random(
            x.shape(),
            Distribution::Bernoulli(keep),
            &kiln_cpu::host::device(),
        );
        let mask = Tensor::<D>::from_data(draws.into_data(), &x.device());
        return x * mask * (1.0 / keep);
    }
    d.forward(x)
}
