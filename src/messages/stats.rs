//! A session's counters, which the session bumps and the registry reads:
//! the one piece of shared state on the per-message path, and lock-free.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::Counts;

/// Counters a session bumps itself, once per batch of lines; the registry only
/// reads them (an `Arc` of them travels in [`RegistryMsg::Register`](super::RegistryMsg::Register)). This is
/// what keeps the registry off the per-message path.
///
/// They also record when the client last sent anything, which is how the
/// registry finds idle clients without a timer per session.
#[derive(Debug)]
pub(crate) struct SessionStats {
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Milliseconds since [`epoch`] of the last input (or of the connect).
    last_input_ms: AtomicU64,
}

/// The process-wide origin for the millisecond timestamps in [`SessionStats`].
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn millis_since_epoch(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_millis() as u64
}

impl Default for SessionStats {
    fn default() -> SessionStats {
        SessionStats {
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            last_input_ms: AtomicU64::new(millis_since_epoch(Instant::now())),
        }
    }
}

impl SessionStats {
    /// Records bytes read at `at` and the messages framed from them.
    pub(crate) fn received(&self, messages: u64, bytes: u64, at: Instant) {
        self.messages_in.fetch_add(messages, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
        self.last_input_ms
            .store(millis_since_epoch(at), Ordering::Relaxed);
    }

    /// Counts `messages` more from the input last recorded by
    /// [`received`](Self::received).
    pub(crate) fn received_more(&self, messages: u64) {
        self.messages_in.fetch_add(messages, Ordering::Relaxed);
    }

    /// Whether the client has sent nothing yet: its next read is its first.
    pub(crate) fn nothing_received(&self) -> bool {
        self.bytes_in.load(Ordering::Relaxed) == 0
    }

    /// How long before `now` the client last sent anything (or connected).
    pub(crate) fn idle_for(&self, now: Instant) -> Duration {
        let last = self.last_input_ms.load(Ordering::Relaxed);
        Duration::from_millis(millis_since_epoch(now).saturating_sub(last))
    }

    /// Records replies written and their bytes.
    pub(crate) fn sent(&self, messages: u64, bytes: u64) {
        self.messages_out.fetch_add(messages, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The counters now.
    pub(crate) fn counts(&self) -> Counts {
        Counts {
            messages_in: self.messages_in.load(Ordering::Relaxed),
            messages_out: self.messages_out.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        }
    }
}
