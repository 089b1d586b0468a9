//! The HTTP port carries gRPC too. In KServe's serverless mode a predictor container may expose one port only
//! (Knative refuses a revision with more), so a model served over REST and gRPC would need two
//! InferenceServices. Here a request whose `content-type` is `application/grpc` (or `application/grpc+proto`
//! and the like) goes to the same gRPC service the dedicated port serves ([`crate::grpc::routes`]); every other
//! request goes to the REST routes. Both HTTP/1.1 and HTTP/2 with prior knowledge (h2c, as Knative's
//! queue-proxy speaks to a port named `h2c`) are accepted on the port, so REST works over either and gRPC over
//! HTTP/2.
//!
//! The split happens before any REST layer, so REST's body limit and decompression never touch gRPC frames,
//! and gRPC's message limits and deadline handling apply exactly as on the gRPC port.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use futures::future::Either;
use http::Request;
use tower::Service;

/// Whether `request` is a gRPC call: over HTTP/2 (gRPC has no other transport), with a `content-type` of
/// `application/grpc` exactly or followed by `+` or `;`. An HTTP/1.1 request claiming gRPC is a REST request, as on
/// Triton's HTTP port: gRPC's service would answer it `200` with an empty body and the status in a header that
/// no REST client reads.
pub fn is_grpc<B>(request: &Request<B>) -> bool {
    request.version() == http::Version::HTTP_2
        && request.headers().get(http::header::CONTENT_TYPE).is_some_and(|v| {
            let v = v.as_bytes();
            v.len() >= 16
                && v[..16].eq_ignore_ascii_case(b"application/grpc")
                && matches!(v.get(16), None | Some(b'+') | Some(b';'))
        })
}

/// The HTTP port's service: gRPC calls to `grpc`, the rest to `rest`.
#[derive(Clone)]
pub struct SharedPort {
    rest: axum::Router,
    grpc: tonic::service::Routes,
}

impl SharedPort {
    /// One port serving the REST router and the gRPC routes.
    pub fn new(rest: axum::Router, grpc: tonic::service::Routes) -> Self {
        Self { rest, grpc }
    }
}

type GrpcAnswer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl Service<Request<Body>> for SharedPort {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<axum::routing::future::RouteFuture<Infallible>, GrpcAnswer>;

    /// Both routers are always ready (axum routers never apply back-pressure through `poll_ready`).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if is_grpc(&request) {
            let answer = self.grpc.call(request);
            Either::Right(Box::pin(async move { answer.await.map(|response| response.map(Body::new)) }))
        } else {
            Either::Left(self.rest.call(request))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_type(content_type: &str) -> Request<()> {
        Request::builder().version(http::Version::HTTP_2).header("content-type", content_type).body(()).unwrap()
    }

    #[test]
    fn grpc_content_types_are_told_from_the_rest() {
        for grpc in ["application/grpc", "application/grpc+proto", "Application/GRPC+json", "application/grpc;x=1"] {
            assert!(is_grpc(&with_type(grpc)), "{grpc}");
        }
        for rest in ["application/json", "application/grpc-web", "application/grpcx", "application/octet-stream", ""] {
            assert!(!is_grpc(&with_type(rest)), "{rest}");
        }
        assert!(!is_grpc(&Request::new(())));
        let http1 = Request::builder().version(http::Version::HTTP_11).header("content-type", "application/grpc");
        assert!(!is_grpc(&http1.body(()).unwrap()), "gRPC needs HTTP/2");
    }
}
