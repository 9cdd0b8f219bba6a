//! The server: wires the acceptor, the registry and the sessions together and
//! runs the shutdown sequence.
//!
//! Shutdown order: the shutdown signal turns `/readyz` unready at once, and
//! after `--drain-delay` stops the acceptor (no new clients) → the registry
//! closes every session's inbox, which tells the session to answer what it
//! read, send the notice and close → the server waits for the registry to
//! count zero clients, for at most the shutdown timeout → `cut` stops any
//! session still writing → the admin server, if any, stops → the registry
//! logs its final snapshot and stops.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use kv_log_macro::{info, warn};

use crate::actors::acceptor;
use crate::actors::registry::Registry;
use crate::actors::session::SessionContext;
use crate::admin::{AdminServer, Draining};
use crate::rt::{Cores, JoinHandle, sleep, spawn, within};
use crate::shutdown::{self, Shutdown};
use crate::tls::{CERTIFICATE_CHECK_INTERVAL, ServerTls};

pub use crate::actors::registry::{
    ConnectRate, PerIpCounts, PerIpLimits, RESTING_MAX, RegistryConfig, RegistryHandle,
};
pub use crate::admin::{AdminConfig, AdminError};

/// Connections the server may hold open beyond its admitted clients: those
/// it is telling, at once, that it is full (more are closed unanswered).
/// Each holds a file descriptor, as a client does.
pub const TURNING_AWAY_MAX: usize = crate::actors::acceptor::TURN_AWAYS_MAX;
pub use crate::actors::session::SessionConfig;
pub use crate::messages::{ClientId, ClientInfo, Counts, Snapshot};
pub use crate::proxy::TrustedProxies;
pub use crate::tls::{Reloaded, TlsError, TlsFiles, TlsReloader};

/// The version the `listening` line names (as `duplex --version` does).
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long cut sessions get to report to the registry before it stops anyway.
const CUT_GRACE: Duration = Duration::from_millis(100);

/// Everything a server can be tuned with; `Default` gives the CLI's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// What each session is tuned with.
    pub session: SessionConfig,
    /// What the registry is tuned with.
    pub registry: RegistryConfig,
    /// On shutdown, how long clients get to receive their last replies
    /// before they are cut off (`--shutdown-timeout`).
    pub shutdown_timeout: Duration,
    /// Set: clients must speak TLS, with this certificate (`--tls-cert`,
    /// `--tls-key`).
    pub tls: Option<TlsFiles>,
    /// Set: every connection starts with a PROXY header (v1 or v2), and only
    /// these addresses may send one (`--proxy-protocol`, `--trusted-proxies`).
    pub proxy_protocol: Option<TrustedProxies>,
    /// Bind with SO_REUSEPORT, so a new server can listen on the same port
    /// while this one drains (`--reuse-port`); each core then has a
    /// listener of its own.
    pub reuse_port: bool,
    /// Threads that accept and serve connections, one per core
    /// (`--threads`; at least 1, at most [`MAX_THREADS`]).
    pub threads: usize,
    /// Set: serve the admin HTTP interface (`--admin-addr`,
    /// `--admin-token-file`).
    pub admin: Option<AdminConfig>,
    /// On shutdown, how long to keep accepting after `/readyz` turns 503,
    /// before the drain begins (`--drain-delay`).
    pub drain_delay: Duration,
}

pub use crate::rt::MAX_THREADS;

/// The cores available to this process (its CPU affinity and quota), the
/// default for `--threads`.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            session: SessionConfig::default(),
            registry: RegistryConfig::default(),
            shutdown_timeout: Duration::from_secs(5),
            tls: None,
            proxy_protocol: None,
            reuse_port: false,
            threads: available_cores(),
            admin: None,
            drain_delay: Duration::ZERO,
        }
    }
}

/// How a server run ended.
#[derive(Debug)]
pub struct ServerSummary {
    /// Connections accepted, admitted or not.
    pub accepted: u64,
    /// Connections held when shutdown began (clients, and any awaiting
    /// their PROXY header: they are drained too).
    pub at_shutdown: usize,
    /// Connections still held when the shutdown timeout ran out.
    pub cut: usize,
    /// The registry's final snapshot.
    pub last: Snapshot,
}

/// Why a server could not start.
#[derive(Debug)]
pub enum StartError {
    /// The TLS certificate or key did not load.
    Tls(TlsError),
    /// The address could not be bound.
    Listen(io::Error),
    /// The threads that serve connections did not start.
    Threads(io::Error),
    /// The admin server could not start.
    Admin(AdminError),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Tls(e) => write!(f, "cannot load the TLS certificate: {e}"),
            StartError::Listen(e) => write!(f, "cannot listen: {e}"),
            StartError::Threads(e) => write!(f, "cannot start the server's threads: {e}"),
            StartError::Admin(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for StartError {}

/// A server bound to its listeners, with its registry and its cores running.
pub struct Server {
    /// One, shared by the cores; or, with `--reuse-port`, one per core.
    listeners: Vec<TcpListener>,
    cores: Cores,
    config: ServerConfig,
    tls: Option<ServerTls>,
    registry: RegistryHandle,
    registry_task: JoinHandle<()>,
    admin: Option<AdminServer>,
}

impl Server {
    /// Loads the TLS certificate, if any, binds `addr` (`host:port`,
    /// resolved now; the first address that binds wins) and starts the
    /// registry; the server accepts once [`run`](Server::run) is awaited.
    pub fn bind(addr: &str, config: ServerConfig) -> Result<Server, StartError> {
        let tls = (config.tls.as_ref())
            .map(ServerTls::load)
            .transpose()
            .map_err(StartError::Tls)?;
        let admin = (config.admin.as_ref())
            .map(AdminServer::bind)
            .transpose()
            .map_err(StartError::Admin)?;
        let threads = config.threads.clamp(1, MAX_THREADS);
        let listeners =
            crate::net::bind(addr, config.reuse_port, threads).map_err(StartError::Listen)?;
        let cores = Cores::start(threads).map_err(StartError::Threads)?;
        let (registry, registry_task) = Registry::spawn(config.registry.clone());
        Ok(Server {
            listeners,
            cores,
            config,
            tls,
            registry,
            registry_task,
            admin,
        })
    }

    /// What replaces the certificate of a TLS server while it runs (SIGHUP).
    pub fn tls_reloader(&self) -> Option<TlsReloader> {
        self.tls.as_ref().map(ServerTls::reloader)
    }

    /// The address the server listens on (the real port, when bound to port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listeners[0].local_addr()
    }

    /// The address the admin server listens on, with `--admin-addr`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .and_then(|admin| admin.local_addr().ok())
    }

    /// A handle to this server's registry (snapshots, waiting on counts).
    pub fn registry(&self) -> RegistryHandle {
        self.registry.clone()
    }

    /// Serves until `shutdown` fires, then shuts down in order.
    pub async fn run(mut self, shutdown: Shutdown) -> ServerSummary {
        match self.local_addr() {
            Ok(addr) => info!("listening", {
                addr: log::kv::Value::from_display(&addr),
                tls: self.tls.is_some(),
                proxy_protocol: self.config.proxy_protocol.is_some(),
                reuse_port: self.config.reuse_port,
                threads: self.cores.len(),
                version: VERSION,
            }),
            Err(e) => info!("listening", {
                addr_error: log::kv::Value::from_display(&e),
                version: VERSION,
            }),
        }
        if let Some(trusted) = (self.config.proxy_protocol.as_ref()).filter(|t| t.trusts_anyone()) {
            warn!("trusted proxies include every address: any host can send a PROXY header and pose as any client", {
                trusted_proxies: log::kv::Value::from_display(trusted),
            });
        }
        let draining = Arc::new(Draining::default());
        let (admin_stop, admin_shutdown) = shutdown::channel();
        let admin = self.admin.take().map(|admin| {
            let addr = admin
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            info!("admin listening", { addr: addr, token: admin.has_token() });
            let (registry, tls) = (
                self.registry.clone(),
                self.tls.as_ref().map(ServerTls::reloader),
            );
            spawn(admin.run(registry, tls, draining.clone(), admin_shutdown))
        });
        // The certificate's dates, checked while it serves; ends with `shutdown`.
        let certificate_watch = self.tls_reloader().map(|certificate| {
            spawn(certificate.watch(CERTIFICATE_CHECK_INTERVAL, shutdown.clone()))
        });
        let (cut_trigger, cut) = shutdown::channel();
        let sessions = Arc::new(SessionContext {
            registry: self.registry.clone(),
            config: self.config.session.clone(),
            cut,
            tls: self.tls,
            proxy: self.config.proxy_protocol.clone(),
        });
        // Shutdown: not ready at once, and still accepting for the drain delay.
        let (stop_accepting, accepting_stops) = shutdown::channel();
        let drain_delay = self.config.drain_delay;
        let delay = async {
            shutdown.wait().await;
            draining.start();
            if !drain_delay.is_zero() {
                info!("draining: not ready, still accepting", {
                    drain_delay_ms: drain_delay.as_millis() as u64,
                });
                sleep(drain_delay).await;
            }
            stop_accepting.trigger();
        };
        let accept = acceptor::accept_on_cores(
            std::mem::take(&mut self.listeners),
            &self.cores,
            sessions,
            accepting_stops,
        );
        let (accepted, ()) = futures::join!(accept, delay);
        if let Some(watch) = certificate_watch {
            // The acceptor returns once `shutdown` fired; so does the watch.
            watch.await;
        }

        let at_shutdown = self.registry.snapshot().await.connections();
        info!("shutting down", { clients: at_shutdown });
        self.registry.drain().await;
        let timeout = self.config.shutdown_timeout;
        let drained = within(timeout, self.registry.wait_for_clients(0))
            .await
            .is_some();
        let mut cut_count = 0;
        if !drained {
            cut_count = self.registry.snapshot().await.connections();
            warn!("shutdown timeout: cutting remaining clients", { clients: cut_count });
            cut_trigger.trigger();
            // Best effort: a cut session reports at once unless its task is starved.
            let _ = within(CUT_GRACE, self.registry.wait_for_clients(0)).await;
        }
        // Admin requests ask the registry: they end first.
        admin_stop.trigger();
        if let Some(admin) = admin {
            admin.await;
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
