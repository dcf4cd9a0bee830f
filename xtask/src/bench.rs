//! `cargo xtask bench <name>`: builds the benchmark and what it starts in
//! release mode, then runs it. Each benchmark measures Warren and its
//! baseline alternately in one run and prints ratios (see docs/benchmarks.md).

use anyhow::{Result, bail};

use crate::exec::{self, cargo, is_root, workspace_root};

/// Benchmarks that exist, with what they compare.
const BENCHES: &[(&str, &str)] = &[
    (
        "shortcut",
        "same-node pod-to-pod ping-pong and stream, with and without the sk_msg shortcut",
    ),
    (
        "l4",
        "pod to pod across nodes, direct and through ztunnel (HBONE mTLS): round trips, throughput, memory",
    ),
    (
        "l7",
        "HTTP/1.1 keep-alive through the waypoint (route + retries) vs HAProxy vs direct: req/s, p50, p99",
    ),
    (
        "config",
        "config distribution on 10k services / 50k endpoints / 2k policies: change to proxy, snapshot, memory",
    ),
];

#[derive(clap::Args)]
pub struct Args {
    /// Benchmark to run; omit to list them.
    name: Option<String>,
    /// Options passed to the benchmark (e.g. -- --duration 5s).
    #[arg(last = true)]
    rest: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    let Some(name) = &args.name else {
        eprintln!("benchmarks (cargo xtask bench <name> [-- --help]):");
        for (name, what) in BENCHES {
            eprintln!("  {name:<10} {what}");
        }
        return Ok(());
    };
    if !BENCHES.iter().any(|(n, _)| n == name) {
        let known: Vec<&str> = BENCHES.iter().map(|(n, _)| *n).collect();
        bail!("no benchmark {name:?}; available: {}", known.join(", "));
    }
    if !is_root() {
        bail!("benchmarks build clusters of network namespaces and load eBPF: run as root");
    }
    crate::setup::run(&crate::setup::Args::default())?;
    exec::run(cargo().args([
        "build",
        "--release",
        "--bins",
        "-p",
        "warren-bench",
        "-p",
        "warren-sample",
        "-p",
        "warren-node-agent",
        "-p",
        "warren-ztunnel",
        "-p",
        "warren-waypoint",
    ]))?;
    let bench = workspace_root().join("target/release/warren-bench");
    exec::run(std::process::Command::new(bench).arg(name).args(&args.rest))
}
