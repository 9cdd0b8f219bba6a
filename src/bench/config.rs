//! What a benchmark run is tuned with: [`BenchConfig`], the `--role bench`
//! flags as the library takes them.

use std::time::Duration;

use super::source::SourceAddrs;
use crate::tls::ClientTls;

/// Everything a benchmark run is tuned with; [`BenchConfig::new`] gives the
/// CLI's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchConfig {
    /// The server to load, `host:port` (`--addr`).
    pub addr: String,
    /// Connections to open (`--clients`).
    pub clients: usize,
    /// How long to measure, once every connection is greeted (`--duration`).
    pub duration: Duration,
    /// Messages in flight per connection; 0 holds connections idle (`--depth`).
    pub depth: usize,
    /// Bytes per message, at least the length of its unique id (`--size`).
    pub size: usize,
    /// Offered load in messages per second over all connections, released
    /// round robin (each connection still keeps at most `depth` in flight);
    /// `None` sends the next message as soon as a reply frees a slot
    /// (`--rate`).
    pub rate: Option<f64>,
    /// New connections per second while connecting (`--connect-rate`).
    pub connect_rate: u32,
    /// Show a progress bar (only drawn on a terminal; off with `--json`).
    pub progress: bool,
    /// A local server process to read memory and CPU time from
    /// (`--server-pid`).
    pub server_pid: Option<u32>,
    /// Set: every connection speaks TLS (`--tls`, `--tls-ca`).
    pub tls: Option<ClientTls>,
    /// Every connection sends exactly one message, once all are connected,
    /// and the run ends when every reply is in (or at `duration`);
    /// `depth` is then 1 (`--once`).
    pub once: bool,
    /// Local addresses to connect from, round robin; `None` leaves the
    /// choice to the kernel (`--source-addrs`).
    pub source_addrs: Option<SourceAddrs>,
    /// Threads that drive the connections, one per core, each with its own
    /// share of them (`--threads`).
    pub threads: usize,
}

impl BenchConfig {
    /// The CLI's defaults, against `addr`.
    pub fn new(addr: impl Into<String>) -> BenchConfig {
        BenchConfig {
            addr: addr.into(),
            clients: 50,
            duration: Duration::from_secs(10),
            depth: 1,
            size: 16,
            rate: None,
            connect_rate: 2000,
            progress: true,
            server_pid: None,
            tls: None,
            once: false,
            source_addrs: None,
            threads: crate::server::available_cores(),
        }
    }
}
