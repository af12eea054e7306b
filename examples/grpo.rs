//! GRPO with TRL's definitions (`GRPOTrainer`) on prompt-only JSON Lines (`prompt` a string or
//! a list of messages; other keys go to the rewards): `--num-generations` samples per prompt,
//! a built-in reward (a regex over the whole completion, or the first number or the trimmed
//! text against a column of the record), group-normalised advantages, the clipped objective.
//!
//! ```text
//! cargo run --release --example grpo -- --model ~/.cache/kiln/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --data fixtures/grpo/prompts.jsonl --regex '.*[0-9].*' --max-steps 3 --lr 1e-5
//! cargo run --release --example grpo -- --model MODEL --data questions.jsonl \
//!     --numeric-match answer --precision bf16 --bf16-weights      # rollouts on held bf16 weights
//! ```
//!
//! Rollouts sample at the training precision (`--precision`, default bf16 on CPUs with bf16
//! units); `--bf16-weights` also holds the frozen quantized base in bf16 once for the run, for
//! faster batched sampling at 2 bytes per base weight more. Each step prints its generation
//! speed: completion tokens per second, and rows × decoding steps per second (every row of a
//! batch decodes until its longest completion ends, as transformers' `generate` does).
//!
//! Writes into `--output-dir`: `metrics.jsonl` (TRL's names: `loss`, `reward`, `reward_std`,
//! `frac_reward_zero_std`, `kl`, `completions/*`, `clip_ratio/*`, and `generation_s`,
//! `training_s`), `loss_curve.png` and `adapter/` (PEFT's files).
use anyhow::{Result, bail};
use clap::Parser;
use kiln::train::{GrpoOptions, GrpoRun, Reward, run_grpo};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "GRPO (TRL's GRPOTrainer) of a LoRA adapter with a built-in reward")]
struct Args {
    /// A causal LM: model directory, GGUF file or Hugging Face repo id.
    #[arg(long)]
    model: PathBuf,
    /// JSON Lines of prompt-only records.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "runs/grpo")]
    output_dir: PathBuf,
    #[arg(long, default_value_t = 10)]
    max_steps: usize,
    /// Constant learning rate (AdamW, no weight decay).
    #[arg(long, default_value_t = 1e-6)]
    lr: f64,
    /// Prompts per step, each sampled `--num-generations` times.
    #[arg(long, default_value_t = 1)]
    prompts_per_step: usize,
    #[arg(long, default_value_t = 8)]
    num_generations: usize,
    #[arg(long, default_value_t = 64)]
    max_completion_length: usize,
    /// grpo, bnpo, dr_grpo or dapo.
    #[arg(long, default_value = "dapo")]
    loss_type: String,
    /// KL coefficient (0: no reference pass, TRL's default).
    #[arg(long, default_value_t = 0.0)]
    beta: f64,
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Reward 1 when the whole completion matches this regex, else 0.
    #[arg(long)]
    regex: Option<String>,
    /// Reward 1 when the completion's first number equals this column's, else 0.
    #[arg(long)]
    numeric_match: Option<String>,
    /// Reward 1 when the trimmed completion equals this column, else 0.
    #[arg(long)]
    exact_match: Option<String>,
    /// Continue from this PEFT adapter (it trains; its starting weights are the reference).
    #[arg(long)]
    init_adapter: Option<PathBuf>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// f32 or bf16, of training and rollouts (default: bf16 on CPUs with bf16 units).
    #[arg(long)]
    precision: Option<kiln::train::Precision>,
    /// Hold the frozen quantized base also in bf16 once for the run (bf16 only).
    #[arg(long)]
    bf16_weights: bool,
    /// Delete a previous kiln run in --output-dir first.
    #[arg(long)]
    overwrite: bool,
}

fn reward(a: &Args) -> Result<Reward> {
    Ok(match (&a.regex, &a.numeric_match, &a.exact_match) {
        (Some(re), None, None) => Reward::regex(re)?,
        (None, Some(column), None) => Reward::NumericMatch {
            column: column.clone(),
            tolerance: 1e-6,
        },
        (None, None, Some(column)) => Reward::ExactMatch {
            column: column.clone(),
        },
        _ => bail!("give exactly one of --regex, --numeric-match and --exact-match"),
    })
}

fn main() -> Result<()> {
    kiln::train::keep_freed_memory();
    let a = Args::parse();
    let reward = reward(&a)?;
    let run = GrpoRun {
        model: a.model,
        data: a.data,
        output_dir: a.output_dir,
        max_steps: a.max_steps,
        lr: a.lr,
        grpo: GrpoOptions {
            beta: a.beta,
            loss_type: a.loss_type.parse()?,
            num_generations: a.num_generations,
            max_completion_length: a.max_completion_length,
            batch_size: a.num_generations * a.prompts_per_step,
            ..GrpoOptions::default()
        },
        temperature: a.temperature,
        top_p: a.top_p,
        init_adapter: a.init_adapter,
        seed: a.seed,
        precision: a.precision,
        bf16_weights: a.bf16_weights,
        overwrite: a.overwrite,
        ..GrpoRun::default()
    };
    let rows = a.num_generations * a.prompts_per_step;
    let (mut tokens, mut row_steps, mut seconds) = (0.0, 0.0, 0.0);
    let summary = run_grpo(&run, None, vec![(reward, 1.0)], |m| {
        // Completions of this step and the decoding steps of its batch (its longest completion).
        let (t, s) = (m.mean_length * rows as f64, m.max_length * rows as f64);
        if m.generation_s > 0.0 {
            (tokens, row_steps, seconds) = (tokens + t, row_steps + s, seconds + m.generation_s);
        }
        println!(
            "step {}: loss {:+.4}, reward {:.3} ± {:.3}, length {:.1}; generation {:.2} s \
             ({:.1} tokens/s, {:.1} row-steps/s), training {:.2} s",
            m.step,
            m.loss,
            m.reward,
            m.reward_std,
            m.mean_length,
            m.generation_s,
            t / m.generation_s,
            s / m.generation_s,
            m.training_s
        );
    })?;
    println!(
        "done: {} steps; generation {seconds:.1} s for {tokens:.0} completion tokens \
         ({:.1} tokens/s, {:.1} row-steps/s); adapter in {}",
        summary.history.len(),
        tokens / seconds,
        row_steps / seconds,
        summary.adapter_dir.display()
    );
    Ok(())
}
