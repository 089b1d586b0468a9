//! The gRPC front end (tonic): `inference.GRPCInferenceService`, `grpc.health.v1.Health` and
//! `ferroserve.traffic.v1.TrafficControl`.

pub mod codec;
mod config;
pub mod deadline;
pub mod health;
pub mod metered;
pub mod preface;
mod service;
pub mod status;
mod traffic;

pub use service::InferenceService;
pub use traffic::{TrafficService, traffic_server};

use ferroserve_proto::grpc_inference_service_server::GrpcInferenceServiceServer;

use crate::state::AppState;

/// Every gRPC service this server offers (inference, health, traffic control) with the layers every gRPC
/// call passes through, as one routable service. The dedicated gRPC port and the HTTP port (for requests
/// whose content-type is `application/grpc`) both serve clones of this one value, so limits, deadlines,
/// request ids, errors and metrics are the same whichever port a call came in on.
pub fn routes(state: AppState, max_message_bytes: usize) -> tonic::service::Routes {
    let meter = metered::MeterLayer::new(state.budget.clone(), max_message_bytes, state.read_timeout);
    let router = tonic::service::Routes::new(health::health_server(state.manager.clone()))
        .add_service(traffic_server(state.clone()))
        .add_service(inference_server(state, max_message_bytes))
        .prepare()
        .into_axum_router()
        .layer(meter)
        .layer(deadline::DeadlineLayer)
        .layer(crate::request_id::RequestIdLayer)
        .layer(tower::util::MapResponseLayer::new(status::oversized_request_as_resource_exhausted::<axum::body::Body>));
    tonic::service::Routes::from(router)
}

/// The inference service with message limits of `max_message_bytes` in both directions. Requests may be
/// gzip- or deflate-compressed (tritonclient's `compression_algorithm`). Replies are never compressed: gRPC
/// clients advertise gzip on every call, and compressing small tensors costs more CPU than it saves.
pub fn inference_server(state: AppState, max_message_bytes: usize) -> GrpcInferenceServiceServer<InferenceService> {
    use tonic::codec::CompressionEncoding;
    GrpcInferenceServiceServer::new(InferenceService::new(state))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Deflate)
}
