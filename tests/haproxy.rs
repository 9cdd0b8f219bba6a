//! duplex behind a real HAProxy (Debian's `haproxy`), in TCP mode with
//! `send-proxy-v2` and health checks, in front of two duplex servers: the
//! registries list clients under their own addresses, and count HAProxy's
//! health checks apart from them, clients of a killed server reconnect
//! through HAProxy to the other and lose nothing, and a rolling restart with
//! `--reuse-port` refuses no connection. With `option httpchk GET /readyz`
//! against the admin port, a server told to stop is marked down while its
//! `--drain-delay` still has it accepting, so a rolling restart fails no
//! connect through HAProxy even with no retry, and loses no message.

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use common::certs::have;
use common::haproxy::Haproxy;
use common::process::{
    PATIENCE, duplex, listening_addr, server_command, signal, start_server_from, wait_for,
    wait_with_timeout,
};
use common::{Peer, TestClient, within};
use duplex::client::ClientConfig;

const SERVER_FLAGS: &[&str] = &[
    "--proxy-protocol",
    "--reuse-port",
    "--registry-interval",
    "0",
];

/// The `peer=` and `via=` of every `registry client` line of one snapshot.
fn listed(logs: &std::sync::mpsc::Receiver<String>, clients: usize) -> Vec<(String, String)> {
    let field = |line: &str, key: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(key).map(String::from))
            .unwrap_or_default()
    };
    (0..clients)
        .map(|_| {
            let line = wait_for(logs, "registry client");
            (field(&line, "peer="), field(&line, "via="))
        })
        .collect()
}

/// `count` duplex clients through `addr`, quick to send and to reconnect.
fn clients_through(addr: SocketAddr, count: usize) -> Vec<TestClient> {
    (0..count)
        .map(|_| {
            let mut config = ClientConfig::new(addr.to_string());
            config.supervisor.interval = Duration::from_millis(50);
            config.supervisor.backoff = Duration::from_millis(100);
            config.connection.timeout = Duration::from_secs(2);
            TestClient::start(config)
        })
        .collect()
}

/// Waits for `rounds` replies from each client printed from now on: the
/// lines already printed (the channel keeps them) came from before.
fn all_reply(clients: &[TestClient], rounds: usize) {
    for client in clients {
        while client.lines.try_recv().is_ok() {}
    }
    async_std::task::block_on(async {
        for client in clients {
            for _ in 0..rounds {
                client.reply().await;
            }
        }
    })
}

/// Stops the clients; none dropped a message, and every one sent was
/// answered or is still pending.
fn stop_having_lost_nothing(clients: Vec<TestClient>) {
    async_std::task::block_on(async {
        for client in clients {
            let summary = within(common::PATIENCE, client.stop())
                .await
                .expect("stops");
            assert_eq!(summary.dropped, 0, "{summary:?}");
            assert!(
                summary.replied + summary.pending as u64 >= summary.sent,
                "every message answered or still pending: {summary:?}"
            );
        }
    });
}

fn count_of(snapshot_line: &str) -> usize {
    snapshot_line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("clients="))
        .and_then(|n| n.parse().ok())
        .expect("clients=")
}

#[test]
fn behind_haproxy_clients_keep_their_addresses_survive_a_killed_server_and_a_rolling_restart() {
    if !have("haproxy") {
        return;
    }
    let (first, first_addr, first_logs) = start_server_from(server_command(SERVER_FLAGS));
    let (second, second_addr, second_logs) = start_server_from(server_command(SERVER_FLAGS));
    let haproxy = Haproxy::start(&[&first_addr, &second_addr]);

    // Twenty raw clients: each server lists its share under their own ports.
    let peers: Vec<Peer> = async_std::task::block_on(async {
        let mut peers = Vec::new();
        for _ in 0..20 {
            let mut peer = Peer::connect(haproxy.addr).await;
            assert_eq!(peer.line().await, b"Hello\n");
            peers.push(peer);
        }
        peers
    });
    let ours: HashSet<String> = peers.iter().map(|p| p.local_addr().to_string()).collect();
    let mut seen = HashSet::new();
    for (server, logs) in [(&first, &first_logs), (&second, &second_logs)] {
        signal(server, libc::SIGUSR1);
        let clients = count_of(&wait_for(logs, "registry snapshot"));
        assert!(clients >= 2, "round robin gives each server some");
        // Only clients: a health check caught before its header is not one.
        for (peer, via) in listed(logs, clients) {
            assert!(ours.contains(&peer), "{peer} is one of our clients");
            assert!(
                !ours.contains(&via) && !via.is_empty(),
                "via={via} is HAProxy"
            );
            seen.insert(peer);
        }
    }
    assert_eq!(seen, ours, "every client is listed, by its own address");
    drop(peers);

    // Twenty duplex clients; then one server dies without a word.
    let clients = clients_through(haproxy.addr, 20);
    let all_reply = |rounds: usize| all_reply(&clients, rounds);
    all_reply(2);
    let mut first = first;
    first.kill().expect("kill -9");
    let _ = first.wait();
    all_reply(5);

    // A rolling restart of the survivor: the new one first, then SIGTERM the
    // old one, while a prober keeps connecting straight to its port.
    let probing = Arc::new(AtomicBool::new(true));
    let counter = || Arc::new(AtomicU64::new(0));
    let (refused, reset, probes) = (counter(), counter(), counter());
    // Each probe's end, so the test waits on probes, not on the clock.
    let (probed_tx, probed) = std::sync::mpsc::channel::<()>();
    let prober = {
        let (probing, refused, reset, probes) = (
            probing.clone(),
            refused.clone(),
            reset.clone(),
            probes.clone(),
        );
        let addr: SocketAddr = second_addr.parse().expect("address");
        std::thread::spawn(move || {
            // A v2 LOCAL header: what a health check sends; closed quietly.
            let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
            while probing.load(Ordering::Relaxed) {
                probes.fetch_add(1, Ordering::Relaxed);
                match TcpStream::connect(addr) {
                    Ok(mut stream) => {
                        // Closed quietly after the header, by whichever
                        // server took it; a reset means it was dropped.
                        let _ = std::io::Write::write_all(&mut stream, local);
                        let mut rest = Vec::new();
                        if std::io::Read::read_to_end(&mut stream, &mut rest).is_err() {
                            reset.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // The test may have stopped counting.
                let _ = probed_tx.send(());
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let mut replacement = duplex();
    (replacement.args(["--role", "server", "--addr", &second_addr]))
        .args(SERVER_FLAGS)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // `n` probes that start from now on.
    let probe = |n: usize| {
        let _ = probed.try_iter().count();
        for _ in 0..=n {
            probed
                .recv_timeout(PATIENCE)
                .expect("the prober keeps probing");
        }
    };
    // The prober runs through the restart: 20 probes with both servers up,
    // any during the old one's shutdown, then 20 with the new one alone.
    let (replacement, _, replacement_logs) = start_server_from(replacement);
    probe(20);
    signal(&second, libc::SIGTERM);
    assert!(wait_with_timeout(second).success());
    wait_for(&second_logs, "server stopped");
    all_reply(5);
    probe(20);
    probing.store(false, Ordering::Relaxed);
    prober.join().expect("prober");
    let probes = probes.load(Ordering::Relaxed);
    assert_eq!(
        refused.load(Ordering::Relaxed),
        0,
        "refused, of {probes} probes"
    );
    // The old server takes what was queued for it before it closes; only a
    // connect in the instant between that and the close could still be reset.
    assert!(
        reset.load(Ordering::Relaxed) <= 1,
        "reset, of {probes} probes"
    );

    stop_having_lost_nothing(clients);
    // The replacement has had HAProxy's health checks and the prober's
    // LOCAL headers: counted apart, so `admitted` is its joins, no more.
    signal(&replacement, libc::SIGUSR1);
    let mut joins = 0;
    let snapshot = loop {
        let line = (replacement_logs.recv_timeout(PATIENCE)).expect("the snapshot line");
        joins += usize::from(line.contains("client joined"));
        if line.contains("registry snapshot") {
            break line;
        }
    };
    let count = |key: &str| -> u64 {
        (snapshot.split_whitespace())
            .find_map(|f| f.strip_prefix(key))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {snapshot}"))
    };
    assert!(joins > 0, "clients came through the replacement");
    assert_eq!(count("admitted=") as usize, joins, "{snapshot}");
    assert!(count("proxy_local=") >= 20, "{snapshot}");
    drop(replacement_logs);
    signal(&replacement, libc::SIGTERM);
    assert!(wait_with_timeout(replacement).success());
    drop(first_logs);
}

/// Flags of a server behind HAProxy's `/readyz` checks, which keeps accepting for 3 s
/// after it turns unready: HAProxy checks it every 0.1 s.
const READYZ_FLAGS: &[&str] = &[
    "--proxy-protocol",
    "--registry-interval",
    "0",
    "--drain-delay",
    "3s",
];

/// A server with READYZ_FLAGS on `addr` and its admin interface on `admin`
/// (`127.0.0.1:0` for any); returns it, both addresses and its log.
fn start_checked(addr: &str, admin: &str) -> (Child, String, String, Receiver<String>) {
    let mut command = duplex();
    (command.args(["--role", "server", "--addr", addr, "--admin-addr", admin]))
        .args(READYZ_FLAGS)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let (server, addr, logs) = start_server_from(command);
    let admin = listening_addr(&wait_for(&logs, "admin listening"));
    (server, addr, admin, logs)
}

/// Whether the server at `addr` (behind a PROXY header) greets a new client.
fn greets(addr: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let header = b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 8000\r\n";
    let _ = stream.set_read_timeout(Some(PATIENCE));
    let mut hello = [0; 6];
    std::io::Write::write_all(&mut stream, header).is_ok()
        && std::io::Read::read_exact(&mut stream, &mut hello).is_ok()
        && &hello == b"Hello\n"
}

#[test]
fn haproxy_polling_readyz_takes_a_draining_server_out_before_it_stops_accepting() {
    if !have("haproxy") {
        return;
    }
    let mut servers: Vec<_> = (0..2)
        .map(|_| start_checked("127.0.0.1:0", "127.0.0.1:0"))
        .collect();
    let backends: Vec<(&str, &str)> = (servers.iter())
        .map(|(_, addr, admin, _)| (addr.as_str(), admin.as_str()))
        .collect();
    let haproxy = Haproxy::checking_readyz(&backends);

    // Clients through HAProxy, and a prober that opens a connection after
    // another and wants each greeted: with no retry, one connect refused
    // by a backend would fail a probe.
    let clients = clients_through(haproxy.addr, 10);
    let all_reply = |rounds: usize| all_reply(&clients, rounds);
    all_reply(2);
    let probing = Arc::new(AtomicBool::new(true));
    let (failed, probes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let prober = {
        let (probing, failed, probes) = (probing.clone(), failed.clone(), probes.clone());
        let through = haproxy.addr;
        std::thread::spawn(move || {
            while probing.load(Ordering::Relaxed) {
                probes.fetch_add(1, Ordering::Relaxed);
                let mut hello = [0; 6];
                let greeted = TcpStream::connect(through).is_ok_and(|mut stream| {
                    let _ = stream.set_read_timeout(Some(PATIENCE));
                    std::io::Read::read_exact(&mut stream, &mut hello).is_ok()
                });
                if !greeted || &hello != b"Hello\n" {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    // A rolling restart: each server in turn is told to stop, marked down
    // by HAProxy while it still accepts, drains, and comes back.
    for i in 0..servers.len() {
        let (server, addr, admin, logs) = servers.remove(i);
        signal(&server, libc::SIGTERM);
        wait_for(&logs, "draining: not ready, still accepting");
        wait_for(&haproxy.log, &format!("Server duplex/s{i} is DOWN"));
        assert!(greets(&addr), "still accepting once marked down");
        wait_for(&logs, "acceptor stopped");
        wait_for(&logs, "server stopped");
        assert!(wait_with_timeout(server).success());
        all_reply(3);
        servers.insert(i, start_checked(&addr, &admin));
        wait_for(&haproxy.log, &format!("Server duplex/s{i} is UP"));
        all_reply(3);
    }
    probing.store(false, Ordering::Relaxed);
    prober.join().expect("prober");
    let probes = probes.load(Ordering::Relaxed);
    assert!(probes > 0);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed, of {probes} probes"
    );
    stop_having_lost_nothing(clients);
    for (server, _, _, logs) in servers {
        signal(&server, libc::SIGTERM);
        assert!(wait_with_timeout(server).success());
        drop(logs);
    }
}
