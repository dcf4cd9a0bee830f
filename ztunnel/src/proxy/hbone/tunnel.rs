//! One CONNECT stream as a byte stream (`AsyncRead` + `AsyncWrite`), for either end.
//!
//! Flow control is HTTP/2's, end to end: a write takes only the send capacity the peer
//! has granted, so a slow reader at the far end holds the writer here back instead of
//! piling bytes up in memory; received bytes are credited back to the peer only once
//! read, so a tunnel nobody reads holds at most one stream window.

use std::{
    future::{Future, poll_fn},
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf as _, Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::TcpStream,
    sync::Notify,
};

use tracing::debug;

use super::client::{Carrier, HboneError, StreamGuard};

/// The peer's answer to an early-sending CONNECT, still to come.
pub(super) type Answer = Pin<Box<dyn Future<Output = Result<RecvStream, HboneError>> + Send>>;

/// Opens the same CONNECT again, on another connection, for an early-sending tunnel
/// whose stream the peer refused without processing it (see [`HboneError::unprocessed`]).
pub type Reopen =
    Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Result<Tunnel, HboneError>> + Send>> + Send>;

/// The receiving half: open, or waiting for the answer to the CONNECT.
enum Recv {
    Open(RecvStream),
    /// The answer to come, and how to send the stream again if the peer went away
    /// before it (only [`Tunnel::splice`] does; reads through `AsyncRead` fail then).
    Awaiting(Answer, Option<Reopen>),
    /// The answer was a refusal (already reported to the reader).
    Refused,
}

pub struct Tunnel {
    send: SendStream<Bytes>,
    recv: Recv,
    /// Received and not yet read.
    unread: Bytes,
    /// END_STREAM sent: our half is closed.
    shut: bool,
    /// The pool's count of streams on the connection, for as long as this lives.
    guard: Option<StreamGuard>,
}

impl Tunnel {
    /// The HBONE connection this client tunnel runs on (`None` on the server side).
    pub fn carrier(&self) -> Option<Carrier> {
        self.guard.as_ref().map(StreamGuard::carrier)
    }

    pub(super) fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        guard: Option<StreamGuard>,
    ) -> Self {
        Tunnel {
            send,
            recv: Recv::Open(recv),
            unread: Bytes::new(),
            shut: false,
            guard,
        }
    }

    /// A client's tunnel that sends before the peer answered; reading checks `answer`.
    pub(super) fn early(send: SendStream<Bytes>, answer: Answer, guard: StreamGuard) -> Self {
        Tunnel {
            send,
            recv: Recv::Awaiting(answer, None),
            unread: Bytes::new(),
            shut: false,
            guard: Some(guard),
        }
    }

    /// Whether the tunnel sends before the peer has answered.
    pub fn is_early(&self) -> bool {
        matches!(self.recv, Recv::Awaiting(..))
    }

    /// Gives an early-sending tunnel the way to open its CONNECT again should the peer
    /// go away before taking the stream: a peer handing its node over sends GOAWAY, and
    /// a stream already on its way is then refused unprocessed. What the client sent
    /// early is sent again on the new stream, so the race costs no connection.
    pub fn reopen_with(&mut self, reopen: Reopen) {
        if let Recv::Awaiting(_, slot) = &mut self.recv {
            *slot = Some(reopen);
        }
    }

    /// Relays between `socket` and this tunnel until both directions have ended (an
    /// EOF on one side half-closes the other) or one fails. Unlike a generic copy,
    /// bytes read from the socket go to HTTP/2 as they are, and received DATA frames
    /// are written to the socket as they are: no copy in between, in either direction.
    ///
    /// If an early-sending tunnel's CONNECT fails, the socket is reset (its bytes sent
    /// so far were dropped by the peer) and [`Spliced::failed_connect`] says why.
    pub async fn splice(self, mut socket: TcpStream, buffer: usize) -> Spliced {
        let Tunnel {
            mut send,
            recv,
            unread,
            mut guard,
            ..
        } = self;
        let (mut to_tunnel, mut from_tunnel) = (0u64, 0u64);
        let mut client_done = false;
        let mut sent_again = false;
        let recv = match recv {
            Recv::Open(recv) => recv,
            Recv::Awaiting(answer, reopen) => {
                let early = Early {
                    socket: &mut socket,
                    send: &mut send,
                    guard: &mut guard,
                    buffer,
                };
                match early.await_answer(answer, reopen).await {
                    Ok(answered) => {
                        to_tunnel = answered.sent;
                        client_done = answered.client_done;
                        sent_again = answered.sent_again;
                        answered.recv
                    }
                    Err(failure) => return failure.spliced(socket),
                }
            }
            Recv::Refused => return EarlyFailure::Refused.spliced(socket),
        };
        let _guard = guard;
        let (mut reader, mut writer) = socket.split();
        // Told when the download half is done (a permit is kept if nobody waits).
        let downloaded = Notify::new();
        let result = {
            let up = async {
                let sent = async {
                    if client_done {
                        return Ok(());
                    }
                    let mut buf = BytesMut::with_capacity(buffer);
                    loop {
                        buf.reserve(buffer);
                        let n = reader.read_buf(&mut buf).await?;
                        if n == 0 {
                            return send.send_data(Bytes::new(), true).map_err(to_io_error);
                        }
                        to_tunnel += n as u64;
                        let mut chunk = buf.split().freeze();
                        while !chunk.is_empty() {
                            send.reserve_capacity(chunk.len());
                            let granted = send_capacity(&mut send).await?;
                            let part = chunk.split_to(granted.min(chunk.len()));
                            send.send_data(part, false).map_err(to_io_error)?;
                        }
                    }
                }
                .await;
                match sent {
                    // RFC 9113 §8.1: a peer that has answered in full may stop the
                    // rest of the request with RST_STREAM(NO_ERROR). Its answer stands:
                    // the download carries on to the end. What the client still sends
                    // is read away meanwhile (a client writing all its request before
                    // reading would otherwise block the answer behind it) and for a
                    // moment after: closing with it unread would reset the connection,
                    // and a reset can make the client lose the answer.
                    Err(_) if reset_without_error(&mut send).await => {
                        let mut sink = vec![0u8; 16 * 1024];
                        let drained = async {
                            while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
                        };
                        let enough = async {
                            downloaded.notified().await;
                            tokio::time::sleep(LINGER).await;
                        };
                        tokio::select! {
                            () = drained => {}
                            () = enough => {}
                        }
                        Ok(())
                    }
                    other => other,
                }
            };
            let down = async {
                let done = async {
                    let mut recv = recv;
                    let mut data = unread;
                    loop {
                        if !data.is_empty() {
                            writer.write_all(&data).await?;
                            from_tunnel += data.len() as u64;
                            // Only fails once the stream is gone, and then nothing is owed.
                            let _ = recv.flow_control().release_capacity(data.len());
                        }
                        data = match recv.data().await {
                            Some(Ok(data)) => data,
                            Some(Err(error)) if error.reason() != Some(Reason::NO_ERROR) => {
                                return Err(to_io_error(error));
                            }
                            // END_STREAM (or a peer done with the whole stream).
                            _ => return writer.shutdown().await,
                        };
                    }
                }
                .await;
                downloaded.notify_one();
                done
            };
            tokio::try_join!(up, down)
        };
        Spliced {
            to_tunnel,
            from_tunnel,
            error: result.err(),
            failed_connect: None,
            sent_again,
        }
    }

    /// Why the stream can no longer be written to.
    fn closed_error(&mut self, cx: &mut Context<'_>) -> io::Error {
        match self.send.poll_reset(cx) {
            Poll::Ready(Ok(reason)) => reset_error(reason),
            Poll::Ready(Err(error)) => to_io_error(error),
            Poll::Pending => {
                io::Error::new(io::ErrorKind::BrokenPipe, "the HBONE stream is closed")
            }
        }
    }
}

/// A splice of an early-sending tunnel until the peer's answer: the client's first
/// read goes out with the CONNECT, and the rest waits for the answer. The peer holds
/// early bytes unread until it has reached the destination, and a stream filling its
/// window with them would hold back the connection's others.
struct Early<'a> {
    socket: &'a mut TcpStream,
    send: &'a mut SendStream<Bytes>,
    guard: &'a mut Option<StreamGuard>,
    buffer: usize,
}

/// The peer answered: its stream, what went to it before, and whether the client
/// had finished sending by then.
struct Answered {
    recv: RecvStream,
    sent: u64,
    client_done: bool,
    /// On another connection than the first (see [`Tunnel::reopen_with`]).
    sent_again: bool,
}

enum EarlyFailure {
    /// The CONNECT failed: nothing reached the destination.
    Connect(HboneError),
    /// The answer was a refusal already reported (to a reader through `AsyncRead`).
    Refused,
    /// The client's socket failed first.
    Client(io::Error),
}

impl EarlyFailure {
    /// How the splice went: nothing relayed, and the client's socket reset unless it
    /// failed first (its bytes sent so far were dropped by the peer).
    fn spliced(self, socket: TcpStream) -> Spliced {
        let refused = |reason: String| io::Error::new(io::ErrorKind::ConnectionRefused, reason);
        let (error, failed_connect, reset) = match self {
            EarlyFailure::Connect(error) => (refused(error.to_string()), Some(error), true),
            EarlyFailure::Refused => (
                refused("the peer refused the HBONE CONNECT".into()),
                None,
                true,
            ),
            EarlyFailure::Client(error) => (error, None, false),
        };
        if reset {
            crate::proxy::reset(socket);
        }
        Spliced {
            to_tunnel: 0,
            from_tunnel: 0,
            error: Some(error),
            failed_connect,
            sent_again: false,
        }
    }
}

impl Early<'_> {
    async fn await_answer(
        self,
        mut answer: Answer,
        mut reopen: Option<Reopen>,
    ) -> Result<Answered, EarlyFailure> {
        let mut buf = BytesMut::with_capacity(self.buffer);
        // The first read, kept until the answer in case the stream must be sent again.
        let mut first: Option<Bytes> = None;
        let mut client_done = false;
        let mut sent_again = false;
        loop {
            tokio::select! {
                outcome = &mut answer => match outcome {
                    Ok(recv) => {
                        return Ok(Answered {
                            recv,
                            sent: first.map_or(0, |b| b.len() as u64),
                            client_done,
                            sent_again,
                        });
                    }
                    Err(error) if error.unprocessed() && reopen.is_some() => {
                        debug!(%error, "the peer went away before taking the CONNECT; sending it again");
                        let open_again = reopen.take().ok_or(EarlyFailure::Connect(error))?;
                        let tunnel = open_again().await.map_err(EarlyFailure::Connect)?;
                        *self.send = tunnel.send;
                        *self.guard = tunnel.guard;
                        sent_again = true;
                        // Buffered by h2 beyond the window if need be: one read at most.
                        // (The client's EOF is only read while no byte has come.)
                        let _ = match &first {
                            Some(bytes) => self.send.send_data(bytes.clone(), false),
                            None if client_done => self.send.send_data(Bytes::new(), true),
                            None => Ok(()),
                        };
                        answer = match tunnel.recv {
                            Recv::Open(recv) => Box::pin(std::future::ready(Ok(recv))),
                            Recv::Awaiting(next, again) => {
                                reopen = again;
                                next
                            }
                            // Only a tunnel read through `AsyncRead` gets here, never
                            // a fresh one.
                            Recv::Refused => return Err(EarlyFailure::Refused),
                        };
                    }
                    Err(error) => return Err(EarlyFailure::Connect(error)),
                },
                read = self.socket.read_buf(&mut buf), if first.is_none() && !client_done => {
                    // A send that fails means the stream is gone: the answer says why.
                    match read.map_err(EarlyFailure::Client)? {
                        0 => {
                            client_done = true;
                            let _ = self.send.send_data(Bytes::new(), true);
                        }
                        _ => {
                            let bytes = buf.split().freeze();
                            let _ = self.send.send_data(bytes.clone(), false);
                            first = Some(bytes);
                        }
                    }
                }
            }
        }
    }
}

/// How a [`Tunnel::splice`] went.
#[derive(Debug)]
pub struct Spliced {
    /// Bytes read from the socket and sent into the tunnel.
    pub to_tunnel: u64,
    /// Bytes received from the tunnel and written to the socket.
    pub from_tunnel: u64,
    pub error: Option<io::Error>,
    /// The CONNECT of an early-sending tunnel failed (refused, no answer in time,
    /// or the connection broke first): nothing reached the destination.
    pub failed_connect: Option<HboneError>,
    /// The peer went away before taking the early-sending CONNECT, and it was opened
    /// again on another connection (a hand-over's race, survived).
    pub sent_again: bool,
}

/// Waits until the stream may send at least one byte; how many it may.
async fn send_capacity(send: &mut SendStream<Bytes>) -> io::Result<usize> {
    poll_fn(|cx| {
        loop {
            let available = send.capacity();
            if available > 0 {
                return Poll::Ready(Ok(available));
            }
            // Ready only when capacity grew since the last poll, hence the re-check.
            match ready!(send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(error)) => return Poll::Ready(Err(to_io_error(error))),
                None => {
                    return Poll::Ready(Err(match send.poll_reset(cx) {
                        Poll::Ready(Ok(reason)) => reset_error(reason),
                        _ => {
                            io::Error::new(io::ErrorKind::BrokenPipe, "the HBONE stream is closed")
                        }
                    }));
                }
            }
        }
    })
    .await
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let recv = loop {
            match &mut this.recv {
                Recv::Open(recv) => break recv,
                Recv::Awaiting(answer, _) => match ready!(answer.as_mut().poll(cx)) {
                    Ok(recv) => this.recv = Recv::Open(recv),
                    Err(error) => {
                        this.recv = Recv::Refused;
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::ConnectionRefused,
                            error,
                        )));
                    }
                },
                Recv::Refused => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        "the peer refused the HBONE CONNECT",
                    )));
                }
            }
        };
        while this.unread.is_empty() {
            match ready!(recv.poll_data(cx)) {
                // END_STREAM: the peer finished writing.
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => this.unread = data,
                // A peer that is done with the whole stream may say so with NO_ERROR.
                Some(Err(error)) if error.reason() == Some(Reason::NO_ERROR) => {
                    return Poll::Ready(Ok(()));
                }
                Some(Err(error)) => return Poll::Ready(Err(to_io_error(error))),
            }
        }
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread[..n]);
        this.unread.advance(n);
        // Only fails once the stream is gone, and then nothing is owed.
        let _ = recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        // On top of what is buffered already; h2 assigns what the windows allow.
        this.send.reserve_capacity(buf.len());
        loop {
            let available = this.send.capacity();
            if available > 0 {
                let n = available.min(buf.len());
                this.send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .map_err(to_io_error)?;
                return Poll::Ready(Ok(n));
            }
            // Ready only when capacity grew since the last poll, hence the re-check.
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(error)) => return Poll::Ready(Err(to_io_error(error))),
                None => return Poll::Ready(Err(this.closed_error(cx))),
            }
        }
    }

    /// The connection's task writes frames out as soon as they are queued.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Half-closes: END_STREAM, and the peer's side keeps flowing.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.shut {
            this.shut = true;
            if let Err(error) = this.send.send_data(Bytes::new(), true) {
                return Poll::Ready(Err(match error.reason() {
                    Some(reason) => reset_error(reason),
                    None => this.closed_error(cx),
                }));
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// How long, after the answer, a client that keeps sending after the peer
/// stopped its request is read and ignored before the connection closes.
const LINGER: Duration = Duration::from_secs(2);

/// Whether the peer reset the stream with NO_ERROR (it has answered and wants
/// no more of the request).
async fn reset_without_error(send: &mut SendStream<Bytes>) -> bool {
    poll_fn(|cx| match send.poll_reset(cx) {
        Poll::Ready(Ok(reason)) => Poll::Ready(reason == Reason::NO_ERROR),
        // Not reset (some other failure), or the connection is gone.
        _ => Poll::Ready(false),
    })
    .await
}

fn reset_error(reason: Reason) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        format!("the peer reset the HBONE stream ({reason})"),
    )
}

fn to_io_error(error: h2::Error) -> io::Error {
    if error.is_io() {
        match error.into_io() {
            Some(io) => io,
            None => io::Error::other("HBONE connection I/O error"),
        }
    } else if let Some(reason) = error.reason().filter(|_| error.is_remote()) {
        reset_error(reason)
    } else {
        io::Error::other(error)
    }
}

#[cfg(test)]
mod tests {
    use http::{Method, Request, Response};
    use tokio::net::TcpListener;

    use super::*;

    const MIB: usize = 1 << 20;

    /// A peer that answers in full before reading the request, then stops the
    /// rest of it with RST_STREAM(NO_ERROR), as the waypoint refusing an
    /// oversized request does (RFC 9113 §8.1). Its window is small and never
    /// credited, so the client's upload is blocked when the reset comes. The
    /// client writes all of its request before reading: the answer only gets
    /// through if what it still sends is read away meanwhile.
    #[tokio::test]
    async fn an_answer_before_a_no_error_reset_reaches_the_client() {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(async move {
            let mut connection = h2::server::Builder::new()
                .initial_window_size(1024)
                .handshake::<_, Bytes>(server_io)
                .await
                .expect("server handshake");
            let (request, mut respond) = connection
                .accept()
                .await
                .expect("a stream")
                .expect("no error");
            let mut send = respond
                .send_response(Response::new(()), false)
                .expect("response");
            send.send_data(Bytes::from(vec![b'a'; 8 * MIB]), true)
                .expect("data");
            // Done with the stream while the request still streams in: h2 follows
            // the answer with RST_STREAM(NO_ERROR).
            drop((request, respond, send));
            // Keep the connection going until the client is done with it.
            while let Some(next) = connection.accept().await {
                drop(next);
            }
        });
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(16 * MIB as u32)
            .initial_connection_window_size(16 * MIB as u32)
            .handshake(client_io)
            .await
            .expect("client handshake");
        tokio::spawn(connection);
        let mut sender = sender.ready().await.expect("ready");
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri("10.0.0.1:80")
            .body(())
            .expect("request");
        let (response, send) = sender.send_request(request, false).expect("sent");
        let recv = response.await.expect("an answer").into_body();
        let tunnel = Tunnel::new(send, recv, None);

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut app = TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        let (socket, _) = listener.accept().await.expect("accept");
        let spliced = tokio::spawn(tunnel.splice(socket, 16 * 1024));
        let client = async {
            app.write_all(&vec![b'x'; 8 * MIB]).await?;
            app.shutdown().await?;
            let mut answer = Vec::new();
            app.read_to_end(&mut answer).await.map(|_| answer)
        };
        let answer = tokio::time::timeout(Duration::from_secs(10), client)
            .await
            .expect("the client got through")
            .expect("no reset");
        assert_eq!(answer.len(), 8 * MIB);
        assert!(answer.iter().all(|b| *b == b'a'));
        let spliced = spliced.await.expect("splice");
        assert!(spliced.error.is_none(), "{:?}", spliced.error);
        assert_eq!(spliced.from_tunnel, 8 * MIB as u64);
        server.abort();
    }
}
