//! Parsing sources into records under a bad-record policy.
//!
//! [`Reader`] parses a [`Source`]'s raw objects into [`Record`]s under a [`BadRecords`] policy
//! and counts what it skipped ([`ReadReport`]).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::str::FromStr;

use crate::error::{DataError, Location, Result};
use crate::jsonl_messages::messages_line;
use crate::record::{FieldMap, Format, Record, parse_record};
use crate::source::{FileKind, RawItem, Source, expand_paths, open};

/// What to do with a record that cannot be read or parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BadRecords {
    /// Stop with the error (default).
    #[default]
    Error,
    /// Skip it, count it and keep the first few reasons in the [`ReadReport`].
    Skip,
}

impl FromStr for BadRecords {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "error" => Ok(BadRecords::Error),
            "skip" => Ok(BadRecords::Skip),
            _ => Err(DataError::UnknownName {
                what: "bad-record policy",
                value: s.to_string(),
                expected: "error, skip",
            }),
        }
    }
}

/// Counts of one pass over the data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadReport {
    /// Records parsed successfully.
    pub read: usize,
    /// Records skipped under [`BadRecords::Skip`].
    pub skipped: usize,
    /// The first [`ReadReport::MAX_REASONS`] skip reasons (file:line: message).
    pub reasons: Vec<String>,
}

impl ReadReport {
    pub const MAX_REASONS: usize = 5;

    /// Records one skipped record.
    pub fn skip(&mut self, err: &DataError) {
        self.skipped += 1;
        if self.reasons.len() < Self::MAX_REASONS {
            self.reasons.push(err.to_string());
        }
    }
}

/// Parses a [`Source`] into [`Record`]s with a format, field names and a bad-record policy.
///
/// ```no_run
/// use kiln_data::{Reader, BadRecords};
/// let reader = Reader::open(&["data/train.jsonl"])?.policy(BadRecords::Skip);
/// let (records, report) = reader.read_all()?;
/// println!("{} records, {} skipped", records.len(), report.skipped);
/// # Ok::<(), kiln_data::DataError>(())
/// ```
pub struct Reader {
    source: Source,
    format: Format,
    fields: FieldMap,
    policy: BadRecords,
    report: ReadReport,
}

impl Reader {
    /// Reads files and glob patterns, layouts guessed from extensions, format auto-detected.
    pub fn open<S: AsRef<str>>(patterns: &[S]) -> Result<Self> {
        Ok(Self::new(Source::from_paths(&expand_paths(patterns)?)?))
    }

    pub fn new(source: Source) -> Self {
        Self {
            source,
            format: Format::Auto,
            fields: FieldMap::default(),
            policy: BadRecords::Error,
            report: ReadReport::default(),
        }
    }

    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    pub fn fields(mut self, fields: FieldMap) -> Self {
        self.fields = fields;
        self
    }

    /// Refuse lines longer than `bytes` (default [`DEFAULT_MAX_RECORD_BYTES`](crate::DEFAULT_MAX_RECORD_BYTES)).
    pub fn max_record_bytes(mut self, bytes: usize) -> Self {
        self.source = self.source.max_record_bytes(bytes);
        self
    }

    pub fn policy(mut self, policy: BadRecords) -> Self {
        self.policy = policy;
        self
    }

    /// Counts so far.
    pub fn report(&self) -> &ReadReport {
        &self.report
    }

    /// Reads everything; an empty result (nothing read, or everything skipped) is an error.
    pub fn read_all(self) -> Result<(Vec<Record>, ReadReport)> {
        let (located, report) = self.read_all_located()?;
        Ok((located.into_iter().map(|(_, r)| r).collect(), report))
    }

    /// [`Reader::read_all`] keeping where each record came from, so that a later failure
    /// (rendering, tokenizing) can name the file and line.
    pub fn read_all_located(mut self) -> Result<(Vec<(Location, Record)>, ReadReport)> {
        let mut out = Vec::new();
        for r in self.by_ref() {
            out.push(r?);
        }
        if out.is_empty() {
            return Err(DataError::EmptyDataset {
                reason: empty_reason(&self.report, self.source.paths()),
            });
        }
        Ok((out, self.report))
    }
}

/// Explains an empty dataset from its report.
pub(crate) fn empty_reason(report: &ReadReport, files: &[std::path::PathBuf]) -> String {
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    let files = match names.len() {
        0 => "no input file".to_string(),
        1..=3 => names.join(", "),
        n => format!("{}, ... ({n} files)", names[..3].join(", ")),
    };
    if report.skipped == 0 {
        format!("no records in {files}")
    } else {
        format!(
            "all {} records of {files} skipped; first reasons: {}",
            report.skipped,
            report.reasons.join("; ")
        )
    }
}

impl Reader {
    /// The files being read.
    pub fn paths(&self) -> &[std::path::PathBuf] {
        self.source.paths()
    }
}

impl Reader {
    /// The next record as read, not parsed yet: [`ItemParser::parse`] turns it into a record (on any
    /// thread) and [`Reader::tally`] accounts for the outcome, in input order.
    pub(crate) fn next_item(&mut self) -> Option<Result<RawItem>> {
        self.source.next_item()
    }

    /// Parses raw items into records with this reader's format and field names (shareable
    /// between threads, which the reader itself is not).
    pub(crate) fn parser(&self) -> ItemParser {
        ItemParser {
            format: self.format,
            fields: self.fields.clone(),
        }
    }

    /// Counts a parsed record (`Ok(Some)`), or applies the policy to a failure: `Ok(None)` when
    /// skipped, the error under [`BadRecords::Error`].
    pub(crate) fn tally<T>(&mut self, parsed: Result<T>) -> Result<Option<T>> {
        match parsed {
            Ok(r) => {
                self.report.read += 1;
                Ok(Some(r))
            }
            Err(e) if self.policy == BadRecords::Skip => {
                self.report.skip(&e);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// A [`Reader`]'s format and field names, to parse its raw items.
#[derive(Debug, Clone)]
pub(crate) struct ItemParser {
    format: Format,
    fields: FieldMap,
}

impl ItemParser {
    pub(crate) fn parse(&self, item: RawItem) -> Result<(Location, Record)> {
        parse_item(item, self.format, &self.fields)
    }
}

/// Parses a raw item into a record. A JSON Lines line of the messages format with the default
/// field names is read straight into messages when it is well formed ([`messages_line`]); any
/// other line, and any deviation, goes through the JSON value and [`parse_record`], which
/// gives the same record or names what is wrong.
fn parse_item(item: RawItem, format: Format, fields: &FieldMap) -> Result<(Location, Record)> {
    if let RawItem::JsonLine { at, line } = &item
        && matches!(format, Format::Auto | Format::Messages)
        && ["messages", "role", "content"]
            .iter()
            .all(|&k| fields.get(k) == k)
        && let Some(messages) = messages_line(line)
    {
        return Ok((at.clone(), Record::Conversation(messages)));
    }
    let raw = item.parse()?;
    parse_record(&raw.value, format, fields, &raw.at).map(|r| (raw.at, r))
}

impl Iterator for Reader {
    type Item = Result<(Location, Record)>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let parsed = self.next_item()?.and_then(|item| self.parser().parse(item));
            match self.tally(parsed) {
                Ok(Some(r)) => return Some(Ok(r)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Number of non-blank lines of a JSON Lines or text-per-line file (a cheap pre-count for
/// progress bars); `None` for other layouts.
pub fn count_lines(path: &Path, kind: FileKind) -> Result<Option<usize>> {
    if !matches!(
        kind,
        FileKind::JsonLines | FileKind::Text { per_line: true }
    ) {
        return Ok(None);
    }
    let mut reader = BufReader::with_capacity(1 << 20, open(path)?);
    let (mut count, mut blank) = (0usize, true);
    loop {
        let buf = reader.fill_buf().map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if buf.is_empty() {
            break;
        }
        for &b in buf {
            if b == b'\n' {
                count += usize::from(!blank);
                blank = true;
            } else if !b.is_ascii_whitespace() {
                blank = false;
            }
        }
        let n = buf.len();
        reader.consume(n);
    }
    Ok(Some(count + usize::from(!blank)))
}
