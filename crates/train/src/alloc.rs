//! Allocator tuning for training processes.
//!
//! A training step allocates and frees the same large temporaries (activations, gradients,
//! logits) over and over. glibc serves blocks above its mmap threshold (at most 32 MiB) with
//! fresh `mmap`s and returns freed heap tops to the kernel, so every step page-faults and zeroes
//! those pages again: 8% of a SmolLM2 LoRA step in `perf` (`clear_page_erms` and page faults).
//! Keeping freed memory for reuse took the step from 62.8 to 68.4 tokens/s on the 2-core machine
//! with the same peak RSS (`bench --mode lora`, README "Performance").
//!
//! This changes the whole process's allocator, so it is the binary's choice: kiln's examples
//! call [`keep_freed_memory`] first thing; library code never does.

/// Makes glibc serve allocations below 1 GiB from its heap and keep up to 4 GiB of freed memory
/// for reuse. Returns whether the settings were applied (only on Linux with glibc; elsewhere
/// it does nothing and returns `false`).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; called before heavy allocation.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
                && libc::mallopt(libc::M_TOP_PAD, 256 << 20) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Hands the freed memory glibc keeps, in every arena, back to the kernel (`malloc_trim`).
/// Call it between phases whose work runs on different threads: decoding runs on rayon's
/// workers (`kiln_cpu::on_pool`), whose arenas keep their freed blocks under
/// [`keep_freed_memory`], so an evaluation's generation before training would otherwise stay
/// in the process's peak next to the training's own memory. Returns whether it ran (Linux with
/// glibc only).
pub fn release_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only returns free pages of the allocator's arenas to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
        true
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn settings_apply_on_linux_glibc() {
        let applied = super::keep_freed_memory();
        assert_eq!(applied, cfg!(all(target_os = "linux", target_env = "gnu")));
        let released = super::release_freed_memory();
        assert_eq!(released, applied);
    }
}
