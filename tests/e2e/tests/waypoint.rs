//! The waypoint with real traffic: a namespace's Gateway puts a waypoint in
//! the path of its services; ztunnels send the traffic to it over HBONE, and
//! it applies the VirtualService and DestinationRule before sending each
//! request on, over HBONE again, to the chosen endpoint's node: weights,
//! header matches (over HTTP/1.1 and h2c, from the sample client, curl and
//! h2load), faults, redirects, rewrites, header changes both ways and
//! `x-request-id`, as the client and the backend see them.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use warren_e2e::mesh::waypoint_pod;
use warren_e2e::{
    agent::{warrenctl_text, warrenctl_waypoint_explain},
    mesh::{
        add_app_service, eventually, metric_sum, start_mesh, start_waypoint, waypoint_gateway,
        waypoint_metrics,
    },
    workload::{count_status, count_version, load, start_app_versions},
};
use warren_testbed::{Cluster, PodSpec, labels, privilege::require_root};

const ROUTES: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: app, namespace: demo }
spec:
  host: app
  subsets:
  - { name: v1, labels: { version: v1 } }
  - { name: v2, labels: { version: v2 } }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: app, namespace: demo }
spec:
  hosts: [app]
  http:
  - name: jason
    match: [{ headers: { end-user: { exact: jason } } }]
    route: [{ destination: { host: app, subset: v2 } }]
  - name: moved
    match: [{ uri: { exact: /old } }]
    redirect: { uri: /new, authority: app.example, redirectCode: 301 }
  - name: shaped
    match: [{ uri: { prefix: /api/ } }]
    rewrite: { uri: /v2/, authority: backend.internal }
    headers:
      request:
        set: { x-set: "yes" }
        add: { x-added: extra }
        remove: [x-secret]
      response:
        set: { x-shaped: "true" }
        remove: [x-sample-pod]
    route: [{ destination: { host: app, subset: v1 } }]
  - name: delayed
    match: [{ headers: { x-fault: { exact: delay } } }]
    fault: { delay: { fixedDelay: 300ms, percentage: { value: 50 } } }
    route: [{ destination: { host: app, subset: v1 } }]
  - name: faulty
    match: [{ headers: { x-fault: { exact: abort } } }]
    fault: { abort: { httpStatus: 418, percentage: { value: 50 } } }
    route: [{ destination: { host: app, subset: v1 } }]
  - name: browser-broken
    match: [{ uri: { prefix: /ui/broken } }]
    fault: { abort: { httpStatus: 503, percentage: { value: 100 } } }
    corsPolicy: { allowOrigins: [{ exact: "https://shop.example" }], allowMethods: [GET] }
    route: [{ destination: { host: app, subset: v1 } }]
  - name: browser-moved
    match: [{ uri: { prefix: /ui/moved } }]
    redirect: { uri: /ui/page }
    corsPolicy: { allowOrigins: [{ exact: "https://shop.example" }], allowMethods: [GET] }
  - name: browser
    match: [{ uri: { prefix: /ui/ } }]
    corsPolicy:
      allowOrigins: [{ exact: "https://shop.example" }]
      allowMethods: [GET, POST]
      allowHeaders: [x-token]
      exposeHeaders: [x-sample-version]
      maxAge: 1h
    route: [{ destination: { host: app, subset: v1 } }]
  - name: canary
    route:
    - { destination: { host: app, subset: v1 }, weight: 80 }
    - { destination: { host: app, subset: v2 }, weight: 20 }
"#;

#[test]
fn a_waypoint_splits_routes_by_header_and_injects_faults() -> Result<()> {
    require_root()?;
    let mut cluster = Cluster::builder().nodes(2).pods_per_node(0).up()?;
    cluster.add_namespace("demo", labels(&[("warren.io/dataplane-mode", "ambient")]))?;
    for (name, node, pod_labels, sa) in [
        (
            "app-v1",
            1,
            labels(&[("app", "app"), ("version", "v1")]),
            "app",
        ),
        (
            "app-v2",
            0,
            labels(&[("app", "app"), ("version", "v2")]),
            "app",
        ),
        ("client", 0, labels(&[("app", "client")]), "client"),
    ] {
        cluster.add_pod(PodSpec {
            name: name.into(),
            namespace: "demo".into(),
            node,
            labels: pod_labels,
            service_account: Some(sa.into()),
        })?;
    }
    cluster.add_pod(waypoint_pod("demo", 1))?;
    add_app_service(&mut cluster)?;
    let mut mesh = start_mesh(&cluster)?;
    mesh.wait_ready(Duration::from_secs(30))
        .with_context(|| mesh.logs())?;
    std::fs::write(
        cluster.config_dir().join("gateway.demo.waypoint.yaml"),
        waypoint_gateway("demo"),
    )?;
    std::fs::write(cluster.config_dir().join("routes.demo.app.yaml"), ROUTES)?;
    let waypoint_pod = cluster.pod("waypoint")?.clone();
    let waypoint = start_waypoint(&cluster, &waypoint_pod, "demo").with_context(|| mesh.logs())?;
    let servers = start_app_versions(&cluster, &["v1", "v2"])?;
    let vip = cluster
        .services()
        .iter()
        .find(|s| s.name == "app")
        .context("service app")?
        .cluster_ip;
    let url = format!("http://{vip}/");
    let client = cluster.pod("client")?.clone();
    let logs = || format!("{}\nwaypoint:\n{}", mesh.logs(), waypoint.output());

    // Canary: 80/20 by weight over 2 000 requests, within ±3 points.
    let report = load(&client, &url, &["-n", "2000", "-c", "8"])?;
    let (v1, v2) = (count_version(&report, "v1"), count_version(&report, "v2"));
    ensure!(
        v1 + v2 == 2000,
        "canary: {v1} v1 + {v2} v2 of 2000 answered\n{report}\n{}",
        logs()
    );
    eprintln!("canary through the waypoint: v1 {v1}, v2 {v2} of 2000");
    ensure!(
        (1540..=1660).contains(&v1),
        "canary: {v1}/2000 to v1, expected 1600 ± 60 (3 points)\n{}",
        logs()
    );

    // Header routing: jason always reaches v2.
    let report = load(
        &client,
        &url,
        &["-n", "100", "-c", "4", "-H", "end-user: jason"],
    )?;
    ensure!(
        count_version(&report, "v2") == 100,
        "end-user: jason must always reach v2: {report}\n{}",
        logs()
    );

    // The same over HTTP/2 with prior knowledge (h2c), from the sample
    // client and from h2load, many streams per connection.
    let report = load(
        &client,
        &url,
        &["-n", "100", "-c", "4", "--http2", "-H", "end-user: jason"],
    )?;
    ensure!(
        count_version(&report, "v2") == 100,
        "h2c: end-user: jason must always reach v2: {report}\n{}",
        logs()
    );
    let out = client.sandbox.exec(
        "h2load",
        [
            "-n",
            "400",
            "-c",
            "4",
            "-m",
            "8",
            "-H",
            "end-user: jason",
            &url,
        ],
    )?;
    let h2load = String::from_utf8_lossy(&out.stdout).into_owned();
    let summary: Vec<&str> = h2load
        .lines()
        .filter(|l| l.starts_with("requests:") || l.starts_with("status codes:"))
        .collect();
    eprintln!("h2load through the waypoint: {}", summary.join(" | "));
    ensure!(
        out.status.success()
            && h2load.contains("400 succeeded, 0 failed")
            && h2load.contains("status codes: 400 2xx"),
        "h2load: 400 requests on 4 h2c connections, 8 streams each, all OK:\n{h2load}\n{}",
        logs()
    );

    // A 50 % abort hits about half the requests; the rest reach v1.
    let report = load(
        &client,
        &url,
        &["-n", "400", "-c", "4", "-H", "x-fault: abort"],
    )?;
    let (aborted, ok) = (count_status(&report, 418), count_status(&report, 200));
    eprintln!("fault at 50 %: {aborted} aborted, {ok} OK of 400");
    ensure!(
        aborted + ok == 400 && (140..=260).contains(&aborted),
        "fault: {aborted} aborted, {ok} OK of 400 (expected about 200 aborted)\n{report}\n{}",
        logs()
    );
    ensure!(
        count_version(&report, "v1") == ok,
        "fault rule routes to v1: {report}"
    );

    // A 50 % delay of 300 ms slows about half the requests, all answered.
    let report = load(
        &client,
        &url,
        &["-n", "60", "-c", "6", "-H", "x-fault: delay"],
    )?;
    let delayed = metric_sum(
        &waypoint_metrics(&waypoint_pod)?,
        "istio_requests_total",
        &[("response_flags", "DI")],
    );
    let p90 = report["latency_ms"]["p90"].as_f64().unwrap_or(0.0);
    eprintln!(
        "delay at 50 %: {delayed} of 60 delayed (flag DI), p90 {p90:.0} ms, {} OK",
        count_status(&report, 200)
    );
    ensure!(
        count_status(&report, 200) == 60 && (15.0..=45.0).contains(&delayed) && p90 >= 300.0,
        "fault delay: {delayed} of 60 delayed, p90 {p90} ms (expected about 30, ≥ 300 ms)\n{report}\n{}",
        logs()
    );

    // What the client and the backend see, with curl.
    let curl = |args: &[&str]| -> Result<(String, Value)> {
        let out = client
            .sandbox
            .exec("curl", ["-sS", "-i", "--max-time", "5"].iter().chain(args))?;
        ensure!(
            out.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .with_context(|| format!("no header end in {text:?}"))?;
        let body = serde_json::from_str(body).unwrap_or(Value::Null);
        Ok((head.to_ascii_lowercase(), body))
    };

    // Redirect: answered by the waypoint, nothing reaches a backend.
    let (head, _) = curl(&[&format!("{url}old")])?;
    eprintln!("redirect: {}", head.lines().next().unwrap_or_default());
    ensure!(
        head.starts_with("http/1.1 301") && head.contains("location: http://app.example/new"),
        "/old must redirect to http://app.example/new:\n{head}\n{}",
        logs()
    );

    // Rewrite and header changes: the backend sees the new path, authority
    // and headers; the client sees the response headers changed, and an
    // x-request-id that the backend saw too.
    let (head, answer) = curl(&[
        "-H",
        "x-secret: hunter2",
        "-H",
        "x-added: mine",
        &format!("{url}api/items"),
    ])?;
    let seen = &answer["headers"];
    eprintln!(
        "rewrite: path {} host {} x-set {} x-added {} x-secret {}",
        answer["path"], seen["host"], seen["x-set"], seen["x-added"], seen["x-secret"]
    );
    ensure!(
        answer["path"] == "/v2/items"
            && seen["host"] == "backend.internal"
            && seen["x-set"] == "yes"
            && seen["x-secret"].is_null()
            && seen["x-added"]
                .as_str()
                .is_some_and(|v| v.contains("mine") && v.contains("extra")),
        "the backend must see the rewritten request: {answer}\n{}",
        logs()
    );
    let request_id = seen["x-request-id"].as_str().unwrap_or_default();
    ensure!(
        head.contains("x-shaped: true")
            && !head.contains("x-sample-pod:")
            && head.contains("x-sample-version: v1")
            && !request_id.is_empty()
            && head.contains(&format!(
                "x-request-id: {}",
                request_id.to_ascii_lowercase()
            )),
        "the client must see the shaped response and the backend's x-request-id ({request_id}):\n{head}"
    );

    // The same over HTTP/2, to a port named `http`: as from Istio, the
    // endpoint is spoken to in HTTP/1.1, with the rewritten authority as
    // `Host`.
    let (head, answer) = curl(&["--http2-prior-knowledge", &format!("{url}api/items")])?;
    eprintln!(
        "rewrite over h2c: upstream {} path {} authority {} host header {}",
        answer["protocol"], answer["path"], answer["authority"], answer["headers"]["host"]
    );
    ensure!(
        head.starts_with("http/2 200")
            && answer["protocol"] == "HTTP/1.1"
            && answer["path"] == "/v2/items"
            && answer["headers"]["host"] == "backend.internal",
        "h2c to a port named http must reach the backend in HTTP/1.1 with the rewritten Host: {answer}\n{}",
        logs()
    );

    // CORS: a preflight from an allowed origin is answered by the
    // waypoint (nothing of the backend's in it); an actual request goes on
    // and its answer is marked; a preflight from another origin goes to
    // the backend untouched (unmatchedPreflights: FORWARD, the default).
    let preflight = |origin: &str| {
        curl(&[
            "-X",
            "OPTIONS",
            "-H",
            &format!("origin: {origin}"),
            "-H",
            "access-control-request-method: POST",
            &format!("{url}ui/page"),
        ])
    };
    let (head, answer) = preflight("https://shop.example")?;
    eprintln!("CORS preflight: {}", head.replace("\r\n", " | "));
    ensure!(
        head.starts_with("http/1.1 200")
            && head.contains("access-control-allow-origin: https://shop.example")
            && head.contains("access-control-allow-methods: get,post")
            && head.contains("access-control-allow-headers: x-token")
            && head.contains("access-control-max-age: 3600")
            && head.contains("access-control-expose-headers: x-sample-version")
            && !head.lines().any(|l| l.starts_with("x-sample-version:"))
            && answer.is_null(),
        "the waypoint must answer the preflight itself:\n{head}\n{answer}\n{}",
        logs()
    );
    let (head, answer) = curl(&[
        "-H",
        "origin: https://shop.example",
        &format!("{url}ui/page"),
    ])?;
    ensure!(
        answer["path"] == "/ui/page"
            && head.contains("access-control-allow-origin: https://shop.example")
            && head.contains("access-control-expose-headers: x-sample-version"),
        "an allowed origin's request reaches the backend, its answer marked:\n{head}\n{answer}"
    );
    let (head, answer) = preflight("https://evil.example")?;
    ensure!(
        answer["method"] == "OPTIONS"
            && head.contains("x-sample-version")
            && !head.contains("access-control-allow-origin"),
        "another origin's preflight goes to the backend, unmarked:\n{head}\n{answer}"
    );
    // The faults come first (Istio's order): an abort answers the preflight
    // and the request, unmarked; a redirect rule has no CORS (Envoy's
    // filter leaves it alone).
    for path in ["ui/broken", "ui/moved"] {
        let (preflight_head, _) = curl(&[
            "-X",
            "OPTIONS",
            "-H",
            "origin: https://shop.example",
            "-H",
            "access-control-request-method: GET",
            &format!("{url}{path}"),
        ])?;
        let (head, _) = curl(&[
            "-H",
            "origin: https://shop.example",
            &format!("{url}{path}"),
        ])?;
        let status = if path == "ui/broken" { "503" } else { "301" };
        ensure!(
            [&preflight_head, &head]
                .iter()
                .all(|h| h.starts_with(&format!("http/1.1 {status}"))
                    && !h.contains("access-control-allow-origin")),
            "{path}: {status} and no CORS marks:\n{preflight_head}\n{head}"
        );
    }

    // An HTTP/1.0 client may send no Host; HTTP/1.1 upstream needs one,
    // the destination service's name.
    let (head, answer) = curl(&["--http1.0", "-H", "Host:", &url])?;
    eprintln!(
        "HTTP/1.0 without Host: {} → host header {}",
        head.lines().next().unwrap_or_default(),
        answer["headers"]["host"]
    );
    ensure!(
        head.contains(" 200") && answer["headers"]["host"] == "app.demo.svc.cluster.local",
        "an HTTP/1.0 request without Host must reach the backend with the service's name: {head}\n{answer}\n{}",
        logs()
    );

    // h2UpgradePolicy: UPGRADE sends HTTP/1.1 clients' requests on in
    // HTTP/2: the authority travels as `:authority`, the request's own
    // (here rewritten), not the endpoint the waypoint picked.
    std::fs::write(
        cluster.config_dir().join("routes.demo.app.yaml"),
        ROUTES.replacen(
            "  host: app\n",
            "  host: app\n  trafficPolicy: { connectionPool: { http: { h2UpgradePolicy: UPGRADE } } }\n",
            1,
        ),
    )?;
    let mut upgraded = Value::Null;
    eventually(Duration::from_secs(10), "h2UpgradePolicy applied", || {
        let (head, answer) = curl(&[&format!("{url}api/items")])?;
        upgraded = answer;
        Ok(head.starts_with("http/1.1 200") && upgraded["protocol"] == "HTTP/2.0")
    })
    .with_context(|| format!("last answer: {upgraded}\n{}", logs()))?;
    eprintln!(
        "upgraded: upstream {} path {} authority {} host header {}",
        upgraded["protocol"], upgraded["path"], upgraded["authority"], upgraded["headers"]["host"]
    );
    ensure!(
        upgraded["path"] == "/v2/items"
            && upgraded["authority"] == "backend.internal"
            && upgraded["headers"]["host"].is_null(),
        "upgraded to HTTP/2, the backend must see the rewritten :authority and no Host: {upgraded}\n{}",
        logs()
    );

    // The admin endpoint says which rules made each cluster and how its
    // endpoints stand.
    let out = waypoint_pod.sandbox.exec(
        "curl",
        ["-sS", "--max-time", "5", "http://127.0.0.1:15000/clusters"],
    )?;
    let dump: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("/clusters: {}", String::from_utf8_lossy(&out.stdout)))?;
    let v1 = dump["clusters"]
        .as_array()
        .and_then(|clusters| {
            clusters.iter().find(|c| {
                c["host"] == "app.demo.svc.cluster.local" && c["subset"] == "v1" && c["port"] == 80
            })
        })
        .with_context(|| format!("no cluster for app v1 in {dump}"))?;
    eprintln!(
        "/clusters: app v1 from {} ({} upstream), {} endpoint(s)",
        v1["rules"],
        v1["upstream_http"],
        v1["endpoints"].as_array().map_or(0, Vec::len)
    );
    ensure!(
        v1["rules"] == serde_json::json!(["demo/app"])
            && v1["upstream_http"] == "Http2"
            && v1["subset_selector"]["version"] == "v1"
            && v1["endpoints"].as_array().is_some_and(|e| !e.is_empty()),
        "/clusters must show app v1 made by demo/app, upgraded to HTTP/2: {v1}"
    );
    // warrenctl finds the waypoint's pod in the config folder and asks it
    // from inside its network namespace.
    let config_dir = cluster.config_dir().to_string_lossy().into_owned();
    let clusters = |extra: &[&str]| {
        let mut args = vec![
            "waypoint",
            "clusters",
            "-n",
            "demo",
            "--config-dir",
            &config_dir,
        ];
        args.extend_from_slice(extra);
        warrenctl_text(&args)
    };
    let shown = clusters(&[])?;
    eprintln!("warrenctl waypoint clusters:\n{shown}");
    let row = shown
        .lines()
        .find(|l| l.starts_with("app.demo.svc.cluster.local:80 (v1)"))
        .with_context(|| format!("no row for app v1:\n{shown}"))?;
    // v2 was last asked before the upgrade: the dump shows it as the next
    // request would find it, not as it was built.
    let v2_row = shown
        .lines()
        .find(|l| l.starts_with("app.demo.svc.cluster.local:80 (v2)"))
        .unwrap_or_default();
    ensure!(
        shown.starts_with("waypoint pod demo/waypoint")
            && row.contains("demo/app")
            && row.contains("Http2")
            && v2_row.contains("Http2")
            && shown.contains("ENDPOINT")
            && shown.contains("healthy"),
        "warrenctl waypoint clusters must show app v1 from demo/app over HTTP/2:\n{shown}"
    );
    let as_json: Value = serde_json::from_str(&clusters(&["--json"])?)?;
    ensure!(
        as_json["demo/waypoint"]["clusters"]
            .as_array()
            .is_some_and(|c| c.len() == dump["clusters"].as_array().map_or(0, Vec::len)),
        "warrenctl waypoint clusters --json must carry the waypoint's answer: {as_json}"
    );

    // The waypoint explains each request above as it took it.
    let explain = |request: &[&str]| {
        warrenctl_waypoint_explain(&cluster.config_dir(), "demo", "demo/client", request)
    };
    let host = "http://app.demo.svc.cluster.local/";
    let old = format!("{url}old");
    let ui = format!("{url}ui/page");
    for (request, says) in [
        (
            vec!["-H", "end-user: jason", host],
            vec!["route \"jason\"", "subset v2 (100%)", "verdict: forwarded"],
        ),
        (
            vec![url.as_str()],
            vec![
                "route \"canary\"",
                "subset v1 (80%)",
                "subset v2 (20%)",
                "verdict: forwarded",
            ],
        ),
        (
            vec!["-H", "x-fault: abort", host],
            vec!["abort with HTTP 418", "for 50% of requests"],
        ),
        (
            vec![
                "-X",
                "OPTIONS",
                "-H",
                "origin: https://shop.example",
                "-H",
                "access-control-request-method: POST",
                &ui,
            ],
            vec![
                "route \"browser\"",
                "preflight answered 200 OK by the waypoint",
                "verdict: answered",
            ],
        ),
        (
            vec![old.as_str()],
            vec![
                "route \"moved\"",
                "redirect 301 Moved Permanently to app.example/new",
                "verdict: answered",
            ],
        ),
    ] {
        let shown = explain(&request)?;
        for part in says {
            ensure!(
                shown.contains(part),
                "warrenctl waypoint explain {request:?} does not say {part:?}:\n{shown}"
            );
        }
    }

    // A process of another pod cannot pass for demo's waypoint (and get its
    // keys): the agent places it by its network namespace and refuses it.
    let node = cluster
        .nodes()
        .iter()
        .find(|n| n.name == client.node)
        .context("the client's node")?;
    let socket = warren_e2e::agent::agent_socket(&cluster, node)?;
    let mut impostor = cluster.spawn(
        &client.sandbox,
        &warren_testbed::binaries::path("warren-waypoint")?.to_string_lossy(),
        &[
            "--namespace",
            "demo",
            "--agent-socket",
            &socket.to_string_lossy(),
            "--client-id",
            "impostor",
        ],
    )?;
    impostor
        .wait_for_output("not believed", Duration::from_secs(20))
        .with_context(|| format!("the impostor was not refused:\n{}", impostor.output()))?;
    let said = impostor.output();
    eprintln!(
        "impostor: {}",
        said.lines()
            .find(|l| l.contains("not believed"))
            .unwrap_or_default()
    );
    ensure!(
        said.contains("not in a waypoint pod of namespace demo")
            && !said.contains("waypoint ready"),
        "the impostor must get nothing:\n{said}"
    );
    drop(impostor);
    drop(servers);
    drop(waypoint);
    Ok(())
}
