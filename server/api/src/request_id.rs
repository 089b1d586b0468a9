//! Request ids: every HTTP and gRPC request carries one, the client's `x-request-id` or a generated one. It
//! is echoed in the response headers (gRPC: response metadata) and is a field of the request's tracing span,
//! so every log line written while handling the request names it.

use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderName, HeaderValue, Request};
use tower::ServiceBuilder;
use tower::layer::util::{Identity, Stack};
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// The header both transports read and answer.
pub const HEADER: &str = "x-request-id";

/// The span of one request, with its id alone: the span is formatted for every request, so it carries only
/// what a log line needs to be found (the path is in the access logs of whatever sits in front).
fn span<B>(request: &Request<B>) -> tracing::Span {
    let id = request.headers().get(HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
    tracing::info_span!("request", id)
}

/// Ids that cost a counter increment: a random per-process prefix and a sequence number.
#[derive(Clone, Copy, Debug, Default)]
pub struct MakeSequentialId;

impl MakeRequestId for MakeSequentialId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let prefix = PREFIX.get_or_init(|| {
            let seed = std::collections::hash_map::RandomState::new();
            std::hash::BuildHasher::hash_one(&seed, std::process::id())
        });
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{prefix:016x}-{n:x}")).ok().map(RequestId::new)
    }
}

type SpanFn<B> = fn(&Request<B>) -> tracing::Span;

/// The layers, outermost first: set the id (keeping the client's), open the span, copy the id to the response.
pub type Layers<B> = ServiceBuilder<
    Stack<
        PropagateRequestIdLayer,
        Stack<
            TraceLayer<SharedClassifier<ServerErrorsAsFailures>, SpanFn<B>>,
            Stack<SetRequestIdLayer<MakeSequentialId>, Identity>,
        >,
    >,
>;

/// The request-id layers for a service taking `Request<B>`.
pub fn layers<B>() -> Layers<B> {
    let header = HeaderName::from_static(HEADER);
    ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(header.clone(), MakeSequentialId))
        .layer(TraceLayer::new_for_http().make_span_with(span::<B> as SpanFn<B>))
        .layer(PropagateRequestIdLayer::new(header))
}
