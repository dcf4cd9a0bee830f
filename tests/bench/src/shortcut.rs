//! `shortcut`: two pods on one node talk through the kernel's TCP/IP stack
//! (veth, bridge, veth) or, with the sk_msg shortcut, socket to socket.
//!
//! One cluster, one agent. The shortcut applies to sockets whose peer is a
//! registered local address, so the two arms differ only in whether the
//! pods' addresses are registered; each measurement opens new connections.
//! Arms alternate (baseline, Warren, baseline, Warren, …) so drift on a
//! shared machine hits both alike; medians are reported.

use std::{net::IpAddr, time::Duration};

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use warren_e2e::agent::{AddrKind, Counter, datapath, start_agent_with};
use warren_testbed::{Cluster, Pod, binaries};

use crate::{
    parse_duration,
    report::{self, Row},
    tuning::CpuWake,
};

/// CPUs for the client and the echo server.
const CLIENT_CPU: &str = "0";
const ECHO_CPU: &str = "1";

#[derive(clap::Args)]
pub struct Args {
    /// Length of each measurement.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    duration: Duration,
    /// Measurements per arm (medians are reported; on a shared 2-vCPU VM
    /// single rounds vary by ±15%).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Ping-pong message size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// MiB per stream measurement.
    #[arg(long, default_value_t = 512)]
    stream_mib: u64,
}

struct Sample {
    rtt_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    stream_mib_s: f64,
}

pub fn run(args: &Args) -> Result<()> {
    let cluster = Cluster::builder().nodes(1).pods_per_node(2).up()?;
    let node = cluster.node(0)?;
    // The shortcut is opt-in; this bench is about it.
    let _agent = start_agent_with(&cluster, node, &["--socket-shortcut"])?;
    let (client, server) = (cluster.pod("n0-p0")?, cluster.pod("n0-p1")?);
    let sample = binaries::path("warren-sample")?;
    // Client and echo on separate CPUs (when there are two): on a small VM,
    // a thread migrating between CPUs mid-run costs more than the path
    // being measured. Both arms run the same way.
    let sample = sample.to_string_lossy();
    let _echo = cluster.spawn(
        &server.sandbox,
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
    )?;
    std::thread::sleep(Duration::from_millis(200));
    let _wake = CpuWake::hold();
    let target = format!("{}:9000", server.ip);

    let mut baseline = Vec::new();
    let mut warren = Vec::new();
    eprintln!(
        "shortcut: {} rounds per arm, {:?} ping-pong ({} B) + {} MiB stream each",
        args.rounds, args.duration, args.size, args.stream_mib
    );
    for round in 1..=args.rounds {
        for shortcut in [false, true] {
            set_shortcut(node, &[client, server], shortcut)?;
            let s = measure(client, &target, args)?;
            eprintln!(
                "  round {round} {:<9} {:>9.0} rtt/s  p50 {:>6.1} us  p99 {:>6.1} us  stream {:>7.1} MiB/s",
                if shortcut { "warren" } else { "baseline" },
                s.rtt_per_s,
                s.p50_us,
                s.p99_us,
                s.stream_mib_s
            );
            if shortcut {
                warren.push(s)
            } else {
                baseline.push(s)
            }
        }
    }
    let hits = datapath(node)?.counters()?.get(Counter::ShortcutHit);
    ensure!(
        hits > 0,
        "the Warren arm never used the shortcut (no hits counted)"
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
        baseline: median(&baseline, f),
        higher_is_better,
    };
    report::print(
        "shortcut",
        "warren",
        "plain",
        &[
            row("p50_us", "us", |s| s.p50_us, false),
            row("p99_us", "us", |s| s.p99_us, false),
            row("stream_mib_s", "MiB/s", |s| s.stream_mib_s, true),
            row("rtt_per_s", "/s", |s| s.rtt_per_s, true),
        ],
    );
    Ok(())
}

/// Registers (or forgets) the pods' addresses: only sockets whose peer is a
/// registered local address join the shortcut.
fn set_shortcut(node: &warren_testbed::Node, pods: &[&Pod], on: bool) -> Result<()> {
    let mut dp = datapath(node)?;
    for pod in pods {
        if on {
            dp.add_local_addr(IpAddr::V4(pod.ip), AddrKind::Pod)?;
        } else {
            dp.remove_local_addr(IpAddr::V4(pod.ip))?;
        }
    }
    Ok(())
}

fn measure(client: &Pod, target: &str, args: &Args) -> Result<Sample> {
    let duration = format!("{}ms", args.duration.as_millis());
    let size = args.size.to_string();
    let ping = pingpong(
        client,
        &["--connect", target, "--size", &size, "-d", &duration],
    )?;
    let mib = args.stream_mib.to_string();
    let stream = pingpong(client, &["--connect", target, "--stream-mib", &mib])?;
    let num = |v: &Value, what: &str| {
        v.as_f64()
            .with_context(|| format!("pingpong report has no {what}"))
    };
    Ok(Sample {
        rtt_per_s: num(&ping["rtt_per_s"], "rtt_per_s")?,
        p50_us: num(&ping["latency_us"]["p50"], "p50")?,
        p99_us: num(&ping["latency_us"]["p99"], "p99")?,
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
        "pingpong {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("parsing pingpong's JSON")
}
