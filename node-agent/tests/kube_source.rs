//! The kube source against recorded API server responses (kube's mock
//! service): lists, watch events (ADDED, MODIFIED, DELETED, BOOKMARK), a
//! `410 Gone` that forces a relist during which an object vanished, the pod
//! field selector, and an invalid object refused on its own.

use std::time::Duration;

use http::{Request, Response};
use kube::{Client, client::Body};
use serde_json::{Value, json};
use tokio::{sync::mpsc, time::timeout};
use warren_node_agent::{
    model::Kind,
    source::{SourceEvent, kube::KubeSource},
};

fn namespace(name: &str, rv: &str, ambient: bool) -> Value {
    let labels = if ambient {
        json!({ "warren.io/dataplane-mode": "ambient" })
    } else {
        json!({})
    };
    json!({ "metadata": { "name": name, "resourceVersion": rv, "labels": labels } })
}

fn list(kind: &str, rv: &str, items: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": kind, "metadata": { "resourceVersion": rv }, "items": items
    }))
    .expect("JSON")
}

/// A watch response: one JSON event per line.
fn watch(events: &[Value]) -> Vec<u8> {
    let mut body = Vec::new();
    for e in events {
        body.extend(serde_json::to_vec(e).expect("JSON"));
        body.push(b'\n');
    }
    body
}

fn typed(api_version: &str, kind: &str, mut object: Value) -> Value {
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(kind);
    object
}

/// Answers the source's requests from a script. Watches past the script
/// are left pending, as an idle API server would.
async fn api_server(mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>) {
    let mut calls: std::collections::HashMap<(String, bool), usize> = Default::default();
    let mut held = Vec::new();
    while let Some((request, send)) = handle.next_request().await {
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let is_watch = query.contains("watch=true");
        let n = {
            let c = calls.entry((path.clone(), is_watch)).or_default();
            *c += 1;
            *c
        };
        let body = match (path.as_str(), is_watch, n) {
            ("/api/v1/namespaces", false, 1) => list(
                "NamespaceList",
                "10",
                vec![
                    namespace("default", "8", true),
                    namespace("old", "9", false),
                ],
            ),
            ("/api/v1/namespaces", true, 1) => watch(&[
                json!({ "type": "ADDED", "object": typed("v1", "Namespace", namespace("shop", "11", true)) }),
                json!({ "type": "MODIFIED", "object": typed("v1", "Namespace", namespace("default", "12", false)) }),
                json!({ "type": "BOOKMARK", "object": { "kind": "Namespace", "apiVersion": "v1", "metadata": { "resourceVersion": "13" } } }),
                json!({ "type": "ERROR", "object": { "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410, "message": "too old resource version" } }),
            ]),
            // The relist: "old" was deleted while the watch was down.
            ("/api/v1/namespaces", false, 2) => list(
                "NamespaceList",
                "20",
                vec![
                    namespace("default", "12", false),
                    namespace("shop", "11", true),
                ],
            ),
            ("/api/v1/pods", false, 1) => {
                // Every node's pods: the view describes remote workloads too.
                assert!(
                    !query.contains("fieldSelector"),
                    "pods listed for one node only: {query}"
                );
                let pod = json!({ "metadata": { "name": "web", "namespace": "shop", "resourceVersion": "5" }, "spec": { "nodeName": "n0", "containers": [] } });
                let remote = json!({ "metadata": { "name": "db", "namespace": "shop", "resourceVersion": "4" }, "spec": { "nodeName": "n1", "containers": [] } });
                list("PodList", "5", vec![pod, remote])
            }
            ("/api/v1/pods", true, 1) => {
                let pod = json!({ "metadata": { "name": "web", "namespace": "shop", "resourceVersion": "6" }, "spec": { "nodeName": "n0", "containers": [] } });
                watch(&[json!({ "type": "DELETED", "object": typed("v1", "Pod", pod) })])
            }
            ("/apis/security.istio.io/v1/peerauthentications", false, 1) => {
                let good = json!({ "metadata": { "name": "strict", "namespace": "shop", "resourceVersion": "3" }, "spec": { "mtls": { "mode": "STRICT" } } });
                let bad = json!({ "metadata": { "name": "broken", "namespace": "shop", "resourceVersion": "4" }, "spec": { "mtls": { "mode": "SORTOF" } } });
                list("PeerAuthenticationList", "4", vec![good, bad])
            }
            _ if is_watch => {
                held.push(send);
                continue;
            }
            other => panic!("unexpected request {other:?} {query}"),
        };
        send.send_response(Response::new(Body::from(body)));
    }
}

#[tokio::test]
async fn lists_watches_and_relists_after_410() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(api_server(handle));
    let client = Client::new(service, "default");
    let source = KubeSource::with_kinds(
        client,
        vec![Kind::Namespace, Kind::Pod, Kind::PeerAuthentication],
    );
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(source.run(tx));

    let mut log: Vec<String> = Vec::new();
    while let Ok(Some(event)) = timeout(Duration::from_secs(2), rx.recv()).await {
        log.push(match event {
            SourceEvent::Upsert(o) => format!("upsert {}", o.key()),
            SourceEvent::Rejected { key, error } => format!(
                "rejected {} {error}",
                key.map(|k| k.to_string()).unwrap_or_default()
            ),
            SourceEvent::Delete(k) => format!("delete {k}"),
            SourceEvent::Synced => "synced".into(),
            SourceEvent::FileParsed(f) => format!("file parsed {f}"),
        });
        if log.iter().any(|l| l == "delete Namespace old")
            && log.iter().any(|l| l == "delete Pod shop/web")
        {
            break;
        }
    }
    let at = |needle: &str| {
        log.iter()
            .position(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in {log:#?}"))
    };
    let synced = at("synced");
    // Everything listed comes before Synced; the invalid object alone is refused.
    for listed in [
        "upsert Namespace default",
        "upsert Namespace old",
        "upsert Pod shop/db",
        "upsert Pod shop/web",
        "upsert PeerAuthentication shop/strict",
    ] {
        assert!(at(listed) < synced, "{listed} after synced: {log:#?}");
    }
    let refused = &log[at("rejected PeerAuthentication shop/broken")];
    assert!(refused.contains("spec.mtls.mode"), "{refused}");
    // Watch events, then the relist's deletion of what vanished meanwhile.
    assert!(at("upsert Namespace shop") > synced);
    assert!(at("delete Namespace old") > at("upsert Namespace shop"));
    assert!(at("delete Pod shop/web") > synced);
    assert_eq!(
        log.iter().filter(|l| *l == "synced").count(),
        1,
        "synced twice: {log:#?}"
    );
}

/// An API server that lists namespace `shop`, answers the paths of
/// `answers` (lists and discovery) as given, holds every watch, and knows
/// nothing else (404).
async fn scripted(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    answers: Vec<(&'static str, http::StatusCode, Value)>,
) {
    let mut held = Vec::new();
    while let Some((request, send)) = handle.next_request().await {
        let path = request.uri().path().to_owned();
        let is_watch = request
            .uri()
            .query()
            .unwrap_or_default()
            .contains("watch=true");
        if is_watch {
            held.push(send);
            continue;
        }
        let (status, body) = match answers.iter().find(|(p, _, _)| *p == path) {
            Some((_, status, body)) => (*status, body.clone()),
            None if path == "/api/v1/namespaces" => (
                http::StatusCode::OK,
                serde_json::from_slice(&list(
                    "NamespaceList",
                    "10",
                    vec![namespace("shop", "9", true)],
                ))
                .expect("JSON"),
            ),
            None => (http::StatusCode::NOT_FOUND, status(404, &path)),
        };
        let mut response = Response::new(Body::from(serde_json::to_vec(&body).expect("JSON")));
        *response.status_mut() = status;
        send.send_response(response);
    }
}

/// A refusal as the API server words it.
fn status(code: u16, path: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "code": code, "message": format!("{path}: refused")
    })
}

/// What discovery says is served at a group version.
fn resources(group_version: &str, plurals: &[&str]) -> Value {
    let resources: Vec<Value> = plurals
        .iter()
        .map(|p| json!({ "name": p, "singularName": "", "namespaced": true, "kind": "", "verbs": ["list", "watch"] }))
        .collect();
    json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources })
}

/// The events of `source` up to its first sync (or 5 s without one).
async fn until_synced(source: KubeSource) -> Vec<String> {
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(source.run(tx));
    let mut log = Vec::new();
    while let Ok(Some(event)) = timeout(Duration::from_secs(5), rx.recv()).await {
        let synced = matches!(event, SourceEvent::Synced);
        log.push(match event {
            SourceEvent::Upsert(o) => format!("upsert {}", o.key()),
            SourceEvent::Synced => "synced".into(),
            other => format!("{other:?}"),
        });
        if synced {
            break;
        }
    }
    log
}

#[tokio::test]
async fn a_forbidden_node_watch_does_not_hold_the_first_sync_back() {
    // A ClusterRole from before Warren read Nodes.
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let forbidden = http::StatusCode::FORBIDDEN;
    tokio::spawn(scripted(
        handle,
        vec![("/api/v1/nodes", forbidden, status(403, "nodes"))],
    ));
    let client = Client::new(service, "default");
    let source = KubeSource::with_kinds(client, vec![Kind::Namespace, Kind::Node]);
    let log = until_synced(source).await;
    assert_eq!(log, vec!["upsert Namespace shop", "synced"], "{log:?}");
}

#[tokio::test]
async fn experimental_gateway_routes_not_installed_do_not_hold_the_first_sync_back() {
    // A cluster with the Gateway API's standard CRDs only, from before
    // BackendTLSPolicy was among them: discovery lists no TLSRoute and no
    // BackendTLSPolicy, and their lists are not found.
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ok = http::StatusCode::OK;
    let v1 = resources("gateway.networking.k8s.io/v1", &["httproutes", "gateways"]);
    tokio::spawn(scripted(
        handle,
        vec![("/apis/gateway.networking.k8s.io/v1", ok, v1)],
    ));
    let client = Client::new(service, "default");
    let source = KubeSource::with_kinds(
        client,
        vec![
            Kind::Namespace,
            Kind::TcpRoute,
            Kind::TlsRoute,
            Kind::BackendTlsPolicy,
        ],
    );
    let log = until_synced(source).await;
    assert_eq!(log, vec!["upsert Namespace shop", "synced"], "{log:?}");
}

#[tokio::test]
async fn a_forbidden_route_kind_holds_the_first_sync_back() {
    // A ClusterRole from before Warren read TCPRoutes: they change where
    // connections go, so the agent does not go on without them.
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let forbidden = http::StatusCode::FORBIDDEN;
    tokio::spawn(scripted(
        handle,
        vec![(
            "/apis/gateway.networking.k8s.io/v1alpha2/tcproutes",
            forbidden,
            status(403, "tcproutes"),
        )],
    ));
    let client = Client::new(service, "default");
    let source = KubeSource::with_kinds(client, vec![Kind::Namespace, Kind::TcpRoute]);
    let log = until_synced(source).await;
    assert_eq!(log, vec!["upsert Namespace shop"], "{log:?}");
}

/// A forbidden BackendTLSPolicy listing holds the agent's first sync back
/// (a policy decides whether servers are reached over TLS), but not that of
/// a reader told it may go on without it (the status writer, whose routes'
/// status should not wait on a ClusterRole from before policy status).
#[tokio::test]
async fn a_forbidden_kind_may_be_let_go_by_a_reader_that_writes_status() {
    for let_go in [false, true] {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let forbidden = http::StatusCode::FORBIDDEN;
        tokio::spawn(scripted(
            handle,
            ["v1", "v1alpha3"]
                .map(|version| {
                    let path: &'static str = match version {
                        "v1" => "/apis/gateway.networking.k8s.io/v1/backendtlspolicies",
                        _ => "/apis/gateway.networking.k8s.io/v1alpha3/backendtlspolicies",
                    };
                    (path, forbidden, status(403, "backendtlspolicies"))
                })
                .to_vec(),
        ));
        let client = Client::new(service, "default");
        let mut source =
            KubeSource::with_kinds(client, vec![Kind::Namespace, Kind::BackendTlsPolicy]);
        if let_go {
            source = source.with_optional_kinds(&[Kind::BackendTlsPolicy]);
        }
        let log = until_synced(source).await;
        let expected: &[&str] = if let_go {
            &["upsert Namespace shop", "synced"]
        } else {
            &["upsert Namespace shop"]
        };
        assert_eq!(log, expected, "let go: {let_go}");
    }
}

/// WorkloadEntries are read from the API server; a cluster without Istio's
/// CRD for them (404) starts without them, while a ClusterRole that does
/// not allow reading them (403) holds the first sync: an entry decides how a
/// workload is reached.
#[tokio::test]
async fn workload_entries_are_read_and_only_a_missing_crd_is_skipped() {
    const PATH: &str = "/apis/networking.istio.io/v1/workloadentries";
    let kinds = vec![Kind::Namespace, Kind::WorkloadEntry];
    let entry = json!({ "metadata": { "name": "vm-1", "namespace": "shop", "resourceVersion": "7" },
        "spec": { "address": "10.20.0.7", "labels": { "app": "details" } } });
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let listed: Value =
        serde_json::from_slice(&list("WorkloadEntryList", "7", vec![entry])).expect("JSON");
    tokio::spawn(scripted(handle, vec![(PATH, http::StatusCode::OK, listed)]));
    let source = KubeSource::with_kinds(Client::new(service, "default"), kinds.clone());
    let mut log = until_synced(source).await;
    log.sort();
    assert_eq!(
        log,
        [
            "synced",
            "upsert Namespace shop",
            "upsert WorkloadEntry shop/vm-1"
        ],
        "{log:?}"
    );

    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(scripted(handle, Vec::new()));
    let source = KubeSource::with_kinds(Client::new(service, "default"), kinds.clone());
    let log = until_synced(source).await;
    assert_eq!(log, vec!["upsert Namespace shop", "synced"], "{log:?}");

    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let forbidden = http::StatusCode::FORBIDDEN;
    tokio::spawn(scripted(
        handle,
        vec![(PATH, forbidden, status(403, "workloadentries"))],
    ));
    let source = KubeSource::with_kinds(Client::new(service, "default"), kinds);
    let log = until_synced(source).await;
    assert_eq!(log, vec!["upsert Namespace shop"], "{log:?}");
}

#[tokio::test]
async fn a_kind_is_watched_at_the_version_the_cluster_serves() {
    // CRDs of a Gateway API release serving TLSRoute at v1alpha3 only:
    // neither the newest nor the fallback version.
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ok = http::StatusCode::OK;
    let route = json!({
        "metadata": { "name": "secure", "namespace": "shop", "resourceVersion": "7" },
        "spec": {
            "parentRefs": [{ "group": "", "kind": "Service", "name": "db" }],
            "rules": [{ "backendRefs": [{ "name": "db", "port": 443 }] }],
        },
    });
    let routes: Value =
        serde_json::from_slice(&list("TLSRouteList", "7", vec![route])).expect("JSON");
    tokio::spawn(scripted(
        handle,
        vec![
            (
                "/apis/gateway.networking.k8s.io/v1",
                ok,
                resources("gateway.networking.k8s.io/v1", &["httproutes"]),
            ),
            (
                "/apis/gateway.networking.k8s.io/v1alpha3",
                ok,
                resources("gateway.networking.k8s.io/v1alpha3", &["tlsroutes"]),
            ),
            (
                "/apis/gateway.networking.k8s.io/v1alpha3/tlsroutes",
                ok,
                routes,
            ),
        ],
    ));
    let client = Client::new(service, "default");
    let source = KubeSource::with_kinds(client, vec![Kind::Namespace, Kind::TlsRoute]);
    let mut log = until_synced(source).await;
    log.sort();
    assert_eq!(
        log,
        vec![
            "synced",
            "upsert Namespace shop",
            "upsert TLSRoute shop/secure"
        ],
        "{log:?}"
    );
}

/// Answers with the mesh config's ConfigMap, checking that it is asked for
/// in its namespace and by name alone.
async fn mesh_config_server(mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>) {
    let mut held = Vec::new();
    while let Some((request, send)) = handle.next_request().await {
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        if query.contains("watch=true") {
            held.push(send);
            continue;
        }
        let body = match path.as_str() {
            "/api/v1/namespaces" => list("NamespaceList", "10", vec![namespace("shop", "9", true)]),
            "/api/v1/namespaces/istio-system/configmaps" => {
                assert!(
                    query.contains("fieldSelector=metadata.name%3Distio"),
                    "the ConfigMaps are not selected by name: {query}"
                );
                let map = json!({
                    "metadata": { "name": "istio", "namespace": "istio-system", "resourceVersion": "7" },
                    "data": { "mesh": "extensionProviders:\n- name: opa\n  envoyExtAuthzGrpc: {service: opa.opa.svc.cluster.local, port: 9191}\n" }
                });
                list("ConfigMapList", "7", vec![map])
            }
            other => panic!("unexpected request {other} {query}"),
        };
        send.send_response(Response::new(Body::from(body)));
    }
}

#[tokio::test]
async fn the_mesh_config_is_the_one_configmap_read() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(mesh_config_server(handle));
    let client = Client::new(service, "default");
    let source = KubeSource::with_kinds(client, vec![Kind::Namespace])
        .with_mesh_config("istio-system".into(), "istio".into());
    let mut log = until_synced(source).await;
    log.sort();
    assert_eq!(
        log,
        vec![
            "synced",
            "upsert ConfigMap istio-system/istio",
            "upsert Namespace shop"
        ],
        "{log:?}"
    );
}

#[tokio::test]
async fn a_forbidden_mesh_config_does_not_hold_the_first_sync_back() {
    // A chart from before the mesh config was read: without its providers,
    // CUSTOM policies fail closed, so the agent may go on.
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let forbidden = http::StatusCode::FORBIDDEN;
    tokio::spawn(scripted(
        handle,
        vec![(
            "/api/v1/namespaces/istio-system/configmaps",
            forbidden,
            status(403, "configmaps"),
        )],
    ));
    let client = Client::new(service, "default");
    let source = KubeSource::with_kinds(client, vec![Kind::Namespace])
        .with_mesh_config("istio-system".into(), "istio".into());
    let log = until_synced(source).await;
    assert_eq!(log, vec!["upsert Namespace shop", "synced"], "{log:?}");
}

/// Answers Secrets and ConfigMaps of `egress` (checking the Secrets' type
/// selector, and that the mesh config, there too, is read by its own watch
/// and by no other) and refuses those of `locked` (no Role there); any
/// other request fails the test: the agent reads the namespaces it was
/// given, never cluster-wide.
async fn secrets_server(mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>) {
    let mut held = Vec::new();
    while let Some((request, send)) = handle.next_request().await {
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        if query.contains("watch=true") {
            held.push(send);
            continue;
        }
        let (code, body) = match path.as_str() {
            "/api/v1/namespaces" => (
                200,
                list("NamespaceList", "10", vec![namespace("shop", "9", true)]),
            ),
            "/api/v1/namespaces/egress/secrets" => {
                assert!(
                    query.contains("fieldSelector=type%21%3Dhelm.sh%2Frelease.v1%2Ctype%21%3Dkubernetes.io%2Fservice-account-token"),
                    "Helm releases and tokens are not left out: {query}"
                );
                let secret = json!({
                    "metadata": { "name": "partner", "namespace": "egress", "resourceVersion": "7" },
                    "type": "kubernetes.io/tls",
                    "data": { "tls.crt": "Q0VSVA==", "tls.key": "S0VZ" }
                });
                (200, list("SecretList", "7", vec![secret]))
            }
            "/api/v1/namespaces/egress/configmaps"
                if query.contains("fieldSelector=metadata.name%3Distio") =>
            {
                let mesh = json!({
                    "metadata": { "name": "istio", "namespace": "egress", "resourceVersion": "9" },
                    "data": { "mesh": "" }
                });
                (200, list("ConfigMapList", "9", vec![mesh]))
            }
            "/api/v1/namespaces/egress/configmaps" => {
                assert!(
                    query.contains("fieldSelector=metadata.name%21%3Distio"),
                    "the namespace's other ConfigMaps leave the mesh config to its own watch: {query}"
                );
                // An application's `mesh` key, no mesh config: it must not
                // have the bundle beside it refused.
                let ca = json!({
                    "metadata": { "name": "partner-ca", "namespace": "egress", "resourceVersion": "8" },
                    "data": { "ca.crt": "PEM", "mesh": "[not, mesh, config" }
                });
                (200, list("ConfigMapList", "8", vec![ca]))
            }
            "/api/v1/namespaces/locked/secrets" | "/api/v1/namespaces/locked/configmaps" => {
                (403, serde_json::to_vec(&status(403, &path)).expect("JSON"))
            }
            other => panic!("unexpected request {other} {query}"),
        };
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = http::StatusCode::from_u16(code).expect("status");
        send.send_response(response);
    }
}

#[tokio::test]
async fn secrets_are_read_only_in_the_namespaces_given() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(secrets_server(handle));
    let client = Client::new(service, "default");
    let source = KubeSource::with_kinds(client, vec![Kind::Namespace, Kind::Secret])
        .with_mesh_config("egress".into(), "istio".into())
        .with_secret_namespaces(vec!["locked".into(), "egress".into(), "egress".into()]);
    let mut log = until_synced(source).await;
    log.sort();
    // A namespace without a Role does not hold the first sync back: its
    // credentialNames and CA bundles fail closed.
    assert_eq!(
        log,
        vec![
            "synced",
            "upsert ConfigMap egress/istio",
            "upsert ConfigMap egress/partner-ca",
            "upsert Namespace shop",
            "upsert Secret egress/partner"
        ],
        "{log:?}"
    );
}

/// Lists one Secret of `egress`, then refuses every watch and list there
/// (403): the agent's Role was taken away.
async fn revoking_server(mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>) {
    let mut held = Vec::new();
    let mut lists = 0;
    let mut map_lists = 0;
    while let Some((request, send)) = handle.next_request().await {
        let path = request.uri().path().to_owned();
        let is_watch = request
            .uri()
            .query()
            .unwrap_or_default()
            .contains("watch=true");
        let (code, body) = match (path.as_str(), is_watch) {
            ("/api/v1/namespaces", false) => (
                200,
                list("NamespaceList", "10", vec![namespace("shop", "9", true)]),
            ),
            ("/api/v1/namespaces", true) => {
                held.push(send);
                continue;
            }
            ("/api/v1/namespaces/egress/secrets", false) => {
                lists += 1;
                if lists == 1 {
                    let secret = json!({
                        "metadata": { "name": "partner", "namespace": "egress", "resourceVersion": "7" },
                        "data": { "cacert": "Q0E=" }
                    });
                    (200, list("SecretList", "7", vec![secret]))
                } else {
                    (403, serde_json::to_vec(&status(403, &path)).expect("JSON"))
                }
            }
            ("/api/v1/namespaces/egress/secrets", true) => {
                (403, serde_json::to_vec(&status(403, &path)).expect("JSON"))
            }
            ("/api/v1/namespaces/egress/configmaps", false) => {
                map_lists += 1;
                if map_lists == 1 {
                    let ca = json!({
                        "metadata": { "name": "partner-ca", "namespace": "egress", "resourceVersion": "3" },
                        "data": { "ca.crt": "PEM" }
                    });
                    (200, list("ConfigMapList", "3", vec![ca]))
                } else {
                    (403, serde_json::to_vec(&status(403, &path)).expect("JSON"))
                }
            }
            ("/api/v1/namespaces/egress/configmaps", true) => {
                (403, serde_json::to_vec(&status(403, &path)).expect("JSON"))
            }
            (other, _) => panic!("unexpected request {other}"),
        };
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = http::StatusCode::from_u16(code).expect("status");
        send.send_response(response);
    }
}

#[tokio::test]
async fn secrets_no_longer_readable_are_withdrawn() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(revoking_server(handle));
    let client = Client::new(service, "default");
    let source = KubeSource::with_kinds(client, vec![Kind::Namespace])
        .with_secret_namespaces(vec!["egress".into()]);
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(source.run(tx));
    let mut log = Vec::new();
    let mut deletes = 0;
    while let Ok(Some(event)) = timeout(Duration::from_secs(10), rx.recv()).await {
        deletes += usize::from(matches!(event, SourceEvent::Delete(_)));
        log.push(match event {
            SourceEvent::Upsert(o) => format!("upsert {}", o.key()),
            SourceEvent::Delete(key) => format!("delete {key}"),
            SourceEvent::Synced => "synced".into(),
            other => format!("{other:?}"),
        });
        if deletes == 2 {
            break;
        }
    }
    for read in ["Secret egress/partner", "ConfigMap egress/partner-ca"] {
        let (upsert, delete) = (format!("upsert {read}"), format!("delete {read}"));
        let at = |line: &str| log.iter().position(|l| l == line);
        assert!(
            at(&upsert).is_some() && at(&upsert) < at(&delete),
            "what the agent may no longer read is withdrawn: {log:?}"
        );
    }
}

/// An API server whose Gateway API CRDs serve TLSRoute at `v1alpha3` only
/// once `installed` is set (CRDs installed after the agent started).
async fn installing(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    installed: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let route = json!({
        "metadata": { "name": "secure", "namespace": "shop", "resourceVersion": "7" },
        "spec": {
            "parentRefs": [{ "group": "", "kind": "Service", "name": "db" }],
            "rules": [{ "backendRefs": [{ "name": "db", "port": 443 }] }],
        },
    });
    let mut held = Vec::new();
    while let Some((request, send)) = handle.next_request().await {
        let path = request.uri().path().to_owned();
        if request
            .uri()
            .query()
            .unwrap_or_default()
            .contains("watch=true")
        {
            held.push(send);
            continue;
        }
        let now = installed.load(std::sync::atomic::Ordering::SeqCst);
        let ok = http::StatusCode::OK;
        let (status, body): (http::StatusCode, Value) = match path.as_str() {
            "/api/v1/namespaces" => (
                ok,
                serde_json::from_slice(&list(
                    "NamespaceList",
                    "10",
                    vec![namespace("shop", "9", true)],
                ))
                .expect("JSON"),
            ),
            "/apis/gateway.networking.k8s.io/v1" => (
                ok,
                resources("gateway.networking.k8s.io/v1", &["httproutes"]),
            ),
            "/apis/gateway.networking.k8s.io/v1alpha3" if now => (
                ok,
                resources("gateway.networking.k8s.io/v1alpha3", &["tlsroutes"]),
            ),
            "/apis/gateway.networking.k8s.io/v1alpha3/tlsroutes" if now => (
                ok,
                serde_json::from_slice(&list("TLSRouteList", "7", vec![route.clone()]))
                    .expect("JSON"),
            ),
            _ => (http::StatusCode::NOT_FOUND, status(404, &path)),
        };
        let mut response = Response::new(Body::from(serde_json::to_vec(&body).expect("JSON")));
        *response.status_mut() = status;
        send.send_response(response);
    }
}

#[tokio::test(start_paused = true)]
async fn a_crd_installed_later_at_another_version_is_watched_there() {
    // At the start no version serves TLSRoute: its watch (at the fallback
    // version) finds nothing and the first sync goes on without it. Then
    // the CRDs come, serving it at v1alpha3 only: without a restart, the
    // agent finds them there and lists the route.
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let installed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(installing(handle, std::sync::Arc::clone(&installed)));
    let client = Client::new(service, "default");
    let source = KubeSource::with_kinds(client, vec![Kind::Namespace, Kind::TlsRoute]);
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(source.run(tx));
    let mut log = Vec::new();
    let mut next = async || match timeout(Duration::from_secs(900), rx.recv()).await {
        Ok(Some(SourceEvent::Upsert(o))) => format!("upsert {}", o.key()),
        Ok(Some(SourceEvent::Synced)) => "synced".into(),
        Ok(Some(other)) => format!("{other:?}"),
        Ok(None) => "closed".into(),
        Err(_) => "nothing within 900 s".into(),
    };
    while log.last().is_none_or(|l| l != "synced") {
        let event = next().await;
        let stop = event.starts_with("nothing") || event == "closed";
        log.push(event);
        if stop {
            break;
        }
    }
    assert_eq!(log, vec!["upsert Namespace shop", "synced"], "{log:?}");
    installed.store(true, std::sync::atomic::Ordering::SeqCst);
    let event = next().await;
    assert_eq!(event, "upsert TLSRoute shop/secure");
}
