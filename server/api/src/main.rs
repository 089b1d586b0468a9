//! The `ferroserve` binary: parse flags, set up logging, run until SIGTERM.

use clap::Parser;
use ferroserve::Config;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    // Held to the end: dropping it flushes the trace spans not yet exported.
    let _telemetry = ferroserve::telemetry::init(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("ferroserve-io").build()?;
    let result = runtime.block_on(async {
        let shutdown = ferroserve::shutdown::install()?;
        ferroserve::run(config, shutdown, |addrs| {
            // A machine-readable line for scripts and tests that start the server on port 0.
            // `writeln!` rather than `println!`: a closed stdout must not panic the server.
            use std::io::Write;
            let mut out = std::io::stdout();
            match addrs.metrics {
                Some(m) => writeln!(out, "ferroserve listening http={} grpc={} metrics={m}", addrs.http, addrs.grpc),
                None => writeln!(out, "ferroserve listening http={} grpc={}", addrs.http, addrs.grpc),
            }
            .ok();
            let _ = out.flush();
        })
        .await
    });
    // `run` has drained within --drain-timeout-secs; a model load still running on a blocking thread (a session
    // being built) must not hold the exit, as dropping the runtime would wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}
