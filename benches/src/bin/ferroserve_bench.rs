//! `ferroserve-bench`: a load generator for KServe v2 servers in the spirit of Triton's perf_analyzer.
//! See `ferroserve_benches::harness` and `ferroserve-bench --help`.

use std::process::ExitCode;

fn main() -> ExitCode {
    match ferroserve_benches::harness::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The reason, with its causes, and no backtrace: these are a user's errors, not a crash.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
