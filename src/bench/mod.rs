//! The load generator behind `duplex --role bench`.
//!
//! Opens `clients` connections (plain or TLS) at a bounded rate, waits for
//! every greeting (and reports how fast connections, or TLS handshakes, came),
//! then keeps `depth` messages of `size` bytes in flight on each connection for
//! `duration`: as fast as replies come back (closed loop), or, with `rate`, at
//! a fixed offered load, so that what a reply costs the server can be compared
//! between servers under the very same load. Every reply is checked against
//! the message it should echo (replies come in order, so against the oldest
//! one in flight); mismatches, failed connects and dropped connections are
//! counted and reported. It also reports how busy each CPU was, and with a
//! server PID, the server's CPU time per reply. Works against any server
//! speaking the protocol, including the original Node server (empty lines,
//! which it adds after each reply, are skipped).
//!
//! This is a measuring tool, not part of the actor system: each connection is
//! a plain task (a [`worker`]), started here and merged here at the end; the
//! [`pacer`] releases messages for `--rate`; [`process`] reads `/proc`;
//! [`report`] prints the result.

mod pacer;
mod process;
mod report;
mod worker;

use std::io::{self, IsTerminal};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::{FutureExt, select_biased};

use crate::rt::{self, bounded, sleep, spawn};
use crate::shutdown::{self, Shutdown};
use crate::tls::ClientTls;
use pacer::{Credits, release};
use process::{cpu_busy_pct, cpu_idle_ticks, process_cpu_ns};
use report::percentile_us;
use worker::Worker;

pub use process::rss_kib;
pub use report::BenchReport;

/// Everything a benchmark run is tuned with; [`BenchConfig::new`] gives the
/// CLI's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchConfig {
    /// The server to load, `host:port` (`--addr`).
    pub addr: String,
    /// Connections to open (`--clients`).
    pub clients: usize,
    /// How long to measure, once every connection is greeted (`--duration`).
    pub duration: Duration,
    /// Messages in flight per connection; 0 holds connections idle (`--depth`).
    pub depth: usize,
    /// Bytes per message, at least the length of its unique id (`--size`).
    pub size: usize,
    /// Offered load in messages per second over all connections, released
    /// round robin (each connection still keeps at most `depth` in flight);
    /// `None` sends the next message as soon as a reply frees a slot
    /// (`--rate`).
    pub rate: Option<f64>,
    /// New connections per second while connecting (`--connect-rate`).
    pub connect_rate: u32,
    /// Show a progress bar (only drawn on a terminal; off with `--json`).
    pub progress: bool,
    /// A local server process to read memory and CPU time from
    /// (`--server-pid`).
    pub server_pid: Option<u32>,
    /// Set: every connection speaks TLS (`--tls`, `--tls-ca`).
    pub tls: Option<ClientTls>,
}

impl BenchConfig {
    /// The CLI's defaults, against `addr`.
    pub fn new(addr: impl Into<String>) -> BenchConfig {
        BenchConfig {
            addr: addr.into(),
            clients: 50,
            duration: Duration::from_secs(10),
            depth: 1,
            size: 16,
            rate: None,
            connect_rate: 2000,
            progress: true,
            server_pid: None,
            tls: None,
        }
    }
}

/// Runs the benchmark; stops early if `interrupt` fires.
pub async fn run(config: BenchConfig, interrupt: Shutdown) -> io::Result<BenchReport> {
    let addr = resolve(&config.addr).await?;
    let rss_before = config.server_pid.and_then(rss_kib);
    let server_cpu_at_start = config.server_pid.and_then(process_cpu_ns);
    let (open_start, start) = oneshot::channel::<()>();
    let start = start.shared();
    let (stop_trigger, stop) = shutdown::channel();
    let (ready_sender, ready) = bounded(config.clients.max(1));
    let replies = Arc::new(AtomicU64::new(0));
    let config = Arc::new(config);
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
        let worker = Worker {
            credits: credits.get(id).cloned(),
            prefix: format!("{id:x}-"),
            config: config.clone(),
            replies: replies.clone(),
        };
        let ready = ready_sender.clone();
        tasks.push(spawn(worker.run(addr, ready, start.clone(), stop.clone())));
    }
    drop(ready_sender);
    let mut connected = 0;
    let mut connect_failures = 0;
    let mut connect_errors = std::collections::BTreeMap::new();
    while let Ok(greeted) = ready.recv().await {
        match greeted {
            Ok(()) => connected += 1,
            Err(reason) => {
                connect_failures += 1;
                *connect_errors.entry(reason).or_insert(0) += 1;
            }
        }
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    let server_connect_cpu_ns = server_cpu_at_start
        .zip(config.server_pid.and_then(process_cpu_ns))
        .map(|(before, after)| after.saturating_sub(before));
    let rss_connected = config.server_pid.and_then(rss_kib);

    let progress = config
        .progress
        .then(|| progress_bar(config.duration))
        .flatten();
    let cpu_before = cpu_idle_ticks();
    let server_cpu_before = config.server_pid.and_then(process_cpu_ns);
    // Every worker waits on the gate; none has gone away without answering.
    let _ = open_start.send(());
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
        connect_errors,
        connect_seconds,
        server_cpu_us_per_connect: server_connect_cpu_ns
            .filter(|_| connected > 0)
            .map(|ns| ns as f64 / 1000.0 / connected as f64),
        tls: config.tls.is_some(),
        seconds,
        server_rss_kib: rss_before.zip(rss_connected),
        offered_rate: config.rate,
        cpu_busy_pct,
        ..BenchReport::default()
    };
    for task in tasks {
        let result = task.await;
        report.mismatches += result.mismatches;
        report.merged += result.merged;
        report.disconnects += u64::from(result.disconnected);
        latencies.extend(result.latencies_ns);
    }
    report.replies = latencies.len() as u64;
    report.rate = report.replies as f64 / seconds;
    report.server_cpu_us_per_reply = server_cpu_ns
        .filter(|_| report.replies > 0)
        .map(|ns| ns as f64 / 1000.0 / report.replies as f64);
    latencies.sort_unstable();
    report.p50_us = percentile_us(&latencies, 50.0);
    report.p99_us = percentile_us(&latencies, 99.0);
    report.p999_us = percentile_us(&latencies, 99.9);
    report.max_us = percentile_us(&latencies, 100.0);
    Ok(report)
}

async fn resolve(addr: &str) -> io::Result<SocketAddr> {
    let resolved = rt::resolve(addr).await;
    let resolved =
        resolved.map_err(|e| io::Error::new(e.kind(), format!("cannot resolve {addr}: {e}")))?;
    resolved.into_iter().next().ok_or_else(|| {
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
