//! The load generator behind `duplex --role bench`.
//!
//! Opens `clients` connections (plain or TLS) at a bounded rate, waits for
//! every greeting (and reports how fast connections, or TLS handshakes, came),
//! then keeps `depth` messages of `size` bytes in flight on each connection for
//! `duration`: as fast as replies come back (closed loop), or, with `rate`, at
//! a fixed offered load, so that what a reply costs the server can be compared
//! between servers under the very same load. With `once`, every connection
//! sends one message instead, and the run ends when every reply is in. Every
//! reply is checked against the message it should echo (replies come in
//! order, so against the oldest one in flight); mismatches, failed connects
//! and dropped connections are counted and reported. Latency is measured from
//! when each message was due (with `rate`; not from its write, which a
//! stalled server delays) and kept in histograms, in bounded memory. It also
//! reports how busy each CPU was, its own CPU time per reply, and with a
//! server PID, the server's. Works against any server speaking the protocol,
//! including the original Node server (empty lines, which it adds after each
//! reply, are skipped).
//!
//! This is a measuring tool, not part of the actor system: each connection is
//! a plain task (a `worker`), started here and merged here at the end; the
//! `pacer` releases messages for `--rate`; `latency` keeps the histograms;
//! `source` connects from `--source-addrs`; `process` reads `/proc`;
//! `report` prints the result. (Private modules: plain names, since the
//! public docs cannot link to them.)

mod config;
mod latency;
mod pacer;
mod process;
mod report;
mod source;
mod worker;

use std::collections::BTreeMap;
use std::io::{self, IsTerminal};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::{FutureExt, select_biased};

use crate::rt::{self, Cores, Receiver, Task, bounded, sleep, spawn};
use crate::shutdown::{self, Shutdown, ShutdownTrigger};
use latency::Recorder;
use pacer::{Credits, Schedule, release};
use process::{cpu_busy_pct, cpu_idle_ticks, process_cpu_ns};
use worker::{Greeted, Worker, WorkerResult};

pub use config::BenchConfig;
pub use latency::Percentiles;
pub use process::rss_kib;
pub use report::{BenchReport, LatencyFrom};
pub use source::SourceAddrs;

/// Runs the benchmark; stops early if `interrupt` fires.
pub async fn run(config: BenchConfig, interrupt: Shutdown) -> io::Result<BenchReport> {
    let addr = target(&config).await?;
    let config = Arc::new(config);
    let replies = Arc::new(AtomicU64::new(0));
    let latencies = Recorder::new();
    let cores = Cores::start(config.threads)?;
    let Crew {
        tasks,
        connects,
        controls,
    } = connect(addr, &config, &cores, &replies, &latencies, &interrupt).await;
    let measured = measure(&config, controls, connects.connected, &replies, &interrupt).await;
    Ok(merge(&config, connects, tasks, measured, latencies).await)
}

/// The server's address, checked against `--source-addrs`.
async fn target(config: &BenchConfig) -> io::Result<SocketAddr> {
    let addr = resolve(&config.addr).await?;
    if let Some(ip) = (config.source_addrs.as_ref()).and_then(|sources| sources.mismatch(addr)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "source address {ip} cannot reach {addr}: {} resolved to an address of the other family",
                config.addr
            ),
        ));
    }
    Ok(addr)
}

/// The started workers, and how their connects went.
struct Crew {
    tasks: Vec<Task<WorkerResult>>,
    connects: Connects,
    controls: Controls,
}

/// The run's ends of what every worker waits on.
struct Controls {
    /// Opens the gate every greeted worker waits at, with the moment
    /// measuring starts.
    open_start: oneshot::Sender<Instant>,
    /// Stops every worker, and the pacer.
    stop_trigger: ShutdownTrigger,
    stop: Shutdown,
    /// Told once by each worker that has done what it came to do.
    finished: Receiver<()>,
    /// With `rate`: what the pacer releases to each worker.
    credits: Vec<Arc<Credits>>,
}

/// Starts one worker per connection at `connect_rate` (no more once
/// `interrupt` fires) and waits until each has been greeted or has failed;
/// reads the server's memory and CPU time before and after.
async fn connect(
    addr: SocketAddr,
    config: &Arc<BenchConfig>,
    cores: &Cores,
    replies: &Arc<AtomicU64>,
    latencies: &Arc<Recorder>,
    interrupt: &Shutdown,
) -> Crew {
    let rss_before = config.server_pid.and_then(rss_kib);
    let server_cpu_at_start = config.server_pid.and_then(process_cpu_ns);
    let (open_start, start) = oneshot::channel::<Instant>();
    let start = start.shared();
    let (stop_trigger, stop) = shutdown::channel();
    let (ready_sender, ready) = bounded(config.clients.max(1));
    let (finished_sender, finished) = bounded(config.clients.max(1));
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
            id,
            credits: credits.get(id).cloned(),
            source: (config.source_addrs.as_ref()).and_then(|s| s.for_connection(id)),
            prefix: format!("{id:x}-"),
            config: config.clone(),
            replies: replies.clone(),
            latencies: latencies.clone(),
            finished: finished_sender.clone(),
        };
        let ready = ready_sender.clone();
        // Each core drives its share of the connections.
        let run = worker.run(addr, ready, start.clone(), stop.clone());
        tasks.push(cores.spawn(run));
    }
    drop((ready_sender, finished_sender));
    let mut connects = Connects::default();
    while let Ok(greeted) = ready.recv().await {
        connects.count(greeted);
    }
    connects.seconds = started.elapsed().as_secs_f64();
    connects.server_cpu_ns = server_cpu_at_start
        .zip(config.server_pid.and_then(process_cpu_ns))
        .map(|(before, after)| after.saturating_sub(before));
    connects.server_rss_kib = rss_before.zip(config.server_pid.and_then(rss_kib));
    let controls = Controls {
        open_start,
        stop_trigger,
        stop,
        finished,
        credits,
    };
    Crew {
        tasks,
        connects,
        controls,
    }
}

/// What the measurement read, besides what the workers counted.
struct Measured {
    seconds: f64,
    cpu_busy_pct: Vec<f64>,
    server_cpu_ns: Option<u64>,
    bench_cpu_ns: Option<u64>,
    /// Every connection still open, its traffic done.
    server_rss_end_kib: Option<u64>,
}

/// Opens the gate, releases messages at `rate` if set, and lets the workers
/// run until [`wait_until_done`]; then stops them. Reads the machine's and the
/// processes' CPU time around it.
async fn measure(
    config: &BenchConfig,
    controls: Controls,
    connected: usize,
    replies: &AtomicU64,
    interrupt: &Shutdown,
) -> Measured {
    let progress = config
        .progress
        .then(|| progress_bar(config.duration))
        .flatten();
    let cpu_before = cpu_idle_ticks();
    let server_cpu_before = config.server_pid.and_then(process_cpu_ns);
    let bench_cpu_before = process_cpu_ns(std::process::id());
    let measuring = Instant::now();
    // Every worker waits on the gate; none has gone away without answering.
    let _ = controls.open_start.send(measuring);
    let pacer = config.rate.map(|rate| {
        let schedule = Schedule::new(measuring, rate, config.clients);
        spawn(release(controls.credits, schedule, controls.stop.clone()))
    });
    let deadline = measuring + config.duration;
    wait_until_done(deadline, &controls.finished, connected, interrupt, || {
        if let Some(bar) = &progress {
            let replied = replies.load(Ordering::Relaxed);
            let rate = replied as f64 / measuring.elapsed().as_secs_f64();
            bar.set_position(measuring.elapsed().as_millis() as u64);
            bar.set_message(format!("{replied} replies, {rate:.0}/s"));
        }
    })
    .await;
    // Before the workers stop: every connection is still open, its traffic done.
    let server_rss_end_kib = config.server_pid.and_then(rss_kib);
    controls.stop_trigger.trigger();
    if let Some(pacer) = pacer {
        pacer.await;
    }
    let seconds = measuring.elapsed().as_secs_f64();
    let cpu_busy_pct = cpu_busy_pct(&cpu_before, &cpu_idle_ticks(), measuring.elapsed());
    let cpu_since = |pid: Option<u32>, before: Option<u64>| {
        before
            .zip(pid.and_then(process_cpu_ns))
            .map(|(before, after)| after.saturating_sub(before))
    };
    let server_cpu_ns = cpu_since(config.server_pid, server_cpu_before);
    let bench_cpu_ns = cpu_since(Some(std::process::id()), bench_cpu_before);
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    Measured {
        seconds,
        cpu_busy_pct,
        server_cpu_ns,
        bench_cpu_ns,
        server_rss_end_kib,
    }
}

/// Waits for `deadline`, `interrupt`, or every connection done (with
/// `--once`, answered; otherwise dropped): no more to measure. Calls
/// `progress` every [`PROGRESS_TICK`].
async fn wait_until_done(
    deadline: Instant,
    finished: &Receiver<()>,
    connected: usize,
    interrupt: &Shutdown,
    progress: impl Fn(),
) {
    let mut done = 0;
    while Instant::now() < deadline && !interrupt.is_triggered() && done < connected {
        let tick = PROGRESS_TICK.min(deadline - Instant::now());
        select_biased! {
            _ = interrupt.wait().fuse() => {}
            one = finished.recv().fuse() => match one {
                Ok(()) => done += 1,
                // Every worker has returned: each told first.
                Err(_) => done = connected,
            },
            _ = sleep(tick).fuse() => {}
        }
        progress();
    }
}

/// Joins every worker and puts the report together.
async fn merge(
    config: &BenchConfig,
    connects: Connects,
    tasks: Vec<Task<WorkerResult>>,
    measured: Measured,
    latencies: Arc<Recorder>,
) -> BenchReport {
    let connected = connects.connected;
    let seconds = measured.seconds;
    let mut report = BenchReport {
        clients: config.clients,
        depth: config.depth,
        size: config.size,
        once: config.once,
        connected,
        connect_failures: connects.failures,
        connect_errors: connects.errors,
        source_addrs: connects.per_source,
        connect_seconds: connects.seconds,
        server_cpu_us_per_connect: connects
            .server_cpu_ns
            .filter(|_| connected > 0)
            .map(|ns| ns as f64 / 1000.0 / connected as f64),
        tls: config.tls.is_some(),
        seconds,
        server_rss_kib: connects.server_rss_kib,
        server_rss_end_kib: measured.server_rss_end_kib,
        offered_rate: config.rate,
        cpu_busy_pct: measured.cpu_busy_pct,
        ..BenchReport::default()
    };
    for task in tasks {
        let result = task.await;
        report.replies += result.replies;
        report.mismatches += result.mismatches;
        report.merged += result.merged;
        if let Some(reason) = result.dropped {
            report.disconnects += 1;
            *report.disconnect_errors.entry(reason).or_insert(0) += 1;
        }
    }
    report.rate = if seconds > 0.0 {
        report.replies as f64 / seconds
    } else {
        0.0
    };
    let per_reply = |ns: Option<u64>| {
        ns.filter(|_| report.replies > 0)
            .map(|ns| ns as f64 / 1000.0 / report.replies as f64)
    };
    report.server_cpu_us_per_reply = per_reply(measured.server_cpu_ns);
    report.bench_cpu_us_per_reply = per_reply(measured.bench_cpu_ns);
    // Every worker is joined, so every batch is in.
    let histograms = latencies.into_histograms();
    report.latency = Percentiles::of(&histograms.from_due);
    if config.rate.is_some() {
        report.latency_from = LatencyFrom::DueTime;
        report.sent_latency = Some(Percentiles::of(&histograms.from_write));
    }
    report
}

/// How often the progress bar moves.
const PROGRESS_TICK: Duration = Duration::from_millis(100);

/// How the connects went.
#[derive(Default)]
struct Connects {
    connected: usize,
    failures: u64,
    /// Each reason a connect failed, and how many times.
    errors: BTreeMap<String, u64>,
    /// With `--source-addrs`: greeted connections from each address.
    per_source: BTreeMap<IpAddr, u64>,
    /// From the first connect to the last greeting (or failure).
    seconds: f64,
    /// The server's CPU time while connecting.
    server_cpu_ns: Option<u64>,
    /// The server's RSS before connecting and with every client connected.
    server_rss_kib: Option<(u64, u64)>,
}

impl Connects {
    fn count(&mut self, greeted: Greeted) {
        match greeted.result {
            Ok(()) => {
                self.connected += 1;
                if let Some(source) = greeted.source {
                    *self.per_source.entry(source).or_insert(0) += 1;
                }
            }
            Err(reason) => {
                self.failures += 1;
                *self.errors.entry(reason).or_insert(0) += 1;
            }
        }
    }
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
