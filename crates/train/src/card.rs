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
    /// Base model path or hub id.
    pub base_model: String,
    /// Training data files or a description.
    pub data: Vec<String>,
    pub train_examples: usize,
    pub val_examples: usize,
    pub trainable_params: usize,
    pub all_params: usize,
    pub config: SftConfig,
    pub summary: RunSummary,
}

impl TrainingMetadata {
    /// Metadata of a finished run.
    pub fn new(config: &SftConfig, summary: &RunSummary) -> Self {
        Self {
            kiln_version: env!("CARGO_PKG_VERSION").to_string(),
            base_model: config.model.display().to_string(),
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
            "---\nbase_model: {}\nlibrary_name: {}\ntags:\n- kiln\n- sft\n---\n",
            self.base_model,
            if c.lora.is_some() { "peft" } else { "kiln" }
        );
        let _ = writeln!(t, "# Fine-tuned {}\n", self.base_model);
        let _ = writeln!(t, "Trained with kiln {} ({method}).\n", self.kiln_version);
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
        let _ = writeln!(
            t,
            "- max sequence length: {}, packing: {}\n",
            c.data.max_seq_len, c.data.packing
        );
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
