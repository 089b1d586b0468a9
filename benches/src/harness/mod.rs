//! The load generator behind `ferroserve-bench`, in the spirit of Triton's perf_analyzer, for any KServe v2
//! server: it reads the model's metadata to build inputs (random or from a JSON file), then measures
//! throughput and latency percentiles over HTTP JSON, HTTP binary or gRPC raw contents, either closed-loop
//! (a concurrency sweep) or open-loop (constant or Poisson request rates), with warm-up, measurement windows
//! and a stability check. Results: a table on stdout, CSV, JSON and an SVG latency-throughput chart.
//!
//! - [`cli`]: flags and sweep parsing;
//! - [`model`]: metadata discovery and input construction;
//! - [`client`]: one pre-encoded request per protocol and how to send it;
//! - [`measure`]: the closed- and open-loop drivers, windows and stability;
//! - [`report`]: table, CSV, JSON and SVG output;
//! - [`server_stats`]: the server's own queue and compute times and batch sizes, from its statistics.

pub mod cli;
pub mod client;
pub mod measure;
pub mod model;
pub mod report;
pub mod server_stats;

use clap::Parser;

/// Entry point of the binary.
pub fn main() -> anyhow::Result<()> {
    let args = cli::Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(args))
}

/// Sends one request before measuring, so that a request the server cannot take fails at once, with the
/// server's reason, instead of after a whole sweep of errors.
async fn preflight(args: &cli::Args, payload: &client::Payload) -> anyhow::Result<()> {
    let mut connection = payload.connect().await?;
    if let Err(error) = connection.send().await {
        let hint = match args.protocol {
            cli::Protocol::HttpBinary => model::binary_extension_hint(args).await,
            _ => None,
        };
        anyhow::bail!("the first request failed: {error}{}", hint.map(|h| format!("\n{h}")).unwrap_or_default());
    }
    Ok(())
}

async fn run(args: cli::Args) -> anyhow::Result<()> {
    let model = model::discover(&args).await?;
    let payload = client::Payload::build(&args, &model)?;
    preflight(&args, &payload).await?;
    let points = match &args.request_rate {
        Some(rates) => cli::parse_sweep(rates)?.into_iter().map(measure::Load::Rate).collect::<Vec<_>>(),
        None => {
            cli::parse_sweep(&args.concurrency)?.into_iter().map(|c| measure::Load::Concurrency(c as usize)).collect()
        }
    };
    let mut results = Vec::with_capacity(points.len());
    for load in points {
        let result = measure::measure(&args, &payload, load).await?;
        report::print_row(&result, results.is_empty());
        results.push(result);
    }
    report::write_outputs(&args, &model, &results)?;
    let errors: u64 = results.iter().map(|r| r.errors).sum();
    if errors > 0 {
        eprintln!(
            "{errors} requests failed; first error: {}",
            results.iter().find_map(|r| r.first_error.clone()).unwrap_or_default()
        );
    }
    Ok(())
}
