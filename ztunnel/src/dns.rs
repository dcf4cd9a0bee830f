//! Names of endpoints known by name (a ServiceEntry with `resolution: DNS` or
//! `DNS_ROUND_ROBIN`), resolved when a connection picks one.
//!
//! The DNS servers are asked directly (A and AAAA, UDP, TCP when an answer is
//! truncated), without a resolver library: one would cost ztunnel a megabyte of
//! resident memory at idle for what a name lookup needs.
//!
//! Each answer is kept for its TTL (at least a second), so a busy name costs a query
//! per TTL, not one per connection, and a changed record takes effect when the old
//! answer expires; an expired answer is refreshed in the background while it still
//! serves, so no connection waits on DNS once a name has resolved. The resolver is
//! built on first use: a node whose ServiceEntries name nothing
//! never reads resolv.conf nor holds a cache, and a resolver that could not be built
//! (resolv.conf missing) is tried again by the next connection.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use simple_dns::{
    CLASS, Name, Packet, PacketFlag, QCLASS, QTYPE, Question, RCODE, TYPE, rdata::RData,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
    sync::OnceCell,
};
use tracing::{debug, warn};

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("no DNS server: {0}")]
    Config(String),
    #[error("{host} does not exist (NXDOMAIN from {server})")]
    NoSuchName { host: String, server: SocketAddr },
    #[error("cannot resolve {host}: {reason}")]
    Failed { host: String, reason: String },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("resolving {host} took longer than {seconds:.1} s")]
    Timeout { host: String, seconds: f64 },
    /// A lookup that failed a moment ago, not asked again yet.
    #[error("{reason} (a second ago; asked again shortly)")]
    Recent { reason: String },
}

impl DnsError {
    /// The servers answered that the name has no address (NXDOMAIN, or no
    /// records), as opposed to failing to answer.
    fn no_such_name(&self) -> bool {
        matches!(
            self,
            DnsError::NoSuchName { .. } | DnsError::NoAddress { .. }
        )
    }
}

/// Shortest time an answer is kept: a TTL of 0 would cost a query per
/// connection (Envoy's `dns_min_refresh_rate` has the same purpose).
const MIN_TTL: Duration = Duration::from_secs(1);
/// After a refresh failed, how long the last good answer serves before the
/// next refresh.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long an expired answer no connection asked for is kept: a name whose
/// ServiceEntry is gone is never asked for again, and is forgotten then.
/// (Names in use stay: each use past expiry refreshes them.)
pub const FORGET_AFTER: Duration = Duration::from_secs(300);
/// How long past its expiry an answer still serves at once while a refresh
/// runs in the background; later, a connection waits for the refresh (and
/// gets the old answer only if that fails): a name idle for minutes is not
/// sent to an address its owner may since have given up.
const STALE_GRACE: Duration = Duration::from_secs(30);
/// Longest time an answer is kept: a record's TTL may say decades.
const MAX_TTL: u32 = 24 * 60 * 60;

/// Resolves endpoint names with the configured servers, or the system's.
/// Cheap to clone: clones share the answers.
#[derive(Clone)]
pub struct Resolver(Arc<Inner>);

struct Inner {
    /// `--dns-server`; empty: the nameservers of /etc/resolv.conf, read on
    /// first use.
    configured: Vec<SocketAddr>,
    servers: OnceCell<Vec<SocketAddr>>,
    known: Mutex<HashMap<String, Known>>,
    /// Per name being looked up for connections that wait: the first holds
    /// it while asking, the others then take its answer from `known`.
    asking: Mutex<HashMap<String, std::sync::Weak<tokio::sync::Mutex<()>>>>,
}

/// The last good answer for a name, or the last failure (for
/// [`RETRY_AFTER`], so that connections to a name that does not resolve
/// do not each ask the servers again).
struct Known {
    /// The addresses, or why the lookup failed.
    answer: Result<Vec<IpAddr>, String>,
    valid_until: Instant,
    /// A refresh runs in the background.
    refreshing: bool,
}

impl Resolver {
    pub fn new(servers: Vec<SocketAddr>) -> Resolver {
        Resolver(Arc::new(Inner {
            configured: servers,
            servers: OnceCell::new(),
            known: Mutex::default(),
            asking: Mutex::default(),
        }))
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        // Nothing under this lock panics; a poisoned map is still sound.
        self.0.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every address `host` resolves to, in the answer's order, and until
    /// when that holds. A name resolved before is answered at once: while
    /// its answer holds, from it; once expired (up to [`STALE_GRACE`]),
    /// still from it while one refresh runs in the background, as Envoy
    /// keeps a DNS cluster's hosts. When the DNS servers fail or stall, the
    /// last good answer stands in (a warning says so), until a name that no
    /// longer exists (NXDOMAIN, no records) is dropped. A name never
    /// resolved, or expired for longer, waits within `limit`; a lookup that
    /// failed is not repeated for [`RETRY_AFTER`].
    pub async fn resolve(
        &self,
        host: &str,
        limit: Duration,
    ) -> Result<(Vec<IpAddr>, Instant), DnsError> {
        if let Some(answer) = self.answer_known(host, limit) {
            return answer;
        }
        // Connections to a name not known yet wait for one lookup together:
        // a burst of them asks the servers once, not once each.
        let turn = self.turn(host);
        let Ok(_turn) = tokio::time::timeout(limit, turn.lock()).await else {
            return Err(DnsError::Timeout {
                host: host.to_owned(),
                seconds: limit.as_secs_f64(),
            });
        };
        if let Some(answer) = self.answer_known(host, limit) {
            return answer;
        }
        self.refresh(host, limit).await
    }

    /// The lock connections waiting on a lookup of `host` take turns on.
    fn turn(&self, host: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut asking = self.0.asking.lock().unwrap_or_else(|p| p.into_inner());
        // Names nobody waits on any more.
        asking.retain(|_, turn| turn.strong_count() > 0);
        if let Some(turn) = asking.get(host).and_then(std::sync::Weak::upgrade) {
            return turn;
        }
        let turn = Arc::new(tokio::sync::Mutex::new(()));
        asking.insert(host.to_owned(), Arc::downgrade(&turn));
        turn
    }

    /// What is known of `host` that answers a connection at once: an
    /// unexpired answer or failure, or an answer expired within
    /// [`STALE_GRACE`] (then refreshed in the background); `None` when the
    /// connection must wait for a lookup.
    fn answer_known(
        &self,
        host: &str,
        limit: Duration,
    ) -> Option<Result<(Vec<IpAddr>, Instant), DnsError>> {
        let now = Instant::now();
        let mut known = self.known();
        let known = known.get_mut(host)?;
        if known.valid_until > now {
            return Some(match &known.answer {
                Ok(addresses) => Ok((addresses.clone(), known.valid_until)),
                Err(reason) => Err(DnsError::Recent {
                    reason: reason.clone(),
                }),
            });
        }
        let Ok(addresses) = &known.answer else {
            return None;
        };
        if known.valid_until + STALE_GRACE <= now {
            return None;
        }
        if !known.refreshing {
            known.refreshing = true;
            let (this, name) = (self.clone(), host.to_owned());
            tokio::spawn(async move {
                // What it found is in `known`; failures are logged there.
                let _ = this.refresh(&name, limit).await;
            });
        }
        Some(Ok((addresses.clone(), now + RETRY_AFTER)))
    }

    /// As [`Resolver::resolve`], the addresses alone.
    pub async fn lookup(&self, host: &str, limit: Duration) -> Result<Vec<IpAddr>, DnsError> {
        self.resolve(host, limit)
            .await
            .map(|(addresses, _)| addresses)
    }

    /// Asks the servers for `host` within `limit` and keeps what they say.
    async fn refresh(
        &self,
        host: &str,
        limit: Duration,
    ) -> Result<(Vec<IpAddr>, Instant), DnsError> {
        let answer = tokio::time::timeout(limit, self.lookup_until(host))
            .await
            .unwrap_or_else(|_| {
                Err(DnsError::Timeout {
                    host: host.to_owned(),
                    seconds: limit.as_secs_f64(),
                })
            });
        let now = Instant::now();
        let mut known = self.known();
        // Only a query can add a name, so forgetting here bounds the map.
        forget_unused(&mut known, now);
        match answer {
            Ok((addresses, until)) => {
                let valid_until = until.max(now + MIN_TTL);
                known.insert(
                    host.to_owned(),
                    Known {
                        answer: Ok(addresses.clone()),
                        valid_until,
                        refreshing: false,
                    },
                );
                Ok((addresses, valid_until))
            }
            Err(error) => match known.get_mut(host) {
                Some(Known {
                    answer: Ok(addresses),
                    valid_until,
                    refreshing,
                }) if !error.no_such_name() => {
                    warn!(%host, %error, ?addresses, "DNS failed; the name's last answer stands in");
                    *valid_until = now + RETRY_AFTER;
                    *refreshing = false;
                    Ok((addresses.clone(), *valid_until))
                }
                // A name that no longer exists is dropped; one that never
                // resolved stays unresolved for a moment.
                _ => {
                    known.insert(
                        host.to_owned(),
                        Known {
                            answer: Err(error.to_string()),
                            valid_until: now + RETRY_AFTER,
                            refreshing: false,
                        },
                    );
                    Err(error)
                }
            },
        }
    }

    /// The servers asked: `--dns-server`, else resolv.conf's, read once.
    pub async fn servers(&self) -> Result<&[SocketAddr], DnsError> {
        let servers = self
            .0
            .servers
            .get_or_try_init(|| async { servers(&self.0.configured) })
            .await?;
        Ok(servers)
    }

    /// One lookup (A and AAAA together), with when its answer expires (its
    /// shortest TTL).
    async fn lookup_until(&self, host: &str) -> Result<(Vec<IpAddr>, Instant), DnsError> {
        let servers = self.servers().await?;
        let (v4, v6) = tokio::join!(
            ask_servers(servers, host, TYPE::A),
            ask_servers(servers, host, TYPE::AAAA)
        );
        let mut addresses = Vec::new();
        let mut ttl: Option<u32> = None;
        let mut failure = None;
        for answer in [v4, v6] {
            match answer {
                Ok(Answer::Records(records)) => {
                    for (ip, record_ttl) in records {
                        addresses.push(ip);
                        ttl = Some(ttl.map_or(record_ttl, |t| t.min(record_ttl)));
                    }
                }
                Ok(Answer::NoSuchName(server)) => {
                    failure.get_or_insert(DnsError::NoSuchName {
                        host: host.to_owned(),
                        server,
                    });
                }
                Err(reason) => {
                    failure = Some(DnsError::Failed {
                        host: host.to_owned(),
                        reason,
                    });
                }
            }
        }
        if addresses.is_empty() {
            return Err(failure.unwrap_or_else(|| DnsError::NoAddress {
                host: host.to_owned(),
            }));
        }
        // A TTL with the top bit set counts as 0 (RFC 2181, 8).
        let ttl = match ttl.unwrap_or(0) {
            t if t > i32::MAX as u32 => 0,
            t => t.min(MAX_TTL),
        };
        let ttl = Duration::from_secs(u64::from(ttl));
        Ok((addresses, Instant::now() + ttl))
    }

    /// The address a connection to `host` goes to, of the family the client
    /// dialled (`v4`) when the name has one: the answer's first
    /// (`DNS_ROUND_ROBIN`: the server rotates its answers), or any of them
    /// (`DNS`: every address is an endpoint; connections spread at random),
    /// within `limit` (see [`Resolver::resolve`]).
    pub async fn pick(
        &self,
        host: &str,
        first: bool,
        v4: bool,
        limit: Duration,
    ) -> Result<IpAddr, DnsError> {
        let addresses = preferring(self.lookup(host, limit).await?, v4);
        let index = if first {
            0
        } else {
            rand::random_range(0..addresses.len())
        };
        // `lookup` never returns an empty list.
        addresses
            .get(index)
            .copied()
            .ok_or_else(|| DnsError::NoAddress {
                host: host.to_owned(),
            })
    }
}

/// Drops the answers that expired more than [`FORGET_AFTER`] ago, unless
/// being refreshed.
fn forget_unused(known: &mut HashMap<String, Known>, now: Instant) {
    known.retain(|_, k| k.refreshing || k.remembered_at(now));
}

impl Known {
    /// Whether the answer is still kept at `now`: unexpired, or expired
    /// less than [`FORGET_AFTER`] ago.
    fn remembered_at(&self, now: Instant) -> bool {
        self.valid_until + FORGET_AFTER > now
    }
}

/// The addresses of one family (IPv4 with `v4`) when there are any, else
/// all: a name with both is reached in the client's own address family
/// (as Istio's ztunnel does), or IPv4 first where no client decides.
pub fn preferring(addresses: Vec<IpAddr>, v4: bool) -> Vec<IpAddr> {
    if addresses.iter().any(|ip| ip.is_ipv4() == v4) {
        addresses
            .into_iter()
            .filter(|ip| ip.is_ipv4() == v4)
            .collect()
    } else {
        addresses
    }
}

/// The servers to ask: `configured`, else the nameservers of
/// /etc/resolv.conf (port 53).
fn servers(configured: &[SocketAddr]) -> Result<Vec<SocketAddr>, DnsError> {
    if !configured.is_empty() {
        return Ok(configured.to_vec());
    }
    let text = std::fs::read_to_string("/etc/resolv.conf")
        .map_err(|e| DnsError::Config(format!("reading /etc/resolv.conf: {e}")))?;
    let found = nameservers(&text);
    if found.is_empty() {
        return Err(DnsError::Config(
            "/etc/resolv.conf names no nameserver".into(),
        ));
    }
    Ok(found)
}

/// The `nameserver` lines of a resolv.conf (an IPv6 address with a zone is
/// left out: a socket address cannot carry its name).
fn nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let ip: IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

/// What a server said of a name.
enum Answer {
    /// Addresses with their TTLs (none: the name has no such records).
    Records(Vec<(IpAddr, u32)>),
    /// NXDOMAIN, from this server.
    NoSuchName(SocketAddr),
}

/// How long one server has to answer before the next is asked (the caller's
/// limit bounds the whole lookup).
const PER_SERVER: Duration = Duration::from_secs(2);

/// Asks each server in turn, twice round, until one answers.
async fn ask_servers(servers: &[SocketAddr], host: &str, kind: TYPE) -> Result<Answer, String> {
    let mut last = String::from("no server");
    for server in servers.iter().chain(servers) {
        match tokio::time::timeout(PER_SERVER, ask(*server, host, kind)).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(error)) => last = format!("{server}: {error}"),
            Err(_) => last = format!("{server}: no answer within {PER_SERVER:?}"),
        }
        debug!(%host, ?kind, %last, "DNS server failed; asking the next");
    }
    Err(last)
}

/// One question to one server over UDP (a connected socket: only that
/// server's datagrams arrive), again over TCP when the answer is truncated.
async fn ask(server: SocketAddr, host: &str, kind: TYPE) -> Result<Answer, String> {
    let id: u16 = rand::random();
    let query = query(id, host, kind)?;
    let local: IpAddr = if server.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = UdpSocket::bind(SocketAddr::new(local, 0))
        .await
        .map_err(|e| e.to_string())?;
    socket.connect(server).await.map_err(|e| e.to_string())?;
    socket.send(&query).await.map_err(|e| e.to_string())?;
    let mut buffer = vec![0u8; 4096];
    loop {
        let len = socket.recv(&mut buffer).await.map_err(|e| e.to_string())?;
        let Some(bytes) = buffer.get(..len) else {
            continue;
        };
        // Another query's answer (or garbage) is not this one's: wait on.
        let Ok(reply) = Packet::parse(bytes) else {
            continue;
        };
        if reply.id() != id {
            continue;
        }
        if reply.has_flags(PacketFlag::TRUNCATION) {
            return ask_tcp(server, id, &query, host).await;
        }
        return read_answer(&reply, server);
    }
}

/// The same question over TCP.
async fn ask_tcp(server: SocketAddr, id: u16, query: &[u8], host: &str) -> Result<Answer, String> {
    let bytes = exchange_tcp(server, query)
        .await
        .map_err(|e| format!("asking about {host} over TCP: {e}"))?;
    let reply = Packet::parse(&bytes).map_err(|e| format!("a malformed answer: {e}"))?;
    if reply.id() != id {
        return Err("an answer to another question".into());
    }
    read_answer(&reply, server)
}

/// One query to `server` over a TCP connection of its own, and its answer (the
/// first message back; one with another ID is an error).
pub(crate) async fn exchange_tcp(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(server).await?;
    stream.set_nodelay(true)?;
    write_message(&mut stream, query).await?;
    let reply = read_message(&mut stream).await?.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed without an answer",
        )
    })?;
    if reply.get(..2) != query.get(..2) {
        return Err(std::io::Error::other("an answer to another query"));
    }
    Ok(reply)
}

/// Writes one DNS message to a TCP stream: two length bytes before it.
pub(crate) async fn write_message(
    stream: &mut (impl AsyncWrite + Unpin),
    message: &[u8],
) -> std::io::Result<()> {
    let len = u16::try_from(message.len()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("a DNS message of {} bytes is too long", message.len()),
        )
    })?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    // One write: a message split over two segments costs the peer a wake-up.
    stream.write_all(&framed).await
}

/// Reads one DNS message from a TCP stream; `None` when the peer closed
/// between messages (a close inside one is an error).
pub(crate) async fn read_message(
    stream: &mut (impl AsyncRead + Unpin),
) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len[..1]).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    stream.read_exact(&mut len[1..]).await?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut message).await?;
    Ok(Some(message))
}

/// A recursive query for `host`'s records of `kind`.
fn query(id: u16, host: &str, kind: TYPE) -> Result<Vec<u8>, String> {
    // Asked in full, not under the node's search domains: a ServiceEntry
    // names hosts in full.
    let name = Name::new(host.trim_end_matches('.'))
        .map_err(|e| format!("{host:?} is not a DNS name: {e}"))?;
    let mut packet = Packet::new_query(id);
    packet.set_flags(PacketFlag::RECURSION_DESIRED);
    packet.questions.push(Question::new(
        name,
        QTYPE::TYPE(kind),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    packet.build_bytes_vec().map_err(|e| e.to_string())
}

/// The addresses in an answer (after whatever CNAMEs the server followed).
fn read_answer(reply: &Packet<'_>, server: SocketAddr) -> Result<Answer, String> {
    match reply.rcode() {
        RCODE::NoError => {}
        RCODE::NameError => return Ok(Answer::NoSuchName(server)),
        other => return Err(format!("the server answered {other:?}")),
    }
    let records = reply
        .answers
        .iter()
        .filter_map(|record| match &record.rdata {
            RData::A(a) => Some((IpAddr::from(Ipv4Addr::from(a.address)), record.ttl)),
            RData::AAAA(aaaa) => Some((
                IpAddr::from(Ipv6Addr::from(aaaa.address)).to_canonical(),
                record.ttl,
            )),
            _ => None,
        })
        .collect();
    Ok(Answer::Records(records))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_from_resolv_conf() {
        let text = "# local\nsearch svc.cluster.local\nnameserver 10.96.0.10\n\
                    nameserver fd00::53\nnameserver fe80::1%eth0\noptions ndots:5\n";
        assert_eq!(
            nameservers(text),
            [
                "10.96.0.10:53".parse::<SocketAddr>().unwrap(),
                "[fd00::53]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn a_query_asks_recursively_in_full() {
        let bytes = query(7, "api.example.com.", TYPE::AAAA).expect("a query");
        let packet = Packet::parse(&bytes).expect("parses");
        assert_eq!(packet.id(), 7);
        assert!(packet.has_flags(PacketFlag::RECURSION_DESIRED));
        let question = packet.questions.first().expect("a question");
        assert_eq!(question.qname.to_string(), "api.example.com");
        assert_eq!(question.qtype, QTYPE::TYPE(TYPE::AAAA));
        // A label longer than DNS allows.
        assert!(query(1, &format!("{}.example", "x".repeat(64)), TYPE::A).is_err());
    }

    /// A server on `127.0.0.1` that answers every UDP question first with
    /// garbage, then NXDOMAIN under another question's id, then truncated; and over
    /// TCP, in full, with 192.0.2.7 (TTL 30) for `api.example` (no AAAA),
    /// NXDOMAIN for any other name.
    async fn truncating_server() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&asked);
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let udp = UdpSocket::bind(addr).await.unwrap();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            while let Ok((len, from)) = udp.recv_from(&mut buffer).await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let id = Packet::parse(&buffer[..len]).unwrap().id();
                let mut stray = Packet::new_reply(id.wrapping_add(1));
                *stray.rcode_mut() = RCODE::NameError;
                let mut truncated = Packet::new_reply(id);
                truncated.set_flags(PacketFlag::TRUNCATION);
                for bytes in [
                    b"not dns".to_vec(),
                    stray.build_bytes_vec().unwrap(),
                    truncated.build_bytes_vec().unwrap(),
                ] {
                    udp.send_to(&bytes, from).await.unwrap();
                }
            }
        });
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                let mut len = [0u8; 2];
                stream.read_exact(&mut len).await.unwrap();
                let mut bytes = vec![0u8; usize::from(u16::from_be_bytes(len))];
                stream.read_exact(&mut bytes).await.unwrap();
                let question = Packet::parse(&bytes).unwrap();
                let name = question.questions[0].qname.clone();
                let mut reply = Packet::new_reply(question.id());
                let wants_a = question.questions[0].qtype == QTYPE::TYPE(TYPE::A);
                if name.to_string() != "api.example" {
                    *reply.rcode_mut() = RCODE::NameError;
                } else if wants_a {
                    reply.answers.push(simple_dns::ResourceRecord::new(
                        name,
                        CLASS::IN,
                        30,
                        RData::A(Ipv4Addr::new(192, 0, 2, 7).into()),
                    ));
                }
                let reply = reply.build_bytes_vec().unwrap();
                let len = u16::try_from(reply.len()).unwrap().to_be_bytes();
                stream.write_all(&len).await.unwrap();
                stream.write_all(&reply).await.unwrap();
            }
        });
        (addr, asked)
    }

    #[tokio::test]
    async fn a_truncated_answer_is_asked_again_over_tcp() {
        let (server, _) = truncating_server().await;
        let answer = ask(server, "api.example", TYPE::A).await.expect("answered");
        let Answer::Records(records) = answer else {
            panic!("api.example: NXDOMAIN");
        };
        assert_eq!(records, [(IpAddr::from([192, 0, 2, 7]), 30)]);
        let answer = ask(server, "gone.example", TYPE::A)
            .await
            .expect("answered");
        assert!(matches!(answer, Answer::NoSuchName(from) if from == server));
    }

    #[tokio::test]
    async fn failures_are_remembered_and_long_expired_answers_wait_for_a_fresh_one() {
        use std::sync::atomic::Ordering::SeqCst;
        let (server, asked) = truncating_server().await;
        let resolver = Resolver::new(vec![server]);
        let limit = Duration::from_secs(5);
        // NXDOMAIN: asked once (A and AAAA), then remembered for a moment.
        let error = resolver.resolve("gone.example", limit).await.unwrap_err();
        assert!(matches!(error, DnsError::NoSuchName { .. }), "{error}");
        let error = resolver.resolve("gone.example", limit).await.unwrap_err();
        assert!(matches!(error, DnsError::Recent { .. }), "{error}");
        assert_eq!(asked.load(SeqCst), 2);

        let old = IpAddr::from([192, 0, 2, 99]);
        let fresh = IpAddr::from([192, 0, 2, 7]);
        let expired_since = |ago: u64| {
            let valid_until = Instant::now()
                .checked_sub(Duration::from_secs(ago))
                .expect("the clock started a minute ago");
            resolver.known().insert(
                "api.example".into(),
                Known {
                    answer: Ok(vec![old]),
                    valid_until,
                    refreshing: false,
                },
            );
        };
        // Just expired: the old answer at once, refreshed in the background.
        expired_since(5);
        assert_eq!(resolver.lookup("api.example", limit).await.unwrap(), [old]);
        // Expired past the grace: the connection waits for the new answer.
        expired_since(60);
        assert_eq!(
            resolver.lookup("api.example", limit).await.unwrap(),
            [fresh]
        );
    }

    #[tokio::test]
    async fn connections_to_a_new_name_wait_for_one_lookup_together() {
        use std::sync::atomic::Ordering::SeqCst;
        let (server, asked) = truncating_server().await;
        let resolver = Resolver::new(vec![server]);
        let limit = Duration::from_secs(5);
        let answers =
            futures::future::join_all((0..10).map(|_| resolver.lookup("api.example", limit))).await;
        for answer in answers {
            assert_eq!(answer.expect("resolved"), [IpAddr::from([192, 0, 2, 7])]);
        }
        // One A and one AAAA question, not ten of each.
        assert_eq!(asked.load(SeqCst), 2);
        let failures =
            futures::future::join_all((0..10).map(|_| resolver.lookup("gone.example", limit)))
                .await;
        assert!(failures.iter().all(Result::is_err));
        assert_eq!(asked.load(SeqCst), 4);
        // Nobody waits any more: the names' locks are gone.
        let _other = resolver.turn("other.example");
        assert_eq!(
            resolver.0.asking.lock().unwrap().len(),
            1,
            "only the name just asked for"
        );
    }

    #[test]
    fn answers_unused_long_past_expiry_are_forgotten() {
        let now = Instant::now();
        let known = |valid_until, refreshing| Known {
            answer: Ok(vec![IpAddr::from([192, 0, 2, 1])]),
            valid_until,
            refreshing,
        };
        let mut map = HashMap::from([
            (
                "fresh".to_owned(),
                known(now + Duration::from_secs(30), false),
            ),
            ("expired".to_owned(), known(now, false)),
            ("gone".to_owned(), known(now, false)),
            ("asked".to_owned(), known(now, true)),
        ]);
        // Just expired: kept, and served while refreshed.
        forget_unused(&mut map, now + Duration::from_secs(1));
        assert_eq!(map.len(), 4);
        let later = now + FORGET_AFTER + Duration::from_secs(1);
        assert!(map["fresh"].remembered_at(later));
        assert!(!map["gone"].remembered_at(later));
        forget_unused(&mut map, later);
        let mut kept: Vec<&str> = map.keys().map(String::as_str).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["asked", "fresh"]);
    }

    #[test]
    fn the_dialled_family_first_else_any() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(preferring(vec![v6, v4], true), [v4]);
        assert_eq!(preferring(vec![v6, v4], false), [v6]);
        assert_eq!(preferring(vec![v6], true), [v6]);
        assert_eq!(preferring(vec![v4], false), [v4]);
    }
}
