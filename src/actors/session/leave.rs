//! How a session's end is closed and logged: a client that stopped reading
//! is reset, a failure gets its log line, and a failed write at shutdown is
//! the shutdown's cut. (A refused PROXY header and a failed TLS handshake
//! are logged by the registry, which throttles them: a connect flood of
//! either must not flood the log.)

use std::io;

use kv_log_macro::{debug, warn};

use super::Session;
use crate::messages::LeaveReason;

impl Session {
    /// Closes the connection as `end` requires (the last words and their
    /// lingering close are already done), logs what only the session knows,
    /// and says how the session ended.
    pub(super) fn close(&self, end: LeaveReason) -> LeaveReason {
        let peer = log::kv::Value::from_display(&self.peer);
        match &end {
            LeaveReason::NotReading { .. } => {
                // Nothing more can reach this client: reset, do not linger.
                self.socket.reset_on_close();
                warn!("client not reading: cut", {
                    client_id: self.id,
                    peer: peer,
                    reason: log::kv::Value::from_display(&end),
                });
            }
            // Closed by an operator while a write to it waited: reset, as
            // above; nothing more would reach it.
            LeaveReason::Operator { told: false } => self.socket.reset_on_close(),
            LeaveReason::Io(e) if self.context.cut.is_triggered() => {
                debug!("session cut", { client_id: self.id, error: log::kv::Value::from_display(e) });
                return LeaveReason::Cut;
            }
            LeaveReason::Io(e) => {
                // A peer that resets or vanishes is routine, not the server's
                // trouble: info. Anything else is worth a look.
                let routine = matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::BrokenPipe
                );
                let level = if routine {
                    log::Level::Info
                } else {
                    log::Level::Warn
                };
                kv_log_macro::log!(level, "session failed", {
                    client_id: self.id,
                    peer: peer,
                    error: log::kv::Value::from_display(e),
                });
            }
            _ => {}
        }
        end
    }
}
