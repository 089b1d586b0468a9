//! Runtime conformance checks on the ONNX backend with the committed example models: signature, dtype
//! round trips, outputs against the numpy references, and batch-vs-single invariance; and BYTES (NUL,
//! non-UTF-8, empty, 1 MiB) through a STRING Identity model in tests/models, unchanged.
//!
//! Needs `ORT_DYLIB_PATH` (scripts/test sets it from the `onnxruntime` wheel); without it these tests fail
//! with that message rather than pass vacuously.

use std::path::PathBuf;
use std::sync::OnceLock;

use bytes::Bytes;
use ferroserve_runtime::{DataType, Device, LoadSpec, Runtime, RuntimeLoader, Tensor, TensorData};
use ferroserve_runtime_conformance as suite;
use ferroserve_runtime_onnx::OnnxLoader;

fn loader() -> &'static OnnxLoader {
    static LOADER: OnceLock<OnnxLoader> = OnceLock::new();
    LOADER.get_or_init(|| {
        let path = std::env::var_os("ORT_DYLIB_PATH")
            .expect("ORT_DYLIB_PATH must point at libonnxruntime.so (run scripts/test, or export $(scripts/ort-lib))");
        OnnxLoader::new(&PathBuf::from(path)).expect("ONNX Runtime loads")
    })
}

fn model(name: &str, version: u32) -> Box<dyn Runtime> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../models/repository/{name}/{version}/model.onnx"));
    loader().load(&LoadSpec::new(path, Device::Cpu, 1)).expect("model loads")
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_f32_vec().expect("an FP32 tensor")
}

#[test]
fn reads_the_signature_with_variable_dims() {
    let mlp = model("mlp", 1);
    let sig = mlp.signature();
    assert_eq!(sig.inputs[0].name, "INPUT0");
    assert_eq!(sig.inputs[0].datatype, DataType::Fp32);
    assert_eq!(sig.inputs[0].dims, vec![-1, 16]);
    assert_eq!(sig.outputs[0].dims, vec![-1, 4]);
    let mixed = model("mixed", 1);
    let types: Vec<DataType> = mixed.signature().outputs.iter().map(|s| s.datatype).collect();
    assert_eq!(types, vec![DataType::Fp32, DataType::Int64, DataType::Bool, DataType::Fp16, DataType::Int32]);
    assert_eq!(model("strings", 1).signature().inputs[0].datatype, DataType::Bytes);
}

#[test]
fn batch_and_single_give_identical_rows() {
    let mut mlp = model("mlp", 1);
    let rows: Vec<Vec<f32>> = (0..5).map(|r| (0..16).map(|c| ((r * 16 + c) as f32).sin()).collect()).collect();
    let batch: Vec<f32> = rows.concat();
    let batched = mlp.infer(vec![Tensor::from_f32(vec![5, 16], &batch).unwrap()]).unwrap();
    assert_eq!(batched[0].shape(), &[5, 4]);
    let all = f32s(&batched[0]);
    for (r, row) in rows.iter().enumerate() {
        let single = mlp.infer(vec![Tensor::from_f32(vec![1, 16], row).unwrap()]).unwrap();
        let got = f32s(&single[0]);
        for (a, b) in got.iter().zip(&all[r * 4..r * 4 + 4]) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "row {r}: {a} vs {b}");
        }
    }
}

#[test]
fn dtypes_round_trip_through_the_mixed_model() {
    let mut mixed = model("mixed", 1);
    let a = Tensor::from_f32(vec![1, 4], &[1.5, -2.0, 0.0, 3.0]).unwrap();
    let b_values: [i64; 4] = [1, -2, 3, i64::from(i32::MAX)];
    let b = Tensor::from_le_bytes(
        DataType::Int64,
        vec![1, 4],
        b_values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
    let c_values = [half::f16::from_f32(2.0), half::f16::from_f32(-1.0)];
    let c = Tensor::from_le_bytes(
        DataType::Fp16,
        vec![1, 2],
        c_values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
    let out = mixed.infer(vec![a, b, c]).unwrap();
    assert_eq!(f32s(&out[0]), vec![2.5, -4.0, 3.0, 3.0 + i32::MAX as f32]);
    let doubled: Vec<i64> =
        out[1].as_fixed().unwrap().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(doubled, b_values.iter().map(|v| v * 2).collect::<Vec<_>>());
    assert_eq!(out[2].as_fixed().unwrap().as_ref(), &[1, 0, 0, 1]);
    let halves: Vec<f32> =
        out[3].as_fixed().unwrap().chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
    assert_eq!(halves, vec![1.0, -0.5]);
    assert_eq!(out[4].datatype(), DataType::Int32);
}

#[test]
fn strings_in_and_out() {
    let mut strings = model("strings", 1);
    let text =
        Tensor::new(DataType::Bytes, vec![2], TensorData::Strings(vec![Bytes::from_static(b"ab c"), Bytes::new()]))
            .unwrap();
    let out = strings.infer(vec![text]).unwrap();
    assert_eq!(out[0].as_strings().unwrap(), &[Bytes::from_static(b"AB C"), Bytes::new()]);
    // NUL is valid UTF-8: it reaches StringNormalizer and comes back in both outputs.
    let nul = Tensor::new(DataType::Bytes, vec![1], TensorData::Strings(vec![Bytes::from_static(b"he\0llo")])).unwrap();
    let out = strings.infer(vec![nul]).unwrap();
    assert_eq!(out[0].as_strings().unwrap(), &[Bytes::from_static(b"HE\0LLO")]);
    assert_eq!(out[1].as_strings().unwrap(), &[Bytes::from_static(b"he\0llo")]);
    // Non-UTF-8 reaches ONNX Runtime too, whose StringNormalizer refuses it: the input is blamed, alone or in a
    // batch, and the instance still serves.
    for items in [vec![Bytes::from_static(b"\xff")], vec![Bytes::from_static(b"ok"), Bytes::from_static(b"a\xc3(")]] {
        let bad = Tensor::new(DataType::Bytes, vec![items.len()], TensorData::Strings(items.clone())).unwrap();
        let error = strings.infer(vec![bad]).expect_err("StringNormalizer refuses non-UTF-8");
        let ferroserve_runtime::RuntimeError::InvalidInput(message) = error else { panic!("{error:?}") };
        let index = items.len() - 1;
        assert!(message.contains(&format!("`TEXT` element {index} is not UTF-8")), "{message}");
    }
    let text = Tensor::new(DataType::Bytes, vec![1], TensorData::Strings(vec![Bytes::from_static(b"x")])).unwrap();
    assert_eq!(strings.infer(vec![text]).unwrap()[0].as_strings().unwrap(), &[Bytes::from_static(b"X")]);
}

/// The STRING Identity model of tests/models (see make_bytes_identity.py there): IN [batch, n] -> OUT.
fn bytes_identity() -> Box<dyn Runtime> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/models/bytes_identity.onnx");
    loader().load(&LoadSpec::new(path, Device::Cpu, 1)).expect("model loads")
}

fn bytes_tensor(shape: Vec<usize>, items: Vec<Bytes>) -> Tensor {
    Tensor::new(DataType::Bytes, shape, TensorData::Strings(items)).expect("a BYTES tensor")
}

/// Elements ONNX Runtime's C-string entry points would mangle: inner and trailing NUL, non-UTF-8, empty, and
/// 1 MiB holding every byte value.
fn awkward_elements() -> Vec<Bytes> {
    let large: Vec<u8> = (0..1usize << 20).map(|i| (i.wrapping_mul(131) >> 3) as u8).collect();
    assert!(large.contains(&0) && large.contains(&0xff));
    vec![
        Bytes::from_static(b"he\0llo"),
        Bytes::from_static(b"\xff\xfe"),
        Bytes::new(),
        Bytes::from(large),
        Bytes::from_static(b"\0"),
        Bytes::from_static(b"caf\xc3\xa9\0"),
    ]
}

#[test]
fn bytes_round_trip_unchanged_batched() {
    let mut identity = bytes_identity();
    let items = awkward_elements();
    let out = identity.infer(vec![bytes_tensor(vec![2, 3], items.clone())]).expect("the batch runs");
    assert_eq!(out[0].datatype(), DataType::Bytes);
    assert_eq!(out[0].shape(), &[2, 3]);
    let got = out[0].as_strings().expect("BYTES out");
    assert_eq!(got.len(), items.len());
    for (i, (got, want)) in got.iter().zip(&items).enumerate() {
        assert!(got == want, "element {i}: {} bytes back for {} sent", got.len(), want.len());
    }
}

#[test]
fn bytes_round_trip_unchanged_single_and_in_batches() {
    let mut identity = bytes_identity();
    for (i, item) in awkward_elements().into_iter().enumerate() {
        let out = identity.infer(vec![bytes_tensor(vec![1, 1], vec![item.clone()])]).expect("a single row runs");
        assert_eq!(out[0].shape(), &[1, 1]);
        assert!(out[0].as_strings().unwrap() == [item], "element {i} alone");
    }
    let rows: Vec<Vec<Tensor>> =
        awkward_elements().chunks(2).map(|pair| vec![bytes_tensor(vec![1, 2], pair.to_vec())]).collect();
    suite::batch_matches_single_rows(identity.as_mut(), &rows, 0.0);
    let empty = identity.infer(vec![bytes_tensor(vec![0, 2], Vec::new())]).expect("an empty batch runs");
    assert_eq!(empty[0].shape(), &[0, 2]);
    assert_eq!(empty[0].as_strings().map(<[Bytes]>::len), Some(0));
}

#[test]
fn missing_file_and_library_fail_clearly() {
    let spec = LoadSpec::new("/nonexistent/model.onnx".into(), Device::Cpu, 1);
    let err = loader().load(&spec).err().expect("a load error").to_string();
    assert!(err.contains("/nonexistent/model.onnx"), "{err}");
    let err = OnnxLoader::new(std::path::Path::new("/nonexistent/libonnxruntime.so")).unwrap_err().to_string();
    assert!(err.contains("ONNX Runtime library not found"), "{err}");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature_is_refused() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/repository/mlp/1/model.onnx");
    let spec = LoadSpec::new(path, Device::Cuda(0), 1);
    assert!(matches!(loader().load(&spec), Err(ferroserve_runtime::RuntimeError::DeviceUnavailable(..))));
}

#[test]
fn shared_suite_batches_and_refusals() {
    let mut mlp = model("mlp", 1);
    let rows: Vec<Vec<Tensor>> =
        (0..4).map(|r| vec![Tensor::from_f32(vec![1, 16], &[r as f32 * 0.25; 16]).unwrap()]).collect();
    suite::outputs_fit_the_signature(mlp.as_mut(), vec![Tensor::from_f32(vec![2, 16], &[0.5; 32]).unwrap()]);
    suite::batch_matches_single_rows(mlp.as_mut(), &rows, 1e-5);
    let strings =
        Tensor::new(DataType::Bytes, vec![1, 16], TensorData::Strings(vec![Bytes::from_static(b"x"); 16])).unwrap();
    let good = vec![Tensor::from_f32(vec![1, 16], &[0.5; 16]).unwrap()];
    let _ = mlp.infer(vec![strings]).expect_err("a BYTES tensor where FP32 is expected is refused");
    mlp.infer(good).expect("the instance still serves");
}
