//! The server's admin flags (`--admin-addr`, `--admin-token-file`,
//! `--drain-delay`), flattened into [`Cli`](super::Cli).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use duplex::server::AdminConfig;

use super::values::{duration, host_port};

#[derive(Debug, Args)]
pub(crate) struct AdminArgs {
    /// Serve the admin HTTP interface on this address: /metrics
    /// (Prometheus), /healthz, /readyz, /clients [default: off]. An address
    /// other hosts can reach needs --admin-token-file.
    #[arg(long, value_name = "HOST:PORT", value_parser = host_port, help_heading = "Server options")]
    admin_addr: Option<String>,

    /// A file holding the bearer token the admin interface then asks for
    /// (every endpoint but /healthz and /readyz); DELETE /clients/ID needs
    /// one in any case.
    #[arg(
        long,
        value_name = "PATH",
        requires = "admin_addr",
        help_heading = "Server options"
    )]
    admin_token_file: Option<PathBuf>,

    /// On Ctrl-C/SIGTERM, how long /readyz answers 503 while the server
    /// still accepts, before the drain begins: a balancer polling /readyz
    /// stops sending new clients first.
    #[arg(long, default_value = "0", value_parser = duration, value_name = "DURATION", allow_hyphen_values = true, help_heading = "Server options")]
    pub(super) drain_delay: Duration,
}

impl AdminArgs {
    /// The admin server these flags ask for, if any.
    pub(super) fn config(&self) -> Option<AdminConfig> {
        self.admin_addr.clone().map(|addr| AdminConfig {
            addr,
            token_file: self.admin_token_file.clone(),
        })
    }
}
