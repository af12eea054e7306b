//! The streaming path: read → render → tokenize → label → pack, with flat memory.
//!
//! Records are taken from the [`Reader`] in chunks (JSON Lines lines unparsed), parsed and
//! encoded in parallel (rayon), then counted and packed in input order by a [`GreedyPacker`],
//! so memory holds one chunk and one row at a time whatever the dataset's size, and the output
//! does not depend on the number of threads.

use std::collections::VecDeque;

use rayon::prelude::*;

use crate::encode::{EncodeStats, Encoder, Example};
use crate::error::{DataError, Result};
use crate::pack::{GreedyPacker, PackedRow};
use crate::reader::{BadRecords, ReadReport, Reader, empty_reason};

/// Records per parallel chunk.
pub const CHUNK: usize = 4096;

/// Iterator of packed rows over a reader. Errors carry the record's location; under
/// [`BadRecords::Skip`] records that fail to encode are skipped and counted in
/// [`PackedRows::report`]. Ends with [`DataError::EmptyDataset`] when nothing was kept.
pub struct PackedRows<'a> {
    reader: Reader,
    encoder: &'a Encoder<'a>,
    packer: Option<GreedyPacker>,
    ready: VecDeque<PackedRow>,
    policy: BadRecords,
    stats: EncodeStats,
    skipped: ReadReport,
    failed: bool,
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
            reader,
            encoder,
            packer: Some(GreedyPacker::new(seq_len, pad_id)?),
            ready: VecDeque::new(),
            policy,
            stats: EncodeStats::default(),
            skipped: ReadReport::default(),
            failed: false,
        })
    }

    /// Encoding counts so far (kept, truncated, dropped, tokens).
    pub fn stats(&self) -> &EncodeStats {
        &self.stats
    }

    /// Records skipped while reading and while encoding.
    pub fn report(&self) -> ReadReport {
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

    /// Reads a chunk, parses and encodes it in parallel, then counts and packs it in order.
    fn fill(&mut self) -> Result<()> {
        let mut chunk = Vec::with_capacity(CHUNK);
        while chunk.len() < CHUNK {
            match self.reader.next_item() {
                Some(item) => chunk.push(item),
                None => break,
            }
        }
        let Some(packer) = self.packer.as_mut() else {
            return Ok(());
        };
        if chunk.is_empty() {
            if let Some(last) = self.packer.take().and_then(GreedyPacker::finish) {
                self.ready.push_back(last);
            }
            if self.stats.kept == 0 {
                let mut reason = empty_reason(&self.report());
                if self.stats.dropped_too_long + self.stats.dropped_nothing_to_train > 0 {
                    reason = format!("{reason}; encoding dropped {:?}", self.stats);
                }
                return Err(DataError::EmptyDataset { reason });
            }
            return Ok(());
        }
        let (parser, encoder) = (self.reader.parser(), self.encoder);
        let encoded: Vec<_> = chunk
            .into_par_iter()
            .map(|item| {
                let (at, record) = item.and_then(|item| parser.parse(item))?;
                Ok(encoder.encode(&record).map_err(|e| DataError::AtRecord {
                    at,
                    source: Box::new(e),
                }))
            })
            .collect();
        for e in encoded {
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
}

impl Iterator for PackedRows<'_> {
    type Item = Result<PackedRow>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(row) = self.ready.pop_front() {
                return Some(Ok(row));
            }
            if self.failed || self.packer.is_none() {
                return None;
            }
            if let Err(e) = self.fill() {
                self.failed = true;
                return Some(Err(e));
            }
        }
    }
}
