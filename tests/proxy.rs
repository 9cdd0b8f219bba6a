//! The PROXY protocol, in process, with headers written by hand (the real
//! balancer is in `tests/haproxy.rs`): both versions name the client, bytes
//! after the header are the client's, a health check leaves quietly and is
//! counted apart, a connection is a client (listed, admitted) only once its
//! header named one, and a connection without a valid header from a trusted
//! address is closed and counted, costing nobody else anything.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::certs::{Leaf, TestCa, TlsPeer};
use common::{Peer, TestServer, quick_config};
use duplex::server::{ServerConfig, Snapshot, TrustedProxies};

fn proxied(trusted: &str) -> ServerConfig {
    let mut config = quick_config();
    config.proxy_protocol = Some(TrustedProxies::parse(trusted).expect("CIDRs"));
    config.session.handshake_timeout = Duration::from_millis(300);
    config
}

/// A v2 PROXY header for a TCP/IPv4 client at `client`.
/// The listed clients' addresses, in the snapshot's order.
fn peers_of(snapshot: &Snapshot) -> Vec<String> {
    snapshot
        .clients
        .iter()
        .map(|c| c.peer.to_string())
        .collect()
}

fn v2_header(client: SocketAddr, command: u8) -> Vec<u8> {
    let SocketAddr::V4(client) = client else {
        panic!("IPv4")
    };
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x20 | command, 0x11, 0, 12]);
    header.extend_from_slice(&client.ip().octets());
    header.extend_from_slice(&[127, 0, 0, 1]);
    header.extend_from_slice(&client.port().to_be_bytes());
    header.extend_from_slice(&8000u16.to_be_bytes());
    header
}

#[async_std::test]
async fn both_versions_name_the_client_and_what_follows_the_header_is_its() {
    let server = TestServer::start(proxied("127.0.0.1/32")).await;
    let mut v1 = Peer::connect(server.addr).await;
    v1.send(b"PROXY TCP4 192.0.2.1 127.0.0.1 56324 8000\r\n")
        .await;
    assert_eq!(v1.line().await, b"Hello\n");
    // The header and the first message in one write: nothing of it is lost.
    let mut v2 = Peer::connect(server.addr).await;
    let mut bytes = v2_header("198.51.100.7:4242".parse().unwrap(), 1);
    bytes.extend_from_slice(b"first\n");
    v2.send(&bytes).await;
    assert_eq!(v2.line().await, b"Hello\n");
    assert_eq!(v2.reply().await, b"first");
    let snapshot = server.registry.snapshot().await;
    let peers = peers_of(&snapshot);
    assert_eq!(peers, ["192.0.2.1:56324", "198.51.100.7:4242"]);
    assert!(
        snapshot
            .clients
            .iter()
            .all(|c| c.via.is_some_and(|via| via.ip().is_loopback()))
    );
    server.stop().await;
}

#[async_std::test]
async fn a_health_check_is_closed_quietly_and_bad_headers_are_refused_and_counted() {
    let server = TestServer::start(proxied("127.0.0.1/32")).await;
    let mut check = Peer::connect(server.addr).await;
    check
        .send(&v2_header("127.0.0.1:1".parse().unwrap(), 0))
        .await;
    assert_eq!(check.rest().await, b"", "closed without a greeting");
    for bad in [
        &b"hello\n"[..],
        b"PROXY TCP4 nonsense\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff",
    ] {
        let mut peer = Peer::connect(server.addr).await;
        peer.send(bad).await;
        assert_eq!(peer.until_closed().await, b"", "{bad:?} is closed");
    }
    // Nothing at all: closed at the timeout.
    let mut silent = Peer::connect(server.addr).await;
    assert_eq!(silent.until_closed().await, b"");
    server.wait_for_clients(0).await;
    let snapshot = server.registry.snapshot().await;
    assert_eq!(
        snapshot.proxy_failed, 4,
        "the health check is not a failure"
    );
    assert_eq!(snapshot.proxy_local, 1, "the health check, counted apart");
    assert_eq!(snapshot.admitted, 0, "none of them was a client");
    server.stop().await;
}

#[async_std::test]
async fn a_connection_awaiting_its_header_holds_a_slot_but_is_no_client_yet() {
    let mut config = proxied("127.0.0.1/32");
    config.registry.max_clients = 2;
    let server = TestServer::start(config).await;
    let mut waiting = Peer::connect(server.addr).await;
    server.wait_for_clients(1).await;
    let mut client = Peer::connect(server.addr).await;
    client
        .send(b"PROXY TCP4 192.0.2.1 127.0.0.1 56324 8000\r\n")
        .await;
    assert_eq!(client.line().await, b"Hello\n");
    let snapshot = server.registry.snapshot().await;
    let peers = peers_of(&snapshot);
    assert_eq!(peers, ["192.0.2.1:56324"], "only the client is listed");
    assert_eq!(snapshot.awaiting_header, 1);
    assert_eq!(snapshot.admitted, 1);
    // Both hold a slot: a third connection finds the server full.
    let mut third = Peer::connect(server.addr).await;
    third
        .send(b"PROXY TCP4 192.0.2.3 127.0.0.1 1 8000\r\n")
        .await;
    assert_eq!(third.line().await, b"error: server full (max 2 clients)\n");
    // Once its header comes, the waiting connection is a client too.
    waiting
        .send(b"PROXY TCP4 192.0.2.2 127.0.0.1 2 8000\r\n")
        .await;
    assert_eq!(waiting.line().await, b"Hello\n");
    let snapshot = server.registry.snapshot().await;
    assert_eq!((snapshot.clients.len(), snapshot.awaiting_header), (2, 0));
    assert_eq!((snapshot.admitted, snapshot.rejected), (2, 1));
    server.stop().await;
}

#[async_std::test]
async fn a_v2_header_of_up_to_2048_bytes_after_its_fixed_16_is_taken_and_a_longer_one_refused() {
    let server = TestServer::start(proxied("127.0.0.1/32")).await;
    // A TCP/IPv4 header padded with a NOOP TLV to `after_fixed` bytes past
    // its fixed part.
    let padded = |after_fixed: usize| {
        let mut header = v2_header("198.51.100.7:4242".parse().unwrap(), 1);
        header[14..16].copy_from_slice(&(after_fixed as u16).to_be_bytes());
        let noop = after_fixed - 12 - 3; // the addresses, the TLV's type and length
        header.push(0x04); // PP2_TYPE_NOOP
        header.extend_from_slice(&(noop as u16).to_be_bytes());
        header.resize(header.len() + noop, 0);
        header
    };
    let mut longest = Peer::connect(server.addr).await;
    longest.send(&padded(2048)).await;
    assert_eq!(longest.line().await, b"Hello\n");
    let mut over = Peer::connect(server.addr).await;
    over.send(&padded(2049)).await;
    assert_eq!(over.until_closed().await, b"", "refused, without a word");
    server.wait_for_clients(1).await;
    let snapshot = server.registry.snapshot().await;
    assert_eq!((snapshot.proxy_failed, snapshot.clients.len()), (1, 1));
    assert_eq!(snapshot.clients[0].peer.to_string(), "198.51.100.7:4242");
    server.stop().await;
}

#[async_std::test]
async fn a_header_from_an_untrusted_address_is_refused() {
    let server = TestServer::start(proxied("10.0.0.0/8")).await;
    let mut peer = Peer::connect(server.addr).await;
    peer.send(b"PROXY TCP4 192.0.2.1 127.0.0.1 56324 8000\r\n")
        .await;
    assert_eq!(peer.until_closed().await, b"");
    server.wait_for_clients(0).await;
    assert_eq!(server.registry.snapshot().await.proxy_failed, 1);
    server.stop().await;
}

#[async_std::test]
async fn the_header_comes_before_the_tls_handshake() {
    let ca = TestCa::new("proxy TLS CA");
    let mut config = proxied("127.0.0.1/32");
    config.tls = Some(ca.leaf("server", Leaf::Good));
    let server = TestServer::start(config).await;
    let header = v2_header("203.0.113.9:5555".parse().unwrap(), 1);
    let mut peer = TlsPeer::connect_after(server.addr, &ca.ca_pem(), &header)
        .await
        .expect("TLS after the header");
    assert_eq!(peer.line().await, b"Hello");
    let snapshot = server.registry.snapshot().await;
    assert_eq!(snapshot.clients[0].peer.to_string(), "203.0.113.9:5555");
    server.stop().await;
}

#[async_std::test]
async fn a_client_the_proxy_cannot_name_is_served_under_the_proxys_address() {
    let server = TestServer::start(proxied("127.0.0.1/32")).await;
    let mut peer = Peer::connect(server.addr).await;
    peer.send(b"PROXY UNKNOWN\r\nhi\n").await;
    assert_eq!(peer.line().await, b"Hello\n");
    assert_eq!(peer.reply().await, b"hi");
    let snapshot = server.registry.snapshot().await;
    assert_eq!(snapshot.clients[0].peer, peer.local_addr());
    server.stop().await;
}

#[async_std::test]
async fn a_shutdown_waits_for_a_header_on_its_way_and_sends_the_notice() {
    let server = TestServer::start(proxied("127.0.0.1/32")).await;
    let mut peer = Peer::connect(server.addr).await;
    server.wait_for_clients(1).await;
    // The server starts shutting down before the header comes.
    server.trigger.trigger();
    async_std::task::sleep(Duration::from_millis(50)).await;
    peer.send(b"PROXY TCP4 192.0.2.1 127.0.0.1 56324 8000\r\n")
        .await;
    let rest = peer.until_closed().await;
    assert_eq!(rest, b"Hello\nnotice: server shutting down\n");
    common::within(common::PATIENCE, server.task)
        .await
        .expect("stops");
}
