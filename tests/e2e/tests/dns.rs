//! DNS capture: an enrolled pod's DNS queries (UDP or TCP to port 53) reach
//! ztunnel's DNS proxy through the node's eBPF hooks, whichever server the pod
//! asked, and the answer comes back as if from that server. A pod outside the
//! mesh is left alone.
//!
//! The pods' resolver is played by `warren_e2e::dns::resolve`, in the ways
//! resolvers send: on a connected socket (glibc), with `sendto` (musl), and over
//! TCP (after a truncated answer, or with `use-vc`).

use std::{net::IpAddr, time::Duration};

use anyhow::{Context as _, Result, ensure};
use warren_e2e::{
    agent::datapath,
    dns::{Record, Send, resolve, resolve_record},
    mesh::{MeshOptions, metric_sum, scrape_metrics, start_mesh_with},
    workload::{pingpong, start_echo},
};
use warren_testbed::{
    Cluster, PodSpec, ServicePort,
    addressing::{CLUSTER_DNS, CLUSTER_DNS6},
    labels,
    privilege::require_root,
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
    // The proxy on the addresses the agent redirects to, IPv4 and IPv6.
    let gateways = {
        let node = cluster.node(0)?;
        format!("{}:15053,[{}]:15053", node.gateway, node.gateway6)
    };
    let mut mesh = start_mesh_with(
        &cluster,
        &MeshOptions {
            agent_args: vec!["--ztunnel-dns-port".into(), "15053".into()],
            ztunnel_args: vec!["--dns-proxy-addr".into(), gateways],
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
    // Both kinds of resolver, asking an IPv4 and an IPv6 server: the Service's
    // address, from the server asked.
    let servers: [IpAddr; 3] = [
        CLUSTER_DNS.into(),
        CLUSTER_DNS6.into(),
        // An IPv4 server asked from an IPv6 socket (musl with an IPv6 nameserver
        // listed too): the kernel sends it the IPv4 way, the answer comes back
        // v4-mapped.
        CLUSTER_DNS.to_ipv6_mapped().into(),
    ];
    for server in servers {
        for send in [Send::Connected, Send::SendTo, Send::Tcp] {
            let answer = resolve(&client, server, name, send)?;
            ensure!(
                answer.as_ref().is_some_and(
                    |a| a.from == (server, 53) && a.addresses == [IpAddr::from(app.cluster_ip)]
                ),
                "{send:?} to {server}: the client got {answer:?}, want the Service's address from port 53\n{}",
                mesh.logs()
            );
        }
    }
    // Outside the mesh: nothing redirects the query, so nothing answers it.
    for send in [Send::Connected, Send::Tcp] {
        ensure!(
            resolve(&outsider, CLUSTER_DNS, name, send)?.is_none(),
            "a pod outside the mesh had its DNS answered ({send:?})"
        );
    }
    let counters = datapath(&node)?.counters()?;
    ensure!(
        counters.get(warren_e2e::agent::Counter::DnsRedirected) >= 2
            && counters.get(warren_e2e::agent::Counter::DnsAnswerRestored) >= 2,
        "{counters:?}"
    );
    let metrics = scrape_metrics(&node)?;
    for transport in ["udp", "tcp"] {
        let answered = metric_sum(
            &metrics,
            "warren_ztunnel_dns_queries_total",
            &[("transport", transport), ("outcome", "mesh")],
        );
        ensure!(
            answered >= 2.0,
            "ztunnel answered {answered} queries over {transport}:\n{metrics}"
        );
    }

    // A ServiceEntry host without addresses: the agent allocates one, the proxy
    // answers with it, and a connection to it reaches the entry's endpoint.
    let _echo = start_echo(&cluster, &outsider, 7000)?;
    std::fs::write(
        cluster.config_dir().join("serviceentry.shop.legacy.yaml"),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{ name: legacy, namespace: shop }}\n\
             spec:\n  hosts: [legacy.example.test]\n  ports: [{{ number: 7000, name: tcp, protocol: TCP }}]\n\
             \x20 resolution: STATIC\n  endpoints: [{{ address: {} }}]\n",
            outsider.ip
        ),
    )?;
    let mut allocated = None;
    warren_e2e::mesh::eventually(
        Duration::from_secs(10),
        "legacy.example.test resolves",
        || {
            allocated = resolve(&client, CLUSTER_DNS, "legacy.example.test", Send::SendTo)?
                .and_then(|a| a.addresses.first().copied());
            Ok(allocated.is_some())
        },
    )?;
    let vip = allocated.context("no address")?;
    ensure!(
        matches!(vip, IpAddr::V4(v4) if v4.octets()[..2] == [240, 240]),
        "legacy.example.test resolved to {vip}, not an allocated address"
    );
    // Its IPv6 twin, for a pod that dials IPv6: the same entry, the same
    // (IPv4) endpoint.
    let vip6 = resolve_record(
        &client,
        CLUSTER_DNS,
        "legacy.example.test",
        Send::Connected,
        Record::Aaaa,
    )?
    .and_then(|a| a.addresses.first().copied())
    .context("no AAAA answer for legacy.example.test")?;
    ensure!(
        matches!(vip6, IpAddr::V6(v6) if v6.segments()[..2] == [0x2001, 2]),
        "legacy.example.test's AAAA is {vip6}, not an allocated address"
    );
    for dialled in [vip, vip6] {
        let target = std::net::SocketAddr::new(dialled, 7000).to_string();
        let out = pingpong(&client, &target, &["-n", "3", "--timeout", "10s"])?;
        ensure!(
            out.status.success(),
            "a connection to {target} (legacy.example.test) failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            mesh.logs()
        );
    }
    Ok(())
}
