//! Synthetic chat datasets for benchmarks (deterministic, no RNG dependency).

use std::io::Write;
use std::path::Path;

use crate::error::{DataError, Result};

const WORDS: &[&str] = &[
    "the",
    "population",
    "of",
    "prefecture",
    "census",
    "in",
    "was",
    "and",
    "what",
    "area",
    "capital",
    "city",
    "larger",
    "smaller",
    "people",
    "how",
    "many",
    "lived",
    "change",
    "between",
    "Tokyo",
    "Osaka",
    "Kyoto",
    "Hokkaido",
    "Okinawa",
    "density",
    "total",
    "average",
    "rank",
    "year",
];

/// SplitMix64: a tiny, well-mixed deterministic generator.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn sentence(rng: &mut SplitMix, min: u64, max: u64) -> String {
    let n = min + rng.below(max - min + 1);
    let mut s = String::new();
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
        if rng.below(8) == 0 {
            s.push_str(&format!(" {}", rng.below(10_000_000)));
        }
    }
    s.push('.');
    s
}

/// Writes `n` `{"messages": [...]}` records: an optional system message (1 in 3), then 1–3
/// user/assistant exchanges of 5–40 and 10–80 words. Same `seed`, same file.
pub fn write_messages_jsonl(path: &Path, n: usize, seed: u64) -> Result<()> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let mut rng = SplitMix(seed);
    for _ in 0..n {
        let mut msgs = Vec::new();
        if rng.below(3) == 0 {
            msgs.push(serde_json::json!({"role": "system", "content": sentence(&mut rng, 4, 12)}));
        }
        for _ in 0..1 + rng.below(3) {
            msgs.push(serde_json::json!({"role": "user", "content": sentence(&mut rng, 5, 40)}));
            msgs.push(
                serde_json::json!({"role": "assistant", "content": sentence(&mut rng, 10, 80)}),
            );
        }
        writeln!(out, "{}", serde_json::json!({ "messages": msgs })).map_err(io)?;
    }
    out.flush().map_err(io)
}
