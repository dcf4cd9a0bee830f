//! DNS capture: an enrolled pod's DNS queries (UDP port 53) reach ztunnel's DNS
//! proxy through the node's eBPF hooks, whichever server the pod asked, and the
//! answer comes back as if from that server. A pod outside the mesh is left alone.
//!
//! The pods' resolver is played by `warren_e2e::dns::resolve`, in both of the ways
//! resolvers send: on a connected socket (glibc) and with `sendto` (musl).

use std::time::Duration;

use anyhow::{Result, ensure};
use warren_e2e::{
    agent::datapath,
    dns::{Send, resolve},
    mesh::{MeshOptions, metric_sum, scrape_metrics, start_mesh_with},
};
use warren_testbed::{
    Cluster, PodSpec, ServicePort, addressing::CLUSTER_DNS, labels, privilege::require_root,
};

#[test]
fn an_enrolled_pods_dns_is_answered_by_ztunnel() -> Result<()> {
    require_root()?;
    let mut cluster = Cluster::builder().nodes(1).pods_per_node(0).up()?;
    cluster.add_namespace("shop", labels(&[("istio.io/dataplane-mode", "ambient")]))?;
    cluster.add_namespace("plain", labels(&[]))?;
    let pod = |namespace: &str, name: &str| PodSpec {
        name: name.into(),
        namespace: namespace.into(),
        node: 0,
        labels: labels(&[("app", name)]),
        service_account: None,
    };
    let client = cluster.add_pod(pod("shop", "client"))?.clone();
    let outsider = cluster.add_pod(pod("plain", "outsider"))?.clone();
    cluster.add_pod(pod("shop", "app"))?;
    let app = cluster
        .add_service(
            "shop",
            "app",
            labels(&[("app", "app")]),
            vec![ServicePort {
                name: "http".into(),
                port: 80,
                target_port: 8080,
            }],
        )?
        .clone();
    let mut mesh = start_mesh_with(
        &cluster,
        &MeshOptions {
            agent_args: vec!["--ztunnel-dns-port".into(), "15053".into()],
            ..MeshOptions::default()
        },
    )?;
    mesh.wait_ready(Duration::from_secs(30))?;
    let node = cluster.node(0)?.clone();
    warren_e2e::mesh::eventually(Duration::from_secs(10), "client enrolled", || {
        Ok(datapath(&node)?
            .pods()?
            .iter()
            .any(|p| p.pod == "shop/client"))
    })?;

    // No DNS server listens at this address: only the proxy can answer.
    let name = "app.shop.svc.cluster.local";
    for send in [Send::Connected, Send::SendTo] {
        let answer = resolve(&client, CLUSTER_DNS, name, send)?;
        ensure!(
            answer
                .as_ref()
                .is_some_and(|a| a.from == (CLUSTER_DNS, 53) && a.addresses == [app.cluster_ip]),
            "{send:?}: the client got {answer:?}, want the Service's address from {CLUSTER_DNS}:53\n{}",
            mesh.logs()
        );
    }
    // Outside the mesh: nothing redirects the query, so nothing answers it.
    ensure!(
        resolve(&outsider, CLUSTER_DNS, name, Send::Connected)?.is_none(),
        "a pod outside the mesh had its DNS answered"
    );
    let counters = datapath(&node)?.counters()?;
    ensure!(
        counters.get(warren_e2e::agent::Counter::DnsRedirected) >= 2
            && counters.get(warren_e2e::agent::Counter::DnsAnswerRestored) >= 2,
        "{counters:?}"
    );
    let metrics = scrape_metrics(&node)?;
    let answered = metric_sum(
        &metrics,
        "warren_ztunnel_dns_queries_total",
        &[("outcome", "mesh")],
    );
    ensure!(
        answered >= 2.0,
        "ztunnel answered {answered} queries:\n{metrics}"
    );
    Ok(())
}
