//! Workload certificates under live traffic: short-lived SVIDs are renewed
//! before they expire and traffic across nodes keeps flowing; a root
//! rotation with overlapping trust keeps it flowing too.

use std::{
    collections::BTreeMap,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use warren_e2e::{
    agent::agent_socket,
    mesh::{MeshOptions, start_mesh_with},
    workload::{count_status, load, start_http_server},
};
use warren_testbed::{Cluster, PodSpec, binaries, labels, privilege::require_root};

/// `warrenctl certs` on node `node`.
fn certs(cluster: &Cluster, node: usize) -> Result<String> {
    let socket = agent_socket(cluster, cluster.node(node)?)?;
    let out = Command::new(binaries::path("warrenctl")?)
        .args(["certs", "--socket"])
        .arg(&socket)
        .output()?;
    ensure!(
        out.status.success(),
        "warrenctl certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Serials of the certificates node `node`'s agent serves, by identity.
fn serials(cluster: &Cluster, node: usize) -> Result<BTreeMap<String, String>> {
    Ok(certs(cluster, node)?
        .lines()
        .filter(|l| l.starts_with("spiffe://"))
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            Some((cols.next()?.to_owned(), cols.next()?.to_owned()))
        })
        .collect())
}

#[test]
fn short_lived_certificates_renew_and_a_root_rotation_keeps_traffic_flowing() -> Result<()> {
    require_root()?;
    let mut cluster = Cluster::builder().nodes(2).pods_per_node(0).up()?;
    cluster.add_namespace("demo", labels(&[("warren.io/dataplane-mode", "ambient")]))?;
    for (name, node) in [("web", 1), ("client", 0)] {
        cluster.add_pod(PodSpec {
            name: name.into(),
            namespace: "demo".into(),
            node,
            labels: labels(&[("app", name)]),
            service_account: Some(name.into()),
        })?;
    }
    // 8 s certificates: renewed about every 4 s.
    let mut mesh = start_mesh_with(
        &cluster,
        &MeshOptions {
            cert_ttl: "8s".into(),
            ..MeshOptions::default()
        },
    )?;
    mesh.wait_ready(Duration::from_secs(30))
        .with_context(|| mesh.logs())?;
    let web = cluster.pod("web")?.clone();
    let _server = start_http_server(&cluster, &web, 8080, &[])?;
    let client = cluster.pod("client")?.clone();
    let url = format!("http://{}:8080/", web.ip);
    let first = serials(&cluster, 0)?;
    ensure!(!first.is_empty(), "node 0 serves no certificate");

    // Traffic for 10 s, in 1 s rounds, each on new connections: every
    // round must be answered in full across two renewals.
    let mut rotated = false;
    let started = Instant::now();
    let mut rounds = 0;
    while started.elapsed() < Duration::from_secs(10) {
        let report = load(&client, &url, &["-d", "1s", "-c", "2"])?;
        let ok = count_status(&report, 200);
        let total = report["requests"].as_u64().unwrap_or(ok);
        ensure!(
            ok > 0 && ok == total,
            "round {rounds}: {ok}/{total} answered during renewal: {report}\n{}",
            mesh.logs()
        );
        rounds += 1;
        // Halfway, the root rotates: the old root stays trusted.
        if !rotated && started.elapsed() > Duration::from_secs(4) {
            let out = Command::new(binaries::path("warren-node-agent")?)
                .args(["ca", "rotate-root", "--state-dir"])
                .arg(&mesh.ca_dir)
                .output()?;
            ensure!(
                out.status.success(),
                "rotate-root: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            rotated = true;
        }
    }
    // Both roots are trusted on both nodes: the old one still signs live
    // certificates until they renew, the new one signs the renewals.
    for node in 0..2 {
        let listing = certs(&cluster, node)?;
        ensure!(
            listing.contains("trust bundle: 2 root(s)"),
            "node {node} does not trust both roots after the rotation:\n{listing}"
        );
    }
    let later = serials(&cluster, 0)?;
    for (identity, serial) in &first {
        ensure!(
            later.get(identity).is_some_and(|s| s != serial),
            "{identity} was not renewed: {serial} then {:?}",
            later.get(identity)
        );
    }
    Ok(())
}
