//! A connection to a TCP service port through the waypoint: route it once
//! (VirtualService `tcp` rules), take a connection-pool slot and an
//! endpoint from the destination's cluster (DestinationRule subsets, load
//! balancing, `tcp.maxConnections`, outlier detection), connect over HBONE,
//! and splice bytes until either side closes.

use std::{
    collections::BTreeMap, io, net::SocketAddr, pin::Pin, sync::Arc, task::Poll, time::Instant,
};

use http::{HeaderMap, Uri};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::{debug, info};
use warren_ztunnel::{drain, proxy::hbone::Tunnel};

use super::{
    Downstream,
    connect::{ConnectError, Upstream},
};
use crate::{
    app::{ClusterKey, Context},
    metrics::ClusterLabels,
    route::{
        RouteDestination, Scope,
        tcp::{ConnectionInfo, TcpRouted},
    },
    upstream::{HashInput, Outcome},
};

/// Why a connection was not spliced, for the access log.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("{0}")]
    NoCluster(String),
    #[error("connection pool overflow")]
    Overflow,
    #[error("no healthy endpoint")]
    NoEndpoint,
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// Not refused: closed at `tcp.maxConnectionDuration`.
    #[error("closed after maxConnectionDuration {0:?}")]
    MaxDuration(std::time::Duration),
}

impl Refused {
    /// Envoy's response flag for the access log.
    fn flag(&self) -> &'static str {
        match self {
            Refused::NoCluster(_) => "NC",
            Refused::Overflow => "UO",
            Refused::NoEndpoint => "UH",
            Refused::Connect(_) => "UF",
            Refused::MaxDuration(_) => "DT",
        }
    }
}

pub async fn serve(
    ctx: Arc<Context>,
    down: Arc<Downstream>,
    mut tunnel: Tunnel,
    _drain: drain::Watch,
) {
    let start = Instant::now();
    let compiled = ctx.tables.current();
    let empty = BTreeMap::new();
    let info = ConnectionInfo {
        port: down.port,
        destination: down.vip,
        source_labels: down.source.as_ref().map_or(&empty, |w| &w.labels),
        source_namespace: &down.peer.identity.namespace,
    };
    let host = &down.service.hostname;
    let default = RouteDestination::to_host(host);
    // The service's own VirtualServices, and the waypoint's namespace's.
    let scope = Scope {
        service_namespace: &down.service.namespace,
        waypoint_namespace: &ctx.config.namespace,
    };
    let (route, destination) = match compiled.tcp_routes.route(host, scope, &info) {
        TcpRouted::Default => ("default".to_owned(), &default),
        TcpRouted::Rule(id, rule) => match rule.pick(&mut rand::rng()) {
            Some(d) => (format!("{id}.{}", rule.name), d),
            None => ("-".to_owned(), &default),
        },
    };
    let key = ClusterKey {
        host: destination.host.clone(),
        subset: destination.subset.clone(),
        port: destination.port.unwrap_or(down.port),
    };
    let connected = connect(&ctx, &compiled, &key, &down).await;
    let (upstream, endpoint, max_duration, _permit) = match connected {
        Ok(connected) => connected,
        Err((refused, endpoint)) => {
            log(&down, &route, start, Err(&refused), endpoint, (0, 0));
            return;
        }
    };
    let mut client = Counted {
        inner: &mut tunnel,
        from_client: 0,
        to_client: 0,
    };
    let splice = async {
        match upstream {
            Upstream::Tunnel(io) => {
                tokio::io::copy_bidirectional(&mut client, &mut io.into_inner()).await
            }
            Upstream::Tcp(io) => {
                tokio::io::copy_bidirectional(&mut client, &mut io.into_inner()).await
            }
        }
    };
    let ended = match max_duration {
        // `tcp.maxConnectionDuration`: Istio sets it as the TCP proxy's
        // maximum downstream connection duration; the connection is closed
        // then.
        Some(limit) => tokio::time::timeout(limit, splice)
            .await
            .map_err(|_| Refused::MaxDuration(limit)),
        None => Ok(splice.await),
    };
    let bytes = (client.from_client, client.to_client);
    match ended {
        Ok(copied) => {
            if let Err(error) = copied {
                debug!(%error, "tcp connection ended with an error");
            }
            log(&down, &route, start, Ok(()), Some(endpoint), bytes);
        }
        Err(cut) => log(&down, &route, start, Err(&cut), Some(endpoint), bytes),
    }
}

/// The client's side of a splice, counting the bytes each way, so that a
/// splice cut short (an error, `maxConnectionDuration`) still reports what
/// it moved.
struct Counted<T> {
    inner: T,
    from_client: u64,
    to_client: u64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.from_client += (buf.filled().len() - before) as u64;
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.to_client += n as u64;
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

/// A connection to an endpoint, its maximum duration, and its pool slot.
type Connected = (
    Upstream,
    SocketAddr,
    Option<std::time::Duration>,
    crate::upstream::Permit,
);

/// A pool slot, an endpoint and a connection to it.
async fn connect(
    ctx: &Context,
    compiled: &crate::tables::Compiled,
    key: &ClusterKey,
    down: &Downstream,
) -> Result<Connected, (Refused, Option<SocketAddr>)> {
    let labels = ClusterLabels {
        destination_service: key.host.clone(),
        subset: key.subset.clone().unwrap_or_default(),
    };
    let cluster = ctx
        .cluster(compiled, key)
        .map_err(|reason| (Refused::NoCluster(reason), None))?;
    let Ok(permit) = cluster.admit_connection() else {
        ctx.metrics.overflows.get_or_create(&labels).inc();
        return Err((Refused::Overflow, None));
    };
    let (headers, uri) = (HeaderMap::new(), Uri::default());
    let client = down.client();
    let hash = HashInput::new(&headers, &uri, Some(client.addr), Some(client.connection));
    let Some(picked) = cluster.pick(&hash, Instant::now()) else {
        return Err((Refused::NoEndpoint, None));
    };
    let endpoint = picked.endpoint.address;
    let connected = ctx
        .connector
        .connect(endpoint, cluster.limits().connect_timeout)
        .await;
    let outcome = match &connected {
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::LocalFailure,
    };
    if cluster.report(&picked.endpoint.id, outcome, Instant::now()) {
        ctx.metrics.ejections.get_or_create(&labels).inc();
    }
    match connected {
        Ok(upstream) => Ok((
            upstream,
            endpoint,
            cluster.limits().max_connection_duration,
            permit,
        )),
        Err(error) => Err((Refused::Connect(error), Some(endpoint))),
    }
}

fn log(
    down: &Downstream,
    route: &str,
    start: Instant,
    result: Result<(), &Refused>,
    upstream: Option<SocketAddr>,
    (sent, received): (u64, u64),
) {
    info!(
        target: "access",
        src = %down.source_ip,
        src_identity = %down.peer.identity,
        service = %down.service.hostname,
        port = down.port,
        protocol = "tcp",
        route,
        flags = result.err().map_or("-", Refused::flag),
        details = %result.err().map_or_else(|| "-".to_owned(), ToString::to_string),
        upstream = ?upstream,
        sent,
        received,
        duration_ms = start.elapsed().as_secs_f64() * 1000.0,
        "connection"
    );
}
