//! The waypoint's resilience features with real traffic and real failures:
//! retries hide a flaky backend, a timeout answers 504 in time, a mirror
//! gets copies without slowing or failing the primary, a connection pool
//! limit answers 503 and counts it, outlier detection ejects a failing
//! endpoint and lets it back, consistent hashing pins a header value to one
//! endpoint, a retry moves off the endpoint that failed, a connection carries
//! at most `maxRequestsPerConnection` requests, PASSTHROUGH leaves balancing
//! to L4, and bad bytes from either side get a clear status, not a panic.
//!
//! One cluster serves every scenario: each has its own Service, so each
//! VirtualService and DestinationRule stays small and independent.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use warren_e2e::mesh::waypoint_pod;
use warren_e2e::{
    agent::warrenctl_waypoint_explain,
    mesh::{
        clusters_objects, eventually, metric_sum, start_mesh, start_waypoint, waypoint_gateway,
        waypoint_metrics,
    },
    workload::{count_status, count_version, load, start_echo, start_http_server},
};
use warren_testbed::{
    Cluster, Pod, PodSpec, Process, ServicePort, labels, privilege::require_root,
};

const NS: &str = "shop";

/// Each scenario's Service and the pods behind it: (service, pods as
/// (name, node)).
const SERVICES: &[(&str, &[(&str, usize)])] = &[
    ("flaky", &[("flaky-0", 1)]),
    ("budget", &[("budget-0", 1)]),
    ("slow", &[("slow-0", 1)]),
    ("primary", &[("primary-0", 1)]),
    ("shadow", &[("shadow-0", 0)]),
    ("pool", &[("pool-0", 1)]),
    ("outlier", &[("outlier-good", 0), ("outlier-bad", 1)]),
    ("hash", &[("hash-0", 0), ("hash-1", 1), ("hash-2", 1)]),
    ("hosts", &[("hosts-good", 0), ("hosts-bad", 1)]),
    ("perconn", &[("perconn-0", 1)]),
    ("passthrough", &[("passthrough-0", 0), ("passthrough-1", 1)]),
    ("broken", &[("broken-0", 1)]),
    ("grpc", &[("grpc-0", 1)]),
    ("db", &[("db-v1", 0), ("db-v2", 1)]),
];

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: portless, namespace: shop }
spec:
  hosts: [portless]
  http:
  - route: [{ destination: { host: primary-alt } }]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: upload, namespace: shop }
spec:
  hosts: [upload]
  http:
  - retries: { attempts: 1, perTryTimeout: 1s, retryOn: connect-failure }
    route: [{ destination: { host: upload } }]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: flaky, namespace: shop }
spec:
  hosts: [flaky]
  http:
  - name: no-retries
    match: [{ headers: { x-retry: { exact: "off" } } }]
    retries: { attempts: 0 }
    route: [{ destination: { host: flaky } }]
  - name: retried
    retries: { attempts: 10, retryOn: 5xx, perTryTimeout: 2s }
    route: [{ destination: { host: flaky } }]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: slow, namespace: shop }
spec:
  hosts: [slow]
  http:
  - name: per-try
    match: [{ headers: { x-per-try: { exact: "on" } } }]
    timeout: 2s
    retries: { attempts: 1, perTryTimeout: 200ms, retryOn: 5xx }
    route: [{ destination: { host: slow } }]
  - timeout: 300ms
    route: [{ destination: { host: slow } }]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: primary, namespace: shop }
spec:
  hosts: [primary]
  http:
  - route: [{ destination: { host: primary } }]
    mirror: { host: shadow }
    mirrorPercentage: { value: 100 }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: pool, namespace: shop }
spec:
  host: pool
  trafficPolicy:
    connectionPool:
      tcp: { maxConnections: 1 }
      http: { http1MaxPendingRequests: 1 }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: pool, namespace: shop }
spec:
  hosts: [pool]
  http:
  - retries: { attempts: 0 }
    route: [{ destination: { host: pool } }]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: outlier, namespace: shop }
spec:
  host: outlier
  trafficPolicy:
    loadBalancer: { simple: ROUND_ROBIN }
    outlierDetection:
      consecutive5xxErrors: 2
      interval: 500ms
      baseEjectionTime: 3s
      maxEjectionPercent: 100
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: outlier, namespace: shop }
spec:
  hosts: [outlier]
  http:
  - name: route-timeout
    match: [{ headers: { x-hang: { exact: "on" } } }]
    timeout: 300ms
    retries: { attempts: 0 }
    route: [{ destination: { host: outlier } }]
  - retries: { attempts: 0 }
    route: [{ destination: { host: outlier } }]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: hash, namespace: shop }
spec:
  host: hash
  trafficPolicy:
    loadBalancer: { consistentHash: { httpHeaderName: x-user } }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: grpc-faulty, namespace: shop }
spec:
  hosts: [grpc-faulty]
  http:
  - fault: { abort: { grpcStatus: UNAVAILABLE, percentage: { value: 100 } } }
    route: [{ destination: { host: grpc } }]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: db, namespace: shop }
spec:
  host: db
  trafficPolicy: { connectionPool: { tcp: { maxConnectionDuration: 1s } } }
  subsets:
  - { name: v1, labels: { version: v1 } }
  - { name: v2, labels: { version: v2 } }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: db, namespace: shop }
spec:
  hosts: [db]
  tcp:
  - match: [{ port: 5432 }]
    route: [{ destination: { host: db, subset: v2 } }]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: budget, namespace: shop }
spec:
  host: budget
  trafficPolicy:
    connectionPool:
      http: { maxRetries: 1 }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: budget, namespace: shop }
spec:
  hosts: [budget]
  http:
  - retries: { attempts: 3, retryOn: 5xx }
    route: [{ destination: { host: budget } }]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: hosts, namespace: shop }
spec:
  host: hosts
  trafficPolicy:
    loadBalancer: { simple: RANDOM }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: hosts, namespace: shop }
spec:
  hosts: [hosts]
  http:
  - name: same-host-allowed
    match: [{ headers: { x-previous: { exact: keep } } }]
    retries: { attempts: 1, retryOn: 5xx, retryIgnorePreviousHosts: false }
    route: [{ destination: { host: hosts } }]
  - retries: { attempts: 1, retryOn: 5xx }
    route: [{ destination: { host: hosts } }]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: perconn, namespace: shop }
spec:
  host: perconn
  trafficPolicy:
    connectionPool:
      http: { maxRequestsPerConnection: 1 }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: passthrough, namespace: shop }
spec:
  host: passthrough
  trafficPolicy:
    loadBalancer: { simple: PASSTHROUGH }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: sticky, namespace: shop }
spec:
  host: sticky
  trafficPolicy:
    loadBalancer:
      consistentHash: { httpCookie: { name: session, path: /, ttl: 60s } }
"#;

struct Shop {
    cluster: Cluster,
    client: Pod,
    waypoint_pod: Pod,
}

impl Shop {
    fn vip(&self, service: &str) -> Result<String> {
        Ok(self
            .cluster
            .services()
            .iter()
            .find(|s| s.name == service)
            .with_context(|| format!("service {service}"))?
            .cluster_ip
            .to_string())
    }

    fn url(&self, service: &str) -> Result<String> {
        Ok(format!("http://{}/", self.vip(service)?))
    }

    fn pod(&self, name: &str) -> Result<Pod> {
        Ok(self.cluster.pod(name)?.clone())
    }

    fn waypoint_metrics(&self) -> Result<String> {
        waypoint_metrics(&self.waypoint_pod)
    }

    /// Runs `curl` in the client pod; returns its stdout.
    fn curl(&self, args: &[&str]) -> Result<String> {
        let out = self.client.sandbox.exec("curl", args)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn setup() -> Result<Shop> {
    let mut cluster = Cluster::builder().nodes(2).pods_per_node(0).up()?;
    cluster.add_namespace(NS, labels(&[("warren.io/dataplane-mode", "ambient")]))?;
    let mut pods = vec![("client".to_owned(), 0, labels(&[("app", "client")]))];
    for (service, backends) in SERVICES {
        for (name, node) in *backends {
            let mut pod_labels = labels(&[("app", service)]);
            if let Some(version) = name.strip_prefix("db-") {
                pod_labels.insert("version".into(), version.into());
            }
            pods.push(((*name).to_owned(), *node, pod_labels));
        }
    }
    for (name, node, pod_labels) in pods {
        let sa = pod_labels.get("app").cloned();
        cluster.add_pod(PodSpec {
            name,
            namespace: NS.into(),
            node,
            labels: pod_labels,
            service_account: sa,
        })?;
    }
    cluster.add_pod(waypoint_pod(NS, 1))?;
    // Each scenario's HTTP Service, and two more over another's pods:
    // `sticky` over the `hash` pods, balanced by a cookie the waypoint hands
    // out, and `perconn-pooled` over `perconn`'s pod without its
    // per-connection limit.
    let own = SERVICES
        .iter()
        .map(|(s, _)| (*s, *s))
        .filter(|(s, _)| !["grpc", "db"].contains(s));
    for (service, app) in own.chain([("sticky", "hash"), ("perconn-pooled", "perconn")]) {
        cluster.add_service(
            NS,
            service,
            labels(&[("app", app)]),
            vec![ServicePort {
                name: "http".into(),
                port: 80,
                target_port: 8080,
            }],
        )?;
    }
    // `portless` routes to `primary-alt`, whose only port (8000) is not the
    // one the request came in on, without naming it.
    // `upload` too, with a short perTryTimeout (a slow upload must not
    // count against it).
    for (service, port) in [("portless", 80), ("primary-alt", 8000), ("upload", 80)] {
        cluster.add_service(
            NS,
            service,
            labels(&[("app", "primary")]),
            vec![ServicePort {
                name: "http".into(),
                port,
                target_port: 8080,
            }],
        )?;
    }
    // A TCP port (by its name): routed per connection by `tcp` rules.
    cluster.add_service(
        NS,
        "db",
        labels(&[("app", "db")]),
        vec![ServicePort {
            name: "tcp-postgres".into(),
            port: 5432,
            target_port: 9000,
        }],
    )?;
    // gRPC on its own port; `grpc-faulty` reaches the same server through a
    // route that aborts every call.
    for service in ["grpc", "grpc-faulty"] {
        cluster.add_service(
            NS,
            service,
            labels(&[("app", "grpc")]),
            vec![ServicePort {
                name: "grpc".into(),
                port: 9090,
                target_port: 9090,
            }],
        )?;
    }
    let client = cluster.pod("client")?.clone();
    let waypoint_pod = cluster.pod("waypoint")?.clone();
    Ok(Shop {
        cluster,
        client,
        waypoint_pod,
    })
}

/// Starts the sample server of `pod`, answering as `version`.
fn serve(shop: &Shop, pod: &str, version: &str, extra: &[&str]) -> Result<Process> {
    let pod = shop.pod(pod)?;
    let mut args = vec!["--version", version, "--name", &pod.name];
    args.extend_from_slice(extra);
    start_http_server(&shop.cluster, &pod, 8080, &args)
}

fn p99_ms(report: &Value) -> f64 {
    report["latency_ms"]["p99"]
        .as_f64()
        .unwrap_or(f64::INFINITY)
}

#[test]
fn the_waypoint_retries_times_out_mirrors_limits_ejects_and_hashes() -> Result<()> {
    require_root()?;
    let shop = setup()?;
    let mut mesh = start_mesh(&shop.cluster)?;
    mesh.wait_ready(Duration::from_secs(30))
        .with_context(|| mesh.logs())?;
    let config_dir = shop.cluster.config_dir();
    std::fs::write(config_dir.join("gateway.shop.yaml"), waypoint_gateway(NS))?;
    std::fs::write(config_dir.join("routes.shop.yaml"), CONFIG)?;
    let waypoint =
        start_waypoint(&shop.cluster, &shop.waypoint_pod, NS).with_context(|| mesh.logs())?;
    let logs = || format!("{}\nwaypoint:\n{}", mesh.logs(), waypoint.output());

    let mut servers = vec![
        serve(&shop, "flaky-0", "v1", &["--fail-rate", "0.5"])?,
        serve(&shop, "budget-0", "v1", &["--fail-rate", "1"])?,
        serve(&shop, "slow-0", "v1", &["--latency", "3s"])?,
        // Slow to read bodies: a mirror that pulled ahead of it would
        // drag a large body past the waypoint's retry buffer.
        serve(&shop, "primary-0", "primary", &["--read-after", "500ms"])?,
        serve(&shop, "pool-0", "v1", &["--latency", "300ms"])?,
        serve(&shop, "outlier-good", "good", &[])?,
        serve(&shop, "hash-0", "h0", &[])?,
        serve(&shop, "hash-1", "h1", &[])?,
        serve(&shop, "hash-2", "h2", &[])?,
    ];

    // Retries: a backend failing half the time looks healthy.
    let url = shop.url("flaky")?;
    let bare = load(
        &shop.client,
        &url,
        &["-n", "200", "-c", "4", "-H", "x-retry: off"],
    )?;
    let retried = load(&shop.client, &url, &["-n", "400", "-c", "4"])?;
    let (bare_ok, retried_ok) = (count_status(&bare, 200), count_status(&retried, 200));
    eprintln!("flaky backend: {bare_ok}/200 OK without retries, {retried_ok}/400 with retries");
    ensure!(
        (40..=160).contains(&bare_ok),
        "without retries about half should fail: {bare}\n{}",
        logs()
    );
    ensure!(
        retried_ok * 100 >= 400 * 99,
        "retries must lift success to ≥ 99 %: {retried}\n{}",
        logs()
    );
    let retries = metric_sum(
        &shop.waypoint_metrics()?,
        "warren_waypoint_retries_total",
        &[],
    );
    ensure!(retries >= 100.0, "retries counted: {retries}");
    // A retry sends the request's body again, whole.
    let posted = load(
        &shop.client,
        &url,
        &["-n", "100", "-c", "4", "--body-bytes", "20000"],
    )?;
    eprintln!(
        "flaky backend: {}/100 POSTs of 20 kB OK with retries",
        count_status(&posted, 200)
    );
    ensure!(
        count_status(&posted, 200) >= 99,
        "retried POSTs must carry their body: {posted}\n{}",
        logs()
    );

    // maxRetries 1: with eight requests failing at once, one retry is in
    // flight at a time (backoff included) and the others answer at once.
    let url = shop.url("budget")?;
    let report = load(&shop.client, &url, &["-n", "40", "-c", "8"])?;
    let metrics = shop.waypoint_metrics()?;
    let budget = [("destination_service", "budget.shop.svc.cluster.local")];
    let refused = metric_sum(&metrics, "warren_waypoint_retry_overflow_total", &budget);
    let made = metric_sum(&metrics, "warren_waypoint_retries_total", &budget);
    eprintln!("maxRetries 1: {made} retries made, {refused} refused");
    ensure!(
        count_status(&report, 200) == 0 && refused > 0.0 && made > 0.0 && made < 40.0 * 3.0,
        "a retry budget of 1 must refuse retries at concurrency 8: {report}\n{}",
        logs()
    );
    // A refused retry is an overflow (`UO`), as Envoy flags it; `URX` is for
    // attempts used up.
    let flagged = |flag: &str| {
        let mut labels = budget.to_vec();
        labels.push(("response_flags", flag));
        metric_sum(&metrics, "istio_requests_total", &labels)
    };
    eprintln!("maxRetries 1: {} UO, {} URX", flagged("UO"), flagged("URX"));
    ensure!(
        flagged("UO") > 0.0,
        "answers whose retry was refused are flagged UO: {metrics}"
    );

    // retryBudget replaces maxRetries (as in Envoy): a minimum of 8 lets every
    // one of the eight requests retry, maxRetries 1 notwithstanding.
    let with_budget = |max_retries: u32, budget: &str| {
        CONFIG.replacen(
            "connectionPool:\n      http: { maxRetries: 1 }",
            &format!(
                "connectionPool:\n      http: {{ maxRetries: {max_retries} }}\n    retryBudget: {budget}"
            ),
            1,
        )
    };
    // Retries made and refused over 40 requests, 8 at a time.
    let retries_of_40 = || -> Result<(f64, f64)> {
        let before = shop.waypoint_metrics()?;
        load(&shop.client, &url, &["-n", "40", "-c", "8"])?;
        let after = shop.waypoint_metrics()?;
        let delta = |name| metric_sum(&after, name, &budget) - metric_sum(&before, name, &budget);
        Ok((
            delta("warren_waypoint_retries_total"),
            delta("warren_waypoint_retry_overflow_total"),
        ))
    };
    let routes = config_dir.join("routes.shop.yaml");
    std::fs::write(
        &routes,
        with_budget(1, "{ percent: 100, minRetryConcurrency: 8 }"),
    )?;
    let mut seen = (0.0, 0.0);
    eventually(
        Duration::from_secs(20),
        "retryBudget replaces maxRetries",
        || {
            seen = retries_of_40()?;
            // Before the change some retries are refused; after it, none.
            Ok(seen == (120.0, 0.0))
        },
    )
    .with_context(|| format!("retries made, refused: {seen:?}\n{}", logs()))?;
    eprintln!(
        "retryBudget min 8 over maxRetries 1: {} retries made, {} refused",
        seen.0, seen.1
    );
    // A quarter of the requests (eight at a time: two retries), with a
    // minimum of 1: retries are refused again, by the budget alone (a
    // maxRetries of 100 would let every one through).
    std::fs::write(
        &routes,
        with_budget(100, "{ percent: 25, minRetryConcurrency: 1 }"),
    )?;
    eventually(
        Duration::from_secs(20),
        "a retry budget of 25 % refuses retries",
        || {
            seen = retries_of_40()?;
            Ok(seen.0 > 0.0 && seen.0 < 120.0 && seen.1 > 0.0)
        },
    )
    .with_context(|| format!("retries made, refused: {seen:?}\n{}", logs()))?;
    eprintln!(
        "retryBudget 25 %: {} retries made, {} refused",
        seen.0, seen.1
    );
    std::fs::write(&routes, CONFIG)?;

    // Timeout: a 3 s backend behind a 300 ms route timeout answers 504 early.
    let report = load(&shop.client, &shop.url("slow")?, &["-n", "8", "-c", "4"])?;
    eprintln!(
        "timeout: {} × 504, p99 {:.0} ms (backend takes 3 s)",
        count_status(&report, 504),
        p99_ms(&report)
    );
    ensure!(
        count_status(&report, 504) == 8 && p99_ms(&report) < 2000.0,
        "the route timeout must answer 504 well before the backend: {report}\n{}",
        logs()
    );
    // perTryTimeout: each of two tries gives up after 200 ms, well within
    // the route's 2 s.
    let slow = [("destination_service", "slow.shop.svc.cluster.local")];
    let retried_before = metric_sum(
        &shop.waypoint_metrics()?,
        "warren_waypoint_retries_total",
        &slow,
    );
    let report = load(
        &shop.client,
        &shop.url("slow")?,
        &["-n", "4", "-c", "2", "-H", "x-per-try: on"],
    )?;
    let retried = metric_sum(
        &shop.waypoint_metrics()?,
        "warren_waypoint_retries_total",
        &slow,
    ) - retried_before;
    eprintln!(
        "perTryTimeout: {} × 504, {retried} retries, p99 {:.0} ms (two tries of 200 ms)",
        count_status(&report, 504),
        p99_ms(&report)
    );
    ensure!(
        count_status(&report, 504) == 4 && retried >= 4.0 && p99_ms(&report) < 1500.0,
        "each try must time out after perTryTimeout and be retried once: {report}\n{}",
        logs()
    );
    // A client that gives up before the answer is reported as Envoy does:
    // response code 0, flag DC.
    let gone = [
        ("destination_service", "slow.shop.svc.cluster.local"),
        ("response_code", "0"),
        ("response_flags", "DC"),
    ];
    let gone_before = metric_sum(&shop.waypoint_metrics()?, "istio_requests_total", &gone);
    load(
        &shop.client,
        &shop.url("slow")?,
        &[
            "-n",
            "3",
            "-c",
            "1",
            "-H",
            "x-per-try: on",
            "--timeout",
            "100ms",
        ],
    )?;
    eventually(
        Duration::from_secs(5),
        "requests whose client left are counted with DC",
        || {
            let metrics = shop.waypoint_metrics()?;
            Ok(metric_sum(&metrics, "istio_requests_total", &gone) - gone_before >= 3.0)
        },
    )
    .with_context(logs)?;

    // Mirror: copies reach a slow shadow, and then a dead one, while the
    // primary's answers stay fast and OK.
    let mut shadow = serve(
        &shop,
        "shadow-0",
        "shadow",
        &["--latency", "1s", "--access-log"],
    )?;
    let url = shop.url("primary")?;
    let report = load(&shop.client, &url, &["-n", "60", "-c", "2"])?;
    ensure!(
        count_version(&report, "primary") == 60 && p99_ms(&report) < 800.0,
        "a slow mirror must not slow the primary: {report}\n{}",
        logs()
    );
    // Bodies past the waypoint's 8 MiB retry buffer: the copy may fall
    // behind and fail, the primary may not.
    let report = load(
        &shop.client,
        &url,
        &["-n", "6", "-c", "2", "--body-bytes", "10485760"],
    )?;
    ensure!(
        count_version(&report, "primary") == 6,
        "a mirror must not fail the primary of a body past the retry buffer: {report}\n{}",
        logs()
    );
    eventually(
        Duration::from_secs(10),
        "the shadow receives the mirrored copies",
        || Ok(shadow.output().matches("served").count() >= 60),
    )
    .with_context(|| format!("shadow:\n{}\n{}", shadow.output(), logs()))?;
    shadow.stop()?;
    let report = load(&shop.client, &url, &["-n", "60", "-c", "2"])?;
    ensure!(
        count_version(&report, "primary") == 60 && p99_ms(&report) < 800.0,
        "a dead mirror must not fail or slow the primary: {report}\n{}",
        logs()
    );
    let mirrored = metric_sum(
        &shop.waypoint_metrics()?,
        "warren_waypoint_mirrored_requests_total",
        &[],
    );
    eprintln!("mirror: 120 primary answers OK, {mirrored} copies sent");
    ensure!(mirrored >= 120.0, "copies counted: {mirrored}");

    // Connection pool: one connection and one pending request; a third
    // concurrent request overflows with 503.
    let report = load(&shop.client, &shop.url("pool")?, &["-n", "30", "-c", "3"])?;
    let (ok, overflow) = (count_status(&report, 200), count_status(&report, 503));
    let counted = metric_sum(
        &shop.waypoint_metrics()?,
        "warren_waypoint_upstream_overflow_total",
        &[],
    );
    eprintln!("pool: {ok} OK, {overflow} × 503 (overflow counter {counted})");
    ensure!(
        ok > 0 && overflow > 0 && ok + overflow == 30 && counted >= overflow as f64,
        "maxConnections 1 + 1 pending at concurrency 3: {report}\n{}",
        logs()
    );
    // A connection still streaming its answer is busy: while one upload
    // streams through /echo-stream for 3 s, a request waits for its end (or
    // overflows) rather than open a second connection.
    let mut streaming = shop.cluster.spawn(
        &shop.client.sandbox,
        "bash",
        &[
            "-c",
            &format!(
                "(echo a; sleep 3; echo b) | curl -sS -T - -o /dev/null -w 'status %{{http_code}}' {}echo-stream",
                shop.url("pool")?
            ),
        ],
    )?;
    std::thread::sleep(Duration::from_millis(700));
    let report = load(
        &shop.client,
        &shop.url("pool")?,
        &["-n", "3", "-c", "3", "--timeout", "10s"],
    )?;
    let waited = report["latency_ms"]["max"].as_f64().unwrap_or(0.0);
    streaming.wait_exit(Duration::from_secs(10))?;
    eprintln!(
        "pool: during a 3 s streamed answer, {} OK / {} × 503, the OK one after {waited:.0} ms",
        count_status(&report, 200),
        count_status(&report, 503)
    );
    ensure!(
        streaming.output().contains("status 200")
            && count_status(&report, 200) >= 1
            && waited >= 1500.0,
        "the slot must last as long as the streamed answer: {report}\n{}\n{}",
        streaming.output(),
        logs()
    );

    // Outlier detection: a failing endpoint is ejected, then let back.
    let mut bad = serve(&shop, "outlier-bad", "bad", &["--fail-rate", "1"])?;
    let url = shop.url("outlier")?;
    let first = load(&shop.client, &url, &["-n", "20", "-c", "1"])?;
    let then = load(&shop.client, &url, &["-n", "20", "-c", "1"])?;
    eprintln!(
        "outlier: {} × 503 in the first 20, then {} of 20 from the good endpoint",
        count_status(&first, 503),
        count_version(&then, "good")
    );
    ensure!(
        count_status(&first, 503) <= 3 && count_version(&then, "good") == 20,
        "the failing endpoint must be ejected after 2 errors: {first}\n{then}\n{}",
        logs()
    );
    let ejections = metric_sum(
        &shop.waypoint_metrics()?,
        "warren_waypoint_outlier_ejections_total",
        &[],
    );
    ensure!(ejections >= 1.0, "ejection counted: {ejections}");
    bad.stop()?;
    let mut healed = serve(&shop, "outlier-bad", "bad", &[])?;
    let healed_at = Instant::now();
    eventually(
        Duration::from_secs(15),
        "the healed endpoint returns",
        || {
            let report = load(&shop.client, &url, &["-n", "10", "-c", "1"])?;
            Ok(count_version(&report, "bad") > 0)
        },
    )
    .with_context(logs)?;
    eprintln!(
        "outlier: back in the pool {:?} after healing",
        healed_at.elapsed()
    );

    // An endpoint that hangs, behind a route timeout and no per-try
    // timeout: each request the route's timeout cuts short counts against
    // it, so it is ejected too (Envoy's local-origin timeout).
    healed.stop()?;
    servers.push(serve(&shop, "outlier-bad", "bad", &["--latency", "5s"])?);
    let hung = load(
        &shop.client,
        &url,
        &[
            "-n",
            "20",
            "-c",
            "1",
            "-H",
            "x-hang: on",
            "--timeout",
            "10s",
        ],
    )?;
    eprintln!(
        "outlier: a hanging endpoint behind a 300 ms route timeout: {} × 504, {} of 20 from the good one",
        count_status(&hung, 504),
        count_version(&hung, "good")
    );
    ensure!(
        (1..=3).contains(&count_status(&hung, 504)) && count_version(&hung, "good") >= 17,
        "route timeouts must eject the hanging endpoint after 2: {hung}\n{}",
        logs()
    );

    // Consistent hash: each user sticks to one endpoint; users spread.
    let url = shop.url("hash")?;
    let mut used = BTreeSet::new();
    for user in 0..10 {
        let header = format!("x-user: user-{user}");
        let report = load(&shop.client, &url, &["-n", "10", "-c", "2", "-H", &header])?;
        let versions: Vec<&str> = ["h0", "h1", "h2"]
            .into_iter()
            .filter(|v| count_version(&report, v) > 0)
            .collect();
        ensure!(
            versions.len() == 1 && count_status(&report, 200) == 10,
            "user-{user} must stay on one endpoint: {report}"
        );
        used.insert(versions[0]);
    }
    eprintln!("consistent hash: 10 users on endpoints {used:?}, each on one");
    ensure!(used.len() >= 2, "10 users all hashed to {used:?}");

    // Cookie hash with a ttl: a client without the cookie gets one, and
    // with it stays on one endpoint; new clients spread.
    let url = shop.url("sticky")?;
    let mut homes = BTreeSet::new();
    for client in 0..8 {
        let head = shop.curl(&["-sS", "-o", "/dev/null", "-D", "-", &url])?;
        let cookie = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("set-cookie")
                    .then(|| value.trim().to_owned())
            })
            .with_context(|| format!("client {client}: no Set-Cookie in\n{head}"))?;
        ensure!(
            cookie.starts_with("session=")
                && cookie.contains("Max-Age=60")
                && cookie.contains("Path=/"),
            "the cookie names the session, its ttl and path: {cookie}"
        );
        let session = cookie.split(';').next().unwrap_or_default().to_owned();
        let mut versions = BTreeSet::new();
        for _ in 0..8 {
            let head = shop.curl(&["-sS", "-o", "/dev/null", "-D", "-", "-b", &session, &url])?;
            ensure!(
                !head.to_ascii_lowercase().contains("set-cookie"),
                "with the cookie, no new one: {head}"
            );
            let version = head
                .lines()
                .find_map(|l| l.strip_prefix("x-sample-version: "))
                .map(str::trim)
                .with_context(|| format!("no version in\n{head}"))?;
            versions.insert(version.to_owned());
        }
        ensure!(
            versions.len() == 1,
            "client {client} ({session}) must stay on one endpoint: {versions:?}"
        );
        homes.extend(versions);
    }
    eprintln!("cookie hash: 8 clients, each kept on one endpoint, on {homes:?}");
    ensure!(homes.len() >= 2, "8 sessions all on {homes:?}");

    // A retry goes to another endpoint than the one that failed: with one of
    // two endpoints always failing and one retry, every request succeeds;
    // allowed back on the same endpoint, about a quarter fail.
    let _hosts = [
        serve(&shop, "hosts-good", "good", &[])?,
        serve(&shop, "hosts-bad", "bad", &["--fail-rate", "1"])?,
    ];
    let url = shop.url("hosts")?;
    let avoiding = load(&shop.client, &url, &["-n", "100", "-c", "2"])?;
    let same = load(
        &shop.client,
        &url,
        &["-n", "100", "-c", "2", "-H", "x-previous: keep"],
    )?;
    let (avoiding_ok, same_ok) = (count_status(&avoiding, 200), count_status(&same, 200));
    eprintln!(
        "retry host: {avoiding_ok}/100 OK avoiding the failed endpoint, {same_ok}/100 when allowed back on it"
    );
    ensure!(
        avoiding_ok == 100,
        "a retry must leave the endpoint that failed: {avoiding}\n{}",
        logs()
    );
    ensure!(
        (50..=95).contains(&same_ok),
        "with retryIgnorePreviousHosts false about a quarter fail: {same}\n{}",
        logs()
    );

    // maxRequestsPerConnection 1: a new upstream connection per request; the
    // same pod behind a Service without the limit keeps one.
    let mut perconn = serve(&shop, "perconn-0", "v1", &["--access-log"])?;
    let accepted = |p: &Process| p.output().matches("connection accepted").count();
    let report = load(
        &shop.client,
        &shop.url("perconn-pooled")?,
        &["-n", "20", "-c", "1"],
    )?;
    ensure!(count_status(&report, 200) == 20, "{report}");
    let pooled = accepted(&perconn);
    let report = load(
        &shop.client,
        &shop.url("perconn")?,
        &["-n", "20", "-c", "1"],
    )?;
    ensure!(count_status(&report, 200) == 20, "{report}");
    let limited = accepted(&perconn) - pooled;
    eprintln!(
        "maxRequestsPerConnection: 20 requests took {pooled} connection(s) pooled, {limited} with a limit of 1"
    );
    ensure!(
        pooled <= 3 && limited >= 19,
        "one request per upstream connection with maxRequestsPerConnection 1 \
         (pooled {pooled}, limited {limited}):\n{}\n{}",
        perconn.output(),
        logs()
    );

    // A request body streams to the backend as the client sends it (the
    // backend logs the request on its headers, 3 s before the body ends),
    // and one larger than the 8 MiB retry buffer goes through whole.
    let url = format!("{}stream", shop.url("perconn-pooled")?);
    let mut upload = shop.cluster.spawn(
        &shop.client.sandbox,
        "bash",
        &[
            "-c",
            &format!("(echo first; sleep 3; echo second) | curl -sS -o /dev/null -w 'status %{{http_code}}' -T - {url}"),
        ],
    )?;
    let streamed = Instant::now();
    eventually(
        Duration::from_secs(2),
        "the backend has the request while its body is still coming",
        || Ok(perconn.output().contains("path=/stream")),
    )
    .with_context(|| format!("backend:\n{}\n{}", perconn.output(), logs()))?;
    let early = streamed.elapsed();
    upload.wait_exit(Duration::from_secs(10))?;
    ensure!(
        upload.output().contains("status 200"),
        "the streamed upload is answered once its body ends: {}",
        upload.output()
    );
    // Both directions of one request at once, over h2c: each chunk of the
    // body is sent only after the one before came back from the backend, as
    // a bidirectional gRPC stream goes.
    let sample = warren_testbed::binaries::path("warren-sample")?;
    let out = shop.client.sandbox.exec(
        &sample.to_string_lossy(),
        [
            "duplex",
            "--url",
            &shop.url("perconn-pooled")?,
            "--chunks",
            "3",
        ],
    )?;
    let duplex: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("duplex: {}", String::from_utf8_lossy(&out.stderr)))?;
    eprintln!("full duplex (h2c): {duplex}");
    ensure!(
        duplex["echoed"] == 3,
        "each chunk must come back before the next is sent: {duplex}\n{}",
        logs()
    );
    let report = load(
        &shop.client,
        &shop.url("perconn-pooled")?,
        &[
            "-n",
            "2",
            "-c",
            "1",
            "--body-bytes",
            "12000000",
            "--timeout",
            "20s",
        ],
    )?;
    eprintln!(
        "streaming: the backend had the request {early:?} after it started (its body took 3 s); \
         12 MB uploads: {} of 2 OK",
        count_status(&report, 200)
    );
    ensure!(
        count_status(&report, 200) == 2,
        "a body past the retry buffer streams through: {report}\n{}",
        logs()
    );
    perconn.stop()?;

    // PASSTHROUGH: the waypoint leaves the choice to L4 (round robin over the
    // ready endpoints), rather than answering "no healthy upstream".
    let _passthrough = [
        serve(&shop, "passthrough-0", "p0", &[])?,
        serve(&shop, "passthrough-1", "p1", &[])?,
    ];
    let report = load(
        &shop.client,
        &shop.url("passthrough")?,
        &["-n", "20", "-c", "1"],
    )?;
    let (p0, p1) = (count_version(&report, "p0"), count_version(&report, "p1"));
    eprintln!("passthrough: {p0} + {p1} of 20 from the two endpoints");
    ensure!(
        count_status(&report, 200) == 20 && p0 >= 5 && p1 >= 5,
        "PASSTHROUGH must reach both endpoints: {report}\n{}",
        logs()
    );

    // Bad input from the client: garbage, oversized headers.
    let host = shop.vip("flaky")?;
    let out = shop.client.sandbox.exec(
        "bash",
        [
            "-c",
            &format!(
                "exec 3<>/dev/tcp/{host}/80; printf 'THIS IS NOT HTTP\\r\\n\\r\\n' >&3; timeout 5 head -c 200 <&3"
            ),
        ],
    )?;
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        answer.starts_with("HTTP/1.1 400"),
        "garbage must get 400: {answer:?}\n{}",
        logs()
    );
    let big = format!("x-big: {}", "a".repeat(100 << 10));
    let status = shop.curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        &big,
        &shop.url("flaky")?,
    ])?;
    ensure!(
        status == "431",
        "oversized headers must get 431, got {status}\n{}",
        logs()
    );

    // Bad input from the upstream: an echo server answers a request with the
    // request itself, which is no HTTP response.
    let broken = shop.pod("broken-0")?;
    servers.push(start_echo(&shop.cluster, &broken, 8080)?);
    let report = load(&shop.client, &shop.url("broken")?, &["-n", "4", "-c", "1"])?;
    ensure!(
        count_status(&report, 502) == 4,
        "an invalid upstream response must be answered 502: {report}\n{}",
        logs()
    );

    // gRPC: statuses travel in HTTP/2 trailers, through both HBONE hops.
    let grpc_pod = shop.pod("grpc-0")?;
    let sample = warren_testbed::binaries::path("warren-sample")?;
    let sample = sample.to_string_lossy();
    let mut grpc_server = shop.cluster.spawn(
        &grpc_pod.sandbox,
        &sample,
        &["grpc-server", "--listen", "[::]:9090"],
    )?;
    warren_e2e::workload::wait_listening(&grpc_pod, 9090, &mut grpc_server)?;
    servers.push(grpc_server);
    let grpc_url =
        |service: &str| -> Result<String> { Ok(format!("http://{}:9090", shop.vip(service)?)) };
    let check = |service: &str, name: &str| -> Result<Value> {
        let out = shop.client.sandbox.exec(
            &sample,
            [
                "grpc-check",
                "--url",
                &grpc_url(service)?,
                "--service",
                name,
            ],
        )?;
        ensure!(
            out.status.success(),
            "grpc-check: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).context("grpc-check's JSON")
    };
    let serving = check("grpc", "warren.sample.Serving")?;
    let not_serving = check("grpc", "warren.sample.NotServing")?;
    let unknown = check("grpc", "no.such.Service")?;
    let aborted = check("grpc-faulty", "warren.sample.Serving")?;
    eprintln!("grpc: {serving} / {not_serving} / {unknown} / fault: {aborted}");
    ensure!(
        serving["code"] == 0 && serving["serving_status"] == "SERVING",
        "a gRPC call through the waypoint: {serving}\n{}",
        logs()
    );
    ensure!(
        not_serving["serving_status"] == "NOT_SERVING",
        "{not_serving}"
    );
    ensure!(
        unknown["code"] == 5,
        "the server's NOT_FOUND must cross the waypoint: {unknown}\n{}",
        logs()
    );
    ensure!(
        aborted["code"] == 14,
        "a grpcStatus abort answers UNAVAILABLE: {aborted}\n{}",
        logs()
    );
    let metrics = shop.waypoint_metrics()?;
    let not_found = metric_sum(
        &metrics,
        "istio_requests_total",
        &[("request_protocol", "grpc"), ("grpc_response_status", "5")],
    );
    ensure!(
        not_found >= 1.0,
        "grpc status in istio_requests_total: {metrics}"
    );
    // OK travels in trailers after the message: the report waits for them,
    // and counts the body's bytes (an HTTP/2 answer declares no length).
    let grpc_ok = [("request_protocol", "grpc"), ("grpc_response_status", "0")];
    let ok = metric_sum(&metrics, "istio_requests_total", &grpc_ok);
    let ok_bytes = metric_sum(&metrics, "istio_response_bytes_sum", &grpc_ok);
    eprintln!(
        "grpc: {ok} OK calls reported with their trailers' status, {ok_bytes} response bytes"
    );
    ensure!(
        ok >= 2.0 && ok_bytes > 0.0,
        "grpc status from trailers and response bytes in the metrics: {metrics}"
    );

    // An HTTP/1.1 upgrade (as WebSocket does) is routed, switched and then
    // spliced: bytes after the 101 reach the server and come back.
    let out = shop.client.sandbox.exec(
        "bash",
        [
            "-c",
            &format!(
                "exec 3<>/dev/tcp/{}/80; printf 'GET /chat HTTP/1.1\\r\\nHost: primary\\r\\nConnection: Upgrade\\r\\nUpgrade: warren-echo\\r\\n\\r\\n' >&3; printf 'hello-through-the-waypoint' >&3; timeout 2 cat <&3",
                shop.vip("primary")?
            ),
        ],
    )?;
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("upgrade: {answer:?}");
    ensure!(
        answer.starts_with("HTTP/1.1 101")
            && answer.to_ascii_lowercase().contains("upgrade: warren-echo")
            && answer.ends_with("hello-through-the-waypoint"),
        "an upgrade must be switched and spliced through the waypoint: {answer:?}\n{}",
        logs()
    );
    // A destination without a port reaches its service's only port (8000),
    // not the one the request came in on (80), as Istio does.
    let answer = shop.curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
        &shop.url("portless")?,
    ])?;
    ensure!(
        answer == "200",
        "a portless destination of a one-port Service: {answer}\n{}",
        logs()
    );
    // A try's timeout starts once the client's request is complete, as
    // Envoy's does: an upload slower than perTryTimeout (1 s) is not cut.
    let started = Instant::now();
    let out = shop.client.sandbox.exec(
        "bash",
        [
            "-c",
            &format!(
                "head -c 30000 /dev/zero | curl -sS --limit-rate 12k --max-time 20 --data-binary @- -o /dev/null -w '%{{http_code}}' {}",
                shop.url("upload")?
            ),
        ],
    )?;
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("slow upload: {answer} after {:?}", started.elapsed());
    ensure!(
        answer == "200" && started.elapsed() > Duration::from_secs(2),
        "an upload slower than perTryTimeout must not be cut by it: {answer:?} after {:?}\n{}",
        started.elapsed(),
        logs()
    );
    // An upgraded connection keeps its endpoint busy until it closes, as
    // Envoy counts it: LEAST_REQUEST and maxConnections see WebSockets too.
    let busy = |o: &serde_json::Map<String, Value>| {
        o.get("address").is_some()
            && o.get("active_requests")
                .and_then(Value::as_u64)
                .is_some_and(|n| n > 0)
    };
    let primary = shop.vip("primary")?;
    std::thread::scope(|scope| -> Result<()> {
        let held_open = scope.spawn(|| {
            shop.client.sandbox.exec(
                "bash",
                [
                    "-c",
                    &format!(
                        "exec 3<>/dev/tcp/{primary}/80; printf 'GET /chat HTTP/1.1\\r\\nHost: primary\\r\\nConnection: Upgrade\\r\\nUpgrade: warren-echo\\r\\n\\r\\n' >&3; timeout 3 cat <&3 >/dev/null"
                    ),
                ],
            )
        });
        let seen = eventually(
            Duration::from_millis(2500),
            "an upgraded connection's endpoint is busy",
            || Ok(!clusters_objects(&shop.waypoint_pod.sandbox, busy)?.is_empty()),
        );
        held_open
            .join()
            .map_err(|_| anyhow::anyhow!("the upgrading client panicked"))??;
        seen.with_context(logs)
    })?;
    eventually(
        Duration::from_secs(3),
        "the endpoint is idle once the upgraded connection closed",
        || Ok(clusters_objects(&shop.waypoint_pod.sandbox, busy)?.is_empty()),
    )
    .with_context(logs)?;

    // TCP routes: every connection to the db port goes to subset v2, and
    // the bytes come back intact.
    for pod in ["db-v1", "db-v2"] {
        let pod = shop.pod(pod)?;
        servers.push(start_echo(&shop.cluster, &pod, 9000)?);
    }
    let db = format!("{}:5432", shop.vip("db")?);
    for seed in 1..=4 {
        let out = shop.client.sandbox.exec(
            &sample,
            [
                "stream",
                "--connect",
                db.as_str(),
                "--bytes",
                "256K",
                "--seed",
                &seed.to_string(),
            ],
        )?;
        ensure!(
            out.status.success(),
            "a stream through the waypoint's tcp route: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            logs()
        );
    }
    let v2 = shop.pod("db-v2")?.ip.to_string();
    let v1 = shop.pod("db-v1")?.ip.to_string();
    let output = waypoint.output();
    let connections: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("connection") && l.contains("protocol=\"tcp\""))
        .collect();
    eprintln!("tcp route: {} connections logged", connections.len());
    ensure!(
        connections.len() == 4
            && connections.iter().all(|l| {
                l.contains(&v2)
                    && !l.contains(&v1)
                    && l.contains("sent=262144")
                    && l.contains("received=262144")
            }),
        "4 connections must go to db-v2 ({v2}):\n{}\n{}",
        connections.join("\n"),
        output
            .lines()
            .filter(|l| l.contains("5432") || l.contains("tcp"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The waypoint explains the TCP route it took, and a gRPC abort for every
    // call (nothing after it: no route, no retries).
    let grpc_faulty = format!(
        "http://{}:9090/grpc.health.v1.Health/Check",
        shop.vip("grpc-faulty")?
    );
    for (request, says, never) in [
        (
            vec![format!("http://{db}/")],
            vec![
                "rule \"spec.tcp[0]\"",
                "relay to db.shop.svc.cluster.local subset v2 (100%)",
                "verdict: forwarded",
            ],
            "retries",
        ),
        (
            vec![
                "-X".to_owned(),
                "POST".to_owned(),
                "-H".to_owned(),
                "content-type: application/grpc".to_owned(),
                grpc_faulty,
            ],
            vec![
                "a gRPC call",
                "abort with gRPC status 14 for 100% of requests",
                "verdict: answered",
            ],
            "retries",
        ),
    ] {
        let request: Vec<&str> = request.iter().map(String::as_str).collect();
        let shown =
            warrenctl_waypoint_explain(&shop.cluster.config_dir(), NS, "shop/client", &request)?;
        for part in says {
            ensure!(
                shown.contains(part),
                "warrenctl waypoint explain {request:?} does not say {part:?}:\n{shown}"
            );
        }
        ensure!(
            !shown.contains(never),
            "{request:?} goes no further, yet:\n{shown}"
        );
    }

    // maxConnectionDuration 1s: an idle connection to the db port is
    // closed by the waypoint after a second, not left to the client's 5 s.
    let held = Instant::now();
    let out = shop.client.sandbox.exec(
        "bash",
        [
            "-c",
            &format!(
                "exec 3<>/dev/tcp/{}/5432; printf hello >&3; timeout 5 cat <&3; echo \" exit $?\"",
                shop.vip("db")?
            ),
        ],
    )?;
    let lasted = held.elapsed();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "tcp maxConnectionDuration 1s: closed after {lasted:?} ({})",
        said.trim()
    );
    let output = waypoint.output();
    let cut = output
        .lines()
        .find(|l| l.contains("flags=\"DT\""))
        .unwrap_or_default();
    eprintln!("tcp maxConnectionDuration access line: {cut}");
    ensure!(
        said.starts_with("hello")
            && said.trim_end().ends_with("exit 0")
            && lasted >= Duration::from_millis(900)
            && lasted < Duration::from_secs(4)
            && cut.contains("sent=5")
            && cut.contains("received=5"),
        "an idle tcp connection must be closed at maxConnectionDuration (1s): {lasted:?} {said:?}\n{}",
        logs()
    );

    // tcp.idleTimeout 1s (hot, with a longer maxConnectionDuration): a
    // connection that sends a byte every 0.6 s lives on, and is closed a
    // second after its last one, about 2.2 s in (a timer from the
    // connection's start would have closed it before the third byte).
    std::fs::write(
        shop.cluster.config_dir().join("routes.shop.yaml"),
        CONFIG.replacen(
            "connectionPool: { tcp: { maxConnectionDuration: 1s } }",
            "connectionPool: { tcp: { maxConnectionDuration: 20s, idleTimeout: 1s } }",
            1,
        ),
    )?;
    let script = format!(
        "exec 3<>/dev/tcp/{}/5432; printf a >&3; sleep 0.6; printf b >&3; sleep 0.6; printf c >&3; \
         timeout 8 cat <&3; echo \" exit $?\"",
        shop.vip("db")?
    );
    let mut seen = (Duration::ZERO, String::new());
    eventually(Duration::from_secs(30), "tcp.idleTimeout applied", || {
        let held = Instant::now();
        let out = shop.client.sandbox.exec("bash", ["-c", &script])?;
        seen = (
            held.elapsed(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        );
        // Before the change the connection ends at maxConnectionDuration
        // (1 s, after "ab"), so only the new setting passes.
        Ok(seen.1.starts_with("abc") && seen.1.trim_end().ends_with("exit 0"))
    })
    .with_context(|| format!("last: {seen:?}\n{}", logs()))?;
    let (lasted, said) = seen;
    let output = waypoint.output();
    let idle = output
        .lines()
        .find(|l| l.contains("tcp_session_idle_timeout"))
        .unwrap_or_default();
    eprintln!(
        "tcp idleTimeout 1s: closed after {lasted:?} ({}); access line: {idle}",
        said.trim()
    );
    ensure!(
        lasted >= Duration::from_millis(2000)
            && lasted < Duration::from_secs(5)
            && idle.contains("flags=\"-\"")
            && idle.contains("sent=3")
            && idle.contains("received=3"),
        "a tcp connection must be closed 1s after its last byte (tcp.idleTimeout): {lasted:?} {said:?}\n{}",
        logs()
    );

    // Still serving after all of it.
    let report = load(
        &shop.client,
        &shop.url("primary")?,
        &["-n", "10", "-c", "2"],
    )?;
    ensure!(
        count_status(&report, 200) == 10,
        "after bad input: {report}"
    );
    ensure!(
        !waypoint.output().contains("panicked"),
        "the waypoint panicked:\n{}",
        waypoint.output()
    );
    drop(servers);
    drop(waypoint);
    Ok(())
}
