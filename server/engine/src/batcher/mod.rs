//! The dynamic batcher of one model version, split as three parts:
//! - [`state::BatchState`]: pure decisions (which requests form the next batch), unit-tested directly;
//! - the actor (`run_actor`): an OS thread that owns the state, takes in requests, watches the clock and
//!   instance availability, and hands formed batches to the instances;
//! - [`Batcher`]: the cheap handle requests are submitted through. It counts queued requests itself, so a
//!   full queue is refused at once without waking the actor.
//!
//! The actor keeps at most one batch per instance in flight plus one prefetched full batch. While every
//! instance is busy it sleeps until one finishes (or a timer is due) instead of waking for each arrival:
//! arrivals then wait in the channel and join the next batch, which is formed the moment an instance is free,
//! so batches grow as large as the queue allows and the hot path costs no thread wake-up per request.
//! Requests whose caller has gone away are dropped before they run; requests past their deadline get a
//! timeout. When the handle is dropped the actor drains its queue (ignoring the delay), then closes the batch
//! channel so the instances finish and exit.

pub mod state;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    queued: Arc<AtomicUsize>,
    max_queue_size: usize,
    label: String,
}

impl Batcher {
    /// Queues a request, or refuses it at once with `Overloaded` when the queue is full.
    pub fn submit(&self, entry: Entry<Pending>) -> Result<(), InferError> {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queue_size {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(InferError::Overloaded(format!(
                "model `{}` has {} requests queued, the limit; retry later",
                self.label, self.max_queue_size
            )));
        }
        match self.requests.try_send(entry) {
            Ok(()) => Ok(()),
            Err(TrySendError::Disconnected(_)) | Err(TrySendError::Full(_)) => {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                Err(InferError::NotReady(format!("model `{}` is unloading", self.label)))
            }
        }
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
    let queued = Arc::new(AtomicUsize::new(0));
    let max_queue_size = policy.max_queue_size.max(1);
    let actor = Actor {
        state: BatchState::new(policy),
        instances: instances.max(1),
        incoming,
        batches,
        done,
        queued: Arc::clone(&queued),
    };
    std::thread::Builder::new().name(format!("fs-batch-{label}")).spawn(move || actor.run())?;
    Ok(Batcher { requests, queued, max_queue_size, label })
}

struct Actor {
    state: BatchState<Pending>,
    instances: usize,
    incoming: Receiver<Entry<Pending>>,
    batches: Sender<Batch>,
    done: Receiver<()>,
    /// Shared with the handle: requests in `incoming` plus those in `state`.
    queued: Arc<AtomicUsize>,
}

impl Actor {
    /// Answers a request that leaves the queue without running.
    fn refuse(&self, entry: Entry<Pending>, error: InferError) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
        let _ = entry.payload.reply.send(Err(error));
    }

    fn run(mut self) {
        let mut outstanding = 0usize;
        let mut closed = false;
        loop {
            // Take in what arrived. The handle has already bounded the queue, so `push` only fails if the
            // two disagree; such a request is refused like any overflow.
            loop {
                match self.incoming.try_recv() {
                    Ok(entry) => {
                        if let Err(entry) = self.state.push(entry) {
                            self.refuse(entry, InferError::Overloaded("the queue is full; retry later".into()));
                        }
                    }
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            while self.done.try_recv().is_ok() {
                outstanding = outstanding.saturating_sub(1);
            }
            let now = Instant::now();
            let gone = self.state.remove_where(|p| p.reply.is_closed());
            if !gone.is_empty() {
                self.queued.fetch_sub(gone.len(), Ordering::AcqRel);
                tracing::debug!(count = gone.len(), "callers went away; requests dropped before running");
            }
            for entry in self.state.remove_expired(now) {
                self.refuse(
                    entry,
                    InferError::Timeout("the request timed out in the queue before it could run".into()),
                );
            }
            // Hand out batches: one per free instance, plus one full batch prefetched while all are busy.
            let mut wake: Option<Instant> = None;
            while outstanding <= self.instances {
                let only_full = outstanding == self.instances;
                match self.state.next_batch(now, only_full, closed) {
                    Decision::Run(batch) => {
                        self.queued.fetch_sub(batch.len(), Ordering::AcqRel);
                        if self.batches.send(batch).is_err() {
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
            if closed && self.state.is_empty() {
                return; // dropping `batches` lets the instances finish and exit
            }
            let timeout = wake.map(|t| t.saturating_duration_since(Instant::now()));
            // While every instance is busy, arrivals cannot change what happens next: sleep until one is
            // free (or a timer is due) and let arrivals gather in the channel meanwhile.
            let all_busy = outstanding >= self.instances;
            if closed || all_busy {
                let finished = match timeout {
                    Some(t) => match self.done.recv_timeout(t) {
                        Ok(()) => true,
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => false,
                        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                    },
                    None => match self.done.recv() {
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
            select.recv(&self.incoming);
            select.recv(&self.done);
            let _ = match timeout {
                Some(t) => select.ready_timeout(t).ok(),
                None => Some(select.ready()),
            }; // the loop head drains whichever is ready
        }
    }
}
