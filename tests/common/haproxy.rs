//! A real HAProxy (Debian's `haproxy`) in front of duplex servers, on a free
//! loopback port, in TCP mode with `send-proxy-v2`; killed on drop. Its
//! stderr (server state changes: `Server duplex/s0 is DOWN`) comes as lines.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use super::certs::TempDir;
use super::process::{PATIENCE, stderr_lines};

pub struct Haproxy {
    child: Child,
    pub addr: SocketAddr,
    /// HAProxy's own log: warnings and server state changes.
    pub log: Receiver<String>,
    _dir: TempDir,
}

impl Haproxy {
    /// Round robin over `backends`, each health-checked with a PROXY v2
    /// `LOCAL` header on its own port; a failed connect is retried, then
    /// sent to another server.
    pub fn start(backends: &[&str]) -> Haproxy {
        let servers: String = (backends.iter().enumerate())
            .map(|(i, backend)| {
                format!("  server s{i} {backend} send-proxy-v2 check check-send-proxy inter 100ms fall 1 rise 1\n")
            })
            .collect();
        Haproxy::launch("  retries 3\n  option redispatch\n", "", &servers)
    }

    /// Round robin over `(client address, admin address)` pairs, each
    /// health-checked with `GET /readyz` on its admin port. No retry and no
    /// redispatch: a backend that refused a connect would fail a client.
    pub fn checking_readyz(backends: &[(&str, &str)]) -> Haproxy {
        let servers: String = (backends.iter().enumerate())
            .map(|(i, (backend, admin))| {
                let port = admin.rsplit_once(':').expect("host:port").1;
                format!("  server s{i} {backend} send-proxy-v2 check port {port} inter 100ms fall 1 rise 1\n")
            })
            .collect();
        Haproxy::launch("  retries 0\n", "  option httpchk GET /readyz\n", &servers)
    }

    fn launch(defaults: &str, backend: &str, servers: &str) -> Haproxy {
        let dir = TempDir::new("haproxy");
        let addr = free_port();
        let config = format!(
            "global\n  maxconn 2000\n\
             defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 60s\n  timeout server 60s\n{defaults}\
             frontend clients\n  bind {addr}\n  default_backend duplex\n\
             backend duplex\n  balance roundrobin\n{backend}{servers}"
        );
        let file = dir.path().join("haproxy.cfg");
        std::fs::write(&file, config).expect("write config");
        let mut child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start haproxy");
        let log = stderr_lines(&mut child);
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
            log,
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
pub fn free_port() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    probe.local_addr().expect("bound")
}
