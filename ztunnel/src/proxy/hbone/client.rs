//! The HBONE client: a TLS connection to a peer ztunnel with HTTP/2 on top, and CONNECT
//! streams opened on it.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tracing::{Instrument as _, debug};
use warren_api::Identity;

use super::{FORWARDED, Tunnel};
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
    Http2 {
        addr: SocketAddr,
        source: hyper::Error,
    },
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

/// Shared by a pooled connection and its streams: how many are open, since when idle.
#[derive(Debug)]
pub struct Usage {
    streams: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Usage {
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

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
    }
}

/// One HTTP/2 connection to a peer.
pub struct Connection {
    sender: http2::SendRequest<Empty<Bytes>>,
    usage: Arc<Usage>,
    max_streams: usize,
    peer: SocketAddr,
}

impl Connection {
    /// Takes a stream slot if the connection is alive and not full.
    pub fn try_reserve(&self) -> Option<StreamGuard> {
        if self.sender.is_closed() {
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
        self.sender.is_closed()
    }

    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// Opens a CONNECT stream to `authority`, telling the peer the original source.
    pub async fn open(
        &self,
        guard: StreamGuard,
        authority: SocketAddr,
        source: Option<IpAddr>,
        timeout: Duration,
    ) -> Result<Tunnel, HboneError> {
        let mut sender = self.sender.clone();
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
        let request = request.body(Empty::new()).map_err(|e| HboneError::Status {
            authority,
            status: StatusCode::BAD_REQUEST,
            reason: format!("building the CONNECT: {e}"),
        })?;
        let exchange = async {
            sender
                .ready()
                .await
                .map_err(|source| HboneError::Http2 { addr: peer, source })?;
            sender
                .send_request(request)
                .await
                .map_err(|source| HboneError::Http2 { addr: peer, source })
        };
        let response = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| HboneError::ConnectTimeout(authority))??;
        let status = response.status();
        if status != StatusCode::OK {
            // The peer says why in the body; read a little of it, briefly.
            let body = Limited::new(response.into_body(), 1024);
            let reason = match tokio::time::timeout(Duration::from_secs(1), body.collect()).await {
                Ok(Ok(collected)) => String::from_utf8_lossy(&collected.to_bytes())
                    .trim()
                    .to_owned(),
                _ => String::new(),
            };
            return Err(HboneError::Status {
                authority,
                status,
                reason,
            });
        }
        let upgraded = hyper::upgrade::on(response)
            .await
            .map_err(|source| HboneError::Http2 { addr: peer, source })?;
        Ok(Tunnel::new(upgraded, Some(guard)))
    }
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
        connector.connect(tls::server_name_for(expected), tcp),
    )
    .await
    .map_err(|_| HboneError::TlsTimeout(gateway))?
    .map_err(|source| HboneError::Tls {
        addr: gateway,
        source,
    })?;

    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(config.stream_window)
        .initial_connection_window_size(config.connection_window)
        .max_frame_size(config.frame_size)
        .max_send_buf_size(config.stream_window as usize)
        .initial_max_send_streams(config.pool_max_streams)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(tls))
        .await
        .map_err(|source| HboneError::Http2 {
            addr: gateway,
            source,
        })?;
    // The connection task ends when the peer goes away or every sender (the pool's and
    // the streams') is dropped and no stream is open.
    tokio::spawn(
        async move {
            if let Err(error) = connection.await {
                debug!(%error, "HBONE connection ended with an error");
            }
        }
        .instrument(tracing::debug_span!("hbone_client", peer = %gateway)),
    );
    Ok(Connection {
        sender,
        usage: Arc::new(Usage {
            streams: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }),
        max_streams: config.pool_max_streams.max(1),
        peer: gateway,
    })
}
