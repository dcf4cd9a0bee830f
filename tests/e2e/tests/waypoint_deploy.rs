//! Deploying a waypoint in local mode: `warrenctl waypoint apply` writes the
//! namespace's Gateway into the config folder, the agent of the waypoint
//! pod's node runs `warren-waypoint` in that pod's network namespace, and
//! traffic follows the VirtualService; `warrenctl waypoint delete` stops the
//! process and traffic goes straight to the endpoints again.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use warren_e2e::mesh::waypoint_pod;
use warren_e2e::{
    agent::{agent_socket, warrenctl_text},
    mesh::{all_to_v2, eventually, start_mesh_with_waypoints},
    workload::{count_version, load, start_app_versions},
};
use warren_testbed::{Cluster, Pod, PodSpec, ServicePort, labels, privilege::require_root};

const NS: &str = "demo";
const REQUESTS: u64 = 100;

/// (v1, v2) answers out of [`REQUESTS`], or `None` if the load failed
/// (say, while ztunnels switch paths).
fn versions(client: &Pod, url: &str) -> Option<(u64, u64)> {
    let report = load(client, url, &["-n", &REQUESTS.to_string(), "-c", "4"]).ok()?;
    Some((count_version(&report, "v1"), count_version(&report, "v2")))
}

/// Whether something listens on the waypoint's HBONE port in `pod`.
fn hbone_listening(pod: &Pod) -> Result<bool> {
    let out = pod.sandbox.exec("ss", ["-Hltn", "sport = :15008"])?;
    Ok(!out.stdout.is_empty())
}

#[test]
fn warrenctl_deploys_a_waypoint_the_agent_runs_and_removes() -> Result<()> {
    require_root()?;
    let mut cluster = Cluster::builder().nodes(2).pods_per_node(0).up()?;
    cluster.add_namespace(NS, labels(&[("warren.io/dataplane-mode", "ambient")]))?;
    for (name, node, pod_labels, sa) in [
        (
            "app-v1",
            1,
            labels(&[("app", "app"), ("version", "v1")]),
            "app",
        ),
        (
            "app-v2",
            0,
            labels(&[("app", "app"), ("version", "v2")]),
            "app",
        ),
        ("client", 0, labels(&[("app", "client")]), "client"),
    ] {
        cluster.add_pod(PodSpec {
            name: name.into(),
            namespace: NS.into(),
            node,
            labels: pod_labels,
            service_account: Some(sa.into()),
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
    // Every process below is a guard that stops it on drop, and the agents
    // stop their waypoints when they stop (which also live in the pod's
    // cgroup, removed with the cluster): a failing test leaves nothing.
    let mut mesh = start_mesh_with_waypoints(&cluster)?;
    mesh.wait_ready(Duration::from_secs(30))
        .with_context(|| mesh.logs())?;
    let config_dir = cluster.config_dir().to_string_lossy().into_owned();
    std::fs::write(
        cluster.config_dir().join("routes.demo.app.yaml"),
        all_to_v2(NS),
    )?;
    let servers = start_app_versions(&cluster, &["v1", "v2"])?;
    let vip = cluster
        .services()
        .iter()
        .find(|s| s.name == "app")
        .context("service app")?
        .cluster_ip;
    let url = format!("http://{vip}/");
    let client = cluster.pod("client")?.clone();
    let waypoint_pod = cluster.pod("waypoint")?.clone();
    let waypoint_node = cluster
        .nodes()
        .iter()
        .find(|n| n.name == waypoint_pod.node)
        .context("the waypoint pod's node")?
        .clone();
    let socket = agent_socket(&cluster, &waypoint_node)?
        .to_string_lossy()
        .into_owned();
    let agent_index = mesh
        .nodes
        .iter()
        .position(|d| d.node.name == waypoint_pod.node)
        .context("the waypoint node's agent")?;

    // No waypoint yet: ztunnel balances over both versions.
    eventually(Duration::from_secs(20), "v1 and v2 both answer", || {
        Ok(versions(&client, &url).is_some_and(|(v1, v2)| v1 > 0 && v2 > 0 && v1 + v2 == REQUESTS))
    })
    .with_context(|| mesh.logs())?;
    ensure!(
        !hbone_listening(&waypoint_pod)?,
        "nothing listens on 15008 in the waypoint pod before apply"
    );

    // Apply: the agent of the pod's node starts the waypoint in the pod.
    let out = warrenctl_text(&["waypoint", "apply", "-n", NS, "--config-dir", &config_dir])?;
    eprintln!("{out}");
    ensure!(
        cluster
            .config_dir()
            .join("gateway.demo.waypoint.yaml")
            .is_file(),
        "apply wrote no gateway.demo.waypoint.yaml: {out}"
    );
    mesh.nodes[agent_index]
        .agent
        .wait_for_output("waypoint ready", Duration::from_secs(30))
        .with_context(|| mesh.logs())?;
    ensure!(
        hbone_listening(&waypoint_pod)?,
        "the waypoint listens on 15008 inside its pod\n{}",
        mesh.logs()
    );
    eventually(Duration::from_secs(20), "every answer from v2", || {
        Ok(versions(&client, &url) == Some((0, REQUESTS)))
    })
    .with_context(|| mesh.logs())?;
    let report = load(&client, &url, &["-n", "400", "-c", "8"])?;
    ensure!(
        count_version(&report, "v2") == 400,
        "through the waypoint every request goes to v2: {report}\n{}",
        mesh.logs()
    );

    // A waypoint that dies is started again (after a backoff) and serves.
    let agent = &mut mesh.nodes[agent_index].agent;
    let pid = last_started_pid(&agent.output()).context("the agent logs the waypoint's pid")?;
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .context("running kill")?;
    ensure!(killed.success(), "kill -KILL {pid}: {killed}");
    eventually(Duration::from_secs(20), "the waypoint restarted", || {
        let output = agent.output();
        Ok(output.matches("waypoint ready").count() >= 2
            && last_started_pid(&output).is_some_and(|p| p != pid))
    })
    .with_context(|| mesh.logs())?;
    eventually(
        Duration::from_secs(20),
        "every answer from v2 again",
        || Ok(versions(&client, &url) == Some((0, REQUESTS))),
    )
    .with_context(|| mesh.logs())?;

    let listed = warrenctl_text(&[
        "waypoint",
        "list",
        "--config-dir",
        &config_dir,
        "--socket",
        &socket,
    ])?;
    eprintln!("{listed}");
    ensure!(
        listed.contains("waypoint@") && listed.contains("running (waypoint-demo)"),
        "list shows the pod and the running process:\n{listed}"
    );

    // Delete: the process stops and ztunnel goes straight to endpoints.
    warrenctl_text(&["waypoint", "delete", "-n", NS, "--config-dir", &config_dir])?;
    mesh.nodes[agent_index]
        .agent
        .wait_for_output("waypoint stopped", Duration::from_secs(20))
        .with_context(|| mesh.logs())?;
    eventually(Duration::from_secs(10), "15008 closed in the pod", || {
        Ok(!hbone_listening(&waypoint_pod)?)
    })?;
    eventually(
        Duration::from_secs(20),
        "v1 and v2 both answer again",
        || {
            Ok(versions(&client, &url)
                .is_some_and(|(v1, v2)| v1 > 0 && v2 > 0 && v1 + v2 == REQUESTS))
        },
    )
    .with_context(|| mesh.logs())?;
    let listed = warrenctl_text(&[
        "waypoint",
        "list",
        "--config-dir",
        &config_dir,
        "--socket",
        &socket,
    ])?;
    ensure!(
        !listed.contains("waypoint-demo"),
        "no waypoint listed after delete:\n{listed}"
    );
    drop(servers);
    Ok(())
}

/// The pid on the agent's last "waypoint started" line.
fn last_started_pid(agent_output: &str) -> Option<i32> {
    let line = agent_output
        .lines()
        .rev()
        .find(|l| l.contains("waypoint started"))?;
    let rest = &line[line.find("pid=")? + 4..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}
