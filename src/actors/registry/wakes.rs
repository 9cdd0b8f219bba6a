//! What the registry wakes: sessions of clients idle for the timeout
//! (told to close, from the periodic sweep), and those waiting for a count
//! of connections ([`RegistryMsg::WaitForCount`](crate::messages::RegistryMsg)).

use std::time::Instant;

use kv_log_macro::info;

use super::Registry;
use crate::messages::SessionCommand;

impl Registry {
    /// Tells every client idle for the timeout (as of `now`) to close.
    pub(super) fn close_idle(&mut self, now: Instant) {
        let Some(idle_timeout) = self.config.idle_timeout else {
            return;
        };
        for (id, entry) in &mut self.clients {
            if entry.closing_idle || entry.link.stats.idle_for(now) < idle_timeout {
                continue;
            }
            // A full inbox is tried again at the next sweep; a closed one
            // belongs to a session whose leave is on its way.
            if entry.link.inbox.post(SessionCommand::CloseIdle) {
                entry.closing_idle = true;
                info!("closing idle client", {
                    client_id: *id,
                    idle_ms: entry.link.stats.idle_for(now).as_millis() as u64,
                });
            }
        }
    }

    pub(super) fn wake_waiters(&mut self) {
        let count = self.clients.len();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|(wanted, _)| *wanted == count);
        self.waiters = waiting;
        for (_, respond_to) in ready {
            // A waiter that gave up (timed out) does not need the answer.
            let _ = respond_to.send(());
        }
    }
}
