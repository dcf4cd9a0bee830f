//! A connection to a TCP service port through the waypoint: on a TLS port,
//! read the server name of the client's hello when a policy or a route
//! needs it; decide the policies that wait for it; route once
//! (VirtualService `tls` rules on that name, then `tcp` rules), take a connection-pool slot and an
//! endpoint from the destination's cluster (DestinationRule subsets, load
//! balancing, `tcp.maxConnections`, outlier detection), connect over HBONE,
//! and splice bytes until either side closes, or the DestinationRule's
//! `tcp.maxConnectionDuration` or `tcp.idleTimeout` ends it.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::Poll,
    time::{Duration, Instant, SystemTime},
};

use http::{HeaderMap, Uri};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tracing::{debug, info};
use warren_model::l4_route::REJECTED;
use warren_ztunnel::{drain, proxy::hbone::Tunnel};

use super::{
    Downstream,
    connect::{ConnectError, Upstream},
    hello::{self, Hello},
};
use crate::{
    app::{ClusterKey, Context},
    authz::{self, ServerName},
    metrics::ClusterLabels,
    route::{
        RouteDestination, Scope,
        tcp::{ConnectionInfo, TcpRouted},
    },
    telemetry::{Attributes, Facts, Resolved},
    upstream::{HashInput, Outcome, Permit, PoolLimits, Speaks, Unpicked},
};

/// Why a connection was not spliced, or was cut, for the access log.
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error("{0}")]
    NoCluster(String),
    #[error("connection pool overflow")]
    Overflow,
    #[error("no healthy endpoint")]
    NoEndpoint,
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// Cut at `tcp.maxConnectionDuration`.
    #[error("closed after maxConnectionDuration {0:?}")]
    MaxDuration(Duration),
    /// Cut after `tcp.idleTimeout` without traffic (Envoy's close reason).
    #[error("tcp_session_idle_timeout: no traffic for {0:?} (idleTimeout)")]
    Idle(Duration),
    /// The client's side failed before its TLS hello was complete.
    #[error("reading the client's TLS hello: {0}")]
    Hello(io::Error),
    /// An AuthorizationPolicy that reads the server name denied it.
    #[error("{0}")]
    Denied(authz::Denial),
    /// A policy needs the server name and the client sent no hello that
    /// tells it.
    #[error("rbac_access_denied: connection.sni cannot be read: {0}")]
    NoHello(String),
    /// The route's share of connections that the Gateway API rejects (a
    /// backend it may not send to, or every backend at weight 0).
    #[error("rejected by route: {REJECTED} (a backend not permitted, or every weight 0)")]
    Rejected,
}

impl Ended {
    /// Envoy's response flag for the access log.
    fn flag(&self) -> &'static str {
        match self {
            Ended::NoCluster(_) => "NC",
            Ended::Overflow => "UO",
            Ended::NoEndpoint => "UH",
            Ended::Connect(_) => "UF",
            Ended::MaxDuration(_) => "DT",
            // Envoy's TCP proxy sets no flag for its idle timeout; the
            // details say it.
            Ended::Idle(_) => "-",
            // The client went (downstream connection termination).
            Ended::Hello(_) => "DC",
            // As Envoy's network RBAC filter: no flag, the details say it.
            Ended::Denied(_) | Ended::NoHello(_) => "-",
            // No route for it, as far as the route is concerned.
            Ended::Rejected => "NR",
        }
    }
}

/// Whether a connection's AuthorizationPolicies were decided at CONNECT, or
/// read its server name and wait for its hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Decided,
    AfterHello,
}

pub async fn serve(
    ctx: Arc<Context>,
    down: Arc<Downstream>,
    mut tunnel: Tunnel,
    policy: Policy,
    // The generation its CONNECT was decided with: the hello is decided
    // with the same policies (a CUSTOM policy added meanwhile was not
    // asked about this connection).
    compiled: Arc<crate::tables::Compiled>,
    _drain: drain::Watch,
) {
    let line = Line {
        down: &down,
        telemetry: compiled
            .telemetry
            .for_service(&down.service.namespace, &down.service.name),
        start: Instant::now(),
    };
    let host = &down.service.hostname;
    let default = RouteDestination::to_host(host);
    // The service's own VirtualServices, and the waypoint's namespace's.
    let scope = Scope {
        service_namespace: &down.service.namespace,
        waypoint_namespace: &ctx.config.namespace,
    };
    // On a TLS port whose policies or routes read the server name: the
    // client's hello, read first and sent on first.
    let tls_port = down
        .service
        .port(down.port)
        .is_some_and(|p| p.carries_tls());
    let empty = BTreeMap::new();
    let mut info = ConnectionInfo {
        port: down.port,
        destination: down.vip,
        source_labels: down.source.as_ref().map_or(&empty, |w| &w.labels),
        source_namespace: &down.peer.identity.namespace,
        tls: tls_port.then_some(None),
    };
    let mut hello = Vec::new();
    let read_hello = policy == Policy::AfterHello
        || (tls_port && compiled.tcp_routes.reads_sni(host, scope, &info));
    let client_hello = if read_hello {
        match tokio::time::timeout(hello::TIMEOUT, hello::read(&mut tunnel, &mut hello)).await {
            Ok(Ok(read)) => Some(read),
            Ok(Err(error)) => {
                let ended = Ended::Hello(error);
                let read = u64::try_from(hello.len()).unwrap_or(u64::MAX);
                line.log("-", None, Err(&ended), None, (read, 0));
                return;
            }
            Err(_) => Some(Hello::Unreadable(format!(
                "no whole TLS hello within {:?}",
                hello::TIMEOUT
            ))),
        }
    } else {
        None
    };
    // Routed without a name when there is none: no `tls` rule fits.
    let server_name = client_hello.as_ref().and_then(Hello::server_name);
    // What the access line of a connection ended before the splice counts.
    let read = u64::try_from(hello.len()).unwrap_or(u64::MAX);
    if policy == Policy::AfterHello {
        let peer = down.authz_peer();
        let refused = match &client_hello {
            Some(Hello::Read(name)) => {
                let name = ServerName::Read(name.as_deref());
                authz::authorize_connection(&compiled.authz, &peer, name).map(Ended::Denied)
            }
            // A name the policies need but cannot have: fail closed, or
            // a client could pass a DENY by sending its hello late or in
            // a form this waypoint does not read.
            Some(Hello::Unreadable(why)) => Some(Ended::NoHello(why.clone())),
            None => Some(Ended::NoHello("not read".to_owned())),
        };
        if let Some(ended) = refused {
            // Dropping the tunnel resets the client's connection: its bytes
            // never reach a destination.
            ctx.inputs.metrics.refuse(super::DIRECTION, "deny_policy");
            line.log("-", server_name, Err(&ended), None, (read, 0));
            return;
        }
    }
    info.tls = tls_port.then_some(server_name);
    let (route, destination) = match compiled.tcp_routes.route(host, scope, &info) {
        TcpRouted::Default => ("default".to_owned(), &default),
        TcpRouted::Rule(id, rule) => match rule.pick(&mut rand::rng()) {
            Some(d) => (format!("{id}.{}", rule.name), d),
            None => ("-".to_owned(), &default),
        },
    };
    // Refused here, by name: nothing (a ServiceEntry, say) may make the
    // host reach anyone.
    if destination.host == REJECTED {
        ctx.inputs
            .metrics
            .refuse(super::DIRECTION, "rejected_by_route");
        line.log(&route, server_name, Err(&Ended::Rejected), None, (read, 0));
        return;
    }
    let key = ClusterKey::new(
        &destination.host,
        destination.subset.as_deref(),
        destination.port,
        down.port,
    );
    let connected = connect(&ctx, &compiled, &key, &down, tls_port).await;
    let Connected {
        upstream,
        endpoint,
        limits,
        _permit,
    } = match connected {
        Ok(connected) => connected,
        Err((refused, endpoint)) => {
            line.log(&route, server_name, Err(&refused), endpoint, (read, 0));
            return;
        }
    };
    let traffic = Traffic::new();
    traffic.moved(&traffic.from_client, hello.len());
    let mut client = Counted {
        inner: &mut tunnel,
        traffic: &traffic,
    };
    let splice = async {
        let mut upstream = upstream.into_stream();
        upstream.write_all(&hello).await?;
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await
    };
    // Istio sets `tcp.maxConnectionDuration` as the TCP proxy's maximum
    // downstream connection duration and `tcp.idleTimeout` as its idle
    // timeout: either closes both sides.
    let ended = tokio::select! {
        copied = splice => Ok(copied),
        () = after(limits.max_connection_duration) => {
            Err(Ended::MaxDuration(limits.max_connection_duration.unwrap_or_default()))
        }
        () = traffic.idle_for(limits.tcp_idle_timeout) => {
            Err(Ended::Idle(limits.tcp_idle_timeout.unwrap_or_default()))
        }
    };
    let bytes = traffic.bytes();
    match ended {
        Ok(copied) => {
            if let Err(error) = copied {
                debug!(%error, "tcp connection ended with an error");
            }
            line.log(&route, server_name, Ok(()), Some(endpoint), bytes);
        }
        Err(cut) => line.log(&route, server_name, Err(&cut), Some(endpoint), bytes),
    }
}

/// Ends after `limit`, or never.
async fn after(limit: Option<Duration>) {
    match limit {
        Some(limit) => tokio::time::sleep(limit).await,
        None => std::future::pending().await,
    }
}

/// What a splice has moved, and when it last moved anything: written by
/// the client's side of the splice, read by the idle timer beside it.
struct Traffic {
    opened: tokio::time::Instant,
    from_client: AtomicU64,
    to_client: AtomicU64,
    /// Milliseconds from `opened` to the last byte either way.
    last_active_ms: AtomicU64,
}

impl Traffic {
    fn new() -> Self {
        Self {
            opened: tokio::time::Instant::now(),
            from_client: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
            last_active_ms: AtomicU64::new(0),
        }
    }

    fn moved(&self, count: &AtomicU64, n: usize) {
        if n == 0 {
            return;
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_active_ms.store(ms, Ordering::Relaxed);
    }

    fn last_active(&self) -> tokio::time::Instant {
        self.opened + Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed))
    }

    /// Ends once nothing has moved either way for `limit`, or never.
    async fn idle_for(&self, limit: Option<Duration>) {
        let Some(limit) = limit else {
            return std::future::pending().await;
        };
        loop {
            let deadline = self.last_active() + limit;
            tokio::time::sleep_until(deadline).await;
            // Bytes moved while it slept push the deadline on.
            if self.last_active() + limit <= tokio::time::Instant::now() {
                return;
            }
        }
    }

    /// Bytes from the client and to it.
    fn bytes(&self) -> (u64, u64) {
        (
            self.from_client.load(Ordering::Relaxed),
            self.to_client.load(Ordering::Relaxed),
        )
    }
}

/// The client's side of a splice: every byte to and from the upstream
/// passes it, so it counts both directions (what a splice cut short still
/// reports) and notes activity for the idle timeout.
struct Counted<'a, T> {
    inner: T,
    traffic: &'a Traffic,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.traffic
                .moved(&this.traffic.from_client, buf.filled().len() - before);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.traffic.moved(&this.traffic.to_client, n);
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A connection to an endpoint, its cluster's settings, and its pool slot.
struct Connected {
    upstream: Upstream,
    endpoint: SocketAddr,
    limits: PoolLimits,
    _permit: Permit,
}

/// The settings a connection of the cluster's is made with: when the bytes
/// relayed are the client's own TLS (it dialled a port that carries TLS),
/// without a BackendTLSPolicy's TLS, which would wrap it in a second layer
/// the endpoint cannot read. (A DestinationRule's `tls` is the operator's
/// own word, and stays.)
pub(crate) fn relaying(limits: &PoolLimits, client_tls: bool) -> Cow<'_, PoolLimits> {
    match &limits.tls {
        Some(tls) if client_tls && tls.backend_tls_policy().is_some() => Cow::Owned(PoolLimits {
            tls: None,
            ..limits.clone()
        }),
        _ => Cow::Borrowed(limits),
    }
}

/// A pool slot, an endpoint and a connection to it; `client_tls` when the
/// bytes relayed are the client's own TLS.
async fn connect(
    ctx: &Context,
    compiled: &crate::tables::Compiled,
    key: &ClusterKey,
    down: &Downstream,
    client_tls: bool,
) -> Result<Connected, (Ended, Option<SocketAddr>)> {
    let labels = ClusterLabels {
        destination_service: key.host.clone(),
        subset: key.subset.clone().unwrap_or_default(),
    };
    let cluster = ctx
        .resolved_cluster(compiled, key)
        .await
        .map_err(|reason| (Ended::NoCluster(reason), None))?;
    let Ok(permit) = cluster.admit_connection() else {
        ctx.metrics.overflows.get_or_create(&labels).inc();
        return Err((Ended::Overflow, None));
    };
    let (headers, uri) = (HeaderMap::new(), Uri::default());
    let client = down.client();
    let hash = HashInput::new(&headers, &uri, Some(client.addr), Some(client.connection));
    // A ServiceEntry resolved `NONE`: where the client dialled.
    let dialled = || client.dialled_now(&ctx.inputs.state);
    let picked = match cluster.pick_for(dialled, &hash, &[], &[], Instant::now()) {
        Ok(picked) => picked,
        Err(Unpicked::NotDialled(reason)) => return Err((Ended::NoCluster(reason), None)),
        Err(Unpicked::NoEndpoint) => return Err((Ended::NoEndpoint, None)),
    };
    let endpoint = picked.endpoint.address;
    let limits = relaying(cluster.limits(), client_tls);
    let connected = ctx
        .connector
        .connect(endpoint, &limits, Speaks::Bytes)
        .await;
    let outcome = match &connected {
        Ok(_) => Some(Outcome::Success),
        // The rule's TLS settings, not the endpoint, refused it.
        Err(ConnectError::TlsSettings { .. }) => None,
        Err(_) => Some(Outcome::LocalFailure),
    };
    if let Some(outcome) = outcome
        && cluster.report(&picked.endpoint.id, outcome, Instant::now())
    {
        ctx.metrics.ejections.get_or_create(&labels).inc();
    }
    match connected {
        Ok(upstream) => Ok(Connected {
            upstream,
            endpoint,
            limits: limits.into_owned(),
            _permit: permit,
        }),
        Err(error) => Err((Ended::Connect(error), Some(endpoint))),
    }
}

/// The connection's access line; `server_name` is its hello's, when read
/// (Envoy's `%REQUESTED_SERVER_NAME%`).
struct Line<'a> {
    down: &'a Downstream,
    telemetry: &'a Resolved,
    start: Instant,
}

impl Line<'_> {
    fn log(
        &self,
        route: &str,
        server_name: Option<&str>,
        result: Result<(), &Ended>,
        upstream: Option<SocketAddr>,
        (sent, received): (u64, u64),
    ) {
        if !tracing::enabled!(target: "access", tracing::Level::INFO) {
            return;
        }
        let down = self.down;
        let access_log = &self.telemetry.access_log;
        let elapsed = self.start.elapsed();
        let details = result.err().map(ToString::to_string);
        let facts = access_log.reads_attributes().then(|| Facts {
            source: Some(down.source_ip),
            principal: Some(format!("spiffe://{}", down.peer.identity.principal())),
            destination: Some(SocketAddr::new(down.vip, down.port)),
            upstream,
            server_name,
            flags: result.err().map_or("-", Ended::flag),
            // What the client sent, and what it was sent back.
            request_bytes: sent,
            response_bytes: received,
            start: SystemTime::now().checked_sub(elapsed),
            duration: Some(elapsed),
            route: Some(route),
            details: details.as_deref(),
            service: Some(&down.service.hostname),
            ..Facts::default()
        });
        let attributes = facts.as_ref().map(Attributes::of);
        access_log.write(facts.as_ref(), attributes.as_ref(), || {
            info!(
                target: "access",
                src = %down.source_ip,
                src_identity = %down.peer.identity,
                service = %down.service.hostname,
                port = down.port,
                protocol = "tcp",
                server_name = server_name.unwrap_or("-"),
                route,
                flags = result.err().map_or("-", Ended::flag),
                details = details.as_deref().unwrap_or("-"),
                upstream = ?upstream,
                sent,
                received,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                "connection"
            );
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_idle_timer_restarts_with_every_byte() {
        let traffic = Traffic::new();
        let start = tokio::time::Instant::now();
        let mover = async {
            for _ in 0..2 {
                tokio::time::sleep(Duration::from_millis(600)).await;
                traffic.moved(&traffic.from_client, 1);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            traffic.moved(&traffic.to_client, 7);
        };
        let ((), ()) = tokio::join!(mover, traffic.idle_for(Some(Duration::from_secs(1))));
        // The last byte moved 1.5 s in; a second later the timer ends.
        let ended = start.elapsed();
        assert!(
            ended >= Duration::from_millis(2500) && ended < Duration::from_millis(2600),
            "ended after {ended:?}"
        );
        assert_eq!(traffic.bytes(), (2, 7));
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_idle_timeout_a_quiet_connection_stays() {
        let traffic = Traffic::new();
        let waited =
            tokio::time::timeout(Duration::from_secs(86_400), traffic.idle_for(None)).await;
        assert!(waited.is_err(), "idle_for(None) must never end");
    }
}
