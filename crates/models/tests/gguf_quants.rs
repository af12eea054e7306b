//! GGUF reader and dequantisation against gguf-py: `fixtures/gguf/quants.gguf` was written by
//! gguf-py's GGUFWriter and `quants.safetensors` holds `gguf.quants.dequantize` of each tensor
//! (`tools/fixtures/gguf_quants.py`).
#![allow(clippy::unwrap_used)]
use kiln_models::ModelError;
use kiln_models::gguf::{GgmlType, GgufFile, GgufValue};
use safetensors::SafeTensors;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/gguf");

fn open() -> GgufFile {
    GgufFile::open(format!("{DIR}/quants.gguf")).expect("fixture opens")
}

#[test]
fn every_supported_type_dequantises_bit_exactly_like_gguf_py() {
    let file = open();
    let bytes = std::fs::read(format!("{DIR}/quants.safetensors")).expect("expected values");
    let expected = SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut seen = Vec::new();
    for (name, view) in expected.tensors() {
        let info = file
            .tensor(&name)
            .unwrap_or_else(|| panic!("tensor {name}"));
        assert_eq!(info.shape(), view.shape(), "{name}: PyTorch-order shape");
        let want: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let got = file.dequantize(&name).expect("dequantises");
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{name}[{i}]: {g} != {w}");
        }
        seen.push(info.ggml_type);
    }
    use GgmlType::*;
    for ty in [
        F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K,
    ] {
        assert!(seen.contains(&ty), "fixture covers {ty}");
    }
}

#[test]
fn header_metadata_and_layout_match_the_writer() {
    let file = open();
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.data_offset() % 64, 0);
    assert_eq!(file.architecture().expect("arch"), "llama");
    assert_eq!(file.get("test.u8"), Some(&GgufValue::U8(200)));
    assert_eq!(file.get("test.i8"), Some(&GgufValue::I8(-100)));
    assert_eq!(file.get("test.u16"), Some(&GgufValue::U16(60000)));
    assert_eq!(file.get("test.i16"), Some(&GgufValue::I16(-30000)));
    assert_eq!(file.get_u32("test.u32").expect("u32"), Some(4_000_000_000));
    assert_eq!(
        file.get_as::<i32>("test.i32").expect("i32"),
        Some(-2_000_000_000)
    );
    assert_eq!(file.get_f32("test.f32").expect("f32"), Some(1e-5));
    assert_eq!(file.get_bool("test.bool").expect("bool"), Some(true));
    assert_eq!(
        file.get_str("test.string").expect("str"),
        Some("héllo wörld")
    );
    assert_eq!(
        file.get_as::<u64>("test.u64").expect("u64"),
        Some((1 << 40) + 3)
    );
    assert_eq!(
        file.get_as::<i64>("test.i64").expect("i64"),
        Some(-(1 << 40))
    );
    assert_eq!(file.get_as::<f64>("test.f64").expect("f64"), Some(0.1));
    assert_eq!(
        file.get_str_array("test.strings").expect("strings"),
        Some(vec!["a", "", "日本", "Ġthe"])
    );
    assert_eq!(
        file.get_as::<Vec<i32>>("test.i32s").expect("i32s"),
        Some(vec![1, -2, 3])
    );
    assert_eq!(file.get_u32("absent").expect("absent is Ok(None)"), None);

    let t = file.tensor("f16_3d").expect("3-D tensor");
    assert_eq!(
        t.ggml_dims,
        vec![4, 3, 2],
        "GGUF lists dims innermost first"
    );
    assert_eq!(t.shape(), vec![2, 3, 4]);
    assert_eq!(file.tensor("q4_k").map(|t| t.shape()), Some(vec![2, 512]));
    assert_eq!(file.tensors().len(), 12);
    for t in file.tensors() {
        assert_eq!((t.file_offset - file.data_offset()) % 64, 0, "{}", t.name);
    }
}

#[test]
fn typed_getters_name_the_key_on_a_type_mismatch() {
    let file = open();
    let err = file.get_u32("test.string").expect_err("string is not u32");
    assert!(
        matches!(&err, ModelError::GgufKey { key, .. } if key == "test.string"),
        "{err}"
    );
    assert!(err.to_string().contains("quants.gguf"), "{err}");
    let err = file.get_u32("test.i8").expect_err("-100 is not u32");
    assert!(err.to_string().contains("test.i8"), "{err}");
    let err = file
        .get_str_array("test.i32s")
        .expect_err("ints are not strings");
    assert!(err.to_string().contains("test.i32s"), "{err}");
    let err = file
        .require::<u32>("llama.block_count")
        .expect_err("missing");
    assert!(err.to_string().contains("llama.block_count") && err.to_string().contains("missing"));
}

#[test]
fn unsupported_types_and_missing_tensors_are_typed_errors() {
    let file = open();
    match file.dequantize("q2_k") {
        Err(ModelError::UnsupportedGgufType {
            tensor, ggml_type, ..
        }) => {
            assert_eq!(tensor, "q2_k");
            assert_eq!(ggml_type, "Q2_K");
        }
        other => panic!("expected UnsupportedGgufType, got {other:?}"),
    }
    assert!(matches!(
        file.dequantize("nope"),
        Err(ModelError::MissingWeights { .. })
    ));
}
