//! duplex behind a real HAProxy (Debian's `haproxy`), in TCP mode with
//! `send-proxy-v2` and health checks, in front of two duplex servers: the
//! registries list clients under their own addresses, and count HAProxy's
//! health checks apart from them, clients of a killed server reconnect
//! through HAProxy to the other and lose nothing, and a rolling restart with
//! `--reuse-port` refuses no connection.

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::certs::{TempDir, have};
use common::process::{
    PATIENCE, duplex, server_command, signal, start_server_from, wait_for, wait_with_timeout,
};
use common::{Peer, TestClient, within};
use duplex::client::ClientConfig;

const SERVER_FLAGS: &[&str] = &[
    "--proxy-protocol",
    "--reuse-port",
    "--registry-interval",
    "0",
];

/// HAProxy in front of `backends`, on a free loopback port; killed on drop.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Haproxy {
    fn start(backends: &[&str]) -> Haproxy {
        let dir = TempDir::new("haproxy");
        let addr = free_port();
        let mut config = format!(
            "global\n  maxconn 2000\n\
             defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 60s\n  timeout server 60s\n  retries 3\n  option redispatch\n\
             frontend clients\n  bind {addr}\n  default_backend duplex\n\
             backend duplex\n  balance roundrobin\n"
        );
        for (i, backend) in backends.iter().enumerate() {
            config += &format!(
                "  server s{i} {backend} send-proxy-v2 check check-send-proxy inter 100ms fall 1 rise 1\n"
            );
        }
        let file = dir.path().join("haproxy.cfg");
        std::fs::write(&file, config).expect("write config");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        // HAProxy says nothing when it listens (its output would be the
        // only sign), so connecting is retried, backing off from 1 ms to
        // 50 ms, with bounded patience.
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        while TcpStream::connect(addr).is_err() {
            assert!(started.elapsed() < PATIENCE, "haproxy did not listen");
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        Haproxy {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback address that was free a moment ago.
fn free_port() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    probe.local_addr().expect("bound")
}

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
    let clients: Vec<TestClient> = (0..20)
        .map(|_| {
            let mut config = ClientConfig::new(haproxy.addr.to_string());
            config.supervisor.interval = Duration::from_millis(50);
            config.supervisor.backoff = Duration::from_millis(100);
            config.connection.timeout = Duration::from_secs(2);
            TestClient::start(config)
        })
        .collect();
    // Waits for `rounds` replies from each client printed from now on:
    // the lines already printed (the channel keeps them) came from before.
    let all_reply = |rounds: usize| {
        for client in &clients {
            while client.lines.try_recv().is_ok() {}
        }
        async_std::task::block_on(async {
            for client in &clients {
                for _ in 0..rounds {
                    client.reply().await;
                }
            }
        })
    };
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
