//! The registry actor: the server's client list.
//!
//! Owns, per client: id, peer address, connection time, the session's outbox
//! and a handle to the counters the session bumps itself. The acceptor asks it
//! to admit each new client (the client cap lives here, beside the count);
//! sessions tell it when they leave. It logs every join and leave, and a
//! snapshot every `--registry-interval` and on request (SIGUSR1). It also
//! finds idle clients, from the last-input time in their counters, and tells
//! their sessions to close: one periodic sweep instead of a timer per session.
//!
//! It is never on the per-message path: sessions count their own traffic in
//! shared atomics, which the registry reads only when it reports. Nor does a
//! snapshot hold up the sessions: its summary line is logged at once, but the
//! lines per client (10 000 of them take some 35 ms of CPU to log) are
//! formatted by a thread at the lowest priority, so sessions keep answering
//! while a long list is written; and no log line is written to stderr by the
//! executor (see [`crate::logging`]).
//!
//! At shutdown, [`RegistryMsg::Drain`] closes every session's outbox, which is
//! how sessions learn to finish up: a session waits on its outbox anyway, so
//! it needs no separate signal. It stops on [`RegistryMsg::Stop`], after
//! logging a final snapshot; the server sends that last, once every session
//! has left or been cut.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::{FutureExt, select_biased};
use kv_log_macro::{info, warn};

use crate::messages::{
    Admission, BroadcastReport, ClientId, ClientInfo, Counts, LeaveReason, RegistryMsg,
    SessionCommand, SessionStats, Snapshot,
};
use crate::rt::{JoinHandle, Receiver, Sender, TrySendError, bounded, sleep_until, spawn};

/// Capacity of the registry's mailbox. Every message is a join, a leave or an
/// operator request, so this only absorbs bursts of connects and disconnects.
pub const MAILBOX_CAPACITY: usize = 1024;

/// What the registry needs to know from the server's configuration.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Clients admitted at once; one more is turned away.
    pub max_clients: usize,
    /// How often to log a snapshot; `None` turns the timer off.
    pub snapshot_interval: Option<Duration>,
    /// Close clients that send nothing for this long; `None` never.
    pub idle_timeout: Option<Duration>,
}

impl RegistryConfig {
    /// How often to look for idle clients: a quarter of the timeout, so a
    /// client is closed between 1 and 1.25 idle timeouts after its last input
    /// (never more often than every 10 ms, never less often than every second).
    fn idle_sweep_interval(&self) -> Option<Duration> {
        self.idle_timeout
            .map(|idle| (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)))
    }
}

struct Entry {
    peer: SocketAddr,
    connected_at: Instant,
    outbox: Sender<SessionCommand>,
    stats: Arc<SessionStats>,
    /// The session has been told to close for idleness.
    closing_idle: bool,
}

/// The actor's state. Its logic is the synchronous [`Registry::handle`].
pub struct Registry {
    config: RegistryConfig,
    clients: HashMap<ClientId, Entry>,
    /// Counts of clients that have left.
    departed: Counts,
    admitted: u64,
    rejected: u64,
    notices_dropped: u64,
    waiters: Vec<(usize, oneshot::Sender<()>)>,
    /// Shutdown has begun: outboxes are closed, new ones too.
    draining: bool,
    /// Client lists for the writer thread (see [`spawn_listing_writer`]).
    listings: std::sync::mpsc::SyncSender<Vec<ClientInfo>>,
}

/// Whether the actor should keep running after a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

impl Registry {
    /// The registry's state, and its client-list writer thread (which ends
    /// once the registry is dropped).
    pub fn new(config: RegistryConfig) -> Registry {
        let listings = spawn_listing_writer();
        Registry {
            config,
            clients: HashMap::new(),
            departed: Counts::default(),
            admitted: 0,
            rejected: 0,
            notices_dropped: 0,
            waiters: Vec::new(),
            draining: false,
            listings,
        }
    }

    /// Starts the actor; returns its handle and its task (which ends after
    /// [`RegistryHandle::stop`]).
    pub fn spawn(config: RegistryConfig) -> (RegistryHandle, JoinHandle<()>) {
        let (sender, mailbox) = bounded(MAILBOX_CAPACITY);
        let task = spawn(Registry::new(config).run(mailbox));
        (RegistryHandle { sender }, task)
    }

    async fn run(mut self, mailbox: Receiver<RegistryMsg>) {
        let interval = self.config.snapshot_interval;
        let mut next_snapshot = interval.map(|every| Instant::now() + every);
        let sweep_every = self.config.idle_sweep_interval();
        let mut next_sweep = sweep_every.map(|every| Instant::now() + every);
        loop {
            select_biased! {
                msg = mailbox.recv().fuse() => {
                    let Ok(msg) = msg else { break };
                    if self.handle(msg) == Flow::Stop {
                        break;
                    }
                }
                _ = sleep_until(next_snapshot).fuse() => {
                    self.log_snapshot();
                    next_snapshot = interval.map(|every| Instant::now() + every);
                }
                _ = sleep_until(next_sweep).fuse() => {
                    self.close_idle(Instant::now());
                    next_sweep = sweep_every.map(|every| Instant::now() + every);
                }
            }
        }
    }

    /// Handles one message.
    pub fn handle(&mut self, msg: RegistryMsg) -> Flow {
        match msg {
            RegistryMsg::Register {
                id,
                peer,
                outbox,
                stats,
                respond_to,
            } => {
                let admission = self.register(id, peer, outbox, stats);
                // The acceptor may have given up on this client; nothing to do.
                let _ = respond_to.send(admission);
            }
            RegistryMsg::Unregister { id, reason } => self.unregister(id, &reason),
            RegistryMsg::Snapshot { respond_to } => {
                // A requester that stopped waiting does not need the answer.
                let _ = respond_to.send(self.snapshot());
            }
            RegistryMsg::LogSnapshot => {
                self.log_snapshot();
            }
            RegistryMsg::Broadcast { line, respond_to } => {
                let report = self.broadcast(&line);
                // A requester that stopped waiting does not need the report.
                let _ = respond_to.send(report);
            }
            RegistryMsg::Drain { respond_to } => {
                self.draining = true;
                for entry in self.clients.values() {
                    entry.outbox.close();
                }
                let _ = respond_to.send(());
            }
            RegistryMsg::WaitForCount {
                clients,
                respond_to,
            } => {
                self.waiters.push((clients, respond_to));
                self.wake_waiters();
            }
            RegistryMsg::Stop { respond_to } => {
                // The final snapshot: nothing is left to serve, so its client
                // lines are written here, in full.
                let snapshot = self.log_summary();
                log_clients(&snapshot.clients);
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
        outbox: Sender<SessionCommand>,
        stats: Arc<SessionStats>,
    ) -> Admission {
        let max = self.config.max_clients;
        if self.clients.len() >= max {
            self.rejected += 1;
            warn!("client rejected", {
                client_id: id,
                peer: log::kv::Value::from_display(&peer),
                clients: self.clients.len(),
                reason: "server full",
            });
            return Admission::Full { max };
        }
        if self.draining {
            outbox.close();
        }
        self.clients.insert(
            id,
            Entry {
                peer,
                connected_at: Instant::now(),
                outbox,
                stats,
                closing_idle: false,
            },
        );
        self.admitted += 1;
        let clients = self.clients.len();
        info!("client joined", {
            client_id: id,
            peer: log::kv::Value::from_display(&peer),
            clients: clients,
        });
        self.wake_waiters();
        Admission::Admitted { clients }
    }

    fn unregister(&mut self, id: ClientId, reason: &LeaveReason) {
        let Some(entry) = self.clients.remove(&id) else {
            warn!("leave from an unknown client", { client_id: id });
            return;
        };
        let counts = entry.stats.counts();
        self.departed += counts;
        let connected_for = humantime::format_duration(round_ms(entry.connected_at.elapsed()));
        info!("client left", {
            client_id: id,
            peer: log::kv::Value::from_display(&entry.peer),
            clients: self.clients.len(),
            reason: log::kv::Value::from_display(reason),
            connected_for: log::kv::Value::from_display(&connected_for),
            messages_in: counts.messages_in,
            messages_out: counts.messages_out,
        });
        self.wake_waiters();
    }

    /// The client list now, ordered by id.
    pub fn snapshot(&self) -> Snapshot {
        let mut totals = self.departed;
        let mut clients: Vec<ClientInfo> = self
            .clients
            .iter()
            .map(|(&id, entry)| {
                let counts = entry.stats.counts();
                totals += counts;
                ClientInfo {
                    id,
                    peer: entry.peer,
                    connected_for: entry.connected_at.elapsed(),
                    counts,
                }
            })
            .collect();
        clients.sort_by_key(|c| c.id);
        Snapshot {
            clients,
            totals,
            admitted: self.admitted,
            rejected: self.rejected,
            notices_dropped: self.notices_dropped,
        }
    }

    /// Logs the summary line, and hands the client list to the low-priority
    /// writer thread for its line per client, so sessions keep answering.
    fn log_snapshot(&self) {
        let clients = self.log_summary().clients;
        // Snapshots asked for faster than their lines can be written skip the
        // list rather than queue up memory.
        match self.listings.try_send(clients) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(_)) => warn!(
                "registry snapshot: client lines skipped, earlier ones are still being written"
            ),
            // The writer thread could not be started; that was logged.
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {}
        }
    }

    /// Logs a snapshot's summary line; returns the snapshot.
    fn log_summary(&self) -> Snapshot {
        let snapshot = self.snapshot();
        let totals = snapshot.totals;
        info!("registry snapshot", {
            clients: snapshot.clients.len(),
            admitted: snapshot.admitted,
            rejected: snapshot.rejected,
            messages_in: totals.messages_in,
            messages_out: totals.messages_out,
            bytes_in: totals.bytes_in,
            bytes_out: totals.bytes_out,
            notices_dropped: snapshot.notices_dropped,
        });
        snapshot
    }

    fn broadcast(&mut self, line: &Arc<[u8]>) -> BroadcastReport {
        let mut report = BroadcastReport::default();
        for (id, entry) in &self.clients {
            let notice = SessionCommand::Notice { line: line.clone() };
            match entry.outbox.try_send(notice) {
                Ok(()) => report.delivered += 1,
                // A closed outbox belongs to a session whose leave is on its way.
                Err(TrySendError::Closed(_)) => {}
                Err(TrySendError::Full(_)) => {
                    report.dropped += 1;
                    warn!("notice dropped: outbox full", { client_id: *id });
                }
            }
        }
        self.notices_dropped += report.dropped as u64;
        report
    }

    /// Tells every client idle for the timeout (as of `now`) to close.
    /// A full outbox is tried again at the next sweep.
    pub fn close_idle(&mut self, now: Instant) {
        let Some(idle_timeout) = self.config.idle_timeout else {
            return;
        };
        for (id, entry) in &mut self.clients {
            if entry.closing_idle || entry.stats.idle_for(now) < idle_timeout {
                continue;
            }
            match entry.outbox.try_send(SessionCommand::CloseIdle) {
                Ok(()) => {
                    entry.closing_idle = true;
                    info!("closing idle client", {
                        client_id: *id,
                        idle_ms: entry.stats.idle_for(now).as_millis() as u64,
                    });
                }
                Err(TrySendError::Full(_)) | Err(TrySendError::Closed(_)) => {}
            }
        }
    }

    fn wake_waiters(&mut self) {
        let count = self.clients.len();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|(wanted, _)| *wanted == count);
        self.waiters = waiting;
        for (_, respond_to) in ready {
            // A waiter that gave up (timed out) does not need the answer.
            let _ = respond_to.send(());
        }
    }
}

/// Client lists waiting for the writer besides the one it is writing.
const LISTINGS_QUEUED: usize = 1;

/// Starts the thread that writes snapshots' client lines; it ends when the
/// returned sender is dropped.
///
/// A thread, not a task, and at the lowest priority (`SCHED_IDLE`): logging
/// 10 000 lines takes some 35 ms of CPU, and the thread waits whenever the
/// log's queue is half full (see [`crate::logging`]), and neither may hold up
/// the executor that runs the sessions. When the thread falls behind, lists
/// queue up to [`LISTINGS_QUEUED`] and then are skipped (with a warning),
/// never held in memory without bound.
fn spawn_listing_writer() -> std::sync::mpsc::SyncSender<Vec<ClientInfo>> {
    let (listings, queue) = std::sync::mpsc::sync_channel::<Vec<ClientInfo>>(LISTINGS_QUEUED);
    let spawned = std::thread::Builder::new()
        .name("duplex-listing".into())
        .spawn(move || {
            // SCHED_IDLE: the scheduler hands the core to any other thread
            // that wakes (the executor, on a socket event) at once, where a
            // nice value only shrinks this thread's share. Failing that, the
            // lowest nice value. On Linux both apply to the calling thread;
            // if neither can be set, the lines are written all the same.
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: plain system calls on the calling thread; `param`
            // outlives the call.
            unsafe {
                if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
                    libc::setpriority(libc::PRIO_PROCESS, 0, 19);
                }
            }
            for clients in queue {
                log_clients(&clients);
            }
        });
    if let Err(e) = spawned {
        warn!("no thread for snapshot client lines; they will be skipped", {
            error: log::kv::Value::from_display(&e),
        });
    }
    listings
}

/// Logs one line per client, waiting for room in the log's queue so that a
/// 10 000-line listing neither crowds out other lines nor loses its own. So
/// only where nothing else waits on the thread: the listing thread, and the
/// final snapshot, when nothing is left to serve.
fn log_clients(clients: &[ClientInfo]) {
    for client in clients {
        crate::logging::wait_for_room();
        let connected_for = humantime::format_duration(round_ms(client.connected_for));
        info!("registry client", {
            client_id: client.id,
            peer: log::kv::Value::from_display(&client.peer),
            connected_for: log::kv::Value::from_display(&connected_for),
            messages_in: client.counts.messages_in,
            messages_out: client.counts.messages_out,
        });
    }
}

/// Whole milliseconds, so logged durations read `1m 3s 52ms`, not nanoseconds.
fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().try_into().unwrap_or(u64::MAX))
}

/// The way other actors talk to the registry.
#[derive(Clone, Debug)]
pub struct RegistryHandle {
    sender: Sender<RegistryMsg>,
}

/// The registry's task ends only after [`RegistryHandle::stop`], which the
/// server sends last; a handle used after that is a bug in the shutdown order.
const REGISTRY_GONE: &str = "registry actor stopped before its last user";

impl RegistryHandle {
    async fn send(&self, msg: RegistryMsg) {
        self.sender.send(msg).await.expect(REGISTRY_GONE);
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> RegistryMsg) -> T {
        let (respond_to, response) = oneshot::channel();
        self.send(make(respond_to)).await;
        response.await.expect(REGISTRY_GONE)
    }

    /// Asks to admit a new client.
    pub async fn register(
        &self,
        id: ClientId,
        peer: SocketAddr,
        outbox: Sender<SessionCommand>,
        stats: Arc<SessionStats>,
    ) -> Admission {
        self.ask(|respond_to| RegistryMsg::Register {
            id,
            peer,
            outbox,
            stats,
            respond_to,
        })
        .await
    }

    /// Reports that a session ended.
    pub async fn unregister(&self, id: ClientId, reason: LeaveReason) {
        // A session cut at shutdown may report after the registry stopped;
        // its leave is already counted in the final snapshot as a cut.
        let _ = self
            .sender
            .send(RegistryMsg::Unregister { id, reason })
            .await;
    }

    /// The client list now.
    pub async fn snapshot(&self) -> Snapshot {
        self.ask(|respond_to| RegistryMsg::Snapshot { respond_to })
            .await
    }

    /// Asks the registry to log a snapshot. Never waits for the registry:
    /// when its mailbox is full the request is dropped, and the caller told.
    pub fn log_snapshot(&self) -> bool {
        self.sender.try_send(RegistryMsg::LogSnapshot).is_ok()
    }

    /// Queues `line` for every connected client; see [`RegistryMsg::Broadcast`].
    pub async fn broadcast(&self, line: Arc<[u8]>) -> BroadcastReport {
        self.ask(|respond_to| RegistryMsg::Broadcast { line, respond_to })
            .await
    }

    /// Starts the shutdown of every session (see [`RegistryMsg::Drain`]).
    pub async fn drain(&self) {
        self.ask(|respond_to| RegistryMsg::Drain { respond_to })
            .await
    }

    /// Completes when exactly `clients` clients are registered.
    pub async fn wait_for_clients(&self, clients: usize) {
        self.ask(|respond_to| RegistryMsg::WaitForCount {
            clients,
            respond_to,
        })
        .await
    }

    /// Logs a final snapshot, returns it, and stops the actor.
    pub async fn stop(&self) -> Snapshot {
        self.ask(|respond_to| RegistryMsg::Stop { respond_to })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(max_clients: usize) -> Registry {
        Registry::new(RegistryConfig {
            max_clients,
            snapshot_interval: None,
            idle_timeout: Some(Duration::from_secs(60)),
        })
    }

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Registers client `id` and returns the admission, its outbox and its stats.
    fn register(
        registry: &mut Registry,
        id: u64,
    ) -> (Admission, Receiver<SessionCommand>, Arc<SessionStats>) {
        let (outbox, inbox) = bounded(1);
        let stats = Arc::new(SessionStats::default());
        let (respond_to, mut response) = oneshot::channel();
        registry.handle(RegistryMsg::Register {
            id: ClientId(id),
            peer: peer(40000 + id as u16),
            outbox,
            stats: stats.clone(),
            respond_to,
        });
        let admission = response
            .try_recv()
            .expect("registry answered")
            .expect("answered at once");
        (admission, inbox, stats)
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
        let (_, _inbox1, stats1) = register(&mut registry, 1);
        let (_, _inbox2, stats2) = register(&mut registry, 2);
        stats1.received(3, 30, Instant::now());
        stats1.sent(3, 90);
        stats2.received(1, 5, Instant::now());
        leave(&mut registry, 1);
        let snapshot = registry.snapshot();
        assert_eq!(snapshot.clients[0].counts.messages_in, 1);
        assert_eq!(snapshot.totals.messages_in, 4);
        assert_eq!(snapshot.totals.bytes_out, 90);
    }

    #[test]
    fn a_broadcast_skips_full_outboxes_and_counts_them() {
        let mut registry = registry(10);
        let (_, inbox1, _) = register(&mut registry, 1);
        let (_, _inbox2, _) = register(&mut registry, 2);
        let line: Arc<[u8]> = Arc::from(&b"notice: hi\n"[..]);
        let (respond_to, mut response) = oneshot::channel();
        registry.handle(RegistryMsg::Broadcast {
            line: line.clone(),
            respond_to,
        });
        let first = response.try_recv().expect("answered").expect("at once");
        assert_eq!(first.delivered, 2);
        // Outboxes hold one notice: client 1 reads its own, client 2 does not.
        inbox1.try_recv().expect("delivered");
        let (respond_to, mut response) = oneshot::channel();
        registry.handle(RegistryMsg::Broadcast { line, respond_to });
        let second = response.try_recv().expect("answered").expect("at once");
        assert_eq!(
            second,
            BroadcastReport {
                delivered: 1,
                dropped: 1
            }
        );
        assert_eq!(registry.snapshot().notices_dropped, 1);
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
        let (_, quiet, quiet_stats) = register(&mut registry, 1);
        let (_, busy, busy_stats) = register(&mut registry, 2);
        let later = Instant::now() + Duration::from_secs(61);
        busy_stats.received(1, 2, later - Duration::from_secs(1));
        registry.close_idle(later);
        assert!(matches!(quiet.try_recv(), Ok(SessionCommand::CloseIdle)));
        assert!(busy.try_recv().is_err(), "the busy client is left alone");
        registry.close_idle(later + Duration::from_secs(1));
        assert!(quiet.try_recv().is_err(), "told only once");
        assert!(quiet_stats.idle_for(later) >= Duration::from_secs(60));
    }

    #[test]
    fn drain_closes_every_outbox_after_what_it_holds_and_later_ones_at_once() {
        let mut registry = registry(10);
        let (_, with_notice, _) = register(&mut registry, 1);
        let (_, empty, _) = register(&mut registry, 2);
        let (respond_to, _) = oneshot::channel();
        registry.handle(RegistryMsg::Broadcast {
            line: Arc::from(&b"notice: hi\n"[..]),
            respond_to,
        });
        empty.try_recv().expect("the notice");
        let (respond_to, mut response) = oneshot::channel();
        registry.handle(RegistryMsg::Drain { respond_to });
        assert_eq!(response.try_recv(), Ok(Some(())));
        // A notice already queued is still delivered; then the outbox is closed.
        assert!(matches!(
            with_notice.try_recv(),
            Ok(SessionCommand::Notice { .. })
        ));
        assert!(with_notice.is_closed() && empty.is_closed());
        let (_, late, _) = register(&mut registry, 3);
        assert!(late.is_closed());
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
        });
        let (outbox, _inbox) = bounded(1);
        let stats = Arc::new(SessionStats::default());
        let admission = handle.register(ClientId(1), peer(1), outbox, stats).await;
        assert_eq!(admission, Admission::Admitted { clients: 1 });
        handle
            .unregister(ClientId(1), LeaveReason::PeerClosed)
            .await;
        handle.wait_for_clients(0).await;
        assert!(handle.stop().await.clients.is_empty());
        task.await;
    }
}
