//! The client's queue of messages that have not been acknowledged yet.
//!
//! Owned by whichever side is alive: the supervisor while disconnected, the
//! connection while connected (handed over in [`ConnectionStart`] and back in
//! [`ConnectionExit`]), so it is never shared behind a lock.
//!
//! [`ConnectionStart`]: crate::messages::ConnectionStart
//! [`ConnectionExit`]: crate::messages::ConnectionExit

use std::collections::VecDeque;

use crate::logging::Throttle;

/// One message waiting for its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(crate) text: String,
    /// Whether it has been written to some connection already; writing it
    /// again counts as a resend.
    pub(crate) written: bool,
}

/// A bounded FIFO of [`Pending`] messages that drops its oldest when full,
/// and counts what it sends, resends and drops.
#[derive(Debug)]
pub(crate) struct PendingQueue {
    items: VecDeque<Pending>,
    max: usize,
    /// First writes of a message.
    pub(crate) sent: u64,
    /// Writes of a message that had been written before.
    pub(crate) resent: u64,
    /// Messages dropped, oldest first, because the queue was full.
    pub(crate) dropped: u64,
    /// While the server is down every interval drops a message; at a short
    /// interval, a warning each would flood the log.
    drop_warnings: Throttle,
}

impl PendingQueue {
    /// An empty queue holding at most `max` (at least 1) messages.
    pub(crate) fn new(max: usize) -> PendingQueue {
        PendingQueue {
            items: VecDeque::new(),
            max: max.max(1),
            sent: 0,
            resent: 0,
            dropped: 0,
            drop_warnings: Throttle::default(),
        }
    }

    /// Queues a new message; drops (and logs) the oldest to make room when
    /// full, and returns it.
    pub(crate) fn push(&mut self, text: String) -> Option<Pending> {
        let dropped = if self.items.len() >= self.max {
            self.dropped += 1;
            self.items.pop_front()
        } else {
            None
        };
        if let Some(oldest) = &dropped {
            if let Some(suppressed) = self.drop_warnings.allow() {
                kv_log_macro::warn!("pending queue full: dropped oldest message", {
                    dropped: oldest.text.as_str(),
                    total_dropped: self.dropped,
                    suppressed: suppressed,
                });
            }
        }
        self.items.push_back(Pending {
            text,
            written: false,
        });
        dropped
    }

    /// Removes the oldest message whose text is `echo`; whether one was found.
    pub(crate) fn acknowledge(&mut self, echo: &[u8]) -> bool {
        match self.items.iter().position(|p| p.text.as_bytes() == echo) {
            Some(index) => {
                self.items.remove(index);
                true
            }
            None => false,
        }
    }

    /// Marks every queued message written, counting those that already were as
    /// resends, and returns them oldest first, for writing out.
    pub(crate) fn write_all(&mut self) -> impl Iterator<Item = &str> {
        for item in &mut self.items {
            if item.written {
                self.resent += 1;
            } else {
                self.sent += 1;
            }
            item.written = true;
        }
        self.items.iter().map(|p| p.text.as_str())
    }

    /// Marks the newest message written (it was just sent).
    pub(crate) fn mark_newest_written(&mut self) {
        if let Some(item) = self.items.back_mut().filter(|item| !item.written) {
            item.written = true;
            self.sent += 1;
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The queued texts, oldest first.
    #[cfg(test)]
    pub(crate) fn texts(&self) -> impl Iterator<Item = &str> {
        self.items.iter().map(|p| p.text.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_is_dropped_and_counted_when_full() {
        let mut queue = PendingQueue::new(2);
        assert_eq!(queue.push("a".into()), None);
        assert_eq!(queue.push("b".into()), None);
        let dropped = queue.push("c".into()).expect("full");
        assert_eq!(dropped.text, "a");
        assert_eq!(queue.texts().collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(queue.dropped, 1);
    }

    #[test]
    fn a_reply_acknowledges_the_oldest_match_only() {
        let mut queue = PendingQueue::new(10);
        for text in ["x", "y", "x"] {
            queue.push(text.into());
        }
        assert!(queue.acknowledge(b"x"));
        assert_eq!(queue.texts().collect::<Vec<_>>(), ["y", "x"]);
        assert!(!queue.acknowledge(b"z"));
        assert_eq!(queue.len(), 2);
    }

    #[test]
    fn writing_again_counts_as_a_resend() {
        let mut queue = PendingQueue::new(10);
        queue.push("a".into());
        queue.mark_newest_written();
        queue.push("b".into());
        assert_eq!(queue.write_all().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!((queue.sent, queue.resent), (2, 1));
        assert_eq!(queue.write_all().count(), 2);
        assert_eq!((queue.sent, queue.resent), (2, 3));
    }
}
