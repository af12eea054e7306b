//! GRPO's online loop (TRL's `GRPOTrainer`): prompt-only records → `num_generations` sampled
//! completions per prompt (KV cache, temperature/top-k/top-p, EOS and stop strings,
//! `max_completion_length`, seeded; at the training precision, on the frozen base's bf16
//! layouts when [`GrpoLearner::hold_bf16_weights`] held them) → rewards (Rust closures and built-ins, summed with
//! weights) → [`GrpoLearner`] steps. The recipe around it is [`crate::run_grpo`].
//!
//! Records are TRL's prompt-only format, one JSON object per line: `prompt` a string
//! (standard; tokenized as is) or a list of messages (conversational; the chat template is
//! applied with the generation prompt); other keys (a reference answer...) are passed to the
//! rewards. Prompts are taken in file order, `batch_size × grad_accum / num_generations` per
//! generation batch, cycling.
//!
//! Bad input: a record without a usable `prompt` is an error naming file and line; a reward
//! that returns NaN or infinity is an error naming the reward and the record; a group in which
//! no completion got a reward (every function returned `None`) is left out of the step and
//! counted (`skipped_groups`); a generation batch with no group left is skipped whole (no
//! optimizer step) and counted in [`GrpoTrainer::skipped_batches`].
use crate::error::{Result, TrainError};
use crate::grpo::{GrpoLearner, GrpoStepMetrics, Rollout, Rollouts};
use crate::model::CausalModel;
use kiln_data::tokenizers::Tokenizer;
use kiln_data::{ChatTemplate, Location, Message};
use kiln_models::{FinishReason, GenerationConfig, generate};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the sampling stands between steps, kept in a checkpoint beside the trainer's state.
#[derive(Debug, Serialize, Deserialize)]
struct SamplingState {
    /// The next prompt of the cycle.
    next: usize,
    /// The seed of the next generation batch.
    seed: u64,
    skipped_batches: usize,
}

/// [`SamplingState`]'s file in a checkpoint directory.
const SAMPLING: &str = "grpo_sampling.json";

/// A record's prompt: TRL's standard or conversational form.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Messages(Vec<Message>),
}

/// One prompt-only record: its prompt, all its fields (for the rewards) and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRecord {
    pub prompt: Prompt,
    pub fields: serde_json::Map<String, serde_json::Value>,
    pub at: Location,
}

impl PromptRecord {
    /// A record from a JSON object (`at`: where it was read, for errors).
    pub fn from_json(value: serde_json::Value, at: Location) -> Result<Self> {
        let bad = |reason: &str| TrainError::option("data", format!("{at}: {reason}"));
        let serde_json::Value::Object(fields) = value else {
            return Err(bad("a record must be a JSON object"));
        };
        let prompt = match fields.get("prompt") {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Prompt::Text(s.clone()),
            Some(v @ serde_json::Value::Array(_)) => {
                let m: Vec<Message> = serde_json::from_value(v.clone())
                    .map_err(|e| bad(&format!("`prompt` is not a list of messages: {e}")))?;
                if m.is_empty() {
                    return Err(bad("`prompt` has no message"));
                }
                Prompt::Messages(m)
            }
            _ => {
                return Err(bad(
                    "no `prompt` (a non-empty string or a list of messages)",
                ));
            }
        };
        Ok(Self { prompt, fields, at })
    }

    /// A field as text (strings as they are, numbers printed), for reference answers.
    pub fn field_text(&self, key: &str) -> Option<String> {
        match self.fields.get(key)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Null => None,
            v => Some(v.to_string()),
        }
    }
}

/// Reads prompt-only records from a JSON Lines file (blank lines skipped).
pub fn read_prompt_records(path: &Path) -> Result<Vec<PromptRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = Location {
            file: path.to_path_buf(),
            line: i + 1,
        };
        let value = serde_json::from_str(line)
            .map_err(|e| TrainError::option("data", format!("{at}: not JSON: {e}")))?;
        out.push(PromptRecord::from_json(value, at)?);
    }
    if out.is_empty() {
        return Err(TrainError::option(
            "data",
            format!("{}: no record", path.display()),
        ));
    }
    Ok(out)
}

/// A reward closure: the record and the decoded completion in, a reward or `None` (cannot
/// score this completion) out.
pub type RewardClosure = Box<dyn Fn(&PromptRecord, &str) -> Option<f64> + Send + Sync>;

/// A reward function.
pub enum Reward {
    /// 1 when the trimmed completion equals the trimmed `column` of the record, else 0.
    ExactMatch { column: String },
    /// 1 when the first number in the completion (thousands separators allowed) is within
    /// `tolerance` of the number in `column`, else 0; `None` when the record has no number.
    NumericMatch { column: String, tolerance: f64 },
    /// 1 when the completion matches `pattern` (from its start to its end), else 0.
    Regex { pattern: regex::Regex },
    /// Any closure, under a name (errors and metrics).
    Custom { name: String, f: RewardClosure },
}

impl std::fmt::Debug for Reward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// The numbers of `text` in order (`-1,234.5` → -1234.5).
pub fn numbers_in(text: &str) -> Vec<f64> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let neg = chars[i] == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit);
        if chars[i].is_ascii_digit() || neg {
            let mut s = String::new();
            if neg {
                s.push('-');
                i += 1;
            }
            while i < chars.len() {
                let c = chars[i];
                let next_digit = chars.get(i + 1).is_some_and(char::is_ascii_digit);
                if c.is_ascii_digit() || (c == '.' && next_digit) {
                    s.push(c);
                } else if c != ',' || !next_digit {
                    break;
                }
                i += 1;
            }
            if let Ok(v) = s.parse() {
                out.push(v);
            }
        } else {
            i += 1;
        }
    }
    out
}

impl Reward {
    /// The name used in errors.
    pub fn name(&self) -> String {
        match self {
            Self::ExactMatch { column } => format!("exact_match({column})"),
            Self::NumericMatch { column, .. } => format!("numeric_match({column})"),
            Self::Regex { pattern } => format!("regex({})", pattern.as_str()),
            Self::Custom { name, .. } => name.clone(),
        }
    }

    /// A regex reward from a pattern (anchored at both ends).
    pub fn regex(pattern: &str) -> Result<Self> {
        let pattern = regex::Regex::new(&format!("^(?s:{pattern})$"))
            .map_err(|e| TrainError::option("reward", format!("regex `{pattern}`: {e}")))?;
        Ok(Self::Regex { pattern })
    }

    /// This reward of `completion` for `record`.
    pub fn score(&self, record: &PromptRecord, completion: &str) -> Option<f64> {
        let hit = |b: bool| Some(f64::from(u8::from(b)));
        match self {
            Self::ExactMatch { column } => {
                hit(record.field_text(column)?.trim() == completion.trim())
            }
            Self::NumericMatch { column, tolerance } => {
                let want = *numbers_in(&record.field_text(column)?).first()?;
                let got = numbers_in(completion).first().copied();
                hit(got.is_some_and(|g| (g - want).abs() <= *tolerance))
            }
            Self::Regex { pattern } => hit(pattern.is_match(completion)),
            Self::Custom { f, .. } => f(record, completion),
        }
    }
}

/// The weighted sum of `rewards` (TRL's `reward_weights`), `None` when none could score.
pub(crate) fn total_reward(
    rewards: &[(Reward, f64)],
    record: &PromptRecord,
    completion: &str,
) -> Result<Option<f64>> {
    let mut total = None;
    for (reward, weight) in rewards {
        if let Some(v) = reward.score(record, completion) {
            if !v.is_finite() {
                return Err(TrainError::option(
                    "reward",
                    format!(
                        "{} returned {v} for {} (completion {completion:?})",
                        reward.name(),
                        record.at
                    ),
                ));
            }
            *total.get_or_insert(0.0) += weight * v;
        }
    }
    Ok(total)
}

/// How prompts are turned into ids and completions into text.
pub struct PromptEncoder {
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
}

impl PromptEncoder {
    /// The prompt's ids: conversational prompts through the chat template with the generation
    /// prompt (no special tokens added, as `apply_chat_template(tokenize=True)`), standard
    /// prompts as they are.
    pub fn encode(&self, record: &PromptRecord) -> Result<Vec<u32>> {
        let text = match (&record.prompt, &self.template) {
            (Prompt::Text(t), _) => t.clone(),
            (Prompt::Messages(m), Some(t)) => t.render(m, true)?,
            (Prompt::Messages(_), None) => {
                return Err(TrainError::option(
                    "chat_template",
                    format!(
                        "{}: a conversational prompt needs a chat template",
                        record.at
                    ),
                ));
            }
        };
        let enc = self
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| TrainError::option("tokenizer", format!("{}: {e}", record.at)))?;
        if enc.get_ids().is_empty() {
            return Err(TrainError::option(
                "data",
                format!("{}: the prompt has no token", record.at),
            ));
        }
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| TrainError::option("tokenizer", e.to_string()))
    }
}

/// GRPO with generation: the [`GrpoLearner`], the prompts, the rewards and the sampling
/// settings (`generation.max_new_tokens` is `max_completion_length`; the seed advances by one
/// per generation batch, so a run repeats exactly).
pub struct GrpoTrainer<M: CausalModel> {
    pub learner: GrpoLearner<M>,
    records: Vec<PromptRecord>,
    prompts: Vec<Vec<u32>>,
    pub rewards: Vec<(Reward, f64)>,
    pub generation: GenerationConfig,
    encoder: PromptEncoder,
    next: usize,
    batch: Option<Rollouts>,
    generation_s: f64,
    skipped_groups: usize,
    /// Generation batches skipped whole (no group had a reward).
    pub skipped_batches: usize,
    pub history: Vec<GrpoStepMetrics>,
}

impl<M: CausalModel> GrpoTrainer<M> {
    /// Tokenizes every prompt up front (errors name the record).
    pub fn new(
        learner: GrpoLearner<M>,
        records: Vec<PromptRecord>,
        rewards: Vec<(Reward, f64)>,
        generation: GenerationConfig,
        encoder: PromptEncoder,
    ) -> Result<Self> {
        let g = learner.options.num_generations;
        if !learner.step_sequences().is_multiple_of(g) {
            return Err(TrainError::option(
                "num_generations",
                format!(
                    "batch_size × grad_accum = {} is not a multiple of num_generations {g}",
                    learner.step_sequences()
                ),
            ));
        }
        if rewards.is_empty() || records.is_empty() {
            return Err(TrainError::option(
                "reward",
                "GRPO needs at least one reward function and one prompt",
            ));
        }
        generation.validate()?;
        let prompts = records
            .iter()
            .map(|r| encoder.encode(r))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            learner,
            records,
            prompts,
            rewards,
            generation,
            encoder,
            next: 0,
            batch: None,
            generation_s: 0.0,
            skipped_groups: 0,
            skipped_batches: 0,
            history: Vec::new(),
        })
    }

    /// The prompt ids of every record, in order.
    pub fn prompt_ids(&self) -> &[Vec<u32>] {
        &self.prompts
    }

    /// Samples the next generation batch and scores it; groups without any reward are left
    /// out (counted). Returns the rollouts kept.
    fn rollouts(&mut self) -> Result<Vec<Rollout>> {
        let g = self.learner.options.num_generations;
        let n = self.learner.step_sequences() / g;
        let picks: Vec<usize> = (0..n)
            .map(|k| (self.next + k) % self.prompts.len())
            .collect();
        self.next = (self.next + n) % self.prompts.len();
        let batch: Vec<Vec<u32>> = picks
            .iter()
            .flat_map(|&p| std::iter::repeat_n(self.prompts[p].clone(), g))
            .collect();
        let mut config = self.generation.clone();
        config.max_new_tokens = self.learner.options.max_completion_length;
        let tok = (!config.stop_strings.is_empty()).then_some(&self.encoder.tokenizer);
        // Sampled at the training precision, as TRL generates with the model it trains: the
        // policy's inference copy (its adapters as they are now, the frozen base's matrices
        // shared, with their bf16 layouts when held once for the run).
        let mut model = self.learner.trainer.model().valid();
        model
            .causal_lm_mut()
            .set_precision(self.learner.precision());
        let start = Instant::now();
        let out = generate(model.causal_lm(), &batch, &config, tok, &mut |_, _| {})?;
        self.generation_s = start.elapsed().as_secs_f64();
        self.generation.seed = self.generation.seed.wrapping_add(1);
        let mut kept = Vec::with_capacity(batch.len());
        for (k, &p) in picks.iter().enumerate() {
            let mut group = Vec::with_capacity(g);
            for j in 0..g {
                let gen_ = &out[k * g + j];
                let text = self.encoder.decode(&gen_.tokens)?;
                let reward = if gen_.tokens.is_empty() {
                    None
                } else {
                    total_reward(&self.rewards, &self.records[p], &text)?
                };
                group.push(Rollout {
                    prompt: self.prompts[p].clone(),
                    completion: gen_.tokens.clone(),
                    reward,
                    truncated: gen_.finish != FinishReason::Eos,
                });
            }
            if group.iter().all(|r| r.reward.is_none()) {
                self.skipped_groups += 1;
                tracing::warn!(
                    "{}: no completion of the group got a reward; group skipped",
                    self.records[p].at
                );
            } else {
                kept.extend(group);
            }
        }
        Ok(kept)
    }

    /// Writes a checkpoint under `root` (the [`crate::Trainer`]'s files and where the sampling
    /// stands: next prompt, seed, skipped batches), keeping the newest `keep_last`.
    ///
    /// # Errors
    /// Between the `num_iterations` steps of one generation batch (its rollouts are not
    /// saved): checkpoint every multiple of `num_iterations` steps.
    pub fn save_checkpoint(&mut self, root: &Path, keep_last: usize) -> Result<PathBuf> {
        let mu = self.learner.options.num_iterations;
        if let Some(b) = self.batch.as_ref().filter(|b| b.iterations_done < mu) {
            return Err(TrainError::option(
                "save_steps",
                format!(
                    "a checkpoint after {} of the {mu} iterations of a generation batch would lose \
                     its rollouts: save every multiple of num_iterations steps",
                    b.iterations_done
                ),
            ));
        }
        let state = SamplingState {
            next: self.next,
            seed: self.generation.seed,
            skipped_batches: self.skipped_batches,
        };
        let json = serde_json::to_vec_pretty(&state)
            .map_err(|e| TrainError::checkpoint(root, e.to_string()))?;
        self.learner
            .trainer
            .save_checkpoint_with(root, keep_last, &[(SAMPLING, &json)])
    }

    /// Continues from checkpoint `dir`. `self` is built as the run started (the same model,
    /// records, rewards and settings, so the reference is the uninterrupted run's); the
    /// trainable weights, AdamW state, step and the sampling position then come from the
    /// checkpoint, and the steps that follow sample and train as the uninterrupted run's.
    pub fn resume(mut self, device: &burn::tensor::Device, dir: &Path) -> Result<Self> {
        let path = dir.join(SAMPLING);
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
        let state: SamplingState = serde_json::from_str(&text)
            .map_err(|e| TrainError::checkpoint(&path, e.to_string()))?;
        if state.next >= self.prompts.len() {
            return Err(TrainError::checkpoint(
                &path,
                format!(
                    "prompt {} of {}: not this run's prompts",
                    state.next,
                    self.prompts.len()
                ),
            ));
        }
        self.learner = self.learner.resume(device, dir)?;
        self.next = state.next;
        self.generation.seed = state.seed;
        self.skipped_batches = state.skipped_batches;
        self.batch = None;
        Ok(self)
    }

    /// One optimizer step: a new generation batch every `num_iterations` steps, then a step
    /// of the learner. `None` when the step was skipped (no group with a reward, or a
    /// non-finite loss under the `skip` policy).
    pub fn step(&mut self) -> Result<Option<GrpoStepMetrics>> {
        let mu = self.learner.options.num_iterations;
        let fresh = self.batch.as_ref().is_none_or(|b| b.iterations_done >= mu);
        if fresh {
            self.skipped_groups = 0;
            let rollouts = self.rollouts()?;
            if rollouts.is_empty() {
                self.skipped_batches += 1;
                self.batch = None;
                return Ok(None);
            }
            self.batch = Some(self.learner.prepare(rollouts)?);
        }
        let Some(batch) = self.batch.as_mut() else {
            return Ok(None);
        };
        let Some(mut m) = self.learner.step(batch)? else {
            return Ok(None);
        };
        m.generation_s = if fresh { self.generation_s } else { 0.0 };
        m.skipped_groups = self.skipped_groups;
        self.history.push(m.clone());
        Ok(Some(m))
    }
}
