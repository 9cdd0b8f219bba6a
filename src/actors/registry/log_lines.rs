//! How the registry's client table reads in the log: `client joined` and
//! `client left`, and snapshots: a `registry snapshot` summary line, then
//! (on SIGUSR1 and at shutdown, not every `--registry-interval`) one
//! `registry client` line per client. A client relayed by a PROXY-protocol
//! balancer shows as its own address (`peer`) and the balancer's (`via`).
//!
//! The summary is logged at once. The client lines of a SIGUSR1 snapshot go
//! through [`logging::log_in_background`], so sessions keep answering while
//! a long list is written; the final snapshot, taken when nothing is left to
//! serve, is written in place and in full.
//!
//! The lines are logged under the registry's target, so that they read and
//! filter (`RUST_LOG=duplex::actors::registry=...`) as the registry's other
//! lines do. That takes `log`'s own macros: kv-log-macro's ignore an explicit
//! target when key/values follow.

use std::net::SocketAddr;
use std::time::Duration;

use log::{info, warn};

use super::LOG_TARGET;
use super::PerIpCounts;
use crate::logging::{self, Listing};
use crate::messages::{ClientId, ClientInfo, Counts, LeaveReason, Snapshot};

/// A client in the table, as its log lines name it.
pub(super) struct Who {
    pub(super) id: ClientId,
    pub(super) peer: SocketAddr,
    pub(super) via: Option<SocketAddr>,
}

/// Logs a join; `clients` counts the clients after it (not the
/// connections still awaiting their PROXY header).
pub(super) fn joined(who: &Who, clients: usize) {
    match who.via {
        None => {
            info!(target: LOG_TARGET, client_id = who.id, peer:% = who.peer, clients = clients; "client joined")
        }
        Some(via) => info!(
            target: LOG_TARGET,
            client_id = who.id, peer:% = who.peer, via:% = via, clients = clients;
            "client joined"
        ),
    }
}

/// Logs a leave, at `level`; `clients` counts the clients after it.
pub(super) fn left(
    who: &Who,
    clients: usize,
    reason: &LeaveReason,
    connected_for: Duration,
    counts: Counts,
    level: log::Level,
) {
    let connected_for_ms = millis(connected_for);
    // `via` only when there is one: a plain server's lines stay as they were.
    macro_rules! left {
        ($($via:tt)*) => {
            log::log!(
                target: LOG_TARGET,
                level,
                client_id = who.id,
                peer:% = who.peer,
                $($via)*
                clients = clients,
                reason:% = reason,
                connected_for_ms = connected_for_ms,
                messages_in = counts.messages_in,
                messages_out = counts.messages_out;
                "client left"
            )
        };
    }
    match who.via {
        None => left!(),
        Some(via) => left!(via:% = via,),
    }
}

/// What a `registry snapshot` line says: a [`Snapshot`]'s counts, without
/// its client list.
pub(super) struct Summary {
    pub(super) clients: usize,
    pub(super) awaiting_header: usize,
    pub(super) totals: Counts,
    pub(super) admitted: u64,
    pub(super) rejected: u64,
    pub(super) tls_failed: u64,
    pub(super) proxy_failed: u64,
    pub(super) tls_on_plain: u64,
    pub(super) proxy_local: u64,
    pub(super) per_ip: PerIpCounts,
}

impl From<&Snapshot> for Summary {
    fn from(snapshot: &Snapshot) -> Summary {
        Summary {
            clients: snapshot.clients.len(),
            awaiting_header: snapshot.awaiting_header,
            totals: snapshot.totals,
            admitted: snapshot.admitted,
            rejected: snapshot.rejected,
            tls_failed: snapshot.tls_failed,
            proxy_failed: snapshot.proxy_failed,
            tls_on_plain: snapshot.tls_on_plain,
            proxy_local: snapshot.proxy_local,
            per_ip: snapshot.per_ip,
        }
    }
}

/// Logs the summary line alone: the periodic snapshot. A line per client
/// every `--registry-interval` would be most of the log (at 10 000 clients,
/// journald's whole default burst every 30 s); SIGUSR1 lists them.
pub(super) fn summary(summary: &Summary) {
    info!(
        target: LOG_TARGET,
        clients = summary.clients,
        awaiting_header = summary.awaiting_header,
        admitted = summary.admitted,
        rejected = summary.rejected,
        tls_failed = summary.tls_failed,
        proxy_failed = summary.proxy_failed,
        proxy_local = summary.proxy_local,
        tls_on_plain = summary.tls_on_plain,
        too_many_per_ip = summary.per_ip.too_many,
        too_fast_per_ip = summary.per_ip.too_fast,
        per_ip_addresses = summary.per_ip.addresses,
        messages_in = summary.totals.messages_in,
        messages_out = summary.totals.messages_out,
        bytes_in = summary.totals.bytes_in,
        bytes_out = summary.totals.bytes_out;
        "registry snapshot"
    );
}

/// Logs `snapshot`'s summary, and its client lines off the executor: the
/// SIGUSR1 snapshot.
pub(super) fn snapshot(snapshot: Snapshot) {
    summary(&Summary::from(&snapshot));
    match logging::log_in_background(snapshot.clients, log_client) {
        Listing::Queued | Listing::StillNoThread => {}
        Listing::Busy => warn!(
            target: LOG_TARGET,
            "registry snapshot: client lines skipped, earlier ones are still being written"
        ),
        Listing::NoThread(e) => warn!(
            target: LOG_TARGET,
            error:% = e;
            "no thread for snapshot client lines; they will be skipped"
        ),
    }
}

/// Logs `snapshot` in full on the calling thread: for the last one.
pub(super) fn final_snapshot(snapshot: &Snapshot) {
    summary(&Summary::from(snapshot));
    logging::log_in_place(&snapshot.clients, log_client);
}

fn log_client(client: &ClientInfo) {
    let connected_for_ms = millis(client.connected_for);
    macro_rules! client {
        ($($via:tt)*) => {
            info!(
                target: LOG_TARGET,
                client_id = client.id,
                peer:% = client.peer,
                $($via)*
                connected_for_ms = connected_for_ms,
                messages_in = client.counts.messages_in,
                messages_out = client.counts.messages_out;
                "registry client"
            )
        };
    }
    match client.via {
        None => client!(),
        Some(via) => client!(via:% = via,),
    }
}

/// A duration as the log gives it: whole milliseconds, a number (in a JSON
/// line too), under a key that ends in `_ms`, as every duration logged does.
fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}
