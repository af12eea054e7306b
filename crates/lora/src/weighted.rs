//! Weighted combination of LoRA adapters into a new one (PEFT `add_weighted_adapter`).
use burn::module::Module;
use burn::tensor::Tensor;

use crate::adapter::LoraAdapter;
use crate::config::LoraConfig;
use crate::error::{LoraError, Result};
use crate::model::LoraModel;
use crate::pattern::TargetModules;
use crate::target::AdapterTarget;

/// How adapters are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combination {
    /// `A = Σ sign·√|wᵢsᵢ| Aᵢ`, `B = Σ √|wᵢsᵢ| Bᵢ`; all ranks equal; an approximation of
    /// `Σ wᵢ ΔWᵢ` (cross terms remain).
    Linear,
    /// `A = cat(wᵢ sᵢ Aᵢ)`, `B = cat(Bᵢ)`; rank `Σ rᵢ`; exactly `Σ wᵢ ΔWᵢ`.
    Cat,
}

impl<M: Module + AdapterTarget> LoraModel<M> {
    /// Adds adapter `new_name` combining `adapters` (name, weight) as PEFT's
    /// `add_weighted_adapter` does: the new config is the first adapter's with
    /// `r = lora_alpha = new rank`, union of targets and no rank/alpha patterns. The new adapter
    /// is inactive. DoRA adapters cannot be combined.
    pub fn add_weighted_adapter(
        &mut self,
        adapters: &[(&str, f64)],
        new_name: &str,
        combination: Combination,
    ) -> Result<()> {
        if self.config(new_name).is_some() {
            return Err(LoraError::DuplicateAdapter(new_name.into()));
        }
        let mut configs = Vec::new();
        for (n, _) in adapters {
            let c = self
                .config(n)
                .ok_or_else(|| LoraError::UnknownAdapter(n.to_string()))?;
            if c.use_dora {
                return Err(LoraError::State(format!(
                    "adapter `{n}` is a DoRA adapter; weighted combination supports plain LoRA only"
                )));
            }
            configs.push(c.clone());
        }
        let Some(first) = configs.first().cloned() else {
            return Err(LoraError::State(
                "add_weighted_adapter needs at least one adapter".into(),
            ));
        };
        let combination = if adapters.len() == 1 {
            Combination::Linear
        } else {
            combination
        };
        let ranks: Vec<usize> = configs
            .iter()
            .map(|c| c.rank_pattern.iter().map(|(_, r)| *r).fold(c.r, usize::max))
            .collect();
        let new_rank = match combination {
            Combination::Linear => {
                if ranks.iter().any(|r| *r != ranks[0]) {
                    return Err(LoraError::State(format!(
                        "combination `linear` needs adapters of equal rank, found {ranks:?}"
                    )));
                }
                ranks[0]
            }
            Combination::Cat => ranks.iter().sum(),
        };
        let config = LoraConfig {
            r: new_rank,
            lora_alpha: new_rank as f64,
            target_modules: Some(union_targets(&configs)?),
            rank_pattern: Vec::new(),
            alpha_pattern: Vec::new(),
            ..first
        };
        let scale = config.module_rank("").scale;
        let mut result = Ok(());
        self.model.visit_linears_mut(&mut |path, layer| {
            let parts: Vec<(&LoraAdapter, f64)> = adapters
                .iter()
                .filter_map(|(n, w)| layer.adapter(n).map(|a| (a, *w)))
                .collect();
            if parts.is_empty() || result.is_err() {
                return;
            }
            let (a, b) = combine(&parts, combination, new_rank, layer.d_in(), layer.d_out());
            let adapter = LoraAdapter::from_factors(
                new_name,
                a,
                b,
                None,
                new_rank as f64,
                scale,
                config.lora_dropout,
            );
            result = layer.insert_adapter(adapter, &format!("base_model.model.{path}"));
        });
        result?;
        self.push_config(new_name, config);
        self.apply_active();
        Ok(())
    }
}

/// New `(A [in, r], B [r, out])` for one layer, zero-padded to `rank` as PEFT does.
fn combine(
    parts: &[(&LoraAdapter, f64)],
    combination: Combination,
    rank: usize,
    d_in: usize,
    d_out: usize,
) -> (Tensor<2>, Tensor<2>) {
    let device = parts[0].0.lora_a.device();
    match combination {
        Combination::Linear => {
            let mut a = Tensor::<2>::zeros([d_in, rank], &device);
            let mut b = Tensor::<2>::zeros([rank, d_out], &device);
            for (ad, w) in parts {
                let ws = w * ad.scale;
                let root = ws.abs().sqrt();
                let sign = if ws >= 0.0 { 1.0 } else { -1.0 };
                a = a + ad.lora_a.val().detach().mul_scalar(sign * root);
                b = b + ad.lora_b.val().detach().mul_scalar(root);
            }
            (a, b)
        }
        Combination::Cat => {
            let mut a_parts: Vec<Tensor<2>> = parts
                .iter()
                .map(|(ad, w)| ad.lora_a.val().detach().mul_scalar(w * ad.scale))
                .collect();
            let mut b_parts: Vec<Tensor<2>> = parts
                .iter()
                .map(|(ad, _)| ad.lora_b.val().detach())
                .collect();
            let used: usize = parts.iter().map(|(ad, _)| ad.rank()).sum();
            if used < rank {
                a_parts.push(Tensor::zeros([d_in, rank - used], &device));
                b_parts.push(Tensor::zeros([rank - used, d_out], &device));
            }
            (Tensor::cat(a_parts, 1), Tensor::cat(b_parts, 0))
        }
    }
}

/// PEFT: lists are united, regexes joined as `(a)|(b)`; mixing the two is an error.
fn union_targets(configs: &[LoraConfig]) -> Result<TargetModules> {
    let targets: Vec<&TargetModules> = configs
        .iter()
        .filter_map(|c| c.target_modules.as_ref())
        .collect();
    if targets
        .iter()
        .all(|t| matches!(t, TargetModules::AllLinear))
        && !targets.is_empty()
    {
        return Ok(TargetModules::AllLinear);
    }
    if targets.iter().all(|t| matches!(t, TargetModules::Names(_))) {
        let mut names: Vec<String> = Vec::new();
        for t in &targets {
            if let TargetModules::Names(n) = t {
                for x in n {
                    if !names.contains(x) {
                        names.push(x.clone());
                    }
                }
            }
        }
        return Ok(TargetModules::Names(names));
    }
    if targets.iter().all(|t| matches!(t, TargetModules::Regex(_))) {
        let parts: Vec<String> = targets
            .iter()
            .filter_map(|t| match t {
                TargetModules::Regex(r) => Some(format!("({r})")),
                _ => None,
            })
            .collect();
        return Ok(TargetModules::Regex(parts.join("|")));
    }
    Err(LoraError::Config {
        field: "target_modules".into(),
        reason: "cannot combine adapters whose target_modules mix lists, regexes and all-linear"
            .into(),
    })
}

/// Parses an adapter argument, `DIR` (weight 1) or `DIR=WEIGHT`, as the examples'
/// `--adapter` flag takes it.
pub fn parse_adapter_arg(s: &str) -> std::result::Result<(std::path::PathBuf, f64), String> {
    match s.rsplit_once('=') {
        Some((dir, w)) => w
            .parse()
            .map(|w| (std::path::PathBuf::from(dir), w))
            .map_err(|_| format!("{w:?} is not a weight in {s:?}")),
        None => Ok((std::path::PathBuf::from(s), 1.0)),
    }
}

impl<M: Module + AdapterTarget> LoraModel<M> {
    /// Loads PEFT adapters with weights and makes their weighted sum the active adapter: one
    /// adapter at weight 1 is loaded as `default`; otherwise each is loaded (`adapter0`,
    /// `adapter1`, ...) and combined exactly (`Σ wᵢ ΔWᵢ`, [`Combination::Cat`]) into `mix`.
    /// Returns the name of the active adapter.
    pub fn load_mix(&mut self, adapters: &[(std::path::PathBuf, f64)]) -> Result<String> {
        match adapters {
            [] => Err(LoraError::Config {
                field: "adapters".into(),
                reason: "no adapter to load".into(),
            }),
            [(dir, w)] if *w == 1.0 => {
                self.load_adapter(dir, "default")?;
                self.set_active(&["default"])?;
                Ok("default".into())
            }
            many => {
                let names: Vec<String> = (0..many.len()).map(|i| format!("adapter{i}")).collect();
                for ((dir, _), name) in many.iter().zip(&names) {
                    self.load_adapter(dir, name)?;
                }
                let weighted: Vec<(&str, f64)> = names
                    .iter()
                    .zip(many)
                    .map(|(n, (_, w))| (n.as_str(), *w))
                    .collect();
                self.add_weighted_adapter(&weighted, "mix", Combination::Cat)?;
                self.set_active(&["mix"])?;
                Ok("mix".into())
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::parse_adapter_arg;
    use std::path::PathBuf;

    #[test]
    fn adapter_args_parse_with_and_without_weight() {
        assert_eq!(
            parse_adapter_arg("runs/a").unwrap(),
            (PathBuf::from("runs/a"), 1.0)
        );
        assert_eq!(
            parse_adapter_arg("runs/a=0.5").unwrap(),
            (PathBuf::from("runs/a"), 0.5)
        );
        let err = parse_adapter_arg("runs/a=half").unwrap_err();
        assert!(err.contains("\"half\""), "{err}");
    }
}
