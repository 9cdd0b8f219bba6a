//! The per-address limits, through the whole server: one address cannot
//! hold more than `--max-clients-per-ip` clients nor connect faster than
//! `--connect-rate-per-ip`, while other addresses are served as before;
//! behind a balancer the PROXY header's address is the one counted; and a
//! flood from many addresses leaves the table bounded, then empty.
//! Connections come from many addresses of 127.0.0.0/8, all local on Linux.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::process::Child;

use common::process::{
    duplex, rss_kib, signal, start_server, stderr_lines, wait_for, wait_with_timeout,
};
use common::{Peer, TestServer, quick_config};
use duplex::server::{ConnectRate, ServerConfig, TrustedProxies};

const TOO_MANY: &[u8] = b"error: too many connections from your address\n";
const TOO_FAST: &[u8] = b"error: connecting too fast\n";

fn loopback(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + n))
}

/// A rate no test waits out: one connect per thousand seconds.
fn glacial(burst: u32) -> Option<ConnectRate> {
    Some(ConnectRate::per_second(0.001, burst))
}

fn limited(max_clients: Option<usize>, rate: Option<ConnectRate>) -> ServerConfig {
    let mut config = quick_config();
    config.registry.per_ip.max_clients = max_clients;
    config.registry.per_ip.connect_rate = rate;
    config
}

#[async_std::test]
async fn one_address_holds_at_most_max_clients_per_ip_and_others_are_served() {
    let server = TestServer::start(limited(Some(2), None)).await;
    let mut first = Peer::connect_from(loopback(1), server.addr).await;
    assert_eq!(first.line().await, b"Hello\n");
    let mut second = Peer::connect_from(loopback(1), server.addr).await;
    assert_eq!(second.line().await, b"Hello\n");
    let mut third = Peer::connect_from(loopback(1), server.addr).await;
    assert_eq!(third.until_closed().await, TOO_MANY, "told, then closed");
    // Another address is not counted with it.
    let mut other = Peer::connect_from(loopback(2), server.addr).await;
    assert_eq!(other.line().await, b"Hello\n");
    other.send(b"still served\n").await;
    assert_eq!(other.reply().await, b"still served");
    // Once one of its clients leaves, the address may connect again.
    drop(first);
    server.wait_for_clients(2).await;
    let mut again = Peer::connect_from(loopback(1), server.addr).await;
    assert_eq!(again.line().await, b"Hello\n");
    let snapshot = server.registry.snapshot().await;
    assert_eq!(snapshot.per_ip.too_many, 1);
    assert_eq!((snapshot.admitted, snapshot.clients.len()), (4, 3));
    assert_eq!(snapshot.per_ip.addresses, 2);
    drop((second, again, other));
    server.wait_for_clients(0).await;
    let snapshot = server.registry.snapshot().await;
    assert_eq!(snapshot.per_ip.addresses, 0, "no client, no entry");
    server.stop().await;
}

#[async_std::test]
async fn an_address_connecting_too_fast_is_refused_past_its_burst_and_others_are_not() {
    let server = TestServer::start(limited(None, glacial(2))).await;
    for _ in 0..2 {
        let mut peer = Peer::connect_from(loopback(3), server.addr).await;
        assert_eq!(peer.line().await, b"Hello\n");
    }
    let mut over = Peer::connect_from(loopback(3), server.addr).await;
    assert_eq!(over.until_closed().await, TOO_FAST);
    let mut other = Peer::connect_from(loopback(4), server.addr).await;
    assert_eq!(other.line().await, b"Hello\n");
    let snapshot = server.registry.snapshot().await;
    assert_eq!((snapshot.per_ip.too_fast, snapshot.admitted), (1, 3));
    server.stop().await;
}

#[async_std::test]
async fn behind_a_balancer_the_address_its_header_names_is_counted() {
    let mut config = limited(Some(1), None);
    config.proxy_protocol = Some(TrustedProxies::parse("127.0.0.1/32").expect("CIDR"));
    let server = TestServer::start(config).await;
    // Every connection comes from the balancer, 127.0.0.1.
    let mut first = Peer::connect(server.addr).await;
    first
        .send(b"PROXY TCP4 192.0.2.1 127.0.0.1 1000 8000\r\n")
        .await;
    assert_eq!(first.line().await, b"Hello\n");
    let mut same = Peer::connect(server.addr).await;
    same.send(b"PROXY TCP4 192.0.2.1 127.0.0.1 1001 8000\r\n")
        .await;
    assert_eq!(same.until_closed().await, TOO_MANY);
    let mut other = Peer::connect(server.addr).await;
    other
        .send(b"PROXY TCP4 192.0.2.2 127.0.0.1 1000 8000\r\n")
        .await;
    assert_eq!(other.line().await, b"Hello\n");
    server.wait_for_clients(2).await;
    let snapshot = server.registry.snapshot().await;
    assert_eq!(snapshot.per_ip.too_many, 1);
    assert_eq!(snapshot.admitted, 2, "the refused one was never a client");
    assert_eq!(snapshot.per_ip.addresses, 2, "192.0.2.1 and 192.0.2.2");
    server.stop().await;
}

#[async_std::test]
async fn past_its_bound_the_table_forgets_an_address_that_leaves_and_locks_out_none() {
    let mut config = limited(None, glacial(1));
    config.registry.per_ip.resting_max = 20;
    let server = TestServer::start(config).await;
    for n in 1..=100 {
        let mut peer = Peer::connect_from(loopback(0x1_0000 + n), server.addr).await;
        assert_eq!(peer.line().await, b"Hello\n", "address {n} is admitted");
    }
    server.wait_for_clients(0).await;
    let snapshot = server.registry.snapshot().await;
    assert_eq!(snapshot.per_ip.addresses, 20, "the bound, not 100");
    // The first 20 are remembered, and still held to their rate; the rest
    // were forgotten, and start afresh.
    let mut remembered = Peer::connect_from(loopback(0x1_0001), server.addr).await;
    assert_eq!(remembered.until_closed().await, TOO_FAST);
    let mut forgotten = Peer::connect_from(loopback(0x1_0064), server.addr).await;
    assert_eq!(forgotten.line().await, b"Hello\n");
    server.stop().await;
}

/// The `per_ip_addresses=` of a `registry snapshot` line.
fn addresses_in(line: &str) -> usize {
    let field = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("per_ip_addresses="))
        .unwrap_or_else(|| panic!("no per_ip_addresses in {line:?}"));
    field.parse().expect("a count")
}

/// Waits for a `registry snapshot` line whose table size `wanted` accepts;
/// returns that size.
fn wait_for_table(
    logs: &std::sync::mpsc::Receiver<String>,
    wanted: impl Fn(usize) -> bool,
) -> usize {
    loop {
        let addresses = addresses_in(&wait_for(logs, "registry snapshot"));
        if wanted(addresses) {
            return addresses;
        }
    }
}

fn stop(mut server: Child) {
    signal(&server, libc::SIGTERM);
    server.wait().expect("server exits");
}

#[test]
fn a_flood_from_thousands_of_addresses_leaves_the_table_and_the_memory_idle_again() {
    const ADDRESSES: u32 = 3_000;
    let (server, addr, logs) = start_server(&[
        "--max-clients-per-ip",
        "1",
        "--connect-rate-per-ip",
        "0.5",
        "--registry-interval",
        "1s",
    ]);
    let addr = addr.parse().expect("an address");
    let before = rss_kib(server.id());
    for n in 0..ADDRESSES {
        let stream = common::connect_from(loopback(0x2_0000 + n), addr);
        stream
            .set_read_timeout(Some(common::PATIENCE))
            .expect("timeout");
        let mut greeting = [0u8; 6];
        std::io::Read::read_exact(&mut &stream, &mut greeting).expect("greeted");
        assert_eq!(&greeting, b"Hello\n");
    }
    // Every address is still in the table for its bucket (two seconds)
    // or its client; SIGUSR1 shows it.
    signal(&server, libc::SIGUSR1);
    let peak = wait_for_table(&logs, |n| n > 0);
    let with_table = rss_kib(server.id());
    // Then, with no client and every bucket full, none.
    wait_for_table(&logs, |n| n == 0);
    let after = rss_kib(server.id());
    eprintln!(
        "{ADDRESSES} addresses: table {peak} at most; RSS {before} KiB before, {with_table} KiB with the table, {after} KiB after"
    );
    stop(server);
}

#[async_std::test]
async fn with_no_limit_one_address_may_hold_many_clients() {
    let server = TestServer::start(quick_config()).await;
    let mut peers = Vec::new();
    for _ in 0..50 {
        peers.push(Peer::greeted(server.addr).await);
    }
    let snapshot = server.registry.snapshot().await;
    assert_eq!((snapshot.clients.len(), snapshot.per_ip.addresses), (50, 0));
    server.stop().await;
}

#[test]
fn the_flags_are_usage_errors_when_out_of_range() {
    for bad in [
        &["--max-clients-per-ip", "0"][..],
        &["--connect-rate-per-ip", "0"],
        &["--connect-rate-per-ip", "-1"],
        &["--connect-burst-per-ip", "3"],
        &["--connect-rate-per-ip", "5", "--connect-burst-per-ip", "0"],
    ] {
        let status = common::process::duplex()
            .args(["--role", "server"])
            .args(bad)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("runs");
        assert_eq!(status.code(), Some(2), "{bad:?}");
    }
}

#[test]
fn the_duplex_client_says_why_it_was_refused_and_backs_off_further_each_time() {
    let (server, addr, _logs) = start_server(&["--max-clients-per-ip", "1"]);
    // One connection holds the only slot of 127.0.0.1.
    let holder = std::net::TcpStream::connect(&addr).expect("connect");
    let mut greeting = [0u8; 6];
    std::io::Read::read_exact(&mut &holder, &mut greeting).expect("greeted");
    let mut client = duplex()
        .args(["--role", "client", "--addr", &addr, "--backoff", "100ms"])
        .args(["--max-restarts", "3"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn client");
    let logs = stderr_lines(&mut client);
    let close = wait_for(&logs, "INFO  duplex::actors::connection] close");
    assert!(
        close.contains(
            "reason=server closed the connection: error: too many connections from your address"
        ),
        "{close}"
    );
    let backoffs: Vec<u64> = (0..3)
        .map(|_| {
            let line = wait_for(&logs, "restarting connection");
            line.split_whitespace()
                .find_map(|f| f.strip_prefix("backoff_ms="))
                .and_then(|ms| ms.parse().ok())
                .expect("backoff_ms")
        })
        .collect();
    // 100 ms, then doubling (±20 % jitter): each wait longer than the last.
    assert!(backoffs.windows(2).all(|w| w[0] < w[1]), "{backoffs:?}");
    assert_eq!(wait_with_timeout(client).code(), Some(1));
    stop(server);
}
