//! Our own retry loop around whole-object and per-part downloads.
//!
//! object_store retries a request that fails before its body starts, but a body stream that drops halfway
//! (connection reset, a proxy timing out) surfaces as an error from the stream, which nobody retries. So every
//! download attempt here is a complete request-plus-body, and it is retried as a unit: exponential backoff
//! from ~100 ms doubling to at most 5 s, with jitter so that many parts failing together do not retry in step.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode, header::RETRY_AFTER};
use tokio::time::Instant;

use crate::error::{BoxError, StorageError};

/// The first delay before a retry.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// The longest delay between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The longest a store's `Retry-After` is waited out before the next attempt (a load must not sleep for the hour
/// a server may ask for; the attempt after it counts as one of `--storage-retries`).
const MAX_PUSHBACK: Duration = Duration::from_secs(30);

/// The outcome of one attempt that failed.
#[derive(Debug)]
pub(crate) enum AttemptError {
    /// Worth another attempt (timeouts, resets, 5xx, a body that ended early).
    Transient(BoxError),
    /// A definite answer (not found, permission denied, object changed, local disk error).
    Fatal(StorageError),
}

/// How often and how patiently to retry.
#[derive(Debug, Clone, Default)]
pub(crate) struct RetryPolicy {
    /// Retries after the first attempt.
    pub(crate) max_retries: u32,
    /// What the store has asked for in `Retry-After`: no retry starts before it.
    pub(crate) pushback: Pushback,
}

/// The time before which a store has asked not to be called again: the latest `Retry-After` of its 429 and 503
/// answers, noted by its HTTP client (`crate::digest::DigestConnector`) before object_store turns the answer into
/// an error that no longer carries headers. Shared by every request to the store: a store that sheds load sheds
/// it for all of them, so parallel parts wait together rather than spend their retries on it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pushback(Arc<Mutex<Option<Instant>>>);

impl Pushback {
    /// Notes an answer's `Retry-After` when it is a 429 or a 503 (where RFC 9110 gives the header that meaning).
    pub(crate) fn note(&self, status: StatusCode, headers: &HeaderMap) {
        if !matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
            return;
        }
        let Some(wait) = retry_after(headers, SystemTime::now()) else { return };
        let until = Instant::now() + wait.min(MAX_PUSHBACK);
        let mut noted = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *noted = Some(noted.map_or(until, |earlier| earlier.max(until)));
    }

    /// How long from now the store asked to be left alone (zero when it did not).
    pub(crate) fn remaining(&self) -> Duration {
        let noted = *self.0.lock().unwrap_or_else(PoisonError::into_inner);
        noted.map_or(Duration::ZERO, |until| until.saturating_duration_since(Instant::now()))
    }
}

/// A `Retry-After` header as a wait from `now`: delay-seconds, or an HTTP-date (zero when it has passed).
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

impl RetryPolicy {
    /// The delay before retry number `retry` (0-based): `100ms * 2^retry` capped at 5 s, then a random
    /// point in its upper half ("equal jitter": never less than half the nominal delay).
    pub(crate) fn delay(&self, retry: u32) -> Duration {
        let nominal =
            INITIAL_BACKOFF.saturating_mul(1u32.checked_shl(retry.min(16)).unwrap_or(u32::MAX)).min(MAX_BACKOFF);
        let half = nominal / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// Runs `attempt` until it succeeds, fails fatally, or has failed transiently `max_retries + 1` times; the
    /// last case becomes [`StorageError::Unreachable`] naming `location`, `path` and the attempts made.
    pub(crate) async fn run<T, F, Fut>(&self, location: &str, path: &str, mut attempt: F) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, AttemptError>>,
    {
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(AttemptError::Fatal(error)) => return Err(error),
                Err(AttemptError::Transient(source)) => {
                    if attempts > self.max_retries {
                        return Err(StorageError::Unreachable {
                            location: location.to_string(),
                            path: path.to_string(),
                            attempts,
                            source,
                        });
                    }
                    let delay = self.delay(attempts - 1).max(self.pushback.remaining());
                    tracing::debug!(location, path, attempts, ?delay, error = %source, "transient storage error, retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// Sorts an `object_store` error into transient or fatal for `path` on `location`.
pub(crate) fn classify(location: &str, path: &str, error: object_store::Error) -> AttemptError {
    if crate::error::store_error_is_transient(&error) {
        AttemptError::Transient(Box::new(error))
    } else {
        AttemptError::Fatal(StorageError::from_store(location, path, error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps_at_five_seconds() {
        let policy = RetryPolicy { max_retries: 5, ..RetryPolicy::default() };
        for _ in 0..100 {
            let first = policy.delay(0);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100), "{first:?}");
            let third = policy.delay(2);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400), "{third:?}");
            let late = policy.delay(40);
            assert!(late >= Duration::from_millis(2500) && late <= MAX_BACKOFF, "{late:?}");
        }
    }

    #[tokio::test]
    async fn retries_transient_then_gives_up_naming_attempts() {
        let policy = RetryPolicy { max_retries: 2, ..RetryPolicy::default() };
        let mut calls = 0;
        let result: Result<(), _> = policy
            .run("s3://b/p", "m/1/model.onnx", || {
                calls += 1;
                async { Err(AttemptError::Transient("connection reset".into())) }
            })
            .await;
        assert_eq!(calls, 3);
        let error = result.expect_err("must fail");
        assert!(error.is_transient());
        let message = error.to_string();
        assert!(message.contains("s3://b/p") && message.contains("3 attempts"), "{message}");
    }

    #[tokio::test]
    async fn fatal_errors_do_not_retry() {
        let policy = RetryPolicy { max_retries: 5, ..RetryPolicy::default() };
        let mut calls = 0;
        let result: Result<(), _> = policy
            .run("s3://b", "x", || {
                calls += 1;
                async {
                    Err(AttemptError::Fatal(StorageError::NotFound { location: "s3://b".into(), path: "x".into() }))
                }
            })
            .await;
        assert_eq!(calls, 1);
        assert!(matches!(result, Err(StorageError::NotFound { .. })));
    }

    fn headers(retry_after: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, retry_after.parse().unwrap());
        headers
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(retry_after(&headers("120"), now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(&headers(" 0 "), now), Some(Duration::ZERO));
        assert_eq!(retry_after(&headers("Wed, 21 Oct 2015 07:28:30 GMT"), now), Some(Duration::from_secs(30)));
        assert_eq!(retry_after(&headers("Wed, 21 Oct 2015 07:00:00 GMT"), now), Some(Duration::ZERO), "passed");
        assert_eq!(retry_after(&headers("-5"), now), None);
        assert_eq!(retry_after(&headers("soon"), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[tokio::test(start_paused = true)]
    async fn pushback_is_noted_from_429_and_503_only_and_capped() {
        let pushback = Pushback::default();
        pushback.note(StatusCode::INTERNAL_SERVER_ERROR, &headers("10"));
        pushback.note(StatusCode::OK, &headers("10"));
        assert_eq!(pushback.remaining(), Duration::ZERO);
        pushback.note(StatusCode::SERVICE_UNAVAILABLE, &headers("3"));
        assert_eq!(pushback.remaining(), Duration::from_secs(3));
        pushback.note(StatusCode::TOO_MANY_REQUESTS, &headers("1"));
        assert_eq!(pushback.remaining(), Duration::from_secs(3), "the latest time asked for holds");
        pushback.note(StatusCode::TOO_MANY_REQUESTS, &headers("86400"));
        assert_eq!(pushback.remaining(), MAX_PUSHBACK);
        tokio::time::advance(MAX_PUSHBACK + Duration::from_secs(1)).await;
        assert_eq!(pushback.remaining(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_wait_out_the_stores_retry_after() {
        let policy = RetryPolicy { max_retries: 1, ..RetryPolicy::default() };
        let started = Instant::now();
        let mut calls = 0;
        let result = policy
            .run("https://host", "m.onnx", || {
                calls += 1;
                let first = calls == 1;
                let pushback = policy.pushback.clone();
                async move {
                    if first {
                        pushback.note(StatusCode::SERVICE_UNAVAILABLE, &headers("7"));
                        return Err(AttemptError::Transient("503 Service Unavailable".into()));
                    }
                    Ok(Instant::now())
                }
            })
            .await;
        let retried_at = result.unwrap();
        assert_eq!(calls, 2);
        assert!(retried_at - started >= Duration::from_secs(7), "{:?}", retried_at - started);
        assert!(retried_at - started < Duration::from_secs(8), "{:?}", retried_at - started);
    }
}
