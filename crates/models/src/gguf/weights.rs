//! [`GgufWeights`]: a GGUF file seen as a [`WeightSource`] in Hugging Face naming and layout.
use super::config::GgufArch;
use super::file::GgufFile;
use super::names;
use crate::error::{ModelError, Result};
use crate::weights::WeightSource;
use kiln_cpu::QMatrix;
use std::collections::HashMap;
use std::path::Path;

/// The tensors of a GGUF file under their Hugging Face names, dequantised to f32 in PyTorch
/// layout, with llama.cpp's q/k row permutation undone for the llama architecture and 1
/// subtracted from Gemma's norm weights (stored as `1 + weight`).
///
/// GGUF tensors outside the layout (`rope_freqs.weight`...) are left out, as transformers
/// leaves them out; see [`GgufWeights::unmapped`]. `lm_head.weight` is listed only when the file
/// has `output.weight` (otherwise the model ties it to the embedding).
#[derive(Debug)]
pub struct GgufWeights {
    file: GgufFile,
    arch: GgufArch,
    /// `(attention heads, key/value heads)`, for undoing the permutation (llama only).
    heads: Option<(usize, usize)>,
    /// HF names in file order, and HF name -> GGUF name.
    names: Vec<String>,
    to_gguf: HashMap<String, String>,
}

impl GgufWeights {
    /// Opens `path` (see [`GgufFile::open`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::new(GgufFile::open(path)?)
    }

    /// Wraps an opened file.
    ///
    /// # Errors
    /// [`ModelError::UnsupportedModelType`] if the architecture is not llama/qwen2;
    /// [`ModelError::GgufKey`] if a llama file lacks `llama.attention.head_count`.
    pub fn new(file: GgufFile) -> Result<Self> {
        let arch = GgufArch::of(&file)?;
        let heads = match arch {
            GgufArch::Llama => {
                let n_head: usize = file.require("llama.attention.head_count")?;
                // llama.cpp's default when the key is absent: as many kv heads as heads.
                let n_kv: usize = file
                    .get_as("llama.attention.head_count_kv")?
                    .unwrap_or(n_head);
                if n_head == 0 {
                    return Err(file.key_error("llama.attention.head_count", "zero heads"));
                }
                if n_kv == 0 {
                    return Err(file.key_error("llama.attention.head_count_kv", "zero heads"));
                }
                Some((n_head, n_kv))
            }
            _ => None,
        };
        let mut names = Vec::new();
        let mut to_gguf = HashMap::new();
        for t in file.tensors() {
            if let Some(hf) = names::hf_name_for(arch, &t.name) {
                names.push(hf.clone());
                to_gguf.insert(hf, t.name.clone());
            }
        }
        Ok(Self {
            file,
            arch,
            heads,
            names,
            to_gguf,
        })
    }

    /// The underlying file (metadata, raw tensors).
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// The architecture.
    pub fn arch(&self) -> GgufArch {
        self.arch
    }

    /// GGUF tensors that have no Hugging Face name and are not loaded.
    pub fn unmapped(&self) -> Vec<&str> {
        self.file
            .tensors()
            .iter()
            .map(|t| t.name.as_str())
            .filter(|n| names::hf_name_for(self.arch, n).is_none())
            .collect()
    }

    fn gguf_name(&self, name: &str) -> Result<&str> {
        self.to_gguf
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| ModelError::MissingWeights {
                path: self.file.path().to_path_buf(),
                keys: vec![name.to_owned()],
            })
    }
}

impl WeightSource for GgufWeights {
    fn path(&self) -> &Path {
        self.file.path()
    }

    fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let gguf = self.to_gguf.get(name)?;
        self.file.tensor(gguf).map(|t| t.shape())
    }

    fn load_f32(&self, name: &str) -> Result<Vec<f32>> {
        let gguf = self.gguf_name(name)?;
        let mut data = self.file.dequantize(gguf)?;
        if self.arch.norms_offset_by_one() && gguf.ends_with("norm.weight") {
            // GGUF stores Gemma's `1 + weight`; transformers subtracts 1 when loading.
            data.iter_mut().for_each(|w| *w -= 1.0);
            return Ok(data);
        }
        match self.permuted_heads(gguf)? {
            Some((rows, groups)) => Ok(unpermute_rows(&data, rows, data.len() / rows, groups)),
            None => Ok(data),
        }
    }

    fn release(&self, name: &str) {
        if let Some(gguf) = self.to_gguf.get(name) {
            self.file.release(gguf);
        }
    }

    fn load_stored(&self, name: &str) -> Result<Option<QMatrix>> {
        let gguf = self.gguf_name(name)?;
        if self.arch.norms_offset_by_one() && gguf.ends_with("norm.weight") {
            return Ok(None);
        }
        let Some(m) = self.file.stored_matrix(gguf)? else {
            return Ok(None);
        };
        let Some((rows, groups)) = self.permuted_heads(gguf)? else {
            return Ok(Some(m));
        };
        // Undo llama.cpp's permutation by reading rows through a map: nothing is copied.
        m.with_row_map(qk_row_map(rows, groups))
            .map(Some)
            .map_err(|e| ModelError::GgufTensor {
                path: self.file.path().to_path_buf(),
                tensor: gguf.to_owned(),
                reason: e.to_string(),
            })
    }

    fn dtype(&self, name: &str) -> Option<String> {
        let gguf = self.to_gguf.get(name)?;
        self.file.tensor(gguf).map(|t| t.ggml_type.name())
    }
}

impl GgufWeights {
    /// For a llama q/k tensor, `(rows, heads)` of llama.cpp's row permutation to undo.
    fn permuted_heads(&self, gguf: &str) -> Result<Option<(usize, usize)>> {
        let (Some((n_head, n_kv)), Some(is_q)) = (self.heads, names::is_query_or_key(gguf)) else {
            return Ok(None);
        };
        let shape = self
            .file
            .tensor(gguf)
            .map(|t| t.shape())
            .unwrap_or_default();
        let groups = if is_q { n_head } else { n_kv };
        let rows = shape.first().copied().unwrap_or(0);
        if rows == 0 || rows % (2 * groups) != 0 {
            return Err(ModelError::GgufTensor {
                path: self.file.path().to_path_buf(),
                tensor: gguf.to_owned(),
                reason: format!(
                    "shape {shape:?}: {rows} rows cannot be split into {groups} heads of \
                     rotary pairs (to undo llama.cpp's q/k permutation)"
                ),
            });
        }
        Ok(Some((rows, groups)))
    }
}

/// llama.cpp's `permute` of q/k rows as a map: within each of `n_head` heads of `2 · dim` rows,
/// Hugging Face row `p · dim + i` is stored at GGUF row `2 · i + p`; entry `r` of the map is the
/// GGUF row of Hugging Face row `r`.
pub(crate) fn qk_row_map(rows: usize, n_head: usize) -> Vec<u32> {
    let dim = rows / n_head / 2;
    let mut map = vec![0u32; rows];
    for h in 0..n_head {
        for p in 0..2 {
            for i in 0..dim {
                map[h * 2 * dim + p * dim + i] = (h * 2 * dim + 2 * i + p) as u32;
            }
        }
    }
    map
}

/// Undoes llama.cpp's `permute` of q/k rows (transformers' `_reverse_permute_weights`).
///
/// # Shapes
/// `data`: `[rows, cols]` row-major (a bias is `cols = 1`); returns the same shape.
pub(crate) fn unpermute_rows(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    for (hf, &gguf) in qk_row_map(rows, n_head).iter().enumerate() {
        let g = gguf as usize;
        out[hf * cols..(hf + 1) * cols].copy_from_slice(&data[g * cols..(g + 1) * cols]);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(n_head, 2, dim, cols).swapaxes(1, 2): original row p*dim+i of a
        // head lands at row 2*i+p. Two heads of 4 rows, 3 columns.
        let (n_head, dim, cols) = (2, 2, 3);
        let rows = n_head * 2 * dim;
        let original: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let mut permuted = vec![0f32; original.len()];
        for h in 0..n_head {
            for p in 0..2 {
                for i in 0..dim {
                    let src = h * 2 * dim + p * dim + i;
                    let dst = h * 2 * dim + 2 * i + p;
                    permuted[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&original[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_ne!(permuted, original);
        assert_eq!(unpermute_rows(&permuted, rows, cols, n_head), original);
        // Row 1 of the result is the file's row 2 (i = 1, p = 0).
        assert_eq!(
            unpermute_rows(&permuted, rows, cols, n_head)[3..6],
            permuted[6..9]
        );
    }
}
