//! The TorchScript runtime against the shared conformance suite, with the committed TorchScript models
//! (models/torch/, made by models/generate_torch.py): the MLP against numpy from its committed weights, every
//! datatype both ways, batch-versus-single invariance, and refusals. Needs `LIBTORCH` at build time
//! (scripts/test sets it from the PyPI torch wheel); the test binary finds libtorch by rpath.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use ferroserve_runtime::{
    DataType, Device, LoadSpec, ModelSignature, Runtime, RuntimeError, RuntimeLoader, Tensor, TensorSpec,
};
use ferroserve_runtime_conformance as suite;
use ferroserve_runtime_torch::TorchLoader;

const DTYPES: [(&str, DataType); 10] = [
    ("FP32", DataType::Fp32),
    ("FP64", DataType::Fp64),
    ("FP16", DataType::Fp16),
    ("BF16", DataType::Bf16),
    ("INT8", DataType::Int8),
    ("INT16", DataType::Int16),
    ("INT32", DataType::Int32),
    ("INT64", DataType::Int64),
    ("UINT8", DataType::Uint8),
    ("BOOL", DataType::Bool),
];

fn path(model: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../models/torch/{model}/1/model.pt"))
}

fn spec(name: &str, datatype: DataType, width: i64) -> TensorSpec {
    TensorSpec { name: name.into(), datatype, dims: vec![-1, width] }
}

fn mlp_signature() -> ModelSignature {
    ModelSignature {
        inputs: vec![spec("INPUT__0", DataType::Fp32, 16)],
        outputs: vec![spec("OUTPUT__0", DataType::Fp32, 4)],
    }
}

fn load(model: &str, signature: ModelSignature) -> Result<Box<dyn Runtime>, RuntimeError> {
    let spec = LoadSpec { declared: signature, max_batch_size: 8, ..LoadSpec::new(path(model), Device::Cpu, 1) };
    TorchLoader::default().load(&spec)
}

/// The MLP's weights, from the numpy reference the ONNX example was built from (npz parsed by hand).
fn mlp_numpy(x: &[f32], rows: usize) -> Vec<f32> {
    let weights = npz(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/reference/mlp.npz"));
    let (w1, b1, w2, b2) = (&weights["w1"], &weights["b1"], &weights["w2"], &weights["b2"]);
    let mut out = Vec::with_capacity(rows * 4);
    for r in 0..rows {
        let hidden: Vec<f32> = (0..32)
            .map(|j| (0..16).map(|i| x[r * 16 + i] * w1[i * 32 + j]).sum::<f32>() + b1[j])
            .map(|v| v.max(0.0))
            .collect();
        out.extend((0..4).map(|k| (0..32).map(|j| hidden[j] * w2[j * 4 + k]).sum::<f32>() + b2[k]));
    }
    out
}

/// The float32 arrays of an uncompressed .npz (a zip of .npy files, stored).
fn npz(path: &PathBuf) -> std::collections::HashMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let mut arrays = std::collections::HashMap::new();
    let mut at = 0;
    while at + 30 <= bytes.len() && bytes[at..at + 4] == [0x50, 0x4b, 0x03, 0x04] {
        let u16_at = |i: usize| usize::from(u16::from_le_bytes([bytes[i], bytes[i + 1]]));
        let u32_at = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]) as usize;
        assert_eq!(u16_at(at + 8), 0, "stored, not deflated");
        let (mut size, name_len, extra_len) = (u32_at(at + 18), u16_at(at + 26), u16_at(at + 28));
        let name = String::from_utf8_lossy(&bytes[at + 30..at + 30 + name_len]).trim_end_matches(".npy").to_string();
        if size == 0xffff_ffff {
            // Zip64 (numpy writes it): the sizes are in the extra field with header id 1.
            let mut e = at + 30 + name_len;
            while e + 4 <= at + 30 + name_len + extra_len {
                let (id, len) = (u16_at(e), u16_at(e + 2));
                if id == 1 {
                    size = u32_at(e + 12);
                }
                e += 4 + len;
            }
        }
        let data = &bytes[at + 30 + name_len + extra_len..at + 30 + name_len + extra_len + size];
        let header_len = usize::from(u16::from_le_bytes([data[8], data[9]]));
        let header = String::from_utf8_lossy(&data[10..10 + header_len]);
        if header.contains("'<f4'") {
            let values = data[10 + header_len..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            arrays.insert(name, values.collect());
        }
        at += 30 + name_len + extra_len + size;
    }
    arrays
}

#[test]
fn the_config_is_the_signature() {
    let runtime = load("mlp_torch", mlp_signature()).unwrap();
    suite::signature_is(runtime.as_ref(), &mlp_signature());
    let missing = load("mlp_torch", ModelSignature::default());
    assert!(matches!(missing, Err(RuntimeError::Load { reason, .. }) if reason.contains("config.pbtxt")));
    let strings =
        ModelSignature { inputs: vec![spec("T", DataType::Bytes, 1)], outputs: vec![spec("O", DataType::Fp32, 4)] };
    assert!(matches!(load("mlp_torch", strings), Err(RuntimeError::Load { .. })), "BYTES is refused at load");
}

#[test]
fn mlp_matches_numpy_and_batches() {
    let mut runtime = load("mlp_torch", mlp_signature()).unwrap();
    let x: Vec<f32> = (0..3 * 16).map(|i| (i as f32 * 0.37).sin()).collect();
    let out = suite::outputs_fit_the_signature(runtime.as_mut(), vec![Tensor::from_f32(vec![3, 16], &x).unwrap()]);
    let want = Tensor::from_f32(vec![3, 4], &mlp_numpy(&x, 3)).unwrap();
    suite::assert_close(&out[0], &want, 1e-5, "mlp vs numpy");
    let rows: Vec<Vec<Tensor>> =
        (0..3).map(|r| vec![Tensor::from_f32(vec![1, 16], &x[r * 16..(r + 1) * 16]).unwrap()]).collect();
    suite::batch_matches_single_rows(runtime.as_mut(), &rows, 1e-6);
}

#[test]
fn every_datatype_travels_both_ways() {
    let signature = ModelSignature {
        inputs: DTYPES.iter().map(|(n, t)| spec(&format!("IN_{n}"), *t, 3)).collect(),
        outputs: DTYPES.iter().map(|(n, t)| spec(&format!("OUT_{n}"), *t, 3)).collect(),
    };
    let mut runtime = load("dtypes_torch", signature).unwrap();
    let input = |t: DataType| -> Tensor {
        let bytes: Vec<u8> = match t.size_of().unwrap() {
            1 if t == DataType::Bool => vec![1, 0, 1, 0, 0, 1],
            1 => vec![1, 2, 3, 4, 5, 6],
            2 if t == DataType::Fp16 => {
                [1.0f32, 2.0, -3.0, 0.5, 8.0, 10.0].iter().flat_map(|v| f32_to_half(*v).to_le_bytes()).collect()
            }
            2 if t == DataType::Bf16 => [1.0f32, 2.0, -3.0, 0.5, 8.0, 10.0]
                .iter()
                .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
                .collect(),
            2 => [1i16, 2, -3, 4, 5, 6].iter().flat_map(|v| v.to_le_bytes()).collect(),
            4 if t == DataType::Fp32 => {
                [1.0f32, 2.0, -3.0, 0.5, 8.0, 10.0].iter().flat_map(|v| v.to_le_bytes()).collect()
            }
            4 => [1i32, 2, -3, 4, 5, 6].iter().flat_map(|v| v.to_le_bytes()).collect(),
            _ if t == DataType::Fp64 => {
                [1.0f64, 2.0, -3.0, 0.5, 8.0, 10.0].iter().flat_map(|v| v.to_le_bytes()).collect()
            }
            _ => [1i64, 2, -3, 4, 5, 6].iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        Tensor::from_le_bytes(t, vec![2, 3], bytes).unwrap()
    };
    let inputs: Vec<Tensor> = DTYPES.iter().map(|(_, t)| input(*t)).collect();
    let outputs = suite::outputs_fit_the_signature(runtime.as_mut(), inputs.clone());
    for ((name, t), (out, inp)) in DTYPES.iter().zip(outputs.iter().zip(&inputs)) {
        if *t == DataType::Bool {
            let flipped: Vec<u8> = inp.as_fixed().unwrap().iter().map(|b| 1 - b).collect();
            assert_eq!(out.as_fixed().unwrap().as_ref(), flipped.as_slice(), "{name}");
        } else if matches!(t, DataType::Fp32 | DataType::Fp64 | DataType::Fp16 | DataType::Bf16) {
            let want: Vec<f64> = suite::values(inp).iter().map(|v| v * 2.0 + 1.0).collect();
            let got = suite::values(out);
            assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-2), "{name}: {got:?} vs {want:?}");
        } else {
            assert_ne!(out.as_fixed(), inp.as_fixed(), "{name} was transformed");
        }
    }
    let rows: Vec<Vec<Tensor>> =
        (0..2).map(|r| inputs.iter().map(|t| t.split_rows(&[1, 1]).unwrap()[r].clone()).collect()).collect();
    suite::batch_matches_single_rows(runtime.as_mut(), &rows, 0.0);
}

#[test]
fn bad_inputs_fail_only_their_request() {
    let mut runtime = load("mlp_torch", mlp_signature()).unwrap();
    let good = vec![Tensor::from_f32(vec![1, 16], &[0.5; 16]).unwrap()];
    let int64 = Tensor::from_le_bytes(DataType::Int64, vec![1, 16], vec![0u8; 128]).unwrap();
    // A dtype the module does not take fails inside libtorch: an execution error, and the instance goes on.
    let error = runtime.infer(vec![int64]).expect_err("an INT64 matmul with FP32 weights fails");
    assert!(matches!(error, RuntimeError::Execution(_)), "{error:?}");
    runtime.infer(good.clone()).unwrap();
    let strings =
        Tensor::new(DataType::Bytes, vec![1, 1], ferroserve_runtime::TensorData::Strings(vec!["x".into()])).unwrap();
    suite::refuses_then_serves(runtime.as_mut(), vec![strings], good);
}

#[test]
fn cuda_without_a_device_is_refused() {
    let spec = LoadSpec { declared: mlp_signature(), ..LoadSpec::new(path("mlp_torch"), Device::Cuda(0), 1) };
    assert!(matches!(TorchLoader::default().load(&spec), Err(RuntimeError::DeviceUnavailable(..))));
}

fn f32_to_half(v: f32) -> u16 {
    // Exact for the small test values used here (normal numbers, short mantissas).
    let bits = v.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exponent = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let mantissa = ((bits >> 13) & 0x3ff) as u16;
    if v == 0.0 { sign } else { sign | ((exponent as u16) << 10) | mantissa }
}
