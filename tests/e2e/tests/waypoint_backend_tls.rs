//! Gateway API BackendTLSPolicy at the waypoint, with real TLS: a meshed
//! Service whose pod serves HTTPS itself, called in plain HTTP by a client;
//! the waypoint starts TLS to the pod (inside HBONE), asking for the
//! policy's hostname and checking the pod's certificate against the CA
//! bundle of the policy's ConfigMap. A bundle that does not vouch for the
//! server, or a ConfigMap gone, refuses the requests (503) rather than
//! reach the server unchecked; a DestinationRule's `tls` speaks before it.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use serde_json::{Value, json};
use warren_e2e::{
    agent::warrenctl_waypoint_explain,
    mesh::{
        clusters_objects, demo_cluster_with_waypoint_pod, eventually, service_vip,
        start_mesh_and_waypoint,
    },
    workload::{count_status, load},
};
use warren_testbed::{ServicePort, labels, pki::Authority, privilege::require_root};

/// The Service's opaque TCP port.
const TCP_PORT: u16 = 9000;

/// The name the pod's certificate carries, and the policy asks for.
const NAME: &str = "secure.demo.example";

fn policy() -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\n\
         metadata: {{ name: secure, namespace: demo }}\n\
         spec:\n  targetRefs:\n  - {{ group: \"\", kind: Service, name: secure, sectionName: http }}\n  \
         - {{ group: \"\", kind: Service, name: secure, sectionName: tcp }}\n  \
         validation:\n    caCertificateRefs: [{{ group: \"\", kind: ConfigMap, name: secure-ca }}]\n    \
         hostname: {NAME}\n"
    )
}

/// ConfigMap `secure-ca` holding `pem` under `ca.crt`.
fn ca_config_map(pem: &str) -> String {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "secure-ca", "namespace": "demo" },
        "data": { "ca.crt": pem },
    })
    .to_string()
}

#[test]
fn the_waypoint_starts_tls_to_a_service_as_its_backend_tls_policy_says() -> Result<()> {
    require_root()?;
    let mut cluster = demo_cluster_with_waypoint_pod(&[
        ("secure", 1, &[("app", "secure")], "secure"),
        ("client", 0, &[("app", "client")], "client"),
    ])?;
    // Clients speak plain HTTP to port 80, and bytes to port 9000 (opaque
    // TCP to the waypoint); the pod serves HTTPS on 8443.
    cluster.add_service(
        "demo",
        "secure",
        labels(&[("app", "secure")]),
        vec![
            ServicePort {
                name: "http".into(),
                port: 80,
                target_port: 8443,
            },
            ServicePort {
                name: "tcp".into(),
                port: TCP_PORT,
                target_port: 8443,
            },
        ],
    )?;
    let (mesh, waypoint) = start_mesh_and_waypoint(&cluster, "demo")?;
    let logs = || format!("{}\nwaypoint:\n{}", mesh.logs(), waypoint.output());

    let ca = Authority::new("secure's CA")?;
    let stranger = Authority::new("someone else")?;
    let certs = cluster.config_dir().join("backend-certs");
    std::fs::create_dir_all(&certs)?;
    let leaf = ca.server(&[NAME])?.write(&certs, "secure")?;
    let pod = cluster.pod("secure")?.clone();
    let sample = warren_testbed::binaries::path("warren-sample")?;
    let server = cluster.spawn(
        &pod.sandbox,
        &sample.to_string_lossy(),
        &[
            "http",
            "--listen",
            "[::]:8443",
            "--version",
            "secure",
            "--access-log",
            "--tls-cert",
            &leaf.cert.to_string_lossy(),
            "--tls-key",
            &leaf.key.to_string_lossy(),
        ],
    )?;
    eventually(
        Duration::from_secs(10),
        "the HTTPS server listening",
        || {
            let listening = pod.sandbox.exec("ss", ["-Hltn", "sport = :8443"])?;
            Ok(!listening.stdout.is_empty())
        },
    )?;
    let vip = service_vip(&cluster, "secure")?.to_string();
    let client = cluster.pod("client")?.clone();
    let get_at = |port: u16| -> Result<(u16, Value)> {
        let out = client.sandbox.exec(
            "curl",
            [
                "-sS",
                "--max-time",
                "5",
                "-w",
                "\n%{http_code}",
                &format!("http://{vip}:{port}/hello"),
            ],
        )?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        Ok((
            code.trim().parse().unwrap_or(0),
            serde_json::from_str(body).unwrap_or(Value::Null),
        ))
    };
    let get = || get_at(80);

    // Without the policy the waypoint speaks plain HTTP to a TLS port: no
    // answer from the server.
    let (status, _) = get()?;
    ensure!(
        status != 200,
        "plain HTTP to the HTTPS port cannot succeed: {status}"
    );

    // With it: TLS for the policy's name, checked against the bundle.
    let config = cluster.config_dir();
    std::fs::write(
        config.join("secure-ca.demo.yaml"),
        ca_config_map(&ca.root_pem),
    )?;
    std::fs::write(config.join("backendtls.demo.secure.yaml"), policy())?;
    let mut answer = (0, Value::Null);
    eventually(Duration::from_secs(20), "HTTPS to the pod", || {
        answer = get()?;
        Ok(answer.0 == 200)
    })
    .with_context(|| format!("last answer: {answer:?}\n{}", logs()))?;
    let tls = &answer.1["tls"];
    eprintln!("BackendTLSPolicy: the pod saw {tls}");
    ensure!(
        answer.1["version"] == "secure"
            && tls["sni"] == NAME
            && tls["alpn"] == "http/1.1"
            && tls["client_certificate"] == false,
        "the pod must see TLS for the policy's hostname: {}",
        answer.1
    );
    let report = load(&client, &format!("http://{vip}/hello"), &["-n", "20"])?;
    ensure!(
        count_status(&report, 200) == 20,
        "every request over the policy's TLS: {report}"
    );
    let clusters = |field: &str| -> Result<Vec<Value>> {
        clusters_objects(&cluster.pod("waypoint")?.sandbox, |o| o.contains_key(field))
    };
    // The waypoint explains which TLS a request to the Service meets, and
    // why.
    let explain_at = |port: u16| {
        warrenctl_waypoint_explain(
            &cluster.config_dir(),
            "demo",
            "demo/client",
            &[&format!("http://{vip}:{port}/hello")],
        )
    };
    let explain = || explain_at(80);
    let explained = explain()?;
    eprintln!("explained:\n{explained}");
    ensure!(
        explained.contains("BackendTLSPolicy demo/secure")
            && explained.contains(&format!("server name {NAME}")),
        "explain names the policy and the server name:\n{explained}"
    );
    // On the TCP port the waypoint wraps the client's bytes (an HTTP
    // request it does not read) in the policy's TLS alike, offering no
    // protocol (ALPN) it cannot know, and says so.
    let (status, body) = get_at(TCP_PORT)?;
    eprintln!(
        "BackendTLSPolicy on the TCP port: the pod saw {}",
        body["tls"]
    );
    ensure!(
        status == 200 && body["tls"]["sni"] == NAME && body["tls"]["alpn"].is_null(),
        "bytes to the TCP port reach the pod over the policy's TLS: {status} {body}"
    );
    let explained = explain_at(TCP_PORT)?;
    ensure!(
        explained.contains("a TCP port")
            && explained.contains(&format!(
                "{TCP_PORT}: TLS started by the waypoint (BackendTLSPolicy demo/secure)"
            )),
        "explain of the TCP port names the policy's TLS:\n{explained}"
    );
    let described = clusters("backend_tls_policy")?;
    ensure!(
        described
            .iter()
            .any(|tls| tls["backend_tls_policy"] == "demo/secure" && tls["server_name"] == NAME),
        "/clusters names the policy in force: {described:?}"
    );

    // The bundle replaced by one that does not vouch for the pod: refused,
    // never sent unchecked; then back.
    std::fs::write(
        config.join("secure-ca.demo.yaml"),
        ca_config_map(&stranger.root_pem),
    )?;
    eventually(
        Duration::from_secs(20),
        "a bundle that does not vouch",
        || Ok(get()?.0 == 503),
    )
    .with_context(logs)?;
    std::fs::write(
        config.join("secure-ca.demo.yaml"),
        ca_config_map(&ca.root_pem),
    )?;
    eventually(Duration::from_secs(20), "the bundle back", || {
        Ok(get()?.0 == 200)
    })
    .with_context(logs)?;

    // The ConfigMap gone: the policy cannot be honoured, and its requests
    // are refused without a connection to the pod, saying why.
    std::fs::remove_file(config.join("secure-ca.demo.yaml"))?;
    eventually(Duration::from_secs(20), "the ConfigMap gone", || {
        Ok(get()?.0 == 503)
    })
    .with_context(logs)?;
    let connections = || server.output().matches("connection accepted").count();
    let before = connections();
    let report = load(&client, &format!("http://{vip}/hello"), &["-n", "10"])?;
    ensure!(
        count_status(&report, 503) == 10 && connections() == before,
        "refused without a connection to the pod ({} new): {report}",
        connections() - before
    );
    let explained = explain()?;
    ensure!(
        explained.contains("requests refused (503)") && explained.contains("demo/secure-ca"),
        "explain says why requests are refused:\n{explained}"
    );
    let (status, _) = get_at(TCP_PORT)?;
    let explained = explain_at(TCP_PORT)?;
    ensure!(
        status == 0
            && connections() == before
            && explained.contains("connections closed (UF)")
            && explained.contains("demo/secure-ca"),
        "on the TCP port, connections are closed before reaching the pod ({status}), \
         and explain says why:\n{explained}"
    );
    ensure!(
        clusters("error")?.iter().any(|tls| tls["error"]
            .as_str()
            .is_some_and(|e| e.contains("demo/secure-ca"))),
        "/clusters says why: {:?}",
        clusters("error")?
    );

    // A DestinationRule's tls is the last word: DISABLE sends plain HTTP
    // again (the server cannot answer it), whatever the policy says.
    std::fs::write(
        config.join("secure-ca.demo.yaml"),
        ca_config_map(&ca.root_pem),
    )?;
    eventually(Duration::from_secs(20), "the bundle back again", || {
        Ok(get()?.0 == 200)
    })
    .with_context(logs)?;
    std::fs::write(
        config.join("dr.demo.secure.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
         metadata: { name: secure, namespace: demo }\n\
         spec:\n  host: secure\n  trafficPolicy:\n    tls: { mode: DISABLE }\n",
    )?;
    eventually(
        Duration::from_secs(20),
        "the rule's DISABLE in force",
        || Ok(get()?.0 != 200),
    )
    .with_context(logs)?;
    // The rule gone, the policy speaks again; the policy gone, plain HTTP.
    std::fs::remove_file(config.join("dr.demo.secure.yaml"))?;
    eventually(Duration::from_secs(20), "the policy again", || {
        Ok(get()?.0 == 200)
    })
    .with_context(logs)?;
    std::fs::remove_file(config.join("backendtls.demo.secure.yaml"))?;
    eventually(Duration::from_secs(20), "the policy gone", || {
        Ok(get()?.0 != 200)
    })
    .with_context(logs)?;
    Ok(())
}
