//! Graceful shutdown: on SIGTERM or Ctrl-C, report not-ready first, keep serving for a grace period, then
//! stop accepting and let in-flight and queued requests finish (KServe's expectation of a predictor).

use std::sync::Arc;
use std::time::Duration;

use ferroserve_engine::ModelManager;
use tokio::sync::watch;

/// Installs SIGTERM and SIGINT handlers now (so a signal that arrives during start-up is not lost or
/// fatal) and returns a future that resolves on the first of them. Call inside the tokio runtime.
pub fn install() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received; draining"),
                _ = int.recv() => tracing::info!("SIGINT received; draining"),
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("Ctrl-C received; draining");
        })
    }
}

/// What happens between the signal and the listeners closing.
pub(crate) struct DrainSequence {
    pub(crate) manager: Arc<ModelManager>,
    pub(crate) grace: Duration,
}

impl DrainSequence {
    pub(crate) async fn begin(self) {
        // Readiness turns false everywhere at once: HTTP, gRPC ServerReady and gRPC health all ask the manager.
        self.manager.begin_shutdown();
        if !self.grace.is_zero() {
            tokio::time::sleep(self.grace).await;
        }
    }
}

/// A future that resolves once `stop` turns true.
pub(crate) async fn wait_for(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
