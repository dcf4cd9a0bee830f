//! `l4`: pod to pod across nodes, direct and through Warren (capture →
//! ztunnel → HBONE mTLS → ztunnel → pod), in one run.
//!
//! Two echo servers on node 1, pinned to the same CPU: one in a meshed
//! namespace, one outside the mesh (a client outside the mesh reaching a
//! meshed pod would go through its node's ztunnel, the inbound capture).
//! Two clients on node 0, pinned to the same CPU: `direct` in a namespace
//! outside the mesh, to the server outside it, and `meshed` in the meshed
//! server's namespace, whose connections ztunnel carries.
//! Arms alternate round by round; medians are reported. ztunnel's memory is
//! read from /proc: resident at idle, and its high-water mark after the run.
//!
//! A third arm, `relay`, measures the floor of any design with a proxy on each
//! node: the direct client through two HAProxy TCP relays (one per node,
//! splicing, no TLS), so three TCP connections as through the mesh. Warren is
//! compared with direct (the targets) and with that floor.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use warren_e2e::mesh::start_mesh;
use warren_testbed::{Cluster, Pod, PodSpec, binaries, labels};

use crate::{
    parse_duration, procfs,
    report::{self, Row},
    tools::{self, which},
    tuning::CpuWake,
};

const CLIENT_CPU: &str = "0";
const ECHO_CPU: &str = "1";
const ECHO_PORT: u16 = 9000;
const RELAY_PORT: u16 = 9100;

/// A plain TCP relay to `next`: HAProxy with kernel splicing, the cheapest
/// user-space proxy hop there is; two threads like ztunnel.
fn relay_config(next: &str) -> String {
    format!(
        "global\n  nbthread 2\n  maxconn 4096\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         listen relay\n  bind 0.0.0.0:{RELAY_PORT}\n  option splice-auto\n  server next {next}\n"
    )
}

#[derive(clap::Args)]
pub struct Args {
    /// Length of each ping-pong measurement.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    duration: Duration,
    /// Measurements per arm (medians are reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// MiB per bulk-throughput measurement.
    #[arg(long, default_value_t = 256)]
    stream_mib: u64,
}

struct Sample {
    p50_us: f64,
    p99_us: f64,
    /// A new connection plus one 1 KiB round trip on it.
    new_p50_us: f64,
    new_p99_us: f64,
    stream_mib_s: f64,
}

/// One reported metric of a [`Sample`].
struct Metric {
    name: &'static str,
    unit: &'static str,
    value: fn(&Sample) -> f64,
    higher_is_better: bool,
}

const METRICS: [Metric; 5] = [
    Metric {
        name: "rr_p50_us",
        unit: "us",
        value: |s| s.p50_us,
        higher_is_better: false,
    },
    Metric {
        name: "rr_p99_us",
        unit: "us",
        value: |s| s.p99_us,
        higher_is_better: false,
    },
    Metric {
        name: "newconn_p50_us",
        unit: "us",
        value: |s| s.new_p50_us,
        higher_is_better: false,
    },
    Metric {
        name: "newconn_p99_us",
        unit: "us",
        value: |s| s.new_p99_us,
        higher_is_better: false,
    },
    Metric {
        name: "stream_mib_s",
        unit: "MiB/s",
        value: |s| s.stream_mib_s,
        higher_is_better: true,
    },
];

pub fn run(args: &Args) -> Result<()> {
    for tool in ["haproxy", "taskset"] {
        which(tool)?;
    }
    let mut cluster = Cluster::builder().nodes(2).pods_per_node(0).up()?;
    cluster.add_namespace("mesh", labels(&[("warren.io/dataplane-mode", "ambient")]))?;
    cluster.add_namespace("plain", BTreeMap::new())?;
    for (name, ns, node) in [
        ("echo", "mesh", 1),
        ("echo-plain", "plain", 1),
        ("meshed", "mesh", 0),
        ("direct", "plain", 0),
        ("relay0", "plain", 0),
        ("relay1", "plain", 1),
    ] {
        cluster.add_pod(PodSpec {
            name: name.into(),
            namespace: ns.into(),
            node,
            labels: labels(&[("app", name)]),
            service_account: Some(name.into()),
        })?;
    }
    let mut mesh = start_mesh(&cluster)?;
    mesh.wait_ready(Duration::from_secs(30))
        .with_context(|| mesh.logs())?;
    let (echo, plain_echo) = (
        cluster.pod("mesh/echo")?.clone(),
        cluster.pod("plain/echo-plain")?.clone(),
    );
    let sample = binaries::path("warren-sample")?;
    let sample = sample.to_string_lossy();
    let mut echoes = Vec::new();
    for pod in [&echo, &plain_echo] {
        echoes.push(cluster.spawn(
            &pod.sandbox,
            "taskset",
            &[
                "-c",
                ECHO_CPU,
                &sample,
                "echo",
                "--blocking",
                "--listen",
                "0.0.0.0:9000",
            ],
        )?);
    }
    std::thread::sleep(Duration::from_millis(200));
    // The mesh's arm to the meshed server; the baselines to its twin
    // outside the mesh.
    let target = format!("{}:{ECHO_PORT}", echo.ip);
    let plain_target = format!("{}:{ECHO_PORT}", plain_echo.ip);
    let (relay0, relay1) = (
        cluster.pod("plain/relay0")?.clone(),
        cluster.pod("plain/relay1")?.clone(),
    );
    let _relay1 = tools::start_haproxy(
        &cluster,
        &relay1,
        &relay_config(&plain_target),
        RELAY_PORT,
        None,
    )?;
    let next = format!("{}:{RELAY_PORT}", relay1.ip);
    let _relay0 = tools::start_haproxy(&cluster, &relay0, &relay_config(&next), RELAY_PORT, None)?;
    let relay_target = format!("{}:{RELAY_PORT}", relay0.ip);
    let ztunnels: Vec<u32> = mesh.nodes.iter().filter_map(|d| d.ztunnel.pid()).collect();
    ensure!(ztunnels.len() == 2, "ztunnel pids unknown");
    let idle_kib: Vec<f64> = ztunnels
        .iter()
        .map(|pid| procfs::status_kib(*pid, "VmRSS:").map(|k| k as f64))
        .collect::<Result<_>>()?;

    let _wake = CpuWake::hold();
    let (direct, meshed) = (
        cluster.pod("plain/direct")?.clone(),
        cluster.pod("mesh/meshed")?.clone(),
    );
    let (mut base, mut warren, mut relayed) = (Vec::new(), Vec::new(), Vec::new());
    eprintln!(
        "l4: {} rounds per arm, {:?} ping-pong (1 KiB), {:?} new connection + 1 KiB, {} MiB stream, node 0 → node 1",
        args.rounds, args.duration, args.duration, args.stream_mib
    );
    for round in 1..=args.rounds {
        for (arm, client, to) in [
            ("direct", &direct, &plain_target),
            ("relay", &direct, &relay_target),
            ("warren", &meshed, &target),
        ] {
            let s = measure(client, to, args)?;
            eprintln!(
                "  round {round} {arm:<7} p50 {:>7.1} us  p99 {:>7.1} us  new conn p50 {:>7.1} us  p99 {:>7.1} us  stream {:>7.1} MiB/s",
                s.p50_us, s.p99_us, s.new_p50_us, s.new_p99_us, s.stream_mib_s
            );
            match arm {
                "direct" => base.push(s),
                "relay" => relayed.push(s),
                _ => warren.push(s),
            }
        }
    }
    let peak_kib: Vec<f64> = ztunnels
        .iter()
        .map(|pid| procfs::status_kib(*pid, "VmHWM:").map(|k| k as f64))
        .collect::<Result<_>>()?;
    // The meshed arm really went through the tunnel.
    let metrics = warren_e2e::mesh::scrape_metrics(&mesh.nodes[1].node)?;
    let tunnelled = warren_e2e::mesh::metric_sum(
        &metrics,
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    ensure!(
        tunnelled >= args.rounds as f64,
        "the meshed arm did not use HBONE: {tunnelled} mTLS connections"
    );

    let median = |xs: &[Sample], f: fn(&Sample) -> f64| {
        let mut v: Vec<f64> = xs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let row = |metric, unit, f: fn(&Sample) -> f64, higher_is_better| Row {
        metric,
        unit,
        warren: median(&warren, f),
        baseline: median(&base, f),
        higher_is_better,
    };
    let rows: Vec<Row> = METRICS
        .iter()
        .map(|m| row(m.name, m.unit, m.value, m.higher_is_better))
        .collect();
    // `mesh=`: the name for the arm through Warren.
    report::print("l4", "mesh", "direct", &rows);
    // The floor: what the three TCP connections cost with proxies that add
    // nothing else, and how far above it Warren is.
    println!(
        "\ntwo TCP relays (HAProxy, splicing) between the same pods: the floor of a proxy per node\n{:<16} {:>14} {:>14} {:>14}",
        "metric", "relay", "relay/direct", "warren/relay"
    );
    println!("{}", "-".repeat(62));
    let floor: Vec<(&str, f64, f64, f64)> = METRICS
        .iter()
        .map(
            |&Metric {
                 name, unit, value, ..
             }| {
                let (r, d, w) = (
                    median(&relayed, value),
                    median(&base, value),
                    median(&warren, value),
                );
                println!(
                    "{name:<16} {:>14} {:>13.2}x {:>13.2}x",
                    format!("{r:.1} {unit}"),
                    r / d,
                    w / r
                );
                (name, r, d, w)
            },
        )
        .collect();
    println!();
    for (name, r, d, w) in floor {
        println!(
            "BENCH l4 floor_{name} relay={r:.2} direct={d:.2} ratio={:.3} warren_to_relay={:.3}",
            r / d,
            w / r
        );
    }
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max) / 1024.0;
    println!(
        "BENCH l4 ztunnel_rss_idle_mib={:.1}\nBENCH l4 ztunnel_rss_peak_mib={:.1}",
        max(&idle_kib),
        max(&peak_kib)
    );
    Ok(())
}

fn measure(client: &Pod, target: &str, args: &Args) -> Result<Sample> {
    let duration = format!("{}ms", args.duration.as_millis());
    let ping = pingpong(
        client,
        &["--connect", target, "--size", "1024", "-d", &duration],
    )?;
    let fresh = pingpong(
        client,
        &[
            "--connect",
            target,
            "--size",
            "1024",
            "--new-connection",
            "-d",
            &duration,
        ],
    )?;
    let mib = args.stream_mib.to_string();
    let stream = pingpong(client, &["--connect", target, "--stream-mib", &mib])?;
    let num = |v: &Value, what: &str| {
        v.as_f64()
            .with_context(|| format!("pingpong report has no {what}"))
    };
    Ok(Sample {
        p50_us: num(&ping["latency_us"]["p50"], "p50")?,
        p99_us: num(&ping["latency_us"]["p99"], "p99")?,
        new_p50_us: num(&fresh["latency_us"]["p50"], "new-connection p50")?,
        new_p99_us: num(&fresh["latency_us"]["p99"], "new-connection p99")?,
        stream_mib_s: num(&stream["stream_mib_s"], "stream_mib_s")?,
    })
}

fn pingpong(client: &Pod, args: &[&str]) -> Result<Value> {
    let sample = binaries::path("warren-sample")?;
    let sample = sample.to_string_lossy();
    let out = client.sandbox.exec(
        "taskset",
        ["-c", CLIENT_CPU, &sample, "pingpong", "--json"]
            .iter()
            .chain(args),
    )?;
    ensure!(
        out.status.success(),
        "pingpong from {} {args:?} failed: {}",
        client.name,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("parsing pingpong's JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_config_forwards_to_the_next_hop() {
        let cfg = relay_config("10.244.1.2:9000");
        assert!(cfg.contains("mode tcp"), "{cfg}");
        assert!(cfg.contains("bind 0.0.0.0:9100"), "{cfg}");
        assert!(cfg.contains("server next 10.244.1.2:9000"), "{cfg}");
    }
}
