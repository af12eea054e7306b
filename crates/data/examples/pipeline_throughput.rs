//! One pass of the streaming data path, for throughput and peak-memory measurements.
//!
//! ```text
//! cargo run --release -p kiln-data --example pipeline_throughput -- FILE.jsonl [RECORDS] [--tokenizer T.json]
//! ```
//! Writes FILE.jsonl with RECORDS synthetic conversations (seed 0) when it does not exist, then
//! reads it → ChatML template → tokenize (`T.json`, default fixtures/chat_templates/tokenizer.json)
//! → completion-only labels → greedy packing into 2,048-token rows, and prints the counts.
//! `tools/bench_data_side_by_side.py` runs it against Hugging Face `datasets`.

use std::path::PathBuf;
use std::time::Instant;

use kiln_data::{BadRecords, ChatTemplate, EncodeOptions, Encoder, PackedRows, Reader};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fixtures = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/chat_templates"
    ));
    let mut tokenizer_file = fixtures.join("tokenizer.json");
    let mut positional = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--tokenizer" {
            tokenizer_file = args.next().ok_or("--tokenizer needs a path")?.into();
        } else {
            positional.push(arg);
        }
    }
    let usage = "usage: pipeline_throughput FILE.jsonl [RECORDS] [--tokenizer T.json]";
    let file = PathBuf::from(positional.first().ok_or(usage)?);
    let records: usize = positional.get(1).map_or(Ok(100_000), |s| s.parse())?;
    if !file.exists() {
        kiln_data::synthetic::write_messages_jsonl(&file, records, 0)?;
    }
    let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_file)
        .map_err(|e| format!("{}: {e}", tokenizer_file.display()))?;
    let template = ChatTemplate::new(
        std::fs::read_to_string(fixtures.join("chatml.jinja"))?,
        Some("<|im_start|>"),
        Some("<|im_end|>"),
    )?;
    let opts = EncodeOptions {
        max_len: Some(2048),
        ..EncodeOptions::default()
    };
    let encoder = Encoder::new(&tokenizer, Some(&template), opts)?;
    let pad = tokenizer
        .token_to_id("<|endoftext|>")
        .ok_or("no pad token")?;
    let start = Instant::now();
    let reader = Reader::open(&[file.display().to_string()])?;
    let mut rows = PackedRows::new(reader, &encoder, 2048, pad, BadRecords::Error)?;
    let mut n_rows = 0usize;
    for row in rows.by_ref() {
        row?;
        n_rows += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let s = rows.stats();
    println!(
        "records {} rows {} tokens {} trained {} truncated {} secs {:.2} records/s {:.0} ({})",
        s.kept,
        n_rows,
        s.tokens,
        s.trained_tokens,
        s.truncated,
        secs,
        s.kept as f64 / secs,
        if encoder.byte_level_bpe().is_some() {
            "kiln's BPE encoder"
        } else {
            "tokenizers' encoder"
        }
    );
    Ok(())
}
