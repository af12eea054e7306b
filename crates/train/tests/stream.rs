//! Training data streamed from files (`data.streaming`): the batches hold exactly the rows
//! kiln-data's streaming packer makes, every epoch holds each row once in a seeded order, and
//! any position gives the same batch however it is reached (what resuming relies on).
#![allow(clippy::unwrap_used)]
mod common;
use common::fixture;
use kiln_data::{BadRecords, ChatTemplate, EncodeOptions, Encoder, PackedRows, Reader};
use kiln_train::{Batch, BatchSource, StreamOptions, StreamedBatches};

const SEQ: usize = 128;

struct Setup {
    _dir: tempfile::TempDir,
    path: String,
    tok: kiln_data::tokenizers::Tokenizer,
    template: ChatTemplate,
}

fn setup(records: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.jsonl");
    kiln_data::synthetic::write_messages_jsonl(&path, records, 7).unwrap();
    let tok = kiln_data::tokenizers::Tokenizer::from_file(fixture("chat_templates/tokenizer.json"))
        .unwrap();
    let src = std::fs::read_to_string(fixture("chat_templates/chatml.jinja")).unwrap();
    let template = ChatTemplate::new(&src, Some("<|im_start|>"), Some("<|im_end|>")).unwrap();
    Setup {
        path: path.display().to_string(),
        _dir: dir,
        tok,
        template,
    }
}

fn encoder(s: &Setup) -> Encoder<'_> {
    let opts = EncodeOptions {
        max_len: Some(SEQ),
        ..EncodeOptions::default()
    };
    Encoder::new(&s.tok, Some(&s.template), opts).unwrap()
}

fn options(s: &Setup, micro: usize, buffer: usize) -> StreamOptions {
    StreamOptions {
        files: vec![s.path.clone()],
        seq_len: SEQ,
        micro_batch_size: micro,
        shuffle_buffer: buffer,
        seed: 11,
        pad_id: s.tok.token_to_id("<|endoftext|>").unwrap(),
    }
}

/// The rows of a batch, as (input ids, labels) per row.
fn rows(b: &Batch) -> Vec<(Vec<i64>, Vec<i64>)> {
    let t = b.input.seq_len;
    (0..b.input.batch)
        .map(|r| {
            let ids = &b.input.ids[r * t..(r + 1) * t];
            (
                ids.iter().map(|&v| v as i64).collect(),
                b.labels[r * t..(r + 1) * t].to_vec(),
            )
        })
        .collect()
}

#[test]
fn streamed_batches_are_the_packers_rows_in_a_seeded_order_per_epoch() {
    let s = setup(400);
    let enc = encoder(&s);
    let opts = options(&s, 3, 1);
    // The packer's own rows, in file order.
    let want: Vec<_> = PackedRows::new(
        Reader::open(&opts.files).unwrap(),
        &enc,
        SEQ,
        opts.pad_id,
        BadRecords::Error,
    )
    .unwrap()
    .map(|r| {
        let r = r.unwrap();
        (
            r.input_ids.iter().map(|&v| v as i64).collect::<Vec<_>>(),
            r.labels,
        )
    })
    .collect();
    assert!(want.len() > 20, "{} rows", want.len());

    // A buffer of one keeps the files' order: the batches are the rows, three at a time.
    let ordered = StreamedBatches::new(&enc, opts.clone()).unwrap();
    assert_eq!(ordered.len(), want.len().div_ceil(3));
    let got: Vec<_> = (0..ordered.len())
        .flat_map(|i| rows(&ordered.get(0, i).unwrap()))
        .collect();
    assert_eq!(got, want);

    // A buffer of 16: each epoch holds every row once, in its own order.
    let shuffled = StreamedBatches::new(&enc, options(&s, 3, 16)).unwrap();
    let epoch = |e| -> Vec<_> {
        (0..shuffled.len())
            .flat_map(|i| rows(&shuffled.get(e, i).unwrap()))
            .collect()
    };
    let (e0, e1) = (epoch(0), epoch(1));
    assert_ne!(e0, want);
    assert_ne!(e0, e1);
    for e in [&e0, &e1] {
        let (mut a, mut b) = (e.clone(), want.clone());
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }
}

#[test]
fn any_position_gives_the_same_batch_however_it_is_reached() {
    let s = setup(300);
    let enc = encoder(&s);
    let opts = options(&s, 2, 8);
    let sequential = StreamedBatches::new(&enc, opts.clone()).unwrap();
    let n = sequential.len() as u64;
    let all: Vec<_> = (0..2 * n)
        .map(|p| rows(&sequential.at(p).unwrap()))
        .collect();
    // A fresh source (a resumed run) asked for positions out of order, backwards, twice, and
    // across the epoch boundary.
    let resumed = StreamedBatches::new(&enc, opts).unwrap();
    for p in [n + 3, 5, 4, 4, n - 1, n, 2 * n - 1, 0] {
        assert_eq!(
            rows(&resumed.at(p).unwrap()),
            all[p as usize],
            "position {p}"
        );
    }
    assert!(resumed.at(2 * n).is_ok(), "epochs go on");
    assert!(resumed.get(0, n as usize).is_err(), "past the epoch's end");
}

#[test]
fn streaming_needs_validation_files_not_a_split() {
    let s = setup(20);
    let mut data = kiln_train::DataOptions {
        train: vec![s.path.clone().into()],
        streaming: true,
        validation_split: 0.1,
        ..Default::default()
    };
    let err = kiln_train::prepare_data(&data, 2, 0, &s.tok, Some(&s.template), 0).unwrap_err();
    assert!(err.to_string().contains("data.validation_split"), "{err}");
    data.validation_split = 0.0;
    let prepared = kiln_train::prepare_data(&data, 2, 0, &s.tok, Some(&s.template), 0).unwrap();
    assert!(
        prepared.train.is_empty(),
        "the training files are left to the stream"
    );
}
