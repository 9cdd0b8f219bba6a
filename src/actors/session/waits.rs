//! A session's waits that the server can interrupt: the TLS handshake and
//! every write to the client race the server's `cut`, the registry's
//! commands and their own time limits. A wait cut short is the session's
//! end, so it fails with the [`LeaveReason`] that says why.

use std::future::Future;
use std::net::SocketAddr;

use futures::{FutureExt, select_biased};

use super::SessionContext;
use crate::messages::{HandshakeFailure, LeaveReason, Mailbox, SessionCommand};
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
) -> Result<(), LeaveReason> {
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
) -> Result<(), LeaveReason> {
    let cut = &context.cut;
    let interrupt = async move {
        select_biased! {
            _ = cut.wait().fuse() => LeaveReason::Cut,
            command = idle_command(inbox).fuse() => match command {
                SessionCommand::CloseIdle => LeaveReason::NotReading { idle: true },
                SessionCommand::CloseByOperator => LeaveReason::Operator { told: false },
            },
        }
    };
    let limit = context.config.write_timeout;
    socket
        .write_bounded(bytes, limit, interrupt)
        .await
        .map_err(|stop| match stop {
            WriteStop::Failed(e) => LeaveReason::Io(e),
            WriteStop::Stalled => LeaveReason::NotReading { idle: false },
            WriteStop::Interrupted(reason) => reason,
        })
}

/// The TLS handshake, within the handshake timeout, unless the server cuts
/// it short or the registry asks the session to close meanwhile.
pub(super) async fn handshake(
    socket: &mut LineSocket,
    tls: &ServerTls,
    context: &SessionContext,
    inbox: &Mailbox,
) -> Result<Handshake, LeaveReason> {
    let shaken = opening_step(context, inbox, socket.accept_tls(tls)).await?;
    let failed = |reason, error| LeaveReason::TlsFailed(HandshakeFailure { reason, error });
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
) -> Result<ProxyHeader, LeaveReason> {
    if !trusted.contains(peer.ip()) {
        return Err(LeaveReason::ProxyFailed(format!(
            "{} is not a trusted proxy",
            peer.ip()
        )));
    }
    match opening_step(context, inbox, socket.read_proxy_header()).await? {
        Some(Ok(header)) => Ok(header),
        Some(Err(e)) => Err(LeaveReason::ProxyFailed(e.to_string())),
        None => Err(LeaveReason::ProxyFailed(
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
) -> Result<Option<T>, LeaveReason> {
    let limit = context.config.handshake_timeout;
    select_biased! {
        _ = context.cut.wait().fuse() => Err(LeaveReason::Cut),
        command = idle_command(inbox).fuse() => Err(match command {
            SessionCommand::CloseIdle => LeaveReason::IdleTimeout,
            SessionCommand::CloseByOperator => LeaveReason::Operator { told: false },
        }),
        done = within(limit, step).fuse() => Ok(done),
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
