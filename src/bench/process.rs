//! Readings of this machine and of a local server process, from `/proc`
//! (Linux only; elsewhere they read as absent).

use std::time::Duration;

/// Resident memory of a local process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Idle time of each CPU so far, in clock ticks, from `/proc/stat`; empty
/// where there is none. (Only idle time is trusted: on a virtual machine the
/// busy fields can add up to more than the wall clock.)
pub(super) fn cpu_idle_ticks() -> Vec<u64> {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    stat.lines()
        .filter(|line| line.starts_with("cpu") && !line.starts_with("cpu "))
        .map(|line| {
            // cpuN user nice system idle iowait ...
            (line.split_whitespace().skip(4).take(2))
                .filter_map(|field| field.parse::<u64>().ok())
                .sum()
        })
        .collect()
}

/// Percent of `wall` each CPU was not idle, between two [`cpu_idle_ticks`].
pub(super) fn cpu_busy_pct(before: &[u64], after: &[u64], wall: Duration) -> Vec<f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let wall_ticks = wall.as_secs_f64() * ticks_per_second;
    (before.iter().zip(after))
        .map(|(idle0, idle1)| {
            let idle = idle1.saturating_sub(*idle0) as f64;
            (100.0 * (1.0 - idle / wall_ticks)).clamp(0.0, 100.0)
        })
        .collect()
}

/// CPU time every thread of a local process has run so far, in nanoseconds,
/// from the scheduler's own clock (`/proc/PID/task/*/schedstat`), which is
/// exact where the tick-sampled times in `/proc/PID/stat` are not.
pub(super) fn process_cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let schedstat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += schedstat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}
