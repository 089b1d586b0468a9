//! Our own retry loop around whole-object and per-part downloads.
//!
//! object_store retries a request that fails before its body starts, but a body stream that drops halfway
//! (connection reset, a proxy timing out) surfaces as an error from the stream, which nobody retries. So every
//! download attempt here is a complete request-plus-body, and it is retried as a unit: exponential backoff
//! from ~100 ms doubling to at most 5 s, with jitter so that many parts failing together do not retry in step.

use std::future::Future;
use std::time::Duration;

use crate::error::{BoxError, StorageError};

/// The first delay before a retry.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// The longest delay between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The outcome of one attempt that failed.
#[derive(Debug)]
pub(crate) enum AttemptError {
    /// Worth another attempt (timeouts, resets, 5xx, a body that ended early).
    Transient(BoxError),
    /// A definite answer (not found, permission denied, object changed, local disk error).
    Fatal(StorageError),
}

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    /// Retries after the first attempt.
    pub(crate) max_retries: u32,
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
                    let delay = self.delay(attempts - 1);
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
        let policy = RetryPolicy { max_retries: 5 };
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
        let policy = RetryPolicy { max_retries: 2 };
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
        let policy = RetryPolicy { max_retries: 5 };
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
}
