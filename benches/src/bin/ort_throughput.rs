//! Raw in-process ONNX Runtime throughput on a model: N threads, each with its own session, running
//! batch-B inferences for a fixed time. The ceiling that server throughput is compared against.
//!
//! `ort_throughput [--threads N] [--batch B] [--seconds S] [--intra-op-threads T] [MODEL]`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferroserve_benches::{mlp_model, ort_dylib};
use ferroserve_runtime::{Device, LoadSpec, RuntimeLoader, Tensor};
use ferroserve_runtime_onnx::OnnxLoader;

fn main() -> anyhow::Result<()> {
    let mut threads = 1usize;
    let mut batch = 1usize;
    let mut seconds = 10u64;
    let mut intra = 1usize;
    let mut model = mlp_model();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| anyhow::anyhow!("{arg} needs a value"));
        match arg.as_str() {
            "--threads" => threads = value()?.parse()?,
            "--batch" => batch = value()?.parse()?,
            "--seconds" => seconds = value()?.parse()?,
            "--intra-op-threads" => intra = value()?.parse()?,
            other => model = other.into(),
        }
    }
    let loader = Arc::new(OnnxLoader::new(&ort_dylib()?)?);
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for _ in 0..threads {
        let loader = Arc::clone(&loader);
        let count = Arc::clone(&count);
        let stop = Arc::clone(&stop);
        let spec = LoadSpec::new(model.clone(), Device::Cpu, intra);
        handles.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let mut runtime = loader.load(&spec)?;
            let width = runtime.signature().inputs[0].dims.last().copied().unwrap_or(1).max(1) as usize;
            let input = Tensor::from_f32(vec![batch, width], &vec![0.5; batch * width])?;
            while !stop.load(Ordering::Relaxed) {
                runtime.infer(vec![input.clone()])?;
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    std::thread::sleep(Duration::from_secs(1));
    let start_count = count.load(Ordering::Relaxed);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let done = count.load(Ordering::Relaxed) - start_count;
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
    }
    println!(
        "raw ORT: threads={threads} batch={batch} intra_op={intra}: {:.0} infer/s ({:.0} items/s)",
        done as f64 / elapsed,
        (done as f64 * batch as f64) / elapsed
    );
    Ok(())
}
