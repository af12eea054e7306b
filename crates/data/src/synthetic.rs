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

/// Pieces [`adversarial_text`] strings are made of: contractions and apostrophes, white space of
/// every kind, numbers in several scripts, words in many scripts, combining marks, punctuation,
/// emoji (modifiers, ZWJ sequences, flags), special tokens with near misses, control characters
/// and letters that fold to ASCII ones (long s, Kelvin sign).
const ADVERSARIAL: &[&str] = &[
    "'s",
    "'t",
    "'re",
    "'ve",
    "'m",
    "'ll",
    "'d",
    "'S",
    "'T",
    "'RE",
    "''",
    "'",
    "\u{2019}s",
    "n't",
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\r\n",
    "\n\n",
    " \n",
    "\u{a0}",
    "\u{3000}",
    "\u{2028}",
    "\u{85}",
    "\u{b}",
    "\u{c}",
    "\u{200b}",
    "\u{feff}",
    "\u{1680}",
    "0",
    "7",
    "42",
    "2020",
    "3.14",
    "1,000",
    "\u{663}",
    "\u{ff11}\u{ff12}",
    "\u{b2}",
    "\u{216b}",
    "\u{bd}",
    "\u{e53}",
    "hello",
    "World",
    "the",
    "Tokyo",
    "caf\u{e9}",
    "na\u{ef}ve",
    "Stra\u{df}e",
    "\u{c6}\u{d8}\u{c5}",
    "\u{3b1}\u{3b2}\u{3b3}",
    "\u{395}\u{3bb}\u{3bb}\u{3ac}\u{3b4}\u{3b1}",
    "\u{43c}\u{43e}\u{441}\u{43a}\u{432}\u{430}",
    "\u{5317}\u{6d77}\u{9053}",
    "\u{6771}\u{4eac}",
    "\u{d55c}\u{ad6d}\u{c5b4}",
    "\u{627}\u{644}\u{639}\u{631}\u{628}\u{64a}\u{629}",
    "\u{939}\u{93f}\u{928}\u{94d}\u{926}\u{940}",
    "\u{e44}\u{e17}\u{e22}",
    "\u{5e2}\u{5d1}",
    "\u{fb01}",
    "e\u{301}",
    "\u{301}",
    ".",
    ",",
    "!?",
    "...",
    "\u{2014}",
    "\u{2013}",
    "\u{ab}\u{bb}",
    "\u{201c}",
    "\u{201d}",
    "(",
    ")",
    "{",
    "}",
    "<",
    ">",
    "|",
    "$",
    "%",
    "&",
    "@",
    "#",
    "\\",
    "/",
    "*",
    "km\u{b2}",
    "\u{1f600}",
    "\u{1f44d}\u{1f3fd}",
    "\u{1f468}\u{200d}\u{1f469}\u{200d}\u{1f467}",
    "\u{1f1ef}\u{1f1f5}",
    "\u{2764}\u{fe0f}",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|im_",
    "|>",
    "<s>",
    "</s>",
    "<|eot_id|>",
    "[INST]",
    "<start_of_turn>",
    "\u{4}",
    "\u{13}",
    "\r",
    "\r\n\r\n",
    "'Ll",
    "'\u{17f}",
    "\u{212a}",
    "\u{0}",
];

/// A string of `units` random pieces for tokenizer equivalence tests (deterministic in `seed`):
/// mostly `ADVERSARIAL` pieces glued together, one in eight a random scalar value (half of
/// them from the BMP, half from the whole range; controls, private use and unassigned ones
/// included).
pub fn adversarial_text(seed: u64, units: usize) -> String {
    let mut rng = SplitMix(seed ^ 0x005E_ED0F_7E57);
    let mut s = String::new();
    for _ in 0..units {
        if rng.below(8) == 0 {
            let range = if rng.below(2) == 0 {
                0x1_0000
            } else {
                0x11_0000
            };
            let c = loop {
                if let Some(c) = char::from_u32(rng.below(range) as u32) {
                    break c;
                }
            };
            s.push(c);
        } else {
            s.push_str(ADVERSARIAL[rng.below(ADVERSARIAL.len() as u64) as usize]);
        }
    }
    s
}
