//! Faults provoked for real against the in-process server and client: slow
//! readers, resets, churn, a server dying mid-stream, backoff growth.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_std::net::{TcpListener, TcpStream};
use async_std::task::spawn;
use common::{PATIENCE, Peer, TestClient, TestServer, quick_config, within};
use duplex::client::{ClientConfig, Outcome};
use futures::io::BufReader;
use futures::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use rand::Rng;

/// Sets SO_LINGER to zero, so closing sends a reset instead of a FIN.
fn reset_on_close(stream: &TcpStream) {
    use std::os::fd::{AsRawFd, BorrowedFd};
    // SAFETY: the descriptor belongs to `stream`, which outlives this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    socket2::SockRef::from(&fd)
        .set_linger(Some(Duration::ZERO))
        .expect("set SO_LINGER");
}

#[async_std::test]
async fn a_client_that_never_reads_is_held_back_and_costs_others_nothing() {
    let mut config = quick_config();
    // What the stuck client costs the shutdown; the responsive one leaves
    // as soon as it has read the notice, whatever the timeout.
    config.shutdown_timeout = Duration::from_secs(1);
    let server = TestServer::start(config).await;

    // The slow reader: writes lines as fast as it can and never reads.
    let mut hog = TcpStream::connect(server.addr).await.expect("connect");
    let chunk = common::flood_of_long_lines();
    let cap = 256 * 1024 * 1024;
    let mut written = 0;
    while written < cap {
        match within(Duration::from_millis(500), hog.write_all(&chunk)).await {
            Some(Ok(())) => written += chunk.len(),
            Some(Err(e)) => panic!("write failed: {e}"),
            None => break, // stalled: the server stopped reading from us
        }
    }
    assert!(
        written < cap,
        "the server kept reading {written} bytes from a client that never reads"
    );
    // Keep it pushing, so its session stays stuck writing until the end.
    let pusher = spawn(async move { while hog.write_all(&chunk).await.is_ok() {} });

    // Others are served as usual meanwhile.
    let mut other = Peer::greeted(server.addr).await;
    for i in 0..50 {
        let message = format!("still served {i}");
        other.send(format!("{message}\n").as_bytes()).await;
        assert_eq!(other.reply().await, message.as_bytes());
    }

    // The registry answers at once, never waiting on the stuck session.
    let snapshot = within(PATIENCE, server.registry.snapshot())
        .await
        .expect("the registry never blocks on a session");
    assert_eq!(snapshot.clients.len(), 2);

    // At shutdown the responsive client reads the notice and closes, so it
    // is gone long before the timeout; the stuck one is cut at the timeout,
    // unless TCP frees room for its last replies first. Either way the
    // shutdown ends (`stop` waits with bounded patience) with both clients
    // accounted for.
    let stopping = spawn(server.stop());
    let rest = other.rest().await;
    assert!(rest.ends_with(b"notice: server shutting down\n"));
    drop(other);
    let summary = within(PATIENCE, stopping).await.expect("server stops");
    assert_eq!(summary.at_shutdown, 2);
    assert!(summary.cut <= 1, "{summary:?}");
    assert!(summary.last.clients.is_empty());
    within(PATIENCE, pusher)
        .await
        .expect("the server closing the connection ends the pusher");
}

/// A client that takes its greeting, then writes long lines and never reads,
/// from a task that keeps pushing until the connection fails: the server's
/// replies fill the buffers between them, and from then on its session is
/// stuck writing. (No timer decides when it is stuck: the pushing goes on
/// until the server acts.)
struct StuckClient {
    stream: TcpStream,
    /// Ends when a write fails, or after 256 MiB: the server kept reading.
    pusher: async_std::task::JoinHandle<std::io::Result<()>>,
}

impl StuckClient {
    async fn connect(addr: std::net::SocketAddr) -> StuckClient {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        // The greeting: its session is registered, and is not read past it.
        let mut greeting = [0; 6];
        within(PATIENCE, stream.read_exact(&mut greeting))
            .await
            .expect("greeted in time")
            .expect("greeting");
        assert_eq!(&greeting, b"Hello\n");
        let mut writer = stream.clone();
        let pusher = spawn(async move {
            let chunk = common::flood_of_long_lines();
            for _ in 0..(256 * 1024 * 1024 / chunk.len()) {
                writer.write_all(&chunk).await?;
            }
            Ok(())
        });
        StuckClient { stream, pusher }
    }

    /// Whether the server reset the connection (rather than closing it with
    /// a FIN): reads what is left until the connection ends. The reset may
    /// reach the pusher's write instead, which then fails with it.
    async fn was_reset(mut self) -> bool {
        let mut buf = vec![0u8; 1 << 20];
        let read_reset = loop {
            match within(PATIENCE, self.stream.read(&mut buf)).await {
                Some(Ok(0)) => break false,
                Some(Ok(_)) => {}
                Some(Err(e)) => break e.kind() == std::io::ErrorKind::ConnectionReset,
                None => panic!("the connection never ended"),
            }
        };
        let pushed = within(PATIENCE, self.pusher)
            .await
            .expect("the pusher ends with the connection");
        match pushed {
            Ok(()) => panic!("the server kept reading from a client that never reads"),
            Err(e) => read_reset || e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

/// With one slot, a client that fills its buffers and stops reading is cut
/// with a reset, and the next client gets the slot. Without a bound on the
/// stuck write, the registry would never count 0 and the server stays full.
async fn a_stuck_client_is_reset_and_frees_its_slot(
    idle_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
) {
    let mut config = quick_config();
    config.registry.max_clients = 1;
    config.registry.idle_timeout = idle_timeout;
    config.session.write_timeout = write_timeout;
    let server = TestServer::start(config).await;
    let hog = StuckClient::connect(server.addr).await;
    server.wait_for_clients(0).await;
    let mut next = Peer::greeted(server.addr).await;
    next.send(b"the slot is free\n").await;
    assert_eq!(next.reply().await, b"the slot is free");
    assert!(hog.was_reset().await, "cut with a reset, not a FIN");
    server.stop().await;
}

#[async_std::test]
async fn a_client_that_stops_reading_is_cut_at_the_write_timeout_and_frees_its_slot() {
    a_stuck_client_is_reset_and_frees_its_slot(None, Some(Duration::from_millis(300))).await;
}

/// A client that asks for one reply longer than the kernel's buffers (its
/// own receive buffer is small, and a send buffer grows to 4 MiB by
/// default) and reads none of it: the server reads everything it sent, so
/// only the server's own choice (a zero linger at the cut) can make the
/// close a reset; a plain close would send the reply's rest and then a FIN
/// once the client read it.
#[async_std::test]
async fn a_client_stuck_with_nothing_unread_is_still_cut_with_a_reset() {
    const LINE: usize = 12 * 1024 * 1024;
    let mut config = quick_config();
    config.session.write_timeout = Some(Duration::from_millis(300));
    config.session.max_line = LINE;
    // However long the line takes to arrive, it is one message.
    config.session.fragment_timeout = None;
    let server = TestServer::start(config).await;
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    // A small window: the reply cannot all fit between the two ends.
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&server.addr.into()).expect("connect");
    let mut stream = TcpStream::from(std::net::TcpStream::from(socket));
    // The greeting shows the server admitted the client (the kernel alone
    // could have taken the whole line before the server accepted it).
    let mut greeting = [0; 6];
    within(PATIENCE, stream.read_exact(&mut greeting))
        .await
        .expect("greeted in time")
        .expect("greeting");
    let line = [&vec![b'x'; LINE][..], b"\n"].concat();
    // Then nothing is read until the server has cut the client.
    stream.write_all(&line).await.expect("one line");
    server.wait_for_clients(0).await;
    let mut buf = vec![0u8; 1 << 16];
    let ended = loop {
        match within(PATIENCE, stream.read(&mut buf)).await {
            Some(Ok(0)) => break "a FIN",
            Some(Ok(_)) => {}
            Some(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => break "a reset",
            Some(Err(e)) => panic!("read failed: {e}"),
            None => panic!("the connection never ended"),
        }
    };
    assert_eq!(ended, "a reset");
    server.stop().await;
}

#[async_std::test]
async fn the_idle_timeout_closes_a_client_stuck_in_a_write() {
    a_stuck_client_is_reset_and_frees_its_slot(Some(Duration::from_millis(300)), None).await;
}

#[async_std::test]
async fn after_thousands_of_connects_closes_and_resets_the_registry_is_empty() {
    const CONNECTIONS: usize = 2000;
    const CONCURRENT: usize = 200;
    let mut config = quick_config();
    config.registry.max_clients = CONNECTIONS + 1;
    let server = TestServer::start(config).await;
    let addr = server.addr;
    for wave in 0..CONNECTIONS / CONCURRENT {
        let mut tasks = Vec::new();
        for i in 0..CONCURRENT {
            let behaviour = rand::rng().random_range(0..5);
            tasks.push(spawn(async move {
                let mut stream = TcpStream::connect(addr).await.expect("connect");
                match behaviour {
                    // Connect and leave at once.
                    0 => {}
                    // A clean exchange, then close.
                    1 => {
                        let mut reader = BufReader::new(stream.clone());
                        let mut line = Vec::new();
                        reader.read_until(b'\n', &mut line).await.expect("greeting");
                        stream
                            .write_all(format!("w{wave}c{i}\n").as_bytes())
                            .await
                            .expect("send");
                        line.clear();
                        reader.read_until(b'\n', &mut line).await.expect("reply");
                        assert!(line.ends_with(format!("w{wave}c{i}\n").as_bytes()));
                    }
                    // Half a message, then a reset.
                    2 => {
                        stream.write_all(b"half a mess").await.expect("send");
                        reset_on_close(&stream);
                    }
                    // Many messages without reading, then a reset while the
                    // server is still writing replies.
                    3 => {
                        stream
                            .write_all(&b"spam\n".repeat(20_000))
                            .await
                            .expect("send");
                        reset_on_close(&stream);
                    }
                    // Half-close, read everything, close.
                    _ => {
                        stream.write_all(b"bye\n").await.expect("send");
                        stream
                            .shutdown(std::net::Shutdown::Write)
                            .expect("half-close");
                        let mut rest = Vec::new();
                        stream.read_to_end(&mut rest).await.expect("read to EOF");
                        assert!(rest.ends_with(b" - server reply: bye\n"));
                    }
                }
            }));
        }
        for task in tasks {
            within(PATIENCE, task)
                .await
                .expect("connection finished in time");
        }
    }
    // Accepting is first in, first out: once a last client is greeted, every
    // connection before it has been through the acceptor.
    drop(Peer::greeted(addr).await);
    server.wait_for_clients(0).await;
    let snapshot = server.registry.snapshot().await;
    assert!(snapshot.clients.is_empty());
    assert_eq!(snapshot.admitted, CONNECTIONS as u64 + 1);
    server.stop().await;
}

#[async_std::test]
async fn a_message_swallowed_by_a_dying_server_is_resent_and_answered() {
    // The first server answers two messages, reads a third, and dies without
    // answering it: a server killed mid-stream.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("bound");
    let mut config = ClientConfig::new(addr.to_string());
    config.supervisor.interval = Duration::from_millis(20);
    config.supervisor.backoff = Duration::from_millis(100);
    let TestClient {
        lines,
        trigger,
        task,
    } = TestClient::start(config);

    let (stream, _) = within(PATIENCE, listener.accept())
        .await
        .expect("in time")
        .expect("accept");
    let mut reader = BufReader::new(stream.clone());
    let mut writer = stream;
    writer.write_all(b"Hello\n").await.expect("greet");
    let mut swallowed = Vec::new();
    for i in 0..3 {
        let mut line = Vec::new();
        within(PATIENCE, reader.read_until(b'\n', &mut line))
            .await
            .expect("in time")
            .expect("read");
        if i < 2 {
            let mut reply = b"1:2:3 - server reply: ".to_vec();
            reply.extend_from_slice(&line);
            writer.write_all(&reply).await.expect("reply");
        } else {
            swallowed = line.strip_suffix(b"\n").expect("a line").to_vec();
        }
    }
    drop((reader, writer, listener));

    // The real server comes up on the same port a moment later.
    let server = TestServer::start_on(&addr.to_string(), quick_config()).await;
    let mut echoes = HashSet::new();
    while !echoes.contains(&swallowed) || echoes.len() < 10 {
        let line = within(PATIENCE, lines.recv())
            .await
            .expect("output in time")
            .expect("client running");
        if let Some(echo) = duplex::wire::reply_echo(&line) {
            echoes.insert(echo.to_vec());
        }
    }
    trigger.trigger();
    let summary = within(PATIENCE, task).await.expect("client stops");
    while let Ok(line) = lines.try_recv() {
        if let Some(echo) = duplex::wire::reply_echo(&line) {
            echoes.insert(echo.to_vec());
        }
    }
    assert_eq!(summary.outcome, Outcome::Shutdown);
    assert!(summary.resent >= 1, "{summary:?}");
    assert_eq!(summary.dropped, 0);
    assert!(summary.reconnects >= 1);
    // Every message sent was answered, except at most one in flight at the stop.
    assert!(summary.pending <= 1, "{summary:?}");
    assert!(
        echoes.len() as u64 + summary.pending as u64 >= summary.sent,
        "{summary:?} vs {} echoes",
        echoes.len()
    );
    server.stop().await;
}

#[async_std::test]
async fn exponential_backoff_doubles_the_wait_between_failed_connections() {
    // A server that accepts and hangs up at once, recording when.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut config = ClientConfig::new(listener.local_addr().expect("bound").to_string());
    config.supervisor.backoff = Duration::from_millis(40);
    config.supervisor.backoff_max = Some(Duration::from_secs(5));
    let client = TestClient::start(config);
    let mut accepted_at = Vec::new();
    for _ in 0..5 {
        let (stream, _) = within(PATIENCE, listener.accept())
            .await
            .expect("in time")
            .expect("accept");
        accepted_at.push(Instant::now());
        drop(stream);
    }
    client.stop().await;
    let gaps: Vec<f64> = accepted_at
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    // Nominal waits 40, 80, 160, 320 ms, each ±20 %. Only the lower bounds
    // are checked: a loaded machine can only lengthen a gap, and a wait that
    // did not double falls short of them (by 200 ms, the last one).
    for (i, gap) in gaps.iter().enumerate() {
        let least = 0.040 * 0.8 * f64::from(1 << i);
        assert!(*gap >= least, "wait {i} under {least} s: {gaps:?}");
    }
}

#[async_std::test]
async fn while_the_server_is_down_a_full_pending_queue_drops_its_oldest() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("bound");
    let mut config = ClientConfig::new(addr.to_string());
    config.supervisor.interval = Duration::from_millis(10);
    config.supervisor.backoff = Duration::from_millis(300);
    config.supervisor.max_pending = 3;
    let client = TestClient::start(config);
    // The first connection is hung up on at once; during the 300 ms backoff
    // about 30 messages are made for a queue of 3.
    let (first, _) = within(PATIENCE, listener.accept())
        .await
        .expect("in time")
        .expect("accept");
    drop((first, listener));
    let server = TestServer::start_on(&addr.to_string(), quick_config()).await;
    server.wait_for_clients(1).await;
    for _ in 0..5 {
        client.reply().await;
    }
    let summary = client.stop().await;
    assert!(summary.dropped >= 10, "{summary:?}");
    assert!(summary.sent >= 5);
    server.stop().await;
}
