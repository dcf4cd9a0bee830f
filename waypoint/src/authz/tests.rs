use std::net::IpAddr;

use serde_json::{Value, json};
use warren_api::{Identity, identity::TrustDomains};

use crate::authn::Verified;

use super::{
    AtConnect, Authorizer, Decision, Denial, Peer, PolicyInput, Request, ServerName,
    matcher::{Cidr, PathTemplate, Pattern},
    path::{normalize, normalize_uri},
};

/// A request as a test writes it.
struct Sent {
    sa: &'static str,
    ns: &'static str,
    ip: &'static str,
    /// The address the client dialled.
    destination: &'static str,
    service: &'static str,
    port: u16,
    method: &'static str,
    uri: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    /// The peer's trust domain, and the mesh's.
    td: &'static str,
    domains: TrustDomains,
    /// The claims of a verified JWT, if the request carried one.
    jwt: Option<Value>,
}

fn get(uri: &'static str) -> Sent {
    Sent {
        sa: "client-a",
        ns: "demo",
        ip: "10.0.0.5",
        destination: "10.96.0.10",
        service: "app",
        port: 80,
        method: "GET",
        uri,
        headers: Vec::new(),
        td: "cluster.local",
        domains: TrustDomains::default(),
        jwt: None,
    }
}

impl Sent {
    /// A peer of trust domain `td`, in a mesh of `trust_domain` with `aliases`.
    fn in_mesh(mut self, td: &'static str, trust_domain: &str, aliases: &[&str]) -> Sent {
        self.td = td;
        self.domains = TrustDomains {
            trust_domain: trust_domain.into(),
            aliases: aliases.iter().map(|a| (*a).to_owned()).collect(),
        };
        self
    }
    fn from(mut self, ns: &'static str, sa: &'static str) -> Sent {
        self.ns = ns;
        self.sa = sa;
        self
    }
    fn method(mut self, method: &'static str) -> Sent {
        self.method = method;
        self
    }
    fn header(mut self, name: &'static str, value: &'static str) -> Sent {
        self.headers.push((name, value));
        self
    }
    fn jwt(mut self, claims: Value) -> Sent {
        self.jwt = Some(claims);
        self
    }
    fn ip(mut self, ip: &'static str) -> Sent {
        self.ip = ip;
        self
    }
    fn port(mut self, port: u16) -> Sent {
        self.port = port;
        self
    }
    fn dialling(mut self, destination: &'static str) -> Sent {
        self.destination = destination;
        self
    }
    fn service(mut self, service: &'static str) -> Sent {
        self.service = service;
        self
    }
    /// `f` of the peer this request comes from.
    fn with_peer<T>(&self, f: impl FnOnce(&Peer<'_>) -> T) -> T {
        let identity = Identity::new(self.td, self.ns, self.sa);
        let principals = self.domains.principals(&identity);
        f(&Peer {
            identity: &identity,
            principals: &principals,
            source_ip: self.ip.parse::<IpAddr>().expect("test address"),
            destination_ip: self.destination.parse::<IpAddr>().expect("test address"),
            service: self.service,
            service_namespace: "demo",
            port: self.port,
        })
    }
}

fn decide(authorizer: &Authorizer, sent: Sent) -> Decision {
    let mut builder = http::Request::builder().method(sent.method).uri(sent.uri);
    for (name, value) in &sent.headers {
        builder = builder.header(*name, *value);
    }
    let (mut parts, ()) = builder.body(()).expect("test request").into_parts();
    normalize_uri(&mut parts.uri);
    let auth = sent.jwt.clone().map(|claims| match claims {
        Value::Object(claims) => Verified::from_claims(claims),
        _ => unreachable!("claims are an object"),
    });
    sent.with_peer(|peer| authorizer.decide(&Request::new(peer, &parts, auth.as_ref())))
}

fn on_waypoint(name: &str, spec: Value) -> PolicyInput {
    PolicyInput {
        namespace: "demo".into(),
        name: name.into(),
        waypoint: true,
        services: Vec::new(),
        spec: serde_json::from_value(spec).expect("test policy"),
    }
}

fn authorizer(policies: Vec<PolicyInput>) -> Authorizer {
    Authorizer::build(policies)
}

fn allowed(a: &Authorizer, sent: Sent) -> bool {
    decide(a, sent) == Decision::Allow
}

fn denied_by(a: &Authorizer, sent: Sent) -> Option<String> {
    match decide(a, sent) {
        Decision::Deny(Denial::Matched { name, .. }) => Some(name),
        Decision::Deny(Denial::NoAllowMatched) => Some("(no allow)".into()),
        Decision::Allow => None,
    }
}

const A: &str = "cluster.local/ns/demo/sa/client-a";

#[test]
fn no_policies_allow_everything() {
    let a = authorizer(Vec::new());
    assert!(allowed(&a, get("/anything").method("DELETE")));
}

#[test]
fn allow_by_principal_and_path_prefix_denies_the_rest() {
    let a = authorizer(vec![on_waypoint(
        "public",
        json!({ "action": "ALLOW", "rules": [{
            "from": [{ "source": { "principals": [A] } }],
            "to": [{ "operation": { "methods": ["GET"], "paths": ["/public*"] } }],
        }]}),
    )]);
    assert!(allowed(&a, get("/public")));
    assert!(allowed(&a, get("/public/x?q=1")));
    assert_eq!(
        denied_by(&a, get("/private")),
        Some("(no allow)".into()),
        "ALLOW present but no match: deny"
    );
    assert!(!allowed(&a, get("/public").method("POST")), "method");
    assert!(
        !allowed(&a, get("/public").from("demo", "client-b")),
        "principal"
    );
    assert!(
        !allowed(&a, get("/public").from("other", "client-a")),
        "same sa, other namespace: other principal"
    );
}

#[test]
fn dot_segments_cannot_sidestep_a_path_rule() {
    let a = authorizer(vec![on_waypoint(
        "public",
        json!({ "rules": [{ "to": [{ "operation": { "paths": ["/public*"] } }] }] }),
    )]);
    assert!(!allowed(&a, get("/public/../admin")));
    assert!(!allowed(&a, get("/%70ublic/../admin")));
    assert!(allowed(&a, get("/%70ublic/ok")), "%70 is p");
    let deny = authorizer(vec![on_waypoint(
        "no-admin",
        json!({ "action": "DENY", "rules": [{ "to": [{ "operation": { "paths": ["/admin*"] } }] }] }),
    )]);
    assert!(!allowed(&deny, get("/public/../admin/users")));
    assert!(!allowed(&deny, get("/%61dmin")));
    assert!(!allowed(&deny, get("/public/%2E%2E/admin")));
}

/// Normalizing is idempotent, so no escape can appear that a backend
/// decoding once more would read differently; and a path dressed up with
/// dot segments, detours, backslashes and escapes of unreserved characters
/// normalizes as the plain path does. Seeded and bounded.
#[test]
fn normalizing_a_path_twice_changes_nothing_and_disguises_come_off() {
    use rand::{Rng as _, SeedableRng as _, rngs::StdRng, seq::IndexedRandom as _};

    // A lone `%` once made an escape of what followed it, after decoding:
    // `%%32%65` became `%2e`, a dot to a backend that decodes again.
    assert_eq!(normalize("/%%32%65"), "/%252e");
    assert_eq!(
        normalize("/public/%%32%65%%32%65/admin"),
        "/public/%252e%252e/admin"
    );

    let mut rng = StdRng::seed_from_u64(0x9a7e);
    let alphabet: &[&str] = &[
        "a", "b", "z", "0", "9", "-", ".", "_", "~", "%", "%2", "%2e", "%2E", "%2f", "%2F", "%41",
        "%61", "%7e", "%25", "%zz", "\\", "/", "//", "..", ".", "é", "?", ";", "=", "+",
    ];
    for _ in 0..20_000 {
        let path: String = std::iter::once("/".to_owned())
            .chain(
                (0..rng.random_range(0..16))
                    .map(|_| (*alphabet.choose(&mut rng).unwrap_or(&"a")).to_owned()),
            )
            .collect();
        let once = normalize(&path);
        assert_eq!(normalize(&once), once, "{path:?} → {once:?}");
        assert!(once.starts_with('/'), "{path:?} → {once:?}");
        assert!(
            !once.split('/').any(|s| s == "." || s == ".."),
            "{path:?} → {once:?}"
        );
        assert!(!once.contains('\\'), "{path:?} → {once:?}");
    }

    // Disguises of a plain path: before any segment, a dot segment or a
    // detour (written plainly or escaped); separators as backslashes;
    // unreserved characters escaped.
    let words = ["admin", "users", "a.b", "x-y", "_", "~me", "v1"];
    let noise: &[&[&str]] = &[
        &["."],
        &["detour", ".."],
        &["%2e"],
        &["x", "%2E%2e"],
        &[".", "."],
    ];
    for _ in 0..5_000 {
        let segments: Vec<&str> = (0..rng.random_range(1..5))
            .map(|_| *words.choose(&mut rng).unwrap_or(&"admin"))
            .collect();
        let plain = format!("/{}", segments.join("/"));
        let mut dressed = String::new();
        for (i, segment) in segments.iter().enumerate() {
            let mut parts: Vec<&str> = Vec::new();
            if rng.random_bool(0.3) {
                parts.extend(noise.choose(&mut rng).copied().unwrap_or(&["."]));
            }
            parts.push(segment);
            for (j, part) in parts.into_iter().enumerate() {
                // A request's path starts with a slash; any other separator
                // may be a backslash.
                let first = i == 0 && j == 0;
                dressed.push(if !first && rng.random_bool(0.2) {
                    '\\'
                } else {
                    '/'
                });
                // (A part written with escapes is left as written.)
                for c in part.chars() {
                    if !part.contains('%') && rng.random_bool(0.3) {
                        dressed.push_str(&format!("%{:02x}", c as u32));
                    } else {
                        dressed.push(c);
                    }
                }
            }
        }
        assert_eq!(
            normalize(&dressed),
            normalize(&plain),
            "{dressed:?} vs {plain:?}"
        );
    }
}

#[test]
fn string_forms_exact_prefix_suffix_presence() {
    for (pattern, path, expected) in [
        ("/exact", "/exact", true),
        ("/exact", "/exact/more", false),
        ("/pre*", "/prefix", true),
        ("/pre*", "/other", false),
        ("*.png", "/img/cat.png", true),
        ("*.png", "/img/cat.jpg", false),
        ("*", "/anything", true),
    ] {
        let a = authorizer(vec![on_waypoint(
            "p",
            json!({ "rules": [{ "to": [{ "operation": { "paths": [pattern] } }] }] }),
        )]);
        assert_eq!(allowed(&a, get(path)), expected, "{pattern} vs {path}");
    }
}

#[test]
fn not_paths_not_methods_and_ports() {
    let a = authorizer(vec![on_waypoint(
        "p",
        json!({ "rules": [{ "to": [{ "operation": {
            "notPaths": ["/admin*"], "notMethods": ["DELETE"], "ports": ["80"],
        } }] }] }),
    )]);
    assert!(allowed(&a, get("/x")));
    assert!(!allowed(&a, get("/admin/x")), "notPaths");
    assert!(!allowed(&a, get("/x").method("DELETE")), "notMethods");
    assert!(!allowed(&a, get("/x").port(8080)), "ports");
    let not_port = authorizer(vec![on_waypoint(
        "p",
        json!({ "rules": [{ "to": [{ "operation": { "notPorts": ["8080"] } }] }] }),
    )]);
    assert!(allowed(&not_port, get("/x")));
    assert!(!allowed(&not_port, get("/x").port(8080)));
}

#[test]
fn namespaces_and_not_namespaces_and_service_accounts() {
    let a = authorizer(vec![on_waypoint(
        "ns",
        json!({ "rules": [{ "from": [{ "source": { "namespaces": ["demo", "team-*"], "notNamespaces": ["team-x"] } }] }] }),
    )]);
    assert!(allowed(&a, get("/").from("demo", "any")));
    assert!(allowed(&a, get("/").from("team-a", "any")));
    assert!(
        !allowed(&a, get("/").from("team-x", "any")),
        "notNamespaces"
    );
    assert!(!allowed(&a, get("/").from("other", "any")));
    let sa = authorizer(vec![on_waypoint(
        "sa",
        json!({ "rules": [{ "from": [{ "source": { "serviceAccounts": ["demo/client-a"] } }] }] }),
    )]);
    assert!(allowed(&sa, get("/")));
    assert!(!allowed(&sa, get("/").from("demo", "client-b")));
    let not_principal = authorizer(vec![on_waypoint(
        "np",
        json!({ "rules": [{ "from": [{ "source": { "notPrincipals": ["*/sa/client-b"] } }] }] }),
    )]);
    assert!(allowed(&not_principal, get("/")));
    assert!(!allowed(&not_principal, get("/").from("demo", "client-b")));
}

#[test]
fn ip_blocks() {
    let a = authorizer(vec![on_waypoint(
        "ip",
        json!({ "rules": [{ "from": [{ "source": { "ipBlocks": ["10.0.0.0/24"], "notIpBlocks": ["10.0.0.9"] } }] }] }),
    )]);
    assert!(allowed(&a, get("/")));
    assert!(allowed(&a, get("/").ip("::ffff:10.0.0.7")), "v4-mapped");
    assert!(!allowed(&a, get("/").ip("10.0.0.9")));
    assert!(!allowed(&a, get("/").ip("10.0.1.5")));
    let remote = authorizer(vec![on_waypoint(
        "remote",
        json!({ "rules": [{ "from": [{ "source": { "remoteIpBlocks": ["10.0.0.5"] } }] }] }),
    )]);
    assert!(allowed(&remote, get("/")));
    assert!(!allowed(&remote, get("/").ip("10.0.0.6")));
}

#[test]
fn hosts_ignore_case_and_port() {
    let a = authorizer(vec![on_waypoint(
        "h",
        json!({ "rules": [{ "to": [{ "operation": { "hosts": ["App.demo.svc.cluster.local", "*.example.com"] } }] }] }),
    )]);
    assert!(allowed(
        &a,
        get("/").header("host", "app.demo.svc.cluster.local:80")
    ));
    assert!(allowed(&a, get("http://WWW.Example.com/")));
    assert!(!allowed(&a, get("/").header("host", "app.other")));
}

#[test]
fn when_conditions() {
    let a = authorizer(vec![on_waypoint(
        "w",
        json!({ "rules": [{ "when": [
            { "key": "request.headers[x-team]", "values": ["blue", "green*"] },
            { "key": "source.namespace", "values": ["demo"] },
            { "key": "source.principal", "notValues": ["*/sa/client-b"] },
            { "key": "destination.port", "values": ["80"] },
            { "key": "source.ip", "values": ["10.0.0.0/8"] },
        ] }] }),
    )]);
    assert!(allowed(&a, get("/").header("x-team", "blue")));
    assert!(allowed(&a, get("/").header("x-team", "green-2")));
    assert!(!allowed(&a, get("/")), "header absent");
    assert!(!allowed(&a, get("/").header("x-team", "red")));
    assert!(!allowed(
        &a,
        get("/").header("x-team", "blue").from("demo", "client-b")
    ));
    assert!(!allowed(
        &a,
        get("/").header("x-team", "blue").from("other", "client-a")
    ));
    assert!(!allowed(&a, get("/").header("x-team", "blue").port(81)));
    assert!(!allowed(
        &a,
        get("/").header("x-team", "blue").ip("192.168.0.1")
    ));
}

#[test]
fn header_not_values_hold_when_the_header_is_absent() {
    let a = authorizer(vec![on_waypoint(
        "w",
        json!({ "action": "DENY", "rules": [{ "when": [
            { "key": "request.headers[x-token]", "notValues": ["*"] },
        ] }] }),
    )]);
    assert!(!allowed(&a, get("/")), "no token: denied");
    assert!(allowed(&a, get("/").header("x-token", "t")));
}

#[test]
fn deny_wins_over_allow() {
    let a = authorizer(vec![
        on_waypoint("allow-all", json!({ "rules": [{}] })),
        on_waypoint(
            "block",
            json!({ "action": "DENY", "rules": [{ "when": [{ "key": "request.headers[x-block]", "values": ["yes"] }] }] }),
        ),
    ]);
    assert!(allowed(&a, get("/")));
    assert_eq!(
        denied_by(&a, get("/").header("x-block", "yes")),
        Some("block".into())
    );
    assert_eq!(
        decide(&a, get("/").header("x-block", "yes")),
        Decision::Deny(Denial::Matched {
            namespace: "demo".into(),
            name: "block".into(),
            rule: 0,
        })
    );
}

#[test]
fn cluster_local_and_aliases_name_the_meshs_own_workloads() {
    // Policies written for Istio's default trust domain, in a mesh of
    // another one that is migrating from `old.example`.
    let a = authorizer(vec![
        on_waypoint(
            "deny-batch",
            json!({ "action": "DENY", "rules": [{ "from": [{ "source": { "principals": ["cluster.local/ns/demo/sa/batch"] } }] }] }),
        ),
        on_waypoint(
            "allow-a",
            json!({ "rules": [{ "from": [{ "source": { "principals": ["old.example/ns/demo/sa/client-a"] } }] }] }),
        ),
    ]);
    let mesh = |sent: Sent, td| sent.in_mesh(td, "corp.example", &["old.example"]);
    assert_eq!(
        denied_by(&a, mesh(get("/").from("demo", "batch"), "corp.example")),
        Some("deny-batch".into()),
        "a DENY naming cluster.local must hold in any trust domain"
    );
    assert!(allowed(&a, mesh(get("/"), "corp.example")));
    assert!(allowed(&a, mesh(get("/"), "old.example")));
    // A mesh without that alias: `old.example` names another mesh.
    let plain = get("/").in_mesh("corp.example", "corp.example", &[]);
    assert!(!allowed(&a, plain));
}

#[test]
fn only_deny_policies_allow_what_they_do_not_match() {
    let a = authorizer(vec![on_waypoint(
        "block",
        json!({ "action": "DENY", "rules": [{ "to": [{ "operation": { "methods": ["DELETE"] } }] }] }),
    )]);
    assert!(allowed(&a, get("/")));
    assert!(!allowed(&a, get("/").method("DELETE")));
}

#[test]
fn allow_without_rules_allows_nothing_and_audit_changes_nothing() {
    let nothing = authorizer(vec![on_waypoint("nothing", json!({}))]);
    assert!(!allowed(&nothing, get("/")));
    let audit = authorizer(vec![on_waypoint(
        "audit",
        json!({ "action": "AUDIT", "rules": [{}] }),
    )]);
    assert!(allowed(&audit, get("/")));
}

/// The CUSTOM providers to ask about `sent`.
fn custom(authorizer: &Authorizer, sent: Sent) -> Vec<String> {
    let (mut parts, ()) = http::Request::builder()
        .method(sent.method)
        .uri(sent.uri)
        .body(())
        .expect("test request")
        .into_parts();
    sent.with_peer(|peer| super::custom(authorizer, peer, &mut parts, None))
        .into_iter()
        .map(|c| format!("{} {c}", c.provider))
        .collect()
}

#[test]
fn custom_asks_the_providers_of_matching_rules_of_requests_and_connections() {
    let a = authorizer(vec![
        on_waypoint(
            "ext",
            json!({ "action": "CUSTOM", "provider": { "name": "opa" },
                    "rules": [{ "to": [{ "operation": { "paths": ["/admin*"] } }] }] }),
        ),
        on_waypoint(
            "ext-too",
            json!({ "action": "CUSTOM", "provider": { "name": "opa" },
                    "rules": [{ "to": [{ "operation": { "paths": ["/admin/x"] } }] }] }),
        ),
        on_waypoint(
            "sso",
            json!({ "action": "CUSTOM", "provider": { "name": "oauth2" },
                    "rules": [{ "to": [{ "operation": { "methods": ["POST"] } }] },
                              { "to": [{ "operation": { "paths": ["/admin/x"] } }] }] }),
        ),
    ]);
    // Not asked; and CUSTOM policies are no DENY for a request.
    assert!(custom(&a, get("/public")).is_empty());
    assert!(allowed(&a, get("/admin/x")));
    // One question per provider, named by its first matching rule.
    assert_eq!(
        custom(&a, get("/admin/x")),
        [
            "opa ns[demo]-policy[ext]-rule[0]",
            "oauth2 ns[demo]-policy[sso]-rule[1]"
        ]
    );
    assert_eq!(
        custom(&a, get("/admin/y")),
        ["opa ns[demo]-policy[ext]-rule[0]"]
    );
    // The path as sent on: dot segments cannot sidestep the question.
    assert_eq!(
        custom(&a, get("/public/../admin/y")),
        ["opa ns[demo]-policy[ext]-rule[0]"]
    );
    // A connection is asked about at its CONNECT, its rules read as a
    // DENY's (HTTP conditions left out: every rule matches here); CUSTOM
    // is no DENY for it either.
    let sent = get("/");
    let asked: Vec<String> = sent
        .with_peer(|peer| super::custom_connection(&a, peer))
        .into_iter()
        .map(|c| format!("{} {c}", c.provider))
        .collect();
    assert_eq!(
        asked,
        [
            "opa ns[demo]-policy[ext]-rule[0]",
            "oauth2 ns[demo]-policy[sso]-rule[0]"
        ]
    );
    let sent = get("/");
    assert!(
        sent.with_peer(|peer| super::authorize_connection(&a, peer, ServerName::NotRead))
            .is_none()
    );
}

#[test]
fn jwt_principals_and_claims_are_the_verified_tokens() {
    let alice = || {
        json!({ "iss": "https://idp.example", "sub": "alice", "aud": ["shop", "web"],
                "azp": "frontend", "groups": ["dev", "admin"], "scope": "read write",
                "realm": { "roles": ["ops"] }, "level": 3 })
    };
    // Any authenticated caller, and no one without a token.
    let allow = authorizer(vec![on_waypoint(
        "jwt",
        json!({ "rules": [{ "from": [{ "source": { "requestPrincipals": ["*"] } }] }] }),
    )]);
    assert!(allowed(&allow, get("/").jwt(alice())));
    assert!(!allowed(&allow, get("/")));
    // A principal is issuer and subject, split at the last `/` of the
    // value, each matched as Istio's patterns are: `X/*` is issuer X
    // exactly, not every issuer whose name starts with `X/`.
    let allow = authorizer(vec![on_waypoint(
        "jwt",
        json!({ "rules": [{ "from": [{ "source": {
            "requestPrincipals": ["https://idp.example/*"], "principals": [A] } }] }] }),
    )]);
    assert!(allowed(&allow, get("/").jwt(alice())));
    for caller in [
        json!({ "iss": "https://other", "sub": "alice" }),
        json!({ "iss": "https://idp.example/partners", "sub": "alice" }),
    ] {
        assert!(!allowed(&allow, get("/").jwt(caller.clone())), "{caller}");
    }
    let allow = authorizer(vec![on_waypoint(
        "jwt",
        json!({ "rules": [{ "from": [{ "source": {
            "requestPrincipals": ["https://idp.example/a/b", "*/svc-*"] } }] }] }),
    )]);
    // Issuer `https://idp.example/a`, subject `b`; any issuer, `svc-` subjects.
    for (caller, holds) in [
        (json!({ "iss": "https://idp.example/a", "sub": "b" }), true),
        (json!({ "iss": "https://idp.example", "sub": "a/b" }), false),
        (json!({ "iss": "https://x", "sub": "svc-cart" }), true),
        (json!({ "iss": "https://x", "sub": "user" }), false),
    ] {
        assert_eq!(
            allowed(&allow, get("/").jwt(caller.clone())),
            holds,
            "{caller}"
        );
    }
    // A good token without a subject names no principal: `*` does not
    // match it, `notRequestPrincipals: ["*"]` does.
    let allow = authorizer(vec![on_waypoint(
        "jwt",
        json!({ "rules": [{ "from": [{ "source": { "requestPrincipals": ["*"] } }] }] }),
    )]);
    let no_subject = json!({ "iss": "https://idp.example", "aud": "shop" });
    assert!(!allowed(&allow, get("/").jwt(no_subject.clone())));
    // Claims: list elements, nested names, space-delimited scopes,
    // numbers; audiences and presenter.
    for (key, value, holds) in [
        ("request.auth.claims[groups]", "admin", true),
        ("request.auth.claims[groups]", "root", false),
        ("request.auth.claims[realm][roles]", "ops", true),
        ("request.auth.claims[scope]", "write", true),
        ("request.auth.claims[scope]", "read write", false),
        // A number is no string: Istio's matchers never match it.
        ("request.auth.claims[level]", "3", false),
        ("request.auth.claims[missing]", "*", false),
        ("request.auth.audiences", "web", true),
        ("request.auth.audiences", "api", false),
        ("request.auth.presenter", "front*", true),
        ("request.auth.principal", "https://idp.example/alice", true),
    ] {
        let allow = authorizer(vec![on_waypoint(
            "claims",
            json!({ "rules": [{ "when": [{ "key": key, "values": [value] }] }] }),
        )]);
        assert_eq!(
            allowed(&allow, get("/").jwt(alice())),
            holds,
            "{key} {value}"
        );
        // Without a token nothing about one holds.
        assert!(!allowed(&allow, get("/")), "{key} without a token");
    }
    // A DENY of callers without a token on some paths (Istio's
    // "require JWT" recipe).
    let deny = authorizer(vec![on_waypoint(
        "require-jwt",
        json!({ "action": "DENY", "rules": [{
            "from": [{ "source": { "notRequestPrincipals": ["*"] } }],
            "to": [{ "operation": { "paths": ["/admin*"] } }],
        }] }),
    )]);
    assert_eq!(denied_by(&deny, get("/admin")), Some("require-jwt".into()));
    assert_eq!(
        denied_by(&deny, get("/admin").jwt(no_subject)),
        Some("require-jwt".into())
    );
    assert!(allowed(&deny, get("/admin").jwt(alice())));
    assert!(allowed(&deny, get("/public")));
    // A claim condition with a path the waypoint cannot read fails closed.
    let bad = authorizer(vec![on_waypoint(
        "bad",
        json!({ "rules": [{ "when": [{ "key": "request.auth.claims[]", "values": ["x"] }] }] }),
    )]);
    assert!(!allowed(&bad, get("/").jwt(alice())));
    // On a TCP connection there is no token: an ALLOW that needs one
    // allows nothing.
    let allow = authorizer(vec![on_waypoint(
        "jwt",
        json!({ "rules": [{ "from": [{ "source": { "requestPrincipals": ["*"] } }] }] }),
    )]);
    assert!(get("/").with_peer(|peer| {
        !allow
            .decide(&Request::connection(peer, ServerName::NotRead))
            .eq(&Decision::Allow)
    }));
}

/// Whether a TCP connection from `sent`'s peer is allowed, knowing
/// `server_name` of it.
fn named_connection_allowed(a: &Authorizer, sent: &Sent, server_name: ServerName<'_>) -> bool {
    sent.with_peer(|peer| super::authorize_connection(a, peer, server_name).is_none())
}

/// How a TCP connection from `sent`'s peer stands at its CONNECT.
fn at_connect(a: &Authorizer, sent: &Sent, tls_port: bool) -> AtConnect {
    sent.with_peer(|peer| super::at_connect(a, peer, tls_port))
}

#[test]
fn server_names_decide_tls_connections() {
    let allow = authorizer(vec![PolicyInput {
        services: vec!["db".into()],
        waypoint: false,
        ..on_waypoint(
            "by-name",
            json!({ "rules": [{ "when": [{
                "key": "connection.sni",
                "values": ["api.example.com", "*.internal"],
            }] }] }),
        )
    }]);
    let db = get("/").service("db").port(443);
    for (name, holds) in [
        (Some("api.example.com"), true),
        (Some("API.Example.COM"), true),
        (Some("billing.internal"), true),
        (Some("example.com"), false),
        (None, false),
    ] {
        let known = ServerName::Read(name);
        assert_eq!(
            named_connection_allowed(&allow, &db, known),
            holds,
            "{name:?}"
        );
    }
    // An HTTP request arrives in plaintext inside HBONE: it has no name.
    assert!(!allowed(&allow, get("/").service("db")));
    // On a TLS port the hello decides; on another the rule fails closed.
    assert_eq!(at_connect(&allow, &db, true), AtConnect::AfterHello);
    assert!(matches!(
        at_connect(&allow, &db, false),
        AtConnect::Denied(_)
    ));
    // Other Services' connections are decided at CONNECT.
    let other = get("/").service("other").port(443);
    assert_eq!(at_connect(&allow, &other, true), AtConnect::Allowed);

    // A DENY of every name but one: a connection without a name is denied
    // too (`notValues` holds when there is nothing to match).
    let only_api = || {
        on_waypoint(
            "only-api",
            json!({ "action": "DENY", "rules": [{ "when": [{
                "key": "connection.sni",
                "notValues": ["api.example.com"],
            }] }] }),
        )
    };
    let deny = authorizer(vec![only_api()]);
    let named = |name| ServerName::Read(Some(name));
    assert!(named_connection_allowed(
        &deny,
        &db,
        named("api.example.com")
    ));
    assert!(!named_connection_allowed(
        &deny,
        &db,
        named("admin.example.com")
    ));
    assert!(!named_connection_allowed(
        &deny,
        &db,
        ServerName::Read(None)
    ));
    assert_eq!(at_connect(&deny, &db, true), AtConnect::AfterHello);
    // On a port not declared TLS the DENY matches on its other conditions.
    assert!(matches!(
        at_connect(&deny, &db, false),
        AtConnect::Denied(_)
    ));

    // A connection another policy denies whatever its name is refused at
    // CONNECT, without waiting for its hello.
    let not_b = on_waypoint(
        "not-b",
        json!({ "action": "DENY", "rules": [{ "from": [{ "source": {
            "principals": ["cluster.local/ns/demo/sa/client-b"],
        } }] }] }),
    );
    let both = authorizer(vec![only_api(), not_b]);
    let from_b = get("/").from("demo", "client-b").service("db").port(443);
    assert!(matches!(
        at_connect(&both, &from_b, true),
        AtConnect::Denied(Denial::Matched { name, .. }) if name == "not-b"
    ));
    assert_eq!(at_connect(&both, &db, true), AtConnect::AfterHello);
    // Nor does a connection that every name lets through wait.
    let plain = authorizer(vec![on_waypoint("plain", json!({ "rules": [{}] }))]);
    assert_eq!(at_connect(&plain, &db, true), AtConnect::Allowed);
}

#[test]
fn destination_ip_is_the_address_dialled() {
    let a = authorizer(vec![on_waypoint(
        "vip-only",
        json!({ "action": "DENY", "rules": [{ "when": [{
            "key": "destination.ip",
            "notValues": ["10.96.0.0/16"],
        }] }] }),
    )]);
    assert!(allowed(&a, get("/")), "the Service's address");
    assert_eq!(
        denied_by(&a, get("/").dialling("10.244.1.7")),
        Some("vip-only".into()),
        "a pod dialled by its own address"
    );
    assert!(!connection_allowed(&a, get("/").dialling("10.244.1.7")));
}

/// Path templates as Istio reads them: `{*}` one segment, `{**}` the rest
/// of the path, in ALLOW, DENY and CUSTOM rules alike.
#[test]
fn path_templates_match_segments() {
    let allow = authorizer(vec![on_waypoint(
        "t",
        json!({ "rules": [{ "to": [{ "operation": { "paths": ["/a/{*}/b", "/files/{**}"] } }] }] }),
    )]);
    for path in [
        "/a/x/b",
        "/a/x.y-z/b",
        "/files/",
        "/files/x",
        "/files/x/y/z.txt",
    ] {
        assert!(allowed(&allow, get(path)), "{path}");
    }
    for path in [
        "/a/b",
        "/a//b",
        "/a/x/y/b",
        "/a/x/b/c",
        "/a/{*}/b",
        "/files",
        "/filesx/y",
    ] {
        assert!(!allowed(&allow, get(path)), "{path}");
    }

    let deny = authorizer(vec![on_waypoint(
        "block-admin",
        json!({ "action": "DENY", "rules": [{ "to": [{ "operation": { "paths": ["/admin/{**}"] } }] }] }),
    )]);
    assert_eq!(
        denied_by(&deny, get("/admin/users")).as_deref(),
        Some("block-admin")
    );
    assert!(allowed(&deny, get("/public/users")));
    // After normalization: dot segments cannot sidestep it.
    assert!(!allowed(&deny, get("/public/../admin/users")));

    let ask = authorizer(vec![on_waypoint(
        "ext",
        json!({ "action": "CUSTOM", "provider": { "name": "opa" },
                "rules": [{ "to": [{ "operation": { "notPaths": ["/public/{*}"] } }] }] }),
    )]);
    assert!(custom(&ask, get("/public/x")).is_empty());
    assert_eq!(
        custom(&ask, get("/admin/x")),
        ["opa ns[demo]-policy[ext]-rule[0]"]
    );
}

/// A template Istio would not read fails closed: an ALLOW rule using it
/// never matches, and in a DENY or CUSTOM rule the field is left out (the
/// rule matches on its other conditions), never compared as literal text.
#[test]
fn unreadable_path_templates_fail_closed() {
    for bad in ["/a/{*}.txt", "/{**}/b/{*}", "/a/*/{*}", "/a/{x}"] {
        assert!(
            PathTemplate::parse(bad).is_err(),
            "{bad} must not read as a template"
        );
        let allow = authorizer(vec![on_waypoint(
            "t",
            json!({ "rules": [{ "to": [{ "operation": { "paths": [bad] } }] }] }),
        )]);
        assert!(!allowed(&allow, get(bad)), "{bad}");
        let deny = authorizer(vec![on_waypoint(
            "d",
            json!({ "action": "DENY", "rules": [{ "to": [{ "operation": { "paths": [bad, "/y"], "methods": ["POST"] } }] }] }),
        )]);
        assert!(allowed(&deny, get("/z")), "{bad}: GET is not the rule's");
        assert!(
            !allowed(&deny, get("/z").method("POST")),
            "{bad}: the paths are left out, so any POST is denied"
        );
    }
}

#[test]
fn service_targets_bind_only_that_service() {
    let a = authorizer(vec![PolicyInput {
        services: vec!["app".into()],
        waypoint: false,
        ..on_waypoint("app-only", json!({ "action": "DENY", "rules": [{}] }))
    }]);
    assert!(!allowed(&a, get("/")));
    assert!(allowed(&a, get("/").service("other")));
}

#[test]
fn patterns_and_blocks() {
    assert!(Pattern::parse("*").matches(""));
    assert!(Pattern::parse("a*").matches("abc"));
    assert!(!Pattern::parse("a*").matches("ba"));
    assert!(Pattern::parse("*c").matches("abc"));
    assert!(Pattern::parse("abc").matches("abc"));
    assert!(!Pattern::parse("abc").matches("abcd"));
    let block = Cidr::parse("10.1.0.0/16").expect("cidr");
    assert!(block.contains("10.1.200.3".parse().expect("ip")));
    assert!(!block.contains("10.2.0.1".parse().expect("ip")));
    assert!(
        Cidr::parse("0.0.0.0/0")
            .expect("cidr")
            .contains("1.2.3.4".parse().expect("ip"))
    );
    assert!(
        Cidr::parse("fd00::/8")
            .expect("cidr")
            .contains("fd12::1".parse().expect("ip"))
    );
    assert_eq!(Cidr::parse("10.0.0.0/33"), None);
    assert_eq!(Cidr::parse("nope"), None);
}

#[test]
fn path_normalization() {
    for (raw, normal) in [
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/../../b", "/b"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/%61dmin", "/admin"),
        ("/a%2fb", "/a%2Fb"),
        ("/a%2e%2e/x", "/a../x"),
        ("/x/%2e%2e/y", "/y"),
        ("/a\\..\\b", "/b"),
        ("/a//b", "/a//b"),
        // A `%` that starts no escape is escaped itself.
        ("/100%", "/100%25"),
        ("/100%25", "/100%25"),
        ("*", "*"),
    ] {
        assert_eq!(normalize(raw), normal, "{raw}");
    }
    let mut uri: http::Uri = "/a/../b?x=1".parse().expect("uri");
    normalize_uri(&mut uri);
    assert_eq!(uri.path_and_query().map(|p| p.as_str()), Some("/b?x=1"));
}

/// A TCP connection's decision: who, from where, to which port.
fn connection_allowed(a: &Authorizer, sent: Sent) -> bool {
    named_connection_allowed(a, &sent, ServerName::NotRead)
}

#[test]
fn a_tcp_connection_is_decided_on_l4_fields_and_http_ones_fail_closed() {
    // L4 fields decide a connection as they decide a request.
    let only_a = authorizer(vec![on_waypoint(
        "only-a",
        json!({ "action": "ALLOW", "rules": [
            { "from": [{ "source": { "principals": ["cluster.local/ns/demo/sa/client-a"] } }] }
        ] }),
    )]);
    assert!(connection_allowed(&only_a, get("/")));
    assert!(!connection_allowed(
        &only_a,
        get("/").from("demo", "client-b")
    ));

    // An ALLOW rule that needs the request never matches a connection.
    let get_only = authorizer(vec![on_waypoint(
        "get-only",
        json!({ "action": "ALLOW", "rules": [
            { "from": [{ "source": { "namespaces": ["demo"] } }],
              "to": [{ "operation": { "methods": ["GET"] } }] }
        ] }),
    )]);
    assert!(allowed(&get_only, get("/")), "a request still matches");
    assert!(!connection_allowed(&get_only, get("/")));

    // A DENY rule leaves its HTTP fields out, so it denies more: even a
    // `notPaths` that a request would escape.
    let deny_private = authorizer(vec![on_waypoint(
        "private",
        json!({ "action": "DENY", "rules": [
            { "from": [{ "source": { "namespaces": ["demo"] } }],
              "to": [{ "operation": { "notPaths": ["/public*"] } }] }
        ] }),
    )]);
    assert!(allowed(&deny_private, get("/public/x")));
    assert!(!connection_allowed(&deny_private, get("/")));
    assert!(
        connection_allowed(&deny_private, get("/").from("other", "client-a")),
        "its L4 fields still decide"
    );
    // No policy: every connection passes.
    assert!(connection_allowed(&authorizer(Vec::new()), get("/")));
}
