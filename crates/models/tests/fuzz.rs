//! Fuzz targets of kiln-models: structure-aware mutations of valid files (GGUF, safetensors,
//! config.json, tokenizer_config.json) must give a typed error or a model, never a panic, and
//! never allocate more than 64 MiB plus a small multiple of the file's size.
//!
//! Each target runs for `KILN_FUZZ_MS` ms (3 s by default); `tools/fuzz.sh` runs each for 10
//! minutes. A failure prints `ARBTEST_SEED=...`, which replays it.
#![allow(clippy::unwrap_used)]
mod common;
#[path = "../../../fuzz/kit.rs"]
mod kit;

use arbitrary::Unstructured;
use common::fixtures;
use kiln_models::{
    DecoderConfig, HfConfig, Pretrained, Quantization, SafetensorsWeights, WeightSource,
    build_causal_lm_as, default_device,
};
use std::path::{Path, PathBuf};

#[global_allocator]
static ALLOC: kit::Counting = kit::Counting;

/// `(offset, width)` of every integer field of a GGUF header (counts, lengths, value types,
/// integer values, dims, tensor types and offsets), found by walking the valid file.
fn gguf_fields(b: &[u8]) -> Vec<(usize, usize)> {
    let mut f = vec![(4, 4), (8, 8), (16, 8)];
    let rd = |at: usize, w: usize| -> Option<u64> {
        let mut x = [0u8; 8];
        x[..w].copy_from_slice(b.get(at..at + w)?);
        Some(u64::from_le_bytes(x))
    };
    let (n_tensors, n_kv) = (rd(8, 8).unwrap(), rd(16, 8).unwrap());
    let mut pos = 24;
    fn value(
        b: &[u8],
        f: &mut Vec<(usize, usize)>,
        pos: &mut usize,
        ty: u64,
        rd: &dyn Fn(usize, usize) -> Option<u64>,
    ) -> Option<()> {
        let width = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => {
                f.push((*pos, 8));
                let n = rd(*pos, 8)? as usize;
                *pos += 8 + n;
                return Some(());
            }
            9 => {
                f.extend([(*pos, 4), (*pos + 4, 8)]);
                let (et, n) = (rd(*pos, 4)?, rd(*pos + 4, 8)?);
                *pos += 12;
                for _ in 0..n {
                    value(b, f, pos, et, rd)?;
                }
                return Some(());
            }
            _ => return None,
        };
        if matches!(ty, 4 | 5 | 10 | 11) {
            f.push((*pos, width));
        }
        *pos += width;
        (*pos <= b.len()).then_some(())
    }
    for _ in 0..n_kv {
        f.push((pos, 8));
        pos += 8 + rd(pos, 8).unwrap() as usize;
        f.push((pos, 4));
        let ty = rd(pos, 4).unwrap();
        pos += 4;
        value(b, &mut f, &mut pos, ty, &rd).unwrap();
    }
    for _ in 0..n_tensors {
        f.push((pos, 8));
        pos += 8 + rd(pos, 8).unwrap() as usize;
        let n_dims = rd(pos, 4).unwrap() as usize;
        f.push((pos, 4));
        pos += 4;
        for _ in 0..n_dims {
            f.push((pos, 8));
            pos += 8;
        }
        f.extend([(pos, 4), (pos + 4, 8)]);
        pos += 12;
    }
    f
}

/// A valid file and the `(offset, width)` of its integer fields.
type Seed = (Vec<u8>, Vec<(usize, usize)>);

/// Everything a user's GGUF goes through: the reader, the derived config, the tokenizer, every
/// tensor dequantized, the model built.
fn load_gguf(path: &Path) {
    if let Ok(file) = kiln_models::gguf::GgufFile::open(path) {
        let _ = kiln_models::gguf::hf_config_from_gguf(&file);
        let _ = kiln_models::gguf::tokenizer_from_gguf(&file);
        let names: Vec<String> = file.tensors().iter().map(|t| t.name.clone()).collect();
        for n in names {
            let _ = file.dequantize(&n);
            let _ = file.stored_matrix(&n);
        }
    }
    let _ = kit::outcome(Pretrained::load_as(
        path,
        &default_device(),
        Quantization::Stored,
    ));
}

#[test]
fn fuzz_gguf_reader() {
    let dir = tempfile::tempdir().unwrap();
    let seeds: Vec<Seed> = ["tiny_phi3.gguf", "tiny_spm.gguf", "quants.gguf"]
        .iter()
        .map(|n| {
            let b = std::fs::read(fixtures().join("gguf").join(n)).unwrap();
            let f = gguf_fields(&b);
            (b, f)
        })
        .collect();
    let path = dir.path().join("fuzz.gguf");
    kit::run("gguf_reader", |u| {
        let (seed, fields) = u.choose(&seeds)?;
        let mut bytes = seed.clone();
        for _ in 0..u.int_in_range(1..=3)? {
            kit::mutate_bytes(u, &mut bytes, fields)?;
        }
        std::fs::write(&path, &bytes).unwrap();
        let ((), peak) = kit::peak_during(|| load_gguf(&path));
        assert!(
            peak <= kit::bound(bytes.len(), 32),
            "{peak} bytes for a {}-byte file",
            bytes.len()
        );
        Ok(())
    });
}

/// The tiny llama directory (config.json, model.safetensors) copied to `dir`.
fn tiny_llama_in(dir: &Path) -> Vec<u8> {
    let src = fixtures().join("tiny/llama");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    std::fs::read(src.join("model.safetensors")).unwrap()
}

/// A mutation of a safetensors file: its JSON header edited structurally (re-serialized with
/// its length), or its bytes (the header length field is a known field).
fn mutate_safetensors(u: &mut Unstructured<'_>, bytes: &[u8]) -> arbitrary::Result<Vec<u8>> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    if u.ratio(2, 3)? {
        let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        kit::mutate_json(u, &mut header)?;
        let text = serde_json::to_vec(&header).unwrap();
        let mut out = (text.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&text);
        out.extend_from_slice(&bytes[8 + n..]);
        return Ok(out);
    }
    let mut out = bytes.to_vec();
    kit::mutate_bytes(u, &mut out, &[(0, 8)])?;
    Ok(out)
}

#[test]
fn fuzz_safetensors_source() {
    let dir = tempfile::tempdir().unwrap();
    let valid = tiny_llama_in(dir.path());
    let config = DecoderConfig::from_file(&dir.path().join("config.json")).unwrap();
    let path = dir.path().join("model.safetensors");
    kit::run("safetensors_source", |u| {
        let bytes = mutate_safetensors(u, &valid)?;
        std::fs::write(&path, &bytes).unwrap();
        let q = *u.choose(&[Quantization::Stored, Quantization::F32])?;
        let ((), peak) = kit::peak_during(|| {
            match kit::outcome(SafetensorsWeights::open(dir.path()).map_err(|e| e.to_string())) {
                Ok(w) => {
                    for name in w.names() {
                        let _ = w.load_f32(&name);
                    }
                    let _ = build_causal_lm_as(&config, &w, &default_device(), q);
                }
                Err(e) => assert!(e.contains("model.safetensors"), "{e}"),
            }
        });
        assert!(
            peak <= kit::bound(bytes.len(), 8),
            "{peak} bytes for a {}-byte file",
            bytes.len()
        );
        Ok(())
    });
}

/// `(config.json, weights)` of each tiny family.
fn families() -> Vec<(PathBuf, serde_json::Value, SafetensorsWeights)> {
    [
        "llama",
        "qwen2",
        "mistral",
        "gemma2",
        "gemma3",
        "gemma3_mm",
        "phi3",
        "phi3_longrope",
    ]
    .iter()
    .map(|f| {
        let dir = fixtures().join("tiny").join(f);
        let path = dir.join("config.json");
        let json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        (path, json, SafetensorsWeights::open(&dir).unwrap())
    })
    .collect()
}

#[test]
fn fuzz_config_json() {
    let families = families();
    kit::run("config_json", |u| {
        let (path, json, weights) = u.choose(&families)?;
        let mut json = json.clone();
        kit::mutate_json(u, &mut json)?;
        let mut text = serde_json::to_vec(&json).unwrap();
        if u.ratio(1, 5)? {
            kit::mutate_bytes(u, &mut text, &[])?;
        }
        let ((), peak) = kit::peak_during(|| {
            let Ok(text) = std::str::from_utf8(&text) else {
                return;
            };
            let Ok(hf) = kit::outcome(HfConfig::from_json_str(text, path)) else {
                return;
            };
            if let Ok(config) = hf.to_decoder_config(path) {
                let _ = build_causal_lm_as(&config, weights, &default_device(), Quantization::F32);
            }
        });
        // The weights were mapped before the case: the config alone must not size anything.
        assert!(peak <= kit::bound(512 << 10, 8), "{peak} bytes");
        Ok(())
    });
}

#[test]
fn fuzz_tokenizer_extras() {
    let dir = tempfile::tempdir().unwrap();
    let valid = serde_json::json!({
        "bos_token": "<s>",
        "eos_token": {"content": "</s>", "lstrip": false},
        "pad_token": null,
        "chat_template": [{"name": "default", "template": "{{ messages }}"}, {"name": "tool_use", "template": "T"}],
    });
    let path = dir.path().join("tokenizer_config.json");
    kit::run("tokenizer_extras", |u| {
        let mut json = valid.clone();
        kit::mutate_json(u, &mut json)?;
        let mut text = serde_json::to_vec(&json).unwrap();
        if u.ratio(1, 4)? {
            kit::mutate_bytes(u, &mut text, &[])?;
        }
        std::fs::write(&path, &text).unwrap();
        let (_, peak) =
            kit::peak_during(|| kit::outcome(kiln_models::tokenizer::load_extras(dir.path())));
        assert!(peak <= kit::bound(text.len(), 16), "{peak} bytes");
        Ok(())
    });
}

/// Issue #23: a config whose tensors are missing once allocated zeros of the config's size
/// before listing them. Here every MLP weight is missing and `intermediate_size` is 2^24: the
/// zeros would be 4 GiB per tensor; the error lists them before anything is allocated.
#[test]
fn missing_tensors_are_listed_before_anything_is_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = tiny_llama_in(dir.path());
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<_> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| !n.contains(".mlp."))
        .collect();
    std::fs::write(
        dir.path().join("model.safetensors"),
        safetensors::serialize(kept, None).unwrap(),
    )
    .unwrap();
    let path = dir.path().join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["intermediate_size"] = (1u64 << 24).into();
    let config = HfConfig::from_value(json, &path)
        .unwrap()
        .to_decoder_config(&path)
        .unwrap();
    let weights = SafetensorsWeights::open(dir.path()).unwrap();
    let (err, peak) = kit::peak_during(|| {
        build_causal_lm_as(&config, &weights, &default_device(), Quantization::F32).unwrap_err()
    });
    match err {
        kiln_models::ModelError::MissingWeights { keys, .. } => {
            assert_eq!(keys.len(), 6, "{keys:?}");
            assert!(keys.contains(&"model.layers.1.mlp.down_proj.weight".to_string()));
        }
        other => panic!("{other}"),
    }
    assert!(peak < 1 << 20, "{peak} bytes allocated before the error");
}
