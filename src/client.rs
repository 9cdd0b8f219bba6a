//! The client: a supervisor restarting connection actors, wired together.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use crate::actors::connection::Connection;
use crate::actors::supervisor::Supervisor;
use crate::shutdown::Shutdown;

pub use crate::actors::connection::{ConnectionConfig, LineSink};
pub use crate::actors::supervisor::{ClientSummary, Outcome, SupervisorConfig};
pub use crate::tls::{ClientTls, TlsError};

/// Everything a client can be tuned with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Where and how each connection connects.
    pub connection: ConnectionConfig,
    /// What the supervisor sends, and how it restarts connections.
    pub supervisor: SupervisorConfig,
}

impl ClientConfig {
    /// The CLI's defaults, for `addr` (`host:port`).
    pub fn new(addr: impl Into<String>) -> ClientConfig {
        ClientConfig {
            connection: ConnectionConfig {
                addr: addr.into(),
                timeout: Duration::from_secs(10),
                tls: None,
            },
            supervisor: SupervisorConfig::default(),
        }
    }
}

/// Runs the client until `--count` replies, `shutdown`, or giving up; every
/// line the server sends goes to `sink`.
pub async fn run(config: ClientConfig, shutdown: Shutdown, sink: LineSink) -> ClientSummary {
    let connection = Arc::new(config.connection);
    let start = Box::new(move |start| {
        Connection::new(connection.clone(), sink.clone(), start)
            .run()
            .boxed()
    });
    Supervisor::new(config.supervisor, start)
        .run(shutdown)
        .await
}
