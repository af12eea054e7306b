//! Running a step on rayon's pool.
//!
//! Why: every kernel of a forward is a parallel loop (`par_iter`, `gemm` on rayon). Started from
//! a thread outside the pool (a program's main thread, a server's scheduler), each loop is
//! handed to the pool and its caller sleeps on a lock until it is done: hundreds of hand-overs
//! and wake-ups per decoding step. Started from one of the pool's workers, a loop is split
//! between the workers directly. Measured on SmolLM2-135M (2-core EPYC Zen 4): decoding one
//! sequence 76 -> 110 tokens/s (`bench --mode infer`), serving 32 clients 361 -> 468 tokens/s;
//! a 1 × 256 forward and a LoRA step gain 2-3%.

/// Runs `f` on one of rayon's workers (directly when the caller is one), the caller waiting
/// for it. Use it around a whole step (a forward, a decoding step, a training step), never
/// around a wait for outside events: the worker it holds does no other work meanwhile.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

#[cfg(test)]
mod tests {
    /// The closure runs on a worker of the pool, and nested calls run in place.
    #[test]
    fn runs_on_a_worker() {
        assert!(rayon::current_thread_index().is_none());
        let (outer, inner) = super::on_pool(|| {
            let here = std::thread::current().id();
            (
                rayon::current_thread_index(),
                super::on_pool(|| std::thread::current().id() == here),
            )
        });
        assert!(outer.is_some() && inner);
    }
}
