//! `ferroserve-bench`: a load generator for KServe v2 servers in the spirit of Triton's perf_analyzer.
//! See `ferroserve_benches::harness` and `ferroserve-bench --help`.

fn main() -> anyhow::Result<()> {
    ferroserve_benches::harness::main()
}
