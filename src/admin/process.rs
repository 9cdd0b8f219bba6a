//! The process metrics Prometheus users expect (`process_…`, as the
//! official clients name them), read from `/proc/self` at each scrape:
//! Linux only; elsewhere they are left out of `/metrics`.

/// One reading of this process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Process {
    /// Descriptors open now (the reading's own included).
    pub(super) open_fds: u64,
    /// The soft limit on open descriptors.
    pub(super) max_fds: u64,
    /// Resident memory.
    pub(super) resident_bytes: u64,
    /// Virtual memory.
    pub(super) virtual_bytes: u64,
    /// User and system CPU time since start.
    pub(super) cpu_seconds: f64,
    /// When it started, in seconds since the Unix epoch.
    pub(super) start_time_seconds: f64,
}

/// Reads `/proc/self`; `None` where it cannot (not Linux).
pub(super) fn read() -> Option<Process> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses and may
    // hold spaces: field 3 (state) is the first.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let field = |number: usize| fields.get(number - 3)?.parse::<u64>().ok();
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
            libc::sysconf(libc::_SC_PAGESIZE).max(1) as u64,
        )
    };
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let (max_fds, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).ok()?;
    Some(Process {
        open_fds,
        max_fds,
        resident_bytes: field(24)? * page,
        virtual_bytes: field(23)?,
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        start_time_seconds: boot_time()? as f64 + field(22)? as f64 / ticks,
    })
}

/// When the machine booted, in seconds since the Unix epoch.
fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reads_as_running_now() {
        let Some(process) = read() else {
            return; // not Linux
        };
        assert!(process.open_fds >= 3 && process.open_fds <= process.max_fds);
        assert!(process.resident_bytes > 0 && process.virtual_bytes >= process.resident_bytes);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        assert!(process.start_time_seconds <= now + 1.0);
        assert!(process.start_time_seconds > now - 86_400.0 * 365.0);
    }
}
