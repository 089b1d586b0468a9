//! Request ids: every HTTP and gRPC request carries one, the client's `x-request-id` or a generated UUID. It
//! is echoed in the response headers (gRPC: response metadata) and is a field of the request's tracing span,
//! so every log line written while handling the request names it.

use http::{HeaderName, Request};
use tower::ServiceBuilder;
use tower::layer::util::{Identity, Stack};
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// The header both transports read and answer.
pub const HEADER: &str = "x-request-id";

/// The span of one request: its id, method and path (the gRPC method for gRPC).
fn span<B>(request: &Request<B>) -> tracing::Span {
    let id = request.headers().get(HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
    tracing::info_span!("request", id, method = %request.method(), path = request.uri().path())
}

type SpanFn<B> = fn(&Request<B>) -> tracing::Span;

/// The layers, outermost first: set the id (keeping the client's), open the span, copy the id to the response.
pub type Layers<B> = ServiceBuilder<
    Stack<
        PropagateRequestIdLayer,
        Stack<
            TraceLayer<SharedClassifier<ServerErrorsAsFailures>, SpanFn<B>>,
            Stack<SetRequestIdLayer<MakeRequestUuid>, Identity>,
        >,
    >,
>;

/// The request-id layers for a service taking `Request<B>`.
pub fn layers<B>() -> Layers<B> {
    let header = HeaderName::from_static(HEADER);
    ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(header.clone(), MakeRequestUuid))
        .layer(TraceLayer::new_for_http().make_span_with(span::<B> as SpanFn<B>))
        .layer(PropagateRequestIdLayer::new(header))
}
