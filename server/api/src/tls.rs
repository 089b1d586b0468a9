//! TLS for the HTTP and gRPC ports (rustls): `--tls-cert` and `--tls-key` (PEM), and `--tls-client-ca` to
//! require client certificates signed by that CA (mutual TLS). The files are read again on SIGHUP and whenever
//! their modification time changes (checked every few seconds), so a renewed certificate (cert-manager, a
//! mounted Secret) takes effect without a restart; connections already open keep theirs. A reload that fails
//! (a half-written file) is logged and the previous configuration stays.
//!
//! Handshakes run in tasks of their own, bounded by a timeout, so a client that opens a connection and sends
//! nothing cannot hold up the accept loop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once per port; connections beyond it are closed at once, so a flood of silent
/// connections cannot use up the process's file descriptors.
const MAX_PENDING_HANDSHAKES: usize = 1024;

/// How often the files' modification times are compared.
const WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// Why the TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no PEM item of the kind needed.
    #[error("cannot read {what} from {path}: {reason}")]
    File {
        /// Which file (certificate chain, private key, client CA).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the combination (a key that does not match the certificate, an unusable CA).
    #[error("cannot use the TLS files: {0}")]
    Config(String),
}

/// The files the flags name.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates that client certificates must chain to; `None`: no client certificates asked.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(self.cert.as_path()), Some(self.key.as_path()), self.client_ca.as_deref()].into_iter().flatten()
    }

    /// The newest modification time among the files (`None` if one cannot be read).
    fn stamp(&self) -> Option<SystemTime> {
        self.paths()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .try_fold(SystemTime::UNIX_EPOCH, |newest, t| t.map(|t| newest.max(t)))
    }

    /// Reads the files into a rustls configuration offering HTTP/2 and HTTP/1.1 (ALPN).
    pub fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let file_error = |what, path: &Path, reason: String| TlsError::File { what, path: path.to_path_buf(), reason };
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|items| items.collect::<Result<Vec<_>, _>>())
            .map_err(|e| file_error("the certificate chain", &self.cert, e.to_string()))?;
        if certs.is_empty() {
            return Err(file_error("the certificate chain", &self.cert, "no CERTIFICATE in the file".into()));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| file_error("the private key", &self.key, e.to_string()))?;
        let builder = ServerConfig::builder();
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in
                    CertificateDer::pem_file_iter(path).map_err(|e| file_error("the client CA", path, e.to_string()))?
                {
                    let cert = cert.map_err(|e| file_error("the client CA", path, e.to_string()))?;
                    roots.add(cert).map_err(|e| file_error("the client CA", path, e.to_string()))?;
                }
                let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .map_err(|e| file_error("the client CA", path, e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// The configuration new connections get, replaced on reload.
#[derive(Debug)]
pub struct TlsSettings {
    files: TlsFiles,
    current: RwLock<(Arc<ServerConfig>, Option<SystemTime>)>,
}

impl TlsSettings {
    /// Reads the files once; a failure here stops the server from starting.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let stamp = files.stamp();
        let config = Arc::new(files.server_config()?);
        Ok(Arc::new(Self { files, current: RwLock::new((config, stamp)) }))
    }

    /// An acceptor with the configuration in force.
    pub fn acceptor(&self) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        TlsAcceptor::from(Arc::clone(&current.0))
    }

    /// Reads the files again; on failure the previous configuration stays.
    pub fn reload(&self, why: &str) {
        let stamp = self.files.stamp();
        match self.files.server_config() {
            Ok(config) => {
                *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = (Arc::new(config), stamp);
                tracing::info!(cert = %self.files.cert.display(), why, "TLS certificate reloaded");
            }
            Err(e) => tracing::error!(error = %e, why, "TLS reload failed; the previous certificate stays in use"),
        }
    }

    fn changed(&self) -> bool {
        let seen = self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).1;
        let now = self.files.stamp();
        now.is_some() && now != seen
    }

    /// Reloads on SIGHUP and when the files change, for as long as the process runs.
    pub fn watch(self: &Arc<Self>) {
        let settings = Arc::clone(self);
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(WATCH_INTERVAL);
            loop {
                #[cfg(unix)]
                let signalled = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                };
                #[cfg(not(unix))]
                let signalled = std::future::pending::<Option<()>>();
                tokio::select! {
                    _ = signalled => settings.reload("SIGHUP"),
                    _ = tick.tick() => if settings.changed() { settings.reload("the files changed") },
                }
            }
        });
    }
}

/// Accepts TCP connections and hands over those whose TLS handshake succeeded.
#[derive(Debug)]
pub struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `tcp` (with `TCP_NODELAY` set on each connection).
    pub fn new(tcp: TcpListener, settings: Arc<TlsSettings>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, accepted) = mpsc::channel(64);
        let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    accepted = tcp.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(e) => {
                            // Out of file descriptors and the like: wait a little rather than spin.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    // The server stopped listening: stop accepting, so new connections are refused.
                    _ = tx.closed() => break,
                };
                let Ok(permit) = Arc::clone(&pending).try_acquire_owned() else {
                    tracing::warn!(%peer, "too many TLS handshakes in progress; connection closed");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let acceptor = settings.acceptor();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { accepted, local })
    }

    /// The connections as a stream, for tonic's server (the gRPC port).
    pub fn into_stream(self) -> impl futures::Stream<Item = std::io::Result<TlsConnection>> {
        use tokio_stream::StreamExt;
        tokio_stream::wrappers::ReceiverStream::new(self.accepted).map(|(io, peer)| Ok(TlsConnection { io, peer }))
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(pair) => pair,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// A TLS connection as tonic's server takes it (it wants the peer's address).
#[derive(Debug)]
pub struct TlsConnection {
    io: TlsStream<TcpStream>,
    peer: SocketAddr,
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = Option<SocketAddr>;

    fn connect_info(&self) -> Self::ConnectInfo {
        Some(self.peer)
    }
}

impl tokio::io::AsyncRead for TlsConnection {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
