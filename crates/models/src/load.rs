//! Builds a [`CausalLm`] from any [`WeightSource`], checking every tensor's shape against the
//! config and reporting missing and unexpected keys together.
use crate::attention::Attention;
use crate::config::{DecoderConfig, ModuleLayout};
use crate::decoder::{CausalLm, DecoderLayer, Model};
use crate::error::{ModelError, Result};
use crate::mlp::Mlp;
use crate::multimodal::LanguageModelWeights;
use crate::norm::RmsNorm;
use crate::proj::{GateUpProj, QkvProj};
use crate::rope::Rope;
use crate::weights::WeightSource;
use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use kiln_cpu::QMatrix;
use kiln_cpu::QuantType;
use kiln_cpu::quant::bnb::QuantizeOnLoad;
use kiln_lora::{BaseWeight, LoraLinear};
use std::collections::BTreeSet;

/// How the loader holds a model's matrices (linear weights and the embedding table); vectors
/// (norms, biases) are always f32.
///
/// `"stored"` (the default) keeps each matrix as the file stores it (GGUF blocks, the embedding
/// included, as llama.cpp does; safetensors f16/bf16; f32 tensors stay dense), memory-mapped;
/// `"f32"` widens everything to burn tensors (the reference, every backend and path); `"nf4"`,
/// `"fp4"` and `"int8"` quantize f32/f16/bf16 checkpoints at load as transformers +
/// bitsandbytes do: the linear projections of the decoder layers only, while the embedding table
/// (bitsandbytes never replaces an `nn.Embedding`) and `lm_head` (transformers' default
/// `llm_int8_skip_modules`) stay dense f32. Frozen matrices become dense f32 only when they
/// train (full fine-tuning, `modules_to_save`) or absorb a merged adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Quantization {
    /// Every matrix widened to f32.
    F32,
    /// Every matrix kept in the file's format (the default: a GGUF keeps its blocks, a bf16
    /// checkpoint its 16 bits).
    #[default]
    Stored,
    /// The decoder layers' linear weights quantized at load by bitsandbytes' rules; the
    /// embedding table and `lm_head` widened to f32.
    Bnb(QuantizeOnLoad),
}

impl std::str::FromStr for Quantization {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "none" => Ok(Quantization::F32),
            "stored" | "keep" => Ok(Quantization::Stored),
            other => other.parse().map(Quantization::Bnb).map_err(|_| {
                ModelError::Input(format!(
                    "quantization `{s}`: expected f32, stored, nf4, fp4 or int8"
                ))
            }),
        }
    }
}

impl TryFrom<String> for Quantization {
    type Error = ModelError;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Quantization> for String {
    fn from(q: Quantization) -> String {
        q.to_string()
    }
}

impl std::fmt::Display for Quantization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Quantization::F32 => f.write_str("f32"),
            Quantization::Stored => f.write_str("stored"),
            Quantization::Bnb(q) => write!(f, "{q}"),
        }
    }
}

/// Pulls tensors by name, remembering which were used.
struct Loader<'a> {
    source: &'a dyn WeightSource,
    device: &'a Device,
    quantization: Quantization,
    used: BTreeSet<String>,
    /// Storage types of block-quantized tensors that a bitsandbytes quantization re-quantized.
    requantized: Vec<QuantType>,
}

impl Loader<'_> {
    /// Loads `name` and checks its shape. [`check_tensors`] reported every missing tensor
    /// before building; one missing here (the two walks disagree) is an error naming it, never
    /// a buffer of zeros sized by the config.
    fn raw(&mut self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        self.used.insert(name.to_string());
        let Some(shape) = self.source.shape(name) else {
            return Err(ModelError::MissingWeights {
                path: self.source.path().to_path_buf(),
                keys: vec![name.to_string()],
            });
        };
        if shape != expected {
            return Err(ModelError::ShapeMismatch {
                path: self.source.path().to_path_buf(),
                key: name.to_string(),
                expected: expected.to_vec(),
                found: shape,
            });
        }
        let data = self.source.load_f32(name)?;
        self.source.release(name);
        self.check_finite(name, &data)?;
        Ok(data)
    }

    /// NaN or infinity in a loaded tensor is an error naming it (it would only surface as
    /// `null` log-probabilities).
    fn check_finite(&self, name: &str, data: &[f32]) -> Result<()> {
        match data.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(i) => Err(ModelError::NonFiniteWeight {
                path: self.source.path().to_path_buf(),
                tensor: name.to_string(),
                detail: format!("element {i} is {}", data[i]),
            }),
        }
    }

    /// `name` (`[rows, cols]`) kept frozen in a compact format, or `None` when the loader
    /// widens it (f32 mode, a tensor the file holds in f32, a missing one, or under
    /// bitsandbytes a matrix outside the decoder layers).
    fn frozen(&mut self, name: &str, rows: usize, cols: usize) -> Result<Option<QMatrix>> {
        match self.quantization {
            Quantization::F32 => return Ok(None),
            // transformers swaps only the layers' `nn.Linear`s for bitsandbytes ones: the
            // embedding and `lm_head` keep the compute dtype.
            Quantization::Bnb(_) if !name.starts_with("model.layers.") => return Ok(None),
            Quantization::Stored | Quantization::Bnb(_) => {}
        }
        match self.source.shape(name) {
            Some(shape) if shape == [rows, cols] => {}
            // Missing or misshapen: `raw` records or reports it.
            _ => return Ok(None),
        }
        let stored = self.source.load_stored(name)?;
        if let Some(row) = stored.as_ref().and_then(QMatrix::first_non_finite_row) {
            return Err(ModelError::NonFiniteWeight {
                path: self.source.path().to_path_buf(),
                tensor: name.to_string(),
                detail: format!("stored row {row}, a value or block scale"),
            });
        }
        let Quantization::Bnb(q) = self.quantization else {
            return Ok(stored);
        };
        if let Some(m) = &stored
            && !matches!(m.quant_type(), QuantType::F16 | QuantType::Bf16)
        {
            // A documented conversion: dequantized, then quantized again (two roundings).
            self.requantized.push(m.quant_type());
        }
        self.used.insert(name.to_string());
        let data = self.source.load_f32(name)?;
        self.source.release(name);
        self.check_finite(name, &data)?;
        q.quantize(&data, rows, cols)
            .map(Some)
            .map_err(|e| ModelError::Input(format!("tensor `{name}`: {e}")))
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
        let name = format!("{prefix}.weight");
        let bias = if bias {
            Some(self.vector(&format!("{prefix}.bias"), d_out)?)
        } else {
            None
        };
        if let Some(q) = self.frozen(&name, d_out, d_in)? {
            self.used.insert(name);
            return Ok(LoraLinear::frozen(q, bias, self.device));
        }
        let w = self.raw(&name, &[d_out, d_in])?;
        let wt = transpose(&w, d_out, d_in);
        let weight = Tensor::from_data(TensorData::new(wt, [d_in, d_out]), self.device);
        Ok(LoraLinear::new(weight, bias))
    }

    /// The embedding table `[vocab, hidden]`, frozen or dense.
    fn table(&mut self, name: &str, rows: usize, cols: usize) -> Result<BaseWeight> {
        if let Some(q) = self.frozen(name, rows, cols)? {
            self.used.insert(name.to_string());
            return Ok(BaseWeight::frozen(q, self.device));
        }
        Ok(BaseWeight::Dense(Param::from_tensor(
            self.matrix(name, rows, cols)?,
        )))
    }

    fn norm(&mut self, name: &str, len: usize, c: &DecoderConfig) -> Result<RmsNorm> {
        Ok(RmsNorm::with_offset(
            self.vector(name, len)?,
            c.rms_norm_eps,
            c.norm_unit_offset,
        ))
    }
}

/// A declared layer count the file has no tensors for is an error naming the key, before any
/// layer is built: each missing layer would otherwise be reported only after zeros of its full
/// size were allocated (a 100 KB GGUF declaring 2,000,000 blocks grew to 10.7 GB).
fn check_layer_count(config: &DecoderConfig, source: &dyn WeightSource) -> Result<()> {
    let layers_present = source
        .names()
        .iter()
        .filter_map(|n| {
            let rest = &n[n.find("layers.")? + "layers.".len()..];
            rest.split('.').next()?.parse::<usize>().ok()
        })
        .max()
        .map_or(0, |i| i + 1);
    if config.num_layers <= layers_present {
        return Ok(());
    }
    let path = source.path().to_path_buf();
    let gguf = path.extension().is_some_and(|e| e == "gguf");
    Err(ModelError::Config {
        key: if gguf {
            "block_count"
        } else {
            "num_hidden_layers"
        }
        .into(),
        reason: format!(
            "declares {} layers but the weights hold tensors for {layers_present}",
            config.num_layers
        ),
        path,
    })
}

/// Every tensor `config` needs, with its shape (PyTorch order), in the order [`build`] loads
/// them. Names and shapes only: nothing sized by the config is allocated.
fn expected_tensors(c: &DecoderConfig) -> Vec<(String, Vec<usize>)> {
    let (h, inter, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let (q_out, kv_out) = (c.num_heads * hd, c.num_kv_heads * hd);
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![c.vocab_size, h],
    )];
    let linear = |out: &mut Vec<_>, prefix: String, d_in: usize, d_out: usize, bias: bool| {
        if bias {
            out.push((format!("{prefix}.bias"), vec![d_out]));
        }
        out.push((format!("{prefix}.weight"), vec![d_out, d_in]));
    };
    for i in 0..c.num_layers {
        let (a, m) = (
            format!("model.layers.{i}.self_attn"),
            format!("model.layers.{i}.mlp"),
        );
        if c.fused_qkv {
            let d = q_out + 2 * kv_out;
            linear(&mut out, format!("{a}.qkv_proj"), h, d, c.qkv_bias);
        } else {
            for (name, d) in [("q_proj", q_out), ("k_proj", kv_out), ("v_proj", kv_out)] {
                linear(&mut out, format!("{a}.{name}"), h, d, c.qkv_bias);
            }
        }
        if c.qk_norm {
            out.push((format!("{a}.q_norm.weight"), vec![hd]));
            out.push((format!("{a}.k_norm.weight"), vec![hd]));
        }
        linear(&mut out, format!("{a}.o_proj"), q_out, h, c.o_bias);
        if c.fused_gate_up {
            linear(
                &mut out,
                format!("{m}.gate_up_proj"),
                h,
                2 * inter,
                c.mlp_bias,
            );
        } else {
            linear(&mut out, format!("{m}.gate_proj"), h, inter, c.mlp_bias);
            linear(&mut out, format!("{m}.up_proj"), h, inter, c.mlp_bias);
        }
        linear(&mut out, format!("{m}.down_proj"), inter, h, c.mlp_bias);
        let mut norms = vec!["input_layernorm", "post_attention_layernorm"];
        if c.sandwich_norms {
            norms.extend(["pre_feedforward_layernorm", "post_feedforward_layernorm"]);
        }
        for n in norms {
            out.push((format!("model.layers.{i}.{n}.weight"), vec![h]));
        }
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !c.tie_word_embeddings {
        linear(&mut out, "lm_head".to_string(), h, c.vocab_size, false);
    }
    out
}

/// Checks every tensor the model needs against `source` before anything is built: the first
/// shape that does not fit is an error naming the tensor, and every missing tensor is listed
/// (a missing tensor is never replaced by zeros of the config's size).
fn check_tensors(config: &DecoderConfig, source: &dyn WeightSource) -> Result<()> {
    let mut missing = Vec::new();
    for (name, expected) in expected_tensors(config) {
        match source.shape(&name) {
            None => missing.push(name),
            Some(found) if found != expected => {
                return Err(ModelError::ShapeMismatch {
                    path: source.path().to_path_buf(),
                    key: name,
                    expected,
                    found,
                });
            }
            Some(_) => {}
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(ModelError::MissingWeights {
        path: source.path().to_path_buf(),
        keys: missing,
    })
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
    build_causal_lm_as(config, source, device, Quantization::default())
}

/// [`build_causal_lm`] holding the matrices as `quantization` says (see [`Quantization`]).
///
/// # Errors
/// As [`build_causal_lm`], and [`ModelError::Input`] for a weight a bitsandbytes format cannot
/// hold (NaN, infinity). A bitsandbytes quantization of a tensor the file already holds in a
/// block format (a GGUF's Q4_1, say) dequantizes it and quantizes it again, and says so on
/// stderr.
pub fn build_causal_lm_as(
    config: &DecoderConfig,
    source: &dyn WeightSource,
    device: &Device,
    quantization: Quantization,
) -> Result<CausalLm> {
    match config.layout {
        ModuleLayout::CausalLm => build(config, source, device, quantization),
        ModuleLayout::Gemma3Multimodal => {
            let text = LanguageModelWeights::new(source)?;
            build(config, &text, device, quantization).map_err(|e| text.file_names_in(e))
        }
    }
}

/// Bytes the loaded weights will take: f32 for what is widened, the stored bytes of what is
/// kept, bitsandbytes' bits per weight for what is quantized at load.
pub fn estimate_weight_bytes(source: &dyn WeightSource, quantization: Quantization) -> u64 {
    source
        .names()
        .iter()
        .map(|name| {
            let shape = source.shape(name).unwrap_or_default();
            let n = shape.iter().product::<usize>() as f64;
            let bits = match (quantization, shape.len()) {
                (Quantization::F32, _) | (_, 0 | 1) => 32.0,
                (Quantization::Stored, _) => stored_bits(source.dtype(name).as_deref()),
                (Quantization::Bnb(q), _) => q.quant_type().bits_per_weight(),
            };
            (n * bits / 8.0) as u64
        })
        .sum()
}

/// Bits per weight of a stored dtype name (`Q4_K`, `BF16`...), 32 when unknown.
fn stored_bits(dtype: Option<&str>) -> f64 {
    let ty = match dtype.map(str::to_ascii_uppercase).as_deref() {
        Some("F16") => QuantType::F16,
        Some("BF16") => QuantType::Bf16,
        Some("Q4_0") => QuantType::Q4_0,
        Some("Q4_1") => QuantType::Q4_1,
        Some("Q5_0") => QuantType::Q5_0,
        Some("Q5_1") => QuantType::Q5_1,
        Some("Q8_0") => QuantType::Q8_0,
        Some("Q4_K") => QuantType::Q4_K,
        Some("Q5_K") => QuantType::Q5_K,
        Some("Q6_K") => QuantType::Q6_K,
        _ => QuantType::F32,
    };
    ty.bits_per_weight()
}

/// `MemAvailable` of `/proc/meminfo` in bytes, where the system says.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Says so on stderr, before anything is allocated, when the weights will not fit in memory.
fn warn_if_too_large(source: &dyn WeightSource, quantization: Quantization) {
    let need = estimate_weight_bytes(source, quantization);
    let Some(free) = available_memory() else {
        return;
    };
    if need > free {
        let gb = |b: u64| b as f64 / 1e9;
        let stored = estimate_weight_bytes(source, Quantization::Stored);
        eprintln!(
            "warning: {} needs about {:.1} GB for its weights as {quantization}, {:.1} GB are \
             available; --quantize stored would hold it in about {:.1} GB (nf4: quantize an \
             f32/f16/bf16 checkpoint at load)",
            source.path().display(),
            gb(need),
            gb(free),
            gb(stored)
        );
    }
}

fn build(
    config: &DecoderConfig,
    source: &dyn WeightSource,
    device: &Device,
    quantization: Quantization,
) -> Result<CausalLm> {
    warn_if_too_large(source, quantization);
    check_layer_count(config, source)?;
    check_tensors(config, source)?;
    let c = config;
    let mut l = Loader {
        source,
        device,
        quantization,
        used: BTreeSet::new(),
        requantized: Vec::new(),
    };
    let (h, q_out, kv_out) = (
        c.hidden_size,
        c.num_heads * c.head_dim,
        c.num_kv_heads * c.head_dim,
    );
    let embed_tokens = l.table("model.embed_tokens.weight", c.vocab_size, h)?;
    let mut layers = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let p = format!("model.layers.{i}");
        let a = format!("{p}.self_attn");
        let mut proj =
            |name: &str, d_out: usize| l.linear(&format!("{a}.{name}"), h, d_out, c.qkv_bias);
        let qkv = if c.fused_qkv {
            QkvProj::Fused {
                qkv_proj: proj("qkv_proj", q_out + 2 * kv_out)?,
            }
        } else {
            QkvProj::Separate {
                q_proj: proj("q_proj", q_out)?,
                k_proj: proj("k_proj", kv_out)?,
                v_proj: proj("v_proj", kv_out)?,
            }
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
            qkv,
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
        let mut proj =
            |name: &str, d_out: usize| l.linear(&format!("{m}.{name}"), h, d_out, c.mlp_bias);
        let gate_up = if c.fused_gate_up {
            GateUpProj::Fused {
                gate_up_proj: proj("gate_up_proj", 2 * inter)?,
            }
        } else {
            GateUpProj::Separate {
                gate_proj: proj("gate_proj", inter)?,
                up_proj: proj("up_proj", inter)?,
            }
        };
        let mlp = Mlp {
            gate_up,
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
    if let Some(first) = l.requantized.first() {
        eprintln!(
            "note: {} matrices of {} stored as {first} (or another block format) were dequantized \
             and quantized again as {quantization}: two roundings (--quantize stored keeps them \
             as stored)",
            l.requantized.len(),
            path.display()
        );
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
        precision: kiln_lora::Precision::F32,
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
