//! Preference training of a LoRA adapter with TRL's definitions: DPO (`DPOTrainer`, with a
//! reference model), ORPO (`ORPOTrainer`), CPO and SimPO (`CPOTrainer`, no reference model), on
//! preference pairs in a JSON Lines file (`prompt`/`chosen`/`rejected` strings or message lists,
//! or `chosen`/`rejected` conversations sharing the prompt); KTO (`KTOTrainer`, `--loss kto` or
//! `apo_zero_unpaired`) on unpaired records (`prompt`/`completion` strings or message lists and a
//! boolean `label`), or on pairs, unpaired as TRL does.
//!
//! ```text
//! cargo run --release --example dpo -- --model ~/.cache/kiln/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --data fixtures/dpo/conversational.jsonl --output-dir runs/dpo --max-steps 3 --lr 5e-5
//! cargo run --release --example dpo -- --model DIR --data pairs.jsonl --init-adapter runs/sft/adapter
//! cargo run --release --example dpo -- --model DIR --data pairs.jsonl --loss orpo --beta 0.1
//! cargo run --release --example dpo -- --model DIR --data pairs.jsonl --loss simpo --beta 2 \
//!     --simpo-gamma 0.5 --cpo-alpha 0
//! cargo run --release --example dpo -- --model DIR --data fixtures/kto/conversational.jsonl \
//!     --loss kto --beta 0.1 --undesirable-weight 1.33 --no-shuffle
//! ```
//!
//! Writes into `--output-dir`: `metrics.jsonl` (`loss`, `rewards/chosen`, `rewards/rejected`,
//! `rewards/accuracies`, `rewards/margins`, `logps/chosen`, `logps/rejected`, `grad_norm`, `lr`
//! per step; `nll_loss` for ORPO and CPO, `log_odds_ratio` and `log_odds_chosen` for ORPO; for
//! KTO `loss`, `kl`, `rewards/chosen`, `rewards/rejected`, `rewards/margins`, `logps/chosen`,
//! `logps/rejected` (a label absent from a step is absent from its line), `num_tokens`),
//! `loss_curve.png` and `adapter/` (PEFT files).
use anyhow::Result;
use clap::Parser;
use kiln::data::TruncationMode;
use kiln::train::{DpoOptions, DpoRun, PreferenceLoss, run_dpo, run_kto};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    about = "Preference training (DPO sigmoid/ipo/hinge/robust, ORPO, CPO, SimPO, KTO) of a LoRA adapter"
)]
struct Args {
    /// A model directory, GGUF file or Hugging Face repo id.
    #[arg(long)]
    model: PathBuf,
    /// JSON Lines of preference pairs.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "runs/dpo")]
    output_dir: PathBuf,
    #[arg(long, default_value_t = 100)]
    max_steps: usize,
    /// Constant learning rate (AdamW, no weight decay, no warmup).
    #[arg(long, default_value_t = 1e-6)]
    lr: f64,
    /// β of DPO and CPO/SimPO, λ of ORPO.
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    /// DPO: sigmoid, ipo, hinge, robust; orpo; CPO: cpo (sigmoid), cpo_hinge, cpo_ipo, simpo;
    /// KTO: kto, apo_zero_unpaired.
    #[arg(long, alias = "loss", default_value = "sigmoid")]
    loss_type: PreferenceLoss,
    /// ε of DPO's robust loss and of CPO's sigmoid and simpo losses.
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// CPO/SimPO: weight of the chosen completions' cross-entropy (0 = pure SimPO).
    #[arg(long, default_value_t = 1.0)]
    cpo_alpha: f64,
    /// SimPO: the target reward margin γ.
    #[arg(long, default_value_t = 0.5)]
    simpo_gamma: f64,
    /// KTO: the weight of the desirable records' losses.
    #[arg(long, default_value_t = 1.0)]
    desirable_weight: f64,
    /// KTO: the weight of the undesirable records' losses.
    #[arg(long, default_value_t = 1.0)]
    undesirable_weight: f64,
    /// Pairs (KTO: records, at least 2 for its KL estimate) per micro-batch.
    #[arg(long, default_value_t = 2)]
    batch_size: usize,
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Tokens per sequence (prompt + completion); TRL's `max_length`.
    #[arg(long, default_value_t = 1024)]
    max_seq_len: usize,
    /// keep_start or keep_end.
    #[arg(long, default_value = "keep_start")]
    truncation_mode: TruncationMode,
    /// Continue training this PEFT adapter; its starting weights are the reference.
    #[arg(long)]
    init_adapter: Option<PathBuf>,
    /// DPO and KTO: the reference log-probabilities of the whole dataset in one pass before
    /// training (TRL's `precompute_ref_log_probs`); without it, those of the pairs the run's
    /// steps read. No step runs a reference forward either way.
    #[arg(long)]
    precompute_ref_log_probs: bool,
    /// A new adapter's rank and alpha (LoRA on q, k, v, o).
    #[arg(long, default_value_t = 16)]
    lora_r: usize,
    #[arg(long, default_value_t = 32.0)]
    lora_alpha: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Keep the file's order (by default the records are shuffled once with --seed).
    #[arg(long)]
    no_shuffle: bool,
    /// f32 or bf16 (default: bf16 on CPUs with bf16 units).
    #[arg(long)]
    precision: Option<kiln::train::Precision>,
    /// A Jinja chat template file instead of the model's.
    #[arg(long)]
    chat_template: Option<PathBuf>,
    /// Write a checkpoint (output-dir/checkpoints/) every N steps.
    #[arg(long)]
    save_steps: Option<usize>,
    /// Continue from the newest checkpoint in --output-dir (exactly as if never stopped).
    #[arg(long)]
    resume: bool,
    /// Delete a previous kiln run in --output-dir first (a non-empty one is refused otherwise).
    #[arg(long)]
    overwrite: bool,
}

fn main() -> Result<()> {
    kiln::train::keep_freed_memory();
    let a = Args::parse();
    let run = DpoRun {
        model: a.model,
        data: a.data,
        output_dir: a.output_dir,
        max_steps: a.max_steps,
        lr: a.lr,
        dpo: DpoOptions {
            beta: a.beta,
            loss_type: a.loss_type,
            label_smoothing: a.label_smoothing,
            cpo_alpha: a.cpo_alpha,
            simpo_gamma: a.simpo_gamma,
            desirable_weight: a.desirable_weight,
            undesirable_weight: a.undesirable_weight,
            batch_size: a.batch_size,
            max_length: Some(a.max_seq_len),
            truncation: a.truncation_mode,
            pad_id: 0,
            precompute_ref_log_probs: a.precompute_ref_log_probs,
        },
        grad_accum: a.grad_accum,
        init_adapter: a.init_adapter,
        lora_r: a.lora_r,
        lora_alpha: a.lora_alpha,
        seed: a.seed,
        shuffle: !a.no_shuffle,
        precision: a.precision,
        chat_template: a.chat_template,
        save_steps: a.save_steps,
        resume: a.resume,
        overwrite: a.overwrite,
        ..DpoRun::default()
    };
    if run.dpo.loss_type.unpaired() {
        let summary = run_kto(&run, |m| {
            let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
            println!(
                "step {}: loss {:.4}, kl {:.4}, rewards/chosen {}, rewards/rejected {}, grad norm {:.3}",
                m.step,
                m.loss,
                m.kl,
                f(m.rewards_chosen),
                f(m.rewards_rejected),
                m.grad_norm
            );
        })?;
        println!(
            "done: {} records ({} desirable; {} dropped: prompt fills max_seq_len), {} steps; adapter in {}",
            summary.records,
            summary.desirable,
            summary.dropped,
            summary.history.len(),
            summary.adapter_dir.display()
        );
        return Ok(());
    }
    let summary = run_dpo(&run, |m| {
        println!(
            "step {}: loss {:.4}, rewards/margins {:.4}, rewards/accuracies {:.2}, grad norm {:.3}",
            m.step, m.loss, m.rewards_margins, m.rewards_accuracies, m.grad_norm
        );
    })?;
    println!(
        "done: {} pairs ({} dropped: prompt fills max_seq_len), {} steps; adapter in {}",
        summary.pairs,
        summary.dropped,
        summary.history.len(),
        summary.adapter_dir.display()
    );
    Ok(())
}
