//! `/metrics`: what the registry counts, the log's drops, the certificate's
//! expiry, the build and the process, in Prometheus' conventional names.
//!
//! Nothing is counted for it on the message path: each scrape asks the
//! registry for its counts (the sessions' own counters, summed) and reads
//! `/proc/self`, and a [`Scrape`] holding those readings is the one
//! collector of a prometheus-client registry made for that scrape.
//!
//! prometheus-client writes OpenMetrics text, which Prometheus asks for
//! (`Accept: application/openmetrics-text`) and gets. Any other scraper
//! (curl, `promtool check metrics`, an older Prometheus) gets the classic
//! text format 0.0.4, which differs only in its descriptors: a counter's
//! `# HELP` and `# TYPE` name its `_total` samples, an info metric is a
//! gauge named `_info`, and there are no `# UNIT` and `# EOF` lines.

use std::fmt::{self, Write};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use super::process::Process;
use crate::messages::RegistryStats;

/// The OpenMetrics content type, as Prometheus asks for it.
pub(super) const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic text format's content type.
pub(super) const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The version `/metrics` names in `duplex_build_info`.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One scrape's readings.
#[derive(Debug)]
pub(super) struct Scrape {
    pub(super) stats: RegistryStats,
    pub(super) draining: bool,
    /// The certificate's notAfter, seconds since the epoch (a TLS server).
    pub(super) certificate_expiry: Option<i64>,
    pub(super) log_lines_dropped: u64,
    pub(super) process: Option<Process>,
}

/// The scrape as text: OpenMetrics, or the classic format.
pub(super) fn render(scrape: Scrape, openmetrics: bool) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut text = String::new();
    // Writing into a String cannot fail, nor can the collector's encode.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    if openmetrics { text } else { classic(&text) }
}

/// The OpenMetrics text `text` in the classic format 0.0.4 (see the module
/// docs for the three differences).
fn classic(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // A family's `# HELP` comes before its `# TYPE`, which says its name.
    let mut help = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = rest.split_once(' ').map(|(_, help)| help);
        } else if let Some((name, kind)) =
            (line.strip_prefix("# TYPE ")).and_then(|rest| rest.rsplit_once(' '))
        {
            let (suffix, kind) = match kind {
                "counter" => ("_total", kind),
                "info" => ("_info", "gauge"),
                _ => ("", kind),
            };
            if let Some(help) = help.take() {
                let _ = writeln!(out, "# HELP {name}{suffix} {help}");
            }
            let _ = writeln!(out, "# TYPE {name}{suffix} {kind}");
        } else if !line.starts_with("# UNIT ") && line != "# EOF" {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Writes one unlabelled counter.
fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: impl prometheus_client::encoding::EncodeCounterValue + fmt::Debug + Send + Sync,
) -> fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

/// Writes one unlabelled gauge.
fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: impl prometheus_client::encoding::EncodeGaugeValue + fmt::Debug + Send + Sync,
) -> fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

/// Writes a counter with one label, a sample per value of it.
fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    samples: &[(&'static str, u64)],
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for &(value, count) in samples {
        ConstCounter::new(count).encode(family.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let e = &mut encoder;
        let stats = &self.stats;
        let info = [("version", VERSION)];
        let mut build = e.encode_descriptor(
            "duplex_build",
            "The running build of duplex.",
            None,
            MetricType::Info,
        )?;
        build.encode_info(&info)?;
        gauge(
            e,
            "duplex_clients",
            "Clients connected.",
            None,
            stats.clients as i64,
        )?;
        gauge(
            e,
            "duplex_connections_open",
            "Connections held, each a --max-clients slot: the clients, and those awaiting their PROXY header.",
            None,
            stats.connections as i64,
        )?;
        gauge(
            e,
            "duplex_max_clients",
            "The --max-clients cap on connections held.",
            None,
            stats.max_clients as i64,
        )?;
        gauge(
            e,
            "duplex_draining",
            "1 from SIGTERM on: /readyz answers 503 and the server drains.",
            None,
            i64::from(self.draining),
        )?;
        counters(
            e,
            "duplex_connections",
            "Connections by what became of them: admitted as clients, turned away full, TLS handshake failed (after admission), PROXY header refused, balancer health check, TLS on the plain port, refused for their address's --max-clients-per-ip or --connect-rate-per-ip.",
            "result",
            &[
                ("admitted", stats.admitted),
                ("full", stats.rejected),
                ("tls_failed", stats.tls_failed),
                ("proxy_refused", stats.proxy_failed),
                ("proxy_health_check", stats.proxy_local),
                ("tls_on_plain", stats.tls_on_plain),
                ("too_many_per_ip", stats.per_ip.too_many),
                ("too_fast_per_ip", stats.per_ip.too_fast),
            ],
        )?;
        gauge(
            e,
            "duplex_per_ip_addresses",
            "Addresses (IPv6: /64 blocks) in the per-address table: those holding clients, or connecting lately under --connect-rate-per-ip.",
            None,
            stats.per_ip.addresses as i64,
        )?;
        let totals = stats.totals;
        counter(
            e,
            "duplex_messages_received",
            "Messages received from clients.",
            None,
            totals.messages_in,
        )?;
        counter(
            e,
            "duplex_messages_sent",
            "Replies sent to clients.",
            None,
            totals.messages_out,
        )?;
        counter(
            e,
            "duplex_received",
            "Bytes received from clients.",
            Some(&Unit::Bytes),
            totals.bytes_in,
        )?;
        counter(
            e,
            "duplex_sent",
            "Bytes sent to clients.",
            Some(&Unit::Bytes),
            totals.bytes_out,
        )?;
        let cuts = stats.cuts;
        counters(
            e,
            "duplex_cuts",
            "Clients the server closed, by why: write timeout, idle timeout, line too long, operator, shutdown timeout.",
            "reason",
            &[
                ("write_timeout", cuts.write_timeout),
                ("idle_timeout", cuts.idle_timeout),
                ("line_too_long", cuts.line_too_long),
                ("operator", cuts.operator),
                ("shutdown_timeout", cuts.shutdown_timeout),
            ],
        )?;
        counter(
            e,
            "duplex_log_lines_dropped",
            "Log lines dropped because stderr could not keep up.",
            None,
            self.log_lines_dropped,
        )?;
        if let Some(expiry) = self.certificate_expiry {
            gauge(
                e,
                "duplex_tls_certificate_expiry_timestamp",
                "When the TLS certificate in use expires (its notAfter), in seconds since the Unix epoch.",
                Some(&Unit::Seconds),
                expiry,
            )?;
        }
        if let Some(process) = &self.process {
            encode_process(e, process)?;
        }
        Ok(())
    }
}

fn encode_process(e: &mut DescriptorEncoder, process: &Process) -> fmt::Result {
    gauge(
        e,
        "process_open_fds",
        "Open file descriptors.",
        None,
        process.open_fds,
    )?;
    gauge(
        e,
        "process_max_fds",
        "The limit on open file descriptors.",
        None,
        process.max_fds,
    )?;
    gauge(
        e,
        "process_resident_memory",
        "Resident memory size.",
        Some(&Unit::Bytes),
        process.resident_bytes,
    )?;
    gauge(
        e,
        "process_virtual_memory",
        "Virtual memory size.",
        Some(&Unit::Bytes),
        process.virtual_bytes,
    )?;
    counter(
        e,
        "process_cpu",
        "User and system CPU time spent.",
        Some(&Unit::Seconds),
        process.cpu_seconds,
    )?;
    gauge(
        e,
        "process_start_time",
        "When the process started, in seconds since the Unix epoch.",
        Some(&Unit::Seconds),
        process.start_time_seconds,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::registry::PerIpCounts;
    use crate::messages::{Counts, Cuts};

    fn scrape() -> Scrape {
        Scrape {
            stats: RegistryStats {
                clients: 2,
                connections: 3,
                max_clients: 10,
                admitted: 5,
                rejected: 1,
                totals: Counts {
                    messages_in: 7,
                    messages_out: 7,
                    bytes_in: 70,
                    bytes_out: 300,
                },
                cuts: Cuts {
                    operator: 1,
                    ..Cuts::default()
                },
                per_ip: PerIpCounts {
                    too_many: 2,
                    too_fast: 3,
                    addresses: 4,
                },
                ..RegistryStats::default()
            },
            draining: false,
            certificate_expiry: Some(2_000_000_000),
            log_lines_dropped: 4,
            process: super::super::process::read(),
        }
    }

    #[test]
    fn the_classic_text_names_each_counter_by_its_samples() {
        let text = render(scrape(), false);
        for line in [
            "# TYPE duplex_connections_total counter",
            "duplex_connections_total{result=\"admitted\"} 5",
            "# TYPE duplex_received_bytes_total counter",
            "duplex_received_bytes_total 70",
            "duplex_cuts_total{reason=\"operator\"} 1",
            "# TYPE duplex_build_info gauge",
            "duplex_clients 2",
            "duplex_tls_certificate_expiry_timestamp_seconds 2000000000",
            "duplex_log_lines_dropped_total 4",
            "duplex_connections_total{result=\"too_many_per_ip\"} 2",
            "duplex_connections_total{result=\"too_fast_per_ip\"} 3",
            "duplex_per_ip_addresses 4",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(!text.contains("# UNIT") && !text.contains("# EOF"));
    }

    #[test]
    fn openmetrics_is_what_prometheus_client_writes() {
        let text = render(scrape(), true);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE duplex_connections counter\n"));
        assert!(text.contains("# UNIT duplex_sent_bytes bytes\n"));
    }
}
