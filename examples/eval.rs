//! Evaluate a model (base or with adapters) on a dataset, and compare two configurations.
//!
//! ```text
//! # generation metrics and reference perplexity of one configuration
//! cargo run --release --example eval -- --data data/tutor_unseen.jsonl --metric exact_match,bleu,rouge,perplexity
//! # A/B: base (A) against an adapter (B); --adapter sets A instead of the base
//! cargo run --release --example eval -- --data data/tutor_unseen.jsonl --compare-adapter runs/tutor/adapter
//! # multiple choice by log-likelihood (JSONL of {"context", "choices", "gold"}), as lm-eval scores it
//! cargo run --release --example eval -- --choice --data mc.jsonl --compare-adapter runs/tutor/adapter
//! # arithmetic answers: last number of the output, equal to the reference within 0.01
//! cargo run --release --example eval -- --data gsm.jsonl --extract final_number --numeric-tolerance 0.01
//! ```
//!
//! Writes into `--output-dir` (default `eval-out`): `a.jsonl`/`b.jsonl` (one record per example:
//! prompt, references, output, extracted answer, metric values), `a.json`/`b.json` (corpus
//! scores, throughput) and, with `--compare-adapter`, `comparison.md` and `comparison.json`
//! (per-metric table, wins/ties/losses, paired bootstrap interval, changed examples).
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Parser;
use kiln::data::{ChatTemplate, Reader};
use kiln::eval::harness::write_records;
use kiln::eval::io::write_json;
use kiln::eval::{
    ChoiceItem, CompareOptions, EvalExample, EvalMetric, EvalReport, Extractor, HarnessConfig,
    Normalize, NumberFormat, NumericTolerance, PairEncoder, choice_accuracy, compare, evaluate,
    paired_bootstrap, score_choices,
};
use kiln::lora::LoraModel;
use kiln::models::fetch::resolve_model;
use kiln::models::{CausalLm, Pretrained, Sampling, parse_device};

#[derive(Parser, Debug)]
#[command(about = "Evaluate a model with or without adapters; compare two configurations")]
struct Args {
    /// Model directory or .gguf (default: $KILN_MODEL, else the cached SmolLM2-135M-Instruct).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Adapter of configuration A, `DIR` or `DIR=WEIGHT`; repeat for a weighted mix.
    #[arg(long = "adapter", value_parser = kiln::lora::parse_adapter_arg)]
    adapters: Vec<(PathBuf, f64)>,
    /// Adapter of configuration B (compared against A).
    #[arg(long = "compare-adapter", value_parser = kiln::lora::parse_adapter_arg)]
    compare_adapters: Vec<(PathBuf, f64)>,
    /// Evaluation data (conversations: the last assistant turn is the reference; or
    /// prompt/completion records). With --choice: JSONL of {"context","choices","gold"}.
    #[arg(long)]
    data: PathBuf,
    /// Score multiple-choice items by log-likelihood instead of generating.
    #[arg(long)]
    choice: bool,
    /// exact_match, numeric_match, bleu, chrf, rouge, perplexity (comma-separated).
    #[arg(long, default_value = "exact_match,bleu,rouge,perplexity")]
    metric: String,
    /// Answer extraction: full, first_line, final_number, regex:<pattern>.
    #[arg(long, default_value = "full")]
    extract: String,
    /// Exact-match normalisation: exact, squad, loose.
    #[arg(long, default_value = "squad")]
    normalize: String,
    /// Number handling before exact match: keep, strip_thousands (1,234 -> 1234), canonical
    /// (also 1234.50 -> 1234.5).
    #[arg(long, default_value = "keep")]
    numbers: String,
    /// Absolute tolerance of numeric_match (added to --metric when set).
    #[arg(long)]
    numeric_tolerance: Option<f64>,
    /// Relative tolerance of numeric_match (added to --metric when set; default 1e-9).
    #[arg(long)]
    numeric_rel_tolerance: Option<f64>,
    /// Evaluate the first N examples only.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Sample with this temperature (greedy when absent).
    #[arg(long)]
    temperature: Option<f32>,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop generating a row once its output contains this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    #[arg(long, default_value = "eval-out")]
    output_dir: PathBuf,
    /// Bootstrap resamples of the A/B comparison.
    #[arg(long, default_value_t = 1000)]
    resamples: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// How to hold the model's matrices: stored (the default: the file's own format, e.g. a
    /// GGUF's blocks), f32, nf4, fp4 or int8 (quantized at load as bitsandbytes does).
    #[arg(long, default_value = "stored")]
    quantize: kiln::models::Quantization,
    /// Precision of the products by the weights: f32 (the reference) or bf16 (as a model loaded
    /// with `torch_dtype=torch.bfloat16` multiplies: inputs, weights and outputs of the products
    /// rounded to bf16, on the CPU's bf16 unit where it has one; norms and attention stay f32).
    #[arg(long, default_value = "f32")]
    precision: kiln::lora::Precision,
}

fn with_adapters(base: &CausalLm, adapters: &[(PathBuf, f64)]) -> Result<CausalLm> {
    if adapters.is_empty() {
        return Ok(base.clone());
    }
    let mut lora = LoraModel::new(base.clone());
    lora.load_mix(adapters)?;
    Ok(lora.into_inner())
}

fn label(adapters: &[(PathBuf, f64)]) -> String {
    if adapters.is_empty() {
        return "base".into();
    }
    adapters
        .iter()
        .map(|(p, w)| {
            if *w == 1.0 {
                p.display().to_string()
            } else {
                format!("{}={w}", p.display())
            }
        })
        .collect::<Vec<_>>()
        .join("+")
}

fn harness_config(args: &Args, lm: &Pretrained) -> Result<HarnessConfig> {
    let mut metrics = EvalMetric::parse_list(&args.metric)?;
    let default_tol = NumericTolerance::default();
    let numeric_tolerance = NumericTolerance::new(
        args.numeric_tolerance.unwrap_or(default_tol.abs),
        args.numeric_rel_tolerance.unwrap_or(default_tol.rel),
    )?;
    let tolerance_set = args.numeric_tolerance.is_some() || args.numeric_rel_tolerance.is_some();
    if tolerance_set && !metrics.contains(&EvalMetric::NumericMatch) {
        metrics.push(EvalMetric::NumericMatch);
    }
    let mut cfg = HarnessConfig {
        metrics,
        batch_size: args.batch_size,
        extractor: args.extract.parse::<Extractor>()?,
        normalize: args
            .normalize
            .parse::<Normalize>()?
            .with_numbers(args.numbers.parse::<NumberFormat>()?),
        numeric_tolerance,
        ..Default::default()
    };
    cfg.generation.max_new_tokens = args.max_new_tokens;
    cfg.generation.eos_token_ids = lm.eos_token_ids();
    cfg.generation.stop_strings = args.stop.clone();
    cfg.generation.seed = args.seed;
    cfg.generation.sampling =
        Sampling::from_settings(args.temperature.unwrap_or(0.0), args.top_k, args.top_p)?;
    Ok(cfg)
}

fn print_report(r: &EvalReport) {
    println!(
        "{}: {} examples, {} generated tokens in {:.1} s ({:.1} tok/s)",
        r.label, r.n, r.generated_tokens, r.seconds, r.tokens_per_s
    );
    for (k, v) in &r.corpus {
        println!("  {k:<14} {v:.4}");
    }
}

fn write_report(dir: &Path, name: &str, r: &EvalReport) -> Result<()> {
    write_records(&dir.join(format!("{name}.jsonl")), &r.records)?;
    write_json(&dir.join(format!("{name}.json")), r)?;
    Ok(())
}

fn run_generation(args: &Args, lm: &Pretrained, a: &CausalLm, b: Option<&CausalLm>) -> Result<()> {
    let template = ChatTemplate::select(
        None,
        lm.extras.chat_template.as_deref(),
        lm.extras.chat_template_origin.as_deref(),
        lm.extras.bos_token.as_deref(),
        lm.extras.eos_token.as_deref(),
    )?;
    let (records, _) = Reader::open(&[args.data.display().to_string()])?.read_all()?;
    let n = args.limit.map_or(records.len(), |l| l.min(records.len()));
    let examples = records[..n]
        .iter()
        .enumerate()
        .map(|(i, r)| EvalExample::from_record(i, r))
        .collect::<Result<Vec<_>, _>>()?;
    let cfg = harness_config(args, lm)?;
    let ra = evaluate(
        &label(&args.adapters),
        a,
        &lm.tokenizer,
        template.as_ref(),
        &examples,
        &cfg,
    )?;
    print_report(&ra);
    write_report(&args.output_dir, "a", &ra)?;
    if let Some(b) = b {
        let rb = evaluate(
            &label(&args.compare_adapters),
            b,
            &lm.tokenizer,
            template.as_ref(),
            &examples,
            &cfg,
        )?;
        print_report(&rb);
        write_report(&args.output_dir, "b", &rb)?;
        let opts = CompareOptions {
            resamples: args.resamples,
            seed: args.seed,
            ..Default::default()
        };
        let c = compare(&ra, &rb, opts)?;
        c.write(&args.output_dir)?;
        println!("\n{}", c.to_markdown(10));
    }
    Ok(())
}

fn run_choice(args: &Args, lm: &Pretrained, a: &CausalLm, b: Option<&CausalLm>) -> Result<()> {
    let text = std::fs::read_to_string(&args.data)
        .with_context(|| format!("reading {}", args.data.display()))?;
    let mut items = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let item: ChoiceItem = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a choice item", args.data.display(), i + 1))?;
        items.push(item);
    }
    items.truncate(args.limit.unwrap_or(items.len()));
    let eos = lm.eos_token_ids().first().copied();
    let encoder = PairEncoder::new(&lm.tokenizer, lm.model.config.bos_token_id, eos)?;
    let ra = score_choices(a, &encoder, &items, " ", args.batch_size)?;
    let acc_a = choice_accuracy(&ra)?;
    println!(
        "{}: {}",
        label(&args.adapters),
        serde_json::to_string(&acc_a)?
    );
    let mut out = serde_json::json!({ "a": { "label": label(&args.adapters), "accuracy": acc_a, "items": ra } });
    if let Some(b) = b {
        let rb = score_choices(b, &encoder, &items, " ", args.batch_size)?;
        let acc_b = choice_accuracy(&rb)?;
        println!(
            "{}: {}",
            label(&args.compare_adapters),
            serde_json::to_string(&acc_b)?
        );
        let correct = |r: &[kiln::eval::ChoiceResult]| -> Vec<f64> {
            r.iter()
                .map(|x| f64::from(u8::from(x.pred == x.gold)))
                .collect()
        };
        let cmp = paired_bootstrap(
            &correct(&ra),
            &correct(&rb),
            args.resamples,
            0.95,
            args.seed,
        )?;
        println!(
            "acc B − A = {:+.4} (95% CI [{:+.4}, {:+.4}]), wins/ties/losses {}/{}/{}",
            cmp.delta, cmp.ci_low, cmp.ci_high, cmp.wins, cmp.ties, cmp.losses
        );
        out["b"] = serde_json::json!({ "label": label(&args.compare_adapters), "accuracy": acc_b, "items": rb });
        out["acc_comparison"] = serde_json::to_value(&cmp)?;
    }
    write_json(&args.output_dir.join("choice.json"), &out)?;
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = parse_device(&args.device)?;
    let path = resolve_model(args.model.as_deref(), true)?;
    let mut lm = Pretrained::load_as(&path, &device, args.quantize)?;
    lm.model.set_precision(args.precision);
    let a = with_adapters(&lm.model, &args.adapters)?;
    let b = if args.compare_adapters.is_empty() {
        None
    } else {
        Some(with_adapters(&lm.model, &args.compare_adapters)?)
    };
    std::fs::create_dir_all(&args.output_dir)?;
    if args.choice {
        run_choice(&args, &lm, &a, b.as_ref())?;
    } else {
        run_generation(&args, &lm, &a, b.as_ref())?;
    }
    println!("reports in {}", args.output_dir.display());
    Ok(())
}
