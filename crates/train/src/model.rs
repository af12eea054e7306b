//! What the trainer needs from a model: logits for a batch. Which parameters train is decided
//! by the model itself (`require_grad`): with LoRA only the active adapters, with full
//! fine-tuning everything (`CausalLm::into_full_training`, which also dequantizes frozen
//! matrices).
use burn::module::{Module, ModuleDisplay};
use burn::tensor::Tensor;
use kiln_lora::{AdapterTarget, LoraModel};
use kiln_models::backprop::{Backprop, BackpropOptions, LogpBackprop, Precision};
use kiln_models::{CausalLm, DecoderInput, LossSum, SequenceClassifier, causal_lm_loss_sum};

/// A causal language model the trainer can train.
pub trait CausalModel: Module {
    /// Logits of every position.
    ///
    /// # Shapes
    /// - output: `[b, t, vocab]`
    fn logits(&self, input: &DecoderInput) -> kiln_models::Result<Tensor<3>>;

    /// The language model itself (with its adapters applied), for evaluation callbacks.
    fn causal_lm(&self) -> &CausalLm;

    /// The language model, to change how it runs inference ([`CausalLm::set_precision`],
    /// [`CausalLm::hold_bf16_weights`]).
    fn causal_lm_mut(&mut self) -> &mut CausalLm;

    /// Summed shifted NLL of `labels` and the number of counted tokens. The default computes
    /// every position's logits; models may project only the counted positions.
    fn loss_sum(&self, input: &DecoderInput, labels: &[i64]) -> kiln_models::Result<LossSum> {
        causal_lm_loss_sum(self.logits(input)?, labels)
    }

    /// Loss and gradients without autodiff ([`CausalLm::try_backprop`]), or `None` when the
    /// model has no such path (the default) or it does not apply.
    fn try_backprop(
        &self,
        _input: &DecoderInput,
        _labels: &[i64],
        _normaliser: f64,
        _options: BackpropOptions,
    ) -> Option<kiln_models::Result<Backprop>> {
        None
    }

    /// One forward and backward of a loss of the counted labels' log-probabilities
    /// ([`CausalLm::try_backprop_logp`]), or `None` when the model has no such path.
    fn try_backprop_logp(
        &self,
        _input: &DecoderInput,
        _labels: &[i64],
        _loss: LogpLossFn<'_>,
        _options: BackpropOptions,
    ) -> Option<kiln_models::Result<LogpBackprop>> {
        None
    }

    /// The counted labels' log-probabilities by the same host forward ([`CausalLm::try_logps`]).
    fn try_logps(
        &self,
        _input: &DecoderInput,
        _labels: &[i64],
        _precision: Precision,
    ) -> Option<kiln_models::Result<Vec<f32>>> {
        None
    }
}

/// A loss of the counted labels' log-probabilities: their values in, the loss and its
/// derivative by each out (see [`CausalLm::try_backprop_logp`]).
pub type LogpLossFn<'a> = Box<dyn FnOnce(&[f32]) -> (f64, Vec<f32>) + 'a>;

impl CausalModel for CausalLm {
    fn logits(&self, input: &DecoderInput) -> kiln_models::Result<Tensor<3>> {
        self.forward(input)
    }

    fn causal_lm(&self) -> &CausalLm {
        self
    }

    fn causal_lm_mut(&mut self) -> &mut CausalLm {
        self
    }

    fn loss_sum(&self, input: &DecoderInput, labels: &[i64]) -> kiln_models::Result<LossSum> {
        CausalLm::loss_sum(self, input, labels)
    }

    fn try_backprop(
        &self,
        input: &DecoderInput,
        labels: &[i64],
        normaliser: f64,
        options: BackpropOptions,
    ) -> Option<kiln_models::Result<Backprop>> {
        CausalLm::try_backprop(self, input, labels, normaliser, options)
    }

    fn try_backprop_logp(
        &self,
        input: &DecoderInput,
        labels: &[i64],
        loss: LogpLossFn<'_>,
        options: BackpropOptions,
    ) -> Option<kiln_models::Result<LogpBackprop>> {
        CausalLm::try_backprop_logp(self, input, labels, loss, options)
    }

    fn try_logps(
        &self,
        input: &DecoderInput,
        labels: &[i64],
        precision: Precision,
    ) -> Option<kiln_models::Result<Vec<f32>>> {
        CausalLm::try_logps(self, input, labels, precision)
    }
}

impl<M: CausalModel + AdapterTarget + ModuleDisplay> CausalModel for LoraModel<M> {
    fn logits(&self, input: &DecoderInput) -> kiln_models::Result<Tensor<3>> {
        self.model.logits(input)
    }

    fn causal_lm(&self) -> &CausalLm {
        self.model.causal_lm()
    }

    fn causal_lm_mut(&mut self) -> &mut CausalLm {
        self.model.causal_lm_mut()
    }

    fn loss_sum(&self, input: &DecoderInput, labels: &[i64]) -> kiln_models::Result<LossSum> {
        self.model.loss_sum(input, labels)
    }

    fn try_backprop(
        &self,
        input: &DecoderInput,
        labels: &[i64],
        normaliser: f64,
        options: BackpropOptions,
    ) -> Option<kiln_models::Result<Backprop>> {
        self.model.try_backprop(input, labels, normaliser, options)
    }

    fn try_backprop_logp(
        &self,
        input: &DecoderInput,
        labels: &[i64],
        loss: LogpLossFn<'_>,
        options: BackpropOptions,
    ) -> Option<kiln_models::Result<LogpBackprop>> {
        self.model.try_backprop_logp(input, labels, loss, options)
    }

    fn try_logps(
        &self,
        input: &DecoderInput,
        labels: &[i64],
        precision: Precision,
    ) -> Option<kiln_models::Result<Vec<f32>>> {
        self.model.try_logps(input, labels, precision)
    }
}

/// A sequence classifier trains through [`crate::RewardTrainer`] and the classification
/// recipes, which call its score head directly; as a [`CausalModel`] it offers only its body
/// (for the trainer's bookkeeping and evaluation callbacks), whose `logits` project to the
/// vocabulary through the tied embedding and mean nothing for the head.
impl CausalModel for SequenceClassifier {
    fn logits(&self, input: &DecoderInput) -> kiln_models::Result<Tensor<3>> {
        self.lm.forward(input)
    }

    fn causal_lm(&self) -> &CausalLm {
        &self.lm
    }

    fn causal_lm_mut(&mut self) -> &mut CausalLm {
        &mut self.lm
    }
}
