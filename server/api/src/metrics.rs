//! `/metrics`: the Prometheus exporter (installed once per process) and the API's own records: requests by
//! model, version, protocol and code (refused ones included), their latency and bytes. Families are named in
//! `ferroserve_engine::metrics`; process CPU and memory are read from `/proc` at scrape time.

use std::sync::OnceLock;
use std::time::Duration;

use ferroserve_engine::metrics as names;
use ferroserve_engine::{InferError, ModelManager};
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

/// The text exposition: every family, then the process's CPU time and resident memory.
pub fn render(handle: &PrometheusHandle) -> String {
    let mut text = handle.render();
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
