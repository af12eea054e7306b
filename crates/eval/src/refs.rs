//! Shapes of reference sets and the checks shared by the corpus metrics.
//!
//! Corpus functions take `refs[i]` = the references of example `i`. Files of references come
//! as *streams* (one file per reference, one line per example); [`streams_to_examples`]
//! transposes them and, like the sacrebleu command line, refuses streams whose line count
//! differs from the hypotheses'.

use std::path::{Path, PathBuf};

use crate::error::{EvalError, Result};
use crate::text::read_lines;

/// Validate a corpus: non-empty, one reference list per hypothesis, none empty.
/// Returns the number of references per example, or `None` when it varies.
pub fn check_corpus<R: AsRef<[S]>, S>(n_hyps: usize, refs: &[R]) -> Result<Option<usize>> {
    if n_hyps == 0 {
        return Err(EvalError::Empty {
            what: "the hypotheses".into(),
        });
    }
    if refs.len() != n_hyps {
        return Err(EvalError::LengthMismatch {
            what: "the references".into(),
            expected: n_hyps,
            found: refs.len(),
        });
    }
    let mut nrefs = None;
    for (index, r) in refs.iter().enumerate() {
        let n = r.as_ref().len();
        if n == 0 {
            return Err(EvalError::NoReference { index });
        }
        nrefs = match nrefs {
            None => Some(Some(n)),
            Some(Some(m)) if m == n => Some(Some(m)),
            _ => Some(None),
        };
    }
    Ok(nrefs.flatten())
}

/// The `nrefs:` value of sacrebleu's signature: the count, or `var` when it varies.
pub fn nrefs_signature(nrefs: Option<usize>) -> String {
    nrefs.map_or_else(|| "var".to_owned(), |n| n.to_string())
}

/// Transpose reference streams (`streams[k][i]` = reference `k` of example `i`) into
/// per-example lists. `names[k]` names stream `k` in errors (a file path, say).
pub fn streams_to_examples<S: Clone>(
    n_hyps: usize,
    streams: &[Vec<S>],
    names: &[String],
) -> Result<Vec<Vec<S>>> {
    if streams.is_empty() {
        return Err(EvalError::Empty {
            what: "the list of reference files".into(),
        });
    }
    for (k, s) in streams.iter().enumerate() {
        if s.len() != n_hyps {
            let what = names
                .get(k)
                .cloned()
                .unwrap_or_else(|| format!("reference stream {k}"));
            if s.is_empty() {
                return Err(EvalError::Empty { what });
            }
            return Err(EvalError::LengthMismatch {
                what,
                expected: n_hyps,
                found: s.len(),
            });
        }
    }
    Ok((0..n_hyps)
        .map(|i| streams.iter().map(|s| s[i].clone()).collect())
        .collect())
}

/// Read a hypothesis file and one or more reference files (one segment per line, each line
/// right-stripped as the sacrebleu command line does) into per-example reference lists.
///
/// Errors name the file: unreadable ([`EvalError::Io`]), not UTF-8 ([`EvalError::NotUtf8`],
/// with the line), no lines ([`EvalError::Empty`]), or a reference file whose line count
/// differs from the hypotheses' ([`EvalError::LengthMismatch`]).
pub fn read_corpus(hyp: &Path, refs: &[PathBuf]) -> Result<(Vec<String>, Vec<Vec<String>>)> {
    let hyps = read_lines(hyp)?;
    if hyps.is_empty() {
        return Err(EvalError::Empty {
            what: hyp.display().to_string(),
        });
    }
    let streams = refs
        .iter()
        .map(|p| read_lines(p))
        .collect::<Result<Vec<_>>>()?;
    let names: Vec<String> = refs.iter().map(|p| p.display().to_string()).collect();
    let examples = streams_to_examples(hyps.len(), &streams, &names)?;
    Ok((hyps, examples))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn corpus_checks() {
        assert!(matches!(
            check_corpus::<[&str; 1], &str>(0, &[]),
            Err(EvalError::Empty { .. })
        ));
        assert!(matches!(
            check_corpus(2, &[["a"]]),
            Err(EvalError::LengthMismatch {
                expected: 2,
                found: 1,
                ..
            })
        ));
        let varying: Vec<Vec<&str>> = vec![vec!["a"], vec!["b", "c"]];
        assert_eq!(check_corpus(2, &varying).ok(), Some(None));
        let none: Vec<Vec<&str>> = vec![vec!["a"], vec![]];
        assert!(matches!(
            check_corpus(2, &none),
            Err(EvalError::NoReference { index: 1 })
        ));
        assert_eq!(nrefs_signature(Some(2)), "2");
    }

    #[test]
    fn streams_transpose_and_name_the_bad_file() {
        let s = vec![vec!["a1", "a2"], vec!["b1", "b2"]];
        let names = vec!["r1.txt".to_owned(), "r2.txt".to_owned()];
        assert_eq!(
            streams_to_examples(2, &s, &names).ok(),
            Some(vec![vec!["a1", "b1"], vec!["a2", "b2"]])
        );
        let bad = vec![vec!["a1", "a2"], vec!["b1"]];
        match streams_to_examples(2, &bad, &names) {
            Err(EvalError::LengthMismatch { what, .. }) => assert_eq!(what, "r2.txt"),
            other => panic!("expected LengthMismatch, got {other:?}"),
        }
        let empty = vec![vec!["a1", "a2"], vec![]];
        assert!(matches!(
            streams_to_examples(2, &empty, &names),
            Err(EvalError::Empty { .. })
        ));
    }
}
