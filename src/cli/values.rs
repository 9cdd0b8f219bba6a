//! The command line's value parsers: each turns one flag's text into its
//! value, or into the message a usage error shows.

use std::time::Duration;

use clap::ValueEnum;
use clap::builder::{EnumValueParser, TypedValueParser};

use duplex::logging::LogFormat;

/// `--log-format`'s values, as clap lists them in `--help` and usage
/// errors: the library's [`LogFormat`] knows nothing of clap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormatValue {
    /// Human-readable lines: time, level, module, message, key=value pairs.
    Text,
    /// One JSON object per line, with the key/values as fields.
    Json,
}

pub(super) fn log_format() -> impl TypedValueParser<Value = LogFormat> {
    EnumValueParser::<LogFormatValue>::new().map(|value| match value {
        LogFormatValue::Text => LogFormat::Text,
        LogFormatValue::Json => LogFormat::Json,
    })
}

/// `None` for zero: "0 turns this off".
pub(super) fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// `HOST:PORT`, with a port number; the host is resolved when it is used.
pub(super) fn host_port(text: &str) -> Result<String, String> {
    // A bare IPv6 address ("::1") has colons but no port.
    let bracketed = |host: &str| host.starts_with('[') && host.ends_with(']');
    let port = text
        .rsplit_once(':')
        .filter(|(host, _)| !host.is_empty() && (!host.contains(':') || bracketed(host)))
        .map(|(_, port)| port);
    match port.map(str::parse::<u16>) {
        Some(Ok(_)) => Ok(text.to_owned()),
        Some(Err(_)) => Err("the port must be a number from 0 to 65535".into()),
        None => Err("expected HOST:PORT, such as 127.0.0.1:8000 or [::1]:8000".into()),
    }
}

/// Longest `--max-line`, in bytes: each client may buffer this much, so a
/// larger value would let a few clients take the server's memory.
const MAX_LINE_LIMIT: usize = 64 << 20;

pub(super) fn max_line(text: &str) -> Result<usize, String> {
    match positive_usize(text)? {
        n if n > MAX_LINE_LIMIT => Err(format!("must be at most {MAX_LINE_LIMIT} (64 MiB)")),
        n => Ok(n),
    }
}

pub(super) fn duration(text: &str) -> Result<Duration, String> {
    if text.trim_start().starts_with('-') {
        return Err("a duration cannot be negative".into());
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{e} (expected a duration such as 2s, 500ms or 5m)"))
}

pub(super) fn positive_duration(text: &str) -> Result<Duration, String> {
    match duration(text)? {
        d if d.is_zero() => Err("must be greater than zero".into()),
        d => Ok(d),
    }
}

/// Shortest `--registry-interval` but 0 (off): each is a log line, and a
/// summary more often than every second is more than anyone reads (SIGUSR1
/// logs one on demand).
const REGISTRY_INTERVAL_MIN: Duration = Duration::from_secs(1);

pub(super) fn registry_interval(text: &str) -> Result<Duration, String> {
    match duration(text)? {
        d if !d.is_zero() && d < REGISTRY_INTERVAL_MIN => Err(format!(
            "must be 0 (off) or at least {} (SIGUSR1 logs a snapshot on demand)",
            humantime::format_duration(REGISTRY_INTERVAL_MIN)
        )),
        d => Ok(d),
    }
}

pub(super) fn positive_usize(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e} (expected a whole number)")),
    }
}

pub(super) fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        Ok(_) => Err("must be a positive number".into()),
        Err(e) => Err(format!("{e} (expected messages per second)")),
    }
}
