//! A tutoring assistant: LoRA (r=16, alpha=32, dropout 0.1 on q,k,v,o) on the alpaca-form
//! pairs of `data/tutor.jsonl`, then answers to the unseen questions of
//! `data/tutor_unseen.jsonl` before and after, side by side with the reference answers. The
//! training is `kiln::train::Sft`'s steps; this file adds the questions before and after.
//!
//! ```text
//! cargo run --release --example tutor
//! cargo run --release --example tutor -- --max-steps 30 --output-dir runs/tutor
//! ```
use anyhow::{Context, Result};
use clap::Parser;
use kiln::data::{ChatTemplate, Message, Reader, Record, Role};
use kiln::lora::{LoraConfig, TargetModules};
use kiln::models::{CausalLm, GenerationConfig, Pretrained, generate};
use kiln::train::{RunMode, Sft, SftBatches, SftConfig};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "LoRA-tune a tutoring assistant and compare answers before and after")]
struct Args {
    #[arg(long)]
    model: Option<PathBuf>,
    /// The base model's Hugging Face Hub id (`org/name`), written as the adapter's
    /// `base_model_name_or_path` and the model card's `base_model` (default: from the model's
    /// location when it tells, see `SftConfig::base_model_id`).
    #[arg(long)]
    base_model_id: Option<String>,
    #[arg(long, default_value = "runs/tutor")]
    output_dir: PathBuf,
    /// Replace a previous run in `--output-dir` (a non-empty output directory is refused
    /// otherwise).
    #[arg(long)]
    overwrite: bool,
    #[arg(long, default_value_t = 24)]
    max_steps: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = "data/tutor.jsonl")]
    data: PathBuf,
    #[arg(long, default_value = "data/tutor_unseen.jsonl")]
    unseen: PathBuf,
}

/// The user turn and reference answer of each alpaca record.
fn questions(path: &std::path::Path) -> Result<Vec<(Vec<Message>, String)>> {
    let (records, _) = Reader::open(&[path.display().to_string()])?.read_all()?;
    records
        .into_iter()
        .map(|r| match r {
            Record::Conversation(mut m) if m.last().is_some_and(|x| x.role == Role::Assistant) => {
                let answer = m.pop().map(|x| x.content).unwrap_or_default();
                Ok((m, answer))
            }
            other => anyhow::bail!(
                "{}: not an instruction/answer record: {other:?}",
                path.display()
            ),
        })
        .collect()
}

fn answer(
    model: &CausalLm,
    lm: &Pretrained,
    template: &ChatTemplate,
    qs: &[(Vec<Message>, String)],
) -> Result<Vec<String>> {
    let config = GenerationConfig {
        max_new_tokens: 80,
        eos_token_ids: lm.eos_token_ids(),
        ..GenerationConfig::default()
    };
    let prompts = qs
        .iter()
        .map(|(m, _)| Ok(lm.encode(&template.render(m, true)?, false)?))
        .collect::<Result<Vec<_>>>()?;
    let out = generate(model, &prompts, &config, None, &mut |_, _| {})?;
    out.iter()
        .map(|g| Ok(lm.decode(&g.tokens, true)?.trim().to_string()))
        .collect()
}

/// LoRA r=16, alpha=32, dropout 0.1 on q,k,v,o; 10% of the pairs held out for validation.
fn config(args: &Args) -> SftConfig {
    let mut lora = LoraConfig::new(
        16,
        32.0,
        TargetModules::Names(
            ["q_proj", "k_proj", "v_proj", "o_proj"]
                .map(String::from)
                .to_vec(),
        ),
    );
    lora.lora_dropout = 0.1;
    let mut config = SftConfig::new(args.model.clone().unwrap_or_default());
    config.base_model_id = args.base_model_id.clone();
    config.output_dir = args.output_dir.clone();
    config.lora = Some(lora);
    config.data.train = vec![args.data.clone()];
    config.data.validation_split = 0.1;
    config.micro_batch_size = 4;
    config.max_steps = Some(args.max_steps);
    config.optimizer.lr = 5e-4;
    config.schedule.warmup_ratio = Some(0.1);
    config.eval.every = Some(8);
    config.device = args.device.clone();
    config
}

fn main() -> Result<()> {
    kiln::train::keep_freed_memory();
    let args = Args::parse();
    // Before any work: refuse to mix this run with another one in the same directory.
    let mode = RunMode::from_flags(false, args.overwrite)?;
    let mut sft = Sft::from_config(config(&args), mode)?;
    let lm = sft.load_model()?;
    let template = sft
        .chat_template(&lm)?
        .context("the model has no chat template")?;
    let unseen = questions(&args.unseen)?;
    let before = answer(&lm.model, &lm, &template, &unseen)?;

    let data = sft.prepare_data(&lm, Some(&template))?;
    let trained = sft.train(
        &lm,
        SftBatches::from_data(&data),
        Vec::new(),
        &mut |event| println!("{event}"),
    )?;
    let after = answer(trained.model.causal_lm(), &lm, &template, &unseen)?;
    for ((q, reference), (b, a)) in unseen.iter().zip(before.iter().zip(&after)) {
        let question = q.last().map_or("", |m| m.content.as_str());
        println!("\nQ: {question}\n  reference: {reference}\n  before:    {b}\n  after:     {a}");
    }
    trained.save(&lm, &mut |event| println!("{event}"))?;
    let summary = &trained.summary;
    println!(
        "\ntrained {} steps: train loss {:.3}, validation loss {}; adapter in {}",
        summary.steps,
        summary.final_train_loss.unwrap_or(f64::NAN),
        summary
            .final_eval
            .as_ref()
            .map_or("-".into(), |e| format!("{:.3}", e.val_loss)),
        trained.output.display()
    );
    Ok(())
}
