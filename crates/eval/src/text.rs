//! Text helpers that reproduce Python's string semantics, plus line-oriented file reading.
//!
//! sacrebleu and rouge-score are Python programs: `str.split()`, `str.rstrip()` and `str.lower()`
//! decide what a token is. Rust's `char::is_whitespace` differs from Python's `str.isspace` on
//! the four ASCII information separators U+001C..U+001F, which Python treats as whitespace.

use std::path::Path;

use crate::error::{EvalError, Result};

/// Python's `str.isspace` for one character.
#[inline]
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.split()` with no argument: runs of whitespace separate, no empty pieces.
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|t| !t.is_empty())
}

/// Python's `str.rstrip()` with no argument.
pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(is_py_space)
}

/// Python's `str.lower()` (full Unicode case mapping, including final sigma).
pub fn py_lower(s: &str) -> String {
    if s.is_ascii() {
        s.to_ascii_lowercase()
    } else {
        s.to_lowercase()
    }
}

/// Split file contents into lines the way Python iterates a file opened with `newline="\n"`:
/// pieces end at `\n`, a trailing piece without `\n` is a line, an empty text has no lines.
/// Each line is `rstrip()`ped as the sacrebleu command line does.
pub fn split_lines(text: &str) -> Vec<&str> {
    text.split_inclusive('\n').map(py_rstrip).collect()
}

/// Read a UTF-8 text file as one segment per line (see [`split_lines`]).
///
/// Invalid UTF-8 is an [`EvalError::NotUtf8`] naming the 1-based line, as Python's strict
/// decoding (what sacrebleu and rouge-score use) fails too.
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let bytes = e.as_bytes();
            let at = e.utf8_error().valid_up_to();
            let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
            let line_start = bytes[..at]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1);
            return Err(EvalError::NotUtf8 {
                path: path.to_path_buf(),
                line,
                byte: at - line_start,
            });
        }
    };
    Ok(split_lines(&text).into_iter().map(str::to_owned).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn python_whitespace_includes_information_separators() {
        assert_eq!(
            py_split("a\u{1f}b\u{a0}c  d\t").collect::<Vec<_>>(),
            ["a", "b", "c", "d"]
        );
        assert_eq!(py_rstrip("x \u{1c}\n"), "x");
        assert!(!is_py_space('\u{200b}'));
    }

    #[test]
    fn lines_like_python_file_iteration() {
        assert_eq!(split_lines("a\nb"), ["a", "b"]);
        assert_eq!(split_lines("a\n\n"), ["a", ""]);
        assert_eq!(split_lines("a \r\n"), ["a"]);
        assert!(split_lines("").is_empty());
    }

    #[test]
    fn final_sigma_lowercases_like_python() {
        assert_eq!(py_lower("ΟΔΟΣ ΑΒ"), "οδος αβ");
    }

    #[test]
    fn non_utf8_names_the_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("bad.txt");
        std::fs::write(&p, b"ok\nfine\nbad \xff here\n").expect("write");
        match read_lines(&p) {
            Err(EvalError::NotUtf8 { line, byte, .. }) => assert_eq!((line, byte), (3, 4)),
            other => panic!("expected NotUtf8, got {other:?}"),
        }
        let missing = dir.path().join("missing.txt");
        assert!(matches!(read_lines(&missing), Err(EvalError::Io { .. })));
    }
}
