//! kiln-lora: low-rank adapters for linear layers, with Hugging Face PEFT's maths, names and files.
//!
//! The crate knows no model. A model uses [`LoraLinear`] for every projection that adapters may
//! target and implements [`AdapterTarget`] so that [`LoraModel`] can attach, switch, merge, save
//! and load adapters by name. Without adapters a [`LoraLinear`] is a plain linear layer with a
//! frozen weight.
//!
//! - [`LoraConfig`]: PEFT's `adapter_config.json` (`r`, `lora_alpha`, `target_modules`, rsLoRA,
//!   DoRA, `init_lora_weights`, `bias`, `modules_to_save`, rank/alpha patterns).
//! - [`LoraLinear`]: `y = x W + b + scale · (dropout(x) A) B` per active adapter; DoRA as PEFT.
//! - [`LoraModel`]: adapters by name (add, activate, disable, delete, weighted combination,
//!   hot swap, merge/unmerge, PEFT's trainable-parameter line) and PEFT's files.
pub mod adapter;
#[cfg(feature = "cpu")]
pub mod backprop;
mod base;
mod config;
mod error;
mod frozen_op;
mod init;
mod io;
pub mod kernels;
pub mod linear;
mod model;
mod pattern;
mod svd;
pub mod target;
mod weighted;

pub use adapter::{AdapterSpec, LoraAdapter};
pub use base::{BaseWeight, Frozen, Layout};
pub use config::{Bias, InitLoraWeights, LoraConfig, ModuleRank};
pub use error::{LoraError, Result};
pub use init::manual_seed;
pub use io::{CONFIG_FILE, HostTensor, WEIGHTS_FILE, read_safetensors, write_safetensors};
pub use kiln_cpu::Precision;
pub use linear::{LoraLinear, RowMix};
pub use model::{LoraModel, ParamCount};
pub use pattern::TargetModules;
pub use target::{AdapterTarget, OtherParam, OtherParamMut};
pub use weighted::{Combination, parse_adapter_arg};
