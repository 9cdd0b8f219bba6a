//! The client, in process, against the in-process server (and a silent fake):
//! replies, restarts after the server goes away, dead-connection detection.

mod common;

use std::time::{Duration, Instant};

use async_std::net::TcpListener;
use common::{PATIENCE, TestClient, TestServer, quick_config, within};
use duplex::client::{ClientConfig, Outcome};
use futures::StreamExt;

fn config(addr: impl ToString) -> ClientConfig {
    let mut config = ClientConfig::new(addr.to_string());
    config.supervisor.interval = Duration::from_millis(20);
    config.supervisor.backoff = Duration::from_millis(100);
    config.connection.timeout = Duration::from_secs(5);
    config
}

#[async_std::test]
async fn prints_the_greeting_and_replies_and_stops_at_the_count() {
    let server = TestServer::start(quick_config()).await;
    let mut config = config(server.addr);
    config.supervisor.count = Some(3);
    let client = TestClient::start(config);
    assert_eq!(client.line().await, b"Hello");
    let mut echoes = Vec::new();
    for _ in 0..3 {
        let echo = client.reply().await;
        assert_eq!(echo.len(), 13, "a 13-digit hex message");
        assert!(echo.iter().all(u8::is_ascii_hexdigit));
        echoes.push(echo);
    }
    let summary = within(PATIENCE, client.task)
        .await
        .expect("stops by itself");
    assert_eq!(summary.outcome, Outcome::CountReached);
    assert_eq!(summary.replied, 3);
    assert_eq!(summary.reconnects, 0);
    assert_ne!(echoes[0], echoes[1], "messages are random");
    server.stop().await;
}

#[async_std::test]
async fn reconnects_after_the_backoff_when_the_server_restarts_on_the_same_port() {
    let server = TestServer::start(quick_config()).await;
    let addr = server.addr;
    let config = config(addr);
    let backoff = config.supervisor.backoff;
    let client = TestClient::start(config);
    client.reply().await;
    // The client cannot lose its connection before the server stops.
    let stopping = Instant::now();
    server.stop().await;

    let restarted = TestServer::start_on(&addr.to_string(), quick_config()).await;
    restarted.wait_for_clients(1).await;
    // Not before its backoff: a lower bound, which load only makes easier
    // to meet. How long the backoff is, is `Backoff`'s unit test.
    let took = stopping.elapsed();
    assert!(
        took >= backoff,
        "reconnected {took:?} after the server stopped"
    );
    // Replies resume on the new connection.
    client.reply().await;
    let summary = client.stop().await;
    assert_eq!(summary.outcome, Outcome::Shutdown);
    assert!(summary.reconnects >= 1);
    restarted.stop().await;
}

#[async_std::test]
async fn a_silent_server_is_declared_dead_and_the_connection_restarted() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut config = config(listener.local_addr().expect("bound"));
    config.connection.timeout = Duration::from_millis(200);
    let client = TestClient::start(config);
    // Accept and hold connections, never answering.
    let (first, _) = within(PATIENCE, listener.accept())
        .await
        .expect("first connect in time")
        .expect("accept");
    let first_at = Instant::now();
    let (_second, _) = within(PATIENCE, listener.accept())
        .await
        .expect("reconnect in time")
        .expect("accept");
    let gap = first_at.elapsed();
    // Timeout (200 ms after the first unanswered message) plus backoff (100 ms).
    assert!(
        gap >= Duration::from_millis(300),
        "restarted after only {gap:?}"
    );
    drop(first);
    let summary = client.stop().await;
    assert!(summary.reconnects >= 1);
    assert_eq!(summary.replied, 0);
}

#[async_std::test]
async fn a_server_that_talks_but_never_answers_is_declared_dead_too() {
    use async_std::io::WriteExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut config = config(listener.local_addr().expect("bound"));
    config.connection.timeout = Duration::from_millis(300);
    let client = TestClient::start(config);
    let (mut first, _) = within(PATIENCE, listener.accept())
        .await
        .expect("first connect in time")
        .expect("accept");
    // A line every 50 ms, none of them a reply.
    let chatter = async_std::task::spawn(async move {
        while first.write_all(b"notice: still here\n").await.is_ok() {
            async_std::task::sleep(Duration::from_millis(50)).await;
        }
    });
    let reconnected = within(PATIENCE, listener.accept()).await;
    assert!(
        reconnected.is_some(),
        "the chatty, answerless server was kept"
    );
    let summary = client.stop().await;
    assert!(summary.reconnects >= 1);
    assert_eq!(summary.replied, 0);
    chatter.cancel().await;
}

/// A fake server that greets, then answers every line it reads with the
/// replies `answer` makes of it.
async fn answering_server(
    listener: &TcpListener,
    answer: fn(&str) -> String,
) -> async_std::task::JoinHandle<()> {
    use async_std::io::{BufReadExt, WriteExt};
    let (mut stream, _) = within(PATIENCE, listener.accept())
        .await
        .expect("a connect in time")
        .expect("accept");
    async_std::task::spawn(async move {
        let mut lines = async_std::io::BufReader::new(stream.clone()).lines();
        let _ = stream.write_all(b"Hello\n").await;
        while let Some(Ok(line)) = lines.next().await {
            if stream.write_all(answer(&line).as_bytes()).await.is_err() {
                break;
            }
        }
    })
}

#[async_std::test]
async fn replies_that_echo_something_else_count_for_nothing_and_the_link_is_dead() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut config = config(listener.local_addr().expect("bound"));
    config.connection.timeout = Duration::from_millis(300);
    config.supervisor.count = Some(1);
    let client = TestClient::start(config);
    let first = answering_server(&listener, |_| "1:2:3 - server reply: other\n".into()).await;
    // Replies keep coming, but none echoes a message: the wait for one runs
    // out and the client connects again instead of stopping at its count.
    let reconnected = within(PATIENCE, listener.accept()).await;
    assert!(
        reconnected.is_some(),
        "the wrong echoes kept the link alive"
    );
    first.cancel().await;
    let summary = client.stop().await;
    assert_eq!(summary.outcome, Outcome::Shutdown);
    assert_eq!(summary.replied, 0);
    assert!(summary.reconnects >= 1);
}

#[async_std::test]
async fn a_server_that_answers_twice_gets_each_message_counted_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut config = config(listener.local_addr().expect("bound"));
    config.supervisor.count = Some(3);
    let client = TestClient::start(config);
    let server = answering_server(&listener, |line| {
        format!("1:2:3 - server reply: {line}\n").repeat(2)
    })
    .await;
    let summary = within(PATIENCE, client.task)
        .await
        .expect("stops at its count");
    assert_eq!(summary.outcome, Outcome::CountReached);
    assert_eq!(summary.replied, 3);
    assert!(summary.sent >= 3, "stopped after {} messages", summary.sent);
    server.cancel().await;
}

#[test]
fn the_client_says_why_the_server_sent_it_away_and_backs_off_from_a_full_server() {
    use common::process::{
        duplex, signal, start_server, stderr_lines, wait_for, wait_with_timeout,
    };
    use std::io::BufRead;
    let (server, addr, _logs) = start_server(&["--max-clients", "1"]);
    // One client holds the only slot.
    let holder = std::net::TcpStream::connect(&addr).expect("connect");
    let mut greeting = String::new();
    std::io::BufReader::new(&holder)
        .read_line(&mut greeting)
        .expect("greeted");
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
        close.contains("reason=server closed the connection: error: server full (max 1 clients)"),
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
    signal(&server, libc::SIGTERM);
    assert!(wait_with_timeout(server).success());
}

/// A TLS server that is not duplex answers a plain client's first line with
/// a TLS alert record, not a line: the client takes it for what it is.
#[async_std::test]
async fn a_server_that_answers_with_a_tls_record_stops_a_plain_client_after_three_tries() {
    use async_std::io::{ReadExt, WriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut config = config(listener.local_addr().expect("bound"));
    config.supervisor.backoff = Duration::from_millis(20);
    let client = TestClient::start(config);
    let server = async_std::task::spawn(async move {
        let mut connections = 0;
        while let Some(Ok(mut stream)) = listener.incoming().next().await {
            connections += 1;
            let mut first = [0u8; 64];
            let _ = stream.read(&mut first).await;
            // A protocol_version alert, as rustls sends one to plain text.
            let _ = stream
                .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46])
                .await;
            if connections == 3 {
                return connections;
            }
        }
        connections
    });
    let summary = within(PATIENCE, client.task)
        .await
        .expect("stops by itself");
    assert_eq!(summary.outcome, Outcome::ServerSpeaksTls);
    assert_eq!(summary.reconnects, 2);
    assert_eq!(within(PATIENCE, server).await, Some(3));
    assert!(
        client.lines.is_empty(),
        "the record is not printed as a line"
    );
}

#[test]
fn a_server_line_over_1_mib_closes_the_connection_and_says_so() {
    use common::process::{duplex, lines_of, stderr_lines, wait_for, wait_with_timeout};
    use std::io::Write;
    const MAX: usize = 1024 * 1024;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("bound").to_string();
    // Greets, sends a line of exactly 1 MiB, then one a byte longer.
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("the client connects");
        let mut lines = b"Hello\n".to_vec();
        lines.extend(std::iter::repeat_n(b'x', MAX));
        lines.push(b'\n');
        lines.extend(std::iter::repeat_n(b'y', MAX + 1));
        lines.push(b'\n');
        // The client may be gone before the last bytes: that is the point.
        let _ = stream.write_all(&lines);
        // Hold the connection until the client closes it.
        let _ = std::io::Read::read(&mut stream, &mut [0; 1]);
    });
    let mut client = duplex()
        .args(["--role", "client", "--addr", &addr, "--max-restarts", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn client");
    let printed = lines_of(std::io::BufReader::new(
        client.stdout.take().expect("stdout piped"),
    ));
    let logs = stderr_lines(&mut client);
    let close = wait_for(&logs, "INFO  duplex::actors::connection] close");
    assert!(
        close.contains("reason=server sent a line that is too long"),
        "{close}"
    );
    // The line at the limit was taken and printed; the longer one was not.
    assert_eq!(printed.recv_timeout(PATIENCE).as_deref(), Ok("Hello"));
    let longest = printed.recv_timeout(PATIENCE).expect("the 1 MiB line");
    assert_eq!(longest.len(), MAX);
    // It gives up at once (--max-restarts 0), printing nothing more.
    assert_eq!(wait_with_timeout(client).code(), Some(1));
    assert!(printed.recv_timeout(PATIENCE).is_err(), "nothing after it");
}
