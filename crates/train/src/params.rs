//! Walks over a module's parameters by path: which train, which decay, copying values and
//! gradients to and from the host, restoring values with their ids (so that optimizer state,
//! keyed by parameter id, stays attached after a resume).
use crate::error::{Result, TrainError};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use std::collections::BTreeMap;

/// A parameter of a module.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamInfo {
    /// Dotted module path, e.g. `model.layers.0.self_attn.q_proj.adapters.0.lora_a`.
    pub path: String,
    pub id: ParamId,
    pub shape: Vec<usize>,
    /// Whether the parameter receives gradients.
    pub trainable: bool,
}

impl ParamInfo {
    /// Norm weights and biases are not weight-decayed (as transformers' `Trainer`): rank-1
    /// parameters whose path names a norm or a bias.
    pub fn no_decay(&self) -> bool {
        let last = self.path.rsplit('.').next().unwrap_or("");
        self.shape.len() == 1 && (last == "bias" || self.path.contains("norm"))
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Values on the host, f32, by path.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostParams {
    /// path -> (id, shape, values)
    pub tensors: BTreeMap<String, (u64, Vec<usize>, Vec<f32>)>,
}

#[derive(Default)]
struct Path(Vec<String>);

impl Path {
    fn enter(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    fn exit(&mut self) {
        self.0.pop();
    }
    fn get(&self) -> String {
        self.0.join(".")
    }
}

/// Every float parameter of `module`, in visiting order.
pub fn param_infos<M: Module>(module: &M) -> Vec<ParamInfo> {
    struct V(Path, Vec<ParamInfo>);
    impl ModuleVisitor for V {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.0.enter(name);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.0.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.1.push(ParamInfo {
                path: self.0.get(),
                id: param.id,
                shape: param.dims().to_vec(),
                trainable: param.is_require_grad(),
            });
        }
    }
    let mut v = V(Path::default(), Vec::new());
    module.visit(&mut v);
    v.1
}

/// The trainable parameters of `module`.
pub fn trainable_params<M: Module>(module: &M) -> Vec<ParamInfo> {
    param_infos(module)
        .into_iter()
        .filter(|p| p.trainable)
        .collect()
}

fn host<const D: usize>(t: Tensor<D>, path: &str) -> Result<Vec<f32>> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| TrainError::option(path, format!("cannot read tensor: {e:?}")))
}

/// Copies the values of the trainable parameters (or all, `trainable_only = false`) to the host.
pub fn params_to_host<M: Module>(module: &M, trainable_only: bool) -> Result<HostParams> {
    struct V(Path, HostParams, bool, Option<TrainError>);
    impl ModuleVisitor for V {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.0.enter(name);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.0.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.2 && !param.is_require_grad() {
                return;
            }
            let path = self.0.get();
            match host(param.val(), &path) {
                Ok(v) => {
                    self.1
                        .tensors
                        .insert(path, (param.id.val(), param.dims().to_vec(), v));
                }
                Err(e) => self.3 = Some(e),
            }
        }
    }
    let mut v = V(Path::default(), HostParams::default(), trainable_only, None);
    module.visit(&mut v);
    match v.3 {
        Some(e) => Err(e),
        None => Ok(v.1),
    }
}

/// Replaces the values and ids of the parameters named in `values` (by path), keeping whether
/// each trains. Errors when a path is missing from the module or a shape differs.
pub fn restore_params<M: Module>(module: M, values: &HostParams) -> Result<M> {
    struct Mp<'a>(Path, &'a HostParams, Vec<String>, Option<String>);
    impl ModuleMapper for Mp<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.0.enter(name);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.0.exit();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let path = self.0.get();
            let Some((id, shape, data)) = self.1.tensors.get(&path) else {
                return param;
            };
            self.2.push(path.clone());
            let dims = param.dims().to_vec();
            if *shape != dims {
                self.3 = Some(format!("{path}: saved shape {shape:?}, model has {dims:?}"));
                return param;
            }
            let trains = param.is_require_grad();
            let (_, old, mapper) = param.consume();
            let mut t =
                Tensor::<D>::from_data(TensorData::new(data.clone(), shape.clone()), &old.device());
            if trains {
                t = t.require_grad();
            }
            Param::from_mapped_value(ParamId::from(*id), t, mapper)
        }
    }
    let mut m = Mp(Path::default(), values, Vec::new(), None);
    let module = module.map(&mut m);
    if let Some(e) = m.3 {
        return Err(TrainError::option("checkpoint parameters", e));
    }
    let missing: Vec<&String> = values.tensors.keys().filter(|k| !m.2.contains(k)).collect();
    if !missing.is_empty() {
        return Err(TrainError::option(
            "checkpoint parameters",
            format!("the model has no parameter {missing:?}"),
        ));
    }
    Ok(module)
}

/// Adds `new` into `acc` for every parameter of `module` (burn's `GradientsAccumulator`, without
/// the type parameter so it can be saved).
pub(crate) fn accumulate_grads<M: Module>(
    module: &M,
    acc: &mut GradientsParams,
    mut new: GradientsParams,
) {
    struct V<'a>(&'a mut GradientsParams, &'a mut GradientsParams);
    impl ModuleVisitor for V<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let merged = match (self.0.remove::<D>(param.id), self.1.remove::<D>(param.id)) {
                (Some(a), Some(b)) => a + b,
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => return,
            };
            self.0.register::<D>(param.id, merged);
        }
    }
    module.visit(&mut V(acc, &mut new));
}

/// Global L2 norm over all gradients (`sqrt(Σ‖g‖²)`), as `torch.nn.utils.clip_grad_norm_`.
pub(crate) fn global_grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> Result<f64> {
    struct V<'a>(&'a GradientsParams, Vec<Tensor<1>>);
    impl ModuleVisitor for V<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.get::<D>(param.id) {
                self.1.push(g.square().sum().reshape([1]));
            }
        }
    }
    let mut v = V(grads, Vec::new());
    module.visit(&mut v);
    if v.1.is_empty() {
        return Ok(0.0);
    }
    let total = Tensor::cat(v.1, 0).sum();
    let sq = host(total, "gradient norm")?;
    Ok((sq.first().copied().unwrap_or(0.0) as f64).sqrt())
}

/// Multiplies every gradient by `factor`.
pub(crate) fn scale_grads<M: Module>(module: &M, grads: &mut GradientsParams, factor: f64) {
    struct V<'a>(&'a mut GradientsParams, f64);
    impl ModuleVisitor for V<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.remove::<D>(param.id) {
                self.0.register::<D>(param.id, g.mul_scalar(self.1));
            }
        }
    }
    module.visit(&mut V(grads, factor));
}

/// Copies gradients to the host by parameter path (for a checkpoint taken mid-accumulation).
pub(crate) fn grads_to_host<M: Module>(module: &M, grads: &GradientsParams) -> Result<HostParams> {
    struct V<'a>(Path, &'a GradientsParams, HostParams, Option<TrainError>);
    impl ModuleVisitor for V<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.0.enter(name);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.0.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.1.get::<D>(param.id) {
                let path = self.0.get();
                let shape = g.dims().to_vec();
                match host(g, &path) {
                    Ok(v) => {
                        self.2.tensors.insert(path, (param.id.val(), shape, v));
                    }
                    Err(e) => self.3 = Some(e),
                }
            }
        }
    }
    let mut v = V(Path::default(), grads, HostParams::default(), None);
    module.visit(&mut v);
    match v.3 {
        Some(e) => Err(e),
        None => Ok(v.2),
    }
}

/// Rebuilds gradients from the host for the parameters of `module` (on the parameters' device,
/// without autodiff).
pub(crate) fn grads_from_host<M: Module>(module: &M, host: &HostParams) -> GradientsParams {
    struct V<'a>(Path, &'a HostParams, GradientsParams);
    impl ModuleVisitor for V<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.0.enter(name);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.0.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some((_, shape, data)) = self.1.tensors.get(&self.0.get()) {
                let device = param.val().device().inner();
                let g =
                    Tensor::<D>::from_data(TensorData::new(data.clone(), shape.clone()), &device);
                self.2.register::<D>(param.id, g);
            }
        }
    }
    let mut v = V(Path::default(), host, GradientsParams::new());
    module.visit(&mut v);
    v.2
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn info(path: &str, shape: &[usize]) -> ParamInfo {
        ParamInfo {
            path: path.into(),
            id: ParamId::from(1),
            shape: shape.to_vec(),
            trainable: true,
        }
    }

    #[test]
    fn norms_and_biases_do_not_decay() {
        assert!(info("model.norm.weight", &[8]).no_decay());
        assert!(info("model.layers.0.input_layernorm.weight", &[8]).no_decay());
        assert!(info("model.layers.0.self_attn.q_proj.bias", &[8]).no_decay());
        assert!(!info("model.layers.0.self_attn.q_proj.weight", &[8, 8]).no_decay());
        assert!(!info("model.embed_tokens", &[8, 8]).no_decay());
        assert!(!info("x.adapters.0.magnitude", &[8]).no_decay());
    }
}
