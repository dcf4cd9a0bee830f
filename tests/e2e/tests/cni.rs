//! The CNI plugin entry point: the container runtime runs `warren-cni` as it builds
//! a pod's sandbox, before the pod's containers start, and the agent captures the pod
//! then — so a pod is in the mesh from its first connection, before kubelet has
//! even published its address.
//!
//! The tests play the runtime: the testbed builds the sandbox (namespace, veth,
//! cgroup, sandbox process) as a network plugin would, and the test runs the plugin
//! the agent installed, with the CNI environment and the network plugin's result.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use serde_json::{Value, json};
use warren_e2e::{
    agent::datapath,
    mesh::{MeshOptions, metric_sum, scrape_metrics, start_mesh_with},
    workload::{pingpong, start_echo},
};
use warren_testbed::{Cluster, Node, Pod, PodSpec, labels, privilege::require_root};

const ECHO_PORT: u16 = 7000;

/// What the runtime gets back from one plugin run.
struct Ran {
    code: Option<i32>,
    stdout: Value,
    stderr: String,
}

/// The network plugin's result for `pod`: what the runtime hands the next plugin.
fn previous_result(pod: &Pod) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            { "name": pod.host_veth },
            { "name": "eth0", "sandbox": pod.sandbox.netns },
        ],
        "ips": [
            { "address": format!("{}/24", pod.ip), "interface": 1 },
            { "address": format!("{}/64", pod.ip6), "interface": 1 },
        ],
    })
}

/// Runs `plugin` as a runtime does, for `pod`, with the entry the agent installed.
fn run_plugin(plugin: &Path, entry: &Value, command: &str, pod: &Pod) -> Result<Ran> {
    let mut conf = entry.clone();
    conf["cniVersion"] = "1.0.0".into();
    conf["name"] = "testbed".into();
    conf["prevResult"] = previous_result(pod);
    let args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID=sandbox-{};K8S_POD_UID={}",
        pod.namespace, pod.name, pod.name, pod.uid
    );
    let mut child = Command::new(plugin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", format!("sandbox-{}", pod.name))
        .env("CNI_NETNS", &pod.sandbox.netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", args)
        .env("CNI_PATH", plugin.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", plugin.display()))?;
    child
        .stdin
        .take()
        .context("the plugin's stdin")?
        .write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let stdout = if out.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("stdout: {}", String::from_utf8_lossy(&out.stdout)))?
    };
    Ok(Ran {
        code: out.status.code(),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn enrolled(node: &Node) -> Result<Vec<String>> {
    Ok(datapath(node)?.pods()?.into_iter().map(|p| p.pod).collect())
}

/// The plugin's entry in the network configuration the agent wrote into.
fn installed_entry(conf: &Path) -> Result<Value> {
    let list: Value = serde_json::from_slice(&std::fs::read(conf)?)?;
    list["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["type"] == "warren-cni")
        .cloned()
        .with_context(|| format!("no warren-cni entry in {list}"))
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

    // The runtime's folders on node 0 (each agent is given its node's), with a
    // network plugin's configuration.
    let host: PathBuf = cluster.node_dir(&node)?.join("host");
    let (conf_dir, bin_dir) = (host.join("etc/cni/net.d"), host.join("opt/cni/bin"));
    std::fs::create_dir_all(&conf_dir)?;
    let conflist = conf_dir.join("10-testbed.conflist");
    std::fs::write(
        &conflist,
        r#"{"cniVersion":"1.0.0","name":"testbed","plugins":[{"type":"bridge","bridge":"cni0"}]}"#,
    )?;
    let socket = cluster.node_dir(&node)?.join("cni.sock");
    let mut mesh = start_mesh_with(
        &cluster,
        &MeshOptions {
            agent_args: vec![
                "--cni-socket".into(),
                "{node_dir}/cni.sock".into(),
                "--cni-conf-dir".into(),
                "{node_dir}/host/etc/cni/net.d".into(),
                "--cni-bin-dir".into(),
                "{node_dir}/host/opt/cni/bin".into(),
                "--cni-wait".into(),
                "2s".into(),
            ],
            ..MeshOptions::default()
        },
    )?;
    mesh.wait_ready(Duration::from_secs(30))?;
    let _server = start_echo(&cluster, &echo, ECHO_PORT)?;

    // The agent put the plugin in the runtime's folder and chained it after the
    // network plugin, naming its socket.
    let plugin = bin_dir.join("warren-cni");
    ensure!(plugin.is_file(), "no plugin in {}", bin_dir.display());
    let entry = installed_entry(&conflist)?;
    ensure!(
        entry["agentSocket"] == socket.to_string_lossy().as_ref(),
        "{entry}"
    );
    let list: Value = serde_json::from_slice(&std::fs::read(&conflist)?)?;
    ensure!(list["plugins"][0]["type"] == "bridge", "{list}");

    // A pod of the mesh, caught while its sandbox is built: no address in its status.
    let client = cluster
        .add_starting_pod(PodSpec {
            name: "client".into(),
            namespace: "shop".into(),
            node: 0,
            labels: labels(&[("app", "client")]),
            // New to the node: its certificate is issued as the pod starts.
            service_account: Some("client".into()),
        })?
        .clone();
    let manifest = std::fs::read_to_string(cluster.config_dir().join("pod.shop.client.yaml"))?;
    ensure!(!manifest.contains("podIP"), "{manifest}");
    let started = Instant::now();
    let add = run_plugin(&plugin, &entry, "ADD", &client)?;
    ensure!(
        add.code == Some(0),
        "ADD failed ({:?}): {}\n{}\n{}",
        add.code,
        add.stdout,
        add.stderr,
        mesh.logs()
    );
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
    let late = cluster
        .add_starting_pod(PodSpec {
            name: "late".into(),
            namespace: "shop".into(),
            node: 0,
            labels: labels(&[]),
            service_account: None,
        })?
        .clone();
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        !enrolled(&node)?.contains(&"shop/late".to_owned()),
        "a starting pod with no address was captured without the plugin"
    );
    cluster.pod_started(&late.name)?;
    warren_e2e::mesh::eventually(Duration::from_secs(10), "late is captured", || {
        Ok(enrolled(&node)?.contains(&"shop/late".to_owned()))
    })?;

    // A pod outside the mesh starts as it is.
    let plain = cluster
        .add_starting_pod(PodSpec {
            name: "web".into(),
            namespace: "plain".into(),
            node: 0,
            labels: labels(&[]),
            service_account: None,
        })?
        .clone();
    let add = run_plugin(&plugin, &entry, "ADD", &plain)?;
    ensure!(add.code == Some(0), "{}: {}", add.stdout, add.stderr);
    ensure!(!enrolled(&node)?.contains(&"plain/web".to_owned()));

    // A pod of the mesh the agent never hears of does not start uncaptured: refused
    // after --cni-wait, naming it, and the runtime will try again.
    let ghost = cluster
        .add_starting_pod(PodSpec {
            name: "ghost".into(),
            namespace: "shop".into(),
            node: 0,
            labels: labels(&[]),
            service_account: None,
        })?
        .clone();
    std::fs::remove_file(cluster.config_dir().join("pod.shop.ghost.yaml"))?;
    let refused = run_plugin(&plugin, &entry, "ADD", &ghost)?;
    ensure!(
        refused.code == Some(1),
        "ghost was not refused: {}",
        refused.stdout
    );
    ensure!(refused.stdout["code"] == 100, "{}", refused.stdout);
    let details = refused.stdout["details"].as_str().unwrap_or_default();
    ensure!(
        details.contains("shop/ghost") && details.contains("not seen"),
        "{}",
        refused.stdout
    );

    // DEL is taken (and never fails).
    let del = run_plugin(&plugin, &entry, "DEL", &client)?;
    ensure!(del.code == Some(0), "DEL: {} {}", del.stdout, del.stderr);

    // The agent down (restarting, upgrading): pods outside the mesh start, pods of
    // the mesh wait for it (the runtime tries again), by the namespaces it left.
    mesh.nodes[0].agent.stop()?;
    let outside = run_plugin(&plugin, &entry, "ADD", &plain)?;
    ensure!(
        outside.code == Some(0),
        "a pod outside the mesh waits for the agent: {} {}",
        outside.stdout,
        outside.stderr
    );
    let waiting = run_plugin(&plugin, &entry, "ADD", &late)?;
    ensure!(
        waiting.code == Some(1) && waiting.stdout["code"] == 11,
        "a pod of the mesh started without the agent: {}",
        waiting.stdout
    );
    // The agent back: the pod is admitted again.
    mesh.restart_agent(&cluster, 0)?;
    let again = run_plugin(&plugin, &entry, "ADD", &late)?;
    ensure!(again.code == Some(0), "{} {}", again.stdout, again.stderr);
    Ok(())
}
