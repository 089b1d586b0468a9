//! The dynamic batcher of one model version, split as three parts:
//! - [`state::BatchState`]: pure decisions (which requests form the next batch), unit-tested directly;
//! - the actor (`run_actor`): an OS thread that owns the state, receives requests, watches the clock
//!   and instance availability, and hands formed batches to the instances;
//! - [`Batcher`]: the cheap handle requests are submitted through.
//!
//! The actor keeps at most one batch per instance in flight plus one prefetched batch, which it forms only
//! when full while every instance is busy; otherwise batches are formed when an instance is free, so they
//! grow as large as the queue allows. Requests whose caller has gone away are dropped before they run;
//! requests past their deadline get a timeout. When the handle is dropped the actor drains its queue
//! (ignoring the delay), then closes the batch channel so the instances finish and exit.

pub mod state;

use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use ferroserve_runtime::Tensor;
use tokio::sync::oneshot;

use crate::InferError;
use state::{BatchPolicy, BatchState, Decision, Entry};

/// What a caller gets back.
pub type BatchResult = Result<Vec<Tensor>, InferError>;

/// One request waiting in the batcher: validated inputs in signature order and where to reply.
#[derive(Debug)]
pub struct Pending {
    /// Inputs in signature order (batch dim first when the model batches).
    pub inputs: Vec<Tensor>,
    /// Where the outputs go.
    pub reply: oneshot::Sender<BatchResult>,
}

/// A formed batch on its way to an instance.
pub type Batch = Vec<Entry<Pending>>;

/// Cheap handle to a model version's batcher.
#[derive(Debug, Clone)]
pub struct Batcher {
    requests: Sender<Entry<Pending>>,
    label: String,
}

impl Batcher {
    /// Queues a request. A full queue answers `Overloaded` through the request's reply.
    pub fn submit(&self, entry: Entry<Pending>) -> Result<(), InferError> {
        match self.requests.try_send(entry) {
            Ok(()) => Ok(()),
            Err(TrySendError::Disconnected(_)) | Err(TrySendError::Full(_)) => {
                Err(InferError::NotReady(format!("model `{}` is unloading", self.label)))
            }
        }
    }

    /// Requests sent to the batcher that it has not yet taken in.
    pub fn backlog(&self) -> usize {
        self.requests.len()
    }
}

/// Starts the actor thread. Batches go to `batches` (read by the instances), which report each finished
/// batch on `done`. Returns the handle.
pub fn start(
    label: String,
    policy: BatchPolicy,
    instances: usize,
    batches: Sender<Batch>,
    done: Receiver<()>,
) -> std::io::Result<Batcher> {
    let (requests, incoming) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name(format!("fs-batch-{label}"))
        .spawn(move || run_actor(BatchState::new(policy), instances.max(1), incoming, batches, done))?;
    Ok(Batcher { requests, label })
}

fn refuse(entry: Entry<Pending>, error: InferError) {
    let _ = entry.payload.reply.send(Err(error));
}

fn run_actor(
    mut state: BatchState<Pending>,
    instances: usize,
    incoming: Receiver<Entry<Pending>>,
    batches: Sender<Batch>,
    done: Receiver<()>,
) {
    let mut outstanding = 0usize;
    let mut closed = false;
    let max_queue = state.policy().max_queue_size;
    loop {
        // Take in what arrived.
        loop {
            match incoming.try_recv() {
                Ok(entry) => {
                    if let Err(entry) = state.push(entry) {
                        refuse(
                            entry,
                            InferError::Overloaded(format!("{max_queue} requests are queued, the limit; retry later")),
                        );
                    }
                }
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        while done.try_recv().is_ok() {
            outstanding = outstanding.saturating_sub(1);
        }
        let now = Instant::now();
        let gone = state.remove_where(|p| p.reply.is_closed());
        if !gone.is_empty() {
            tracing::debug!(count = gone.len(), "callers went away; requests dropped before running");
        }
        for entry in state.remove_expired(now) {
            refuse(entry, InferError::Timeout("the request timed out in the queue before it could run".into()));
        }
        // Hand out batches: one per free instance, plus one full batch prefetched while all are busy.
        let mut wake: Option<Instant> = None;
        while outstanding <= instances {
            let only_full = outstanding == instances;
            match state.next_batch(now, only_full, closed) {
                Decision::Run(batch) => {
                    if batches.send(batch).is_err() {
                        return; // every instance is gone
                    }
                    outstanding += 1;
                }
                Decision::WaitUntil(t) => {
                    wake = Some(t);
                    break;
                }
                Decision::Idle => break,
            }
        }
        if closed && state.is_empty() {
            return; // dropping `batches` lets the instances finish and exit
        }
        let timeout = wake.map(|t| t.saturating_duration_since(Instant::now()));
        if closed {
            // Only completions can change anything now.
            let finished = match timeout {
                Some(t) => match done.recv_timeout(t) {
                    Ok(()) => true,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => false,
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                },
                None => match done.recv() {
                    Ok(()) => true,
                    Err(_) => return,
                },
            };
            if finished {
                outstanding = outstanding.saturating_sub(1);
            }
            continue;
        }
        let mut select = crossbeam_channel::Select::new();
        let requests_index = select.recv(&incoming);
        let done_index = select.recv(&done);
        let ready = match timeout {
            Some(t) => select.ready_timeout(t).ok(),
            None => Some(select.ready()),
        };
        let _ = (ready, requests_index, done_index); // the loop head drains whichever is ready
    }
}
