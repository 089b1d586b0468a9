//! `ferroserve`: the server binary's library half. [`run`] wires one engine to an HTTP (axum) and a gRPC
//! (tonic) front end and drains both on shutdown.
//!
//! - [`config`]: flags and environment;
//! - [`http`], [`grpc`]: the two transports, each mapping [`ferroserve_engine::InferError`] exactly once;
//! - [`shared_port`]: the HTTP port serves the gRPC service too (one Knative port for both protocols);
//! - [`json_data`], [`raw`]: tensor codecs shared by the transports;
//! - [`shutdown`]: signal handling and the drain sequence.

pub mod admin;
pub mod admission;
pub mod body_buffer;
pub mod config;
pub mod devices;
pub mod grpc;
pub mod http;
pub mod http_serve;
pub mod json_data;
pub mod load_parameters;
pub mod log_settings;
pub mod metrics;
pub mod raw;
pub mod request_id;
pub mod shared_port;
pub mod shm;
pub mod shutdown;
pub mod state;
pub mod telemetry;
pub mod tls;
mod traffic;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferroserve_engine::files::Files;
use ferroserve_engine::{ModelControlMode, ModelManager, Repository, Root};
use ferroserve_runtime::RuntimeLoader;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

pub use config::Config;
use config::ModelSources;
use state::AppState;

/// The runtimes this build can load, initialised from the config.
fn loaders(config: &Config) -> anyhow::Result<Vec<Arc<dyn RuntimeLoader>>> {
    #[allow(unused_mut)]
    let mut loaders: Vec<Arc<dyn RuntimeLoader>> = Vec::new();
    #[cfg(feature = "onnx")]
    {
        let lib = config.onnxruntime_lib.clone().context(
            "ONNX Runtime library not configured: pass --onnxruntime-lib or set ORT_DYLIB_PATH to \
             libonnxruntime.so (from the PyPI `onnxruntime` wheel: onnxruntime/capi/libonnxruntime.so.*)",
        )?;
        let loader = ferroserve_runtime_onnx::OnnxLoader::new(&lib)?;
        loaders.push(Arc::new(loader));
    }
    #[cfg(not(feature = "onnx"))]
    let _ = config;
    #[cfg(feature = "candle")]
    loaders.push(Arc::new(ferroserve_runtime_candle::CandleLoader));
    #[cfg(feature = "torch")]
    loaders.push(Arc::new(ferroserve_runtime_torch::TorchLoader::default()));
    Ok(loaders)
}

/// The model repository the flags name.
fn repository(config: &Config) -> anyhow::Result<Repository> {
    let options = config.storage_options();
    let open = |location: &str| Files::open(location, options.clone()).context("cannot use the model location");
    let roots = match config.model_sources().map_err(anyhow::Error::msg)? {
        ModelSources::Repositories(locations) => {
            locations.iter().map(|l| open(l).map(Root::models)).collect::<anyhow::Result<Vec<_>>>()?
        }
        ModelSources::SingleModel { name, location } => vec![Root::single_model(name, open(&location)?)],
    };
    Ok(Repository::new(roots))
}

/// Addresses the server actually bound (useful with port 0).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    /// `--metrics-port` address, when set.
    pub metrics: Option<SocketAddr>,
    /// HTTP address.
    pub http: SocketAddr,
    /// gRPC address.
    pub grpc: SocketAddr,
}

/// Runs the server until `shutdown` resolves, then drains and returns. `on_bound` sees the bound addresses
/// before any model loads.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(BoundAddrs),
) -> anyhow::Result<()> {
    let repository = repository(&config)?;
    let loaders = loaders(&config)?;
    let gpus = devices::find(&config.gpus)?;
    if config.allow_metrics
        && let Ok(found) = &gpus
    {
        metrics::watch_gpus(found);
    }
    let options = config.engine_options(devices::engine_gpus(gpus));
    let manager = Arc::new(ModelManager::new(repository, loaders, options, config.control_mode()));
    // `stop` flips once: readiness off, then (after the grace period) the listeners stop accepting.
    let (stop_tx, stop_rx) = watch::channel(false);
    let budget = admission::MemoryBudget::new(config.max_inflight_bytes);
    admission::gate_grpc_decoding(&budget);
    let read_timeout = Duration::from_secs(config.read_timeout_secs);
    let state = AppState::new(state::Shared {
        manager: manager.clone(),
        max_json_bytes: config.max_json_bytes,
        max_message_bytes: config.max_message_bytes,
        stopping: stop_rx.clone(),
        admin: Arc::new(config.admin_policy()),
        budget,
        request_timeout: (config.request_timeout_secs > 0).then(|| Duration::from_secs(config.request_timeout_secs)),
        metrics: if config.allow_metrics { metrics::install() } else { None },
        shm: Arc::new(shm::SharedMemory::default().with_max_tensor_bytes(config.max_message_bytes)),
        server_name: config.server_name.clone(),
        read_timeout,
    });

    let http_listener = TcpListener::bind((config.host, config.http_port))
        .await
        .with_context(|| format!("cannot listen for HTTP on {}:{}", config.host, config.http_port))?;
    let grpc_listener = TcpListener::bind((config.host, config.grpc_port))
        .await
        .with_context(|| format!("cannot listen for gRPC on {}:{}", config.host, config.grpc_port))?;
    let metrics_listener = match config.metrics_port {
        Some(port) => Some(
            TcpListener::bind((config.host, port))
                .await
                .with_context(|| format!("cannot listen for metrics on {}:{port}", config.host))?,
        ),
        None => None,
    };
    let addrs = BoundAddrs {
        http: http_listener.local_addr()?,
        grpc: grpc_listener.local_addr()?,
        metrics: metrics_listener.as_ref().map(TcpListener::local_addr).transpose()?,
    };
    if let Some(listener) = metrics_listener {
        let app = http::metrics_router(state.clone());
        let stop = shutdown::wait_for(stop_rx.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
    }
    tracing::info!(http = %addrs.http, grpc = %addrs.grpc, "listening");
    on_bound(addrs);

    // Load models in the background (the server is live meanwhile); readiness turns true when done. A
    // repository that cannot be read at start-up ends the process (as Triton does), except in poll mode, where
    // the server stays live, not ready, and polling loads the models once the repository can be read.
    let (fatal_tx, fatal_rx) = oneshot::channel::<anyhow::Error>();
    let loading = {
        let manager = manager.clone();
        let startup = config.startup_models();
        let poll_every = Duration::from_secs(config.repository_poll_secs.max(1));
        tokio::spawn(async move {
            let polling = manager.control_mode() == ModelControlMode::Poll;
            match manager.start(startup).await {
                Ok(()) if manager.is_ready() => tracing::info!("all models ready"),
                Ok(()) => tracing::warn!("some models failed to load; the server is live but not ready"),
                Err(e) if polling => {
                    tracing::error!(error = %e, "the server stays not ready until a poll can read the repository");
                }
                Err(e) => {
                    let _ = fatal_tx.send(anyhow::Error::new(e));
                    return;
                }
            }
            while polling && !manager.is_shutting_down() {
                tokio::time::sleep(poll_every).await;
                manager.poll().await;
            }
        })
    };
    let fatal = async move {
        match fatal_rx.await {
            Ok(error) => error,
            Err(_) => std::future::pending().await, // loading went on normally
        }
    };

    let drain =
        shutdown::DrainSequence { manager: manager.clone(), grace: Duration::from_secs(config.shutdown_grace_secs) };
    tokio::spawn(async move {
        shutdown.await;
        drain.begin().await;
        let _ = stop_tx.send(true);
    });

    // One gRPC service, mounted on both ports.
    let grpc_routes = grpc::routes(state.clone(), config.max_message_bytes);
    let http_app = shared_port::SharedPort::new(
        http::router(state, config.max_message_bytes, config.max_inflated_bytes),
        grpc_routes.clone(),
    );
    // TLS on both ports when --tls-cert/--tls-key are given, reloaded on SIGHUP and when the files change.
    let tls = match config.tls_files() {
        Some(files) => {
            let settings = tls::TlsSettings::load(files).context("cannot start TLS")?;
            settings.watch();
            Some(settings)
        }
        None => None,
    };
    let http_stop = shutdown::wait_for(stop_rx.clone());
    let http_tls = tls.clone();
    let http_server = async move {
        use axum::serve::ListenerExt;
        match http_tls {
            Some(settings) => {
                let listener = tls::TlsListener::new(http_listener, settings)?;
                http_serve::serve(listener, http_app, http_stop, read_timeout).await;
            }
            None => {
                let listener = http_listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                http_serve::serve(listener, http_app, http_stop, read_timeout).await;
            }
        }
        std::io::Result::Ok(())
    };

    let grpc_stop = shutdown::wait_for(stop_rx.clone());
    let max_streams = config.grpc_max_concurrent_streams;
    let grpc_server = async move {
        use tokio_stream::StreamExt;
        // As on the HTTP port: a connection has --read-timeout-secs to start speaking HTTP/2, and one whose peer
        // stops answering pings is closed.
        let server = tonic::transport::Server::builder()
            .max_concurrent_streams((max_streams > 0).then_some(max_streams))
            .http2_keepalive_interval(Some(http_serve::HTTP2_KEEP_ALIVE))
            .http2_keepalive_timeout(Some(http_serve::HTTP2_KEEP_ALIVE_TIMEOUT))
            .add_routes(grpc_routes);
        match tls {
            Some(settings) => {
                let incoming = tls::TlsListener::new(grpc_listener, settings)?.into_stream();
                server
                    .serve_with_incoming_shutdown(
                        incoming.map(move |io| io.map(|io| grpc::preface::PrefaceDeadline::new(io, read_timeout))),
                        grpc_stop,
                    )
                    .await?;
            }
            None => {
                let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
                server
                    .serve_with_incoming_shutdown(
                        incoming.map(move |io| io.map(|io| grpc::preface::PrefaceDeadline::new(io, read_timeout))),
                        grpc_stop,
                    )
                    .await?;
            }
        }
        anyhow::Ok(())
    };

    let servers = async {
        tokio::try_join!(async { http_server.await.context("HTTP server failed") }, async {
            grpc_server.await.context("gRPC server failed")
        })
    };
    let drain_timeout = Duration::from_secs(config.drain_timeout_secs);
    let mut stop_watch = stop_rx;
    tokio::select! {
        result = servers => { result?; }
        error = fatal => {
            tracing::error!(error = %error, "cannot start: the model repository could not be read");
            return Err(error);
        }
        _ = async {
            let _ = stop_watch.wait_for(|s| *s).await;
            tokio::time::sleep(drain_timeout).await;
        } => {
            tracing::warn!(seconds = config.drain_timeout_secs, "drain timeout reached; exiting with requests in flight");
        }
    }
    loading.abort();
    tracing::info!("stopped");
    Ok(())
}
