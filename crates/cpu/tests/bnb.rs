//! kiln's bitsandbytes quantizers against bitsandbytes 0.50 itself: codes and statistics byte
//! for byte, dequantized weights bit for bit, products through `QMatrix::matmul_t` against the
//! dense product of bitsandbytes' dequantized matrix. The fixture is written by
//! `tools/fixtures/bnb_quant.py`.
#![allow(clippy::unwrap_used)]

use kiln_cpu::quant::bnb::{self, FourBit, QuantizeOnLoad, Stats};
use kiln_cpu::{CpuError, Precision, QMatrix};
use safetensors::{Dtype, SafeTensors};

fn fixture() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/bnb/quant.safetensors"
    );
    std::fs::read(path).unwrap()
}

/// A tensor's raw bytes and shape, asserting its type.
fn raw<'a>(st: &'a SafeTensors, name: &str, dtype: Dtype) -> (&'a [u8], Vec<usize>) {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), dtype, "{name}");
    (t.data(), t.shape().to_vec())
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    let (b, _) = raw(st, name, Dtype::F32);
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// An input matrix (f32, or bf16 widened) and its shape.
fn input(st: &SafeTensors, name: &str) -> (Vec<f32>, usize, usize) {
    if let Ok(t) = st.tensor(&format!("{name}.input")) {
        let s = t.shape();
        return (f32s(st, &format!("{name}.input")), s[0], s[1]);
    }
    let (b, s) = raw(st, &format!("{name}.input_bf16"), Dtype::BF16);
    let x = b
        .chunks_exact(2)
        .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
        .collect();
    (x, s[0], s[1])
}

/// Asserts byte equality, reporting the first difference.
fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!(
            "{what}: first difference at byte {i}: {} vs bitsandbytes {}",
            got[i], want[i]
        );
    }
}

/// Asserts bit equality, reporting the first difference.
fn assert_bits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!(
            "{what}: first difference at {i}: {} vs bitsandbytes {}",
            got[i], want[i]
        );
    }
}

const MATRICES: [&str; 4] = ["normal", "tail", "outliers", "large"];

fn check_4bit(st: &SafeTensors, name: &str, kind: FourBit, tag: &str) -> QMatrix {
    let (x, rows, cols) = input(st, name);
    let m = bnb::quantize_4bit(&x, rows, cols, kind).unwrap();
    let p = format!("{name}.{tag}");
    let (codes, _) = raw(st, &format!("{p}.codes"), Dtype::U8);
    assert_bytes(m.data(), codes, &format!("{p}: packed codes"));
    let Some(Stats::Blockwise4 {
        levels,
        qabsmax,
        code2,
        absmax2,
        offset,
        ..
    }) = m.stats()
    else {
        panic!("{p}: no blockwise statistics");
    };
    assert_bits(
        &[*offset],
        &f32s(st, &format!("{p}.offset")),
        &format!("{p}.offset"),
    );
    let (want_q, _) = raw(st, &format!("{p}.qabsmax"), Dtype::U8);
    assert_bytes(qabsmax, want_q, &format!("{p}: absmax codes"));
    assert_bits(
        absmax2,
        &f32s(st, &format!("{p}.absmax2")),
        &format!("{p}.absmax2"),
    );
    assert_bits(
        &code2[..],
        &f32s(st, &format!("{p}.code2")),
        &format!("{p}.code2"),
    );
    assert_bits(
        levels,
        &f32s(st, &format!("{p}.levels")),
        &format!("{p}.levels"),
    );
    if st.tensor(&format!("{p}.dequant")).is_ok() {
        let want = f32s(st, &format!("{p}.dequant"));
        assert_bits(&m.to_f32(), &want, &format!("{p}.dequant"));
    }
    m
}

#[test]
fn nf4_codes_statistics_and_dequantization_are_bitsandbytes_bytes() {
    let buf = fixture();
    let st = SafeTensors::deserialize(&buf).unwrap();
    for name in MATRICES {
        check_4bit(&st, name, FourBit::Nf4, "nf4");
    }
}

#[test]
fn fp4_codes_statistics_and_dequantization_are_bitsandbytes_bytes() {
    let buf = fixture();
    let st = SafeTensors::deserialize(&buf).unwrap();
    for name in MATRICES {
        check_4bit(&st, name, FourBit::Fp4, "fp4");
    }
}

#[test]
fn int8_codes_scales_and_dequantization_are_bitsandbytes_bytes() {
    let buf = fixture();
    let st = SafeTensors::deserialize(&buf).unwrap();
    for name in MATRICES {
        let (x, rows, cols) = input(&st, name);
        // The fixture is `int8_vectorwise_quant` of the f32 values; `QuantizeOnLoad::Int8`
        // rounds to f16 first, as `Int8Params` does (checked by the model-level fixture).
        let m = bnb::quantize_int8(&x, rows, cols).unwrap();
        let (cb, _) = raw(&st, &format!("{name}.int8.cb"), Dtype::I8);
        assert_bytes(m.data(), cb, &format!("{name}: CB"));
        let Some(Stats::Rows { scales }) = m.stats() else {
            panic!("{name}: no row scales");
        };
        assert_bits(
            scales,
            &f32s(&st, &format!("{name}.int8.scb")),
            &format!("{name}: SCB"),
        );
        if st.tensor(&format!("{name}.int8.dequant")).is_ok() {
            let want = f32s(&st, &format!("{name}.int8.dequant"));
            assert_bits(&m.to_f32(), &want, &format!("{name}.int8.dequant"));
        }
    }
}

#[test]
fn products_equal_the_dense_product_of_the_bitsandbytes_dequantized_matrix() {
    let buf = fixture();
    let st = SafeTensors::deserialize(&buf).unwrap();
    for (name, q) in [
        ("normal", "nf4"),
        ("tail", "fp4"),
        ("outliers", "int8"),
        ("large", "nf4"),
    ] {
        let (x, rows, cols) = input(&st, name);
        let m = match q {
            "int8" => bnb::quantize_int8(&x, rows, cols).unwrap(),
            q => q
                .parse::<QuantizeOnLoad>()
                .unwrap()
                .quantize(&x, rows, cols)
                .unwrap(),
        };
        let w = f32s(&st, &format!("{name}.{q}.dequant"));
        let batch = 3;
        let a: Vec<f32> = (0..batch * cols)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0)
            .collect();
        let mut y = vec![0f32; batch * rows];
        m.matmul_t(&a, batch, &mut y, false, Precision::F32);
        for i in 0..batch {
            for r in 0..rows {
                let dense: f64 = (0..cols)
                    .map(|k| a[i * cols + k] as f64 * w[r * cols + k] as f64)
                    .sum();
                let got = y[i * rows + r] as f64;
                let tol = 1e-5
                    * (0..cols)
                        .map(|k| (a[i * cols + k] * w[r * cols + k]).abs() as f64)
                        .sum::<f64>();
                assert!(
                    (got - dense).abs() <= tol + 1e-12,
                    "{name} {q} [{i}, {r}]: {got} vs {dense}"
                );
            }
        }
    }
}

#[test]
fn non_finite_weights_are_typed_errors_naming_the_position() {
    let mut x = vec![0.5f32; 2 * 70];
    x[75] = f32::NAN;
    for kind in ["nf4", "fp4", "int8"] {
        let err = kind
            .parse::<QuantizeOnLoad>()
            .unwrap()
            .quantize(&x, 2, 70)
            .unwrap_err();
        match err {
            CpuError::Quantize { what, reason } => {
                assert!(what.contains("[1, 5]"), "{kind}: {what}");
                assert!(reason.contains("NaN"), "{kind}: {reason}");
            }
            e => panic!("{kind}: {e}"),
        }
    }
    x[75] = f32::INFINITY;
    assert!(matches!(
        bnb::quantize_4bit(&x, 2, 70, FourBit::Nf4),
        Err(CpuError::Quantize { .. })
    ));
    assert!(matches!(
        bnb::quantize_4bit(&x, 3, 70, FourBit::Nf4),
        Err(CpuError::Layout(_))
    ));
}

/// `tools/fixtures/bnb_quant.py`'s `synthetic()`: exact in f32 on both sides.
fn synthetic(rows: usize, cols: usize) -> Vec<f32> {
    (0..(rows * cols) as u64)
        .map(|i| {
            let h = i.wrapping_mul(2_654_435_761) % (1 << 32);
            ((h >> 8) as f32 * 2f32.powi(-24) - 0.5) * 0.0625
        })
        .collect()
}

#[test]
fn the_offset_of_a_large_matrix_is_torch_means_cascade() {
    let buf = fixture();
    let st = SafeTensors::deserialize(&buf).unwrap();
    let (rows, cols) = (1024, 2560);
    let x = synthetic(rows, cols);
    for (kind, tag) in [(FourBit::Nf4, "nf4"), (FourBit::Fp4, "fp4")] {
        let m = bnb::quantize_4bit(&x, rows, cols, kind).unwrap();
        let Some(Stats::Blockwise4 {
            qabsmax,
            absmax2,
            offset,
            ..
        }) = m.stats()
        else {
            panic!("no blockwise statistics");
        };
        let p = format!("synthetic.{tag}");
        assert_bits(
            &[*offset],
            &f32s(&st, &format!("{p}.offset")),
            &format!("{p}.offset"),
        );
        assert_bits(
            absmax2,
            &f32s(&st, &format!("{p}.absmax2")),
            &format!("{p}.absmax2"),
        );
        let (head, _) = raw(&st, &format!("{p}.qabsmax_head"), Dtype::U8);
        assert_bytes(&qabsmax[..head.len()], head, &format!("{p}.qabsmax"));
    }
}
