//! Request ids: every HTTP and gRPC request carries one, the client's `x-request-id` or a generated one. It is
//! echoed in the response headers (gRPC: response metadata) and is the `id` field of the request's tracing
//! span, so every log line written while handling the request names it. The span is also the root of the
//! request's exported trace when tracing is on and the request is sampled ([`crate::telemetry`]).
//!
//! One small layer for both transports (a boxed future per request, no body wrapping): it costs a counter
//! increment and a span, which the throughput benches cannot tell from nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response};
use tracing::Instrument;

/// The header both transports read and answer.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// A new id: a random per-process prefix and a sequence number.
fn generate() -> HeaderValue {
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| {
        let seed = std::collections::hash_map::RandomState::new();
        std::hash::BuildHasher::hash_one(&seed, std::process::id())
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    HeaderValue::from_str(&format!("{prefix:016x}-{n:x}")).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Gives every request an id, runs it inside a span naming the id, and echoes the id in the response.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> tower::Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

/// The service [`RequestIdLayer`] wraps around a transport.
#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S, B, R> tower::Service<Request<B>> for RequestIdService<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let id = match request.headers().get(&HEADER) {
            Some(id) => id.clone(),
            None => {
                let id = generate();
                request.headers_mut().insert(HEADER, id.clone());
                id
            }
        };
        let span = crate::telemetry::request_span(
            request.headers(),
            id.to_str().unwrap_or_default(),
            request.method(),
            request.uri().path(),
        );
        let answer = self.inner.call(request).instrument(span.clone());
        Box::pin(async move {
            let mut response = answer.await?;
            crate::telemetry::record_status(&span, response.status());
            response.headers_mut().insert(HEADER, id);
            Ok(response)
        })
    }
}
