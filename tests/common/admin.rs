//! Helpers for the admin interface's tests: a server with `--admin-addr`,
//! `curl` against it, raw requests, and a log kept whole.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use super::process::{PATIENCE, listening_addr, server_command, start_server_from, wait_for};

/// A server with the admin interface on a free port; returns it, its client
/// address, its admin address and its log lines.
pub fn start(extra: &[&str]) -> (Child, SocketAddr, String, Receiver<String>) {
    let mut command = server_command(&["--admin-addr", "127.0.0.1:0"]);
    command.args(extra);
    let (server, addr, logs) = start_server_from(command);
    let admin = listening_addr(&wait_for(&logs, "admin listening"));
    (server, addr.parse().expect("address"), admin, logs)
}

/// What curl got: the status, the headers (lower-cased names) and the body.
pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

/// `curl -i` with `args`, then the URL of `path` on `admin`.
pub fn curl(admin: &str, path: &str, args: &[&str]) -> Reply {
    let output = Command::new("curl")
        .args(["-s", "-i", "--max-time", "10"])
        .args(args)
        .arg(format!("http://{admin}{path}"))
        .output()
        .expect("run curl");
    assert!(output.status.success(), "curl {args:?} {path}: {output:?}");
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.split_whitespace().nth(1).expect("a status");
    Reply {
        status: status.parse().expect("a number"),
        headers: head.to_lowercase(),
        body: body.to_owned(),
    }
}

/// What a raw `request` gets back, up to the server's close.
pub fn raw(admin: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(admin).expect("connect to the admin port");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    stream.write_all(request).expect("write");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// Forwards `logs` and keeps a copy of every line, for a look at them all.
pub fn recorded(logs: Receiver<String>) -> (Receiver<String>, Arc<Mutex<Vec<String>>>) {
    let kept = Arc::new(Mutex::new(Vec::new()));
    let (sender, forwarded) = std::sync::mpsc::channel();
    let copy = kept.clone();
    std::thread::spawn(move || {
        for line in logs {
            copy.lock().expect("not poisoned").push(line.clone());
            // The test may have stopped reading.
            let _ = sender.send(line);
        }
    });
    (forwarded, kept)
}
