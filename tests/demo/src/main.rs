//! `warren-demo`: a two-node mesh on network namespaces, shown step by step
//! with real traffic. Run it with `cargo xtask demo`, which installs and
//! builds what it needs first.
//!
//! The application: `front` calls `app` (v1 on the other node, v2 on its
//! own node); `cart` is another caller in the mesh; `outside/curl` is a
//! client outside it. The mesh: the CA, and per node a node agent (eBPF
//! datapath, config, certificates) and a ztunnel.

mod steps;

use std::{
    collections::BTreeMap,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser;
use serde_json::Value;
use warren_e2e::{
    agent::{Counter, agent_socket, datapath, warrenctl},
    mesh::{Mesh, eventually, metric_sum, scrape_metrics, start_mesh},
    workload::{count_status, load, start_http_server},
};
use warren_testbed::{Cluster, Node, Pod, PodSpec, Process};

use crate::steps::{Steps, show_yaml};

#[derive(Parser)]
#[command(
    name = "warren-demo",
    about = "Warren on a two-node mesh of network namespaces",
    version
)]
struct Cli {
    /// Leave the cluster running at the end and print how to explore it.
    #[arg(long)]
    keep: bool,
}

struct Demo {
    mesh: Option<Mesh>,
    cluster: Cluster,
    servers: Vec<Process>,
}

const SHOP: &str = "shop";

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut steps = Steps::new();
    let mut demo: Option<Demo> = None;

    let ok = steps.run(
        "Two-node cluster of network namespaces, app deployed",
        || {
            let d = deploy()?;
            let rows: Vec<String> = d
                .cluster
                .pods()
                .iter()
                .map(|p| format!("{}/{} on {} at {}", p.namespace, p.name, p.node, p.ip))
                .collect();
            demo = Some(d);
            Ok(format!("pods: {}", rows.join("; ")))
        },
    );
    let Some(mut demo) = demo.filter(|_| ok) else {
        steps.summary();
        return ExitCode::FAILURE;
    };

    steps.run(
        "Mesh up: CA, node agents (eBPF datapath pinned), ztunnels",
        || demo.mesh_up(),
    );
    steps.run("Namespace opts in: pods enrolled from config", || {
        demo.opt_in()
    });
    steps.run(
        "Capture: pods' connections reach ztunnel through the kernel",
        || demo.capture(),
    );
    steps.run(
        "mTLS between nodes: HBONE with SPIFFE identities from the CA",
        || demo.mtls(),
    );
    steps.run("STRICT: plaintext from outside the mesh is refused", || {
        demo.strict()
    });
    steps.run("L4 authorization: a DENY policy blocks one caller", || {
        demo.deny()
    });
    steps.run(
        "Socket shortcut: same-node hops skip the TCP/IP stack",
        || demo.shortcut(),
    );
    steps.run("Agent restart: capture continues, pins adopted", || {
        demo.restart()
    });
    steps.not_yet(
        "Waypoint: canary 80/20, header routing, faults, retries",
        "#8",
    );
    steps.not_yet("Swim lanes with x-lane-id", "#9");
    let ok = steps.summary();

    if cli.keep {
        let node = demo
            .cluster
            .node(0)
            .map(|n| n.name.clone())
            .unwrap_or_default();
        let socket = demo
            .cluster
            .node(0)
            .and_then(|n| agent_socket(&demo.cluster, n))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if let Some(mesh) = demo.mesh.take() {
            mesh.detach();
        }
        for s in demo.servers.drain(..) {
            s.detach();
        }
        match demo.cluster.detach() {
            Ok(id) => println!(
                "\nThe cluster {id} is still running. Explore it:\n  target/debug/warrenctl bpf pods --node {node}\n  target/debug/warrenctl config dump --socket {socket}\n  target/debug/warrenctl config status --socket {socket}\n  target/debug/warrenctl bpf map dump WARREN_COUNTERS --node {node}\n  cargo xtask cluster status\n  cargo xtask cluster exec shop/front -- target/debug/warren-sample load --url http://<app-v1 ip>:8080/ -n 5\nRemove it with: cargo xtask cluster down {id}"
            ),
            Err(err) => eprintln!("could not keep the cluster: {err:#}"),
        }
    } else {
        println!("\ncleaning up (use --keep to explore the cluster afterwards)");
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The cluster and the application: front, app v1 and v2, and a client
/// outside the mesh. Namespaces start without the opt-in label.
fn deploy() -> Result<Demo> {
    let mut cluster = Cluster::builder().nodes(2).up()?;
    cluster.add_namespace(SHOP, BTreeMap::new())?;
    cluster.add_namespace("outside", BTreeMap::new())?;
    let pods = [
        (
            "front",
            SHOP,
            0,
            labels(&[("app", "front"), ("version", "v1")]),
        ),
        (
            "app-v1",
            SHOP,
            1,
            labels(&[("app", "app"), ("version", "v1")]),
        ),
        (
            "app-v2",
            SHOP,
            0,
            labels(&[("app", "app"), ("version", "v2")]),
        ),
        ("cart", SHOP, 0, labels(&[("app", "cart")])),
        ("curl", "outside", 0, labels(&[("app", "curl")])),
    ];
    for (name, namespace, node, labels) in pods {
        cluster.add_pod(PodSpec {
            name: name.into(),
            namespace: namespace.into(),
            node,
            labels,
            service_account: Some(name.into()),
        })?;
    }
    let mut servers = Vec::new();
    for name in ["app-v1", "app-v2", "front"] {
        let pod = cluster.pod(&format!("{SHOP}/{name}"))?.clone();
        servers.push(start_http_server(&cluster, &pod, 8080, &[])?);
    }
    Ok(Demo {
        mesh: None,
        cluster,
        servers,
    })
}

impl Demo {
    fn pod(&self, name: &str) -> Result<&Pod> {
        self.cluster.pod(name)
    }

    fn node(&self, i: usize) -> Result<&Node> {
        self.cluster.node(i)
    }

    fn mesh_up(&mut self) -> Result<String> {
        let mut mesh = start_mesh(&self.cluster)?;
        mesh.wait_ready(Duration::from_secs(30))
            .with_context(|| mesh.logs())?;
        let mut evidence = Vec::new();
        for node in self.cluster.nodes() {
            let progs = warrenctl(node, &["bpf", "prog", "list"])?;
            let names: Vec<&str> = progs
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["name"].as_str())
                .collect();
            ensure!(
                names.len() == 6,
                "{}: {} programs, expected 6: {names:?}",
                node.name,
                names.len()
            );
            evidence.push(format!(
                "{}: {} eBPF programs, ztunnel ready",
                node.name,
                names.len()
            ));
        }
        self.mesh = Some(mesh);
        Ok(format!(
            "CA on {} | {}",
            self.node(0)?.ip,
            evidence.join(" | ")
        ))
    }

    fn mesh(&self) -> Result<&Mesh> {
        self.mesh.as_ref().context("the mesh is not up")
    }

    fn opt_in(&mut self) -> Result<String> {
        show_yaml(
            "namespace.shop.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    warren.io/dataplane-mode: ambient",
        );
        self.cluster
            .add_namespace(SHOP, labels(&[("warren.io/dataplane-mode", "ambient")]))?;
        let n0 =
            self.wait_enrolled(0, &["shop/app-v2", "shop/cart", "shop/front"], "PERMISSIVE")?;
        let n1 = self.wait_enrolled(1, &["shop/app-v1"], "PERMISSIVE")?;
        Ok(format!(
            "node 0 enrolled {n0}; node 1 enrolled {n1}; outside/curl not enrolled"
        ))
    }

    /// Waits until node `i`'s enrolled pods are exactly `pods`, all in `mode`.
    fn wait_enrolled(&self, i: usize, pods: &[&str], mode: &str) -> Result<String> {
        let node = self.node(i)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let rows = datapath(node)?.pods()?;
            let have: Vec<String> = rows
                .iter()
                .map(|r| format!("{} ({})", r.pod, r.mode))
                .collect();
            let mut names: Vec<&str> = rows.iter().map(|r| r.pod.as_str()).collect();
            names.sort_unstable();
            if names == pods && rows.iter().all(|r| r.mode == mode) {
                return Ok(have.join(", "));
            }
            if Instant::now() > deadline {
                bail!("node {i} has {have:?}, expected {pods:?} in {mode}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn capture(&mut self) -> Result<String> {
        let front = self.pod("shop/front")?.clone();
        let mut evidence = Vec::new();
        for target in ["shop/app-v1", "shop/app-v2"] {
            let app = self.pod(target)?.clone();
            let report = load(
                &front,
                &format!("http://{}:8080/", app.ip),
                &["-n", "20", "-c", "1"],
            )?;
            ensure!(
                count_status(&report, 200) == 20,
                "front → {target}: {report}\n{}",
                self.mesh()?.logs()
            );
        }
        // ztunnel on front's node reports both as the source side.
        let metrics = scrape_metrics(self.node(0)?)?;
        for (target, workload) in [
            ("app-v1 (other node)", "app-v1"),
            ("app-v2 (same node)", "app-v2"),
        ] {
            let n = metric_sum(
                &metrics,
                "istio_tcp_connections_opened_total",
                &[
                    ("reporter", "source"),
                    ("source_workload", "front"),
                    ("destination_workload", workload),
                ],
            );
            ensure!(
                n >= 1.0,
                "node 0's ztunnel saw no connection front → {workload}:\n{metrics}"
            );
            evidence.push(format!(
                "front → {target}: 20/20 OK, node 0's ztunnel opened {n}"
            ));
        }
        Ok(evidence.join(" | "))
    }

    fn mtls(&mut self) -> Result<String> {
        let metrics = scrape_metrics(self.node(1)?)?;
        let principal = "spiffe://cluster.local/ns/shop/sa/front";
        let n = metric_sum(
            &metrics,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("source_principal", principal),
                ("destination_workload", "app-v1"),
                ("connection_security_policy", "mutual_tls"),
            ],
        );
        ensure!(
            n >= 1.0,
            "node 1's ztunnel saw no mTLS connection from front:\n{metrics}"
        );
        let status = warrenctl_status(&self.cluster, self.node(1)?)?;
        Ok(format!(
            "app-v1's ztunnel (node 1) accepted {n} mutual_tls connection(s) from {principal}; agent → ztunnel: {status}"
        ))
    }

    fn deny(&mut self) -> Result<String> {
        let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny-cart\n  namespace: shop\nspec:\n  selector:\n    matchLabels:\n      app: app\n  action: DENY\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/shop/sa/cart\"]\n";
        show_yaml("authorizationpolicy.shop.deny-cart.yaml", yaml);
        std::fs::write(
            self.cluster
                .config_dir()
                .join("authorizationpolicy.shop.deny-cart.yaml"),
            yaml,
        )?;
        let app = self.pod("shop/app-v1")?.clone();
        let url = format!("http://{}:8080/", app.ip);
        let cart = self.pod("shop/cart")?.clone();
        eventually(Duration::from_secs(10), "cart refused", || {
            let r = load(&cart, &url, &["-n", "5", "-c", "1", "--timeout", "1s"])?;
            Ok(count_status(&r, 200) == 0)
        })?;
        let member = load(self.pod("shop/front")?, &url, &["-n", "5", "-c", "1"])?;
        ensure!(count_status(&member, 200) == 5, "front refused: {member}");
        let metrics = scrape_metrics(self.node(1)?)?;
        let denied = metric_sum(
            &metrics,
            "warren_ztunnel_refused_connections_total",
            &[("reason", "deny_policy")],
        );
        Ok(format!(
            "shop/cart → app-v1: 0/5; shop/front → app-v1: 5/5; node 1's ztunnel counted {denied} deny_policy refusals"
        ))
    }

    fn strict(&mut self) -> Result<String> {
        let yaml = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: shop\nspec:\n  mtls:\n    mode: STRICT\n";
        show_yaml("peerauthentication.shop.default.yaml", yaml);
        std::fs::write(
            self.cluster
                .config_dir()
                .join("peerauthentication.shop.default.yaml"),
            yaml,
        )?;
        self.wait_enrolled(0, &["shop/app-v2", "shop/cart", "shop/front"], "STRICT")?;
        let app = self.pod("shop/app-v2")?.clone();
        let url = format!("http://{}:8080/", app.ip);
        let outsider = load(
            self.pod("outside/curl")?,
            &url,
            &["-n", "3", "-c", "1", "--timeout", "1s"],
        )?;
        ensure!(
            count_status(&outsider, 200) == 0,
            "outside/curl got in: {outsider}"
        );
        let member = load(self.pod("shop/front")?, &url, &["-n", "3", "-c", "1"])?;
        ensure!(count_status(&member, 200) == 3, "front refused: {member}");
        let dropped = datapath(self.node(0)?)?
            .counters()?
            .get(Counter::GuardDropped);
        Ok(format!(
            "outside/curl → app-v2: 0/3 (guard dropped {dropped} SYNs); shop/front → app-v2 via the node: 3/3"
        ))
    }

    fn shortcut(&mut self) -> Result<String> {
        let counters = datapath(self.node(0)?)?.counters()?;
        let hits = counters.get(Counter::ShortcutHit);
        let inserted = counters.get(Counter::ShortcutInserted);
        ensure!(hits > 0, "no shortcut hits on node 0");
        Ok(format!(
            "node 0: {inserted} local sockets joined the shortcut map, {hits} sends handed socket to socket (warrenctl bpf map dump WARREN_COUNTERS)"
        ))
    }

    fn restart(&mut self) -> Result<String> {
        let node = self.node(0)?.clone();
        let before = warrenctl(&node, &["bpf", "prog", "list"])?;
        let front = self.pod("shop/front")?.clone();
        let app = self.pod("shop/app-v1")?.clone();
        let mesh = self.mesh.as_mut().context("the mesh is not up")?;
        mesh.nodes[0].agent.stop()?;
        let report = load(
            &front,
            &format!("http://{}:8080/", app.ip),
            &["-n", "5", "-c", "1"],
        )?;
        ensure!(
            count_status(&report, 200) == 5,
            "traffic failed with the agent down: {report}"
        );
        mesh.restart_agent(&self.cluster, 0)?;
        ensure!(
            mesh.nodes[0].agent.output().contains("Adopted"),
            "the new agent did not adopt the pins"
        );
        let after = warrenctl(&node, &["bpf", "prog", "list"])?;
        let ids = |v: &Value| -> Vec<u64> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["id"].as_u64())
                .collect()
        };
        ensure!(
            ids(&before) == ids(&after),
            "programs changed across the restart"
        );
        let status = warrenctl_status(&self.cluster, &node)?;
        Ok(format!(
            "agent stopped: 5/5 requests across nodes still OK; restarted: same programs, ztunnel resubscribed ({status})"
        ))
    }
}

/// `warrenctl config status` for the node, summed up: each client and its state.
fn warrenctl_status(cluster: &Cluster, node: &Node) -> Result<String> {
    let socket = agent_socket(cluster, node)?;
    let bin = warren_testbed::binaries::path("warrenctl")?;
    let mut last = String::new();
    for _ in 0..50 {
        let out = std::process::Command::new(&bin)
            .args(["config", "status", "--socket"])
            .arg(&socket)
            .output()?;
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        let rows: Vec<&str> = last.lines().filter(|l| l.starts_with("ztunnel-")).collect();
        if let Some(row) = rows.first()
            && row.contains("in sync")
        {
            return Ok(row.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("warrenctl config status shows no ztunnel in sync:\n{last}")
}
