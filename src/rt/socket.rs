//! Sockets on a [`Reactor`]: registered once when made (with the reactor of
//! the core that makes them, or the shared one off the cores), removed when
//! dropped.
//!
//! Every operation tries the socket first and waits only when it would
//! block, until the reactor reports an edge in that direction that came
//! after the try.

use std::future::poll_fn;
use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures::{AsyncRead, AsyncWrite};

use super::cores;
use super::reactor::{Reactor, Source, Turn, Way};

/// The reactor of the calling thread's core, or, off the cores, the shared
/// one (its thread starts with the first socket made off the cores).
fn reactor_here() -> io::Result<Arc<Reactor>> {
    if let Some(core) = cores::current() {
        return Ok(core.reactor().clone());
    }
    static SHARED: OnceLock<Result<Arc<Reactor>, String>> = OnceLock::new();
    let shared = SHARED.get_or_init(|| {
        let reactor = Reactor::new().map_err(|e| e.to_string())?;
        let turns = reactor.clone();
        std::thread::Builder::new()
            .name("duplex-reactor".into())
            .spawn(move || {
                let mut turn = Turn::default();
                loop {
                    if turns.turn(&mut turn, None, || {}).is_err() {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(reactor)
    });
    shared.clone().map_err(io::Error::other)
}

/// A value that owns a descriptor registered with a reactor.
#[derive(Debug)]
struct Registered<T: AsFd> {
    io: T,
    source: Arc<Source>,
}

impl<T: AsFd> Registered<T> {
    /// Registers `io`, made non-blocking, with the reactor here.
    fn new(io: T, set_nonblocking: impl FnOnce(&T) -> io::Result<()>) -> io::Result<Self> {
        set_nonblocking(&io)?;
        let source = reactor_here()?.register(io.as_fd())?;
        Ok(Registered { io, source })
    }

    /// Polls `op` on the descriptor until it does not block.
    fn poll_io<R>(
        &self,
        way: Way,
        cx: &mut Context<'_>,
        mut op: impl FnMut(&T) -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        loop {
            let seen = self.source.edges(way);
            match op(&self.io) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.source.poll_edge(way, seen, cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                done => return Poll::Ready(done),
            }
        }
    }
}

impl<T: AsFd> Drop for Registered<T> {
    fn drop(&mut self) {
        self.source.deregister(self.io.as_fd());
    }
}

/// A TCP connection registered with a reactor.
#[derive(Debug)]
pub(crate) struct Socket(Registered<TcpStream>);

impl Socket {
    /// Registers a connected stream with the reactor here.
    pub(crate) fn new(tcp: TcpStream) -> io::Result<Socket> {
        Registered::new(tcp, |tcp| tcp.set_nonblocking(true)).map(Socket)
    }

    /// Connects to `addr` without blocking the thread.
    pub(crate) async fn connect(addr: SocketAddr) -> io::Result<Socket> {
        Socket::connect_with(addr, |_| Ok(())).await
    }

    /// Connects to `addr`, after `prepare` has set up the socket (bound it
    /// to a source address, say).
    pub(crate) async fn connect_with(
        addr: SocketAddr,
        prepare: impl FnOnce(&socket2::Socket) -> io::Result<()>,
    ) -> io::Result<Socket> {
        use socket2::{Domain, Protocol, Type};
        let raw =
            socket2::Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        raw.set_nonblocking(true)?;
        prepare(&raw)?;
        match raw.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let socket = Socket::new(TcpStream::from(raw))?;
        // Writable once connected, or failed (SO_ERROR says which); the
        // peer's address tells a connection still under way.
        poll_fn(|cx| {
            socket
                .0
                .poll_io(Way::Out, cx, |tcp| match tcp.take_error()? {
                    Some(e) => Err(e),
                    None => match tcp.peer_addr() {
                        Ok(_) => Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                            Err(io::ErrorKind::WouldBlock.into())
                        }
                        Err(e) => Err(e),
                    },
                })
        })
        .await?;
        Ok(socket)
    }

    /// The stream itself, for socket options, addresses and direct reads.
    pub(crate) fn get_ref(&self) -> &TcpStream {
        &self.0.io
    }

    /// Input edges seen so far: read before a read is tried, and given to
    /// [`poll_input_since`](Self::poll_input_since) if it found nothing.
    pub(crate) fn input_edges(&self) -> u32 {
        self.0.source.edges(Way::In)
    }

    /// Ready once input (or the peer's close) came after `seen` edges.
    pub(crate) fn poll_input_since(&self, seen: u32, cx: &mut Context<'_>) -> Poll<()> {
        self.0.source.poll_edge(Way::In, seen, cx)
    }

    /// Runs `op` on the stream until it does not block on input.
    pub(crate) async fn read_with<R>(
        &self,
        mut op: impl FnMut(&TcpStream) -> io::Result<R>,
    ) -> io::Result<R> {
        poll_fn(|cx| self.0.poll_io(Way::In, cx, &mut op)).await
    }
}

impl AsyncRead for &Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_io(Way::In, cx, |mut tcp| tcp.read(buf))
    }
}

impl AsyncWrite for &Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_io(Way::Out, cx, |mut tcp| tcp.write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.0
            .poll_io(Way::Out, cx, |mut tcp| tcp.write_vectored(bufs))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.0.io.shutdown(std::net::Shutdown::Write))
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &*self).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &*self).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &*self).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self).poll_close(cx)
    }
}

/// A listening socket registered with a reactor: each core that accepts
/// has its own (a clone of one listening socket, or one of its own with
/// SO_REUSEPORT).
#[derive(Debug)]
pub(crate) struct Listener(Registered<TcpListener>);

impl Listener {
    /// Registers a listening socket with the reactor here.
    pub(crate) fn new(tcp: TcpListener) -> io::Result<Listener> {
        Registered::new(tcp, |tcp| tcp.set_nonblocking(true)).map(Listener)
    }

    /// Accepts a connection, registered with the reactor here.
    pub(crate) async fn accept(&self) -> io::Result<(Socket, SocketAddr)> {
        let (tcp, peer) = poll_fn(|cx| self.0.poll_io(Way::In, cx, |tcp| tcp.accept())).await?;
        Ok((Socket::new(tcp)?, peer))
    }
}
