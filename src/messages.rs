//! Every message that crosses an actor boundary, in one file: read this to know
//! every conversation in the system.
//!
//! Server side: the acceptor and sessions talk to the registry
//! ([`RegistryMsg`]); the registry talks to sessions through their inboxes
//! ([`SessionCommand`]), and closes those inboxes to start the shutdown.
//! Client side: the supervisor hands each connection a [`ConnectionStart`],
//! feeds it [`ConnectionMsg`]s, and gets a [`ConnectionExit`] back when it
//! ends.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures::channel::oneshot;

use crate::actors::registry::PerIpCounts;
use crate::pending::PendingQueue;
use crate::rt::Receiver;
use crate::shutdown::Shutdown;
use crate::wire::FrameError;

mod admin;
mod mailbox;
mod per_ip;
mod stats;

// The admin server's conversation with the registry: `RegistryMsg::Admin`.
pub(crate) use admin::{AdminRequest, ClientPage, Cuts, OperatorClose, RegistryStats};
pub(crate) use mailbox::Mailbox;
pub(crate) use per_ip::PerIpRefusal;
pub(crate) use stats::SessionStats;

// ---------------------------------------------------------------- server side

/// Identifies one accepted client for the life of the server process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub(crate) u64);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl log::kv::ToValue for ClientId {
    fn to_value(&self) -> log::kv::Value<'_> {
        log::kv::Value::from(self.0)
    }
}

/// One client's traffic (or the sum over clients) at one instant.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Messages received.
    pub messages_in: u64,
    /// Replies sent.
    pub messages_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.messages_in += other.messages_in;
        self.messages_out += other.messages_out;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
    }
}

/// What the registry and one session share: the counters the session bumps
/// and the registry reads, and the session's inbox, which the registry posts
/// to. One allocation per client, made by the acceptor.
#[derive(Debug, Default)]
pub(crate) struct SessionLink {
    pub(crate) stats: SessionStats,
    pub(crate) inbox: Mailbox,
}

/// What the registry can ask of a session, through the session's inbox.
/// (Closing the inbox asks it to finish up at shutdown.)
#[derive(Debug, Clone)]
pub(crate) enum SessionCommand {
    /// The client has sent nothing for the idle timeout: tell it and close.
    CloseIdle,
    /// An operator asked for it (`DELETE /clients/{id}`): tell it and close.
    CloseByOperator,
}

/// How a session ended: the one answer to why a client left, from the
/// session's first wait to its last words. The session's task reports it to
/// the registry, which logs it as `reason`.
#[derive(Debug)]
pub(crate) enum LeaveReason {
    /// The client closed its side (EOF) and got its last replies.
    PeerClosed,
    /// Reading or writing the socket failed (reset, broken pipe, ...).
    Io(io::Error),
    /// A line exceeded `--max-line` (`max` bytes); the client was told so.
    LineTooLong { max: usize },
    /// Nothing arrived for `--idle-timeout`; the client was told so.
    IdleTimeout,
    /// The server is shutting down; the client got the notice.
    ServerShutdown,
    /// The server's shutdown timeout ran out while this session was still writing.
    Cut,
    /// A write waited for a client that took none of its bytes: for
    /// `--write-timeout`, or until the registry found it idle (`idle`). It
    /// was reset, not told.
    NotReading { idle: bool },
    /// The session's task panicked.
    Panicked,
    /// The TLS handshake did not finish (`--tls-cert`).
    TlsFailed(HandshakeFailure),
    /// No valid PROXY header from a trusted proxy (`--proxy-protocol`).
    ProxyFailed(String),
    /// The proxy's own connection (a health check): nothing to serve.
    ProxyLocal,
    /// A plain server's client opened with a TLS ClientHello: it was
    /// closed unanswered.
    TlsOnPlain,
    /// Its address (its PROXY header's) was over a per-address limit; told so.
    Refused(PerIpRefusal),
    /// An operator closed it (`DELETE /clients/{id}`); `told`: it got
    /// `error: closed by operator` (not while a write to it waited, nor
    /// before its opening was done: then it was reset or closed unanswered).
    Operator { told: bool },
}

impl From<io::Error> for LeaveReason {
    fn from(e: io::Error) -> LeaveReason {
        LeaveReason::Io(e)
    }
}

/// Why a session ends when its inbox tells it to: it can say so.
impl From<SessionCommand> for LeaveReason {
    fn from(command: SessionCommand) -> LeaveReason {
        match command {
            SessionCommand::CloseIdle => LeaveReason::IdleTimeout,
            SessionCommand::CloseByOperator => LeaveReason::Operator { told: true },
        }
    }
}

impl From<FrameError> for LeaveReason {
    fn from(too_long: FrameError) -> LeaveReason {
        let FrameError::LineTooLong { max } = too_long;
        LeaveReason::LineTooLong { max }
    }
}

/// A TLS handshake that did not finish: why, in a few words, and the error
/// behind it, if there was one.
#[derive(Debug)]
pub(crate) struct HandshakeFailure {
    pub(crate) reason: &'static str,
    pub(crate) error: Option<io::Error>,
}

impl fmt::Display for LeaveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaveReason::PeerClosed => f.write_str("peer closed"),
            LeaveReason::Io(e) => write!(f, "io error: {e}"),
            LeaveReason::LineTooLong { .. } => f.write_str("line too long"),
            LeaveReason::IdleTimeout | LeaveReason::NotReading { idle: true } => {
                f.write_str("idle timeout")
            }
            LeaveReason::ServerShutdown => f.write_str("server shutdown"),
            LeaveReason::Cut => f.write_str("cut at shutdown timeout"),
            LeaveReason::NotReading { idle: false } => f.write_str("write timeout"),
            LeaveReason::Panicked => f.write_str("session panicked"),
            LeaveReason::TlsFailed(HandshakeFailure {
                reason,
                error: None,
            }) => {
                write!(f, "TLS handshake failed: {reason}")
            }
            LeaveReason::TlsFailed(HandshakeFailure {
                reason,
                error: Some(e),
            }) => write!(f, "TLS handshake failed: {reason}: {e}"),
            LeaveReason::ProxyFailed(why) => write!(f, "PROXY header refused: {why}"),
            LeaveReason::ProxyLocal => f.write_str("proxy health check"),
            LeaveReason::TlsOnPlain => f.write_str("TLS client on a plain port"),
            LeaveReason::Refused(refusal) => refusal.fmt(f),
            LeaveReason::Operator { .. } => f.write_str("closed by operator"),
        }
    }
}

/// The registry's answer to [`RegistryMsg::Register`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Registered; `clients` is the connections held, this one included.
    Admitted { clients: usize },
    /// Turned away: `max` clients are already connected.
    Full { max: usize },
    /// Turned away: its address is over a per-address limit.
    Refused(PerIpRefusal),
}

/// One client as the registry sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// Its id, unique for the life of the server process.
    pub id: ClientId,
    /// Its address (the client's own, behind a PROXY-protocol balancer).
    pub peer: SocketAddr,
    /// The balancer it came through, with `--proxy-protocol`.
    pub via: Option<SocketAddr>,
    /// How long it has been connected.
    pub connected_for: Duration,
    /// Its traffic so far.
    pub counts: Counts,
}

/// The client list at one instant, ordered by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every connected client: with `--proxy-protocol`, once its PROXY
    /// header named it.
    pub clients: Vec<ClientInfo>,
    /// Connections still awaiting their PROXY header (`--proxy-protocol`):
    /// not clients yet, but each holds a `--max-clients` slot.
    pub awaiting_header: usize,
    /// Counters summed over every client since the server started,
    /// including those that have left.
    pub totals: Counts,
    /// Connections that became clients since start: with
    /// `--proxy-protocol`, those whose header named a client (a health
    /// check or a refused header is not one).
    pub admitted: u64,
    /// Clients turned away because the server was full.
    pub rejected: u64,
    /// Clients admitted whose TLS handshake then failed.
    pub tls_failed: u64,
    /// Connections closed for want of a valid PROXY header from a trusted
    /// proxy.
    pub proxy_failed: u64,
    /// Clients of a plain server that opened with a TLS handshake, closed
    /// unanswered.
    pub tls_on_plain: u64,
    /// Connections that were a proxy's health check (a PROXY v2 `LOCAL`
    /// header), closed without a greeting.
    pub proxy_local: u64,
    /// Refusals for the per-address limits, and the addresses tracked.
    pub per_ip: PerIpCounts,
}

impl Snapshot {
    /// Connections held, each a `--max-clients` slot: the clients, and those
    /// awaiting their PROXY header.
    pub fn connections(&self) -> usize {
        self.clients.len() + self.awaiting_header
    }
}

/// What the registry actor's inbox carries.
#[derive(Debug)]
pub(crate) enum RegistryMsg {
    /// Admit a client (or refuse it when full). On admission the registry logs
    /// the join and keeps the session's inbox and its stats.
    Register {
        id: ClientId,
        peer: SocketAddr,
        link: std::sync::Arc<SessionLink>,
        /// A PROXY header will say who the client is: log the join then.
        awaits_header: bool,
        respond_to: oneshot::Sender<Admission>,
    },
    /// The PROXY header named the client behind the balancer (`peer`): is
    /// its address within the per-address limits?
    Identify {
        id: ClientId,
        client: SocketAddr,
        respond_to: oneshot::Sender<Admission>,
    },
    /// A session ended; the registry logs the leave with `reason`.
    Unregister { id: ClientId, reason: LeaveReason },
    /// Reply with the client list.
    Snapshot {
        respond_to: oneshot::Sender<Snapshot>,
    },
    /// Log a snapshot (the SIGUSR1 path).
    LogSnapshot,
    /// Shutdown: close every session's inbox, which tells the session to
    /// answer what it has read, send the shutdown notice and close (sessions
    /// admitted later get a closed inbox at once). Replies when done.
    Drain { respond_to: oneshot::Sender<()> },
    /// Reply once exactly `clients` connections are held (clients, and any
    /// awaiting their PROXY header).
    WaitForCount {
        clients: usize,
        respond_to: oneshot::Sender<()>,
    },
    /// Log a final snapshot, reply with it, and stop.
    Stop {
        respond_to: oneshot::Sender<Snapshot>,
    },
    /// A question from the admin server (`--admin-addr`).
    Admin(AdminRequest),
}

// ---------------------------------------------------------------- client side

/// What the supervisor sends a running connection.
#[derive(Debug)]
pub(crate) enum ConnectionMsg {
    /// A new message to send (and to keep pending until a reply echoes it).
    Send { text: String },
}

/// Everything a new connection actor starts with.
#[derive(Debug)]
pub(crate) struct ConnectionStart {
    /// Unacknowledged messages, oldest first; the connection resends them.
    pub(crate) pending: PendingQueue,
    /// New messages from the supervisor.
    pub(crate) inbox: Receiver<ConnectionMsg>,
    /// Stop with [`ConnectionEnd::CountReached`] after this many replies.
    pub(crate) replies_wanted: Option<u64>,
    /// Client-wide stop signal (Ctrl-C).
    pub(crate) shutdown: Shutdown,
}

/// Why a connection actor ended.
#[derive(Debug)]
pub(crate) enum ConnectionEnd {
    /// The host name did not resolve.
    Lookup(io::Error),
    /// No resolved address accepted the connection.
    Connect(io::Error),
    /// The TLS handshake failed: why, in a few words, and the error.
    Tls {
        reason: &'static str,
        error: io::Error,
    },
    /// The server closed the connection (the `end` event), after saying
    /// why, if it did (its last `error: …` or `notice: …` line).
    ServerClosed { said: Option<String> },
    /// Messages were outstanding and no reply arrived for `--timeout`.
    Timeout,
    /// A write did not finish within `--timeout`: the server takes no bytes.
    WriteTimeout,
    /// Reading or writing failed (the `error` event).
    Io(io::Error),
    /// The server sent a line longer than the client accepts.
    LineTooLong,
    /// The server speaks TLS and this client does not: it said so
    /// (`error: this server speaks TLS`), or sent a TLS record.
    ServerSpeaksTls,
    /// `--count` replies arrived.
    CountReached,
    /// The client is shutting down.
    Shutdown,
}

impl fmt::Display for ConnectionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionEnd::Lookup(e) => write!(f, "lookup failed: {e}"),
            ConnectionEnd::Connect(e) => write!(f, "connect failed: {e}"),
            ConnectionEnd::Tls { reason, .. } => write!(f, "TLS handshake failed: {reason}"),
            ConnectionEnd::ServerClosed { said: None } => {
                f.write_str("server closed the connection")
            }
            ConnectionEnd::ServerClosed { said: Some(said) } => {
                write!(f, "server closed the connection: {said}")
            }
            ConnectionEnd::Timeout => f.write_str("no reply within the timeout"),
            ConnectionEnd::WriteTimeout => f.write_str("a write did not finish within the timeout"),
            ConnectionEnd::Io(e) => write!(f, "io error: {e}"),
            ConnectionEnd::LineTooLong => f.write_str("server sent a line that is too long"),
            ConnectionEnd::ServerSpeaksTls => f.write_str("the server speaks TLS; use --tls"),
            ConnectionEnd::CountReached => f.write_str("count reached"),
            ConnectionEnd::Shutdown => f.write_str("shutdown"),
        }
    }
}

/// What a connection hands back to its supervisor when it ends.
#[derive(Debug)]
pub(crate) struct ConnectionExit {
    /// Why it ended.
    pub(crate) end: ConnectionEnd,
    /// Still unacknowledged, oldest first.
    pub(crate) pending: PendingQueue,
    /// Replies received on this connection.
    pub(crate) replied: u64,
}
