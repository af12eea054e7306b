//! Perplexity and mean NLL: over a dataset of labelled examples (token-weighted, honouring
//! label masks), and over long texts with a sliding window as transformers' perplexity guide
//! computes it (<https://huggingface.co/docs/transformers/perplexity>).
use kiln_data::{Example, IGNORE_INDEX};
use kiln_models::CausalLm;

use crate::error::{EvalError, Result};
use crate::loglik::{ScoreRow, score_rows};

/// Mean negative log-likelihood and its exponential.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Perplexity {
    /// Summed NLL (natural log) of the counted tokens.
    pub nll_sum: f64,
    /// Counted tokens (the weight of each window for the sliding-window guide).
    pub tokens: usize,
    pub mean_nll: f64,
    pub perplexity: f64,
}

impl Perplexity {
    pub fn from_sum(nll_sum: f64, tokens: usize) -> Self {
        let mean_nll = nll_sum / tokens as f64;
        Self {
            nll_sum,
            tokens,
            mean_nll,
            perplexity: mean_nll.exp(),
        }
    }
}

/// Targets of an example with transformers' shifted labels: position `i - 1` predicts
/// `labels[i]` where it is not ignored.
fn shifted_row(ex: &Example) -> Result<ScoreRow> {
    let mut targets = Vec::new();
    for (i, &l) in ex.labels.iter().enumerate().skip(1) {
        if l == IGNORE_INDEX {
            continue;
        }
        let t = u32::try_from(l).map_err(|_| EvalError::InvalidOption {
            what: "labels",
            reason: format!("label {l} at position {i} is negative and not -100"),
        })?;
        targets.push((i - 1, t));
    }
    Ok(ScoreRow {
        ids: ex.input_ids.clone(),
        targets,
    })
}

/// Per-example summed NLL and token count of `examples` (shifted labels, `-100` ignored), in
/// batches of `batch_size` right-padded rows. Examples are sorted by length inside the call so
/// batches waste little padding; results are in input order.
pub fn example_nll(
    model: &CausalLm,
    examples: &[Example],
    batch_size: usize,
    on_batch: &mut dyn FnMut(usize),
) -> Result<Vec<(f64, usize)>> {
    if examples.iter().any(|e| e.labels.len() != e.input_ids.len()) {
        return Err(EvalError::InvalidOption {
            what: "examples",
            reason: "labels and input ids differ in length".into(),
        });
    }
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| examples[i].len());
    let mut out = vec![(0.0, 0); examples.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        let rows = chunk
            .iter()
            .map(|&i| shifted_row(&examples[i]))
            .collect::<Result<Vec<_>>>()?;
        for (&i, s) in chunk.iter().zip(score_rows(model, &rows)?) {
            out[i] = (-s.logprob, s.tokens);
        }
        on_batch(chunk.len());
    }
    Ok(out)
}

/// Token-weighted perplexity of a dataset: `exp(Σ NLL / Σ counted tokens)`.
pub fn dataset_perplexity(
    model: &CausalLm,
    examples: &[Example],
    batch_size: usize,
) -> Result<Perplexity> {
    let per = example_nll(model, examples, batch_size, &mut |_| {})?;
    let (sum, tokens) = per.iter().fold((0.0, 0), |(s, n), &(x, k)| (s + x, n + k));
    if tokens == 0 {
        return Err(EvalError::Empty {
            what: "the label tokens of the dataset".into(),
        });
    }
    Ok(Perplexity::from_sum(sum, tokens))
}

/// Sliding-window perplexity of one token sequence, exactly as transformers' guide:
///
/// ```text
/// for begin in range(0, seq_len, stride):
///     end = min(begin + max_length, seq_len); trg_len = end - prev_end
///     labels = ids[begin:end] with all but the last trg_len set to -100
///     nll_sum += loss * (num_valid_labels - 1); n_tokens += num_valid_labels - 1
///     prev_end = end; stop when end == seq_len
/// ```
///
/// `loss` is the mean NLL of the window's counted (shifted) labels. Note the guide's weight
/// `num_valid_labels - 1` equals the counted tokens only for the first window; later windows
/// count `trg_len` tokens but are weighted by `trg_len - 1`. This keeps the guide's numbers.
pub fn sliding_window_perplexity(
    model: &CausalLm,
    ids: &[u32],
    max_length: usize,
    stride: usize,
) -> Result<Perplexity> {
    if max_length < 2 || stride == 0 || stride > max_length {
        return Err(EvalError::InvalidOption {
            what: "sliding window",
            reason: format!(
                "need max_length >= 2 and 0 < stride <= max_length; got max_length={max_length}, stride={stride}"
            ),
        });
    }
    if ids.len() < 2 {
        return Err(EvalError::Empty {
            what: "the text (fewer than 2 tokens)".into(),
        });
    }
    let (mut nll_sum, mut n_tokens, mut prev_end) = (0.0, 0usize, 0usize);
    let mut begin = 0;
    while begin < ids.len() {
        let end = (begin + max_length).min(ids.len());
        let trg_len = end - prev_end;
        let window = &ids[begin..end];
        let first_target = window.len() - trg_len;
        let targets: Vec<(usize, u32)> = (first_target.max(1)..window.len())
            .map(|i| (i - 1, window[i]))
            .collect();
        let row = ScoreRow {
            ids: window.to_vec(),
            targets,
        };
        let s = score_rows(model, std::slice::from_ref(&row))?[0];
        let valid = trg_len;
        if s.tokens > 0 && valid > 1 {
            let loss = -s.logprob / s.tokens as f64;
            nll_sum += loss * (valid - 1) as f64;
            n_tokens += valid - 1;
        }
        prev_end = end;
        if end == ids.len() {
            break;
        }
        begin += stride;
    }
    if n_tokens == 0 {
        return Err(EvalError::Empty {
            what: "the windows' label tokens".into(),
        });
    }
    Ok(Perplexity::from_sum(nll_sum, n_tokens))
}
