use std::{collections::BTreeMap, sync::Arc};

use warren_api::config::{
    Action, Authorization, InboundMode, Match, Scope, StringMatch, TunnelProtocol, Update,
    Workload, string_match::Kind as SKind,
};

use super::*;
use crate::test_pki::ca_pem as pem;
use crate::{
    model::{
        gateway::{Gateway, NamespaceSelector, RouteNamespaces, WAYPOINT_FOR_LABEL},
        object::{parse_document, split_documents},
    },
    source::SourceEvent,
};

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: { name: demo, labels: { warren.io/dataplane-mode: ambient } }
---
apiVersion: v1
kind: Namespace
metadata: { name: plain }
---
apiVersion: v1
kind: Pod
metadata:
  name: app-v1-0
  namespace: demo
  labels: { app: app, version: v1 }
  annotations: { warren.io/netns: /run/netns/t-app-v1-0, warren.io/exclude-outbound-ports: "5432,25" }
spec: { nodeName: node-a, serviceAccountName: app, containers: [{ name: main }] }
status: { hostIP: 172.30.0.1, podIP: 10.244.0.5, podIPs: [{ ip: 10.244.0.5 }, { ip: "fd00:244::5" }] }
---
apiVersion: v1
kind: Pod
metadata: { name: app-v2-0, namespace: demo, labels: { app: app, version: v2 } }
spec: { nodeName: node-b, serviceAccountName: app, containers: [{ name: main }] }
status: { hostIP: 172.30.0.2, podIP: 10.244.1.5 }
---
apiVersion: v1
kind: Pod
metadata: { name: out-0, namespace: demo, labels: { app: out, warren.io/dataplane-mode: none } }
spec: { nodeName: node-a, containers: [{ name: main }] }
status: { hostIP: 172.30.0.1, podIP: 10.244.0.6 }
---
apiVersion: v1
kind: Pod
metadata: { name: legacy-0, namespace: plain }
spec: { nodeName: node-a, containers: [{ name: main }] }
status: { hostIP: 172.30.0.1, podIP: 10.244.0.7 }
---
apiVersion: v1
kind: Service
metadata: { name: app, namespace: demo }
spec:
  clusterIP: 10.96.0.10
  ports: [{ name: http, port: 80, targetPort: web }, { name: admin, port: 9000, targetPort: 9000 }]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: app-1, namespace: demo, labels: { kubernetes.io/service-name: app } }
addressType: IPv4
ports: [{ name: http, port: 8080 }, { name: admin, port: 9000 }]
endpoints:
  - addresses: [10.244.1.5]
    conditions: { ready: false }
    targetRef: { kind: Pod, name: app-v2-0, namespace: demo }
  - addresses: [10.244.0.5]
    targetRef: { kind: Pod, name: app-v1-0, namespace: demo }
"#;

fn mesh() -> Mesh {
    Mesh {
        node: "node-a".into(),
        node_addresses: vec!["172.30.0.1".parse().unwrap()],
        root_namespace: "istio-system".into(),
        mesh_config: "istio".into(),
        trust_domain: "cluster.local".into(),
        trust_domain_aliases: Vec::new(),
        cluster_domain: "cluster.local".into(),
        outbound_policy: OutboundPolicy::AllowAny,
        captures_ipv6: true,
        inbound_listeners: None,
    }
}

/// Applies `yaml` to the store; returns the keys it changed.
fn apply(store: &mut Store, yaml: &str) -> Vec<ObjectKey> {
    let mut keys = Vec::new();
    for doc in split_documents(yaml).unwrap() {
        let object = parse_document(doc, "test").unwrap_or_else(|e| panic!("{e}"));
        keys.push(object.key());
        store.apply(SourceEvent::Upsert(object));
    }
    keys
}

fn delete(store: &mut Store, kind: Kind, ns: &str, name: &str) -> ObjectKey {
    let key = ObjectKey {
        kind,
        namespace: Some(ns.into()),
        name: name.into(),
    };
    store.apply(SourceEvent::Delete(key.clone()));
    key
}

fn built(extra: &str) -> (Store, View) {
    let mut store = Store::default();
    apply(&mut store, BASE);
    if !extra.is_empty() {
        apply(&mut store, extra);
    }
    store.apply(SourceEvent::Synced);
    let mut view = View::new(mesh(), Publisher::default());
    view.rebuild(&store);
    (store, view)
}

fn get(view: &View, key: &str) -> Option<ResourceKind> {
    view.publisher().lock().get(key).and_then(|r| r.kind)
}

/// The spec of the VirtualService published under `key`, as JSON.
fn virtual_service_spec(view: &View, key: &str) -> Option<serde_json::Value> {
    match get(view, key)? {
        ResourceKind::VirtualService(vs) => serde_json::from_str(&vs.spec_json).ok(),
        _ => None,
    }
}

fn workload(view: &View, ns: &str, name: &str) -> Workload {
    match get(view, &key::workload(ns, name)) {
        Some(ResourceKind::Workload(w)) => w,
        other => panic!("no workload {ns}/{name}: {other:?}"),
    }
}

fn authorization(view: &View, ns: &str, name: &str) -> Authorization {
    match get(view, &key::authorization(ns, name)) {
        Some(ResourceKind::Authorization(a)) => a,
        other => panic!("no policy {ns}/{name}: {other:?}"),
    }
}

/// Keys a subscriber at `since` is sent next.
fn delta_keys(view: &View, since: u64) -> Vec<String> {
    match view
        .publisher()
        .lock()
        .pending(Some(since), &super::published::Audience::All)
    {
        Pending::UpToDate => Vec::new(),
        Pending::Update(Update {
            upserts, removals, ..
        }) => upserts.into_iter().map(|r| r.key).chain(removals).collect(),
    }
}

/// The keys `audience` is sent from nothing.
fn keys_for(view: &View, audience: &Audience) -> Vec<String> {
    match view.publisher().lock().pending(None, audience) {
        Pending::Update(u) => u.upserts.into_iter().map(|r| r.key).collect(),
        Pending::UpToDate => Vec::new(),
    }
}

fn version(view: &View) -> u64 {
    view.publisher().lock().version()
}

#[test]
fn a_workload_carries_the_ports_its_pod_excludes_from_capture() {
    let (_, view) = built("");
    assert_eq!(
        workload(&view, "demo", "app-v1-0").excluded_ports,
        [5432, 25]
    );
    assert!(
        workload(&view, "demo", "app-v2-0")
            .excluded_ports
            .is_empty()
    );
}

#[test]
fn workloads_carry_identity_addresses_node_and_mesh_membership() {
    let (_, view) = built("");
    let w = workload(&view, "demo", "app-v1-0");
    assert_eq!(w.uid, "demo/app-v1-0");
    assert_eq!(w.service_account, "app");
    assert_eq!(w.node, "node-a");
    assert_eq!(w.trust_domain, "cluster.local");
    assert_eq!(w.protocol, TunnelProtocol::Hbone as i32);
    assert_eq!(
        (w.canonical_name.as_str(), w.canonical_revision.as_str()),
        ("app", "v1")
    );
    let ips: Vec<_> = w
        .addresses
        .iter()
        .filter_map(|a| addr::from_bytes(a))
        .collect();
    assert_eq!(
        ips,
        [
            "10.244.0.5".parse::<IpAddr>().unwrap(),
            "fd00:244::5".parse().unwrap()
        ]
    );
    assert_eq!(
        addr::from_bytes(&w.node_address),
        Some("172.30.0.1".parse().unwrap())
    );
    assert_eq!(w.inbound_mode, InboundMode::Permissive as i32);

    // Opted out, or in a namespace outside the mesh: reachable, not meshed.
    for (ns, name) in [("demo", "out-0"), ("plain", "legacy-0")] {
        let w = workload(&view, ns, name);
        assert_eq!(w.protocol, TunnelProtocol::None as i32, "{name}");
        assert_eq!(w.service_account, "default");
    }
    // Only meshed pods of this node need certificates here.
    let ids: Vec<String> = view
        .local_identities()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(ids, ["spiffe://cluster.local/ns/demo/sa/app"]);
}

/// A pod on the host network is never captured (its namespace is the node's), so it
/// is no mesh workload either, even in an ambient namespace: peers reach it plainly.
#[test]
fn a_pod_on_the_host_network_is_outside_the_mesh() {
    let (_, view) = built(
        "---\napiVersion: v1\nkind: Pod\nmetadata: { name: node-exporter-0, namespace: demo, labels: { app: exporter } }\nspec: { nodeName: node-a, hostNetwork: true, serviceAccountName: exporter, containers: [{ name: main }] }\nstatus: { hostIP: 172.30.0.1, podIP: 172.30.0.1 }\n",
    );
    let w = workload(&view, "demo", "node-exporter-0");
    assert_eq!(w.protocol, TunnelProtocol::None as i32);
    assert!(
        !view
            .local_identities()
            .iter()
            .any(|id| id.to_string().ends_with("/sa/exporter")),
        "a pod outside the mesh needs no certificate"
    );
}

#[test]
fn services_list_their_endpoints_with_named_target_ports_resolved() {
    let (_, view) = built("");
    let Some(ResourceKind::Service(svc)) = get(&view, "service/demo/app") else {
        panic!("no service");
    };
    assert_eq!(svc.hostname, "app.demo.svc.cluster.local");
    assert_eq!(
        addr::from_bytes(&svc.vips[0]),
        Some("10.96.0.10".parse().unwrap())
    );
    let ports: Vec<(u32, u32)> = svc.ports.iter().map(|p| (p.port, p.target_port)).collect();
    assert_eq!(ports, [(80, 0), (9000, 9000)]);
    let eps: Vec<(&str, bool, Option<&u32>)> = svc
        .endpoints
        .iter()
        .map(|e| (e.workload.as_str(), e.ready, e.ports.get(&80)))
        .collect();
    assert_eq!(
        eps,
        [
            ("workload/demo/app-v1-0", true, Some(&8080)),
            ("workload/demo/app-v2-0", false, Some(&8080)),
        ]
    );
}

#[test]
fn l4_policies_translate_and_fail_closed_on_request_attributes() {
    let (_, view) = built(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: allow-front, namespace: demo }
spec:
  selector: { matchLabels: { app: app } }
  rules:
    - from: [{ source: { principals: ["cluster.local/ns/demo/sa/front", "*/sa/ops"], notNamespaces: [kube-system] } }]
      to: [{ operation: { ports: ["8080"] } }]
    - from: [{ source: { serviceAccounts: [demo/batch] } }]
      when:
        - { key: source.ip, values: [10.244.0.0/16] }
        - { key: source.serviceAccount, values: [demo/batch, jobs/cron], notValues: [jobs/rogue] }
    - to: [{ operation: { paths: ["/admin"] } }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: deny-get, namespace: demo }
spec:
  action: DENY
  rules: [{ from: [{ source: { namespaces: [plain] } }], to: [{ operation: { methods: [GET] } }] }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: audit, namespace: demo }
spec: { action: AUDIT, rules: [{}] }
"#,
    );
    let allow = authorization(&view, "demo", "allow-front");
    assert_eq!(
        (allow.action, allow.scope),
        (Action::Allow as i32, Scope::Workload as i32)
    );
    assert_eq!(
        allow.rules.len(),
        2,
        "the paths rule can never allow at L4: dropped"
    );
    assert!(allow.notes[0].contains("rules[2] dropped") && allow.notes[0].contains("paths"));
    let from = &allow.rules[0].clauses[0].matches[0];
    let kinds: Vec<_> = from
        .principals
        .iter()
        .map(|p| p.kind.clone().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            SKind::Exact("cluster.local/ns/demo/sa/front".into()),
            SKind::Suffix("/sa/ops".into())
        ]
    );
    assert_eq!(
        from.not_namespaces[0].kind,
        Some(SKind::Exact("kube-system".into()))
    );
    assert_eq!(
        allow.rules[0].clauses[1].matches[0].destination_ports,
        [8080]
    );
    let batch = &allow.rules[1];
    assert_eq!(
        batch.clauses[0].matches[0].principals[0].kind,
        Some(SKind::Suffix("/ns/demo/sa/batch".into()))
    );
    assert_eq!(batch.clauses[1].matches[0].source_ips[0].prefix_len, 16);
    // source.serviceAccount is the peer's identity: ztunnel checks it.
    let accounts = &batch.clauses[2].matches[0];
    let suffixes =
        |m: &[StringMatch]| -> Vec<SKind> { m.iter().map(|p| p.kind.clone().unwrap()).collect() };
    assert_eq!(
        suffixes(&accounts.principals),
        [
            SKind::Suffix("/ns/demo/sa/batch".into()),
            SKind::Suffix("/ns/jobs/sa/cron".into())
        ]
    );
    assert_eq!(
        suffixes(&accounts.not_principals),
        [SKind::Suffix("/ns/jobs/sa/rogue".into())]
    );

    let deny = authorization(&view, "demo", "deny-get");
    assert_eq!(
        (deny.action, deny.scope),
        (Action::Deny as i32, Scope::Namespace as i32)
    );
    assert_eq!(deny.rules.len(), 1, "a DENY rule is kept, wider");
    assert!(deny.notes[0].contains("methods"));
    let to = &deny.rules[0].clauses[1].matches[0];
    assert_eq!(
        to,
        &Match::default(),
        "the method condition is gone: any operation"
    );

    assert!(
        get(&view, "authorization/demo/audit").is_none(),
        "AUDIT changes no verdict"
    );
    // The selected workload lists both; the unselected one only the namespace-wide one.
    assert_eq!(
        workload(&view, "demo", "app-v1-0").authorization_policies,
        [
            "authorization/demo/allow-front",
            "authorization/demo/deny-get"
        ]
    );
    assert_eq!(
        workload(&view, "demo", "out-0").authorization_policies,
        ["authorization/demo/deny-get"]
    );
}

#[test]
fn mesh_wide_policies_and_peer_authentication_reach_every_namespace() {
    let (_, view) = built(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: mesh-deny, namespace: istio-system }
spec: { action: DENY, rules: [{ from: [{ source: { ipBlocks: [192.0.2.0/24] } }] }] }
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: istio-system }
spec: { mtls: { mode: STRICT } }
"#,
    );
    assert_eq!(
        authorization(&view, "istio-system", "mesh-deny").scope,
        Scope::Global as i32
    );
    for (ns, name) in [("demo", "app-v1-0"), ("plain", "legacy-0")] {
        let w = workload(&view, ns, name);
        assert_eq!(
            w.authorization_policies,
            ["authorization/istio-system/mesh-deny"]
        );
        assert_eq!(w.inbound_mode, InboundMode::Strict as i32);
    }
}

#[test]
fn a_change_recomputes_only_what_depends_on_it() {
    let policy = |rules: &str, selector: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {{ name: p, namespace: demo }}\nspec: {{ {selector} rules: {rules} }}\n"
        )
    };
    let (mut store, mut view) = built(&policy("[{}]", ""));

    // New rules, same selection: only the policy itself is sent.
    let v = version(&view);
    let keys = apply(
        &mut store,
        &policy("[{ to: [{ operation: { ports: [\"80\"] } }] }]", ""),
    );
    view.changed(&store, &keys);
    assert_eq!(delta_keys(&view, v), ["authorization/demo/p"]);

    // A selector: the workloads of the namespace are recomputed; only those
    // whose list changed are sent.
    let v = version(&view);
    let keys = apply(
        &mut store,
        &policy("[{}]", "selector: { matchLabels: { version: v2 } },"),
    );
    view.changed(&store, &keys);
    let mut sent = delta_keys(&view, v);
    sent.sort();
    assert_eq!(
        sent,
        [
            "authorization/demo/p",
            "workload/demo/app-v1-0",
            "workload/demo/out-0"
        ]
    );

    // One endpoint slice: one service.
    let v = version(&view);
    let keys = apply(
        &mut store,
        r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: app-1, namespace: demo, labels: { kubernetes.io/service-name: app } }
addressType: IPv4
endpoints: [{ addresses: [10.244.0.5] }]
"#,
    );
    view.changed(&store, &keys);
    assert_eq!(delta_keys(&view, v), ["service/demo/app"]);

    // A namespace leaving the mesh: its pods stop being meshed.
    let v = version(&view);
    let keys = apply(
        &mut store,
        "apiVersion: v1\nkind: Namespace\nmetadata: { name: demo }\n",
    );
    view.changed(&store, &keys);
    // The opted-out pod was not meshed before either: unchanged, not sent.
    assert_eq!(
        delta_keys(&view, v),
        ["workload/demo/app-v1-0", "workload/demo/app-v2-0"]
    );
    assert_eq!(
        workload(&view, "demo", "app-v1-0").protocol,
        TunnelProtocol::None as i32
    );
    assert!(view.local_identities().is_empty());

    // Deletions are removals.
    let v = version(&view);
    let keys = [
        delete(&mut store, Kind::Pod, "demo", "out-0"),
        delete(&mut store, Kind::Service, "demo", "app"),
        delete(&mut store, Kind::AuthorizationPolicy, "demo", "p"),
    ];
    view.changed(&store, &keys);
    let mut sent = delta_keys(&view, v);
    sent.sort();
    assert_eq!(
        sent,
        [
            "authorization/demo/p",
            "service/demo/app",
            "workload/demo/app-v2-0",
            "workload/demo/out-0"
        ]
    );
    assert!(get(&view, "workload/demo/out-0").is_none());
}

#[test]
fn cookies_and_certificates_are_published() {
    let (store, mut view) = built("");
    // Not enrolled yet: ztunnel gets no namespace to open connections in.
    assert_eq!(workload(&view, "demo", "app-v1-0").netns, "");
    let pod = ObjectKey {
        kind: Kind::Pod,
        namespace: Some("demo".into()),
        name: "app-v1-0".into(),
    };
    let netns = PodNetns {
        cookie: 4242,
        path: "/run/netns/t-app-v1-0".into(),
        addresses: Vec::new(),
    };
    view.set_namespaces(&store, BTreeMap::from([(pod, netns)]));
    let enrolled = workload(&view, "demo", "app-v1-0");
    assert_eq!(enrolled.netns_cookie, 4242);
    assert_eq!(enrolled.netns, "/run/netns/t-app-v1-0");

    let id = Identity::new("cluster.local", "demo", "app");
    let cert = Arc::new(Certificate {
        identity: id.to_string(),
        chain_pem: vec!["leaf".into()],
        ..Default::default()
    });
    view.set_certificates(&BTreeMap::from([(id.clone(), cert)]), &["root".into()]);
    assert!(get(&view, &key::certificate(&id)).is_some());
    assert!(get(&view, key::TRUST_BUNDLE).is_some());
    view.set_certificates(&BTreeMap::new(), &["root".into()]);
    assert!(get(&view, &key::certificate(&id)).is_none());
}

fn service(view: &View, ns: &str, name: &str) -> warren_api::config::Service {
    match get(view, &key::service(ns, name)) {
        Some(ResourceKind::Service(s)) => s,
        other => panic!("no service {ns}/{name}: {other:?}"),
    }
}

const WAYPOINT_GATEWAY: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: waypoint, namespace: demo }
spec:
  gatewayClassName: warren-waypoint
  listeners: [{ name: mesh, port: 15008, protocol: HBONE }]
"#;

const WAYPOINT_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-0
  namespace: demo
  labels: { gateway.networking.k8s.io/gateway-name: waypoint, warren.io/dataplane-mode: none }
spec: { nodeName: node-a, serviceAccountName: waypoint, containers: [{ name: main }] }
status: { hostIP: 172.30.0.1, podIP: 10.244.0.9 }
"#;

#[test]
fn a_waypoint_gateway_claims_its_namespaces_services_and_fails_closed_without_a_pod() {
    let (mut store, mut view) = built("");
    assert_eq!(service(&view, "demo", "app").waypoint, None);

    // The Gateway alone: the traffic is claimed, with nowhere to go.
    let keys = apply(&mut store, WAYPOINT_GATEWAY);
    view.changed(&store, &keys);
    let claimed = service(&view, "demo", "app").waypoint.expect("claimed");
    assert!(claimed.address.is_empty(), "{claimed:?}");

    // Its pod comes up: the address and identity of that pod, and the pod,
    // though outside the capture, gets a certificate on its node.
    let keys = apply(&mut store, WAYPOINT_POD);
    view.changed(&store, &keys);
    let waypoint = service(&view, "demo", "app").waypoint.expect("waypoint");
    assert_eq!(
        warren_api::addr::from_bytes(&waypoint.address),
        Some("10.244.0.9".parse().unwrap())
    );
    assert_eq!(
        waypoint.identity,
        "spiffe://cluster.local/ns/demo/sa/waypoint"
    );
    assert_eq!(waypoint.workload, "workload/demo/waypoint-0");
    let w = workload(&view, "demo", "waypoint-0");
    assert!(w.is_waypoint);
    assert_eq!(w.protocol, TunnelProtocol::None as i32);
    assert!(
        view.local_identities()
            .contains(&Identity::new("cluster.local", "demo", "waypoint"))
    );

    // A Service may opt out.
    let keys = apply(
        &mut store,
        "apiVersion: v1\nkind: Service\nmetadata: { name: app, namespace: demo, labels: { istio.io/use-waypoint: none } }\nspec: { clusterIP: 10.96.0.10, ports: [{ name: http, port: 80 }] }\n",
    );
    view.changed(&store, &keys);
    assert_eq!(service(&view, "demo", "app").waypoint, None);

    // The Gateway goes: nothing is claimed any more.
    let key = delete(&mut store, Kind::Gateway, "demo", "waypoint");
    view.changed(&store, &[key]);
    assert_eq!(service(&view, "demo", "app").waypoint, None);
}

/// `gateway` and its running pod at `ip`, as YAML.
fn named_waypoint(gateway: Gateway, ip: &str) -> String {
    let ns = gateway.metadata.namespace.clone().unwrap_or_default();
    let name = gateway.metadata.name.clone().unwrap_or_default();
    let gateway = gateway.to_yaml().expect("a Gateway encodes as YAML");
    format!(
        "{gateway}---\napiVersion: v1\nkind: Pod\n\
         metadata: {{ name: {name}-0, namespace: {ns}, labels: {{ gateway.networking.k8s.io/gateway-name: {name}, warren.io/dataplane-mode: none }} }}\n\
         spec: {{ nodeName: node-a, serviceAccountName: {name}, containers: [{{ name: main }}] }}\n\
         status: {{ hostIP: 172.30.0.1, podIP: {ip} }}\n"
    )
}

fn app_service(labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{ name: app, namespace: demo, labels: {{ {labels} }} }}\n\
         spec: {{ clusterIP: 10.96.0.10, ports: [{{ name: http, port: 80 }}] }}\n"
    )
}

/// The address of the waypoint `demo/app` goes through: `Some(None)` when
/// one is claimed but cannot serve.
fn app_waypoint(view: &View) -> Option<Option<std::net::IpAddr>> {
    service(view, "demo", "app")
        .waypoint
        .map(|w| warren_api::addr::from_bytes(&w.address))
}

#[test]
fn a_service_or_namespace_chooses_its_waypoint_by_name() {
    let ip = |s: &str| Some(Some(s.parse::<std::net::IpAddr>().unwrap()));
    let (mut store, mut view) = built("");
    let keys = apply(
        &mut store,
        &format!(
            "{}---\n{}",
            named_waypoint(Gateway::waypoint("demo", "a-general"), "10.244.0.20"),
            named_waypoint(Gateway::waypoint("demo", "special"), "10.244.0.21")
        ),
    );
    view.changed(&store, &keys);
    assert_eq!(app_waypoint(&view), ip("10.244.0.20"), "the first by name");

    let keys = apply(&mut store, &app_service("istio.io/use-waypoint: special"));
    view.changed(&store, &keys);
    assert_eq!(
        app_waypoint(&view),
        ip("10.244.0.21"),
        "the Service's choice"
    );

    // A name that is no waypoint: claimed, and refused rather than bypassed.
    let keys = apply(&mut store, &app_service("istio.io/use-waypoint: nosuch"));
    view.changed(&store, &keys);
    assert_eq!(app_waypoint(&view), Some(None));

    // The namespace's label, when the Service has none.
    let keys = apply(&mut store, &app_service(""));
    view.changed(&store, &keys);
    let keys = apply(
        &mut store,
        "apiVersion: v1\nkind: Namespace\nmetadata: { name: demo, labels: { warren.io/dataplane-mode: ambient, istio.io/use-waypoint: special } }\n",
    );
    view.changed(&store, &keys);
    assert_eq!(
        app_waypoint(&view),
        ip("10.244.0.21"),
        "the namespace's choice"
    );

    // The Service's label wins over its namespace's.
    let keys = apply(&mut store, &app_service("istio.io/use-waypoint: none"));
    view.changed(&store, &keys);
    assert_eq!(app_waypoint(&view), None);
}

#[test]
fn a_waypoint_for_workloads_only_takes_no_service_traffic() {
    let ip = |s: &str| Some(Some(s.parse::<std::net::IpAddr>().unwrap()));
    let (mut store, mut view) = built("");
    // First by name, but for workloads only: not the namespace's choice.
    let mut workloads_only = Gateway::waypoint("demo", "a-workloads");
    workloads_only.metadata.labels =
        Some([(WAYPOINT_FOR_LABEL.to_owned(), "workload".to_owned())].into());
    let workloads_only = named_waypoint(workloads_only, "10.244.0.22");
    let keys = apply(
        &mut store,
        &format!(
            "{workloads_only}---\n{}",
            named_waypoint(Gateway::waypoint("demo", "b-services"), "10.244.0.23")
        ),
    );
    view.changed(&store, &keys);
    assert_eq!(app_waypoint(&view), ip("10.244.0.23"));
    // Named anyway: it takes no Service traffic, so that goes direct (as
    // in Istio, where such a binding is not accepted).
    let keys = apply(
        &mut store,
        &app_service("istio.io/use-waypoint: a-workloads"),
    );
    view.changed(&store, &keys);
    assert_eq!(app_waypoint(&view), None);
}

/// A waypoint Gateway of `demo` for `waypoint_for` traffic, running at `ip`.
fn waypoint_for(name: &str, waypoint_for: &str, ip: &str) -> String {
    named_waypoint(Gateway::waypoint("demo", name).taking(waypoint_for), ip)
}

/// The address of the waypoint traffic to pod `demo/name` itself goes
/// through: `Some(None)` when one is claimed but cannot serve.
fn pod_waypoint(view: &View, name: &str) -> Option<Option<std::net::IpAddr>> {
    workload(view, "demo", name)
        .waypoint
        .map(|w| warren_api::addr::from_bytes(&w.address))
}

/// Namespace `demo` in the mesh with `labels` (YAML, may be empty).
fn demo_namespace(labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{ name: demo, labels: {{ warren.io/dataplane-mode: ambient{labels} }} }}\n"
    )
}

#[test]
fn a_pod_goes_through_the_waypoint_for_workloads_its_labels_name() {
    let ip = |s: &str| Some(Some(s.parse::<std::net::IpAddr>().unwrap()));
    let (mut store, mut view) = built("");
    let changed = |store: &mut Store, view: &mut View, yaml: &str| {
        let keys = apply(store, yaml);
        view.changed(store, &keys);
    };
    changed(
        &mut store,
        &mut view,
        &format!(
            "{}---\n{}",
            waypoint_for("b-services", "service", "10.244.0.23"),
            waypoint_for("a-workloads", "workload", "10.244.0.22")
        ),
    );
    // Unlabelled, as in Istio: a Gateway for pods reroutes nothing until
    // they ask for it; the Services keep theirs.
    assert_eq!(pod_waypoint(&view, "app-v1-0"), None);
    assert_eq!(app_waypoint(&view), ip("10.244.0.23"));

    // The namespace names the waypoint for pods: every pod of the mesh
    // there takes it. It takes no Service traffic, so the Services go
    // direct (the label's choice, not the namespace's default).
    changed(
        &mut store,
        &mut view,
        &demo_namespace(", istio.io/use-waypoint: a-workloads"),
    );
    assert_eq!(pod_waypoint(&view, "app-v1-0"), ip("10.244.0.22"));
    assert_eq!(pod_waypoint(&view, "app-v2-0"), ip("10.244.0.22"));
    let via = workload(&view, "demo", "app-v1-0").waypoint.unwrap();
    assert_eq!(
        via.identity,
        "spiffe://cluster.local/ns/demo/sa/a-workloads"
    );
    assert_eq!(via.workload, "workload/demo/a-workloads-0");
    assert_eq!(app_waypoint(&view), None);
    // Never for a pod outside the mesh, nor a waypoint's own pod.
    assert_eq!(workload(&view, "demo", "out-0").waypoint, None);
    assert_eq!(workload(&view, "demo", "a-workloads-0").waypoint, None);

    // The namespace names the Services' waypoint: pods go direct.
    changed(
        &mut store,
        &mut view,
        &demo_namespace(", istio.io/use-waypoint: b-services"),
    );
    assert_eq!(pod_waypoint(&view, "app-v1-0"), None);
    assert_eq!(app_waypoint(&view), ip("10.244.0.23"));

    // A pod's own label wins over its namespace's.
    let pod = |labels: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{ name: app-v2-0, namespace: demo, labels: {{ app: app, version: v2{labels} }} }}\n\
             spec: {{ nodeName: node-b, serviceAccountName: app, containers: [{{ name: main }}] }}\n\
             status: {{ hostIP: 172.30.0.2, podIP: 10.244.1.5 }}\n"
        )
    };
    changed(
        &mut store,
        &mut view,
        &pod(", istio.io/use-waypoint: a-workloads"),
    );
    assert_eq!(pod_waypoint(&view, "app-v2-0"), ip("10.244.0.22"));
    assert_eq!(pod_waypoint(&view, "app-v1-0"), None);

    // One for all traffic named by the namespace takes both.
    changed(
        &mut store,
        &mut view,
        &format!(
            "{}---\n{}",
            waypoint_for("c-all", "all", "10.244.0.24"),
            demo_namespace(", istio.io/use-waypoint: c-all")
        ),
    );
    assert_eq!(pod_waypoint(&view, "app-v1-0"), ip("10.244.0.24"));
    assert_eq!(app_waypoint(&view), ip("10.244.0.24"));
    assert_eq!(pod_waypoint(&view, "app-v2-0"), ip("10.244.0.22"));

    // Its pod goes: the traffic is claimed with nowhere to go (refused).
    let key = delete(&mut store, Kind::Pod, "demo", "c-all-0");
    view.changed(&store, &[key]);
    assert_eq!(pod_waypoint(&view, "app-v1-0"), Some(None));
    assert_eq!(app_waypoint(&view), Some(None));

    // A name that is no Gateway fails closed for pods too: a deleted or
    // refused waypoint must not let traffic around its policy.
    changed(
        &mut store,
        &mut view,
        &demo_namespace(", istio.io/use-waypoint: nosuch"),
    );
    assert_eq!(pod_waypoint(&view, "app-v1-0"), Some(None));
    assert_eq!(app_waypoint(&view), Some(None));
    let key = delete(&mut store, Kind::Gateway, "demo", "a-workloads");
    view.changed(&store, &[key]);
    assert_eq!(
        pod_waypoint(&view, "app-v2-0"),
        Some(None),
        "its own, deleted"
    );
}

#[test]
fn a_pod_follows_a_waypoint_it_names_in_another_namespace() {
    let ip = |s: &str| Some(Some(s.parse::<std::net::IpAddr>().unwrap()));
    let (mut store, mut view) =
        built("apiVersion: v1\nkind: Namespace\nmetadata: { name: infra }\n");
    let keys = apply(
        &mut store,
        "apiVersion: v1\nkind: Pod\nmetadata: { name: app-v1-0, namespace: demo, labels: { app: app, istio.io/use-waypoint: shared, istio.io/use-waypoint-namespace: infra } }\n\
         spec: { nodeName: node-a, serviceAccountName: app, containers: [{ name: main }] }\n\
         status: { hostIP: 172.30.0.1, podIP: 10.244.0.5 }\n",
    );
    view.changed(&store, &keys);
    assert_eq!(
        pod_waypoint(&view, "app-v1-0"),
        Some(None),
        "no such waypoint yet"
    );
    let keys = apply(
        &mut store,
        &demo_namespace(", istio.io/use-waypoint: shared, istio.io/use-waypoint-namespace: infra"),
    );
    view.changed(&store, &keys);
    assert_eq!(
        pod_waypoint(&view, "app-v2-0"),
        Some(None),
        "by its namespace"
    );

    // Created in infra, admitting every namespace: a change there reaches
    // the pods in demo, by their own label and by their namespace's.
    let shared = |ip: &str| {
        let gateway = Gateway::waypoint("infra", "shared")
            .admitting(RouteNamespaces {
                from: Some("All".into()),
                selector: None,
            })
            .taking("all");
        named_waypoint(gateway, ip)
    };
    let keys = apply(&mut store, &shared("10.244.0.31"));
    view.changed(&store, &keys);
    assert_eq!(pod_waypoint(&view, "app-v1-0"), ip("10.244.0.31"));
    assert_eq!(pod_waypoint(&view, "app-v2-0"), ip("10.244.0.31"));
    // Its pod moves: both follow.
    let keys = apply(&mut store, &shared("10.244.0.32"));
    view.changed(&store, &keys);
    assert_eq!(pod_waypoint(&view, "app-v1-0"), ip("10.244.0.32"));
    assert_eq!(pod_waypoint(&view, "app-v2-0"), ip("10.244.0.32"));
}

#[test]
fn a_waypoint_in_another_namespace_serves_only_whom_its_listeners_admit() {
    let shared = Some(Some("10.244.0.30".parse::<std::net::IpAddr>().unwrap()));
    let (mut store, mut view) =
        built("apiVersion: v1\nkind: Namespace\nmetadata: { name: infra }\n");
    let keys = apply(
        &mut store,
        &app_service("istio.io/use-waypoint: shared, istio.io/use-waypoint-namespace: infra"),
    );
    view.changed(&store, &keys);
    assert_eq!(app_waypoint(&view), Some(None), "no such waypoint yet");

    // Same namespace only (the default): still refused.
    let keys = apply(
        &mut store,
        &named_waypoint(Gateway::waypoint("infra", "shared"), "10.244.0.30"),
    );
    view.changed(&store, &keys);
    assert_eq!(app_waypoint(&view), Some(None), "not admitted from demo");

    // The Gateway admits namespaces labelled as demo is: a change in
    // infra reaches the Service in demo.
    let keys = apply(
        &mut store,
        &named_waypoint(
            Gateway::waypoint("infra", "shared").admitting(RouteNamespaces {
                from: Some("Selector".into()),
                selector: Some(NamespaceSelector {
                    match_labels: [("warren.io/dataplane-mode".to_owned(), "ambient".to_owned())]
                        .into(),
                    match_expressions: Vec::new(),
                }),
            }),
            "10.244.0.30",
        ),
    );
    view.changed(&store, &keys);
    assert_eq!(app_waypoint(&view), shared);
    let waypoint = service(&view, "demo", "app").waypoint.expect("waypoint");
    assert_eq!(
        waypoint.identity,
        "spiffe://cluster.local/ns/infra/sa/shared"
    );

    // Its pod goes: claimed, refused.
    let key = delete(&mut store, Kind::Pod, "infra", "shared-0");
    view.changed(&store, &[key]);
    assert_eq!(app_waypoint(&view), Some(None));
}

#[test]
fn a_services_gateway_routes_reach_waypoints_as_one_virtual_service() {
    let (mut store, mut view) = built(WAYPOINT_GATEWAY);
    let keys = apply(
        &mut store,
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: canary, namespace: demo }
spec:
  parentRefs: [{ group: "", kind: Service, name: app, port: 80 }]
  rules:
  - backendRefs:
    - { name: app-v1, port: 80, weight: 9 }
    - { name: app-v2, port: 80, weight: 1 }
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: jason, namespace: demo }
spec:
  parentRefs: [{ group: "", kind: Service, name: app }]
  rules:
  - matches: [{ headers: [{ name: end-user, value: jason }] }]
    backendRefs: [{ name: app-v2, port: 80 }]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: ingress, namespace: demo }
spec:
  parentRefs: [{ name: public }]
  rules:
  - backendRefs: [{ name: app, port: 80 }]
"#,
    );
    view.changed(&store, &keys);
    let routes = key::service_routes("demo", "app");
    let Some(ResourceKind::VirtualService(vs)) = get(&view, &routes) else {
        panic!("no VirtualService for the routes of app");
    };
    assert_eq!(vs.name, "app-routes");
    assert_eq!(vs.hosts, ["app.demo.svc.cluster.local"]);
    let spec: serde_json::Value = serde_json::from_str(&vs.spec_json).unwrap();
    // Both routes, the one with a header match first.
    assert_eq!(spec["http"][0]["name"], "jason.rules[0].matches[0]");
    assert_eq!(
        spec["http"][0]["route"][0]["destination"]["host"],
        "app-v2.demo.svc.cluster.local"
    );
    assert_eq!(spec["http"][1]["route"][0]["weight"], 90);
    // The ingress route makes nothing; nothing of this goes to ztunnels.
    let keys_for = |audience: &Audience| keys_for(&view, audience);
    let all = keys_for(&Audience::All);
    assert_eq!(
        all.iter()
            .filter(|k| k.starts_with(key::SERVICE_ROUTES_PREFIX))
            .count(),
        1,
        "{all:?}"
    );
    assert!(!keys_for(&Audience::Ztunnel).contains(&routes));
    assert!(
        keys_for(&Audience::Waypoint {
            namespace: "demo".into()
        })
        .contains(&routes)
    );

    // A GRPCRoute for the same Service takes precedence over its
    // HTTPRoutes (the Gateway API's rule).
    let grpc = apply(
        &mut store,
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: { name: calls, namespace: demo }
spec:
  parentRefs: [{ group: "", kind: Service, name: app }]
  rules:
  - backendRefs: [{ name: app-v1, port: 80 }]
"#,
    );
    view.changed(&store, &grpc);
    let spec =
        virtual_service_spec(&view, &routes).expect("no VirtualService for the routes of app");
    let names: Vec<&str> = spec["http"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["grpcroute:calls.rules[0].matches[0]"]);

    // TCP and TLS routes make a VirtualService of their own, of `tcp` and
    // `tls` rules; the HTTP one stays as it was.
    let l4 = apply(
        &mut store,
        r#"
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: { name: db, namespace: demo }
spec:
  parentRefs: [{ group: "", kind: Service, name: app, port: 5432 }]
  rules:
  - backendRefs:
    - { name: app-v1, port: 5432, weight: 3 }
    - { name: app-v2, port: 5432, weight: 1 }
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: { name: secure, namespace: demo }
spec:
  parentRefs: [{ group: "", kind: Service, name: app }]
  hostnames: ["*.example.com"]
  rules:
  - backendRefs: [{ name: app-v2, port: 443 }]
"#,
    );
    view.changed(&store, &l4);
    let l4_routes = key::service_l4_routes("demo", "app");
    let Some(ResourceKind::VirtualService(vs)) = get(&view, &l4_routes) else {
        panic!("no VirtualService for the TCP and TLS routes of app");
    };
    assert_eq!(vs.name, "app-routes-l4");
    let spec: serde_json::Value = serde_json::from_str(&vs.spec_json).unwrap();
    assert!(spec.get("http").is_none(), "{spec}");
    assert_eq!(spec["tcp"][0]["match"][0]["port"], 5432, "{spec}");
    assert_eq!(spec["tcp"][0]["route"][0]["weight"], 75, "{spec}");
    assert_eq!(
        spec["tcp"][0]["route"][1]["destination"]["host"],
        "app-v2.demo.svc.cluster.local"
    );
    assert_eq!(
        spec["tls"][0]["match"][0]["sniHosts"],
        serde_json::json!(["*.example.com"])
    );

    assert!(matches!(
        get(&view, &routes),
        Some(ResourceKind::VirtualService(_))
    ));

    // Without routes each VirtualService is withdrawn.
    let gone = [
        delete(&mut store, Kind::HttpRoute, "demo", "canary"),
        delete(&mut store, Kind::HttpRoute, "demo", "jason"),
        delete(&mut store, Kind::GrpcRoute, "demo", "calls"),
        delete(&mut store, Kind::TcpRoute, "demo", "db"),
    ];
    view.changed(&store, &gone);
    assert!(get(&view, &routes).is_none());
    let spec =
        virtual_service_spec(&view, &l4_routes).expect("the TLSRoute alone still routes app");
    assert!(spec.get("tcp").is_none(), "{spec}");
    let last = delete(&mut store, Kind::TlsRoute, "demo", "secure");
    view.changed(&store, &[last]);
    assert!(get(&view, &l4_routes).is_none());
}

#[test]
fn a_route_names_a_services_port_by_its_name() {
    let (mut store, mut view) = built(WAYPOINT_GATEWAY);
    let keys = apply(
        &mut store,
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: admin, namespace: demo }
spec:
  parentRefs: [{ group: "", kind: Service, name: app, sectionName: admin }]
  rules:
  - backendRefs: [{ name: app, port: 9000 }]
"#,
    );
    view.changed(&store, &keys);
    let spec = virtual_service_spec(&view, &key::service_routes("demo", "app"))
        .expect("no VirtualService for the routes of app");
    assert_eq!(spec["http"][0]["match"][0]["port"], 9000, "{spec}");

    // A name the Service has no port of: the route attaches to nothing.
    let keys = apply(
        &mut store,
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: admin, namespace: demo }
spec:
  parentRefs: [{ group: "", kind: Service, name: app, sectionName: metrics }]
  rules:
  - backendRefs: [{ name: app, port: 9000 }]
"#,
    );
    view.changed(&store, &keys);
    assert!(get(&view, &key::service_routes("demo", "app")).is_none());

    // The Service gains a port of that name: the route attaches, with no
    // change to the route.
    let keys = apply(
        &mut store,
        r#"
apiVersion: v1
kind: Service
metadata: { name: app, namespace: demo }
spec:
  clusterIP: 10.96.0.10
  ports: [{ name: http, port: 80, targetPort: web }, { name: metrics, port: 9100, targetPort: 9100 }]
"#,
    );
    view.changed(&store, &keys);
    let spec = virtual_service_spec(&view, &key::service_routes("demo", "app"))
        .expect("the route attaches once the port is there");
    assert_eq!(spec["http"][0]["match"][0]["port"], 9100, "{spec}");
}

#[test]
fn a_reference_grant_lets_routes_of_another_namespace_in_and_out() {
    let (mut store, mut view) = built(WAYPOINT_GATEWAY);
    let keys = apply(
        &mut store,
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: across, namespace: demo }
spec:
  parentRefs: [{ group: "", kind: Service, name: app }]
  rules:
  - backendRefs: [{ name: ratings, namespace: data, port: 80 }]
"#,
    );
    view.changed(&store, &keys);
    let routes = key::service_routes("demo", "app");
    let rule = |view: &View| -> serde_json::Value {
        let spec =
            virtual_service_spec(view, &routes).expect("no VirtualService for the routes of app");
        spec["http"][0].clone()
    };
    // No grant: answered 500, nothing sent to `data`.
    assert_eq!(rule(&view)["directResponse"]["status"], 500);

    // A grant in `data`, changed on its own, reaches the route of `demo`.
    const GRANT: &str = r#"
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: { name: from-demo, namespace: data }
spec:
  from: [{ group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: demo }]
  to: [{ group: "", kind: Service }]
"#;
    let grant = apply(&mut store, GRANT);
    view.changed(&store, &grant);
    let granted = rule(&view);
    assert!(granted.get("directResponse").is_none(), "{granted}");
    assert_eq!(
        granted["route"][0]["destination"]["host"],
        "ratings.data.svc.cluster.local"
    );

    // Withdrawn: shut out again.
    let gone = delete(&mut store, Kind::ReferenceGrant, "data", "from-demo");
    view.changed(&store, &[gone]);
    assert_eq!(rule(&view)["directResponse"]["status"], 500);

    // Back, then an update of it that is refused (meant to narrow it,
    // say): it grants nothing rather than its last good version.
    let grant = apply(&mut store, GRANT);
    view.changed(&store, &grant);
    assert!(rule(&view).get("directResponse").is_none());
    let key = grant[0].clone();
    store.apply(SourceEvent::Rejected {
        key: Some(key.clone()),
        error: crate::model::ConfigError {
            kind: "ReferenceGrant".into(),
            object: "data/from-demo".into(),
            origin: None,
            errors: vec![crate::model::FieldError::new(
                "spec.to[0].nme",
                "unknown field",
            )],
        },
    });
    view.changed(&store, std::slice::from_ref(&key));
    assert_eq!(rule(&view)["directResponse"]["status"], 500);
}

#[test]
fn routing_reaches_waypoints_with_hosts_qualified_and_not_ztunnels() {
    let (mut store, mut view) = built(WAYPOINT_GATEWAY);
    let keys = apply(
        &mut store,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: app, namespace: demo }
spec:
  hosts: [app]
  http:
    - route:
        - { destination: { host: app, subset: v1 }, weight: 80 }
        - { destination: { host: app.other, subset: v2 }, weight: 20 }
      mirror: { host: shadow.demo.svc.cluster.local }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: app, namespace: demo }
spec:
  host: app
  subsets: [{ name: v1, labels: { version: v1 } }, { name: v2, labels: { version: v2 } }]
"#,
    );
    view.changed(&store, &keys);
    let Some(ResourceKind::VirtualService(vs)) = get(&view, &key::virtual_service("demo", "app"))
    else {
        panic!("no VirtualService published");
    };
    assert_eq!(vs.hosts, ["app.demo.svc.cluster.local"]);
    let spec: serde_json::Value = serde_json::from_str(&vs.spec_json).unwrap();
    assert_eq!(
        spec["http"][0]["route"][1]["destination"]["host"],
        "app.other.svc.cluster.local"
    );
    assert_eq!(
        spec["http"][0]["mirror"]["host"],
        "shadow.demo.svc.cluster.local"
    );
    let Some(ResourceKind::DestinationRule(dr)) = get(&view, &key::destination_rule("demo", "app"))
    else {
        panic!("no DestinationRule published");
    };
    assert_eq!(dr.host, "app.demo.svc.cluster.local");

    // Who receives what.
    let keys_for = |audience: &Audience| keys_for(&view, audience);
    let ztunnel = keys_for(&Audience::Ztunnel);
    assert!(!ztunnel.iter().any(|k| k.starts_with("virtualservice/")));
    assert!(ztunnel.contains(&key::service("demo", "app")));
    let waypoint = keys_for(&Audience::Waypoint {
        namespace: "demo".into(),
    });
    assert!(waypoint.contains(&key::virtual_service("demo", "app")));
    assert!(waypoint.contains(&key::destination_rule("demo", "app")));

    // A certificate reaches only the waypoint of its namespace.
    let cert = |ns: &str| {
        (
            Identity::new("cluster.local", ns, "sa"),
            std::sync::Arc::new(Certificate {
                identity: Identity::new("cluster.local", ns, "sa").to_string(),
                ..Default::default()
            }),
        )
    };
    view.set_certificates(&[cert("demo"), cert("shop")].into_iter().collect(), &[]);
    let published = view.publisher().lock();
    let waypoint = match published.pending(
        None,
        &Audience::Waypoint {
            namespace: "demo".into(),
        },
    ) {
        Pending::Update(u) => u.upserts.into_iter().map(|r| r.key).collect::<Vec<_>>(),
        Pending::UpToDate => Vec::new(),
    };
    assert!(waypoint.contains(&key::certificate(&Identity::new(
        "cluster.local",
        "demo",
        "sa"
    ))));
    assert!(!waypoint.contains(&key::certificate(&Identity::new(
        "cluster.local",
        "shop",
        "sa"
    ))));
}

const ATTACHED_POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: on-waypoint, namespace: demo }
spec:
  targetRefs: [{ group: gateway.networking.k8s.io, kind: Gateway, name: waypoint }]
  rules: [{ to: [{ operation: { methods: [GET], paths: ["/public*"] } }] }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: on-service, namespace: demo }
spec:
  action: DENY
  targetRef: { kind: Service, name: app }
  rules: [{ when: [{ key: "request.headers[x-block]", values: ["yes"] }] }]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: ingress, namespace: demo }
spec:
  gatewayClassName: istio
  listeners: [{ name: http, port: 80, protocol: HTTP }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: on-ingress, namespace: demo }
spec:
  targetRefs: [{ group: gateway.networking.k8s.io, kind: Gateway, name: ingress }]
  rules: [{}]
"#;

fn l7_policy(view: &View, name: &str) -> Option<warren_api::config::L7Authorization> {
    match get(view, &key::l7_authorization("demo", name)) {
        Some(ResourceKind::L7Authorization(p)) => Some(p),
        _ => None,
    }
}

const JWT_RULES: &str = r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: { name: on-waypoint, namespace: demo }
spec:
  targetRefs: [{ group: gateway.networking.k8s.io, kind: Gateway, name: waypoint }]
  jwtRules: [{ issuer: "https://idp.example", jwksUri: "https://idp.example/keys" }]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: { name: on-service, namespace: demo }
spec:
  targetRef: { kind: Service, name: app }
  jwtRules: [{ issuer: "https://idp.example" }]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: { name: by-selector, namespace: demo }
spec:
  selector: { matchLabels: { app: app } }
  jwtRules: [{ issuer: "https://idp.example" }]
"#;

fn jwt_rules(view: &View, name: &str) -> Option<warren_api::config::L7Authentication> {
    match get(view, &key::l7_authentication("demo", name)) {
        Some(ResourceKind::L7Authentication(p)) => Some(p),
        _ => None,
    }
}

#[test]
fn request_authentications_reach_waypoints_as_attached() {
    let (mut store, mut view) = built(JWT_RULES);
    // No waypoint Gateway yet.
    assert_eq!(jwt_rules(&view, "on-waypoint"), None);
    let on_service = jwt_rules(&view, "on-service").expect("Service target published");
    assert!(on_service.gateways.is_empty());
    assert_eq!(on_service.services, ["app"]);
    let spec: serde_json::Value = serde_json::from_str(&on_service.spec_json).unwrap();
    assert_eq!(spec["jwtRules"][0]["issuer"], "https://idp.example");
    // A selector one: no proxy in ambient mode verifies tokens for a pod.
    assert_eq!(jwt_rules(&view, "by-selector"), None);

    let keys = apply(&mut store, WAYPOINT_GATEWAY);
    view.changed(&store, &keys);
    let on_waypoint = jwt_rules(&view, "on-waypoint").expect("published");
    assert_eq!(on_waypoint.gateways, ["waypoint"]);

    let published = view.publisher().lock();
    let jwt = |audience: &Audience| match published.pending(None, audience) {
        Pending::Update(u) => u
            .upserts
            .iter()
            .filter(|r| r.key.starts_with("l7authentication/"))
            .count(),
        Pending::UpToDate => 0,
    };
    assert_eq!(jwt(&Audience::Ztunnel), 0);
    assert_eq!(
        jwt(&Audience::Waypoint {
            namespace: "demo".into()
        }),
        2
    );
    drop(published);

    // Gone from the store: withdrawn.
    let gone = delete(
        &mut store,
        Kind::RequestAuthentication,
        "demo",
        "on-service",
    );
    view.changed(&store, &[gone]);
    assert_eq!(jwt_rules(&view, "on-service"), None);
}

#[test]
fn attached_policies_reach_their_namespace_waypoint_only() {
    let (mut store, mut view) = built(ATTACHED_POLICIES);
    // No waypoint Gateway yet: nothing names one.
    assert_eq!(l7_policy(&view, "on-waypoint"), None);
    let on_service = l7_policy(&view, "on-service").expect("Service target published");
    assert!(on_service.gateways.is_empty() && !on_service.waypoint);
    assert_eq!(on_service.services, ["app"]);
    let spec: serde_json::Value = serde_json::from_str(&on_service.spec_json).unwrap();
    assert_eq!(spec["action"], "DENY");
    // An ingress Gateway is some other proxy's business.
    assert_eq!(l7_policy(&view, "on-ingress"), None);
    // ztunnel enforces none of them.
    for name in ["on-waypoint", "on-service", "on-ingress"] {
        assert_eq!(
            get(&view, &key::authorization("demo", name)),
            None,
            "{name}"
        );
    }

    // The waypoint Gateway appears: the policy naming it now binds it.
    let keys = apply(&mut store, WAYPOINT_GATEWAY);
    view.changed(&store, &keys);
    let on_waypoint = l7_policy(&view, "on-waypoint").expect("published");
    assert_eq!(on_waypoint.gateways, ["waypoint"]);
    assert!(on_waypoint.waypoint, "for waypoints older than `gateways`");
    assert!(on_waypoint.services.is_empty());

    let keys_for = |audience: &Audience| keys_for(&view, audience);
    let l7 = |keys: &[String]| {
        keys.iter()
            .filter(|k| k.starts_with("l7authorization/"))
            .count()
    };
    assert_eq!(l7(&keys_for(&Audience::Ztunnel)), 0);
    assert_eq!(
        l7(&keys_for(&Audience::Waypoint {
            namespace: "demo".into()
        })),
        2
    );
    // Another namespace's waypoint too: it may serve demo's Services (and
    // tells for itself which Gateway a policy names).
    assert_eq!(
        l7(&keys_for(&Audience::Waypoint {
            namespace: "shop".into()
        })),
        2
    );

    // Deleted: withdrawn.
    let key = delete(&mut store, Kind::AuthorizationPolicy, "demo", "on-service");
    view.changed(&store, &[key]);
    assert_eq!(l7_policy(&view, "on-service"), None);
    // The Gateway goes: the policy naming it no longer binds anything.
    let key = delete(&mut store, Kind::Gateway, "demo", "waypoint");
    view.changed(&store, &[key]);
    assert_eq!(l7_policy(&view, "on-waypoint"), None);
}

#[test]
fn a_workload_carries_its_nodes_locality_or_its_own_label() {
    let (mut store, mut view) = built(
        r#"
apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels: { topology.kubernetes.io/region: eu-west1, topology.kubernetes.io/zone: eu-west1-b }
"#,
    );
    assert_eq!(
        workload(&view, "demo", "app-v1-0").locality,
        "eu-west1/eu-west1-b"
    );
    // No Node object: no locality.
    assert_eq!(workload(&view, "demo", "app-v2-0").locality, "");
    // The node gains a subzone: its pods follow.
    let keys = apply(
        &mut store,
        r#"
apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels:
    topology.kubernetes.io/region: eu-west1
    topology.kubernetes.io/zone: eu-west1-b
    topology.istio.io/subzone: rack3
"#,
    );
    view.changed(&store, &keys);
    assert_eq!(
        workload(&view, "demo", "app-v1-0").locality,
        "eu-west1/eu-west1-b/rack3"
    );
    // A pod's istio-locality label wins over its node's.
    let keys = apply(
        &mut store,
        r#"
apiVersion: v1
kind: Pod
metadata: { name: app-v2-0, namespace: demo, labels: { app: app, version: v2, istio-locality: us.us-1a } }
spec: { nodeName: node-b, serviceAccountName: app, containers: [{ name: main }] }
status: { hostIP: 172.30.0.2, podIP: 10.244.1.5 }
"#,
    );
    view.changed(&store, &keys);
    assert_eq!(workload(&view, "demo", "app-v2-0").locality, "us/us-1a");
    // The Node goes: its pods lose the locality.
    store.apply(SourceEvent::Delete(ObjectKey::new(
        Kind::Node,
        None,
        "node-a",
    )));
    view.changed(&store, &[ObjectKey::new(Kind::Node, None, "node-a")]);
    assert_eq!(workload(&view, "demo", "app-v1-0").locality, "");
}

#[test]
fn a_services_traffic_distribution_becomes_a_closeness_preference() {
    use warren_api::config::load_balancing::{Mode, Scope as LbScope};
    let with = |spec: &str, annotations: &str| {
        let (_, view) = built(&format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{ name: app, namespace: demo{annotations} }}
spec:
  clusterIP: 10.96.0.10
  ports: [{{ name: http, port: 80, targetPort: web }}]
{spec}
"#
        ));
        service(&view, "demo", "app").load_balancing
    };
    let scopes = |s: &[LbScope]| s.iter().map(|s| *s as i32).collect::<Vec<_>>();
    assert_eq!(with("", ""), None);
    let close = with("  trafficDistribution: PreferClose", "").expect("a preference");
    assert_eq!(
        close.routing_preference,
        scopes(&[LbScope::Region, LbScope::Zone])
    );
    assert_eq!(close.mode, Mode::Failover as i32);
    let node = with("  trafficDistribution: PreferSameNode", "").expect("a preference");
    assert_eq!(
        node.routing_preference,
        scopes(&[
            LbScope::Region,
            LbScope::Zone,
            LbScope::Subzone,
            LbScope::Node
        ])
    );
    // Istio's annotation, for clusters without the field.
    let annotated = with(
        "",
        ", annotations: { networking.istio.io/traffic-distribution: PreferClose }",
    )
    .expect("a preference");
    assert_eq!(annotated, close);
    // A value this version does not know falls through to the annotation;
    // values are read in any case.
    let fallen_through = with(
        "  trafficDistribution: PreferSomewhereNew",
        ", annotations: { networking.istio.io/traffic-distribution: prefersamezone }",
    )
    .expect("a preference");
    assert_eq!(fallen_through, close);
    // internalTrafficPolicy: Local wins: this node only.
    let local = with(
        "  trafficDistribution: PreferClose\n  internalTrafficPolicy: Local",
        "",
    )
    .expect("a preference");
    assert_eq!(local.routing_preference, scopes(&[LbScope::Node]));
    assert_eq!(local.mode, Mode::Strict as i32);
}

#[test]
fn a_node_with_only_the_beta_topology_labels_still_has_a_locality() {
    let (_, view) = built(
        r#"
apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels: { failure-domain.beta.kubernetes.io/region: old-r, failure-domain.beta.kubernetes.io/zone: old-z }
"#,
    );
    assert_eq!(workload(&view, "demo", "app-v1-0").locality, "old-r/old-z");
}

const SERVICE_ENTRIES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: billing, namespace: demo }
spec:
  hosts: [billing.example.com, billing.internal]
  addresses: [10.20.0.1, 10.30.0.0/24, 10.20.0.2/32]
  ports: [{ number: 443, name: https, protocol: TLS }, { number: 8080, name: http, protocol: HTTP, targetPort: 80 }]
  resolution: STATIC
  endpoints:
    - { address: 192.0.2.10 }
    - { address: 192.0.2.11, ports: { http: 8081 } }
    - { address: "unix:///var/run/billing.sock" }
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: egress, namespace: demo }
spec:
  hosts: [api.partner.example]
  addresses: [198.51.100.7]
  ports: [{ number: 443, name: https, protocol: TLS }]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: inside, namespace: demo }
spec:
  hosts: [app.mesh.internal]
  addresses: [10.40.0.1]
  ports: [{ number: 80, name: http, targetPort: 8080 }]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: { labels: { app: app } }
"#;

fn entry_service(view: &View, ns: &str, host: &str) -> Option<warren_api::config::Service> {
    match get(view, &key::service_entry(ns, host)) {
        Some(ResourceKind::Service(s)) => Some(s),
        _ => None,
    }
}

fn ips(list: &[Vec<u8>]) -> Vec<String> {
    list.iter()
        .map(|b| addr::from_bytes(b).unwrap().to_string())
        .collect()
}

#[test]
fn service_entries_publish_a_service_per_host() {
    let (mut store, mut view) = built(SERVICE_ENTRIES);

    // STATIC: the IP endpoints (a `unix://` one is left out), each host
    // with the same VIPs (single addresses only) and ports.
    for host in ["billing.example.com", "billing.internal"] {
        let billing = entry_service(&view, "demo", host).expect(host);
        assert_eq!(billing.hostname, host);
        assert_eq!(ips(&billing.vips), ["10.20.0.1", "10.20.0.2"]);
        assert_eq!(
            billing
                .ports
                .iter()
                .map(|p| (p.port, p.target_port, p.app_protocol.as_str()))
                .collect::<Vec<_>>(),
            [(443, 443, "tls"), (8080, 80, "http")]
        );
        let endpoints: Vec<_> = billing
            .endpoints
            .iter()
            .map(|e| {
                (
                    addr::from_bytes(&e.address).unwrap().to_string(),
                    e.workload.as_str(),
                    e.ready,
                    e.ports.clone(),
                )
            })
            .collect();
        assert_eq!(
            endpoints,
            [
                ("192.0.2.10".into(), "", true, BTreeMap::new()),
                (
                    "192.0.2.11".into(),
                    "",
                    true,
                    BTreeMap::from([(8080, 8081)])
                ),
            ]
        );
        assert!(!billing.passthrough);
    }
    // NONE (the default): registered, to the address dialled.
    let egress = entry_service(&view, "demo", "api.partner.example").expect("egress");
    assert!(egress.passthrough);
    assert!(egress.endpoints.is_empty());
    // A workloadSelector: the namespace's pods it selects, as workloads.
    let inside = entry_service(&view, "demo", "app.mesh.internal").expect("inside");
    let selected: Vec<_> = inside
        .endpoints
        .iter()
        .map(|e| {
            (
                e.workload.as_str(),
                addr::from_bytes(&e.address).unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        selected,
        [
            (
                key::workload("demo", "app-v1-0").as_str(),
                "10.244.0.5".to_owned()
            ),
            (
                key::workload("demo", "app-v2-0").as_str(),
                "10.244.1.5".to_owned()
            ),
        ]
    );

    // A selected pod that goes away leaves the entry's endpoints.
    let since = version(&view);
    let gone = delete(&mut store, Kind::Pod, "demo", "app-v2-0");
    view.changed(&store, &[gone]);
    let inside = entry_service(&view, "demo", "app.mesh.internal").expect("inside");
    assert_eq!(inside.endpoints.len(), 1);
    assert!(delta_keys(&view, since).contains(&key::service_entry("demo", "app.mesh.internal")));

    // A host dropped from an entry, and an entry deleted, unpublish theirs.
    let keys = apply(
        &mut store,
        &SERVICE_ENTRIES.split("---").next().unwrap().replace(
            "hosts: [billing.example.com, billing.internal]",
            "hosts: [billing.example.com]",
        ),
    );
    view.changed(&store, &keys);
    assert!(entry_service(&view, "demo", "billing.example.com").is_some());
    assert!(entry_service(&view, "demo", "billing.internal").is_none());
    let gone = delete(&mut store, Kind::ServiceEntry, "demo", "egress");
    view.changed(&store, &[gone]);
    assert!(entry_service(&view, "demo", "api.partner.example").is_none());
    // A Kubernetes Service of the same namespace is untouched.
    assert_eq!(service(&view, "demo", "app").name, "app");
}

#[test]
fn two_entries_with_one_host_publish_the_first_by_name() {
    let (mut store, mut view) = built(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: b-second, namespace: demo }
spec: { hosts: [shared.example], addresses: [10.50.0.2], ports: [{ number: 80, name: http }] }
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: a-first, namespace: demo }
spec: { hosts: [shared.example], addresses: [10.50.0.1], ports: [{ number: 80, name: http }] }
"#,
    );
    let shared = entry_service(&view, "demo", "shared.example").expect("shared");
    assert_eq!(ips(&shared.vips), ["10.50.0.1"]);
    // The first one gone, the second publishes the host.
    let gone = delete(&mut store, Kind::ServiceEntry, "demo", "a-first");
    view.changed(&store, &[gone]);
    let shared = entry_service(&view, "demo", "shared.example").expect("shared");
    assert_eq!(ips(&shared.vips), ["10.50.0.2"]);
}

#[test]
fn a_host_without_addresses_is_published_with_one_of_each_family() {
    let (_, view) = built(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: legacy, namespace: demo }\n\
         spec: { hosts: [legacy.example.com], ports: [{ number: 443, name: tls, protocol: TLS }], resolution: DNS }\n",
    );
    let service = entry_service(&view, "demo", "legacy.example.com").expect("published");
    let vips = ips(&service.vips);
    assert_eq!(vips.len(), 2, "{vips:?}");
    assert!(vips[0].starts_with("240.240."), "{vips:?}");
    assert!(vips[1].starts_with("2001:2::f0f0:"), "{vips:?}");
    assert!(service.vips_allocated);

    // A node that does not capture IPv6: nothing would route the IPv6 one.
    let mut store = Store::default();
    apply(&mut store, BASE);
    apply(
        &mut store,
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: legacy, namespace: demo }\n\
         spec: { hosts: [legacy.example.com], ports: [{ number: 443, name: tls, protocol: TLS }], resolution: DNS }\n",
    );
    store.apply(SourceEvent::Synced);
    let v4_only = Mesh {
        captures_ipv6: false,
        ..mesh()
    };
    let mut view = View::new(v4_only, Publisher::default());
    view.rebuild(&store);
    let service = entry_service(&view, "demo", "legacy.example.com").expect("published");
    assert_eq!(ips(&service.vips), vec![vips[0].clone()]);
    // Addresses the entry gives are its own, not allocated.
    let (_, view) = built(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: given, namespace: demo }\n\
         spec: { hosts: [given.example.com], addresses: [\"2001:db8::10\"], ports: [{ number: 443, name: tls, protocol: TLS }], resolution: DNS }\n",
    );
    let service = entry_service(&view, "demo", "given.example.com").expect("published");
    assert!(!service.vips_allocated);
    assert_eq!(ips(&service.vips), vec!["2001:db8::10".to_owned()]);
}

#[test]
fn dns_entries_publish_names_for_ztunnel_to_resolve() {
    let (mut store, mut view) = built(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: by-host, namespace: demo }
spec:
  hosts: [api.example.com, www.example.com]
  addresses: [10.60.0.1]
  ports: [{ number: 443, name: tls, protocol: TLS }]
  resolution: DNS_ROUND_ROBIN
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: by-endpoint, namespace: demo }
spec:
  hosts: [db.example.com]
  addresses: [10.60.0.2]
  ports: [{ number: 5432, name: tcp-pg, protocol: TCP }]
  resolution: DNS
  endpoints:
  - { address: db-b.example.net, ports: { tcp-pg: 6432 } }
  - { address: 192.0.2.30 }
  - { address: db-a.example.net }
  - { address: "unix:///run/pg.sock" }
  - { network: remote }
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: selected, namespace: demo }
spec:
  hosts: [app.dns.internal]
  addresses: [10.60.0.3]
  ports: [{ number: 80, name: http }]
  resolution: DNS
  workloadSelector: { labels: { app: app } }
"#,
    );
    // No endpoints: each host is resolved itself; DNS_ROUND_ROBIN goes to the
    // first address of each answer. Only the first host keeps the entry's
    // address (at L4 nothing would tell the two apart).
    for (host, vips) in [
        ("api.example.com", vec!["10.60.0.1"]),
        ("www.example.com", vec![]),
    ] {
        let entry = entry_service(&view, "demo", host).expect(host);
        assert_eq!(ips(&entry.vips), vips, "{host}");
        let names: Vec<_> = entry
            .endpoints
            .iter()
            .map(|e| (e.hostname.as_str(), e.address.len(), e.ready))
            .collect();
        assert_eq!(names, [(host, 0, true)]);
        assert!(!entry.passthrough, "{host} goes to its resolved addresses");
        assert!(entry.dns_first_address);
    }
    // Listed endpoints: by address or by name (a `unix://` path is left
    // out), with their own ports; DNS spreads over every address.
    let db = entry_service(&view, "demo", "db.example.com").expect("db");
    let endpoints: Vec<_> = db
        .endpoints
        .iter()
        .map(|e| {
            let target = if e.hostname.is_empty() {
                addr::from_bytes(&e.address).unwrap().to_string()
            } else {
                e.hostname.clone()
            };
            (target, e.ports.clone())
        })
        .collect();
    assert_eq!(
        endpoints,
        [
            ("db-a.example.net".to_owned(), BTreeMap::new()),
            (
                "db-b.example.net".to_owned(),
                BTreeMap::from([(5432, 6432)])
            ),
            ("192.0.2.30".to_owned(), BTreeMap::new()),
        ]
    );
    assert!(!db.dns_first_address);
    assert!(!db.passthrough);
    // A workloadSelector picks pods whatever the resolution, and follows them.
    let selected = entry_service(&view, "demo", "app.dns.internal").expect("selected");
    assert_eq!(selected.endpoints.len(), 2);
    let gone = delete(&mut store, Kind::Pod, "demo", "app-v2-0");
    view.changed(&store, &[gone]);
    let selected = entry_service(&view, "demo", "app.dns.internal").expect("selected");
    assert_eq!(selected.endpoints.len(), 1);
}

#[test]
fn a_service_entry_goes_through_a_waypoint_only_when_labelled() {
    let ip = |s: &str| Some(Some(s.parse::<std::net::IpAddr>().unwrap()));
    let entry = |labels: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{ name: api, namespace: demo, labels: {{ {labels} }} }}\n\
             spec: {{ hosts: [api.example.com], addresses: [10.70.0.1], ports: [{{ number: 80, name: http, protocol: HTTP }}], resolution: DNS }}\n"
        )
    };
    let api_waypoint = |view: &View| {
        entry_service(view, "demo", "api.example.com")
            .expect("the entry's Service")
            .waypoint
            .map(|w| addr::from_bytes(&w.address))
    };
    let (mut store, mut view) = built(&entry(""));
    // The namespace's waypoint claims its Services, not its entries.
    let keys = apply(
        &mut store,
        &named_waypoint(Gateway::waypoint("demo", "egress"), "10.244.0.30"),
    );
    view.changed(&store, &keys);
    assert_eq!(app_waypoint(&view), ip("10.244.0.30"));
    assert_eq!(api_waypoint(&view), None);

    // Its own label.
    let keys = apply(&mut store, &entry("istio.io/use-waypoint: egress"));
    view.changed(&store, &keys);
    assert_eq!(api_waypoint(&view), ip("10.244.0.30"));
    // The waypoint's pod goes: still claimed, refused rather than bypassed.
    let gone = delete(&mut store, Kind::Pod, "demo", "egress-0");
    view.changed(&store, &[gone]);
    assert_eq!(api_waypoint(&view), Some(None));
    let keys = apply(
        &mut store,
        &named_waypoint(Gateway::waypoint("demo", "egress"), "10.244.0.31"),
    );
    view.changed(&store, &keys);
    assert_eq!(api_waypoint(&view), ip("10.244.0.31"));

    // The namespace's label, when the entry has none; `none` opts out.
    let keys = apply(&mut store, &entry(""));
    view.changed(&store, &keys);
    assert_eq!(api_waypoint(&view), None);
    let keys = apply(
        &mut store,
        "apiVersion: v1\nkind: Namespace\nmetadata: { name: demo, labels: { warren.io/dataplane-mode: ambient, istio.io/use-waypoint: egress } }\n",
    );
    view.changed(&store, &keys);
    assert_eq!(api_waypoint(&view), ip("10.244.0.31"));
    let keys = apply(&mut store, &entry("istio.io/use-waypoint: none"));
    view.changed(&store, &keys);
    assert_eq!(api_waypoint(&view), None);
}

#[test]
fn a_policy_on_a_service_entry_binds_its_hosts_on_the_waypoint() {
    let entry = |hosts: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{ name: partner, namespace: demo, labels: {{ istio.io/use-waypoint: waypoint }} }}\n\
             spec: {{ hosts: [{hosts}], addresses: [10.70.0.9], ports: [{{ number: 80, name: http, protocol: HTTP }}], resolution: STATIC, endpoints: [{{ address: 192.0.2.9 }}] }}\n"
        )
    };
    let policy = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                  metadata: { name: no-admin, namespace: demo }\n\
                  spec:\n  targetRefs: [{ group: networking.istio.io, kind: ServiceEntry, name: partner }]\n  \
                  action: DENY\n  rules: [{ to: [{ operation: { paths: [/admin*] } }] }]\n";
    // Before the entry: nothing to bind (and nothing to reach).
    let (mut store, mut view) = built(policy);
    assert_eq!(l7_policy(&view, "no-admin"), None);
    // The entry appears: the policy binds its host, for the waypoint only.
    let keys = apply(&mut store, &entry("api.partner.example"));
    view.changed(&store, &keys);
    let bound = l7_policy(&view, "no-admin").expect("published for the waypoint");
    assert_eq!(bound.services, ["api.partner.example"]);
    assert!(!bound.waypoint && bound.gateways.is_empty());
    assert_eq!(get(&view, &key::authorization("demo", "no-admin")), None);
    // Its hosts change: so does what the policy binds.
    let keys = apply(
        &mut store,
        &entry("api.partner.example, status.partner.example"),
    );
    view.changed(&store, &keys);
    let bound = l7_policy(&view, "no-admin").expect("published");
    assert_eq!(
        bound.services,
        ["api.partner.example", "status.partner.example"]
    );
}

#[test]
fn an_entry_follows_a_waypoint_it_names_in_another_namespace() {
    let shared = Some(Some("10.244.0.40".parse::<std::net::IpAddr>().unwrap()));
    let (mut store, mut view) = built(
        "apiVersion: v1\nkind: Namespace\nmetadata: { name: infra }\n---\n\
         apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: { name: api, namespace: demo, labels: { istio.io/use-waypoint: egress, istio.io/use-waypoint-namespace: infra } }\n\
         spec: { hosts: [api.example.com], addresses: [10.70.0.2], ports: [{ number: 80, name: http }], resolution: DNS }\n",
    );
    let api_waypoint = |view: &View| {
        entry_service(view, "demo", "api.example.com")
            .expect("the entry's Service")
            .waypoint
            .map(|w| addr::from_bytes(&w.address))
    };
    assert_eq!(
        api_waypoint(&view),
        Some(None),
        "no such waypoint yet: refused"
    );
    // The Gateway appears in infra, admitting demo: the entry in demo follows.
    let keys = apply(
        &mut store,
        &named_waypoint(
            Gateway::waypoint("infra", "egress").admitting(RouteNamespaces {
                from: Some("All".into()),
                selector: None,
            }),
            "10.244.0.40",
        ),
    );
    view.changed(&store, &keys);
    assert_eq!(api_waypoint(&view), shared);
    // Its pod goes: claimed, refused.
    let key = delete(&mut store, Kind::Pod, "infra", "egress-0");
    view.changed(&store, &[key]);
    assert_eq!(api_waypoint(&view), Some(None));
}

#[test]
fn an_entry_says_which_namespaces_see_it() {
    let entry = |name: &str, export_to: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{ name: {name}, namespace: demo }}\n\
             spec: {{ hosts: [{name}.example], addresses: [10.80.0.1], ports: [{{ number: 80, name: http }}]{export_to} }}\n"
        )
    };
    let (_store, view) = built(
        &[
            entry("everyone", ""),
            entry("own", ", exportTo: [.]"),
            entry("listed", ", exportTo: [., team-b]"),
            entry("nobody", ", exportTo: [\"~\"]"),
        ]
        .join("---\n"),
    );
    let export_to = |name: &str| {
        entry_service(&view, "demo", &format!("{name}.example"))
            .expect(name)
            .export_to
    };
    assert!(export_to("everyone").is_empty());
    assert_eq!(export_to("own"), ["demo"]);
    assert_eq!(export_to("listed"), ["demo", "team-b"]);
    assert_eq!(export_to("nobody"), ["~"]);
}

/// An entry's `subjectAltNames` go with each of its hosts, with its
/// endpoints' service accounts, for the waypoint to check the certificates of
/// the endpoints it starts TLS to.
#[test]
fn an_entrys_subject_alt_names_go_with_its_hosts() {
    let (_store, view) = built(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: { name: partner, namespace: demo }\n\
         spec: { hosts: [api.partner.example, files.partner.example], ports: [{ number: 443, name: tls, protocol: TLS }], resolution: STATIC,\n\
         endpoints: [{ address: 192.0.2.10, serviceAccount: partner }, { address: 192.0.2.11, serviceAccount: partner }],\n\
         subjectAltNames: [api.partner.example, \"spiffe://partner.example/api\"] }\n",
    );
    // Then its endpoints' service accounts' identities, once each (Istio's
    // names for the entry).
    for host in ["api.partner.example", "files.partner.example"] {
        assert_eq!(
            entry_service(&view, "demo", host)
                .expect(host)
                .subject_alt_names,
            [
                "api.partner.example",
                "spiffe://partner.example/api",
                "spiffe://cluster.local/ns/demo/sa/partner"
            ]
        );
    }
}

/// The pods an entry selects add their service accounts' identities too,
/// in the trust domain and each of its aliases.
#[test]
fn an_entrys_selected_pods_and_trust_domain_aliases_add_names() {
    let mut store = Store::default();
    apply(&mut store, BASE);
    apply(
        &mut store,
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: { name: catalog, namespace: demo }\n\
         spec: { hosts: [catalog.internal], addresses: [10.80.0.9], ports: [{ number: 443, name: tls, protocol: TLS }], resolution: STATIC,\n\
         workloadSelector: { labels: { app: catalog } } }\n\
         ---\napiVersion: v1\nkind: Pod\n\
         metadata: { name: catalog-0, namespace: demo, labels: { app: catalog } }\n\
         spec: { nodeName: node-b, serviceAccountName: catalog, containers: [{ name: main }] }\n\
         status: { phase: Running, hostIP: 172.30.0.2, podIP: 10.244.1.9 }\n",
    );
    store.apply(SourceEvent::Synced);
    let mut view = View::new(
        Mesh {
            trust_domain_aliases: vec!["old.example".into()],
            ..mesh()
        },
        Publisher::default(),
    );
    view.rebuild(&store);
    let names = entry_service(&view, "demo", "catalog.internal")
        .expect("the entry")
        .subject_alt_names;
    assert_eq!(
        names,
        [
            "spiffe://cluster.local/ns/demo/sa/catalog",
            "spiffe://old.example/ns/demo/sa/catalog"
        ]
    );
}

/// An entry's endpoints keep their own labels, locality and weight (unset:
/// 0, which the proxies read as 1), for the waypoint's subsets and balancing;
/// one address on another port, or with other labels, is another endpoint.
#[test]
fn an_entrys_endpoints_keep_their_labels_locality_and_weight() {
    let (_store, view) = built(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: { name: catalog, namespace: demo }\n\
         spec: { hosts: [catalog.example], addresses: [10.80.0.7], ports: [{ number: 80, name: http }], resolution: STATIC,\n\
         endpoints: [{ address: 192.0.2.1, labels: { version: v1 }, locality: us-east/a, weight: 3 }, { address: 192.0.2.2 },\n\
         { address: 192.0.2.1, ports: { http: 8081 }, labels: { version: v2 } },\n\
         { address: 192.0.2.1, ports: { http: 8081 }, labels: { version: v3 } }, { address: 192.0.2.2 }] }\n",
    );
    let service = entry_service(&view, "demo", "catalog.example").expect("the entry");
    let endpoints: Vec<_> = service
        .endpoints
        .iter()
        .map(|e| {
            (
                addr::from_bytes(&e.address).unwrap().to_string(),
                e.labels.clone().into_iter().collect::<Vec<_>>(),
                e.locality.clone(),
                e.weight,
            )
        })
        .collect();
    assert_eq!(
        endpoints,
        [
            (
                "192.0.2.1".to_owned(),
                vec![("version".to_owned(), "v1".to_owned())],
                "us-east/a".to_owned(),
                3
            ),
            (
                "192.0.2.1".to_owned(),
                vec![("version".to_owned(), "v2".to_owned())],
                String::new(),
                0
            ),
            // The same server in another subset: an endpoint of its own.
            (
                "192.0.2.1".to_owned(),
                vec![("version".to_owned(), "v3".to_owned())],
                String::new(),
                0
            ),
            // Listed twice alike: once.
            ("192.0.2.2".to_owned(), vec![], String::new(), 0),
        ]
    );
}

/// An entry's CIDRs wider than one address are its address blocks; an
/// entry that gives only blocks gets no allocated address (Istio allocates
/// only for entries that give none).
#[test]
fn an_entrys_wide_cidrs_are_blocks_and_take_no_allocated_address() {
    let (_store, view) = built(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: { name: subnet, namespace: demo }\n\
         spec: { hosts: [db.subnet.example], addresses: [10.81.0.0/24, \"fd00:81::/64\", 10.82.0.1/32], ports: [{ number: 5432, name: tcp-db, protocol: TCP }] }\n\
         ---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: { name: blocks-only, namespace: demo }\n\
         spec: { hosts: [only.subnet.example], addresses: [10.83.0.0/16], ports: [{ number: 5432, name: tcp-db, protocol: TCP }] }\n",
    );
    let subnet = entry_service(&view, "demo", "db.subnet.example").expect("the entry");
    assert_eq!(ips(&subnet.vips), ["10.82.0.1"]);
    let blocks: Vec<(String, u32)> = subnet
        .vip_ranges
        .iter()
        .map(|c| {
            (
                addr::from_bytes(&c.address).unwrap().to_string(),
                c.prefix_len,
            )
        })
        .collect();
    assert_eq!(
        blocks,
        [("10.81.0.0".to_owned(), 24), ("fd00:81::".to_owned(), 64)]
    );
    let only = entry_service(&view, "demo", "only.subnet.example").expect("the entry");
    assert!(only.vips.is_empty() && !only.vips_allocated, "{only:?}");
    assert_eq!(only.vip_ranges.len(), 1);
}

/// A pod captured while the runtime builds its sandbox (the CNI plugin) has no
/// address in its status yet: the runtime's report publishes it, so ztunnel knows
/// the pod from its first connection; kubelet's status takes over once written.
#[test]
fn a_starting_pod_is_published_with_the_addresses_the_runtime_reported() {
    let starting = "---\napiVersion: v1\nkind: Pod\nmetadata: { name: new-0, namespace: demo, labels: { app: app } }\nspec: { nodeName: node-a, serviceAccountName: app, containers: [{ name: main }] }\nstatus: { phase: Pending, hostIP: 172.30.0.1 }\n";
    let (store, mut view) = built(starting);
    assert!(get(&view, "workload/demo/new-0").is_none());
    let pod = ObjectKey::new(Kind::Pod, Some("demo"), "new-0");
    let reported: IpAddr = "10.244.0.42".parse().unwrap();
    let netns = PodNetns {
        cookie: 77,
        path: "/run/netns/cni-1234".into(),
        addresses: vec![reported],
    };
    view.set_namespaces(&store, BTreeMap::from([(pod, netns)]));
    let published = workload(&view, "demo", "new-0");
    assert_eq!(published.addresses, vec![addr::to_bytes(reported)]);
    assert_eq!(published.netns_cookie, 77);
    assert_eq!(published.service_account, "app");
}

const MESH_CONFIG: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: opa
      envoyExtAuthzGrpc: {service: opa.auth.svc.cluster.local, port: 9191}
    - name: sso
      envoyExtAuthzHttp: {service: sso.auth.svc.cluster.local, port: "4180", headersToUpstreamOnAllow: [x-user]}
    - name: tracing
      zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
"#;

fn providers(view: &View) -> Vec<String> {
    view.publisher()
        .lock()
        .keys()
        .filter(|k| k.starts_with(key::EXTENSION_PROVIDER_PREFIX))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_mesh_configs_authorizers_go_to_waypoints() {
    let (mut store, mut view) = built(MESH_CONFIG);
    // A tracing provider too, by name: a Telemetry naming it names a
    // provider that is there.
    assert_eq!(
        providers(&view),
        [
            "extensionprovider/opa",
            "extensionprovider/sso",
            "extensionprovider/tracing"
        ]
    );
    let Some(ResourceKind::ExtensionProvider(sso)) = get(&view, "extensionprovider/sso") else {
        panic!("sso published");
    };
    let spec: serde_json::Value = serde_json::from_str(&sso.spec_json).unwrap();
    assert_eq!(spec["envoyExtAuthzHttp"]["port"], 4180);
    assert_eq!(
        spec["envoyExtAuthzHttp"]["headersToUpstreamOnAllow"][0],
        "x-user"
    );
    // Waypoints alone are sent them.
    assert!(warren_api::key::is_l7("extensionprovider/sso"));

    // Another ConfigMap, or one elsewhere, is not the mesh config.
    let keys = apply(
        &mut store,
        &MESH_CONFIG
            .replace("name: istio,", "name: istio-canary,")
            .replace("- name: opa", "- name: opa2"),
    );
    view.changed(&store, &keys);
    let keys = apply(
        &mut store,
        &MESH_CONFIG
            .replace("namespace: istio-system", "namespace: demo")
            .replace("- name: opa", "- name: opa3"),
    );
    view.changed(&store, &keys);
    assert_eq!(
        providers(&view),
        [
            "extensionprovider/opa",
            "extensionprovider/sso",
            "extensionprovider/tracing"
        ]
    );

    // A provider dropped is withdrawn; the ConfigMap gone, all of them.
    let keys = apply(
        &mut store,
        &MESH_CONFIG.replace(
            "    - name: opa\n      envoyExtAuthzGrpc: {service: opa.auth.svc.cluster.local, port: 9191}\n",
            "",
        ),
    );
    view.changed(&store, &keys);
    assert_eq!(
        providers(&view),
        ["extensionprovider/sso", "extensionprovider/tracing"]
    );
    let key = delete(&mut store, Kind::ConfigMap, "istio-system", "istio");
    view.changed(&store, &[key]);
    assert!(providers(&view).is_empty());
}

#[test]
fn a_bad_mesh_config_is_refused_naming_the_field() {
    let bad = MESH_CONFIG.replace("port: 9191", "port: 0");
    let doc = split_documents(&bad).unwrap().remove(0);
    let error = parse_document(doc, "test").unwrap_err().to_string();
    assert!(
        error.contains("ConfigMap istio-system/istio")
            && error.contains("data.mesh.extensionProviders[0].envoyExtAuthzGrpc.port: required"),
        "{error}"
    );
    let doc = split_documents(&MESH_CONFIG.replace("port: 9191}", "port: 9191"))
        .unwrap()
        .remove(0);
    let error = parse_document(doc, "test").unwrap_err().to_string();
    assert!(error.contains("data.mesh"), "{error}");
}

#[test]
fn routes_of_a_service_entry_route_its_hosts() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: httpbin, namespace: shop }
spec:
  hosts: [httpbin.org, www.httpbin.org, reviews.shop.svc.cluster.local, "*.cluster.local", httpbin.org]
  ports: [{ number: 80, name: http, protocol: HTTP }]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: egress, namespace: shop }
spec:
  parentRefs: [{ group: networking.istio.io, kind: ServiceEntry, name: httpbin, sectionName: http }]
  rules:
  - filters: [{ type: RequestHeaderModifier, requestHeaderModifier: { set: [{ name: x-egress, value: "yes" }] } }]
    backendRefs: [{ kind: Hostname, group: networking.istio.io, name: httpbin.org, port: 80 }]
"#;
    let (mut store, mut view) = built(yaml);
    let key = key::service_entry_routes("shop", "httpbin");
    let spec = virtual_service_spec(&view, &key).expect("the entry's routes published");
    assert_eq!(
        spec["hosts"],
        // Its own hosts, each once; none naming the cluster's Services.
        serde_json::json!(["httpbin.org", "www.httpbin.org"])
    );
    // The section is the entry's port of that name.
    assert_eq!(spec["http"][0]["match"][0]["port"], 80);
    assert_eq!(
        spec["http"][0]["route"][0]["destination"]["host"],
        "httpbin.org"
    );
    // A Service's routes are apart: none was made.
    assert!(get(&view, &key::service_routes("shop", "httpbin")).is_none());

    // Without the entry, its routes route nothing.
    let gone = delete(&mut store, Kind::ServiceEntry, "shop", "httpbin");
    view.changed(&store, &[gone]);
    assert!(get(&view, &key).is_none());
}

const TELEMETRIES: &str = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: { name: mesh-default, namespace: istio-system, creationTimestamp: "2026-01-01T00:00:00Z" }
spec:
  accessLogging: [{ providers: [{ name: envoy }], filter: { expression: "response.code >= 500" } }]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: { name: quiet, namespace: demo }
spec:
  accessLogging: [{ disabled: true }]
---
apiVersion: telemetry.istio.io/v1alpha1
kind: Telemetry
metadata: { name: on-waypoint, namespace: demo }
spec:
  targetRefs: [{ group: gateway.networking.k8s.io, kind: Gateway, name: waypoint }]
  metrics: [{ overrides: [{ match: { metric: REQUEST_SIZE }, disabled: true }] }]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: { name: on-service, namespace: demo }
spec:
  targetRefs: [{ kind: Service, name: app }]
  accessLogging: [{ providers: [{ name: envoy }] }]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: { name: by-selector, namespace: demo }
spec:
  selector: { matchLabels: { app: app } }
  accessLogging: [{ disabled: true }]
"#;

fn telemetry(view: &View, ns: &str, name: &str) -> Option<warren_api::config::Telemetry> {
    match get(view, &key::telemetry(ns, name)) {
        Some(ResourceKind::Telemetry(t)) => Some(t),
        _ => None,
    }
}

#[test]
fn telemetries_reach_waypoints_with_whom_they_apply_to() {
    let (mut store, mut view) = built(TELEMETRIES);
    let mesh = telemetry(&view, "istio-system", "mesh-default").expect("published");
    assert!(mesh.mesh_wide && mesh.namespace_wide);
    assert_eq!(mesh.created, 1_767_225_600);
    let spec: serde_json::Value = serde_json::from_str(&mesh.spec_json).unwrap();
    assert_eq!(
        spec["accessLogging"][0]["filter"]["expression"],
        "response.code >= 500"
    );
    let quiet = telemetry(&view, "demo", "quiet").expect("published");
    assert!(quiet.namespace_wide && !quiet.mesh_wide);
    let on_service = telemetry(&view, "demo", "on-service").expect("published");
    assert_eq!(on_service.services, ["app"]);
    // No waypoint Gateway yet; and a selector names pods, not waypoints.
    assert_eq!(telemetry(&view, "demo", "on-waypoint"), None);
    assert_eq!(telemetry(&view, "demo", "by-selector"), None);

    let keys = apply(&mut store, WAYPOINT_GATEWAY);
    view.changed(&store, &keys);
    let on_waypoint = telemetry(&view, "demo", "on-waypoint").expect("published");
    assert_eq!(on_waypoint.gateways, ["waypoint"]);

    // For waypoints only.
    assert!(warren_api::key::is_l7(&key::telemetry("demo", "quiet")));
    let published = view.publisher().lock();
    let sent = |audience: &Audience| match published.pending(None, audience) {
        Pending::Update(u) => u
            .upserts
            .iter()
            .filter(|r| r.key.starts_with(key::TELEMETRY_PREFIX))
            .count(),
        Pending::UpToDate => 0,
    };
    assert_eq!(sent(&Audience::Ztunnel), 0);
    assert_eq!(
        sent(&Audience::Waypoint {
            namespace: "demo".into()
        }),
        4
    );
    drop(published);

    let gone = delete(&mut store, Kind::Telemetry, "demo", "quiet");
    view.changed(&store, &[gone]);
    assert_eq!(telemetry(&view, "demo", "quiet"), None);
}

#[test]
fn the_mesh_configs_telemetry_providers_and_defaults_go_to_waypoints() {
    let mesh = MESH_CONFIG.replace(
        "    - name: tracing\n",
        "    - name: json-stdout\n      envoyFileAccessLog: {path: /dev/stdout, logFormat: {labels: {code: \"%RESPONSE_CODE%\"}}}\n    - name: prom\n      prometheus: {}\n    - name: tracing\n",
    ) + "    defaultProviders: {accessLogging: [json-stdout]}\n    accessLogFile: /dev/stdout\n    accessLogEncoding: JSON\n";
    let (mut store, mut view) = built(&mesh);
    assert_eq!(
        providers(&view),
        [
            "extensionprovider/json-stdout",
            "extensionprovider/opa",
            "extensionprovider/prom",
            "extensionprovider/sso",
            "extensionprovider/tracing"
        ]
    );
    let Some(ResourceKind::TelemetryDefaults(defaults)) = get(&view, key::TELEMETRY_DEFAULTS)
    else {
        panic!("defaults published");
    };
    assert_eq!(defaults.access_logging, ["json-stdout"]);
    assert!(defaults.metrics.is_empty());
    assert_eq!(defaults.access_log_file.as_deref(), Some("/dev/stdout"));
    assert_eq!(defaults.access_log_encoding, "JSON");
    assert!(warren_api::key::is_l7(key::TELEMETRY_DEFAULTS));

    // Dropped from the mesh config: withdrawn.
    let keys = apply(&mut store, MESH_CONFIG);
    view.changed(&store, &keys);
    assert!(get(&view, key::TELEMETRY_DEFAULTS).is_none());
    assert_eq!(
        providers(&view),
        [
            "extensionprovider/opa",
            "extensionprovider/sso",
            "extensionprovider/tracing"
        ]
    );
}

#[test]
fn secrets_named_by_credential_name_reach_only_their_namespaces_waypoints() {
    // `demo` has a waypoint running on this node (node-a); `plain` has none
    // yet. Everything is there from the first build.
    let secrets = r#"
apiVersion: v1
kind: Secret
metadata: { name: partner, namespace: demo }
type: kubernetes.io/tls
stringData: { tls.crt: CERT, tls.key: KEY, ca.crt: CA, other: never-kept }
---
apiVersion: v1
kind: Secret
metadata: { name: partner-cacert, namespace: demo }
stringData: { cacert: CA2, cert: C2, key: K2 }
---
apiVersion: v1
kind: Secret
metadata: { name: partner, namespace: plain }
stringData: { cert: CERT, key: KEY, cacert: CA }
---
apiVersion: v1
kind: Secret
metadata: { name: unrelated, namespace: demo }
stringData: { tls.crt: CERT, tls.key: KEY }
"#;
    let rule = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: partner, namespace: demo }
spec:
  host: api.partner.example
  trafficPolicy: { tls: { mode: ISTIO_MUTUAL, credentialName: unrelated } }
  subsets:
    - name: v1
      labels: { version: v1 }
      trafficPolicy:
        portLevelSettings: [{ port: { number: 443 }, tls: { mode: MUTUAL, credentialName: partner } }]
"#;
    let (mut store, mut view) = built(&format!(
        "{WAYPOINT_GATEWAY}---{WAYPOINT_POD}---{secrets}---{rule}"
    ));
    let credentials = |view: &View, audience: &Audience| -> Vec<String> {
        keys_for(view, audience)
            .into_iter()
            .filter(|k| k.starts_with(key::CREDENTIAL_PREFIX))
            .collect()
    };
    let demo = Audience::Waypoint {
        namespace: "demo".into(),
    };
    let plain = Audience::Waypoint {
        namespace: "plain".into(),
    };
    // Named by a MUTUAL part (even deep in a subset's port-level policy):
    // the Secret and its CA companion, to demo's waypoint; not plain's
    // Secret (no waypoint there), not the one only an ISTIO_MUTUAL part
    // names, nothing to ztunnels.
    assert_eq!(
        credentials(&view, &Audience::All),
        [
            key::credential("demo", "partner"),
            key::credential("demo", "partner-cacert")
        ]
    );
    assert_eq!(credentials(&view, &demo).len(), 2);
    assert!(credentials(&view, &Audience::Ztunnel).is_empty());
    assert!(credentials(&view, &plain).is_empty());
    let credential = |view: &View, ns: &str, name: &str| match get(view, &key::credential(ns, name))
    {
        Some(ResourceKind::Credential(c)) => Some(c),
        _ => None,
    };
    let partner = credential(&view, "demo", "partner").expect("published");
    assert_eq!(partner.certificate_chain, b"CERT");
    assert_eq!(partner.private_key, b"KEY");
    assert_eq!(partner.ca_certificates, b"CA");
    assert!(partner.ca_crl.is_empty());
    // A companion gives its CA alone: its key is never sent.
    let companion = credential(&view, "demo", "partner-cacert").expect("published");
    assert_eq!(companion.ca_certificates, b"CA2");
    assert!(companion.private_key.is_empty() && companion.certificate_chain.is_empty());

    // Named by SIMPLE parts only: the CA goes, not the key.
    let keys = apply(&mut store, &rule.replace("mode: MUTUAL", "mode: SIMPLE"));
    view.changed(&store, &keys);
    let partner = credential(&view, "demo", "partner").expect("published");
    assert_eq!(partner.ca_certificates, b"CA");
    assert!(partner.private_key.is_empty() && partner.certificate_chain.is_empty());
    let keys = apply(&mut store, rule);
    view.changed(&store, &keys);

    // A waypoint for plain, running on another node: still not here. On
    // this node: its Secret of that name goes to it (the rule of demo names
    // it, and the name is read in each waypoint's own namespace).
    let plain_gateway = WAYPOINT_GATEWAY.replace("namespace: demo", "namespace: plain");
    let plain_pod = WAYPOINT_POD.replace("namespace: demo", "namespace: plain");
    let keys = apply(
        &mut store,
        &format!(
            "{plain_gateway}---{}",
            plain_pod
                .replace("nodeName: node-a", "nodeName: node-b")
                .replace("hostIP: 172.30.0.1", "hostIP: 172.30.0.2")
        ),
    );
    view.changed(&store, &keys);
    assert!(credentials(&view, &plain).is_empty());
    let keys = apply(&mut store, &plain_pod);
    view.changed(&store, &keys);
    assert_eq!(
        credentials(&view, &plain),
        [key::credential("plain", "partner")]
    );

    // A renewed Secret is published again; a deleted one withdrawn.
    let keys = apply(
        &mut store,
        &secrets.replace("tls.key: KEY, ca.crt: CA", "tls.key: KEY2, ca.crt: CA"),
    );
    view.changed(&store, &keys);
    assert_eq!(
        credential(&view, "demo", "partner")
            .expect("published")
            .private_key,
        b"KEY2"
    );
    let gone = delete(&mut store, Kind::Secret, "demo", "partner-cacert");
    view.changed(&store, &[gone]);
    assert!(credential(&view, "demo", "partner-cacert").is_none());

    // The waypoint leaves this node (its pod deleted), or its Gateway goes:
    // withdrawn.
    let gone = delete(&mut store, Kind::Pod, "plain", "waypoint-0");
    view.changed(&store, &[gone]);
    assert!(credentials(&view, &plain).is_empty());
    let gone = delete(&mut store, Kind::Gateway, "demo", "waypoint");
    view.changed(&store, &[gone]);
    assert!(credentials(&view, &demo).is_empty());
    let keys = apply(&mut store, WAYPOINT_GATEWAY);
    view.changed(&store, &keys);
    assert_eq!(
        credentials(&view, &demo),
        [key::credential("demo", "partner")]
    );

    // The rule no longer names it: withdrawn everywhere.
    let gone = delete(&mut store, Kind::DestinationRule, "demo", "partner");
    view.changed(&store, &[gone]);
    assert!(credentials(&view, &Audience::All).is_empty());
}

const WORKLOAD_ENTRIES: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: vm-1, namespace: demo, labels: { team: payments, version: v0 } }
spec:
  address: 10.30.0.7
  ports: { http: 8081, web-admin: 9444, admin: 1 }
  labels: { app: app, version: v3 }
  locality: region-1/zone-1
  weight: 2
  serviceAccount: vm
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: vm-mesh, namespace: demo, labels: { networking.istio.io/tunnel: http } }
spec: { address: 10.30.0.8, labels: { app: app }, serviceAccount: vm }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: by-name, namespace: demo }
spec: { address: vm-3.example.com, labels: { app: app } }
---
apiVersion: v1
kind: Service
metadata: { name: vms, namespace: demo }
spec:
  clusterIP: 10.96.0.30
  selector: { app: app }
  ports: [{ name: http, port: 80, targetPort: 8080 }, { name: admin, port: 9000, targetPort: web-admin }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: app-only, namespace: demo }
spec:
  selector: { matchLabels: { app: app } }
  rules: [{ from: [{ source: { namespaces: [demo] } }] }]
"#;

fn entry_workload(view: &View, ns: &str, name: &str) -> Option<Workload> {
    match get(view, &key::workload_entry(ns, name))? {
        ResourceKind::Workload(w) => Some(w),
        _ => None,
    }
}

/// A WorkloadEntry with an IP address is a workload on no node: plain TCP
/// unless it speaks HBONE itself (then on its own address), its labels
/// merged (the spec's win), its locality and the policies selecting it. One
/// addressed by name makes none.
#[test]
fn a_workload_entry_is_a_workload_outside_the_cluster() {
    let (_store, view) = built(WORKLOAD_ENTRIES);
    let vm = entry_workload(&view, "demo", "vm-1").expect("vm-1's workload");
    assert_eq!(vm.name, "vm-1");
    assert_eq!(vm.node, "");
    assert_eq!(ips(&vm.addresses), ["10.30.0.7"]);
    assert!(vm.node_address.is_empty());
    assert_eq!(vm.protocol, TunnelProtocol::None as i32);
    assert_eq!(vm.service_account, "vm");
    assert_eq!(
        vm.labels,
        BTreeMap::from([
            ("app".to_owned(), "app".to_owned()),
            ("team".to_owned(), "payments".to_owned()),
            ("version".to_owned(), "v3".to_owned()),
        ])
        .into_iter()
        .collect()
    );
    assert_eq!(
        (vm.canonical_name.as_str(), vm.canonical_revision.as_str()),
        ("app", "v3")
    );
    assert_eq!(vm.workload_name, "vm-1");
    assert_eq!(vm.locality, "region-1/zone-1");
    assert_eq!(vm.authorization_policies, ["authorization/demo/app-only"]);
    // Not the key of a pod of the same name.
    assert!(get(&view, &key::workload("demo", "vm-1")).is_none());

    let mesh_vm = entry_workload(&view, "demo", "vm-mesh").expect("vm-mesh's workload");
    assert_eq!(mesh_vm.protocol, TunnelProtocol::Hbone as i32);
    assert_eq!(ips(&[mesh_vm.node_address]), ["10.30.0.8"]);

    assert!(entry_workload(&view, "demo", "by-name").is_none());
    // No identity of theirs is served on this node.
    assert!(
        view.local_identities()
            .iter()
            .all(|id| !id.to_string().ends_with("/sa/vm")),
        "{:?}",
        view.local_identities()
    );
}

/// A Service's selector picks WorkloadEntries of its namespace as istiod
/// does: each an endpoint keyed by its workload, on its port named as a
/// named `targetPort`, else as the service port, with its weight; a Service
/// without a selector takes none, and changes to an entry or the selector
/// move it in and out.
#[test]
fn a_services_selector_picks_workload_entries() {
    let (mut store, mut view) = built(WORKLOAD_ENTRIES);
    /// (workload, address, port overrides, weight).
    type Found = (String, String, Vec<(u32, u32)>, u32);
    let endpoints = |view: &View| {
        let mut found: Vec<Found> = service(view, "demo", "vms")
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.workload.clone(),
                    ips(std::slice::from_ref(&e.address)).join(""),
                    e.ports.iter().map(|(a, b)| (*a, *b)).collect(),
                    e.weight,
                )
            })
            .collect();
        found.sort();
        found
    };
    assert_eq!(
        endpoints(&view),
        [
            (
                key::workload_entry("demo", "vm-1"),
                "10.30.0.7".to_owned(),
                vec![(80, 8081), (9000, 9444)],
                2
            ),
            (
                key::workload_entry("demo", "vm-mesh"),
                "10.30.0.8".to_owned(),
                vec![],
                0
            ),
        ]
    );
    assert!(
        service(&view, "demo", "vms")
            .endpoints
            .iter()
            .all(|e| e.ready)
    );
    // The Service without a selector: its slices' pods only.
    assert!(
        service(&view, "demo", "app")
            .endpoints
            .iter()
            .all(|e| key::is_workload(&e.workload) && !e.workload.contains("workloadentry:"))
    );

    // The entry gains a port of the service port's name.
    let keys = apply(
        &mut store,
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n\
         metadata: { name: vm-mesh, namespace: demo, labels: { networking.istio.io/tunnel: http } }\n\
         spec: { address: 10.30.0.8, ports: { http: 9443 }, labels: { app: app }, serviceAccount: vm }\n",
    );
    view.changed(&store, &keys);
    assert_eq!(endpoints(&view)[1].2, [(80, 9443)]);

    // The Service's selector moves off the entries, then back.
    let vms = |selector: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{ name: vms, namespace: demo }}\n\
             spec: {{ clusterIP: 10.96.0.30, selector: {{ {selector} }}, ports: [{{ name: http, port: 80 }}] }}\n"
        )
    };
    let keys = apply(&mut store, &vms("app: other"));
    view.changed(&store, &keys);
    assert!(endpoints(&view).is_empty());
    let keys = apply(&mut store, &vms("app: app"));
    view.changed(&store, &keys);
    assert_eq!(endpoints(&view).len(), 2);

    // Relabelled out of the selector, then deleted: each change reaches the
    // Service, and the workload goes with the entry.
    let keys = apply(
        &mut store,
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n\
         metadata: { name: vm-mesh, namespace: demo }\n\
         spec: { address: 10.30.0.8, labels: { app: other } }\n",
    );
    view.changed(&store, &keys);
    assert_eq!(endpoints(&view).len(), 1);
    let key = delete(&mut store, Kind::WorkloadEntry, "demo", "vm-1");
    view.changed(&store, &[key]);
    assert!(endpoints(&view).is_empty());
    assert!(entry_workload(&view, "demo", "vm-1").is_none());
    assert!(entry_workload(&view, "demo", "vm-mesh").is_some());
}

/// A ServiceEntry's workloadSelector picks WorkloadEntries beside pods: one
/// with an address as its workload (on the port its `ports` name), one with a
/// name only where the entry resolves names; their service accounts add to
/// the entry's names.
#[test]
fn a_service_entry_selects_workload_entries() {
    let entries = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: { name: db, namespace: demo }\n\
         spec: { hosts: [db.internal], addresses: [10.80.0.20], ports: [{ number: 5432, name: tcp-pg, protocol: TCP }],\n\
         resolution: STATIC, workloadSelector: { labels: { app: db } } }\n\
         ---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: { name: db-dns, namespace: demo }\n\
         spec: { hosts: [db-dns.internal], addresses: [10.80.0.21], ports: [{ number: 5432, name: tcp-pg, protocol: TCP }],\n\
         resolution: DNS, workloadSelector: { labels: { app: db } } }\n\
         ---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n\
         metadata: { name: db-1, namespace: demo }\n\
         spec: { address: 10.30.0.9, ports: { tcp-pg: 6432 }, labels: { app: db, role: primary }, serviceAccount: db }\n\
         ---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n\
         metadata: { name: db-2, namespace: demo }\n\
         spec: { address: db-2.example.com, labels: { app: db, role: replica }, locality: region-2/zone-1, weight: 4 }\n";
    let (mut store, mut view) = built(entries);
    let statics = entry_service(&view, "demo", "db.internal").expect("the STATIC entry");
    assert_eq!(statics.endpoints.len(), 1, "{:?}", statics.endpoints);
    let db1 = &statics.endpoints[0];
    assert_eq!(db1.workload, key::workload_entry("demo", "db-1"));
    assert_eq!(ips(std::slice::from_ref(&db1.address)), ["10.30.0.9"]);
    assert_eq!(
        db1.ports.iter().map(|(a, b)| (*a, *b)).collect::<Vec<_>>(),
        [(5432, 6432)]
    );
    assert_eq!(
        statics.subject_alt_names,
        ["spiffe://cluster.local/ns/demo/sa/db"]
    );

    let dns = entry_service(&view, "demo", "db-dns.internal").expect("the DNS entry");
    let mut found: Vec<(&str, &str, Option<&String>, &str, u32)> = dns
        .endpoints
        .iter()
        .map(|e| {
            (
                e.workload.as_str(),
                e.hostname.as_str(),
                e.labels.get("role"),
                e.locality.as_str(),
                e.weight,
            )
        })
        .collect();
    found.sort();
    let db1_key = key::workload_entry("demo", "db-1");
    let replica = "replica".to_owned();
    assert_eq!(
        found,
        [
            ("", "db-2.example.com", Some(&replica), "region-2/zone-1", 4),
            (db1_key.as_str(), "", None, "", 0),
        ]
    );

    // Relabelled out of the selector: the entries drop it.
    let keys = apply(
        &mut store,
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n\
         metadata: { name: db-1, namespace: demo }\n\
         spec: { address: 10.30.0.9, labels: { app: cache }, serviceAccount: db }\n",
    );
    view.changed(&store, &keys);
    let statics = entry_service(&view, "demo", "db.internal").expect("the STATIC entry");
    assert!(statics.endpoints.is_empty());
    assert!(statics.subject_alt_names.is_empty());
}

/// A WorkloadEntry in the mesh follows the waypoint for workloads its
/// labels name, as a pod does; one outside the mesh (plain TCP) never does.
#[test]
fn a_workload_entry_in_the_mesh_goes_through_the_waypoint_it_names() {
    let gateway = waypoint_for("waypoint", "workload", "10.244.0.9");
    let (_store, view) = built(&format!(
        "{gateway}---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n\
         metadata: {{ name: vm-mesh, namespace: demo, labels: {{ networking.istio.io/tunnel: http, istio.io/use-waypoint: waypoint }} }}\n\
         spec: {{ address: 10.30.0.8, serviceAccount: vm }}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n\
         metadata: {{ name: vm-plain, namespace: demo, labels: {{ istio.io/use-waypoint: waypoint }} }}\n\
         spec: {{ address: 10.30.0.10 }}\n"
    ));
    let through = entry_workload(&view, "demo", "vm-mesh")
        .and_then(|w| w.waypoint)
        .expect("vm-mesh's waypoint");
    assert_eq!(
        through.identity,
        "spiffe://cluster.local/ns/demo/sa/waypoint"
    );
    let plain = entry_workload(&view, "demo", "vm-plain").expect("vm-plain's workload");
    assert!(plain.waypoint.is_none());
    // Without a serviceAccount, `default` (as a pod's).
    assert_eq!(plain.service_account, "default");
}

/// A two-label host is `<service>.<namespace>` unless a ServiceEntry names
/// it: then it is that host, as written (`httpbin.org`), in a
/// VirtualService's hosts and destinations and a DestinationRule's host,
/// whichever arrives first.
#[test]
fn a_two_label_host_a_service_entry_names_is_not_a_short_name() {
    let (mut store, mut view) = built("");
    let routing = "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
         metadata: { name: httpbin, namespace: demo }\n\
         spec: { hosts: [httpbin.org], http: [{ route: [{ destination: { host: httpbin.org }, weight: 90 }, { destination: { host: app.demo }, weight: 10 }] }] }\n\
         ---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
         metadata: { name: httpbin, namespace: demo }\n\
         spec: { host: httpbin.org, trafficPolicy: { loadBalancer: { simple: RANDOM } } }\n";
    let keys = apply(&mut store, routing);
    view.changed(&store, &keys);
    let entry = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: { name: httpbin, namespace: egress }\n\
         spec: { hosts: [HTTPBIN.org, app.demo], ports: [{ number: 80, name: http, protocol: HTTP }], resolution: DNS }\n";
    let yaml = format!("{routing}---\n{entry}");
    let published = |view: &View| {
        let Some(ResourceKind::VirtualService(vs)) =
            get(view, &key::virtual_service("demo", "httpbin"))
        else {
            panic!("no VirtualService published");
        };
        let Some(ResourceKind::DestinationRule(dr)) =
            get(view, &key::destination_rule("demo", "httpbin"))
        else {
            panic!("no DestinationRule published");
        };
        let spec: serde_json::Value = serde_json::from_str(&vs.spec_json).unwrap();
        let route = |i: usize| spec["http"][0]["route"][i]["destination"]["host"].clone();
        (vs.hosts.clone(), route(0), route(1), dr.host)
    };
    // The VirtualService's host and first destination and the
    // DestinationRule's host read as `host`; `app.demo` stays the Service.
    let read_as = |host: &str| {
        (
            vec![host.to_owned()],
            serde_json::json!(host),
            serde_json::json!("app.demo.svc.cluster.local"),
            host.to_owned(),
        )
    };
    // No entry yet: read as a Service `httpbin` of namespace `org`.
    assert_eq!(published(&view), read_as("httpbin.org.svc.cluster.local"));
    // The entry arrives (in another namespace): the host is its. An entry
    // naming a Service's `<name>.<namespace>` takes nothing from it.
    let keys = apply(&mut store, entry);
    view.changed(&store, &keys);
    assert_eq!(published(&view), read_as("httpbin.org"));
    // And it goes.
    let key = delete(&mut store, Kind::ServiceEntry, "egress", "httpbin");
    view.changed(&store, &[key]);
    assert_eq!(published(&view).3, "httpbin.org.svc.cluster.local");
    // All arriving at once (a first sync).
    let (_store, view) = built(&yaml);
    assert_eq!(published(&view).3, "httpbin.org");
}

/// The BackendTLSPolicies published for `key`, or `None`.
fn backend_tls(view: &View, key: &str) -> Option<warren_api::config::BackendTls> {
    match get(view, key)? {
        ResourceKind::BackendTls(tls) => Some(tls),
        other => panic!("{key} is not a BackendTls: {other:?}"),
    }
}

/// ConfigMap `demo/app-ca` with `ca.crt` holding `text`.
fn app_ca(text: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: app-ca, namespace: demo }}\ndata: {{ ca.crt: {text:?} }}\n"
    )
}

/// (port, policy, CA bytes as text, system roots, error) of each port entry.
fn tls_ports(tls: &warren_api::config::BackendTls) -> Vec<(u32, String, String, bool, String)> {
    tls.ports
        .iter()
        .map(|p| {
            (
                p.port,
                p.policy.clone(),
                String::from_utf8_lossy(&p.ca_certificates).into_owned(),
                p.system_roots,
                p.error.clone(),
            )
        })
        .collect()
}

const BACKEND_TLS: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: { name: app-ca, namespace: demo }
data: { ca.crt: CA-A }
---
apiVersion: v1
kind: ConfigMap
metadata: { name: extra-ca, namespace: demo }
data: { ca.crt: CA-B }
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: { name: whole, namespace: demo, creationTimestamp: "2026-01-01T00:00:01Z" }
spec:
  targetRefs: [{ group: "", kind: Service, name: app }]
  validation:
    caCertificateRefs: [{ group: "", kind: ConfigMap, name: app-ca }, { group: "", kind: ConfigMap, name: extra-ca }]
    hostname: app.demo.example
    subjectAltNames: [{ type: URI, uri: "spiffe://cluster.local/ns/demo/sa/app" }]
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: { name: later-whole, namespace: demo, creationTimestamp: "2026-01-01T00:00:03Z" }
spec:
  targetRefs: [{ group: "", kind: Service, name: app }]
  validation: { wellKnownCACertificates: System, hostname: later.example }
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: { name: admin-port, namespace: demo, creationTimestamp: "2026-01-01T00:00:05Z" }
spec:
  targetRefs:
  - { group: "", kind: Service, name: app, sectionName: admin }
  - { group: "", kind: Service, name: app, sectionName: nope }
  - { group: "", kind: Service, name: missing }
  validation: { wellKnownCACertificates: System, hostname: admin.demo.example }
"#;

#[test]
fn backend_tls_policies_reach_waypoints_port_by_port_with_their_ca_bundles() {
    // The second bundle ends with a newline, the first does not.
    let yaml = BACKEND_TLS
        .replace("CA-A", &format!("{:?}", pem("A")))
        .replace("CA-B", &format!("{:?}", format!("{}\n", pem("B"))));
    let (mut store, mut view) = built(&yaml);
    let key = key::backend_tls("demo", "app");
    let tls = backend_tls(&view, &key).expect("published");
    assert_eq!(tls.namespace, "demo");
    assert_eq!(tls.hosts, ["app.demo.svc.cluster.local"]);
    // The port a policy names by section, whatever its age; then the oldest
    // policy for the whole Service; a section naming no port, and a Service
    // that does not exist, make nothing.
    assert_eq!(
        tls_ports(&tls),
        [
            (
                9000,
                "demo/admin-port".into(),
                String::new(),
                true,
                String::new()
            ),
            (
                0,
                "demo/whole".into(),
                format!("{}\n{}\n", pem("A"), pem("B")),
                false,
                String::new()
            ),
        ]
    );
    assert_eq!(tls.ports[1].hostname, "app.demo.example");
    // Names by type: a URI is matched with URIs alone.
    assert!(tls.ports[1].subject_alt_names.is_empty());
    assert_eq!(
        tls.ports[1].uri_subject_alt_names,
        ["spiffe://cluster.local/ns/demo/sa/app"]
    );
    assert!(backend_tls(&view, &key::backend_tls("demo", "missing")).is_none());
    // Waypoints only.
    assert!(!keys_for(&view, &Audience::Ztunnel).contains(&key));
    assert!(
        keys_for(
            &view,
            &Audience::Waypoint {
                namespace: "plain".into()
            }
        )
        .contains(&key)
    );

    // A renewed bundle is published again.
    let changed = apply(&mut store, &app_ca(&pem("C")));
    view.changed(&store, &changed);
    let tls = backend_tls(&view, &key).unwrap();
    assert_eq!(
        tls_ports(&tls)[1].2,
        format!("{}\n{}\n", pem("C"), pem("B"))
    );
    // A ca.crt without a certificate in it fails the policy here, naming
    // the ConfigMap, rather than at the waypoint.
    for (text, why) in [
        ("not a certificate", "holds no PEM certificate"),
        (
            "-----BEGIN CERTIFICATE-----\n%%%\n-----END CERTIFICATE-----",
            "cannot be read",
        ),
        // Base64 of no certificate: the waypoint could not trust it.
        (
            "-----BEGIN CERTIFICATE-----\nQQ==\n-----END CERTIFICATE-----",
            "cannot be a trust anchor",
        ),
    ] {
        let changed = apply(&mut store, &app_ca(text));
        view.changed(&store, &changed);
        let ports = tls_ports(&backend_tls(&view, &key).unwrap());
        assert!(
            ports[1].4.contains("demo/app-ca") && ports[1].4.contains(why),
            "{text:?}: {ports:?}"
        );
    }
    let changed = apply(&mut store, &app_ca(&pem("C")));
    view.changed(&store, &changed);
    // One reference that cannot be read fails the policy whole, closed,
    // saying why; the other port keeps its own policy.
    let changed = apply(
        &mut store,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: extra-ca, namespace: demo }\ndata: { other: x }\n",
    );
    view.changed(&store, &changed);
    let ports = tls_ports(&backend_tls(&view, &key).unwrap());
    assert_eq!(ports[0].1, "demo/admin-port");
    assert_eq!(ports[1].2, "");
    assert!(
        ports[1].4.contains("extra-ca") && ports[1].4.contains("no \"ca.crt\""),
        "{ports:?}"
    );
    let gone = delete(&mut store, Kind::ConfigMap, "demo", "app-ca");
    view.changed(&store, &[gone]);
    let ports = tls_ports(&backend_tls(&view, &key).unwrap());
    assert!(
        ports[1].4.contains("demo/app-ca") && ports[1].4.contains("not found"),
        "{ports:?}"
    );

    // The oldest whole-Service policy gone, the next takes its place.
    let gone = delete(&mut store, Kind::BackendTlsPolicy, "demo", "whole");
    view.changed(&store, &[gone]);
    let ports = tls_ports(&backend_tls(&view, &key).unwrap());
    assert_eq!(
        ports[1],
        (
            0,
            "demo/later-whole".into(),
            String::new(),
            true,
            String::new()
        )
    );
    // A port renamed: the policy naming it no longer applies there.
    let changed = apply(
        &mut store,
        "apiVersion: v1\nkind: Service\nmetadata: { name: app, namespace: demo }\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{ name: http, port: 80 }, { name: metrics, port: 9000 }]\n",
    );
    view.changed(&store, &changed);
    let ports = tls_ports(&backend_tls(&view, &key).unwrap());
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0].1, "demo/later-whole");
    // Every policy gone: withdrawn.
    for name in ["later-whole", "admin-port"] {
        let gone = delete(&mut store, Kind::BackendTlsPolicy, "demo", name);
        view.changed(&store, &[gone]);
    }
    assert!(backend_tls(&view, &key).is_none());
}

#[test]
fn a_backend_tls_policy_for_a_service_entry_names_its_hosts() {
    let (mut store, mut view) = built(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: partner, namespace: demo }
spec:
  hosts: [Partner.Example., app.demo.svc.cluster.local]
  ports: [{ number: 80, name: http, protocol: HTTP }, { number: 8443, name: admin, protocol: HTTP }]
  resolution: DNS
---
# Gateway API 1.2 and 1.3 serve v1alpha3, which has v1's fields.
apiVersion: gateway.networking.k8s.io/v1alpha3
kind: BackendTLSPolicy
metadata: { name: partner, namespace: demo }
spec:
  targetRefs: [{ group: networking.istio.io, kind: ServiceEntry, name: partner, sectionName: http }]
  validation: { wellKnownCACertificates: System, hostname: partner.example }
"#,
    );
    let key = key::service_entry_backend_tls("demo", "partner");
    // Its hosts as DNS compares them; never a cluster Service's name.
    let tls = backend_tls(&view, &key).expect("published");
    assert_eq!(tls.hosts, ["partner.example"]);
    assert_eq!(
        tls_ports(&tls),
        [(
            80,
            "demo/partner".into(),
            String::new(),
            true,
            String::new()
        )]
    );
    // The policy arriving after its entry, or the entry after it: the same.
    let gone = delete(&mut store, Kind::ServiceEntry, "demo", "partner");
    view.changed(&store, &[gone]);
    assert!(backend_tls(&view, &key).is_none());
    let back = apply(
        &mut store,
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: partner, namespace: demo }\nspec:\n  hosts: [partner.example]\n  ports: [{ number: 443, name: http, protocol: HTTP }]\n  resolution: DNS\n",
    );
    view.changed(&store, &back);
    assert_eq!(
        tls_ports(&backend_tls(&view, &key).unwrap())[0].0,
        443,
        "the port the section names now"
    );
}

#[test]
fn a_backend_tls_policy_warren_cannot_honour_holds_its_ports_closed() {
    let (_, view) = built(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: { name: zeta, namespace: demo, creationTimestamp: "2026-01-01T00:00:01Z" }
spec:
  targetRefs: [{ group: "", kind: Service, name: app }]
  validation: { wellKnownCACertificates: System, hostname: zeta.example }
---
# As old as zeta: the first by name wins.
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: { name: alpha, namespace: demo, creationTimestamp: "2026-01-01T00:00:01Z" }
spec:
  targetRefs: [{ group: "", kind: Service, name: app }]
  validation: { wellKnownCACertificates: System, hostname: alpha.example }
---
# A CA bundle of a kind Warren does not read, and a target of a kind it
# does not apply policies to: the policy holds port http, closed.
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: { name: secret-ca, namespace: demo }
spec:
  targetRefs:
  - { group: "", kind: Service, name: app, sectionName: http }
  - { group: inference.networking.k8s.io, kind: InferencePool, name: llm }
  validation:
    caCertificateRefs: [{ group: "", kind: Secret, name: app-ca }]
    hostname: app.demo.example
  options: { example.com/min-version: "1.3" }
"#,
    );
    let ports = tls_ports(&backend_tls(&view, &key::backend_tls("demo", "app")).unwrap());
    assert_eq!(ports.len(), 2, "{ports:?}");
    assert_eq!((ports[0].0, ports[0].1.as_str()), (80, "demo/secret-ca"));
    assert!(
        ports[0].4.contains("caCertificateRefs[0]")
            && ports[0].4.contains("options.example.com/min-version")
            && ports[0].2.is_empty(),
        "{ports:?}"
    );
    assert_eq!(
        ports[1],
        (0, "demo/alpha".into(), String::new(), true, String::new())
    );
}
