//! What sessions are tuned with, and what every session of one server shares.

use std::time::Duration;

use crate::actors::registry::RegistryHandle;
use crate::proxy::TrustedProxies;
use crate::shutdown::Shutdown;
use crate::tls::ServerTls;

/// The per-session part of the server's configuration; `Default` gives the
/// CLI's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Longest accepted message, in bytes (`--max-line`).
    pub max_line: usize,
    /// How long unterminated bytes wait before being taken as one message;
    /// `None` waits for the newline forever (`--fragment-timeout`).
    pub fragment_timeout: Option<Duration>,
    /// How long a write may wait for the client to take any of its bytes
    /// before the client is cut off; `None` waits forever (`--write-timeout`).
    pub write_timeout: Option<Duration>,
    /// How long a TLS handshake may take (`--handshake-timeout`).
    pub handshake_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig {
            max_line: 64 * 1024,
            fragment_timeout: Some(Duration::from_millis(200)),
            write_timeout: Some(Duration::from_secs(30)),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// What every session of one server shares.
#[derive(Debug)]
pub(crate) struct SessionContext {
    pub(crate) registry: RegistryHandle,
    pub(crate) config: SessionConfig,
    /// Stop now, even in the middle of a write (the shutdown timeout ran out).
    pub(crate) cut: Shutdown,
    /// Set: every client starts with a TLS handshake.
    pub(crate) tls: Option<ServerTls>,
    /// Set: every connection starts with a PROXY header, from one of these.
    pub(crate) proxy: Option<TrustedProxies>,
}
