//! The JSON form of tensor data, shared by the v2 and v1 REST codecs.
//!
//! Decoding packs nested or flat `data` arrays straight into the tensor's raw little-endian layout as they are
//! parsed, checking each value's range for the declared type ([`DataPacker`], [`tensor_from_json_text`]): no
//! `serde_json::Value` tree and no intermediate vector. [`FlatData`] (16 bytes a number) remains for v1 bodies read
//! as a tree and as the reference the packer is tested against. Encoding serializes straight from the raw bytes
//! through [`DataView`], without an intermediate `serde_json::Value`.

use std::cell::Cell;
use std::fmt;

use bytes::Bytes;
use ferroserve_engine::InferError;
use ferroserve_runtime::{DataType, Tensor, TensorData};
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};

use crate::body_buffer::BodyBuffer;

/// One leaf of a JSON `data` array, as the parser meets it.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonScalar {
    /// `true` / `false`.
    Bool(bool),
    /// A negative integer.
    Int(i64),
    /// A non-negative integer.
    Uint(u64),
    /// A number with a fraction or exponent.
    Float(f64),
    /// A string (BYTES elements).
    Str(String),
}

/// A JSON number, kept exactly as written (integers are not rounded through `f64`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum JsonNumber {
    /// A negative integer.
    Int(i64),
    /// A non-negative integer.
    Uint(u64),
    /// A number with a fraction or exponent.
    Float(f64),
}

/// A `data` field flattened in row-major order into one typed vector. A tensor's elements are all of one
/// JSON kind, so mixing numbers, bools and strings is refused while parsing.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum FlatData {
    /// No elements.
    #[default]
    Empty,
    /// BOOL elements.
    Bools(Vec<bool>),
    /// Numeric elements.
    Numbers(Vec<JsonNumber>),
    /// BYTES elements.
    Strings(Vec<String>),
}

impl FlatData {
    /// Appends one element; fails when its kind differs from the elements before it.
    pub fn push(&mut self, value: JsonScalar) -> Result<(), &'static str> {
        const MIXED: &str = "`data` mixes numbers, bools and strings";
        match (self, value) {
            (this @ FlatData::Empty, v) => {
                *this = match v {
                    JsonScalar::Bool(b) => FlatData::Bools(vec![b]),
                    JsonScalar::Int(i) => FlatData::Numbers(vec![JsonNumber::Int(i)]),
                    JsonScalar::Uint(u) => FlatData::Numbers(vec![JsonNumber::Uint(u)]),
                    JsonScalar::Float(f) => FlatData::Numbers(vec![JsonNumber::Float(f)]),
                    JsonScalar::Str(s) => FlatData::Strings(vec![s]),
                };
            }
            (FlatData::Bools(v), JsonScalar::Bool(b)) => v.push(b),
            (FlatData::Numbers(v), JsonScalar::Int(i)) => v.push(JsonNumber::Int(i)),
            (FlatData::Numbers(v), JsonScalar::Uint(u)) => v.push(JsonNumber::Uint(u)),
            (FlatData::Numbers(v), JsonScalar::Float(f)) => v.push(JsonNumber::Float(f)),
            (FlatData::Strings(v), JsonScalar::Str(s)) => v.push(s),
            _ => return Err(MIXED),
        }
        Ok(())
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            FlatData::Empty => 0,
            FlatData::Bools(v) => v.len(),
            FlatData::Numbers(v) => v.len(),
            FlatData::Strings(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn reserve(&mut self, n: usize) {
        match self {
            FlatData::Bools(v) => v.reserve(n),
            FlatData::Numbers(v) => v.reserve(n),
            FlatData::Strings(v) => v.reserve(n),
            FlatData::Empty => {}
        }
    }
}

impl<'de> de::Deserialize<'de> for FlatData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut out = FlatData::Empty;
        deserializer.deserialize_any(Flatten { out: &mut out, depth: 0 })?;
        Ok(out)
    }
}

/// Nesting deeper than this is refused (tensors of such rank are not real; a deep stack is an attack).
const MAX_DEPTH: usize = 64;

/// The float a marker of [`non_finite_tokens_as_markers`] stands for.
fn non_finite_marker(v: &str) -> Option<f64> {
    match v {
        NAN_TEXT => Some(f64::NAN),
        INFINITY_TEXT => Some(f64::INFINITY),
        NEG_INFINITY_TEXT => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

struct Flatten<'a> {
    out: &'a mut FlatData,
    depth: usize,
}

impl Flatten<'_> {
    fn push<E: de::Error>(self, v: JsonScalar) -> Result<(), E> {
        self.out.push(v).map_err(E::custom)
    }
}

impl<'de> de::DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number, bool, string or (nested) array of them")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.push(JsonScalar::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push(if v >= 0 { JsonScalar::Uint(v as u64) } else { JsonScalar::Int(v) })
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push(JsonScalar::Uint(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.push(JsonScalar::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        match non_finite_marker(v) {
            Some(f) => self.push(JsonScalar::Float(f)),
            None => self.push(JsonScalar::Str(v.to_owned())),
        }
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<(), E> {
        match non_finite_marker(&v) {
            Some(f) => self.push(JsonScalar::Float(f)),
            None => self.push(JsonScalar::Str(v)),
        }
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(de::Error::custom(format!("`data` is nested deeper than {MAX_DEPTH} levels")));
        }
        if let Some(hint) = seq.size_hint() {
            self.out.reserve(hint);
        }
        while seq.next_element_seed(Flatten { out: &mut *self.out, depth: self.depth + 1 })?.is_some() {}
        Ok(())
    }
}

/// The strings [`non_finite_tokens_as_markers`] puts where the bare tokens were; `\0` cannot start a number.
const NAN_TEXT: &str = "\0NaN";
const INFINITY_TEXT: &str = "\0Infinity";
const NEG_INFINITY_TEXT: &str = "\0-Infinity";

/// JSON itself has no NaN or Infinity, but tritonclient (python-rapidjson) and Python's `json` write the bare
/// tokens `NaN`, `Infinity` and `-Infinity` for such floats, and Triton reads them. serde_json does not, so a
/// body that holds one of them outside a string is rewritten first: each token becomes a string marker that the
/// `data` parser turns back into the float. `None` when there is nothing to rewrite (the common case, found by
/// one scan for the letters). Tokens inside strings are left alone. The rewrite is a copy of the body, up to 3
/// times its size (`NaN,` becomes `"\u0000NaN",`): refused when it would take more than `room` bytes.
pub fn non_finite_tokens_as_markers(json: &[u8], room: usize) -> Result<Option<Vec<u8>>, InferError> {
    // One pass over the body, looking closer only at an `N` or an `I` (tokens inside strings are counted too, so
    // the size is only ever overestimated).
    let tokens = json
        .iter()
        .enumerate()
        .filter(|&(i, &b)| match b {
            b'N' => json[i..].starts_with(b"NaN"),
            b'I' => json[i..].starts_with(b"Infinity"),
            _ => false,
        })
        .count();
    if tokens == 0 {
        return Ok(None);
    }
    // A marker is its token, quoted, with `\u0000` before it: 8 characters longer.
    let mut bound = json.len().saturating_add(tokens.saturating_mul(8));
    if bound > room {
        // The scan counted tokens inside strings too: count only the bare ones before refusing.
        let bare = rewrite_bare_tokens(json, None);
        if bare == 0 {
            return Ok(None);
        }
        bound = json.len().saturating_add(bare.saturating_mul(8));
        if bound > room {
            return Err(InferError::invalid(format!(
                "the request has {bare} bare NaN or Infinity tokens; read as floats they take {bound} bytes, more \
                 than the {} MiB this request may take beyond its body; send such tensors with the binary tensor \
                 data extension",
                room >> 20
            )));
        }
    }
    let mut out = Vec::with_capacity(bound);
    rewrite_bare_tokens(json, Some(&mut out));
    Ok(Some(out))
}

/// Walks `json`, writing it to `out` (when given) with each bare `NaN`, `Infinity` and `-Infinity` token (one
/// outside a string) as its marker string; returns how many there were.
fn rewrite_bare_tokens(json: &[u8], mut out: Option<&mut Vec<u8>>) -> usize {
    let mut put = |bytes: &[u8]| {
        if let Some(out) = out.as_deref_mut() {
            out.extend_from_slice(bytes);
        }
    };
    let (mut i, mut in_string, mut escaped, mut tokens) = (0, false, false, 0);
    while i < json.len() {
        let b = json[i];
        if in_string {
            put(&[b]);
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        let rest = &json[i..];
        let token = [(&b"-Infinity"[..], NEG_INFINITY_TEXT), (b"Infinity", INFINITY_TEXT), (b"NaN", NAN_TEXT)]
            .into_iter()
            .find(|(t, _)| rest.starts_with(t));
        match token {
            Some((t, marker)) => {
                put(b"\"\\u0000");
                put(&marker.as_bytes()[1..]);
                put(b"\"");
                i += t.len();
                tokens += 1;
            }
            None => {
                in_string = b == b'"';
                put(&[b]);
                i += 1;
            }
        }
    }
    tokens
}

/// Multiplies out a client-supplied shape, refusing negative dims and overflow.
pub fn concrete_shape(name: &str, shape: &[i64]) -> Result<Vec<usize>, InferError> {
    let dims = shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| InferError::invalid(format!("input `{name}` has a negative dim in shape {shape:?}")))?;
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| InferError::invalid(format!("input `{name}` shape {shape:?} has too many elements")))?;
    Ok(dims)
}

/// Packs flattened JSON data into a tensor of `datatype` and `shape`.
pub fn tensor_from_json(
    name: &str,
    datatype: DataType,
    shape: Vec<usize>,
    data: FlatData,
) -> Result<Tensor, InferError> {
    let expected: usize = shape.iter().product();
    if data.len() != expected {
        return Err(InferError::invalid(format!(
            "input `{name}` shape {shape:?} needs {expected} elements, `data` has {}",
            data.len()
        )));
    }
    let bad = |i: usize, v: &dyn fmt::Display| {
        InferError::invalid(format!("input `{name}` element {i}: {v} is not a valid {datatype} value"))
    };
    let kind_error = |data: &FlatData| {
        let first: String = match data {
            FlatData::Bools(v) => v[0].to_string(),
            FlatData::Numbers(v) => describe(&v[0]),
            FlatData::Strings(v) => format!("{:?}", v[0].chars().take(32).collect::<String>()),
            FlatData::Empty => String::new(),
        };
        bad(0, &first)
    };
    macro_rules! numbers {
        () => {
            match &data {
                FlatData::Numbers(v) => v.as_slice(),
                FlatData::Empty => &[],
                other => return Err(kind_error(other)),
            }
        };
    }
    macro_rules! pack_int {
        ($ty:ty) => {{
            let values = numbers!();
            let mut out = Vec::with_capacity(expected * std::mem::size_of::<$ty>());
            for (i, v) in values.iter().enumerate() {
                let x: $ty = match *v {
                    JsonNumber::Uint(u) => <$ty>::try_from(u).map_err(|_| bad(i, &describe(v)))?,
                    JsonNumber::Int(s) => <$ty>::try_from(s).map_err(|_| bad(i, &describe(v)))?,
                    JsonNumber::Float(_) => return Err(bad(i, &describe(v))),
                };
                out.extend_from_slice(&x.to_le_bytes());
            }
            TensorData::Fixed(Bytes::from(out))
        }};
    }
    macro_rules! pack_float {
        ($ty:ty) => {{
            let values = numbers!();
            let mut out = Vec::with_capacity(expected * std::mem::size_of::<$ty>());
            for v in values {
                let x: $ty = match *v {
                    JsonNumber::Float(f) => f as $ty,
                    JsonNumber::Uint(u) => u as $ty,
                    JsonNumber::Int(s) => s as $ty,
                };
                out.extend_from_slice(&x.to_le_bytes());
            }
            TensorData::Fixed(Bytes::from(out))
        }};
    }
    let packed = match datatype {
        DataType::Bool => match data {
            FlatData::Bools(v) => TensorData::Fixed(Bytes::from(v.into_iter().map(u8::from).collect::<Vec<u8>>())),
            FlatData::Empty => TensorData::Fixed(Bytes::new()),
            other => return Err(kind_error(&other)),
        },
        DataType::Uint8 => pack_int!(u8),
        DataType::Uint16 => pack_int!(u16),
        DataType::Uint32 => pack_int!(u32),
        DataType::Uint64 => pack_int!(u64),
        DataType::Int8 => pack_int!(i8),
        DataType::Int16 => pack_int!(i16),
        DataType::Int32 => pack_int!(i32),
        DataType::Int64 => pack_int!(i64),
        DataType::Fp32 => pack_float!(f32),
        DataType::Fp64 => pack_float!(f64),
        DataType::Fp16 | DataType::Bf16 => {
            return Err(InferError::invalid(format!(
                "input `{name}`: {datatype} data must use the binary tensor extension, not JSON"
            )));
        }
        DataType::Bytes => match data {
            FlatData::Strings(v) => TensorData::Strings(v.into_iter().map(Bytes::from).collect()),
            FlatData::Empty => TensorData::Strings(Vec::new()),
            other => return Err(kind_error(&other)),
        },
    };
    Tensor::new(datatype, shape, packed).map_err(|e| InferError::invalid(format!("input `{name}`: {e}")))
}

/// An FP32 tensor's values as `datatype` (FP16 or BF16, rounded to nearest); any other tensor unchanged. v1
/// `:predict` reads half-precision inputs as FP32 JSON numbers and narrows them so, since it has no binary form.
pub fn narrow_floats(name: &str, tensor: Tensor, datatype: DataType) -> Result<Tensor, InferError> {
    if tensor.datatype() != DataType::Fp32 || !matches!(datatype, DataType::Fp16 | DataType::Bf16) {
        return Ok(tensor);
    }
    let TensorData::Fixed(bytes) = tensor.data() else { return Ok(tensor) };
    let values = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    let narrowed: Vec<u8> = if datatype == DataType::Fp16 {
        values.flat_map(|v| half::f16::from_f32(v).to_le_bytes()).collect()
    } else {
        values.flat_map(|v| half::bf16::from_f32(v).to_le_bytes()).collect()
    };
    Tensor::new(datatype, tensor.shape().to_vec(), TensorData::Fixed(Bytes::from(narrowed)))
        .map_err(|e| InferError::invalid(format!("input `{name}`: {e}")))
}

/// Packs the JSON text of a `data` field (a flat or nested array in row-major order, or one scalar) straight into a
/// tensor of `datatype` and `shape`: each value is checked and written as it is parsed, into a buffer sized by
/// the shape (and by how many values the text can hold, whatever the shape claims), so decoding holds the tensor
/// and nothing beside it. Parsing into [`FlatData`] first (16 bytes a number, in a vector grown by doubling)
/// grew the server by 13.6 times a 62 MiB body of zeros. The same values are accepted and refused as by
/// [`tensor_from_json`]. `markers`: the text went through [`non_finite_tokens_as_markers`], so its marker
/// strings stand for NaN and ±Infinity (v2); otherwise they are plain strings (v1 reads no bare tokens).
pub fn tensor_from_json_text(
    name: &str,
    datatype: DataType,
    shape: Vec<usize>,
    text: &str,
    markers: bool,
    allowance: &PackAllowance,
) -> Result<Tensor, InferError> {
    // A value takes at least one character and a separator, a string (`"",`) three.
    let room = if datatype.size_of().is_some() { text.len() / 2 + 1 } else { text.len() / 3 + 1 };
    let mut packer = DataPacker::new(name, datatype, shape, room, markers, allowance)?;
    let mut parser = serde_json::Deserializer::from_str(text);
    let parsed = packer.seed().deserialize(&mut parser).and_then(|()| parser.end());
    if let Some(error) = packer.packer.error.take() {
        return Err(error);
    }
    parsed.map_err(|e| InferError::invalid(format!("input `{name}`: malformed `data`: {e}")))?;
    packer.finish()
}

/// What the JSON `data` of one request may still take once packed, shared by its inputs in the order they are
/// packed: [`decode_growth_allowed`](ferroserve_proto::limits::decode_growth_allowed) of the body, so that the
/// body and all its tensors stay within the request footprint. Each input alone under the cap was not enough: two
/// FP64 inputs of 32 MiB of `0,` took 256 MiB beside their 64 MiB body.
pub struct PackAllowance {
    allowed: usize,
    left: Cell<usize>,
}

impl PackAllowance {
    /// The allowance of a request whose body (the JSON, or the whole body it came in) has `len` bytes.
    pub fn for_body(len: usize) -> Self {
        let allowed = ferroserve_proto::limits::decode_growth_allowed(len);
        PackAllowance { allowed, left: Cell::new(allowed) }
    }

    /// Gives back what a packer took and did not use (its data was `null`).
    pub fn give_back(&self, bytes: usize) {
        self.left.set((self.left.get() + bytes).min(self.allowed));
    }

    /// Takes what input `name`'s shape claims once packed (a BYTES element is a 32-byte handle before its text),
    /// before anything is reserved for it; refused past what is left. JSON packs up to 4 bytes a character (FP64
    /// `0,`): tensors that large belong in the binary extension.
    fn take(&self, name: &str, datatype: DataType, shape: &[usize], expected: usize) -> Result<usize, InferError> {
        let handle = datatype.size_of().unwrap_or(std::mem::size_of::<Bytes>());
        let decoded = expected.saturating_mul(handle);
        let left = self.left.get();
        if decoded <= left {
            self.left.set(left - decoded);
            return Ok(decoded);
        }
        let others = if left < self.allowed { format!(" ({left} bytes of it are left)") } else { String::new() };
        Err(InferError::invalid(format!(
            "input `{name}`: shape {shape:?} of {datatype} is {decoded} bytes once decoded, more than the {} MiB that \
             JSON data may take in this request{others}; send large tensors with the binary tensor data extension",
            self.allowed >> 20
        )))
    }
}

/// Packs one `data` value into a tensor while the JSON around it is parsed, for the callers that meet `data`
/// inside a larger document and know its datatype and shape by then ([`tensor_from_json_text`] otherwise). A value
/// that does not fit the input (wrong kind, out of range, too many) stops the packing, not the parse: the rest of
/// the value is skipped, and [`DataPacker::finish`] answers with the reason, so the caller can report it in turn.
pub struct DataPacker<'a> {
    packer: Packer<'a>,
    /// What it took from the request's allowance.
    claimed: usize,
}

impl<'a> DataPacker<'a> {
    /// A packer for `shape`'s elements of `datatype`, with room reserved for at most `room` of them (the buffer
    /// grows as values arrive, never past the shape: what a shape claims is not reserved before the text holds it).
    /// What the shape claims once packed is taken from the request's `allowance` first.
    pub fn new(
        name: &'a str,
        datatype: DataType,
        shape: Vec<usize>,
        room: usize,
        markers: bool,
        allowance: &PackAllowance,
    ) -> Result<Self, InferError> {
        if matches!(datatype, DataType::Fp16 | DataType::Bf16) {
            return Err(InferError::invalid(format!(
                "input `{name}`: {datatype} data must use the binary tensor extension, not JSON"
            )));
        }
        let expected: usize = shape.iter().product();
        let claimed = allowance.take(name, datatype, &shape, expected)?;
        let room = expected.min(room);
        let sink = match datatype.size_of() {
            Some(size) if expected.saturating_mul(size) <= LARGE_TENSOR => {
                Sink::Small(Vec::with_capacity(room.saturating_mul(size)))
            }
            Some(size) => Sink::Large(
                BodyBuffer::with_capacity(room.saturating_mul(size))
                    .map_err(|e| InferError::Overloaded(format!("cannot hold input `{name}`: {e}")))?,
            ),
            None => Sink::Strings(Vec::with_capacity(room)),
        };
        Ok(DataPacker {
            claimed,
            packer: Packer { name, datatype, shape, expected, count: 0, sink, markers, error: None },
        })
    }

    /// What it took from the request's allowance (given back when its data turns out to be `null`).
    pub fn claimed(&self) -> usize {
        self.claimed
    }

    /// The seed that reads one `data` value into the packer.
    pub fn seed(&mut self) -> Pack<'_, 'a> {
        Pack { packer: &mut self.packer, depth: 0 }
    }

    /// The tensor, or why the data did not fit the input.
    pub fn finish(self) -> Result<Tensor, InferError> {
        let Packer { name, datatype, shape, expected, count, sink, error, .. } = self.packer;
        if let Some(error) = error {
            return Err(error);
        }
        if count != expected {
            return Err(InferError::invalid(format!(
                "input `{name}` shape {shape:?} needs {expected} elements, `data` has {count}"
            )));
        }
        let data = match sink {
            Sink::Small(bytes) => TensorData::Fixed(Bytes::from(bytes)),
            Sink::Large(bytes) => TensorData::Fixed(bytes.freeze()),
            Sink::Strings(strings) => TensorData::Strings(strings),
        };
        Tensor::new(datatype, shape, data).map_err(|e| InferError::invalid(format!("input `{name}`: {e}")))
    }
}

/// Past this many bytes a tensor is packed into a [`BodyBuffer`], which grows without a copy.
const LARGE_TENSOR: usize = 1 << 20;

/// Where a [`DataPacker`] writes the values.
enum Sink {
    /// A small fixed-size tensor's little-endian bytes.
    Small(Vec<u8>),
    /// A large one's, in a buffer that grows by moving pages, so the tensor is held once while it fills (a vector
    /// grown by doubling holds one and a half times it while it moves).
    Large(BodyBuffer),
    /// BYTES elements.
    Strings(Vec<Bytes>),
}

impl Sink {
    /// Appends one fixed-size value.
    #[inline]
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Small(out) => {
                out.extend_from_slice(bytes);
                Ok(())
            }
            Sink::Large(out) => out.extend(bytes),
            Sink::Strings(_) => Ok(()),
        }
    }
}

/// One value of a `data` array as the parser meets it, before it is checked against the datatype.
enum Scalar<'a> {
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(std::borrow::Cow<'a, str>),
    /// `null`: NaN for a float input (the KServe SDK writes NaN so, through `orjson`, and KServe reads it back so),
    /// refused for any other.
    Null,
    /// A JSON value no tensor element can be (an object), named for the error.
    Other(&'static str),
}

struct Packer<'a> {
    name: &'a str,
    datatype: DataType,
    shape: Vec<usize>,
    expected: usize,
    count: usize,
    sink: Sink,
    /// Whether marker strings stand for non-finite floats.
    markers: bool,
    /// Why packing stopped, when the reason is the data and not the JSON; the rest of the value is skipped.
    error: Option<InferError>,
}

impl Packer<'_> {
    fn push(&mut self, value: Scalar<'_>) -> Result<(), InferError> {
        let (name, datatype, i) = (self.name, self.datatype, self.count);
        if i == self.expected {
            return Err(InferError::invalid(format!(
                "input `{name}` shape {:?} needs {} elements, `data` has more",
                self.shape, self.expected
            )));
        }
        let value = match value {
            Scalar::Str(s) => match non_finite_marker(&s).filter(|_| self.markers) {
                Some(f) => Scalar::Float(f),
                None => Scalar::Str(s),
            },
            Scalar::Null if matches!(datatype, DataType::Fp32 | DataType::Fp64) => Scalar::Float(f64::NAN),
            other => other,
        };
        macro_rules! int {
            ($out:ident, $ty:ty) => {
                match value {
                    Scalar::Uint(u) => <$ty>::try_from(u).ok(),
                    Scalar::Int(s) => <$ty>::try_from(s).ok(),
                    _ => None,
                }
                .map(|x| $out.put(&x.to_le_bytes()))
            };
        }
        macro_rules! float {
            ($out:ident, $ty:ty) => {
                match value {
                    Scalar::Float(f) => Some(f as $ty),
                    Scalar::Uint(u) => Some(u as $ty),
                    Scalar::Int(s) => Some(s as $ty),
                    _ => None,
                }
                .map(|x| $out.put(&x.to_le_bytes()))
            };
        }
        let packed = match &mut self.sink {
            Sink::Strings(out) => match value {
                Scalar::Str(s) => {
                    out.push(Bytes::from(s.into_owned()));
                    self.count += 1;
                    return Ok(());
                }
                _ => None,
            },
            out => match datatype {
                DataType::Bool => match value {
                    Scalar::Bool(b) => Some(out.put(&[u8::from(b)])),
                    _ => None,
                },
                DataType::Uint8 => int!(out, u8),
                DataType::Uint16 => int!(out, u16),
                DataType::Uint32 => int!(out, u32),
                DataType::Uint64 => int!(out, u64),
                DataType::Int8 => int!(out, i8),
                DataType::Int16 => int!(out, i16),
                DataType::Int32 => int!(out, i32),
                DataType::Int64 => int!(out, i64),
                DataType::Fp32 => float!(out, f32),
                DataType::Fp64 => float!(out, f64),
                // Refused before parsing.
                DataType::Fp16 | DataType::Bf16 | DataType::Bytes => None,
            },
        };
        match packed {
            Some(Ok(())) => {
                self.count += 1;
                Ok(())
            }
            Some(Err(e)) => Err(InferError::Overloaded(format!("cannot hold input `{name}`: {e}"))),
            None => {
                let shown = match &value {
                    Scalar::Bool(b) => b.to_string(),
                    Scalar::Int(s) => s.to_string(),
                    Scalar::Uint(u) => u.to_string(),
                    Scalar::Float(f) => f.to_string(),
                    Scalar::Str(s) => format!("{:?}", s.chars().take(32).collect::<String>()),
                    Scalar::Null => "null".to_string(),
                    Scalar::Other(what) => what.to_string(),
                };
                Err(InferError::invalid(format!("input `{name}` element {i}: {shown} is not a valid {datatype} value")))
            }
        }
    }
}

/// The seed and visitor of a [`DataPacker`]: flattens nested arrays, handing each value to the packer; once the
/// packer has refused one, it reads on without packing, so the JSON around it is still checked.
pub struct Pack<'a, 'b> {
    packer: &'a mut Packer<'b>,
    depth: usize,
}

impl Pack<'_, '_> {
    fn push<E: de::Error>(self, value: Scalar<'_>) -> Result<(), E> {
        if self.packer.error.is_none()
            && let Err(error) = self.packer.push(value)
        {
            self.packer.error = Some(error);
        }
        Ok(())
    }
}

impl<'de> de::DeserializeSeed<'de> for Pack<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Pack<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number, bool, string or (nested) array of them")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.push(Scalar::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push(if v >= 0 { Scalar::Uint(v as u64) } else { Scalar::Int(v) })
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push(Scalar::Uint(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.push(Scalar::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.push(Scalar::Str(std::borrow::Cow::Borrowed(v)))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<(), E> {
        self.push(Scalar::Str(std::borrow::Cow::Owned(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.push(Scalar::Null)
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<de::IgnoredAny, de::IgnoredAny>()?.is_some() {}
        self.push(Scalar::Other("an object"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.packer.error.is_none() && self.depth >= MAX_DEPTH {
            self.packer.error = Some(InferError::invalid(format!(
                "input `{}`: `data` is nested deeper than {MAX_DEPTH} levels",
                self.packer.name
            )));
        }
        if self.packer.error.is_some() {
            while seq.next_element::<de::IgnoredAny>()?.is_some() {}
            return Ok(());
        }
        while seq.next_element_seed(Pack { packer: &mut *self.packer, depth: self.depth + 1 })?.is_some() {}
        Ok(())
    }
}

/// The shape of a nested JSON array (`[[1, 2], [3, 4]]` is `[2, 2]`), read from its text without building it and
/// checked to be rectangular; `None` when it holds an object (rows keyed by input name), which the caller reads
/// another way. A scalar has shape `[]`.
pub fn shape_of_json_text(name: &str, text: &str) -> Result<Option<Vec<usize>>, InferError> {
    let mut walk = ShapeWalk { dims: Vec::new(), leaf: None, object: false, ragged: false };
    let mut parser = serde_json::Deserializer::from_str(text);
    let parsed = de::Deserializer::deserialize_any(&mut parser, ShapeAt { walk: &mut walk, depth: 0 })
        .and_then(|()| parser.end());
    if walk.object {
        return Ok(None);
    }
    let ragged = || InferError::invalid(format!("input `{name}` is not a rectangular array"));
    if walk.ragged {
        return Err(ragged());
    }
    parsed.map_err(|e| InferError::invalid(format!("input `{name}`: malformed data: {e}")))?;
    let dims: Vec<usize> = walk.dims.into_iter().map(|d| d.unwrap_or(0)).collect();
    // Every value sits at the same depth, below every array (an empty array leaves no value to check).
    if walk.leaf.is_some_and(|leaf| leaf != dims.len()) {
        return Err(ragged());
    }
    Ok(Some(dims))
}

struct ShapeWalk {
    /// The length of the arrays at each depth, from the first one met there.
    dims: Vec<Option<usize>>,
    /// The depth of the values.
    leaf: Option<usize>,
    object: bool,
    ragged: bool,
}

struct ShapeAt<'a> {
    walk: &'a mut ShapeWalk,
    depth: usize,
}

impl ShapeAt<'_> {
    fn value<E: de::Error>(self) -> Result<(), E> {
        match self.walk.leaf {
            Some(leaf) if leaf != self.depth => self.stop(),
            _ => {
                self.walk.leaf = Some(self.depth);
                Ok(())
            }
        }
    }

    fn stop<E: de::Error>(self) -> Result<(), E> {
        self.walk.ragged = true;
        Err(E::custom("not a rectangular array"))
    }
}

impl<'de> de::DeserializeSeed<'de> for ShapeAt<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ShapeAt<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number, bool, string or (nested) array of them")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.value()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.value()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.value()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.value()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.value()
    }
    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.walk.object = true;
        Err(de::Error::custom("an object"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(de::Error::custom(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        if self.walk.leaf.is_some_and(|leaf| leaf <= self.depth) {
            return self.stop();
        }
        let mut count = 0usize;
        while seq.next_element_seed(ShapeAt { walk: &mut *self.walk, depth: self.depth + 1 })?.is_some() {
            count += 1;
        }
        if self.walk.dims.len() <= self.depth {
            self.walk.dims.resize(self.depth + 1, None);
        }
        match self.walk.dims[self.depth] {
            Some(len) if len != count => self.stop(),
            _ => {
                self.walk.dims[self.depth] = Some(count);
                Ok(())
            }
        }
    }
}

fn describe(v: &JsonNumber) -> String {
    match v {
        JsonNumber::Int(i) => i.to_string(),
        JsonNumber::Uint(u) => u.to_string(),
        JsonNumber::Float(f) => f.to_string(),
    }
}

/// Serializes a tensor's elements as a flat JSON array, straight from its raw bytes. NaN and ±Infinity become
/// `null` (all plain JSON allows); [`TokenDataView`] writes them as Triton does.
pub struct DataView<'a>(pub &'a Tensor);

/// As [`DataView`], but NaN, Infinity and -Infinity are written as those bare tokens, as Triton writes them
/// (rapidjson's NaN/Inf flags) and as tritonclient (python-rapidjson) reads them back (the KServe SDK's orjson
/// does not). It needs a serde_json serializer built with [`NonFiniteTokens`]: the values travel as out-of-band
/// `i128` markers.
pub struct TokenDataView<'a>(pub &'a Tensor);

/// Elements `range` of a tensor's data as [`TokenDataView`] writes them: a part of its array, for answers written
/// in chunks.
pub struct TokenDataRange<'a>(pub &'a Tensor, pub std::ops::Range<usize>);

impl serde::Serialize for DataView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_data(self.0, 0..self.0.element_count(), serializer, false)
    }
}

impl serde::Serialize for TokenDataView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_data(self.0, 0..self.0.element_count(), serializer, true)
    }
}

impl serde::Serialize for TokenDataRange<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_data(self.0, self.1.clone(), serializer, true)
    }
}

/// `i128` values no response field can hold (every integer tensor type fits in 64 bits), so the formatter can
/// tell a non-finite float's marker from a number.
const NAN_MARKER: i128 = i128::MIN;
const INFINITY_MARKER: i128 = i128::MIN + 1;
const NEG_INFINITY_MARKER: i128 = i128::MIN + 2;

/// A float element: itself when finite; a marker when non-finite and tokens were asked for.
struct Float {
    value: f64,
    single: bool,
    tokens: bool,
}

impl serde::Serialize for Float {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let v = self.value;
        match (v.is_finite(), self.tokens) {
            (false, true) if v.is_nan() => serializer.serialize_i128(NAN_MARKER),
            (false, true) if v > 0.0 => serializer.serialize_i128(INFINITY_MARKER),
            (false, true) => serializer.serialize_i128(NEG_INFINITY_MARKER),
            // f32 through serialize_f32, so it prints with f32's shortest form (0.1, not 0.10000000149011612).
            _ if self.single => serializer.serialize_f32(v as f32),
            _ => serializer.serialize_f64(v),
        }
    }
}

/// The serde_json formatter for [`TokenDataView`]: compact JSON, with the non-finite markers written as the
/// tokens `NaN`, `Infinity` and `-Infinity`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NonFiniteTokens;

impl serde_json::ser::Formatter for NonFiniteTokens {
    fn write_i128<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, value: i128) -> std::io::Result<()> {
        match value {
            NAN_MARKER => writer.write_all(b"NaN"),
            INFINITY_MARKER => writer.write_all(b"Infinity"),
            NEG_INFINITY_MARKER => writer.write_all(b"-Infinity"),
            other => serde_json::ser::CompactFormatter.write_i128(writer, other),
        }
    }
}

/// Writes elements `range` of `tensor` (clamped to its elements) as one JSON array.
fn serialize_data<S: Serializer>(
    tensor: &Tensor,
    range: std::ops::Range<usize>,
    serializer: S,
    tokens: bool,
) -> Result<S::Ok, S::Error> {
    {
        let end = range.end.min(tensor.element_count());
        let range = range.start.min(end)..end;
        let mut seq = serializer.serialize_seq(Some(range.len()))?;
        match tensor.data() {
            TensorData::Strings(items) => {
                for s in &items[range] {
                    seq.serialize_element(&String::from_utf8_lossy(s))?;
                }
            }
            TensorData::Fixed(bytes) => {
                let size = tensor.datatype().size_of().unwrap_or(1);
                let bytes = bytes.get(range.start * size..range.end * size).unwrap_or_default();
                macro_rules! each {
                    ($ty:ty, $n:expr) => {
                        for c in bytes.chunks_exact($n) {
                            let mut a = [0u8; $n];
                            a.copy_from_slice(c);
                            seq.serialize_element(&<$ty>::from_le_bytes(a))?;
                        }
                    };
                }
                match tensor.datatype() {
                    DataType::Bool => {
                        for &b in bytes.iter() {
                            seq.serialize_element(&(b != 0))?;
                        }
                    }
                    DataType::Uint8 => each!(u8, 1),
                    DataType::Uint16 => each!(u16, 2),
                    DataType::Uint32 => each!(u32, 4),
                    DataType::Uint64 => each!(u64, 8),
                    DataType::Int8 => each!(i8, 1),
                    DataType::Int16 => each!(i16, 2),
                    DataType::Int32 => each!(i32, 4),
                    DataType::Int64 => each!(i64, 8),
                    DataType::Fp32 => {
                        for c in bytes.chunks_exact(4) {
                            let value = f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
                            seq.serialize_element(&Float { value, single: true, tokens })?;
                        }
                    }
                    DataType::Fp64 => {
                        for c in bytes.chunks_exact(8) {
                            let mut a = [0u8; 8];
                            a.copy_from_slice(c);
                            seq.serialize_element(&Float { value: f64::from_le_bytes(a), single: false, tokens })?;
                        }
                    }
                    // v2 sends these in binary; v1 `:predict` has only JSON, where they are numbers as any float.
                    DataType::Fp16 => {
                        for c in bytes.chunks_exact(2) {
                            let value = half::f16::from_le_bytes([c[0], c[1]]).to_f64();
                            seq.serialize_element(&Float { value, single: true, tokens })?;
                        }
                    }
                    DataType::Bf16 => {
                        for c in bytes.chunks_exact(2) {
                            let value = half::bf16::from_le_bytes([c[0], c[1]]).to_f64();
                            seq.serialize_element(&Float { value, single: true, tokens })?;
                        }
                    }
                    DataType::Bytes => {}
                }
            }
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(json: &str) -> FlatData {
        serde_json::from_str::<FlatData>(json).unwrap()
    }

    #[test]
    fn non_finite_tokens_read_back_as_floats_and_strings_stay_strings() {
        let text = br#"{"a": [NaN, Infinity, -Infinity, 1.5], "s": ["NaN", "x\"NaN", "-Infinity"]}"#;
        let rewritten = non_finite_tokens_as_markers(text, usize::MAX).unwrap().unwrap();
        // Six tokens counted (three inside strings), each bounded at 8 more characters: the copy never grows.
        assert!(rewritten.len() <= text.len() + 6 * 8 && rewritten.capacity() == text.len() + 6 * 8);
        let v: serde_json::Value = serde_json::from_slice(&rewritten).unwrap();
        assert_eq!(v["s"], serde_json::json!(["NaN", "x\"NaN", "-Infinity"]));
        let FlatData::Numbers(n) = serde_json::from_value::<FlatData>(v["a"].clone()).unwrap() else { panic!() };
        assert!(matches!(n[0], JsonNumber::Float(f) if f.is_nan()));
        assert_eq!(
            &n[1..],
            [JsonNumber::Float(f64::INFINITY), JsonNumber::Float(f64::NEG_INFINITY), JsonNumber::Float(1.5)]
        );
        assert_eq!(non_finite_tokens_as_markers(br#"{"a": [1, 2], "b": "plain"}"#, 0).unwrap(), None);
        // A body of tokens grows up to 3 times when rewritten: refused before the copy when that passes the room.
        let tokens = b"[NaN,NaN,NaN]";
        assert!(non_finite_tokens_as_markers(tokens, tokens.len() + 24).unwrap().is_some());
        let e = non_finite_tokens_as_markers(tokens, tokens.len() + 23).unwrap_err().to_string();
        assert!(e.contains("3 bare NaN or Infinity tokens") && e.contains("binary tensor data extension"), "{e}");
        // Tokens inside strings are not bare: however many, they are not refused for want of room.
        assert_eq!(non_finite_tokens_as_markers(br#"["NaNNaNNaN", "Infinity"]"#, 0).unwrap(), None);
    }

    #[test]
    fn inputs_of_one_request_share_its_packing_allowance() {
        // Beside a 64 MiB body, 160 MiB may be packed: two 80 MiB claims fit, a third element does not.
        let allowance = PackAllowance::for_body(64 << 20);
        let claim = |n: usize| DataPacker::new("x", DataType::Fp64, vec![n], 1, true, &allowance).map(|_| ());
        claim(10 << 20).unwrap();
        claim(10 << 20).unwrap();
        let e = claim(1).unwrap_err().to_string();
        assert!(
            e.contains("more than the 160 MiB that JSON data may take") && e.contains("0 bytes of it are left"),
            "{e}"
        );
        // A refused claim takes nothing.
        let allowance = PackAllowance::for_body(0);
        let claim = |n: usize| DataPacker::new("x", DataType::Fp32, vec![n], 1, true, &allowance).map(|_| ());
        assert!(claim(49 << 20).is_err());
        claim(48 << 20).unwrap();
    }

    #[test]
    fn non_finite_floats_write_as_tokens_only_when_asked() {
        let t = Tensor::new(
            DataType::Fp32,
            vec![4],
            TensorData::Fixed(Bytes::from(
                [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.1]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<u8>>(),
            )),
        )
        .unwrap();
        assert_eq!(serde_json::to_string(&DataView(&t)).unwrap(), "[null,null,null,0.1]");
        let mut out = Vec::new();
        let mut ser = serde_json::Serializer::with_formatter(&mut out, NonFiniteTokens);
        serde::Serialize::serialize(&TokenDataView(&t), &mut ser).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "[NaN,Infinity,-Infinity,0.1]");
    }

    #[test]
    fn half_precision_writes_as_numbers_and_narrows_from_fp32() {
        let halves: Vec<u8> =
            [0.75f32, -1.5, f32::INFINITY].iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
        let t = Tensor::new(DataType::Fp16, vec![3], TensorData::Fixed(Bytes::from(halves))).unwrap();
        assert_eq!(serde_json::to_string(&DataView(&t)).unwrap(), "[0.75,-1.5,null]");
        let b: Vec<u8> = [2.5f32, -0.125].iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect();
        let t = Tensor::new(DataType::Bf16, vec![2], TensorData::Fixed(Bytes::from(b))).unwrap();
        assert_eq!(serde_json::to_string(&DataView(&t)).unwrap(), "[2.5,-0.125]");
        let allowance = PackAllowance::for_body(64);
        let fp32 = tensor_from_json_text("c", DataType::Fp32, vec![2], "[1.5, 70000]", false, &allowance).unwrap();
        let narrowed = narrow_floats("c", fp32, DataType::Fp16).unwrap();
        assert_eq!(narrowed.datatype(), DataType::Fp16);
        let TensorData::Fixed(bytes) = narrowed.data() else { panic!() };
        let values: Vec<f32> = bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
        assert_eq!(values, [1.5, f32::INFINITY]);
    }

    #[test]
    fn null_is_nan_for_float_inputs_only() {
        let allowance = PackAllowance::for_body(1024);
        for datatype in [DataType::Fp32, DataType::Fp64] {
            let t = tensor_from_json_text("x", datatype, vec![2], "[null, 1]", true, &allowance).unwrap();
            let TensorData::Fixed(bytes) = t.data() else { panic!() };
            let first = if datatype == DataType::Fp32 {
                f64::from(f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
            } else {
                f64::from_le_bytes(bytes[..8].try_into().unwrap())
            };
            assert!(first.is_nan(), "{datatype}");
        }
        for datatype in [DataType::Int32, DataType::Bool, DataType::Bytes] {
            let e = tensor_from_json_text("x", datatype, vec![1], "[null]", true, &allowance).unwrap_err();
            assert!(e.to_string().contains("null is not a valid"), "{datatype}: {e}");
        }
    }

    #[test]
    fn flattens_nested_arrays() {
        assert_eq!(
            flat("[[1, 2], [3, -4.5]]"),
            FlatData::Numbers(vec![
                JsonNumber::Uint(1),
                JsonNumber::Uint(2),
                JsonNumber::Uint(3),
                JsonNumber::Float(-4.5)
            ])
        );
        assert_eq!(flat(r#"[["a"], ["b"]]"#).len(), 2);
        assert!(serde_json::from_str::<FlatData>(r#"[true, ["a"], 1.5]"#).is_err());
        assert_eq!(flat("[]"), FlatData::Empty);
        let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert!(serde_json::from_str::<FlatData>(&deep).is_err());
    }

    #[test]
    fn packs_with_range_checks() {
        let t = tensor_from_json("x", DataType::Int8, vec![2], flat("[-128, 127]")).unwrap();
        assert_eq!(t.as_fixed().unwrap().as_ref(), &[0x80, 0x7f]);
        let e = tensor_from_json("x", DataType::Int8, vec![1], flat("[128]")).unwrap_err();
        assert!(e.to_string().contains("128 is not a valid INT8"));
        assert!(tensor_from_json("x", DataType::Uint32, vec![1], flat("[-1]")).is_err());
        assert!(tensor_from_json("x", DataType::Int32, vec![1], flat("[1.5]")).is_err());
        assert!(tensor_from_json("x", DataType::Bool, vec![1], flat("[1]")).is_err());
        assert!(tensor_from_json("x", DataType::Fp16, vec![1], flat("[1]")).is_err());
        let e = tensor_from_json("x", DataType::Fp32, vec![2, 3], flat("[1,2,3,4,5]")).unwrap_err();
        assert_eq!(e.to_string(), "input `x` shape [2, 3] needs 6 elements, `data` has 5");
    }

    #[test]
    fn serializes_from_raw_bytes() {
        let t = Tensor::from_f32(vec![3], &[1.5, -2.0, 0.1]).unwrap();
        assert_eq!(serde_json::to_string(&DataView(&t)).unwrap(), "[1.5,-2.0,0.1]");
        let b = Tensor::from_le_bytes(DataType::Bool, vec![2], vec![1u8, 0]).unwrap();
        assert_eq!(serde_json::to_string(&DataView(&b)).unwrap(), "[true,false]");
    }

    #[test]
    fn packs_text_with_range_checks_and_refuses_surplus_values_early() {
        let text = |dt, shape: Vec<usize>, json: &str| {
            tensor_from_json_text("x", dt, shape, json, true, &PackAllowance::for_body(json.len()))
        };
        let t = text(DataType::Int8, vec![2], "[[-128], [127]]").unwrap();
        assert_eq!(t.as_fixed().unwrap().as_ref(), &[0x80, 0x7f]);
        let e = text(DataType::Int8, vec![1], "[128]").unwrap_err();
        assert!(e.to_string().contains("element 0: 128 is not a valid INT8"), "{e}");
        let e = text(DataType::Fp32, vec![2, 3], "[1,2,3,4,5]").unwrap_err();
        assert_eq!(e.to_string(), "input `x` shape [2, 3] needs 6 elements, `data` has 5");
        // Past the shape: refused at the first value too many; the rest is only skipped, and this reason comes first.
        let e = text(DataType::Fp32, vec![2], "[1, 2, 3, oops").unwrap_err();
        assert_eq!(e.to_string(), "input `x` shape [2] needs 2 elements, `data` has more");
        // A shape that claims a trillion elements is refused before anything is reserved; one under the cap
        // reserves what the text can hold, not what it claims.
        let e = text(DataType::Fp64, vec![1 << 40], "[1]").unwrap_err();
        assert!(e.to_string().contains("more than the 192 MiB that JSON data may take"), "{e}");
        let e = text(DataType::Bytes, vec![7 << 20], r#"[""]"#).unwrap_err();
        assert!(e.to_string().contains("more than the 192 MiB that JSON data may take"), "{e}");
        let e = text(DataType::Fp64, vec![24 << 20], "[1]").unwrap_err();
        assert!(e.to_string().contains("`data` has 1"), "{e}");
        let e = text(DataType::Fp32, vec![1], "[1").unwrap_err();
        assert!(e.to_string().contains("malformed `data`"), "{e}");
        let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert!(text(DataType::Fp32, vec![1], &deep).unwrap_err().to_string().contains("nested deeper"));
        let t = text(DataType::Bytes, vec![2], r#"["a", "\u00e9"]"#).unwrap();
        let strings = TensorData::Strings(vec![Bytes::from("a"), Bytes::from("é")]);
        assert_eq!(t, Tensor::new(DataType::Bytes, vec![2], strings).unwrap());
        let t = text(DataType::Fp32, vec![2], r#"["\u0000NaN", 1]"#).unwrap();
        assert!(f32::from_le_bytes(t.as_fixed().unwrap()[..4].try_into().unwrap()).is_nan());
        // Without markers (v1), the same text is a string.
        assert!(
            tensor_from_json_text(
                "x",
                DataType::Fp32,
                vec![2],
                r#"["\u0000NaN", 1]"#,
                false,
                &PackAllowance::for_body(0)
            )
            .is_err()
        );
        assert!(
            tensor_from_json_text(
                "x",
                DataType::Bytes,
                vec![1],
                r#"["\u0000NaN"]"#,
                false,
                &PackAllowance::for_body(0)
            )
            .is_ok()
        );
    }

    #[test]
    fn shapes_are_read_from_text_and_must_be_rectangular() {
        let shape = |text: &str| shape_of_json_text("x", text);
        assert_eq!(shape("[[1, 2, 3], [4, 5, 6]]").unwrap(), Some(vec![2, 3]));
        assert_eq!(shape("[[[\"a\"]], [[\"b\"]]]").unwrap(), Some(vec![2, 1, 1]));
        assert_eq!(shape("[[], []]").unwrap(), Some(vec![2, 0]));
        assert_eq!(shape("[]").unwrap(), Some(vec![0]));
        assert_eq!(shape("7").unwrap(), Some(vec![]));
        assert_eq!(shape(r#"[{"a": 1}, {"a": 2}]"#).unwrap(), None);
        for ragged in ["[[1, 2], [3]]", "[[1], 2]", "[1, [2]]", "[[], [1]]", "[[1, 2], [[3], [4]]]", "[[], 1]"] {
            let e = shape(ragged).unwrap_err();
            assert!(e.to_string().contains("not a rectangular array"), "{ragged}: {e}");
        }
        assert!(shape("[[1, 2]").unwrap_err().to_string().contains("malformed"));
        let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert!(shape(&deep).is_err());
    }

    /// A JSON value for the property test: mostly of one kind, as a tensor's data is.
    fn json_values() -> impl proptest::strategy::Strategy<Value = Vec<serde_json::Value>> {
        use proptest::prelude::*;
        use serde_json::Value;
        let one = prop_oneof![
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (0u64..300).prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            "[a-z]{0,3}".prop_map(Value::from),
        ];
        (one.clone(), 0usize..12, proptest::option::of((0usize..12, one))).prop_map(|(first, n, stranger)| {
            // The same kind as `first`, varied by parsing its text with a different number.
            let mut values: Vec<Value> = (0..n)
                .map(|i| match &first {
                    Value::Number(x) if x.is_f64() => Value::from(x.as_f64().unwrap_or(0.0) + i as f64),
                    Value::Number(x) if x.is_u64() => Value::from(x.as_u64().unwrap_or(0).wrapping_add(i as u64)),
                    Value::Number(x) => Value::from(x.as_i64().unwrap_or(0).wrapping_sub(i as i64)),
                    other => other.clone(),
                })
                .collect();
            if let Some((at, value)) = stranger {
                values.insert(at.min(values.len()), value);
            }
            values
        })
    }

    proptest::proptest! {
        /// Packing the text straight into the tensor accepts and refuses what flattening first does, and builds
        /// the same tensor.
        #[test]
        fn packing_text_matches_flattening_first(
            values in json_values(),
            which in 0usize..13,
            nested: bool,
            extra in 0usize..2,
        ) {
            let datatypes = [
                DataType::Bool, DataType::Uint8, DataType::Uint16, DataType::Uint32, DataType::Uint64,
                DataType::Int8, DataType::Int16, DataType::Int32, DataType::Int64, DataType::Fp32,
                DataType::Fp64, DataType::Bytes, DataType::Fp16,
            ];
            let datatype = datatypes[which];
            let json = if nested {
                serde_json::to_string(&values.iter().map(|v| vec![v.clone()]).collect::<Vec<_>>()).unwrap()
            } else {
                serde_json::to_string(&values).unwrap()
            };
            let shape = vec![values.len() + extra];
            let flattened = serde_json::from_str::<FlatData>(&json)
                .map_err(|e| InferError::invalid(e.to_string()))
                .and_then(|flat| tensor_from_json("x", datatype, shape.clone(), flat));
            let packed = tensor_from_json_text("x", datatype, shape, &json, true, &PackAllowance::for_body(json.len()));
            match (flattened, packed) {
                (Ok(a), Ok(b)) => proptest::prop_assert_eq!(a, b),
                (Err(_), Err(_)) => {}
                (a, b) => proptest::prop_assert!(false, "{json} as {datatype}: {:?} against {:?}", a.err(), b.err()),
            }
        }

        #[test]
        fn int64_json_round_trip(values in proptest::collection::vec(proptest::num::i64::ANY, 0..32)) {
            let json = serde_json::to_string(&values).unwrap();
            let t = tensor_from_json("x", DataType::Int64, vec![values.len()], flat(&json)).unwrap();
            proptest::prop_assert_eq!(serde_json::to_string(&DataView(&t)).unwrap(), json);
        }
    }
}
