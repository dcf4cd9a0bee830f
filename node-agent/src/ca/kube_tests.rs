//! The CA's Kubernetes side against a mocked API server (kube's client
//! over a `tower_test` service): the root kept in a Secret, and the
//! TokenReview cache.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{Client, client::Body};
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::{
    authn::TokenReviewer,
    counters::Counters,
    material::{self, MaterialError},
    review_cache::ReviewCache,
    root_store::{self, RootStore, SecretStore},
};

const SECRETS: &str = "/api/v1/namespaces/warren-system/secrets";
const SECRET: &str = "/api/v1/namespaces/warren-system/secrets/warren-ca-root";
const REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// What the fake API server holds and saw.
#[derive(Default)]
struct Fake {
    secret: Option<Value>,
    /// Created by "another CA" just before our POST lands.
    race_winner: Option<Value>,
    version: u64,
    seen: Vec<(Method, String, Value)>,
}

type Shared = Arc<Mutex<Fake>>;

fn status(code: StatusCode, reason: &str) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "reason": reason, "code": code.as_u16(), "message": reason,
    });
    let mut response = Response::new(Body::from(serde_json::to_vec(&body).expect("json")));
    *response.status_mut() = code;
    response
}

fn ok(body: &Value) -> Response<Body> {
    Response::new(Body::from(serde_json::to_vec(body).expect("json")))
}

async fn api_server(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    fake: Shared,
) {
    while let Some((request, send)) = handle.next_request().await {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let bytes = request.into_body().collect_bytes().await.expect("body");
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let mut fake = fake.lock().unwrap();
        fake.seen.push((method.clone(), path.clone(), body.clone()));
        let response = match (method, path.as_str()) {
            (Method::GET, SECRET) => match &fake.secret {
                Some(secret) => ok(secret),
                None => status(StatusCode::NOT_FOUND, "NotFound"),
            },
            (Method::POST, SECRETS) => {
                if let Some(winner) = fake.race_winner.take() {
                    fake.secret = Some(winner);
                }
                if fake.secret.is_some() {
                    status(StatusCode::CONFLICT, "AlreadyExists")
                } else {
                    fake.version += 1;
                    let mut stored = body;
                    stored["metadata"]["resourceVersion"] = json!(fake.version.to_string());
                    fake.secret = Some(stored.clone());
                    ok(&stored)
                }
            }
            (Method::PUT, SECRET) => {
                let current = fake
                    .secret
                    .as_ref()
                    .map(|s| s["metadata"]["resourceVersion"].clone());
                if current != Some(body["metadata"]["resourceVersion"].clone()) {
                    status(StatusCode::CONFLICT, "Conflict")
                } else {
                    fake.version += 1;
                    let mut stored = body;
                    stored["metadata"]["resourceVersion"] = json!(fake.version.to_string());
                    fake.secret = Some(stored.clone());
                    ok(&stored)
                }
            }
            (Method::POST, REVIEWS) => {
                let token = body["spec"]["token"].as_str().unwrap_or_default();
                let mut review = body.clone();
                review["status"] = match token.strip_prefix("agent-") {
                    Some(node) => json!({
                        "authenticated": true,
                        "user": {
                            "username": "system:serviceaccount:warren-system:warren-node-agent",
                            "extra": { "authentication.kubernetes.io/node-name": [node] },
                        },
                    }),
                    None => json!({ "authenticated": false, "error": "invalid bearer token" }),
                };
                ok(&review)
            }
            _ => status(StatusCode::NOT_FOUND, "NotFound"),
        };
        send.send_response(response);
    }
}

fn mock(fake: &Shared) -> Client {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(api_server(handle, Arc::clone(fake)));
    Client::new(service, "warren-system")
}

fn store(fake: &Shared) -> RootStore {
    RootStore::Secret(Box::new(SecretStore::new(
        mock(fake),
        "warren-system",
        root_store::DEFAULT_SECRET_NAME,
    )))
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn requests(fake: &Shared, method: &Method, path: &str) -> Vec<Value> {
    fake.lock()
        .unwrap()
        .seen
        .iter()
        .filter(|(m, p, _)| m == method && p == path)
        .map(|(_, _, body)| body.clone())
        .collect()
}

fn data(secret: &Value, key: &str) -> String {
    let secret: Secret = serde_json::from_value(secret.clone()).expect("a Secret");
    let ByteString(bytes) = secret.data.expect("data")[key].clone();
    String::from_utf8(bytes).expect("text")
}

#[tokio::test]
async fn an_absent_secret_is_created_and_later_starts_load_the_same_root() {
    let fake = Shared::default();
    let (first, created) = material::load_or_create(&store(&fake), now())
        .await
        .unwrap();
    assert!(created);

    let posted = requests(&fake, &Method::POST, SECRETS);
    assert_eq!(posted.len(), 1, "one create");
    let body = &posted[0];
    assert_eq!(body["type"], "Opaque");
    assert_eq!(body["metadata"]["name"], "warren-ca-root");
    assert_eq!(body["metadata"]["namespace"], "warren-system");
    assert!(data(body, "root-cert.pem").contains("BEGIN CERTIFICATE"));
    assert!(data(body, "root-key.pem").contains("PRIVATE KEY"));
    assert!(!data(body, "root-cert.pem").contains("PRIVATE KEY"));
    assert_eq!(data(body, "retired-roots.pem"), "");
    assert_eq!(data(body, "trust-bundle.pem"), first.roots_pem().concat());

    // A restart (a new client, the same API server): the same root.
    let (again, created) = material::load_or_create(&store(&fake), now())
        .await
        .unwrap();
    assert!(!created);
    assert!(first.same_as(&again));
    assert_eq!(requests(&fake, &Method::POST, SECRETS).len(), 1);
}

#[tokio::test]
async fn the_loser_of_a_creation_race_uses_the_winners_root() {
    let winner_fake = Shared::default();
    let (winner, _) = material::load_or_create(&store(&winner_fake), now())
        .await
        .unwrap();
    let winner_secret = winner_fake.lock().unwrap().secret.clone();

    let fake = Shared::default();
    fake.lock().unwrap().race_winner = winner_secret;
    let (ours, created) = material::load_or_create(&store(&fake), now())
        .await
        .unwrap();
    assert!(!created, "409: nothing of ours was written");
    assert_eq!(ours.signer_serial(), winner.signer_serial());
    assert!(ours.same_as(&winner));
}

#[tokio::test]
async fn a_malformed_secret_is_refused_naming_the_secret_and_the_key() {
    let fake = Shared::default();
    let secret = |data: Value| {
        json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": { "name": "warren-ca-root", "namespace": "warren-system",
                          "resourceVersion": "1" },
            "data": data,
        })
    };
    // "garbage" and "-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n".
    fake.lock().unwrap().secret = Some(secret(json!({ "root-cert.pem": "Z2FyYmFnZQ==" })));
    let err = material::load_or_create(&store(&fake), now())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("Secret warren-system/warren-ca-root, key root-cert.pem"),
        "{err}"
    );

    let bad_pem = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCnh4Ci0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0K";
    fake.lock().unwrap().secret = Some(secret(
        json!({ "root-cert.pem": bad_pem, "root-key.pem": bad_pem }),
    ));
    let err = material::load(&store(&fake), now()).await.unwrap_err();
    assert!(matches!(err, MaterialError::Invalid { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("Secret warren-system/warren-ca-root, key root-cert.pem"),
        "{err}"
    );

    fake.lock().unwrap().secret = Some(secret(json!({})));
    let err = material::load(&store(&fake), now()).await.unwrap_err();
    assert!(
        err.to_string().contains("key root-cert.pem: missing"),
        "{err}"
    );
    // Nothing was overwritten.
    assert!(requests(&fake, &Method::POST, SECRETS).is_empty());
    assert!(requests(&fake, &Method::PUT, SECRET).is_empty());
}

#[tokio::test]
async fn rotation_and_removal_update_the_secret() {
    let fake = Shared::default();
    let store = store(&fake);
    let (old, _) = material::load_or_create(&store, now()).await.unwrap();
    let rotated = material::rotate_in(&store, now()).await.unwrap();
    assert_eq!(rotated.previous_serial, Some(old.signer_serial()));

    let put = requests(&fake, &Method::PUT, SECRET);
    assert_eq!(put.len(), 1);
    assert_eq!(
        put[0]["metadata"]["resourceVersion"], "1",
        "replaced as read"
    );
    let new = material::load(&store, now()).await.unwrap();
    assert_eq!(new.signer_serial(), rotated.new_serial);
    assert_eq!(new.roots().len(), 2, "the old root still trusted");
    assert_eq!(new.roots()[1], old.roots()[0]);
    assert_eq!(data(&put[0], "trust-bundle.pem"), rotated.bundle.concat());

    let err = material::remove_in(&store, &rotated.new_serial, now())
        .await
        .unwrap_err();
    assert!(matches!(err, MaterialError::ActiveRoot(_)), "{err}");
    material::remove_in(&store, &old.signer_serial(), now())
        .await
        .unwrap();
    let after = material::load(&store, now()).await.unwrap();
    assert_eq!(after.roots(), &new.roots()[..1]);
}

#[tokio::test]
async fn a_concurrent_change_makes_a_rotation_fail_without_writing() {
    let fake = Shared::default();
    let store = store(&fake);
    material::load_or_create(&store, now()).await.unwrap();
    // The Secret changes between our read and our write.
    let read = store.read().await.unwrap().unwrap();
    fake.lock().unwrap().secret.as_mut().unwrap()["metadata"]["resourceVersion"] = json!("99");
    let err = store
        .replace(Some(&read), &read.state, "bundle")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("run the command again"), "{err}");
}

fn reviewer(fake: &Shared, counters: &Arc<Counters>) -> TokenReviewer {
    TokenReviewer::new(
        mock(fake),
        vec!["warren-system/warren-node-agent".into()],
        vec![],
    )
    .with_counters(Arc::clone(counters))
}

#[tokio::test]
async fn a_reviewed_token_is_not_reviewed_again_until_the_ttl() {
    let fake = Shared::default();
    let counters = Arc::new(Counters::default());
    let start = SystemTime::now();
    let clock_at = Arc::new(Mutex::new(start));
    let clock = {
        let clock_at = Arc::clone(&clock_at);
        Arc::new(move || *clock_at.lock().unwrap())
    };
    let reviewer = reviewer(&fake, &counters).with_cache(ReviewCache::new(
        Duration::from_secs(60),
        100,
        clock,
    ));
    let reviews = || requests(&fake, &Method::POST, REVIEWS).len();

    assert_eq!(
        reviewer.review("agent-node-a").await.unwrap().node,
        "node-a"
    );
    assert_eq!(
        reviewer.review("agent-node-a").await.unwrap().node,
        "node-a"
    );
    assert_eq!(reviews(), 1, "the second call is answered from the cache");
    let snapshot = counters.snapshot();
    assert_eq!(
        (snapshot.review_cache_hits, snapshot.review_cache_misses),
        (1, 1)
    );

    // Another token: its own review.
    assert_eq!(
        reviewer.review("agent-node-b").await.unwrap().node,
        "node-b"
    );
    assert_eq!(reviews(), 2);

    // Refusals are not remembered.
    reviewer.review("stolen").await.unwrap_err();
    reviewer.review("stolen").await.unwrap_err();
    assert_eq!(reviews(), 4);

    // After the TTL the token is reviewed again.
    *clock_at.lock().unwrap() = start + Duration::from_secs(61);
    reviewer.review("agent-node-a").await.unwrap();
    assert_eq!(reviews(), 5);
}
