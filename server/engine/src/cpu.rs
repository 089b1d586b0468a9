//! Whether the CPU is nearly all in use, sampled in the background for the adaptive batching window.
//!
//! Holding a partial batch for the preferred size never pays for the instance itself: in the batcher's
//! simulations, where the instance is the only resource, running whatever is queued whenever an instance is free
//! gives the same or better throughput than holding, in a closed loop as in an open one, because what arrives
//! during an execution forms the next batch by itself. Holding pays only through the CPU it gives back: fewer
//! executions leave more of a CPU the instances share with the request handlers (and, on a small machine, with
//! the clients) to those. So the adaptive window holds for the preferred size only while the CPU is saturated.
//!
//! "Saturated" is read two ways, either of which counts: this process uses nearly all the CPUs it may use
//! (`available_parallelism`, which follows the cgroup quota of a container), or the whole machine's CPUs are
//! nearly all busy (`/proc/stat`: a load generator or another server on the same cores). Where neither can be
//! read (not Linux), the CPU counts as saturated, which keeps the config's batching as written.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

/// Share of the CPU in use from which it counts as saturated.
pub const SATURATED_SHARE: f64 = 0.85;
/// How often the CPU is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Weight of the newest sample in the moving average (about a third of a second of memory, as the batcher's
/// own history).
const SAMPLE_WEIGHT: f64 = 0.3;
/// Linux's clock ticks per second in `/proc` (`USER_HZ`, 100 on every architecture Linux supports today).
const TICKS_PER_SECOND: f64 = 100.0;

const UNKNOWN: u8 = 0;
const ROOM: u8 = 1;
const SATURATED: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);
static SAMPLER: OnceLock<()> = OnceLock::new();

/// Whether the CPU is saturated now (true until a sample says otherwise, and where it cannot be read).
pub fn saturated() -> bool {
    STATE.load(Ordering::Relaxed) != ROOM
}

/// Starts the background sampler, once per process (later calls do nothing).
pub fn start_sampling() {
    SAMPLER.get_or_init(|| {
        let started = std::thread::Builder::new().name("cpu-sampler".into()).spawn(sample_forever);
        if let Err(e) = started {
            tracing::warn!(error = %e, "CPU sampler not started; the adaptive window batches as the config asks");
        }
    });
}

fn sample_forever() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let gauge = metrics::gauge!(crate::metrics::CPU_BUSY);
    let mut last = read_sample();
    let mut busy: Option<f64> = None;
    loop {
        std::thread::sleep(SAMPLE_EVERY);
        let now = read_sample();
        let share = match (&last, &now) {
            (Some(before), Some(after)) => busy_share(before, after, cpus),
            _ => None,
        };
        last = now;
        let Some(share) = share else {
            STATE.store(UNKNOWN, Ordering::Relaxed);
            busy = None;
            continue;
        };
        let average = busy.map_or(share, |b| b + SAMPLE_WEIGHT * (share - b));
        busy = Some(average);
        gauge.set(average);
        STATE.store(if average >= SATURATED_SHARE { SATURATED } else { ROOM }, Ordering::Relaxed);
    }
}

/// One reading of the CPU counters.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    /// When, in seconds on a monotonic clock.
    at: f64,
    /// This process's user and system time, in ticks.
    process_ticks: u64,
    /// The machine's busy and total time over all CPUs, in ticks, if `/proc/stat` could be read.
    machine: Option<(u64, u64)>,
}

fn read_sample() -> Option<Sample> {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    let at = EPOCH.get_or_init(std::time::Instant::now).elapsed().as_secs_f64();
    let process_ticks = process_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let machine = std::fs::read_to_string("/proc/stat").ok().and_then(|text| machine_ticks(&text));
    Some(Sample { at, process_ticks, machine })
}

/// The larger of this process's share of the CPUs it may use and the machine's busy share, between two
/// samples; `None` when no time passed.
fn busy_share(before: &Sample, after: &Sample, cpus: f64) -> Option<f64> {
    let seconds = after.at - before.at;
    if seconds <= 0.0 {
        return None;
    }
    let process = after.process_ticks.saturating_sub(before.process_ticks) as f64 / TICKS_PER_SECOND;
    let process_share = process / (seconds * cpus.max(1.0));
    let machine_share = match (before.machine, after.machine) {
        (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
            busy1.saturating_sub(busy0) as f64 / (total1 - total0) as f64
        }
        _ => 0.0,
    };
    Some(process_share.max(machine_share).min(1.0))
}

/// User plus system ticks from the text of `/proc/self/stat` (fields 14 and 15; the command name, which may
/// hold spaces and parentheses, ends at the last `)`).
fn process_ticks(stat: &str) -> Option<u64> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// (busy, total) ticks over all CPUs from the text of `/proc/stat`'s first line: user, nice, system, idle,
/// iowait, irq, softirq, steal (guest time is already counted in user). Idle and iowait are not busy; steal
/// (taken by the hypervisor) is, since this machine could not use it either.
fn machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?;
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields.take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    if values.len() < 4 {
        return None;
    }
    let total: u64 = values.iter().sum();
    let idle = values[3] + values.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_process_ticks_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (fs (worker) 1) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 9 0 100 0 0";
        assert_eq!(process_ticks(stat), Some(325));
        assert_eq!(process_ticks("4242 (cut short) S 1"), None);
    }

    #[test]
    fn reads_the_machine_ticks_from_the_first_line() {
        let stat = "cpu  100 5 50 800 40 3 2 0 0 0\ncpu0 50 2 25 400 20 1 1 0 0 0\n";
        assert_eq!(machine_ticks(stat), Some((160, 1000)));
        assert_eq!(machine_ticks("intr 1 2 3\n"), None);
        assert_eq!(machine_ticks("cpu 1 2\n"), None);
    }

    fn sample(at: f64, process_ticks: u64, machine: Option<(u64, u64)>) -> Sample {
        Sample { at, process_ticks, machine }
    }

    #[test]
    fn the_busy_share_is_the_larger_of_the_process_and_the_machine() {
        // 1 s on 2 CPUs: the process used 0.5 s (25 %), the machine was busy 90 % of its time.
        let share = busy_share(&sample(0.0, 0, Some((0, 0))), &sample(1.0, 50, Some((180, 200))), 2.0);
        assert!((share.unwrap() - 0.9).abs() < 1e-9, "{share:?}");
        // The process alone saturates the one CPU its quota gives it, whatever the machine does.
        let share = busy_share(&sample(0.0, 0, Some((0, 0))), &sample(1.0, 95, Some((95, 800))), 1.0);
        assert!((share.unwrap() - 0.95).abs() < 1e-9, "{share:?}");
        // Without /proc/stat, the process's share alone; never over 1; no time, no share.
        let share = busy_share(&sample(0.0, 0, None), &sample(0.5, 120, None), 2.0);
        assert_eq!(share, Some(1.0));
        assert_eq!(busy_share(&sample(1.0, 0, None), &sample(1.0, 10, None), 2.0), None);
    }

    #[test]
    fn this_machine_can_be_sampled() {
        // Linux CI: both files read, and a share between 0 and 1 over a short spin.
        let before = read_sample().expect("/proc/self/stat is readable");
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(spin.elapsed());
        }
        let after = read_sample().expect("/proc/self/stat is readable");
        assert!(before.machine.is_some());
        let share = busy_share(&before, &after, 1.0).unwrap();
        assert!((0.0..=1.0).contains(&share), "{share}");
    }
}
