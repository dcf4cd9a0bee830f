//! Upgrading ztunnel under load: a new process started on a node takes over from the
//! running one, and no connection is refused or cut. A connection held open across
//! both nodes' hand-overs keeps its round trips going, a client opening a new
//! connection for every round trip sees no failure, and each old process leaves by
//! itself once its last connection has ended.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use warren_e2e::mesh::waypoint_pod;
use warren_e2e::{
    mesh::{
        MeshOptions, eventually, metric_sum, scrape_metrics, start_mesh_with, start_waypoint,
        waypoint_gateway,
    },
    workload::{count_status, finished_report, pingpong, start_echo, start_http_server},
};
use warren_testbed::{
    Cluster, PodSpec, Process, ServicePort, binaries, labels, privilege::require_root,
};

const ECHO_PORT: u16 = 9000;
/// How long both clients run: long enough for both hand-overs inside it.
const LOAD: &str = "8s";

/// Waits for each old ztunnel to leave by itself, having finished every connection
/// (not cut at its drain deadline).
fn drained_cleanly(old: Vec<(String, Process)>) -> Result<()> {
    for (node, mut process) in old {
        let status = process
            .wait_exit(Duration::from_secs(20))
            .with_context(|| format!("the old ztunnel on {node} did not leave"))?;
        let output = process.output();
        ensure!(
            status.success(),
            "old ztunnel on {node}: {status}\n{output}"
        );
        ensure!(
            output.contains("drained: every connection finished"),
            "the old ztunnel on {node} cut connections:\n{output}"
        );
    }
    Ok(())
}

/// The mesh's ztunnels may drain for a minute: what ends a drain in these tests is
/// the last connection finishing, never the deadline.
fn long_drains() -> MeshOptions {
    MeshOptions {
        ztunnel_args: vec!["--drain-timeout".to_owned(), "60s".to_owned()],
        ..MeshOptions::default()
    }
}

#[test]
fn a_new_ztunnel_takes_over_under_load_without_losing_a_connection() -> Result<()> {
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
    // Outside the mesh: its plaintext to the server goes through the server's
    // node's ztunnel (the inbound capture), hand-over or not.
    cluster.add_namespace("legacy", std::collections::BTreeMap::new())?;
    cluster.add_pod(PodSpec {
        name: "outsider".into(),
        namespace: "legacy".into(),
        node: 0,
        labels: labels(&[("app", "outsider")]),
        service_account: None,
    })?;
    cluster.add_service(
        "demo",
        "server",
        labels(&[("app", "server")]),
        vec![ServicePort {
            name: "tcp-echo".into(),
            port: ECHO_PORT,
            target_port: ECHO_PORT,
        }],
    )?;
    let mut mesh = start_mesh_with(&cluster, &long_drains())?;
    mesh.wait_ready(Duration::from_secs(30))
        .with_context(|| mesh.logs())?;
    let server = cluster.pod("server")?.clone();
    let client = cluster.pod("client")?.clone();
    let _echo = start_echo(&cluster, &server, ECHO_PORT)?;
    let vip = cluster
        .services()
        .iter()
        .find(|s| s.name == "server")
        .context("service server")?
        .cluster_ip;

    // Both clients stop at their first failure (refused, reset, timed out, or a
    // wrong echo) and exit non-zero.
    let sample = binaries::path("warren-sample")?
        .to_string_lossy()
        .into_owned();
    let pod_target = format!("{}:{ECHO_PORT}", server.ip);
    let vip_target = format!("{vip}:{ECHO_PORT}");
    let outsider = cluster.pod("outsider")?.clone();
    // Once the server's capture is on, the outsider's connections are ztunnel's.
    eventually(
        Duration::from_secs(10),
        "the server's inbound capture on",
        || {
            let ok = pingpong(&outsider, &pod_target, &["--round-trips", "2"])?
                .status
                .success();
            let metrics = scrape_metrics(&mesh.nodes[1].node)?;
            let through = metric_sum(
                &metrics,
                "istio_tcp_connections_opened_total",
                &[
                    ("reporter", "destination"),
                    ("connection_security_policy", "unknown"),
                ],
            );
            Ok(ok && through >= 1.0)
        },
    )
    .with_context(|| mesh.logs())?;
    // Ping-pong from `pod` to `target` for the whole load, on one connection
    // or (`new`) a new one each time.
    let pingpong_load = |pod: &warren_testbed::Pod, target: &str, new: bool| {
        let mut args = vec!["pingpong", "--connect", target];
        if new {
            args.push("--new-connection");
        }
        args.extend(["--duration", LOAD, "--timeout", "5s", "--json"]);
        cluster.spawn(&pod.sandbox, &sample, &args)
    };
    let mut held = pingpong_load(&client, &pod_target, false)?;
    let mut churn = pingpong_load(&client, &vip_target, true)?;
    let mut plaintext = pingpong_load(&outsider, &pod_target, true)?;

    // The destination's node first (peers' HBONE connections must move), then the
    // source's (captured connections must move).
    std::thread::sleep(Duration::from_millis(1500));
    let old = mesh.hand_over_ztunnels(&cluster, &[1, 0], Duration::from_millis(1500))?;
    let mut clients = [
        ("held connection", &mut held),
        ("new connections", &mut churn),
        ("plaintext from outside the mesh", &mut plaintext),
    ];
    // The hand-overs happened while they all ran (else this proves nothing).
    for (what, process) in &mut clients {
        process
            .check_running()
            .with_context(|| format!("{what}: ended before the hand-overs"))?;
    }
    for (what, process) in clients {
        let report = finished_report(process, Duration::from_secs(30)).with_context(|| {
            format!(
                "{what}: a connection failed across the hand-overs\n{}",
                mesh.logs()
            )
        })?;
        let round_trips = report["round_trips"].as_u64().unwrap_or(0);
        ensure!(
            round_trips > 100,
            "{what}: only {round_trips} round trips: {report}"
        );
    }

    // Each old process drained cleanly once the held connection ended, long before
    // its 60 s deadline.
    drained_cleanly(old)?;

    // The successors carry the node now: metrics, readiness, and traffic.
    let metrics = scrape_metrics(&mesh.nodes[1].node)?;
    let opened = metric_sum(
        &metrics,
        "istio_tcp_connections_opened_total",
        &[("reporter", "destination")],
    );
    ensure!(
        opened > 10.0,
        "the successor on node 1 counted {opened} inbound connections:\n{metrics}"
    );
    for daemons in &mut mesh.nodes {
        daemons.ztunnel.check_running()?;
    }
    let after = pingpong(&client, &vip_target, &["--round-trips", "10"])?;
    ensure!(
        after.status.success(),
        "after the hand-overs: {}",
        String::from_utf8_lossy(&after.stderr)
    );
    Ok(())
}

/// Through a waypoint, the waypoint's kept-alive upstream connections run over HBONE
/// to the destination's ztunnel. When that ztunnel hands over, the waypoint stops
/// reusing them (their HBONE connection got GOAWAY) once their request is done, so the
/// old ztunnel's drain ends with the requests in flight, and no request fails.
#[test]
fn requests_through_a_waypoint_survive_both_hand_overs() -> Result<()> {
    require_root()?;
    const NS: &str = "shop";
    let mut cluster = Cluster::builder().nodes(2).pods_per_node(0).up()?;
    cluster.add_namespace(NS, labels(&[("warren.io/dataplane-mode", "ambient")]))?;
    for (name, node, pod_labels) in [
        ("client", 0, labels(&[("app", "client")])),
        ("app", 1, labels(&[("app", "app")])),
    ] {
        cluster.add_pod(PodSpec {
            name: name.into(),
            namespace: NS.into(),
            node,
            labels: pod_labels,
            service_account: Some(name.into()),
        })?;
    }
    cluster.add_pod(waypoint_pod(NS, 1))?;
    cluster.add_service(
        NS,
        "app",
        labels(&[("app", "app")]),
        vec![ServicePort {
            name: "http".into(),
            port: 80,
            target_port: 8080,
        }],
    )?;
    std::fs::write(
        cluster.config_dir().join("waypoint.yaml"),
        waypoint_gateway(NS),
    )?;
    // As the Helm chart runs them: a drained ztunnel waits to be stopped.
    let mut options = long_drains();
    options
        .ztunnel_args
        .push("--linger-after-handover".to_owned());
    let mut mesh = start_mesh_with(&cluster, &options)?;
    mesh.wait_ready(Duration::from_secs(30))
        .with_context(|| mesh.logs())?;
    let waypoint_pod = cluster.pod("waypoint")?.clone();
    let _waypoint = start_waypoint(&cluster, &waypoint_pod, NS).with_context(|| mesh.logs())?;
    let app = cluster.pod("app")?.clone();
    let _server = start_http_server(&cluster, &app, 8080, &["--name", "app"])?;
    let vip = cluster
        .services()
        .iter()
        .find(|s| s.name == "app")
        .context("service app")?
        .cluster_ip;

    let client = cluster.pod("client")?.clone();
    let sample = binaries::path("warren-sample")?
        .to_string_lossy()
        .into_owned();
    let url = format!("http://{vip}/");
    let mut load = cluster.spawn(
        &client.sandbox,
        &sample,
        &[
            "load",
            "--url",
            &url,
            "--duration",
            LOAD,
            "-c",
            "4",
            "--json",
        ],
    )?;
    std::thread::sleep(Duration::from_millis(1500));
    // The app's node first: the waypoint's upstream connections run through it.
    let old = mesh.hand_over_ztunnels(&cluster, &[1, 0], Duration::from_millis(1500))?;
    load.check_running()
        .context("the load ended before the hand-overs")?;
    let report =
        finished_report(&mut load, Duration::from_secs(30)).with_context(|| mesh.logs())?;
    let requests = report["requests"].as_u64().unwrap_or(0);
    let ok = count_status(&report, 200);
    ensure!(
        requests > 100 && ok == requests,
        "{ok} of {requests} requests answered 200 across the hand-overs:\n{report}\n{}",
        mesh.logs()
    );
    lingered_cleanly(old).with_context(|| mesh.logs())?;
    Ok(())
}

/// Waits for each old ztunnel run with `--linger-after-handover` to finish every
/// connection, then checks it stays (holding no port) until SIGTERM, and leaves then.
fn lingered_cleanly(old: Vec<(String, Process)>) -> Result<()> {
    for (node, mut process) in old {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !process.output().contains("waiting for SIGTERM") {
            process.check_running()?;
            ensure!(
                std::time::Instant::now() < deadline,
                "the old ztunnel on {node} did not finish its drain:\n{}",
                process.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let output = process.output();
        ensure!(
            output.contains("drained: every connection finished"),
            "the old ztunnel on {node} cut connections:\n{output}"
        );
        std::thread::sleep(Duration::from_millis(300));
        process
            .check_running()
            .with_context(|| format!("the drained ztunnel on {node} did not wait to be stopped"))?;
        let status = process.stop()?;
        ensure!(
            status.success(),
            "old ztunnel on {node} after SIGTERM: {status}"
        );
    }
    Ok(())
}
