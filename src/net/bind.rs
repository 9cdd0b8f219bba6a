//! Binding the server's listener.

use std::io;

use socket2::{Domain, Socket as RawSocket, Type};

use std::net::{SocketAddr, TcpListener};

/// Connections the kernel queues for the acceptor; it caps this at
/// `net.core.somaxconn`. std's fixed 128 drops SYNs under a burst of connects,
/// which clients only retry after a second.
pub(crate) const LISTEN_BACKLOG: i32 = 4096;

/// Binds a listener on `addr` (resolved now; the first address that binds
/// wins), with address reuse, a deep accept backlog and, with `reuse_port`,
/// SO_REUSEPORT (other processes may listen on the same port), in which
/// case it binds `count` listeners on that port, one for each core, and the
/// kernel spreads connections over them.
pub(crate) fn bind(addr: &str, reuse_port: bool, count: usize) -> io::Result<Vec<TcpListener>> {
    use std::net::ToSocketAddrs;
    let mut last_error = io::Error::new(io::ErrorKind::InvalidInput, "no address to bind");
    for addr in addr.to_socket_addrs()? {
        match bind_one(addr, reuse_port) {
            Ok(first) => {
                let mut listeners = vec![first];
                if reuse_port {
                    // The port the first one got, when `addr` asked for any.
                    let bound = listeners[0].local_addr()?;
                    for _ in 1..count {
                        listeners.push(bind_one(bound, true)?);
                    }
                }
                return Ok(listeners);
            }
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}

fn bind_one(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = RawSocket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(TcpListener::from(socket))
}
