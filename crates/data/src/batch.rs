//! Batches: plain row-major arrays the trainer turns into tensors.

use std::str::FromStr;

use rand::SeedableRng;
use rand::seq::SliceRandom;

use crate::encode::{Example, IGNORE_INDEX};
use crate::error::{DataError, Result};
use crate::pack::PackedRow;

/// Side on which short examples are padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    /// Pad after the tokens (training). Default.
    #[default]
    Right,
    /// Pad before the tokens (batched generation).
    Left,
}

impl FromStr for Padding {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "right" => Ok(Padding::Right),
            "left" => Ok(Padding::Left),
            _ => Err(DataError::UnknownName {
                what: "padding side",
                value: s.into(),
                expected: "right, left",
            }),
        }
    }
}

/// A training batch, every array row-major `[batch_size, seq_len]`.
///
/// # Shapes
/// - `input_ids`, `attention_mask`, `labels`, `position_ids`: `batch_size * seq_len`, row `b`
///   at `b * seq_len .. (b + 1) * seq_len`.
/// - `segment_ids` (packed batches only): same shape; attention is allowed from token `i` to
///   token `j <= i` only when `segment_ids[i] == segment_ids[j] != 0`.
///
/// `labels` are not shifted: the loss compares logits at `t` with `labels[t + 1]`, ignoring
/// [`IGNORE_INDEX`], as transformers' causal-LM loss does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub batch_size: usize,
    pub seq_len: usize,
    pub input_ids: Vec<i64>,
    /// 1 on tokens, 0 on padding.
    pub attention_mask: Vec<i64>,
    pub labels: Vec<i64>,
    /// Positions for rotary embeddings: 0.. within each example (left padding: start after it).
    pub position_ids: Vec<i64>,
    pub segment_ids: Option<Vec<i64>>,
}

impl Batch {
    /// `[batch_size, seq_len]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.batch_size, self.seq_len]
    }

    /// Number of tokens that count in the loss (labels shifted by one as the loss does).
    pub fn trained_tokens(&self) -> usize {
        self.labels
            .chunks(self.seq_len.max(1))
            .map(|row| row.iter().skip(1).filter(|&&l| l != IGNORE_INDEX).count())
            .sum()
    }

    /// Pads examples to the longest one (rounded up to `pad_to_multiple_of`).
    pub fn from_examples(
        examples: &[Example],
        pad_id: u32,
        padding: Padding,
        pad_to_multiple_of: Option<usize>,
    ) -> Result<Self> {
        if examples.is_empty() {
            return Err(DataError::InvalidOption {
                option: "batch",
                message: "no examples to batch".into(),
            });
        }
        let longest = examples.iter().map(Example::len).max().unwrap_or(0);
        let seq_len = match pad_to_multiple_of {
            Some(m) if m > 1 => longest.div_ceil(m) * m,
            _ => longest,
        };
        let n = examples.len() * seq_len;
        let mut b = Batch {
            batch_size: examples.len(),
            seq_len,
            input_ids: Vec::with_capacity(n),
            attention_mask: Vec::with_capacity(n),
            labels: Vec::with_capacity(n),
            position_ids: Vec::with_capacity(n),
            segment_ids: None,
        };
        for ex in examples {
            let pad = seq_len - ex.len();
            let pad_row = |b: &mut Batch| {
                b.input_ids
                    .extend(std::iter::repeat_n(i64::from(pad_id), pad));
                b.attention_mask.extend(std::iter::repeat_n(0, pad));
                b.labels.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
                b.position_ids.extend(std::iter::repeat_n(0, pad));
            };
            if padding == Padding::Left {
                pad_row(&mut b);
            }
            b.input_ids
                .extend(ex.input_ids.iter().map(|&i| i64::from(i)));
            b.attention_mask.extend(std::iter::repeat_n(1, ex.len()));
            b.labels.extend_from_slice(&ex.labels);
            b.position_ids.extend(0..ex.len() as i64);
            if padding == Padding::Right {
                pad_row(&mut b);
            }
        }
        Ok(b)
    }

    /// Stacks packed rows (all of one `seq_len`); `attention_mask` is 1 where `segment_ids != 0`.
    pub fn from_packed(rows: &[PackedRow]) -> Result<Self> {
        let seq_len = rows.first().map_or(0, |r| r.input_ids.len());
        if rows.is_empty() || rows.iter().any(|r| r.input_ids.len() != seq_len) {
            return Err(DataError::InvalidOption {
                option: "batch",
                message: "packed rows must be non-empty and of one length".into(),
            });
        }
        let all = |f: &dyn Fn(&PackedRow) -> Vec<i64>| rows.iter().flat_map(f).collect::<Vec<_>>();
        Ok(Batch {
            batch_size: rows.len(),
            seq_len,
            input_ids: all(&|r| r.input_ids.iter().map(|&x| i64::from(x)).collect()),
            attention_mask: all(&|r| r.segment_ids.iter().map(|&s| i64::from(s != 0)).collect()),
            labels: all(&|r| r.labels.clone()),
            position_ids: all(&|r| r.position_ids.iter().map(|&x| i64::from(x)).collect()),
            segment_ids: Some(all(&|r| {
                r.segment_ids.iter().map(|&x| i64::from(x)).collect()
            })),
        })
    }
}

/// Groups indices into batches of similar lengths (less padding), like transformers'
/// `LengthGroupedSampler`: shuffle with `seed`, cut into mega-batches of `50 * batch_size`, sort
/// each by length (longest first), split into batches, then shuffle the batch order.
pub fn length_grouped_batches(lengths: &[usize], batch_size: usize, seed: u64) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut idx: Vec<usize> = (0..lengths.len()).collect();
    idx.shuffle(&mut rng);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for mega in idx.chunks_mut(batch_size * 50) {
        mega.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        batches.extend(mega.chunks(batch_size).map(<[usize]>::to_vec));
    }
    batches.shuffle(&mut rng);
    batches
}
