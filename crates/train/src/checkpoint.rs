//! Checkpoints: trainable weights, AdamW state, schedule and data position, RNG seed and (when
//! taken between the micro-batches of one step) the accumulated gradients.
//!
//! A checkpoint is written to `<root>/.tmp-<name>` and renamed to `<root>/<name>` once every
//! file is synced, so a crash never leaves a half-written directory under a checkpoint name;
//! [`latest_checkpoint`] only considers complete ones.
//!
//! Layout of `<root>/step-00000012[-micro-1]/`:
//! - `state.json`: [`TrainState`] (step, data position, metrics history...) and the parameter ids.
//! - `params.safetensors`: trainable parameters by module path, f32.
//! - `optimizer.bpk`: burn's AdamW record (keyed by parameter id, hence the saved ids).
//! - `grads.safetensors`: accumulated gradients, only mid-step.
use crate::error::{Result, TrainError};
use crate::model::CausalModel;
use crate::params::{
    HostParams, grads_from_host, grads_to_host, params_to_host, restore_params, trainable_params,
};
use crate::trainer::{TrainState, Trainer, TrainerOptions, build_optimizer, training_device};
use burn::optim::OptimizerRecord;
use burn::tensor::Device;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

const STATE: &str = "state.json";
const PARAMS: &str = "params.safetensors";
const OPTIMIZER: &str = "optimizer.bpk";
const GRADS: &str = "grads.safetensors";
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct StateFile {
    format: u32,
    kiln_version: String,
    seed: u64,
    /// Parameter path -> burn parameter id.
    param_ids: BTreeMap<String, u64>,
    /// The run that wrote it ([`crate::RunDir::id`]); absent in checkpoints of kiln before run ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run_id: Option<String>,
    state: TrainState,
}

/// The run id recorded in checkpoint `dir` (`None` for checkpoints written without one).
pub(crate) fn checkpoint_run_id(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(STATE);
    let text = fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    let file: StateFile =
        serde_json::from_str(&text).map_err(|e| TrainError::checkpoint(&path, e.to_string()))?;
    Ok(file.run_id)
}

/// Writes `host` to a safetensors file (f32) through kiln's one safetensors writer
/// ([`kiln_cpu::io::write_f32_safetensors`]; ids are in `state.json`).
pub(crate) fn write_host_safetensors(path: &Path, host: &HostParams) -> Result<()> {
    let specs: Vec<(String, Vec<usize>)> = host
        .tensors
        .iter()
        .map(|(k, (_, shape, _))| (k.clone(), shape.clone()))
        .collect();
    let values: Vec<&Vec<f32>> = host.tensors.values().map(|(_, _, v)| v).collect();
    kiln_cpu::io::write_f32_safetensors(path, &specs, &[], |i| {
        Ok::<_, TrainError>(values[i].clone())
    })
}

/// Reads a file written by [`write_host_safetensors`] (ids are set to 0; see `state.json`).
pub(crate) fn read_host_safetensors(path: &Path) -> Result<HostParams> {
    let bytes = fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| TrainError::checkpoint(path, e.to_string()))?;
    let mut host = HostParams::default();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(TrainError::checkpoint(
                path,
                format!("{name}: dtype {:?}, expected F32", view.dtype()),
            ));
        }
        let v = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        host.tensors.insert(name, (0, view.shape().to_vec(), v));
    }
    Ok(host)
}

/// `data` to `path` through kiln's one atomic writer.
fn write_synced(path: &Path, data: &[u8]) -> Result<()> {
    kiln_cpu::io::write_atomic(path, |w| {
        w.write_all(data).map_err(|e| TrainError::io(path, e))
    })
}

/// Checkpoint directory name of a state: `step-00000012`, or `step-00000012-micro-1` between
/// micro-batches.
pub(crate) fn checkpoint_name(state: &TrainState) -> String {
    match state.micro_in_step {
        0 => format!("step-{:08}", state.step),
        m => format!("step-{:08}-micro-{m}", state.step),
    }
}

fn parse_name(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("step-")?;
    match rest.split_once("-micro-") {
        Some((s, m)) => Some((s.parse().ok()?, m.parse().ok()?)),
        None => Some((rest.parse().ok()?, 0)),
    }
}

/// Complete checkpoints under `root`, oldest first.
pub fn list_checkpoints(root: &Path) -> Result<Vec<PathBuf>> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in fs::read_dir(root).map_err(|e| TrainError::io(root, e))? {
        let entry = entry.map_err(|e| TrainError::io(root, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(key) = parse_name(&name)
            && entry.path().join(STATE).is_file()
        {
            found.push((key, entry.path()));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// The newest complete checkpoint under `root`.
pub fn latest_checkpoint(root: &Path) -> Result<Option<PathBuf>> {
    Ok(list_checkpoints(root)?.pop())
}

impl<M: CausalModel> Trainer<M> {
    /// Writes a checkpoint under `root` atomically, then keeps only the newest `keep_last`.
    /// Returns its directory.
    pub fn save_checkpoint(&mut self, root: &Path, keep_last: usize) -> Result<PathBuf> {
        self.save_checkpoint_with(root, keep_last, &[])
    }

    /// [`Self::save_checkpoint`] with a recipe's own state besides (`extra`: file names and
    /// bytes, GRPO's sampling position), written into the checkpoint before it is renamed into
    /// place, so a checkpoint holds all of it or does not exist.
    pub(crate) fn save_checkpoint_with(
        &mut self,
        root: &Path,
        keep_last: usize,
        extra: &[(&str, &[u8])],
    ) -> Result<PathBuf> {
        let name = checkpoint_name(&self.state);
        let tmp = root.join(format!(".tmp-{name}"));
        self.write_checkpoint_files(&tmp)?;
        for (file, bytes) in extra {
            write_synced(&tmp.join(file), bytes)?;
        }
        let dir = root.join(&name);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        }
        fs::rename(&tmp, &dir).map_err(|e| TrainError::io(&dir, e))?;
        if let Ok(d) = fs::File::open(root) {
            let _ = d.sync_all();
        }
        // Never prune the checkpoint just written (the one a NaN stop names), whatever the
        // step numbers of older ones.
        let mut all = list_checkpoints(root)?;
        all.retain(|p| p != &dir);
        for old in &all[..all.len().saturating_sub(keep_last.max(1) - 1)] {
            fs::remove_dir_all(old).map_err(|e| TrainError::io(old, e))?;
        }
        for c in self.callbacks() {
            c.on_checkpoint(&dir)?;
        }
        Ok(dir)
    }

    /// Writes the checkpoint files into `dir` (created; emptied if it exists). Not atomic on its
    /// own: [`save_checkpoint`](Self::save_checkpoint) renames the directory afterwards.
    pub fn write_checkpoint_files(&self, dir: &Path) -> Result<()> {
        if dir.exists() {
            fs::remove_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        }
        fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let model = self.model();
        let params = params_to_host(model, true)?;
        write_host_safetensors(&dir.join(PARAMS), &params)?;
        if let Some(grads) = &self.grads
            && self.state.micro_in_step > 0
        {
            write_host_safetensors(&dir.join(GRADS), &grads_to_host(model, grads)?)?;
        }
        let opt_path = dir.join(OPTIMIZER);
        self.optim
            .to_record()
            .save(&opt_path)
            .map_err(|e| TrainError::checkpoint(&opt_path, format!("{e:?}")))?;
        // burn's recorder writes the file itself: fsynced here so that every file of the
        // directory is durable before [`Self::save_checkpoint`] renames it into place.
        fs::File::open(&opt_path)
            .and_then(|f| f.sync_all())
            .map_err(|e| TrainError::io(&opt_path, e))?;
        let file = StateFile {
            format: FORMAT,
            kiln_version: env!("CARGO_PKG_VERSION").to_string(),
            seed: self.options.seed,
            param_ids: params
                .tensors
                .iter()
                .map(|(k, (id, _, _))| (k.clone(), *id))
                .collect(),
            run_id: self.run_id.clone(),
            state: TrainState {
                elapsed: self.elapsed(),
                ..self.state.clone()
            },
        };
        let json = serde_json::to_vec_pretty(&file)
            .map_err(|e| TrainError::checkpoint(dir, e.to_string()))?;
        write_synced(&dir.join(STATE), &json)
    }

    /// [`Self::resume`] with this trainer's own model and options (built as the run started):
    /// what the preference and RL trainers, which own a trainer, continue with.
    pub(crate) fn resumed(self, device: &Device, dir: &Path) -> Result<Self> {
        let options = self.options.clone();
        Self::resume(self.into_model(), device, options, dir)
    }

    /// Continues from checkpoint `dir`. `model` must be built as for the original run (same
    /// base weights and adapter config); its trainable values, parameter ids, the optimizer
    /// state, the position and the accumulated gradients come from the checkpoint.
    pub fn resume(model: M, device: &Device, options: TrainerOptions, dir: &Path) -> Result<Self> {
        let state_path = dir.join(STATE);
        let text = fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
        let file: StateFile = serde_json::from_str(&text)
            .map_err(|e| TrainError::checkpoint(&state_path, e.to_string()))?;
        if file.format != FORMAT {
            return Err(TrainError::checkpoint(
                &state_path,
                format!("format {} is not {FORMAT}", file.format),
            ));
        }
        if file.seed != options.seed {
            tracing::warn!(
                "resuming with seed {} instead of the checkpoint's {}",
                options.seed,
                file.seed
            );
        }
        let mut params = read_host_safetensors(&dir.join(PARAMS))?;
        for (path, entry) in params.tensors.iter_mut() {
            entry.0 = *file.param_ids.get(path).ok_or_else(|| {
                TrainError::checkpoint(&state_path, format!("no id for parameter {path}"))
            })?;
        }
        let model = model
            .fork(&training_device(device, options.gradient_checkpointing))
            .train();
        let model = restore_params(model, &params)
            .map_err(|e| TrainError::checkpoint(dir, e.to_string()))?;
        let trainable = trainable_params(&model);
        if trainable.len() != params.tensors.len() {
            return Err(TrainError::checkpoint(
                dir,
                format!(
                    "the checkpoint has {} trainable parameters, the model {}",
                    params.tensors.len(),
                    trainable.len()
                ),
            ));
        }
        let opt_path = dir.join(OPTIMIZER);
        let record = OptimizerRecord::load(&opt_path)
            .map_err(|e| TrainError::checkpoint(&opt_path, format!("{e:?}")))?;
        let mut trainer = Trainer::new(model, device, options)?;
        trainer.optim = build_optimizer(&trainer.options.adamw, &trainable).load_record(record);
        trainer.state = file.state;
        trainer.run_id = file.run_id;
        if trainer.state.micro_in_step > 0 {
            let grads = read_host_safetensors(&dir.join(GRADS))?;
            trainer.grads = Some(grads_from_host(trainer.model(), &grads));
        }
        Ok(trainer)
    }
}
