//! Server-side statistics around a measurement, as perf_analyzer's "Server:" section: read through the
//! statistics extension (`GET /v2/models/{m}/stats`, or gRPC `ModelStatistics`) before and after, and the
//! difference turned into per-request queue and compute times, the mean batch the server ran and, where the
//! server reports latency buckets (ferroserve's `success_latency_buckets`), latency percentiles inside the server:
//! those leave out the load generator's own delays, which on a small machine sharing its cores with the server
//! dominate the client's tail. Servers without the extension (MLServer) simply give none.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::cli::{Args, Protocol};
use super::model::http_get;

/// Cumulative counters of one model as the server reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Successful requests.
    pub success: u64,
    /// Nanoseconds those requests spent queued.
    pub queue_ns: u64,
    /// Nanoseconds of input preparation, model execution and output extraction, summed.
    pub compute_ns: u64,
    /// Items inferred (batch dims summed).
    pub inferences: u64,
    /// Model executions.
    pub executions: u64,
    /// Successful requests by latency inside the server: exclusive upper bound in ns → requests.
    pub latency_buckets: BTreeMap<u64, u64>,
}

/// What the server did during one measured point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ServerSide {
    /// Successful requests the server counted.
    pub requests: u64,
    /// Mean time a request waited in the queue, µs.
    pub queue_us: f64,
    /// Mean compute time per request (input, infer, output), µs.
    pub compute_us: f64,
    /// Mean items per model execution: how well the server batched.
    pub batch: f64,
    /// Median latency inside the server, µs (the upper bound of its bucket, at most ~6 % over).
    pub p50_us: Option<f64>,
    /// 99th percentile latency inside the server, µs (likewise).
    pub p99_us: Option<f64>,
}

impl Counters {
    /// What happened between `before` and `self`; `None` when nothing did (or the counters went back).
    pub fn since(&self, before: &Counters) -> Option<ServerSide> {
        let requests = self.success.checked_sub(before.success).filter(|&n| n > 0)?;
        let per_request = |now: u64, then: u64| now.saturating_sub(then) as f64 / requests as f64 / 1000.0;
        let executions = self.executions.saturating_sub(before.executions);
        // Buckets that went back (the model was reloaded in between) would give percentiles of a part of the
        // requests: none then.
        let went_back = before.latency_buckets.iter().any(|(upper, &n)| self.latency_buckets.get(upper) < Some(&n));
        let latency: Vec<(u64, u64)> = if went_back {
            Vec::new()
        } else {
            self.latency_buckets
                .iter()
                .map(|(&upper, &n)| (upper, n - before.latency_buckets.get(&upper).copied().unwrap_or(0)))
                .filter(|&(_, n)| n > 0)
                .collect()
        };
        Some(ServerSide {
            requests,
            queue_us: per_request(self.queue_ns, before.queue_ns),
            compute_us: per_request(self.compute_ns, before.compute_ns),
            batch: if executions == 0 {
                0.0
            } else {
                self.inferences.saturating_sub(before.inferences) as f64 / executions as f64
            },
            p50_us: bucket_percentile(&latency, 0.50),
            p99_us: bucket_percentile(&latency, 0.99),
        })
    }
}

/// The nearest-rank percentile `q` of bucketed counts, as the upper bound (µs) of the bucket it falls in.
fn bucket_percentile(buckets: &[(u64, u64)], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    buckets.iter().find_map(|&(upper, n)| {
        seen += n;
        (seen >= rank).then_some(upper as f64 / 1000.0)
    })
}

fn duration_ns(stats: &Value, field: &str) -> u64 {
    stats[field]["ns"].as_u64().unwrap_or(0)
}

/// Sums the counters of every version in a statistics extension JSON reply.
pub fn from_json(doc: &Value) -> Option<Counters> {
    let models = doc["model_stats"].as_array()?;
    let mut c = Counters::default();
    for m in models {
        let s = &m["inference_stats"];
        c.success += s["success"]["count"].as_u64().unwrap_or(0);
        c.queue_ns += duration_ns(s, "queue");
        c.compute_ns +=
            duration_ns(s, "compute_input") + duration_ns(s, "compute_infer") + duration_ns(s, "compute_output");
        c.inferences += m["inference_count"].as_u64().unwrap_or(0);
        c.executions += m["execution_count"].as_u64().unwrap_or(0);
        for bucket in m["success_latency_buckets"].as_array().into_iter().flatten() {
            if let (Some(upper), Some(n)) = (bucket[0].as_u64(), bucket[1].as_u64()) {
                *c.latency_buckets.entry(upper).or_default() += n;
            }
        }
    }
    Some(c)
}

/// Reads the model's counters from the server; `None` if it has no statistics extension.
pub async fn read(args: &Args) -> Option<Counters> {
    match args.protocol {
        Protocol::HttpJson | Protocol::HttpBinary => {
            let path = match &args.model_version {
                Some(v) => format!("/v2/models/{}/versions/{v}/stats", args.model),
                None => format!("/v2/models/{}/stats", args.model),
            };
            let (status, body) = http_get(&format!("http://{}{path}", args.url)).await.ok()?;
            let doc: Value = serde_json::from_slice(&body).ok().filter(|_| status == 200)?;
            from_json(&doc)
        }
        Protocol::Grpc => {
            use ferroserve_proto::grpc_inference_service_client::GrpcInferenceServiceClient;
            let mut client = GrpcInferenceServiceClient::connect(format!("http://{}", args.url)).await.ok()?;
            let reply = client
                .model_statistics(ferroserve_proto::ModelStatisticsRequest {
                    name: args.model.clone(),
                    version: args.model_version.clone().unwrap_or_default(),
                })
                .await
                .ok()?
                .into_inner();
            let ns = |d: Option<ferroserve_proto::StatisticDuration>| d.map_or(0, |d| d.ns);
            let mut c = Counters::default();
            for m in reply.model_stats {
                let s = m.inference_stats.unwrap_or_default();
                c.success += s.success.map_or(0, |d| d.count);
                c.queue_ns += ns(s.queue);
                c.compute_ns += ns(s.compute_input) + ns(s.compute_infer) + ns(s.compute_output);
                c.inferences += m.inference_count;
                c.executions += m.execution_count;
                for (upper, n) in m.success_latency_buckets {
                    *c.latency_buckets.entry(upper).or_default() += n;
                }
            }
            Some(c)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn per_request_times_and_batch_from_two_readings() {
        let doc = |success: u64, queue: u64, infer: u64, inferences: u64, executions: u64| {
            json!({"model_stats": [{"name": "m", "version": "1", "inference_count": inferences,
                "execution_count": executions, "inference_stats": {
                    "success": {"count": success, "ns": 0}, "queue": {"count": success, "ns": queue},
                    "compute_input": {"count": executions, "ns": 0},
                    "compute_infer": {"count": executions, "ns": infer},
                    "compute_output": {"count": executions, "ns": 0}}}]})
        };
        let before = from_json(&doc(10, 5_000, 20_000, 10, 10)).unwrap();
        let after = from_json(&doc(110, 205_000, 420_000, 110, 35)).unwrap();
        let side = after.since(&before).unwrap();
        assert_eq!(side.requests, 100);
        assert!((side.queue_us - 2.0).abs() < 1e-9 && (side.compute_us - 4.0).abs() < 1e-9);
        assert!((side.batch - 4.0).abs() < 1e-9);
        assert_eq!(before.since(&before), None, "no requests, no figures");
        assert_eq!(from_json(&json!({"error": "x"})), None);
        assert_eq!((side.p50_us, side.p99_us), (None, None), "no buckets reported, no percentiles");
    }

    #[test]
    fn percentiles_from_the_buckets_counted_between_two_readings() {
        let doc = |buckets: serde_json::Value, success: u64| {
            json!({"model_stats": [{"inference_count": success, "execution_count": success,
                "inference_stats": {"success": {"count": success, "ns": 0}},
                "success_latency_buckets": buckets}]})
        };
        // Before: 50 requests at up to 1 ms. After: 100 more, 90 at up to 100 µs, 9 at up to 200 µs, 1 at 5 ms.
        let before = from_json(&doc(json!([[1_000_000, 50]]), 50)).unwrap();
        let after =
            from_json(&doc(json!([[100_000, 90], [200_000, 9], [1_000_000, 50], [5_000_000, 1]]), 150)).unwrap();
        let side = after.since(&before).unwrap();
        assert_eq!(side.requests, 100);
        assert_eq!(side.p50_us, Some(100.0));
        assert_eq!(side.p99_us, Some(200.0), "the 99th of 100 is in the second bucket; the 1 ms ones came before");
        assert_eq!(bucket_percentile(&[(10_000, 1)], 0.99), Some(10.0));
        // A reload in between: the buckets went back, so no percentiles (the other figures still come).
        let reloaded = from_json(&doc(json!([[100_000, 200]]), 250)).unwrap();
        let side = reloaded.since(&before).unwrap();
        assert_eq!((side.requests, side.p50_us, side.p99_us), (200, None, None));
        assert_eq!(bucket_percentile(&[], 0.5), None);
    }
}
