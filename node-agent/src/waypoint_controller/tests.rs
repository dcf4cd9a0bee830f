//! The reconcile against a mocked API server (kube's client over a
//! `tower_test` service): which requests it makes, with which bodies, and
//! what it does with the answers.

use std::{collections::BTreeMap, sync::Arc};

use http::{Method, Request, Response, StatusCode};
use kube::{Client, client::Body};
use serde_json::{Value, json};

use super::*;
use crate::model::gateway::GatewaySpec;

/// One request the controller made.
#[derive(Debug)]
struct Seen {
    method: Method,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

/// How the fake API server answers.
#[derive(Clone, Copy)]
enum Answer {
    /// Echoes applied objects back; Deployments with this many ready pods.
    Echo { ready_replicas: i32 },
    /// Refuses everything (RBAC missing).
    Forbidden,
}

async fn api_server(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    answer: Answer,
    seen: tokio::sync::mpsc::UnboundedSender<Seen>,
) {
    while let Some((request, send)) = handle.next_request().await {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .expect("request body");
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let response = match answer {
            Answer::Echo { ready_replicas } => {
                let mut object = body.clone();
                object["metadata"]["uid"] = json!("uid-of-child");
                object["metadata"]["resourceVersion"] = json!("2");
                if path.contains("/deployments/") {
                    object["status"] = json!({ "readyReplicas": ready_replicas });
                }
                Response::new(Body::from(serde_json::to_vec(&object).expect("json")))
            }
            Answer::Forbidden => {
                let status = json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure", "reason": "Forbidden", "code": 403,
                    "message": "serviceaccounts is forbidden: User cannot patch resource",
                });
                let mut response =
                    Response::new(Body::from(serde_json::to_vec(&status).expect("json")));
                *response.status_mut() = StatusCode::FORBIDDEN;
                response
            }
        };
        // A receiver gone only means the test stopped looking.
        let _ = seen.send(Seen {
            method,
            path,
            query,
            content_type,
            body,
        });
        send.send_response(response);
    }
}

/// Reconciles `gateway` once against a fake API server; returns the result
/// and every request made.
async fn reconcile_once(
    gateway: &Gateway,
    answer: Answer,
) -> (Result<Action, ReconcileError>, Vec<Seen>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(api_server(handle, answer, tx));
    let context = Arc::new(Context::new(
        Client::new(service, "default"),
        Settings {
            image: "ghcr.io/warren/waypoint:test".into(),
            agent_socket: warren_api::socket::DEFAULT_PATH.into(),
        },
    ));
    let object: DynamicObject =
        serde_json::from_value(serde_json::to_value(gateway).expect("encodes")).expect("decodes");
    let result = reconcile(Arc::new(object), context.clone()).await;
    // Dropping the last client ends the fake server: every request is in.
    drop(context);
    server.await.expect("fake API server");
    let mut seen = Vec::new();
    while let Some(request) = rx.recv().await {
        seen.push(request);
    }
    (result, seen)
}

fn waypoint_gateway() -> Gateway {
    let mut gateway = Gateway::waypoint("demo", "waypoint");
    gateway.metadata.uid = Some("uid-of-gateway".into());
    gateway.metadata.generation = Some(1);
    gateway.metadata.resource_version = Some("1".into());
    gateway
}

fn assert_apply(seen: &Seen, path: &str) {
    assert_eq!(seen.method, Method::PATCH, "{seen:?}");
    assert_eq!(seen.path, path);
    assert!(
        seen.content_type.starts_with("application/apply-patch"),
        "{seen:?}"
    );
    assert!(
        seen.query
            .contains("fieldManager=warren-waypoint-controller")
            && seen.query.contains("force=true"),
        "{}",
        seen.query
    );
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

#[tokio::test]
async fn a_waypoint_gateway_is_applied_as_service_account_deployment_and_status() {
    let (result, seen) =
        reconcile_once(&waypoint_gateway(), Answer::Echo { ready_replicas: 0 }).await;
    let action = result.expect("reconciled");
    assert_eq!(action, Action::requeue(RESYNC));
    assert_eq!(seen.len(), 3, "{seen:#?}");

    let sa = &seen[0];
    assert_apply(sa, "/api/v1/namespaces/demo/serviceaccounts/waypoint");
    assert_eq!(sa.body["kind"], "ServiceAccount");
    assert_eq!(sa.body["metadata"]["name"], "waypoint");
    assert_eq!(
        sa.body["metadata"]["ownerReferences"][0]["uid"],
        "uid-of-gateway"
    );

    let deployment = &seen[1];
    assert_apply(
        deployment,
        "/apis/apps/v1/namespaces/demo/deployments/waypoint",
    );
    let body = &deployment.body;
    assert_eq!(body["apiVersion"], "apps/v1");
    assert_eq!(body["kind"], "Deployment");
    assert_eq!(
        body["metadata"]["ownerReferences"],
        json!([{
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "name": "waypoint",
            "uid": "uid-of-gateway",
            "controller": true,
        }])
    );
    assert_eq!(body["spec"]["replicas"], 1);
    let template = &body["spec"]["template"];
    assert_eq!(
        template["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"],
        "waypoint"
    );
    assert_eq!(
        template["metadata"]["labels"]["warren.io/dataplane-mode"],
        "none"
    );
    assert_eq!(template["spec"]["serviceAccountName"], "waypoint");
    let container = &template["spec"]["containers"][0];
    assert_eq!(container["image"], "ghcr.io/warren/waypoint:test");
    assert_eq!(
        container["args"],
        json!([
            "--namespace",
            "demo",
            "--gateway",
            "waypoint",
            "--service-account",
            "waypoint",
            "--agent-socket",
            "/var/run/warren/agent.sock"
        ])
    );
    // Fields the controller does not own are not sent (server-side apply
    // would take ownership of them).
    assert!(body.get("status").is_none(), "{body}");

    let status = &seen[2];
    assert_apply(
        status,
        "/apis/gateway.networking.k8s.io/v1/namespaces/demo/gateways/waypoint/status",
    );
    assert_eq!(status.body["kind"], "Gateway");
    let conditions = &status.body["status"];
    assert_eq!(condition(conditions, "Accepted")["status"], "True");
    let programmed = condition(conditions, "Programmed");
    assert_eq!(programmed["status"], "False");
    assert_eq!(programmed["reason"], "Pending");
    assert_eq!(programmed["observedGeneration"], 1);
}

#[tokio::test]
async fn programmed_follows_ready_pods_and_an_unchanged_status_is_not_rewritten() {
    let (result, seen) =
        reconcile_once(&waypoint_gateway(), Answer::Echo { ready_replicas: 2 }).await;
    result.expect("reconciled");
    let status = &seen.last().expect("status patch").body["status"];
    let programmed = condition(status, "Programmed");
    assert_eq!(programmed["status"], "True");
    assert_eq!(programmed["reason"], "Programmed");

    // The Gateway now carries that status: applying again writes the
    // ServiceAccount and Deployment (no-ops for the API server) but no
    // status, so the controller's own write does not wake it forever.
    let mut gateway = waypoint_gateway();
    gateway.status = Some(serde_json::from_value(status.clone()).expect("status decodes"));
    let (result, seen) = reconcile_once(&gateway, Answer::Echo { ready_replicas: 2 }).await;
    result.expect("reconciled");
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/v1/namespaces/demo/serviceaccounts/waypoint",
            "/apis/apps/v1/namespaces/demo/deployments/waypoint"
        ]
    );
}

#[tokio::test]
async fn a_gateway_of_another_class_causes_no_request() {
    let mut gateway = Gateway::new(
        "ingress",
        GatewaySpec {
            gateway_class_name: "nginx".into(),
            listeners: Vec::new(),
        },
    );
    gateway.metadata.namespace = Some("demo".into());
    gateway.metadata.uid = Some("uid".into());
    let (result, seen) = reconcile_once(&gateway, Answer::Echo { ready_replicas: 0 }).await;
    assert_eq!(result.expect("ignored"), Action::await_change());
    assert!(seen.is_empty(), "{seen:#?}");
}

#[tokio::test]
async fn an_invalid_replicas_annotation_is_reported_in_status_only() {
    let mut gateway = waypoint_gateway();
    gateway.metadata.annotations = Some(BTreeMap::from([(
        render::REPLICAS_ANNOTATION.into(),
        "lots".into(),
    )]));
    let (result, seen) = reconcile_once(&gateway, Answer::Echo { ready_replicas: 0 }).await;
    // Not retried: only a change to the Gateway can fix it.
    assert_eq!(result.expect("reported"), Action::await_change());
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert!(seen[0].path.ends_with("/gateways/waypoint/status"));
    let accepted = condition(&seen[0].body["status"], "Accepted");
    assert_eq!(accepted["status"], "False");
    assert_eq!(accepted["reason"], "Invalid");
    let message = accepted["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("warren.io/replicas") && message.contains("\"lots\""),
        "{message}"
    );
}

#[tokio::test]
async fn an_api_error_is_returned_for_a_retry_with_backoff() {
    let (result, seen) = reconcile_once(&waypoint_gateway(), Answer::Forbidden).await;
    let err = result.expect_err("forbidden");
    assert!(
        matches!(
            err,
            ReconcileError::Apply {
                kind: "ServiceAccount",
                ..
            }
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("demo/waypoint") && text.contains("forbidden"),
        "{text}"
    );
    // The first failure stops the reconcile: no Deployment without its
    // ServiceAccount.
    assert_eq!(seen.len(), 1, "{seen:#?}");

    let context = Arc::new(Context::new(
        Client::new(
            tower_test::mock::pair::<Request<Body>, Response<Body>>().0,
            "default",
        ),
        Settings {
            image: "image".into(),
            agent_socket: warren_api::socket::DEFAULT_PATH.into(),
        },
    ));
    let object: Arc<DynamicObject> = Arc::new(
        serde_json::from_value(serde_json::to_value(waypoint_gateway()).expect("encodes"))
            .expect("decodes"),
    );
    let delays: Vec<Action> = (0..3)
        .map(|_| error_policy(object.clone(), &err, context.clone()))
        .collect();
    assert_eq!(
        delays,
        [
            Action::requeue(Duration::from_secs(1)),
            Action::requeue(Duration::from_secs(2)),
            Action::requeue(Duration::from_secs(4)),
        ]
    );
    assert_eq!(backoff(30), MAX_BACKOFF);
}
