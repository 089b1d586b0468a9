//! Distributed-tracing spans for sampled requests only.
//!
//! The API decides per request whether it is traced (a `traceparent` that says so, or the sampling ratio) and
//! runs a sampled request inside a span whose target is [`TARGET`]. Code further down asks [`sampled`] before
//! opening a span of its own, so an unsampled request, and every request while tracing is off, creates no span
//! beyond the request-id one: the check is one relaxed atomic load when tracing is off.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing::Span;

/// The target of every span that is exported: the exporter's filter selects spans by it.
pub const TARGET: &str = "ferroserve::trace";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns tracing on for the process (the API calls it once an exporter is installed).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether tracing is on at all.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether the current span belongs to a sampled request.
pub fn sampled() -> bool {
    enabled() && Span::current().metadata().is_some_and(|m| m.target() == TARGET)
}

/// A child span of the current sampled request, or a disabled span (no cost) otherwise.
#[macro_export]
macro_rules! trace_span {
    ($name:literal $(, $($fields:tt)*)?) => {
        if $crate::trace::sampled() {
            ::tracing::debug_span!(target: "ferroserve::trace", $name $(, $($fields)*)?)
        } else {
            ::tracing::Span::none()
        }
    };
}

/// The spans a queued request carries into the batcher: its parent (the request) and the open `queue` span,
/// which closes when an instance picks the request up.
#[derive(Debug)]
pub struct QueuedTrace {
    parent: Span,
    queue: Span,
}

impl QueuedTrace {
    /// Opens the `queue` span under the current request, if it is sampled.
    pub fn start() -> Option<Self> {
        if !sampled() {
            return None;
        }
        let parent = Span::current();
        let queue = tracing::debug_span!(target: "ferroserve::trace", parent: &parent, "queue");
        Some(QueuedTrace { parent, queue })
    }

    /// Closes the `queue` span and opens the `execute` span of the batch the request runs in.
    pub fn execute(self, batch_size: usize, requests: usize) -> Span {
        drop(self.queue);
        // Signed: OpenTelemetry has no unsigned integers, and exports a `u64` as text.
        let (batch_size, requests) = (batch_size as i64, requests as i64);
        tracing::debug_span!(target: "ferroserve::trace", parent: &self.parent, "execute", batch_size, requests)
    }
}
