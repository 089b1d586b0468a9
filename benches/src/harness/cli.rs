//! Command-line flags of `ferroserve-bench`.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// The transport and encoding of requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// HTTP/REST with tensor data in JSON.
    HttpJson,
    /// HTTP/REST with the binary tensor data extension.
    HttpBinary,
    /// gRPC `ModelInfer` with raw_input_contents.
    Grpc,
}

/// Inter-arrival times in open-loop mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Distribution {
    /// Evenly spaced requests.
    Constant,
    /// Exponentially distributed gaps (a Poisson process).
    Poisson,
}

/// Load-test a model on a KServe v2 server (ferroserve, Triton, MLServer, ...).
#[derive(Parser, Debug, Clone)]
#[command(name = "ferroserve-bench", version, about)]
pub struct Args {
    /// Model to test.
    #[arg(short = 'm', long)]
    pub model: String,
    /// Model version (default: the server's choice).
    #[arg(long)]
    pub model_version: Option<String>,
    /// Server address, host:port: the HTTP port, or the gRPC port with `--protocol grpc`.
    #[arg(short = 'u', long, default_value = "127.0.0.1:8080")]
    pub url: String,
    /// Transport and encoding.
    #[arg(short = 'i', long, value_enum, default_value = "http-binary")]
    pub protocol: Protocol,
    /// Closed-loop concurrency sweep: a list `1,8,32` or a range `1:64:x2` (multiply) / `1:10:+3` (add).
    #[arg(long, default_value = "1")]
    pub concurrency: String,
    /// Open-loop request rates in requests/s instead of concurrency (list or range as for --concurrency).
    #[arg(long)]
    pub request_rate: Option<String>,
    /// Arrival process for --request-rate.
    #[arg(long, value_enum, default_value = "constant")]
    pub distribution: Distribution,
    /// Batch size of every request (for models that batch).
    #[arg(short = 'b', long, default_value_t = 1)]
    pub batch_size: usize,
    /// Shape of an input with variable non-batch dims: `NAME:d1,d2` (repeatable; batch dim excluded).
    #[arg(long)]
    pub shape: Vec<String>,
    /// JSON file with one request's input data: `{"INPUT0": [...], ...}` (flat or nested), or perf_analyzer's
    /// `{"data": [{"INPUT0": [...] or {"content": [...], "shape": [...]}}]}` (its first entry).
    #[arg(long)]
    pub input_data: Option<PathBuf>,
    /// Seconds of warm-up before each measurement.
    #[arg(long, default_value_t = 1.0)]
    pub warmup_secs: f64,
    /// Length of one measurement window in seconds.
    #[arg(long, default_value_t = 2.0)]
    pub window_secs: f64,
    /// Throughput of the last `--stable-windows` windows must lie within this percentage of their mean.
    #[arg(long, default_value_t = 10.0)]
    pub stability_percent: f64,
    /// Windows that must agree for a measurement to be stable.
    #[arg(long, default_value_t = 3)]
    pub stable_windows: usize,
    /// Give up on stability after this many windows (the result is then marked unstable).
    #[arg(long, default_value_t = 10)]
    pub max_windows: usize,
    /// Most requests in flight in open-loop mode (beyond this, sends are counted as errors).
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: usize,
    /// Write results as CSV.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Write results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a latency-throughput chart as SVG.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Seed for random input data.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Parses `1,8,32`, `1:64:x2` or `1:10:+3` into the points of a sweep.
pub fn parse_sweep(spec: &str) -> anyhow::Result<Vec<f64>> {
    let bad = || anyhow::anyhow!("`{spec}`: expected a list like 1,8,32 or a range like 1:64:x2 or 1:10:+3");
    if let Some((range, step)) = spec.rsplit_once(':').filter(|_| spec.matches(':').count() == 2) {
        let (start, end) = range.split_once(':').ok_or_else(bad)?;
        let (start, end): (f64, f64) =
            (start.trim().parse().map_err(|_| bad())?, end.trim().parse().map_err(|_| bad())?);
        let mut points = Vec::new();
        let mut v = start;
        let (multiply, by): (bool, f64) = match step.trim().chars().next() {
            Some('x') | Some('*') => (true, step.trim()[1..].parse().map_err(|_| bad())?),
            Some('+') => (false, step.trim()[1..].parse().map_err(|_| bad())?),
            _ => (false, step.trim().parse().map_err(|_| bad())?),
        };
        // NaN and infinities are not finite: a NaN would compare false everywhere and give no points.
        let finite = [start, end, by].iter().all(|v| v.is_finite());
        if !finite || start <= 0.0 || end < start || (multiply && by <= 1.0) || (!multiply && by <= 0.0) {
            return Err(bad());
        }
        while v <= end + 1e-9 && points.len() < 1000 {
            points.push(v);
            v = if multiply { v * by } else { v + by };
        }
        return Ok(points);
    }
    let points = spec.split(',').map(|p| p.trim().parse::<f64>().map_err(|_| bad())).collect::<Result<Vec<_>, _>>()?;
    if points.is_empty() || points.iter().any(|&p| !p.is_finite() || p <= 0.0) {
        return Err(bad());
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps() {
        assert_eq!(parse_sweep("1:64:x2").unwrap(), vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]);
        assert_eq!(parse_sweep("1:10:+3").unwrap(), vec![1.0, 4.0, 7.0, 10.0]);
        assert_eq!(parse_sweep("1,8,32").unwrap(), vec![1.0, 8.0, 32.0]);
        assert_eq!(parse_sweep("500").unwrap(), vec![500.0]);
        assert!(parse_sweep("0").is_err());
        assert!(parse_sweep("4:1:x2").is_err());
        assert!(parse_sweep("1:8:x1").is_err());
        assert!(parse_sweep("a,b").is_err());
        for bad in ["inf", "NaN", "1,inf", "1:NaN:x2", "NaN:8:x2", "1:8:xNaN", "1:inf:+1"] {
            assert!(parse_sweep(bad).is_err(), "{bad}");
        }
    }
}
