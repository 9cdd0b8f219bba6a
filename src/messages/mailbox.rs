//! A session's inbox: a one-slot mailbox that only the registry posts to and
//! only the session reads.
//!
//! It does what a bounded(1) channel of [`SessionCommand`]s did, at a small
//! fraction of the cost: an async-channel's cache-padded queue and its event
//! listener were a large part of what an idle client cost (valgrind's DHAT).
//! This is one atomic word and one waker, inside the [`SessionLink`] the
//! registry and the session already share.
//!
//! Same rules as the channel: a post finds the slot full or the mailbox
//! closed and fails (the registry tries again at its next sweep); closing it
//! (the server's drain) lets a command already posted be read first, then
//! reads as `None` for good.
//!
//! [`SessionLink`]: super::SessionLink

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use futures::future::poll_fn;
use futures::task::AtomicWaker;

use super::SessionCommand;

/// The slot holds a `CloseIdle`.
const CLOSE_IDLE: u8 = 1;
/// Closed: nothing more can be posted.
const CLOSED: u8 = 2;
/// The slot holds a `CloseByOperator`.
const CLOSE_BY_OPERATOR: u8 = 4;
/// Either command: what the slot holds.
const SLOT: u8 = CLOSE_IDLE | CLOSE_BY_OPERATOR;

/// The mailbox; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Mailbox {
    state: AtomicU8,
    waker: AtomicWaker,
}

impl Mailbox {
    /// Posts `command` unless the slot is taken or the mailbox is closed;
    /// whether it was posted. Never waits.
    pub(crate) fn post(&self, command: SessionCommand) -> bool {
        let held = match command {
            SessionCommand::CloseIdle => CLOSE_IDLE,
            SessionCommand::CloseByOperator => CLOSE_BY_OPERATOR,
        };
        let posted = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                (state == 0).then_some(held)
            })
            .is_ok();
        if posted {
            self.waker.wake();
        }
        posted
    }

    /// Closes the mailbox: the reader gets what was posted, then `None`.
    pub(crate) fn close(&self) {
        self.state.fetch_or(CLOSED, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Whether it is closed.
    #[cfg(test)]
    pub(crate) fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) & CLOSED != 0
    }

    /// The next command, or `None` once the mailbox is closed and empty. For
    /// the one task that reads it; each call waits anew, so it works inside
    /// `select!` loops (nothing is lost when it is dropped unfinished).
    pub(crate) fn recv(&self) -> impl Future<Output = Option<SessionCommand>> + '_ {
        poll_fn(move |cx| self.poll_recv(cx))
    }

    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<SessionCommand>> {
        if let Some(taken) = self.try_recv() {
            return Poll::Ready(taken);
        }
        self.waker.register(cx.waker());
        // Again, after registering: a post in between would be missed.
        match self.try_recv() {
            Some(taken) => Poll::Ready(taken),
            None => Poll::Pending,
        }
    }

    /// `Some(Some(command))` when one was posted, `Some(None)` when closed
    /// and empty, `None` when there is nothing yet.
    pub(crate) fn try_recv(&self) -> Option<Option<SessionCommand>> {
        let before = self.state.fetch_and(!SLOT, Ordering::AcqRel);
        if before & CLOSE_IDLE != 0 {
            Some(Some(SessionCommand::CloseIdle))
        } else if before & CLOSE_BY_OPERATOR != 0 {
            Some(Some(SessionCommand::CloseByOperator))
        } else if before & CLOSED != 0 {
            Some(None)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn a_post_fills_the_one_slot_until_it_is_read() {
        let mailbox = Mailbox::default();
        assert!(mailbox.recv().now_or_never().is_none(), "nothing yet");
        assert!(mailbox.post(SessionCommand::CloseIdle));
        assert!(!mailbox.post(SessionCommand::CloseIdle), "the slot is full");
        assert!(matches!(
            mailbox.recv().now_or_never(),
            Some(Some(SessionCommand::CloseIdle))
        ));
        assert!(mailbox.recv().now_or_never().is_none(), "read once");
        assert!(
            mailbox.post(SessionCommand::CloseIdle),
            "the slot is free again"
        );
    }

    #[test]
    fn closing_delivers_what_was_posted_then_none_for_good() {
        let mailbox = Mailbox::default();
        assert!(mailbox.post(SessionCommand::CloseIdle));
        mailbox.close();
        assert!(mailbox.is_closed());
        assert!(!mailbox.post(SessionCommand::CloseIdle), "closed");
        assert!(matches!(
            mailbox.recv().now_or_never(),
            Some(Some(SessionCommand::CloseIdle))
        ));
        for _ in 0..2 {
            assert!(matches!(mailbox.recv().now_or_never(), Some(None)));
        }
    }

    #[test]
    fn an_operator_close_takes_the_slot_as_an_idle_close_does() {
        let mailbox = Mailbox::default();
        assert!(mailbox.post(SessionCommand::CloseByOperator));
        assert!(!mailbox.post(SessionCommand::CloseIdle), "the slot is full");
        assert!(matches!(
            mailbox.try_recv(),
            Some(Some(SessionCommand::CloseByOperator))
        ));
        assert!(mailbox.try_recv().is_none(), "read once");
    }

    #[async_std::test]
    async fn a_waiting_reader_is_woken_by_a_post_from_another_task() {
        let link = std::sync::Arc::new(Mailbox::default());
        let poster = link.clone();
        let posted = crate::rt::spawn(async move {
            crate::rt::sleep(std::time::Duration::from_millis(20)).await;
            poster.post(SessionCommand::CloseIdle)
        });
        assert!(matches!(link.recv().await, Some(SessionCommand::CloseIdle)));
        assert!(posted.await);
    }
}
