//! Endpoints known by name (a ServiceEntry with `resolution: DNS`): ztunnel resolves
//! the name with the DNS server it is given when a connection picks the endpoint, and
//! refuses the connection, saying why, when the name does not resolve in time.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::common::*;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};
use warren_api::config::{self, resource::Kind};

/// A server at `addr` that sends `tag` on every connection and closes it.
async fn tagged(addr: SocketAddr, tag: &'static str) {
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(tag.as_bytes()).await;
        }
    });
}

/// A ServiceEntry's Service (as the agent publishes it) at `vip`, port 80 → `port` on
/// endpoints known by `names`.
fn named_entry(
    host: &str,
    vip: IpAddr,
    port: u16,
    names: &[&str],
    first: bool,
) -> config::Resource {
    res(
        warren_api::key::service_entry("demo", host),
        Kind::Service(config::Service {
            name: host.into(),
            namespace: "demo".into(),
            hostname: host.into(),
            vips: vec![warren_api::addr::to_bytes(vip)],
            ports: vec![config::ServicePort {
                port: 80,
                target_port: u32::from(port),
                ..Default::default()
            }],
            endpoints: names
                .iter()
                .map(|name| config::Endpoint {
                    hostname: (*name).into(),
                    ready: true,
                    ..Default::default()
                })
                .collect(),
            dns_first_address: first,
            ..Default::default()
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_endpoints_are_resolved_per_connection() {
    let ip = |d: u8| IpAddr::from([127, 47, 50, d]);
    let vip = |d: u8| SocketAddr::new(IpAddr::from([127, 47, 60, d]), 80);
    // Two servers on one port: which answered says which address was dialled.
    let port = {
        let probe = TcpListener::bind(SocketAddr::new(ip(2), 0)).await.unwrap();
        probe.local_addr().unwrap().port()
    };
    tagged(SocketAddr::new(ip(2), port), "two").await;
    tagged(SocketAddr::new(ip(3), port), "three").await;
    // Listening on a Kubernetes Service's VIP: reachable, were it not refused.
    tagged(SocketAddr::new(ip(4), port), "four").await;
    let (spread, first, unknown, stalled) = (vip(1), vip(2), vip(3), vip(4));
    let (dual, to_pod, to_vip, flaky) = (vip(5), vip(6), vip(7), vip(8));
    let zone: dns::Zone = Arc::new(Mutex::new(BTreeMap::from([
        ("backend.example.", vec![ip(2), ip(3)]),
        // IPv6 first in the answer: a client that dialled IPv4 still gets the
        // IPv4 address (nothing listens on the IPv6 one).
        ("dual.example.", vec!["::1".parse().unwrap(), ip(3)]),
        // A Kubernetes Service's VIP: sent there as a plain address, it would
        // skip that Service's waypoint and mutual TLS.
        ("vip.example.", vec![ip(4)]),
        ("stall.example.", vec![]),
        ("flaky.example.", vec![ip(2)]),
    ])));
    let dns = dns::serve(ip(53), Arc::clone(&zone)).await;
    let mut mesh = two_nodes_configured(47, |config| config.dns_servers = vec![dns]).await;
    // A mesh pod's name: reached over HBONE, as when dialled by address.
    zone.lock()
        .unwrap()
        .insert("pod.example.", vec![mesh.server.ip()]);
    // Registered destinations only: what a name resolves to is reached all the
    // same, as the entry's endpoint.
    mesh.view.put(registry_only());
    let server_port = mesh.server.port();
    for (host, at, target, name, first_only) in [
        ("spread.example", spread, port, "backend.example", false),
        // `DNS_ROUND_ROBIN`: the first address of the answer, every time.
        ("first.example", first, port, "backend.example", true),
        ("unknown.example", unknown, port, "nowhere.example", false),
        ("stalled.example", stalled, port, "stall.example", false),
        ("dual.example", dual, port, "dual.example", false),
        ("pod.example", to_pod, server_port, "pod.example", false),
        ("vip.example", to_vip, port, "vip.example", false),
        ("flaky.example", flaky, port, "flaky.example", false),
    ] {
        mesh.view
            .put(named_entry(host, at.ip(), target, &[name], first_only));
    }
    // The Kubernetes Service whose VIP vip.example names.
    mesh.view.put(res(
        warren_api::key::service("demo", "other"),
        Kind::Service(config::Service {
            name: "other".into(),
            namespace: "demo".into(),
            hostname: "other.demo.svc.cluster.local".into(),
            vips: vec![warren_api::addr::to_bytes(ip(4))],
            ports: vec![config::ServicePort {
                port: u32::from(port),
                target_port: u32::from(port),
                ..Default::default()
            }],
            ..Default::default()
        }),
    ));
    mesh.sync();

    let answers = async |dst: SocketAddr, n: usize| -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let mut stream = mesh.client_to(dst).await;
            let mut tag = String::new();
            let read =
                tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut tag))
                    .await;
            assert!(matches!(read, Ok(Ok(_))), "{dst}: {read:?}");
            *seen.entry(tag).or_default() += 1;
        }
        seen
    };
    // `DNS`: every address the name resolves to is an endpoint.
    let spread_out = answers(spread, 24).await;
    assert_eq!(
        spread_out.keys().map(String::as_str).collect::<Vec<_>>(),
        ["three", "two"],
        "both addresses of backend.example: {spread_out:?}"
    );
    let first_only = answers(first, 8).await;
    assert_eq!(first_only, BTreeMap::from([("two".to_owned(), 8)]));
    let same_family = answers(dual, 8).await;
    assert_eq!(same_family, BTreeMap::from([("three".to_owned(), 8)]));
    assert_eq!(
        round_trip(mesh.client_to(to_pod).await, b"hello pod")
            .await
            .unwrap(),
        b"hello pod"
    );
    assert!(
        mesh.a.ztunnel.inputs.pool.connection_count() > 0,
        "the pod was not reached over HBONE"
    );
    assert!(refused(mesh.client_to(to_vip).await).await);

    // The DNS server stalls once the answer expired (TTL 1 s): the last
    // answer stands in, at once, while the refresh waits in the background.
    assert_eq!(
        answers(flaky, 1).await,
        BTreeMap::from([("two".to_owned(), 1)])
    );
    zone.lock().unwrap().insert("flaky.example.", vec![]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(
            answers(flaky, 1).await,
            BTreeMap::from([("two".to_owned(), 1)])
        );
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(1), "waited {waited:?} on DNS");
    }
    // Once the name no longer exists (NXDOMAIN), it is dropped: refused
    // after the next refresh.
    zone.lock().unwrap().remove("flaky.example.");
    let mut gone = false;
    for _ in 0..40 {
        if refused(mesh.client_to(flaky).await).await {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(gone, "a name gone from DNS is still reached");

    // A name that does not resolve, and one whose server never answers: refused,
    // the second within the connect timeout (2 s here), never held.
    assert!(refused(mesh.client_to(unknown).await).await);
    let started = Instant::now();
    assert!(refused(mesh.client_to(stalled).await).await);
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(8), "held {waited:?}");
    let text = mesh.a.metrics().await;
    let count = |name: &str, labels: &[&str]| metric(&text, name, labels);
    assert_eq!(
        count(
            "warren_ztunnel_refused_connections_total",
            &["reason=\"dns\""]
        ),
        3,
        "unknown, stalled and the name gone: {text}"
    );
    assert_eq!(
        count(
            "warren_ztunnel_refused_connections_total",
            &["reason=\"dns_service_address\""]
        ),
        1,
        "{text}"
    );
    assert_eq!(
        count(
            "istio_tcp_connections_opened_total",
            &["destination_service=\"spread.example\""]
        ),
        24
    );
    assert_eq!(
        count(
            "istio_tcp_connections_opened_total",
            &[
                "destination_service=\"pod.example\"",
                "connection_security_policy=\"mutual_tls\""
            ]
        ),
        1,
        "{text}"
    );
}
