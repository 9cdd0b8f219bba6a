//! How a [`LineSocket`]'s connection ends: the kernel's keepalive probes
//! for a peer that vanished, a reset for one that does not read, and the
//! lingering close that lets a last line arrive.

use std::io;
use std::time::{Duration, Instant};

use futures::AsyncReadExt;

use super::{LineSocket, Transport};
use crate::rt::within;

impl LineSocket {
    /// Has the kernel probe the connection once it has been quiet for
    /// [`KEEPALIVE_IDLE`], so that a peer that vanished without a word (its
    /// machine off, its network gone) is found after a few minutes and the
    /// read fails, instead of the connection waiting for it for ever (with
    /// `--idle-timeout 0` nothing else would end it). An error if the
    /// options cannot be set.
    pub(crate) fn keep_alive(&self) -> io::Result<()> {
        let Some(tcp) = self.tcp() else {
            return Ok(());
        };
        let probes = socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL);
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let probes = probes.with_retries(KEEPALIVE_PROBES);
        socket2::SockRef::from(tcp).set_tcp_keepalive(&probes)
    }

    /// Makes the close that comes when this is dropped a reset: nothing
    /// unsent lingers in the kernel for a peer that does not read.
    pub(crate) fn reset_on_close(&self) {
        if let Some(tcp) = self.tcp() {
            // If it cannot be set, the close is an ordinary one.
            let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
        }
    }

    /// Closes a connection this side decided to end, so that its last line
    /// arrives: end TLS (close_notify), shut down our side, then discard what
    /// the peer still sends until it goes quiet, closes, or a bound is hit.
    /// Closing with unread input instead would make the kernel send a reset,
    /// which can destroy the last line before the peer reads it.
    pub(crate) async fn linger_close(&mut self) {
        if let Transport::Tls(tls) = &mut self.transport {
            tls.get_mut().1.send_close_notify();
            // Bounded: a peer that does not read may never take these bytes.
            if !matches!(within(LINGER_MAX, self.flush()).await, Some(Ok(()))) {
                self.reset_on_close();
                return;
            }
        }
        let Some(socket) = self.socket() else { return };
        if socket
            .get_ref()
            .shutdown(std::net::Shutdown::Write)
            .is_err()
        {
            return;
        }
        let started = Instant::now();
        let mut discarded = 0;
        // On the heap, and only while lingering: as an array it would sit in
        // every session's future for the whole connection.
        let mut scratch = vec![0u8; 4096];
        let mut reader = socket;
        while discarded < LINGER_MAX_BYTES && started.elapsed() < LINGER_MAX {
            match within(LINGER_QUIET, reader.read(&mut scratch)).await {
                Some(Ok(n)) if n > 0 => discarded += n,
                _ => break,
            }
        }
    }
}

/// A connection quiet this long gets its first keepalive probe: long
/// enough to cost nothing on a busy server (one probe per quiet client per
/// minute), short enough that a vanished peer is found within minutes.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// ... then one every this often,
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// ... and this many unanswered end it: found about 2 minutes after it
/// vanished.
#[cfg(any(target_os = "linux", target_os = "android"))]
const KEEPALIVE_PROBES: u32 = 6;

/// A lingering close waits at most this long for the peer's side to go quiet,
const LINGER_QUIET: Duration = Duration::from_millis(100);
/// ... and never longer than this in all,
const LINGER_MAX: Duration = Duration::from_secs(2);
/// ... nor discards more than this many bytes.
const LINGER_MAX_BYTES: usize = 1024 * 1024;

#[cfg(test)]
mod tests {
    use std::net::TcpStream;

    use super::*;
    use crate::rt::Socket;

    #[test]
    fn a_kept_alive_socket_is_probed_when_quiet() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let tcp = TcpStream::connect(listener.local_addr().expect("bound")).expect("connect");
        let socket = LineSocket::new(Socket::new(tcp).expect("register"), 1024);
        socket.keep_alive().expect("set keepalive");
        let tcp = socket2::SockRef::from(socket.tcp().expect("open"));
        assert!(tcp.keepalive().expect("read SO_KEEPALIVE"));
        assert_eq!(tcp.tcp_keepalive_time().expect("read"), KEEPALIVE_IDLE);
        #[cfg(any(target_os = "linux", target_os = "android"))]
        assert_eq!(tcp.tcp_keepalive_retries().expect("read"), KEEPALIVE_PROBES);
    }
}
