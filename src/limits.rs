//! Process limits: enough open files for the connections the user asks for,
//! a warning when there cannot be, and an allocator that gives long lines'
//! memory back.

use kv_log_macro::{info, warn};

/// Raises the soft open-files limit to the hard limit and logs both, so 10 000
/// clients work without the user tuning `ulimit -n`; returns the limit now in
/// force, if it could be read.
pub(crate) fn raise_open_files() -> Option<u64> {
    let before = rlimit::Resource::NOFILE.get().ok();
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => {
            let hard = before.map(|(_, hard)| hard).unwrap_or(soft);
            info!("open files limit", {
                soft: soft,
                hard: hard,
                soft_before: before.map(|(soft, _)| soft).unwrap_or(soft),
            });
            Some(soft)
        }
        Err(e) => {
            warn!("could not raise the open files limit", {
                error: log::kv::Value::from_display(&e),
            });
            before.map(|(soft, _)| soft)
        }
    }
}

/// Descriptors kept free beyond the clients and what is open at start: the
/// connections being turned away, and a few for the odd file (a certificate
/// reload) and the resolver.
const SPARE_DESCRIPTORS: u64 = duplex::server::TURNING_AWAY_MAX as u64 + 16;

/// How many clients `limit` open files can hold, given what is open now.
fn clients_within(limit: u64, open_now: u64) -> u64 {
    limit.saturating_sub(open_now + SPARE_DESCRIPTORS)
}

/// Says so at start when `--max-clients` is more than the open-files limit
/// lets the server hold, with the number it can hold: past it, accepting
/// fails (the acceptor waits and retries) instead of telling clients the
/// server is full.
pub(crate) fn check_max_clients(max_clients: usize, limit: Option<u64>) {
    let Some(limit) = limit else { return };
    // Listener, reactor, signal pipe, stdio...: counted, not guessed.
    let open_now = std::fs::read_dir("/proc/self/fd").map_or(16, |fds| fds.count() as u64);
    let can_hold = clients_within(limit, open_now);
    if max_clients as u64 > can_hold {
        warn!("--max-clients is more than the open files limit allows", {
            max_clients: max_clients,
            can_hold: can_hold,
            open_files_limit: limit,
            open_now: open_now,
            hint: "raise the limit (ulimit -n, LimitNOFILE=) or lower --max-clients",
        });
    }
}

/// Makes the allocator give back what long lines borrowed: blocks of 16 KiB
/// and more (a read buffer grown for a long line starts there, and a long
/// line's reply is one) are mapped on their own and unmapped when freed, so
/// that after a burst of long lines (or a crowd of clients that send them
/// and never read) the memory returns to the system instead of staying in
/// the heap. Without it, glibc's threshold rises with the first such block
/// freed, and 1,000 clients' 64 KiB lines stayed resident after they left
/// (docs/performance.md). Shorter buffers, and a few long ones, are kept in
/// per-thread pools (`buffers.rs`).
pub(crate) fn return_long_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt sets one of the allocator's tunables, under the
    // allocator's own locks; nothing else is touched.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 16 * 1024);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_a_limit_holds_leave_room_for_turn_aways_and_what_is_open() {
        assert_eq!(clients_within(20_000, 20), 20_000 - 20 - SPARE_DESCRIPTORS);
        assert_eq!(clients_within(50, 20), 0);
    }
}
