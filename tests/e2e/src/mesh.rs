//! A whole mesh on a testbed cluster: the CA (in the first node's
//! namespace, reached over the fabric), and on every node a node agent
//! reading the cluster's config folder and a ztunnel subscribed to it.
//! What a DaemonSet and a CA Deployment would run on a real cluster.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use warren_testbed::{Cluster, Node, Pod, PodSpec, Process, binaries};

use warren_node_agent::{
    enrollment::DATAPLANE_LABELS,
    model::gateway::{DEFAULT_WAYPOINT_NAME, GATEWAY_NAME_LABEL, Gateway},
};

use crate::agent::{agent_socket, start_agent_with};

/// Where the CA listens, on the first node's fabric address.
pub const CA_PORT: u16 = 15012;
/// ztunnel's Prometheus port.
pub const METRICS_PORT: u16 = 15020;

pub struct NodeDaemons {
    pub node: Node,
    pub agent: Process,
    pub ztunnel: Process,
    /// The agent's extra arguments, to restart it the same way.
    agent_args: Vec<String>,
    /// ztunnel's extra arguments, to start its successor the same way.
    ztunnel_args: Vec<String>,
}

pub struct Mesh {
    pub ca: Process,
    pub ca_dir: PathBuf,
    pub nodes: Vec<NodeDaemons>,
}

/// Options for [`start_mesh_with`].
#[derive(Clone, Debug)]
pub struct MeshOptions {
    /// Lifetime of workload certificates (short to exercise renewal).
    pub cert_ttl: String,
    /// Extra arguments for every ztunnel.
    pub ztunnel_args: Vec<String>,
    /// Extra arguments for every node agent; `{node_dir}` in one stands for the
    /// node's own folder (for what must differ between nodes, such as sockets).
    pub agent_args: Vec<String>,
    /// Agents run their node's waypoints (the agent's default in local
    /// mode). Most tests start waypoints themselves, so by default the
    /// agents leave waypoint pods alone.
    pub run_waypoints: bool,
}

impl Default for MeshOptions {
    fn default() -> Self {
        Self {
            cert_ttl: "1h".into(),
            ztunnel_args: Vec::new(),
            agent_args: Vec::new(),
            run_waypoints: false,
        }
    }
}

pub fn start_mesh(cluster: &Cluster) -> Result<Mesh> {
    start_mesh_with(cluster, &MeshOptions::default())
}

/// [`start_mesh`] with every agent running its node's waypoints.
pub fn start_mesh_with_waypoints(cluster: &Cluster) -> Result<Mesh> {
    start_mesh_with(
        cluster,
        &MeshOptions {
            run_waypoints: true,
            ..MeshOptions::default()
        },
    )
}

pub fn start_mesh_with(cluster: &Cluster, options: &MeshOptions) -> Result<Mesh> {
    let agent_bin = binaries::path("warren-node-agent")?;
    let agent_bin = agent_bin.to_string_lossy().into_owned();
    let first = cluster.node(0)?;
    let ca_dir = cluster.node_dir(first)?.join("ca");
    let ca_state = ca_dir.to_string_lossy().into_owned();
    let listen = SocketAddr::new(first.ip.into(), CA_PORT).to_string();
    let config = cluster.config_dir().to_string_lossy().into_owned();
    let mut ca = cluster.spawn(
        &first.sandbox,
        &agent_bin,
        &[
            "ca",
            "--state-dir",
            &ca_state,
            "--listen",
            &listen,
            "--san",
            &first.ip.to_string(),
            "--config-dir",
            &config,
            "--max-ttl",
            "24h",
        ],
    )?;
    ca.wait_for_output("ca ready", Duration::from_secs(20))?;
    let root = ca_dir.join("root-cert.pem");

    let mut nodes = Vec::new();
    for node in cluster.nodes() {
        let dir = cluster.node_dir(node)?;
        let token_file = dir.join("ca-token");
        let out = Command::new(&agent_bin)
            .args([
                "ca",
                "issue-token",
                "--state-dir",
                &ca_state,
                "--node",
                &node.name,
            ])
            .output()
            .context("running warren-node-agent ca issue-token")?;
        ensure!(
            out.status.success(),
            "issue-token for {}: {}",
            node.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        std::fs::write(&token_file, token).context("writing the token file")?;
        let agent_args: Vec<String> = [
            "--config-dir",
            &config,
            "--rescan-every",
            "1",
            "--ca-addr",
            &listen,
            "--ca-root-file",
            &root.to_string_lossy(),
            "--ca-token-file",
            &token_file.to_string_lossy(),
            "--cert-ttl",
            &options.cert_ttl,
            &format!("--run-waypoints={}", options.run_waypoints),
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(
            options
                .agent_args
                .iter()
                .map(|a| a.replace("{node_dir}", &dir.to_string_lossy())),
        )
        .collect();
        let args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
        let agent = start_agent_with(cluster, node, &args)?;
        let ztunnel = start_ztunnel_with(cluster, node, &options.ztunnel_args)?;
        nodes.push(NodeDaemons {
            node: node.clone(),
            agent,
            ztunnel,
            agent_args,
            ztunnel_args: options.ztunnel_args.clone(),
        });
    }
    Ok(Mesh { ca, ca_dir, nodes })
}

/// Starts `warren-ztunnel` in the node's namespace, subscribed to its agent.
pub fn start_ztunnel(cluster: &Cluster, node: &Node) -> Result<Process> {
    start_ztunnel_with(cluster, node, &[])
}

/// [`start_ztunnel`] with extra arguments.
pub fn start_ztunnel_with(cluster: &Cluster, node: &Node, extra: &[String]) -> Result<Process> {
    let bin = binaries::path("warren-ztunnel")?;
    let socket = agent_socket(cluster, node)?.to_string_lossy().into_owned();
    let client_id = format!("ztunnel-{}", node.name);
    let mut args = vec![
        "--agent-socket",
        &socket,
        "--node-name",
        &node.name,
        "--client-id",
        &client_id,
    ];
    // The agents capture both families (`--ztunnel6`): take both.
    if !extra.iter().any(|a| a.starts_with("--outbound-addr")) {
        args.extend(["--outbound-addr", "0.0.0.0:15001,[::]:15001"]);
    }
    args.extend(extra.iter().map(String::as_str));
    cluster.spawn(&node.sandbox, &bin.to_string_lossy(), &args)
}

impl Mesh {
    /// Waits until every ztunnel is ready (config and certificates in).
    pub fn wait_ready(&mut self, within: Duration) -> Result<()> {
        for daemons in &mut self.nodes {
            daemons
                .ztunnel
                .wait_for_output("ztunnel ready", within)
                .with_context(|| format!("ztunnel on {}", daemons.node.name))?;
        }
        Ok(())
    }

    /// Stops node `i`'s agent (unless it is already stopped) and starts a
    /// new one the same way.
    pub fn restart_agent(&mut self, cluster: &Cluster, i: usize) -> Result<()> {
        let daemons = self.nodes.get_mut(i).context("no such node")?;
        if daemons.agent.check_running().is_ok() {
            daemons.agent.stop()?;
        }
        let args: Vec<&str> = daemons.agent_args.iter().map(String::as_str).collect();
        daemons.agent = start_agent_with(cluster, &daemons.node, &args)?;
        Ok(())
    }

    /// Upgrades node `i`'s ztunnel the way an operator does: starts a new one
    /// beside it, which takes over once ready and asks the old one to drain.
    /// Returns the old process, draining (it exits by itself).
    pub fn hand_over_ztunnel(&mut self, cluster: &Cluster, i: usize) -> Result<Process> {
        let daemons = self.nodes.get_mut(i).context("no such node")?;
        let mut successor = start_ztunnel_with(cluster, &daemons.node, &daemons.ztunnel_args)?;
        successor
            .wait_for_output("took over", Duration::from_secs(30))
            .with_context(|| format!("the new ztunnel on {}", daemons.node.name))?;
        Ok(std::mem::replace(&mut daemons.ztunnel, successor))
    }

    /// [`Mesh::hand_over_ztunnel`] on the nodes `order` names, one after
    /// the other, `pause` after each; the old processes with their nodes'
    /// names.
    pub fn hand_over_ztunnels(
        &mut self,
        cluster: &Cluster,
        order: &[usize],
        pause: Duration,
    ) -> Result<Vec<(String, Process)>> {
        let mut old = Vec::new();
        for &i in order {
            let previous = self.hand_over_ztunnel(cluster, i)?;
            let node = self.nodes.get(i).context("no such node")?.node.name.clone();
            old.push((node, previous));
            std::thread::sleep(pause);
        }
        Ok(old)
    }

    pub fn node(&self, name: &str) -> Result<&NodeDaemons> {
        self.nodes
            .iter()
            .find(|d| d.node.name == name)
            .with_context(|| format!("no node {name} in the mesh"))
    }

    /// Leaves every process running (for `--keep`).
    pub fn detach(self) {
        self.ca.detach();
        for d in self.nodes {
            d.agent.detach();
            d.ztunnel.detach();
        }
    }

    /// Every process's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = format!("--- ca\n{}", self.ca.output());
        for d in &self.nodes {
            out.push_str(&format!(
                "\n--- agent {}\n{}\n--- ztunnel {}\n{}",
                d.node.name,
                d.agent.output(),
                d.node.name,
                d.ztunnel.output()
            ));
        }
        out
    }
}

/// ztunnel's metrics on `node`, scraped from inside the node's namespace.
pub fn scrape_metrics(node: &Node) -> Result<String> {
    let url = format!("http://{}:{METRICS_PORT}/metrics", node.ip);
    let out = node
        .sandbox
        .exec("curl", ["-sS", "--max-time", "5", &url])
        .context("scraping ztunnel metrics")?;
    ensure!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sum of a metric's samples whose labels include every `name="value"`.
pub fn metric_sum(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `check` until it holds or `within` passes.
pub fn eventually(
    within: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pod `waypoint` of `namespace` on node `node`: labelled with the
/// waypoint Gateway's name (so an agent running waypoints, or
/// [`start_waypoint`], runs it there) and left out of the capture, with
/// service account `waypoint`.
pub fn waypoint_pod(namespace: &str, node: usize) -> PodSpec {
    PodSpec {
        name: DEFAULT_WAYPOINT_NAME.into(),
        namespace: namespace.into(),
        node,
        labels: [
            (
                GATEWAY_NAME_LABEL.to_owned(),
                DEFAULT_WAYPOINT_NAME.to_owned(),
            ),
            (DATAPLANE_LABELS[0].to_owned(), "none".to_owned()),
        ]
        .into(),
        service_account: Some(DEFAULT_WAYPOINT_NAME.into()),
    }
}

/// A pod of the tests' `demo` namespace: name, node, labels, service
/// account.
pub type DemoPod<'a> = (&'a str, usize, &'a [(&'a str, &'a str)], &'a str);

/// Service `demo/app`, port 80 (`http`) to 8080 of the pods labelled
/// `app: app`: the HTTP app most waypoint tests send through the waypoint.
pub fn add_app_service(cluster: &mut Cluster) -> Result<()> {
    cluster.add_service(
        "demo",
        "app",
        warren_testbed::labels(&[("app", "app")]),
        vec![warren_testbed::ServicePort {
            name: "http".into(),
            port: 80,
            target_port: 8080,
        }],
    )?;
    Ok(())
}

/// Two nodes, namespace `demo` in the mesh with `pods`, and a waypoint pod
/// on node 1: where most waypoint tests start.
pub fn demo_cluster_with_waypoint_pod(pods: &[DemoPod<'_>]) -> Result<Cluster> {
    let mut cluster = Cluster::builder().nodes(2).pods_per_node(0).up()?;
    cluster.add_namespace(
        "demo",
        warren_testbed::labels(&[("warren.io/dataplane-mode", "ambient")]),
    )?;
    for &(name, node, pod_labels, account) in pods {
        cluster.add_pod(PodSpec {
            name: name.into(),
            namespace: "demo".into(),
            node,
            labels: warren_testbed::labels(pod_labels),
            service_account: Some(account.into()),
        })?;
    }
    cluster.add_pod(waypoint_pod("demo", 1))?;
    Ok(cluster)
}

/// The Gateway that asks for a namespace's waypoint, exactly as `warrenctl
/// waypoint apply` writes it (both use the model's one definition).
pub fn waypoint_gateway(namespace: &str) -> String {
    // Serialising a struct of strings and numbers to YAML cannot fail.
    Gateway::waypoint_yaml(namespace, DEFAULT_WAYPOINT_NAME)
        .expect("a waypoint Gateway encodes as YAML")
}

/// Service `app` of `namespace` split into subsets `v1` and `v2` by the pods'
/// `version` label, and every request routed to `v2`: what only a waypoint
/// applies (ztunnel balances over both), so answers tell whether one did.
pub fn all_to_v2(namespace: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
         metadata: {{ name: app, namespace: {namespace} }}\n\
         spec:\n  host: app\n  subsets:\n  \
         - {{ name: v1, labels: {{ version: v1 }} }}\n  \
         - {{ name: v2, labels: {{ version: v2 }} }}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n\
         metadata: {{ name: app, namespace: {namespace} }}\n\
         spec:\n  hosts: [app]\n  http:\n  \
         - route: [{{ destination: {{ host: app, subset: v2 }} }}]\n"
    )
}

/// Every object, at any depth, of the waypoint's `/clusters` (its admin
/// port, from inside its pod's `waypoint` sandbox) that `keep` takes.
pub fn clusters_objects(
    waypoint: &warren_testbed::Sandbox,
    keep: impl Fn(&serde_json::Map<String, serde_json::Value>) -> bool,
) -> Result<Vec<serde_json::Value>> {
    use serde_json::Value;
    let out = waypoint.exec(
        "curl",
        ["-sS", "--max-time", "5", "http://127.0.0.1:15000/clusters"],
    )?;
    let dump: Value = serde_json::from_slice(&out.stdout).context("/clusters is JSON")?;
    let mut found = Vec::new();
    let mut pending = vec![&dump];
    while let Some(value) = pending.pop() {
        match value {
            Value::Object(map) => {
                if keep(map) {
                    found.push(value.clone());
                }
                pending.extend(map.values());
            }
            Value::Array(items) => pending.extend(items),
            _ => {}
        }
    }
    Ok(found)
}

/// A waypoint's Prometheus metrics, scraped from inside its pod.
pub fn waypoint_metrics(pod: &warren_testbed::Pod) -> Result<String> {
    let out = pod.sandbox.exec(
        "curl",
        ["-sS", "--max-time", "5", "http://127.0.0.1:15020/metrics"],
    )?;
    ensure!(
        out.status.success(),
        "scraping {}'s metrics: {}",
        pod.name,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts the mesh on `cluster`, and once it is ready the waypoint of
/// `namespace` in its pod `waypoint` (see [`waypoint_pod`]): its Gateway
/// written, the process started and configured.
pub fn start_mesh_and_waypoint(cluster: &Cluster, namespace: &str) -> Result<(Mesh, Process)> {
    let mut mesh = start_mesh(cluster)?;
    mesh.wait_ready(Duration::from_secs(30))
        .with_context(|| mesh.logs())?;
    std::fs::write(
        cluster
            .config_dir()
            .join(format!("gateway.{namespace}.waypoint.yaml")),
        waypoint_gateway(namespace),
    )?;
    let pod = cluster.pod("waypoint")?.clone();
    let waypoint = start_waypoint(cluster, &pod, namespace).with_context(|| mesh.logs())?;
    Ok((mesh, waypoint))
}

/// The cluster IP of Service `name`.
pub fn service_vip(cluster: &Cluster, name: &str) -> Result<std::net::Ipv4Addr> {
    cluster
        .services()
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.cluster_ip)
        .with_context(|| format!("no service {name}"))
}

/// Starts `warren-waypoint` for `namespace` in `pod` (a pod labelled as the
/// Gateway's, outside the capture), subscribed to its node's agent, and waits
/// until it has its config and certificate.
pub fn start_waypoint(
    cluster: &Cluster,
    pod: &warren_testbed::Pod,
    namespace: &str,
) -> Result<Process> {
    start_waypoint_with(cluster, pod, namespace, &[])
}

/// [`start_waypoint`] with `extra` flags.
pub fn start_waypoint_with(
    cluster: &Cluster,
    pod: &warren_testbed::Pod,
    namespace: &str,
    extra: &[&str],
) -> Result<Process> {
    let bin = binaries::path("warren-waypoint")?;
    let node = cluster
        .nodes()
        .iter()
        .find(|n| n.name == pod.node)
        .with_context(|| format!("node {} of pod {}", pod.node, pod.name))?;
    let socket = agent_socket(cluster, node)?.to_string_lossy().into_owned();
    let mut process = cluster.spawn(
        &pod.sandbox,
        &bin.to_string_lossy(),
        &[
            "--namespace",
            namespace,
            "--gateway",
            pod.labels
                .get("gateway.networking.k8s.io/gateway-name")
                .map_or("waypoint", String::as_str),
            "--service-account",
            &pod.service_account,
            "--agent-socket",
            &socket,
            "--client-id",
            &format!("waypoint-{namespace}"),
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .collect::<Vec<_>>(),
    )?;
    process.wait_for_output("waypoint ready", Duration::from_secs(30))?;
    Ok(process)
}

/// demo's `app` (on node 1, behind Service `app` port 80) and `client` (on
/// node 0), the mesh and demo's waypoint running.
pub struct AppBehindWaypoint {
    // Held for the others' lifetime; dropped last.
    pub cluster: Cluster,
    pub mesh: Mesh,
    pub waypoint: Process,
    pub server: Process,
    pub config: std::path::PathBuf,
    pub client: Pod,
    pub waypoint_pod: Pod,
    /// `http://<app's VIP>`.
    pub base: String,
}

pub fn app_behind_waypoint() -> Result<AppBehindWaypoint> {
    let mut cluster = demo_cluster_with_waypoint_pod(&[
        ("app", 1, &[("app", "app")], "app"),
        ("client", 0, &[("app", "client")], "client"),
    ])?;
    add_app_service(&mut cluster)?;
    let (mesh, waypoint) = start_mesh_and_waypoint(&cluster, "demo")?;
    let app = cluster.pod("app")?.clone();
    let server = crate::workload::start_http_server(&cluster, &app, 8080, &["--name", "app"])?;
    Ok(AppBehindWaypoint {
        config: cluster.config_dir().to_path_buf(),
        client: cluster.pod("client")?.clone(),
        waypoint_pod: cluster.pod("waypoint")?.clone(),
        base: format!("http://{}", service_vip(&cluster, "app")?),
        mesh,
        waypoint,
        server,
        cluster,
    })
}
