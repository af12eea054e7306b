//! A tutoring assistant: LoRA (r=16, alpha=32, dropout 0.1 on q,k,v,o) on the alpaca-form
//! pairs of `data/tutor.jsonl`, then answers to the unseen questions of
//! `data/tutor_unseen.jsonl` before and after, side by side with the reference answers.
//!
//! ```text
//! cargo run --release --example tutor
//! cargo run --release --example tutor -- --max-steps 30 --output-dir runs/tutor
//! ```
use anyhow::{Context, Result};
use clap::Parser;
use kiln::burn::module::Module;
use kiln::data::{ChatTemplate, Message, Reader, Record, Role};
use kiln::lora::{LoraConfig, LoraModel, TargetModules};
use kiln::models::fetch::resolve_model;
use kiln::models::{CausalLm, GenerationConfig, Pretrained, generate, parse_device};
use kiln::train::{
    Export, FitOptions, RunDir, RunMode, SftConfig, Trainer, TrainerOptions, TrainingMetadata, fit,
    prepare_data, standard_callbacks,
};
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

fn main() -> Result<()> {
    kiln::train::keep_freed_memory();
    let args = Args::parse();
    // Before any work: refuse to mix this run with another one in the same directory.
    let mode = if args.overwrite {
        RunMode::Overwrite
    } else {
        RunMode::Fresh
    };
    let run = RunDir::open(&args.output_dir, mode)?;
    let device = parse_device(&args.device)?;
    let path = resolve_model(args.model.as_deref(), true)?;
    let lm = Pretrained::load(&path, &device)?;
    let template = ChatTemplate::new(
        lm.extras
            .chat_template
            .as_deref()
            .context("the model has no chat template")?,
        lm.extras.bos_token.as_deref(),
        lm.extras.eos_token.as_deref(),
    )?;
    let unseen = questions(&args.unseen)?;
    let before = answer(&lm.model, &lm, &template, &unseen)?;

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
    let mut config = SftConfig::new(&path);
    config.output_dir = args.output_dir.clone();
    config.lora = Some(lora.clone());
    config.data.train = vec![args.data.clone()];
    config.data.validation_split = 0.1;
    config.micro_batch_size = 4;
    config.max_steps = Some(args.max_steps);
    config.optimizer.lr = 5e-4;
    config.schedule.warmup_ratio = Some(0.1);
    config.eval.every = Some(8);
    config.device = args.device.clone();
    let pad = lm.eos_token_ids().first().copied().unwrap_or(0);
    let data = prepare_data(
        &config.data,
        4,
        config.seed,
        &lm.tokenizer,
        Some(&template),
        pad,
    )?;
    device.seed(config.seed);
    kiln::lora::manual_seed(config.seed);
    config.base_model_id = args.base_model_id.clone();
    let lora = config.peft_config().context("LoRA config")?;
    let model = LoraModel::with_adapter(lm.model.clone(), "default", lora)?;
    println!("{}", model.trainable_parameters_report());
    let mut trainer = Trainer::new(
        model,
        &device,
        TrainerOptions::from_config(&config, args.max_steps),
    )?;
    trainer.set_run_id(run.id());
    for c in standard_callbacks(&args.output_dir, args.max_steps, 0)? {
        trainer.add_callback(c);
    }
    let summary = fit(
        &mut trainer,
        &data.train,
        Some(&data.validation),
        &FitOptions::from_config(&config, args.max_steps),
    )?;
    let tuned = trainer.into_model().valid();
    let after = answer(&tuned.model, &lm, &template, &unseen)?;
    for ((q, reference), (b, a)) in unseen.iter().zip(before.iter().zip(&after)) {
        let question = q.last().map_or("", |m| m.content.as_str());
        println!("\nQ: {question}\n  reference: {reference}\n  before:    {b}\n  after:     {a}");
    }
    let out = args.output_dir.join("adapter");
    tuned.export(&out)?;
    let mut meta = TrainingMetadata::new(&config, &summary);
    let counts = tuned.param_count();
    meta.train_examples = data.train_examples;
    meta.val_examples = data.val_examples;
    meta.trainable_params = counts.trainable;
    meta.all_params = counts.all;
    meta.write(&out)?;
    println!(
        "\ntrained {} steps: train loss {:.3}, validation loss {}; adapter in {}",
        summary.steps,
        summary.final_train_loss.unwrap_or(f64::NAN),
        summary
            .final_eval
            .as_ref()
            .map_or("-".into(), |e| format!("{:.3}", e.val_loss)),
        out.display()
    );
    Ok(())
}
