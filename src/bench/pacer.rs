//! The pacer of a run with `--rate`: it releases messages to the
//! connections at the offered load, round robin, so that servers can be
//! compared under the very same load.
//!
//! The [`Schedule`] says when each message is due: at the pacer's first
//! tick at or after its turn at the offered rate. The pacer releases it
//! then, and a connection reads its own messages' due times off the same
//! schedule, so latency is measured from when a message was due, not from
//! when a slow server let it be written (no coordinated omission).
//!
//! The pacer wakes only on a tick that has a message due: at most once per
//! [`PACER_TICK`], and at low rates once per message.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::future::poll_fn;
use futures::task::AtomicWaker;
use futures::{FutureExt, select_biased};

use crate::rt::sleep_until;
use crate::shutdown::Shutdown;

/// How often the pacer may release messages. One timer for the whole run,
/// not one per message: a timer per message would cost the bench more than
/// the messages themselves at high rates.
const PACER_TICK: Duration = Duration::from_micros(250);

/// When each message of a paced run is due: message `m` of the run (counted
/// over all connections, dealt round robin) at the first [`PACER_TICK`] at
/// or after `(m + 1) / rate` from the start.
#[derive(Debug, Clone, Copy)]
pub(super) struct Schedule {
    started: Instant,
    rate: f64,
    connections: u64,
}

impl Schedule {
    /// `rate` messages a second from `started`, over `connections`.
    pub(super) fn new(started: Instant, rate: f64, connections: usize) -> Schedule {
        Schedule {
            started,
            rate,
            connections: connections.max(1) as u64,
        }
    }

    /// How long after the start message `message` of the run is due: a
    /// whole number of ticks, in nanoseconds.
    fn due_ns(&self, message: u64) -> u64 {
        let tick = PACER_TICK.as_nanos() as u64;
        let turn = ((message as f64 + 1.0) * 1e9 / self.rate).ceil() as u64;
        turn.div_ceil(tick).saturating_mul(tick)
    }

    /// When message `seq` of connection `connection` (its `seq`th release)
    /// is due.
    pub(super) fn due(&self, connection: usize, seq: u64) -> Instant {
        let message = seq.saturating_mul(self.connections) + connection as u64;
        self.started + Duration::from_nanos(self.due_ns(message))
    }
}

/// How a paced run tells a connection it may send: the pacer counts the
/// messages it has released to the connection and wakes it.
#[derive(Default)]
pub(super) struct Credits {
    released: AtomicU64,
    waker: AtomicWaker,
}

impl Credits {
    /// Whether more than `sent` messages have been released.
    pub(super) fn beyond(&self, sent: u64) -> bool {
        self.released.load(Ordering::Acquire) > sent
    }

    /// Completes once more than `sent` messages have been released.
    pub(super) async fn released_beyond(&self, sent: u64) {
        poll_fn(|cx| {
            if self.beyond(sent) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // A release between the check and the registration would be lost.
            if self.beyond(sent) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// Releases messages on `schedule`, round robin over `credits`, until
/// `stop`.
pub(super) async fn release(credits: Vec<Arc<Credits>>, schedule: Schedule, stop: Shutdown) {
    let tick = PACER_TICK.as_nanos() as u64;
    let mut released = 0;
    let mut stopped = pin!(stop.wait().fuse());
    loop {
        // The tick this wake-up is for (a late wake-up releases all it missed).
        let elapsed = schedule.started.elapsed().as_nanos() as u64;
        let this_tick = elapsed / tick * tick;
        while schedule.due_ns(released) <= this_tick {
            let credits = &credits[(released % credits.len() as u64) as usize];
            credits.released.fetch_add(1, Ordering::Release);
            credits.waker.wake();
            released += 1;
        }
        // A later tick than this one, so the loop never spins.
        let next = schedule.started + Duration::from_nanos(schedule.due_ns(released));
        select_biased! {
            _ = stopped => return,
            _ = sleep_until(Some(next)).fuse() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_message_is_due_at_the_first_tick_after_its_turn() {
        let started = Instant::now();
        let tick = PACER_TICK.as_nanos() as u64;
        let schedule = Schedule::new(started, 3000.0, 7);
        // Connection 2's second message is the run's tenth (7 + 2 + 1 = 10):
        // its turn is at 3.33 ms, and the tick after that at 3.5 ms.
        assert_eq!(schedule.due(2, 1), started + Duration::from_micros(3500));
        let mut last = 0;
        for message in 0..10_000u64 {
            let due = schedule.due_ns(message);
            let turn = (message + 1) as f64 * 1e9 / 3000.0;
            assert_eq!(due % tick, 0, "on a tick");
            assert!(due as f64 >= turn && (due - tick) as f64 <= turn + 1.0);
            assert!(due >= last, "in order");
            last = due;
        }
        // Faster than the ticks: several messages share one.
        let fast = Schedule::new(started, 10_000.0, 1);
        assert_eq!(fast.due_ns(0), tick);
        assert_eq!(fast.due_ns(1), tick);
        assert_eq!(fast.due_ns(2), 2 * tick);
    }
}
