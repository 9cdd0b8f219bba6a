//! The client: a supervisor restarting connection actors, wired together.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use crate::actors::connection::{Connection, ConnectionConfig, LineSink};
use crate::actors::supervisor::{Backoff, ClientSummary, Supervisor, SupervisorConfig};
use crate::shutdown::Shutdown;

/// Everything a client can be tuned with; `new` gives the CLI defaults.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port`; every address the host resolves to is tried in turn.
    pub addr: String,
    pub interval: Duration,
    /// Delay before a restart (the start of the growth when `backoff_max` is set).
    pub backoff: Duration,
    /// Turns on exponential backoff up to this delay.
    pub backoff_max: Option<Duration>,
    pub timeout: Duration,
    pub max_pending: usize,
    pub count: Option<u64>,
    pub max_restarts: Option<u32>,
    pub restart_window: Duration,
}

impl ClientConfig {
    /// The CLI defaults, for `addr`.
    pub fn new(addr: impl Into<String>) -> ClientConfig {
        ClientConfig {
            addr: addr.into(),
            interval: Duration::from_secs(2),
            backoff: Duration::from_secs(1),
            backoff_max: None,
            timeout: Duration::from_secs(10),
            max_pending: 1000,
            count: None,
            max_restarts: None,
            restart_window: Duration::from_secs(60),
        }
    }
}

/// Runs the client until `--count` replies, `shutdown`, or giving up.
pub async fn run(config: ClientConfig, shutdown: Shutdown, sink: LineSink) -> ClientSummary {
    let connection_config = Arc::new(ConnectionConfig {
        addr: config.addr.clone(),
        timeout: config.timeout,
        sink,
    });
    let backoff = match config.backoff_max {
        Some(max) => Backoff::exponential(config.backoff, max),
        None => Backoff::fixed(config.backoff),
    };
    let supervisor_config = SupervisorConfig {
        interval: config.interval,
        backoff,
        max_restarts: config.max_restarts,
        restart_window: config.restart_window,
        max_pending: config.max_pending,
        count: config.count,
    };
    let start = Box::new(move |start| {
        Connection::new(connection_config.clone(), start)
            .run()
            .boxed()
    });
    Supervisor::new(supervisor_config, start)
        .run(shutdown)
        .await
}
