//! gRPC request messages charged to the memory budget while they arrive, on both ports.
//!
//! tonic gathers a message until it has all of it and only then decodes it, which is where the decode gate
//! ([`crate::admission::gate_grpc_decoding`]) charges it. Until then nothing was charged: four streams that each
//! declared a 150 MiB message and sent 100 MiB of it held 400 MiB against a 64 MiB budget for as long as they
//! stayed open, and gzip messages were inflated (up to the message limit each) outside the budget too. This
//! layer reads gRPC's framing (a flag byte and a 4-byte big-endian length before each message) as a request body
//! passes through to tonic:
//! - a message that is still arriving holds what has arrived of it. It is refused with RESOURCE_EXHAUSTED when its
//!   whole declared length cannot fit in the budget when it starts to wait for its rest, or when the budget fills
//!   while it arrives (INVALID_ARGUMENT when it is larger than the whole budget), as HTTP bodies are;
//! - a message that stops arriving (less than 64 KiB, or its rest, in `--read-timeout-secs`) ends its call with
//!   DEADLINE_EXCEEDED. Between messages a stream may wait as long as it likes (a streaming client sends when it
//!   has something to send);
//! - a compressed message (gzip or deflate, the encodings the inference service accepts) is inflated here,
//!   charged as it grows, bounded by the message limit, and passed on to tonic as an uncompressed message.
//!
//! A message that arrives whole in one read is passed on untouched and charges nothing here: the decode gate
//! charges it in the same poll.

use std::collections::VecDeque;
use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::Request;
use http_body::Frame;
use tonic::Status;

use crate::admission::{MIN_PROGRESS, MemoryBudget, Reservation};
use crate::grpc::status::to_status;

/// A gRPC message's prefix: a compressed flag and the message's length.
const PREFIX: usize = 5;

/// How much an inflating message grows between two charges.
const INFLATE_STEP: usize = 64 << 10;

/// What every metered body is bounded by.
#[derive(Debug, Clone)]
pub struct MeterLayer {
    limits: Arc<Limits>,
}

#[derive(Debug)]
struct Limits {
    budget: Arc<MemoryBudget>,
    /// Largest message, on the wire and inflated (`--max-message-bytes`, tonic's own limit).
    max_message_bytes: usize,
    /// Longest a message may take to deliver 64 KiB (or its rest) (`--read-timeout-secs`).
    read_timeout: Duration,
}

impl MeterLayer {
    /// Meters bodies against `budget`, with messages of at most `max_message_bytes` (inflated too) that must
    /// deliver 64 KiB or their rest in each `read_timeout`.
    pub fn new(budget: Arc<MemoryBudget>, max_message_bytes: usize, read_timeout: Duration) -> Self {
        Self { limits: Arc::new(Limits { budget, max_message_bytes, read_timeout }) }
    }
}

impl<S> tower::Layer<S> for MeterLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metered { inner, limits: Arc::clone(&self.limits) }
    }
}

/// The service [`MeterLayer`] wraps around the gRPC routes.
#[derive(Debug, Clone)]
pub struct Metered<S> {
    inner: S,
    limits: Arc<Limits>,
}

impl<S> tower::Service<Request<Body>> for Metered<S>
where
    S: tower::Service<Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let encoding = Encoding::of(request.headers());
        let limits = Arc::clone(&self.limits);
        self.inner.call(request.map(|body| Body::new(MeteredBody::new(body, limits, encoding))))
    }
}

/// The message encodings inflated here: those tonic accepts for the inference service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Gzip,
    Deflate,
}

impl Encoding {
    /// The call's `grpc-encoding`, when it is one inflated here. Any other is left to tonic, which refuses
    /// compressed messages in an encoding it does not accept before it reads them.
    fn of(headers: &http::HeaderMap) -> Option<Self> {
        match headers.get("grpc-encoding")?.as_bytes() {
            b"gzip" => Some(Self::Gzip),
            b"deflate" => Some(Self::Deflate),
            _ => None,
        }
    }
}

/// Where the body is in its stream of messages.
#[derive(Debug)]
enum Framing {
    /// Reading a message's prefix: `have` of its bytes so far.
    Prefix { bytes: [u8; PREFIX], have: usize },
    /// Reading a message's `len` bytes, `left` of them still to come.
    Message { compressed: bool, len: usize, left: usize },
    /// A prefix tonic refuses on sight (a length past the limit, an unknown flag, a compressed message without
    /// an encoding): the rest is passed on as it is, for tonic to answer.
    Refused,
}

/// A gRPC request body, metered as [the module](self) says.
struct MeteredBody {
    inner: Body,
    limits: Arc<Limits>,
    encoding: Option<Encoding>,
    framing: Framing,
    /// What the message now arriving holds of the budget; `None` until it first waits for more bytes.
    held: Option<Reservation>,
    /// Bytes charged to `held`.
    charged: usize,
    /// What inflated messages still waiting in `ready` hold, given back once tonic has taken them.
    handed: Vec<Reservation>,
    /// A compressed message's bytes, gathered until it is whole.
    gathered: Vec<u8>,
    /// Set once the message now arriving has waited for its rest.
    stall: Option<Stall>,
    /// Data ready for tonic, in order: `next` first (a read passed on whole needs no queue), then `queued`.
    next: Option<Bytes>,
    queued: VecDeque<Bytes>,
    /// An error to return once what was ready before it has been passed on (whole messages read in the same read
    /// as a refused one are still answered).
    error: Option<Status>,
    /// Set once the error was returned: the body then ends.
    failed: bool,
}

/// The read timeout's window for a message that is waiting for its rest: it must deliver `MIN_PROGRESS` bytes (or
/// its rest) in each window.
struct Stall {
    timer: Pin<Box<tokio::time::Sleep>>,
    arrived: usize,
    left_at_start: usize,
}

impl MeteredBody {
    fn new(inner: Body, limits: Arc<Limits>, encoding: Option<Encoding>) -> Self {
        Self {
            inner,
            limits,
            encoding,
            framing: Framing::Prefix { bytes: [0; PREFIX], have: 0 },
            held: None,
            charged: 0,
            handed: Vec::new(),
            gathered: Vec::new(),
            stall: None,
            next: None,
            queued: VecDeque::new(),
            error: None,
            failed: false,
        }
    }

    /// Reads one chunk of the body: what passes through unchanged is queued as slices of it (a chunk inside one
    /// uncompressed message is queued whole), prefixes split across reads are queued once whole, and compressed
    /// messages are queued once inflated. Then charges what the message still arriving holds.
    fn take(&mut self, data: Bytes) -> Result<(), Status> {
        if let Some(stall) = &mut self.stall {
            stall.arrived += data.len();
        }
        // data[pass..pos] passes through as it is and has not been queued yet.
        let mut pass = 0;
        let mut pos = 0;
        while pos < data.len() {
            match &mut self.framing {
                Framing::Refused => pos = data.len(),
                Framing::Prefix { bytes, have } => {
                    let start = pos;
                    let whole_here = *have == 0;
                    let n = (PREFIX - *have).min(data.len() - pos);
                    bytes[*have..*have + n].copy_from_slice(&data[pos..pos + n]);
                    *have += n;
                    pos += n;
                    if *have < PREFIX {
                        // The prefix ends in a later read: its first bytes wait for it.
                        self.queue_slice(&data, pass, start);
                        pass = pos;
                        continue;
                    }
                    let prefix = *bytes;
                    let compressed = prefix[0] == 1;
                    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
                    let refused =
                        prefix[0] > 1 || len > self.limits.max_message_bytes || (compressed && self.encoding.is_none());
                    if compressed && !refused {
                        // Inflated here: this prefix is replaced by the inflated message's own.
                        self.queue_slice(&data, pass, start);
                        pass = pos;
                    } else if !whole_here {
                        // Its first bytes waited in an earlier read: queued now as one piece.
                        self.queue(Bytes::copy_from_slice(&prefix));
                        pass = pos;
                    }
                    self.framing =
                        if refused { Framing::Refused } else { Framing::Message { compressed, len, left: len } };
                    // The message gets a window of its own (one opened for the prefix expected only its few bytes).
                    self.stall = None;
                    if !refused && len == 0 {
                        self.message_done(compressed)?;
                    }
                }
                Framing::Message { compressed, left, .. } => {
                    let n = (*left).min(data.len() - pos);
                    *left -= n;
                    let compressed = *compressed;
                    if compressed {
                        self.gather(&data[pos..pos + n])?;
                        pass = pos + n;
                    }
                    pos += n;
                    if matches!(self.framing, Framing::Message { left: 0, .. }) {
                        self.message_done(compressed)?;
                    }
                }
            }
        }
        self.queue_slice(&data, pass, pos);
        if let Framing::Message { len, left, .. } = self.framing {
            self.charge_to(len - left, len)?;
        }
        Ok(())
    }

    fn queue(&mut self, data: Bytes) {
        if self.next.is_none() && self.queued.is_empty() {
            self.next = Some(data);
        } else {
            self.queued.push_back(data);
        }
    }

    fn queue_slice(&mut self, data: &Bytes, from: usize, to: usize) {
        if from < to {
            self.queue(if from == 0 && to == data.len() { data.clone() } else { data.slice(from..to) });
        }
    }

    /// The next data ready for tonic. Once none is left, what inflated messages held is given back: tonic has
    /// them, and the decode gate charges each as it decodes it.
    fn pop(&mut self) -> Option<Bytes> {
        let data = self.next.take().or_else(|| self.queued.pop_front());
        if data.is_some() && self.queued.is_empty() && !self.handed.is_empty() {
            self.handed.clear();
        }
        data
    }

    /// Whether a message (or its prefix) is part-way in.
    fn mid_message(&self) -> bool {
        match self.framing {
            Framing::Prefix { have, .. } => have > 0,
            Framing::Message { .. } => true,
            Framing::Refused => false,
        }
    }

    /// Keeps a compressed message's bytes until it is whole (its buffer allocated at its first byte).
    fn gather(&mut self, bytes: &[u8]) -> Result<(), Status> {
        if let Framing::Message { len, .. } = self.framing
            && self.gathered.capacity() == 0
        {
            self.gathered.try_reserve_exact(len).map_err(|e| cannot_hold(len, &e))?;
        }
        self.gathered.extend_from_slice(bytes);
        Ok(())
    }

    /// Charges the message now arriving `arrived` bytes in all. The first time it waits for its rest, its whole
    /// declared `len` must fit in the budget now (only checked: it holds what arrived), as an HTTP body's must.
    fn charge_to(&mut self, arrived: usize, len: usize) -> Result<(), Status> {
        let held = match &mut self.held {
            Some(held) => held,
            None => {
                drop(self.limits.budget.reserve(len).map_err(to_status)?);
                self.held.insert(self.limits.budget.reserve(0).map_err(to_status)?)
            }
        };
        if arrived > self.charged {
            held.grow(arrived - self.charged).map_err(to_status)?;
            self.charged = arrived;
        }
        Ok(())
    }

    /// A message is whole: a compressed one is inflated and queued, and holds its charge until tonic has taken
    /// it; an uncompressed one gives its charge back (the decode gate charges it next). Then the next prefix is
    /// read.
    fn message_done(&mut self, compressed: bool) -> Result<(), Status> {
        if compressed {
            for chunk in self.inflate()? {
                self.queue(chunk);
            }
            if let Some(held) = self.held.take() {
                self.handed.push(held);
            }
        }
        self.held = None;
        self.charged = 0;
        self.stall = None;
        self.framing = Framing::Prefix { bytes: [0; PREFIX], have: 0 };
        Ok(())
    }

    /// Inflates the gathered message into an uncompressed gRPC message (prefix first), in chunks of
    /// `INFLATE_STEP`, each charged as it is made (so what is charged is what is held, with no buffer doubling
    /// past it), refused past the message limit in tonic's words.
    fn inflate(&mut self) -> Result<Vec<Bytes>, Status> {
        let compressed = std::mem::take(&mut self.gathered);
        let limit = self.limits.max_message_bytes;
        let mut reader: Box<dyn Read> = match self.encoding {
            Some(Encoding::Deflate) => Box::new(flate2::read::ZlibDecoder::new(compressed.as_slice())),
            // A gzip stream may hold several members, as Go's gzip reader (grpc-go's) also reads.
            _ => Box::new(flate2::read::MultiGzDecoder::new(compressed.as_slice())),
        };
        let mut chunks = vec![Bytes::new()];
        let mut inflated = 0usize;
        loop {
            let mut chunk = Vec::new();
            chunk.try_reserve_exact(INFLATE_STEP).map_err(|e| cannot_hold(inflated + INFLATE_STEP, &e))?;
            chunk.resize(INFLATE_STEP, 0);
            let held = compressed.len() + inflated + INFLATE_STEP;
            self.charge_to(held, held).map_err(|status| past_the_budget(status, inflated))?;
            let mut filled = 0;
            while filled < INFLATE_STEP {
                match reader.read(&mut chunk[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Err(Status::internal(format!("Error decompressing: {e}, while sending request")));
                    }
                }
            }
            inflated += filled;
            if inflated > limit {
                return Err(Status::resource_exhausted(format!(
                    "Error decompressing: size limit, of {limit} bytes, exceeded while decompressing message"
                )));
            }
            if filled == 0 {
                break;
            }
            chunk.truncate(filled);
            chunks.push(Bytes::from(chunk));
            if filled < INFLATE_STEP {
                break;
            }
        }
        let len =
            u32::try_from(inflated).map_err(|_| Status::resource_exhausted("the inflated message is too large"))?;
        let mut prefix = [0; PREFIX];
        prefix[1..].copy_from_slice(&len.to_be_bytes());
        chunks[0] = Bytes::copy_from_slice(&prefix);
        Ok(chunks)
    }

    /// Called when the body has nothing new: a message waiting for its rest must deliver `MIN_PROGRESS` bytes (or
    /// its rest) in each read-timeout window, or its call ends.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Result<(), Status> {
        let left = match self.framing {
            Framing::Message { left, .. } => left,
            Framing::Prefix { have, .. } if have > 0 => PREFIX - have,
            _ => return Ok(()),
        };
        let timeout = self.limits.read_timeout;
        let stall = self.stall.get_or_insert_with(|| Stall {
            timer: Box::pin(tokio::time::sleep(timeout)),
            arrived: 0,
            left_at_start: left,
        });
        while stall.timer.as_mut().poll(cx).is_ready() {
            if stall.arrived < MIN_PROGRESS.min(stall.left_at_start) {
                return Err(Status::deadline_exceeded(format!(
                    "the request message stopped arriving: less than 64 KiB of it came in {} s \
                     (--read-timeout-secs); send the whole message promptly",
                    timeout.as_secs()
                )));
            }
            stall.timer.as_mut().reset(tokio::time::Instant::now() + timeout);
            stall.arrived = 0;
            stall.left_at_start = left;
        }
        Ok(())
    }

    /// Ends the body with `status` once what is ready has been passed on; what the message being read held is
    /// given back now.
    fn fail(&mut self, status: Status) {
        self.error = Some(status);
        self.held = None;
        self.stall = None;
        self.gathered = Vec::new();
        self.framing = Framing::Refused;
    }
}

fn cannot_hold(bytes: usize, e: &std::collections::TryReserveError) -> Status {
    to_status(ferroserve_engine::InferError::Overloaded(format!("cannot hold a request message of {bytes} bytes: {e}")))
}

/// A refused charge while inflating: past the whole budget, the advice is about the compression, not the tensors.
fn past_the_budget(status: Status, inflated: usize) -> Status {
    if status.code() == tonic::Code::InvalidArgument {
        Status::invalid_argument(format!(
            "the compressed request message inflates past the server's whole memory budget (--max-inflight-bytes) \
             after {inflated} bytes"
        ))
    } else {
        status
    }
}

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some(data) = this.pop() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if let Some(status) = this.error.take() {
                this.failed = true;
                this.handed.clear();
                return Poll::Ready(Some(Err(Box::new(status))));
            }
            if this.failed {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if let Err(status) = this.take(data) {
                            this.fail(status);
                        }
                    }
                    Err(frame) if this.mid_message() => {
                        drop(frame);
                        this.fail(unexpected_end());
                    }
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) if this.mid_message() => this.fail(unexpected_end()),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    if let Err(status) = this.poll_stall(cx) {
                        this.fail(status);
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.next.is_none()
            && self.queued.is_empty()
            && self.error.is_none()
            && (self.failed || (self.inner.is_end_stream() && !self.mid_message()))
    }
}

/// A body that ends part-way into a message, in tonic's words (the bytes held back here never reach tonic to be
/// found missing).
fn unexpected_end() -> Status {
    Status::internal("Unexpected EOF decoding stream.")
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use http_body::Body as _;
    use proptest::prelude::*;
    use tokio::sync::mpsc;
    use tonic::Code;

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn message(flag: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![flag];
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// A metered body fed by the returned sender, over `budget`, with a 1 MiB message limit and a 30 s timeout.
    fn fed(budget: &Arc<MemoryBudget>, encoding: Option<Encoding>) -> (mpsc::UnboundedSender<Bytes>, MeteredBody) {
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(Ok::<_, std::convert::Infallible>);
        let limits =
            Arc::new(Limits { budget: Arc::clone(budget), max_message_bytes: 1 << 20, read_timeout: 30 * SECOND });
        (tx, MeteredBody::new(Body::from_stream(stream), limits, encoding))
    }

    use tokio_stream::StreamExt;

    /// Polls the body once: `None` while it waits, else its next frame's data (or its status, or the end).
    fn poll(body: &mut MeteredBody) -> Option<Result<Option<Bytes>, Status>> {
        let waker = std::task::Waker::noop();
        match Pin::new(body).poll_frame(&mut Context::from_waker(waker)) {
            Poll::Pending => None,
            Poll::Ready(None) => Some(Ok(None)),
            Poll::Ready(Some(Ok(frame))) => Some(Ok(frame.into_data().ok())),
            Poll::Ready(Some(Err(e))) => Some(Err(*e.downcast::<Status>().expect("a status"))),
        }
    }

    /// Everything the body yields until it waits or ends.
    fn drain(body: &mut MeteredBody) -> Result<Vec<u8>, Status> {
        let mut out = Vec::new();
        while let Some(next) = poll(body) {
            match next? {
                Some(data) => out.extend_from_slice(&data),
                None => break,
            }
        }
        Ok(out)
    }

    fn gzip(payload: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(payload).unwrap();
        encoder.finish().unwrap()
    }

    proptest! {
        /// Uncompressed messages reach tonic byte for byte, however the reads split them, and hold nothing once
        /// they are whole.
        #[test]
        fn messages_pass_through_unchanged_however_reads_split_them(
            lens in proptest::collection::vec(0usize..300, 1..4),
            cuts in proptest::collection::vec(0usize..1000, 0..8),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            let _guard = runtime.enter();
            let budget = MemoryBudget::new(1 << 20);
            let (tx, mut body) = fed(&budget, None);
            let wire: Vec<u8> = lens.iter().enumerate().flat_map(|(i, &n)| message(0, &vec![i as u8; n])).collect();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
            cuts.extend([0, wire.len()]);
            cuts.sort_unstable();
            let mut out = Vec::new();
            for pair in cuts.windows(2) {
                tx.send(Bytes::copy_from_slice(&wire[pair[0]..pair[1]])).unwrap();
                out.extend(drain(&mut body).unwrap());
            }
            drop(tx);
            out.extend(drain(&mut body).unwrap());
            prop_assert_eq!(out, wire);
            prop_assert_eq!(budget.used(), 0);
        }
    }

    proptest! {
        /// Compressed and uncompressed messages mixed reach tonic as the uncompressed messages, however the reads
        /// split them, holding nothing once they are whole and taken.
        #[test]
        fn compressed_messages_reach_tonic_inflated_however_reads_split_them(
            messages in proptest::collection::vec((0usize..3000, any::<bool>()), 1..4),
            cuts in proptest::collection::vec(0usize..4000, 0..8),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            let _guard = runtime.enter();
            let budget = MemoryBudget::new(1 << 20);
            let (tx, mut body) = fed(&budget, Some(Encoding::Gzip));
            let mut wire = Vec::new();
            let mut want = Vec::new();
            for (i, &(n, compressed)) in messages.iter().enumerate() {
                let payload: Vec<u8> = (0..n).map(|j| (i * 7 + j % 13) as u8).collect();
                wire.extend(if compressed { message(1, &gzip(&payload)) } else { message(0, &payload) });
                want.extend(message(0, &payload));
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
            cuts.extend([0, wire.len()]);
            cuts.sort_unstable();
            let mut out = Vec::new();
            for pair in cuts.windows(2) {
                tx.send(Bytes::copy_from_slice(&wire[pair[0]..pair[1]])).unwrap();
                out.extend(drain(&mut body).unwrap());
            }
            drop(tx);
            out.extend(drain(&mut body).unwrap());
            prop_assert_eq!(out, want);
            prop_assert_eq!(budget.used(), 0);
        }
    }

    #[tokio::test]
    async fn whole_messages_read_with_a_refused_one_are_passed_on_before_its_error() {
        let budget = MemoryBudget::new(1000);
        let other = budget.reserve(600).unwrap();
        let (tx, mut body) = fed(&budget, None);
        let mut wire = message(0, b"served");
        wire.extend(&message(0, &[0; 500])[..100]);
        tx.send(Bytes::from(wire)).unwrap();
        // The read passes on as it is (the whole message for tonic to decode, then the start of the next).
        assert!(poll(&mut body).unwrap().unwrap().unwrap().starts_with(&message(0, b"served")));
        assert_eq!(poll(&mut body).unwrap().unwrap_err().code(), Code::ResourceExhausted);
        assert_eq!(poll(&mut body).unwrap().unwrap(), None);
        drop(other);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_body_that_ends_part_way_into_a_message_is_an_error() {
        let budget = MemoryBudget::new(1 << 20);
        for (encoding, wire) in [
            (None, message(0, b"whole")[..3].to_vec()),
            (Some(Encoding::Gzip), message(1, &gzip(b"cut short"))[..12].to_vec()),
            (None, message(0, b"cut short")[..8].to_vec()),
        ] {
            let (tx, mut body) = fed(&budget, encoding);
            let mut first = message(0, b"whole");
            first.extend(&wire);
            tx.send(Bytes::from(first)).unwrap();
            drop(tx);
            let mut out = Vec::new();
            let status = loop {
                match poll(&mut body).unwrap() {
                    Ok(Some(data)) => out.extend_from_slice(&data),
                    Ok(None) => panic!("{encoding:?}: ended without an error"),
                    Err(status) => break status,
                }
            };
            assert!(out.starts_with(&message(0, b"whole")), "the whole message first");
            assert_eq!((status.code(), status.message()), (Code::Internal, "Unexpected EOF decoding stream."));
            assert_eq!(budget.used(), 0);
        }
    }

    #[tokio::test]
    async fn a_message_still_arriving_holds_what_has_arrived() {
        let budget = MemoryBudget::new(1 << 20);
        let (tx, mut body) = fed(&budget, None);
        let wire = message(0, &[7; 1000]);
        tx.send(Bytes::copy_from_slice(&wire[..305])).unwrap();
        assert_eq!(drain(&mut body).unwrap(), &wire[..305]);
        assert_eq!(budget.used(), 300, "the 300 bytes of its payload that arrived");
        tx.send(Bytes::copy_from_slice(&wire[305..800])).unwrap();
        drain(&mut body).unwrap();
        assert_eq!(budget.used(), 795);
        tx.send(Bytes::copy_from_slice(&wire[800..])).unwrap();
        drain(&mut body).unwrap();
        assert_eq!(budget.used(), 0, "a whole message is the decode gate's to charge");
        // A message that arrives whole in one read is never charged here.
        tx.send(Bytes::from(message(0, &[1; 500]))).unwrap();
        drain(&mut body).unwrap();
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_message_that_cannot_fit_is_refused_once_it_waits_and_gives_back_its_charge() {
        let budget = MemoryBudget::new(1000);
        let other = budget.reserve(600).unwrap();
        let (tx, mut body) = fed(&budget, None);
        tx.send(Bytes::copy_from_slice(&message(0, &[0; 500])[..100])).unwrap();
        assert_eq!(drain(&mut body).unwrap_err().code(), Code::ResourceExhausted);
        assert_eq!(poll(&mut body).unwrap().unwrap(), None, "the body ends after its error");
        drop(other);
        assert_eq!(budget.used(), 0);

        let (tx, mut body) = fed(&budget, None);
        tx.send(Bytes::copy_from_slice(&message(0, &[0; 2000])[..100])).unwrap();
        assert_eq!(drain(&mut body).unwrap_err().code(), Code::InvalidArgument, "larger than the whole budget");

        // The budget fills while the message arrives.
        let (tx, mut body) = fed(&budget, None);
        let wire = message(0, &[0; 900]);
        tx.send(Bytes::copy_from_slice(&wire[..105])).unwrap();
        drain(&mut body).unwrap();
        let other = budget.reserve(800).unwrap();
        tx.send(Bytes::copy_from_slice(&wire[105..600])).unwrap();
        assert_eq!(drain(&mut body).unwrap_err().code(), Code::ResourceExhausted);
        drop(other);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_that_stops_arriving_ends_its_call_but_a_stream_may_wait_between_messages() {
        let budget = MemoryBudget::new(1 << 20);
        let (tx, mut body) = fed(&budget, None);
        tx.send(Bytes::from(message(0, &[1; 10]))).unwrap();
        drain(&mut body).unwrap();
        tokio::time::advance(3600 * SECOND).await;
        assert!(poll(&mut body).is_none(), "between messages there is no time limit");

        let wire = message(0, &[2; 100]);
        tx.send(Bytes::copy_from_slice(&wire[..50])).unwrap();
        drain(&mut body).unwrap();
        tokio::time::advance(29 * SECOND).await;
        assert!(poll(&mut body).is_none());
        // A byte now and then does not keep it alive: it must deliver 64 KiB or its rest in each window.
        tx.send(Bytes::copy_from_slice(&wire[50..51])).unwrap();
        drain(&mut body).unwrap();
        tokio::time::advance(2 * SECOND).await;
        let status = drain(&mut body).unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert!(status.message().contains("--read-timeout-secs"), "{}", status.message());
        assert_eq!(budget.used(), 0);

        // A prefix part-way in has the same bound.
        let (tx, mut body) = fed(&budget, None);
        tx.send(Bytes::copy_from_slice(&wire[..3])).unwrap();
        drain(&mut body).unwrap();
        tokio::time::advance(31 * SECOND).await;
        assert_eq!(drain(&mut body).unwrap_err().code(), Code::DeadlineExceeded);

        // Once the prefix is in, the message has a window of its own: the prefix's (which expected only its last
        // bytes) does not let it by with a byte.
        let (tx, mut body) = fed(&budget, None);
        tx.send(Bytes::copy_from_slice(&wire[..3])).unwrap();
        drain(&mut body).unwrap();
        tokio::time::advance(20 * SECOND).await;
        tx.send(Bytes::copy_from_slice(&wire[3..6])).unwrap();
        drain(&mut body).unwrap();
        tokio::time::advance(29 * SECOND).await;
        assert!(poll(&mut body).is_none());
        tokio::time::advance(2 * SECOND).await;
        assert_eq!(drain(&mut body).unwrap_err().code(), Code::DeadlineExceeded);

        // One that delivers its rest in time is served.
        let (tx, mut body) = fed(&budget, None);
        tx.send(Bytes::copy_from_slice(&wire[..50])).unwrap();
        drain(&mut body).unwrap();
        tokio::time::advance(29 * SECOND).await;
        tx.send(Bytes::copy_from_slice(&wire[50..])).unwrap();
        drain(&mut body).unwrap();
        tokio::time::advance(60 * SECOND).await;
        assert!(poll(&mut body).is_none());
    }

    #[tokio::test]
    async fn compressed_messages_are_inflated_and_passed_on_uncompressed() {
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut deflated = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        deflated.write_all(&payload).unwrap();
        for (encoding, compressed) in [
            (Encoding::Gzip, gzip(&payload)),
            (Encoding::Deflate, deflated.finish().unwrap()),
            (Encoding::Gzip, gzip(b"")),
        ] {
            let budget = MemoryBudget::new(1 << 20);
            let (tx, mut body) = fed(&budget, Some(encoding));
            // An uncompressed message first: a call may mix them.
            let mut wire = message(0, b"plain");
            wire.extend(message(1, &compressed));
            let cut = wire.len() / 2;
            tx.send(Bytes::copy_from_slice(&wire[..cut])).unwrap();
            let mut out = drain(&mut body).unwrap();
            assert!(budget.used() > 0, "its compressed bytes are held while it arrives");
            tx.send(Bytes::copy_from_slice(&wire[cut..])).unwrap();
            drop(tx);
            out.extend(drain(&mut body).unwrap());
            let inflated = if compressed.len() > 100 { payload.as_slice() } else { b"" };
            let mut want = message(0, b"plain");
            want.extend(message(0, inflated));
            assert!(out == want, "{encoding:?}: {} bytes out, {} wanted", out.len(), want.len());
            assert_eq!(budget.used(), 0);
        }
    }

    #[tokio::test]
    async fn a_gzip_message_of_several_members_is_read_whole() {
        let budget = MemoryBudget::new(1 << 20);
        let (tx, mut body) = fed(&budget, Some(Encoding::Gzip));
        let mut members = gzip(b"first, ");
        members.extend(gzip(b"second"));
        tx.send(Bytes::from(message(1, &members))).unwrap();
        assert_eq!(drain(&mut body).unwrap(), message(0, b"first, second"));
    }

    #[tokio::test]
    async fn inflating_past_the_message_limit_or_the_budget_is_refused() {
        let bomb = gzip(&vec![0; 4 << 20]);
        let budget = MemoryBudget::new(64 << 20);
        let (tx, mut body) = fed(&budget, Some(Encoding::Gzip));
        tx.send(Bytes::from(message(1, &bomb))).unwrap();
        let status = drain(&mut body).unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("size limit, of 1048576 bytes"), "{}", status.message());
        assert_eq!(budget.used(), 0);

        let budget = MemoryBudget::new(512 << 10);
        let (tx, mut body) = fed(&budget, Some(Encoding::Gzip));
        tx.send(Bytes::from(message(1, &gzip(&vec![0; 900 << 10])))).unwrap();
        let status = drain(&mut body).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "it inflates past the whole budget: {}", status.message());
        assert!(status.message().contains("compressed request message inflates past"), "{}", status.message());
        assert_eq!(budget.used(), 0);

        // What is charged while inflating is what is held: a message that inflates to 1000 KiB fits a budget of
        // 1100 KiB (a buffer grown by doubling would have been charged 2 MiB).
        let budget = MemoryBudget::new(1100 << 10);
        let (tx, mut body) = fed(&budget, Some(Encoding::Gzip));
        let payload: Vec<u8> = (0..1000 << 10).map(|i: u32| (i % 7) as u8).collect();
        tx.send(Bytes::from(message(1, &gzip(&payload)))).unwrap();
        drop(tx);
        assert!(drain(&mut body).unwrap() == message(0, &payload));
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn prefixes_tonic_refuses_are_passed_on_as_they_are() {
        let budget = MemoryBudget::new(1 << 20);
        for (encoding, wire) in [
            (None, message(0, &vec![0; (1 << 20) + 1])),
            (None, message(1, b"compressed without an encoding")),
            (Some(Encoding::Gzip), message(2, b"an unknown flag")),
        ] {
            let (tx, mut body) = fed(&budget, encoding);
            tx.send(Bytes::copy_from_slice(&wire[..3])).unwrap();
            tx.send(Bytes::copy_from_slice(&wire[3..])).unwrap();
            drop(tx);
            assert_eq!(drain(&mut body).unwrap(), wire);
            assert_eq!(budget.used(), 0);
        }
    }
}
