//! Per-version inference statistics in the shape of Triton's statistics extension.
//!
//! Counters are lock-free atomics on the request path; only per-batch-size stats take a short lock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::batcher::state::RunReason;
use crate::metrics::VersionMetrics;

/// A count and a total duration.
#[derive(Debug, Default)]
pub struct DurationStat {
    count: AtomicU64,
    ns: AtomicU64,
}

impl DurationStat {
    /// Records one occurrence.
    pub fn record(&self, d: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.ns.fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// (count, total nanoseconds).
    pub fn read(&self) -> (u64, u64) {
        (self.count.load(Ordering::Relaxed), self.ns.load(Ordering::Relaxed))
    }
}

/// A latency histogram with buckets about 6 % wide from 16 ns to over an hour: fine enough to read
/// percentiles from (the statistics extension's count-and-sum durations give only means, and Prometheus buckets
/// are a few per decade), and one relaxed atomic add per request to record.
///
/// Buckets are log-linear, as in HDR histograms: values below 16 ns have a bucket each, and every power of two
/// above is cut into 16 equal buckets.
#[derive(Debug)]
pub struct LatencyHistogram {
    counts: Box<[AtomicU64]>,
}

impl LatencyHistogram {
    /// Sub-buckets per power of two, as a power of two.
    const SUB_BITS: u32 = 4;
    const SUB: u64 = 1 << Self::SUB_BITS;
    /// The largest power of two the buckets cover; longer durations count in the last bucket.
    const TOP_EXPONENT: u32 = 41;
    const BUCKETS: usize =
        ((Self::TOP_EXPONENT - Self::SUB_BITS + 1) as usize) * Self::SUB as usize + Self::SUB as usize;

    /// The bucket of a duration of `ns` nanoseconds.
    fn index(ns: u64) -> usize {
        if ns < Self::SUB {
            return ns as usize;
        }
        let exponent = (63 - ns.leading_zeros()).min(Self::TOP_EXPONENT);
        if exponent == Self::TOP_EXPONENT && ns >> Self::TOP_EXPONENT > 1 {
            return Self::BUCKETS - 1;
        }
        let mantissa = (ns >> (exponent - Self::SUB_BITS)) & (Self::SUB - 1);
        ((exponent - Self::SUB_BITS + 1) as usize) * Self::SUB as usize + mantissa as usize
    }

    /// The exclusive upper bound of bucket `index`, in nanoseconds.
    fn upper_bound_ns(index: usize) -> u64 {
        let sub = Self::SUB as usize;
        if index < sub {
            return index as u64 + 1;
        }
        let exponent = (index / sub) as u32 + Self::SUB_BITS - 1;
        let mantissa = (index % sub) as u64;
        (Self::SUB + mantissa + 1) << (exponent - Self::SUB_BITS)
    }

    /// Counts one duration.
    pub fn record(&self, d: Duration) {
        let ns = d.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.counts[Self::index(ns)].fetch_add(1, Ordering::Relaxed);
    }

    /// The buckets that counted something, as (exclusive upper bound in ns, count), shortest first. The last
    /// bucket (bound 2^42 ns, 73 minutes) also holds anything longer.
    pub fn read(&self) -> Vec<(u64, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let n = c.load(Ordering::Relaxed);
                (n > 0).then(|| (Self::upper_bound_ns(i), n))
            })
            .collect()
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram { counts: (0..Self::BUCKETS).map(|_| AtomicU64::new(0)).collect() }
    }
}

/// Stats of executions at one batch size.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchStat {
    /// Executions at this size.
    pub count: u64,
    /// Input preparation time.
    pub compute_input_ns: u64,
    /// Model execution time.
    pub compute_infer_ns: u64,
    /// Output extraction time.
    pub compute_output_ns: u64,
}

/// Statistics of one model version, and its Prometheus handles: both are recorded at the same points, so the
/// statistics extension and `/metrics` agree.
#[derive(Debug)]
pub struct ModelStats {
    /// Prometheus handles of the version.
    pub metrics: VersionMetrics,
    /// Requests that succeeded, end to end inside the engine.
    pub success: DurationStat,
    /// The same requests' latencies, for percentiles.
    pub success_latency: LatencyHistogram,
    /// Requests that failed after reaching the model.
    pub fail: DurationStat,
    /// Time spent queued before an instance took the request.
    pub queue: DurationStat,
    /// Input preparation.
    pub compute_input: DurationStat,
    /// Model execution.
    pub compute_infer: DurationStat,
    /// Output extraction.
    pub compute_output: DurationStat,
    inference_count: AtomicU64,
    execution_count: AtomicU64,
    last_inference_ms: AtomicU64,
    batches: Mutex<BTreeMap<u64, BatchStat>>,
    /// Batches by why they ran, indexed by [`RunReason::index`].
    batch_reasons: [AtomicU64; RunReason::ALL.len()],
    /// Output bytes per input byte of the executions so far, for the memory estimate of requests.
    pub output_ratio: crate::memory::OutputRatio,
}

/// A consistent-enough copy of [`ModelStats`] for reporting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Milliseconds since the epoch of the last inference (0 = never).
    pub last_inference_ms: u64,
    /// Inferences (batch items) performed.
    pub inference_count: u64,
    /// Model executions.
    pub execution_count: u64,
    /// (count, ns) for success, fail, queue, compute_input, compute_infer, compute_output.
    pub success: (u64, u64),
    /// Failures.
    pub fail: (u64, u64),
    /// Queueing.
    pub queue: (u64, u64),
    /// Input preparation.
    pub compute_input: (u64, u64),
    /// Execution.
    pub compute_infer: (u64, u64),
    /// Output extraction.
    pub compute_output: (u64, u64),
    /// Per batch size.
    pub batches: Vec<(u64, BatchStat)>,
    /// Batches by why they ran, in [`RunReason::ALL`] order.
    pub batch_reasons: [u64; RunReason::ALL.len()],
    /// Successful requests by latency: (exclusive upper bound in ns, count) of each bucket that counted any.
    pub success_latency: Vec<(u64, u64)>,
}

impl Default for ModelStats {
    fn default() -> Self {
        ModelStats::with_metrics(VersionMetrics::detached())
    }
}

impl ModelStats {
    /// Statistics recording into `metrics` too.
    pub fn with_metrics(metrics: VersionMetrics) -> Self {
        ModelStats {
            metrics,
            success: DurationStat::default(),
            success_latency: LatencyHistogram::default(),
            fail: DurationStat::default(),
            queue: DurationStat::default(),
            compute_input: DurationStat::default(),
            compute_infer: DurationStat::default(),
            compute_output: DurationStat::default(),
            inference_count: AtomicU64::new(0),
            execution_count: AtomicU64::new(0),
            last_inference_ms: AtomicU64::new(0),
            batches: Mutex::new(BTreeMap::new()),
            batch_reasons: Default::default(),
            output_ratio: Default::default(),
        }
    }

    /// Records why a batch ran.
    pub fn record_batch_reason(&self, reason: RunReason) {
        self.batch_reasons[reason.index()].fetch_add(1, Ordering::Relaxed);
        self.metrics.batch_reasons[reason.index()].increment(1);
    }

    /// Records one execution of `batch_size` items.
    pub fn record_execution(&self, batch_size: u64, input: Duration, infer: Duration, output: Duration) {
        self.metrics.compute.record(infer.as_secs_f64());
        self.metrics.batch.record(batch_size as f64);
        self.metrics.inferences.increment(batch_size);
        self.metrics.executions.increment(1);
        self.compute_input.record(input);
        self.compute_infer.record(infer);
        self.compute_output.record(output);
        self.inference_count.fetch_add(batch_size, Ordering::Relaxed);
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        self.last_inference_ms.store(now, Ordering::Relaxed);
        let mut batches = self.batches.lock();
        let entry = batches.entry(batch_size).or_default();
        entry.count += 1;
        entry.compute_input_ns += input.as_nanos() as u64;
        entry.compute_infer_ns += infer.as_nanos() as u64;
        entry.compute_output_ns += output.as_nanos() as u64;
    }

    /// Records a request that succeeded after `took`, end to end inside the engine.
    pub fn record_success(&self, took: Duration) {
        self.success.record(took);
        self.success_latency.record(took);
    }

    /// Records how long a request waited in the queue.
    pub fn record_queued(&self, waited: Duration) {
        self.queue.record(waited);
        self.metrics.queue.record(waited.as_secs_f64());
    }

    /// Copies the current values.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            last_inference_ms: self.last_inference_ms.load(Ordering::Relaxed),
            inference_count: self.inference_count.load(Ordering::Relaxed),
            execution_count: self.execution_count.load(Ordering::Relaxed),
            success: self.success.read(),
            fail: self.fail.read(),
            queue: self.queue.read(),
            compute_input: self.compute_input.read(),
            compute_infer: self.compute_infer.read(),
            compute_output: self.compute_output.read(),
            batches: self.batches.lock().iter().map(|(k, v)| (*k, *v)).collect(),
            batch_reasons: std::array::from_fn(|i| self.batch_reasons[i].load(Ordering::Relaxed)),
            success_latency: self.success_latency.read(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_executions() {
        let stats = ModelStats::default();
        stats.record_execution(4, Duration::from_nanos(10), Duration::from_nanos(100), Duration::from_nanos(5));
        stats.record_execution(4, Duration::from_nanos(10), Duration::from_nanos(100), Duration::from_nanos(5));
        stats.record_success(Duration::from_nanos(300));
        let snap = stats.snapshot();
        assert_eq!(snap.inference_count, 8);
        assert_eq!(snap.execution_count, 2);
        assert_eq!(snap.compute_infer, (2, 200));
        assert_eq!(
            snap.batches,
            vec![(4, BatchStat { count: 2, compute_input_ns: 20, compute_infer_ns: 200, compute_output_ns: 10 })]
        );
        assert!(snap.last_inference_ms > 0);
        assert_eq!(snap.success_latency, vec![(304, 1)]);
    }

    #[test]
    fn latency_buckets_are_contiguous_and_about_six_percent_wide() {
        let mut lower = 0;
        for i in 0..LatencyHistogram::BUCKETS {
            let upper = LatencyHistogram::upper_bound_ns(i);
            assert!(upper > lower, "bucket {i}");
            assert_eq!(LatencyHistogram::index(lower), i, "bucket {i} starts at {lower}");
            assert_eq!(LatencyHistogram::index(upper - 1), i, "bucket {i} ends before {upper}");
            if lower >= 16 {
                assert!((upper - lower) as f64 / lower as f64 <= 1.0 / 16.0 + 1e-12, "bucket {i}: {lower}..{upper}");
            }
            lower = upper;
        }
        assert!(lower >= 3_600 * 1_000_000_000, "covers an hour: {lower}");
        assert_eq!(LatencyHistogram::index(u64::MAX), LatencyHistogram::BUCKETS - 1);
        assert_eq!(LatencyHistogram::index(lower), LatencyHistogram::BUCKETS - 1);
    }

    #[test]
    fn latencies_count_in_their_bucket() {
        let h = LatencyHistogram::default();
        for ns in [0, 5, 1_000, 1_030, 1_000_000, 1_000_000, u64::MAX] {
            h.record(Duration::from_nanos(ns));
        }
        let read = h.read();
        assert_eq!(read.iter().map(|(_, n)| n).sum::<u64>(), 7);
        assert_eq!(read[0], (1, 1));
        assert_eq!(read[1], (6, 1));
        assert!(read.contains(&(1_024, 1)) && read.contains(&(1_088, 1)), "{read:?}");
        let million = read.iter().find(|(upper, _)| *upper > 1_000_000).copied();
        assert!(matches!(million, Some((upper, 2)) if upper <= 1_000_000 * 17 / 16 + 1), "{read:?}");
    }
}
