//! `/metrics`: the Prometheus exporter (installed once per process) and the API's own records: requests by
//! model, version, protocol and code (refused ones included), their latency and bytes. Families are named in
//! `ferroserve_engine::metrics`; process CPU and memory are read from `/proc` at scrape time.

use std::sync::OnceLock;
use std::time::Duration;

use ferroserve_engine::metrics as names;
use ferroserve_engine::{InferError, ModelManager};
use ferroserve_gpu::{GpuInfo, GpuMonitor, GpuSample};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Installs the Prometheus recorder the first time (later calls return the same handle). `None` when
/// another recorder is already installed.
pub fn install() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), names::DURATION_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(names::BATCH_SIZE.into()), names::BATCH_BUCKETS));
            match builder.and_then(|b| b.install_recorder()) {
                Ok(handle) => {
                    names::describe();
                    start_upkeep(handle.clone());
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed; /metrics stays empty");
                    None
                }
            }
        })
        .clone()
}

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(2);

/// Folds recorded histogram samples into their buckets every [`UPKEEP_INTERVAL`]. The exporter keeps every
/// sample recorded since the last render or upkeep (8 bytes each, several per request); installed without its
/// HTTP listener it runs no upkeep of its own, so a server that nobody scraped grew by about 240 bytes per
/// request (7 MiB/s at 30 000 requests/s). A thread of its own, since the recorder outlives any runtime.
fn start_upkeep(handle: PrometheusHandle) {
    let started = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
        loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            handle.run_upkeep();
        }
    });
    if let Err(e) = started {
        tracing::warn!(error = %e, "metrics upkeep thread not started; histograms are folded only when scraped");
    }
}

/// NVML for the GPUs the server uses, opened once at start-up; unset where there are none or NVML is missing.
static GPU_MONITOR: OnceLock<GpuMonitor> = OnceLock::new();

/// Reports `gpus` in every scrape from now on (utilisation, memory and power, read from NVML then).
pub fn watch_gpus(gpus: &[GpuInfo]) {
    match GpuMonitor::open(gpus) {
        Ok(monitor) => {
            let _ = GPU_MONITOR.set(monitor);
        }
        Err(why) => tracing::warn!(reason = %why, "no GPU metrics"),
    }
}

/// The text exposition: every family, then the GPUs (when watched), then the process's CPU time and resident
/// memory.
pub fn render(handle: &PrometheusHandle) -> String {
    let mut text = handle.render();
    if let Some(monitor) = GPU_MONITOR.get() {
        render_gpus(&monitor.sample(), &mut text);
    }
    if let Some((cpu_seconds, rss_bytes)) = process_usage() {
        text.push_str(&format!(
            "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n\
             # TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu_seconds}\n\
             # HELP process_resident_memory_bytes Resident memory size in bytes.\n\
             # TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss_bytes}\n"
        ));
    }
    text
}

/// The GPU families, one series per device (labels `gpu`, the CUDA ordinal, and `uuid`); a figure NVML could
/// not give is left out.
fn render_gpus(samples: &[GpuSample], text: &mut String) {
    use std::fmt::Write;
    type Figure = fn(&GpuSample) -> Option<f64>;
    let families: [(&str, &str, Figure); 4] = [
        (names::GPU_UTILIZATION, "Share of the last sample period in which a kernel ran on the GPU (0 to 1)", |s| {
            s.utilization
        }),
        (names::GPU_MEMORY_USED, "GPU memory in use, by every process, in bytes", |s| s.memory_used.map(|b| b as f64)),
        (names::GPU_MEMORY_TOTAL, "GPU memory in all, in bytes", |s| s.memory_total.map(|b| b as f64)),
        (names::GPU_POWER, "GPU power draw in watts", |s| s.power_watts),
    ];
    for (name, help, value) in families {
        let _ = write!(text, "# HELP {name} {help}\n# TYPE {name} gauge\n");
        for sample in samples {
            if let Some(v) = value(sample) {
                let _ = writeln!(text, "{name}{{gpu=\"{}\",uuid=\"{}\"}} {v}", sample.ordinal, sample.uuid);
            }
        }
    }
}

/// (CPU seconds, resident bytes) from `/proc/self` (Linux; clock ticks of 1/100 s and 4 KiB pages).
fn process_usage() -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start at the closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let pages: u64 = std::fs::read_to_string("/proc/self/statm").ok()?.split_whitespace().nth(1)?.parse().ok()?;
    Some((ticks as f64 / 100.0, pages * 4096))
}

/// An HTTP status as a `code` label (a static string, so recording a request allocates nothing).
pub fn http_code(status: http::StatusCode) -> &'static str {
    static CODES: OnceLock<Vec<String>> = OnceLock::new();
    let codes = CODES.get_or_init(|| (0..600).map(|c| c.to_string()).collect());
    codes.get(usize::from(status.as_u16())).map_or("other", String::as_str)
}

/// One answered inference request, as the transports report it.
#[derive(Debug)]
pub struct RequestRecord<'a> {
    /// `http` or `grpc`.
    pub protocol: &'static str,
    /// Model named in the request.
    pub model: &'a str,
    /// Version named in the request, if any.
    pub version: Option<&'a str>,
    /// The status code (`200`, `404`, ... or a gRPC code name).
    pub code: &'static str,
    /// Time in the server.
    pub elapsed: Duration,
    /// Request body bytes.
    pub bytes_in: usize,
    /// Response body bytes.
    pub bytes_out: usize,
}

/// Records a request against the version that served it (cached handles: no label allocation), or, when none
/// did, under the model's name if the server knows it and empty labels if not.
pub fn record(manager: &ModelManager, r: &RequestRecord<'_>) {
    let seconds = r.elapsed.as_secs_f64();
    // A request that reached no version (refused before routing: undecodable, or a pin naming no version) is
    // counted at model level, not under whichever version is newest.
    let Some(version) = r.version else {
        let model = if manager.entry(r.model).is_ok() { r.model } else { "" };
        names::record_unrouted_request(model, r.protocol, r.code, seconds, r.bytes_in as u64);
        return;
    };
    match manager.version(r.model, Some(version)) {
        Ok(v) => v.stats.metrics.record_request(r.protocol, r.code, seconds, r.bytes_in as u64, r.bytes_out as u64),
        Err(InferError::NotReady(_)) if manager.entry(r.model).is_ok() => {
            names::record_unrouted_request(r.model, r.protocol, r.code, seconds, r.bytes_in as u64)
        }
        Err(_) => names::record_unrouted_request("", r.protocol, r.code, seconds, r.bytes_in as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_families_have_one_series_per_device_and_leave_out_what_nvml_did_not_give() {
        let samples = [
            GpuSample {
                ordinal: 0,
                uuid: "GPU-a".into(),
                utilization: Some(0.5),
                memory_used: Some(1024),
                memory_total: Some(4096),
                power_watts: Some(71.5),
            },
            GpuSample {
                ordinal: 1,
                uuid: "GPU-b".into(),
                utilization: Some(0.0),
                memory_used: Some(0),
                memory_total: Some(4096),
                power_watts: None,
            },
        ];
        let mut text = String::new();
        render_gpus(&samples, &mut text);
        for line in [
            "# TYPE ferroserve_gpu_utilization_ratio gauge",
            "ferroserve_gpu_utilization_ratio{gpu=\"0\",uuid=\"GPU-a\"} 0.5",
            "ferroserve_gpu_utilization_ratio{gpu=\"1\",uuid=\"GPU-b\"} 0",
            "ferroserve_gpu_memory_used_bytes{gpu=\"0\",uuid=\"GPU-a\"} 1024",
            "ferroserve_gpu_memory_total_bytes{gpu=\"1\",uuid=\"GPU-b\"} 4096",
            "ferroserve_gpu_power_watts{gpu=\"0\",uuid=\"GPU-a\"} 71.5",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("GPU-b\"} 71"), "no power series for the board that reports none");
        assert_eq!(text.matches("ferroserve_gpu_power_watts{").count(), 1);
    }
}
