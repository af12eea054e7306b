//! BPE merges of one pre-tokenized piece, step for step as `tokenizers`' `Word::merge_all`.
//!
//! The initial symbols are the piece's bytes (each byte-level character is one vocabulary
//! token). A min-heap of candidate merges ordered by (rank, position) is popped; an entry whose
//! symbol was merged away, that is the last symbol, or whose current pair no longer produces the
//! entry's token is skipped; otherwise the pair is merged and the pairs it forms with its
//! neighbours are pushed. Same order, same skips, so the same ids even where two merges produce
//! the same token.
//!
//! An entry is skipped exactly when its pair has changed since it was pushed (a changed pair
//! covers more bytes, so it spells another token), hence every merge is the one of lowest rank,
//! leftmost on ties, among the current adjacent pairs. Short pieces are merged by scanning for
//! that pair directly ([`merge_short`]), which gives the same sequence of merges without the
//! heap.

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

/// Pieces of at most this many bytes are merged by scanning.
const SHORT: usize = 32;

/// Appends the ids of a piece of at most [`SHORT`] bytes, merged by repeatedly taking the pair
/// of lowest rank, leftmost on ties.
fn merge_short(piece: &[u8], byte_ids: &[u32; 256], merges: &MergeMap, out: &mut Vec<u32>) {
    const NONE: (u32, u32) = (u32::MAX, 0);
    let mut ids = [0u32; SHORT];
    let mut n = 0;
    for &b in piece {
        let id = byte_ids[usize::from(b)];
        if id != NO_TOKEN {
            ids[n] = id;
            n += 1;
        }
    }
    let rank = |a: u32, b: u32| merges.get(&pair(a, b)).copied().unwrap_or(NONE);
    // (rank, merged id) of the pair each symbol forms with the next.
    let mut next = [NONE; SHORT];
    for i in 1..n {
        next[i - 1] = rank(ids[i - 1], ids[i]);
    }
    while n > 1 {
        let mut at = 0;
        for i in 1..n - 1 {
            if next[i].0 < next[at].0 {
                at = i;
            }
        }
        if next[at].0 == u32::MAX {
            break;
        }
        ids[at] = next[at].1;
        ids.copy_within(at + 2..n, at + 1);
        next.copy_within(at + 2..n, at + 1);
        n -= 1;
        next[at] = if at + 1 < n {
            rank(ids[at], ids[at + 1])
        } else {
            NONE
        };
        if at > 0 {
            next[at - 1] = rank(ids[at - 1], ids[at]);
        }
    }
    out.extend_from_slice(&ids[..n]);
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
    if piece.len() <= SHORT {
        merge_short(piece, byte_ids, merges, out);
        return;
    }
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

    /// Heap merging of a piece of any length (the path of pieces longer than [`SHORT`]).
    fn merge_heap(piece: &[u8], byte_ids: &[u32; 256], merges: &MergeMap) -> Vec<u32> {
        let mut long = piece.to_vec();
        // Pad past SHORT with a byte that has no token: dropped, so the ids are the piece's.
        long.resize(SHORT + 1, 0);
        let mut out = Vec::new();
        merge_piece(
            &long,
            byte_ids,
            merges,
            &mut MergeScratch::default(),
            &mut out,
        );
        out
    }

    #[test]
    fn scanning_and_heap_give_the_same_merges() {
        // Bytes 1..=4 spell "a".."d" (tokens 1..=4); seeded merges of the first 16 tokens, each
        // making the token of the concatenation, so that (ab, c) and (a, bc) both make "abc".
        let mut byte_ids = [NO_TOKEN; 256];
        for b in 1..=4u8 {
            byte_ids[usize::from(b)] = u32::from(b);
        }
        let mut spelled: Vec<String> = ["", "a", "b", "c", "d"].map(String::from).to_vec();
        let mut merges = MergeMap::default();
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as u32
        };
        let mut shared = 0;
        for rank in 0..300 {
            let live = (spelled.len() as u32 - 1).min(16);
            let (a, b) = (1 + next() % live, 1 + next() % live);
            if merges.contains_key(&pair(a, b)) {
                continue;
            }
            let s = format!("{}{}", spelled[a as usize], spelled[b as usize]);
            let id = match spelled.iter().position(|t| *t == s) {
                Some(id) => {
                    shared += 1;
                    id as u32
                }
                None => {
                    spelled.push(s);
                    spelled.len() as u32 - 1
                }
            };
            merges.insert(pair(a, b), (rank, id));
        }
        assert!(shared >= 5, "{shared} merges make an existing token");
        for len in 0..=SHORT {
            for _ in 0..50 {
                let piece: Vec<u8> = (0..len).map(|_| 1 + (next() % 4) as u8).collect();
                let mut short = Vec::new();
                merge_short(&piece, &byte_ids, &merges, &mut short);
                assert_eq!(short, merge_heap(&piece, &byte_ids, &merges), "{piece:?}");
                let text: String = short
                    .iter()
                    .map(|&t| spelled[t as usize].as_str())
                    .collect();
                let want: String = piece
                    .iter()
                    .map(|&b| spelled[usize::from(b)].as_str())
                    .collect();
                assert_eq!(text, want);
            }
        }
    }
}
