//! The connection actor: one TCP connection of the client, from lookup to close.
//!
//! Starts with a [`ConnectionStart`] from the supervisor: the pending queue
//! (unacknowledged messages, which it resends first, in order), an inbox of new
//! messages, and the shutdown signal. It prints every line the server sends
//! through the client's [`LineSink`]; a reply acknowledges the oldest pending
//! message whose text it echoes, and a reply that echoes none (a server that
//! answers twice, or echoes something else) is logged and counts for nothing:
//! it neither counts toward `--count` nor shows the link alive. It ends when
//! the server closes (`end`), on an error (`error`; without `--tls`, a server
//! that says it speaks TLS, or sends a TLS record first, is one at once:
//! [`ConnectionEnd::ServerSpeaksTls`]), when messages are outstanding and
//! nothing has arrived for the timeout (`timeout`), when enough replies
//! arrived, or at shutdown; it always logs `close` and hands the pending
//! queue back in its [`ConnectionExit`].
//!
//! Lifecycle events are logged under the original client's names: `lookup`,
//! `connect`, `data` (debug), `end`, `timeout`, `error`, `close`.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, select_biased};
use kv_log_macro::{debug, info, warn};
use log::kv::Value;

use crate::logging::Throttle;
use crate::messages::{ConnectionEnd, ConnectionExit, ConnectionMsg, ConnectionStart};
use crate::net::LineSocket;
use crate::rt::{resolve, sleep_until, within};
use crate::tls::{self, ClientTls};
use crate::wire;

/// Where the client's output goes: called once per line the server sends,
/// without its `\n`. The binary prints to stdout; tests collect.
pub type LineSink = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Longest line, in bytes, the client accepts from a server. Replies echo our
/// own short messages, so anything near this is a misbehaving server.
const MAX_SERVER_LINE: usize = 1024 * 1024;

/// The connection's part of the client's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// `host:port` to resolve and connect to; every address it resolves to
    /// is tried in turn (`--addr`).
    pub addr: String,
    /// Limit for lookup, connect, the TLS handshake, each write, and silence
    /// while replies are owed (`--timeout`).
    pub timeout: Duration,
    /// Set: speak TLS, verifying the server's certificate (`--tls`).
    pub tls: Option<ClientTls>,
}

/// One connection's actor. Build with [`Connection::new`], then `run` it.
pub(crate) struct Connection {
    config: Arc<ConnectionConfig>,
    sink: LineSink,
    start: ConnectionStart,
    replied: u64,
    /// The server's last `error: …` or `notice: …` line: why it closes.
    said: Option<String>,
    /// Replies that echo no pending message, logged at most once a throttle
    /// interval: a misbehaving server can send them on every line.
    stray_replies: Throttle,
}

impl Connection {
    pub(crate) fn new(
        config: Arc<ConnectionConfig>,
        sink: LineSink,
        start: ConnectionStart,
    ) -> Connection {
        Connection {
            config,
            sink,
            start,
            replied: 0,
            said: None,
            stray_replies: Throttle::default(),
        }
    }

    /// Runs the connection to its end and hands back what is still pending.
    pub(crate) async fn run(mut self) -> ConnectionExit {
        let shutdown = self.start.shutdown.clone();
        let end = select_biased! {
            _ = shutdown.wait().fuse() => ConnectionEnd::Shutdown,
            end = self.connect_and_serve().fuse() => end,
        };
        match &end {
            ConnectionEnd::Io(e) | ConnectionEnd::Lookup(e) | ConnectionEnd::Connect(e) => {
                warn!("error", { error: Value::from_display(e) });
            }
            ConnectionEnd::Tls { reason, error } => {
                warn!("error", { tls: *reason, error: Value::from_display(error) });
            }
            ConnectionEnd::ServerSpeaksTls => {
                warn!("error", { error: Value::from_display(&end) });
            }
            _ => {}
        }
        let had_error = matches!(
            end,
            ConnectionEnd::Io(_)
                | ConnectionEnd::Lookup(_)
                | ConnectionEnd::Connect(_)
                | ConnectionEnd::Tls { .. }
                | ConnectionEnd::ServerSpeaksTls
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
        let mut socket = match self.connect().await {
            Ok(socket) => socket,
            Err(end) => return end,
        };
        let Err(end) = self.serve(&mut socket).await;
        end
    }

    async fn connect(&self) -> Result<LineSocket, ConnectionEnd> {
        let timeout = self.config.timeout;
        let addr = self.config.addr.as_str();
        let addrs: Vec<SocketAddr> = match within(timeout, resolve(addr)).await {
            Some(Ok(addrs)) => addrs,
            Some(Err(e)) => {
                let named = io::Error::new(e.kind(), format!("{addr}: {e}"));
                return Err(ConnectionEnd::Lookup(named));
            }
            None => return Err(ConnectionEnd::Lookup(timed_out("lookup"))),
        };
        info!("lookup", {
            host: addr,
            addresses: Value::from_debug(&addrs),
        });
        let mut last_error = io::Error::new(io::ErrorKind::NotFound, "no address resolved");
        for peer in addrs {
            match within(timeout, LineSocket::connect(peer, MAX_SERVER_LINE)).await {
                Some(Ok(socket)) => {
                    let tcp = socket.tcp().expect("a new connection is open");
                    let local = tcp.local_addr().map(|a| a.to_string()).unwrap_or_default();
                    info!("connect", { peer: Value::from_display(&peer), local: local });
                    if let Err(e) = socket2::SockRef::from(tcp).set_keepalive(true) {
                        debug!("keepalive not set", { error: Value::from_display(&e) });
                    }
                    return self.start_tls(socket).await;
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

    /// The TLS handshake, when the client speaks TLS.
    async fn start_tls(&self, mut socket: LineSocket) -> Result<LineSocket, ConnectionEnd> {
        let Some(tls) = &self.config.tls else {
            return Ok(socket);
        };
        // Boxed: a handshake's state is kilobytes, and gone once it is done.
        let shaken = Box::pin(within(self.config.timeout, socket.connect_tls(tls))).await;
        let e = match shaken {
            Some(Ok(())) => {
                info!("secure connect", { server_name: tls.server_name.to_str().as_ref() });
                return Ok(socket);
            }
            Some(Err(e)) => e,
            None => timed_out("TLS handshake"),
        };
        Err(ConnectionEnd::Tls {
            reason: tls::failure_reason(&e),
            error: e,
        })
    }

    /// Resends what is pending, then sends new messages and reads lines until
    /// the connection ends, which it only ever does with a [`ConnectionEnd`].
    async fn serve(&mut self, socket: &mut LineSocket) -> Result<Infallible, ConnectionEnd> {
        let mut out = Vec::new();
        for text in self.start.pending.write_all() {
            out.extend_from_slice(text.as_bytes());
            out.push(b'\n');
        }
        self.write(socket, &mut out).await?;
        // The wait for replies counts only while they are owed, from when
        // they became owed or the last one came. Other lines do not count: a
        // server that talks but never answers is as dead as a silent one.
        let mut quiet_since = Instant::now();
        // A plain connection's first bytes may be a TLS server's record.
        let mut first_read = socket.is_plain();
        loop {
            let deadline =
                (!self.start.pending.is_empty()).then(|| quiet_since + self.config.timeout);
            select_biased! {
                msg = self.start.inbox.recv().fuse() => {
                    // The supervisor dropped the inbox: it is shutting down.
                    let Ok(ConnectionMsg::Send { text }) = msg else {
                        return Err(ConnectionEnd::Shutdown);
                    };
                    if self.start.pending.is_empty() {
                        quiet_since = Instant::now();
                    }
                    out.extend_from_slice(text.as_bytes());
                    out.push(b'\n');
                    self.start.pending.push(text);
                    self.start.pending.mark_newest_written();
                    self.write(socket, &mut out).await?;
                }
                read = socket.read().fuse() => {
                    let n = read.map_err(ConnectionEnd::Io)?;
                    if n == 0 {
                        info!("end", { replied: self.replied });
                        let said = self.said.take();
                        return Err(ConnectionEnd::ServerClosed { said });
                    }
                    debug!("data", { bytes: n });
                    // Not lines: printed, they would be noise on stdout.
                    if std::mem::take(&mut first_read) && socket.holds_tls_record() {
                        return Err(ConnectionEnd::ServerSpeaksTls);
                    }
                    let replied_before = self.replied;
                    self.take_lines(socket)?;
                    if self.replied > replied_before {
                        quiet_since = Instant::now();
                    }
                }
                _ = sleep_until(deadline).fuse() => {
                    info!("timeout", {
                        pending: self.start.pending.len(),
                        silent_for_ms: quiet_since.elapsed().as_millis() as u64,
                    });
                    return Err(ConnectionEnd::Timeout);
                }
            }
        }
    }

    /// Prints every complete line and acknowledges replies; an end if one is due.
    fn take_lines(&mut self, socket: &mut LineSocket) -> Result<(), ConnectionEnd> {
        while let Some(line) = socket.next_line() {
            let Ok(line) = line else {
                return Err(ConnectionEnd::LineTooLong);
            };
            (self.sink)(line);
            if wire::is_error_or_notice(line) {
                if self.config.tls.is_none()
                    && wire::TLS_REQUIRED_ERROR.strip_suffix(b"\n") == Some(line)
                {
                    return Err(ConnectionEnd::ServerSpeaksTls);
                }
                self.said = Some(String::from_utf8_lossy(line).into_owned());
            }
            let Some(echo) = wire::reply_echo(line) else {
                continue;
            };
            if !self.start.pending.acknowledge(echo) {
                if let Some(suppressed) = self.stray_replies.allow() {
                    warn!("reply echoes no pending message: ignored", {
                        echo: String::from_utf8_lossy(&echo[..echo.len().min(64)]).as_ref(),
                        suppressed: suppressed,
                    });
                }
                continue;
            }
            self.replied += 1;
            if self.start.replies_wanted == Some(self.replied) {
                return Err(ConnectionEnd::CountReached);
            }
        }
        Ok(())
    }

    async fn write(&self, socket: &mut LineSocket, out: &mut Vec<u8>) -> Result<(), ConnectionEnd> {
        if out.is_empty() {
            return Ok(());
        }
        let written = within(self.config.timeout, socket.write_all(out)).await;
        out.clear();
        match written {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(ConnectionEnd::Io(e)),
            None => {
                info!("timeout", { during: "write" });
                Err(ConnectionEnd::WriteTimeout)
            }
        }
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}
