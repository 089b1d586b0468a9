//! Raw in-process ONNX Runtime on the MLP example, batch 1 and batch 64: the ceiling the server is
//! compared against. Needs ORT_DYLIB_PATH.
#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferroserve_benches::{mlp_model, ort_dylib};
use ferroserve_runtime::{Device, LoadSpec, RuntimeLoader, Tensor};
use ferroserve_runtime_onnx::OnnxLoader;

fn bench(c: &mut Criterion) {
    let Ok(dylib) = ort_dylib() else {
        eprintln!("ORT_DYLIB_PATH not set; skipping the ONNX Runtime bench");
        return;
    };
    let loader = OnnxLoader::new(&dylib).unwrap_or_else(|e| panic!("{e}"));
    let spec = LoadSpec::new(mlp_model(), Device::Cpu, 1);
    let mut runtime = loader.load(&spec).unwrap_or_else(|e| panic!("{e}"));
    let mut group = c.benchmark_group("ort_mlp");
    for batch in [1usize, 64] {
        let input = Tensor::from_f32(vec![batch, 16], &vec![0.5; batch * 16]).unwrap_or_else(|e| panic!("{e}"));
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("batch{batch}"), |b| {
            b.iter(|| runtime.infer(vec![input.clone()]).map(|o| o.len()).unwrap_or(0))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
