//! TLS, end to end, against real peers: `openssl s_client` and Node's `tls`
//! module talk to the duplex server; the duplex client talks to a Node TLS
//! version of the original server. Every failure a user can meet is
//! provoked for real: plain text on the TLS port, an unknown CA, a wrong
//! name, an expired certificate, a stalled handshake, a TLS client on a
//! plain port and a plain client on a TLS port, SIGHUP with a good,
//! an unchanged, an out-of-date and a broken file, a server certificate that
//! is out of date at start or expires while it runs, and a server restart
//! under a running client.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_std::io::WriteExt;
use async_std::net::TcpStream;
use common::certs::{Leaf, TempDir, TestCa, TlsPeer, have};
use common::process::{
    PATIENCE as PROCESS_PATIENCE, duplex, lines_of, listening_addr, server_command, signal,
    start_server_from, stderr_lines, wait_for, wait_with_timeout,
};
use common::{PATIENCE, Peer, TestClient, TestServer, quick_config, within};
use duplex::client::{ClientConfig, ClientTls, Outcome};
use duplex::server::{ServerConfig, TlsFiles};
use duplex::wire;

fn tls_config(files: &TlsFiles) -> ServerConfig {
    ServerConfig {
        tls: Some(files.clone()),
        ..quick_config()
    }
}

/// `H:M:S - server reply: <message>`, the time not zero-padded.
fn assert_reply(line: &[u8], message: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let (time, echo) = text.split_once(" - server reply: ").expect("a reply");
    assert_eq!(echo.as_bytes(), message, "{text}");
    let fields: Vec<&str> = time.split(':').collect();
    assert_eq!(fields.len(), 3, "{text}");
    for field in fields {
        let n: u32 = field.parse().expect("a number");
        assert_eq!(n.to_string(), field, "not zero-padded: {text}");
    }
}

#[async_std::test]
async fn openssl_s_client_gets_the_greeting_and_byte_exact_replies() {
    if !have("openssl") {
        return;
    }
    let ca = TestCa::new("s_client CA");
    let server = TestServer::start(tls_config(&ca.leaf("server", Leaf::Good))).await;
    let mut s_client = Command::new("openssl")
        .args(["s_client", "-quiet", "-verify_return_error", "-servername"])
        .arg("localhost")
        .arg("-connect")
        .arg(server.addr.to_string())
        .arg("-CAfile")
        .arg(ca.ca_pem())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run openssl");
    let lines = lines_of(BufReader::new(s_client.stdout.take().expect("stdout")));
    let next = || {
        lines
            .recv_timeout(PROCESS_PATIENCE)
            .expect("a line from s_client")
    };
    assert_eq!(next(), "Hello");
    let mut stdin = s_client.stdin.take().expect("stdin");
    stdin.write_all(b"abc\n").expect("write");
    stdin.write_all(b"tab\there \xc3\xa9\n").expect("write");
    stdin.flush().expect("flush");
    assert_reply(next().as_bytes(), b"abc");
    assert_reply(next().as_bytes(), "tab\there é".as_bytes());
    let _ = s_client.kill();
    let _ = s_client.wait();
    server.wait_for_clients(0).await;
    let snapshot = server.registry.snapshot().await;
    assert_eq!((snapshot.admitted, snapshot.tls_failed), (1, 0));
    server.stop().await;
}

#[async_std::test]
async fn the_test_ca_recipe_in_the_docs_runs_under_sh_and_its_certificate_serves() {
    if !have("openssl") {
        return;
    }
    // The first block under "A test CA" in docs/operations.md, as a reader
    // would paste it into sh (dash here, which has no `<(…)`).
    let docs = include_str!("../docs/operations.md");
    let recipe = (docs.split("### A test CA").nth(1))
        .and_then(|section| section.split("```sh\n").nth(1))
        .and_then(|block| block.split("```").next())
        .expect("docs/operations.md has the recipe's block");
    let dir = TempDir::new("recipe");
    let output = Command::new("sh")
        .args(["-e", "-c", recipe])
        .current_dir(dir.path())
        .output()
        .expect("run sh");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // What it made: a CA, and a certificate the server loads and a client
    // that trusts that CA verifies, for localhost and 127.0.0.1.
    let files = TlsFiles {
        cert: dir.path().join("server.pem"),
        key: dir.path().join("server.key"),
    };
    let server = TestServer::start(tls_config(&files)).await;
    let mut peer = TlsPeer::connect(server.addr, &dir.path().join("ca.pem"))
        .await
        .expect("the recipe's certificate verifies");
    assert_eq!(peer.line().await, b"Hello");
    server.stop().await;
}

#[async_std::test]
async fn a_node_tls_client_gets_the_greeting_and_byte_exact_replies() {
    if !have("node") {
        return;
    }
    let ca = TestCa::new("node client CA");
    let server = TestServer::start(tls_config(&ca.leaf("server", Leaf::Good))).await;
    let output = Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/tls_client.js"
        ))
        .arg(server.addr.port().to_string())
        .arg(ca.ca_pem())
        .args(["first", "second message"])
        .output()
        .expect("run node");
    assert!(output.status.success(), "{output:?}");
    let lines: Vec<&[u8]> = output.stdout.split(|&b| b == b'\n').collect();
    assert_eq!(lines[0], b"Hello");
    assert_reply(lines[1], b"first");
    assert_reply(lines[2], b"second message");
    server.stop().await;
}

#[async_std::test]
async fn the_duplex_client_talks_to_a_node_tls_version_of_the_original_server() {
    if !have("node") {
        return;
    }
    let ca = TestCa::new("node server CA");
    let files = ca.leaf("node", Leaf::Good);
    let mut node = Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/tls_echo_server.js"
        ))
        .arg(&files.cert)
        .arg(&files.key)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run node");
    let mut port = String::new();
    BufReader::new(node.stdout.take().expect("stdout"))
        .read_line(&mut port)
        .expect("the port");
    let addr = format!("127.0.0.1:{}", port.trim());
    let mut config = ClientConfig::new(addr.clone());
    config.supervisor.interval = Duration::from_millis(20);
    config.supervisor.count = Some(3);
    config.connection.tls = Some(ClientTls::new(Some(&ca.ca_pem()), "localhost").expect("TLS"));
    let client = TestClient::start(config);
    assert_eq!(client.line().await, b"Hello");
    for _ in 0..3 {
        let echo = client.reply().await;
        assert!(echo.iter().all(u8::is_ascii_hexdigit), "{echo:?}");
    }
    let summary = within(PATIENCE, client.task).await.expect("stops");
    let _ = node.kill();
    let _ = node.wait();
    assert_eq!(summary.outcome, Outcome::CountReached);
    assert_eq!((summary.replied, summary.reconnects), (3, 0));
}

#[async_std::test]
async fn a_plain_client_on_the_tls_port_is_told_in_plain_text_and_counted() {
    let ca = TestCa::new("plain CA");
    let server = TestServer::start(tls_config(&ca.leaf("server", Leaf::Good))).await;
    let mut plain = Peer::connect(server.addr).await;
    plain.send(b"hello\n").await;
    assert_eq!(plain.rest().await, wire::TLS_REQUIRED_ERROR);
    server.wait_for_clients(0).await;
    // A TLS client is served meanwhile and after.
    let mut peer = TlsPeer::connect(server.addr, &ca.ca_pem())
        .await
        .expect("TLS");
    assert_eq!(peer.line().await, b"Hello");
    peer.send(b"x\n").await;
    assert_reply(&peer.line().await, b"x");
    let snapshot = server.registry.snapshot().await;
    assert_eq!((snapshot.admitted, snapshot.tls_failed), (2, 1));
    server.stop().await;
}

#[async_std::test]
async fn a_plain_client_waiting_for_its_greeting_is_told_at_the_handshake_timeout() {
    let ca = TestCa::new("silent CA");
    let mut config = tls_config(&ca.leaf("server", Leaf::Good));
    config.session.handshake_timeout = Duration::from_millis(300);
    let server = TestServer::start(config).await;
    // It waits for "Hello", as a plain client of this protocol may.
    let mut plain = Peer::connect(server.addr).await;
    assert_eq!(plain.rest().await, wire::TLS_REQUIRED_ERROR);
    server.wait_for_clients(0).await;
    assert_eq!(server.registry.snapshot().await.tls_failed, 1);
    server.stop().await;
}

#[test]
fn a_tls_client_on_a_plain_server_is_closed_unanswered_counted_and_logged_once() {
    let ca = TestCa::new("wrong port CA");
    let (server, addr, logs) = start_server_from(server_command(&[]));
    let addr: SocketAddr = addr.parse().expect("address");
    // rustls reads the plain greeting as a broken record and gives up.
    let refused = async_std::task::block_on(TlsPeer::connect(addr, &ca.ca_pem()));
    assert!(refused.is_err(), "a TLS handshake with a plain server");
    let logged = wait_for(&logs, "TLS client on a plain port: closed unanswered");
    assert!(
        logged.contains("INFO") && logged.contains("suppressed=0"),
        "{logged}"
    );
    let left = wait_for(&logs, "client left");
    assert!(
        left.contains("reason=TLS client on a plain port") && left.contains("messages_out=0"),
        "{left}"
    );
    // openssl, a second TLS client: counted, and its line held back.
    let mut held_back = Vec::new();
    let mut until = |needle: &str| loop {
        let line = wait_for(&logs, "");
        if line.contains(needle) {
            return line;
        }
        held_back.push(line);
    };
    let clients = if have("openssl") {
        let mut s_client = Command::new("openssl")
            .args(["s_client", "-quiet", "-connect", &addr.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run openssl");
        let stdout = lines_of(BufReader::new(s_client.stdout.take().expect("stdout")));
        assert!(!wait_with_timeout(s_client).success(), "a failed handshake");
        let stdout: Vec<String> = stdout.iter().collect();
        assert!(stdout.is_empty(), "{stdout:?}");
        let left = until("client left");
        assert!(left.contains("reason=TLS client on a plain port"), "{left}");
        2
    } else {
        1
    };
    signal(&server, libc::SIGUSR1);
    let snapshot = until("registry snapshot");
    assert!(
        snapshot.contains(&format!("tls_on_plain={clients} "))
            && snapshot.contains("messages_in=0 messages_out=0"),
        "{snapshot}"
    );
    assert!(
        !held_back
            .iter()
            .any(|line| line.contains("closed unanswered")),
        "{held_back:?}"
    );
    signal(&server, libc::SIGTERM);
    assert!(wait_with_timeout(server).success());
}

#[async_std::test]
async fn a_plain_duplex_client_on_the_tls_port_stops_after_three_tries_and_says_why() {
    let ca = TestCa::new("no --tls CA");
    let server = TestServer::start(tls_config(&ca.leaf("server", Leaf::Good))).await;
    let mut client = duplex()
        .args([
            "--role",
            "client",
            "--interval",
            "50ms",
            "--backoff",
            "20ms",
        ])
        .arg("--addr")
        .arg(server.addr.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    let stdout = lines_of(BufReader::new(client.stdout.take().expect("stdout")));
    let stderr = stderr_lines(&mut client);
    let status = wait_with_timeout(client);
    let stdout: Vec<String> = stdout.iter().collect();
    let stderr: Vec<String> = stderr.iter().collect();
    assert_eq!(status.code(), Some(1), "{stderr:#?}");
    assert_eq!(
        stderr.last().map(String::as_str),
        Some(format!("error: the server at {} speaks TLS; use --tls", server.addr).as_str()),
        "{stderr:#?}"
    );
    // Said at once, on each of the three connections.
    let said = |needle: &str| stderr.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(
        said("error error=the server speaks TLS; use --tls"),
        3,
        "{stderr:#?}"
    );
    assert_eq!(
        said("outcome=gave up: the server speaks TLS"),
        1,
        "{stderr:#?}"
    );
    // The server's plain-text line is printed as every server line is.
    assert_eq!(stdout, ["error: this server speaks TLS"; 3], "{stdout:?}");
    server.wait_for_clients(0).await;
    assert_eq!(server.registry.snapshot().await.tls_failed, 3);
    server.stop().await;
}

/// Runs the duplex client binary against `addr` until it gives up, and
/// returns its `error` line.
fn client_error(addr: SocketAddr, ca: &std::path::Path, extra: &[&str]) -> String {
    let mut client = duplex()
        .args(["--role", "client", "--max-restarts", "0", "--addr"])
        .arg(addr.to_string())
        .arg("--tls-ca")
        .arg(ca)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    let logs = stderr_lines(&mut client);
    let error = wait_for(&logs, "WARN  duplex::actors::connection] error");
    let status = wait_with_timeout(client);
    assert_eq!(status.code(), Some(1), "gives up after --max-restarts 0");
    error
}

#[async_std::test]
async fn the_client_names_why_it_refuses_a_certificate() {
    let ca = TestCa::new("trusted CA");
    let stranger = TestCa::new("stranger CA");
    // An expired one: a_certificate_near_its_expiry_…, where it expires
    // under a running server (which refuses to start with one).
    for (files, ca_file, reason) in [
        (
            ca.leaf("other", Leaf::OtherName),
            ca.ca_pem(),
            "certificate is for another name",
        ),
        (
            stranger.leaf("unknown", Leaf::Good),
            ca.ca_pem(),
            "certificate issuer unknown",
        ),
    ] {
        let server = TestServer::start(tls_config(&files)).await;
        let error = client_error(server.addr, &ca_file, &[]);
        assert!(error.contains(&format!("tls={reason} error=")), "{error}");
        server.wait_for_clients(0).await;
        let snapshot = server.registry.snapshot().await;
        assert_eq!(snapshot.tls_failed, 1, "{reason}: the server counts it too");
        server.stop().await;
    }
    // An IP address is checked against the certificate's IP names; a name
    // given with --tls-server-name replaces the address's host.
    let server = TestServer::start(tls_config(&ca.leaf("server", Leaf::Good))).await;
    let error = client_error(
        server.addr,
        &ca.ca_pem(),
        &["--tls-server-name", "other.example"],
    );
    assert!(error.contains("certificate is for another name"), "{error}");
    let mut config = ClientConfig::new(server.addr.to_string());
    config.supervisor.count = Some(1);
    config.supervisor.interval = Duration::from_millis(20);
    let host = ClientTls::host_of(&config.connection.addr);
    config.connection.tls = Some(ClientTls::new(Some(&ca.ca_pem()), host).expect("TLS"));
    let summary = within(PATIENCE, TestClient::start(config).task)
        .await
        .expect("stops");
    assert_eq!(summary.outcome, Outcome::CountReached);
    server.stop().await;
}

#[async_std::test]
async fn a_stalled_handshake_is_closed_at_the_timeout_and_costs_no_one_else() {
    let ca = TestCa::new("slow CA");
    let mut config = tls_config(&ca.leaf("server", Leaf::Good));
    // Long enough that the fourth client below is accepted while the
    // slow ones still hold their slots, even on a loaded machine.
    let timeout = Duration::from_secs(2);
    config.session.handshake_timeout = timeout;
    config.registry.max_clients = 3;
    let server = TestServer::start(config).await;
    // Three slow-loris connections take every slot, dripping the start of a
    // TLS record a byte at a time: the timeout is for the whole handshake.
    let started = Instant::now();
    let mut lorises = Vec::new();
    for _ in 0..3 {
        lorises.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    // A fourth client is turned away, in TLS, while they hold the slots.
    // Connected after them, it is accepted after them (the accept queue is
    // first in, first out), within their handshake timeout.
    let mut turned_away = TlsPeer::connect(server.addr, &ca.ca_pem())
        .await
        .expect("TLS");
    assert_eq!(
        turned_away.line().await,
        wire::server_full_error(3).trim_ascii_end()
    );
    for byte in [0x16u8, 0x03, 0x01] {
        for loris in &mut lorises {
            // A write may fail once the server has closed it; that is the point.
            let _ = loris.write_all(&[byte]).await;
        }
        async_std::task::sleep(Duration::from_millis(100)).await;
    }
    server.wait_for_clients(0).await;
    let freed_after = started.elapsed();
    assert!(
        freed_after >= timeout,
        "closed after {freed_after:?}, before the timeout"
    );
    let mut peer = TlsPeer::connect(server.addr, &ca.ca_pem())
        .await
        .expect("TLS");
    assert_eq!(peer.line().await, b"Hello");
    let snapshot = server.registry.snapshot().await;
    assert_eq!((snapshot.rejected, snapshot.tls_failed), (1, 3));
    server.stop().await;
}

#[test]
fn sighup_reloads_the_certificate_and_a_bad_or_out_of_date_one_keeps_the_old_one() {
    let first = TestCa::new("first CA");
    let second = TestCa::new("second CA");
    let files = first.leaf("server", Leaf::Good);
    let mut command = server_command(&[]);
    command
        .arg("--tls-cert")
        .arg(&files.cert)
        .arg("--tls-key")
        .arg(&files.key);
    let (server, addr, logs) = start_server_from(command);
    let addr: SocketAddr = addr.parse().expect("address");
    let exchange = |ca: &std::path::Path| {
        async_std::task::block_on(async {
            let mut peer = TlsPeer::connect(addr, ca).await?;
            assert_eq!(peer.line().await, b"Hello");
            Ok::<_, std::io::Error>(peer)
        })
    };
    let mut open = exchange(&first.ca_pem()).expect("the first certificate");
    let replace_with = |replacement: &TlsFiles| {
        std::fs::copy(&replacement.cert, &files.cert).expect("copy");
        std::fs::copy(&replacement.key, &files.key).expect("copy");
    };

    // The same files again: nothing changes, and the log says so.
    signal(&server, libc::SIGHUP);
    let unchanged = wait_for(&logs, "TLS certificate unchanged");
    assert!(
        unchanged.contains("subject=CN=first CA server")
            && unchanged.contains("not_after=4096-01-01T00:00:00Z"),
        "{unchanged}"
    );

    // The files now hold a certificate from the second CA.
    replace_with(&second.leaf("server", Leaf::Good));
    signal(&server, libc::SIGHUP);
    let reloaded = wait_for(&logs, "TLS certificate reloaded");
    assert!(
        reloaded.contains("subject=CN=second CA server")
            && reloaded.contains("not_after=4096-01-01T00:00:00Z"),
        "{reloaded}"
    );
    exchange(&second.ca_pem()).expect("new connections get the new certificate");
    assert!(exchange(&first.ca_pem()).is_err(), "the old one is gone");
    async_std::task::block_on(async {
        open.send(b"still here\n").await;
        assert_reply(&open.line().await, b"still here");
    });

    // A certificate outside its dates is refused like a broken file, with
    // the date at fault, and the one in use stays (from the same CA, it
    // would fail every handshake).
    for (kind, why) in [
        (
            Leaf::Expired,
            "has expired: notAfter 2020-01-01T00:00:00Z, now ",
        ),
        (
            Leaf::NotValidYet,
            "is not valid yet: notBefore 2999-01-01T00:00:00Z, now ",
        ),
    ] {
        replace_with(&second.leaf("out of date", kind));
        signal(&server, libc::SIGHUP);
        let failed = wait_for(&logs, "TLS certificate reload failed: keeping the old one");
        assert!(failed.contains(why), "{failed}");
        exchange(&second.ca_pem()).expect("the certificate in use stays");
    }

    // A broken file is logged, and the certificate in use stays.
    std::fs::write(&files.cert, "not a certificate\n").expect("write");
    signal(&server, libc::SIGHUP);
    let failed = wait_for(&logs, "TLS certificate reload failed: keeping the old one");
    assert!(failed.contains("no CERTIFICATE section"), "{failed}");
    exchange(&second.ca_pem()).expect("the certificate in use stays");

    signal(&server, libc::SIGTERM);
    assert!(wait_with_timeout(server).success());
}

#[async_std::test]
async fn a_tls_client_reconnects_across_a_server_restart_and_loses_nothing() {
    let ca = TestCa::new("restart CA");
    let files = ca.leaf("server", Leaf::Good);
    let server = TestServer::start(tls_config(&files)).await;
    let addr = server.addr;
    let mut config = ClientConfig::new(addr.to_string());
    config.supervisor.interval = Duration::from_millis(20);
    config.supervisor.backoff = Duration::from_millis(100);
    config.connection.tls = Some(ClientTls::new(Some(&ca.ca_pem()), "localhost").expect("TLS"));
    let client = TestClient::start(config);
    client.reply().await;
    server.stop().await;
    let restarted = TestServer::start_on(&addr.to_string(), tls_config(&files)).await;
    restarted.wait_for_clients(1).await;
    for _ in 0..5 {
        client.reply().await;
    }
    let summary = client.stop().await;
    assert!(summary.reconnects >= 1, "{summary:?}");
    assert_eq!(summary.dropped, 0, "{summary:?}");
    assert!(
        summary.replied + summary.pending as u64 >= summary.sent,
        "every message was answered or is still pending: {summary:?}"
    );
    restarted.stop().await;
}

#[test]
fn a_certificate_that_does_not_load_or_is_out_of_date_stops_the_server_with_a_clear_error() {
    let ca = TestCa::new("bad files CA");
    let files = ca.leaf("server", Leaf::Good);
    let other = ca.leaf("other", Leaf::Good);
    let expired = ca.leaf("expired", Leaf::Expired);
    let early = ca.leaf("early", Leaf::NotValidYet);
    for (cert, key, expected) in [
        (
            ca.ca_pem().with_extension("missing"),
            files.key.clone(),
            "cannot read certificates from",
        ),
        (
            files.cert.clone(),
            other.key.clone(),
            "are not a certificate and its key",
        ),
        (
            files.cert.clone(),
            files.cert.clone(),
            "cannot read a private key from",
        ),
        (
            expired.cert.clone(),
            expired.key.clone(),
            "(CN=bad files CA expired) has expired: notAfter 2020-01-01T00:00:00Z, now ",
        ),
        (
            early.cert.clone(),
            early.key.clone(),
            "(CN=bad files CA early) is not valid yet: notBefore 2999-01-01T00:00:00Z, now ",
        ),
    ] {
        let output = duplex()
            .args(["--role", "server", "--addr", "127.0.0.1:0", "--tls-cert"])
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .output()
            .expect("run server");
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("error: cannot load the TLS certificate: ")
                && stderr.contains(expected),
            "{stderr}"
        );
    }
}

#[test]
fn a_certificate_near_its_expiry_is_warned_of_and_its_expiry_logged_when_it_comes() {
    let ca = TestCa::new("expiring CA");
    // Long enough for the server to start before it expires, on a busy machine.
    let files = ca.leaf("server", Leaf::ExpiresIn(Duration::from_secs(5)));
    let mut command = server_command(&[]);
    command
        .arg("--tls-cert")
        .arg(&files.cert)
        .arg("--tls-key")
        .arg(&files.key);
    let mut server = command.spawn().expect("spawn server");
    let logs = stderr_lines(&mut server);
    // At load, before the server listens.
    let warning = wait_for(&logs, "TLS certificate expires soon");
    assert!(
        warning.starts_with('[')
            && warning.contains("WARN")
            && warning.contains("subject=CN=expiring CA server")
            && warning.contains("not_after=")
            && warning.contains("expires_in="),
        "{warning}"
    );
    let addr: SocketAddr = listening_addr(&wait_for(&logs, "listening"))
        .parse()
        .expect("address");
    // No SIGHUP, no client: the server checks at the expiry by itself.
    let expired = wait_for(&logs, "TLS certificate has expired");
    assert!(expired.contains("ERROR"), "{expired}");
    // Every new client fails from now on, and says why.
    let error = client_error(addr, &ca.ca_pem(), &[]);
    assert!(error.contains("tls=certificate expired error="), "{error}");
    let left = wait_for(&logs, "client left");
    assert!(left.contains("peer rejected our certificate"), "{left}");
    signal(&server, libc::SIGUSR1);
    let snapshot = wait_for(&logs, "registry snapshot");
    assert!(snapshot.contains("tls_failed=1"), "{snapshot}");
    signal(&server, libc::SIGTERM);
    assert!(
        wait_with_timeout(server).success(),
        "the check ends with the server"
    );
}

#[test]
fn with_tls_alone_the_client_trusts_the_systems_store() {
    let ca = TestCa::new("system store CA");
    let files = ca.leaf("server", Leaf::Good);
    let mut command = server_command(&[]);
    command
        .arg("--tls-cert")
        .arg(&files.cert)
        .arg("--tls-key")
        .arg(&files.key);
    let (server, addr, _logs) = start_server_from(command);
    // rustls-native-certs reads SSL_CERT_FILE as the system's store.
    let run = |store: &std::path::Path| {
        duplex()
            .args([
                "--role",
                "client",
                "--tls",
                "--count",
                "1",
                "--interval",
                "20ms",
            ])
            .args(["--max-restarts", "0", "--addr", &addr])
            .env("SSL_CERT_FILE", store)
            .env_remove("SSL_CERT_DIR")
            .output()
            .expect("run client")
    };
    let trusted = run(&ca.ca_pem());
    assert!(trusted.status.success(), "{trusted:?}");
    assert!(String::from_utf8_lossy(&trusted.stdout).contains("server reply: "));
    let stranger = TestCa::new("not in the store");
    let refused = run(&stranger.ca_pem());
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("tls=certificate issuer unknown"),
        "{stderr}"
    );
    signal(&server, libc::SIGTERM);
    assert!(wait_with_timeout(server).success());
}

#[async_std::test]
async fn a_burst_of_small_records_in_one_flush_is_all_answered() {
    // 300 lines, each its own TLS record, sent at once: about 8 KB, more
    // than rustls takes from the socket in one read. Each socket edge
    // announces its bytes once, so the server must read on until the
    // socket would block, not stop at the first short plaintext read.
    let ca = TestCa::new("burst CA");
    let server = TestServer::start(tls_config(&ca.leaf("server", Leaf::Good))).await;
    let mut peer = TlsPeer::connect(server.addr, &ca.ca_pem())
        .await
        .expect("handshake");
    assert_eq!(peer.line().await, b"Hello");
    const LINES: usize = 300;
    let messages: Vec<String> = (0..LINES).map(|i| format!("m{i:05}\n")).collect();
    peer.send_records(messages.iter().map(|m| m.as_bytes()))
        .await;
    for message in &messages {
        let reply = peer.line().await;
        assert!(reply.ends_with(message.trim_end().as_bytes()), "{reply:?}");
    }
    server.stop().await;
}
