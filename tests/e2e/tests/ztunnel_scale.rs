//! One ztunnel under many connections: 10 000 concurrent pod-to-pod
//! connections across nodes, each carrying a round trip, all held open at
//! once through both nodes' ztunnels (HBONE), then closed. Memory while
//! holding them stays bounded, and afterwards every file descriptor and
//! every connection the ztunnels counted is given back.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use warren_e2e::{
    mesh::{MeshOptions, eventually, metric_sum, scrape_metrics, start_mesh_with},
    workload::start_echo,
};
use warren_testbed::{Cluster, PodSpec, binaries, labels, privilege::require_root};

const CONNECTIONS: u32 = 10_000;

fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing the descriptors of {pid}"))?
        .count())
}

fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok(kib / 1024.0)
}

#[test]
fn ztunnels_hold_10000_connections_and_give_everything_back() -> Result<()> {
    require_root()?;
    let mut cluster = Cluster::builder().nodes(2).pods_per_node(0).up()?;
    cluster.add_namespace("demo", labels(&[("warren.io/dataplane-mode", "ambient")]))?;
    for (name, node) in [("server", 1), ("client", 0)] {
        cluster.add_pod(PodSpec {
            name: name.into(),
            namespace: "demo".into(),
            node,
            labels: labels(&[("app", name)]),
            service_account: Some(name.into()),
        })?;
    }
    // Pooled HBONE connections close after 2 s idle instead of 60 s, so the
    // test can see the ztunnels return to where they started.
    let options = MeshOptions {
        ztunnel_args: vec!["--pool-idle-timeout".into(), "2s".into()],
        ..MeshOptions::default()
    };
    let mut mesh = start_mesh_with(&cluster, &options)?;
    mesh.wait_ready(Duration::from_secs(30))
        .with_context(|| mesh.logs())?;
    let server = cluster.pod("server")?.clone();
    let client = cluster.pod("client")?.clone();
    let _echo = start_echo(&cluster, &server, 9000)?;
    let target = format!("{}:9000", server.ip);
    let sample = binaries::path("warren-sample")?;
    let sample = sample.to_string_lossy();
    let hold = |count: u32, hold: &str| -> Result<warren_testbed::Process> {
        cluster.spawn(
            &client.sandbox,
            &sample,
            &[
                "hold",
                "--connect",
                &target,
                "--count",
                &count.to_string(),
                "--parallel",
                "512",
                "--hold",
                hold,
            ],
        )
    };
    let report = |process: &warren_testbed::Process| -> Result<Value> {
        let output = process.output();
        let line = output
            .lines()
            .rfind(|l| l.starts_with('{'))
            .with_context(|| format!("no report from hold:\n{output}"))?;
        serde_json::from_str(line).context("hold's report")
    };

    // Warm up (HBONE connections, certificates), then measure the baseline.
    let mut warm = hold(20, "10ms")?;
    warm.wait_exit(Duration::from_secs(30))?;
    ensure!(report(&warm)?["held"] == 20, "warm-up: {}", warm.output());
    let pids: Vec<u32> = mesh
        .nodes
        .iter()
        .map(|n| n.ztunnel.pid().context("ztunnel pid"))
        .collect::<Result<_>>()?;
    // The warm-up's pooled connection closes once idle.
    std::thread::sleep(Duration::from_secs(3));
    let fds_before: Vec<usize> = pids.iter().map(|p| open_fds(*p)).collect::<Result<_>>()?;
    let rss_before: Vec<f64> = pids.iter().map(|p| rss_mib(*p)).collect::<Result<_>>()?;

    let mut holding = hold(CONNECTIONS, "3s")?;
    holding
        .wait_for_output("holding connections", Duration::from_secs(120))
        .with_context(|| mesh.logs())?;
    let fds_during: Vec<usize> = pids.iter().map(|p| open_fds(*p)).collect::<Result<_>>()?;
    let rss_during: Vec<f64> = pids.iter().map(|p| rss_mib(*p)).collect::<Result<_>>()?;
    holding.wait_exit(Duration::from_secs(60))?;
    let held = report(&holding)?;
    eprintln!(
        "hold report: {held}\nztunnel fds before/during: {fds_before:?} / {fds_during:?}; \
         RSS MiB before/during: {rss_before:.1?} / {rss_during:.1?}"
    );
    ensure!(
        held["held"] == CONNECTIONS && held["mismatched"] == 0,
        "every connection must carry its own bytes: {held}\n{}",
        mesh.logs()
    );
    // Each ztunnel really held them: the source one a socket per captured
    // connection, the destination one a socket per connection to the pod.
    for (i, (before, during)) in fds_before.iter().zip(&fds_during).enumerate() {
        ensure!(
            *during >= before + CONNECTIONS as usize,
            "ztunnel {i}: {during} descriptors while holding, {before} before"
        );
    }
    for (i, (before, during)) in rss_before.iter().zip(&rss_during).enumerate() {
        let per_connection_kib = (during - before) * 1024.0 / f64::from(CONNECTIONS);
        eprintln!("ztunnel {i}: {per_connection_kib:.1} KiB per held connection");
        ensure!(
            per_connection_kib < 32.0,
            "ztunnel {i}: {per_connection_kib:.1} KiB per connection ({before:.1} → {during:.1} MiB)"
        );
    }

    // Everything given back: descriptors and counted connections.
    eventually(Duration::from_secs(20), "descriptors returned", || {
        Ok(pids
            .iter()
            .zip(&fds_before)
            .all(|(pid, before)| open_fds(*pid).is_ok_and(|now| now <= before + 2)))
    })
    .with_context(|| {
        let now: Vec<_> = pids.iter().map(|p| open_fds(*p).ok()).collect();
        format!("descriptors before {fds_before:?}, now {now:?}")
    })?;
    let destination = &mesh.nodes[1].node;
    eventually(Duration::from_secs(20), "connections closed", || {
        let metrics = scrape_metrics(destination)?;
        let labels = [("reporter", "destination")];
        let opened = metric_sum(&metrics, "istio_tcp_connections_opened_total", &labels);
        let closed = metric_sum(&metrics, "istio_tcp_connections_closed_total", &labels);
        Ok(opened >= f64::from(CONNECTIONS) && closed == opened)
    })?;
    Ok(())
}
