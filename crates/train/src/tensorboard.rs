//! TensorBoard event files with scalar summaries, written by hand: TFRecord framing with masked
//! CRC-32C, and the `Event` / `Summary` protobuf messages encoded field by field.
//!
//! Record: `u64 length (LE) | u32 masked_crc(length bytes) | data | u32 masked_crc(data)`.
//! `Event { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }`,
//! `Summary { repeated Value value = 1; }`, `Value { string tag = 1; float simple_value = 2; }`.
use crate::callback::{Callback, EvalMetrics, StepMetrics};
use crate::error::{Result, TrainError};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

const CASTAGNOLI: u32 = 0x82F6_3B78;

/// CRC-32C (Castagnoli), bitwise reflected.
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ CASTAGNOLI
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// TFRecord's masked CRC: `((crc >> 15) | (crc << 17)) + 0xa282ead8`.
pub(crate) fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// Frames `data` as one TFRecord.
pub(crate) fn tfrecord(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// Splits TFRecord framing back into records, checking both CRCs.
pub fn read_tfrecords(bytes: &[u8]) -> std::result::Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let head = bytes
            .get(i..i + 12)
            .ok_or(format!("truncated header at byte {i}"))?;
        let len_bytes: [u8; 8] = head[..8].try_into().map_err(|_| "header")?;
        let crc = u32::from_le_bytes(head[8..12].try_into().map_err(|_| "header")?);
        if crc != masked_crc(&len_bytes) {
            return Err(format!("length CRC mismatch at byte {i}"));
        }
        let n = u64::from_le_bytes(len_bytes) as usize;
        let data = bytes
            .get(i + 12..i + 12 + n)
            .ok_or(format!("truncated record at byte {i}"))?;
        let crc = bytes
            .get(i + 12 + n..i + 16 + n)
            .ok_or(format!("truncated CRC at byte {i}"))?;
        if u32::from_le_bytes(crc.try_into().map_err(|_| "crc")?) != masked_crc(data) {
            return Err(format!("data CRC mismatch at byte {i}"));
        }
        out.push(data.to_vec());
        i += 16 + n;
    }
    Ok(out)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, ((field as u64) << 3) | wire as u64);
}

fn bytes_field(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    key(out, field, 2);
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// An `Event` protobuf with the file version (the first record of every event file).
pub(crate) fn version_event(wall_time: f64) -> Vec<u8> {
    let mut e = Vec::new();
    key(&mut e, 1, 1);
    e.extend_from_slice(&wall_time.to_le_bytes());
    bytes_field(&mut e, 3, b"brain.Event:2");
    e
}

/// An `Event` protobuf with `session_log { status: START }` at `step`: TensorBoard purges the
/// events of `step` and later it read before (`EventAccumulator`'s restart handling).
pub(crate) fn restart_event(wall_time: f64, step: i64) -> Vec<u8> {
    let mut e = Vec::new();
    key(&mut e, 1, 1);
    e.extend_from_slice(&wall_time.to_le_bytes());
    key(&mut e, 2, 0);
    varint(&mut e, step as u64);
    // SessionLog (field 7): status (field 1) = START (1).
    bytes_field(&mut e, 7, &[0x08, 0x01]);
    e
}

/// An `Event` protobuf holding scalar summaries at `step`.
pub(crate) fn scalars_event(wall_time: f64, step: i64, scalars: &[(&str, f32)]) -> Vec<u8> {
    let mut summary = Vec::new();
    for (tag, value) in scalars {
        let mut v = Vec::new();
        bytes_field(&mut v, 1, tag.as_bytes());
        key(&mut v, 2, 5);
        v.extend_from_slice(&value.to_le_bytes());
        bytes_field(&mut summary, 1, &v);
    }
    let mut e = Vec::new();
    key(&mut e, 1, 1);
    e.extend_from_slice(&wall_time.to_le_bytes());
    key(&mut e, 2, 0);
    varint(&mut e, step as u64);
    bytes_field(&mut e, 5, &summary);
    e
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Writes `events.out.tfevents.<time>.kiln` in a directory; TensorBoard reads it.
pub struct TensorBoardWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl std::fmt::Debug for TensorBoardWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorBoardWriter")
            .field("path", &self.path)
            .finish()
    }
}

impl TensorBoardWriter {
    /// Creates a new event file in `dir`.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let t = now();
        let path = dir.join(format!(
            "events.out.tfevents.{}.kiln.{}",
            t as u64,
            std::process::id()
        ));
        let file = File::create(&path).map_err(|e| TrainError::io(&path, e))?;
        let mut w = Self {
            path,
            out: BufWriter::new(file),
        };
        w.write_record(&version_event(t))?;
        Ok(w)
    }

    /// [`Self::create`] for a run resumed at step `done` (0: a new run): the file starts with a
    /// `SessionLog` START event at step `done + 1`, on which TensorBoard discards the events of
    /// steps from `done + 1` on that earlier files hold (written after the checkpoint, before
    /// the run stopped).
    pub fn create_at(dir: &Path, done: usize) -> Result<Self> {
        let mut w = Self::create(dir)?;
        if done > 0 {
            w.write_record(&restart_event(now(), done as i64 + 1))?;
        }
        Ok(w)
    }

    /// The event file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_record(&mut self, event: &[u8]) -> Result<()> {
        self.out
            .write_all(&tfrecord(event))
            .map_err(|e| TrainError::io(&self.path, e))?;
        self.out.flush().map_err(|e| TrainError::io(&self.path, e))
    }

    /// Writes scalars (`tag`, value) at `step`.
    pub fn scalars(&mut self, step: usize, scalars: &[(&str, f32)]) -> Result<()> {
        self.write_record(&scalars_event(now(), step as i64, scalars))
    }
}

impl Callback for TensorBoardWriter {
    fn on_step(&mut self, m: &StepMetrics) -> Result<()> {
        self.scalars(
            m.step,
            &[
                ("train/loss", m.loss as f32),
                ("train/lr", m.lr as f32),
                ("train/grad_norm", m.grad_norm as f32),
                ("train/tokens_per_s", m.tokens_per_s as f32),
            ],
        )
    }

    fn on_eval(&mut self, m: &EvalMetrics) -> Result<()> {
        self.scalars(
            m.step,
            &[
                ("eval/loss", m.val_loss as f32),
                ("eval/perplexity", m.val_perplexity as f32),
            ],
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_values() {
        // RFC 3720 B.4 test vectors.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
    }

    #[test]
    fn framing_round_trips_and_detects_corruption() {
        let a = tfrecord(b"hello");
        let b = tfrecord(&[]);
        let all = [a.clone(), b].concat();
        assert_eq!(
            read_tfrecords(&all).unwrap(),
            vec![b"hello".to_vec(), Vec::new()]
        );
        let mut bad = a.clone();
        bad[13] ^= 1;
        assert!(read_tfrecords(&bad).unwrap_err().contains("data CRC"));
        assert!(read_tfrecords(&a[..a.len() - 2]).is_err());
    }

    #[test]
    fn scalar_event_encodes_protobuf_fields() {
        let e = scalars_event(1.5, 3, &[("loss", 2.0)]);
        // wall_time (field 1, fixed64)
        assert_eq!(e[0], 0x09);
        assert_eq!(f64::from_le_bytes(e[1..9].try_into().unwrap()), 1.5);
        // step (field 2, varint 3)
        assert_eq!(&e[9..11], &[0x10, 3]);
        // summary (field 5, bytes) -> value (field 1) -> tag "loss", simple_value 2.0
        assert_eq!(e[11], 0x2a);
        let summary = &e[13..];
        assert_eq!(summary[0], 0x0a);
        let value = &summary[2..];
        assert_eq!(&value[..6], &[0x0a, 4, b'l', b'o', b's', b's']);
        assert_eq!(value[6], 0x15);
        assert_eq!(f32::from_le_bytes(value[7..11].try_into().unwrap()), 2.0);
    }
}
