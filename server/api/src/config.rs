//! Command-line flags and environment variables (clap). One [`Config`] reaches [`crate::run`].
//!
//! Flags use Triton's and KServe's spellings where those exist (`--model-repository`, `--model_name`,
//! `--model_dir`, `--http_port`, `--grpc_port`, `PORT`); both `_` and `-` spellings are accepted.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::state::DEFAULT_SERVER_NAME;
use clap::{Parser, ValueEnum};
use ferroserve_engine::{EngineOptions, ModelControlMode, StartupModels};
use ferroserve_storage::StorageOptions;

/// ferroserve: a KServe v2 / Open Inference Protocol server for ONNX models, over HTTP and gRPC.
#[derive(Parser, Debug, Clone)]
#[command(name = "ferroserve", version, about)]
pub struct Config {
    /// Model repository in Triton's layout (`<repo>/<model>/[config.pbtxt]`, `<repo>/<model>/<version>/model.onnx`):
    /// a directory, `file://`, `s3://bucket/prefix`, `gs://`, `az://` or an Azure blob URL. Repeatable; a
    /// comma-separated list in the environment variable.
    #[arg(
        long = "model-repository",
        visible_aliases = ["model_repository", "model-store"],
        env = "FERROSERVE_MODEL_REPOSITORY",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub model_repository: Vec<String>,

    /// Serve a single model under this name (KServe custom predictor form; uses --model_dir).
    #[arg(long = "model_name", visible_alias = "model-name", env = "FERROSERVE_MODEL_NAME")]
    pub model_name: Option<String>,

    /// Where the single model named by --model_name lives: version subdirectories, or the model file itself.
    /// A directory or any storage URI --model-repository takes, or an http(s) URL of a model file or of a
    /// `.tar.gz`/`.zip` archive. Default: KServe's `STORAGE_URI` unless its storage initializer already filled
    /// `/mnt/models`, else `/mnt/models`.
    #[arg(long = "model_dir", visible_alias = "model-dir", env = "FERROSERVE_MODEL_DIR", hide_env_values = true)]
    pub model_dir: Option<String>,

    /// KServe's storage URI of the model (KServe sets it on the predictor container).
    #[arg(long = "storage-uri", env = "STORAGE_URI", hide = true, hide_env_values = true)]
    pub storage_uri: Option<String>,

    /// Local cache for models fetched from object storage or http(s). An unchanged cached model loads
    /// again without downloading (only a listing).
    #[arg(long = "cache-dir", env = "FERROSERVE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Objects downloading at once from object storage (parts of large objects included).
    #[arg(long = "download-concurrency", env = "FERROSERVE_DOWNLOAD_CONCURRENCY", default_value_t = 8)]
    pub download_concurrency: usize,

    /// Objects larger than this download in parallel ranged parts of this many bytes.
    #[arg(long = "download-part-bytes", env = "FERROSERVE_DOWNLOAD_PART_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub download_part_bytes: u64,

    /// Retries of a failed storage request (with exponential backoff) before a load fails: N + 1 requests in all.
    /// A client error from the store (such as 403) is final and not retried.
    #[arg(long = "storage-retries", env = "FERROSERVE_STORAGE_RETRIES", default_value_t = 5)]
    pub storage_retries: u32,

    /// Model control mode (Triton's): `none` loads every model at start; `poll` also follows repository
    /// changes; `explicit` loads only --load-model models and lets the repository API load and unload.
    #[arg(long = "model-control-mode", env = "FERROSERVE_MODEL_CONTROL_MODE", value_enum, default_value_t = ControlMode::None)]
    pub model_control_mode: ControlMode,

    /// Models loading at once (start-up and polls), as Triton's --model-load-thread-count.
    #[arg(long = "model-load-thread-count", env = "FERROSERVE_MODEL_LOAD_THREAD_COUNT", default_value_t = 4)]
    pub model_load_thread_count: usize,

    /// Seconds between repository polls in poll mode.
    #[arg(long = "repository-poll-secs", env = "FERROSERVE_REPOSITORY_POLL_SECS", default_value_t = 15)]
    pub repository_poll_secs: u64,

    /// In explicit mode, a model to load at start-up (repeatable; `*` loads every model).
    #[arg(long = "load-model", env = "FERROSERVE_LOAD_MODEL", value_delimiter = ',')]
    pub load_model: Vec<String>,

    /// Address to listen on.
    #[arg(long, env = "FERROSERVE_HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,

    /// HTTP/REST port (0 = any free port). KServe sets `PORT`.
    #[arg(long = "http_port", visible_alias = "http-port", env = "PORT", default_value_t = 8080)]
    pub http_port: u16,

    /// gRPC port (0 = any free port).
    #[arg(long = "grpc_port", visible_alias = "grpc-port", env = "FERROSERVE_GRPC_PORT", default_value_t = 8081)]
    pub grpc_port: u16,

    /// Path to libonnxruntime.so (the PyPI `onnxruntime` wheel has one under onnxruntime/capi/).
    #[arg(long = "onnxruntime-lib", env = "ORT_DYLIB_PATH")]
    pub onnxruntime_lib: Option<PathBuf>,

    /// Record Prometheus metrics and serve `/metrics` (Triton's flag; `--allow-metrics false` turns every
    /// metric handle into a no-op, for measuring what metrics cost).
    #[arg(
        long = "allow-metrics",
        visible_alias = "allow_metrics",
        env = "FERROSERVE_ALLOW_METRICS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub allow_metrics: bool,

    /// Also serve `/metrics` on this port of its own (as Triton's 8002); it is always on the HTTP port.
    #[arg(long = "metrics-port", visible_alias = "metrics_port", env = "FERROSERVE_METRICS_PORT")]
    pub metrics_port: Option<u16>,

    /// Largest HTTP request body and gRPC message, in bytes (both directions for gRPC). A request is held
    /// whole once received, so this is what one request may grow the server by before decoding; the default
    /// (192 MiB) keeps a request that is then refused, with what decoding builds beside it (at most 224 MiB in
    /// all), under 256 MB.
    #[arg(long = "max-message-bytes", env = "FERROSERVE_MAX_MESSAGE_BYTES", default_value_t = 192 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Largest HTTP request body once inflated from its `Content-Encoding` (gzip or deflate), in bytes; at most
    /// `--max-message-bytes` (0 = that limit alone). Deflate inflates up to a thousandfold (256 KiB of gzip to
    /// 255 MiB), so a compressed body is bounded by what it becomes, not by what was sent. Past it: 413.
    #[arg(long = "max-inflated-bytes", env = "FERROSERVE_MAX_INFLATED_BYTES", default_value_t = 128 * 1024 * 1024)]
    pub max_inflated_bytes: usize,

    /// Memory that requests in flight may hold, in bytes, across all models and both protocols (0 = no
    /// limit). Each request is charged its body (JSON 12 times over: it expands when decoded) before
    /// it is read; past the budget, requests get 429 / RESOURCE_EXHAUSTED at once.
    #[arg(long = "max-inflight-bytes", env = "FERROSERVE_MAX_INFLIGHT_BYTES", default_value_t = 1 << 30)]
    pub max_inflight_bytes: usize,

    /// Most requests one client connection may have open at once on the gRPC port (HTTP/2 streams; 0 = no
    /// limit). Further calls wait in the client until one finishes, so one connection cannot hold unbounded
    /// work. gRPC (and HTTP/2) on the HTTP port keeps hyper's limit of 200 streams per connection, which this flag
    /// does not change.
    #[arg(
        long = "grpc-max-concurrent-streams",
        env = "FERROSERVE_GRPC_MAX_CONCURRENT_STREAMS",
        default_value_t = 1024
    )]
    pub grpc_max_concurrent_streams: u32,

    /// Longest an inference request may take, queue and execution together, in seconds (0 = no limit; a
    /// model's queue timeout and a gRPC caller's deadline still apply): past it, 504 / DEADLINE_EXCEEDED.
    #[arg(long = "request-timeout-secs", env = "FERROSERVE_REQUEST_TIMEOUT_SECS", default_value_t = 0)]
    pub request_timeout_secs: u64,

    /// PEM certificate chain for TLS on the HTTP and gRPC ports (with --tls-key). Reloaded on SIGHUP and when
    /// the file changes.
    #[arg(long = "tls-cert", env = "FERROSERVE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long = "tls-key", env = "FERROSERVE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates: clients must present a certificate signed by one of them (mutual TLS).
    #[arg(long = "tls-client-ca", env = "FERROSERVE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Bearer token the admin endpoints (model load/unload, traffic changes, shared-memory register/unregister,
    /// log settings changes; HTTP and gRPC) require as `Authorization: Bearer <token>`. Without it (and without --disable-admin-api)
    /// they are open to anyone.
    #[arg(long = "admin-token", env = "FERROSERVE_ADMIN_TOKEN", value_parser = parse_admin_token, hide_env_values = true)]
    pub admin_token: Option<AdminToken>,

    /// Refuse every admin call (model load/unload, traffic changes, shared-memory register/unregister, log
    /// settings changes) with
    /// 403 / PERMISSION_DENIED.
    #[arg(long = "disable-admin-api", env = "FERROSERVE_DISABLE_ADMIN_API", conflicts_with = "admin_token")]
    pub disable_admin_api: bool,

    /// Longest a connection may take to make its first request (on the gRPC port, to send HTTP/2's preface), an
    /// HTTP/1 request to send its headers (or an HTTP/1 connection to sit idle between requests), and a request
    /// body or gRPC message to go without a byte or to deliver 64 KiB (or its rest): past it, the connection is
    /// closed (a stalled body gets 408 first, a stalled gRPC message DEADLINE_EXCEEDED).
    #[arg(long = "read-timeout-secs", env = "FERROSERVE_READ_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub read_timeout_secs: u64,

    /// The server's name in server metadata (`GET /v2`, gRPC ServerMetadata). Triton's client programs check
    /// for `triton` (its health-metadata examples fail on any other name), so that is the default; the version
    /// stays ferroserve's own.
    #[arg(long = "server-name", env = "FERROSERVE_SERVER_NAME", default_value = DEFAULT_SERVER_NAME)]
    pub server_name: String,

    /// Largest JSON part of an HTTP request, in bytes (JSON tensor data takes far more memory than binary).
    #[arg(long = "max-json-bytes", env = "FERROSERVE_MAX_JSON_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_json_bytes: usize,

    /// max_batch_size for models whose config does not set it and whose inputs and outputs all have a
    /// variable first dim.
    #[arg(long = "default-max-batch-size", env = "FERROSERVE_DEFAULT_MAX_BATCH_SIZE", default_value_t = 64)]
    pub default_max_batch_size: u32,

    /// Requests that may wait per model version before new ones are refused with 429 / RESOURCE_EXHAUSTED.
    #[arg(long = "max-queue-size", env = "FERROSERVE_MAX_QUEUE_SIZE", default_value_t = 1024)]
    pub max_queue_size: usize,

    /// Instances per model version when its config has no instance_group.
    #[arg(long = "instances-per-model", env = "FERROSERVE_INSTANCES_PER_MODEL", default_value_t = 1)]
    pub instances_per_model: u32,

    /// The GPUs models may use: `all` found by the CUDA driver (the default), `none`, or CUDA ordinals such as
    /// `0,1`. A model whose instance_group is KIND_AUTO (or absent) runs on these when there are any and its
    /// runtime was built with CUDA, else on CPU; one asking for KIND_GPU fails its load when it cannot have one.
    #[arg(long = "gpus", env = "FERROSERVE_GPUS", default_value = "all")]
    pub gpus: ferroserve_gpu::GpuSelection,

    /// Intra-op threads per instance (0 = the number of cores divided by --instances-per-model).
    #[arg(long = "intra-op-threads", env = "FERROSERVE_INTRA_OP_THREADS", default_value_t = 0)]
    pub intra_op_threads: usize,

    /// On SIGTERM, seconds to keep serving new requests after readiness turns false (lets load balancers
    /// notice), before in-flight work drains.
    #[arg(long = "shutdown-grace-secs", env = "FERROSERVE_SHUTDOWN_GRACE_SECS", default_value_t = 0)]
    pub shutdown_grace_secs: u64,

    /// Longest time to wait for in-flight requests once draining starts.
    #[arg(long = "drain-timeout-secs", env = "FERROSERVE_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    pub drain_timeout_secs: u64,

    /// Log format. Levels come from RUST_LOG (default `info`).
    #[arg(long = "log-format", env = "FERROSERVE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Export traces over OTLP to this collector (base URL, e.g. `http://otel-collector:4318`, or `:4317` with
    /// `--otlp-protocol grpc`). Also read from `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the full traces URL) and
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`. Unset: no tracing, and requests pay nothing for it.
    #[arg(long = "otlp-endpoint")]
    pub otlp_endpoint: Option<String>,

    /// OTLP transport.
    #[arg(long = "otlp-protocol", env = "OTEL_EXPORTER_OTLP_PROTOCOL", value_enum, default_value_t = OtlpProtocol::HttpProtobuf)]
    pub otlp_protocol: OtlpProtocol,

    /// Fraction of requests without a sampled-or-not `traceparent` that are traced (a caller's `traceparent`
    /// decides for its own requests). Default 1, or `OTEL_TRACES_SAMPLER_ARG` when `OTEL_TRACES_SAMPLER` is a
    /// ratio sampler.
    #[arg(long = "trace-sample-ratio", env = "FERROSERVE_TRACE_SAMPLE_RATIO")]
    pub trace_sample_ratio: Option<f64>,
}

/// `--otlp-protocol`, named as `OTEL_EXPORTER_OTLP_PROTOCOL` names them.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (collector port 4317).
    Grpc,
    /// OTLP protobuf over HTTP (collector port 4318, path `/v1/traces`).
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

/// `--model-control-mode`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlMode {
    /// Load every model at start-up; no loads or unloads afterwards.
    None,
    /// Load every model at start-up, then follow the repository.
    Poll,
    /// Load the --load-model models; the repository API loads and unloads.
    Explicit,
}

/// `--log-format`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where models come from, as the flags say: repository roots (URIs) or one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSources {
    /// Triton-layout repositories.
    Repositories(Vec<String>),
    /// One model served under `name`, from `location`.
    SingleModel {
        /// Served name.
        name: String,
        /// Directory or URI.
        location: String,
    },
}

/// `--admin-token`: a secret, so its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(pub String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// A token is at least 8 visible ASCII characters: an empty or blank one would let everyone in.
fn parse_admin_token(value: &str) -> Result<AdminToken, String> {
    if value.len() < 8 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the admin token must be at least 8 visible ASCII characters (no spaces)".into());
    }
    Ok(AdminToken(value.to_string()))
}

/// Where KServe's storage initializer puts a model.
const KSERVE_MODEL_DIR: &str = "/mnt/models";

impl Config {
    /// Where models come from: the repositories, or the single KServe model.
    pub fn model_sources(&self) -> Result<ModelSources, String> {
        let repositories: Vec<String> = self.model_repository.iter().filter(|r| !r.is_empty()).cloned().collect();
        match (repositories.is_empty(), &self.model_name) {
            (false, Some(_)) => Err("give either --model-repository or --model_name/--model_dir, not both".into()),
            (false, None) => Ok(ModelSources::Repositories(repositories)),
            (true, Some(name)) => Ok(ModelSources::SingleModel { name: name.clone(), location: self.model_location() }),
            (true, None) => match &self.storage_uri {
                Some(uri) if !uri.is_empty() => Ok(ModelSources::Repositories(vec![uri.clone()])),
                _ => Err("no models: give --model-repository <dir or URI> (or --model_name with --model_dir)".into()),
            },
        }
    }

    /// The single model's location: --model_dir, else `STORAGE_URI` unless KServe's storage initializer has
    /// already filled `/mnt/models`, else `/mnt/models`.
    fn model_location(&self) -> String {
        if let Some(dir) = self.model_dir.as_ref().filter(|d| !d.is_empty()) {
            return dir.clone();
        }
        let initialized = std::fs::read_dir(KSERVE_MODEL_DIR).is_ok_and(|mut d| d.next().is_some());
        match &self.storage_uri {
            Some(uri) if !uri.is_empty() && !initialized => uri.clone(),
            _ => KSERVE_MODEL_DIR.to_string(),
        }
    }

    /// The engine's control mode.
    pub fn control_mode(&self) -> ModelControlMode {
        match self.model_control_mode {
            ControlMode::None => ModelControlMode::None,
            ControlMode::Poll => ModelControlMode::Poll,
            ControlMode::Explicit => ModelControlMode::Explicit,
        }
    }

    /// The models start-up loads: all, except in explicit mode, where only --load-model ones (`*` = all).
    pub fn startup_models(&self) -> StartupModels {
        if self.model_control_mode != ControlMode::Explicit || self.load_model.iter().any(|m| m == "*") {
            return StartupModels::All;
        }
        let mut names: Vec<String> = self.load_model.iter().filter(|m| !m.is_empty()).cloned().collect();
        names.sort();
        names.dedup();
        StartupModels::Named(names)
    }

    /// Download and cache settings for object storage.
    pub fn storage_options(&self) -> StorageOptions {
        let mut options = StorageOptions::default();
        if let Some(dir) = &self.cache_dir {
            options.cache_dir = dir.clone();
        }
        options.download_concurrency = self.download_concurrency.max(1);
        options.part_size = self.download_part_bytes.max(1);
        options.max_retries = self.storage_retries;
        options
    }

    /// The TLS files, when TLS is on.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            _ => None,
        }
    }

    /// Who may call the admin endpoints.
    pub fn admin_policy(&self) -> crate::admin::AdminPolicy {
        use crate::admin::AdminPolicy;
        match (&self.admin_token, self.disable_admin_api) {
            (_, true) => AdminPolicy::Disabled,
            (Some(token), false) => AdminPolicy::Token(token.0.as_bytes().to_vec()),
            (None, false) => AdminPolicy::Open,
        }
    }

    /// Engine defaults from the flags; `gpus` are the devices models may use (see [`crate::devices`]).
    pub fn engine_options(&self, gpus: ferroserve_engine::Gpus) -> EngineOptions {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let instances = self.instances_per_model.max(1) as usize;
        EngineOptions {
            default_max_batch_size: self.default_max_batch_size,
            default_queue_capacity: self.max_queue_size.max(1),
            default_instance_count: instances as u32,
            intra_op_threads: if self.intra_op_threads == 0 {
                (cores / instances).max(1)
            } else {
                self.intra_op_threads
            },
            retire_timeout: std::time::Duration::from_secs(self.drain_timeout_secs.max(1)),
            load_threads: self.model_load_thread_count.max(1),
            gpus,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_kserve_and_triton_spellings() {
        let c = Config::try_parse_from([
            "ferroserve",
            "--model_name=m",
            "--model_dir",
            "/x",
            "--http_port=9000",
            "--grpc-port",
            "0",
        ])
        .unwrap();
        assert_eq!(c.model_sources().unwrap(), ModelSources::SingleModel { name: "m".into(), location: "/x".into() });
        assert_eq!((c.http_port, c.grpc_port), (9000, 0));
        let c =
            Config::try_parse_from(["ferroserve", "--model-repository", "/r", "--model_repository=s3://b/p"]).unwrap();
        assert_eq!(c.model_sources().unwrap(), ModelSources::Repositories(vec!["/r".into(), "s3://b/p".into()]));
        let both = Config::try_parse_from(["ferroserve", "--model-repository", "/r", "--model_name", "m"]).unwrap();
        assert!(both.model_sources().is_err());
    }

    #[test]
    fn control_modes_and_startup_models() {
        let c = Config::try_parse_from(["ferroserve", "--model-repository", "/r"]).unwrap();
        assert_eq!((c.control_mode(), c.startup_models()), (ModelControlMode::None, StartupModels::All));
        let c = Config::try_parse_from([
            "ferroserve",
            "--model-repository=/r",
            "--model-control-mode=explicit",
            "--load-model=b",
            "--load-model",
            "a",
        ])
        .unwrap();
        assert_eq!(c.startup_models(), StartupModels::Named(vec!["a".into(), "b".into()]));
        let c =
            Config::try_parse_from(["ferroserve", "--model-repository=/r", "--model-control-mode=explicit"]).unwrap();
        assert_eq!(c.startup_models(), StartupModels::Named(vec![]));
        let c = Config::try_parse_from([
            "ferroserve",
            "--model-repository=/r",
            "--model-control-mode=explicit",
            "--load-model=*",
        ])
        .unwrap();
        assert_eq!(c.startup_models(), StartupModels::All);
        assert!(Config::try_parse_from(["ferroserve", "--model-control-mode=sometimes"]).is_err());
        let c = Config::try_parse_from(["ferroserve", "--model-repository=/r", "--allow-metrics", "false"]).unwrap();
        assert!(!c.allow_metrics);
        assert!(Config::try_parse_from(["ferroserve", "--model-repository=/r"]).unwrap().allow_metrics);
    }
}
