//! Shows exactly what a model is trained on: a conversation rendered with the model's chat
//! template, and with `--show-labels` each token with its label mask (`T` = trained).
//!
//! ```text
//! cargo run --release --example render -- --messages-json '[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello!"}]' --show-labels
//! cargo run --release --example render -- --data data/tutor.jsonl --index 3 --json
//! ```
use anyhow::{Context, Result, bail};
use clap::Parser;
use kiln::data::{
    ChatTemplate, EncodeOptions, Encoded, Encoder, Message, Reader, Record, Role, show_labels,
    show_trained_text,
};
use kiln::models::Pretrained;
use kiln::models::fetch::resolve_model;
use kiln::models::tokenizer::{load_extras, load_tokenizer};
use serde_json::json;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "Render a conversation with a model's chat template and show its labels")]
struct Args {
    /// Model directory (tokenizer.json + tokenizer_config.json) or .gguf file.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Messages as JSON: `[{"role": "user", "content": "..."}, ...]`.
    #[arg(long, conflicts_with = "data")]
    messages_json: Option<String>,
    /// A dataset file (any format the data crate reads); with `--index`.
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    index: usize,
    /// End with the assistant prompt (for generation) instead of training labels.
    #[arg(long)]
    add_generation_prompt: bool,
    /// Print every token with its label mark.
    #[arg(long)]
    show_labels: bool,
    /// Print `{"text", "input_ids", "labels"}` as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let path = resolve_model(args.model.as_deref(), true)?;
    // A directory needs no weights: only its tokenizer files.
    let (tokenizer, extras) = if path.is_dir() {
        (load_tokenizer(&path)?, load_extras(&path)?)
    } else {
        let lm = Pretrained::load(&path, &kiln::models::default_device())?;
        (lm.tokenizer, lm.extras)
    };
    let template = ChatTemplate::new(
        extras
            .chat_template
            .as_deref()
            .context("the model has no chat template")?,
        extras.bos_token.as_deref(),
        extras.eos_token.as_deref(),
    )?;
    let record = match (&args.messages_json, &args.data) {
        (Some(j), None) => {
            let messages: Vec<Message> =
                serde_json::from_str(j).context("--messages-json: a list of {role, content}")?;
            Record::Conversation(messages)
        }
        (None, Some(file)) => {
            let (records, _) = Reader::open(&[file.display().to_string()])?.read_all()?;
            let n = records.len();
            records.into_iter().nth(args.index).with_context(|| {
                format!("{}: --index {} of {n} records", file.display(), args.index)
            })?
        }
        _ => bail!("give --messages-json or --data"),
    };
    // Without an assistant turn there is nothing to train; the template still renders it, as
    // transformers' `apply_chat_template` does.
    let untrainable = matches!(&record, Record::Conversation(m)
        if !m.iter().any(|m| m.role == Role::Assistant));
    if args.add_generation_prompt || untrainable {
        let Record::Conversation(m) = &record else {
            bail!("--add-generation-prompt needs a conversation record")
        };
        let text = template.render(m, args.add_generation_prompt)?;
        let ids = tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .get_ids()
            .to_vec();
        if args.json {
            println!("{}", json!({"text": text, "input_ids": ids}));
        } else {
            print!("{text}");
            if untrainable && !args.add_generation_prompt {
                eprintln!("(no assistant message: nothing in it would be trained)");
            }
        }
        return Ok(());
    }
    let encoder = Encoder::new(&tokenizer, Some(&template), EncodeOptions::default())?;
    let text = encoder.render(&record)?.text;
    let example = match encoder.encode(&record)? {
        Encoded::Kept { example, .. } => example,
        other => bail!("the record is not trainable: {other:?}"),
    };
    if args.json {
        println!(
            "{}",
            json!({"text": text, "input_ids": example.input_ids, "labels": example.labels})
        );
    } else if args.show_labels {
        print!("{}", show_labels(&tokenizer, &example));
    } else {
        println!("{text}");
        println!(
            "--- trained spans in [[ ]]:\n{}",
            show_trained_text(&tokenizer, &example)
        );
    }
    Ok(())
}
