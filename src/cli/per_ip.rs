//! The server's per-address flags (`--max-clients-per-ip`,
//! `--connect-rate-per-ip`, `--connect-burst-per-ip`), flattened into
//! [`Cli`](super::Cli).

use clap::Args;

use duplex::server::{ConnectRate, PerIpLimits};

use super::values::{positive_rate, positive_usize};

#[derive(Debug, Args)]
pub(crate) struct PerIpArgs {
    /// Clients one address may hold at once (an IPv6 address: its /64; behind
    /// --proxy-protocol, the address the header names); one more gets an
    /// error and is closed [default: no limit].
    #[arg(long, value_name = "N", value_parser = positive_usize, help_heading = "Server options")]
    max_clients_per_ip: Option<usize>,

    /// Connections per second one address may open, on average (counted as
    /// for --max-clients-per-ip); one more gets an error and is closed
    /// [default: no limit].
    #[arg(long, value_name = "R", value_parser = positive_rate, help_heading = "Server options")]
    connect_rate_per_ip: Option<f64>,

    /// Connections one address may open at once, after a quiet spell, under
    /// --connect-rate-per-ip [default: the rate rounded up, one second's worth].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), requires = "connect_rate_per_ip", help_heading = "Server options")]
    connect_burst_per_ip: Option<u32>,
}

impl PerIpArgs {
    /// The limits these flags ask for.
    pub(super) fn limits(&self) -> PerIpLimits {
        PerIpLimits {
            max_clients: self.max_clients_per_ip,
            connect_rate: self.connect_rate_per_ip.map(|rate| {
                // By default, one second's worth.
                let burst = (self.connect_burst_per_ip)
                    .unwrap_or_else(|| rate.ceil().min(u32::MAX as f64) as u32);
                ConnectRate::per_second(rate, burst)
            }),
            ..PerIpLimits::default()
        }
    }
}
