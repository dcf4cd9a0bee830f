//! The DNS proxy: a pod's query for a name of the mesh (a Service, a ServiceEntry
//! host with addresses) is answered by ztunnel with the addresses the mesh routes;
//! any other query goes to the node's DNS server and its answer back unchanged.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::common::*;
use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::UdpSocket,
};
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
    let ip = |c: u8, d: u8| IpAddr::from([127, 56, c, d]);
    let vip: IpAddr = ip(60, 1);
    let vip6: IpAddr = "fd00:96::10".parse().unwrap();
    let entry_vip = ip(60, 2);
    // The node's DNS server: answers from its zone (TTL 1 s), NXDOMAIN otherwise.
    let zone: dns::Zone = Arc::new(Mutex::new(BTreeMap::from([
        ("www.example.org.", vec![ip(70, 1)]),
        ("dynamic.example.com.", vec![ip(70, 2)]),
    ])));
    let dns = dns::serve(ip(53, 1), zone).await;
    let mut mesh = two_nodes_configured(56, |config| {
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

/// Asks `proxy` over one TCP connection from `from`, each query after the
/// other; the answers, as many as came within a second each.
async fn ask_tcp(proxy: SocketAddr, from: IpAddr, queries: &[Message]) -> Vec<Message> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut stream = socket.connect(proxy).await.unwrap();
    let mut answers = Vec::new();
    for query in queries {
        let bytes = query.to_vec().unwrap();
        let mut framed = u16::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        stream.write_all(&framed).await.unwrap();
        let read = async {
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await?;
            let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut answer).await?;
            std::io::Result::Ok(answer)
        };
        match tokio::time::timeout(Duration::from_secs(1), read).await {
            Ok(Ok(answer)) => answers.push(Message::from_vec(&answer).unwrap()),
            _ => break,
        }
    }
    answers
}

fn question(id: u16, name: &str, kind: RecordType) -> Message {
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
    query
}

/// `query` with EDNS, offering `size` bytes over UDP.
fn with_edns(mut query: Message, size: u16) -> Message {
    let mut edns = Edns::new();
    edns.set_max_payload(size);
    query.set_edns(edns);
    query
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_over_tcp_is_answered_and_a_long_answer_over_udp_sends_the_resolver_there() {
    let ip = |c: u8, d: u8| IpAddr::from([127, 53, c, d]);
    let zone: dns::Zone = Arc::new(Mutex::new(BTreeMap::from([(
        "www.example.org.",
        vec![ip(70, 1)],
    )])));
    let server = dns::serve_both(ip(53, 1), zone).await;
    let mut mesh = two_nodes_configured(53, |config| {
        config.dns_servers = vec![server.addr];
    })
    .await;
    let vip = ip(60, 1);
    mesh.view.put(service(
        warren_api::key::service("demo", "app"),
        "app.demo.svc.cluster.local",
        &[vip],
        &[],
    ));
    // 60 addresses: more than 512 bytes of answer, less than 4 096.
    let many: Vec<IpAddr> = (1..=60).map(|d| ip(61, d)).collect();
    mesh.view.put(service(
        warren_api::key::service_entry("demo", "many.example.com"),
        "many.example.com",
        &many,
        &[],
    ));
    mesh.view.put(service(
        warren_api::key::service_entry("demo", "twenty.example.com"),
        "twenty.example.com",
        &many[..20],
        &[],
    ));
    mesh.sync();
    let proxy = mesh.a.ztunnel.addresses.dns_proxy[0];
    let client = mesh.client_ip;

    // Over TCP: the mesh's names from here, several queries on one connection,
    // the rest forwarded over TCP.
    let answers = ask_tcp(
        proxy,
        client,
        &[
            question(1, "app.demo.svc.cluster.local.", RecordType::A),
            question(2, "many.example.com.", RecordType::A),
            question(3, "www.example.org.", RecordType::A),
        ],
    )
    .await;
    let got: Vec<_> = answers
        .iter()
        .map(|a| (a.metadata.id, addresses(a).len()))
        .collect();
    assert_eq!(got, [(1, 1), (2, 60), (3, 1)]);
    assert_eq!(addresses(&answers[0]), [vip]);
    assert!(answers[0].metadata.authoritative);
    assert_eq!(addresses(&answers[1]), many);
    assert!(!answers[1].metadata.truncation);
    assert_eq!(addresses(&answers[2]), [ip(70, 1)]);
    assert_eq!(
        server.tcp_queries.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the forwarded query went over TCP, as the pod asked"
    );

    // Over UDP without EDNS (512 bytes at most): truncated, nothing in it, so
    // the resolver asks again over TCP.
    let plain = question(4, "many.example.com.", RecordType::A);
    let answer = ask_raw(proxy, client, &plain.to_vec().unwrap())
        .await
        .map(|bytes| Message::from_vec(&bytes).unwrap())
        .expect("an answer");
    assert!(answer.metadata.truncation, "{answer:?}");
    assert!(answer.answers.is_empty());
    assert!(
        answer.edns.is_none(),
        "EDNS in an answer to a query without"
    );
    // With EDNS offering 4 096 bytes: all of it, EDNS in the answer too.
    let edns = with_edns(question(5, "many.example.com.", RecordType::A), 4096);
    let answer = ask_raw(proxy, client, &edns.to_vec().unwrap())
        .await
        .map(|bytes| Message::from_vec(&bytes).unwrap())
        .expect("an answer");
    assert!(!answer.metadata.truncation);
    assert_eq!(addresses(&answer), many);
    let offered = answer.edns.as_ref().expect("EDNS in the answer");
    assert_eq!(offered.version(), 0);
    assert!(offered.max_payload() >= 1232);
    // An EDNS size below 512 still allows 512: 20 addresses (about 360 bytes)
    // fit whole.
    let small = with_edns(question(6, "twenty.example.com.", RecordType::A), 100);
    let answer = ask_raw(proxy, client, &small.to_vec().unwrap())
        .await
        .map(|bytes| Message::from_vec(&bytes).unwrap())
        .expect("an answer");
    assert!(!answer.metadata.truncation);
    assert_eq!(addresses(&answer), &many[..20]);
    // A DNSSEC-aware resolver's query (DO set) is still the mesh's to answer,
    // and its answer says DO back.
    let mut edns = Edns::new();
    edns.set_dnssec_ok(true);
    let mut dnssec = question(8, "app.demo.svc.cluster.local.", RecordType::A);
    dnssec.set_edns(edns);
    let answer = ask_raw(proxy, client, &dnssec.to_vec().unwrap())
        .await
        .map(|bytes| Message::from_vec(&bytes).unwrap())
        .expect("an answer");
    assert!(answer.metadata.authoritative, "{answer:?}");
    assert_eq!(addresses(&answer), [vip]);
    assert!(answer.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok));
    // A query split across TCP segments, the length bytes apart: answered.
    let split = question(9, "app.demo.svc.cluster.local.", RecordType::A)
        .to_vec()
        .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(client, 0)).unwrap();
    let mut stream = socket.connect(proxy).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let len = u16::try_from(split.len()).unwrap().to_be_bytes();
    for part in [&len[..1], &len[1..], &split[..5], &split[5..]] {
        stream.write_all(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.unwrap();
    let mut bytes = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut bytes).await.unwrap();
    assert_eq!(addresses(&Message::from_vec(&bytes).unwrap()), [vip]);

    // Not a pod of this node: the connection is closed unanswered.
    let answers = ask_tcp(
        proxy,
        mesh.server.ip(),
        &[question(7, "app.demo.svc.cluster.local.", RecordType::A)],
    )
    .await;
    assert!(answers.is_empty(), "{answers:?}");
    let metrics = mesh.a.metrics().await;
    for (transport, outcome, at_least) in [
        ("tcp", "mesh", 2),
        ("tcp", "forwarded", 1),
        ("udp", "mesh", 3),
    ] {
        let seen = metric(
            &metrics,
            "warren_ztunnel_dns_queries_total",
            &[
                &format!("transport=\"{transport}\""),
                &format!("outcome=\"{outcome}\""),
            ],
        );
        assert!(seen >= at_least, "{transport} {outcome}: {seen}\n{metrics}");
    }
}

/// Connections from addresses ztunnel does not know wait for the agent's
/// update a few at a time: with 16 waiting, the next is reset at once,
/// while they wait on; the one whose pod then appears is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sources_wait_sixteen_at_a_time() {
    let ip = |c: u8, d: u8| IpAddr::from([127, 55, c, d]);
    let mut mesh = two_nodes_configured(55, |config| {
        // Long enough that the waiting connections are still waiting when
        // the test looks, whatever the machine's speed.
        config.catch_up_wait = Duration::from_secs(30);
    })
    .await;
    mesh.view.put(service(
        warren_api::key::service("demo", "app"),
        "app.demo.svc.cluster.local",
        &[ip(60, 1)],
        &[],
    ));
    mesh.sync();
    let proxy = mesh.a.ztunnel.addresses.dns_proxy[0];
    let connect = async |from: IpAddr| {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        socket.connect(proxy).await.unwrap()
    };
    // Sixteen newcomers, each from its own address (one address alone
    // would meet the per-source limit first).
    let mut waiting = Vec::new();
    for d in 1..=16 {
        waiting.push(connect(ip(90, d)).await);
    }
    // Accepted in order; half a second for each to take its place in the
    // pool (a spawn away), then the seventeenth must be reset on its first
    // try, not after waiting itself.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let probe = async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(ip(91, 1), 0))?;
        // The reset can come before the connect is seen to complete.
        let mut stream = socket.connect(proxy).await?;
        let mut byte = [0u8; 1];
        stream.read(&mut byte).await
    };
    let read = tokio::time::timeout(Duration::from_secs(5), probe).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "a seventeenth newcomer was not reset while sixteen waited: {read:?}"
    );
    // The sixteen still wait: nothing to read, not closed.
    for (i, stream) in waiting.iter().enumerate() {
        let mut byte = [0u8; 1];
        match stream.try_read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("waiting connection {i} was ended: {other:?}"),
        }
    }
    // The first one's pod arrives: its query is answered.
    mesh.view.add_workload(workload(
        "demo",
        "newcomer",
        "newcomer",
        ip(90, 1),
        "node-a",
        ip(1, 1),
    ));
    mesh.sync();
    let mut stream = waiting.swap_remove(0);
    let query = question(1, "app.demo.svc.cluster.local.", RecordType::A)
        .to_vec()
        .unwrap();
    let mut framed = u16::try_from(query.len()).unwrap().to_be_bytes().to_vec();
    framed.extend_from_slice(&query);
    stream.write_all(&framed).await.unwrap();
    let mut len = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut len))
        .await
        .expect("an answer once the pod is known")
        .unwrap();
    let mut bytes = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut bytes).await.unwrap();
    assert_eq!(addresses(&Message::from_vec(&bytes).unwrap()), [ip(60, 1)]);
    let metrics = mesh.a.metrics().await;
    assert!(
        metric(
            &metrics,
            "warren_ztunnel_dns_queries_total",
            &["transport=\"tcp\"", "outcome=\"dropped\""],
        ) >= 1,
        "{metrics}"
    );
}
