//! Sample workloads: servers started in pods, and the load client's reports.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use warren_testbed::{Cluster, Pod, Process, binaries};

/// Starts the sample HTTP server in `pod` on `port` and waits until it
/// answers its health check from inside the pod.
/// Starts the sample HTTP server on 8080 in pods `app-v1`, `app-v2`, …,
/// each answering as its version.
pub fn start_app_versions(cluster: &Cluster, versions: &[&str]) -> Result<Vec<Process>> {
    versions
        .iter()
        .map(|version| {
            let pod = cluster.pod(&format!("app-{version}"))?.clone();
            start_http_server(
                cluster,
                &pod,
                8080,
                &["--version", version, "--name", &pod.name],
            )
        })
        .collect()
}

pub fn start_http_server(
    cluster: &Cluster,
    pod: &Pod,
    port: u16,
    extra: &[&str],
) -> Result<Process> {
    let sample = binaries::path("warren-sample")?;
    let sample = sample.to_string_lossy();
    let listen = format!("[::]:{port}");
    let mut args = vec!["http", "--listen", &listen];
    args.extend_from_slice(extra);
    let mut server = cluster.spawn(&pod.sandbox, &sample, &args)?;
    let health = format!("http://127.0.0.1:{port}/healthz");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        server.check_running()?;
        let out = pod
            .sandbox
            .exec(&sample, ["load", "--url", &health, "-n", "1", "--json"])?;
        if out.status.success() && count_status(&serde_json::from_slice(&out.stdout)?, 200) == 1 {
            return Ok(server);
        }
        if Instant::now() > deadline {
            bail!(
                "server in {} not healthy after 10s; output:\n{}",
                pod.name,
                server.output()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The status of one GET by curl from `pod`, with `headers` (`name: value`).
pub fn curl_status(pod: &Pod, url: &str, headers: &[&str]) -> Result<u16> {
    let mut args = vec![
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "8",
    ];
    for header in headers {
        args.extend(["-H", header]);
    }
    args.push(url);
    let out = pod.sandbox.exec("curl", &args)?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().with_context(|| {
        format!(
            "curl {url}: {text:?} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Runs the sample load client in `pod` against `url` and returns its JSON
/// report.
pub fn load(pod: &Pod, url: &str, args: &[&str]) -> Result<Value> {
    let sample = binaries::path("warren-sample")?;
    let out = pod.sandbox.exec(
        &sample.to_string_lossy(),
        ["load", "--url", url, "--json"].iter().chain(args),
    )?;
    if !out.status.success() {
        bail!(
            "load from {} to {url} failed ({}): {}",
            pod.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("parsing the load client's JSON")
}

/// The JSON report a sample client started with `--json` printed: the last line of
/// its output that is a JSON object (its log lines go to the same file).
pub fn json_report(output: &str) -> Result<Value> {
    output
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<Value>(line.trim()).ok())
        .find(Value::is_object)
        .with_context(|| format!("no JSON report in:\n{output}"))
}

/// Runs the sample's `pingpong --json` in `pod` against `target`
/// (`ip:port`) with `args`, to its end: its exit status and report.
pub fn pingpong(pod: &Pod, target: &str, args: &[&str]) -> Result<std::process::Output> {
    let sample = binaries::path("warren-sample")?;
    pod.sandbox.exec(
        &sample.to_string_lossy(),
        ["pingpong", "--connect", target, "--json"]
            .iter()
            .chain(args),
    )
}

/// Waits for a sample client started with `--json` to finish, and returns
/// its report; its failing (it stops at its first failed connection or
/// round trip) is an error with its output.
pub fn finished_report(client: &mut Process, within: Duration) -> Result<Value> {
    let status = client.wait_exit(within)?;
    let output = client.output();
    if !status.success() {
        bail!("the client failed ({status}):\n{output}");
    }
    json_report(&output)
}

/// How many responses in a load report had `status`.
pub fn count_status(report: &Value, status: u64) -> u64 {
    rows(report)
        .filter(|r| r["status"].as_u64() == Some(status))
        .filter_map(|r| r["count"].as_u64())
        .sum()
}

/// How many responses in a load report came from `version`.
pub fn count_version(report: &Value, version: &str) -> u64 {
    rows(report)
        .filter(|r| r["version"].as_str() == Some(version))
        .filter_map(|r| r["count"].as_u64())
        .sum()
}

fn rows(report: &Value) -> impl Iterator<Item = &Value> {
    report["by_version_status"].as_array().into_iter().flatten()
}

/// Starts the sample TCP echo server in `pod` on `port` and waits until it
/// listens.
pub fn start_echo(cluster: &Cluster, pod: &Pod, port: u16) -> Result<Process> {
    let sample = binaries::path("warren-sample")?;
    let listen = format!("[::]:{port}");
    let mut echo = cluster.spawn(
        &pod.sandbox,
        &sample.to_string_lossy(),
        &["echo", "--listen", &listen],
    )?;
    wait_listening(pod, port, &mut echo)?;
    Ok(echo)
}

/// Waits until something listens on TCP `port` inside `pod` (as `ss`
/// shows it), failing early if `process` exits.
pub fn wait_listening(pod: &Pod, port: u16, process: &mut Process) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        process.check_running()?;
        let out = pod
            .sandbox
            .exec("ss", ["-Hltn", &format!("sport = :{port}")])?;
        if !out.stdout.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "nothing listens on {port} in {} after 10s:\n{}",
                pod.name,
                process.output()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
