//! The CA's Kubernetes mode against recorded API server answers (kube's
//! mock service): TokenReview decides who the caller is and which node it
//! speaks for; the pods of that node decide which identities it may get.

use std::collections::HashMap;

use http::{Method, Request, Response};
use kube::{Client, client::Body};
use serde_json::{Value, json};
use warren_api::Identity;
use warren_node_agent::ca::{
    authn::{AuthnError, TokenReviewer},
    placement::{Placement, PlacementError},
};

fn review(token: &str) -> Value {
    let agent = "system:serviceaccount:warren-system:warren-node-agent";
    let node = json!({ "authentication.kubernetes.io/node-name": ["node-a"] });
    let status = match token {
        "agent-a" => json!({ "authenticated": true, "user": { "username": agent, "extra": node } }),
        "app-on-a" => {
            json!({ "authenticated": true, "user": { "username": "system:serviceaccount:demo:web", "extra": node } })
        }
        "agent-unbound" => json!({ "authenticated": true, "user": { "username": agent } }),
        _ => json!({ "authenticated": false, "error": "invalid bearer token" }),
    };
    json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "metadata": {}, "spec": { "token": token }, "status": status
    })
}

fn pod(name: &str, sa: &str, phase: &str) -> Value {
    json!({
        "metadata": { "name": name, "namespace": "demo" },
        "spec": { "nodeName": "node-a", "serviceAccountName": sa, "containers": [] },
        "status": { "phase": phase }
    })
}

/// Answers TokenReviews and pod lists; records the audiences asked for.
async fn api_server(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    audiences: tokio::sync::mpsc::UnboundedSender<Value>,
) {
    while let Some((request, send)) = handle.next_request().await {
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let method = request.method().clone();
        let body = request.into_body().collect_bytes().await.unwrap();
        let answer = match (method, path.as_str()) {
            (Method::POST, "/apis/authentication.k8s.io/v1/tokenreviews") => {
                let asked: Value = serde_json::from_slice(&body).unwrap();
                let _ = audiences.send(asked["spec"]["audiences"].clone());
                review(asked["spec"]["token"].as_str().unwrap_or_default())
            }
            (Method::GET, "/api/v1/namespaces/demo/pods") => {
                let items: HashMap<&str, Vec<Value>> = HashMap::from([(
                    "spec.nodeName=node-a",
                    vec![
                        pod("web-1", "web", "Running"),
                        pod("job-1", "batch", "Succeeded"),
                    ],
                )]);
                let selector = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("fieldSelector="))
                    .map(|s| s.replace("%3D", "="))
                    .unwrap_or_default();
                let items = items.get(selector.as_str()).cloned().unwrap_or_default();
                json!({ "apiVersion": "v1", "kind": "PodList", "metadata": { "resourceVersion": "1" }, "items": items })
            }
            other => panic!("unexpected request {other:?} {query}"),
        };
        send.send_response(Response::new(Body::from(
            serde_json::to_vec(&answer).unwrap(),
        )));
    }
}

fn mock() -> (Client, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(api_server(handle, tx));
    (Client::new(service, "default"), rx)
}

#[tokio::test]
async fn token_review_names_the_node_of_node_agents_only() {
    let (client, mut audiences) = mock();
    let reviewer = TokenReviewer::new(
        client,
        vec!["warren-system/warren-node-agent".into()],
        vec!["warren-ca".into()],
    );
    let caller = reviewer.review("agent-a").await.unwrap();
    assert_eq!(caller.node, "node-a");
    assert_eq!(
        caller.principal,
        "system:serviceaccount:warren-system:warren-node-agent"
    );
    assert_eq!(audiences.recv().await.unwrap(), json!(["warren-ca"]));

    // Every pod's token is bound to its node: only the agent's counts.
    let err = reviewer.review("app-on-a").await.unwrap_err();
    assert!(matches!(err, AuthnError::NotNodeAgent { .. }), "{err}");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.to_string().contains("system:serviceaccount:demo:web"),
        "{err}"
    );

    let err = reviewer.review("agent-unbound").await.unwrap_err();
    assert!(matches!(err, AuthnError::NoNode { .. }), "{err}");

    let err = reviewer.review("stolen").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.to_string().contains("invalid bearer token"), "{err}");
    assert_eq!(err.reason(), "bad_token");
}

#[tokio::test]
async fn a_node_may_obtain_identities_of_its_running_pods_only() {
    let (client, _audiences) = mock();
    let placement = Placement::Kube(client);
    let id = |sa: &str| Identity::new("cluster.local", "demo", sa);
    placement.check("node-a", &id("web")).await.unwrap();
    for (node, sa) in [("node-a", "batch"), ("node-a", "db"), ("node-b", "web")] {
        let err = placement.check(node, &id(sa)).await.unwrap_err();
        assert!(
            matches!(err, PlacementError::NotOnNode { .. }),
            "{node} {sa}: {err}"
        );
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
    }
}
