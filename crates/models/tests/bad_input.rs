//! Bad checkpoints give typed errors naming the file and key, never a panic.
#![allow(clippy::unwrap_used)]
mod common;
use common::fixtures;
use kiln_models::{
    DecoderConfig, ModelError, Pretrained, SafetensorsWeights, build_causal_lm, default_device,
};
use std::path::Path;

fn copy_tiny(dst: &Path) {
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("tiny/llama").join(f), dst.join(f)).unwrap();
    }
}

fn load(dir: &Path) -> Result<kiln_models::CausalLm, ModelError> {
    let config = DecoderConfig::from_file(&dir.join("config.json"))?;
    build_causal_lm(&config, &SafetensorsWeights::open(dir)?, &default_device())
}

#[test]
fn missing_directory_names_the_path() {
    let err = Pretrained::load(Path::new("/no/such/model"), &default_device()).unwrap_err();
    assert!(matches!(err, ModelError::Io { .. }), "{err}");
    assert!(err.to_string().contains("/no/such/model"));
}

#[test]
fn weights_that_do_not_fit_the_config_name_the_tensor_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    copy_tiny(dir.path());
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    let config = config.replace("\"intermediate_size\": 128", "\"intermediate_size\": 96");
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    match load(dir.path()).unwrap_err() {
        ModelError::ShapeMismatch {
            key,
            expected,
            found,
            ..
        } => {
            assert_eq!(key, "model.layers.0.mlp.gate_proj.weight");
            assert_eq!(expected, vec![96, 64]);
            assert_eq!(found, vec![128, 64]);
        }
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn missing_and_unexpected_keys_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    copy_tiny(dir.path());
    // Two layers of weights for a one-layer config: layer 1's tensors are unexpected.
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1"),
    )
    .unwrap();
    match load(dir.path()).unwrap_err() {
        ModelError::UnexpectedWeights { keys, .. } => {
            assert!(
                keys.contains(&"model.layers.1.mlp.up_proj.weight".to_string()),
                "{keys:?}"
            );
        }
        other => panic!("unexpected error {other}"),
    }
    // Three layers: no tensor of layer 2 at all is blamed on the layer count, before building.
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"num_hidden_layers\": 1", "\"num_hidden_layers\": 3"),
    )
    .unwrap();
    match load(dir.path()).unwrap_err() {
        ModelError::Config { key, reason, .. } => {
            assert_eq!(key, "num_hidden_layers");
            assert!(
                reason.contains("declares 3 layers") && reason.contains("for 2"),
                "{reason}"
            );
        }
        other => panic!("unexpected error {other}"),
    }
    // Two layers, one tensor of layer 1 left out of the file: listed as missing.
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"num_hidden_layers\": 3", "\"num_hidden_layers\": 2"),
    )
    .unwrap();
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let gone = "model.layers.1.self_attn.q_proj.weight";
    let kept: Vec<_> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != gone)
        .collect();
    let out = safetensors::serialize(kept, None).unwrap();
    std::fs::write(&path, out).unwrap();
    match load(dir.path()).unwrap_err() {
        ModelError::MissingWeights { keys, .. } => assert_eq!(keys, vec![gone.to_string()]),
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn truncated_safetensors_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    copy_tiny(dir.path());
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = SafetensorsWeights::open(dir.path()).unwrap_err();
    assert!(matches!(err, ModelError::Safetensors { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

#[test]
fn absurd_header_size_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let mut bytes = u64::MAX.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&path, bytes).unwrap();
    assert!(matches!(
        SafetensorsWeights::open(&path).unwrap_err(),
        ModelError::Safetensors { .. }
    ));
    std::fs::write(&path, [1u8, 2, 3]).unwrap();
    assert!(matches!(
        SafetensorsWeights::open(&path).unwrap_err(),
        ModelError::Safetensors { .. }
    ));
}

#[test]
fn tokenizer_larger_than_the_embedding_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    copy_tiny(dir.path());
    // A 1,024-token tokenizer for a 512-row embedding.
    std::fs::copy(
        fixtures().join("chat_templates/tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let err = Pretrained::load(dir.path(), &default_device()).unwrap_err();
    assert!(matches!(err, ModelError::Tokenizer { .. }), "{err}");
    assert!(err.to_string().contains("512"), "{err}");
}

#[test]
fn out_of_vocabulary_ids_are_an_input_error() {
    let model = load(&fixtures().join("tiny/llama")).unwrap();
    let err = model
        .forward(&kiln_models::DecoderInput::single(&[1, 9999]))
        .unwrap_err();
    assert!(matches!(err, ModelError::Input(_)), "{err}");
}

/// Sets element 3 of tensor `name` in `dir/model.safetensors` to a NaN of the file's dtype.
fn poke_nan(dir: &Path, name: &str) {
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(name).unwrap();
    let width = view.dtype().bitsize() / 8;
    let at = view.data().as_ptr() as usize - bytes.as_ptr() as usize + 3 * width;
    let nan: &[u8] = match width {
        4 => &[0x00, 0x00, 0xc0, 0x7f],
        _ => &[0xc0, 0x7f], // bf16 NaN
    };
    bytes[at..at + width].copy_from_slice(nan);
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn nan_weights_are_refused_naming_the_tensor() {
    // f32 weights widened at load, and bf16 weights kept as stored.
    for (fixture, quantization) in [
        ("llama", kiln_models::Quantization::F32),
        ("llama_bf16", kiln_models::Quantization::Stored),
    ] {
        let dir = tempfile::tempdir().unwrap();
        for f in std::fs::read_dir(fixtures().join("tiny").join(fixture)).unwrap() {
            let f = f.unwrap();
            if f.path().is_file() {
                std::fs::copy(f.path(), dir.path().join(f.file_name())).unwrap();
            }
        }
        let name = "model.layers.1.mlp.down_proj.weight";
        poke_nan(dir.path(), name);
        let config = DecoderConfig::from_file(&dir.path().join("config.json")).unwrap();
        let weights = SafetensorsWeights::open(dir.path()).unwrap();
        let err =
            kiln_models::build_causal_lm_as(&config, &weights, &default_device(), quantization)
                .unwrap_err();
        assert!(
            matches!(&err, ModelError::NonFiniteWeight { tensor, .. } if tensor == name),
            "{fixture}: {err}"
        );
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
    }
}

/// `config.json` of the tiny llama with `edit` applied, parsed and resolved.
fn config_with(edit: impl FnOnce(&mut serde_json::Value)) -> Result<DecoderConfig, ModelError> {
    let path = fixtures().join("tiny/llama/config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    let hf = kiln_models::config::HfConfig::from_value(json, &path)?;
    hf.to_decoder_config(&path)
}

#[test]
fn config_type_errors_name_the_key() {
    let cases: [(&str, serde_json::Value, &str); 4] = [
        (
            "num_hidden_layers",
            (-2).into(),
            "invalid value: integer `-2`",
        ),
        ("hidden_size", "64".into(), "invalid type: string \"64\""),
        (
            "rms_norm_eps",
            serde_json::json!([1]),
            "invalid type: sequence",
        ),
        ("eos_token_id", serde_json::json!([1, -1]), ""),
    ];
    for (key, value, reason) in cases {
        let err = config_with(|j| j[key] = value.clone()).unwrap_err();
        match &err {
            ModelError::Config {
                key: k, reason: r, ..
            } => {
                assert!(k.starts_with(key), "{key}: {err}");
                assert!(r.contains(reason), "{key}: {err}");
            }
            other => panic!("{key}: {other}"),
        }
        assert!(err.to_string().contains("config.json"), "{err}");
    }
}

#[test]
fn absurd_sizes_are_refused_before_anything_is_sized_by_them() {
    // 10^9 layers once reached 15 GB building the per-layer attention table.
    for (key, value) in [
        ("num_hidden_layers", 1_000_000_000u64),
        ("vocab_size", 1 << 40),
        ("intermediate_size", 1 << 25),
        ("head_dim", 1 << 30),
        ("num_key_value_heads", 0),
    ] {
        let err = config_with(|j| j[key] = value.into()).unwrap_err();
        match err {
            ModelError::Config { key: k, .. } => assert_eq!(k, key, "{value}"),
            other => panic!("{key}: {other}"),
        }
    }
}

/// Rewrites the header of `dir/model.safetensors` through `edit` (the data section unchanged).
fn edit_header(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let text = serde_json::to_vec(&header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&path, out).unwrap();
}

type HeaderEdit = Box<dyn Fn(&mut serde_json::Value)>;

#[test]
fn safetensors_header_errors_name_the_tensor_and_file() {
    let name = "model.layers.1.mlp.up_proj.weight";
    let cases: [(&str, HeaderEdit); 4] = [
        (
            "unknown dtype `F33`",
            Box::new(move |h| h[name]["dtype"] = "F33".into()),
        ),
        (
            "shape [128, 65] of F32 needs 33280 bytes",
            Box::new(move |h| h[name]["shape"] = serde_json::json!([128, 65])),
        ),
        (
            "`data_offsets` must be [start, end]",
            Box::new(move |h| h[name]["data_offsets"] = serde_json::json!([5])),
        ),
        (
            "start at byte",
            Box::new(move |h| {
                let o = h[name]["data_offsets"].as_array().unwrap().clone();
                let (s, e) = (o[0].as_u64().unwrap(), o[1].as_u64().unwrap());
                h[name]["data_offsets"] = serde_json::json!([s + 4, e + 4]);
            }),
        ),
    ];
    for (want, edit) in cases {
        let dir = tempfile::tempdir().unwrap();
        copy_tiny(dir.path());
        edit_header(dir.path(), edit);
        let err = SafetensorsWeights::open(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("`{name}`")), "{want}: {err}");
        assert!(err.contains(want), "{want}: {err}");
        assert!(err.contains("model.safetensors"), "{err}");
    }
}

/// `fixtures/gguf/tiny_phi3.gguf` with the integer metadata `key` set to `value` (its type
/// becomes INT32), written to a temporary `.gguf` file.
fn phi3_gguf_with(key: &str, value: i32) -> tempfile::NamedTempFile {
    let mut bytes = std::fs::read(fixtures().join("gguf/tiny_phi3.gguf")).unwrap();
    let mut needle = (key.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(key.as_bytes());
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{key} not in the fixture"))
        + needle.len();
    let ty = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    assert!(matches!(ty, 4 | 5), "{key} is a 32-bit integer");
    bytes[at..at + 4].copy_from_slice(&5u32.to_le_bytes());
    bytes[at + 4..at + 8].copy_from_slice(&value.to_le_bytes());
    let f = tempfile::Builder::new().suffix(".gguf").tempfile().unwrap();
    std::fs::write(f.path(), bytes).unwrap();
    f
}

#[test]
fn gguf_config_errors_blame_the_gguf_key() {
    let cases = [
        ("phi3.attention.head_count", 0, "must be positive"),
        ("phi3.attention.head_count_kv", 0, "must divide"),
        ("phi3.block_count", -2, "invalid value: integer `-2`"),
        ("phi3.block_count", 2_000_000, "larger than kiln accepts"),
        (
            "phi3.feed_forward_length",
            1 << 30,
            "larger than kiln accepts",
        ),
    ];
    for (key, value, reason) in cases {
        let f = phi3_gguf_with(key, value);
        let err = Pretrained::load(f.path(), &default_device()).unwrap_err();
        match &err {
            ModelError::GgufKey {
                key: k, reason: r, ..
            } => {
                assert_eq!(k, key, "{err}");
                assert!(r.contains(reason), "{key} = {value}: {err}");
            }
            other => panic!("{key} = {value}: {other}"),
        }
    }
}
