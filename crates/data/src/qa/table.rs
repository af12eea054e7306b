//! A CSV table keyed by one text column, with its numeric columns.

use std::path::Path;

use crate::error::{DataError, Location, Result};

/// A numeric column.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    /// Measure name without year and unit suffix (`population`, `area`).
    pub measure: String,
    pub year: Option<u32>,
    pub unit: Option<String>,
    /// Every value is a whole number.
    pub integer: bool,
    pub values: Vec<f64>,
}

/// A table keyed by one text column.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub key_column: String,
    pub keys: Vec<String>,
    pub columns: Vec<Column>,
}

impl Table {
    /// Reads a CSV with a header. Numeric columns are those whose every cell parses as a number.
    pub fn from_csv(path: &Path, key_column: &str) -> Result<Self> {
        let at = |line| Location {
            file: path.to_path_buf(),
            line,
        };
        // Opening is an I/O error naming the path (a relative path is read from the working
        // directory), not a CSV one.
        let file = std::fs::File::open(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = csv::Reader::from_reader(file);
        let headers: Vec<String> = reader
            .headers()
            .map_err(|e| DataError::Malformed {
                at: at(1),
                format: "CSV",
                message: e.to_string(),
            })?
            .iter()
            .map(str::to_string)
            .collect();
        let key_idx = headers
            .iter()
            .position(|h| h == key_column)
            .ok_or_else(|| DataError::Table {
                at: at(1),
                column: key_column.into(),
                message: format!("no such column; header is [{}]", headers.join(", ")),
            })?;
        let mut cells: Vec<Vec<String>> = vec![Vec::new(); headers.len()];
        for (i, row) in reader.records().enumerate() {
            let row = row.map_err(|e| DataError::Malformed {
                at: at(i + 2),
                format: "CSV",
                message: e.to_string(),
            })?;
            for (c, cell) in row.iter().enumerate() {
                cells[c].push(cell.trim().to_string());
            }
        }
        let keys = cells[key_idx].clone();
        if keys.len() < 2 {
            return Err(DataError::Table {
                at: at(1),
                column: key_column.into(),
                message: "the table needs at least two rows".into(),
            });
        }
        let columns: Vec<Column> = headers
            .iter()
            .zip(&cells)
            .enumerate()
            .filter(|(i, _)| *i != key_idx)
            .filter_map(|(_, (name, col))| {
                let values: Option<Vec<f64>> = col.iter().map(|c| c.parse().ok()).collect();
                values.map(|values| column(name, values))
            })
            .collect();
        if columns.is_empty() {
            return Err(DataError::Table {
                at: at(1),
                column: key_column.into(),
                message: "no numeric column".into(),
            });
        }
        Ok(Self {
            key_column: key_column.into(),
            keys,
            columns,
        })
    }
}

fn column(name: &str, values: Vec<f64>) -> Column {
    let mut measure = name.to_string();
    let mut year = None;
    if let Some((head, tail)) = name.rsplit_once('_')
        && tail.len() == 4
        && tail.bytes().all(|b| b.is_ascii_digit())
    {
        year = tail.parse().ok();
        measure = head.to_string();
    }
    let mut unit = None;
    if let Some(m) = measure.strip_suffix("_km2") {
        measure = m.to_string();
        unit = Some("km²".to_string());
    }
    let integer = values.iter().all(|v| v.fract() == 0.0);
    Column {
        name: name.into(),
        measure: measure.replace('_', " "),
        year,
        unit,
        integer,
        values,
    }
}
