//! One pass of the streaming data path, for throughput and peak-memory measurements.
//!
//! ```text
//! cargo run --release -p kiln-data --example pipeline_throughput -- FILE.jsonl [RECORDS]
//! /usr/bin/time -v target/release/examples/pipeline_throughput FILE.jsonl 1000000
//! ```
//! Writes FILE.jsonl with RECORDS synthetic conversations (seed 0) when it does not exist, then
//! reads it → ChatML template → tokenize (fixtures/chat_templates/tokenizer.json) →
//! completion-only labels → greedy packing into 2,048-token rows, and prints the counts.

use std::path::PathBuf;
use std::time::Instant;

use kiln_data::{BadRecords, ChatTemplate, EncodeOptions, Encoder, PackedRows, Reader};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let file = PathBuf::from(
        args.next()
            .ok_or("usage: pipeline_throughput FILE.jsonl [RECORDS]")?,
    );
    let records: usize = args.next().map_or(Ok(100_000), |s| s.parse())?;
    let fixtures = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/chat_templates"
    ));
    if !file.exists() {
        kiln_data::synthetic::write_messages_jsonl(&file, records, 0)?;
    }
    let tokenizer = tokenizers::Tokenizer::from_file(fixtures.join("tokenizer.json"))
        .map_err(|e| e.to_string())?;
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
        "records {} rows {} tokens {} trained {} truncated {} secs {:.2} records/s {:.0}",
        s.kept,
        n_rows,
        s.tokens,
        s.trained_tokens,
        s.truncated,
        secs,
        s.kept as f64 / secs
    );
    Ok(())
}
