//! The server: wires the acceptor, the registry and the sessions together and
//! runs the shutdown sequence.
//!
//! Shutdown order: the shutdown signal stops the acceptor (no new clients) →
//! the registry closes every session's outbox, which tells the session to
//! answer what it read, send the notice and close → the server waits for the
//! registry to count zero clients, for at most the shutdown timeout → `cut`
//! stops any session still writing → the registry logs its final snapshot
//! and stops.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kv_log_macro::{info, warn};

use crate::actors::acceptor::Acceptor;
use crate::actors::registry::{Registry, RegistryConfig, RegistryHandle};
use crate::actors::session::{SessionConfig, SessionSignals};
use crate::messages::Snapshot;
use crate::rt::{JoinHandle, ServerListener, within};
use crate::shutdown::{self, Shutdown};

/// Connections the kernel queues for the acceptor; it caps this at
/// `net.core.somaxconn`. std's fixed 128 drops SYNs under a burst of connects,
/// which clients only retry after a second.
const LISTEN_BACKLOG: i32 = 4096;

/// Binds a listener on `addr` (resolved now; the first address that binds wins),
/// with address reuse and a deep accept backlog.
pub fn bind(addr: &str) -> io::Result<ServerListener> {
    use socket2::{Domain, Socket, Type};
    use std::net::ToSocketAddrs;
    let mut last_error = io::Error::new(io::ErrorKind::InvalidInput, "no address to bind");
    for addr in addr.to_socket_addrs()? {
        let bound = Socket::new(Domain::for_address(addr), Type::STREAM, None).and_then(|socket| {
            socket.set_reuse_address(true)?;
            socket.bind(&addr.into())?;
            socket.listen(LISTEN_BACKLOG)?;
            ServerListener::new(std::net::TcpListener::from(socket))
        });
        match bound {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}

/// How long cut sessions get to report to the registry before it stops anyway.
const CUT_GRACE: Duration = Duration::from_millis(100);

/// Everything a server can be tuned with; `Default` gives the CLI defaults.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub session: SessionConfig,
    pub max_clients: usize,
    /// Close clients that send nothing for this long; `None` never.
    pub idle_timeout: Option<Duration>,
    /// `None` turns the periodic snapshot off.
    pub registry_interval: Option<Duration>,
    pub shutdown_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            session: SessionConfig {
                max_line: 64 * 1024,
                fragment_timeout: Some(Duration::from_millis(200)),
            },
            idle_timeout: Some(Duration::from_secs(300)),
            max_clients: 10_000,
            registry_interval: Some(Duration::from_secs(30)),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

/// How a server run ended.
#[derive(Debug)]
pub struct ServerSummary {
    pub accepted: u64,
    /// Clients connected when shutdown began.
    pub at_shutdown: usize,
    /// Clients still connected when the shutdown timeout ran out.
    pub cut: usize,
    /// The registry's final snapshot.
    pub last: Snapshot,
}

/// A server bound to its listener, with its registry running.
pub struct Server {
    listener: ServerListener,
    config: ServerConfig,
    registry: RegistryHandle,
    registry_task: JoinHandle<()>,
}

impl Server {
    /// Starts the registry; the server accepts once [`run`](Server::run) is awaited.
    pub fn new(listener: ServerListener, config: ServerConfig) -> Server {
        let (registry, registry_task) = Registry::spawn(RegistryConfig {
            max_clients: config.max_clients,
            snapshot_interval: config.registry_interval,
            idle_timeout: config.idle_timeout,
        });
        Server {
            listener,
            config,
            registry,
            registry_task,
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.get_ref().local_addr()
    }

    /// A handle to this server's registry (snapshots, waiting on counts).
    pub fn registry(&self) -> RegistryHandle {
        self.registry.clone()
    }

    /// Serves until `shutdown` fires, then shuts down in order.
    pub async fn run(self, shutdown: Shutdown) -> ServerSummary {
        match self.local_addr() {
            Ok(addr) => info!("listening", { addr: log::kv::Value::from_display(&addr) }),
            Err(e) => info!("listening", { addr_error: log::kv::Value::from_display(&e) }),
        }
        let (cut_trigger, cut) = shutdown::channel();
        let signals = SessionSignals { cut };
        let acceptor = Acceptor::new(
            self.listener,
            self.registry.clone(),
            Arc::new(self.config.session.clone()),
            signals,
        );
        let accepted = acceptor.run(shutdown).await;

        let at_shutdown = self.registry.snapshot().await.clients.len();
        info!("shutting down", { clients: at_shutdown });
        self.registry.drain().await;
        let timeout = self.config.shutdown_timeout;
        let drained = within(timeout, self.registry.wait_for_clients(0))
            .await
            .is_some();
        let mut cut_count = 0;
        if !drained {
            cut_count = self.registry.snapshot().await.clients.len();
            warn!("shutdown timeout: cutting remaining clients", { clients: cut_count });
            cut_trigger.trigger();
            // Best effort: a cut session reports at once unless its task is starved.
            let _ = within(CUT_GRACE, self.registry.wait_for_clients(0)).await;
        }
        let last = self.registry.stop().await;
        // The registry task ends right after answering `stop`.
        self.registry_task.await;
        info!("server stopped", {
            accepted: accepted,
            drained: at_shutdown - cut_count,
            cut: cut_count,
        });
        ServerSummary {
            accepted,
            at_shutdown,
            cut: cut_count,
            last,
        }
    }
}
