//! Two ways to keep many lines from costing the server: long listings (a
//! snapshot's line per client) written off the executor, and a [`Throttle`]
//! for lines that could come thousands of times a second.

use std::io;
use std::sync::OnceLock;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use super::wait_for_room;

/// How often a [`Throttle`] lets a line through: often enough to see that
/// something goes on, rarely enough that a flood of it is a few lines.
const THROTTLE_EVERY: Duration = Duration::from_secs(5);

/// At most one log line per [`THROTTLE_EVERY`] for something that can happen
/// thousands of times a second (a full pending queue, refused clients, accept
/// errors): the line that is logged says how many were held back since the
/// last one (`suppressed`).
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// For one more occurrence: `Some(held back since the last line)` when
    /// it is to be logged, `None` when it is only counted.
    pub(crate) fn allow(&mut self) -> Option<u64> {
        if self.last.is_some_and(|at| at.elapsed() < THROTTLE_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// What became of a listing handed to [`log_in_background`].
#[derive(Debug)]
pub(crate) enum Listing {
    /// Its lines are being written.
    Queued,
    /// Skipped: earlier listings are still being written.
    Busy,
    /// Skipped: the listing thread could not be started, for this reason
    /// (said once, for the first listing; the caller logs it).
    NoThread(io::Error),
    /// Skipped: the listing thread could not be started (said before).
    StillNoThread,
}

/// Listings waiting for the listing thread besides the one it is writing.
const LISTINGS_QUEUED: usize = 1;

/// A listing for the listing thread: a closure that logs its lines.
type ListingJob = Box<dyn FnOnce() + Send>;

/// Logs one line per item with `log_one`, on a thread at the lowest
/// priority, so that a long listing never holds up the executor that serves
/// clients; between lines the thread waits while the log queue is over half
/// full, so the listing neither crowds other lines out nor loses its own.
/// Listings asked for faster than they can be written are skipped, never
/// held in memory without bound.
pub(crate) fn log_in_background<T: Send + 'static>(items: Vec<T>, log_one: fn(&T)) -> Listing {
    static LISTINGS: OnceLock<Option<SyncSender<ListingJob>>> = OnceLock::new();
    let mut failed = None;
    let listings =
        LISTINGS.get_or_init(|| spawn_listing_thread().map_err(|e| failed = Some(e)).ok());
    if let Some(e) = failed {
        return Listing::NoThread(e);
    }
    let Some(listings) = listings else {
        return Listing::StillNoThread;
    };
    match listings.try_send(Box::new(move || log_in_place(&items, log_one))) {
        Ok(()) => Listing::Queued,
        Err(TrySendError::Full(_)) => Listing::Busy,
        // The thread only ends if a listing panicked in it.
        Err(TrySendError::Disconnected(_)) => Listing::StillNoThread,
    }
}

/// Logs one line per item with `log_one` on the calling thread, waiting for
/// room in the log queue between lines as [`log_in_background`] does. It
/// blocks the thread, so only where nothing else waits on it: the listing
/// thread, and the final snapshot, when nothing is left to serve.
pub(crate) fn log_in_place<T>(items: &[T], log_one: fn(&T)) {
    for item in items {
        wait_for_room();
        log_one(item);
    }
}

/// Starts the thread that writes listings; it lives as long as the process.
///
/// A thread, not a task, and at the lowest priority (`SCHED_IDLE`): a long
/// listing takes tens of milliseconds of CPU and waits whenever the log queue
/// is half full, and neither may hold up the executor.
fn spawn_listing_thread() -> io::Result<SyncSender<ListingJob>> {
    let (listings, queue) = sync_channel::<ListingJob>(LISTINGS_QUEUED);
    let spawned = std::thread::Builder::new()
        .name("duplex-listing".into())
        .spawn(move || {
            // SCHED_IDLE: the scheduler hands the core to any other thread
            // that wakes (the executor, on a socket event) at once, where a
            // nice value only shrinks this thread's share. Failing that, the
            // lowest nice value. On Linux both apply to the calling thread;
            // if neither can be set, the lines are written all the same.
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: plain system calls on the calling thread; `param`
            // outlives the call.
            unsafe {
                if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
                    libc::setpriority(libc::PRIO_PROCESS, 0, 19);
                }
            }
            for listing in queue {
                listing();
            }
        });
    spawned.map(|_| listings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_lets_one_through_per_period_and_counts_the_rest() {
        let mut throttle = Throttle::default();
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!(throttle.allow(), None);
        assert_eq!(throttle.allow(), None);
        throttle.last = Some(Instant::now() - THROTTLE_EVERY);
        assert_eq!(throttle.allow(), Some(2));
        assert_eq!(throttle.allow(), None);
    }
}
