//! The HTTP port's accept loop: what `axum::serve` does, plus the read timeout it leaves out.
//!
//! hyper times out reading a request's headers only when it is given a timer, and `axum::serve` gives it none: a
//! client that sent half a request line, or half of a 380 KiB header, kept its connection (and about 570 KB of
//! memory) for as long as it liked, so a few thousand such clients could hold the server's memory and file
//! descriptors. Here a connection must make its first request within `--read-timeout-secs` (30 s by default), TLS
//! or not, whatever bytes it sends meanwhile (hyper's protocol detection reads up to 24 bytes with no time limit:
//! `P` alone, the start of both `POST` and HTTP/2's preface, used to hold a connection for good). hyper has a
//! timer too, so later HTTP/1 requests' headers must arrive within as long, and an HTTP/1 connection idle between
//! requests is closed after as long (waiting for the next request's headers is reading them). HTTP/2 connections
//! are pinged, and closed when a ping goes unanswered. Bodies have the same bound between bytes
//! ([`crate::admission`]).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tower::{Service, ServiceExt};

/// How often an HTTP/2 connection (gRPC on the HTTP port) is pinged, and how long a ping may go unanswered
/// before the connection is closed: a peer that went away without closing frees what its streams held. The
/// dedicated gRPC port uses the same.
pub const HTTP2_KEEP_ALIVE: Duration = Duration::from_secs(60);
/// See [`HTTP2_KEEP_ALIVE`].
pub const HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves `service` on every connection `listener` accepts until `stop` completes, then stops accepting, asks
/// each connection to finish its requests in flight and close, and returns once they all have. A client has
/// `read_timeout` to send a request's headers, from its connection's start or its previous answer.
pub async fn serve<L, S>(mut listener: L, service: S, stop: impl Future<Output = ()>, read_timeout: Duration)
where
    L: Listener,
    S: Service<axum::http::Request<Body>, Response = axum::response::Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    // Connections hold a receiver of `closing`; shutdown flips it and waits until every `open` receiver is gone.
    let (closing, _) = tokio::sync::watch::channel(false);
    let (open, _) = tokio::sync::watch::channel(());
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(HTTP2_KEEP_ALIVE)
        .keep_alive_timeout(HTTP2_KEEP_ALIVE_TIMEOUT);
    let mut stop = std::pin::pin!(stop);
    loop {
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        // Set by the connection's first request: until then it has `read_timeout` to send one, whatever it is
        // sending (hyper's own header timer starts only once protocol detection has read the first bytes).
        let started = Arc::new(AtomicBool::new(false));
        let service = service.clone().map_request({
            let started = Arc::clone(&started);
            move |request: axum::http::Request<Incoming>| {
                started.store(true, Ordering::Relaxed);
                request.map(Body::new)
            }
        });
        let builder = builder.clone();
        let mut closing = closing.subscribe();
        let open = open.subscribe();
        tokio::spawn(async move {
            let connection =
                builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
            let mut connection = std::pin::pin!(connection);
            let mut first_request = std::pin::pin!(tokio::time::sleep(read_timeout));
            let mut waiting_for_first = true;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(e) = result {
                            tracing::trace!(error = %e, "HTTP connection ended with an error");
                        }
                        return;
                    }
                    _ = closing.wait_for(|&c| c) => break,
                    () = &mut first_request, if waiting_for_first => {
                        if !started.load(Ordering::Relaxed) {
                            // Dropping the connection closes it: nothing was asked, so nothing is cut short.
                            return;
                        }
                        waiting_for_first = false;
                    }
                }
            }
            connection.as_mut().graceful_shutdown();
            if let Err(e) = connection.await {
                tracing::trace!(error = %e, "HTTP connection ended with an error while closing");
            }
            drop(open);
        });
    }
    drop(listener);
    closing.send_replace(true);
    open.closed().await;
}
