//! PEFT's rules for which module paths an adapter targets (`check_target_module_exists`) and
//! which `rank_pattern` / `alpha_pattern` key applies to a path (`get_pattern_key`).
use regex::Regex;

use crate::error::{LoraError, Result};

/// Which linear layers get an adapter (`target_modules`).
#[derive(Debug, Clone, PartialEq)]
pub enum TargetModules {
    /// Module names: a layer matches when its path equals a name or ends with `.name`.
    Names(Vec<String>),
    /// A regular expression that must match the whole module path.
    Regex(String),
    /// Every adaptable linear layer except the model's output layer (`lm_head`).
    AllLinear,
}

/// `target_modules`, `exclude_modules`, `modules_to_save` and `layers_to_transform` compiled once.
#[derive(Debug, Clone)]
pub struct TargetMatcher {
    targets: Option<Compiled>,
    exclude: Option<Compiled>,
    modules_to_save: Vec<Regex>,
    layers: Option<(Vec<usize>, Vec<Regex>)>,
}

#[derive(Debug, Clone)]
enum Compiled {
    Names(Vec<String>),
    Regex(Regex),
    AllLinear,
}

fn compile(field: &str, t: &TargetModules) -> Result<Compiled> {
    Ok(match t {
        TargetModules::Names(n) => Compiled::Names(n.clone()),
        TargetModules::AllLinear => Compiled::AllLinear,
        TargetModules::Regex(re) => Compiled::Regex(regex(field, &format!("^(?:{re})$"))?),
    })
}

fn regex(field: &str, re: &str) -> Result<Regex> {
    Regex::new(re).map_err(|e| LoraError::Config {
        field: field.into(),
        reason: format!("invalid regular expression `{re}`: {e}"),
    })
}

impl Compiled {
    /// PEFT: a string is a full-match regex; a list matches the path or a `.name` suffix.
    fn matches(&self, path: &str, is_output_layer: bool) -> bool {
        match self {
            Compiled::Regex(re) => re.is_match(path),
            Compiled::Names(names) => names
                .iter()
                .any(|n| path == n || path.ends_with(&format!(".{n}"))),
            Compiled::AllLinear => !is_output_layer,
        }
    }
}

impl TargetMatcher {
    /// The `target_modules` names (when given as names) that match none of `paths`.
    pub(crate) fn unmatched_names<'a>(
        &self,
        paths: impl Iterator<Item = &'a str> + Clone,
    ) -> Vec<String> {
        let Some(Compiled::Names(names)) = &self.targets else {
            return Vec::new();
        };
        names
            .iter()
            .filter(|n| {
                !paths
                    .clone()
                    .any(|p| p == n.as_str() || p.ends_with(&format!(".{n}")))
            })
            .cloned()
            .collect()
    }

    /// Compiles PEFT's matching fields: `target_modules`, `exclude_modules`, `modules_to_save`
    /// and `layers_to_transform` with its `layers_pattern` (empty: PEFT's default pattern).
    /// Invalid regular expressions are config errors naming the field.
    pub fn new(
        target_modules: Option<&TargetModules>,
        exclude_modules: Option<&TargetModules>,
        modules_to_save: &[String],
        layers_to_transform: Option<(&[usize], &[String])>,
    ) -> Result<Self> {
        let targets = target_modules
            .map(|t| compile("target_modules", t))
            .transpose()?;
        let exclude = exclude_modules
            .map(|t| compile("exclude_modules", t))
            .transpose()?;
        let modules_to_save = modules_to_save
            .iter()
            .map(|m| regex("modules_to_save", &format!(r"^(?:|.*\.){m}(?:$|\..*)")))
            .collect::<Result<_>>()?;
        let layers = match layers_to_transform {
            Some((idx, layers_pattern)) if !idx.is_empty() => {
                let pats = if layers_pattern.is_empty() {
                    vec![regex("layers_pattern", r"^.*?\.[^.]*\.(\d+)\.")?]
                } else {
                    layers_pattern
                        .iter()
                        .map(|p| regex("layers_pattern", &format!(r"^(?:|.*?\.){p}\.(\d+)\.")))
                        .collect::<Result<Vec<_>>>()?
                };
                Some((idx.to_vec(), pats))
            }
            _ => None,
        };
        Ok(Self {
            targets,
            exclude,
            modules_to_save,
            layers,
        })
    }

    /// Whether the linear layer at `path` gets an adapter. `is_output_layer` marks the layer
    /// `all-linear` leaves out (the LM head).
    pub fn is_target(&self, path: &str, is_output_layer: bool) -> bool {
        if self
            .exclude
            .as_ref()
            .is_some_and(|e| e.matches(path, is_output_layer))
        {
            return false;
        }
        if self.is_module_to_save(path) {
            return false;
        }
        let Some(targets) = &self.targets else {
            return false;
        };
        if !targets.matches(path, is_output_layer) {
            return false;
        }
        match (&self.layers, targets) {
            (Some((indices, pats)), Compiled::Names(_)) => pats.iter().any(|re| {
                re.captures(path)
                    .and_then(|c| c.get(1))
                    .and_then(|m| m.as_str().parse::<usize>().ok())
                    .is_some_and(|i| indices.contains(&i))
            }),
            _ => true,
        }
    }

    /// Whether the module at `path` (or a parent of it) is listed in `modules_to_save`.
    pub fn is_module_to_save(&self, path: &str) -> bool {
        self.modules_to_save.iter().any(|re| re.is_match(path))
    }
}

/// PEFT's `get_pattern_key`: the first key `k` with `(.*\.)?(k)$` matching `path`, and its value.
/// Keys are regular expressions; one that does not compile matches nothing.
pub fn pattern_lookup<T: Copy>(pattern: &[(String, T)], path: &str) -> Option<T> {
    pattern.iter().find_map(|(k, v)| {
        Regex::new(&format!(r"^(?:.*\.)?(?:{k})$"))
            .ok()
            .filter(|re| re.is_match(path))
            .map(|_| *v)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> TargetModules {
        TargetModules::Names(n.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn list_matches_suffix_after_a_dot_only() {
        let m = TargetMatcher::new(Some(&names(&["q_proj"])), None, &[], None).unwrap();
        assert!(m.is_target("model.layers.0.self_attn.q_proj", false));
        assert!(m.is_target("q_proj", false));
        assert!(!m.is_target("model.layers.0.self_attn.xq_proj", false));
    }

    #[test]
    fn regex_must_match_the_whole_path() {
        let t = TargetModules::Regex(r".*\.layers\.1\..*(q|v)_proj".into());
        let m = TargetMatcher::new(Some(&t), None, &[], None).unwrap();
        assert!(m.is_target("model.layers.1.self_attn.v_proj", false));
        assert!(!m.is_target("model.layers.0.self_attn.v_proj", false));
        assert!(!m.is_target("model.layers.1.self_attn.v_proj_x", false));
    }

    #[test]
    fn all_linear_skips_the_output_layer_and_modules_to_save() {
        let all = Some(&TargetModules::AllLinear);
        let m = TargetMatcher::new(all, None, &[], None).unwrap();
        assert!(m.is_target("model.layers.0.mlp.up_proj", false));
        assert!(!m.is_target("lm_head", true));
        let m = TargetMatcher::new(all, None, &["up_proj".into()], None).unwrap();
        assert!(!m.is_target("model.layers.0.mlp.up_proj", false));
    }

    #[test]
    fn layers_to_transform_and_exclude() {
        let targets = names(&["q_proj", "k_proj"]);
        let exclude = names(&["k_proj"]);
        let layers: (&[usize], &[String]) = (&[1], &[]);
        let m = TargetMatcher::new(Some(&targets), Some(&exclude), &[], Some(layers)).unwrap();
        assert!(m.is_target("model.layers.1.self_attn.q_proj", false));
        assert!(!m.is_target("model.layers.0.self_attn.q_proj", false));
        assert!(!m.is_target("model.layers.1.self_attn.k_proj", false));
    }

    #[test]
    fn pattern_keys_first_match_wins_and_need_a_dot_boundary() {
        let p = vec![
            ("v_proj".to_string(), 3usize),
            ("layers.0.*".to_string(), 5),
        ];
        assert_eq!(
            pattern_lookup(&p, "model.layers.0.self_attn.v_proj"),
            Some(3)
        );
        assert_eq!(
            pattern_lookup(&p, "model.layers.0.self_attn.q_proj"),
            Some(5)
        );
        assert_eq!(pattern_lookup(&p, "model.layers.1.self_attn.xv_proj"), None);
    }

    #[test]
    fn bad_regex_is_a_config_error() {
        let t = TargetModules::Regex("(".into());
        assert!(matches!(
            TargetMatcher::new(Some(&t), None, &[], None),
            Err(LoraError::Config { field, .. }) if field == "target_modules"
        ));
    }
}
