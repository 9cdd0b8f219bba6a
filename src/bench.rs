//! The load generator behind `duplex --role bench`.
//!
//! Opens `clients` connections at a bounded rate, waits for every greeting,
//! then keeps `depth` messages of `size` bytes in flight on each connection for
//! `duration`: as fast as replies come back (closed loop), or, with `rate`, at
//! a fixed offered load, so that what a reply costs the server can be compared
//! between servers under the very same load. Every reply is checked against
//! the message it should echo (replies come in order, so against the oldest
//! one in flight); mismatches, failed connects and dropped connections are
//! counted and reported. It also reports how busy each CPU was, and with a
//! server PID, the server's CPU time per reply. Works
//! against any server speaking the protocol, including the original Node
//! server (empty lines, which it adds after each reply, are skipped).
//!
//! This is a measuring tool, not part of the actor system: each connection is
//! a plain task, and results are merged at the end.

use std::collections::VecDeque;
use std::io::{self, IsTerminal};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::future::poll_fn;
use futures::task::AtomicWaker;
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt, select_biased};

use crate::rt::{ReadLoop, Socket, ToSocketAddrs, bounded, sleep, sleep_until, spawn, within};
use crate::shutdown::{self, Shutdown};
use crate::wire::{self, Framer};

/// How long a connection may take to connect and be greeted.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a benchmark run is tuned with.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub addr: String,
    pub clients: usize,
    pub duration: Duration,
    /// Messages in flight per connection; 0 holds connections idle.
    pub depth: usize,
    /// Bytes per message (at least the length of its unique id).
    pub size: usize,
    /// Offered load in messages per second over all connections, released
    /// round robin (each connection still keeps at most `depth` in flight);
    /// `None` sends the next message as soon as a reply frees a slot.
    pub rate: Option<f64>,
    /// New connections per second while connecting.
    pub connect_rate: u32,
    /// Show a progress bar (only drawn on a terminal).
    pub progress: bool,
    /// A local server process to sample resident memory from.
    pub server_pid: Option<u32>,
}

/// What a run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BenchReport {
    pub clients: usize,
    pub depth: usize,
    pub size: usize,
    pub connected: usize,
    pub connect_failures: u64,
    pub disconnects: u64,
    pub mismatches: u64,
    pub replies: u64,
    pub seconds: f64,
    pub rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// Server RSS before connecting and with every client connected, in KiB.
    pub server_rss_kib: Option<(u64, u64)>,
    /// The offered load, if paced.
    pub offered_rate: Option<f64>,
    /// How busy each CPU of the machine was while measuring, in percent
    /// (Linux only): shows whether the server or the load generator was the
    /// bottleneck.
    pub cpu_busy_pct: Vec<f64>,
    /// CPU time the server process ran per reply while measuring, in
    /// microseconds (with `server_pid`, Linux only). Interrupt-time network
    /// work done on its behalf is not in it.
    pub server_cpu_us_per_reply: Option<f64>,
}

impl BenchReport {
    /// Mismatches, failed connects and dropped connections.
    pub fn errors(&self) -> u64 {
        self.mismatches + self.connect_failures + self.disconnects
    }

    /// One JSON object, for scripts.
    pub fn to_json(&self) -> serde_json::Value {
        let (rss_before, rss_connected) = self.server_rss_kib.unzip();
        serde_json::json!({
            "clients": self.clients,
            "depth": self.depth,
            "size": self.size,
            "connected": self.connected,
            "seconds": self.seconds,
            "replies": self.replies,
            "rate": self.rate,
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "p999_us": self.p999_us,
            "max_us": self.max_us,
            "errors": self.errors(),
            "mismatches": self.mismatches,
            "connect_failures": self.connect_failures,
            "disconnects": self.disconnects,
            "server_rss_before_kib": rss_before,
            "server_rss_connected_kib": rss_connected,
            "offered_rate": self.offered_rate,
            "cpu_busy_pct": self.cpu_busy_pct,
            "server_cpu_us_per_reply": self.server_cpu_us_per_reply,
        })
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} clients ({} connected), depth {}, {}-byte messages, {:.1} s",
            self.clients, self.connected, self.depth, self.size, self.seconds
        )?;
        write!(f, "replies      {} ({:.0}/s)", self.replies, self.rate)?;
        match self.offered_rate {
            Some(offered) => writeln!(f, ", {offered:.0}/s offered")?,
            None => writeln!(f)?,
        }
        writeln!(
            f,
            "latency      p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us",
            self.p50_us, self.p99_us, self.p999_us, self.max_us
        )?;
        if let Some((before, connected)) = self.server_rss_kib {
            let per_client =
                (connected.saturating_sub(before) * 1024) as f64 / self.connected.max(1) as f64;
            writeln!(
                f,
                "server RSS   {before} KiB before, {connected} KiB connected ({per_client:.0} B per client)"
            )?;
        }
        if !self.cpu_busy_pct.is_empty() {
            let cpus: Vec<String> = (self.cpu_busy_pct.iter().enumerate())
                .map(|(cpu, busy)| format!("cpu{cpu} {busy:.0}%"))
                .collect();
            writeln!(f, "CPU busy     {}", cpus.join(", "))?;
        }
        if let Some(us) = self.server_cpu_us_per_reply {
            writeln!(f, "server CPU   {us:.2} us per reply")?;
        }
        write!(
            f,
            "errors       {} ({} mismatches, {} failed connects, {} dropped connections)",
            self.errors(),
            self.mismatches,
            self.connect_failures,
            self.disconnects
        )
    }
}

/// What one connection measured.
#[derive(Default)]
struct ConnectionResult {
    latencies_ns: Vec<u64>,
    mismatches: u64,
    disconnected: bool,
}

/// Runs the benchmark; stops early if `interrupt` fires.
pub async fn run(config: BenchConfig, interrupt: Shutdown) -> io::Result<BenchReport> {
    let addr = resolve(&config.addr).await?;
    let rss_before = config.server_pid.and_then(rss_kib);
    let (go_trigger, go) = shutdown::channel();
    let (stop_trigger, stop) = shutdown::channel();
    let (ready_sender, ready) = bounded(config.clients.max(1));
    let replies = Arc::new(AtomicU64::new(0));
    let pace = Duration::from_secs_f64(1.0 / f64::from(config.connect_rate.max(1)));
    let credits: Vec<Arc<Credits>> = match config.rate {
        Some(_) => (0..config.clients).map(|_| Arc::default()).collect(),
        None => Vec::new(),
    };

    let mut tasks = Vec::with_capacity(config.clients);
    let started = Instant::now();
    for id in 0..config.clients {
        if interrupt.is_triggered() {
            break;
        }
        // Bounded connect rate: measure holding capacity, not a SYN burst.
        let due = started + pace * id as u32;
        sleep(due.saturating_duration_since(Instant::now())).await;
        let connection = Connection {
            credits: credits.get(id).cloned(),
            prefix: format!("{id:x}-"),
            config: config.clone(),
            replies: replies.clone(),
        };
        let ready = ready_sender.clone();
        let (go, stop) = (go.clone(), stop.clone());
        tasks.push(spawn(
            async move { connection.run(addr, ready, go, stop).await },
        ));
    }
    drop(ready_sender);
    let mut connected = 0;
    let mut connect_failures = 0;
    while let Ok(greeted) = ready.recv().await {
        if greeted {
            connected += 1;
        } else {
            connect_failures += 1;
        }
    }
    let rss_connected = config.server_pid.and_then(rss_kib);

    let progress = config
        .progress
        .then(|| progress_bar(config.duration))
        .flatten();
    let cpu_before = cpu_idle_ticks();
    let server_cpu_before = config.server_pid.and_then(process_cpu_ns);
    go_trigger.trigger();
    let measuring = Instant::now();
    let pacer = config
        .rate
        .map(|rate| spawn(release(credits, rate, measuring, stop.clone())));
    let deadline = measuring + config.duration;
    while Instant::now() < deadline && !interrupt.is_triggered() {
        let tick = Duration::from_millis(100).min(deadline - Instant::now());
        select_biased! {
            _ = interrupt.wait().fuse() => {}
            _ = sleep(tick).fuse() => {}
        }
        if let Some(bar) = &progress {
            let done = replies.load(Ordering::Relaxed);
            let rate = done as f64 / measuring.elapsed().as_secs_f64();
            bar.set_position(measuring.elapsed().as_millis() as u64);
            bar.set_message(format!("{done} replies, {rate:.0}/s"));
        }
    }
    stop_trigger.trigger();
    if let Some(pacer) = pacer {
        pacer.await;
    }
    let seconds = measuring.elapsed().as_secs_f64();
    let cpu_busy_pct = cpu_busy_pct(&cpu_before, &cpu_idle_ticks(), measuring.elapsed());
    let server_cpu_ns = server_cpu_before
        .zip(config.server_pid.and_then(process_cpu_ns))
        .map(|(before, after)| after.saturating_sub(before));
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }

    let mut latencies = Vec::new();
    let mut report = BenchReport {
        clients: config.clients,
        depth: config.depth,
        size: config.size,
        connected,
        connect_failures,
        seconds,
        server_rss_kib: rss_before.zip(rss_connected),
        offered_rate: config.rate,
        cpu_busy_pct,
        ..BenchReport::default()
    };
    for task in tasks {
        let result = task.await;
        report.mismatches += result.mismatches;
        report.disconnects += u64::from(result.disconnected);
        latencies.extend(result.latencies_ns);
    }
    report.replies = latencies.len() as u64;
    report.rate = report.replies as f64 / seconds;
    report.server_cpu_us_per_reply = server_cpu_ns
        .filter(|_| report.replies > 0)
        .map(|ns| ns as f64 / 1000.0 / report.replies as f64);
    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
        latencies[rank.clamp(1, latencies.len()) - 1] as f64 / 1000.0
    };
    report.p50_us = percentile(50.0);
    report.p99_us = percentile(99.0);
    report.p999_us = percentile(99.9);
    report.max_us = percentile(100.0);
    Ok(report)
}

async fn resolve(addr: &str) -> io::Result<SocketAddr> {
    addr.to_socket_addrs().await?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{addr} resolves to no address"),
        )
    })
}

fn progress_bar(duration: Duration) -> Option<indicatif::ProgressBar> {
    if !io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(duration.as_millis() as u64);
    let style = indicatif::ProgressStyle::with_template("{bar:40} {elapsed}/{duration} {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}

/// Resident memory of a local process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// How a paced run tells a connection it may send: the pacer counts the
/// messages it has released to the connection and wakes it.
#[derive(Default)]
struct Credits {
    released: AtomicU64,
    waker: AtomicWaker,
}

impl Credits {
    /// Whether more than `sent` messages have been released.
    fn beyond(&self, sent: u64) -> bool {
        self.released.load(Ordering::Acquire) > sent
    }

    /// Completes once more than `sent` messages have been released.
    async fn released_beyond(&self, sent: u64) {
        poll_fn(|cx| {
            if self.beyond(sent) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // A release between the check and the registration would be lost.
            if self.beyond(sent) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// How often the pacer releases messages. One timer for the whole run, not
/// one per message: a timer per message would cost the bench more than the
/// messages themselves.
const PACER_TICK: Duration = Duration::from_micros(250);

/// Releases `rate` messages per second from `started`, round robin over
/// `credits`, until `stop`.
async fn release(credits: Vec<Arc<Credits>>, rate: f64, started: Instant, stop: Shutdown) {
    let mut released = 0;
    let mut stopped = pin!(stop.wait().fuse());
    loop {
        let elapsed = started.elapsed();
        let due = (elapsed.as_secs_f64() * rate) as u64;
        for message in released..due {
            let credits = &credits[(message % credits.len() as u64) as usize];
            credits.released.fetch_add(1, Ordering::Release);
            credits.waker.wake();
        }
        released = due;
        let ticks = elapsed.as_nanos() / PACER_TICK.as_nanos() + 1;
        let next_tick = started + Duration::from_nanos((ticks * PACER_TICK.as_nanos()) as u64);
        select_biased! {
            _ = stopped => return,
            _ = sleep_until(Some(next_tick)).fuse() => {}
        }
    }
}

/// Idle time of each CPU so far, in clock ticks, from `/proc/stat`; empty
/// where there is none. (Only idle time is trusted: on a virtual machine the
/// busy fields can add up to more than the wall clock.)
fn cpu_idle_ticks() -> Vec<u64> {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    stat.lines()
        .filter(|line| line.starts_with("cpu") && !line.starts_with("cpu "))
        .map(|line| {
            // cpuN user nice system idle iowait ...
            (line.split_whitespace().skip(4).take(2))
                .filter_map(|field| field.parse::<u64>().ok())
                .sum()
        })
        .collect()
}

/// Percent of `wall` each CPU was not idle, between two [`cpu_idle_ticks`].
fn cpu_busy_pct(before: &[u64], after: &[u64], wall: Duration) -> Vec<f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let wall_ticks = wall.as_secs_f64() * ticks_per_second;
    (before.iter().zip(after))
        .map(|(idle0, idle1)| {
            let idle = idle1.saturating_sub(*idle0) as f64;
            (100.0 * (1.0 - idle / wall_ticks)).clamp(0.0, 100.0)
        })
        .collect()
}

/// CPU time every thread of a local process has run so far, in nanoseconds,
/// from the scheduler's own clock (`/proc/PID/task/*/schedstat`), which is
/// exact where the tick-sampled times in `/proc/PID/stat` are not.
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let schedstat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += schedstat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// One benchmark connection.
struct Connection {
    /// With `--rate`: the messages the pacer has released to this connection.
    credits: Option<Arc<Credits>>,
    /// `<id hex>-`, the start of every message on this connection.
    prefix: String,
    config: BenchConfig,
    replies: Arc<AtomicU64>,
}

impl Connection {
    async fn run(
        self,
        addr: SocketAddr,
        ready: crate::rt::Sender<bool>,
        go: Shutdown,
        stop: Shutdown,
    ) -> ConnectionResult {
        let mut framer = Framer::new(self.config.size + 256);
        let connected = within(CONNECT_TIMEOUT, async {
            let stream = Socket::connect(addr).await?;
            greeting(&stream, &mut framer).await?;
            Ok::<_, io::Error>(stream)
        })
        .await;
        let stream = match connected {
            Some(Ok(stream)) => stream,
            _ => {
                // The coordinator counts every answer; it only stops listening
                // once all senders are gone.
                let _ = ready.send(false).await;
                return ConnectionResult::default();
            }
        };
        let _ = ready.send(true).await;
        drop(ready);
        select_biased! {
            _ = stop.wait().fuse() => return ConnectionResult::default(),
            _ = go.wait().fuse() => {}
        }
        if self.config.depth == 0 {
            stop.wait().await;
            return ConnectionResult::default();
        }
        let mut result = ConnectionResult::default();
        match self
            .exchange(&stream, &mut framer, &stop, &mut result)
            .await
        {
            Ok(true) => {}
            Ok(false) | Err(_) => result.disconnected = !stop.is_triggered(),
        }
        result
    }

    /// Keeps up to `depth` messages in flight until `stop`; `Ok(false)` if the
    /// server closed the connection.
    async fn exchange(
        &self,
        stream: &Socket,
        framer: &mut Framer,
        stop: &Shutdown,
        result: &mut ConnectionResult,
    ) -> io::Result<bool> {
        let depth = self.config.depth;
        let mut stopped = pin!(stop.wait().fuse());
        let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::with_capacity(depth);
        let mut out = Vec::new();
        let mut expected = Vec::new();
        let mut next_seq = 0;
        let mut writer = stream;
        // Reads wait for input after emptying the socket, as a session's do:
        // the bench must cost less per message than the server it measures,
        // and trying first cost it two reads that returned nothing per
        // message, of five system calls.
        let mut reads = ReadLoop::default();
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
                writer.write_all(&out).await?;
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
                read = reads.read(stream, framer.read_buf()).fuse() => read?,
            };
            if read == 0 {
                return Ok(false);
            }
            framer.filled(read);
            let now = Instant::now();
            while let Some(line) = framer.next_line() {
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
                if echo != Some(&expected[..]) {
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

/// Reads lines until the greeting (`Hello`).
async fn greeting(stream: &Socket, framer: &mut Framer) -> io::Result<()> {
    let mut reader = stream;
    loop {
        while let Some(line) = framer.next_line() {
            if line.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))? == b"Hello" {
                return Ok(());
            }
        }
        let n = reader.read(framer.read_buf()).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        framer.filled(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_unique_padded_lines() {
        let connection = Connection {
            credits: None,
            prefix: "1f-".into(),
            config: BenchConfig {
                addr: String::new(),
                clients: 1,
                duration: Duration::from_secs(1),
                depth: 1,
                size: 16,
                rate: None,
                connect_rate: 1,
                progress: false,
                server_pid: None,
            },
            replies: Arc::default(),
        };
        let mut out = Vec::new();
        connection.message(&mut out, 0);
        connection.message(&mut out, 0xabc);
        connection.message(&mut out, u64::MAX);
        assert_eq!(
            out,
            b"1f-0-xxxxxxxxxxx\n1f-abc-xxxxxxxxx\n1f-ffffffffffffffff-\n".to_vec()
        );
    }
}
