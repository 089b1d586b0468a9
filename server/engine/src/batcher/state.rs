//! [`BatchState`]: the dynamic batcher's decisions as plain state, with no channels, threads or clocks.
//!
//! The [`Batcher`](super::Batcher) feeds it requests and the current time; it answers which requests form
//! the next batch, or until when to wait. Rules (Triton's dynamic batcher, simplified):
//! - requests are taken by priority level (0 first), then in arrival order;
//! - a batch holds only requests whose non-batch dims match the first one (ragged requests never mix),
//!   up to `max_batch_size` items (batch dim 0 summed);
//! - a batch runs at once when full or when it reaches a preferred size;
//! - otherwise, under the [`Window::Fixed`] policy (Triton's), when the oldest request has waited `max_delay`;
//!   under the default [`Window::Adaptive`] one, `max_delay` is only an upper bound. A partial batch never
//!   waits for a request that cannot come: when every request recently seen in flight at once is already
//!   queued or running (closed-loop clients, which send again only after their answer), it runs at once.
//!   While the CPU the instances share with the request handlers is saturated (see [`crate::cpu`]), a partial
//!   batch waits for the next preferred size (or `max_batch_size`) as the config asks, if it can gather at the
//!   recent arrival rate within `max_delay`: up to `max_delay` while the requests answered since the last few
//!   batches' peak in flight could fill it (closed-loop clients come back in waves), otherwise only while
//!   arrivals go on. Where the CPU's pressure is unknown (instances on GPUs) it does so only under sustained
//!   load (the recent arrivals run one request at a time would keep the instances busy 85 % of the time or
//!   more) and when the size takes fewer requests than were recently in flight at once; where the CPU has room,
//!   never.
//!   Otherwise it waits only when requests arrive much faster than a batch executes (the recent gap
//!   between arrivals that found requests already queued is an eighth of a batch's execution time or less),
//!   for at most one such gap after the last arrival and half an execution; otherwise it runs at once, and what
//!   arrives while it executes forms the next batch. An idle model, or one whose clients wait for each answer
//!   before sending again (concurrency 1), never waits;
//! - queued requests past their deadline are taken out for a timeout reply.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::cpu::Pressure;

/// How a model's requests are batched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Most items in one batch; 0 = the model does not batch (one request per execution).
    pub max_batch_size: usize,
    /// Batch sizes that run at once when reached, ascending.
    pub preferred_batch_sizes: Vec<usize>,
    /// Longest wait for more requests to join the oldest one.
    pub max_delay: Duration,
    /// Most requests queued; more are refused.
    pub max_queue_size: usize,
    /// Number of priority levels (queues), at least 1; level 0 runs first.
    pub priority_levels: usize,
    /// How long a partial batch waits.
    pub window: Window,
}

/// How long a partial batch waits for more requests (config `parameters` key `batch_window`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Window {
    /// While waiting is likely to pay, never past `max_delay` (the default).
    #[default]
    Adaptive,
    /// Until the oldest request has waited `max_delay`, as Triton does.
    Fixed,
}

impl Window {
    /// The config spelling: `adaptive` or `fixed`.
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "adaptive" => Some(Window::Adaptive),
            "fixed" => Some(Window::Fixed),
            _ => None,
        }
    }
}

/// Why a batch ran: reported per version in the statistics extension and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunReason {
    /// The model does not batch: one request per execution.
    Unbatched,
    /// `max_batch_size` items (or the largest preferred size) were queued.
    Full,
    /// A preferred batch size was reached.
    Preferred,
    /// The oldest request waited `max_delay`.
    Window,
    /// The adaptive window judged further waiting not worth it (idle model, or arrivals stopped).
    Adaptive,
    /// Draining on shutdown.
    Flush,
}

impl RunReason {
    /// Every reason, in the order [`RunReason::index`] numbers them.
    pub const ALL: [RunReason; 6] = [
        RunReason::Unbatched,
        RunReason::Full,
        RunReason::Preferred,
        RunReason::Window,
        RunReason::Adaptive,
        RunReason::Flush,
    ];

    /// Lower-case name, as metrics and statistics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            RunReason::Unbatched => "unbatched",
            RunReason::Full => "full",
            RunReason::Preferred => "preferred",
            RunReason::Window => "window",
            RunReason::Adaptive => "adaptive",
            RunReason::Flush => "flush",
        }
    }

    /// Position in [`RunReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// How long arrival and execution history lasts (exponential decay).
const HISTORY_SECS: f64 = 0.25;
/// Arrivals (decayed) that must have found requests waiting before the adaptive window waits at all.
const MIN_ARRIVALS: f64 = 4.0;
/// The adaptive window waits only when at least this many arrivals are expected during one execution.
const ARRIVALS_PER_EXECUTION: f64 = 8.0;
/// How long the peak of requests in flight must have held before the adaptive window trusts it as the number
/// of requests that can be in flight at once.
const PEAK_SETTLED: Duration = Duration::from_millis(10);
/// Weight of the newest execution time in its moving average.
const EXECUTION_WEIGHT: f64 = 0.1;
/// Share of the time the instances would be busy running the recent arrivals one request at a time (arrival
/// rate × a one-request execution ÷ instances) from which the load counts as sustained where the CPU's pressure
/// is unknown (instances on GPUs; on CPU the window follows the CPU's saturation instead): a partial batch then
/// waits for the next preferred size, as the config asks, when that size can form. Above it, every execution
/// saved is time the instance and the CPU it shares with the request handlers get back (on the compute-bound
/// MLP at concurrency 32, batches of 3 to 4 items cost 36-41 µs of execution per request, batches of 8 or more
/// 26 µs; closed-loop clients there arrive at about one one-request execution apart). Below it, running
/// whatever is queued whenever an instance is free keeps up, and what arrives during an execution batches by
/// itself: holding a batch for more only adds latency, and under arrivals that do not wait for answers (an
/// open loop) the held requests themselves raise the peak in flight that lets the next batch wait. At 0.5, a
/// simulated Poisson load at 80 % of the rate batching off saturates at had a p99 1.6 times batching off's
/// (`open_loop_p99_is_no_worse_than_the_fixed_window_or_batching_off`).
const SUSTAINED_LOAD: f64 = 0.85;
/// Under sustained load, a partial batch waits no longer than this many expected gaps after the last arrival
/// (each look re-reads the gap, which grows while nothing arrives).
const GAPS_WITHOUT_ARRIVALS: f64 = 4.0;
/// Share of the recent peak in flight kept each time a batch is taken: a peak that no batch has come near for a
/// few executions no longer says that requests are on their way back.
const RECENT_PEAK_KEEP: f64 = 0.75;
/// A one-request execution counts in its moving average as at most this many times the average. Once the
/// sustained rule batches, one-request executions stop and nothing corrects the average, so a stall that lifted
/// it over [`SUSTAINED_LOAD`] would hold batches for as long as the load lasts: at 2, one 1 ms stall in 500
/// executions did so in the simulated open loop on two instances (p99 160 µs against 45 µs running at once).
const STALL_LIMIT: f64 = 1.25;
/// Weight of the newest request's item count in the moving average of items per request.
const ITEMS_WEIGHT: f64 = 0.1;

/// What the adaptive window knows of the recent past: arrivals that found requests already queued and the time
/// the queue was non-empty, all arrivals and all the time, the most requests in flight at once (all decaying),
/// the last arrival, a batch's execution time, a one-request execution's time and the items per request.
#[derive(Debug, Clone, Default)]
struct History {
    busy_arrivals: f64,
    busy_secs: f64,
    arrivals: f64,
    secs: f64,
    peak_in_flight: f64,
    /// The most requests in flight at once over the last few batches taken (decaying per batch, not with time).
    recent_peak: f64,
    /// When an arrival last took the requests in flight past the peak by one or more: the peak is still growing
    /// (a burst, or clients joining), so it says nothing yet about how many requests can come.
    peak_raised: Option<Instant>,
    updated: Option<Instant>,
    last_arrival: Option<Instant>,
    execution_secs: Option<f64>,
    /// A one-request execution's time (moving average): what the arrivals would cost run one at a time.
    /// Kept while batches are larger, so it does not move with the batching it decides.
    single_request_secs: Option<f64>,
    /// Items per request (moving average; 0 until the first arrival).
    items_per_request: f64,
}

impl History {
    /// Moves the clock to `now` (never backwards); `queued`: whether requests waited over that time.
    fn advance(&mut self, now: Instant, queued: bool) {
        let Some(then) = self.updated else {
            self.updated = Some(now);
            return;
        };
        if now <= then {
            return;
        }
        let dt = (now - then).as_secs_f64();
        let keep = (-dt / HISTORY_SECS).exp();
        self.busy_arrivals *= keep;
        self.arrivals *= keep;
        // The interval itself, decayed as it goes: an idle spell counts as at most HISTORY_SECS, as arrivals
        // before it fade, so the mean gap does not overstate for long after it.
        self.secs = self.secs * keep + HISTORY_SECS * (1.0 - keep);
        self.peak_in_flight *= keep;
        self.busy_secs = self.busy_secs * keep + if queued { dt } else { 0.0 };
        self.updated = Some(now);
    }

    /// Expected gap between arrivals while requests wait, once a few arrivals have been seen waiting. (Time
    /// spent waiting without arrivals lengthens it, so a wait that re-reads it converges: to at most twice the
    /// first estimate with four or more arrivals behind it.)
    fn gap(&self) -> Option<f64> {
        (self.busy_arrivals >= MIN_ARRIVALS && self.busy_secs > 0.0).then(|| self.busy_secs / self.busy_arrivals)
    }

    /// Mean gap between arrivals over all the recent time, idle or not: the arrival rate the instances must
    /// keep up with. (The gap while requests wait is shorter when arrivals come in bursts, as closed-loop
    /// clients' do when their answers went out together.)
    fn mean_gap(&self) -> Option<f64> {
        (self.arrivals >= MIN_ARRIVALS && self.secs > 0.0).then(|| self.secs / self.arrivals)
    }
}

/// A partial batch that an instance waits on ([`Decision::WaitUntil`]), as far as arrivals can end the wait
/// before its time: the batcher wakes the instance for an arrival only when one of them may have
/// ([`BatchState::push`]), not for each (on the MLP, a wake-up per arrival cost as much CPU as the executions
/// that holding saved).
#[derive(Debug, Clone)]
struct Hold {
    /// The lowest priority level (largest number) among the batch's requests, and the head's non-batch dims:
    /// only requests of that key join its batch. A request of a higher priority than that level is taken ahead
    /// of some of them (or heads a batch of its own), so the sizes the batch passes through change.
    deepest_level: usize,
    key: Vec<usize>,
    /// When the head arrived (the adaptive window's settled peak is judged from it).
    head_since: Instant,
    /// Items of that key queued, and the count from which a preferred size (or `max_batch_size`) may have formed.
    items: usize,
    ready_at: usize,
    /// When the instance looks again anyway.
    until: Instant,
}

/// A queued request as the state sees it.
#[derive(Debug, Clone)]
pub struct Entry<T> {
    /// Items (size of batch dim 0; 1 for models that do not batch).
    pub items: usize,
    /// Non-batch dims of every input; only equal keys share a batch.
    pub key: Vec<usize>,
    /// Arrival time.
    pub enqueued: Instant,
    /// Give up (timeout) if still queued at this time.
    pub deadline: Option<Instant>,
    /// Priority level, 0 = highest; clamped to the policy's levels.
    pub priority: usize,
    /// The request itself.
    pub payload: T,
}

/// What a free instance should do next.
#[derive(Debug)]
pub enum Decision<T> {
    /// Run these requests as one batch, in this order, for this reason.
    Run(Vec<Entry<T>>, RunReason),
    /// Nothing is ready; look again at this time (or sooner if something arrives).
    WaitUntil(Instant),
    /// The queue is empty (or nothing can be decided until something changes).
    Idle,
}

/// The dynamic batcher's queue.
#[derive(Debug, Clone)]
pub struct BatchState<T> {
    policy: BatchPolicy,
    queues: Vec<VecDeque<Entry<T>>>,
    len: usize,
    /// Requests taken for a batch whose execution has not been reported finished.
    running: usize,
    history: History,
    /// Instances taking batches from this queue.
    instances: usize,
    /// The CPU the instances share with the request handlers ([`crate::cpu`]): where it has room the
    /// sustained-load rule never holds a partial batch; where it is saturated it holds from a lighter load.
    cpu: Pressure,
    /// The wait decided last, until the next decision.
    hold: Option<Hold>,
}

impl<T> BatchState<T> {
    /// An empty queue under `policy`.
    pub fn new(mut policy: BatchPolicy) -> Self {
        policy.priority_levels = policy.priority_levels.max(1);
        policy.preferred_batch_sizes.sort_unstable();
        let queues = (0..policy.priority_levels).map(|_| VecDeque::new()).collect();
        BatchState {
            policy,
            queues,
            len: 0,
            running: 0,
            history: History::default(),
            instances: 1,
            cpu: Pressure::Unknown,
            hold: None,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &BatchPolicy {
        &self.policy
    }

    /// Requests queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the last decision was to wait on a partial batch (for tests of the wake-ups).
    #[cfg(test)]
    pub(crate) fn is_holding(&self) -> bool {
        self.hold.is_some()
    }

    /// Queues a request, or hands it back when the queue is full. `Ok(true)` when an instance waiting on a
    /// partial batch should look again now (the request may end its wait: it may complete a preferred size,
    /// heads a higher priority, has an earlier deadline, or brings in the last request the adaptive window
    /// expects), or when no instance waits on one; `Ok(false)` when the wait goes on as decided (the request
    /// joins the queue, and the instance sees it when it looks at the time it chose).
    pub fn push(&mut self, mut entry: Entry<T>) -> Result<bool, Entry<T>> {
        if self.len >= self.policy.max_queue_size {
            return Err(entry);
        }
        entry.priority = entry.priority.min(self.queues.len() - 1);
        let mut look = match &mut self.hold {
            None => true,
            Some(hold) => {
                if entry.key == hold.key {
                    hold.items += entry.items;
                }
                entry.priority < hold.deepest_level
                    || hold.items >= hold.ready_at
                    || entry.deadline.is_some_and(|d| d < hold.until)
            }
        };
        let queued = self.len > 0;
        self.history.advance(entry.enqueued, queued);
        if queued {
            self.history.busy_arrivals += 1.0;
        }
        self.history.arrivals += 1.0;
        self.history.last_arrival = Some(self.history.last_arrival.map_or(entry.enqueued, |t| t.max(entry.enqueued)));
        let items = entry.items as f64;
        self.history.items_per_request = if self.history.items_per_request > 0.0 {
            self.history.items_per_request + ITEMS_WEIGHT * (items - self.history.items_per_request)
        } else {
            items
        };
        self.queues[entry.priority].push_back(entry);
        self.len += 1;
        let in_flight = (self.len + self.running) as f64;
        if in_flight > self.history.peak_in_flight + 0.5 {
            self.history.peak_raised = self.history.updated;
        }
        self.history.peak_in_flight = self.history.peak_in_flight.max(in_flight);
        self.history.recent_peak = self.history.recent_peak.max(in_flight);
        if let Some(hold) = self.hold.as_ref().filter(|_| !look && self.policy.window == Window::Adaptive) {
            look = self.everything_in_flight_is_here(hold.head_since);
        }
        Ok(look)
    }

    /// Records that `requests` taken earlier have finished executing, and how long an execution took, if one
    /// was timed (the adaptive window compares arrival gaps with it).
    pub fn finished(&mut self, requests: usize, took: Option<Duration>) {
        self.running = self.running.saturating_sub(requests);
        if let Some(took) = took {
            let secs = took.as_secs_f64();
            let average = self.history.execution_secs.map_or(secs, |e| e + EXECUTION_WEIGHT * (secs - e));
            self.history.execution_secs = Some(average);
        }
    }

    /// Records how long an execution of a single request took (the sustained-load rule of the adaptive window
    /// weighs the arrival rate against it).
    pub fn single_request_executed(&mut self, took: Duration) {
        let secs = took.as_secs_f64();
        // Wall-clock time: an instance thread preempted on a busy machine can take milliseconds for a
        // microsecond model. One such sample counts as at most STALL_LIMIT times the average, so that a stall
        // does not make light load look sustained.
        let average =
            self.history.single_request_secs.map_or(secs, |e| e + EXECUTION_WEIGHT * (secs.min(STALL_LIMIT * e) - e));
        self.history.single_request_secs = Some(average);
    }

    /// Tells the state how many instances take batches from this queue (1 unless told).
    pub fn set_instances(&mut self, instances: usize) {
        self.instances = instances.max(1);
    }

    /// Tells the state what the CPU is doing now ([`Pressure::Unknown`] unless told; see [`crate::cpu`]).
    pub fn set_cpu(&mut self, cpu: Pressure) {
        self.cpu = cpu;
    }

    /// Takes out every request for which `remove` is true (callers gone away).
    pub fn remove_where(&mut self, mut remove: impl FnMut(&T) -> bool) -> Vec<Entry<T>> {
        let mut removed = Vec::new();
        for queue in &mut self.queues {
            // Scanned on every batch: rebuild a queue only when something in it goes.
            if !queue.iter().any(|e| remove(&e.payload)) {
                continue;
            }
            let mut kept = VecDeque::with_capacity(queue.len());
            for e in queue.drain(..) {
                if remove(&e.payload) { removed.push(e) } else { kept.push_back(e) }
            }
            *queue = kept;
        }
        self.len -= removed.len();
        if !removed.is_empty() {
            // The wait was decided on what is gone: the next arrival looks again.
            self.hold = None;
        }
        removed
    }

    /// Takes out every request whose deadline is at or before `now`.
    pub fn remove_expired(&mut self, now: Instant) -> Vec<Entry<T>> {
        let mut expired = Vec::new();
        for queue in &mut self.queues {
            if queue.iter().any(|e| e.deadline.is_some_and(|d| d <= now)) {
                let mut kept = VecDeque::with_capacity(queue.len());
                for e in queue.drain(..) {
                    if e.deadline.is_some_and(|d| d <= now) { expired.push(e) } else { kept.push_back(e) }
                }
                *queue = kept;
            }
        }
        self.len -= expired.len();
        if !expired.is_empty() {
            self.hold = None;
        }
        expired
    }

    fn earliest_deadline(&self) -> Option<Instant> {
        self.queues.iter().flatten().filter_map(|e| e.deadline).min()
    }

    /// Decides the next batch at time `now`. `flush`: ignore the delay (draining on shutdown).
    pub fn next_batch(&mut self, now: Instant, flush: bool) -> Decision<T> {
        self.hold = None;
        self.history.advance(now, self.len > 0);
        let Some(head) = self.queues.iter().find_map(|q| q.front()) else { return Decision::Idle };
        if self.policy.max_batch_size == 0 {
            // No batching: one request per execution, always ready.
            let entry = self.queues.iter_mut().find_map(|q| q.pop_front());
            return match entry {
                Some(e) => {
                    self.len -= 1;
                    self.running += 1;
                    Decision::Run(vec![e], RunReason::Unbatched)
                }
                None => Decision::Idle,
            };
        }
        let max = self.policy.max_batch_size;
        let key = head.key.clone();
        let head_since = head.enqueued;
        let mut picked: Vec<(usize, usize)> = Vec::new();
        let mut sums: Vec<usize> = Vec::new();
        let mut total = 0usize;
        'outer: for (qi, queue) in self.queues.iter().enumerate() {
            for (pos, e) in queue.iter().enumerate() {
                if e.key != key || total + e.items > max {
                    continue;
                }
                total += e.items;
                picked.push((qi, pos));
                sums.push(total);
                if total == max {
                    break 'outer;
                }
            }
        }
        let largest_preferred = self.policy.preferred_batch_sizes.last().copied();
        let full = total == max || largest_preferred.is_some_and(|p| total >= p);
        // The longest prefix that ends exactly on a preferred size.
        let preferred_prefix = sums.iter().rposition(|s| self.policy.preferred_batch_sizes.contains(s));
        let due = head_since + self.policy.max_delay;
        let wait_until = match self.policy.window {
            Window::Fixed => due,
            Window::Adaptive => self.adaptive_until(now, head_since, due, total),
        };
        let take = if full {
            let reason = if total == max { RunReason::Full } else { RunReason::Preferred };
            Some((preferred_prefix.filter(|_| total != max).map_or(picked.len(), |i| i + 1), reason))
        } else if let Some(i) = preferred_prefix {
            Some((i + 1, RunReason::Preferred))
        } else if flush {
            Some((picked.len(), RunReason::Flush))
        } else if now >= due {
            Some((picked.len(), RunReason::Window))
        } else if now >= wait_until {
            Some((picked.len(), RunReason::Adaptive))
        } else {
            None
        };
        match take {
            Some((n, reason)) => Decision::Run(self.take(&picked[..n]), reason),
            None => {
                let until = self.earliest_deadline().map_or(wait_until, |d| d.min(wait_until));
                let ready_at = self.next_size_above(total);
                let deepest_level = picked.last().map_or(0, |&(qi, _)| qi);
                self.hold = Some(Hold { deepest_level, key, head_since, items: total, ready_at, until });
                Decision::WaitUntil(until)
            }
        }
    }

    /// The smallest preferred batch size above `items`, or `max_batch_size`: the size a partial batch of `items`
    /// items waits for.
    fn next_size_above(&self, items: usize) -> usize {
        let max = self.policy.max_batch_size;
        self.policy.preferred_batch_sizes.iter().copied().find(|&p| p > items).unwrap_or(max).min(max)
    }

    /// Whether every request recently seen in flight at once is queued or running, and that peak has held for a
    /// while before the head arrived: clients that send again only after their answer (a closed loop) have
    /// nothing else on its way, and the adaptive window runs what it has.
    fn everything_in_flight_is_here(&self, head_since: Instant) -> bool {
        let settled = self.history.peak_raised.is_none_or(|t| head_since.saturating_duration_since(t) >= PEAK_SETTLED);
        settled && (self.len + self.running) as f64 + 0.5 >= self.history.peak_in_flight
    }

    /// Until when the adaptive window lets a partial batch of `queued` items wait: under sustained load, for the
    /// next preferred size ([`Self::fuller_batch_until`]); otherwise only when arrivals come much faster than a
    /// batch executes (at least [`ARRIVALS_PER_EXECUTION`] expected during one execution), for at most one
    /// expected gap after the last arrival and half an execution after the oldest request; never past `due`.
    /// With neither (an idle model, or clients that wait for each answer), not at all: requests that arrive
    /// while a batch executes form the next batch anyway.
    fn adaptive_until(&self, now: Instant, head_since: Instant, due: Instant, queued: usize) -> Instant {
        if self.everything_in_flight_is_here(head_since) {
            return head_since;
        }
        let (Some(gap), Some(execution)) = (self.history.gap(), self.history.execution_secs) else {
            return head_since;
        };
        if let Some(until) = self.fuller_batch_until(now, due, gap, queued) {
            return until;
        }
        if gap * ARRIVALS_PER_EXECUTION > execution {
            return head_since;
        }
        let last = self.history.last_arrival.map_or(head_since, |t| t.max(head_since));
        (last + Duration::from_secs_f64(gap)).min(head_since + Duration::from_secs_f64(execution / 2.0)).min(due)
    }

    /// The sustained-load rule for a partial batch of `queued` items. While the CPU the instances share with the
    /// request handlers is saturated ([`crate::cpu`]), every execution saved is CPU they get back, so the batch
    /// waits for the next preferred batch size (or `max_batch_size`), as the config asks, whenever that size can
    /// gather at the recent arrival rate before `due`. Where the CPU's pressure is unknown (instances on GPUs), it
    /// waits only when the recent arrivals would keep the instances busy [`SUSTAINED_LOAD`] of the time or more if
    /// run one request at a time, and the size takes fewer requests than were recently in flight at once (a few
    /// closed-loop clients would only take turns waiting for each other; under a saturated CPU the rule that runs
    /// a batch once every request in flight is here covers them, and an open loop's count in flight follows the
    /// batching itself: run at once, it never reaches the size that holding would gather). Where the CPU has room,
    /// never: holding gives nothing back. The wait lasts until `due` while the requests answered since the peak in
    /// flight of the last few batches are enough to fill it (they come back from closed-loop clients in waves,
    /// with pauses of many gaps between them; a peak that no batch has come near for a few executions, as after
    /// the load drops, no longer counts), and otherwise ends [`GAPS_WITHOUT_ARRIVALS`] expected gaps (`gap`, while
    /// requests wait) after the last arrival. `None`: run now.
    fn fuller_batch_until(&self, now: Instant, due: Instant, gap: f64, queued: usize) -> Option<Instant> {
        let target = self.next_size_above(queued);
        let per_request = self.history.items_per_request.max(1.0);
        let mean_gap = self.history.mean_gap()?;
        match self.cpu {
            Pressure::Room => return None,
            Pressure::Saturated => {}
            Pressure::Unknown => {
                let single = self.history.single_request_secs?;
                if single < SUSTAINED_LOAD * mean_gap * self.instances as f64
                    || target as f64 / per_request + 0.5 > self.history.peak_in_flight
                {
                    return None;
                }
            }
        }
        let missing = target.saturating_sub(queued) as f64 / per_request;
        let gather = Duration::try_from_secs_f64(missing * mean_gap).ok()?;
        if now.checked_add(gather).is_none_or(|ready| ready > due) {
            return None;
        }
        let answered = self.history.recent_peak - (self.len + self.running) as f64;
        if answered + 0.5 >= missing {
            return Some(due);
        }
        let last = self.history.last_arrival?;
        Some(last.checked_add(Duration::try_from_secs_f64(GAPS_WITHOUT_ARRIVALS * gap).ok()?)?.min(due))
    }

    fn take(&mut self, picked: &[(usize, usize)]) -> Vec<Entry<T>> {
        let in_flight = (self.len + self.running) as f64;
        self.history.recent_peak = (self.history.recent_peak * RECENT_PEAK_KEEP).max(in_flight);
        let mut by_queue: Vec<Vec<usize>> = vec![Vec::new(); self.queues.len()];
        for &(qi, pos) in picked {
            by_queue[qi].push(pos);
        }
        // The common case: the batch is the front of one queue, taken in one drain.
        if let [(qi, 0), ..] = picked
            && by_queue[*qi].len() == picked.len()
            && by_queue[*qi].iter().enumerate().all(|(i, &p)| i == p)
        {
            self.len -= picked.len();
            self.running += picked.len();
            return self.queues[*qi].drain(..picked.len()).collect();
        }
        let mut taken: Vec<(usize, usize, Entry<T>)> = Vec::with_capacity(picked.len());
        for (qi, mut positions) in by_queue.into_iter().enumerate() {
            positions.sort_unstable_by(|a, b| b.cmp(a));
            for pos in positions {
                if let Some(e) = self.queues[qi].remove(pos) {
                    taken.push((qi, pos, e));
                }
            }
        }
        taken.sort_by_key(|(qi, pos, _)| (*qi, *pos));
        self.len -= taken.len();
        self.running += taken.len();
        taken.into_iter().map(|(_, _, e)| e).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max: usize, delay_us: u64) -> BatchPolicy {
        BatchPolicy {
            max_batch_size: max,
            preferred_batch_sizes: vec![],
            max_delay: Duration::from_micros(delay_us),
            max_queue_size: 100,
            priority_levels: 1,
            window: Window::Fixed,
        }
    }

    fn entry(id: u32, items: usize, at: Instant) -> Entry<u32> {
        Entry { items, key: vec![16], enqueued: at, deadline: None, priority: 0, payload: id }
    }

    fn ids(d: Decision<u32>) -> Vec<u32> {
        match d {
            Decision::Run(b, _) => b.into_iter().map(|e| e.payload).collect(),
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[test]
    fn waits_for_the_delay_then_runs_what_is_queued() {
        let t0 = Instant::now();
        let mut s = BatchState::new(policy(8, 100));
        s.push(entry(1, 1, t0)).unwrap();
        s.push(entry(2, 2, t0)).unwrap();
        assert!(matches!(s.next_batch(t0, false), Decision::WaitUntil(t) if t == t0 + Duration::from_micros(100)));
        assert_eq!(ids(s.next_batch(t0 + Duration::from_micros(100), false)), vec![1, 2]);
        assert!(s.is_empty());
        assert!(matches!(s.next_batch(t0, false), Decision::Idle));
    }

    #[test]
    fn runs_at_once_when_full_and_keeps_the_rest() {
        let t0 = Instant::now();
        let mut s = BatchState::new(policy(4, 1_000_000));
        for (id, items) in [(1, 2), (2, 3), (3, 2), (4, 1)] {
            s.push(entry(id, items, t0)).unwrap();
        }
        // 2 + 3 > 4, so 3 skips ahead of 2; then 4 fills the batch.
        assert_eq!(ids(s.next_batch(t0, false)), vec![1, 3]);
        assert_eq!(s.len(), 2);
        // 3 + 1 fill the batch again.
        assert_eq!(ids(s.next_batch(t0, false)), vec![2, 4]);
        s.push(entry(5, 1, t0)).unwrap();
        assert!(matches!(s.next_batch(t0, false), Decision::WaitUntil(_)));
        // Flushing (draining on shutdown) ignores the window.
        assert_eq!(ids(s.next_batch(t0, true)), vec![5]);
    }

    #[test]
    fn zero_delay_runs_immediately_and_no_batching_runs_one_at_a_time() {
        let t0 = Instant::now();
        let mut s = BatchState::new(policy(8, 0));
        s.push(entry(1, 1, t0)).unwrap();
        s.push(entry(2, 1, t0)).unwrap();
        assert_eq!(ids(s.next_batch(t0, false)), vec![1, 2]);
        let mut single = BatchState::new(policy(0, 1000));
        single.push(entry(1, 1, t0)).unwrap();
        single.push(entry(2, 1, t0)).unwrap();
        assert_eq!(ids(single.next_batch(t0, false)), vec![1]);
        assert_eq!(ids(single.next_batch(t0, false)), vec![2]);
    }

    #[test]
    fn ragged_requests_never_share_a_batch() {
        let t0 = Instant::now();
        let mut s = BatchState::new(policy(8, 0));
        s.push(entry(1, 1, t0)).unwrap();
        s.push(Entry { key: vec![32], ..entry(2, 1, t0) }).unwrap();
        s.push(entry(3, 1, t0)).unwrap();
        assert_eq!(ids(s.next_batch(t0, false)), vec![1, 3]);
        assert_eq!(ids(s.next_batch(t0, false)), vec![2]);
    }

    #[test]
    fn preferred_sizes_run_early() {
        let t0 = Instant::now();
        let mut s = BatchState::new(BatchPolicy { preferred_batch_sizes: vec![4, 2], ..policy(8, 1_000_000) });
        s.push(entry(1, 1, t0)).unwrap();
        assert!(matches!(s.next_batch(t0, false), Decision::WaitUntil(_)));
        s.push(entry(2, 1, t0)).unwrap();
        s.push(entry(3, 1, t0)).unwrap();
        // Sums 1, 2, 3: the longest prefix on a preferred size is [1, 2].
        assert_eq!(ids(s.next_batch(t0, false)), vec![1, 2]);
        for id in 4..=7 {
            s.push(entry(id, 1, t0)).unwrap();
        }
        // 3,4,5,6,7 sum to 5 >= 4 (the largest preferred): full, cut to the prefix of 4.
        assert_eq!(ids(s.next_batch(t0, false)), vec![3, 4, 5, 6]);
    }

    #[test]
    fn priority_levels_run_first() {
        let t0 = Instant::now();
        let mut s = BatchState::new(BatchPolicy { priority_levels: 2, ..policy(2, 0) });
        s.push(Entry { priority: 1, ..entry(1, 1, t0) }).unwrap();
        s.push(Entry { priority: 1, ..entry(2, 1, t0) }).unwrap();
        s.push(Entry { priority: 0, ..entry(3, 1, t0) }).unwrap();
        s.push(Entry { priority: 9, ..entry(4, 1, t0) }).unwrap(); // clamped to the lowest level
        assert_eq!(ids(s.next_batch(t0, false)), vec![3, 1]);
        assert_eq!(ids(s.next_batch(t0, false)), vec![2, 4]);
    }

    #[test]
    fn full_queue_refuses_and_deadlines_expire() {
        let t0 = Instant::now();
        let mut s = BatchState::new(BatchPolicy { max_queue_size: 2, ..policy(8, 1_000_000) });
        s.push(Entry { deadline: Some(t0 + Duration::from_millis(5)), ..entry(1, 1, t0) }).unwrap();
        s.push(entry(2, 1, t0)).unwrap();
        assert_eq!(s.push(entry(3, 1, t0)).unwrap_err().payload, 3);
        assert!(matches!(s.next_batch(t0, false), Decision::WaitUntil(t) if t == t0 + Duration::from_millis(5)));
        let expired = s.remove_expired(t0 + Duration::from_millis(5));
        assert_eq!(expired.iter().map(|e| e.payload).collect::<Vec<_>>(), vec![1]);
        assert_eq!(s.remove_where(|id| *id == 2).len(), 1);
        assert!(s.is_empty());
    }

    proptest::proptest! {
        /// Every request comes out exactly once, batches never exceed the limit nor mix keys.
        #[test]
        fn conserves_requests(items in proptest::collection::vec((1usize..5, 0usize..2, 0usize..3), 1..40), max in 4usize..9) {
            let t0 = Instant::now();
            let mut s = BatchState::new(BatchPolicy { priority_levels: 3, ..policy(max, 10) });
            for (id, (n, key, prio)) in items.iter().enumerate() {
                s.push(Entry { items: *n, key: vec![*key], enqueued: t0, deadline: None, priority: *prio, payload: id }).unwrap();
            }
            let mut seen = Vec::new();
            let later = t0 + Duration::from_secs(1);
            while let Decision::Run(batch, _) = s.next_batch(later, false) {
                proptest::prop_assert!(batch.iter().map(|e| e.items).sum::<usize>() <= max);
                proptest::prop_assert!(batch.iter().all(|e| e.key == batch[0].key));
                seen.extend(batch.into_iter().map(|e| e.payload));
            }
            seen.sort_unstable();
            proptest::prop_assert_eq!(seen, (0..items.len()).collect::<Vec<_>>());
        }
    }

    fn adaptive(max: usize, delay_us: u64) -> BatchPolicy {
        BatchPolicy { window: Window::Adaptive, ..policy(max, delay_us) }
    }

    fn reason(d: &Decision<u32>) -> Option<RunReason> {
        match d {
            Decision::Run(_, r) => Some(*r),
            _ => None,
        }
    }

    #[test]
    fn an_idle_model_runs_a_lone_request_at_once() {
        let t0 = Instant::now();
        let mut s = BatchState::new(adaptive(8, 2_000));
        s.push(entry(1, 1, t0)).unwrap();
        let d = s.next_batch(t0, false);
        assert_eq!(reason(&d), Some(RunReason::Adaptive));
        assert_eq!(ids(d), vec![1]);
    }

    #[test]
    fn closed_loop_clients_at_concurrency_one_never_wait() {
        // Each request arrives only after the previous one ran: none ever finds the queue occupied.
        let t0 = Instant::now();
        let mut s = BatchState::new(adaptive(8, 2_000));
        for i in 0..1000u32 {
            let at = t0 + Duration::from_micros(u64::from(i) * 150);
            s.push(entry(i, 1, at)).unwrap();
            assert_eq!(ids(s.next_batch(at, false)), vec![i]);
            s.finished(1, Some(Duration::from_micros(20)));
        }
    }

    #[test]
    fn closed_loop_clients_never_wait_for_a_request_that_cannot_come() {
        // Four clients, each sending again 5 us apart once the batch holding its request has run (70 us): the
        // arrivals come much faster than an execution, so the gap rule alone would wait for a fifth request.
        let t0 = Instant::now();
        let mut s = BatchState::new(adaptive(32, 2_000));
        let mut t = t0;
        let mut next = 0u32;
        let mut waited = Vec::new();
        for round in 0..400 {
            for _ in 0..4 {
                t += Duration::from_micros(5);
                s.push(entry(next, 1, t)).unwrap();
                next += 1;
            }
            match s.next_batch(t, false) {
                Decision::Run(b, _) => {
                    assert_eq!(b.len(), 4);
                    t += Duration::from_micros(70);
                    s.finished(4, Some(Duration::from_micros(70)));
                }
                Decision::WaitUntil(mut until) => {
                    waited.push(round);
                    let b = loop {
                        match s.next_batch(until, false) {
                            Decision::Run(b, _) => break b,
                            Decision::WaitUntil(later) => until = later,
                            Decision::Idle => panic!("requests are queued"),
                        }
                    };
                    t = until + Duration::from_micros(70);
                    s.finished(b.len(), Some(Duration::from_micros(70)));
                }
                Decision::Idle => panic!("requests are queued"),
            }
        }
        // Once the peak of four has held for PEAK_SETTLED, no batch waits.
        let settled_round = waited.iter().copied().max().unwrap_or(0);
        assert!(settled_round < 200, "still waiting at round {settled_round}: {waited:?}");
    }

    #[test]
    fn sustained_arrivals_faster_than_an_execution_grow_full_batches() {
        // Arrivals every 10 us, executions of 200 us: while one batch runs, the next fills.
        let t0 = Instant::now();
        let mut s = BatchState::new(adaptive(8, 2_000));
        let mut t = t0;
        let mut sizes = Vec::new();
        let mut next_id = 0u32;
        for _ in 0..200 {
            for _ in 0..3 {
                t += Duration::from_micros(10);
                s.push(entry(next_id, 1, t)).unwrap();
                next_id += 1;
            }
            match s.next_batch(t, false) {
                Decision::Run(b, _) => {
                    sizes.push(b.len());
                    s.finished(b.len(), Some(Duration::from_micros(200)));
                }
                Decision::WaitUntil(until) => assert!(until <= t + Duration::from_micros(2_000)),
                Decision::Idle => {}
            }
        }
        let tail = &sizes[sizes.len() - 20..];
        assert!(tail.iter().all(|&n| n == 8), "{sizes:?}");
    }

    #[test]
    fn the_adaptive_wait_stops_when_arrivals_stop() {
        let t0 = Instant::now();
        let mut s = BatchState::new(adaptive(64, 100_000));
        // A history of arrivals 10 us apart while requests waited, and executions of 1 ms.
        for i in 0..50u32 {
            s.push(entry(i, 1, t0 + Duration::from_micros(u64::from(i) * 10))).unwrap();
        }
        s.finished(0, Some(Duration::from_millis(1)));
        let last = t0 + Duration::from_micros(490);
        let Decision::WaitUntil(until) = s.next_batch(last, false) else { panic!("expected a wait") };
        assert!(until <= last + Duration::from_micros(25) && until > last, "{:?}", until - last);
        // Each look lengthens the expected gap a little (no arrivals): the wait still ends within a few gaps.
        let (until, d) = wait_out(&mut s, until);
        assert!(until <= last + Duration::from_micros(50), "{:?}", until - last);
        assert_eq!(reason(&d), Some(RunReason::Adaptive));
        assert_eq!(ids(d).len(), 50);
    }

    /// Looks again at each time the state asks for, from `at`, with nothing arriving, until it decides
    /// otherwise; each wait must end later than the look before. Returns the time and the decision.
    fn wait_out(s: &mut BatchState<u32>, mut at: Instant) -> (Instant, Decision<u32>) {
        loop {
            match s.next_batch(at, false) {
                Decision::WaitUntil(until) => {
                    assert!(until > at);
                    at = until;
                }
                d => return (at, d),
            }
        }
    }

    /// One instance serving `clients` closed-loop clients, each sending its next request `think` ± `spread` µs
    /// (varying) after its answer, on a model whose execution of `b` items takes `56 + 19·b` µs (the
    /// compute-bound MLP's cost on this project's CI machine, per request handling included), under the CPU
    /// pressure `cpu`. Returns the items of every batch, in order, and the requests answered per second.
    fn closed_loop(
        policy: BatchPolicy,
        clients: usize,
        think: u64,
        spread: u64,
        batches: usize,
        cpu: Pressure,
    ) -> (Vec<usize>, f64) {
        let t0 = Instant::now();
        let mut s = BatchState::new(policy);
        s.set_cpu(cpu);
        let mut seed = 0x2545_f491_u64;
        let mut jitter = move || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % (spread * 2 + 1)
        };
        let mut arrivals: Vec<Instant> = (0..clients as u64).map(|i| t0 + Duration::from_micros(i * 7)).collect();
        let mut now = t0;
        let mut sizes = Vec::new();
        let mut next_id = 0u32;
        // Queues every request due by `now`, in arrival order.
        let mut arrive = |s: &mut BatchState<u32>, arrivals: &mut Vec<Instant>, now: Instant| {
            arrivals.sort();
            while arrivals.first().is_some_and(|&a| a <= now) {
                s.push(entry(next_id, 1, arrivals.remove(0))).unwrap();
                next_id += 1;
            }
        };
        while sizes.len() < batches {
            arrive(&mut s, &mut arrivals, now);
            let next_arrival = arrivals.first().copied();
            match s.next_batch(now, false) {
                Decision::Run(b, _) => {
                    let took = Duration::from_micros(56 + 19 * b.len() as u64);
                    now += took;
                    // What arrives while the batch runs finds it running.
                    arrive(&mut s, &mut arrivals, now);
                    s.finished(b.len(), Some(took));
                    if b.len() == 1 {
                        s.single_request_executed(took);
                    }
                    for _ in 0..b.len() {
                        arrivals.push(now + Duration::from_micros(think - spread + jitter()));
                    }
                    sizes.push(b.len());
                }
                Decision::WaitUntil(until) => now = next_arrival.map_or(until, |a| a.min(until)).max(now),
                Decision::Idle => now = next_arrival.expect("every client has a request queued or coming"),
            }
        }
        let rate = sizes.iter().sum::<usize>() as f64 / (now - t0).as_secs_f64();
        (sizes, rate)
    }

    fn mean(sizes: &[usize]) -> f64 {
        sizes.iter().sum::<usize>() as f64 / sizes.len() as f64
    }

    #[test]
    fn sustained_load_converges_to_the_preferred_batch_size() {
        // 32 clients, 1.5 ms between an answer and the next request: about 16 000 arrivals a second against
        // 75 us for one item, so one item at a time would keep the instance busy all the time. Running
        // whatever is queued whenever the instance is free gives batches of 3 or 4; the config asks for 8.
        let policy = BatchPolicy { preferred_batch_sizes: vec![8, 16, 32], ..adaptive(32, 2_000) };
        let (sizes, _) = closed_loop(policy.clone(), 32, 1_500, 300, 4_000, Pressure::Saturated);
        let tail = &sizes[2_000..];
        assert!(mean(tail) >= 7.5, "mean batch {:.2}: {:?}", mean(tail), &tail[..50]);
        // The fixed window forms the same batches.
        let (fixed, _) =
            closed_loop(BatchPolicy { window: Window::Fixed, ..policy }, 32, 1_500, 300, 4_000, Pressure::Saturated);
        assert!((mean(tail) - mean(&fixed[2_000..])).abs() < 1.0, "{} against {}", mean(tail), mean(&fixed[2_000..]));
    }

    #[test]
    fn closed_loop_waves_still_converge_to_the_preferred_batch_size() {
        // Clients whose answers go out together come back together: 32 clients 1 ms ± 20 us after their
        // answer arrive in waves, a batch's worth at a time, with pauses of several arrival gaps between
        // waves. A partial batch must wait for the next wave (its requests are on their way back), not run
        // at the first pause as if arrivals had stopped.
        let policy = BatchPolicy { preferred_batch_sizes: vec![8, 16, 32], ..adaptive(32, 2_000) };
        let (sizes, _) = closed_loop(policy.clone(), 32, 1_000, 20, 4_000, Pressure::Saturated);
        let (fixed, _) =
            closed_loop(BatchPolicy { window: Window::Fixed, ..policy }, 32, 1_000, 20, 4_000, Pressure::Saturated);
        let small = |sizes: &[usize]| sizes.iter().filter(|&&b| b < 8).count();
        let (tail, fixed_tail) = (&sizes[2_000..], &fixed[2_000..]);
        assert!(
            mean(tail) >= mean(fixed_tail) - 0.5 && small(tail) <= small(fixed_tail) + tail.len() / 50,
            "mean batch {:.2} against the fixed window's {:.2}; batches under 8: {} against {}: {:?}",
            mean(tail),
            mean(fixed_tail),
            small(tail),
            small(fixed_tail),
            &tail[..60]
        );
    }

    #[test]
    fn light_load_still_runs_at_once() {
        // 32 clients, 40 ms apart: 800 arrivals a second, 6 % of the instance's time one at a time.
        let policy = BatchPolicy { preferred_batch_sizes: vec![8, 16, 32], ..adaptive(32, 2_000) };
        let (sizes, _) = closed_loop(policy, 32, 40_000, 8_000, 2_000, Pressure::Saturated);
        assert!(mean(&sizes[1_000..]) < 1.2, "mean batch {:.2}", mean(&sizes[1_000..]));
    }

    /// `instances` instances serving Poisson arrivals at `rate` a second (`requests` of them, one item each),
    /// whose `n`-th execution, of `b` items, takes `cost(b, n)` µs, under the CPU pressure `cpu`. Returns each
    /// request's latency (arrival to answer) in µs, sorted.
    fn open_loop(
        policy: BatchPolicy,
        instances: usize,
        rate: f64,
        requests: usize,
        cost: impl Fn(usize, usize) -> u64,
        cpu: Pressure,
    ) -> Vec<u64> {
        let t0 = Instant::now();
        // Every arrival is queued: an overload shows as latency, not as a refused push.
        let mut s = BatchState::new(BatchPolicy { max_queue_size: usize::MAX, ..policy });
        s.set_instances(instances);
        s.set_cpu(cpu);
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut at = t0;
        let arrivals: Vec<Instant> = (0..requests)
            .map(|_| {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                // Uniform in (0, 1], so the exponential gap is finite.
                let uniform = ((seed >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
                at += Duration::from_secs_f64(-uniform.ln() / rate);
                at
            })
            .collect();
        let (mut next, mut executions, mut now) = (0usize, 0usize, t0);
        // Per instance: when its batch is done, how long it took, and the batch.
        type Execution = (Instant, Duration, Vec<Entry<u32>>);
        let mut running: Vec<Option<Execution>> = (0..instances).map(|_| None).collect();
        let mut latencies = Vec::with_capacity(requests);
        while latencies.len() < requests {
            // Executions that end now finish before arrivals at the same instant are queued, as the batcher
            // catches up before it queues a request.
            for slot in &mut running {
                if let Some((done, took, batch)) = slot.take_if(|(done, ..)| *done <= now) {
                    latencies.extend(batch.iter().map(|e| (done - e.enqueued).as_micros() as u64));
                    s.finished(batch.len(), Some(took));
                    if batch.len() == 1 {
                        s.single_request_executed(took);
                    }
                }
            }
            while next < requests && arrivals[next] <= now {
                s.push(entry(next as u32, 1, arrivals[next])).unwrap();
                next += 1;
            }
            let mut wake = arrivals.get(next).copied();
            for slot in running.iter_mut().filter(|slot| slot.is_none()) {
                match s.next_batch(now, false) {
                    Decision::Run(b, _) => {
                        let took = Duration::from_micros(cost(b.len(), executions));
                        executions += 1;
                        *slot = Some((now + took, took, b));
                    }
                    Decision::WaitUntil(until) => {
                        wake = Some(wake.map_or(until, |w| w.min(until)));
                        break;
                    }
                    Decision::Idle => break,
                }
            }
            let done = running.iter().flatten().map(|(done, ..)| *done).min();
            let Some(then) = [wake, done].into_iter().flatten().min() else { break };
            now = then.max(now);
        }
        latencies.sort_unstable();
        latencies
    }

    /// An execution's cost in µs from its items and its number (see [`open_loop`]).
    type Cost = fn(usize, usize) -> u64;

    /// The compute-bound MLP's cost.
    fn large(items: usize, _: usize) -> u64 {
        56 + 19 * items as u64
    }

    /// A 3 µs model's cost.
    fn small(items: usize, _: usize) -> u64 {
        13 + 3 * items as u64
    }

    /// A 3 µs model's cost with one execution in 500 stalled by 1 ms (a preempted instance thread).
    fn stalled(items: usize, n: usize) -> u64 {
        small(items, n) + if n % 500 == 499 { 1_000 } else { 0 }
    }

    /// The cost models the open-loop tests run, by name.
    const OPEN_LOOP_MODELS: [(&str, Cost); 3] = [("compute-bound", large), ("3 us", small), ("3 us, stalls", stalled)];

    /// Nearest-rank percentile of sorted values.
    fn percentile(sorted: &[u64], share: f64) -> u64 {
        sorted[((sorted.len() as f64 * share).ceil() as usize).clamp(1, sorted.len()) - 1]
    }

    #[test]
    fn open_loop_p99_is_no_worse_than_the_fixed_window_or_batching_off() {
        // Poisson arrivals at 30 % and 80 % of the rate batching off saturates at (stalls left out), on one
        // instance and on two, on the compute-bound MLP's cost model and on a 3 us model's. Arrivals do not
        // wait for answers here, so holding a batch for more only adds latency: waiting for the preferred size
        // from half the instance's time on (as the sustained rule once did) gave the compute-bound model on one
        // instance a p99 of 1.3 ms at 80 %, as the fixed window's, against 0.8 ms with batching off and 0.2 ms
        // running whatever is queued whenever the instance is free ("at once"). With one execution in 500
        // stalled by 1 ms (a preempted instance thread), the stalls make the p99 and the fixed window can come
        // out ahead, so that model is checked against "at once" only: the adaptive window must still not wait
        // where running at once would not.
        // The instance is the only resource here, as an instance on a GPU is: the CPU's pressure is unknown.
        for ((model, cost), instances) in OPEN_LOOP_MODELS.into_iter().flat_map(|m| [(m, 1), (m, 2)]) {
            let against_both = model != "3 us, stalls";
            let saturated = 1e6 / cost(1, 0) as f64 * instances as f64;
            for share in [0.3, 0.8] {
                let rate = saturated * share;
                let policy = BatchPolicy { preferred_batch_sizes: vec![8, 16, 32], ..adaptive(32, 2_000) };
                let p99 = |policy: BatchPolicy| {
                    percentile(&open_loop(policy, instances, rate, 20_000, cost, Pressure::Unknown), 0.99)
                };
                let adaptive = p99(policy.clone());
                let fixed = p99(BatchPolicy { window: Window::Fixed, ..policy.clone() });
                let off = p99(BatchPolicy { max_batch_size: 0, ..policy.clone() });
                let at_once = p99(BatchPolicy { window: Window::Fixed, max_delay: Duration::ZERO, ..policy });
                assert!(
                    (adaptive <= fixed.min(off) || !against_both) && adaptive * 10 <= at_once * 11,
                    "{model} x{instances} at {share}: p99 {adaptive} us, fixed {fixed}, off {off}, at once {at_once}"
                );
            }
        }
    }

    #[test]
    fn where_the_cpu_has_room_open_loop_arrivals_never_wait_for_the_preferred_size() {
        // The sustained rule holds partial batches only to give CPU back. Where the CPU has room, Poisson arrivals
        // at any load up to 95 % of the rate batching off saturates at are run as running at once runs them. With
        // the CPU saturated the rule holds them as the fixed window does, whatever the instance's own load (p99 3
        // to 4 times running at once at 90 % in this model, where the instance is the only resource; at 30 %, a
        // median of most of the window against one execution).
        for ((model, cost), instances) in OPEN_LOOP_MODELS.into_iter().flat_map(|m| [(m, 1), (m, 2)]) {
            let saturated = 1e6 / cost(1, 0) as f64 * instances as f64;
            for share in [0.3, 0.8, 0.85, 0.9, 0.95] {
                let rate = saturated * share;
                let policy = BatchPolicy { preferred_batch_sizes: vec![8, 16, 32], ..adaptive(32, 2_000) };
                let p99 = |policy: BatchPolicy, cpu: Pressure| {
                    percentile(&open_loop(policy, instances, rate, 20_000, cost, cpu), 0.99)
                };
                let adaptive = p99(policy.clone(), Pressure::Room);
                let at_once =
                    p99(BatchPolicy { window: Window::Fixed, max_delay: Duration::ZERO, ..policy }, Pressure::Room);
                assert!(
                    adaptive * 10 <= at_once * 11,
                    "{model} x{instances} at {share}: p99 {adaptive} us against {at_once} us running at once"
                );
            }
        }
        let policy = BatchPolicy { preferred_batch_sizes: vec![8, 16, 32], ..adaptive(32, 2_000) };
        let rate = 1e6 / 75.0 * 0.9;
        let held = percentile(&open_loop(policy.clone(), 1, rate, 20_000, large, Pressure::Saturated), 0.99);
        let not_held = percentile(&open_loop(policy, 1, rate, 20_000, large, Pressure::Room), 0.99);
        assert!(held > 2 * not_held, "saturated: p99 {held} us; with room: {not_held} us");
        let policy = BatchPolicy { preferred_batch_sizes: vec![8, 16, 32], ..adaptive(32, 2_000) };
        let rate = 1e6 / 75.0 * 0.3;
        let held = percentile(&open_loop(policy.clone(), 1, rate, 20_000, large, Pressure::Saturated), 0.5);
        let not_held = percentile(&open_loop(policy, 1, rate, 20_000, large, Pressure::Room), 0.5);
        assert!(held > 5 * not_held, "at 30 %, saturated: p50 {held} us; with room: {not_held} us");
    }

    #[test]
    fn where_the_cpu_has_room_closed_loop_clients_are_not_held_either() {
        // 32 clients 1.5 ms ± 0.3 ms after their answers, as in the convergence test: with the CPU saturated the
        // batches are held to 8; with room, they are what running at once gives, at its rate (here, where the
        // instance is the only resource, holding is slower: about 16 800 against 19 400 requests a second).
        let policy = BatchPolicy { preferred_batch_sizes: vec![8, 16, 32], ..adaptive(32, 2_000) };
        let at_once = BatchPolicy { window: Window::Fixed, max_delay: Duration::ZERO, ..policy.clone() };
        let (sizes, rate) = closed_loop(policy.clone(), 32, 1_500, 300, 4_000, Pressure::Room);
        let (once_sizes, once_rate) = closed_loop(at_once, 32, 1_500, 300, 4_000, Pressure::Room);
        let (held_sizes, held_rate) = closed_loop(policy, 32, 1_500, 300, 4_000, Pressure::Saturated);
        let (tail, once_tail) = (&sizes[2_000..], &once_sizes[2_000..]);
        assert!((mean(tail) - mean(once_tail)).abs() < 0.25, "mean batch {} against {}", mean(tail), mean(once_tail));
        assert!(rate >= 0.98 * once_rate, "{rate:.0}/s against {once_rate:.0}/s running at once");
        assert!(mean(&held_sizes[2_000..]) >= 7.5 && held_rate < rate, "held: {held_rate:.0}/s, {held_sizes:?}");
    }

    /// Builds a sustained-load history: 200 requests of `items` items arriving 50 us apart that found requests
    /// waiting, run in batches of `batch` requests (so `batch` were in flight at once), one-request
    /// executions of `single_us` and batch executions of 150 us, then empties the queue. Returns the time of
    /// the last arrival.
    fn sustained_history(s: &mut BatchState<u32>, t0: Instant, batch: usize, single_us: u64, items: usize) -> Instant {
        s.single_request_executed(Duration::from_micros(single_us));
        let mut last = t0;
        for i in 0..200u32 {
            last = t0 + Duration::from_micros(u64::from(i) * 50);
            s.push(entry(i, items, last)).unwrap();
            if s.len() == batch {
                let Decision::Run(b, _) = s.next_batch(last, true) else { panic!("flush runs") };
                s.finished(b.len(), Some(Duration::from_micros(150)));
            }
        }
        while let Decision::Run(b, _) = s.next_batch(last, true) {
            s.finished(b.len(), Some(Duration::from_micros(150)));
        }
        last
    }

    /// After [`sustained_history`], whether one more request (of `items` items) 50 us later waits.
    fn waits_after(policy: BatchPolicy, instances: usize, batch: usize, single_us: u64, items: usize) -> bool {
        let mut s = BatchState::new(policy);
        s.set_instances(instances);
        let t = sustained_history(&mut s, Instant::now(), batch, single_us, items) + Duration::from_micros(50);
        s.push(entry(5000, items, t)).unwrap();
        match s.next_batch(t, false) {
            Decision::WaitUntil(until) => {
                assert!(until > t);
                true
            }
            d => {
                assert_eq!(reason(&d), Some(RunReason::Adaptive));
                false
            }
        }
    }

    fn preferred(sizes: &[usize], max: usize, delay_us: u64) -> BatchPolicy {
        BatchPolicy { preferred_batch_sizes: sizes.to_vec(), ..adaptive(max, delay_us) }
    }

    #[test]
    fn a_sustained_wait_ends_at_the_preferred_size_or_when_arrivals_stop() {
        let t0 = Instant::now();
        let mut s = BatchState::new(preferred(&[8], 32, 2_000));
        let mut t = sustained_history(&mut s, t0, 12, 60, 1);
        // Arrivals go on: the batch waits, never past the window, and runs the moment it holds 8.
        let head = t + Duration::from_micros(50);
        for i in 0..8u32 {
            t += Duration::from_micros(50);
            s.push(entry(1000 + i, 1, t)).unwrap();
            let d = s.next_batch(t, false);
            if i < 7 {
                let due = head + Duration::from_micros(2_000);
                assert!(matches!(d, Decision::WaitUntil(u) if u > t && u <= due), "{d:?}");
            } else {
                assert_eq!(reason(&d), Some(RunReason::Preferred));
                assert_eq!(ids(d).len(), 8);
            }
        }
        // Arrivals stop while those 8 run: with 9 of the 12 recently in flight here or running, the 7 more a
        // batch of 8 needs cannot come back. The wait ends within a few gaps of the last arrival.
        t += Duration::from_micros(50);
        s.push(entry(2000, 1, t)).unwrap();
        let (at, d) = wait_out(&mut s, t);
        assert!(at <= t + Duration::from_micros(250), "waited {:?}", at - t);
        assert_eq!(reason(&d), Some(RunReason::Adaptive));
    }

    #[test]
    fn a_sustained_wait_holds_for_answered_requests_up_to_the_window() {
        // The same sustained load, with 12 requests in flight at its peak; the last batch has finished, so
        // 11 of them were answered and can come back (closed-loop clients send again on their answer, all
        // together when their answers went out together). A lone request waits for them, as the fixed window
        // would, but never past the window.
        let t0 = Instant::now();
        let mut s = BatchState::new(preferred(&[8], 32, 2_000));
        let t = sustained_history(&mut s, t0, 12, 60, 1) + Duration::from_micros(50);
        s.push(entry(2000, 1, t)).unwrap();
        let (at, d) = wait_out(&mut s, t);
        assert_eq!(at, t + Duration::from_micros(2_000));
        assert_eq!(reason(&d), Some(RunReason::Window));
        // They come back before the window ends: the batch runs when it holds 8.
        let t = at + Duration::from_micros(50);
        s.push(entry(3000, 1, t)).unwrap();
        assert!(matches!(s.next_batch(t, false), Decision::WaitUntil(_)));
        for i in 1..8u32 {
            s.push(entry(3000 + i, 1, t + Duration::from_micros(u64::from(i)))).unwrap();
        }
        let d = s.next_batch(t + Duration::from_micros(8), false);
        assert_eq!(reason(&d), Some(RunReason::Preferred));
    }

    #[test]
    fn after_the_load_drops_a_lone_request_soon_stops_holding_for_the_window() {
        // Sustained load with 12 in flight, then one client left, sending 100 us after each answer. Its first
        // requests may hold for the 11 answered ones; within a few executions the recent peak has decayed and
        // it no longer waits for the window.
        let t0 = Instant::now();
        let mut s = BatchState::new(preferred(&[8], 32, 2_000));
        let mut t = sustained_history(&mut s, t0, 12, 60, 1) + Duration::from_micros(50);
        let mut waits = Vec::new();
        for i in 0..8u32 {
            s.push(entry(2000 + i, 1, t)).unwrap();
            let (at, d) = wait_out(&mut s, t);
            assert_eq!(ids(d), vec![2000 + i]);
            waits.push(at - t);
            s.finished(1, Some(Duration::from_micros(60)));
            t = at + Duration::from_micros(160);
        }
        assert!(waits[..3].iter().filter(|w| w.as_micros() >= 2_000).count() <= 2, "{waits:?}");
        assert!(waits[3..].iter().all(|w| w.as_micros() < 500), "{waits:?}");
    }

    #[test]
    fn a_stalled_execution_barely_moves_the_one_request_time() {
        let mut s: BatchState<u32> = BatchState::new(preferred(&[8], 32, 2_000));
        for _ in 0..20 {
            s.single_request_executed(Duration::from_micros(20));
        }
        s.single_request_executed(Duration::from_millis(5));
        let single = s.history.single_request_secs.unwrap();
        assert!((single - 20.5e-6).abs() < 1e-9, "{single}");
        // Faster executions pull it down without a limit.
        s.single_request_executed(Duration::from_micros(2));
        assert!(s.history.single_request_secs.unwrap() < single - 1.8e-6);
    }

    #[test]
    fn the_sustained_rule_weighs_arrivals_against_one_request_per_instance() {
        // Arrivals 50 us apart. One request at a time taking 46 us keeps one instance 92 % busy: wait.
        assert!(waits_after(preferred(&[8], 32, 2_000), 1, 12, 46, 1));
        // 40 us: 80 %, one at a time keeps up.
        assert!(!waits_after(preferred(&[8], 32, 2_000), 1, 12, 40, 1));
        // 92 us over two instances is 92 % each; over three, 61 %.
        assert!(waits_after(preferred(&[8], 32, 2_000), 2, 12, 92, 1));
        assert!(!waits_after(preferred(&[8], 32, 2_000), 3, 12, 92, 1));
    }

    #[test]
    fn a_size_that_cannot_gather_within_the_window_is_not_waited_for() {
        // 15 more requests at one every 50 us would take 750 us; the window is 500 us.
        assert!(!waits_after(preferred(&[16], 32, 500), 1, 20, 60, 1));
        // With a 2 ms window it is waited for.
        assert!(waits_after(preferred(&[16], 32, 2_000), 1, 20, 60, 1));
        // A preferred size past max_batch_size counts as max_batch_size.
        assert!(waits_after(preferred(&[64], 16, 2_000), 1, 20, 60, 1));
    }

    #[test]
    fn a_size_as_many_requests_as_were_in_flight_is_not_waited_for() {
        // Never more than 4 requests in flight at once: a batch of 8 cannot form, and one of 4 would only
        // make 4 closed-loop clients take turns waiting for each other.
        assert!(!waits_after(preferred(&[8], 32, 2_000), 1, 4, 60, 1));
        assert!(!waits_after(preferred(&[4], 32, 2_000), 1, 4, 60, 1));
        assert!(!waits_after(adaptive(4, 2_000), 1, 4, 60, 1));
        // Requests of 4 items, 4 in flight: 8 items are 2 requests, which can form.
        assert!(waits_after(preferred(&[8], 32, 2_000), 1, 4, 60, 4));
    }

    proptest::proptest! {
        /// Whatever the arrivals and execution times, the adaptive window never waits past `max_delay`, and
        /// every request runs.
        #[test]
        fn adaptive_never_waits_past_the_bound(
            gaps in proptest::collection::vec(0u64..500, 1..60),
            exec_us in 1u64..5_000,
            single_us in 1u64..5_000,
            delay_us in 1u64..3_000,
            preferred in proptest::collection::vec(1usize..17, 0..3),
        ) {
            let t0 = Instant::now();
            let mut s = BatchState::new(BatchPolicy { preferred_batch_sizes: preferred, ..adaptive(16, delay_us) });
            let mut t = t0;
            let mut ran = 0usize;
            for (i, gap) in gaps.iter().enumerate() {
                t += Duration::from_micros(*gap);
                s.push(entry(i as u32, 1, t)).unwrap();
                loop {
                    match s.next_batch(t, false) {
                        Decision::Run(b, _) => {
                            ran += b.len();
                            s.finished(b.len(), Some(Duration::from_micros(exec_us)));
                            if b.len() == 1 {
                                s.single_request_executed(Duration::from_micros(single_us));
                            }
                        }
                        Decision::WaitUntil(until) => {
                            let head = s.queues.iter().find_map(|q| q.front()).map(|e| e.enqueued).unwrap();
                            proptest::prop_assert!(until <= head + Duration::from_micros(delay_us));
                            break;
                        }
                        Decision::Idle => break,
                    }
                }
            }
            // Time passes: everything left runs by the bound.
            let end = t + Duration::from_micros(delay_us);
            while let Decision::Run(b, _) = s.next_batch(end, false) {
                ran += b.len();
            }
            proptest::prop_assert_eq!(ran, gaps.len());
        }
    }

    #[test]
    fn an_arrival_that_cannot_end_a_hold_wakes_nobody() {
        let t0 = Instant::now();
        let mut s =
            BatchState::new(BatchPolicy { preferred_batch_sizes: vec![4], priority_levels: 2, ..policy(8, 1000) });
        assert!(s.push(entry(1, 1, t0)).unwrap(), "no instance waits yet: look");
        assert!(matches!(s.next_batch(t0, false), Decision::WaitUntil(_)));
        assert!(!s.push(entry(2, 2, t0)).unwrap(), "3 items of 4: the wait goes on");
        assert!(!s.push(Entry { key: vec![32], ..entry(3, 1, t0) }).unwrap(), "another key joins another batch");
        assert!(s.push(entry(4, 1, t0)).unwrap(), "4 items: the preferred size may have formed");
        assert_eq!(ids(s.next_batch(t0, false)), vec![1, 2, 4]);
        assert!(matches!(s.next_batch(t0, false), Decision::WaitUntil(_)));
        assert!(!s.push(Entry { priority: 0, ..entry(5, 1, t0) }).unwrap(), "the level of the head (3): wait");
        let urgent = Entry { priority: 0, deadline: Some(t0 + Duration::from_micros(10)), ..entry(6, 1, t0) };
        assert!(s.push(urgent).unwrap(), "a deadline before the wait ends");
        let mut s = BatchState::new(BatchPolicy { priority_levels: 2, ..policy(8, 1000) });
        s.push(Entry { priority: 1, ..entry(1, 1, t0) }).unwrap();
        assert!(matches!(s.next_batch(t0, false), Decision::WaitUntil(_)));
        assert!(s.push(Entry { priority: 0, ..entry(2, 1, t0) }).unwrap(), "a higher priority heads a new batch");
        // Preferred [2, 8]: the head (level 0, 1 item) and a 3-item request of level 1 pass through 1 and 4; a
        // 1-item request of level 0 goes between them, and 1 + 1 makes the preferred 2, below the 8 waited for.
        let mut s =
            BatchState::new(BatchPolicy { preferred_batch_sizes: vec![2, 8], priority_levels: 2, ..policy(8, 1000) });
        s.push(entry(1, 1, t0)).unwrap();
        s.push(Entry { priority: 1, ..entry(2, 3, t0) }).unwrap();
        assert!(matches!(s.next_batch(t0, false), Decision::WaitUntil(_)));
        assert!(s.push(entry(3, 1, t0)).unwrap(), "taken ahead of a request of a lower priority");
        assert_eq!(ids(s.next_batch(t0, false)), vec![1, 3]);
    }

    proptest::proptest! {
        /// An arrival for which `push` says nobody need look (the batcher wakes no waiting instance for it) never
        /// makes a batch ready: a look at that moment runs a batch only if it would have without the arrival
        /// (the wait's own time-bound reasons, which the instance meets when it looks at the time it chose). One
        /// instance, executions of `exec_us`, arrivals of mixed keys, priorities, deadlines (and, under the fixed
        /// window, item counts), either window.
        #[test]
        fn a_skipped_look_never_delays_a_batch(
            arrivals in proptest::collection::vec(
                (0u64..300, 0usize..2, 0usize..2, proptest::option::of(1u64..3_000), 1usize..4),
                1..80,
            ),
            exec_us in 1u64..2_000,
            delay_us in 1u64..3_000,
            preferred in proptest::collection::vec(1usize..9, 0..3),
            fixed in proptest::bool::ANY,
        ) {
            let window = if fixed { Window::Fixed } else { Window::Adaptive };
            let t0 = Instant::now();
            let mut s = BatchState::new(BatchPolicy {
                preferred_batch_sizes: preferred,
                priority_levels: 2,
                window,
                ..policy(8, delay_us)
            });
            let exec = Duration::from_micros(exec_us);
            let mut t = t0;
            let mut busy: Option<(Instant, usize)> = None;
            let mut wake: Option<Instant> = None;
            let look = |s: &mut BatchState<u32>,
                        at: Instant,
                        busy: &mut Option<(Instant, usize)>,
                        wake: &mut Option<Instant>| {
                s.remove_expired(at);
                *wake = None;
                match s.next_batch(at, false) {
                    Decision::Run(b, reason) => {
                        *busy = Some((at + exec, b.len()));
                        Some((reason, b.len()))
                    }
                    Decision::WaitUntil(until) => {
                        *wake = Some(until);
                        None
                    }
                    Decision::Idle => None,
                }
            };
            for (id, (gap, key, priority, deadline, items)) in arrivals.into_iter().enumerate() {
                let at = t + Duration::from_micros(gap);
                // What the instance does before this arrival: finish its batch, or look when its wait ends.
                loop {
                    if let Some((done, n)) = busy.filter(|(done, _)| *done <= at) {
                        t = done;
                        busy = None;
                        s.finished(n, Some(exec));
                        if n == 1 {
                            s.single_request_executed(exec);
                        }
                        look(&mut s, t, &mut busy, &mut wake);
                    } else if let Some(until) = wake.filter(|w| busy.is_none() && *w <= at) {
                        t = until.max(t);
                        look(&mut s, t, &mut busy, &mut wake);
                    } else {
                        break;
                    }
                }
                t = at;
                let deadline = deadline.map(|d| at + Duration::from_micros(d));
                // Requests of several items only under the fixed window: under the adaptive one, a request whose
                // items move the average per request can change what the window expects to gather, and the
                // instance sees that when it looks at the time it chose (within the window), not at the arrival.
                let items = if fixed { items } else { 1 };
                let arrival = Entry { items, key: vec![key], enqueued: at, deadline, priority, payload: id as u32 };
                let mut without = s.clone();
                let needed = s.push(arrival).unwrap();
                if busy.is_none() {
                    let ran = look(&mut s, at, &mut busy, &mut wake);
                    let ran_without = look(&mut without, at, &mut None, &mut None);
                    proptest::prop_assert!(
                        needed || ran.is_none() || ran_without.is_some(),
                        "arrival {} was let pass, but a look ran {:?}",
                        id,
                        ran
                    );
                }
            }
        }
    }
}
