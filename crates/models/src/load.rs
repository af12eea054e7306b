//! Builds a [`CausalLm`] from any [`WeightSource`], checking every tensor's shape against the
//! config and reporting missing and unexpected keys together.
use crate::attention::Attention;
use crate::config::{DecoderConfig, ModuleLayout};
use crate::decoder::{CausalLm, DecoderLayer, Model};
use crate::error::{ModelError, Result};
use crate::mlp::Mlp;
use crate::multimodal::LanguageModelWeights;
use crate::norm::RmsNorm;
use crate::rope::Rope;
use crate::weights::WeightSource;
use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use kiln_lora::LoraLinear;
use std::collections::BTreeSet;

/// Pulls tensors by name, remembering which were used.
struct Loader<'a> {
    source: &'a dyn WeightSource,
    device: &'a Device,
    used: BTreeSet<String>,
    missing: Vec<String>,
}

impl Loader<'_> {
    /// Loads `name` and checks its shape; a missing tensor is recorded and replaced by zeros so
    /// that all missing keys are reported at once.
    fn raw(&mut self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        self.used.insert(name.to_string());
        let Some(shape) = self.source.shape(name) else {
            self.missing.push(name.to_string());
            return Ok(vec![0.0; expected.iter().product()]);
        };
        if shape != expected {
            return Err(ModelError::ShapeMismatch {
                path: self.source.path().to_path_buf(),
                key: name.to_string(),
                expected: expected.to_vec(),
                found: shape,
            });
        }
        self.source.load_f32(name)
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<Tensor<1>> {
        let data = self.raw(name, &[len])?;
        Ok(Tensor::from_data(TensorData::new(data, [len]), self.device))
    }

    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<Tensor<2>> {
        let data = self.raw(name, &[rows, cols])?;
        Ok(Tensor::from_data(
            TensorData::new(data, [rows, cols]),
            self.device,
        ))
    }

    /// A PyTorch linear `[out, in]` (+ bias) as a [`LoraLinear`] (`[in, out]`, transposed here once).
    fn linear(
        &mut self,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<LoraLinear> {
        let w = self.raw(&format!("{prefix}.weight"), &[d_out, d_in])?;
        let wt = transpose(&w, d_out, d_in);
        let weight = Tensor::from_data(TensorData::new(wt, [d_in, d_out]), self.device);
        let bias = if bias {
            Some(self.vector(&format!("{prefix}.bias"), d_out)?)
        } else {
            None
        };
        Ok(LoraLinear::new(weight, bias))
    }

    fn norm(&mut self, name: &str, len: usize, c: &DecoderConfig) -> Result<RmsNorm> {
        Ok(RmsNorm::with_offset(
            self.vector(name, len)?,
            c.rms_norm_eps,
            c.norm_unit_offset,
        ))
    }
}

/// `[rows, cols]` -> `[cols, rows]`, blocked for cache friendliness.
fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut dst = vec![0f32; src.len()];
    const B: usize = 32;
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
    dst
}

/// Keys some checkpoints carry that the model legitimately does not use.
fn ignorable(name: &str, config: &DecoderConfig) -> bool {
    name.ends_with("rotary_emb.inv_freq")
        || (config.tie_word_embeddings && name == "lm_head.weight")
}

/// Builds the model of `config` from `source` on `device`.
///
/// `source` holds text-model names (`model.layers.0...`, `lm_head.weight`), or, for a config
/// of [`ModuleLayout::Gemma3Multimodal`], the names of a multimodal `gemma3` checkpoint in either
/// of its layouts (`language_model.model.*` or `model.language_model.*`), whose vision tower and
/// projector are skipped.
///
/// # Errors
/// [`ModelError::MissingWeights`] / [`ModelError::UnexpectedWeights`] listing every missing or
/// unused tensor (under the file's names), [`ModelError::ShapeMismatch`], and the source's read
/// errors.
pub fn build_causal_lm(
    config: &DecoderConfig,
    source: &dyn WeightSource,
    device: &Device,
) -> Result<CausalLm> {
    match config.layout {
        ModuleLayout::CausalLm => build(config, source, device),
        ModuleLayout::Gemma3Multimodal => {
            let text = LanguageModelWeights::new(source)?;
            build(config, &text, device).map_err(|e| text.file_names_in(e))
        }
    }
}

fn build(config: &DecoderConfig, source: &dyn WeightSource, device: &Device) -> Result<CausalLm> {
    let c = config;
    let mut l = Loader {
        source,
        device,
        used: BTreeSet::new(),
        missing: Vec::new(),
    };
    let (h, q_out, kv_out) = (
        c.hidden_size,
        c.num_heads * c.head_dim,
        c.num_kv_heads * c.head_dim,
    );
    let embed_tokens =
        Param::from_tensor(l.matrix("model.embed_tokens.weight", c.vocab_size, h)?);
    let mut layers = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let p = format!("model.layers.{i}");
        let a = format!("{p}.self_attn");
        let mut proj = |name: &str, d_out: usize| {
            l.linear(&format!("{a}.{name}"), h, d_out, c.qkv_bias)
                .map(Some)
        };
        let (q_proj, k_proj, v_proj, qkv_proj) = if c.fused_qkv {
            (None, None, None, proj("qkv_proj", q_out + 2 * kv_out)?)
        } else {
            (
                proj("q_proj", q_out)?,
                proj("k_proj", kv_out)?,
                proj("v_proj", kv_out)?,
                None,
            )
        };
        let (q_norm, k_norm) = if c.qk_norm {
            (
                Some(l.norm(&format!("{a}.q_norm.weight"), c.head_dim, c)?),
                Some(l.norm(&format!("{a}.k_norm.weight"), c.head_dim, c)?),
            )
        } else {
            (None, None)
        };
        let self_attn = Attention {
            q_proj,
            k_proj,
            v_proj,
            qkv_proj,
            o_proj: l.linear(&format!("{a}.o_proj"), q_out, h, c.o_bias)?,
            q_norm,
            k_norm,
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            kind: c.layer_attention[i],
            scale: c.attn_scale,
            softcap: c.attn_softcap,
        };
        let (m, inter) = (format!("{p}.mlp"), c.intermediate_size);
        let mut proj = |name: &str, d_out: usize| {
            l.linear(&format!("{m}.{name}"), h, d_out, c.mlp_bias)
                .map(Some)
        };
        let (gate_proj, up_proj, gate_up_proj) = if c.fused_gate_up {
            (None, None, proj("gate_up_proj", 2 * inter)?)
        } else {
            (proj("gate_proj", inter)?, proj("up_proj", inter)?, None)
        };
        let mlp = Mlp {
            gate_proj,
            up_proj,
            gate_up_proj,
            down_proj: l.linear(&format!("{m}.down_proj"), inter, h, c.mlp_bias)?,
            activation: c.activation,
        };
        let (pre_feedforward_layernorm, post_feedforward_layernorm) = if c.sandwich_norms {
            (
                Some(l.norm(&format!("{p}.pre_feedforward_layernorm.weight"), h, c)?),
                Some(l.norm(&format!("{p}.post_feedforward_layernorm.weight"), h, c)?),
            )
        } else {
            (None, None)
        };
        layers.push(DecoderLayer {
            self_attn,
            mlp,
            input_layernorm: l.norm(&format!("{p}.input_layernorm.weight"), h, c)?,
            post_attention_layernorm: l.norm(
                &format!("{p}.post_attention_layernorm.weight"),
                h,
                c,
            )?,
            pre_feedforward_layernorm,
            post_feedforward_layernorm,
        });
    }
    let norm = l.norm("model.norm.weight", h, c)?;
    let lm_head = if c.tie_word_embeddings {
        None
    } else {
        Some(l.linear("lm_head", h, c.vocab_size, false)?)
    };
    let path = source.path().to_path_buf();
    if !l.missing.is_empty() {
        return Err(ModelError::MissingWeights {
            path,
            keys: l.missing,
        });
    }
    let unexpected: Vec<String> = source
        .names()
        .into_iter()
        .filter(|n| !l.used.contains(n) && !ignorable(n, c))
        .collect();
    if !unexpected.is_empty() {
        return Err(ModelError::UnexpectedWeights {
            path,
            keys: unexpected,
        });
    }
    Ok(CausalLm {
        model: Model {
            embed_tokens,
            layers,
            norm,
        },
        lm_head,
        config: config.clone(),
        rope: Rope::new(config),
        rope_local: Rope::local(config),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::transpose;

    #[test]
    fn transpose_moves_every_element() {
        let src: Vec<f32> = (0..35 * 70).map(|i| i as f32).collect();
        let dst = transpose(&src, 35, 70);
        for r in 0..35 {
            for c in 0..70 {
                assert_eq!(dst[c * 35 + r], src[r * 70 + c]);
            }
        }
    }
}
