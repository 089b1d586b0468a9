//! Prometheus metric names, in one place, recorded through the `metrics` facade where things happen (the
//! engine: queue, batch, compute, in-flight; the API: requests by protocol and code). The exporter is
//! installed by the binary; without one every handle is a no-op.
//!
//! Names follow Prometheus conventions: base units, `_seconds`, `_total`, `_bytes`; labels are bounded
//! (`model`, `version`, `protocol`, `code`: a request for a model the server does not have is counted with
//! empty `model` and `version`, so hostile names cannot grow the series).

use metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

/// Requests answered, by model, version, protocol (`http`, `grpc`) and status code.
pub const REQUESTS: &str = "ferroserve_requests_total";
/// End-to-end request latency in the server, by model, version and protocol.
pub const REQUEST_DURATION: &str = "ferroserve_request_duration_seconds";
/// Request and response body sizes, by model, version, protocol and direction.
pub const PAYLOAD_BYTES: &str = "ferroserve_payload_bytes_total";
/// Time a request waited in its version's queue.
pub const QUEUE_DURATION: &str = "ferroserve_queue_duration_seconds";
/// Model execution time of one batch.
pub const COMPUTE_DURATION: &str = "ferroserve_compute_duration_seconds";
/// Items per model execution (the batch the batcher formed).
pub const BATCH_SIZE: &str = "ferroserve_batch_size";
/// Items inferred (a batch of 8 counts 8).
pub const INFERENCES: &str = "ferroserve_inferences_total";
/// Model executions.
pub const EXECUTIONS: &str = "ferroserve_executions_total";
/// Requests inside the engine for a version (queued or running): what KEDA and an HPA scale on.
pub const IN_FLIGHT: &str = "ferroserve_inflight_requests";
/// Requests waiting in a version's queue.
pub const QUEUE_DEPTH: &str = "ferroserve_queue_depth";
/// Time to load (or reload) a model.
pub const LOAD_DURATION: &str = "ferroserve_model_load_duration_seconds";
/// 1 for the state a model is in (`state` label: READY, LOADING, UNLOADING, UNAVAILABLE), else 0.
pub const MODEL_STATE: &str = "ferroserve_model_state";

/// Shadow copies of requests, by model, (shadow) version and outcome (`ok`, `error`, `dropped`).
pub const SHADOW_REQUESTS: &str = "ferroserve_shadow_requests_total";
/// Latency of shadow requests.
pub const SHADOW_DURATION: &str = "ferroserve_shadow_duration_seconds";
/// Per shadow request: the largest absolute difference from the primary's outputs.
pub const SHADOW_ABS_DIFF: &str = "ferroserve_shadow_max_abs_difference";
/// Per shadow request with floating-point outputs: the largest relative error against the primary's.
pub const SHADOW_REL_ERROR: &str = "ferroserve_shadow_relative_error";
/// Canaries the guard took out of a split.
pub const ROLLBACKS: &str = "ferroserve_traffic_rollbacks_total";
/// The weight of each version in its model's split (absent under `latest`).
pub const TRAFFIC_WEIGHT: &str = "ferroserve_traffic_weight";

/// Time each instance spent on batches (taking them apart, running the model, answering), by model, version,
/// instance (its index in the version) and device (`cpu`, `cuda:0`): with `rate()`, how busy each instance is.
/// In nanoseconds: the `metrics` counters count whole numbers, and a 3 µs execution must not round away
/// (Triton's own duration counters are whole microseconds, `nv_inference_compute_infer_duration_us`).
pub const INSTANCE_BUSY: &str = "ferroserve_instance_busy_nanoseconds_total";

/// Per GPU the server uses (labels `gpu`, the CUDA ordinal, and `uuid`), read from NVML at scrape time: the
/// share of the last sample period in which a kernel ran, 0 to 1.
pub const GPU_UTILIZATION: &str = "ferroserve_gpu_utilization_ratio";
/// Per GPU: memory in use by every process, bytes.
pub const GPU_MEMORY_USED: &str = "ferroserve_gpu_memory_used_bytes";
/// Per GPU: memory in all, bytes.
pub const GPU_MEMORY_TOTAL: &str = "ferroserve_gpu_memory_total_bytes";
/// Per GPU: power draw, watts.
pub const GPU_POWER: &str = "ferroserve_gpu_power_watts";

/// The CPU's busy share as the adaptive batching window sees it (the larger of this process's share of the CPUs
/// it may use and the machine's; a moving average over about a third of a second): from
/// [`crate::cpu::SATURATED_SHARE`] on, partial batches are held for the preferred size under sustained load.
pub const CPU_BUSY: &str = "ferroserve_cpu_busy_ratio";

/// Batches by why they ran (`reason`: unbatched, full, preferred, window, adaptive, flush).
pub const BATCHES: &str = "ferroserve_batches_total";

/// Histogram buckets for shadow divergence: 1e-9 to 1e3, two per decade.
pub const DIVERGENCE_BUCKETS: &[f64] = &[
    1e-9, 3e-9, 1e-8, 3e-8, 1e-7, 3e-7, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0,
    10.0, 100.0, 1000.0,
];

/// Histogram buckets for durations: 10 µs to 30 s, about three per decade.
pub const DURATION_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];
/// Histogram buckets for batch sizes.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Describes every family (help text and unit) to the installed recorder.
pub fn describe() {
    describe_counter!(REQUESTS, "Inference requests answered, by status code");
    describe_histogram!(REQUEST_DURATION, Unit::Seconds, "Request latency inside the server");
    describe_counter!(PAYLOAD_BYTES, Unit::Bytes, "Inference request and response body bytes");
    describe_histogram!(QUEUE_DURATION, Unit::Seconds, "Time requests waited in the queue");
    describe_histogram!(COMPUTE_DURATION, Unit::Seconds, "Model execution time per batch");
    describe_histogram!(BATCH_SIZE, "Items per model execution");
    describe_counter!(INFERENCES, "Items inferred");
    describe_counter!(EXECUTIONS, "Model executions");
    describe_gauge!(IN_FLIGHT, "Requests queued or running in the engine");
    describe_gauge!(QUEUE_DEPTH, "Requests waiting in the queue");
    describe_histogram!(LOAD_DURATION, Unit::Seconds, "Model load duration");
    describe_gauge!(MODEL_STATE, "1 for the model's current state");
    describe_counter!(SHADOW_REQUESTS, "Shadow copies of requests, by outcome");
    describe_histogram!(SHADOW_DURATION, Unit::Seconds, "Shadow request latency");
    describe_histogram!(SHADOW_ABS_DIFF, "Largest absolute output difference, shadow vs primary, per request");
    describe_histogram!(SHADOW_REL_ERROR, "Largest relative output error, shadow vs primary, per request");
    describe_counter!(ROLLBACKS, "Canaries rolled back by the traffic guard");
    describe_gauge!(TRAFFIC_WEIGHT, "Weight of each version in its model's traffic split");
    describe_counter!(BATCHES, "Batches executed, by why they ran");
    describe_counter!(INSTANCE_BUSY, "Nanoseconds each instance spent executing batches");
    describe_gauge!(CPU_BUSY, "CPU busy share the adaptive batching window sees (0 to 1)");
}

/// Publishes a model's split weights; versions of the `previous` split that left it go to 0.
pub fn record_traffic(
    model: &str,
    policy: &crate::routing::TrafficPolicy,
    previous: Option<&crate::routing::TrafficPolicy>,
) {
    let gone = previous.into_iter().flat_map(|p| p.split.keys()).filter(|v| !policy.split.contains_key(v));
    for version in gone {
        gauge!(TRAFFIC_WEIGHT, "model" => model.to_string(), "version" => version.to_string()).set(0.0);
    }
    for (version, weight) in &policy.split {
        gauge!(TRAFFIC_WEIGHT, "model" => model.to_string(), "version" => version.to_string()).set(f64::from(*weight));
    }
}

/// Counts a rollback of `version`.
pub fn record_rollback(model: &str, version: u64) {
    counter!(ROLLBACKS, "model" => model.to_string(), "version" => version.to_string()).increment(1);
}

/// The request families of one version for one protocol and status code.
#[derive(Debug, Clone)]
struct RequestHandles {
    protocol: &'static str,
    code: &'static str,
    requests: Counter,
    duration: Histogram,
    bytes_in: Counter,
    bytes_out: Counter,
}

/// The engine-side metric handles of one model version, registered once when the version is built; request
/// handles are registered on first use per (protocol, code) and reused, so the request path does no label
/// allocation or registry lookup.
#[derive(Debug, Clone)]
pub struct VersionMetrics {
    labels: [(&'static str, String); 2],
    requests: std::sync::Arc<parking_lot::RwLock<Vec<RequestHandles>>>,
    pub(crate) queue: Histogram,
    pub(crate) compute: Histogram,
    pub(crate) batch: Histogram,
    pub(crate) inferences: Counter,
    pub(crate) executions: Counter,
    pub(crate) in_flight: Gauge,
    pub(crate) queue_depth: Gauge,
    pub(crate) batch_reasons: [Counter; crate::batcher::state::RunReason::ALL.len()],
}

impl VersionMetrics {
    /// The busy-time counter of instance `index`, on `device`.
    pub(crate) fn instance_busy(&self, index: usize, device: ferroserve_runtime::Device) -> Counter {
        let [(_, model), (_, version)] = &self.labels;
        counter!(INSTANCE_BUSY, "model" => model.clone(), "version" => version.clone(),
            "instance" => index.to_string(), "device" => device.to_string())
    }

    /// Handles labelled with `model` and `version`.
    pub fn new(model: &str, version: u64) -> Self {
        let labels = [("model", model.to_string()), ("version", version.to_string())];
        VersionMetrics {
            requests: Default::default(),
            queue: histogram!(QUEUE_DURATION, &labels),
            compute: histogram!(COMPUTE_DURATION, &labels),
            batch: histogram!(BATCH_SIZE, &labels),
            inferences: counter!(INFERENCES, &labels),
            executions: counter!(EXECUTIONS, &labels),
            in_flight: gauge!(IN_FLIGHT, &labels),
            queue_depth: gauge!(QUEUE_DEPTH, &labels),
            batch_reasons: crate::batcher::state::RunReason::ALL.map(|r| {
                counter!(BATCHES, "model" => labels[0].1.clone(), "version" => labels[1].1.clone(), "reason" => r.as_str())
            }),
            labels,
        }
    }

    /// Records one answered request of this version.
    pub fn record_request(
        &self,
        protocol: &'static str,
        code: &'static str,
        seconds: f64,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        let cached = self.requests.read().iter().find(|h| h.protocol == protocol && h.code == code).cloned();
        let handles = match cached {
            Some(h) => h,
            None => {
                let h = request_handles(&self.labels[0].1, &self.labels[1].1, protocol, code);
                self.requests.write().push(h.clone());
                h
            }
        };
        handles.requests.increment(1);
        handles.duration.record(seconds);
        handles.bytes_in.increment(bytes_in);
        handles.bytes_out.increment(bytes_out);
    }

    /// No-op handles (tests, and stats created without a model).
    pub fn detached() -> Self {
        VersionMetrics {
            labels: [("model", String::new()), ("version", String::new())],
            requests: Default::default(),
            queue: Histogram::noop(),
            compute: Histogram::noop(),
            batch: Histogram::noop(),
            inferences: Counter::noop(),
            executions: Counter::noop(),
            in_flight: Gauge::noop(),
            queue_depth: Gauge::noop(),
            batch_reasons: std::array::from_fn(|_| Counter::noop()),
        }
    }
}

/// Records a request that reached no version (unknown model or version, or a model not ready): under
/// empty `model`/`version` when the model is unknown, so client-chosen names never become label values.
pub fn record_unrouted_request(model: &str, protocol: &'static str, code: &'static str, seconds: f64, bytes_in: u64) {
    let h = request_handles(model, "", protocol, code);
    h.requests.increment(1);
    h.duration.record(seconds);
    h.bytes_in.increment(bytes_in);
}

fn request_handles(model: &str, version: &str, protocol: &'static str, code: &'static str) -> RequestHandles {
    let base = [("model", model.to_string()), ("version", version.to_string()), ("protocol", protocol.to_string())];
    let with = |extra: (&'static str, &'static str)| {
        let mut all: Vec<(&'static str, String)> = base.to_vec();
        all.push((extra.0, extra.1.to_string()));
        all
    };
    RequestHandles {
        protocol,
        code,
        requests: counter!(REQUESTS, &with(("code", code))),
        duration: histogram!(REQUEST_DURATION, &base),
        bytes_in: counter!(PAYLOAD_BYTES, &with(("direction", "in"))),
        bytes_out: counter!(PAYLOAD_BYTES, &with(("direction", "out"))),
    }
}

/// Counts a request in flight in the engine until dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Gauge);

impl InFlight {
    pub(crate) fn enter(gauge: &Gauge) -> Self {
        gauge.increment(1.0);
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
