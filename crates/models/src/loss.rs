//! Causal language-modelling loss, as transformers computes it: logits at position `i`
//! predict the label at `i + 1`; labels equal to [`IGNORE_INDEX`] do not count.
use crate::error::{ModelError, Result};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

/// Label value that excludes a position from the loss.
pub const IGNORE_INDEX: i64 = -100;

/// Summed negative log-likelihood and the number of counted tokens.
#[derive(Debug, Clone)]
pub struct LossSum {
    /// `[1]`: sum over counted tokens of `-log p(label)`.
    pub sum: Tensor<1>,
    /// Number of counted (non-ignored, shifted) labels.
    pub tokens: usize,
}

/// Sum of the shifted token NLL over a batch; divide by a token count of your choice (the
/// trainer divides by the label tokens of a whole accumulation step).
///
/// # Shapes
/// - logits: `[b, t, vocab]`
/// - labels: `[b * t]` row-major
pub fn causal_lm_loss_sum(logits: Tensor<3>, labels: &[i64]) -> Result<LossSum> {
    let [b, t, v] = logits.dims();
    if labels.len() != b * t {
        return Err(ModelError::Input(format!(
            "labels have {} entries, logits are [{b}, {t}, {v}]",
            labels.len()
        )));
    }
    let device = logits.device();
    let n = b * (t.max(1) - 1);
    let mut targets = Vec::with_capacity(n);
    let mut weights = Vec::with_capacity(n);
    let mut tokens = 0;
    for r in 0..b {
        for i in 1..t {
            let l = labels[r * t + i];
            if l == IGNORE_INDEX {
                targets.push(0i64);
                weights.push(0f32);
            } else if l < 0 || l as usize >= v {
                return Err(ModelError::Input(format!(
                    "label {l} at row {r}, position {i} is outside the vocabulary of {v}"
                )));
            } else {
                targets.push(l);
                weights.push(1.0);
                tokens += 1;
            }
        }
    }
    if n == 0 {
        return Ok(LossSum {
            sum: Tensor::zeros([1], &device),
            tokens: 0,
        });
    }
    // [b, t-1, v] -> [n, v]
    let shifted = logits.slice([0..b, 0..t - 1, 0..v]).reshape([n, v]);
    let logp = log_softmax(shifted, 1);
    let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [n, 1]), &device);
    let picked = logp.gather(1, targets).reshape([n]);
    let weights = Tensor::<1>::from_data(TensorData::new(weights, [n]), &device);
    Ok(LossSum {
        sum: (picked * weights).sum().neg(),
        tokens,
    })
}

/// [`causal_lm_loss_sum`] from hidden states, projecting to the vocabulary only the positions
/// whose next label counts. With completion-only labels most positions do not count, and the
/// `[b, t, vocab]` logits (and their softmax) are the largest tensors of a training step: this
/// computes the same sum with a fraction of the memory and time.
///
/// # Shapes
/// - hidden: `[b, t, d]`; `project` maps `[1, n, d]` to `[1, n, vocab]`
/// - labels: `[b * t]` row-major
pub fn causal_lm_loss_sum_hidden(
    hidden: Tensor<3>,
    labels: &[i64],
    project: impl Fn(Tensor<3>) -> Tensor<3>,
) -> Result<LossSum> {
    let [b, t, d] = hidden.dims();
    if labels.len() != b * t {
        return Err(ModelError::Input(format!(
            "labels have {} entries, hidden states are [{b}, {t}, {d}]",
            labels.len()
        )));
    }
    let device = hidden.device();
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for r in 0..b {
        for i in 1..t {
            let l = labels[r * t + i];
            if l != IGNORE_INDEX {
                if l < 0 {
                    return Err(ModelError::Input(format!(
                        "label {l} at row {r}, position {i} is negative"
                    )));
                }
                rows.push((r * t + i - 1) as i64);
                targets.push(l);
            }
        }
    }
    let n = rows.len();
    if n == 0 {
        return Ok(LossSum {
            sum: Tensor::zeros([1], &device),
            tokens: 0,
        });
    }
    let index = Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), &device);
    let picked = hidden.reshape([b * t, d]).select(0, index);
    let logits = project(picked.reshape([1, n, d]));
    let v = logits.dims()[2];
    if let Some((k, &l)) = targets.iter().enumerate().find(|(_, l)| **l as usize >= v) {
        return Err(ModelError::Input(format!(
            "label {l} (counted label {k}) is outside the vocabulary of {v}"
        )));
    }
    let logp = log_softmax(logits.reshape([n, v]), 1);
    let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [n, 1]), &device);
    Ok(LossSum {
        sum: logp.gather(1, targets).sum().neg(),
        tokens: n,
    })
}

/// Mean NLL over the counted tokens (transformers' `loss` with `labels`). NaN when no label counts.
///
/// # Shapes
/// - logits: `[b, t, vocab]`, labels `[b * t]`, output `[1]`
pub fn causal_lm_loss(logits: Tensor<3>, labels: &[i64]) -> Result<Tensor<1>> {
    let LossSum { sum, tokens } = causal_lm_loss_sum(logits, labels)?;
    Ok(sum / tokens as f64)
}
