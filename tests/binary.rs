//! The built `duplex` binary, as a user runs it: server and client processes,
//! signals, exit codes, --help, log formats.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(15);

fn duplex() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_duplex"));
    command.env("RUST_LOG", "info").stdin(Stdio::null());
    command
}

/// Forwards a child's stderr lines to a channel, so tests can wait on them.
fn stderr_lines(child: &mut Child) -> Receiver<String> {
    let stderr = child.stderr.take().expect("stderr piped");
    let (sender, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// The next line on `lines` containing `needle`.
fn wait_for(lines: &Receiver<String>, needle: &str) -> String {
    loop {
        let line = lines
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("no log line containing {needle:?}"));
        if line.contains(needle) {
            return line;
        }
    }
}

fn wait_with_timeout(mut child: Child) -> ExitStatus {
    let (sender, done) = mpsc::channel();
    let pid = child.id();
    thread::spawn(move || {
        let _ = sender.send(child.wait());
    });
    match done.recv_timeout(PATIENCE) {
        Ok(status) => status.expect("wait"),
        Err(_) => {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("process {pid} did not exit in time");
        }
    }
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: plain kill(2) on our own child's pid.
    let sent = unsafe { libc::kill(child.id() as i32, signal) };
    assert_eq!(sent, 0, "kill failed");
}

/// A server process on 127.0.0.1:0; returns it, its address and its log lines.
fn start_server(extra: &[&str]) -> (Child, String, Receiver<String>) {
    let mut server = duplex()
        .args(["--role", "server", "--addr", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let logs = stderr_lines(&mut server);
    let listening = wait_for(&logs, "listening");
    let addr = if listening.starts_with('{') {
        let object: serde_json::Value = serde_json::from_str(&listening).expect("JSON log line");
        object["addr"].as_str().map(String::from)
    } else {
        listening
            .split_whitespace()
            .find_map(|field| field.strip_prefix("addr=").map(String::from))
    };
    let addr = addr.expect("the listening line names the address");
    (server, addr, logs)
}

#[test]
fn server_and_client_processes_talk_and_exit_cleanly() {
    let (server, addr, server_logs) = start_server(&[]);
    let mut client = duplex()
        .args([
            "--role",
            "client",
            "--addr",
            &addr,
            "--count",
            "3",
            "--interval",
            "50ms",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    let client_logs = stderr_lines(&mut client);
    let mut stdout = client.stdout.take().expect("stdout piped");
    let status = wait_with_timeout(client);
    assert!(status.success(), "client exit: {status}");
    let mut output = String::new();
    stdout.read_to_string(&mut output).expect("utf-8 stdout");

    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), 4, "{output}");
    assert_eq!(lines[0], "Hello");
    for line in &lines[1..] {
        let echo = duplex::wire::reply_echo(line.as_bytes()).expect("a reply line");
        assert_eq!(echo.len(), 13);
    }
    for event in ["lookup", "connect", "close", "client stopped"] {
        wait_for(&client_logs, event);
    }
    wait_for(&server_logs, "client joined");
    wait_for(&server_logs, "client left");

    signal(&server, libc::SIGTERM);
    let status = wait_with_timeout(server);
    assert!(status.success(), "server exit: {status}");
    wait_for(&server_logs, "server stopped");
}

#[test]
fn sigusr1_logs_a_registry_snapshot_and_sigint_stops_the_server() {
    let (server, addr, logs) = start_server(&["--registry-interval", "0"]);
    let connection = std::net::TcpStream::connect(&addr).expect("connect");
    wait_for(&logs, "client joined");
    signal(&server, libc::SIGUSR1);
    let summary = wait_for(&logs, "registry snapshot");
    assert!(summary.contains("clients=1"), "{summary}");
    let client = wait_for(&logs, "registry client");
    assert!(client.contains("client_id=1"), "{client}");
    signal(&server, libc::SIGINT);
    assert!(wait_with_timeout(server).success());
    drop(connection);
}

#[test]
fn the_client_exits_zero_on_sigterm_while_the_server_is_down() {
    // A port that was free a moment ago: connecting to it is refused.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = probe.local_addr().expect("bound").to_string();
    drop(probe);
    let mut client = duplex()
        .args(["--role", "client", "--addr", &addr, "--backoff", "50ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    let logs = stderr_lines(&mut client);
    wait_for(&logs, "restarting connection");
    signal(&client, libc::SIGTERM);
    assert!(wait_with_timeout(client).success());
    let summary = wait_for(&logs, "client stopped");
    assert!(summary.contains("outcome=shutdown"), "{summary}");
}

#[test]
fn json_logs_are_one_object_per_line_with_the_key_values_as_fields() {
    let (server, addr, logs) = start_server(&["--log-format", "json"]);
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    signal(&server, libc::SIGTERM);
    assert!(wait_with_timeout(server).success());
    let line = wait_for(&logs, "server stopped");
    let object: serde_json::Value = serde_json::from_str(&line).expect("one JSON object");
    assert_eq!(object["msg"], "server stopped");
    assert_eq!(object["level"], "INFO");
    assert_eq!(object["accepted"], 0);
}

#[test]
fn help_explains_every_flag() {
    let output = duplex().arg("--help").output().expect("run --help");
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).expect("utf-8");
    for flag in [
        "--role",
        "--addr",
        "--log-format",
        "--max-line",
        "--fragment-timeout",
        "--max-clients",
        "--idle-timeout",
        "--registry-interval",
        "--shutdown-timeout",
        "--interval",
        "--backoff",
        "--backoff-max",
        "--timeout",
        "--count",
        "--max-pending",
        "--max-restarts",
        "--restart-window",
        "RUST_LOG",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}");
    }
}

#[test]
fn bad_flags_exit_2_with_a_clear_error() {
    for args in [
        &["--role", "server", "--bogus"][..],
        &["--role", "client", "--interval", "soon"],
        &["--role", "client", "--max-clients", "3"],
    ] {
        let output = duplex().args(args).output().expect("run");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.starts_with("error:"), "{args:?}: {stderr}");
    }
}

#[test]
fn a_server_that_cannot_listen_says_why_and_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("bound").to_string();
    let output = duplex()
        .args(["--role", "server", "--addr", &addr])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("error: cannot listen on {addr}")),
        "{stderr}"
    );
}
