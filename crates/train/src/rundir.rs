//! Run directories that are never mixed or destroyed by accident.
//!
//! Why: a new run pointed at an existing run's directory used to append to its `metrics.jsonl`,
//! overwrite some of its checkpoints, prune the others by step number across both runs, and a
//! later `--resume` continued whichever run had the highest step. As transformers'
//! `overwrite_output_dir` does, a fresh run now refuses a non-empty directory; `--resume`
//! continues the run that owns it and `--overwrite` replaces it. Every run has an id, written to
//! `run.json` and into each checkpoint, so a resume never picks another run's checkpoint.
use crate::checkpoint::{checkpoint_run_id, list_checkpoints};
use crate::error::{Result, TrainError};
use kiln_cpu::io::IoError;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

/// The file naming a directory's run.
pub const RUN_FILE: &str = "run.json";

/// What to do with the output directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RunMode {
    /// A new run: the directory must be missing or empty.
    #[default]
    Fresh,
    /// Continue the run that owns the directory (a new run when there is none yet).
    Resume,
    /// Delete a previous kiln run in the directory and start a new one. A directory that does
    /// not look like a kiln run (no `run.json`, `metrics.jsonl` or `checkpoints/`) is never
    /// deleted.
    Overwrite,
}

impl RunMode {
    /// The mode of the command-line flags `--resume` / `--overwrite` (both is an error).
    pub fn from_flags(resume: bool, overwrite: bool) -> Result<Self> {
        match (resume, overwrite) {
            (true, true) => Err(TrainError::option(
                "overwrite",
                "--resume continues the run in the output directory and --overwrite deletes it: pass one",
            )),
            (true, false) => Ok(Self::Resume),
            (false, true) => Ok(Self::Overwrite),
            (false, false) => Ok(Self::Fresh),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct RunFile {
    run_id: String,
    created_unix: u64,
    kiln_version: String,
}

/// An output directory owned by one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    path: PathBuf,
    id: String,
    resumed: bool,
}

impl RunDir {
    /// Opens `path` for a run in `mode` (see [`RunMode`]), creating it and its `run.json` when
    /// the run is new.
    pub fn open(path: &Path, mode: RunMode) -> Result<Self> {
        let entries = dir_entries(path)?;
        let run_file = path.join(RUN_FILE);
        if mode == RunMode::Resume && run_file.is_file() {
            let id = read_run_file(&run_file)?.run_id;
            return Ok(Self {
                path: path.to_path_buf(),
                id,
                resumed: true,
            });
        }
        if !entries.is_empty() {
            match mode {
                RunMode::Fresh => return Err(not_empty(path, &entries, "")),
                RunMode::Resume if looks_like_run(path) => {
                    // A run from before run ids: adopt it, and its checkpoints without an id.
                    let dir = Self::create(path)?;
                    return Ok(Self {
                        resumed: true,
                        ..dir
                    });
                }
                RunMode::Resume => {
                    return Err(not_empty(
                        path,
                        &entries,
                        " and holds no kiln run to resume",
                    ));
                }
                RunMode::Overwrite if looks_like_run(path) => {
                    fs::remove_dir_all(path).map_err(|e| TrainError::io(path, e))?;
                }
                RunMode::Overwrite => {
                    return Err(TrainError::RunDir {
                        path: path.to_path_buf(),
                        reason: "is not a kiln run directory (no run.json, metrics.jsonl or \
                                 checkpoints/); --overwrite only replaces kiln runs: choose \
                                 another --output-dir"
                            .into(),
                    });
                }
            }
        }
        Self::create(path)
    }

    fn create(path: &Path) -> Result<Self> {
        fs::create_dir_all(path).map_err(|e| TrainError::io(path, e))?;
        let id = new_run_id();
        let file = RunFile {
            run_id: id.clone(),
            created_unix: unix_now().as_secs(),
            kiln_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let json = serde_json::to_vec_pretty(&file)
            .map_err(|e| TrainError::checkpoint(path, e.to_string()))?;
        let run_file = path.join(RUN_FILE);
        kiln_cpu::io::write_atomic(&run_file, |w| {
            w.write_all(&json).map_err(|source| IoError {
                path: run_file.clone(),
                source,
            })
        })
        .map_err(|e: IoError| TrainError::io(&e.path, e.source))?;
        Ok(Self {
            path: path.to_path_buf(),
            id,
            resumed: false,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The run's id (in `run.json` and in every checkpoint's `state.json`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the directory held this run before (a resume).
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// `checkpoints/` under the directory.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.path.join("checkpoints")
    }

    /// The newest complete checkpoint of this run. A checkpoint written by another run is an
    /// error naming it; one written before run ids existed is accepted.
    pub fn latest_checkpoint(&self) -> Result<Option<PathBuf>> {
        let all = list_checkpoints(&self.checkpoint_dir())?;
        for dir in &all {
            if let Some(other) = checkpoint_run_id(dir)?
                && other != self.id
            {
                return Err(TrainError::checkpoint(
                    dir,
                    format!(
                        "written by run {other}, but {} belongs to run {}: refusing to mix runs",
                        self.path.display(),
                        self.id
                    ),
                ));
            }
        }
        Ok(all.last().cloned())
    }
}

fn dir_entries(path: &Path) -> Result<Vec<String>> {
    match fs::read_dir(path) {
        Ok(rd) => {
            let mut names = Vec::new();
            for e in rd {
                let e = e.map_err(|e| TrainError::io(path, e))?;
                names.push(e.file_name().to_string_lossy().into_owned());
            }
            names.sort();
            Ok(names)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(TrainError::io(path, e)),
    }
}

fn looks_like_run(path: &Path) -> bool {
    path.join(RUN_FILE).is_file()
        || path.join("metrics.jsonl").is_file()
        || path.join("checkpoints").is_dir()
}

fn not_empty(path: &Path, entries: &[String], why: &str) -> TrainError {
    let shown: Vec<&str> = entries.iter().take(5).map(String::as_str).collect();
    let more = if entries.len() > 5 { ", ..." } else { "" };
    TrainError::RunDir {
        path: path.to_path_buf(),
        reason: format!(
            "is not empty ({}{more}){why}; pass --resume to continue the run in it, \
             --overwrite to replace it, or choose another --output-dir",
            shown.join(", ")
        ),
    }
}

fn read_run_file(path: &Path) -> Result<RunFile> {
    let text = fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::checkpoint(path, e.to_string()))
}

fn unix_now() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Time, process id and a counter: unique on one machine, readable in a listing.
fn new_run_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let t = unix_now();
    format!(
        "{}-{:x}{:08x}-{}",
        t.as_secs(),
        std::process::id(),
        t.subsec_nanos(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
