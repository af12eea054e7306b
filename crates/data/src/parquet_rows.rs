//! Parquet files as records: each row becomes a JSON object (nested lists and structs become
//! arrays and objects, so a `messages` column of `list<struct<role, content>>` reads like JSONL).
//!
//! Rows stream through the `parquet` crate's record reader (no Arrow), one row group at a
//! time. Snappy, gzip, LZ4 and zstd pages are supported; errors name the file and the row.
use std::fs::File;
use std::path::PathBuf;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::reader::RowIter;

use crate::error::{DataError, Location, Result};

/// Rows of one Parquet file.
pub(crate) struct ParquetRows {
    path: PathBuf,
    rows: RowIter<'static>,
    row: usize,
    /// Set by the first error: the `parquet` crate's row iterator returns the same error again
    /// on every later call (it cannot step past a corrupt page), so the file ends there. Found
    /// by `fuzz_parquet_reader`: under `BadRecords::Skip` a corrupt page looped forever.
    failed: bool,
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
        let headers = file.try_clone().map_err(|e| malformed(e.to_string()))?;
        let reader = guarded(|| SerializedFileReader::new(file))
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(&malformed)?;
        crate::parquet_pages::check(&headers, reader.metadata()).map_err(&malformed)?;
        let rows = reader.into_iter();
        Ok(Self {
            path,
            rows,
            row: 0,
            failed: false,
        })
    }

    /// The next row as a JSON object and where it is (`line` = 1-based row number); the source
    /// wraps it as a raw record.
    pub(crate) fn next_row(&mut self) -> Option<Result<(Location, serde_json::Value)>> {
        if self.failed {
            return None;
        }
        let rows = &mut self.rows;
        let row = match guarded(|| rows.next()) {
            Ok(row) => row?.map_err(|e| e.to_string()),
            Err(panic) => Err(panic),
        };
        self.row += 1;
        let at = Location {
            file: self.path.clone(),
            line: self.row,
        };
        Some(match row {
            Ok(row) => Ok((at, row.to_json_value())),
            Err(message) => {
                self.failed = true;
                Err(DataError::Malformed {
                    at,
                    format: "Parquet",
                    message: format!("{message} (the rest of the file is not read)"),
                })
            }
        })
    }
}

/// Runs a call into the `parquet` crate, turning a panic into an error message: the crate
/// asserts on some corrupt inputs (`fuzz_parquet_reader` found `assertion failed: size <=
/// src.len()` in its bit unpacking) where kiln must return an error naming the file and row.
/// The default panic hook still prints the assertion on stderr.
fn guarded<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        format!("the parquet reader failed on corrupt data ({what})")
    })
}
