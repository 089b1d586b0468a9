//! Logs and distributed traces.
//!
//! Logs go to stderr (text or JSON, levels from `RUST_LOG`, changed at run time through
//! [`crate::log_settings`]). Traces are exported over OTLP when an endpoint
//! is configured: every request the sampler picks gets a `request` span (a child of the caller's W3C
//! `traceparent` when there is one) with `decode`, `queue`, `execute` and `encode` children. The sampling
//! decision is made once per request, before any span exists, so an unsampled request costs what it costs with
//! tracing off: the exporter's layer only ever sees spans of the sampled requests' target.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;
use http::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Config, LogFormat, OtlpProtocol};

/// Why Triton's trace-settings calls (`/v2/trace/setting`, gRPC `TraceSetting`) are refused.
pub const NO_TRACE_SETTINGS: &str = "Triton's trace settings are not supported: ferroserve exports traces over OTLP, \
                                     set at start with --otlp-endpoint and --trace-sample-ratio";

/// What the request layer needs to decide on sampling, set once at start-up when tracing is on.
#[derive(Debug)]
struct Sampling {
    /// Fraction of requests without a caller's decision that are traced.
    ratio: f64,
    propagator: TraceContextPropagator,
}

static SAMPLING: OnceLock<Sampling> = OnceLock::new();

/// Keeps the trace exporter alive; dropping it flushes the spans not yet sent.
#[must_use = "dropping the guard stops trace export"]
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5))
        {
            tracing::warn!(error = %e, "some trace spans could not be exported at shutdown");
        }
    }
}

/// Installs the process's logging and, when an OTLP endpoint is configured, trace export.
pub fn init(config: &Config) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    // Colours only on a terminal: log collectors (kubectl logs, files) would show the escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let text = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let logs = match config.log_format {
        LogFormat::Json => text.json().boxed(),
        LogFormat::Text => text.boxed(),
    };
    // The level filter is global (not per layer): disabled call sites, such as the HTTP/2 stack's many trace
    // events, are then switched off once and cost nothing per request.
    let Some(exporter) = exporter(config)? else {
        let filter = crate::log_settings::install(filter, None)?;
        tracing_subscriber::registry().with(filter).with(logs).try_init()?;
        return Ok(Telemetry::default());
    };
    // With export on, the sampled requests' spans pass the global filter at any level; only the exporter's
    // layer keeps them (the logs show them only as the context of log lines).
    let filter = crate::log_settings::install(filter, Some(format!("{}=trace", ferroserve_engine::trace::TARGET)))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service_name()).build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("ferroserve"))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        // A target filter is decided once per call site, so the log-only spans and events of unsampled requests
        // never reach this layer (a closure filter would be asked again for every span).
        .with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target(ferroserve_engine::trace::TARGET, tracing::Level::TRACE),
        );
    tracing_subscriber::registry().with(filter).with(logs).with(traces).try_init()?;
    let ratio = sample_ratio(config);
    let _ = SAMPLING.set(Sampling { ratio, propagator: TraceContextPropagator::new() });
    ferroserve_engine::trace::enable();
    tracing::info!(ratio, protocol = ?config.otlp_protocol, "exporting traces over OTLP");
    Ok(Telemetry { provider: Some(provider) })
}

/// The span a request runs in: exported (with the caller's `traceparent` as its parent) when the request is
/// sampled, a log-only span naming the request id otherwise.
pub fn request_span(headers: &HeaderMap, id: &str, method: &http::Method, path: &str) -> Span {
    let Some(sampling) = SAMPLING.get().filter(|_| !is_probe(path)) else {
        return tracing::info_span!("request", id);
    };
    let parent = sampling.propagator.extract(&Headers(headers));
    let caller = parent.span().span_context().clone();
    let sampled = if caller.is_valid() { caller.is_sampled() } else { fastrand::f64() < sampling.ratio };
    if !sampled {
        return tracing::info_span!("request", id);
    }
    let grpc = path.starts_with("/inference.") || path.starts_with("/grpc.");
    let span = tracing::info_span!(
        target: "ferroserve::trace",
        "request",
        id,
        otel.name = %format_args!("{method} {path}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = if grpc { "grpc" } else { "" },
        http.request.method = %method,
        url.path = path,
        http.response.status_code = tracing::field::Empty,
    );
    if caller.is_valid() {
        let _ = span.set_parent(parent);
    }
    span
}

/// Records the response status on a sampled request's span (5xx marks it as an error).
pub fn record_status(span: &Span, status: http::StatusCode) {
    if span.metadata().is_some_and(|m| m.target() == ferroserve_engine::trace::TARGET) {
        span.record("http.response.status_code", i64::from(status.as_u16()));
        if status.is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
    }
}

/// Health probes and scrapes, which a cluster sends every few seconds: never traced.
fn is_probe(path: &str) -> bool {
    path.starts_with("/v2/health/")
        || (path.starts_with("/v1/models") && !path.ends_with(":predict"))
        || path == "/metrics"
        || path.starts_with("/grpc.health.v1.Health/")
        || path == "/inference.GRPCInferenceService/ServerLive"
        || path == "/inference.GRPCInferenceService/ServerReady"
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

fn service_name() -> String {
    std::env::var("OTEL_SERVICE_NAME").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "ferroserve".into())
}

/// `--trace-sample-ratio`, else the ratio of a ratio sampler named by the standard OTEL variables, else 1.
fn sample_ratio(config: &Config) -> f64 {
    if let Some(ratio) = config.trace_sample_ratio {
        return ratio.clamp(0.0, 1.0);
    }
    let sampler = std::env::var("OTEL_TRACES_SAMPLER").unwrap_or_default();
    match sampler.as_str() {
        "always_off" | "parentbased_always_off" => 0.0,
        "traceidratio" | "parentbased_traceidratio" => std::env::var("OTEL_TRACES_SAMPLER_ARG")
            .ok()
            .and_then(|a| a.trim().parse::<f64>().ok())
            .map_or(1.0, |r| r.clamp(0.0, 1.0)),
        _ => 1.0,
    }
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// The OTLP exporter the flags and environment ask for, if any.
fn exporter(config: &Config) -> anyhow::Result<Option<Exporter>> {
    let configured = config.otlp_endpoint.is_some()
        || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        || env_set("OTEL_EXPORTER_OTLP_ENDPOINT");
    if !configured {
        return Ok(None);
    }
    let exporter = match config.otlp_protocol {
        OtlpProtocol::HttpProtobuf => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            if let Some(base) = &config.otlp_endpoint {
                // Like OTEL_EXPORTER_OTLP_ENDPOINT, the flag names the collector; the traces path is appended.
                let base = base.trim_end_matches('/');
                let url = if base.ends_with("/v1/traces") { base.to_string() } else { format!("{base}/v1/traces") };
                builder = builder.with_endpoint(url);
            }
            Exporter::Direct(builder.build().context("the OTLP/HTTP trace exporter could not be set up")?)
        }
        OtlpProtocol::Grpc => {
            // The tonic exporter needs a Tokio reactor, which the SDK's export thread does not have: it gets a
            // small runtime of its own, separate from the one serving requests.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("ferroserve-otlp")
                .enable_all()
                .build()?;
            let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if let Some(url) = &config.otlp_endpoint {
                builder = builder.with_endpoint(url.clone());
            }
            let inner = {
                let _inside = runtime.enter();
                builder.build().context("the OTLP/gRPC trace exporter could not be set up")?
            };
            Exporter::OnRuntime { inner, runtime }
        }
    };
    Ok(Some(exporter))
}

/// The OTLP exporter, run on its own Tokio runtime when its transport needs one.
#[derive(Debug)]
enum Exporter {
    Direct(opentelemetry_otlp::SpanExporter),
    OnRuntime { inner: opentelemetry_otlp::SpanExporter, runtime: tokio::runtime::Runtime },
}

impl opentelemetry_sdk::trace::SpanExporter for Exporter {
    async fn export(&self, batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        match self {
            Exporter::Direct(inner) => inner.export(batch).await,
            Exporter::OnRuntime { inner, runtime } => runtime.block_on(inner.export(batch)),
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        match self {
            Exporter::Direct(inner) | Exporter::OnRuntime { inner, .. } => inner.shutdown_with_timeout(timeout),
        }
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        match self {
            Exporter::Direct(inner) | Exporter::OnRuntime { inner, .. } => inner.force_flush(),
        }
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        match self {
            Exporter::Direct(inner) | Exporter::OnRuntime { inner, .. } => inner.set_resource(resource),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn probes_and_scrapes_are_never_traced() {
        for path in [
            "/v2/health/ready",
            "/metrics",
            "/grpc.health.v1.Health/Check",
            "/inference.GRPCInferenceService/ServerLive",
        ] {
            assert!(is_probe(path), "{path}");
        }
        for path in ["/v2/models/m/infer", "/inference.GRPCInferenceService/ModelInfer", "/v1/models/m:predict"] {
            assert!(!is_probe(path), "{path}");
        }
    }

    #[test]
    fn the_flag_ratio_is_clamped_and_wins() {
        let config = Config::parse_from(["ferroserve", "--trace-sample-ratio", "7"]);
        assert_eq!(sample_ratio(&config), 1.0);
        let config = Config::parse_from(["ferroserve", "--trace-sample-ratio", "0.25"]);
        assert_eq!(sample_ratio(&config), 0.25);
    }

    #[test]
    fn without_tracing_a_request_span_is_the_log_only_one() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse().unwrap());
        let span = request_span(&headers, "abc", &http::Method::POST, "/v2/models/m/infer");
        assert!(span.metadata().is_none_or(|m| m.target() != ferroserve_engine::trace::TARGET));
    }

    #[test]
    fn the_traceparent_extractor_reads_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse().unwrap());
        let cx = TraceContextPropagator::new().extract(&Headers(&headers));
        let span = cx.span();
        let caller = span.span_context();
        assert!(caller.is_valid() && caller.is_sampled() && caller.is_remote());
        assert_eq!(caller.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        headers.insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00".parse().unwrap());
        let cx = TraceContextPropagator::new().extract(&Headers(&headers));
        assert!(!cx.span().span_context().is_sampled());
        headers.insert("traceparent", "garbage".parse().unwrap());
        assert!(!TraceContextPropagator::new().extract(&Headers(&headers)).span().span_context().is_valid());
    }
}
