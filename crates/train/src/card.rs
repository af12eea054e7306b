//! The model card (`README.md`) and `training_metadata.json` written next to the adapter.
use crate::config::SftConfig;
use crate::error::{Result, TrainError};
use crate::run::RunSummary;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

/// Everything the card says, also saved as `training_metadata.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingMetadata {
    pub kiln_version: String,
    /// The base model's Hub id when known ([`SftConfig::hub_id`]), else its local path.
    pub base_model: String,
    /// The base model's local file or directory.
    pub base_model_path: String,
    /// Whether [`Self::base_model`] is a Hub id (the card's `base_model:` front matter is
    /// written only then: the Hub rejects a local path there).
    pub base_model_is_hub_id: bool,
    /// How sequences were cut and batched, as the card states it (default: the config's
    /// `max_seq_len` and packing; a run that batches its own data says what it did).
    pub sequences: String,
    /// Evaluation results the card shows as a table (e.g. exact match before and after).
    pub evaluation: Vec<EvalRow>,
    /// Training data files or a description.
    pub data: Vec<String>,
    pub train_examples: usize,
    pub val_examples: usize,
    pub trainable_params: usize,
    pub all_params: usize,
    pub config: SftConfig,
    pub summary: RunSummary,
}

/// One row of the card's evaluation table: a metric before and after training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRow {
    pub metric: String,
    pub before: Option<f64>,
    pub after: f64,
}

impl TrainingMetadata {
    /// Metadata of a finished run.
    pub fn new(config: &SftConfig, summary: &RunSummary) -> Self {
        let path = config.model.display().to_string();
        let hub_id = config.hub_id();
        Self {
            kiln_version: env!("CARGO_PKG_VERSION").to_string(),
            base_model_is_hub_id: hub_id.is_some(),
            base_model: hub_id.unwrap_or_else(|| path.clone()),
            base_model_path: path,
            sequences: format!(
                "max sequence length: {}, packing: {}",
                config.data.max_seq_len, config.data.packing
            ),
            evaluation: Vec::new(),
            data: config
                .data
                .train
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            train_examples: 0,
            val_examples: 0,
            trainable_params: 0,
            all_params: 0,
            config: config.clone(),
            summary: summary.clone(),
        }
    }

    /// The model card text (Markdown with Hugging Face front matter).
    pub fn model_card(&self) -> String {
        let c = &self.config;
        let s = &self.summary;
        let mut t = String::new();
        let method = match &c.lora {
            Some(l) => format!(
                "LoRA r={} alpha={} dropout={} on {}",
                l.r,
                l.lora_alpha,
                l.lora_dropout,
                l.target_modules
                    .as_ref()
                    .map_or("default targets".to_string(), |m| match m {
                        kiln_lora::TargetModules::Names(n) => n.join(", "),
                        kiln_lora::TargetModules::Regex(r) => format!("modules matching `{r}`"),
                        kiln_lora::TargetModules::AllLinear => "all linear layers".to_string(),
                    })
            ),
            None => "full fine-tuning".to_string(),
        };
        let _ = writeln!(
            t,
            "---\n{}library_name: {}\ntags:\n- kiln\n- sft\n---\n",
            if self.base_model_is_hub_id {
                format!("base_model: {}\n", self.base_model)
            } else {
                String::new()
            },
            if c.lora.is_some() { "peft" } else { "kiln" }
        );
        let _ = writeln!(t, "# Fine-tuned {}\n", self.base_model);
        let _ = writeln!(t, "Trained with kiln {} ({method}).\n", self.kiln_version);
        let _ = writeln!(t, "Base model file: `{}`\n", self.base_model_path);
        let _ = writeln!(t, "## Data\n");
        let _ = writeln!(
            t,
            "- files: {}",
            if self.data.is_empty() {
                "(in code)".into()
            } else {
                self.data.join(", ")
            }
        );
        let _ = writeln!(
            t,
            "- training examples: {}, validation examples: {}",
            self.train_examples, self.val_examples
        );
        let _ = writeln!(t, "- {}\n", self.sequences);
        let _ = writeln!(t, "## Hyperparameters\n");
        let _ = writeln!(t, "| | |\n|---|---|");
        let o = &c.optimizer;
        let rows = [
            ("method", method.clone()),
            (
                "trainable parameters",
                format!("{} of {}", self.trainable_params, self.all_params),
            ),
            (
                "optimizer",
                format!(
                    "AdamW lr={} betas=({}, {}) eps={} weight_decay={}",
                    o.lr, o.betas.0, o.betas.1, o.eps, o.weight_decay
                ),
            ),
            (
                "schedule",
                format!(
                    "{}, warmup {}, min lr {}",
                    format!("{:?}", c.schedule.kind).to_lowercase(),
                    match (c.schedule.warmup_steps, c.schedule.warmup_ratio) {
                        (Some(s), _) => format!("{s} steps"),
                        (None, Some(r)) => format!("{r} of the steps"),
                        (None, None) => "none".to_string(),
                    },
                    c.schedule.min_lr
                ),
            ),
            (
                "batch",
                format!("{} x {} accumulation", c.micro_batch_size, c.grad_accum),
            ),
            (
                "max grad norm",
                c.max_grad_norm
                    .map_or("no clipping".to_string(), |v| v.to_string()),
            ),
            ("seed", c.seed.to_string()),
            (
                "steps",
                format!(
                    "{} ({} skipped){}",
                    s.steps,
                    s.skipped_steps,
                    if s.stopped_early {
                        ", stopped early"
                    } else {
                        ""
                    }
                ),
            ),
        ];
        for (k, v) in rows {
            let _ = writeln!(t, "| {k} | {v} |");
        }
        let _ = writeln!(t, "\n## Results\n");
        if let Some(l) = s.final_train_loss {
            let _ = writeln!(t, "- final training loss: {l:.4}");
        }
        if let Some(e) = &s.final_eval {
            let _ = writeln!(
                t,
                "- validation loss: {:.4}, perplexity: {:.3} ({} tokens)",
                e.val_loss, e.val_perplexity, e.val_tokens
            );
        }
        let _ = writeln!(
            t,
            "- tokens trained on: {}, time: {:.1} s",
            s.tokens_seen, s.elapsed_secs
        );
        if !self.evaluation.is_empty() {
            let _ = writeln!(t, "\n## Evaluation\n\n| | before | after |\n|---|---|---|");
            for r in &self.evaluation {
                let before = r.before.map_or("–".to_string(), |v| format!("{v:.4}"));
                let _ = writeln!(t, "| {} | {before} | {:.4} |", r.metric, r.after);
            }
        }
        t
    }

    /// Writes `README.md` and `training_metadata.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let readme = dir.join("README.md");
        std::fs::write(&readme, self.model_card()).map_err(|e| TrainError::io(&readme, e))?;
        let meta = dir.join("training_metadata.json");
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| TrainError::option("metadata", e.to_string()))?;
        std::fs::write(&meta, json).map_err(|e| TrainError::io(&meta, e))
    }
}
