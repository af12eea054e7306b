//! The PPO recipe: model and tokenizer → prompt-only records → policy with a new LoRA adapter
//! (the reference: the same model with the adapter disabled, as TRL with PEFT), a value model
//! (the causal LM with a one-label `score` head and its own LoRA adapter, the head in
//! `modules_to_save`; started from the reward model's adapter when one is given, as TRL's
//! examples start the value model from the reward model) → per update `batch_size ×
//! grad_accum` sampled completions (one per prompt, prompts in file order, cycling) scored by a
//! reward model (its `score` at the completion's last token, TRL's `get_reward`) or by reward
//! functions → [`PpoLearner`] → `metrics.jsonl` with TRL's names (generation and training
//! seconds apart), `loss_curve.png` (`loss/policy_avg`), `adapter/` (the policy, PEFT's files)
//! and `value_adapter/`. No checkpoints or resume yet (a run is re-run from its start).
use crate::error::{Result, TrainError};
use crate::export::Export;
use crate::grpo::Rollout;
use crate::grpo_online::{PromptEncoder, PromptRecord, Reward, read_prompt_records, total_reward};
use crate::grpo_run::{GrpoRun, grpo_setup};
use crate::logging::JsonlLogger;
use crate::model::CausalModel;
use crate::plot::write_loss_curve;
use crate::ppo::{PpoLearner, PpoMetrics, PpoOptions};
use crate::reward::ClassifierModel;
use crate::rundir::{RunDir, RunMode};
use crate::trainer::{Trainer, TrainerOptions};
use burn::module::Module;
use kiln_lora::{LoraConfig, LoraModel, TargetModules};
use kiln_models::backprop::Precision;
use kiln_models::fetch::resolve_model;
use kiln_models::{
    ClassifierConfig, DecoderInput, GenerationConfig, Pretrained, SequenceClassifier, generate,
    parse_device,
};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What scores a completion.
pub enum PpoReward {
    /// A reward model: a PEFT adapter directory (task SEQ_CLS, `score` in `modules_to_save`,
    /// as the `reward_model` example writes it) on the run's base model.
    Model(PathBuf),
    /// Reward functions, summed with their weights (a completion none can score is an error).
    Functions(Vec<(Reward, f64)>),
}

/// A PPO run (TRL's `PPOConfig` names where it has them; the policy's settings are
/// [`GrpoRun`]'s: model, data, sampling, LoRA, seed, device).
pub struct PpoRun {
    /// Model, data, output directory, `max_steps` (updates), learning rate, sampling
    /// (`temperature` must be 1: see [`PpoLearner`]), LoRA, seed, precision, device.
    pub base: GrpoRun,
    pub ppo: PpoOptions,
    /// Micro-batches per mini-batch step (`batch_size × grad_accum` rollouts per update).
    pub grad_accum: usize,
    /// TRL's `response_length`.
    pub response_length: usize,
}

/// What a PPO run did.
#[derive(Debug, Clone)]
pub struct PpoSummary {
    pub history: Vec<PpoMetrics>,
    pub adapter_dir: PathBuf,
    pub value_adapter_dir: PathBuf,
}

/// The value model, or the reward model when `adapter` is given: the causal LM at `path` with
/// a one-label head and a LoRA adapter (new, the head trained in full; or loaded).
fn classifier(
    run: &GrpoRun,
    path: &Path,
    adapter: Option<&Path>,
    pad: u32,
) -> Result<LoraModel<SequenceClassifier>> {
    let device = parse_device(&run.device)?;
    let lm = Pretrained::load(path, &device)?;
    let mut head = ClassifierConfig::new(1);
    head.pad_token_id = Some(pad);
    lm.model.device().seed(run.seed);
    let cls = SequenceClassifier::from_causal_lm(lm.model, head);
    if let Some(dir) = adapter {
        let mut m = LoraModel::new(cls);
        m.load_adapter(dir, "default")?;
        return Ok(m);
    }
    let targets = TargetModules::Names(run.targets.clone());
    let mut config = LoraConfig::new(run.lora_r, run.lora_alpha, targets);
    config.modules_to_save = Some(vec![kiln_models::classifier::SCORE.into()]);
    config.task_type = Some("SEQ_CLS".into());
    kiln_lora::manual_seed(run.seed);
    Ok(LoraModel::with_adapter(cls, "default", config)?)
}

/// The reward model's score of each rollout at its last token (TRL's `get_reward` of the
/// truncated query-response).
fn model_scores(rm: &LoraModel<SequenceClassifier>, rollouts: &[Rollout]) -> Result<Vec<f64>> {
    let model = rm.classifier().valid();
    let t = rollouts
        .iter()
        .map(|r| r.prompt.len() + r.completion.len())
        .max()
        .unwrap_or(0);
    let (b, mut ids, mut mask) = (rollouts.len(), Vec::new(), Vec::new());
    let mut rows = Vec::with_capacity(b);
    for (i, r) in rollouts.iter().enumerate() {
        let n = r.prompt.len() + r.completion.len();
        ids.extend(r.prompt.iter().chain(&r.completion));
        ids.extend(std::iter::repeat_n(0, t - n));
        mask.extend(std::iter::repeat_n(1u8, n));
        mask.extend(std::iter::repeat_n(0u8, t - n));
        rows.push(i * t + n - 1);
    }
    let input = DecoderInput::new(ids, b, t).with_attention_mask(mask);
    Ok(model
        .scores_at(&input, &rows)?
        .into_iter()
        .map(f64::from)
        .collect())
}

/// Samples one completion per prompt of `prompts` with the policy, timed.
fn sample(
    policy: &LoraModel<kiln_models::CausalLm>,
    prompts: &[Vec<u32>],
    generation: &GenerationConfig,
    encoder: &PromptEncoder,
) -> Result<(Vec<Vec<u32>>, f64)> {
    let tok = (!generation.stop_strings.is_empty()).then_some(&encoder.tokenizer);
    let model = policy.valid();
    let start = Instant::now();
    let out = generate(model.causal_lm(), prompts, generation, tok, &mut |_, _| {})?;
    Ok((
        out.into_iter().map(|g| g.tokens).collect(),
        start.elapsed().as_secs_f64(),
    ))
}

/// Trains a LoRA policy with PPO on `records` (or `run.base.data` when `None`) scored by
/// `reward`, and writes `output_dir/{metrics.jsonl, tensorboard/, loss_curve.png, adapter/,
/// value_adapter/}`; `on_update` sees each update's metrics.
pub fn run_ppo(
    run: &PpoRun,
    records: Option<Vec<PromptRecord>>,
    reward: PpoReward,
    mut on_update: impl FnMut(&PpoMetrics),
) -> Result<PpoSummary> {
    let base = &run.base;
    if base.save_steps.is_some() || base.resume {
        return Err(TrainError::option(
            "save_steps",
            "PPO runs write no checkpoints yet (save_steps, resume)",
        ));
    }
    if base.max_steps == 0 || run.response_length == 0 {
        return Err(TrainError::option(
            "max_steps",
            "max_steps and response_length must be at least 1",
        ));
    }
    if (base.temperature - 1.0).abs() > 1e-6 {
        return Err(TrainError::option(
            "temperature",
            "kiln's PPO computes log-probabilities at temperature 1; sample at 1",
        ));
    }
    let run_dir = RunDir::open(
        &base.output_dir,
        RunMode::from_flags(false, base.overwrite)?,
    )?;
    let records = match records {
        Some(r) => r,
        None => read_prompt_records(&base.data)?,
    };
    let (policy, encoder, mut generation) = grpo_setup(base)?;
    generation.max_new_tokens = run.response_length;
    let prompts = records
        .iter()
        .map(|r| encoder.encode(r))
        .collect::<Result<Vec<_>>>()?;
    let eos = generation.eos_token_ids.first().copied().unwrap_or(0);
    let given = (!base.model.as_os_str().is_empty()).then_some(base.model.as_path());
    let path = resolve_model(given, true)?;
    let reward_model = match &reward {
        PpoReward::Model(dir) => Some(classifier(base, &path, Some(dir), eos)?),
        PpoReward::Functions(_) => None,
    };
    let value_init = match &reward {
        PpoReward::Model(dir) => Some(dir.as_path()),
        PpoReward::Functions(_) => None,
    };
    let value = classifier(base, &path, value_init, eos)?;
    let device = parse_device(&base.device)?;
    device.seed(base.seed);
    let mut reference = policy.clone();
    reference.disable_adapters();
    let options = trainer_options(run);
    let mut ppo = run.ppo.clone();
    (ppo.eos_id, ppo.pad_id, ppo.seed) = (eos, eos, base.seed);
    let mut learner = PpoLearner::new(
        Trainer::new(policy, &device, options.clone())?,
        Trainer::new(value, &device, options)?,
        reference,
        ppo,
    )?;
    learner.policy.set_run_id(run_dir.id());
    let mut log = JsonlLogger::open(&base.output_dir.join("metrics.jsonl"))?
        .with_tensorboard(&base.output_dir.join("tensorboard"), 0)?;
    let per_update = run.ppo.batch_size * run.grad_accum;
    let (mut next, mut history) = (0, Vec::new());
    for _ in 0..base.max_steps {
        let picks: Vec<usize> = (0..per_update)
            .map(|k| (next + k) % prompts.len())
            .collect();
        next = (next + per_update) % prompts.len();
        let batch_prompts: Vec<Vec<u32>> = picks.iter().map(|&p| prompts[p].clone()).collect();
        let (completions, generation_s) = sample(
            learner.policy.model(),
            &batch_prompts,
            &generation,
            &encoder,
        )?;
        generation.seed = generation.seed.wrapping_add(1);
        let mut rollouts: Vec<Rollout> = batch_prompts
            .into_iter()
            .zip(completions)
            .map(|(prompt, completion)| Rollout {
                truncated: !completion.contains(&eos),
                prompt,
                completion,
                reward: None,
            })
            .collect();
        score(
            &reward,
            reward_model.as_ref(),
            &records,
            &picks,
            &encoder,
            &mut rollouts,
        )?;
        let batch = learner.prepare(rollouts, generation_s)?;
        let m = learner.update(&batch, None)?;
        log.write("train", &m)?;
        on_update(&m);
        history.push(m);
    }
    drop(log);
    let curve: Vec<(usize, f64)> = history
        .iter()
        .map(|m| (m.step, m.policy_loss_avg))
        .collect();
    write_loss_curve(&base.output_dir.join("loss_curve.png"), &curve, &[])?;
    let adapter_dir = base.output_dir.join("adapter");
    let value_adapter_dir = base.output_dir.join("value_adapter");
    let PpoLearner { policy, value, .. } = learner;
    policy.into_model().export(&adapter_dir)?;
    value
        .into_model()
        .save_adapter(&value_adapter_dir, "default")?;
    Ok(PpoSummary {
        history,
        adapter_dir,
        value_adapter_dir,
    })
}

/// Sets each rollout's score: the reward model's, or the reward functions' weighted sum.
fn score(
    reward: &PpoReward,
    model: Option<&LoraModel<SequenceClassifier>>,
    records: &[PromptRecord],
    picks: &[usize],
    encoder: &PromptEncoder,
    rollouts: &mut [Rollout],
) -> Result<()> {
    match (reward, model) {
        (PpoReward::Model(_), Some(rm)) => {
            let scores = model_scores(rm, rollouts)?;
            for (r, s) in rollouts.iter_mut().zip(scores) {
                r.reward = Some(s);
            }
        }
        (PpoReward::Functions(f), _) => {
            for (r, &p) in rollouts.iter_mut().zip(picks) {
                let text = encoder.decode(&r.completion)?;
                r.reward = total_reward(f, &records[p], &text)?;
            }
        }
        (PpoReward::Model(_), None) => {
            return Err(TrainError::option(
                "reward",
                "the reward model is not loaded",
            ));
        }
    }
    Ok(())
}

/// Both trainers' options: AdamW without weight decay, a constant learning rate, no gradient
/// clipping (TRL's PPO does not clip).
fn trainer_options(run: &PpoRun) -> TrainerOptions {
    let b = &run.base;
    let steps = b.max_steps * run.ppo.num_ppo_epochs * run.ppo.num_mini_batches;
    let precision: Option<Precision> = b.precision;
    TrainerOptions::constant_lr(b.lr, steps, run.grad_accum, None, b.seed, precision)
}
