//! The whole mesh with real traffic: the CA, and per node the agent and
//! ztunnel. Pods' connections are captured by the eBPF programs, carried
//! between nodes over HBONE with SPIFFE identities the CA issued, and
//! authorized by the destination's ztunnel.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, Result, ensure};
use warren_e2e::{
    agent::warrenctl_explain,
    mesh::{eventually, metric_sum, scrape_metrics, start_mesh},
    workload::{count_status, load, pingpong, start_echo, start_http_server},
};
use warren_testbed::{Cluster, PodSpec, ServicePort, labels, privilege::require_root};

/// A meshed namespace `demo`: `web` on node 1 behind Service `web`, and
/// two clients with their own service accounts on node 0, plus one on
/// node 1 (same node as `web`).
fn demo_cluster() -> Result<Cluster> {
    let mut cluster = Cluster::builder().nodes(2).pods_per_node(0).up()?;
    cluster.add_namespace("demo", labels(&[("warren.io/dataplane-mode", "ambient")]))?;
    for (name, node, sa) in [
        ("web", 1, "web"),
        ("front", 0, "front"),
        ("batch", 0, "batch"),
        ("near", 1, "near"),
    ] {
        cluster.add_pod(PodSpec {
            name: name.into(),
            namespace: "demo".into(),
            node,
            labels: labels(&[("app", name)]),
            service_account: Some(sa.into()),
        })?;
    }
    // Outside the mesh: its namespace has no dataplane label.
    cluster.add_namespace("legacy", BTreeMap::new())?;
    cluster.add_pod(PodSpec {
        name: "plain".into(),
        namespace: "legacy".into(),
        node: 1,
        labels: labels(&[("app", "plain")]),
        service_account: None,
    })?;
    cluster.add_service(
        "demo",
        "web",
        labels(&[("app", "web")]),
        vec![ServicePort {
            name: "http".into(),
            port: 80,
            target_port: 8080,
        }],
    )?;
    Ok(cluster)
}

fn ok_count(cluster: &Cluster, from: &str, url: &str, n: usize) -> Result<u64> {
    let report = load(cluster.pod(from)?, url, &["-n", &n.to_string(), "-c", "2"])?;
    Ok(count_status(&report, 200))
}

#[test]
fn pods_talk_over_mtls_across_nodes_on_one_node_and_through_a_service() -> Result<()> {
    require_root()?;
    let cluster = demo_cluster()?;
    let mut mesh = start_mesh(&cluster)?;
    mesh.wait_ready(Duration::from_secs(30))
        .with_context(|| mesh.logs())?;
    let web = cluster.pod("web")?.clone();
    let _server = start_http_server(&cluster, &web, 8080, &[])?;

    let pod_url = format!("http://{}:8080/", web.ip);
    let ok = ok_count(&cluster, "front", &pod_url, 20)?;
    ensure!(
        ok == 20,
        "front → web across nodes: {ok}/20 OK\n{}",
        mesh.logs()
    );
    let ok = ok_count(&cluster, "near", &pod_url, 20)?;
    ensure!(
        ok == 20,
        "near → web on one node: {ok}/20 OK\n{}",
        mesh.logs()
    );
    let vip = &cluster
        .services()
        .iter()
        .find(|s| s.name == "web")
        .context("service web")?
        .cluster_ip;
    let ok = ok_count(&cluster, "front", &format!("http://{vip}/"), 20)?;
    ensure!(ok == 20, "front → Service web: {ok}/20 OK\n{}", mesh.logs());

    // A pod outside the mesh is reached from the caller's own address, as
    // without the mesh: ztunnel connects from inside the caller's network
    // namespace, not from the node's.
    let plain = cluster.pod("plain")?.clone();
    let front_ip = cluster.pod("front")?.ip;
    let plain_server = start_http_server(&cluster, &plain, 8080, &["--access-log"])?;
    let ok = ok_count(&cluster, "front", &format!("http://{}:8080/", plain.ip), 4)?;
    ensure!(
        ok == 4,
        "front → plain (outside the mesh): {ok}/4 OK\n{}",
        mesh.logs()
    );
    let seen = plain_server.output();
    // The server listens on both families: v4 peers read `[::ffff:a.b.c.d]`.
    ensure!(
        seen.contains(&format!("peer={front_ip}:"))
            || seen.contains(&format!("peer=[::ffff:{front_ip}]:")),
        "the server outside the mesh must see front's address {front_ip}:\n{seen}\n{}",
        mesh.logs()
    );

    // The destination's ztunnel saw the callers' SPIFFE identities over mTLS.
    let metrics = scrape_metrics(&mesh.nodes[1].node)?;
    let from_front = metric_sum(
        &metrics,
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            (
                "source_principal",
                "spiffe://cluster.local/ns/demo/sa/front",
            ),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    // The load client keeps its 2 connections alive: 2 per run, 2 runs.
    ensure!(
        from_front >= 4.0,
        "web's ztunnel counted {from_front} mTLS connections from front (want ≥ 4):\n{metrics}"
    );
    Ok(())
}

#[test]
fn a_deny_policy_blocks_one_caller_and_not_the_others() -> Result<()> {
    require_root()?;
    let cluster = demo_cluster()?;
    let mut mesh = start_mesh(&cluster)?;
    mesh.wait_ready(Duration::from_secs(30))
        .with_context(|| mesh.logs())?;
    let web = cluster.pod("web")?.clone();
    let _server = start_http_server(&cluster, &web, 8080, &[])?;
    let url = format!("http://{}:8080/", web.ip);
    ensure!(
        ok_count(&cluster, "batch", &url, 5)? == 5,
        "batch before the policy"
    );

    std::fs::write(
        cluster.config_dir().join("deny-batch.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: { name: deny-batch, namespace: demo }\n\
         spec:\n  selector: { matchLabels: { app: web } }\n  action: DENY\n\
         \x20 rules: [{ from: [{ source: { principals: [cluster.local/ns/demo/sa/batch] } }] }]\n",
    )?;
    eventually(Duration::from_secs(10), "batch refused", || {
        Ok(ok_count(&cluster, "batch", &url, 5)? == 0)
    })
    .with_context(|| mesh.logs())?;
    let ok = ok_count(&cluster, "front", &url, 10)?;
    ensure!(ok == 10, "front must still pass: {ok}/10\n{}", mesh.logs());
    let ok = ok_count(&cluster, "near", &url, 10)?;
    ensure!(ok == 10, "near must still pass: {ok}/10\n{}", mesh.logs());

    // Refused by web's ztunnel, which counts why.
    let metrics = scrape_metrics(&mesh.nodes[1].node)?;
    let denied = metric_sum(
        &metrics,
        "warren_ztunnel_refused_connections_total",
        &[("reason", "deny_policy")],
    );
    ensure!(
        denied >= 5.0,
        "deny_policy refusals counted: {denied}\n{metrics}"
    );

    // Each source's node explains what its connections meet, as they met it.
    let target = format!("{}:8080", web.ip);
    for (node, from, to, says) in [
        (
            0,
            "demo/batch",
            target.as_str(),
            ["denied by DENY policy", "verdict: denied"],
        ),
        (
            0,
            "demo/front",
            "web.demo.svc.cluster.local:80",
            ["HBONE to node", "verdict: allowed"],
        ),
        (
            1,
            "demo/near",
            target.as_str(),
            ["straight to pod demo/web", "verdict: allowed"],
        ),
    ] {
        let explained = warrenctl_explain(&mesh.nodes[node].node, from, to)?;
        for part in says {
            ensure!(
                explained.contains(part),
                "warrenctl explain {from} {to} does not say {part:?}:\n{explained}"
            );
        }
    }
    Ok(())
}

/// Plaintext from outside the mesh to a PERMISSIVE pod goes through the
/// node's ztunnel (the inbound capture hands it to ztunnel's listener in the
/// pod's namespace), so the pod's L4 policies decide on it, as in Istio: a
/// client with no identity is let in without policies and refused by an
/// ALLOW for a principal, while mesh clients keep their mutual TLS.
#[test]
fn plaintext_from_outside_the_mesh_meets_the_pods_policies() -> Result<()> {
    require_root()?;
    let cluster = demo_cluster()?;
    let mut mesh = start_mesh(&cluster)?;
    mesh.wait_ready(Duration::from_secs(30))
        .with_context(|| mesh.logs())?;
    let web = cluster.pod("web")?.clone();
    let _server = start_http_server(&cluster, &web, 8080, &[])?;
    let url = format!("http://{}:8080/", web.ip);
    // The agent turns the pod's capture on once ztunnel listens for it.
    let through_ztunnel = || -> Result<f64> {
        let metrics = scrape_metrics(&mesh.nodes[1].node)?;
        Ok(metric_sum(
            &metrics,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("connection_security_policy", "unknown"),
                ("destination_workload", "web"),
            ],
        ))
    };
    eventually(
        Duration::from_secs(10),
        "plain reaches web through web's ztunnel",
        || Ok(ok_count(&cluster, "plain", &url, 4)? == 4 && through_ztunnel()? >= 1.0),
    )
    .with_context(|| mesh.logs())?;

    std::fs::write(
        cluster.config_dir().join("allow-front.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: { name: allow-front, namespace: demo }\n\
         spec:\n  selector: { matchLabels: { app: web } }\n  action: ALLOW\n\
         \x20 rules: [{ from: [{ source: { principals: [cluster.local/ns/demo/sa/front] } }] }]\n",
    )?;
    eventually(
        Duration::from_secs(10),
        "plain refused by the ALLOW",
        || Ok(ok_count(&cluster, "plain", &url, 4)? == 0),
    )
    .with_context(|| mesh.logs())?;
    let ok = ok_count(&cluster, "front", &url, 6)?;
    ensure!(ok == 6, "front must still pass: {ok}/6\n{}", mesh.logs());
    let metrics = scrape_metrics(&mesh.nodes[1].node)?;
    let refused = metric_sum(
        &metrics,
        "warren_ztunnel_refused_connections_total",
        &[
            ("direction", "inbound_passthrough"),
            ("reason", "not_allowed"),
        ],
    );
    ensure!(
        refused >= 1.0,
        "the plaintext refusals counted: {refused}\n{metrics}"
    );
    Ok(())
}

#[test]
fn sigterm_drains_ztunnel_open_connections_finish_new_ones_are_refused() -> Result<()> {
    require_root()?;
    let cluster = demo_cluster()?;
    let mut mesh = start_mesh(&cluster)?;
    mesh.wait_ready(Duration::from_secs(30))
        .with_context(|| mesh.logs())?;
    let web = cluster.pod("web")?.clone();
    let _echo = start_echo(&cluster, &web, 9000)?;
    let target = format!("/dev/tcp/{}/9000", web.ip);

    // A connection through both ztunnels: one round trip, then a pause (the
    // SIGTERM lands in it), then another.
    let front = cluster.pod("front")?.clone();
    let script = format!(
        "exec 3<>{target} && echo first >&3 && read -t 5 a <&3 && echo opened && \
         sleep 3 && echo second >&3 && read -t 5 b <&3 && echo \"carried $a $b\""
    );
    let mut client = cluster.spawn(&front.sandbox, "bash", &["-c", &script])?;
    client.wait_for_output("opened", Duration::from_secs(10))?;

    let ztunnel = &mut mesh.nodes[0].ztunnel;
    let pid = ztunnel.pid().context("node 0's ztunnel is running")?;
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .context("running kill")?;
    ensure!(killed.success(), "kill -TERM {pid}: {killed}");
    ztunnel.wait_for_output("SIGTERM: draining", Duration::from_secs(5))?;

    // Draining: a new connection from the node is not taken any more.
    let batch = cluster.pod("batch")?;
    let out = batch.sandbox.exec(
        "timeout",
        [
            "3",
            "bash",
            "-c",
            &format!("exec 3<>{target} && echo x >&3 && read -t 2 r <&3 && echo \"$r\""),
        ],
    )?;
    let answered = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "drain: new connection {} ({answered:?})",
        if out.status.success() {
            "carried"
        } else {
            "refused"
        }
    );
    ensure!(
        !out.status.success() && answered.trim().is_empty(),
        "a draining ztunnel must not take new connections: {out:?}"
    );

    // The open one finishes its second round trip, then ztunnel exits.
    client.wait_exit(Duration::from_secs(10))?;
    let output = client.output();
    eprintln!(
        "drain: open connection: {}",
        output.trim().replace('\n', " / ")
    );
    ensure!(
        output.contains("carried first second"),
        "the open connection must carry on through the drain: {output}\n{}",
        mesh.logs()
    );
    let ztunnel = &mut mesh.nodes[0].ztunnel;
    let status = ztunnel.wait_exit(Duration::from_secs(10))?;
    ensure!(
        status.success()
            && ztunnel
                .output()
                .contains("drained: every connection finished"),
        "ztunnel exits cleanly once its connections are done ({status}):\n{}",
        ztunnel.output()
    );
    Ok(())
}

/// One 1 KiB round trip from `client` to `target` (`ip:port`) on a new
/// connection, through the capture; whether it came back.
fn reaches(client: &warren_testbed::Pod, target: &str) -> Result<bool> {
    let out = pingpong(client, target, &["--round-trips", "1", "--timeout", "2s"])?;
    Ok(out.status.success())
}

#[test]
fn under_registry_only_a_service_entry_registers_a_destination_outside_the_mesh() -> Result<()> {
    require_root()?;
    let mut cluster = demo_cluster()?;
    // Another team's namespace, in the mesh: an entry exported to `demo`
    // only is no destination of theirs.
    cluster.add_namespace("team-b", labels(&[("warren.io/dataplane-mode", "ambient")]))?;
    cluster.add_pod(PodSpec {
        name: "other".into(),
        namespace: "team-b".into(),
        node: 0,
        labels: labels(&[("app", "other")]),
        service_account: Some("other".into()),
    })?;
    // A destination outside the cluster: a server on node 1's own address.
    // (A pod outside the mesh would not do: every pod is in the registry, as
    // in Istio.) Node 1 also serves DNS, naming that address for ztunnel.
    let node = cluster.node(1)?.clone();
    let dns = format!("{}:5353", node.ip);
    let mut mesh = warren_e2e::mesh::start_mesh_with(
        &cluster,
        &warren_e2e::mesh::MeshOptions {
            agent_args: vec!["--outbound-policy".into(), "REGISTRY_ONLY".into()],
            ztunnel_args: vec!["--dns-server".into(), dns.clone()],
            ..Default::default()
        },
    )?;
    mesh.wait_ready(Duration::from_secs(30))
        .with_context(|| mesh.logs())?;
    let front = cluster.pod("front")?.clone();
    let sample = warren_testbed::binaries::path("warren-sample")?;
    let listen = format!("{}:9000", node.ip);
    let mut echo = cluster.spawn(
        &node.sandbox,
        &sample.to_string_lossy(),
        &["echo", "--listen", &listen],
    )?;
    let record = format!("echo.dns.example={}", node.ip);
    let mut names = cluster.spawn(
        &node.sandbox,
        &sample.to_string_lossy(),
        &["dns", "--listen", &dns, "--record", &record],
    )?;
    eventually(
        Duration::from_secs(10),
        "the echo and DNS servers on node 1",
        || {
            echo.check_running()?;
            names.check_running()?;
            let tcp = node.sandbox.exec("ss", ["-Hltn", "sport = :9000"])?;
            let udp = node.sandbox.exec("ss", ["-Hlun", "sport = :5353"])?;
            Ok(!tcp.stdout.is_empty() && !udp.stdout.is_empty())
        },
    )?;
    let direct = listen.clone();
    ensure!(
        !reaches(&front, &direct)?,
        "REGISTRY_ONLY let front reach an unregistered address\n{}",
        mesh.logs()
    );
    let refused = metric_sum(
        &scrape_metrics(cluster.node(0)?)?,
        "warren_ztunnel_refused_connections_total",
        &[("reason", "registry_only")],
    );
    ensure!(
        refused >= 1.0,
        "the refusal was not REGISTRY_ONLY's ({refused})"
    );

    // NONE: its address registered as it is; STATIC: a VIP of its own whose
    // endpoint is that address, on another port (for `demo` only); DNS: a VIP of its own whose
    // host ztunnel resolves (to that address) on each connection.
    let entries = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{ name: legacy-echo, namespace: demo }}\n\
         spec:\n  hosts: [echo.legacy.example]\n  addresses: [{ip}]\n  \
         ports: [{{ number: 9000, name: tcp-echo, protocol: TCP }}]\n\
         ---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{ name: legacy-echo-vip, namespace: demo }}\n\
         spec:\n  hosts: [vip.legacy.example]\n  addresses: [10.96.250.1]\n  \
         ports: [{{ number: 80, name: tcp-echo, protocol: TCP, targetPort: 9000 }}]\n  \
         resolution: STATIC\n  endpoints: [{{ address: {ip} }}]\n  exportTo: [.]\n\
         ---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{ name: legacy-echo-dns, namespace: demo }}\n\
         spec:\n  hosts: [echo.dns.example]\n  addresses: [10.96.250.2]\n  \
         ports: [{{ number: 80, name: tcp-echo, protocol: TCP, targetPort: 9000 }}]\n  \
         resolution: DNS\n",
        ip = node.ip
    );
    std::fs::write(cluster.config_dir().join("service-entries.yaml"), entries)?;
    for target in [direct.as_str(), "10.96.250.1:80", "10.96.250.2:80"] {
        eventually(Duration::from_secs(10), target, || reaches(&front, target))
            .with_context(|| mesh.logs())?;
    }
    // Exported to `demo` only: from team-b, the entry's VIP is unknown.
    let other = cluster.pod("other")?.clone();
    ensure!(
        !reaches(&other, "10.96.250.1:80")?,
        "an entry exported to demo only was used from team-b\n{}",
        mesh.logs()
    );
    // Only the ports the entry declares: another port of the address is no
    // more registered than before.
    ensure!(
        !reaches(&front, &format!("{}:9001", node.ip))?,
        "a port the ServiceEntry does not declare was let through"
    );
    let after = metric_sum(
        &scrape_metrics(cluster.node(0)?)?,
        "warren_ztunnel_refused_connections_total",
        &[("reason", "registry_only")],
    );
    ensure!(
        after > refused,
        "the undeclared port was not refused by REGISTRY_ONLY ({refused} → {after})"
    );

    // An address block (a CIDR wider than one address, resolution NONE)
    // registers every address in it that no Service or pod has, on the
    // entry's ports: node 1's address on another port now reaches its echo.
    let ranged = format!("{}:9002", node.ip);
    let mut range_echo = cluster.spawn(
        &node.sandbox,
        &sample.to_string_lossy(),
        &["echo", "--listen", &ranged],
    )?;
    eventually(Duration::from_secs(10), "the echo on port 9002", || {
        range_echo.check_running()?;
        let tcp = node.sandbox.exec("ss", ["-Hltn", "sport = :9002"])?;
        Ok(!tcp.stdout.is_empty())
    })?;
    ensure!(
        !reaches(&front, &ranged)?,
        "REGISTRY_ONLY let front reach {ranged} before any entry named it"
    );
    let [a, b, c, _] = node.ip.octets();
    std::fs::write(
        cluster.config_dir().join("service-entry-range.yaml"),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{ name: legacy-range, namespace: demo }}\n\
             spec:\n  hosts: [range.legacy.example]\n  addresses: [{a}.{b}.{c}.0/24]\n  \
             ports: [{{ number: 9002, name: tcp-range, protocol: TCP }}]\n"
        ),
    )?;
    eventually(
        Duration::from_secs(10),
        "an address in the entry's block",
        || reaches(&front, &ranged),
    )
    .with_context(|| mesh.logs())?;
    // Outside the entry's ports, the block registers nothing.
    ensure!(
        !reaches(&front, &format!("{}:9001", node.ip))?,
        "the block registered a port its entry does not declare"
    );
    Ok(())
}
