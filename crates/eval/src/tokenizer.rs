//! sacrebleu's BLEU tokenizers: `13a` (mteval-v13a, the default), `intl` (mteval-v14
//! international, Unicode punctuation and symbols) and `none`.
//!
//! `13a` is hand-written over bytes (its rules only involve ASCII classes, and the inserted
//! spaces always fall on character boundaries); `intl` uses the `regex` crate with the same
//! patterns sacrebleu gives the Python `regex` module.

use std::str::FromStr;
use std::sync::OnceLock;

use regex::Regex;

use crate::error::EvalError;
use crate::text::py_split;

/// Which tokenizer BLEU applies before counting n-grams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BleuTokenizer {
    /// mteval-v13a, sacrebleu's default.
    #[default]
    Tok13a,
    /// mteval-v14 international tokenization (`tok:intl`).
    Intl,
    /// No tokenization: split on whitespace only.
    None,
}

impl BleuTokenizer {
    /// The name used in sacrebleu's signature (`tok:13a`).
    pub fn signature(self) -> &'static str {
        match self {
            Self::Tok13a => "13a",
            Self::Intl => "intl",
            Self::None => "none",
        }
    }

    /// Tokenize one (already lowercased and right-stripped) line, writing the tokens joined
    /// by single spaces into `out`. `scratch` is reused between calls.
    pub fn tokenize_into(self, line: &str, out: &mut String, scratch: &mut Scratch) {
        out.clear();
        match self {
            Self::Tok13a => tokenize_13a(line, out, scratch),
            Self::Intl => {
                let r = intl_regexes();
                let a = r[0].replace_all(line, "$1 $2 ");
                let b = r[1].replace_all(&a, " $1 $2");
                let c = r[2].replace_all(&b, " $1 ");
                join_words(&c, out);
            }
            Self::None => out.push_str(line),
        }
    }

    /// Convenience: tokenize into a new string.
    pub fn tokenize(self, line: &str) -> String {
        let mut out = String::new();
        self.tokenize_into(line, &mut out, &mut Scratch::default());
        out
    }
}

impl FromStr for BleuTokenizer {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self, EvalError> {
        match s {
            "13a" => Ok(Self::Tok13a),
            "intl" => Ok(Self::Intl),
            "none" => Ok(Self::None),
            _ => Err(EvalError::UnknownOption {
                what: "BLEU tokenizer",
                value: s.to_owned(),
                expected: "13a, intl, none",
            }),
        }
    }
}

/// Reusable buffers for tokenization.
#[derive(Debug, Default)]
pub struct Scratch {
    a: Vec<u8>,
    b: Vec<u8>,
}

fn intl_regexes() -> &'static [Regex; 3] {
    static RE: OnceLock<[Regex; 3]> = OnceLock::new();
    RE.get_or_init(|| {
        [r"(\P{N})(\p{P})", r"(\p{P})(\P{N})", r"(\p{S})"]
            .map(|p| Regex::new(p).expect("static intl tokenizer pattern compiles"))
    })
}

/// Python's ASCII whitespace: `\t\n\v\f\r`, the separators `\x1c..\x1f`, and space.
#[inline]
fn is_py_ascii_space(b: u8) -> bool {
    matches!(b, b'\t'..=b'\r' | 0x1c..=0x20)
}

/// Python `' '.join(s.split())` appended to `out`.
fn join_words(s: &str, out: &mut String) {
    if s.is_ascii() {
        let bytes = s.as_bytes();
        let mut start = None;
        for (i, &b) in bytes.iter().enumerate() {
            match (is_py_ascii_space(b), start) {
                (false, None) => start = Some(i),
                (true, Some(st)) => {
                    if !out.is_empty() {
                        out.push(' ');
                    }
                    out.push_str(&s[st..i]);
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(st) = start {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&s[st..]);
        }
        return;
    }
    for (i, w) in py_split(s).enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(w);
    }
}

/// `[\{-\~\[-\` -\&\(-\+\:-\@\/]`: ASCII punctuation and space, except `'`, `,`, `-`, `.`.
const fn split_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        t[b] =
            matches!(c, b'{'..=b'~' | b'['..=b'`' | b' '..=b'&' | b'('..=b'+' | b':'..=b'@' | b'/');
        b += 1;
    }
    t
}
static SPLIT: [bool; 256] = split_table();

#[inline]
fn is_dot_comma(b: u8) -> bool {
    b == b'.' || b == b','
}

/// mteval-v13a. The four regex substitutions of sacrebleu run as four passes with Python's
/// leftmost, non-overlapping match semantics; passes 2-4 copy the text between candidate
/// positions in bulk. Spaces are not padded in pass 1 (sacrebleu turns ' ' into '   '): the
/// neighbours every later rule inspects are spaces either way, and runs of spaces collapse.
fn tokenize_13a(line: &str, out: &mut String, s: &mut Scratch) {
    // Language-independent part (sequential replaces, as sacrebleu does them).
    let mut owned;
    let mut line = line;
    if line.contains("<skipped>") || line.contains('\n') {
        owned = line
            .replace("<skipped>", "")
            .replace("-\n", "")
            .replace('\n', " ");
        line = &owned;
    }
    if line.contains('&') {
        owned = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
        line = &owned;
    }
    let src = line.as_bytes();
    // Pass 1 on f' {line} ': isolate most ASCII punctuation.
    let a = &mut s.a;
    a.clear();
    a.reserve(src.len() * 2 + 2);
    a.push(b' ');
    let mut copied = 0;
    for (i, &c) in src.iter().enumerate() {
        if c != b' ' && SPLIT[c as usize] {
            a.extend_from_slice(&src[copied..i]);
            a.extend_from_slice(&[b' ', c, b' ']);
            copied = i + 1;
        }
    }
    a.extend_from_slice(&src[copied..]);
    a.push(b' ');
    let b = &mut s.b;
    let has_dot = a.iter().any(|&c| is_dot_comma(c));
    if has_dot {
        // Pass 2: ([^0-9])([\.,]) -> '\1 \2 '
        b.clear();
        let (mut copied, mut last_end) = (0, 0);
        for j in 1..a.len() {
            if is_dot_comma(a[j]) && j > last_end && !a[j - 1].is_ascii_digit() {
                b.extend_from_slice(&a[copied..j]);
                b.extend_from_slice(&[b' ', a[j], b' ']);
                copied = j + 1;
                last_end = j + 1;
            }
        }
        b.extend_from_slice(&a[copied..]);
        // Pass 3: ([\.,])([^0-9]) -> ' \1 \2'
        a.clear();
        let (mut copied, mut last_end) = (0, 0);
        for j in 0..b.len().saturating_sub(1) {
            if is_dot_comma(b[j]) && j >= last_end && !b[j + 1].is_ascii_digit() {
                a.extend_from_slice(&b[copied..j]);
                a.extend_from_slice(&[b' ', b[j], b' ', b[j + 1]]);
                copied = j + 2;
                last_end = j + 2;
            }
        }
        a.extend_from_slice(&b[copied..]);
    }
    // Pass 4: ([0-9])(-) -> '\1 \2 '
    let text: &[u8] = if a.contains(&b'-') {
        b.clear();
        let mut copied = 0;
        for j in 1..a.len() {
            if a[j] == b'-' && a[j - 1].is_ascii_digit() {
                b.extend_from_slice(&a[copied..j]);
                b.extend_from_slice(b" - ");
                copied = j + 1;
            }
        }
        b.extend_from_slice(&a[copied..]);
        b
    } else {
        a
    };
    // Spaces were only inserted next to ASCII bytes, so the text is still valid UTF-8.
    match std::str::from_utf8(text) {
        Ok(t) => join_words(t, out),
        Err(_) => join_words(&String::from_utf8_lossy(text), out),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tok13a_known_cases() {
        let t = BleuTokenizer::Tok13a;
        assert_eq!(t.tokenize("Hello, world!"), "Hello , world !");
        assert_eq!(
            t.tokenize("It costs $1,234.50 (approx.)"),
            "It costs $ 1,234.50 ( approx . )"
        );
        assert_eq!(t.tokenize("pages 3-4 and e-mail"), "pages 3 - 4 and e-mail");
        assert_eq!(t.tokenize("a &amp;lt; b"), "a < b");
        assert_eq!(t.tokenize("don't"), "don't");
    }

    #[test]
    fn intl_splits_unicode_punctuation() {
        assert_eq!(
            BleuTokenizer::Intl.tokenize("«Grüße»—ja! 3.5€"),
            "« Grüße » — ja ! 3.5 €"
        );
    }

    #[test]
    fn parse_names() {
        assert_eq!(
            "intl".parse::<BleuTokenizer>().ok(),
            Some(BleuTokenizer::Intl)
        );
        assert!(matches!(
            "moses".parse::<BleuTokenizer>(),
            Err(EvalError::UnknownOption { .. })
        ));
    }
}
