//! The streaming path: read → render → tokenize → label → pack, with flat memory.
//!
//! Records are taken from the [`Reader`] in chunks (JSON Lines lines unparsed), parsed and
//! encoded in parallel (rayon), then counted and packed in input order by a [`GreedyPacker`].
//! The three stages overlap: while chunk `k` is encoded, chunk `k - 1` is counted and packed and
//! chunk `k + 1` is read, so memory holds three chunks and one row whatever the dataset's size,
//! and the output does not depend on the number of threads.

use std::collections::VecDeque;

use rayon::prelude::*;

use crate::encode::{EncodeStats, Encoded, Encoder, Example};
use crate::error::{DataError, Result};
use crate::pack::{GreedyPacker, PackedRow};
use crate::reader::{BadRecords, ItemParser, ReadReport, Reader, empty_reason};
use crate::source::RawItem;

/// Records per parallel chunk.
pub(crate) const CHUNK: usize = 2048;

/// A chunk as read.
type RawChunk = Vec<Result<RawItem>>;
/// A chunk encoded: the outer error is a reading or parsing failure, the inner one an encoding
/// failure.
type EncodedChunk = Vec<Result<Result<Encoded>>>;

/// Iterator of packed rows over a reader. Errors carry the record's location and come after
/// the rows completed before the record (then the iterator ends); under [`BadRecords::Skip`]
/// records that fail to read or encode are skipped and counted in [`PackedRows::report`]. Ends
/// with [`DataError::EmptyDataset`] when nothing was kept.
pub struct PackedRows<'a> {
    encoder: &'a Encoder<'a>,
    tail: Tail,
    /// The chunk read ahead.
    next: Option<RawChunk>,
    /// The chunk encoded but not counted and packed yet.
    pending: Option<EncodedChunk>,
    /// An error, given once the rows completed before it are out.
    error: Option<DataError>,
    failed: bool,
}

/// The sequential end of the path: reading, counting, packing.
struct Tail {
    reader: Reader,
    packer: Option<GreedyPacker>,
    ready: VecDeque<PackedRow>,
    policy: BadRecords,
    stats: EncodeStats,
    skipped: ReadReport,
}

impl<'a> PackedRows<'a> {
    pub fn new(
        reader: Reader,
        encoder: &'a Encoder<'a>,
        seq_len: usize,
        pad_id: u32,
        policy: BadRecords,
    ) -> Result<Self> {
        let reader = reader.policy(policy);
        Ok(Self {
            encoder,
            tail: Tail {
                reader,
                packer: Some(GreedyPacker::new(seq_len, pad_id)?),
                ready: VecDeque::new(),
                policy,
                stats: EncodeStats::default(),
                skipped: ReadReport::default(),
            },
            next: None,
            pending: None,
            error: None,
            failed: false,
        })
    }

    /// Encoding counts so far (kept, truncated, dropped, tokens).
    pub fn stats(&self) -> &EncodeStats {
        &self.tail.stats
    }

    /// Records skipped while reading and while encoding.
    pub fn report(&self) -> ReadReport {
        self.tail.report()
    }

    /// Encodes the next chunk while the previous one is counted and packed and the one after
    /// is read; at the end, packs what is left and closes the last row.
    fn fill(&mut self) -> Result<()> {
        if self.tail.packer.is_none() {
            return Ok(());
        }
        let chunk = match self.next.take() {
            Some(chunk) => chunk,
            None => self.tail.read_chunk(),
        };
        let pending = self.pending.take();
        if chunk.is_empty() {
            if let Some(done) = pending {
                self.tail.pack(done)?;
            }
            return self.tail.finish();
        }
        let (parser, encoder, tail) = (self.tail.reader.parser(), self.encoder, &mut self.tail);
        let (encoded, (packed, next)) = rayon::join(
            || encode_chunk(chunk, &parser, encoder),
            || {
                let packed = pending.map_or(Ok(()), |done| tail.pack(done));
                (packed, tail.read_chunk())
            },
        );
        self.pending = Some(encoded);
        self.next = Some(next);
        packed
    }
}

/// Parses and encodes a chunk in parallel, keeping its order.
fn encode_chunk(chunk: RawChunk, parser: &ItemParser, encoder: &Encoder<'_>) -> EncodedChunk {
    chunk
        .into_par_iter()
        .map(|item| {
            let (at, record) = item.and_then(|item| parser.parse(item))?;
            Ok(encoder.encode(&record).map_err(|e| DataError::AtRecord {
                at,
                source: Box::new(e),
            }))
        })
        .collect()
}

impl Tail {
    fn read_chunk(&mut self) -> RawChunk {
        let mut chunk = Vec::with_capacity(CHUNK);
        while chunk.len() < CHUNK {
            match self.reader.next_item() {
                Some(item) => chunk.push(item),
                None => break,
            }
        }
        chunk
    }

    fn report(&self) -> ReadReport {
        let r = self.reader.report();
        let mut reasons = r.reasons.clone();
        reasons.extend(self.skipped.reasons.iter().cloned());
        reasons.truncate(ReadReport::MAX_REASONS);
        ReadReport {
            read: r.read,
            skipped: r.skipped + self.skipped.skipped,
            reasons,
        }
    }

    /// Counts an encoded chunk in order and packs its examples.
    fn pack(&mut self, chunk: EncodedChunk) -> Result<()> {
        let Some(packer) = self.packer.as_mut() else {
            return Ok(());
        };
        for e in chunk {
            let Some(e) = self.reader.tally(e)? else {
                continue;
            };
            let example: Option<Example> = match e {
                Ok(enc) => self.stats.add(enc),
                Err(e) if self.policy == BadRecords::Skip => {
                    self.skipped.skip(&e);
                    None
                }
                Err(e) => return Err(e),
            };
            if let Some(ex) = example
                && let Some(row) = packer.push(&ex)?
            {
                self.ready.push_back(row);
            }
        }
        Ok(())
    }

    /// Closes the last row; an error when nothing was kept.
    fn finish(&mut self) -> Result<()> {
        if let Some(last) = self.packer.take().and_then(GreedyPacker::finish) {
            self.ready.push_back(last);
        }
        if self.stats.kept == 0 {
            let mut reason = empty_reason(&self.report(), self.reader.paths());
            if self.stats.dropped_too_long + self.stats.dropped_nothing_to_train > 0 {
                reason = format!("{reason}; encoding dropped {:?}", self.stats);
            }
            return Err(DataError::EmptyDataset { reason });
        }
        Ok(())
    }
}

impl Iterator for PackedRows<'_> {
    type Item = Result<PackedRow>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(row) = self.tail.ready.pop_front() {
                return Some(Ok(row));
            }
            if let Some(e) = self.error.take() {
                self.failed = true;
                return Some(Err(e));
            }
            if self.failed || self.tail.packer.is_none() {
                return None;
            }
            if let Err(e) = self.fill() {
                self.error = Some(e);
            }
        }
    }
}
