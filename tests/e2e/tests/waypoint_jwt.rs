//! RequestAuthentication at the waypoint, with real traffic: tokens of a
//! test issuer are verified against its key set, a bad token is refused with
//! 401 and Envoy's reason, a good one names the caller to the waypoint's
//! AuthorizationPolicy (`requestPrincipals`, `request.auth.claims`), is taken
//! off the request and its claim handed on as a header; a bad update keeps
//! the last good rules in force.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use serde_json::{Value, json};
use warren_e2e::{
    agent::warrenctl_waypoint_explain,
    mesh::{AppBehindWaypoint, app_behind_waypoint, eventually},
};
use warren_testbed::{Pod, jwt::Issuer, privilege::require_root};

const ISSUER: &str = "https://idp.warren.test";
const JWT_FILE: &str = "requestauthentication.demo.jwt.yaml";
const POLICY_FILE: &str = "authz.demo.require-jwt.yaml";

fn request_authentication(jwks: &str) -> String {
    format!(
        r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{ name: jwt, namespace: demo }}
spec:
  targetRefs: [{{ group: gateway.networking.k8s.io, kind: Gateway, name: waypoint }}]
  jwtRules:
  - issuer: {ISSUER}
    audiences: [shop]
    jwks: '{jwks}'
    outputClaimToHeaders: [{{ header: x-user, claim: sub }}]
"#
    )
}

/// `/public` for anyone; `/admin` for any caller of the issuer; `/ops` for
/// its callers in group `ops`.
const POLICY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: require-jwt, namespace: demo }
spec:
  targetRefs: [{ group: gateway.networking.k8s.io, kind: Gateway, name: waypoint }]
  rules:
  - to: [{ operation: { paths: ["/public*"] } }]
  - from: [{ source: { requestPrincipals: ["https://idp.warren.test/*"] } }]
    to: [{ operation: { paths: ["/admin*"] } }]
  - to: [{ operation: { paths: ["/ops*"] } }]
    when: [{ key: "request.auth.claims[groups]", values: ["ops"] }]
"#;

/// One request by curl from `pod`: (status, body).
fn get(pod: &Pod, url: &str, token: Option<&str>) -> Result<(u16, String)> {
    let auth = token.map(|t| format!("authorization: Bearer {t}"));
    let mut args = vec!["-sS", "--max-time", "5", "-w", "\n%{http_code}"];
    if let Some(auth) = &auth {
        args.extend(["-H", auth.as_str()]);
    }
    args.push(url);
    let out = pod.sandbox.exec("curl", &args)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let status = code.trim().parse().with_context(|| {
        format!(
            "curl {url}: {text:?} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((status, body.to_owned()))
}

#[test]
fn a_waypoint_verifies_jwts_and_authorizes_on_them() -> Result<()> {
    require_root()?;
    let AppBehindWaypoint {
        cluster: _cluster,
        mesh,
        waypoint,
        server,
        config,
        client,
        base,
        ..
    } = app_behind_waypoint()?;
    let logs = || format!("{}\nwaypoint:\n{}", mesh.logs(), waypoint.output());

    let idp = Issuer::new(ISSUER, "key-1")?;
    let alice = idp.token(json!({ "sub": "alice", "aud": "shop", "groups": ["dev"] }))?;
    let olga = idp.token(json!({ "sub": "olga", "aud": ["shop"], "groups": ["ops"] }))?;
    let expired = idp.token(json!({ "sub": "alice", "aud": "shop", "exp": 1_000_000 }))?;
    let other_audience = idp.token(json!({ "sub": "alice", "aud": "bank" }))?;
    let forged = Issuer::new(ISSUER, "key-1")?.token(json!({ "sub": "mallory", "aud": "shop" }))?;

    std::fs::write(config.join(JWT_FILE), request_authentication(&idp.jwks()))?;
    std::fs::write(config.join(POLICY_FILE), POLICY)?;
    let admin = format!("{base}/admin");
    eventually(Duration::from_secs(20), "JWT rules in force", || {
        Ok(get(&client, &admin, None)?.0 == 403 && get(&client, &admin, Some(&alice))?.0 == 200)
    })
    .with_context(logs)?;

    // (path, token, status, what the body says)
    let cases: [(&str, Option<&str>, u16, &str); 9] = [
        ("/public", None, 200, "\"app\""),
        ("/admin", None, 403, "RBAC: access denied"),
        ("/admin", Some(&alice), 200, "\"app\""),
        ("/ops", Some(&alice), 403, "RBAC: access denied"),
        ("/ops", Some(&olga), 200, "\"app\""),
        // A bad token is refused even where no token is needed.
        ("/public", Some(&expired), 401, "Jwt is expired"),
        (
            "/admin",
            Some(&other_audience),
            401,
            "Audiences in Jwt are not allowed",
        ),
        ("/admin", Some(&forged), 401, "Jwt verification fails"),
        ("/admin", Some("not-a-token"), 401, "Jwt is not in the form"),
    ];
    let check_cases = || -> Result<()> {
        for (path, token, status, says) in &cases {
            let (got, body) = get(&client, &format!("{base}{path}"), *token)?;
            ensure!(
                got == *status && body.contains(says),
                "{path} with {}: expected {status} saying {says:?}, got {got} {body:?}\n{}",
                token.map_or("no token", |_| "a token"),
                logs()
            );
        }
        Ok(())
    };
    check_cases()?;

    // The app sees the caller's claim, not the token.
    let (_, body) = get(&client, &admin, Some(&alice))?;
    let answer: Value = serde_json::from_str(&body).with_context(|| body.clone())?;
    let headers = &answer["headers"];
    ensure!(
        headers["x-user"] == "alice" && headers.get("authorization").is_none(),
        "the app received {headers}"
    );
    // A client cannot send the claim header itself.
    let out = client.sandbox.exec(
        "curl",
        [
            "-sS",
            "--max-time",
            "5",
            "-H",
            "x-user: root",
            &format!("{base}/public"),
        ],
    )?;
    let answer: Value = serde_json::from_slice(&out.stdout).context("app's answer")?;
    ensure!(
        answer["headers"].get("x-user").is_none(),
        "a client's x-user reached the app: {}",
        answer["headers"]
    );

    // The waypoint explains both outcomes.
    for (token, says) in [
        (
            &alice,
            [
                "JWT verified: request principal https://idp.warren.test/alice",
                "verdict: forwarded",
            ],
        ),
        (
            &expired,
            ["401: Jwt is expired", "verdict: unauthenticated"],
        ),
    ] {
        let header = format!("authorization: Bearer {token}");
        let shown =
            warrenctl_waypoint_explain(&config, "demo", "demo/client", &["-H", &header, &admin])?;
        for part in says {
            ensure!(
                shown.contains(part),
                "explain does not say {part:?}:\n{shown}"
            );
        }
    }
    let output = waypoint.output();
    ensure!(
        output.contains("jwt_authn_access_denied{Jwt_is_expired}"),
        "the access log does not name the refusal:\n{output}"
    );

    // A broken update (a key set with no keys) is refused; the last good
    // rules stay in force.
    std::fs::write(
        config.join(JWT_FILE),
        request_authentication(r#"{"keys": []}"#),
    )?;
    eventually(
        Duration::from_secs(20),
        "the agents refuse the broken rules",
        || {
            Ok(mesh
                .logs()
                .lines()
                .filter(|l| l.contains("rejected") && l.contains("the key set has no keys"))
                .count()
                >= 2)
        },
    )
    .with_context(logs)?;
    check_cases()?;

    // Rules withdrawn: a token is no longer read, so nothing names a
    // caller: /admin is refused even with a good token, a bad one passes.
    std::fs::remove_file(config.join(JWT_FILE))?;
    eventually(Duration::from_secs(20), "JWT rules withdrawn", || {
        Ok(get(&client, &admin, Some(&alice))?.0 == 403
            && get(&client, &format!("{base}/public"), Some(&expired))?.0 == 200)
    })
    .with_context(logs)?;

    drop(server);
    drop(waypoint);
    Ok(())
}
