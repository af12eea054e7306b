//! Helpers shared by the integration tests: fixture paths and reading reference tensors.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]
use safetensors::SafeTensors;
use std::path::PathBuf;

/// `fixtures/` at the workspace root.
pub fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures"))
}

/// A tensor of a reference safetensors file, widened to f64 with its shape.
pub struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    pub fn open(path: PathBuf) -> Self {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self { bytes }
    }

    fn with_view<R>(
        &self,
        name: &str,
        f: impl FnOnce(&safetensors::tensor::TensorView<'_>) -> R,
    ) -> R {
        let st = SafeTensors::deserialize(&self.bytes).expect("valid safetensors");
        let v = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("no tensor `{name}` in reference"));
        f(&v)
    }

    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.with_view(name, |v| v.shape().to_vec())
    }

    pub fn f32(&self, name: &str) -> Vec<f32> {
        self.with_view(name, |v| {
            assert_eq!(v.dtype(), safetensors::Dtype::F32, "{name}");
            v.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        })
    }

    pub fn i64(&self, name: &str) -> Vec<i64> {
        self.with_view(name, |v| {
            assert_eq!(v.dtype(), safetensors::Dtype::I64, "{name}");
            v.data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        })
    }
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
