//! Parquet files as records: each row becomes a JSON object (nested lists and structs become
//! arrays and objects, so a `messages` column of `list<struct<role, content>>` reads like JSONL).
//!
//! Rows stream through the `parquet` crate's record reader (no Arrow), one row group at a
//! time. Snappy, gzip, LZ4 and zstd pages are supported; errors name the file and the row.
use std::fs::File;
use std::path::PathBuf;

use parquet::file::reader::SerializedFileReader;
use parquet::record::reader::RowIter;

use crate::error::{DataError, Location, Result};
use crate::source::RawRecord;

/// Rows of one Parquet file.
pub(crate) struct ParquetRows {
    path: PathBuf,
    rows: RowIter<'static>,
    row: usize,
}

impl ParquetRows {
    pub(crate) fn open(path: PathBuf, file: File) -> Result<Self> {
        let malformed = |message: String| DataError::Malformed {
            at: Location {
                file: path.clone(),
                line: 0,
            },
            format: "Parquet",
            message,
        };
        let reader = SerializedFileReader::new(file).map_err(|e| malformed(e.to_string()))?;
        let rows = reader.into_iter();
        Ok(Self { path, rows, row: 0 })
    }

    /// The next row as a raw record (`line` = 1-based row number).
    pub(crate) fn next_record(&mut self) -> Option<Result<RawRecord>> {
        let row = self.rows.next()?;
        self.row += 1;
        let at = Location {
            file: self.path.clone(),
            line: self.row,
        };
        Some(match row {
            Ok(row) => Ok(RawRecord {
                at,
                value: row.to_json_value(),
            }),
            Err(e) => Err(DataError::Malformed {
                at,
                format: "Parquet",
                message: e.to_string(),
            }),
        })
    }
}
