//! From records to the trainer's micro-batches: encode with the data crate's [`Encoder`], then
//! pad length-grouped micro-batches or pack rows.
use crate::batch::Batch;
use crate::error::{Result, TrainError};
use kiln_data::{
    Batch as DataBatch, DataError, EncodeStats, Encoder, Example, Location, PackStrategy, Padding,
    Record, length_grouped_batches, pack,
};

/// Encodes every record (render, tokenize, label, truncate); dropped records are counted in
/// the stats. Errors name the record index.
pub fn encode_records(
    encoder: &Encoder,
    records: &[Record],
) -> Result<(Vec<Example>, EncodeStats)> {
    let mut stats = EncodeStats::default();
    let mut examples = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let encoded = encoder.encode(r).map_err(|e| TrainError::Batch {
            index: i,
            reason: format!("record {i}: {e}"),
        })?;
        examples.extend(stats.add(encoded));
    }
    Ok((examples, stats))
}

/// [`encode_records`] for records that know where they came from: an error names the file
/// and line (`train.jsonl:7: field `messages`: no assistant message to train on`).
pub fn encode_located_records(
    encoder: &Encoder,
    records: &[(Location, Record)],
) -> Result<(Vec<Example>, EncodeStats)> {
    let mut stats = EncodeStats::default();
    let mut examples = Vec::with_capacity(records.len());
    for (at, r) in records {
        let encoded = encoder.encode(r).map_err(|e| DataError::AtRecord {
            at: at.clone(),
            source: Box::new(e),
        })?;
        examples.extend(stats.add(encoded));
    }
    Ok((examples, stats))
}

/// Right-padded micro-batches of `micro_batch_size` examples of similar length (transformers'
/// `group_by_length`, seeded), so little compute goes to padding.
pub fn padded_batches(
    examples: &[Example],
    micro_batch_size: usize,
    pad_id: u32,
    seed: u64,
) -> Result<Vec<Batch>> {
    if examples.is_empty() {
        return Err(TrainError::option("data", "no example to batch"));
    }
    let lengths: Vec<usize> = examples.iter().map(Example::len).collect();
    length_grouped_batches(&lengths, micro_batch_size, seed)
        .iter()
        .map(|idx| {
            let group: Vec<Example> = idx.iter().map(|&i| examples[i].clone()).collect();
            Batch::from_data(&DataBatch::from_examples(
                &group,
                pad_id,
                Padding::Right,
                None,
            )?)
        })
        .collect()
}

/// Packed micro-batches: examples concatenated into rows of `seq_len` tokens (attention and
/// positions restart per example), `micro_batch_size` rows per batch.
pub fn packed_batches(
    examples: &[Example],
    seq_len: usize,
    micro_batch_size: usize,
    pad_id: u32,
) -> Result<Vec<Batch>> {
    let rows = pack(examples, seq_len, pad_id, PackStrategy::BestFit)?;
    if rows.is_empty() {
        return Err(TrainError::option("data", "no example to pack"));
    }
    rows.chunks(micro_batch_size.max(1))
        .map(|chunk| Batch::from_data(&DataBatch::from_packed(chunk)?))
        .collect()
}

/// The batches of a run, from [`DataOptions`](crate::DataOptions).
#[derive(Debug, Clone)]
pub struct SftData {
    pub train: Vec<Batch>,
    pub validation: Vec<Batch>,
    pub train_examples: usize,
    pub val_examples: usize,
    /// The held-out records (for generation metrics at the end of training).
    pub validation_records: Vec<Record>,
    /// Encoding counts of the training examples (kept, truncated, dropped, tokens).
    pub stats: EncodeStats,
}

/// Reads the files of `options` (any format the data crate reads), holds out
/// `validation_split` when no validation file is given, encodes with `template` (completion-only
/// labels unless `completion_only = false`, truncation to `max_seq_len`), and pads
/// length-grouped micro-batches or packs rows of `max_seq_len`.
pub fn prepare_data(
    options: &crate::DataOptions,
    micro_batch_size: usize,
    seed: u64,
    tokenizer: &kiln_data::tokenizers::Tokenizer,
    template: Option<&kiln_data::ChatTemplate>,
    pad_id: u32,
) -> Result<SftData> {
    use kiln_data::{Reader, SplitSize, train_val_split};
    if options.train.is_empty() {
        return Err(TrainError::option("data.train", "no training file given"));
    }
    if options.streaming && options.validation_split > 0.0 {
        return Err(TrainError::option(
            "data.validation_split",
            "a split needs every record in memory: with data.streaming, give data.validation files",
        ));
    }
    let read = |paths: &[std::path::PathBuf]| -> Result<Vec<(Location, Record)>> {
        let patterns: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        Ok(Reader::open(&patterns)?.read_all_located()?.0)
    };
    // Streaming: the training files are read by `StreamedBatches` while training runs.
    let records = if options.streaming {
        Vec::new()
    } else {
        read(&options.train)?
    };
    let (train, val) = if !options.validation.is_empty() {
        (records, read(&options.validation)?)
    } else if options.validation_split > 0.0 {
        train_val_split(records, SplitSize::Ratio(options.validation_split), seed)?
    } else {
        (records, Vec::new())
    };
    let encoder = encoder_for(options, tokenizer, template)?;
    let (train_ex, stats) = encode_located_records(&encoder, &train)?;
    let (val_ex, _) = encode_located_records(&encoder, &val)?;
    let batches = |ex: &[Example]| -> Result<Vec<Batch>> {
        if ex.is_empty() {
            Ok(Vec::new())
        } else if options.packing {
            packed_batches(ex, options.max_seq_len, micro_batch_size, pad_id)
        } else {
            padded_batches(ex, micro_batch_size, pad_id, seed)
        }
    };
    Ok(SftData {
        train: batches(&train_ex)?,
        validation: batches(&val_ex)?,
        train_examples: train_ex.len(),
        val_examples: val_ex.len(),
        validation_records: val.into_iter().map(|(_, r)| r).collect(),
        stats,
    })
}

/// The encoder [`prepare_data`] uses for `options` (completion-only labels unless
/// `completion_only = false`, truncation to `max_seq_len`).
///
/// # Errors
/// An invalid option combination (see kiln-data's `Encoder::new`).
pub fn encoder_for<'a>(
    options: &crate::DataOptions,
    tokenizer: &'a kiln_data::tokenizers::Tokenizer,
    template: Option<&'a kiln_data::ChatTemplate>,
) -> Result<Encoder<'a>> {
    use kiln_data::{EncodeOptions, LabelMode};
    let encode = EncodeOptions {
        labels: if options.completion_only {
            LabelMode::Completions
        } else {
            LabelMode::AllTokens
        },
        max_len: Some(options.max_seq_len),
        ..EncodeOptions::default()
    };
    Ok(Encoder::new(tokenizer, template, encode)?)
}

/// The [`StreamOptions`](crate::StreamOptions) of `options` (`data.streaming`): its training
/// files, rows of `max_seq_len`, its shuffle buffer.
pub fn stream_options(
    options: &crate::DataOptions,
    micro_batch_size: usize,
    seed: u64,
    pad_id: u32,
) -> crate::StreamOptions {
    crate::StreamOptions {
        files: options
            .train
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        seq_len: options.max_seq_len,
        micro_batch_size,
        shuffle_buffer: options.shuffle_buffer,
        seed,
        pad_id,
    }
}
