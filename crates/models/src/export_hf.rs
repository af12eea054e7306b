//! A model as a Hugging Face directory: `config.json`, `model.safetensors`, tokenizer files and
//! `generation_config.json`, loadable by `AutoModelForCausalLM.from_pretrained`.
use crate::error::{ModelError, Result};
use crate::pretrained::Pretrained;
use burn::tensor::Tensor;
use kiln_lora::LoraLinear;
use serde_json::json;
use std::path::Path;

fn host<const D: usize>(t: Tensor<D>, name: &str) -> Result<Vec<f32>> {
    t.into_data()
        .try_into_vec::<f32>()
        .map_err(|e| ModelError::Backend {
            what: format!("tensor `{name}`"),
            reason: format!("{e:?}"),
        })
}

/// Where a tensor's values come from: read only when a writer gets to that tensor, so an
/// export holds one tensor in f32 at a time (a frozen matrix not even that: a block of rows).
pub(crate) enum Values<'a> {
    /// A frozen matrix in PyTorch's layout (`[out, in]`, or the embedding table), read a block
    /// of rows at a time.
    Frozen(&'a kiln_cpu::QMatrix),
    /// A linear layer's weight, `[out, in]`, with its active adapters merged into a copy of the
    /// layer when `merge` (the model itself is not changed).
    Linear { layer: &'a LoraLinear, merge: bool },
    /// A dense matrix or a vector (norms, biases, a dense embedding table), row-major.
    Dense(Tensor<2>),
    /// A vector.
    Vector(Tensor<1>),
}

/// One tensor of the model under its Hugging Face name and PyTorch shape.
pub(crate) struct ModelTensor<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Values<'a>,
}

impl ModelTensor<'_> {
    /// All values, row-major.
    ///
    /// # Errors
    /// [`ModelError::Input`] when a layer has active adapters that are not merged (and the
    /// tensor was not asked to merge them) or a merge fails.
    pub(crate) fn to_vec(&self) -> Result<Vec<f32>> {
        let name = &self.name;
        match &self.values {
            Values::Frozen(q) => Ok(q.to_f32()),
            Values::Dense(t) => host(t.clone(), name),
            Values::Vector(t) => host(t.clone(), name),
            Values::Linear { layer, merge } => {
                let w = if layer.has_unmerged_active_adapters() {
                    if !merge {
                        return Err(ModelError::Input(format!(
                            "{name} has active adapters that are not merged: merge them before \
                             exporting"
                        )));
                    }
                    let mut merged = (*layer).clone();
                    merged
                        .merge(None)
                        .map_err(|e| ModelError::Input(format!("{name}: {e}")))?;
                    merged.dense_weight()
                } else {
                    layer.dense_weight()
                };
                host(w.transpose(), name)
            }
        }
    }
}

/// A linear layer's weight (and bias): kiln stores a dense weight `[in, out]`, a frozen one and
/// PyTorch `[out, in]`.
fn linear<'a>(out: &mut Vec<ModelTensor<'a>>, name: &str, layer: &'a LoraLinear, merge: bool) {
    let [i, o] = layer.weight.dims(kiln_lora::Layout::Linear);
    let values = match (&layer.weight, layer.has_unmerged_active_adapters()) {
        (kiln_lora::BaseWeight::Frozen(f), false) => Values::Frozen(f.matrix()),
        _ => Values::Linear { layer, merge },
    };
    out.push(ModelTensor {
        name: format!("{name}.weight"),
        shape: vec![o, i],
        values,
    });
    if let Some(b) = &layer.bias {
        out.push(ModelTensor {
            name: format!("{name}.bias"),
            shape: vec![o],
            values: Values::Vector(b.val()),
        });
    }
}

/// The config of the exported text-only model: a multimodal `gemma3` config becomes its
/// `text_config` (`gemma3_text`, `Gemma3ForCausalLM`), whose weights are the ones kiln holds,
/// without `final_logit_softcapping`, which `Gemma3ForConditionalGeneration` never applied.
fn text_config(config: &serde_json::Value) -> serde_json::Value {
    match (
        config.get("model_type").and_then(|v| v.as_str()),
        config.get("text_config"),
    ) {
        (Some("gemma3"), Some(text)) if text.is_object() => {
            let mut text = text.clone();
            text["model_type"] = json!("gemma3_text");
            text["architectures"] = json!(["Gemma3ForCausalLM"]);
            text["final_logit_softcapping"] = serde_json::Value::Null;
            text
        }
        _ => config.clone(),
    }
}

/// transformers' causal-LM class for a `model_type` kiln writes.
fn causal_lm_class(model_type: &str) -> Option<&'static str> {
    Some(match model_type {
        "llama" => "LlamaForCausalLM",
        "mistral" => "MistralForCausalLM",
        "qwen2" => "Qwen2ForCausalLM",
        "gemma" => "GemmaForCausalLM",
        "gemma2" => "Gemma2ForCausalLM",
        "gemma3_text" => "Gemma3ForCausalLM",
        "phi3" => "Phi3ForCausalLM",
        _ => return None,
    })
}

fn write_json(dir: &Path, name: &str, value: &serde_json::Value) -> Result<()> {
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(value).map_err(|e| ModelError::Json {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    std::fs::write(&path, text).map_err(|e| ModelError::io(&path, e))
}

/// Every tensor of `lm` under Hugging Face names and PyTorch layouts, in checkpoint order, its
/// values not yet read: what [`save_hf`] and the GGUF export write. All reading of the layers'
/// weights is here, so a change of how kiln stores them changes one function. With `merge`,
/// layers with active adapters that are not merged give their merged weight (see [`Values`]).
pub(crate) fn model_tensors(lm: &Pretrained, merge: bool) -> Vec<ModelTensor<'_>> {
    let m = &lm.model;
    let mut t = Vec::new();
    let embed = &m.model.embed_tokens;
    t.push(ModelTensor {
        name: "model.embed_tokens.weight".into(),
        shape: embed.dims(kiln_lora::Layout::Table).to_vec(),
        values: match embed {
            kiln_lora::BaseWeight::Frozen(f) => Values::Frozen(f.matrix()),
            kiln_lora::BaseWeight::Dense(w) => Values::Dense(w.val()),
        },
    });
    let vector = |name: String, w: Tensor<1>| ModelTensor {
        shape: w.dims().to_vec(),
        name,
        values: Values::Vector(w),
    };
    for (i, layer) in m.model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        let (a, mlp) = (&layer.self_attn, &layer.mlp);
        for (name, lin) in a.input_projections() {
            linear(&mut t, &format!("{p}.self_attn.{name}"), lin, merge);
        }
        linear(&mut t, &format!("{p}.self_attn.o_proj"), &a.o_proj, merge);
        for (name, lin) in mlp.projections() {
            linear(&mut t, &format!("{p}.mlp.{name}"), lin, merge);
        }
        for (name, norm) in layer.norms() {
            t.push(vector(format!("{p}.{name}.weight"), norm.weight.val()));
        }
    }
    t.push(vector(
        "model.norm.weight".into(),
        m.model.norm.weight.val(),
    ));
    if let Some(head) = &m.lm_head {
        linear(&mut t, "lm_head", head, merge);
    }
    t
}

/// See [`Pretrained::save_hf`].
impl Pretrained {
    /// Writes the model as a Hugging Face directory that `AutoModelForCausalLM.from_pretrained`
    /// loads: `config.json`, `model.safetensors` (f32, HF key names and `[out, in]` layouts),
    /// `tokenizer.json`, `tokenizer_config.json` (with the chat template) and
    /// `generation_config.json`. A layer with active adapters that are not merged is written
    /// with them merged (into a copy of that layer alone: the model is not changed), as PEFT's
    /// `merge_and_unload` would give; the weights are written one tensor at a time, so the peak
    /// is one tensor in f32 beside the model. Files are written to `dir/.tmp-export` and moved
    /// into place at the end.
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        save_hf(self, dir)
    }
}

fn save_hf(lm: &Pretrained, dir: &Path) -> Result<()> {
    let m = &lm.model;
    let tmp = dir.join(".tmp-export");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    // One tensor in f32 at a time; a layer with active adapters is merged into a copy of
    // itself alone as it is written.
    let tensors = model_tensors(lm, true);
    let specs: Vec<(String, Vec<usize>)> = tensors
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    kiln_cpu::io::write_f32_safetensors(
        &tmp.join("model.safetensors"),
        &specs,
        &[("format", "pt")],
        |i| tensors[i].to_vec(),
    )?;
    let mut config = text_config(&lm.hf_config);
    // transformers 5 writes `dtype` (`torch_dtype` is its deprecated alias); vLLM and llama.cpp's
    // converter pick the model class from `architectures`, which a GGUF-derived config lacks.
    if let Some(obj) = config.as_object_mut() {
        obj.remove("torch_dtype");
    }
    config["dtype"] = json!("float32");
    if config.get("architectures").is_none_or(|a| a.is_null())
        && let Some(class) = config
            .get("model_type")
            .and_then(|v| v.as_str())
            .and_then(causal_lm_class)
    {
        config["architectures"] = json!([class]);
    }
    config["tie_word_embeddings"] = json!(m.lm_head.is_none());
    write_json(&tmp, "config.json", &config)?;
    let tok = tmp.join("tokenizer.json");
    lm.tokenizer
        .save(&tok, false)
        .map_err(|e| ModelError::Tokenizer {
            path: tok.clone(),
            reason: e.to_string(),
        })?;
    let ex = &lm.extras;
    write_json(
        &tmp,
        "tokenizer_config.json",
        &json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "chat_template": ex.chat_template,
            "bos_token": ex.bos_token,
            "eos_token": ex.eos_token,
            "pad_token": ex.pad_token,
            "model_max_length": lm.hf_config.get("max_position_embeddings"),
        }),
    )?;
    let eos = lm.eos_token_ids();
    write_json(
        &tmp,
        "generation_config.json",
        &json!({
            "bos_token_id": lm.hf_config.get("bos_token_id"),
            "eos_token_id": if eos.len() == 1 { json!(eos[0]) } else { json!(eos) },
        }),
    )?;
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    for entry in std::fs::read_dir(&tmp).map_err(|e| ModelError::io(&tmp, e))? {
        let from = entry.map_err(|e| ModelError::io(&tmp, e))?.path();
        let to = dir.join(from.file_name().unwrap_or_default());
        std::fs::rename(&from, &to).map_err(|e| ModelError::io(&to, e))?;
    }
    std::fs::remove_dir(&tmp).map_err(|e| ModelError::io(&tmp, e))
}
