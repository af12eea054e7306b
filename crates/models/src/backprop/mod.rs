//! The training step's forward and backward pass computed by hand on the CPU: loss and
//! gradients of a micro-batch without burn's autodiff.
//!
//! Why: on burn's CPU backend a recorded training step spends its time allocating and zeroing
//! one fresh tensor per op, repacking frozen weights on every product and differentiating
//! through reshapes; the LoRA step measured 0.58× PyTorch+PEFT's speed. Here the decoder's
//! backward is written out (as llm.c does): frozen weights are read in place by `gemm`,
//! attention recomputes its probabilities from the saved log-sum-exp, and only the parameters
//! that train get a gradient. The numbers are the autodiff path's to float rounding, which the
//! tests check on every knob this path covers.
//!
//! Scope: every family the decoder implements. The Llama layout (Llama, Mistral, Qwen2,
//! SmolLM2: separate q/k/v and gate/up projections, q/k/v biases, sliding windows, tied or
//! separate output head); Gemma 2 (`(1 + w)` RMSNorm, sandwich norms, √d embedding scale, GeGLU,
//! attention and final logit soft-capping, alternating sliding/global layers,
//! `query_pre_attn_scalar`); Gemma 3 (q/k norms, a local RoPE base on sliding layers); Phi-3
//! (fused `qkv_proj` / `gate_up_proj` with adapters on the fused modules, partial rotary,
//! LongRoPE). Weights dense or frozen in their storage format (`kiln_cpu::QMatrix`); LoRA
//! adapters (with dropout, whose masks come from burn's RNG as in the autodiff path; gradient
//! checkpointing keeps each layer's masks as bits and replays them when it recomputes the
//! layer), DoRA adapters, full fine-tuning, f32 or bf16 mixed precision
//! ([`BackpropOptions::precision`]), on the ndarray backend. What is left (DoRA with dropout or
//! stacked with other active adapters, exact-erf GELU, other backends) returns `None` and the
//! trainer keeps burn's autodiff.
#[cfg(feature = "cpu")]
mod attn;
#[cfg(feature = "cpu")]
mod layer;
#[cfg(feature = "cpu")]
mod model;
#[cfg(feature = "cpu")]
mod ops;
#[cfg(feature = "cpu")]
mod softcap;

use crate::classifier::SequenceClassifier;
use crate::decoder::{CausalLm, DecoderInput};
use crate::error::Result;
use kiln_cpu::Grads;
pub use kiln_cpu::Precision;

/// How [`CausalLm::try_backprop`] runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackpropOptions {
    /// Keep only each layer's input and recompute the layer in the backward pass (gradient
    /// checkpointing).
    pub checkpoint: bool,
    /// f32, or bf16 products and saved activations (`kiln_lora::precision`).
    pub precision: Precision,
}

/// Loss and gradients of one micro-batch from [`CausalLm::try_backprop`].
#[derive(Debug)]
pub struct Backprop {
    /// Summed NLL of the counted labels (before dividing by the normaliser).
    pub loss_sum: f64,
    /// Counted labels.
    pub tokens: usize,
    /// Gradients of `loss_sum / normaliser` for every parameter that trains.
    pub grads: Grads,
}

/// Loss, log-probabilities and gradients of one micro-batch from [`CausalLm::try_backprop_logp`].
#[derive(Debug)]
pub struct LogpBackprop {
    /// The loss the closure returned.
    pub loss: f64,
    /// The log-probability of every counted label, in the order of the labels (row-major).
    pub logps: Vec<f32>,
    /// Gradients of the loss for every parameter that trains.
    pub grads: Grads,
}

/// Loss, scores and gradients of one micro-batch from
/// [`SequenceClassifier::try_backprop_scores`].
#[derive(Debug)]
pub struct ScoreBackprop {
    /// The loss the closure returned.
    pub loss: f64,
    /// The head's scores, `[b, num_labels]` row-major.
    pub scores: Vec<f32>,
    /// Gradients of the loss for every parameter that trains (the adapters' and the head's).
    pub grads: Grads,
}

impl SequenceClassifier {
    /// One forward and backward of a loss of the head's scores (reward models' Bradley–Terry
    /// loss, classification, regression): `loss` receives the scores of every row at its
    /// pooled position ([`SequenceClassifier::pooled_rows`]) and returns `L` and `∂L/∂score`;
    /// the head's gradient and `∂L/∂hidden` at the pooled rows flow back through the decoder
    /// by the same host backward as [`CausalLm::try_backprop`]. `None` when this path does not
    /// cover the model (then use burn's autodiff on [`SequenceClassifier::forward`]); an error
    /// when `loss` returns another number of derivatives.
    ///
    /// # Shapes
    /// - `loss`'s argument and its returned derivatives: `[b * num_labels]`
    pub fn try_backprop_scores<F>(
        &self,
        input: &DecoderInput,
        loss: F,
        options: BackpropOptions,
    ) -> Option<Result<ScoreBackprop>>
    where
        F: FnOnce(&[f32]) -> (f64, Vec<f32>),
    {
        let rows = match self.pooled_rows(input) {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        self.try_backprop_scores_at(input, &rows, loss, options)
    }

    /// [`Self::try_backprop_scores`] with the head read at the given `rows` of the final
    /// hidden state instead of the pooled ones: a value model's score at every completion
    /// token (PPO's critic, TRL's `score(hidden_states[-1])` at each position).
    ///
    /// # Shapes
    /// - rows: `[m]`, row-major indices into `[b * t]` (each `< b * t`)
    /// - `loss`'s argument and its returned derivatives: `[m * num_labels]`
    #[allow(unused_variables)]
    pub fn try_backprop_scores_at<F>(
        &self,
        input: &DecoderInput,
        rows: &[usize],
        loss: F,
        options: BackpropOptions,
    ) -> Option<Result<ScoreBackprop>>
    where
        F: FnOnce(&[f32]) -> (f64, Vec<f32>),
    {
        #[cfg(feature = "cpu")]
        {
            let (b, t) = (input.batch, input.seq_len);
            if let Some(&r) = rows.iter().find(|&&r| r >= b * t) {
                return Some(Err(crate::error::ModelError::Input(format!(
                    "score row {r} is outside batch {b} x seq_len {t}"
                ))));
            }
            let host = model::HostModel::new(&self.lm, input, options.precision)?;
            let score = kiln_lora::backprop::HostLinear::new(&self.score)
                .filter(|h| !h.has_dropout())?
                .with_precision(options.precision);
            let labels = vec![crate::loss::IGNORE_INDEX; b * t];
            let head = model::HeadLoss::Score {
                head: &score,
                rows,
                loss: Box::new(loss),
            };
            let out = host.run(&self.lm, input, &labels, head, options.checkpoint);
            Some(out.map(|o| ScoreBackprop {
                loss: o.loss,
                scores: o.logps,
                grads: o.grads,
            }))
        }
        #[cfg(not(feature = "cpu"))]
        {
            None
        }
    }
}

impl CausalLm {
    /// Loss and gradients of `loss_sum / normaliser` for one micro-batch, computed without
    /// autodiff (see the module docs), or `None` when this path does not cover the model; the
    /// caller then uses burn's autodiff. See [`BackpropOptions`] for gradient checkpointing and
    /// bf16.
    ///
    /// # Shapes
    /// - labels: `[b * t]` row-major, [`crate::loss::IGNORE_INDEX`] where not counted
    #[allow(unused_variables)]
    pub fn try_backprop(
        &self,
        input: &DecoderInput,
        labels: &[i64],
        normaliser: f64,
        options: BackpropOptions,
    ) -> Option<Result<Backprop>> {
        #[cfg(feature = "cpu")]
        {
            let host = model::HostModel::new(self, input, options.precision)?;
            let head = model::HeadLoss::Nll { normaliser };
            let out = host.run(self, input, labels, head, options.checkpoint);
            Some(out.map(|o| Backprop {
                loss_sum: o.loss,
                tokens: o.tokens,
                grads: o.grads,
            }))
        }
        #[cfg(not(feature = "cpu"))]
        {
            None
        }
    }

    /// One forward and backward of any loss built on the log-probabilities of the labels
    /// (DPO and its family, KTO, policy gradients): `loss` receives `logp_1..logp_n` of the
    /// counted labels (in the order of `labels`, row-major, each predicted by the position
    /// before it) and returns `L` and `∂L/∂logp_i`; the gradient reaches the logits as
    /// `∂L/∂logp_i · (onehot_i - softmax_i)`. `None` when this path does not cover the model,
    /// as [`Self::try_backprop`]; an error when `loss` returns another number of derivatives.
    ///
    /// # Shapes
    /// - labels: `[b * t]` row-major, [`crate::loss::IGNORE_INDEX`] where not counted
    /// - `loss`'s argument and its returned derivatives: `[counted labels]`
    #[allow(unused_variables)]
    pub fn try_backprop_logp<F>(
        &self,
        input: &DecoderInput,
        labels: &[i64],
        loss: F,
        options: BackpropOptions,
    ) -> Option<Result<LogpBackprop>>
    where
        F: FnOnce(&[f32]) -> (f64, Vec<f32>),
    {
        #[cfg(feature = "cpu")]
        {
            let host = model::HostModel::new(self, input, options.precision)?;
            let head = model::HeadLoss::Logp(Box::new(loss));
            let out = host.run(self, input, labels, head, options.checkpoint);
            Some(out.map(|o| LogpBackprop {
                loss: o.loss,
                logps: o.logps,
                grads: o.grads,
            }))
        }
        #[cfg(not(feature = "cpu"))]
        {
            None
        }
    }

    /// The log-probabilities of the counted labels (in the order of `labels`), by the same
    /// host forward as [`Self::try_backprop_logp`] without a backward: a reference model's
    /// log-probabilities equal the policy's bit for bit when their weights are equal.
    ///
    /// # Shapes
    /// - labels: `[b * t]` row-major; output `[counted labels]`
    #[allow(unused_variables)]
    pub fn try_logps(
        &self,
        input: &DecoderInput,
        labels: &[i64],
        precision: Precision,
    ) -> Option<Result<Vec<f32>>> {
        #[cfg(feature = "cpu")]
        {
            let host = model::HostModel::new(self, input, precision)?;
            let out = host.run(self, input, labels, model::HeadLoss::LogpOnly, false);
            Some(out.map(|o| o.logps))
        }
        #[cfg(not(feature = "cpu"))]
        {
            None
        }
    }
}
