//! Gateway API HTTPRoutes at the waypoint, with real traffic: routes attached
//! to a Service (its `parentRefs`) split its requests by weight between
//! per-version Services, match headers, rewrite by whole path segments,
//! redirect, answer 500 where a rule has no backend, leave the Service's
//! other port alone (the parentRef names port 80), and leave when deleted;
//! a GRPCRoute matches calls by their method; a route sends to another
//! namespace's Service only while a ReferenceGrant there permits it.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use warren_e2e::{
    mesh::{demo_cluster_with_waypoint_pod, eventually, service_vip, start_mesh_and_waypoint},
    workload::{count_status, count_version, load, start_app_versions, start_http_server},
};
use warren_testbed::{PodSpec, ServicePort, labels, privilege::require_root};

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
  - matches: [{ path: { type: PathPrefix, value: /ui } }]
    filters:
    - type: CORS
      cors:
        allowOrigins: ["https://*.shop.example"]
        allowMethods: [GET]
        maxAge: 60
    backendRefs: [{ name: app-v1, port: 80 }]
  - matches: [{ path: { type: PathPrefix, value: /legacy } }]
    filters:
    - type: RequestRedirect
      requestRedirect:
        path: { type: ReplacePrefixMatch, replacePrefixMatch: /modern }
  - backendRefs:
    - { name: app-v1, port: 80, weight: 4 }
    - { name: app-v2, port: 80, weight: 1 }
"#;

#[test]
fn http_routes_split_match_and_rewrite_at_the_waypoint() -> Result<()> {
    require_root()?;
    let mut cluster = demo_cluster_with_waypoint_pod(&[
        ("app-v1", 1, &[("app", "app"), ("version", "v1")], "app"),
        ("app-v2", 0, &[("app", "app"), ("version", "v2")], "app"),
        ("client", 0, &[("app", "client")], "client"),
    ])?;
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
    let redirected = |path: &str| -> Result<String> {
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
                &format!("{url}{path}"),
            ],
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let answer = redirected("old")?;
    ensure!(
        answer.starts_with("302 http://app.example") && answer.ends_with("/new"),
        "/old must redirect to app.example/new: {answer}\n{}",
        logs()
    );
    // A prefix replaced, whole segments, the rest of the path and the
    // query kept; `/legacyx` is not under `/legacy`.
    let answer = redirected("legacy/items/7?color=red")?;
    ensure!(
        answer.starts_with("302 http://") && answer.ends_with("/modern/items/7?color=red"),
        "/legacy/items/7 must redirect to /modern/items/7: {answer}\n{}",
        logs()
    );
    // A CORS filter: a preflight from an origin under the wildcard is
    // answered by the waypoint.
    let out = client.sandbox.exec(
        "curl",
        [
            "-sS",
            "-i",
            "--max-time",
            "5",
            "-X",
            "OPTIONS",
            "-H",
            "origin: https://www.shop.example",
            "-H",
            "access-control-request-method: GET",
            &format!("{url}ui/x"),
        ],
    )?;
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    ensure!(
        head.starts_with("http/1.1 200")
            && head.contains("access-control-allow-origin: https://www.shop.example")
            && head.contains("access-control-max-age: 60")
            && !head.contains("x-sample-version"),
        "the CORS filter's preflight answered by the waypoint:\n{head}\n{}",
        logs()
    );
    let answer = redirected("legacy")?;
    ensure!(
        answer.ends_with("/modern"),
        "/legacy must redirect to /modern: {answer}"
    );
    let answer = redirected("legacyx")?;
    ensure!(
        !answer.starts_with("302"),
        "/legacyx is not under /legacy: {answer}"
    );

    // Without the route the Service's own endpoints answer again.
    std::fs::remove_file(cluster.config_dir().join(ROUTES_FILE))?;
    eventually(Duration::from_secs(20), "the routes withdrawn", || {
        Ok(curl(&[&format!("{url}gone")])?.0 == 200)
    })
    .with_context(logs)?;
    Ok(())
}

/// Sends `grpc.health.v1.Health/Check` calls elsewhere, or (with another
/// method named) leaves them to the default rule.
fn grpc_route(method: &str) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{ name: grpc, namespace: demo }}
spec:
  parentRefs: [{{ group: "", kind: Service, name: grpc, port: 9090 }}]
  rules:
  - matches: [{{ method: {{ service: grpc.health.v1.Health, method: {method} }} }}]
    backendRefs: [{{ name: grpc-nowhere, port: 9090 }}]
  - backendRefs: [{{ name: grpc, port: 9090 }}]
"#
    )
}

#[test]
fn a_grpc_route_matches_calls_by_method() -> Result<()> {
    require_root()?;
    let mut cluster = demo_cluster_with_waypoint_pod(&[
        ("grpc-0", 1, &[("app", "grpc")], "grpc"),
        ("client", 0, &[("app", "client")], "client"),
    ])?;
    let grpc_port = || {
        vec![ServicePort {
            name: "grpc".into(),
            port: 9090,
            target_port: 9090,
        }]
    };
    cluster.add_service("demo", "grpc", labels(&[("app", "grpc")]), grpc_port())?;
    // A Service with no endpoints: a call sent there is UNAVAILABLE.
    cluster.add_service(
        "demo",
        "grpc-nowhere",
        labels(&[("app", "nowhere")]),
        grpc_port(),
    )?;
    let (mesh, waypoint) = start_mesh_and_waypoint(&cluster, "demo")?;
    let sample = warren_testbed::binaries::path("warren-sample")?;
    let sample = sample.to_string_lossy().into_owned();
    let server_pod = cluster.pod("grpc-0")?.clone();
    let mut server = cluster.spawn(
        &server_pod.sandbox,
        &sample,
        &["grpc-server", "--listen", "[::]:9090"],
    )?;
    warren_e2e::workload::wait_listening(&server_pod, 9090, &mut server)?;
    let url = format!("http://{}:9090", service_vip(&cluster, "grpc")?);
    let client = cluster.pod("client")?.clone();
    let logs = || format!("{}\nwaypoint:\n{}", mesh.logs(), waypoint.output());
    // The gRPC status of one Check call.
    let check = || -> Result<i64> {
        let out = client
            .sandbox
            .exec(&sample, ["grpc-check", "--url", url.as_str()])?;
        ensure!(
            out.status.success(),
            "grpc-check: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: Value = serde_json::from_slice(&out.stdout).context("grpc-check's JSON")?;
        answer["code"].as_i64().context("no code")
    };
    ensure!(check()? == 0, "Check before any route\n{}", logs());

    let file = cluster.config_dir().join("grpcroutes.demo.grpc.yaml");
    std::fs::write(&file, grpc_route("Check"))?;
    eventually(Duration::from_secs(20), "Check sent nowhere", || {
        Ok(check()? == 14)
    })
    .with_context(logs)?;
    // Another method named: Check takes the default rule.
    std::fs::write(&file, grpc_route("Watch"))?;
    eventually(Duration::from_secs(20), "Check by the default rule", || {
        Ok(check()? == 0)
    })
    .with_context(logs)?;
    for _ in 0..5 {
        ensure!(check()? == 0, "Check must stay on the default rule");
    }
    drop(server);
    Ok(())
}

/// Half of `app`'s requests to namespace `data`'s `app`.
const ACROSS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: across, namespace: demo }
spec:
  parentRefs: [{ group: "", kind: Service, name: app, port: 80 }]
  rules:
  - backendRefs:
    - { name: app-v1, port: 80 }
    - { name: app, namespace: data, port: 80 }
"#;

/// `data` lets HTTPRoutes of `demo` send to its Service `app`.
const GRANT: &str = r#"
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: { name: from-demo, namespace: data }
spec:
  from: [{ group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: demo }]
  to: [{ group: "", kind: Service, name: app }]
"#;

#[test]
fn a_route_sends_to_another_namespace_only_with_a_reference_grant() -> Result<()> {
    require_root()?;
    let mut cluster = demo_cluster_with_waypoint_pod(&[
        ("app-v1", 1, &[("app", "app"), ("version", "v1")], "app"),
        ("client", 0, &[("app", "client")], "client"),
    ])?;
    cluster.add_namespace("data", labels(&[("warren.io/dataplane-mode", "ambient")]))?;
    cluster.add_pod(PodSpec {
        name: "app-v3".into(),
        namespace: "data".into(),
        node: 1,
        labels: labels(&[("app", "app"), ("version", "v3")]),
        service_account: Some("app".into()),
    })?;
    let http = || {
        vec![ServicePort {
            name: "http".into(),
            port: 80,
            target_port: 8080,
        }]
    };
    let selector = || labels(&[("app", "app")]);
    cluster.add_service("demo", "app", selector(), http())?;
    cluster.add_service("demo", "app-v1", selector(), http())?;
    cluster.add_service("data", "app", selector(), http())?;
    let (mesh, waypoint) = start_mesh_and_waypoint(&cluster, "demo")?;
    let mut servers = start_app_versions(&cluster, &["v1"])?;
    let v3 = cluster.pod("data/app-v3")?.clone();
    servers.push(start_http_server(
        &cluster,
        &v3,
        8080,
        &["--version", "v3", "--name", "app-v3"],
    )?);
    let url = format!("http://{}/", service_vip(&cluster, "app")?);
    let client = cluster.pod("client")?.clone();
    let logs = || format!("{}\nwaypoint:\n{}", mesh.logs(), waypoint.output());
    let counts = |n: &str| -> Result<(u64, u64, u64)> {
        let report = load(&client, &url, &["-n", n, "-c", "4"])?;
        Ok((
            count_version(&report, "v1"),
            count_version(&report, "v3"),
            count_status(&report, 500),
        ))
    };

    // Without a grant the other namespace's share is answered 500, and
    // none of it reaches `data`.
    let config = cluster.config_dir().to_path_buf();
    std::fs::write(config.join("routes.demo.across.yaml"), ACROSS)?;
    eventually(Duration::from_secs(20), "the route in force", || {
        Ok(counts("20")?.2 > 0)
    })
    .with_context(logs)?;
    let (v1, v3_seen, failed) = counts("400")?;
    eprintln!("without a ReferenceGrant: v1 {v1}, data/app {v3_seen}, 500 {failed} of 400");
    ensure!(
        v3_seen == 0 && v1 + failed == 400 && (140..=260).contains(&failed),
        "without a grant: v1 {v1}, v3 {v3_seen}, 500 {failed} of 400\n{}",
        logs()
    );

    // With one, half goes to `data`.
    let grant = config.join("grants.data.from-demo.yaml");
    std::fs::write(&grant, GRANT)?;
    eventually(Duration::from_secs(20), "the grant in force", || {
        let (_, v3, failed) = counts("20")?;
        Ok(v3 > 0 && failed == 0)
    })
    .with_context(logs)?;
    let (v1, v3_seen, failed) = counts("400")?;
    eprintln!("with a ReferenceGrant: v1 {v1}, data/app {v3_seen}, 500 {failed} of 400");
    ensure!(
        failed == 0 && v1 + v3_seen == 400 && (140..=260).contains(&v3_seen),
        "with a grant: v1 {v1}, v3 {v3_seen}, 500 {failed} of 400\n{}",
        logs()
    );

    // Withdrawn, it shuts the route out again.
    std::fs::remove_file(&grant)?;
    eventually(Duration::from_secs(20), "the grant withdrawn", || {
        let (_, v3, failed) = counts("20")?;
        Ok(v3 == 0 && failed > 0)
    })
    .with_context(logs)?;
    drop(servers);
    Ok(())
}
