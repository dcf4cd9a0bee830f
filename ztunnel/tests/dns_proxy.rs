//! The DNS proxy: a pod's query for a name of the mesh (a Service, a ServiceEntry
//! host with addresses) is answered by ztunnel with the addresses the mesh routes;
//! any other query goes to the node's DNS server and its answer back unchanged.

mod common;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use common::*;
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};
use tokio::net::UdpSocket;
use warren_api::config::{self, resource::Kind};

fn service(key: String, hostname: &str, vips: &[IpAddr], export_to: &[&str]) -> config::Resource {
    res(
        key,
        Kind::Service(config::Service {
            name: hostname.split('.').next().unwrap_or_default().into(),
            namespace: "demo".into(),
            hostname: hostname.into(),
            vips: vips
                .iter()
                .map(|ip| warren_api::addr::to_bytes(*ip))
                .collect(),
            ports: vec![config::ServicePort {
                port: 80,
                target_port: 80,
                ..Default::default()
            }],
            export_to: export_to.iter().map(|s| (*s).into()).collect(),
            ..Default::default()
        }),
    )
}

/// A ServiceEntry host of `demo` with `vips` the agent allocated.
fn allocated(host: &str, vips: &[IpAddr]) -> config::Resource {
    let mut resource = service(
        warren_api::key::service_entry("demo", host),
        host,
        vips,
        &[],
    );
    if let Some(Kind::Service(s)) = &mut resource.kind {
        s.vips_allocated = true;
    }
    resource
}

/// Asks `proxy` from `from` and returns the answer, if one comes within a second.
async fn ask(
    proxy: SocketAddr,
    from: IpAddr,
    id: u16,
    name: &str,
    kind: RecordType,
) -> Option<Message> {
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
    ask_raw(proxy, from, &query.to_vec().unwrap())
        .await
        .map(|bytes| Message::from_vec(&bytes).unwrap())
}

async fn ask_raw(proxy: SocketAddr, from: IpAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind(SocketAddr::new(from, 0)).await.unwrap();
    socket.send_to(bytes, proxy).await.unwrap();
    let mut buffer = vec![0u8; 4096];
    let (len, _) = tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buffer))
        .await
        .ok()?
        .unwrap();
    buffer.truncate(len);
    Some(buffer)
}

fn addresses(answer: &Message) -> Vec<IpAddr> {
    answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_names_are_answered_here_and_the_rest_forwarded() {
    let ip = |c: u8, d: u8| IpAddr::from([127, 49, c, d]);
    let vip: IpAddr = ip(60, 1);
    let vip6: IpAddr = "fd00:96::10".parse().unwrap();
    let entry_vip = ip(60, 2);
    // The node's DNS server: answers from its zone (TTL 1 s), NXDOMAIN otherwise.
    let zone: dns::Zone = Arc::new(Mutex::new(BTreeMap::from([
        ("www.example.org.", vec![ip(70, 1)]),
        ("dynamic.example.com.", vec![ip(70, 2)]),
    ])));
    let dns = dns::serve(ip(53, 1), zone).await;
    let mut mesh = two_nodes_configured(49, |config| {
        config.dns_servers = vec![dns];
        config.catch_up_wait = Duration::from_secs(5);
    })
    .await;
    mesh.view.put(service(
        warren_api::key::service("demo", "app"),
        "app.demo.svc.cluster.local",
        &[vip, vip6],
        &[],
    ));
    mesh.view.put(service(
        warren_api::key::service_entry("demo", "api.example.com"),
        "api.example.com",
        &[entry_vip],
        &[],
    ));
    // Resolved by DNS as the pod asked: no address of the mesh's own.
    mesh.view.put(service(
        warren_api::key::service_entry("demo", "dynamic.example.com"),
        "dynamic.example.com",
        &[],
        &[],
    ));
    // Exported to another namespace only: not the client's to see.
    mesh.view.put(service(
        warren_api::key::service("demo", "private"),
        "private.demo.svc.cluster.local",
        &[ip(60, 3)],
        &["elsewhere"],
    ));
    // A host written with capitals and the trailing dot: matched as DNS compares.
    mesh.view.put(service(
        warren_api::key::service_entry("demo", "Mixed.Example.com."),
        "Mixed.Example.com.",
        &[ip(60, 4)],
        &[],
    ));
    // Addresses the agent allocated, of both families: the IPv6 one leads
    // only to ztunnel, which takes no IPv6 captures here (its outbound
    // listener is IPv4), so it is not handed out.
    mesh.view.put(allocated(
        "dual.example.com",
        &[ip(60, 5), "2001:2::f0f0:5".parse().unwrap()],
    ));
    // An IPv6 address the entry's author gave: answered all the same.
    mesh.view.put(service(
        warren_api::key::service_entry("demo", "given6.example.com"),
        "given6.example.com",
        &["2001:db8::10".parse().unwrap()],
        &[],
    ));
    mesh.sync();
    let proxy = mesh.a.ztunnel.addresses.dns_proxy[0];
    let client = mesh.client_ip;
    let answer = ask(proxy, client, 6, "mixed.example.com.", RecordType::A)
        .await
        .expect("an answer for Mixed.Example.com.");
    assert_eq!(addresses(&answer), vec![ip(60, 4)]);

    // A Service: its VIP of the family asked, answered here (authoritative).
    let answer = ask(
        proxy,
        client,
        7,
        "app.demo.svc.cluster.local.",
        RecordType::A,
    )
    .await
    .expect("an answer for app");
    assert_eq!(answer.metadata.id, 7);
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.metadata.authoritative);
    assert_eq!(addresses(&answer), vec![vip]);
    assert_eq!(answer.answers[0].ttl, 30);
    // Names are matched whatever their case.
    let answer = ask(
        proxy,
        client,
        8,
        "App.Demo.svc.cluster.local.",
        RecordType::AAAA,
    )
    .await
    .expect("an answer for app's IPv6");
    assert_eq!(addresses(&answer), vec![vip6]);
    // A ServiceEntry host: the address the mesh routes.
    let answer = ask(proxy, client, 9, "api.example.com.", RecordType::A)
        .await
        .unwrap();
    assert_eq!(addresses(&answer), vec![entry_vip]);
    // Known, with no address of the family asked: an empty answer, not a forward.
    let answer = ask(proxy, client, 10, "api.example.com.", RecordType::AAAA)
        .await
        .unwrap();
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.answers.is_empty());
    let answer = ask(proxy, client, 20, "dual.example.com.", RecordType::A)
        .await
        .unwrap();
    assert_eq!(addresses(&answer), vec![ip(60, 5)]);
    let answer = ask(proxy, client, 21, "dual.example.com.", RecordType::AAAA)
        .await
        .unwrap();
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.answers.is_empty(), "{answer:?}");
    let answer = ask(proxy, client, 22, "given6.example.com.", RecordType::AAAA)
        .await
        .unwrap();
    assert_eq!(
        addresses(&answer),
        vec!["2001:db8::10".parse::<IpAddr>().unwrap()]
    );

    // Forwarded: a name outside the mesh, a ServiceEntry host without addresses, a
    // Service the client's namespace does not see, another type of question.
    let answer = ask(proxy, client, 11, "www.example.org.", RecordType::A)
        .await
        .unwrap();
    assert_eq!(
        (answer.metadata.id, addresses(&answer)),
        (11, vec![ip(70, 1)])
    );
    assert_eq!(answer.answers[0].ttl, 1, "the server's answer, unchanged");
    let answer = ask(proxy, client, 12, "dynamic.example.com.", RecordType::A)
        .await
        .unwrap();
    assert_eq!(addresses(&answer), vec![ip(70, 2)]);
    for (id, name, kind) in [
        (13, "private.demo.svc.cluster.local.", RecordType::A),
        (14, "app.demo.svc.cluster.local.", RecordType::TXT),
        (15, "nowhere.example.", RecordType::A),
    ] {
        let answer = ask(proxy, client, id, name, kind).await.unwrap();
        assert_eq!(
            (answer.metadata.id, answer.metadata.response_code),
            (id, ResponseCode::NXDomain),
            "{name} {kind:?} was not forwarded"
        );
    }

    // Anyone but a pod of this node (here, the other node's pod) is not served:
    // the port is on the node's address, and the proxy is no open resolver.
    assert!(
        ask(
            proxy,
            mesh.server.ip(),
            17,
            "www.example.org.",
            RecordType::A
        )
        .await
        .is_none()
    );

    // A pod captured as its sandbox was built asks before the agent's update naming
    // it reaches ztunnel: its query waits for the update instead of being dropped.
    let newcomer = ip(1, 7);
    let asked = tokio::spawn(ask(
        proxy,
        newcomer,
        18,
        "app.demo.svc.cluster.local.",
        RecordType::A,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    mesh.view.add_workload(workload(
        "demo",
        "newcomer",
        "newcomer",
        newcomer,
        "node-a",
        ip(1, 1),
    ));
    mesh.sync();
    let answer = asked
        .await
        .unwrap()
        .expect("the newcomer's first query is answered");
    assert_eq!(addresses(&answer), vec![vip]);

    // Not DNS: dropped, and the proxy still answers.
    assert_eq!(ask_raw(proxy, client, b"hello").await, None);
    assert!(
        ask(
            proxy,
            client,
            16,
            "app.demo.svc.cluster.local.",
            RecordType::A
        )
        .await
        .is_some()
    );
    let metrics = mesh.a.metrics().await;
    for (outcome, at_least) in [("mesh", 5), ("forwarded", 5), ("dropped", 1)] {
        let seen = metric(
            &metrics,
            "warren_ztunnel_dns_queries_total",
            &[&format!("outcome=\"{outcome}\"")],
        );
        assert!(seen >= at_least, "{outcome}: {seen}\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocated_ipv6_address_is_handed_out_where_ztunnel_takes_ipv6() {
    let mut mesh = two_nodes_configured(52, |config| {
        config
            .outbound_addrs
            .push(SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), 0));
    })
    .await;
    let v6: IpAddr = "2001:2::f0f0:7".parse().unwrap();
    mesh.view.put(allocated(
        "legacy.example.com",
        &[IpAddr::from([127, 52, 60, 7]), v6],
    ));
    mesh.sync();
    let proxy = mesh.a.ztunnel.addresses.dns_proxy[0];
    let answer = ask(
        proxy,
        mesh.client_ip,
        1,
        "legacy.example.com.",
        RecordType::AAAA,
    )
    .await
    .expect("an answer");
    assert_eq!(addresses(&answer), vec![v6]);
}
