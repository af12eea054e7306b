//! The streaming read → encode → pack path equals encoding records one by one.
#![allow(clippy::unwrap_used)]

mod common;

use kiln_data::{
    BadRecords, ChatTemplate, EncodeOptions, Encoded, Encoder, PackedRows, Reader, Record,
};

fn chatml() -> ChatTemplate {
    ChatTemplate::new(
        common::template("chatml"),
        Some("<|im_start|>"),
        Some("<|im_end|>"),
    )
    .expect("chatml")
}

#[test]
fn packed_stream_holds_every_example_in_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("d.jsonl");
    kiln_data::synthetic::write_messages_jsonl(&path, 300, 5).expect("write");
    let tok = common::tokenizer();
    let t = chatml();
    let opts = EncodeOptions {
        max_len: Some(256),
        ..EncodeOptions::default()
    };
    let enc = Encoder::new(&tok, Some(&t), opts).expect("enc");
    let pad = tok.token_to_id("<|endoftext|>").expect("pad");
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
