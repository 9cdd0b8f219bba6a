//! Long lines left in the kernel: how a server connection answers a line
//! longer than its read buffer without ever holding the line itself.
//!
//! A line that outgrows the standard read buffer (4 KiB, `buffers::READ_SIZE`)
//! is not read into a bigger one. Its start (the *head*) stays in the framer;
//! the rest (the *continuation*) stays in the socket's receive queue, and is
//! only looked at: `MSG_PEEK` with a peek offset (`SO_PEEK_OFF`), so every
//! byte is looked at once, in a thread's scratch buffer, until the newline is
//! found. `SO_RCVLOWAT` makes the socket readable again only once more bytes
//! than those looked at have arrived (the kernel grows the receive buffer to
//! hold them). Once the line's end is known, and with it that the line is
//! within `--max-line`, the reply is written as its timestamp and head, then
//! the continuation moved from the receive queue to the send queue as fast as
//! the client takes it (looked at, written, then taken off the receive queue
//! as far as it was written), then its `\n`.
//!
//! A client that does not read its replies therefore costs the server no
//! memory of its own for them: what it sent waits in the kernel's receive
//! queue, where TCP holds it anyway, instead of in a reply buffer. Before
//! this, such a client held its last line, up to `--max-line` bytes
//! (docs/performance.md).
//!
//! Plain TCP on Linux 6.9 and later (TCP's `SO_PEEK_OFF`), and a
//! `--max-line` of at most [`KERNEL_LINE_MAX`]; elsewhere, and with TLS
//! (rustls holds the plaintext), long lines are read into a buffer that
//! grows, as every line was before.

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures::{FutureExt, select_biased};

use super::{LineSocket, Transport, WriteStop, closed};
use crate::buffers;
use crate::rt::{sleep_until, wait_for_input};
use crate::wire::FrameError;

/// The longest `--max-line` whose lines the kernel is asked to hold. The
/// kernel holds what `SO_RCVLOWAT` asks for up to half of `tcp_rmem`'s
/// maximum (6 MiB by default; 32 MiB on this project's machines).
pub(crate) const KERNEL_LINE_MAX: usize = 1024 * 1024;

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
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The line's end is still to come.
    Scanning,
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
        self.may_hold = cfg!(any(target_os = "linux", target_os = "android"))
            && self.framer.max_line() <= KERNEL_LINE_MAX;
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
        if self.hold_paused {
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
        // `read_held` does at once. Twice the line and one skb more: what
        // the kernel counts is its buffers, the bytes in them and their
        // overhead, and a buffer partly read counts whole.
        let allowed = held_bytes_allowed(self.framer.max_line(), self.framer.fragment().len());
        let grow = allowed.saturating_mul(2).saturating_add(64 * 1024);
        if low_water(tcp, grow).is_err() {
            let _ = peek_offset(tcp, -1);
            self.may_hold = false;
            return false;
        }
        self.held = Some(Box::new(Held {
            seen: 0,
            seen_cr: false,
            low_water: grow,
            state: State::Scanning,
        }));
        true
    }

    /// Reads the held line into the framer from here on: the kernel could
    /// not hold it.
    fn stop_holding(&mut self) {
        if let Transport::Plain(socket) = &self.transport {
            // If the options cannot be reset, the reads that follow fail,
            // and the session with them.
            let _ = finish_scanning(socket.get_ref());
        }
        self.held = None;
        self.hold_paused = true;
        self.reads.record(1, 1);
    }

    /// [`read`](LineSocket::read) while a line is held: waits until the
    /// continuation grew, and looks at what came. `Ok(Some(0))` is the end of
    /// the peer's stream, as for a read; `Ok(None)`: the line is no longer
    /// held (the kernel would hold no more of it), read it.
    pub(super) async fn read_held(&mut self) -> io::Result<Option<usize>> {
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
            if let Some(n) = held.scan(tcp, self.framer.fragment(), self.framer.max_line())? {
                if held.state != State::Scanning {
                    finish_scanning(tcp)?;
                }
                return Ok(Some(n));
            }
            if receive_buffer_nearly_full(tcp) {
                // The kernel holds all it will: the peer cannot send the
                // line's end until some of it is read.
                self.stop_holding();
                return Ok(None);
            }
            if held.low_water != held.seen + 1 {
                held.low_water = held.seen + 1;
                low_water(tcp, held.low_water)?;
            }
            wait_for_input(socket).await?;
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
            // If the options cannot be reset, the relay's reads fail, and
            // the session with them.
            let _ = finish_scanning(socket.get_ref());
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
        let stalled_at = progress_within.map(|limit| Instant::now() + limit);
        select_biased! {
            ready = socket.writable().fuse() => ready.map_err(WriteStop::Failed),
            value = interrupt.fuse() => Err(WriteStop::Interrupted(value)),
            _ = sleep_until(stalled_at).fuse() => Err(WriteStop::Stalled),
        }
    }

    /// Whether a held message is ready to be relayed
    /// ([`take_held_head`](LineSocket::take_held_head), then
    /// [`relay_now`](LineSocket::relay_now)).
    pub(crate) fn held_ready(&self) -> bool {
        self.held
            .as_ref()
            .is_some_and(|held| matches!(held.state, State::Ready { .. }))
    }

    /// The ready message's head, handed out.
    pub(crate) fn take_held_head(&mut self) -> &[u8] {
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
        let State::Ready {
            body,
            terminator,
            newline,
            ..
        } = &mut held.state
        else {
            return Err(io::Error::other("no message is ready"));
        };
        let mut tcp = socket.get_ref();
        let mut written = 0;
        let done = buffers::with_scratch(|scratch| -> io::Result<bool> {
            while *body > 0 {
                let want = (*body).min(scratch.len());
                let looked = retry(|| tcp.peek(&mut scratch[..want]))?;
                if looked == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                let took = match retry(|| tcp.write(&scratch[..looked])) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(took) => took,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) => return Err(e),
                };
                discard(&mut tcp, &mut scratch[..took])?;
                *body -= took;
                written += took;
                if took < looked {
                    return Ok(false);
                }
            }
            if *terminator > 0 {
                discard(&mut tcp, &mut scratch[..*terminator])?;
                *terminator = 0;
            }
            if *newline {
                match retry(|| tcp.write(b"\n")) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(_) => written += 1,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) => return Err(e),
                }
                *newline = false;
            }
            Ok(true)
        })?;
        if done {
            self.held = None;
            // What follows the message may be waiting already.
            self.reads.record(1, 1);
        }
        Ok((written, done))
    }
}

impl Held {
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
                let n = match tcp.peek(&mut scratch[..want]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
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

/// Puts the socket's options back as reads and the relay need them: peeks
/// from the start, and readable at the first byte.
fn finish_scanning(tcp: &TcpStream) -> io::Result<()> {
    peek_offset(tcp, -1)?;
    low_water(tcp, 1)
}

/// Takes exactly `buf.len()` bytes, known to be queued, off the receive queue.
fn discard(tcp: &mut &TcpStream, buf: &mut [u8]) -> io::Result<()> {
    let mut taken = 0;
    while taken < buf.len() {
        match retry(|| tcp.read(&mut buf[taken..]))? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => taken += n,
        }
    }
    Ok(())
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

/// `SO_RCVLOWAT`: the socket is readable once this many bytes are queued.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn low_water(tcp: &TcpStream, bytes: usize) -> io::Result<()> {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    super::set_int_option(tcp, libc::SOL_SOCKET, libc::SO_RCVLOWAT, bytes)
}

/// Whether the socket's receive buffer is at least half used (its
/// `SO_MEMINFO`): so full that the window the kernel offers the peer may
/// have closed. Unknown counts as full.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn receive_buffer_nearly_full(tcp: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    // SO_MEMINFO in asm-generic/socket.h, which x86, ARM and RISC-V use;
    // not in the libc crate. Elsewhere the answer is "full".
    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64"
    ))]
    const SO_MEMINFO: libc::c_int = 55;
    #[cfg(not(any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64"
    )))]
    return true;
    let mut info = [0u32; 9];
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
    let rmem_alloc = info[libc::SK_MEMINFO_RMEM_ALLOC as usize];
    let rcvbuf = info[libc::SK_MEMINFO_RCVBUF as usize];
    got != 0 || rcvbuf == 0 || rmem_alloc >= rcvbuf / 2
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn receive_buffer_nearly_full(_tcp: &TcpStream) -> bool {
    true
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn peek_offset(_tcp: &TcpStream, _offset: i32) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn low_water(_tcp: &TcpStream, _bytes: usize) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests;
