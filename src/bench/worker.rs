//! One benchmark connection: connect, wait for the greeting, then keep
//! `--depth` messages in flight and check every reply against the message it
//! should echo (replies come in order, so against the oldest one in flight).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::Shared;
use futures::{FutureExt, select_biased};

use super::BenchConfig;
use super::pacer::Credits;
use crate::net::LineSocket;
use crate::rt::{Sender, within};
use crate::shutdown::Shutdown;
use crate::wire;

/// How long a connection may take to connect and be greeted.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens once, for every worker at the same moment: the start of the
/// measurement, when every connection has been greeted (or failed).
pub(super) type StartGate = Shared<futures::channel::oneshot::Receiver<()>>;

/// What one connection measured.
#[derive(Default)]
pub(super) struct WorkerResult {
    pub(super) latencies_ns: Vec<u64>,
    pub(super) mismatches: u64,
    /// Messages answered inside the reply to an earlier one.
    pub(super) merged: u64,
    pub(super) disconnected: bool,
}

/// One benchmark connection's task.
pub(super) struct Worker {
    /// With `--rate`: the messages the pacer has released to this connection.
    pub(super) credits: Option<Arc<Credits>>,
    /// `<id hex>-`, the start of every message on this connection.
    pub(super) prefix: String,
    pub(super) config: Arc<BenchConfig>,
    /// Replies so far, over every connection, for the progress bar.
    pub(super) replies: Arc<AtomicU64>,
}

impl Worker {
    /// Connects, reports to `ready` whether it was greeted, waits for `start`,
    /// and measures until `stop`.
    pub(super) async fn run(
        self,
        addr: SocketAddr,
        ready: Sender<Result<(), String>>,
        start: StartGate,
        stop: Shutdown,
    ) -> WorkerResult {
        let max_line = self.config.size + 256;
        let connected = within(CONNECT_TIMEOUT, async {
            let connect = LineSocket::connect(addr, max_line).await;
            let mut socket = connect.map_err(|e| e.to_string())?;
            if let Some(tls) = &self.config.tls {
                let shaken = Box::pin(socket.connect_tls(tls)).await;
                shaken.map_err(|e| format!("TLS: {}", crate::tls::failure_reason(&e)))?;
            }
            greeting(&mut socket).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(socket)
        })
        .await;
        let mut socket = match connected.unwrap_or_else(|| Err("timed out".to_owned())) {
            Ok(socket) => socket,
            Err(reason) => {
                // The coordinator counts every answer; it only stops listening
                // once all senders are gone.
                let _ = ready.send(Err(reason)).await;
                return WorkerResult::default();
            }
        };
        // As above: an answer nobody waits for any more needs no handling.
        let _ = ready.send(Ok(())).await;
        drop(ready);
        select_biased! {
            _ = stop.wait().fuse() => return WorkerResult::default(),
            // The coordinator opens the gate or drops it; either way, go.
            _ = start.fuse() => {}
        }
        if self.config.depth == 0 {
            stop.wait().await;
            return WorkerResult::default();
        }
        let mut result = WorkerResult::default();
        match self.exchange(&mut socket, &stop, &mut result).await {
            Ok(true) => {}
            Ok(false) | Err(_) => result.disconnected = !stop.is_triggered(),
        }
        result
    }

    /// Keeps up to `depth` messages in flight until `stop`; `Ok(false)` if the
    /// server closed the connection.
    async fn exchange(
        &self,
        socket: &mut LineSocket,
        stop: &Shutdown,
        result: &mut WorkerResult,
    ) -> io::Result<bool> {
        let depth = self.config.depth;
        let mut stopped = pin!(stop.wait().fuse());
        let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::with_capacity(depth);
        let mut out = Vec::new();
        let mut expected = Vec::new();
        let mut next_seq = 0;
        loop {
            // Fill the free slots: all of them, or as many as the pacer released.
            let now = Instant::now();
            while in_flight.len() < depth
                && self.credits.as_ref().is_none_or(|c| c.beyond(next_seq))
            {
                self.message(&mut out, next_seq);
                in_flight.push_back((next_seq, now));
                next_seq += 1;
            }
            if !out.is_empty() {
                socket.write_all(&out).await?;
                out.clear();
            }
            let released = async {
                match &self.credits {
                    Some(credits) if in_flight.len() < depth => {
                        credits.released_beyond(next_seq).await
                    }
                    _ => futures::future::pending().await,
                }
            };
            // The pacer's release comes before the read: a read polled at a
            // wake-up that was the pacer's would find nothing.
            let read = select_biased! {
                _ = stopped => return Ok(true),
                _ = released.fuse() => continue,
                read = socket.read().fuse() => read?,
            };
            if read == 0 {
                return Ok(false);
            }
            let now = Instant::now();
            while let Some(line) = socket.next_line() {
                let Ok(line) = line else {
                    result.mismatches += 1;
                    return Ok(false);
                };
                if line.is_empty() {
                    continue;
                }
                let echo = wire::reply_echo(line);
                let Some((seq, sent_at)) = in_flight.pop_front() else {
                    result.mismatches += 1;
                    continue;
                };
                expected.clear();
                self.message(&mut expected, seq);
                expected.pop(); // the newline
                // A server that answers per read, as the original Node server
                // does, echoes pipelined messages in one reply: the lines after
                // its first are the later messages, bare.
                let merged = echo.is_none() && line == &expected[..];
                result.merged += u64::from(merged);
                if echo != Some(&expected[..]) && !merged {
                    result.mismatches += 1;
                } else {
                    result
                        .latencies_ns
                        .push(now.duration_since(sent_at).as_nanos() as u64);
                    self.replies.fetch_add(1, Ordering::Relaxed);
                }
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

/// Reads lines until the greeting.
async fn greeting(socket: &mut LineSocket) -> io::Result<()> {
    let greeting = wire::GREETING.strip_suffix(b"\n").unwrap_or(wire::GREETING);
    loop {
        while let Some(line) = socket.next_line() {
            if line.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))? == greeting {
                return Ok(());
            }
        }
        if socket.read().await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_unique_padded_lines() {
        let worker = Worker {
            credits: None,
            prefix: "1f-".into(),
            config: Arc::new(BenchConfig {
                size: 16,
                ..BenchConfig::new("")
            }),
            replies: Arc::default(),
        };
        let mut out = Vec::new();
        worker.message(&mut out, 0);
        worker.message(&mut out, 0xabc);
        worker.message(&mut out, u64::MAX);
        assert_eq!(
            out,
            b"1f-0-xxxxxxxxxxx\n1f-abc-xxxxxxxxx\n1f-ffffffffffffffff-\n".to_vec()
        );
    }
}
