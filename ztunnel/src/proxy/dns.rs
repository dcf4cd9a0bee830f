//! The DNS proxy: enrolled pods' DNS queries, captured by the node's eBPF hooks
//! (UDP to port 53), are answered here for the mesh's own names and forwarded for
//! the rest.
//!
//! - A query for the address (A or AAAA) of a Service (`name.ns.svc.<domain>`) or
//!   a ServiceEntry host that the pod's namespace sees is answered from what the
//!   agent published: the service's addresses of the family asked. A name known
//!   here with none of that family gets an empty answer, not a forward: its other
//!   family is what the pod should use.
//! - Anything else goes unchanged to the node's DNS servers (`--dns-server`, else
//!   ztunnel's /etc/resolv.conf), and their answer back.
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
    CLASS, Name, Packet, PacketFlag, QCLASS, QTYPE, RCODE, ResourceRecord, TYPE,
    rdata::{A, AAAA, RData},
};
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

use super::Inputs;
use crate::drain;

/// Seconds an answer from the mesh may be cached: short, so a changed Service
/// address is seen soon.
const TTL: u32 = 30;
/// The largest DNS message over UDP (with EDNS); anything longer is not DNS.
const MAX_MESSAGE: usize = 4096;
/// How long a forwarded query waits for the node's DNS server.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// What to do with one query.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// The answer, built here.
    Answer(Vec<u8>),
    /// Not the mesh's to answer: ask the node's DNS servers.
    Forward,
    /// Not a DNS query: dropped.
    Drop(String),
}

/// Answers queries on `socket` until draining starts.
pub async fn serve(inputs: Arc<Inputs>, socket: UdpSocket, mut drain: drain::Watch) {
    if let Ok(addr) = socket.local_addr() {
        info!(%addr, "DNS proxy ready");
    }
    let socket = Arc::new(socket);
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
        match answer(&inputs, client.ip(), query) {
            Reply::Answer(bytes) => {
                inputs.metrics.dns_query("mesh");
                if let Err(error) = socket.send_to(&bytes, client).await {
                    debug!(%client, %error, "DNS proxy: answering");
                }
            }
            Reply::Forward => {
                inputs.metrics.dns_query("forwarded");
                tokio::spawn(forward(
                    Arc::clone(&inputs),
                    Arc::clone(&socket),
                    query.to_vec(),
                    client,
                ));
            }
            Reply::Drop(why) => {
                inputs.metrics.dns_query("dropped");
                debug!(%client, %why, "DNS proxy: dropped a datagram");
            }
        }
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

/// The reply to one query from `client` (a pod of this node).
pub fn answer(inputs: &Inputs, client: IpAddr, query: &[u8]) -> Reply {
    // Only this node's pods are captured here: anyone else reaching the port (it is
    // on the node's address) is not served, so it is no open resolver.
    let Some(pod) = inputs
        .state
        .workload_by_ip(client)
        .filter(|w| inputs.state.is_local(w))
    else {
        return Reply::Drop(format!("{client} is not a pod of this node"));
    };
    let packet = match Packet::parse(query) {
        Ok(packet) => packet,
        Err(error) => return Reply::Drop(format!("not a DNS message: {error}")),
    };
    if packet.has_flags(PacketFlag::RESPONSE) {
        return Reply::Drop("a response, not a query".into());
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
    let name = question.qname.to_string().to_ascii_lowercase();
    let name = name.trim_end_matches('.');
    // The names the pod's namespace sees (a Service's `exportTo`).
    let Some(service) = inputs.state.service_by_hostname(name, Some(&pod.namespace)) else {
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
    for ip in &service.vips {
        let rdata = match (family, ip.to_canonical()) {
            (Family::V4, IpAddr::V4(v4)) => RData::A(A::from(v4)),
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
    match reply.build_bytes_vec() {
        Ok(bytes) => Reply::Answer(bytes),
        Err(error) => Reply::Drop(format!("building the answer for {name}: {error}")),
    }
}

#[derive(Clone, Copy, Debug)]
enum Family {
    V4,
    V6,
}

/// Asks the node's DNS servers in turn and relays the first answer to `client`.
async fn forward(inputs: Arc<Inputs>, socket: Arc<UdpSocket>, query: Vec<u8>, client: SocketAddr) {
    let servers = match crate::dns::servers(&inputs.config.dns_servers) {
        Ok(servers) => servers,
        Err(error) => {
            warn!(%error, "DNS proxy: nowhere to forward a query");
            return;
        }
    };
    for server in servers {
        match ask(server, &query).await {
            Ok(reply) => {
                if let Err(error) = socket.send_to(&reply, client).await {
                    debug!(%client, %error, "DNS proxy: relaying an answer");
                }
                return;
            }
            Err(error) => debug!(%server, %error, "DNS proxy: forwarding"),
        }
    }
    warn!(%client, "DNS proxy: no DNS server answered a forwarded query");
}

/// One query to `server`, its answer (matched by ID).
async fn ask(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().map_err(std::io::Error::other)?
    } else {
        "[::]:0".parse().map_err(std::io::Error::other)?
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buf = vec![0; MAX_MESSAGE];
    let id = query.get(..2);
    let deadline = tokio::time::Instant::now() + FORWARD_TIMEOUT;
    loop {
        let len = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        // Another query's late answer is not this one's.
        if buf.get(..2) == id {
            buf.truncate(len);
            return Ok(buf);
        }
    }
}

/// A query, as a pod's resolver sends it (for tests and tools).
pub fn query(id: u16, name: &str, kind: TYPE) -> Result<Vec<u8>, String> {
    let name = Name::new(name).map_err(|e| e.to_string())?;
    let mut packet = Packet::new_query(id);
    packet.set_flags(PacketFlag::RECURSION_DESIRED);
    packet.questions.push(simple_dns::Question::new(
        name,
        QTYPE::TYPE(kind),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    packet.build_bytes_vec().map_err(|e| e.to_string())
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
}
