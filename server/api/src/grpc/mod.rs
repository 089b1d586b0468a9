//! The gRPC front end (tonic): `inference.GRPCInferenceService`, `grpc.health.v1.Health` and
//! `ferroserve.traffic.v1.TrafficControl`.

pub mod codec;
pub mod health;
mod service;
pub mod status;
mod traffic;

pub use service::InferenceService;
pub use traffic::{TrafficService, traffic_server};

use ferroserve_proto::grpc_inference_service_server::GrpcInferenceServiceServer;

use crate::state::AppState;

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
