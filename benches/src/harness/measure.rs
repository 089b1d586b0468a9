//! The measurement drivers: closed loop (N workers, each sending the next request when the previous one
//! returns) and open loop (requests sent on a schedule, constant or Poisson, whatever the responses do).
//! Both record into windows; a point is stable when the last windows' throughputs agree.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::sync::Mutex;

use super::cli::{Args, Distribution};
use super::client::{Connection, Payload};
use super::model::Rng;
use super::server_stats::{self, Counters, ServerSide};

/// One point of a sweep.
#[derive(Debug, Clone, Copy, Serialize)]
pub enum Load {
    /// Closed loop with this many concurrent requests.
    Concurrency(usize),
    /// Open loop at this many requests per second.
    Rate(f64),
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Load::Concurrency(c) => write!(f, "concurrency {c}"),
            Load::Rate(r) => write!(f, "rate {r}/s"),
        }
    }
}

/// The result of one point.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// What was applied.
    pub load: Load,
    /// Successful responses per second.
    pub throughput: f64,
    /// Mean latency, ms.
    pub mean_ms: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Successful requests measured.
    pub requests: u64,
    /// Failed requests measured.
    pub errors: u64,
    /// Whether the stability criterion was met.
    pub stable: bool,
    /// Windows measured.
    pub windows: usize,
    /// The first error message seen, if any.
    pub first_error: Option<String>,
    /// What the server reports it did over the measured windows (statistics extension), when it can.
    pub server: Option<ServerSide>,
}

#[derive(Default)]
struct Recorder {
    latencies_us: std::sync::Mutex<Vec<u32>>,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Recorder {
    fn record(&self, result: Result<(), String>, latency: Duration) {
        match result {
            Ok(()) => {
                if let Ok(mut l) = self.latencies_us.lock() {
                    l.push(latency.as_micros().min(u32::MAX as u128) as u32);
                }
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_error.lock() {
                    first.get_or_insert(e);
                }
            }
        }
    }

    fn take(&self) -> (Vec<u32>, u64) {
        let latencies = self.latencies_us.lock().map(|mut l| std::mem::take(&mut *l)).unwrap_or_default();
        (latencies, self.errors.swap(0, Ordering::Relaxed))
    }
}

struct Window {
    latencies_us: Vec<u32>,
    errors: u64,
    secs: f64,
}

impl Window {
    fn throughput(&self) -> f64 {
        self.latencies_us.len() as f64 / self.secs
    }
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

/// Runs one point of the sweep.
pub async fn measure(args: &Args, payload: &Payload, load: Load) -> anyhow::Result<Measurement> {
    let recorder = Arc::new(Recorder::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    match load {
        Load::Concurrency(n) => {
            for _ in 0..n {
                let mut connection = payload.connect().await?;
                let recorder = Arc::clone(&recorder);
                let stop = Arc::clone(&stop);
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let sent = Instant::now();
                        let result = connection.send().await;
                        recorder.record(result, sent.elapsed());
                    }
                }));
            }
        }
        Load::Rate(rate) => {
            let pool: Arc<Mutex<Vec<Connection>>> = Arc::new(Mutex::new(Vec::new()));
            let in_flight = Arc::new(AtomicU64::new(0));
            let payload = payload.clone();
            let recorder = Arc::clone(&recorder);
            let stop = Arc::clone(&stop);
            let max_in_flight = args.max_in_flight as u64;
            let poisson = args.distribution == Distribution::Poisson;
            let mut rng = Rng::new(args.seed ^ 0xABCD);
            // The schedule is kept by an OS thread, not a tokio timer: tokio's timers tick once a millisecond,
            // which would send the requests of each millisecond together (bursts of 7 at 7 000/s) instead of
            // at their own times. The thread sleeps to each send time (Linux oversleeps by ~50 us, and the
            // schedule is absolute, so it catches up) and hands the request to the runtime.
            let runtime = tokio::runtime::Handle::current();
            std::thread::Builder::new().name("open-loop-pacer".into()).spawn(move || {
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let gap = if poisson { -(1.0 - rng.unit()).ln() / rate } else { 1.0 / rate };
                    next += Duration::from_secs_f64(gap);
                    // In slices, so that a slow schedule still notices the end of the measurement.
                    while let Some(left) = next.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        std::thread::sleep(left.min(Duration::from_millis(50)));
                    }
                    let scheduled = next;
                    if in_flight.load(Ordering::Relaxed) >= max_in_flight {
                        recorder.record(Err("too many requests in flight (--max-in-flight)".into()), Duration::ZERO);
                        continue;
                    }
                    in_flight.fetch_add(1, Ordering::Relaxed);
                    let (pool, payload, recorder, in_flight) =
                        (Arc::clone(&pool), payload.clone(), Arc::clone(&recorder), Arc::clone(&in_flight));
                    runtime.spawn(async move {
                        let reused = pool.lock().await.pop();
                        let connection = match reused {
                            Some(c) => Ok(c),
                            None => payload.connect().await.map_err(|e| e.to_string()),
                        };
                        match connection {
                            Ok(mut c) => {
                                let result = c.send().await;
                                recorder.record(result, scheduled.elapsed());
                                pool.lock().await.push(c);
                            }
                            Err(e) => recorder.record(Err(e), scheduled.elapsed()),
                        }
                        in_flight.fetch_sub(1, Ordering::Relaxed);
                    });
                }
            })?;
        }
    }

    let progress = if args.no_progress { ProgressBar::hidden() } else { ProgressBar::new(args.max_windows as u64) };
    progress.set_style(
        ProgressStyle::with_template("{prefix:>18} [{bar:20}] {pos}/{len} windows {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    progress.set_prefix(load.to_string());
    progress.set_message("warming up");
    tokio::time::sleep(Duration::from_secs_f64(args.warmup_secs)).await;
    recorder.take();
    let mut windows: Vec<Window> = Vec::new();
    // The server's counters at the start of each window, to report the server side of the windows used.
    let mut counters: Vec<Option<Counters>> = Vec::new();
    let need = args.stable_windows.max(1);
    let mut stable = false;
    while windows.len() < args.max_windows.max(need) {
        counters.push(server_stats::read(args).await);
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(args.window_secs)).await;
        let (latencies_us, errors) = recorder.take();
        let window = Window { latencies_us, errors, secs: started.elapsed().as_secs_f64() };
        progress.set_message(format!("{:.0} infer/s", window.throughput()));
        progress.inc(1);
        windows.push(window);
        if windows.len() >= need {
            let last = &windows[windows.len() - need..];
            let mean = last.iter().map(Window::throughput).sum::<f64>() / need as f64;
            if mean > 0.0 && last.iter().all(|w| (w.throughput() - mean).abs() <= mean * args.stability_percent / 100.0)
            {
                stable = true;
                break;
            }
        }
    }
    let counters_after = server_stats::read(args).await;
    stop.store(true, Ordering::Relaxed);
    progress.finish_and_clear();
    for t in &tasks {
        t.abort();
    }
    let first_used = windows.len().saturating_sub(need);
    let used = &windows[first_used..];
    let server = match (counters.get(first_used).cloned().flatten(), counters_after) {
        (Some(before), Some(after)) => after.since(&before),
        _ => None,
    };
    let secs: f64 = used.iter().map(|w| w.secs).sum();
    let errors: u64 = used.iter().map(|w| w.errors).sum();
    let mut all: Vec<u32> = used.iter().flat_map(|w| w.latencies_us.iter().copied()).collect();
    all.sort_unstable();
    let mean_ms =
        if all.is_empty() { 0.0 } else { all.iter().map(|&l| l as f64).sum::<f64>() / all.len() as f64 / 1000.0 };
    let first_error = recorder.first_error.lock().ok().and_then(|e| e.clone());
    Ok(Measurement {
        load,
        throughput: all.len() as f64 / secs.max(1e-9),
        mean_ms,
        p50_ms: percentile(&all, 0.50),
        p90_ms: percentile(&all, 0.90),
        p95_ms: percentile(&all, 0.95),
        p99_ms: percentile(&all, 0.99),
        requests: all.len() as u64,
        errors,
        stable,
        windows: windows.len(),
        first_error,
        server,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
