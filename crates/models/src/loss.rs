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

/// Mean NLL over the counted tokens (transformers' `loss` with `labels`). NaN when no label counts.
///
/// # Shapes
/// - logits: `[b, t, vocab]`, labels `[b * t]`, output `[1]`
pub fn causal_lm_loss(logits: Tensor<3>, labels: &[i64]) -> Result<Tensor<1>> {
    let LossSum { sum, tokens } = causal_lm_loss_sum(logits, labels)?;
    Ok(sum / tokens as f64)
}
