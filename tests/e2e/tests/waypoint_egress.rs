//! A waypoint for traffic leaving the cluster: a ServiceEntry labelled
//! `istio.io/use-waypoint` sends its host's traffic through the namespace's
//! waypoint, which applies the host's VirtualService and resolves the host
//! (`resolution: DNS`) to reach it: Istio's egress waypoint. A Gateway API
//! HTTPRoute attached to the entry routes its host there too.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use warren_e2e::mesh::waypoint_pod;
use warren_e2e::{
    mesh::{
        MeshOptions, eventually, metric_sum, start_mesh_with, start_waypoint_with,
        waypoint_gateway, waypoint_metrics,
    },
    workload::{count_status, load},
};
use warren_testbed::{Cluster, PodSpec, labels, privilege::require_root};

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

#[test]
fn a_service_entry_labelled_for_the_waypoint_leaves_through_it() -> Result<()> {
    require_root()?;
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
    // Outside the cluster, on node 1's own address: the API, and a DNS
    // server that names it for the waypoint and the ztunnels.
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
    let sample = warren_testbed::binaries::path("warren-sample")?;
    let sample = sample.to_string_lossy();
    let api = format!("{}:8080", node.ip);
    let record = format!("{HOST}={}", node.ip);
    let mut servers = [
        cluster.spawn(
            &node.sandbox,
            &sample,
            &["http", "--listen", &api, "--version", "external"],
        )?,
        cluster.spawn(
            &node.sandbox,
            &sample,
            &["dns", "--listen", &dns, "--record", &record],
        )?,
    ];
    eventually(
        Duration::from_secs(10),
        "the API and DNS servers on node 1",
        || {
            for server in &mut servers {
                server.check_running()?;
            }
            let tcp = node.sandbox.exec("ss", ["-Hltn", "sport = :8080"])?;
            let udp = node.sandbox.exec("ss", ["-Hlun", "sport = :5353"])?;
            Ok(!tcp.stdout.is_empty() && !udp.stdout.is_empty())
        },
    )?;

    std::fs::write(
        cluster.config_dir().join("gateway.demo.waypoint.yaml"),
        waypoint_gateway("demo"),
    )?;
    std::fs::write(
        cluster.config_dir().join("egress.demo.yaml"),
        egress_config("istio.io/use-waypoint: waypoint"),
    )?;
    let waypoint_pod = cluster.pod("waypoint")?.clone();
    let _waypoint = start_waypoint_with(&cluster, &waypoint_pod, "demo", &["--dns-server", &dns])
        .with_context(|| mesh.logs())?;
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
