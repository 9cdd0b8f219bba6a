//! The registry actor: the server's client table, and what follows from it.
//!
//! Owns, per connection: id, peer address, connection time, and the
//! [`SessionLink`] it shares with the session: the session's inbox and the
//! counters the session bumps itself (so it is never on the per-message
//! path). The acceptor asks it to admit each new connection
//! (the cap lives here, beside the count); each session's task tells it
//! when and why the session ended.
//!
//! Every connection it holds takes a `--max-clients` slot (it holds a
//! descriptor), but it is a client, listed, counted in `clients=` and in
//! `admitted`, only once announced: at once, or with `--proxy-protocol` once
//! its header named the client. A balancer's health check (a `LOCAL`
//! header) is counted apart, in `proxy_local`, and a refused header in
//! `proxy_failed`.
//! It logs every join and leave, the snapshot's summary line every
//! `--registry-interval`, and the whole snapshot, a line per client, on
//! SIGUSR1 and when it stops (the lines are in `registry/log_lines.rs`). One periodic sweep finds
//! idle clients, from the last-input time in their counters, and tells their
//! sessions to close. The per-address limits are kept in `registry/per_ip.rs`:
//! a client is counted under its address once announced.
//!
//! At shutdown, [`RegistryMsg::Drain`] closes every session's inbox, which a
//! session waits on anyway: that is how it learns to finish up. The server
//! sends [`RegistryMsg::Stop`] last; the registry logs a final snapshot and
//! stops.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use futures::channel::oneshot;
use futures::{FutureExt, select_biased};
use kv_log_macro::warn;
use log::kv::Value;

use crate::logging::Throttle;
use crate::messages::{
    Admission, ClientId, ClientInfo, Counts, Cuts, LeaveReason, RegistryMsg, SessionLink, Snapshot,
};
use crate::rt::{JoinHandle, Receiver, bounded, sleep_until, spawn};
use log_lines::{Summary, Who};
use per_ip::PerIp;

/// The log target of every line about the client table, snapshots included.
const LOG_TARGET: &str = module_path!();

/// Capacity of the registry's inbox. Every message is a join, a leave or an
/// operator request, so this only absorbs bursts of connects and disconnects.
const INBOX_CAPACITY: usize = 1024;

struct Entry {
    peer: SocketAddr,
    /// The balancer it came through (`--proxy-protocol`).
    /// Boxed: most servers have no balancer, and every byte of an entry
    /// is paid per client (and again for the table's spare room).
    via: Option<Box<SocketAddr>>,
    /// Its join is logged (with a PROXY header, once the header said who).
    announced: bool,
    connected_at: Instant,
    /// The session's inbox and counters.
    link: Arc<SessionLink>,
    /// The session has been told to close, for idleness or by an operator.
    closing_idle: bool,
}

impl Entry {
    fn who(&self, id: ClientId) -> Who {
        Who {
            id,
            peer: self.peer,
            via: self.via.as_deref().copied(),
        }
    }
}

/// The actor's state. Its logic is the synchronous [`Registry::handle`].
#[derive(Default)]
pub(crate) struct Registry {
    config: RegistryConfig,
    clients: HashMap<ClientId, Entry>,
    /// Entries announced: the clients (the rest await their PROXY header).
    announced: usize,
    /// Counts of clients that have left.
    departed: Counts,
    /// Clients announced since start.
    admitted: u64,
    rejected: u64,
    tls_failed: u64,
    proxy_failed: u64,
    tls_on_plain: u64,
    /// Connections that were a proxy's health check (a `LOCAL` header).
    proxy_local: u64,
    /// Clients the server closed, by why (`/metrics`).
    cuts: Cuts,
    waiters: Vec<(usize, oneshot::Sender<()>)>,
    /// Shutdown has begun: inboxes are closed, new ones too.
    draining: bool,
    reject_warnings: Throttle,
    proxy_warnings: Throttle,
    /// TLS clients on a plain server: a fleet of them, misconfigured, can
    /// come many times a second.
    tls_on_plain_lines: Throttle,
    /// Failed TLS handshakes: a flood of garbage on a TLS port is a few lines.
    tls_failed_lines: Throttle,
    /// Clients and connects per address.
    per_ip: PerIp,
}

/// Whether the actor should keep running after a message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Stop,
}

impl Registry {
    /// Starts the actor; returns its handle and its task (which ends after
    /// [`RegistryHandle::stop`]).
    pub(crate) fn spawn(config: RegistryConfig) -> (RegistryHandle, JoinHandle<()>) {
        let (sender, inbox) = bounded(INBOX_CAPACITY);
        let registry = Registry {
            per_ip: PerIp::new(config.per_ip.clone()),
            config,
            ..Registry::default()
        };
        let task = spawn(registry.run(inbox));
        (RegistryHandle { inbox: sender }, task)
    }

    async fn run(mut self, inbox: Receiver<RegistryMsg>) {
        let interval = self.config.snapshot_interval;
        let mut next_snapshot = interval.map(|every| Instant::now() + every);
        let sweep_every = self.config.sweep_interval();
        let mut next_sweep = sweep_every.map(|every| Instant::now() + every);
        loop {
            select_biased! {
                msg = inbox.recv().fuse() => {
                    let Ok(msg) = msg else { break };
                    if self.handle(msg) == Flow::Stop {
                        break;
                    }
                }
                _ = sleep_until(next_snapshot).fuse() => {
                    log_lines::summary(&self.summary());
                    next_snapshot = interval.map(|every| Instant::now() + every);
                }
                _ = sleep_until(next_sweep).fuse() => {
                    self.close_idle(Instant::now());
                    self.per_ip.prune(Instant::now());
                    next_sweep = sweep_every.map(|every| Instant::now() + every);
                }
            }
        }
    }

    /// Handles one message.
    pub(crate) fn handle(&mut self, msg: RegistryMsg) -> Flow {
        match msg {
            RegistryMsg::Register {
                id,
                peer,
                link,
                awaits_header,
                respond_to,
            } => {
                let admission = self.register(id, peer, link, !awaits_header);
                // The acceptor may have given up on this client; nothing to do.
                let _ = respond_to.send(admission);
            }
            RegistryMsg::Unregister { id, reason } => self.unregister(id, &reason),
            RegistryMsg::Identify {
                id,
                client,
                respond_to,
            } => {
                let admission = self.identify(id, client);
                // A session cut meanwhile does not need the answer.
                let _ = respond_to.send(admission);
            }
            RegistryMsg::Snapshot { respond_to } => {
                // A requester that stopped waiting does not need the answer.
                let _ = respond_to.send(self.snapshot());
            }
            RegistryMsg::LogSnapshot => log_lines::snapshot(self.snapshot()),
            RegistryMsg::Drain { respond_to } => {
                self.draining = true;
                for entry in self.clients.values() {
                    entry.link.inbox.close();
                }
                // The server waits for this answer; if it stopped, no matter.
                let _ = respond_to.send(());
            }
            RegistryMsg::WaitForCount {
                clients,
                respond_to,
            } => {
                self.waiters.push((clients, respond_to));
                self.wake_waiters();
            }
            RegistryMsg::Admin(request) => self.answer(request),
            RegistryMsg::Stop { respond_to } => {
                let snapshot = self.snapshot();
                log_lines::final_snapshot(&snapshot);
                // The server may have stopped waiting; the snapshot is logged anyway.
                let _ = respond_to.send(snapshot);
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    fn register(
        &mut self,
        id: ClientId,
        peer: SocketAddr,
        link: Arc<SessionLink>,
        announce: bool,
    ) -> Admission {
        let max = self.config.max_clients;
        if self.clients.len() >= max {
            self.rejected += 1;
            if let Some(suppressed) = self.reject_warnings.allow() {
                warn!("client rejected", {
                    client_id: id,
                    peer: Value::from_display(&peer),
                    clients: self.clients.len(),
                    reason: "server full",
                    suppressed: suppressed,
                });
            }
            return Admission::Full { max };
        }
        if announce {
            // Behind a balancer, the address is the header's: counted then.
            if let Err(refusal) = self.per_ip.admit(id, peer, Instant::now()) {
                return Admission::Refused(refusal);
            }
        }
        if self.draining {
            link.inbox.close();
        }
        self.clients.insert(
            id,
            Entry {
                peer,
                via: None,
                announced: announce,
                connected_at: Instant::now(),
                link,
                closing_idle: false,
            },
        );
        if announce {
            self.announced += 1;
            self.admitted += 1;
            log_lines::joined(
                &Who {
                    id,
                    peer,
                    via: None,
                },
                self.announced,
            );
        }
        self.wake_waiters();
        Admission::Admitted {
            clients: self.clients.len(),
        }
    }

    /// Records the client a PROXY header named for connection `id`, and
    /// announces it, unless its address is over a per-address limit.
    fn identify(&mut self, id: ClientId, client: SocketAddr) -> Admission {
        let Some(entry) = self.clients.get_mut(&id) else {
            return Admission::Admitted {
                clients: self.clients.len(),
            };
        };
        entry.via = Some(Box::new(std::mem::replace(&mut entry.peer, client)));
        if !entry.announced {
            if let Err(refusal) = self.per_ip.admit(id, client, Instant::now()) {
                return Admission::Refused(refusal);
            }
            entry.announced = true;
            self.announced += 1;
            self.admitted += 1;
            log_lines::joined(&entry.who(id), self.announced);
        }
        Admission::Admitted {
            clients: self.clients.len(),
        }
    }

    fn unregister(&mut self, id: ClientId, reason: &LeaveReason) {
        let Some(entry) = self.clients.remove(&id) else {
            warn!("leave from an unknown client", { client_id: id });
            return;
        };
        if entry.announced {
            self.per_ip.release(entry.peer, Instant::now());
        }
        let counts = entry.link.stats.counts();
        self.departed += counts;
        self.announced -= usize::from(entry.announced);
        self.count_failure(id, entry.peer, reason);
        self.cuts.count(reason);
        // A connection never announced (no PROXY header yet) leaves quietly.
        let level = if entry.announced {
            log::Level::Info
        } else {
            log::Level::Debug
        };
        let (who, connected_for) = (entry.who(id), entry.connected_at.elapsed());
        log_lines::left(&who, self.announced, reason, connected_for, counts, level);
        self.wake_waiters();
    }

    /// The client list now, ordered by id (connections awaiting their PROXY
    /// header are only counted).
    fn snapshot(&self) -> Snapshot {
        let mut totals = self.departed;
        let mut clients: Vec<ClientInfo> = self
            .clients
            .iter()
            .filter_map(|(&id, entry)| {
                let counts = entry.link.stats.counts();
                totals += counts;
                entry.announced.then(|| ClientInfo {
                    id,
                    peer: entry.peer,
                    via: entry.via.as_deref().copied(),
                    connected_for: entry.connected_at.elapsed(),
                    counts,
                })
            })
            .collect();
        clients.sort_by_key(|c| c.id);
        Snapshot {
            clients,
            awaiting_header: self.clients.len() - self.announced,
            totals,
            admitted: self.admitted,
            rejected: self.rejected,
            tls_failed: self.tls_failed,
            proxy_failed: self.proxy_failed,
            tls_on_plain: self.tls_on_plain,
            proxy_local: self.proxy_local,
            per_ip: self.per_ip.counts(),
        }
    }

    /// The snapshot's counts, without building its client list: what the
    /// periodic line says.
    fn summary(&self) -> Summary {
        let mut totals = self.departed;
        for entry in self.clients.values() {
            totals += entry.link.stats.counts();
        }
        Summary {
            clients: self.announced,
            awaiting_header: self.clients.len() - self.announced,
            totals,
            admitted: self.admitted,
            rejected: self.rejected,
            tls_failed: self.tls_failed,
            proxy_failed: self.proxy_failed,
            tls_on_plain: self.tls_on_plain,
            proxy_local: self.proxy_local,
            per_ip: self.per_ip.counts(),
        }
    }
}

mod admin;
mod config;
mod failures;
mod handle;
mod log_lines;
mod per_ip;
mod wakes;

pub use config::RegistryConfig;
pub use handle::RegistryHandle;
pub use per_ip::{ConnectRate, PerIpCounts, PerIpLimits, RESTING_MAX};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::SessionCommand;
    use std::time::Duration;

    fn registry(max_clients: usize) -> Registry {
        Registry {
            config: RegistryConfig {
                max_clients,
                snapshot_interval: None,
                idle_timeout: Some(Duration::from_secs(60)),
                ..RegistryConfig::default()
            },
            ..Registry::default()
        }
    }

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Registers client `id` and returns the admission and its link (the
    /// session's inbox and stats).
    fn register(registry: &mut Registry, id: u64) -> (Admission, Arc<SessionLink>) {
        register_as(registry, id, false)
    }

    /// Registers connection `id`, which awaits a PROXY header if `proxied`.
    fn register_as(
        registry: &mut Registry,
        id: u64,
        proxied: bool,
    ) -> (Admission, Arc<SessionLink>) {
        let link = Arc::new(SessionLink::default());
        let (respond_to, mut response) = oneshot::channel();
        registry.handle(RegistryMsg::Register {
            id: ClientId(id),
            peer: peer(40000 + id as u16),
            link: link.clone(),
            awaits_header: proxied,
            respond_to,
        });
        let admission = response
            .try_recv()
            .expect("registry answered")
            .expect("answered at once");
        (admission, link)
    }

    fn leave(registry: &mut Registry, id: u64) {
        registry.handle(RegistryMsg::Unregister {
            id: ClientId(id),
            reason: LeaveReason::PeerClosed,
        });
    }

    #[test]
    fn add_and_remove_keep_the_count() {
        let mut registry = registry(10);
        assert_eq!(
            register(&mut registry, 1).0,
            Admission::Admitted { clients: 1 }
        );
        assert_eq!(
            register(&mut registry, 2).0,
            Admission::Admitted { clients: 2 }
        );
        leave(&mut registry, 1);
        let snapshot = registry.snapshot();
        assert_eq!(snapshot.clients.len(), 1);
        assert_eq!(snapshot.clients[0].id, ClientId(2));
        assert_eq!(snapshot.clients[0].peer, peer(40002));
        leave(&mut registry, 2);
        assert!(registry.snapshot().clients.is_empty());
        assert_eq!(registry.snapshot().admitted, 2);
    }

    #[test]
    fn a_client_over_the_cap_is_refused_and_not_listed() {
        let mut registry = registry(1);
        register(&mut registry, 1);
        assert_eq!(register(&mut registry, 2).0, Admission::Full { max: 1 });
        let snapshot = registry.snapshot();
        assert_eq!(snapshot.clients.len(), 1);
        assert_eq!(snapshot.rejected, 1);
    }

    #[test]
    fn snapshot_totals_include_clients_that_left() {
        let mut registry = registry(10);
        let (_, link1) = register(&mut registry, 1);
        let (_, link2) = register(&mut registry, 2);
        link1.stats.received(3, 30, Instant::now());
        link1.stats.sent(3, 90);
        link2.stats.received(1, 5, Instant::now());
        leave(&mut registry, 1);
        let snapshot = registry.snapshot();
        assert_eq!(snapshot.clients[0].counts.messages_in, 1);
        assert_eq!(snapshot.totals.messages_in, 4);
        assert_eq!(snapshot.totals.bytes_out, 90);
    }

    #[test]
    fn the_periodic_summary_counts_what_the_snapshot_lists() {
        let mut registry = registry(10);
        let (_, link1) = register(&mut registry, 1);
        register(&mut registry, 2);
        link1.stats.received(2, 20, Instant::now());
        leave(&mut registry, 2);
        let summary = registry.summary();
        let snapshot = registry.snapshot();
        assert_eq!(summary.clients, snapshot.clients.len());
        assert_eq!(summary.totals, snapshot.totals);
        assert_eq!(summary.admitted, snapshot.admitted);
        assert_eq!(summary.awaiting_header, snapshot.awaiting_header);
    }

    #[test]
    fn a_connection_is_a_client_once_its_header_names_one_and_a_check_counts_apart() {
        let mut registry = registry(3);
        register_as(&mut registry, 1, true);
        register_as(&mut registry, 2, true);
        let snapshot = registry.snapshot();
        assert!(snapshot.clients.is_empty());
        assert_eq!((snapshot.awaiting_header, snapshot.admitted), (2, 0));
        let (respond_to, _) = oneshot::channel();
        registry.handle(RegistryMsg::Identify {
            id: ClientId(1),
            client: peer(9),
            respond_to,
        });
        registry.handle(RegistryMsg::Unregister {
            id: ClientId(2),
            reason: LeaveReason::ProxyLocal,
        });
        let snapshot = registry.snapshot();
        assert_eq!(snapshot.clients.len(), 1);
        assert_eq!(snapshot.clients[0].peer, peer(9));
        assert_eq!((snapshot.awaiting_header, snapshot.admitted), (0, 1));
        assert_eq!((snapshot.proxy_local, snapshot.proxy_failed), (1, 0));
        // Every held connection counts toward the cap, header or not.
        register_as(&mut registry, 3, true);
        register_as(&mut registry, 4, true);
        assert_eq!(
            register_as(&mut registry, 5, true).0,
            Admission::Full { max: 3 }
        );
        assert_eq!(registry.summary().clients, 1);
        assert_eq!(registry.summary().awaiting_header, 2);
    }

    #[test]
    fn a_count_waiter_is_answered_when_the_count_is_reached() {
        let mut registry = registry(10);
        register(&mut registry, 1);
        let (respond_to, mut response) = oneshot::channel();
        registry.handle(RegistryMsg::WaitForCount {
            clients: 0,
            respond_to,
        });
        assert_eq!(response.try_recv(), Ok(None));
        leave(&mut registry, 1);
        assert_eq!(response.try_recv(), Ok(Some(())));
    }

    #[test]
    fn a_client_idle_for_the_timeout_is_told_to_close_once() {
        let mut registry = registry(10);
        let (_, quiet) = register(&mut registry, 1);
        let (_, busy) = register(&mut registry, 2);
        let later = Instant::now() + Duration::from_secs(61);
        busy.stats.received(1, 2, later - Duration::from_secs(1));
        registry.close_idle(later);
        assert!(matches!(
            quiet.inbox.try_recv(),
            Some(Some(SessionCommand::CloseIdle))
        ));
        assert!(
            busy.inbox.try_recv().is_none(),
            "the busy client is left alone"
        );
        registry.close_idle(later + Duration::from_secs(1));
        assert!(quiet.inbox.try_recv().is_none(), "told only once");
        assert!(quiet.stats.idle_for(later) >= Duration::from_secs(60));
    }

    #[test]
    fn drain_closes_every_inbox_after_what_it_holds_and_later_ones_at_once() {
        let mut registry = registry(10);
        let (_, idle) = register(&mut registry, 1);
        // Client 2 has just sent something, so only client 1 is idle.
        let later = Instant::now() + Duration::from_secs(61);
        let (_, busy) = register(&mut registry, 2);
        busy.stats.received(1, 2, later);
        registry.close_idle(later);
        let (respond_to, mut response) = oneshot::channel();
        registry.handle(RegistryMsg::Drain { respond_to });
        assert_eq!(response.try_recv(), Ok(Some(())));
        // A command already queued is still delivered; then the inbox is closed.
        assert!(matches!(
            idle.inbox.try_recv(),
            Some(Some(SessionCommand::CloseIdle))
        ));
        assert!(idle.inbox.is_closed() && busy.inbox.is_closed());
        let (_, late) = register(&mut registry, 3);
        assert!(late.inbox.is_closed());
    }

    #[test]
    fn stop_ends_the_actor_with_a_final_snapshot() {
        let mut registry = registry(10);
        register(&mut registry, 7);
        let (respond_to, mut response) = oneshot::channel();
        assert_eq!(
            registry.handle(RegistryMsg::Stop { respond_to }),
            Flow::Stop
        );
        let snapshot = response.try_recv().expect("answered").expect("at once");
        assert_eq!(snapshot.clients[0].id, ClientId(7));
    }

    #[async_std::test]
    async fn the_spawned_actor_answers_through_its_handle() {
        let (handle, task) = Registry::spawn(RegistryConfig {
            max_clients: 10,
            snapshot_interval: Some(Duration::from_millis(1)),
            idle_timeout: Some(Duration::from_millis(1)),
            ..RegistryConfig::default()
        });
        let link = Arc::new(SessionLink::default());
        let admission = handle.register(ClientId(1), peer(1), link, false).await;
        assert_eq!(admission, Admission::Admitted { clients: 1 });
        handle
            .unregister(ClientId(1), LeaveReason::PeerClosed)
            .await;
        handle.wait_for_clients(0).await;
        assert!(handle.stop().await.clients.is_empty());
        task.await;
    }
}
