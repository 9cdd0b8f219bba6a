//! The command line: one binary, three roles. Every default here is the
//! library's own (`ServerConfig::default()` and the like); a test holds the
//! two together.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use duplex::bench::{BenchConfig, SourceAddrs};
use duplex::client::{ClientConfig, ClientTls, ConnectionConfig, SupervisorConfig, TlsError};
use duplex::logging::LogFormat;
use duplex::server::{
    MAX_THREADS, RegistryConfig, ServerConfig, SessionConfig, TlsFiles, TrustedProxies,
    available_cores,
};

mod admin;
mod parse;
mod per_ip;
mod values;

use admin::AdminArgs;
use per_ip::PerIpArgs;
use values::{
    duration, host_port, log_format, max_line, nonzero, positive_duration, positive_rate,
    positive_usize, registry_interval,
};

/// Where the server listens when `--addr` is not given: loopback only.
const DEFAULT_SERVER_ADDR: &str = "127.0.0.1:8000";
/// Where the client connects when `--addr` is not given.
const DEFAULT_CLIENT_ADDR: &str = "localhost:8000";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Role {
    /// Accept clients, greet each with "Hello", answer every line with a timestamped echo.
    Server,
    /// Connect, send a random hex string every interval, print what the server sends.
    Client,
    /// Load-test a server: many connections, messages in flight, checked replies,
    /// throughput and latency.
    Bench,
}

/// A TCP two-way messaging server and self-healing client.
///
/// The server greets each client with "Hello" and answers every line with
/// "H:M:S - server reply: <line>". The client sends a random hex string every
/// interval, prints every line the server sends on stdout, and reconnects after
/// a backoff whenever the connection fails.
///
/// Logs go to stderr. Filter them with RUST_LOG (default "info"), e.g.
/// RUST_LOG=debug or RUST_LOG=duplex::actors::registry=info,warn.
/// Ctrl-C or SIGTERM exits cleanly with code 0; SIGUSR1 makes the server log a
/// registry snapshot with a line per client.
#[derive(Debug, Parser)]
#[command(name = "duplex", version, max_term_width = 100, after_help = EXIT_CODES)]
pub(crate) struct Cli {
    /// Which part to run: the server, a client, or the load generator (bench).
    #[arg(long, value_enum)]
    pub(crate) role: Role,

    /// Server: address to listen on [default: 127.0.0.1:8000; use 0.0.0.0:8000
    /// to accept other hosts]. Client: host:port to connect to, every resolved
    /// address tried in turn [default: localhost:8000]. Bench: the server to
    /// load [default: 127.0.0.1:8000].
    #[arg(long, value_name = "HOST:PORT", value_parser = host_port)]
    addr: Option<String>,

    /// Log format on stderr.
    #[arg(long, value_parser = log_format(), default_value = "text")]
    pub(crate) log_format: LogFormat,

    /// Longest message accepted, in bytes; a longer line gets an error and the
    /// connection is closed.
    #[arg(long, default_value_t = 65536, value_parser = max_line, help_heading = "Server options")]
    max_line: usize,

    /// Bytes without a newline are taken as one message this long after the
    /// first of them came (or the last read of 256 bytes or more), for peers
    /// that do not end their messages with "\n"; 0 turns this off.
    #[arg(long, default_value = "200ms", value_parser = duration, value_name = "DURATION", allow_hyphen_values = true, help_heading = "Server options")]
    fragment_timeout: Duration,

    /// A client that takes none of the bytes written to it for this long is
    /// cut off (reset), whatever the server was writing; 0 turns this off.
    #[arg(long, default_value = "30s", value_parser = duration, value_name = "DURATION", allow_hyphen_values = true, help_heading = "Server options")]
    write_timeout: Duration,

    /// Connections held at once (clients, and connections still waiting to
    /// send their PROXY header); one more gets an error and is closed.
    #[arg(long, default_value_t = 10_000, value_parser = positive_usize, help_heading = "Server options")]
    max_clients: usize,

    #[command(flatten)]
    per_ip: PerIpArgs,

    /// A client that sends nothing for this long is closed; 0 turns this off.
    #[arg(long, default_value = "5m", value_parser = duration, value_name = "DURATION", allow_hyphen_values = true, help_heading = "Server options")]
    idle_timeout: Duration,

    /// How often the registry logs its summary line (client count, totals):
    /// 0 (off) or at least 1s. SIGUSR1 logs it with a line per client.
    #[arg(long, default_value = "30s", value_parser = registry_interval, value_name = "DURATION", allow_hyphen_values = true, help_heading = "Server options")]
    registry_interval: Duration,

    /// On Ctrl-C/SIGTERM, how long clients get to receive their last replies
    /// before they are cut off.
    #[arg(long, default_value = "5s", value_parser = duration, value_name = "DURATION", allow_hyphen_values = true, help_heading = "Server options")]
    shutdown_timeout: Duration,

    /// Speak TLS with this certificate chain (PEM, the server's own
    /// certificate first); needs --tls-key. SIGHUP reloads both files.
    #[arg(
        long,
        value_name = "PEM",
        requires = "tls_key",
        help_heading = "Server options"
    )]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        value_name = "PEM",
        requires = "tls_cert",
        help_heading = "Server options"
    )]
    tls_key: Option<PathBuf>,

    /// Expect a PROXY protocol header (v1 or v2, as HAProxy's send-proxy
    /// sends it) first on every connection, and show the client behind the
    /// balancer; a connection without one, or from an untrusted address, is
    /// closed.
    #[arg(long, help_heading = "Server options")]
    proxy_protocol: bool,

    /// Who may send a PROXY header: CIDR blocks or addresses, comma-separated
    /// [default: 127.0.0.1/32,::1/128]; needs --proxy-protocol.
    #[arg(long, value_name = "CIDR,...", value_parser = TrustedProxies::parse, requires = "proxy_protocol", help_heading = "Server options")]
    trusted_proxies: Option<TrustedProxies>,

    /// Set SO_REUSEPORT, so a new server can start on the same port while
    /// this one drains (rolling restarts refuse no connection). Each of the
    /// --threads then has a listener of its own, and the kernel spreads
    /// connections over them.
    #[arg(long, help_heading = "Server options")]
    reuse_port: bool,

    /// Threads that accept and serve connections (the server) or drive
    /// them (the bench), one per core: each has its own task queue and its
    /// own epoll instance, and a connection stays on the thread that
    /// accepted it [default: the cores available to the process]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=MAX_THREADS as i64), help_heading = CORES_HEADING)]
    threads: Option<u16>,

    /// The limit for a TLS handshake, and for a PROXY header (each gets it):
    /// a connection that has not finished one by then is closed (it counts
    /// toward --max-clients meanwhile).
    #[arg(long, default_value = "10s", value_parser = positive_duration, value_name = "DURATION", allow_hyphen_values = true, help_heading = "Server options")]
    handshake_timeout: Duration,

    #[command(flatten)]
    admin: AdminArgs,

    /// Time between messages.
    #[arg(long, default_value = "2s", value_parser = positive_duration, value_name = "DURATION", allow_hyphen_values = true, help_heading = "Client options")]
    interval: Duration,

    /// Wait before reconnecting after a connection ends.
    #[arg(long, default_value = "1s", value_parser = positive_duration, value_name = "DURATION", allow_hyphen_values = true, help_heading = "Client options")]
    backoff: Duration,

    /// Turns on exponential backoff: each failed reconnect doubles the wait,
    /// up to this, with ±20% jitter; a reply resets it [default: off, fixed backoff].
    #[arg(long, value_parser = duration, value_name = "DURATION", allow_hyphen_values = true, help_heading = "Client options")]
    backoff_max: Option<Duration>,

    /// Limit for lookup, connect, the TLS handshake and writes; with messages
    /// unanswered, a connection that gets no reply this long is declared dead
    /// and restarted (other lines from the server do not count).
    #[arg(long, default_value = "10s", value_parser = positive_duration, value_name = "DURATION", allow_hyphen_values = true, help_heading = "Client options")]
    timeout: Duration,

    /// Exit with code 0 after this many replies [default: run until stopped].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Client options")]
    count: Option<u64>,

    /// Unanswered messages kept for resending after a reconnect; when full the
    /// oldest is dropped.
    #[arg(long, default_value_t = 1000, value_parser = positive_usize, help_heading = "Client options")]
    max_pending: usize,

    /// Exit with code 1 after more than N restarts within --restart-window
    /// [default: retry forever].
    #[arg(long, value_name = "N", help_heading = "Client options")]
    max_restarts: Option<u32>,

    /// The window --max-restarts counts restarts in.
    #[arg(long, default_value = "60s", value_parser = positive_duration, value_name = "DURATION", allow_hyphen_values = true, help_heading = "Client options")]
    restart_window: Duration,

    /// Speak TLS, verifying the server's certificate against the system's
    /// trust store (or --tls-ca).
    #[arg(long, help_heading = TLS_HEADING)]
    tls: bool,

    /// Trust the CA certificates in this PEM file instead of the system's
    /// (implies --tls).
    #[arg(long, value_name = "PEM", help_heading = TLS_HEADING)]
    tls_ca: Option<PathBuf>,

    /// The name the server's certificate must be for [default: the host of
    /// --addr] (implies --tls).
    #[arg(long, value_name = "NAME", help_heading = TLS_HEADING)]
    tls_server_name: Option<String>,

    /// Connections to open.
    #[arg(long, default_value_t = 50, value_parser = positive_usize, help_heading = "Bench options")]
    clients: usize,

    /// How long to measure, once every connection is greeted (less if every
    /// connection is done sooner: with --once, answered; otherwise dropped).
    #[arg(long, default_value = "10s", value_parser = positive_duration, value_name = "DURATION", allow_hyphen_values = true, help_heading = "Bench options")]
    duration: Duration,

    /// Messages in flight per connection; 0 holds the connections idle (to
    /// measure the server's memory per connection).
    #[arg(long, default_value_t = 1, help_heading = "Bench options")]
    depth: usize,

    /// Bytes per message, without the newline (a message is never shorter than
    /// its unique id, about 8 bytes).
    #[arg(long, default_value_t = 16, value_parser = positive_usize, help_heading = "Bench options")]
    size: usize,

    /// Offered load, in messages per second over all connections, released
    /// to them in turn (each still keeps at most --depth in flight), so that
    /// servers can be compared under the very same load; latency then counts
    /// from when each message was due, however late a slow server let it be
    /// written (the uncorrected figures are shown beside it) [default: send
    /// the next message as soon as a reply comes back].
    #[arg(long, value_name = "N", value_parser = positive_rate, help_heading = "Bench options")]
    rate: Option<f64>,

    /// New connections per second while connecting, so a large --clients
    /// measures holding capacity, not a SYN burst.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Bench options")]
    connect_rate: u32,

    /// Every connection sends exactly one message once all are connected,
    /// then holds on; the run ends when every reply is in (or at
    /// --duration). Shows whether a server holding --clients connections
    /// still answers every one. With --rate, the messages go out at that rate.
    #[arg(long, conflicts_with = "depth", help_heading = "Bench options")]
    once: bool,

    /// Local addresses to connect from, in turn, each with its own range of
    /// ephemeral ports (about 28 000), to open more connections than one
    /// address can: addresses (IPv4 or IPv6) and IPv4 ranges, comma-separated,
    /// such as 127.0.0.1-127.0.0.8 (all of 127/8 is local on Linux)
    /// [default: the kernel's choice].
    #[arg(long, value_name = "IP,...", value_parser = SourceAddrs::parse, help_heading = "Bench options")]
    source_addrs: Option<SourceAddrs>,

    /// Print one JSON object instead of the text report.
    #[arg(long, help_heading = "Bench options")]
    pub(crate) json: bool,

    /// PID of a server on this machine: report its resident memory before
    /// connecting and with every client connected, and the CPU time it ran
    /// per reply while measuring.
    #[arg(long, value_name = "PID", help_heading = "Bench options")]
    server_pid: Option<u32>,
}

/// The end of `--help`: every exit code, as the README's table gives them.
const EXIT_CODES: &str = "\
Exit codes:
  0    stopped by Ctrl-C or SIGTERM (the client also when its stdout closes), or
       done: the client's --count replies, a bench run with no error
  1    cannot run as configured (said in a last line \"error: ...\"): cannot listen,
       a certificate or key that does not load or is out of date, an unreadable
       --tls-ca or an empty trust store; or, once running, the client past
       --max-restarts or, without --tls, finding the server speaking TLS three
       times in a row, a bench run with errors or no connection
  2    usage error: an unknown flag, a flag of another role, a bad value (a
       --tls-server-name, or the host of --addr, that is no DNS name or IP address),
       a RUST_LOG that would silence the log or be partly ignored
  130  a second Ctrl-C or SIGTERM during the shutdown";

/// The heading of the TLS flags the client and the bench share.
const TLS_HEADING: &str = "Client and bench TLS options";
/// The heading of the flags the server and the bench share.
const CORES_HEADING: &str = "Server and bench options";

impl Cli {
    /// The address to listen on or connect to.
    pub(crate) fn addr(&self) -> &str {
        match (&self.addr, self.role) {
            (Some(addr), _) => addr,
            (None, Role::Server | Role::Bench) => DEFAULT_SERVER_ADDR,
            (None, Role::Client) => DEFAULT_CLIENT_ADDR,
        }
    }

    /// The server's flags.
    pub(crate) fn server_config(&self) -> ServerConfig {
        ServerConfig {
            session: SessionConfig {
                max_line: self.max_line,
                fragment_timeout: nonzero(self.fragment_timeout),
                write_timeout: nonzero(self.write_timeout),
                handshake_timeout: self.handshake_timeout,
            },
            registry: RegistryConfig {
                max_clients: self.max_clients,
                snapshot_interval: nonzero(self.registry_interval),
                idle_timeout: nonzero(self.idle_timeout),
                per_ip: self.per_ip.limits(),
            },
            shutdown_timeout: self.shutdown_timeout,
            tls: self
                .tls_cert
                .clone()
                .zip(self.tls_key.clone())
                .map(|(cert, key)| TlsFiles { cert, key }),
            proxy_protocol: (self.proxy_protocol)
                .then(|| self.trusted_proxies.clone().unwrap_or_default()),
            reuse_port: self.reuse_port,
            threads: self.threads(),
            admin: self.admin.config(),
            drain_delay: self.admin.drain_delay,
        }
    }

    /// With TLS on (client and bench), the name the server's certificate
    /// must be for: `--tls-server-name`, or the host of `--addr`.
    pub(crate) fn tls_server_name(&self) -> Option<&str> {
        if !self.tls && self.tls_ca.is_none() && self.tls_server_name.is_none() {
            return None;
        }
        Some((self.tls_server_name.as_deref()).unwrap_or(ClientTls::host_of(self.addr())))
    }

    /// The client's and the bench's TLS flags, with its trust roots loaded.
    pub(crate) fn client_tls(&self) -> Result<Option<ClientTls>, TlsError> {
        (self.tls_server_name())
            .map(|name| ClientTls::new(self.tls_ca.as_deref(), name))
            .transpose()
    }

    /// The client's flags.
    pub(crate) fn client_config(&self) -> Result<ClientConfig, TlsError> {
        Ok(ClientConfig {
            connection: ConnectionConfig {
                addr: self.addr().to_string(),
                timeout: self.timeout,
                tls: self.client_tls()?,
            },
            supervisor: SupervisorConfig {
                interval: self.interval,
                backoff: self.backoff,
                backoff_max: self.backoff_max,
                max_restarts: self.max_restarts,
                restart_window: self.restart_window,
                max_pending: self.max_pending,
                count: self.count,
            },
        })
    }

    /// The bench's flags.
    pub(crate) fn bench_config(&self) -> Result<BenchConfig, TlsError> {
        Ok(BenchConfig {
            addr: self.addr().to_string(),
            clients: self.clients,
            duration: self.duration,
            depth: self.depth,
            size: self.size,
            rate: self.rate,
            connect_rate: self.connect_rate,
            progress: !self.json,
            server_pid: self.server_pid,
            tls: self.client_tls()?,
            once: self.once,
            source_addrs: self.source_addrs.clone(),
            threads: self.threads(),
        })
    }

    /// `--threads`, or the cores available.
    fn threads(&self) -> usize {
        self.threads.map_or_else(available_cores, usize::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_args(std::iter::once("duplex").chain(args.iter().copied()))
    }

    #[test]
    fn the_flags_defaults_are_the_librarys() {
        let server = parse(&["--role", "server"]).expect("valid");
        assert_eq!(server.addr(), "127.0.0.1:8000");
        assert_eq!(server.server_config(), ServerConfig::default());
        let client = parse(&["--role", "client"]).expect("valid");
        let config = client.client_config().expect("no TLS to load");
        assert_eq!(config, ClientConfig::new("localhost:8000"));
        let bench = parse(&["--role", "bench"]).expect("valid");
        let config = bench.bench_config().expect("no TLS to load");
        assert_eq!(config, BenchConfig::new("127.0.0.1:8000"));
        // And the library's are the ones the help text promises.
        let config = ServerConfig::default();
        assert_eq!(config.session.max_line, 65536);
        assert_eq!(
            config.session.fragment_timeout,
            Some(Duration::from_millis(200))
        );
        assert_eq!(config.registry.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(
            config.registry.snapshot_interval,
            Some(Duration::from_secs(30))
        );
        let client = ClientConfig::new("localhost:8000").supervisor;
        assert_eq!(client.interval, Duration::from_secs(2));
        assert_eq!(client.backoff, Duration::from_secs(1));
        assert_eq!(client.backoff_max, None);
    }

    #[test]
    fn durations_take_human_forms_and_zero_turns_things_off() {
        let cli = parse(&[
            "--role",
            "server",
            "--fragment-timeout",
            "0",
            "--idle-timeout",
            "1m 30s",
        ])
        .expect("valid");
        let config = cli.server_config();
        assert_eq!(config.session.fragment_timeout, None);
        assert_eq!(config.registry.idle_timeout, Some(Duration::from_secs(90)));
        let cli = parse(&["--role", "client", "--interval", "500ms"]).expect("valid");
        assert_eq!(cli.interval, Duration::from_millis(500));
    }

    #[test]
    fn addresses_take_host_and_port_and_durations_say_why_they_fail() {
        for addr in [
            "127.0.0.1:8000",
            "[::1]:8000",
            "localhost:0",
            "example.invalid:1",
        ] {
            let cli = parse(&["--role", "client", "--addr", addr]).expect(addr);
            assert_eq!(cli.addr(), addr);
        }
        let error = parse(&["--role", "server", "--idle-timeout", "-1"]).expect_err("negative");
        assert!(error.to_string().contains("cannot be negative"), "{error}");
    }

    #[test]
    fn the_registry_interval_is_off_or_at_least_a_second() {
        for (given, taken) in [("0", None), ("1s", Some(1)), ("30s", Some(30))] {
            let cli = parse(&["--role", "server", "--registry-interval", given]).expect(given);
            let interval = cli.server_config().registry.snapshot_interval;
            assert_eq!(interval, taken.map(Duration::from_secs), "{given}");
        }
        for given in ["999ms", "1ms", "500ms"] {
            let error =
                parse(&["--role", "server", "--registry-interval", given]).expect_err(given);
            assert_eq!(error.exit_code(), 2);
            assert!(
                error.to_string().contains("must be 0 (off) or at least 1s"),
                "{error}"
            );
        }
    }

    #[test]
    fn the_bench_takes_once_and_source_addresses() {
        let cli = parse(&[
            "--role",
            "bench",
            "--once",
            "--rate",
            "100",
            "--source-addrs",
            "127.0.0.1-127.0.0.3,::1",
        ])
        .expect("valid");
        let config = cli.bench_config().expect("no TLS to load");
        assert!(config.once);
        let sources = config.source_addrs.expect("given");
        assert_eq!(sources.addrs().len(), 4);
        let error = parse(&["--role", "bench", "--source-addrs", "127.0.0.1-::1"])
            .expect_err("a range across families");
        assert!(error.to_string().contains("IPv4 only"), "{error}");
    }

    #[test]
    fn bad_values_and_wrong_role_flags_are_usage_errors() {
        for args in [
            &["--role", "server", "--fragment-timeout", "soon"][..],
            &["--role", "client", "--interval", "0"],
            &["--role", "server", "--max-line", "0"],
            &["--role", "proxy"],
            &[],
            &["--role", "client", "--max-clients", "5"],
            &["--role", "server", "--count", "3"],
            &["--role", "client", "--clients", "3"],
            &["--role", "bench", "--interval", "1s"],
            &["--role", "bench", "--rate", "0"],
            &["--role", "bench", "--rate", "fast"],
            &["--role", "server", "--rate", "100"],
            &["--role", "server", "--addr", "127.0.0.1"],
            &["--role", "client", "--addr", "nonsense"],
            &["--role", "bench", "--addr", "localhost:http"],
            &["--role", "client", "--addr", ":8000"],
            &["--role", "client", "--addr", "::1"],
            &["--role", "client", "--backoff", "0"],
            &["--role", "client", "--count", "0"],
            &["--role", "client", "--backoff", "2s", "--backoff-max", "1s"],
            &["--role", "server", "--max-line", "18446744073709551615"],
            &["--role", "server", "--idle-timeout", "-1"],
            &["--role", "server", "--tls-cert", "cert.pem"],
            &["--role", "server", "--tls-key", "key.pem"],
            &["--role", "server", "--tls"],
            &["--role", "client", "--tls-cert", "c", "--tls-key", "k"],
            &["--role", "server", "--handshake-timeout", "0"],
            &["--role", "server", "--trusted-proxies", "10.0.0.0/8"],
            &[
                "--role",
                "server",
                "--proxy-protocol",
                "--trusted-proxies",
                "10.0.0.0/33",
            ],
            &["--role", "client", "--reuse-port"],
            &["--role", "client", "--threads", "2"],
            &["--role", "server", "--threads", "0"],
            &["--role", "bench", "--threads", "1025"],
            &["--role", "bench", "--server-pid", "4294967295"],
            &["--role", "bench", "--once", "--depth", "2"],
            &["--role", "server", "--once"],
            &["--role", "bench", "--source-addrs", "127.0.0.8-127.0.0.1"],
            &["--role", "bench", "--source-addrs", "localhost"],
            &["--role", "bench", "--source-addrs", ""],
            &["--role", "client", "--source-addrs", "127.0.0.1"],
            &["--role", "client", "--tls-server-name", "not a name"],
            &["--role", "bench", "--tls-server-name", "a..example"],
            &["--role", "client", "--tls", "--addr", "no such host:8000"],
            &["--role", "server", "--tls-server-name", "localhost"],
            &["--role", "server", "--admin-token-file", "token"],
            &["--role", "server", "--admin-addr", "8001"],
            &["--role", "client", "--admin-addr", "127.0.0.1:8001"],
            &["--role", "bench", "--drain-delay", "1s"],
            &["--role", "server", "--drain-delay", "-1s"],
        ] {
            let error = parse(args).expect_err("rejected");
            assert_eq!(error.exit_code(), 2, "{args:?}: {error}");
        }
    }
}
