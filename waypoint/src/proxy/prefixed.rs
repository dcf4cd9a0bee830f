//! A client's request body, of which the first bytes may have been read
//! ahead (for an external authorizer that wants them) and are sent on
//! first, before the rest streams as it arrives.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};

pub struct Prefixed<B> {
    /// What was read ahead, in one piece (a body sent in many small frames
    /// costs no more to keep than one sent whole); sent first.
    read: BytesMut,
    /// Trailers read ahead: the body ended with them.
    trailers: Option<HeaderMap>,
    /// The rest; `None` once it ended.
    rest: Option<B>,
}

/// What [`Prefixed::read_ahead`] read.
#[derive(Debug)]
pub struct Ahead {
    /// At most the bytes asked for.
    pub bytes: Bytes,
    /// Whether that is the whole body.
    pub whole: bool,
}

impl<B> Prefixed<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    pub fn new(body: B) -> Prefixed<B> {
        Prefixed {
            read: BytesMut::new(),
            trailers: None,
            rest: Some(body),
        }
    }

    /// Reads until more than `limit` bytes are in or the body ends, within
    /// `within` (one byte past the limit tells a body of exactly `limit`
    /// from a longer one). What is read stays, to be sent on; reading
    /// again goes on from there.
    pub async fn read_ahead(&mut self, limit: usize, within: Duration) -> Result<Ahead, String> {
        let read = tokio::time::timeout(within, async {
            while self.read.len() <= limit {
                let Some(rest) = self.rest.as_mut() else {
                    break;
                };
                if rest.is_end_stream() {
                    self.rest = None;
                    break;
                }
                match rest.frame().await {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => self.read.extend_from_slice(&data),
                        Err(frame) => {
                            // Trailers end the body.
                            self.trailers = frame.into_trailers().ok();
                            self.rest = None;
                        }
                    },
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
        if self.rest.as_ref().is_some_and(Body::is_end_stream) {
            self.rest = None;
        }
        let whole = self.rest.is_none() && self.read.len() <= limit;
        let bytes = Bytes::copy_from_slice(&self.read[..self.read.len().min(limit)]);
        Ok(Ahead { bytes, whole })
    }
}

impl<B> Body for Prefixed<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if !this.read.is_empty() {
            return Poll::Ready(Some(Ok(Frame::data(this.read.split().freeze()))));
        }
        if let Some(trailers) = this.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        match this.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty()
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let kept = self.read.len() as u64;
        match &self.rest {
            None => SizeHint::with_exact(kept),
            Some(rest) => {
                let hint = rest.size_hint();
                let mut sum = SizeHint::new();
                sum.set_lower(hint.lower().saturating_add(kept));
                if let Some(upper) = hint.upper() {
                    sum.set_upper(upper.saturating_add(kept));
                }
                sum
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::{Full, StreamBody};

    use super::*;

    type Frames =
        StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

    fn frames(parts: &[&'static str], trailers: bool) -> Frames {
        let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        if trailers {
            let mut map = HeaderMap::new();
            map.insert("grpc-status", http::HeaderValue::from_static("0"));
            frames.push(Ok(Frame::trailers(map)));
        }
        StreamBody::new(futures::stream::iter(frames))
    }

    async fn all<B: Body<Data = Bytes> + Unpin>(body: B) -> (Bytes, Option<HeaderMap>)
    where
        B::Error: std::fmt::Debug,
    {
        let collected = body.collect().await.expect("collects");
        let trailers = collected.trailers().cloned();
        (collected.to_bytes(), trailers)
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn a_body_of_exactly_the_limit_is_whole() {
        let mut body = Prefixed::new(Full::new(Bytes::from_static(b"0123456789abcdef")));
        let ahead = body.read_ahead(16, SECOND).await.expect("reads");
        assert!(ahead.whole);
        assert_eq!(ahead.bytes.as_ref(), b"0123456789abcdef");
        assert_eq!(body.size_hint().exact(), Some(16));
        assert_eq!(all(body).await.0.as_ref(), b"0123456789abcdef");
    }

    #[tokio::test]
    async fn a_longer_body_is_cut_for_the_check_and_sent_whole() {
        let mut body = Prefixed::new(frames(&["ab", "cd", "ef", "gh"], true));
        let ahead = body.read_ahead(3, SECOND).await.expect("reads");
        assert!(!ahead.whole);
        assert_eq!(ahead.bytes.as_ref(), b"abc");
        // A second, larger read goes on from what is kept.
        let ahead = body.read_ahead(100, SECOND).await.expect("reads");
        assert!(ahead.whole);
        assert_eq!(ahead.bytes.as_ref(), b"abcdefgh");
        let (bytes, trailers) = all(body).await;
        assert_eq!(bytes.as_ref(), b"abcdefgh");
        assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
    }

    #[tokio::test]
    async fn many_small_frames_are_kept_as_one() {
        let parts: Vec<&'static str> = std::iter::repeat_n("x", 5000).collect();
        let mut body = Prefixed::new(frames(&parts, false));
        let ahead = body.read_ahead(10_000, SECOND).await.expect("reads");
        assert!(ahead.whole);
        assert_eq!(ahead.bytes.len(), 5000);
        assert_eq!(body.size_hint().exact(), Some(5000));
        assert_eq!(all(body).await.0.len(), 5000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out() {
        let stalled =
            StreamBody::new(futures::stream::pending::<Result<Frame<Bytes>, Infallible>>());
        let mut body = Prefixed::new(stalled);
        let error = body.read_ahead(10, SECOND).await.expect_err("times out");
        assert!(error.contains("did not come within"), "{error}");
    }
}
