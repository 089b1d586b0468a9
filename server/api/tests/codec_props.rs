//! Property tests for the public request codecs: the v2 REST body (JSON header plus the binary tensor data
//! extension), the raw tensor layout shared with gRPC, and the gRPC request decoder. Any input gets a value
//! or an error, never a panic; and what the encoders write (or a client would write) decodes back unchanged.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use ferroserve::grpc::codec as grpc;
use ferroserve::http::codec::{ResponseFormat, decode_request, encode_response, split_body};
use ferroserve::json_data::{
    DataView, FlatData, PackAllowance, concrete_shape, shape_of_json_text, tensor_from_json, tensor_from_json_text,
};
use ferroserve::raw::{tensor_from_raw, tensor_to_raw};
use ferroserve::shm::SharedMemory;
use ferroserve_engine::{InferOutput, InferResponse};
use ferroserve_proto::ModelInferRequest;
use ferroserve_proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use ferroserve_runtime::{DataType, Tensor, TensorData};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

// ---------------------------------------------------------------------------------------------------------
// Strategies

fn datatype() -> impl Strategy<Value = DataType> {
    prop::sample::select(DataType::ALL.to_vec())
}

/// Small shapes (rank 0 to 3), zero-sized dims included.
fn small_shape() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0usize..4, 0..4)
}

/// A client-supplied shape: mostly small, sometimes negative or big enough to overflow.
fn wire_shape() -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(prop_oneof![6 => 0i64..5, 1 => any::<i64>(), 1 => Just(i64::MAX), 1 => Just(1 << 32)], 0..5)
}

/// One element of `datatype`: its raw bytes (fixed types) or its string (BYTES). With `json_safe`, only
/// values that have an exact JSON form: BOOL 0/1, finite floats, UTF-8 strings.
fn element(datatype: DataType, json_safe: bool) -> BoxedStrategy<Vec<u8>> {
    match (datatype, json_safe) {
        (DataType::Bool, true) => any::<bool>().prop_map(|b| vec![u8::from(b)]).boxed(),
        (DataType::Fp32, true) => {
            any::<f32>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| f.to_le_bytes().to_vec()).boxed()
        }
        (DataType::Fp64, true) => {
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| f.to_le_bytes().to_vec()).boxed()
        }
        (DataType::Bytes, true) => any::<String>().prop_map(String::into_bytes).boxed(),
        (DataType::Bytes, false) => prop::collection::vec(any::<u8>(), 0..12).boxed(),
        (fixed, _) => prop::collection::vec(any::<u8>(), fixed.size_of().unwrap()).boxed(),
    }
}

/// A tensor of any type (binary round trips), or of the types and values JSON carries exactly.
fn tensor(json_safe: bool) -> impl Strategy<Value = Tensor> {
    let types = if json_safe {
        DataType::ALL.into_iter().filter(|d| d.has_json_form()).collect()
    } else {
        DataType::ALL.to_vec()
    };
    (prop::sample::select(types), small_shape()).prop_flat_map(move |(datatype, shape)| {
        let count = shape.iter().product::<usize>();
        prop::collection::vec(element(datatype, json_safe), count).prop_map(move |elements| {
            let data = match datatype {
                DataType::Bytes => TensorData::Strings(elements.into_iter().map(Bytes::from).collect()),
                _ => TensorData::Fixed(Bytes::from(elements.concat())),
            };
            Tensor::new(datatype, shape.clone(), data).unwrap()
        })
    })
}

/// Arbitrary JSON, numbers of every kind included.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from), // NaN and infinities become null
        ".{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON input object that is close to valid: every field is plausible or, sometimes, any JSON.
fn json_input() -> impl Strategy<Value = Value> {
    let name = prop_oneof![Just(json!("x")), ".{0,4}".prop_map(Value::from), json_value()];
    let shape = prop_oneof![4 => wire_shape().prop_map(Value::from), 1 => json_value()];
    let datatype = prop_oneof![
        4 => datatype().prop_map(|d| Value::from(d.as_str())),
        1 => json_value(),
    ];
    let size = prop_oneof![
        (0u64..40).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        json_value(),
    ];
    let parameters = prop_oneof![
        Just(None),
        size.prop_map(|s| Some(json!({ "binary_data_size": s }))),
        json_value().prop_map(|v| Some(json!({ "shared_memory_region": v }))),
        json_value().prop_map(Some),
    ];
    let data = prop_oneof![Just(None), json_value().prop_map(Some)];
    (name, shape, datatype, parameters, data).prop_map(|(name, shape, datatype, parameters, data)| {
        let mut input = Map::new();
        input.insert("name".into(), name);
        input.insert("shape".into(), shape);
        input.insert("datatype".into(), datatype);
        if let Some(p) = parameters {
            input.insert("parameters".into(), p);
        }
        if let Some(d) = data {
            input.insert("data".into(), d);
        }
        Value::Object(input)
    })
}

/// A JSON request body that is close to valid.
fn json_request() -> impl Strategy<Value = Value> {
    let outputs = prop::collection::vec(
        (".{0,4}", prop::option::of(json_value())).prop_map(|(name, parameters)| match parameters {
            Some(p) => json!({ "name": name, "parameters": { "binary_data": p } }),
            None => json!({ "name": name }),
        }),
        0..3,
    );
    (
        prop::collection::vec(json_input(), 0..4),
        prop::option::of(outputs),
        prop::option::of(json_value()),
        prop::option::of(json_value()),
    )
        .prop_map(|(inputs, outputs, id, parameters)| {
            let mut request = Map::new();
            request.insert("inputs".into(), Value::Array(inputs));
            if let Some(o) = outputs {
                request.insert("outputs".into(), Value::Array(o));
            }
            if let Some(id) = id {
                request.insert("id".into(), id);
            }
            if let Some(p) = parameters {
                request.insert("parameters".into(), p);
            }
            Value::Object(request)
        })
}

/// `Inference-Header-Content-Length` values: byte counts around the body's length, and junk.
fn header_length() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        (0usize..80).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("18446744073709551616".to_string()), // u64::MAX + 1
        "[ +-]?[0-9]{0,4}[ ]?".prop_map(String::from),
        ".{0,8}".prop_map(String::from),
    ])
}

// ---------------------------------------------------------------------------------------------------------
// Helpers

/// A tensor's elements as JSON arrays nested by its shape (clients may send either form).
fn nested(flat: &[Value], shape: &[usize]) -> Value {
    match shape.split_first() {
        None => flat.first().cloned().unwrap_or(Value::Null),
        Some((&n, rest)) => {
            let step = rest.iter().product::<usize>();
            Value::Array((0..n).map(|i| nested(&flat[(i * step).min(flat.len())..], rest)).collect())
        }
    }
}

fn flat_json(tensor: &Tensor) -> Vec<Value> {
    match serde_json::to_value(DataView(tensor)).unwrap() {
        Value::Array(items) => items,
        other => panic!("DataView wrote {other}"),
    }
}

/// Tensors equal, bit for bit (FP64 too: serde_json's `float_roundtrip` parses every decimal to the exact
/// double; without it `[-1.5330618282623167e156]` decoded one unit in the last place off).
fn same_tensors(decoded: &[Tensor], expected: &[Tensor]) -> bool {
    decoded == expected
}

fn as_shape(tensor: &Tensor) -> Vec<i64> {
    tensor.shape().iter().map(|&d| i64::try_from(d).unwrap()).collect()
}

/// Pushes a client input in binary (`binary_data_size` plus bytes in the tail) or as JSON `data`.
fn client_input(name: &str, tensor: &Tensor, binary: bool, nest: bool, tail: &mut BytesMut) -> Value {
    let mut input = json!({ "name": name, "shape": as_shape(tensor), "datatype": tensor.datatype().as_str() });
    if binary {
        let raw = tensor_to_raw(tensor);
        input["parameters"] = json!({ "binary_data_size": raw.len() });
        tail.extend_from_slice(&raw);
    } else {
        let flat = flat_json(tensor);
        input["data"] =
            if nest && !tensor.shape().is_empty() { nested(&flat, tensor.shape()) } else { Value::Array(flat) };
    }
    input
}

/// The request's text with each input's keys in the order tritonclient writes them (`name`, `shape`,
/// `datatype`, `parameters`, `data`, then any others), where `serde_json` sorts them (`data` first). The decoder
/// packs `data` in its one pass only in the first order, and must read both alike.
fn in_client_order(request: &Value) -> String {
    let Value::Object(top) = request else { return request.to_string() };
    let mut fields = Vec::new();
    for (key, value) in top {
        let text = match (key.as_str(), value) {
            ("inputs", Value::Array(inputs)) => {
                let inputs: Vec<String> = inputs.iter().map(input_in_client_order).collect();
                format!("[{}]", inputs.join(","))
            }
            _ => value.to_string(),
        };
        fields.push(format!("{}:{text}", Value::from(key.as_str())));
    }
    format!("{{{}}}", fields.join(","))
}

fn input_in_client_order(input: &Value) -> String {
    let Value::Object(map) = input else { return input.to_string() };
    const ORDER: [&str; 5] = ["name", "shape", "datatype", "parameters", "data"];
    let rank = |k: &str| ORDER.iter().position(|o| *o == k).unwrap_or(ORDER.len());
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_by_key(|k| rank(k));
    let fields: Vec<String> = keys.iter().map(|k| format!("{}:{}", Value::from(k.as_str()), map[*k])).collect();
    format!("{{{}}}", fields.join(","))
}

/// How an error for JSON that does not fit the request's form begins.
const MALFORMED: &str = "malformed inference request JSON";

/// A decoded request's tensors, id and requested outputs.
type Decoded = (Vec<Tensor>, Option<String>, Vec<String>);

/// What a decode came to, comparable across key orders: the tensors, id and requested outputs, or the error.
fn outcome(body: &[u8]) -> Result<Decoded, String> {
    decode_request("m", Some("1"), body, Bytes::new(), &SharedMemory::default())
        .map(|(r, _)| {
            (r.inputs.into_iter().map(|i| i.tensor).collect(), r.id, r.outputs.into_iter().map(|o| o.name).collect())
        })
        .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------------------
// Properties

/// A value the parser once decoded one unit in the last place off (before serde_json's `float_roundtrip`).
#[test]
fn fp64_json_data_decodes_to_the_exact_double() {
    let json = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP64","data":[-1.5330618282623167e156, 0.1]}]}"#;
    let (decoded, _) = decode_request("m", None, json, Bytes::new(), &SharedMemory::default()).unwrap();
    let expected = [-1.5330618282623167e156_f64, 0.1].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    assert_eq!(decoded.inputs[0].tensor.as_fixed().unwrap(), &expected[..]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any header value and body split cleanly or fail; a split keeps every byte, in order.
    #[test]
    fn split_body_never_panics(header in header_length(), body in prop::collection::vec(any::<u8>(), 0..64)) {
        let body = Bytes::from(body);
        if let Ok((head, tail)) = split_body(header.as_deref(), body.clone()) {
            prop_assert_eq!([head.as_ref(), tail.as_ref()].concat(), body.to_vec());
            if let Some(h) = header {
                prop_assert_eq!(head.len(), h.trim().parse::<usize>().unwrap());
            } else {
                prop_assert!(tail.is_empty());
            }
        }
    }

    /// Arbitrary bytes as the JSON header, and as the binary tail, give a request or an error.
    #[test]
    fn decode_request_never_panics_on_bytes(
        json in prop::collection::vec(any::<u8>(), 0..128),
        binary in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let _ = decode_request("m", None, &json, Bytes::from(binary), &SharedMemory::default());
    }

    /// Near-valid request JSON with any header length and tail: never a panic, and what decodes is coherent.
    #[test]
    fn decode_request_never_panics_on_request_like_json(
        request in json_request(),
        header in header_length(),
        tail in prop::collection::vec(any::<u8>(), 0..48),
    ) {
        let mut body = serde_json::to_vec(&request).unwrap();
        body.extend_from_slice(&tail);
        // With no header, the tail is read as part of the JSON (as a server would).
        let Ok((head, binary)) = split_body(header.as_deref(), Bytes::from(body)) else { return Ok(()) };
        if let Ok((decoded, _)) = decode_request("m", Some("1"), &head, binary, &SharedMemory::default()) {
            for input in &decoded.inputs {
                let t = &input.tensor;
                let count = t.shape().iter().product::<usize>();
                match t.data() {
                    TensorData::Fixed(b) => prop_assert_eq!(b.len(), count * t.datatype().size_of().unwrap()),
                    TensorData::Strings(s) => prop_assert_eq!(s.len(), count),
                }
            }
        }
    }

    /// Key order does not change what a request decodes to, or the error it gets: `data` packed in the one pass
    /// (after `name`, `shape` and `datatype`) and `data` read as text and packed afterwards (sorted keys) agree,
    /// on near-valid requests and on clients' requests alike.
    #[test]
    fn key_order_does_not_change_the_decode(
        request in json_request(),
        tensors in prop::collection::vec((tensor(true), any::<bool>()), 0..3),
        junk_after in any::<bool>(),
    ) {
        let mut tail = BytesMut::new();
        let inputs: Vec<Value> =
            tensors.iter().enumerate().map(|(i, (t, nest))| client_input(&format!("in{i}"), t, false, *nest, &mut tail)).collect();
        for request in [request, json!({ "inputs": inputs })] {
            let sorted = serde_json::to_string(&request).unwrap();
            let mut client = in_client_order(&request);
            prop_assert_eq!(sorted.len(), client.len());
            let mut sorted = sorted;
            if junk_after {
                sorted.push_str(" x");
                client.push_str(" x");
            }
            let (a, b) = (outcome(sorted.as_bytes()), outcome(client.as_bytes()));
            let context = format!("sorted {sorted} / client order {client}");
            match (&a, &b) {
                // Invalid JSON for the request's form: the first key in error, and where it sits, depend on the order.
                (Err(x), Err(y)) if x.starts_with(MALFORMED) && y.starts_with(MALFORMED) => {}
                _ => prop_assert_eq!(&a, &b, "{}", context),
            }
        }
    }

    /// A request a client encodes (JSON data flat or nested, or binary with the header length) decodes to
    /// the same tensors, id and requested outputs.
    #[test]
    fn request_round_trips(
        tensors in prop::collection::vec((tensor(true), any::<bool>(), any::<bool>()), 0..4),
        binary_tensors in prop::collection::vec(tensor(false), 0..2),
        id in prop::option::of(".{0,8}"),
        wanted in prop::collection::vec(("[a-z]{1,4}", prop::option::of(any::<bool>())), 0..3),
        header_without_binary in any::<bool>(),
    ) {
        let mut tail = BytesMut::new();
        let mut inputs = Vec::new();
        let mut expected = Vec::new();
        for (i, (t, binary, nest)) in tensors.iter().enumerate() {
            inputs.push(client_input(&format!("in{i}"), t, *binary, *nest, &mut tail));
            expected.push(t.clone());
        }
        for (i, t) in binary_tensors.iter().enumerate() {
            inputs.push(client_input(&format!("bin{i}"), t, true, false, &mut tail));
            expected.push(t.clone());
        }
        let outputs: Vec<Value> = wanted
            .iter()
            .map(|(name, binary)| match binary {
                Some(b) => json!({ "name": name, "parameters": { "binary_data": b } }),
                None => json!({ "name": name }),
            })
            .collect();
        let mut request = json!({ "inputs": inputs, "outputs": outputs });
        if let Some(id) = &id {
            request["id"] = json!(id);
        }
        let json = serde_json::to_vec(&request).unwrap();
        let header = (!tail.is_empty() || header_without_binary).then(|| json.len().to_string());
        let mut body = BytesMut::from(&json[..]);
        body.extend_from_slice(&tail);

        let (head, binary) = split_body(header.as_deref(), body.freeze()).unwrap();
        let (decoded, _format) = decode_request("m", Some("1"), &head, binary, &SharedMemory::default())
            .map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&json))))?;
        prop_assert_eq!(decoded.id, id);
        let tensors: Vec<Tensor> = decoded.inputs.iter().map(|i| i.tensor.clone()).collect();
        prop_assert!(same_tensors(&tensors, &expected), "{tensors:?} != {expected:?}");
        prop_assert_eq!(
            decoded.outputs.iter().map(|o| o.name.clone()).collect::<Vec<_>>(),
            wanted.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
        );
    }

    /// What `encode_response` writes (JSON data, or binary after the JSON) reads back as the same tensors.
    #[test]
    fn response_round_trips(
        json_tensors in prop::collection::vec(tensor(true), 0..4),
        any_tensors in prop::collection::vec(tensor(false), 0..3),
        all_binary in any::<bool>(),
        id in prop::option::of(".{0,8}"),
    ) {
        // FP16/BF16 always travel in binary; other types need JSON-exact values unless everything is binary.
        let tensors: Vec<Tensor> = if all_binary {
            json_tensors.into_iter().chain(any_tensors).collect()
        } else {
            json_tensors
                .into_iter()
                .chain(any_tensors.into_iter().filter(|t| !t.datatype().has_json_form()))
                .collect()
        };
        let response = InferResponse {
            model_name: "m".into(),
            model_version: "3".into(),
            id: id.clone(),
            outputs: tensors
                .iter()
                .enumerate()
                .map(|(i, t)| InferOutput { name: format!("out{i}"), tensor: t.clone() })
                .collect(),
        };
        let format = if all_binary { ResponseFormat::all_binary() } else { ResponseFormat::default() };
        let encoded = encode_response(&response, &format).unwrap();
        let json_length = encoded.json_length.unwrap_or(encoded.body.len());
        let (head, mut tail) = split_body(Some(&json_length.to_string()), encoded.body.clone()).unwrap();
        // Binary follows the JSON exactly when some output went binary (zero-sized ones add no bytes).
        let binary = tensors.iter().any(|t| all_binary || !t.datatype().has_json_form());
        prop_assert_eq!(encoded.json_length.is_some(), binary);
        let head: Value = serde_json::from_slice(&head).unwrap();
        prop_assert_eq!(&head["model_name"], "m");
        prop_assert_eq!(&head["model_version"], "3");
        prop_assert_eq!(head.get("id").and_then(Value::as_str), id.as_deref());
        let outputs = head["outputs"].as_array().unwrap();
        prop_assert_eq!(outputs.len(), tensors.len());
        for (output, original) in outputs.iter().zip(&tensors) {
            let datatype = DataType::parse(output["datatype"].as_str().unwrap()).unwrap();
            let shape: Vec<usize> = serde_json::from_value(output["shape"].clone()).unwrap();
            let decoded = match output["parameters"]["binary_data_size"].as_u64() {
                Some(size) => tensor_from_raw("o", datatype, shape, tail.split_to(size as usize)),
                None => {
                    let flat: FlatData = serde_json::from_value(output["data"].clone()).unwrap();
                    tensor_from_json("o", datatype, shape, flat)
                }
            };
            let decoded = decoded.unwrap();
            prop_assert!(same_tensors(std::slice::from_ref(&decoded), std::slice::from_ref(original)), "{decoded:?} != {original:?}");
        }
        prop_assert!(tail.is_empty());
    }

    /// The raw layout: any tensor survives `tensor_to_raw` then `tensor_from_raw`.
    #[test]
    fn raw_tensors_round_trip(t in tensor(false)) {
        let back = tensor_from_raw("t", t.datatype(), t.shape().to_vec(), tensor_to_raw(&t)).unwrap();
        prop_assert_eq!(back, t);
    }

    /// Raw bytes under any type and any shape the decoders accept: a tensor (whose raw form is those very
    /// bytes) or an error.
    #[test]
    fn tensor_from_raw_never_panics(
        datatype in datatype(),
        shape in wire_shape(),
        raw in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            // Well-formed BYTES prefixes with lengths that may lie.
            prop::collection::vec((any::<u32>(), prop::collection::vec(any::<u8>(), 0..6)), 0..5).prop_map(|items| {
                items.into_iter().flat_map(|(len, b)| len.to_le_bytes().into_iter().chain(b)).collect()
            }),
        ],
    ) {
        // Like both decoders, only shapes `concrete_shape` accepts reach `tensor_from_raw`.
        let Ok(shape) = concrete_shape("t", &shape) else { return Ok(()) };
        let raw = Bytes::from(raw);
        if let Ok(t) = tensor_from_raw("t", datatype, shape, raw.clone()) {
            prop_assert_eq!(tensor_to_raw(&t), raw);
        }
    }

    /// JSON `data` of any form under any type and accepted shape: a tensor or an error.
    #[test]
    fn json_data_never_panics(datatype in datatype(), shape in wire_shape(), data in json_value()) {
        let Ok(shape) = concrete_shape("t", &shape) else { return Ok(()) };
        if let Ok(flat) = serde_json::from_value::<FlatData>(data) {
            let _ = tensor_from_json("t", datatype, shape, flat);
        }
    }

    /// The same `data` read as text, as the v2 and v1 decoders read it: a tensor or an error, never a panic.
    #[test]
    fn json_data_text_never_panics(datatype in datatype(), shape in wire_shape(), data in json_value(), markers: bool) {
        let text = data.to_string();
        let _ = shape_of_json_text("t", &text);
        let Ok(shape) = concrete_shape("t", &shape) else { return Ok(()) };
        let _ = tensor_from_json_text("t", datatype, shape, &text, markers, &PackAllowance::for_body(text.len()));
    }

    /// `data` that is not JSON, or nested far too deep, is an error.
    #[test]
    fn flat_data_never_panics(text in "[\\[\\]0-9,.eE+\\-\"truefalsn ]{0,64}", depth in 0usize..400) {
        let _ = serde_json::from_str::<FlatData>(&text);
        let deep = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        prop_assert_eq!(serde_json::from_str::<FlatData>(&deep).is_ok(), depth <= 64);
    }

    /// Any bytes that protobuf decodes as a `ModelInferRequest` give a request or an error.
    #[test]
    fn grpc_decode_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(request) = <ModelInferRequest as prost::Message>::decode(&bytes[..]) {
            let _ = grpc::decode_request(request, &SharedMemory::default());
        }
    }

    /// gRPC requests with raw contents of any length under any declared type and shape.
    #[test]
    fn grpc_raw_contents_never_panic(
        inputs in prop::collection::vec(
            (datatype().prop_map(|d| d.as_str().to_string()), wire_shape(), prop::collection::vec(any::<u8>(), 0..40)),
            0..4,
        ),
        extra_raw in 0usize..2,
    ) {
        let mut raw: Vec<Bytes> = inputs.iter().map(|(_, _, b)| Bytes::from(b.clone())).collect();
        raw.extend((0..extra_raw).map(|_| Bytes::new()));
        let request = ModelInferRequest {
            inputs: inputs
                .into_iter()
                .map(|(datatype, shape, _)| InferInputTensor { name: "x".into(), datatype, shape, ..Default::default() })
                .collect(),
            raw_input_contents: raw,
            ..Default::default()
        };
        let _ = grpc::decode_request(request, &SharedMemory::default());
    }

    /// A gRPC request with raw contents decodes to its tensors, and a response's raw contents read back.
    #[test]
    fn grpc_raw_round_trips(tensors in prop::collection::vec(tensor(false), 1..4), id in ".{0,6}") {
        let request = ModelInferRequest {
            model_name: "m".into(),
            id: id.clone(),
            inputs: tensors
                .iter()
                .enumerate()
                .map(|(i, t)| InferInputTensor {
                    name: format!("in{i}"),
                    datatype: t.datatype().as_str().into(),
                    shape: as_shape(t),
                    ..Default::default()
                })
                .collect(),
            outputs: vec![InferRequestedOutputTensor { name: "y".into(), parameters: HashMap::new() }],
            raw_input_contents: tensors.iter().map(tensor_to_raw).collect(),
            ..Default::default()
        };
        let (decoded, _) = grpc::decode_request(request, &SharedMemory::default()).unwrap();
        prop_assert_eq!(decoded.id, (!id.is_empty()).then_some(id));
        prop_assert_eq!(decoded.inputs.iter().map(|i| i.tensor.clone()).collect::<Vec<_>>(), tensors.clone());

        let response = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: None,
            outputs: tensors.iter().map(|t| InferOutput { name: "o".into(), tensor: t.clone() }).collect(),
        };
        let encoded = grpc::encode_response(response, &Default::default()).unwrap();
        for ((output, raw), original) in encoded.outputs.iter().zip(&encoded.raw_output_contents).zip(&tensors) {
            let shape = concrete_shape("o", &output.shape).unwrap();
            let datatype = DataType::parse(&output.datatype).unwrap();
            prop_assert_eq!(&tensor_from_raw("o", datatype, shape, raw.clone()).unwrap(), original);
        }
    }
}
