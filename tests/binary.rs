//! The built `duplex` binary, as a user runs it: server and client processes,
//! signals, exit codes, --help, log formats.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;

use common::process::{
    PATIENCE, duplex, lines_of, listening_addr, server_command, signal, start_server,
    start_server_from, stderr_lines, wait_for, wait_with_timeout,
};

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
    // Client lines are written by the registry's writer thread; the next
    // snapshot's list is queued behind them, not lost.
    signal(&server, libc::SIGUSR1);
    let again = wait_for(&logs, "registry client");
    assert!(again.contains("client_id=1"), "{again}");
    signal(&server, libc::SIGINT);
    assert!(wait_with_timeout(server).success());
    drop(connection);
}

#[test]
fn the_periodic_snapshot_logs_the_totals_and_only_sigusr1_lists_every_client() {
    let (server, addr, logs) = start_server(&["--registry-interval", "1s"]);
    let connection = TcpStream::connect(&addr).expect("connect");
    wait_for(&logs, "client joined");
    // Three periodic snapshots with a client connected, and no client line:
    // the list of one would have been written within the second after it.
    let mut periodic = 0;
    while periodic < 3 {
        let line = logs.recv_timeout(PATIENCE).expect("a periodic snapshot");
        assert!(!line.contains("registry client"), "{line}");
        if line.contains("registry snapshot") {
            assert!(line.contains("clients=1"), "{line}");
            periodic += 1;
        }
    }
    signal(&server, libc::SIGUSR1);
    let listed = wait_for(&logs, "registry client");
    assert!(listed.contains("client_id=1"), "{listed}");
    signal(&server, libc::SIGTERM);
    assert!(wait_with_timeout(server).success());
    drop(connection);
}

#[test]
fn the_listening_line_names_the_version_and_the_threads() {
    let version = env!("CARGO_PKG_VERSION");
    let output = duplex().arg("--version").output().expect("run --version");
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("duplex {version}\n")
    );
    let mut command = server_command(&["--threads", "3"]);
    let mut server = command.spawn().expect("spawn server");
    let logs = stderr_lines(&mut server);
    let listening = wait_for(&logs, "listening");
    assert!(
        listening.contains(&format!(" version={version}")),
        "{listening}"
    );
    assert!(listening.contains(" threads=3 "), "{listening}");
    signal(&server, libc::SIGTERM);
    assert!(wait_with_timeout(server).success());
}

#[test]
fn trusting_every_address_to_send_a_proxy_header_is_warned_about() {
    const WARNING: &str = "trusted proxies include every address";
    for anyone in ["0.0.0.0/0", "::/0", "10.0.0.0/8,0.0.0.0/0"] {
        let (server, _, logs) = start_server(&["--proxy-protocol", "--trusted-proxies", anyone]);
        let warning = wait_for(&logs, WARNING);
        assert!(warning.contains(" WARN "), "{warning}");
        assert!(
            warning.contains(&format!("trusted_proxies={anyone}")),
            "{warning}"
        );
        signal(&server, libc::SIGTERM);
        assert!(wait_with_timeout(server).success());
    }
    // Given a network that is not everyone, the server says nothing of it
    // before its first client joins.
    let (server, addr, logs) =
        start_server(&["--proxy-protocol", "--trusted-proxies", "127.0.0.0/8"]);
    let mut client = TcpStream::connect(&addr).expect("connect");
    client.write_all(b"PROXY UNKNOWN\r\n").expect("send");
    loop {
        let line = logs.recv_timeout(PATIENCE).expect("the join");
        assert!(!line.contains(WARNING), "{line}");
        if line.contains("client joined") {
            break;
        }
    }
    drop(client);
    signal(&server, libc::SIGTERM);
    assert!(wait_with_timeout(server).success());
}

#[test]
fn sighup_without_tls_is_logged_and_the_server_keeps_serving() {
    let (server, addr, logs) = start_server(&["--registry-interval", "0"]);
    signal(&server, libc::SIGHUP);
    wait_for(&logs, "nothing to reload");
    let mut client = TcpStream::connect(&addr).expect("connect");
    client.set_read_timeout(Some(PATIENCE)).expect("timeout");
    client.write_all(b"after hup\n").expect("send");
    let mut reader = BufReader::new(client);
    let mut line = String::new();
    reader.read_line(&mut line).expect("greeting");
    assert_eq!(line, "Hello\n");
    line.clear();
    reader.read_line(&mut line).expect("reply");
    assert!(line.ends_with(" - server reply: after hup\n"), "{line:?}");
    signal(&server, libc::SIGTERM);
    assert!(
        wait_with_timeout(server).success(),
        "a clean exit after SIGHUP"
    );
}

#[test]
fn refused_proxy_headers_are_logged_throttled_and_all_counted() {
    // 127.0.0.1 is not a trusted proxy here, so every connection is refused.
    let (server, addr, logs) = start_server(&[
        "--registry-interval",
        "0",
        "--proxy-protocol",
        "--trusted-proxies",
        "10.0.0.0/8",
    ]);
    const CONNECTS: usize = 30;
    for _ in 0..CONNECTS {
        let mut client = TcpStream::connect(&addr).expect("connect");
        client.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).expect("closed by the server");
    }
    signal(&server, libc::SIGUSR1);
    let mut warned = 0;
    let snapshot = loop {
        let line = logs.recv_timeout(PATIENCE).expect("the snapshot line");
        warned += usize::from(line.contains("PROXY header refused"));
        if line.contains("registry snapshot") {
            break line;
        }
    };
    assert!(
        snapshot.contains(&format!("proxy_failed={CONNECTS}")),
        "{snapshot}"
    );
    assert_eq!(warned, 1, "one warning for a burst of refusals");
    signal(&server, libc::SIGTERM);
    assert!(wait_with_timeout(server).success());
}

#[test]
fn client_joined_counts_clients_not_connections_awaiting_a_header_nor_health_checks() {
    let (server, addr, logs) = start_server(&["--registry-interval", "0", "--proxy-protocol"]);
    // Accepted first, so held when the client joins: a slot, not a client.
    let waiting = TcpStream::connect(&addr).expect("connect");
    // A balancer's health check: a PROXY v2 LOCAL header, closed unanswered.
    let mut check = TcpStream::connect(&addr).expect("connect");
    check.set_read_timeout(Some(PATIENCE)).expect("timeout");
    check
        .write_all(b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00")
        .expect("send");
    let mut rest = Vec::new();
    check.read_to_end(&mut rest).expect("closed by the server");
    assert!(rest.is_empty(), "{rest:?}");
    let mut client = TcpStream::connect(&addr).expect("connect");
    client.set_read_timeout(Some(PATIENCE)).expect("timeout");
    client
        .write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 56324 8000\r\n")
        .expect("send");
    let mut greeting = String::new();
    BufReader::new(&client)
        .read_line(&mut greeting)
        .expect("greeting");
    assert_eq!(greeting, "Hello\n");
    let joined = wait_for(&logs, "client joined");
    assert!(joined.contains("peer=192.0.2.1:56324"), "{joined}");
    assert!(joined.contains("clients=1"), "{joined}");
    signal(&server, libc::SIGUSR1);
    let snapshot = wait_for(&logs, "registry snapshot");
    for counted in [
        "clients=1",
        "awaiting_header=1",
        "admitted=1",
        "proxy_failed=0",
        "proxy_local=1",
    ] {
        assert!(snapshot.contains(counted), "{counted}: {snapshot}");
    }
    drop((waiting, client));
    signal(&server, libc::SIGTERM);
    assert!(wait_with_timeout(server).success());
}

#[test]
fn a_server_whose_log_nobody_reads_keeps_serving_and_reports_the_lines_it_dropped() {
    let mut server = server_command(&[]).spawn().expect("spawn server");
    let mut stderr = BufReader::new(server.stderr.take().expect("stderr piped"));
    let mut line = String::new();
    while !line.contains("listening") {
        line.clear();
        assert_ne!(
            stderr.read_line(&mut line).expect("server log"),
            0,
            "no listening line"
        );
    }
    let addr = listening_addr(&line);
    // From here nobody reads the log. Each client below logs two lines (some
    // 280 bytes), so the 64 KiB pipe fills within a few hundred clients and
    // the server's 1 MiB log queue a few thousand later.
    let greeted = |what: &str| {
        let mut client = TcpStream::connect(&addr).expect("connect");
        client.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let mut hello = [0; 6];
        client
            .read_exact(&mut hello)
            .unwrap_or_else(|e| panic!("{what}: no greeting while the log is blocked: {e}"));
        assert_eq!(&hello, b"Hello\n");
        client
    };
    for n in 0..6000 {
        greeted(&format!("client {n}"));
    }
    let mut last = greeted("last client");
    last.write_all(b"still here\n").expect("send");
    let mut reply = Vec::new();
    let mut byte = [0];
    while byte != *b"\n" {
        last.read_exact(&mut byte)
            .expect("a reply while the log is blocked");
        reply.push(byte[0]);
    }
    assert_eq!(
        duplex::wire::reply_echo(&reply[..reply.len() - 1]),
        Some(&b"still here"[..])
    );

    // Read the log again: what could not be queued is counted, not lost silently.
    let logs = lines_of(stderr);
    let dropped = wait_for(&logs, "log lines dropped");
    let count: u64 = dropped
        .split_whitespace()
        .find_map(|field| field.strip_prefix("dropped="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {dropped:?}"));
    assert!(count > 0, "{dropped}");
    signal(&server, libc::SIGTERM);
    assert!(wait_with_timeout(server).success());
    wait_for(&logs, "server stopped");
}

#[test]
fn a_client_started_before_the_server_retries_until_it_is_up_and_exits_0_on_sigterm() {
    let addr = common::refused_addr().to_string();
    let mut client = duplex()
        .args(["--role", "client", "--addr", &addr])
        .args(["--backoff", "50ms", "--interval", "50ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    let logs = stderr_lines(&mut client);
    let refused = wait_for(&logs, "restarting connection");
    assert!(refused.contains("Connection refused"), "{refused}");

    let mut server_command = duplex();
    server_command
        .args(["--role", "server", "--addr", &addr])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let (server, _, _server_logs) = start_server_from(server_command);
    wait_for(&logs, "connect peer=");
    let mut stdout = std::io::BufReader::new(client.stdout.take().expect("stdout piped"));
    let mut greeting = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut greeting).expect("greeting");
    assert_eq!(greeting, "Hello\n");

    signal(&client, libc::SIGTERM);
    assert!(wait_with_timeout(client).success());
    let summary = wait_for(&logs, "client stopped");
    assert!(summary.contains("outcome=shutdown"), "{summary}");
    signal(&server, libc::SIGTERM);
    assert!(wait_with_timeout(server).success());
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
fn durations_in_json_logs_are_numbers_of_milliseconds() {
    let (server, addr, logs) = start_server(&["--log-format", "json", "--registry-interval", "0"]);
    let json = |line: String| -> serde_json::Value {
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    };
    let connection = TcpStream::connect(&addr).expect("connect");
    wait_for(&logs, "client joined");
    signal(&server, libc::SIGUSR1);
    let listed = json(wait_for(&logs, "registry client"));
    drop(connection);
    let left = json(wait_for(&logs, "client left"));
    for line in [listed, left] {
        assert!(line["connected_for_ms"].is_u64(), "{line}");
        assert!(line.get("connected_for").is_none(), "{line}");
    }
    signal(&server, libc::SIGTERM);
    assert!(wait_with_timeout(server).success());
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
    // Every exit code, as the README's table gives them.
    let codes = help
        .split_once("Exit codes:")
        .expect("an exit codes section")
        .1;
    let listed: Vec<&str> = codes
        .lines()
        .filter_map(|line| {
            line.strip_prefix("  ")
                .filter(|rest| !rest.starts_with(' '))
        })
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert_eq!(listed, ["0", "1", "2", "130"], "{codes}");
}

#[test]
fn bad_flags_exit_2_with_a_clear_error() {
    for args in [
        &["--role", "server", "--bogus"][..],
        &["--role", "client", "--interval", "soon"],
        &["--role", "client", "--max-clients", "3"],
        &["--role", "server", "--registry-interval", "500ms"],
    ] {
        let output = duplex().args(args).output().expect("run");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.starts_with("error:"), "{args:?}: {stderr}");
    }
}

#[test]
fn exit_codes_are_the_readmes_a_bad_tls_name_is_a_usage_error_an_unloadable_trust_store_1() {
    let empty = std::env::temp_dir().join(format!("duplex-test-{}-empty.pem", std::process::id()));
    std::fs::write(&empty, "").expect("write an empty trust store");
    // The port of a listener just closed: nothing accepts there.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("bound").to_string()
    };
    let client = ["--role", "client", "--addr", &closed];
    let bench = ["--role", "bench", "--addr", &closed];
    let cases: [(&[&str], &[&str], i32, &str); 7] = [
        // A value wrong in itself: a usage error, before anything starts.
        (
            &client,
            &["--tls-server-name", "not a name"],
            2,
            "error: --tls-server-name: \"not a name\" is not a DNS name or an IP address",
        ),
        (
            &bench,
            &["--tls-server-name", "a..example"],
            2,
            "error: --tls-server-name: \"a..example\" is not a DNS name",
        ),
        (
            &["--role", "client", "--addr", "no such host:8000"],
            &["--tls"],
            2,
            "error: --addr (its host, without --tls-server-name): \"no such host\"",
        ),
        // A configuration that cannot be loaded: `error: …` last, exit 1.
        (
            &client,
            &["--tls-ca", "/nonexistent/ca.pem"],
            1,
            "error: cannot read certificates from /nonexistent/ca.pem",
        ),
        (
            &bench,
            &["--tls-ca", "/nonexistent/ca.pem"],
            1,
            "error: cannot read certificates from /nonexistent/ca.pem",
        ),
        // rustls-native-certs reads SSL_CERT_FILE as the system's store.
        (
            &client,
            &["--tls"],
            1,
            "error: no trusted certificates in the system's trust store",
        ),
        // Running, the client gives up past --max-restarts.
        (
            &client,
            &["--max-restarts", "0", "--backoff", "10ms"],
            1,
            "client stopped outcome=gave up",
        ),
    ];
    for (role, flags, code, says) in cases {
        let output = duplex()
            .args(role)
            .args(flags)
            .env("SSL_CERT_FILE", &empty)
            .env_remove("SSL_CERT_DIR")
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{flags:?}: {stderr}");
        // A usage error starts with clap's error line, then the usage; any
        // other error is the last line.
        let line = match code {
            2 => stderr.lines().next(),
            _ => stderr.lines().last(),
        };
        assert!(
            line.is_some_and(|line| line.contains(says)),
            "{flags:?}: {stderr}"
        );
    }
    let _ = std::fs::remove_file(&empty);
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

#[test]
fn with_a_json_log_fatal_and_usage_errors_are_json_lines_too() {
    let unlisten = ["--addr", "192.0.2.1:8000"];
    for (rust_log, args, code, says) in [
        ("info", &unlisten[..], 1, "cannot listen on 192.0.2.1:8000"),
        ("info", &["--addr", "nonsense"], 2, "expected HOST:PORT"),
        // A filter that lets none of the server's own lines through still
        // shows the fatal error.
        (
            "duplex::actors::registry=info",
            &unlisten,
            1,
            "cannot listen on 192.0.2.1:8000",
        ),
        // Filters that would silence the log, or be partly ignored with a
        // plain-text warning, are usage errors.
        ("warning", &[], 2, "\"warning\" is not a level"),
        ("inf", &[], 2, "\"inf\" is not a level"),
        ("", &[], 2, "RUST_LOG is empty"),
        ("duplex=inf", &[], 2, "\"inf\" is not a level"),
    ] {
        let output = duplex()
            .env("RUST_LOG", rust_log)
            .args(["--role", "server", "--log-format", "json"])
            .args(args)
            .output()
            .expect("run server");
        assert_eq!(output.status.code(), Some(code), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<serde_json::Value> = stderr
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
            .collect();
        let last = lines.last().expect("a line");
        assert_eq!(last["level"], "ERROR", "{stderr}");
        assert!(
            last["msg"].as_str().is_some_and(|m| m.contains(says)),
            "{stderr}"
        );
    }
}

#[test]
fn a_log_filter_that_would_silence_the_server_is_a_usage_error() {
    let output = duplex()
        .env("RUST_LOG", "warning")
        .args(["--role", "server", "--addr", "127.0.0.1:0"])
        .output()
        .expect("run server");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error: RUST_LOG=\"warning\": \"warning\" is not a level"),
        "{stderr}"
    );
}

#[test]
fn the_client_names_an_unresolvable_host_and_a_closed_stdout() {
    let output = duplex()
        .args([
            "--role",
            "client",
            "--addr",
            "nosuch.invalid:8000",
            "--max-restarts",
            "0",
        ])
        .output()
        .expect("run client");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("error=nosuch.invalid:8000: "), "{stderr}");
    assert!(!stderr.contains("could not resolve address"), "{stderr}");

    let (server, addr, _logs) = start_server(&[]);
    let output = duplex()
        .args(["--role", "client", "--addr", &addr, "--interval", "50ms"])
        .stdout(
            std::fs::File::options()
                .write(true)
                .open("/dev/full")
                .expect("/dev/full"),
        )
        .output()
        .expect("run client");
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("stdout closed: stopping"), "{stderr}");
    signal(&server, libc::SIGTERM);
    assert!(wait_with_timeout(server).success());
}

#[test]
fn a_second_signal_exits_130_after_saying_so() {
    // Behind a PROXY-protocol balancer, the shutdown waits for a header on
    // its way (up to the handshake timeout): a client that connects and
    // sends nothing keeps it waiting, with no timing involved.
    let (server, addr, logs) = start_server(&[
        "--proxy-protocol",
        "--handshake-timeout",
        "1h",
        "--shutdown-timeout",
        "1h",
    ]);
    let _silent = TcpStream::connect(&addr).expect("connect");
    signal(&server, libc::SIGTERM);
    // Connections the kernel has queued are taken before the count.
    let shutting_down = wait_for(&logs, "duplex::server] shutting down");
    assert!(shutting_down.contains("clients=1"), "{shutting_down}");
    signal(&server, libc::SIGTERM);
    wait_for(&logs, "second signal: exiting now");
    assert_eq!(wait_with_timeout(server).code(), Some(130));
}
