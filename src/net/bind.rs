//! Binding the server's listener.

use std::io;

use socket2::{Domain, Socket as RawSocket, Type};

use crate::rt::Listener;

/// Connections the kernel queues for the acceptor; it caps this at
/// `net.core.somaxconn`. std's fixed 128 drops SYNs under a burst of connects,
/// which clients only retry after a second.
pub(crate) const LISTEN_BACKLOG: i32 = 4096;

/// Binds a listener on `addr` (resolved now; the first address that binds
/// wins), with address reuse, a deep accept backlog and, with `reuse_port`,
/// SO_REUSEPORT (other processes may listen on the same port).
pub(crate) fn bind(addr: &str, reuse_port: bool) -> io::Result<Listener> {
    use std::net::ToSocketAddrs;
    let mut last_error = io::Error::new(io::ErrorKind::InvalidInput, "no address to bind");
    for addr in addr.to_socket_addrs()? {
        let bound =
            RawSocket::new(Domain::for_address(addr), Type::STREAM, None).and_then(|socket| {
                socket.set_reuse_address(true)?;
                if reuse_port {
                    socket.set_reuse_port(true)?;
                }
                socket.bind(&addr.into())?;
                socket.listen(LISTEN_BACKLOG)?;
                Listener::new(std::net::TcpListener::from(socket))
            });
        match bound {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}
