//! Raw record sources: JSON Lines, JSON arrays, CSV and plain text, from files or globs.
//!
//! A [`Source`] yields raw JSON objects with their [`Location`]. JSON Lines, CSV and
//! text-per-line files stream line by line; a JSON array file is parsed whole.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{DataError, Location, Result};

/// Layout of a data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// One JSON object per line (`.jsonl`, `.ndjson`); blank lines are ignored.
    JsonLines,
    /// A JSON array of objects (`.json`).
    JsonArray,
    /// CSV with a header line (`.csv`; `.tsv` uses tabs); every cell is a string.
    Csv { delimiter: u8 },
    /// Plain text (`.txt`, `.md`): one `{"text": …}` record per file, or per non-blank line.
    Text { per_line: bool },
    /// Apache Parquet (`.parquet`): one record per row, nested columns as JSON arrays/objects;
    /// locations give the 1-based row number.
    Parquet,
}

impl FileKind {
    /// Guesses the layout from the file extension.
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        Ok(match ext.as_str() {
            "jsonl" | "ndjson" => FileKind::JsonLines,
            "json" => FileKind::JsonArray,
            "csv" => FileKind::Csv { delimiter: b',' },
            "tsv" => FileKind::Csv { delimiter: b'\t' },
            "txt" | "md" | "text" => FileKind::Text { per_line: false },
            "parquet" => FileKind::Parquet,
            _ => {
                return Err(DataError::UnknownName {
                    what: "file extension",
                    value: format!("{} ({})", ext, path.display()),
                    expected: "jsonl, ndjson, json, csv, tsv, txt, md, parquet (or set the file kind)",
                });
            }
        })
    }
}

/// Expands paths and glob patterns (`data/*.jsonl`) into a sorted, de-duplicated file list.
/// A pattern that matches nothing is an error.
pub fn expand_paths<S: AsRef<str>>(patterns: &[S]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for pattern in patterns {
        let pattern = pattern.as_ref();
        let glob_err = |message: String| DataError::Glob {
            pattern: pattern.to_string(),
            message,
        };
        let mut matched: Vec<PathBuf> = glob::glob(pattern)
            .map_err(|e| glob_err(e.to_string()))?
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| glob_err(e.to_string()))?;
        if matched.is_empty() {
            return Err(glob_err("matches no file".into()));
        }
        matched.sort();
        out.extend(matched);
    }
    out.dedup();
    Ok(out)
}

pub(crate) fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A raw JSON object and where it came from.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub at: Location,
    pub value: Value,
}

/// Streams the raw records of several files in order.
pub struct Source {
    files: std::vec::IntoIter<(PathBuf, FileKind)>,
    current: Option<FileIter>,
    max_record_bytes: usize,
    /// Every file of the source, for messages about the whole input.
    all: Vec<PathBuf>,
}

/// The longest line (or whole text file read as one record) a [`Source`] accepts by default:
/// 64 MiB. Why a cap: a "line" with no end (`/dev/zero`, a binary file named `.jsonl`) was read
/// into memory until the process aborted.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 64 << 20;

enum FileIter {
    Lines {
        path: PathBuf,
        reader: BufReader<File>,
        line: usize,
        buf: Vec<u8>,
        json: bool,
        /// The longest line accepted.
        max: usize,
        /// Set after a line over `max`: the rest of the file is not read.
        abandoned: bool,
    },
    Buffered(std::vec::IntoIter<Result<RawRecord>>),
    Csv {
        path: PathBuf,
        reader: Box<csv::Reader<File>>,
        headers: Vec<String>,
        row: usize,
    },
    Parquet(Box<crate::parquet_rows::ParquetRows>),
}

impl Source {
    /// Files with their layouts guessed from their extensions.
    pub fn from_paths(paths: &[PathBuf]) -> Result<Self> {
        let files = paths
            .iter()
            .map(|p| Ok((p.clone(), FileKind::from_path(p)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::with_kinds(files))
    }

    /// Files with explicit layouts.
    pub fn with_kinds(files: Vec<(PathBuf, FileKind)>) -> Self {
        Self {
            all: files.iter().map(|(p, _)| p.clone()).collect(),
            files: files.into_iter(),
            current: None,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }

    /// The files this source reads, in order.
    pub fn paths(&self) -> &[PathBuf] {
        &self.all
    }

    /// Refuse lines (and whole-file text records) longer than `bytes`, naming file and line.
    pub fn max_record_bytes(mut self, bytes: usize) -> Self {
        self.max_record_bytes = bytes.max(1);
        self
    }

    fn open_next(&mut self) -> Option<Result<FileIter>> {
        let (path, kind) = self.files.next()?;
        Some(open_file(path, kind, self.max_record_bytes))
    }
}

fn too_long(at: Location, max: usize) -> DataError {
    DataError::Malformed {
        at,
        format: "text",
        message: format!(
            "record longer than {max} bytes (no line end within the limit; raise it with \
             max_record_bytes if this is intended)"
        ),
    }
}

fn open_file(path: PathBuf, kind: FileKind, max: usize) -> Result<FileIter> {
    let file = open(&path)?;
    Ok(match kind {
        FileKind::Parquet => FileIter::Parquet(Box::new(crate::parquet_rows::ParquetRows::open(
            path, file,
        )?)),
        FileKind::JsonLines | FileKind::Text { per_line: true } => FileIter::Lines {
            reader: BufReader::with_capacity(1 << 20, file),
            path,
            line: 0,
            buf: Vec::new(),
            json: kind == FileKind::JsonLines,
            max,
            abandoned: false,
        },
        FileKind::JsonArray => {
            let at = |line| Location {
                file: path.clone(),
                line,
            };
            let value: Value = serde_json::from_reader(BufReader::new(file)).map_err(|e| {
                DataError::Malformed {
                    at: at(e.line()),
                    format: "JSON",
                    message: e.to_string(),
                }
            })?;
            let Value::Array(items) = value else {
                return Err(DataError::Malformed {
                    at: at(1),
                    format: "JSON",
                    message: "expected an array of records".into(),
                });
            };
            let recs: Vec<_> = items
                .into_iter()
                .enumerate()
                .map(|(i, value)| {
                    Ok(RawRecord {
                        at: at(i + 1),
                        value,
                    })
                })
                .collect();
            FileIter::Buffered(recs.into_iter())
        }
        FileKind::Text { per_line: false } => {
            let mut text = String::new();
            BufReader::new(file)
                .take(max as u64 + 1)
                .read_to_string(&mut text)
                .map_err(|source| DataError::Io {
                    path: path.clone(),
                    source,
                })?;
            if text.len() > max {
                return Err(too_long(
                    Location {
                        file: path,
                        line: 1,
                    },
                    max,
                ));
            }
            let value = serde_json::json!({ "text": text });
            let at = Location {
                file: path,
                line: 1,
            };
            FileIter::Buffered(vec![Ok(RawRecord { at, value })].into_iter())
        }
        FileKind::Csv { delimiter } => {
            let mut reader = csv::ReaderBuilder::new()
                .delimiter(delimiter)
                .from_reader(file);
            let headers = reader
                .headers()
                .map_err(|e| DataError::Malformed {
                    at: Location {
                        file: path.clone(),
                        line: 1,
                    },
                    format: "CSV",
                    message: e.to_string(),
                })?
                .iter()
                .map(str::to_string)
                .collect();
            FileIter::Csv {
                path,
                reader: Box::new(reader),
                headers,
                row: 1,
            }
        }
    })
}

impl FileIter {
    fn next_item(&mut self) -> Option<Result<RawItem>> {
        match self {
            FileIter::Buffered(it) => it.next().map(|r| r.map(RawItem::Record)),
            FileIter::Parquet(rows) => rows
                .next_row()
                .map(|r| r.map(|(at, value)| RawItem::Record(RawRecord { at, value }))),
            FileIter::Lines {
                path,
                reader,
                line,
                buf,
                json,
                max,
                abandoned,
            } => loop {
                if *abandoned {
                    return None;
                }
                buf.clear();
                *line += 1;
                let at = || Location {
                    file: path.clone(),
                    line: *line,
                };
                match reader.by_ref().take(*max as u64 + 1).read_until(b'\n', buf) {
                    Err(e) => {
                        return Some(Err(DataError::Malformed {
                            at: at(),
                            format: "text",
                            message: e.to_string(),
                        }));
                    }
                    Ok(0) => return None,
                    Ok(_) => {}
                }
                if buf.len() > *max && buf.last() != Some(&b'\n') {
                    // Stop reading this file: the rest of the line is unbounded.
                    *abandoned = true;
                    buf.clear();
                    return Some(Err(too_long(at(), *max)));
                }
                let text = match std::str::from_utf8(buf) {
                    Ok(t) => t,
                    Err(e) => {
                        return Some(Err(DataError::Malformed {
                            at: at(),
                            format: "text",
                            message: format!("not UTF-8: {e}"),
                        }));
                    }
                };
                let trimmed = text.trim_end_matches(['\n', '\r']);
                if trimmed.trim().is_empty() {
                    continue;
                }
                if !*json {
                    let value = serde_json::json!({ "text": trimmed });
                    return Some(Ok(RawItem::Record(RawRecord { at: at(), value })));
                }
                return Some(Ok(RawItem::JsonLine {
                    at: at(),
                    line: trimmed.to_string(),
                }));
            },
            FileIter::Csv {
                path,
                reader,
                headers,
                row,
            } => {
                let mut rec = csv::StringRecord::new();
                *row += 1;
                let at = Location {
                    file: path.clone(),
                    line: *row,
                };
                match reader.read_record(&mut rec) {
                    Ok(false) => None,
                    Ok(true) => {
                        let map: Map<String, Value> = headers
                            .iter()
                            .zip(rec.iter())
                            .map(|(h, v)| (h.clone(), Value::String(v.to_string())))
                            .collect();
                        Some(Ok(RawItem::Record(RawRecord {
                            at,
                            value: Value::Object(map),
                        })))
                    }
                    Err(e) => Some(Err(DataError::Malformed {
                        at,
                        format: "CSV",
                        message: e.to_string(),
                    })),
                }
            }
        }
    }
}

impl Source {
    /// The next record as read, JSON Lines lines not parsed yet ([`RawItem::parse`] does it, on
    /// any thread: the streaming path parses in parallel).
    pub fn next_item(&mut self) -> Option<Result<RawItem>> {
        loop {
            if let Some(cur) = &mut self.current {
                if let Some(r) = cur.next_item() {
                    return Some(r);
                }
                self.current = None;
            }
            match self.open_next()? {
                Ok(f) => self.current = Some(f),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

impl Iterator for Source {
    type Item = Result<RawRecord>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_item().map(|r| r.and_then(RawItem::parse))
    }
}

/// A record as a [`Source`] reads it: a JSON value, or a JSON Lines line still to parse.
#[derive(Debug, Clone)]
pub enum RawItem {
    Record(RawRecord),
    JsonLine { at: Location, line: String },
}

impl RawItem {
    /// Parses a JSON Lines line; a malformed one is [`DataError::Malformed`] at its line.
    pub fn parse(self) -> Result<RawRecord> {
        match self {
            RawItem::Record(r) => Ok(r),
            RawItem::JsonLine { at, line } => match serde_json::from_str(&line) {
                Ok(value) => Ok(RawRecord { at, value }),
                Err(e) => Err(DataError::Malformed {
                    at,
                    format: "JSON",
                    message: e.to_string(),
                }),
            },
        }
    }
}
