//! Shared pieces of kiln's fuzz tests (`crates/*/tests/fuzz.rs` include this file by path):
//! a counting global allocator, structure-aware mutators of valid files, and the runner.
//!
//! Why `arbtest` and not `proptest`: the targets mutate valid files, so what a case needs is a
//! stream of random choices (`arbitrary::Unstructured`), not value strategies; arbtest is one
//! small crate over `arbitrary`, runs a property for a time budget on stable Rust, and prints the
//! seed of a failing case (`ARBTEST_SEED=0x... cargo test ...` replays it). proptest would bring
//! a strategy framework and more dependencies for generation we do not use.
//!
//! Budget: `KILN_FUZZ_MS` milliseconds per target (default 3,000, so the targets of a crate
//! finish in seconds in the normal test run); `tools/fuzz.sh` sets 600,000 (10 minutes).
#![allow(dead_code)]

use arbitrary::Unstructured;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts the bytes each thread allocates, so a case can assert its own peak; any single
/// allocation above [`HARD_LIMIT`] aborts the process at once (a fuzz case must not take the
/// machine down on its way to failing).
pub struct Counting;

/// One allocation larger than this is a bug in a parser fed at most a few MB.
pub const HARD_LIMIT: usize = 1 << 30;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}
static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn track(delta: isize) {
    // `try_with`: allocations during thread teardown find the slots gone; they are not counted.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

// SAFETY: every call is forwarded to `System` unchanged; the counters are plain thread-local
// cells and an atomic that never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > HARD_LIMIT {
            return std::ptr::null_mut(); // the caller aborts: "memory allocation of N failed"
        }
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        track(layout.size() as isize);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > HARD_LIMIT {
            return std::ptr::null_mut();
        }
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        track(new_size as isize - layout.size() as isize);
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` and returns its value with the most bytes this thread held at once above what it
/// held before (allocations of helper threads, e.g. rayon's, are not counted).
pub fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    let peak = PEAK.with(Cell::get);
    (out, (peak - base).max(0) as usize)
}

/// The bound a case's allocations must stay under: 64 MiB plus `factor` times the input size.
pub fn bound(input_len: usize, factor: usize) -> usize {
    (64 << 20) + factor * input_len
}

/// Milliseconds per target (`KILN_FUZZ_MS`, default 3,000).
pub fn budget_ms() -> u64 {
    std::env::var("KILN_FUZZ_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000)
}

thread_local! {
    /// `(accepted, refused with a typed error)` of the current target's cases.
    static OUTCOMES: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// Records whether a case's input was accepted or refused with an error, and passes it on.
pub fn outcome<T, E>(r: Result<T, E>) -> Result<T, E> {
    OUTCOMES.with(|o| {
        let (ok, err) = o.get();
        o.set(if r.is_ok() {
            (ok + 1, err)
        } else {
            (ok, err + 1)
        });
    });
    r
}

/// Runs `case` under arbtest for the budget; prints how many cases ran and how many inputs were
/// accepted or refused (the README's table).
pub fn run(target: &str, mut case: impl FnMut(&mut Unstructured<'_>) -> arbitrary::Result<()>) {
    let mut n = 0u64;
    OUTCOMES.with(|o| o.set((0, 0)));
    arbtest::arbtest(|u| {
        n += 1;
        case(u)
    })
    .size_min(64)
    .size_max(4096)
    .budget_ms(budget_ms())
    .run();
    let (ok, err) = OUTCOMES.with(Cell::get);
    eprintln!("fuzz target {target}: {n} cases, {ok} accepted, {err} typed errors, 0 panics");
}

/// Values that break length and count checks: zero, one, the type's edges, powers of two.
pub fn interesting_u64(u: &mut Unstructured<'_>, current: u64) -> arbitrary::Result<u64> {
    Ok(match u.int_in_range(0..=9)? {
        0 => 0,
        1 => 1,
        2 => u64::MAX,
        3 => u32::MAX as u64,
        4 => 1 << u.int_in_range(8..=63)?,
        5 => current.wrapping_add(1),
        6 => current.wrapping_sub(1),
        7 => current.wrapping_mul(u.int_in_range(2..=1000)?),
        8 => i32::MAX as u64 + 1,
        _ => u.arbitrary()?,
    })
}

/// A byte-level mutation of `bytes`: flip, overwrite, insert, delete, duplicate a region, or
/// truncate. `fields` are `(offset, width)` of the integer fields of the format (counts,
/// lengths, types, offsets): with them the mutation sets a field to an interesting value.
pub fn mutate_bytes(
    u: &mut Unstructured<'_>,
    bytes: &mut Vec<u8>,
    fields: &[(usize, usize)],
) -> arbitrary::Result<()> {
    if bytes.is_empty() {
        let n = u.int_in_range(0..=16)?;
        bytes.extend_from_slice(u.bytes(n)?);
        return Ok(());
    }
    let at = u.choose_index(bytes.len())?;
    match u.int_in_range(0..=7)? {
        0 | 1 if !fields.is_empty() => {
            let (off, width) = *u.choose(fields)?;
            if off + width <= bytes.len() {
                let mut cur = [0u8; 8];
                cur[..width].copy_from_slice(&bytes[off..off + width]);
                let v = interesting_u64(u, u64::from_le_bytes(cur))?.to_le_bytes();
                bytes[off..off + width].copy_from_slice(&v[..width]);
            }
        }
        2 => bytes[at] ^= 1 << u.int_in_range(0..=7)?,
        3 => bytes[at] = u.arbitrary()?,
        4 => {
            let n = u.int_in_range(1..=16)?;
            let new = u.bytes(n)?.to_vec();
            bytes.splice(at..at, new);
        }
        5 => {
            let end = (at + u.int_in_range(1..=64)?).min(bytes.len());
            bytes.drain(at..end);
        }
        6 => {
            let end = (at + u.int_in_range(1..=256)?).min(bytes.len());
            let region = bytes[at..end].to_vec();
            let to = u.choose_index(bytes.len())?;
            bytes.splice(to..to, region);
        }
        _ => bytes.truncate(at),
    }
    Ok(())
}

/// A JSON value that breaks typed readers: negative, huge, fractional, the wrong type, nested.
pub fn interesting_json(u: &mut Unstructured<'_>) -> arbitrary::Result<serde_json::Value> {
    use serde_json::json;
    Ok(match u.int_in_range(0..=13)? {
        0 => json!(-1),
        1 => json!(0),
        2 => json!(1_000_000_000u64),
        3 => json!(u64::MAX),
        4 => json!(1e300),
        5 => json!(0.5),
        6 => json!(null),
        7 => json!("not a number"),
        8 => json!([1, 2, -3]),
        9 => json!({"nested": {"k": [null]}}),
        10 => json!(true),
        11 => json!(i64::MIN),
        12 => json!(1u64 << u.int_in_range(10..=62)?),
        _ => json!(u.int_in_range(-3i64..=300)?),
    })
}

/// A structural mutation of a JSON document: a value somewhere replaced, a key removed, a key
/// added, or an array element duplicated or dropped (repeated 1 to 4 times).
pub fn mutate_json(
    u: &mut Unstructured<'_>,
    value: &mut serde_json::Value,
) -> arbitrary::Result<()> {
    for _ in 0..u.int_in_range(1..=4)? {
        mutate_json_once(u, value)?;
    }
    Ok(())
}

fn mutate_json_once(
    u: &mut Unstructured<'_>,
    value: &mut serde_json::Value,
) -> arbitrary::Result<()> {
    use serde_json::Value;
    // Choose a random path (child indices), stopping at a random depth, then walk it mutably.
    let mut path = Vec::new();
    let mut at: &Value = value;
    loop {
        let len = match at {
            Value::Object(m) => m.len(),
            Value::Array(a) => a.len(),
            _ => 0,
        };
        if len == 0 || !u.ratio(3, 4)? {
            break;
        }
        let k = u.choose_index(len)?;
        path.push(k);
        at = match at {
            Value::Object(m) => m.values().nth(k),
            Value::Array(a) => a.get(k),
            _ => None,
        }
        .unwrap_or(&Value::Null);
    }
    let mut v = value;
    for k in path {
        v = match v {
            Value::Object(m) => m.values_mut().nth(k),
            Value::Array(a) => a.get_mut(k),
            _ => None,
        }
        .expect("the path was read from this value");
    }
    match v {
        Value::Object(m) if !m.is_empty() && u.ratio(1, 3)? => {
            let k = u.choose_index(m.len())?;
            let key = m.keys().nth(k).cloned().unwrap_or_default();
            m.remove(&key);
        }
        Value::Object(m) if u.ratio(1, 4)? => {
            m.insert(format!("k{}", u.int_in_range(0..=9)?), interesting_json(u)?);
        }
        Value::Array(a) if !a.is_empty() && u.ratio(1, 2)? => {
            let k = u.choose_index(a.len())?;
            if u.arbitrary()? {
                let dup = a[k].clone();
                a.push(dup);
            } else {
                a.remove(k);
            }
        }
        other => *other = interesting_json(u)?,
    }
    Ok(())
}
