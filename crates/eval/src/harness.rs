//! Generation-based evaluation over a dataset: prompts rendered with the chat template,
//! batched generation (greedy, or sampled with a seed), stop conditions, answer extraction,
//! per-example metric values and corpus scores, per-example records in JSON Lines.
//!
//! Generated text is decoded with special tokens skipped and cut at the first occurrence of
//! any stop string (the stop string itself is not kept); the answer is then extracted with the
//! configured [`Extractor`]. Exact match compares the answer after [`Normalize`]; numeric match
//! parses answer and references as numbers and compares them within [`NumericTolerance`].
//!
//! Examples come from `kiln-data` records: a conversation's last assistant message is the
//! reference and the messages before it are the prompt; a prompt/completion record's
//! completion is the reference and its prompt is used as is (no template).
use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use kiln_data::{
    ChatTemplate, EncodeOptions, Encoded, Encoder, Example, LabelMode, Message, Record, Role,
};
use kiln_models::{CausalLm, FinishReason, GenerationConfig, generate};
use serde::Serialize;
use tokenizers::Tokenizer;

use crate::error::{EvalError, Result};
use crate::perplexity::{Perplexity, example_nll};
use crate::{Bleu, Chrf, Extractor, Normalize, NumericTolerance, Rouge};

/// A metric of the harness (in configs: `"exact_match"`, `"numeric_match"`, `"bleu"`, `"chrf"`,
/// `"rouge"`, `"perplexity"`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum EvalMetric {
    /// Extracted answer equals a reference after normalisation (0 or 1 per example).
    ExactMatch,
    /// Extracted answer and a reference both parse as numbers
    /// ([`crate::exact_match::parse_number`]) and agree within
    /// [`HarnessConfig::numeric_tolerance`] (0 or 1 per example; text that is not a number
    /// never matches).
    NumericMatch,
    /// sacrebleu corpus BLEU; per example, sentence BLEU with effective order.
    Bleu,
    /// sacrebleu chrF (corpus and per sentence).
    Chrf,
    /// rouge-score ROUGE-1/2/L/Lsum F-measure (mean over examples).
    Rouge,
    /// Perplexity of the reference answer given the prompt (no generation needed).
    Perplexity,
}

impl FromStr for EvalMetric {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "exact_match" | "em" => Ok(Self::ExactMatch),
            "numeric_match" | "numeric" => Ok(Self::NumericMatch),
            "bleu" => Ok(Self::Bleu),
            "chrf" => Ok(Self::Chrf),
            "rouge" => Ok(Self::Rouge),
            "perplexity" | "ppl" => Ok(Self::Perplexity),
            other => Err(EvalError::UnknownOption {
                what: "metric",
                value: other.into(),
                expected: "exact_match, numeric_match, bleu, chrf, rouge, perplexity",
            }),
        }
    }
}

impl EvalMetric {
    /// Parse a comma-separated list (`exact_match,bleu`).
    pub fn parse_list(s: &str) -> Result<Vec<Self>> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(str::parse)
            .collect()
    }

    fn needs_generation(self) -> bool {
        self != Self::Perplexity
    }
}

/// What the model is asked.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Rendered with the chat template and its generation prompt.
    Chat(Vec<Message>),
    /// Used as is, encoded with the tokenizer's special tokens.
    Raw(String),
}

/// One evaluation example.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalExample {
    pub prompt: Prompt,
    pub references: Vec<String>,
}

impl EvalExample {
    /// From a record: `index` is used in error messages.
    pub fn from_record(index: usize, record: &Record) -> Result<Self> {
        match record {
            Record::Conversation(messages) => {
                let last = messages
                    .iter()
                    .rposition(|m| m.role == Role::Assistant)
                    .ok_or(EvalError::NoReference { index })?;
                Ok(Self {
                    prompt: Prompt::Chat(messages[..last].to_vec()),
                    references: vec![messages[last].content.clone()],
                })
            }
            Record::PromptCompletion { prompt, completion } => Ok(Self {
                prompt: Prompt::Raw(prompt.clone()),
                references: vec![completion.clone()],
            }),
            _ => Err(EvalError::InvalidOption {
                what: "evaluation record",
                reason: format!(
                    "record {index} is neither a conversation nor a prompt/completion pair"
                ),
            }),
        }
    }

    /// The record whose labels are the first reference (for perplexity).
    fn reference_record(&self) -> Record {
        let answer = self.references.first().cloned().unwrap_or_default();
        match &self.prompt {
            Prompt::Chat(m) => {
                let mut m = m.clone();
                m.push(Message::new(Role::Assistant, answer));
                Record::Conversation(m)
            }
            Prompt::Raw(p) => Record::PromptCompletion {
                prompt: p.clone(),
                completion: answer,
            },
        }
    }
}

/// Settings of a harness run.
#[derive(Debug, Clone)]
pub struct HarnessConfig {
    pub metrics: Vec<EvalMetric>,
    pub generation: GenerationConfig,
    /// Prompts per generation batch (left-padded).
    pub batch_size: usize,
    pub extractor: Extractor,
    /// Normalisation of [`EvalMetric::ExactMatch`].
    pub normalize: Normalize,
    /// Tolerance of [`EvalMetric::NumericMatch`].
    pub numeric_tolerance: NumericTolerance,
    pub bleu: Bleu,
    pub chrf: Chrf,
    pub rouge: Rouge,
    /// Show a progress bar with throughput.
    pub progress: bool,
}

impl Default for HarnessConfig {
    fn default() -> Self {
        Self {
            metrics: vec![EvalMetric::ExactMatch],
            generation: GenerationConfig::default(),
            batch_size: 8,
            extractor: Extractor::Full,
            normalize: Normalize::default(),
            numeric_tolerance: NumericTolerance::default(),
            bleu: Bleu::default(),
            chrf: Chrf::default(),
            rouge: Rouge::default(),
            progress: true,
        }
    }
}

/// One line of the per-example JSON Lines file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExampleRecord {
    pub index: usize,
    /// The prompt text given to the model.
    pub prompt: String,
    pub references: Vec<String>,
    /// The generated text (special tokens skipped, cut at the first stop string).
    pub output: String,
    /// The answer read out of the output (`None` when the extractor found nothing).
    pub answer: Option<String>,
    pub finish: Option<String>,
    pub generated_tokens: usize,
    /// Metric values of this example (`exact_match`, `numeric_match`, `bleu`, `chrf`,
    /// `rouge1`..., `nll`).
    pub scores: BTreeMap<String, f64>,
}

/// The result of a harness run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    /// Name of the evaluated configuration (`base`, an adapter path...).
    pub label: String,
    pub n: usize,
    /// Corpus-level scores: `exact_match` and `numeric_match` (0..1), `bleu` and `chrf` (0..100, sacrebleu's
    /// scale), `rouge1`... (mean F, 0..1), `perplexity` and `mean_nll` (token-weighted).
    pub corpus: BTreeMap<String, f64>,
    pub generated_tokens: usize,
    pub seconds: f64,
    /// Generated tokens per second.
    pub tokens_per_s: f64,
    #[serde(skip)]
    pub records: Vec<ExampleRecord>,
}

fn render_prompt(
    prompt: &Prompt,
    template: Option<&ChatTemplate>,
    tokenizer: &Tokenizer,
) -> Result<(String, Vec<u32>)> {
    let (text, special) = match prompt {
        Prompt::Chat(m) => {
            let t = template.ok_or(EvalError::InvalidOption {
                what: "chat prompt",
                reason: "the model has no chat template".into(),
            })?;
            (t.render(m, true)?, false)
        }
        Prompt::Raw(s) => (s.clone(), true),
    };
    let ids = tokenizer
        .encode(text.as_str(), special)
        .map_err(|e| EvalError::Tokenizer {
            text: text.chars().take(60).collect(),
            reason: e.to_string(),
        })?
        .get_ids()
        .to_vec();
    Ok((text, ids))
}

fn progress_bar(show: bool, len: usize, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} (ETA {eta})",
    ) {
        bar.set_style(style);
    }
    bar.set_prefix(what.to_owned());
    bar
}

/// Cuts `text` at the earliest occurrence of any stop string (the stop string is dropped).
fn cut_at_stop(text: &str, stops: &[String]) -> String {
    let end = stops
        .iter()
        .filter_map(|s| text.find(s.as_str()))
        .min()
        .unwrap_or(text.len());
    text[..end].to_owned()
}

/// Runs the configured metrics over `examples`. `label` names the configuration in reports.
pub fn evaluate(
    label: &str,
    model: &CausalLm,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    examples: &[EvalExample],
    cfg: &HarnessConfig,
) -> Result<EvalReport> {
    if examples.is_empty() {
        return Err(EvalError::Empty {
            what: "the evaluation data".into(),
        });
    }
    if cfg.generation.stop_strings.iter().any(String::is_empty) {
        // An empty stop string occurs everywhere: every output would be cut to nothing.
        return Err(EvalError::InvalidOption {
            what: "stop strings",
            reason: "a stop string is empty".into(),
        });
    }
    let start = Instant::now();
    let mut records: Vec<ExampleRecord> = Vec::with_capacity(examples.len());
    let mut prompts = Vec::with_capacity(examples.len());
    for (index, ex) in examples.iter().enumerate() {
        if ex.references.is_empty() {
            return Err(EvalError::NoReference { index });
        }
        let (text, ids) = render_prompt(&ex.prompt, template, tokenizer)?;
        prompts.push(ids);
        records.push(ExampleRecord {
            index,
            prompt: text,
            references: ex.references.clone(),
            output: String::new(),
            answer: None,
            finish: None,
            generated_tokens: 0,
            scores: BTreeMap::new(),
        });
    }
    let mut generated_tokens = 0;
    if cfg.metrics.iter().any(|m| m.needs_generation()) {
        generated_tokens = generate_all(model, tokenizer, &prompts, &mut records, cfg)?;
    }
    let mut corpus = BTreeMap::new();
    score_generations(&mut records, &mut corpus, cfg)?;
    if cfg.metrics.contains(&EvalMetric::Perplexity) {
        let ppl = reference_perplexity(model, tokenizer, template, examples, &mut records, cfg)?;
        corpus.insert("perplexity".into(), ppl.perplexity);
        corpus.insert("mean_nll".into(), ppl.mean_nll);
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(EvalReport {
        label: label.to_owned(),
        n: records.len(),
        corpus,
        generated_tokens,
        seconds,
        tokens_per_s: generated_tokens as f64 / seconds.max(1e-9),
        records,
    })
}

/// Generates for every prompt, batches sorted by prompt length; fills `output`, `answer`,
/// `finish` of each record. Returns the number of generated tokens.
fn generate_all(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    records: &mut [ExampleRecord],
    cfg: &HarnessConfig,
) -> Result<usize> {
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(prompts[i].len()));
    let bar = progress_bar(cfg.progress, prompts.len(), "generate");
    let start = Instant::now();
    let mut total = 0usize;
    for chunk in order.chunks(cfg.batch_size.max(1)) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
        let out = generate(
            model,
            &batch,
            &cfg.generation,
            Some(tokenizer),
            &mut |_, _| {},
        )?;
        for (&i, g) in chunk.iter().zip(out) {
            let text = tokenizer
                .decode(&g.tokens, true)
                .map_err(|e| EvalError::Tokenizer {
                    text: format!("{:?}", &g.tokens[..g.tokens.len().min(8)]),
                    reason: e.to_string(),
                })?;
            let text = cut_at_stop(&text, &cfg.generation.stop_strings);
            let r = &mut records[i];
            r.answer = cfg.extractor.extract(&text);
            r.output = text;
            r.generated_tokens = g.tokens.len();
            r.finish = Some(
                match g.finish {
                    FinishReason::Eos => "eos",
                    FinishReason::StopString => "stop_string",
                    FinishReason::Length => "length",
                }
                .into(),
            );
            total += g.tokens.len();
        }
        bar.inc(chunk.len() as u64);
        bar.set_message(format!(
            "{:.1} tok/s",
            total as f64 / start.elapsed().as_secs_f64().max(1e-9)
        ));
    }
    bar.finish_and_clear();
    Ok(total)
}

/// Per-example and corpus scores of the generation metrics.
fn score_generations(
    records: &mut [ExampleRecord],
    corpus: &mut BTreeMap<String, f64>,
    cfg: &HarnessConfig,
) -> Result<()> {
    let hyps: Vec<String> = records
        .iter()
        .map(|r| r.answer.clone().unwrap_or_default())
        .collect();
    let refs: Vec<Vec<String>> = records.iter().map(|r| r.references.clone()).collect();
    for m in &cfg.metrics {
        match m {
            EvalMetric::ExactMatch => {
                let (mean, scores) = cfg.normalize.corpus(&hyps, &refs)?;
                corpus.insert("exact_match".into(), mean);
                for (r, s) in records.iter_mut().zip(scores) {
                    r.scores.insert("exact_match".into(), s);
                }
            }
            EvalMetric::NumericMatch => {
                let (mean, scores) = cfg.numeric_tolerance.corpus(&hyps, &refs)?;
                corpus.insert("numeric_match".into(), mean);
                for (r, s) in records.iter_mut().zip(scores) {
                    r.scores.insert("numeric_match".into(), s);
                }
            }
            EvalMetric::Bleu => {
                corpus.insert("bleu".into(), cfg.bleu.corpus_score(&hyps, &refs)?.score);
                let sentence = cfg.bleu.clone().with_effective_order(true);
                for (r, s) in records
                    .iter_mut()
                    .zip(sentence.sentence_scores(&hyps, &refs)?)
                {
                    r.scores.insert("bleu".into(), s.score);
                }
            }
            EvalMetric::Chrf => {
                corpus.insert("chrf".into(), cfg.chrf.corpus_score(&hyps, &refs)?.score);
                for (r, s) in records
                    .iter_mut()
                    .zip(cfg.chrf.sentence_scores(&hyps, &refs)?)
                {
                    r.scores.insert("chrf".into(), s.score);
                }
            }
            EvalMetric::Rouge => {
                let score = cfg.rouge.corpus_score(&hyps, &refs)?;
                for (t, s) in score.types.iter().zip(&score.mean) {
                    corpus.insert(t.name(), s.fmeasure);
                }
                for (r, e) in records.iter_mut().zip(&score.per_example) {
                    for (t, s) in score.types.iter().zip(e) {
                        r.scores.insert(t.name(), s.fmeasure);
                    }
                }
            }
            EvalMetric::Perplexity => {}
        }
    }
    Ok(())
}

/// Perplexity of each example's first reference given its prompt (labels on the answer only,
/// as in completion-only training); per example the mean NLL is recorded as `nll`.
fn reference_perplexity(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    examples: &[EvalExample],
    records: &mut [ExampleRecord],
    cfg: &HarnessConfig,
) -> Result<Perplexity> {
    let opts = EncodeOptions {
        labels: LabelMode::LastTurn,
        ..EncodeOptions::default()
    };
    let encoder = Encoder::new(tokenizer, template, opts)?;
    let mut encoded: Vec<Example> = Vec::with_capacity(examples.len());
    for (index, ex) in examples.iter().enumerate() {
        match encoder.encode(&ex.reference_record())? {
            Encoded::Kept { example, .. } => encoded.push(example),
            _ => return Err(EvalError::NoReference { index }),
        }
    }
    let bar = progress_bar(cfg.progress, encoded.len(), "perplexity");
    let per = example_nll(model, &encoded, cfg.batch_size, &mut |k| bar.inc(k as u64))?;
    bar.finish_and_clear();
    let (mut sum, mut tokens) = (0.0, 0);
    for (r, &(nll, k)) in records.iter_mut().zip(&per) {
        r.scores.insert("nll".into(), nll / k.max(1) as f64);
        sum += nll;
        tokens += k;
    }
    if tokens == 0 {
        return Err(EvalError::Empty {
            what: "the reference tokens".into(),
        });
    }
    Ok(Perplexity::from_sum(sum, tokens))
}

/// Writes the per-example records as JSON Lines (to a temporary file, then renamed).
pub fn write_records(path: &Path, records: &[ExampleRecord]) -> Result<()> {
    let mut text = String::new();
    for r in records {
        let line = serde_json::to_string(r).map_err(|e| EvalError::InvalidOption {
            what: "record",
            reason: e.to_string(),
        })?;
        text.push_str(&line);
        text.push('\n');
    }
    crate::io::write_atomic(path, text.as_bytes())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn stops(s: &[&str]) -> Vec<String> {
        s.iter().map(|&x| x.to_owned()).collect()
    }

    #[test]
    fn cut_at_stop_keeps_the_text_before_the_earliest_stop() {
        // At the start: nothing is left.
        assert_eq!(cut_at_stop("\nanswer", &stops(&["\n"])), "");
        // Absent, or no stop strings at all: unchanged.
        assert_eq!(cut_at_stop("42 apples", &stops(&["###"])), "42 apples");
        assert_eq!(cut_at_stop("42 apples", &[]), "42 apples");
        // Several stops: the earliest occurrence wins, whatever the order of the list.
        assert_eq!(cut_at_stop("a. b\nc###", &stops(&["###", "\n", "."])), "a");
        assert_eq!(cut_at_stop("ab\ncd.ef", &stops(&[".", "\n"])), "ab");
        // Overlapping stops: the one starting first wins; only the first occurrence counts.
        assert_eq!(cut_at_stop("xaby by", &stops(&["by", "aby"])), "x");
        // Multi-byte text: the cut is on a character boundary.
        assert_eq!(cut_at_stop("café→thé→", &stops(&["→"])), "café");
        // At the very end: everything before it.
        assert_eq!(cut_at_stop("done</s>", &stops(&["</s>"])), "done");
    }

    fn record(answer: Option<&str>, references: &[&str]) -> ExampleRecord {
        ExampleRecord {
            index: 0,
            prompt: String::new(),
            references: references.iter().map(|&r| r.to_owned()).collect(),
            output: answer.unwrap_or_default().to_owned(),
            answer: answer.map(str::to_owned),
            finish: None,
            generated_tokens: 0,
            scores: BTreeMap::new(),
        }
    }

    #[test]
    fn numeric_match_and_number_normalisation_in_the_harness() -> Result<()> {
        let mut records = vec![
            record(Some("1,234.5"), &["1234.5"]),
            record(Some("3.14"), &["2", "3.1"]),
            record(Some("x"), &["3"]),
            record(None, &["0"]),
            record(Some("$7"), &["7.2"]),
        ];
        let cfg = HarnessConfig {
            metrics: EvalMetric::parse_list("numeric_match,exact_match")?,
            numeric_tolerance: NumericTolerance::new(0.05, 0.0)?,
            normalize: Normalize::loose()
                .with_numbers(crate::exact_match::NumberFormat::StripThousands),
            ..Default::default()
        };
        let mut corpus = BTreeMap::new();
        score_generations(&mut records, &mut corpus, &cfg)?;
        let numeric: Vec<f64> = records.iter().map(|r| r.scores["numeric_match"]).collect();
        assert_eq!(numeric, vec![1.0, 1.0, 0.0, 0.0, 0.0]);
        assert_eq!(corpus["numeric_match"], 0.4);
        // Exact match with thousands separators stripped: only "1,234.5" = "1234.5".
        let exact: Vec<f64> = records.iter().map(|r| r.scores["exact_match"]).collect();
        assert_eq!(exact, vec![1.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(corpus["exact_match"], 0.2);
        // A relative tolerance of 5% accepts $7 for 7.2 (|7 - 7.2| <= 0.05 * 7.2).
        let rel = HarnessConfig {
            numeric_tolerance: NumericTolerance::new(0.0, 0.05)?,
            ..cfg
        };
        let mut corpus = BTreeMap::new();
        score_generations(&mut records, &mut corpus, &rel)?;
        assert_eq!(records[4].scores["numeric_match"], 1.0);
        assert_eq!("numeric".parse::<EvalMetric>()?, EvalMetric::NumericMatch);
        Ok(())
    }
}
