//! The instance pool of one model version: N runtime instances, each on its own OS thread, sharing one
//! bounded job queue.
//!
//! Each thread loads its own [`Runtime`] (its own ONNX Runtime session, later its own CUDA stream) and then
//! takes jobs one at a time. Models never run on tokio workers; the async side only waits on a oneshot.
//! A full queue is reported at once as [`InferError::Overloaded`] instead of queueing without bound, and a
//! job whose caller has gone away is dropped before it runs.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use ferroserve_runtime::{LoadSpec, ModelSignature, Runtime, RuntimeError, RuntimeLoader, Tensor};
use tokio::sync::oneshot;

use crate::InferError;
use crate::stats::ModelStats;

/// What the caller gets back from one job.
pub type JobResult = Result<Vec<Tensor>, InferError>;

/// One unit of work for an instance: inputs in signature order, already validated.
#[derive(Debug)]
pub struct Job {
    /// Inputs in signature order.
    pub inputs: Vec<Tensor>,
    /// Items in the batch (1 for a model that does not batch).
    pub batch_size: u64,
    /// When the job was queued, for queue-time statistics.
    pub enqueued: Instant,
    /// Where the outputs go.
    pub reply: oneshot::Sender<JobResult>,
}

/// How to start a pool.
pub struct PoolSpec {
    /// Thread-name prefix (`model:version`).
    pub label: String,
    /// The backend that loads each instance.
    pub loader: Arc<dyn RuntimeLoader>,
    /// One entry per instance.
    pub instances: Vec<LoadSpec>,
    /// Jobs that may wait for a free instance before new ones are refused.
    pub queue_capacity: usize,
    /// Where to record statistics.
    pub stats: Arc<ModelStats>,
}

/// A running pool. Dropping it closes the queue: instances finish queued jobs, then exit.
#[derive(Debug)]
pub struct InstancePool {
    sender: Sender<Job>,
    label: String,
    _threads: Vec<JoinHandle<()>>,
}

impl InstancePool {
    /// Starts every instance and waits until all have loaded (blocking: call off the async runtime).
    /// Returns the model signature read by the first instance.
    pub fn start(spec: PoolSpec) -> Result<(InstancePool, ModelSignature), RuntimeError> {
        let (sender, receiver) = crossbeam_channel::bounded::<Job>(spec.queue_capacity.max(1));
        let (loaded_tx, loaded_rx) = std::sync::mpsc::channel::<Result<ModelSignature, RuntimeError>>();
        let mut threads = Vec::with_capacity(spec.instances.len());
        for (index, load) in spec.instances.into_iter().enumerate() {
            let loader = Arc::clone(&spec.loader);
            let receiver = receiver.clone();
            let loaded_tx = loaded_tx.clone();
            let stats = Arc::clone(&spec.stats);
            let thread = std::thread::Builder::new()
                .name(format!("fs-{}-{index}", spec.label))
                .spawn(move || match loader.load(&load) {
                    Ok(runtime) => {
                        let _ = loaded_tx.send(Ok(runtime.signature().clone()));
                        drop(loaded_tx);
                        serve(runtime, receiver, &stats);
                    }
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e));
                    }
                })
                .map_err(|e| RuntimeError::Execution(format!("cannot spawn an instance thread: {e}")))?;
            threads.push(thread);
        }
        drop(loaded_tx);
        drop(receiver);
        let mut signature = None;
        for result in loaded_rx.iter() {
            let loaded = result?; // dropping `sender` on return stops the instances that did load
            signature.get_or_insert(loaded);
        }
        let signature = signature.ok_or_else(|| RuntimeError::Execution("the pool has no instances".into()))?;
        Ok((InstancePool { sender, label: spec.label, _threads: threads }, signature))
    }

    /// Queues a job, refusing at once when the queue is full.
    pub fn try_submit(&self, job: Job) -> Result<(), InferError> {
        match self.sender.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(InferError::Overloaded(format!(
                "model `{}` has {} requests queued, the limit; retry later",
                self.label,
                self.sender.len()
            ))),
            Err(TrySendError::Disconnected(_)) => {
                Err(InferError::NotReady(format!("model `{}` is unloading", self.label)))
            }
        }
    }

    /// Jobs waiting for an instance.
    pub fn queue_len(&self) -> usize {
        self.sender.len()
    }
}

fn serve(mut runtime: Box<dyn Runtime>, jobs: Receiver<Job>, stats: &ModelStats) {
    for job in jobs.iter() {
        if job.reply.is_closed() {
            tracing::debug!("caller went away; job dropped before running");
            continue;
        }
        let picked = Instant::now();
        stats.queue.record(picked.duration_since(job.enqueued));
        let batch_size = job.batch_size;
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| runtime.infer(job.inputs)));
        let infer_time = picked.elapsed();
        let result = match outcome {
            Ok(Ok(outputs)) => {
                stats.record_execution(batch_size, Duration::ZERO, infer_time, Duration::ZERO);
                Ok(outputs)
            }
            Ok(Err(RuntimeError::InvalidInput(message))) => Err(InferError::InvalidInput(message)),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "model execution failed");
                Err(InferError::Internal(format!("model execution failed: {e}")))
            }
            Err(_) => {
                tracing::error!("model execution panicked; the instance keeps serving");
                Err(InferError::Internal("model execution failed".into()))
            }
        };
        let _ = job.reply.send(result);
    }
}
