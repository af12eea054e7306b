//! Deterministic split, shuffling (in memory or with a streaming buffer) and exact deduplication.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::error::{DataError, Result};

/// Size of the validation part.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SplitSize {
    /// A fraction in (0, 1), rounded to the nearest count (at least 1).
    Ratio(f64),
    /// An exact count.
    Count(usize),
}

/// Splits into (train, validation) after a seeded shuffle. Both parts must be non-empty.
pub fn train_val_split<T>(items: Vec<T>, size: SplitSize, seed: u64) -> Result<(Vec<T>, Vec<T>)> {
    let n = items.len();
    let val = match size {
        SplitSize::Ratio(r) if r > 0.0 && r < 1.0 => ((n as f64 * r).round() as usize).max(1),
        SplitSize::Ratio(r) => {
            return Err(DataError::InvalidOption {
                option: "validation ratio",
                message: format!("{r} is not in (0, 1)"),
            });
        }
        SplitSize::Count(c) => c,
    };
    if val == 0 || val >= n {
        return Err(DataError::InvalidOption {
            option: "validation size",
            message: format!("{val} validation records out of {n} leaves one part empty"),
        });
    }
    let mut items = shuffled(items, seed);
    let valid = items.split_off(n - val);
    Ok((items, valid))
}

/// A seeded shuffle (same seed, same order, on every platform).
pub fn shuffled<T>(mut items: Vec<T>, seed: u64) -> Vec<T> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    items.shuffle(&mut rng);
    items
}

/// Keeps the first occurrence of each key (exact deduplication); returns kept items and the
/// number removed. Keys are compared by a 64-bit hash and then exactly.
pub fn dedup_by_key<T, K: Hash + Eq>(items: Vec<T>, key: impl Fn(&T) -> K) -> (Vec<T>, usize) {
    let mut seen = HashSet::new();
    let before = items.len();
    let kept: Vec<T> = items.into_iter().filter(|x| seen.insert(key(x))).collect();
    let removed = before - kept.len();
    (kept, removed)
}

/// A stable 64-bit hash (for dedup keys that should not be held in memory whole).
pub fn stable_hash<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// Streaming shuffle: fills a buffer of `capacity` items and emits a random one for each new
/// item, so memory stays bounded; a buffer as large as the data gives a full shuffle.
#[derive(Debug)]
pub struct ShuffleBuffer<I: Iterator> {
    inner: I,
    buf: Vec<I::Item>,
    capacity: usize,
    rng: rand::rngs::StdRng,
}

impl<I: Iterator> ShuffleBuffer<I> {
    pub fn new(inner: I, capacity: usize, seed: u64) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(capacity.max(1)),
            capacity: capacity.max(1),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }
}

impl<I: Iterator> Iterator for ShuffleBuffer<I> {
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        while self.buf.len() < self.capacity {
            match self.inner.next() {
                Some(x) => self.buf.push(x),
                None => break,
            }
        }
        if self.buf.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..self.buf.len());
        Some(self.buf.swap_remove(i))
    }
}
