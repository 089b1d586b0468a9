//! The instance pool of one model version: N runtime instances, each on its own OS thread, each taking
//! batches from the version's shared [`Batcher`] queue as soon as it is free.
//!
//! Each thread loads its own [`Runtime`] (its own ONNX Runtime session, later its own CUDA stream) and then
//! executes one batch at a time: it drops requests whose caller has gone away, concatenates the rest along
//! the batch dim, runs the model once and splits the outputs back per request, in request order. Models
//! never run on tokio workers; the async side only waits on a oneshot.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::Mutex;

use ferroserve_runtime::{Device, LoadSpec, ModelSignature, Runtime, RuntimeError, RuntimeLoader, Tensor};

use crate::batcher::state::{BatchPolicy, Entry};
use crate::batcher::{Batch, Batcher, Pending, Ticket};
use crate::stats::ModelStats;
use crate::{Gpus, InferError};

/// How to start a pool.
pub struct PoolSpec {
    /// Thread-name prefix (`model:version`).
    pub label: String,
    /// The backend that loads each instance.
    pub loader: Arc<dyn RuntimeLoader>,
    /// One entry per instance.
    pub instances: Vec<LoadSpec>,
    /// Where to record statistics.
    pub stats: Arc<ModelStats>,
    /// Where a GPU that fails is recorded (see [`Gpus`]).
    pub gpus: Gpus,
    /// Called once every instance has stopped on a device fault (the pool then serves nothing), on the thread
    /// of the last one, before its callers are answered: whoever reports readiness looks again.
    pub on_failed: Option<FailureHook>,
}

/// See [`PoolSpec::on_failed`].
#[derive(Clone)]
pub struct FailureHook(Arc<dyn Fn() + Send + Sync>);

impl FailureHook {
    /// A hook that calls `f`.
    pub fn new(f: impl Fn() + Send + Sync + 'static) -> Self {
        FailureHook(Arc::new(f))
    }
}

impl std::fmt::Debug for FailureHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FailureHook")
    }
}

/// How many of a pool's instances still serve, and why the last one to stop did.
#[derive(Debug)]
struct PoolHealth {
    serving: AtomicUsize,
    fault: Mutex<Option<String>>,
    on_failed: Option<FailureHook>,
}

impl PoolHealth {
    /// One instance hit a device fault and stops: returns whether it was the last one (the failure hook has
    /// then run).
    fn instance_stopped(&self, label: &str, fault: String) -> bool {
        *self.fault.lock() = Some(fault.clone());
        let left = self.serving.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        tracing::error!(model = label, fault = %fault, instances_left = left, "an instance stopped on a device failure");
        if left == 0
            && let Some(hook) = &self.on_failed
            && std::panic::catch_unwind(AssertUnwindSafe(|| (hook.0)())).is_err()
        {
            // The pool has stopped all the same: it must still close its queue.
            tracing::error!(model = label, "the failure hook panicked");
        }
        left == 0
    }
}

/// Instances that have loaded and wait for their batcher; dropping this stops them.
#[derive(Debug)]
pub struct LoadedInstances {
    label: String,
    stats: Arc<ModelStats>,
    on_failed: Option<FailureHook>,
    /// Whether every instance runs on CPU.
    on_cpu: bool,
    /// One per instance thread: where its batcher comes from.
    feeds: Vec<mpsc::Sender<Feed>>,
    threads: Vec<JoinHandle<()>>,
}

/// A running pool. Dropping it closes the queue: the instances drain it, then exit on their own;
/// [`InstancePool::shutdown`] also waits for them, so the caller knows the model's memory is released.
#[derive(Debug)]
pub struct InstancePool {
    batcher: Batcher,
    threads: Vec<JoinHandle<()>>,
    health: Arc<PoolHealth>,
}

impl InstancePool {
    /// Starts every instance and waits until all have loaded (blocking: call off the async runtime).
    /// Returns them with the model signature read by the first instance; the batching policy, which
    /// depends on that signature, is given to [`LoadedInstances::serve`].
    pub fn start(spec: PoolSpec) -> Result<(LoadedInstances, ModelSignature), RuntimeError> {
        let count = spec.instances.len();
        let on_cpu = spec.instances.iter().all(|load| load.device == Device::Cpu);
        let (loaded_tx, loaded_rx) = mpsc::channel::<Result<ModelSignature, RuntimeError>>();
        let mut threads = Vec::with_capacity(count);
        let mut feeds = Vec::with_capacity(count);
        for (index, load) in spec.instances.into_iter().enumerate() {
            let loader = Arc::clone(&spec.loader);
            let (feed, batcher) = mpsc::channel::<Feed>();
            let loaded_tx = loaded_tx.clone();
            let stats = Arc::clone(&spec.stats);
            let busy = spec.stats.metrics.instance_busy(index, load.device);
            let device = load.device;
            let gpus = spec.gpus.clone();
            let thread = std::thread::Builder::new()
                .name(format!("fs-{}-{index}", spec.label))
                .spawn(move || match catch_load(loader.as_ref(), &load) {
                    Ok(runtime) => {
                        let _ = loaded_tx.send(Ok(runtime.signature().clone()));
                        drop(loaded_tx);
                        // No batcher means the pool was abandoned before serving: exit.
                        if let Ok(feed) = batcher.recv() {
                            serve(runtime, &feed, Placement { device, gpus: &gpus }, &stats, &busy);
                        }
                    }
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e));
                    }
                })
                .map_err(|e| RuntimeError::Execution(format!("cannot spawn an instance thread: {e}")))?;
            threads.push(thread);
            feeds.push(feed);
        }
        drop(loaded_tx);
        let mut signature = None;
        for result in loaded_rx.iter() {
            let loaded = result?; // dropping `feeds` on return stops the instances that did load
            signature.get_or_insert(loaded);
        }
        let signature = signature.ok_or_else(|| RuntimeError::Execution("the pool has no instances".into()))?;
        let loaded =
            LoadedInstances { label: spec.label, stats: spec.stats, on_failed: spec.on_failed, on_cpu, feeds, threads };
        Ok((loaded, signature))
    }

    /// Queues a request with the batcher.
    pub fn submit(&self, entry: Entry<Pending>) -> Result<Ticket, InferError> {
        self.batcher.submit(entry)
    }

    /// Takes a request back out of the queue if it has not started; see [`Batcher::cancel`].
    pub fn cancel(&self, ticket: Ticket) -> bool {
        self.batcher.cancel(ticket)
    }

    /// Refuses new requests; the instances finish what is queued and running, then exit.
    pub fn close(&self) {
        self.batcher.close();
    }

    /// Why the pool no longer serves: every instance stopped on a device failure (the last one's reason).
    /// `None` while at least one instance serves.
    pub fn failed(&self) -> Option<String> {
        if self.health.serving.load(Ordering::Acquire) > 0 {
            return None;
        }
        let fault = self.health.fault.lock().clone().unwrap_or_default();
        Some(format!("no working instance left: {fault}"))
    }

    /// Closes the queue and waits until every instance has answered what it held and exited (blocking: call
    /// off the async runtime). Once it returns, the instances' runtimes and their memory are released.
    pub fn shutdown(mut self) {
        self.batcher.close();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("an instance thread panicked while stopping");
            }
        }
    }
}

impl Drop for InstancePool {
    fn drop(&mut self) {
        self.batcher.close();
    }
}

impl LoadedInstances {
    /// Starts serving: the instances take batches formed under `policy` from one shared queue.
    pub fn serve(self, policy: BatchPolicy) -> InstancePool {
        let batcher = Batcher::observed(self.label.clone(), policy, self.stats.metrics.queue_depth.clone());
        batcher.set_instances(self.threads.len());
        if self.on_cpu {
            batcher.gate_on_cpu();
        }
        let health = Arc::new(PoolHealth {
            serving: AtomicUsize::new(self.threads.len()),
            fault: Mutex::new(None),
            on_failed: self.on_failed,
        });
        for feed in &self.feeds {
            let _ =
                feed.send(Feed { batcher: batcher.clone(), health: Arc::clone(&health), label: self.label.clone() });
        }
        InstancePool { batcher, threads: self.threads, health }
    }
}

/// Loads one instance; a loader that panics fails this load instead of silently dropping the instance.
fn catch_load(loader: &dyn RuntimeLoader, spec: &LoadSpec) -> Result<Box<dyn Runtime>, RuntimeError> {
    std::panic::catch_unwind(AssertUnwindSafe(|| loader.load(spec))).unwrap_or_else(|_| {
        Err(RuntimeError::Load { path: spec.model_path.clone(), reason: "the runtime panicked while loading".into() })
    })
}

/// What an instance thread gets once the pool serves: the shared queue, and the pool's health to report to.
struct Feed {
    batcher: Batcher,
    health: Arc<PoolHealth>,
    label: String,
}

/// Where an instance runs, and where a failure of its GPU is recorded.
struct Placement<'a> {
    device: Device,
    gpus: &'a Gpus,
}

fn serve(
    mut runtime: Box<dyn Runtime>,
    feed: &Feed,
    placement: Placement<'_>,
    stats: &ModelStats,
    busy: &metrics::Counter,
) {
    let batcher = &feed.batcher;
    while let Some((batch, reason)) = batcher.take() {
        stats.record_batch_reason(reason);
        let mut finish = Finish { batcher, requests: batch.len(), reported: false };
        let started = Instant::now();
        let mut fault = None;
        // A panic outside the model call (joining or splitting tensors) must not kill the instance: callers
        // of that batch get an error (their reply senders drop), the instance goes on.
        let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
            execute(runtime.as_mut(), batch, stats, &mut finish, &mut |message| {
                // Before the batch is answered, so a client that sees the error then sees the version not ready.
                if let Device::Cuda(ordinal) = placement.device {
                    placement.gpus.record_fault(ordinal, &message);
                }
                let last = feed.health.instance_stopped(&feed.label, message.clone());
                fault = Some((message, last));
            })
        }));
        finish.now();
        let busy_for = started.elapsed();
        busy.increment(busy_time_nanos(busy_for));
        match ran {
            Ok(0) => {}
            Ok(requests) => batcher.record_execution(requests, busy_for),
            Err(_) => tracing::error!("an instance panicked while preparing or answering a batch; it keeps serving"),
        }
        if let Some((fault, last)) = fault {
            stop_on_fault(feed, fault, last);
            return;
        }
    }
}

fn busy_time_nanos(took: std::time::Duration) -> u64 {
    u64::try_from(took.as_nanos()).unwrap_or(u64::MAX)
}

/// A device fault stopped this instance (already counted in the pool's health): the others take its share of
/// the queue. When it was the last one, the queue closes and what is queued is answered at once (there is
/// nobody left to run it), and the version reports not ready until it is loaded again.
fn stop_on_fault(feed: &Feed, fault: String, last: bool) {
    if !last {
        feed.batcher.set_instances(feed.health.serving.load(Ordering::Acquire).max(1));
        return;
    }
    let message = format!("model `{}` has no working instance left: {fault}", feed.label);
    feed.batcher.close_because(message.clone());
    while let Some((batch, _)) = feed.batcher.take() {
        feed.batcher.record_finished(batch.len());
        for entry in batch {
            let _ = entry.payload.reply.send(Err(InferError::NotReady(message.clone())));
        }
    }
}

/// Tells the batcher that a batch's requests are no longer running, once: just before their replies go out
/// (a client that sends again on its answer must not find its old request still counted as running), or when
/// the batch ends some other way.
struct Finish<'a> {
    batcher: &'a Batcher,
    requests: usize,
    reported: bool,
}

impl Finish<'_> {
    fn now(&mut self) {
        if !self.reported {
            self.reported = true;
            self.batcher.record_finished(self.requests);
        }
    }
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.now();
    }
}

/// Runs a batch and answers its requests; returns how many requests the model ran (0 when every caller had gone
/// or timed out).
fn execute(
    runtime: &mut dyn Runtime,
    batch: Batch,
    stats: &ModelStats,
    finish: &mut Finish<'_>,
    on_fault: &mut dyn FnMut(String),
) -> usize {
    let picked = Instant::now();
    let mut live: Vec<Entry<Pending>> = Vec::with_capacity(batch.len());
    for e in batch {
        if e.payload.reply.is_closed() {
            continue; // the caller went away
        }
        if e.deadline.is_some_and(|d| d <= picked) {
            let _ = e.payload.reply.send(Err(InferError::queue_timeout()));
            continue;
        }
        live.push(e);
    }
    if live.is_empty() {
        return 0;
    }
    for e in &live {
        stats.record_queued(picked.saturating_duration_since(e.enqueued));
    }
    let rows: Vec<usize> = live.iter().map(|e| e.items).collect();
    let total: usize = rows.iter().sum();
    // Sampled requests close their queue span and open one for this execution, kept open until answered.
    let requests = live.len();
    let executing: Vec<tracing::Span> =
        live.iter_mut().filter_map(|e| e.payload.trace.take()).map(|t| t.execute(total, requests)).collect();
    // For a joined batch, the requests' own inputs (by input, then request) are kept until it has run: if the
    // runtime refuses the batch as invalid input, each request is run alone so one bad request fails only itself.
    let mut kept_columns: Option<Vec<Vec<Tensor>>> = None;
    let (inputs, replies) = if live.len() == 1 {
        let mut live = live;
        let Some(entry) = live.pop() else { return 0 };
        (entry.payload.inputs, vec![entry.payload.reply])
    } else {
        let arity = live[0].payload.inputs.len();
        let mut columns: Vec<Vec<Tensor>> = (0..arity).map(|_| Vec::with_capacity(live.len())).collect();
        let mut replies = Vec::with_capacity(live.len());
        for e in live {
            for (i, t) in e.payload.inputs.into_iter().enumerate() {
                columns[i].push(t);
            }
            replies.push(e.payload.reply);
        }
        match columns.iter().map(|c| Tensor::concat(c)).collect::<Result<Vec<_>, _>>() {
            Ok(inputs) => {
                kept_columns = Some(columns);
                (inputs, replies)
            }
            Err(e) => {
                tracing::error!(error = %e, "batch inputs could not be joined");
                finish.now();
                for r in replies {
                    let _ = r.send(Err(InferError::Internal("the batch could not be formed".into())));
                }
                return 0;
            }
        }
    };
    let input_time = picked.elapsed();
    let input_bytes: usize = inputs.iter().map(Tensor::memory_size).sum();
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| runtime.infer(inputs)));
    let infer_time = started.elapsed();
    let output_started = Instant::now();
    if let (Some(columns), Ok(Err(RuntimeError::InvalidInput(_)))) = (kept_columns, &outcome) {
        finish.now();
        run_each_alone(runtime, columns, replies, on_fault);
        drop(executing);
        return 0;
    }
    let result = match outcome {
        Ok(Ok(outputs)) => {
            stats.output_ratio.observe(input_bytes, outputs.iter().map(Tensor::memory_size).sum());
            split_outputs(outputs, &rows, replies.len() > 1)
        }
        Ok(Err(e)) => Err(run_failure(e, on_fault)),
        Err(_) => {
            tracing::error!("model execution panicked; the instance keeps serving");
            Err(InferError::Internal("model execution failed".into()))
        }
    };
    drop(executing); // before the replies, so a request's execute span ends before its encode span starts
    finish.now();
    match result {
        Ok(per_request) => {
            for (reply, outputs) in replies.into_iter().zip(per_request) {
                let _ = reply.send(Ok(outputs));
            }
            stats.record_execution(total as u64, input_time, infer_time, output_started.elapsed());
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
    requests
}

/// Runs the requests of a refused batch one by one, so the invalid ones get their own error and the rest
/// their answers.
fn run_each_alone(
    runtime: &mut dyn Runtime,
    columns: Vec<Vec<Tensor>>,
    replies: Vec<tokio::sync::oneshot::Sender<crate::batcher::BatchResult>>,
    on_fault: &mut dyn FnMut(String),
) {
    let mut failed: Option<String> = None;
    for (r, reply) in replies.into_iter().enumerate() {
        if let Some(fault) = &failed {
            // The device failed on an earlier one: nothing more runs on it.
            let _ = reply.send(Err(device_failure(fault)));
            continue;
        }
        let inputs: Vec<Tensor> = columns.iter().map(|column| column[r].clone()).collect();
        let result = match std::panic::catch_unwind(AssertUnwindSafe(|| runtime.infer(inputs))) {
            Ok(Ok(outputs)) => Ok(outputs),
            Ok(Err(e)) => {
                if let RuntimeError::DeviceFault(fault) = &e {
                    failed = Some(fault.clone());
                }
                Err(run_failure(e, on_fault))
            }
            Err(_) => Err(InferError::Internal("model execution failed".into())),
        };
        let _ = reply.send(result);
    }
}

/// What the callers of a run the runtime refused or failed are answered. A device fault is reported through
/// `on_fault` first, before anyone is answered.
fn run_failure(error: RuntimeError, on_fault: &mut dyn FnMut(String)) -> InferError {
    match error {
        RuntimeError::InvalidInput(message) => InferError::InvalidInput(message),
        RuntimeError::DeviceFault(fault) => {
            let answer = device_failure(&fault);
            on_fault(fault);
            answer
        }
        e => {
            tracing::warn!(error = %e, "model execution failed");
            InferError::Internal(format!("model execution failed: {e}"))
        }
    }
}

fn device_failure(fault: &str) -> InferError {
    InferError::Internal(format!("model execution failed: device failure: {fault}"))
}

/// Splits each output along dim 0 by `rows`, giving each request its own outputs.
fn split_outputs(outputs: Vec<Tensor>, rows: &[usize], split: bool) -> Result<Vec<Vec<Tensor>>, InferError> {
    if !split {
        return Ok(vec![outputs]);
    }
    let mut per_request: Vec<Vec<Tensor>> = (0..rows.len()).map(|_| Vec::with_capacity(outputs.len())).collect();
    for output in outputs {
        let pieces = output.split_rows(rows).map_err(|e| {
            tracing::error!(error = %e, "a batched output does not split by request");
            InferError::Internal("the model's output does not follow the batch dim".into())
        })?;
        for (slot, piece) in per_request.iter_mut().zip(pieces) {
            slot.push(piece);
        }
    }
    Ok(per_request)
}

#[cfg(test)]
mod tests {
    //! Pool and batcher behaviour with a scripted runtime: it signals when it starts and waits for a gate,
    //! so the tests control what is running, queued or refused, without sleeps.

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    use ferroserve_runtime::{DataType, Device, TensorSpec};
    use parking_lot::Mutex;
    use tokio::sync::oneshot;

    use super::*;
    use crate::batcher::BatchResult;
    use crate::batcher::tests::job;

    struct Gated {
        signature: ModelSignature,
        started: mpsc::Sender<()>,
        gate: Arc<Mutex<mpsc::Receiver<()>>>,
        runs: Arc<AtomicUsize>,
    }

    impl Runtime for Gated {
        fn signature(&self) -> &ModelSignature {
            &self.signature
        }
        fn infer(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError> {
            let _ = self.started.send(());
            let _ = self.gate.lock().recv();
            self.runs.fetch_add(1, Ordering::SeqCst);
            let values = inputs[0].to_f32_vec().unwrap_or_default();
            if values.first() == Some(&-1.0) {
                panic!("scripted panic");
            }
            if values.contains(&-2.0) {
                return Err(RuntimeError::InvalidInput("-2 is not allowed".into()));
            }
            if values.contains(&-3.0) {
                return Err(RuntimeError::DeviceFault("CUDA error: an illegal memory access was encountered".into()));
            }
            let doubled: Vec<f32> = values.iter().map(|v| v * 2.0).collect();
            Ok(vec![
                Tensor::from_f32(inputs[0].shape().to_vec(), &doubled)
                    .map_err(|e| RuntimeError::Execution(e.to_string()))?,
            ])
        }
    }

    struct GatedLoader {
        started: Mutex<mpsc::Sender<()>>,
        gate: Arc<Mutex<mpsc::Receiver<()>>>,
        runs: Arc<AtomicUsize>,
    }

    impl RuntimeLoader for GatedLoader {
        fn platform(&self) -> &'static str {
            "test"
        }
        fn default_model_filename(&self) -> &'static str {
            "model.test"
        }
        fn load(&self, _: &LoadSpec) -> Result<Box<dyn Runtime>, RuntimeError> {
            let spec = TensorSpec { name: "x".into(), datatype: DataType::Fp32, dims: vec![-1] };
            Ok(Box::new(Gated {
                signature: ModelSignature { inputs: vec![spec.clone()], outputs: vec![spec] },
                started: self.started.lock().clone(),
                gate: Arc::clone(&self.gate),
                runs: Arc::clone(&self.runs),
            }))
        }
    }

    struct Harness {
        pool: InstancePool,
        started: mpsc::Receiver<()>,
        open: mpsc::Sender<()>,
        runs: Arc<AtomicUsize>,
        /// Calls of the pool's failure hook.
        failures: Arc<AtomicUsize>,
    }

    fn harness(max_batch_size: usize, max_queue_size: usize, delay: Duration) -> Harness {
        harness_of(1, max_batch_size, max_queue_size, delay)
    }

    fn harness_of(instances: usize, max_batch_size: usize, max_queue_size: usize, delay: Duration) -> Harness {
        let (started_tx, started) = mpsc::channel();
        let (open, gate) = mpsc::channel();
        let runs = Arc::new(AtomicUsize::new(0));
        let loader =
            GatedLoader { started: Mutex::new(started_tx), gate: Arc::new(Mutex::new(gate)), runs: Arc::clone(&runs) };
        let failures = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&failures);
        let (loaded, signature) = InstancePool::start(PoolSpec {
            label: "test:1".into(),
            loader: Arc::new(loader),
            instances: vec![LoadSpec::new("m".into(), Device::Cpu, 1); instances],
            stats: Arc::new(ModelStats::default()),
            gpus: Gpus::default(),
            on_failed: Some(FailureHook::new(move || {
                counted.fetch_add(1, Ordering::SeqCst);
            })),
        })
        .unwrap();
        let pool = loaded.serve(BatchPolicy {
            max_batch_size,
            preferred_batch_sizes: vec![],
            max_delay: delay,
            max_queue_size,
            priority_levels: 1,
            window: crate::batcher::state::Window::Fixed,
        });
        assert_eq!(signature.inputs[0].name, "x");
        Harness { pool, started, open, runs, failures }
    }

    /// Submits one single-value request per value, in order.
    fn submit_all(h: &Harness, values: &[f32]) -> Vec<oneshot::Receiver<BatchResult>> {
        values
            .iter()
            .map(|&v| {
                let (j, rx) = job(v);
                h.pool.submit(j).unwrap();
                rx
            })
            .collect()
    }

    fn value(rx: oneshot::Receiver<BatchResult>) -> Result<Vec<f32>, InferError> {
        rx.blocking_recv().unwrap().map(|o| o[0].to_f32_vec().unwrap())
    }

    /// A runtime that doubles its input, with no gate: for stress tests.
    struct Doubler(ModelSignature);

    impl Runtime for Doubler {
        fn signature(&self) -> &ModelSignature {
            &self.0
        }
        fn infer(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError> {
            let doubled: Vec<f32> = inputs[0].to_f32_vec().unwrap_or_default().iter().map(|v| v * 2.0).collect();
            Ok(vec![
                Tensor::from_f32(inputs[0].shape().to_vec(), &doubled)
                    .map_err(|e| RuntimeError::Execution(e.to_string()))?,
            ])
        }
    }

    struct DoublerLoader;

    impl RuntimeLoader for DoublerLoader {
        fn platform(&self) -> &'static str {
            "test"
        }
        fn default_model_filename(&self) -> &'static str {
            "model.test"
        }
        fn load(&self, _: &LoadSpec) -> Result<Box<dyn Runtime>, RuntimeError> {
            let spec = TensorSpec { name: "x".into(), datatype: DataType::Fp32, dims: vec![-1, 2] };
            Ok(Box::new(Doubler(ModelSignature { inputs: vec![spec.clone()], outputs: vec![spec] })))
        }
    }

    #[test]
    fn concurrent_requests_each_get_their_own_rows_exactly_once() {
        let spec = LoadSpec::new("m".into(), Device::Cpu, 1);
        let (loaded, _) = InstancePool::start(PoolSpec {
            label: "stress:1".into(),
            loader: Arc::new(DoublerLoader),
            instances: vec![spec.clone(), spec],
            stats: Arc::new(ModelStats::default()),
            gpus: Gpus::default(),
            on_failed: None,
        })
        .unwrap();
        let pool = Arc::new(loaded.serve(BatchPolicy {
            max_batch_size: 8,
            preferred_batch_sizes: vec![4],
            max_delay: Duration::from_micros(50),
            max_queue_size: 100_000,
            priority_levels: 2,
            window: crate::batcher::state::Window::Fixed,
        }));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let pool = Arc::clone(&pool);
                std::thread::spawn(move || {
                    let mut pending = Vec::new();
                    for i in 0..300usize {
                        let rows = 1 + (i + t) % 3;
                        let values: Vec<f32> = (0..rows * 2).map(|k| (t * 100_000 + i * 10 + k) as f32).collect();
                        let (reply, rx) = oneshot::channel();
                        let entry = Entry {
                            items: rows,
                            key: vec![2],
                            enqueued: Instant::now(),
                            deadline: None,
                            priority: i % 2,
                            payload: Pending::new(vec![Tensor::from_f32(vec![rows, 2], &values).unwrap()], reply),
                        };
                        pool.submit(entry).unwrap();
                        pending.push((values, rx));
                    }
                    for (values, rx) in pending {
                        let out = rx.blocking_recv().unwrap().unwrap();
                        let want: Vec<f32> = values.iter().map(|v| v * 2.0).collect();
                        assert_eq!(out[0].to_f32_vec().unwrap(), want);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn full_queue_is_refused_at_once() {
        let h = harness(0, 1, Duration::ZERO);
        let (running, running_rx) = job(1.0);
        h.pool.submit(running).unwrap();
        h.started.recv().unwrap();
        // One request queued fills the queue (max 1): every later one is refused at submission.
        let (queued, queued_rx) = job(2.0);
        h.pool.submit(queued).unwrap();
        for i in 3..7 {
            let (j, _rx) = job(i as f32);
            assert!(matches!(h.pool.submit(j), Err(InferError::Overloaded(_))));
        }
        h.open.send(()).unwrap();
        h.open.send(()).unwrap();
        assert_eq!(value(running_rx).unwrap(), vec![2.0]);
        assert_eq!(value(queued_rx).unwrap(), vec![4.0]);
        // Once the queue has drained, requests are accepted again.
        let (later, later_rx) = job(7.0);
        h.pool.submit(later).unwrap();
        h.open.send(()).unwrap();
        assert_eq!(value(later_rx).unwrap(), vec![14.0]);
    }

    #[test]
    fn abandoned_requests_are_dropped_before_running() {
        let h = harness(8, 16, Duration::ZERO);
        let (first, first_rx) = job(1.0);
        h.pool.submit(first).unwrap();
        h.started.recv().unwrap();
        let (abandoned, abandoned_rx) = job(5.0);
        h.pool.submit(abandoned).unwrap();
        drop(abandoned_rx);
        let (last, last_rx) = job(3.0);
        h.pool.submit(last).unwrap();
        h.open.send(()).unwrap();
        h.open.send(()).unwrap();
        value(first_rx).unwrap();
        assert_eq!(value(last_rx).unwrap(), vec![6.0]);
        assert_eq!(h.runs.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn requests_are_batched_and_split_back_in_order() {
        let h = harness(3, 16, Duration::from_secs(10));
        let receivers = submit_all(&h, &[1.0, 2.0, 3.0]);
        h.open.send(()).unwrap();
        let got: Vec<Vec<f32>> = receivers.into_iter().map(|rx| value(rx).unwrap()).collect();
        assert_eq!(got, vec![vec![2.0], vec![4.0], vec![6.0]]);
        assert_eq!(h.runs.load(Ordering::SeqCst), 1, "one execution for a full batch");
    }

    #[test]
    fn an_invalid_request_in_a_batch_fails_only_itself() {
        let h = harness(3, 16, Duration::from_secs(10));
        let receivers = submit_all(&h, &[1.0, -2.0, 3.0]);
        for _ in 0..4 {
            h.open.send(()).unwrap(); // the refused batch, then each request alone
        }
        let got: Vec<Result<Vec<f32>, InferError>> = receivers.into_iter().map(value).collect();
        assert_eq!(got[0], Ok(vec![2.0]));
        assert!(matches!(&got[1], Err(InferError::InvalidInput(m)) if m.contains("-2")));
        assert_eq!(got[2], Ok(vec![6.0]));
    }

    #[test]
    fn a_panicking_execution_does_not_kill_the_instance() {
        let h = harness(0, 4, Duration::ZERO);
        let (boom, boom_rx) = job(-1.0);
        h.pool.submit(boom).unwrap();
        h.open.send(()).unwrap();
        assert!(matches!(value(boom_rx), Err(InferError::Internal(_))));
        let (fine, fine_rx) = job(2.0);
        h.pool.submit(fine).unwrap();
        h.open.send(()).unwrap();
        assert_eq!(value(fine_rx).unwrap(), vec![4.0]);
    }

    #[test]
    fn a_device_fault_stops_its_instance_and_the_others_serve_on() {
        let h = harness_of(2, 0, 8, Duration::ZERO);
        let (fault, fault_rx) = job(-3.0);
        h.pool.submit(fault).unwrap();
        h.open.send(()).unwrap();
        let failed = value(fault_rx).unwrap_err();
        assert!(matches!(&failed, InferError::Internal(m) if m.contains("illegal memory access")), "{failed:?}");
        assert_eq!(h.pool.failed(), None, "one instance still serves");
        assert_eq!(h.failures.load(Ordering::SeqCst), 0, "the pool has not failed");
        for v in [1.0, 2.0, 3.0] {
            let (fine, fine_rx) = job(v);
            h.pool.submit(fine).unwrap();
            h.open.send(()).unwrap();
            assert_eq!(value(fine_rx).unwrap(), vec![v * 2.0]);
        }
    }

    #[test]
    fn a_device_fault_while_a_refused_batch_runs_alone_stops_the_rest_of_it() {
        let h = harness(4, 8, Duration::from_secs(10));
        let receivers = submit_all(&h, &[1.0, -2.0, -3.0, 4.0]);
        for _ in 0..4 {
            h.open.send(()).unwrap(); // the refused batch, then 1, -2 and -3 alone; 4 never runs
        }
        let got: Vec<Result<Vec<f32>, InferError>> = receivers.into_iter().map(value).collect();
        assert_eq!(got[0], Ok(vec![2.0]));
        assert!(matches!(&got[1], Err(InferError::InvalidInput(_))), "{:?}", got[1]);
        for refused in &got[2..] {
            assert!(matches!(refused, Err(InferError::Internal(m)) if m.contains("device failure")), "{refused:?}");
        }
        assert_eq!(h.runs.load(Ordering::SeqCst), 4);
        assert!(h.pool.failed().is_some());
        assert_eq!(h.failures.load(Ordering::SeqCst), 1, "the failure hook ran once");
    }

    #[test]
    fn when_the_last_instance_faults_queued_requests_are_answered_and_the_pool_reports_why() {
        let h = harness(0, 8, Duration::ZERO);
        let (fault, fault_rx) = job(-3.0);
        h.pool.submit(fault).unwrap();
        h.started.recv().unwrap();
        let queued = submit_all(&h, &[0.0, 1.0, 2.0]);
        h.open.send(()).unwrap();
        assert!(matches!(value(fault_rx), Err(InferError::Internal(_))));
        assert_eq!(h.failures.load(Ordering::SeqCst), 1, "the hook ran before the faulting request was answered");
        for rx in queued {
            let refused = value(rx).unwrap_err();
            assert!(
                matches!(&refused, InferError::NotReady(m) if m.contains("no working instance left")
                    && m.contains("illegal memory access")),
                "{refused:?}"
            );
        }
        assert_eq!(h.runs.load(Ordering::SeqCst), 1, "nothing ran after the fault");
        assert!(h.pool.failed().is_some_and(|why| why.contains("illegal memory access")));
        let (later, _rx) = job(1.0);
        let refused = h.pool.submit(later).unwrap_err();
        assert!(matches!(&refused, InferError::NotReady(m) if m.contains("no working instance left")), "{refused:?}");
    }

    #[test]
    fn queued_requests_time_out() {
        let h = harness(0, 4, Duration::ZERO);
        let (running, running_rx) = job(1.0);
        h.pool.submit(running).unwrap();
        h.started.recv().unwrap();
        let (mut late, late_rx) = job(2.0);
        late.deadline = Some(Instant::now());
        h.pool.submit(late).unwrap();
        h.open.send(()).unwrap();
        value(running_rx).unwrap();
        assert!(matches!(value(late_rx), Err(InferError::Timeout(_))));
        assert_eq!(h.runs.load(Ordering::SeqCst), 1, "the expired request never ran");
    }
}
