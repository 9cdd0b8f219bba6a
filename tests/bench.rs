//! The load generator: it measures real servers, checks every reply, and
//! reports what went wrong instead of hiding it.

mod common;

use std::process::Stdio;
use std::time::Duration;

use async_std::net::TcpListener;
use async_std::task::spawn;
use common::certs::{Leaf, TestCa};
use common::process::{duplex, signal, start_server, wait_with_timeout};
use common::{PATIENCE, TestServer, quick_config, within};
use duplex::bench::{self, BenchConfig};
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
    assert!(report.p50_us > 0.0 && report.p50_us <= report.p99_us);
    // Every reply the server sent was counted by the bench.
    let totals = server.registry.snapshot().await.totals;
    assert!(totals.messages_out >= report.replies);
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
    fake_server_per(1, reply).await
}

/// A server that greets, then reads `lines` lines at a time and answers them
/// with one `reply(lines)` (without the last newline).
async fn fake_server_per(lines: usize, reply: fn(&[u8]) -> Vec<u8>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("bound");
    spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            spawn(async move {
                let mut reader = BufReader::new(stream.clone());
                let mut writer = stream;
                writer.write_all(b"Hello\n").await.ok()?;
                let mut read = Vec::new();
                loop {
                    read.clear();
                    for _ in 0..lines {
                        if reader.read_until(b'\n', &mut read).await.ok()? == 0 {
                            return Some(());
                        }
                    }
                    read.pop();
                    writer.write_all(&reply(&read)).await.ok()?;
                }
            });
        }
    });
    addr
}

#[async_std::test]
async fn a_server_that_answers_per_read_is_named_not_counted_as_wrong() {
    // As the original Node server: one reply per chunk read, echoing the
    // chunk (here two pipelined messages).
    let addr = fake_server_per(2, |read| {
        let mut reply = b"1:2:3 - server reply: ".to_vec();
        reply.extend_from_slice(read);
        reply.extend_from_slice(b"\n");
        reply
    })
    .await;
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
