//! `LoraConfig`: PEFT's `adapter_config.json` for LoRA, parsed into enums at the edge.
//!
//! Field names and JSON shapes follow PEFT (`src/peft/tuners/lora/config.py`). Fields kiln does
//! not know are kept (so a saved config still carries them) and reported with a warning when
//! they hold a value other than `null`, `false` or empty.
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::path::Path;

use crate::error::{LoraError, Result};
use crate::pattern::{TargetMatcher, TargetModules, pattern_lookup};

/// How a new adapter's weights start (`init_lora_weights`).
#[derive(Debug, Clone, PartialEq)]
pub enum InitLoraWeights {
    /// `true`: A kaiming-uniform (a = √5, i.e. U(-1/√in, 1/√in)), B zeros.
    Kaiming,
    /// `false`: A and B random (kaiming-uniform both); the adapter changes the output at once.
    Random,
    /// `"gaussian"`: A ~ N(0, 1/r), B zeros.
    Gaussian,
    /// `"pissa"` or `"pissa_niter_K"`: A and B from the top-r SVD of the base weight, which keeps
    /// the residual. kiln computes the exact SVD for both spellings.
    Pissa,
    /// Any other PEFT initialisation (olora, loftq, eva, corda...): loadable, not creatable.
    Other(String),
}

/// Which base biases train (`bias`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bias {
    /// No bias trains.
    #[default]
    None,
    /// Every bias of the model trains and is saved.
    All,
    /// The biases of adapted layers train and are saved.
    LoraOnly,
}

/// A LoRA adapter's configuration, as in PEFT's `adapter_config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Always `"LORA"`; anything else is refused when reading.
    #[serde(default = "lora_type")]
    pub peft_type: String,
    /// Rank of the adapters.
    #[serde(default = "default_r")]
    pub r: usize,
    /// Scaling numerator: `scale = lora_alpha / r` (or `/ √r` with rsLoRA).
    #[serde(default = "default_alpha")]
    pub lora_alpha: f64,
    /// Dropout probability on the adapter input during training.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Layers to adapt.
    #[serde(
        default,
        serialize_with = "ser_targets",
        deserialize_with = "de_targets"
    )]
    pub target_modules: Option<TargetModules>,
    /// Layers never to adapt (same matching rules as `target_modules`).
    #[serde(
        default,
        serialize_with = "ser_targets",
        deserialize_with = "de_targets"
    )]
    pub exclude_modules: Option<TargetModules>,
    /// rsLoRA: `scale = lora_alpha / √r`.
    #[serde(default)]
    pub use_rslora: bool,
    /// DoRA: learn a magnitude vector per output row.
    #[serde(default)]
    pub use_dora: bool,
    /// Initialisation of new adapters.
    #[serde(
        default = "default_init",
        serialize_with = "ser_init",
        deserialize_with = "de_init"
    )]
    pub init_lora_weights: InitLoraWeights,
    /// Which base biases train.
    #[serde(default)]
    pub bias: Bias,
    /// Modules trained in full and saved with the adapter (e.g. `lm_head`, `embed_tokens`).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// Per-module rank overrides; keys match a module path as `(.*\.)?key$`; first match wins.
    #[serde(default, with = "ordered_map")]
    pub rank_pattern: Vec<(String, usize)>,
    /// Per-module alpha overrides, matched like `rank_pattern`.
    #[serde(default, with = "ordered_map")]
    pub alpha_pattern: Vec<(String, f64)>,
    /// Only adapt layers with these indices (`null` = all).
    #[serde(default, deserialize_with = "de_layers")]
    pub layers_to_transform: Option<Vec<usize>>,
    /// Name of the layer list whose index `layers_to_transform` reads (e.g. `layers`).
    #[serde(default, deserialize_with = "de_string_or_list")]
    pub layers_pattern: Option<Vec<String>>,
    /// Must be `false` (only GPT-2's Conv1D stores weights `[in, out]` in PyTorch).
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// PEFT's trainable bias on B; kiln does not support it (must be `false`).
    #[serde(default)]
    pub lora_bias: bool,
    /// The base model the adapter was trained on.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// PEFT task type, e.g. `CAUSAL_LM`.
    #[serde(default)]
    pub task_type: Option<String>,
    /// Whether PEFT loads the adapter frozen.
    #[serde(default)]
    pub inference_mode: bool,
    /// Every other field of the file, kept as read.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn lora_type() -> String {
    "LORA".into()
}
fn default_r() -> usize {
    8
}
fn default_alpha() -> f64 {
    8.0
}
fn default_init() -> InitLoraWeights {
    InitLoraWeights::Kaiming
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            peft_type: lora_type(),
            r: default_r(),
            lora_alpha: default_alpha(),
            lora_dropout: 0.0,
            target_modules: None,
            exclude_modules: None,
            use_rslora: false,
            use_dora: false,
            init_lora_weights: InitLoraWeights::Kaiming,
            bias: Bias::None,
            modules_to_save: None,
            rank_pattern: Vec::new(),
            alpha_pattern: Vec::new(),
            layers_to_transform: None,
            layers_pattern: None,
            fan_in_fan_out: false,
            lora_bias: false,
            base_model_name_or_path: None,
            task_type: Some("CAUSAL_LM".into()),
            inference_mode: false,
            extra: Map::new(),
        }
    }
}

/// Rank, alpha and scale of the adapter on one module, after `rank_pattern` / `alpha_pattern`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModuleRank {
    /// Rank.
    pub r: usize,
    /// Alpha.
    pub alpha: f64,
    /// `alpha / r`, or `alpha / √r` with rsLoRA.
    pub scale: f64,
}

impl LoraConfig {
    /// A config with rank `r`, `lora_alpha` and the given target modules; the rest PEFT's defaults.
    pub fn new(r: usize, lora_alpha: f64, target_modules: TargetModules) -> Self {
        Self {
            r,
            lora_alpha,
            target_modules: Some(target_modules),
            ..Self::default()
        }
    }

    /// Parses `adapter_config.json` text; `path` only names the file in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let config: LoraConfig = serde_json::from_str(text).map_err(|source| LoraError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        config.validate()?;
        let set: Vec<&str> = config
            .extra
            .iter()
            .filter(|(k, v)| !is_unset(v) && !INFORMATIONAL.contains(&k.as_str()))
            .map(|(k, _)| k.as_str())
            .collect();
        if !set.is_empty() {
            tracing::warn!(
                "{}: ignoring adapter config fields kiln does not know: {}",
                path.display(),
                set.join(", ")
            );
        }
        Ok(config)
    }

    /// Reads `adapter_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| LoraError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text, path)
    }

    /// PEFT-compatible JSON text (pretty, two-space indent as PEFT writes it).
    pub fn to_json_string(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks the values kiln relies on; called by every reader.
    pub fn validate(&self) -> Result<()> {
        let err = |field: &str, reason: String| {
            Err(LoraError::Config {
                field: field.into(),
                reason,
            })
        };
        if self.peft_type != "LORA" {
            return Err(LoraError::UnsupportedPeftType(self.peft_type.clone()));
        }
        if self.r == 0 {
            return err("r", "must be a positive integer, found 0".into());
        }
        if let Some((k, _)) = self.rank_pattern.iter().find(|(_, r)| *r == 0) {
            return err("rank_pattern", format!("rank for `{k}` must be positive"));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return err(
                "lora_dropout",
                format!("must be in [0, 1), found {}", self.lora_dropout),
            );
        }
        if self.fan_in_fan_out {
            return err("fan_in_fan_out", "`true` is not supported".into());
        }
        if self.lora_bias {
            return err("lora_bias", "`true` is not supported".into());
        }
        self.target_matcher()?;
        Ok(())
    }

    /// `target_modules`, `exclude_modules`, `modules_to_save` and `layers_to_transform` /
    /// `layers_pattern` compiled once.
    ///
    /// # Errors
    /// [`LoraError::Config`] naming the field whose regular expression does not compile.
    pub(crate) fn target_matcher(&self) -> Result<TargetMatcher> {
        TargetMatcher::new(
            self.target_modules.as_ref(),
            self.exclude_modules.as_ref(),
            self.modules_to_save.as_deref().unwrap_or_default(),
            self.layers_to_transform
                .as_deref()
                .map(|idx| (idx, self.layers_pattern.as_deref().unwrap_or_default())),
        )
    }

    /// Rank, alpha and scale for the module at `path`, applying `rank_pattern` / `alpha_pattern`.
    pub fn module_rank(&self, path: &str) -> ModuleRank {
        let r = pattern_lookup(&self.rank_pattern, path).unwrap_or(self.r);
        let alpha = pattern_lookup(&self.alpha_pattern, path).unwrap_or(self.lora_alpha);
        let scale = if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        };
        ModuleRank { r, alpha, scale }
    }
}

/// Extra fields that say where an adapter came from and never change its maths.
const INFORMATIONAL: &[&str] = &["peft_version", "auto_mapping", "revision"];

fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn ser_targets<S: Serializer>(
    t: &Option<TargetModules>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match t {
        None => s.serialize_none(),
        Some(TargetModules::Names(names)) => names.serialize(s),
        Some(TargetModules::Regex(re)) => s.serialize_str(re),
        Some(TargetModules::AllLinear) => s.serialize_str("all-linear"),
    }
}

fn de_targets<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<TargetModules>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Raw>::deserialize(d)? {
        None => None,
        Some(Raw::One(s)) if s.eq_ignore_ascii_case("all-linear") => Some(TargetModules::AllLinear),
        Some(Raw::One(s)) => Some(TargetModules::Regex(s)),
        Some(Raw::Many(v)) => Some(TargetModules::Names(v)),
    })
}

fn ser_init<S: Serializer>(i: &InitLoraWeights, s: S) -> std::result::Result<S::Ok, S::Error> {
    match i {
        InitLoraWeights::Kaiming => s.serialize_bool(true),
        InitLoraWeights::Random => s.serialize_bool(false),
        InitLoraWeights::Gaussian => s.serialize_str("gaussian"),
        InitLoraWeights::Pissa => s.serialize_str("pissa"),
        InitLoraWeights::Other(o) => s.serialize_str(o),
    }
}

fn de_init<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<InitLoraWeights, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Flag(bool),
        Name(String),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Flag(true) => InitLoraWeights::Kaiming,
        Raw::Flag(false) => InitLoraWeights::Random,
        Raw::Name(n) if n.eq_ignore_ascii_case("gaussian") => InitLoraWeights::Gaussian,
        Raw::Name(n) if n == "pissa" || n.starts_with("pissa_niter_") => InitLoraWeights::Pissa,
        Raw::Name(n) => InitLoraWeights::Other(n),
    })
}

fn de_layers<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Vec<usize>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(usize),
        Many(Vec<usize>),
    }
    Ok(match Option::<Raw>::deserialize(d)? {
        None => None,
        Some(Raw::One(i)) => Some(vec![i]),
        Some(Raw::Many(v)) => Some(v),
    })
}

fn de_string_or_list<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Raw>::deserialize(d)? {
        None => None,
        Some(Raw::One(s)) => Some(vec![s]),
        Some(Raw::Many(v)) => Some(v),
    })
}

/// A JSON object read and written in file order (PEFT's pattern dicts are order-sensitive).
mod ordered_map {
    use serde::de::{DeserializeOwned, Error};
    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::{Map, Value};

    #[allow(clippy::ptr_arg)]
    pub fn serialize<T: Serialize, S: Serializer>(
        v: &Vec<(String, T)>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(v.len()))?;
        for (k, x) in v {
            map.serialize_entry(k, x)?;
        }
        map.end()
    }

    pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(String, T)>, D::Error> {
        let map = Option::<Map<String, Value>>::deserialize(d)?.unwrap_or_default();
        map.into_iter()
            .map(|(k, v)| {
                let x = serde_json::from_value(v)
                    .map_err(|e| D::Error::custom(format!("`{k}`: {e}")))?;
                Ok((k, x))
            })
            .collect()
    }
}
