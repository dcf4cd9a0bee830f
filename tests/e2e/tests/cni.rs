//! The CNI plugin entry point: the container runtime runs `warren-cni` as it builds
//! a pod's sandbox, before the pod's containers start, and the agent captures the pod
//! then — so a pod is in the mesh from its first connection, before kubelet has
//! even published its address.
//!
//! The tests play the runtime (`warren_e2e::cni`): the testbed builds the sandbox
//! (namespace, veth, cgroup, sandbox process) as a network plugin would, and the test
//! runs the plugin the agent installed, with the CNI environment and the network
//! plugin's result.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use serde_json::Value;
use warren_e2e::{
    agent::datapath,
    cni::{Runtime, agent_args, previous_result},
    mesh::{MeshOptions, eventually, metric_sum, scrape_metrics, start_mesh_with},
    workload::{pingpong, start_echo},
};
use warren_testbed::{Cluster, Node, PodSpec, labels, privilege::require_root};

const ECHO_PORT: u16 = 7000;

fn enrolled(node: &Node) -> Result<Vec<String>> {
    Ok(datapath(node)?.pods()?.into_iter().map(|p| p.pod).collect())
}

fn starting(cluster: &mut Cluster, namespace: &str, name: &str) -> Result<warren_testbed::Pod> {
    Ok(cluster
        .add_starting_pod(PodSpec {
            name: name.into(),
            namespace: namespace.into(),
            node: 0,
            labels: labels(&[("app", name)]),
            // New to the node: its certificate is issued as the pod starts.
            service_account: Some(name.into()),
        })?
        .clone())
}

#[test]
fn a_pod_is_captured_before_its_first_connection() -> Result<()> {
    require_root()?;
    let mut cluster = Cluster::builder().nodes(2).pods_per_node(0).up()?;
    let node = cluster.node(0)?.clone();
    cluster.add_namespace("shop", labels(&[("istio.io/dataplane-mode", "ambient")]))?;
    cluster.add_namespace("plain", labels(&[]))?;
    // STRICT: a connection that leaves uncaptured is dropped by the server's guard.
    std::fs::write(
        cluster
            .config_dir()
            .join("peerauthentication.shop.strict.yaml"),
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: strict\n  namespace: shop\nspec:\n  mtls:\n    mode: STRICT\n",
    )?;
    let echo = cluster
        .add_pod(PodSpec {
            name: "echo".into(),
            namespace: "shop".into(),
            node: 1,
            labels: labels(&[("app", "echo")]),
            service_account: None,
        })?
        .clone();

    // Node 0's runtime folders, with a network plugin's configuration (each agent is
    // given its own node's).
    let runtime = Runtime::of(&cluster, &node)?;
    let mut agent = agent_args();
    agent.extend(["--cni-wait".into(), "2s".into()]);
    let mut mesh = start_mesh_with(
        &cluster,
        &MeshOptions {
            agent_args: agent,
            ..MeshOptions::default()
        },
    )?;
    mesh.wait_ready(Duration::from_secs(30))?;
    let _server = start_echo(&cluster, &echo, ECHO_PORT)?;

    // The agent put the plugin in the runtime's folder and chained it after the
    // network plugin, naming its socket.
    ensure!(
        runtime.plugin().is_file(),
        "no plugin in {}",
        runtime.bin_dir.display()
    );
    let entry = runtime.entry()?;
    ensure!(
        entry["agentSocket"] == runtime.socket.to_string_lossy().as_ref(),
        "{entry}"
    );
    ensure!(
        entry["meshNamespaces"] == serde_json::json!(["shop"]),
        "the entry lists the mesh's namespaces for when the agent is down: {entry}"
    );
    let list: Value = serde_json::from_slice(&std::fs::read(runtime.network_config())?)?;
    ensure!(list["plugins"][0]["type"] == "bridge", "{list}");

    // A pod of the mesh, caught while its sandbox is built: no address in its status.
    let client = starting(&mut cluster, "shop", "client")?;
    let manifest = std::fs::read_to_string(cluster.config_dir().join("pod.shop.client.yaml"))?;
    ensure!(!manifest.contains("podIP"), "{manifest}");
    let started = Instant::now();
    let add = runtime.run("ADD", &client)?;
    ensure!(add.succeeded(), "ADD failed: {add:?}\n{}", mesh.logs());
    let took = started.elapsed();
    ensure!(
        add.stdout == previous_result(&client),
        "the network plugin's result is passed on: {}",
        add.stdout
    );
    ensure!(
        enrolled(&node)?.contains(&"shop/client".to_owned()),
        "ADD answered before the pod was captured: {:?}",
        enrolled(&node)?
    );

    // The pod's first connection, at once: captured, over mTLS, admitted by STRICT.
    let target = format!("{}:{ECHO_PORT}", echo.ip);
    let first = pingpong(&client, &target, &["-n", "1", "--timeout", "10s"])?;
    ensure!(
        first.status.success(),
        "the first connection failed: {}{}\n{}",
        String::from_utf8_lossy(&first.stdout),
        String::from_utf8_lossy(&first.stderr),
        mesh.logs()
    );
    let metrics = scrape_metrics(&mesh.nodes[1].node)?;
    let mtls = metric_sum(
        &metrics,
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            (
                "source_principal",
                "spiffe://cluster.local/ns/shop/sa/client",
            ),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    ensure!(
        mtls >= 1.0,
        "echo's ztunnel saw no mTLS connection from client:\n{metrics}"
    );
    eprintln!("ADD answered in {took:?}; the first connection was captured");

    // Without the plugin, a starting pod waits for kubelet's address to be captured.
    let late = starting(&mut cluster, "shop", "late")?;
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        !enrolled(&node)?.contains(&"shop/late".to_owned()),
        "a starting pod with no address was captured without the plugin"
    );
    cluster.pod_started(&late.name)?;
    eventually(Duration::from_secs(10), "late is captured", || {
        Ok(enrolled(&node)?.contains(&"shop/late".to_owned()))
    })?;

    // A pod outside the mesh starts as it is.
    let plain = starting(&mut cluster, "plain", "web")?;
    let add = runtime.run("ADD", &plain)?;
    ensure!(add.succeeded(), "{add:?}");
    ensure!(!enrolled(&node)?.contains(&"plain/web".to_owned()));

    // A pod of the mesh the agent never hears of does not start uncaptured: refused
    // after --cni-wait, naming it, and the runtime will try again.
    // (Never written to the folder: written and then removed, the agent
    // could read it in between and capture the pod.)
    let ghost = cluster
        .add_unlisted_pod(PodSpec {
            name: "ghost".into(),
            namespace: "shop".into(),
            node: 0,
            labels: labels(&[("app", "ghost")]),
            service_account: Some("ghost".into()),
        })?
        .clone();
    let refused = runtime.run("ADD", &ghost)?;
    ensure!(
        refused.code == Some(1),
        "ghost was not refused: {refused:?}"
    );
    ensure!(refused.stdout["code"] == 100, "{}", refused.stdout);
    let details = refused.stdout["details"].as_str().unwrap_or_default();
    ensure!(
        details.contains("shop/ghost") && details.contains("not seen"),
        "{}",
        refused.stdout
    );

    // DEL is taken (and never fails).
    let del = runtime.run("DEL", &client)?;
    ensure!(del.succeeded(), "DEL: {del:?}");

    // The agent down (restarting, upgrading): pods outside the mesh start, pods of
    // the mesh wait for it (the runtime tries again), by the namespaces it left.
    mesh.nodes[0].agent.stop()?;
    let outside = runtime.run("ADD", &plain)?;
    ensure!(
        outside.succeeded(),
        "a pod outside the mesh waits for the agent: {outside:?}"
    );
    let waiting = runtime.run("ADD", &late)?;
    ensure!(
        waiting.code == Some(1) && waiting.stdout["code"] == 11,
        "a pod of the mesh started without the agent: {waiting:?}"
    );
    // The agent back: a new pod is captured before it starts.
    mesh.restart_agent(&cluster, 0)?;
    let after = starting(&mut cluster, "shop", "after")?;
    let add = runtime.run("ADD", &after)?;
    ensure!(add.succeeded(), "{add:?}");
    ensure!(
        enrolled(&node)?.contains(&"shop/after".to_owned()),
        "{:?}",
        enrolled(&node)?
    );
    Ok(())
}
