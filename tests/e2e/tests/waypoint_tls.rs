//! VirtualService `tls` rules at the waypoint, with real TLS: two backends
//! of one Service's `https` port, each with a certificate of its own; the
//! waypoint reads the server name of each client's hello, without
//! terminating TLS, and sends the connection to the subset its rule names.
//! A name no rule has goes to the Service as a whole. An AuthorizationPolicy
//! on `connection.sni` refuses connections by the name they ask for.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result, ensure};
use warren_e2e::{
    agent::warrenctl_waypoint_explain,
    mesh::{demo_cluster_with_waypoint_pod, eventually, service_vip, start_mesh_and_waypoint},
};
use warren_testbed::{Pod, ServicePort, labels, privilege::require_root};

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

#[test]
fn a_waypoint_routes_tls_by_server_name() -> Result<()> {
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
    cluster.add_service(
        "demo",
        "secure",
        labels(&[("app", "secure")]),
        vec![ServicePort {
            name: "https".into(),
            port: 443,
            target_port: 8443,
        }],
    )?;
    let (mesh, waypoint) = start_mesh_and_waypoint(&cluster, "demo")?;
    let config = cluster.config_dir().to_path_buf();

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
    let logs = || format!("{}\nwaypoint:\n{}", mesh.logs(), waypoint.output());

    // Without rules: both backends answer, whatever the name.
    eventually(Duration::from_secs(20), "both backends answer", || {
        let seen: Vec<String> = (0..8)
            .filter_map(|_| answered_by(&client, &vip, "a.example.com").ok())
            .collect();
        Ok(seen.iter().any(|s| s == "backend-a") && seen.iter().any(|s| s == "backend-b"))
    })
    .with_context(logs)?;

    std::fs::write(config.join("routes.demo.secure.yaml"), ROUTES)?;
    eventually(Duration::from_secs(20), "tls rules in force", || {
        Ok((0..4)
            .all(|_| answered_by(&client, &vip, "a.example.com").is_ok_and(|cn| cn == "backend-a")))
    })
    .with_context(logs)?;
    for (name, want) in [
        ("a.example.com", "backend-a"),
        ("api.b.example.com", "backend-b"),
        ("x.y.b.example.com", "backend-b"),
        ("secure.demo.svc.cluster.local", "backend-a"),
    ] {
        for _ in 0..10 {
            let got = answered_by(&client, &vip, name)?;
            ensure!(
                got == want,
                "{name}: answered by {got}, expected {want}\n{}",
                logs()
            );
        }
    }
    // A name no rule has: the Service, both backends.
    let seen: Vec<String> = (0..12)
        .map(|_| answered_by(&client, &vip, "other.example.com"))
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
        || Ok(answered_by(&client, &vip, "api.b.example.com").is_err()),
    )
    .with_context(logs)?;
    for _ in 0..5 {
        let refused = answered_by(&client, &vip, "x.y.b.example.com");
        ensure!(refused.is_err(), "x.y.b.example.com answered: {refused:?}");
        let got = answered_by(&client, &vip, "a.example.com")?;
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

    drop(servers);
    drop(waypoint);
    Ok(())
}
