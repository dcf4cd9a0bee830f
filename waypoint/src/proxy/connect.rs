//! Opening upstream connections: an HBONE stream to the endpoint's node
//! (mutual TLS as the waypoint's own identity, the endpoint's identity
//! verified), or plain TCP to an endpoint outside the mesh, within the
//! DestinationRule's `tcp.connectTimeout`. The HTTP pools
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
use warren_api::Identity;
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
}

/// Opens upstream connections as the waypoint's identity.
#[derive(Clone)]
pub struct Connector {
    pub inputs: Arc<Inputs>,
    pub identity: Arc<dyn Fn() -> Identity + Send + Sync>,
}

/// How an endpoint is reached. Pooled connections remember theirs, so that
/// a pod joining the mesh (or moving node, or changing identity) is not
/// reached over an old connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// HBONE through the endpoint's node, verifying its identity.
    Hbone { node: IpAddr, expected: Identity },
    /// Plain TCP to an endpoint outside the mesh.
    Plain,
}

impl Connector {
    /// How `authority` is reached now.
    pub fn route(&self, authority: SocketAddr) -> Route {
        let workload = self.inputs.state.workload_by_ip(authority.ip());
        match workload.as_deref() {
            Some(w) if w.hbone => match (&w.identity, w.node_address) {
                (Some(expected), Some(node)) => Route::Hbone {
                    node,
                    expected: expected.clone(),
                },
                _ => Route::Plain,
            },
            _ => Route::Plain,
        }
    }

    /// A byte stream to `authority` within `timeout`: an HBONE tunnel
    /// through the endpoint's node when it is a meshed workload (the
    /// endpoint's answer to the CONNECT included), else plain TCP.
    pub async fn connect(
        &self,
        authority: SocketAddr,
        timeout: Duration,
    ) -> Result<Upstream, ConnectError> {
        self.connect_via(&self.route(authority), authority, timeout)
            .await
    }

    /// As [`Connector::connect`], by a route found before.
    pub async fn connect_via(
        &self,
        route: &Route,
        authority: SocketAddr,
        timeout: Duration,
    ) -> Result<Upstream, ConnectError> {
        tokio::time::timeout(timeout, self.open(route, authority, timeout))
            .await
            .unwrap_or(Err(ConnectError::Timeout {
                addr: authority,
                after: timeout,
            }))
    }

    async fn open(
        &self,
        route: &Route,
        authority: SocketAddr,
        timeout: Duration,
    ) -> Result<Upstream, ConnectError> {
        let state = &self.inputs.state;
        match route {
            Route::Hbone {
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
                Ok(Upstream::Tunnel(TokioIo::new(tunnel)))
            }
            Route::Plain => plain(authority, timeout).await,
        }
    }
}

async fn plain(addr: SocketAddr, timeout: Duration) -> Result<Upstream, ConnectError> {
    let stream = warren_ztunnel::proxy::connect(addr, None, timeout)
        .await
        .map_err(|source| match source.kind() {
            io::ErrorKind::TimedOut => ConnectError::Timeout {
                addr,
                after: timeout,
            },
            _ => ConnectError::Tcp { addr, source },
        })?;
    Ok(Upstream::Tcp(TokioIo::new(stream)))
}

/// An upstream byte stream hyper speaks HTTP over.
pub enum Upstream {
    Tunnel(TokioIo<Tunnel>),
    Tcp(TokioIo<tokio::net::TcpStream>),
}

impl Upstream {
    /// The HBONE connection a tunnel runs on, which pools watch for GOAWAY.
    pub fn carrier(&self) -> Option<Carrier> {
        match self {
            Upstream::Tunnel(io) => io.inner().carrier(),
            Upstream::Tcp(_) => None,
        }
    }
}

macro_rules! delegate {
    ($self:ident, $io:ident => $call:expr) => {
        match $self.get_mut() {
            Upstream::Tunnel($io) => {
                let $io = Pin::new($io);
                $call
            }
            Upstream::Tcp($io) => {
                let $io = Pin::new($io);
                $call
            }
        }
    };
}

impl hyper::rt::Read for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl hyper::rt::Write for Upstream {
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
