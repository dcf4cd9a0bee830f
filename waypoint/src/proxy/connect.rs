//! Opening upstream connections: an HBONE stream to the endpoint's node
//! (mutual TLS as the waypoint's own identity, the endpoint's identity
//! verified), or plain TCP to an endpoint outside the mesh. For HTTP/1.1,
//! hyper's client pools what this opens, per endpoint address, so
//! keep-alive requests reuse one stream; [`retire_after`] takes a connection
//! out of the pool once it has carried `http.maxRequestsPerConnection`
//! requests. HTTP/2 has a pool of its own ([`super::multiplex`]).

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    task::{Context, Poll},
};

use http::{Response, Uri};
use hyper_util::{
    client::legacy::connect::{CaptureConnection, Connected, Connection},
    rt::TokioIo,
};
use warren_api::Identity;
use warren_ztunnel::proxy::{
    Inputs,
    hbone::{
        Tunnel,
        client::{Establish, HboneError},
    },
    pool::PoolKey,
};

/// Why an upstream connection could not be made (retryable as
/// `connect-failure`).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("upstream URI {0} has no ip:port authority")]
    BadAuthority(Uri),
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
}

/// Why an upstream request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection (HTTP/2: shared by the requests that waited for it).
    #[error(transparent)]
    Connect(Arc<ConnectError>),
    /// Over an HTTP/2 connection.
    #[error(transparent)]
    Request(hyper::Error),
    /// Through hyper's pooling HTTP/1.1 client.
    #[error(transparent)]
    Pooled(hyper_util::client::legacy::Error),
}

/// The connector hyper's client calls for a new upstream connection.
#[derive(Clone)]
pub struct Connector {
    pub inputs: Arc<Inputs>,
    pub identity: Arc<dyn Fn() -> Identity + Send + Sync>,
}

impl Connector {
    async fn open(self, uri: Uri) -> Result<Upstream, ConnectError> {
        let authority: SocketAddr = uri
            .authority()
            .and_then(|a| a.as_str().parse().ok())
            .ok_or_else(|| ConnectError::BadAuthority(uri.clone()))?;
        self.connect(authority).await
    }

    /// A byte stream to `authority`: an HBONE tunnel through the endpoint's
    /// node when it is a meshed workload, else plain TCP.
    pub async fn connect(&self, authority: SocketAddr) -> Result<Upstream, ConnectError> {
        let state = &self.inputs.state;
        let workload = state.workload_by_ip(authority.ip());
        match workload.as_deref() {
            Some(w) if w.hbone => {
                let (Some(expected), Some(node_address)) = (w.identity.clone(), w.node_address)
                else {
                    return plain(authority, &self.inputs).await;
                };
                let source = (self.identity)();
                let cert = state
                    .certificate(&source)
                    .ok_or_else(|| ConnectError::NoCertificate(source.clone()))?;
                let trust = state.trust_bundle().ok_or(ConnectError::NoTrustBundle)?;
                let key = PoolKey {
                    source,
                    gateway: SocketAddr::new(node_address, self.inputs.config.hbone_port),
                    expected,
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
            _ => plain(authority, &self.inputs).await,
        }
    }
}

async fn plain(addr: SocketAddr, inputs: &Inputs) -> Result<Upstream, ConnectError> {
    let stream = warren_ztunnel::proxy::connect(addr, None, inputs.config.connect_timeout)
        .await
        .map_err(|source| ConnectError::Tcp { addr, source })?;
    Ok(Upstream::Tcp(TokioIo::new(stream)))
}

impl tower_service::Service<Uri> for Connector {
    type Response = Upstream;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Upstream, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().open(uri))
    }
}

/// An upstream byte stream hyper speaks HTTP over.
pub enum Upstream {
    Tunnel(TokioIo<Tunnel>),
    Tcp(TokioIo<tokio::net::TcpStream>),
}

impl Connection for Upstream {
    fn connected(&self) -> Connected {
        // hyper asks once per new connection and hands a clone of this
        // `Connected` (the same counter) to every response the connection
        // carries.
        Connected::new().extra(Served::default())
    }
}

/// How many answers a pooled connection has carried.
#[derive(Clone, Debug, Default)]
struct Served(Arc<AtomicU32>);

/// Counts `response` against its connection and, once that connection has
/// carried `limit` requests, poisons it: hyper's pool hands it to no further
/// request and closes it when idle (`http.maxRequestsPerConnection`).
/// Counted at the answer's headers: exact over HTTP/1.1, where a connection
/// carries one request at a time; over HTTP/2 requests already in flight on
/// the connection still finish on it.
pub fn retire_after<B>(limit: u32, response: &Response<B>, captured: &CaptureConnection) {
    let Some(served) = response.extensions().get::<Served>() else {
        return;
    };
    let count = served.0.fetch_add(1, Ordering::AcqRel).saturating_add(1);
    if count >= limit
        && let Some(connected) = captured.connection_metadata().as_ref()
    {
        connected.poison();
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
