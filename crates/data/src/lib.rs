//! kiln-data: a user's records to training batches.
//!
//! read ([`Reader`]: JSONL, JSON, CSV/TSV, text, Parquet) → normalise ([`Record`]) → render with the model's chat template
//! ([`ChatTemplate`], identical to transformers' `apply_chat_template`) → tokenize and label
//! ([`Encoder`], completion-only labels from character offsets) → pack ([`pack`](fn@pack),
//! [`GreedyPacker`]) or pad ([`Batch`]) → split and shuffle ([`train_val_split`],
//! [`ShuffleBuffer`]). Plus a table → question/answer generator ([`qa`]) and a token/label
//! pretty-printer ([`show_labels`]).
//!
//! It knows no model: it takes a [`tokenizers::Tokenizer`] and a template string and returns
//! plain vectors.

/// The tokenizer library kiln-data takes its [`tokenizers::Tokenizer`] from.
pub use tokenizers;

mod batch;
pub mod bpe;
mod encode;
mod error;
mod jsonfmt;
mod jsonl_messages;
mod offsets;
mod pack;
mod parquet_pages;
mod parquet_rows;
mod preference;
mod preference_answer;
mod pretty;
pub mod qa;
mod reader;
mod record;
mod source;
mod spans;
mod split;
mod stream;
pub mod synthetic;
mod template;
mod timefmt;
mod unpaired;

pub use batch::{Batch, Padding, length_grouped_batches};
pub use encode::{
    EncodeOptions, EncodeStats, Encoded, Encoder, Example, IGNORE_INDEX, LabelMode, Rendered,
    Truncation,
};
pub use error::{DataError, Location, Result};
pub use pack::{GreedyPacker, PackStrategy, PackedRow, pack};
pub use preference::{
    Preference, PreferenceEncoder, PreferenceIds, RewardRecord, TruncationMode, parse_preference,
    read_preferences, read_reward_records,
};
pub use preference_answer::AnswerIds;
pub use pretty::{show_labels, show_trained_text};
pub use reader::{BadRecords, ReadReport, Reader, count_lines};
pub use record::{FieldMap, Format, Label, Message, Record, Role, detect_format, parse_record};
pub use source::{DEFAULT_MAX_RECORD_BYTES, FileKind, RawItem, RawRecord, Source, expand_paths};
pub use spans::assistant_spans;
pub use split::{ShuffleBuffer, SplitSize, dedup_by_key, shuffled, stable_hash, train_val_split};
pub use stream::PackedRows;
pub use template::{ChatTemplate, TemplateSource, load_chat_template, template_from_config};
pub use unpaired::{
    KtoExample, Unpaired, UnpairedIds, UnpairedRecord, kto_examples, parse_unpaired, read_unpaired,
};
