//! Bad input: each case gives a typed error naming the file/line/example, or the documented
//! behaviour of the reference tools.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use kiln_eval::refs::read_corpus;
use kiln_eval::{Bleu, Chrf, EvalError, Rouge};

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).expect("write fixture file");
    p
}

#[test]
fn mismatched_line_counts_name_the_reference_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hyp = write(&dir, "hyp.txt", b"a\nb\nc\n");
    let good = write(&dir, "ref1.txt", b"a\nb\nc\n");
    let short = write(&dir, "ref2.txt", b"a\nb\n");
    match read_corpus(&hyp, &[good.clone(), short.clone()]) {
        Err(EvalError::LengthMismatch {
            what,
            expected: 3,
            found: 2,
        }) => assert!(what.ends_with("ref2.txt")),
        other => panic!("expected LengthMismatch, got {other:?}"),
    }
    let (h, r) = read_corpus(&hyp, &[good]).expect("good corpus");
    assert_eq!((h.len(), r[2][0].as_str()), (3, "c"));
}

#[test]
fn mismatched_counts_in_the_api_are_errors_not_truncation() {
    // sacrebleu's Python API zips (silently truncating); its CLI refuses. We refuse.
    let hyps = ["a b", "c d"];
    let refs = [["a b"]];
    assert!(matches!(
        Bleu::default().corpus_score(&hyps, &refs),
        Err(EvalError::LengthMismatch {
            expected: 2,
            found: 1,
            ..
        })
    ));
    assert!(matches!(
        Chrf::default().corpus_score(&hyps, &refs),
        Err(EvalError::LengthMismatch { .. })
    ));
    assert!(matches!(
        Rouge::default().corpus_score(&hyps, &refs),
        Err(EvalError::LengthMismatch { .. })
    ));
}

#[test]
fn empty_files_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = write(&dir, "empty.txt", b"");
    let one = write(&dir, "one.txt", b"x\n");
    match read_corpus(&empty, std::slice::from_ref(&one)) {
        Err(EvalError::Empty { what }) => assert!(what.ends_with("empty.txt")),
        other => panic!("expected Empty, got {other:?}"),
    }
    match read_corpus(&one, &[empty]) {
        Err(EvalError::Empty { what }) => assert!(what.ends_with("empty.txt")),
        other => panic!("expected Empty, got {other:?}"),
    }
    assert!(matches!(
        read_corpus(&one, &[]),
        Err(EvalError::Empty { .. })
    ));
    let none: [&str; 0] = [];
    let no_refs: [[&str; 1]; 0] = [];
    assert!(matches!(
        Bleu::default().corpus_score(&none, &no_refs),
        Err(EvalError::Empty { .. })
    ));
}

#[test]
fn a_file_of_blank_lines_is_not_empty() {
    // Blank lines are segments (empty hypotheses), as in sacrebleu: BLEU is 0, not an error.
    let dir = tempfile::tempdir().expect("tempdir");
    let hyp = write(&dir, "hyp.txt", b"\n\n");
    let r = write(&dir, "ref.txt", b"a b\nc\n");
    let (h, refs) = read_corpus(&hyp, &[r]).expect("corpus");
    let s = Bleu::default().corpus_score(&h, &refs).expect("bleu");
    assert_eq!((s.score, s.sys_len, s.ref_len, s.bp), (0.0, 0, 3, 0.0));
}

#[test]
fn non_utf8_names_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hyp = write(&dir, "hyp.txt", b"fine\nalso fine\n");
    let bad = write(&dir, "latin1.txt", b"ok\ncaf\xe9\n");
    match read_corpus(&hyp, &[bad]) {
        Err(EvalError::NotUtf8 {
            path,
            line: 2,
            byte: 3,
        }) => assert!(path.ends_with("latin1.txt")),
        other => panic!("expected NotUtf8, got {other:?}"),
    }
}

#[test]
fn varying_reference_counts() {
    // Per-example lists of different lengths are allowed (sacrebleu's None placeholders) and
    // sign as nrefs:var; an example with no reference at all is an error naming it.
    let hyps = ["a b c", "d e"];
    let varying = vec![vec!["a b c"], vec!["d e", "d f"]];
    let s = Bleu::default().corpus_score(&hyps, &varying).expect("bleu");
    assert!(s.signature.starts_with("nrefs:var|"));
    let missing = vec![vec!["a b c"], vec![]];
    assert!(matches!(
        Bleu::default().corpus_score(&hyps, &missing),
        Err(EvalError::NoReference { index: 1 })
    ));
    assert!(matches!(
        Rouge::default().corpus_score(&hyps, &missing),
        Err(EvalError::NoReference { index: 1 })
    ));
    let none: [&str; 0] = [];
    assert!(matches!(
        Bleu::sentence().sentence_score("a", &none),
        Err(EvalError::NoReference { .. })
    ));
}
