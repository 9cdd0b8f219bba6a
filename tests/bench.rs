//! The load generator: it measures real servers, checks every reply, and
//! reports what went wrong instead of hiding it.

mod common;

use std::net::IpAddr;
use std::process::Stdio;
use std::time::Duration;

use async_std::channel::Receiver;
use async_std::net::TcpListener;
use async_std::task::{sleep, spawn};
use common::certs::{Leaf, TestCa};
use common::process::{duplex, signal, start_server, wait_with_timeout};
use common::{PATIENCE, Peer, TestServer, quick_config, within};
use duplex::bench::{self, BenchConfig, LatencyFrom, SourceAddrs};
use duplex::client::ClientTls;
use duplex::server::ServerConfig;
use duplex::shutdown::Shutdown;
use futures::io::BufReader;
use futures::{AsyncBufReadExt, AsyncWriteExt};

fn config(addr: impl ToString, clients: usize, depth: usize, size: usize) -> BenchConfig {
    BenchConfig {
        clients,
        duration: Duration::from_millis(300),
        depth,
        size,
        connect_rate: 1000,
        progress: false,
        ..BenchConfig::new(addr.to_string())
    }
}

/// A run length no test waits for: a run given it must end by itself (its
/// replies in, or its connections gone) within the test's patience.
const NEVER: Duration = Duration::from_secs(3600);

async fn run(config: BenchConfig) -> bench::BenchReport {
    within(PATIENCE, bench::run(config, Shutdown::never()))
        .await
        .expect("bench finishes in time")
        .expect("bench runs")
}

#[async_std::test]
async fn measures_a_duplex_server_with_every_reply_checked() {
    let server = TestServer::start(quick_config()).await;
    let report = run(config(server.addr, 5, 4, 100)).await;
    assert_eq!(report.connected, 5);
    assert_eq!(report.errors(), 0, "{report}");
    assert!(report.replies > 0);
    let latency = report.latency;
    assert!(
        latency.p50_us > 0.0 && latency.p50_us <= latency.p90_us,
        "{report}"
    );
    assert!(latency.p90_us <= latency.p99_us && latency.p99_us <= latency.max_us);
    assert_eq!(report.latency_from, bench::LatencyFrom::SendTime);
    assert!(report.sent_latency.is_none(), "closed loop: one measure");
    // Every reply the bench counted was counted by the server, once the
    // write that sent it returned: all of them by the time the bench's
    // connections have left.
    server.wait_for_clients(0).await;
    let totals = server.registry.snapshot().await.totals;
    assert!(
        totals.messages_out >= report.replies,
        "{totals:?} vs {report}"
    );
    server.stop().await;
}

#[async_std::test]
async fn measures_a_tls_server_and_counts_connections_it_cannot_verify() {
    let ca = TestCa::new("bench CA");
    let server = TestServer::start(ServerConfig {
        tls: Some(ca.leaf("server", Leaf::Good)),
        ..quick_config()
    })
    .await;
    let tls = ClientTls::new(Some(&ca.ca_pem()), "localhost").expect("TLS");
    let report = run(BenchConfig {
        tls: Some(tls),
        ..config(server.addr, 5, 2, 100)
    })
    .await;
    assert_eq!((report.connected, report.errors()), (5, 0), "{report}");
    assert!(report.tls && report.replies > 0, "{report}");
    assert!(report.connects_per_second() > 0.0, "{report}");
    assert!(
        report.to_string().contains("each a TLS handshake"),
        "{report}"
    );
    // Trusting another CA, every connect fails, and is counted.
    let stranger = TestCa::new("stranger CA");
    let tls = ClientTls::new(Some(&stranger.ca_pem()), "localhost").expect("TLS");
    let report = run(BenchConfig {
        tls: Some(tls),
        ..config(server.addr, 3, 1, 16)
    })
    .await;
    assert_eq!(
        (report.connected, report.connect_failures),
        (0, 3),
        "{report}"
    );
    let reasons: Vec<&String> = report.connect_errors.keys().collect();
    assert_eq!(reasons, ["TLS: certificate issuer unknown"], "{report}");
    server.stop().await;
}

#[async_std::test]
async fn a_paced_run_offers_its_rate_and_no_more() {
    let server = TestServer::start(quick_config()).await;
    let rate = 500.0;
    let report = run(BenchConfig {
        rate: Some(rate),
        ..config(server.addr, 4, 1, 16)
    })
    .await;
    assert_eq!(report.errors(), 0, "{report}");
    assert_eq!(report.offered_rate, Some(rate));
    // Unpaced, four clients get thousands of replies in 300 ms; paced, about
    // 150. The bound leaves room for a slow machine, not for a missing pacer.
    let offered = rate * report.seconds;
    assert!(report.replies > 0, "{report}");
    assert!(report.replies as f64 <= offered * 1.5 + 4.0, "{report}");
    server.stop().await;
}

/// A server that greets, then answers each line with `reply(line)`.
async fn fake_server(reply: fn(&[u8]) -> Vec<u8>) -> std::net::SocketAddr {
    FakeServer::new(reply).start().await.0
}

/// A server that greets, then reads `lines` lines at a time and answers them
/// with one `reply(lines)` (without the last newline).
async fn fake_server_per(lines: usize, reply: fn(&[u8]) -> Vec<u8>) -> std::net::SocketAddr {
    FakeServer {
        lines,
        ..FakeServer::new(reply)
    }
    .start()
    .await
    .0
}

/// The fake servers' parts.
struct FakeServer {
    /// Lines read for each reply.
    lines: usize,
    reply: fn(&[u8]) -> Vec<u8>,
    /// On every connection, once, after answering this many replies, stop
    /// reading (and so answering) for this long.
    stall: Option<(usize, Duration)>,
    /// Close each connection after this many replies.
    close_after: Option<usize>,
    /// Greet only this long after the connect.
    greet_after: Option<Duration>,
}

/// A duplex-style reply to one line.
fn echo(line: &[u8]) -> Vec<u8> {
    let mut reply = b"1:2:3 - server reply: ".to_vec();
    reply.extend_from_slice(line);
    reply.push(b'\n');
    reply
}

impl FakeServer {
    fn new(reply: fn(&[u8]) -> Vec<u8>) -> FakeServer {
        FakeServer {
            lines: 1,
            reply,
            stall: None,
            close_after: None,
            greet_after: None,
        }
    }

    /// Listens on a loopback port; also returns every peer's address as it
    /// connects.
    async fn start(self) -> (std::net::SocketAddr, Receiver<std::net::SocketAddr>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        let (peers, seen) = async_std::channel::unbounded(); // a test's few peers
        let FakeServer {
            lines,
            reply,
            stall,
            close_after,
            greet_after,
        } = self;
        spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                // The test may not be listening.
                let _ = peers.try_send(peer);
                spawn(async move {
                    let mut reader = BufReader::new(stream.clone());
                    let mut writer = stream;
                    if let Some(delay) = greet_after {
                        sleep(delay).await;
                    }
                    writer.write_all(b"Hello\n").await.ok()?;
                    let mut read = Vec::new();
                    for replies in 1.. {
                        read.clear();
                        for _ in 0..lines {
                            if reader.read_until(b'\n', &mut read).await.ok()? == 0 {
                                return Some(());
                            }
                        }
                        read.pop();
                        writer.write_all(&reply(&read)).await.ok()?;
                        match stall {
                            Some((after, pause)) if after == replies => sleep(pause).await,
                            _ => {}
                        }
                        if close_after == Some(replies) {
                            // A FIN, then what the client still sends is
                            // read and dropped: closing with a message
                            // unread (the client answers fast) would be a
                            // reset instead.
                            writer.shutdown(std::net::Shutdown::Write).ok()?;
                            while reader.read_until(b'\n', &mut read).await.ok()? > 0 {}
                            return Some(());
                        }
                    }
                    Some(())
                });
            }
        });
        (addr, seen)
    }
}

#[async_std::test]
async fn a_paced_run_measures_from_the_due_time_so_a_stall_shows_in_its_p99() {
    // Each connection stalls for 200 ms once, after its 40th reply (about
    // 200 ms into the run, at 200 messages/s each).
    let stall = Duration::from_millis(200);
    let (addr, _) = FakeServer {
        stall: Some((40, stall)),
        ..FakeServer::new(echo)
    }
    .start()
    .await;
    let report = run(BenchConfig {
        rate: Some(400.0),
        duration: Duration::from_secs(1),
        ..config(addr, 2, 1, 16)
    })
    .await;
    assert_eq!(report.errors(), 0, "{report}");
    assert_eq!(report.latency_from, LatencyFrom::DueTime);
    let corrected = report.latency;
    let sent = report.sent_latency.expect("a paced run reports both");
    // Every message due in the stall's first 100 ms (about 40 of the run's
    // 400: a tenth) waits at least its last 100 ms for its reply, however
    // late it was written.
    assert!(corrected.p99_us >= 100_000.0, "{report}");
    // Measured from the write, only the one message in flight on each
    // connection when it stalled sees it: the stall is in the max...
    assert!(sent.max_us >= 100_000.0, "{report}");
    // ...and a message is never written before it is due, so the
    // uncorrected figures can only be lower.
    for (from_write, from_due) in [
        (sent.p50_us, corrected.p50_us),
        (sent.p90_us, corrected.p90_us),
        (sent.p99_us, corrected.p99_us),
        (sent.max_us, corrected.max_us),
    ] {
        assert!(from_write <= from_due, "{report}");
    }
    let text = report.to_string();
    assert!(
        text.contains("from due time (corrected for coordinated omission)"),
        "{text}"
    );
    assert!(text.contains("  from send  p50 "), "{text}");
    let json = report.to_json();
    assert_eq!(
        json["latency_from"],
        "due time (corrected for coordinated omission)"
    );
    assert_eq!(json["sent_p99_us"], sent.p99_us);
}

#[async_std::test]
async fn connections_come_from_every_source_address_in_turn() {
    let (addr, seen) = FakeServer::new(echo).start().await;
    let sources = SourceAddrs::parse("127.0.0.1,127.0.0.2").expect("valid");
    let report = run(BenchConfig {
        source_addrs: Some(sources),
        ..config(addr, 6, 1, 16)
    })
    .await;
    assert_eq!((report.connected, report.errors()), (6, 0), "{report}");
    assert!(report.replies > 0, "{report}");
    // The server saw three peers from each address...
    let mut peers = std::collections::BTreeMap::new();
    while let Ok(peer) = seen.try_recv() {
        *peers.entry(peer.ip()).or_insert(0u64) += 1;
    }
    let one: IpAddr = "127.0.0.1".parse().expect("ip");
    let two: IpAddr = "127.0.0.2".parse().expect("ip");
    assert_eq!(peers, [(one, 3), (two, 3)].into(), "{report}");
    // ...and the report counts the same, adding up to every connection.
    assert_eq!(report.source_addrs, peers, "{report}");
    let counted: u64 = report.source_addrs.values().sum();
    assert_eq!(counted, report.connected as u64);
    let text = report.to_string();
    assert!(
        text.contains("from         127.0.0.1 3, 127.0.0.2 3 (connections per source address)"),
        "{text}"
    );
    assert_eq!(report.to_json()["source_addrs"]["127.0.0.2"], 3);
}

#[async_std::test]
async fn a_source_address_of_the_other_family_is_refused_before_any_connect() {
    let (addr, seen) = FakeServer::new(echo).start().await;
    let config = BenchConfig {
        source_addrs: Some(SourceAddrs::parse("127.0.0.1,::1").expect("valid")),
        ..config(addr, 2, 1, 16)
    };
    let error = within(PATIENCE, bench::run(config, Shutdown::never()))
        .await
        .expect("in time")
        .expect_err("::1 cannot reach 127.0.0.1");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    assert!(error.to_string().contains("source address ::1"), "{error}");
    assert!(seen.try_recv().is_err(), "nothing connected");
}

#[async_std::test]
async fn once_every_connection_sends_one_message_and_the_run_ends_with_the_last_reply() {
    let server = TestServer::start(quick_config()).await;
    let clients = 20;
    let report = run(BenchConfig {
        once: true,
        // Longer than the test's patience: the run ends when the replies
        // are in, or `run` fails.
        duration: NEVER,
        ..config(server.addr, clients, 1, 16)
    })
    .await;
    assert_eq!(report.connected, clients, "{report}");
    assert_eq!(
        (report.replies, report.errors()),
        (clients as u64, 0),
        "{report}"
    );
    assert!(
        report
            .to_string()
            .contains("once         one message per connection: 20 of 20 answered"),
        "{report}"
    );
    // Exactly one message each reached the server.
    let totals = server.registry.snapshot().await.totals;
    assert_eq!(totals.messages_in, clients as u64);
    server.stop().await;
}

#[async_std::test]
async fn a_run_whose_every_connection_is_dropped_ends_then() {
    // A server that closes every connection after its third reply.
    let (addr, _) = FakeServer {
        close_after: Some(3),
        ..FakeServer::new(echo)
    }
    .start()
    .await;
    // Ends when the last connection is dropped, or `run` fails.
    let report = run(BenchConfig {
        duration: NEVER,
        ..config(addr, 2, 1, 16)
    })
    .await;
    assert_eq!((report.disconnects, report.replies), (2, 6), "{report}");
    let reasons: Vec<_> = report.disconnect_errors.iter().collect();
    assert_eq!(reasons, [(&"closed by the server".to_owned(), &2)]);
}

#[async_std::test]
async fn a_server_that_answers_per_read_is_named_not_counted_as_wrong() {
    // As the original Node server: one reply per chunk read, echoing the
    // chunk (here two pipelined messages).
    let addr = fake_server_per(2, echo).await;
    let report = run(config(addr, 2, 2, 16)).await;
    assert_eq!(report.errors(), 0, "{report}");
    assert!(
        report.merged > 0 && report.replies >= report.merged,
        "{report}"
    );
    assert!(
        report
            .to_string()
            .contains("replies per read, not per line"),
        "{report}"
    );
}

#[async_std::test]
async fn wrong_echoes_are_counted_as_mismatches() {
    let addr = fake_server(|_| b"1:2:3 - server reply: something else\n".to_vec()).await;
    let report = run(config(addr, 2, 1, 16)).await;
    assert!(report.mismatches > 0, "{report}");
    assert_eq!(report.replies, 0);
}

#[async_std::test]
async fn the_blank_line_the_node_server_adds_after_each_reply_is_skipped() {
    let addr = fake_server(|line| {
        // The original server echoes the raw chunk (newline included) and adds one.
        let mut reply = b"1:2:3 - server reply: ".to_vec();
        reply.extend_from_slice(line);
        reply.extend_from_slice(b"\n\n");
        reply
    })
    .await;
    let report = run(config(addr, 2, 1, 16)).await;
    assert_eq!(report.errors(), 0, "{report}");
    assert!(report.replies > 0);
}

#[async_std::test]
async fn a_server_that_is_not_there_is_a_counted_failure() {
    let report = run(config(common::refused_addr(), 3, 1, 16)).await;
    assert_eq!(report.connected, 0);
    assert_eq!(report.connect_failures, 3);
    // Why, and that no latency was measured.
    let reasons: Vec<_> = report.connect_errors.iter().collect();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].0.contains("refused") && *reasons[0].1 == 3,
        "{reasons:?}"
    );
    let text = report.to_string();
    assert!(text.contains("latency      no replies"), "{text}");
    assert!(
        text.contains("failed connect: Connection refused"),
        "{text}"
    );
}

#[async_std::test]
async fn a_full_server_is_a_failed_connect_in_the_servers_own_words() {
    let mut full = quick_config();
    full.registry.max_clients = 1;
    let server = TestServer::start(full).await;
    let _holder = Peer::greeted(server.addr).await;
    server.wait_for_clients(1).await;
    let report = run(config(server.addr, 2, 1, 16)).await;
    let reasons: Vec<_> = report.connect_errors.iter().collect();
    let full = "error: server full (max 1 clients)".to_owned();
    assert_eq!(reasons, [(&full, &2)], "{report}");
    assert!(
        report
            .to_string()
            .contains("failed connect: error: server full (max 1 clients) (2)"),
        "{report}"
    );
    server.stop().await;
}

#[async_std::test]
async fn a_plain_bench_on_a_tls_port_says_so_without_waiting_for_its_timeout() {
    let ca = TestCa::new("plain bench CA");
    let mut tls = ServerConfig {
        tls: Some(ca.leaf("server", Leaf::Good)),
        ..quick_config()
    };
    // The server's own limit cannot end the wait: only what the bench sends
    // makes it answer before the bench's 10 s connect timeout (and the
    // test's patience).
    tls.session.handshake_timeout = NEVER;
    let server = TestServer::start(tls).await;
    let report = run(config(server.addr, 2, 1, 16)).await;
    let reasons: Vec<_> = report.connect_errors.iter().collect();
    let told = "error: this server speaks TLS".to_owned();
    assert_eq!(reasons, [(&told, &2)], "{report}");
    assert_eq!(report.to_json()["connect_errors"][&told], 2);
    server.stop().await;
}

/// A TLS server that is not duplex (rustls, as is): it says nothing to
/// plain text but a TLS alert.
async fn foreign_tls_server(files: &duplex::server::TlsFiles) -> std::net::SocketAddr {
    use futures_rustls::pki_types::pem::PemObject;
    use futures_rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use futures_rustls::rustls;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .expect("certificate file")
        .map(|cert| cert.expect("certificate PEM"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(&files.key).expect("key");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = futures_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("bound");
    spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            // Plain text fails the handshake: that failure is the point.
            spawn(async move { acceptor.accept(stream).await.map(drop) });
        }
    });
    addr
}

#[async_std::test]
async fn a_plain_bench_recognises_another_tls_servers_record() {
    let ca = TestCa::new("foreign CA");
    let addr = foreign_tls_server(&ca.leaf("server", Leaf::Good)).await;
    let report = run(config(addr, 2, 1, 16)).await;
    let reasons: Vec<_> = report.connect_errors.iter().collect();
    assert_eq!(reasons.len(), 1, "{report}");
    assert!(
        reasons[0].0.contains("speaks TLS") && *reasons[0].1 == 2,
        "{report}"
    );
}

#[async_std::test]
async fn a_server_slow_to_greet_answers_the_nudge_and_no_reply_is_wrong() {
    static EMPTY_LINES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    fn counting_echo(line: &[u8]) -> Vec<u8> {
        if line.is_empty() {
            EMPTY_LINES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        echo(line)
    }
    // Past the half second a plain connection waits before its empty line.
    let (addr, _) = FakeServer {
        greet_after: Some(Duration::from_millis(1500)),
        ..FakeServer::new(counting_echo)
    }
    .start()
    .await;
    let report = run(config(addr, 2, 1, 16)).await;
    assert_eq!((report.connected, report.errors()), (2, 0), "{report}");
    assert!(report.replies > 0, "{report}");
    // Each connection sent one, and its reply was not taken for a message's.
    assert_eq!(
        EMPTY_LINES.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "{report}"
    );
}

#[async_std::test]
async fn a_line_too_long_for_the_server_is_the_reason_it_dropped_not_mismatches() {
    let mut short = quick_config();
    short.session.max_line = 8;
    let server = TestServer::start(short).await;
    // Ends when both connections are dropped, or `run` fails.
    let report = run(BenchConfig {
        duration: NEVER,
        ..config(server.addr, 2, 1, 16)
    })
    .await;
    assert_eq!((report.disconnects, report.mismatches), (2, 0), "{report}");
    let reasons: Vec<_> = report.disconnect_errors.iter().collect();
    let too_long = "error: line too long (max 8 bytes)".to_owned();
    assert_eq!(reasons, [(&too_long, &2)], "{report}");
    assert!(
        report
            .to_string()
            .contains("dropped connection: error: line too long (max 8 bytes) (2)"),
        "{report}"
    );
    assert_eq!(report.to_json()["disconnect_errors"][&too_long], 2);
    server.stop().await;
}

#[test]
fn the_bench_role_prints_one_json_summary_and_reports_server_memory() {
    let (server, addr, _logs) = start_server(&[]);
    let pid = server.id().to_string();
    let output = duplex()
        .args([
            "--role",
            "bench",
            "--addr",
            &addr,
            "--json",
            "--server-pid",
            &pid,
        ])
        .args(["--clients", "4", "--duration", "300ms", "--depth", "2"])
        .args(["--source-addrs", "127.0.0.1-127.0.0.2"])
        .stderr(Stdio::null())
        .output()
        .expect("run bench");
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(report["connected"], 4);
    assert_eq!(report["errors"], 0);
    assert!(report["rate"].as_f64().expect("rate") > 0.0);
    assert!(report["server_rss_connected_kib"].as_u64().expect("rss") > 0);
    assert!(
        report["server_cpu_us_per_reply"]
            .as_f64()
            .expect("server CPU")
            > 0.0
    );
    assert!(report["bench_cpu_us_per_reply"].as_f64().expect("own CPU") > 0.0);
    // Latency percentiles, p90 among them, and what they count from.
    let us = |key: &str| report[key].as_f64().expect(key);
    assert!(us("p50_us") <= us("p90_us") && us("p90_us") <= us("p99_us"));
    assert_eq!(report["latency_from"], "send time (closed loop)");
    assert!(report["sent_p99_us"].is_null(), "closed loop: one measure");
    // Two connections from each source address.
    assert_eq!(
        report["source_addrs"],
        serde_json::json!({"127.0.0.1": 2, "127.0.0.2": 2})
    );
    // One figure per CPU the machine has online, each a percentage.
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } as usize;
    let busy = report["cpu_busy_pct"].as_array().expect("CPU figures");
    assert_eq!(busy.len(), cpus, "{stdout}");
    assert!(
        busy.iter()
            .all(|b| (0.0..=100.0).contains(&b.as_f64().expect("number")))
    );
    signal(&server, libc::SIGTERM);
    assert!(wait_with_timeout(server).success());
}

#[test]
fn the_bench_role_exits_1_when_connections_fail() {
    let addr = common::refused_addr().to_string();
    let output = duplex()
        .args([
            "--role",
            "bench",
            "--addr",
            &addr,
            "--clients",
            "2",
            "--duration",
            "100ms",
        ])
        .stderr(Stdio::null())
        .output()
        .expect("run bench");
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    assert!(stdout.contains("2 failed connects"), "{stdout}");
}
