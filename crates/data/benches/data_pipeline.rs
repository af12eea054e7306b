//! The whole data path: read JSON Lines → ChatML template → tokenize → completion-only
//! labels → greedy packing into 2,048-token rows, over a generated messages file; and the
//! tokenization alone, kiln's byte-level BPE encoder against `tokenizers`.
//!
//! ```text
//! cargo bench -p kiln-data --bench data_pipeline                              # 100,000 records
//! KILN_BENCH_RECORDS=10000 cargo bench -p kiln-data --bench data_pipeline     # quicker
//! KILN_BENCH_TOKENIZER=~/.cache/kiln/SmolLM2-135M-Instruct.tokenizer.json cargo bench ...
//! ```
//! kiln-data needs neither burn nor a model, so this builds in a few minutes. The file is
//! generated once (seed 0) in the system temp directory and reused; the tokenizer is the
//! fixture's unless `KILN_BENCH_TOKENIZER` names another (`tools/bench_data_side_by_side.py`
//! writes SmolLM2's and runs the comparison with Hugging Face `datasets`).

use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use kiln_data::bpe::ByteLevelBpe;
use kiln_data::{
    BadRecords, ChatTemplate, EncodeOptions, Encoder, PackedRows, Reader, Record, tokenizers,
};

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/chat_templates"
    ))
}

fn data_file(records: usize) -> PathBuf {
    let path = std::env::temp_dir().join(format!("kiln-bench-messages-{records}.jsonl"));
    if !path.exists() {
        kiln_data::synthetic::write_messages_jsonl(&path, records, 0).expect("write bench data");
    }
    path
}

fn bench(c: &mut Criterion) {
    let records: usize = std::env::var("KILN_BENCH_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let file = data_file(records).display().to_string();
    let tokenizer_file = std::env::var_os("KILN_BENCH_TOKENIZER")
        .map_or_else(|| fixtures().join("tokenizer.json"), PathBuf::from);
    let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_file).expect("tokenizer");
    let source = std::fs::read_to_string(fixtures().join("chatml.jinja")).expect("template");
    let template =
        ChatTemplate::new(source, Some("<|im_start|>"), Some("<|im_end|>")).expect("template");
    let opts = EncodeOptions {
        max_len: Some(2048),
        ..EncodeOptions::default()
    };
    let encoder = Encoder::new(&tokenizer, Some(&template), opts).expect("encoder");
    let pad = tokenizer.token_to_id("<|endoftext|>").expect("pad token");

    let mut group = c.benchmark_group("data_pipeline");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(30));
    group.throughput(Throughput::Elements(records as u64));
    group.bench_function(
        format!("jsonl_template_tokenize_mask_pack/{records}"),
        |b| {
            b.iter(|| {
                let reader = Reader::open(&[file.as_str()]).expect("open");
                let rows =
                    PackedRows::new(reader, &encoder, 2048, pad, BadRecords::Error).expect("rows");
                rows.map(|r| r.expect("row").used()).sum::<usize>()
            })
        },
    );
    group.finish();

    // Tokenization alone, one thread: the first 2,000 conversations rendered.
    let (recs, _) = Reader::open(&[file.as_str()])
        .expect("open")
        .read_all()
        .expect("read");
    let texts: Vec<String> = recs
        .iter()
        .take(2000)
        .map(|r| match r {
            Record::Conversation(m) => template.render(m, false).expect("render"),
            _ => unreachable!("messages records"),
        })
        .collect();
    let bytes: usize = texts.iter().map(String::len).sum();
    let bpe = ByteLevelBpe::new(&tokenizer).expect("byte-level BPE");
    let mut group = c.benchmark_group("tokenize_2000_chats");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("kiln_byte_level_bpe", |b| {
        b.iter(|| texts.iter().map(|t| bpe.encode(t).0.len()).sum::<usize>())
    });
    group.bench_function("tokenizers_encode_fast", |b| {
        b.iter(|| {
            texts
                .iter()
                .map(|t| {
                    tokenizer
                        .encode_fast(t.as_str(), false)
                        .expect("encode")
                        .len()
                })
                .sum::<usize>()
        })
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
