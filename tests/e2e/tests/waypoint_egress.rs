//! A waypoint for traffic leaving the cluster: a ServiceEntry labelled
//! `istio.io/use-waypoint` sends its host's traffic through the namespace's
//! waypoint, which applies the host's VirtualService and resolves the host
//! (`resolution: DNS`) to reach it: Istio's egress waypoint. A Gateway API
//! HTTPRoute attached to the entry routes its host there too, and a
//! DestinationRule's `tls` has the waypoint reach an HTTPS host for clients
//! that speak plain HTTP (TLS origination). Servers outside the cluster
//! described by WorkloadEntries are endpoints of the Services and entries
//! that select them, with or without the waypoint.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use serde_json::{Value, json};
use warren_e2e::mesh::waypoint_pod;
use warren_e2e::{
    agent::warrenctl_waypoint_explain,
    mesh::{
        Mesh, MeshOptions, clusters_objects, eventually, metric_sum, start_mesh_with,
        start_waypoint_with, waypoint_gateway, waypoint_metrics,
    },
    workload::{count_status, count_version, load},
};
use warren_testbed::{
    Cluster, Node, PodSpec, Process, labels, pki::Authority, privilege::require_root,
};

const HOST: &str = "api.external.example";
const VIP: &str = "10.96.250.9";

/// The entry (through the waypoint) and the host's routes: `/blocked` is
/// refused with 418, everything else reaches the host with a header added.
fn egress_config(waypoint_label: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{ name: external-api, namespace: demo, labels: {{ {waypoint_label} }} }}\n\
         spec:\n  hosts: [{HOST}]\n  addresses: [{VIP}]\n  \
         ports: [{{ number: 80, name: http, protocol: HTTP, targetPort: 8080 }}]\n  \
         resolution: DNS\n\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n\
         metadata: {{ name: external-api, namespace: demo }}\n\
         spec:\n  hosts: [{HOST}]\n  http:\n  \
         - match: [{{ uri: {{ prefix: /blocked }} }}]\n    \
           fault: {{ abort: {{ httpStatus: 418, percentage: {{ value: 100 }} }} }}\n    \
           route: [{{ destination: {{ host: {HOST} }} }}]\n  \
         - headers: {{ response: {{ set: {{ x-egress: waypoint }} }} }}\n    \
           route: [{{ destination: {{ host: {HOST} }} }}]\n"
    )
}

/// Two nodes: a client in the ambient namespace `demo` on node 0, the
/// namespace's waypoint pod on node 1, and the mesh asking a DNS server on
/// node 1's own address (`<node 1>:5353`), outside the cluster.
struct Egress {
    cluster: Cluster,
    mesh: Mesh,
    /// Node 1, whose own address serves the hosts outside the cluster.
    node: Node,
    dns: String,
}

fn egress_cluster() -> Result<Egress> {
    let mut cluster = Cluster::builder().nodes(2).pods_per_node(0).up()?;
    cluster.add_namespace("demo", labels(&[("warren.io/dataplane-mode", "ambient")]))?;
    cluster.add_pod(PodSpec {
        name: "client".into(),
        namespace: "demo".into(),
        node: 0,
        labels: labels(&[("app", "client")]),
        service_account: Some("client".into()),
    })?;
    cluster.add_pod(waypoint_pod("demo", 1))?;
    let node = cluster.node(1)?.clone();
    let dns = format!("{}:5353", node.ip);
    let mut mesh = start_mesh_with(
        &cluster,
        &MeshOptions {
            ztunnel_args: vec!["--dns-server".into(), dns.clone()],
            ..Default::default()
        },
    )?;
    mesh.wait_ready(Duration::from_secs(30))
        .with_context(|| mesh.logs())?;
    Ok(Egress {
        cluster,
        mesh,
        node,
        dns,
    })
}

impl Egress {
    /// Starts `warren-sample` with `args` on node 1's own address, outside the
    /// cluster, and waits for it to listen on TCP `port` (UDP for `dns`).
    fn serve(&self, args: &[&str], port: u16) -> Result<Process> {
        self.serve_on(&self.node, args, port)
    }

    /// Servers answering as `v1` on node 0's own address, port `ports.0`,
    /// and as `v2` on node 1's, port `ports.1`, with their addresses.
    fn serve_versions(&self, ports: (u16, u16)) -> Result<([Process; 2], String, String)> {
        let other = self.cluster.node(0)?.clone();
        let v1 = format!("{}:{}", other.ip, ports.0);
        let v2 = format!("{}:{}", self.node.ip, ports.1);
        let servers = [
            self.serve_on(
                &other,
                &["http", "--listen", &v1, "--version", "v1"],
                ports.0,
            )?,
            self.serve(&["http", "--listen", &v2, "--version", "v2"], ports.1)?,
        ];
        Ok((servers, v1, v2))
    }

    /// As [`Egress::serve`], on `node`'s own address.
    fn serve_on(&self, node: &Node, args: &[&str], port: u16) -> Result<Process> {
        let sample = warren_testbed::binaries::path("warren-sample")?;
        let mut server = self
            .cluster
            .spawn(&node.sandbox, &sample.to_string_lossy(), args)?;
        let filter = format!("sport = :{port}");
        let which = if args.first() == Some(&"dns") {
            "-Hlun"
        } else {
            "-Hltn"
        };
        eventually(
            Duration::from_secs(10),
            &format!("{} on {}, port {port}", args.join(" "), node.ip),
            || {
                server.check_running()?;
                let listening = node.sandbox.exec("ss", [which, &filter])?;
                Ok(!listening.stdout.is_empty())
            },
        )?;
        Ok(server)
    }

    /// The namespace's waypoint (its Gateway written, its process started on
    /// node 1), asking the DNS server for external hosts.
    fn start_waypoint(&self) -> Result<Process> {
        self.start_waypoint_with(&[])
    }

    /// [`Egress::start_waypoint`], with more arguments.
    fn start_waypoint_with(&self, args: &[&str]) -> Result<Process> {
        std::fs::write(
            self.cluster.config_dir().join("gateway.demo.waypoint.yaml"),
            waypoint_gateway("demo"),
        )?;
        let pod = self.cluster.pod("waypoint")?.clone();
        let args: Vec<&str> = ["--dns-server", &self.dns]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        start_waypoint_with(&self.cluster, &pod, "demo", &args).with_context(|| self.mesh.logs())
    }
}

#[test]
fn a_service_entry_labelled_for_the_waypoint_leaves_through_it() -> Result<()> {
    require_root()?;
    let egress = egress_cluster()?;
    let Egress {
        cluster,
        mesh,
        node,
        dns,
    } = &egress;
    // Outside the cluster, on node 1's own address: the API, and a DNS
    // server that names it for the waypoint and the ztunnels.
    let api = format!("{}:8080", node.ip);
    let record = format!("{HOST}={}", node.ip);
    let _servers = [
        egress.serve(&["http", "--listen", &api, "--version", "external"], 8080)?,
        egress.serve(&["dns", "--listen", dns, "--record", &record], 5353)?,
    ];
    std::fs::write(
        cluster.config_dir().join("egress.demo.yaml"),
        egress_config("istio.io/use-waypoint: waypoint"),
    )?;
    let waypoint_pod = cluster.pod("waypoint")?.clone();
    let _waypoint = egress.start_waypoint()?;
    let client = cluster.pod("client")?.clone();
    let url = |path: &str| format!("http://{VIP}{path}");

    // Through the waypoint: its routes apply to the external host, and the
    // host is reached at the address the name resolves to.
    eventually(
        Duration::from_secs(20),
        "the entry's traffic through the waypoint",
        || {
            let blocked = load(&client, &url("/blocked"), &["-n", "10"])?;
            Ok(count_status(&blocked, 418) == 10)
        },
    )
    .with_context(|| mesh.logs())?;
    let report = load(&client, &url("/hello"), &["-n", "20", "-c", "2"])?;
    ensure!(
        count_status(&report, 200) == 20,
        "the external API through the waypoint: {report}\n{}",
        mesh.logs()
    );
    let headers = client.sandbox.exec(
        "curl",
        [
            "-sS",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--max-time",
            "5",
            &url("/hello"),
        ],
    )?;
    let headers = String::from_utf8_lossy(&headers.stdout).to_ascii_lowercase();
    ensure!(
        headers.contains("x-egress: waypoint") && headers.contains("x-sample-version: external"),
        "the answer came from the API through the waypoint's route:\n{headers}"
    );
    let metrics = waypoint_metrics(&waypoint_pod)?;
    let counted = metric_sum(
        &metrics,
        "istio_requests_total",
        &[("destination_service", HOST), ("response_code", "200")],
    );
    ensure!(
        counted >= 20.0,
        "the waypoint counted {counted} answers from {HOST}"
    );

    // An AuthorizationPolicy attached to the entry binds its host on the
    // waypoint: refused with 403, the rest still answered.
    std::fs::write(
        cluster.config_dir().join("policy.demo.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: { name: no-private, namespace: demo }\n\
         spec:\n  targetRefs: [{ group: networking.istio.io, kind: ServiceEntry, name: external-api }]\n  \
         action: DENY\n  rules: [{ to: [{ operation: { paths: [/private*] } }] }]\n",
    )?;
    eventually(
        Duration::from_secs(20),
        "the entry's policy on the waypoint",
        || {
            let private = load(&client, &url("/private/keys"), &["-n", "5"])?;
            Ok(count_status(&private, 403) == 5)
        },
    )
    .with_context(|| mesh.logs())?;
    let report = load(&client, &url("/hello"), &["-n", "5"])?;
    ensure!(
        count_status(&report, 200) == 5,
        "other paths still answered: {report}"
    );

    // An entry is tenant input and a waypoint may be shared: one naming the
    // waypoint's own loopback (its admin port) reaches nothing.
    std::fs::write(
        cluster.config_dir().join("loopback.demo.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: { name: own-admin, namespace: demo, labels: { istio.io/use-waypoint: waypoint } }\n\
         spec:\n  hosts: [admin.external.example]\n  addresses: [10.96.250.10]\n  \
         ports: [{ number: 15000, name: http, protocol: HTTP }]\n  \
         resolution: STATIC\n  endpoints: [{ address: 127.0.0.1 }]\n",
    )?;
    eventually(
        Duration::from_secs(20),
        "the loopback entry on the waypoint",
        || {
            let admin = load(
                &client,
                "http://10.96.250.10:15000/config_dump",
                &["-n", "5"],
            )?;
            ensure!(
                count_status(&admin, 200) == 0,
                "the waypoint's admin port was reached through an entry: {admin}"
            );
            Ok(count_status(&admin, 503) == 5)
        },
    )
    .with_context(|| mesh.logs())?;

    // A Gateway API route attached to the entry (Istio's form for egress)
    // in place of the VirtualService: it routes the entry's host.
    let entry_only = egress_config("istio.io/use-waypoint: waypoint");
    let entry_only = entry_only.split("---").next().unwrap_or_default();
    std::fs::write(cluster.config_dir().join("egress.demo.yaml"), entry_only)?;
    std::fs::write(
        cluster.config_dir().join("route.demo.yaml"),
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {{ name: external-api, namespace: demo }}\n\
             spec:\n  parentRefs: [{{ group: networking.istio.io, kind: ServiceEntry, name: external-api }}]\n  \
             rules:\n  - matches: [{{ path: {{ type: PathPrefix, value: /gw }} }}]\n    \
             filters: [{{ type: RequestHeaderModifier, requestHeaderModifier: {{ set: [{{ name: x-route, value: gateway-api }}] }} }}]\n    \
             backendRefs: [{{ group: networking.istio.io, kind: Hostname, name: {HOST}, port: 80 }}]\n"
        ),
    )?;
    eventually(
        Duration::from_secs(20),
        "the entry's HTTPRoute on the waypoint",
        || {
            let out = client
                .sandbox
                .exec("curl", ["-sS", "--max-time", "5", &url("/gw/hello")])?;
            let body = String::from_utf8_lossy(&out.stdout);
            Ok(body.contains("\"x-route\":\"gateway-api\""))
        },
    )
    .with_context(|| mesh.logs())?;
    // The route claims the host: what it does not match is not routed, and
    // the VirtualService's fault is gone.
    let other = load(&client, &url("/blocked"), &["-n", "5"])?;
    ensure!(
        count_status(&other, 404) == 5,
        "a path the entry's route does not match: {other}"
    );
    std::fs::remove_file(cluster.config_dir().join("route.demo.yaml"))?;

    // Without the label, the entry's traffic no longer goes through the
    // waypoint: ztunnel resolves the host and reaches the API itself, so
    // the waypoint's routes no longer apply.
    std::fs::write(
        cluster.config_dir().join("egress.demo.yaml"),
        egress_config(""),
    )?;
    eventually(
        Duration::from_secs(20),
        "the entry's traffic around the waypoint",
        || {
            let blocked = load(&client, &url("/blocked"), &["-n", "5"])?;
            Ok(count_status(&blocked, 418) == 0 && count_status(&blocked, 200) == 5)
        },
    )
    .with_context(|| mesh.logs())?;
    Ok(())
}

const SECURE: &str = "secure.external.example";
const SECURE_VIP: &str = "10.96.250.11";
const MUTUAL: &str = "mtls.external.example";
const MUTUAL_VIP: &str = "10.96.250.12";

const CANARY_HOST: &str = "catalog.external.example";
const CANARY_VIP: &str = "10.96.250.14";

/// An entry whose two endpoints (one address, two ports) carry labels and
/// weights, subsets by those labels, and routes: `x-canary: yes` to subset
/// `v2`, the rest to the host, balanced by the weights (1 to 3).
fn canary_config(address: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{ name: catalog, namespace: demo, labels: {{ istio.io/use-waypoint: waypoint }} }}\n\
         spec:\n  hosts: [{CANARY_HOST}]\n  addresses: [{CANARY_VIP}]\n  \
         ports: [{{ number: 80, name: http, protocol: HTTP }}]\n  \
         resolution: STATIC\n  endpoints:\n  \
         - {{ address: {address}, ports: {{ http: 8091 }}, labels: {{ version: v1 }}, weight: 1, locality: region-x/zone-1 }}\n  \
         - {{ address: {address}, ports: {{ http: 8092 }}, labels: {{ version: v2 }}, weight: 3, locality: region-x/zone-2 }}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
         metadata: {{ name: catalog, namespace: demo }}\n\
         spec:\n  host: {CANARY_HOST}\n  \
         subsets: [{{ name: v1, labels: {{ version: v1 }} }}, {{ name: v2, labels: {{ version: v2 }} }}]\n\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n\
         metadata: {{ name: catalog, namespace: demo }}\n\
         spec:\n  hosts: [{CANARY_HOST}]\n  http:\n  \
         - match: [{{ headers: {{ x-canary: {{ exact: \"yes\" }} }} }}]\n    \
           route: [{{ destination: {{ host: {CANARY_HOST}, subset: v2 }} }}]\n  \
         - route: [{{ destination: {{ host: {CANARY_HOST} }} }}]\n"
    )
}

/// A ServiceEntry's endpoints keep their own labels and weights at the
/// waypoint: a DestinationRule's subsets select them by label, and the host
/// without a subset is balanced by their weights.
#[test]
fn an_entrys_endpoints_are_chosen_by_their_labels_and_weights() -> Result<()> {
    require_root()?;
    let egress = egress_cluster()?;
    let Egress {
        cluster,
        mesh,
        node,
        ..
    } = &egress;
    let (v1, v2) = (format!("{}:8091", node.ip), format!("{}:8092", node.ip));
    let _servers = [
        egress.serve(&["http", "--listen", &v1, "--version", "v1"], 8091)?,
        egress.serve(&["http", "--listen", &v2, "--version", "v2"], 8092)?,
    ];
    std::fs::write(
        cluster.config_dir().join("catalog.demo.yaml"),
        canary_config(&node.ip.to_string()),
    )?;
    let waypoint = egress.start_waypoint()?;
    let client = cluster.pod("client")?.clone();
    let url = format!("http://{CANARY_VIP}/items");
    let logs = || format!("{}\nwaypoint:\n{}", mesh.logs(), waypoint.output());

    let mut report = Value::Null;
    eventually(Duration::from_secs(20), "the canary subset", || {
        report = load(
            &client,
            &url,
            &["-n", "40", "-c", "2", "-H", "x-canary: yes"],
        )?;
        Ok(count_version(&report, "v2") == 40)
    })
    .with_context(|| format!("last report: {report}\n{}", logs()))?;

    // The host itself: 3 of 4 requests to the endpoint weighted 3. One at
    // a time: LEAST_REQUEST (Istio's default) divides a weight by the
    // endpoint's requests in flight plus one, so concurrent requests would
    // lean to the lighter endpoint, as Envoy's do.
    let report = load(&client, &url, &["-n", "400", "-c", "1"])?;
    let (to_v1, to_v2) = (count_version(&report, "v1"), count_version(&report, "v2"));
    eprintln!("weighted 1:3 → v1 {to_v1}, v2 {to_v2}");
    ensure!(
        to_v1 + to_v2 == 400 && (250..=350).contains(&to_v2),
        "the weights split the host's requests 1:3: {report}"
    );
    // /clusters shows each endpoint with the entry's locality and weight.
    let mut found: Vec<(String, String, u64)> =
        clusters_objects(&cluster.pod("waypoint")?.sandbox, |o| {
            o.contains_key("address") && o.contains_key("weight")
        })?
        .iter()
        .filter_map(|e| {
            Some((
                e["address"].as_str()?.to_owned(),
                e["locality"].as_str()?.to_owned(),
                e["weight"].as_u64()?,
            ))
        })
        .collect();
    found.sort();
    found.dedup();
    ensure!(
        found
            == [
                (v1.clone(), "region-x/zone-1".to_owned(), 1),
                (v2.clone(), "region-x/zone-2".to_owned(), 3),
            ],
        "the endpoints' localities and weights at the waypoint: {found:?}"
    );
    Ok(())
}

/// An entry through the waypoint for `host` (port 80 to the host's
/// `target`, and `entry_names` as its `subjectAltNames`), and a
/// DestinationRule whose `tls` is `tls`.
fn tls_origination(
    name: &str,
    host: &str,
    vip: &str,
    target: u16,
    entry_names: &str,
    tls: &str,
) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{ name: {name}, namespace: demo, labels: {{ istio.io/use-waypoint: waypoint }} }}\n\
         spec:\n  hosts: [{host}]\n  addresses: [{vip}]\n  \
         ports: [{{ number: 80, name: http, protocol: HTTP, targetPort: {target} }}]\n  \
         resolution: DNS\n  subjectAltNames: {entry_names}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
         metadata: {{ name: {name}, namespace: demo }}\n\
         spec:\n  host: {host}\n  trafficPolicy:\n    tls: {tls}\n"
    )
}

/// The server's answer to a GET of `http://<vip>/hello` from the client, with
/// its status.
fn get(client: &warren_testbed::Pod, vip: &str) -> Result<(u16, Value)> {
    let (status, body, _) = fetch(client, vip)?;
    Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

/// The answer to a GET of `http://<target>/hello` from the client: its
/// status (0 when none came), body, and the `x-egress` header a waypoint's
/// route may set.
fn fetch(client: &warren_testbed::Pod, target: &str) -> Result<(u16, String, Option<String>)> {
    let out = client.sandbox.exec(
        "curl",
        [
            "-sS",
            "--max-time",
            "5",
            "-D",
            "/dev/stderr",
            "-w",
            "\n%{http_code}",
            &format!("http://{target}/hello"),
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let headers = String::from_utf8_lossy(&out.stderr);
    let marked = headers.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("x-egress")
            .then(|| value.trim().to_owned())
    });
    Ok((status.trim().parse().unwrap_or(0), body.to_owned(), marked))
}

/// The `tls` of every cluster in the waypoint's `/clusters` whose `field`
/// is `value`.
fn tls_settings(
    waypoint: &warren_testbed::Sandbox,
    field: &str,
    value: &str,
) -> Result<Vec<Value>> {
    clusters_objects(waypoint, |o| o.get(field) == Some(&json!(value)))
}

#[test]
fn the_waypoint_starts_tls_to_an_external_host_as_its_destination_rule_says() -> Result<()> {
    require_root()?;
    let egress = egress_cluster()?;
    let Egress {
        cluster,
        mesh,
        node,
        ..
    } = &egress;
    // The hosts' certificates, and the client certificate the waypoint shows
    // the host that asks for one; written to node 1, where the waypoint runs.
    let dir = cluster.node_dir(node)?;
    let hosts = Authority::new("external hosts")?;
    let other = Authority::new("someone else")?;
    let clients = Authority::new("external clients")?;
    let root = hosts.write_root(&dir, "hosts-root")?;
    let other_root = other.write_root(&dir, "other-root")?;
    let clients_root = clients.write_root(&dir, "clients-root")?;
    let secure = hosts.server(&[SECURE])?.write(&dir, "secure")?;
    let mutual = hosts.server(&[MUTUAL])?.write(&dir, "mutual")?;
    let waypoint_cert = clients.client(&[])?;
    let stranger_cert = other.client(&[])?;
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();

    let (secure_at, mutual_at) = (format!("{}:8443", node.ip), format!("{}:8444", node.ip));
    let records = [
        format!("{SECURE}={}", node.ip),
        format!("{MUTUAL}={}", node.ip),
    ];
    let servers = [
        egress.serve(
            &[
                "http",
                "--listen",
                &secure_at,
                "--version",
                "secure",
                // A line per connection: the test sees when none came.
                "--access-log",
                "--tls-cert",
                &path(&secure.cert),
                "--tls-key",
                &path(&secure.key),
            ],
            8443,
        )?,
        egress.serve(
            &[
                "http",
                "--listen",
                &mutual_at,
                "--version",
                "mutual",
                "--tls-cert",
                &path(&mutual.cert),
                "--tls-key",
                &path(&mutual.key),
                "--tls-client-ca",
                &path(&clients_root),
            ],
            8444,
        )?,
        egress.serve(
            &[
                "dns",
                "--listen",
                &egress.dns,
                "--record",
                &records[0],
                "--record",
                &records[1],
            ],
            5353,
        )?,
    ];
    let simple = |ca: &str| format!("{{ mode: SIMPLE, caCertificates: {ca} }}");
    let entries_naming = |secure_names: &str, secure_tls: &str| {
        format!(
            "{}---\n{}",
            tls_origination("secure", SECURE, SECURE_VIP, 8443, secure_names, secure_tls),
            tls_origination(
                "mutual",
                MUTUAL,
                MUTUAL_VIP,
                8444,
                "[]",
                "{ mode: MUTUAL, credentialName: partner-client }",
            )
        )
    };
    let entries = |secure_tls: &str| entries_naming("[]", secure_tls);
    // MUTUAL takes its certificate, key and CA from a Secret of the
    // waypoint's namespace, which the agent reads from the folder too.
    let credential = |leaf: &warren_testbed::pki::Leaf| {
        json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": { "name": "partner-client", "namespace": "demo" },
            "stringData": {
                "tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem, "ca.crt": hosts.root_pem,
            },
        })
        .to_string()
    };
    let secret = cluster.config_dir().join("partner-client.demo.yaml");
    std::fs::write(&secret, credential(&waypoint_cert))?;
    let config = cluster.config_dir().join("egress.demo.yaml");
    std::fs::write(&config, entries(&simple(&path(&root))))?;
    let waypoint = egress.start_waypoint()?;
    let client = cluster.pod("client")?.clone();
    let logs = || format!("{}\nwaypoint:\n{}", mesh.logs(), waypoint.output());

    // SIMPLE: the client speaks plain HTTP; the host sees TLS for its name,
    // HTTP/1.1 agreed by ALPN (the entry's port is `http`), no client
    // certificate.
    let mut answer = (0, Value::Null);
    eventually(Duration::from_secs(20), "HTTPS to the secure host", || {
        answer = get(&client, SECURE_VIP)?;
        Ok(answer.0 == 200)
    })
    .with_context(|| format!("last answer: {answer:?}\n{}", logs()))?;
    let tls = &answer.1["tls"];
    eprintln!("SIMPLE: the host saw {tls}");
    ensure!(
        answer.1["version"] == "secure"
            && tls["sni"] == SECURE
            && tls["alpn"] == "http/1.1"
            && tls["client_certificate"] == false,
        "the host must see TLS for its name from the waypoint: {}",
        answer.1
    );

    // MUTUAL: the waypoint shows the Secret's client certificate to the
    // host that asks for one.
    let answer = get(&client, MUTUAL_VIP)?;
    eprintln!("MUTUAL (credentialName): {} {}", answer.0, answer.1["tls"]);
    ensure!(
        answer.0 == 200 && answer.1["tls"]["client_certificate"] == true,
        "the host asking for a client certificate must get the Secret's: {answer:?}\n{}",
        logs()
    );
    // The Secret renewed with a certificate the host does not trust: in
    // force on the next connections (refused), with no change to the rule;
    // then back.
    std::fs::write(&secret, credential(&stranger_cert))?;
    eventually(
        Duration::from_secs(20),
        "the renewed Secret in force",
        || Ok(get(&client, MUTUAL_VIP)?.0 == 503),
    )
    .with_context(logs)?;
    // Refused by the host for its certificate, not for want of the Secret:
    // the cluster read it and has no error of its own.
    let settings = tls_settings(
        &cluster.pod("waypoint")?.sandbox,
        "credential_name",
        "partner-client",
    )?;
    ensure!(
        settings
            .iter()
            .all(|tls| tls["credentials_read"] == json!(["partner-client"])
                && tls["error"].is_null())
            && !settings.is_empty(),
        "the renewed Secret read, without error: {settings:?}"
    );
    std::fs::write(&secret, credential(&waypoint_cert))?;
    eventually(Duration::from_secs(20), "the Secret back", || {
        Ok(get(&client, MUTUAL_VIP)?.0 == 200)
    })
    .with_context(logs)?;

    // The entry's subjectAltNames check the host's certificate where the
    // rule lists none: a certificate for the host, from the trusted CA, is
    // refused when it carries none of them, and accepted when it does.
    std::fs::write(
        &config,
        entries_naming("[files.partner.example]", &simple(&path(&root))),
    )?;
    eventually(
        Duration::from_secs(20),
        "a certificate without the entry's names refused",
        || Ok(get(&client, SECURE_VIP)?.0 == 503),
    )
    .with_context(logs)?;
    let settings = tls_settings(&cluster.pod("waypoint")?.sandbox, "server_name", SECURE)?;
    ensure!(
        !settings.is_empty()
            && settings.iter().all(|tls| tls["subject_alt_names"]
                == json!(["files.partner.example"])
                && tls["subject_alt_names_from"] == "ServiceEntry"),
        "/clusters shows the entry's names in force: {settings:?}"
    );
    std::fs::write(
        &config,
        entries_naming(
            &format!("[files.partner.example, {SECURE}]"),
            &simple(&path(&root)),
        ),
    )?;
    eventually(
        Duration::from_secs(20),
        "a certificate with one of the entry's names accepted",
        || Ok(get(&client, SECURE_VIP)?.0 == 200),
    )
    .with_context(logs)?;

    // A host the rule's CA does not vouch for is refused (503), not reached
    // in plaintext or without a check.
    std::fs::write(&config, entries(&simple(&path(&other_root))))?;
    eventually(
        Duration::from_secs(20),
        "a host the CA does not vouch for",
        || Ok(get(&client, SECURE_VIP)?.0 == 503),
    )
    .with_context(logs)?;
    let report = load(
        &client,
        &format!("http://{SECURE_VIP}/hello"),
        &["-n", "10"],
    )?;
    ensure!(
        count_status(&report, 503) == 10,
        "every request to an untrusted host refused: {report}"
    );

    // Settings the waypoint cannot honour fail closed: a Secret that does
    // not exist is reported, and the host is not reached at all.
    std::fs::write(
        &config,
        entries("{ mode: SIMPLE, credentialName: secure-ca }"),
    )?;
    eventually(Duration::from_secs(20), "credentialName refused", || {
        Ok(get(&client, SECURE_VIP)?.0 == 503
            && waypoint.output().contains("credentialName \"secure-ca\""))
    })
    .with_context(logs)?;
    let connections = || servers[0].output().matches("connection accepted").count();
    let before = connections();
    ensure!(
        before > 0,
        "the host logs its connections (the phases before connected)"
    );
    let report = load(
        &client,
        &format!("http://{SECURE_VIP}/hello"),
        &["-n", "10"],
    )?;
    ensure!(
        count_status(&report, 503) == 10 && connections() == before,
        "refused without a connection to the host ({} new): {report}",
        connections() - before
    );
    let out = cluster.pod("waypoint")?.sandbox.exec(
        "curl",
        ["-sS", "--max-time", "5", "http://127.0.0.1:15000/clusters"],
    )?;
    let dump = String::from_utf8_lossy(&out.stdout);
    ensure!(
        dump.contains("the agent sent no Secret"),
        "/clusters says why the cluster refuses: {dump}"
    );
    Ok(())
}

/// A WorkloadEntry `name` of `demo` at `address` with `app`'s label, its
/// `http` port `port`, as `version`.
fn workload_entry(name: &str, address: &str, app: &str, port: u16, version: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n\
         metadata: {{ name: {name}, namespace: demo }}\n\
         spec: {{ address: {address}, ports: {{ http: {port} }}, labels: {{ app: {app}, version: {version} }}, serviceAccount: {app} }}\n"
    )
}

const LEGACY_SERVICE_VIP: &str = "10.96.250.30";
const LEGACY_ENTRY_VIP: &str = "10.96.250.31";

/// A server outside the cluster, described by a WorkloadEntry, is reached
/// through the Kubernetes Service whose selector picks it and through a
/// ServiceEntry's workloadSelector, on the port the entry names; a change
/// to the entry moves both, and without it both are gone.
#[test]
fn a_workload_entry_is_an_endpoint_of_the_services_that_select_it() -> Result<()> {
    require_root()?;
    let egress = egress_cluster()?;
    let Egress {
        cluster,
        mesh,
        node,
        ..
    } = &egress;
    let ip = node.ip.to_string();
    let _servers = [
        egress.serve(
            &["http", "--listen", &format!("{ip}:8091"), "--version", "v1"],
            8091,
        )?,
        egress.serve(
            &["http", "--listen", &format!("{ip}:8092"), "--version", "v2"],
            8092,
        )?,
    ];
    let services = format!(
        "apiVersion: v1\nkind: Service\n\
         metadata: {{ name: legacy, namespace: demo }}\n\
         spec: {{ clusterIP: {LEGACY_SERVICE_VIP}, selector: {{ app: legacy }}, ports: [{{ name: http, port: 80, targetPort: 8080 }}] }}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{ name: legacy, namespace: demo }}\n\
         spec: {{ hosts: [legacy.internal], addresses: [{LEGACY_ENTRY_VIP}], ports: [{{ number: 80, name: http, protocol: HTTP }}],\n\
         resolution: STATIC, workloadSelector: {{ labels: {{ app: legacy }} }} }}\n"
    );
    let dir = cluster.config_dir();
    std::fs::write(dir.join("legacy.demo.yaml"), services)?;
    let entry = dir.join("workloadentry.demo.legacy.yaml");
    std::fs::write(&entry, workload_entry("legacy", &ip, "legacy", 8091, "v1"))?;
    let client = cluster.pod("client")?.clone();
    let versions = |client: &warren_testbed::Pod| -> Result<[(u16, String); 2]> {
        Ok([LEGACY_SERVICE_VIP, LEGACY_ENTRY_VIP].map(|vip| {
            let (status, body) = get(client, vip).unwrap_or((0, Value::Null));
            (
                status,
                body["version"].as_str().unwrap_or_default().to_owned(),
            )
        }))
    };
    let answered = |version: &str| [(200, version.to_owned()), (200, version.to_owned())];
    let mut last = versions(&client)?;
    eventually(
        Duration::from_secs(20),
        "the entry behind both Services",
        || {
            last = versions(&client)?;
            Ok(last == answered("v1"))
        },
    )
    .with_context(|| format!("last answers: {last:?}\n{}", mesh.logs()))?;

    // The entry moves to its other port: both Services follow.
    std::fs::write(&entry, workload_entry("legacy", &ip, "legacy", 8092, "v2"))?;
    eventually(Duration::from_secs(20), "the entry's new port", || {
        last = versions(&client)?;
        Ok(last == answered("v2"))
    })
    .with_context(|| format!("last answers: {last:?}\n{}", mesh.logs()))?;

    // Without it, neither Service has an endpoint: refused, while the
    // client still reaches the server by its own address.
    std::fs::remove_file(&entry)?;
    eventually(Duration::from_secs(20), "no endpoint left", || {
        last = versions(&client)?;
        Ok(last.iter().all(|(status, _)| *status == 0))
    })
    .with_context(|| format!("last answers: {last:?}\n{}", mesh.logs()))?;
    let (status, body) = get(&client, &format!("{ip}:8092"))?;
    ensure!(
        status == 200 && body["version"] == "v2",
        "the server itself still answers the client: {status} {body}"
    );
    Ok(())
}

const INVENTORY_VIP: &str = "10.96.250.32";

/// WorkloadEntries on the two nodes' own addresses behind a ServiceEntry
/// through the waypoint: a DestinationRule's subsets select them by their
/// labels, and the waypoint lists both as the host's endpoints.
#[test]
fn the_waypoint_picks_workload_entries_by_their_labels() -> Result<()> {
    require_root()?;
    let egress = egress_cluster()?;
    let Egress {
        cluster,
        mesh,
        node,
        ..
    } = &egress;
    let other = cluster.node(0)?.clone();
    let (_servers, v1, v2) = egress.serve_versions((8093, 8094))?;
    let config = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{ name: inventory, namespace: demo, labels: {{ istio.io/use-waypoint: waypoint }} }}\n\
         spec: {{ hosts: [inventory.internal], addresses: [{INVENTORY_VIP}], ports: [{{ number: 80, name: http, protocol: HTTP }}],\n\
         resolution: STATIC, workloadSelector: {{ labels: {{ app: inventory }} }} }}\n\
         ---\n{}---\n{}\
         ---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
         metadata: {{ name: inventory, namespace: demo }}\n\
         spec:\n  host: inventory.internal\n  \
         subsets: [{{ name: v1, labels: {{ version: v1 }} }}, {{ name: v2, labels: {{ version: v2 }} }}]\n\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n\
         metadata: {{ name: inventory, namespace: demo }}\n\
         spec:\n  hosts: [inventory.internal]\n  http:\n  \
         - match: [{{ headers: {{ x-canary: {{ exact: \"yes\" }} }} }}]\n    \
           route: [{{ destination: {{ host: inventory.internal, subset: v2 }} }}]\n  \
         - route: [{{ destination: {{ host: inventory.internal, subset: v1 }} }}]\n",
        workload_entry(
            "inventory-1",
            &other.ip.to_string(),
            "inventory",
            8093,
            "v1"
        ),
        workload_entry("inventory-2", &node.ip.to_string(), "inventory", 8094, "v2"),
    );
    std::fs::write(cluster.config_dir().join("inventory.demo.yaml"), config)?;
    let waypoint = egress.start_waypoint()?;
    let client = cluster.pod("client")?.clone();
    let url = format!("http://{INVENTORY_VIP}/items");
    let logs = || format!("{}\nwaypoint:\n{}", mesh.logs(), waypoint.output());

    let mut report = Value::Null;
    eventually(Duration::from_secs(20), "the canary subset", || {
        report = load(
            &client,
            &url,
            &["-n", "20", "-c", "2", "-H", "x-canary: yes"],
        )?;
        Ok(count_version(&report, "v2") == 20)
    })
    .with_context(|| format!("last report: {report}\n{}", logs()))?;
    let report = load(&client, &url, &["-n", "20", "-c", "2"])?;
    ensure!(
        count_version(&report, "v1") == 20,
        "the other requests go to subset v1, the entry on node 0: {report}\n{}",
        logs()
    );
    // /clusters lists both entries as the host's endpoints.
    let mut found: Vec<String> = clusters_objects(&cluster.pod("waypoint")?.sandbox, |o| {
        o.contains_key("address") && o.contains_key("weight")
    })?
    .iter()
    .filter_map(|e| Some(e["address"].as_str()?.to_owned()))
    .collect();
    found.sort();
    found.dedup();
    let mut expected = vec![v1, v2];
    expected.sort();
    ensure!(found == expected, "the waypoint's endpoints: {found:?}");
    Ok(())
}

/// [`fetch`], the body read as JSON.
fn get_marked(client: &warren_testbed::Pod, target: &str) -> Result<(u16, Value, Option<String>)> {
    let (status, body, marked) = fetch(client, target)?;
    Ok((
        status,
        serde_json::from_str(&body).unwrap_or(Value::Null),
        marked,
    ))
}

const OTHER_VIP: &str = "10.96.250.41";

/// A ServiceEntry resolved `NONE` for a subnet's ports, through the
/// waypoint: the waypoint applies the host's routes, then sends each
/// request (HTTP port) or connection (TCP port) where its client dialled
/// (Envoy's original-destination cluster), here either node's own address
/// in the block. Another host's route to the entry never dials there.
#[test]
fn the_waypoint_sends_a_none_entrys_requests_where_they_were_dialled() -> Result<()> {
    require_root()?;
    let egress = egress_cluster()?;
    let Egress {
        cluster,
        mesh,
        node,
        ..
    } = &egress;
    let other = cluster.node(0)?.clone();
    let (_versions, v1, v2) = egress.serve_versions((9003, 9003))?;
    let _servers = [
        egress.serve(
            &[
                "http",
                "--listen",
                &format!("{}:9004", node.ip),
                "--version",
                "tcp",
            ],
            9004,
        )?,
        egress.serve(
            &[
                "http",
                "--listen",
                &format!("{}:9005", node.ip),
                "--version",
                "other",
            ],
            9005,
        )?,
    ];
    let [a, b, c, _] = other.ip.octets();
    ensure!(
        node.ip.octets()[..3] == [a, b, c],
        "the nodes {} and {} share no /24",
        other.ip,
        node.ip
    );
    let block = format!("{a}.{b}.{c}.0/24");
    std::fs::write(
        cluster.config_dir().join("subnet.demo.yaml"),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{ name: subnet, namespace: demo, labels: {{ istio.io/use-waypoint: waypoint }} }}\n\
             spec: {{ hosts: [subnet.internal], addresses: [\"{block}\"], resolution: NONE,\n\
             ports: [{{ number: 9003, name: http, protocol: HTTP }}, {{ number: 9004, name: tcp, protocol: TCP }}] }}\n\
             ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n\
             metadata: {{ name: subnet, namespace: demo }}\n\
             spec:\n  hosts: [subnet.internal]\n  http:\n  \
             - headers: {{ response: {{ set: {{ x-egress: subnet }} }} }}\n    \
               route: [{{ destination: {{ host: subnet.internal }} }}]\n\
             ---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{ name: other, namespace: demo, labels: {{ istio.io/use-waypoint: waypoint }} }}\n\
             spec: {{ hosts: [other.internal], addresses: [{OTHER_VIP}], resolution: STATIC, endpoints: [{{ address: {} }}],\n\
             ports: [{{ number: 9003, name: http, protocol: HTTP, targetPort: 9005 }}] }}\n\
             ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n\
             metadata: {{ name: other, namespace: demo }}\n\
             spec:\n  hosts: [other.internal]\n  http:\n  \
             - route: [{{ destination: {{ host: subnet.internal }} }}]\n",
            node.ip
        ),
    )?;
    let waypoint = egress.start_waypoint()?;
    let client = cluster.pod("client")?.clone();
    let logs = || format!("{}\nwaypoint:\n{}", mesh.logs(), waypoint.output());
    for (target, version) in [(&v1, "v1"), (&v2, "v2")] {
        let mut last = (0, Value::Null, None);
        eventually(
            Duration::from_secs(20),
            &format!("{target} through the waypoint"),
            || {
                last = get_marked(&client, target)?;
                Ok(last.0 == 200
                    && last.1["version"] == version
                    && last.2.as_deref() == Some("subnet"))
            },
        )
        .with_context(|| format!("last answer from {target}: {last:?}\n{}", logs()))?;
    }
    // Ten more each: every request goes where it was dialled.
    for (target, version) in [(&v1, "v1"), (&v2, "v2")] {
        for _ in 0..10 {
            let (status, body, marked) = get_marked(&client, target)?;
            ensure!(
                status == 200 && body["version"] == version && marked.as_deref() == Some("subnet"),
                "{target}: {status} {body} {marked:?}"
            );
        }
    }
    // The TCP port: the connection goes where it was dialled.
    let (status, body, marked) = get_marked(&client, &format!("{}:9004", node.ip))?;
    ensure!(
        status == 200 && body["version"] == "tcp" && marked.is_none(),
        "the TCP port through the waypoint: {status} {body} {marked:?}\n{}",
        logs()
    );
    // Another host routed to the entry: its VIP is not the entry's to dial.
    let (status, body, _) = fetch(&client, &format!("{OTHER_VIP}:9003"))?;
    ensure!(
        status == 503 && body.contains("dialled to other.internal"),
        "a route from other.internal to the NONE entry must not dial other.internal's address: {status} {body}\n{}",
        logs()
    );
    // The waypoint's cluster for the host says what it is.
    let clusters = clusters_objects(&cluster.pod("waypoint")?.sandbox, |o| {
        o.get("original_destination") == Some(&json!(true))
    })?;
    ensure!(
        !clusters.is_empty(),
        "no original-destination cluster at the waypoint\n{}",
        logs()
    );
    Ok(())
}

/// A ServiceEntry switched back and forth between `NONE` and `STATIC` under
/// load: its address is the server's own and its one endpoint, so either
/// way every request reaches the same server, and none may fail while the
/// waypoint's cluster changes kind under requests in flight.
#[test]
fn an_entry_switched_between_none_and_static_under_load_drops_no_request() -> Result<()> {
    require_root()?;
    let egress = egress_cluster()?;
    let Egress {
        cluster,
        mesh,
        node,
        ..
    } = &egress;
    let target = format!("{}:9006", node.ip);
    let _server = egress.serve(&["http", "--listen", &target, "--version", "flip"], 9006)?;
    let entry = |resolution: &str| {
        let endpoints = match resolution {
            "STATIC" => format!(" endpoints: [{{ address: {} }}],", node.ip),
            _ => String::new(),
        };
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{ name: flip, namespace: demo, labels: {{ istio.io/use-waypoint: waypoint }} }}\n\
             spec: {{ hosts: [flip.internal], addresses: [{}], resolution: {resolution},{endpoints}\n\
             ports: [{{ number: 9006, name: http, protocol: HTTP }}] }}\n\
             ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n\
             metadata: {{ name: flip, namespace: demo }}\n\
             spec:\n  hosts: [flip.internal]\n  http:\n  \
             - headers: {{ response: {{ set: {{ x-egress: subnet }} }} }}\n    \
               route: [{{ destination: {{ host: flip.internal }} }}]\n",
            node.ip
        )
    };
    let file = cluster.config_dir().join("flip.demo.yaml");
    std::fs::write(&file, entry("STATIC"))?;
    // Two workers: a request may be served while a change is applied.
    let waypoint = egress.start_waypoint_with(&["--worker-threads", "2"])?;
    let client = cluster.pod("client")?.clone();
    let logs = || format!("{}\nwaypoint:\n{}", mesh.logs(), waypoint.output());
    // Both ways reach the server; the load starts under STATIC, so its
    // connections were made to a STATIC entry when it turns NONE.
    for resolution in ["NONE", "STATIC"] {
        std::fs::write(&file, entry(resolution))?;
        let mut last = (0, Value::Null, None);
        eventually(
            Duration::from_secs(20),
            &format!("{resolution} through the waypoint"),
            || {
                last = get_marked(&client, &target)?;
                Ok(last.0 == 200 && last.2.as_deref() == Some("subnet"))
            },
        )
        .with_context(|| format!("last answer: {last:?}\n{}", logs()))?;
    }
    // Load for 4 s (kept-alive connections) while the entry changes kind
    // every 150 ms, 20 times.
    let loader = {
        let client = client.clone();
        let url = format!("http://{target}/hello");
        std::thread::spawn(move || load(&client, &url, &["-d", "4s", "-c", "4"]))
    };
    let switches = 20;
    for switch in 1..=switches {
        std::thread::sleep(Duration::from_millis(150));
        // Written whole, then renamed: the agent never reads half a file.
        let next = file.with_extension("yaml.tmp");
        let resolution = if switch % 2 == 1 { "NONE" } else { "STATIC" };
        std::fs::write(&next, entry(resolution))?;
        std::fs::rename(&next, &file)?;
    }
    let report = loader
        .join()
        .map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
    // The switches were in force: the last one (STATIC) is.
    let original = || -> Result<bool> {
        let clusters = clusters_objects(&cluster.pod("waypoint")?.sandbox, |o| {
            o.get("original_destination").is_some()
                && o.get("host") == Some(&json!("flip.internal"))
        })?;
        Ok(!clusters.is_empty() && clusters.iter().all(|c| c["original_destination"] == false))
    };
    eventually(
        Duration::from_secs(10),
        "the last switch (STATIC) in force",
        original,
    )
    .with_context(logs)?;
    let total = report["requests"].as_u64().unwrap_or_default();
    eprintln!("{switches} switches between NONE and STATIC under load: {report}");
    ensure!(
        total > 100 && count_status(&report, 200) == total,
        "every request answered 200 while the entry switched {switches} times: {report}\n{}",
        logs()
    );
    Ok(())
}

/// TLS origination to a wildcard ServiceEntry host (resolution `NONE`, an
/// address block) with no `sni` in the DestinationRule: the waypoint asks
/// the server for each request's own host (Istio's auto SNI), on the port
/// the route names, and checks the certificate for that host.
#[test]
fn tls_to_a_wildcard_host_asks_for_each_requests_host() -> Result<()> {
    require_root()?;
    let egress = egress_cluster()?;
    let Egress {
        cluster,
        mesh,
        node,
        ..
    } = &egress;
    let dir = cluster.node_dir(node)?;
    let hosts = Authority::new("wildcard hosts")?;
    let root = hosts.write_root(&dir, "wild-root")?;
    let leaf = hosts.server(&["api.wild.test"])?.write(&dir, "wild")?;
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let _server = egress.serve(
        &[
            "http",
            "--listen",
            &format!("{}:9443", node.ip),
            "--version",
            "wild",
            "--tls-cert",
            &path(&leaf.cert),
            "--tls-key",
            &path(&leaf.key),
        ],
        9443,
    )?;
    let [a, b, c, _] = node.ip.octets();
    std::fs::write(
        cluster.config_dir().join("wild.demo.yaml"),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{ name: wild, namespace: demo, labels: {{ istio.io/use-waypoint: waypoint }} }}\n\
             spec: {{ hosts: [\"*.wild.test\"], addresses: [\"{a}.{b}.{c}.0/24\"], resolution: NONE,\n\
             ports: [{{ number: 9080, name: http, protocol: HTTP }}, {{ number: 9443, name: https, protocol: HTTPS }}] }}\n\
             ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n\
             metadata: {{ name: wild, namespace: demo }}\n\
             spec:\n  hosts: [\"*.wild.test\"]\n  http:\n  \
             - route: [{{ destination: {{ host: \"*.wild.test\", port: {{ number: 9443 }} }} }}]\n\
             ---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
             metadata: {{ name: wild, namespace: demo }}\n\
             spec: {{ host: \"*.wild.test\", trafficPolicy: {{ tls: {{ mode: SIMPLE, caCertificates: {} }} }} }}\n",
            path(&root)
        ),
    )?;
    let waypoint = egress.start_waypoint()?;
    let client = cluster.pod("client")?.clone();
    let logs = || format!("{}\nwaypoint:\n{}", mesh.logs(), waypoint.output());
    let get = |host: &str| -> Result<(u16, Value)> {
        let out = client.sandbox.exec(
            "curl",
            [
                "-sS",
                "--max-time",
                "5",
                "-H",
                &format!("Host: {host}"),
                "-w",
                "\n%{http_code}",
                &format!("http://{}:9080/hello", node.ip),
            ],
        )?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        Ok((
            code.trim().parse().unwrap_or(0),
            serde_json::from_str(body).unwrap_or(Value::Null),
        ))
    };
    let mut answer = (0, Value::Null);
    eventually(Duration::from_secs(20), "TLS to api.wild.test", || {
        answer = get("api.wild.test")?;
        Ok(answer.0 == 200)
    })
    .with_context(|| format!("last answer: {answer:?}\n{}", logs()))?;
    ensure!(
        answer.1["version"] == "wild" && answer.1["tls"]["sni"] == "api.wild.test",
        "the server must be asked for the request's host: {}",
        answer.1
    );
    // explain names the server the request's host asks for.
    let shown = warrenctl_waypoint_explain(
        &cluster.config_dir(),
        "demo",
        "demo/client",
        &[
            "-H",
            "Host: api.wild.test",
            &format!("http://{}:9080/hello", node.ip),
        ],
    )?;
    ensure!(
        shown.contains("server name api.wild.test"),
        "explain names the request's host as the server:\n{shown}"
    );
    // A host under the wildcard that the certificate does not carry.
    let (status, body) = get("www.wild.test")?;
    ensure!(
        status == 503,
        "a certificate without the request's host must be refused: {status} {body}\n{}",
        logs()
    );
    Ok(())
}
