//! The admin interface (`--admin-addr`) of the built binary, through real
//! peers: `curl` against every endpoint, every error status and the token
//! rules, and Prometheus' own `promtool check metrics` on what `/metrics`
//! serves. Under CI=true a missing curl or promtool fails the test.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use common::Peer;
use common::admin::{curl, raw, recorded, start};
use common::certs::{Leaf, TempDir, TestCa, have};
use common::process::{
    PATIENCE, duplex, listening_addr, server_command, signal, start_server_from, wait_for,
    wait_with_timeout,
};

/// The value of an unlabelled sample in classic text.
fn sample(metrics: &str, name: &str) -> f64 {
    (metrics.lines())
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("{name} in\n{metrics}"))
}

fn peers_available() -> bool {
    have("curl") && have("promtool")
}

#[test]
fn metrics_pass_promtool_and_count_what_clients_did() {
    if !peers_available() {
        return;
    }
    let (server, addr, admin, _logs) = start(&["--max-clients-per-ip", "1"]);
    async_std::task::block_on(async {
        let mut peer = Peer::greeted(addr).await;
        peer.send(b"one\ntwo\n").await;
        assert_eq!(peer.reply().await, b"one");
        assert_eq!(peer.reply().await, b"two");
        // A second client from the same address is refused, and counted
        // before the server closes it.
        let mut refused = TcpStream::connect(addr).expect("connect");
        refused.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let _ = refused.read_to_end(&mut Vec::new());
        let metrics = curl(&admin, "/metrics", &[]);
        assert_eq!(metrics.status, 200);
        assert!(
            metrics
                .headers
                .contains("content-type: text/plain; version=0.0.4")
        );
        let text = &metrics.body;
        assert_eq!(sample(text, "duplex_clients"), 1.0);
        assert_eq!(sample(text, "duplex_messages_received_total"), 2.0);
        assert_eq!(sample(text, "duplex_messages_sent_total"), 2.0);
        assert_eq!(sample(text, "duplex_received_bytes_total"), 8.0);
        assert!(text.contains("duplex_connections_total{result=\"admitted\"} 1\n"));
        assert!(text.contains("duplex_connections_total{result=\"too_many_per_ip\"} 1\n"));
        assert!(text.contains("duplex_connections_total{result=\"too_fast_per_ip\"} 0\n"));
        assert_eq!(sample(text, "duplex_per_ip_addresses"), 1.0);
        assert!(text.contains("duplex_build_info{version=\""));
        assert!(sample(text, "process_open_fds") > 0.0);
        assert!(sample(text, "process_resident_memory_bytes") > 0.0);
        // Prometheus' own linter takes it as it is.
        let mut promtool = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run promtool");
        (promtool.stdin.take().expect("stdin"))
            .write_all(text.as_bytes())
            .expect("feed promtool");
        let checked = promtool.wait_with_output().expect("promtool ends");
        assert!(checked.status.success(), "promtool: {checked:?}\n{text}");
        assert!(
            checked.stdout.is_empty() && checked.stderr.is_empty(),
            "{checked:?}"
        );
        // Prometheus asks for OpenMetrics, and gets it.
        let accept = "Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5";
        let openmetrics = curl(&admin, "/metrics", &["-H", accept]);
        assert!(openmetrics.headers.contains("application/openmetrics-text"));
        assert!(
            openmetrics.body.ends_with("# EOF\n"),
            "{}",
            openmetrics.body
        );
        assert!(
            openmetrics
                .body
                .contains("# TYPE duplex_connections counter\n")
        );
    });
    signal(&server, libc::SIGTERM);
    assert!(wait_with_timeout(server).success());
}

#[test]
fn every_endpoint_and_every_error_answers_as_documented() {
    if !peers_available() {
        return;
    }
    let (server, addr, admin, _logs) = start(&["--max-clients", "2"]);
    async_std::task::block_on(async {
        let peer = Peer::greeted(addr).await;
        let ours = peer.local_addr().to_string();
        assert_eq!(curl(&admin, "/healthz", &[]).body, "ok\n");
        let ready = curl(&admin, "/readyz", &[]);
        assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));

        let list = curl(&admin, "/clients", &[]);
        assert!(list.headers.contains("content-type: application/json"));
        let list: serde_json::Value = serde_json::from_str(&list.body).expect("JSON");
        assert_eq!(list["clients"], 1);
        let client = &list["items"][0];
        assert_eq!(client["peer"], ours.as_str());
        for field in [
            "client_id",
            "connected_for_ms",
            "messages_in",
            "messages_out",
        ] {
            assert!(client[field].is_u64(), "{field} in {client}");
        }
        let id = client["client_id"].as_u64().expect("an id");
        let one = curl(&admin, &format!("/clients/{id}"), &[]);
        let one: serde_json::Value = serde_json::from_str(&one.body).expect("JSON");
        assert_eq!(one["peer"], ours.as_str());
        let past = curl(&admin, "/clients?offset=1&limit=5", &[]);
        assert!(past.body.contains("\"items\":[]"), "{}", past.body);

        // Full: one more client takes the last slot.
        let second = Peer::greeted(addr).await;
        let full = curl(&admin, "/readyz", &[]);
        assert_eq!(
            (full.status, full.body.as_str()),
            (503, "not ready: full\n")
        );
        drop(second);

        for (path, args, status) in [
            ("/clients/999999", &[][..], 404),
            ("/nothing", &[], 404),
            ("/clients/x", &[], 404),
            ("/clients?limit=lots", &[], 400),
            ("/clients?limit=10001", &[], 400),
            ("/clients?page=2", &[], 400),
            ("/metrics", &["-X", "POST"], 405),
            ("/clients", &["-X", "DELETE"], 405),
            ("/healthz", &["-d", "body"], 405),
            ("/metrics", &["-X", "GET", "-d", "body"], 413),
            // No token is set: DELETE is refused whatever.
            (&format!("/clients/{id}"), &["-X", "DELETE"], 403),
        ] {
            let reply = curl(&admin, path, args);
            assert_eq!(reply.status, status, "{path} {args:?}: {}", reply.body);
            assert!(reply.body.starts_with("error: "), "{}", reply.body);
        }
        let post = curl(&admin, "/metrics", &["-X", "POST"]);
        assert!(
            post.headers.contains("allow: get, head"),
            "{}",
            post.headers
        );
        let big = format!("X-Big: {}", "x".repeat(10_000));
        assert_eq!(curl(&admin, "/healthz", &["-H", &big]).status, 431);
        // No HTTP at all: hyper's own 400.
        let garbage = raw(&admin, b"HELLO THERE\r\n\r\n");
        assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage:?}");
        drop(peer);
    });
    signal(&server, libc::SIGTERM);
    assert!(wait_with_timeout(server).success());
}

#[test]
fn a_token_guards_all_but_health_and_delete_closes_a_client_by_operator() {
    if !peers_available() {
        return;
    }
    let dir = TempDir::new("admin-token");
    let token = "t0ken-that-must-never-be-logged";
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{token}\n")).expect("write token");
    let file = file.to_str().expect("UTF-8 path");
    let (server, addr, admin, logs) = start(&["--admin-token-file", file]);
    let (logs, every_line) = recorded(logs);
    let bearer = format!("Authorization: Bearer {token}");
    let wrong = "Authorization: Bearer t0ken-that-must-never-be-loggeD";
    async_std::task::block_on(async {
        let mut peer = Peer::greeted(addr).await;
        for open in ["/healthz", "/readyz"] {
            assert_eq!(curl(&admin, open, &[]).status, 200, "{open}");
        }
        for guarded in ["/metrics", "/clients", "/clients/1"] {
            let refused = curl(&admin, guarded, &[]);
            assert_eq!(refused.status, 401, "{guarded}");
            assert!(refused.headers.contains("www-authenticate: bearer"));
            assert_eq!(curl(&admin, guarded, &["-H", wrong]).status, 401);
        }
        assert_eq!(curl(&admin, "/metrics", &["-H", &bearer]).status, 200);
        let list = curl(&admin, "/clients", &["-H", &bearer]);
        let list: serde_json::Value = serde_json::from_str(&list.body).expect("JSON");
        let id = list["items"][0]["client_id"].as_u64().expect("our client");
        let path = format!("/clients/{id}");
        assert_eq!(
            curl(&admin, &path, &["-X", "DELETE", "-H", wrong]).status,
            401
        );
        let closed = curl(&admin, &path, &["-X", "DELETE", "-H", &bearer]);
        assert_eq!(closed.status, 202, "{}", closed.body);
        assert_eq!(peer.line().await, b"error: closed by operator\n");
        assert_eq!(peer.line().await, b"", "then closed");
        let left = wait_for(&logs, "client left");
        assert!(left.contains("reason=closed by operator"), "{left}");
        let again = curl(&admin, &path, &["-X", "DELETE", "-H", &bearer]);
        assert_eq!(again.status, 404);
        let metrics = curl(&admin, "/metrics", &["-H", &bearer]).body;
        assert!(metrics.contains("duplex_cuts_total{reason=\"operator\"} 1\n"));
    });
    signal(&server, libc::SIGTERM);
    wait_for(&logs, "server stopped");
    assert!(wait_with_timeout(server).success());
    // Every line the server logged, to its last: none names the token.
    let lines = every_line.lock().expect("not poisoned");
    assert!(
        !lines.iter().any(|line| line.contains("t0ken")),
        "{lines:?}"
    );
}

#[test]
fn an_address_other_hosts_reach_needs_a_token_and_a_bad_token_file_is_not_shown() {
    let refused = duplex()
        .args(["--role", "server", "--addr", "127.0.0.1:0"])
        .args(["--admin-addr", "0.0.0.0:0"])
        .output()
        .expect("run server");
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("needs --admin-token-file"), "{stderr}");

    let dir = TempDir::new("bad-token");
    let file = dir.path().join("token");
    std::fs::write(&file, "a s3cret with spaces\n").expect("write token");
    let refused = duplex()
        .args(["--role", "server", "--addr", "127.0.0.1:0"])
        .args(["--admin-addr", "127.0.0.1:0", "--admin-token-file"])
        .arg(&file)
        .output()
        .expect("run server");
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--admin-token-file"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

#[test]
fn on_sigterm_readiness_turns_at_once_while_the_drain_delay_still_accepts() {
    if !peers_available() {
        return;
    }
    // Long enough never to end during the test: a second signal ends it.
    let (server, addr, admin, logs) = start(&["--drain-delay", "1h"]);
    assert_eq!(curl(&admin, "/readyz", &[]).status, 200);
    signal(&server, libc::SIGTERM);
    wait_for(&logs, "draining: not ready, still accepting");
    let draining = curl(&admin, "/readyz", &[]);
    assert_eq!(
        (draining.status, draining.body.as_str()),
        (503, "not ready: draining\n")
    );
    assert_eq!(
        curl(&admin, "/healthz", &[]).status,
        200,
        "alive all the same"
    );
    assert!(
        curl(&admin, "/metrics", &[])
            .body
            .contains("\nduplex_draining 1\n")
    );
    // New clients are still served meanwhile.
    async_std::task::block_on(async {
        let mut peer = Peer::greeted(addr).await;
        peer.send(b"late\n").await;
        assert_eq!(peer.reply().await, b"late");
    });
    signal(&server, libc::SIGTERM);
    assert_eq!(wait_with_timeout(server).code(), Some(130));
}

#[test]
fn readiness_fails_once_the_certificate_has_expired() {
    if !peers_available() {
        return;
    }
    let ca = TestCa::new("admin expiring CA");
    let files = ca.leaf("server", Leaf::ExpiresIn(std::time::Duration::from_secs(3)));
    let mut command = server_command(&["--admin-addr", "127.0.0.1:0"]);
    command
        .arg("--tls-cert")
        .arg(&files.cert)
        .arg("--tls-key")
        .arg(&files.key);
    let (server, _, logs) = start_server_from(command);
    let admin = listening_addr(&wait_for(&logs, "admin listening"));
    let metrics = curl(&admin, "/metrics", &[]).body;
    let expiry = sample(&metrics, "duplex_tls_certificate_expiry_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    assert!(
        expiry > now - 60.0 && expiry < now + 60.0,
        "{expiry} vs {now}"
    );
    wait_for(&logs, "TLS certificate has expired");
    let expired = curl(&admin, "/readyz", &[]);
    assert_eq!(expired.status, 503, "{}", expired.body);
    assert!(expired.body.contains("certificate"), "{}", expired.body);
    signal(&server, libc::SIGTERM);
    assert!(wait_with_timeout(server).success());
}

#[test]
fn admin_connections_past_the_cap_are_closed_and_clients_never_notice() {
    if !peers_available() {
        return;
    }
    let (server, addr, admin, _logs) = start(&[]);
    // Sixteen admin connections that say nothing hold every admin slot.
    let held: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(&admin).expect("connect"))
        .collect();
    // Each is accepted in turn; the next is closed unanswered, at once.
    let refused = raw(&admin, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(refused, "", "closed without an answer");
    async_std::task::block_on(async {
        let mut peer = Peer::greeted(addr).await;
        peer.send(b"still served\n").await;
        assert_eq!(peer.reply().await, b"still served");
    });
    drop(held);
    // Their slots come back as the server sees them close: an answer
    // comes within a few tries, each waiting on the server's own reply.
    let answered = (0..1000).any(|_| {
        raw(
            &admin,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .starts_with("HTTP/1.1 200")
    });
    assert!(answered, "admin slots are given back");
    signal(&server, libc::SIGTERM);
    assert!(wait_with_timeout(server).success());
}
