//! Graceful shutdown: on SIGTERM or Ctrl-C, report not-ready first, keep serving for a grace period, then
//! stop accepting and let in-flight and queued requests finish (KServe's expectation of a predictor).

use std::sync::Arc;
use std::time::Duration;

use ferroserve_engine::ModelManager;
use tokio::sync::watch;

/// Resolves on SIGTERM or SIGINT.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received; draining"),
        _ = term => tracing::info!("SIGTERM received; draining"),
    }
}

/// What happens between the signal and the listeners closing.
pub(crate) struct DrainSequence {
    pub(crate) manager: Arc<ModelManager>,
    pub(crate) health: tonic_health::server::HealthReporter,
    pub(crate) grace: Duration,
}

impl DrainSequence {
    pub(crate) async fn begin(self) {
        self.manager.begin_shutdown();
        self.health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        self.health.set_service_status("inference.GRPCInferenceService", tonic_health::ServingStatus::NotServing).await;
        if !self.grace.is_zero() {
            tokio::time::sleep(self.grace).await;
        }
    }
}

/// A future that resolves once `stop` turns true.
pub(crate) async fn wait_for(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
