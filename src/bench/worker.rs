//! One benchmark connection: connect (from its `--source-addrs` address, if
//! any), wait for the greeting, then keep `--depth` messages in flight (or,
//! with `--once`, send one) and check every reply against the message it
//! should echo (replies come in order, so against the oldest one in flight).
//! When the server ends the connection, the reason is its own words if it
//! said any (`error: server full …`, `error: line too long …`, `notice:
//! server shutting down`), and a TLS server is named as one.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::Shared;
use futures::{FutureExt, select_biased};

use super::BenchConfig;
use super::latency::{Batch, Recorder};
use super::pacer::{Credits, Schedule};
use super::source::connect_from;
use crate::net::LineSocket;
use crate::rt::{Sender, within};
use crate::shutdown::Shutdown;
use crate::wire;

/// How long a connection may take to connect and be greeted.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a plain connection waits for its greeting before it sends
/// [`NUDGE`]. A TLS server says nothing until the client's handshake, so a
/// plain bench would otherwise wait out [`CONNECT_TIMEOUT`]; the line makes
/// duplex's TLS server answer `error: this server speaks TLS` at once (and
/// others a TLS alert, or a close). A plain server greets within
/// milliseconds even under a burst of connects; one slower than this only
/// gets an empty line to answer, and that reply is skipped.
const GREETING_NUDGE: Duration = Duration::from_millis(500);

/// What a connection still waiting for its greeting sends: an empty line,
/// which no message of the bench's is.
const NUDGE: &[u8] = b"\n";

/// Why a connection ended when the server answered plain text with a TLS
/// record.
const TLS_SPOKEN: &str = "the server speaks TLS (it answered with a TLS record): use --tls";

/// Opens once, for every worker at the same moment: the start of the
/// measurement, when every connection has been greeted (or failed). It
/// carries that moment, which a paced run's schedule counts from.
pub(super) type StartGate = Shared<futures::channel::oneshot::Receiver<Instant>>;

/// How a connection's attempt to connect and be greeted ended: from which
/// source address, and the reason if it failed.
pub(super) struct Greeted {
    pub(super) source: Option<IpAddr>,
    pub(super) result: Result<(), String>,
}

/// What one connection measured (its latencies went to the run's
/// [`Recorder`]).
#[derive(Default)]
pub(super) struct WorkerResult {
    /// Correct replies.
    pub(super) replies: u64,
    pub(super) mismatches: u64,
    /// Messages answered inside the reply to an earlier one.
    pub(super) merged: u64,
    /// Set if the connection ended while measuring: why (the server's own
    /// `error: …` or `notice: …` line, its close, or the error).
    pub(super) dropped: Option<String>,
}

/// One benchmark connection's task.
pub(super) struct Worker {
    /// Which connection of the run (its turn in the pacer's round robin).
    pub(super) id: usize,
    /// With `--rate`: the messages the pacer has released to this connection.
    pub(super) credits: Option<Arc<Credits>>,
    /// With `--source-addrs`: the local address to connect from.
    pub(super) source: Option<IpAddr>,
    /// `<id hex>-`, the start of every message on this connection.
    pub(super) prefix: String,
    pub(super) config: Arc<BenchConfig>,
    /// Replies so far, over every connection, for the progress bar.
    pub(super) replies: Arc<AtomicU64>,
    /// Where this connection's latencies go.
    pub(super) latencies: Arc<Recorder>,
    /// Told once this connection has done what it came to do: with `--once`,
    /// had its reply; otherwise, been dropped. Capacity for every worker,
    /// and each sends at most once, so the send never waits.
    pub(super) finished: Sender<()>,
}

/// A connection's exchange of messages: what it may send, what is in
/// flight, and what it measured.
struct Exchange {
    /// Messages in flight at most.
    depth: usize,
    /// Messages to send at most (1 with `--once`).
    limit: u64,
    /// With `--rate`: when each message is due.
    schedule: Option<Schedule>,
    /// Messages written and not yet answered: sequence number, write time.
    in_flight: VecDeque<(u64, Instant)>,
    /// The next message's sequence number (messages sent so far).
    next_seq: u64,
    /// The server greeted late, after the [`NUDGE`]: a reply with an empty
    /// echo is still to come, and is not one of ours.
    nudge_reply_owed: bool,
    result: WorkerResult,
    latencies: Batch,
}

impl Worker {
    /// Connects, reports to `ready` whether it was greeted, waits for `start`,
    /// and measures until `stop`.
    pub(super) async fn run(
        self,
        addr: SocketAddr,
        ready: Sender<Greeted>,
        start: StartGate,
        stop: Shutdown,
    ) -> WorkerResult {
        let max_line = self.config.size + 256;
        let connected = within(CONNECT_TIMEOUT, async {
            let connect = match self.source {
                Some(source) => (connect_from(addr, source).await)
                    .map(|socket| LineSocket::new(socket, max_line)),
                None => LineSocket::connect(addr, max_line).await,
            };
            let mut socket = connect.map_err(|e| e.to_string())?;
            if let Some(tls) = &self.config.tls {
                let shaken = Box::pin(socket.connect_tls(tls)).await;
                shaken.map_err(|e| format!("TLS: {}", crate::tls::failure_reason(&e)))?;
            }
            let nudged = greeting(&mut socket, self.config.tls.is_none()).await?;
            Ok::<_, String>((socket, nudged))
        })
        .await;
        let source = self.source;
        let (mut socket, nudged) = match connected.unwrap_or_else(|| Err("timed out".to_owned())) {
            Ok(connected) => connected,
            Err(reason) => {
                // The coordinator counts every answer; it only stops listening
                // once all senders are gone.
                let _ = ready
                    .send(Greeted {
                        source,
                        result: Err(reason),
                    })
                    .await;
                return WorkerResult::default();
            }
        };
        // As above: an answer nobody waits for any more needs no handling.
        let _ = ready
            .send(Greeted {
                source,
                result: Ok(()),
            })
            .await;
        drop(ready);
        let started = select_biased! {
            _ = stop.wait().fuse() => return WorkerResult::default(),
            // The coordinator opens the gate or drops it; either way, go.
            started = start.fuse() => started.unwrap_or_else(|_| Instant::now()),
        };
        let depth = if self.config.once {
            1
        } else {
            self.config.depth
        };
        if depth == 0 {
            stop.wait().await;
            return WorkerResult::default();
        }
        let mut exchange = Exchange {
            depth,
            limit: if self.config.once { 1 } else { u64::MAX },
            schedule: (self.config.rate)
                .map(|rate| Schedule::new(started, rate, self.config.clients)),
            in_flight: VecDeque::with_capacity(depth),
            next_seq: 0,
            nudge_reply_owed: nudged,
            result: WorkerResult::default(),
            latencies: Batch::new(self.latencies.clone()),
        };
        let outcome = self.exchange(&mut socket, &mut exchange, &stop).await;
        let Exchange {
            mut result,
            latencies,
            ..
        } = exchange;
        // Its latencies go to the recorder now, not after a --once hold.
        drop(latencies);
        if let Err(reason) = outcome {
            if !stop.is_triggered() {
                result.dropped = Some(reason);
            }
        }
        if !stop.is_triggered() {
            // Only this worker sends on it, once; the coordinator may be gone.
            let _ = self.finished.try_send(());
        }
        if self.config.once && result.dropped.is_none() {
            // Hold the connection, idle, until the run ends.
            stop.wait().await;
        }
        result
    }

    /// Keeps up to `depth` messages in flight until `stop`, or until the
    /// `limit`th is answered; `Err` with the reason if the connection ended
    /// first.
    async fn exchange(
        &self,
        socket: &mut LineSocket,
        state: &mut Exchange,
        stop: &Shutdown,
    ) -> Result<(), String> {
        let depth = state.depth;
        let mut stopped = pin!(stop.wait().fuse());
        let mut out = Vec::new();
        let mut expected = Vec::new();
        loop {
            // Fill the free slots: all of them, or as many as the pacer released.
            let now = Instant::now();
            while state.in_flight.len() < depth
                && state.next_seq < state.limit
                && self
                    .credits
                    .as_ref()
                    .is_none_or(|c| c.beyond(state.next_seq))
            {
                self.message(&mut out, state.next_seq);
                state.in_flight.push_back((state.next_seq, now));
                state.next_seq += 1;
            }
            if !out.is_empty() {
                socket.write_all(&out).await.map_err(|e| e.to_string())?;
                out.clear();
            }
            if state.in_flight.is_empty() && state.next_seq >= state.limit {
                return Ok(());
            }
            let released = async {
                match &self.credits {
                    Some(credits) if state.in_flight.len() < depth => {
                        credits.released_beyond(state.next_seq).await
                    }
                    _ => futures::future::pending().await,
                }
            };
            // The pacer's release comes before the read: a read polled at a
            // wake-up that was the pacer's would find nothing.
            let read = select_biased! {
                _ = stopped => return Ok(()),
                _ = released.fuse() => continue,
                read = socket.read().fuse() => read.map_err(|e| e.to_string())?,
            };
            if read == 0 {
                return Err("closed by the server".to_owned());
            }
            let now = Instant::now();
            while let Some(line) = socket.next_line() {
                let line = line.map_err(|e| {
                    state.result.mismatches += 1;
                    format!("the server sent a {e}")
                })?;
                if line.is_empty() {
                    continue;
                }
                // Not an answer: why the server is about to close.
                if wire::is_error_or_notice(line) {
                    return Err(String::from_utf8_lossy(line).into_owned());
                }
                let echo = wire::reply_echo(line);
                if state.nudge_reply_owed && echo == Some(&b""[..]) {
                    state.nudge_reply_owed = false;
                    continue;
                }
                let Some((seq, written)) = state.in_flight.pop_front() else {
                    state.result.mismatches += 1;
                    continue;
                };
                expected.clear();
                self.message(&mut expected, seq);
                expected.pop(); // the newline
                // A server that answers per read, as the original Node server
                // does, echoes pipelined messages in one reply: the lines after
                // its first are the later messages, bare.
                let merged = echo.is_none() && line == &expected[..];
                state.result.merged += u64::from(merged);
                if echo != Some(&expected[..]) && !merged {
                    state.result.mismatches += 1;
                    continue;
                }
                // A message is written once released, so never before it was
                // due; `min` only irons out the schedule's rounding.
                let due = (state.schedule)
                    .map_or(written, |schedule| schedule.due(self.id, seq).min(written));
                let nanos = |since: Instant| now.duration_since(since).as_nanos() as u64;
                state.latencies.record(nanos(due), nanos(written));
                state.result.replies += 1;
                self.replies.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Appends message `seq` of this connection, padded to `size`, and `\n`:
    /// `<connection id hex>-<seq hex>-xxx…`. Cheap, since the bench must outpace
    /// the server it measures.
    fn message(&self, out: &mut Vec<u8>, seq: u64) {
        let start = out.len();
        out.extend_from_slice(self.prefix.as_bytes());
        push_hex(out, seq);
        out.push(b'-');
        let padding = self.config.size.saturating_sub(out.len() - start);
        out.resize(out.len() + padding, b'x');
        out.push(b'\n');
    }
}

/// Appends `n` in lowercase hex, without leading zeros.
fn push_hex(out: &mut Vec<u8>, n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1);
    for shift in (0..digits).rev() {
        out.push(DIGITS[((n >> (shift * 4)) & 0xf) as usize]);
    }
}

/// Reads lines until the greeting; with `nudge`, sends [`NUDGE`] if it is
/// slow to come. `Ok(true)` if it did: the reply to it is still to come.
/// `Err` says why no greeting came: the server's own `error: …` or
/// `notice: …` line (`error: server full …`, `error: this server speaks
/// TLS`), a TLS server's record, or the close.
async fn greeting(socket: &mut LineSocket, nudge: bool) -> Result<bool, String> {
    let greeting = wire::GREETING.strip_suffix(b"\n").unwrap_or(wire::GREETING);
    let mut nudged = false;
    let mut first_read = true;
    loop {
        while let Some(line) = socket.next_line() {
            let line = line.map_err(|e| format!("the server sent a {e} before its greeting"))?;
            if line == greeting {
                return Ok(nudged);
            }
            // Not the greeting: the server's reason to close, if it is one.
            if wire::is_error_or_notice(line) {
                return Err(String::from_utf8_lossy(line).into_owned());
            }
        }
        let read = if nudge && !nudged {
            // Dropped when the time is up, the read reads nothing.
            let Some(read) = within(GREETING_NUDGE, socket.read()).await else {
                socket.write_all(NUDGE).await.map_err(|e| e.to_string())?;
                nudged = true;
                continue;
            };
            read
        } else {
            socket.read().await
        };
        match read {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        // A TLS server's first bytes (rustls's alert to plain text) are a
        // record, not a line.
        if std::mem::take(&mut first_read) && socket.holds_tls_record() {
            return Err(TLS_SPOKEN.to_owned());
        }
    }
    Err(if nudged {
        "closed by the server, with no greeting, when sent plain text: a TLS server? (--tls)"
    } else {
        "closed by the server before its greeting"
    }
    .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_unique_padded_lines() {
        let worker = Worker {
            id: 0x1f,
            credits: None,
            source: None,
            prefix: "1f-".into(),
            config: Arc::new(BenchConfig {
                size: 16,
                ..BenchConfig::new("")
            }),
            replies: Arc::default(),
            latencies: Recorder::new(),
            finished: crate::rt::bounded(1).0,
        };
        let mut out = Vec::new();
        worker.message(&mut out, 0);
        worker.message(&mut out, 0xabc);
        worker.message(&mut out, u64::MAX);
        assert_eq!(
            out,
            b"1f-0-xxxxxxxxxxx\n1f-abc-xxxxxxxxx\n1f-ffffffffffffffff-\n".to_vec()
        );
        assert!(!out.starts_with(NUDGE), "a message is never the nudge");
    }
}
