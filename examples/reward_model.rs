//! Trains a reward model with TRL's `RewardTrainer` definitions: a new one-label `score` head on
//! a causal LM (as `AutoModelForSequenceClassification` adds one) and a LoRA adapter, trained
//! together on preference pairs with the Bradley–Terry loss `-log σ(r_chosen - r_rejected -
//! margin)`, in a JSON Lines file (`prompt`/`chosen`/`rejected` strings or message lists, or
//! `chosen`/`rejected` conversations sharing the prompt; an optional `margin` column).
//!
//! ```text
//! cargo run --release --example reward_model -- \
//!     --model ~/.cache/kiln/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --data fixtures/dpo/conversational.jsonl --output-dir runs/reward --max-steps 6 --lr 1e-3
//! ```
//!
//! Writes into `--output-dir`: `metrics.jsonl` (`loss`, `accuracy`, `margin`, `min_reward`,
//! `mean_reward`, `max_reward`, `num_tokens`, `grad_norm`, `lr` per step), `loss_curve.png` and
//! `adapter/` (PEFT's files, task SEQ_CLS with `modules_to_save = ["score"]`: loads with
//! `PeftModel.from_pretrained` on `AutoModelForSequenceClassification`). Prints the loss and
//! pairwise accuracy on the training pairs before and after.
use anyhow::Result;
use clap::Parser;
use kiln::train::{RewardRun, run_reward};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "Reward-model training (TRL's RewardTrainer) of a score head and a LoRA adapter")]
struct Args {
    /// A causal LM: model directory, GGUF file or Hugging Face repo id.
    #[arg(long)]
    model: PathBuf,
    /// JSON Lines of preference pairs.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "runs/reward")]
    output_dir: PathBuf,
    #[arg(long, default_value_t = 100)]
    max_steps: usize,
    /// Constant learning rate (AdamW, no weight decay, no warmup).
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Pairs per micro-batch.
    #[arg(long, default_value_t = 2)]
    batch_size: usize,
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Pairs with a side longer than this many tokens are left out (TRL's `max_length`).
    #[arg(long, default_value_t = 1024)]
    max_seq_len: usize,
    /// The margin of pairs without a `margin` column.
    #[arg(long)]
    margin: Option<f64>,
    /// TRL's `center_rewards_coefficient`.
    #[arg(long)]
    center_rewards_coefficient: Option<f64>,
    /// The adapter's rank and alpha (LoRA on q, k, v, o; the head trains in full).
    #[arg(long, default_value_t = 16)]
    lora_r: usize,
    #[arg(long, default_value_t = 32.0)]
    lora_alpha: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// f32 or bf16 (default: bf16 on CPUs with bf16 units).
    #[arg(long)]
    precision: Option<kiln::train::Precision>,
    /// A Jinja chat template file instead of the model's.
    #[arg(long)]
    chat_template: Option<PathBuf>,
    /// Write a checkpoint under --output-dir/checkpoints/ every N steps (the newest 2 kept).
    #[arg(long)]
    save_steps: Option<usize>,
    /// Continue from the newest checkpoint under --output-dir/checkpoints/.
    #[arg(long)]
    resume: bool,
    /// Delete a previous kiln run in --output-dir first (a non-empty one is refused otherwise).
    #[arg(long)]
    overwrite: bool,
}

fn main() -> Result<()> {
    kiln::train::keep_freed_memory();
    let a = Args::parse();
    let run = RewardRun {
        model: a.model,
        data: a.data,
        output_dir: a.output_dir,
        max_steps: a.max_steps,
        lr: a.lr,
        batch_size: a.batch_size,
        grad_accum: a.grad_accum,
        max_length: Some(a.max_seq_len),
        margin: a.margin,
        center_rewards_coefficient: a.center_rewards_coefficient,
        lora_r: a.lora_r,
        lora_alpha: a.lora_alpha,
        seed: a.seed,
        precision: a.precision,
        chat_template: a.chat_template,
        save_steps: a.save_steps,
        resume: a.resume,
        overwrite: a.overwrite,
        ..RewardRun::default()
    };
    let summary = run_reward(&run, |m| {
        println!(
            "step {}: loss {:.4}, accuracy {:.2}, margin {:.4}, grad norm {:.3}",
            m.step, m.loss, m.accuracy, m.margin, m.grad_norm
        );
    })?;
    let (b, f) = (&summary.before, &summary.after);
    println!(
        "training pairs: loss {:.4} -> {:.4}, accuracy {:.2} -> {:.2}, margin {:.4} -> {:.4}",
        b.loss, f.loss, b.accuracy, f.accuracy, b.margin, f.margin
    );
    println!(
        "done: {} pairs ({} dropped: longer than max_seq_len), {} steps; adapter in {}",
        summary.pairs,
        summary.dropped,
        summary.history.len(),
        summary.adapter_dir.display()
    );
    Ok(())
}
