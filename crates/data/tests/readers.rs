//! Readers and record formats: every format, every bad-input case, the skip policy.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::PathBuf;

use kiln_data::{
    BadRecords, DataError, FieldMap, Format, Label, Message, Reader, Record, Role, Source,
};

fn write(dir: &tempfile::TempDir, name: &str, content: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(content.as_bytes()))
        .expect("write");
    path
}

fn read(path: &PathBuf) -> kiln_data::Result<Vec<Record>> {
    Reader::new(Source::from_paths(std::slice::from_ref(path))?)
        .read_all()
        .map(|(r, _)| r)
}

fn conv(list: &[(Role, &str)]) -> Record {
    Record::Conversation(list.iter().map(|(r, c)| Message::new(*r, *c)).collect())
}

#[test]
fn detects_every_format_in_jsonl() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = write(
        &dir,
        "mixed.jsonl",
        r#"{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]}
{"conversations": [{"from": "human", "value": "U"}, {"from": "gpt", "value": "A"}]}

{"instruction": "I", "input": "X", "output": "O", "system": "S"}
{"instruction": "I", "input": "", "output": "O"}
{"prompt": "P", "completion": "C"}
{"text": "T"}
{"prompt": "P", "chosen": "C", "rejected": [{"role": "assistant", "content": "R"}]}
{"text": "T", "label": 2}
{"text": "T", "label": "pos"}
"#,
    );
    let recs = read(&p).expect("read");
    assert_eq!(
        recs,
        vec![
            conv(&[
                (Role::System, "S"),
                (Role::User, "U"),
                (Role::Assistant, "A")
            ]),
            conv(&[(Role::User, "U"), (Role::Assistant, "A")]),
            conv(&[
                (Role::System, "S"),
                (Role::User, "I\n\nX"),
                (Role::Assistant, "O")
            ]),
            conv(&[(Role::User, "I"), (Role::Assistant, "O")]),
            Record::PromptCompletion {
                prompt: "P".into(),
                completion: "C".into()
            },
            Record::Text("T".into()),
            Record::Preference {
                prompt: vec![Message::new(Role::User, "P")],
                chosen: vec![Message::new(Role::Assistant, "C")],
                rejected: vec![Message::new(Role::Assistant, "R")],
            },
            Record::Classification {
                text: "T".into(),
                label: Label::Value(2.0)
            },
            Record::Classification {
                text: "T".into(),
                label: Label::Name("pos".into())
            },
        ]
    );
}

#[test]
fn json_array_csv_text_and_field_renames() {
    let dir = tempfile::tempdir().expect("tmp");
    let arr = write(
        &dir,
        "a.json",
        r#"[{"q": "U", "a": "A"}, {"q": "U2", "a": "A2"}]"#,
    );
    let fields = FieldMap::default()
        .rename("prompt", "q")
        .rename("completion", "a");
    let (recs, report) = Reader::new(Source::from_paths(&[arr]).expect("src"))
        .format(Format::PromptCompletion)
        .fields(fields)
        .read_all()
        .expect("read");
    assert_eq!(recs.len(), 2);
    assert_eq!(report.read, 2);
    let csv = write(&dir, "b.csv", "instruction,output\n\"Say, hi\",hi\n");
    assert_eq!(
        read(&csv).expect("csv"),
        vec![conv(&[(Role::User, "Say, hi"), (Role::Assistant, "hi")])]
    );
    let txt = write(&dir, "c.txt", "line one\n\nline two\n");
    assert_eq!(
        read(&txt).expect("txt"),
        vec![Record::Text("line one\n\nline two\n".into())]
    );
    let per_line = Source::with_kinds(vec![(txt, kiln_data::FileKind::Text { per_line: true })]);
    let (recs, _) = Reader::new(per_line).read_all().expect("lines");
    assert_eq!(
        recs,
        vec![
            Record::Text("line one".into()),
            Record::Text("line two".into())
        ]
    );
}

#[test]
fn glob_reads_files_in_order_and_empty_glob_fails() {
    let dir = tempfile::tempdir().expect("tmp");
    write(&dir, "2.jsonl", "{\"text\": \"b\"}\n");
    write(&dir, "1.jsonl", "{\"text\": \"a\"}\n");
    let pattern = format!("{}/*.jsonl", dir.path().display());
    let (recs, _) = Reader::open(&[pattern])
        .expect("open")
        .read_all()
        .expect("read");
    assert_eq!(
        recs,
        vec![Record::Text("a".into()), Record::Text("b".into())]
    );
    let none = format!("{}/*.parquet", dir.path().display());
    assert!(matches!(Reader::open(&[none]), Err(DataError::Glob { .. })));
    let n = kiln_data::count_lines(&dir.path().join("1.jsonl"), kiln_data::FileKind::JsonLines)
        .expect("count");
    assert_eq!(n, Some(1));
}

fn first_error(content: &str) -> String {
    let dir = tempfile::tempdir().expect("tmp");
    let p = write(&dir, "bad.jsonl", content);
    read(&p)
        .expect_err("must fail")
        .to_string()
        .replace(&dir.path().display().to_string(), "DIR")
}

#[test]
fn bad_records_name_file_line_and_field() {
    assert!(
        first_error("{\"text\": \"ok\"}\n{\"text\": \n")
            .starts_with("DIR/bad.jsonl:2: malformed JSON")
    );
    assert_eq!(
        first_error("{\"instruction\": \"I\", \"output\": 3}\n"),
        "DIR/bad.jsonl:1: field `output`: expected a string"
    );
    assert_eq!(
        first_error("{\"messages\": [{\"role\": \"user\"}]}\n"),
        "DIR/bad.jsonl:1: field `messages[0].content`: expected a string"
    );
    assert_eq!(
        first_error("{\"messages\": [{\"role\": \"narrator\", \"content\": \"x\"}]}\n"),
        "DIR/bad.jsonl:1: field `messages[0].role`: expected system, user, assistant or tool (or ShareGPT's human/gpt)"
    );
    assert_eq!(
        first_error("{\"messages\": []}\n"),
        "DIR/bad.jsonl:1: field `messages`: empty conversation"
    );
    assert!(
        first_error("{\"foo\": 1}\n")
            .contains("DIR/bad.jsonl:1: cannot detect the record format from keys [foo]")
    );
    assert_eq!(
        first_error("[1]\n"),
        "DIR/bad.jsonl:1: field `<record>`: expected a JSON object"
    );
    assert!(
        first_error("\n\n")
            .starts_with("the dataset is empty after reading and filtering (no records")
    );
    let dir = tempfile::tempdir().expect("tmp");
    let p = write(&dir, "x.jsonl", "{\"prompt\": \"P\"}\n");
    let err = Reader::new(Source::from_paths(&[p]).expect("src"))
        .format(Format::PromptCompletion)
        .read_all()
        .expect_err("missing");
    assert!(
        err.to_string()
            .ends_with("x.jsonl:1: missing field `prompt`")
            || err
                .to_string()
                .ends_with("x.jsonl:1: missing field `completion`"),
        "{err}"
    );
}

#[test]
fn skip_policy_counts_and_reports_reasons() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = write(
        &dir,
        "s.jsonl",
        "{\"text\": \"a\"}\nnot json\n{\"text\": 5}\n{\"text\": \"b\"}\n",
    );
    let (recs, report) = Reader::new(Source::from_paths(std::slice::from_ref(&p)).expect("src"))
        .policy(BadRecords::Skip)
        .read_all()
        .expect("read");
    assert_eq!(
        recs,
        vec![Record::Text("a".into()), Record::Text("b".into())]
    );
    assert_eq!(
        (report.read, report.skipped, report.reasons.len()),
        (2, 2, 2)
    );
    assert!(
        report.reasons[0].contains("s.jsonl:2: malformed JSON"),
        "{:?}",
        report.reasons
    );
    assert!(
        report.reasons[1].contains("s.jsonl:3: field `text`"),
        "{:?}",
        report.reasons
    );
    let all_bad = write(&dir, "t.jsonl", "x\ny\n");
    let err = Reader::new(Source::from_paths(&[all_bad]).expect("src"))
        .policy(BadRecords::Skip)
        .read_all()
        .expect_err("empty");
    assert!(
        err.to_string().contains("all 2 records of ")
            && err.to_string().contains("t.jsonl skipped"),
        "{err}"
    );
    assert!("drop".parse::<BadRecords>().is_err());
}

#[test]
fn malformed_json_array_and_csv_rows() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = write(&dir, "a.json", "{\"text\": \"not an array\"}");
    assert!(
        read(&p)
            .expect_err("object")
            .to_string()
            .ends_with("a.json:1: malformed JSON: expected an array of records")
    );
    let p = write(&dir, "b.csv", "text\nok\n\"a\",\"extra\"\n");
    let err = read(&p).expect_err("ragged");
    assert!(err.to_string().contains("b.csv:3: malformed CSV"), "{err}");
    let p = write(&dir, "c.xlsx", "");
    assert!(matches!(
        read(&p),
        Err(DataError::UnknownName {
            what: "file extension",
            ..
        })
    ));
    let missing = dir.path().join("nope.jsonl");
    assert!(matches!(read(&missing), Err(DataError::Io { .. })));
}

fn parquet_fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/parquet"
    ))
    .join(name)
}

#[test]
fn parquet_written_by_datasets_and_pyarrow_reads_like_jsonl() {
    let want = read(&parquet_fixture("chat.jsonl")).unwrap();
    assert_eq!(want.len(), 8);
    // `datasets.to_parquet` (snappy), and pyarrow with zstd / gzip / lz4 in row groups of 3.
    for name in [
        "chat_snappy.parquet",
        "chat_zstd.parquet",
        "chat_gzip.parquet",
        "chat_lz4.parquet",
    ] {
        let got = read(&parquet_fixture(name)).unwrap();
        assert_eq!(got, want, "{name}");
    }
    let alpaca = read(&parquet_fixture("alpaca.parquet")).unwrap();
    assert_eq!(
        alpaca[1],
        conv(&[
            (Role::User, "Add the numbers.\n\n2 and 3"),
            (Role::Assistant, "5")
        ])
    );
}

#[test]
fn broken_parquet_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(parquet_fixture("chat_zstd.parquet")).unwrap();
    let path = dir.path().join("cut.parquet");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    match read(&path) {
        Err(DataError::Malformed { at, format, .. }) => {
            assert_eq!(format, "Parquet");
            assert_eq!(at.file, path);
        }
        other => panic!("expected a Parquet error, got {other:?}"),
    }
    let path = write(&dir, "text.parquet", "not parquet at all");
    assert!(matches!(read(&path), Err(DataError::Malformed { .. })));
}

#[test]
fn endless_lines_are_refused_by_file_and_line_without_reading_them() {
    let dir = tempfile::tempdir().expect("tmp");
    // Line 2 has no end within the limit (as /dev/zero renamed .jsonl would).
    let long = "x".repeat(5000);
    let p = write(
        &dir,
        "long.jsonl",
        &format!("{{\"text\": \"a\"}}\n{{\"text\": \"{long}\"}}"),
    );
    let err = Reader::new(Source::from_paths(std::slice::from_ref(&p)).expect("src"))
        .max_record_bytes(1000)
        .read_all()
        .expect_err("too long");
    let msg = err.to_string();
    assert!(
        msg.contains("long.jsonl:2") && msg.contains("longer than 1000 bytes"),
        "{msg}"
    );
    // Skipping stops reading that file (the rest of the line is unbounded), then goes on.
    let q = write(&dir, "next.jsonl", "{\"text\": \"b\"}\n");
    let (recs, report) = Reader::new(Source::from_paths(&[p.clone(), q]).expect("src"))
        .max_record_bytes(1000)
        .policy(BadRecords::Skip)
        .read_all()
        .expect("read");
    assert_eq!(
        recs,
        vec![Record::Text("a".into()), Record::Text("b".into())]
    );
    assert_eq!(report.skipped, 1);
    // The default limit accepts it; whole-file text records are capped the same way.
    assert_eq!(read(&p).expect("default").len(), 2);
    let t = write(&dir, "doc.md", &long);
    let err = Reader::new(Source::from_paths(&[t]).expect("src"))
        .max_record_bytes(100)
        .read_all()
        .expect_err("too long");
    assert!(err.to_string().contains("doc.md:1"), "{err}");
}

/// Found by `fuzz_parquet_reader`: a Parquet file whose pages are corrupt (a region of
/// `chat_zstd.parquet` duplicated, shifting every page) looped forever under the skip policy,
/// the `parquet` crate's row iterator returning the same error on every call. The page-header
/// check now refuses it at open, naming the row group, column and page; skipping cannot step
/// over a file that does not open, so the skip policy returns the same error.
#[test]
fn corrupt_parquet_pages_end_the_file_with_an_error_naming_it() {
    let path = parquet_fixture("corrupt_pages.parquet");
    let err = read(&path).unwrap_err().to_string();
    assert!(
        err.contains(
            "corrupt_pages.parquet:0: malformed Parquet: row group 0, column \
             `\"messages.list.element.role\"`: page 1: unknown Thrift type 14"
        ),
        "{err}"
    );
    let skipped = kiln_data::Reader::open(&[path.display().to_string()])
        .unwrap()
        .policy(kiln_data::BadRecords::Skip)
        .read_all()
        .unwrap_err()
        .to_string();
    assert!(
        skipped.contains("corrupt_pages.parquet:0: malformed Parquet"),
        "{skipped}"
    );
}

/// Found by `fuzz_parquet_reader` in CI: a 1,037-byte file whose dictionary page header claims
/// millions of values made the `parquet` crate allocate 190 MB before failing. The header check
/// refuses the claim before the crate reads the page.
#[test]
fn a_dictionary_claiming_more_values_than_its_bytes_hold_is_refused() {
    let err = read(&parquet_fixture("huge_dictionary.parquet"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("huge_dictionary.parquet:0: malformed Parquet: row group 0"),
        "{err}"
    );
    assert!(err.contains("dictionary claims"), "{err}");
}

/// Data page v2, zstd, statistics, 1 KB pages, int/float/bool/null/dictionary columns beside
/// the text (pyarrow, `tools/fixtures/parquet_records.py`): every real header passes the check.
#[test]
fn parquet_with_v2_pages_and_many_column_types_reads_like_jsonl() {
    let want = read(&parquet_fixture("mixed.jsonl")).unwrap();
    assert_eq!(want.len(), 300);
    assert_eq!(read(&parquet_fixture("mixed_v2.parquet")).unwrap(), want);
}

/// Found by `fuzz_parquet_reader`: corrupt bit-packed data inside a page (its header is sound,
/// so the page-header check passes it) makes the `parquet` crate panic (`assertion failed: size
/// <= src.len()`); kiln returns an error naming the file and row.
#[test]
fn a_panic_inside_the_parquet_crate_is_an_error_naming_the_file() {
    let path = parquet_fixture("corrupt_bitpacked.parquet");
    let err = read(&path).unwrap_err().to_string();
    assert!(err.contains("corrupt_bitpacked.parquet:"), "{err}");
    assert!(
        err.contains(
            "the parquet reader failed on corrupt data (assertion failed: size <= src.len())"
        ),
        "{err}"
    );
}
