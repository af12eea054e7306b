//! Log-likelihood of continuations under a model, as lm-evaluation-harness 0.4 computes it for
//! Hugging Face causal models (`HFLM.loglikelihood`).
//!
//! A request is a `(context, continuation)` pair of strings. Trailing whitespace of the context
//! moves to the continuation; the continuation's tokens are the tokens of `context +
//! continuation` after the first `len(encode(context))` (so a merge across the boundary is
//! scored as part of the continuation); the tokenizer's special tokens are added (lm-eval's
//! default) unless the text already starts with BOS; an empty context is replaced by a prefix
//! token (the BOS id, else the EOS id). The score is
//! the summed log-probability of the continuation tokens and whether each of them is the
//! argmax (lm-eval's `is_greedy`).
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use kiln_models::{CausalLm, DecoderInput};
use tokenizers::Tokenizer;

use crate::error::{EvalError, Result};

/// A scored continuation.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Loglik {
    /// Sum of the continuation tokens' log-probabilities (natural log).
    pub logprob: f64,
    /// Whether greedy decoding from the context would produce the continuation.
    pub is_greedy: bool,
    /// Number of continuation tokens.
    pub tokens: usize,
}

/// Token ids of one request: the context and the continuation to score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPair {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

/// Tokenizes requests as lm-eval's `HFLM` does.
#[derive(Debug, Clone)]
pub struct PairEncoder<'a> {
    tokenizer: &'a Tokenizer,
    /// Whether the tokenizer's post-processor runs (adds BOS for Llama-style tokenizers).
    /// lm-eval 0.4.13 leaves `add_bos_token` unset, so the tokenizer's default (true) applies.
    pub add_special_tokens: bool,
    /// Context of a request with an empty context: the BOS id, else the EOS id.
    pub prefix_token: u32,
    prefix_text: String,
}

impl<'a> PairEncoder<'a> {
    /// lm-eval's defaults for `tokenizer`; `bos`/`eos` are the model's special token ids.
    pub fn new(tokenizer: &'a Tokenizer, bos: Option<u32>, eos: Option<u32>) -> Result<Self> {
        let prefix_token = bos.or(eos).ok_or_else(|| EvalError::InvalidOption {
            what: "loglikelihood tokenizer",
            reason: "the model has neither a BOS nor an EOS token to use as prefix".into(),
        })?;
        let prefix_text = tokenizer.decode(&[prefix_token], false).unwrap_or_default();
        Ok(Self {
            tokenizer,
            add_special_tokens: true,
            prefix_token,
            prefix_text,
        })
    }

    pub fn with_add_special_tokens(mut self, yes: bool) -> Self {
        self.add_special_tokens = yes;
        self
    }

    /// `tok_encode`: special tokens are not added to text that already starts with the
    /// prefix token's text.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let has_prefix = !self.prefix_text.is_empty() && text.starts_with(&self.prefix_text);
        let special = self.add_special_tokens && !has_prefix;
        self.encode_with(text, special)
    }

    fn encode_with(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, special)
            .map_err(|e| EvalError::Tokenizer {
                text: text.chars().take(60).collect(),
                reason: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// `_encode_pair`; an empty context becomes the prefix token (or the continuation's first
    /// token when that is the prefix token), the continuation then encoded without special
    /// tokens, as `HFLM.loglikelihood` does.
    pub fn encode_pair(&self, context: &str, continuation: &str) -> Result<TokenPair> {
        if context.is_empty() {
            let mut cont = self.encode_with(continuation, false)?;
            if cont.first() == Some(&self.prefix_token) {
                cont.remove(0);
            }
            return Ok(TokenPair {
                context: vec![self.prefix_token],
                continuation: cont,
            });
        }
        let trimmed = context.trim_end();
        let (context, continuation) = if trimmed.len() < context.len() {
            (
                trimmed,
                format!("{}{continuation}", &context[trimmed.len()..]),
            )
        } else {
            (context, continuation.to_owned())
        };
        let whole = self.encode(&format!("{context}{continuation}"))?;
        let context_ids = self.encode(context)?;
        let continuation = whole.get(context_ids.len()..).unwrap_or_default().to_vec();
        Ok(TokenPair {
            context: context_ids,
            continuation,
        })
    }
}

/// Scores token pairs in batches of `batch_size` rows (right-padded, one forward pass per
/// batch; only scored positions are projected to the vocabulary). Sequences longer than the
/// model's context keep their last `max_position_embeddings + 1` tokens, as lm-eval does.
pub fn score_pairs(
    model: &CausalLm,
    pairs: &[TokenPair],
    batch_size: usize,
) -> Result<Vec<Loglik>> {
    score_pairs_with(model, pairs, batch_size, &mut |_| {})
}

/// [`score_pairs`], calling `on_batch(rows)` after each forward pass (for progress bars).
pub fn score_pairs_with(
    model: &CausalLm,
    pairs: &[TokenPair],
    batch_size: usize,
    on_batch: &mut dyn FnMut(usize),
) -> Result<Vec<Loglik>> {
    let max_len = model.config.max_position_embeddings.max(1);
    let rows = pairs
        .iter()
        .map(|p| model_input(p, max_len))
        .collect::<Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(batch_size.max(1)) {
        out.extend(score_rows(model, chunk)?.into_iter().map(|s| Loglik {
            logprob: s.logprob,
            is_greedy: s.greedy,
            tokens: s.tokens,
        }));
        on_batch(chunk.len());
    }
    Ok(out)
}

/// The model input of one pair: lm-eval's `(context + continuation)[-(max_len + 1):][:-1]`,
/// with the continuation's tokens as targets of its last positions.
fn model_input(pair: &TokenPair, max_len: usize) -> Result<ScoreRow> {
    let n = pair.continuation.len();
    if n == 0 {
        return Err(EvalError::InvalidOption {
            what: "loglikelihood request",
            reason: "the continuation encodes to no token".into(),
        });
    }
    if pair.context.is_empty() {
        return Err(EvalError::InvalidOption {
            what: "loglikelihood request",
            reason: "the context has no token (give a prefix token)".into(),
        });
    }
    let mut ids: Vec<u32> = pair
        .context
        .iter()
        .chain(&pair.continuation)
        .copied()
        .collect();
    if ids.len() > max_len + 1 {
        ids.drain(..ids.len() - (max_len + 1));
    }
    ids.pop();
    if n > ids.len() {
        return Err(EvalError::InvalidOption {
            what: "loglikelihood request",
            reason: format!(
                "the continuation has {n} tokens, more than the context window {max_len}"
            ),
        });
    }
    let start = ids.len() - n;
    let targets = pair
        .continuation
        .iter()
        .enumerate()
        .map(|(k, &t)| (start + k, t))
        .collect();
    Ok(ScoreRow { ids, targets })
}

/// One row to score: its input ids and `(position, token)` targets, where `token` is the
/// token expected after the input at `position` (no shift is applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoreRow {
    pub ids: Vec<u32>,
    pub targets: Vec<(usize, u32)>,
}

/// Summed log-probability of a row's targets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowScore {
    pub logprob: f64,
    pub tokens: usize,
    /// Every target is the argmax at its position.
    pub greedy: bool,
}

/// Scores rows in one right-padded forward pass, projecting only the target positions.
pub fn score_rows(model: &CausalLm, rows: &[ScoreRow]) -> Result<Vec<RowScore>> {
    let b = rows.len();
    if b == 0 {
        return Ok(Vec::new());
    }
    let t = rows.iter().map(|r| r.ids.len()).max().unwrap_or(1);
    if t == 0 {
        return Err(EvalError::InvalidOption {
            what: "scored row",
            reason: "every row is empty".into(),
        });
    }
    let mut ids = Vec::with_capacity(b * t);
    let mut mask = Vec::with_capacity(b * t);
    let (mut picks, mut targets) = (Vec::new(), Vec::new());
    for (r, row) in rows.iter().enumerate() {
        let len = row.ids.len();
        ids.extend(
            row.ids
                .iter()
                .copied()
                .chain(std::iter::repeat_n(0, t - len)),
        );
        mask.extend(std::iter::repeat_n(1u8, len).chain(std::iter::repeat_n(0, t - len)));
        for &(pos, target) in &row.targets {
            if pos >= len {
                return Err(EvalError::InvalidOption {
                    what: "scored row",
                    reason: format!("row {r}: target position {pos} is past its {len} tokens"),
                });
            }
            picks.push((r * t + pos) as i64);
            targets.push(target as i64);
        }
    }
    let n = picks.len();
    if n == 0 {
        return Ok(rows
            .iter()
            .map(|_| RowScore {
                logprob: 0.0,
                tokens: 0,
                greedy: true,
            })
            .collect());
    }
    let input = DecoderInput::new(ids, b, t).with_attention_mask(mask);
    let hidden = model.forward_hidden(&input, None)?;
    let [_, _, d] = hidden.dims();
    let device = hidden.device();
    let index = Tensor::<1, Int>::from_data(TensorData::new(picks, [n]), &device);
    let picked = hidden.reshape([b * t, d]).select(0, index);
    let logits = model.logits(picked.reshape([1, n, d]));
    let v = logits.dims()[2];
    if let Some(&bad) = targets.iter().find(|&&x| x as usize >= v) {
        return Err(EvalError::InvalidOption {
            what: "scored row",
            reason: format!("token id {bad} is outside the model's vocabulary of {v}"),
        });
    }
    let logp = log_softmax(logits.reshape([n, v]), 1);
    let argmax: Vec<i64> = logp
        .clone()
        .argmax(1)
        .reshape([n])
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .map_err(|e| EvalError::Backend(format!("{e:?}")))?;
    let tgt = Tensor::<2, Int>::from_data(TensorData::new(targets.clone(), [n, 1]), &device);
    let lp = to_vec(logp.gather(1, tgt).reshape([n]).into_data())?;
    let mut out = Vec::with_capacity(b);
    let mut k = 0;
    for row in rows {
        let m = row.targets.len();
        out.push(RowScore {
            logprob: lp[k..k + m].iter().map(|&x| x as f64).sum(),
            tokens: m,
            greedy: argmax[k..k + m]
                .iter()
                .zip(&targets[k..k + m])
                .all(|(a, t)| a == t),
        });
        k += m;
    }
    Ok(out)
}

pub(crate) fn to_vec(data: TensorData) -> Result<Vec<f32>> {
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| EvalError::Backend(format!("{e:?}")))
}
