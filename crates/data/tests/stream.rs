//! The streaming read → encode → pack path equals encoding records one by one.
#![allow(clippy::unwrap_used)]

mod common;

use kiln_data::{
    BadRecords, ChatTemplate, EncodeOptions, Encoded, Encoder, PackStrategy, PackedRows, Reader,
    Record, pack,
};

fn chatml() -> ChatTemplate {
    ChatTemplate::new(
        common::template("chatml"),
        Some("<|im_start|>"),
        Some("<|im_end|>"),
    )
    .expect("chatml")
}

/// An encoder truncating to 256 tokens, and the pad id.
fn encoder_256<'a>(tok: &'a tokenizers::Tokenizer, t: &'a ChatTemplate) -> (Encoder<'a>, u32) {
    let opts = EncodeOptions {
        max_len: Some(256),
        ..EncodeOptions::default()
    };
    let enc = Encoder::new(tok, Some(t), opts).expect("enc");
    (enc, tok.token_to_id("<|endoftext|>").expect("pad"))
}

#[test]
fn packed_stream_holds_every_example_in_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("d.jsonl");
    kiln_data::synthetic::write_messages_jsonl(&path, 300, 5).expect("write");
    let (tok, t) = (common::tokenizer(), chatml());
    let (enc, pad) = encoder_256(&tok, &t);
    let open = || Reader::open(&[path.display().to_string()]).expect("open");
    let mut rows = PackedRows::new(open(), &enc, 512, pad, BadRecords::Error).expect("rows");
    let rows_vec: Vec<_> = rows
        .by_ref()
        .collect::<kiln_data::Result<_>>()
        .expect("pack");
    // Unpacked reference: encode each record alone, in order.
    let (records, _) = open().read_all().expect("read");
    let mut want = Vec::new();
    for r in &records {
        if let Encoded::Kept { example, .. } = enc.encode(r).expect("encode") {
            want.push(example);
        }
    }
    let mut got = Vec::new();
    for row in &rows_vec {
        assert_eq!(row.input_ids.len(), 512);
        for seg in 1..=row.examples() {
            let idx: Vec<usize> = (0..512).filter(|&i| row.segment_ids[i] == seg).collect();
            let positions: Vec<u32> = idx.iter().map(|&i| row.position_ids[i]).collect();
            assert_eq!(positions, (0..idx.len() as u32).collect::<Vec<_>>());
            got.push(kiln_data::Example {
                input_ids: idx.iter().map(|&i| row.input_ids[i]).collect(),
                labels: idx.iter().map(|&i| row.labels[i]).collect(),
            });
        }
    }
    assert_eq!(got, want);
    let stats = rows.stats();
    assert_eq!(stats.kept, want.len());
    assert_eq!(
        stats.kept + stats.dropped_nothing_to_train + stats.dropped_too_long,
        300
    );
    assert!(
        stats.truncated > 0,
        "some synthetic records exceed 256 tokens: {stats:?}"
    );
}

#[test]
fn stream_errors_carry_location_or_are_skipped() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("d.jsonl");
    std::fs::write(
        &path,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n{\"text\": \"ok\"}\n",
    )
    .expect("write");
    let tok = common::tokenizer();
    let t = chatml();
    let enc = Encoder::new(&tok, Some(&t), EncodeOptions::default()).expect("enc");
    let open = || Reader::open(&[path.display().to_string()]).expect("open");
    let err = PackedRows::new(open(), &enc, 64, 0, BadRecords::Error)
        .expect("rows")
        .next()
        .expect("item")
        .expect_err("no answer");
    assert!(
        err.to_string()
            .ends_with("d.jsonl:1: field `messages`: no assistant message to train on"),
        "{err}"
    );
    let mut rows = PackedRows::new(open(), &enc, 64, 0, BadRecords::Skip).expect("rows");
    assert_eq!(rows.by_ref().count(), 1);
    assert_eq!(rows.report().skipped, 1);
    std::fs::write(
        &path,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
    )
    .expect("write");
    let mut rows = PackedRows::new(open(), &enc, 64, 0, BadRecords::Skip).expect("rows");
    let err = rows.next().expect("item").expect_err("empty");
    assert!(
        matches!(err, kiln_data::DataError::EmptyDataset { .. }),
        "{err}"
    );
    assert!(rows.next().is_none());
    let _ = Record::Text(String::new());
}

#[test]
fn stream_across_chunks_equals_packing_every_example() {
    // 6,000 lines (three chunks and a bit) with bad ones at 3,001 (an empty conversation) and
    // 5,000 (malformed JSON).
    let dir = tempfile::tempdir().expect("tmp");
    let good = dir.path().join("good.jsonl");
    kiln_data::synthetic::write_messages_jsonl(&good, 5998, 9).expect("write");
    let text = std::fs::read_to_string(&good).expect("read");
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(3000, "{\"messages\": []}");
    lines.insert(4999, "{\"messages\": [");
    let path = dir.path().join("d.jsonl");
    std::fs::write(&path, lines.join("\n")).expect("write");

    let (tok, t) = (common::tokenizer(), chatml());
    let (enc, pad) = encoder_256(&tok, &t);
    let examples = |path: &std::path::Path| -> Vec<kiln_data::Example> {
        let (records, _) = Reader::open(&[path.display().to_string()])
            .expect("open")
            .read_all()
            .expect("read");
        records
            .iter()
            .filter_map(|r| match enc.encode(r).expect("encode") {
                Encoded::Kept { example, .. } => Some(example),
                _ => None,
            })
            .collect()
    };
    let all = examples(&good);
    let open = || Reader::open(&[path.display().to_string()]).expect("open");

    let mut rows = PackedRows::new(open(), &enc, 512, pad, BadRecords::Skip).expect("rows");
    let got: Vec<_> = rows
        .by_ref()
        .collect::<kiln_data::Result<_>>()
        .expect("pack");
    assert_eq!(
        got,
        pack(&all, 512, pad, PackStrategy::Greedy).expect("pack all")
    );
    let report = rows.report();
    assert_eq!((report.read, report.skipped), (5998, 2));
    assert!(report.reasons[0].contains("d.jsonl:3001"), "{report:?}");
    assert!(report.reasons[1].contains("d.jsonl:5000"), "{report:?}");
    assert_eq!(rows.stats().kept, all.len());

    // Under `Error`: the rows completed before line 3,001, then its error, then nothing.
    let mut rows = PackedRows::new(open(), &enc, 512, pad, BadRecords::Error).expect("rows");
    let mut before = Vec::new();
    let err = loop {
        match rows.next().expect("an item") {
            Ok(row) => before.push(row),
            Err(e) => break e,
        }
    };
    assert!(err.to_string().contains("d.jsonl:3001"), "{err}");
    assert!(rows.next().is_none());
    let head = dir.path().join("head.jsonl");
    std::fs::write(&head, lines[..3000].join("\n")).expect("write");
    let mut want = pack(&examples(&head), 512, pad, PackStrategy::Greedy).expect("pack");
    want.pop(); // the row still open at line 3,001
    assert_eq!(before, want);
}
