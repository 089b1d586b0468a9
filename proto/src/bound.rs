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
        let gate = (TypeId::of::<U>() == TypeId::of::<ModelInferRequest>()).then(decode_gate).flatten();
        let _hold = match gate {
            None => None,
            Some(gate) => {
                let wire = prost::bytes::Buf::chunk(buf);
                let size = prost::bytes::Buf::remaining(buf);
                // tonic hands over one contiguous message (a `BytesMut`); were it split, each byte is assumed a
                // record.
                let bytes =
                    if wire.len() == size { decoded_size(wire, Schema::Request) } else { size.saturating_mul(RECORD) };
                match gate(bytes) {
                    Ok(hold) => Some(hold),
                    // A message that decodes to about its own size is left to the handler, which answers a full
                    // budget with RESOURCE_EXHAUSTED for that request alone (a stream goes on); one that would
                    // decode to many times its size is refused here, before it is allocated.
                    Err(status) if status.code() == tonic::Code::ResourceExhausted && bytes <= 2 * size + SMALL => None,
                    Err(status) => return Err(status),
                }
            }
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
/// their decoded length, where a vector may hold up to twice that). Malformed input stops the walk: prost
/// refuses it without allocating the rest.
fn decoded_size(wire: &[u8], schema: Schema) -> usize {
    let mut total = 0usize;
    let mut pos = 0usize;
    while pos < wire.len() {
        let Some(key) = varint(wire, &mut pos) else { break };
        let cost = match key & 7 {
            0 => match varint(wire, &mut pos) {
                Some(_) => size_of::<u64>(),
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
                match field(schema, key >> 3) {
                    Field::Message(inner, size) => size.saturating_add(decoded_size(payload, inner)),
                    // A varint ends at each byte under 0x80.
                    Field::PackedVarints(size) => payload.iter().filter(|&&b| b < 0x80).count().saturating_mul(size),
                    _ => RECORD.saturating_add(payload.len()),
                }
            }
            // Group markers carry no payload; prost skips groups of unknown fields (what lies between them is
            // walked as if at this level: an overestimate). Wire types 6 and 7 are refused by prost.
            3 | 4 => 0,
            _ => break,
        };
        total = total.saturating_add(cost);
    }
    total
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
        decoded_size(&request.encode_to_vec(), Schema::Request)
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
        // 100 000 empty inputs: 200 KB on the wire, a struct each once decoded.
        let empty = ModelInferRequest { inputs: vec![InferInputTensor::default(); 100_000], ..Default::default() };
        assert!(estimate(&empty) >= 100_000 * REPEATED * size_of::<InferInputTensor>());
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
        let shape = ModelInferRequest {
            inputs: vec![InferInputTensor { shape: vec![1; 100_000], ..Default::default() }],
            ..Default::default()
        };
        assert!(estimate(&shape) >= 800_000);
        // Parameters: an entry each.
        let mut parameters = std::collections::HashMap::new();
        for i in 0..10_000 {
            parameters.insert(i.to_string(), InferParameter::default());
        }
        let params = ModelInferRequest { parameters, ..Default::default() };
        assert!(estimate(&params) >= 10_000 * MAP_ENTRY);
    }

    #[test]
    fn malformed_wire_stops_the_walk_without_panicking() {
        for wire in [&[0xff_u8; 12][..], &[0x2a, 0xff, 0xff, 0xff, 0xff, 0x0f], &[0x2a, 0x05, 0x2a], &[0x0e, 0x00]] {
            let _ = decoded_size(wire, Schema::Request);
        }
        assert_eq!(decoded_size(&[], Schema::Request), 0);
    }

    #[test]
    fn a_group_in_front_does_not_hide_what_follows() {
        // Start and end of a group on field 99, which prost skips, then a thousand empty inputs.
        let empty = ModelInferRequest { inputs: vec![InferInputTensor::default(); 1000], ..Default::default() };
        let mut wire = vec![0x9b, 0x06, 0x9c, 0x06];
        wire.extend(empty.encode_to_vec());
        assert!(ModelInferRequest::decode(&wire[..]).is_ok(), "prost skips the group");
        assert_eq!(decoded_size(&wire, Schema::Request), estimate(&empty));
    }
}
