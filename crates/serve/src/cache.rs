//! The response cache: repeated greedy requests (temperature 0, not streamed) are answered from
//! memory. Keys hash everything that decides the output (adapter, prompt ids, limits, stops);
//! the total size of the cached texts is bounded and the oldest entries leave first.
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// One cached choice: text and finish reason.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedChoice {
    pub text: String,
    pub finish_reason: &'static str,
    pub completion_tokens: usize,
}

/// A size-bounded FIFO map from request hash to choices.
#[derive(Debug)]
pub struct ResponseCache {
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<[u8; 32], Vec<CachedChoice>>,
    order: VecDeque<([u8; 32], usize)>,
    bytes: usize,
}

/// The cache key of a request.
pub fn key(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().into()
}

impl ResponseCache {
    /// A cache holding at most `max_bytes` of text (0 disables it).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            inner: Mutex::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.max_bytes > 0
    }

    pub fn get(&self, key: &[u8; 32]) -> Option<Vec<CachedChoice>> {
        self.inner.lock().ok()?.map.get(key).cloned()
    }

    pub fn put(&self, key: [u8; 32], choices: Vec<CachedChoice>) {
        let size = choices.iter().map(|c| c.text.len() + 64).sum::<usize>();
        if size > self.max_bytes {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.map.contains_key(&key) {
            return;
        }
        while inner.bytes + size > self.max_bytes {
            let Some((old, n)) = inner.order.pop_front() else {
                break;
            };
            inner.map.remove(&old);
            inner.bytes -= n;
        }
        inner.map.insert(key, choices);
        inner.order.push_back((key, size));
        inner.bytes += size;
    }

    /// Entries and bytes held.
    #[cfg(test)]
    pub(crate) fn usage(&self) -> (usize, usize) {
        self.inner
            .lock()
            .map(|i| (i.map.len(), i.bytes))
            .unwrap_or((0, 0))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn choice(text: &str) -> Vec<CachedChoice> {
        vec![CachedChoice {
            text: text.into(),
            finish_reason: "stop",
            completion_tokens: 1,
        }]
    }

    #[test]
    fn evicts_oldest_past_the_size_bound() {
        let cache = ResponseCache::new(200);
        cache.put(key(&[b"a"]), choice(&"x".repeat(60)));
        cache.put(key(&[b"b"]), choice(&"y".repeat(60)));
        assert_eq!(cache.usage(), (1, 124), "the first entry left to make room");
        assert!(cache.get(&key(&[b"a"])).is_none());
        assert_eq!(cache.get(&key(&[b"b"])).unwrap()[0].text.len(), 60);
        // Longer than the whole cache: not stored.
        cache.put(key(&[b"c"]), choice(&"z".repeat(300)));
        assert!(cache.get(&key(&[b"c"])).is_none());
        // Keys separate their parts: ("ab","") differs from ("a","b").
        assert_ne!(key(&[b"ab", b""]), key(&[b"a", b"b"]));
    }
}
