//! A request body read once from the client and sent by every attempt and
//! mirror, as it arrives.
//!
//! Bodies stream: an upload or a client-streaming gRPC call reaches the
//! upstream as the client sends it, whatever its size (buffering it whole
//! first would stall a bidirectional stream, and refuse large uploads). What
//! has been read is kept, up to a limit, so that a retry (or a mirror that
//! lags behind) can send it again and then go on with the rest; past the
//! limit the kept part is dropped and readers behind cannot go on: the
//! request can no longer be retried (Envoy's behaviour with its retry buffer).
//!
//! Only the request's current attempt pulls frames from the client; every
//! other reader (a mirror, an earlier attempt still held by its connection)
//! reads what it pulled. So no copy can drag the body past the limit ahead
//! of the attempt that answers, nor an abandoned attempt ahead of its
//! retry: whatever the mirrors do, the answering upstream gets every byte.
//! Once the request has its answer and its attempt is done with the body, a
//! mirror still sending may pull the rest itself.

use std::{
    error::Error as StdError,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt as _, combinators::BoxBody};
use hyper::body::{Body, Frame, SizeHint};

pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Why a reader cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("the request body went past the {0}-byte retry buffer: it cannot be sent again")]
    NotKept(usize),
    #[error("reading the request body from the client: {0}")]
    Client(String),
}

/// The client's body and what has been read of it.
pub struct Source {
    state: Mutex<State>,
    /// Most bytes kept for replay.
    limit: usize,
    /// The whole body's length, when the client said it.
    exact: Option<u64>,
    /// Bytes read from the client so far (shared with the request's report,
    /// which outlives the kept frames).
    bytes_read: ReadCount,
    /// When the client's body ended (or failed): the route's timeout starts
    /// then, as Envoy's does.
    complete: tokio::sync::watch::Sender<Option<tokio::time::Instant>>,
}

/// The bytes read from a client's body so far.
#[derive(Clone, Default)]
pub struct ReadCount(Arc<AtomicU64>);

impl ReadCount {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Who may pull the next frame from the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Puller {
    /// The attempt with this number, the request's current one.
    Attempt(u32),
    /// Before the first attempt and between two: nobody.
    Nobody,
    /// The request has its answer and its attempt is done with the body.
    Anyone,
}

/// What a reader sends the body for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Attempt(u32),
    Mirror,
}

struct State {
    /// The client's body; `None` once it ended or failed.
    incoming: Option<BoxBody<Bytes, BoxError>>,
    /// The data frames read so far, while they fit the limit.
    kept: Vec<Bytes>,
    kept_bytes: usize,
    /// Data frames read so far, kept or not.
    frames_read: usize,
    trailers: Option<HeaderMap>,
    ended: bool,
    /// Something was read that is not kept: lagging readers cannot go on.
    overflowed: bool,
    error: Option<String>,
    /// Readers waiting for the next frame (whoever gets it wakes them).
    waiting: Vec<Waker>,
    puller: Puller,
    /// Attempts started so far.
    attempts: u32,
    /// The request has its answer: no attempt follows.
    settled: bool,
}

impl Source {
    pub fn new<B>(body: B, limit: usize) -> Arc<Source>
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let exact = body.size_hint().exact();
        Arc::new(Source {
            state: Mutex::new(State {
                incoming: Some(body.map_err(Into::into).boxed()),
                kept: Vec::new(),
                kept_bytes: 0,
                frames_read: 0,
                trailers: None,
                ended: false,
                overflowed: false,
                error: None,
                waiting: Vec::new(),
                puller: Puller::Nobody,
                attempts: 0,
                settled: false,
            }),
            limit,
            exact,
            bytes_read: ReadCount::default(),
            complete: tokio::sync::watch::Sender::new(None),
        })
    }

    /// When the client's whole body had been read (or failed), once it has.
    pub async fn completed_at(&self) -> tokio::time::Instant {
        let mut complete = self.complete.subscribe();
        // The sender lives as long as `self`, so `wait_for` cannot fail.
        match complete.wait_for(Option::is_some).await {
            Ok(at) => at.unwrap_or_else(tokio::time::Instant::now),
            Err(_) => tokio::time::Instant::now(),
        }
    }

    fn mark_complete(&self) {
        self.complete.send_if_modified(|at| {
            let first = at.is_none();
            at.get_or_insert_with(tokio::time::Instant::now);
            first
        });
    }

    /// A reader from the first byte for the request's next attempt, which
    /// from now on is the one that pulls from the client.
    pub fn attempt(self: &Arc<Self>) -> Replay {
        let mut state = self.lock();
        state.attempts += 1;
        let number = state.attempts;
        if !state.settled {
            state.puller = Puller::Attempt(number);
        }
        // Readers waiting for the earlier attempt cannot count on it.
        wake_all(&mut state);
        self.reader(Role::Attempt(number))
    }

    /// A reader from the first byte for a mirror: it sends what the
    /// request's attempts pulled.
    pub fn mirror(self: &Arc<Self>) -> Replay {
        self.reader(Role::Mirror)
    }

    fn reader(self: &Arc<Self>, role: Role) -> Replay {
        Replay {
            source: Arc::clone(self),
            role,
            next: 0,
            read: 0,
            trailers_sent: false,
        }
    }

    /// Whether a new reader can still send the whole body.
    pub fn replayable(&self) -> bool {
        let state = self.lock();
        !state.overflowed && state.error.is_none()
    }

    /// Readies a retry: the last attempt (its answer is in) stops pulling, so
    /// that nothing is read past what the retry can replay. False, and
    /// nothing changed, when the body can no longer be sent whole.
    pub fn hold_for_retry(&self) -> bool {
        let mut state = self.lock();
        if state.overflowed || state.error.is_some() || state.settled {
            return false;
        }
        state.puller = Puller::Nobody;
        true
    }

    /// The request has its answer (or gave up): no attempt follows. Once the
    /// last attempt's reader is gone, mirrors may pull the rest themselves.
    pub fn settle(&self) {
        let mut state = self.lock();
        state.settled = true;
        if state.puller == Puller::Nobody {
            state.puller = Puller::Anyone;
            wake_all(&mut state);
        }
    }

    /// A guard that settles the body when dropped, however the request ends.
    pub fn settling(self: &Arc<Self>) -> Settling {
        Settling(Arc::clone(self))
    }

    /// Bytes read from the client so far, as a counter that outlives this.
    pub fn read_count(&self) -> ReadCount {
        self.bytes_read.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing under this lock panics.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Settles its body when dropped (see [`Source::settle`]).
pub struct Settling(Arc<Source>);

impl Drop for Settling {
    fn drop(&mut self) {
        self.0.settle();
    }
}

/// One attempt's (or mirror's) view of the body.
pub struct Replay {
    source: Arc<Source>,
    role: Role,
    /// The next data frame this reader sends.
    next: usize,
    read: u64,
    trailers_sent: bool,
}

impl Replay {
    fn may_pull(&self, state: &State) -> bool {
        match state.puller {
            Puller::Anyone => true,
            Puller::Nobody => false,
            Puller::Attempt(number) => self.role == Role::Attempt(number),
        }
    }
}

impl Body for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let source = Arc::clone(&this.source);
        let mut state = source.lock();
        loop {
            if this.next < state.frames_read {
                // Read by another reader already: from what was kept.
                let Some(data) = state
                    .kept
                    .get(this.next)
                    .cloned()
                    .filter(|_| !state.overflowed)
                else {
                    return Poll::Ready(Some(Err(ReplayError::NotKept(source.limit).into())));
                };
                this.next += 1;
                this.read += data.len() as u64;
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if let Some(error) = &state.error {
                return Poll::Ready(Some(Err(ReplayError::Client(error.clone()).into())));
            }
            if state.ended {
                return match state.trailers.clone().filter(|_| !this.trailers_sent) {
                    Some(trailers) => {
                        this.trailers_sent = true;
                        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                    }
                    None => Poll::Ready(None),
                };
            }
            if !this.may_pull(&state) {
                // Whoever pulls the next frame (or hands the pulling on)
                // wakes this one.
                register(&mut state, cx.waker());
                return Poll::Pending;
            }
            let Some(incoming) = state.incoming.as_mut() else {
                state.ended = true;
                continue;
            };
            match Pin::new(incoming).poll_frame(cx) {
                Poll::Pending => {
                    // Another reader may be the one whose waker the client's
                    // body holds: whoever reads the frame wakes this one.
                    register(&mut state, cx.waker());
                    return Poll::Pending;
                }
                Poll::Ready(None) => {
                    state.ended = true;
                    state.incoming = None;
                    source.mark_complete();
                }
                Poll::Ready(Some(Err(error))) => {
                    state.error = Some(error.to_string());
                    state.incoming = None;
                    source.mark_complete();
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        state.frames_read += 1;
                        source
                            .bytes_read
                            .0
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                        if !state.overflowed && state.kept_bytes + data.len() <= source.limit {
                            state.kept_bytes += data.len();
                            state.kept.push(data);
                        } else {
                            // Past the limit: nothing kept is of use any more.
                            state.overflowed = true;
                            state.kept = Vec::new();
                            state.kept_bytes = 0;
                            // This reader sends it; `next` moves past it.
                            this.next = state.frames_read;
                            this.read += data.len() as u64;
                            wake_all(&mut state);
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            state.trailers = Some(trailers);
                        }
                        state.ended = true;
                        state.incoming = None;
                        source.mark_complete();
                    }
                },
            }
            wake_all(&mut state);
        }
    }

    fn is_end_stream(&self) -> bool {
        let state = self.source.lock();
        state.ended
            && state.error.is_none()
            && self.next >= state.frames_read
            && (state.trailers.is_none() || self.trailers_sent)
    }

    fn size_hint(&self) -> SizeHint {
        match self.source.exact {
            Some(total) => SizeHint::with_exact(total.saturating_sub(self.read)),
            None => SizeHint::default(),
        }
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        let mut state = self.source.lock();
        // The current attempt is done with the body: a retry may follow,
        // else mirrors go on by themselves.
        if let Role::Attempt(number) = self.role
            && state.puller == Puller::Attempt(number)
        {
            state.puller = if state.settled {
                Puller::Anyone
            } else {
                Puller::Nobody
            };
        }
        // The client's body may hold this reader's waker: the others must
        // poll again, so one of them registers its own.
        wake_all(&mut state);
    }
}

fn register(state: &mut State, waker: &Waker) {
    if !state.waiting.iter().any(|w| w.will_wake(waker)) {
        state.waiting.push(waker.clone());
    }
}

fn wake_all(state: &mut State) {
    for waker in state.waiting.drain(..) {
        waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::BodyExt as _;
    use tokio::sync::mpsc;

    use super::*;

    /// A client body fed frame by frame by the test.
    struct Fed {
        frames: mpsc::UnboundedReceiver<Result<Frame<Bytes>, std::io::Error>>,
        exact: Option<u64>,
    }

    impl Body for Fed {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            self.frames.poll_recv(cx)
        }

        fn size_hint(&self) -> SizeHint {
            self.exact
                .map_or_else(SizeHint::default, SizeHint::with_exact)
        }
    }

    type Feed = mpsc::UnboundedSender<Result<Frame<Bytes>, std::io::Error>>;

    fn fed(limit: usize, exact: Option<u64>) -> (Feed, Arc<Source>) {
        let (tx, frames) = mpsc::unbounded_channel();
        (tx, Source::new(Fed { frames, exact }, limit))
    }

    fn data(text: &'static str) -> Result<Frame<Bytes>, std::io::Error> {
        Ok(Frame::data(Bytes::from_static(text.as_bytes())))
    }

    async fn next_data(reader: &mut Replay) -> Bytes {
        let frame = tokio::time::timeout(Duration::from_secs(2), reader.frame())
            .await
            .expect("a frame in time")
            .expect("not the end")
            .expect("not an error");
        frame.into_data().expect("a data frame")
    }

    #[tokio::test]
    async fn frames_stream_as_they_arrive_and_a_retry_replays_them_with_the_trailers() {
        let (feed, source) = fed(1024, Some(10));
        let mut first = source.attempt();
        assert_eq!(first.size_hint().exact(), Some(10));
        feed.send(data("hello")).unwrap();
        // The first frame is sent before the client has sent the rest.
        assert_eq!(next_data(&mut first).await, "hello");
        assert_eq!(first.size_hint().exact(), Some(5));
        feed.send(data("world")).unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        feed.send(Ok(Frame::trailers(trailers.clone()))).unwrap();
        drop(feed);
        assert_eq!(next_data(&mut first).await, "world");
        let last = first.frame().await.expect("trailers").expect("no error");
        assert_eq!(last.into_trailers().ok(), Some(trailers.clone()));
        assert!(first.frame().await.is_none());
        assert!(first.is_end_stream());

        assert!(source.hold_for_retry());
        assert_eq!(source.read_count().get(), 10);
        let again = source.attempt().collect().await.expect("replayed");
        assert_eq!(again.trailers(), Some(&trailers));
        assert_eq!(again.to_bytes(), "helloworld");
    }

    #[tokio::test]
    async fn past_the_limit_the_attempt_goes_on_and_no_retry_can() {
        let (feed, source) = fed(8, None);
        let mut front = source.attempt();
        feed.send(data("12345")).unwrap();
        assert_eq!(next_data(&mut front).await, "12345");
        assert!(source.replayable(), "5 bytes fit the 8 kept");
        feed.send(data("6789")).unwrap();
        assert_eq!(next_data(&mut front).await, "6789");
        assert!(!source.replayable(), "9 bytes do not");
        assert!(!source.hold_for_retry());
        let lagging = source.mirror().frame().await.expect("an answer");
        assert!(
            lagging.is_err_and(|e| e.to_string().contains("retry buffer")),
            "a retry cannot send what was not kept"
        );
        feed.send(data("more")).unwrap();
        drop(feed);
        assert_eq!(next_data(&mut front).await, "more");
        assert!(front.frame().await.is_none());
        assert_eq!(source.read_count().get(), 13);
    }

    #[tokio::test]
    async fn readers_waiting_together_all_get_every_frame() {
        let (feed, source) = fed(1024, None);
        let read_all = |mut reader: Replay| {
            tokio::spawn(async move {
                let mut all = Vec::new();
                while let Some(frame) = reader.frame().await {
                    all.extend_from_slice(&frame.expect("no error").into_data().expect("data"));
                }
                all
            })
        };
        // The mirror waits first: it gets what the attempt pulls.
        let b = read_all(source.mirror());
        tokio::time::sleep(Duration::from_millis(20)).await;
        let a = read_all(source.attempt());
        for chunk in ["a", "bb", "ccc"] {
            tokio::time::sleep(Duration::from_millis(20)).await;
            feed.send(data(chunk)).unwrap();
        }
        drop(feed);
        for reader in [a, b] {
            let got = tokio::time::timeout(Duration::from_secs(2), reader)
                .await
                .expect("every reader is woken")
                .expect("no panic");
            assert_eq!(got, b"abbccc");
        }
    }

    #[tokio::test]
    async fn a_mirror_goes_on_by_itself_once_the_answered_attempt_is_gone() {
        let (feed, source) = fed(1024, None);
        let mut dropped = source.attempt();
        // It polls first: the client's body holds its waker.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), dropped.frame())
                .await
                .is_err()
        );
        let mut stays = source.mirror();
        let waiting = tokio::spawn(async move { next_data(&mut stays).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        source.settle();
        drop(dropped);
        feed.send(data("late")).unwrap();
        assert_eq!(waiting.await.expect("no panic"), "late");
    }

    #[tokio::test]
    async fn a_client_that_fails_mid_body_fails_every_reader_and_any_retry() {
        let (feed, source) = fed(1024, None);
        let mut reader = source.attempt();
        feed.send(data("part")).unwrap();
        assert_eq!(next_data(&mut reader).await, "part");
        feed.send(Err(std::io::Error::other("client reset")))
            .unwrap();
        let failed = reader.frame().await.expect("an answer");
        assert!(failed.is_err_and(|e| e.to_string().contains("client reset")));
        assert!(!source.replayable());
        assert!(!source.hold_for_retry());
    }

    /// Whether `reader` has a frame to give now.
    async fn pending(reader: &mut Replay) -> bool {
        tokio::time::timeout(Duration::from_millis(50), reader.frame())
            .await
            .is_err()
    }

    #[tokio::test]
    async fn a_mirror_never_pulls_ahead_so_the_attempt_gets_a_body_past_the_limit() {
        let (feed, source) = fed(8, None);
        // The mirror is first to ask, before the attempt has its connection.
        let mut mirror = source.mirror();
        for chunk in ["1234", "5678", "9abc"] {
            feed.send(data(chunk)).unwrap();
        }
        drop(feed);
        assert!(pending(&mut mirror).await, "a mirror does not pull");
        assert_eq!(source.read_count().get(), 0);
        // The attempt gets every byte, past the 8 kept.
        let whole = source.attempt().collect().await.expect("the whole body");
        assert_eq!(whole.to_bytes(), "123456789abc");
        // The copy fell behind what was kept: it fails, the attempt did not.
        let behind = mirror.frame().await.expect("an answer");
        assert!(behind.is_err_and(|e| e.to_string().contains("retry buffer")));
    }

    #[tokio::test]
    async fn an_attempt_held_for_a_retry_pulls_nothing_more() {
        let (feed, source) = fed(8, None);
        let mut first = source.attempt();
        feed.send(data("1234")).unwrap();
        assert_eq!(next_data(&mut first).await, "1234");
        assert!(source.hold_for_retry());
        // Its connection still polls it: it must not read past what the
        // retry can replay.
        feed.send(data("56789")).unwrap();
        assert!(pending(&mut first).await, "the earlier attempt pulled");
        let mut retry = source.attempt();
        assert_eq!(next_data(&mut retry).await, "1234");
        assert_eq!(next_data(&mut retry).await, "56789");
        drop(feed);
        assert!(retry.frame().await.is_none());
        // The abandoned attempt is behind what was kept.
        assert!(first.frame().await.expect("an answer").is_err());
    }
}
