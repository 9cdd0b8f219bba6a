//! What a benchmark run measured, as text for people and JSON for scripts.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::latency::Percentiles;

/// What a run's latency is measured from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LatencyFrom {
    /// From each message's write: a closed loop, where the next message is
    /// written when a reply frees its slot.
    #[default]
    SendTime,
    /// From when each message was due by the `--rate` schedule, whenever it
    /// was written: a message a stalled server kept the bench from writing
    /// counts its wait, as wrk2 and tcpkali measure.
    DueTime,
}

impl LatencyFrom {
    /// In words, as the report prints it.
    pub fn describe(self) -> &'static str {
        match self {
            LatencyFrom::SendTime => "send time (closed loop)",
            LatencyFrom::DueTime => "due time (corrected for coordinated omission)",
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BenchReport {
    /// Connections asked for (`--clients`).
    pub clients: usize,
    /// Messages in flight per connection (`--depth`).
    pub depth: usize,
    /// Bytes per message (`--size`).
    pub size: usize,
    /// Whether every connection sent just one message (`--once`).
    pub once: bool,
    /// Connections that were greeted.
    pub connected: usize,
    /// Connections that failed to connect or be greeted in time.
    pub connect_failures: u64,
    /// Why they failed: each reason (refused, timed out, a TLS failure, the
    /// server's own `error: …` line...) and how many.
    pub connect_errors: BTreeMap<String, u64>,
    /// With `--source-addrs`: how many greeted connections came from each
    /// local address.
    pub source_addrs: BTreeMap<IpAddr, u64>,
    /// From the first connect to the last greeting (or failure), in seconds.
    pub connect_seconds: f64,
    /// Server CPU time per greeted connection while connecting, in
    /// microseconds (with `server_pid`): with TLS, what a full handshake
    /// costs the server.
    pub server_cpu_us_per_connect: Option<f64>,
    /// Whether the connections spoke TLS (then each connect was a handshake).
    pub tls: bool,
    /// Connections the server closed while measuring.
    pub disconnects: u64,
    /// Why they ended: each reason (the server's own `error: …` or
    /// `notice: …` line, `closed by the server`, an I/O error) and how many.
    pub disconnect_errors: BTreeMap<String, u64>,
    /// Replies that did not echo the message they answered.
    pub mismatches: u64,
    /// Messages the server echoed inside the reply to an earlier one (it
    /// answers per read, not per line, as the original Node server does);
    /// counted as replies, not as errors.
    pub merged: u64,
    /// Correct replies while measuring.
    pub replies: u64,
    /// How long the measurement ran.
    pub seconds: f64,
    /// Replies per second.
    pub rate: f64,
    /// Latency, from what [`latency_from`](Self::latency_from) says to the
    /// reply.
    pub latency: Percentiles,
    /// What `latency` counts from.
    pub latency_from: LatencyFrom,
    /// With `--rate`: latency from each message's write instead, not
    /// corrected for coordinated omission (never above `latency`).
    pub sent_latency: Option<Percentiles>,
    /// Server RSS before connecting and with every client connected, in KiB.
    pub server_rss_kib: Option<(u64, u64)>,
    /// Server RSS at the end of the run, every connection still open and
    /// its traffic over, in KiB: what clients cost once they have talked.
    pub server_rss_end_kib: Option<u64>,
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
    /// CPU time this process (the bench) ran per reply while measuring, in
    /// microseconds (Linux only): a bench that costs more than the server
    /// it loads may be what limits the run.
    pub bench_cpu_us_per_reply: Option<f64>,
}

impl BenchReport {
    /// Mismatches, failed connects and dropped connections.
    pub fn errors(&self) -> u64 {
        self.mismatches + self.connect_failures + self.disconnects
    }

    /// Greeted connections per second while connecting: with TLS, full
    /// handshakes per second. Bounded by `--connect-rate`.
    pub fn connects_per_second(&self) -> f64 {
        if self.connect_seconds > 0.0 {
            self.connected as f64 / self.connect_seconds
        } else {
            0.0
        }
    }

    /// One JSON object, for scripts.
    pub fn to_json(&self) -> serde_json::Value {
        let (rss_before, rss_connected) = self.server_rss_kib.unzip();
        let sent = |us: fn(&Percentiles) -> f64| self.sent_latency.as_ref().map(us);
        let sources: serde_json::Map<String, serde_json::Value> = (self.source_addrs.iter())
            .map(|(ip, n)| (ip.to_string(), (*n).into()))
            .collect();
        serde_json::json!({
            "clients": self.clients,
            "depth": self.depth,
            "size": self.size,
            "once": self.once,
            "connected": self.connected,
            "source_addrs": sources,
            "connect_seconds": self.connect_seconds,
            "connects_per_second": self.connects_per_second(),
            "server_cpu_us_per_connect": self.server_cpu_us_per_connect,
            "tls": self.tls,
            "seconds": self.seconds,
            "replies": self.replies,
            "rate": self.rate,
            "latency_from": self.latency_from.describe(),
            "p50_us": self.latency.p50_us,
            "p90_us": self.latency.p90_us,
            "p99_us": self.latency.p99_us,
            "p999_us": self.latency.p999_us,
            "max_us": self.latency.max_us,
            "sent_p50_us": sent(|p| p.p50_us),
            "sent_p90_us": sent(|p| p.p90_us),
            "sent_p99_us": sent(|p| p.p99_us),
            "sent_p999_us": sent(|p| p.p999_us),
            "sent_max_us": sent(|p| p.max_us),
            "errors": self.errors(),
            "mismatches": self.mismatches,
            "merged": self.merged,
            "connect_failures": self.connect_failures,
            "connect_errors": self.connect_errors,
            "disconnects": self.disconnects,
            "disconnect_errors": self.disconnect_errors,
            "server_rss_before_kib": rss_before,
            "server_rss_connected_kib": rss_connected,
            "server_rss_end_kib": self.server_rss_end_kib,
            "offered_rate": self.offered_rate,
            "cpu_busy_pct": self.cpu_busy_pct,
            "server_cpu_us_per_reply": self.server_cpu_us_per_reply,
            "bench_cpu_us_per_reply": self.bench_cpu_us_per_reply,
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
        let handshake = if self.tls {
            ", each a TLS handshake"
        } else {
            ""
        };
        write!(
            f,
            "connects     {} in {:.2} s ({:.0}/s{handshake})",
            self.connected,
            self.connect_seconds,
            self.connects_per_second(),
        )?;
        match self.server_cpu_us_per_connect {
            Some(us) => writeln!(f, ", server {us:.0} us CPU each")?,
            None => writeln!(f)?,
        }
        if !self.source_addrs.is_empty() {
            let each: Vec<String> = (self.source_addrs.iter())
                .map(|(ip, n)| format!("{ip} {n}"))
                .collect();
            writeln!(
                f,
                "from         {} (connections per source address)",
                each.join(", ")
            )?;
        }
        if self.once {
            writeln!(
                f,
                "once         one message per connection: {} of {} answered",
                self.replies, self.connected
            )?;
        }
        write!(f, "replies      {} ({:.0}/s)", self.replies, self.rate)?;
        match self.offered_rate {
            Some(offered) => writeln!(f, ", {offered:.0}/s offered")?,
            None => writeln!(f)?,
        }
        if self.replies == 0 {
            writeln!(f, "latency      no replies")?;
        } else {
            let from = self.latency_from.describe();
            writeln!(
                f,
                "latency      {}, from {from}",
                percentiles(&self.latency)
            )?;
            if let Some(sent) = &self.sent_latency {
                writeln!(f, "  from send  {}, uncorrected", percentiles(sent))?;
            }
        }
        if self.merged > 0 {
            writeln!(
                f,
                "merged       {} messages were answered inside the reply to an earlier one: \
                 this server replies per read, not per line (as the original Node server \
                 does); its latencies at --depth above 1 are per batch",
                self.merged
            )?;
        }
        if let Some((before, connected)) = self.server_rss_kib {
            let per_client =
                (connected.saturating_sub(before) * 1024) as f64 / self.connected.max(1) as f64;
            writeln!(
                f,
                "server RSS   {before} KiB before, {connected} KiB connected ({per_client:.0} B per client)"
            )?;
            if let Some(end) = self.server_rss_end_kib {
                let per_client =
                    (end.saturating_sub(before) * 1024) as f64 / self.connected.max(1) as f64;
                writeln!(
                    f,
                    "             {end} KiB at the end, still connected ({per_client:.0} B per client)"
                )?;
            }
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
        if let Some(us) = self.bench_cpu_us_per_reply {
            writeln!(f, "bench CPU    {us:.2} us per reply (this process)")?;
        }
        write!(
            f,
            "errors       {} ({} mismatches, {} failed connects, {} dropped connections)",
            self.errors(),
            self.mismatches,
            self.connect_failures,
            self.disconnects
        )?;
        for (reason, count) in &self.connect_errors {
            write!(f, "\n  failed connect: {reason} ({count})")?;
        }
        for (reason, count) in &self.disconnect_errors {
            write!(f, "\n  dropped connection: {reason} ({count})")?;
        }
        Ok(())
    }
}

/// `p50 12 us, p90 …, max 40 us`.
fn percentiles(p: &Percentiles) -> String {
    format!(
        "p50 {:.0} us, p90 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us",
        p.p50_us, p.p90_us, p.p99_us, p.p999_us, p.max_us
    )
}
