//! The caller's `grpc-timeout` as a deadline on the call: when it passes before the handler has answered, the
//! handler's future is dropped (which takes a queued request out of its batch queue) and the caller gets
//! DEADLINE_EXCEEDED. tonic's own server applies the same header on the dedicated gRPC port, but the HTTP port
//! serves gRPC through axum, which knows nothing of it; this layer sits inside the one gRPC service both ports
//! mount, so a deadline behaves the same on either.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::Either;
use http::{Request, Response};

/// Parses a `grpc-timeout` value: at most 8 ASCII digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`), as the gRPC
/// HTTP/2 protocol defines it. Anything else is `None`: a malformed header means no deadline, as in tonic.
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// tokio's timer resolution.
const TIMER_TICK: Duration = Duration::from_millis(1);

/// Wraps a gRPC service in [`Deadline`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline { inner }
    }
}

/// Answers DEADLINE_EXCEEDED once the caller's `grpc-timeout` has passed; calls without one pass straight
/// through (no allocation, no timer).
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
}

type Expiring<B> = Pin<Box<dyn Future<Output = Result<Response<B>, Infallible>> + Send>>;

impl<S, B, R> tower::Service<Request<B>> for Deadline<S>
where
    S: tower::Service<Request<B>, Response = Response<R>, Error = Infallible>,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = Response<R>;
    type Error = Infallible;
    type Future = Either<S::Future, Expiring<R>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let timeout = request.headers().get("grpc-timeout").and_then(|v| parse_grpc_timeout(v.as_bytes()));
        let answer = self.inner.call(request);
        match timeout {
            None => Either::Left(answer),
            Some(timeout) => {
                // On the dedicated port tonic's own timeout (which answers CANCELLED, "Timeout expired") wraps
                // this one, and its clock starts first: axum calls this layer only at the route future's first
                // poll. Both run on tokio's millisecond timer, so where the two deadlines straddle a tick, tonic's
                // would fire a tick earlier. This one is therefore set one tick (1 ms) early, and fixed here
                // rather than at its own first poll. The caller's deadline has then nearly passed anyway:
                // answering 1 ms before it changes nothing for it.
                let deadline = tokio::time::Instant::now() + timeout.saturating_sub(TIMER_TICK);
                Either::Right(Box::pin(async move {
                    match tokio::time::timeout_at(deadline, answer).await {
                        Ok(response) => response,
                        Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                            "the caller's deadline (grpc-timeout {timeout:?}) passed before the call was answered"
                        ))
                        .into_http()),
                    }
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_refuses_malformed_values() {
        assert_eq!(parse_grpc_timeout(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout(b"3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout(b"10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse_grpc_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout(b"99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse_grpc_timeout(b"5n"), Some(Duration::from_nanos(5)));
        for bad in [&b""[..], b"S", b"123456789S", b"12x", b"-1S", b"1.5S", b"12", "١S".as_bytes()] {
            assert_eq!(parse_grpc_timeout(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_answers_deadline_exceeded() {
        use tower::{Layer, ServiceExt};
        let slow = tower::service_fn(|_: Request<()>| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, Infallible>(Response::new(String::from("late")))
        });
        let service = DeadlineLayer.layer(slow);
        let request = Request::builder().header("grpc-timeout", "50m").body(()).unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(response.headers()["grpc-status"], "4");
        let request = Request::builder().body(()).unwrap();
        assert_eq!(service.oneshot(request).await.unwrap().into_body(), "late");
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_is_one_timer_tick_early() {
        // So that tonic's own timeout, whose clock starts a little earlier, cannot fire a tick before it.
        use tower::{Layer, ServiceExt};
        let slow = tower::service_fn(|_: Request<()>| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, Infallible>(Response::new(String::from("late")))
        });
        let started = tokio::time::Instant::now();
        let request = Request::builder().header("grpc-timeout", "50m").body(()).unwrap();
        let response = DeadlineLayer.layer(slow).oneshot(request).await.unwrap();
        assert_eq!(response.headers()["grpc-status"], "4");
        assert_eq!(started.elapsed(), Duration::from_millis(49));
    }

    #[tokio::test]
    async fn the_deadline_runs_from_the_call_not_from_the_first_poll() {
        use tower::{Layer, Service};
        let slow = tower::service_fn(|_: Request<()>| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, Infallible>(Response::new(String::from("late")))
        });
        let mut service = DeadlineLayer.layer(slow);
        let request = Request::builder().header("grpc-timeout", "50m").body(()).unwrap();
        let answer = service.call(request);
        std::thread::sleep(Duration::from_millis(60)); // past the deadline before the first poll
        let response = tokio::time::timeout(Duration::from_millis(20), answer).await;
        let response = response.expect("answered at once: the deadline had passed").unwrap();
        assert_eq!(response.headers()["grpc-status"], "4");
    }
}
