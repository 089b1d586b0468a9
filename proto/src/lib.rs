//! The wire contract of ferroserve's gRPC API: `inference.GRPCInferenceService` (KServe v2 plus the Triton
//! superset that `tritonclient` and perf_analyzer call), generated from `proto/inference.proto`, and
//! `ferroserve.traffic.v1.TrafficControl` (traffic between model versions) from `proto/traffic.proto`.
//!
//! Nothing here is hand-written but this re-export; the conversion to engine types lives in the API crate.
#![allow(missing_docs, unreachable_pub, clippy::all)]

/// Generated messages and the tonic server/client for package `inference`.
pub mod inference {
    tonic::include_proto!("inference");
}

pub use inference::*;

/// Generated messages and the tonic server/client for `ferroserve.traffic.v1.TrafficControl`.
pub mod traffic {
    tonic::include_proto!("ferroserve.traffic.v1");
}
