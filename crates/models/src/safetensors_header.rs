//! Naming the tensor at fault in a safetensors header the `safetensors` crate refuses.
//!
//! The crate's errors say what is wrong (`TensorInvalidInfo`, `MisalignedSlice`,
//! `MetadataIncompleteBuffer`, an unknown dtype variant) but not which tensor; a user with a
//! 300-tensor checkpoint needs the name. When the crate refuses a header, [`diagnose`] reads it
//! again (only the header: its length was already bounded by the file) and names the first
//! tensor whose dtype, shape, offsets or place in the data section do not fit.
use serde_json::{Map, Value};

/// The width in bits of a safetensors dtype name, `None` for a name the format does not define.
fn dtype_bits(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" => 64,
        _ => return None,
    })
}

/// `(name, start, end)` of one tensor entry, or why the entry is malformed.
fn entry(name: &str, info: &Value) -> Result<(u64, u64), String> {
    let dtype = info.get("dtype").and_then(Value::as_str);
    let bits = match dtype {
        None => return Err(format!("tensor `{name}`: no `dtype` string")),
        Some(d) => dtype_bits(d).ok_or_else(|| format!("tensor `{name}`: unknown dtype `{d}`"))?,
    };
    let shape: Option<Vec<u64>> = info
        .get("shape")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(Value::as_u64).collect());
    let shape = shape.ok_or_else(|| {
        format!("tensor `{name}`: `shape` is not a list of non-negative integers")
    })?;
    let offsets: Option<Vec<u64>> = info
        .get("data_offsets")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(Value::as_u64).collect());
    let (start, end) = match offsets.as_deref() {
        Some(&[s, e]) if s <= e => (s, e),
        _ => {
            return Err(format!(
                "tensor `{name}`: `data_offsets` must be [start, end] with start <= end, found {}",
                info.get("data_offsets").unwrap_or(&Value::Null)
            ));
        }
    };
    let need = shape
        .iter()
        .try_fold(bits, |acc, &d| acc.checked_mul(d))
        .map(|b| b.div_ceil(8));
    match need {
        Some(n) if n == end - start => Ok((start, end)),
        Some(n) => Err(format!(
            "tensor `{name}`: shape {shape:?} of {} needs {n} bytes, data_offsets [{start}, \
             {end}] hold {}",
            dtype.unwrap_or_default(),
            end - start
        )),
        None => Err(format!("tensor `{name}`: shape {shape:?} overflows")),
    }
}

/// The first tensor of the header of `bytes` (a whole safetensors file) that is malformed, as a
/// message naming it; `None` when the header cannot be read at all or no tensor is at fault.
pub(crate) fn diagnose(bytes: &[u8]) -> Option<String> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let end = 8usize.checked_add(usize::try_from(n).ok()?)?;
    let header: Map<String, Value> = serde_json::from_slice(bytes.get(8..end)?).ok()?;
    let mut spans = Vec::with_capacity(header.len());
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        match entry(name, info) {
            Ok((s, e)) => spans.push((s, e, name)),
            Err(reason) => return Some(reason),
        }
    }
    spans.sort();
    let mut pos = 0;
    for (s, e, name) in spans {
        if s != pos {
            return Some(format!(
                "tensor `{name}`: data_offsets [{s}, {e}] start at byte {s}, but the previous \
                 tensor ends at {pos} (tensors must be contiguous, without gaps or overlaps)"
            ));
        }
        pos = e;
    }
    let data_len = (bytes.len() - end) as u64;
    if pos != data_len {
        let last = header
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .find(|(k, v)| entry(k, v).is_ok_and(|(_, e)| e == pos))
            .map_or("<none>", |(k, _)| k.as_str());
        return Some(format!(
            "the last tensor `{last}` ends at byte {pos} of a {data_len}-byte data section \
             (truncated file, or extra bytes after the data)"
        ));
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.resize(b.len() + data, 0);
        b
    }

    #[test]
    fn each_fault_names_its_tensor() {
        let cases = [
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"Q9","shape":[1],"data_offsets":[8,12]}}"#,
                12,
                "`b`: unknown dtype `Q9`",
            ),
            (
                r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                8,
                "`w`: shape [3] of F32 needs 12 bytes",
            ),
            (
                r#"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#,
                4,
                "`w`: `shape`",
            ),
            (
                r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#,
                4,
                "`w`: `data_offsets`",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
                12,
                "`b`: data_offsets [8, 12] start at byte 8",
            ),
            (
                r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                4,
                "last tensor `w` ends at byte 8 of a 4-byte",
            ),
        ];
        for (header, data, want) in cases {
            let got = diagnose(&file(header, data)).unwrap_or_default();
            assert!(got.contains(want), "{header}: {got}");
        }
        let ok = r#"{"__metadata__":{"format":"pt"},"w":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}}"#;
        assert_eq!(diagnose(&file(ok, 4)), None);
    }
}
