//! The real `warren-sample` binary on 127.0.0.1: servers started as child processes, the
//! clients (load, stream, pingpong) run against them, and their JSON reports checked the
//! way the testbed's end-to-end tests will read them.

use std::{
    io::{self, Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_warren-sample");
/// How long a server may take to start, or a request to be answered, before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// A server child process, killed when the test ends, however it ends.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `warren-sample <subcommand> --listen 127.0.0.1:<free port> <args>` and
    /// waits until it accepts connections (for `http`, until `/healthz` answers).
    fn start(subcommand: &str, args: &[&str]) -> Server {
        Self::spawn(subcommand, args, false)
    }

    /// Like [`Server::start`], for a server that reports on stdout while it runs
    /// (`transparent`): its lines arrive on the receiver as it prints them. Readiness
    /// probes count as connections too, so a test picks its own lines out by content.
    fn start_reporting(subcommand: &str, args: &[&str]) -> (Server, mpsc::Receiver<String>) {
        let mut server = Self::spawn(subcommand, args, true);
        let stdout = server.child.stdout.take().expect("stdout is piped");
        let (lines, receiver) = mpsc::channel();
        // Ends when the server exits and its stdout closes.
        thread::spawn(move || {
            for line in io::BufRead::lines(io::BufReader::new(stdout)) {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        (server, receiver)
    }

    /// Starts the server on a port that was free a moment ago. If it exits before it
    /// is ready (another process may have taken the port in between), it starts again
    /// on another port, a few times at most.
    fn spawn(subcommand: &str, args: &[&str], piped: bool) -> Server {
        const STARTS: usize = 3;
        for start in 1..=STARTS {
            let port = free_port();
            let child = sample()
                .arg(subcommand)
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(args)
                .stdout(if piped { Stdio::piped() } else { Stdio::null() })
                .stderr(Stdio::inherit())
                .spawn()
                .expect("starting warren-sample");
            let mut server = Server { child, port };
            match server.wait_until_ready(subcommand == "http") {
                Ok(()) => return server,
                Err(status) if start < STARTS => {
                    eprintln!("the server on port {port} exited early ({status}); starting again");
                }
                Err(status) => panic!("the server on port {port} exited early: {status}"),
            }
        }
        unreachable!("the last start returns or panics")
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Waits until the server answers; the exit status if it exited first.
    fn wait_until_ready(&mut self, http: bool) -> Result<(), std::process::ExitStatus> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("checking the server") {
                return Err(status);
            }
            let ready = if http {
                matches!(get(self.port, "/healthz", &[]), Ok((200, body)) if body == "ok")
            } else {
                TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            };
            if ready {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "the server on port {} was not ready within {PATIENCE:?}",
                self.port
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn terminate(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) only sends a signal; `pid` is our own child, not yet reaped
        // (the guard reaps it on drop), so the pid cannot name another process.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "sending SIGTERM: {}", io::Error::last_os_error());
    }

    fn wait_for_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("checking the server") {
                return status;
            }
            assert!(Instant::now() < deadline, "the server did not exit");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The binary, with an environment that cannot leak into the identity under test.
fn sample() -> Command {
    let mut command = Command::new(BIN);
    command
        .env("RUST_LOG", "warn")
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .env_remove("SAMPLE_VERSION");
    command
}

/// A port that was free a moment ago. Another process could take it before the server
/// binds it; on a test machine's loopback that is rare enough.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("finding a free port")
        .port()
}

/// A one-shot HTTP/1.1 GET; returns the status and the body.
fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(PATIENCE))?;
    let mut request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, response.clone());
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(malformed)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(malformed)?;
    Ok((status, body.to_owned()))
}

fn run_load(args: &[&str]) -> Output {
    sample()
        .arg("load")
        .args(args)
        .output()
        .expect("running warren-sample load")
}

/// Runs `load --json` and returns its report.
fn load_json(args: &[&str]) -> Value {
    let output = run_load(&[args, &["--json"]].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "load failed: {}\n{stderr}",
        output.status
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "load printed no JSON ({error}): {}\n{stderr}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// Runs a client subcommand (`stream`, `pingpong`) to completion.
fn run_client(subcommand: &str, args: &[&str]) -> Output {
    sample()
        .arg(subcommand)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("running warren-sample {subcommand}: {error}"))
}

/// The JSON report a client printed, whatever its exit status.
fn report_of(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "no JSON report ({error}), exit {}: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn no_errors() -> Value {
    json!({"connect": 0, "timeout": 0, "reset": 0, "other": 0})
}

#[test]
fn http1_and_h2c_are_answered_by_v1() {
    let server = Server::start("http", &["--name", "web-0"]);
    for protocol in [&[][..], &["--http2"][..]] {
        let url = server.url("/items");
        let report = load_json(&[&["--url", &url, "-n", "200"], protocol].concat());
        assert_eq!(report["requests"], 200, "{protocol:?}: {report}");
        assert_eq!(
            report["by_version_status"],
            json!([{"version": "v1", "status": 200, "count": 200}]),
            "{protocol:?}: {report}"
        );
        assert_eq!(report["errors"], no_errors(), "{protocol:?}: {report}");
        let latency = &report["latency_ms"];
        assert!(latency["p50"].as_f64().unwrap() > 0.0, "{report}");
        assert!(
            latency["p50"].as_f64() <= latency["max"].as_f64(),
            "{report}"
        );
    }
}

#[test]
fn a_half_fail_rate_fails_about_half() {
    let server = Server::start("http", &["--fail-rate", "0.5"]);
    let report = load_json(&["--url", &server.url("/"), "-n", "400", "-c", "8"]);
    assert_eq!(report["requests"], 400, "{report}");
    assert_eq!(report["errors"], no_errors(), "{report}");
    let count = |status: u64| -> u64 {
        report["by_version_status"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|row| row["version"] == "v1" && row["status"] == status)
            .map(|row| row["count"].as_u64().unwrap())
            .sum()
    };
    let (ok, failed) = (count(200), count(503));
    assert_eq!(ok + failed, 400, "{report}");
    // 400 draws at p = 0.5: 30%..70% is ten standard deviations wide, never a flake.
    assert!(
        (120..=280).contains(&failed),
        "{failed} of 400 failed: {report}"
    );
}

#[test]
fn status_path_and_post_bodies() {
    let server = Server::start("http", &[]);
    let (status, body) = get(server.port, "/status/504", &[]).unwrap();
    assert_eq!(status, 504, "{body}");

    let report = load_json(&[
        "--url",
        &server.url("/upload"),
        "-n",
        "10",
        "--body-bytes",
        "100000",
    ]);
    assert_eq!(
        report["by_version_status"],
        json!([{"version": "v1", "status": 200, "count": 10}]),
        "{report}"
    );
}

#[test]
fn echo_returns_one_mebibyte_byte_exact() {
    let server = Server::start("echo", &[]);
    let sent: Vec<u8> = (0..1usize << 20).map(|i| (i * 31 % 251) as u8).collect();

    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    // Write from another thread: echoing 1 MiB back fills both directions' buffers, so
    // writing everything before reading would deadlock.
    let mut writer = stream.try_clone().unwrap();
    let to_send = sent.clone();
    let writing = thread::spawn(move || -> io::Result<()> {
        writer.write_all(&to_send)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut received = Vec::new();
    stream.read_to_end(&mut received).unwrap();
    writing.join().unwrap().unwrap();

    assert_eq!(received.len(), sent.len());
    assert!(
        received == sent,
        "the echoed bytes differ from the sent ones"
    );
}

#[test]
fn pingpong_new_connection_times_one_connection_per_round_trip() {
    let server = Server::start("echo", &[]);
    let addr = format!("127.0.0.1:{}", server.port);
    let output = Command::new(BIN)
        .args([
            "pingpong",
            "--connect",
            &addr,
            "--new-connection",
            "-n",
            "50",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["round_trips"], 50, "{report}");
    assert!(
        report["latency_us"]["p50"].as_f64().unwrap() > 0.0,
        "{report}"
    );
}

#[test]
fn hold_opens_checks_and_releases_many_connections() {
    let server = Server::start("echo", &[]);
    let addr = format!("127.0.0.1:{}", server.port);
    let output = Command::new(BIN)
        .args([
            "hold",
            "--connect",
            &addr,
            "--count",
            "300",
            "--hold",
            "100ms",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["requested"], 300, "{report}");
    assert_eq!(report["held"], 300, "{report}");
    assert_eq!(report["mismatched"], 0, "{report}");
    // Nothing listens on the next port: every connection is refused and counted.
    let closed = format!("127.0.0.1:{}", free_port());
    let output = Command::new(BIN)
        .args([
            "hold",
            "--connect",
            &closed,
            "--count",
            "5",
            "--hold",
            "1ms",
        ])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (
            report["held"].as_u64(),
            report["errors"]["connect"].as_u64()
        ),
        (Some(0), Some(5)),
        "{report}"
    );
}

#[test]
fn an_upstream_chain_shows_every_hop_and_forwards_trace_headers() {
    let back = Server::start("http", &["--name", "back-0", "--version", "v2"]);
    let upstream = back.url("/inventory");
    let front = Server::start("http", &["--name", "front-0", "--upstream", &upstream]);

    let (status, body) = get(
        front.port,
        "/shop",
        &[
            ("x-request-id", "req-42"),
            ("x-lane-id", "blue"),
            ("x-not-forwarded", "1"),
        ],
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        answer["chain"],
        json!(["front-0@v1", "back-0@v2"]),
        "{answer}"
    );
    assert_eq!(answer["upstream"]["status"], 200, "{answer}");
    let back_saw = &answer["upstream"]["body"];
    assert_eq!(back_saw["path"], "/inventory", "{answer}");
    assert_eq!(back_saw["headers"]["x-request-id"], "req-42", "{answer}");
    assert_eq!(back_saw["headers"]["x-lane-id"], "blue", "{answer}");
    assert!(
        back_saw["headers"].get("x-not-forwarded").is_none(),
        "{answer}"
    );

    // With the back end gone, the front answers 502 and names it.
    drop(back);
    let (status, body) = get(front.port, "/shop", &[]).unwrap();
    assert_eq!(status, 502, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["error"]["upstream"], upstream, "{answer}");
}

#[test]
fn sigterm_lets_an_in_flight_request_finish() {
    let mut server = Server::start("http", &["--latency", "1s"]);
    let port = server.port;
    let in_flight = thread::spawn(move || get(port, "/slow", &[]));
    // Long enough for the request to reach the server, well short of its latency.
    thread::sleep(Duration::from_millis(300));
    server.terminate();

    let (status, body) = in_flight.join().unwrap().expect("the in-flight request");
    assert_eq!(status, 200, "{body}");
    let exit = server.wait_for_exit();
    assert!(exit.success(), "{exit}");
}

#[test]
fn load_exits_zero_when_nothing_answers_and_non_zero_when_it_cannot_run() {
    let closed = format!("http://127.0.0.1:{}/", free_port());
    let report = load_json(&["--url", &closed, "-n", "20"]);
    assert_eq!(report["requests"], 20, "{report}");
    assert_eq!(report["errors"]["connect"], 20, "{report}");

    for bad in [
        &["--url", "not a url"][..],
        &["--url", "http://127.0.0.1:1/", "--timeout", "0"][..],
    ] {
        let output = run_load(bad);
        assert!(!output.status.success(), "{bad:?} should not run");
        assert!(output.stdout.is_empty(), "{bad:?} printed a report");
    }
}

#[test]
fn stream_checks_64_mebibytes_echoed_byte_exact() {
    let server = Server::start("echo", &[]);
    let output = run_client(
        "stream",
        &[
            "--connect",
            &server.addr(),
            "--bytes",
            "64M",
            "--seed",
            "42",
            "--max-write",
            "100000",
            "--json",
        ],
    );
    let report = report_of(&output);
    assert_eq!(output.status.code(), Some(0), "{report}");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["bytes_sent"], 64 << 20, "{report}");
    assert_eq!(report["bytes_received"], 64 << 20, "{report}");
    assert_eq!(report["first_mismatch"], Value::Null, "{report}");
    assert!(
        report["throughput_mib_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
}

#[test]
fn stream_exits_two_when_it_cannot_connect() {
    let closed = format!("127.0.0.1:{}", free_port());
    let output = run_client("stream", &["--connect", &closed, "--bytes", "1M", "--json"]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.stdout.is_empty(),
        "printed a report without a connection"
    );
}

#[test]
fn pingpong_counts_round_trips_and_streams() {
    let server = Server::start("echo", &[]);
    let output = run_client(
        "pingpong",
        &[
            "--connect",
            &server.addr(),
            "-n",
            "200",
            "--size",
            "512",
            "--json",
        ],
    );
    let report = report_of(&output);
    assert!(output.status.success(), "{report}");
    assert_eq!(report["round_trips"], 200, "{report}");
    assert!(report["rtt_per_s"].as_f64().unwrap() > 0.0, "{report}");
    let latency = &report["latency_us"];
    let p50 = latency["p50"].as_f64().unwrap();
    assert!(p50 > 0.0, "{report}");
    for key in ["p90", "p99", "max"] {
        assert!(latency[key].as_f64().unwrap() >= p50, "{key}: {report}");
    }

    let output = run_client(
        "pingpong",
        &["--connect", &server.addr(), "--stream-mib", "16", "--json"],
    );
    let report = report_of(&output);
    assert!(output.status.success(), "{report}");
    assert_eq!(report["stream_mib"], 16, "{report}");
    assert!(report["stream_mib_s"].as_f64().unwrap() > 0.0, "{report}");
}

/// No eBPF program and no netfilter redirect on loopback: the proxy has nowhere to send a
/// connection, so it closes it, and its line says why instead of the proxy crashing.
#[test]
fn transparent_without_a_redirect_closes_and_says_why() {
    let (mut proxy, lines) = Server::start_reporting("transparent", &[]);

    let mut client = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    client.set_read_timeout(Some(PATIENCE)).unwrap();
    let me = client.local_addr().unwrap().to_string();
    let mut buf = [0u8; 16];
    match client.read(&mut buf) {
        Ok(0) => {}
        Err(error) if error.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("the proxy did not close the connection: {other:?}"),
    }

    let deadline = Instant::now() + PATIENCE;
    let line: Value = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let text = lines
            .recv_timeout(left)
            .unwrap_or_else(|error| panic!("no line for peer {me}: {error}"));
        let line: Value = serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("not a JSON line ({error}): {text}"));
        if line["peer"] == me.as_str() {
            break line;
        }
    };
    assert_eq!(line["orig_dst"], Value::Null, "{line}");
    let why = line["orig_dst_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("SO_ORIGINAL_DST") && why.contains(':'),
        "{line}"
    );
    assert_eq!(line["origin_dst"], Value::Null, "{line}");
    assert_eq!(line["netns_cookie"], Value::Null, "{line}");
    let why = line["origin_error"].as_str().unwrap_or_default();
    assert!(why.contains("SO_WARREN_ORIGIN"), "{line}");

    // A stream through a path that drops it is a failed check, not an unreachable one.
    let output = run_client(
        "stream",
        &["--connect", &proxy.addr(), "--bytes", "1M", "--json"],
    );
    let report = report_of(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["bytes_received"], 0, "{report}");

    proxy.terminate();
    let exit = proxy.wait_for_exit();
    assert!(exit.success(), "{exit}");
}
