//! The `ferroserve` binary: parse flags, set up logging, run until SIGTERM.

use clap::Parser;
use ferroserve::Config;
use tracing_subscriber::EnvFilter;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    // Colours only on a terminal: log collectors (kubectl logs, files) would show the escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if config.log_format == ferroserve::config::LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("ferroserve-io").build()?;
    runtime.block_on(async {
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
    })
}
