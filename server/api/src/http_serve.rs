//! The HTTP port's accept loop: what `axum::serve` does, plus the read timeout it leaves out.
//!
//! hyper times out reading a request's headers only when it is given a timer, and `axum::serve` gives it none: a
//! client that sent half a request line, or half of a 380 KiB header, kept its connection (and about 570 KB of
//! memory) for as long as it liked, so a few thousand such clients could hold the server's memory and file
//! descriptors. Here hyper has a timer: headers must arrive within `--read-timeout-secs` (30 s by default,
//! hyper's own default once it can tell time), and a connection idle between requests is closed after as long,
//! since waiting for the next request's headers is reading them. Bodies have the same bound between bytes
//! ([`crate::admission`]).

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::body::Body;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tower::{Service, ServiceExt};

/// How often an HTTP/2 connection (gRPC on the HTTP port) is pinged, and how long a ping may go unanswered
/// before the connection is closed: a peer that went away without closing frees what its streams held.
const HTTP2_KEEP_ALIVE: Duration = Duration::from_secs(60);
const HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// What a connection's socket offers the accept loop: the TCP stream to wait on for a first request, where
/// waiting on it cannot miss one (a TLS stream may hold the request, already read and decrypted, in its buffer).
pub trait Socket {
    /// The plain TCP stream, if the connection is one.
    fn plain_tcp(&self) -> Option<&tokio::net::TcpStream>;
}

impl Socket for tokio::net::TcpStream {
    fn plain_tcp(&self) -> Option<&tokio::net::TcpStream> {
        Some(self)
    }
}

impl Socket for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    fn plain_tcp(&self) -> Option<&tokio::net::TcpStream> {
        None
    }
}

/// Serves `service` on every connection `listener` accepts until `stop` completes, then stops accepting, asks
/// each connection to finish its requests in flight and close, and returns once they all have. A client has
/// `read_timeout` to send a request's headers, from its connection's start or its previous answer.
pub async fn serve<L, S>(mut listener: L, service: S, stop: impl Future<Output = ()>, read_timeout: Duration)
where
    L: Listener,
    L::Io: Socket,
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
        let service = service.clone().map_request(|request: axum::http::Request<Incoming>| request.map(Body::new));
        let builder = builder.clone();
        let mut closing = closing.subscribe();
        let open = open.subscribe();
        tokio::spawn(async move {
            // hyper's header timer starts at a request's first byte: a connection that sends nothing at all is
            // closed here instead.
            if let Some(tcp) = io.plain_tcp() {
                let mut byte = [0u8; 1];
                let first_byte = tokio::time::timeout(read_timeout, tcp.peek(&mut byte));
                tokio::select! {
                    peeked = first_byte => if !matches!(peeked, Ok(Ok(1..))) { return },
                    // Shutting down: a connection with no request yet has nothing to finish.
                    _ = closing.wait_for(|&c| c) => return,
                }
            }
            let connection =
                builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::trace!(error = %e, "HTTP connection ended with an error");
                    }
                    return;
                }
                _ = closing.wait_for(|&c| c) => connection.as_mut().graceful_shutdown(),
            }
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
