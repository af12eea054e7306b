//! bf16-packed layouts of frozen dense weights, kept while their model lives.
//!
//! Why: in bf16 every product by a weight runs on [`crate::bf16`]'s kernel, which reads the
//! weight packed into bf16 pairs. A frozen weight (LoRA's base, a frozen tied embedding) never
//! changes during a run, so it is packed once here instead of once per micro-batch. Entries are
//! keyed by parameter id and hold a clone of the weight's storage: the buffer they were packed
//! from then stays alive and shared (so it cannot be updated in place or reused), and an entry
//! whose parameter now holds another buffer (new values loaded) is repacked. An entry whose
//! storage only the cache still holds (its model was dropped) is evicted at the next lookup.

use crate::bf16::PackedWeight;
use crate::host::Storage;
use burn::module::ParamId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// The weight an entry was packed from, and its layouts.
struct Entry {
    tensor: Storage,
    packed: Arc<PackedWeight>,
}

static CACHE: Mutex<Option<HashMap<ParamId, Entry>>> = Mutex::new(None);

fn cache() -> MutexGuard<'static, Option<HashMap<ParamId, Entry>>> {
    // A panic while holding the lock cannot leave an entry half-written (inserts are whole).
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The packed layouts of the frozen weight `id` whose values are `tensor` (made on first use,
/// see [`PackedWeight`]). Only for weights that do not train: a weight the optimizer updates
/// gets a fresh [`PackedWeight`] per step from its caller.
pub fn frozen(id: ParamId, tensor: &Storage) -> Arc<PackedWeight> {
    let mut guard = cache();
    let map = guard.get_or_insert_with(HashMap::new);
    map.retain(|_, e| !e.tensor.is_unique());
    match map.get(&id) {
        Some(e) if e.tensor.same(tensor) => Arc::clone(&e.packed),
        _ => {
            let packed = Arc::new(PackedWeight::default());
            let entry = Entry {
                tensor: tensor.clone(),
                packed: Arc::clone(&packed),
            };
            map.insert(id, entry);
            packed
        }
    }
}

/// Drops every cached layout (their weights' memory returns when the models go).
pub fn clear() {
    *cache() = None;
}

/// Bytes held by the cached layouts.
pub fn bytes() -> usize {
    cache()
        .as_ref()
        .map_or(0, |m| m.values().map(|e| e.packed.bytes()).sum())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::host::{Storage, tensor};

    fn weight(v: f32) -> Storage {
        Storage::values(&tensor::<2>(&[2, 3], vec![v; 6]).unwrap()).unwrap()
    }

    /// The same buffer gets the same layouts; new values under the same id get new ones; an
    /// entry whose weight is gone is dropped.
    #[test]
    fn entries_follow_their_weight() {
        let (id, other) = (ParamId::new(), ParamId::new());
        let w = weight(1.0);
        let a = frozen(id, &w);
        assert!(Arc::ptr_eq(&a, &frozen(id, &w.clone())));
        let w2 = weight(2.0);
        let b = frozen(id, &w2);
        assert!(!Arc::ptr_eq(&a, &b), "new values must be repacked");
        let held = |id: ParamId| cache().as_ref().is_some_and(|m| m.contains_key(&id));
        drop(w2);
        let w3 = weight(3.0);
        frozen(other, &w3);
        assert!(!held(id), "an entry whose weight was dropped stays cached");
        assert!(held(other));
    }
}
