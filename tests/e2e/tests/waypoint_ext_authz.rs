//! CUSTOM AuthorizationPolicy at the waypoint, with real traffic: the mesh
//! config's extension providers are read from the `istio` ConfigMap, and the
//! waypoint asks a real authorizer (the sample's, over HTTP and over gRPC,
//! in another namespace, in the mesh or outside it) about the requests the policies' rules
//! match. An allow carries the authorizer's headers to the app, a denial is
//! the authorizer's answer, an authorizer that cannot answer is
//! `statusOnError` or, with `failOpen`, no obstacle, and a provider the
//! mesh config lacks fails closed. A bad mesh config keeps the last good
//! providers in force.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use warren_e2e::{
    agent::warrenctl_waypoint_explain,
    mesh::{
        add_app_service, demo_cluster_with_waypoint_pod, eventually, metric_sum, service_vip,
        start_mesh_and_waypoint, waypoint_metrics,
    },
    workload::{pingpong, start_echo, start_http_server},
};
use warren_testbed::{Pod, PodSpec, ServicePort, binaries, labels, privilege::require_root};

const MESH_FILE: &str = "configmap.istio-system.istio.yaml";
const POLICY_FILE: &str = "authz.demo.ext-authz.yaml";

/// Two providers asking the sample authorizer, one that cannot be reached,
/// and one that cannot be reached but lets requests through.
fn mesh_config(http_port: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{ name: istio, namespace: istio-system }}
data:
  mesh: |-
    extensionProviders:
    - name: sample-http
      envoyExtAuthzHttp:
        service: ext-authz.auth.svc.cluster.local
        port: {http_port}
        pathPrefix: /check
        timeout: 2s
        includeRequestHeadersInCheck: [x-ext-authz]
        headersToUpstreamOnAllow: [x-ext-authz-check-*]
        headersToDownstreamOnDeny: [x-ext-authz-check-result]
    - name: sample-grpc
      envoyExtAuthzGrpc: {{ service: auth/ext-authz.auth.svc.cluster.local, port: 9000 }}
    - name: unreachable
      envoyExtAuthzHttp: {{ service: nowhere.auth.svc.cluster.local, port: 80, statusOnError: "503" }}
    - name: lenient
      envoyExtAuthzHttp: {{ service: nowhere.auth.svc.cluster.local, port: 80, failOpen: true }}
    - name: grpc-body
      envoyExtAuthzGrpc:
        service: ext-authz.auth.svc.cluster.local
        port: 9000
        includeRequestBodyInCheck: {{ maxRequestBytes: 16 }}
    - name: http-partial
      envoyExtAuthzHttp:
        service: ext-authz.auth.svc.cluster.local
        port: 8000
        includeRequestHeadersInCheck: [x-ext-authz]
        headersToUpstreamOnAllow: [x-ext-authz-check-*]
        includeRequestBodyInCheck: {{ maxRequestBytes: 4, allowPartialMessage: true }}
"#
    )
}

fn custom(name: &str, provider: &str, path: &str) -> String {
    format!(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{ name: {name}, namespace: demo }}
spec:
  targetRefs: [{{ kind: Service, name: app }}]
  action: CUSTOM
  provider: {{ name: {provider} }}
  rules: [{{ to: [{{ operation: {{ paths: ["{path}"] }} }}] }}]
"#
    )
}

fn policies() -> String {
    [
        custom("by-http", "sample-http", "/http*"),
        custom("by-grpc", "sample-grpc", "/grpc*"),
        custom("by-unreachable", "unreachable", "/unreachable*"),
        custom("by-lenient", "lenient", "/lenient*"),
        custom("by-undefined", "undefined", "/undefined*"),
        custom("by-grpc-body", "grpc-body", "/upload*"),
        custom("by-http-partial", "http-partial", "/partial*"),
        // The TCP Service: every connection asked about, over gRPC.
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: db-connections, namespace: demo }
spec:
  targetRefs: [{ kind: Service, name: db }]
  action: CUSTOM
  provider: { name: sample-grpc }
  rules: [{}]
"#
        .to_owned(),
    ]
    .join("---\n")
}

/// What one request came back as.
struct Answer {
    status: u16,
    headers: String,
    body: String,
}

impl Answer {
    /// The request headers the app says it received.
    fn app_saw(&self) -> Value {
        serde_json::from_str::<Value>(&self.body)
            .map(|v| v["headers"].clone())
            .unwrap_or(Value::Null)
    }
}

/// One request by curl from `pod`, with `x-ext-authz: <decide>` when given.
fn get(pod: &Pod, url: &str, decide: Option<&str>) -> Result<Answer> {
    call(pod, url, decide, None)
}

/// One request by curl from `pod`: a POST of `body` when given.
fn call(pod: &Pod, url: &str, decide: Option<&str>, body: Option<&str>) -> Result<Answer> {
    let header = decide.map(|d| format!("x-ext-authz: {d}"));
    let mut args = vec!["-sS", "-i", "--max-time", "8"];
    if let Some(header) = &header {
        args.extend(["-H", header.as_str()]);
    }
    if let Some(body) = body {
        args.extend(["--data-binary", body]);
    }
    args.push(url);
    let out = pod.sandbox.exec("curl", &args)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| {
            format!(
                "curl {url}: {text:?} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    Ok(Answer {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_owned(),
    })
}

#[test]
fn a_waypoint_asks_external_authorizers_for_custom_policies() -> Result<()> {
    asks_external_authorizers(true)
}

/// The same with the authorizer outside the mesh (a namespace not opted
/// in): the waypoint reaches it in plaintext, as any such destination.
#[test]
fn an_authorizer_outside_the_mesh_is_asked_too() -> Result<()> {
    asks_external_authorizers(false)
}

fn asks_external_authorizers(authorizer_in_mesh: bool) -> Result<()> {
    require_root()?;
    let mut cluster = demo_cluster_with_waypoint_pod(&[
        ("app", 1, &[("app", "app")], "app"),
        ("client", 0, &[("app", "client")], "client"),
        ("intruder", 0, &[("app", "intruder")], "intruder"),
    ])?;
    cluster.add_service(
        "demo",
        "db",
        labels(&[("app", "app")]),
        vec![ServicePort {
            name: "tcp".into(),
            port: 5432,
            target_port: 9090,
        }],
    )?;
    let mode: &[(&str, &str)] = if authorizer_in_mesh {
        &[("warren.io/dataplane-mode", "ambient")]
    } else {
        &[]
    };
    cluster.add_namespace("auth", labels(mode))?;
    cluster.add_pod(PodSpec {
        name: "ext-authz".into(),
        namespace: "auth".into(),
        node: 0,
        labels: labels(&[("app", "ext-authz")]),
        service_account: Some("ext-authz".into()),
    })?;
    add_app_service(&mut cluster)?;
    cluster.add_service(
        "auth",
        "ext-authz",
        labels(&[("app", "ext-authz")]),
        vec![
            ServicePort {
                name: "http".into(),
                port: 8000,
                target_port: 8000,
            },
            ServicePort {
                name: "grpc".into(),
                port: 9000,
                target_port: 9000,
            },
        ],
    )?;
    let (mesh, waypoint) = start_mesh_and_waypoint(&cluster, "demo")?;
    let config = cluster.config_dir().to_path_buf();
    let app = cluster.pod("app")?.clone();
    let server = start_http_server(&cluster, &app, 8080, &["--name", "app"])?;
    let echo = start_echo(&cluster, &app, 9090)?;
    let db = format!("{}:5432", service_vip(&cluster, "db")?);
    let intruder = cluster.pod("intruder")?.clone();
    let authz_pod = cluster.pod("ext-authz")?.clone();
    let sample = binaries::path("warren-sample")?;
    let authorizer = cluster.spawn(
        &authz_pod.sandbox,
        &sample.to_string_lossy(),
        &[
            "authz",
            "--http",
            "[::]:8000",
            "--grpc",
            "[::]:9000",
            "--allow-service-account",
            "client",
        ],
    )?;
    let vip = service_vip(&cluster, "app")?;
    let base = format!("http://{vip}");
    let client = cluster.pod("client")?.clone();
    let waypoint_pod = cluster.pod("waypoint")?.clone();
    let logs = || {
        format!(
            "{}\nwaypoint:\n{}\nauthorizer:\n{}",
            mesh.logs(),
            waypoint.output(),
            authorizer.output()
        )
    };

    std::fs::write(config.join(MESH_FILE), mesh_config("\"8000\""))?;
    std::fs::write(config.join(POLICY_FILE), policies())?;
    let http = format!("{base}/http/orders?id=7");
    eventually(Duration::from_secs(30), "CUSTOM policies in force", || {
        Ok(get(&client, &http, None)?.status == 403
            && get(&client, &http, Some("allow"))?.status == 200)
    })
    .with_context(logs)?;

    let check_cases = || -> Result<()> {
        // Not matched by any CUSTOM rule: not asked.
        let public = get(&client, &format!("{base}/public"), None)?;
        ensure!(public.status == 200, "/public: {}", public.status);
        ensure!(
            public.app_saw().get("x-ext-authz-check-result").is_none(),
            "/public was checked: {}",
            public.app_saw()
        );

        // HTTP: allowed, with the authorizer's headers for the app; the
        // check asked about the path under the prefix, query and all.
        let allowed = get(&client, &http, Some("allow"))?;
        let saw = allowed.app_saw();
        ensure!(
            allowed.status == 200
                && saw["x-ext-authz-check-result"] == "allowed"
                && saw["x-ext-authz-check-path"] == "/check/http/orders?id=7",
            "allowed over HTTP: {} {saw}\n{}",
            allowed.status,
            logs()
        );
        // Denied: the authorizer's answer, with the header it is allowed to pass.
        let denied = get(&client, &http, None)?;
        ensure!(
            denied.status == 403
                && denied.body.contains("denied by ext_authz")
                && denied.headers.contains("x-ext-authz-check-result: denied"),
            "denied over HTTP: {} {:?} {:?}",
            denied.status,
            denied.headers,
            denied.body
        );
        // The authorizer failed (500): statusOnError, 403 by default.
        let failed = get(&client, &http, Some("fail"))?;
        ensure!(
            failed.status == 403 && !failed.body.contains("denied by"),
            "failed authorizer: {} {:?}",
            failed.status,
            failed.body
        );
        // Too slow for the provider's timeout (2 s against 3): the same.
        let started = Instant::now();
        let slow = get(&client, &http, Some("slow"))?;
        let took = started.elapsed();
        ensure!(
            slow.status == 403
                // 200 after 3 s had it waited; the time says the timeout
                // ended it.
                && took >= Duration::from_millis(1900),
            "slow authorizer: {} after {took:?}",
            slow.status
        );

        // gRPC: the check names the caller; the allow says so to the app.
        let grpc = format!("{base}/grpc/orders");
        let allowed = get(&client, &grpc, Some("allow"))?;
        let saw = allowed.app_saw();
        ensure!(
            allowed.status == 200
                && saw["x-ext-authz-check-result"] == "allowed"
                && saw["x-ext-authz-principal"] == "spiffe://cluster.local/ns/demo/sa/client",
            "allowed over gRPC: {} {saw}\n{}",
            allowed.status,
            logs()
        );
        let denied = get(&client, &grpc, None)?;
        ensure!(
            denied.status == 403
                && denied.body.contains("denied by ext_authz")
                && denied.headers.contains("x-ext-authz-check-result: denied"),
            "denied over gRPC: {} {:?} {:?}",
            denied.status,
            denied.headers,
            denied.body
        );

        // The body in the check: whole (gRPC), refused past the limit, or
        // its first bytes when the provider takes part of it (HTTP); the
        // app gets all of it either way.
        let upload = call(
            &client,
            &format!("{base}/upload"),
            Some("allow"),
            Some("order=7"),
        )?;
        let answer: Value = serde_json::from_str(&upload.body).unwrap_or(Value::Null);
        ensure!(
            upload.status == 200
                && answer["headers"]["x-ext-authz-check-body"] == "order=7"
                && answer["body_bytes"] == 7,
            "body over gRPC: {} {answer}",
            upload.status
        );
        // Exactly the limit is the whole body, not a longer one.
        let exact = "0123456789abcdef";
        let upload = call(
            &client,
            &format!("{base}/upload"),
            Some("allow"),
            Some(exact),
        )?;
        let answer: Value = serde_json::from_str(&upload.body).unwrap_or(Value::Null);
        ensure!(
            upload.status == 200 && answer["headers"]["x-ext-authz-check-body"] == exact,
            "a body of exactly maxRequestBytes: {} {answer}",
            upload.status
        );
        let big = "x".repeat(40);
        let refused = call(
            &client,
            &format!("{base}/upload"),
            Some("allow"),
            Some(&big),
        )?;
        ensure!(
            refused.status == 413,
            "a body past maxRequestBytes: {}",
            refused.status
        );
        let partial = call(
            &client,
            &format!("{base}/partial"),
            Some("allow"),
            Some("abcdefgh"),
        )?;
        let answer: Value = serde_json::from_str(&partial.body).unwrap_or(Value::Null);
        ensure!(
            partial.status == 200
                && answer["headers"]["x-ext-authz-check-body"] == "abcd"
                && answer["headers"]["x-ext-authz-check-partial"] == "true"
                && answer["body_bytes"] == 8,
            "partial body over HTTP: {} {answer}",
            partial.status
        );

        // A TCP connection is asked about at its CONNECT: the sample allows
        // the client's service account, and not the intruder's.
        let through = pingpong(&client, &db, &["--round-trips", "3"])?;
        ensure!(
            through.status.success(),
            "the client's connection to db: {}{}\n{}",
            String::from_utf8_lossy(&through.stdout),
            String::from_utf8_lossy(&through.stderr),
            logs()
        );
        let refused = pingpong(&intruder, &db, &["--round-trips", "3"])?;
        ensure!(
            !refused.status.success(),
            "the intruder's connection to db went through: {}",
            String::from_utf8_lossy(&refused.stdout)
        );

        // No authorizer to ask: statusOnError, or through with failOpen.
        let unreachable = get(&client, &format!("{base}/unreachable"), Some("allow"))?;
        ensure!(
            unreachable.status == 503,
            "unreachable: {}",
            unreachable.status
        );
        let lenient = get(&client, &format!("{base}/lenient"), None)?;
        ensure!(lenient.status == 200, "failOpen: {}", lenient.status);
        // A provider the mesh config lacks: fail closed.
        let undefined = get(&client, &format!("{base}/undefined"), Some("allow"))?;
        ensure!(
            undefined.status == 403 && undefined.body.contains("RBAC: access denied"),
            "undefined provider: {} {:?}",
            undefined.status,
            undefined.body
        );
        Ok(())
    };
    check_cases()?;

    // The waypoint explains whom it would ask, without asking.
    for (path, says) in [
        (
            "/grpc/x",
            "asks sample-grpc (grpc, ext-authz.auth.svc.cluster.local:9000), whose answer decides",
        ),
        (
            "/undefined",
            "names provider \"undefined\", which the mesh config does not define",
        ),
    ] {
        let shown = warrenctl_waypoint_explain(
            &config,
            "demo",
            "demo/client",
            &[&format!("{base}{path}")],
        )?;
        ensure!(
            shown.contains(says),
            "explain of {path} does not say {says:?}:\n{shown}"
        );
    }

    // Each outcome counted by provider: the lenient one let requests
    // through because it could not be asked, not because it allowed.
    let metrics = waypoint_metrics(&waypoint_pod)?;
    for (provider, result) in [
        ("sample-http", "ok"),
        ("sample-http", "denied"),
        ("sample-http", "error"),
        ("sample-grpc", "ok"),
        ("sample-grpc", "denied"),
        ("unreachable", "error"),
        ("lenient", "failure_mode_allowed"),
        ("undefined", "undefined"),
    ] {
        let counted = metric_sum(
            &metrics,
            "warren_waypoint_ext_authz_checks_total",
            &[("provider", provider), ("result", result)],
        );
        ensure!(
            counted >= 1.0,
            "no {result} counted for {provider}:\n{metrics}"
        );
    }
    ensure!(
        metric_sum(
            &metrics,
            "warren_waypoint_ext_authz_checks_total",
            &[("provider", "lenient"), ("result", "ok")],
        ) == 0.0,
        "the unreachable lenient provider answered?\n{metrics}"
    );

    let output = waypoint.output();
    for says in [
        "UAEX",
        "ext_authz_denied: sample-http",
        "ext_authz_error: unreachable",
        "sample-grpc denied the connection",
    ] {
        ensure!(
            output.contains(says),
            "the access log does not say {says:?}:\n{output}"
        );
    }

    // A broken mesh config is refused; the last good providers stay.
    std::fs::write(config.join(MESH_FILE), mesh_config("0"))?;
    eventually(
        Duration::from_secs(20),
        "the agents refuse the broken mesh config",
        || {
            Ok(mesh
                .logs()
                .lines()
                .filter(|l| l.contains("rejected") && l.contains("envoyExtAuthzHttp.port"))
                .count()
                >= 2)
        },
    )
    .with_context(logs)?;
    check_cases()?;

    // The mesh config gone: its providers are withdrawn, and what their
    // policies match is refused.
    std::fs::remove_file(config.join(MESH_FILE))?;
    eventually(Duration::from_secs(20), "providers withdrawn", || {
        let answer = get(&client, &http, Some("allow"))?;
        Ok(answer.status == 403 && answer.body.contains("RBAC: access denied"))
    })
    .with_context(logs)?;

    drop(server);
    drop(echo);
    drop(authorizer);
    drop(waypoint);
    Ok(())
}
