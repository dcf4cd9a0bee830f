//! Gateway API HTTPRoutes at the waypoint, with real traffic: routes attached
//! to a Service (its `parentRefs`) split its requests by weight between
//! per-version Services, match headers, rewrite by whole path segments,
//! redirect, answer 500 where a rule has no backend, leave the Service's
//! other port alone (the parentRef names port 80), and leave when deleted.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use warren_e2e::{
    mesh::{eventually, service_vip, start_mesh_and_waypoint, waypoint_pod},
    workload::{count_status, count_version, load, start_app_versions},
};
use warren_testbed::{Cluster, PodSpec, ServicePort, labels, privilege::require_root};

const ROUTES_FILE: &str = "routes.demo.app.yaml";

const ROUTES: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: app, namespace: demo }
spec:
  parentRefs: [{ group: "", kind: Service, name: app, port: 80 }]
  rules:
  - matches: [{ headers: [{ name: end-user, value: jason }] }]
    backendRefs: [{ name: app-v2, port: 80 }]
  - matches: [{ path: { type: PathPrefix, value: /api } }]
    filters:
    - type: URLRewrite
      urlRewrite:
        hostname: backend.internal
        path: { type: ReplacePrefixMatch, replacePrefixMatch: /v2 }
    - type: RequestHeaderModifier
      requestHeaderModifier: { set: [{ name: x-set, value: "yes" }] }
    backendRefs: [{ name: app-v1, port: 80 }]
  - matches: [{ path: { type: Exact, value: /gone } }]
  - matches: [{ path: { type: Exact, value: /old } }]
    filters:
    - type: RequestRedirect
      requestRedirect:
        hostname: app.example
        path: { type: ReplaceFullPath, replaceFullPath: /new }
  - backendRefs:
    - { name: app-v1, port: 80, weight: 4 }
    - { name: app-v2, port: 80, weight: 1 }
"#;

#[test]
fn http_routes_split_match_and_rewrite_at_the_waypoint() -> Result<()> {
    require_root()?;
    let mut cluster = Cluster::builder().nodes(2).pods_per_node(0).up()?;
    cluster.add_namespace("demo", labels(&[("warren.io/dataplane-mode", "ambient")]))?;
    for (name, node, version) in [("app-v1", 1, "v1"), ("app-v2", 0, "v2")] {
        cluster.add_pod(PodSpec {
            name: name.into(),
            namespace: "demo".into(),
            node,
            labels: labels(&[("app", "app"), ("version", version)]),
            service_account: Some("app".into()),
        })?;
    }
    cluster.add_pod(PodSpec {
        name: "client".into(),
        namespace: "demo".into(),
        node: 0,
        labels: labels(&[("app", "client")]),
        service_account: Some("client".into()),
    })?;
    cluster.add_pod(waypoint_pod("demo", 1))?;
    let http = || {
        vec![ServicePort {
            name: "http".into(),
            port: 80,
            target_port: 8080,
        }]
    };
    // The Service clients call (a second port the routes do not name),
    // and one per version for the routes to send to (Gateway API has no
    // subsets).
    let mut ports = http();
    ports.push(ServicePort {
        name: "http-alt".into(),
        port: 8081,
        target_port: 8080,
    });
    cluster.add_service("demo", "app", labels(&[("app", "app")]), ports)?;
    for version in ["v1", "v2"] {
        let selector = labels(&[("app", "app"), ("version", version)]);
        cluster.add_service("demo", &format!("app-{version}"), selector, http())?;
    }
    let (mesh, waypoint) = start_mesh_and_waypoint(&cluster, "demo")?;
    let _servers = start_app_versions(&cluster, &["v1", "v2"])?;
    let url = format!("http://{}/", service_vip(&cluster, "app")?);
    let client = cluster.pod("client")?.clone();
    let logs = || format!("{}\nwaypoint:\n{}", mesh.logs(), waypoint.output());
    let curl = |args: &[&str]| -> Result<(u16, Value)> {
        let out = client.sandbox.exec(
            "curl",
            ["-sS", "--max-time", "5", "-w", "\n%{http_code}"]
                .iter()
                .chain(args),
        )?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').context("no status")?;
        let code = code.trim().parse().unwrap_or(0);
        Ok((code, serde_json::from_str(body).unwrap_or(Value::Null)))
    };

    std::fs::write(cluster.config_dir().join(ROUTES_FILE), ROUTES)?;
    eventually(Duration::from_secs(20), "the routes in force", || {
        Ok(curl(&[&format!("{url}gone")])?.0 == 500)
    })
    .with_context(logs)?;

    // Weights 4:1 are 80/20, within ±3 points over 2 000 requests.
    let report = load(&client, &url, &["-n", "2000", "-c", "8"])?;
    let (v1, v2) = (count_version(&report, "v1"), count_version(&report, "v2"));
    eprintln!("HTTPRoute weights 4:1 through the waypoint: v1 {v1}, v2 {v2} of 2000");
    ensure!(
        v1 + v2 == 2000 && (340..=460).contains(&v2),
        "4:1 split: {v1} v1, {v2} v2 of 2000\n{report}\n{}",
        logs()
    );

    // A header match, ahead of the split.
    let report = load(&client, &url, &["-n", "50", "-H", "end-user: jason"])?;
    ensure!(
        count_version(&report, "v2") == 50,
        "end-user: jason must reach v2 only: {report}"
    );

    // A prefix matches whole segments, and its rewrite keeps what follows.
    let (code, seen) = curl(&[&format!("{url}api/items")])?;
    ensure!(
        code == 200
            && seen["path"] == "/v2/items"
            && seen["headers"]["host"] == "backend.internal"
            && seen["headers"]["x-set"] == "yes",
        "/api/items must reach v1 as /v2/items: {code} {seen}\n{}",
        logs()
    );
    let (code, seen) = curl(&[&format!("{url}apix")])?;
    ensure!(
        code == 200 && seen["path"] == "/apix" && seen["headers"]["x-set"].is_null(),
        "/apix is not under /api: {code} {seen}"
    );
    let report = load(&client, &format!("{url}gone"), &["-n", "20"])?;
    ensure!(
        count_status(&report, 500) == 20,
        "a rule without backends answers 500: {report}"
    );
    // The other port is not the route's: straight to the Service.
    let vip = service_vip(&cluster, "app")?;
    let (code, _) = curl(&[&format!("http://{vip}:8081/gone")])?;
    ensure!(code == 200, "port 8081 is not the route's: {code}");
    // A redirect, answered by the waypoint (302, the Gateway API's default).
    let out = client.sandbox.exec(
        "curl",
        [
            "-sS",
            "-o",
            "/dev/null",
            "--max-time",
            "5",
            "-w",
            "%{http_code} %{redirect_url}",
            &format!("{url}old"),
        ],
    )?;
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        answer.starts_with("302 http://app.example") && answer.ends_with("/new"),
        "/old must redirect to app.example/new: {answer}\n{}",
        logs()
    );

    // Without the route the Service's own endpoints answer again.
    std::fs::remove_file(cluster.config_dir().join(ROUTES_FILE))?;
    eventually(Duration::from_secs(20), "the routes withdrawn", || {
        Ok(curl(&[&format!("{url}gone")])?.0 == 200)
    })
    .with_context(logs)?;
    Ok(())
}
