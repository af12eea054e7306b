//! `LoraModel`: a model plus its adapters by name, PEFT's `PeftModel` for LoRA.
use burn::module::Module;

use crate::adapter::AdapterSpec;
use crate::base::Layout;
use crate::config::{Bias, LoraConfig};
use crate::error::{LoraError, Result};
use crate::linear::RowMix;
use crate::pattern::TargetMatcher;
use crate::target::{AdapterTarget, OtherParam, OtherParamMut};

/// A model with named LoRA adapters.
///
/// It stays a burn [`Module`]: pass it (or `.model`) to a burn optimizer such as
/// `burn::optim::AdamWConfig::new().init()` and only the active adapters (plus `modules_to_save`
/// and trained biases) receive gradients; every base parameter is frozen (`require_grad = false`),
/// so autodiff neither computes nor keeps a gradient for it and the optimizer never updates it.
#[derive(Module, Debug)]
pub struct LoraModel<M: Module> {
    /// The wrapped model; call its forward directly.
    pub model: M,
    #[module(skip)]
    registry: Registry,
}

#[derive(Debug, Clone, Default)]
struct Registry {
    configs: Vec<(String, LoraConfig)>,
    /// Per adapter, `target_modules` names that matched no layer (PEFT only errors when none
    /// matches; kiln reports them in [`LoraModel::trainable_parameters_report`]).
    unmatched: Vec<(String, Vec<String>)>,
    active: Vec<String>,
    disabled: bool,
}

/// Trainable and total parameter counts (PEFT's `get_nb_trainable_parameters`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamCount {
    /// Parameters the optimizer updates.
    pub trainable: usize,
    /// All parameters of the model, adapters included.
    pub all: usize,
}

impl std::fmt::Display for ParamCount {
    /// PEFT's `print_trainable_parameters` line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = if self.all == 0 {
            0.0
        } else {
            100.0 * self.trainable as f64 / self.all as f64
        };
        write!(
            f,
            "trainable params: {} || all params: {} || trainable%: {pct:.4}",
            thousands(self.trainable),
            thousands(self.all)
        )
    }
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl<M: Module + AdapterTarget> LoraModel<M> {
    /// Wraps `model` and freezes every one of its parameters (PEFT freezes the base model).
    pub fn new(model: M) -> Self {
        Self {
            model: model.set_require_grad(false),
            registry: Registry::default(),
        }
    }

    /// Wraps `model` and adds adapter `name` from `config`, active (PEFT's `get_peft_model`).
    pub fn with_adapter(model: M, name: &str, config: LoraConfig) -> Result<Self> {
        let mut this = Self::new(model);
        this.add_adapter(name, config)?;
        Ok(this)
    }

    /// The wrapped model.
    pub fn into_inner(self) -> M {
        self.model
    }

    /// Adds a freshly initialised adapter to every layer `config` targets. The first adapter
    /// becomes active; later ones stay inactive until [`set_active`](Self::set_active).
    pub fn add_adapter(&mut self, name: &str, config: LoraConfig) -> Result<()> {
        config.validate()?;
        if self.config(name).is_some() {
            return Err(LoraError::DuplicateAdapter(name.into()));
        }
        let matcher = config.target_matcher()?;
        self.check_modules_to_save(name, &config)?;
        let output = self.model.output_layer().map(str::to_string);
        let mut targeted = 0usize;
        let mut paths = Vec::new();
        self.model.visit_linears(&mut |path, _| {
            targeted += usize::from(matcher.is_target(path, output.as_deref() == Some(path)));
            paths.push(path.to_string());
        });
        let unmatched = matcher.unmatched_names(paths.iter().map(String::as_str));
        if targeted == 0 {
            return Err(LoraError::NoTarget {
                adapter: name.into(),
                targets: format!("{:?}", config.target_modules),
            });
        }
        let mut result = Ok(());
        self.model.visit_linears_mut(&mut |path, layer| {
            if result.is_err() || !matcher.is_target(path, output.as_deref() == Some(path)) {
                return;
            }
            let rank = config.module_rank(path);
            let spec = AdapterSpec {
                r: rank.r,
                alpha: rank.alpha,
                scale: rank.scale,
                dropout: config.lora_dropout,
                init: config.init_lora_weights.clone(),
                use_dora: config.use_dora,
            };
            result = layer.add_adapter_at(name, &spec, path);
        });
        result?;
        if !unmatched.is_empty() {
            tracing::warn!(
                "adapter `{name}`: target_modules {unmatched:?} match no layer of the model"
            );
            self.registry.unmatched.push((name.to_string(), unmatched));
        }
        self.registry.configs.push((name.to_string(), config));
        if self.registry.active.is_empty() {
            self.registry.active.push(name.to_string());
        }
        self.apply_active();
        Ok(())
    }

    fn check_modules_to_save(&self, name: &str, config: &LoraConfig) -> Result<()> {
        for module in config.modules_to_save.iter().flatten() {
            let one = LoraConfig {
                modules_to_save: Some(vec![module.clone()]),
                ..LoraConfig::default()
            };
            let single = one.target_matcher()?;
            let mut found = false;
            self.model
                .visit_linears(&mut |p, _| found |= single.is_module_to_save(p));
            self.model
                .visit_other_params(&mut |p, _, _| found |= single.is_module_to_save(p));
            if !found {
                return Err(LoraError::NoModuleToSave {
                    adapter: name.into(),
                    module: module.clone(),
                });
            }
        }
        Ok(())
    }

    /// The config of adapter `name`.
    pub fn config(&self, name: &str) -> Option<&LoraConfig> {
        self.registry
            .configs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c)
    }

    /// Names of all adapters, in the order they were added.
    pub fn adapter_names(&self) -> Vec<String> {
        self.registry
            .configs
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Names of the active adapters.
    pub fn active_adapters(&self) -> &[String] {
        &self.registry.active
    }

    /// Makes `names` the active adapters (one or several; their outputs add up). Only active
    /// adapters train.
    pub fn set_active(&mut self, names: &[&str]) -> Result<()> {
        for n in names {
            if self.config(n).is_none() {
                return Err(LoraError::UnknownAdapter(n.to_string()));
            }
        }
        self.registry.active = names.iter().map(|s| s.to_string()).collect();
        self.apply_active();
        Ok(())
    }

    /// Runs the base model only (unmerging merged adapters first), until
    /// [`enable_adapters`](Self::enable_adapters).
    pub fn disable_adapters(&mut self) {
        self.registry.disabled = true;
        self.model
            .visit_linears_mut(&mut |_, l| l.set_disabled(true));
    }

    /// Runs the active adapters again.
    pub fn enable_adapters(&mut self) {
        self.registry.disabled = false;
        self.model
            .visit_linears_mut(&mut |_, l| l.set_disabled(false));
    }

    /// Gives every row of the following forwards its own adapter, as S-LoRA/Punica batch
    /// requests for different adapters: row `i` (the first input dimension) runs the base plus
    /// `rows[i]`, or the base alone for `None`, with no adapter merged into the shared weights.
    /// `None` returns to the active set. See [`crate::LoraLinear::set_row_adapters`].
    ///
    /// # Errors
    /// [`LoraError::UnknownAdapter`] for a name that is not loaded (nothing changes then).
    pub fn set_row_adapters(&mut self, rows: Option<&[Option<String>]>) -> Result<()> {
        let rows: Option<Vec<RowMix>> = rows.map(|r| {
            r.iter()
                .map(|a| a.iter().map(|n| (n.clone(), 1.0)).collect())
                .collect()
        });
        self.set_row_mixes(rows.as_deref())
    }

    /// As [`set_row_adapters`](Self::set_row_adapters) with a weighted mix per row: row `i` runs
    /// the base plus `Σ w · scale · B A x` over its `(name, w)` entries, which is exactly what
    /// PEFT's `add_weighted_adapter(adapters, weights, combination_type="cat")` builds (its
    /// concatenated A holds `w · scale · A` of each adapter, its B the `B`s, at scale 1), without
    /// building or merging that adapter. An empty mix is the base model.
    ///
    /// # Errors
    /// [`LoraError::UnknownAdapter`] for a name that is not loaded; [`LoraError::State`] for a
    /// DoRA adapter that is not alone at weight 1 in its row (DoRA's output is not linear in its
    /// factors, so a weight has no exact meaning for it). Nothing changes then.
    pub fn set_row_mixes(&mut self, rows: Option<&[RowMix]>) -> Result<()> {
        for mix in rows.unwrap_or_default() {
            for (n, w) in mix {
                let config = self
                    .config(n)
                    .ok_or_else(|| LoraError::UnknownAdapter(n.clone()))?;
                if config.use_dora && (mix.len() > 1 || *w != 1.0) {
                    return Err(LoraError::State(format!(
                        "adapter `{n}` is a DoRA adapter; it runs alone at weight 1, not in a mix"
                    )));
                }
            }
        }
        let rows = rows.map(<[RowMix]>::to_vec);
        self.model
            .visit_linears_mut(&mut |_, l| l.set_row_mixes(rows.clone()));
        Ok(())
    }

    /// Removes adapter `name` from every layer.
    pub fn delete_adapter(&mut self, name: &str) -> Result<()> {
        if self.config(name).is_none() {
            return Err(LoraError::UnknownAdapter(name.into()));
        }
        let mut result = Ok(());
        self.model.visit_linears_mut(&mut |_, l| {
            if result.is_ok() && l.adapter(name).is_some() {
                result = l.delete_adapter(name).map(|_| ());
            }
        });
        result?;
        self.registry.configs.retain(|(n, _)| n != name);
        self.registry.unmatched.retain(|(n, _)| n != name);
        self.registry.active.retain(|n| n != name);
        self.apply_active();
        Ok(())
    }

    /// Folds the active adapters into the base weights (PEFT `merge_adapter`).
    pub fn merge(&mut self) -> Result<()> {
        let active = self.registry.active.clone();
        let mut result = Ok(());
        self.model.visit_linears_mut(&mut |_, l| {
            if result.is_ok() {
                let names: Vec<String> = active
                    .iter()
                    .filter(|n| l.adapter(n).is_some())
                    .cloned()
                    .collect();
                result = l.merge(Some(&names));
            }
        });
        result
    }

    /// Restores the base weights (PEFT `unmerge_adapter`).
    pub fn unmerge(&mut self) {
        self.model.visit_linears_mut(&mut |_, l| l.unmerge());
    }

    /// Trainable and total parameter counts, as PEFT counts them.
    ///
    /// `all` counts every parameter of the model once. PEFT keeps a trainable *copy* of each
    /// `modules_to_save` module and counts it too; kiln trains the module in place, so with
    /// `modules_to_save` kiln's `all` is smaller than PEFT's by the size of those modules.
    pub fn param_count(&self) -> ParamCount {
        let plan = self.plan();
        let mut trainable = 0usize;
        // Matrices kept in their storage format are not burn parameters; PEFT counts a
        // quantized weight's elements (it doubles a packed 4-bit tensor's numel), so does kiln.
        let mut frozen = 0usize;
        self.model.visit_linears(&mut |path, l| {
            if l.weight.as_frozen().is_some() {
                frozen += l.weight.num_elements();
            }
            let mut adapted = false;
            for a in &l.adapters {
                if l.active_adapters().contains(&a.name) {
                    trainable += a.num_params();
                    adapted = true;
                }
            }
            let bias = l.bias.as_ref().map_or(0, |b| b.dims()[0]);
            if plan.module_to_save(path) {
                trainable += l.d_in() * l.d_out() + bias;
            } else if plan.bias_trains(adapted) {
                trainable += bias;
            }
        });
        self.model.visit_other_params(&mut |path, param, p| {
            if let OtherParam::Table(t) = p
                && t.as_frozen().is_some()
            {
                frozen += t.num_elements();
            }
            if plan.module_to_save(path) || (param == "bias" && plan.bias_trains(false)) {
                trainable += p.dims().iter().product::<usize>();
            }
        });
        ParamCount {
            trainable,
            all: self.model.num_params() + frozen,
        }
    }

    /// PEFT's `print_trainable_parameters` line, e.g.
    /// `trainable params: 4,884,480 || all params: 139,399,488 || trainable%: 3.5040`.
    /// With a warning line per adapter whose `target_modules` names match no layer.
    pub fn trainable_parameters_report(&self) -> String {
        let mut report = self.param_count().to_string();
        for (name, names) in &self.registry.unmatched {
            report.push_str(&format!(
                "\nWARNING: adapter `{name}`: target_modules {names:?} match no layer of the model \
                 (typo? the other entries were applied)"
            ));
        }
        report
    }

    /// `target_modules` names of adapter `name` that matched no layer of the model.
    pub fn unmatched_target_modules(&self, name: &str) -> &[String] {
        self.registry
            .unmatched
            .iter()
            .find(|(n, _)| n == name)
            .map_or(&[], |(_, v)| v.as_slice())
    }

    /// Applies the active set and what trains to every layer.
    pub(crate) fn apply_active(&mut self) {
        let plan = self.plan();
        let active = self.registry.active.clone();
        let disabled = self.registry.disabled;
        self.model.visit_linears_mut(&mut |path, l| {
            l.set_active(&active);
            l.set_disabled(disabled);
            let adapted = !l.active_adapters().is_empty();
            if plan.module_to_save(path) {
                l.set_base_trainable(true);
            } else {
                l.set_base_trainable(false);
                l.set_bias_trainable(plan.bias_trains(adapted));
            }
        });
        self.model.visit_other_params_mut(&mut |path, param, p| {
            let on = plan.module_to_save(path) || (param == "bias" && plan.bias_trains(false));
            match p {
                OtherParamMut::Vector(p) => *p = p.clone().set_require_grad(on),
                OtherParamMut::Table(p) => p.set_trainable(on, Layout::Table),
            }
        });
    }

    fn plan(&self) -> Plan {
        let mut plan = Plan::default();
        for name in &self.registry.active {
            if let Some(c) = self.config(name) {
                if let Ok(m) = c.target_matcher() {
                    plan.saves.push(m);
                }
                plan.bias = match (plan.bias, c.bias) {
                    (Bias::All, _) | (_, Bias::All) => Bias::All,
                    (Bias::LoraOnly, _) | (_, Bias::LoraOnly) => Bias::LoraOnly,
                    _ => Bias::None,
                };
            }
        }
        plan
    }

    pub(crate) fn push_config(&mut self, name: &str, config: LoraConfig) {
        self.registry.configs.push((name.to_string(), config));
    }
}

/// What trains under the active adapters' configs.
#[derive(Default)]
struct Plan {
    saves: Vec<TargetMatcher>,
    bias: Bias,
}

impl Plan {
    fn module_to_save(&self, path: &str) -> bool {
        self.saves.iter().any(|m| m.is_module_to_save(path))
    }

    fn bias_trains(&self, adapted: bool) -> bool {
        match self.bias {
            Bias::None => false,
            Bias::All => true,
            Bias::LoraOnly => adapted,
        }
    }
}
