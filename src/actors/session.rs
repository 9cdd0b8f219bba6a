//! The session actor: one per client, for the life of its connection.
//!
//! Owns the client's [`LineSocket`] (socket and framer), its reply buffer and
//! its [`SessionLink`] (counters and inbox, shared with the registry). One
//! task does both directions: read, frame lines, format one reply per line
//! into the reply buffer, then one write per batch. That task is the only
//! writer of the socket; the registry reaches the client through the
//! session's one-slot inbox ([`SessionCommand`]), which the same task reads.
//! Between messages it holds no buffer: both are borrowed from the thread's
//! pool ([`crate::buffers`]) while bytes are handled.
//!
//! Behind a PROXY-protocol balancer, a session starts by reading the header
//! and telling the registry who the client is; a TLS server's session then
//! does the handshake, within the handshake timeout (a plain-text client is
//! told in plain text that the port speaks TLS). A plain server's session
//! whose client opens with a TLS ClientHello closes without answering it.
//! The waits the server can interrupt are in `session/waits.rs`.
//!
//! A slow reader stalls only its own session: while a write waits for the
//! socket, the session reads nothing more from that client (backpressure).
//!
//! Stops when the client closes or fails, when it opens with TLS on a plain
//! server, when a line is too long, when the registry finds the client idle
//! (`SessionCommand::CloseIdle`) or an operator closes it
//! (`SessionCommand::CloseByOperator`), or at server shutdown: when the registry closes the inbox it answers what it has read,
//! sends the notice and closes; `cut` stops it writing at once. However it
//! ends, [`run`](Session::run) returns the [`LeaveReason`], and the task that
//! runs it (the acceptor's `session_task`) tells the registry, then drops
//! the session, which closes the connection.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use futures::{FutureExt, select_biased};
use kv_log_macro::warn;

use crate::buffers;
use crate::messages::{ClientId, LeaveReason, SessionCommand, SessionLink};
use crate::net::LineSocket;
use crate::rt::Alarm;
use crate::wire;

mod context;
mod leave;
mod opening;
mod waits;

pub use context::SessionConfig;
pub(crate) use context::SessionContext;

use waits::write_or_cut;

/// One client's actor. Build with [`Session::new`], then `run` it in its own task.
pub(crate) struct Session {
    id: ClientId,
    peer: SocketAddr,
    socket: LineSocket,
    /// Replies and notices waiting for the next write; unallocated between
    /// writes.
    out: Vec<u8>,
    /// Replies in `out`.
    replies_queued: u64,
    /// Its counters and inbox, shared with the registry.
    link: Arc<SessionLink>,
    context: Arc<SessionContext>,
}

/// A batch of replies stops growing past this many bytes: the lines after
/// it wait in the read buffer until the batch is written, so a client that
/// stops reading holds at most this plus one reply in its reply buffer, not
/// a reply for every line one read brought (empty lines make 26 bytes of
/// reply per byte read). The size the thread's pool keeps.
const REPLY_BATCH_MAX: usize = buffers::OUT_KEEP_MAX;

/// A read of fewer bytes than this that completes no line does not restart
/// the fragment's timer: a client sending a byte at a time cannot hold a
/// line open, while a long line streaming in is answered whole.
const TRICKLE_MAX: usize = 256;

enum Event {
    Read(io::Result<usize>),
    Command(Option<SessionCommand>),
    Deadline,
}

impl Session {
    pub(crate) fn new(
        id: ClientId,
        peer: SocketAddr,
        socket: LineSocket,
        link: Arc<SessionLink>,
        context: Arc<SessionContext>,
    ) -> Session {
        Session {
            id,
            peer,
            socket,
            out: Vec::new(),
            replies_queued: 0,
            link,
            context,
        }
    }

    /// The client it serves.
    pub(crate) fn id(&self) -> ClientId {
        self.id
    }

    /// What it shares with the server's other sessions.
    pub(crate) fn context(&self) -> &SessionContext {
        &self.context
    }

    /// Serves the client until it leaves, readies the close its end
    /// requires, and says why it left. The connection closes when the
    /// session is dropped, which its task does once the registry has counted
    /// the client out.
    // Not an `async fn`, which would keep `self` twice (once as the
    // argument, once as the local it is moved into; rust-lang/rust#62958):
    // this future is most of what an idle client costs.
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn run(&mut self) -> impl Future<Output = LeaveReason> + Send + '_ {
        async move {
            let end = match Box::pin(self.open()).await {
                // Once per connection, so boxed: inline, the opening's state
                // would sit in every idle session's future.
                Ok(()) => self.exchange().await,
                Err(end) => end,
            };
            self.close(end)
        }
    }

    /// Answers the client's lines until the exchange ends, then says the
    /// session's last words; how it ended.
    async fn exchange(&mut self) -> LeaveReason {
        let mut fragment_since: Option<Instant> = None;
        // The alarm lives across iterations, so waiting on it registers a
        // timer only when it is armed, not once per message (the inbox keeps
        // its listener the same way). It is only armed while a fragment waits;
        // idle clients are found by the registry, so an idle session holds no
        // timer.
        let mut alarm = Alarm::new();
        let end = loop {
            if let Some(deadline) = self.fragment_deadline(fragment_since) {
                alarm.arm_by(deadline);
            }
            let event = select_biased! {
                command = self.link.inbox.recv().fuse() => Event::Command(command),
                read = self.socket.read().fuse() => Event::Read(read),
                _ = alarm => Event::Deadline,
            };
            match event {
                Event::Read(Ok(0)) => break LeaveReason::PeerClosed,
                Event::Read(Ok(n)) => {
                    let now = Instant::now();
                    // A TLS client on a plain server: its ClientHello is no
                    // message, and no echo could reach it. Only the first
                    // bytes are looked at; later, the same are a message.
                    if self.link.stats.nothing_received() && self.socket.holds_client_hello() {
                        self.link.stats.received(0, n as u64, now);
                        break LeaveReason::TlsOnPlain;
                    }
                    let queued_before = self.replies_queued;
                    let framed = self.answer_lines();
                    let lines = self.replies_queued - queued_before;
                    self.link.stats.received(lines, n as u64, now);
                    let more = match framed {
                        Ok(more) => more,
                        Err(too_long) => break too_long.into(),
                    };
                    // A fragment's time counts from its first byte, or from
                    // the last read that brought a good part of it: a line
                    // that trickles in a byte at a time is still taken as a
                    // message once the fragment timeout has passed, and one
                    // that streams in is not cut (it is bounded by
                    // `--max-line` instead).
                    let trickle = n < TRICKLE_MAX;
                    fragment_since = match (self.socket.has_fragment(), lines) {
                        (false, _) => None,
                        (true, 0) if trickle => fragment_since.or(Some(now)),
                        (true, _) => Some(now),
                    };
                    if let Err(end) = self.flush().await {
                        break end;
                    }
                    // Rare (one read brought more than a batch of replies),
                    // so boxed: inline, its state would be in every session.
                    if more {
                        if let Err(end) = Box::pin(self.answer_rest()).await {
                            break end;
                        }
                    }
                }
                Event::Read(Err(e)) => break LeaveReason::Io(e),
                Event::Command(Some(command)) => break command.into(),
                // The registry closed our inbox: the server is shutting down.
                Event::Command(None) => break LeaveReason::ServerShutdown,
                Event::Deadline => {
                    // The alarm may have been armed for an earlier deadline
                    // than the one that stands now; that is checked here.
                    let now = Instant::now();
                    let due = self
                        .fragment_deadline(fragment_since)
                        .is_some_and(|at| at <= now);
                    if due {
                        let messages = u64::from(self.socket.has_fragment());
                        if let Err(too_long) = self.answer_fragment() {
                            break too_long.into();
                        }
                        // Its bytes, and the time of the client's last
                        // input, were recorded when they were read.
                        self.link.stats.received_more(messages);
                        fragment_since = None;
                        if let Err(end) = self.flush().await {
                            break end;
                        }
                    }
                }
            }
        };
        // Once per connection, so boxed: inline, its state would sit in
        // every idle session's future.
        Box::pin(self.finish(end)).await
    }

    /// When a fragment that came at `since` is taken as a message.
    fn fragment_deadline(&self, since: Option<Instant>) -> Option<Instant> {
        since
            .zip(self.context.config.fragment_timeout)
            .map(|(since, wait)| since + wait)
    }

    /// The session's last words, as its end calls for, then a close that
    /// lets them arrive; how it ended after all (a write can still fail).
    async fn finish(&mut self, end: LeaveReason) -> LeaveReason {
        let last_line = match end {
            LeaveReason::PeerClosed | LeaveReason::ServerShutdown => {
                let fragment = u64::from(self.socket.has_fragment());
                if let Err(wire::FrameError::LineTooLong { max }) = self.answer_fragment() {
                    return self.refuse(max).await;
                }
                // Its bytes were counted when they were read.
                self.link.stats.received_more(fragment);
                let shutdown = matches!(end, LeaveReason::ServerShutdown);
                shutdown.then_some(wire::SHUTDOWN_NOTICE)
            }
            LeaveReason::IdleTimeout => Some(wire::IDLE_TIMEOUT_ERROR),
            LeaveReason::Operator { told: true } => Some(wire::OPERATOR_CLOSE_ERROR),
            LeaveReason::LineTooLong { max } => return self.refuse(max).await,
            // Nothing more can be said.
            _ => return end,
        };
        if let Some(line) = last_line {
            self.out.extend_from_slice(line);
        }
        if let Err(failed) = self.flush().await {
            return failed;
        }
        // A client that closed has its replies; anyone else is closed on.
        if !matches!(end, LeaveReason::PeerClosed) {
            self.linger().await;
        }
        end
    }

    /// Closes so that the client's last line arrives, unless the server cuts it short.
    async fn linger(&mut self) {
        select_biased! {
            _ = self.context.cut.wait().fuse() => {}
            _ = self.socket.linger_close().fuse() => {}
        }
    }

    /// Answers the lines a read brought beyond its first batch of replies,
    /// a batch (one write) at a time.
    async fn answer_rest(&mut self) -> Result<(), LeaveReason> {
        loop {
            let queued_before = self.replies_queued;
            let framed = self.answer_lines();
            let messages = self.replies_queued - queued_before;
            self.link.stats.received_more(messages);
            let more = framed?;
            self.flush().await?;
            if !more {
                return Ok(());
            }
        }
    }

    /// Formats a reply for each complete line buffered, until the batch
    /// reaches [`REPLY_BATCH_MAX`]; whether it stopped there (more lines may
    /// wait).
    fn answer_lines(&mut self) -> Result<bool, wire::FrameError> {
        while self.out.len() < REPLY_BATCH_MAX {
            let Some(line) = self.socket.next_line() else {
                return Ok(false);
            };
            wire::write_reply(&mut self.out, line?);
            self.replies_queued += 1;
        }
        // The rest waits: in no more memory than it needs.
        self.socket.pause_lines();
        Ok(true)
    }

    /// Takes buffered unterminated bytes as one message and formats its reply.
    fn answer_fragment(&mut self) -> Result<(), wire::FrameError> {
        if let Some(fragment) = self.socket.take_fragment() {
            wire::write_reply(&mut self.out, fragment?);
            self.replies_queued += 1;
        }
        Ok(())
    }

    /// Answers what came before a line over the limit of `max` bytes, tells
    /// the client the line was too long, and closes.
    async fn refuse(&mut self, max: usize) -> LeaveReason {
        self.out.extend_from_slice(&wire::line_too_long_error(max));
        if let Err(failed) = self.flush().await {
            return failed;
        }
        warn!("line too long", { client_id: self.id, max_line: max });
        self.linger().await;
        LeaveReason::LineTooLong { max }
    }

    /// Writes everything queued in one go, unless the server cuts it short.
    async fn flush(&mut self) -> Result<(), LeaveReason> {
        if self.out.is_empty() {
            return Ok(());
        }
        write_or_cut(&mut self.socket, &self.context, &self.link.inbox, &self.out).await?;
        self.link
            .stats
            .sent(self.replies_queued, self.out.len() as u64);
        self.replies_queued = 0;
        // Given back: an idle client holds no reply buffer.
        buffers::give_out(std::mem::take(&mut self.out));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::acceptor::{Serve, session_task};
    use crate::actors::registry::{Registry, RegistryConfig, RegistryHandle};
    use crate::rt::Socket;
    use crate::shutdown::Shutdown;
    use std::time::Duration;

    /// What the sessions of a plain server without a balancer share.
    fn plain_context(registry: RegistryHandle, config: SessionConfig) -> Arc<SessionContext> {
        Arc::new(SessionContext {
            registry,
            config,
            cut: Shutdown::never(),
            tls: None,
            proxy: None,
        })
    }

    /// Most of what an idle client costs the server is its session's task
    /// (`acceptor::session_task` around `Session::run`); the memory per
    /// idle client in docs/performance.md depends on it staying small, and
    /// this is where its size is stated. (Known ways to blow it up: an
    /// inline buffer, `async fn` arguments stored twice, a long-lived
    /// temporary next to another await, a rare path's wait left inline
    /// instead of boxed.)
    #[async_std::test]
    async fn a_session_task_stays_small() {
        let (registry, _task) = Registry::spawn(RegistryConfig {
            max_clients: 1,
            snapshot_interval: None,
            idle_timeout: None,
            ..RegistryConfig::default()
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("bound");
        let stream =
            Socket::new(std::net::TcpStream::connect(addr).expect("connect")).expect("register");
        let config = SessionConfig {
            max_line: 1024,
            ..SessionConfig::default()
        };
        let context = plain_context(registry.clone(), config);
        let session = Session::new(
            ClientId(1),
            addr,
            LineSocket::new(stream, 1024),
            Arc::default(),
            context,
        );
        let task = session_task(session);
        let size = std::mem::size_of_val(&task);
        eprintln!("session task: {size} bytes");
        assert!(size <= 432, "a session's task is {size} bytes");
    }

    /// A session whose task panics never returns its reason; the registry
    /// must still count it gone, as panicked.
    #[async_std::test]
    async fn a_session_that_panics_still_leaves_the_registry() {
        let (registry, _task) = Registry::spawn(RegistryConfig::default());
        let addr = "127.0.0.1:1".parse().expect("an address");
        let admitted = registry
            .register(ClientId(1), addr, Arc::default(), false)
            .await;
        assert!(matches!(
            admitted,
            crate::messages::Admission::Admitted { .. }
        ));
        struct Panics(RegistryHandle);
        impl Serve for Panics {
            async fn serve(&mut self) -> LeaveReason {
                panic!("a session's bug")
            }
            fn client(&self) -> (ClientId, &RegistryHandle) {
                (ClientId(1), &self.0)
            }
        }
        crate::rt::spawn(session_task(Panics(registry.clone())));
        let left = crate::rt::within(Duration::from_secs(10), registry.wait_for_clients(0));
        assert!(
            left.await.is_some(),
            "the registry still counts the session"
        );
    }
}
