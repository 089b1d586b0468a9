//! A deadline for the dedicated gRPC port's connections to start speaking HTTP/2.
//!
//! tonic's server (hyper's HTTP/2) waits for a connection's 24-byte preface with no time limit, so a client that
//! connects and sends nothing, or only part of the preface, held a connection and its file descriptor for good:
//! enough of them and the port accepts no one. Each accepted connection is wrapped here: its first 24 bytes must
//! arrive within `--read-timeout-secs`, as a connection on the HTTP port must make its first request within as
//! long, or its reads fail and hyper closes it. After the preface, HTTP/2 keep-alive pings close connections whose
//! peer has gone.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The length of HTTP/2's client connection preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`).
const PREFACE_LEN: usize = 24;

/// A connection whose first [`PREFACE_LEN`] bytes must arrive before a deadline.
#[derive(Debug)]
pub struct PrefaceDeadline<IO> {
    io: IO,
    /// Until the preface is in: when it must be in by, and how much of it has arrived.
    waiting: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
    timeout: Duration,
}

impl<IO> PrefaceDeadline<IO> {
    /// `io`, which must deliver its preface within `timeout` from now.
    pub fn new(io: IO, timeout: Duration) -> Self {
        Self { io, waiting: Some((Box::pin(tokio::time::sleep(timeout)), 0)), timeout }
    }
}

impl<IO: Connected> Connected for PrefaceDeadline<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for PrefaceDeadline<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        let Some((deadline, arrived)) = &mut this.waiting else { return read };
        match read {
            Poll::Ready(Ok(())) => {
                *arrived += buf.filled().len() - before;
                if *arrived >= PREFACE_LEN {
                    this.waiting = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no HTTP/2 preface within {} s (--read-timeout-secs)", this.timeout.as_secs()),
            ))),
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for PrefaceDeadline<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_must_send_its_preface_in_time_and_is_then_free_of_the_deadline() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = PrefaceDeadline::new(server, Duration::from_secs(30));
        let mut buf = [0; 64];
        client.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), PREFACE_LEN);
        tokio::time::advance(Duration::from_secs(3600)).await;
        client.write_all(b"later").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 5);

        // Part of a preface, then nothing: the read fails at the deadline.
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = PrefaceDeadline::new(server, Duration::from_secs(30));
        client.write_all(b"P").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 1);
        let started = tokio::time::Instant::now();
        let error = server.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }
}
