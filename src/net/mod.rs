//! The network edge: binding the server's listener, and [`LineSocket`], the
//! one socket type that the session, the client's connection and the bench
//! all drive.
//!
//! A `LineSocket` owns a TCP connection, its read loop and its line framer,
//! as mini-redis's `Connection` owns its socket and its buffer: the actors
//! ask it for lines and hand it bytes to write, and never see how the bytes
//! are read. The connection is plain TCP or TLS inside it (a handshake turns
//! one into the other), so that no actor learns two kinds of stream.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::pin::pin;
use std::time::{Duration, Instant};

use futures::future::FusedFuture;
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt, select_biased};
use futures_rustls::TlsStream;

use crate::proxy::ProxyHeader;
use crate::rt::{ReadLoop, Socket, sleep_until};
use crate::tls::{ClientTls, ServerTls};
use crate::wire::{FrameError, Framer};

mod bind;
mod close;
mod sniff;
mod sockopt;

pub(crate) use bind::{LISTEN_BACKLOG, bind};
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) use sockopt::set_int as set_int_option;

/// A TCP connection, plain or TLS, that reads `\n`-terminated lines and
/// writes bytes.
///
/// Reads go through a [`ReadLoop`] into a [`Framer`]: [`read`](Self::read)
/// fills the framer, [`next_line`](Self::next_line) takes lines out. Only the
/// task that owns it writes to it.
#[derive(Debug)]
pub(crate) struct LineSocket {
    transport: Transport,
    reads: ReadLoop,
    framer: Framer,
}

/// What carries the bytes.
#[derive(Debug)]
enum Transport {
    Plain(Socket),
    /// Boxed: a TLS session is kilobytes, and a plain session's future
    /// should not carry room for one.
    Tls(Box<TlsStream<Socket>>),
    /// A handshake took the socket and did not give it back (it failed, or
    /// was abandoned): the connection is closed.
    Closed,
}

/// Most plaintext rustls encrypts ahead of what the socket takes: a write
/// waits once this much is queued, so a bounded write sees the peer's real
/// pace (rustls's own default is 64 KiB).
const TLS_SEND_LIMIT: usize = 16 * 1024;

impl LineSocket {
    /// Wraps a connection; lines longer than `max_line` bytes are a framing
    /// error.
    ///
    /// Nagle's algorithm is turned off (`TCP_NODELAY`): every write here is
    /// a whole batch of lines that the peer waits for, and holding a small
    /// one back until the last is acknowledged made every TLS client wait
    /// for its greeting behind the handshake's last flight (a delayed ACK,
    /// about 40 ms).
    pub(crate) fn new(socket: Socket, max_line: usize) -> LineSocket {
        // If it cannot be set, the connection still works, only slower.
        let _ = socket.get_ref().set_nodelay(true);
        LineSocket {
            transport: Transport::Plain(socket),
            reads: ReadLoop::new(),
            framer: Framer::new(max_line),
        }
    }

    /// Connects to `addr`.
    pub(crate) async fn connect(addr: SocketAddr, max_line: usize) -> io::Result<LineSocket> {
        Ok(LineSocket::new(Socket::connect(addr).await?, max_line))
    }

    /// The TCP connection itself, for socket options and addresses; `None`
    /// once a failed handshake has closed it.
    pub(crate) fn tcp(&self) -> Option<&TcpStream> {
        self.socket().map(|socket| socket.get_ref())
    }

    fn socket(&self) -> Option<&Socket> {
        match &self.transport {
            Transport::Plain(socket) => Some(socket),
            Transport::Tls(tls) => Some(tls.get_ref().0),
            Transport::Closed => None,
        }
    }

    /// Whether the connection is plain TCP still (no handshake took it).
    pub(crate) fn is_plain(&self) -> bool {
        matches!(self.transport, Transport::Plain(_))
    }

    /// Whether the bytes read and not yet handed out, on a plain
    /// connection, start with a TLS client's ClientHello. Asked after a
    /// connection's first read, it says whether a TLS client came to a plain
    /// server; later, the same bytes are a message.
    pub(crate) fn holds_client_hello(&self) -> bool {
        self.is_plain() && sniff::is_client_hello(self.framer.buffered())
    }

    /// Whether the bytes read and not yet handed out, on a plain
    /// connection, start with a TLS record. Asked after a connection's first
    /// read, it says whether a plain client came to a TLS server.
    pub(crate) fn holds_tls_record(&self) -> bool {
        self.is_plain() && sniff::is_tls_record(self.framer.buffered())
    }

    /// The server's TLS handshake, on a connection that is still plain.
    ///
    /// A peer whose first byte cannot start a TLS handshake gets
    /// [`Handshake::NotTls`] with the plain connection intact, so that it can
    /// be told in plain text. On an error the connection is closed.
    pub(crate) async fn accept_tls(&mut self, tls: &ServerTls) -> io::Result<Handshake> {
        let Transport::Plain(socket) = &self.transport else {
            return Err(io::Error::other("not a plain connection"));
        };
        let mut first = [0u8; 1];
        let peeked = socket.read_with(|tcp| tcp.peek(&mut first)).await?;
        if peeked == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if first[0] != sniff::HANDSHAKE_RECORD {
            return Ok(Handshake::NotTls);
        }
        let socket = self.take_plain()?;
        let mut stream = tls.acceptor.accept(socket).await?;
        stream.get_mut().1.set_buffer_limit(Some(TLS_SEND_LIMIT));
        self.transport = Transport::Tls(Box::new(stream.into()));
        Ok(Handshake::Done)
    }

    /// Takes the plain socket out for a handshake, leaving `Closed` until
    /// the handshake puts the TLS stream back.
    fn take_plain(&mut self) -> io::Result<Socket> {
        match std::mem::replace(&mut self.transport, Transport::Closed) {
            Transport::Plain(socket) => Ok(socket),
            other => {
                self.transport = other;
                Err(io::Error::other("not a plain connection"))
            }
        }
    }

    /// Reads a PROXY protocol header, exactly: what follows it stays unread.
    pub(crate) async fn read_proxy_header(&self) -> io::Result<ProxyHeader> {
        match &self.transport {
            Transport::Plain(socket) => crate::proxy::read_header(socket).await,
            _ => Err(io::Error::other("not a plain connection")),
        }
    }

    /// The client's TLS handshake, on a connection that is still plain. On
    /// an error the connection is closed.
    pub(crate) async fn connect_tls(&mut self, tls: &ClientTls) -> io::Result<()> {
        let socket = self.take_plain()?;
        let mut stream = (tls.connector)
            .connect(tls.server_name.clone(), socket)
            .await?;
        stream.get_mut().1.set_buffer_limit(Some(TLS_SEND_LIMIT));
        self.transport = Transport::Tls(Box::new(stream.into()));
        Ok(())
    }

    /// Reads what the peer sent into the framer; `Ok(0)` is the end of its
    /// stream. Dropped before it completes, it reads nothing.
    ///
    /// While it waits for the peer, the framer holds no buffer (unless a
    /// partial line is in it): the buffer is borrowed only once the socket
    /// is readable, and given back when the read finds nothing after all.
    pub(crate) async fn read(&mut self) -> io::Result<usize> {
        loop {
            self.framer.release();
            let socket = self.socket().ok_or_else(closed)?;
            // rustls may already hold plaintext (or the peer's close_notify)
            // that it read from the socket earlier, the handshake's last read
            // among them: no readiness of the socket would announce it.
            let buffered =
                matches!(&self.transport, Transport::Tls(tls) if !tls.get_ref().1.wants_read());
            if !buffered {
                self.reads.ready(socket).await;
            }
            let seen = socket.input_edges();
            let buf = self.framer.read_buf();
            let room = buf.len();
            let read = match &mut self.transport {
                // Tried, not awaited: a read that waited would hold the buffer.
                Transport::Plain(socket) => io::Read::read(&mut socket.get_ref(), buf),
                // Tried too: nothing to give yet (a record that came in part)
                // means the socket must be waited for, as for plain.
                Transport::Tls(tls) => tls
                    .read(buf)
                    .now_or_never()
                    .unwrap_or_else(|| Err(io::ErrorKind::WouldBlock.into())),
                Transport::Closed => return Err(closed()),
            };
            let n = match read {
                Ok(n) => n,
                // A peer that closes without TLS's close_notify has still
                // closed: the protocol's lines carry their own ends, so a cut
                // stream cannot pass for a whole one.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !self.is_plain() => 0,
                // Not readable after all: wait again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.reads.record(0, room, seen);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            // With TLS, how much plaintext came says nothing of the socket:
            // rustls takes a bounded amount of it per read, so more records
            // may wait there, with no edge to come. Only a read that would
            // block has emptied it.
            let taken = if self.is_plain() { n } else { room };
            self.reads.record(taken, room, seen);
            self.framer.filled(n);
            return Ok(n);
        }
    }

    /// The next complete line read, without its `\n` or `\r\n`; `None` when
    /// none is buffered. An error is final.
    pub(crate) fn next_line(&mut self) -> Option<Result<&[u8], FrameError>> {
        self.framer.next_line()
    }

    /// Stops taking lines for now: a read buffer that grew for a long line
    /// already handed out is traded for a standard one if what is left fits.
    pub(crate) fn pause_lines(&mut self) {
        self.framer.settle();
    }

    /// Whether unterminated bytes are buffered.
    pub(crate) fn has_fragment(&self) -> bool {
        self.framer.has_fragment()
    }

    /// Hands out the unterminated bytes, verbatim, as one message; call it
    /// only after [`next_line`](Self::next_line) returned `None`. Over the
    /// line limit, it is a framing error.
    pub(crate) fn take_fragment(&mut self) -> Option<Result<&[u8], FrameError>> {
        self.framer.take_fragment()
    }

    /// Writes all of `bytes` (and, with TLS, sends the records).
    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.transport {
            Transport::Plain(socket) => (&*socket).write_all(bytes).await,
            Transport::Tls(tls) => {
                tls.write_all(bytes).await?;
                tls.flush().await
            }
            Transport::Closed => Err(closed()),
        }
    }

    /// Writes some of `bytes`, as soon as the connection takes any; how many.
    /// With TLS, taken means encrypted: some may still wait for a
    /// [`flush`](Self::flush).
    async fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match &mut self.transport {
            Transport::Plain(socket) => (&*socket).write(bytes).await,
            Transport::Tls(tls) => tls.write(bytes).await,
            Transport::Closed => Err(closed()),
        }
    }

    /// Sends what TLS has encrypted and not yet sent.
    async fn flush(&mut self) -> io::Result<()> {
        match &mut self.transport {
            Transport::Plain(_) => Ok(()),
            Transport::Tls(tls) => tls.flush().await,
            Transport::Closed => Err(closed()),
        }
    }

    /// Writes what the connection takes of `bytes` now, without waiting:
    /// `None` when all of it went (with TLS: and was sent), else how many
    /// bytes went; the rest is for [`write_bounded`](Self::write_bounded).
    ///
    /// Nearly every write completes here, so a caller can keep the wait for a
    /// peer slow to take its bytes (and its state: a timer among it) out of
    /// its own future, boxed, as the session does.
    pub(crate) fn write_now(&mut self, bytes: &[u8]) -> io::Result<Option<usize>> {
        let written = match self.write(bytes).now_or_never() {
            Some(n) => n?,
            None => 0,
        };
        let sent = written == bytes.len() && self.flush().now_or_never().is_some_and(|f| f.is_ok());
        Ok((!sent).then_some(written))
    }

    /// Writes all of `bytes` (the rest of a [`write_now`](Self::write_now)),
    /// where every write must take some of them within `progress_within`
    /// (`None`: no limit), unless `interrupt` completes first. With TLS, the
    /// final flush (of at most `TLS_SEND_LIMIT` bytes and their records) is
    /// one more step that must finish within the limit.
    pub(crate) async fn write_bounded<T>(
        &mut self,
        bytes: &[u8],
        progress_within: Option<Duration>,
        interrupt: impl Future<Output = T>,
    ) -> Result<(), WriteStop<T>> {
        let mut interrupt = pin!(interrupt.fuse());
        let mut written = 0;
        while written < bytes.len() {
            let write = self.write(&bytes[written..]);
            match bounded(write, progress_within, &mut interrupt).await? {
                0 => return Err(WriteStop::Failed(io::ErrorKind::WriteZero.into())),
                n => written += n,
            }
        }
        bounded(self.flush(), progress_within, &mut interrupt).await
    }
}

/// How [`LineSocket::accept_tls`] went, when no error stopped it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Handshake {
    /// The connection is TLS now.
    Done,
    /// The peer spoke something else first; the connection is still plain.
    NotTls,
    /// The peer sent nothing within the time allowed; the connection is
    /// still plain. (Made by the session's timeout, not by `accept_tls`.)
    Silent,
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "connection closed by a failed handshake",
    )
}

/// Why [`LineSocket::write_bounded`] stopped before writing everything.
#[derive(Debug)]
pub(crate) enum WriteStop<T> {
    /// Writing failed.
    Failed(io::Error),
    /// The peer took none of the bytes for the time allowed.
    Stalled,
    /// The interrupt completed first, with this.
    Interrupted(T),
}

/// One step of a bounded write: `io`, unless `interrupt` completes first or
/// `io` takes longer than `limit` (`None`: no limit). A write is bounded by
/// its progress, so each step gets the whole limit.
async fn bounded<R, T>(
    io: impl Future<Output = io::Result<R>>,
    limit: Option<Duration>,
    mut interrupt: &mut (impl FusedFuture<Output = T> + Unpin),
) -> Result<R, WriteStop<T>> {
    let stalled_at = limit.map(|limit| Instant::now() + limit);
    select_biased! {
        done = io.fuse() => done.map_err(WriteStop::Failed),
        value = interrupt => Err(WriteStop::Interrupted(value)),
        _ = sleep_until(stalled_at).fuse() => Err(WriteStop::Stalled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_socket_sends_without_waiting_for_acks() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let tcp = TcpStream::connect(listener.local_addr().expect("bound")).expect("connect");
        assert!(!tcp.nodelay().expect("read TCP_NODELAY"), "off by default");
        let socket = LineSocket::new(Socket::new(tcp).expect("register"), 1024);
        let tcp = socket.tcp().expect("open");
        assert!(tcp.nodelay().expect("read TCP_NODELAY"));
    }
}
