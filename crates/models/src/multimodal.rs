//! The language model of a multimodal `gemma3` checkpoint (`Gemma3ForConditionalGeneration`)
//! read as a text model: its tensors under text-model names, the vision tower and projector left
//! out, and the module paths PEFT adapters use for it.
//!
//! Two key layouts exist on disk (transformers 5 reads both, its "llava" conversion rules):
//! - original, as `save_pretrained` writes it and google's checkpoints hold:
//!   `language_model.model.*`, `language_model.lm_head.weight`, `vision_tower.*`,
//!   `multi_modal_projector.*`;
//! - the module tree of transformers ≥ 4.52 (what `state_dict()`-based tools write):
//!   `model.language_model.*`, `lm_head.weight`, `model.vision_tower.*`,
//!   `model.multi_modal_projector.*`.
use crate::error::{ModelError, Result};
use crate::weights::WeightSource;
use std::path::Path;

/// Prefixes of the vision tower and projector in either layout; kiln does not load them.
pub(crate) const VISION_PREFIXES: [&str; 4] = [
    "vision_tower.",
    "multi_modal_projector.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
];

/// PEFT adapters of the original layout (transformers 4.50/4.51 era) name the text modules
/// `language_model.model.*` and `language_model.lm_head`; PEFT loads them as the module layout.
pub(crate) const LEGACY_ADAPTER_PREFIXES: [(&str, &str); 2] = [
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head", "lm_head"),
];

/// Where the text decoder's tensors are in a multimodal checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyLayout {
    /// `language_model.model.*`, `language_model.lm_head.*`.
    Original,
    /// `model.language_model.*`, `lm_head.*`.
    Modules,
}

impl KeyLayout {
    /// `(prefix of the body, prefix of the head)` in the file.
    fn prefixes(self) -> (&'static str, &'static str) {
        match self {
            Self::Original => ("language_model.model.", "language_model.lm_head."),
            Self::Modules => ("model.language_model.", "lm_head."),
        }
    }
}

/// A multimodal checkpoint's tensors seen as a text model's: `model.*` and `lm_head.*` names
/// map to the file's, the vision tower and projector are hidden, anything else is passed
/// through unchanged (so the loader reports it as unexpected).
pub(crate) struct LanguageModelWeights<'a> {
    inner: &'a dyn WeightSource,
    layout: KeyLayout,
}

impl<'a> LanguageModelWeights<'a> {
    /// Finds which layout `inner` uses.
    ///
    /// # Errors
    /// [`ModelError::MissingWeights`] naming the embedding in both layouts when neither holds
    /// the language model.
    pub(crate) fn new(inner: &'a dyn WeightSource) -> Result<Self> {
        let names = inner.names();
        let has = |prefix: &str| names.iter().any(|n| n.starts_with(prefix));
        let layout = if has(KeyLayout::Modules.prefixes().0) {
            KeyLayout::Modules
        } else if has(KeyLayout::Original.prefixes().0) {
            KeyLayout::Original
        } else {
            return Err(ModelError::MissingWeights {
                path: inner.path().to_path_buf(),
                keys: vec![
                    "language_model.model.embed_tokens.weight (or \
                     model.language_model.embed_tokens.weight): no language model in this \
                     multimodal gemma3 checkpoint"
                        .into(),
                ],
            });
        };
        Ok(Self { inner, layout })
    }

    /// The file's name of text-model tensor `name`.
    pub(crate) fn file_name(&self, name: &str) -> String {
        let (body, head) = self.layout.prefixes();
        if let Some(rest) = name.strip_prefix("model.") {
            format!("{body}{rest}")
        } else if let Some(rest) = name.strip_prefix("lm_head.") {
            format!("{head}{rest}")
        } else {
            name.to_owned()
        }
    }

    /// The text-model name of file tensor `name`; `None` for the vision tower and projector.
    fn text_name(&self, name: &str) -> Option<String> {
        let (body, head) = self.layout.prefixes();
        if let Some(rest) = name.strip_prefix(body) {
            Some(format!("model.{rest}"))
        } else if let Some(rest) = name.strip_prefix(head) {
            Some(format!("lm_head.{rest}"))
        } else if VISION_PREFIXES.iter().any(|p| name.starts_with(p)) {
            None
        } else {
            Some(name.to_owned())
        }
    }

    /// `err` with text-model tensor names replaced by the file's.
    pub(crate) fn file_names_in(&self, err: ModelError) -> ModelError {
        match err {
            ModelError::MissingWeights { path, keys } => ModelError::MissingWeights {
                path,
                keys: keys.iter().map(|k| self.file_name(k)).collect(),
            },
            ModelError::UnexpectedWeights { path, keys } => ModelError::UnexpectedWeights {
                path,
                keys: keys.iter().map(|k| self.file_name(k)).collect(),
            },
            ModelError::ShapeMismatch {
                path,
                key,
                expected,
                found,
            } => ModelError::ShapeMismatch {
                path,
                key: self.file_name(&key),
                expected,
                found,
            },
            other => other,
        }
    }
}

impl WeightSource for LanguageModelWeights<'_> {
    fn path(&self) -> &Path {
        self.inner.path()
    }

    fn names(&self) -> Vec<String> {
        self.inner
            .names()
            .iter()
            .filter_map(|n| self.text_name(n))
            .collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.inner.shape(&self.file_name(name))
    }

    fn load_f32(&self, name: &str) -> Result<Vec<f32>> {
        self.inner.load_f32(&self.file_name(name))
    }

    fn dtype(&self, name: &str) -> Option<String> {
        self.inner.dtype(&self.file_name(name))
    }

    fn load_stored(&self, name: &str) -> Result<Option<kiln_cpu::QMatrix>> {
        self.inner.load_stored(&self.file_name(name))
    }

    fn release(&self, name: &str) {
        self.inner.release(&self.file_name(name))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Names only; every tensor is `[1]`.
    struct Names(Vec<&'static str>, PathBuf);

    impl WeightSource for Names {
        fn path(&self) -> &Path {
            &self.1
        }
        fn names(&self) -> Vec<String> {
            self.0.iter().map(|s| s.to_string()).collect()
        }
        fn shape(&self, name: &str) -> Option<Vec<usize>> {
            self.0.contains(&name).then(|| vec![1])
        }
        fn load_f32(&self, _: &str) -> Result<Vec<f32>> {
            Ok(vec![0.0])
        }
        fn dtype(&self, _: &str) -> Option<String> {
            None
        }
    }

    #[test]
    fn both_layouts_map_to_text_names() {
        let original = Names(
            vec![
                "language_model.model.embed_tokens.weight",
                "language_model.lm_head.weight",
                "vision_tower.vision_model.post_layernorm.weight",
                "multi_modal_projector.mm_input_projection_weight",
                "stray.weight",
            ],
            PathBuf::from("m"),
        );
        let modules = Names(
            vec![
                "model.language_model.embed_tokens.weight",
                "lm_head.weight",
                "model.vision_tower.post_layernorm.weight",
                "model.multi_modal_projector.mm_soft_emb_norm.weight",
                "stray.weight",
            ],
            PathBuf::from("m"),
        );
        for source in [&original, &modules] {
            let w = LanguageModelWeights::new(source).unwrap();
            let mut names = w.names();
            names.sort();
            assert_eq!(
                names,
                [
                    "lm_head.weight",
                    "model.embed_tokens.weight",
                    "stray.weight"
                ]
            );
            assert_eq!(w.shape("model.embed_tokens.weight"), Some(vec![1]));
            assert_eq!(w.shape("lm_head.weight"), Some(vec![1]));
        }
        let w = LanguageModelWeights::new(&original).unwrap();
        assert_eq!(
            w.file_name("model.layers.3.mlp.up_proj.weight"),
            "language_model.model.layers.3.mlp.up_proj.weight"
        );
        let err = w.file_names_in(ModelError::MissingWeights {
            path: "m".into(),
            keys: vec!["model.norm.weight".into()],
        });
        assert!(
            err.to_string().contains("language_model.model.norm.weight"),
            "{err}"
        );
    }

    #[test]
    fn a_checkpoint_without_language_model_is_a_typed_error() {
        let vision_only = Names(vec!["vision_tower.x.weight"], PathBuf::from("ckpt"));
        let err = LanguageModelWeights::new(&vision_only).err().unwrap();
        assert!(
            matches!(&err, ModelError::MissingWeights { keys, .. } if keys[0].contains("language_model.model.embed_tokens")),
            "{err}"
        );
    }
}
