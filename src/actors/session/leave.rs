//! How a session leaves: closing the connection as its end requires, the
//! log line that says why, and the registry's last word.

use std::io;

use kv_log_macro::{debug, info, warn};

use super::{Failure, Session};
use crate::messages::LeaveReason;

impl Session {
    /// Closes the connection as its end requires and tells the registry why.
    pub(super) async fn leave(mut self, served: Result<LeaveReason, Failure>) {
        let reason = match served {
            Err(Failure::Stalled(reason)) => {
                // Nothing more can reach this client: reset, do not linger.
                self.socket.reset_on_close();
                warn!("client not reading: cut", {
                    client_id: self.id,
                    peer: log::kv::Value::from_display(&self.peer),
                    reason: log::kv::Value::from_display(&reason),
                });
                reason
            }
            Ok(reason) => {
                if !matches!(reason, LeaveReason::PeerClosed) {
                    self.linger().await;
                }
                reason
            }
            Err(Failure::Cut) => LeaveReason::Cut,
            Err(Failure::Ended(reason)) => reason,
            Err(Failure::Proxy(why)) => {
                warn!("PROXY header refused", {
                    client_id: self.id,
                    peer: log::kv::Value::from_display(&self.peer),
                    reason: why.as_str(),
                });
                LeaveReason::ProxyFailed(why)
            }
            Err(Failure::Handshake(failure)) => {
                let error = failure
                    .error
                    .as_ref()
                    .map_or(String::new(), |e| e.to_string());
                info!("TLS handshake failed", {
                    client_id: self.id,
                    peer: log::kv::Value::from_display(&self.peer),
                    reason: failure.reason,
                    error: error,
                });
                LeaveReason::TlsFailed(failure)
            }
            Err(Failure::Io(e)) if self.context.cut.is_triggered() => {
                debug!("session cut", { client_id: self.id, error: log::kv::Value::from_display(&e) });
                LeaveReason::Cut
            }
            Err(Failure::Io(e)) => LeaveReason::Io(e),
        };
        if let LeaveReason::Io(e) = &reason {
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
                peer: log::kv::Value::from_display(&self.peer),
                error: log::kv::Value::from_display(e),
            });
        }
        self.context.registry.unregister(self.id, reason).await;
        self.left = true;
    }
}
