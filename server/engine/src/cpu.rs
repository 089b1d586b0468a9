//! Whether the CPU is nearly all in use, sampled in the background for the adaptive batching window.
//!
//! Holding a partial batch for the preferred size never pays for a CPU instance itself: in the batcher's
//! simulations, where the instance is the only resource, running whatever is queued whenever an instance is free
//! gives the same or better throughput than holding, in a closed loop as in an open one, because what arrives
//! during an execution forms the next batch by itself. Holding pays only through the CPU it gives back: fewer
//! executions leave more of a CPU the instances share with the request handlers (and, on a small machine, with
//! the clients) to those. So for models on CPU the adaptive window holds for the preferred size only while the
//! CPU is saturated, and then whenever the preferred size can gather within the window, whatever share of the
//! instance's own time the executions take (see [`Pressure`]).
//!
//! "Saturated" is read as follows:
//! - in a cgroup with a CPU quota (a Kubernetes pod with a CPU limit), the cgroup's CPU time against its quota,
//!   fractions of a CPU included (what the kernel throttles on; the quota is read again at every sample, so a
//!   pod resized in place is followed);
//! - otherwise the larger of this process's share of the CPUs it may run on and the whole machine's busy share
//!   (`/proc/stat`: a load generator or another server on the same cores).
//!
//! CPU time an instance spends lingering on an empty queue for the next request (yielding to any thread with
//! work, see the batcher) is left out of every share ([`record_lingering`]): it is spare CPU put to use, not
//! demand, and counting it would make the linger itself read as saturation (on a 2-core machine a closed-loop
//! client at concurrency 1 and a lingering server read 0.74-0.87 busy).
//!
//! It enters at [`SATURATED_SHARE`] and leaves only below [`ROOM_SHARE`]: holding lowers the CPU in use, and
//! without the gap the state would flip back and forth around one threshold. Where `/proc/self/stat` cannot be
//! read (not Linux), the CPU stays [`Pressure::Unknown`], as for instances on GPUs.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Share of the CPU in use from which it counts as saturated.
pub const SATURATED_SHARE: f64 = 0.85;
/// Share of the CPU in use below which a saturated CPU counts as having room again.
pub const ROOM_SHARE: f64 = 0.75;
/// How often the CPU is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Weight of the newest sample in the moving average (about a third of a second of memory, as the batcher's
/// own history).
const SAMPLE_WEIGHT: f64 = 0.3;
/// Clock ticks per second in `/proc` (`USER_HZ`): 100 on x86-64 and arm64, the targets ferroserve ships for.
const TICKS_PER_SECOND: f64 = 100.0;

const UNKNOWN: u8 = 0;
const ROOM: u8 = 1;
const SATURATED: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);
/// CPU time instances spent lingering, in nanoseconds, since the process started.
static LINGERED_NS: AtomicU64 = AtomicU64::new(0);
static SAMPLER: OnceLock<()> = OnceLock::new();

/// What the adaptive batching window knows of the CPU its instances share with the request handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pressure {
    /// Not watched (instances on GPUs, which share the device rather than the CPU), not sampled yet, or not
    /// readable: the window holds only when the load would keep the instances themselves nearly busy.
    #[default]
    Unknown,
    /// The CPU has room: holding would give back nothing anyone is waiting for.
    Room,
    /// The CPU is saturated: every execution saved is CPU the request handlers get back.
    Saturated,
}

/// The CPU's state now ([`Pressure::Unknown`] until the first sample, and where it cannot be read).
pub fn pressure() -> Pressure {
    match STATE.load(Ordering::Relaxed) {
        ROOM => Pressure::Room,
        SATURATED => Pressure::Saturated,
        _ => Pressure::Unknown,
    }
}

/// The calling thread's CPU time so far, in nanoseconds (`/proc/thread-self/schedstat`, kept open per thread:
/// one read of about a microsecond), where it can be read.
pub fn thread_cpu_ns() -> Option<u64> {
    use std::os::unix::fs::FileExt;
    thread_local! {
        static SCHEDSTAT: Option<std::fs::File> = std::fs::File::open("/proc/thread-self/schedstat").ok();
    }
    SCHEDSTAT.with(|file| {
        let mut buf = [0u8; 96];
        let read = file.as_ref()?.read_at(&mut buf, 0).ok()?;
        std::str::from_utf8(&buf[..read]).ok()?.split_whitespace().next()?.parse().ok()
    })
}

/// Records CPU time an instance spent lingering (left out of the busy share).
pub fn record_lingering(nanos: u64) {
    LINGERED_NS.fetch_add(nanos, Ordering::Relaxed);
}

/// Starts the background sampler, once per process (later calls do nothing).
pub fn start_sampling() {
    SAMPLER.get_or_init(|| {
        let started = std::thread::Builder::new().name("cpu-sampler".into()).spawn(sample_forever);
        if let Err(e) = started {
            tracing::warn!(error = %e, "CPU sampler not started; the adaptive window holds as for instances on GPUs, and instances linger");
        }
    });
}

fn sample_forever() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let cgroup = CgroupFiles::find();
    let gauge = metrics::gauge!(crate::metrics::CPU_BUSY);
    let Some(mut last) = read_sample(cgroup.as_ref()) else {
        tracing::debug!("/proc/self/stat is not readable: the CPU's pressure stays unknown");
        return;
    };
    let mut busy = Busy::default();
    loop {
        std::thread::sleep(SAMPLE_EVERY);
        let Some(now) = read_sample(cgroup.as_ref()) else { continue };
        if let Some(share) = busy_share(&last, &now, cpus) {
            let (average, saturated) = busy.update(share);
            gauge.set(average);
            STATE.store(if saturated { SATURATED } else { ROOM }, Ordering::Relaxed);
        }
        last = now;
    }
}

/// The moving average of the busy share, and whether it counts as saturated (with the gap between entering
/// and leaving).
#[derive(Debug, Default)]
struct Busy {
    average: Option<f64>,
    saturated: bool,
}

impl Busy {
    fn update(&mut self, share: f64) -> (f64, bool) {
        let average = self.average.map_or(share, |b| b + SAMPLE_WEIGHT * (share - b));
        self.average = Some(average);
        self.saturated = if self.saturated { average >= ROOM_SHARE } else { average >= SATURATED_SHARE };
        (average, self.saturated)
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
    /// The cgroup's CPU quota (CPUs, fractions included) and its CPU time so far (seconds), where it has a quota.
    cgroup: Option<(f64, f64)>,
    /// CPU time instances spent lingering so far (seconds).
    lingered: f64,
}

fn read_sample(cgroup: Option<&CgroupFiles>) -> Option<Sample> {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let at = EPOCH.get_or_init(Instant::now).elapsed().as_secs_f64();
    let process_ticks = process_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let machine = std::fs::read_to_string("/proc/stat").ok().and_then(|text| machine_ticks(&text));
    let lingered = LINGERED_NS.load(Ordering::Relaxed) as f64 / 1e9;
    Some(Sample { at, process_ticks, machine, cgroup: cgroup.and_then(CgroupFiles::read), lingered })
}

/// The busy share between two samples: the cgroup's CPU time against its quota where both samples have one,
/// otherwise the larger of this process's share of `cpus` and the machine's busy share; `None` when no time
/// passed.
fn busy_share(before: &Sample, after: &Sample, cpus: f64) -> Option<f64> {
    let seconds = after.at - before.at;
    if seconds <= 0.0 {
        return None;
    }
    let lingered = (after.lingered - before.lingered).max(0.0);
    if let (Some((_, used0)), Some((quota, used1))) = (before.cgroup, after.cgroup) {
        return Some(((used1 - used0 - lingered).max(0.0) / (seconds * quota)).min(1.0));
    }
    let process = after.process_ticks.saturating_sub(before.process_ticks) as f64 / TICKS_PER_SECOND;
    let process_share = (process - lingered).max(0.0) / (seconds * cpus.max(1.0));
    let machine_share = match (before.machine, after.machine) {
        (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
            let busy = busy1.saturating_sub(busy0) as f64 / TICKS_PER_SECOND;
            (busy - lingered).max(0.0) / ((total1 - total0) as f64 / TICKS_PER_SECOND)
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

/// Where this process's cgroup keeps its CPU quota and CPU time.
#[derive(Debug, Clone, PartialEq)]
enum CgroupFiles {
    /// cgroup v2: `cpu.max` and `cpu.stat` (`usage_usec`) in one directory.
    V2(PathBuf),
    /// cgroup v1: `cpu.cfs_quota_us` and `cpu.cfs_period_us` in the `cpu` controller's directory,
    /// `cpuacct.usage` (nanoseconds) in the `cpuacct` one's.
    V1 { cpu: PathBuf, cpuacct: PathBuf },
}

impl CgroupFiles {
    /// This process's cgroup files, from `/proc/self/cgroup`. Inside a container the cgroup's own directory is
    /// usually mounted at the controller's root, so that is tried after the path the process's line names.
    fn find() -> Option<Self> {
        let listing = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        Self::find_in(&listing, Path::new("/sys/fs/cgroup"), |dir, file| dir.join(file).is_file())
    }

    fn find_in(listing: &str, root: &Path, exists: impl Fn(&Path, &str) -> bool) -> Option<Self> {
        let under = |base: PathBuf, path: &str| {
            let named = base.join(path.trim_start_matches('/'));
            [named, base]
        };
        let mut v1_cpu = None;
        let mut v1_cpuacct = None;
        for line in listing.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if controllers.is_empty() {
                if let Some(dir) = under(root.to_path_buf(), path).into_iter().find(|d| exists(d, "cpu.max")) {
                    return Some(CgroupFiles::V2(dir));
                }
                continue;
            }
            let names: Vec<&str> = controllers.split(',').collect();
            let mount = root.join(controllers);
            if names.contains(&"cpu") {
                v1_cpu = under(mount.clone(), path).into_iter().find(|d| exists(d, "cpu.cfs_quota_us"));
            }
            if names.contains(&"cpuacct") {
                v1_cpuacct = under(mount, path).into_iter().find(|d| exists(d, "cpuacct.usage"));
            }
        }
        Some(CgroupFiles::V1 { cpu: v1_cpu?, cpuacct: v1_cpuacct? })
    }

    /// The quota in CPUs and the CPU time so far in seconds, where the cgroup has a quota.
    fn read(&self) -> Option<(f64, f64)> {
        let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).ok();
        match self {
            CgroupFiles::V2(dir) => {
                let quota = quota_v2(&read(dir, "cpu.max")?)?;
                Some((quota, usage_v2(&read(dir, "cpu.stat")?)?))
            }
            CgroupFiles::V1 { cpu, cpuacct } => {
                let quota = quota_v1(&read(cpu, "cpu.cfs_quota_us")?, &read(cpu, "cpu.cfs_period_us")?)?;
                let nanos: f64 = read(cpuacct, "cpuacct.usage")?.trim().parse().ok()?;
                Some((quota, nanos / 1e9))
            }
        }
    }
}

/// CPUs from cgroup v2's `cpu.max` (`QUOTA PERIOD`, or `max PERIOD` without a quota).
fn quota_v2(text: &str) -> Option<f64> {
    let mut fields = text.split_whitespace();
    let (quota, period) = (fields.next()?, fields.next()?);
    quota_v1(quota, period)
}

/// CPUs from cgroup v1's quota and period in microseconds (a quota of -1, or `max`, is none).
fn quota_v1(quota: &str, period: &str) -> Option<f64> {
    let quota: f64 = quota.trim().parse().ok()?;
    let period: f64 = period.trim().parse().ok()?;
    (quota > 0.0 && period > 0.0).then_some(quota / period)
}

/// Seconds of CPU time from cgroup v2's `cpu.stat` (`usage_usec`).
fn usage_v2(stat: &str) -> Option<f64> {
    let line = stat.lines().find_map(|l| l.strip_prefix("usage_usec "))?;
    Some(line.trim().parse::<f64>().ok()? / 1e6)
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

    #[test]
    fn reads_cgroup_quotas_in_cpus_and_usage_in_seconds() {
        assert_eq!(quota_v2("50000 100000\n"), Some(0.5));
        assert_eq!(quota_v2("150000 100000"), Some(1.5));
        assert_eq!(quota_v2("max 100000\n"), None);
        assert_eq!(quota_v1("-1\n", "100000\n"), None);
        assert_eq!(quota_v1("200000\n", "100000\n"), Some(2.0));
        assert_eq!(usage_v2("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n"), Some(2.5));
        assert_eq!(usage_v2("nr_periods 0\n"), None);
    }

    #[test]
    fn finds_the_cgroup_files_of_either_version() {
        let root = Path::new("/cg");
        let anywhere = |_: &Path, _: &str| true;
        // cgroup v2, in a container whose own cgroup is the mount's root.
        let v2 = CgroupFiles::find_in("0::/\n", root, anywhere);
        assert_eq!(v2, Some(CgroupFiles::V2(PathBuf::from("/cg/"))));
        // A systemd service's cgroup, named under the root.
        let only_named = |d: &Path, _: &str| d.ends_with("app.service");
        let v2 = CgroupFiles::find_in("0::/system.slice/app.service\n", root, only_named);
        assert_eq!(v2, Some(CgroupFiles::V2(PathBuf::from("/cg/system.slice/app.service"))));
        // cgroup v1 with cpu and cpuacct mounted together, the named path missing (a container): the root.
        let only_roots = |d: &Path, _: &str| d.ends_with("cpu,cpuacct");
        let v1 = CgroupFiles::find_in("4:memory:/x\n3:cpu,cpuacct:/kubepods/pod1\n", root, only_roots);
        let mount = PathBuf::from("/cg/cpu,cpuacct");
        assert_eq!(v1, Some(CgroupFiles::V1 { cpu: mount.clone(), cpuacct: mount }));
        // Neither: no cgroup files (the CPU is then read from /proc alone).
        assert_eq!(CgroupFiles::find_in("1:name=systemd:/\n", root, |_, _| false), None);
    }

    fn sample(at: f64, process_ticks: u64, machine: Option<(u64, u64)>) -> Sample {
        Sample { at, process_ticks, machine, cgroup: None, lingered: 0.0 }
    }

    #[test]
    fn the_busy_share_is_the_larger_of_the_process_and_the_machine() {
        // 1 s on 2 CPUs: the process used 0.5 s (25 %), the machine was busy 90 % of its time.
        let share = busy_share(&sample(0.0, 0, Some((0, 0))), &sample(1.0, 50, Some((180, 200))), 2.0);
        assert!((share.unwrap() - 0.9).abs() < 1e-9, "{share:?}");
        // The process alone saturates the one CPU it may run on, whatever the machine does.
        let share = busy_share(&sample(0.0, 0, Some((0, 0))), &sample(1.0, 95, Some((95, 800))), 1.0);
        assert!((share.unwrap() - 0.95).abs() < 1e-9, "{share:?}");
        // Without /proc/stat, the process's share alone; never over 1; no time, no share.
        let share = busy_share(&sample(0.0, 0, None), &sample(0.5, 120, None), 2.0);
        assert_eq!(share, Some(1.0));
        assert_eq!(busy_share(&sample(1.0, 0, None), &sample(1.0, 10, None), 2.0), None);
    }

    #[test]
    fn lingering_is_left_out_of_every_share() {
        // 1 s on 2 CPUs: the process used 1.2 s, 0.8 s of it lingering; the machine was busy 1.6 s of 2 (80 %):
        // without the linger, the process used 20 % of the CPUs and the machine was busy 40 %.
        let before = sample(0.0, 0, Some((0, 0)));
        let after = Sample { lingered: 0.8, ..sample(1.0, 120, Some((160, 200))) };
        let share = busy_share(&before, &after, 2.0).unwrap();
        assert!((share - 0.4).abs() < 1e-9, "{share}");
        // Under a 1-CPU quota, 0.9 s used of which 0.8 s lingering: 10 %.
        let before = Sample { cgroup: Some((1.0, 5.0)), ..before };
        let after = Sample { cgroup: Some((1.0, 5.9)), ..after };
        let share = busy_share(&before, &after, 2.0).unwrap();
        assert!((share - 0.1).abs() < 1e-9, "{share}");
    }

    #[test]
    fn this_thread_reads_its_own_cpu_time() {
        let before = thread_cpu_ns().expect("/proc/thread-self/schedstat is readable");
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(spin.elapsed());
        }
        let after = thread_cpu_ns().unwrap();
        // At least a tenth of the 50 ms spun, even on a busy machine; a sleeping thread adds next to nothing.
        assert!(after - before >= 5_000_000, "{}", after - before);
        std::thread::sleep(Duration::from_millis(50));
        assert!(thread_cpu_ns().unwrap() - after < 20_000_000);
    }

    #[test]
    fn under_a_quota_the_cgroup_time_against_the_quota_is_the_share() {
        // A 500m pod on a busy 64-CPU node that used 0.45 s of CPU in 1 s: 90 % of its quota, whatever the node
        // and the rounded CPU count say.
        let before = Sample { cgroup: Some((0.5, 10.0)), ..sample(0.0, 0, Some((0, 0))) };
        let after = Sample { cgroup: Some((0.5, 10.45)), ..sample(1.0, 45, Some((10, 6400))) };
        let share = busy_share(&before, &after, 1.0).unwrap();
        assert!((share - 0.9).abs() < 1e-9, "{share}");
    }

    #[test]
    fn saturation_enters_at_one_share_and_leaves_below_a_lower_one() {
        let mut busy = Busy::default();
        assert!(!busy.update(0.80).1);
        let seen: Vec<(f64, bool)> = [0.95, 0.95, 0.95, 0.7, 0.7, 0.6].iter().map(|&s| busy.update(s)).collect();
        // The average (0.845, 0.877, 0.909, 0.846, 0.802, 0.741) crosses 0.85 on the way up; on the way down it
        // stays saturated at 0.846 and 0.802, until under 0.75.
        let saturated: Vec<bool> = seen.iter().map(|&(_, s)| s).collect();
        assert_eq!(saturated, vec![false, true, true, true, true, false], "{seen:?}");
    }

    #[test]
    fn this_process_spinning_shows_in_its_share() {
        // The process's ticks (fields 14 and 15, at 100 a second) over 300 ms of one thread spinning: at least a
        // third of one CPU even on a machine as busy as CI's.
        let before = read_sample(None).expect("/proc/self/stat is readable");
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(300) {
            std::hint::black_box(spin.elapsed());
        }
        let after = read_sample(None).expect("/proc/self/stat is readable");
        let no_machine = |s: Sample| Sample { machine: None, ..s };
        let share = busy_share(&no_machine(before), &no_machine(after), 1.0).unwrap();
        assert!(share >= 0.33, "{share}");
        assert!(after.machine.is_some(), "/proc/stat is readable");
    }
}
