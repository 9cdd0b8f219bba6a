//! The admin server (`--admin-addr`): HTTP/1.1 on a listener of its own,
//! for machines: `/metrics` (Prometheus), `/healthz` and `/readyz` (a
//! balancer's checks), `/clients` (the registry's list, a page at a time)
//! and `DELETE /clients/{id}`.
//!
//! It is one accept loop and one task per admin connection, at most
//! [`CONNECTIONS_MAX`] at once (one more is closed at once), each bounded in
//! what it may send ([`REQUEST_HEAD_MAX`]), how long its request may take
//! ([`READ_TIMEOUT`]) and how long it may stay ([`CONNECTION_MAX_AGE`]): a
//! slow or hostile admin client holds a task and a few KiB, and never a
//! client's session. HTTP is hyper's (server side, HTTP/1 only), driven
//! through smol-hyper's adapter over async-io's reactor and its timer, on
//! async-std's executor: off the cores that serve the clients. Every answer comes from the registry actor, asked
//! through its handle: the admin server holds no client state of its own.
//!
//! The routes and their rules are in `routes.rs`, the metrics in
//! `metrics.rs` (and the process's own, from `/proc/self`, in
//! `process.rs`), the bearer token in `token.rs`.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::{FutureExt, select_biased};
use hyper::server::conn::http1;
use kv_log_macro::{debug, warn};
use smol_hyper::rt::{FuturesIo, SmolTimer};

use crate::actors::registry::RegistryHandle;
use crate::logging::Throttle;
use crate::rt::{AdminListener, AdminSocket, sleep, spawn, within};
use crate::shutdown::Shutdown;
use crate::tls::TlsReloader;

mod metrics;
mod process;
mod routes;
mod token;

use token::Token;

/// Admin connections open at once; one more is closed unanswered. A
/// scraper and a balancer's checks need one or two each.
pub(crate) const CONNECTIONS_MAX: usize = 16;

/// The longest request line and headers, in bytes; a longer head gets
/// `431` and the connection is closed. Ample for a bearer token.
pub(crate) const REQUEST_HEAD_MAX: usize = 8 * 1024;

/// Headers a request may have; one more gets `431`.
const HEADERS_MAX: usize = 32;

/// How long a request's head may take to arrive, counted from the moment
/// the connection waits for one (so it is also how long an idle keep-alive
/// connection stays): a client that trickles its request is closed.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one admin connection may stay open, whatever it does: then it
/// is closed gracefully (an answer under way ends with `Connection: close`),
/// and one that still has not read its answer [`READ_TIMEOUT`] later is
/// dropped. A scraper simply reconnects.
pub(crate) const CONNECTION_MAX_AGE: Duration = Duration::from_secs(60);

/// After a failed accept (out of descriptors), how long to wait before the
/// next: the admin listener must not spin while the server is full.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The admin server's part of the configuration (`--admin-addr`,
/// `--admin-token-file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where to listen, `host:port` (resolved at bind; the first address
    /// that binds wins).
    pub addr: String,
    /// A file holding the bearer token every endpoint but `/healthz` and
    /// `/readyz` then needs (`DELETE` always). Required for an address that
    /// is not loopback.
    pub token_file: Option<PathBuf>,
}

/// Why the admin server could not start. Never names the token itself.
#[derive(Debug)]
pub enum AdminError {
    /// The address could not be bound.
    Listen {
        /// The address given.
        addr: String,
        /// Why.
        error: io::Error,
    },
    /// The token file could not be read, or holds no token.
    Token {
        /// The file given.
        file: PathBuf,
        /// Why, without its contents.
        why: String,
    },
    /// The address is reachable from other hosts and no token was given.
    TokenRequired {
        /// The address bound.
        addr: SocketAddr,
    },
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminError::Listen { addr, error } => {
                write!(f, "cannot listen on --admin-addr {addr}: {error}")
            }
            AdminError::Token { file, why } => {
                write!(f, "--admin-token-file {}: {why}", file.display())
            }
            AdminError::TokenRequired { addr } => write!(
                f,
                "--admin-addr {addr} is not a loopback address: it needs --admin-token-file"
            ),
        }
    }
}

impl std::error::Error for AdminError {}

/// Whether the server is draining: set at SIGTERM (before `--drain-delay`),
/// and never cleared. `/readyz` answers 503 from then on.
#[derive(Debug, Default)]
pub(crate) struct Draining(AtomicBool);

impl Draining {
    pub(crate) fn start(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What every admin request may read: the server's registry, its
/// certificate, whether it drains, and the token.
pub(crate) struct AdminState {
    pub(crate) registry: RegistryHandle,
    pub(crate) tls: Option<TlsReloader>,
    pub(crate) draining: Arc<Draining>,
    token: Option<Token>,
}

/// The admin listener, bound, with its token loaded.
pub(crate) struct AdminServer {
    listener: AdminListener,
    token: Option<Token>,
}

impl AdminServer {
    /// Loads the token, if any, and binds `config.addr`; refuses an address
    /// other hosts can reach without a token.
    pub(crate) fn bind(config: &AdminConfig) -> Result<AdminServer, AdminError> {
        let token = (config.token_file.as_deref())
            .map(Token::load)
            .transpose()?;
        let listen_error = |error| AdminError::Listen {
            addr: config.addr.clone(),
            error,
        };
        let listener = std::net::TcpListener::bind(&config.addr)
            .and_then(AdminListener::new)
            .map_err(listen_error)?;
        let addr = listener.get_ref().local_addr().map_err(listen_error)?;
        if token.is_none() && !addr.ip().is_loopback() {
            return Err(AdminError::TokenRequired { addr });
        }
        Ok(AdminServer { listener, token })
    }

    /// The address it listens on (the real port, when bound to port 0).
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.get_ref().local_addr()
    }

    /// Whether requests need the token.
    pub(crate) fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Serves admin connections until `shutdown` fires; connections still
    /// open then are closed.
    pub(crate) async fn run(
        self,
        registry: RegistryHandle,
        tls: Option<TlsReloader>,
        draining: Arc<Draining>,
        shutdown: Shutdown,
    ) {
        let state = Arc::new(AdminState {
            registry,
            tls,
            draining,
            token: self.token,
        });
        let open = Arc::new(AtomicUsize::new(0));
        let mut accept_warnings = Throttle::default();
        loop {
            let accepted = select_biased! {
                () = shutdown.wait().fuse() => return,
                accepted = self.listener.accept().fuse() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if let Some(suppressed) = accept_warnings.allow() {
                        warn!("admin accept failed: pausing", {
                            error: log::kv::Value::from_display(&e),
                            pause_ms: ACCEPT_PAUSE.as_millis() as u64,
                            suppressed: suppressed,
                        });
                    }
                    sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            };
            if open.fetch_add(1, Ordering::Relaxed) >= CONNECTIONS_MAX {
                open.fetch_sub(1, Ordering::Relaxed);
                debug!("admin connection refused: too many open", {
                    peer: log::kv::Value::from_display(&peer),
                });
                continue;
            }
            let slot = Slot(open.clone());
            spawn(serve(stream, state.clone(), shutdown.clone(), slot));
        }
    }
}

/// One admin connection's place in the count; given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one admin connection until the client closes it, a limit ends
/// it, or the server stops.
async fn serve(stream: AdminSocket, state: Arc<AdminState>, shutdown: Shutdown, _slot: Slot) {
    let mut builder = http1::Builder::new();
    builder
        .timer(SmolTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .max_header_size(REQUEST_HEAD_MAX)
        .max_buf_size(REQUEST_HEAD_MAX.max(8192))
        .max_headers(HEADERS_MAX);
    let service = hyper::service::service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, std::convert::Infallible>(routes::respond(&state, request).await) }
    });
    let connection = builder.serve_connection(FuturesIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    // A malformed request has had its 400 from hyper: nothing to log.
    select_biased! {
        () = shutdown.wait().fuse() => return,
        _ = connection.as_mut().fuse() => return,
        () = sleep(CONNECTION_MAX_AGE).fuse() => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = within(READ_TIMEOUT, connection).await;
}
