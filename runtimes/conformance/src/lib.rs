//! The runtime conformance suite, written once and run against every runtime (onnx, torch, candle), as
//! object_store runs one integration suite over every store. Each runtime's `tests/conformance.rs` loads its
//! own models and calls these checks; what is format-specific (which model, which inputs) stays there.
//!
//! The checks panic with a message naming what broke: they are test helpers, not library code.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ferroserve_runtime::{DataType, ModelSignature, Runtime, RuntimeError, Tensor};

/// The runtime's signature is the expected one: names, datatypes and dims, in order.
pub fn signature_is(runtime: &dyn Runtime, expected: &ModelSignature) {
    assert_eq!(runtime.signature(), expected, "signature");
}

/// Every output has the datatype and rank the signature declares, and the batch size of the inputs.
pub fn outputs_fit_the_signature(runtime: &mut dyn Runtime, inputs: Vec<Tensor>) -> Vec<Tensor> {
    let rows = inputs.first().map(|t| t.shape().first().copied().unwrap_or(0)).unwrap_or(0);
    let outputs = runtime.infer(inputs).expect("valid inputs run");
    let signature = runtime.signature().clone();
    assert_eq!(outputs.len(), signature.outputs.len(), "one output per declared output");
    for (out, spec) in outputs.iter().zip(&signature.outputs) {
        assert_eq!(out.datatype(), spec.datatype, "output `{}` datatype", spec.name);
        assert_eq!(out.shape().len(), spec.dims.len(), "output `{}` rank", spec.name);
        if spec.dims.first() == Some(&-1) {
            assert_eq!(out.shape()[0], rows, "output `{}` keeps the batch size", spec.name);
        }
        for (got, &want) in out.shape().iter().zip(&spec.dims) {
            assert!(
                want == -1 || *got as i64 == want,
                "output `{}` shape {:?} vs {:?}",
                spec.name,
                out.shape(),
                spec.dims
            );
        }
    }
    outputs
}

/// Each row run alone gives the same outputs as inside a batch of all of them (within `tolerance`, relative
/// to max(|value|, 1)). `rows` are single-row input sets (dim 0 = 1).
pub fn batch_matches_single_rows(runtime: &mut dyn Runtime, rows: &[Vec<Tensor>], tolerance: f64) {
    let arity = rows[0].len();
    let batch: Vec<Tensor> = (0..arity)
        .map(|i| Tensor::concat(&rows.iter().map(|r| r[i].clone()).collect::<Vec<_>>()).expect("rows concatenate"))
        .collect();
    let batched = runtime.infer(batch).expect("the batch runs");
    let sizes = vec![1; rows.len()];
    let split: Vec<Vec<Tensor>> = batched.iter().map(|t| t.split_rows(&sizes).expect("outputs split")).collect();
    for (r, row) in rows.iter().enumerate() {
        let alone = runtime.infer(row.clone()).expect("a single row runs");
        for (o, single) in alone.iter().enumerate() {
            assert_close(single, &split[o][r], tolerance, &format!("row {r}, output {o}"));
        }
    }
}

/// Inputs the runtime must refuse as the client's mistake (`InvalidInput`), after which it still serves
/// `good` inputs: a bad request fails only itself.
pub fn refuses_then_serves(runtime: &mut dyn Runtime, bad: Vec<Tensor>, good: Vec<Tensor>) -> RuntimeError {
    let error = runtime.infer(bad).expect_err("bad inputs are refused");
    assert!(matches!(error, RuntimeError::InvalidInput(_)), "bad inputs are InvalidInput, got {error:?}");
    runtime.infer(good).expect("the instance still serves after a refused request");
    error
}

/// Two tensors are equal: same datatype and shape, values within `tolerance` (relative to max(|v|, 1)) for
/// floating types, exactly for the rest.
pub fn assert_close(got: &Tensor, want: &Tensor, tolerance: f64, what: &str) {
    assert_eq!(got.datatype(), want.datatype(), "{what}: datatype");
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    match got.datatype() {
        DataType::Fp32 | DataType::Fp16 | DataType::Bf16 | DataType::Fp64 => {
            let (a, b) = (values(got), values(want));
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                assert!((x - y).abs() <= tolerance * y.abs().max(1.0), "{what}: element {i}: {x} vs {y}");
            }
        }
        _ => assert_eq!(got.data(), want.data(), "{what}: values"),
    }
}

/// Floating values of any float datatype, widened to f64.
pub fn values(t: &Tensor) -> Vec<f64> {
    let bytes = t.as_fixed().expect("a fixed-size tensor");
    match t.datatype() {
        DataType::Fp32 => {
            bytes.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect()
        }
        DataType::Fp64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
        DataType::Fp16 => {
            bytes.chunks_exact(2).map(|c| f64::from(half_to_f32(u16::from_le_bytes([c[0], c[1]])))).collect()
        }
        DataType::Bf16 => bytes
            .chunks_exact(2)
            .map(|c| f64::from(f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16)))
            .collect(),
        other => panic!("{other:?} is not a floating type"),
    }
}

/// IEEE half to f32 (enough for test values; subnormals included).
fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((h >> 10) & 0x1f);
    let mantissa = f32::from(h & 0x3ff);
    match exponent {
        0 => sign * mantissa * 2f32.powi(-24),
        31 if mantissa == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        e => sign * (1.0 + mantissa / 1024.0) * 2f32.powi(e - 15),
    }
}
