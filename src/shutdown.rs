//! A one-way "stop now" signal that any number of tasks can await.
//!
//! This is the async-std chat server's trick: a channel that never carries a
//! value. Calling [`ShutdownTrigger::trigger`] on any clone of the sender, or
//! dropping them all, closes it, and every clone of the receiver wakes up.

use crate::rt::{Receiver, Sender, bounded};

/// The uninhabited message type: nothing is ever sent, only closed.
enum Never {}

/// Fires the signal when triggered, or when every clone is dropped.
#[derive(Debug, Clone)]
pub struct ShutdownTrigger {
    sender: Sender<Never>,
}

/// A cloneable handle that completes [`wait`](Shutdown::wait) once triggered.
#[derive(Clone, Debug)]
pub struct Shutdown {
    /// `None` for [`Shutdown::never`].
    receiver: Option<Receiver<Never>>,
}

/// A fresh, untriggered signal.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (sender, receiver) = bounded(1);
    (
        ShutdownTrigger { sender },
        Shutdown {
            receiver: Some(receiver),
        },
    )
}

impl ShutdownTrigger {
    /// Fires the signal for everyone, whoever else holds a trigger.
    pub fn trigger(&self) {
        self.sender.close();
    }
}

impl Shutdown {
    /// A signal that never fires, for callers that stop by other means.
    pub fn never() -> Shutdown {
        Shutdown { receiver: None }
    }

    /// Completes once the signal has fired (immediately if it already has).
    pub async fn wait(&self) {
        match &self.receiver {
            // `recv` can only return Err(Closed): nothing is ever sent.
            Some(receiver) => {
                let _closed = receiver.recv().await;
            }
            None => futures::future::pending().await,
        }
    }

    /// Whether the signal has fired.
    pub fn is_triggered(&self) -> bool {
        self.receiver.as_ref().is_some_and(|r| r.is_closed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[async_std::test]
    async fn every_clone_wakes_when_the_trigger_drops() {
        let (trigger, shutdown) = channel();
        let other = shutdown.clone();
        let _kept = trigger.clone();
        assert!(!shutdown.is_triggered());
        trigger.trigger();
        shutdown.wait().await;
        other.wait().await;
        assert!(other.is_triggered());
    }
}
