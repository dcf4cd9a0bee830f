use crate::reference_grant::ReferenceGrant;
use crate::validate;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use serde_json::json;

use super::*;

fn created(seconds: i64) -> Option<Time> {
    Some(Time(
        Timestamp::from_second(seconds).expect("a time in range"),
    ))
}

fn tcp(name: &str, age: i64, spec: serde_json::Value) -> TCPRoute {
    let mut route = TCPRoute::new(name, serde_json::from_value(spec).expect("a route spec"));
    route.metadata.namespace = Some("shop".into());
    route.metadata.creation_timestamp = created(1_000 - age);
    route
}

fn tls(name: &str, age: i64, spec: serde_json::Value) -> TLSRoute {
    let mut route = TLSRoute::new(name, serde_json::from_value(spec).expect("a route spec"));
    route.metadata.namespace = Some("shop".into());
    route.metadata.creation_timestamp = created(1_000 - age);
    route
}

fn errors(found: Vec<FieldError>) -> Vec<String> {
    found
        .into_iter()
        .map(|e| format!("{}: {}", e.path, e.reason))
        .collect()
}

/// The VirtualService of Service `db`, which must pass a written one's
/// checks.
fn converted(tcp: &[&TCPRoute], tls: &[&TLSRoute]) -> VirtualService {
    let vs = virtual_service(
        "shop",
        &crate::http_route::Target::service("shop", "db", "cluster.local"),
        "cluster.local",
        tcp,
        tls,
        &Grants::default(),
    )
    .expect("a VirtualService");
    let problems = validate::virtual_service(&vs);
    assert!(problems.is_empty(), "{problems:?}");
    vs
}

const DB: &str = "db";

fn parent(port: Option<u16>) -> serde_json::Value {
    match port {
        Some(port) => json!({ "group": "", "kind": "Service", "name": DB, "port": port }),
        None => json!({ "group": "", "kind": "Service", "name": DB }),
    }
}

#[test]
fn a_tcp_route_splits_connections_by_weight_on_its_port() {
    let r = tcp(
        "split",
        0,
        json!({
            "parentRefs": [parent(Some(5432))],
            "rules": [{ "backendRefs": [
                { "name": "db-v1", "port": 5432, "weight": 2 },
                { "name": "db-v2", "port": 5432, "weight": 1 },
                { "name": "db-v3", "port": 5432, "weight": 0 },
            ]}],
        }),
    );
    assert_eq!(errors(validate_tcp(&r)), Vec::<String>::new());
    let vs = converted(&[&r], &[]);
    assert_eq!(vs.metadata.name.as_deref(), Some("db-routes-l4"));
    assert_eq!(vs.spec.hosts, ["db.shop.svc.cluster.local"]);
    let rule = &vs.spec.tcp[0];
    assert_eq!(rule.r#match.len(), 1);
    assert_eq!(rule.r#match[0].port, Some(5432));
    // Weight 0 sends nothing: left out.
    let split: Vec<(&str, Option<i32>)> = rule
        .route
        .iter()
        .map(|d| (d.destination.host.as_str(), d.weight))
        .collect();
    assert_eq!(
        split,
        [
            ("db-v1.shop.svc.cluster.local", Some(67)),
            ("db-v2.shop.svc.cluster.local", Some(33)),
        ]
    );
    assert_eq!(
        rule.route[0].destination.port.as_ref().map(|p| p.number),
        Some(5432)
    );
}

#[test]
fn a_route_for_every_port_matches_any_and_the_older_route_wins() {
    let newer = tcp(
        "newer",
        1,
        json!({
            "parentRefs": [parent(None)],
            "rules": [{ "backendRefs": [{ "name": "db-v2", "port": 5432 }] }],
        }),
    );
    let older = tcp(
        "older",
        100,
        json!({
            "parentRefs": [parent(None)],
            "rules": [{ "backendRefs": [{ "name": "db-v1", "port": 5432 }] }],
        }),
    );
    let vs = converted(&[&newer, &older], &[]);
    let hosts: Vec<&str> = vs
        .spec
        .tcp
        .iter()
        .map(|r| r.route[0].destination.host.as_str())
        .collect();
    assert_eq!(
        hosts,
        [
            "db-v1.shop.svc.cluster.local",
            "db-v2.shop.svc.cluster.local"
        ]
    );
    assert!(vs.spec.tcp[0].r#match.is_empty(), "every port");
    // A lone backend takes everything: no weight written.
    assert_eq!(vs.spec.tcp[0].route[0].weight, None);
    // The VirtualService is as old as its oldest route.
    assert_eq!(
        vs.metadata.creation_timestamp,
        older.metadata.creation_timestamp
    );
}

#[test]
fn tls_routes_go_by_server_name_the_more_specific_first() {
    let any = tls(
        "any",
        300,
        json!({
            "parentRefs": [parent(Some(443))],
            "rules": [{ "backendRefs": [{ "name": "fallback", "port": 443 }] }],
        }),
    );
    let wide = tls(
        "wide",
        200,
        json!({
            "parentRefs": [parent(Some(443))],
            "hostnames": ["*.example.com"],
            "rules": [{ "backendRefs": [{ "name": "wide", "port": 443 }] }],
        }),
    );
    let narrow = tls(
        "narrow",
        100,
        json!({
            "parentRefs": [parent(Some(443))],
            "hostnames": ["*.eu.example.com", "Pay.Example.com"],
            "rules": [{ "backendRefs": [{ "name": "narrow", "port": 443 }] }],
        }),
    );
    for r in [&any, &wide, &narrow] {
        assert_eq!(errors(validate_tls(r)), Vec::<String>::new());
    }
    let vs = converted(&[], &[&any, &wide, &narrow]);
    let order: Vec<(String, &str)> = vs
        .spec
        .tls
        .iter()
        .map(|r| {
            assert_eq!(r.r#match[0].port, Some(443));
            (
                r.r#match[0].sni_hosts.join(","),
                r.route[0].destination.host.as_str(),
            )
        })
        .collect();
    // Exact name first (lower-cased), then the longer wildcard, then the
    // shorter, then any name: older routes do not shadow newer, more
    // specific ones.
    assert_eq!(
        order,
        [
            ("pay.example.com".into(), "narrow.shop.svc.cluster.local"),
            ("*.eu.example.com".into(), "narrow.shop.svc.cluster.local"),
            ("*.example.com".into(), "wide.shop.svc.cluster.local"),
            ("*".into(), "fallback.shop.svc.cluster.local"),
        ]
    );
}

#[test]
fn a_services_tcp_and_tls_routes_make_one_virtual_service_of_their_own() {
    let raw = tcp(
        "raw",
        50,
        json!({
            // Two ports of the Service, one parentRef each: a match each.
            "parentRefs": [parent(Some(5432)), parent(Some(5433))],
            "rules": [{ "backendRefs": [{ "name": "db-v1", "port": 5432 }] }],
        }),
    );
    let secure = tls(
        "secure",
        70,
        json!({
            // One parentRef narrowed, one not: every port.
            "parentRefs": [parent(Some(443)), parent(None)],
            "hostnames": ["db.example.com"],
            "rules": [{ "backendRefs": [{ "name": "db-v1", "port": 443 }] }],
        }),
    );
    let vs = converted(&[&raw], &[&secure]);
    assert_eq!(vs.metadata.name.as_deref(), Some("db-routes-l4"));
    assert!(vs.spec.http.is_empty());
    let ports: Vec<Option<u32>> = vs.spec.tcp[0].r#match.iter().map(|m| m.port).collect();
    assert_eq!(ports, [Some(5432), Some(5433)]);
    let ports: Vec<Option<u32>> = vs.spec.tls[0].r#match.iter().map(|m| m.port).collect();
    assert_eq!(ports, [None]);
    // As old as its oldest route.
    assert_eq!(
        vs.metadata.creation_timestamp,
        secure.metadata.creation_timestamp
    );
    // Nothing for a Service no route names.
    assert_eq!(
        virtual_service(
            "shop",
            &crate::http_route::Target::service("shop", "web", "cluster.local"),
            "cluster.local",
            &[&raw],
            &[&secure],
            &Grants::default()
        ),
        None
    );
}

#[test]
fn what_a_route_cannot_mean_is_refused_by_path() {
    let refused = |spec: serde_json::Value| errors(validate_tcp(&tcp("bad", 0, spec)));
    let backend = json!({ "name": "db-v1", "port": 5432 });
    assert_eq!(
        refused(json!({ "parentRefs": [parent(None)], "rules": [
            { "backendRefs": [backend] }, { "backendRefs": [backend] },
        ]})),
        [
            "spec.rules: only one rule: a connection carries nothing (no path, no header) to choose between rules by; split connections with backend weights"
        ]
    );
    assert_eq!(
        refused(json!({ "parentRefs": [parent(None)] })),
        ["spec.rules: a route needs its rule: where connections go"]
    );
    assert_eq!(
        refused(json!({ "parentRefs": [parent(None)], "rules": [{}] })),
        ["spec.rules[0].backendRefs: at least one backend"]
    );
    // Every backend at weight 0 is no error: the route rejects every
    // connection, as the Gateway API asks.
    let zero = tcp(
        "drain",
        0,
        json!({ "parentRefs": [parent(None)], "rules": [
            { "backendRefs": [{ "name": "db-v1", "port": 5432, "weight": 0 }] },
        ]}),
    );
    assert_eq!(errors(validate_tcp(&zero)), Vec::<String>::new());
    let vs = converted(&[&zero], &[]);
    let hosts: Vec<(&str, Option<i32>)> = vs.spec.tcp[0]
        .route
        .iter()
        .map(|d| (d.destination.host.as_str(), d.weight))
        .collect();
    assert_eq!(hosts, [(REJECTED, None)]);
    let paths = |found: Vec<String>| -> Vec<String> {
        found
            .into_iter()
            .map(|e| e.split(':').next().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(
        paths(refused(json!({
            "parentRefs": [{ "kind": "Service", "name": DB }],
            "rules": [{ "backendRefs": [
                { "group": "networking.istio.io", "kind": "Hostname", "name": "db.example.com", "namespace": "other" },
                { "name": "db-v2" },
                { "name": "db-v3", "port": 5432, "weight": -1 },
            ]}],
        }))),
        [
            "spec.parentRefs[0].group",
            "spec.rules[0].backendRefs[0].namespace",
            "spec.rules[0].backendRefs[1].port",
            "spec.rules[0].backendRefs[2].weight",
        ]
    );
    // Filters are not a TCPRoute backend's field at all.
    assert!(
        serde_json::from_value::<TcpRouteSpec>(json!({ "rules": [{ "backendRefs": [
            { "name": "db-v1", "port": 5432, "filters": [] },
        ]}]}))
        .is_err()
    );
    // A route for Gateways only is an ingress controller's: not checked.
    assert_eq!(
        errors(validate_tcp(&tcp(
            "ingress",
            0,
            json!({ "parentRefs": [{ "name": "public" }], "rules": [] }),
        ))),
        Vec::<String>::new()
    );
}

#[test]
fn tls_server_names_are_host_names() {
    let r = tls(
        "names",
        0,
        json!({
            "parentRefs": [parent(None)],
            "hostnames": ["10.0.0.1", "a.*.example.com", "-bad.example.com", "ok.example.com", "*.example.com"],
            "rules": [{ "backendRefs": [{ "name": "db-v1", "port": 443 }] }],
        }),
    );
    let found = errors(validate_tls(&r));
    let paths: Vec<&str> = found
        .iter()
        .map(|e| e.split(':').next().unwrap_or_default())
        .collect();
    assert_eq!(
        paths,
        [
            "spec.hostnames[0]",
            "spec.hostnames[1]",
            "spec.hostnames[2]"
        ],
        "{found:?}"
    );
}

#[test]
fn another_namespaces_backend_needs_a_reference_grant() {
    let r = tcp(
        "across",
        0,
        json!({
            "parentRefs": [parent(Some(5432))],
            "rules": [{ "backendRefs": [
                { "name": "db-v1", "port": 5432, "weight": 1 },
                { "name": "db", "namespace": "data", "port": 5432, "weight": 1 },
            ]}],
        }),
    );
    assert_eq!(errors(validate_tcp(&r)), Vec::<String>::new());
    let hosts = |grants: &Grants| -> Vec<(String, Option<i32>)> {
        let vs = virtual_service(
            "shop",
            &crate::http_route::Target::service("shop", DB, "cluster.local"),
            "cluster.local",
            &[&r],
            &[],
            grants,
        )
        .expect("a VirtualService");
        assert!(validate::virtual_service(&vs).is_empty());
        vs.spec.tcp[0]
            .route
            .iter()
            .map(|d| (d.destination.host.clone(), d.weight))
            .collect()
    };
    // Without a grant its share of connections is rejected.
    assert_eq!(
        hosts(&Grants::default()),
        [
            ("db-v1.shop.svc.cluster.local".to_owned(), Some(50)),
            (REJECTED.to_owned(), Some(50)),
        ]
    );
    // A grant for TCPRoutes of `shop` to that Service.
    let mut grant = ReferenceGrant::new(
        "from-shop",
        serde_json::from_value(json!({
            "from": [{ "group": "gateway.networking.k8s.io", "kind": "TCPRoute", "namespace": "shop" }],
            "to": [{ "group": "", "kind": "Service", "name": "db" }],
        }))
        .expect("a grant"),
    );
    grant.metadata.namespace = Some("data".into());
    assert_eq!(
        hosts(&Grants::new([&grant])),
        [
            ("db-v1.shop.svc.cluster.local".to_owned(), Some(50)),
            ("db.data.svc.cluster.local".to_owned(), Some(50)),
        ]
    );
    // A grant for HTTPRoutes says nothing of TCPRoutes.
    grant.spec.from[0].kind = "HTTPRoute".into();
    assert_eq!(hosts(&Grants::new([&grant]))[1].0, REJECTED);
}

#[test]
fn the_refused_shares_of_several_backends_are_rejected_as_one() {
    let r = tcp(
        "across",
        0,
        json!({
            "parentRefs": [parent(None)],
            "rules": [{ "backendRefs": [
                { "name": "db-v1", "port": 5432, "weight": 1 },
                { "name": "db", "namespace": "data", "port": 5432, "weight": 1 },
                { "name": "db", "namespace": "other", "port": 5432, "weight": 2 },
            ]}],
        }),
    );
    let vs = converted(&[&r], &[]);
    let hosts: Vec<(&str, Option<i32>)> = vs.spec.tcp[0]
        .route
        .iter()
        .map(|d| (d.destination.host.as_str(), d.weight))
        .collect();
    assert_eq!(
        hosts,
        [
            ("db-v1.shop.svc.cluster.local", Some(25)),
            (REJECTED, Some(75)),
        ]
    );
    // Only refused backends: all of it, no weight needed.
    let r = tcp(
        "away",
        0,
        json!({
            "parentRefs": [parent(None)],
            "rules": [{ "backendRefs": [
                { "name": "db", "namespace": "data", "port": 5432 },
                { "name": "db-v1", "port": 5432, "weight": 0 },
            ]}],
        }),
    );
    let vs = converted(&[&r], &[]);
    assert_eq!(vs.spec.tcp[0].route.len(), 1);
    assert_eq!(vs.spec.tcp[0].route[0].destination.host, REJECTED);
}
