use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{Request, Response, StatusCode, request::Parts};
use http_body_util::Full;
use serde_json::{Value, json};
use warren_testbed::jwt::Issuer;

use super::{Authenticator, AuthnInput, Rejection, keys::KeyStore};

const ISS: &str = "https://idp.example";

fn issuer() -> Issuer {
    Issuer::new(ISS, "k1").expect("test issuer")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn input(rules: Value) -> AuthnInput {
    AuthnInput {
        namespace: "demo".into(),
        name: "jwt".into(),
        waypoint: true,
        services: Vec::new(),
        spec: serde_json::from_value(json!({ "jwtRules": rules })).expect("test spec"),
    }
}

fn build(inputs: Vec<AuthnInput>) -> Authenticator {
    Authenticator::build(inputs, &KeyStore::default())
}

fn request(uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut builder = Request::builder().uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).expect("test request").into_parts().0
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn check(a: &Authenticator, parts: &mut Parts) -> Result<Option<String>, Rejection> {
    a.authenticate("demo", "app", parts).await.map(|v| {
        v.map(|v| {
            v.principal
                .clone()
                .unwrap_or_else(|| format!("{} (no subject)", v.issuer))
        })
    })
}

#[tokio::test]
async fn a_good_token_names_the_caller_and_is_taken_off() {
    let idp = issuer();
    let a = build(vec![input(json!([{ "issuer": ISS, "jwks": idp.jwks() }]))]);
    let token = idp.token(json!({ "sub": "alice" })).expect("token");
    let mut parts = request("/", &[("authorization", &bearer(&token))]);
    assert_eq!(
        check(&a, &mut parts).await,
        Ok(Some(format!("{ISS}/alice")))
    );
    // Not forwarded by default.
    assert!(parts.headers.get("authorization").is_none());
    // No token: unauthenticated, not refused.
    let mut parts = request("/", &[]);
    assert_eq!(check(&a, &mut parts).await, Ok(None));
    // From the default query parameter too.
    let mut parts = request(&format!("/?access_token={token}"), &[]);
    assert_eq!(
        check(&a, &mut parts).await,
        Ok(Some(format!("{ISS}/alice")))
    );
    // Forwarded when asked.
    let a = build(vec![input(
        json!([{ "issuer": ISS, "jwks": idp.jwks(), "forwardOriginalToken": true }]),
    )]);
    let mut parts = request("/", &[("authorization", &bearer(&token))]);
    assert!(check(&a, &mut parts).await.is_ok_and(|p| p.is_some()));
    assert!(parts.headers.get("authorization").is_some());
}

#[tokio::test]
async fn a_bad_token_is_refused_with_envoys_reason() {
    let idp = issuer();
    let a = build(vec![input(
        json!([{ "issuer": ISS, "jwks": idp.jwks(), "audiences": ["shop"] }]),
    )]);
    let t = now();
    // Another key under the same kid: the signature does not verify.
    let forger = issuer();
    // A key with no `alg` in the set, so that only the type check stands
    // between an HMAC token and the EC key's bytes.
    let mut jwk = idp.jwk();
    jwk.as_object_mut().expect("object").remove("alg");
    let no_alg = build(vec![input(json!([{ "issuer": ISS,
        "jwks": json!({ "keys": [jwk.clone()] }).to_string() }]))]);
    let point: Vec<u8> = ["x", "y"]
        .iter()
        .flat_map(|c| {
            URL_SAFE_NO_PAD
                .decode(jwk[c].as_str().expect("coordinate"))
                .expect("b64")
        })
        .collect();
    let hmac_forgery = {
        let head = URL_SAFE_NO_PAD.encode(json!({ "alg": "HS256", "kid": "k1" }).to_string());
        let body = URL_SAFE_NO_PAD
            .encode(json!({ "iss": ISS, "sub": "mallory", "aud": "shop" }).to_string());
        let signed = format!("{head}.{body}");
        let mut key_bytes = vec![4u8];
        key_bytes.extend(&point);
        let mut forged = Vec::new();
        for secret in [point.clone(), key_bytes] {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
            let tag = ring::hmac::sign(&key, signed.as_bytes());
            forged.push(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref())));
        }
        forged
    };
    let cases: Vec<(&str, String, Rejection)> = vec![
        (
            "expired",
            idp.token(json!({ "sub": "a", "aud": "shop", "exp": t - 120 }))
                .expect("t"),
            Rejection::Expired,
        ),
        (
            "not yet valid",
            idp.token(json!({ "sub": "a", "aud": "shop", "nbf": t + 600 }))
                .expect("t"),
            Rejection::NotYetValid,
        ),
        (
            "wrong audience",
            idp.token(json!({ "sub": "a", "aud": ["web"] })).expect("t"),
            Rejection::Audience,
        ),
        (
            "no audience",
            idp.token(json!({ "sub": "a" })).expect("t"),
            Rejection::Audience,
        ),
        (
            "unknown issuer",
            Issuer::new("https://other", "k1")
                .expect("issuer")
                .token(json!({ "sub": "a", "aud": "shop" }))
                .expect("t"),
            Rejection::UnknownIssuer,
        ),
        (
            "forged signature",
            forger
                .token(json!({ "sub": "a", "aud": "shop" }))
                .expect("t"),
            Rejection::BadSignature,
        ),
        (
            "unknown kid",
            Issuer::new(ISS, "k2")
                .expect("issuer")
                .token(json!({ "sub": "a", "aud": "shop" }))
                .expect("t"),
            Rejection::NoMatchingKey,
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
                URL_SAFE_NO_PAD
                    .encode(json!({ "iss": ISS, "sub": "a", "aud": "shop" }).to_string())
            ),
            Rejection::BadHeader,
        ),
        ("two sections", "abc.def".into(), Rejection::Malformed),
        (
            "payload not JSON",
            "abc.def.ghi".into(),
            Rejection::Malformed,
        ),
        (
            "exp not a number",
            idp.token(json!({ "sub": "a", "aud": "shop", "exp": "soon" }))
                .expect("t"),
            Rejection::Malformed,
        ),
        (
            "HMAC with the public key (alg ES256 in the set)",
            hmac_forgery[0].clone(),
            Rejection::NoMatchingKey,
        ),
    ];
    for (what, token, want) in cases {
        let mut parts = request("/", &[("authorization", &bearer(&token))]);
        assert_eq!(check(&a, &mut parts).await, Err(want), "{what}");
    }
    for forged in &hmac_forgery {
        let mut parts = request("/", &[("authorization", &bearer(forged))]);
        assert_eq!(
            check(&no_alg, &mut parts).await,
            Err(Rejection::BadSignature),
            "HMAC with the public key's bytes"
        );
    }
    // Within the clock skew Envoy allows, and audiences from a list.
    let token = idp
        .token(json!({ "sub": "a", "aud": ["web", "shop"], "exp": t - 30 }))
        .expect("t");
    let mut parts = request("/", &[("authorization", &bearer(&token))]);
    assert!(check(&a, &mut parts).await.is_ok_and(|p| p.is_some()));
    // Two tokens: both must be good.
    let good = idp.token(json!({ "sub": "a", "aud": "shop" })).expect("t");
    let expired = idp
        .token(json!({ "sub": "b", "aud": "shop", "exp": t - 600 }))
        .expect("t");
    let mut parts = request(
        &format!("/?access_token={expired}"),
        &[("authorization", &bearer(&good))],
    );
    assert_eq!(check(&a, &mut parts).await, Err(Rejection::Expired));
    // The refusal is a 401 with a challenge, as Envoy's.
    let parts = request("http://shop.demo/cart?x=1", &[]);
    let response = Rejection::Expired.response(&parts);
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"http://shop.demo/cart\", error=\"invalid_token\""
    );
    assert_eq!(response.body().as_ref(), b"Jwt is expired");
    assert_eq!(
        Rejection::Expired.details(),
        "jwt_authn_access_denied{Jwt_is_expired}"
    );
}

#[tokio::test]
async fn locations_and_outputs_are_the_rules() {
    let idp = issuer();
    let a = build(vec![input(json!([{
        "issuer": ISS, "jwks": idp.jwks(),
        "fromHeaders": [{ "name": "x-jwt", "prefix": "Token " }],
        "fromCookies": ["session"],
        "outputPayloadToHeader": "x-jwt-payload",
        "outputClaimToHeaders": [
            { "header": "x-user", "claim": "sub" },
            { "header": "x-tenant", "claim": "org.tenant" },
            { "header": "x-level", "claim": "level" }
        ]
    }]))]);
    let token = idp
        .token(json!({ "sub": "alice", "org": { "tenant": "acme" }, "level": 3 }))
        .expect("t");
    // Not where this rule looks: as if there were no token.
    let mut parts = request("/", &[("authorization", &bearer(&token))]);
    assert_eq!(check(&a, &mut parts).await, Ok(None));
    let mut parts = request("/", &[("x-jwt", &format!("Token {token}"))]);
    assert_eq!(
        check(&a, &mut parts).await,
        Ok(Some(format!("{ISS}/alice")))
    );
    assert!(parts.headers.get("x-jwt").is_none());
    assert_eq!(parts.headers["x-user"], "alice");
    assert_eq!(parts.headers["x-tenant"], "acme");
    assert_eq!(parts.headers["x-level"], "3");
    let payload = URL_SAFE_NO_PAD
        .decode(parts.headers["x-jwt-payload"].as_bytes())
        .expect("base64url");
    let payload: Value = serde_json::from_slice(&payload).expect("JSON");
    assert_eq!(payload["sub"], "alice");
    let cookie = format!("theme=dark; session={token}");
    let mut parts = request("/", &[("cookie", &cookie)]);
    assert!(check(&a, &mut parts).await.is_ok_and(|p| p.is_some()));
    // A client cannot pose as a verified caller by sending the headers
    // the rule writes.
    let mut parts = request("/", &[("x-user", "admin"), ("x-jwt-payload", "e30")]);
    assert_eq!(check(&a, &mut parts).await, Ok(None));
    assert!(parts.headers.get("x-user").is_none());
    assert!(parts.headers.get("x-jwt-payload").is_none());
}

#[tokio::test]
async fn rules_bind_their_targets_only() {
    let idp = issuer();
    let for_app = AuthnInput {
        waypoint: false,
        services: vec!["app".into()],
        ..input(json!([{ "issuer": ISS, "jwks": idp.jwks() }]))
    };
    let a = build(vec![for_app]);
    assert!(a.applies("demo", "app"));
    assert!(!a.applies("demo", "other"));
    assert!(!a.applies("shop", "app"));
    let expired = idp.token(json!({ "exp": now() - 600 })).expect("t");
    let mut parts = request("/", &[("authorization", &bearer(&expired))]);
    assert_eq!(
        a.authenticate("demo", "other", &mut parts)
            .await
            .map(|v| v.is_some()),
        Ok(false)
    );
    // Rules of several policies merge: each issuer is accepted.
    let other = Issuer::new("https://other.example", "o1").expect("issuer");
    let a = build(vec![
        input(json!([{ "issuer": ISS, "jwks": idp.jwks() }])),
        AuthnInput {
            name: "second".into(),
            ..input(json!([{ "issuer": other.issuer, "jwks": other.jwks() }]))
        },
    ]);
    for (who, token) in [
        (ISS, idp.token(json!({ "sub": "x" })).expect("t")),
        (
            "https://other.example",
            other.token(json!({ "sub": "x" })).expect("t"),
        ),
    ] {
        let mut parts = request("/", &[("authorization", &bearer(&token))]);
        assert_eq!(check(&a, &mut parts).await, Ok(Some(format!("{who}/x"))));
    }
}

/// Serves `jwks` at `/keys` and a discovery document pointing there,
/// counting the key set's requests; `/missing` answers 404.
async fn key_server(jwks: String) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let fetched = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&fetched);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let jwks = jwks.clone();
            let count = Arc::clone(&count);
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (status, body) = match req.uri().path() {
                    "/keys" => {
                        count.fetch_add(1, Ordering::SeqCst);
                        (StatusCode::OK, jwks.clone())
                    }
                    "/.well-known/openid-configuration" => (
                        StatusCode::OK,
                        json!({ "issuer": format!("http://{addr}"),
                                "jwks_uri": format!("http://{addr}/keys") })
                        .to_string(),
                    ),
                    _ => (StatusCode::NOT_FOUND, String::new()),
                };
                let mut response = Response::new(Full::new(Bytes::from(body)));
                *response.status_mut() = status;
                async move { Ok::<_, Infallible>(response) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (addr, fetched)
}

#[tokio::test]
async fn key_sets_are_fetched_once_and_shared_by_rebuilds() {
    let idp = issuer();
    // Beside the signing key: an encryption key under the same kid, a curve
    // this proxy does not know, and an algorithm that signs nothing. They
    // are skipped, not fatal (issuers publish such keys).
    let mut enc = issuer().jwk();
    enc["use"] = json!("enc");
    let served = json!({ "keys": [
        enc,
        { "kty": "EC", "crv": "secp256k1", "kid": "k9", "x": "AA", "y": "AA" },
        { "kty": "RSA", "alg": "RSA-OAEP", "kid": "k8", "n": "AQAB", "e": "AQAB" },
        idp.jwk(),
    ] });
    let (addr, fetched) = key_server(served.to_string()).await;
    let store = KeyStore::default();
    let rules = json!([{ "issuer": ISS, "jwksUri": format!("http://{addr}/keys") }]);
    let first = Authenticator::build(vec![input(rules.clone())], &store);
    let token = idp.token(json!({ "sub": "alice" })).expect("t");
    // The first request waits for the fetch.
    let mut parts = request("/", &[("authorization", &bearer(&token))]);
    assert_eq!(
        check(&first, &mut parts).await,
        Ok(Some(format!("{ISS}/alice")))
    );
    // A rebuild while the first generation lives shares its fetcher.
    let second = Authenticator::build(vec![input(rules)], &store);
    let mut parts = request("/", &[("authorization", &bearer(&token))]);
    assert!(check(&second, &mut parts).await.is_ok_and(|p| p.is_some()));
    assert_eq!(fetched.load(Ordering::SeqCst), 1);

    // OpenID discovery when the rule names no keys: the issuer (an
    // http:// one, as a test's) serves the document naming its key set.
    let mut issuer_at = Issuer::new("set below", "k1").expect("issuer");
    let (server, _) = key_server(issuer_at.jwks()).await;
    issuer_at.issuer = format!("http://{server}");
    let a = Authenticator::build(vec![input(json!([{ "issuer": issuer_at.issuer }]))], &store);
    let token = issuer_at.token(json!({ "sub": "bob" })).expect("t");
    let mut parts = request("/", &[("authorization", &bearer(&token))]);
    assert_eq!(
        check(&a, &mut parts).await,
        Ok(Some(format!("http://{server}/bob")))
    );

    // Keys that cannot be had refuse the issuer's tokens (fail closed),
    // and leave requests without a token alone.
    let a = Authenticator::build(
        vec![input(
            json!([{ "issuer": ISS, "jwksUri": format!("http://{addr}/missing"),
                             "timeout": "2s" }]),
        )],
        &store,
    );
    let token = idp.token(json!({ "sub": "alice" })).expect("t");
    let mut parts = request("/", &[("authorization", &bearer(&token))]);
    assert_eq!(check(&a, &mut parts).await, Err(Rejection::KeysUnavailable));
    let mut parts = request("/", &[]);
    assert_eq!(check(&a, &mut parts).await, Ok(None));
}

#[test]
fn only_signing_keys_verify() {
    let idp = issuer();
    let mut enc = idp.jwk();
    enc["use"] = json!("enc");
    let only_enc = json!({ "keys": [enc] }).to_string();
    assert!(super::keys::Keys::fetched(&only_enc).is_err());
    // Inline, as the agent checks it: refused too.
    assert!(super::keys::Keys::inline(&only_enc).is_err());
    let signing = super::keys::Keys::fetched(&idp.jwks()).expect("usable");
    assert_eq!(
        signing
            .candidates(Some("k1"), jsonwebtoken::Algorithm::ES256)
            .count(),
        1
    );
    // A key for ES256 is no candidate for another algorithm.
    assert_eq!(
        signing
            .candidates(Some("k1"), jsonwebtoken::Algorithm::HS256)
            .count(),
        0
    );
}

#[tokio::test]
async fn rules_of_one_issuer_keys_without_kid_and_audiences_as_envoy_compares() {
    let idp = issuer();
    // Two RequestAuthentications name the issuer: the first's audience
    // refuses the token, the second accepts it, and the second's outputs
    // follow.
    let a = build(vec![
        input(json!([{ "issuer": ISS, "jwks": idp.jwks(), "audiences": ["bank"] }])),
        AuthnInput {
            name: "second".into(),
            ..input(
                json!([{ "issuer": ISS, "jwks": idp.jwks(), "audiences": ["https://shop.example/"],
                             "outputClaimToHeaders": [{ "header": "x-user", "claim": "sub" }] }]),
            )
        },
    ]);
    // The scheme and a trailing slash do not count.
    let token = idp
        .token(json!({ "sub": "alice", "aud": "shop.example" }))
        .expect("t");
    let mut parts = request("/", &[("authorization", &bearer(&token))]);
    assert_eq!(
        check(&a, &mut parts).await,
        Ok(Some(format!("{ISS}/alice")))
    );
    assert_eq!(parts.headers["x-user"], "alice");
    // Neither accepts it: the first refusal is the answer.
    let token = idp
        .token(json!({ "sub": "alice", "aud": "api" }))
        .expect("t");
    let mut parts = request("/", &[("authorization", &bearer(&token))]);
    assert_eq!(check(&a, &mut parts).await, Err(Rejection::Audience));

    // A key without a kid is tried for a token that names one.
    let mut jwk = idp.jwk();
    jwk.as_object_mut().expect("object").remove("kid");
    let a = build(vec![input(json!([{ "issuer": ISS,
        "jwks": json!({ "keys": [jwk] }).to_string() }]))]);
    let token = idp.token(json!({ "sub": "alice" })).expect("t");
    let mut parts = request("/", &[("authorization", &bearer(&token))]);
    assert_eq!(
        check(&a, &mut parts).await,
        Ok(Some(format!("{ISS}/alice")))
    );
}

#[tokio::test]
async fn a_rule_that_cannot_be_used_refuses_its_issuers_tokens() {
    let idp = issuer();
    // Past the agent's checks (an older agent, say): no usable key.
    let a = build(vec![input(
        json!([{ "issuer": ISS, "jwks": "{\"keys\": []}" }]),
    )]);
    let token = idp.token(json!({ "sub": "alice" })).expect("t");
    let mut parts = request("/", &[("authorization", &bearer(&token))]);
    assert_eq!(check(&a, &mut parts).await, Err(Rejection::NoMatchingKey));
    let mut parts = request(&format!("/?access_token={token}"), &[]);
    assert_eq!(check(&a, &mut parts).await, Err(Rejection::NoMatchingKey));
    let mut parts = request("/", &[]);
    assert_eq!(check(&a, &mut parts).await, Ok(None));
}

#[tokio::test]
async fn a_cors_preflight_passes_and_scopes_split_into_words() {
    let idp = issuer();
    let a = build(vec![input(json!([{ "issuer": ISS, "jwks": idp.jwks(),
        "spaceDelimitedClaims": ["roles"] }]))]);
    let expired = idp
        .token(json!({ "sub": "a", "exp": now() - 600 }))
        .expect("t");
    let mut parts = request("/", &[("authorization", &bearer(&expired))]);
    parts.method = http::Method::OPTIONS;
    assert_eq!(check(&a, &mut parts).await, Err(Rejection::Expired));
    parts
        .headers
        .insert("origin", "https://shop.example".parse().expect("value"));
    parts.headers.insert(
        "access-control-request-method",
        "POST".parse().expect("value"),
    );
    assert_eq!(check(&a, &mut parts).await, Ok(None));

    let token = idp
        .token(json!({ "sub": "a", "roles": "admin  ops", "groups": "x y" }))
        .expect("t");
    let mut parts = request("/", &[("authorization", &bearer(&token))]);
    let verified = a
        .authenticate("demo", "app", &mut parts)
        .await
        .expect("good")
        .expect("a caller");
    assert_eq!(verified.claim(&["roles".into()]), ["admin", "ops"]);
    assert_eq!(verified.claim(&["groups".into()]), ["x y"]);
}

#[tokio::test]
async fn key_sets_are_fetched_when_needed_and_a_stalled_issuer_times_out() {
    let idp = issuer();
    let (addr, fetched) = key_server(idp.jwks()).await;
    let store = KeyStore::default();
    let rules = json!([{ "issuer": ISS, "jwksUri": format!("http://{addr}/keys") }]);
    // Attached to a Service: nothing fetched until a token needs it.
    let for_service = Authenticator::build(
        vec![AuthnInput {
            waypoint: false,
            services: vec!["app".into()],
            ..input(rules.clone())
        }],
        &store,
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(fetched.load(Ordering::SeqCst), 0);
    let token = idp.token(json!({ "sub": "alice" })).expect("t");
    let mut parts = request("/", &[("authorization", &bearer(&token))]);
    assert!(
        check(&for_service, &mut parts)
            .await
            .is_ok_and(|p| p.is_some())
    );
    assert_eq!(fetched.load(Ordering::SeqCst), 1);
    drop(for_service);

    // Attached to the waypoint: fetched at once (a fresh store, as after a
    // restart).
    let (addr, fetched) = key_server(idp.jwks()).await;
    let store = KeyStore::default();
    let _on_waypoint = Authenticator::build(
        vec![input(
            json!([{ "issuer": ISS, "jwksUri": format!("http://{addr}/keys") }]),
        )],
        &store,
    );
    let mut waited = 0;
    while fetched.load(Ordering::SeqCst) == 0 && waited < 50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        waited += 1;
    }
    assert_eq!(fetched.load(Ordering::SeqCst), 1);

    // An issuer that accepts and never answers: refused after `timeout`.
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let stalled_addr = stalled.local_addr().expect("address");
    let _held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = stalled.accept().await {
            open.push(stream);
        }
    });
    let a = Authenticator::build(
        vec![input(
            json!([{ "issuer": ISS, "jwksUri": format!("http://{stalled_addr}/keys"),
                             "timeout": "1s" }]),
        )],
        &KeyStore::default(),
    );
    let started = std::time::Instant::now();
    let mut parts = request("/", &[("authorization", &bearer(&token))]);
    assert_eq!(check(&a, &mut parts).await, Err(Rejection::KeysUnavailable));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

/// Whatever a client sends where a token may be (garbled, cut short or
/// spliced parts of a real token, or random text), the waypoint refuses
/// it, or finds none there: never a panic, and never a caller it did not
/// verify. Seeded and bounded.
#[tokio::test]
async fn any_token_a_client_sends_is_verified_or_refused() {
    use rand::{Rng as _, SeedableRng as _, rngs::StdRng, seq::IndexedRandom as _};

    let idp = issuer();
    let a = build(vec![input(json!([{ "issuer": ISS, "jwks": idp.jwks(),
        "fromHeaders": [{ "name": "authorization", "prefix": "Bearer " }, { "name": "x-jwt" }],
        "fromParams": ["token"], "fromCookies": ["session"] }]))]);
    let good = idp.token(json!({ "sub": "alice" })).expect("token");
    let parts_of: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut rng = StdRng::seed_from_u64(0x70ce);
    let (mut refused, mut absent) = (0u32, 0u32);
    for _ in 0..3_000 {
        let token: String = match rng.random_range(0..5) {
            // A real token with a few characters changed.
            0 => {
                let mut bytes = good.clone().into_bytes();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..bytes.len());
                    bytes[at] = *b"ABCxyz019-_.=+/".choose(&mut rng).unwrap_or(&b'A');
                }
                String::from_utf8_lossy(&bytes).into_owned()
            }
            // Cut short.
            1 => good[..rng.random_range(0..good.len())].to_owned(),
            // Its parts shuffled, repeated or dropped.
            2 => (0..rng.random_range(0..5))
                .map(|_| parts_of.choose(&mut rng).cloned().unwrap_or_default())
                .collect::<Vec<_>>()
                .join("."),
            // Base64 of random JSON-ish bytes in three parts.
            3 => (0..3)
                .map(|_| {
                    let raw: Vec<u8> = (0..rng.random_range(0..80))
                        .map(|_| {
                            *b"{}\":,[]0123456789abcdefalg\" none"
                                .choose(&mut rng)
                                .unwrap_or(&b'{')
                        })
                        .collect();
                    URL_SAFE_NO_PAD.encode(raw)
                })
                .collect::<Vec<_>>()
                .join("."),
            // Printable noise.
            _ => (0..rng.random_range(0..120))
                .map(|_| char::from(rng.random_range(0x21u8..0x7f)))
                .collect(),
        };
        if token == good {
            continue;
        }
        let encoded: String = token
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let header_value = |v: String| http::HeaderValue::from_str(&v).ok();
        let mut parts = match rng.random_range(0..4) {
            0 => request("/", &[]),
            1 => request(&format!("/?token={encoded}"), &[]),
            _ => request("/", &[]),
        };
        let (name, value) = match rng.random_range(0..3) {
            0 => ("authorization", bearer(&token)),
            1 => ("x-jwt", token.clone()),
            _ => ("cookie", format!("a=b; session={token}")),
        };
        if let Some(value) = header_value(value) {
            parts.headers.insert(name, value);
        }
        match check(&a, &mut parts).await {
            Err(_) => refused += 1,
            Ok(None) => absent += 1,
            Ok(Some(caller)) => panic!("{token:?} passed as {caller}"),
        }
    }
    assert!(
        refused > 1_000 && absent > 0,
        "refused {refused}, absent {absent}"
    );
}
