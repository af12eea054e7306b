//! Corrupt, truncated and absurd GGUF files: each is a typed error naming the file and the key or
//! tensor at fault, never a panic or a huge allocation.
#![allow(clippy::unwrap_used)]
use kiln_models::ModelError;
use kiln_models::gguf::GgufFile;
use std::io::Write;

/// Little-endian GGUF byte builder.
#[derive(Default)]
struct Bytes(Vec<u8>);

impl Bytes {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Self {
        let mut b = Self::default();
        b.0.extend_from_slice(b"GGUF");
        b.u32(version).u64(n_tensors).u64(n_kv);
        b
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).raw(s.as_bytes())
    }
    /// A `u32` metadata entry.
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key).u32(4).u32(v)
    }
    /// A tensor info.
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Pads to 32 bytes and appends `n` data bytes.
    fn data(&mut self, n: usize) -> &mut Self {
        let pad = self.0.len().next_multiple_of(32) - self.0.len();
        self.0.extend(std::iter::repeat_n(0u8, pad + n));
        self
    }
}

fn open(bytes: &[u8]) -> (tempfile::NamedTempFile, Result<GgufFile, ModelError>) {
    let mut f = tempfile::Builder::new()
        .suffix(".gguf")
        .tempfile()
        .expect("temp file");
    f.write_all(bytes).expect("write");
    f.flush().expect("flush");
    let r = GgufFile::open(f.path());
    (f, r)
}

/// Opens `bytes`, expects an error, checks it names the file and every `needles`, returns it.
fn fails(bytes: &[u8], needles: &[&str]) -> ModelError {
    let (f, r) = open(bytes);
    let err = r.expect_err("corrupt file must not open");
    let msg = err.to_string();
    let name = f.path().file_name().and_then(|n| n.to_str()).unwrap_or("?");
    assert!(msg.contains(name), "error names the file: {msg}");
    for n in needles {
        assert!(msg.contains(n), "error mentions `{n}`: {msg}");
    }
    err
}

fn valid() -> Bytes {
    let mut b = Bytes::header(3, 1, 1);
    b.kv_u32("llama.block_count", 2)
        .tensor("w", &[32, 2], 0, 0)
        .data(256);
    b
}

#[test]
fn the_hand_built_file_is_valid() {
    let (_f, r) = open(&valid().0);
    let file = r.expect("valid file opens");
    assert_eq!(file.get_u32("llama.block_count").expect("u32"), Some(2));
    assert_eq!(file.tensor("w").map(|t| t.shape()), Some(vec![2, 32]));
    assert_eq!(file.dequantize("w").expect("f32").len(), 64);
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let full = valid().0;
    for len in 0..full.len() {
        let (_f, r) = open(&full[..len]);
        assert!(r.is_err(), "prefix of {len} bytes must not open");
    }
}

#[test]
fn truncated_tensor_data_names_the_tensor() {
    let full = valid().0;
    let err = fails(&full[..full.len() - 1], &["`w`", "beyond the end"]);
    assert!(matches!(err, ModelError::GgufTensor { .. }), "{err:?}");
}

#[test]
fn empty_file_and_bad_magic() {
    fails(&[], &["magic"]);
    fails(b"GGML\x03\0\0\0", &["bad magic"]);
}

#[test]
fn unsupported_versions() {
    fails(&Bytes::header(1, 0, 0).0, &["version 1"]);
    fails(&Bytes::header(99, 0, 0).0, &["version 99"]);
    fails(&Bytes::header(3u32.swap_bytes(), 0, 0).0, &["big-endian"]);
}

#[test]
fn absurd_counts_fail_before_allocating() {
    fails(&Bytes::header(3, u64::MAX, 0).0, &["tensor count"]);
    fails(&Bytes::header(3, 0, u64::MAX).0, &["metadata count"]);
    fails(&Bytes::header(3, 0, 1 << 40).0, &["metadata count"]);
}

#[test]
fn absurd_string_length_names_the_entry() {
    let mut b = Bytes::header(3, 0, 1);
    b.u64(1 << 60).raw(b"key plus some bytes");
    fails(&b.0, &["metadata entry #0", "string of length"]);
    // a value string too long for the file names its key
    let mut b = Bytes::header(3, 0, 1);
    b.str("general.name").u32(8).u64(u64::MAX).raw(b"x");
    let err = fails(&b.0, &["general.name"]);
    assert!(matches!(err, ModelError::GgufKey { .. }), "{err:?}");
}

#[test]
fn absurd_array_count_names_the_key() {
    let mut b = Bytes::header(3, 0, 1);
    b.str("tokenizer.ggml.tokens").u32(9).u32(8).u64(1 << 50);
    fails(&b.0, &["tokenizer.ggml.tokens", "array count"]);
}

#[test]
fn unknown_value_types_and_bad_values() {
    let mut b = Bytes::header(3, 0, 1);
    b.str("k").u32(13).u32(0);
    fails(&b.0, &["`k`", "unknown value type 13"]);
    let mut b = Bytes::header(3, 0, 1);
    b.str("k").u32(9).u32(77).u64(1).u32(0);
    fails(&b.0, &["`k`", "unknown value type 77"]);
    let mut b = Bytes::header(3, 0, 1);
    b.str("flag").u32(7).raw(&[2]);
    fails(&b.0, &["`flag`", "bool"]);
    let mut b = Bytes::header(3, 0, 1);
    b.str("name").u32(8).u64(2).raw(&[0xff, 0xfe]);
    fails(&b.0, &["`name`", "UTF-8"]);
}

#[test]
fn deeply_nested_arrays_are_rejected() {
    let mut b = Bytes::header(3, 0, 1);
    b.str("nest");
    b.u32(9);
    for _ in 0..6 {
        b.u32(9).u64(1);
    }
    b.u32(4).u64(1).u32(0);
    fails(&b.0, &["`nest`", "nested"]);
}

#[test]
fn duplicate_keys_and_tensors() {
    let mut b = Bytes::header(3, 0, 2);
    b.kv_u32("a", 1).kv_u32("a", 2);
    fails(&b.0, &["`a`", "duplicate key"]);
    let mut b = Bytes::header(3, 2, 0);
    b.tensor("t", &[32], 0, 0)
        .tensor("t", &[32], 0, 128)
        .data(256);
    fails(&b.0, &["`t`", "duplicate tensor"]);
}

#[test]
fn bad_alignment() {
    let mut b = Bytes::header(3, 0, 1);
    b.kv_u32("general.alignment", 3);
    fails(&b.0, &["general.alignment", "power of two"]);
    let mut b = Bytes::header(3, 0, 1);
    b.kv_u32("general.alignment", 0);
    fails(&b.0, &["general.alignment"]);
}

#[test]
fn bad_tensor_infos_name_the_tensor() {
    let cases: [(&[u64], u32, u64, &str); 6] = [
        (&[32, 2], 0, 1 << 20, "beyond the end"),
        (&[32, 2], 0, 8, "not a multiple of the alignment"),
        (&[32, 2], 5, 0, "unknown ggml type id 5"),
        (&[1, 1, 1, 1, 1], 0, 0, "n_dims is 5"),
        (&[u64::MAX, 4], 0, 0, "overflows"),
        (&[33, 2], 8, 0, "not a multiple of the Q8_0 block size 32"),
    ];
    for (dims, ty, offset, needle) in cases {
        let mut b = Bytes::header(3, 1, 0);
        b.tensor("blk.0.attn_q.weight", dims, ty, offset).data(512);
        let err = fails(&b.0, &["blk.0.attn_q.weight", needle]);
        assert!(matches!(err, ModelError::GgufTensor { .. }), "{err:?}");
    }
    let mut b = Bytes::header(3, 1, 0);
    b.tensor("t", &[], 0, 0).data(64);
    fails(&b.0, &["`t`", "n_dims is 0"]);
}

#[test]
fn missing_file_is_an_io_error() {
    let err = GgufFile::open("/nonexistent/dir/model.gguf").expect_err("missing");
    assert!(matches!(err, ModelError::Io { .. }));
    assert!(err.to_string().contains("model.gguf"));
}
