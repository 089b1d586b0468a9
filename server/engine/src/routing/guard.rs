//! Automatic rollback of a canary: each routed version's outcomes over a sliding window, and the rule that
//! compares a canary with the primary (the version with the largest weight). Pure: callers pass the time in.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::PolicyError;

/// When a canary is taken out of the split.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardPolicy {
    /// The canary's error rate may exceed the primary's by at most this much (0.05 = 5 points).
    pub max_error_rate_increase: f64,
    /// The canary's p99 latency may be at most this multiple of the primary's.
    pub max_p99_ratio: f64,
    /// Outcomes older than this are forgotten.
    pub window: Duration,
    /// Neither version is judged on fewer requests than this in the window.
    pub min_requests: u64,
}

impl Default for GuardPolicy {
    fn default() -> Self {
        GuardPolicy {
            max_error_rate_increase: 0.05,
            max_p99_ratio: 2.0,
            window: Duration::from_secs(30),
            min_requests: 50,
        }
    }
}

impl GuardPolicy {
    /// `"error_rate=0.05,p99_ratio=2,window_secs=30,min_requests=50"`; keys left out keep their defaults.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let mut guard = GuardPolicy::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| PolicyError(format!("`{part}` is not key=value")))?;
            let number: f64 =
                value.trim().parse().map_err(|_| PolicyError(format!("guard `{key}`: `{value}` is not a number")))?;
            match key.trim() {
                "error_rate" => guard.max_error_rate_increase = number,
                "p99_ratio" => guard.max_p99_ratio = number,
                "window_secs" if number > 0.0 && number <= 86_400.0 => guard.window = Duration::from_secs_f64(number),
                "min_requests" if number >= 1.0 => guard.min_requests = number as u64,
                other => return Err(PolicyError(format!("guard key `{other}` (or its value) is not understood"))),
            }
        }
        guard.check()?;
        Ok(guard)
    }

    /// Refuses bounds that cannot be met or never trigger by accident.
    pub fn check(&self) -> Result<(), PolicyError> {
        if !(0.0..=1.0).contains(&self.max_error_rate_increase) {
            return Err(PolicyError("guard error_rate must be between 0 and 1".into()));
        }
        if !(self.max_p99_ratio >= 1.0 && self.max_p99_ratio.is_finite()) {
            return Err(PolicyError("guard p99_ratio must be at least 1".into()));
        }
        if self.window.is_zero() || self.min_requests == 0 {
            return Err(PolicyError("guard window_secs and min_requests must be positive".into()));
        }
        Ok(())
    }
}

/// Latency buckets: bucket `i` holds latencies up to `FIRST_BUCKET_US * GROWTH^i` (10 µs to about a minute).
const FIRST_BUCKET_US: f64 = 10.0;
const GROWTH: f64 = 1.25;
const BUCKETS: usize = 72;
/// Slices per window: outcomes leave the window a slice at a time.
const SLICES: u32 = 10;

#[derive(Debug, Clone)]
struct Slice {
    start: Instant,
    requests: u64,
    errors: u64,
    latency: [u32; BUCKETS],
}

fn bucket_of(latency: Duration) -> usize {
    let us = latency.as_secs_f64() * 1e6;
    if us <= FIRST_BUCKET_US {
        return 0;
    }
    (((us / FIRST_BUCKET_US).ln() / GROWTH.ln()).ceil() as usize).min(BUCKETS - 1)
}

fn bucket_upper(i: usize) -> Duration {
    Duration::from_secs_f64(FIRST_BUCKET_US * GROWTH.powi(i as i32) / 1e6)
}

/// One version's outcomes over the window.
#[derive(Debug, Clone, Default)]
pub struct Window {
    slices: VecDeque<Slice>,
}

/// A window's totals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Outcomes in the window.
    pub requests: u64,
    /// Of which errors.
    pub errors: u64,
    /// Upper bound of the bucket holding the 99th percentile (zero without requests).
    pub p99: Duration,
}

impl Summary {
    /// Errors over requests (0 without requests).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 { 0.0 } else { self.errors as f64 / self.requests as f64 }
    }
}

impl Window {
    fn expire(&mut self, span: Duration, now: Instant) {
        while self.slices.front().is_some_and(|s| now.saturating_duration_since(s.start) >= span) {
            self.slices.pop_front();
        }
    }

    /// Records one outcome at `now`.
    pub fn record(&mut self, span: Duration, ok: bool, latency: Duration, now: Instant) {
        self.expire(span, now);
        let slice_len = span / SLICES;
        let fresh = self.slices.back().is_none_or(|s| now.saturating_duration_since(s.start) >= slice_len);
        if fresh {
            self.slices.push_back(Slice { start: now, requests: 0, errors: 0, latency: [0; BUCKETS] });
        }
        if let Some(slice) = self.slices.back_mut() {
            slice.requests += 1;
            slice.errors += u64::from(!ok);
            slice.latency[bucket_of(latency)] += 1;
        }
    }

    /// Totals of the outcomes still inside the window at `now`.
    pub fn summary(&mut self, span: Duration, now: Instant) -> Summary {
        self.expire(span, now);
        let mut counts = [0u64; BUCKETS];
        let (mut requests, mut errors) = (0, 0);
        for s in &self.slices {
            requests += s.requests;
            errors += s.errors;
            for (c, &n) in counts.iter_mut().zip(&s.latency) {
                *c += u64::from(n);
            }
        }
        let mut p99 = Duration::ZERO;
        if requests > 0 {
            let rank = (requests as f64 * 0.99).ceil() as u64;
            let mut seen = 0;
            for (i, &c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    p99 = bucket_upper(i);
                    break;
                }
            }
        }
        Summary { requests, errors, p99 }
    }
}

/// The guard's memory for one model: a window per version.
#[derive(Debug, Clone, Default)]
pub struct GuardState {
    windows: BTreeMap<u64, Window>,
}

impl GuardState {
    /// Records the outcome of a request routed (not named) to `version`.
    pub fn record(&mut self, policy: &GuardPolicy, version: u64, ok: bool, latency: Duration, now: Instant) {
        self.windows.entry(version).or_default().record(policy.window, ok, latency, now);
    }

    /// Why `canary` must leave the split compared with `primary`, if it must.
    pub fn verdict(&mut self, policy: &GuardPolicy, primary: u64, canary: u64, now: Instant) -> Option<String> {
        let p = self.windows.entry(primary).or_default().summary(policy.window, now);
        let c = self.windows.entry(canary).or_default().summary(policy.window, now);
        if p.requests < policy.min_requests || c.requests < policy.min_requests {
            return None;
        }
        let (pe, ce) = (p.error_rate(), c.error_rate());
        if ce - pe > policy.max_error_rate_increase {
            return Some(format!(
                "version {canary} error rate {:.1}% vs {:.1}% for version {primary} over {} + {} requests (bound: +{:.1} points)",
                ce * 100.0,
                pe * 100.0,
                c.requests,
                p.requests,
                policy.max_error_rate_increase * 100.0
            ));
        }
        if c.p99.as_secs_f64() > policy.max_p99_ratio * p.p99.as_secs_f64() {
            return Some(format!(
                "version {canary} p99 {:.3} ms vs {:.3} ms for version {primary} (bound: {}x)",
                c.p99.as_secs_f64() * 1e3,
                p.p99.as_secs_f64() * 1e3,
                policy.max_p99_ratio
            ));
        }
        None
    }

    /// Forgets a version (it left the split).
    pub fn forget(&mut self, version: u64) {
        self.windows.remove(&version);
    }
}
