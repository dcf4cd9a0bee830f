//! The DNS proxy: enrolled pods' DNS queries (UDP or TCP to port 53), sent here
//! by the node's eBPF hooks, are answered for the mesh's own names and forwarded
//! for the rest.
//!
//! - A query for the address (A or AAAA) of a Service (`name.ns.svc.<domain>`) or
//!   a ServiceEntry host that the pod's namespace sees is answered from what the
//!   agent published: the service's addresses of the family asked. A name known
//!   here with none of that family gets an empty answer, not a forward: its other
//!   family is what the pod should use.
//! - Anything else goes unchanged to the node's DNS servers (`--dns-server`, else
//!   ztunnel's /etc/resolv.conf), and their answer back, over the transport the
//!   pod used.
//! - Over TCP a pod may ask anything it may ask over UDP (RFC 7766): a resolver
//!   asks again over TCP when an answer comes back truncated, and some ask over
//!   TCP only. An answer too long for the UDP size the query allows (512 bytes,
//!   or its EDNS size) is sent truncated, which sends the resolver to TCP.
//!
//! Answering here makes ServiceEntry hosts, which no DNS server may know,
//! resolvable to the addresses the mesh routes, and saves the mesh's own names a
//! trip to the cluster's DNS.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use simple_dns::{
    CLASS, OPCODE, Packet, PacketFlag, QCLASS, QTYPE, RCODE, ResourceRecord, TYPE,
    rdata::{A, AAAA, OPT, RData},
};
use tokio::{net::UdpSocket, sync::Semaphore};
use tracing::{debug, info, warn};

mod edns;
mod tcp;

pub use tcp::serve as serve_tcp;

use super::Inputs;
use crate::{drain, state::Workload};

/// Seconds an answer from the mesh may be cached: short, so a changed Service
/// address is seen soon.
const TTL: u32 = 30;
/// The largest DNS message over UDP (with EDNS) taken or sent here; anything
/// longer is not DNS.
const MAX_MESSAGE: usize = 4096;
/// The largest answer over UDP to a query without EDNS (RFC 1035).
const PLAIN_UDP_MESSAGE: usize = 512;
/// The UDP size this proxy offers in its EDNS answers: what passes without IP
/// fragmentation on common paths (DNS flag day 2020).
const EDNS_SIZE: u16 = 1232;
/// How long a forwarded query waits for the node's DNS server.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// Queries waiting at once (forwarded, or from a pod ztunnel does not know yet):
/// a pod flooding random names cannot take ztunnel's file descriptors, which the
/// node's connections need. Past it a query is dropped and the resolver retries.
const MAX_WAITING: usize = 256;

/// How a query came, which bounds its answer's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// 512 bytes, or the EDNS size the query offers.
    Udp,
    /// Any size a message can have.
    Tcp,
}

/// What to do with one query.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// The answer, built here.
    Answer(Vec<u8>),
    /// Not the mesh's to answer: ask the node's DNS servers.
    Forward,
    /// From an address that is no pod of this node yet: a pod captured as its
    /// sandbox was built can ask before the agent's update naming it arrives.
    Unknown,
    /// Not a DNS query: dropped.
    Drop(String),
}

/// Answers queries on `socket` until draining starts.
pub async fn serve(inputs: Arc<Inputs>, socket: UdpSocket, mut drain: drain::Watch) {
    if let Ok(addr) = socket.local_addr() {
        info!(%addr, "DNS proxy ready");
    }
    let socket = Arc::new(socket);
    let waiting = Arc::new(Semaphore::new(MAX_WAITING));
    let mut buf = vec![0; MAX_MESSAGE];
    loop {
        let (len, client) = tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(error) => {
                    warn!(%error, "DNS proxy: receiving");
                    continue;
                }
            },
            () = drain.draining() => {
                leave_port(&socket);
                return;
            }
        };
        let query = &buf[..len];
        let reply = answer(&inputs, client.ip(), query);
        if let Reply::Answer(bytes) = &reply {
            inputs.metrics.dns_query("udp", "mesh");
            if let Err(error) = socket.send_to(bytes, client).await {
                debug!(%client, %error, "DNS proxy: answering");
            }
            continue;
        }
        if let Reply::Drop(why) = &reply {
            inputs.metrics.dns_query("udp", "dropped");
            debug!(%client, %why, "DNS proxy: dropped a datagram");
            continue;
        }
        let Ok(permit) = Arc::clone(&waiting).try_acquire_owned() else {
            inputs.metrics.dns_query("udp", "overloaded");
            debug!(%client, "DNS proxy: too many queries waiting; dropped one");
            continue;
        };
        let call = Call {
            inputs: Arc::clone(&inputs),
            socket: Arc::clone(&socket),
            query: query.to_vec(),
            client,
        };
        tokio::spawn(async move {
            call.finish(reply).await;
            drop(permit);
        });
    }
}

/// A query that waits: for ztunnel to know its pod, or for the node's DNS server.
struct Call {
    inputs: Arc<Inputs>,
    socket: Arc<UdpSocket>,
    query: Vec<u8>,
    client: SocketAddr,
}

impl Call {
    async fn finish(self, mut reply: Reply) {
        if let Reply::Unknown = reply {
            let (state, ip) = (&self.inputs.state, self.client.ip());
            let known = state
                .wait_for(self.inputs.config.catch_up_wait, |s| {
                    s.local_workload_by_ip(ip)
                })
                .await;
            reply = match known {
                Some(_) => answer(&self.inputs, ip, &self.query),
                None => Reply::Drop(format!("{ip} is not a pod of this node")),
            };
        }
        let metrics = &self.inputs.metrics;
        match reply {
            Reply::Answer(bytes) => {
                metrics.dns_query("udp", "mesh");
                self.send(&bytes).await;
            }
            Reply::Forward => {
                metrics.dns_query("udp", "forwarded");
                self.forward().await;
            }
            Reply::Drop(why) => {
                metrics.dns_query("udp", "dropped");
                debug!(client = %self.client, %why, "DNS proxy: dropped a datagram");
            }
            // Known after the wait, or dropped above: not again.
            Reply::Unknown => {}
        }
    }

    async fn send(&self, bytes: &[u8]) {
        if let Err(error) = self.socket.send_to(bytes, self.client).await {
            debug!(client = %self.client, %error, "DNS proxy: answering");
        }
    }

    /// Asks the node's DNS servers in turn and relays the first answer.
    async fn forward(&self) {
        let servers = match self.inputs.dns.servers().await {
            Ok(servers) => servers,
            Err(error) => {
                warn!(%error, "DNS proxy: nowhere to forward a query");
                return;
            }
        };
        for server in servers {
            match ask_udp(*server, &self.query).await {
                Ok(reply) => return self.send(&reply).await,
                Err(error) => debug!(%server, %error, "DNS proxy: forwarding"),
            }
        }
        warn!(client = %self.client, "DNS proxy: no DNS server answered a forwarded query");
    }
}

/// A successor has bound the same port (`SO_REUSEPORT`), and the kernel shares
/// queries between the two sockets until this one is closed. Forwarded queries
/// still in flight answer through it, so it cannot close yet. A connected UDP
/// socket is out of the kernel's choice among the group's sockets, and may still
/// send to any address: connecting it (to the discard port, where nothing is
/// received) hands every new query to the successor at once.
fn leave_port(socket: &UdpSocket) {
    let discard: SocketAddr = match socket.local_addr() {
        Ok(addr) if addr.is_ipv6() => (std::net::Ipv6Addr::LOCALHOST, 9).into(),
        _ => (std::net::Ipv4Addr::LOCALHOST, 9).into(),
    };
    // Blocking is fine: connecting UDP only records the peer.
    let std_socket = socket2::SockRef::from(socket);
    if let Err(error) = std_socket.connect(&discard.into()) {
        warn!(%error, "DNS proxy: leaving the port to the successor");
    }
}

/// The reply to one query over UDP from `client` (a pod of this node).
pub fn answer(inputs: &Inputs, client: IpAddr, query: &[u8]) -> Reply {
    // Only this node's pods are captured here: anyone else reaching the port (it is
    // on the node's address) is not served, so it is no open resolver.
    let Some(pod) = inputs.state.local_workload_by_ip(client) else {
        return Reply::Unknown;
    };
    answer_pod(inputs, &pod, query, Transport::Udp)
}

/// The reply to one query from `pod` that came over `transport`.
pub fn answer_pod(inputs: &Inputs, pod: &Workload, query: &[u8], transport: Transport) -> Reply {
    let packet = match Packet::parse(query) {
        Ok(packet) => packet,
        Err(error) => return Reply::Drop(format!("not a DNS message: {error}")),
    };
    if packet.has_flags(PacketFlag::RESPONSE) {
        return Reply::Drop("a response, not a query".into());
    }
    if packet.opcode() != OPCODE::StandardQuery {
        return Reply::Forward;
    }
    let [question] = packet.questions.as_slice() else {
        return Reply::Forward;
    };
    let family = match question.qtype {
        QTYPE::TYPE(TYPE::A) => Family::V4,
        QTYPE::TYPE(TYPE::AAAA) => Family::V6,
        _ => return Reply::Forward,
    };
    if !matches!(question.qclass, QCLASS::CLASS(CLASS::IN)) {
        return Reply::Forward;
    }
    // EDNS beyond version 0 is the servers' to answer (with BADVERS, or in kind).
    if edns::version(query).is_some_and(|version| version != 0) {
        return Reply::Forward;
    }
    let name = question.qname.to_string();
    // The names the pod's namespace sees (a Service's `exportTo`).
    let Some(service) = inputs.state.service_by_dns_name(&name, &pod.namespace) else {
        return Reply::Forward;
    };
    // A ServiceEntry host without addresses is resolved by DNS, as the pod asked.
    if service.vips.is_empty() {
        return Reply::Forward;
    }
    let mut reply = Packet::new_reply(packet.id());
    reply.set_flags(PacketFlag::AUTHORITATIVE_ANSWER | PacketFlag::RECURSION_AVAILABLE);
    if packet.has_flags(PacketFlag::RECURSION_DESIRED) {
        reply.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    *reply.rcode_mut() = RCODE::NoError;
    reply.questions.push(question.clone());
    // A query with EDNS gets it back (RFC 6891), offering the size taken here.
    if packet.opt().is_some() {
        *reply.opt_mut() = Some(OPT {
            opt_codes: Vec::new(),
            udp_packet_size: EDNS_SIZE,
            version: 0,
        });
    }
    // Addresses the agent allocated lead nowhere but here: an IPv6 one only
    // while this ztunnel takes IPv6 captures (else the pod would dial an
    // address no one answers; without it, it asks for the IPv4 one). The
    // agent publishes one only when it captures IPv6.
    let takes_v6 = inputs.config.outbound_addrs.iter().any(SocketAddr::is_ipv6);
    for ip in &service.vips {
        let rdata = match (family, ip.to_canonical()) {
            (Family::V4, IpAddr::V4(v4)) => RData::A(A::from(v4)),
            (Family::V6, IpAddr::V6(_)) if service.vips_allocated && !takes_v6 => continue,
            (Family::V6, IpAddr::V6(v6)) => RData::AAAA(AAAA::from(v6)),
            _ => continue,
        };
        reply.answers.push(ResourceRecord::new(
            question.qname.clone(),
            CLASS::IN,
            TTL,
            rdata,
        ));
    }
    let limit = match transport {
        Transport::Tcp => usize::from(u16::MAX),
        // No larger than offered here either: what passes unfragmented.
        Transport::Udp => packet.opt().map_or(PLAIN_UDP_MESSAGE, |opt| {
            usize::from(opt.udp_packet_size).clamp(PLAIN_UDP_MESSAGE, usize::from(EDNS_SIZE))
        }),
    };
    let built = match reply.build_bytes_vec_compressed() {
        Ok(bytes) if bytes.len() > limit => {
            // No part of an answer: the resolver asks again over TCP for all of it.
            reply.answers.clear();
            reply.set_flags(PacketFlag::TRUNCATION);
            reply.build_bytes_vec_compressed()
        }
        built => built,
    };
    match built {
        Ok(mut bytes) => {
            if edns::dnssec_ok(query) {
                edns::set_dnssec_ok(&mut bytes);
            }
            Reply::Answer(bytes)
        }
        Err(error) => Reply::Drop(format!("building the answer for {name}: {error}")),
    }
}

#[derive(Clone, Copy, Debug)]
enum Family {
    V4,
    V6,
}

/// One query to `server` over UDP, its answer (matched by ID).
async fn ask_udp(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().map_err(std::io::Error::other)?
    } else {
        "[::]:0".parse().map_err(std::io::Error::other)?
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    // As large as a datagram: a pod may offer any EDNS size, and the server's
    // answer is relayed whole.
    let mut buf = vec![0; usize::from(u16::MAX)];
    let id = query.get(..2);
    let deadline = tokio::time::Instant::now() + FORWARD_TIMEOUT;
    loop {
        let len = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        // Another query's late answer is not this one's.
        if len >= 2 && buf.get(..2) == id {
            buf.truncate(len);
            return Ok(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(addr: SocketAddr) -> UdpSocket {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        socket.set_reuse_port(true).unwrap();
        socket.set_nonblocking(true).unwrap();
        socket.bind(&addr.into()).unwrap();
        UdpSocket::from_std(socket.into()).unwrap()
    }

    /// The kernel behaviour [`leave_port`] relies on: once connected, the old
    /// socket gets none of the new datagrams, and can still answer anyone.
    #[tokio::test]
    async fn a_draining_proxy_hands_new_queries_to_its_successor() {
        let old = shared("127.0.53.1:0".parse().unwrap());
        let addr = old.local_addr().unwrap();
        let new = shared(addr);
        leave_port(&old);
        let mut buf = [0; 16];
        for i in 0..64u8 {
            // A new source port each time: the kernel spreads those over the group.
            let client = UdpSocket::bind("127.0.53.2:0").await.unwrap();
            client.send_to(&[i], addr).await.unwrap();
            let (len, from) = tokio::time::timeout(Duration::from_secs(1), new.recv_from(&mut buf))
                .await
                .expect("the successor gets every query")
                .unwrap();
            assert_eq!(&buf[..len], &[i]);
            // The old socket still answers a query it took before.
            old.send_to(b"late", from).await.unwrap();
            let mut answer = [0; 8];
            let (len, _) = client.recv_from(&mut answer).await.unwrap();
            assert_eq!(&answer[..len], b"late");
        }
        assert!(
            old.try_recv_from(&mut buf).is_err(),
            "the draining socket got a new query"
        );
    }

    /// Whatever bytes a pod sends, the proxy answers, forwards or drops
    /// them: never a panic, and an answer it builds is a DNS message, within
    /// the size UDP allows. Seeded mutations of real queries and random
    /// bytes, a bounded number of each.
    #[tokio::test]
    async fn any_bytes_a_pod_sends_are_answered_forwarded_or_dropped() {
        use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
        use simple_dns::{Name, Question};
        use warren_api::config;

        use crate::{
            config::Config,
            metrics::Metrics,
            state::{Resource, Service, State},
        };

        let state = State::new(None, 15008);
        let key = warren_api::key::service("demo", "app");
        let service = config::Service {
            name: "app".into(),
            namespace: "demo".into(),
            hostname: "app.demo.svc.cluster.local".into(),
            vips: ["10.96.0.10", "fd00:96::10"]
                .iter()
                .map(|ip| warren_api::addr::to_bytes(ip.parse().expect("an address")))
                .collect(),
            ports: vec![config::ServicePort {
                port: 80,
                target_port: 80,
                ..Default::default()
            }],
            ..Default::default()
        };
        state.update(|inner| {
            inner.upsert(
                key.clone(),
                Resource::Service(Arc::new(
                    Service::from_proto(&key, service).expect("a service"),
                )),
            );
        });
        let pod = Workload::from_proto(
            "workload/demo/client",
            config::Workload {
                name: "client".into(),
                namespace: "demo".into(),
                service_account: "client".into(),
                addresses: vec![warren_api::addr::to_bytes(
                    "10.244.0.5".parse().expect("an address"),
                )],
                trust_domain: "cluster.local".into(),
                ..Default::default()
            },
            "cluster.local",
        )
        .expect("a workload");
        let config = Arc::new(Config::for_tests("127.0.0.1".parse().expect("an address")));
        let inputs = Inputs::new(config, state, Arc::new(Metrics::new()));

        let query = |qtype: TYPE, edns: bool| {
            let mut packet = Packet::new_query(0x5157);
            packet.set_flags(PacketFlag::RECURSION_DESIRED);
            packet.questions.push(Question::new(
                Name::new_unchecked("app.demo.svc.cluster.local"),
                QTYPE::TYPE(qtype),
                QCLASS::CLASS(CLASS::IN),
                false,
            ));
            if edns {
                *packet.opt_mut() = Some(OPT {
                    opt_codes: Vec::new(),
                    udp_packet_size: 1232,
                    version: 0,
                });
            }
            packet.build_bytes_vec().expect("a query")
        };
        let seeds = [
            query(TYPE::A, false),
            query(TYPE::AAAA, true),
            query(TYPE::MX, true),
        ];
        for seed in &seeds[..2] {
            assert!(
                matches!(
                    answer_pod(&inputs, &pod, seed, Transport::Udp),
                    Reply::Answer(_)
                ),
                "the unmutated query is answered here"
            );
        }

        let mut rng = StdRng::seed_from_u64(0x05ee_dd25);
        let (mut answered, mut forwarded, mut dropped) = (0, 0, 0);
        for round in 0..20_000u32 {
            let mut bytes = seeds[round as usize % seeds.len()].clone();
            match rng.random_range(0..5) {
                // A few bytes changed anywhere.
                0 => {
                    for _ in 0..rng.random_range(1..=4) {
                        let at = rng.random_range(0..bytes.len());
                        bytes[at] = rng.random();
                    }
                }
                // Cut short.
                1 => bytes.truncate(rng.random_range(0..bytes.len())),
                // Trailing bytes.
                2 => bytes.extend((0..rng.random_range(1..64)).map(|_| rng.random::<u8>())),
                // Counts in the header that the rest does not hold.
                3 => {
                    let at = rng.random_range(4..12);
                    bytes[at] = rng.random();
                }
                // Nothing like a query.
                _ => {
                    bytes = (0..rng.random_range(0..600))
                        .map(|_| rng.random::<u8>())
                        .collect();
                }
            }
            let _ = edns::version(&bytes);
            let _ = edns::dnssec_ok(&bytes);
            for transport in [Transport::Udp, Transport::Tcp] {
                match answer_pod(&inputs, &pod, &bytes, transport) {
                    Reply::Answer(answer) => {
                        assert!(
                            Packet::parse(&answer).is_ok(),
                            "an answer that is no DNS message for {bytes:?}"
                        );
                        if matches!(transport, Transport::Udp) {
                            assert!(answer.len() <= usize::from(EDNS_SIZE), "{bytes:?}");
                        }
                        answered += 1;
                    }
                    Reply::Forward => forwarded += 1,
                    Reply::Drop(_) => dropped += 1,
                    Reply::Unknown => unreachable!("only `answer` tells of unknown pods"),
                }
            }
        }
        // The mutations reached every outcome.
        assert!(
            answered > 0 && forwarded > 0 && dropped > 0,
            "answered {answered}, forwarded {forwarded}, dropped {dropped}"
        );
    }
}
