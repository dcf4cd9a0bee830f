//! The HBONE server's connection handling: mutual TLS with a deadline, the peer's SPIFFE
//! identity, then HTTP/2 whose requests [`crate::proxy::inbound`] answers.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use h2::{RecvStream, server::SendResponse};
use http::{Request, Response, StatusCode};
use tokio::net::TcpStream;
use tracing::{Instrument as _, debug, warn};
use warren_api::Identity;

use super::{Tunnel, keepalive};
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

/// Answers one CONNECT of an HBONE connection, on a task of its own: ztunnel's inbound
/// relays it to a pod, a waypoint serves HTTP inside it. The handler either refuses the
/// stream or accepts it and then uses the tunnel until it is done.
pub trait ConnectHandler: Clone + Send + Sync + 'static {
    fn handle(
        &self,
        request: Request<()>,
        stream: Stream,
        peer: Arc<Peer>,
        drain: drain::Watch,
    ) -> impl Future<Output = ()> + Send;
}

/// A request's stream, not yet answered. Dropped unanswered, it is reset.
pub struct Stream {
    respond: SendResponse<Bytes>,
    recv: RecvStream,
}

impl Stream {
    /// Answers 200 and hands the stream over as a tunnel.
    pub fn accept(mut self) -> Result<Tunnel, h2::Error> {
        let send = self.respond.send_response(Response::new(()), false)?;
        Ok(Tunnel::new(send, self.recv, None))
    }

    /// Answers `status` with `reason` as the body, and ends the stream.
    pub fn refuse(mut self, status: StatusCode, reason: String) {
        let mut response = Response::new(());
        *response.status_mut() = status;
        let sent = match self.respond.send_response(response, reason.is_empty()) {
            Ok(mut send) if !reason.is_empty() => send.send_data(Bytes::from(reason), true),
            Ok(_) => Ok(()),
            Err(error) => Err(error),
        };
        if let Err(error) = sent {
            debug!(%error, "the refusal could not be sent: the stream is gone");
        }
    }
}

/// The streams of one connection being answered, and since when there has been none.
#[derive(Default)]
struct Streams {
    state: std::sync::Mutex<(usize, Option<Instant>)>,
}

/// One open stream; dropping it closes it.
struct OpenStream(Arc<Streams>);

impl Streams {
    fn open(this: &Arc<Streams>) -> OpenStream {
        let mut state = this.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0 += 1;
        state.1 = None;
        OpenStream(Arc::clone(this))
    }

    /// How long the connection has had no stream, if it has none (counted from the
    /// first check when it never had one).
    fn idle_for(&self) -> Option<Duration> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.0 > 0 {
            return None;
        }
        Some(state.1.get_or_insert_with(Instant::now).elapsed())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0 = state.0.saturating_sub(1);
        if state.0 == 0 {
            state.1 = Some(Instant::now());
        }
    }
}

/// The server side of the TLS handshake. The certificate the client asks for (by
/// server name) may not be here yet: a pod new to this node gets its certificate
/// moments after the agent publishes it, and a peer that learned of the pod at the
/// same time can connect first. The handshake then waits for it, up to
/// `--catch-up-wait` (within the handshake's own limit), instead of failing. Only
/// for a name of a workload on this node: a client asking for anything else, before
/// it has proved who it is, is refused at once.
async fn handshake<IO>(
    inputs: &Inputs,
    config: Arc<rustls::ServerConfig>,
    io: IO,
) -> std::io::Result<tokio_rustls::server::TlsStream<IO>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let start =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
    if let Some(name) = start.client_hello().server_name().map(str::to_owned) {
        use crate::tls::CertificateSource as _;
        let wanted = |state: &crate::state::State| state.server_certificate(Some(&name));
        if wanted(&inputs.state).is_none() && inputs.state.serves_server_name(&name) {
            debug!(server_name = %name, "HBONE: waiting for the certificate asked for");
            inputs
                .state
                .wait_for(inputs.config.catch_up_wait, wanted)
                .await;
        }
    }
    start.into_stream(config).await
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
    let tls = match tokio::time::timeout(
        inputs.config.tls_handshake_timeout,
        handshake(&inputs, config, super::wire(stream)),
    )
    .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            let reason = tls::handshake_refusal(&error);
            warn!(peer = %addr, reason, %error, "HBONE TLS handshake failed");
            inputs.metrics.refuse(DIRECTION, reason);
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

    let config = &inputs.config;
    let handshake = h2::server::Builder::new()
        .initial_window_size(config.stream_window)
        .initial_connection_window_size(config.connection_window)
        .max_frame_size(config.frame_size)
        .max_send_buffer_size(config.stream_window as usize)
        // Above the clients' per-connection bound, so the client's pool decides.
        .max_concurrent_streams(
            u32::try_from(config.pool_max_streams.saturating_mul(2))
                .unwrap_or(u32::MAX)
                .max(100),
        )
        .max_header_list_size(16 << 10)
        .handshake::<_, Bytes>(tls);
    // A peer that completes TLS and then sends nothing (not even the HTTP/2 preface, or
    // no CONNECT after it) is cut off after the header timeout.
    let header_deadline = tokio::time::sleep(config.connect_header_timeout);
    let mut header_deadline = std::pin::pin!(header_deadline);
    let mut connection = tokio::select! {
        result = handshake => match result {
            Ok(connection) => connection,
            Err(error) => {
                warn!(peer = %addr, identity = %peer.identity, %error, "HBONE peer did not start HTTP/2");
                inputs.metrics.refuse(DIRECTION, "http2_handshake");
                return;
            }
        },
        () = &mut header_deadline => {
            warn!(peer = %addr, identity = %peer.identity, "HBONE peer sent no HTTP/2 preface in time; closing");
            inputs.metrics.refuse(DIRECTION, "connect_header_timeout");
            return;
        }
    };
    let keepalive = keepalive::watch(connection.ping_pong());
    let mut keepalive = std::pin::pin!(keepalive);

    // Each stream is answered on a task of its own; this task drives the connection.
    // A drain asks the peer to go away (GOAWAY) and lets streams finish, as does a
    // connection left without a stream for `hbone_idle_timeout`.
    let mut seen_request = false;
    let mut draining = false;
    let mut deadline = drain.clone();
    let streams = Arc::new(Streams::default());
    let idle = config.hbone_idle_timeout;
    let mut idle_check = tokio::time::interval((idle / 4).max(Duration::from_millis(10)));
    loop {
        tokio::select! {
            next = connection.accept() => match next {
                Some(Ok((request, respond))) => {
                    seen_request = true;
                    let (head, recv) = request.into_parts();
                    let stream = Stream { respond, recv };
                    let handler = handler.clone();
                    let peer = Arc::clone(&peer);
                    let drain = drain.clone();
                    let open = Streams::open(&streams);
                    tokio::spawn(
                        async move {
                            handler
                                .handle(Request::from_parts(head, ()), stream, peer, drain)
                                .await;
                            drop(open);
                        }
                        .in_current_span(),
                    );
                }
                Some(Err(error)) => {
                    debug!(peer = %addr, %error, "HBONE connection ended with an error");
                    return;
                }
                None => return,
            },
            () = &mut header_deadline, if !seen_request => {
                warn!(peer = %addr, identity = %peer.identity, "HBONE peer sent no CONNECT in time; closing");
                inputs.metrics.refuse(DIRECTION, "connect_header_timeout");
                return;
            }
            reason = &mut keepalive => {
                debug!(peer = %addr, %reason, "HBONE peer went silent; closing the connection");
                return;
            }
            () = drain.draining(), if !draining => {
                draining = true;
                connection.graceful_shutdown();
            }
            _ = idle_check.tick(), if seen_request && !draining => {
                if streams.idle_for().is_some_and(|quiet| quiet >= idle) {
                    debug!(peer = %addr, identity = %peer.identity, ?idle, "HBONE connection idle; asking the peer to go away");
                    draining = true;
                    connection.graceful_shutdown();
                }
            }
            () = deadline.forced() => return,
        }
    }
}
