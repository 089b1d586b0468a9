//! Fuzz targets for the parsers that read what clients and model repositories send. Each target takes
//! arbitrary bytes and must return, whatever they are: a parser may refuse its input with an error, but it
//! may not panic, abort, overflow its stack or run without end.
//!
//! The targets are shared by two drivers:
//! - `fuzz/afl`: one AFL++ binary per target (cargo-afl, stable Rust), run for a bounded time by
//!   `scripts/fuzz`, starting from the corpus kept in `fuzz/corpus/<target>/`;
//! - `tests/corpus.rs`: replays that corpus and every input that once failed (`fuzz/regressions/<target>/`)
//!   in `cargo test`, so a crash found once stays fixed without the fuzzer.
//!
//! Where a parser accepts its input, the target also encodes what it decoded, so the encoders meet every
//! tensor a client can make (BYTES that are not UTF-8, non-finite floats, empty and zero-sized shapes).

use bytes::Bytes;
use ferroserve::grpc::codec as grpc;
use ferroserve::http::codec as http;
use ferroserve::shm::SharedMemory;
use ferroserve_engine::{InferOutput, InferRequest, InferResponse};
use ferroserve_runtime::DataType;
use prost::Message;

/// A fuzz target: the name of its corpus directory and its entry point.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by the name of its corpus directory and AFL++ binary.
pub const TARGETS: &[Target] = &[
    ("http_infer", http_infer),
    ("grpc_infer", grpc_infer),
    ("raw_tensor", raw_tensor),
    ("pbtxt_config", pbtxt_config),
    ("load_config", load_config),
];

/// A v2 REST inference body with the binary tensor data extension. The first byte says whether the request
/// carries `Inference-Header-Content-Length` and, if so, the next two bytes (little-endian) give its value;
/// the rest is the body.
pub fn http_infer(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let (header_length, body) = match (mode & 1, rest) {
        (1, [lo, hi, body @ ..]) => (Some(u16::from_le_bytes([*lo, *hi]).to_string()), body),
        _ => (None, rest),
    };
    let Ok((json, binary)) = http::split_body(header_length.as_deref(), Bytes::copy_from_slice(body)) else {
        return;
    };
    let shm = SharedMemory::default();
    if let Ok((request, _)) = http::decode_request("m", None, &json, binary, &shm) {
        let response = echo(request);
        // Both response forms: JSON (where BYTES must be UTF-8 and floats finite, or the encoder says why)
        // and the binary extension.
        let _ = http::encode_response(&response, &http::ResponseFormat::default());
        let _ = http::encode_response(&response, &http::ResponseFormat::all_binary());
    }
}

/// A gRPC `ModelInferRequest` in protobuf wire format (typed contents, raw contents or shared-memory
/// parameters, which name no registered region here).
pub fn grpc_infer(data: &[u8]) {
    let Ok(request) = ferroserve_proto::ModelInferRequest::decode(data) else { return };
    if let Ok((request, slots)) = grpc::decode_request(request, &SharedMemory::default())
        && let Ok(response) = grpc::encode_response(echo(request), &slots)
    {
        let _ = response.encode_to_vec();
    }
}

/// The raw tensor layout shared by the binary extension and gRPC's raw contents: the first byte picks the
/// datatype, the next byte the rank (0 to 4), then one byte per dimension; the rest is the tensor's bytes.
pub fn raw_tensor(data: &[u8]) {
    let [kind, rank, rest @ ..] = data else { return };
    let datatype = DataType::ALL[usize::from(*kind) % DataType::ALL.len()];
    let rank = usize::from(*rank % 5).min(rest.len());
    let (dims, bytes) = rest.split_at(rank);
    let shape = dims.iter().map(|&d| usize::from(d)).collect();
    if let Ok(tensor) = ferroserve::raw::tensor_from_raw("x", datatype, shape, Bytes::copy_from_slice(bytes)) {
        // What was read is written back unchanged.
        assert_eq!(ferroserve::raw::tensor_to_raw(&tensor), Bytes::copy_from_slice(bytes), "raw round trip");
    }
}

/// A `config.pbtxt`, as text when it is UTF-8 (a repository file that is not is refused before parsing).
pub fn pbtxt_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ferroserve_engine::pbtxt::parse(text);
        if let Ok(config) = ferroserve_engine::config::ModelConfig::from_pbtxt(text) {
            let _ = config.report("m");
        }
    }
}

/// The body of a repository load request (HTTP), whose `parameters.config` is a model configuration in
/// Triton's JSON form.
pub fn load_config(data: &[u8]) {
    if let Ok(Some((config, _))) = ferroserve::load_parameters::from_http_body(data) {
        let _ = config.report("m");
    }
}

/// A response that returns the request's inputs as its outputs.
fn echo(request: InferRequest) -> InferResponse {
    let outputs = request.inputs.into_iter().map(|i| InferOutput { name: i.name, tensor: i.tensor }).collect();
    InferResponse { model_name: request.model_name, model_version: "1".into(), id: request.id, outputs }
}
