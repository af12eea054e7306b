//! What a run ships: the trained adapter in PEFT format, or the trained weights.
use crate::error::Result;
use crate::params::params_to_host;
use burn::module::Module;
use kiln_lora::{AdapterTarget, LoraModel};
use kiln_models::CausalLm;
use std::path::Path;

/// Writes the trained artifact of a model into a directory.
pub trait Export {
    /// Writes into `dir` (created if needed).
    fn export(&self, dir: &Path) -> Result<()>;
}

/// The active adapters in PEFT format: `dir/adapter_config.json` + `adapter_model.safetensors`
/// for one adapter, `dir/<name>/...` for several.
impl<M: Module + AdapterTarget> Export for LoraModel<M> {
    fn export(&self, dir: &Path) -> Result<()> {
        let active = self.active_adapters().to_vec();
        match active.as_slice() {
            [one] => self.save_adapter(dir, one)?,
            many => {
                for name in many {
                    self.save_adapter(&dir.join(name), name)?;
                }
            }
        }
        Ok(())
    }
}

/// Full fine-tuning: every parameter as f32 safetensors under kiln's module paths
/// (`trained.safetensors`; linear weights are stored `[in, out]`).
impl Export for CausalLm {
    fn export(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| crate::error::TrainError::io(dir, e))?;
        let host = params_to_host(self, false)?;
        crate::checkpoint::write_host_safetensors(&dir.join("trained.safetensors"), &host)
    }
}
