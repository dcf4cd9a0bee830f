//! One proxied connection: relaying bytes both ways, counting them, and reporting it once
//! (metrics and the access log line) however it ends.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use warren_api::Identity;

use super::{
    hbone::{Tunnel, client::HboneError},
    revocation::Admitted,
};
use crate::{
    drain,
    metrics::{ConnectionLabels, Metrics},
};

/// Counts the bytes read through it.
pub struct Counting<S> {
    inner: S,
    pub read: u64,
}

impl<S> Counting<S> {
    pub fn new(inner: S) -> Self {
        Counting { inner, read: 0 }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.read += n as u64;
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counting<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// How a relay went: bytes of the request (from the client) and of the response (from
/// the destination), and why it ended if not cleanly.
pub struct Relayed {
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub error: Option<String>,
    /// An early-sending tunnel's CONNECT failed: the connection never reached its
    /// destination, and the client was reset.
    pub failed_connect: Option<HboneError>,
    /// The tunnel's CONNECT went again on another connection: its peer went away
    /// before taking it.
    pub sent_again: bool,
    /// Closed because the policies in force came to refuse it.
    pub revoked: bool,
}

/// Copies both ways until both directions have ended. An EOF on one side shuts down the
/// other's writing (half-close) and the answer keeps flowing. Cut when the drain deadline
/// passes, or when the policies come to refuse an `admitted` connection.
pub async fn relay<D, U>(
    downstream: D,
    upstream: U,
    buffer: usize,
    drain: &mut drain::Watch,
    admitted: Option<&mut Admitted>,
) -> Relayed
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut down = Counting::new(downstream);
    let mut up = Counting::new(upstream);
    let mut revoked = false;
    let error = tokio::select! {
        result = tokio::io::copy_bidirectional_with_sizes(&mut down, &mut up, buffer, buffer) => {
            result.err().map(|e| e.to_string())
        }
        () = drain.forced() => Some("cut at the drain deadline".to_owned()),
        why = refused(admitted) => {
            revoked = true;
            Some(why)
        }
    };
    Relayed {
        request_bytes: down.read,
        response_bytes: up.read,
        error,
        failed_connect: None,
        sent_again: false,
        revoked,
    }
}

/// Why the policies came to refuse an admitted connection, once they do.
async fn refused(admitted: Option<&mut Admitted>) -> String {
    match admitted {
        Some(admitted) => admitted.revoked().await,
        None => std::future::pending().await,
    }
}

/// Which end of the connection the tunnel is, for [`relay_tunnel`]'s counts.
#[derive(Clone, Copy)]
pub enum TunnelEnd {
    /// The client came in over HBONE (inbound).
    Downstream,
    /// The destination is reached over HBONE (outbound).
    Upstream,
}

/// [`relay`] between a socket and an HBONE tunnel, without copying the bytes in
/// between ([`Tunnel::splice`]).
pub async fn relay_tunnel(
    socket: TcpStream,
    tunnel: Tunnel,
    end: TunnelEnd,
    buffer: usize,
    drain: &mut drain::Watch,
    admitted: Option<&mut Admitted>,
) -> Relayed {
    let mut counted = (0, 0);
    let mut failed_connect = None;
    let mut sent_again = false;
    let mut revoked = false;
    let error = tokio::select! {
        spliced = tunnel.splice(socket, buffer) => {
            counted = (spliced.to_tunnel, spliced.from_tunnel);
            failed_connect = spliced.failed_connect;
            sent_again = spliced.sent_again;
            spliced.error.map(|e| e.to_string())
        }
        () = drain.forced() => Some("cut at the drain deadline".to_owned()),
        why = refused(admitted) => {
            revoked = true;
            Some(why)
        }
    };
    // (bytes from the socket, bytes from the tunnel)
    let (from_socket, from_tunnel) = counted;
    let (request_bytes, response_bytes) = match end {
        TunnelEnd::Upstream => (from_socket, from_tunnel),
        TunnelEnd::Downstream => (from_tunnel, from_socket),
    };
    Relayed {
        request_bytes,
        response_bytes,
        error,
        failed_connect,
        sent_again,
        revoked,
    }
}

/// What the access log says of a connection.
pub struct AccessLog {
    pub direction: &'static str,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub src_identity: Option<Identity>,
    pub dst_identity: Option<Identity>,
    pub dst_service: Option<String>,
    /// How it was carried: `hbone`, `direct` (same node), `plain`, `passthrough`.
    pub path: &'static str,
}

impl AccessLog {
    /// The line of a connection refused before it was opened (the refusal
    /// metric counts it; the connection metrics never saw it).
    pub fn refused(&self, reason: &str) {
        self.write(0, 0, Duration::ZERO, "refused", Some(reason));
    }

    /// `bytes_received` is the request's, `bytes_sent` the response's, as in
    /// Envoy's access log and Istio's TCP metrics.
    fn write(
        &self,
        request: u64,
        response: u64,
        duration: Duration,
        outcome: &str,
        reason: Option<&str>,
    ) {
        tracing::info!(
            target: "access",
            direction = self.direction,
            src = %self.src,
            dst = %self.dst,
            src_identity = self.src_identity.as_ref().map(tracing::field::display),
            dst_identity = self.dst_identity.as_ref().map(tracing::field::display),
            dst_service = self.dst_service.as_deref(),
            path = self.path,
            bytes_sent = response,
            bytes_received = request,
            duration_ms = duration.as_millis() as u64,
            outcome,
            reason,
            "connection complete"
        );
    }
}

/// Reports a connection that was opened: counted now, closed and logged exactly once,
/// by [`Report::finish`] or, if the task is cancelled, on drop.
pub struct Report<'m> {
    metrics: &'m Metrics,
    labels: Vec<ConnectionLabels>,
    log: AccessLog,
    started: Instant,
    done: bool,
}

impl<'m> Report<'m> {
    /// `labels`: one set per reporter (a same-node connection reports as source and as
    /// destination).
    pub fn open(metrics: &'m Metrics, labels: Vec<ConnectionLabels>, log: AccessLog) -> Self {
        for l in &labels {
            metrics.opened.get_or_create(l).inc();
        }
        Report {
            metrics,
            labels,
            log,
            started: Instant::now(),
            done: false,
        }
    }

    pub fn finish(mut self, relayed: &Relayed) {
        self.record(
            relayed.request_bytes,
            relayed.response_bytes,
            relayed.error.as_deref().map_or("ok", |_| "error"),
            relayed.error.as_deref(),
        );
    }

    /// The connection failed before any byte was relayed.
    pub fn fail(mut self, reason: &str) {
        self.record(0, 0, "refused", Some(reason));
    }

    fn record(&mut self, request: u64, response: u64, outcome: &str, reason: Option<&str>) {
        if self.done {
            return;
        }
        self.done = true;
        for l in &self.labels {
            self.metrics.closed.get_or_create(l).inc();
            // Istio's meaning, whichever side reports: `sent` is the response's
            // bytes, `received` the request's.
            self.metrics.sent.get_or_create(l).inc_by(response);
            self.metrics.received.get_or_create(l).inc_by(request);
        }
        let duration = self.started.elapsed();
        self.log.write(request, response, duration, outcome, reason);
    }
}

impl Drop for Report<'_> {
    fn drop(&mut self) {
        self.record(0, 0, "cancelled", Some("the connection task ended early"));
    }
}
