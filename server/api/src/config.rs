//! Command-line flags and environment variables (clap). One [`Config`] reaches [`crate::run`].
//!
//! Flags use Triton's and KServe's spellings where those exist (`--model-repository`, `--model_name`,
//! `--model_dir`, `--http_port`, `--grpc_port`, `PORT`); both `_` and `-` spellings are accepted.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;
use ferroserve_engine::{EngineOptions, Repository};

/// ferroserve: a KServe v2 / Open Inference Protocol server for ONNX models, over HTTP and gRPC.
#[derive(Parser, Debug, Clone)]
#[command(name = "ferroserve", version, about)]
pub struct Config {
    /// Model repository directory in Triton's layout: `<repo>/<model>/[config.pbtxt]`,
    /// `<repo>/<model>/<version>/model.onnx`.
    #[arg(long = "model-repository", visible_alias = "model_repository", env = "FERROSERVE_MODEL_REPOSITORY")]
    pub model_repository: Option<PathBuf>,

    /// Serve a single model under this name (KServe custom predictor form; uses --model_dir).
    #[arg(long = "model_name", visible_alias = "model-name", env = "FERROSERVE_MODEL_NAME")]
    pub model_name: Option<String>,

    /// Directory of the single model named by --model_name: version subdirectories, or the model file itself.
    #[arg(
        long = "model_dir",
        visible_alias = "model-dir",
        env = "FERROSERVE_MODEL_DIR",
        default_value = "/mnt/models"
    )]
    pub model_dir: PathBuf,

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

    /// Largest HTTP request body and gRPC message, in bytes (both directions for gRPC).
    #[arg(long = "max-message-bytes", env = "FERROSERVE_MAX_MESSAGE_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_message_bytes: usize,

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

    /// Log format: `text` or `json`. Levels come from RUST_LOG (default `info`).
    #[arg(long = "log-format", env = "FERROSERVE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

impl Config {
    /// Where models come from: the repository, or the single KServe model.
    pub fn repository(&self) -> Result<Repository, String> {
        match (&self.model_repository, &self.model_name) {
            (Some(_), Some(_)) => Err("give either --model-repository or --model_name/--model_dir, not both".into()),
            (Some(root), None) => Ok(Repository::Local(root.clone())),
            (None, Some(name)) => Ok(Repository::SingleModel { name: name.clone(), dir: self.model_dir.clone() }),
            (None, None) => Err("no models: give --model-repository <dir> (or --model_name with --model_dir)".into()),
        }
    }

    /// Engine defaults from the flags.
    pub fn engine_options(&self) -> EngineOptions {
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
        assert!(matches!(c.repository().unwrap(), Repository::SingleModel { .. }));
        assert_eq!((c.http_port, c.grpc_port), (9000, 0));
        let c = Config::try_parse_from(["ferroserve", "--model-repository", "/r"]).unwrap();
        assert!(matches!(c.repository().unwrap(), Repository::Local(_)));
        let both = Config::try_parse_from(["ferroserve", "--model-repository", "/r", "--model_name", "m"]).unwrap();
        assert!(both.repository().is_err());
    }
}
