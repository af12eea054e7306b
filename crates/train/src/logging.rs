//! Metrics people look at: a JSON Lines file and an `indicatif` progress bar.
use crate::callback::{Callback, EvalMetrics, StepMetrics};
use crate::error::{Result, TrainError};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Appends one JSON object per line: `{"kind":"train","step":..,"loss":..,"lr":..,"grad_norm":..,
/// "tokens":..,"tokens_per_s":..,"elapsed":..}` and `{"kind":"eval","step":..,"val_loss":..,
/// "val_perplexity":..,"val_tokens":..}`.
pub struct JsonlLogger {
    path: PathBuf,
    out: BufWriter<File>,
    /// Every numeric field of every line also goes here as the scalar `<kind>/<field>` (the
    /// preference, reward and RL recipes; SFT's trainer has its own TensorBoard callback).
    tensorboard: Option<crate::tensorboard::TensorBoardWriter>,
}

impl std::fmt::Debug for JsonlLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonlLogger")
            .field("path", &self.path)
            .finish()
    }
}

#[derive(Serialize)]
struct Line<'a, T: Serialize> {
    kind: &'a str,
    #[serde(flatten)]
    metrics: &'a T,
}

impl JsonlLogger {
    /// Opens `path` for appending (a resumed run continues the same file).
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| TrainError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            tensorboard: None,
        })
    }

    /// Also writes each line's numbers to a TensorBoard event file in `dir` (a run resumed at
    /// step `done` starts it with TensorBoard's restart marker): `train/loss`,
    /// `train/rewards/chosen`, ... as TRL's runs show them.
    pub fn with_tensorboard(mut self, dir: &Path, done: usize) -> Result<Self> {
        self.tensorboard = Some(crate::tensorboard::TensorBoardWriter::create_at(dir, done)?);
        Ok(self)
    }

    /// [`Self::open`] for a run resumed at step `done`: lines of later steps (written after the
    /// checkpoint, before the run stopped) are dropped first, so each step appears once. The
    /// file is rewritten atomically (temporary file, fsync, rename); a line that is not a
    /// JSON object with a `step` is kept.
    pub fn open_at(path: &Path, done: usize) -> Result<Self> {
        if let Ok(text) = std::fs::read_to_string(path) {
            let keep = |line: &&str| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v.get("step").and_then(serde_json::Value::as_u64))
                    .is_none_or(|step| step <= done as u64)
            };
            let kept: Vec<&str> = text.lines().filter(keep).collect();
            if kept.len() != text.lines().count() {
                kiln_cpu::io::write_atomic(path, |w| {
                    kept.iter()
                        .try_for_each(|l| writeln!(w, "{l}"))
                        .map_err(|source| kiln_cpu::io::IoError {
                            path: path.to_path_buf(),
                            source,
                        })
                })
                .map_err(|e: kiln_cpu::io::IoError| TrainError::io(&e.path, e.source))?;
            }
        }
        Self::open(path)
    }

    pub(crate) fn write<T: Serialize>(&mut self, kind: &str, metrics: &T) -> Result<()> {
        let line = serde_json::to_string(&Line { kind, metrics })
            .map_err(|e| TrainError::option("metrics", e.to_string()))?;
        writeln!(self.out, "{line}").map_err(|e| TrainError::io(&self.path, e))?;
        self.out
            .flush()
            .map_err(|e| TrainError::io(&self.path, e))?;
        if let Some(tb) = &mut self.tensorboard {
            let value = serde_json::to_value(metrics)
                .map_err(|e| TrainError::option("metrics", e.to_string()))?;
            let step = value.get("step").and_then(serde_json::Value::as_u64);
            if let (Some(step), Some(fields)) = (step, value.as_object()) {
                let tags: Vec<(String, f32)> = fields
                    .iter()
                    .filter(|(name, _)| name.as_str() != "step")
                    .filter_map(|(name, v)| Some((format!("{kind}/{name}"), v.as_f64()? as f32)))
                    .collect();
                let scalars: Vec<(&str, f32)> =
                    tags.iter().map(|(t, v)| (t.as_str(), *v)).collect();
                tb.scalars(step as usize, &scalars)?;
            }
        }
        Ok(())
    }
}

/// What every run writes and shows: `output_dir/metrics.jsonl`, `output_dir/tensorboard/` and a
/// progress bar from step `done` to `total`. A run resumed at step `done` first drops the
/// metrics of later steps from `metrics.jsonl`, and its event file starts with TensorBoard's
/// restart marker, so neither shows the steps between the checkpoint and the stop twice.
pub fn standard_callbacks(
    output_dir: &Path,
    total: usize,
    done: usize,
) -> Result<Vec<Box<dyn Callback>>> {
    Ok(vec![
        Box::new(JsonlLogger::open_at(
            &output_dir.join("metrics.jsonl"),
            done,
        )?),
        Box::new(crate::tensorboard::TensorBoardWriter::create_at(
            &output_dir.join("tensorboard"),
            done,
        )?),
        Box::new(Progress::new(total, done)),
    ])
}

impl Callback for JsonlLogger {
    fn on_step(&mut self, m: &StepMetrics) -> Result<()> {
        self.write("train", m)
    }

    fn on_eval(&mut self, m: &EvalMetrics) -> Result<()> {
        self.write("eval", m)
    }
}

/// A progress bar over optimizer steps with loss, tokens/s and ETA.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    last_val: Option<f64>,
}

impl Progress {
    /// A bar for `total` steps, starting at `done`.
    pub fn new(total: usize, done: usize) -> Self {
        let bar = ProgressBar::new(total as u64);
        let style = ProgressStyle::with_template(
            "{bar:30.cyan/blue} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_position(done as u64);
        Self {
            bar,
            last_val: None,
        }
    }

    /// A bar that draws nothing (tests, non-interactive runs).
    pub fn hidden() -> Self {
        Self {
            bar: ProgressBar::hidden(),
            last_val: None,
        }
    }
}

impl Callback for Progress {
    fn on_step(&mut self, m: &StepMetrics) -> Result<()> {
        let val = self
            .last_val
            .map(|v| format!(" val {v:.4}"))
            .unwrap_or_default();
        self.bar.set_message(format!(
            "loss {:.4}{val} lr {:.2e} {:.0} tok/s",
            m.loss, m.lr, m.tokens_per_s
        ));
        self.bar.set_position(m.step as u64);
        Ok(())
    }

    fn on_eval(&mut self, m: &EvalMetrics) -> Result<()> {
        self.last_val = Some(m.val_loss);
        Ok(())
    }

    fn on_end(&mut self) -> Result<()> {
        self.bar.finish();
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tensorboard::read_tfrecords;

    /// A recipe's line goes to `metrics.jsonl` and, number by number, to TensorBoard under
    /// `<kind>/<field>` (TRL's names keep their slashes: `train/rewards/chosen`).
    #[test]
    fn lines_reach_tensorboard_as_scalars_under_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = JsonlLogger::open(&dir.path().join("metrics.jsonl"))
            .unwrap()
            .with_tensorboard(&dir.path().join("tensorboard"), 0)
            .unwrap();
        let line = serde_json::json!({"step": 3, "loss": 0.25, "rewards/chosen": 1.5,
                                      "tokens": 40, "note": "text is skipped"});
        log.write("train", &line).unwrap();
        let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
        let back: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(back["kind"], "train");
        assert_eq!(back["rewards/chosen"], 1.5);
        let tb = log.tensorboard.as_ref().unwrap().path().to_path_buf();
        let records = read_tfrecords(&std::fs::read(tb).unwrap()).unwrap();
        assert_eq!(records.len(), 2, "version event and one step");
        let has = |needle: &[u8]| records[1].windows(needle.len()).any(|w| w == needle);
        for tag in ["train/loss", "train/rewards/chosen", "train/tokens"] {
            assert!(has(tag.as_bytes()), "{tag}");
        }
        assert!(!has(b"train/note") && !has(b"train/step"));
        assert!(has(&0.25f32.to_le_bytes()) && has(&1.5f32.to_le_bytes()));
        assert!(has(&40f32.to_le_bytes()));
    }
}
