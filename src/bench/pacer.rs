//! The pacer of a run with `--rate`: it releases messages to the
//! connections at the offered load, round robin, so that servers can be
//! compared under the very same load.

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

/// How often the pacer releases messages. One timer for the whole run, not
/// one per message: a timer per message would cost the bench more than the
/// messages themselves.
const PACER_TICK: Duration = Duration::from_micros(250);

/// Releases `rate` messages per second from `started`, round robin over
/// `credits`, until `stop`.
pub(super) async fn release(
    credits: Vec<Arc<Credits>>,
    rate: f64,
    started: Instant,
    stop: Shutdown,
) {
    let mut released = 0;
    let mut stopped = pin!(stop.wait().fuse());
    loop {
        let elapsed = started.elapsed();
        let due = (elapsed.as_secs_f64() * rate) as u64;
        for message in released..due {
            let credits = &credits[(message % credits.len() as u64) as usize];
            credits.released.fetch_add(1, Ordering::Release);
            credits.waker.wake();
        }
        released = due;
        let ticks = elapsed.as_nanos() / PACER_TICK.as_nanos() + 1;
        let next_tick = started + Duration::from_nanos((ticks * PACER_TICK.as_nanos()) as u64);
        select_biased! {
            _ = stopped => return,
            _ = sleep_until(Some(next_tick)).fuse() => {}
        }
    }
}
