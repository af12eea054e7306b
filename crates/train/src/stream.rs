//! Training batches read from the files while training runs (`data.streaming = true`), so
//! memory stays flat whatever the dataset's size.
//!
//! [`prepare_data`](crate::prepare_data) reads, encodes and batches every record up front: a
//! 10 GB JSON Lines file needs more than 10 GB. Here the files go through kiln-data's streaming
//! path ([`PackedRows`]: read, render, tokenize, label and pack in chunks) every epoch, and a
//! seeded shuffle buffer (as `datasets`' `IterableDataset.shuffle(buffer_size)`) orders the
//! packed rows. A first pass counts the rows, so an epoch has a known number of micro-batches
//! (the schedule and `epochs` need it). The micro-batch at a global position is reproducible:
//! the order depends only on the seed and the epoch, so a resumed run reads the stream again up
//! to its position and continues with exactly the batches the interrupted run would have seen.
use crate::batch::{Batch, BatchSource, mix};
use crate::error::{Result, TrainError};
use kiln_data::{
    BadRecords, Batch as DataBatch, EncodeStats, Encoder, PackedRow, PackedRows, Reader,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::cell::RefCell;
use std::collections::VecDeque;

/// Micro-batches kept after they were read: the trainer reads a step's micro-batches twice
/// (first to count their label tokens, then to train), and gradient accumulation above this
/// re-reads the stream.
const KEEP: usize = 64;

/// What a streamed run reads, and how.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// File paths or glob patterns (any format kiln-data reads).
    pub files: Vec<String>,
    /// Tokens per packed row.
    pub seq_len: usize,
    /// Rows per micro-batch.
    pub micro_batch_size: usize,
    /// Rows the shuffle buffer holds (1 keeps the files' order).
    pub shuffle_buffer: usize,
    pub seed: u64,
    pub pad_id: u32,
}

/// A [`BatchSource`] that streams packed rows from files (see the module docs).
pub struct StreamedBatches<'a> {
    encoder: &'a Encoder<'a>,
    options: StreamOptions,
    batches: usize,
    stats: EncodeStats,
    cursor: RefCell<Option<Cursor<'a>>>,
}

/// Where the stream is: the epoch, the next micro-batch it gives, and the last ones given.
struct Cursor<'a> {
    epoch: usize,
    next: usize,
    rows: Shuffle<PackedRows<'a>>,
    kept: VecDeque<(usize, Batch)>,
}

impl<'a> StreamedBatches<'a> {
    /// Counts the rows of the files (one pass through the streaming path), ready to train.
    ///
    /// # Errors
    /// A file that cannot be read or a record that cannot be encoded (named by file and line,
    /// as kiln-data names them), or no row at all.
    pub fn new(encoder: &'a Encoder<'a>, options: StreamOptions) -> Result<Self> {
        if options.micro_batch_size == 0 || options.shuffle_buffer == 0 {
            return Err(TrainError::option(
                "data.shuffle_buffer",
                "the shuffle buffer and the micro-batch size must be at least 1",
            ));
        }
        let mut rows = open(encoder, &options)?;
        let mut count = 0usize;
        for row in rows.by_ref() {
            row?;
            count += 1;
        }
        let stats = rows.stats().clone();
        Ok(Self {
            encoder,
            batches: count.div_ceil(options.micro_batch_size),
            options,
            stats,
            cursor: RefCell::new(None),
        })
    }

    /// Encoding counts of one epoch (kept, truncated, dropped, tokens).
    pub fn stats(&self) -> &EncodeStats {
        &self.stats
    }

    /// The next micro-batch of the cursor's epoch.
    fn advance(&self, cursor: &mut Cursor<'a>) -> Result<Batch> {
        let mut rows: Vec<PackedRow> = Vec::with_capacity(self.options.micro_batch_size);
        while rows.len() < self.options.micro_batch_size {
            match cursor.rows.next() {
                Some(row) => rows.push(row?),
                None => break,
            }
        }
        if rows.is_empty() {
            return Err(TrainError::Batch {
                index: cursor.next,
                reason: format!(
                    "the files gave fewer rows in epoch {} than when counted ({} micro-batches): \
                     did they change during training?",
                    cursor.epoch, self.batches
                ),
            });
        }
        let batch = Batch::from_data(&DataBatch::from_packed(&rows)?)?;
        cursor.kept.push_back((cursor.next, batch.clone()));
        if cursor.kept.len() > KEEP {
            cursor.kept.pop_front();
        }
        cursor.next += 1;
        Ok(batch)
    }

    /// A cursor at the start of `epoch`.
    fn start(&self, epoch: usize) -> Result<Cursor<'a>> {
        let rows = open(self.encoder, &self.options)?;
        let seed = mix(self.options.seed, epoch as u64);
        Ok(Cursor {
            epoch,
            next: 0,
            rows: Shuffle::new(rows, self.options.shuffle_buffer, seed),
            kept: VecDeque::new(),
        })
    }
}

impl BatchSource for StreamedBatches<'_> {
    fn len(&self) -> usize {
        self.batches
    }

    fn get(&self, epoch: usize, index: usize) -> Result<Batch> {
        if index >= self.batches {
            return Err(TrainError::Batch {
                index,
                reason: format!("only {} batches", self.batches),
            });
        }
        let mut slot = self.cursor.borrow_mut();
        if let Some(c) = slot.as_ref()
            && c.epoch == epoch
            && let Some((_, b)) = c.kept.iter().find(|(i, _)| *i == index)
        {
            return Ok(b.clone());
        }
        // Behind the cursor (or another epoch): read the epoch again from its start.
        let restart = slot
            .as_ref()
            .is_none_or(|c| c.epoch != epoch || c.next > index);
        if restart {
            *slot = Some(self.start(epoch)?);
        }
        let cursor = slot.as_mut().expect("a cursor was just set");
        loop {
            let at = cursor.next;
            let batch = self.advance(cursor)?;
            if at == index {
                return Ok(batch);
            }
        }
    }
}

fn open<'a>(encoder: &'a Encoder<'a>, options: &StreamOptions) -> Result<PackedRows<'a>> {
    let reader = Reader::open(&options.files)?;
    Ok(PackedRows::new(
        reader,
        encoder,
        options.seq_len,
        options.pad_id,
        BadRecords::Error,
    )?)
}

/// A seeded shuffle buffer over an iterator: holds up to `capacity` items and gives a random
/// one of them each time, refilling from the source.
struct Shuffle<I: Iterator> {
    source: I,
    buffer: Vec<I::Item>,
    capacity: usize,
    rng: StdRng,
}

impl<I: Iterator> Shuffle<I> {
    fn new(source: I, capacity: usize, seed: u64) -> Self {
        Self {
            source,
            buffer: Vec::with_capacity(capacity.min(1 << 16)),
            capacity,
            rng: StdRng::seed_from_u64(seed),
        }
    }
}

impl<I: Iterator> Iterator for Shuffle<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        while self.buffer.len() < self.capacity {
            match self.source.next() {
                Some(item) => self.buffer.push(item),
                None => break,
            }
        }
        if self.buffer.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..self.buffer.len());
        Some(self.buffer.swap_remove(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_buffer_gives_every_item_once_in_a_seeded_order() {
        let order = |seed| Shuffle::new(0..100, 16, seed).collect::<Vec<_>>();
        let (a, b) = (order(1), order(2));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, order(1), "same seed, same order");
        assert_ne!(a, b, "another seed, another order");
        assert_ne!(a, (0..100).collect::<Vec<_>>(), "shuffled");
        // A buffer of 16 moves an item at most 15 places earlier than in the source.
        for (pos, &item) in a.iter().enumerate() {
            assert!(item <= pos + 15, "item {item} at {pos}");
        }
        // A buffer of one keeps the order.
        assert_eq!(
            Shuffle::new(0..10, 1, 3).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
    }
}
