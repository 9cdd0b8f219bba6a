//! Hostile input, one test per class, through the whole server, in the
//! manner of HAProxy's regression tests for the PROXY protocol
//! (`proxy_protocol_tlv_validation.vtc` and its kin). Each class must end
//! in a refusal counted in the snapshot (with its throttled log line), no
//! panic, no slot held past `--handshake-timeout`, and nobody else slowed.
//!
//! | class | test |
//! |---|---|
//! | PROXY v1 without CRLF | `v1_without_crlf_is_refused` |
//! | PROXY v1 over 107 bytes | `v1_over_107_bytes_is_refused_before_its_end` |
//! | PROXY v1 bad ports or addresses | `v1_bad_ports_or_addresses_are_refused` |
//! | PROXY v1 `UNKNOWN` | `tests/proxy.rs`: `a_client_the_proxy_cannot_name_is_served_under_the_proxys_address` |
//! | PROXY v1 family that does not match the addresses | `v1_family_that_does_not_match_its_addresses_is_refused` |
//! | PROXY v1 split one byte per write | `v1_split_one_byte_per_write_is_taken_whole` |
//! | PROXY v1 followed at once by a close | `v1_followed_at_once_by_a_close_frees_the_slot` |
//! | PROXY v2 truncated (CVE-2019-14243's class) | `v2_truncated_is_refused` |
//! | PROXY v2 length past the bytes sent | `v2_length_past_the_bytes_sent_is_closed_at_the_timeout` |
//! | PROXY v2 TLV lengths that overrun | `v2_tlv_that_overruns_is_refused` |
//! | PROXY v2 `LOCAL` (a health check) | `tests/proxy.rs`: `a_health_check_is_closed_quietly_and_bad_headers_are_refused_and_counted` |
//! | PROXY v2 `UNSPEC` | `v2_unspec_is_served_under_the_balancers_address` |
//! | PROXY v2 from an untrusted source | `v2_from_an_untrusted_source_is_refused` |
//! | TLS: garbage before the ClientHello | `tls_garbage_before_the_client_hello_is_refused` |
//! | TLS: a ClientHello split over many reads | `tls_client_hello_one_byte_per_write_is_served` |
//! | TLS: a plain-text line to a TLS server | `tests/tls.rs`: `a_plain_client_on_the_tls_port_is_told_in_plain_text_and_counted` |
//! | TLS to a plain server | `tests/tls.rs`: `a_tls_client_on_a_plain_server_is_closed_unanswered_counted_and_logged_once` |
//! | TLS: a handshake that stops halfway | `tls_handshake_that_stops_halfway_is_closed_at_the_timeout` |
//! | the framer, any bytes in any pieces | `src/wire.rs`: `any_split_gives_the_lines_of_the_whole_stream` |
//! | the PROXY reader, any bytes in any pieces | `src/proxy.rs`: `any_split_gives_the_result_of_the_whole_stream` |
//! | a flood of one class is a few log lines | `a_flood_of_failed_handshakes_is_one_line_per_period_with_a_count`; `tests/tls.rs`: `a_tls_client_on_a_plain_server_is_closed_unanswered_counted_and_logged_once` |

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use async_std::task::spawn_blocking;
use common::certs::{Leaf, TestCa, TlsPeer, client_config};
use common::{PATIENCE, Peer, TestServer, quick_config};
use duplex::server::{ServerConfig, Snapshot, TrustedProxies};
use duplex::wire;
use futures_rustls::pki_types::ServerName;
use futures_rustls::rustls::ClientConnection;

/// Short, so that the classes that hold a connection open end quickly.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(300);

fn proxied(trusted: &str) -> ServerConfig {
    let mut config = quick_config();
    config.proxy_protocol = Some(TrustedProxies::parse(trusted).expect("CIDRs"));
    config.session.handshake_timeout = HANDSHAKE_TIMEOUT;
    config
}

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 header: `command` (0 LOCAL, 1 PROXY), `family` (0x11 TCP/IPv4, 0x00
/// UNSPEC), the length it claims, and the bytes after the fixed part.
fn v2(command: u8, family: u8, length: u16, rest: &[u8]) -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    header.extend_from_slice(&[0x20 | command, family]);
    header.extend_from_slice(&length.to_be_bytes());
    header.extend_from_slice(rest);
    header
}

/// TCP/IPv4 addresses: 192.0.2.1:56324 to 198.51.100.2:8000.
const V4_ADDRESSES: [u8; 12] = [192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0x1f, 0x40];

/// Sends `bytes` and waits for the server to close without a word.
async fn refused_unanswered(server: &TestServer, bytes: &[u8]) {
    let mut peer = Peer::connect(server.addr).await;
    peer.send(bytes).await;
    assert_eq!(peer.until_closed().await, b"", "{bytes:?} is closed");
}

/// A client of the same server served meanwhile: greeted and answered.
async fn bystander_is_served(server: &TestServer) {
    let mut peer = Peer::connect(server.addr).await;
    peer.send(b"PROXY TCP4 203.0.113.5 127.0.0.1 4000 8000\r\nstill here\n")
        .await;
    assert_eq!(peer.line().await, b"Hello\n");
    assert_eq!(peer.reply().await, b"still here");
}

/// Once every connection is gone: the snapshot, which must list no client.
async fn settled(server: &TestServer) -> Snapshot {
    server.wait_for_clients(0).await;
    let snapshot = server.registry.snapshot().await;
    assert_eq!(snapshot.connections(), 0);
    snapshot
}

#[async_std::test]
async fn v1_without_crlf_is_refused() {
    let server = TestServer::start(proxied("127.0.0.1/32")).await;
    refused_unanswered(&server, b"PROXY TCP4 192.0.2.1 127.0.0.1 56324 8000\nhi\n").await;
    bystander_is_served(&server).await;
    assert_eq!(settled(&server).await.proxy_failed, 1);
    server.stop().await;
}

#[async_std::test]
async fn v1_over_107_bytes_is_refused_before_its_end() {
    let server = TestServer::start(proxied("127.0.0.1/32")).await;
    // No newline yet: the server stops reading at 107 bytes, it does not
    // wait for the end of a header that can no longer be valid.
    let mut long = b"PROXY TCP4 192.0.2.1 127.0.0.1 56324 8000 ".to_vec();
    long.resize(200, b'x');
    let mut peer = Peer::connect(server.addr).await;
    peer.send(&long).await;
    assert_eq!(peer.until_closed().await, b"");
    // With its newline at byte 108, the same.
    long.truncate(106);
    long.extend_from_slice(b"\r\n");
    refused_unanswered(&server, &long).await;
    assert_eq!(settled(&server).await.proxy_failed, 2);
    server.stop().await;
}

#[async_std::test]
async fn v1_bad_ports_or_addresses_are_refused() {
    let server = TestServer::start(proxied("127.0.0.1/32")).await;
    let bad: [&[u8]; 6] = [
        b"PROXY TCP4 192.0.2.1 127.0.0.1 65536 8000\r\n",
        b"PROXY TCP4 192.0.2.1 127.0.0.1 -1 8000\r\n",
        b"PROXY TCP4 192.0.2.1 127.0.0.1 port 8000\r\n",
        b"PROXY TCP4 256.0.2.1 127.0.0.1 56324 8000\r\n",
        b"PROXY TCP4 192.0.2 127.0.0.1 56324 8000\r\n",
        b"PROXY TCP4 192.0.2.1 127.0.0.1 56324\r\n",
    ];
    for header in bad {
        refused_unanswered(&server, header).await;
    }
    bystander_is_served(&server).await;
    let snapshot = settled(&server).await;
    assert_eq!((snapshot.proxy_failed, snapshot.admitted), (6, 1));
    server.stop().await;
}

#[async_std::test]
async fn v1_family_that_does_not_match_its_addresses_is_refused() {
    let server = TestServer::start(proxied("127.0.0.1/32")).await;
    refused_unanswered(&server, b"PROXY TCP6 192.0.2.1 127.0.0.1 56324 8000\r\n").await;
    refused_unanswered(&server, b"PROXY TCP4 2001:db8::1 ::1 56324 8000\r\n").await;
    refused_unanswered(&server, b"PROXY TCP4 192.0.2.1 ::1 56324 8000\r\n").await;
    assert_eq!(settled(&server).await.proxy_failed, 3);
    server.stop().await;
}

#[async_std::test]
async fn v1_split_one_byte_per_write_is_taken_whole() {
    let server = TestServer::start(proxied("127.0.0.1/32")).await;
    let stream = async_std::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut peer = Peer::from_stream(stream);
    for byte in b"PROXY TCP4 192.0.2.1 127.0.0.1 56324 8000\r\nfirst\n" {
        peer.send(&[*byte]).await;
    }
    assert_eq!(peer.line().await, b"Hello\n");
    assert_eq!(peer.reply().await, b"first", "nothing after it was lost");
    let snapshot = server.registry.snapshot().await;
    assert_eq!(snapshot.clients[0].peer.to_string(), "192.0.2.1:56324");
    server.stop().await;
}

#[async_std::test]
async fn v1_followed_at_once_by_a_close_frees_the_slot() {
    let server = TestServer::start(proxied("127.0.0.1/32")).await;
    let mut peer = Peer::connect(server.addr).await;
    peer.send(b"PROXY TCP4 192.0.2.1 127.0.0.1 56324 8000\r\n")
        .await;
    peer.finish_writing();
    assert_eq!(peer.until_closed().await, b"Hello\n");
    // A header and a close in one go, unread: the same.
    let mut gone = std::net::TcpStream::connect(server.addr).expect("connect");
    gone.write_all(&v2(1, 0x11, 12, &V4_ADDRESSES))
        .expect("write");
    drop(gone);
    // Greeted after it (accepts are first in, first out), so it was counted.
    bystander_is_served(&server).await;
    let snapshot = settled(&server).await;
    assert_eq!((snapshot.admitted, snapshot.proxy_failed), (3, 0));
    server.stop().await;
}

#[async_std::test]
async fn v2_truncated_is_refused() {
    let server = TestServer::start(proxied("127.0.0.1/32")).await;
    // Part of the signature, then a close.
    let mut cut = Peer::connect(server.addr).await;
    cut.send(&V2_SIGNATURE[..7]).await;
    cut.finish_writing();
    assert_eq!(cut.until_closed().await, b"");
    // The fixed part whole, but an address block too short for its family
    // (4 bytes for TCP/IPv4's 12): CVE-2019-14243 read past such a block.
    refused_unanswered(&server, &v2(1, 0x11, 4, &V4_ADDRESSES[..4])).await;
    // IPv6's 36 bytes announced as 12.
    refused_unanswered(&server, &v2(1, 0x21, 12, &V4_ADDRESSES)).await;
    bystander_is_served(&server).await;
    assert_eq!(settled(&server).await.proxy_failed, 3);
    server.stop().await;
}

#[async_std::test]
async fn v2_length_past_the_bytes_sent_is_closed_at_the_timeout() {
    let server = TestServer::start(proxied("127.0.0.1/32")).await;
    // 112 bytes announced, 12 sent: the server waits for the rest, for
    // the handshake timeout only, and serves others meanwhile.
    let mut waiting = Peer::connect(server.addr).await;
    waiting.send(&v2(1, 0x11, 112, &V4_ADDRESSES)).await;
    server.wait_for_clients(1).await;
    bystander_is_served(&server).await;
    assert_eq!(waiting.until_closed().await, b"");
    let snapshot = settled(&server).await;
    assert_eq!((snapshot.proxy_failed, snapshot.admitted), (1, 1));
    server.stop().await;
}

#[async_std::test]
async fn v2_tlv_that_overruns_is_refused() {
    let server = TestServer::start(proxied("127.0.0.1/32")).await;
    // A NOOP TLV that says 256 bytes, in a header that holds 2 of them.
    let mut rest = V4_ADDRESSES.to_vec();
    rest.extend_from_slice(&[0x04, 0x01, 0x00, 0, 0]);
    refused_unanswered(&server, &v2(1, 0x11, 12 + 5, &rest)).await;
    // A TLV cut short in its own 3-byte type and length.
    let mut rest = V4_ADDRESSES.to_vec();
    rest.extend_from_slice(&[0x04, 0x00]);
    refused_unanswered(&server, &v2(1, 0x11, 12 + 2, &rest)).await;
    // A well-formed TLV is taken.
    let mut rest = V4_ADDRESSES.to_vec();
    rest.extend_from_slice(&[0x04, 0x00, 0x02, 0, 0]);
    let mut fine = Peer::connect(server.addr).await;
    fine.send(&v2(1, 0x11, 12 + 5, &rest)).await;
    assert_eq!(fine.line().await, b"Hello\n");
    drop(fine);
    let snapshot = settled(&server).await;
    assert_eq!((snapshot.proxy_failed, snapshot.admitted), (2, 1));
    server.stop().await;
}

#[async_std::test]
async fn v2_unspec_is_served_under_the_balancers_address() {
    let server = TestServer::start(proxied("127.0.0.1/32")).await;
    let mut peer = Peer::connect(server.addr).await;
    let mut bytes = v2(1, 0x00, 0, b"");
    bytes.extend_from_slice(b"hi\n");
    peer.send(&bytes).await;
    assert_eq!(peer.line().await, b"Hello\n");
    assert_eq!(peer.reply().await, b"hi");
    let snapshot = server.registry.snapshot().await;
    assert_eq!(snapshot.clients[0].peer, peer.local_addr());
    server.stop().await;
}

#[async_std::test]
async fn v2_from_an_untrusted_source_is_refused() {
    let server = TestServer::start(proxied("10.0.0.0/8")).await;
    refused_unanswered(&server, &v2(1, 0x11, 12, &V4_ADDRESSES)).await;
    // A health check from there too.
    refused_unanswered(&server, &v2(0, 0x00, 0, b"")).await;
    let snapshot = settled(&server).await;
    assert_eq!((snapshot.proxy_failed, snapshot.proxy_local), (2, 0));
    server.stop().await;
}

// ------------------------------------------------------------------- TLS

fn tls_server(ca: &TestCa) -> ServerConfig {
    let mut config = quick_config();
    config.tls = Some(ca.leaf("server", Leaf::Good));
    config.session.handshake_timeout = HANDSHAKE_TIMEOUT;
    config
}

fn tls_client(ca: &TestCa) -> ClientConnection {
    let name = ServerName::try_from("localhost").expect("name");
    ClientConnection::new(client_config(&ca.ca_pem()), name).expect("client")
}

/// The bytes rustls has to send now.
fn pending_tls(client: &mut ClientConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out).expect("into a Vec");
    }
    out
}

fn blocking_connect(addr: SocketAddr) -> std::net::TcpStream {
    let tcp = std::net::TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(PATIENCE)).expect("timeout");
    tcp.set_nodelay(true).expect("nodelay");
    tcp
}

/// Reads until the server closes; whatever came.
fn until_closed(tcp: &mut std::net::TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tcp.read(&mut chunk) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return all,
            Err(e) => panic!("read: {e}"),
        }
    }
}

#[async_std::test]
async fn tls_garbage_before_the_client_hello_is_refused() {
    let ca = TestCa::new("garbage CA");
    let server = TestServer::start(tls_server(&ca)).await;
    let hello = pending_tls(&mut tls_client(&ca));
    let (addr, plain_hello) = (server.addr, hello.clone());
    let told = spawn_blocking(move || {
        // Bytes that cannot start a TLS record: told in plain text.
        let mut tcp = blocking_connect(addr);
        tcp.write_all(b"\x00\x01garbage").expect("write");
        tcp.write_all(&plain_hello).expect("write");
        until_closed(&mut tcp)
    })
    .await;
    assert_eq!(told, wire::TLS_REQUIRED_ERROR);
    let closed = spawn_blocking(move || {
        // A record header with a bad version and length: rustls refuses it.
        let mut tcp = blocking_connect(addr);
        tcp.write_all(&[0x16, 0x7f, 0x7f, 0xff, 0xff, 1, 2, 3])
            .expect("write");
        tcp.write_all(&hello).expect("write");
        until_closed(&mut tcp)
    })
    .await;
    assert!(!closed.ends_with(b"Hello\n"), "never greeted: {closed:?}");
    let snapshot = settled(&server).await;
    assert_eq!(snapshot.tls_failed, 2);
    server.stop().await;
}

#[async_std::test]
async fn tls_client_hello_one_byte_per_write_is_served() {
    let ca = TestCa::new("split CA");
    let server = TestServer::start(tls_server(&ca)).await;
    let mut client = tls_client(&ca);
    let addr = server.addr;
    let greeting = spawn_blocking(move || {
        let mut tcp = blocking_connect(addr);
        // Every byte of the client's handshake in a write of its own.
        while client.is_handshaking() {
            for byte in pending_tls(&mut client) {
                tcp.write_all(&[byte]).expect("write");
            }
            if client.is_handshaking() {
                client.read_tls(&mut tcp).expect("read");
                client.process_new_packets().expect("server's handshake");
            }
        }
        for byte in pending_tls(&mut client) {
            tcp.write_all(&[byte]).expect("write");
        }
        let mut stream = futures_rustls::rustls::Stream::new(&mut client, &mut tcp);
        let mut greeting = [0u8; 6];
        stream.read_exact(&mut greeting).expect("greeting");
        greeting
    })
    .await;
    assert_eq!(&greeting, b"Hello\n");
    server.stop().await;
}

#[async_std::test]
async fn tls_handshake_that_stops_halfway_is_closed_at_the_timeout() {
    let ca = TestCa::new("halfway CA");
    let server = TestServer::start(tls_server(&ca)).await;
    let mut client = tls_client(&ca);
    let mut tcp = blocking_connect(server.addr);
    let (tcp, client) = spawn_blocking(move || {
        // The ClientHello, and the server's answer read; then nothing more.
        tcp.write_all(&pending_tls(&mut client)).expect("write");
        client.read_tls(&mut tcp).expect("read");
        client.process_new_packets().expect("server's handshake");
        (tcp, client)
    })
    .await;
    assert!(client.wants_write(), "the client's Finished is never sent");
    // Another client is served meanwhile.
    let mut other = TlsPeer::connect(server.addr, &ca.ca_pem())
        .await
        .expect("TLS");
    assert_eq!(other.line().await, b"Hello");
    drop(other);
    let mut tcp = tcp;
    let rest = spawn_blocking(move || until_closed(&mut tcp)).await;
    assert!(!rest.ends_with(b"Hello\n"), "never greeted");
    let snapshot = settled(&server).await;
    assert_eq!((snapshot.tls_failed, snapshot.admitted), (1, 2));
    server.stop().await;
}

/// The log side of every class: a flood of one is a few lines. Here, a
/// flood of garbage on a TLS port against the real binary.
#[test]
fn a_flood_of_failed_handshakes_is_one_line_per_period_with_a_count() {
    use common::process::{signal, start_server, wait_for, wait_with_timeout};
    let ca = TestCa::new("flood CA");
    let files = ca.leaf("server", Leaf::Good);
    let (cert, key) = (
        files.cert.to_str().expect("path"),
        files.key.to_str().expect("path"),
    );
    let (server, addr, logs) = start_server(&["--tls-cert", cert, "--tls-key", key]);
    let addr: SocketAddr = addr.parse().expect("address");
    const FLOOD: usize = 20;
    for _ in 0..FLOOD {
        let mut tcp = blocking_connect(addr);
        tcp.write_all(&[0x16, 0x7f, 0x7f, 0xff, 0xff, 1, 2, 3])
            .expect("write");
        until_closed(&mut tcp);
    }
    signal(&server, libc::SIGUSR1);
    let mut failures = 0;
    let snapshot = loop {
        let line = wait_for(&logs, "");
        failures +=
            usize::from(line.contains("TLS handshake failed") && !line.contains("client left"));
        if line.contains("registry snapshot") {
            break line;
        }
    };
    assert!(
        snapshot.contains(&format!("tls_failed={FLOOD} ")),
        "{snapshot}"
    );
    // One line per 5 s: one, unless this machine took seconds for 20 connects.
    assert!(
        (1..FLOOD / 4).contains(&failures),
        "{failures} lines for {FLOOD} failures"
    );
    signal(&server, libc::SIGTERM);
    assert!(wait_with_timeout(server).success());
}
