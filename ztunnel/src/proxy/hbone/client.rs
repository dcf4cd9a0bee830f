//! The HBONE client: a TLS connection to a peer ztunnel with HTTP/2 on top, and CONNECT
//! streams opened on it.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use tracing::{Instrument as _, debug};
use warren_api::Identity;

use super::{FORWARDED, Tunnel, keepalive};
use crate::{
    config::Config,
    proxy::connect as tcp_connect,
    tls::{self, TrustBundle, WorkloadCertificate},
};

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake with {0} timed out")]
    TlsTimeout(SocketAddr),
    #[error("TLS setup: {0}")]
    TlsConfig(#[from] tls::TlsError),
    #[error("HTTP/2 with {addr}: {source}")]
    Http2 { addr: SocketAddr, source: h2::Error },
    #[error("the CONNECT to {0} got no answer in time")]
    ConnectTimeout(SocketAddr),
    #[error("the peer answered the CONNECT to {authority} with {status}: {reason}")]
    Status {
        authority: SocketAddr,
        status: StatusCode,
        reason: String,
    },
    #[error("no certificate for source identity {0}")]
    NoCertificate(Identity),
    #[error("no trust bundle")]
    NoTrustBundle,
}

impl HboneError {
    /// Whether the peer refused the stream without processing it, so that it may be
    /// sent again elsewhere, early bytes and all (RFC 9113 §8.7): the peer went away
    /// gracefully before the stream's id (a GOAWAY whose last stream is below it), or
    /// refused the stream outright (REFUSED_STREAM). h2 gives a stream the GOAWAY's
    /// error only when its id is above the last one the peer took.
    pub fn unprocessed(&self) -> bool {
        let HboneError::Http2 { source, .. } = self else {
            return false;
        };
        source.is_remote()
            && match source.reason() {
                Some(h2::Reason::NO_ERROR) => source.is_go_away(),
                Some(h2::Reason::REFUSED_STREAM) => source.is_reset(),
                _ => false,
            }
    }

    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            HboneError::Connect { .. } => "hbone_connect",
            HboneError::Tls { .. } | HboneError::TlsTimeout(_) => "hbone_tls",
            HboneError::TlsConfig(_) | HboneError::NoTrustBundle => "tls_config",
            HboneError::Http2 { .. } | HboneError::ConnectTimeout(_) => "hbone_http2",
            HboneError::Status { status, .. } if *status == StatusCode::FORBIDDEN => {
                "hbone_forbidden"
            }
            HboneError::Status { .. } => "hbone_status",
            HboneError::NoCertificate(_) => "no_certificate",
        }
    }
}

/// One pooled connection as its pool and its streams share it: how many streams are
/// open, since when it is idle, and whether it still takes streams. The connection
/// closes once this is gone (the last handle on h2's side) and no stream is open.
#[derive(Debug)]
pub struct Usage {
    streams: AtomicUsize,
    idle_since: Mutex<Instant>,
    sender: SendRequest<Bytes>,
    /// Set by the connection's task when it ends (peer gone, GOAWAY done, keepalive),
    /// or once the connection is seen to refuse new streams; never unset.
    closed: Arc<AtomicBool>,
}

/// The HBONE connection a client tunnel runs on, as its tunnel sees it.
///
/// A pool of connections carried by tunnels (the waypoint's upstream pools) asks it
/// before reusing one: once the peer has sent GOAWAY (it is draining, e.g. handing its
/// node over to a new ztunnel) the carried connection finishes what it carries and is
/// not reused, so the peer's drain ends with the requests in flight instead of cutting
/// kept-alive connections at its deadline. It does not keep the connection open.
#[derive(Clone, Debug)]
pub struct Carrier(Weak<Usage>);

impl Carrier {
    /// Whether the connection takes new streams: open, and no GOAWAY received.
    pub fn accepts_streams(&self) -> bool {
        self.0.upgrade().is_some_and(|usage| usage.takes_streams())
    }
}

impl Usage {
    /// Whether the connection takes new streams; a refusal is remembered in `closed`,
    /// so asking again costs an atomic load.
    fn takes_streams(&self) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        // A fresh handle has no stream pending, so this only reads h2's connection
        // state (an error once a GOAWAY or a failure arrived, or stream ids run out)
        // and registers no waker.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let takes = matches!(
            self.sender.clone().poll_ready(&mut cx),
            std::task::Poll::Ready(Ok(()))
        );
        if !takes {
            self.closed.store(true, Ordering::Release);
        }
        takes
    }

    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::Acquire)
    }

    pub fn idle_for(&self) -> Duration {
        self.idle_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }
}

/// A stream slot on a connection, given back on drop.
#[derive(Debug)]
pub struct StreamGuard(Arc<Usage>);

impl StreamGuard {
    pub fn carrier(&self) -> Carrier {
        Carrier(Arc::downgrade(&self.0))
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
    }
}

/// One HTTP/2 connection to a peer.
pub struct Connection {
    usage: Arc<Usage>,
    max_streams: usize,
    peer: SocketAddr,
}

impl Connection {
    /// Takes a stream slot if the connection is alive and not full.
    pub fn try_reserve(&self) -> Option<StreamGuard> {
        if self.is_closed() {
            return None;
        }
        self.usage
            .streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_streams).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamGuard(Arc::clone(&self.usage)))
    }

    pub fn is_closed(&self) -> bool {
        self.usage.closed.load(Ordering::Acquire)
    }

    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// Opens a CONNECT stream to `authority`, telling the peer the original source.
    ///
    /// With [`Establish::AwaitAnswer`] this returns once the peer answered 200; with
    /// [`Establish::SendEarly`] as soon as the request is queued, and the tunnel checks
    /// the answer before its first received byte (see [`Establish`]).
    pub async fn open(
        &self,
        guard: StreamGuard,
        authority: SocketAddr,
        source: Option<IpAddr>,
        timeout: Duration,
        establish: Establish,
    ) -> Result<Tunnel, HboneError> {
        let peer = self.peer;
        let mut request = Request::builder()
            .method(Method::CONNECT)
            .uri(authority.to_string());
        if let Some(ip) = source {
            let value = match ip {
                IpAddr::V4(v4) => format!("for={v4}"),
                IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
            };
            request = request.header(FORWARDED, value);
        }
        let request = request.body(()).map_err(|e| HboneError::Status {
            authority,
            status: StatusCode::BAD_REQUEST,
            reason: format!("building the CONNECT: {e}"),
        })?;
        // A stream refused before it was sent may mean the connection takes no more:
        // the peer sent GOAWAY (it is draining, e.g. handing its node over to a new
        // ztunnel) or the connection failed. Then it leaves the pool at once, so the
        // pool's retry does not find it again.
        let refused = |source| {
            if !self.usage.takes_streams() {
                debug!(%peer, "the HBONE connection takes no more streams; retired");
            }
            HboneError::Http2 { addr: peer, source }
        };
        let started = tokio::time::Instant::now();
        // A fresh handle has no stream pending: this returns at once, with the
        // connection's error if it has one. (Streams over the peer's limit wait in h2,
        // inside the answer's deadline.)
        let mut sender = tokio::time::timeout(timeout, self.usage.sender.clone().ready())
            .await
            .map_err(|_| HboneError::ConnectTimeout(authority))?
            .map_err(refused)?;
        let (response, send) = sender.send_request(request, false).map_err(refused)?;
        let answer = answer(response, authority, peer, started + timeout);
        match establish {
            Establish::AwaitAnswer => Ok(Tunnel::new(send, answer.await?, Some(guard))),
            Establish::SendEarly => Ok(Tunnel::early(send, Box::pin(answer), guard)),
        }
    }
}

/// When a tunnel may carry bytes: after the peer's 200, or at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Establish {
    /// Wait for the answer: a refusal is an error of the open itself, before any byte of
    /// the caller's was taken (the waypoint's retries tell connect failures apart so).
    AwaitAnswer,
    /// Send at once and check the answer before the first received byte. Saves a
    /// round trip between the ztunnels on every new connection (the client's first bytes
    /// travel with the CONNECT); the peer holds them in the stream's window, and drops
    /// them if it refuses, so nothing reaches a destination that policy denies.
    SendEarly,
}

/// The peer's answer to a CONNECT: its stream once it said 200, else why not.
async fn answer(
    response: h2::client::ResponseFuture,
    authority: SocketAddr,
    peer: SocketAddr,
    deadline: tokio::time::Instant,
) -> Result<h2::RecvStream, HboneError> {
    let response = tokio::time::timeout_at(deadline, response)
        .await
        .map_err(|_| HboneError::ConnectTimeout(authority))?
        .map_err(|source| HboneError::Http2 { addr: peer, source })?;
    let (head, mut recv) = response.into_parts();
    if head.status != StatusCode::OK {
        // The peer says why in the body; read a little of it, briefly.
        let reason = tokio::time::timeout(Duration::from_secs(1), read_reason(&mut recv))
            .await
            .unwrap_or_default();
        return Err(HboneError::Status {
            authority,
            status: head.status,
            reason,
        });
    }
    Ok(recv)
}

/// The first KiB of a refusal's body, as text.
async fn read_reason(recv: &mut h2::RecvStream) -> String {
    const LIMIT: usize = 1024;
    let mut reason = Vec::new();
    while reason.len() < LIMIT {
        match recv.data().await {
            Some(Ok(chunk)) => {
                let _ = recv.flow_control().release_capacity(chunk.len());
                reason.extend_from_slice(&chunk[..chunk.len().min(LIMIT - reason.len())]);
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&reason).trim().to_owned()
}

/// Connects to `gateway`, proves `source`'s identity, requires `expected` from the peer,
/// and starts HTTP/2.
pub async fn connect(
    config: &Config,
    gateway: SocketAddr,
    source: &WorkloadCertificate,
    trust: &TrustBundle,
    expected: &Identity,
) -> Result<Connection, HboneError> {
    let tls_config = tls::client_config(source, trust, expected.clone())?;
    let tcp = tcp_connect(gateway, config.socket_mark(), config.connect_timeout)
        .await
        .map_err(|source| HboneError::Connect {
            addr: gateway,
            source,
        })?;
    let connector = tokio_rustls::TlsConnector::from(tls_config);
    let tls = tokio::time::timeout(
        config.tls_handshake_timeout,
        connector.connect(tls::server_name_for(expected), super::wire(tcp)),
    )
    .await
    .map_err(|_| HboneError::TlsTimeout(gateway))?
    .map_err(|source| HboneError::Tls {
        addr: gateway,
        source,
    })?;

    let (sender, mut connection) = h2::client::Builder::new()
        .initial_window_size(config.stream_window)
        .initial_connection_window_size(config.connection_window)
        .max_frame_size(config.frame_size)
        .max_send_buffer_size(config.stream_window as usize)
        .initial_max_send_streams(config.pool_max_streams)
        .enable_push(false)
        .handshake::<_, Bytes>(tls)
        .await
        .map_err(|source| HboneError::Http2 {
            addr: gateway,
            source,
        })?;
    // The connection task ends when the peer goes away, stops answering PINGs, or the
    // sender (in the `Usage` the pool and the streams share) is dropped and no stream
    // is open.
    let closed = Arc::new(AtomicBool::new(false));
    let ping_pong = connection.ping_pong();
    let task_closed = Arc::clone(&closed);
    tokio::spawn(
        async move {
            tokio::select! {
                result = &mut connection => if let Err(error) = result {
                    debug!(%error, "HBONE connection ended with an error");
                },
                reason = keepalive::watch(ping_pong) => {
                    debug!(%reason, "HBONE peer went silent; closing the connection");
                }
            }
            task_closed.store(true, Ordering::Release);
        }
        .instrument(tracing::debug_span!("hbone_client", peer = %gateway)),
    );
    Ok(Connection {
        usage: Arc::new(Usage {
            streams: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            sender,
            closed,
        }),
        max_streams: config.pool_max_streams.max(1),
        peer: gateway,
    })
}
