//! `l7`: HTTP/1.1 keep-alive through the waypoint, against HAProxy with the
//! equivalent route and retry policy, against no proxy at all, in one run.
//!
//! Two HTTP servers (`warren-sample http`, small JSON answers) on node 1: one
//! in a meshed namespace, for the mesh's arms, and its twin outside the mesh,
//! for the baselines (a client outside the mesh reaching a meshed pod would
//! go through its node's ztunnel, the inbound capture). The
//! load generator is `wrk -c 64 -t 2 --latency` run inside a client pod on
//! node 0, pinned to CPU 0; the proxy under test is pinned to CPU 1 with one
//! thread. Four arms, alternating round by round; medians are reported:
//!
//! - `direct`: a pod outside the mesh → the twin server pod's IP.
//! - `haproxy`: the same pod → HAProxy (a pod outside the mesh on node 1;
//!   `mode http`, `http-reuse always`, `path_beg /api` route, `retries 2`,
//!   `retry-on` connection failures, empty answers, timeouts and 500–504:
//!   HAProxy has no `5xx` class, and Envoy's `5xx` covers those) → the
//!   twin server pod.
//! - `waypoint`: an enrolled pod → the Service VIP: capture → ztunnel →
//!   HBONE → waypoint (VirtualService: prefix /api, retries 2 on
//!   5xx,connect-failure) → HBONE → ztunnel → server.
//! - `mesh`: the same enrolled pod → a second Service over the same pod that
//!   opts out of the waypoint (`istio.io/use-waypoint: none`): capture →
//!   ztunnel → HBONE → ztunnel → server. The waypoint arm minus this arm is
//!   what the waypoint itself costs; the waypoint arm also carries these two
//!   ztunnel hops and mTLS, which the HAProxy arm does not.

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{Context as _, Result, bail, ensure};
use warren_e2e::{
    agent::agent_socket,
    mesh::{Mesh, metric_sum, scrape_metrics, start_mesh, waypoint_gateway},
    workload::start_http_server,
};
use warren_testbed::{Cluster, Pod, PodSpec, Process, ServicePort, binaries, labels, manifests};

use crate::{
    parse_duration, procfs,
    tools::{self, which},
    tuning::CpuWake,
};

/// CPU of the load generator, and of the proxy under test.
const CLIENT_CPU: &str = "0";
const PROXY_CPU: &str = "1";
const NAMESPACE: &str = "mesh";
const SERVER_PORT: u16 = 8080;
const HAPROXY_PORT: u16 = 8080;
const PATH: &str = "/api/items";

#[derive(clap::Args)]
pub struct Args {
    /// Length of each wrk run.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Measurements per arm (medians are reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Keep-alive connections wrk holds open.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Threads of each proxy under test (HAProxy's nbthread, the
    /// waypoint's runtime workers); both are pinned to one CPU.
    #[arg(long, default_value_t = 1)]
    proxy_threads: u32,
    /// Let both proxies write an access log line per request (the
    /// waypoint's default; HAProxy's `option httplog` to stdout). Off by
    /// default, as in Istio's default profile and HAProxy without `log`.
    #[arg(long)]
    access_log: bool,
}

/// What one wrk run reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Wrk {
    pub requests: u64,
    pub requests_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Answers other than 2xx or 3xx.
    pub non_2xx: u64,
    /// connect, read, write and timeout errors together.
    pub socket_errors: u64,
}

/// One arm's run: what wrk saw, and the CPU time the proxies spent on it.
struct Sample {
    wrk: Wrk,
    /// The proxy under test's CPU time (user + system) per request: HAProxy's
    /// or the waypoint's; NaN for the arms without one.
    proxy_cpu_us: f64,
    /// Both ztunnels' CPU time per request (0 for the arms outside the mesh).
    ztunnel_cpu_us: f64,
}

/// CPU time used so far by the processes of an arm: its proxy, the ztunnels.
fn cpu_ms(proxy: Option<u32>, ztunnels: &[u32]) -> Result<(f64, f64)> {
    let proxy = match proxy {
        Some(pid) => procfs::cpu_ms(pid)?,
        None => f64::NAN,
    };
    let mut total = 0.0;
    for pid in ztunnels {
        total += procfs::cpu_ms(*pid)?;
    }
    Ok((proxy, total))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Arm {
    Direct,
    Haproxy,
    Waypoint,
    Mesh,
}

impl Arm {
    const ALL: [Arm; 4] = [Arm::Direct, Arm::Haproxy, Arm::Waypoint, Arm::Mesh];

    fn name(self) -> &'static str {
        match self {
            Arm::Direct => "direct",
            Arm::Haproxy => "haproxy",
            Arm::Waypoint => "waypoint",
            Arm::Mesh => "mesh",
        }
    }
}

/// The waypoint's route: what HAProxy's `use_backend app if api` says.
const ROUTES: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: app, namespace: mesh }
spec:
  hosts: [app]
  http:
  - name: api
    match: [{ uri: { prefix: /api } }]
    route: [{ destination: { host: app, port: { number: 80 } } }]
    retries: { attempts: 2, retryOn: "5xx,connect-failure" }
"#;

fn haproxy_config(server: &str, threads: u32, access_log: bool) -> String {
    let (global_log, defaults_log) = if access_log {
        (
            "  log stdout format raw local0 info\n",
            "  log global\n  option httplog\n",
        )
    } else {
        ("", "")
    };
    format!(
        "global\n  nbthread {threads}\n  maxconn 4096\n{global_log}\
         defaults\n  mode http\n{defaults_log}  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  \
         http-reuse always\n  retries 2\n  retry-on conn-failure empty-response response-timeout 500 501 502 503 504\n\
         frontend web\n  bind 0.0.0.0:{HAPROXY_PORT}\n  acl api path_beg /api\n  \
         http-request deny deny_status 404 unless api\n  use_backend app if api\n\
         backend app\n  server app-0 {server}\n"
    )
}

pub fn run(args: &Args) -> Result<()> {
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    for tool in ["wrk", "haproxy", "taskset", "curl"] {
        which(tool)?;
    }
    let mut cluster = Cluster::builder().nodes(2).pods_per_node(0).up()?;
    cluster.add_namespace(
        NAMESPACE,
        labels(&[("warren.io/dataplane-mode", "ambient")]),
    )?;
    cluster.add_namespace("plain", BTreeMap::new())?;
    for (name, ns, node, pod_labels) in [
        ("app", NAMESPACE, 1, labels(&[("app", "app")])),
        ("meshed", NAMESPACE, 0, labels(&[("app", "meshed")])),
        ("direct", "plain", 0, labels(&[("app", "direct")])),
        ("haproxy", "plain", 1, labels(&[("app", "haproxy")])),
        ("app-plain", "plain", 1, labels(&[("app", "app")])),
    ] {
        cluster.add_pod(PodSpec {
            name: name.into(),
            namespace: ns.into(),
            node,
            labels: pod_labels,
            service_account: Some(name.into()),
        })?;
    }
    cluster.add_pod(warren_e2e::mesh::waypoint_pod(NAMESPACE, 1))?;
    let port = || {
        vec![ServicePort {
            name: "http".into(),
            port: 80,
            target_port: SERVER_PORT,
        }]
    };
    let app_vip = cluster
        .add_service(NAMESPACE, "app", labels(&[("app", "app")]), port())?
        .cluster_ip;
    // The same pod behind a Service that opts out of the waypoint.
    let mut bypass = cluster
        .add_service(NAMESPACE, "app-l4", labels(&[("app", "app")]), port())?
        .clone();
    bypass.labels = labels(&[("istio.io/use-waypoint", "none")]);
    manifests::write_service(&cluster.config_dir(), &bypass)
        .context("labelling Service app-l4 out of the waypoint")?;

    eprintln!("l7: starting the mesh (CA, 2 node agents, 2 ztunnels)");
    let mut mesh = start_mesh(&cluster)?;
    mesh.wait_ready(Duration::from_secs(30))
        .with_context(|| mesh.logs())?;
    let config = cluster.config_dir();
    write(
        &config.join("gateway.mesh.waypoint.yaml"),
        &waypoint_gateway(NAMESPACE),
    )?;
    write(&config.join("routes.mesh.app.yaml"), ROUTES)?;

    let server_pod = cluster.pod("mesh/app")?.clone();
    let plain_server_pod = cluster.pod("plain/app-plain")?.clone();
    let mut servers = Vec::new();
    for pod in [&server_pod, &plain_server_pod] {
        servers.push(start_http_server(
            &cluster,
            pod,
            SERVER_PORT,
            &["--version", "v1", "--name", "app"],
        )?);
    }
    let waypoint_pod = cluster.pod("mesh/waypoint")?.clone();
    eprintln!("l7: starting the waypoint and HAProxy, pinned to CPU {PROXY_CPU}");
    let waypoint =
        start_pinned_waypoint(&cluster, &mesh, &waypoint_pod, args).with_context(|| mesh.logs())?;
    let haproxy_pod = cluster.pod("plain/haproxy")?.clone();
    let haproxy = start_haproxy(&cluster, &haproxy_pod, &plain_server_pod, args)?;

    let direct = cluster.pod("plain/direct")?.clone();
    let meshed = cluster.pod("mesh/meshed")?.clone();
    let target = |arm: Arm| -> (&Pod, String) {
        match arm {
            Arm::Direct => (
                &direct,
                format!("http://{}:{SERVER_PORT}{PATH}", plain_server_pod.ip),
            ),
            Arm::Haproxy => (
                &direct,
                format!("http://{}:{HAPROXY_PORT}{PATH}", haproxy_pod.ip),
            ),
            Arm::Waypoint => (&meshed, format!("http://{app_vip}{PATH}")),
            Arm::Mesh => (&meshed, format!("http://{}{PATH}", bypass.cluster_ip)),
        }
    };
    let logs = || {
        format!(
            "{}\nwaypoint:\n{}\nhaproxy:\n{}",
            mesh.logs(),
            tail(&waypoint.output(), 40),
            tail(&haproxy.output(), 20)
        )
    };

    // Warm-up: config pushed, certificates, connection pools; checks each
    // arm answers 2xx before anything is timed. The waypoint's route takes
    // effect once the agent has pushed it, so retry for a few seconds.
    let _wake = CpuWake::hold();
    for arm in Arm::ALL {
        let (client, url) = target(arm);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let run = wrk(client, &url, Duration::from_secs(1), args)
                .with_context(|| format!("warming up {}", arm.name()))?;
            if run.requests > 0 && run.non_2xx == 0 && run.socket_errors == 0 {
                break;
            }
            if attempt == 10 {
                bail!(
                    "{}: {url} does not answer cleanly: {run:?}\n{}",
                    arm.name(),
                    logs()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    eprintln!(
        "l7: {} rounds per arm, wrk -c {} -t {} -d {:?} GET {PATH} (HTTP/1.1 keep-alive), node 0 → node 1",
        args.rounds, args.connections, args.threads, args.duration
    );
    let ztunnels: Vec<u32> = mesh.nodes.iter().filter_map(|d| d.ztunnel.pid()).collect();
    ensure!(ztunnels.len() == 2, "ztunnel pids unknown");
    let proxy_pid = |arm: Arm| match arm {
        Arm::Haproxy => haproxy.pid(),
        Arm::Waypoint => waypoint.pid(),
        Arm::Direct | Arm::Mesh => None,
    };
    let mut samples: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
    let mut waypoint_requests = 0.0;
    let mut waypoint_expected = 0;
    for round in 1..=args.rounds {
        for arm in Arm::ALL {
            let (client, url) = target(arm);
            let before = waypoint_served(&waypoint_pod)?;
            let cpu_before = cpu_ms(proxy_pid(arm), &ztunnels)?;
            let s = wrk(client, &url, args.duration, args)?;
            let cpu_after = cpu_ms(proxy_pid(arm), &ztunnels)?;
            let served = waypoint_served(&waypoint_pod)? - before;
            let per_request = |ms: f64| ms * 1e3 / s.requests.max(1) as f64;
            let (proxy_cpu_us, ztunnel_cpu_us) = (
                per_request(cpu_after.0 - cpu_before.0),
                per_request(cpu_after.1 - cpu_before.1),
            );
            eprintln!(
                "  round {round}/{} {:<8} {:>9.0} req/s  p50 {:>8.1} us  p99 {:>8.1} us  CPU/request: proxy {:>7}, ztunnels {:>5.1} us",
                args.rounds,
                arm.name(),
                s.requests_per_s,
                s.p50_us,
                s.p99_us,
                if proxy_cpu_us.is_nan() {
                    "-".to_owned()
                } else {
                    format!("{proxy_cpu_us:.1} us")
                },
                ztunnel_cpu_us,
            );
            ensure!(
                s.non_2xx == 0 && s.socket_errors == 0,
                "{}: {} non-2xx answers and {} socket errors in round {round}\n{}",
                arm.name(),
                s.non_2xx,
                s.socket_errors,
                logs()
            );
            match arm {
                Arm::Waypoint => {
                    waypoint_requests += served;
                    waypoint_expected += s.requests;
                }
                // The bypass Service really bypasses the waypoint.
                Arm::Mesh => ensure!(
                    served < 1.0,
                    "the mesh arm went through the waypoint ({served} requests)"
                ),
                _ => {}
            }
            samples.entry(arm.name()).or_default().push(Sample {
                wrk: s,
                proxy_cpu_us,
                ztunnel_cpu_us,
            });
        }
    }
    // wrk counts the requests answered; in-flight ones at the end may have
    // reached the waypoint too.
    ensure!(
        waypoint_requests >= waypoint_expected as f64,
        "the waypoint saw {waypoint_requests} requests, wrk counted {waypoint_expected}"
    );
    let metrics = scrape_metrics(&mesh.nodes[1].node)?;
    let tunnelled = metric_sum(
        &metrics,
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    ensure!(
        tunnelled >= 1.0,
        "no mTLS connection reached node 1's ztunnel"
    );

    let median = |arm: Arm, f: fn(&Sample) -> f64| {
        let mut v: Vec<f64> = samples
            .get(arm.name())
            .into_iter()
            .flatten()
            .map(f)
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let rows: Vec<Row> = [
        (
            "requests_per_s",
            "req/s",
            (|s: &Sample| s.wrk.requests_per_s) as fn(&Sample) -> f64,
            true,
        ),
        ("p50_us", "us", |s: &Sample| s.wrk.p50_us, false),
        ("p99_us", "us", |s: &Sample| s.wrk.p99_us, false),
        ("proxy_cpu_us", "us", |s: &Sample| s.proxy_cpu_us, false),
        ("ztunnel_cpu_us", "us", |s: &Sample| s.ztunnel_cpu_us, false),
    ]
    .into_iter()
    .map(|(metric, unit, f, higher_is_better)| Row {
        metric,
        unit,
        values: Arm::ALL.map(|a| median(a, f)),
        higher_is_better,
    })
    .collect();
    print_report(&rows, args);
    Ok(())
}

/// One metric's medians, in [`Arm::ALL`]'s order.
struct Row {
    metric: &'static str,
    unit: &'static str,
    values: [f64; 4],
    higher_is_better: bool,
}

impl Row {
    fn get(&self, arm: Arm) -> f64 {
        self.values[Arm::ALL.iter().position(|a| *a == arm).unwrap_or(0)]
    }
}

/// The metrics the issue sets targets on.
const TARGETS: [&str; 2] = ["requests_per_s", "p99_us"];

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { f64::NAN } else { a / b }
}

fn print_report(rows: &[Row], args: &Args) {
    println!(
        "\n{:<15} {:>15} {:>15} {:>15} {:>15} {:>9}  target",
        "metric", "waypoint", "haproxy", "direct", "mesh (no wp)", "wp/hap"
    );
    println!("{}", "-".repeat(99));
    for r in rows {
        let wp_hap = ratio(r.get(Arm::Waypoint), r.get(Arm::Haproxy));
        // Targets are on requests/s and p99; the rest explains them.
        let met = if !TARGETS.contains(&r.metric) {
            "-"
        } else if (r.higher_is_better && wp_hap >= 1.0) || (!r.higher_is_better && wp_hap <= 1.0) {
            "met"
        } else {
            "MISSED"
        };
        let cell = |arm| {
            let v = r.get(arm);
            if v.is_nan() {
                "-".to_owned()
            } else {
                format!("{v:.1} {}", r.unit)
            }
        };
        println!(
            "{:<15} {:>15} {:>15} {:>15} {:>15} {:>9}  {met}",
            r.metric,
            cell(Arm::Waypoint),
            cell(Arm::Haproxy),
            cell(Arm::Direct),
            cell(Arm::Mesh),
            if wp_hap.is_finite() {
                format!("{wp_hap:.2}x")
            } else {
                "-".to_owned()
            },
        );
    }
    println!(
        "\nnote: the waypoint arm is capture → ztunnel → HBONE mTLS → waypoint → HBONE mTLS → \
         ztunnel → pod; HAProxy's is plaintext pod → HAProxy → pod. `mesh (no wp)` is the \
         waypoint arm without the waypoint (a Service with istio.io/use-waypoint: none), so \
         waypoint − mesh is the waypoint's own cost. `proxy_cpu_us`: CPU time (user + \
         system) HAProxy or the waypoint spent per request; `ztunnel_cpu_us`: both ztunnels' \
         together. Each proxy: {} thread(s) pinned to CPU \
         {PROXY_CPU}; wrk on CPU {CLIENT_CPU}; ztunnels and the server float; access logs {}.",
        args.proxy_threads,
        if args.access_log { "on" } else { "off" }
    );
    println!();
    for r in rows {
        println!(
            "BENCH l7 {} waypoint={:.2} haproxy={:.2} direct={:.2} mesh={:.2} ratio={:.3}",
            r.metric,
            r.get(Arm::Waypoint),
            r.get(Arm::Haproxy),
            r.get(Arm::Direct),
            r.get(Arm::Mesh),
            ratio(r.get(Arm::Waypoint), r.get(Arm::Haproxy)),
        );
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `warren-waypoint` for the namespace in `pod`, as
/// [`warren_e2e::mesh::start_waypoint`] starts it, but pinned to the proxy
/// CPU with `--proxy-threads` workers.
fn start_pinned_waypoint(
    cluster: &Cluster,
    mesh: &Mesh,
    pod: &Pod,
    args: &Args,
) -> Result<Process> {
    let bin = binaries::path("warren-waypoint")?;
    let node = &mesh
        .nodes
        .iter()
        .find(|d| d.node.name == pod.node)
        .with_context(|| format!("node {} of pod {}", pod.node, pod.name))?
        .node;
    let socket = agent_socket(cluster, node)?.to_string_lossy().into_owned();
    let threads = args.proxy_threads.to_string();
    let log_level = if args.access_log {
        "info"
    } else {
        "info,access=off"
    };
    let mut process = cluster.spawn(
        &pod.sandbox,
        "taskset",
        &[
            "-c",
            PROXY_CPU,
            &bin.to_string_lossy(),
            "--namespace",
            NAMESPACE,
            "--gateway",
            "waypoint",
            "--service-account",
            &pod.service_account,
            "--agent-socket",
            &socket,
            "--client-id",
            "waypoint-mesh",
            "--worker-threads",
            &threads,
            "--log-level",
            log_level,
        ],
    )?;
    process.wait_for_output("waypoint ready", Duration::from_secs(30))?;
    Ok(process)
}

/// HAProxy in `pod` on the proxy CPU, routing `/api` to the server pod with the
/// waypoint's retry policy.
fn start_haproxy(cluster: &Cluster, pod: &Pod, server: &Pod, args: &Args) -> Result<Process> {
    let config = haproxy_config(
        &format!("{}:{SERVER_PORT}", server.ip),
        args.proxy_threads,
        args.access_log,
    );
    tools::start_haproxy(cluster, pod, &config, HAPROXY_PORT, Some(PROXY_CPU))
}

/// Requests the waypoint has answered so far (its `istio_requests_total`).
fn waypoint_served(pod: &Pod) -> Result<f64> {
    let url = "http://127.0.0.1:15020/metrics";
    let out = pod
        .sandbox
        .exec("curl", ["-sS", "--max-time", "5", url])
        .context("scraping the waypoint's metrics")?;
    ensure!(
        out.status.success(),
        "curl {url} in {}: {}",
        pod.name,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(metric_sum(
        &String::from_utf8_lossy(&out.stdout),
        "istio_requests_total",
        &[],
    ))
}

fn wrk(client: &Pod, url: &str, duration: Duration, args: &Args) -> Result<Wrk> {
    let (connections, threads) = (args.connections.to_string(), args.threads.to_string());
    let duration = format!("{}s", duration.as_secs_f64().round().max(1.0));
    let out = client.sandbox.exec(
        "taskset",
        [
            "-c",
            CLIENT_CPU,
            "wrk",
            "-c",
            &connections,
            "-t",
            &threads,
            "--latency",
            "-d",
            &duration,
            url,
        ],
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "wrk from {} to {url} failed ({}): {stdout}{}",
        client.name,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_wrk(&stdout).with_context(|| format!("parsing wrk's output:\n{stdout}"))
}

/// Reads wrk's `--latency` report.
pub fn parse_wrk(out: &str) -> Result<Wrk> {
    let mut requests = None;
    let mut requests_per_s = None;
    let (mut p50_us, mut p99_us) = (None, None);
    let mut non_2xx = 0;
    let mut socket_errors = 0;
    let mut in_distribution = false;
    for line in out.lines().map(str::trim) {
        if line == "Latency Distribution" {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            if let Some((pct, value)) = line.split_once('%') {
                match pct.trim() {
                    "50" => p50_us = Some(parse_time_us(value.trim())?),
                    "99" => p99_us = Some(parse_time_us(value.trim())?),
                    _ => {}
                }
                continue;
            }
            in_distribution = false;
        }
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            requests_per_s = Some(v.trim().parse::<f64>().context("Requests/sec")?);
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = v.trim().parse().context("Non-2xx or 3xx responses")?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in v.split(',') {
                let n = part
                    .split_whitespace()
                    .nth(1)
                    .context("socket error count")?;
                socket_errors += n.parse::<u64>().context("socket error count")?;
            }
        } else if let Some((n, rest)) = line.split_once(" requests in ")
            && rest.contains("read")
        {
            requests = Some(n.trim().parse().context("request count")?);
        }
    }
    Ok(Wrk {
        requests: requests.context("no \"N requests in\" line")?,
        requests_per_s: requests_per_s.context("no Requests/sec line")?,
        p50_us: p50_us.context("no 50% latency (was --latency given?)")?,
        p99_us: p99_us.context("no 99% latency (was --latency given?)")?,
        non_2xx,
        socket_errors,
    })
}

/// wrk's times: "812.00us", "1.10ms", "2.00s", "1.00m".
fn parse_time_us(s: &str) -> Result<f64> {
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .with_context(|| format!("no unit in {s:?}"))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().with_context(|| format!("bad time {s:?}"))?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => bail!("unknown unit in {s:?}"),
    };
    Ok(n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from wrk 4.1.0 (Debian) against a server answering 404.
    const NOT_FOUND: &str = "Running 2s test @ http://127.0.0.1:18931/nonexistent
  2 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.66ms    1.21ms  22.79ms   93.00%
    Req/Sec     1.14k   215.23     2.34k    85.37%
  Latency Distribution
     50%    2.53ms
     75%    2.90ms
     90%    3.36ms
     99%    5.54ms
  4639 requests in 2.10s, 2.30MB read
  Non-2xx or 3xx responses: 4639
Requests/sec:   2209.35
Transfer/sec:      1.10MB
";

    /// The same layout with microseconds and socket errors.
    const FAST: &str = "Running 5s test @ http://10.96.0.1/api/items
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   812.31us  301.02us  12.40ms   91.20%
    Req/Sec    39.51k     2.10k   44.00k    71.00%
  Latency Distribution
     50%  760.00us
     75%    0.90ms
     90%    1.05ms
     99%    1.83ms
  393120 requests in 5.00s, 98.21MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
Requests/sec:  78624.00
Transfer/sec:     19.64MB
";

    #[test]
    fn parses_a_captured_report() {
        let w = parse_wrk(NOT_FOUND).expect("parses");
        assert_eq!(w.requests, 4639);
        assert_eq!(w.requests_per_s, 2209.35);
        assert!((w.p50_us - 2530.0).abs() < 1e-6);
        assert!((w.p99_us - 5540.0).abs() < 1e-6);
        assert_eq!((w.non_2xx, w.socket_errors), (4639, 0));
    }

    #[test]
    fn parses_microseconds_and_socket_errors() {
        let w = parse_wrk(FAST).expect("parses");
        assert_eq!(w.requests, 393_120);
        assert!((w.p50_us - 760.0).abs() < 1e-6);
        assert!((w.p99_us - 1830.0).abs() < 1e-6);
        assert_eq!((w.non_2xx, w.socket_errors), (0, 5));
    }

    #[test]
    fn rejects_a_report_without_latency_distribution() {
        let without: String = NOT_FOUND
            .lines()
            .filter(|l| {
                !l.trim_start()
                    .starts_with(|c: char| c.is_ascii_digit() && l.contains('%'))
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert!(parse_wrk(&without).is_err());
    }

    #[test]
    fn times_convert_to_microseconds() {
        assert_eq!(parse_time_us("812.00us").ok(), Some(812.0));
        assert_eq!(parse_time_us("1.50ms").ok(), Some(1500.0));
        assert_eq!(parse_time_us("2.00s").ok(), Some(2e6));
        assert!(parse_time_us("3.0x").is_err());
        assert!(parse_time_us("12").is_err());
    }

    #[test]
    fn haproxy_config_has_the_route_and_retry_policy() {
        let cfg = haproxy_config("10.244.1.2:8080", 1, false);
        for needle in [
            "mode http",
            "http-reuse always",
            "retries 2",
            "retry-on conn-failure empty-response response-timeout 500 501 502 503 504",
            "acl api path_beg /api",
            "use_backend app if api",
            "server app-0 10.244.1.2:8080",
            "nbthread 1",
        ] {
            assert!(cfg.contains(needle), "{needle:?} missing from\n{cfg}");
        }
        assert!(!cfg.contains("httplog"));
        assert!(haproxy_config("x:1", 1, true).contains("option httplog"));
    }
}
