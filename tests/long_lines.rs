//! Lines longer than a session's read buffer, through the whole server on
//! 127.0.0.1:0: answered byte for byte after their timestamp, however the
//! client takes its replies, and refused over the limit.

mod common;

use async_std::net::TcpStream;
use async_std::task::spawn;
use common::{PATIENCE, Peer, TestServer, quick_config, within};
use futures::AsyncWriteExt;

/// Bytes of every value but `\n` and `\r`, in a pattern that shows a byte
/// lost, doubled or moved; the first byte tells the lines apart.
fn pattern(len: usize, tag: u8) -> Vec<u8> {
    (0..len)
        .map(|i| match (i % 251) as u8 {
            _ if i == 0 => tag,
            b'\n' | b'\r' => b'.',
            byte => byte,
        })
        .collect()
}

/// The messages, each terminated as `endings` says in turn.
fn stream_of(messages: &[Vec<u8>], endings: &[&[u8]]) -> Vec<u8> {
    messages
        .iter()
        .zip(endings.iter().cycle())
        .flat_map(|(message, ending)| [&message[..], ending].concat())
        .collect()
}

/// Sends `bytes` from a task of its own, so that a sender the server stops
/// reading while its replies wait cannot hold up the test's reads.
fn send_in_background(mut writer: TcpStream, bytes: Vec<u8>) {
    spawn(async move {
        let _ = within(PATIENCE, writer.write_all(&bytes)).await;
    });
}

#[async_std::test]
async fn long_lines_among_short_ones_are_answered_byte_for_byte() {
    let mut config = quick_config();
    config.session.max_line = 256 * 1024;
    config.session.fragment_timeout = None;
    let server = TestServer::start(config).await;
    let mut messages: Vec<Vec<u8>> = [5, 3_900, 4_097, 10_000, 65_536, 200_000, 0, 12, 256 * 1024]
        .iter()
        .zip(b'a'..)
        .map(|(&len, tag)| pattern(len, tag))
        .collect();
    // A `\r` that ends nothing is part of its message.
    messages[3][5_000] = b'\r';
    let mut peer = Peer::greeted(server.addr).await;
    peer.send(&stream_of(&messages, &[b"\n", b"\r\n"])).await;
    for message in &messages {
        let reply = peer.reply().await;
        assert_eq!(reply.len(), message.len());
        assert!(
            &reply == message,
            "the reply to {:?} differs",
            message.first()
        );
    }
    server.stop().await;
}

#[async_std::test]
async fn a_client_that_takes_its_replies_slowly_gets_every_long_one_intact() {
    let mut config = quick_config();
    config.session.fragment_timeout = None;
    let server = TestServer::start(config).await;
    // A small receive buffer: the server's replies wait on this client
    // again and again, and with them the lines the server has not read.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let stream = TcpStream::from(std::net::TcpStream::from(socket));
    let mut peer = Peer::from_stream(stream.clone());
    let messages: Vec<Vec<u8>> = (0..48u8)
        .map(|i| pattern(20_000 + usize::from(i) * 900, b'0' + i))
        .collect();
    send_in_background(stream, stream_of(&messages, &[b"\n"]));
    assert_eq!(peer.line().await, b"Hello\n");
    for message in &messages {
        let reply = peer.reply().await;
        assert!(
            reply == *message,
            "the reply to line {} differs",
            message[0]
        );
    }
    server.stop().await;
}

#[async_std::test]
async fn a_long_fragment_is_answered_whole_at_the_fragment_timeout() {
    let server = TestServer::start(quick_config()).await;
    let mut peer = Peer::greeted(server.addr).await;
    let fragment = pattern(30_000, b'f');
    peer.send(&fragment).await;
    assert!(peer.reply().await == fragment);
    peer.send(b"after\n").await;
    assert_eq!(peer.reply().await, b"after");
    server.stop().await;
}

#[async_std::test]
async fn a_long_line_over_the_limit_is_refused_whether_or_not_its_end_came() {
    let mut config = quick_config();
    config.session.max_line = 16 * 1024;
    config.session.fragment_timeout = None;
    let server = TestServer::start(config).await;
    let mut bystander = Peer::greeted(server.addr).await;
    let over_the_limit = [
        [&pattern(16 * 1024 + 1, b'n')[..], b"\n"].concat(),
        pattern(40_000, b'x'),
    ];
    for bytes in over_the_limit {
        let mut offender = Peer::greeted(server.addr).await;
        offender.send(&bytes).await;
        assert_eq!(
            offender.until_closed().await,
            b"error: line too long (max 16384 bytes)\n"
        );
    }
    bystander.send(b"still here\n").await;
    assert_eq!(bystander.reply().await, b"still here");
    server.wait_for_clients(1).await;
    server.stop().await;
}
