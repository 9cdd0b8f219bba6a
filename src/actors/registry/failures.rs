//! The registry's count of connections that failed their opening (a bad
//! PROXY header, a failed TLS handshake, a TLS client on a plain port) and
//! of health checks, and their log lines: each at most once per
//! [`Throttle`](crate::logging::Throttle) period, with how many were held
//! back, so that a flood of hostile openings is a few lines.

use std::net::SocketAddr;

use kv_log_macro::{info, warn};
use log::kv::Value;

use super::Registry;
use crate::messages::{ClientId, HandshakeFailure, LeaveReason};

impl Registry {
    /// Counts (and logs, throttled) how connection `id` from `peer` failed,
    /// if it did.
    pub(super) fn count_failure(&mut self, id: ClientId, peer: SocketAddr, reason: &LeaveReason) {
        self.tls_failed += u64::from(matches!(reason, LeaveReason::TlsFailed(_)));
        self.proxy_local += u64::from(matches!(reason, LeaveReason::ProxyLocal));
        if let LeaveReason::ProxyFailed(why) = reason {
            self.proxy_failed += 1;
            if let Some(suppressed) = self.proxy_warnings.allow() {
                warn!("PROXY header refused", {
                    client_id: id,
                    peer: Value::from_display(&peer),
                    reason: why.as_str(),
                    suppressed: suppressed,
                });
            }
        }
        if let LeaveReason::TlsOnPlain = reason {
            self.tls_on_plain += 1;
            if let Some(suppressed) = self.tls_on_plain_lines.allow() {
                info!("TLS client on a plain port: closed unanswered", {
                    client_id: id,
                    peer: Value::from_display(&peer),
                    suppressed: suppressed,
                });
            }
        }
        if let LeaveReason::TlsFailed(HandshakeFailure { reason, error }) = reason {
            if let Some(suppressed) = self.tls_failed_lines.allow() {
                let error = error.as_ref().map_or(String::new(), |e| e.to_string());
                info!("TLS handshake failed", {
                    client_id: id,
                    peer: Value::from_display(&peer),
                    reason: *reason,
                    error: error,
                    suppressed: suppressed,
                });
            }
        }
    }
}
