//! What the registry is tuned with.

use std::time::Duration;

use super::per_ip::{self, PerIpLimits};

/// The registry's part of the server's configuration; `Default` gives the
/// CLI's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Connections held at once, clients and those still awaiting their
    /// PROXY header; one more is turned away (`--max-clients`).
    pub max_clients: usize,
    /// How often to log the snapshot's summary line (its client lines come
    /// on SIGUSR1 only); `None`: never (`--registry-interval`).
    pub snapshot_interval: Option<Duration>,
    /// Close clients silent this long; `None`: never (`--idle-timeout`).
    pub idle_timeout: Option<Duration>,
    /// Clients and connects per address (`--max-clients-per-ip`,
    /// `--connect-rate-per-ip`); off by default.
    pub per_ip: PerIpLimits,
}

impl Default for RegistryConfig {
    fn default() -> RegistryConfig {
        RegistryConfig {
            max_clients: 10_000,
            snapshot_interval: Some(Duration::from_secs(30)),
            idle_timeout: Some(Duration::from_secs(300)),
            per_ip: PerIpLimits::default(),
        }
    }
}

impl RegistryConfig {
    /// How often to look for idle clients: a quarter of the timeout, so a
    /// client is closed between 1 and 1.25 idle timeouts after its last input
    /// (never more often than every 10 ms, never less often than every second).
    /// With a connect rate per address, also at least every
    /// [`per_ip::PRUNE_EVERY`], to drop the addresses whose bucket is full.
    pub(super) fn sweep_interval(&self) -> Option<Duration> {
        let idle = self
            .idle_timeout
            .map(|idle| (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)));
        let prune = self.per_ip.connect_rate.map(|_| per_ip::PRUNE_EVERY);
        idle.into_iter().chain(prune).min()
    }
}
