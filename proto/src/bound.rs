//! A bound on what decoding a gRPC message allocates, checked before prost allocates it.
//!
//! A protobuf message can decode to far more memory than it takes on the wire: an empty
//! `InferInputTensor` is 2 bytes and a struct of a few hundred, an empty `bytes_contents` entry 2 bytes and a
//! 32-byte handle, a packed `int64` 1 byte and 8. A 3.8 MiB `ModelInferRequest` of empty inputs grew the server
//! by 1.2 GiB before any handler saw it; at the 256 MiB message limit one request would take the machine down.
//!
//! [`BoundedCodec`] is the prost codec with one step first: it walks the message's wire form (records and
//! lengths only, no allocation) and estimates what prost will allocate, following the schema of
//! `ModelInferRequest` (the one message whose size is in the client's hands) and counting every other message's
//! records. The estimate goes to the gate the server installed ([`set_decode_gate`]), which charges it to the
//! memory budget for as long as prost decodes, or refuses the message.

use std::any::{Any, TypeId};
use std::marker::PhantomData;
use std::mem::size_of;
use std::sync::{Arc, RwLock};

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

use crate::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use crate::inference::{InferParameter, InferTensorContents, ModelInferRequest};
use crate::limits;

/// Decides whether a message that decodes to about `bytes` may be decoded now: a hold (dropped once decoded)
/// or the status that refuses it.
pub type DecodeGate = dyn Fn(usize) -> Result<Box<dyn Any + Send>, Status> + Send + Sync;

static GATE: RwLock<Option<Arc<DecodeGate>>> = RwLock::new(None);

/// Installs the process's decode gate (a server installs its budget's; a later server in the same process
/// replaces it). Without one, messages are decoded as prost does.
pub fn set_decode_gate(gate: Arc<DecodeGate>) {
    *GATE.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(gate);
}

fn decode_gate() -> Option<Arc<DecodeGate>> {
    GATE.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
}

/// The prost codec, with the decoded size of each incoming message estimated and passed through the decode
/// gate before prost allocates it. Named by `codec_path` in `build.rs`, so every generated service and
/// client uses it.
#[derive(Debug, Clone)]
pub struct BoundedCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder { inner: ProstDecoder::new(BufferSettings::default()) }
    }
}

/// [`ProstDecoder`] behind the decode gate.
#[derive(Debug, Clone)]
pub struct BoundedDecoder<U> {
    inner: ProstDecoder<U>,
}

impl<U: Message + Default + 'static> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // Only inference messages carry what a client sizes; the rest (health, metadata, control) decode as
        // prost does, so they are answered even when the budget is full.
        let _hold = if TypeId::of::<U>() == TypeId::of::<ModelInferRequest>() {
            let wire = prost::bytes::Buf::chunk(buf);
            let size = prost::bytes::Buf::remaining(buf);
            // tonic hands over one contiguous message (a `BytesMut`); were it split, each byte is assumed a
            // record.
            let contiguous = wire.len() == size;
            let bytes = if contiguous {
                decoded_size(wire, Schema::Request).map_err(Status::invalid_argument)?
            } else {
                size.saturating_mul(RECORD)
            };
            let hold = match decode_gate().map(|gate| gate(bytes)) {
                None => None,
                Some(Ok(hold)) => Some(hold),
                // A message that decodes to about its own size is left to the handler, which answers a full
                // budget with RESOURCE_EXHAUSTED for that request alone (a stream goes on); one that would
                // decode to many times its size is refused here, before it is allocated.
                Some(Err(status)) if status.code() == tonic::Code::ResourceExhausted && bytes <= 2 * size + SMALL => {
                    None
                }
                Some(Err(status)) => return Err(status),
            };
            // Only a walked message has an estimate worth refusing for (the assumed one is a bound, not a size).
            if contiguous {
                check_growth(bytes, size).map_err(Status::invalid_argument)?;
            }
            hold
        } else {
            None
        };
        self.inner.decode(buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}

/// What one record costs at most when its field is not known: a value the size of a `String` or a struct
/// slot, beside its payload.
const RECORD: usize = 64;

/// Decoded bytes beyond twice the wire size that still count as a message decoding to about its own size.
const SMALL: usize = 64 * 1024;

/// How many times its size a repeated message costs (see [`field`]).
const REPEATED: usize = 4;

/// A map entry: key and value, doubled for the hash table's spare room and again for the server's own copy
/// of the parameters.
const MAP_ENTRY: usize = 4 * (size_of::<String>() + size_of::<InferParameter>() + 8);

/// The messages whose fields are known to the estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Schema {
    Request,
    Input,
    Output,
    Contents,
    MapEntry,
}

/// What a nested field holds.
enum Field {
    /// A message of this schema, taking `size` bytes itself.
    Message(Schema, usize),
    /// Packed varints of `size` bytes each once decoded.
    PackedVarints(usize),
    /// Anything else of this length: a string, bytes, packed fixed-size numbers (decoded to their wire size).
    Other,
}

fn field(schema: Schema, number: u64) -> Field {
    match (schema, number) {
        (Schema::Request, 4) | (Schema::Input, 4) | (Schema::Output, 2) => Field::Message(Schema::MapEntry, MAP_ENTRY),
        // Repeated messages: prost's vector may have twice the room it uses, and the server converts each
        // input and output into a record of its own as large again.
        (Schema::Request, 5) => Field::Message(Schema::Input, REPEATED * size_of::<InferInputTensor>()),
        (Schema::Request, 6) => Field::Message(Schema::Output, REPEATED * size_of::<InferRequestedOutputTensor>()),
        (Schema::Input, 3) => Field::PackedVarints(size_of::<i64>()),
        (Schema::Input, 5) => Field::Message(Schema::Contents, size_of::<InferTensorContents>()),
        (Schema::Contents, 1) => Field::PackedVarints(size_of::<bool>()),
        (Schema::Contents, 2) | (Schema::Contents, 4) => Field::PackedVarints(size_of::<u32>()),
        (Schema::Contents, 3) | (Schema::Contents, 5) => Field::PackedVarints(size_of::<u64>()),
        _ => Field::Other,
    }
}

/// The memory prost allocates to decode `wire` as a message of `schema`, about (packed numbers are counted at
/// twice their decoded length: the room a vector grown by doubling may hold), or the [`limits`] it passes. Malformed
/// input stops the walk: prost refuses it without allocating the rest.
fn decoded_size(wire: &[u8], schema: Schema) -> Result<usize, String> {
    let mut total = 0usize;
    let mut pos = 0usize;
    // Records of the fields the limits count, in this message.
    let (mut inputs, mut outputs, mut parameters, mut dims) = (0usize, 0usize, 0usize, 0usize);
    while pos < wire.len() {
        let Some(key) = varint(wire, &mut pos) else { break };
        let number = key >> 3;
        let cost = match key & 7 {
            0 => match varint(wire, &mut pos) {
                Some(_) => {
                    // An unpacked shape: a record per dim.
                    dims += usize::from(schema == Schema::Input && number == 3);
                    size_of::<u64>()
                }
                None => break,
            },
            1 => {
                pos = pos.saturating_add(8);
                size_of::<u64>()
            }
            5 => {
                pos = pos.saturating_add(4);
                size_of::<u64>()
            }
            2 => {
                let Some(len) = varint(wire, &mut pos) else { break };
                let Some(end) = usize::try_from(len).ok().and_then(|l| pos.checked_add(l)).filter(|&e| e <= wire.len())
                else {
                    break;
                };
                let payload = &wire[pos..end];
                pos = end;
                match (schema, number) {
                    (Schema::Request, 5) => inputs += 1,
                    (Schema::Request, 6) => outputs += 1,
                    (Schema::Request, 4) | (Schema::Input, 4) | (Schema::Output, 2) => parameters += 1,
                    _ => {}
                }
                match field(schema, number) {
                    Field::Message(inner, size) => size.saturating_add(decoded_size(payload, inner)?),
                    // A varint ends at each byte under 0x80. prost pushes them one by one: its vector may
                    // hold twice the room they take.
                    Field::PackedVarints(size) => {
                        let count = payload.iter().filter(|&&b| b < 0x80).count();
                        if schema == Schema::Input && number == 3 {
                            dims = dims.saturating_add(count);
                        }
                        count.saturating_mul(size).saturating_mul(2)
                    }
                    _ => RECORD.saturating_add(payload.len()),
                }
            }
            // Group markers carry no payload; prost skips groups of unknown fields (what lies between them is
            // walked as if at this level: an overestimate). Wire types 6 and 7 are refused by prost.
            3 | 4 => 0,
            _ => break,
        };
        total = total.saturating_add(cost);
        if inputs > limits::MAX_TENSORS || outputs > limits::MAX_TENSORS {
            return Err(format!(
                "the request has more than {} {}",
                limits::MAX_TENSORS,
                if inputs > limits::MAX_TENSORS { "inputs" } else { "requested outputs" }
            ));
        }
        if dims > limits::MAX_DIMS {
            return Err(format!("an input's shape has more than {} dims", limits::MAX_DIMS));
        }
        if parameters > limits::MAX_PARAMETERS {
            return Err(format!("a `parameters` map has more than {} entries", limits::MAX_PARAMETERS));
        }
    }
    Ok(total)
}

/// Refuses a message that would take more than [`limits::decode_growth_allowed`] beyond its `wire` bytes once
/// decoded (about `decoded`), whatever the memory budget.
fn check_growth(decoded: usize, wire: usize) -> Result<(), String> {
    let allowed = limits::decode_growth_allowed(wire);
    if decoded.saturating_sub(wire) <= allowed {
        return Ok(());
    }
    Err(format!(
        "the request would take about {decoded} bytes once decoded from its {wire} bytes, more than {} MiB beyond \
         them; send large tensors in raw_input_contents",
        allowed >> 20
    ))
}

/// What a decoded `ModelInferRequest` holds beside the wire buffer it came from: its structs, strings, maps,
/// typed contents and the handles of its raw contents (whose bytes are slices of that buffer). The decode gate's
/// charge ends when prost returns; the handler charges this, measured on what prost built, for as long as it
/// holds the message. A walk over the inputs and outputs, not the elements (except `bytes_contents` entries).
pub fn held_beside_wire(request: &ModelInferRequest) -> usize {
    fn parameters(map: &std::collections::HashMap<String, InferParameter>) -> usize {
        map.iter().fold(map.capacity().saturating_mul(MAP_ENTRY / 4), |total, (key, value)| {
            let text = match &value.parameter_choice {
                Some(crate::inference::infer_parameter::ParameterChoice::StringParam(s)) => s.capacity(),
                _ => 0,
            };
            total.saturating_add(key.capacity()).saturating_add(text)
        })
    }
    fn vec_bytes<T>(v: &Vec<T>) -> usize {
        v.capacity().saturating_mul(size_of::<T>())
    }
    fn contents(c: &InferTensorContents) -> usize {
        let entries = c.bytes_contents.iter().fold(0usize, |total, b| total.saturating_add(b.capacity()));
        [
            vec_bytes(&c.bool_contents),
            vec_bytes(&c.int_contents),
            vec_bytes(&c.int64_contents),
            vec_bytes(&c.uint_contents),
            vec_bytes(&c.uint64_contents),
            vec_bytes(&c.fp32_contents),
            vec_bytes(&c.fp64_contents),
            vec_bytes(&c.bytes_contents),
            entries,
        ]
        .into_iter()
        .fold(0usize, usize::saturating_add)
    }
    let inputs = request.inputs.iter().fold(vec_bytes(&request.inputs), |total, input| {
        total
            .saturating_add(input.name.capacity())
            .saturating_add(input.datatype.capacity())
            .saturating_add(vec_bytes(&input.shape))
            .saturating_add(parameters(&input.parameters))
            .saturating_add(input.contents.as_ref().map_or(0, contents))
    });
    let outputs = request.outputs.iter().fold(vec_bytes(&request.outputs), |total, output| {
        total.saturating_add(output.name.capacity()).saturating_add(parameters(&output.parameters))
    });
    size_of::<ModelInferRequest>()
        .saturating_add(request.model_name.capacity())
        .saturating_add(request.model_version.capacity())
        .saturating_add(request.id.capacity())
        .saturating_add(parameters(&request.parameters))
        .saturating_add(inputs)
        .saturating_add(outputs)
        .saturating_add(vec_bytes(&request.raw_input_contents))
}

/// Reads a varint at `pos`, advancing it; `None` when truncated or longer than 10 bytes.
fn varint(wire: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in 0..10 {
        let byte = *wire.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << (7 * shift);
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::model_infer_request::InferInputTensor;

    fn estimate(request: &ModelInferRequest) -> usize {
        decoded_size(&request.encode_to_vec(), Schema::Request).expect("within the limits")
    }

    #[test]
    fn raw_contents_cost_about_their_size() {
        let request = ModelInferRequest {
            model_name: "mlp".into(),
            inputs: vec![InferInputTensor {
                name: "INPUT0".into(),
                datatype: "FP32".into(),
                shape: vec![1, 16],
                ..Default::default()
            }],
            raw_input_contents: vec![vec![0u8; 1 << 20].into()],
            ..Default::default()
        };
        let wire = request.encoded_len();
        let estimate = estimate(&request);
        assert!(estimate >= wire && estimate < wire + 4096, "{estimate} for {wire} bytes");
    }

    #[test]
    fn many_small_records_cost_what_they_decode_to() {
        // As many empty inputs as a request may have: 8 KB on the wire, a struct each once decoded.
        let n = limits::MAX_TENSORS;
        let empty = ModelInferRequest { inputs: vec![InferInputTensor::default(); n], ..Default::default() };
        assert!(estimate(&empty) >= n * REPEATED * size_of::<InferInputTensor>());
        assert!(empty.encoded_len() * 50 < estimate(&empty));
        // Empty strings in bytes_contents: 2 bytes each on the wire, a handle and more once decoded.
        let strings = ModelInferRequest {
            inputs: vec![InferInputTensor {
                contents: Some(InferTensorContents { bytes_contents: vec![vec![]; 100_000], ..Default::default() }),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(estimate(&strings) >= 100_000 * size_of::<Vec<u8>>());
        // Packed int64 of small values: 1 byte each, 8 once decoded.
        let ids = ModelInferRequest {
            inputs: vec![InferInputTensor {
                contents: Some(InferTensorContents { int64_contents: vec![1; 100_000], ..Default::default() }),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(estimate(&ids) >= 800_000);
        // Parameters: an entry each.
        let params = ModelInferRequest { parameters: parameters(limits::MAX_PARAMETERS), ..Default::default() };
        assert!(estimate(&params) >= limits::MAX_PARAMETERS * MAP_ENTRY);
    }

    #[test]
    fn a_decoded_message_is_measured_by_what_prost_built() {
        // Raw contents are slices of the wire buffer: only their handles count beside it.
        let raw = ModelInferRequest {
            model_name: "mlp".into(),
            inputs: vec![InferInputTensor { name: "INPUT0".into(), shape: vec![1, 16], ..Default::default() }],
            raw_input_contents: vec![vec![0u8; 1 << 20].into()],
            ..Default::default()
        };
        assert!(held_beside_wire(&raw) < 4096, "{}", held_beside_wire(&raw));
        // Small int64 values: 1 byte each on the wire, 8 decoded.
        let ids = ModelInferRequest {
            inputs: vec![InferInputTensor {
                contents: Some(InferTensorContents { int64_contents: vec![1; 100_000], ..Default::default() }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let decoded = ModelInferRequest::decode(&ids.encode_to_vec()[..]).expect("decodes");
        assert!(held_beside_wire(&decoded) >= 800_000);
        // The wire estimate counts packed numbers at twice their decoded length, the room of a vector grown by
        // doubling.
        assert!(held_beside_wire(&decoded) <= estimate(&ids) + 4096, "the wire estimate bounds it");
        // Empty inputs and bytes_contents entries: what the wire estimate charged for them.
        let empty = ModelInferRequest { inputs: vec![InferInputTensor::default(); 4000], ..Default::default() };
        let decoded = ModelInferRequest::decode(&empty.encode_to_vec()[..]).expect("decodes");
        assert!(held_beside_wire(&decoded) >= 4000 * size_of::<InferInputTensor>());
        let strings = ModelInferRequest {
            inputs: vec![InferInputTensor {
                contents: Some(InferTensorContents { bytes_contents: vec![vec![]; 10_000], ..Default::default() }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let decoded = ModelInferRequest::decode(&strings.encode_to_vec()[..]).expect("decodes");
        assert!(held_beside_wire(&decoded) >= 10_000 * size_of::<Vec<u8>>());
    }

    fn parameters(n: usize) -> std::collections::HashMap<String, InferParameter> {
        (0..n).map(|i| (i.to_string(), InferParameter::default())).collect()
    }

    #[test]
    fn messages_that_decode_far_past_their_size_are_refused() {
        // 6 Mi empty strings listed in bytes_contents: 12 MiB on the wire, about 384 MiB decoded.
        let n = 6 << 20;
        let listed = ModelInferRequest {
            inputs: vec![InferInputTensor {
                contents: Some(InferTensorContents { bytes_contents: vec![Vec::new(); n], ..Default::default() }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let (decoded, wire) = (estimate(&listed), listed.encoded_len());
        let e = check_growth(decoded, wire).unwrap_err();
        assert!(e.contains("more than 192 MiB beyond") && e.contains("raw_input_contents"), "{e}");
        // The same bytes as raw contents decode to views of the message.
        let raw = ModelInferRequest { raw_input_contents: vec![vec![0u8; 1 << 20].into()], ..Default::default() };
        assert!(check_growth(estimate(&raw), raw.encoded_len()).is_ok());
        assert!(check_growth(limits::MAX_DECODE_GROWTH + 10, 10).is_ok());
        // A large message may grow less, so that message and growth stay within the request footprint.
        let wire = 100 << 20;
        assert!(check_growth(wire + (124 << 20), wire).is_ok());
        let e = check_growth(wire + (125 << 20), wire).unwrap_err();
        assert!(e.contains("more than 124 MiB beyond"), "{e}");
    }

    #[test]
    fn requests_past_a_structural_limit_are_refused_naming_it() {
        let refused = |request: ModelInferRequest| decoded_size(&request.encode_to_vec(), Schema::Request).unwrap_err();
        let inputs = |n| ModelInferRequest { inputs: vec![InferInputTensor::default(); n], ..Default::default() };
        let _ = estimate(&inputs(limits::MAX_TENSORS));
        assert!(refused(inputs(limits::MAX_TENSORS + 1)).contains("more than 4096 inputs"));
        let outputs = ModelInferRequest {
            outputs: vec![InferRequestedOutputTensor::default(); limits::MAX_TENSORS + 1],
            ..Default::default()
        };
        assert!(refused(outputs).contains("requested outputs"));
        let shape = |n| ModelInferRequest {
            inputs: vec![InferInputTensor { shape: vec![1; n], ..Default::default() }],
            ..Default::default()
        };
        let _ = estimate(&shape(limits::MAX_DIMS));
        assert!(refused(shape(limits::MAX_DIMS + 1)).contains("more than 64 dims"));
        // Unpacked dims (a record each) count the same.
        let mut unpacked = Vec::new();
        for _ in 0..=limits::MAX_DIMS {
            unpacked.extend([0x18, 0x01]);
        }
        let mut wire = vec![0x2a];
        prost::encoding::encode_varint(unpacked.len() as u64, &mut wire);
        wire.extend(unpacked);
        assert!(decoded_size(&wire, Schema::Request).unwrap_err().contains("dims"));
        let at_limit = ModelInferRequest { parameters: parameters(limits::MAX_PARAMETERS), ..Default::default() };
        let _ = estimate(&at_limit);
        for request in [
            ModelInferRequest { parameters: parameters(limits::MAX_PARAMETERS + 1), ..Default::default() },
            ModelInferRequest {
                inputs: vec![InferInputTensor {
                    parameters: parameters(limits::MAX_PARAMETERS + 1),
                    ..Default::default()
                }],
                ..Default::default()
            },
            ModelInferRequest {
                outputs: vec![InferRequestedOutputTensor {
                    parameters: parameters(limits::MAX_PARAMETERS + 1),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ] {
            assert!(refused(request).contains("more than 1024 entries"));
        }
    }

    #[test]
    fn malformed_wire_stops_the_walk_without_panicking() {
        for wire in [&[0xff_u8; 12][..], &[0x2a, 0xff, 0xff, 0xff, 0xff, 0x0f], &[0x2a, 0x05, 0x2a], &[0x0e, 0x00]] {
            let _ = decoded_size(wire, Schema::Request);
        }
        assert_eq!(decoded_size(&[], Schema::Request), Ok(0));
    }

    #[test]
    fn a_group_in_front_does_not_hide_what_follows() {
        // Start and end of a group on field 99, which prost skips, then a thousand empty inputs.
        let empty = ModelInferRequest { inputs: vec![InferInputTensor::default(); 1000], ..Default::default() };
        let mut wire = vec![0x9b, 0x06, 0x9c, 0x06];
        wire.extend(empty.encode_to_vec());
        assert!(ModelInferRequest::decode(&wire[..]).is_ok(), "prost skips the group");
        assert_eq!(decoded_size(&wire, Schema::Request), Ok(estimate(&empty)));
    }
}
