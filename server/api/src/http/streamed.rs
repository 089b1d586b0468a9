//! Large v2 inference answers written as they are sent. The JSON text of the outputs is made in chunks of about
//! 256 KiB while hyper sends them, and binary parts go out as views of the output tensors, so an answer is never
//! held whole beside the tensors it comes from. Held whole, a 32 MiB string of control characters answered in JSON
//! (each byte a six-character escape, in a buffer grown by doubling) grew the server by 743 MiB, and a binary answer
//! was a copy of every output behind its JSON.
//!
//! The bytes are those [`super::codec::encode_response`] writes (a unit test holds the two together), and their
//! number is counted before the first chunk goes out (strings by the width of their escapes, numbers formatted into
//! a scratch buffer), so the answer has a `Content-Length` like any other.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use ferroserve_engine::{InferError, InferResponse};
use ferroserve_runtime::{Tensor, TensorData};
use http_body::{Frame, SizeHint};

use super::codec::OutputForm;
use crate::json_data::{NonFiniteTokens, TokenDataRange};

/// Roughly the largest chunk of JSON text made at once.
const CHUNK: usize = 256 * 1024;

/// Numbers written per chunk: 25 characters is about the longest a number takes (an FP64 with its comma).
const NUMBERS_PER_CHUNK: usize = CHUNK / 25;

/// One part of the answer, in order.
enum Piece {
    /// Small JSON text: the envelope, an output's name, datatype, shape and parameters.
    Text(Bytes),
    /// The elements of the JSON `data` array of the output at this index, without its brackets.
    Data(usize),
    /// A binary part: an output's bytes after the JSON.
    Raw(Bytes),
}

/// Where the writer is: the piece, and within a `Data` piece the element and (for a long string) its byte.
#[derive(Clone, Copy, Default)]
struct Cursor {
    piece: usize,
    element: usize,
    byte: usize,
}

/// A v2 answer laid out as pieces, written in chunks.
struct Layout {
    response: InferResponse,
    pieces: Vec<Piece>,
}

/// A large answer's body (an [`http_body::Body`] of known length), and how long its JSON part is when binary
/// parts follow it.
pub struct StreamedAnswer {
    layout: Layout,
    cursor: Cursor,
    remaining: u64,
    /// `Some(json length)` when binary data follows the JSON.
    pub json_length: Option<usize>,
}

impl StreamedAnswer {
    /// Lays out `response` with each output in its `forms` entry (one per output, in order), and counts its bytes
    /// ([`Layout::length`]).
    pub fn new(response: InferResponse, forms: Vec<OutputForm>) -> Result<Self, InferError> {
        let mut pieces = Vec::new();
        let mut text = BytesMut::new();
        let encode = |e: serde_json::Error| InferError::Internal(format!("cannot encode the response: {e}"));
        text.put_slice(b"{\"model_name\":");
        serde_json::to_writer((&mut text).writer(), &response.model_name).map_err(encode)?;
        text.put_slice(b",\"model_version\":");
        serde_json::to_writer((&mut text).writer(), &response.model_version).map_err(encode)?;
        if let Some(id) = &response.id {
            text.put_slice(b",\"id\":");
            serde_json::to_writer((&mut text).writer(), id).map_err(encode)?;
        }
        text.put_slice(b",\"outputs\":[");
        let mut raw = Vec::new();
        for (i, (output, form)) in response.outputs.iter().zip(forms).enumerate() {
            if i > 0 {
                text.put_u8(b',');
            }
            text.put_slice(b"{\"name\":");
            serde_json::to_writer((&mut text).writer(), &output.name).map_err(encode)?;
            text.put_slice(b",\"datatype\":");
            serde_json::to_writer((&mut text).writer(), output.tensor.datatype().as_str()).map_err(encode)?;
            text.put_slice(b",\"shape\":");
            serde_json::to_writer((&mut text).writer(), output.tensor.shape()).map_err(encode)?;
            match form {
                OutputForm::Json => {
                    text.put_slice(b",\"data\":[");
                    pieces.push(Piece::Text(text.split().freeze()));
                    pieces.push(Piece::Data(i));
                    text.put_slice(b"]}");
                }
                OutputForm::Binary(bytes) => {
                    text.put_slice(b",\"parameters\":{\"binary_data_size\":");
                    text.put_slice(bytes.len().to_string().as_bytes());
                    text.put_slice(b"}}");
                    raw.push(bytes);
                }
                OutputForm::Elsewhere => text.put_u8(b'}'),
            }
        }
        text.put_slice(b"]}");
        pieces.push(Piece::Text(text.freeze()));
        let binary: usize = raw.iter().map(Bytes::len).sum();
        let has_binary = !raw.is_empty();
        pieces.extend(raw.into_iter().map(Piece::Raw));
        let layout = Layout { response, pieces };
        let total = layout.length();
        let json_length = has_binary.then_some(total - binary);
        Ok(StreamedAnswer { layout, cursor: Cursor::default(), remaining: total as u64, json_length })
    }
}

impl Layout {
    /// How many bytes the answer takes, counted without making its chunks (numbers are formatted into one
    /// scratch buffer: their length is known no other way).
    fn length(&self) -> usize {
        let mut scratch = Vec::new();
        let mut piece = |piece: &Piece| match piece {
            Piece::Text(bytes) | Piece::Raw(bytes) => bytes.len(),
            Piece::Data(output) => data_length(&self.response.outputs[*output].tensor, &mut scratch),
        };
        self.pieces.iter().map(&mut piece).sum()
    }

    /// The next chunk from `cursor`, which it moves on; `None` at the end.
    fn chunk(&self, cursor: &mut Cursor) -> Option<Bytes> {
        loop {
            match self.pieces.get(cursor.piece)? {
                Piece::Text(text) | Piece::Raw(text) => {
                    cursor.piece += 1;
                    if !text.is_empty() {
                        return Some(text.clone());
                    }
                }
                Piece::Data(output) => {
                    let tensor = &self.response.outputs[*output].tensor;
                    if cursor.element >= tensor.element_count() {
                        *cursor = Cursor { piece: cursor.piece + 1, ..Cursor::default() };
                        continue;
                    }
                    return Some(data_chunk(tensor, cursor));
                }
            }
        }
    }
}

/// About [`CHUNK`] bytes of `tensor`'s JSON data from `cursor` (at least one element or part of one).
fn data_chunk(tensor: &Tensor, cursor: &mut Cursor) -> Bytes {
    let mut out = Vec::with_capacity(CHUNK + 16);
    match tensor.data() {
        TensorData::Strings(items) => {
            while out.len() < CHUNK && cursor.element < items.len() {
                let item = &items[cursor.element];
                if cursor.byte == 0 {
                    if cursor.element > 0 {
                        out.push(b',');
                    }
                    out.push(b'"');
                }
                // At most 6 characters a byte: what fits in what is left of the chunk, one byte at least (so a
                // chunk ends at most a few bytes past CHUNK).
                let room = CHUNK.saturating_sub(out.len()) / 6;
                let take = room.max(1).min(item.len() - cursor.byte);
                escape_json_text(&item[cursor.byte..cursor.byte + take], &mut out);
                cursor.byte += take;
                if cursor.byte == item.len() {
                    out.push(b'"');
                    cursor.element += 1;
                    cursor.byte = 0;
                }
            }
            Bytes::from(out)
        }
        TensorData::Fixed(_) => {
            let end = (cursor.element + NUMBERS_PER_CHUNK).min(tensor.element_count());
            write_numbers(tensor, cursor.element..end, &mut out);
            let first = cursor.element == 0;
            cursor.element = end;
            // The range's own brackets go (the array's are in the pieces around it): its `[` becomes the comma
            // after the elements before it.
            out.pop();
            if first {
                let out = Bytes::from(out);
                return if out.is_empty() { out } else { out.slice(1..) };
            }
            if let Some(bracket) = out.first_mut() {
                *bracket = b',';
            }
            Bytes::from(out)
        }
    }
}

/// Writes elements `range` of a fixed-size tensor as a JSON array, as [`TokenDataRange`] does.
fn write_numbers(tensor: &Tensor, range: std::ops::Range<usize>, out: &mut Vec<u8>) {
    let mut serializer = serde_json::Serializer::with_formatter(out, NonFiniteTokens);
    // Numbers written into a vector cannot fail.
    let _ = serde::Serialize::serialize(&TokenDataRange(tensor, range), &mut serializer);
}

/// How many bytes `tensor`'s JSON data takes without its brackets, as [`data_chunk`] writes it: strings by the
/// width of their escapes, numbers formatted a chunk at a time into `scratch` and dropped.
fn data_length(tensor: &Tensor, scratch: &mut Vec<u8>) -> usize {
    match tensor.data() {
        TensorData::Strings(items) => {
            let quoted: usize = items.iter().map(|s| 2 + escaped_len(s)).sum();
            quoted + items.len().saturating_sub(1)
        }
        TensorData::Fixed(_) => {
            let (n, mut start, mut total) = (tensor.element_count(), 0, 0);
            while start < n {
                let end = (start + NUMBERS_PER_CHUNK).min(n);
                scratch.clear();
                write_numbers(tensor, start..end, scratch);
                // Less its brackets; a comma before every range but the first.
                total += scratch.len().saturating_sub(if start == 0 { 2 } else { 1 });
                start = end;
            }
            total
        }
    }
}

/// The escape of each byte inside a JSON string, as serde_json writes it: a short escape's letter, `u` for
/// `\u00XX`, 0 for a byte written as it is. A table, as serde_json's own: it is read for every byte of a large
/// answer twice (counted, then written).
static ESCAPES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x0c] = b'f';
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Whether any byte of `text` needs an escape inside a JSON string: one branch-free pass, which the compiler
/// vectorises, so text with nothing to escape (most of it) is measured and copied at memory speed.
fn needs_escape(text: &[u8]) -> bool {
    text.iter().fold(false, |seen, &b| seen | (b < 0x20) | (b == b'"') | (b == b'\\'))
}

/// How many characters `text` takes inside a JSON string.
fn escaped_len(text: &[u8]) -> usize {
    if !needs_escape(text) {
        return text.len();
    }
    text.iter()
        .map(|&b| match ESCAPES[usize::from(b)] {
            0 => 1,
            b'u' => 6,
            _ => 2,
        })
        .sum()
}

/// Writes UTF-8 text (or a piece of it: escapes are per byte) as serde_json escapes it inside a string: `"` and
/// `\` with a backslash, the control characters with their short escape or `\u00XX`, everything else as it is.
fn escape_json_text(text: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    if !needs_escape(text) {
        out.extend_from_slice(text);
        return;
    }
    let mut plain = 0;
    for (i, &b) in text.iter().enumerate() {
        let escape = ESCAPES[usize::from(b)];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&text[plain..i]);
        plain = i + 1;
        out.push(b'\\');
        out.push(escape);
        if escape == b'u' {
            out.extend_from_slice(&[b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        }
    }
    out.extend_from_slice(&text[plain..]);
}

impl http_body::Body for StreamedAnswer {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let chunk = this.layout.chunk(&mut this.cursor);
        if let Some(chunk) = &chunk {
            this.remaining = this.remaining.saturating_sub(chunk.len() as u64);
        }
        Poll::Ready(chunk.map(|chunk| Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Answers that may take more than this ([`super::codec::answer_size_bound`]) are written in chunks.
pub const STREAM_ABOVE: usize = CHUNK;

#[cfg(test)]
mod tests {
    use ferroserve_engine::InferOutput;
    use ferroserve_runtime::DataType;
    use http_body::Body;
    use http_body_util::BodyExt;

    use super::*;
    use crate::http::codec::encode_whole;

    fn strings(items: Vec<Vec<u8>>) -> Tensor {
        let n = items.len();
        Tensor::new(DataType::Bytes, vec![n], TensorData::Strings(items.into_iter().map(Bytes::from).collect()))
            .unwrap()
    }

    fn fixed(datatype: DataType, n: usize, bytes: Vec<u8>) -> Tensor {
        Tensor::new(datatype, vec![1, n], TensorData::Fixed(Bytes::from(bytes))).unwrap()
    }

    fn response(id: Option<&str>, tensors: Vec<Tensor>) -> InferResponse {
        InferResponse {
            model_name: "m\"odel".into(),
            model_version: "3".into(),
            id: id.map(str::to_owned),
            outputs: tensors
                .into_iter()
                .enumerate()
                .map(|(i, tensor)| InferOutput { name: format!("OUT{i}"), tensor })
                .collect(),
        }
    }

    /// What the streamed answer sends, with its length and JSON length, against the whole answer's bytes.
    fn same_as_whole(response: InferResponse, forms: impl Fn() -> Vec<OutputForm>) {
        let whole = encode_whole(&response, forms()).unwrap();
        let answer = StreamedAnswer::new(response, forms()).unwrap();
        assert_eq!(answer.json_length, whole.json_length);
        assert_eq!(answer.size_hint().exact(), Some(whole.body.len() as u64));
        let mut chunks = 0;
        let mut body = Vec::new();
        let mut answer = std::pin::pin!(answer);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        while let Poll::Ready(Some(frame)) = answer.as_mut().poll_frame(&mut cx) {
            let data = frame.unwrap().into_data().unwrap();
            assert!(data.len() <= CHUNK + 1024, "a chunk of {} bytes", data.len());
            body.extend_from_slice(&data);
            chunks += 1;
        }
        assert!(answer.is_end_stream());
        assert!(body == whole.body, "streamed and whole answers differ ({chunks} chunks)");
    }

    #[test]
    fn streamed_answers_are_the_whole_answers_bytes_in_chunks() {
        // Every ASCII byte (control characters escaped as serde_json escapes them), multi-byte text, empty
        // strings, and strings longer than a chunk, several times over.
        let ascii: Vec<u8> = (0u8..0x80).collect();
        let long = [b"\x01\"\\\n".repeat(100_000), "é€😀".repeat(50_000).into_bytes()].concat();
        let text = strings(vec![ascii.clone(), Vec::new(), long.clone(), b"plain".to_vec(), long, Vec::new(), ascii]);
        same_as_whole(response(Some("req-1"), vec![text.clone()]), || vec![OutputForm::Json]);
        // Short strings end chunks at every position near CHUNK (4 bytes each, so one ends at CHUNK - 1), then a
        // long one of escapes starts late in a chunk.
        let mut short = vec![b"a".to_vec(); 70_000];
        short.push(vec![1u8; 200_000]);
        same_as_whole(response(None, vec![strings(short)]), || vec![OutputForm::Json]);
        // Numbers of every JSON type, with non-finite floats, over several chunks; and no elements at all.
        let n = NUMBERS_PER_CHUNK * 2 + 7;
        let mut floats: Vec<f32> = (0..n).map(|i| i as f32 * 0.1 - 3.0).collect();
        floats[5] = f32::NAN;
        floats[n - 1] = f32::NEG_INFINITY;
        let fp32 = fixed(DataType::Fp32, n, floats.iter().flat_map(|v| v.to_le_bytes()).collect());
        let fp64 = fixed(DataType::Fp64, n, (0..n).flat_map(|i| (i as f64 / 7.0).to_le_bytes()).collect());
        let int64 = fixed(DataType::Int64, n, (0..n as i64).flat_map(|i| (i * -99_991).to_le_bytes()).collect());
        let boolean = fixed(DataType::Bool, n, (0..n).map(|i| (i % 3 == 0) as u8).collect());
        let uint8 = fixed(DataType::Uint8, n, (0..n).map(|i| i as u8).collect());
        let empty = fixed(DataType::Int32, 0, Vec::new());
        let numbers = vec![fp32, fp64, int64, boolean, uint8, empty];
        same_as_whole(response(None, numbers.clone()), || numbers.iter().map(|_| OutputForm::Json).collect());
        // Binary parts after the JSON (the header length counts the JSON only), and outputs written elsewhere.
        let all = [numbers, vec![text]].concat();
        let forms = || {
            all.iter()
                .enumerate()
                .map(|(i, t)| match i % 3 {
                    0 => OutputForm::Json,
                    1 => OutputForm::Binary(crate::raw::tensor_to_raw(t)),
                    _ => OutputForm::Elsewhere,
                })
                .collect()
        };
        same_as_whole(response(None, all.clone()), forms);
        same_as_whole(response(Some(""), Vec::new()), Vec::new);
    }

    #[tokio::test]
    async fn a_streamed_answer_collects_to_its_length() {
        let text = strings(vec![vec![1u8; 3 * CHUNK]]);
        let answer = StreamedAnswer::new(response(None, vec![text]), vec![OutputForm::Json]).unwrap();
        let length = answer.size_hint().exact().unwrap();
        let body = answer.collect().await.unwrap().to_bytes();
        assert_eq!(body.len() as u64, length);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["outputs"][0]["data"][0].as_str().unwrap(), "\u{1}".repeat(3 * CHUNK));
    }
}
