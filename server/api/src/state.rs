//! State shared by the HTTP and gRPC front ends: one engine, one identity.

use std::sync::Arc;

use ferroserve_engine::ModelManager;

/// The server's name in metadata responses unless `--server-name` says otherwise: the name Triton's clients
/// check for (see [`crate::config::Config::server_name`]).
pub const DEFAULT_SERVER_NAME: &str = "triton";

/// The server's version in metadata responses.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Protocol extensions this server really implements (listed in server metadata).
pub const EXTENSIONS: &[&str] = &[
    "classification",
    "binary_tensor_data",
    "model_repository",
    "model_configuration",
    "statistics",
    "parameters",
    "schedule_policy",
    "logging",
    "system_shared_memory",
];

/// What every handler shares, behind one reference count: axum clones the state for each extractor and each
/// middleware layer of every request, and a clone of the fields themselves (seven reference counts, written by
/// both cores) showed in profiles of small requests.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// The state handlers share.
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
#[derive(Debug)]
pub struct Shared {
    /// The engine.
    pub manager: Arc<ModelManager>,
    /// Largest JSON part of an HTTP request: JSON tensor data expands in memory, binary data does not.
    pub max_json_bytes: usize,
    /// Largest gRPC message either way (`--max-message-bytes`): a reply past it is refused as that request's
    /// error, before tonic would end the call (or the whole stream) with OUT_OF_RANGE.
    pub max_message_bytes: usize,
    /// Turns true when the server stops accepting work; long-lived streams end then.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// Memory held by requests in flight, across both protocols (`--max-inflight-bytes`).
    pub budget: Arc<crate::admission::MemoryBudget>,
    /// Longest an inference request may take (`--request-timeout-secs`), if limited.
    pub request_timeout: Option<std::time::Duration>,
    /// Who may call the admin endpoints (model load/unload, traffic changes).
    pub admin: Arc<crate::admin::AdminPolicy>,
    /// The Prometheus exporter behind `/metrics` (`None`: no recorder could be installed).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Registered system shared-memory regions (Triton's extension).
    pub shm: Arc<crate::shm::SharedMemory>,
    /// The name server metadata gives (`--server-name`).
    pub server_name: String,
    /// How long headers may take, and a body may go without a byte (`--read-timeout-secs`).
    pub read_timeout: std::time::Duration,
}
