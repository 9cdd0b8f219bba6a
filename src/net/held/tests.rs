//! Long lines held in the kernel, on real loopback sockets: every byte
//! relayed once, terminators found across every cut, the limit kept, and
//! lines the kernel cannot hold read as before.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;

use super::super::LineSocket;
use crate::rt::Socket;
use crate::wire::FrameError;

/// A server-side socket that holds long lines, and the client's end.
fn pair(max_line: usize, server_rcvbuf: Option<i32>) -> (LineSocket, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("bound")).expect("connect");
    let (accepted, _) = listener.accept().expect("accept");
    if let Some(bytes) = server_rcvbuf {
        super::super::set_int_option(&accepted, libc::SOL_SOCKET, libc::SO_RCVBUF, bytes)
            .expect("SO_RCVBUF");
    }
    let mut socket = LineSocket::new(Socket::new(accepted).expect("register"), max_line);
    socket.hold_long_lines();
    (socket, client)
}

/// What the server makes of the next message, as a session would: a line
/// from the framer, or a held one relayed to the client (its head written
/// first, as the session writes it after its timestamp). `Ok((message,
/// held))`, the message as the client reads it back, without its `\n`.
async fn next_message(
    socket: &mut LineSocket,
    client: &TcpStream,
) -> Result<(Vec<u8>, bool), FrameError> {
    loop {
        if let Some(line) = socket.next_line() {
            return line.map(|line| (line.to_vec(), false));
        }
        if socket.held_ready() {
            return Ok((relay(socket, client).await, true));
        }
        if socket.read().await.expect("read") == 0 {
            if let Some(fragment) = socket.take_fragment() {
                return fragment.map(|fragment| (fragment.to_vec(), false));
            }
            assert!(socket.held_ready(), "nothing after the end of the stream");
        }
    }
}

/// Relays the ready message while another thread reads it on the client's
/// side, so that a relay bigger than the socket buffers cannot stall.
async fn relay(socket: &mut LineSocket, client: &TcpStream) -> Vec<u8> {
    // Buffered: nothing follows the message until it has been read.
    let mut reader = BufReader::new(client.try_clone().expect("clone"));
    let reading = thread::spawn(move || {
        let mut message = Vec::new();
        reader
            .read_until(b'\n', &mut message)
            .expect("the relayed message");
        assert_eq!(message.pop(), Some(b'\n'), "the whole message");
        message
    });
    let head = socket.take_held_head().to_vec();
    socket.write_all(&head).await.expect("write the head");
    loop {
        let (_, done) = socket.relay_now().expect("relay");
        if done {
            break;
        }
        socket
            .writable_bounded(None, futures::future::pending::<()>())
            .await
            .expect("writable");
    }
    reading.join().expect("reader")
}

/// Bytes of every value but `\n` and `\r`, in a pattern that shows a byte
/// lost, doubled or moved.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| match (i % 251) as u8 {
            b'\n' | b'\r' => b'.',
            byte => byte,
        })
        .collect()
}

#[async_std::test]
async fn a_long_line_is_relayed_from_the_kernel_byte_for_byte() {
    let (mut socket, mut client) = pair(64 * 1024, None);
    let mut line = pattern(40_000);
    // A `\r` that ends nothing is part of the message.
    line[20_000] = b'\r';
    client
        .write_all(&[&line[..], b"\nshort\n"].concat())
        .unwrap();
    assert_eq!(next_message(&mut socket, &client).await, Ok((line, true)));
    // What follows the held line is read as usual.
    assert_eq!(
        next_message(&mut socket, &client).await,
        Ok((b"short".to_vec(), false))
    );
    assert!(socket.held.is_none());
}

#[async_std::test]
async fn a_crlf_cut_after_the_head_or_after_a_look_is_one_terminator() {
    let (mut socket, mut client) = pair(64 * 1024, None);
    // The `\r` is the head's last byte, its `\n` the first the kernel holds.
    let head = pattern(buffers_read_size() - 1);
    client.write_all(&head).unwrap();
    client.write_all(b"\r").unwrap();
    while socket.framer.fragment().len() < head.len() + 1 {
        socket.read().await.expect("read");
    }
    client.write_all(b"\n").unwrap();
    assert_eq!(
        next_message(&mut socket, &client).await,
        Ok((head.clone(), true))
    );
    // The `\r` is the last byte looked at, its `\n` comes after.
    let line = pattern(10_000);
    client.write_all(&line).unwrap();
    client.write_all(b"\r").unwrap();
    while socket.held.as_ref().is_none_or(|held| !held.seen_cr) {
        socket.read().await.expect("read");
    }
    client.write_all(b"\nnext\r\n").unwrap();
    assert_eq!(next_message(&mut socket, &client).await, Ok((line, true)));
    assert_eq!(
        next_message(&mut socket, &client).await,
        Ok((b"next".to_vec(), false))
    );
}

#[async_std::test]
async fn the_limit_holds_for_held_lines_with_or_without_a_newline() {
    const MAX: usize = 8 * 1024;
    let too_long = Err(FrameError::LineTooLong { max: MAX });
    // At the limit, `\r\n`-terminated: a message.
    let (mut socket, mut client) = pair(MAX, None);
    let line = pattern(MAX);
    client.write_all(&[&line[..], b"\r\n"].concat()).unwrap();
    assert_eq!(next_message(&mut socket, &client).await, Ok((line, true)));
    // A byte over, with its newline.
    let (mut socket, mut client) = pair(MAX, None);
    client
        .write_all(&[&pattern(MAX + 1)[..], b"\n"].concat())
        .unwrap();
    assert_eq!(next_message(&mut socket, &client).await, too_long);
    // Far over, with no newline yet: refused without waiting for one.
    let (mut socket, mut client) = pair(MAX, None);
    client.write_all(&pattern(3 * MAX)).unwrap();
    assert_eq!(next_message(&mut socket, &client).await, too_long);
}

#[async_std::test]
async fn a_held_fragment_is_one_message_and_so_is_one_cut_by_the_end_of_the_stream() {
    let (mut socket, mut client) = pair(64 * 1024, None);
    let fragment = pattern(10_000);
    client.write_all(&fragment).unwrap();
    while socket
        .held
        .as_ref()
        .is_none_or(|held| held.seen < 10_000 - 4096)
    {
        socket.read().await.expect("read");
    }
    // What the fragment timeout does.
    assert!(socket.has_fragment());
    assert_eq!(socket.take_fragment(), None);
    assert!(socket.held_ready() && !socket.has_fragment());
    assert_eq!(relay(&mut socket, &client).await, fragment);
    // Cut by the end of the stream instead.
    let rest = pattern(20_000);
    client.write_all(&rest).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(next_message(&mut socket, &client).await, Ok((rest, true)));
}

#[async_std::test]
async fn a_line_the_kernel_cannot_hold_is_read_into_the_framer() {
    // A receive buffer set by hand does not grow for the low-water mark, so
    // the line's end cannot come until some of it is read.
    let (mut socket, mut client) = pair(256 * 1024, Some(16 * 1024));
    let line = pattern(200_000);
    let writing = {
        let bytes = [&line[..], b"\n"].concat();
        let mut client = client.try_clone().unwrap();
        thread::spawn(move || client.write_all(&bytes).unwrap())
    };
    // Every byte is reported as received once, though the bytes looked at
    // are read again.
    let framed = async {
        let mut reported = 0;
        loop {
            if let Some(line) = socket.next_line() {
                return (line.expect("within the limit").to_vec(), reported);
            }
            reported += socket.read().await.expect("read");
        }
    };
    // Bounded: the way this fails is a session that waits forever.
    let framed = async_std::future::timeout(std::time::Duration::from_secs(10), framed);
    let (message, reported) = framed.await.expect("read in time");
    assert!(message == line);
    assert_eq!(reported, line.len() + 1);
    writing.join().unwrap();
    // The next long line may be held again.
    let line = pattern(6_000);
    client.write_all(&[&line[..], b"\n"].concat()).unwrap();
    assert_eq!(next_message(&mut socket, &client).await, Ok((line, true)));
}

#[async_std::test]
async fn a_relay_the_client_takes_slowly_loses_nothing() {
    let (mut socket, client) = pair(1024 * 1024, None);
    client.set_nodelay(true).unwrap();
    let lines: Vec<Vec<u8>> = (0..8)
        .map(|i| {
            let mut line = pattern(100_000 + i * 7_919);
            line[0] = b'0' + i as u8;
            line
        })
        .collect();
    let writing = {
        let bytes: Vec<u8> = lines
            .iter()
            .flat_map(|l| [&l[..], b"\n"].concat())
            .collect();
        let mut client = client.try_clone().unwrap();
        thread::spawn(move || client.write_all(&bytes).unwrap())
    };
    for line in lines {
        let (message, _) = next_message(&mut socket, &client).await.unwrap();
        assert_eq!(message.len(), line.len());
        assert!(message == line, "line {} differs", line[0] as char);
    }
    writing.join().unwrap();
}

fn buffers_read_size() -> usize {
    crate::buffers::READ_SIZE
}
