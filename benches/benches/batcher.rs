//! The batcher's hot path: `BatchState::next_batch` over a busy queue, and the concat/split of a batch.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ferroserve_engine::batcher::state::{BatchPolicy, BatchState, Decision, Entry};
use ferroserve_runtime::Tensor;

fn policy() -> BatchPolicy {
    BatchPolicy {
        max_batch_size: 64,
        preferred_batch_sizes: vec![],
        max_delay: Duration::from_micros(100),
        max_queue_size: 100_000,
        priority_levels: 1,
        window: ferroserve_engine::batcher::state::Window::Fixed,
    }
}

fn bench(c: &mut Criterion) {
    let now = Instant::now();
    c.bench_function("next_batch_64_of_1024_queued", |b| {
        b.iter_batched(
            || {
                let mut s = BatchState::new(policy());
                for i in 0..1024u32 {
                    let _ = s.push(Entry {
                        items: 1,
                        key: vec![16],
                        enqueued: now,
                        deadline: None,
                        priority: 0,
                        payload: i,
                    });
                }
                s
            },
            // Return the state so that dropping the rest of the queue is not timed.
            |mut s| {
                let n = match s.next_batch(now, false) {
                    Decision::Run(batch, _) => batch.len(),
                    _ => 0,
                };
                (s, n)
            },
            BatchSize::SmallInput,
        )
    });
    let rows: Vec<Tensor> =
        (0..64).map(|i| Tensor::from_f32(vec![1, 16], &[i as f32; 16]).unwrap_or_else(|e| panic!("{e}"))).collect();
    c.bench_function("concat_64_rows_of_16_fp32", |b| {
        b.iter(|| Tensor::concat(&rows).map(|t| t.element_count()).unwrap_or(0))
    });
    let joined = Tensor::concat(&rows).unwrap_or_else(|e| panic!("{e}"));
    let counts = vec![1usize; 64];
    c.bench_function("split_64_rows_of_16_fp32", |b| {
        b.iter(|| joined.split_rows(&counts).map(|v| v.len()).unwrap_or(0))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
