//! The trainer: micro-batch forward/backward, gradient accumulation normalised by the label
//! tokens of the whole optimizer step, global-norm clipping, AdamW, the learning-rate schedule
//! and evaluation.
use crate::adamw::FusedAdamW;
use crate::batch::{Batch, BatchSource, mix};
use crate::callback::{Callback, EvalMetrics, StepMetrics};
use crate::config::{AdamWOptions, BackwardPath, EarlyStopping, NonFinitePolicy, SftConfig};
use crate::error::{Result, TrainError};
use crate::model::CausalModel;
use crate::params::{ParamInfo, accumulate_grads, global_grad_norm, scale_grads, trainable_params};
use crate::schedule::LrSchedule;
use burn::module::ParamGroup;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use kiln_models::backprop::{BackpropOptions, Precision};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// How the trainer updates the model.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainerOptions {
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Clip the global gradient norm to this value.
    pub max_grad_norm: Option<f64>,
    pub schedule: LrSchedule,
    pub adamw: AdamWOptions,
    /// Seeds dropout per micro-batch (`mix(seed, position)`), so a resumed run draws the same masks.
    pub seed: u64,
    pub on_non_finite: NonFinitePolicy,
    pub early_stopping: Option<EarlyStopping>,
    /// Recompute activations in the backward pass.
    pub gradient_checkpointing: bool,
    /// Fused CPU backward where it applies, or always autodiff.
    pub backward: BackwardPath,
    /// f32, or bf16 mixed precision (kiln's fused CPU backward only). `None`: bf16 on CPUs with
    /// bf16 units when the fused backward covers the model ([`Precision::native`]), f32
    /// otherwise (burn's autodiff, or a CPU without bf16 units).
    pub precision: Option<Precision>,
}

impl TrainerOptions {
    /// The options of the preference, reward and RL recipes (TRL's defaults there): AdamW
    /// without weight decay, a constant learning rate without warmup, the fused backward, a
    /// non-finite loss stopping the run.
    pub fn constant_lr(
        lr: f64,
        max_steps: usize,
        grad_accum: usize,
        max_grad_norm: Option<f64>,
        seed: u64,
        precision: Option<Precision>,
    ) -> Self {
        let schedule = crate::config::ScheduleOptions {
            kind: crate::config::ScheduleKind::Constant,
            warmup_steps: Some(0),
            warmup_ratio: None,
            min_lr: 0.0,
        };
        Self {
            grad_accum,
            max_grad_norm,
            schedule: LrSchedule::new(&schedule, lr, max_steps),
            adamw: AdamWOptions {
                lr,
                weight_decay: 0.0,
                ..AdamWOptions::default()
            },
            seed,
            on_non_finite: NonFinitePolicy::Stop,
            early_stopping: None,
            gradient_checkpointing: false,
            backward: BackwardPath::Fused,
            precision,
        }
    }

    /// Options of `config` for a run of `total_steps` optimizer steps.
    pub fn from_config(config: &SftConfig, total_steps: usize) -> Self {
        Self {
            grad_accum: config.grad_accum,
            max_grad_norm: config.max_grad_norm,
            schedule: LrSchedule::new(&config.schedule, config.optimizer.lr, total_steps),
            adamw: config.optimizer.clone(),
            seed: config.seed,
            on_non_finite: config.on_non_finite,
            early_stopping: config.early_stopping.clone(),
            gradient_checkpointing: config.gradient_checkpointing,
            backward: config.backward,
            precision: config.precision,
        }
    }
}

/// Where training stands; saved in every checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: usize,
    /// Global micro-batch position where the current optimizer step starts.
    pub position: u64,
    /// Micro-batches of the current step already accumulated.
    pub micro_in_step: usize,
    /// Label tokens of the whole current step (the loss normaliser).
    pub step_label_tokens: usize,
    /// Loss accumulated so far in the current step.
    pub step_loss: f64,
    /// Input tokens accumulated so far in the current step.
    pub step_tokens: usize,
    /// Input tokens trained on.
    pub tokens_seen: u64,
    /// Steps dropped because of a non-finite loss or gradient.
    pub skipped_steps: usize,
    /// Training seconds before the current session.
    pub elapsed: f64,
    pub best_val_loss: Option<f64>,
    pub evals_without_improvement: usize,
    pub history: Vec<StepMetrics>,
    pub evals: Vec<EvalMetrics>,
}

/// What one call to [`Trainer::micro_step`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum MicroOutcome {
    /// Gradients accumulated; the optimizer step is not complete.
    Accumulated,
    /// The optimizer step completed.
    Stepped(StepMetrics),
    /// The step was dropped: non-finite loss or gradient under [`NonFinitePolicy::Skip`].
    Skipped {
        step: usize,
        loss: f64,
        grad_norm: f64,
    },
}

/// Trains a model with AdamW.
///
/// The model lives on an autodiff device; its parameters with `require_grad` train and no other
/// parameter gets a gradient or optimizer state.
pub struct Trainer<M: CausalModel> {
    model: Option<M>,
    pub(crate) optim: ModuleOptimizer,
    pub options: TrainerOptions,
    pub state: TrainState,
    pub(crate) grads: Option<GradientsParams>,
    /// Micro-batches whose gradients came from the fused backward in this session.
    fused_micro_batches: u64,
    callbacks: Vec<Box<dyn Callback>>,
    /// Written into every checkpoint ([`crate::RunDir`]).
    pub(crate) run_id: Option<String>,
    session_start: Instant,
    step_start: Option<Instant>,
}

impl<M: CausalModel> std::fmt::Debug for Trainer<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("options", &self.options)
            .field("state", &self.state)
            .finish()
    }
}

/// bf16 asked for where kiln's fused CPU backward does not run (the autodiff path has no bf16).
fn bf16_unsupported() -> TrainError {
    TrainError::option(
        "precision",
        "bf16 needs kiln's fused CPU backward (cpu device, LoRA, DoRA without dropout, or full \
         fine-tuning); this model or device trains through burn's autodiff, which computes in \
         f32 here: use precision f32",
    )
}

/// The fused path's host gradients as burn's, or `None` unless they cover exactly the
/// trainable parameters of `model` with their shapes.
pub(crate) fn host_grads<M: CausalModel>(
    model: &M,
    host: kiln_cpu::Grads,
) -> Option<GradientsParams> {
    let trainable = trainable_params(model);
    let mut grads = GradientsParams::new();
    let device = model.devices().into_iter().next()?.inner();
    let mut covered = 0;
    for (id, shape, values) in host.into_entries() {
        let Some(p) = trainable.iter().find(|p| p.id == id) else {
            continue;
        };
        if p.shape != shape {
            return None;
        }
        covered += 1;
        match shape.len() {
            1 => grads.register(
                id,
                Tensor::<1>::from_data(TensorData::new(values, [shape[0]]), &device),
            ),
            2 => grads.register(
                id,
                Tensor::<2>::from_data(TensorData::new(values, [shape[0], shape[1]]), &device),
            ),
            _ => return None,
        }
    }
    if covered != trainable.len() {
        tracing::warn!(
            "fused backward covered {covered} of {} trainable parameters",
            trainable.len()
        );
        return None;
    }
    Some(grads)
}

/// The autodiff device the trainer runs on (with gradient checkpointing when asked).
pub fn training_device(device: &Device, gradient_checkpointing: bool) -> Device {
    let d = device.clone().autodiff();
    if gradient_checkpointing {
        d.gradient_checkpointing()
    } else {
        d
    }
}

/// AdamW with torch's update (bias-corrected moments, decoupled decay `θ ← θ(1 - lr·wd)`),
/// and weight decay 0 for norm weights and biases: burn's, fused into one pass on the CPU
/// ([`FusedAdamW`]).
pub(crate) fn build_optimizer(options: &AdamWOptions, trainable: &[ParamInfo]) -> ModuleOptimizer {
    let adamw = |weight_decay: f64| {
        FusedAdamW::new(
            options.betas.0 as f32,
            options.betas.1 as f32,
            options.eps as f32,
            weight_decay as f32,
        )
    };
    let no_decay: Vec<_> = trainable
        .iter()
        .filter(|p| p.no_decay())
        .map(|p| p.id)
        .collect();
    let optim = ModuleOptimizer::from(adamw(options.weight_decay));
    if no_decay.is_empty() || options.weight_decay == 0.0 {
        optim
    } else {
        optim.with_group(ParamGroup::from_ids(no_decay), adamw(0.0), None)
    }
}

impl<M: CausalModel> Trainer<M> {
    /// Moves `model` to the autodiff version of `device` and sets up AdamW.
    pub fn new(model: M, device: &Device, options: TrainerOptions) -> Result<Self> {
        if options.grad_accum == 0 {
            return Err(TrainError::option("grad_accum", "must be at least 1"));
        }
        if options.precision == Some(Precision::Bf16) && options.backward == BackwardPath::Autodiff
        {
            return Err(TrainError::option(
                "precision",
                "bf16 runs on kiln's fused CPU backward only; `backward = \"autodiff\"` computes in f32",
            ));
        }
        let model = model
            .fork(&training_device(device, options.gradient_checkpointing))
            .train();
        let trainable = trainable_params(&model);
        if trainable.is_empty() {
            return Err(TrainError::option(
                "model",
                "no parameter trains: attach an adapter, or use `CausalLm::into_full_training`",
            ));
        }
        Ok(Self {
            optim: build_optimizer(&options.adamw, &trainable),
            model: Some(model),
            options,
            state: TrainState::default(),
            grads: None,
            fused_micro_batches: 0,
            callbacks: Vec::new(),
            run_id: None,
            session_start: Instant::now(),
            step_start: None,
        })
    }

    /// Adds a callback (logger, progress bar...).
    pub fn add_callback(&mut self, callback: Box<dyn Callback>) {
        self.callbacks.push(callback);
    }

    /// Records the run this trainer belongs to ([`crate::RunDir::id`]) in its checkpoints.
    pub fn set_run_id(&mut self, id: impl Into<String>) {
        self.run_id = Some(id.into());
    }

    /// The run id written into checkpoints, if any.
    pub fn run_id(&self) -> Option<&str> {
        self.run_id.as_deref()
    }

    pub(crate) fn callbacks(&mut self) -> &mut [Box<dyn Callback>] {
        &mut self.callbacks
    }

    /// The model being trained (on the autodiff device).
    pub fn model(&self) -> &M {
        // `model` is only `None` inside `apply_step`, which always puts it back.
        self.model.as_ref().expect("model taken during a step")
    }

    /// The model being trained, to change how it runs inference (GRPO's rollouts); its
    /// parameters change only through the optimizer.
    pub(crate) fn model_mut(&mut self) -> &mut M {
        self.model.as_mut().expect("model taken during a step")
    }

    /// The trained model, leaving the trainer.
    pub fn into_model(mut self) -> M {
        self.model.take().expect("model taken during a step")
    }

    /// Trainable parameters.
    pub fn trainable(&self) -> Vec<ParamInfo> {
        trainable_params(self.model())
    }

    /// Seconds trained, across resumes.
    pub fn elapsed(&self) -> f64 {
        self.state.elapsed + self.session_start.elapsed().as_secs_f64()
    }

    /// Micro-batches of this session whose gradients came from the fused CPU backward
    /// ([`BackwardPath::Fused`]) rather than burn's autodiff.
    pub fn fused_micro_batches(&self) -> u64 {
        self.fused_micro_batches
    }

    /// Runs micro-batches until the current optimizer step completes (or is skipped).
    pub fn step(&mut self, data: &dyn BatchSource) -> Result<MicroOutcome> {
        loop {
            match self.micro_step(data)? {
                MicroOutcome::Accumulated => continue,
                done => return Ok(done),
            }
        }
    }

    /// Runs one micro-batch: forward, loss `sum_nll / label_tokens_of_the_whole_step`, backward,
    /// and adds its gradients. The last micro-batch of a step also clips and updates.
    pub fn micro_step(&mut self, data: &dyn BatchSource) -> Result<MicroOutcome> {
        let accum = self.options.grad_accum;
        let start = self.state.position;
        if self.state.micro_in_step == 0 {
            // The normaliser must be known before the first backward pass of the step.
            let mut tokens = 0;
            for j in 0..accum as u64 {
                tokens += data.at(start + j)?.label_tokens();
            }
            if tokens == 0 {
                return Err(TrainError::Batch {
                    index: start as usize,
                    reason: format!(
                        "the {accum} micro-batches of step {} have no label token",
                        self.state.step + 1
                    ),
                });
            }
            self.state.step_label_tokens = tokens;
            self.state.step_loss = 0.0;
            self.state.step_tokens = 0;
            self.step_start = Some(Instant::now());
        }
        let position = start + self.state.micro_in_step as u64;
        let batch = data.at(position)?;
        self.backward(&batch, position)?;
        self.state.micro_in_step += 1;
        if self.state.micro_in_step < accum {
            return Ok(MicroOutcome::Accumulated);
        }
        self.apply_step()
    }

    fn backward(&mut self, batch: &Batch, position: u64) -> Result<()> {
        if let Some(d) = self.model().devices().into_iter().next() {
            d.seed(mix(self.options.seed, position));
        }
        // LoRA's dropout masks come from the CPU backend's generator on every device (one seed,
        // the same run on wgpu as on the CPU; `kiln_lora::linear`).
        #[cfg(feature = "cpu")]
        kiln_cpu::host::device().seed(mix(self.options.seed, position));
        let normaliser = self.state.step_label_tokens as f64;
        let fused = self.fused_backward(batch, normaliser)?;
        if fused.is_some() {
            self.fused_micro_batches += 1;
        }
        let model = self.model.as_ref().expect("model present");
        let (value, grads) = match fused {
            Some(done) => done,
            None => {
                let sum = model.loss_sum(&batch.input, &batch.labels)?.sum;
                let loss = sum / normaliser;
                let value = loss.clone().into_scalar::<f32>() as f64;
                (value, GradientsParams::from_grads(loss.backward(), model))
            }
        };
        let mut acc = self.grads.take().unwrap_or_default();
        accumulate_grads(model, &mut acc, grads);
        self.grads = Some(acc);
        self.state.step_loss += value;
        self.state.step_tokens += match &batch.input.attention_mask {
            Some(m) => m.iter().filter(|&&v| v != 0).count(),
            None => batch.input.ids.len(),
        };
        Ok(())
    }

    /// The micro-batch's loss and gradients through [`CausalModel::try_backprop`], or `None`
    /// when the options ask for autodiff or the fused path does not cover the model (an error
    /// if bf16 was asked for: only the fused path computes in bf16).
    fn fused_backward(
        &self,
        batch: &Batch,
        normaliser: f64,
    ) -> Result<Option<(f64, GradientsParams)>> {
        if self.options.backward != BackwardPath::Fused {
            return Ok(None);
        }
        match self.try_fused(batch, normaliser)? {
            None if self.options.precision == Some(Precision::Bf16) => Err(bf16_unsupported()),
            out => Ok(out),
        }
    }

    /// [`Self::fused_backward`]'s work: the fused gradients, used only if they cover exactly
    /// the trainable parameters.
    fn try_fused(&self, batch: &Batch, normaliser: f64) -> Result<Option<(f64, GradientsParams)>> {
        let model = self.model();
        let options = BackpropOptions {
            checkpoint: self.options.gradient_checkpointing,
            precision: self.options.precision.unwrap_or_else(Precision::native),
        };
        let Some(out) = model.try_backprop(&batch.input, &batch.labels, normaliser, options) else {
            return Ok(None);
        };
        let out = out?;
        let Some(grads) = host_grads(model, out.grads) else {
            return Ok(None);
        };
        Ok(Some((out.loss_sum / normaliser, grads)))
    }

    /// Starts an optimizer step driven from outside [`Self::micro_step`] (the preference
    /// recipes): resets the step's loss and token counts and its clock.
    pub(crate) fn begin_step(&mut self) {
        self.state.step_loss = 0.0;
        self.state.step_tokens = 0;
        self.state.micro_in_step = 0;
        self.step_start = Some(Instant::now());
    }

    /// Adds one micro-batch's gradients (of the step's loss), its loss and input tokens.
    pub(crate) fn add_micro_batch(&mut self, loss: f64, tokens: usize, grads: GradientsParams) {
        let mut acc = self.grads.take().unwrap_or_default();
        let model = self.model.as_ref().expect("model present");
        accumulate_grads(model, &mut acc, grads);
        self.grads = Some(acc);
        self.state.step_loss += loss;
        self.state.step_tokens += tokens;
        self.state.micro_in_step += 1;
        self.fused_micro_batches += 1;
    }

    /// Clips, checks for NaN/inf, updates the weights and advances the schedule.
    pub(crate) fn apply_step(&mut self) -> Result<MicroOutcome> {
        let mut grads = self.grads.take().unwrap_or_default();
        let model = self.model();
        let grad_norm = global_grad_norm(model, &grads)?;
        let loss = self.state.step_loss;
        let step = self.state.step + 1;
        let next_position = self.state.position + self.options.grad_accum as u64;
        if !loss.is_finite() || !grad_norm.is_finite() {
            // Roll back to the start of the step: the weights are untouched.
            self.state.micro_in_step = 0;
            if self.options.on_non_finite == NonFinitePolicy::Skip {
                self.state.position = next_position;
                self.state.skipped_steps += 1;
                tracing::warn!(
                    "step {step}: non-finite loss {loss} or gradient norm {grad_norm}; step skipped"
                );
                return Ok(MicroOutcome::Skipped {
                    step,
                    loss,
                    grad_norm,
                });
            }
            let (what, value) = if loss.is_finite() {
                ("gradient norm", grad_norm)
            } else {
                ("loss", loss)
            };
            return Err(TrainError::NonFinite {
                what,
                value,
                step,
                checkpoint: None,
            });
        }
        // Clip by the GLOBAL norm, as torch.nn.utils.clip_grad_norm_: one factor for all
        // gradients. burn's GradientClipping::Norm clips each tensor by its own norm instead.
        if let Some(max) = self.options.max_grad_norm {
            let coef = max / (grad_norm + 1e-6);
            if coef < 1.0 {
                scale_grads(model, &mut grads, coef);
            }
        }
        let lr = self.options.schedule.lr(self.state.step);
        let model = self.model.take().expect("model present");
        self.model = Some(self.optim.step(lr, model, grads));
        let secs = self
            .step_start
            .take()
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        let metrics = StepMetrics {
            step,
            loss,
            lr,
            grad_norm,
            tokens: self.state.step_tokens,
            tokens_per_s: if secs > 0.0 {
                self.state.step_tokens as f64 / secs
            } else {
                0.0
            },
            elapsed: self.elapsed(),
        };
        self.state.step = step;
        self.state.position = next_position;
        self.state.micro_in_step = 0;
        self.state.tokens_seen += self.state.step_tokens as u64;
        self.state.history.push(metrics.clone());
        for c in &mut self.callbacks {
            c.on_step(&metrics)?;
        }
        Ok(MicroOutcome::Stepped(metrics))
    }

    /// Validation loss and perplexity over the first `max_batches` batches of `data` (all when
    /// `None`), without autodiff. Records the result, tracks the best loss for early stopping
    /// and calls the callbacks.
    pub fn evaluate(
        &mut self,
        data: &dyn BatchSource,
        max_batches: Option<usize>,
    ) -> Result<EvalMetrics> {
        let model = self.model().valid();
        let n = max_batches.map_or(data.len(), |m| m.min(data.len()));
        let (mut sum, mut tokens) = (0.0f64, 0usize);
        for i in 0..n {
            let batch = data.get(0, i)?;
            let out = model.loss_sum(&batch.input, &batch.labels)?;
            sum += out.sum.into_scalar::<f32>() as f64;
            tokens += out.tokens;
        }
        if tokens == 0 {
            return Err(TrainError::Batch {
                index: 0,
                reason: "the validation data has no label token".into(),
            });
        }
        let val_loss = sum / tokens as f64;
        let metrics = EvalMetrics {
            step: self.state.step,
            val_loss,
            val_perplexity: val_loss.exp(),
            val_tokens: tokens,
        };
        let min_delta = self
            .options
            .early_stopping
            .as_ref()
            .map_or(0.0, |e| e.min_delta);
        match self.state.best_val_loss {
            Some(best) if val_loss > best - min_delta => self.state.evals_without_improvement += 1,
            _ => {
                self.state.best_val_loss = Some(val_loss);
                self.state.evals_without_improvement = 0;
            }
        }
        self.state.evals.push(metrics.clone());
        for c in &mut self.callbacks {
            c.on_eval(&metrics)?;
        }
        Ok(metrics)
    }

    /// Whether early stopping says to stop.
    pub fn should_stop_early(&self) -> bool {
        self.options
            .early_stopping
            .as_ref()
            .is_some_and(|e| self.state.evals_without_improvement >= e.patience.max(1))
    }
}
