//! `warren-demo`: a two-node mesh on network namespaces, shown step by step
//! with real traffic. Run it with `cargo xtask demo`, which installs and
//! builds what it needs first.
//!
//! The application (manifests in `examples/` at the repository root): `front`
//! calls `app` (v1 on the other node, v2 on its own node, plus a flaky v3, a
//! slow `reports` version and Alice's `dev-alice`); app v2 and dev-alice call
//! `data` (v1 only). `client` and `cart` are callers in the mesh (`cart` also
//! runs the external authorizer of the CUSTOM policy step);
//! `outside/curl` is a client outside it. The mesh: the CA, per node a node
//! agent (eBPF datapath, config, certificates) and a ztunnel, and later the
//! namespace's waypoint.

mod steps;

use std::{
    collections::BTreeMap,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser;
use serde::Deserialize as _;
use serde_json::Value;
use warren_e2e::{
    agent::{
        Counter, agent_socket, datapath, warrenctl, warrenctl_explain, warrenctl_text,
        warrenctl_waypoint_explain,
    },
    cni::{self, Runtime},
    dns::{Send, resolve},
    mesh::{Mesh, MeshOptions, eventually, metric_sum, scrape_metrics, start_mesh_with},
    workload::{
        count_status, count_version, curl_status, finished_report, load, start_http_server,
    },
};
use warren_testbed::{
    Cluster, Node, Pod, PodSpec, Process, ServicePort, addressing::CLUSTER_DNS, labels, manifests,
    pki::Authority,
};

use crate::steps::{Steps, show_output, show_yaml};

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
    /// The waypoint's pod, once it has one (its node's agent runs it).
    waypoint: Option<Pod>,
    /// Node 0's container runtime, for the CNI plugin.
    runtime: Option<Runtime>,
}

const SHOP: &str = "shop";

/// The example application's manifests, from `examples/`.
mod examples {
    pub const NAMESPACE: &str = include_str!("../../../examples/namespace.yaml");
    pub const SERVICES: &str = include_str!("../../../examples/services.yaml");
    pub const WAYPOINT: &str = include_str!("../../../examples/waypoint.yaml");
    pub const DESTINATION_RULES: &str = include_str!("../../../examples/destination-rules.yaml");
    pub const CANARY: &str = include_str!("../../../examples/canary.yaml");
    pub const HEADER_ROUTING: &str = include_str!("../../../examples/header-routing.yaml");
    pub const FAULT_INJECTION: &str = include_str!("../../../examples/fault-injection.yaml");
    pub const RETRIES_TIMEOUTS: &str = include_str!("../../../examples/retries-timeouts.yaml");
    pub const SWIM_LANE: &str = include_str!("../../../examples/swim-lane.yaml");
    pub const HTTP_ROUTE: &str = include_str!("../../../examples/http-route.yaml");
    pub const LOCALITY: &str = include_str!("../../../examples/locality.yaml");
    pub const LOCALITY_FAILOVER: &str = include_str!("../../../examples/locality-failover.yaml");
    pub const EGRESS: &str = include_str!("../../../examples/egress.yaml");
    pub const BACKEND_TLS: &str = include_str!("../../../examples/backend-tls.yaml");
    pub const POD_WAYPOINT: &str = include_str!("../../../examples/pod-waypoint.yaml");
    pub const TELEMETRY: &str = include_str!("../../../examples/telemetry.yaml");
}

/// The file in the config folder that holds the current step's
/// VirtualServices: each step replaces the last one's.
const ROUTES_FILE: &str = "virtualservices.shop.yaml";

/// The pods of the example application: (name, node, app, version, extra
/// server flags). `{app}` and `{data}` in flags become the Services' URLs.
const APP_PODS: &[(&str, usize, &str, &str, &[&str])] = &[
    ("front", 0, "front", "v1", &["--upstream", "{app}"]),
    ("app-v1", 1, "app", "v1", &[]),
    ("app-v2", 0, "app", "v2", &["--upstream", "{data}"]),
    ("app-v3", 1, "app", "v3", &["--fail-rate", "0.5"]),
    ("app-reports", 1, "app", "reports", &["--latency", "3s"]),
    (
        "app-dev-alice",
        1,
        "app",
        "dev-alice",
        &["--upstream", "{data}"],
    ),
    ("data-v1", 1, "data", "v1", &[]),
];

/// The enrolled pods each node should report once `shop` opts in.
const ENROLLED: [&[&str]; 2] = [
    &["shop/app-v2", "shop/cart", "shop/client", "shop/front"],
    &[
        "shop/app-dev-alice",
        "shop/app-reports",
        "shop/app-v1",
        "shop/app-v3",
        "shop/data-v1",
    ],
];

/// The documents of a multi-document YAML file.
fn documents(yaml: &str) -> Result<Vec<serde_yaml::Value>> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| serde_yaml::Value::deserialize(doc).context("parsing an example"))
        .filter(|v| !matches!(v, Ok(serde_yaml::Value::Null)))
        .collect()
}

/// A string-to-string map of a YAML mapping (labels, selectors).
fn string_map(v: &serde_yaml::Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
        .collect()
}

/// One step of the tour: its evidence, or why it failed.
type Step = fn(&mut Demo) -> Result<String>;

/// Runs one step of the demo; when it fails, keeps every process's log.
fn step(steps: &mut Steps, demo: &mut Demo, title: &str, f: Step) {
    if !steps.run(title, || f(demo)) {
        match demo.keep_logs(steps.len()) {
            Ok(dir) => println!("   the processes' logs are kept in {}", dir.display()),
            Err(err) => eprintln!("   could not keep the logs: {err:#}"),
        }
    }
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

    // The tour, in order; a later step builds on what the earlier ones set up.
    let tour: [(&str, Step); 24] = [
        (
            "Mesh up: CA, node agents (eBPF datapath pinned), ztunnels",
            Demo::mesh_up,
        ),
        ("Namespace opts in: pods enrolled from config", Demo::opt_in),
        (
            "Capture: pods' connections reach ztunnel through the kernel",
            Demo::capture,
        ),
        (
            "mTLS between nodes: HBONE with SPIFFE identities from the CA",
            Demo::mtls,
        ),
        ("DNS: the mesh's names resolve through ztunnel", Demo::dns),
        (
            "STRICT: plaintext from outside the mesh is refused",
            Demo::strict,
        ),
        (
            "A new pod joins: captured by the CNI plugin before it starts",
            Demo::new_pod,
        ),
        (
            "L4 authorization: a DENY policy blocks one caller",
            Demo::deny,
        ),
        (
            "Socket shortcut (opt-in): same-node hops skip the TCP/IP stack",
            Demo::shortcut,
        ),
        (
            "Agent restart: capture continues, pins adopted",
            Demo::restart,
        ),
        (
            "Waypoint for the namespace; canary 80/20 over 1 000 requests",
            Demo::canary,
        ),
        (
            "Header routing: end-user: jason always reaches v2",
            Demo::header_routing,
        ),
        (
            "Fault injection: 50 % aborted, jason delayed 500 ms",
            Demo::faults,
        ),
        (
            "Retries hide a flaky version; a timeout answers 504 in time",
            Demo::retries_timeouts,
        ),
        (
            "Swim lane: x-lane-id: dev-alice takes dev-alice versions",
            Demo::swim_lane,
        ),
        (
            "Gateway API: an HTTPRoute in place of the VirtualService, 90/10",
            Demo::http_route,
        ),
        (
            "JWT: the waypoint verifies tokens; /admin takes a good one",
            Demo::jwt,
        ),
        (
            "CUSTOM policy: an external authorizer decides /orders",
            Demo::ext_authz,
        ),
        (
            "Telemetry: JSON access lines for failures only, counts by method, traces to Zipkin",
            Demo::telemetry,
        ),
        (
            "Zones: traffic stays in its zone, and fails over when it must",
            Demo::zones,
        ),
        (
            "Egress: an HTTPS API outside the cluster, TLS from the waypoint",
            Demo::egress,
        ),
        (
            "BackendTLSPolicy: TLS from the waypoint to an HTTPS-only pod",
            Demo::backend_tls,
        ),
        (
            "A pod reached by its own address passes its waypoint too",
            Demo::pod_waypoint,
        ),
        (
            "ztunnel upgrade under load: a new one takes over, no request lost",
            Demo::upgrade,
        ),
    ];
    for (title, f) in tour {
        step(&mut steps, &mut demo, title, f);
    }
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
        let app = demo.vip("app").map(|ip| ip.to_string()).unwrap_or_default();
        let front = demo
            .vip("front")
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        let config = demo.cluster.config_dir().display().to_string();
        if let Some(mesh) = demo.mesh.take() {
            mesh.detach();
        }
        for s in demo.servers.drain(..) {
            s.detach();
        }
        match demo.cluster.detach() {
            Ok(id) => println!(
                "\nThe cluster {id} is still running; its config folder is {config} (copy examples/*.yaml there to apply them). Explore it:\n  target/debug/warrenctl bpf pods --node {node}\n  target/debug/warrenctl config dump --socket {socket}\n  target/debug/warrenctl config status --socket {socket}\n  target/debug/warrenctl bpf map dump WARREN_COUNTERS --node {node}\n  cargo xtask cluster status\n  cargo xtask cluster exec shop/client -- target/debug/warren-sample load --url http://{app}/ -n 100 -H 'end-user: jason'\n  cargo xtask cluster exec shop/client -- curl -s -H 'x-lane-id: dev-alice' http://{front}/\nRemove it with: cargo xtask cluster down {id}"
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

/// The cluster and the application (`examples/services.yaml` and the pods
/// behind it), plus the callers. Namespaces start without the opt-in label.
fn deploy() -> Result<Demo> {
    let mut cluster = Cluster::builder().nodes(2).up()?;
    cluster.add_namespace(SHOP, BTreeMap::new())?;
    cluster.add_namespace("outside", BTreeMap::new())?;
    let mut pods: Vec<(&str, &str, usize, BTreeMap<String, String>)> = APP_PODS
        .iter()
        .map(|(name, node, app, version, _)| {
            (
                *name,
                SHOP,
                *node,
                labels(&[("app", app), ("version", version)]),
            )
        })
        .collect();
    pods.extend([
        ("cart", SHOP, 0, labels(&[("app", "cart")])),
        ("client", SHOP, 0, labels(&[("app", "client")])),
        ("curl", "outside", 0, labels(&[("app", "curl")])),
    ]);
    for (name, namespace, node, labels) in pods {
        cluster.add_pod(PodSpec {
            name: name.into(),
            namespace: namespace.into(),
            node,
            labels,
            service_account: Some(name.into()),
        })?;
    }
    show_yaml("examples/services.yaml", examples::SERVICES);
    apply_services(&mut cluster, examples::SERVICES)?;
    let mut demo = Demo {
        mesh: None,
        cluster,
        servers: Vec::new(),
        waypoint: None,
        runtime: None,
    };
    let app = format!("http://{}/", demo.vip("app")?);
    let data = format!("http://{}/", demo.vip("data")?);
    for (name, _, service, version, extra) in APP_PODS {
        let pod = demo.pod(&format!("{SHOP}/{name}"))?.clone();
        let mut args = vec!["--name", service, "--version", version];
        args.extend(extra.iter().map(|a| match *a {
            "{app}" => app.as_str(),
            "{data}" => data.as_str(),
            a => a,
        }));
        let server = start_http_server(&demo.cluster, &pod, 8080, &args)?;
        demo.servers.push(server);
    }
    Ok(demo)
}

/// Creates the Services of a manifest in the testbed, which assigns each a
/// ClusterIP and writes it with its EndpointSlice, as the API server and the
/// endpoint-slice controller would.
/// `yaml` with its placeholder line `placeholder` (in a YAML block, four
/// spaces in) replaced by `ca`'s root certificate, indented as the block.
fn with_ca(yaml: &str, placeholder: &str, ca: &Authority) -> Result<String> {
    let pem: Vec<String> = ca.root_pem.lines().map(|l| format!("    {l}")).collect();
    let placeholder = format!("    {placeholder}");
    ensure!(
        yaml.contains(&placeholder),
        "no {placeholder:?} to put the CA certificate in"
    );
    Ok(yaml.replace(&placeholder, &pem.join("\n")))
}

fn apply_services(cluster: &mut Cluster, yaml: &str) -> Result<()> {
    for doc in documents(yaml)? {
        ensure!(
            doc["kind"].as_str() == Some("Service"),
            "not a Service: {doc:?}"
        );
        let name = doc["metadata"]["name"]
            .as_str()
            .context("a Service's name")?;
        let namespace = doc["metadata"]["namespace"].as_str().unwrap_or("default");
        let ports = doc["spec"]["ports"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|p| {
                let port = p["port"].as_u64().context("a port")?;
                Ok(ServicePort {
                    name: p["name"].as_str().unwrap_or("http").to_owned(),
                    port: u16::try_from(port)?,
                    target_port: u16::try_from(p["targetPort"].as_u64().unwrap_or(port))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut service = cluster
            .add_service(namespace, name, string_map(&doc["spec"]["selector"]), ports)?
            .clone();
        // What the testbed's Service does not model goes into the manifest
        // as written: labels, and closeness (`trafficDistribution`,
        // `internalTrafficPolicy`).
        service.labels = string_map(&doc["metadata"]["labels"]);
        let mut extra = serde_json::Map::new();
        for field in ["trafficDistribution", "internalTrafficPolicy"] {
            if let Some(value) = doc["spec"][field].as_str() {
                extra.insert(field.to_owned(), Value::from(value));
            }
        }
        warren_testbed::manifests::write_service_with(
            &cluster.config_dir(),
            &service,
            &Value::Object(extra),
        )?;
    }
    Ok(())
}

impl Demo {
    /// Copies the cluster's process logs (CA, agents, ztunnels, waypoints,
    /// servers) to `target/demo-failures/`, which outlives the cluster, and
    /// returns the folder.
    fn keep_logs(&self, step: usize) -> Result<std::path::PathBuf> {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/demo-failures")
            .join(format!("{secs}-step{step}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let logs = self.cluster.log_dir();
        for entry in
            std::fs::read_dir(&logs).with_context(|| format!("reading {}", logs.display()))?
        {
            let path = entry?.path();
            if let Some(name) = path.file_name() {
                std::fs::copy(&path, dir.join(name))
                    .with_context(|| format!("copying {}", path.display()))?;
            }
        }
        Ok(dir)
    }

    fn pod(&self, name: &str) -> Result<&Pod> {
        self.cluster.pod(name)
    }

    fn node(&self, i: usize) -> Result<&Node> {
        self.cluster.node(i)
    }

    /// The index of the node called `name`.
    fn node_index(&self, name: &str) -> Result<usize> {
        self.cluster
            .nodes()
            .iter()
            .position(|n| n.name == name)
            .with_context(|| format!("no node {name}"))
    }

    /// The ClusterIP of a Service in `shop`.
    fn vip(&self, service: &str) -> Result<std::net::Ipv4Addr> {
        self.cluster
            .services()
            .iter()
            .find(|s| s.name == service && s.namespace == SHOP)
            .map(|s| s.cluster_ip)
            .with_context(|| format!("no Service {SHOP}/{service}"))
    }

    fn mesh_up(&mut self) -> Result<String> {
        // The socket shortcut is opt-in (docs/debugging.md); the demo shows it.
        // The upgrade step's load runs 6 s: old ztunnels let its connections
        // finish, and cut only what is still open 10 s after they were replaced
        // (the apps' own idle kept-alive connections to their upstreams).
        // The agents install the CNI plugin into each node's runtime folders.
        self.runtime = Some(Runtime::of(&self.cluster, self.node(0)?)?);
        let mut agent_args = vec![
            "--socket-shortcut".to_owned(),
            "--ztunnel-dns-port".to_owned(),
            "15053".to_owned(),
        ];
        agent_args.extend(cni::agent_args());
        let options = MeshOptions {
            run_waypoints: true,
            agent_args,
            ztunnel_args: vec!["--drain-timeout".into(), "10s".into()],
            ..MeshOptions::default()
        };
        let mut mesh = start_mesh_with(&self.cluster, &options)?;
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
            let expected = warren_e2e::agent::expected_programs().len();
            ensure!(
                names.len() == expected,
                "{}: {} programs, expected {expected}: {names:?}",
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
        show_yaml("examples/namespace.yaml", examples::NAMESPACE);
        let namespace = documents(examples::NAMESPACE)?
            .into_iter()
            .next()
            .context("examples/namespace.yaml is empty")?;
        let name = namespace["metadata"]["name"]
            .as_str()
            .context("the namespace's name")?;
        ensure!(
            name == SHOP,
            "examples/namespace.yaml names {name}, not {SHOP}"
        );
        self.cluster
            .add_namespace(SHOP, string_map(&namespace["metadata"]["labels"]))?;
        let n0 = self.wait_enrolled(0, ENROLLED[0], "PERMISSIVE")?;
        let n1 = self.wait_enrolled(1, ENROLLED[1], "PERMISSIVE")?;
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
            let mut want = pods.to_vec();
            want.sort_unstable();
            if names == want && rows.iter().all(|r| r.mode == mode) {
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

    /// A pod's DNS query goes to ztunnel's DNS proxy, which answers for Services.
    fn dns(&mut self) -> Result<String> {
        let front = self.pod("shop/front")?.clone();
        let name = "app.shop.svc.cluster.local";
        let vip = self.vip("app")?;
        let answer = resolve(&front, CLUSTER_DNS, name, Send::Connected)?
            .with_context(|| format!("shop/front got no answer for {name}"))?;
        ensure!(
            answer.addresses == [std::net::IpAddr::from(vip)]
                && answer.from == (CLUSTER_DNS.into(), 53),
            "shop/front got {answer:?} for {name}, want {vip} from {CLUSTER_DNS}:53"
        );
        Ok(format!(
            "shop/front asked {CLUSTER_DNS} (nothing listens there) for {name}: {vip}, answered by its node's ztunnel"
        ))
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
        // Why: cart's node explains what its connection meets.
        let target = format!("{}:8080", app.ip);
        println!(
            "   $ warrenctl explain shop/cart {target}   (on {})",
            cart.node
        );
        let node = self.node(self.node_index(&cart.node)?)?;
        let explained = warrenctl_explain(node, "shop/cart", &target)?;
        show_output(&explained);
        ensure!(
            explained.contains("verdict: denied") && explained.contains("deny-cart"),
            "warrenctl explain does not say why cart is refused:\n{explained}"
        );
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
        self.wait_enrolled(0, ENROLLED[0], "STRICT")?;
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

    /// A pod starting while the mesh runs: the runtime's CNI call has it captured
    /// before its containers start, so even its first requests reach a STRICT pod.
    fn new_pod(&mut self) -> Result<String> {
        let runtime = self.runtime.as_ref().context("no CNI runtime")?;
        let pod = self
            .cluster
            .add_starting_pod(PodSpec {
                name: "newcomer".into(),
                namespace: SHOP.into(),
                node: 0,
                labels: labels(&[("app", "newcomer")]),
                service_account: Some("newcomer".into()),
            })?
            .clone();
        let started = Instant::now();
        let add = runtime.run("ADD", &pod)?;
        let took = started.elapsed();
        ensure!(add.succeeded(), "the plugin refused shop/newcomer: {add:?}");
        let app = self.pod("shop/app-v2")?.clone();
        let first = load(
            &pod,
            &format!("http://{}:8080/", app.ip),
            &["-n", "3", "-c", "1"],
        )?;
        ensure!(
            count_status(&first, 200) == 3,
            "shop/newcomer's first requests: {first}"
        );
        // Gone again, so the later steps see the pods they expect.
        self.cluster.remove_pod("shop/newcomer")?;
        self.wait_enrolled(0, ENROLLED[0], "STRICT")?;
        Ok(format!(
            "the runtime's ADD for shop/newcomer answered in {} ms, the pod captured before kubelet published its address; its first requests → app-v2 (STRICT): 3/3",
            took.as_millis()
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

    /// Replaces both nodes' ztunnels while the client keeps sending requests
    /// to `app` through the waypoint over kept-alive connections: each new
    /// process takes over once ready, each old one drains and leaves once its
    /// last connection is done.
    fn upgrade(&mut self) -> Result<String> {
        let client = self.client()?;
        let url = self.url("app", "/")?;
        let sample = warren_testbed::binaries::path("warren-sample")?;
        let mut running = self.cluster.spawn(
            &client.sandbox,
            &sample.to_string_lossy(),
            &[
                "load",
                "--url",
                &url,
                "--duration",
                "6s",
                "-c",
                "4",
                "--json",
            ],
        )?;
        std::thread::sleep(Duration::from_secs(1));
        let mesh = self.mesh.as_mut().context("the mesh is not up")?;
        let old = mesh.hand_over_ztunnels(&self.cluster, &[1, 0], Duration::from_secs(1))?;
        for (i, (node, previous)) in [1, 0].into_iter().zip(&old) {
            println!(
                "   {node}: ztunnel pid {} took over from pid {}, which drains",
                mesh.nodes[i].ztunnel.pid().unwrap_or(0),
                previous.pid().unwrap_or(0)
            );
        }
        running
            .check_running()
            .context("the load ended before both hand-overs")?;
        let report = finished_report(&mut running, Duration::from_secs(30))?;
        let requests = report["requests"].as_u64().unwrap_or(0);
        let ok = count_status(&report, 200);
        ensure!(
            requests > 0 && ok == requests,
            "{ok} of {requests} requests answered 200 across the hand-overs: {report}"
        );
        let mut ends = Vec::new();
        for (node, mut previous) in old {
            let status = previous.wait_exit(Duration::from_secs(30))?;
            ensure!(
                status.success(),
                "the old ztunnel on {node} failed ({status})"
            );
            let end = if previous
                .output()
                .contains("drained: every connection finished")
            {
                "every connection finished"
            } else {
                "what the apps still held open was cut at the 10 s deadline"
            };
            ends.push(format!("{node}: {end}"));
        }
        Ok(format!(
            "{requests} requests on 4 kept-alive connections while both ztunnels were replaced: \
             {ok} × 200, no error. Old ztunnels drained ({})",
            ends.join("; ")
        ))
    }

    /// Shows an example and writes it into the local config folder as
    /// `file`, where the agents pick it up.
    fn apply(&self, example: &str, yaml: &str, file: &str) -> Result<()> {
        show_yaml(&format!("examples/{example}"), yaml);
        std::fs::write(self.cluster.config_dir().join(file), yaml)
            .with_context(|| format!("writing {file}"))
    }

    /// Runs (and shows) `warrenctl waypoint apply -n shop` with `extra`
    /// flags; returns what it printed.
    fn apply_waypoint(&self, extra: &[&str]) -> Result<String> {
        let config_dir = self.cluster.config_dir().to_string_lossy().into_owned();
        let mut args = vec!["waypoint", "apply", "-n", SHOP];
        args.extend_from_slice(extra);
        args.extend(["--config-dir", &config_dir]);
        println!("   $ warrenctl {}", args.join(" "));
        let out = warrenctl_text(&args)?;
        for line in out.lines() {
            println!("   {line}");
        }
        Ok(out)
    }

    fn client(&self) -> Result<Pod> {
        Ok(self.pod("shop/client")?.clone())
    }

    fn url(&self, service: &str, path: &str) -> Result<String> {
        Ok(format!("http://{}{path}", self.vip(service)?))
    }

    /// The waypoint's Prometheus metrics, scraped from inside its pod.
    fn waypoint_metrics(&self) -> Result<String> {
        warren_e2e::mesh::waypoint_metrics(self.waypoint.as_ref().context("no waypoint")?)
    }

    /// The mesh's logs (the agents' include their waypoints'), for a
    /// failure's message.
    fn logs(&self) -> String {
        self.mesh.as_ref().map(Mesh::logs).unwrap_or_default()
    }

    /// Waits until the client's requests to app, with `headers`, show the
    /// routes just applied: `check` on a small load's report.
    fn wait_routes(
        &self,
        what: &str,
        headers: &[&str],
        check: impl Fn(&Value) -> bool,
    ) -> Result<()> {
        let client = self.client()?;
        let url = self.url("app", "/")?;
        let mut args = vec!["-n", "20", "-c", "4"];
        for h in headers {
            args.extend(["-H", h]);
        }
        // A load that fails outright (paths switching) is "not yet".
        eventually(Duration::from_secs(20), what, || {
            Ok(load(&client, &url, &args).is_ok_and(|r| check(&r)))
        })
        .with_context(|| self.logs())
    }

    fn canary(&mut self) -> Result<String> {
        self.apply(
            "destination-rules.yaml",
            examples::DESTINATION_RULES,
            "destinationrules.shop.yaml",
        )?;
        self.apply("canary.yaml", examples::CANARY, ROUTES_FILE)?;
        // The pod a Deployment would make for the Gateway: labelled as its,
        // and outside the capture (it speaks HBONE itself).
        let pod = self
            .cluster
            .add_pod(warren_e2e::mesh::waypoint_pod(SHOP, 1))?
            .clone();
        // `warrenctl waypoint apply` writes the Gateway of examples/waypoint.yaml;
        // the agent of the pod's node then runs the waypoint in the pod.
        show_yaml("examples/waypoint.yaml", examples::WAYPOINT);
        let config_dir = self.cluster.config_dir();
        let out = self.apply_waypoint(&[])?;
        let written = std::fs::read_to_string(config_dir.join("gateway.shop.waypoint.yaml"))
            .with_context(|| {
                format!("warrenctl waypoint apply wrote no gateway.shop.waypoint.yaml: {out}")
            })?;
        ensure!(
            documents(&written)? == documents(examples::WAYPOINT)?,
            "examples/waypoint.yaml differs from what warrenctl wrote:\n{written}"
        );
        let index = self.node_index(&pod.node)?;
        let mesh = self.mesh.as_mut().context("the mesh is not up")?;
        mesh.nodes[index]
            .agent
            .wait_for_output("waypoint ready", Duration::from_secs(30))
            .with_context(|| mesh.logs())?;
        self.waypoint = Some(pod);
        self.wait_routes("app's requests through the waypoint", &[], |r| {
            count_version(r, "v1") + count_version(r, "v2") == 20
        })?;
        let before = self.app_requests()?;

        let report = load(
            &self.client()?,
            &self.url("app", "/")?,
            &["-n", "1000", "-c", "8"],
        )?;
        let (v1, v2) = (count_version(&report, "v1"), count_version(&report, "v2"));
        ensure!(
            v1 + v2 == 1000,
            "{v1} v1 + {v2} v2 of 1000 answered: {report}\n{}",
            self.logs()
        );
        ensure!(
            (750..=850).contains(&v1),
            "{v1}/1000 to v1, expected 80 % ± 5 points: {report}"
        );
        let counted = self.app_requests()? - before;
        ensure!(
            counted >= 1000.0,
            "the waypoint counted only {counted} requests to app"
        );
        Ok(format!(
            "waypoint run by node 1's agent in pod shop/waypoint; 1000 requests from shop/client: v1 {v1} ({:.1} %), v2 {v2} ({:.1} %) — target 80/20 ± 5; the waypoint counted {counted} of them (istio_requests_total)",
            v1 as f64 / 10.0,
            v2 as f64 / 10.0
        ))
    }

    /// Requests to app the waypoint has counted.
    fn app_requests(&self) -> Result<f64> {
        Ok(metric_sum(
            &self.waypoint_metrics()?,
            "istio_requests_total",
            &[("destination_service_name", "app")],
        ))
    }

    fn header_routing(&mut self) -> Result<String> {
        self.apply("header-routing.yaml", examples::HEADER_ROUTING, ROUTES_FILE)?;
        self.wait_routes("jason's requests to v2", &["end-user: jason"], |r| {
            count_version(r, "v2") == 20
        })?;
        let client = self.client()?;
        let url = self.url("app", "/")?;
        let jason = load(
            &client,
            &url,
            &["-n", "200", "-c", "8", "-H", "end-user: jason"],
        )?;
        let v2 = count_version(&jason, "v2");
        ensure!(v2 == 200, "jason reached v2 {v2}/200 times: {jason}");
        let others = load(&client, &url, &["-n", "200", "-c", "8"])?;
        let (v1, ov2) = (count_version(&others, "v1"), count_version(&others, "v2"));
        ensure!(
            v1 + ov2 == 200 && v1 > ov2,
            "others should stay on the 80/20 canary: {others}"
        );
        // Why: the waypoint explains the route a request of jason's takes.
        let host = "http://app.shop.svc.cluster.local/";
        println!(
            "   $ warrenctl waypoint explain -n shop --from shop/client -H 'end-user: jason' {host}"
        );
        let explained = warrenctl_waypoint_explain(
            &self.cluster.config_dir(),
            SHOP,
            "shop/client",
            &["-H", "end-user: jason", host],
        )?;
        show_output(&explained);
        ensure!(
            explained.contains("subset v2 (100%)") && explained.contains("verdict: forwarded"),
            "warrenctl waypoint explain does not say jason goes to v2:\n{explained}"
        );
        Ok(format!(
            "end-user: jason → v2 {v2}/200; without the header: v1 {v1}, v2 {ov2} of 200 (canary kept)"
        ))
    }

    fn faults(&mut self) -> Result<String> {
        self.apply(
            "fault-injection.yaml",
            examples::FAULT_INJECTION,
            ROUTES_FILE,
        )?;
        self.wait_routes("half the requests aborted", &[], |r| {
            count_status(r, 503) > 0 && count_version(r, "v2") == 0
        })?;
        let client = self.client()?;
        let url = self.url("app", "/")?;
        let report = load(&client, &url, &["-n", "400", "-c", "8"])?;
        let (aborted, ok) = (count_status(&report, 503), count_status(&report, 200));
        ensure!(
            aborted + ok == 400 && (160..=240).contains(&aborted),
            "{aborted} aborted and {ok} OK of 400, expected 50 % ± 10 points aborted: {report}"
        );
        ensure!(
            count_version(&report, "v1") == ok,
            "the answered requests must come from v1: {report}"
        );
        let jason = load(
            &client,
            &url,
            &["-n", "16", "-c", "4", "-H", "end-user: jason"],
        )?;
        let p50 = jason["latency_ms"]["p50"].as_f64().unwrap_or(0.0);
        ensure!(
            count_version(&jason, "v2") == 16 && p50 >= 500.0,
            "jason: expected 16 answers from v2 after ≥ 500 ms, got p50 {p50:.0} ms: {jason}"
        );
        let max = jason["latency_ms"]["max"].as_f64().unwrap_or(0.0);
        Ok(format!(
            "400 requests: {aborted} aborted with 503 by the waypoint ({:.1} %), {ok} answered by v1; jason: 16/16 answered by v2, p50 {p50:.0} ms, max {max:.0} ms (delay 500 ms)",
            aborted as f64 / 4.0
        ))
    }

    fn retries_timeouts(&mut self) -> Result<String> {
        self.apply(
            "retries-timeouts.yaml",
            examples::RETRIES_TIMEOUTS,
            ROUTES_FILE,
        )?;
        self.wait_routes("requests routed to v3", &["x-retry: off"], |r| {
            count_version(r, "v3") == 20
        })?;
        let client = self.client()?;
        let url = self.url("app", "/")?;
        let bare = load(
            &client,
            &url,
            &["-n", "200", "-c", "8", "-H", "x-retry: off"],
        )?;
        let bare_ok = count_status(&bare, 200);
        ensure!(
            (60..=140).contains(&bare_ok),
            "without retries about half of v3's answers should fail: {bare}"
        );
        let retries_before = self.retries()?;
        let retried = load(&client, &url, &["-n", "400", "-c", "8"])?;
        let retried_ok = count_status(&retried, 200);
        ensure!(
            retried_ok >= 396,
            "retries must lift success to ≥ 99 %: {retried_ok}/400: {retried}\n{}",
            self.logs()
        );
        let retries = self.retries()? - retries_before;

        let reports = load(
            &client,
            &self.url("app", "/reports")?,
            &["-n", "8", "-c", "8", "--timeout", "5s"],
        )?;
        let timed_out = count_status(&reports, 504);
        let p99 = reports["latency_ms"]["p99"]
            .as_f64()
            .unwrap_or(f64::INFINITY);
        ensure!(
            timed_out == 8 && p99 < 1500.0,
            "/reports (3 s) behind a 500 ms timeout: {timed_out}/8 answered 504, p99 {p99:.0} ms: {reports}"
        );
        Ok(format!(
            "v3 fails half its requests: without retries {bare_ok}/200 OK; with retries {retried_ok}/400 OK ({:.1} %, {retries} retries counted); /reports (3 s) behind a 500 ms timeout: {timed_out}/8 answered 504, p99 {p99:.0} ms",
            retried_ok as f64 / 4.0
        ))
    }

    /// Retries the waypoint has counted.
    fn retries(&self) -> Result<f64> {
        Ok(metric_sum(
            &self.waypoint_metrics()?,
            "warren_waypoint_retries_total",
            &[],
        ))
    }

    fn http_route(&mut self) -> Result<String> {
        show_yaml("examples/http-route.yaml", examples::HTTP_ROUTE);
        let mut services = Vec::new();
        let mut routes = Vec::new();
        for doc in documents(examples::HTTP_ROUTE)? {
            let yaml = serde_yaml::to_string(&doc)?;
            if doc["kind"].as_str() == Some("Service") {
                services.push(yaml);
            } else {
                routes.push(yaml);
            }
        }
        apply_services(&mut self.cluster, &services.join("---\n"))?;
        // The HTTPRoute takes over from the VirtualService of the steps
        // before: a Service is routed by one or the other.
        let config_dir = self.cluster.config_dir();
        std::fs::remove_file(config_dir.join(ROUTES_FILE))
            .with_context(|| format!("removing {ROUTES_FILE}"))?;
        std::fs::write(
            config_dir.join("httproutes.shop.yaml"),
            routes.join("---\n"),
        )
        .context("writing httproutes.shop.yaml")?;
        self.wait_routes(
            "jason's requests to v2 by the HTTPRoute",
            &["end-user: jason"],
            |r| count_version(r, "v2") == 20,
        )?;
        let client = self.client()?;
        let url = self.url("app", "/")?;
        let report = load(&client, &url, &["-n", "1000", "-c", "8"])?;
        let (v1, v2) = (count_version(&report, "v1"), count_version(&report, "v2"));
        ensure!(
            v1 + v2 == 1000 && (860..=940).contains(&v1),
            "{v1} v1 + {v2} v2 of 1000, expected 90 % ± 4 points to v1: {report}\n{}",
            self.logs()
        );
        let jason = load(
            &client,
            &url,
            &["-n", "100", "-c", "4", "-H", "end-user: jason"],
        )?;
        let to_v2 = count_version(&jason, "v2");
        ensure!(to_v2 == 100, "jason reached v2 {to_v2}/100 times: {jason}");
        Ok(format!(
            "1000 requests by the HTTPRoute: v1 {v1} ({:.1} %), v2 {v2} ({:.1} %) — target 90/10 ± 4; jason to v2 {to_v2}/100",
            v1 as f64 / 10.0,
            v2 as f64 / 10.0
        ))
    }

    fn jwt(&mut self) -> Result<String> {
        const ISSUER: &str = "https://idp.shop.example";
        let idp = warren_testbed::jwt::Issuer::new(ISSUER, "demo-key")?;
        let rules = |jwks: &str| {
            format!(
                "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{ name: jwt, namespace: shop }}\nspec:\n  targetRefs: [{{ group: gateway.networking.k8s.io, kind: Gateway, name: waypoint }}]\n  jwtRules:\n  - issuer: {ISSUER}\n    jwks: '{jwks}'\n    outputClaimToHeaders: [{{ header: x-user, claim: sub }}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{ name: admin-needs-jwt, namespace: shop }}\nspec:\n  targetRefs: [{{ group: gateway.networking.k8s.io, kind: Gateway, name: waypoint }}]\n  rules:\n  - to: [{{ operation: {{ notPaths: [\"/admin*\"] }} }}]\n  - from: [{{ source: {{ requestPrincipals: [\"{ISSUER}/*\"] }} }}]\n    to: [{{ operation: {{ paths: [\"/admin*\"] }} }}]\n"
            )
        };
        show_yaml("jwt.yaml", &rules("<the issuer's public key set>"));
        let file = "jwt.shop.yaml";
        std::fs::write(self.cluster.config_dir().join(file), rules(&idp.jwks()))
            .with_context(|| format!("writing {file}"))?;
        let client = self.client()?;
        let admin = self.url("app", "/admin")?;
        let alice = idp.token(serde_json::json!({ "sub": "alice" }))?;
        let expired = idp.token(serde_json::json!({ "sub": "alice", "exp": 1_000_000 }))?;
        let curl = |token: Option<&str>| -> Result<(u16, String)> {
            let auth = token.map(|t| format!("authorization: Bearer {t}"));
            let mut args = vec!["-sS", "--max-time", "5", "-w", "\n%{http_code}"];
            if let Some(auth) = &auth {
                args.extend(["-H", auth.as_str()]);
            }
            args.push(&admin);
            let out = client.sandbox.exec("curl", &args)?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
            Ok((code.trim().parse().unwrap_or(0), body.to_owned()))
        };
        eventually(Duration::from_secs(20), "the JWT rules in force", || {
            Ok(curl(None)?.0 == 403)
        })
        .with_context(|| self.logs())?;
        let (anonymous, _) = curl(None)?;
        let (with_token, body) = curl(Some(&alice))?;
        let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let user = answer["headers"]["x-user"]
            .as_str()
            .unwrap_or("-")
            .to_owned();
        ensure!(
            with_token == 200
                && user == "alice"
                && answer["headers"].get("authorization").is_none(),
            "with alice's token: {with_token} {body}"
        );
        let (stale, why) = curl(Some(&expired))?;
        ensure!(
            stale == 401 && why.contains("Jwt is expired"),
            "with an expired token: {stale} {why:?}"
        );
        println!("   $ curl {admin}   → {anonymous} RBAC: access denied");
        println!(
            "   $ curl -H 'authorization: Bearer <alice's token>' {admin}   → {with_token}, app sees x-user: {user}"
        );
        println!("   $ curl -H 'authorization: Bearer <expired>' {admin}   → {stale} {why}");
        std::fs::remove_file(self.cluster.config_dir().join(file))?;
        eventually(Duration::from_secs(20), "the JWT rules withdrawn", || {
            Ok(curl(None)?.0 == 200)
        })
        .with_context(|| self.logs())?;
        Ok(format!(
            "/admin: {anonymous} without a token, {with_token} with alice's (the app sees x-user: {user}, not the token), {stale} \"{why}\" with an expired one"
        ))
    }

    /// Istio's Telemetry API: the root namespace's filters the access lines
    /// of every waypoint, one attached to shop's waypoint adds a label to
    /// its request counts.
    fn telemetry(&mut self) -> Result<String> {
        const FILE: &str = "telemetry.yaml";
        // The tracing provider's collector: the sample's stand-in, in cart.
        let cart = self.pod("shop/cart")?.clone();
        let sample = warren_testbed::binaries::path("warren-sample")?;
        let collector = self.cluster.spawn(
            &cart.sandbox,
            &sample.to_string_lossy(),
            &["collect", "--listen", "[::]:9411"],
        )?;
        self.cluster.add_service(
            SHOP,
            "zipkin",
            labels(&[("app", "cart")]),
            vec![ServicePort {
                name: "http".into(),
                port: 9411,
                target_port: 9411,
            }],
        )?;
        show_yaml("examples/telemetry.yaml", examples::TELEMETRY);
        std::fs::write(self.cluster.config_dir().join(FILE), examples::TELEMETRY)
            .with_context(|| format!("writing {FILE}"))?;
        let client = self.client()?;
        // The waypoint's JSON access lines of requests for `path` (its
        // node's agent runs it: they are in the agent's output).
        let json_lines = |demo: &Demo, path: &str| -> Vec<Value> {
            demo.logs()
                .lines()
                .filter(|l| l.starts_with('{'))
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["path"] == path)
                .collect()
        };
        let lines = |demo: &Demo, path: &str| json_lines(demo, path).len();
        // The waypoint's own lines, where nothing gives a format.
        let own_lines = |demo: &Demo, path: &str| {
            let field = format!("path=\"{path}\"");
            demo.logs()
                .lines()
                .filter(|l| l.contains("access: request") && l.contains(&field))
                .count()
        };
        let status = |url: &str| curl_status(&client, url, &[]);
        // In force once a successful request, counted by method, leaves no
        // line (counted and logged happen together). Each probe answers a
        // status of its own: 201, 202, ….
        let mut probe = 200;
        eventually(Duration::from_secs(20), "the Telemetry in force", || {
            probe += 1;
            let path = format!("/status/{probe}");
            let answered = status(&self.url("app", &path)?)?;
            let code = probe.to_string();
            let counted = [("request_method", "GET"), ("response_code", code.as_str())];
            let deadline = Instant::now() + Duration::from_secs(5);
            while metric_sum(&self.waypoint_metrics()?, "istio_requests_total", &counted) < 1.0 {
                if Instant::now() > deadline {
                    return Ok(false);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(answered == probe && own_lines(self, &path) == 0 && lines(self, &path) == 0)
        })
        .with_context(|| self.logs())?;
        let ok = self.url("app", "/telemetry/ok")?;
        let report = load(&client, &ok, &["-n", "200", "-c", "4"])?;
        let failed = self.url("app", "/status/503")?;
        let mut failures = 0;
        for _ in 0..5 {
            failures += u64::from(status(&failed)? == 503);
        }
        // The failures, sent last, are logged: once their lines are there,
        // the successes' would be.
        eventually(Duration::from_secs(10), "the failures logged", || {
            Ok(lines(self, "/status/503") >= 5)
        })
        .with_context(|| self.logs())?;
        let (ok_lines, failed_lines) = (lines(self, "/telemetry/ok"), lines(self, "/status/503"));
        println!("   | requests | answered | access lines |");
        println!("   |---|---|---|");
        println!(
            "   | GET /telemetry/ok | {} × 200 | {ok_lines} |",
            count_status(&report, 200)
        );
        println!("   | GET /status/503 | {failures} × 503 | {failed_lines} |");
        if let Some(line) = json_lines(self, "/status/503").first() {
            println!("   one of them, in the json-stdout provider's format:");
            println!("   {line}");
        }
        ensure!(
            count_status(&report, 200) == 200 && ok_lines == 0,
            "successful requests were logged ({ok_lines} lines): {report}"
        );
        ensure!(
            failures == 5 && failed_lines == 5,
            "{failures} failures, {failed_lines} lines\n{}",
            self.logs()
        );
        let metrics = self.waypoint_metrics()?;
        let by_method = metric_sum(
            &metrics,
            "istio_requests_total",
            &[
                ("request_method", "GET"),
                ("destination_service_name", "app"),
            ],
        );
        ensure!(
            by_method >= 205.0,
            "requests counted by method: {by_method}\n{metrics}"
        );
        if let Some((labels, value)) = metrics
            .lines()
            .filter(|l| l.contains("request_method=\"GET\""))
            .find_map(|l| l.strip_prefix("istio_requests_total{")?.rsplit_once("} "))
        {
            let shown: Vec<&str> = labels
                .split(',')
                .filter(|l| l.starts_with("request_method") || l.starts_with("response_code"))
                .collect();
            println!(
                "   istio_requests_total{{…, {}}} {value}   (the waypoint's /metrics)",
                shown.join(", ")
            );
        }
        // A trace the waypoint started: the app saw its span as the parent,
        // and the collector has the span.
        let traced = self.url("app", "/telemetry/traced")?;
        let out = client
            .sandbox
            .exec("curl", ["-sS", "--max-time", "5", traced.as_str()])?;
        let saw: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let parent = saw["headers"]["traceparent"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let fields: Vec<&str> = parent.split('-').collect();
        let [_, trace, span_id, "01"] = fields.as_slice() else {
            bail!("no sampled trace reached the app: {saw}");
        };
        let mut spans = Value::Null;
        eventually(Duration::from_secs(10), "the span collected", || {
            let url = format!("http://127.0.0.1:9411/api/v2/spans?traceId={trace}");
            let out = cart
                .sandbox
                .exec("curl", ["-sS", "--max-time", "5", url.as_str()])?;
            spans = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            Ok(spans
                .as_array()
                .is_some_and(|all| all.iter().any(|s| s["id"] == *span_id)))
        })
        .with_context(|| format!("{}\ncollector:\n{}", self.logs(), collector.output()))?;
        // The trace may hold the app's own calls' spans too (to data, say):
        // the waypoint's span of this request is the one the app saw.
        let Some(span) = spans
            .as_array()
            .and_then(|all| all.iter().find(|s| s["id"] == *span_id))
        else {
            bail!("the collector has no span {span_id}: {spans}");
        };
        ensure!(
            span["tags"]["http.status_code"] == "200",
            "the collector's span: {spans}"
        );
        println!("   $ curl {traced}   → the app sees traceparent: {parent}");
        println!(
            "   the collector (Zipkin JSON) has span {} \"{}\" of {}: {} in {} µs",
            span["id"].as_str().unwrap_or_default(),
            span["name"].as_str().unwrap_or_default(),
            span["localEndpoint"]["serviceName"]
                .as_str()
                .unwrap_or_default(),
            span["tags"]["http.status_code"]
                .as_str()
                .unwrap_or_default(),
            span["duration"]
        );
        let host = "http://app.shop.svc.cluster.local/telemetry/ok";
        println!("   $ warrenctl waypoint explain -n shop --from shop/client {host}");
        let explained =
            warrenctl_waypoint_explain(&self.cluster.config_dir(), SHOP, "shop/client", &[host])?;
        show_output(&explained);
        ensure!(
            explained.contains("a JSON access line when `response.code >= 500`"),
            "warrenctl waypoint explain does not say what the Telemetry asks:\n{explained}"
        );
        // Back to a line for every request, for the steps after.
        std::fs::remove_file(self.cluster.config_dir().join(FILE))?;
        eventually(Duration::from_secs(20), "the Telemetry withdrawn", || {
            probe += 1;
            let path = format!("/status/{probe}");
            let answered = status(&self.url("app", &path)?)?;
            std::thread::sleep(Duration::from_millis(300));
            Ok(answered == probe && own_lines(self, &path) == 1)
        })
        .with_context(|| self.logs())?;
        drop(collector);
        Ok(format!(
            "{ok_lines} access lines for 200 successes, {failed_lines} for 5 failures; {by_method} requests counted with request_method; trace {trace} collected"
        ))
    }

    /// Istio's CUSTOM action: the mesh config names an external authorizer
    /// (the sample's, run in `cart`, over gRPC), and a policy sends it the
    /// requests for `/orders`.
    fn ext_authz(&mut self) -> Result<String> {
        let cart = self.pod("shop/cart")?.clone();
        let sample = warren_testbed::binaries::path("warren-sample")?;
        let authorizer = self.cluster.spawn(
            &cart.sandbox,
            &sample.to_string_lossy(),
            &["authz", "--http", "[::]:8000", "--grpc", "[::]:9000"],
        )?;
        self.cluster.add_service(
            SHOP,
            "ext-authz",
            labels(&[("app", "cart")]),
            vec![ServicePort {
                name: "grpc".into(),
                port: 9000,
                target_port: 9000,
            }],
        )?;
        let mesh = "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: istio, namespace: istio-system }\ndata:\n  mesh: |-\n    extensionProviders:\n    - name: sample-ext-authz\n      envoyExtAuthzGrpc: { service: ext-authz.shop.svc.cluster.local, port: 9000, timeout: 1s }\n";
        let policy = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: orders-ask-ext-authz, namespace: shop }\nspec:\n  targetRefs: [{ kind: Service, name: app }]\n  action: CUSTOM\n  provider: { name: sample-ext-authz }\n  rules: [{ to: [{ operation: { paths: [\"/orders*\"] } }] }]\n";
        show_yaml("configmap.istio-system.istio.yaml", mesh);
        show_yaml("authorizationpolicy.shop.orders-ask-ext-authz.yaml", policy);
        let files = [
            ("configmap.istio-system.istio.yaml", mesh),
            ("authorizationpolicy.shop.orders-ask-ext-authz.yaml", policy),
        ];
        for (file, yaml) in files {
            std::fs::write(self.cluster.config_dir().join(file), yaml)
                .with_context(|| format!("writing {file}"))?;
        }
        let client = self.client()?;
        let orders = self.url("app", "/orders/7")?;
        let curl = |url: &str, allow: bool| -> Result<(u16, String)> {
            let mut args = vec!["-sS", "--max-time", "5", "-w", "\n%{http_code}"];
            if allow {
                args.extend(["-H", "x-ext-authz: allow"]);
            }
            args.push(url);
            let out = client.sandbox.exec("curl", &args)?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
            Ok((code.trim().parse().unwrap_or(0), body.to_owned()))
        };
        eventually(Duration::from_secs(20), "the authorizer asked", || {
            Ok(curl(&orders, false)?.0 == 403)
        })
        .with_context(|| format!("{}\nauthorizer:\n{}", self.logs(), authorizer.output()))?;
        let (denied, why) = curl(&orders, false)?;
        let (allowed, body) = curl(&orders, true)?;
        let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let result = answer["headers"]["x-ext-authz-check-result"]
            .as_str()
            .unwrap_or("-")
            .to_owned();
        let (other, _) = curl(&self.url("app", "/")?, false)?;
        ensure!(
            denied == 403 && why.contains("denied by ext_authz"),
            "without x-ext-authz: {denied} {why:?}"
        );
        ensure!(
            allowed == 200 && result == "allowed",
            "with x-ext-authz: allow: {allowed} {body}"
        );
        ensure!(other == 200, "/ is not the authorizer's: {other}");
        println!("   $ curl {orders}   → {denied} {why}");
        println!(
            "   $ curl -H 'x-ext-authz: allow' {orders}   → {allowed}, app sees x-ext-authz-check-result: {result}"
        );
        println!(
            "   $ curl {}   → {other} (not asked)",
            self.url("app", "/")?
        );
        // Why: the waypoint says whom it asks, without asking.
        let host = "http://app.shop.svc.cluster.local/orders/7";
        println!("   $ warrenctl waypoint explain -n shop --from shop/client {host}");
        let explained =
            warrenctl_waypoint_explain(&self.cluster.config_dir(), SHOP, "shop/client", &[host])?;
        show_output(&explained);
        ensure!(
            explained.contains("asks sample-ext-authz (grpc"),
            "warrenctl waypoint explain does not name the authorizer:\n{explained}"
        );
        for (file, _) in files {
            std::fs::remove_file(self.cluster.config_dir().join(file))?;
        }
        eventually(
            Duration::from_secs(20),
            "the CUSTOM policy withdrawn",
            || Ok(curl(&orders, false)?.0 == 200),
        )
        .with_context(|| self.logs())?;
        drop(authorizer);
        Ok(format!(
            "/orders: {denied} without x-ext-authz (the authorizer's own answer), {allowed} with it (the app sees its header); / not asked: {other}"
        ))
    }

    fn swim_lane(&mut self) -> Result<String> {
        self.apply("swim-lane.yaml", examples::SWIM_LANE, ROUTES_FILE)?;
        self.wait_routes(
            "lane requests to dev-alice",
            &["x-lane-id: dev-alice"],
            |r| count_version(r, "dev-alice") == 20,
        )?;
        let client = self.client()?;
        let lane = load(
            &client,
            &self.url("app", "/")?,
            &["-n", "100", "-c", "8", "-H", "x-lane-id: dev-alice"],
        )?;
        let alice = count_version(&lane, "dev-alice");
        ensure!(
            alice == 100,
            "lane requests to dev-alice: {alice}/100: {lane}"
        );

        // One full answer through front: the chain of hops and what the last
        // one received.
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let front = self.url("front", "/")?;
        let body = curl(
            &client,
            &[
                "-H",
                "x-lane-id: dev-alice",
                "-H",
                "x-request-id: demo-lane-1",
                "-H",
                &format!("traceparent: 00-{trace}-00f067aa0ba902b7-01"),
                "-H",
                &format!("b3: {trace}-00f067aa0ba902b7-1"),
                &front,
            ],
        )?;
        let chain = chain_of(&body);
        ensure!(
            chain == ["front@v1", "app@dev-alice", "data@v1"],
            "the lane's chain is {chain:?}: {body}"
        );
        let last = last_hop(&body);
        let header = |name: &str| last["headers"][name].as_str().unwrap_or("").to_owned();
        ensure!(
            header("x-lane-id") == "dev-alice"
                && header("x-request-id") == "demo-lane-1"
                && header("traceparent").contains(trace)
                && header("b3").starts_with(trace),
            "data did not receive the lane and trace headers: {last}"
        );
        let baseline = curl(&client, &[&front])?;
        let base_chain = chain_of(&baseline);
        ensure!(
            base_chain.first().map(String::as_str) == Some("front@v1")
                && base_chain.iter().all(|h| !h.ends_with("@dev-alice"))
                && base_chain.len() >= 2,
            "a request outside the lane went {base_chain:?}: {baseline}"
        );
        Ok(format!(
            "x-lane-id: dev-alice → app dev-alice {alice}/100; through front: {} (dev-alice where it exists, baseline front and data); data received x-lane-id, x-request-id demo-lane-1, trace {}…; without the lane: {}",
            chain.join(" → "),
            &trace[..8],
            base_chain.join(" → ")
        ))
    }
}

impl Demo {
    /// A pod addressed directly (as a StatefulSet's peers reach one): once
    /// the waypoint takes pods' traffic and data-v1 names it, the waypoint's
    /// policy holds on the pod's own address; an unlabelled pod is reached
    /// directly.
    fn pod_waypoint(&mut self) -> Result<String> {
        let config_dir = self.cluster.config_dir();
        self.apply_waypoint(&["--for", "all"])?;
        self.apply(
            "pod-waypoint.yaml",
            examples::POD_WAYPOINT,
            "authorizationpolicy.shop.internal-pages.yaml",
        )?;
        let mut data = self.pod("shop/data-v1")?.clone();
        println!("   labelling pod shop/data-v1 istio.io/use-waypoint=waypoint");
        data.labels
            .insert("istio.io/use-waypoint".into(), "waypoint".into());
        let node = self.node(self.node_index(&data.node)?)?.clone();
        manifests::write_pod(&config_dir, &data, &node)?;

        let client = self.client()?;
        let by_address = |pod: &Pod, path: &str| format!("http://{}:8080{path}", pod.ip);
        let internal = by_address(&data, "/internal/report");
        eventually(
            Duration::from_secs(20),
            "data-v1's /internal refused by the waypoint",
            || {
                let report = load(&client, &internal, &["-n", "4"])?;
                Ok(count_status(&report, 403) == 4)
            },
        )
        .with_context(|| self.logs())?;
        let counted = || -> Result<f64> {
            Ok(metric_sum(
                &self.waypoint_metrics()?,
                "istio_requests_total",
                &[
                    ("destination_workload", "data-v1"),
                    ("destination_service", "unknown"),
                    ("response_code", "200"),
                ],
            ))
        };
        let before = counted()?;
        let report = load(&client, &by_address(&data, "/"), &["-n", "20", "-c", "2"])?;
        let ok = count_status(&report, 200);
        let through = counted()? - before;
        ensure!(
            ok == 20 && through >= 20.0,
            "data-v1's other pages: {ok}/20 answered, {through} through the waypoint: {report}\n{}",
            self.logs()
        );
        let refused = count_status(&load(&client, &internal, &["-n", "20"])?, 403);
        ensure!(refused == 20, "{refused}/20 of /internal refused");
        // Unlabelled: reached directly, the waypoint's policy not in its way.
        let alice = self.pod("shop/app-dev-alice")?.clone();
        let direct = count_status(
            &load(
                &client,
                &by_address(&alice, "/internal/report"),
                &["-n", "5"],
            )?,
            200,
        );
        ensure!(
            direct == 5,
            "app-dev-alice (no label) answered {direct}/5 of /internal directly"
        );
        Ok(format!(
            "shop/client → data-v1 by its address: /internal 0/20 (403 from the waypoint's policy), / 20/20, {through} counted by the waypoint (destination_workload=data-v1); app-dev-alice, unlabelled: /internal 5/5, direct"
        ))
    }

    /// A partner's API on node 1's own address, outside every pod, reached by
    /// shop's client at the ServiceEntry's address: the entry's label sends
    /// it through the waypoint, which adds the partner key, refuses `/admin`
    /// before anything leaves the cluster, and starts TLS to the partner (the
    /// client speaks plain HTTP; the partner only HTTPS).
    fn egress(&mut self) -> Result<String> {
        const API: &str = "http://240.240.0.10";
        let node = self.cluster.node(1)?.clone();
        ensure!(
            node.ip.to_string() == "172.30.0.2",
            "examples/egress.yaml names the API at 172.30.0.2, node 1's address, but node 1 is at {}",
            node.ip
        );
        // The partner's CA and certificate, on node 1 (where the waypoint runs).
        let dir = self.cluster.node_dir(&node)?;
        let partner_ca = Authority::new("partner CA")?;
        let cert = partner_ca
            .server(&["api.partner.example"])?
            .write(&dir, "partner")?;
        let listen = format!("{}:8443", node.ip);
        let server = self.serve_https(&node.sandbox, &listen, ("partner", "external"), &cert)?;
        self.servers.push(server);
        let yaml = with_ca(examples::EGRESS, "PARTNER CA CERTIFICATE", &partner_ca)
            .context("examples/egress.yaml")?;
        self.apply("egress.yaml", &yaml, "egress.shop.yaml")?;
        let client = self.client()?;
        let admin = format!("{API}/admin/users");
        eventually(
            Duration::from_secs(20),
            "the partner API's routes on the waypoint",
            || {
                let report = load(&client, &admin, &["-n", "4"])?;
                Ok(count_status(&report, 403) == 4)
            },
        )
        .with_context(|| self.logs())?;
        let orders = format!("{API}/orders");
        let body = curl(&client, &[&orders])?;
        let key = body["headers"]["x-partner-key"]
            .as_str()
            .unwrap_or_default();
        ensure!(
            body["pod"] == "partner" && key == "shop-demo-key",
            "the partner API should answer with the key the waypoint added: {body}"
        );
        let tls = &body["tls"];
        ensure!(
            tls["sni"] == "api.partner.example" && tls["alpn"] == "http/1.1",
            "the partner should have seen TLS from the waypoint for its name: {body}"
        );
        let report = load(&client, &orders, &["-n", "200", "-c", "4"])?;
        let ok = count_status(&report, 200);
        ensure!(
            ok == 200,
            "{ok} of 200 calls to the partner API answered: {report}"
        );
        let refused = count_status(&load(&client, &admin, &["-n", "20"])?, 403);
        ensure!(
            refused == 20,
            "{refused} of 20 calls to /admin refused by the waypoint"
        );
        let counted = metric_sum(
            &self.waypoint_metrics()?,
            "istio_requests_total",
            &[("destination_service", "api.partner.example")],
        );
        Ok(format!(
            "200/200 plain-HTTP calls to api.partner.example ({API}, on node 1 outside the mesh) answered over TLS the waypoint started (the partner saw SNI {}, ALPN {}), with x-partner-key added by the waypoint; 20/20 to /admin refused 403 there; the waypoint counted {counted:.0} requests to the host",
            tls["sni"].as_str().unwrap_or("-"),
            tls["alpn"].as_str().unwrap_or("-")
        ))
    }

    /// The sample HTTP server on `listen` in `sandbox`, answering as `name`
    /// and `version`, over TLS only, with `cert`.
    fn serve_https(
        &self,
        sandbox: &warren_testbed::Sandbox,
        listen: &str,
        (name, version): (&str, &str),
        cert: &warren_testbed::pki::LeafFiles,
    ) -> Result<Process> {
        let sample = warren_testbed::binaries::path("warren-sample")?;
        self.cluster.spawn(
            sandbox,
            &sample.to_string_lossy(),
            &[
                "http",
                "--listen",
                listen,
                "--name",
                name,
                "--version",
                version,
                "--tls-cert",
                &cert.cert.to_string_lossy(),
                "--tls-key",
                &cert.key.to_string_lossy(),
            ],
        )
    }

    /// `ledger`, a pod that serves HTTPS alone, called in plain HTTP: the
    /// Gateway API's BackendTLSPolicy has the waypoint start TLS to it,
    /// checked against the CA bundle of a ConfigMap.
    fn backend_tls(&mut self) -> Result<String> {
        let node = self.node(1)?.clone();
        let dir = self.cluster.node_dir(&node)?;
        let ca = Authority::new("ledger CA")?;
        let cert = ca.server(&["ledger.shop.example"])?.write(&dir, "ledger")?;
        let pod = self
            .cluster
            .add_pod(PodSpec {
                name: "ledger".into(),
                namespace: SHOP.into(),
                node: 1,
                labels: labels(&[("app", "ledger"), ("version", "tls")]),
                service_account: Some("ledger".into()),
            })?
            .clone();
        let server = self.serve_https(&pod.sandbox, "[::]:8443", ("ledger", "tls"), &cert)?;
        self.servers.push(server);
        eventually(Duration::from_secs(10), "ledger listening on 8443", || {
            let listening = pod.sandbox.exec("ss", ["-Hltn", "sport = :8443"])?;
            Ok(!listening.stdout.is_empty())
        })?;
        // The Service goes to the testbed (its address); the policy and the
        // ConfigMap, with the CA's PEM in place, to the config folder.
        let (services, rest): (Vec<&str>, Vec<&str>) = examples::BACKEND_TLS
            .split("\n---\n")
            .partition(|doc| doc.contains("\nkind: Service\n"));
        apply_services(&mut self.cluster, &services.join("\n---\n"))?;
        let yaml = with_ca(&rest.join("\n---\n"), "LEDGER CA CERTIFICATE", &ca)
            .context("examples/backend-tls.yaml")?;
        self.apply("backend-tls.yaml", &yaml, "backend-tls.shop.yaml")?;
        let client = self.client()?;
        let url = self.url("ledger", "/accounts")?;
        let mut body = Value::Null;
        eventually(Duration::from_secs(20), "ledger answering over TLS", || {
            body = curl(&client, &[&url]).unwrap_or(Value::Null);
            Ok(body["pod"] == "ledger")
        })
        .with_context(|| format!("last answer: {body}\n{}", self.logs()))?;
        let tls = &body["tls"];
        ensure!(
            tls["sni"] == "ledger.shop.example" && tls["alpn"] == "http/1.1",
            "ledger should have seen TLS from the waypoint for its name: {body}"
        );
        let report = load(&client, &url, &["-n", "100", "-c", "4"])?;
        let ok = count_status(&report, 200);
        ensure!(ok == 100, "{ok} of 100 calls to ledger answered: {report}");
        let explained =
            warrenctl_waypoint_explain(&self.cluster.config_dir(), SHOP, "shop/client", &[&url])?;
        let said = explained
            .lines()
            .find(|line| line.starts_with("upstream tls"))
            .with_context(|| format!("no upstream tls step in:\n{explained}"))?
            .to_owned();
        println!("   $ warrenctl waypoint explain -n shop --from shop/client {url}");
        println!("   {said}");
        ensure!(
            said.contains("BackendTLSPolicy shop/ledger"),
            "explain should name the policy: {said}"
        );
        Ok(format!(
            "100/100 plain-HTTP calls to ledger answered by a pod that serves only HTTPS, over TLS the waypoint started (ledger saw SNI {}, ALPN {}), its certificate checked against ConfigMap ledger-ca; `warrenctl waypoint explain` names the policy",
            tls["sni"].as_str().unwrap_or("-"),
            tls["alpn"].as_str().unwrap_or("-")
        ))
    }

    /// Two zones: the nodes get topology labels, `stock` one replica in
    /// each; its Service asks for closeness. Without the waypoint the
    /// caller's ztunnel keeps it in the caller's zone; through the waypoint,
    /// the waypoint's zone; with outlier detection, a failed replica's zone
    /// fails over to the other.
    fn zones(&mut self) -> Result<String> {
        for (i, zone) in [(0, "zone-a"), (1, "zone-b")] {
            let node = self.node(i)?.name.clone();
            self.cluster.label_node(
                &node,
                labels(&[
                    ("topology.kubernetes.io/region", "demo"),
                    ("topology.kubernetes.io/zone", zone),
                ]),
            )?;
            println!("   node {node}: topology.kubernetes.io/region=demo, zone={zone}");
        }
        let mut replicas = Vec::new();
        for (name, node, zone) in [("stock-a", 0, "zone-a"), ("stock-b", 1, "zone-b")] {
            let pod = self
                .cluster
                .add_pod(PodSpec {
                    name: name.into(),
                    namespace: SHOP.into(),
                    node,
                    labels: labels(&[("app", "stock"), ("version", zone)]),
                    service_account: Some("stock".into()),
                })?
                .clone();
            replicas.push(start_http_server(
                &self.cluster,
                &pod,
                8080,
                &["--name", "stock", "--version", zone],
            )?);
        }
        show_yaml("examples/locality.yaml", examples::LOCALITY);
        apply_services(&mut self.cluster, examples::LOCALITY)?;
        let client = self.client()?;
        let url = self.url("stock", "/")?;
        let zone_of = |n: u64, zone: &str| -> Result<u64> {
            Ok(count_version(
                &load(&client, &url, &["-n", &n.to_string(), "-c", "4"])?,
                zone,
            ))
        };
        // The client runs on node 0, in zone-a.
        eventually(
            Duration::from_secs(30),
            "stock answered from zone-a",
            // A load that fails mid-change is one more try, not the end.
            || Ok(zone_of(20, "zone-a").unwrap_or(0) == 20),
        )
        .with_context(|| self.logs())?;
        let near = zone_of(100, "zone-a")?;
        ensure!(near >= 98, "the client's ztunnel kept {near}/100 in zone-a");

        // Through the waypoint (node 1, zone-b): its zone now.
        // The testbed's Service has no labels: written as it is, stock
        // loses the opt-out and keeps its trafficDistribution.
        let stock = self
            .cluster
            .services()
            .iter()
            .find(|s| s.namespace == SHOP && s.name == "stock")
            .context("no Service stock")?
            .clone();
        println!("   label istio.io/use-waypoint removed from Service stock: the waypoint picks");
        warren_testbed::manifests::write_service_with(
            &self.cluster.config_dir(),
            &stock,
            &serde_json::json!({ "trafficDistribution": "PreferClose" }),
        )?;
        eventually(
            Duration::from_secs(30),
            "stock answered from zone-b",
            || Ok(zone_of(20, "zone-b").unwrap_or(0) == 20),
        )
        .with_context(|| self.logs())?;
        let waypoint_zone = zone_of(100, "zone-b")?;
        ensure!(
            waypoint_zone >= 98,
            "the waypoint kept {waypoint_zone}/100 in its zone-b"
        );

        // zone-b's replica stops; with outlier detection it is ejected and
        // the waypoint fails over to zone-a.
        self.apply(
            "locality-failover.yaml",
            examples::LOCALITY_FAILOVER,
            "destinationrules.stock.yaml",
        )?;
        let stopped = replicas.pop();
        drop(stopped);
        println!("   stock-b (zone-b) stopped");
        eventually(
            Duration::from_secs(30),
            "stock failed over to zone-a",
            || {
                let Ok(report) = load(&client, &url, &["-n", "20", "-c", "4"]) else {
                    return Ok(false);
                };
                Ok(count_status(&report, 200) == 20 && count_version(&report, "zone-a") == 20)
            },
        )
        .with_context(|| self.logs())?;
        let failed_over = zone_of(100, "zone-a")?;
        ensure!(
            failed_over >= 98,
            "after failover {failed_over}/100 from zone-a"
        );
        let shown = warrenctl_text(&[
            "waypoint",
            "clusters",
            "-n",
            SHOP,
            "--config-dir",
            &self.cluster.config_dir().to_string_lossy(),
        ])?;
        println!("   $ warrenctl waypoint clusters -n {SHOP}");
        for line in shown
            .lines()
            .filter(|l| l.starts_with("CLUSTER") || l.starts_with("stock."))
        {
            println!("   {line}");
        }
        self.servers.extend(replicas);
        Ok(format!(
            "client in zone-a → stock zone-a {near}/100 (its ztunnel); through the waypoint in zone-b → zone-b {waypoint_zone}/100; zone-b's replica down → zone-a {failed_over}/100"
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

/// `curl -s ARGS…` in `pod`; the answer's body as JSON.
fn curl(pod: &Pod, args: &[&str]) -> Result<Value> {
    let out = pod
        .sandbox
        .exec("curl", ["-sS", "--max-time", "5"].iter().chain(args))?;
    ensure!(
        out.status.success(),
        "curl {args:?} from {}: {}",
        pod.name,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "curl {args:?} answered no JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The `chain` of hops a sample's answer reports.
fn chain_of(body: &Value) -> Vec<String> {
    body["chain"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h.as_str().map(str::to_owned))
        .collect()
}

/// The answer of the last hop in a chain of samples (each answer nests its
/// upstream's under `upstream.body`).
fn last_hop(body: &Value) -> &Value {
    let mut hop = body;
    while let Some(next) = hop.get("upstream").map(|u| &u["body"]) {
        hop = next;
    }
    hop
}
