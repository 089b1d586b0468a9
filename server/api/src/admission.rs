//! A bound on the memory that requests in flight may hold, whatever their number: each request is charged its
//! body before it is read (JSON as what it expands to), what decoding allocates before it is allocated, and once
//! decoded an estimate of the work it causes (copies of its inputs and outputs, its answer); it is refused with
//! 429 / RESOURCE_EXHAUSTED at once when the budget (`--max-inflight-bytes`) has no room. Queue
//! limits count requests; this counts bytes, so a burst of large requests cannot exhaust memory however few
//! they are.
//!
//! HTTP: a request with a `Content-Length` is refused before its body is read when its whole cost cannot fit
//! now; while its body arrives it holds what has arrived, and its whole cost once it is in. One without
//! (chunked) is charged its real size frame by frame (bounded by the body limit). A body that stops arriving for
//! `--read-timeout-secs` (or delivers less than 64 KiB in that long) gets 408. The charge is held until the
//! response body has been sent. gRPC: a message holds what has arrived of it while it arrives, on the same terms
//! (`crate::grpc::metered`), is charged what prost builds of it while it decodes, and once decoded is charged
//! until the answer is built. Once an inference request is decoded, what it will hold beside its body
//! (inputs read from shared memory, the copies of its inputs and outputs: `ferroserve_engine::memory`) is
//! charged too, and the request as a whole must fit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferroserve_engine::InferError;
use http_body_util::BodyExt;

use crate::http::error::ApiError;

/// How many bytes of memory one byte of JSON may become: the decoder keeps up to 16 bytes per number before
/// packing it, and a number takes at least two bytes of JSON (`1,`); measured on hostile bodies, a long shape
/// grew the server by 11.5 times its JSON and a map of parameters by 8.6 times.
pub const JSON_EXPANSION: usize = 12;

/// The server-wide budget of bytes held by requests in flight.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

/// Bytes charged to the budget, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: usize,
    /// What the same request holds under another reservation (counted when checking it fits the budget).
    beside: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl MemoryBudget {
    /// A budget of `limit` bytes; 0 means no limit.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { limit: if limit == 0 { usize::MAX } else { limit }, used: AtomicUsize::new(0) })
    }

    /// Bytes charged right now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Charges `bytes`, or refuses: Overloaded (429 / RESOURCE_EXHAUSTED) when the budget is full now, invalid
    /// input (400) when the request alone is larger than the whole budget (retrying could never help).
    pub fn reserve(self: &Arc<Self>, bytes: usize) -> Result<Reservation, InferError> {
        let mut reservation = Reservation { budget: Arc::clone(self), bytes: 0, beside: 0 };
        reservation.grow(bytes)?;
        Ok(reservation)
    }

    /// Charges `bytes` for a request that already holds `held` bytes under another reservation: refused as
    /// [`MemoryBudget::reserve`] does, with the request as a whole (`held + bytes`) checked against the budget.
    pub fn reserve_beside(self: &Arc<Self>, held: usize, bytes: usize) -> Result<Reservation, InferError> {
        let bytes = self.charge(held, bytes)?;
        Ok(Reservation { budget: Arc::clone(self), bytes, beside: held })
    }

    /// Adds `bytes` to the count, or refuses as [`MemoryBudget::reserve`] does. `held` is what the same request
    /// already holds: the request as a whole, not only this part, must fit in the budget, or the answer is 400.
    /// With no limit nothing is counted (so no sum can overflow).
    fn charge(&self, held: usize, bytes: usize) -> Result<usize, InferError> {
        if self.limit == usize::MAX || bytes == 0 {
            return Ok(0);
        }
        let whole = held.saturating_add(bytes);
        if whole > self.limit {
            return Err(InferError::invalid(format!(
                "the request needs about {whole} bytes of memory in flight, more than the server's whole budget of \
                 {} bytes (--max-inflight-bytes); send tensors with the binary data extension or split the request",
                self.limit
            )));
        }
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            if used.saturating_add(bytes) > self.limit {
                return Err(InferError::Overloaded(format!(
                    "the server is holding {used} bytes of requests in flight and this one needs about {bytes} more, \
                     past its budget of {} bytes (--max-inflight-bytes); retry later",
                    self.limit
                )));
            }
            match self.used.compare_exchange_weak(used, used + bytes, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(bytes),
                Err(now) => used = now,
            }
        }
    }
}

impl Reservation {
    /// Charges `bytes` more to the same reservation (a body read frame by frame).
    pub fn grow(&mut self, bytes: usize) -> Result<(), InferError> {
        self.bytes += self.budget.charge(self.beside.saturating_add(self.bytes), bytes)?;
        Ok(())
    }

    /// Charges an estimate of `bytes` more, cut to what is left of the whole budget beside what the request
    /// already holds: an estimate past the budget is no reason to refuse a request for good (the server may
    /// well serve it), so such a request is admitted only while nothing else holds the budget, and otherwise
    /// gets 429 / RESOURCE_EXHAUSTED.
    pub fn grow_estimate(&mut self, bytes: usize) -> Result<(), InferError> {
        let held = self.beside.saturating_add(self.bytes);
        self.grow(bytes.min(self.budget.limit.saturating_sub(held)))
    }
}

/// Runs `work` within the server-wide request timeout (`--request-timeout-secs`), when there is one: past it
/// the work is dropped (a queued request leaves its queue) and the caller gets 504 / DEADLINE_EXCEEDED.
pub async fn within_request_timeout<T>(
    limit: Option<std::time::Duration>,
    work: impl std::future::Future<Output = T>,
) -> Result<T, InferError> {
    match limit {
        None => Ok(work.await),
        Some(limit) => tokio::time::timeout(limit, work).await.map_err(|_| {
            InferError::Timeout(format!(
                "the request did not finish within the server's request timeout of {} s (--request-timeout-secs)",
                limit.as_secs_f64()
            ))
        }),
    }
}

/// Charges what decoding each gRPC message allocates to `budget` while prost decodes it (see
/// `ferroserve_proto::bound`): a message that would decode past the whole budget is INVALID_ARGUMENT, one that
/// does not fit now RESOURCE_EXHAUSTED, before anything is allocated.
pub fn gate_grpc_decoding(budget: &Arc<MemoryBudget>) {
    let budget = Arc::clone(budget);
    ferroserve_proto::bound::set_decode_gate(Arc::new(move |bytes| match budget.reserve(bytes) {
        Ok(hold) => Ok(Box::new(hold) as Box<dyn std::any::Any + Send>),
        Err(e) => Err(crate::grpc::status::to_status(e)),
    }));
}

/// What a gRPC inference message of `encoded` bytes, as prost decoded it, is charged before it is converted
/// into a request: its wire buffer and what prost built beside it (typed contents, strings, structs; a packed
/// `int64` of small values is 1 byte on the wire and 8 decoded). What the request then holds (converted inputs,
/// outputs, the answer) is charged as it is converted.
pub fn grpc_cost(encoded: usize, decoded: &ferroserve_proto::ModelInferRequest) -> usize {
    encoded.saturating_add(ferroserve_proto::bound::held_beside_wire(decoded))
}

/// What an HTTP request of `length` body bytes, of which the first `json_length` are JSON, is charged.
pub fn http_cost(length: usize, json_length: usize) -> usize {
    let json = json_length.min(length);
    json.saturating_mul(JSON_EXPANSION).saturating_add(length - json)
}

fn header_number(request: &Request, name: &str) -> Option<usize> {
    request.headers().get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok())
}

/// What the HTTP admission middleware bounds a request body by.
#[derive(Clone)]
pub struct BodyLimits {
    /// The memory budget every body is charged to.
    pub budget: Arc<MemoryBudget>,
    /// Largest body as it arrives (`--max-message-bytes`).
    pub max_body_bytes: usize,
    /// Largest body once inflated from a `Content-Encoding` (`--max-inflated-bytes`).
    pub max_inflated_bytes: usize,
    /// Longest a body may go without a byte arriving (`--read-timeout-secs`); past it, 408.
    pub read_timeout: std::time::Duration,
}

/// Marks a request that arrived with a `Content-Encoding` (set before it is inflated, which removes the header).
#[derive(Clone, Copy)]
pub struct Compressed;

/// Marks a compressed request for [`admit_http`]; mapped over requests outside decompression (a plain request
/// map, not a middleware that clones the stack under it per request). Content codings are case-insensitive, and
/// `x-gzip` is gzip (RFC 9110, 8.4.1): the decompression layer matches only the lowercase names, so this spells the
/// ones it knows that way (`GZIP` and `x-gzip` used to be refused with 415).
pub fn mark_compressed(mut request: Request) -> Request {
    use axum::http::HeaderValue;
    use axum::http::header::CONTENT_ENCODING;
    let Some(value) = request.headers().get(CONTENT_ENCODING) else { return request };
    let raw = value.as_bytes();
    let coding = raw.trim_ascii();
    // Several codings (lines or a list) are left as they are: rewriting one would drop the others.
    let single = request.headers().get_all(CONTENT_ENCODING).iter().count() == 1;
    let canonical = if coding.eq_ignore_ascii_case(b"gzip") || coding.eq_ignore_ascii_case(b"x-gzip") {
        Some("gzip")
    } else if coding.eq_ignore_ascii_case(b"deflate") {
        Some("deflate")
    } else if coding.eq_ignore_ascii_case(b"identity") {
        Some("identity")
    } else {
        None
    };
    if let Some(name) = canonical
        && single
        && raw != name.as_bytes()
    {
        request.headers_mut().insert(CONTENT_ENCODING, HeaderValue::from_static(name));
    }
    if canonical != Some("identity") {
        request.extensions_mut().insert(Compressed);
    }
    request
}

/// The HTTP middleware: charges every request that has a body, holding the charge until its answer is sent.
pub async fn admit_http(State(limits): State<BodyLimits>, request: Request, next: Next) -> Response {
    // GET and HEAD (health, metadata, stats, metrics) carry no body to charge or read.
    if matches!(*request.method(), axum::http::Method::GET | axum::http::Method::HEAD) {
        return next.run(request).await;
    }
    let BodyLimits { budget, max_body_bytes, max_inflated_bytes, read_timeout } = limits;
    let json_length = header_number(&request, crate::http::codec::HEADER_LENGTH);
    let too_large =
        || payload_too_large(format!("the request body is larger than {max_body_bytes} bytes (--max-message-bytes)"));
    let (request, reservation) = match header_number(&request, "content-length") {
        Some(0) => return next.run(request).await,
        Some(length) if length > max_body_bytes => {
            let (parts, body) = request.into_parts();
            drain(&parts.headers, body, length).await;
            return too_large();
        }
        Some(length) => {
            let cost = http_cost(length, json_length.unwrap_or(length));
            // Refused before anything is read when the whole request cannot fit now (a client that sent
            // `Expect: 100-continue` then sends nothing). Only a check: what a body holds while it arrives is
            // what has arrived, or one client that declares a large body and sends none would hold the whole
            // budget for as long as it keeps the connection.
            if let Err(e) = budget.reserve(cost) {
                return refuse(request, e, max_body_bytes).await;
            }
            let (parts, body) = request.into_parts();
            match gather(body, length, &budget, cost, read_timeout).await {
                Ok((body, r)) => (Request::from_parts(parts, Body::from(body)), r),
                Err(Gather::Refused(body, e)) => {
                    // Part of the body has been read (and `100 Continue` sent, if asked): the rest is on its way,
                    // so it is drained whatever `Expect` said, or the client sees a reset instead of the 429.
                    drain(&axum::http::HeaderMap::new(), body, max_body_bytes).await;
                    return ApiError(e).into_response();
                }
                Err(Gather::Failed(response)) => return response,
            }
        }
        None => {
            // No declared length (chunked, or decompressed on the way in): charged frame by frame as it is read,
            // so a body that would pass the budget is refused before it is all in memory.
            let (parts, mut body) = request.into_parts();
            let mut reservation = match budget.reserve(0) {
                Ok(r) => r,
                Err(e) => return ApiError(e).into_response(),
            };
            // A compressed body is bounded once inflated on its own terms: a thousandfold is deflate's ratio.
            let inflated = parts.extensions.get::<Compressed>().is_some()
                && max_inflated_bytes != 0
                && max_inflated_bytes < max_body_bytes;
            let limit = if inflated { max_inflated_bytes } else { max_body_bytes };
            // Held once while it grows (see `BodyBuffer`), so what is charged is what is held.
            let mut collected = crate::body_buffer::BodyBuffer::new();
            let mut charged = 0;
            loop {
                let Ok(frame) = tokio::time::timeout(read_timeout, body.frame()).await else {
                    return body_timed_out(read_timeout);
                };
                match frame {
                    None => break,
                    Some(Err(e)) => {
                        return ApiError(InferError::invalid(format!("cannot read the request body: {e}")))
                            .into_response();
                    }
                    Some(Ok(frame)) => {
                        let Ok(data) = frame.into_data() else { continue };
                        if collected.len() + data.len() > limit {
                            if inflated {
                                // Not drained: what is left of it is inflated, and the client has likely sent its
                                // compressed bytes already.
                                return payload_too_large(format!(
                                    "the request body inflates to more than {limit} bytes (--max-inflated-bytes)"
                                ));
                            }
                            drop(collected);
                            drain(&parts.headers, body, DRAIN_BYTES).await;
                            return too_large();
                        }
                        if let Err(e) = collected.extend(&data) {
                            return cannot_hold(e);
                        }
                        let cost = http_cost(collected.len(), json_length.unwrap_or(collected.len()));
                        if let Err(e) = reservation.grow(cost - charged) {
                            drop(collected);
                            return refuse(Request::from_parts(parts, body), e, max_body_bytes).await;
                        }
                        charged = cost;
                    }
                }
            }
            if collected.is_empty() {
                return next.run(Request::from_parts(parts, Body::empty())).await;
            }
            let body = Body::from(collected.freeze());
            (Request::from_parts(parts, body), reservation)
        }
    };
    let response = next.run(request).await;
    // The charge lives as long as the response body, which hyper drops once it is sent.
    response.map(|body| held_body(body, reservation))
}

/// Why [`gather`] did not get a whole body.
enum Gather {
    /// The budget has no room for it: refused (and what is left of the body drained) with the error.
    Refused(Body, InferError),
    /// The answer to send: the body could not be read, or stopped arriving.
    Failed(Response),
}

/// Reads a body of `length` declared bytes into one buffer of that size as its frames arrive, so it is held once
/// (left to the handler, its frames were kept until the last one and then copied: a 62 MiB JSON body was held
/// twice). The budget is charged what has arrived as it arrives, then the request's whole `cost` (its JSON's
/// expansion included) once it is all in; the reservation comes back with the body. A body that goes `idle`
/// without a byte arriving is answered 408: what a body holds while it arrives is only what arrived, and this
/// bounds how long a client that stops sending keeps even that.
async fn gather(
    mut body: Body,
    length: usize,
    budget: &Arc<MemoryBudget>,
    cost: usize,
    idle: std::time::Duration,
) -> Result<(bytes::Bytes, Reservation), Gather> {
    let failed = Gather::Failed;
    let mut reservation = budget.reserve(0).map_err(|e| failed(ApiError(e).into_response()))?;
    // Allocated at the first byte, not at the declaration: a connection that sends nothing holds no memory.
    let mut gathered: Option<crate::body_buffer::BodyBuffer> = None;
    // Progress over each `idle` window: a client that sends a byte now and then, never `idle` apart, must still
    // send MIN_PROGRESS a window (or the rest of its body), or it could hold what it sent for as long as it likes.
    let mut window = (tokio::time::Instant::now(), 0usize);
    loop {
        let Ok(frame) = tokio::time::timeout(idle, body.frame()).await else {
            return Err(failed(body_timed_out(idle)));
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| {
            failed(ApiError(InferError::invalid(format!("cannot read the request body: {e}"))).into_response())
        })?;
        let Ok(data) = frame.into_data() else { continue };
        let buffer = match &mut gathered {
            Some(buffer) => buffer,
            None => gathered
                .insert(crate::body_buffer::BodyBuffer::with_capacity(length).map_err(|e| failed(cannot_hold(e)))?),
        };
        if buffer.len() + data.len() > length {
            return Err(failed(
                ApiError(InferError::invalid(format!(
                    "the request body is longer than its Content-Length of {length} bytes"
                )))
                .into_response(),
            ));
        }
        if let Err(e) = reservation.grow(data.len()) {
            return Err(Gather::Refused(body, e));
        }
        buffer.extend(&data).map_err(|e| failed(cannot_hold(e)))?;
        window.1 += data.len();
        if window.0.elapsed() >= idle {
            let left_at_start = length - (buffer.len() - window.1);
            if window.1 < MIN_PROGRESS.min(left_at_start) {
                return Err(failed(body_timed_out(idle)));
            }
            window = (tokio::time::Instant::now(), 0);
        }
    }
    let gathered = gathered.map_or_else(bytes::Bytes::new, crate::body_buffer::BodyBuffer::freeze);
    if let Err(e) = reservation.grow(cost.saturating_sub(gathered.len())) {
        return Err(Gather::Refused(body, e));
    }
    Ok((gathered, reservation))
}

/// The least a body must deliver in each `--read-timeout-secs` window (64 KiB: 2 KiB/s at the default 30 s),
/// unless less is left of it.
pub(crate) const MIN_PROGRESS: usize = 64 << 10;

/// 408 for a body that stopped arriving for `idle`, closing the connection (what is left of the body will not be
/// read).
fn body_timed_out(idle: std::time::Duration) -> Response {
    let message = format!(
        "the request body stopped arriving: less than 64 KiB came in {} s (--read-timeout-secs); send the whole body \
         promptly",
        idle.as_secs()
    );
    let mut response =
        (axum::http::StatusCode::REQUEST_TIMEOUT, axum::Json(serde_json::json!({"error": message}))).into_response();
    response.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    response
}

/// 413 with the JSON error body every error leaves with.
fn payload_too_large(message: String) -> Response {
    (axum::http::StatusCode::PAYLOAD_TOO_LARGE, axum::Json(serde_json::json!({"error": message}))).into_response()
}

fn cannot_hold(e: std::io::Error) -> Response {
    ApiError(InferError::Overloaded(format!("cannot hold the request body: {e}"))).into_response()
}

/// A response body that holds `reservation` until it has been sent.
pub fn held_body(body: Body, reservation: Reservation) -> Body {
    Body::new(Held { body, _reservation: reservation })
}

/// A response body that holds its request's charge until it is dropped. It forwards `size_hint`, so hyper
/// still sends `Content-Length` rather than chunked encoding (a wrapper that loses the hint costs a chunked
/// response and an extra write per request).
struct Held {
    body: Body,
    _reservation: Reservation,
}

impl http_body::Body for Held {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Answers a refused request once its body is drained (see [`drain`]), up to the body limit.
async fn refuse(request: Request, error: InferError, max_body_bytes: usize) -> Response {
    let (parts, body) = request.into_parts();
    drain(&parts.headers, body, max_body_bytes).await;
    ApiError(error).into_response()
}

/// The most of a refused request's body [`drain`] reads, and for how long (nginx's lingering close waits 30 s).
const DRAIN_BYTES: usize = 1 << 30;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads what is left of a refused request's body and throws it away, a frame at a time (nothing is held), up to
/// `limit` bytes (at most [`DRAIN_BYTES`]) or [`DRAIN_TIME`]. An HTTP/1.1 client that is still sending when the
/// answer comes sees its connection reset and a broken pipe instead of the answer: Python's http.client sending
/// 200 MiB past a 192 MiB limit got `BrokenPipeError`, not the 413. A client that asked `Expect: 100-continue`
/// has sent nothing yet, and gets the answer at once.
async fn drain(headers: &axum::http::HeaderMap, mut body: Body, limit: usize) {
    let waits_for_continue =
        headers.get(axum::http::header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if waits_for_continue {
        return;
    }
    let limit = limit.min(DRAIN_BYTES);
    let read = async {
        let mut drained = 0usize;
        while drained < limit {
            match body.frame().await {
                Some(Ok(frame)) => drained += frame.data_ref().map_or(0, |d| d.len()),
                Some(Err(_)) | None => break,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_held_body_keeps_its_exact_size_and_gives_the_charge_back_when_dropped() {
        use http_body::Body as _;
        let budget = MemoryBudget::new(100);
        let held = Held { body: Body::from("0123456789"), _reservation: budget.reserve(10).unwrap() };
        assert_eq!(held.size_hint().exact(), Some(10));
        assert_eq!(budget.used(), 10);
        drop(held);
        assert_eq!(budget.used(), 0);
    }

    const IDLE: std::time::Duration = std::time::Duration::from_secs(30);

    fn streamed() -> (futures::channel::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>, Body) {
        let (tx, rx) = futures::channel::mpsc::channel(4);
        (tx, Body::from_stream(rx))
    }

    #[tokio::test(start_paused = true)]
    async fn a_declared_body_holds_only_what_arrived_until_it_is_all_in() {
        use futures::SinkExt;
        let budget = MemoryBudget::new(1000);
        let (mut tx, body) = streamed();
        let task = tokio::spawn({
            let budget = budget.clone();
            async move { gather(body, 20, &budget, 240, IDLE).await.map(|(b, r)| (b, r.bytes)).map_err(|_| ()) }
        });
        tokio::task::yield_now().await;
        assert_eq!(budget.used(), 0, "nothing arrived, nothing held");
        tx.send(Ok(bytes::Bytes::from_static(b"0123456789"))).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        assert_eq!(budget.used(), 10);
        tx.send(Ok(bytes::Bytes::from_static(b"abcdefghij"))).await.unwrap();
        drop(tx);
        let (body, held) = task.await.unwrap().unwrap();
        assert_eq!((&body[..], held), (&b"0123456789abcdefghij"[..], 240));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_is_answered_408_and_gives_its_charge_back() {
        use futures::SinkExt;
        let budget = MemoryBudget::new(1000);
        let (mut tx, body) = streamed();
        tx.send(Ok(bytes::Bytes::from_static(b"01234"))).await.unwrap();
        let started = tokio::time::Instant::now();
        let Err(Gather::Failed(response)) = gather(body, 100 << 20, &budget, 1200 << 20, IDLE).await else { panic!() };
        assert_eq!(response.status(), axum::http::StatusCode::REQUEST_TIMEOUT);
        assert_eq!(response.headers()[axum::http::header::CONNECTION], "close");
        assert_eq!(started.elapsed(), IDLE);
        assert_eq!(budget.used(), 0);
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_dripped_a_byte_at_a_time_is_cut_off_after_a_window() {
        use futures::SinkExt;
        let budget = MemoryBudget::new(1 << 30);
        let (mut tx, body) = streamed();
        let drip = tokio::spawn(async move {
            for _ in 0..10 {
                if tx.send(Ok(bytes::Bytes::from_static(b"x"))).await.is_err() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_secs(20)).await;
            }
        });
        let started = tokio::time::Instant::now();
        let Err(Gather::Failed(response)) = gather(body, 1 << 20, &budget, 1 << 20, IDLE).await else { panic!() };
        assert_eq!(response.status(), axum::http::StatusCode::REQUEST_TIMEOUT);
        assert_eq!(started.elapsed(), std::time::Duration::from_secs(40), "the first frame past one window");
        assert_eq!(budget.used(), 0);
        drip.abort();
    }

    #[tokio::test]
    async fn a_body_past_the_budget_is_refused_when_it_no_longer_fits() {
        let budget = MemoryBudget::new(100);
        let _other = budget.reserve(60).unwrap();
        let body = Body::from(vec![0u8; 50]);
        assert!(matches!(
            gather(body, 50, &budget, 50, IDLE).await,
            Err(Gather::Refused(_, InferError::Overloaded(_)))
        ));
        assert_eq!(budget.used(), 60);
    }

    #[test]
    fn reserves_up_to_the_limit_and_gives_back_on_drop() {
        let budget = MemoryBudget::new(100);
        let a = budget.reserve(60).unwrap();
        let b = budget.reserve(40).unwrap();
        assert_eq!(budget.used(), 100);
        assert!(matches!(budget.reserve(1), Err(InferError::Overloaded(_))));
        drop(a);
        assert_eq!(budget.used(), 40);
        let c = budget.reserve(60).unwrap();
        drop((b, c));
        assert_eq!(budget.used(), 0);
        let e = budget.reserve(101).unwrap_err();
        assert!(matches!(e, InferError::InvalidInput(_)) && e.to_string().contains("--max-inflight-bytes"), "{e}");
    }

    #[test]
    fn zero_means_no_limit_and_nothing_overflows() {
        let budget = MemoryBudget::new(0);
        let _big = budget.reserve(usize::MAX).unwrap();
        let mut more = budget.reserve(usize::MAX).unwrap();
        more.grow(usize::MAX).unwrap();
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_reservation_grows_until_the_budget_is_full() {
        let budget = MemoryBudget::new(100);
        let mut r = budget.reserve(0).unwrap();
        r.grow(60).unwrap();
        // Past the whole budget for this one request: a client error, not overload.
        assert!(matches!(r.grow(41), Err(InferError::InvalidInput(_))));
        r.grow(30).unwrap();
        // Another request's share: overload while this one holds 90.
        let mut other = budget.reserve(5).unwrap();
        assert!(matches!(other.grow(10), Err(InferError::Overloaded(_))));
        assert_eq!(budget.used(), 95);
        drop((r, other));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn json_costs_more_than_binary() {
        assert_eq!(http_cost(100, 100), 100 * JSON_EXPANSION);
        assert_eq!(http_cost(100, 10), 10 * JSON_EXPANSION + 90);
        assert_eq!(http_cost(100, 1000), 100 * JSON_EXPANSION);
        assert_eq!(http_cost(usize::MAX, usize::MAX), usize::MAX);
    }

    #[test]
    fn concurrent_reservations_never_overshoot() {
        let budget = MemoryBudget::new(1000);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        if let Ok(r) = budget.reserve(300) {
                            assert!(budget.used() <= 1000);
                            drop(r);
                        }
                    }
                });
            }
        });
        assert_eq!(budget.used(), 0);
    }
}
