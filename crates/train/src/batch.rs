//! Training batches and where they come from.
//!
//! A [`BatchSource`] hands out micro-batches by `(epoch, index)`, deterministically, so the
//! data position of a checkpoint is a single counter and resuming replays nothing.
use crate::error::{Result, TrainError};
use kiln_models::{DecoderInput, IGNORE_INDEX};
use rand::SeedableRng;
use rand::seq::SliceRandom;

// The data crate labels with its own `IGNORE_INDEX` (it knows no model) and the loss skips
// kiln-models' (it knows no data crate); the only crate below both is kiln-cpu, the CPU runtime,
// where a label convention does not belong. This crate sees both: they cannot drift apart.
const _: () = assert!(kiln_data::IGNORE_INDEX == IGNORE_INDEX);

/// One micro-batch as the model takes it: the decoder input and the labels (`-100` = not
/// counted). [`kiln_data::Batch`] is the collator's form (i64 arrays, as transformers' data
/// collators return them, no model type); [`Batch::from_data`] checks and converts it.
///
/// # Shapes
/// - `input.ids`, `labels`: `[b * t]` row-major
#[derive(Debug, Clone)]
pub struct Batch {
    pub input: DecoderInput,
    pub labels: Vec<i64>,
}

impl Batch {
    /// Pairs an input with its labels, checking that the lengths agree.
    pub fn new(input: DecoderInput, labels: Vec<i64>) -> Result<Self> {
        let n = input.batch * input.seq_len;
        if labels.len() != n || input.ids.len() != n {
            return Err(TrainError::Batch {
                index: 0,
                reason: format!(
                    "{} ids and {} labels for batch {} x seq_len {}",
                    input.ids.len(),
                    labels.len(),
                    input.batch,
                    input.seq_len
                ),
            });
        }
        Ok(Self { input, labels })
    }

    /// Converts a batch of the data crate (padded or packed): ids, attention mask, position ids,
    /// segment ids and labels. Errors name the first id that is negative or above `u32`.
    pub fn from_data(batch: &kiln_data::Batch) -> Result<Self> {
        let bad = |what: &str, i: usize, v: i64| TrainError::Batch {
            index: 0,
            reason: format!("{what}[{i}] = {v} is out of range"),
        };
        let ids = batch
            .input_ids
            .iter()
            .enumerate()
            .map(|(i, &v)| u32::try_from(v).map_err(|_| bad("input_ids", i, v)))
            .collect::<Result<Vec<u32>>>()?;
        let mask = batch
            .attention_mask
            .iter()
            .map(|&m| u8::from(m != 0))
            .collect();
        let mut input = DecoderInput::new(ids, batch.batch_size, batch.seq_len)
            .with_attention_mask(mask)
            .with_position_ids(batch.position_ids.clone());
        if let Some(seg) = &batch.segment_ids {
            let seg = seg
                .iter()
                .enumerate()
                .map(|(i, &v)| u32::try_from(v).map_err(|_| bad("segment_ids", i, v)))
                .collect::<Result<Vec<u32>>>()?;
            input = input.with_segment_ids(seg);
        }
        Self::new(input, batch.labels.clone())
    }

    /// Causal LM batch where the labels are the ids themselves (every token counts).
    pub fn language_modelling(ids: Vec<u32>, batch: usize, seq_len: usize) -> Result<Self> {
        let labels = ids.iter().map(|&i| i as i64).collect();
        Self::new(DecoderInput::new(ids, batch, seq_len), labels)
    }

    /// Number of labels the shifted loss counts: positions `1..t` of each row not equal to
    /// [`IGNORE_INDEX`] (the same count as `kiln_models::causal_lm_loss_sum`).
    pub fn label_tokens(&self) -> usize {
        let t = self.input.seq_len;
        self.labels
            .chunks(t.max(1))
            .map(|row| row.iter().skip(1).filter(|&&l| l != IGNORE_INDEX).count())
            .sum()
    }

    /// Rows in the batch.
    pub fn rows(&self) -> usize {
        self.input.batch
    }
}

/// Micro-batches by epoch and index.
pub trait BatchSource {
    /// Micro-batches in one epoch.
    fn len(&self) -> usize;

    /// Whether there is no batch at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Micro-batch `index` (`< len()`) of epoch `epoch`; the same arguments give the same batch.
    fn get(&self, epoch: usize, index: usize) -> Result<Batch>;

    /// The micro-batch at a global position (`epoch = position / len`).
    fn at(&self, position: u64) -> Result<Batch> {
        let len = self.len() as u64;
        if len == 0 {
            return Err(TrainError::Batch {
                index: 0,
                reason: "the data source has no batches".into(),
            });
        }
        self.get((position / len) as usize, (position % len) as usize)
    }
}

impl BatchSource for Vec<Batch> {
    fn len(&self) -> usize {
        <[Batch]>::len(self)
    }

    fn get(&self, _epoch: usize, index: usize) -> Result<Batch> {
        <[Batch]>::get(self, index)
            .cloned()
            .ok_or_else(|| TrainError::Batch {
                index,
                reason: format!("only {} batches", <[Batch]>::len(self)),
            })
    }
}

/// Another source in a new random order every epoch (seeded).
#[derive(Debug, Clone)]
pub struct Shuffled<S> {
    pub inner: S,
    pub seed: u64,
}

impl<S: BatchSource> Shuffled<S> {
    pub fn new(inner: S, seed: u64) -> Self {
        Self { inner, seed }
    }

    /// The order of epoch `epoch`.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.inner.len()).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(mix(self.seed, epoch as u64));
        order.shuffle(&mut rng);
        order
    }
}

impl<S: BatchSource> BatchSource for Shuffled<S> {
    fn len(&self) -> usize {
        self.inner.len()
    }

    fn get(&self, epoch: usize, index: usize) -> Result<Batch> {
        let order = self.order(epoch);
        let i = *order.get(index).ok_or_else(|| TrainError::Batch {
            index,
            reason: format!("only {} batches", order.len()),
        })?;
        self.inner.get(epoch, i)
    }
}

/// SplitMix64 of `seed + k`: independent seeds for epochs and micro-batches.
pub(crate) fn mix(seed: u64, k: u64) -> u64 {
    let mut z = seed
        .wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn label_tokens_skip_first_position_and_ignored() {
        let input = DecoderInput::new(vec![1, 2, 3, 4, 5, 6], 2, 3);
        let b = Batch::new(input, vec![1, 2, -100, -100, 5, 6]).unwrap();
        assert_eq!(b.label_tokens(), 1 + 2);
    }

    #[test]
    fn mismatched_labels_are_rejected() {
        let input = DecoderInput::new(vec![1, 2, 3], 1, 3);
        let err = Batch::new(input, vec![1, 2]).unwrap_err().to_string();
        assert!(err.contains("2 labels"), "{err}");
    }

    #[test]
    fn shuffled_is_a_deterministic_permutation_per_epoch() {
        let batches: Vec<Batch> = (0..8)
            .map(|i| Batch::language_modelling(vec![i, i], 1, 2).unwrap())
            .collect();
        let s = Shuffled::new(batches, 7);
        let mut o = s.order(0);
        assert_eq!(o, s.order(0));
        assert_ne!(o, s.order(1));
        o.sort();
        assert_eq!(o, (0..8).collect::<Vec<_>>());
        assert_eq!(s.at(9).unwrap().input.ids, s.get(1, 1).unwrap().input.ids);
        assert!(Vec::<Batch>::new().at(0).is_err());
    }
}
