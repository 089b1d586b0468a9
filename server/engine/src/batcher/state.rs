//! [`BatchState`]: the dynamic batcher's decisions as plain state, with no channels, threads or clocks.
//!
//! The [`Batcher`](super::Batcher) feeds it requests and the current time; it answers which requests form
//! the next batch, or until when to wait. Rules (Triton's dynamic batcher, simplified):
//! - requests are taken by priority level (0 first), then in arrival order;
//! - a batch holds only requests whose non-batch dims match the first one (ragged requests never mix),
//!   up to `max_batch_size` items (batch dim 0 summed);
//! - a batch runs at once when full or when it reaches a preferred size; otherwise when the oldest request
//!   has waited `max_delay`;
//! - queued requests past their deadline are taken out for a timeout reply.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

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
}

/// A queued request as the state sees it.
#[derive(Debug)]
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
    /// Run these requests as one batch, in this order.
    Run(Vec<Entry<T>>),
    /// Nothing is ready; look again at this time (or sooner if something arrives).
    WaitUntil(Instant),
    /// The queue is empty (or nothing can be decided until something changes).
    Idle,
}

/// The dynamic batcher's queue.
#[derive(Debug)]
pub struct BatchState<T> {
    policy: BatchPolicy,
    queues: Vec<VecDeque<Entry<T>>>,
    len: usize,
}

impl<T> BatchState<T> {
    /// An empty queue under `policy`.
    pub fn new(mut policy: BatchPolicy) -> Self {
        policy.priority_levels = policy.priority_levels.max(1);
        policy.preferred_batch_sizes.sort_unstable();
        let queues = (0..policy.priority_levels).map(|_| VecDeque::new()).collect();
        BatchState { policy, queues, len: 0 }
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

    /// Queues a request, or hands it back when the queue is full.
    pub fn push(&mut self, mut entry: Entry<T>) -> Result<(), Entry<T>> {
        if self.len >= self.policy.max_queue_size {
            return Err(entry);
        }
        entry.priority = entry.priority.min(self.queues.len() - 1);
        self.queues[entry.priority].push_back(entry);
        self.len += 1;
        Ok(())
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
        expired
    }

    fn earliest_deadline(&self) -> Option<Instant> {
        self.queues.iter().flatten().filter_map(|e| e.deadline).min()
    }

    /// Decides the next batch at time `now`. `flush`: ignore the delay (draining on shutdown).
    pub fn next_batch(&mut self, now: Instant, flush: bool) -> Decision<T> {
        let Some(head) = self.queues.iter().find_map(|q| q.front()) else { return Decision::Idle };
        if self.policy.max_batch_size == 0 {
            // No batching: one request per execution, always ready.
            let entry = self.queues.iter_mut().find_map(|q| q.pop_front());
            return match entry {
                Some(e) => {
                    self.len -= 1;
                    Decision::Run(vec![e])
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
        let take = if full {
            Some(preferred_prefix.filter(|_| total != max).map_or(picked.len(), |i| i + 1))
        } else if let Some(i) = preferred_prefix {
            Some(i + 1)
        } else if flush || now >= due {
            Some(picked.len())
        } else {
            None
        };
        match take {
            Some(n) => Decision::Run(self.take(&picked[..n])),
            None => Decision::WaitUntil(self.earliest_deadline().map_or(due, |d| d.min(due))),
        }
    }

    fn take(&mut self, picked: &[(usize, usize)]) -> Vec<Entry<T>> {
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
        }
    }

    fn entry(id: u32, items: usize, at: Instant) -> Entry<u32> {
        Entry { items, key: vec![16], enqueued: at, deadline: None, priority: 0, payload: id }
    }

    fn ids(d: Decision<u32>) -> Vec<u32> {
        match d {
            Decision::Run(b) => b.into_iter().map(|e| e.payload).collect(),
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
            while let Decision::Run(batch) = s.next_batch(later, false) {
                proptest::prop_assert!(batch.iter().map(|e| e.items).sum::<usize>() <= max);
                proptest::prop_assert!(batch.iter().all(|e| e.key == batch[0].key));
                seen.extend(batch.into_iter().map(|e| e.payload));
            }
            seen.sort_unstable();
            proptest::prop_assert_eq!(seen, (0..items.len()).collect::<Vec<_>>());
        }
    }
}
