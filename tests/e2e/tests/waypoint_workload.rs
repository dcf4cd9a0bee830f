//! A waypoint for workloads (`istio.io/waypoint-for: workload`, named by the
//! namespace's `istio.io/use-waypoint`), with real traffic: requests
//! addressed to a pod itself (as a StatefulSet's peers or a
//! headless Service's clients send them) pass the waypoint, whose
//! AuthorizationPolicy decides each one, and reach the pod; so does the
//! traffic of the pod's Service, which has no waypoint of its own (ztunnel
//! picks the pod, then its waypoint); and a pod that opts out
//! (`istio.io/use-waypoint: none`) is reached directly again.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use warren_e2e::{
    agent::warrenctl_text,
    mesh::{eventually, metric_sum, start_mesh, start_waypoint, waypoint_metrics, waypoint_pod},
    workload::{count_status, load, start_http_server},
};
use warren_testbed::{Cluster, PodSpec, ServicePort, labels, manifests, privilege::require_root};

const NS: &str = "shop";

/// Denies `/private` to everyone, at the waypoint.
const PRIVATE: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: private, namespace: shop }
spec:
  targetRefs: [{ group: gateway.networking.k8s.io, kind: Gateway, name: waypoint }]
  action: DENY
  rules: [{ to: [{ operation: { paths: ["/private"] } }] }]
"#;

#[test]
fn traffic_to_a_pod_itself_passes_its_waypoint() -> Result<()> {
    require_root()?;
    let mut cluster = Cluster::builder().nodes(2).pods_per_node(0).up()?;
    cluster.add_namespace(NS, labels(&[("warren.io/dataplane-mode", "ambient")]))?;
    for (name, node, app) in [("db-0", 1, "db"), ("client", 0, "client")] {
        cluster.add_pod(PodSpec {
            name: name.into(),
            namespace: NS.into(),
            node,
            labels: labels(&[("app", app)]),
            service_account: Some(app.into()),
        })?;
    }
    cluster.add_pod(waypoint_pod(NS, 1))?;
    // The Service declares what port 8080 speaks: HTTP, so the waypoint
    // reads requests on it even when the pod is addressed directly.
    let db = cluster
        .add_service(
            NS,
            "db",
            labels(&[("app", "db")]),
            vec![ServicePort {
                name: "http".into(),
                port: 80,
                target_port: 8080,
            }],
        )?
        .clone();
    let mut mesh = start_mesh(&cluster)?;
    mesh.wait_ready(Duration::from_secs(30))
        .with_context(|| mesh.logs())?;
    let pod = cluster.pod("db-0")?.clone();
    let client = cluster.pod("client")?.clone();
    let _server = start_http_server(&cluster, &pod, 8080, &[])?;
    // A port no Service declares.
    let _undeclared = start_http_server(&cluster, &pod, 9090, &[])?;
    let undeclared_url = format!("http://{}:9090/", pod.ip);
    let pod_url = format!("http://{}:8080/", pod.ip);
    let service_url = format!("http://{}/", db.cluster_ip);
    let status = |url: &str, path: &str, want: u64| -> Result<bool> {
        let report = load(
            &client,
            &format!("{url}{path}"),
            &["-n", "10", "-c", "2", "--timeout", "2s"],
        )?;
        Ok(count_status(&report, want) == 10)
    };

    // No waypoint yet: the pod answers every path.
    eventually(Duration::from_secs(20), "the pod reached directly", || {
        status(&pod_url, "private", 200)
    })
    .with_context(|| mesh.logs())?;

    let config_dir = cluster.config_dir();
    std::fs::write(config_dir.join("authz.shop.private.yaml"), PRIVATE)?;
    let dir = config_dir.to_string_lossy();
    let applied = warrenctl_text(&[
        "waypoint",
        "apply",
        "-n",
        NS,
        "--for",
        "workload",
        "--config-dir",
        &dir,
    ])?;
    let gateway = std::fs::read_to_string(config_dir.join("gateway.shop.waypoint.yaml"))?;
    ensure!(
        gateway.contains("istio.io/waypoint-for: workload"),
        "warrenctl wrote ({applied}):\n{gateway}"
    );
    let waypoint_pod = cluster.pod("waypoint")?.clone();
    let waypoint = start_waypoint(&cluster, &waypoint_pod, NS).with_context(|| mesh.logs())?;
    // As in Istio, the namespace (or a pod) asks for it by name.
    cluster.add_namespace(
        NS,
        labels(&[
            ("warren.io/dataplane-mode", "ambient"),
            ("istio.io/use-waypoint", "waypoint"),
        ]),
    )?;
    let logs = || format!("{}\nwaypoint:\n{}", mesh.logs(), waypoint.output());

    // Addressed to the pod: through the waypoint, whose policy denies
    // /private and lets the rest reach the pod.
    eventually(
        Duration::from_secs(20),
        "/private denied at the waypoint",
        || status(&pod_url, "private", 403),
    )
    .with_context(logs)?;
    ensure!(
        status(&pod_url, "public", 200)?,
        "the pod behind its waypoint\n{}",
        logs()
    );
    let metrics = waypoint_metrics(&waypoint_pod)?;
    // No Service was dialled (its labels say `unknown`); a denied request
    // reached no workload.
    let to_pod = |code: &str, workload: &str| {
        metric_sum(
            &metrics,
            "istio_requests_total",
            &[
                ("source_workload", "client"),
                ("destination_service", "unknown"),
                ("destination_workload", workload),
                ("response_code", code),
            ],
        )
    };
    let (answered, denied) = (to_pod("200", "db-0"), to_pod("403", "unknown"));
    eprintln!("through the waypoint: {answered} answered 200 by db-0, {denied} denied with 403");
    ensure!(
        answered >= 10.0 && denied >= 10.0,
        "the waypoint's metrics count the pod's requests:\n{metrics}"
    );

    // The Service has no waypoint of its own, and the endpoint ztunnel
    // picks is that pod: its traffic cannot go around the pod's waypoint.
    ensure!(
        status(&service_url, "private", 403)? && status(&service_url, "public", 200)?,
        "the pod's waypoint decides its Service's traffic too\n{}",
        logs()
    );

    // A port no Service declares is opaque TCP at the waypoint: the DENY
    // rule, whose path a connection does not have, denies every connection
    // (fail closed, as Istio decides TCP).
    let report = load(
        &client,
        &format!("{undeclared_url}public"),
        &["-n", "5", "-c", "1", "--timeout", "2s"],
    )?;
    ensure!(
        count_status(&report, 200) == 0 && waypoint.output().contains("deny_policy"),
        "the waypoint must refuse TCP it cannot decide on paths: {report}\n{}",
        logs()
    );

    // The pod opts out: reached directly again.
    let mut opted_out = pod.clone();
    opted_out
        .labels
        .insert("istio.io/use-waypoint".into(), "none".into());
    manifests::write_pod(&config_dir, &opted_out, cluster.node(1)?)?;
    eventually(Duration::from_secs(20), "the pod reached directly", || {
        status(&pod_url, "private", 200)
    })
    .with_context(logs)?;
    ensure!(
        status(&undeclared_url, "public", 200)?,
        "the undeclared port reached directly\n{}",
        logs()
    );
    Ok(())
}
