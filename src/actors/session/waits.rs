//! A session's waits that the server can interrupt: the TLS handshake and
//! every write to the client race the server's `cut`, the registry's
//! commands and their own time limits; and [`Failure`], how those waits end.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use futures::{FutureExt, select_biased};

use super::SessionContext;
use crate::mailbox::Mailbox;
use crate::messages::{HandshakeFailure, LeaveReason, SessionCommand};
use crate::net::{Handshake, LineSocket, WriteStop};
use crate::proxy::{ProxyHeader, TrustedProxies};
use crate::rt::within;
use crate::tls::{self, ServerTls};

/// Writes `bytes` to the client, unless the server cuts it short, the client
/// takes none of them for the write timeout, or the registry finds it idle
/// meanwhile (a client that neither sends nor reads is idle too). The
/// session's fields it needs, not the session, so that the bytes can be the
/// session's own reply buffer.
///
/// Nearly every write completes at once. The wait for a client slow to take
/// its bytes is boxed: inline, its state would sit in every session's future,
/// and so in what every idle client costs.
pub(super) async fn write_or_cut(
    socket: &mut LineSocket,
    context: &SessionContext,
    inbox: &Mailbox,
    bytes: &[u8],
) -> Result<(), Failure> {
    match socket.write_now(bytes)? {
        None => Ok(()),
        Some(written) => Box::pin(write_waiting(socket, context, inbox, &bytes[written..])).await,
    }
}

/// The rest of [`write_or_cut`], once the client did not take it all at once.
async fn write_waiting(
    socket: &mut LineSocket,
    context: &SessionContext,
    inbox: &Mailbox,
    bytes: &[u8],
) -> Result<(), Failure> {
    let cut = &context.cut;
    let interrupt = async move {
        select_biased! {
            _ = cut.wait().fuse() => Failure::Cut,
            command = idle_command(inbox).fuse() => match command {
                SessionCommand::CloseIdle => Failure::Stalled(LeaveReason::IdleTimeout),
            },
        }
    };
    let limit = context.config.write_timeout;
    match socket.write_bounded(bytes, limit, interrupt).await {
        Ok(()) => Ok(()),
        Err(WriteStop::Failed(e)) => Err(Failure::Io(e)),
        Err(WriteStop::Stalled) => Err(Failure::Stalled(LeaveReason::WriteTimeout)),
        Err(WriteStop::Interrupted(failure)) => Err(failure),
    }
}

/// The TLS handshake, within the handshake timeout, unless the server cuts
/// it short or the registry asks the session to close meanwhile.
pub(super) async fn handshake(
    socket: &mut LineSocket,
    tls: &ServerTls,
    context: &SessionContext,
    inbox: &Mailbox,
) -> Result<Handshake, Failure> {
    let shaken = opening_step(context, inbox, socket.accept_tls(tls)).await?;
    let failed = |reason, error| Failure::Handshake(HandshakeFailure { reason, error });
    match shaken {
        Some(Ok(handshake)) => Ok(handshake),
        Some(Err(e)) => Err(failed(tls::failure_reason(&e), Some(e))),
        // Not a byte came: perhaps a plain client waiting for its greeting.
        None if socket.is_plain() => Ok(Handshake::Silent),
        None => Err(failed("handshake timed out", None)),
    }
}

/// The PROXY header, from a trusted `peer`, within the handshake timeout,
/// unless the server cuts it short or the registry asks the session to
/// close meanwhile.
pub(super) async fn proxy_header(
    socket: &LineSocket,
    peer: SocketAddr,
    trusted: &TrustedProxies,
    context: &SessionContext,
    inbox: &Mailbox,
) -> Result<ProxyHeader, Failure> {
    if !trusted.contains(peer.ip()) {
        return Err(Failure::Proxy(format!(
            "{} is not a trusted proxy",
            peer.ip()
        )));
    }
    match opening_step(context, inbox, socket.read_proxy_header()).await? {
        Some(Ok(header)) => Ok(header),
        Some(Err(e)) => Err(Failure::Proxy(e.to_string())),
        None => Err(Failure::Proxy(
            "no PROXY header within the handshake timeout".into(),
        )),
    }
}

/// Runs one step of a connection's opening (the PROXY header, the TLS
/// handshake) within the handshake timeout (`None` past it), unless the
/// server cuts it short or the registry finds the client idle meanwhile:
/// nothing can be said to a client before its opening. A shutdown (the inbox
/// closing) waits for the step, so the client still gets its notice; `cut`
/// and the timeout bound that wait.
async fn opening_step<T>(
    context: &SessionContext,
    inbox: &Mailbox,
    step: impl Future<Output = T>,
) -> Result<Option<T>, Failure> {
    let limit = context.config.handshake_timeout;
    select_biased! {
        _ = context.cut.wait().fuse() => Err(Failure::Cut),
        command = idle_command(inbox).fuse() => Err(Failure::Ended(match command {
            SessionCommand::CloseIdle => LeaveReason::IdleTimeout,
        })),
        done = within(limit, step).fuse() => Ok(done),
    }
}

/// How serving a client ended, when neither the client nor the protocol
/// ended it.
#[derive(Debug)]
pub(super) enum Failure {
    /// Reading or writing the socket failed.
    Io(io::Error),
    /// The shutdown timeout ran out while a write waited (`cut`).
    Cut,
    /// A write waited for a client that takes no bytes, until the write
    /// timeout or the idle timeout (the reason): it is cut off with a reset.
    Stalled(LeaveReason),
    /// The TLS handshake did not finish.
    Handshake(HandshakeFailure),
    /// Ended before anything could be said, for this reason.
    Ended(LeaveReason),
    /// No valid PROXY header from a trusted proxy: why.
    Proxy(String),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Io(e)
    }
}

/// A command that ends the session even in the middle of a write. The inbox
/// closing (the server's drain) does not: a session finishes its writes then,
/// and the shutdown timeout's `cut` bounds them.
async fn idle_command(inbox: &Mailbox) -> SessionCommand {
    match inbox.recv().await {
        Some(command) => command,
        None => futures::future::pending().await,
    }
}
