//! Starting ztunnel: bind every listener, spawn the tasks, and stop them with a drain.
//! The binary and the tests start it the same way; only the config and where state
//! comes from differ.
//!
//! A ztunnel either starts on free ports ([`Ztunnel::start`]) or takes over from one
//! already serving the node ([`Ztunnel::take_over`], an upgrade or restart): the proxy
//! listeners are shared (`SO_REUSEPORT`) so that the new process accepts beside the old
//! one before the old one stops; see [`crate::handover`].

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tracing::{info, warn};

use crate::{
    admin::{self, LogControl, Quit, QuitReason},
    config::Config,
    drain,
    handover::{self, ServerInfo},
    http_endpoint,
    metrics::Metrics,
    proxy::{self, Inputs},
    readiness,
    state::State,
};

/// Where each listener ended up (port 0 in the config picks a free port).
#[derive(Clone, Debug)]
pub struct Addresses {
    pub outbound: Vec<SocketAddr>,
    pub dns_proxy: Vec<SocketAddr>,
    pub inbound_plaintext: Vec<SocketAddr>,
    pub hbone: Vec<SocketAddr>,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub readiness: SocketAddr,
}

/// A running ztunnel.
pub struct Ztunnel {
    pub addresses: Addresses,
    pub inputs: Arc<Inputs>,
    trigger: drain::Trigger,
    quit: Arc<Quit>,
}

/// The listeners connections arrive on, bound so that a successor can bind them too.
struct ProxyListeners {
    outbound: Vec<TcpListener>,
    dns_proxy: Vec<UdpSocket>,
    /// On each DNS proxy socket's address: DNS over TCP.
    dns_proxy_tcp: Vec<TcpListener>,
    inbound_plaintext: Vec<TcpListener>,
    hbone: Vec<TcpListener>,
}

/// The operator's listeners (admin, metrics, readiness): bound by one process at a
/// time, so a request reaches the ztunnel it was meant for.
struct EndpointListeners {
    admin: TcpListener,
    metrics: TcpListener,
    readiness: TcpListener,
}

/// How often a successor tries the operator's ports while its predecessor lets go of
/// them, after how long it says it is still waiting, and when it gives up.
const ENDPOINT_RETRY: Duration = Duration::from_millis(50);
const ENDPOINT_PATIENCE: Duration = Duration::from_secs(5);
const ENDPOINT_GIVE_UP: Duration = Duration::from_secs(30);

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener to {addr}"))
}

/// Whether an IPv6 `addr` of the list `all` must take IPv6 alone: when an
/// IPv4 address of the list shares its port, as the two would otherwise
/// share IPv4 traffic between them. A lone `[::]` keeps taking both.
fn v6_only(addr: SocketAddr, all: &[SocketAddr]) -> bool {
    addr.is_ipv6() && all.iter().any(|a| a.is_ipv4() && a.port() == addr.port())
}

/// Binds with `SO_REUSEPORT`: a later ztunnel (the same user) can bind the same
/// address and accept beside this one until this one drains.
fn bind_shared(addr: SocketAddr, v6_only: bool, what: &str) -> anyhow::Result<TcpListener> {
    let context = || format!("binding the {what} listener to {addr}");
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .with_context(context)?;
    socket.set_reuseaddr(true).with_context(context)?;
    socket.set_reuseport(true).with_context(context)?;
    if v6_only {
        socket2::SockRef::from(&socket)
            .set_only_v6(true)
            .with_context(context)?;
    }
    socket.bind(addr).with_context(context)?;
    // tokio's own default backlog for `TcpListener::bind`.
    socket.listen(1024).with_context(context)
}

/// A UDP socket bound as [`bind_shared`] binds listeners: a successor's socket on the
/// same address gets the datagrams once this one closes.
fn bind_shared_udp(addr: SocketAddr, v6_only: bool, what: &str) -> anyhow::Result<UdpSocket> {
    let context = || format!("binding the {what} socket to {addr}");
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
        .with_context(context)?;
    // SO_REUSEPORT alone: a successor of the same user may bind beside this one;
    // SO_REUSEADDR on UDP would let any process bind the address and read pods'
    // queries.
    socket.set_reuse_port(true).with_context(context)?;
    if v6_only {
        socket.set_only_v6(true).with_context(context)?;
    }
    socket.set_nonblocking(true).with_context(context)?;
    socket.bind(&addr.into()).with_context(context)?;
    UdpSocket::from_std(socket.into()).with_context(context)
}

/// How often [`bind_dns`] picks another port when the one the kernel gave for UDP
/// is taken for TCP.
const DNS_PORT_PICKS: usize = 16;

/// The DNS proxy's UDP socket and its TCP listener on the same port. With port 0 the
/// kernel picks the UDP port, and that port may already be someone's TCP port: pick
/// again rather than fail.
fn bind_dns(addr: SocketAddr, v6_only: bool) -> anyhow::Result<(UdpSocket, TcpListener)> {
    let mut picks = 0;
    loop {
        let udp = bind_shared_udp(addr, v6_only, "DNS proxy")?;
        let bound = udp
            .local_addr()
            .context("reading the DNS proxy's address")?;
        match bind_shared(bound, v6_only, "DNS proxy (TCP)") {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(error) if addr.port() == 0 && picks < DNS_PORT_PICKS && in_use(&error) => {
                picks += 1;
                tracing::debug!(%bound, "DNS proxy port taken for TCP; picking another");
            }
            Err(error) => return Err(error),
        }
    }
}

fn in_use(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::AddrInUse)
}

fn bind_all_shared(addrs: &[SocketAddr], what: &str) -> anyhow::Result<Vec<TcpListener>> {
    addrs
        .iter()
        .map(|addr| bind_shared(*addr, v6_only(*addr, addrs), what))
        .collect()
}

fn local_addrs(listeners: &[TcpListener]) -> anyhow::Result<Vec<SocketAddr>> {
    listeners
        .iter()
        .map(|l| l.local_addr().context("reading a listener's address"))
        .collect()
}

impl ProxyListeners {
    fn bind(config: &Config) -> anyhow::Result<Self> {
        let (dns_proxy, dns_proxy_tcp) = config
            .dns_proxy_addrs
            .iter()
            .map(|addr| bind_dns(*addr, v6_only(*addr, &config.dns_proxy_addrs)))
            .collect::<anyhow::Result<(Vec<_>, Vec<_>)>>()?;
        Ok(Self {
            outbound: bind_all_shared(&config.outbound_addrs, "outbound")?,
            dns_proxy,
            dns_proxy_tcp,
            inbound_plaintext: bind_all_shared(
                &config.inbound_plaintext_addrs,
                "inbound plaintext",
            )?,
            hbone: bind_all_shared(&config.hbone_addrs, "HBONE")?,
        })
    }

    /// The proxy addresses as bound; the operator's as configured.
    fn addresses(&self, config: &Config) -> anyhow::Result<Addresses> {
        Ok(Addresses {
            outbound: local_addrs(&self.outbound)?,
            dns_proxy: self
                .dns_proxy
                .iter()
                .map(|s| s.local_addr().context("reading the DNS proxy's address"))
                .collect::<anyhow::Result<_>>()?,
            inbound_plaintext: local_addrs(&self.inbound_plaintext)?,
            hbone: local_addrs(&self.hbone)?,
            admin: config.admin_addr,
            metrics: config.metrics_addr,
            readiness: config.readiness_addr,
        })
    }
}

impl EndpointListeners {
    async fn bind(config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            admin: bind(config.admin_addr, "admin").await?,
            metrics: bind(config.metrics_addr, "metrics").await?,
            readiness: bind(config.readiness_addr, "readiness").await?,
        })
    }

    /// Binds them as soon as the predecessor lets go of them (it closes them when it
    /// starts draining). `None` when this ztunnel drains first, or when they stay
    /// taken for [`ENDPOINT_GIVE_UP`]: then another process keeps them (a second
    /// successor, or a predecessor that did not drain).
    async fn bind_when_free(config: &Config, mut drain: drain::Watch) -> Option<Self> {
        let started = tokio::time::Instant::now();
        let mut warned = false;
        loop {
            match Self::bind(config).await {
                Ok(listeners) => {
                    info!("admin, metrics and readiness ports taken over");
                    return Some(listeners);
                }
                Err(error) if started.elapsed() >= ENDPOINT_GIVE_UP => {
                    tracing::error!(
                        error = %format!("{error:#}"),
                        "the admin, metrics and readiness ports stayed taken for {ENDPOINT_GIVE_UP:?}: \
                         another ztunnel keeps them; this one drains"
                    );
                    return None;
                }
                Err(error) if !warned && started.elapsed() >= ENDPOINT_PATIENCE => {
                    warn!(
                        error = %format!("{error:#}"),
                        "the admin, metrics and readiness ports are still taken \
                         (is the previous ztunnel draining?); still trying"
                    );
                    warned = true;
                }
                Err(_) => {}
            }
            tokio::select! {
                () = drain.draining() => return None,
                () = tokio::time::sleep(ENDPOINT_RETRY) => {}
            }
        }
    }
}

impl Ztunnel {
    /// Binds every listener (all before serving any, so a port clash fails the start)
    /// and serves from `state`. The admin port goes first: it is never shared, so a
    /// second ztunnel configured like this one fails here instead of joining the
    /// proxy ports (which a successor may share, see [`Ztunnel::take_over`]).
    pub async fn start(
        config: Config,
        state: Arc<State>,
        log: Option<LogControl>,
    ) -> anyhow::Result<Ztunnel> {
        let endpoints = EndpointListeners::bind(&config).await?;
        let proxies = ProxyListeners::bind(&config)?;
        let addresses = Addresses {
            admin: endpoints.admin.local_addr()?,
            metrics: endpoints.metrics.local_addr()?,
            readiness: endpoints.readiness.local_addr()?,
            ..proxies.addresses(&config)?
        };
        let ztunnel = Ztunnel::new(config, state, addresses);
        ztunnel.serve_proxies(proxies);
        ztunnel.endpoint_server(log).serve(endpoints);
        Ok(ztunnel)
    }

    /// Takes over from `running`, the ztunnel serving the node now, without a
    /// connection refused or cut: accepts beside it, asks it to drain (it stops
    /// accepting and lets its connections finish), then takes the admin, metrics
    /// and readiness ports as it lets go of them. `state` must be ready (config
    /// and certificates: [`wait_ready`] first, while the running one serves alone).
    ///
    /// Fails, leaving the running ztunnel in charge, when `state` is not ready or
    /// the proxy ports cannot be shared.
    pub async fn take_over(
        config: Config,
        state: Arc<State>,
        log: Option<LogControl>,
        running: &ServerInfo,
    ) -> anyhow::Result<Ztunnel> {
        if let Err(missing) = state.ready() {
            anyhow::bail!("not ready ({missing}); the running ztunnel keeps serving");
        }
        // Before binding: the kernel reads it when a listener closes, and ours may
        // close too (a failed start).
        if config.migrate_queued_connections {
            match handover::migrate_queued_connections() {
                Ok(true) => info!(
                    "net.ipv4.tcp_migrate_req set: connections queued on the old listeners move to these"
                ),
                Ok(false) => {}
                Err(error) => warn!(
                    %error,
                    "could not set net.ipv4.tcp_migrate_req: connections the old ztunnel has \
                     queued but not accepted when it stops may be reset"
                ),
            }
        }
        let proxies = ProxyListeners::bind(&config).context(
            "sharing the running ztunnel's ports (a hand-over needs the same user and SO_REUSEPORT on both)",
        )?;
        let addresses = proxies.addresses(&config)?;
        let ztunnel = Ztunnel::new(config, state, addresses);
        ztunnel.serve_proxies(proxies);
        // The node's pods' plaintext listeners registered first: the running
        // ztunnel's, closing as it drains, then take their entries with them.
        let capture = Arc::clone(&ztunnel.inputs.capture);
        if !capture.registered(Duration::from_secs(5)).await {
            warn!(
                "the plaintext inbound listeners were not all registered in time; taking over anyway"
            );
        }
        let config = Arc::clone(&ztunnel.inputs.config);
        let admin = config.admin_addr;
        // The process on the admin port may have changed while this one got ready.
        match handover::predecessor(admin, config.node_name.as_deref()).await {
            Ok(Some(now)) if now.pid == running.pid => match handover::ask_to_drain(admin).await {
                Ok(()) => {
                    info!(%admin, pid = running.pid, "took over: the previous ztunnel is draining");
                    // Its last registrations (a tick of its own after ours)
                    // go with its listeners: ours again, soon after.
                    tokio::spawn(async move {
                        for pause in [200, 800, 2000] {
                            tokio::time::sleep(Duration::from_millis(pause)).await;
                            capture.reassert();
                        }
                    });
                }
                // Both serve until the operator stops the old one; nothing is lost.
                Err(error) => warn!(
                    %admin,
                    error = %format!("{error:#}"),
                    "could not ask the previous ztunnel to drain; both serve until it stops"
                ),
            },
            Ok(Some(now)) => warn!(
                %admin,
                expected = running.pid,
                found = now.pid,
                "another ztunnel answers on the admin port now; not asking it to drain"
            ),
            Ok(None) => info!(%admin, "took over: the previous ztunnel had already stopped"),
            Err(error) => warn!(
                %admin,
                error = %format!("{error:#}"),
                "the admin port no longer answers as the previous ztunnel; not asking it to drain"
            ),
        }
        let drain = ztunnel.trigger.watch();
        let server = ztunnel.endpoint_server(log);
        let quit = Arc::clone(&ztunnel.quit);
        tokio::spawn(async move {
            let draining = drain.clone();
            match EndpointListeners::bind_when_free(&config, drain).await {
                Some(listeners) => server.serve(listeners),
                // Given up: this process leaves the node to the one holding them.
                None if !draining.is_draining() => quit.request(QuitReason::GaveUp),
                None => {}
            }
        });
        Ok(ztunnel)
    }

    fn new(config: Config, state: Arc<State>, addresses: Addresses) -> Ztunnel {
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new());
        let inputs = Inputs::new(config, Arc::clone(&state), metrics);
        tokio::spawn(readiness::announce(state));
        Ztunnel {
            addresses,
            inputs,
            trigger: drain::Trigger::new(),
            quit: Arc::new(Quit::default()),
        }
    }

    fn serve_proxies(&self, listeners: ProxyListeners) {
        let inputs = &self.inputs;
        for listener in listeners.outbound {
            tokio::spawn(proxy::outbound::serve(
                Arc::clone(inputs),
                listener,
                self.trigger.watch(),
            ));
        }
        for socket in listeners.dns_proxy {
            tokio::spawn(proxy::dns::serve(
                Arc::clone(inputs),
                socket,
                self.trigger.watch(),
            ));
        }
        for listener in listeners.dns_proxy_tcp {
            tokio::spawn(proxy::dns::serve_tcp(
                Arc::clone(inputs),
                listener,
                self.trigger.watch(),
            ));
        }
        for listener in listeners.inbound_plaintext {
            tokio::spawn(proxy::inbound_passthrough::serve(
                Arc::clone(inputs),
                listener,
                self.trigger.watch(),
            ));
        }
        for listener in listeners.hbone {
            tokio::spawn(proxy::inbound::serve(
                Arc::clone(inputs),
                listener,
                self.trigger.watch(),
            ));
        }
        tokio::spawn(inputs.pool.clone().run_eviction(self.trigger.watch()));
        tokio::spawn(
            inputs
                .authorized
                .clone()
                .run(Arc::clone(&inputs.state), self.trigger.watch()),
        );
        tokio::spawn(proxy::inbound_capture::run(
            Arc::clone(inputs),
            self.trigger.watch(),
        ));
    }

    fn endpoint_server(&self, log: Option<LogControl>) -> EndpointServer {
        EndpointServer {
            inputs: Arc::clone(&self.inputs),
            log,
            quit: Arc::clone(&self.quit),
            drain: self.trigger.watch(),
        }
    }

    /// A drain watch for connections handled outside the listeners (tests drive the
    /// outbound path directly); the drain waits for it like for any connection.
    pub fn drain_watch(&self) -> drain::Watch {
        self.trigger.watch()
    }

    /// Resolves when a stop is requested (`/quitquitquit`, or giving up a take-over),
    /// with why.
    pub async fn quit_requested(&self) -> QuitReason {
        self.quit.requested().await
    }

    /// Stops accepting, lets open connections finish for `--drain-timeout`, then cuts
    /// the rest.
    pub async fn drain(self) -> drain::Outcome {
        let timeout = self.inputs.config.drain_timeout;
        self.inputs.pool.clear();
        self.trigger
            .drain(timeout, std::time::Duration::from_secs(1))
            .await
    }
}

/// What serving the admin, metrics and readiness endpoints needs, taken before their
/// listeners exist (a successor binds them later).
struct EndpointServer {
    inputs: Arc<Inputs>,
    log: Option<LogControl>,
    quit: Arc<Quit>,
    drain: drain::Watch,
}

impl EndpointServer {
    fn serve(self, listeners: EndpointListeners) {
        tokio::spawn(http_endpoint::serve(
            listeners.admin,
            self.drain.clone(),
            "admin",
            admin::handler(
                Arc::clone(&self.inputs),
                self.log,
                self.quit,
                handover::SERVER,
            ),
        ));
        let metrics = Arc::clone(&self.inputs.metrics);
        let metrics_handler: http_endpoint::Handler = Arc::new(move |request| {
            let metrics = Arc::clone(&metrics);
            Box::pin(async move {
                match request.uri().path() {
                    "/metrics" | "/stats/prometheus" => {
                        let mut reply = http_endpoint::text(http::StatusCode::OK, metrics.encode());
                        reply.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static(
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            ),
                        );
                        reply
                    }
                    other => http_endpoint::text(
                        http::StatusCode::NOT_FOUND,
                        format!("no endpoint {other}\n"),
                    ),
                }
            })
        });
        tokio::spawn(http_endpoint::serve(
            listeners.metrics,
            self.drain.clone(),
            "metrics",
            metrics_handler,
        ));
        tokio::spawn(http_endpoint::serve(
            listeners.readiness,
            self.drain,
            "readiness",
            readiness::handler(Arc::clone(&self.inputs.state)),
        ));
    }
}

/// Waits until `state` is ready, at most `within`.
pub async fn wait_ready(state: &State, within: Duration) -> anyhow::Result<()> {
    let mut changes = state.changes();
    let ready = async {
        while state.ready().is_err() {
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::time::timeout(within, ready).await.map_err(|_| {
        let missing = state.ready().err().unwrap_or_default();
        anyhow::anyhow!(
            "not ready within {within:?} ({missing}); the running ztunnel keeps serving"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_listener_takes_ipv6_alone_only_beside_an_ipv4_one() {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("ip:port");
        let both = [addr("0.0.0.0:15001"), addr("[::]:15001")];
        assert!(v6_only(both[1], &both));
        assert!(!v6_only(both[0], &both), "IPv4 is IPv4");
        // Alone, or beside an IPv4 listener on another port: both families.
        assert!(!v6_only(both[1], &both[1..]));
        assert!(!v6_only(both[1], &[addr("0.0.0.0:15002"), both[1]]));
    }
}
