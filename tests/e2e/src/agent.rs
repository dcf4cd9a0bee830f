//! Node agents on testbed nodes, and enrolling pods through the pins the
//! agent leaves (what the control plane will do from config).

use std::{
    net::{IpAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use warren_ebpf_common::program;
pub use warren_ebpf_common::{AddrKind, Counter, Mode, ZTUNNEL_MARK};
use warren_node_agent::datapath::{Datapath, PodEnrollment};
use warren_testbed::{Cluster, Node, Pod, Process, binaries};

/// ztunnel's outbound capture port.
pub const OUTBOUND_PORT: u16 = 15001;

/// Where node `node`'s pods are sent: its bridge address, port 15001.
pub fn outbound_addr(node: &Node) -> SocketAddrV4 {
    SocketAddrV4::new(node.gateway, OUTBOUND_PORT)
}

/// Starts `warren-node-agent run` in the node's namespace and cgroup, with
/// capture pointed at `outbound_addr(node)`, and waits until its datapath is
/// installed (or adopted).
pub fn start_agent(cluster: &Cluster, node: &Node) -> Result<Process> {
    start_agent_with(cluster, node, &[])
}

/// [`start_agent`], with the cluster's config folder as its configuration
/// source: enrollment then follows the Namespace and Pod objects.
pub fn start_agent_with_config(cluster: &Cluster, node: &Node) -> Result<Process> {
    let dir = cluster.config_dir().to_string_lossy().into_owned();
    start_agent_with(
        cluster,
        node,
        &["--config-dir", &dir, "--rescan-every", "1"],
    )
}

pub fn start_agent_with(cluster: &Cluster, node: &Node, extra: &[&str]) -> Result<Process> {
    let agent = binaries::path("warren-node-agent")?;
    let cgroup = node.cgroup.to_string_lossy().into_owned();
    let bpffs = node.bpffs.to_string_lossy().into_owned();
    let ztunnel = outbound_addr(node).to_string();
    let addrs = format!(
        "{},{},{},{}",
        node.gateway, node.ip, node.gateway6, node.ip6
    );
    let ztunnel6 = node.gateway6.to_string();
    let socket = agent_socket(cluster, node)?.to_string_lossy().into_owned();
    let args = [
        "run",
        "--socket",
        &socket,
        "--node",
        &node.name,
        "--cgroup",
        &cgroup,
        "--bpffs",
        &bpffs,
        "--ztunnel",
        &ztunnel,
        "--ztunnel6",
        &ztunnel6,
        "--node-addr",
        &addrs,
        "--report-every",
        "3600",
    ];
    let args: Vec<&str> = args.iter().chain(extra).copied().collect();
    let mut process = cluster.spawn(&node.sandbox, &agent.to_string_lossy(), &args)?;
    process.wait_for_output("node agent ready", Duration::from_secs(20))?;
    Ok(process)
}

/// Where node `node`'s agent serves its proxies.
pub fn agent_socket(cluster: &Cluster, node: &Node) -> Result<std::path::PathBuf> {
    Ok(cluster.node_dir(node)?.join("agent.sock"))
}

/// Starts `warren-sample transparent` on the node's outbound port, in
/// ztunnel's place until ztunnel exists: it asks the kernel where each
/// captured connection was going, prints it as one JSON line, and forwards
/// the bytes with ztunnel's socket mark. Waits until it listens.
pub fn start_proxy(cluster: &Cluster, node: &Node) -> Result<Process> {
    let sample = binaries::path("warren-sample")?;
    // [::] takes IPv4 (as v4-mapped) and IPv6 alike.
    let listen = format!("[::]:{OUTBOUND_PORT}");
    let mark = format!("{ZTUNNEL_MARK:#x}");
    let mut proxy = cluster.spawn(
        &node.sandbox,
        &sample.to_string_lossy(),
        &["transparent", "--listen", &listen, "--mark", &mark],
    )?;
    // Listening once `ss` inside the node's namespace shows the port.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        proxy.check_running()?;
        let out = node
            .sandbox
            .exec("ss", ["-Hltn", &format!("sport = :{OUTBOUND_PORT}")])?;
        if !out.stdout.is_empty() {
            return Ok(proxy);
        }
        if Instant::now() > deadline {
            bail!("proxy not listening after 10s:\n{}", proxy.output());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Enrolls `pod` in its node's datapath (through the pins, from the node's
/// namespace) and returns its netns cookie.
pub fn enroll(cluster: &Cluster, pod: &Pod, mode: Mode, excluded_ports: &[u16]) -> Result<u64> {
    let node = node_of(cluster, pod)?;
    let enrollment = PodEnrollment {
        name: format!("{}/{}", pod.namespace, pod.name),
        netns: pod.sandbox.netns.clone(),
        ip4: Some(pod.ip),
        host_veth: Some(pod.host_veth.clone()),
        mode,
        port_modes: Vec::new(),
        excluded_ports: excluded_ports.to_vec(),
    };
    let bpffs = node.bpffs.clone();
    node.sandbox
        .in_netns(move || {
            let mut datapath = Datapath::open(&bpffs)?;
            // The datapath tests' stand-in proxy has no plaintext inbound
            // listeners: connections from outside the mesh go straight in.
            datapath.set_inbound_capture(false);
            Ok(datapath.enroll(&enrollment)?)
        })
        .with_context(|| format!("enrolling {}", pod.name))
}

/// Stops capturing `pod`'s new connections.
pub fn unenroll(cluster: &Cluster, pod: &Pod, cookie: u64) -> Result<()> {
    let node = node_of(cluster, pod)?;
    let bpffs = node.bpffs.clone();
    node.sandbox
        .in_netns(move || Ok(Datapath::open(&bpffs)?.unenroll(cookie)?))
}

/// Records every pod of `node` as a local address (what the agent will do
/// from config): their sockets may use the shortcut.
pub fn register_local_pods(cluster: &Cluster, node: &Node) -> Result<()> {
    let mut datapath = Datapath::open(&node.bpffs)?;
    for pod in cluster.pods().iter().filter(|p| p.node == node.name) {
        datapath.add_local_addr(IpAddr::V4(pod.ip), AddrKind::Pod)?;
    }
    Ok(())
}

/// The node's datapath, opened from its pins.
pub fn datapath(node: &Node) -> Result<Datapath> {
    Ok(Datapath::open(&node.bpffs)?)
}

/// Names of the programs the node's pins hold, one per attachment.
pub fn attached_programs(node: &Node) -> Result<Vec<String>> {
    let pins = warren_node_agent::datapath::pins::Pins::new(&node.bpffs);
    let mut names: Vec<String> = warren_node_agent::datapath::inspect::programs(&pins)?
        .into_iter()
        .map(|r| r.name)
        .collect();
    names.sort();
    Ok(names)
}

/// Every program a complete installation holds, sorted.
pub fn expected_programs() -> Vec<String> {
    let mut names: Vec<String> = program::ALL.iter().map(|s| (*s).to_owned()).collect();
    names.sort();
    names
}

fn node_of<'a>(cluster: &'a Cluster, pod: &Pod) -> Result<&'a Node> {
    cluster
        .nodes()
        .iter()
        .find(|n| n.name == pod.node)
        .with_context(|| format!("pod {} is on unknown node {}", pod.name, pod.node))
}

/// Runs `warrenctl ARGS… -j --bpffs <node pins>` and parses its JSON.
pub fn warrenctl(node: &Node, args: &[&str]) -> Result<serde_json::Value> {
    let ctl = binaries::path("warrenctl")?;
    let out = std::process::Command::new(ctl)
        .args(args)
        .arg("-j")
        .arg("--bpffs")
        .arg(&node.bpffs)
        .output()?;
    if !out.status.success() {
        bail!(
            "warrenctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("warrenctl {args:?} printed no JSON"))
}

/// `warrenctl config dump --output json` of the node's agent: its view and refusals.
pub fn config_dump(cluster: &Cluster, node: &Node) -> Result<serde_json::Value> {
    config_dump_with(cluster, node, &[])
}

/// `warrenctl config dump` with `extra` arguments (`--waypoint NS`, `--all`).
pub fn config_dump_with(
    cluster: &Cluster,
    node: &Node,
    extra: &[&str],
) -> Result<serde_json::Value> {
    let socket = agent_socket(cluster, node)?;
    let socket = socket.to_string_lossy();
    let mut args = vec!["config", "dump", "--socket", &socket, "--output", "json"];
    args.extend_from_slice(extra);
    let text = warrenctl_text(&args)?;
    Ok(serde_json::from_str(&text)?)
}

/// `warrenctl explain FROM TO` on `node` (in its network namespace, where its
/// ztunnel's admin port listens): what it printed.
pub fn warrenctl_explain(node: &Node, from: &str, to: &str) -> Result<String> {
    let ctl = binaries::path("warrenctl")?;
    let out = node
        .sandbox
        .exec(&ctl.to_string_lossy(), ["explain", from, to])
        .context("running warrenctl explain")?;
    ensure!(
        out.status.success(),
        "warrenctl explain {from} {to} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `warrenctl waypoint explain` of `namespace`'s waypoint (its pods found in
/// `config_dir`) for a request from `from` (`namespace/pod`): `request` is
/// what follows (`-X`, `-H`, the URL). What it printed.
pub fn warrenctl_waypoint_explain(
    config_dir: &std::path::Path,
    namespace: &str,
    from: &str,
    request: &[&str],
) -> Result<String> {
    let config_dir = config_dir.to_string_lossy();
    let mut args = vec![
        "waypoint",
        "explain",
        "-n",
        namespace,
        "--config-dir",
        &config_dir,
        "--from",
        from,
    ];
    args.extend_from_slice(request);
    warrenctl_text(&args)
}

/// Runs `warrenctl ARGS…` and returns what it printed; fails with its
/// stderr if it exits non-zero.
pub fn warrenctl_text(args: &[&str]) -> Result<String> {
    let ctl = binaries::path("warrenctl")?;
    let out = std::process::Command::new(ctl)
        .args(args)
        .output()
        .context("running warrenctl")?;
    if !out.status.success() {
        bail!(
            "warrenctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
