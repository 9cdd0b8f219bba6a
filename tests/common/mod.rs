//! Helpers shared by the integration tests: an in-process server on
//! `127.0.0.1:0`, and a line-oriented test client whose every await is bounded.
#![allow(dead_code)] // each test binary uses its own subset

pub mod admin;
pub mod certs;
pub mod haproxy;
pub mod process;

use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use async_std::channel::{Receiver, bounded};
use async_std::net::TcpStream;
use async_std::task::{JoinHandle, spawn};
use duplex::client::{self, ClientConfig, ClientSummary, LineSink};
use duplex::server::{RegistryHandle, Server, ServerConfig, ServerSummary};
use duplex::shutdown::{self, ShutdownTrigger};
use futures::io::BufReader;
use futures::{AsyncBufReadExt, AsyncWriteExt};

/// Upper bound for any single network wait in a test: far above what a
/// healthy run needs, so a hang fails fast instead of stalling CI.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Runs `fut` to completion unless it takes longer than `limit`.
pub async fn within<F: std::future::Future>(limit: Duration, fut: F) -> Option<F::Output> {
    async_std::future::timeout(limit, fut).await.ok()
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub registry: RegistryHandle,
    pub trigger: ShutdownTrigger,
    pub task: JoinHandle<ServerSummary>,
}

impl TestServer {
    pub async fn start(config: ServerConfig) -> TestServer {
        TestServer::start_on("127.0.0.1:0", config).await
    }

    pub async fn start_on(addr: &str, config: ServerConfig) -> TestServer {
        let server = Server::bind(addr, config).expect("bind loopback");
        let addr = server.local_addr().expect("bound");
        let registry = server.registry();
        let (trigger, shutdown) = shutdown::channel();
        let task = spawn(server.run(shutdown));
        TestServer {
            addr,
            registry,
            trigger,
            task,
        }
    }

    /// Triggers shutdown and waits for the server to finish.
    pub async fn stop(self) -> ServerSummary {
        self.trigger.trigger();
        within(PATIENCE, self.task)
            .await
            .expect("server stops in time")
    }

    /// Waits until exactly `n` clients are registered.
    pub async fn wait_for_clients(&self, n: usize) {
        within(PATIENCE, self.registry.wait_for_clients(n))
            .await
            .unwrap_or_else(|| panic!("registry never counted {n} clients"));
    }
}

/// A raw TCP peer that reads whole lines.
pub struct Peer {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Peer {
    /// Its connection, to write from another task.
    pub fn stream(&self) -> TcpStream {
        self.writer.clone()
    }

    pub async fn connect(addr: SocketAddr) -> Peer {
        let stream = within(PATIENCE, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        Peer::from_stream(stream)
    }

    /// A peer on a connection made elsewhere (with socket options set first).
    pub fn from_stream(stream: TcpStream) -> Peer {
        Peer {
            reader: BufReader::new(stream.clone()),
            writer: stream,
        }
    }

    /// Connects from `local` (any address of 127.0.0.0/8 is local on
    /// Linux), as a client of another address would.
    pub async fn connect_from(local: std::net::IpAddr, addr: SocketAddr) -> Peer {
        let stream = connect_from(local, addr);
        Peer::from_stream(TcpStream::from(stream))
    }

    /// Connects and checks the greeting.
    pub async fn greeted(addr: SocketAddr) -> Peer {
        let mut peer = Peer::connect(addr).await;
        assert_eq!(peer.line().await, b"Hello\n");
        peer
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        within(PATIENCE, self.writer.write_all(bytes))
            .await
            .expect("write in time")
            .expect("write");
    }

    /// The next line including its `\n`; empty at EOF.
    pub async fn line(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        within(PATIENCE, self.reader.read_until(b'\n', &mut line))
            .await
            .expect("line in time")
            .expect("read");
        line
    }

    /// The echo of the next line, which must be a reply.
    pub async fn reply(&mut self) -> Vec<u8> {
        let line = self.line().await;
        let text = line.strip_suffix(b"\n").expect("a whole line");
        duplex::wire::reply_echo(text)
            .unwrap_or_else(|| panic!("not a reply: {:?}", String::from_utf8_lossy(&line)))
            .to_vec()
    }

    /// Our end's address: the client address a server sees.
    pub fn local_addr(&self) -> SocketAddr {
        self.writer.local_addr().expect("connected")
    }

    /// Shuts down our write side (half-close).
    pub fn finish_writing(&self) {
        self.writer
            .shutdown(std::net::Shutdown::Write)
            .expect("half-close");
    }

    /// Reads until EOF; everything that arrived.
    pub async fn rest(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                return all;
            }
            all.extend_from_slice(&line);
        }
    }

    /// Reads until the server closes, by EOF or by a reset (what a server
    /// that ends a connection with unread input sends); everything before.
    pub async fn until_closed(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        loop {
            let mut line = Vec::new();
            let read = within(PATIENCE, self.reader.read_until(b'\n', &mut line))
                .await
                .expect("closed in time");
            all.extend_from_slice(&line);
            match read {
                Ok(0) => return all,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return all,
                Err(e) => panic!("read: {e}"),
            }
        }
    }
}

/// What a client that never reads sends: long lines, so the server's replies
/// fill even a fully autotuned socket send buffer (4 MiB here) within a few
/// writes, and the session is stuck writing from then on.
pub fn flood_of_long_lines() -> Vec<u8> {
    let mut line = vec![b'x'; 32 * 1024];
    line.push(b'\n');
    line.repeat(4)
}

/// A blocking connection to `addr` from `local` (bound before connecting,
/// on a port the kernel picks).
pub fn connect_from(local: std::net::IpAddr, addr: SocketAddr) -> std::net::TcpStream {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .expect("socket");
    socket
        .bind(&SocketAddr::new(local, 0).into())
        .expect("bind the local address");
    socket
        .connect_timeout(&addr.into(), PATIENCE)
        .expect("connect");
    socket.into()
}

/// A server config with test-friendly timers (everything else at the defaults).
pub fn quick_config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.session.fragment_timeout = Some(Duration::from_millis(50));
    config.registry.snapshot_interval = None;
    config.shutdown_timeout = Duration::from_secs(2);
    config
}

/// An address where nothing listens: a loopback port that was free a moment
/// ago, so connecting to it is refused.
pub fn refused_addr() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    probe.local_addr().expect("bound")
}

/// An in-process client running in its own task, its output lines on a channel.
pub struct TestClient {
    pub lines: Receiver<Vec<u8>>,
    pub trigger: ShutdownTrigger,
    pub task: JoinHandle<ClientSummary>,
}

impl TestClient {
    pub fn start(config: ClientConfig) -> TestClient {
        let (sender, lines) = bounded(100_000);
        let sink: LineSink = Arc::new(move |line: &[u8]| {
            // Tests read far fewer lines than this holds; later ones may go.
            let _ = sender.try_send(line.to_vec());
        });
        let (trigger, shutdown) = shutdown::channel();
        let task = spawn(client::run(config, shutdown, sink));
        TestClient {
            lines,
            trigger,
            task,
        }
    }

    /// The next line the client printed.
    pub async fn line(&self) -> Vec<u8> {
        within(PATIENCE, self.lines.recv())
            .await
            .expect("a line in time")
            .expect("client running")
    }

    /// Waits for the next reply line and returns the message it echoes.
    pub async fn reply(&self) -> Vec<u8> {
        loop {
            let line = self.line().await;
            if let Some(echo) = duplex::wire::reply_echo(&line) {
                return echo.to_vec();
            }
        }
    }

    /// Stops the client (as Ctrl-C would) and returns its summary.
    pub async fn stop(self) -> ClientSummary {
        self.trigger.trigger();
        within(PATIENCE, self.task)
            .await
            .expect("client stops in time")
    }
}
