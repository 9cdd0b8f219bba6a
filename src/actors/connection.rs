//! The connection actor: one TCP connection of the client, from lookup to close.
//!
//! Starts with a [`ConnectionStart`] from the supervisor: the pending queue
//! (unacknowledged messages, which it resends first, in order), an inbox of new
//! messages, and the shutdown signal. It prints every line the server sends
//! through the client's [`LineSink`]; each reply acknowledges the oldest pending
//! message whose text it echoes. It ends when the server closes (`end`), on an
//! error (`error`), when messages are outstanding and nothing has arrived for
//! the timeout (`timeout`), when enough replies arrived, or at shutdown; it
//! always logs `close` and hands the pending queue back in its
//! [`ConnectionExit`].
//!
//! Lifecycle events are logged under the original client's names: `lookup`,
//! `connect`, `data` (debug), `end`, `timeout`, `error`, `close`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, FutureExt, select_biased};
use kv_log_macro::{debug, info, warn};
use log::kv::Value;

use crate::messages::{ConnectionEnd, ConnectionExit, ConnectionMsg, ConnectionStart};
use crate::rt::{TcpStream, ToSocketAddrs, sleep_until, within};
use crate::wire::{self, Framer};

/// Where the client's output goes: called once per line the server sends,
/// without its `\n`. The binary prints to stdout; tests collect.
pub type LineSink = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Longest line, in bytes, the client accepts from a server. Replies echo our
/// own short messages, so anything near this is a misbehaving server.
pub const MAX_SERVER_LINE: usize = 1024 * 1024;

/// Settings shared by every connection of one client.
#[derive(Clone)]
pub struct ConnectionConfig {
    /// `host:port` to resolve and connect to.
    pub addr: String,
    /// Limit for lookup, connect, each write, and silence while replies are owed.
    pub timeout: Duration,
    pub sink: LineSink,
}

/// One connection's actor. Build with [`Connection::new`], then `run` it.
pub struct Connection {
    config: Arc<ConnectionConfig>,
    start: ConnectionStart,
    framer: Framer,
    replied: u64,
}

impl Connection {
    pub fn new(config: Arc<ConnectionConfig>, start: ConnectionStart) -> Connection {
        Connection {
            config,
            start,
            framer: Framer::new(MAX_SERVER_LINE),
            replied: 0,
        }
    }

    /// Runs the connection to its end and hands back what is still pending.
    pub async fn run(mut self) -> ConnectionExit {
        let shutdown = self.start.shutdown.clone();
        let end = select_biased! {
            _ = shutdown.wait().fuse() => ConnectionEnd::Shutdown,
            end = self.connect_and_serve().fuse() => end,
        };
        match &end {
            ConnectionEnd::Io(e) | ConnectionEnd::Lookup(e) | ConnectionEnd::Connect(e) => {
                warn!("error", { error: Value::from_display(e) });
            }
            _ => {}
        }
        let had_error = matches!(
            end,
            ConnectionEnd::Io(_) | ConnectionEnd::Lookup(_) | ConnectionEnd::Connect(_)
        );
        info!("close", {
            reason: Value::from_display(&end),
            had_error: had_error,
            replied: self.replied,
            pending: self.start.pending.len(),
        });
        ConnectionExit {
            end,
            pending: self.start.pending,
            replied: self.replied,
        }
    }

    async fn connect_and_serve(&mut self) -> ConnectionEnd {
        let stream = match self.connect().await {
            Ok(stream) => stream,
            Err(end) => return end,
        };
        match self.serve(&stream).await {
            Ok(end) | Err(end) => end,
        }
    }

    async fn connect(&self) -> Result<TcpStream, ConnectionEnd> {
        let timeout = self.config.timeout;
        let addr = self.config.addr.as_str();
        let addrs: Vec<SocketAddr> = match within(timeout, addr.to_socket_addrs()).await {
            Some(Ok(addrs)) => addrs.collect(),
            Some(Err(e)) => return Err(ConnectionEnd::Lookup(e)),
            None => return Err(ConnectionEnd::Lookup(timed_out("lookup"))),
        };
        info!("lookup", {
            host: addr,
            addresses: Value::from_debug(&addrs),
        });
        let mut last_error = io::Error::new(io::ErrorKind::NotFound, "no address resolved");
        for peer in addrs {
            match within(timeout, TcpStream::connect(peer)).await {
                Some(Ok(stream)) => {
                    let local = stream
                        .local_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    info!("connect", { peer: Value::from_display(&peer), local: local });
                    if let Err(e) = set_keepalive(&stream) {
                        debug!("keepalive not set", { error: Value::from_display(&e) });
                    }
                    return Ok(stream);
                }
                Some(Err(e)) => {
                    debug!("connect attempt failed", {
                        peer: Value::from_display(&peer),
                        error: Value::from_display(&e),
                    });
                    last_error = e;
                }
                None => last_error = timed_out("connect"),
            }
        }
        Err(ConnectionEnd::Connect(last_error))
    }

    /// Resends what is pending, then sends new messages and reads lines until
    /// the connection ends. `Err` carries ends detected mid-write.
    async fn serve(&mut self, stream: &TcpStream) -> Result<ConnectionEnd, ConnectionEnd> {
        let mut out = Vec::new();
        for text in self.start.pending.write_all() {
            out.extend_from_slice(text.as_bytes());
            out.push(b'\n');
        }
        self.write(stream, &mut out).await?;
        // Silence counts only while replies are owed, from when they became owed.
        let mut quiet_since = Instant::now();
        let mut reader = stream;
        loop {
            let deadline =
                (!self.start.pending.is_empty()).then(|| quiet_since + self.config.timeout);
            select_biased! {
                msg = self.start.inbox.recv().fuse() => {
                    // The supervisor dropped the inbox: it is shutting down.
                    let Ok(ConnectionMsg::Send { text }) = msg else {
                        return Ok(ConnectionEnd::Shutdown);
                    };
                    if self.start.pending.is_empty() {
                        quiet_since = Instant::now();
                    }
                    out.extend_from_slice(text.as_bytes());
                    out.push(b'\n');
                    self.start.pending.push(text);
                    self.start.pending.mark_newest_written();
                    self.write(stream, &mut out).await?;
                }
                read = reader.read(self.framer.read_buf()).fuse() => {
                    let n = read.map_err(ConnectionEnd::Io)?;
                    if n == 0 {
                        info!("end", { replied: self.replied });
                        return Ok(ConnectionEnd::ServerClosed);
                    }
                    quiet_since = Instant::now();
                    debug!("data", { bytes: n });
                    self.framer.filled(n);
                    if let Some(end) = self.take_lines() {
                        return Ok(end);
                    }
                }
                _ = sleep_until(deadline).fuse() => {
                    info!("timeout", {
                        pending: self.start.pending.len(),
                        silent_for_ms: quiet_since.elapsed().as_millis() as u64,
                    });
                    return Ok(ConnectionEnd::Timeout);
                }
            }
        }
    }

    /// Prints every complete line and acknowledges replies; an end if one is due.
    fn take_lines(&mut self) -> Option<ConnectionEnd> {
        while let Some(line) = self.framer.next_line() {
            let Ok(line) = line else {
                return Some(ConnectionEnd::LineTooLong);
            };
            (self.config.sink)(line);
            if let Some(echo) = wire::reply_echo(line) {
                self.replied += 1;
                self.start.pending.acknowledge(echo);
                if self.start.replies_wanted == Some(self.replied) {
                    return Some(ConnectionEnd::CountReached);
                }
            }
        }
        None
    }

    async fn write(&self, stream: &TcpStream, out: &mut Vec<u8>) -> Result<(), ConnectionEnd> {
        if out.is_empty() {
            return Ok(());
        }
        let mut writer = stream;
        let written = within(self.config.timeout, writer.write_all(out)).await;
        out.clear();
        match written {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(ConnectionEnd::Io(e)),
            None => {
                info!("timeout", { during: "write" });
                Err(ConnectionEnd::Timeout)
            }
        }
    }
}

/// Turns on TCP keepalive, so a silently vanished server is noticed even
/// when no replies are owed.
fn set_keepalive(stream: &TcpStream) -> io::Result<()> {
    use std::os::fd::{AsRawFd, BorrowedFd};
    // SAFETY: the descriptor belongs to `stream`, which outlives this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    socket2::SockRef::from(&fd).set_keepalive(true)
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}
