//! `Pretrained::save_gguf` on the tiny fixtures: what kiln writes loads back in kiln with the
//! weights within each block format's error, the logits within what that error allows, the
//! metadata llama.cpp expects and the same tokenizer; and transformers loads the same files with
//! kiln's logits (`fixtures/gguf_export/transformers_logits.json`, written by
//! `tools/check_gguf_export.py` from the files this test writes when `KILN_GGUF_EXPORT_OUT` is set).
#![allow(clippy::unwrap_used)]
mod common;

use common::fixtures;
use kiln_lora::{LoraConfig, LoraModel, TargetModules};
use kiln_models::ModelError;
use kiln_models::gguf::{GgufExport, GgufFile, GgufFileType, GgufWeights};
use kiln_models::{DecoderInput, Pretrained, SafetensorsWeights, WeightSource, default_device};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// Token ids every case scores: 8 positions, longer than gemma2's window of 4.
const IDS: [u32; 8] = [1, 5, 17, 42, 9, 3, 77, 12];
const TEXTS: [&str; 3] = [
    "Hello world",
    "the thin inner theme",
    "a = b + 3; x * (y - 2)",
];

/// A byte-level BPE `tokenizer.json` for the tiny safetensors models (which ship none): three
/// special tokens, printable ASCII (space as `Ġ`) and a few merges; 107 tokens.
fn tokenizer_json() -> Value {
    let mut vocab = serde_json::Map::new();
    let specials = ["<pad>", "<s>", "</s>"];
    for (i, t) in specials.iter().enumerate() {
        vocab.insert((*t).into(), json!(i));
    }
    for b in 32u8..127 {
        let c = if b == b' ' { 'Ġ' } else { b as char };
        vocab.insert(c.to_string(), json!(vocab.len()));
    }
    let merges = [
        "Ġ t", "h e", "Ġt he", "i n", "e r", "Ġ w", "o r", "Ġt h", "Ġth in",
    ];
    for m in merges {
        vocab.insert(m.replace(' ', ""), json!(vocab.len()));
    }
    let added: Vec<Value> = specials
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
        "use_regex": true});
    json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": byte_level, "post_processor": byte_level,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges}})
}

/// A tiny safetensors fixture copied to `dir` with a tokenizer and `edit` applied to its config.
fn tiny_dir(name: &str, dir: &Path, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let src = fixtures().join("tiny").join(name);
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(src.join("model.safetensors"), out.join("model.safetensors")).unwrap();
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(out.join("config.json"), config.to_string()).unwrap();
    std::fs::write(out.join("tokenizer.json"), tokenizer_json().to_string()).unwrap();
    out
}

/// The cases: (name, model path). Safetensors fixtures get the config values GGUF can carry
/// (GGUF has no key for Gemma 2's `query_pre_attn_scalar` and soft-caps as transformers reads
/// them, nor for Phi-3's partial rotary factor and sliding window: the readers use defaults).
/// `fixtures/gguf/tiny_llama_reader_only.gguf` is not a case: it holds a q bias without `attention_bias`, a
/// tensor test of the reader that no model loads.
fn cases(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    let gguf = fixtures().join("gguf");
    vec![
        ("llama", tiny_dir("llama", dir, |_| {})),
        ("qwen2", tiny_dir("qwen2", dir, |_| {})),
        (
            "gemma2",
            tiny_dir("gemma2", dir, |c| {
                c["query_pre_attn_scalar"] = json!(256);
                c["attn_logit_softcapping"] = json!(50.0);
                c["final_logit_softcapping"] = json!(30.0);
            }),
        ),
        (
            "phi3",
            tiny_dir("phi3", dir, |c| {
                c["partial_rotary_factor"] = json!(1.0);
                c["rope_parameters"]["partial_rotary_factor"] = json!(1.0);
                c["sliding_window"] = Value::Null;
            }),
        ),
        ("tiny_phi3_gguf", gguf.join("tiny_phi3.gguf")),
    ]
}

const FORMATS: [GgufFileType; 3] = [GgufFileType::F16, GgufFileType::Q8_0, GgufFileType::Q4_K_M];

fn load(path: &Path) -> Pretrained {
    Pretrained::load(path, &default_device()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn logits(lm: &Pretrained) -> Vec<f32> {
    let l = lm
        .model
        .forward(&DecoderInput::new(IDS.to_vec(), 1, IDS.len()))
        .unwrap();
    l.into_data().try_into_vec().unwrap()
}

fn source_weights(path: &Path) -> Box<dyn WeightSource> {
    if path.extension().is_some_and(|e| e == "gguf") {
        Box::new(GgufWeights::open(path).unwrap())
    } else {
        Box::new(SafetensorsWeights::open(path).unwrap())
    }
}

/// The largest error a dequantized element of a block may have: half a code step `d` of the
/// block's range (a whole step for Q4_0/Q5_0, whose top code may be clipped, and for the
/// k-quants, whose 6-bit sub-block scales add up to half a step more), plus the f16 rounding of
/// `d` (relative 2^-11) times the largest code.
fn block_bound(ty: &str, block: &[f32]) -> (usize, f32) {
    let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    let range = block.iter().fold(f32::MIN, |m, &v| m.max(v))
        - block.iter().fold(f32::MAX, |m, &v| m.min(v));
    let (size, bound) = match ty {
        "F32" => (1, amax * 1e-6),
        "F16" => (1, amax / 2048.0 + 6e-8),
        "Q8_0" => (32, amax / 127.0 * (0.5 + 127.0 / 2048.0)),
        "Q5_0" => (32, amax / 16.0 * (1.0 + 16.0 / 2048.0)),
        "Q5_1" => (32, range / 31.0 * (0.5 + 31.0 / 2048.0) + amax / 2048.0),
        "Q4_0" => (32, amax / 8.0 * (1.0 + 8.0 / 2048.0)),
        "Q6_K" => (256, amax / 32.0),
        "Q5_K" => (256, range / 31.0),
        "Q4_K" => (256, range / 15.0),
        other => panic!("unexpected type {other}"),
    };
    (size, bound * 1.01 + 1e-7)
}

/// Every tensor of `exported` against the source's, element by element within its block bound.
fn check_weights(case: &str, source: &Path, exported: &Path) {
    let src = source_weights(source);
    let out = GgufWeights::open(exported).unwrap();
    let mut names = out.names();
    names.sort();
    let mut want = src.names();
    want.sort();
    assert_eq!(names, want, "{case}: tensor names");
    for name in &names {
        let (a, b) = (src.load_f32(name).unwrap(), out.load_f32(name).unwrap());
        assert_eq!(out.shape(name), src.shape(name), "{case} {name}");
        let ty = out.dtype(name).unwrap();
        let cols = *out.shape(name).unwrap().last().unwrap();
        for (r, (ra, rb)) in a.chunks(cols).zip(b.chunks(cols)).enumerate() {
            let (size, _) = block_bound(&ty, ra);
            for (xa, xb) in ra.chunks(size).zip(rb.chunks(size)) {
                let (_, bound) = block_bound(&ty, xa);
                let err = xa
                    .iter()
                    .zip(xb)
                    .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                assert!(
                    err <= bound,
                    "{case} {name} ({ty}) row {r}: error {err} > bound {bound}"
                );
            }
        }
    }
}

fn check_metadata(case: &str, lm: &Pretrained, path: &Path, ft: GgufFileType) {
    let f = GgufFile::open(path).unwrap();
    let arch = f.architecture().unwrap().to_owned();
    assert_eq!(f.version(), 3);
    assert_eq!(f.get_u32("general.alignment").unwrap(), Some(32));
    assert_eq!(
        f.get_u32("general.file_type").unwrap(),
        Some(ft.llama_ftype())
    );
    assert_eq!(f.get_u32("general.quantization_version").unwrap(), Some(2));
    for key in [
        "context_length",
        "embedding_length",
        "block_count",
        "feed_forward_length",
        "attention.head_count",
        "attention.head_count_kv",
        "attention.layer_norm_rms_epsilon",
        "rope.freq_base",
    ] {
        assert!(
            f.get(&format!("{arch}.{key}")).is_some(),
            "{case}: {arch}.{key}"
        );
    }
    let tokens = f.get_str_array("tokenizer.ggml.tokens").unwrap().unwrap();
    assert_eq!(
        tokens.len(),
        lm.model.config.vocab_size,
        "{case}: one token per row"
    );
    assert!(f.get_str("tokenizer.ggml.model").unwrap().is_some());
    for (t, info) in f.tensors().iter().enumerate() {
        assert_eq!(info.file_offset % 32, 0, "{case}: tensor {t} aligned");
    }
}

/// max |Δ| over max |reference|.
fn relative(a: &[f32], b: &[f32]) -> f32 {
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    common::max_abs_diff(a, b) / scale
}

#[test]
fn round_trips_in_kiln_within_each_formats_error() {
    let dir = tempfile::tempdir().unwrap();
    let keep = std::env::var_os("KILN_GGUF_EXPORT_OUT").map(PathBuf::from);
    let mut kiln_logits = serde_json::Map::new();
    for (case, path) in cases(dir.path()) {
        let lm = load(&path);
        let original = logits(&lm);
        for ft in FORMATS {
            let out_dir = keep.clone().unwrap_or_else(|| dir.path().to_path_buf());
            std::fs::create_dir_all(&out_dir).unwrap();
            let out = out_dir.join(format!("{case}-{}.gguf", ft.name()));
            lm.save_gguf(&out, GgufExport { file_type: ft }).unwrap();
            check_metadata(case, &lm, &out, ft);
            check_weights(case, &path, &out);
            let back = load(&out);
            for text in TEXTS {
                assert_eq!(
                    lm.encode(text, true).unwrap(),
                    back.encode(text, true).unwrap()
                );
            }
            let got = logits(&back);
            // Bounds relative to the largest logit. f16 keeps 11 bits (relative error ≤ 2^-11
            // per weight); over two layers and the head the errors add to well under 1%. Q8_0's
            // step is 1/127 of each block's largest weight (≤ 0.4%); Q4_K_M on these 64-wide rows
            // falls back to Q5_0 (steps of 1/16 of a block's largest) and Q8_0/Q6_K, a few
            // percent per weight, which random tiny models turn into up to ~15% of a logit.
            let bound = match ft {
                GgufFileType::F16 => 1e-2,
                GgufFileType::Q8_0 => 3e-2,
                _ => 0.2,
            };
            let rel = relative(&original, &got);
            assert!(
                rel <= bound,
                "{case} {}: relative logit error {rel} > {bound}",
                ft.name()
            );
            eprintln!(
                "{case} {}: max |Δlogit| / max |logit| = {rel:.2e}",
                ft.name()
            );
            let v = got.len() / IDS.len();
            kiln_logits.insert(
                format!("{case}-{}", ft.name()),
                json!(got[(IDS.len() - 1) * v..]),
            );
        }
    }
    if let Some(out) = keep {
        let body = json!({"ids": IDS, "kiln_last_logits": kiln_logits});
        std::fs::write(out.join("kiln_logits.json"), body.to_string()).unwrap();
    }
}

/// transformers' last-position logits on the files kiln writes (committed by
/// `tools/check_gguf_export.py`): kiln's reading of the same files gives the same logits.
#[test]
fn transformers_loads_what_kiln_writes() {
    let path = fixtures()
        .join("gguf_export")
        .join("transformers_logits.json");
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (case, src) in cases(dir.path()) {
        let lm = load(&src);
        for ft in FORMATS {
            let key = format!("{case}-{}", ft.name());
            let Some(want) = reference["cases"][&key]["last_logits"].as_array() else {
                continue;
            };
            let out = dir.path().join(format!("{key}.gguf"));
            lm.save_gguf(&out, GgufExport { file_type: ft }).unwrap();
            let got = logits(&load(&out));
            let v = got.len() / IDS.len();
            let want: Vec<f32> = want.iter().map(|x| x.as_f64().unwrap() as f32).collect();
            let diff = common::max_abs_diff(&got[(IDS.len() - 1) * v..], &want);
            assert!(diff <= 1e-4, "{key}: kiln vs transformers max |Δ| {diff}");
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} cases in {}", path.display());
}

#[test]
fn bad_input_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.gguf");
    let q8 = GgufExport {
        file_type: GgufFileType::Q8_0,
    };
    // Phi-3's partial rotary factor has no GGUF key that readers use.
    let lm = load(&tiny_dir("phi3", dir.path(), |c| {
        c["sliding_window"] = Value::Null
    }));
    match lm.save_gguf(&out, q8) {
        Err(ModelError::Config { key, .. }) => assert!(key.contains("rotary"), "{key}"),
        other => panic!("expected a config error, got {other:?}"),
    }
    assert!(!out.exists(), "nothing is written");
    // A file type kiln does not write.
    match "Q3_K_S".parse::<GgufFileType>() {
        Err(ModelError::Input(m)) => assert!(m.contains("Q3_K_S")),
        other => panic!("{other:?}"),
    }
}

/// A model with an adapter that is not merged is written with the adapter merged, one layer at a
/// time as the file is written: the same bytes as the file of the merged model, which differ
/// from the base's (the adapter starts from random A and B, so it changes the weights).
#[test]
fn unmerged_adapters_are_merged_as_they_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_dir("llama", dir.path(), |_| {});
    let mut config = LoraConfig::new(
        4,
        8.0,
        TargetModules::Names(vec!["q_proj".into(), "down_proj".into()]),
    );
    config.init_lora_weights = kiln_lora::InitLoraWeights::Random;
    let lora = LoraModel::with_adapter(load(&path).model, "default", config).unwrap();
    let write = |model, name: &str| {
        let lm = Pretrained {
            model,
            ..load(&path)
        };
        let out = dir.path().join(name);
        lm.save_gguf(
            &out,
            GgufExport {
                file_type: GgufFileType::F32,
            },
        )
        .unwrap();
        std::fs::read(out).unwrap()
    };
    let unmerged = write(lora.clone().into_inner(), "unmerged.gguf");
    let mut merged = lora.clone();
    merged.merge().unwrap();
    let merged = write(merged.into_inner(), "merged.gguf");
    let base = write(load(&path).model, "base.gguf");
    assert_eq!(unmerged.len(), merged.len());
    assert!(unmerged == merged, "the on-the-fly merge wrote other bytes");
    assert!(unmerged != base, "the adapter changed nothing");
}
