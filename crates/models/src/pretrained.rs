//! Loading a whole pretrained model, tokenizer and chat template from a Hugging Face directory
//! or a GGUF file.
use crate::config::{DecoderConfig, HfConfig};
use crate::decoder::CausalLm;
use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, GgufWeights};
use crate::load::{Quantization, build_causal_lm_as};
use crate::safetensors_source::SafetensorsWeights;
use crate::tokenizer::{TokenizerExtras, load_extras, load_tokenizer};
use burn::tensor::Device;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// A model with everything needed to talk to it.
#[derive(Debug)]
pub struct Pretrained {
    pub model: CausalLm,
    pub tokenizer: Tokenizer,
    /// Chat template and special token strings.
    pub extras: TokenizerExtras,
    /// The directory or GGUF file it was loaded from.
    pub source: PathBuf,
    /// The Hugging Face `config.json` (read, or derived from GGUF metadata).
    pub hf_config: serde_json::Value,
}

impl CausalLm {
    /// The model alone from a Hugging Face directory (`config.json` + safetensors) or a GGUF
    /// file, without a tokenizer: for work on token ids (scoring ids, benchmarks, training from
    /// ids) and for checkpoints saved without `tokenizer.json` (transformers also loads model
    /// and tokenizer separately). Text needs [`Pretrained::load`].
    pub fn load(path: &Path, device: &Device, quantization: Quantization) -> Result<Self> {
        if path.is_file()
            && path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            let file = GgufFile::open(path)?;
            let (_, config) = gguf_config(&file, path)?;
            build_causal_lm_as(&config, &GgufWeights::new(file)?, device, quantization)
        } else {
            hf_dir_model(path, device, quantization)
        }
    }
}

fn hf_dir_model(dir: &Path, device: &Device, quantization: Quantization) -> Result<CausalLm> {
    let config = DecoderConfig::from_file(&dir.join("config.json"))?;
    let weights = SafetensorsWeights::open(dir)?;
    build_causal_lm_as(&config, &weights, device, quantization)
}

/// A GGUF file's Hugging Face `config.json` (derived from its metadata) and decoder config;
/// errors name the GGUF key.
fn gguf_config(file: &GgufFile, path: &Path) -> Result<(serde_json::Value, DecoderConfig)> {
    let json = crate::gguf::hf_config_from_gguf(file)?;
    let blame = |e: ModelError| crate::gguf::blame_gguf_key(file, e);
    let hf = HfConfig::from_value(json.clone(), path).map_err(blame)?;
    let config = hf.to_decoder_config(path).map_err(blame)?;
    Ok((json, config))
}

impl Pretrained {
    /// Loads `path`: a directory with `config.json`, safetensors and `tokenizer.json`, or a
    /// `.gguf` file.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::load_as(path, device, Quantization::default())
    }

    /// [`Self::load`] holding the matrices as `quantization` says: `Stored` keeps a GGUF's
    /// blocks and safetensors' f16/bf16 memory-mapped, `nf4`/`fp4`/`int8` quantize at load
    /// (see [`Quantization`]).
    pub fn load_as(path: &Path, device: &Device, quantization: Quantization) -> Result<Self> {
        if !path.exists() {
            return Err(ModelError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "model path does not exist"),
            ));
        }
        let loaded = if path.is_file()
            && path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            Self::load_gguf(path, device, quantization)?
        } else {
            Self::load_hf_dir(path, device, quantization)?
        };
        let vocab = loaded.tokenizer.get_vocab_size(true);
        if vocab > loaded.model.config.vocab_size {
            return Err(ModelError::Tokenizer {
                path: path.to_path_buf(),
                reason: format!(
                    "tokenizer has {vocab} tokens but the embedding only {} rows",
                    loaded.model.config.vocab_size
                ),
            });
        }
        Ok(loaded)
    }

    fn load_hf_dir(dir: &Path, device: &Device, quantization: Quantization) -> Result<Self> {
        let model = hf_dir_model(dir, device, quantization)?;
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        let hf_config = serde_json::from_str(&text).map_err(|e| ModelError::Json {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            model,
            tokenizer: load_tokenizer(dir)?,
            extras: load_extras(dir)?,
            source: dir.to_path_buf(),
            hf_config,
        })
    }

    fn load_gguf(path: &Path, device: &Device, quantization: Quantization) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let (json, config) = gguf_config(&file, path)?;
        let tokenizer = crate::gguf::tokenizer_from_gguf(&file)?;
        let token = |key: &str| -> Result<Option<String>> {
            Ok(file.get_u32(key)?.and_then(|id| tokenizer.id_to_token(id)))
        };
        let extras = TokenizerExtras {
            chat_template: crate::gguf::chat_template(&file),
            chat_template_origin: Some(format!("{} (tokenizer.chat_template)", path.display())),
            bos_token: token("tokenizer.ggml.bos_token_id")?,
            eos_token: token("tokenizer.ggml.eos_token_id")?,
            pad_token: token("tokenizer.ggml.padding_token_id")?,
        };
        let weights = GgufWeights::new(file)?;
        let model = build_causal_lm_as(&config, &weights, device, quantization)?;
        Ok(Self {
            model,
            tokenizer,
            extras,
            source: path.to_path_buf(),
            hf_config: json,
        })
    }

    /// Writes the model as one GGUF v3 file that llama.cpp, gguf-py and transformers
    /// (`from_pretrained(dir, gguf_file=...)`) load: llama.cpp's tensor names and metadata,
    /// 2-d tensors stored as `export.file_type` says (1-d tensors f32), the tokenizer copied from
    /// the source GGUF or built from a byte-level BPE `tokenizer.json`, the chat template.
    /// Written through a temporary file, fsynced and renamed, one tensor at a time: a frozen
    /// matrix is dequantized a block of rows at a time, a layer with active adapters that are
    /// not merged is merged into a copy of that layer alone (the model is not changed), so the
    /// peak is one layer's weight in f32, not the model.
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the
    /// knob when GGUF cannot carry the model's config (readers would load another model);
    /// [`ModelError::Tokenizer`] for a tokenizer that is not byte-level BPE (from
    /// `tokenizer.json`); [`ModelError::GgufTensor`] naming a tensor that cannot be quantized
    /// (NaN, infinity); [`ModelError::Io`] when the file cannot be written.
    pub fn save_gguf(&self, path: &Path, export: crate::gguf::GgufExport) -> Result<()> {
        crate::gguf::save_gguf(self, path, export)
    }

    /// Token ids that end generation: the config's `eos_token_id`(s) plus the tokenizer's EOS
    /// token and, for chat models, the end-of-turn token if the vocabulary has one.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        let mut ids = self.model.config.eos_token_ids.clone();
        let named = [
            self.extras.eos_token.as_deref(),
            Some("<|im_end|>"),
            Some("<|eot_id|>"),
            Some("<end_of_turn>"),
            Some("<|end|>"),
        ];
        for t in named.into_iter().flatten() {
            if let Some(id) = self.tokenizer.token_to_id(t)
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
        ids
    }

    /// Encodes text; `add_special_tokens` adds BOS/EOS as the tokenizer's post-processor says.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.tokenizer
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Tokenizer {
                path: self.source.clone(),
                reason: e.to_string(),
            })
    }

    /// Decodes ids to text.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.tokenizer
            .decode(ids, skip_special_tokens)
            .map_err(|e| ModelError::Tokenizer {
                path: self.source.clone(),
                reason: e.to_string(),
            })
    }
}
