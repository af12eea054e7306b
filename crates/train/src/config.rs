//! `SftConfig`: everything a supervised fine-tuning run needs, read from TOML or JSON.
//!
//! ```toml
//! model = "models/SmolLM2-135M-Instruct"
//! output_dir = "runs/census"
//! micro_batch_size = 4
//! grad_accum = 2
//! max_steps = 100
//!
//! [lora]            # leave out for full fine-tuning
//! r = 16
//! lora_alpha = 32
//! target_modules = ["q_proj", "v_proj"]
//!
//! [data]
//! train = ["data/train.jsonl"]
//! max_seq_len = 256
//!
//! [optimizer]
//! lr = 2e-4
//!
//! [schedule]
//! kind = "cosine"
//! warmup_ratio = 0.1
//! ```
use crate::error::{Result, TrainError};
use kiln_lora::{LoraConfig, Precision};
use kiln_models::Quantization;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A supervised fine-tuning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {
    /// Hugging Face model directory (or GGUF file).
    pub model: PathBuf,
    /// The base model's Hugging Face Hub id (`org/name`), recorded as the adapter's
    /// `base_model_name_or_path` (so `AutoPeftModelForCausalLM.from_pretrained(adapter)` finds
    /// the base) and as the model card's `base_model`. Unset: taken from the model's location
    /// when it tells (a Hugging Face cache snapshot, kiln's default model), else the adapter
    /// names the local model directory as PEFT does (a GGUF file names no base PEFT loads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model_id: Option<String>,
    /// How the model's matrices are held: `stored` (default: a GGUF's blocks and safetensors'
    /// f16/bf16 kept as the file holds them), `f32`, `nf4`, `fp4` or `int8` (quantized at load
    /// as bitsandbytes does; QLoRA). Frozen matrices are multiplied a tile at a time; matrices
    /// that train (full fine-tuning) become dense f32 parameters.
    #[serde(default)]
    pub quantization: Quantization,
    /// Where checkpoints, metrics, the adapter and the model card go.
    #[serde(default = "default_output_dir")]
    pub output_dir: PathBuf,
    /// LoRA adapter to train; `None` trains every parameter (full fine-tuning).
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    /// Datasets and how they become batches.
    #[serde(default)]
    pub data: DataOptions,
    /// Rows per forward pass.
    #[serde(default = "one")]
    pub micro_batch_size: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Optimizer steps to run; when both are set the smaller of this and `epochs` wins.
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Passes over the training data (may be fractional).
    #[serde(default)]
    pub epochs: Option<f64>,
    #[serde(default)]
    pub optimizer: AdamWOptions,
    #[serde(default)]
    pub schedule: ScheduleOptions,
    /// Clip the gradients' global L2 norm to this value (PyTorch's `clip_grad_norm_`).
    #[serde(default = "default_clip")]
    pub max_grad_norm: Option<f64>,
    #[serde(default)]
    pub eval: EvalOptions,
    #[serde(default)]
    pub save: SaveOptions,
    /// Stop when the validation loss has not improved for `patience` evaluations.
    #[serde(default)]
    pub early_stopping: Option<EarlyStopping>,
    /// Seed of data shuffling, adapter initialisation and dropout.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// `cpu`, `wgpu` or `cuda[:N]`.
    #[serde(default = "default_device")]
    pub device: String,
    /// What to do when the loss or a gradient is NaN or infinite.
    #[serde(default)]
    pub on_non_finite: NonFinitePolicy,
    /// Recompute activations in the backward pass instead of keeping them.
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// How gradients are computed: `fused` (kiln's hand-written CPU backward where it covers
    /// the model, burn's autodiff elsewhere) or `autodiff` (always burn's).
    #[serde(default)]
    pub backward: BackwardPath,
    /// `f32`, or `bf16`: matrix products with bf16 inputs and outputs (f32 accumulation) and
    /// bf16 activations kept for the backward pass, as `torch.autocast` with bfloat16; norms,
    /// softmax, loss and the optimizer stay f32. Runs on kiln's fused CPU backward only.
    /// Unset: bf16 on CPUs with bf16 units where the fused backward covers the model, f32
    /// elsewhere ([`Precision::native`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    /// Log a metrics line every this many optimizer steps.
    #[serde(default = "one")]
    pub log_every: usize,
    /// A Jinja chat template file to use instead of the model's own (for GGUF files that carry
    /// none); see [`kiln_data::ChatTemplate::select`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<PathBuf>,
    /// What [`crate::run_sft`] writes besides the adapter.
    #[serde(default, skip_serializing_if = "ExportOptions::is_default")]
    pub export: ExportOptions,
}

/// Exports of the trained model besides the adapter (or trained weights).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ExportOptions {
    /// One GGUF file llama.cpp loads, `output_dir/model-<TYPE>.gguf` (adapter merged):
    /// `Q8_0`, `Q4_K_M`, `Q4_0`, `F16`, `BF16` or `F32`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gguf: Option<kiln_models::gguf::GgufFileType>,
    /// The merged model as a Hugging Face directory, `output_dir/merged` (f32).
    #[serde(default)]
    pub merged: bool,
}

impl ExportOptions {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Where the data comes from and how it is cut into batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataOptions {
    /// Training files (JSONL, alpaca, chat...; the data crate reads them).
    #[serde(default)]
    pub train: Vec<PathBuf>,
    /// Validation files; when empty, `validation_split` of the training data is held out.
    #[serde(default)]
    pub validation: Vec<PathBuf>,
    /// Fraction of the training examples held out for validation when no file is given.
    #[serde(default)]
    pub validation_split: f64,
    /// Longest sequence in tokens; longer examples are truncated.
    #[serde(default = "default_seq_len")]
    pub max_seq_len: usize,
    /// Pack several examples into one row (attention never crosses examples).
    #[serde(default)]
    pub packing: bool,
    /// Shuffle the training examples every epoch (with `seed`).
    #[serde(default = "yes")]
    pub shuffle: bool,
    /// Compute the loss on the completion only (prompt tokens get label -100).
    #[serde(default = "yes")]
    pub completion_only: bool,
    /// Read the training files while training instead of loading them
    /// ([`StreamedBatches`](crate::StreamedBatches)): memory stays flat whatever their size. Packs rows (`packing` is implied); validation
    /// comes from `validation` files, not a split.
    #[serde(default)]
    pub streaming: bool,
    /// Packed rows the streaming shuffle buffer holds (`datasets`' `buffer_size`); 1 keeps the
    /// files' order.
    #[serde(default = "default_shuffle_buffer")]
    pub shuffle_buffer: usize,
}

fn default_shuffle_buffer() -> usize {
    1000
}

/// `torch.optim.AdamW` hyperparameters (PyTorch's defaults except the learning rate).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWOptions {
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "default_betas")]
    pub betas: (f64, f64),
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Decoupled weight decay; never applied to norm weights and biases.
    #[serde(default)]
    pub weight_decay: f64,
}

/// The shape of the learning-rate curve after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Constant,
    #[default]
    Linear,
    Cosine,
}

/// Learning-rate schedule: linear warmup from 0, then constant, linear or cosine decay to `min_lr`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ScheduleOptions {
    #[serde(default)]
    pub kind: ScheduleKind,
    /// Warmup steps (wins over `warmup_ratio`).
    #[serde(default)]
    pub warmup_steps: Option<usize>,
    /// Warmup as a fraction of the total steps.
    #[serde(default)]
    pub warmup_ratio: Option<f64>,
    /// Learning rate at the end of the decay.
    #[serde(default)]
    pub min_lr: f64,
}

/// Validation during training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalOptions {
    /// Evaluate every N optimizer steps (and at the end); `None` only at the end.
    #[serde(default)]
    pub every: Option<usize>,
    /// Evaluate on at most this many validation batches.
    #[serde(default)]
    pub max_batches: Option<usize>,
    /// At the end of training, generate for up to this many held-out examples and score the
    /// answers ([`crate::GenerationEvalCallback`]); off when `None`.
    #[serde(default)]
    pub generation_examples: Option<usize>,
    /// Metrics of the generation evaluation.
    #[serde(default = "default_generation_metrics")]
    pub generation_metrics: Vec<kiln_eval::EvalMetric>,
    #[serde(default = "default_generation_max_new_tokens")]
    pub generation_max_new_tokens: usize,
}

fn default_generation_metrics() -> Vec<kiln_eval::EvalMetric> {
    use kiln_eval::EvalMetric::*;
    vec![ExactMatch, Bleu, Rouge, Perplexity]
}

fn default_generation_max_new_tokens() -> usize {
    64
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            every: None,
            max_batches: None,
            generation_examples: None,
            generation_metrics: default_generation_metrics(),
            generation_max_new_tokens: default_generation_max_new_tokens(),
        }
    }
}

/// Checkpointing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaveOptions {
    /// Save a checkpoint every N optimizer steps (and at the end); `None` only at the end.
    #[serde(default)]
    pub every: Option<usize>,
    /// Keep the last K checkpoints (at least 1).
    #[serde(default = "default_keep")]
    pub keep_last: usize,
}

impl Default for SaveOptions {
    fn default() -> Self {
        Self {
            every: None,
            keep_last: default_keep(),
        }
    }
}

/// Early stopping on validation loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    /// Evaluations without improvement before stopping.
    pub patience: usize,
    /// Smallest decrease that counts as an improvement.
    #[serde(default)]
    pub min_delta: f64,
}

/// What happens when the loss or a gradient is NaN or infinite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NonFinitePolicy {
    /// Write a checkpoint of the last good state and stop with an error.
    #[default]
    Stop,
    /// Drop the step's gradients and go on with the next batch.
    Skip,
}

/// How the trainer computes gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BackwardPath {
    /// kiln's fused CPU forward and backward ([`kiln_models::CausalLm::try_backprop`]) when it
    /// covers the model and device, else burn's autodiff. Same numbers to float rounding.
    #[default]
    Fused,
    /// Always burn's autodiff.
    Autodiff,
}

impl Default for DataOptions {
    fn default() -> Self {
        Self {
            train: Vec::new(),
            validation: Vec::new(),
            validation_split: 0.0,
            max_seq_len: default_seq_len(),
            packing: false,
            shuffle: true,
            completion_only: true,
            streaming: false,
            shuffle_buffer: default_shuffle_buffer(),
        }
    }
}

impl Default for AdamWOptions {
    fn default() -> Self {
        Self {
            lr: default_lr(),
            betas: default_betas(),
            eps: default_eps(),
            weight_decay: 0.0,
        }
    }
}

fn default_output_dir() -> PathBuf {
    PathBuf::from("output")
}
fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn default_clip() -> Option<f64> {
    Some(1.0)
}
fn default_seed() -> u64 {
    42
}
fn default_device() -> String {
    "cpu".into()
}
fn default_seq_len() -> usize {
    512
}
fn default_lr() -> f64 {
    2e-4
}
fn default_betas() -> (f64, f64) {
    (0.9, 0.999)
}
fn default_eps() -> f64 {
    1e-8
}
fn default_keep() -> usize {
    2
}

impl SftConfig {
    /// A config for `model` with every other value at its default.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        // An empty TOML document with the model key always parses.
        let mut c: Self = toml::from_str("model = \"\"")
            .expect("an empty TOML document with the model key parses");
        c.model = model.into();
        c
    }

    /// The base model's Hub id: [`Self::base_model_id`], else what the model's location tells
    /// ([`kiln_models::fetch::hub_id_of`]).
    pub fn hub_id(&self) -> Option<String> {
        self.base_model_id
            .clone()
            .or_else(|| kiln_models::fetch::hub_id_of(&self.model))
    }

    /// The adapter to train ([`Self::lora`]) with `base_model_name_or_path` set as PEFT sets it:
    /// the Hub id when known ([`Self::hub_id`]), else the model directory's absolute path; a
    /// GGUF file without a known id leaves it unset (PEFT cannot load a GGUF as its base).
    pub fn peft_config(&self) -> Option<LoraConfig> {
        let mut lora = self.lora.clone()?;
        lora.base_model_name_or_path = self.hub_id().or_else(|| {
            self.model
                .is_dir()
                .then(|| std::path::absolute(&self.model).unwrap_or_else(|_| self.model.clone()))
                .map(|p| p.display().to_string())
        });
        Some(lora)
    }

    /// Reads a `.toml` or `.json` file (by extension) and validates it.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        let bad = |reason: String| TrainError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let config: Self = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => toml::from_str(&text).map_err(|e| bad(e.to_string()))?,
            Some("json") => serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?,
            other => {
                return Err(bad(format!(
                    "unknown config extension {other:?}; use .toml or .json"
                )));
            }
        };
        config.validate().map_err(|e| bad(e.to_string()))?;
        Ok(config)
    }

    /// The config as TOML text.
    pub fn to_toml_string(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| TrainError::option("config", e.to_string()))
    }

    /// Checks value ranges and that the device string names a known backend.
    pub fn validate(&self) -> Result<()> {
        let positive = |key: &str, v: usize| {
            if v == 0 {
                Err(TrainError::option(key, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        positive("micro_batch_size", self.micro_batch_size)?;
        positive("grad_accum", self.grad_accum)?;
        positive("log_every", self.log_every)?;
        positive("save.keep_last", self.save.keep_last)?;
        positive("data.max_seq_len", self.data.max_seq_len)?;
        if self.max_steps.is_none() && self.epochs.is_none() {
            return Err(TrainError::option("max_steps", "set max_steps or epochs"));
        }
        if self.max_steps == Some(0) {
            return Err(TrainError::option(
                "max_steps",
                "0 would train nothing: set at least 1 (or leave it out and set epochs)",
            ));
        }
        if let Some(e) = self.epochs
            && !(e.is_finite() && e > 0.0)
        {
            return Err(TrainError::option(
                "epochs",
                format!("{e} is not a positive number"),
            ));
        }
        let o = &self.optimizer;
        if !(o.lr.is_finite() && o.lr >= 0.0) {
            return Err(TrainError::option(
                "optimizer.lr",
                format!("{} is not a non-negative number", o.lr),
            ));
        }
        for (key, b) in [
            ("optimizer.betas[0]", o.betas.0),
            ("optimizer.betas[1]", o.betas.1),
        ] {
            if !(0.0..1.0).contains(&b) {
                return Err(TrainError::option(key, format!("{b} is outside [0, 1)")));
            }
        }
        if !(o.eps > 0.0) {
            return Err(TrainError::option(
                "optimizer.eps",
                format!("{} must be positive", o.eps),
            ));
        }
        if !(o.weight_decay >= 0.0) {
            return Err(TrainError::option("optimizer.weight_decay", "must be >= 0"));
        }
        if let Some(r) = self.schedule.warmup_ratio
            && !(0.0..=1.0).contains(&r)
        {
            return Err(TrainError::option(
                "schedule.warmup_ratio",
                format!("{r} is outside [0, 1]"),
            ));
        }
        if !(self.schedule.min_lr >= 0.0 && self.schedule.min_lr <= o.lr) {
            return Err(TrainError::option(
                "schedule.min_lr",
                "must lie between 0 and optimizer.lr",
            ));
        }
        if let Some(c) = self.max_grad_norm
            && !(c > 0.0)
        {
            return Err(TrainError::option(
                "max_grad_norm",
                format!("{c} must be positive"),
            ));
        }
        if !(0.0..1.0).contains(&self.data.validation_split) {
            return Err(TrainError::option(
                "data.validation_split",
                "must lie in [0, 1)",
            ));
        }
        if matches!(self.eval.every, Some(0)) {
            return Err(TrainError::option("eval.every", "must be at least 1"));
        }
        if matches!(self.save.every, Some(0)) {
            return Err(TrainError::option("save.every", "must be at least 1"));
        }
        self.device
            .parse::<kiln_models::DeviceKind>()
            .map_err(|e| TrainError::option("device", e.to_string()))?;
        if let Some(l) = &self.lora {
            l.validate()?;
        }
        Ok(())
    }

    /// Optimizer steps of the run, given the number of micro-batches in one epoch.
    pub fn total_steps(&self, micro_batches_per_epoch: usize) -> usize {
        let per_epoch = micro_batches_per_epoch as f64 / self.grad_accum as f64;
        let from_epochs = self
            .epochs
            .map(|e| (e * per_epoch).ceil().max(1.0) as usize);
        match (self.max_steps, from_epochs) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => 0,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn chat_template_and_exports_come_from_the_config_file_and_stay_out_when_unset() {
        let c: SftConfig = toml::from_str(
            "model = \"m\"\nchat_template = \"t.jinja\"\n[export]\ngguf = \"q4_k_m\"\nmerged = true\n",
        )
        .unwrap();
        assert_eq!(c.chat_template.as_deref(), Some(Path::new("t.jinja")));
        assert_eq!(c.export.gguf, Some(kiln_models::gguf::GgufFileType::Q4_K_M));
        assert!(c.export.merged);
        let back: SftConfig = toml::from_str(&c.to_toml_string().unwrap()).unwrap();
        assert_eq!(back, c);
        let bad = toml::from_str::<SftConfig>("model = \"m\"\n[export]\ngguf = \"Q3\"\n")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("GGUF file type `Q3`"), "{bad}");
        // A run that asks for neither writes the same config (and model card) as before.
        let plain = SftConfig::new("m").to_toml_string().unwrap();
        assert!(
            !plain.contains("export") && !plain.contains("chat_template"),
            "{plain}"
        );
    }

    #[test]
    fn the_adapter_names_its_base_as_peft_does() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = SftConfig::new(dir.path());
        c.lora = Some(LoraConfig::new(
            4,
            8.0,
            kiln_lora::TargetModules::Names(vec!["q_proj".into()]),
        ));
        // A local directory: its absolute path, as PEFT writes after `from_pretrained(dir)`.
        let local = c.peft_config().unwrap().base_model_name_or_path.unwrap();
        assert_eq!(Path::new(&local), std::path::absolute(dir.path()).unwrap());
        // A GGUF file with no known id: unset; the id given wins everywhere.
        c.model = dir.path().join("model.gguf");
        assert_eq!(c.peft_config().unwrap().base_model_name_or_path, None);
        c.base_model_id = Some("org/name".into());
        assert_eq!(
            c.peft_config().unwrap().base_model_name_or_path.as_deref(),
            Some("org/name")
        );
        // Full fine-tuning has no adapter.
        c.lora = None;
        assert_eq!(c.peft_config(), None);
    }

    #[test]
    fn toml_and_json_read_the_same_config() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("c.toml");
        std::fs::write(
            &toml_path,
            "model = \"m\"\nmax_steps = 10\ngrad_accum = 2\n[optimizer]\nlr = 1e-3\nweight_decay = 0.01\n[schedule]\nkind = \"cosine\"\nwarmup_steps = 2\n[lora]\nr = 4\nlora_alpha = 8\ntarget_modules = [\"q_proj\", \"v_proj\"]\n",
        )
        .unwrap();
        let a = SftConfig::from_file(&toml_path).unwrap();
        assert_eq!(a.precision, None);
        assert_eq!(a.schedule.kind, ScheduleKind::Cosine);
        assert_eq!(a.optimizer.lr, 1e-3);
        assert_eq!(a.optimizer.eps, 1e-8);
        assert_eq!(a.lora.as_ref().unwrap().r, 4);
        let mut a = a;
        a.precision = Some(Precision::Bf16);
        let json_path = dir.path().join("c.json");
        std::fs::write(&json_path, serde_json::to_string(&a).unwrap()).unwrap();
        assert!(a.to_toml_string().unwrap().contains("precision = \"bf16\""));
        assert_eq!(SftConfig::from_file(&json_path).unwrap(), a);
        let again: SftConfig = toml::from_str(&a.to_toml_string().unwrap()).unwrap();
        assert_eq!(again, a);
    }

    #[test]
    fn bad_values_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("model = \"m\"\n", "max_steps"),
            ("model = \"m\"\nmax_steps = 0\n", "max_steps"),
            (
                "model = \"m\"\nmax_steps = 1\ngrad_accum = 0\n",
                "grad_accum",
            ),
            (
                "model = \"m\"\nmax_steps = 1\n[optimizer]\nbetas = [0.9, 1.0]\n",
                "betas[1]",
            ),
            ("model = \"m\"\nmax_steps = 1\ndevice = \"tpu\"\n", "device"),
            (
                "model = \"m\"\nmax_steps = 1\nmax_grad_norm = -1.0\n",
                "max_grad_norm",
            ),
            (
                "model = \"m\"\nmax_steps = 1\n[schedule]\nkind = \"step\"\n",
                "unknown variant",
            ),
            ("model = \"m\"\nmax_steps = 1\nbatch = 3\n", "unknown field"),
            (
                "model = \"m\"\nmax_steps = 1\nprecision = \"fp8\"\n",
                "unknown variant `fp8`",
            ),
            (
                "model = \"m\"\nmax_steps = 1\n[schedule]\nmin_lr = 1.0\n",
                "min_lr",
            ),
        ];
        for (text, needle) in cases {
            let p = dir.path().join("bad.toml");
            std::fs::write(&p, text).unwrap();
            let err = SftConfig::from_file(&p).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
            assert!(err.contains("bad.toml"), "{err}");
        }
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, "model: m").unwrap();
        assert!(
            SftConfig::from_file(&p)
                .unwrap_err()
                .to_string()
                .contains("extension")
        );
    }

    #[test]
    fn total_steps_from_epochs_and_max_steps() {
        let mut c = SftConfig::new("m");
        c.grad_accum = 2;
        c.epochs = Some(1.5);
        assert_eq!(c.total_steps(10), 8); // 1.5 * 5 = 7.5 -> 8
        c.max_steps = Some(3);
        assert_eq!(c.total_steps(10), 3);
    }
}
