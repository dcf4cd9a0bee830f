//! VirtualService `tls` rules at the waypoint, with real TLS: two backends
//! of one Service's `https` port, each with a certificate of its own; the
//! waypoint reads the server name of each client's hello, without
//! terminating TLS, and sends the connection to the subset its rule names.
//! A name no rule has goes to the Service as a whole. An AuthorizationPolicy
//! on `connection.sni` refuses connections by the name they ask for.
//! Gateway API TCPRoutes and TLSRoutes do the same through the
//! VirtualService they make.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result, ensure};
use warren_e2e::{
    agent::warrenctl_waypoint_explain,
    mesh::{
        Mesh, demo_cluster_with_waypoint_pod, eventually, service_vip, start_mesh_and_waypoint,
    },
};
use warren_testbed::{Cluster, Pod, Process, ServicePort, labels, privilege::require_root};

const ROUTES: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: secure, namespace: demo }
spec:
  host: secure
  subsets:
  - { name: a, labels: { version: a } }
  - { name: b, labels: { version: b } }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: secure, namespace: demo }
spec:
  hosts: [secure]
  tls:
  - match: [{ sniHosts: [a.example.com] }]
    route: [{ destination: { host: secure, subset: a } }]
  - match: [{ sniHosts: ["*.b.example.com"] }]
    route: [{ destination: { host: secure, subset: b } }]
  - match: [{ sniHosts: [secure.demo.svc.cluster.local] }]
    route: [{ destination: { host: secure, subset: a } }]
"#;

/// Connections asking for a name under `b.example.com` are refused, by a
/// policy that the waypoint can decide only once it has read the hello.
const DENY_B: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: no-b, namespace: demo }
spec:
  targetRefs: [{ kind: Service, group: "", name: secure }]
  action: DENY
  rules:
  - when: [{ key: connection.sni, values: ["*.b.example.com"] }]
"#;

/// A self-signed certificate and key for `cn`, in `dir`.
fn certificate(dir: &Path, cn: &str) -> Result<()> {
    let key = dir.join(format!("{cn}.key"));
    let cert = dir.join(format!("{cn}.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", &format!("/CN={cn}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("running openssl req")?;
    ensure!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The CN of the certificate that answered a TLS connection from `pod` to
/// `vip:443` asking for `name`.
fn answered_by(pod: &Pod, vip: &str, name: &str) -> Result<String> {
    let resolve = format!("{name}:443:{vip}");
    let out = pod.sandbox.exec(
        "curl",
        [
            "-sk",
            "-v",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "--resolve",
            &resolve,
            &format!("https://{name}/"),
        ],
    )?;
    let verbose = String::from_utf8_lossy(&out.stderr);
    verbose
        .lines()
        .find_map(|l| {
            l.split_once("subject: CN=")
                .map(|(_, cn)| cn.trim().to_owned())
        })
        .with_context(|| format!("no certificate in curl's output for {name}:\n{verbose}"))
}

/// The testbed of these tests: Service `secure` (port 443, `https`) over
/// two TLS servers whose certificates name them (`backend-a`,
/// `backend-b`), a client, and the mesh with the namespace's waypoint.
struct TlsBackends {
    cluster: Cluster,
    mesh: Mesh,
    waypoint: Process,
    _servers: Vec<Process>,
    vip: String,
    client: Pod,
}

impl TlsBackends {
    /// With Services `secure-a` and `secure-b` for each server alone when
    /// `per_backend`.
    fn start(per_backend: bool) -> Result<TlsBackends> {
        require_root()?;
        let mut cluster = demo_cluster_with_waypoint_pod(&[
            (
                "secure-a",
                1,
                &[("app", "secure"), ("version", "a")],
                "secure",
            ),
            (
                "secure-b",
                1,
                &[("app", "secure"), ("version", "b")],
                "secure",
            ),
            ("client", 0, &[("app", "client")], "client"),
        ])?;
        let https = || {
            vec![ServicePort {
                name: "https".into(),
                port: 443,
                target_port: 8443,
            }]
        };
        cluster.add_service("demo", "secure", labels(&[("app", "secure")]), https())?;
        if per_backend {
            for version in ["a", "b"] {
                let selector = labels(&[("app", "secure"), ("version", version)]);
                cluster.add_service("demo", &format!("secure-{version}"), selector, https())?;
            }
        }
        let (mesh, waypoint) = start_mesh_and_waypoint(&cluster, "demo")?;

        // Two TLS servers, told apart by their certificates.
        let certs = cluster.config_dir().join("tls-certs");
        std::fs::create_dir_all(&certs)?;
        let mut servers = Vec::new();
        for (pod, cn) in [("secure-a", "backend-a"), ("secure-b", "backend-b")] {
            certificate(&certs, cn)?;
            let pod = cluster.pod(pod)?.clone();
            let cert = certs.join(format!("{cn}.pem"));
            let key = certs.join(format!("{cn}.key"));
            servers.push(cluster.spawn(
                &pod.sandbox,
                "openssl",
                &[
                    "s_server",
                    "-accept",
                    "8443",
                    "-cert",
                    &cert.to_string_lossy(),
                    "-key",
                    &key.to_string_lossy(),
                    "-www",
                    "-quiet",
                ],
            )?);
        }
        let vip = service_vip(&cluster, "secure")?.to_string();
        let client = cluster.pod("client")?.clone();
        Ok(TlsBackends {
            cluster,
            mesh,
            waypoint,
            _servers: servers,
            vip,
            client,
        })
    }

    fn logs(&self) -> String {
        format!(
            "{}\nwaypoint:\n{}",
            self.mesh.logs(),
            self.waypoint.output()
        )
    }

    /// Which backends answered `n` connections asking for `name`.
    fn answers(&self, name: &str, n: usize) -> Result<Vec<String>> {
        (0..n)
            .map(|_| answered_by(&self.client, &self.vip, name))
            .collect()
    }
}

#[test]
fn a_waypoint_routes_tls_by_server_name() -> Result<()> {
    let backends = TlsBackends::start(false)?;
    let TlsBackends {
        cluster,
        waypoint,
        vip,
        client,
        ..
    } = &backends;
    let (vip, client) = (vip.as_str(), client);
    let config = cluster.config_dir().to_path_buf();
    let logs = || backends.logs();

    // Without rules: both backends answer, whatever the name.
    eventually(Duration::from_secs(20), "both backends answer", || {
        let seen: Vec<String> = (0..8)
            .filter_map(|_| answered_by(client, vip, "a.example.com").ok())
            .collect();
        Ok(seen.iter().any(|s| s == "backend-a") && seen.iter().any(|s| s == "backend-b"))
    })
    .with_context(logs)?;

    std::fs::write(config.join("routes.demo.secure.yaml"), ROUTES)?;
    eventually(Duration::from_secs(20), "tls rules in force", || {
        Ok((0..4)
            .all(|_| answered_by(client, vip, "a.example.com").is_ok_and(|cn| cn == "backend-a")))
    })
    .with_context(logs)?;
    for (name, want) in [
        ("a.example.com", "backend-a"),
        ("api.b.example.com", "backend-b"),
        ("x.y.b.example.com", "backend-b"),
        ("secure.demo.svc.cluster.local", "backend-a"),
    ] {
        for _ in 0..10 {
            let got = answered_by(client, vip, name)?;
            ensure!(
                got == want,
                "{name}: answered by {got}, expected {want}\n{}",
                logs()
            );
        }
    }
    // A name no rule has: the Service, both backends.
    let seen: Vec<String> = (0..12)
        .map(|_| answered_by(client, vip, "other.example.com"))
        .collect::<Result<_>>()?;
    ensure!(
        seen.iter().any(|s| s == "backend-a") && seen.iter().any(|s| s == "backend-b"),
        "other.example.com was answered by {seen:?} only"
    );
    // The access log names the rule each connection took.
    let output = waypoint.output();
    ensure!(
        output.contains("spec.tls[1]"),
        "the access log does not name the tls rule:\n{output}"
    );
    // The waypoint explains what it does with a hello: by the Service's
    // name (the server name a client dialling it sends), and by address
    // (no server name).
    for (url, says) in [
        (
            "https://secure.demo.svc.cluster.local/".to_owned(),
            [
                "routed on the server name secure.demo.svc.cluster.local",
                "rule \"spec.tls[2]\"",
                "relay to secure.demo.svc.cluster.local subset a (100%)",
            ],
        ),
        (
            format!("https://{vip}/"),
            [
                "a hello without a server name fits no tls rule",
                "no VirtualService tcp or tls rule fits",
                "verdict: forwarded",
            ],
        ),
    ] {
        let shown = warrenctl_waypoint_explain(&config, "demo", "demo/client", &[&url])?;
        for part in says {
            ensure!(
                shown.contains(part),
                "explain {url} does not say {part:?}:\n{shown}"
            );
        }
    }

    // An AuthorizationPolicy on the server name: the hello is read before
    // the decision, and a denied connection never reaches a backend.
    std::fs::write(config.join("authz.demo.no-b.yaml"), DENY_B)?;
    eventually(
        Duration::from_secs(20),
        "the server-name policy in force",
        || Ok(answered_by(client, vip, "api.b.example.com").is_err()),
    )
    .with_context(logs)?;
    for _ in 0..5 {
        let refused = answered_by(client, vip, "x.y.b.example.com");
        ensure!(refused.is_err(), "x.y.b.example.com answered: {refused:?}");
        let got = answered_by(client, vip, "a.example.com")?;
        ensure!(got == "backend-a", "a.example.com answered by {got}");
    }
    let output = waypoint.output();
    ensure!(
        output
            .lines()
            .any(|l| l.contains(r#"server_name="x.y.b.example.com""#)
                && l.contains("rbac_access_denied_matched_policy[ns[demo]-policy[no-b]-rule[0]]")),
        "no access line of a connection denied by its server name:\n{output}"
    );
    // Bytes that are no TLS hello cannot tell a name: with a policy on the
    // name, the connection is refused rather than sent on unchecked.
    let plain = client.sandbox.exec(
        "curl",
        ["-s", "--max-time", "8", &format!("http://{vip}:443/")],
    )?;
    ensure!(!plain.status.success(), "plain HTTP to the TLS port passed");
    eventually(Duration::from_secs(5), "the refusal logged", || {
        Ok(waypoint
            .output()
            .contains("connection.sni cannot be read: not a TLS hello"))
    })
    .with_context(logs)?;
    let explained = |sni: &str| {
        warrenctl_waypoint_explain(
            &config,
            "demo",
            "demo/client",
            &["--sni", sni, &format!("https://{vip}/")],
        )
    };
    let shown = explained("api.b.example.com")?;
    for part in [
        "decided and routed on the server name api.b.example.com",
        "policy[no-b]",
        "verdict: denied",
    ] {
        ensure!(
            shown.contains(part),
            "explain does not say {part:?}:\n{shown}"
        );
    }
    let shown = explained("a.example.com")?;
    ensure!(
        shown.contains("rule \"spec.tls[0]\"") && shown.contains("verdict: forwarded"),
        "explain of a.example.com:\n{shown}"
    );

    Ok(())
}

/// Gateway API routes for the same Service: a TCPRoute shares its
/// connections 4:1 between the two servers, and a TLSRoute sends the names
/// under `b.example.com` to `b` alone (TLS rules are tried first).
const GATEWAY_ROUTES: &str = r#"
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: { name: split, namespace: demo }
spec:
  parentRefs: [{ group: "", kind: Service, name: secure, port: 443 }]
  rules:
  - backendRefs:
    - { name: secure-a, port: 443, weight: 4 }
    - { name: secure-b, port: 443, weight: 1 }
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: { name: b-names, namespace: demo }
spec:
  parentRefs: [{ group: "", kind: Service, name: secure, port: 443 }]
  hostnames: ["*.b.example.com"]
  rules:
  - backendRefs: [{ name: secure-b, port: 443 }]
"#;

#[test]
fn gateway_tcp_and_tls_routes_at_the_waypoint() -> Result<()> {
    let backends = TlsBackends::start(true)?;
    let config = backends.cluster.config_dir().to_path_buf();
    let logs = || backends.logs();
    eventually(Duration::from_secs(20), "the mesh routes", || {
        Ok(backends.answers("a.example.com", 1).is_ok())
    })
    .with_context(logs)?;

    let routes = config.join("routes.demo.gateway.yaml");
    std::fs::write(&routes, GATEWAY_ROUTES)?;
    eventually(Duration::from_secs(20), "the TLSRoute in force", || {
        Ok(backends
            .answers("api.b.example.com", 4)?
            .iter()
            .all(|cn| cn == "backend-b"))
    })
    .with_context(logs)?;
    for name in ["api.b.example.com", "x.y.b.example.com"] {
        let seen = backends.answers(name, 10)?;
        ensure!(
            seen.iter().all(|cn| cn == "backend-b"),
            "{name}: answered by {seen:?}, expected backend-b alone\n{}",
            logs()
        );
    }
    // Other names: the TCPRoute's 4:1 split (b expected 20 of 100; the
    // bounds are about four standard deviations wide).
    let seen = backends.answers("other.example.com", 100)?;
    let b = seen.iter().filter(|cn| *cn == "backend-b").count();
    let a = seen.iter().filter(|cn| *cn == "backend-a").count();
    eprintln!("TCPRoute weights 4:1 through the waypoint: a {a}, b {b} of 100");
    ensure!(
        a + b == 100 && (5..=38).contains(&b),
        "4:1 split: {a} a, {b} b of 100\n{}",
        logs()
    );
    // The access log names the VirtualService the routes make, and its rule.
    let output = backends.waypoint.output();
    for rule in [
        "demo/secure-routes-l4.spec.tls[0]",
        "demo/secure-routes-l4.spec.tcp[0]",
    ] {
        ensure!(
            output.contains(rule),
            "the access log does not name {rule}:\n{output}"
        );
    }

    // Every backend at weight 0: the TCPRoute rejects every connection it
    // takes (names under b.example.com still go by the TLSRoute).
    std::fs::write(
        &routes,
        GATEWAY_ROUTES
            .replace("weight: 4 }", "weight: 0 }")
            .replace("weight: 1 }", "weight: 0 }"),
    )?;
    eventually(
        Duration::from_secs(20),
        "the drained TCPRoute in force",
        || Ok(answered_by(&backends.client, &backends.vip, "other.example.com").is_err()),
    )
    .with_context(logs)?;
    for _ in 0..5 {
        let refused = answered_by(&backends.client, &backends.vip, "other.example.com");
        ensure!(
            refused.is_err(),
            "a drained TCPRoute let one through: {refused:?}"
        );
        let kept = answered_by(&backends.client, &backends.vip, "api.b.example.com")?;
        ensure!(kept == "backend-b", "api.b.example.com answered by {kept}");
    }
    let output = backends.waypoint.output();
    ensure!(
        output.contains("rejected-by-route.invalid"),
        "the access log does not say why connections were refused:\n{output}"
    );
    // And the waypoint explains it.
    let shown = warrenctl_waypoint_explain(
        &config,
        "demo",
        "demo/client",
        &[
            "--sni",
            "other.example.com",
            &format!("https://{}/", backends.vip),
        ],
    )?;
    for part in ["rejected share", "verdict: refused"] {
        ensure!(
            shown.contains(part),
            "explain does not say {part:?}:\n{shown}"
        );
    }

    // Deleted, the routes leave: the Service as a whole again, both
    // servers for any name.
    std::fs::remove_file(&routes)?;
    eventually(Duration::from_secs(20), "the routes withdrawn", || {
        let seen = backends.answers("api.b.example.com", 12)?;
        Ok(seen.iter().any(|cn| cn == "backend-a"))
    })
    .with_context(logs)?;
    Ok(())
}
