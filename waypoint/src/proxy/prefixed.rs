//! A client's request body, of which the first bytes may have been read
//! ahead (for an external authorizer that wants them) and are sent on
//! first, before the rest streams as it arrives.

use std::{
    collections::VecDeque,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};

pub struct Prefixed {
    /// Frames read ahead, in order; sent first.
    read: VecDeque<Frame<Bytes>>,
    /// The rest; `None` once it ended.
    rest: Option<Incoming>,
}

/// What [`Prefixed::read_ahead`] read.
pub struct Ahead {
    /// At most the bytes asked for.
    pub bytes: Bytes,
    /// Whether that is the whole body.
    pub whole: bool,
}

impl Prefixed {
    pub fn new(body: Incoming) -> Prefixed {
        Prefixed {
            read: VecDeque::new(),
            rest: Some(body),
        }
    }

    /// Reads until `limit` bytes are in or the body ends, within `within`;
    /// what is read stays to be sent on. Reading again starts over from
    /// what is kept.
    pub async fn read_ahead(&mut self, limit: usize, within: Duration) -> Result<Ahead, String> {
        let read = tokio::time::timeout(within, async {
            while self.buffered() < limit {
                let Some(rest) = self.rest.as_mut() else {
                    break;
                };
                if rest.is_end_stream() {
                    self.rest = None;
                    break;
                }
                match rest.frame().await {
                    Some(Ok(frame)) => {
                        let trailers = frame.is_trailers();
                        self.read.push_back(frame);
                        if trailers {
                            self.rest = None;
                        }
                    }
                    Some(Err(error)) => return Err(format!("reading the request body: {error}")),
                    None => self.rest = None,
                }
            }
            Ok(())
        })
        .await;
        match read {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return Err(reason),
            Err(_) => return Err(format!("the request body did not come within {within:?}")),
        }
        let mut bytes = BytesMut::with_capacity(self.buffered().min(limit));
        for data in self.read.iter().filter_map(Frame::data_ref) {
            let room = limit - bytes.len();
            bytes.extend_from_slice(&data[..data.len().min(room)]);
            if bytes.len() == limit {
                break;
            }
        }
        Ok(Ahead {
            whole: self.rest.is_none() && self.buffered() <= limit,
            bytes: bytes.freeze(),
        })
    }

    fn buffered(&self) -> usize {
        self.read
            .iter()
            .filter_map(Frame::data_ref)
            .map(Bytes::len)
            .sum()
    }
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(frame) = this.read.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match this.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let kept = self.buffered() as u64;
        match &self.rest {
            None => SizeHint::with_exact(kept),
            Some(rest) => {
                let hint = rest.size_hint();
                let mut sum = SizeHint::new();
                sum.set_lower(hint.lower() + kept);
                if let Some(upper) = hint.upper() {
                    sum.set_upper(upper + kept);
                }
                sum
            }
        }
    }
}
