//! The metadata of a GGUF file kiln writes: llama.cpp's `general.*` keys, the architecture's
//! hyper-parameters under the names `convert_hf_to_gguf.py` uses (and `config.rs` reads back),
//! and the tokenizer (`tokenizer.ggml.*`): copied from the source GGUF, or built from a
//! byte-level BPE `tokenizer.json` the way llama.cpp's converter builds a `gpt2` vocabulary.
//!
//! Why a round-trip check lives here: GGUF has no key for some of kiln's knobs (Gemma's
//! `query_pre_attn_scalar`, Phi-3's partial rotary factor, Llama 3 and LongRoPE scaling), and
//! readers (transformers, kiln) fill them with defaults. A file that would load as a different
//! model is refused with the knob named, instead of written.
use super::config::{GgufArch, hf_config_from_gguf};
use super::file::GgufFile;
use super::types::GgufFileType;
use super::value::GgufValue;
use crate::config::{DecoderConfig, Family, HfConfig, RopeScaling};
use crate::error::{ModelError, Result};
use crate::pretrained::Pretrained;
use serde_json::Value;
use std::path::Path;

type Meta = Vec<(String, GgufValue)>;

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// The GGUF architecture of `lm`.
///
/// # Errors
/// [`ModelError::UnsupportedModelType`] for a family without a GGUF architecture kiln writes.
pub(crate) fn arch_of(lm: &Pretrained) -> Result<GgufArch> {
    Ok(match lm.model.config.family {
        Family::Llama | Family::Mistral => GgufArch::Llama,
        Family::Qwen2 => GgufArch::Qwen2,
        Family::Gemma2 => GgufArch::Gemma2,
        Family::Gemma3 => GgufArch::Gemma3,
        Family::Phi3 => GgufArch::Phi3,
    })
}

fn s(v: &str) -> GgufValue {
    GgufValue::String(v.to_owned())
}

fn u32v(v: usize) -> GgufValue {
    GgufValue::U32(v as u32)
}

/// Every metadata key of the file, in llama.cpp's order (general, architecture, tokenizer).
pub(crate) fn metadata(lm: &Pretrained, arch: GgufArch, ft: GgufFileType) -> Result<Meta> {
    let c = &lm.model.config;
    let a = arch.key();
    let source_gguf = source_gguf(lm)?;
    let name = match (&source_gguf, c.family) {
        (_, Family::Mistral) => "mistral".to_owned(), // how readers tell mistral from llama
        (Some(f), _) => f.get_str("general.name")?.unwrap_or("kiln").to_owned(),
        (None, _) => lm
            .source
            .file_stem()
            .map_or("kiln".into(), |s| s.to_string_lossy().into_owned()),
    };
    let mut m: Meta = vec![
        ("general.architecture".into(), s(a)),
        ("general.name".into(), GgufValue::String(name)),
        ("general.alignment".into(), GgufValue::U32(32)),
        ("general.file_type".into(), GgufValue::U32(ft.llama_ftype())),
        ("general.quantization_version".into(), GgufValue::U32(2)),
    ];
    m.extend(hyper_parameters(c, arch));
    match source_gguf {
        Some(file) => m.extend(
            file.metadata()
                .filter(|(k, _)| k.starts_with("tokenizer.") && *k != "tokenizer.chat_template")
                .map(|(k, v)| (k.to_owned(), v.clone())),
        ),
        None => m.extend(tokenizer_from_json(lm)?),
    }
    if let Some(t) = &lm.extras.chat_template {
        m.push(("tokenizer.chat_template".into(), s(t)));
    }
    Ok(m)
}

/// The source file when `lm` was loaded from a GGUF (re-opened: its tokenizer is copied).
fn source_gguf(lm: &Pretrained) -> Result<Option<GgufFile>> {
    let is_gguf = lm.source.is_file()
        && lm
            .source
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    is_gguf.then(|| GgufFile::open(&lm.source)).transpose()
}

/// `{arch}.*` keys, as `convert_hf_to_gguf.py` writes them.
fn hyper_parameters(c: &DecoderConfig, arch: GgufArch) -> Meta {
    let k = |key: &str| format!("{}.{key}", arch.key());
    let mut m: Meta = vec![
        (k("vocab_size"), u32v(c.vocab_size)),
        (k("context_length"), u32v(c.max_position_embeddings)),
        (k("embedding_length"), u32v(c.hidden_size)),
        (k("block_count"), u32v(c.num_layers)),
        (k("feed_forward_length"), u32v(c.intermediate_size)),
        (k("attention.head_count"), u32v(c.num_heads)),
        (k("attention.head_count_kv"), u32v(c.num_kv_heads)),
        (
            k("attention.layer_norm_rms_epsilon"),
            GgufValue::F32(c.rms_norm_eps as f32),
        ),
        (k("rope.freq_base"), GgufValue::F32(c.rope_theta as f32)),
        (k("rope.dimension_count"), u32v(c.rotary_dim)),
    ];
    if arch.norms_offset_by_one() || c.head_dim * c.num_heads != c.hidden_size {
        m.push((k("attention.key_length"), u32v(c.head_dim)));
        m.push((k("attention.value_length"), u32v(c.head_dim)));
    }
    if let RopeScaling::Linear { factor } = c.rope_scaling {
        m.push((k("rope.scaling.type"), s("linear")));
        m.push((k("rope.scaling.factor"), GgufValue::F32(factor as f32)));
    }
    let window = c.layer_attention.iter().find_map(|a| match a {
        crate::config::AttentionKind::Sliding { window } => Some(*window),
        _ => None,
    });
    if let (Some(w), GgufArch::Gemma2 | GgufArch::Gemma3 | GgufArch::Phi3) = (window, arch) {
        m.push((k("attention.sliding_window"), u32v(w)));
    }
    if arch == GgufArch::Gemma2 {
        for (key, cap) in [
            ("attn_logit_softcapping", c.attn_softcap),
            ("final_logit_softcapping", c.final_softcap),
        ] {
            if let Some(cap) = cap {
                m.push((k(key), GgufValue::F32(cap as f32)));
            }
        }
    }
    m
}

/// `tokenizer.ggml.*` of a byte-level BPE `tokenizer.json` (llama.cpp's `gpt2` model): tokens by
/// id (padded with `[PADn]` UNUSED tokens to the embedding's rows), types, merges, the
/// pre-tokenizer's name and the special ids.
fn tokenizer_from_json(lm: &Pretrained) -> Result<Meta> {
    let err = |reason: String| ModelError::Tokenizer {
        path: lm.source.clone(),
        reason: format!("GGUF export: {reason}"),
    };
    let json: Value = serde_json::from_str(
        &lm.tokenizer
            .to_string(false)
            .map_err(|e| err(e.to_string()))?,
    )
    .map_err(|e| err(e.to_string()))?;
    let model = &json["model"];
    let byte_level = json.to_string().contains("\"ByteLevel\"");
    if model["type"] != "BPE" || !byte_level {
        return Err(err(format!(
            "only byte-level BPE tokenizers are written as GGUF `gpt2`, found {} (byte level: {byte_level})",
            model["type"]
        )));
    }
    let rows = lm.model.config.vocab_size;
    let mut tokens: Vec<Option<String>> = vec![None; rows.max(lm.tokenizer.get_vocab_size(true))];
    let mut types = vec![NORMAL; tokens.len()];
    for (t, id) in lm.tokenizer.get_vocab(false) {
        tokens[id as usize] = Some(t);
    }
    for (id, added) in lm.tokenizer.get_added_tokens_decoder() {
        types[id as usize] = if added.special { CONTROL } else { USER_DEFINED };
        tokens[id as usize] = Some(added.content);
    }
    let tokens: Vec<GgufValue> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            GgufValue::String(t.unwrap_or_else(|| {
                types[i] = UNUSED;
                format!("[PAD{i}]")
            }))
        })
        .collect();
    let merges: Vec<GgufValue> = model["merges"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| match m {
                    Value::String(s) => Some(s.clone()),
                    Value::Array(p) => Some(format!("{} {}", p[0].as_str()?, p[1].as_str()?)),
                    _ => None,
                })
                .map(GgufValue::String)
                .collect()
        })
        .unwrap_or_default();
    let c = &lm.model.config;
    let mut m: Meta = vec![
        ("tokenizer.ggml.model".into(), s("gpt2")),
        (
            "tokenizer.ggml.pre".into(),
            s(pre_name(&json["pre_tokenizer"])),
        ),
        ("tokenizer.ggml.tokens".into(), GgufValue::Array(tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            GgufValue::Array(types.into_iter().map(GgufValue::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), GgufValue::Array(merges)),
    ];
    let ids = [
        ("tokenizer.ggml.bos_token_id", c.bos_token_id),
        (
            "tokenizer.ggml.eos_token_id",
            c.eos_token_ids.first().copied(),
        ),
        ("tokenizer.ggml.padding_token_id", c.pad_token_id),
    ];
    m.extend(
        ids.into_iter()
            .filter_map(|(k, id)| Some((k.into(), GgufValue::U32(id?)))),
    );
    let adds_bos = c.bos_token_id.is_some_and(|bos| {
        lm.encode("a", true)
            .is_ok_and(|ids| ids.first() == Some(&bos))
    });
    m.push((
        "tokenizer.ggml.add_bos_token".into(),
        GgufValue::Bool(adds_bos),
    ));
    Ok(m)
}

/// llama.cpp's `tokenizer.ggml.pre` for a `tokenizer.json` pre-tokenizer: `llama-bpe` or `qwen2`
/// for their split regexes, `smollm` for GPT-2's with single digits, else `gpt2`.
fn pre_name(pre: &Value) -> &'static str {
    let text = pre.to_string();
    if text.contains(r"\\p{N}{1,3}") {
        "llama-bpe"
    } else if text.contains(r"[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|") {
        "qwen2"
    } else if text.contains("\"Digits\"") {
        "smollm"
    } else {
        "gpt2"
    }
}

/// Parses the header just built (padded to the file's length with zeros) as kiln's reader will,
/// and requires the model config it implies to equal `lm`'s.
///
/// # Errors
/// [`ModelError::Config`] naming the first knob that would load differently.
pub(crate) fn check_round_trip(
    lm: &Pretrained,
    path: &Path,
    header: &[u8],
    file_len: usize,
) -> Result<()> {
    let io = |e| ModelError::io(path, e);
    let mut map = memmap2::MmapMut::map_anon(file_len.max(1)).map_err(io)?;
    map[..header.len()].copy_from_slice(header);
    let file = GgufFile::from_mmap(path.to_path_buf(), map.make_read_only().map_err(io)?)?;
    let json = hf_config_from_gguf(&file)?;
    let read = HfConfig::from_value(json, path)?.to_decoder_config(path)?;
    let c = &lm.model.config;
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(b.abs());
    let caps = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => close(a, b),
        (a, b) => a == b,
    };
    let checks: [(&str, bool); 14] = [
        ("vocab_size", read.vocab_size == c.vocab_size),
        ("hidden_size", read.hidden_size == c.hidden_size),
        (
            "intermediate_size",
            read.intermediate_size == c.intermediate_size,
        ),
        (
            "num_layers / heads",
            (read.num_layers, read.num_heads, read.num_kv_heads)
                == (c.num_layers, c.num_heads, c.num_kv_heads),
        ),
        ("head_dim", read.head_dim == c.head_dim),
        ("rms_norm_eps", close(read.rms_norm_eps, c.rms_norm_eps)),
        ("rope_theta", close(read.rope_theta, c.rope_theta)),
        (
            "rope_scaling / rope_local",
            read.rope_scaling == c.rope_scaling && read.rope_local == c.rope_local,
        ),
        (
            "rotary_dim (partial_rotary_factor)",
            read.rotary_dim == c.rotary_dim,
        ),
        (
            "attention scale (query_pre_attn_scalar)",
            close(read.attn_scale, c.attn_scale),
        ),
        (
            "attn_logit_softcapping",
            caps(read.attn_softcap, c.attn_softcap),
        ),
        (
            "final_logit_softcapping",
            caps(read.final_softcap, c.final_softcap),
        ),
        (
            "layer attention (sliding windows)",
            read.layer_attention == c.layer_attention,
        ),
        (
            "tie_word_embeddings",
            read.tie_word_embeddings == c.tie_word_embeddings,
        ),
    ];
    match checks.iter().find(|(_, ok)| !ok) {
        None => Ok(()),
        Some((knob, _)) => Err(ModelError::Config {
            path: path.to_path_buf(),
            key: (*knob).to_owned(),
            reason: format!(
                "GGUF readers (transformers, kiln) would load a {:?} model with a different \
                 value: llama.cpp's metadata has no key for this model's; not written",
                c.family
            ),
        }),
    }
}
