//! The wire contract of ferroserve's gRPC API: `inference.GRPCInferenceService` (KServe v2 plus the Triton
//! superset that `tritonclient` and perf_analyzer call), generated from `proto/inference.proto`, and
//! `ferroserve.traffic.v1.TrafficControl` (traffic between model versions) from `proto/traffic.proto`.
//!
//! Hand-written here: the re-exports, [`bound`], the codec that bounds what decoding a message allocates, and
//! [`limits`], the structural limits of a request it checks.
//! The conversion to engine types lives in the API crate.
#![allow(missing_docs, unreachable_pub, clippy::all)]

pub mod bound;
pub mod limits;

/// Generated messages and the tonic server/client for package `inference`.
pub mod inference {
    tonic::include_proto!("inference");
}

pub use inference::*;

/// Generated messages and the tonic server/client for `ferroserve.traffic.v1.TrafficControl`.
pub mod traffic {
    tonic::include_proto!("ferroserve.traffic.v1");
}
