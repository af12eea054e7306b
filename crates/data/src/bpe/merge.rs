//! BPE merges of one pre-tokenized piece, step for step as `tokenizers`' `Word::merge_all`.
//!
//! The initial symbols are the piece's bytes (each byte-level character is one vocabulary
//! token). A min-heap of candidate merges ordered by (rank, position) is popped; an entry whose
//! symbol was merged away, that is the last symbol, or whose current pair no longer produces the
//! entry's token is skipped; otherwise the pair is merged and the pairs it forms with its
//! neighbours are pushed. Same order, same skips, so the same ids even where two merges produce
//! the same token.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::NO_TOKEN;

/// Pair of token ids → (rank, merged id).
pub(crate) type MergeMap = HashMap<u64, (u32, u32), ahash::RandomState>;

#[inline]
pub(crate) fn pair(a: u32, b: u32) -> u64 {
    (u64::from(a) << 32) | u64::from(b)
}

#[derive(Debug, Clone, Copy)]
struct Symbol {
    id: u32,
    prev: isize,
    next: isize,
    /// 0 once merged into its left neighbour.
    len: usize,
}

#[derive(Debug, PartialEq, Eq)]
struct Merge {
    pos: usize,
    rank: u32,
    new_id: u32,
}

impl Ord for Merge {
    /// Reversed, so that `BinaryHeap` pops the lowest rank, then the lowest position.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.pos.cmp(&self.pos))
    }
}

impl PartialOrd for Merge {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Buffers reused from piece to piece.
#[derive(Debug, Default)]
pub(crate) struct MergeScratch {
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Merge>,
}

/// Appends the ids of `piece` merged with `merges` to `out`. `byte_ids[b]` is the id of byte
/// `b`'s character, or [`NO_TOKEN`] (the byte is dropped).
pub(crate) fn merge_piece(
    piece: &[u8],
    byte_ids: &[u32; 256],
    merges: &MergeMap,
    scratch: &mut MergeScratch,
    out: &mut Vec<u32>,
) {
    let MergeScratch { symbols, queue } = scratch;
    symbols.clear();
    queue.clear();
    // Bytes without a token are skipped: their neighbours become adjacent.
    for &b in piece {
        let id = byte_ids[usize::from(b)];
        if id == NO_TOKEN {
            continue;
        }
        let i = symbols.len() as isize;
        if let Some(last) = symbols.last_mut() {
            last.next = i;
        }
        symbols.push(Symbol {
            id,
            prev: i - 1,
            next: -1,
            len: 1,
        });
    }
    for (pos, w) in symbols.windows(2).enumerate() {
        if let Some(&(rank, new_id)) = merges.get(&pair(w[0].id, w[1].id)) {
            queue.push(Merge { pos, rank, new_id });
        }
    }
    while let Some(top) = queue.pop() {
        let cur = symbols[top.pos];
        if cur.len == 0 || cur.next == -1 {
            continue;
        }
        let next_pos = cur.next as usize;
        let right = symbols[next_pos];
        if merges
            .get(&pair(cur.id, right.id))
            .is_none_or(|&(_, id)| id != top.new_id)
        {
            continue;
        }
        let merged = Symbol {
            id: top.new_id,
            prev: cur.prev,
            next: right.next,
            len: cur.len + right.len,
        };
        symbols[top.pos] = merged;
        symbols[next_pos].len = 0;
        if right.next > -1 && (right.next as usize) < symbols.len() {
            symbols[right.next as usize].prev = top.pos as isize;
        }
        if merged.prev >= 0 {
            let prev = merged.prev as usize;
            if let Some(&(rank, new_id)) = merges.get(&pair(symbols[prev].id, merged.id)) {
                queue.push(Merge {
                    pos: prev,
                    rank,
                    new_id,
                });
            }
        }
        let next = merged.next as usize;
        if merged.next >= 0
            && next < symbols.len()
            && let Some(&(rank, new_id)) = merges.get(&pair(merged.id, symbols[next].id))
        {
            queue.push(Merge {
                pos: top.pos,
                rank,
                new_id,
            });
        }
    }
    out.extend(symbols.iter().filter(|s| s.len != 0).map(|s| s.id));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_rank_first_then_leftmost() {
        // Bytes a=0, b=1, c=2; merges: (b, c) -> 10 rank 0, (a, b) -> 11 rank 1, (a, 10) -> 12 rank 2.
        let mut byte_ids = [NO_TOKEN; 256];
        byte_ids[usize::from(b'a')] = 0;
        byte_ids[usize::from(b'b')] = 1;
        byte_ids[usize::from(b'c')] = 2;
        let mut merges = MergeMap::default();
        merges.insert(pair(1, 2), (0, 10));
        merges.insert(pair(0, 1), (1, 11));
        merges.insert(pair(0, 10), (2, 12));
        let mut scratch = MergeScratch::default();
        let run = |s: &[u8], scratch: &mut MergeScratch| {
            let mut out = Vec::new();
            merge_piece(s, &byte_ids, &merges, scratch, &mut out);
            out
        };
        assert_eq!(run(b"abc", &mut scratch), [12]);
        assert_eq!(run(b"abab", &mut scratch), [11, 11]);
        assert_eq!(run(b"abcab", &mut scratch), [12, 11]);
        assert_eq!(run(b"ca", &mut scratch), [2, 0]);
        // 'x' has no token: dropped, and "a" + "b" merge across it.
        assert_eq!(run(b"axbx", &mut scratch), [11]);
        assert_eq!(run(b"", &mut scratch), Vec::<u32>::new());
    }
}
