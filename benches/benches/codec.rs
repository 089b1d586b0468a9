//! Decode and encode of a 1 MiB FP32 tensor in the v2 JSON form and the binary tensor extension, and the JSON
//! decode of a small one (16 values) in both key orders.
#![allow(missing_docs)]

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferroserve::http::codec::{ResponseFormat, decode_request, encode_response, split_body};
use ferroserve::shm::SharedMemory;
use ferroserve_benches::{binary_request, json_request, json_request_client_order};
use ferroserve_engine::{InferOutput, InferResponse};

const ELEMENTS: usize = 256 * 1024; // 1 MiB of FP32

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec_1MiB_fp32");
    group.throughput(Throughput::Bytes((ELEMENTS * 4) as u64));
    group.sample_size(20);

    let json = Bytes::from(json_request(ELEMENTS));
    group.bench_function("decode_json", |b| {
        b.iter(|| {
            decode_request("m", None, &json, Bytes::new(), &SharedMemory::default())
                .map(|r| r.0.inputs.len())
                .unwrap_or(0)
        })
    });

    let (header_len, body) = binary_request(ELEMENTS);
    let body = Bytes::from(body);
    let len = header_len.to_string();
    group.bench_function("decode_binary", |b| {
        b.iter(|| {
            let (head, tail) = split_body(Some(&len), body.clone()).unwrap_or_default();
            decode_request("m", None, &head, tail, &SharedMemory::default()).map(|r| r.0.inputs.len()).unwrap_or(0)
        })
    });

    let (request, _) =
        decode_request("m", None, &json, Bytes::new(), &SharedMemory::default()).unwrap_or_else(|e| panic!("{e}"));
    let tensor = request.inputs[0].tensor.clone();
    let response = InferResponse {
        model_name: "m".into(),
        model_version: "1".into(),
        id: None,
        outputs: vec![InferOutput { name: "y".into(), tensor }],
    };
    let as_json = ResponseFormat::default();
    group.bench_function("encode_json", |b| {
        b.iter(|| encode_response(&response, &as_json).map(|e| e.body.len()).unwrap_or(0))
    });
    let as_binary = ResponseFormat::all_binary();
    group.bench_function("encode_binary", |b| {
        b.iter(|| encode_response(&response, &as_binary).map(|e| e.body.len()).unwrap_or(0))
    });
    group.finish();

    // A small request (the MLP's 16 values), where fixed costs per input show.
    let mut small = c.benchmark_group("codec_16_fp32");
    for (label, body) in [("sorted_keys", json_request(16)), ("client_order", json_request_client_order(16))] {
        let body = Bytes::from(body);
        small.bench_function(format!("decode_json_{label}"), |b| {
            b.iter(|| {
                decode_request("m", None, &body, Bytes::new(), &SharedMemory::default())
                    .map(|r| r.0.inputs.len())
                    .unwrap_or(0)
            })
        });
    }
    small.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
