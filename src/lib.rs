//! kiln: fine-tune large language models in Rust on [burn].
//!
//! This facade re-exports the workspace crates so that downstream code adds one dependency:
//!
//! - [`models`]: decoders loaded from Hugging Face and GGUF checkpoints, generation.
//! - [`lora`]: LoRA adapters with PEFT parity.
//! - [`data`]: datasets, chat templates, labels, packing.
//! - [`eval`]: metrics and evaluation harness.
//! - `serve` (cargo feature `serve`): an OpenAI-compatible HTTP server (kiln-serve).
//! - [`train`]: supervised fine-tuning and DPO; [`train::run_sft`] is the whole SFT run the
//!   `sft` example calls.
//!
//! ```no_run
//! use kiln::lora::{LoraConfig, TargetModules};
//! use kiln::train::{RunMode, SftConfig, run_sft};
//!
//! // A directory, a .gguf file or a Hub id; the keys are those of a TOML config file.
//! let mut config = SftConfig::new("HuggingFaceTB/SmolLM2-135M-Instruct");
//! config.data.train = vec!["data/tutor.jsonl".into()];
//! config.max_steps = Some(24);
//! let targets = TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]);
//! config.lora = Some(LoraConfig::new(16, 32.0, targets));
//! config.output_dir = "runs/tutor".into();
//! // Loads, prepares the data with the chat template, trains with checkpoints, writes
//! // metrics.jsonl, loss_curve.png and adapter/ (PEFT files, model card).
//! let done = run_sft(&config, RunMode::Fresh, |event| println!("{event}"))?;
//! println!("adapter in {}", done.output.display());
//! # Ok::<(), kiln::train::TrainError>(())
//! ```
pub use burn;
pub use kiln_data as data;
pub use kiln_eval as eval;
pub use kiln_lora as lora;
pub use kiln_models as models;
#[cfg(feature = "serve")]
pub use kiln_serve as serve;
pub use kiln_train as train;
