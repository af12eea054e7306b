//! Character classes of the pre-tokenizer regexes, read off the regex engine itself.
//!
//! GPT-2's `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` and
//! Llama 3's only ask of a character whether it is a letter (`\p{L}`), a number (`\p{N}`), white
//! space (`\s`) or none of them, and (Llama 3's `(?i:'s|'t|...)`) whether it equals one of
//! `s t r e v m l d` ignoring case. Rather than carrying Unicode tables that could disagree with
//! the engine `tokenizers` was built with (its Unicode version, its notion of `\s`, its case
//! folding), the answers come from that engine ([`tokenizers::utils::SysRegex`]): ASCII up
//! front, and each block of 256 code points the first time a character of it is seen, by running
//! `\p{L}+`, `\p{N}+` and `\s+` over the block. The three classes are disjoint in Unicode
//! (white space is `Zs`, `Zl`, `Zp` or `Cc`); a test checks it over every block.

use std::sync::OnceLock;

use tokenizers::utils::SysRegex;

/// What the regex sees in a character.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub(crate) enum Class {
    Other = 0,
    Letter = 1,
    Number = 2,
    Space = 3,
}

/// The letters of the contractions `'s 't 're 've 'm 'll 'd`.
pub(crate) const CONTRACTION_LETTERS: [char; 8] = ['s', 't', 'r', 'e', 'v', 'm', 'l', 'd'];

const BLOCKS: usize = 0x11_0000 / 256;

/// Class of every `char` (ASCII in a table, other blocks filled on first use) and case folds.
pub(crate) struct Classes {
    ascii: [Class; 128],
    blocks: Vec<OnceLock<Box<[Class; 256]>>>,
    classes: [(Class, SysRegex); 3],
    /// Per contraction letter: `(?i:letter)` and its answer for every ASCII character.
    folds: Vec<(SysRegex, [bool; 128])>,
}

/// The `Class` of each character of `s` (which starts at code point `first`), by the engine.
fn classify(classes: &[(Class, SysRegex)], s: &str, first: u32, out: &mut [Class]) {
    for (class, re) in classes {
        for (start, end) in re.find_iter(s) {
            for c in s[start..end].chars() {
                let slot = &mut out[(c as u32 - first) as usize];
                if *slot == Class::Other {
                    *slot = *class;
                }
            }
        }
    }
}

/// Whether `re` matches exactly the character `c`.
fn matches_char(re: &SysRegex, c: char) -> bool {
    let mut buf = [0; 4];
    let s = c.encode_utf8(&mut buf);
    re.find_iter(s).next() == Some((0, s.len()))
}

impl Classes {
    /// The engine's classes; `None` if a pattern does not compile (then the caller uses
    /// `tokenizers` itself).
    pub(crate) fn get() -> Option<&'static Classes> {
        static TABLE: OnceLock<Option<Classes>> = OnceLock::new();
        TABLE.get_or_init(Classes::from_engine).as_ref()
    }

    fn from_engine() -> Option<Self> {
        let classes = [
            (Class::Letter, SysRegex::new(r"\p{L}+").ok()?),
            (Class::Number, SysRegex::new(r"\p{N}+").ok()?),
            (Class::Space, SysRegex::new(r"\s+").ok()?),
        ];
        let ascii_text: String = (0u8..128).map(char::from).collect();
        let mut ascii = [Class::Other; 128];
        classify(&classes, &ascii_text, 0, &mut ascii);
        let folds = CONTRACTION_LETTERS
            .iter()
            .map(|l| {
                let re = SysRegex::new(&format!("(?i:{l})")).ok()?;
                let table = std::array::from_fn(|b| matches_char(&re, char::from(b as u8)));
                Some((re, table))
            })
            .collect::<Option<_>>()?;
        Some(Self {
            ascii,
            blocks: (0..BLOCKS).map(|_| OnceLock::new()).collect(),
            classes,
            folds,
        })
    }

    #[inline]
    pub(crate) fn of(&self, c: char) -> Class {
        let u = c as usize;
        if u < 128 {
            self.ascii[u]
        } else {
            self.block(u >> 8)[u & 0xFF]
        }
    }

    fn block(&self, b: usize) -> &[Class; 256] {
        self.blocks[b].get_or_init(|| {
            let first = (b as u32) << 8;
            let text: String = (first..first + 256).filter_map(char::from_u32).collect();
            let mut out = Box::new([Class::Other; 256]);
            classify(&self.classes, &text, first, &mut out[..]);
            out
        })
    }

    /// Whether `c` equals `letter` (one of [`CONTRACTION_LETTERS`]) ignoring case, as the
    /// engine's `(?i:...)` sees it.
    #[inline]
    pub(crate) fn folds_to(&self, c: char, letter: char) -> bool {
        let Some((re, ascii)) = CONTRACTION_LETTERS
            .iter()
            .position(|&l| l == letter)
            .and_then(|i| self.folds.get(i))
        else {
            return false;
        };
        match ascii.get(c as usize) {
            Some(&hit) => hit,
            None => matches_char(re, c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_of_known_characters() {
        let c = Classes::get().expect("classes");
        for (ch, class) in [
            ('a', Class::Letter),
            ('Z', Class::Letter),
            ('7', Class::Number),
            (' ', Class::Space),
            ('\n', Class::Space),
            ('\'', Class::Other),
            ('-', Class::Other),
            ('é', Class::Letter),
            ('北', Class::Letter),
            ('²', Class::Number),
            ('Ⅻ', Class::Number),
            ('\u{3000}', Class::Space),
            ('\u{a0}', Class::Space),
            ('\u{301}', Class::Other),
            ('😀', Class::Other),
            ('\u{10ffff}', Class::Other),
        ] {
            assert_eq!(c.of(ch), class, "{ch:?} U+{:04X}", ch as u32);
        }
        // Long s folds to s; nothing else but the two cases for the other letters.
        let all: Vec<char> = (0..=char::MAX as u32).filter_map(char::from_u32).collect();
        for letter in CONTRACTION_LETTERS {
            let folds: Vec<char> = all
                .iter()
                .copied()
                .filter(|&ch| c.folds_to(ch, letter))
                .collect();
            let mut want = vec![letter.to_ascii_uppercase(), letter];
            if letter == 's' {
                want.push('\u{17f}');
            }
            assert_eq!(folds, want, "{letter}");
        }
    }

    #[test]
    fn classes_are_disjoint_in_every_block() {
        // The whole range at once (one string, one scan per class) against the blocks.
        let c = Classes::get().expect("classes");
        let all: String = (0..=char::MAX as u32).filter_map(char::from_u32).collect();
        let mut seen = vec![0u8; 0x11_0000];
        for (class, re) in &c.classes {
            for (start, end) in re.find_iter(&all) {
                for ch in all[start..end].chars() {
                    assert_eq!(seen[ch as usize], 0, "U+{:04X} in two classes", ch as u32);
                    seen[ch as usize] = *class as u8;
                }
            }
        }
        for ch in all.chars() {
            assert_eq!(c.of(ch) as u8, seen[ch as usize], "U+{:04X}", ch as u32);
        }
    }
}
