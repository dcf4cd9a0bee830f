//! Opening upstream connections: an HBONE stream to the endpoint's node
//! (mutual TLS as the waypoint's own identity, the endpoint's identity
//! verified), or plain TCP to an endpoint outside the mesh, within the
//! DestinationRule's `tcp.connectTimeout`; over either, the TLS its `tls`
//! asks the waypoint to start ([`Origination`]). The HTTP pools
//! ([`super::keepalive`], [`super::multiplex`]) and TCP routes call it.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::{TlsConnector, client::TlsStream};
use warren_api::Identity;

use crate::upstream::{Keepalive, Origination, PoolLimits, Speaks};
use warren_ztunnel::proxy::{
    Inputs,
    hbone::{
        Tunnel,
        client::{Carrier, Establish, HboneError},
    },
    pool::PoolKey,
};

/// Why an upstream connection could not be made (retryable as
/// `connect-failure`).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {addr} took over {after:?} (connectTimeout)")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("no certificate for the waypoint's identity {0} yet")]
    NoCertificate(Identity),
    #[error("no trust bundle yet")]
    NoTrustBundle,
    #[error(transparent)]
    Hbone(#[from] HboneError),
    #[error("connecting to {addr}: {source}")]
    Tcp { addr: SocketAddr, source: io::Error },
    /// The DestinationRule's `tls` cannot be honoured: nothing is sent.
    #[error("TLS to {addr} refused: {reason}")]
    TlsSettings { addr: SocketAddr, reason: String },
    /// `tls.mode: ISTIO_MUTUAL`, and this endpoint is outside the mesh, where
    /// the mesh's mutual TLS cannot reach it (another endpoint may be in it).
    #[error(
        "{addr} is outside the mesh, and the DestinationRule's tls.mode ISTIO_MUTUAL allows only the mesh's mutual TLS (set DISABLE, or SIMPLE/MUTUAL with the endpoint's own certificates)"
    )]
    OutsideMesh { addr: SocketAddr },
    #[error("TLS handshake with {addr}: {source}")]
    TlsHandshake { addr: SocketAddr, source: io::Error },
    #[error("HTTP/2 handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
    /// New HTTP/2 connections kept closing or filling before this request
    /// could use one.
    #[error("no usable HTTP/2 connection to {addr} after several tries")]
    Unusable { addr: SocketAddr },
}

/// Why an upstream request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection (HTTP/2: shared by the requests that waited for it).
    #[error(transparent)]
    Connect(Arc<ConnectError>),
    /// Over a connection that was open.
    #[error(transparent)]
    Request(hyper::Error),
    /// Every HTTP/2 connection at its stream limit, no place for another
    /// under `maxConnections`, and the pending queue full.
    #[error(
        "upstream overflow: every connection is at its stream limit and the pending queue is full"
    )]
    Overflow,
}

impl SendError {
    /// Refused for the DestinationRule's `tls`, before any connection.
    pub fn is_unusable_settings(&self) -> bool {
        matches!(self, SendError::Connect(error) if matches!(**error, ConnectError::TlsSettings { .. }))
    }
}

/// Opens upstream connections as the waypoint's identity.
#[derive(Clone)]
pub struct Connector {
    pub inputs: Arc<Inputs>,
    pub identity: Arc<dyn Fn() -> Identity + Send + Sync>,
}

/// How an endpoint is reached. Pooled connections remember theirs, so that
/// a pod joining the mesh (or moving node, or changing identity) is not
/// reached over an old connection, nor an endpoint over TLS it was not
/// meant to get (or without the TLS it was).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub via: Via,
    /// TLS the waypoint starts over `via` (the DestinationRule's `tls`).
    pub tls: Option<Origination>,
    /// `tls.mode: ISTIO_MUTUAL`: only HBONE may carry it. Part of the route so
    /// that such a request never takes another cluster's plain connection.
    pub mesh_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// HBONE through the endpoint's node, verifying its identity.
    Hbone { node: IpAddr, expected: Identity },
    /// Plain TCP to an endpoint outside the mesh.
    Plain,
}

impl Connector {
    /// How `authority` is reached now, with a cluster's `limits`.
    pub fn route(&self, authority: SocketAddr, limits: &PoolLimits) -> Route {
        let workload = self.inputs.state.workload_by_ip(authority.ip());
        let via = match workload.as_deref() {
            Some(w) if w.hbone => match (&w.identity, w.node_address) {
                (Some(expected), Some(node)) => Via::Hbone {
                    node,
                    expected: expected.clone(),
                },
                _ => Via::Plain,
            },
            _ => Via::Plain,
        };
        Route {
            via,
            tls: limits.tls.clone(),
            mesh_only: limits.mesh_tls_only,
        }
    }

    /// A byte stream to `authority` within the cluster's `connectTimeout`: an
    /// HBONE tunnel through the endpoint's node when it is a meshed workload
    /// (the endpoint's answer to the CONNECT included), else plain TCP with
    /// the cluster's `tcpKeepalive`; then the TLS the cluster starts, if any,
    /// offering what the connection `speaks` (ALPN).
    pub async fn connect(
        &self,
        authority: SocketAddr,
        limits: &PoolLimits,
        speaks: Speaks,
    ) -> Result<Upstream, ConnectError> {
        self.connect_via(&self.route(authority, limits), authority, limits, speaks)
            .await
    }

    /// As [`Connector::connect`], by a route found before.
    pub async fn connect_via(
        &self,
        route: &Route,
        authority: SocketAddr,
        limits: &PoolLimits,
        speaks: Speaks,
    ) -> Result<Upstream, ConnectError> {
        // Settings that cannot be honoured refuse before any byte is sent.
        if route.mesh_only && route.via == Via::Plain {
            return Err(ConnectError::OutsideMesh { addr: authority });
        }
        let tls = route
            .tls
            .as_ref()
            .map(|tls| tls.client(speaks))
            .transpose()
            .map_err(|reason| ConnectError::TlsSettings {
                addr: authority,
                reason,
            })?;
        let timeout = limits.connect_timeout;
        let open = async {
            let stream = self.open(&route.via, authority, limits).await?;
            let Some((config, server_name)) = tls else {
                return Ok(Upstream(TokioIo::new(stream)));
            };
            let tls = TlsConnector::from(config)
                .connect(server_name, stream)
                .await
                .map_err(|source| ConnectError::TlsHandshake {
                    addr: authority,
                    source,
                })?;
            Ok(Upstream(TokioIo::new(Stream::Tls(Box::new(tls)))))
        };
        tokio::time::timeout(timeout, open)
            .await
            .unwrap_or(Err(ConnectError::Timeout {
                addr: authority,
                after: timeout,
            }))
    }

    async fn open(
        &self,
        via: &Via,
        authority: SocketAddr,
        limits: &PoolLimits,
    ) -> Result<Stream, ConnectError> {
        let state = &self.inputs.state;
        match via {
            Via::Hbone {
                node: node_address,
                expected,
            } => {
                let source = (self.identity)();
                let cert = state
                    .certificate(&source)
                    .ok_or_else(|| ConnectError::NoCertificate(source.clone()))?;
                let trust = state.trust_bundle().ok_or(ConnectError::NoTrustBundle)?;
                let key = PoolKey {
                    source,
                    gateway: SocketAddr::new(*node_address, self.inputs.config.hbone_port),
                    expected: expected.clone(),
                };
                let tunnel = self
                    .inputs
                    .pool
                    .tunnel(
                        &key,
                        &cert,
                        &trust,
                        authority,
                        None,
                        // A refusal must be a connect failure, for retryOn.
                        Establish::AwaitAnswer,
                    )
                    .await?;
                Ok(Stream::Tunnel(tunnel))
            }
            Via::Plain => plain(authority, limits).await,
        }
    }
}

async fn plain(addr: SocketAddr, limits: &PoolLimits) -> Result<Stream, ConnectError> {
    let timeout = limits.connect_timeout;
    let stream = warren_ztunnel::proxy::connect(addr, None, timeout)
        .await
        .map_err(|source| match source.kind() {
            io::ErrorKind::TimedOut => ConnectError::Timeout {
                addr,
                after: timeout,
            },
            _ => ConnectError::Tcp { addr, source },
        })?;
    if let Some(keepalive) = &limits.tcp_keepalive
        && let Err(error) = set_keepalive(&stream, keepalive)
    {
        // The connection works without it; the endpoint is not at fault.
        tracing::warn!(%addr, %error, "could not set TCP keepalive on an upstream connection");
    }
    Ok(Stream::Tcp(stream))
}

/// `SO_KEEPALIVE` with the timings `keepalive` sets; the others stay the
/// system's.
fn set_keepalive(stream: &tokio::net::TcpStream, keepalive: &Keepalive) -> io::Result<()> {
    let mut params = socket2::TcpKeepalive::new();
    if let Some(time) = keepalive.time {
        params = params.with_time(time);
    }
    if let Some(interval) = keepalive.interval {
        params = params.with_interval(interval);
    }
    if let Some(probes) = keepalive.probes {
        params = params.with_retries(probes);
    }
    socket2::SockRef::from(stream).set_tcp_keepalive(&params)
}

/// An upstream byte stream: an HBONE tunnel, a TCP connection, or TLS the
/// waypoint started over one of them.
pub enum Stream {
    Tunnel(Tunnel),
    Tcp(tokio::net::TcpStream),
    /// Boxed: its state is large.
    Tls(Box<TlsStream<Stream>>),
}

impl Stream {
    /// The HBONE connection a tunnel runs on, which pools watch for GOAWAY.
    fn carrier(&self) -> Option<Carrier> {
        match self {
            Stream::Tunnel(tunnel) => tunnel.carrier(),
            Stream::Tcp(_) => None,
            Stream::Tls(tls) => tls.get_ref().0.carrier(),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $io:ident => $call:expr) => {
        match $self.get_mut() {
            Stream::Tunnel($io) => {
                let $io = Pin::new($io);
                $call
            }
            Stream::Tcp($io) => {
                let $io = Pin::new($io);
                $call
            }
            Stream::Tls($io) => {
                let $io = Pin::new($io);
                $call
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_shutdown(cx))
    }
}

/// An upstream byte stream as hyper speaks HTTP over it.
pub struct Upstream(TokioIo<Stream>);

impl Upstream {
    /// The HBONE connection it runs on, which pools watch for GOAWAY.
    pub fn carrier(&self) -> Option<Carrier> {
        self.0.inner().carrier()
    }

    /// The byte stream, for a TCP route's splice.
    pub fn into_stream(self) -> Stream {
        self.0.into_inner()
    }
}

impl hyper::rt::Read for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tls_tests;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::proxy::multiplex::tests::connector;

    /// Connects to a loopback listener outside the mesh with `limits`, and
    /// reads the keepalive settings back from the socket.
    async fn keepalive_of(limits: &PoolLimits) -> (bool, Duration, Duration, u32) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let upstream = connector()
            .connect(addr, limits, Speaks::Bytes)
            .await
            .expect("connected");
        let Stream::Tcp(tcp) = upstream.into_stream() else {
            panic!("a loopback address outside the mesh is reached over plain TCP");
        };
        let socket = socket2::SockRef::from(&tcp);
        (
            socket.keepalive().expect("SO_KEEPALIVE"),
            socket.tcp_keepalive_time().expect("TCP_KEEPIDLE"),
            socket.tcp_keepalive_interval().expect("TCP_KEEPINTVL"),
            socket.tcp_keepalive_retries().expect("TCP_KEEPCNT"),
        )
    }

    #[tokio::test]
    async fn tcp_keepalive_reaches_the_upstream_socket() {
        let (on, ..) = keepalive_of(&PoolLimits::default()).await;
        assert!(!on, "keepalive without a tcpKeepalive");
        let limits = PoolLimits {
            tcp_keepalive: Some(Keepalive {
                time: Some(Duration::from_secs(7)),
                interval: Some(Duration::from_secs(3)),
                probes: Some(4),
            }),
            ..PoolLimits::default()
        };
        assert_eq!(
            keepalive_of(&limits).await,
            (true, Duration::from_secs(7), Duration::from_secs(3), 4)
        );
        // Unset timings keep the system's.
        let system = keepalive_of(&PoolLimits {
            tcp_keepalive: Some(Keepalive::default()),
            ..PoolLimits::default()
        })
        .await;
        let (_, time, interval, probes) = keepalive_of(&PoolLimits::default()).await;
        assert_eq!(system, (true, time, interval, probes));
    }
}
