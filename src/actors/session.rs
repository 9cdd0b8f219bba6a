//! The session actor: one per client, for the life of its connection.
//!
//! Owns the client's socket, its [`Framer`] (read buffer), its reply buffer and
//! its counters. One task does both directions: read, frame lines, format one
//! reply per line into the reply buffer, then one write per batch. That task is
//! the only writer of the socket; the registry reaches the client through the
//! session's bounded outbox ([`SessionCommand`]), which the same task drains.
//!
//! A slow reader stalls only its own session: while a write waits for the
//! socket, the session reads nothing more from that client (backpressure).
//!
//! Stops when the client closes or fails, when a line is too long, on idle
//! timeout, or at server shutdown (`drain`: answer what was read, send the
//! notice, close; `cut`: stop writing at once). On every path it tells the
//! registry why it left.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, FutureExt, select_biased};
use kv_log_macro::{debug, warn};

use crate::actors::registry::RegistryHandle;
use crate::messages::{ClientId, LeaveReason, SessionCommand, SessionStats};
use crate::rt::{Receiver, TcpStream, sleep_until, within};
use crate::shutdown::Shutdown;
use crate::wire::{self, Framer, ReplyFormatter};

/// Capacity of a session's outbox, in notices. Only the registry writes to it,
/// and it never waits: a notice to a full outbox is dropped and counted.
pub const OUTBOX_CAPACITY: usize = 8;

/// The per-session settings, shared by every session of a server.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Longest accepted message, in bytes.
    pub max_line: usize,
    /// How long unterminated bytes wait before being taken as one message;
    /// `None` waits for the newline forever.
    pub fragment_timeout: Option<Duration>,
    /// How long a client may send nothing before it is closed; `None` never.
    pub idle_timeout: Option<Duration>,
}

/// The server-wide signals a session obeys.
#[derive(Debug, Clone)]
pub struct SessionSignals {
    /// Finish up: answer what was read, send the shutdown notice, close.
    pub drain: Shutdown,
    /// Stop now, even in the middle of a write.
    pub cut: Shutdown,
}

/// One client's actor. Build with [`Session::new`], then `run` it in its own task.
pub struct Session {
    id: ClientId,
    peer: SocketAddr,
    stream: TcpStream,
    framer: Framer,
    /// Replies and notices waiting for the next write.
    out: Vec<u8>,
    /// Replies in `out`.
    replies_queued: u64,
    formatter: ReplyFormatter,
    stats: Arc<SessionStats>,
    outbox: Receiver<SessionCommand>,
    registry: RegistryHandle,
    config: Arc<SessionConfig>,
    signals: SessionSignals,
}

enum Event {
    Read(io::Result<usize>),
    Command(Option<SessionCommand>),
    Deadline,
    Drain,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: ClientId,
        peer: SocketAddr,
        stream: TcpStream,
        stats: Arc<SessionStats>,
        outbox: Receiver<SessionCommand>,
        registry: RegistryHandle,
        config: Arc<SessionConfig>,
        signals: SessionSignals,
    ) -> Session {
        Session {
            id,
            peer,
            stream,
            framer: Framer::new(config.max_line),
            out: Vec::new(),
            replies_queued: 0,
            formatter: ReplyFormatter::new(),
            stats,
            outbox,
            registry,
            config,
            signals,
        }
    }

    /// Serves the client until it leaves, then tells the registry why.
    pub async fn run(mut self) {
        let reason = match self.serve().await {
            Ok(reason) => {
                if !matches!(reason, LeaveReason::PeerClosed) {
                    select_biased! {
                        _ = self.signals.cut.wait().fuse() => {}
                        _ = linger_close(&self.stream).fuse() => {}
                    }
                }
                reason
            }
            Err(e) if self.signals.cut.is_triggered() => {
                debug!("session cut", { client_id: self.id, error: log::kv::Value::from_display(&e) });
                LeaveReason::Cut
            }
            Err(e) => LeaveReason::Io(e),
        };
        if let LeaveReason::Io(e) = &reason {
            warn!("session failed", {
                client_id: self.id,
                peer: log::kv::Value::from_display(&self.peer),
                error: log::kv::Value::from_display(e),
            });
        }
        self.registry.unregister(self.id, reason).await;
    }

    async fn serve(&mut self) -> io::Result<LeaveReason> {
        self.out.extend_from_slice(wire::GREETING);
        self.flush().await?;
        let mut last_input = Instant::now();
        let mut fragment_since: Option<Instant> = None;
        loop {
            let fragment_deadline = fragment_since
                .zip(self.config.fragment_timeout)
                .map(|(since, wait)| since + wait);
            let idle_deadline = self.config.idle_timeout.map(|idle| last_input + idle);
            let deadline = match (fragment_deadline, idle_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let mut reader = &self.stream;
            let event = select_biased! {
                _ = self.signals.drain.wait().fuse() => Event::Drain,
                command = self.outbox.recv().fuse() => Event::Command(command.ok()),
                read = reader.read(self.framer.read_buf()).fuse() => Event::Read(read),
                _ = sleep_until(deadline).fuse() => Event::Deadline,
            };
            match event {
                Event::Read(Ok(0)) => {
                    self.answer_fragment();
                    self.flush().await?;
                    return Ok(LeaveReason::PeerClosed);
                }
                Event::Read(Ok(n)) => {
                    last_input = Instant::now();
                    self.framer.filled(n);
                    let queued_before = self.replies_queued;
                    let framed = self.answer_lines();
                    self.stats
                        .received(self.replies_queued - queued_before, n as u64);
                    if let Err(wire::FrameError::LineTooLong { max }) = framed {
                        self.out.extend_from_slice(&wire::line_too_long_error(max));
                        self.flush().await?;
                        warn!("line too long", { client_id: self.id, max_line: max });
                        return Ok(LeaveReason::LineTooLong);
                    }
                    fragment_since = self.framer.has_fragment().then_some(last_input);
                    self.flush().await?;
                }
                Event::Read(Err(e)) => return Err(e),
                Event::Command(Some(SessionCommand::Notice { line })) => {
                    self.out.extend_from_slice(&line);
                    self.flush().await?;
                }
                // The registry dropped our outbox: the server is going away.
                Event::Command(None) | Event::Drain => {
                    self.answer_fragment();
                    self.out.extend_from_slice(wire::SHUTDOWN_NOTICE);
                    self.flush().await?;
                    return Ok(LeaveReason::ServerShutdown);
                }
                Event::Deadline => {
                    let now = Instant::now();
                    if fragment_deadline.is_some_and(|at| at <= now) {
                        let messages = u64::from(self.framer.has_fragment());
                        self.answer_fragment();
                        self.stats.received(messages, 0);
                        fragment_since = None;
                        self.flush().await?;
                    }
                    if idle_deadline.is_some_and(|at| at <= now) {
                        self.out.extend_from_slice(wire::IDLE_TIMEOUT_ERROR);
                        self.flush().await?;
                        return Ok(LeaveReason::IdleTimeout);
                    }
                }
            }
        }
    }

    /// Formats a reply for every complete line buffered.
    fn answer_lines(&mut self) -> Result<(), wire::FrameError> {
        while let Some(line) = self.framer.next_line() {
            self.formatter.write_reply(&mut self.out, line?);
            self.replies_queued += 1;
        }
        Ok(())
    }

    /// Takes buffered unterminated bytes as one message and formats its reply.
    fn answer_fragment(&mut self) {
        if let Some(fragment) = self.framer.take_fragment() {
            self.formatter.write_reply(&mut self.out, fragment);
            self.replies_queued += 1;
        }
    }

    /// Writes everything queued in one go, unless the server cuts it short.
    async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let mut writer = &self.stream;
        let written = select_biased! {
            _ = self.signals.cut.wait().fuse() => {
                Err(io::Error::new(io::ErrorKind::Interrupted, "cut at shutdown timeout"))
            }
            written = writer.write_all(&self.out).fuse() => written,
        };
        written?;
        self.stats.sent(self.replies_queued, self.out.len() as u64);
        self.replies_queued = 0;
        self.out.clear();
        if self.out.capacity() > OUT_SHRINK_ABOVE {
            self.out = Vec::new();
        }
        Ok(())
    }
}

/// A lingering close waits at most this long for the client's side to go quiet.
const LINGER_QUIET: Duration = Duration::from_millis(100);
/// ... and never longer than this in all,
const LINGER_MAX: Duration = Duration::from_secs(2);
/// ... nor discards more than this many bytes.
const LINGER_MAX_BYTES: usize = 1024 * 1024;

/// Closes a connection the server decided to end, so that its last line
/// arrives: shut down our side, then discard what the client still sends until
/// it goes quiet, closes, or a bound is hit. Closing with unread input instead
/// would make the kernel send a reset, which can destroy the last line before
/// the client reads it.
pub async fn linger_close(stream: &TcpStream) {
    if stream.shutdown(std::net::Shutdown::Write).is_err() {
        return;
    }
    let started = Instant::now();
    let mut discarded = 0;
    let mut scratch = [0u8; 4096];
    let mut reader = stream;
    while discarded < LINGER_MAX_BYTES && started.elapsed() < LINGER_MAX {
        match within(LINGER_QUIET, reader.read(&mut scratch)).await {
            Some(Ok(n)) if n > 0 => discarded += n,
            _ => break,
        }
    }
}

/// Above this capacity, in bytes, an emptied reply buffer is released, so one
/// burst does not pin its memory for the life of an idle connection.
const OUT_SHRINK_ABOVE: usize = 16 * 1024;
