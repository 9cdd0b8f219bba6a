//! `DELETE /clients/{id}` on a client the server cannot tell: one stuck in
//! a write (it reads nothing) is reset at once, not left to a timeout, and
//! counted as an operator's cut. (A client that reads is told
//! `error: closed by operator`: tests/admin.rs.)

mod common;

use async_std::io::{ReadExt, WriteExt};
use async_std::net::TcpStream;
use common::admin::raw;
use common::certs::TempDir;
use common::{PATIENCE, quick_config, within};
use duplex::server::{AdminConfig, Server};

const TOKEN: &str = "operator-test-token";

/// A request to the admin server at `admin`, with the token; the answer.
fn ask(admin: &str, method: &str, path: &str) -> String {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    raw(admin, request.as_bytes())
}

#[async_std::test]
async fn a_client_stuck_in_a_write_is_reset_when_an_operator_closes_it() {
    const LINE: usize = 12 * 1024 * 1024;
    let dir = TempDir::new("operator-token");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("write token");
    let mut config = quick_config();
    // Nothing but the operator ends this client.
    config.session.write_timeout = None;
    config.registry.idle_timeout = None;
    config.session.max_line = LINE;
    config.session.fragment_timeout = None;
    config.admin = Some(AdminConfig {
        addr: "127.0.0.1:0".into(),
        token_file: Some(token_file),
    });
    let server = Server::bind("127.0.0.1:0", config).expect("bind");
    let (addr, admin) = (server.local_addr().expect("bound"), server.admin_addr());
    let admin = admin.expect("an admin address").to_string();
    let registry = server.registry();
    let (trigger, shutdown) = duplex::shutdown::channel();
    let task = async_std::task::spawn(server.run(shutdown));

    // A client with a small window asks for a reply longer than the
    // kernel's buffers and reads none of it.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&addr.into()).expect("connect");
    let mut stream = TcpStream::from(std::net::TcpStream::from(socket));
    let mut greeting = [0; 6];
    within(PATIENCE, stream.read_exact(&mut greeting))
        .await
        .expect("greeted in time")
        .expect("greeting");
    let line = [&vec![b'x'; LINE][..], b"\n"].concat();
    stream.write_all(&line).await.expect("one line");
    // Its message is counted once read, before its reply is written: from
    // then on the session waits on a write that cannot finish.
    let client = registry.snapshot().await.clients[0].id;
    let path = format!("/clients/{client}");
    let counted = (0..10_000).any(|_| ask(&admin, "GET", &path).contains("\"messages_in\":1"));
    assert!(counted, "the line was read");

    let closed = ask(&admin, "DELETE", &path);
    assert!(closed.starts_with("HTTP/1.1 202"), "{closed}");
    within(PATIENCE, registry.wait_for_clients(0))
        .await
        .expect("the client leaves");
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
    let metrics = ask(&admin, "GET", "/metrics");
    assert!(
        metrics.contains("duplex_cuts_total{reason=\"operator\"} 1\n"),
        "{metrics}"
    );
    trigger.trigger();
    within(PATIENCE, task).await.expect("the server stops");
}
