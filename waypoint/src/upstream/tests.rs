//! Scenarios across the upstream module: rules in, picks, admissions and
//! ejections out. Time is an `Instant` the tests move by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::COOKIE;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::json;
use tokio::time::timeout;
use warren_model::istio::DestinationRuleSpec;

use super::*;

const HOST: &str = "reviews.default.svc.cluster.local";

fn dr(name: &str, host: &str, spec: serde_json::Value) -> DrInput {
    let spec: DestinationRuleSpec =
        serde_json::from_value(spec).expect("test DestinationRule spec is valid");
    DrInput {
        namespace: "default".into(),
        name: name.into(),
        created: 0,
        host: host.into(),
        spec,
    }
}

/// A waypoint in `default`, the rules' namespace.
fn scope() -> Scope {
    Scope {
        namespace: "default".into(),
        root: "istio-system".into(),
        labels: BTreeMap::new(),
    }
}

fn build(rules: Vec<DrInput>) -> Policies {
    let (policies, errors) = Policies::build(rules, scope());
    assert!(errors.is_empty(), "unexpected errors: {errors:?}");
    policies
}

fn endpoints(n: u8) -> Vec<Endpoint> {
    (0..n).map(endpoint).collect()
}

fn endpoint(i: u8) -> Endpoint {
    Endpoint {
        id: format!("ep{i}"),
        address: SocketAddr::from(([10, 0, 0, i + 1], 9080)),
        labels: BTreeMap::new(),
        locality: warren_api::Locality::default(),
        node: String::new(),
        ready_since: None,
        weight: 1,
    }
}

fn with_lb(lb: LoadBalancer) -> Resolved {
    Resolved {
        load_balancer: lb,
        ..Resolved::defaults(HOST, 9080)
    }
}

fn with_outlier(outlier: OutlierSettings) -> Resolved {
    Resolved {
        load_balancer: LoadBalancer::RoundRobin,
        outlier: Some(outlier),
        ..Resolved::defaults(HOST, 9080)
    }
}

fn header_hash(table: HashTable) -> Resolved {
    with_lb(LoadBalancer::ConsistentHash(ConsistentHash {
        key: HashKey::Header(HeaderName::from_static("x-user")),
        table,
    }))
}

/// Picks and returns the endpoint's id, dropping the pick.
fn pick_id(cluster: &Cluster, input: &HashInput<'_>, now: Instant) -> String {
    match cluster.pick(input, now) {
        Some(p) => p.endpoint.id.clone(),
        other => panic!("expected an endpoint, got {other:?}"),
    }
}

fn counts(ids: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for id in ids {
        *counts.entry(id).or_default() += 1;
    }
    counts
}

fn user_headers(user: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-user",
        HeaderValue::from_str(user).expect("test header value"),
    );
    headers
}

// ---------------------------------------------------------------------------
// Policies: lookup and merge
// ---------------------------------------------------------------------------

#[test]
fn merge_precedence_top_then_port_then_subset_then_subset_port() {
    let policies = build(vec![dr(
        "reviews",
        HOST,
        json!({
            "host": "reviews",
            "trafficPolicy": {
                "loadBalancer": {"simple": "RANDOM"},
                "connectionPool": {"tcp": {"maxConnections": 10}},
                "outlierDetection": {"consecutive5xxErrors": 7},
                "portLevelSettings": [
                    {"port": {"number": 8080}, "loadBalancer": {"simple": "ROUND_ROBIN"}}
                ]
            },
            "subsets": [
                {
                    "name": "v2",
                    "labels": {"version": "v2"},
                    "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}}
                },
                {
                    "name": "v3",
                    "labels": {"version": "v3"},
                    "trafficPolicy": {
                        "connectionPool": {"http": {"http2MaxRequests": 3}},
                        "portLevelSettings": [
                            {"port": {"number": 8080}, "loadBalancer": {"simple": "PASSTHROUGH"}}
                        ]
                    }
                }
            ]
        }),
    )]);
    let resolve = |subset, port| {
        policies
            .resolve(HOST, "default", subset, port)
            .expect("known host and subset")
    };

    // 1. Top level.
    let top = resolve(None, 80);
    assert_eq!(top.load_balancer, LoadBalancer::Random);
    assert_eq!(top.pool.max_connections, 10);
    assert_eq!(
        top.outlier.as_ref().and_then(|o| o.consecutive_5xx),
        Some(7)
    );
    assert!(top.selector.is_empty());
    assert_eq!(top.rules, vec!["default/reviews".to_owned()]);

    // 2. The port-level entry replaces the whole policy: what it omits is
    //    the default, not the top level.
    let port = resolve(None, 8080);
    assert_eq!(port.load_balancer, LoadBalancer::RoundRobin);
    assert_eq!(port.pool, PoolLimits::default());
    assert_eq!(port.outlier, None);

    // 3. A subset overrides only what it sets.
    let v2 = resolve(Some("v2"), 80);
    assert_eq!(v2.load_balancer, LoadBalancer::LeastRequest);
    assert_eq!(v2.pool.max_connections, 10);
    assert_eq!(v2.outlier.as_ref().and_then(|o| o.consecutive_5xx), Some(7));
    assert_eq!(v2.selector.get("version").map(String::as_str), Some("v2"));
    assert_eq!(v2.subset.as_deref(), Some("v2"));
    // On the port with a top-level port entry, the subset builds on that.
    let v2_port = resolve(Some("v2"), 8080);
    assert_eq!(v2_port.load_balancer, LoadBalancer::LeastRequest);
    assert_eq!(v2_port.pool, PoolLimits::default());

    // 3 again: the subset's pool replaces the top-level pool whole.
    let v3 = resolve(Some("v3"), 80);
    assert_eq!(v3.load_balancer, LoadBalancer::Random);
    assert_eq!(v3.pool.max_requests, 3);
    assert_eq!(v3.pool.max_connections, policy_unlimited());
    // 4. The subset's port-level entry wins over everything.
    let v3_port = resolve(Some("v3"), 8080);
    assert_eq!(v3_port.load_balancer, LoadBalancer::Passthrough);
    assert_eq!(v3_port.pool, PoolLimits::default());
    assert_eq!(v3_port.outlier, None);
}

fn policy_unlimited() -> u32 {
    PoolLimits::default().max_connections
}

#[test]
fn unknown_subset_is_an_error() {
    let policies = build(vec![dr(
        "reviews",
        HOST,
        json!({"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}),
    )]);
    let err = policies
        .resolve(HOST, "default", Some("v9"), 9080)
        .expect_err("v9 is not defined");
    assert_eq!(err.subset, "v9");
    assert_eq!(err.rules.as_deref(), Some("default/reviews"));
    assert!(err.to_string().contains("no subset \"v9\""), "{err}");

    // A host without any rule has no subsets either.
    let err = policies
        .resolve(
            "ratings.default.svc.cluster.local",
            "default",
            Some("v1"),
            9080,
        )
        .expect_err("no rule for ratings");
    assert_eq!(err.rules, None);

    // An empty subset name is no subset.
    assert!(policies.resolve(HOST, "default", Some(""), 9080).is_ok());
}

#[test]
fn a_host_without_rules_gets_istio_defaults() {
    let policies = build(Vec::new());
    let r = policies
        .resolve(HOST, "default", None, 9080)
        .expect("no subset asked");
    assert_eq!(r, Resolved::defaults(HOST, 9080));
    assert_eq!(r.load_balancer, LoadBalancer::LeastRequest);
    assert_eq!(r.pool.max_connections, u32::MAX);
    assert_eq!(r.pool.max_pending_requests, u32::MAX);
    assert_eq!(r.pool.max_requests, u32::MAX);
    assert_eq!(r.pool.max_retries, u32::MAX);
    assert_eq!(r.pool.max_requests_per_connection, None);
    assert_eq!(r.pool.connect_timeout, Duration::from_secs(10));
    assert_eq!(r.outlier, None);
    assert!(r.rules.is_empty());
}

#[test]
fn exact_host_beats_wildcards_and_longer_wildcards_beat_shorter() {
    let policies = build(vec![
        dr(
            "everything",
            "*",
            json!({"host": "*", "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}}),
        ),
        dr(
            "namespace",
            "*.default.svc.cluster.local",
            json!({"host": "*.default.svc.cluster.local",
                   "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}}),
        ),
        dr(
            "exact",
            HOST,
            json!({"host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": "PASSTHROUGH"}}}),
        ),
    ]);
    let lb = |host: &str| {
        policies
            .resolve(host, "default", None, 80)
            .expect("no subset")
            .load_balancer
    };
    assert_eq!(lb(HOST), LoadBalancer::Passthrough);
    assert_eq!(
        lb("REVIEWS.default.svc.cluster.local"),
        LoadBalancer::Passthrough
    );
    assert_eq!(
        lb("ratings.default.svc.cluster.local"),
        LoadBalancer::RoundRobin
    );
    assert_eq!(lb("ratings.other.svc.cluster.local"), LoadBalancer::Random);
    // `*.default...` needs a label in front of the suffix.
    assert_eq!(lb("default.svc.cluster.local"), LoadBalancer::Random);
}

fn lb_rule(name: &str, simple: &str, extra: serde_json::Value) -> DrInput {
    let mut spec =
        json!({"host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": simple}}});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    dr(name, HOST, spec)
}

#[test]
fn rules_for_one_host_merge_oldest_first_whatever_their_names() {
    let mut newer = lb_rule("a-newer", "RANDOM", json!({}));
    newer.created = 20;
    let mut older = lb_rule("z-older", "ROUND_ROBIN", json!({}));
    older.created = 10;
    let (policies, errors) = Policies::build(vec![newer, older], scope());
    let resolved = policies
        .resolve(HOST, "default", None, 80)
        .expect("no subset asked");
    assert_eq!(resolved.rules, ["default/z-older", "default/a-newer"]);
    assert_eq!(resolved.load_balancer, LoadBalancer::RoundRobin);
    // The newer rule's top-level policy is the one reported as ignored.
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].name, "a-newer");
}

#[test]
fn a_rule_selecting_the_waypoint_replaces_the_others_for_its_host() {
    let selecting = |name: &str, simple: &str, labels: serde_json::Value| {
        lb_rule(
            name,
            simple,
            json!({"workloadSelector": {"matchLabels": labels}}),
        )
    };
    let rules = vec![
        lb_rule("catch-all", "ROUND_ROBIN", json!({})),
        selecting("for-clients", "LEAST_REQUEST", json!({"app": "client"})),
        selecting(
            "for-waypoint",
            "RANDOM",
            json!({"gateway.networking.k8s.io/gateway-name": "waypoint"}),
        ),
    ];
    let resolve = |gateway: &str| {
        let scope = Scope {
            labels: Scope::waypoint_labels(Some(gateway)),
            ..scope()
        };
        let (policies, errors) = Policies::build(rules.clone(), scope);
        assert!(errors.is_empty(), "{errors:?}");
        let resolved = policies
            .resolve(HOST, "default", None, 80)
            .expect("no subset asked");
        (resolved.rules, resolved.load_balancer)
    };
    assert_eq!(
        resolve("waypoint"),
        (
            vec!["default/for-waypoint".to_owned()],
            LoadBalancer::Random
        )
    );
    // Another waypoint of the namespace: not selected, the catch-all holds.
    assert_eq!(
        resolve("other"),
        (
            vec!["default/catch-all".to_owned()],
            LoadBalancer::RoundRobin
        )
    );
}

#[test]
fn rules_for_one_host_merge_like_istio() {
    let (policies, errors) = Policies::build(
        vec![
            dr(
                "first",
                HOST,
                json!({"host": "reviews",
                   "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}},
                   "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}),
            ),
            dr(
                "second",
                HOST,
                json!({"host": "reviews",
                "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}},
                "subsets": [
                    {"name": "v1", "labels": {"version": "other"}},
                    {"name": "v2", "labels": {"version": "v2"}}
                ]}),
            ),
        ],
        scope(),
    );
    // The older rule's policy and subset win; the newer one's v2 is added.
    let v1 = policies
        .resolve(HOST, "default", Some("v1"), 80)
        .expect("v1 from first");
    assert_eq!(v1.selector.get("version").map(String::as_str), Some("v1"));
    assert_eq!(v1.load_balancer, LoadBalancer::Random);
    let v2 = policies
        .resolve(HOST, "default", Some("v2"), 80)
        .expect("v2 from second");
    assert_eq!(v2.selector.get("version").map(String::as_str), Some("v2"));
    assert_eq!(v2.load_balancer, LoadBalancer::Random);
    assert_eq!(v2.rules, vec!["default/first", "default/second"]);
    // Both shadowed parts are reported against the newer rule.
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors.iter().all(|e| e.name == "second"));
    assert!(errors.iter().any(|e| e.path == "spec.subsets[0].name"));
    assert!(errors.iter().any(|e| e.path == "spec.trafficPolicy"));
}

#[test]
fn outlier_defaults_and_zero_values_follow_istio() {
    let policies = build(vec![
        dr(
            "defaults",
            HOST,
            json!({"host": "reviews", "trafficPolicy": {"outlierDetection": {}}}),
        ),
        dr(
            "zeros",
            "ratings.default.svc.cluster.local",
            json!({"host": "ratings", "trafficPolicy": {"outlierDetection": {
                "consecutive5xxErrors": 0,
                "consecutiveGatewayErrors": 0,
                "maxEjectionPercent": 0,
                "interval": "1s",
                "baseEjectionTime": "10m",
                "minHealthPercent": 50,
                "splitExternalLocalOriginErrors": true
            }}}),
        ),
    ]);
    let defaults = policies
        .resolve(HOST, "default", None, 80)
        .expect("no subset")
        .outlier
        .expect("outlierDetection is set");
    assert_eq!(defaults, OutlierSettings::default());
    assert_eq!(defaults.consecutive_5xx, Some(5));
    assert_eq!(defaults.consecutive_gateway, None);
    assert_eq!(defaults.interval, Duration::from_secs(10));
    assert_eq!(defaults.base_ejection_time, Duration::from_secs(30));
    assert_eq!(defaults.max_ejection_time, Duration::from_secs(300));
    assert_eq!(defaults.max_ejection_percent, 10);
    assert_eq!(defaults.min_health_percent, 0);

    let zeros = policies
        .resolve("ratings.default.svc.cluster.local", "default", None, 80)
        .expect("no subset")
        .outlier
        .expect("outlierDetection is set");
    assert_eq!(zeros.consecutive_5xx, None, "0 turns the check off");
    assert_eq!(zeros.consecutive_gateway, None);
    assert_eq!(zeros.max_ejection_percent, 10, "0 is unset in Istio");
    assert_eq!(zeros.interval, Duration::from_secs(1));
    assert_eq!(zeros.base_ejection_time, Duration::from_secs(600));
    assert_eq!(zeros.max_ejection_time, Duration::from_secs(600));
    assert_eq!(zeros.min_health_percent, 50);
    assert!(zeros.split_local_origin);
    assert_eq!(zeros.consecutive_local_origin, 5);
}

#[test]
fn load_balancer_settings_compile() {
    let lb = |spec: serde_json::Value| {
        let (policies, errors) = Policies::build(
            vec![dr(
                "reviews",
                HOST,
                json!({"host": "reviews", "trafficPolicy": {"loadBalancer": spec}}),
            )],
            scope(),
        );
        let resolved = policies
            .resolve(HOST, "default", None, 80)
            .expect("no subset");
        (resolved.load_balancer, errors)
    };
    assert_eq!(
        lb(json!({"simple": "LEAST_CONN"})).0,
        LoadBalancer::LeastRequest
    );
    assert_eq!(
        lb(json!({"simple": "UNSPECIFIED"})).0,
        LoadBalancer::LeastRequest
    );
    assert_eq!(
        lb(json!({"consistentHash": {"httpHeaderName": "X-User"}})).0,
        LoadBalancer::ConsistentHash(ConsistentHash {
            key: HashKey::Header(HeaderName::from_static("x-user")),
            table: HashTable::Ring { minimum_size: 1024 },
        })
    );
    assert_eq!(
        lb(json!({"consistentHash": {"useSourceIp": true, "minimumRingSize": 64}})).0,
        LoadBalancer::ConsistentHash(ConsistentHash {
            key: HashKey::SourceIp,
            table: HashTable::Ring { minimum_size: 64 },
        })
    );
    assert_eq!(
        lb(json!({"consistentHash": {"httpQueryParameterName": "user", "maglev": {}}})).0,
        LoadBalancer::ConsistentHash(ConsistentHash {
            key: HashKey::QueryParameter("user".into()),
            table: HashTable::Maglev { table_size: 65537 },
        })
    );
    assert_eq!(
        lb(json!({"consistentHash": {"httpCookie": {"name": "s", "path": "/", "ttl": "0s"}}})).0,
        LoadBalancer::ConsistentHash(ConsistentHash {
            key: HashKey::Cookie(HashCookie {
                name: "s".into(),
                path: Some("/".into()),
                ttl: Some(Duration::ZERO),
            }),
            table: HashTable::Ring { minimum_size: 1024 },
        })
    );
    // A header name HTTP cannot carry: reported, default balancer.
    let (bad, errors) = lb(json!({"consistentHash": {"httpHeaderName": "bad header"}}));
    assert_eq!(bad, LoadBalancer::LeastRequest);
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].path,
        "spec.trafficPolicy.loadBalancer.consistentHash.httpHeaderName"
    );
}

#[test]
fn pool_limits_compile() {
    let policies = build(vec![dr(
        "reviews",
        HOST,
        json!({"host": "reviews", "trafficPolicy": {"connectionPool": {
            "tcp": {"maxConnections": 100, "connectTimeout": "30ms", "maxConnectionDuration": "1h",
                    "idleTimeout": "45s",
                    "tcpKeepalive": {"time": "7s", "interval": "3s", "probes": 4}},
            "http": {"http1MaxPendingRequests": 5, "http2MaxRequests": 1000,
                     "maxRequestsPerConnection": 10, "maxRetries": 3, "idleTimeout": "90s",
                     "maxConcurrentStreams": 64,
                     "h2UpgradePolicy": "UPGRADE"}
        }}}),
    )]);
    let pool = policies
        .resolve(HOST, "default", None, 80)
        .expect("no subset")
        .pool;
    assert_eq!(
        pool,
        PoolLimits {
            max_connections: 100,
            max_pending_requests: 5,
            max_requests: 1000,
            max_requests_per_connection: Some(10),
            max_concurrent_streams: Some(64),
            max_retries: 3,
            connect_timeout: Duration::from_millis(30),
            idle_timeout: Duration::from_secs(90),
            max_connection_duration: Some(Duration::from_secs(3600)),
            tcp_idle_timeout: Some(Duration::from_secs(45)),
            tcp_keepalive: Some(Keepalive {
                time: Some(Duration::from_secs(7)),
                interval: Some(Duration::from_secs(3)),
                probes: Some(4),
            }),
            h2_upgrade: true,
            use_client_protocol: false,
            tls: None,
            mesh_tls_only: false,
        }
    );
    // An empty `tcpKeepalive` turns keepalive on with the system's timings.
    let policies = build(vec![dr(
        "reviews",
        HOST,
        json!({"host": "reviews", "trafficPolicy": {"connectionPool": {
            "tcp": {"tcpKeepalive": {}}}}}),
    )]);
    let pool = policies
        .resolve(HOST, "default", None, 80)
        .expect("no subset")
        .pool;
    assert_eq!(pool.tcp_keepalive, Some(Keepalive::default()));
    // Values Linux would refuse (failing every connection) are brought
    // within its bounds, and reported.
    let (policies, errors) = Policies::build(
        vec![dr(
            "reviews",
            HOST,
            json!({"host": "reviews", "trafficPolicy": {"connectionPool": {
                "tcp": {"tcpKeepalive": {"time": "500ms", "interval": "10h", "probes": 200}}}}}),
        )],
        scope(),
    );
    let pool = policies
        .resolve(HOST, "default", None, 80)
        .expect("no subset")
        .pool;
    assert_eq!(
        pool.tcp_keepalive,
        Some(Keepalive {
            time: Some(Duration::from_secs(1)),
            interval: Some(Duration::from_secs(32_767)),
            probes: Some(127),
        })
    );
    let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.time",
            "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.interval",
            "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.probes",
        ]
    );
}

#[test]
fn upstream_http_version_as_istiod_picks_it() {
    use warren_ztunnel::state::service::DeclaredHttp::{Http1, Http2, Undeclared};
    let pick = |h2_upgrade, use_client_protocol, declared| {
        PoolLimits {
            h2_upgrade,
            use_client_protocol,
            ..PoolLimits::default()
        }
        .upstream_http(declared)
    };
    // By the port's declaration, the mesh default being not to upgrade.
    assert_eq!(pick(false, false, Http1), UpstreamHttp::Http1);
    assert_eq!(pick(false, false, Http2), UpstreamHttp::Http2);
    assert_eq!(pick(false, false, Undeclared), UpstreamHttp::Client);
    // h2UpgradePolicy: UPGRADE, whatever the port says.
    assert_eq!(pick(true, false, Http1), UpstreamHttp::Http2);
    assert_eq!(pick(true, false, Undeclared), UpstreamHttp::Http2);
    // useClientProtocol wins over everything.
    assert_eq!(pick(false, true, Http1), UpstreamHttp::Client);
    assert_eq!(pick(false, true, Http2), UpstreamHttp::Client);
}

#[test]
fn an_idle_timeout_of_zero_turns_it_off() {
    let policies = build(vec![dr(
        "reviews",
        HOST,
        json!({"host": "reviews", "trafficPolicy": {"connectionPool": {
            "http": {"idleTimeout": "0s"}, "tcp": {"idleTimeout": "0s"}}}}),
    )]);
    let pool = policies
        .resolve(HOST, "default", None, 80)
        .expect("no subset")
        .pool;
    assert_eq!(pool.idle_timeout, Duration::MAX);
    assert_eq!(pool.tcp_idle_timeout, None);
    // Unset, both are Istio's hour.
    let pool = PoolLimits::default();
    assert_eq!(pool.idle_timeout, Duration::from_secs(3600));
    assert_eq!(pool.tcp_idle_timeout, Some(Duration::from_secs(3600)));
}

#[test]
fn selects_requires_every_label() {
    let labels: BTreeMap<String, String> = [("app", "reviews"), ("version", "v1")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let selector = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    assert!(selects(&selector(&[]), &labels));
    assert!(selects(&selector(&[("version", "v1")]), &labels));
    assert!(selects(
        &selector(&[("version", "v1"), ("app", "reviews")]),
        &labels
    ));
    assert!(!selects(&selector(&[("version", "v2")]), &labels));
    assert!(!selects(
        &selector(&[("version", "v1"), ("zone", "a")]),
        &labels
    ));
}

// ---------------------------------------------------------------------------
// Load balancing
// ---------------------------------------------------------------------------

#[test]
fn round_robin_spreads_evenly() {
    let now = Instant::now();
    let cluster = Cluster::new(with_lb(LoadBalancer::RoundRobin), endpoints(4), now);
    let input = HashInput::default();
    let seen = counts((0..400).map(|_| pick_id(&cluster, &input, now)));
    assert_eq!(seen.len(), 4);
    assert!(seen.values().all(|c| *c == 100), "{seen:?}");
}

#[test]
fn least_request_prefers_an_idle_endpoint() {
    let now = Instant::now();
    let cluster = Cluster::new(with_lb(LoadBalancer::LeastRequest), endpoints(2), now);
    let input = HashInput::default();
    let Some(busy) = cluster.pick(&input, now) else {
        panic!("two endpoints to pick from");
    };
    assert_eq!(cluster.active(&busy.endpoint.id), Some(1));
    for _ in 0..100 {
        assert_ne!(pick_id(&cluster, &input, now), busy.endpoint.id);
    }
    let busy_id = busy.endpoint.id.clone();
    drop(busy);
    assert_eq!(cluster.active(&busy_id), Some(0));

    // With four endpoints, three busy, two random choices find the idle one
    // half of the time, and it gets the most.
    let cluster = Cluster::new(with_lb(LoadBalancer::LeastRequest), endpoints(4), now);
    let mut held = Vec::new();
    while held.len() < 3 {
        match cluster.pick(&input, now) {
            Some(p) if cluster.active(&p.endpoint.id) == Some(1) => held.push(p),
            _ => {}
        }
    }
    let idle = (0..4)
        .map(|i| format!("ep{i}"))
        .find(|id| cluster.active(id) == Some(0))
        .expect("one endpoint is idle");
    let seen = counts((0..2000).map(|_| pick_id(&cluster, &input, now)));
    let idle_share = seen.get(&idle).copied().unwrap_or(0);
    assert!(
        idle_share > 800,
        "idle endpoint got {idle_share} of 2000: {seen:?}"
    );
    assert!(seen.iter().all(|(id, c)| *id == idle || *c < idle_share));
}

#[test]
fn random_covers_every_endpoint() {
    let now = Instant::now();
    let cluster = Cluster::new(with_lb(LoadBalancer::Random), endpoints(5), now);
    let input = HashInput::default();
    let seen = counts((0..1000).map(|_| pick_id(&cluster, &input, now)));
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(seen.values().all(|c| *c >= 100), "{seen:?}");
}

#[test]
fn passthrough_leaves_balancing_to_l4_and_ejects_nobody() {
    let now = Instant::now();
    let resolved = Resolved {
        load_balancer: LoadBalancer::Passthrough,
        outlier: Some(OutlierSettings {
            consecutive_5xx: Some(1),
            max_ejection_percent: 100,
            ..OutlierSettings::default()
        }),
        ..Resolved::defaults(HOST, 9080)
    };
    let cluster = Cluster::new(resolved, endpoints(3), now);
    // Failures are not counted against an endpoint: every one stays in turn.
    for i in 0..3 {
        assert!(!cluster.report(&format!("ep{i}"), Outcome::Status(503), now));
    }
    assert!(cluster.ejected(now).is_empty());
    let input = HashInput::default();
    let turns: Vec<String> = (0..6).map(|_| pick_id(&cluster, &input, now)).collect();
    assert_eq!(
        counts(turns.iter().cloned()),
        BTreeMap::from([("ep0".into(), 2), ("ep1".into(), 2), ("ep2".into(), 2)]),
        "round robin, as ztunnel picks: {turns:?}"
    );
    // A retry is not steered away from the endpoint it tried.
    let avoid = vec!["ep0".to_owned(), "ep1".to_owned()];
    let again = counts((0..6).map(|_| pick_avoiding_id(&cluster, &input, &avoid, now)));
    assert_eq!(again.len(), 3, "{again:?}");
    let empty = Cluster::new(with_lb(LoadBalancer::Passthrough), Vec::new(), now);
    assert!(empty.pick(&input, now).is_none());
}

#[test]
fn a_cluster_without_endpoints_picks_nothing() {
    let now = Instant::now();
    for lb in [
        LoadBalancer::RoundRobin,
        LoadBalancer::LeastRequest,
        LoadBalancer::Random,
    ] {
        let cluster = Cluster::new(with_lb(lb), Vec::new(), now);
        assert!(cluster.pick(&HashInput::default(), now).is_none());
    }
    let cluster = Cluster::new(
        header_hash(HashTable::Ring { minimum_size: 1024 }),
        Vec::new(),
        now,
    );
    let headers = user_headers("alice");
    let input = HashInput {
        headers: Some(&headers),
        ..Default::default()
    };
    assert!(cluster.pick(&input, now).is_none());
}

/// Maps 1000 users to endpoints, removes `ep2` of five, maps them again.
/// Returns (users that were on ep2, users that moved).
fn hash_disruption(table: HashTable) -> (usize, usize) {
    let now = Instant::now();
    let cluster = Cluster::new(header_hash(table), endpoints(5), now);
    let users: Vec<HeaderMap> = (0..1000)
        .map(|i| user_headers(&format!("user-{i}")))
        .collect();
    let place = |cluster: &Cluster| -> Vec<String> {
        users
            .iter()
            .map(|h| {
                let input = HashInput {
                    headers: Some(h),
                    ..Default::default()
                };
                pick_id(cluster, &input, now)
            })
            .collect()
    };
    let before = place(&cluster);
    // One key, one endpoint, every time.
    let input = HashInput {
        headers: Some(&users[7]),
        ..Default::default()
    };
    for _ in 0..1000 {
        assert_eq!(pick_id(&cluster, &input, now), before[7]);
    }
    let spread = counts(before.iter().cloned());
    assert_eq!(spread.len(), 5, "{spread:?}");
    assert!(
        spread.values().all(|c| (100..=300).contains(c)),
        "{spread:?}"
    );

    cluster.update(endpoints(5).into_iter().filter(|e| e.id != "ep2").collect());
    let after = place(&cluster);
    assert!(after.iter().all(|id| id != "ep2"));
    let on_removed = before.iter().filter(|id| *id == "ep2").count();
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    (on_removed, moved)
}

#[test]
fn ring_hash_is_sticky_and_moves_only_the_removed_endpoints_keys() {
    let (on_removed, moved) = hash_disruption(HashTable::Ring { minimum_size: 1024 });
    assert_eq!(moved, on_removed);
}

#[test]
fn maglev_is_sticky_and_moves_about_the_removed_endpoints_keys() {
    let (on_removed, moved) = hash_disruption(HashTable::Maglev { table_size: 65537 });
    assert!(moved >= on_removed);
    assert!(
        moved <= on_removed + 50,
        "maglev moved {moved} keys for {on_removed} on the removed endpoint"
    );
}

#[test]
fn cookie_hash_asks_for_a_cookie_and_sticks_to_it() {
    let now = Instant::now();
    let ttl = Duration::from_secs(3600);
    let resolved = with_lb(LoadBalancer::ConsistentHash(ConsistentHash {
        key: HashKey::Cookie(HashCookie {
            name: "session".into(),
            path: Some("/".into()),
            ttl: Some(ttl),
        }),
        table: HashTable::Ring { minimum_size: 1024 },
    }));
    let cluster = Cluster::new(resolved, endpoints(5), now);
    for client in 1..=20u8 {
        let empty = HeaderMap::new();
        let first = HashInput {
            headers: Some(&empty),
            source: Some(SocketAddr::from(([192, 168, 0, client], 40000))),
            ..Default::default()
        };
        let Some(picked) = cluster.pick(&first, now) else {
            panic!("five endpoints to pick from");
        };
        let cookie = picked
            .set_cookie
            .clone()
            .expect("no cookie and a ttl: the proxy must set one");
        assert_eq!(cookie.name, "session");
        assert_eq!(cookie.path.as_deref(), Some("/"));
        assert_eq!(cookie.max_age, Some(ttl));
        assert_eq!(cookie.value.len(), 16);

        // The client sends it back: no new cookie, same endpoint.
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_str(&format!("other=1; session={}", cookie.value))
                .expect("hex cookie"),
        );
        let next = HashInput {
            headers: Some(&headers),
            ..Default::default()
        };
        for _ in 0..10 {
            let Some(again) = cluster.pick(&next, now) else {
                panic!("five endpoints to pick from");
            };
            assert!(again.set_cookie.is_none());
            assert_eq!(again.endpoint.id, picked.endpoint.id);
        }
    }

    // Without a ttl the proxy never sets the cookie; the request goes to a
    // random endpoint.
    let resolved = with_lb(LoadBalancer::ConsistentHash(ConsistentHash {
        key: HashKey::Cookie(HashCookie {
            name: "session".into(),
            path: None,
            ttl: None,
        }),
        table: HashTable::Ring { minimum_size: 1024 },
    }));
    let cluster = Cluster::new(resolved, endpoints(5), now);
    let seen = counts(
        (0..500).map(|_| match cluster.pick(&HashInput::default(), now) {
            Some(p) => {
                assert!(p.set_cookie.is_none());
                p.endpoint.id.clone()
            }
            other => panic!("expected an endpoint, got {other:?}"),
        }),
    );
    assert_eq!(seen.len(), 5);
}

#[test]
fn source_ip_and_query_parameter_hashes_stick() {
    let now = Instant::now();
    let by_ip = Cluster::new(
        with_lb(LoadBalancer::ConsistentHash(ConsistentHash {
            key: HashKey::SourceIp,
            table: HashTable::Ring { minimum_size: 1024 },
        })),
        endpoints(5),
        now,
    );
    let by_query = Cluster::new(
        with_lb(LoadBalancer::ConsistentHash(ConsistentHash {
            key: HashKey::QueryParameter("user".into()),
            table: HashTable::Maglev { table_size: 65537 },
        })),
        endpoints(5),
        now,
    );
    let mut ip_spread = Vec::new();
    let mut query_spread = Vec::new();
    for i in 0..50u8 {
        // Another port of the same client changes nothing.
        let a = HashInput {
            source: Some(SocketAddr::from(([172, 16, 0, i], 1000))),
            ..Default::default()
        };
        let b = HashInput {
            source: Some(SocketAddr::from(([172, 16, 0, i], 2000))),
            ..Default::default()
        };
        let first = pick_id(&by_ip, &a, now);
        assert_eq!(pick_id(&by_ip, &b, now), first);
        ip_spread.push(first);

        let uri: http::Uri = format!("/reviews?page=2&user=u{i}")
            .parse()
            .expect("test uri");
        let other: http::Uri = format!("/other?user=u{i}").parse().expect("test uri");
        let headers = HeaderMap::new();
        let first = pick_id(&by_query, &HashInput::new(&headers, &uri, None, None), now);
        assert_eq!(
            pick_id(
                &by_query,
                &HashInput::new(&headers, &other, None, None),
                now
            ),
            first
        );
        query_spread.push(first);
    }
    assert!(counts(ip_spread).len() >= 4);
    assert!(counts(query_spread).len() >= 4);
}

#[test]
fn update_keeps_the_state_of_endpoints_that_stay() {
    let now = Instant::now();
    let outlier = OutlierSettings {
        max_ejection_percent: 100,
        ..OutlierSettings::default()
    };
    let cluster = Cluster::new(with_outlier(outlier), endpoints(3), now);
    let input = HashInput::default();
    let held = match cluster.pick(&input, now) {
        Some(p) => p,
        other => panic!("expected an endpoint, got {other:?}"),
    };
    let held_id = held.endpoint.id.clone();
    let ejected_id = if held_id == "ep0" { "ep1" } else { "ep0" };
    for _ in 0..5 {
        cluster.report(ejected_id, Outcome::Status(500), now);
    }
    assert_eq!(cluster.ejected(now), vec![ejected_id.to_owned()]);

    // ep2 leaves, ep3 joins; the others keep their state.
    let next: Vec<Endpoint> = [0, 1, 3].into_iter().map(endpoint).collect();
    cluster.update(next);
    assert_eq!(cluster.ejected(now), vec![ejected_id.to_owned()]);
    if held_id != "ep2" {
        assert_eq!(cluster.active(&held_id), Some(1));
    }
    assert_eq!(cluster.active("ep2"), None);
    let seen = counts((0..30).map(|_| pick_id(&cluster, &input, now)));
    assert!(!seen.contains_key(ejected_id));
    assert!(seen.contains_key("ep3"));
    // Reports for an endpoint that left are ignored.
    cluster.report("ep2", Outcome::Status(500), now);
    drop(held);
}

// ---------------------------------------------------------------------------
// Connection pool
// ---------------------------------------------------------------------------

fn pooled(limits: PoolLimits) -> Arc<Cluster> {
    let resolved = Resolved {
        pool: limits,
        ..Resolved::defaults(HOST, 9080)
    };
    Arc::new(Cluster::new(resolved, endpoints(1), Instant::now()))
}

const NO_HANG: Duration = Duration::from_secs(5);

async fn until_pending(cluster: &Cluster, n: u64) {
    timeout(NO_HANG, async {
        while cluster.pending() < n {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the request queues");
}

#[tokio::test]
async fn one_connection_one_pending_slot_admits_two_of_three() {
    let cluster = pooled(PoolLimits {
        max_connections: 1,
        max_pending_requests: 1,
        ..PoolLimits::default()
    });
    let first = cluster.admit().await.expect("the connection is free");
    let second = tokio::spawn({
        let cluster = cluster.clone();
        async move { cluster.admit().await }
    });
    until_pending(&cluster, 1).await;
    let third = cluster.admit().await;
    assert_eq!(third.err(), Some(Overflow));
    assert_eq!(cluster.overflows(), 1);
    assert!(!second.is_finished(), "the second request waits");

    drop(first);
    let second = timeout(NO_HANG, second)
        .await
        .expect("the second request is admitted once the first ends")
        .expect("task did not panic")
        .expect("admitted after waiting");
    assert_eq!(cluster.pending(), 0);
    assert_eq!(cluster.overflows(), 1);
    drop(second);
    // Free again.
    assert!(cluster.admit().await.is_ok());
}

#[tokio::test]
async fn a_waiter_that_gives_up_frees_its_place() {
    let cluster = pooled(PoolLimits {
        max_connections: 1,
        max_pending_requests: 1,
        ..PoolLimits::default()
    });
    let _busy = cluster.admit().await.expect("the connection is free");
    let waiter = tokio::spawn({
        let cluster = cluster.clone();
        async move { cluster.admit().await }
    });
    until_pending(&cluster, 1).await;
    waiter.abort();
    assert!(waiter.await.is_err(), "aborted");
    assert_eq!(cluster.pending(), 0);
    // The place is free for the next one.
    let next = tokio::spawn({
        let cluster = cluster.clone();
        async move { cluster.admit().await }
    });
    until_pending(&cluster, 1).await;
    assert_eq!(cluster.overflows(), 0);
    next.abort();
}

#[tokio::test]
async fn http2_requests_are_limited_by_max_requests_at_once_without_a_queue() {
    let cluster = pooled(PoolLimits {
        max_connections: 1,
        max_requests: 3,
        max_pending_requests: 1,
        ..PoolLimits::default()
    });
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(cluster.admit_multiplexed().expect("below http2MaxRequests"));
    }
    // Envoy's max_requests has no queue: the fourth is refused at once.
    assert_eq!(cluster.admit_multiplexed().err(), Some(Overflow));
    assert_eq!((cluster.pending(), cluster.overflows()), (0, 1));
    held.pop();
    assert!(cluster.admit_multiplexed().is_ok(), "a slot is free again");
}

#[tokio::test]
async fn max_requests_counts_http1_and_http2_requests_together() {
    let cluster = pooled(PoolLimits {
        max_requests: 2,
        ..PoolLimits::default()
    });
    let _h1 = cluster
        .admit()
        .await
        .expect("a connection and a request slot");
    let _h2 = cluster
        .admit_multiplexed()
        .expect("the second request slot");
    assert_eq!(cluster.admit_multiplexed().err(), Some(Overflow));
    assert_eq!(
        timeout(NO_HANG, cluster.admit())
            .await
            .expect("refused at once, not queued")
            .err(),
        Some(Overflow)
    );
    assert_eq!(cluster.overflows(), 2);
}

#[tokio::test]
async fn a_request_is_not_queued_when_every_request_slot_is_taken() {
    // One connection, one request slot, a queue: the request slot is
    // checked first (as Envoy's breaker is), so the second request is
    // refused at once instead of waiting for a connection and then being
    // refused anyway.
    let cluster = pooled(PoolLimits {
        max_connections: 1,
        max_pending_requests: 5,
        max_requests: 1,
        ..PoolLimits::default()
    });
    let _first = cluster.admit().await.expect("the only slot");
    assert_eq!(
        timeout(NO_HANG, cluster.admit())
            .await
            .expect("refused at once, not queued")
            .err(),
        Some(Overflow)
    );
    assert_eq!(cluster.pending(), 0);
}

#[tokio::test]
async fn a_tcp_connection_over_max_connections_is_refused_at_once() {
    let cluster = pooled(PoolLimits {
        max_connections: 1,
        max_pending_requests: 5,
        ..PoolLimits::default()
    });
    let open = cluster.admit_connection().expect("the first connection");
    assert_eq!(cluster.admit_connection().err(), Some(Overflow));
    assert_eq!((cluster.pending(), cluster.overflows()), (0, 1));
    drop(open);
    assert!(cluster.admit_connection().is_ok());
}

#[tokio::test]
async fn default_pool_is_effectively_unlimited() {
    let cluster = pooled(PoolLimits::default());
    let mut held = Vec::new();
    for _ in 0..10_000 {
        held.push(
            timeout(NO_HANG, cluster.admit())
                .await
                .expect("no wait")
                .expect("admitted"),
        );
    }
    assert_eq!(cluster.overflows(), 0);
    assert_eq!(cluster.limits().max_requests_per_connection, None);
}

#[test]
fn retries_in_flight_are_limited() {
    let cluster = pooled(PoolLimits {
        max_retries: 2,
        max_requests_per_connection: Some(1),
        ..PoolLimits::default()
    });
    assert_eq!(cluster.limits().max_requests_per_connection, Some(1));
    let a = cluster.try_retry().expect("first retry");
    let _b = cluster.try_retry().expect("second retry");
    assert!(cluster.try_retry().is_none());
    assert_eq!(cluster.retry_overflows(), 1);
    drop(a);
    assert!(cluster.try_retry().is_some());
}

fn budgeted(limits: PoolLimits, budget: RetryBudget) -> Arc<Cluster> {
    let resolved = Resolved {
        pool: limits,
        retry_budget: Some(budget),
        ..Resolved::defaults(HOST, 9080)
    };
    Arc::new(Cluster::new(resolved, endpoints(1), Instant::now()))
}

/// Takes retries until one is refused; returns those taken.
fn retries_until_refused(cluster: &Cluster) -> Vec<RetryPermit> {
    let mut taken = Vec::new();
    while let Some(permit) = cluster.try_retry() {
        taken.push(permit);
        assert!(taken.len() <= 1000, "the budget must run out");
    }
    taken
}

#[test]
fn a_retry_budget_grows_with_the_requests_and_replaces_max_retries() {
    let budget = RetryBudget {
        percent: 25.0,
        min_concurrency: 2,
        interval: None,
    };
    let cluster = budgeted(
        PoolLimits {
            max_retries: 1,
            ..PoolLimits::default()
        },
        budget,
    );
    // A quiet cluster gets the minimum, not `maxRetries`' 1.
    assert_eq!(retries_until_refused(&cluster).len(), 2);
    assert_eq!(cluster.retry_overflows(), 1);
    // Twenty requests in flight: 25 % of them.
    let held: Vec<Permit> = (0..20)
        .map(|_| cluster.admit_multiplexed().expect("admitted"))
        .collect();
    let retries = retries_until_refused(&cluster);
    assert_eq!(retries.len(), 5);
    // Rounded down: 23 requests allow 5 still (5.75), 24 allow 6.
    let more: Vec<Permit> = (0..3)
        .map(|_| cluster.admit_multiplexed().expect("admitted"))
        .collect();
    assert!(cluster.try_retry().is_none());
    let _one_more = cluster.admit_multiplexed().expect("admitted");
    let sixth = cluster.try_retry().expect("24 requests allow 6 retries");
    // A retry that ends frees its place; the requests ending shrink the budget.
    drop((held, more, sixth));
    assert!(
        cluster.try_retry().is_none(),
        "1 request left: the minimum, 2, is below 5 in flight"
    );
    drop(retries);
    assert_eq!(retries_until_refused(&cluster).len(), 2);
}

#[test]
fn a_retry_budget_counts_waiting_requests() {
    let cluster = budgeted(
        PoolLimits::default(),
        RetryBudget {
            percent: 50.0,
            min_concurrency: 0,
            interval: None,
        },
    );
    assert!(
        cluster.try_retry().is_none(),
        "no request, no minimum: no retry"
    );
    // The pending queue belongs to the pool: stand in for two waiting requests.
    let waiting = [
        cluster.pool().pend().expect("queued"),
        cluster.pool().pend().expect("queued"),
    ];
    let _active = cluster.admit_multiplexed().expect("admitted");
    let _active2 = cluster.admit_multiplexed().expect("admitted");
    assert_eq!(
        retries_until_refused(&cluster).len(),
        2,
        "half of 2 active + 2 pending"
    );
    drop(waiting);
}

#[test]
fn a_retry_budget_interval_counts_the_requests_made_over_it() {
    let cluster = budgeted(
        PoolLimits::default(),
        RetryBudget {
            percent: 50.0,
            min_concurrency: 1,
            interval: Some(Duration::from_secs(60)),
        },
    );
    // Ten requests made and finished: they still count for a minute.
    for _ in 0..10 {
        drop(cluster.admit_multiplexed().expect("admitted"));
    }
    assert_eq!(retries_until_refused(&cluster).len(), 5);
}

#[test]
fn recent_requests_leave_the_count_after_one_interval() {
    use super::pool::Recent;
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut recent = Recent::new(ms(1000), t0);
    for _ in 0..4 {
        recent.record(t0);
    }
    recent.record(t0 + ms(450));
    assert_eq!(recent.total(t0 + ms(899)), 5);
    // Ten slots of 100 ms: the first slot's requests leave at 1 s.
    assert_eq!(recent.total(t0 + ms(1000)), 1);
    assert_eq!(
        recent.total(t0 + ms(1450)),
        0,
        "the later one leaves 1 s after its slot began"
    );
    recent.record(t0 + ms(1460));
    assert_eq!(recent.total(t0 + ms(1460)), 1);
    // Idle for hours, then counted afresh.
    assert_eq!(recent.total(t0 + Duration::from_secs(7200)), 0);
    recent.record(t0 + Duration::from_secs(7200));
    assert_eq!(recent.total(t0 + Duration::from_secs(7200) + ms(10)), 1);
}

#[test]
fn a_retry_budget_compiles_with_istio_defaults_and_follows_subsets() {
    let (policies, errors) = Policies::build(
        vec![dr(
            "reviews",
            HOST,
            json!({"host": "reviews",
               "trafficPolicy": {"retryBudget": {},
                                 "portLevelSettings": [{"port": {"number": 80},
                                     "connectionPool": {"http": {"maxRetries": 7}}}]},
               "subsets": [
                   {"name": "v1", "labels": {"version": "v1"}},
                   {"name": "v2", "labels": {"version": "v2"},
                    "trafficPolicy": {"retryBudget": {"percent": 50, "minRetryConcurrency": 0,
                                                      "budgetInterval": "10s"}}},
                   {"name": "v3", "labels": {"version": "v3"},
                    "trafficPolicy": {"retryBudget": {"percent": 120, "budgetInterval": "0s"}}}]}),
        )],
        scope(),
    );
    let resolve = |subset, port| {
        policies
            .resolve(HOST, "default", subset, port)
            .expect("resolves")
    };
    let defaults = RetryBudget {
        percent: 20.0,
        min_concurrency: 3,
        interval: None,
    };
    assert_eq!(resolve(None, 9080).retry_budget, Some(defaults));
    // A port-level entry has no budget of its own: the policy's holds.
    let port = resolve(None, 80);
    assert_eq!(
        (port.retry_budget, port.pool.max_retries),
        (Some(defaults), 7)
    );
    assert_eq!(resolve(Some("v1"), 9080).retry_budget, Some(defaults));
    assert_eq!(
        resolve(Some("v2"), 9080).retry_budget,
        Some(RetryBudget {
            percent: 50.0,
            min_concurrency: 0,
            interval: Some(Duration::from_secs(10)),
        })
    );
    // Out of range: reported, and Istio's default used.
    assert_eq!(resolve(Some("v3"), 9080).retry_budget, Some(defaults));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].path,
        "spec.subsets[2].trafficPolicy.retryBudget.percent"
    );
    // No budget anywhere: none, and `maxRetries` rules.
    let plain = build(vec![dr("reviews", HOST, json!({"host": "reviews"}))]);
    assert_eq!(
        plain
            .resolve(HOST, "default", None, 80)
            .expect("resolves")
            .retry_budget,
        None
    );
}

#[test]
fn clusters_show_the_retry_budget_and_what_it_allows_now() {
    let cluster = budgeted(
        PoolLimits::default(),
        RetryBudget {
            percent: 20.0,
            min_concurrency: 3,
            interval: Some(Duration::from_secs(10)),
        },
    );
    let dump = cluster.dump(Instant::now());
    assert_eq!(
        dump["retry_budget"],
        json!({"percent": 20.0, "min_retry_concurrency": 3, "budget_interval": "10s"})
    );
    assert_eq!(dump["retry_limit"], json!(3));
    let plain = pooled(PoolLimits {
        max_retries: 4,
        ..PoolLimits::default()
    })
    .dump(Instant::now());
    assert_eq!(
        (plain["retry_budget"].clone(), plain["retry_limit"].clone()),
        (json!(null), json!(4))
    );
}

// ---------------------------------------------------------------------------
// Outlier detection
// ---------------------------------------------------------------------------

fn outlier(max_ejection_percent: u32) -> OutlierSettings {
    OutlierSettings {
        interval: Duration::from_secs(1),
        max_ejection_percent,
        ..OutlierSettings::default()
    }
}

fn fail(cluster: &Cluster, id: &str, times: usize, outcome: Outcome, now: Instant) {
    for _ in 0..times {
        cluster.report(id, outcome, now);
    }
}

#[test]
fn five_consecutive_5xx_eject_for_a_growing_time() {
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let cluster = Cluster::new(with_outlier(outlier(50)), endpoints(2), t0);
    let input = HashInput::default();

    fail(&cluster, "ep0", 4, Outcome::Status(500), t0);
    assert!(cluster.ejected(t0).is_empty(), "four are not enough");
    cluster.report("ep0", Outcome::Status(503), t0);
    assert_eq!(cluster.ejected(t0), vec!["ep0".to_owned()]);
    assert_eq!(cluster.ejections(), 1);
    // Ejected endpoints are skipped.
    assert!((0..20).all(|_| pick_id(&cluster, &input, t0) == "ep1"));

    // Back after baseEjectionTime (30s).
    assert_eq!(cluster.ejected(t0 + s(29)), vec!["ep0".to_owned()]);
    assert!(cluster.ejected(t0 + s(30)).is_empty());
    let seen = counts((0..20).map(|_| pick_id(&cluster, &input, t0 + s(30))));
    assert_eq!(seen.get("ep0"), Some(&10));

    // Ejected again right away: twice as long.
    fail(&cluster, "ep0", 5, Outcome::Status(500), t0 + s(30));
    assert_eq!(cluster.ejected(t0 + s(89)), vec!["ep0".to_owned()]);
    assert!(cluster.ejected(t0 + s(90)).is_empty());
    assert_eq!(cluster.ejections(), 2);
}

#[test]
fn the_dump_shows_the_settings_and_each_endpoints_state() {
    let t0 = Instant::now();
    let cluster = Cluster::new(with_outlier(outlier(50)), endpoints(2), t0);
    let picked = cluster
        .pick(&HashInput::default(), t0)
        .expect("an endpoint");
    fail(&cluster, "ep0", 5, Outcome::Status(500), t0);
    let dump = cluster.dump(t0);
    assert_eq!(dump["load_balancer"], "RoundRobin");
    assert_eq!(dump["upstream_http"], "Client");
    assert_eq!(dump["outlier_detection"], true);
    assert_eq!(dump["ejections"], 1);
    assert_eq!(dump["connection_pool"]["max_connections"], "unlimited");
    assert_eq!(dump["connection_pool"]["idle_timeout"], "3600s");
    assert_eq!(dump["connection_pool"]["tcp_idle_timeout"], "3600s");
    let endpoints = dump["endpoints"].as_array().expect("a list");
    assert_eq!(endpoints.len(), 2);
    assert_eq!(endpoints[0]["id"], "ep0");
    assert_eq!(endpoints[0]["ejected"], true);
    assert_eq!(endpoints[1]["ejected"], false);
    let active: u64 = endpoints
        .iter()
        .map(|e| e["active_requests"].as_u64().unwrap_or_default())
        .sum();
    assert_eq!(active, 1, "the pick held: {dump}");
    drop(picked);
}

#[test]
fn an_answer_below_500_resets_the_count() {
    let t0 = Instant::now();
    let cluster = Cluster::new(with_outlier(outlier(50)), endpoints(2), t0);
    fail(&cluster, "ep0", 4, Outcome::Status(500), t0);
    cluster.report("ep0", Outcome::Success, t0);
    fail(&cluster, "ep0", 4, Outcome::Status(502), t0);
    cluster.report("ep0", Outcome::Status(404), t0);
    fail(&cluster, "ep0", 4, Outcome::Status(500), t0);
    assert!(cluster.ejected(t0).is_empty());
    cluster.report("ep0", Outcome::Status(500), t0);
    assert_eq!(cluster.ejected(t0), vec!["ep0".to_owned()]);
}

#[test]
fn max_ejection_percent_is_respected() {
    let t0 = Instant::now();
    // 50% of four: two may be out, not three.
    let cluster = Cluster::new(with_outlier(outlier(50)), endpoints(4), t0);
    for id in ["ep0", "ep1", "ep2"] {
        fail(&cluster, id, 5, Outcome::Status(500), t0);
    }
    assert_eq!(
        cluster.ejected(t0),
        vec!["ep0".to_owned(), "ep1".to_owned()]
    );
    assert_eq!(cluster.ejection_overflows(), 1);
    let input = HashInput::default();
    let seen = counts((0..40).map(|_| pick_id(&cluster, &input, t0)));
    assert_eq!(seen.keys().collect::<Vec<_>>(), vec!["ep2", "ep3"]);

    // Istio's default 10%: one of ten, none of five (Envoy >= 1.31 lets no
    // ejection exceed the percentage).
    let ten = Cluster::new(with_outlier(outlier(10)), endpoints(10), t0);
    fail(&ten, "ep0", 5, Outcome::Status(500), t0);
    fail(&ten, "ep1", 5, Outcome::Status(500), t0);
    assert_eq!(ten.ejected(t0), vec!["ep0".to_owned()]);
    let five = Cluster::new(with_outlier(outlier(10)), endpoints(5), t0);
    fail(&five, "ep0", 5, Outcome::Status(500), t0);
    assert!(five.ejected(t0).is_empty());
    assert_eq!(five.ejection_overflows(), 1);
}

#[test]
fn gateway_errors_count_apart() {
    let t0 = Instant::now();
    let settings = OutlierSettings {
        consecutive_5xx: None,
        consecutive_gateway: Some(3),
        ..outlier(50)
    };
    let cluster = Cluster::new(with_outlier(settings), endpoints(2), t0);
    fail(&cluster, "ep0", 20, Outcome::Status(500), t0);
    assert!(cluster.ejected(t0).is_empty(), "500 is no gateway error");
    cluster.report("ep0", Outcome::Status(502), t0);
    cluster.report("ep0", Outcome::Status(504), t0);
    cluster.report("ep0", Outcome::Status(500), t0);
    cluster.report("ep0", Outcome::Status(503), t0);
    assert!(cluster.ejected(t0).is_empty(), "a 500 breaks the run");
    assert!(!cluster.report("ep0", Outcome::Status(503), t0));
    // A local failure counts as a 503; the report that ejects says so.
    assert!(cluster.report("ep0", Outcome::LocalFailure, t0));
    assert_eq!(cluster.ejected(t0), vec!["ep0".to_owned()]);
}

#[test]
fn split_local_origin_failures_have_their_own_count() {
    let t0 = Instant::now();
    let settings = OutlierSettings {
        split_local_origin: true,
        consecutive_local_origin: 2,
        ..outlier(100)
    };
    let cluster = Cluster::new(with_outlier(settings), endpoints(2), t0);
    // Local failures do not add to the 5xx count...
    fail(&cluster, "ep0", 4, Outcome::Status(500), t0);
    cluster.report("ep0", Outcome::LocalFailure, t0);
    cluster.report("ep0", Outcome::Status(500), t0);
    assert_eq!(cluster.ejected(t0), vec!["ep0".to_owned()]);
    // ...and an answer (even a 5xx) resets theirs.
    cluster.report("ep1", Outcome::LocalFailure, t0);
    cluster.report("ep1", Outcome::Status(500), t0);
    cluster.report("ep1", Outcome::LocalFailure, t0);
    assert_eq!(cluster.ejected(t0), vec!["ep0".to_owned()]);
    cluster.report("ep1", Outcome::LocalFailure, t0);
    assert_eq!(
        cluster.ejected(t0),
        vec!["ep0".to_owned(), "ep1".to_owned()]
    );
}

#[test]
fn with_every_endpoint_ejected_all_are_used() {
    let t0 = Instant::now();
    let cluster = Cluster::new(with_outlier(outlier(100)), endpoints(2), t0);
    fail(&cluster, "ep0", 5, Outcome::Status(500), t0);
    fail(&cluster, "ep1", 5, Outcome::Status(500), t0);
    assert_eq!(cluster.ejected(t0).len(), 2);
    let input = HashInput::default();
    let seen = counts((0..10).map(|_| pick_id(&cluster, &input, t0)));
    assert_eq!(seen.len(), 2, "panic mode uses every endpoint: {seen:?}");
}

#[test]
fn below_min_health_percent_all_endpoints_are_used() {
    let t0 = Instant::now();
    let settings = OutlierSettings {
        min_health_percent: 75,
        ..outlier(50)
    };
    let cluster = Cluster::new(with_outlier(settings), endpoints(4), t0);
    let input = HashInput::default();
    fail(&cluster, "ep0", 5, Outcome::Status(500), t0);
    // 75% healthy: not below the threshold, ep0 is skipped.
    let seen = counts((0..30).map(|_| pick_id(&cluster, &input, t0)));
    assert!(!seen.contains_key("ep0"), "{seen:?}");
    fail(&cluster, "ep1", 5, Outcome::Status(500), t0);
    // 50% healthy: below, every endpoint is used again.
    assert_eq!(cluster.ejected(t0).len(), 2);
    let seen = counts((0..40).map(|_| pick_id(&cluster, &input, t0)));
    assert_eq!(seen.len(), 4, "{seen:?}");
}

#[test]
fn without_outlier_detection_nothing_is_ejected() {
    let t0 = Instant::now();
    let cluster = Cluster::new(with_lb(LoadBalancer::RoundRobin), endpoints(2), t0);
    fail(&cluster, "ep0", 50, Outcome::Status(500), t0);
    assert!(cluster.ejected(t0).is_empty());
    assert_eq!(cluster.ejections(), 0);
}

#[test]
fn ejecting_moves_only_the_ejected_endpoints_keys() {
    let t0 = Instant::now();
    let resolved = Resolved {
        outlier: Some(outlier(50)),
        ..header_hash(HashTable::Ring { minimum_size: 1024 })
    };
    let cluster = Cluster::new(resolved, endpoints(4), t0);
    let users: Vec<HeaderMap> = (0..400).map(|i| user_headers(&format!("u{i}"))).collect();
    let place = |now| -> Vec<String> {
        users
            .iter()
            .map(|h| {
                let input = HashInput {
                    headers: Some(h),
                    ..Default::default()
                };
                pick_id(&cluster, &input, now)
            })
            .collect()
    };
    let before = place(t0);
    fail(&cluster, "ep1", 5, Outcome::Status(500), t0);
    let during = place(t0);
    for (b, d) in before.iter().zip(&during) {
        if b == "ep1" {
            assert_ne!(d, "ep1");
        } else {
            assert_eq!(b, d);
        }
    }
    // Once back, every key is where it was.
    assert_eq!(place(t0 + Duration::from_secs(30)), before);
}

// ---------------------------------------------------------------------------
// Retries: endpoints already tried are avoided while others are left
// ---------------------------------------------------------------------------

fn pick_avoiding_id(
    cluster: &Cluster,
    input: &HashInput<'_>,
    avoid: &[String],
    now: Instant,
) -> String {
    match cluster.pick_avoiding(input, avoid, &[], now) {
        Some(p) => p.endpoint.id.clone(),
        other => panic!("expected an endpoint, got {other:?}"),
    }
}

#[test]
fn a_retry_avoids_the_endpoints_already_tried_under_every_balancer() {
    let now = Instant::now();
    let balancers = [
        LoadBalancer::RoundRobin,
        LoadBalancer::Random,
        LoadBalancer::LeastRequest,
    ];
    for lb in balancers {
        let cluster = Cluster::new(with_lb(lb.clone()), endpoints(3), now);
        let avoid = vec!["ep0".to_owned(), "ep2".to_owned()];
        let seen = counts(
            (0..200).map(|_| pick_avoiding_id(&cluster, &HashInput::default(), &avoid, now)),
        );
        assert_eq!(
            seen.keys().collect::<Vec<_>>(),
            ["ep1"],
            "{lb:?}: only the endpoint not tried yet"
        );
        // Every endpoint tried: any of them, rather than none.
        let all: Vec<String> = (0..3).map(|i| format!("ep{i}")).collect();
        let seen =
            counts((0..300).map(|_| pick_avoiding_id(&cluster, &HashInput::default(), &all, now)));
        assert_eq!(seen.len(), 3, "{lb:?}: all tried, all eligible: {seen:?}");
    }
}

#[test]
fn a_consistent_hash_retry_moves_to_a_stable_next_endpoint() {
    let now = Instant::now();
    let cluster = Cluster::new(
        header_hash(HashTable::Ring { minimum_size: 1024 }),
        endpoints(4),
        now,
    );
    for user in ["jason", "ana", "li", "sam", "kim"] {
        let headers = user_headers(user);
        let input = HashInput {
            headers: Some(&headers),
            ..Default::default()
        };
        let home = pick_id(&cluster, &input, now);
        let avoid = vec![home.clone()];
        let next = pick_avoiding_id(&cluster, &input, &avoid, now);
        assert_ne!(next, home, "{user}: the retry leaves the endpoint tried");
        for _ in 0..20 {
            assert_eq!(
                pick_avoiding_id(&cluster, &input, &avoid, now),
                next,
                "{user}: the same key retries on the same next endpoint"
            );
        }
        // Something else tried, not the key's endpoint: it stays home.
        let elsewhere = vec![if home == "ep0" { "ep1" } else { "ep0" }.to_owned()];
        assert_eq!(pick_avoiding_id(&cluster, &input, &elsewhere, now), home);
    }
}

#[test]
fn a_new_cookie_is_per_connection_not_per_client_address() {
    let now = Instant::now();
    let resolved = with_lb(LoadBalancer::ConsistentHash(ConsistentHash {
        key: HashKey::Cookie(HashCookie {
            name: "session".into(),
            path: None,
            ttl: Some(Duration::from_secs(60)),
        }),
        table: HashTable::Ring { minimum_size: 1024 },
    }));
    let cluster = Cluster::new(resolved, endpoints(3), now);
    let empty = HeaderMap::new();
    // Every request of a pod (or of an ingress gateway) arrives from one
    // address, the port unknown past ztunnel.
    let pod = SocketAddr::from(([10, 0, 9, 9], 0));
    let cookie = |connection: u64| {
        let input = HashInput {
            headers: Some(&empty),
            source: Some(pod),
            connection: Some(connection),
            ..Default::default()
        };
        match cluster.pick(&input, now) {
            Some(p) => p.set_cookie.expect("a ttl: a cookie").value,
            None => panic!("three endpoints to pick from"),
        }
    };
    assert_eq!(cookie(7), cookie(7), "one connection, one cookie");
    let sessions: BTreeSet<String> = (0..20).map(cookie).collect();
    assert_eq!(sessions.len(), 20, "each connection its own session");
}

fn in_locality(i: u8, locality: &str) -> Endpoint {
    Endpoint {
        locality: warren_api::Locality::parse(locality),
        ..endpoint(i)
    }
}

fn at(locality: &str) -> Proximity {
    Proximity {
        locality: warren_api::Locality::parse(locality),
        node: "node-w".into(),
        labels: BTreeMap::new(),
    }
}

/// Round robin with `distribute` from `r1/a` to `to`.
fn distributed_from_a(to: &[(&str, u32)]) -> Resolved {
    Resolved {
        locality: Some(LocalityLb {
            distribute: vec![(
                "r1/a".into(),
                to.iter().map(|(l, w)| ((*l).to_owned(), *w)).collect(),
            )],
            ..LocalityLb::default()
        }),
        ..with_lb(LoadBalancer::RoundRobin)
    }
}

fn tally(cluster: &Cluster, n: usize, now: Instant) -> BTreeMap<String, usize> {
    counts((0..n).map(|_| pick_id(cluster, &HashInput::default(), now)))
}

#[test]
fn locality_failover_keeps_traffic_in_the_waypoints_zone_until_it_fails() {
    let t0 = Instant::now();
    let zones = vec![
        in_locality(0, "r1/a"),
        in_locality(1, "r1/a"),
        in_locality(2, "r1/b"),
        in_locality(3, "r1/b"),
    ];
    let cluster = Cluster::new(with_outlier(outlier(100)), zones.clone(), t0).near(at("r1/a"));
    let all_near = tally(&cluster, 1000, t0);
    assert_eq!(
        all_near.keys().collect::<Vec<_>>(),
        ["ep0", "ep1"],
        "{all_near:?}"
    );
    // Half the zone ejected: 1.4 × 50 % = 70 % stays, 30 % goes to zone b.
    fail(&cluster, "ep0", 5, Outcome::Status(503), t0);
    let split = tally(&cluster, 4000, t0);
    let near = split.get("ep1").copied().unwrap_or(0);
    let far = split.get("ep2").copied().unwrap_or(0) + split.get("ep3").copied().unwrap_or(0);
    assert!(!split.contains_key("ep0"), "{split:?}");
    assert!((2600..=3000).contains(&near), "about 70 % near: {split:?}");
    assert!((1000..=1400).contains(&far), "about 30 % far: {split:?}");
    // The whole zone ejected: all to zone b.
    fail(&cluster, "ep1", 5, Outcome::Status(503), t0);
    let moved = tally(&cluster, 1000, t0);
    assert_eq!(
        moved.keys().collect::<Vec<_>>(),
        ["ep2", "ep3"],
        "{moved:?}"
    );
    // Without outlier detection nothing could move back: no locality.
    let plain = Cluster::new(with_lb(LoadBalancer::RoundRobin), zones.clone(), t0).near(at("r1/a"));
    assert_eq!(tally(&plain, 1000, t0).len(), 4);
    // Turned off by the rule.
    let off = Resolved {
        locality: Some(LocalityLb {
            enabled: false,
            ..LocalityLb::default()
        }),
        ..with_outlier(outlier(100))
    };
    let off = Cluster::new(off, zones, t0).near(at("r1/a"));
    assert_eq!(tally(&off, 1000, t0).len(), 4);
}

#[test]
fn locality_distribute_weights_zones() {
    let t0 = Instant::now();
    let zones = vec![
        in_locality(0, "r1/a"),
        in_locality(1, "r1/b"),
        in_locality(2, "r1/c"),
    ];
    let resolved = distributed_from_a(&[("r1/a", 75), ("r1/b", 25)]);
    let cluster = Cluster::new(resolved, zones, t0).near(at("r1/a"));
    let picked = tally(&cluster, 4000, t0);
    assert!(!picked.contains_key("ep2"), "r1/c is not named: {picked:?}");
    let a = picked.get("ep0").copied().unwrap_or(0);
    assert!((2800..=3200).contains(&a), "about 75 % to r1/a: {picked:?}");
    let dump = cluster.dump(t0);
    assert_eq!(dump["locality"], "r1/a");
    assert_eq!(dump["locality_groups"][0]["load_percent"], 75.0);
    assert_eq!(dump["endpoints"][2]["priority"], serde_json::Value::Null);
    assert_eq!(dump["endpoints"][1]["locality"], "r1/b");
}

#[test]
fn locality_settings_compile_with_the_load_balancer() {
    let policies = build(vec![dr(
        "reviews",
        HOST,
        json!({"host": "reviews", "trafficPolicy": {
            "loadBalancer": {"simple": "ROUND_ROBIN", "localityLbSetting": {
                "failover": [{"from": "us", "to": "eu"}],
                "failoverPriority": ["topology.istio.io/network", "env=prod"]}},
            "outlierDetection": {}
        },
        "subsets": [{"name": "off", "labels": {"v": "1"}, "trafficPolicy": {
            "loadBalancer": {"simple": "RANDOM", "localityLbSetting": {"enabled": false}}}},
            {"name": "plain", "labels": {"v": "2"}, "trafficPolicy": {
            "loadBalancer": {"simple": "RANDOM"}}}]}),
    )]);
    let top = policies.resolve(HOST, "default", None, 80).expect("top");
    assert_eq!(
        top.locality,
        Some(LocalityLb {
            enabled: true,
            distribute: Vec::new(),
            failover: vec![("us".into(), "eu".into())],
            failover_priority: vec![
                PriorityLabel::Same("topology.istio.io/network".into()),
                PriorityLabel::Value("env".into(), "prod".into()),
            ],
            forced: false,
        })
    );
    let off = policies
        .resolve(HOST, "default", Some("off"), 80)
        .expect("off");
    assert_eq!(off.locality.map(|l| l.enabled), Some(false));
    // A subset's loadBalancer replaces the top one whole: no locality
    // setting there means the mesh default, not the top level's.
    let plain = policies
        .resolve(HOST, "default", Some("plain"), 80)
        .expect("plain");
    assert_eq!(plain.locality, None);
}

#[test]
fn a_new_endpoint_warms_up_over_warmup_duration() {
    let t0 = Instant::now();
    let s = Duration::from_secs;
    for lb in [LoadBalancer::RoundRobin, LoadBalancer::LeastRequest] {
        let resolved = Resolved {
            warmup: Some(Warmup::linear(s(60))),
            ..with_lb(lb.clone())
        };
        let cluster = Cluster::new(resolved, endpoints(2), t0);
        // The first endpoints are old by the time the third joins.
        let joined = t0 + s(300);
        cluster.update_at(endpoints(3), joined);
        let share = |at: Instant| {
            let picked = tally(&cluster, 6000, at);
            picked.get("ep2").copied().unwrap_or(0) as f64 / 6000.0
        };
        // 6 s in: 10 % of its weight, 0.1 / 2.1 ≈ 4.8 % of the picks.
        let early = share(joined + s(6));
        assert!((0.03..0.07).contains(&early), "{lb:?} 6 s in: {early}");
        // Half way: 0.5 / 2.5 = 20 %.
        let half = share(joined + s(30));
        assert!((0.17..0.23).contains(&half), "{lb:?} 30 s in: {half}");
        // Warm: a third, and round robin is exact again.
        let warm = share(joined + s(61));
        assert!((0.30..0.37).contains(&warm), "{lb:?} warm: {warm}");
    }
    // RANDOM has no slow start in Envoy: an equal share at once.
    let resolved = Resolved {
        warmup: Some(Warmup::linear(s(60))),
        ..with_lb(LoadBalancer::Random)
    };
    let cluster = Cluster::new(resolved, endpoints(2), t0);
    cluster.update_at(endpoints(3), t0 + s(300));
    let picked = tally(&cluster, 6000, t0 + s(306));
    let share = picked.get("ep2").copied().unwrap_or(0) as f64 / 6000.0;
    assert!((0.30..0.37).contains(&share), "random: {share}");
}

/// Endpoints weighted 1, 1 and 2 (a ServiceEntry's `weight`).
fn weighted_endpoints() -> Vec<Endpoint> {
    [1, 1, 2]
        .into_iter()
        .enumerate()
        .map(|(i, weight)| Endpoint {
            weight,
            ..endpoint(i as u8)
        })
        .collect()
}

#[test]
fn weights_share_round_robin_and_least_request_picks_but_not_random_ones() {
    let t0 = Instant::now();
    let share = |picked: &BTreeMap<String, usize>, id: &str| {
        picked.get(id).copied().unwrap_or(0) as f64 / 8000.0
    };
    for lb in [LoadBalancer::RoundRobin, LoadBalancer::LeastRequest] {
        let cluster = Cluster::new(with_lb(lb.clone()), weighted_endpoints(), t0);
        let picked = tally(&cluster, 8000, t0);
        // 2 of 4: half the picks; the others a quarter each.
        let heavy = share(&picked, "ep2");
        assert!((0.46..0.54).contains(&heavy), "{lb:?}: {picked:?}");
        for light in ["ep0", "ep1"] {
            let got = share(&picked, light);
            assert!((0.21..0.29).contains(&got), "{lb:?}: {picked:?}");
        }
    }
    // With slow start too: a new heavy endpoint 30 s into a 60 s window
    // weighs 2 × 0.5 against 1 + 1: a third of the picks.
    let resolved = Resolved {
        warmup: Some(Warmup::linear(Duration::from_secs(60))),
        ..with_lb(LoadBalancer::RoundRobin)
    };
    let cluster = Cluster::new(resolved, endpoints(2), t0);
    let joined = t0 + Duration::from_secs(300);
    cluster.update_at(weighted_endpoints(), joined);
    let picked = tally(&cluster, 8000, joined + Duration::from_secs(30));
    let young = share(&picked, "ep2");
    assert!((0.29..0.38).contains(&young), "{picked:?}");
    // RANDOM ignores weights, as Envoy's does.
    let cluster = Cluster::new(with_lb(LoadBalancer::Random), weighted_endpoints(), t0);
    let picked = tally(&cluster, 8000, t0);
    let heavy = share(&picked, "ep2");
    assert!((0.29..0.38).contains(&heavy), "random: {picked:?}");
}

#[test]
fn warmup_compiles_with_the_load_balancer() {
    let policies = build(vec![dr(
        "reviews",
        HOST,
        json!({"host": "reviews", "trafficPolicy": {
            "loadBalancer": {"simple": "ROUND_ROBIN", "warmupDurationSecs": "90s"}}}),
    )]);
    let resolved = policies
        .resolve(HOST, "default", None, 80)
        .expect("resolves");
    assert_eq!(
        resolved.warmup,
        Some(Warmup::linear(Duration::from_secs(90)))
    );
    // `warmup` wins over the deprecated field, with its own ramp.
    let policies = build(vec![dr(
        "reviews",
        HOST,
        json!({"host": "reviews", "trafficPolicy": {
            "loadBalancer": {"simple": "LEAST_REQUEST", "warmupDurationSecs": "90s",
                             "warmup": {"duration": "30s", "minimumPercent": 25, "aggression": 2}}}}),
    )]);
    let resolved = policies
        .resolve(HOST, "default", None, 80)
        .expect("resolves");
    assert_eq!(
        resolved.warmup,
        Some(Warmup {
            window: Duration::from_secs(30),
            min_factor: 0.25,
            aggression: 2.0
        })
    );
}

#[test]
fn warmup_ramps_as_envoy_with_its_floor_and_aggression() {
    let s = Duration::from_secs;
    let linear = Warmup::linear(s(60));
    // Counted from one second; floored at 10 %; whole once warm.
    assert_eq!(linear.factor(Duration::ZERO), 0.1);
    assert!((linear.factor(s(30)) - 0.5).abs() < 1e-9);
    assert_eq!(linear.factor(s(60)), 1.0);
    // Aggression 2: the time factor's square root, more of its share
    // early: 0.25^(1/2) = 0.5 a quarter of the way in.
    let eager = Warmup {
        aggression: 2.0,
        ..linear
    };
    assert!((eager.factor(s(15)) - 0.5).abs() < 1e-9);
    // Aggression 0.5: squared, 0.25^2 = 0.0625, held at the floor 10 %.
    let shy = Warmup {
        aggression: 0.5,
        ..linear
    };
    assert_eq!(shy.factor(s(15)), 0.1);
    let floored = Warmup {
        min_factor: 0.5,
        ..linear
    };
    assert_eq!(floored.factor(s(6)), 0.5);

    // Through the load balancer: a new endpoint with aggression 2 gets
    // 0.5 / 2.5 = 20 % of the picks a quarter of the way in.
    let t0 = Instant::now();
    let resolved = Resolved {
        warmup: Some(eager),
        ..with_lb(LoadBalancer::RoundRobin)
    };
    let cluster = Cluster::new(resolved, endpoints(2), t0);
    let joined = t0 + s(300);
    cluster.update_at(endpoints(3), joined);
    let picked = tally(&cluster, 6000, joined + s(15));
    let share = picked.get("ep2").copied().unwrap_or(0) as f64 / 6000.0;
    assert!(
        (0.17..0.23).contains(&share),
        "aggression 2, 15 s in: {share}"
    );
}

#[test]
fn a_level_short_of_healthy_endpoints_panics_alone() {
    // minHealthPercent 50: zone a's two endpoints ejected, zone b has 2 of
    // 3 healthy: zone b is not in panic (1.4 × 67 % ≥ 50 %) and takes all,
    // on its healthy endpoints only.
    let t0 = Instant::now();
    let zones = vec![
        in_locality(0, "r1/a"),
        in_locality(1, "r1/a"),
        in_locality(2, "r1/b"),
        in_locality(3, "r1/b"),
        in_locality(4, "r1/b"),
    ];
    let settings = OutlierSettings {
        min_health_percent: 50,
        ..outlier(100)
    };
    let cluster = Cluster::new(with_outlier(settings), zones, t0).near(at("r1/a"));
    for id in ["ep0", "ep1", "ep4"] {
        fail(&cluster, id, 5, Outcome::Status(503), t0);
    }
    let picked = tally(&cluster, 1000, t0);
    assert_eq!(
        picked.keys().collect::<Vec<_>>(),
        ["ep2", "ep3"],
        "{picked:?}"
    );
}

#[test]
fn a_retry_looks_in_the_other_groups_for_an_untried_endpoint() {
    let t0 = Instant::now();
    let zones = vec![in_locality(0, "r1/a"), in_locality(1, "r1/b")];
    let resolved = distributed_from_a(&[("r1/a", 90), ("r1/b", 10)]);
    let cluster = Cluster::new(resolved, zones, t0).near(at("r1/a"));
    let tried = vec!["ep0".to_owned()];
    for _ in 0..200 {
        let picked = cluster
            .pick_avoiding(&HashInput::default(), &tried, &[], t0)
            .expect("an endpoint");
        assert_eq!(
            picked.endpoint.id, "ep1",
            "the retry must leave the tried zone"
        );
    }
}

#[test]
fn learning_its_place_keeps_the_endpoints_state() {
    let t0 = Instant::now();
    let zones = vec![in_locality(0, "r1/a"), in_locality(1, "r1/b")];
    let cluster = Cluster::new(with_outlier(outlier(100)), zones, t0);
    // Not placed yet: no preference.
    assert_eq!(tally(&cluster, 200, t0).len(), 2);
    fail(&cluster, "ep1", 5, Outcome::Status(503), t0);
    cluster.place(Some(at("r1/b")));
    // Placed in r1/b, whose endpoint is still ejected: all to r1/a.
    let picked = tally(&cluster, 200, t0);
    assert_eq!(picked.keys().collect::<Vec<_>>(), ["ep0"], "{picked:?}");
    assert_eq!(cluster.ejections(), 1);
}

#[test]
fn retry_remote_localities_sends_a_retry_to_another_priority() {
    let t0 = Instant::now();
    let zones = vec![
        in_locality(0, "r1/a"),
        in_locality(1, "r1/a"),
        in_locality(2, "r1/b"),
    ];
    let cluster = Cluster::new(with_outlier(outlier(100)), zones, t0).near(at("r1/a"));
    let tried = vec!["ep0".to_owned()];
    // Without it, a retry stays in the waypoint's zone (ep1 is untried).
    for _ in 0..100 {
        let picked = cluster
            .pick_avoiding(&HashInput::default(), &tried, &[], t0)
            .expect("an endpoint");
        assert_eq!(picked.endpoint.id, "ep1");
    }
    // With it, the tried zone's priority is left for the next one.
    for _ in 0..100 {
        let picked = cluster
            .pick_avoiding(&HashInput::default(), &tried, &tried, t0)
            .expect("an endpoint");
        assert_eq!(picked.endpoint.id, "ep2");
    }
}

#[test]
fn slow_start_counts_from_when_the_endpoint_became_ready() {
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let resolved = Resolved {
        warmup: Some(Warmup::linear(s(60))),
        ..with_lb(LoadBalancer::RoundRobin)
    };
    let cluster = Cluster::new(resolved, endpoints(2), t0);
    // ep2 was ready long before this cluster first saw it: already warm.
    let mut next = endpoints(3);
    if let Some(late) = next.get_mut(2) {
        late.ready_since = Some(t0);
    }
    let seen = t0 + s(300);
    cluster.update_at(next, seen);
    let picked = tally(&cluster, 6000, seen + s(1));
    let share = picked.get("ep2").copied().unwrap_or(0) as f64 / 6000.0;
    assert!(
        (0.30..0.37).contains(&share),
        "warm from its readiness: {share}"
    );
}

#[test]
fn the_waypoints_own_host_is_never_an_endpoint() {
    for ip in [
        "127.0.0.1",
        "127.5.0.9",
        "::1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "::",
        "169.254.169.254",
        "fe80::1",
        "224.0.0.1",
        "255.255.255.255",
    ] {
        assert!(!super::dialable(ip.parse().unwrap()), "{ip}");
    }
    for ip in [
        "10.0.0.1",
        "172.30.0.2",
        "192.0.2.7",
        "2001:db8::1",
        "fd00::5",
    ] {
        assert!(super::dialable(ip.parse().unwrap()), "{ip}");
    }
}

/// A ServiceEntry `host` resolved `NONE` (VIP 10.9.0.1, blocks
/// 10.20.0.0/16 and 127.0.0.0/8, ports 8080 and 8443), as the mesh state has
/// it.
fn none_entry(host: &str) -> warren_ztunnel::state::Service {
    entry_resolved(host, true)
}

/// [`none_entry`], resolved `NONE` (`passthrough`) or not.
fn entry_resolved(host: &str, passthrough: bool) -> warren_ztunnel::state::Service {
    use warren_api::{addr, config};
    let proto = config::Service {
        name: host.into(),
        namespace: "ns".into(),
        hostname: host.into(),
        vips: vec![addr::to_bytes("10.9.0.1".parse().expect("an address"))],
        vip_ranges: vec![
            config::Cidr {
                address: vec![10, 20, 0, 0],
                prefix_len: 16,
            },
            // Tenant input may name the waypoint's own host.
            config::Cidr {
                address: vec![127, 0, 0, 0],
                prefix_len: 8,
            },
        ],
        ports: [8080, 8443]
            .map(|port| config::ServicePort {
                port,
                ..Default::default()
            })
            .to_vec(),
        passthrough,
        ..Default::default()
    };
    let key = warren_api::key::service_entry("ns", host);
    warren_ztunnel::state::Service::from_proto(&key, proto).expect("an entry")
}

/// An original-destination cluster sends a request where its client
/// dialled (an address of the entry: a VIP, an address of a block,
/// IPv4-mapped or not), on the cluster's port (the route's), when the request
/// was dialled to that very entry. Never for another host's connection (a
/// route or mirror from it), nor the waypoint's own calls, nor to an address
/// or port not the entry's, nor to the waypoint's own host. It has no
/// endpoints of its own, and stops being one when the entry does.
#[test]
fn an_original_destination_cluster_goes_where_the_client_dialled() {
    let now = Instant::now();
    let host = "legacy.internal";
    let entry = Arc::new(none_entry(host));
    let cluster = Cluster::new(Resolved::defaults(host, 8080), Vec::new(), now);
    let addr = |s: &str| s.parse::<SocketAddr>().expect("ip:port");
    let pick =
        |cluster: &Cluster, to: Option<&str>, entry: &Arc<warren_ztunnel::state::Service>| {
            let dialled = || to.map(|to| (addr(to), Arc::clone(entry)));
            cluster.pick_for(dialled, &HashInput::default(), &[], &[], now)
        };
    assert!(!cluster.is_original_destination());
    assert_eq!(
        pick(&cluster, Some("10.9.0.1:8080"), &entry).err(),
        Some(Unpicked::NoEndpoint)
    );
    cluster.set_original_destination(true);
    assert!(cluster.is_original_destination());
    for (to, expected) in [
        ("10.9.0.1:8080", "10.9.0.1:8080"),
        ("10.20.3.4:8080", "10.20.3.4:8080"),
        ("[::ffff:10.20.3.4]:8080", "10.20.3.4:8080"),
    ] {
        let picked = pick(&cluster, Some(to), &entry).unwrap_or_else(|e| panic!("{to}: {e:?}"));
        assert_eq!(picked.endpoint.address, addr(expected));
        assert_eq!(picked.endpoint.id, expected);
    }
    let refused = |result: Result<Picked, Unpicked>| match result {
        Err(Unpicked::NotDialled(reason)) => reason,
        other => panic!(
            "expected a refusal, got {:?}",
            other.map(|p| p.endpoint.address)
        ),
    };
    // Not the entry's address; the waypoint's own host.
    for to in ["10.9.0.2:8080", "10.21.0.1:8080", "127.0.0.1:8080"] {
        refused(pick(&cluster, Some(to), &entry));
    }
    // The waypoint's own call dialled nothing.
    let own = refused(pick(&cluster, None, &entry));
    assert!(own.contains("the waypoint's own calls"), "{own}");
    // A connection dialled to another host (routed or mirrored here).
    let other = Arc::new(none_entry("other.internal"));
    let routed = refused(pick(&cluster, Some("10.9.0.1:8080"), &other));
    assert!(routed.contains("dialled to other.internal"), "{routed}");
    // A route naming the entry's other port: the dialled address there; a
    // port the entry does not declare: nowhere.
    let tls = Cluster::new(Resolved::defaults(host, 8443), Vec::new(), now);
    tls.set_original_destination(true);
    let picked = pick(&tls, Some("10.9.0.1:8080"), &entry).expect("port 8443");
    assert_eq!(picked.endpoint.address, addr("10.9.0.1:8443"));
    let undeclared = Cluster::new(Resolved::defaults(host, 9090), Vec::new(), now);
    undeclared.set_original_destination(true);
    refused(pick(&undeclared, Some("10.9.0.1:8080"), &entry));

    assert!(cluster.endpoints().is_empty());
    assert_eq!(cluster.dump(now)["original_destination"], true);
    cluster.set_original_destination(false);
    assert_eq!(
        pick(&cluster, Some("10.9.0.1:8080"), &entry).err(),
        Some(Unpicked::NoEndpoint)
    );
}

/// A cluster switching between `NONE` and `STATIC` (as the proxy applies
/// it: the flag set before the endpoints go, cleared after they come) has a
/// way to go at every step, whichever side a request meets: the entry's
/// endpoints while it has them and is `STATIC`, else where the client
/// dialled. An entry gone leaves nothing to dial.
#[test]
fn a_cluster_switching_kind_always_has_a_way_to_go() {
    let now = Instant::now();
    let host = "legacy.internal";
    let none = Arc::new(none_entry(host));
    let statics = Arc::new(entry_resolved(host, false));
    let dialled: SocketAddr = "10.9.0.1:8080".parse().expect("ip:port");
    let server: SocketAddr = "10.9.0.7:8080".parse().expect("ip:port");
    let endpoint = || Endpoint {
        id: server.to_string(),
        address: server,
        labels: BTreeMap::new(),
        locality: Default::default(),
        node: String::new(),
        ready_since: None,
        weight: 1,
    };
    let cluster = Cluster::new(Resolved::defaults(host, 8080), vec![endpoint()], now);
    let goes = |entry: Option<&Arc<warren_ztunnel::state::Service>>| {
        let dialled = || entry.map(|e| (dialled, Arc::clone(e)));
        cluster
            .pick_for(dialled, &HashInput::default(), &[], &[], now)
            .map(|p| p.endpoint.address)
    };
    // STATIC, then the entry turns NONE: the cluster's endpoints until its
    // flag is set; then where the client dialled, endpoints or not.
    assert_eq!(goes(Some(&statics)), Ok(server));
    assert_eq!(goes(Some(&none)), Ok(server));
    cluster.set_original_destination(true);
    assert_eq!(goes(Some(&none)), Ok(dialled));
    cluster.update_at(Vec::new(), now);
    assert_eq!(goes(Some(&none)), Ok(dialled));
    // The entry turns STATIC: before the cluster has its endpoints, where
    // the client dialled (one of the entry's addresses); once it has them,
    // those, the flag set or not.
    assert_eq!(goes(Some(&statics)), Ok(dialled));
    cluster.update_at(vec![endpoint()], now);
    assert_eq!(goes(Some(&statics)), Ok(server));
    cluster.set_original_destination(false);
    assert_eq!(goes(Some(&statics)), Ok(server));
    // Flagged NONE again, and the entry gone: nothing dialled may be reached.
    cluster.set_original_destination(true);
    cluster.update_at(Vec::new(), now);
    assert!(matches!(goes(None), Err(Unpicked::NotDialled(_))));
}
