//! What the admin server (`--admin-addr`) and the registry say to each
//! other, inside [`RegistryMsg::Admin`](super::RegistryMsg::Admin): its
//! questions, and the answers' types.

use futures::channel::oneshot;

use super::{ClientId, ClientInfo, Counts, LeaveReason};
use crate::actors::registry::PerIpCounts;

/// What the admin server asks the registry: each answers on `respond_to`,
/// and none builds more than it was asked for.
#[derive(Debug)]
pub(crate) enum AdminRequest {
    /// The counts `/metrics` and `/readyz` read (and `/healthz`'s ping).
    Stats {
        respond_to: oneshot::Sender<RegistryStats>,
    },
    /// Clients `offset..offset + limit` of the list ordered by id.
    Page {
        offset: usize,
        limit: usize,
        respond_to: oneshot::Sender<ClientPage>,
    },
    /// One client, if it is connected.
    Client {
        id: ClientId,
        respond_to: oneshot::Sender<Option<ClientInfo>>,
    },
    /// Tell a client to close (`DELETE /clients/{id}`).
    Close {
        id: ClientId,
        respond_to: oneshot::Sender<OperatorClose>,
    },
}

/// The registry's counts, without its client list: what `/metrics` shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RegistryStats {
    /// Clients connected (announced).
    pub(crate) clients: usize,
    /// Connections held, each a `--max-clients` slot (clients, and those
    /// awaiting their PROXY header).
    pub(crate) connections: usize,
    /// `--max-clients`.
    pub(crate) max_clients: usize,
    pub(crate) admitted: u64,
    pub(crate) rejected: u64,
    pub(crate) tls_failed: u64,
    pub(crate) proxy_failed: u64,
    pub(crate) proxy_local: u64,
    pub(crate) tls_on_plain: u64,
    /// Traffic since start, clients that left included.
    pub(crate) totals: Counts,
    /// Clients the server closed, by why.
    pub(crate) cuts: Cuts,
    /// Refusals for the per-address limits, and the addresses tracked.
    pub(crate) per_ip: PerIpCounts,
}

/// Clients the server closed (not the client, not a failure), by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Cuts {
    /// `--write-timeout`: took no bytes for that long.
    pub(crate) write_timeout: u64,
    /// `--idle-timeout`: sent nothing for that long.
    pub(crate) idle_timeout: u64,
    /// A line over `--max-line`.
    pub(crate) line_too_long: u64,
    /// `DELETE /clients/{id}`.
    pub(crate) operator: u64,
    /// Still writing when `--shutdown-timeout` ran out.
    pub(crate) shutdown_timeout: u64,
}

impl Cuts {
    /// Counts `reason`, if the server cut the client for it.
    pub(crate) fn count(&mut self, reason: &LeaveReason) {
        let counter = match reason {
            LeaveReason::NotReading { idle: false } => &mut self.write_timeout,
            LeaveReason::NotReading { idle: true } | LeaveReason::IdleTimeout => {
                &mut self.idle_timeout
            }
            LeaveReason::LineTooLong { .. } => &mut self.line_too_long,
            LeaveReason::Operator { .. } => &mut self.operator,
            LeaveReason::Cut => &mut self.shutdown_timeout,
            _ => return,
        };
        *counter += 1;
    }
}

/// A page of the client list (`GET /clients?offset=&limit=`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ClientPage {
    /// Clients connected, on every page.
    pub(crate) total: usize,
    /// The page, ordered by id.
    pub(crate) clients: Vec<ClientInfo>,
}

/// The registry's answer to [`AdminRequest::Close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OperatorClose {
    /// Its session was told; it leaves with `closed by operator`.
    Closing,
    /// It is already on its way out (idle, draining, or told before).
    AlreadyClosing,
    /// No such client.
    NotFound,
}
