//! ferroserve's benchmarking: shared helpers for the criterion benches (request bodies, example model
//! paths) and [`harness`], the load generator behind the `ferroserve-bench` binary.

pub mod harness;

use std::path::PathBuf;

/// The repository root (two levels above this crate's manifest).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The MLP example model file.
pub fn mlp_model() -> PathBuf {
    repo_root().join("models/repository/mlp/1/model.onnx")
}

/// The ONNX Runtime library from `ORT_DYLIB_PATH` (set it with `scripts/ort-lib`).
pub fn ort_dylib() -> anyhow::Result<PathBuf> {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("set ORT_DYLIB_PATH=$(scripts/ort-lib) to run ONNX Runtime benches"))
}

/// A v2 JSON request body carrying `elements` FP32 values in one input.
pub fn json_request(elements: usize) -> Vec<u8> {
    let data: Vec<f32> = (0..elements).map(|i| (i % 1000) as f32 * 0.001).collect();
    serde_json::to_vec(&serde_json::json!({
        "inputs": [{"name": "x", "shape": [elements], "datatype": "FP32", "data": data}]
    }))
    .unwrap_or_default()
}

/// A v2 JSON request body carrying `elements` FP32 values in one input, its keys in the order tritonclient and
/// perf_analyzer write them (`name`, `shape`, `datatype`, then `data`), where `json_request`'s are sorted (`data`
/// first, as `serde_json::json!`, Go maps and `json.dumps(sort_keys=True)` write them).
pub fn json_request_client_order(elements: usize) -> Vec<u8> {
    let data: Vec<String> = (0..elements).map(|i| ((i % 1000) as f32 * 0.001).to_string()).collect();
    format!(r#"{{"inputs":[{{"name":"x","shape":[{elements}],"datatype":"FP32","data":[{}]}}]}}"#, data.join(","))
        .into_bytes()
}

/// A v2 binary-extension request: (JSON header, full body) for `elements` FP32 values.
pub fn binary_request(elements: usize) -> (usize, Vec<u8>) {
    let header = serde_json::to_vec(&serde_json::json!({
        "inputs": [{"name": "x", "shape": [elements], "datatype": "FP32",
                    "parameters": {"binary_data_size": elements * 4}}]
    }))
    .unwrap_or_default();
    let mut body = header.clone();
    for i in 0..elements {
        body.extend_from_slice(&((i % 1000) as f32 * 0.001).to_le_bytes());
    }
    (header.len(), body)
}
