//! The dynamic batcher of one model version, split as two parts:
//! - [`state::BatchState`]: pure decisions (which requests form the next batch), unit-tested directly;
//! - [`Batcher`]: the queue shared by the request handlers, which [`submit`](Batcher::submit) to it, and the
//!   version's instance threads, which [`take`](Batcher::take) batches from it.
//!
//! There is no scheduler thread. An instance that is free takes the next batch itself, under the queue's
//! lock, the moment it finishes the previous one; only when nothing is ready does it sleep, until a request
//! arrives or the batching window (or a queued request's deadline) is due. Under load every instance is busy,
//! arrivals gather in the queue without waking anyone, and each instance picks up everything that gathered
//! (up to `max_batch_size`) when it comes back: batches grow with load, and a request costs no thread
//! wake-up besides its reply. Requests whose caller has gone away are dropped before they run; requests past
//! their deadline get a timeout. [`close`](Batcher::close) refuses new requests and lets the instances drain
//! the queue (ignoring the window) before they exit.

pub mod state;

use std::sync::Arc;
use std::time::Instant;

use ferroserve_runtime::Tensor;
use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

use crate::InferError;
use state::{BatchPolicy, BatchState, Decision, Entry, RunReason};

/// What a caller gets back.
pub type BatchResult = Result<Vec<Tensor>, InferError>;

/// One request waiting in the batcher: validated inputs in signature order and where to reply.
#[derive(Debug)]
pub struct Pending {
    /// Inputs in signature order (batch dim first when the model batches).
    pub inputs: Vec<Tensor>,
    /// Where the outputs go.
    pub reply: oneshot::Sender<BatchResult>,
    /// Set by [`Batcher::submit`], so the caller can [`cancel`](Batcher::cancel) it.
    ticket: Ticket,
    /// The request's spans when its trace is sampled.
    pub trace: Option<crate::trace::QueuedTrace>,
}

impl Pending {
    /// A request to submit, with the spans of its trace when sampled.
    pub fn traced(
        inputs: Vec<Tensor>,
        reply: oneshot::Sender<BatchResult>,
        trace: Option<crate::trace::QueuedTrace>,
    ) -> Self {
        Pending { trace, ..Pending::new(inputs, reply) }
    }

    /// A request to submit.
    pub fn new(inputs: Vec<Tensor>, reply: oneshot::Sender<BatchResult>) -> Self {
        Pending { inputs, reply, ticket: Ticket(0), trace: None }
    }
}

/// Names a submitted request within its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// A formed batch on its way to an instance.
pub type Batch = Vec<Entry<Pending>>;

/// How long a free instance keeps looking at an empty queue (yielding its CPU between looks) before it sleeps;
/// one instance per queue at a time.
///
/// A sleeping instance costs the next request a thread wake-up: on a virtual machine whose other CPU is idle
/// that is an inter-processor interrupt into a halted vCPU, measured at 35-40 us of queue time at c=1 on the
/// MLP (against a 150 us round trip), plus a compute time 1.5x the warm one on the cold CPU. A closed-loop
/// client's next request comes one round trip after its reply, so lingering for a little more than a typical
/// round trip removes both at low concurrency; yielding between looks gives the CPU to any thread that has work,
/// and a model nobody calls sleeps after this long.
///
/// Lingering spends spare CPU on latency, so it stops while the CPU is saturated ([`crate::cpu`], which leaves
/// the linger's own CPU time out of its reading): under an open-loop (Poisson) load requests come at random, and
/// an instance that lingers after every one-request batch spins for most of the gap between arrivals. On the MLP
/// at 4 000 requests a second (one CPU instance, 2 cores shared with the load generator), the server spent 230 us
/// of CPU per request with one-request batches and lingering, against 99 us with the fixed window's batches of 8
/// and none (`benches/batching_ab.sh`, CPU per request); near capacity, that spinning is CPU the request handlers
/// and the clients lose.
const IDLE_LINGER: std::time::Duration = std::time::Duration::from_micros(250);

/// Reports the CPU time this thread spent lingering since `from` (if it was lingering), and clears `from`.
fn stop_lingering(from: &mut Option<u64>) {
    if let (Some(from), Some(now)) = (from.take(), crate::cpu::thread_cpu_ns()) {
        crate::cpu::record_lingering(now.saturating_sub(from));
    }
}

/// Cheap handle to a model version's request queue.
#[derive(Debug, Clone)]
pub struct Batcher {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    label: String,
    /// Requests waiting, for `/metrics` (set whenever the queue changes).
    depth: metrics::Gauge,
    queue: Mutex<Queue>,
    /// The latest batch execution time in nanoseconds not yet given to the state (0 = none).
    last_execution_ns: std::sync::atomic::AtomicU64,
    /// The same for the latest execution of a single request.
    last_single_request_ns: std::sync::atomic::AtomicU64,
    /// Requests whose batches finished since the state was last told.
    finished_requests: std::sync::atomic::AtomicUsize,
    /// Instances with nothing ready to run sleep here.
    work: Condvar,
}

/// Whether an instance is lingering on the empty queue (at most one does; the others sleep).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Linger {
    /// None is.
    Nobody,
    /// One is, and no arrival has been left to it yet.
    Looking,
    /// One is, and an arrival was left to it instead of waking a sleeping instance.
    Claimed,
}

#[derive(Debug)]
struct Queue {
    state: BatchState<Pending>,
    /// Instances asleep on `work`: an arrival wakes one only if there is one (and no lingering one is free).
    idle: usize,
    /// The instance lingering on the empty queue, if any.
    linger: Linger,
    /// Requests in the batch taken last: lingering pays only when they come one at a time.
    last_batch: usize,
    /// Whether the adaptive window's sustained rule follows the CPU's saturation (instances on CPU), or holds
    /// only on the instances' own load (instances on GPUs, which share the device; see [`crate::cpu`]).
    cpu_gated: bool,
    /// No more requests are taken; the instances drain what is queued and exit.
    closed: bool,
    /// Why, when it is not the version being unloaded (every instance failed, say).
    closed_because: Option<String>,
    /// The next request's ticket.
    next_ticket: u64,
}

impl Batcher {
    /// An empty queue under `policy`; `label` (`model:version`) names it in errors.
    pub fn new(label: String, policy: BatchPolicy) -> Self {
        Self::observed(label, policy, metrics::Gauge::noop())
    }

    /// As [`Batcher::new`], keeping `depth` set to the number of queued requests.
    pub fn observed(label: String, policy: BatchPolicy, depth: metrics::Gauge) -> Self {
        let queue = Queue {
            state: BatchState::new(policy),
            idle: 0,
            linger: Linger::Nobody,
            last_batch: 1,
            cpu_gated: false,
            closed: false,
            closed_because: None,
            next_ticket: 1,
        };
        let last_execution_ns = std::sync::atomic::AtomicU64::new(0);
        Batcher {
            shared: Arc::new(Shared {
                label,
                depth,
                queue: Mutex::new(queue),
                last_execution_ns,
                last_single_request_ns: std::sync::atomic::AtomicU64::new(0),
                finished_requests: std::sync::atomic::AtomicUsize::new(0),
                work: Condvar::new(),
            }),
        }
    }

    /// Queues a request, or refuses it at once: `Overloaded` when the queue is full, `NotReady` once closed.
    pub fn submit(&self, mut entry: Entry<Pending>) -> Result<Ticket, InferError> {
        let mut queue = self.shared.queue.lock();
        if queue.closed {
            return Err(InferError::NotReady(match &queue.closed_because {
                Some(why) => why.clone(),
                None => format!("model `{}` is unloading", self.shared.label),
            }));
        }
        // Requests that finished since the last look stop counting as running before this one is counted in.
        self.catch_up(&mut queue);
        let ticket = Ticket(queue.next_ticket);
        queue.next_ticket += 1;
        entry.payload.ticket = ticket;
        let Ok(look) = queue.state.push(entry) else {
            return Err(InferError::Overloaded(format!(
                "Exceeds maximum queue size: model `{}` has {} requests queued, the limit; retry later",
                self.shared.label,
                queue.state.policy().max_queue_size
            )));
        };
        self.shared.depth.set(queue.state.len() as f64);
        if queue.linger == Linger::Looking {
            // The lingering instance sees it at its next look: no thread to wake.
            queue.linger = Linger::Claimed;
        } else if queue.idle > 0 && look {
            // An instance waiting on a partial batch wakes only when this request may end its wait. One that
            // slept on the empty queue is not woken for a request that the waiting one will see either: the
            // instance that takes a batch wakes the next sleeper if anything is left (`take`).
            self.shared.work.notify_one();
        }
        Ok(ticket)
    }

    /// Takes a request out of the queue if no instance has taken it yet; `false` means it is running (or has
    /// been answered). Lets a caller whose queue deadline passes answer at once, even while every instance
    /// is busy with a long batch.
    pub fn cancel(&self, ticket: Ticket) -> bool {
        let mut queue = self.shared.queue.lock();
        let removed = !queue.state.remove_where(|p| p.ticket == ticket).is_empty();
        self.shared.depth.set(queue.state.len() as f64);
        removed
    }

    /// The next batch to run, blocking until one is ready (called by instance threads, never on the async
    /// runtime). `None` once the queue is closed and drained: the instance should exit.
    pub fn take(&self) -> Option<(Batch, RunReason)> {
        let mut queue = self.shared.queue.lock();
        let mut idle_since = None;
        // This instance is the queue's lingering one.
        let mut lingering = false;
        // This thread's CPU time when it began lingering: the linger's CPU is left out of the CPU's busy share.
        let mut lingered_from: Option<u64> = None;
        loop {
            self.catch_up(&mut queue);
            let now = Instant::now();
            let gone = queue.state.remove_where(|p| p.reply.is_closed());
            if !gone.is_empty() {
                tracing::debug!(count = gone.len(), "callers went away; requests dropped before running");
            }
            let expired = queue.state.remove_expired(now);
            if !expired.is_empty() {
                // Answer outside the lock: a reply may wake a tokio worker.
                drop(queue);
                for entry in expired {
                    let _ = entry.payload.reply.send(Err(InferError::queue_timeout()));
                }
                queue = self.shared.queue.lock();
                continue;
            }
            let closed = queue.closed;
            let cpu = if queue.cpu_gated { crate::cpu::pressure() } else { crate::cpu::Pressure::Unknown };
            queue.state.set_cpu(cpu);
            let decision = queue.state.next_batch(now, closed);
            self.shared.depth.set(queue.state.len() as f64);
            // Whatever it decides, a lingering instance stops lingering unless it goes on below.
            if std::mem::take(&mut lingering) {
                queue.linger = Linger::Nobody;
            }
            match decision {
                Decision::Run(batch, reason) => {
                    queue.last_batch = batch.len();
                    // Requests left behind may have come while this instance waited, waking nobody (`submit`):
                    // another instance, if one sleeps, looks at them while this one executes.
                    if !queue.state.is_empty() && queue.idle > 0 {
                        self.shared.work.notify_one();
                    }
                    drop(queue);
                    stop_lingering(&mut lingered_from);
                    return Some((batch, reason));
                }
                Decision::Idle if closed => return None,
                Decision::Idle => {
                    // When requests come one at a time, the next is usually less than a round trip away: one
                    // instance gives the CPU to whoever has work while waiting for it, before paying for a sleep
                    // and a wake-up; the others sleep at once, so lingering costs at most one core per model.
                    // Under load (batches of several) arrivals gather while instances run, and lingering
                    // would only take CPU from the request handlers.
                    let young = now.duration_since(*idle_since.get_or_insert(now)) < IDLE_LINGER;
                    if young
                        && queue.linger == Linger::Nobody
                        && queue.last_batch <= 1
                        && crate::cpu::pressure() != crate::cpu::Pressure::Saturated
                    {
                        lingering = true;
                        queue.linger = Linger::Looking;
                        if lingered_from.is_none() {
                            lingered_from = crate::cpu::thread_cpu_ns();
                        }
                        parking_lot::MutexGuard::unlocked(&mut queue, std::thread::yield_now);
                        continue;
                    }
                    // Under the lock (a microsecond, once per idle spell): released, an arrival could slip by unseen.
                    stop_lingering(&mut lingered_from);
                    queue.idle += 1;
                    self.shared.work.wait(&mut queue);
                    queue.idle -= 1;
                }
                Decision::WaitUntil(due) => {
                    // Under the lock (a microsecond, once per idle spell): released, an arrival could slip by unseen.
                    stop_lingering(&mut lingered_from);
                    queue.idle += 1;
                    let _ = self.shared.work.wait_until(&mut queue, due);
                    queue.idle -= 1;
                }
            }
        }
    }

    /// Tells the adaptive window how long a model execution of `requests` requests took. Left for the next
    /// [`Batcher::take`] to hand over under the lock it takes anyway, so an execution costs no extra lock.
    pub fn record_execution(&self, requests: usize, took: std::time::Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.shared.last_execution_ns.store(nanos, std::sync::atomic::Ordering::Relaxed);
        if requests == 1 {
            self.shared.last_single_request_ns.store(nanos, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Tells the batcher that its instances run on CPU: the CPU sampler starts (once per process), instances stop
    /// lingering on an empty queue while the CPU is saturated, and an adaptive window holds partial batches for
    /// the preferred size only then (and then whatever the instances' own load).
    pub fn gate_on_cpu(&self) {
        crate::cpu::start_sampling();
        let mut queue = self.shared.queue.lock();
        if queue.state.policy().window == state::Window::Adaptive && queue.state.policy().max_batch_size > 0 {
            queue.cpu_gated = true;
        }
    }

    /// Tells the adaptive window how many instances take batches from this queue.
    pub fn set_instances(&self, instances: usize) {
        self.shared.queue.lock().state.set_instances(instances);
    }

    /// Tells the adaptive window that `requests` taken in one batch (as [`Batcher::take`] gave it) are no
    /// longer running; called just before their replies go out. Handed over under the queue's lock by the
    /// next `submit` or `take`, whichever comes first.
    pub fn record_finished(&self, requests: usize) {
        self.shared.finished_requests.fetch_add(requests, std::sync::atomic::Ordering::Relaxed);
    }

    /// Hands the executions and finished requests reported since the last look to the state (under the lock).
    fn catch_up(&self, queue: &mut Queue) {
        let executed = self.shared.last_execution_ns.swap(0, std::sync::atomic::Ordering::Relaxed);
        let single = self.shared.last_single_request_ns.swap(0, std::sync::atomic::Ordering::Relaxed);
        if single > 0 {
            queue.state.single_request_executed(std::time::Duration::from_nanos(single));
        }
        let finished = self.shared.finished_requests.swap(0, std::sync::atomic::Ordering::Relaxed);
        if executed > 0 || finished > 0 {
            queue.state.finished(finished, (executed > 0).then(|| std::time::Duration::from_nanos(executed)));
        }
    }

    /// Refuses new requests and wakes every instance so they drain the queue and exit.
    pub fn close(&self) {
        self.close_with(None);
    }

    /// As [`Batcher::close`], refusing new requests with `why` (503) instead of "unloading".
    pub fn close_because(&self, why: String) {
        self.close_with(Some(why));
    }

    fn close_with(&self, why: Option<String>) {
        let mut queue = self.shared.queue.lock();
        queue.closed = true;
        if queue.closed_because.is_none() {
            queue.closed_because = why;
        }
        drop(queue);
        self.shared.work.notify_all();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;

    fn policy(max_batch_size: usize, delay: Duration) -> BatchPolicy {
        BatchPolicy {
            max_batch_size,
            preferred_batch_sizes: vec![],
            max_delay: delay,
            max_queue_size: 4,
            priority_levels: 1,
            window: state::Window::Fixed,
        }
    }

    /// A one-item FP32 request holding `value`, and where its reply arrives (shared with the pool's tests).
    pub(crate) fn job(value: f32) -> (Entry<Pending>, oneshot::Receiver<BatchResult>) {
        let (reply, rx) = oneshot::channel();
        let inputs = vec![Tensor::from_f32(vec![1], &[value]).unwrap()];
        let entry = Entry {
            items: 1,
            key: vec![],
            enqueued: Instant::now(),
            deadline: None,
            priority: 0,
            payload: Pending::new(inputs, reply),
        };
        (entry, rx)
    }

    fn values(batch: &Batch) -> Vec<f32> {
        batch.iter().map(|e| e.payload.inputs[0].to_f32_vec().unwrap()[0]).collect()
    }

    #[test]
    fn a_request_left_behind_by_a_batch_goes_to_another_instance() {
        // Two instances, a 20 ms window. The first request is held by one instance, the other sleeps; a request of
        // another shape arrives and wakes nobody (it cannot end that wait). When the first batch runs, and
        // executes for a long time, the sleeping instance must take the second request within its own window.
        let batcher = Batcher::new("t:1".into(), policy(8, Duration::from_millis(20)));
        let instances: Vec<_> = (0..2)
            .map(|_| {
                let batcher = batcher.clone();
                std::thread::spawn(move || {
                    while let Some((batch, _)) = batcher.take() {
                        let slow = batch.iter().any(|e| e.key.is_empty());
                        for entry in batch {
                            let _ = entry.payload.reply.send(Ok(vec![]));
                        }
                        if slow {
                            std::thread::sleep(Duration::from_secs(4));
                        }
                    }
                })
            })
            .collect();
        while batcher.shared.queue.lock().idle < 2 {
            std::thread::yield_now();
        }
        let (first, first_rx) = job(1.0);
        batcher.submit(first).unwrap();
        // One instance holds the first request (it waits with a time), the other sleeps again.
        while {
            let queue = batcher.shared.queue.lock();
            !queue.state.is_holding() || queue.idle < 2
        } {
            std::thread::yield_now();
        }
        let (mut second, mut second_rx) = job(2.0);
        second.key = vec![3];
        let sent = Instant::now();
        batcher.submit(second).unwrap();
        assert!(first_rx.blocking_recv().unwrap().is_ok());
        let answered = loop {
            match second_rx.try_recv() {
                Ok(reply) => break reply,
                Err(oneshot::error::TryRecvError::Empty) if sent.elapsed() < Duration::from_secs(5) => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("the second request was never answered ({e})"),
            }
        };
        assert!(answered.is_ok());
        assert!(sent.elapsed() < Duration::from_secs(2), "answered after {:?}, behind the slow batch", sent.elapsed());
        batcher.close();
        for instance in instances {
            instance.join().unwrap();
        }
    }

    #[test]
    fn an_idle_instance_wakes_when_a_request_arrives() {
        let batcher = Batcher::new("t:1".into(), policy(8, Duration::ZERO));
        let taker = {
            let batcher = batcher.clone();
            std::thread::spawn(move || batcher.take().map(|(b, _)| values(&b)))
        };
        // Wait until the taker sleeps on the empty queue, so the arrival has to wake it.
        while batcher.shared.queue.lock().idle == 0 {
            std::thread::yield_now();
        }
        let (entry, _rx) = job(1.0);
        batcher.submit(entry).unwrap();
        assert_eq!(taker.join().unwrap(), Some(vec![1.0]));
    }

    #[test]
    fn one_instance_lingers_the_others_sleep_and_every_arrival_is_served() {
        let batcher = Batcher::new("t:1".into(), policy(1, Duration::ZERO));
        let instances: Vec<_> = (0..3)
            .map(|_| {
                let batcher = batcher.clone();
                std::thread::spawn(move || {
                    while let Some((batch, _)) = batcher.take() {
                        for entry in batch {
                            let _ = entry.payload.reply.send(Ok(vec![]));
                        }
                    }
                })
            })
            .collect();
        // Two of the three sleep while one lingers.
        while batcher.shared.queue.lock().idle < 2 {
            std::thread::yield_now();
        }
        // Arrivals one at a time (left to the lingering instance), in bursts (which wake sleepers too), and after
        // pauses longer than the linger (when every instance sleeps): none is left waiting.
        for round in 0..30 {
            let replies: Vec<_> = (0..1 + round % 4)
                .map(|i| {
                    let (entry, rx) = job(i as f32);
                    batcher.submit(entry).unwrap();
                    rx
                })
                .collect();
            // A lost wake-up fails here (within seconds) rather than hanging the test.
            let deadline = Instant::now() + Duration::from_secs(10);
            for mut rx in replies {
                loop {
                    match rx.try_recv() {
                        Ok(reply) => break assert!(reply.is_ok()),
                        Err(oneshot::error::TryRecvError::Empty) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_micros(50));
                        }
                        Err(e) => panic!("round {round}: a request was left unserved ({e})"),
                    }
                }
            }
            if round % 5 == 0 {
                std::thread::sleep(IDLE_LINGER * 2);
            }
        }
        batcher.close();
        for instance in instances {
            instance.join().unwrap();
        }
        assert_eq!(batcher.shared.queue.lock().linger, Linger::Nobody);
    }

    #[test]
    fn the_window_gathers_requests_into_one_batch() {
        let window = Duration::from_millis(30);
        let batcher = Batcher::new("t:1".into(), policy(8, window));
        let start = Instant::now();
        let mut receivers = Vec::new();
        for v in [1.0, 2.0, 3.0] {
            let (entry, rx) = job(v);
            batcher.submit(entry).unwrap();
            receivers.push(rx);
        }
        let (batch, _) = batcher.take().unwrap();
        assert!(start.elapsed() >= window, "a partial batch waits for the window");
        assert_eq!(values(&batch), vec![1.0, 2.0, 3.0]);
    }

    #[test]
    fn a_full_queue_refuses_and_abandoned_requests_never_reach_an_instance() {
        let batcher = Batcher::new("t:1".into(), policy(8, Duration::ZERO));
        let mut kept = Vec::new();
        for v in 0..4 {
            let (entry, rx) = job(v as f32);
            batcher.submit(entry).unwrap();
            kept.push(rx);
        }
        let (extra, _rx) = job(9.0);
        assert!(matches!(batcher.submit(extra), Err(InferError::Overloaded(_))));
        drop(kept.remove(1)); // the caller of request 1 goes away
        assert_eq!(values(&batcher.take().unwrap().0), vec![0.0, 2.0, 3.0]);
    }

    #[test]
    fn a_request_can_be_cancelled_only_while_queued() {
        let batcher = Batcher::new("t:1".into(), policy(1, Duration::ZERO));
        let (first, _rx1) = job(1.0);
        let (second, _rx2) = job(2.0);
        let first = batcher.submit(first).unwrap();
        let second = batcher.submit(second).unwrap();
        assert_eq!(values(&batcher.take().unwrap().0), vec![1.0]);
        assert!(!batcher.cancel(first), "taken by an instance: too late");
        assert!(batcher.cancel(second));
        assert!(!batcher.cancel(second));
        batcher.close();
        assert!(batcher.take().is_none());
    }

    #[test]
    fn only_an_adaptive_window_follows_the_cpu() {
        // Pools on CPU call `gate_on_cpu`; a fixed window, or no batching, has nothing to hold and stays as it is.
        for (window, max_batch_size, gated) in
            [(state::Window::Adaptive, 8, true), (state::Window::Fixed, 8, false), (state::Window::Adaptive, 0, false)]
        {
            let b = Batcher::new("m:1".into(), BatchPolicy { window, ..policy(max_batch_size, Duration::ZERO) });
            assert!(!b.shared.queue.lock().cpu_gated, "a new queue holds on the instances' own load");
            b.gate_on_cpu();
            assert_eq!(b.shared.queue.lock().cpu_gated, gated, "{window:?}, max_batch_size {max_batch_size}");
        }
    }

    #[test]
    fn closing_refuses_new_requests_and_drains_the_queue_ignoring_the_window() {
        let batcher = Batcher::new("t:1".into(), policy(8, Duration::from_secs(3600)));
        let (entry, _rx) = job(1.0);
        batcher.submit(entry).unwrap();
        batcher.close();
        let (late, _late_rx) = job(2.0);
        assert!(matches!(batcher.submit(late), Err(InferError::NotReady(_))));
        assert_eq!(values(&batcher.take().unwrap().0), vec![1.0]);
        assert!(batcher.take().is_none(), "a closed, empty queue tells instances to exit");
    }

    #[test]
    fn an_expired_request_is_answered_with_a_timeout_while_an_instance_waits() {
        let batcher = Batcher::new("t:1".into(), policy(8, Duration::from_secs(3600)));
        let (mut entry, rx) = job(1.0);
        entry.deadline = Some(Instant::now() + Duration::from_millis(20));
        batcher.submit(entry).unwrap();
        let taker = {
            let batcher = batcher.clone();
            std::thread::spawn(move || batcher.take().is_none())
        };
        assert!(matches!(rx.blocking_recv().unwrap(), Err(InferError::Timeout(_))));
        batcher.close();
        assert!(taker.join().unwrap());
    }
}
