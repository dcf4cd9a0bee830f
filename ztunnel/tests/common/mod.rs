//! Test helpers, so each test reads as a scenario: a PKI (rcgen), a mesh view built
//! from the real protos, ztunnel "nodes" on loopback addresses, pods as echo servers,
//! an in-process config server on a Unix socket, and clients.
#![allow(dead_code)]

pub mod dns;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{mpsc, watch},
};
use warren_api::{
    Identity,
    config::{
        self, Authorization, Certificate, ClientMessage, MeshSettings, Resource, TrustBundle,
        Update, Workload,
        client_message::Message,
        config_distribution_server::{ConfigDistribution, ConfigDistributionServer},
        resource::Kind,
    },
    subscribe::{Handler as _, Refused},
};
use warren_ebpf_common::origin::Origin;
use warren_ztunnel::{Config, Ztunnel, state::State, subscription::Subscription};

pub const TD: &str = "cluster.local";

pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

// ------------------------------------------------------------------------------ PKI

/// A certificate authority that issues SPIFFE workload certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub root_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            root_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `identity`, valid from `not_before` to `not_after`.
    pub fn issue_between(
        &self,
        identity: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Certificate {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(identity.try_into().unwrap())];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Certificate {
            identity: identity.to_owned(),
            chain_pem: vec![cert.pem()],
            private_key_pem: key.serialize_pem(),
            not_before: not_before.unix_timestamp(),
            not_after: not_after.unix_timestamp(),
        }
    }

    pub fn issue(&self, identity: &str) -> Certificate {
        let now = OffsetDateTime::now_utc();
        self.issue_between(
            identity,
            now - time::Duration::hours(1),
            now + time::Duration::hours(24),
        )
    }
}

pub fn spiffe(ns: &str, sa: &str) -> String {
    format!("spiffe://{TD}/ns/{ns}/sa/{sa}")
}

// ------------------------------------------------------------------------ the view

pub fn res(key: impl Into<String>, kind: Kind) -> Resource {
    Resource {
        key: key.into(),
        kind: Some(kind),
    }
}

/// The mesh settings with the outbound policy `REGISTRY_ONLY`: unknown
/// destinations are refused.
pub fn registry_only() -> Resource {
    res(
        warren_api::key::MESH,
        Kind::Mesh(MeshSettings {
            trust_domain: TD.into(),
            outbound_policy: config::OutboundPolicy::RegistryOnly.into(),
            ..Default::default()
        }),
    )
}

/// A pod on `node` (whose address is `node_ip`) at `ip`.
pub fn workload(
    ns: &str,
    name: &str,
    sa: &str,
    ip: IpAddr,
    node: &str,
    node_ip: IpAddr,
) -> Workload {
    Workload {
        uid: format!("{ns}/{name}"),
        name: name.into(),
        namespace: ns.into(),
        service_account: sa.into(),
        node: node.into(),
        addresses: vec![warren_api::addr::to_bytes(ip)],
        node_address: warren_api::addr::to_bytes(node_ip),
        protocol: config::TunnelProtocol::Hbone.into(),
        trust_domain: TD.into(),
        canonical_name: name.into(),
        workload_name: name.into(),
        inbound_mode: config::InboundMode::Permissive.into(),
        ..Default::default()
    }
}

/// The mesh as both test nodes see it (each node is told its own name by flag).
pub struct View {
    pub ca: Ca,
    pub resources: BTreeMap<String, Resource>,
    pub version: u64,
}

impl View {
    pub fn new(ca: Ca) -> View {
        let mut view = View {
            ca,
            resources: BTreeMap::new(),
            version: 0,
        };
        view.put(res(
            warren_api::key::MESH,
            Kind::Mesh(MeshSettings {
                trust_domain: TD.into(),
                ..Default::default()
            }),
        ));
        let roots = view.ca.root_pem.clone();
        view.put(res(
            warren_api::key::TRUST_BUNDLE,
            Kind::TrustBundle(TrustBundle {
                roots_pem: vec![roots],
            }),
        ));
        view
    }

    pub fn put(&mut self, resource: Resource) {
        self.resources.insert(resource.key.clone(), resource);
    }

    /// Adds a workload and a certificate for its identity.
    pub fn add_workload(&mut self, w: Workload) -> String {
        let key = warren_api::key::workload(&w.namespace, &w.name);
        let id: Identity = spiffe(&w.namespace, &w.service_account).parse().unwrap();
        let cert = self.ca.issue(&id.to_string());
        self.put(res(
            warren_api::key::certificate(&id),
            Kind::Certificate(cert),
        ));
        self.put(res(key.clone(), Kind::Workload(w)));
        key
    }

    pub fn workload_mut(&mut self, key: &str) -> &mut Workload {
        match self.resources.get_mut(key).and_then(|r| r.kind.as_mut()) {
            Some(Kind::Workload(w)) => w,
            _ => panic!("no workload {key}"),
        }
    }

    pub fn add_policy(&mut self, policy: Authorization) -> String {
        let key = warren_api::key::authorization(&policy.namespace, &policy.name);
        self.put(res(key.clone(), Kind::Authorization(policy)));
        key
    }

    pub fn snapshot(&mut self) -> Update {
        self.version += 1;
        Update {
            version: self.version,
            snapshot: true,
            upserts: self.resources.values().cloned().collect(),
            ..Update::default()
        }
    }
}

// ---------------------------------------------------------------------- the nodes

/// One ztunnel with its own state, fed directly through the subscription handler.
pub struct Node {
    pub name: String,
    pub ip: IpAddr,
    pub ztunnel: Ztunnel,
    pub state: Arc<State>,
    handler: Mutex<Subscription>,
}

/// Short limits so failure tests end quickly.
pub fn test_config(name: &str, ip: IpAddr, peer_hbone_port: u16) -> Config {
    let mut config = Config::for_tests(ip);
    config.node_name = Some(name.into());
    config.hbone_port = peer_hbone_port;
    config.tls_handshake_timeout = Duration::from_millis(500);
    config.connect_header_timeout = Duration::from_millis(500);
    config.connect_timeout = Duration::from_secs(2);
    config.drain_timeout = Duration::from_millis(500);
    // Below the handshake limit: a peer asking for a certificate never coming is
    // refused, not timed out.
    config.catch_up_wait = Duration::from_millis(200);
    config
}

impl Node {
    pub async fn start(config: Config, state: Arc<State>) -> Node {
        Node::start_with_log(config, state, None).await
    }

    pub async fn start_with_log(
        config: Config,
        state: Arc<State>,
        log: Option<warren_ztunnel::admin::LogControl>,
    ) -> Node {
        let name = config.node_name.clone().unwrap();
        let ip = config.admin_addr.ip();
        let ztunnel = Ztunnel::start(config, Arc::clone(&state), log)
            .await
            .unwrap();
        let handler = Mutex::new(Subscription::new(Arc::clone(&state)));
        Node {
            name,
            ip,
            ztunnel,
            state,
            handler,
        }
    }

    /// A node named `name` on `ip`, reaching peers' HBONE on `peer_hbone_port`.
    pub async fn new(name: &str, ip: IpAddr, peer_hbone_port: u16) -> Node {
        let config = test_config(name, ip, peer_hbone_port);
        let state = State::new(config.node_name.clone(), config.hbone_port);
        Node::start(config, state).await
    }

    pub fn apply(&self, update: Update) -> Vec<Refused> {
        self.handler.lock().unwrap().apply(update)
    }

    pub fn hbone(&self) -> SocketAddr {
        self.ztunnel.addresses.hbone[0]
    }

    /// A connection from `from` to `dst` through this node's outbound path, as if the
    /// capture had redirected it (the kernel's answer is given, not asked).
    pub async fn outbound(&self, from: IpAddr, dst: SocketAddr, cookie: u64) -> TcpStream {
        let listener = TcpListener::bind(SocketAddr::new(self.ip, 0))
            .await
            .unwrap();
        let socket = if from.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        let client = socket
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, peer) = listener.accept().await.unwrap();
        let inputs = Arc::clone(&self.ztunnel.inputs);
        let drain = self.ztunnel_drain_watch();
        tokio::spawn(warren_ztunnel::proxy::outbound::handle(
            inputs,
            accepted,
            peer,
            Origin {
                dst,
                netns_cookie: cookie,
            },
            drain,
        ));
        client
    }

    /// A plaintext connection from `from` to `dst` through this node's inbound
    /// passthrough, as if redirected.
    pub async fn passthrough(&self, from: IpAddr, dst: SocketAddr) -> TcpStream {
        let listener = TcpListener::bind(SocketAddr::new(self.ip, 0))
            .await
            .unwrap();
        let socket = if from.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        let client = socket
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, peer) = listener.accept().await.unwrap();
        let inputs = Arc::clone(&self.ztunnel.inputs);
        let drain = self.ztunnel_drain_watch();
        tokio::spawn(warren_ztunnel::proxy::inbound_passthrough::handle(
            inputs, accepted, peer, dst, drain,
        ));
        client
    }

    fn ztunnel_drain_watch(&self) -> warren_ztunnel::drain::Watch {
        self.ztunnel.drain_watch()
    }

    pub async fn metrics(&self) -> String {
        http_get(self.ztunnel.addresses.metrics, "/metrics").await.1
    }
}

// ---------------------------------------------------------------------- the pods

/// An echo server (a pod) at `ip`; returns its address.
pub async fn echo(ip: IpAddr) -> SocketAddr {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// Sends `payload`, closes the sending half, and reads until the other side closes.
pub async fn round_trip(mut stream: TcpStream, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    tokio::time::timeout(Duration::from_secs(10), async {
        stream.write_all(payload).await?;
        stream.shutdown().await?;
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await?;
        Ok(out)
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "round trip timed out"))?
}

/// Whether the connection was refused: reset or closed with nothing echoed.
pub async fn refused(stream: TcpStream) -> bool {
    match round_trip(stream, b"hello").await {
        Ok(bytes) => bytes.is_empty(),
        Err(e) => e.kind() != std::io::ErrorKind::TimedOut,
    }
}

/// A tiny HTTP/1.1 GET: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path).await
}

/// A tiny HTTP/1.1 request without a body: (status, body).
pub async fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of a metric line containing every one of `parts`, summed.
pub fn metric(text: &str, name: &str, parts: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum::<f64>() as u64
}

/// Polls `f` until it holds or `within` passes.
pub async fn eventually(within: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ------------------------------------------------------------ the config server

/// An in-process `ConfigDistribution` server on a temporary Unix socket: serves a view
/// as a snapshot to each subscriber, pushes deltas, and records ACKs and NACKs.
#[derive(Clone)]
pub struct ConfigServer {
    pub socket: PathBuf,
    /// Removed with the last clone.
    _dir: Arc<tempfile::TempDir>,
    current: Arc<Mutex<Update>>,
    subscribers: Arc<Mutex<Vec<UpdateSender>>>,
    answers: watch::Sender<Vec<Message>>,
}

impl ConfigServer {
    pub async fn start(snapshot: Update) -> ConfigServer {
        let dir = tempfile::Builder::new()
            .prefix("warren-ztunnel-test-")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let server = ConfigServer {
            socket,
            _dir: Arc::new(dir),
            current: Arc::new(Mutex::new(snapshot)),
            subscribers: Arc::default(),
            answers: watch::Sender::new(Vec::new()),
        };
        let service = ConfigDistributionServer::new(server.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        );
        server
    }

    /// Sends a delta to every subscriber (and folds it into what new ones get).
    pub fn push(&self, delta: Update) {
        {
            let mut current = self.current.lock().unwrap();
            current.version = delta.version;
            current.upserts.retain(|r| {
                !delta.removals.contains(&r.key) && !delta.upserts.iter().any(|u| u.key == r.key)
            });
            current.upserts.extend(delta.upserts.iter().cloned());
        }
        for tx in self.subscribers.lock().unwrap().iter() {
            let _ = tx.try_send(Ok(delta.clone()));
        }
    }

    /// Waits for the subscriber's answer to `version`.
    pub async fn answer(&self, version: u64) -> Message {
        let mut rx = self.answers.subscribe();
        let found = tokio::time::timeout(
            Duration::from_secs(5),
            rx.wait_for(|answers| {
                answers.iter().any(|m| {
                    matches!(m, Message::Ack(a) if a.version == version)
                        || matches!(m, Message::Nack(n) if n.version == version)
                })
            }),
        )
        .await
        .expect("no answer in time")
        .unwrap()
        .clone();
        found
            .into_iter()
            .find(|m| {
                matches!(m, Message::Ack(a) if a.version == version)
                    || matches!(m, Message::Nack(n) if n.version == version)
            })
            .unwrap()
    }
}

type UpdateSender = mpsc::Sender<Result<Update, tonic::Status>>;

type UpdateStream = Pin<Box<dyn futures::Stream<Item = Result<Update, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl ConfigDistribution for ConfigServer {
    type SubscribeStream = UpdateStream;

    async fn subscribe(
        &self,
        request: tonic::Request<tonic::Streaming<ClientMessage>>,
    ) -> Result<tonic::Response<Self::SubscribeStream>, tonic::Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let snapshot = self.current.lock().unwrap().clone();
        let _ = tx
            .send(Ok(Update {
                snapshot: true,
                ..snapshot
            }))
            .await;
        self.subscribers.lock().unwrap().push(tx);
        let answers = self.answers.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = incoming.message().await {
                if let Some(m) = message.message {
                    answers.send_modify(|a| a.push(m));
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn status(
        &self,
        _: tonic::Request<config::StatusRequest>,
    ) -> Result<tonic::Response<config::StatusResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("test server"))
    }

    async fn dump(
        &self,
        _: tonic::Request<config::DumpRequest>,
    ) -> Result<tonic::Response<config::DumpResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("test server"))
    }
}

// ------------------------------------------------------------- a two-node mesh

/// Two nodes, a client pod on A and an echo pod on B, both in namespace `demo`.
pub struct TwoNodes {
    pub view: View,
    pub a: Node,
    pub b: Node,
    pub client_ip: IpAddr,
    pub client_key: String,
    pub server: SocketAddr,
    pub server_key: String,
}

/// Claims loopback net `net` for the calling test, panicking if another test of
/// this binary has it: all tests share one process and run in parallel, so two
/// on one net would fail now and then, depending on timing; this fails every
/// time instead. The harness names each test's thread after the test, and
/// `#[tokio::test]` polls the test's own future on that thread.
fn claim_net(net: u8) {
    static OWNERS: Mutex<BTreeMap<u8, String>> = Mutex::new(BTreeMap::new());
    let me = std::thread::current().name().unwrap_or("?").to_owned();
    let mut owners = OWNERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let owner = owners.entry(net).or_insert_with(|| me.clone());
    assert!(
        *owner == me,
        "loopback net 127.{net}.0.0/16 is taken by test {owner}; give {me} a net of its own"
    );
}

/// `net` picks a loopback /16 of its own (127.`net`.0.0) so tests running in parallel
/// never share an address.
pub async fn two_nodes(net: u8) -> TwoNodes {
    two_nodes_configured(net, |_| {}).await
}

/// [`two_nodes`], each node's config changed by `tune` first.
pub async fn two_nodes_configured(net: u8, tune: impl Fn(&mut Config)) -> TwoNodes {
    init();
    claim_net(net);
    let ip = |c: u8, d: u8| IpAddr::from([127, net, c, d]);
    let node = async |name: &str, ip: IpAddr, peer_hbone_port: u16| {
        let mut config = test_config(name, ip, peer_hbone_port);
        tune(&mut config);
        let state = State::new(config.node_name.clone(), config.hbone_port);
        Node::start(config, state).await
    };
    let b = node("node-b", ip(2, 1), 0).await;
    let a = node("node-a", ip(1, 1), b.hbone().port()).await;
    let server = echo(ip(2, 2)).await;
    let mut view = View::new(Ca::new("mesh root"));
    let client_key = view.add_workload(workload(
        "demo",
        "client",
        "client",
        ip(1, 2),
        "node-a",
        ip(1, 1),
    ));
    let server_key = view.add_workload(workload(
        "demo",
        "server",
        "server",
        ip(2, 2),
        "node-b",
        ip(2, 1),
    ));
    let snapshot = view.snapshot();
    assert!(a.apply(snapshot.clone()).is_empty());
    assert!(b.apply(snapshot).is_empty());
    TwoNodes {
        view,
        a,
        b,
        client_ip: ip(1, 2),
        client_key,
        server,
        server_key,
    }
}

impl TwoNodes {
    /// Re-sends the view to both nodes.
    pub fn sync(&mut self) {
        let snapshot = self.view.snapshot();
        assert!(self.a.apply(snapshot.clone()).is_empty());
        assert!(self.b.apply(snapshot).is_empty());
    }

    pub async fn client_to(&self, dst: SocketAddr) -> TcpStream {
        self.a.outbound(self.client_ip, dst, 0).await
    }
}

/// A raw source/target pair of a Match, as the agent would send.
pub fn cidr(ip: &str, prefix_len: u32) -> config::Cidr {
    config::Cidr {
        address: warren_api::addr::to_bytes(ip.parse().unwrap()),
        prefix_len,
    }
}

pub fn exact(s: &str) -> config::StringMatch {
    config::StringMatch {
        kind: Some(config::string_match::Kind::Exact(s.into())),
    }
}

pub fn prefix(s: &str) -> config::StringMatch {
    config::StringMatch {
        kind: Some(config::string_match::Kind::Prefix(s.into())),
    }
}

pub fn presence() -> config::StringMatch {
    config::StringMatch {
        kind: Some(config::string_match::Kind::Presence(true)),
    }
}

/// A policy in `demo` with one rule made of one clause per match list.
pub fn policy(
    name: &str,
    action: config::Action,
    rules: Vec<Vec<Vec<config::Match>>>,
) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: "demo".into(),
        scope: config::Scope::Namespace.into(),
        action: action.into(),
        rules: rules
            .into_iter()
            .map(|clauses| config::Rule {
                clauses: clauses
                    .into_iter()
                    .map(|matches| config::Clause { matches })
                    .collect(),
            })
            .collect(),
        notes: vec![],
    }
}
