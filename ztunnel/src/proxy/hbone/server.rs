//! The HBONE server's connection handling: mutual TLS with a deadline, the peer's SPIFFE
//! identity, then HTTP/2 whose requests [`crate::proxy::inbound`] answers.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::{debug, warn};
use warren_api::Identity;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::{
    drain,
    proxy::{Inputs, reset},
    tls,
};

const DIRECTION: &str = "inbound";

/// Who is at the other end of an HBONE connection, as TLS proved it.
#[derive(Clone, Debug)]
pub struct Peer {
    pub identity: Identity,
    pub addr: SocketAddr,
}

/// Answers one CONNECT of an HBONE connection: ztunnel's inbound relays it to a
/// pod, a waypoint serves HTTP inside it.
pub trait ConnectHandler: Clone + Send + Sync + 'static {
    fn handle(
        &self,
        request: Request<Incoming>,
        peer: Arc<Peer>,
        drain: drain::Watch,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send;
}

/// Serves one accepted TCP connection on the HBONE port.
pub async fn serve(
    inputs: Arc<Inputs>,
    stream: TcpStream,
    addr: SocketAddr,
    mut drain: drain::Watch,
    handler: impl ConnectHandler,
) {
    let config = match inputs.server_tls.current() {
        Ok(config) => config,
        Err(error) => {
            warn!(peer = %addr, %error, "refusing HBONE: no TLS configuration yet");
            inputs.metrics.refuse(DIRECTION, "no_trust_bundle");
            reset(stream);
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let tls = match tokio::time::timeout(
        inputs.config.tls_handshake_timeout,
        acceptor.accept(stream),
    )
    .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            warn!(peer = %addr, %error, "HBONE TLS handshake failed");
            inputs.metrics.refuse(DIRECTION, "tls_handshake");
            return;
        }
        Err(_) => {
            warn!(peer = %addr, timeout = ?inputs.config.tls_handshake_timeout, "HBONE TLS handshake timed out");
            inputs.metrics.refuse(DIRECTION, "tls_handshake_timeout");
            return;
        }
    };
    // The verifier already required a SPIFFE identity of our trust domain; read it back.
    let identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(tls::identity_of);
    let identity = match identity {
        Some(Ok(identity)) => identity,
        other => {
            warn!(peer = %addr, error = ?other.map(|r| r.err()), "HBONE peer has no identity after TLS");
            inputs.metrics.refuse(DIRECTION, "no_peer_identity");
            return;
        }
    };
    debug!(peer = %addr, %identity, "HBONE connection");
    let peer = Arc::new(Peer { identity, addr });

    let seen_request = Arc::new(AtomicBool::new(false));
    let service = {
        let peer = Arc::clone(&peer);
        let drain = drain.clone();
        let seen_request = Arc::clone(&seen_request);
        hyper::service::service_fn(move |request| {
            seen_request.store(true, Ordering::Release);
            let handler = handler.clone();
            let peer = Arc::clone(&peer);
            let drain = drain.clone();
            async move { Ok::<_, Infallible>(handler.handle(request, peer, drain).await) }
        })
    };
    let config = &inputs.config;
    let connection = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(config.stream_window)
        .initial_connection_window_size(config.connection_window)
        .max_frame_size(config.frame_size)
        .max_send_buf_size(config.stream_window as usize)
        // Above the clients' per-connection bound, so the client's pool decides.
        .max_concurrent_streams(
            u32::try_from(config.pool_max_streams.saturating_mul(2))
                .unwrap_or(u32::MAX)
                .max(100),
        )
        .max_header_list_size(16 << 10)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(tls), service);
    let mut connection = std::pin::pin!(connection);

    // A peer that completes TLS and then sends nothing is cut off after the header
    // timeout; a drain asks the peer to go away (GOAWAY) and lets streams finish.
    let header_deadline = tokio::time::sleep(config.connect_header_timeout);
    let mut header_deadline = std::pin::pin!(header_deadline);
    let mut draining = false;
    let mut deadline = drain.clone();
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    debug!(peer = %addr, %error, "HBONE connection ended with an error");
                }
                return;
            }
            () = &mut header_deadline, if !seen_request.load(Ordering::Acquire) => {
                if !seen_request.load(Ordering::Acquire) {
                    warn!(peer = %addr, identity = %peer.identity, "HBONE peer sent no CONNECT in time; closing");
                    inputs.metrics.refuse(DIRECTION, "connect_header_timeout");
                    return;
                }
            }
            () = drain.draining(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            () = deadline.forced() => return,
        }
    }
}
