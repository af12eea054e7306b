//! Generation metrics at the end of training, through the trainer's callback: the
//! [`kiln_eval`] harness runs on held-out examples with the trained model, and its results go
//! to `eval_generation.jsonl` (per example), `eval_generation.json` (corpus scores) and a
//! `{"kind":"generation_eval",...}` line of `metrics.jsonl`.
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

use kiln_data::tokenizers::Tokenizer;
use kiln_data::{ChatTemplate, Record};
use kiln_eval::harness::write_records;
use kiln_eval::io::write_json;
use kiln_eval::{EvalExample, HarnessConfig, evaluate};
use kiln_models::CausalLm;

use crate::callback::Callback;
use crate::error::{Result, TrainError};

/// Runs the generation harness when training ends.
pub struct GenerationEvalCallback {
    examples: Vec<EvalExample>,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    config: HarnessConfig,
    output_dir: PathBuf,
}

impl std::fmt::Debug for GenerationEvalCallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerationEvalCallback")
            .field("examples", &self.examples.len())
            .field("output_dir", &self.output_dir)
            .finish()
    }
}

impl GenerationEvalCallback {
    /// Evaluates on `records` (conversations or prompt/completion pairs; at most `limit`).
    pub fn new(
        records: &[Record],
        limit: Option<usize>,
        tokenizer: Tokenizer,
        template: Option<ChatTemplate>,
        config: HarnessConfig,
        output_dir: PathBuf,
    ) -> Result<Self> {
        let n = limit.map_or(records.len(), |l| l.min(records.len()));
        let examples = records[..n]
            .iter()
            .enumerate()
            .map(|(i, r)| EvalExample::from_record(i, r))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if examples.is_empty() {
            return Err(TrainError::option(
                "generation eval",
                "no held-out example to evaluate",
            ));
        }
        Ok(Self {
            examples,
            tokenizer,
            template,
            config,
            output_dir,
        })
    }
}

impl Callback for GenerationEvalCallback {
    fn on_fit_end(&mut self, step: usize, model: &CausalLm) -> Result<()> {
        let label = format!("step {step}");
        let report = evaluate(
            &label,
            model,
            &self.tokenizer,
            self.template.as_ref(),
            &self.examples,
            &self.config,
        )?;
        write_records(
            &self.output_dir.join("eval_generation.jsonl"),
            &report.records,
        )?;
        write_json(&self.output_dir.join("eval_generation.json"), &report)?;
        let mut line =
            serde_json::json!({ "kind": "generation_eval", "step": step, "n": report.n });
        for (k, v) in &report.corpus {
            line[k] = serde_json::json!(v);
        }
        let path = self.output_dir.join("metrics.jsonl");
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        writeln!(f, "{line}").map_err(|e| TrainError::io(&path, e))?;
        tracing::info!("generation eval at step {step}: {:?}", report.corpus);
        Ok(())
    }
}
