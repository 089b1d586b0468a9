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

/// The name of the shared-memory region the targets have registered (64 bytes, in a file of a temporary
/// directory), so inputs that name it reach the reads and writes of the shared-memory paths.
pub const REGION: &str = "fuzz";

/// Size of [`REGION`] in bytes.
pub const REGION_BYTES: u64 = 64;

/// The registry the targets decode against: [`REGION`] registered over a 64-byte file in one temporary
/// directory shared by every fuzzing and test process (what they write there is never read as a result).
fn shared_memory() -> &'static SharedMemory {
    static SHM: std::sync::OnceLock<SharedMemory> = std::sync::OnceLock::new();
    SHM.get_or_init(|| {
        let dir = std::env::temp_dir().join("ferroserve-fuzz-shm");
        let registry = SharedMemory::new(&dir).with_max_tensor_bytes(1 << 20);
        let made = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join("obj"), [7u8; 64]));
        let spec =
            ferroserve::shm::RegionSpec { name: REGION.into(), key: "/obj".into(), offset: 0, byte_size: REGION_BYTES };
        // Without the file the targets still run, with every region lookup refused.
        if made.is_ok() {
            let _ = registry.register(spec);
        }
        registry
    })
}

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

/// A v2 REST inference body with the binary tensor data extension, whose tensors may name [`REGION`]. The
/// response is encoded as the request asked (outputs written into the region too), as JSON and in binary. The
/// first byte says whether the request
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
    if let Ok((request, format)) = http::decode_request("m", None, &json, binary, shared_memory()) {
        let response = echo(request);
        // Both response forms: JSON (where BYTES must be UTF-8 and floats finite, or the encoder says why)
        // and the binary extension.
        let _ = http::encode_response(&response, &format);
        let _ = http::encode_response(&response, &http::ResponseFormat::default());
        let _ = http::encode_response(&response, &http::ResponseFormat::all_binary());
    }
}

/// A gRPC `ModelInferRequest` in protobuf wire format (typed contents, raw contents or shared-memory
/// parameters, naming [`REGION`] or regions that do not exist).
pub fn grpc_infer(data: &[u8]) {
    let Ok(request) = ferroserve_proto::ModelInferRequest::decode(data) else { return };
    if let Ok((request, slots)) = grpc::decode_request(request, shared_memory())
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The registered region is really there: the shared-memory seeds reach reads and writes, not only the
    /// refusal of an unknown region.
    #[test]
    fn seeds_naming_the_region_read_from_it() {
        let json = br#"{"inputs":[{"name":"x","datatype":"UINT8","shape":[3],
            "parameters":{"shared_memory_region":"fuzz","shared_memory_byte_size":3,"shared_memory_offset":60}}],
            "outputs":[{"name":"x","parameters":{"shared_memory_region":"fuzz","shared_memory_byte_size":4}}]}"#;
        let (request, format) = http::decode_request("m", None, json, Bytes::new(), shared_memory()).unwrap();
        assert_eq!(ferroserve::raw::tensor_to_raw(&request.inputs[0].tensor), Bytes::from_static(&[7, 7, 7]));
        assert_eq!(format.shm_outputs().len(), 1);
        http::encode_response(&echo(request), &format).unwrap();
    }
}
