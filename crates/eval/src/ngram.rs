//! Exact n-gram counting without per-n-gram allocation.
//!
//! Tokens are interned to small integer ids per example; an n-gram is packed losslessly into
//! a `u64` when `order x width(largest id)` fits in 64 bits, else into a `u128` (ids start at 1,
//! so n-grams of different orders never collide). Counting sorts the keys and run-length encodes them, and matching two counted
//! lists is a linear merge.

use std::hash::Hasher;

use crate::hash::FxHasher;

/// A sorted list of distinct n-gram keys with their counts.
pub type Counts<K> = Vec<(K, u32)>;

/// Interns token strings to dense ids `1..`, one example at a time.
///
/// An open-addressing table over a byte arena: reset per example without freeing, so a
/// corpus pass allocates only while its buffers grow.
#[derive(Default, Debug)]
pub struct Interner {
    /// Slot -> id (0 = empty).
    slots: Vec<u32>,
    arena: Vec<u8>,
    /// Id - 1 -> byte range in `arena`.
    spans: Vec<(u32, u32)>,
}

#[inline]
fn hash(bytes: &[u8]) -> usize {
    let mut h = FxHasher::default();
    h.write(bytes);
    h.finish() as usize
}

impl Interner {
    /// Forget all ids; size the table for about `expected` distinct strings.
    pub fn reset(&mut self, expected: usize) {
        let cap = (2 * expected + 2).next_power_of_two().max(16);
        self.slots.clear();
        self.slots.resize(cap, 0);
        self.arena.clear();
        self.spans.clear();
    }

    /// Number of distinct strings (the largest id).
    pub fn count(&self) -> usize {
        self.spans.len()
    }

    fn get(&self, id: u32) -> &[u8] {
        let (a, b) = self.spans[id as usize - 1];
        &self.arena[a as usize..b as usize]
    }

    fn grow(&mut self) {
        let cap = self.slots.len() * 2;
        self.slots.clear();
        self.slots.resize(cap, 0);
        for id in 1..=self.spans.len() as u32 {
            let mut i = hash(self.get(id)) & (cap - 1);
            while self.slots[i] != 0 {
                i = (i + 1) & (cap - 1);
            }
            self.slots[i] = id;
        }
    }

    /// The id of `s` (1-based), assigning a new one when unseen.
    #[inline]
    pub fn id(&mut self, s: &str) -> u32 {
        if self.slots.is_empty() || 2 * (self.spans.len() + 1) > self.slots.len() {
            if self.slots.is_empty() {
                self.reset(8);
            } else {
                self.grow();
            }
        }
        let bytes = s.as_bytes();
        let mask = self.slots.len() - 1;
        let mut i = hash(bytes) & mask;
        loop {
            let id = self.slots[i];
            if id == 0 {
                let start = self.arena.len() as u32;
                self.arena.extend_from_slice(bytes);
                self.spans.push((start, self.arena.len() as u32));
                let id = self.spans.len() as u32;
                self.slots[i] = id;
                return id;
            }
            if self.get(id) == bytes {
                return id;
            }
            i = (i + 1) & mask;
        }
    }
}

/// An integer n-gram key: `u64` when the packed n-gram fits, else `u128`.
pub trait Key: Copy + Ord + Default + Send + std::fmt::Debug {
    const BITS: u32;
    fn push(self, bits: u32, x: u32) -> Self;
    fn leading_zeros(self) -> u32;
}

impl Key for u64 {
    const BITS: u32 = 64;
    #[inline]
    fn push(self, bits: u32, x: u32) -> Self {
        (self << bits) | u64::from(x)
    }
    #[inline]
    fn leading_zeros(self) -> u32 {
        u64::leading_zeros(self)
    }
}

impl Key for u128 {
    const BITS: u32 = 128;
    #[inline]
    fn push(self, bits: u32, x: u32) -> Self {
        (self << bits) | u128::from(x)
    }
    #[inline]
    fn leading_zeros(self) -> u32 {
        u128::leading_zeros(self)
    }
}

/// Bits needed for values up to `max` (at least 1).
pub fn width(max: u32) -> u32 {
    (32 - max.leading_zeros()).max(1)
}

/// Pack `ids` (each below `2^bits`) into one key, `bits` bits per element.
#[inline]
pub fn pack<K: Key>(ids: &[u32], bits: u32) -> K {
    ids.iter().fold(K::default(), |k, &id| k.push(bits, id))
}

/// Number of elements packed in a key (ids are non-zero).
#[inline]
pub fn order_of<K: Key>(key: K, bits: u32) -> usize {
    (K::BITS - key.leading_zeros()).div_ceil(bits) as usize
}

/// Sort `keys` and count runs into `out` (cleared first).
pub fn count_into<K: Key>(keys: &mut [K], out: &mut Counts<K>) {
    out.clear();
    keys.sort_unstable();
    for &k in keys.iter() {
        match out.last_mut() {
            Some((last, c)) if *last == k => *c += 1,
            _ => out.push((k, 1)),
        }
    }
}

/// Merge `other` into `acc` keeping the maximum count of each key (multi-reference clipping).
pub fn merge_max<K: Key>(acc: &mut Counts<K>, other: &Counts<K>, scratch: &mut Counts<K>) {
    scratch.clear();
    let (mut i, mut j) = (0, 0);
    while i < acc.len() && j < other.len() {
        let (a, b) = (acc[i], other[j]);
        if a.0 < b.0 {
            scratch.push(a);
            i += 1;
        } else if b.0 < a.0 {
            scratch.push(b);
            j += 1;
        } else {
            scratch.push((a.0, a.1.max(b.1)));
            i += 1;
            j += 1;
        }
    }
    scratch.extend_from_slice(&acc[i..]);
    scratch.extend_from_slice(&other[j..]);
    std::mem::swap(acc, scratch);
}

/// Visit every key of `hyp` with its count and the clipped match `min(count, ref count)`.
#[inline]
pub fn for_each_match<K: Key>(hyp: &Counts<K>, refs: &Counts<K>, mut f: impl FnMut(K, u32, u32)) {
    let mut j = 0;
    for &(k, c) in hyp {
        while j < refs.len() && refs[j].0 < k {
            j += 1;
        }
        let m = if j < refs.len() && refs[j].0 == k {
            c.min(refs[j].1)
        } else {
            0
        };
        f(k, c, m);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pack_is_injective_across_orders() {
        assert_ne!(pack::<u128>(&[1], 32), pack::<u128>(&[1, 1], 32));
        assert_eq!(order_of(pack::<u128>(&[3, 1, 2], 32), 32), 3);
        assert_eq!(order_of(pack::<u128>(&[u32::MAX; 4], 32), 32), 4);
        assert_eq!(order_of(pack::<u64>(&[1, 1, 1, 1], 16), 16), 4);
        assert_eq!((width(1), width(255), width(256)), (1, 8, 9));
    }

    #[test]
    fn interner_ids_are_stable_and_grow() {
        let mut it = Interner::default();
        let words: Vec<String> = (0..100).map(|i| format!("w{}", i % 37)).collect();
        let ids: Vec<u32> = words.iter().map(|w| it.id(w)).collect();
        assert_eq!(ids[0], 1);
        assert_eq!(ids[37], 1);
        assert_eq!(*ids.iter().max().unwrap_or(&0), 37);
        it.reset(4);
        assert_eq!(it.id("w5"), 1);
    }

    #[test]
    fn merge_and_match() {
        let mut a: Counts<u64> = vec![(1, 2), (5, 1)];
        let mut s = Vec::new();
        merge_max(&mut a, &vec![(1, 1), (3, 4), (5, 2)], &mut s);
        assert_eq!(a, vec![(1, 2), (3, 4), (5, 2)]);
        let mut got = Vec::new();
        for_each_match(&vec![(1, 3), (2, 1), (5, 1)], &a, |k, c, m| {
            got.push((k, c, m))
        });
        assert_eq!(got, vec![(1, 3, 2), (2, 1, 0), (5, 1, 1)]);
        let mut keys: Vec<u64> = vec![4, 1, 4, 4];
        let mut out = Vec::new();
        count_into(&mut keys, &mut out);
        assert_eq!(out, vec![(1, 1), (4, 3)]);
    }
}
