//! Character classes of the pre-tokenizer regexes, read off the regex engine itself.
//!
//! GPT-2's `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` and
//! Llama 3's only ask of a character whether it is a letter (`\p{L}`), a number (`\p{N}`), white
//! space (`\s`) or none of them, and (Llama 3's `(?i:'s|'t|...)`) which characters equal
//! `s t r e v m l d` ignoring case. Rather than carrying Unicode tables that could disagree with
//! the engine `tokenizers` was built with (its Unicode version, its notion of `\s`, its case
//! folding), the tables are filled once per process by running that engine
//! ([`tokenizers::utils::SysRegex`]) over a string of every scalar value.

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

/// Class of every `char`: a direct table for ASCII, 256-character blocks (deduplicated) above.
pub(crate) struct Classes {
    ascii: [Class; 128],
    index: Vec<u16>,
    blocks: Vec<[Class; 256]>,
    /// For each letter of [`CONTRACTION_LETTERS`], the characters equal to it ignoring case.
    folds: [Vec<char>; 8],
}

/// The letters of the contractions `'s 't 're 've 'm 'll 'd`.
pub(crate) const CONTRACTION_LETTERS: [char; 8] = ['s', 't', 'r', 'e', 'v', 'm', 'l', 'd'];

const BLOCKS: usize = 0x11_0000 / 256;

impl Classes {
    /// The table of this process's regex engine, built on first use (about 0.1 s); `None` if the
    /// engine's classes overlap (then the caller uses `tokenizers` itself).
    pub(crate) fn get() -> Option<&'static Classes> {
        static TABLE: OnceLock<Option<Classes>> = OnceLock::new();
        TABLE.get_or_init(Classes::from_engine).as_ref()
    }

    #[inline]
    pub(crate) fn of(&self, c: char) -> Class {
        let u = c as usize;
        if u < 128 {
            self.ascii[u]
        } else {
            self.blocks[usize::from(self.index[u >> 8])][u & 0xFF]
        }
    }

    /// Whether `c` equals `letter` (one of [`CONTRACTION_LETTERS`]) ignoring case, as the
    /// engine's `(?i:...)` sees it.
    #[inline]
    pub(crate) fn folds_to(&self, c: char, letter: char) -> bool {
        CONTRACTION_LETTERS
            .iter()
            .position(|&l| l == letter)
            .is_some_and(|i| self.folds[i].contains(&c))
    }

    fn from_engine() -> Option<Self> {
        let all: String = (0..=char::MAX as u32).filter_map(char::from_u32).collect();
        let mut table = vec![Class::Other; 0x11_0000];
        for (class, pattern) in [
            (Class::Letter, r"\p{L}+"),
            (Class::Number, r"\p{N}+"),
            (Class::Space, r"\s+"),
        ] {
            let re = SysRegex::new(pattern).ok()?;
            for (start, end) in re.find_iter(&all) {
                for c in all.get(start..end)?.chars() {
                    let slot = &mut table[c as usize];
                    if *slot != Class::Other {
                        return None;
                    }
                    *slot = class;
                }
            }
        }
        let mut ascii = [Class::Other; 128];
        ascii.copy_from_slice(&table[..128]);
        let mut seen = std::collections::HashMap::new();
        let mut blocks: Vec<[Class; 256]> = Vec::new();
        let mut index = Vec::with_capacity(BLOCKS);
        for chunk in table.chunks_exact(256) {
            let mut block = [Class::Other; 256];
            block.copy_from_slice(chunk);
            let i = *seen.entry(block).or_insert_with(|| {
                blocks.push(block);
                blocks.len() - 1
            });
            index.push(u16::try_from(i).ok()?);
        }
        let mut folds: [Vec<char>; 8] = Default::default();
        for (set, letter) in folds.iter_mut().zip(CONTRACTION_LETTERS) {
            let re = SysRegex::new(&format!("(?i:{letter})")).ok()?;
            for (start, end) in re.find_iter(&all) {
                let mut chars = all.get(start..end)?.chars();
                // One character each (a multi-character match would need another scanner).
                set.push(chars.next()?);
                if chars.next().is_some() {
                    return None;
                }
            }
        }
        Some(Self {
            ascii,
            index,
            blocks,
            folds,
        })
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
        assert_eq!(c.folds[0], ['S', 's', '\u{17f}']);
        for (set, letter) in c.folds.iter().zip(CONTRACTION_LETTERS).skip(1) {
            assert_eq!(set, &[letter.to_ascii_uppercase(), letter], "{letter}");
        }
    }
}
