//! The client, in process, against the in-process server (and a silent fake):
//! replies, restarts after the server goes away, dead-connection detection.

mod common;

use std::time::{Duration, Instant};

use async_std::net::TcpListener;
use common::{PATIENCE, TestClient, TestServer, quick_config, within};
use duplex::client::{ClientConfig, Outcome};

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
async fn reconnects_within_the_backoff_after_the_server_restarts_on_the_same_port() {
    let server = TestServer::start(quick_config()).await;
    let addr = server.addr;
    let config = config(addr);
    let backoff = config.supervisor.backoff;
    let client = TestClient::start(config);
    client.reply().await;
    server.stop().await;

    let restarted = TestServer::start_on(&addr.to_string(), quick_config()).await;
    let up_at = Instant::now();
    restarted.wait_for_clients(1).await;
    let took = up_at.elapsed();
    // One backoff at most, plus scheduling and connect time.
    let margin = Duration::from_millis(500);
    assert!(took <= backoff + margin, "reconnected after {took:?}");
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
