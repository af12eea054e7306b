//! kiln's main job: teach SmolLM2-135M-Instruct to answer questions about the Japanese census
//! table from the rows given in the prompt, with LoRA on the CPU, and measure it on prefectures
//! and a question kind it never saw in training.
//!
//! ```text
//! cargo run --release --example census_qa
//! cargo run --release --example census_qa -- --max-steps 60 --output-dir runs/census_qa
//! ```
//!
//! 1. Question/answer pairs come from `data/japan_census_prefectures.csv` through the data
//!    crate's generator (`kiln::data::qa`), open book: each question starts with the table
//!    rows it needs, so the answer can be read or computed from the prompt.
//! 2. The test split holds out whole prefectures (never in a training question) and one whole
//!    question kind (`grow_shrink`, never trained).
//! 3. Exact match before training, LoRA fine-tuning, exact match after; a table by kind with
//!    examples; the adapter (PEFT format), model card, metrics and loss curve are saved.
//!
//! Exact match: the expected short answer (`553,407`, `+3.5%`, `Kyoto`, `grew`) must be the
//! first answer of its type in the reply: for numbers, the first number in the reply that is
//! not a year named in the question, compared with its sign and percent sign ignored (a reply
//! "fell by 3.5%" counts for `-3.5%`); for names and verbs, the first candidate mentioned.
use anyhow::{Context, Result};
use clap::Parser;
use kiln::data::qa::{QaItem, QaKind, QaOptions, Table, generate_items};
use kiln::data::{ChatTemplate, EncodeOptions, Encoder, Record};
use kiln::lora::{LoraConfig, TargetModules};
use kiln::models::{CausalLm, GenerationConfig, Pretrained, generate};
use kiln::train::{
    EvalRow, RunMode, Sft, SftBatches, SftConfig, SftEvent, encode_records, padded_batches,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Fine-tune SmolLM2 on census questions and measure held-out exact match")]
struct Args {
    /// Model directory or .gguf (default: $KILN_MODEL, else the cached SmolLM2-135M-Instruct,
    /// fetched if missing).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The base model's Hugging Face Hub id (`org/name`), written as the adapter's
    /// `base_model_name_or_path` and the model card's `base_model` (default: from the model's
    /// location when it tells, see `SftConfig::base_model_id`).
    #[arg(long)]
    base_model_id: Option<String>,
    #[arg(long, default_value = "runs/census_qa")]
    output_dir: PathBuf,
    /// Replace a previous run in `--output-dir` (a non-empty output directory is refused
    /// otherwise).
    #[arg(long)]
    overwrite: bool,
    /// Optimizer steps (each on `batch_size` new conversations: one epoch).
    #[arg(long, default_value_t = 60)]
    max_steps: usize,
    /// Examples per optimizer step.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Dropout on the adapters' input (PEFT's default is 0).
    #[arg(long, default_value_t = 0.0)]
    lora_dropout: f64,
    /// Held-out test questions.
    #[arg(long, default_value_t = 40)]
    test_questions: usize,
    /// Prefectures held out of training.
    #[arg(long, default_value_t = 10)]
    held_out_prefectures: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, wgpu or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
    /// How to hold the model's matrices: stored (the default: the file's own format, e.g. a
    /// GGUF's blocks), f32, nf4, fp4 or int8 (quantized at load as bitsandbytes does).
    #[arg(long, default_value = "stored")]
    quantize: kiln::models::Quantization,
    /// Training precision. The main job's reference numbers are f32's (README); `bf16` (the
    /// trainer's default on CPUs with bf16 units) is faster and measured there too.
    #[arg(long, default_value = "f32")]
    precision: kiln::train::Precision,
    /// Also write the merged model as a Hugging Face directory (`<output-dir>/merged`, f32,
    /// about 540 MB) with kiln's logits of one prompt, for `tools/check_hf_export.py`.
    #[arg(long)]
    save_merged: bool,
    /// Also write the merged model as one GGUF file (`<output-dir>/model-<TYPE>.gguf`) that
    /// llama.cpp loads: Q8_0, Q4_K_M, Q4_0, F16, BF16 or F32.
    #[arg(long)]
    export_gguf: Option<kiln::models::gguf::GgufFileType>,
    /// The census table.
    #[arg(long, default_value = "data/japan_census_prefectures.csv")]
    table: PathBuf,
}

const SYSTEM: &str = "Answer from the census data in one sentence.";
/// Kinds a 135M model can learn in a few CPU minutes: pick the right row and column out of
/// several, compare two numbers. (Arithmetic kinds, `difference`, `percent_change`,
/// `density`, stay near 0% before and after: a 135M model does not learn 7-digit arithmetic
/// from a few hundred examples.)
const TRAIN_KINDS: [QaKind; 2] = [QaKind::Lookup, QaKind::Larger];
/// Rows shown besides the ones the question needs.
const DISTRACTORS: usize = 2;
const HELD_OUT_KIND: QaKind = QaKind::GrowShrink;

/// Greedy replies to the first question of each item, in batches of 8.
fn answer_all(
    model: &CausalLm,
    lm: &Pretrained,
    template: &ChatTemplate,
    items: &[QaItem],
) -> Result<Vec<String>> {
    let config = GenerationConfig {
        max_new_tokens: 40,
        eos_token_ids: lm.eos_token_ids(),
        ..GenerationConfig::default()
    };
    let bar = indicatif::ProgressBar::new(items.len() as u64);
    let mut replies = Vec::new();
    for chunk in items.chunks(8) {
        let prompts = chunk
            .iter()
            .map(|it| {
                let text = template.render(&it.messages[..2], true)?;
                Ok(lm.encode(&text, false)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let out = generate(model, &prompts, &config, None, &mut |_, _| {})?;
        for g in out {
            replies.push(lm.decode(&g.tokens, true)?.trim().to_string());
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(replies)
}

/// Accuracy by kind and overall.
struct Score {
    by_kind: BTreeMap<QaKind, (usize, usize)>,
    correct: Vec<bool>,
}

impl Score {
    fn new(items: &[QaItem], replies: &[String], keys: &[String]) -> Self {
        let mut by_kind = BTreeMap::new();
        let mut correct = Vec::new();
        for (item, reply) in items.iter().zip(replies) {
            let ok = item.is_answered_by(reply, keys);
            let e = by_kind.entry(item.kind).or_insert((0, 0));
            e.0 += usize::from(ok);
            e.1 += 1;
            correct.push(ok);
        }
        Self { by_kind, correct }
    }

    fn accuracy(&self, filter: impl Fn(QaKind) -> bool) -> (usize, usize) {
        self.by_kind
            .iter()
            .filter(|(k, _)| filter(**k))
            .fold((0, 0), |acc, (_, v)| (acc.0 + v.0, acc.1 + v.1))
    }
}

fn pct((a, n): (usize, usize)) -> String {
    format!("{:5.1}% ({a}/{n})", 100.0 * a as f64 / n.max(1) as f64)
}

/// The run's config: LoRA r=16 on the seven projections, AdamW, linear decay after 10% warmup.
fn config(args: &Args) -> SftConfig {
    let mut lora = LoraConfig::new(
        16,
        32.0,
        TargetModules::Names(
            [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ]
            .map(String::from)
            .to_vec(),
        ),
    );
    lora.lora_dropout = args.lora_dropout;
    let mut config = SftConfig::new(args.model.clone().unwrap_or_default());
    config.base_model_id = args.base_model_id.clone();
    config.quantization = args.quantize;
    config.output_dir = args.output_dir.clone();
    config.lora = Some(lora);
    config.micro_batch_size = args.batch_size;
    config.max_steps = Some(args.max_steps);
    config.optimizer.lr = args.lr;
    config.schedule.warmup_ratio = Some(0.1);
    config.eval.every = Some(10.max(args.max_steps / 4));
    config.seed = args.seed;
    config.precision = Some(args.precision);
    config.device = args.device.clone();
    config.data.train = vec![args.table.clone()];
    config.export.gguf = args.export_gguf;
    config.export.merged = args.save_merged;
    config
}

/// The before/after table by kind and four example replies.
fn print_comparison(
    test: &[QaItem],
    (before, score_before): (&[String], &Score),
    (after, score_after): (&[String], &Score),
) {
    println!("\nexact match on {} held-out questions", test.len());
    println!("{:<16} {:>18} {:>18}", "kind", "before", "after");
    for kind in score_after.by_kind.keys() {
        let mark = if *kind == HELD_OUT_KIND {
            " (unseen)"
        } else {
            ""
        };
        println!(
            "{:<16} {:>18} {:>18}",
            format!("{kind}{mark}"),
            pct(score_before.by_kind[kind]),
            pct(score_after.by_kind[kind])
        );
    }
    let seen = |k: QaKind| k != HELD_OUT_KIND;
    println!(
        "{:<16} {:>18} {:>18}\n{:<16} {:>18} {:>18}",
        "trained kinds",
        pct(score_before.accuracy(seen)),
        pct(score_after.accuracy(seen)),
        "all",
        pct(score_before.accuracy(|_| true)),
        pct(score_after.accuracy(|_| true))
    );
    println!("\nexamples:");
    for i in (0..test.len()).step_by((test.len() / 4).max(1)).take(4) {
        let q = &test[i].messages[1].content;
        println!("  Q: {}", q.rsplit("Question: ").next().unwrap_or(q));
        println!("     expected: {}", test[i].answer);
        println!(
            "     before: {} [{}]",
            before[i],
            if score_before.correct[i] {
                "ok"
            } else {
                "wrong"
            }
        );
        println!(
            "     after:  {} [{}]",
            after[i],
            if score_after.correct[i] {
                "ok"
            } else {
                "wrong"
            }
        );
    }
}

/// kiln's logits of one test prompt beside `merged/`, for `tools/check_hf_export.py`.
fn write_merged_check(
    merged: &Pretrained,
    template: &ChatTemplate,
    item: &QaItem,
    output_dir: &std::path::Path,
) -> Result<()> {
    // The check logits come from the adapted model, which the merged weights equal to
    // float rounding.
    let prompt = template.render(&item.messages[..2], true)?;
    let ids = merged.encode(&prompt, false)?;
    let t = ids.len();
    let logits = merged
        .model
        .forward(&kiln::models::DecoderInput::new(ids.clone(), 1, t))?;
    let dims = logits.dims().to_vec();
    let values = logits
        .into_data()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let id_values: Vec<f32> = ids.iter().map(|&i| i as f32).collect();
    kiln::models::write_f32_safetensors(
        // Beside `merged/`, not in it: the directory is what gets uploaded.
        &output_dir.join("merged_kiln_logits.safetensors"),
        &[
            ("logits", dims, &values),
            ("input_ids", vec![1, t], &id_values),
        ],
    )?;
    println!(
        "check the merged model: python3 tools/check_hf_export.py {}",
        output_dir.join("merged").display()
    );
    Ok(())
}

/// The model card's evaluation table: exact match overall and by kind, before and after.
fn card_rows(questions: usize, score_before: &Score, score_after: &Score) -> Vec<EvalRow> {
    let frac = |(a, n): (usize, usize)| a as f64 / n.max(1) as f64;
    std::iter::once((
        format!("exact match, {questions} held-out questions"),
        score_before.accuracy(|_| true),
        score_after.accuracy(|_| true),
    ))
    .chain(score_after.by_kind.iter().map(|(k, after)| {
        (
            format!("exact match: {}", k.as_str()),
            score_before.by_kind[k],
            *after,
        )
    }))
    .map(|(metric, before, after)| EvalRow {
        metric,
        before: Some(frac(before)),
        after: frac(after),
    })
    .collect()
}

fn main() -> Result<()> {
    kiln::train::keep_freed_memory();
    let args = Args::parse();
    // Before any work: refuse to mix this run with another one in the same directory, and
    // check the config (a bad flag fails at once rather than after the baseline evaluation).
    let mode = RunMode::from_flags(false, args.overwrite)?;
    let mut sft = Sft::from_config(config(&args), mode)?;
    let lm = sft.load_model()?;
    println!("model: {}", sft.config().model.display());
    let template = sft
        .chat_template(&lm)?
        .context("the model has no chat template")?;
    let table = Table::from_csv(&args.table, "prefecture").with_context(|| {
        if args.table.is_relative() && !args.table.exists() {
            format!(
                "--table {} is read from the working directory: run census_qa from the \
                 repository root, or pass --table with the CSV's path",
                args.table.display()
            )
        } else {
            format!("reading --table {}", args.table.display())
        }
    })?;

    // Held-out prefectures: a seeded choice; the rest train.
    let shuffled = kiln::data::shuffled(table.keys.clone(), args.seed);
    let (test_keys, train_keys) =
        shuffled.split_at(args.held_out_prefectures.min(table.keys.len() - 2));
    let qa = |keys: &[String], kinds: Vec<QaKind>, count: usize, seed: u64| {
        generate_items(
            &table,
            &QaOptions {
                seed,
                count,
                system_prompt: Some(SYSTEM.into()),
                follow_up: 0.0,
                kinds,
                keys: Some(keys.to_vec()),
                context: true,
                distractors: DISTRACTORS,
                derived: Vec::new(),
            },
        )
    };
    let n_train = args.max_steps * args.batch_size;
    let train = qa(train_keys, TRAIN_KINDS.to_vec(), n_train, args.seed + 1)?;
    let val = qa(train_keys, TRAIN_KINDS.to_vec(), 16, args.seed + 2)?;
    let mut test_kinds = TRAIN_KINDS.to_vec();
    test_kinds.push(HELD_OUT_KIND);
    let test = qa(test_keys, test_kinds, args.test_questions, args.seed + 3)?;
    println!(
        "data: {} training conversations on {} prefectures; {} test questions on {} held-out \
         prefectures ({}); held-out kind: {HELD_OUT_KIND}",
        train.len(),
        train_keys.len(),
        test.len(),
        test_keys.len(),
        test_keys.join(", ")
    );

    let t0 = Instant::now();
    let before = answer_all(&lm.model, &lm, &template, &test)?;
    let score_before = Score::new(&test, &before, &table.keys);
    println!(
        "before training: exact match {} ({:.0} s)",
        pct(score_before.accuracy(|_| true)),
        t0.elapsed().as_secs_f64()
    );
    // Generation ran on rayon's workers: their kept memory must not add to training's peak.
    kiln::train::release_freed_memory();

    // Encode: completion-only labels (the assistant's answer and its <|im_end|>).
    let encoder = Encoder::new(&lm.tokenizer, Some(&template), EncodeOptions::default())?;
    let to_records = |items: &[QaItem]| -> Vec<Record> {
        items
            .iter()
            .map(|i| Record::Conversation(i.messages.clone()))
            .collect()
    };
    let pad = lm.eos_token_ids().first().copied().unwrap_or(0);
    let (train_ex, stats) = encode_records(&encoder, &to_records(&train))?;
    let (val_ex, _) = encode_records(&encoder, &to_records(&val))?;
    let train_batches = padded_batches(&train_ex, args.batch_size, pad, args.seed)?;
    let val_batches = padded_batches(&val_ex, args.batch_size, pad, args.seed)?;
    println!(
        "encoded: {} examples, {} tokens, {} trained (mean length {:.0})",
        stats.kept,
        stats.tokens,
        stats.trained_tokens,
        stats.tokens as f64 / stats.kept.max(1) as f64
    );

    let batches = SftBatches {
        train: &train_batches,
        validation: Some(&val_batches),
        train_examples: stats.kept,
        val_examples: val_ex.len(),
    };
    let mut trained = sft.train(&lm, batches, Vec::new(), &mut |event| {
        if let SftEvent::Parameters(report) = event {
            println!("{report}");
        }
    })?;
    let summary = &trained.summary;
    println!(
        "trained {} steps in {:.0} s ({} tokens, {:.0} tokens/s); final train loss {:.3}, \
         validation loss {:.3}",
        summary.steps,
        summary.elapsed_secs,
        summary.tokens_seen,
        summary.tokens_seen as f64 / summary.elapsed_secs.max(1e-9),
        summary.final_train_loss.unwrap_or(f64::NAN),
        summary.final_eval.as_ref().map_or(f64::NAN, |e| e.val_loss)
    );

    kiln::train::release_freed_memory();
    let after = answer_all(trained.model.causal_lm(), &lm, &template, &test)?;
    let score_after = Score::new(&test, &after, &table.keys);

    print_comparison(&test, (&before, &score_before), (&after, &score_after));

    let meta = &mut trained.metadata;
    meta.data = vec![format!(
        "{} (open-book QA, {} prefectures; test: {})",
        args.table.display(),
        train_keys.len(),
        test_keys.join(", ")
    )];
    meta.sequences = format!(
        "no truncation; each batch padded to its longest conversation (longest {} tokens), no \
         packing",
        train_ex
            .iter()
            .map(|e| e.input_ids.len())
            .max()
            .unwrap_or(0)
    );
    meta.evaluation = card_rows(test.len(), &score_before, &score_after);
    let merged = trained.save(&lm, &mut |event| println!("{event}"))?;
    if let Some(merged) = merged {
        write_merged_check(&merged, &template, &test[0], &args.output_dir)?;
    }
    let report = serde_json::json!({
        "test_questions": test.len(),
        "held_out_prefectures": test_keys,
        "held_out_kind": HELD_OUT_KIND.as_str(),
        "exact_match_before": score_before.accuracy(|_| true),
        "exact_match_after": score_after.accuracy(|_| true),
        "by_kind": score_after.by_kind.iter().map(|(k, v)| (k.as_str().to_string(), serde_json::json!({"before": score_before.by_kind[k], "after": v}))).collect::<serde_json::Map<_, _>>(),
        "replies": test.iter().zip(before.iter().zip(&after)).map(|(t, (b, a))| serde_json::json!({"question": t.messages[1].content, "expected": t.answer, "before": b, "after": a})).collect::<Vec<_>>(),
    });
    std::fs::write(
        args.output_dir.join("eval.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!(
        "\nsaved: {0}/adapter (PEFT adapter, README.md model card, training_metadata.json), \
         {0}/metrics.jsonl, {0}/tensorboard, {0}/loss_curve.png, {0}/eval.json",
        args.output_dir.display()
    );
    Ok(())
}
