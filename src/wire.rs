//! The wire format, all in one place: the greeting, how bytes become messages
//! (the framer), the reply line, and every error or notice line the server
//! can send. `docs/protocol.md` describes the same rules for humans.

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{Local, TimeZone, Timelike};

use crate::buffers;

/// Sent to every client as soon as it is admitted.
pub const GREETING: &[u8] = b"Hello\n";

/// Separates the timestamp from the echoed message in a reply line.
pub const REPLY_MARKER: &[u8] = b" - server reply: ";

/// Sent to every client when the server shuts down gracefully.
pub const SHUTDOWN_NOTICE: &[u8] = b"notice: server shutting down\n";

/// Sent before closing a client that said nothing for the idle timeout.
pub const IDLE_TIMEOUT_ERROR: &[u8] = b"error: idle timeout\n";

/// Sent before closing a client an operator closed (`DELETE /clients/{id}`).
pub const OPERATOR_CLOSE_ERROR: &[u8] = b"error: closed by operator\n";

/// Sent in plain text to a client that speaks plain text to a TLS server.
pub const TLS_REQUIRED_ERROR: &[u8] = b"error: this server speaks TLS\n";

/// Sent to a client whose address holds `--max-clients-per-ip` clients
/// already, before the server closes it.
pub const TOO_MANY_FROM_ADDRESS_ERROR: &[u8] = b"error: too many connections from your address\n";

/// Sent to a client whose address connects faster than
/// `--connect-rate-per-ip` allows, before the server closes it.
pub const CONNECTING_TOO_FAST_ERROR: &[u8] = b"error: connecting too fast\n";

/// The line sent before closing a client whose line exceeded `max` bytes.
pub fn line_too_long_error(max: usize) -> Vec<u8> {
    format!("error: line too long (max {max} bytes)\n").into_bytes()
}

/// The line sent to a client turned away because `max` clients are connected.
pub fn server_full_error(max: usize) -> Vec<u8> {
    format!("error: server full (max {max} clients)\n").into_bytes()
}

/// Whether `line` is one of the server's own words to a client, sent
/// before it closes the connection: `error: …` (the lines above) or
/// `notice: …` (the shutdown notice). The client and the bench give it as
/// the reason the connection ended.
pub fn is_error_or_notice(line: &[u8]) -> bool {
    line.starts_with(b"error: ") || line.starts_with(b"notice: ")
}

/// Free space, in bytes, a framer guarantees before each read.
const MIN_READ: usize = 256;

/// Why a byte stream could not be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// A message grew past the limit before its terminating `\n`.
    LineTooLong {
        /// The limit, in bytes.
        max: usize,
    },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::LineTooLong { max } => write!(f, "line too long (max {max} bytes)"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Splits a byte stream into `\n`-terminated messages.
///
/// Borrows a buffer (from [`crate::buffers`]) that the caller reads into
/// ([`read_buf`](Framer::read_buf) then [`filled`](Framer::filled)) and hands
/// out complete messages with [`next_line`](Framer::next_line), a trailing
/// `\r` removed. Bytes after the last `\n` stay buffered as a fragment until
/// more arrive or the caller takes them with
/// [`take_fragment`](Framer::take_fragment). The buffer never holds more than
/// `max_line` + 1 unterminated bytes plus one read, and once every byte in it
/// is handed out it goes back ([`release`](Framer::release), which
/// `next_line` does itself): an idle connection's framer holds no memory.
#[derive(Debug)]
pub(crate) struct Framer {
    buf: Vec<u8>,
    /// First byte not yet handed out.
    start: usize,
    /// One past the last byte read.
    end: usize,
    /// Bytes before this index (and after `start`) hold no `\n`.
    scanned: usize,
    max_line: usize,
}

impl Framer {
    /// A framer that rejects messages longer than `max_line` bytes.
    pub(crate) fn new(max_line: usize) -> Framer {
        Framer {
            buf: Vec::new(),
            start: 0,
            end: 0,
            scanned: 0,
            max_line,
        }
    }

    /// Free space to read into; pass the byte count read to [`filled`](Framer::filled).
    pub(crate) fn read_buf(&mut self) -> &mut [u8] {
        if self.start == self.end {
            if self.buf.len() != buffers::READ_SIZE {
                // None borrowed yet, or one that grew for a long line.
                self.release();
                self.buf = buffers::take_read();
            }
            self.start = 0;
            self.end = 0;
            self.scanned = 0;
        } else if self.start > 0 && self.buf.len() - self.end < MIN_READ {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.scanned -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < MIN_READ {
            // `next_line` keeps at most max_line + 1 unterminated bytes, so
            // this cap always leaves MIN_READ bytes free.
            let cap = (self.max_line.saturating_add(1 + MIN_READ)).max(buffers::READ_SIZE);
            let len = (self.buf.len() * 2)
                .max(buffers::GROWN_MIN)
                .max(self.end + MIN_READ)
                .min(cap);
            // Within the limits above: one the thread kept, or a new one of
            // exactly `len`. (`start` is 0: the bytes were moved down above.)
            debug_assert_eq!(self.start, 0);
            let mut grown = buffers::take_grown(len, cap);
            grown[..self.end].copy_from_slice(&self.buf[..self.end]);
            buffers::give_read(std::mem::replace(&mut self.buf, grown));
        }
        &mut self.buf[self.end..]
    }

    /// Once lines are handed out: gives the buffer back if it is empty, and
    /// one that grew for a long line is traded for a standard one if what
    /// is left fits, so that a client whose reply waits (it does not read)
    /// holds a long line's memory once, in its reply, not twice.
    /// [`next_line`](Framer::next_line) does it when it finds no line; a
    /// caller that stops taking lines before that does it itself.
    pub(crate) fn settle(&mut self) {
        let left = self.end - self.start;
        if left == 0 {
            self.release();
        } else if self.buf.len() > buffers::READ_SIZE && left <= buffers::READ_SIZE - MIN_READ {
            let mut standard = buffers::take_read();
            standard[..left].copy_from_slice(&self.buf[self.start..self.end]);
            buffers::give_read(std::mem::replace(&mut self.buf, standard));
            self.scanned -= self.start;
            self.start = 0;
            self.end = left;
        }
    }

    /// Gives the buffer back if nothing in it waits to be handed out.
    pub(crate) fn release(&mut self) {
        if self.start == self.end && !self.buf.is_empty() {
            buffers::give_read(std::mem::take(&mut self.buf));
            self.start = 0;
            self.end = 0;
            self.scanned = 0;
        }
    }

    /// Records that `n` bytes were read into the slice from [`read_buf`](Framer::read_buf).
    pub(crate) fn filled(&mut self, n: usize) {
        self.end += n;
        debug_assert!(self.end <= self.buf.len());
    }

    /// Appends as much of `bytes` as fits, as if it had been read; returns how
    /// many bytes were taken. Like a real read, it stops when the buffer is
    /// full until lines are taken out.
    #[cfg(test)]
    fn push(&mut self, bytes: &[u8]) -> usize {
        let mut taken = 0;
        while taken < bytes.len() {
            let spare = self.read_buf();
            if spare.is_empty() {
                break;
            }
            let n = spare.len().min(bytes.len() - taken);
            spare[..n].copy_from_slice(&bytes[taken..taken + n]);
            self.filled(n);
            taken += n;
        }
        taken
    }

    /// The next complete message, without its `\n` or `\r\n`.
    ///
    /// `None` means no complete message is buffered. An error is final: the
    /// stream cannot be framed any further.
    pub(crate) fn next_line(&mut self) -> Option<Result<&[u8], FrameError>> {
        match memchr::memchr(b'\n', &self.buf[self.scanned..self.end]) {
            Some(offset) => {
                let newline = self.scanned + offset;
                let mut line = &self.buf[self.start..newline];
                if let [rest @ .., b'\r'] = line {
                    line = rest;
                }
                self.start = newline + 1;
                self.scanned = self.start;
                if line.len() > self.max_line {
                    return Some(Err(self.too_long()));
                }
                Some(Ok(line))
            }
            None => {
                self.scanned = self.end;
                // One byte of slack: the `\r` of a maximal `\r\n`-terminated line.
                if self.end - self.start > self.max_line.saturating_add(1) {
                    Some(Err(self.too_long()))
                } else {
                    self.settle();
                    None
                }
            }
        }
    }

    fn too_long(&self) -> FrameError {
        FrameError::LineTooLong { max: self.max_line }
    }

    /// Whether unterminated bytes are buffered.
    pub(crate) fn has_fragment(&self) -> bool {
        self.start < self.end
    }

    /// The bytes read and not yet handed out.
    pub(crate) fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Hands out the unterminated bytes, verbatim, as one message.
    ///
    /// Call it only after [`next_line`](Framer::next_line) returned `None`.
    /// A fragment over `max_line` bytes is an error, as the same bytes with a
    /// newline would be (the one byte of slack `next_line` keeps is for the
    /// `\r` of a line still to be terminated; a fragment keeps its `\r`).
    pub(crate) fn take_fragment(&mut self) -> Option<Result<&[u8], FrameError>> {
        if !self.has_fragment() {
            return None;
        }
        let fragment = &self.buf[self.start..self.end];
        self.start = self.end;
        self.scanned = self.end;
        if fragment.len() > self.max_line {
            return Some(Err(self.too_long()));
        }
        Some(Ok(fragment))
    }

    /// Bytes of memory the buffer holds (for tests of the memory bound).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// The reply prefix of one second, cached per thread.
#[derive(Default)]
struct CachedPrefix {
    /// Unix second the prefix belongs to.
    second: Option<u64>,
    /// `H:M:S - server reply: ` for that second.
    prefix: Vec<u8>,
}

thread_local! {
    static PREFIX: std::cell::RefCell<CachedPrefix> = std::cell::RefCell::default();
}

/// Appends `H:M:S - server reply: <message>\n` (local time, now) to `out`.
///
/// Costs a clock read and a copy per message: the timestamp is formatted (a
/// time-zone lookup) once per second per thread, not per session, so that no
/// session carries a cache of its own.
pub(crate) fn write_reply(out: &mut Vec<u8>, message: &[u8]) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    PREFIX.with_borrow_mut(|cached| {
        if cached.second != Some(now) {
            cached.second = Some(now);
            cached.prefix.clear();
            let local = i64::try_from(now)
                .ok()
                .and_then(|secs| Local.timestamp_opt(secs, 0).single())
                .unwrap_or_else(Local::now);
            write_prefix(&mut cached.prefix, &local);
        }
        // All at once, when it must grow: a long line's reply is not given
        // twice its size by the push of its `\n`.
        buffers::reserve_out(out, cached.prefix.len() + message.len() + 1);
        out.extend_from_slice(&cached.prefix);
    });
    out.extend_from_slice(message);
    out.push(b'\n');
}

/// Appends `H:M:S - server reply: ` for `time`, without zero padding, as the
/// original Node server's `getHours()`/`getMinutes()`/`getSeconds()` do.
pub fn write_prefix(out: &mut Vec<u8>, time: &impl Timelike) {
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _infallible = write!(out, "{}:{}:{}", time.hour(), time.minute(), time.second());
    out.extend_from_slice(REPLY_MARKER);
}

/// The message a reply line echoes, or `None` if `line` is not a reply.
///
/// A reply is `H:M:S - server reply: <message>` with H, M and S decimal.
pub fn reply_echo(line: &[u8]) -> Option<&[u8]> {
    let marker = memchr::memmem::find(line, REPLY_MARKER)?;
    let mut fields = 0;
    for field in line[..marker].split(|&b| b == b':') {
        fields += 1;
        let numeric = (1..=2).contains(&field.len()) && field.iter().all(u8::is_ascii_digit);
        if fields > 3 || !numeric {
            return None;
        }
    }
    if fields != 3 {
        return None;
    }
    Some(&line[marker + REPLY_MARKER.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveTime;

    fn lines(framer: &mut Framer) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(line) = framer.next_line() {
            out.push(line.expect("within the limit").to_vec());
        }
        out
    }

    #[test]
    fn a_line_split_across_reads_comes_out_whole() {
        let mut framer = Framer::new(64);
        framer.push(b"hel");
        assert!(lines(&mut framer).is_empty());
        assert!(framer.has_fragment());
        framer.push(b"lo\nwor");
        assert_eq!(lines(&mut framer), vec![b"hello".to_vec()]);
        framer.push(b"ld\n");
        assert_eq!(lines(&mut framer), vec![b"world".to_vec()]);
        assert!(!framer.has_fragment());
    }

    #[test]
    fn many_lines_in_one_read_come_out_in_order() {
        let mut framer = Framer::new(64);
        framer.push(b"a\nbb\n\nccc\n");
        assert_eq!(
            lines(&mut framer),
            vec![b"a".to_vec(), b"bb".to_vec(), b"".to_vec(), b"ccc".to_vec()]
        );
    }

    #[test]
    fn crlf_loses_only_the_trailing_cr() {
        let mut framer = Framer::new(64);
        framer.push(b"telnet\r\nin\rside\r\n\r\r\n");
        assert_eq!(
            lines(&mut framer),
            vec![b"telnet".to_vec(), b"in\rside".to_vec(), b"\r".to_vec()]
        );
    }

    #[test]
    fn binary_bytes_pass_through_unchanged() {
        let mut framer = Framer::new(64);
        let message = [0u8, 0xff, 0xfe, b'\r', 0x80, 7];
        framer.push(&message);
        framer.push(b"\n");
        assert_eq!(lines(&mut framer), vec![message.to_vec()]);
    }

    #[test]
    fn a_fragment_is_taken_verbatim_and_only_once() {
        let mut framer = Framer::new(64);
        framer.push(b"done\nb1e0c5f7a9d3");
        assert_eq!(lines(&mut framer), vec![b"done".to_vec()]);
        assert_eq!(framer.take_fragment(), Some(Ok(&b"b1e0c5f7a9d3"[..])));
        assert_eq!(framer.take_fragment(), None);
        framer.push(b"next\n");
        assert_eq!(lines(&mut framer), vec![b"next".to_vec()]);
    }

    #[test]
    fn a_line_at_the_limit_passes_and_one_byte_more_fails() {
        let mut framer = Framer::new(8);
        framer.push(b"12345678\r\n123456789\n");
        assert_eq!(framer.next_line(), Some(Ok(&b"12345678"[..])));
        assert_eq!(
            framer.next_line(),
            Some(Err(FrameError::LineTooLong { max: 8 }))
        );
    }

    #[test]
    fn a_fragment_over_the_limit_fails_as_a_line_would() {
        let mut framer = Framer::new(4);
        framer.push(b"1234");
        assert_eq!(framer.next_line(), None);
        assert_eq!(framer.take_fragment(), Some(Ok(&b"1234"[..])));
        framer.push(b"1234\r");
        assert_eq!(framer.next_line(), None, "the \\r of a line to come");
        assert_eq!(
            framer.take_fragment(),
            Some(Err(FrameError::LineTooLong { max: 4 }))
        );
    }

    #[test]
    fn a_limit_at_the_top_of_its_type_does_not_overflow() {
        let mut framer = Framer::new(usize::MAX);
        framer.push(&[b'x'; 600]);
        framer.push(b"\n");
        assert_eq!(
            framer.next_line().map(|l| l.map(<[u8]>::len)),
            Some(Ok(600))
        );
    }

    #[test]
    fn an_endless_line_fails_without_growing_the_buffer() {
        let mut framer = Framer::new(4096);
        let chunk = [b'x'; 1000];
        let failed = (0..100).any(|_| {
            framer.push(&chunk);
            matches!(framer.next_line(), Some(Err(_)))
        });
        assert!(failed);
        assert!(framer.capacity() <= 4096 + 1 + MIN_READ);
    }

    #[test]
    fn a_framer_holds_a_buffer_only_while_bytes_wait_in_it() {
        let mut framer = Framer::new(1 << 20);
        assert_eq!(framer.capacity(), 0, "none before the first read");
        framer.push(b"one\ntw");
        assert_eq!(lines(&mut framer), vec![b"one".to_vec()]);
        assert!(framer.capacity() > 0, "a partial line keeps its bytes");
        framer.push(b"o\n");
        assert_eq!(lines(&mut framer), vec![b"two".to_vec()]);
        assert_eq!(framer.capacity(), 0, "given back once all is handed out");
        // One that grew for a long line is given back too.
        framer.push(&vec![b'y'; buffers::READ_SIZE * 8]);
        assert!(lines(&mut framer).is_empty());
        assert!(framer.capacity() > buffers::READ_SIZE);
        framer.push(b"\n");
        assert_eq!(lines(&mut framer).len(), 1);
        assert_eq!(framer.capacity(), 0);
        framer.push(b"x");
        assert_eq!(
            framer.capacity(),
            buffers::READ_SIZE,
            "a standard one again"
        );
    }

    #[test]
    fn a_grown_buffer_is_traded_for_a_standard_one_once_its_long_line_is_out() {
        let mut framer = Framer::new(1 << 20);
        framer.push(&vec![b'y'; buffers::READ_SIZE * 8]);
        framer.push(b"\nnext li");
        assert_eq!(lines(&mut framer).len(), 1);
        assert_eq!(framer.capacity(), buffers::READ_SIZE, "the rest moved");
        framer.push(b"ne\n");
        assert_eq!(lines(&mut framer), vec![b"next line".to_vec()]);
    }

    #[test]
    fn long_lines_one_after_another_reuse_one_grown_buffer() {
        let mut framer = Framer::new(1 << 20);
        let line = vec![b'y'; buffers::READ_SIZE * 8];
        let mut grown = Vec::new();
        for _ in 0..3 {
            framer.push(&line);
            grown.push((framer.buf.as_ptr(), framer.capacity()));
            framer.push(b"\n");
            assert_eq!(lines(&mut framer).len(), 1);
            assert_eq!(framer.capacity(), 0, "given back");
        }
        assert!(
            grown[1].1 > line.len(),
            "the second takes what the first grew to"
        );
        assert_eq!(grown[1], grown[2], "and so does the third");
    }

    #[test]
    fn the_prefix_is_not_zero_padded() {
        let mut out = Vec::new();
        write_prefix(&mut out, &NaiveTime::from_hms_opt(9, 5, 3).expect("valid"));
        assert_eq!(out, b"9:5:3 - server reply: ");
        out.clear();
        write_prefix(
            &mut out,
            &NaiveTime::from_hms_opt(23, 59, 10).expect("valid"),
        );
        assert_eq!(out, b"23:59:10 - server reply: ");
    }

    #[test]
    fn a_reply_echoes_the_message_after_the_local_time() {
        let before = Local::now();
        let mut out = Vec::new();
        write_reply(&mut out, b"\xffabc");
        let after = Local::now();
        let expected = |t: chrono::DateTime<Local>| {
            let mut line = Vec::new();
            write_prefix(&mut line, &t);
            line.extend_from_slice(b"\xffabc\n");
            line
        };
        assert!(out == expected(before) || out == expected(after), "{out:?}");
    }

    #[test]
    fn reply_echo_recognises_replies_only() {
        assert_eq!(reply_echo(b"9:5:3 - server reply: abc"), Some(&b"abc"[..]));
        assert_eq!(reply_echo(b"23:59:10 - server reply: "), Some(&b""[..]));
        assert_eq!(reply_echo(b"Hello"), None);
        assert_eq!(reply_echo(b"x:5:3 - server reply: abc"), None);
        assert_eq!(reply_echo(b"1:2:3:4 - server reply: abc"), None);
        assert_eq!(reply_echo(b"notice: server shutting down"), None);
    }

    #[test]
    fn every_error_and_notice_line_is_recognised_as_one() {
        let lines = [
            SHUTDOWN_NOTICE.to_vec(),
            IDLE_TIMEOUT_ERROR.to_vec(),
            TLS_REQUIRED_ERROR.to_vec(),
            line_too_long_error(8),
            server_full_error(1),
            TOO_MANY_FROM_ADDRESS_ERROR.to_vec(),
            CONNECTING_TOO_FAST_ERROR.to_vec(),
        ];
        for line in lines {
            assert!(is_error_or_notice(&line), "{line:?}");
        }
        assert!(!is_error_or_notice(b"Hello"));
        assert!(!is_error_or_notice(b"1:2:3 - server reply: error: x"));
        assert!(!is_error_or_notice(b"errors: none"));
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// What the framer must produce: the stream split on `\n`, each line
        /// without a trailing `\r`, the unterminated tail held back; cut short
        /// by an error at the first line over the limit (or a tail too long to
        /// be one).
        fn reference(stream: &[u8], max_line: usize) -> (Vec<Vec<u8>>, bool) {
            let mut lines = Vec::new();
            let mut parts: Vec<&[u8]> = stream.split(|&b| b == b'\n').collect();
            let tail = parts.pop().unwrap_or_default();
            for part in parts {
                let line = part.strip_suffix(b"\r").unwrap_or(part);
                if line.len() > max_line {
                    return (lines, true);
                }
                lines.push(line.to_vec());
            }
            (lines, tail.len() > max_line + 1)
        }

        fn bytes() -> impl Strategy<Value = Vec<u8>> {
            // Mostly short lines, with CRs and arbitrary bytes mixed in.
            let byte = prop_oneof![
                4 => b'a'..=b'z',
                2 => Just(b'\n'),
                1 => Just(b'\r'),
                1 => any::<u8>(),
            ];
            proptest::collection::vec(byte, 0..3000)
        }

        proptest! {
            #[test]
            fn any_split_gives_the_lines_of_the_whole_stream(
                stream in bytes(),
                cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
                max_line in 1usize..200,
            ) {
                let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
                cuts.push(stream.len());
                cuts.sort_unstable();
                let bound = (max_line + 1 + MIN_READ).max(buffers::READ_SIZE);
                let mut framer = Framer::new(max_line);
                let mut lines = Vec::new();
                let mut failed = false;
                let mut at = 0;
                'feed: for cut in cuts {
                    while at < cut {
                        at += framer.push(&stream[at..cut]);
                        prop_assert!(framer.capacity() <= bound, "buffer grew to {}", framer.capacity());
                        loop {
                            match framer.next_line() {
                                Some(Ok(line)) => lines.push(line.to_vec()),
                                Some(Err(FrameError::LineTooLong { max })) => {
                                    prop_assert_eq!(max, max_line);
                                    failed = true;
                                    break 'feed;
                                }
                                None => break,
                            }
                        }
                    }
                }
                let (expected, expect_failure) = reference(&stream, max_line);
                prop_assert_eq!(lines, expected);
                prop_assert_eq!(failed, expect_failure);
            }
        }
    }
}
