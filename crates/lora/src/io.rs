//! PEFT's adapter files: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! Keys (PEFT `get_peft_model_state_dict`, adapter name stripped), PyTorch layouts:
//! - `base_model.model.<path>.lora_A.weight` `[r, in]`, `.lora_B.weight` `[out, r]`
//! - DoRA: `base_model.model.<path>.lora_magnitude_vector` `[out]`
//! - `modules_to_save`: `base_model.model.<module>.<param>` (e.g. `lm_head.weight` `[out, in]`)
//! - trained biases: `base_model.model.<path>.base_layer.bias` on adapted layers, `<path>.bias`
//!   elsewhere; metadata `{"format": "pt"}`.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::base::Layout;
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use crate::adapter::LoraAdapter;
use crate::base::replace_value;
use crate::config::{Bias, LoraConfig};
use crate::error::{LoraError, Result};
use crate::model::LoraModel;
use crate::target::{AdapterTarget, OtherParam, OtherParamMut};

/// File names PEFT uses.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// File names PEFT uses.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const PREFIX: &str = "base_model.model.";

/// A tensor on the host: shape and f32 values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Values.
    pub data: Vec<f32>,
}

impl HostTensor {
    fn from_tensor<const D: usize>(t: Tensor<D>, key: &str) -> Result<Self> {
        let shape = t.dims().to_vec();
        let data = t
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| LoraError::State(format!("`{key}`: reading tensor: {e:?}")))?;
        Ok(Self { shape, data })
    }

    fn to_tensor<const D: usize>(&self, device: &Device) -> Tensor<D> {
        Tensor::from_data(
            TensorData::new(self.data.clone(), self.shape.clone()),
            device,
        )
    }

    fn check(&self, key: &str, expected: &[usize]) -> Result<()> {
        if self.shape != expected {
            return Err(LoraError::Shape {
                key: key.into(),
                expected: expected.to_vec(),
                found: self.shape.clone(),
            });
        }
        Ok(())
    }
}

/// Reads every tensor of a safetensors file as f32 (F32, F16, BF16 and F64 are accepted).
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, HostTensor>> {
    let bytes = std::fs::read(path).map_err(|source| io_err(path, source))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| LoraError::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut out = BTreeMap::new();
    for (key, view) in st.iter() {
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::F64 => raw
                .chunks_exact(8)
                .map(|c| {
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                })
                .collect(),
            other => {
                return Err(LoraError::Dtype {
                    key: key.into(),
                    path: path.to_path_buf(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        out.insert(
            key.to_string(),
            HostTensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(out)
}

/// Writes f32 tensors with metadata `{"format": "pt"}` through kiln's one safetensors writer
/// ([`kiln_cpu::io::write_f32_safetensors`]: temporary file, fsync, rename).
pub fn write_safetensors(path: &Path, tensors: &BTreeMap<String, HostTensor>) -> Result<()> {
    let specs: Vec<(String, Vec<usize>)> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.shape.clone()))
        .collect();
    let values: Vec<&HostTensor> = tensors.values().collect();
    kiln_cpu::io::write_f32_safetensors(path, &specs, &[("format", "pt")], |i| {
        Ok::<_, LoraError>(values[i].data.clone())
    })
}

/// `bytes` to `path` through kiln's one atomic writer ([`kiln_cpu::io::write_atomic`]).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    kiln_cpu::io::write_atomic(path, |w| {
        w.write_all(bytes).map_err(|source| io_err(path, source))
    })
}

fn io_err(path: &Path, source: std::io::Error) -> LoraError {
    LoraError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One layer's tensors read from a file, ready to insert.
struct Planned {
    adapter: Option<LoraAdapter>,
    weight: Option<Tensor<2>>,
    bias: Option<Tensor<1>>,
}

impl<M: Module + AdapterTarget> LoraModel<M> {
    /// The PEFT state dict of adapter `name`: key -> tensor in PyTorch layout.
    pub fn adapter_state_dict(&self, name: &str) -> Result<BTreeMap<String, HostTensor>> {
        let config = self
            .config(name)
            .ok_or_else(|| LoraError::UnknownAdapter(name.into()))?
            .clone();
        let matcher = config.target_matcher()?;
        let mut out = BTreeMap::new();
        let mut result = Ok(());
        let mut put = |key: String, t: Result<HostTensor>| match t {
            Ok(t) => {
                out.insert(key, t);
            }
            Err(e) => result = Err(e),
        };
        self.model.visit_linears(&mut |path, l| {
            let key = format!("{PREFIX}{path}");
            let adapted = l.adapter(name);
            if let Some(a) = adapted {
                let ka = format!("{key}.lora_A.weight");
                put(
                    ka.clone(),
                    HostTensor::from_tensor(a.lora_a.val().transpose(), &ka),
                );
                let kb = format!("{key}.lora_B.weight");
                put(
                    kb.clone(),
                    HostTensor::from_tensor(a.lora_b.val().transpose(), &kb),
                );
                if let Some(m) = &a.magnitude {
                    let km = format!("{key}.lora_magnitude_vector");
                    put(km.clone(), HostTensor::from_tensor(m.val(), &km));
                }
            }
            if matcher.is_module_to_save(path) {
                let kw = format!("{key}.weight");
                put(
                    kw.clone(),
                    HostTensor::from_tensor(l.dense_weight().transpose(), &kw),
                );
                if let Some(b) = &l.bias {
                    put(
                        format!("{key}.bias"),
                        HostTensor::from_tensor(b.val(), &key),
                    );
                }
            } else if let Some(b) = &l.bias {
                let saved = match config.bias {
                    Bias::None => false,
                    Bias::All => true,
                    Bias::LoraOnly => adapted.is_some(),
                };
                if saved {
                    let kb = if adapted.is_some() {
                        format!("{key}.base_layer.bias")
                    } else {
                        format!("{key}.bias")
                    };
                    put(kb.clone(), HostTensor::from_tensor(b.val(), &kb));
                }
            }
        });
        self.model.visit_other_params(&mut |path, param, p| {
            let saved =
                matcher.is_module_to_save(path) || (param == "bias" && config.bias == Bias::All);
            if saved {
                let key = format!("{PREFIX}{path}.{param}");
                let t = match p {
                    OtherParam::Vector(p) => HostTensor::from_tensor(p.val(), &key),
                    OtherParam::Table(p) => HostTensor::from_tensor(p.values(Layout::Table), &key),
                };
                put(key, t);
            }
        });
        result?;
        Ok(out)
    }

    /// Saves adapter `name` to `dir` as PEFT does (`adapter_config.json`,
    /// `adapter_model.safetensors`), creating `dir` if needed.
    pub fn save_adapter(&self, dir: &Path, name: &str) -> Result<()> {
        let tensors = self.adapter_state_dict(name)?;
        std::fs::create_dir_all(dir).map_err(|source| io_err(dir, source))?;
        let config = self
            .config(name)
            .ok_or_else(|| LoraError::UnknownAdapter(name.into()))?;
        write_safetensors(&dir.join(WEIGHTS_FILE), &tensors)?;
        write_atomic(&dir.join(CONFIG_FILE), config.to_json_string().as_bytes())
    }

    /// Loads a PEFT adapter from `dir` under `name`. The first adapter becomes active.
    /// `modules_to_save` tensors overwrite the model's modules in place.
    pub fn load_adapter(&mut self, dir: &Path, name: &str) -> Result<()> {
        if self.config(name).is_some() {
            return Err(LoraError::DuplicateAdapter(name.into()));
        }
        let (config, plans, others) = self.read_adapter(dir, name)?;
        self.apply_plans(plans, others, |layer, adapter, key| {
            layer.insert_adapter(adapter, key)
        })?;
        self.push_config(name, config);
        if self.active_adapters().is_empty() {
            self.set_active(&[name])?;
        } else {
            self.apply_active();
        }
        Ok(())
    }

    /// Replaces the weights of the loaded adapter `name` by those in `dir` without rebuilding
    /// the model (the adapter in `dir` must have the same targets and shapes).
    pub fn hot_swap_adapter(&mut self, dir: &Path, name: &str) -> Result<()> {
        if self.config(name).is_none() {
            return Err(LoraError::UnknownAdapter(name.into()));
        }
        let (config, plans, others) = self.read_adapter(dir, name)?;
        let mut missing = None;
        self.model.visit_linears(&mut |path, l| {
            if l.adapter(name).is_some() && plans.get(path).is_none_or(|p| p.adapter.is_none()) {
                missing = Some(format!("{PREFIX}{path}.lora_A.weight"));
            }
        });
        if let Some(key) = missing {
            return Err(LoraError::MissingKey {
                key,
                file: dir.join(WEIGHTS_FILE),
            });
        }
        self.apply_plans(plans, others, |layer, adapter, key| {
            let n = adapter.name.clone();
            layer.swap_adapter_weights(&n, adapter, key)
        })?;
        let _ = config;
        Ok(())
    }

    fn apply_plans(
        &mut self,
        mut plans: HashMap<String, Planned>,
        mut others: HashMap<String, HostTensor>,
        mut put: impl FnMut(&mut crate::linear::LoraLinear, LoraAdapter, &str) -> Result<()>,
    ) -> Result<()> {
        let device = self.device();
        let mut result = Ok(());
        self.model.visit_linears_mut(&mut |path, layer| {
            let Some(plan) = plans.remove(path) else {
                return;
            };
            if let Some(w) = plan.weight {
                layer.set_weight(w);
            }
            if let (Some(b), Some(slot)) = (plan.bias, layer.bias.as_mut()) {
                replace_value(slot, b);
            }
            if let Some(a) = plan.adapter
                && result.is_ok()
            {
                result = put(layer, a, &format!("{PREFIX}{path}"));
            }
        });
        result?;
        self.model.visit_other_params_mut(&mut |path, param, p| {
            let Some(t) = others.remove(&format!("{PREFIX}{path}.{param}")) else {
                return;
            };
            match p {
                OtherParamMut::Vector(p) => replace_value(p, t.to_tensor(&device)),
                OtherParamMut::Table(p) => p.replace(t.to_tensor(&device), Layout::Table),
            }
        });
        Ok(())
    }

    fn device(&self) -> Device {
        let mut device = None;
        self.model.visit_linears(&mut |_, l| {
            if device.is_none() {
                device = Some(l.weight.device());
            }
        });
        device.unwrap_or_default()
    }

    /// Reads and checks an adapter directory against the model without changing the model.
    #[allow(clippy::type_complexity)]
    fn read_adapter(
        &self,
        dir: &Path,
        name: &str,
    ) -> Result<(
        LoraConfig,
        HashMap<String, Planned>,
        HashMap<String, HostTensor>,
    )> {
        let config = LoraConfig::from_file(&dir.join(CONFIG_FILE))?;
        let file: PathBuf = dir.join(WEIGHTS_FILE);
        let mut tensors =
            current_keys(read_safetensors(&file)?, self.model.legacy_path_prefixes())?;
        let matcher = config.target_matcher()?;
        let output = self.model.output_layer().map(str::to_string);
        let device = self.device();
        let mut plans = HashMap::new();
        let mut result = Ok(());
        let mut targeted = 0;
        self.model.visit_linears(&mut |path, l| {
            if result.is_err() {
                return;
            }
            let key = format!("{PREFIX}{path}");
            let (d_in, d_out) = (l.d_in(), l.d_out());
            let mut plan = Planned {
                adapter: None,
                weight: None,
                bias: None,
            };
            let step = (|| -> Result<()> {
                if matcher.is_target(path, output.as_deref() == Some(path)) {
                    targeted += 1;
                    let rank = config.module_rank(path);
                    let a = take(
                        &mut tensors,
                        &file,
                        format!("{key}.lora_A.weight"),
                        &[rank.r, d_in],
                    )?;
                    let b = take(
                        &mut tensors,
                        &file,
                        format!("{key}.lora_B.weight"),
                        &[d_out, rank.r],
                    )?;
                    let m = if config.use_dora {
                        let k = format!("{key}.lora_magnitude_vector");
                        Some(take(&mut tensors, &file, k, &[d_out])?)
                    } else {
                        None
                    };
                    plan.adapter = Some(LoraAdapter::from_factors(
                        name,
                        a.to_tensor::<2>(&device).transpose(),
                        b.to_tensor::<2>(&device).transpose(),
                        m.map(|m| m.to_tensor::<1>(&device)),
                        rank.alpha,
                        rank.scale,
                        config.lora_dropout,
                    ));
                    let k = format!("{key}.base_layer.bias");
                    if tensors.contains_key(&k) {
                        plan.bias =
                            Some(take(&mut tensors, &file, k, &[d_out])?.to_tensor(&device));
                    }
                }
                if matcher.is_module_to_save(path) {
                    let w = take(&mut tensors, &file, format!("{key}.weight"), &[d_out, d_in])?;
                    plan.weight = Some(w.to_tensor::<2>(&device).transpose());
                }
                let k = format!("{key}.bias");
                if tensors.contains_key(&k) {
                    plan.bias = Some(take(&mut tensors, &file, k, &[d_out])?.to_tensor(&device));
                }
                Ok(())
            })();
            result = step;
            plans.insert(path.to_string(), plan);
        });
        result?;
        if targeted == 0 {
            return Err(LoraError::NoTarget {
                adapter: name.into(),
                targets: format!("{:?}", config.target_modules),
            });
        }
        let mut others = HashMap::new();
        let mut result = Ok(());
        self.model.visit_other_params(&mut |path, param, p| {
            let key = format!("{PREFIX}{path}.{param}");
            if let Some(t) = tensors.remove(&key) {
                if result.is_ok() {
                    result = t.check(&key, &p.dims());
                }
                others.insert(key, t);
            } else if matcher.is_module_to_save(path) && result.is_ok() {
                result = Err(LoraError::MissingKey {
                    key,
                    file: file.clone(),
                });
            }
        });
        result?;
        let skipped = self.model.skipped_path_prefixes();
        let before = tensors.len();
        tensors.retain(|key, _| {
            !key.strip_prefix(PREFIX)
                .is_some_and(|path| skipped.iter().any(|s| path.starts_with(s)))
        });
        if tensors.len() < before {
            tracing::info!(
                "{}: skipped {} tensor(s) of modules the model does not hold ({})",
                file.display(),
                before - tensors.len(),
                skipped.join(", ")
            );
        }
        if let Some(key) = tensors.keys().next() {
            return Err(LoraError::UnexpectedKey {
                key: key.clone(),
                reason: format!(
                    "no module of the model targeted by {} takes this tensor",
                    dir.join(CONFIG_FILE).display()
                ),
            });
        }
        Ok((config, plans, others))
    }
}

/// `tensors` with keys under an old module path prefix renamed to the current one (see
/// [`AdapterTarget::legacy_path_prefixes`]).
fn current_keys(
    tensors: BTreeMap<String, HostTensor>,
    legacy: &[(&str, &str)],
) -> Result<BTreeMap<String, HostTensor>> {
    if legacy.is_empty() {
        return Ok(tensors);
    }
    let mut out = BTreeMap::new();
    for (key, t) in tensors {
        let renamed = key.strip_prefix(PREFIX).and_then(|path| {
            legacy.iter().find_map(|(old, new)| {
                path.strip_prefix(old)
                    .map(|rest| format!("{PREFIX}{new}{rest}"))
            })
        });
        let current = renamed.unwrap_or_else(|| key.clone());
        if out.insert(current.clone(), t).is_some() {
            return Err(LoraError::UnexpectedKey {
                key,
                reason: format!("names the same tensor as `{current}` (in the current layout)"),
            });
        }
    }
    Ok(out)
}

/// Removes `key` from `tensors`, checking its shape.
fn take(
    tensors: &mut BTreeMap<String, HostTensor>,
    file: &Path,
    key: String,
    expected: &[usize],
) -> Result<HostTensor> {
    let t = tensors.remove(&key).ok_or_else(|| LoraError::MissingKey {
        key: key.clone(),
        file: file.to_path_buf(),
    })?;
    t.check(&key, expected)?;
    Ok(t)
}
