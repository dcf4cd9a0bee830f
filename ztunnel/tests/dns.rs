//! Endpoints known by name (a ServiceEntry with `resolution: DNS`): ztunnel resolves
//! the name with the DNS server it is given when a connection picks the endpoint, and
//! refuses the connection, saying why, when the name does not resolve in time.

mod common;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use common::*;
use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{RData, Record, RecordType, rdata::A},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, UdpSocket},
};
use warren_api::config::{self, MeshSettings, OutboundPolicy, resource::Kind};

/// A DNS server over UDP answering A questions from `zone` (a name with a trailing dot →
/// its addresses); a name it does not hold is NXDOMAIN, and `stall.example.` is never
/// answered.
async fn dns_server(ip: IpAddr, zone: BTreeMap<&'static str, Vec<Ipv4Addr>>) -> SocketAddr {
    let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 4096];
        while let Ok((len, from)) = socket.recv_from(&mut buffer).await {
            let Ok(query) = Message::from_vec(&buffer[..len]) else {
                continue;
            };
            let Some(question) = query.queries.first().cloned() else {
                continue;
            };
            let name = question.name().to_ascii().to_ascii_lowercase();
            if name == "stall.example." {
                continue;
            }
            let mut answer = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
            answer.metadata.recursion_desired = query.metadata.recursion_desired;
            answer.metadata.recursion_available = true;
            answer.add_query(question.clone());
            match zone.get(name.as_str()) {
                // Only A records here: an AAAA question gets an empty answer.
                Some(addresses) => {
                    if question.query_type() == RecordType::A {
                        for ip in addresses {
                            answer.add_answer(Record::from_rdata(
                                question.name().clone(),
                                60,
                                RData::A(A(*ip)),
                            ));
                        }
                    }
                }
                None => answer.metadata.response_code = ResponseCode::NXDomain,
            }
            if let Ok(bytes) = answer.to_vec() {
                let _ = socket.send_to(&bytes, from).await;
            }
        }
    });
    addr
}

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
    let v4 = |d: u8| Ipv4Addr::new(127, 47, 50, d);
    // Two servers on one port: which answered says which address was dialled.
    let port = {
        let probe = TcpListener::bind(SocketAddr::new(ip(2), 0)).await.unwrap();
        probe.local_addr().unwrap().port()
    };
    tagged(SocketAddr::new(ip(2), port), "two").await;
    tagged(SocketAddr::new(ip(3), port), "three").await;
    let dns = dns_server(
        ip(53),
        BTreeMap::from([
            ("backend.example.", vec![v4(2), v4(3)]),
            ("three.example.", vec![v4(3)]),
        ]),
    )
    .await;
    let mut mesh = two_nodes_configured(47, |config| config.dns_servers = vec![dns]).await;
    // Registered destinations only: what a name resolves to is reached all the
    // same, as the entry's endpoint.
    mesh.view.put(res(
        warren_api::key::MESH,
        Kind::Mesh(MeshSettings {
            trust_domain: TD.into(),
            outbound_policy: OutboundPolicy::RegistryOnly.into(),
            ..Default::default()
        }),
    ));
    let spread = SocketAddr::new("127.47.60.1".parse().unwrap(), 80);
    let first = SocketAddr::new("127.47.60.2".parse().unwrap(), 80);
    let unknown = SocketAddr::new("127.47.60.3".parse().unwrap(), 80);
    let stalled = SocketAddr::new("127.47.60.4".parse().unwrap(), 80);
    mesh.view.put(named_entry(
        "spread.example",
        spread.ip(),
        port,
        &["backend.example"],
        false,
    ));
    // `DNS_ROUND_ROBIN`: the first address of the answer, every time.
    mesh.view.put(named_entry(
        "first.example",
        first.ip(),
        port,
        &["backend.example"],
        true,
    ));
    mesh.view.put(named_entry(
        "unknown.example",
        unknown.ip(),
        port,
        &["nowhere.example"],
        false,
    ));
    mesh.view.put(named_entry(
        "stalled.example",
        stalled.ip(),
        port,
        &["stall.example"],
        false,
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

    // A name that does not resolve, and one whose server never answers: refused,
    // the second within the connect timeout (2 s here), never held.
    assert!(refused(mesh.client_to(unknown).await).await);
    let started = Instant::now();
    assert!(refused(mesh.client_to(stalled).await).await);
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(8), "held {waited:?}");
    let text = mesh.a.metrics().await;
    assert_eq!(
        metric(
            &text,
            "warren_ztunnel_refused_connections_total",
            &["reason=\"dns\""]
        ),
        2,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "istio_tcp_connections_opened_total",
            &["destination_service=\"spread.example\""]
        ),
        24
    );
}
