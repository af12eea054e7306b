//! The pre-tokenizers of byte-level BPE tokenizers, as hand-written scanners.
//!
//! [`gpt2`] finds the pieces `tokenizers`' `ByteLevel` pre-tokenizer finds with GPT-2's regex
//! `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` (oniguruma,
//! leftmost alternative first, greedy with backtracking). Every character is matched by one of
//! the alternatives, so the pieces tile the text and a match always starts where the previous one
//! ended. At a position the first alternative that matches wins:
//! - `'` followed by `s`, `t`, `m`, `d` (2 bytes) or `re`, `ve`, `ll` (3 bytes), lowercase only;
//! - an optional ASCII space, then a maximal run of one class (letters, numbers, or "other":
//!   neither letter, number nor white space), the class being that of the character after the
//!   space;
//! - a white-space run: `\s+(?!\S)` takes the whole run when it ends the text, else the run
//!   without its last character (which then prefixes the next piece, or stands alone if it is not
//!   a space) when the run has at least two characters; a single white-space character before a
//!   non-space falls through to the last alternative `\s+` and is a piece of its own.
//!
//! `Digits` (`individual_digits` or not) splits around `char::is_numeric` characters first, and
//! the regex then runs on each part on its own (lookahead stops at the part's end), as the
//! `Sequence` pre-tokenizer does.

use super::classes::{Class, Classes};

/// A supported pre-tokenizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PreTokenizer {
    /// `ByteLevel { add_prefix_space: false, use_regex: true }`.
    ByteLevel,
    /// `Sequence [Digits { individual_digits }, ByteLevel { add_prefix_space: false, use_regex: true }]`.
    DigitsThenByteLevel { individual: bool },
    /// `Sequence [Split(LLAMA3 or QWEN2, Isolated), ByteLevel { add_prefix_space: false,
    /// use_regex: false }]`: Llama 3's regex (numbers in runs of up to 3) or Qwen 2's (1).
    Llama3 { max_digits: usize },
}

/// Llama 3's split regex, as `tokenizer.json` and kiln-models' GGUF tokenizer write it.
pub(crate) const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2's: Llama 3's with single numbers.
pub(crate) const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl PreTokenizer {
    /// Calls `piece(start, end)` for every piece of `text`, in order.
    pub(crate) fn split(self, text: &str, classes: &Classes, piece: &mut impl FnMut(usize, usize)) {
        match self {
            PreTokenizer::ByteLevel => gpt2(text, 0, classes, piece),
            PreTokenizer::Llama3 { max_digits } => llama3(text, max_digits, classes, piece),
            PreTokenizer::DigitsThenByteLevel { individual } => {
                let mut start = 0;
                let mut iter = text.char_indices().peekable();
                while let Some((i, c)) = iter.next() {
                    if !c.is_numeric() {
                        continue;
                    }
                    let mut end = i + c.len_utf8();
                    if !individual {
                        while let Some(&(j, d)) = iter.peek() {
                            if !d.is_numeric() {
                                break;
                            }
                            end = j + d.len_utf8();
                            iter.next();
                        }
                    }
                    if start < i {
                        gpt2(&text[start..i], start, classes, piece);
                    }
                    gpt2(&text[i..end], i, classes, piece);
                    start = end;
                }
                if start < text.len() {
                    gpt2(&text[start..], start, classes, piece);
                }
            }
        }
    }
}

/// The character starting at byte `i` of `s` (which must be a boundary) and its length.
#[inline]
fn char_at(s: &str, i: usize) -> Option<(char, usize)> {
    let b = *s.as_bytes().get(i)?;
    if b < 0x80 {
        return Some((char::from(b), 1));
    }
    let c = s.get(i..)?.chars().next()?;
    Some((c, c.len_utf8()))
}

/// End of the maximal run of `class` starting at byte `i`.
#[inline]
fn run_end(s: &str, mut i: usize, class: Class, classes: &Classes) -> usize {
    while let Some((c, n)) = char_at(s, i) {
        if classes.of(c) != class {
            break;
        }
        i += n;
    }
    i
}

/// The end of the white-space piece starting at `i` (a white-space character) by
/// `\s+(?!\S)|\s+`: the whole run when it ends the text, else the run without its last
/// character when it has two or more, else the one character.
#[inline]
fn space_end(s: &str, i: usize, n: usize, classes: &Classes) -> usize {
    let end = run_end(s, i, Class::Space, classes);
    if end < s.len() && end - i > n {
        let mut last = end - 1;
        while !s.is_char_boundary(last) {
            last -= 1;
        }
        if last > i {
            return last;
        }
    }
    end
}

/// Llama 3's (and Qwen 2's) regex over `s`. At a position the first alternative that matches:
/// - `(?i:'s|'t|'re|'ve|'m|'ll|'d)`, the letters compared ignoring case as the engine does;
/// - `[^\r\n\p{L}\p{N}]?\p{L}+`: a letter run, or one character that is neither a line break,
///   a letter nor a number followed by a letter run;
/// - `\p{N}{1,3}` (`\p{N}` for Qwen 2);
/// - ` ?[^\s\p{L}\p{N}]+[\r\n]*`: an optional space, an "other" run, the line breaks after it;
/// - `\s*[\r\n]+`: a white-space run up to its last line break;
/// - `\s+(?!\S)|\s+` as in GPT-2's.
pub(crate) fn llama3(
    s: &str,
    max_digits: usize,
    classes: &Classes,
    piece: &mut impl FnMut(usize, usize),
) {
    let bytes = s.as_bytes();
    let mut i = 0;
    while let Some((c, n)) = char_at(s, i) {
        if c == '\''
            && let Some(len) = contraction_ignoring_case(s, i + 1, classes)
        {
            piece(i, i + 1 + len);
            i += 1 + len;
            continue;
        }
        let class = classes.of(c);
        let end = match class {
            Class::Letter => run_end(s, i, Class::Letter, classes),
            _ if c != '\r'
                && c != '\n'
                && class != Class::Number
                && char_at(s, i + n).is_some_and(|(d, _)| classes.of(d) == Class::Letter) =>
            {
                run_end(s, i + n, Class::Letter, classes)
            }
            Class::Number => {
                let mut end = i + n;
                for _ in 1..max_digits {
                    match char_at(s, end) {
                        Some((d, m)) if classes.of(d) == Class::Number => end += m,
                        _ => break,
                    }
                }
                end
            }
            _ => {
                let start = if c == ' ' { i + 1 } else { i };
                match char_at(s, start) {
                    Some((d, _)) if classes.of(d) == Class::Other => {
                        let mut end = run_end(s, start, Class::Other, classes);
                        while matches!(bytes.get(end), Some(b'\r' | b'\n')) {
                            end += 1;
                        }
                        end
                    }
                    // White space (`c` is not "other" here).
                    _ => {
                        let run = run_end(s, i, Class::Space, classes);
                        match bytes[i..run]
                            .iter()
                            .rposition(|&b| b == b'\r' || b == b'\n')
                        {
                            Some(p) => i + p + 1,
                            None => space_end(s, i, n, classes),
                        }
                    }
                }
            }
        };
        piece(i, end);
        i = end;
    }
}

/// Length of `s|t|re|ve|m|ll|d` at `i` ignoring case, if one starts there.
#[inline]
fn contraction_ignoring_case(s: &str, i: usize, classes: &Classes) -> Option<usize> {
    let (a, m) = char_at(s, i)?;
    let is = |c: char, letter: char| classes.folds_to(c, letter);
    if ['s', 't', 'm', 'd'].iter().any(|&l| is(a, l)) {
        return Some(m);
    }
    let (b, k) = char_at(s, i + m)?;
    let two =
        (is(a, 'r') && is(b, 'e')) || (is(a, 'v') && is(b, 'e')) || (is(a, 'l') && is(b, 'l'));
    two.then_some(m + k)
}

/// GPT-2's regex over `s`; pieces are reported shifted by `base`.
pub(crate) fn gpt2(s: &str, base: usize, classes: &Classes, piece: &mut impl FnMut(usize, usize)) {
    let bytes = s.as_bytes();
    let mut i = 0;
    while let Some((c, n)) = char_at(s, i) {
        // 's 't 're 've 'm 'll 'd
        if c == '\'' {
            let contraction = match (bytes.get(i + 1), bytes.get(i + 2)) {
                (Some(b's' | b't' | b'm' | b'd'), _) => 2,
                (Some(b'r' | b'v'), Some(b'e')) | (Some(b'l'), Some(b'l')) => 3,
                _ => 0,
            };
            if contraction > 0 {
                piece(base + i, base + i + contraction);
                i += contraction;
                continue;
            }
        }
        let class = classes.of(c);
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: an optional space, then a run.
        if c == ' '
            && let Some((next, _)) = char_at(s, i + 1)
        {
            let next_class = classes.of(next);
            if next_class != Class::Space {
                let end = run_end(s, i + 1, next_class, classes);
                piece(base + i, base + end);
                i = end;
                continue;
            }
        }
        if class != Class::Space {
            let end = run_end(s, i + n, class, classes);
            piece(base + i, base + end);
            i = end;
            continue;
        }
        // White space: `\s+(?!\S)` backs off one character before a non-space; `\s+` otherwise.
        let end = space_end(s, i, n, classes);
        piece(base + i, base + end);
        i = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(pre: PreTokenizer, s: &str) -> Vec<&str> {
        let classes = Classes::get().expect("classes");
        let mut out = Vec::new();
        pre.split(s, classes, &mut |a, b| out.push(&s[a..b]));
        out
    }

    #[test]
    fn gpt2_pieces() {
        let p = |s| pieces(PreTokenizer::ByteLevel, s);
        assert_eq!(
            p("Hello world's 12 cats!!  ok\n\n x"),
            [
                "Hello", " world", "'s", " 12", " cats", "!!", " ", " ok", "\n\n", " x"
            ]
        );
        assert_eq!(p("a   b"), ["a", "  ", " b"]);
        assert_eq!(p("a \n\nb"), ["a", " \n", "\n", "b"]);
        assert_eq!(p("a\t b  "), ["a", "\t", " b", "  "]);
        assert_eq!(
            p("it'S !'s x'll 're"),
            ["it", "'", "S", " !'", "s", " x", "'ll", " '", "re"]
        );
        assert_eq!(
            p("北海道 83,424km²"),
            ["北海道", " 83", ",", "424", "km", "²"]
        );
        assert_eq!(p(""), Vec::<&str>::new());
    }

    #[test]
    fn llama3_pieces() {
        let p = |s| pieces(PreTokenizer::Llama3 { max_digits: 3 }, s);
        assert_eq!(
            p("Hello world's 12345 cats!!\n\nok  \n x"),
            [
                "Hello", " world", "'s", " ", "123", "45", " cats", "!!\n\n", "ok", "  \n", " x"
            ]
        );
        assert_eq!(
            p("IT'S it'Re \"quoted\" a\tb"),
            ["IT", "'S", " it", "'Re", " \"", "quoted", "\"", " a", "\tb"]
        );
        assert_eq!(p("a\n b  "), ["a", "\n", " b", "  "]);
        assert_eq!(p("x'\u{17f} y"), ["x", "'\u{17f}", " y"]);
        let q = |s| pieces(PreTokenizer::Llama3 { max_digits: 1 }, s);
        assert_eq!(q("v12 ."), ["v", "1", "2", " ."]);
    }

    #[test]
    fn digits_split_before_the_regex() {
        let ind = |s| pieces(PreTokenizer::DigitsThenByteLevel { individual: true }, s);
        assert_eq!(ind("a  12b"), ["a", "  ", "1", "2", "b"]);
        let cont = |s| pieces(PreTokenizer::DigitsThenByteLevel { individual: false }, s);
        assert_eq!(cont("a  12b 3"), ["a", "  ", "12", "b", " ", "3"]);
    }
}
