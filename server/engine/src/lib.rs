//! `ferroserve-engine`: everything between a decoded request and a runtime, with no HTTP or gRPC in it.
//!
//! - [`repository`] finds models and versions (Triton layout, or one KServe model directory) through [`files`];
//! - [`config`] types the `config.pbtxt` fields we honour, parsed by [`pbtxt`];
//! - [`manager`] loads models, tracks readiness and routes a request to a version;
//! - [`batcher`] queues a version's requests and forms dynamic batches (pure [`batcher::state`] + shared queue),
//!   holding partial batches only while [`cpu`] says the CPU is saturated;
//! - [`instance`] runs each version on N runtime instances, each on its own thread, fed by the batcher;
//! - [`memory`] estimates what a request holds while it runs, for the server's budget of bytes in flight;
//! - [`classify`] answers Triton's classification extension (an output's top classes as BYTES);
//! - [`validate`] checks requests against the model signature, and `reshape` applies config reshapes;
//! - [`InferError`] is the single error taxonomy the API maps to HTTP and gRPC status codes.

pub mod batcher;
pub mod classify;
pub mod config;
pub mod cpu;
mod error;
pub mod files;
mod gpus;
pub mod instance;
pub mod manager;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod pbtxt;
pub mod repository;
pub mod request;
mod reshape;
pub mod routing;
mod setup;
pub mod stats;
pub mod trace;
pub mod validate;

pub use error::InferError;
pub use gpus::Gpus;
pub use manager::{
    EngineOptions, IndexEntry, IndexState, ModelControlMode, ModelEntry, ModelManager, ModelPhase, StartupModels,
    VersionState,
};
pub use model::ModelVersion;
pub use repository::{Repository, Root};
pub use request::{InferInput, InferOutput, InferRequest, InferResponse, Parameter, Parameters, RequestedOutput};
