//! Per-thread cache of merged pieces: piece bytes → token ids, keys and values in two arenas
//! (no allocation per entry). Emptied when full, so it follows the data and its memory stays
//! bounded: at most 64 Ki entries, 2 MiB of keys and 1 MiB of ids per thread (about 6 MB with
//! the table).

use hashbrown::HashTable;

/// Longest piece (bytes) worth caching.
const MAX_PIECE: usize = 64;
const MAX_ENTRIES: usize = 1 << 16;
const MAX_KEY_BYTES: usize = 1 << 21;
const MAX_IDS: usize = 1 << 18;

#[derive(Debug, Clone, Copy)]
struct Entry {
    hash: u64,
    key: u32,
    key_len: u32,
    ids: u32,
    ids_len: u32,
}

#[derive(Default)]
pub(crate) struct PieceCache {
    hasher: ahash::RandomState,
    table: HashTable<Entry>,
    keys: Vec<u8>,
    ids: Vec<u32>,
}

impl PieceCache {
    /// The hash of `piece` (for [`PieceCache::insert`]) and its ids when cached.
    #[inline]
    pub(crate) fn get(&self, piece: &[u8]) -> (u64, Option<&[u32]>) {
        let hash = self.hasher.hash_one(piece);
        let hit = self
            .table
            .find(hash, |e| {
                e.hash == hash && &self.keys[e.key as usize..][..e.key_len as usize] == piece
            })
            .map(|e| &self.ids[e.ids as usize..][..e.ids_len as usize]);
        (hash, hit)
    }

    /// Remembers `ids` for `piece` (`hash` from [`PieceCache::get`]), emptying the cache first
    /// when it is full.
    pub(crate) fn insert(&mut self, hash: u64, piece: &[u8], ids: &[u32]) {
        if piece.len() > MAX_PIECE {
            return;
        }
        if self.table.len() >= MAX_ENTRIES
            || self.keys.len() + piece.len() > MAX_KEY_BYTES
            || self.ids.len() + ids.len() > MAX_IDS
        {
            self.table.clear();
            self.keys.clear();
            self.ids.clear();
        }
        let entry = Entry {
            hash,
            key: self.keys.len() as u32,
            key_len: piece.len() as u32,
            ids: self.ids.len() as u32,
            ids_len: ids.len() as u32,
        };
        self.keys.extend_from_slice(piece);
        self.ids.extend_from_slice(ids);
        self.table.insert_unique(hash, entry, |e| e.hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_misses_and_emptying_when_full() {
        let mut c = PieceCache::default();
        let (h, hit) = c.get(b" hello");
        assert!(hit.is_none());
        c.insert(h, b" hello", &[7, 8]);
        assert_eq!(c.get(b" hello").1, Some(&[7, 8][..]));
        assert!(c.get(b" hell").1.is_none());
        let long = [b'x'; MAX_PIECE + 1];
        let (h, _) = c.get(&long);
        c.insert(h, &long, &[1]);
        assert!(c.get(&long).1.is_none());
        for i in 0..MAX_ENTRIES as u32 {
            let key = i.to_le_bytes();
            let (h, _) = c.get(&key);
            c.insert(h, &key, &[i]);
        }
        // The 65,537th entry emptied the cache: " hello" is gone, the last key is alone.
        assert!(c.get(b" hello").1.is_none());
        let last = (MAX_ENTRIES as u32 - 1).to_le_bytes();
        assert_eq!(c.get(&last).1, Some(&[MAX_ENTRIES as u32 - 1][..]));
        assert_eq!(c.table.len(), 1);
    }
}
