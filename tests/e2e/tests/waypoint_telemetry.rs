//! The Telemetry API at the waypoint, with real traffic: a mesh-wide
//! Telemetry in the root namespace keeps access lines for failed requests
//! only, the namespace's turns them off, one attached to the waypoint turns
//! them on for a header and changes how requests are counted (a label
//! removed, one added from the request, a metric off). A Telemetry whose
//! expression does not compile is refused and the last good one stays in
//! force; removing the objects brings back a line for every request. The
//! mesh config's own log and a provider's `logFormat` give the lines'
//! format, JSON or text.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use warren_e2e::{
    agent::{config_dump, config_dump_with, warrenctl_waypoint_explain},
    mesh::{
        AppBehindWaypoint, app_behind_waypoint, demo_cluster_with_waypoint_pod, eventually,
        metric_sum, service_vip, start_mesh_and_waypoint, waypoint_metrics,
    },
    workload::{curl_status, start_http_server},
};
use warren_testbed::{Pod, Process, ServicePort, labels, privilege::require_root};

const MESH_FILE: &str = "telemetry.istio-system.mesh-default.yaml";
const NAMESPACE_FILE: &str = "telemetry.demo.quiet.yaml";
const WAYPOINT_FILE: &str = "telemetry.demo.waypoint.yaml";

const MESH_WIDE: &str = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: { name: mesh-default, namespace: istio-system }
spec:
  accessLogging:
  - providers: [{ name: envoy }]
    filter: { expression: "response.code >= 400" }
"#;

const NAMESPACE_WIDE: &str = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: { name: quiet, namespace: demo }
spec:
  accessLogging: [{ disabled: true }]
"#;

const ON_WAYPOINT: &str = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: { name: waypoint, namespace: demo }
spec:
  targetRefs: [{ group: gateway.networking.k8s.io, kind: Gateway, name: waypoint }]
  accessLogging:
  - providers: [{ name: envoy }]
    filter: { expression: "request.headers['x-debug'] == 'on'" }
  metrics:
  - overrides:
    - match: { metric: REQUEST_COUNT }
      tagOverrides:
        destination_version: { operation: REMOVE }
        request_path: { value: "request.url_path" }
    - match: { metric: REQUEST_SIZE }
      disabled: true
"#;

/// The waypoint's access lines of requests for `path`.
fn lines_for(output: &str, path: &str) -> usize {
    let field = format!("path=\"{path}\"");
    let bare = format!("path={path} ");
    output
        .lines()
        .filter(|l| l.contains("access") && (l.contains(&field) || l.contains(&bare)))
        .count()
}

#[test]
fn telemetry_shapes_the_waypoints_access_lines_and_metrics() -> Result<()> {
    require_root()?;
    let AppBehindWaypoint {
        cluster: _cluster,
        mesh,
        waypoint,
        server,
        config,
        client,
        waypoint_pod,
        base,
    } = app_behind_waypoint()?;
    let logs = || format!("{}\nwaypoint:\n{}", mesh.logs(), waypoint.output());

    // No Telemetry: a line for every request, as always.
    eventually(
        Duration::from_secs(30),
        "the waypoint logs requests",
        || {
            Ok(curl_status(&client, &format!("{base}/before"), &[])? == 200
                && lines_for(&waypoint.output(), "/before") >= 1)
        },
    )
    .with_context(logs)?;

    // Mesh-wide: failed requests only.
    std::fs::write(config.join(MESH_FILE), MESH_WIDE)?;
    eventually(
        Duration::from_secs(20),
        "the mesh's filter in force",
        || {
            Ok(
                curl_status(&client, &format!("{base}/status/503"), &[])? == 503
                    && lines_for(&waypoint.output(), "/status/503") >= 1,
            )
        },
    )
    .with_context(logs)?;
    for _ in 0..3 {
        ensure!(curl_status(&client, &format!("{base}/mesh/ok"), &[])? == 200);
    }
    ensure!(curl_status(&client, &format!("{base}/status/404"), &[])? == 404);
    // The 404, sent last, is logged: once its line is there, so would be
    // the others'.
    eventually(Duration::from_secs(10), "the 404 logged", || {
        Ok(lines_for(&waypoint.output(), "/status/404") == 1)
    })
    .with_context(logs)?;
    let output = waypoint.output();
    ensure!(
        lines_for(&output, "/mesh/ok") == 0 && lines_for(&output, "/status/404") == 1,
        "the mesh-wide filter: {} lines of 200s, {} of the 404\n{output}",
        lines_for(&output, "/mesh/ok"),
        lines_for(&output, "/status/404")
    );

    // The namespace's own: none at all.
    std::fs::write(config.join(NAMESPACE_FILE), NAMESPACE_WIDE)?;
    eventually(
        Duration::from_secs(20),
        "the namespace's Telemetry in force",
        || {
            // A failed request the mesh's filter would log leaves no line
            // (a status of its own each time: 520, 521, …).
            let code = 520 + next();
            let path = format!("/status/{code}");
            let status = curl_status(&client, &format!("{base}{path}"), &[])?;
            // Counted and logged at the same moment: once counted, its
            // line would be there.
            counted(&waypoint_pod, &[("response_code", &code.to_string())])?;
            Ok(u32::from(status) == code && lines_for(&waypoint.output(), &path) == 0)
        },
    )
    .with_context(logs)?;

    // Attached to the waypoint: lines for `x-debug: on`, and metrics shaped.
    std::fs::write(config.join(WAYPOINT_FILE), ON_WAYPOINT)?;
    eventually(
        Duration::from_secs(20),
        "the waypoint's Telemetry in force",
        || {
            Ok(
                curl_status(&client, &format!("{base}/debug/on"), &["x-debug: on"])? == 200
                    && lines_for(&waypoint.output(), "/debug/on") >= 1,
            )
        },
    )
    .with_context(logs)?;
    ensure!(curl_status(&client, &format!("{base}/debug/off"), &["x-debug: off"])? == 200);
    ensure!(curl_status(&client, &format!("{base}/status/502"), &[])? == 502);
    counted(&waypoint_pod, &[("response_code", "502")])?;
    let output = waypoint.output();
    ensure!(
        lines_for(&output, "/debug/off") == 0 && lines_for(&output, "/status/502") == 0,
        "only x-debug: on is logged:\n{output}"
    );
    let metrics = waypoint_metrics(&waypoint_pod)?;
    let by_path = metric_sum(
        &metrics,
        "istio_requests_total",
        &[("request_path", "/debug/off"), ("response_code", "200")],
    );
    ensure!(
        by_path == 1.0,
        "requests counted with their path: {by_path}\n{metrics}"
    );
    let relabelled: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{") && l.contains("request_path="))
        .collect();
    ensure!(
        !relabelled.is_empty()
            && relabelled
                .iter()
                .all(|l| !l.contains("destination_version=")),
        "destination_version removed: {relabelled:#?}"
    );
    // Istio's labels stay on the other metrics; REQUEST_SIZE has no new series.
    let durations_before = metric_sum(
        &metrics,
        "istio_request_duration_milliseconds_count",
        &[("destination_service_name", "app")],
    );
    let sizes_before = metric_sum(
        &metrics,
        "istio_request_bytes_count",
        &[("destination_service_name", "app")],
    );
    ensure!(curl_status(&client, &format!("{base}/debug/more"), &[])? == 200);
    counted(&waypoint_pod, &[("request_path", "/debug/more")])?;
    let metrics = waypoint_metrics(&waypoint_pod)?;
    ensure!(
        metric_sum(
            &metrics,
            "istio_request_duration_milliseconds_count",
            &[("destination_service_name", "app")],
        ) == durations_before + 1.0,
        "durations still counted:\n{metrics}"
    );
    ensure!(
        metric_sum(
            &metrics,
            "istio_request_bytes_count",
            &[("destination_service_name", "app")],
        ) == sizes_before,
        "REQUEST_SIZE is off:\n{metrics}"
    );

    // explain names what is in force.
    let shown =
        warrenctl_waypoint_explain(&config, "demo", "demo/client", &[&format!("{base}/x")])?;
    for says in [
        "Telemetry istio-system/mesh-default, demo/quiet, demo/waypoint",
        "an access line when `request.headers['x-debug'] == 'on'`",
        "istio_request_bytes off",
        "istio_requests_total labels -destination_version request_path=`request.url_path`",
    ] {
        ensure!(
            shown.contains(says),
            "explain does not say {says:?}:\n{shown}"
        );
    }

    // A filter that does not compile is refused; the last good one stays.
    std::fs::write(
        config.join(WAYPOINT_FILE),
        ON_WAYPOINT.replace("== 'on'", "== "),
    )?;
    eventually(
        Duration::from_secs(20),
        "the agents refuse the broken Telemetry",
        || {
            Ok(mesh
                .logs()
                .lines()
                .filter(|l| {
                    l.contains("rejected") && l.contains("spec.accessLogging[0].filter.expression")
                })
                .count()
                >= 2)
        },
    )
    .with_context(logs)?;
    ensure!(curl_status(&client, &format!("{base}/still/on"), &["x-debug: on"])? == 200);
    ensure!(curl_status(&client, &format!("{base}/still/off"), &[])? == 200);
    counted(&waypoint_pod, &[("request_path", "/still/off")])?;
    let output = waypoint.output();
    ensure!(
        lines_for(&output, "/still/on") == 1 && lines_for(&output, "/still/off") == 0,
        "the last good Telemetry stays in force:\n{output}"
    );

    // All gone: a line for every request again, Istio's labels on every metric.
    own_lines_back(
        &config,
        &[WAYPOINT_FILE, NAMESPACE_FILE, MESH_FILE],
        &client,
        &base,
        &waypoint,
    )
    .with_context(logs)?;
    drop(server);
    drop(waypoint);
    Ok(())
}

/// Removes `files` from the config folder and waits until a request gets
/// the waypoint's own access line again, as without any Telemetry.
fn own_lines_back(
    config: &std::path::Path,
    files: &[&str],
    client: &Pod,
    base: &str,
    waypoint: &Process,
) -> Result<()> {
    for file in files {
        std::fs::remove_file(config.join(file))?;
    }
    eventually(
        Duration::from_secs(20),
        "the waypoint's own lines back",
        || {
            let path = format!("/after/{}", next());
            let status = curl_status(client, &format!("{base}{path}"), &[])?;
            std::thread::sleep(Duration::from_millis(200));
            Ok(status == 200 && lines_for(&waypoint.output(), &path) == 1)
        },
    )
}

/// Waits until the waypoint has counted a request with `labels`: its access
/// line, if it gets one, is written at the same moment.
fn counted(waypoint: &Pod, labels: &[(&str, &str)]) -> Result<()> {
    eventually(Duration::from_secs(10), "the request counted", || {
        Ok(metric_sum(&waypoint_metrics(waypoint)?, "istio_requests_total", labels) >= 1.0)
    })
}

/// 0, 1, 2, …: what makes a request's path one no earlier request had.
fn next() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

const FORMATS_MESH_FILE: &str = "configmap.istio-system.istio.yaml";

/// The mesh's own log as JSON in a format of its own, and a provider
/// writing text lines.
fn formats_mesh_config(text: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{ name: istio, namespace: istio-system }}
data:
  mesh: |
    accessLogFile: /dev/stdout
    accessLogEncoding: JSON
    accessLogFormat: '{{"start": "%START_TIME%", "method": "%REQ(:METHOD)%", "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "code": "%RESPONSE_CODE%", "id": "%REQ(X-REQUEST-ID)%", "ua": "%REQ(USER-AGENT):6%", "peer": "%DOWNSTREAM_PEER_URI_SAN%", "upstream": "%UPSTREAM_HOST%", "ms": "%DURATION%", "sent": "%BYTES_SENT%", "app": "%RESP(X-APP)%", "route": "%ROUTE_NAME%", "team": "shop"}}'
    extensionProviders:
    - name: text-codes
      envoyFileAccessLog:
        path: /dev/stdout
        logFormat: {{ text: "{text}" }}
"#
    )
}

const TEXT_TELEMETRY: &str = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: { name: mesh-default, namespace: istio-system }
spec:
  accessLogging:
  - providers: [{ name: text-codes }]
    filter: { expression: "response.code >= 400" }
"#;

/// The waypoint's JSON access lines of requests for `path`.
fn json_lines_for(output: &str, path: &str) -> Vec<serde_json::Value> {
    output
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["path"] == path)
        .collect()
}

#[test]
fn access_lines_take_the_formats_the_mesh_config_gives() -> Result<()> {
    require_root()?;
    let AppBehindWaypoint {
        cluster,
        mesh,
        waypoint,
        server,
        config,
        client,
        waypoint_pod,
        base,
    } = app_behind_waypoint()?;
    let logs = || format!("{}\nwaypoint:\n{}", mesh.logs(), waypoint.output());

    // The mesh's own log: one JSON object per request, in its format.
    std::fs::write(
        config.join(FORMATS_MESH_FILE),
        formats_mesh_config("TEXT %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS%"),
    )?;
    let mut line = serde_json::Value::Null;
    eventually(Duration::from_secs(30), "a JSON access line", || {
        let path = format!("/json/{}", next());
        let status = curl_status(
            &client,
            &format!("{base}{path}"),
            &["x-request-id: fmt-1", "user-agent: warren-e2e"],
        )?;
        counted(&waypoint_pod, &[("response_code", "200")])?;
        let found = json_lines_for(&waypoint.output(), &path);
        if let (200, [one]) = (status, found.as_slice()) {
            line = one.clone();
            return Ok(true);
        }
        Ok(false)
    })
    .with_context(logs)?;
    let start = line["start"].as_str().unwrap_or_default();
    ensure!(
        line["method"] == "GET"
            && line["code"] == 200
            && line["id"] == "fmt-1"
            && line["ua"] == "warren"
            && line["peer"] == "spiffe://cluster.local/ns/demo/sa/client"
            && line["upstream"]
                .as_str()
                .is_some_and(|u| u.ends_with(":8080"))
            && line["ms"].is_u64()
            && line["sent"].as_u64().is_some_and(|n| n > 0)
            && line["app"].is_null()
            && line["route"].is_string()
            && line["team"] == "shop"
            && start.len() == "2026-12-07T04:28:07.123Z".len()
            && start.ends_with('Z'),
        "the JSON line: {line}"
    );

    // The agent's view for demo's waypoints says what the mesh config asks
    // of the access log; its ztunnel view does not carry it.
    let node = cluster.node(0)?;
    let find = |dump: &serde_json::Value| {
        dump["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["key"] == "telemetrydefaults")
            .map(|r| r["spec"].clone())
    };
    ensure!(
        find(&config_dump(&cluster, node)?).is_none(),
        "ztunnel's view carries waypoint telemetry"
    );
    let defaults =
        find(&config_dump_with(&cluster, node, &["--waypoint", "demo"])?).unwrap_or_default();
    ensure!(
        defaults["accessLogFile"] == "/dev/stdout" && defaults["accessLogEncoding"] == "JSON",
        "warrenctl config dump --waypoint demo: {defaults}"
    );

    // A provider with a text format, for failed requests only.
    std::fs::write(config.join(MESH_FILE), TEXT_TELEMETRY)?;
    eventually(Duration::from_secs(20), "the provider's text lines", || {
        Ok(
            curl_status(&client, &format!("{base}/status/404"), &[])? == 404
                && waypoint.output().contains("TEXT GET /status/404 404 -"),
        )
    })
    .with_context(logs)?;
    let path = format!("/text/{}", next());
    ensure!(curl_status(&client, &format!("{base}{path}"), &[])? == 200);
    ensure!(curl_status(&client, &format!("{base}/status/418"), &[])? == 418);
    counted(&waypoint_pod, &[("response_code", "418")])?;
    let output = waypoint.output();
    ensure!(
        output.contains("TEXT GET /status/418 418 -")
            && !output.contains(&format!("TEXT GET {path} "))
            && json_lines_for(&output, &path).is_empty(),
        "only the provider's lines, for failures only:\n{output}"
    );

    // A format that cannot be written is refused; the last good one stays.
    std::fs::write(
        config.join(FORMATS_MESH_FILE),
        formats_mesh_config("TEXT %NO_SUCH_OPERATOR%"),
    )?;
    eventually(
        Duration::from_secs(20),
        "the agents refuse the broken format",
        || {
            Ok(mesh
                .logs()
                .lines()
                .filter(|l| l.contains("rejected") && l.contains("%NO_SUCH_OPERATOR%"))
                .count()
                >= 2)
        },
    )
    .with_context(logs)?;
    ensure!(curl_status(&client, &format!("{base}/status/409"), &[])? == 409);
    counted(&waypoint_pod, &[("response_code", "409")])?;
    let output = waypoint.output();
    ensure!(
        output.contains("TEXT GET /status/409 409 -"),
        "the last good format stays:\n{output}"
    );

    // All gone: the waypoint's own line again.
    own_lines_back(
        &config,
        &[MESH_FILE, FORMATS_MESH_FILE],
        &client,
        &base,
        &waypoint,
    )
    .with_context(logs)?;
    drop(server);
    drop(waypoint);
    Ok(())
}

const TRACING_MESH_CONFIG: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: { name: istio, namespace: istio-system }
data:
  mesh: |
    extensionProviders:
    - name: zipkin
      zipkin: { service: zipkin.observe.svc.cluster.local, port: 9411 }
"#;

fn tracing_telemetry(sampling: u32) -> String {
    format!(
        r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{ name: mesh-default, namespace: istio-system }}
spec:
  tracing:
  - providers: [{{ name: zipkin }}]
    randomSamplingPercentage: {sampling}
    customTags:
      team: {{ literal: {{ value: shop }} }}
      user: {{ header: {{ name: x-user, defaultValue: nobody }} }}
"#
    )
}

/// The trace headers the app received, by one GET from `pod` with `headers`.
fn app_saw(pod: &Pod, url: &str, headers: &[&str]) -> Result<serde_json::Value> {
    let mut args = vec!["-sS", "--max-time", "8"];
    for header in headers {
        args.extend(["-H", header]);
    }
    args.push(url);
    let out = pod.sandbox.exec("curl", &args)?;
    let body: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("curl {url}: {}", String::from_utf8_lossy(&out.stdout)))?;
    Ok(body["headers"].clone())
}

/// The spans the collector holds of `trace`.
fn spans_of(collector: &Pod, trace: &str) -> Result<Vec<serde_json::Value>> {
    let url = format!("http://127.0.0.1:9411/api/v2/spans?traceId={trace}");
    let out = collector
        .sandbox
        .exec("curl", ["-sS", "--max-time", "5", url.as_str()])?;
    let spans: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("the collector: {}", String::from_utf8_lossy(&out.stdout)))?;
    Ok(spans)
}

/// `traceparent`'s fields: (trace id, parent span id, flags).
fn traceparent(saw: &serde_json::Value) -> Result<(String, String, String)> {
    let value = saw["traceparent"]
        .as_str()
        .with_context(|| format!("no traceparent reached the app: {saw}"))?;
    match value.split('-').collect::<Vec<_>>().as_slice() {
        ["00", trace, span, flags] => {
            Ok(((*trace).to_owned(), (*span).to_owned(), (*flags).to_owned()))
        }
        _ => anyhow::bail!("not a traceparent: {value:?}"),
    }
}

#[test]
fn the_waypoint_samples_traces_and_reports_its_spans_to_zipkin_and_otlp() -> Result<()> {
    require_root()?;
    let mut cluster = demo_cluster_with_waypoint_pod(&[
        ("app", 1, &[("app", "app")], "app"),
        ("client", 0, &[("app", "client")], "client"),
    ])?;
    cluster.add_namespace("observe", labels(&[]))?;
    cluster.add_pod(warren_testbed::PodSpec {
        name: "zipkin".into(),
        namespace: "observe".into(),
        node: 1,
        labels: labels(&[("app", "zipkin")]),
        service_account: Some("zipkin".into()),
    })?;
    let port = |name: &str, port| ServicePort {
        name: name.into(),
        port,
        target_port: if port == 80 { 8080 } else { port },
    };
    cluster.add_service(
        "demo",
        "app",
        labels(&[("app", "app")]),
        vec![port("http", 80)],
    )?;
    cluster.add_service(
        "observe",
        "zipkin",
        labels(&[("app", "zipkin")]),
        vec![port("http", 9411), port("grpc", 4317)],
    )?;
    let (mesh, waypoint) = start_mesh_and_waypoint(&cluster, "demo")?;
    let config = cluster.config_dir().to_path_buf();
    let app = cluster.pod("app")?.clone();
    let server = start_http_server(&cluster, &app, 8080, &["--name", "app"])?;
    let collector_pod = cluster.pod("zipkin")?.clone();
    let sample = warren_testbed::binaries::path("warren-sample")?;
    let collector = cluster.spawn(
        &collector_pod.sandbox,
        &sample.to_string_lossy(),
        &[
            "collect",
            "--listen",
            "[::]:9411",
            "--grpc",
            "[::]:4317",
            "--reject-tag",
            "user=reject",
        ],
    )?;
    let client = cluster.pod("client")?.clone();
    let waypoint_pod = cluster.pod("waypoint")?.clone();
    let base = format!("http://{}", service_vip(&cluster, "app")?);
    let logs = || {
        format!(
            "{}\nwaypoint:\n{}\ncollector:\n{}",
            mesh.logs(),
            waypoint.output(),
            collector.output()
        )
    };

    // Before: a request without trace headers gets none.
    eventually(Duration::from_secs(30), "the app answers", || {
        Ok(curl_status(&client, &format!("{base}/"), &[])? == 200)
    })
    .with_context(logs)?;
    let saw = app_saw(&client, &format!("{base}/untraced"), &[])?;
    ensure!(saw.get("traceparent").is_none(), "a trace started: {saw}");

    std::fs::write(
        config.join("configmap.istio-system.istio.yaml"),
        TRACING_MESH_CONFIG,
    )?;
    std::fs::write(config.join(MESH_FILE), tracing_telemetry(100))?;
    // A trace started by the waypoint: sampled, its span reported with the
    // waypoint's id as the app's parent.
    let mut started = None;
    eventually(
        Duration::from_secs(30),
        "the waypoint starts traces",
        || {
            let saw = app_saw(&client, &format!("{base}/traced"), &["x-user: jason"])?;
            started = saw.get("traceparent").is_some().then_some(saw);
            Ok(started.is_some())
        },
    )
    .with_context(logs)?;
    let saw = started.context("a trace")?;
    let (trace, waypoint_span, flags) = traceparent(&saw)?;
    ensure!(flags == "01", "sampled at 100 %: {saw}");
    ensure!(
        saw["x-b3-traceid"] == trace.as_str() && saw["x-b3-sampled"] == "1",
        "B3 too: {saw}"
    );
    let mut reported = Vec::new();
    eventually(
        Duration::from_secs(15),
        "the span reaches the collector",
        || {
            reported = spans_of(&collector_pod, &trace)?;
            Ok(!reported.is_empty())
        },
    )
    .with_context(logs)?;
    let span = &reported[0];
    ensure!(
        reported.len() == 1
            && span["id"] == waypoint_span.as_str()
            && span.get("parentId").is_none()
            && span["kind"] == "SERVER"
            && span["name"] == "app.demo.svc.cluster.local:80/*"
            && span["localEndpoint"]["serviceName"] == "waypoint.demo"
            && span["tags"]["http.status_code"] == "200"
            && span["tags"]["http.method"] == "GET"
            && span["tags"]["http.url"] == "http://app.demo.svc.cluster.local:80/traced"
            && span["tags"]["team"] == "shop"
            && span["tags"]["user"] == "jason",
        "the waypoint's span: {reported:#?}"
    );

    // The caller's trace: continued, the caller's span the parent; its
    // decision holds either way.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let unsampled_trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let saw = app_saw(
        &client,
        &format!("{base}/unsampled"),
        &[&format!(
            "traceparent: 00-{unsampled_trace}-00f067aa0ba902b7-00"
        )],
    )?;
    ensure!(traceparent(&saw)?.2 == "00", "unsampled stays so: {saw}");
    let saw = app_saw(
        &client,
        &format!("{base}/continued"),
        &[&format!(
            "traceparent: 00-{caller_trace}-00f067aa0ba902b7-01"
        )],
    )?;
    let (trace, waypoint_span, _) = traceparent(&saw)?;
    ensure!(
        trace == caller_trace && waypoint_span != "00f067aa0ba902b7",
        "{saw}"
    );
    eventually(
        Duration::from_secs(15),
        "the continued trace's span",
        || {
            reported = spans_of(&collector_pod, caller_trace)?;
            Ok(!reported.is_empty())
        },
    )
    .with_context(logs)?;
    ensure!(
        reported[0]["parentId"] == "00f067aa0ba902b7"
            && reported[0]["id"] == waypoint_span.as_str(),
        "{reported:#?}"
    );
    // Sent before the continued one, in the same batch or an earlier one.
    ensure!(
        spans_of(&collector_pod, unsampled_trace)?.is_empty(),
        "an unsampled trace was reported"
    );

    // Sampling at 0 %: new traces start unsampled, and report nothing.
    std::fs::write(config.join(MESH_FILE), tracing_telemetry(0))?;
    let mut unsampled = None;
    eventually(Duration::from_secs(20), "sampling at 0 %", || {
        let saw = app_saw(&client, &format!("{base}/rare"), &[])?;
        let (trace, _, flags) = traceparent(&saw)?;
        unsampled = Some(trace);
        Ok(flags == "00" && saw["x-b3-sampled"] == "0")
    })
    .with_context(logs)?;
    let marker = "6bf92f3577b34da6a3ce929d0e0e4738";
    app_saw(
        &client,
        &format!("{base}/marker"),
        &[&format!("traceparent: 00-{marker}-00f067aa0ba902b7-01")],
    )?;
    eventually(Duration::from_secs(15), "the marker's span", || {
        Ok(!spans_of(&collector_pod, marker)?.is_empty())
    })
    .with_context(logs)?;
    let unsampled = unsampled.context("a trace")?;
    ensure!(
        spans_of(&collector_pod, &unsampled)?.is_empty(),
        "a trace sampled at 0 % was reported"
    );

    let metrics = waypoint_metrics(&waypoint_pod)?;
    let sent = metric_sum(
        &metrics,
        "warren_waypoint_spans_total",
        &[("provider", "zipkin"), ("result", "sent")],
    );
    ensure!(sent >= 3.0, "spans counted as sent: {sent}\n{metrics}");
    let shown =
        warrenctl_waypoint_explain(&config, "demo", "demo/client", &[&format!("{base}/x")])?;
    ensure!(
        shown.contains(
            "spans to zipkin (zipkin.observe.svc.cluster.local:9411), 0% of new traces sampled"
        ),
        "explain does not name the collector:\n{shown}"
    );

    // OpenTelemetry collectors: OTLP over gRPC, then over HTTP, by the
    // same provider name.
    std::fs::write(config.join(MESH_FILE), tracing_telemetry(100))?;
    for (provider, received) in [
        (
            "{ service: zipkin.observe.svc.cluster.local, port: 4317, grpc: { initialMetadata: [{ name: x-tenant, value: shop }] } }",
            "otlp/grpc",
        ),
        (
            "{ service: zipkin.observe.svc.cluster.local, port: 9411, http: { path: /v1/traces, headers: [{ name: x-tenant, value: shop }] } }",
            "otlp/http",
        ),
    ] {
        std::fs::write(
            config.join("configmap.istio-system.istio.yaml"),
            TRACING_MESH_CONFIG.replace(
                "zipkin: { service: zipkin.observe.svc.cluster.local, port: 9411 }",
                &format!("opentelemetry: {provider}"),
            ),
        )?;
        let mut reported = Vec::new();
        eventually(Duration::from_secs(30), received, || {
            let saw = app_saw(&client, &format!("{base}/otlp"), &["x-user: ana"])?;
            let (trace, _, flags) = traceparent(&saw)?;
            if flags != "01" {
                return Ok(false);
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                reported = spans_of(&collector_pod, &trace)?;
                if !reported.is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(reported.first().is_some_and(|s| s["received"] == received))
        })
        .with_context(logs)?;
        let span = &reported[0];
        ensure!(
            span["kind"] == "SERVER"
                && span["name"] == "app.demo.svc.cluster.local:80/*"
                && span["localEndpoint"]["serviceName"] == "waypoint.demo"
                && span["tags"]["http.status_code"] == "200"
                && span["tags"]["user"] == "ana"
                && span["error"] == false
                && span["postedWith"]["x-tenant"] == "shop",
            "{received}: {reported:#?}"
        );
        // A span the collector rejects in its answer (OTLP's partial
        // success) is counted as rejected, not sent.
        let spans = |result: &str| -> Result<f64> {
            Ok(metric_sum(
                &waypoint_metrics(&waypoint_pod)?,
                "warren_waypoint_spans_total",
                &[("provider", "zipkin"), ("result", result)],
            ))
        };
        let rejected_before = spans("rejected")?;
        let saw = app_saw(&client, &format!("{base}/rejected"), &["x-user: reject"])?;
        let (trace, _, _) = traceparent(&saw)?;
        eventually(Duration::from_secs(10), "the rejection counted", || {
            Ok(spans("rejected")? > rejected_before)
        })
        .with_context(logs)?;
        ensure!(
            spans("rejected")? == rejected_before + 1.0
                && spans_of(&collector_pod, &trace)?.is_empty(),
            "{received}: one span rejected, none kept\n{}",
            waypoint_metrics(&waypoint_pod)?
        );
    }
    drop(collector);
    drop(server);
    drop(waypoint);
    Ok(())
}
