//! The server, in process, on 127.0.0.1:0: protocol bytes, isolation between
//! clients, registry counts, limits and shutdown.

mod common;

use std::time::Duration;

use async_std::task::spawn;
use chrono::{Local, Timelike};
use common::{PATIENCE, Peer, TestServer, quick_config, within};
use duplex::shutdown;

#[async_std::test]
async fn greets_and_replies_with_the_exact_bytes() {
    let server = TestServer::start(quick_config()).await;
    let mut peer = Peer::greeted(server.addr).await;
    let before = Local::now();
    peer.send(b"ping\r\n").await;
    let line = peer.line().await;
    let after = Local::now();
    let expected = |t: chrono::DateTime<Local>| {
        format!(
            "{}:{}:{} - server reply: ping\n",
            t.hour(),
            t.minute(),
            t.second()
        )
        .into_bytes()
    };
    assert!(
        line == expected(before) || line == expected(after),
        "{:?}",
        String::from_utf8_lossy(&line)
    );
    server.stop().await;
}

#[async_std::test]
async fn binary_and_empty_messages_are_echoed_verbatim_in_order() {
    let server = TestServer::start(quick_config()).await;
    let mut peer = Peer::greeted(server.addr).await;
    peer.send(b"\xff\x00\x80raw\n\nlast\n").await;
    assert_eq!(peer.reply().await, b"\xff\x00\x80raw");
    assert_eq!(peer.reply().await, b"");
    assert_eq!(peer.reply().await, b"last");
    server.stop().await;
}

/// Only a connection's first bytes can be a TLS client's hello; later, the
/// same bytes are a binary message like any other.
#[async_std::test]
async fn a_message_that_starts_like_a_tls_hello_is_echoed_after_the_first() {
    let server = TestServer::start(quick_config()).await;
    let mut peer = Peer::greeted(server.addr).await;
    peer.send(b"first\n").await;
    assert_eq!(peer.reply().await, b"first");
    let hello_like = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
    let mut line = hello_like.to_vec();
    line.push(b'\n');
    peer.send(&line).await;
    assert_eq!(peer.reply().await, hello_like);
    let snapshot = server.registry.snapshot().await;
    assert_eq!(
        (snapshot.tls_on_plain, snapshot.totals.messages_out),
        (0, 2)
    );
    server.stop().await;
}

/// After a read that leaves the socket empty, a session waits for readiness
/// instead of reading again; a read that fills the buffer reads on at once.
/// Both paths, and lines cut anywhere between reads, must lose nothing.
#[async_std::test]
async fn lines_in_any_cut_are_all_answered() {
    let mut config = quick_config();
    // The dribbled line must not be taken for a fragment, however slow.
    config.session.fragment_timeout = None;
    let server = TestServer::start(config).await;
    let mut peer = Peer::greeted(server.addr).await;
    // More than a read buffer (`buffers::READ_SIZE`, 4 KiB) in one write:
    // a read fills it, and the next reads on at once.
    let lines: Vec<Vec<u8>> = (0..1000)
        .map(|i| format!("line-{i:04}").into_bytes())
        .collect();
    let burst: Vec<u8> = lines
        .iter()
        .flat_map(|l| [&l[..], b"\n"].concat())
        .collect();
    peer.send(&burst).await;
    for line in &lines {
        assert_eq!(&peer.reply().await, line);
    }
    // One line a byte at a time, each byte its own write.
    for byte in b"dribbled\n" {
        peer.send(&[*byte]).await;
    }
    assert_eq!(peer.reply().await, b"dribbled");
    server.stop().await;
}

#[async_std::test]
async fn an_unterminated_message_is_answered_after_the_fragment_timeout() {
    let server = TestServer::start(quick_config()).await;
    let mut peer = Peer::greeted(server.addr).await;
    // What the original Node client sends: a bare hex string, no newline.
    peer.send(b"3f2a9c1d0b7e4").await;
    assert_eq!(peer.reply().await, b"3f2a9c1d0b7e4");
    peer.send(b"a1b2").await;
    assert_eq!(peer.reply().await, b"a1b2");
    server.stop().await;
}

/// A client that sends a byte at a time, more often than the fragment
/// timeout, and never a newline (slowloris) still gets its fragment taken
/// as a message once the timeout has passed since its first byte.
#[async_std::test]
async fn a_fragment_that_trickles_in_is_answered_at_the_timeout_from_its_first_byte() {
    use async_std::io::WriteExt;
    let mut config = quick_config();
    // Far above the trickle's 10 ms gaps, even on a loaded machine.
    config.session.fragment_timeout = Some(Duration::from_millis(300));
    let server = TestServer::start(config).await;
    let mut peer = Peer::greeted(server.addr).await;
    // A byte every 10 ms, beside the reads, for longer than the test waits
    // for a reply (without the bound, none would come while it lasts).
    let mut stream = peer.stream();
    let trickle = spawn(async move {
        for _ in 0..2000 {
            if stream.write_all(b"z").await.is_err() {
                break;
            }
            async_std::task::sleep(Duration::from_millis(10)).await;
        }
    });
    let reply = peer.reply().await;
    assert!(
        !reply.is_empty() && reply.iter().all(|&b| b == b'z'),
        "{reply:?}"
    );
    trickle.cancel().await;
    server.stop().await;
}

/// A long line that streams in for longer than the fragment timeout, in
/// reads of a good size, is one message: only a trickle is cut.
#[async_std::test]
async fn a_long_line_streaming_in_past_the_fragment_timeout_is_one_message() {
    let mut config = quick_config();
    config.session.fragment_timeout = Some(Duration::from_millis(300));
    let server = TestServer::start(config).await;
    let mut peer = Peer::greeted(server.addr).await;
    let chunk = [b'y'; 1024];
    // 40 pieces 10 ms apart: the line takes longer than the timeout.
    for _ in 0..40 {
        peer.send(&chunk).await;
        async_std::task::sleep(Duration::from_millis(10)).await;
    }
    peer.send(b"\n").await;
    let reply = peer.reply().await;
    assert_eq!(reply.len(), 40 * 1024, "answered in parts");
    server.stop().await;
}

#[async_std::test]
async fn with_the_fragment_timeout_off_a_split_line_is_one_message() {
    let mut config = quick_config();
    config.session.fragment_timeout = None;
    let server = TestServer::start(config).await;
    let mut peer = Peer::greeted(server.addr).await;
    peer.send(b"first ha").await;
    // Wait on the server's answer to something else, not on a sleep: the
    // other client's reply proves the server has been running meanwhile.
    let mut other = Peer::greeted(server.addr).await;
    other.send(b"x\n").await;
    other.reply().await;
    peer.send(b"lf\n").await;
    assert_eq!(peer.reply().await, b"first half");
    server.stop().await;
}

#[async_std::test]
async fn a_hundred_concurrent_clients_each_get_only_their_own_replies_in_order() {
    const CLIENTS: usize = 100;
    const MESSAGES: usize = 20;
    let server = TestServer::start(quick_config()).await;
    let (release, go) = shutdown::channel();
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let addr = server.addr;
        let go = go.clone();
        tasks.push(spawn(async move {
            let mut peer = Peer::greeted(addr).await;
            go.wait().await;
            // Several messages per write, split at odd places across writes.
            let mut bytes = Vec::new();
            for message in 0..MESSAGES {
                bytes.extend_from_slice(format!("client-{client}-message-{message}\n").as_bytes());
            }
            for chunk in bytes.chunks(37) {
                peer.send(chunk).await;
            }
            for message in 0..MESSAGES {
                let expected = format!("client-{client}-message-{message}");
                assert_eq!(
                    String::from_utf8(peer.reply().await).expect("utf-8"),
                    expected
                );
            }
        }));
    }
    server.wait_for_clients(CLIENTS).await;
    release.trigger();
    for task in tasks {
        within(PATIENCE, task)
            .await
            .expect("client finished in time");
    }
    server.wait_for_clients(0).await;
    let last = server.registry.snapshot().await;
    assert!(last.clients.is_empty());
    assert_eq!(last.totals.messages_in, (CLIENTS * MESSAGES) as u64);
    assert_eq!(last.totals.messages_out, (CLIENTS * MESSAGES) as u64);
    assert_eq!(last.admitted, CLIENTS as u64);
    server.stop().await;
}

#[async_std::test]
async fn the_registry_lists_each_client_with_its_peer_address_and_counts() {
    let server = TestServer::start(quick_config()).await;
    let mut peer = Peer::greeted(server.addr).await;
    peer.send(b"one\ntwo\n").await;
    peer.reply().await;
    peer.reply().await;
    // A session counts what it read before it answers, and the replies of
    // a batch once their write returns (which may be just after we read
    // them), before it reads again: the reply to a later line proves that
    // the first two are counted.
    peer.send(b"three\n").await;
    assert_eq!(peer.reply().await, b"three");
    let snapshot = server.registry.snapshot().await;
    assert_eq!(snapshot.clients.len(), 1);
    let client = &snapshot.clients[0];
    assert_eq!(client.peer, peer.local_addr());
    assert_eq!(client.counts.messages_in, 3);
    assert_eq!(client.counts.bytes_in, 14);
    let out = client.counts.messages_out;
    assert!((2..=3).contains(&out), "{out} replies counted");
    // Once it has left (its last write returned long before), every reply
    // is in the totals.
    peer.finish_writing();
    assert!(peer.rest().await.is_empty());
    server.wait_for_clients(0).await;
    let totals = server.registry.snapshot().await.totals;
    assert_eq!((totals.messages_in, totals.messages_out), (3, 3));
    server.stop().await;
}

#[async_std::test]
async fn a_line_over_the_limit_gets_an_error_and_only_that_client_is_closed() {
    let mut config = quick_config();
    config.session.max_line = 1024;
    let server = TestServer::start(config).await;
    let mut bystander = Peer::greeted(server.addr).await;
    let mut offender = Peer::greeted(server.addr).await;
    offender.send(&[b'x'; 5000]).await;
    assert_eq!(
        offender.line().await,
        b"error: line too long (max 1024 bytes)\n"
    );
    assert_eq!(offender.line().await, b"", "closed after the error");
    bystander.send(b"still here\n").await;
    assert_eq!(bystander.reply().await, b"still here");
    server.wait_for_clients(1).await;
    server.stop().await;
}

#[async_std::test]
async fn a_fragment_over_the_limit_is_too_long_as_the_same_line_would_be() {
    let mut config = quick_config();
    config.session.max_line = 8;
    let server = TestServer::start(config).await;
    // At the limit, a fragment is answered once the fragment timeout passes.
    let mut at_limit = Peer::greeted(server.addr).await;
    at_limit.send(b"12345678").await;
    assert_eq!(at_limit.reply().await, b"12345678");
    // One byte more, unterminated, is refused like the same bytes with "\n".
    for ending in [&b""[..], b"\n"] {
        let mut over = Peer::greeted(server.addr).await;
        over.send(&[&b"123456789"[..], ending].concat()).await;
        assert_eq!(over.line().await, b"error: line too long (max 8 bytes)\n");
        assert_eq!(over.line().await, b"", "closed after the error");
    }
    server.stop().await;
}

#[async_std::test]
async fn one_client_over_the_cap_is_turned_away_and_the_others_are_untouched() {
    let mut config = quick_config();
    config.registry.max_clients = 2;
    let server = TestServer::start(config).await;
    let mut first = Peer::greeted(server.addr).await;
    let _second = Peer::greeted(server.addr).await;
    let mut third = Peer::connect(server.addr).await;
    assert_eq!(third.line().await, b"error: server full (max 2 clients)\n");
    assert_eq!(third.line().await, b"");
    first.send(b"ok\n").await;
    assert_eq!(first.reply().await, b"ok");
    assert_eq!(server.registry.snapshot().await.rejected, 1);
    server.stop().await;
}

#[async_std::test]
async fn on_four_cores_the_cap_and_the_client_list_cover_every_core() {
    let mut config = quick_config();
    config.threads = 4;
    config.registry.max_clients = 30;
    let server = TestServer::start(config).await;
    let mut admitted = Vec::new();
    for _ in 0..30 {
        admitted.push(Peer::greeted(server.addr).await);
    }
    // Whichever core accepts them, the registry's one cap turns these away.
    for _ in 0..5 {
        let mut over = Peer::connect(server.addr).await;
        assert_eq!(over.line().await, b"error: server full (max 30 clients)\n");
    }
    for (i, peer) in admitted.iter_mut().enumerate() {
        let message = format!("m{i}\n");
        peer.send(message.as_bytes()).await;
        assert_eq!(peer.reply().await, message.trim_end().as_bytes());
    }
    let snapshot = server.registry.snapshot().await;
    assert_eq!(
        snapshot.clients.len(),
        30,
        "one list of every core's clients"
    );
    assert_eq!((snapshot.admitted, snapshot.rejected), (30, 5));
    assert_eq!(snapshot.totals.messages_in, 30);
    drop(admitted);
    server.wait_for_clients(0).await;
    server.stop().await;
}

#[async_std::test]
async fn an_idle_client_is_told_and_closed() {
    let mut config = quick_config();
    config.registry.idle_timeout = Some(Duration::from_millis(100));
    let server = TestServer::start(config).await;
    let mut peer = Peer::greeted(server.addr).await;
    assert_eq!(peer.line().await, b"error: idle timeout\n");
    assert_eq!(peer.line().await, b"");
    server.wait_for_clients(0).await;
    server.stop().await;
}

#[async_std::test]
async fn a_half_closed_client_gets_every_reply_then_the_server_closes() {
    let mut config = quick_config();
    config.session.fragment_timeout = None;
    let server = TestServer::start(config).await;
    let mut peer = Peer::greeted(server.addr).await;
    peer.send(b"a\nb\ntail").await;
    peer.finish_writing();
    assert_eq!(peer.reply().await, b"a");
    assert_eq!(peer.reply().await, b"b");
    assert_eq!(peer.reply().await, b"tail");
    assert_eq!(peer.line().await, b"", "server closed after the last reply");
    server.wait_for_clients(0).await;
    let totals = server.stop().await.last.totals;
    assert_eq!((totals.messages_in, totals.messages_out), (3, 3));
}

#[async_std::test]
async fn lines_beyond_one_batch_of_replies_are_all_answered_in_order() {
    let server = TestServer::start(quick_config()).await;
    let mut peer = Peer::greeted(server.addr).await;
    // Short lines, so that one read holds far more lines than one batch of
    // replies: the rest must be answered without waiting for more input.
    let lines: Vec<String> = (0..5000).map(|i| i.to_string()).collect();
    peer.send((lines.join("\n") + "\n").as_bytes()).await;
    for line in &lines {
        assert_eq!(peer.reply().await, line.as_bytes());
    }
    drop(peer);
    server.wait_for_clients(0).await;
    let totals = server.stop().await.last.totals;
    assert_eq!((totals.messages_in, totals.messages_out), (5000, 5000));
}

#[async_std::test]
async fn a_fragment_answered_at_shutdown_counts_as_a_message_in() {
    let mut config = quick_config();
    config.session.fragment_timeout = None;
    let server = TestServer::start(config).await;
    let mut peer = Peer::greeted(server.addr).await;
    // One write of six bytes is one read on loopback: the reply to `a`
    // shows that the server holds `tail` too.
    peer.send(b"a\ntail").await;
    assert_eq!(peer.reply().await, b"a");
    let stopping = spawn(server.stop());
    assert_eq!(peer.reply().await, b"tail");
    assert_eq!(peer.line().await, b"notice: server shutting down\n");
    let totals = within(PATIENCE, stopping).await.expect("stops").last.totals;
    assert_eq!((totals.messages_in, totals.messages_out), (2, 2));
}

#[async_std::test]
async fn shutdown_sends_the_notice_closes_everyone_and_stops_accepting() {
    let server = TestServer::start(quick_config()).await;
    let addr = server.addr;
    let mut peers = Vec::new();
    for _ in 0..3 {
        peers.push(Peer::greeted(addr).await);
    }
    peers[0].send(b"last words\n").await;
    assert_eq!(peers[0].reply().await, b"last words");
    let summary = server.stop().await;
    assert_eq!(summary.at_shutdown, 3);
    assert_eq!(summary.cut, 0);
    assert!(summary.last.clients.is_empty());
    for peer in &mut peers {
        assert_eq!(peer.rest().await, b"notice: server shutting down\n");
    }
    assert!(
        async_std::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[async_std::test]
async fn a_session_woken_while_waiting_for_input_still_reads_the_next_message() {
    let server = TestServer::start(quick_config()).await;
    let mut a = Peer::greeted(server.addr).await;
    let mut b = Peer::greeted(server.addr).await;
    a.send(b"before\n").await;
    assert_eq!(a.reply().await, b"before");
    // Unterminated bytes: the fragment deadline, not input, wakes each session
    // while it waits for input, and it answers them.
    for (peer, fragment) in [(&mut a, &b"frag a"[..]), (&mut b, &b"frag b"[..])] {
        peer.send(fragment).await;
        assert_eq!(peer.reply().await, fragment);
    }
    // Woken that way, they still read and answer what comes next.
    for (peer, message) in [(&mut a, &b"after"[..]), (&mut b, &b"and b"[..])] {
        peer.send(&[message, b"\n"].concat()).await;
        assert_eq!(peer.reply().await, message);
    }
    server.stop().await;
}
