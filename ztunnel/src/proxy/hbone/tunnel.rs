//! One CONNECT stream as a byte stream (`AsyncRead` + `AsyncWrite`), for either end.
//!
//! Flow control is HTTP/2's, end to end: a write takes only the send capacity the peer
//! has granted, so a slow reader at the far end holds the writer here back instead of
//! piling bytes up in memory; received bytes are credited back to the peer only once
//! read, so a tunnel nobody reads holds at most one stream window.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf as _, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::client::StreamGuard;

pub struct Tunnel {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received and not yet read.
    unread: Bytes,
    /// END_STREAM sent: our half is closed.
    shut: bool,
    /// The pool's count of streams on the connection, for as long as this lives.
    _guard: Option<StreamGuard>,
}

impl Tunnel {
    pub(super) fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        guard: Option<StreamGuard>,
    ) -> Self {
        Tunnel {
            send,
            recv,
            unread: Bytes::new(),
            shut: false,
            _guard: guard,
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

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.unread.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
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
        let _ = this.recv.flow_control().release_capacity(n);
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
