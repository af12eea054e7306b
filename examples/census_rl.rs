//! Reinforcement learning from a checkable answer: GRPO (TRL's `GRPOTrainer` objective) on the
//! census question kinds that supervised fine-tuning leaves low, starting from `census_qa`'s
//! adapter, with a reward of 1 when the reply's answer is right and 0 otherwise.
//!
//! ```text
//! cargo run --release --example census_qa          # the SFT adapter, runs/census_qa/adapter
//! cargo run --release --example census_rl
//! cargo run --release --example census_rl -- --max-steps 40 --kinds grow_shrink
//! cargo run --release --example census_rl -- --precision bf16 --bf16-weights   # faster rollouts
//! ```
//!
//! 1. Questions come from `data/japan_census_prefectures.csv` as in `census_qa` (open book,
//!    same seed, so the same ten prefectures are held out); training prompts are on the other
//!    prefectures, of the kinds in `--kinds` (default `grow_shrink`, which SFT never trained
//!    and leaves at 25%, and the arithmetic kinds `difference` and `percent_change`).
//! 2. Held-out exact match per kind with the SFT adapter, GRPO steps (`num_generations`
//!    samples per prompt at temperature 1, reward = `census_qa`'s exact match: the first number
//!    of the reply, or the first of grew/shrank/stayed), held-out exact match again.
//! 3. `runs/census_rl/` gets `metrics.jsonl` (TRL's names: `reward`, `reward_std`,
//!    `completions/mean_length`, `clip_ratio/*`, `generation_s`, `training_s`...),
//!    `loss_curve.png` and the adapter.
use anyhow::{Context, Result};
use clap::Parser;
use kiln::data::qa::{QaItem, QaKind, QaOptions, Table, generate_items};
use kiln::data::{ChatTemplate, Location, shuffled};
use kiln::lora::LoraModel;
use kiln::models::{CausalLm, GenerationConfig, Pretrained, generate};
use kiln::train::{GrpoOptions, GrpoRun, Prompt, PromptRecord, Reward, run_grpo};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(
    about = "GRPO on census question kinds SFT leaves low; held-out exact match before/after"
)]
struct Args {
    /// Model directory or .gguf (default: $KILN_MODEL, else the cached SmolLM2-135M-Instruct).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The SFT adapter to start from (it trains further); `none`: a new LoRA adapter on the
    /// base model.
    #[arg(long, default_value = "runs/census_qa/adapter")]
    adapter: PathBuf,
    #[arg(long, default_value = "runs/census_rl")]
    output_dir: PathBuf,
    #[arg(long)]
    overwrite: bool,
    #[arg(long, default_value_t = 30)]
    max_steps: usize,
    /// Question kinds to train and measure (comma-separated `QaKind` names).
    #[arg(long, default_value = "grow_shrink,difference,percent_change")]
    kinds: String,
    /// Question kinds measured before and after (default: `--kinds`).
    #[arg(long)]
    eval_kinds: Option<String>,
    /// Prompts per optimizer step (each sampled `num_generations` times).
    #[arg(long, default_value_t = 2)]
    prompts_per_step: usize,
    #[arg(long, default_value_t = 8)]
    num_generations: usize,
    #[arg(long, default_value_t = 32)]
    max_completion_length: usize,
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// KL coefficient (0: no reference pass, TRL's default).
    #[arg(long, default_value_t = 0.0)]
    beta: f64,
    #[arg(long, default_value = "dapo")]
    loss_type: String,
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Held-out questions per kind.
    #[arg(long, default_value_t = 12)]
    test_per_kind: usize,
    #[arg(long, default_value_t = 10)]
    held_out_prefectures: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "data/japan_census_prefectures.csv")]
    table: PathBuf,
    /// Training precision, which the rollouts sample in too (f32 or bf16; default: bf16 on
    /// CPUs with bf16 units, f32 elsewhere).
    #[arg(long)]
    precision: Option<kiln::train::Precision>,
    /// Hold the frozen quantized base also in bf16 once for the run (bf16 precision only):
    /// faster rollouts for 2 bytes per base weight more (about 270 MB on SmolLM2-135M).
    #[arg(long)]
    bf16_weights: bool,
}

/// `census_qa`'s system prompt and distractor rows (the SFT adapter was trained with them).
const SYSTEM: &str = "Answer from the census data in one sentence.";
const DISTRACTORS: usize = 2;

/// Held-out exact match per kind, greedy replies in batches of 8.
fn score(
    model: &CausalLm,
    lm: &Pretrained,
    template: &ChatTemplate,
    items: &[QaItem],
    keys: &[String],
) -> Result<BTreeMap<QaKind, (usize, usize)>> {
    let config = GenerationConfig {
        max_new_tokens: 40,
        eos_token_ids: lm.eos_token_ids(),
        ..GenerationConfig::default()
    };
    let mut by_kind = BTreeMap::new();
    for chunk in items.chunks(8) {
        let prompts = chunk
            .iter()
            .map(|it| Ok(lm.encode(&template.render(&it.messages[..2], true)?, false)?))
            .collect::<Result<Vec<_>>>()?;
        let out = generate(model, &prompts, &config, None, &mut |_, _| {})?;
        for (item, g) in chunk.iter().zip(out) {
            let reply = lm.decode(&g.tokens, true)?;
            let e = by_kind.entry(item.kind).or_insert((0, 0));
            e.0 += usize::from(item.is_answered_by(reply.trim(), keys));
            e.1 += 1;
        }
    }
    Ok(by_kind)
}

/// The model with `adapter` applied, and its per-kind score.
fn measure(
    args: &Args,
    adapter: &Path,
    items: &[QaItem],
    keys: &[String],
) -> Result<BTreeMap<QaKind, (usize, usize)>> {
    let path = kiln::models::fetch::resolve_model(args.model.as_deref(), true)?;
    let lm = Pretrained::load(&path, &kiln::models::default_device())?;
    let template = ChatTemplate::select(
        None,
        lm.extras.chat_template.as_deref(),
        lm.extras.chat_template_origin.as_deref(),
        lm.extras.bos_token.as_deref(),
        lm.extras.eos_token.as_deref(),
    )?
    .context("the model has no chat template")?;
    if adapter == Path::new("none") {
        return score(&lm.model, &lm, &template, items, keys);
    }
    let mut m = LoraModel::new(lm.model.clone());
    m.load_adapter(adapter, "default")
        .with_context(|| format!("{} (run census_qa first)", adapter.display()))?;
    score(&m.model, &lm, &template, items, keys)
}

fn pct((a, n): (usize, usize)) -> String {
    format!("{:5.1}% ({a}/{n})", 100.0 * a as f64 / n.max(1) as f64)
}

/// Training prompts as prompt-only records; field `item` indexes `items` for the reward.
fn records(items: &[QaItem]) -> Vec<PromptRecord> {
    items
        .iter()
        .enumerate()
        .map(|(i, it)| {
            let mut fields = serde_json::Map::new();
            fields.insert("item".into(), i.into());
            fields.insert("answer".into(), it.answer.clone().into());
            PromptRecord {
                prompt: Prompt::Messages(it.messages[..2].to_vec()),
                fields,
                at: Location {
                    file: "census questions".into(),
                    line: i + 1,
                },
            }
        })
        .collect()
}

fn main() -> Result<()> {
    kiln::train::keep_freed_memory();
    let args = Args::parse();
    let parse = |list: &str| -> Result<Vec<QaKind>> {
        list.split(',')
            .map(|k| {
                QaKind::ALL
                    .into_iter()
                    .find(|q| q.as_str() == k.trim())
                    .with_context(|| format!("unknown question kind `{k}`"))
            })
            .collect()
    };
    let kinds = parse(&args.kinds)?;
    let eval_kinds = parse(args.eval_kinds.as_deref().unwrap_or(&args.kinds))?;
    let table = Table::from_csv(&args.table, "prefecture").with_context(|| {
        format!(
            "--table {} (run from the repository root)",
            args.table.display()
        )
    })?;
    // The same held-out prefectures as census_qa (same seed).
    let keys = shuffled(table.keys.clone(), args.seed);
    let (test_keys, train_keys) = keys.split_at(args.held_out_prefectures.min(keys.len() - 2));
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
    let mut test = Vec::new();
    for (i, &k) in eval_kinds.iter().enumerate() {
        test.extend(qa(
            test_keys,
            vec![k],
            args.test_per_kind,
            args.seed + 30 + i as u64,
        )?);
    }
    let n_train = (args.max_steps * args.prompts_per_step).max(64);
    let train = Arc::new(qa(train_keys, kinds.clone(), n_train, args.seed + 20)?);
    println!(
        "{} training prompts on {} prefectures; {} held-out questions on {} ({})",
        train.len(),
        train_keys.len(),
        test.len(),
        test_keys.len(),
        test_keys.join(", ")
    );

    let t0 = Instant::now();
    let before = measure(&args, &args.adapter, &test, &table.keys)?;
    println!("before (SFT adapter): {:.0} s", t0.elapsed().as_secs_f64());

    let run = GrpoRun {
        model: args.model.clone().unwrap_or_default(),
        output_dir: args.output_dir.clone(),
        max_steps: args.max_steps,
        lr: args.lr,
        grpo: GrpoOptions {
            beta: args.beta,
            loss_type: args.loss_type.parse()?,
            num_generations: args.num_generations,
            max_completion_length: args.max_completion_length,
            batch_size: args.num_generations * args.prompts_per_step,
            ..GrpoOptions::default()
        },
        temperature: args.temperature,
        init_adapter: (args.adapter != Path::new("none")).then(|| args.adapter.clone()),
        seed: args.seed,
        precision: args.precision,
        bf16_weights: args.bf16_weights,
        overwrite: args.overwrite,
        ..GrpoRun::default()
    };
    let (items, keys) = (Arc::clone(&train), table.keys.clone());
    let reward = Reward::Custom {
        name: "census_exact_match".into(),
        f: Box::new(move |r, reply| {
            let item = &items[usize::try_from(r.fields.get("item")?.as_u64()?).ok()?];
            Some(f64::from(u8::from(
                item.is_answered_by(reply.trim(), &keys),
            )))
        }),
    };
    let t1 = Instant::now();
    let summary = run_grpo(&run, Some(records(&train)), vec![(reward, 1.0)], |m| {
        println!(
            "step {:3}: reward {:.3} ± {:.3}, zero-std groups {:.2}, length {:.1}, loss {:+.4}, \
             gen {:.1} s, train {:.1} s",
            m.step,
            m.reward,
            m.reward_std,
            m.frac_reward_zero_std,
            m.mean_length,
            m.loss,
            m.generation_s,
            m.training_s
        );
    })?;
    let (gen_s, train_s) = summary.history.iter().fold((0.0, 0.0), |a, m| {
        (a.0 + m.generation_s, a.1 + m.training_s)
    });
    println!(
        "{} GRPO steps in {:.0} s ({gen_s:.0} s generating, {train_s:.0} s training)",
        summary.history.len(),
        t1.elapsed().as_secs_f64()
    );
    let after = measure(&args, &summary.adapter_dir, &test, &table.keys)?;
    println!(
        "\n| kind (held-out prefectures) | SFT adapter | after {} GRPO steps |",
        summary.history.len()
    );
    println!("|---|---|---|");
    for (kind, b) in &before {
        let a = after.get(kind).copied().unwrap_or((0, 0));
        println!("| {kind} | {} | {} |", pct(*b), pct(a));
    }
    Ok(())
}
