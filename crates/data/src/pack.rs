//! Packing: several examples per row of a fixed length, attention kept within each example.
//!
//! A [`PackedRow`] carries `position_ids` that restart at 0 for every example and
//! `segment_ids` numbering the examples of the row from 1 (0 = padding). The model must let a
//! token attend only to earlier tokens with the same segment id; with that mask and those
//! positions a packed row computes exactly what the examples compute one by one.

use std::collections::BTreeMap;
use std::str::FromStr;

use crate::encode::{Example, IGNORE_INDEX};
use crate::error::{DataError, Result};

/// How examples are assigned to rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PackStrategy {
    /// In order: start a new row when the next example does not fit (streams).
    #[default]
    Greedy,
    /// Longest first, each into the fullest row it fits (fewer rows, needs all examples).
    BestFit,
}

impl FromStr for PackStrategy {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "greedy" => Ok(PackStrategy::Greedy),
            "best_fit" | "bestfit" => Ok(PackStrategy::BestFit),
            _ => Err(DataError::UnknownName {
                what: "packing strategy",
                value: s.into(),
                expected: "greedy, best_fit",
            }),
        }
    }
}

/// One row of `seq_len` tokens holding whole examples, right-padded.
///
/// # Shapes
/// Every field has length `seq_len`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedRow {
    pub input_ids: Vec<u32>,
    /// Target ids or [`IGNORE_INDEX`]; padding is ignored.
    pub labels: Vec<i64>,
    /// 0, 1, 2... restarting at each example; 0 on padding.
    pub position_ids: Vec<u32>,
    /// 1, 2, ... per example in the row; 0 on padding.
    pub segment_ids: Vec<u32>,
}

impl PackedRow {
    fn new(seq_len: usize) -> Self {
        Self {
            input_ids: Vec::with_capacity(seq_len),
            labels: Vec::with_capacity(seq_len),
            position_ids: Vec::with_capacity(seq_len),
            segment_ids: Vec::with_capacity(seq_len),
        }
    }

    /// Tokens used by examples (not padding).
    pub fn used(&self) -> usize {
        self.segment_ids.iter().filter(|&&s| s != 0).count()
    }

    /// Number of examples in the row.
    pub fn examples(&self) -> u32 {
        self.segment_ids.iter().copied().max().unwrap_or(0)
    }

    fn push(&mut self, ex: &Example) {
        let seg = self.segment_ids.last().copied().unwrap_or(0) + 1;
        self.input_ids.extend_from_slice(&ex.input_ids);
        self.labels.extend_from_slice(&ex.labels);
        self.position_ids.extend(0..ex.len() as u32);
        self.segment_ids.extend(std::iter::repeat_n(seg, ex.len()));
    }

    fn pad(mut self, seq_len: usize, pad_id: u32) -> Self {
        let n = seq_len - self.input_ids.len();
        self.input_ids.extend(std::iter::repeat_n(pad_id, n));
        self.labels.extend(std::iter::repeat_n(IGNORE_INDEX, n));
        self.position_ids.extend(std::iter::repeat_n(0, n));
        self.segment_ids.extend(std::iter::repeat_n(0, n));
        self
    }
}

fn check(ex: &Example, seq_len: usize) -> Result<()> {
    if ex.len() > seq_len {
        return Err(DataError::InvalidOption {
            option: "seq_len",
            message: format!(
                "an example of {} tokens does not fit a packed row of {seq_len}; truncate with max_len <= seq_len",
                ex.len()
            ),
        });
    }
    Ok(())
}

/// Streaming greedy packer: push examples, collect full rows.
#[derive(Debug)]
pub struct GreedyPacker {
    seq_len: usize,
    pad_id: u32,
    row: PackedRow,
}

impl GreedyPacker {
    pub fn new(seq_len: usize, pad_id: u32) -> Result<Self> {
        if seq_len == 0 {
            return Err(DataError::InvalidOption {
                option: "seq_len",
                message: "must be at least 1".into(),
            });
        }
        Ok(Self {
            seq_len,
            pad_id,
            row: PackedRow::new(seq_len),
        })
    }

    /// Adds an example; returns the previous row when this one did not fit in it.
    pub fn push(&mut self, ex: &Example) -> Result<Option<PackedRow>> {
        check(ex, self.seq_len)?;
        let mut done = None;
        if self.row.input_ids.len() + ex.len() > self.seq_len {
            let full = std::mem::replace(&mut self.row, PackedRow::new(self.seq_len));
            done = Some(full.pad(self.seq_len, self.pad_id));
        }
        self.row.push(ex);
        Ok(done)
    }

    /// The last, partly filled row.
    pub fn finish(self) -> Option<PackedRow> {
        (!self.row.input_ids.is_empty()).then(|| self.row.pad(self.seq_len, self.pad_id))
    }
}

/// Packs all examples into rows of `seq_len` tokens.
pub fn pack(
    examples: &[Example],
    seq_len: usize,
    pad_id: u32,
    strategy: PackStrategy,
) -> Result<Vec<PackedRow>> {
    match strategy {
        PackStrategy::Greedy => {
            let mut packer = GreedyPacker::new(seq_len, pad_id)?;
            let mut rows = Vec::new();
            for ex in examples {
                rows.extend(packer.push(ex)?);
            }
            rows.extend(packer.finish());
            Ok(rows)
        }
        PackStrategy::BestFit => best_fit(examples, seq_len, pad_id),
    }
}

fn best_fit(examples: &[Example], seq_len: usize, pad_id: u32) -> Result<Vec<PackedRow>> {
    GreedyPacker::new(seq_len, pad_id)?; // validates seq_len
    let mut order: Vec<usize> = (0..examples.len()).collect();
    // Longest first; ties keep input order (stable sort), so the result is deterministic.
    order.sort_by_key(|&i| std::cmp::Reverse(examples[i].len()));
    let mut bins: Vec<Vec<usize>> = Vec::new();
    // remaining space -> bins with that much space (the smallest that fits is the best fit)
    let mut by_space: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in order {
        let ex = &examples[i];
        check(ex, seq_len)?;
        let found = by_space
            .range_mut(ex.len()..)
            .next()
            .and_then(|(&space, bins)| bins.pop().map(|b| (space, b)));
        let (space, bin) = match found {
            Some((space, b)) => {
                if by_space.get(&space).is_some_and(Vec::is_empty) {
                    by_space.remove(&space);
                }
                (space, b)
            }
            None => {
                bins.push(Vec::new());
                (seq_len, bins.len() - 1)
            }
        };
        bins[bin].push(i);
        by_space.entry(space - ex.len()).or_default().push(bin);
    }
    Ok(bins
        .into_iter()
        .map(|members| {
            let mut row = PackedRow::new(seq_len);
            for i in members {
                row.push(&examples[i]);
            }
            row.pad(seq_len, pad_id)
        })
        .collect())
}
