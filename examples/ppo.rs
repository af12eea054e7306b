//! PPO with TRL's definitions (`PPOTrainer`): a LoRA policy samples one completion per prompt,
//! a reward model (the `reward_model` example's adapter on the same base) or a regex reward
//! scores it, and a value model (a `score` head read at every token, with its own LoRA adapter)
//! gives the advantages (GAE) for the clipped policy and value losses. Prompts are TRL's
//! prompt-only JSON Lines (`prompt` a string or a list of messages).
//!
//! ```text
//! cargo run --release --example reward_model -- \
//!     --model ~/.cache/kiln/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --data fixtures/dpo/conversational.jsonl --output-dir runs/reward --max-steps 6 --lr 1e-3
//! cargo run --release --example ppo -- \
//!     --model ~/.cache/kiln/SmolLM2-135M-Instruct.Q4_1.gguf --data fixtures/grpo/prompts.jsonl \
//!     --reward-model runs/reward/adapter --output-dir runs/ppo --max-steps 4 --lr 1e-4
//! ```
//!
//! Writes into `--output-dir`: `metrics.jsonl` (TRL's `objective/kl`, `objective/entropy`,
//! `objective/non_score_reward`, `objective/rlhf_reward`, `objective/scores`,
//! `policy/approxkl_avg`, `policy/clipfrac_avg`, `loss/policy_avg`, `loss/value_avg`,
//! `val/clipfrac_avg`, `val/ratio`, `val/ratio_var`, `val/num_eos_tokens`, `lr`, `episode`, and
//! `generation_s`/`training_s` per update), `loss_curve.png`, `adapter/` (the policy, PEFT's
//! files) and `value_adapter/`.
use anyhow::{Result, bail};
use clap::Parser;
use kiln::train::{GrpoRun, PpoOptions, PpoReward, PpoRun, Reward, run_ppo};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "PPO (TRL's PPOTrainer) of a LoRA policy with a value model")]
struct Args {
    /// A causal LM: model directory, GGUF file or Hugging Face repo id.
    #[arg(long)]
    model: PathBuf,
    /// JSON Lines of prompt-only records.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "runs/ppo")]
    output_dir: PathBuf,
    /// Updates (each: sample, score, `num_ppo_epochs` passes).
    #[arg(long, default_value_t = 10)]
    max_steps: usize,
    /// Constant learning rate of the policy and the value model (AdamW, no weight decay).
    #[arg(long, default_value_t = 3e-6)]
    lr: f64,
    /// Rollouts per micro-batch.
    #[arg(long, default_value_t = 2)]
    batch_size: usize,
    /// Micro-batches per update (`batch_size × grad_accum` rollouts per update).
    #[arg(long, default_value_t = 2)]
    grad_accum: usize,
    #[arg(long, default_value_t = 4)]
    num_ppo_epochs: usize,
    /// Most tokens sampled per completion.
    #[arg(long, default_value_t = 53)]
    response_length: usize,
    #[arg(long, default_value_t = 0.05)]
    kl_coef: f64,
    /// k1 or k3.
    #[arg(long, default_value = "k1")]
    kl_estimator: String,
    #[arg(long)]
    missing_eos_penalty: Option<f64>,
    /// A reward model adapter (the `reward_model` example's `adapter/`, on --model).
    #[arg(long)]
    reward_model: Option<PathBuf>,
    /// Instead of a reward model: 1 when the completion matches this regex, else 0.
    #[arg(long)]
    regex: Option<String>,
    #[arg(long, default_value_t = 16)]
    lora_r: usize,
    #[arg(long, default_value_t = 32.0)]
    lora_alpha: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// f32 or bf16 (default: bf16 on CPUs with bf16 units).
    #[arg(long)]
    precision: Option<kiln::train::Precision>,
    /// Delete a previous kiln run in --output-dir first.
    #[arg(long)]
    overwrite: bool,
}

fn main() -> Result<()> {
    kiln::train::keep_freed_memory();
    let a = Args::parse();
    let reward = match (a.reward_model, a.regex) {
        (Some(dir), None) => PpoReward::Model(dir),
        (None, Some(re)) => PpoReward::Functions(vec![(Reward::regex(&re)?, 1.0)]),
        _ => bail!("give exactly one of --reward-model DIR and --regex PATTERN"),
    };
    let run = PpoRun {
        base: GrpoRun {
            model: a.model,
            data: a.data,
            output_dir: a.output_dir,
            max_steps: a.max_steps,
            lr: a.lr,
            lora_r: a.lora_r,
            lora_alpha: a.lora_alpha,
            seed: a.seed,
            precision: a.precision,
            overwrite: a.overwrite,
            ..GrpoRun::default()
        },
        ppo: PpoOptions {
            kl_coef: a.kl_coef,
            kl_estimator: a.kl_estimator.parse()?,
            num_ppo_epochs: a.num_ppo_epochs,
            missing_eos_penalty: a.missing_eos_penalty,
            batch_size: a.batch_size,
            ..PpoOptions::default()
        },
        grad_accum: a.grad_accum,
        response_length: a.response_length,
    };
    let summary = run_ppo(&run, None, reward, |m| {
        println!(
            "update {}: scores {:.4}, kl {:.4}, rlhf reward {:.4}, policy loss {:.4}, value loss {:.4}, \
             clipfrac {:.3}; generation {:.1}s, training {:.1}s",
            m.step,
            m.scores,
            m.kl,
            m.rlhf_reward,
            m.policy_loss_avg,
            m.value_loss_avg,
            m.clipfrac_avg,
            m.generation_s,
            m.training_s
        );
    })?;
    println!(
        "done: {} updates; policy adapter in {}, value adapter in {}",
        summary.history.len(),
        summary.adapter_dir.display(),
        summary.value_adapter_dir.display()
    );
    Ok(())
}
