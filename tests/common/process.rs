//! Helpers for tests that run the built `duplex` binary as a user would.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::Duration;

/// Upper bound for any wait on a process or its output.
pub const PATIENCE: Duration = Duration::from_secs(15);

pub fn duplex() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_duplex"));
    command.env("RUST_LOG", "info").stdin(Stdio::null());
    command
}

/// Forwards a child's stderr lines to a channel, so tests can wait on them.
pub fn stderr_lines(child: &mut Child) -> Receiver<String> {
    let stderr = child.stderr.take().expect("stderr piped");
    lines_of(BufReader::new(stderr))
}

/// Forwards the lines `reader` yields to a channel, from a thread.
pub fn lines_of(reader: impl BufRead + Send + 'static) -> Receiver<String> {
    let (sender, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// The next line on `lines` containing `needle`.
pub fn wait_for(lines: &Receiver<String>, needle: &str) -> String {
    loop {
        let line = lines
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("no log line containing {needle:?}"));
        if line.contains(needle) {
            return line;
        }
    }
}

pub fn wait_with_timeout(mut child: Child) -> ExitStatus {
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

pub fn signal(child: &Child, signal: i32) {
    // SAFETY: plain kill(2) on our own child's pid.
    let sent = unsafe { libc::kill(child.id() as i32, signal) };
    assert_eq!(sent, 0, "kill failed");
}

/// A server process on 127.0.0.1:0; returns it, its address and its log lines.
pub fn start_server(extra: &[&str]) -> (Child, String, Receiver<String>) {
    start_server_from(server_command(extra))
}

/// The command `start_server` runs, to adjust before starting it.
pub fn server_command(extra: &[&str]) -> Command {
    let mut command = duplex();
    command
        .args(["--role", "server", "--addr", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Starts `command` (a server) and waits for its listening line.
pub fn start_server_from(mut command: Command) -> (Child, String, Receiver<String>) {
    let mut server = command.spawn().expect("spawn server");
    let logs = stderr_lines(&mut server);
    let listening = wait_for(&logs, "listening");
    (server, listening_addr(&listening), logs)
}

/// The address a server's `listening` log line names (text or JSON).
pub fn listening_addr(listening: &str) -> String {
    let addr = if listening.starts_with('{') {
        let object: serde_json::Value = serde_json::from_str(listening).expect("JSON log line");
        object["addr"].as_str().map(String::from)
    } else {
        listening
            .split_whitespace()
            .find_map(|field| field.strip_prefix("addr=").map(String::from))
    };
    addr.expect("the listening line names the address")
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    duplex::bench::rss_kib(pid).expect("VmRSS of a running process")
}

/// CPU time (user + system) process `pid` has used so far.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let after_name = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}
