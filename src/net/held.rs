//! Long lines left in the kernel: how a server connection answers a line
//! longer than its read buffer without ever holding the line itself.
//!
//! A line that outgrows the standard read buffer (4 KiB, `buffers::READ_SIZE`)
//! is not read into a bigger one. Its start (the *head*) stays in the framer;
//! the rest (the *continuation*) stays in the socket's receive queue, and is
//! only looked at: `MSG_PEEK` with a peek offset (`SO_PEEK_OFF`), so that
//! each peek goes on where the last one stopped, into a thread's scratch
//! buffer, until the newline is found. `SO_RCVLOWAT` makes the socket
//! readable again only once more bytes than those looked at have arrived
//! (asking for it grows the receive buffer to hold them). Once the line's end
//! is known, and with it that the line is within `--max-line`, the reply is
//! written as its timestamp and head, then the continuation is moved from the
//! receive queue to the send queue as fast as the client takes it (looked at,
//! written, then taken off the receive queue as far as it was written), then
//! its `\n`.
//!
//! A client that does not read its replies therefore costs the server no
//! memory of its own for them: what it sent waits in the kernel's receive
//! queue, where TCP holds it anyway, instead of in a reply buffer. Before
//! this, such a client held its last line, up to `--max-line` bytes
//! (docs/performance.md).
//!
//! The kernel says when it will hold no more: the socket turns readable with
//! nothing new (its receive buffer is nearly full, the window it offers the
//! peer is closing, or TCP is short of memory). A receive buffer at least
//! half full is then grown, a few times at most, and after that the line is
//! read into the framer, as lines were before; with room in the buffer, the
//! socket is looked at again after a pause.
//!
//! Plain TCP on Linux 6.9 and later (TCP's `SO_PEEK_OFF`) where
//! [`KERNEL_CAN_HOLD`], and a `--max-line` of at most [`KERNEL_LINE_MAX`];
//! elsewhere, and with TLS (rustls holds the plaintext), long lines are read
//! into a buffer that grows, as every line was before.

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::pin::pin;
use std::time::Duration;

use futures::FutureExt;

use super::{LineSocket, Transport, WriteStop, bounded, closed};
use crate::buffers;
use crate::rt::{sleep, wait_for_input};
use crate::wire::FrameError;

/// The longest `--max-line` whose lines the kernel is asked to hold. The
/// kernel holds what `SO_RCVLOWAT` asks for up to half of `tcp_rmem`'s
/// maximum (6 MiB by default; 32 MiB on this project's machines).
pub(crate) const KERNEL_LINE_MAX: usize = 1024 * 1024;

/// Whether this system can hold long lines: Linux (whose kernel must also
/// have TCP's `SO_PEEK_OFF`, 6.9 and later, which is found out at the first
/// long line), where `SO_MEMINFO` has asm-generic's number, as on x86, ARM
/// and RISC-V (the libc crate does not have it): without it, the session
/// could not tell a receive buffer that is full.
const KERNEL_CAN_HOLD: bool = cfg!(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64"
    )
));

/// A message whose head is in the framer and whose continuation is in the
/// kernel.
#[derive(Debug)]
pub(super) struct Held {
    /// Bytes of the continuation looked at (the socket's peek offset); none
    /// of them is a newline.
    seen: usize,
    /// The last of them is a `\r`.
    seen_cr: bool,
    /// The `SO_RCVLOWAT` set for the socket.
    low_water: usize,
    /// The largest `SO_RCVLOWAT` asked for, to grow the receive buffer.
    asked: usize,
    /// The peek offset and the low-water mark are set for scanning.
    scanning_options: bool,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The line's end is still to come.
    Scanning,
    /// The kernel could not hold the line: it is read into the framer, and
    /// `seen` counts the bytes that a read reported when it looked at them,
    /// which are not reported again.
    Paused,
    /// The line is longer than the limit.
    TooLong,
    /// The message is known; what is left to relay of it: `body` bytes in
    /// the kernel, `terminator` bytes to take off the receive queue after
    /// them (its `\n` or `\r\n`; none for a fragment), then the reply's `\n`
    /// (while `newline`). `trim_head`: the head's last byte is the `\r` of
    /// the terminator.
    Ready {
        body: usize,
        terminator: usize,
        newline: bool,
        trim_head: bool,
    },
}

impl LineSocket {
    /// Lets long lines stay in the kernel, where the system allows it (see
    /// the module): for the server's connections, whose peers may not read.
    pub(crate) fn hold_long_lines(&mut self) {
        self.may_hold = KERNEL_CAN_HOLD && self.framer.max_line() <= KERNEL_LINE_MAX;
    }

    /// Whether the line being read is to stay in the kernel from here on:
    /// it has filled the read buffer, and the socket can hold it.
    pub(super) fn starts_holding(&mut self) -> bool {
        if !self.may_hold || !self.framer.is_full() {
            return false;
        }
        let Transport::Plain(socket) = &self.transport else {
            return false;
        };
        if self.held.is_some() {
            // Paused: the kernel could not hold the line being read.
            return false;
        }
        let tcp = socket.get_ref();
        // From 0: every peek goes on where the last one stopped.
        if peek_offset(tcp, 0).is_err() {
            // A kernel without TCP's SO_PEEK_OFF: read lines as before.
            self.may_hold = false;
            return false;
        }
        // Asking for a low-water mark makes the kernel grow the receive
        // buffer to hold that much (unless the buffer's size was set by
        // hand); the buffer stays grown when the mark comes down, which
        // `read_held` does before it first waits. Twice the line and one
        // segment more: what the kernel counts is its buffers, the bytes in
        // them and their overhead.
        let allowed = held_bytes_allowed(self.framer.max_line(), self.framer.fragment().len());
        let grow = receive_buffer_for(allowed, 2);
        if low_water(tcp, grow).is_err() {
            let _ = peek_offset(tcp, -1);
            self.may_hold = false;
            return false;
        }
        self.held = Some(Box::new(Held {
            seen: 0,
            seen_cr: false,
            low_water: grow,
            asked: grow,
            scanning_options: true,
            state: State::Scanning,
        }));
        true
    }

    /// Reads the held line into the framer from here on: the kernel could
    /// not hold it. The bytes looked at are read again, and are not
    /// reported as received twice.
    fn stop_holding(&mut self) -> io::Result<()> {
        let (Transport::Plain(socket), Some(held)) = (&self.transport, self.held.as_mut()) else {
            return Ok(());
        };
        kv_log_macro::debug!("long line read into the buffer: the kernel holds no more of it", {
            held_bytes: held.seen,
            receive_buffer_asked: held.asked,
        });
        held.state = State::Paused;
        self.reads.record(1, 1);
        held.reset_options(socket.get_ref())
    }

    /// Whether a line is held (not paused).
    pub(super) fn holding(&self) -> bool {
        self.held.as_ref().is_some_and(|held| !held.is_paused())
    }

    /// Of `n` bytes just read, how many a read of the paused line reported
    /// already (it looked at them then).
    pub(super) fn read_again(&mut self, n: usize) -> usize {
        match self.held.as_mut() {
            Some(held) if held.is_paused() => {
                let again = n.min(held.seen);
                held.seen -= again;
                again
            }
            _ => 0,
        }
    }

    /// The paused line is over: the next long line may be held.
    pub(super) fn unpause(&mut self) {
        if self.held.as_ref().is_some_and(|held| held.is_paused()) {
            self.held = None;
        }
    }

    /// Forgets a held line, on a connection that is closing: its socket is
    /// readable at the first byte again, and reads it from the start.
    pub(super) fn forget_held(&mut self) {
        if let (Transport::Plain(socket), Some(held)) = (&self.transport, self.held.as_mut()) {
            // If they cannot be reset, the close discards less of what the
            // peer sends.
            let _ = held.reset_options(socket.get_ref());
        }
        self.held = None;
    }

    /// [`read`](LineSocket::read) while a line is held: waits until the
    /// continuation grew, and looks at what came. `Ok(Some(0))` is the end of
    /// the peer's stream, as for a read; `Ok(None)`: the line is no longer
    /// held (the kernel would hold no more of it), read it.
    pub(super) async fn read_held(&mut self) -> io::Result<Option<usize>> {
        let mut woken = false;
        let mut pause = PAUSE_MIN;
        loop {
            let (Transport::Plain(socket), Some(held)) = (&self.transport, self.held.as_mut())
            else {
                return Err(closed());
            };
            if held.state != State::Scanning {
                // Nothing more is read until the message is answered.
                return futures::future::pending().await;
            }
            let tcp = socket.get_ref();
            let head = self.framer.fragment();
            if let Some(n) = held.scan(tcp, head, self.framer.max_line())? {
                if held.state != State::Scanning {
                    held.reset_options(tcp)?;
                }
                return Ok(Some(n));
            }
            let allowed = held_bytes_allowed(self.framer.max_line(), head.len());
            if receive_buffer_nearly_full(tcp) {
                if !held.grow_receive_buffer(tcp, allowed)? {
                    // The peer cannot send the line's end until some of it
                    // is read.
                    self.stop_holding()?;
                    return Ok(None);
                }
            } else if woken {
                // Readable with nothing new, and room in the buffer: the
                // window the kernel offers the peer is small (an
                // acknowledgement it delays, or TCP short of memory). Asked
                // to announce it, and looked at again after a pause, rather
                // than at once and for ever.
                held.announce_window(tcp)?;
                sleep(pause).await;
                pause = (pause * 2).min(PAUSE_MAX);
                woken = false;
                continue;
            }
            if held.low_water != held.seen + 1 {
                held.low_water = held.seen + 1;
                low_water(tcp, held.low_water)?;
            }
            wait_for_input(socket).await?;
            woken = true;
        }
    }

    /// The held line's state as the framer's `next_line` would give it:
    /// `None` while its end is to come, or once it is ready to be relayed.
    pub(super) fn held_error(&self) -> Option<FrameError> {
        let held = self.held.as_ref()?;
        (held.state == State::TooLong).then(|| FrameError::LineTooLong {
            max: self.framer.max_line(),
        })
    }

    /// Takes the held line as it stands as one message, a fragment, as the
    /// framer's `take_fragment` does: `Err` if it is over the limit.
    pub(super) fn take_held_fragment(&mut self) -> Result<(), FrameError> {
        let max = self.framer.max_line();
        let head = self.framer.fragment().len();
        let Some(held) = self.held.as_mut().filter(|h| h.state == State::Scanning) else {
            return Ok(());
        };
        if head + held.seen > max {
            held.state = State::TooLong;
            return Err(FrameError::LineTooLong { max });
        }
        held.state = State::Ready {
            body: held.seen,
            terminator: 0,
            newline: true,
            trim_head: false,
        };
        if let Transport::Plain(socket) = &self.transport {
            // If the options cannot be reset, the relay tries again, and
            // fails the session if they still cannot.
            let _ = held.reset_options(socket.get_ref());
        }
        Ok(())
    }

    /// Waits until the socket may take more of a relayed message, unless
    /// `progress_within` passes first (`None`: no limit) or `interrupt`
    /// completes.
    pub(crate) async fn writable_bounded<T>(
        &self,
        progress_within: Option<Duration>,
        interrupt: impl Future<Output = T>,
    ) -> Result<(), WriteStop<T>> {
        let Transport::Plain(socket) = &self.transport else {
            return Err(WriteStop::Failed(closed()));
        };
        let mut interrupt = pin!(interrupt.fuse());
        bounded(socket.writable(), progress_within, &mut interrupt).await
    }

    /// Whether a held message is ready to be relayed
    /// ([`take_held_head`](LineSocket::take_held_head), then
    /// [`relay_now`](LineSocket::relay_now)).
    pub(crate) fn held_ready(&self) -> bool {
        self.held
            .as_ref()
            .is_some_and(|held| matches!(held.state, State::Ready { .. }))
    }

    /// The ready message's head, handed out. The reply goes out in several
    /// writes from here (its timestamp and head, then the rest in pieces,
    /// then its `\n`), so the socket is corked until the relay is done: sent
    /// in full segments, not in as many small ones as there are writes.
    /// (Uncorking leaves the last partial segment to Nagle's algorithm, as
    /// any write's is.)
    pub(crate) fn take_held_head(&mut self) -> &[u8] {
        if let Transport::Plain(socket) = &self.transport {
            // Uncorked, the reply only goes out in more segments.
            let _ = cork(socket.get_ref(), true);
        }
        let trim = matches!(
            self.held.as_ref().map(|held| held.state),
            Some(State::Ready {
                trim_head: true,
                ..
            })
        );
        let head = self.framer.take_head();
        &head[..head.len() - usize::from(trim)]
    }

    /// Moves what it can of the ready message's continuation from the receive
    /// queue to the send queue now, without waiting: how many bytes it
    /// wrote, and whether the message is done. Not done, wait until the
    /// socket is writable and call it again.
    pub(crate) fn relay_now(&mut self) -> io::Result<(usize, bool)> {
        self.framer.release();
        let (Transport::Plain(socket), Some(held)) = (&self.transport, self.held.as_mut()) else {
            return Err(closed());
        };
        let mut tcp = socket.get_ref();
        held.reset_options(tcp)?;
        let State::Ready {
            body,
            terminator,
            newline,
            ..
        } = &mut held.state
        else {
            return Err(io::Error::other("no message is ready"));
        };
        let mut written = 0;
        let done = buffers::with_scratch(|scratch| -> io::Result<bool> {
            while *body > 0 {
                let want = (*body).min(scratch.len());
                let looked = retry(|| tcp.peek(&mut scratch[..want]))?;
                if looked == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                let Some(took) = write_some(tcp, &scratch[..looked])? else {
                    return Ok(false);
                };
                // Known to be queued: taken off the receive queue.
                tcp.read_exact(&mut scratch[..took])?;
                *body -= took;
                written += took;
                if took < looked {
                    return Ok(false);
                }
            }
            if *terminator > 0 {
                tcp.read_exact(&mut scratch[..*terminator])?;
                *terminator = 0;
            }
            if *newline {
                if write_some(tcp, b"\n")?.is_none() {
                    return Ok(false);
                }
                written += 1;
                *newline = false;
            }
            Ok(true)
        })?;
        if done {
            self.held = None;
            // What follows the message may be waiting already.
            self.reads.record(1, 1);
            // The reply is whole in the send queue; if it cannot be
            // uncorked now, the close sends it, so the session goes on.
            let _ = cork(tcp, false);
        }
        Ok((written, done))
    }
}

impl Held {
    /// Whether the kernel could not hold the line, now read into the framer.
    pub(super) fn is_paused(&self) -> bool {
        self.state == State::Paused
    }

    /// Grows the receive buffer that the held bytes have filled, if it may
    /// grow still: whether it now has room. The kernel counts its buffers,
    /// not the bytes in them, and a peer whose segments are small fills the
    /// buffer with a few bytes each (up to nine times the bytes, measured on
    /// loopback); a buffer that doubles, up to [`RECEIVE_BUFFER_MAX_FACTOR`]
    /// times the line, lets such a line's end come too.
    fn grow_receive_buffer(&mut self, tcp: &TcpStream, allowed: usize) -> io::Result<bool> {
        let most = receive_buffer_for(allowed, RECEIVE_BUFFER_MAX_FACTOR);
        let Some((_, before)) = receive_memory(tcp) else {
            return Ok(false);
        };
        while self.asked < most && receive_buffer_nearly_full(tcp) {
            self.asked = self.asked.saturating_mul(2).min(most);
            low_water(tcp, self.asked)?;
        }
        self.low_water = self.seen + 1;
        low_water(tcp, self.low_water)?;
        let grew = receive_memory(tcp).is_some_and(|(_, now)| now > before);
        if grew {
            self.announce_window(tcp)?;
        }
        Ok(grew && !receive_buffer_nearly_full(tcp))
    }

    /// Makes the kernel announce the window it offers the peer now, rather
    /// than with an acknowledgement it delays or at the peer's next probe
    /// of a closed window: looking at the last byte looked at again counts
    /// as a read for that, and leaves the peek offset where it was.
    fn announce_window(&self, tcp: &TcpStream) -> io::Result<()> {
        if self.seen > 0 {
            peek_offset(tcp, libc_int(self.seen - 1))?;
            retry(|| tcp.peek(&mut [0u8]))?;
        }
        Ok(())
    }

    /// Puts the socket's options back as reads and the relay need them
    /// (peeks from the start, readable at the first byte), if they are
    /// still set for scanning.
    fn reset_options(&mut self, tcp: &TcpStream) -> io::Result<()> {
        if self.scanning_options {
            peek_offset(tcp, -1)?;
            low_water(tcp, 1)?;
            self.scanning_options = false;
        }
        Ok(())
    }

    /// Looks at what came after what was looked at before, up to the most a
    /// message within `max_line` may have: `Some(bytes looked at)`, having
    /// found the line's end or that it is too long, or more of it; `Some(0)`:
    /// the peer's stream ended; `None`: nothing new.
    fn scan(&mut self, tcp: &TcpStream, head: &[u8], max_line: usize) -> io::Result<Option<usize>> {
        let allowed = held_bytes_allowed(max_line, head.len());
        let mut looked = 0;
        buffers::with_scratch(|scratch| {
            loop {
                let want = allowed.saturating_sub(self.seen).min(scratch.len());
                if want == 0 {
                    self.state = State::TooLong;
                    return Ok(Some(looked));
                }
                let n = match retry(|| tcp.peek(&mut scratch[..want])) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok((looked > 0).then_some(looked));
                    }
                    Err(e) => return Err(e),
                };
                if n == 0 {
                    // The end of the stream; what came before it first.
                    return Ok(Some(looked));
                }
                let Some(offset) = memchr::memchr(b'\n', &scratch[..n]) else {
                    self.seen += n;
                    self.seen_cr = scratch[n - 1] == b'\r';
                    looked += n;
                    continue;
                };
                let at = self.seen + offset;
                let cr_before = if offset > 0 {
                    scratch[offset - 1] == b'\r'
                } else {
                    self.seen_cr
                };
                let trim_head = at == 0 && head.last() == Some(&b'\r');
                let (body, terminator) = if at > 0 && cr_before {
                    (at - 1, 2)
                } else {
                    (at, 1)
                };
                self.state = if head.len() - usize::from(trim_head) + body > max_line {
                    State::TooLong
                } else {
                    State::Ready {
                        body,
                        terminator,
                        newline: true,
                        trim_head,
                    }
                };
                return Ok(Some(looked + offset + 1));
            }
        })
    }
}

/// The most bytes of a line's continuation that can belong to a message
/// within `max_line`, newline included, after a head of `head` bytes: a
/// newline at continuation offset `at` ends `head + at` unterminated bytes,
/// which may be up to `max_line + 1` (the `\r` of a `\r\n`).
fn held_bytes_allowed(max_line: usize, head: usize) -> usize {
    max_line.saturating_add(2).saturating_sub(head)
}

/// The first pause before a socket that is readable with nothing new is
/// looked at again, and the longest ([`LineSocket::read_held`]).
const PAUSE_MIN: Duration = Duration::from_millis(1);
const PAUSE_MAX: Duration = Duration::from_millis(100);

/// The most a receive buffer is grown to, for a held line, in lines.
const RECEIVE_BUFFER_MAX_FACTOR: usize = 16;

/// A receive buffer for `factor` times `allowed` bytes and one segment more
/// (the `SO_RCVLOWAT` that grows the buffer to it).
fn receive_buffer_for(allowed: usize, factor: usize) -> usize {
    allowed.saturating_mul(factor).saturating_add(64 * 1024)
}

fn libc_int(value: usize) -> libc::c_int {
    libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX)
}

/// Writes what the send queue takes of `bytes` now: `None` if it takes
/// nothing yet.
fn write_some(mut tcp: &TcpStream, bytes: &[u8]) -> io::Result<Option<usize>> {
    match retry(|| tcp.write(bytes)) {
        Ok(0) => Err(io::ErrorKind::WriteZero.into()),
        Ok(took) => Ok(Some(took)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// Runs a system call again while a signal interrupts it.
fn retry<T>(mut call: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            done => return done,
        }
    }
}

/// `SO_PEEK_OFF`: where the next peek starts; -1 turns peek offsets off.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn peek_offset(tcp: &TcpStream, offset: libc::c_int) -> io::Result<()> {
    super::set_int_option(tcp, libc::SOL_SOCKET, libc::SO_PEEK_OFF, offset)
}

/// Whether the socket's receive memory is at least half its buffer: so full
/// that the window the kernel offers the peer may have closed. Unknown
/// counts as full.
fn receive_buffer_nearly_full(tcp: &TcpStream) -> bool {
    receive_memory(tcp).is_none_or(|(rmem, rcvbuf)| rcvbuf == 0 || rmem >= rcvbuf / 2)
}

/// The socket's receive memory in use and its receive buffer's size, in
/// bytes (`SO_MEMINFO`); unknown where [`KERNEL_CAN_HOLD`] is not.
#[cfg(target_os = "linux")]
fn receive_memory(tcp: &TcpStream) -> Option<(u32, u32)> {
    use std::os::fd::AsRawFd;
    const SO_MEMINFO: libc::c_int = 55;
    if !KERNEL_CAN_HOLD {
        return None;
    }
    let mut info = [0u32; libc::SK_MEMINFO_DROPS as usize + 1];
    let mut len = size_of_val(&info) as libc::socklen_t;
    // SAFETY: the descriptor is open (the caller holds its socket), and the
    // kernel writes at most `len` bytes into `info`.
    let got = unsafe {
        libc::getsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (got == 0).then(|| {
        (
            info[libc::SK_MEMINFO_RMEM_ALLOC as usize],
            info[libc::SK_MEMINFO_RCVBUF as usize],
        )
    })
}

#[cfg(not(target_os = "linux"))]
fn receive_memory(_tcp: &TcpStream) -> Option<(u32, u32)> {
    None
}

/// `TCP_CORK`: while on, only full segments are sent.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn cork(tcp: &TcpStream, on: bool) -> io::Result<()> {
    super::set_int_option(tcp, libc::IPPROTO_TCP, libc::TCP_CORK, on.into())
}

/// `SO_RCVLOWAT`: the socket is readable once this many bytes are queued.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn low_water(tcp: &TcpStream, bytes: usize) -> io::Result<()> {
    super::set_int_option(tcp, libc::SOL_SOCKET, libc::SO_RCVLOWAT, libc_int(bytes))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn peek_offset(_tcp: &TcpStream, _offset: i32) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn low_water(_tcp: &TcpStream, _bytes: usize) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn cork(_tcp: &TcpStream, _on: bool) -> io::Result<()> {
    Ok(())
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests;
