//! Checks every page header of a Parquet file before the `parquet` crate decodes a row.
//!
//! Why kiln reads page headers itself: the `parquet` crate allocates what a page header claims
//! before it can find out the claim is false: `uncompressed_page_size` bytes for the
//! decompressed page (up to 2 GiB) and `num_values` dictionary slots (32 bytes each for strings).
//! `fuzz_parquet_reader` found a 1,037-byte file whose dictionary header made it allocate 190 MB.
//! The crate's Thrift reader is private, so this module reads the few header fields that drive
//! those allocations with a small Thrift compact-protocol walker (no allocation: binary fields
//! are skipped, not read) and refuses a page whose claims its own bytes cannot justify:
//!
//! - a page must lie inside its column chunk, and the chunk inside the file;
//! - a page may claim up to 1 MiB decompressed whatever its size (writers' default page size:
//!   every file pyarrow or the `parquet` crate writes by default passes), and above that at most
//!   the codec's ratio times its compressed size (gzip's 1,032:1 for gzip and zstd, LZ4's
//!   255:1, Snappy's 22:1; an uncompressed page claims its own size);
//! - a dictionary page holds at most as many values as its plain encoding fits in the claimed
//!   bytes (4 bytes per string or INT32, 8 per INT64, 1 bit per boolean, ...).
//!
//! Reading the headers costs one seek per page; the pages themselves are not read.
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};

use parquet::basic::{Compression, Type as PhysicalType};
use parquet::file::metadata::{ColumnChunkMetaData, ParquetMetaData};

/// Decompressed bytes any page may claim (writers' default page size).
const FREE_PAGE_BYTES: u64 = 1 << 20;
/// Thrift nesting kiln follows in a page header (the real header nests 3 deep).
const MAX_DEPTH: usize = 16;

/// Checks every page of every column chunk; the error names row group, column and page.
pub(crate) fn check(file: &File, meta: &ParquetMetaData) -> Result<(), String> {
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut input = BufReader::with_capacity(8 << 10, file);
    for (g, group) in meta.row_groups().iter().enumerate() {
        for column in group.columns() {
            check_chunk(&mut input, file_len, column)
                .map_err(|e| format!("row group {g}, column `{}`: {e}", column.column_path()))?;
        }
    }
    Ok(())
}

fn check_chunk(
    input: &mut BufReader<&File>,
    file_len: u64,
    column: &ColumnChunkMetaData,
) -> Result<(), String> {
    let start = column
        .dictionary_page_offset()
        .unwrap_or(column.data_page_offset());
    let len = column.compressed_size();
    let (Ok(start), Ok(len)) = (u64::try_from(start), u64::try_from(len)) else {
        return Err(format!("negative chunk offset {start} or length {len}"));
    };
    let end = start
        .checked_add(len)
        .filter(|&end| end <= file_len)
        .ok_or_else(|| format!("chunk {start}+{len} ends past the file ({file_len} bytes)"))?;
    let min_bits = min_plain_bits(column);
    let mut at = start;
    let mut page = 0usize;
    while at < end {
        input.seek(SeekFrom::Start(at)).map_err(|e| e.to_string())?;
        let mut counted = Counted {
            inner: &mut *input,
            read: 0,
            limit: end - at,
        };
        let header = read_header(&mut counted).map_err(|e| format!("page {page}: {e}"))?;
        let body = u64::try_from(header.compressed)
            .map_err(|_| format!("page {page}: negative compressed size"))?;
        at = (at + counted.read)
            .checked_add(body)
            .filter(|&next| next <= end)
            .ok_or_else(|| format!("page {page}: {body} bytes run past the chunk's end"))?;
        header
            .justified(column.compression(), body, min_bits)
            .map_err(|e| format!("page {page}: {e}"))?;
        page += 1;
    }
    Ok(())
}

/// The fewest bits one PLAIN-encoded value of the column takes.
fn min_plain_bits(column: &ColumnChunkMetaData) -> u64 {
    match column.column_type() {
        PhysicalType::BOOLEAN => 1,
        PhysicalType::INT32 | PhysicalType::FLOAT | PhysicalType::BYTE_ARRAY => 32,
        PhysicalType::INT64 | PhysicalType::DOUBLE => 64,
        PhysicalType::INT96 => 96,
        PhysicalType::FIXED_LEN_BYTE_ARRAY => 8 * column.column_descr().type_length().max(1) as u64,
    }
}

/// The fields of a `PageHeader` that drive the reader's allocations.
#[derive(Debug, Default)]
struct Header {
    uncompressed: i64,
    compressed: i64,
    /// `dictionary_page_header.num_values`, for a dictionary page.
    dictionary_values: Option<i64>,
}

impl Header {
    fn justified(&self, codec: Compression, body: u64, min_bits: u64) -> Result<(), String> {
        let claimed = u64::try_from(self.uncompressed)
            .map_err(|_| format!("negative uncompressed size {}", self.uncompressed))?;
        let ratio = match codec {
            Compression::UNCOMPRESSED => 1,
            Compression::SNAPPY => 22,
            Compression::LZ4 | Compression::LZ4_RAW => 255,
            _ => 1032,
        };
        let allowed = body.saturating_mul(ratio).max(FREE_PAGE_BYTES);
        if claimed > allowed {
            return Err(format!(
                "claims {claimed} bytes decompressed from {body} ({codec}); at most {allowed} \
                 can be"
            ));
        }
        if let Some(n) = self.dictionary_values {
            let bytes = if codec == Compression::UNCOMPRESSED {
                body
            } else {
                claimed
            };
            let fits = bytes.saturating_mul(8) / min_bits;
            if u64::try_from(n).map_or(true, |n| n > fits) {
                return Err(format!(
                    "dictionary claims {n} values; its {bytes} bytes hold at most {fits}"
                ));
            }
        }
        Ok(())
    }
}

/// A reader that counts what it gives and refuses to go past `limit` (the chunk's end).
struct Counted<R> {
    inner: R,
    read: u64,
    limit: u64,
}

impl<R: Read> Counted<R> {
    fn byte(&mut self) -> Result<u8, String> {
        let mut b = [0u8; 1];
        self.take(&mut b)?;
        Ok(b[0])
    }

    fn take(&mut self, buf: &mut [u8]) -> Result<(), String> {
        if self.read + buf.len() as u64 > self.limit {
            return Err("page header runs past the chunk's end".into());
        }
        self.inner.read_exact(buf).map_err(|e| e.to_string())?;
        self.read += buf.len() as u64;
        Ok(())
    }

    fn skip(&mut self, n: u64) -> Result<(), String> {
        if self.read.saturating_add(n) > self.limit {
            return Err("page header runs past the chunk's end".into());
        }
        let copied = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink())
            .map_err(|e| e.to_string())?;
        if copied != n {
            return Err("page header runs past the file's end".into());
        }
        self.read += n;
        Ok(())
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn zigzag(&mut self) -> Result<i64, String> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }
}

// Thrift compact-protocol type codes.
const T_STOP: u8 = 0;
const T_TRUE: u8 = 1;
const T_FALSE: u8 = 2;
const T_BYTE: u8 = 3;
const T_I16: u8 = 4;
const T_I32: u8 = 5;
const T_I64: u8 = 6;
const T_DOUBLE: u8 = 7;
const T_BINARY: u8 = 8;
const T_LIST: u8 = 9;
const T_SET: u8 = 10;
const T_MAP: u8 = 11;
const T_STRUCT: u8 = 12;
const T_UUID: u8 = 13;

/// Reads one `PageHeader` struct, keeping fields 2, 3 and 7.1 and skipping the rest.
fn read_header<R: Read>(r: &mut Counted<R>) -> Result<Header, String> {
    let mut header = Header::default();
    let (mut has_uncompressed, mut has_compressed) = (false, false);
    walk_struct(r, 0, &mut |r, id, ty| match (id, ty) {
        (2, T_I32) => {
            header.uncompressed = r.zigzag()?;
            has_uncompressed = true;
            Ok(true)
        }
        (3, T_I32) => {
            header.compressed = r.zigzag()?;
            has_compressed = true;
            Ok(true)
        }
        (7, T_STRUCT) => {
            let mut values = None;
            walk_struct(r, 1, &mut |r, id, ty| match (id, ty) {
                (1, T_I32) => {
                    values = Some(r.zigzag()?);
                    Ok(true)
                }
                _ => Ok(false),
            })?;
            header.dictionary_values = Some(values.ok_or("dictionary header without num_values")?);
            Ok(true)
        }
        _ => Ok(false),
    })?;
    if !(has_uncompressed && has_compressed) {
        return Err("page header without its sizes".into());
    }
    Ok(header)
}

/// Reads a field it wants (`(reader, field id, type code)`) and returns `true`, or `false`.
type FieldFn<'a, R> = dyn FnMut(&mut Counted<R>, i64, u8) -> Result<bool, String> + 'a;

/// Walks a struct's fields; `field(r, id, type)` reads a field it wants and returns `true`,
/// or returns `false` and the field is skipped.
fn walk_struct<R: Read>(
    r: &mut Counted<R>,
    depth: usize,
    field: &mut FieldFn<'_, R>,
) -> Result<(), String> {
    let mut id = 0i64;
    loop {
        let b = r.byte()?;
        let ty = b & 0x0f;
        if ty == T_STOP {
            return Ok(());
        }
        id = match b >> 4 {
            0 => r.zigzag()?,
            delta => id + i64::from(delta),
        };
        if !field(r, id, ty)? {
            skip(r, ty, depth + 1)?;
        }
    }
}

/// Skips one value of type `ty`.
fn skip<R: Read>(r: &mut Counted<R>, ty: u8, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("page header nests deeper than {MAX_DEPTH}"));
    }
    match ty {
        // In a struct a boolean's value is its type code; in a list it takes a byte.
        T_TRUE | T_FALSE => Ok(()),
        T_BYTE => r.skip(1),
        T_I16 | T_I32 | T_I64 => r.varint().map(drop),
        T_DOUBLE => r.skip(8),
        T_UUID => r.skip(16),
        T_BINARY => {
            let n = r.varint()?;
            r.skip(n)
        }
        T_LIST | T_SET => {
            let b = r.byte()?;
            let n = match u64::from(b >> 4) {
                15 => r.varint()?,
                n => n,
            };
            skip_elements(r, b & 0x0f, n, depth)
        }
        T_MAP => {
            let n = r.varint()?;
            if n == 0 {
                return Ok(());
            }
            let kv = r.byte()?;
            for _ in 0..n {
                skip_elements(r, kv >> 4, 1, depth)?;
                skip_elements(r, kv & 0x0f, 1, depth)?;
            }
            Ok(())
        }
        T_STRUCT => walk_struct(r, depth, &mut |_, _, _| Ok(false)),
        other => Err(format!("unknown Thrift type {other} in page header")),
    }
}

/// Skips `n` elements of a list, set or map; every element takes at least one byte, so a
/// count past the chunk's end fails on the first missing byte rather than looping.
fn skip_elements<R: Read>(r: &mut Counted<R>, ty: u8, n: u64, depth: usize) -> Result<(), String> {
    for _ in 0..n {
        match ty {
            T_TRUE | T_FALSE => r.skip(1)?,
            _ => skip(r, ty, depth + 1)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(bytes: &[u8]) -> Result<Header, String> {
        read_header(&mut Counted {
            inner: bytes,
            read: 0,
            limit: bytes.len() as u64,
        })
    }

    /// A dictionary page header as pyarrow writes it: type 2, sizes 40/30, crc skipped,
    /// dictionary_page_header { num_values 5, encoding 0 }.
    const DICT: &[u8] = &[
        0x15, 0x04, // 1: i32 type = 2 (zigzag 4)
        0x15, 0x50, // 2: i32 uncompressed = 40
        0x15, 0x3c, // 3: i32 compressed = 30
        0x15, 0x02, // 4: i32 crc = 1
        0x3c, // 7: struct (delta 3)
        0x15, 0x0a, // 1: num_values = 5
        0x15, 0x00, // 2: encoding
        0x00, // stop
        0x00, // stop
    ];

    #[test]
    fn reads_the_sizes_and_dictionary_count() {
        let h = header(DICT).unwrap();
        assert_eq!((h.uncompressed, h.compressed), (40, 30));
        assert_eq!(h.dictionary_values, Some(5));
        // 40 bytes hold 10 strings' lengths at most: 5 is fine, 11 is not.
        assert!(h.justified(Compression::SNAPPY, 30, 32).is_ok());
        let h = Header {
            dictionary_values: Some(11),
            ..h
        };
        assert!(h.justified(Compression::SNAPPY, 30, 32).is_err());
    }

    #[test]
    fn refuses_claims_the_bytes_cannot_hold() {
        let h = Header {
            uncompressed: (2 << 20) + 1,
            compressed: 2048,
            dictionary_values: None,
        };
        // Up to 1 MiB is always allowed; above it gzip's ratio bounds the claim.
        assert!(h.justified(Compression::SNAPPY, 2048, 8).is_err());
        assert!(
            h.justified(Compression::ZSTD(Default::default()), 2048, 8)
                .is_ok()
        );
        assert!(
            h.justified(Compression::ZSTD(Default::default()), 1024, 8)
                .is_err()
        );
    }

    #[test]
    fn truncated_or_runaway_headers_are_errors() {
        for n in 0..DICT.len() - 1 {
            assert!(header(&DICT[..n]).is_err(), "{n} bytes");
        }
        // A list claiming 2^40 elements in a 6-byte header ends at the header's end.
        let list = [0x19, 0xf5, 0x80, 0x80, 0x80, 0x80, 0x20];
        assert!(header(&list).unwrap_err().contains("past the chunk"));
        // Structs nested past the limit.
        let deep = [0x1c; 64];
        assert!(header(&deep).unwrap_err().contains("nests deeper"));
    }
}
