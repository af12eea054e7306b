//! Prefix caching: the keys and values of prompt prefixes already prefilled, reused by later
//! prompts that start with the same tokens (vLLM's automatic prefix caching).
//!
//! Chat requests repeat their beginning: the template's system prompt, a few-shot preamble, a
//! conversation's earlier turns. Prefill is compute-bound on a CPU, so every token not run again
//! is time saved; with SmolLM2's default system prompt more than half of a short chat prompt's
//! tokens are the shared beginning. After each prefill the scheduler keeps each prompt's prefix
//! of whole blocks of [`BLOCK`] tokens (at least one token is left to run, whose logits give
//! the first sampled token). A later prompt with the same adapters takes the longest kept
//! prefix it shares, in whole blocks, and runs only the rest. Entries are kept up to a byte
//! budget and the least recently used go first. An entry belongs to the adapters it was computed
//! with (a LoRA on `k_proj`/`v_proj` changes them); loading or removing an adapter clears the
//! store.
use kiln_lora::RowMix;
use kiln_models::KvCache;

/// Prefixes are matched and kept in whole blocks of this many tokens (vLLM's block size), so
/// prompts that differ a few tokens after a shared beginning still share its blocks.
pub(crate) const BLOCK: usize = 16;

struct Entry {
    /// The adapters and weights the keys and values were computed with.
    mix: RowMix,
    tokens: Vec<u32>,
    /// One row holding exactly `tokens`.
    cache: KvCache,
    bytes: usize,
    last_use: u64,
}

/// Kept prompt prefixes, up to a byte budget.
pub(crate) struct PrefixStore {
    budget: usize,
    used: usize,
    clock: u64,
    entries: Vec<Entry>,
}

/// Tokens in the longest common beginning of `a` and `b`.
fn common(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The longest prefix of a prompt of `n` tokens in whole blocks that leaves a token to run.
pub(crate) fn blocks_of(n: usize) -> usize {
    n.saturating_sub(1) / BLOCK * BLOCK
}

impl PrefixStore {
    /// A store of at most `budget` bytes of keys and values (0: nothing is kept).
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            budget,
            used: 0,
            clock: 0,
            entries: Vec::new(),
        }
    }

    /// The longest kept prefix of `prompt` (whole blocks, shorter than the prompt) computed with
    /// `mix`: its length and a one-row cache holding it.
    pub(crate) fn lookup(&mut self, mix: &RowMix, prompt: &[u32]) -> Option<(usize, KvCache)> {
        let limit = blocks_of(prompt.len());
        let (i, len) = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| &e.mix == mix)
            .map(|(i, e)| (i, common(&e.tokens, prompt).min(limit) / BLOCK * BLOCK))
            .max_by_key(|&(_, len)| len)?;
        if len == 0 {
            return None;
        }
        self.clock += 1;
        let entry = &mut self.entries[i];
        entry.last_use = self.clock;
        let cache = if len == entry.tokens.len() {
            entry.cache.clone()
        } else {
            entry.cache.prefix(0, len).ok()?
        };
        Some((len, cache))
    }

    /// Keeps `cache` (one row holding exactly `tokens`, computed with `mix`) unless a kept
    /// entry already holds a prefix at least as long; an entry it extends is replaced. Least
    /// recently used entries go until the budget holds it; one larger than the budget is not
    /// kept.
    pub(crate) fn insert(&mut self, mix: &RowMix, tokens: Vec<u32>, cache: KvCache) {
        let bytes = cache.bytes();
        if tokens.is_empty() || bytes > self.budget {
            return;
        }
        let covered = |e: &Entry| &e.mix == mix && common(&e.tokens, &tokens) == tokens.len();
        if self.entries.iter().any(covered) {
            return;
        }
        let extended = |e: &Entry| &e.mix == mix && common(&e.tokens, &tokens) == e.tokens.len();
        self.remove_where(extended);
        while self.used + bytes > self.budget {
            let Some(oldest) = self.entries.iter().map(|e| e.last_use).min() else {
                break;
            };
            self.remove_where(|e| e.last_use == oldest);
        }
        self.clock += 1;
        self.used += bytes;
        self.entries.push(Entry {
            mix: mix.clone(),
            tokens,
            cache,
            bytes,
            last_use: self.clock,
        });
    }

    /// Forgets every entry (an adapter was loaded or removed).
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.used = 0;
    }

    /// Bytes kept.
    pub(crate) fn bytes(&self) -> usize {
        self.used
    }

    fn remove_where(&mut self, gone: impl Fn(&Entry) -> bool) {
        let mut freed = 0;
        self.entries.retain(|e| {
            let g = gone(e);
            if g {
                freed += e.bytes;
            }
            !g
        });
        self.used -= freed;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use kiln_models::{CausalLm, DecoderConfig, DecoderInput, SafetensorsWeights, build_causal_lm};

    fn tiny() -> CausalLm {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny/llama");
        let config = DecoderConfig::from_file(&dir.join("config.json")).unwrap();
        let device = burn::tensor::Device::default();
        build_causal_lm(&config, &SafetensorsWeights::open(&dir).unwrap(), &device).unwrap()
    }

    fn prompt(n: usize, seed: u32) -> Vec<u32> {
        (0..n as u32).map(|i| (i * 7 + seed) % 300 + 1).collect()
    }

    /// The one-row cache of `tokens`.
    fn cache_of(model: &CausalLm, tokens: &[u32]) -> KvCache {
        let mut c = KvCache::default();
        model
            .forward_hidden(&DecoderInput::single(tokens), Some(&mut c))
            .unwrap();
        c
    }

    fn base() -> RowMix {
        Vec::new()
    }

    /// Hits are the longest shared beginning in whole blocks, always shorter than the prompt,
    /// and only for the same adapters.
    #[test]
    fn lookups_take_whole_shared_blocks() {
        let model = tiny();
        let mut store = PrefixStore::new(usize::MAX);
        let p = prompt(40, 0);
        let kept = blocks_of(p.len());
        assert_eq!(kept, 32);
        store.insert(&base(), p[..kept].to_vec(), cache_of(&model, &p[..kept]));
        let mut shares = |n: usize, len: usize| {
            let mut q = p[..n].to_vec();
            q.extend(prompt(len - n, 5).iter().map(|t| t + 400));
            store.lookup(&base(), &q).map(|(l, c)| {
                assert_eq!((c.len(), c.rows()), (l, 1));
                l
            })
        };
        assert_eq!(shares(20, 30), Some(16));
        assert_eq!(shares(35, 50), Some(32));
        assert_eq!(shares(15, 30), None);
        // The same 32 tokens as a whole prompt: one token must be left to run.
        assert_eq!(store.lookup(&base(), &p[..32]).map(|h| h.0), Some(16));
        assert_eq!(store.lookup(&base(), &p[..33]).map(|h| h.0), Some(32));
        let adapter: RowMix = vec![("census".into(), 1.0)];
        assert!(store.lookup(&adapter, &p).is_none());
    }

    /// A prefix already covered is not kept twice, a longer one replaces the shorter, and the
    /// least recently used entry goes first when the budget is full.
    #[test]
    fn entries_stay_within_the_budget() {
        let model = tiny();
        let (a, b, c) = (prompt(32, 0), prompt(32, 1), prompt(32, 2));
        let one = cache_of(&model, &a).bytes();
        let mut store = PrefixStore::new(2 * one);
        store.insert(&base(), a[..16].to_vec(), cache_of(&model, &a[..16]));
        store.insert(&base(), a.clone(), cache_of(&model, &a));
        assert_eq!(store.bytes(), one, "the longer prefix replaced the shorter");
        store.insert(&base(), a[..16].to_vec(), cache_of(&model, &a[..16]));
        assert_eq!(store.bytes(), one, "a covered prefix is not kept");
        store.insert(&base(), b.clone(), cache_of(&model, &b));
        assert_eq!(store.bytes(), 2 * one);
        // `a` used after `b` was kept: `b` is the least recently used when `c` comes.
        let mut longer = a.clone();
        longer.push(9);
        assert_eq!(store.lookup(&base(), &longer).map(|h| h.0), Some(32));
        store.insert(&base(), c.clone(), cache_of(&model, &c));
        assert_eq!(store.bytes(), 2 * one);
        let probe = |s: &mut PrefixStore, p: &[u32]| {
            let mut q = p.to_vec();
            q.push(9);
            s.lookup(&base(), &q).is_some()
        };
        assert!(probe(&mut store, &a) && probe(&mut store, &c) && !probe(&mut store, &b));
        // Larger than the budget: not kept.
        let mut small = PrefixStore::new(one - 1);
        small.insert(&base(), a.clone(), cache_of(&model, &a));
        assert_eq!(small.bytes(), 0);
        store.clear();
        assert_eq!(store.bytes(), 0);
        assert!(!probe(&mut store, &a));
    }
}
