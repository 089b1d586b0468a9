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

/// The name of the shared-memory region the targets have registered (64 bytes), so inputs that name it reach
/// the reads and writes of the shared-memory paths.
pub const REGION: &str = "fuzz";

/// What [`REGION`] holds at the start of every run of a target (whatever earlier inputs wrote into it), so a
/// finding replays the same way: a BYTES element `"abc"`, then the bytes 7, 8, 9, ...
pub const REGION_CONTENTS: [u8; 64] = {
    let mut contents = [0u8; 64];
    contents[0] = 3;
    contents[4] = b'a';
    contents[5] = b'b';
    contents[6] = b'c';
    let mut i = 7;
    while i < 64 {
        contents[i] = i as u8;
        i += 1;
    }
    contents
};

/// The registry the targets decode against, with [`REGION`] registered over a file of this process's own,
/// which is removed at once (the registry keeps it open): nothing is shared with other processes or left
/// behind. Without the file the targets still run, with every region lookup refused.
fn shared_memory() -> &'static SharedMemory {
    static SHM: std::sync::OnceLock<SharedMemory> = std::sync::OnceLock::new();
    SHM.get_or_init(|| {
        let dir = std::env::temp_dir();
        let name = format!("ferroserve-fuzz-{}-{:x}", std::process::id(), std::ptr::addr_of!(SHM) as usize);
        let registry = SharedMemory::new(&dir).with_max_tensor_bytes(1 << 20);
        let made = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join(&name))
            .and_then(|mut f| std::io::Write::write_all(&mut f, &REGION_CONTENTS));
        if made.is_ok() {
            let spec = ferroserve::shm::RegionSpec { name: REGION.into(), key: name.clone(), offset: 0, byte_size: 64 };
            let _ = registry.register(spec);
        }
        let _ = std::fs::remove_file(dir.join(&name));
        registry
    })
}

/// The registry, with [`REGION`] holding [`REGION_CONTENTS`] again.
fn fresh_shared_memory() -> &'static SharedMemory {
    let registry = shared_memory();
    let mut whole = ferroserve_engine::Parameters::new();
    whole.insert("shared_memory_region".into(), ferroserve_engine::Parameter::String(REGION.into()));
    whole.insert("shared_memory_byte_size".into(), ferroserve_engine::Parameter::Uint(64));
    if let Ok(Some(slot)) = registry.slot("reset", &whole) {
        let _ = slot.write("reset", &REGION_CONTENTS);
    }
    registry
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
    if let Ok((request, format)) = http::decode_request("m", None, &json, binary, fresh_shared_memory()) {
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
    if let Ok((request, slots)) = grpc::decode_request(request, fresh_shared_memory())
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
    if let Ok(Some((config, _))) = ferroserve::load_parameters::from_http_body("fuzzed", data) {
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

    /// The registered region is really there, and holds the same bytes at every run: the shared-memory seeds
    /// reach reads and writes, not only the refusal of an unknown region.
    #[test]
    fn seeds_naming_the_region_read_from_it() {
        let json = br#"{"inputs":[{"name":"x","datatype":"UINT8","shape":[3],
            "parameters":{"shared_memory_region":"fuzz","shared_memory_byte_size":3,"shared_memory_offset":60}},
            {"name":"s","datatype":"BYTES","shape":[1],
            "parameters":{"shared_memory_region":"fuzz","shared_memory_byte_size":7}}],
            "outputs":[{"name":"x","parameters":{"shared_memory_region":"fuzz","shared_memory_byte_size":4}}]}"#;
        for _ in 0..2 {
            let registry = fresh_shared_memory();
            let (request, format) = http::decode_request("m", None, json, Bytes::new(), registry).unwrap();
            assert_eq!(ferroserve::raw::tensor_to_raw(&request.inputs[0].tensor), Bytes::from_static(&[60, 61, 62]));
            assert_eq!(
                ferroserve::raw::tensor_to_raw(&request.inputs[1].tensor),
                Bytes::from_static(&[3, 0, 0, 0, 97, 98, 99])
            );
            assert_eq!(format.shm_outputs().len(), 1);
            // The echo writes [60, 61, 62] over the start of the region; the next run sees the region reset.
            http::encode_response(&echo(request), &format).unwrap();
        }
    }
}
