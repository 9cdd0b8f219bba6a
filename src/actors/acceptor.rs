//! The acceptor actor: owns the listening sockets, one on each core.
//!
//! On every core it accepts connections, gives each an id, asks the registry
//! to admit it, and spawns its session on that core, in a task that tells
//! the registry when and why the session ended (or turns it away with an
//! error line when the server is full). Accept errors never end it: running out of descriptors or buffers
//! pauses accepting with a growing backoff and a rate-limited warning; errors
//! that concern one connection only are skipped. It stops when the server's
//! shutdown signal fires: it takes what the kernel already queued, then drops
//! the listener so no one else gets in.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures::{FutureExt, select_biased};
use kv_log_macro::{debug, error, info, warn};

use crate::actors::registry::RegistryHandle;
use crate::actors::session::{Session, SessionContext};
use crate::logging::Throttle;
use crate::messages::{Admission, ClientId, LeaveReason, SessionLink};
use crate::net::LineSocket;
use crate::rt::{Cores, Listener, Socket, sleep, spawn_detached, within};
use crate::shutdown::Shutdown;
use crate::tls::ServerTls;
use crate::wire;

/// First pause after an accept failed for lack of resources.
const EXHAUSTED_PAUSE_MIN: Duration = Duration::from_millis(100);
/// Longest pause between accept attempts while resources stay exhausted.
const EXHAUSTED_PAUSE_MAX: Duration = Duration::from_secs(1);
/// How long a turned-away client gets to take its error line (after its
/// PROXY header and TLS handshake, if the server takes them).
const REJECT_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Turned-away clients being told so at once, at most. Telling a TLS client
/// takes a handshake; past this, a connect flood against a full server is
/// closed without one, so it costs the server's core nothing more.
pub(crate) const TURN_AWAYS_MAX: usize = 64;

/// Accepts on every core until `shutdown` fires: on a clone of one listening
/// socket each, or, with one listener per core (SO_REUSEPORT), on its own.
/// Returns how many connections were accepted. The server fires `shutdown`
/// once the `--drain-delay` after its own shutdown signal is over.
///
/// Takes the listeners: once each core has its clone they are closed here,
/// so a listening socket closes when the last core stops accepting on it
/// (with `--reuse-port`, the kernel then stops sending it connections).
pub(crate) async fn accept_on_cores(
    listeners: Vec<TcpListener>,
    cores: &Cores,
    sessions: Arc<SessionContext>,
    shutdown: Shutdown,
) -> u64 {
    let shared = Arc::new(Shared::default());
    let mut acceptors = Vec::with_capacity(cores.len());
    for core in 0..cores.len() {
        let listener = listeners[core % listeners.len()].try_clone();
        let (sessions, shared, shutdown) = (sessions.clone(), shared.clone(), shutdown.clone());
        acceptors.push(
            cores
                .spawn_on(core, async move {
                    // Registered here, on the core it accepts for.
                    let listener = Listener::new(listener?)?;
                    let acceptor = Acceptor {
                        listener,
                        sessions,
                        shared,
                        pause: None,
                        exhausted_warnings: Throttle::default(),
                    };
                    Ok::<_, io::Error>(acceptor.run(shutdown).await)
                })
                .fallible(),
        );
    }
    drop(listeners);
    let mut accepted = 0;
    for (core, acceptor) in acceptors.into_iter().enumerate() {
        match acceptor.await {
            Some(Ok(n)) => accepted += n,
            // A bug: the core's acceptor panicked (the core went on).
            None => error!("a core's acceptor panicked", { core: core }),
            // Out of descriptors at start, say: the other cores accept, and
            // the clients they took are served and drained as usual.
            Some(Err(e)) => error!("a core could not listen", {
                core: core,
                error: log::kv::Value::from_display(&e),
            }),
        }
    }
    info!("acceptor stopped", { accepted: accepted, cores: cores.len() });
    accepted
}

/// What the acceptors of all cores share.
#[derive(Default)]
struct Shared {
    /// The last id given (ids start at 1).
    last_id: AtomicU64,
    /// Turned-away clients still being told so.
    turning_away: AtomicUsize,
}

/// One core's acceptor.
struct Acceptor {
    listener: Listener,
    /// What every session it spawns shares, the registry among it.
    sessions: Arc<SessionContext>,
    shared: Arc<Shared>,
    /// Pause before the next accept while resources are exhausted.
    pause: Option<Duration>,
    exhausted_warnings: Throttle,
}

impl Acceptor {
    /// Accepts until `shutdown` fires; returns how many connections it
    /// accepted.
    async fn run(mut self, shutdown: Shutdown) -> u64 {
        let mut taken = 0;
        loop {
            let accepted = select_biased! {
                _ = shutdown.wait().fuse() => break,
                accepted = self.listener.accept().fuse() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    self.pause = None;
                    taken += 1;
                    self.admit(stream, peer).await;
                }
                Err(e) if is_resource_exhaustion(&e) => {
                    let pause = self
                        .pause
                        .map_or(EXHAUSTED_PAUSE_MIN, |p| (p * 2).min(EXHAUSTED_PAUSE_MAX));
                    self.pause = Some(pause);
                    self.warn_exhausted(&e, pause);
                    select_biased! {
                        _ = shutdown.wait().fuse() => break,
                        _ = sleep(pause).fuse() => {}
                    }
                }
                Err(e) => {
                    debug!("accept skipped", { error: log::kv::Value::from_display(&e) });
                }
            }
        }
        // Connections the kernel has already queued are taken and sent the
        // shutdown notice, rather than reset when the listener closes: with
        // --reuse-port, a server started beside this one takes the rest.
        // Bounded, so a connect flood cannot keep it from ever stopping.
        for _ in 0..crate::net::LISTEN_BACKLOG {
            match self.listener.accept().now_or_never() {
                Some(Ok((stream, peer))) => {
                    taken += 1;
                    self.admit(stream, peer).await;
                }
                // One connection gone before it was taken: the next may be fine.
                Some(Err(e)) if !is_resource_exhaustion(&e) => {}
                _ => break,
            }
        }
        taken
    }

    async fn admit(&mut self, stream: Socket, peer: SocketAddr) {
        let id = ClientId(self.shared.last_id.fetch_add(1, Ordering::Relaxed) + 1);
        let socket = LineSocket::new(stream, self.sessions.config.max_line);
        let link = Arc::new(SessionLink::default());
        let admission = (self.sessions.registry)
            .register(id, peer, link.clone(), self.sessions.proxy.is_some())
            .await;
        match admission {
            Admission::Admitted { .. } => {
                if let Err(e) = socket.keep_alive() {
                    debug!("keepalive not set", { client_id: id, error: log::kv::Value::from_display(&e) });
                }
                let session = Session::new(id, peer, socket, link, self.sessions.clone());
                spawn_detached(session_task(session));
            }
            Admission::Full { .. } | Admission::Refused(_) => {
                let turning_away = &self.shared.turning_away;
                if turning_away.fetch_add(1, Ordering::Relaxed) >= TURN_AWAYS_MAX {
                    turning_away.fetch_sub(1, Ordering::Relaxed);
                    // Closed at once, unanswered: the registry counted the rejection.
                    socket.reset_on_close();
                    return;
                }
                let (proxy, tls) = (self.sessions.proxy.is_some(), self.sessions.tls.clone());
                let shared = self.shared.clone();
                spawn_detached(async move {
                    turn_away(socket, admission, proxy, tls).await;
                    shared.turning_away.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
    }

    fn warn_exhausted(&mut self, error: &io::Error, pause: Duration) {
        if let Some(suppressed) = self.exhausted_warnings.allow() {
            warn!("accept failed: out of resources, pausing", {
                error: log::kv::Value::from_display(error),
                pause_ms: pause.as_millis() as u64,
                suppressed: suppressed,
            });
        }
    }
}

/// What a session's task runs to its end: a [`Session`] (in tests, a
/// stand-in that panics).
pub(crate) trait Serve: Send {
    /// Serves the client; why it left.
    fn serve(&mut self) -> impl Future<Output = LeaveReason> + Send;
    /// The client it serves, and the registry that counts it.
    fn client(&self) -> (ClientId, &RegistryHandle);
}

impl Serve for Session {
    fn serve(&mut self) -> impl Future<Output = LeaveReason> + Send {
        self.run()
    }

    fn client(&self) -> (ClientId, &RegistryHandle) {
        (self.id(), &self.context().registry)
    }
}

/// A session's task: runs the session to its end, tells the registry why
/// the client left (also when the session panicked: the registry would
/// otherwise count the client for ever), and only then drops the session,
/// closing the connection, so a client that sees its connection close is
/// already counted out.
///
/// Not an `async fn`: that would store `session` in its future twice (once
/// as the argument, once as the local it is moved into;
/// rust-lang/rust#62958), and this future is what every connected client
/// costs.
#[allow(clippy::manual_async_fn)]
pub(crate) fn session_task(mut session: impl Serve + 'static) -> impl Future<Output = ()> + Send {
    async move {
        let ended = AssertUnwindSafe(session.serve()).catch_unwind().await;
        let (id, registry) = session.client();
        let reason = ended.unwrap_or_else(|_| {
            warn!("session panicked", { client_id: id });
            LeaveReason::Panicked
        });
        registry.unregister(id, reason).await;
        drop(session);
    }
}

/// Tells a client the server is full, or its address over a per-address
/// limit (after its PROXY header and TLS handshake, if the server takes
/// them), then closes it. The registry already logged the rejection.
async fn turn_away(mut socket: LineSocket, why: Admission, proxy: bool, tls: Option<ServerTls>) {
    let (line, linger) = match why {
        Admission::Full { max } => (wire::server_full_error(max), true),
        // Not lingered on: a refused address is not worth the wait.
        Admission::Refused(refusal) => (refusal.error_line().to_vec(), false),
        Admission::Admitted { .. } => return,
    };
    let told = within(REJECT_WRITE_TIMEOUT, async {
        if proxy {
            socket.read_proxy_header().await?;
        }
        if let Some(tls) = &tls {
            // A plain-text client on a TLS port is told in plain text.
            Box::pin(socket.accept_tls(tls)).await?;
        }
        socket.write_all(&line).await
    });
    // The client may already be gone, or never read: either way we close it.
    if let (Some(Ok(())), true) = (told.await, linger) {
        socket.linger_close().await;
    }
}

/// Errors that mean "the process or system is out of something", after which
/// accepting again at once would fail the same way.
fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
