//! A per-thread f32 buffer for a product's temporary result.
//!
//! Why: the bf16 training step computes several products into temporaries that it rounds and
//! adds to a running sum (autocast rounds each product before the f32 sum), each a fresh
//! `vec![0f32; m · k]`. The allocator hands back recycled memory, so every one of them was
//! zeroed (`memset`: 5% of a SmolLM2 bf16 LoRA step's samples under perf) only to be
//! overwritten by the product. The buffer here is zeroed once, when it grows.
use std::cell::RefCell;

thread_local! {
    /// Buffers not in use, last released on top (a nested call takes the next one).
    static POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` values of a per-thread scratch buffer. Their contents are whatever an
/// earlier user left (finite or not): `f` must write before it reads, e.g. a product that
/// does not accumulate. A nested call on the same thread gets a buffer of its own; each thread
/// keeps as many buffers as its deepest nesting, each as large as its largest use.
pub fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = POOL.with_borrow_mut(Vec::pop).unwrap_or_default();
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let out = f(&mut buf[..len]);
    POOL.with_borrow_mut(|pool| pool.push(buf));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_calls_get_separate_buffers_and_the_outer_one_is_kept() {
        let outer = with_scratch(4, |a| {
            a.copy_from_slice(&[1.0, 2.0, 3.0, 4.0]);
            with_scratch(3, |b| b.fill(9.0));
            a.to_vec()
        });
        assert_eq!(outer, [1.0, 2.0, 3.0, 4.0]);
        // Both went back to the pool, the outer one on top: the same nesting finds each again.
        with_scratch(2, |a| {
            assert_eq!(a, [1.0, 2.0]);
            with_scratch(3, |b| assert_eq!(b, [9.0; 3]));
        });
    }
}
