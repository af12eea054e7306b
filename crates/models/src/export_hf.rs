//! A model as a Hugging Face directory: `config.json`, `model.safetensors`, tokenizer files and
//! `generation_config.json`, loadable by `AutoModelForCausalLM.from_pretrained`.
use crate::error::{ModelError, Result};
use crate::pretrained::Pretrained;
use burn::tensor::Tensor;
use kiln_lora::LoraLinear;
use serde_json::json;
use std::path::Path;

/// `(name, shape, values)` of every tensor, HF names and layouts.
pub(crate) type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

fn host<const D: usize>(t: Tensor<D>, name: &str) -> Result<Vec<f32>> {
    t.into_data()
        .try_into_vec::<f32>()
        .map_err(|e| ModelError::Input(format!("{name}: {e:?}")))
}

/// A linear layer: kiln stores `[in, out]`, PyTorch `[out, in]`.
fn linear(out: &mut Tensors, name: &str, layer: &LoraLinear) -> Result<()> {
    if layer.has_unmerged_active_adapters() {
        return Err(ModelError::Input(format!(
            "{name} has active adapters that are not merged: merge them before exporting"
        )));
    }
    let w = layer.dense_weight();
    let [i, o] = w.dims();
    out.push((
        format!("{name}.weight"),
        vec![o, i],
        host(w.transpose(), name)?,
    ));
    if let Some(b) = &layer.bias {
        out.push((format!("{name}.bias"), vec![o], host(b.val(), name)?));
    }
    Ok(())
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

fn write_json(dir: &Path, name: &str, value: &serde_json::Value) -> Result<()> {
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| ModelError::Input(format!("{name}: {e}")))?;
    std::fs::write(&path, text).map_err(|e| ModelError::io(&path, e))
}

/// `(name, shape, f32 values)` of every tensor of `lm` under Hugging Face names and PyTorch
/// layouts, in checkpoint order: what [`save_hf`] and the GGUF export write. All reading of the
/// layers' weights is here, so a change of how kiln stores them changes one function.
///
/// # Errors
/// [`ModelError::Input`] when a layer has active adapters that are not merged.
pub(crate) fn collect_tensors(lm: &Pretrained) -> Result<Tensors> {
    let m = &lm.model;
    let mut t: Tensors = Vec::new();
    let embed = m.model.embed_tokens.values(kiln_lora::Layout::Table);
    let dims = embed.dims().to_vec();
    t.push((
        "model.embed_tokens.weight".into(),
        dims,
        host(embed, "embed_tokens")?,
    ));
    for (i, layer) in m.model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        let (a, mlp) = (&layer.self_attn, &layer.mlp);
        for (name, lin) in a.input_projections() {
            linear(&mut t, &format!("{p}.self_attn.{name}"), lin)?;
        }
        linear(&mut t, &format!("{p}.self_attn.o_proj"), &a.o_proj)?;
        for (name, lin) in mlp.projections() {
            linear(&mut t, &format!("{p}.mlp.{name}"), lin)?;
        }
        for (name, norm) in layer.norms() {
            let w = norm.weight.val();
            let d = w.dims().to_vec();
            t.push((format!("{p}.{name}.weight"), d, host(w, name)?));
        }
    }
    let w = m.model.norm.weight.val();
    let d = w.dims().to_vec();
    t.push(("model.norm.weight".into(), d, host(w, "norm")?));
    if let Some(head) = &m.lm_head {
        linear(&mut t, "lm_head", head)?;
    }
    Ok(t)
}

/// See [`Pretrained::save_hf`].
pub fn save_hf(lm: &Pretrained, dir: &Path) -> Result<()> {
    let m = &lm.model;
    let t = collect_tensors(lm)?;
    let tmp = dir.join(".tmp-export");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    let views: Vec<(&str, Vec<usize>, &[f32])> = t
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.as_slice()))
        .collect();
    crate::safetensors_source::write_f32_safetensors(&tmp.join("model.safetensors"), &views)?;
    let mut config = text_config(&lm.hf_config);
    config["torch_dtype"] = json!("float32");
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
