//! HTTP/2 upstream connections: one per endpoint, shared by every request
//! to it, as Envoy's HTTP/2 connection pool keeps them — or, with
//! `http.maxConcurrentStreams` (or `http.maxRequestsPerConnection`), as many
//! as the requests need, each beyond the first under the cluster's
//! `tcp.maxConnections`. Past it a request waits in the cluster's pending
//! queue (`http1MaxPendingRequests`, as Envoy's `max_pending_requests`) for
//! a stream to end or a place to free, and overflows when the queue is full.
//!
//! The pool is keyed by endpoint and a request keeps its own authority:
//! over HTTP/2 the URI's authority is the `:authority` the server reads (a
//! pool keyed by the URI, as hyper-util's, would send the endpoint's address
//! there instead, which RFC 9113 lets a server refuse next to a `Host`
//! naming the service).
//!
//! A new connection is opened once for all the requests it can take: they
//! wait for the one handshake and share its failure, so a dead endpoint
//! costs one connect attempt, not one per waiting request (a burst larger
//! than a connection takes opens several side by side). A connection
//! leaves the pool when it closes, when it has carried
//! `http.maxRequestsPerConnection` requests, once it is older than
//! `tcp.maxConnectionDuration`, or after sitting unused for
//! `http.idleTimeout`; requests already on it finish (hyper keeps the
//! connection until their streams end). As for HTTP/1.1, the timeouts are
//! those of the request that opened the connection.

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::future::{BoxFuture, FutureExt, Shared};
use http::{Request, Response};
use hyper::{body::Incoming, client::conn::http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::{sync::Notify, time::Instant};
use tracing::debug;

use super::{
    connect::{ConnectError, Connector, Route, SendError},
    lifetime::{InForce, Lifetime, MAX_IDLE_PER_ENDPOINT},
};
use crate::{
    app::Body,
    upstream::{Pool, PoolLimits, Speaks},
};

/// HTTP/2 connections to upstream endpoints.
pub struct Multiplexed {
    connector: Connector,
    endpoints: Endpoints,
    ids: AtomicU64,
}

/// Shared with the handshake tasks, which file their connections.
type Endpoints = Arc<Mutex<HashMap<SocketAddr, Endpoint>>>;

/// An endpoint's connections, and those being opened.
#[derive(Default)]
struct Endpoint {
    open: Vec<Open>,
    opening: Vec<Opening>,
    /// Wakes requests waiting for room on its connections, one per route: a
    /// stream ending on a connection of one route is no room for another's
    /// request, and must not use up the wake-up of the one it is room for.
    freed: Vec<(Route, Arc<Freed>)>,
}

/// A connection being made, and the requests waiting for it: no more than
/// it will take (`maxConcurrentStreams`, `maxRequestsPerConnection`), so a
/// burst opens as many connections at once as it needs, as Envoy counts
/// the stream capacity being connected.
struct Opening {
    id: u64,
    handshake: Handshake,
    /// How it reaches the endpoint: only requests of the same route join it
    /// (another cluster's TLS settings, or their failure, are not theirs).
    route: Route,
    waiting: usize,
    capacity: Option<usize>,
    /// One more than the endpoint's first (it holds a `maxConnections`
    /// place): if it fails, its waiters share the connections there are.
    extra: bool,
}

impl Opening {
    fn has_room(&self) -> bool {
        self.capacity.is_none_or(|c| self.waiting < c)
    }

    fn joinable_by(&self, route: &Route) -> bool {
        self.route == *route && self.has_room()
    }
}

struct Open {
    connection: Connection,
    last_used: Instant,
}

/// A handshake runs in a task of its own, which files the connection in the
/// pool when it is made: requests that gave up waiting neither stall it
/// (a later one would inherit its spent connect timeout) nor leave a made
/// connection outside the pool.
type Handshake = Shared<BoxFuture<'static, Result<Connection, Arc<ConnectError>>>>;

/// How many connections a request waits for (one closing as it is made,
/// newcomers taking its streams first) before it takes a stream beyond the
/// limits on one there is, or gives up.
const MAX_ROUNDS: usize = 4;

/// What a request does next when no pooled connection has room for it.
enum Next {
    /// Wait for this handshake (id, the handshake, whether it is an extra
    /// connection) and take a stream on its connection.
    Join(u64, Handshake, bool),
    /// Wait for a handshake that has waiters enough, for its outcome only.
    Overbooked(Handshake),
    /// Wait in the pending queue until woken.
    Wait(Listening),
    /// Look again at once.
    Again,
}

/// Wakes the requests waiting for room on an endpoint's connections: one per
/// stream that ends, all when a connection is filed or fails.
#[derive(Default)]
struct Freed {
    notify: Arc<Notify>,
    /// Requests listening now (a stream's end wakes none when there are none).
    listening: AtomicUsize,
}

impl Freed {
    /// A stream ended: room for one.
    fn one(&self) {
        if self.listening.load(Ordering::Acquire) > 0 {
            self.notify.notify_one();
        }
    }

    /// A connection was filed or failed: everyone looks again.
    fn all(&self) {
        self.notify.notify_waiters();
    }

    /// Starts listening (to be done before looking for room one last time).
    fn listen(self: &Arc<Self>) -> Listening {
        self.listening.fetch_add(1, Ordering::AcqRel);
        let mut notified = Box::pin(Arc::clone(&self.notify).notified_owned());
        notified.as_mut().enable();
        Listening {
            freed: Arc::clone(self),
            notified,
        }
    }
}

/// One request listening on [`Freed`].
struct Listening {
    freed: Arc<Freed>,
    notified: Pin<Box<tokio::sync::futures::OwnedNotified>>,
}

impl Listening {
    async fn wait(&mut self) {
        self.notified.as_mut().await;
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.freed.listening.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A place for one more connection under the cluster's `maxConnections`,
/// held while the connection is pooled or carries a stream.
pub type ConnectionSlot = tokio::sync::OwnedSemaphorePermit;

#[derive(Clone)]
struct Connection {
    id: u64,
    send: http2::SendRequest<Body>,
    lifetime: Lifetime,
    /// `http.maxConcurrentStreams` of the request that opened it (as the
    /// other settings: connections are pooled per endpoint).
    max_streams: Option<u32>,
    /// Requests given this connection so far. Only changed under the
    /// endpoints lock, so a plain count would do; the connection is cloned
    /// to the requests that wait on its handshake.
    sent: Arc<AtomicU64>,
    /// Streams open on it now, and when the last one ended.
    streams: Arc<Streams>,
    /// Its place under `maxConnections`, when it was one more than the
    /// endpoint's first.
    _slot: Option<Arc<ConnectionSlot>>,
}

struct Streams {
    active: AtomicU32,
    /// Its route's wake-ups (see [`Endpoint::freed`]).
    freed: Arc<Freed>,
    /// When a stream last ended, in microseconds from `base` plus one (0:
    /// none yet; never later than the actual end).
    released_us: AtomicU64,
    base: Instant,
}

impl Streams {
    fn new(base: Instant, freed: Arc<Freed>) -> Self {
        Self {
            active: AtomicU32::new(0),
            freed,
            released_us: AtomicU64::new(0),
            base,
        }
    }

    fn released(&self) -> Option<Instant> {
        let us = self.released_us.load(Ordering::Acquire);
        (us > 0).then(|| self.base + Duration::from_micros(us - 1))
    }
}

impl Connection {
    /// Whether it stays pooled at `now`, last given a stream at
    /// `last_used`: not closed, not past its maximum duration, and — while
    /// it carries no stream — not idle past its idle timeout, counted from
    /// when it was last used or its last stream ended (Envoy's idle timeout
    /// runs only while a connection has no active stream).
    fn keep(&self, last_used: Instant, now: Instant) -> bool {
        if self.send.is_closed() || self.lifetime.retired(now) {
            return false;
        }
        if self.streams.active.load(Ordering::Acquire) > 0 {
            return true;
        }
        let since = self
            .streams
            .released()
            .map_or(last_used, |released| released.max(last_used));
        // Not `fresh`: `retired` was asked above (it may take h2's lock).
        self.lifetime.idle_within(since, now)
    }

    /// Whether it may take one more stream.
    fn has_room(&self) -> bool {
        self.max_streams
            .is_none_or(|limit| self.streams.active.load(Ordering::Acquire) < limit)
    }
}

/// A stream reserved on a connection, for one request.
pub(crate) struct Reserved {
    connection: Connection,
    stream: Stream,
}

/// One stream's place on its connection, held until the answer is done
/// (`http.maxConcurrentStreams` counts it until then). It also holds the
/// connection's `maxConnections` place: a connection that left the pool
/// still counts while it carries streams.
pub struct Stream {
    streams: Arc<Streams>,
    _slot: Option<Arc<ConnectionSlot>>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").finish_non_exhaustive()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let streams = &self.streams;
        let us = u64::try_from(streams.base.elapsed().as_micros()).unwrap_or(u64::MAX - 1) + 1;
        // Concurrent ends: the latest wins.
        streams.released_us.fetch_max(us, Ordering::AcqRel);
        streams.active.fetch_sub(1, Ordering::AcqRel);
        streams.freed.one();
    }
}

impl Multiplexed {
    pub fn new(connector: Connector) -> Self {
        Self {
            connector,
            endpoints: Arc::default(),
            ids: AtomicU64::new(0),
        }
    }

    /// Sends `request` to `endpoint` over HTTP/2 ([`Multiplexed::reserve`],
    /// then [`Multiplexed::send_on`]).
    #[cfg(test)]
    pub(crate) async fn send(
        &self,
        endpoint: SocketAddr,
        request: Request<Body>,
        pool: &Pool,
    ) -> Result<(Response<Incoming>, Stream), SendError> {
        let reserved = self.reserve(endpoint, pool, pool.limits()).await?;
        self.send_on(endpoint, request, reserved, pool, pool.limits())
            .await
    }

    /// A stream on a connection to `endpoint`, waiting in the cluster's
    /// pending queue for one if need be. `pool` is the cluster's: its
    /// settings, its places under `maxConnections` for connections beyond
    /// the endpoint's first, and its pending queue.
    /// `limits`: the pool's, or the same for the request (a wildcard host's
    /// TLS named by it, [`PoolLimits::for_request`]).
    pub(crate) async fn reserve(
        &self,
        endpoint: SocketAddr,
        pool: &Pool,
        limits: &PoolLimits,
    ) -> Result<Reserved, SendError> {
        let (connection, stream) = self.connection(endpoint, pool, limits).await?;
        Ok(Reserved { connection, stream })
    }

    /// Sends `request` on the stream `reserved`; its URI's authority is the
    /// `:authority` the endpoint reads. The [`Stream`] must be kept as long
    /// as the answer's body.
    pub(crate) async fn send_on(
        &self,
        endpoint: SocketAddr,
        mut request: Request<Body>,
        reserved: Reserved,
        pool: &Pool,
        limits: &PoolLimits,
    ) -> Result<(Response<Incoming>, Stream), SendError> {
        let Reserved {
            mut connection,
            mut stream,
        } = reserved;
        // A connection can close between being taken from the pool and the
        // request reaching it; hyper then hands the request back unsent, and
        // it goes once more, on a new connection.
        let mut retried = false;
        loop {
            match connection.send.try_send_request(request).await {
                Ok(response) => return Ok((response, stream)),
                Err(mut error) => match error.take_message() {
                    Some(unsent) if !retried => {
                        debug!(%endpoint, "pooled HTTP/2 connection closed; sending on a new one");
                        self.forget(endpoint, connection.id);
                        request = unsent;
                        retried = true;
                        (connection, stream) = self.connection(endpoint, pool, limits).await?;
                    }
                    _ => return Err(SendError::Request(error.into_error())),
                },
            }
        }
    }

    /// A connection to `endpoint` for one more request: a pooled one with
    /// room for another stream, else one being made with room for another
    /// waiter, else a new one (the endpoint's free one, or one more under
    /// `maxConnections`). With none of these, the request waits in the
    /// cluster's pending queue (refused when it is full) until a stream ends
    /// or a place frees, as in Envoy's HTTP/2 pool. After [`MAX_ROUNDS`]
    /// handshakes that left it no room, it takes a stream on the least busy
    /// connection there is, beyond the limits.
    async fn connection(
        &self,
        endpoint: SocketAddr,
        pool: &Pool,
        limits: &PoolLimits,
    ) -> Result<(Connection, Stream), SendError> {
        let route = self.connector.route(endpoint, limits);
        let capacity = [
            limits.max_concurrent_streams,
            limits.max_requests_per_connection,
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|c| c as usize);
        let unusable = || SendError::Connect(Arc::new(ConnectError::Unusable { addr: endpoint }));
        let mut round = 0;
        // A place freed while this request waited, for its next connection.
        let mut spare: Option<ConnectionSlot> = None;
        // This request's place in the pending queue, once it waits.
        let mut pending = None;
        // The place-freed wait, kept across wake-ups so as not to lose its
        // turn in the semaphore's queue.
        let mut freed_place = std::pin::pin!(pool.connection_slot());
        loop {
            let late = round >= MAX_ROUNDS;
            let next = {
                let mut endpoints = lock(&self.endpoints);
                let entry = endpoints.entry(endpoint).or_default();
                let now = Instant::now();
                if let Some(claimed) = entry.claim(&route, limits, now, Connection::has_room) {
                    return Ok(claimed);
                }
                if let Some(opening) = entry.opening.iter_mut().find(|o| o.joinable_by(&route)) {
                    opening.waiting += 1;
                    spare = None;
                    Next::Join(opening.id, opening.handshake.clone(), opening.extra)
                } else if !entry.has_free_connection(&route, now) {
                    // The endpoint's one connection outside `maxConnections`
                    // (Envoy always lets a pool have one) is not there: this is it.
                    spare = None;
                    self.start(entry, endpoint, &route, limits, capacity, None)
                } else if let Some(slot) = spare
                    .take()
                    .or_else(|| (!late).then(|| pool.try_connection_slot()).flatten())
                {
                    self.start(
                        entry,
                        endpoint,
                        &route,
                        limits,
                        capacity,
                        Some(Arc::new(slot)),
                    )
                } else if late {
                    return entry.share(&route, limits, now).ok_or_else(unusable);
                } else if !entry.usable(&route, now)
                    && let Some(opening) = entry.opening.iter_mut().find(|o| o.route == route)
                {
                    // Only connections being made, all spoken for: wait for
                    // one anyway, so that its failure is this request's too.
                    opening.waiting += 1;
                    Next::Overbooked(opening.handshake.clone())
                } else if entry.retire(now) {
                    // Connections that take no more stream (closed, past their
                    // lifetime) gave their places back: look again.
                    Next::Again
                } else {
                    // Every connection at its stream limit, no place for
                    // another: wait for a stream to end or a place to free.
                    if pending.is_none() {
                        pending = Some(pool.pend().map_err(|_| SendError::Overflow)?);
                    }
                    let woken = entry.freed(&route).listen();
                    // A stream that ended between the claim above and the
                    // listening: its room is there now.
                    if let Some(claimed) = entry.claim(&route, limits, now, Connection::has_room) {
                        return Ok(claimed);
                    }
                    Next::Wait(woken)
                }
            };
            let (id, handshake, extra) = match next {
                Next::Join(id, handshake, extra) => (id, handshake, extra),
                Next::Again => continue,
                Next::Overbooked(handshake) => {
                    if let Err(error) = handshake.await {
                        return Err(SendError::Connect(error));
                    }
                    continue;
                }
                Next::Wait(mut woken) => {
                    tokio::select! {
                        () = woken.wait() => {}
                        slot = &mut freed_place => {
                            spare = slot;
                            freed_place.set(pool.connection_slot());
                        }
                    }
                    continue;
                }
            };
            let opened = handshake.await;
            let mut endpoints = lock(&self.endpoints);
            // Looked up, not made: a failed attempt may have removed it.
            let entry = endpoints.get_mut(&endpoint);
            let now = Instant::now();
            match (opened, entry) {
                (Ok(_), Some(entry)) => {
                    // Filed by its handshake task: this request's place is
                    // there unless newcomers took it; late, past the limit.
                    let fits = |c: &Connection| c.id == id && (late || c.has_room());
                    if let Some(claimed) = entry.claim(&route, limits, now, fits) {
                        return Ok(claimed);
                    }
                    if late {
                        return entry.share(&route, limits, now).ok_or_else(unusable);
                    }
                }
                (Ok(_), None) if late => return Err(unusable()),
                (Ok(_), None) => {}
                (Err(error), entry) => {
                    // One more connection failed while others serve: share
                    // them rather than fail the request (and the endpoint).
                    if extra && let Some(claimed) = entry.and_then(|e| e.share(&route, limits, now))
                    {
                        return Ok(claimed);
                    }
                    return Err(SendError::Connect(error));
                }
            }
            debug!(%endpoint, round, "a new HTTP/2 connection had no stream left for this request");
            round += 1;
        }
    }

    /// Starts a connection for `entry`, with this request waiting on it.
    fn start(
        &self,
        entry: &mut Endpoint,
        endpoint: SocketAddr,
        route: &Route,
        limits: &PoolLimits,
        capacity: Option<usize>,
        slot: Option<Arc<ConnectionSlot>>,
    ) -> Next {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let extra = slot.is_some();
        let handshake = spawn_open(
            Arc::clone(&self.endpoints),
            Dial {
                connector: self.connector.clone(),
                endpoint,
                route: route.clone(),
                id,
                limits: limits.clone(),
                slot,
                freed: entry.freed(route),
            },
        );
        entry.opening.push(Opening {
            id,
            handshake: handshake.clone(),
            route: route.clone(),
            waiting: 1,
            capacity,
            extra,
        });
        Next::Join(id, handshake, extra)
    }

    /// Drops `endpoint`'s connection `id` from the pool, if still there.
    fn forget(&self, endpoint: SocketAddr, id: u64) {
        let mut endpoints = lock(&self.endpoints);
        if let Some(entry) = endpoints.get_mut(&endpoint) {
            entry.open.retain(|o| o.connection.id != id);
            if entry.open.is_empty() && entry.opening.is_empty() {
                endpoints.remove(&endpoint);
            }
        }
    }

    pub(super) fn evict(&self, now: Instant, in_force: InForce<'_>) {
        lock(&self.endpoints).retain(|endpoint, entry| {
            entry.open.retain(|o| {
                let obsolete = !o.connection.lifetime.tls_in_force(in_force)
                    && o.connection.streams.active.load(Ordering::Acquire) == 0;
                let keep = !obsolete && o.connection.keep(o.last_used, now);
                if !keep {
                    debug!(%endpoint, "retiring an idle, old or closed HTTP/2 upstream connection");
                }
                keep
            });
            // Past the bound, the least recently used of those carrying no
            // stream go.
            let idle = |o: &Open| o.connection.streams.active.load(Ordering::Acquire) == 0;
            let mut idle_since: Vec<Instant> = entry
                .open
                .iter()
                .filter(|o| idle(o))
                .map(|o| o.last_used)
                .collect();
            if idle_since.len() > MAX_IDLE_PER_ENDPOINT {
                idle_since.sort_unstable();
                let cut = idle_since[idle_since.len() - MAX_IDLE_PER_ENDPOINT];
                let mut over = idle_since.len() - MAX_IDLE_PER_ENDPOINT;
                entry.open.retain(|o| {
                    let drop = over > 0 && idle(o) && o.last_used < cut;
                    over -= usize::from(drop);
                    !drop
                });
            }
            !entry.open.is_empty() || !entry.opening.is_empty()
        });
    }

    /// Endpoints with a pooled connection or one being opened.
    pub fn len(&self) -> usize {
        lock(&self.endpoints).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pooled connections, over every endpoint.
    pub fn connections(&self) -> usize {
        lock(&self.endpoints).values().map(|e| e.open.len()).sum()
    }
}

fn lock(endpoints: &Endpoints) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Endpoint>> {
    endpoints.lock().unwrap_or_else(|p| p.into_inner())
}

impl Endpoint {
    /// Whether a pooled connection reaches the endpoint by `route` and may
    /// be used at `now`.
    fn usable(&self, route: &Route, now: Instant) -> bool {
        self.open
            .iter()
            .any(|o| o.connection.keep(o.last_used, now) && o.connection.lifetime.reaches_by(route))
    }

    /// Drops the connections that take no more stream at `now` from the pool
    /// (their places free once their streams end); whether there were any.
    fn retire(&mut self, now: Instant) -> bool {
        let before = self.open.len();
        self.open.retain(|o| o.connection.keep(o.last_used, now));
        self.open.len() < before
    }

    /// Whether the endpoint has its connection outside `maxConnections`:
    /// usable, or being made.
    /// The wake-ups of `route`'s requests. Routes no longer used (no
    /// connection, none being made, nobody listening) are let go here.
    fn freed(&mut self, route: &Route) -> Arc<Freed> {
        let (open, opening) = (&self.open, &self.opening);
        self.freed.retain(|(r, freed)| {
            r == route
                || freed.listening.load(Ordering::Acquire) > 0
                || opening.iter().any(|o| o.route == *r)
                || open.iter().any(|o| o.connection.lifetime.reaches_by(r))
        });
        if let Some((_, freed)) = self.freed.iter().find(|(r, _)| r == route) {
            return Arc::clone(freed);
        }
        let freed = Arc::new(Freed::default());
        self.freed.push((route.clone(), Arc::clone(&freed)));
        freed
    }

    fn has_free_connection(&self, route: &Route, now: Instant) -> bool {
        self.opening.iter().any(|o| !o.extra && o.route == *route)
            || self.open.iter().any(|o| {
                o.connection._slot.is_none()
                    && o.connection.keep(o.last_used, now)
                    && o.connection.lifetime.reaches_by(route)
            })
    }

    /// A stream on the usable connection with the fewest streams open,
    /// whatever its stream limit (h2 queues what the peer refuses).
    fn share(
        &mut self,
        route: &Route,
        limits: &PoolLimits,
        now: Instant,
    ) -> Option<(Connection, Stream)> {
        let least = self
            .open
            .iter()
            .filter(|o| {
                o.connection.keep(o.last_used, now) && o.connection.lifetime.reaches_by(route)
            })
            .min_by_key(|o| o.connection.streams.active.load(Ordering::Acquire))
            .map(|o| o.connection.id)?;
        self.claim(route, limits, now, |c| c.id == least)
    }

    /// A stream on the first pooled connection that is usable, reaches the
    /// endpoint by `route` and that `fits` accepts, counted against it. A
    /// connection whose request reaches `http.maxRequestsPerConnection`
    /// leaves the pool (it closes once its requests are done).
    fn claim(
        &mut self,
        route: &Route,
        limits: &PoolLimits,
        now: Instant,
        fits: impl Fn(&Connection) -> bool,
    ) -> Option<(Connection, Stream)> {
        let position = self.open.iter().position(|o| {
            o.connection.keep(o.last_used, now)
                && o.connection.lifetime.reaches_by(route)
                && fits(&o.connection)
        })?;
        let open = self.open.get_mut(position)?;
        open.last_used = now;
        let connection = open.connection.clone();
        let sent = connection.sent.fetch_add(1, Ordering::Relaxed) + 1;
        let limit = limits.max_requests_per_connection.map(u64::from);
        if limit.is_some_and(|limit| sent >= limit) {
            self.open.remove(position);
        }
        if limit.is_some_and(|limit| sent > limit) {
            // Spent by others in the meantime; never reached under the lock.
            return None;
        }
        connection.streams.active.fetch_add(1, Ordering::AcqRel);
        let stream = Stream {
            streams: Arc::clone(&connection.streams),
            _slot: connection._slot.clone(),
        };
        Some((connection, stream))
    }
}

/// What opening one connection takes.
struct Dial {
    connector: Connector,
    endpoint: SocketAddr,
    route: Route,
    id: u64,
    limits: PoolLimits,
    /// Its place under `maxConnections`, when one more than the endpoint's
    /// first.
    slot: Option<Arc<ConnectionSlot>>,
    /// Its route's wake-ups (see [`Endpoint::freed`]).
    freed: Arc<Freed>,
}

/// Opens a connection in a task of its own, which files it in the pool (or
/// clears the failed attempt) before the waiters hear of it.
fn spawn_open(endpoints: Endpoints, dial: Dial) -> Handshake {
    let (endpoint, id, freed) = (dial.endpoint, dial.id, Arc::clone(&dial.freed));
    let cleanup = Arc::clone(&endpoints);
    let task = tokio::spawn(async move {
        let opened = open(dial).await;
        let mut map = lock(&endpoints);
        let entry = map.entry(endpoint).or_default();
        entry.opening.retain(|o| o.id != id);
        // Room for those waiting, or a failure they must see.
        freed.all();
        match &opened {
            Ok(connection) => entry.open.push(Open {
                connection: connection.clone(),
                last_used: Instant::now(),
            }),
            Err(_) if entry.open.is_empty() && entry.opening.is_empty() => {
                map.remove(&endpoint);
            }
            Err(_) => {}
        }
        opened
    });
    async move {
        task.await.unwrap_or_else(|error| {
            // Only a panic in the handshake (a bug) or the runtime going
            // away ends the task otherwise; its entry must not stay.
            debug!(%endpoint, %error, "HTTP/2 handshake task ended");
            let mut map = lock(&cleanup);
            if let Some(entry) = map.get_mut(&endpoint) {
                entry.opening.retain(|o| o.id != id);
                if entry.open.is_empty() && entry.opening.is_empty() {
                    map.remove(&endpoint);
                }
            }
            Err(Arc::new(ConnectError::Unusable { addr: endpoint }))
        })
    }
    .boxed()
    .shared()
}

/// A byte stream to the endpoint (HBONE or TCP, as for HTTP/1.1) and an
/// HTTP/2 handshake over it; the connection is driven by a task of its own.
async fn open(dial: Dial) -> Result<Connection, Arc<ConnectError>> {
    let Dial {
        connector,
        endpoint,
        route,
        id,
        limits,
        slot,
        freed,
    } = dial;
    let io = connector
        .connect_via(&route, endpoint, &limits, Speaks::Http2)
        .await
        .map_err(Arc::new)?;
    let carrier = io.carrier();
    let (send, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        // A dead peer behind a live tunnel is found by pings.
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .handshake::<_, Body>(io)
        .await
        .map_err(|source| {
            Arc::new(ConnectError::Handshake {
                addr: endpoint,
                source,
            })
        })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(%endpoint, %error, "HTTP/2 upstream connection ended with an error");
        }
    });
    Ok(Connection {
        id,
        send,
        lifetime: Lifetime::new(route, &limits, carrier),
        max_streams: limits.max_concurrent_streams,
        sent: Arc::new(AtomicU64::new(0)),
        streams: Arc::new(Streams::new(Instant::now(), freed)),
        _slot: slot,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        convert::Infallible,
        net::{IpAddr, Ipv4Addr},
        sync::atomic::AtomicUsize,
    };

    use bytes::Bytes;
    use http::header;
    use http_body_util::BodyExt as _;
    use hyper::body::Frame;
    use warren_ztunnel::{metrics::Metrics, proxy::Inputs, state::State};

    use super::*;
    use crate::proxy::http::full;

    /// A connector to endpoints outside the mesh (plain TCP on loopback).
    pub(crate) fn connector() -> Connector {
        let config = Arc::new(warren_ztunnel::Config::for_tests(IpAddr::V4(
            Ipv4Addr::LOCALHOST,
        )));
        let state = State::new(config.node_name.clone(), config.hbone_port);
        let inputs = Inputs::new(config, state, Arc::new(Metrics::new()));
        Connector {
            inputs,
            identity: Arc::new(|| {
                "spiffe://cluster.local/ns/shop/sa/waypoint"
                    .parse()
                    .expect("identity")
            }),
        }
    }

    pub(crate) fn pool() -> Multiplexed {
        Multiplexed::new(connector())
    }

    /// A cluster's pool with `limits` and `places` under `maxConnections`
    /// (beyond each endpoint's first connection). Leaked, so that a request
    /// future may borrow it wherever it is made (a few hundred bytes a test).
    pub(crate) fn cluster(limits: &PoolLimits, places: u32) -> &'static Pool {
        Box::leak(Box::new(Pool::new(
            PoolLimits {
                max_connections: places,
                ..limits.clone()
            },
            None,
        )))
    }

    fn per_connection(limit: u32) -> PoolLimits {
        PoolLimits {
            max_requests_per_connection: Some(limit),
            ..PoolLimits::default()
        }
    }

    /// What an HTTP/2 server saw.
    #[derive(Default)]
    struct Seen {
        connections: AtomicUsize,
        closed: AtomicUsize,
        /// `:authority` and `Host` of each request.
        requests: Mutex<Vec<(Option<String>, Option<String>)>>,
    }

    /// An h2c server: answers `/slow` with one chunk, then another after
    /// 300 ms; everything else at once.
    async fn server() -> (SocketAddr, Arc<Seen>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let shared = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let seen = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn({
                        let seen = Arc::clone(&seen);
                        move |request: Request<Incoming>| {
                            let seen = Arc::clone(&seen);
                            async move {
                                seen.requests.lock().unwrap().push((
                                    request.uri().authority().map(|a| a.to_string()),
                                    request
                                        .headers()
                                        .get(header::HOST)
                                        .map(|h| h.to_str().unwrap().to_owned()),
                                ));
                                let body = if request.uri().path() == "/slow" {
                                    let chunks = futures::stream::unfold(0, |n| async move {
                                        let chunk: &'static [u8] = match n {
                                            0 => b"one ",
                                            1 => {
                                                tokio::time::sleep(Duration::from_millis(300))
                                                    .await;
                                                b"two"
                                            }
                                            _ => return None,
                                        };
                                        Some((
                                            Ok::<_, Infallible>(Frame::data(Bytes::from_static(
                                                chunk,
                                            ))),
                                            n + 1,
                                        ))
                                    });
                                    http_body_util::StreamBody::new(chunks).boxed()
                                } else {
                                    http_body_util::Full::new(Bytes::from_static(b"ok"))
                                        .map_err(|never| match never {})
                                        .boxed()
                                };
                                Ok::<_, Infallible>(Response::new(body))
                            }
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                        .await;
                    seen.closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        (addr, seen)
    }

    fn get(path: &str) -> Request<Body> {
        Request::get(format!("http://reviews.shop:9080{path}"))
            .body(full(Bytes::new()))
            .unwrap()
    }

    /// The answer's body, read to its end while its stream is held.
    async fn text((response, _stream): (Response<Incoming>, Stream)) -> String {
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn requests_keep_their_authority_and_share_one_connection() {
        let (addr, seen) = server().await;
        let pool = pool();
        let limits = PoolLimits::default();
        let sent = (0..8).map(|_| pool.send(addr, get("/"), cluster(&limits, 1000)));
        for response in futures::future::join_all(sent).await {
            assert_eq!(text(response.expect("an answer")).await, "ok");
        }
        assert_eq!(
            seen.connections.load(Ordering::SeqCst),
            1,
            "one handshake for all"
        );
        let requests = seen.requests.lock().unwrap().clone();
        assert_eq!(requests.len(), 8);
        for (authority, host) in requests {
            assert_eq!(authority.as_deref(), Some("reviews.shop:9080"));
            assert_eq!(host, None);
        }
    }

    #[tokio::test]
    async fn a_connection_carries_at_most_max_requests_per_connection() {
        let (addr, seen) = server().await;
        let pool = pool();
        for _ in 0..5 {
            let response = pool
                .send(addr, get("/"), cluster(&per_connection(2), 1000))
                .await
                .expect("an answer");
            assert_eq!(text(response).await, "ok");
        }
        assert_eq!(seen.connections.load(Ordering::SeqCst), 3, "2 + 2 + 1");
        // Spent connections close once their requests are done.
        tokio::time::timeout(Duration::from_secs(5), async {
            while seen.closed.load(Ordering::SeqCst) < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the two spent connections closed");
    }

    #[tokio::test]
    async fn an_idle_connection_closes_and_the_next_request_opens_another() {
        let (addr, seen) = server().await;
        let pool = pool();
        let answer = pool
            .send(addr, get("/"), cluster(&PoolLimits::default(), 1000))
            .await
            .expect("an answer");
        assert_eq!(text(answer).await, "ok");
        assert_eq!(pool.len(), 1);
        pool.evict(Instant::now() + PoolLimits::default().idle_timeout, &|_| {
            true
        });
        assert!(pool.is_empty(), "idle past the timeout");
        tokio::time::timeout(Duration::from_secs(5), async {
            while seen.closed.load(Ordering::SeqCst) < 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the evicted connection closed");
        let response = pool
            .send(addr, get("/"), cluster(&PoolLimits::default(), 1000))
            .await
            .expect("an answer");
        assert_eq!(text(response).await, "ok");
        assert_eq!(seen.connections.load(Ordering::SeqCst), 2, "a new one");
    }

    #[tokio::test]
    async fn a_connection_past_its_maximum_duration_takes_no_new_requests() {
        let (addr, seen) = server().await;
        let pool = pool();
        let limits = PoolLimits {
            max_connection_duration: Some(Duration::from_millis(100)),
            ..PoolLimits::default()
        };
        let streaming = pool
            .send(addr, get("/slow"), cluster(&limits, 1000))
            .await
            .expect("an answer");
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Past its duration: the next request opens a new connection while
        // the answer streaming on the old one still finishes.
        let response = pool
            .send(addr, get("/"), cluster(&limits, 1000))
            .await
            .expect("an answer");
        assert_eq!(text(response).await, "ok");
        assert_eq!(text(streaming).await, "one two");
        assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
        // And the eviction pass retires it without a request.
        pool.evict(Instant::now() + Duration::from_millis(150), &|_| true);
        assert!(pool.is_empty());
    }

    #[tokio::test]
    async fn every_request_waiting_on_a_failed_connect_fails_as_connect_failure() {
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = closed.local_addr().unwrap();
        drop(closed);
        let pool = pool();
        let limits = PoolLimits::default();
        let sent = (0..4).map(|_| pool.send(gone, get("/"), cluster(&limits, 1000)));
        for result in futures::future::join_all(sent).await {
            assert!(
                matches!(result, Err(SendError::Connect(_))),
                "{:?}",
                result.map(|_| ())
            );
        }
        assert!(pool.is_empty(), "a failed connect is not kept");
    }

    #[tokio::test]
    async fn more_streams_than_max_concurrent_streams_open_another_connection() {
        let (addr, seen) = server().await;
        let pool = pool();
        let limits = PoolLimits {
            max_concurrent_streams: Some(2),
            ..PoolLimits::default()
        };
        // Five answers streaming at once: 2 + 2 + 1 streams.
        let sent = (0..5).map(|_| pool.send(addr, get("/slow"), cluster(&limits, 1000)));
        let answers: Vec<_> = futures::future::join_all(sent)
            .await
            .into_iter()
            .map(|a| a.expect("an answer"))
            .collect();
        assert_eq!(seen.connections.load(Ordering::SeqCst), 3);
        assert_eq!(pool.connections(), 3);
        for answer in answers {
            assert_eq!(text(answer).await, "one two");
        }
        // Their streams done, the pooled connections take new ones: no
        // fourth connection for two more at once.
        let sent = (0..2).map(|_| pool.send(addr, get("/"), cluster(&limits, 1000)));
        for answer in futures::future::join_all(sent).await {
            assert_eq!(text(answer.expect("an answer")).await, "ok");
        }
        assert_eq!(seen.connections.load(Ordering::SeqCst), 3);
        // Unlimited (the default): one connection for as many as come.
        let (addr, seen) = server().await;
        let unlimited = PoolLimits::default();
        let sent = (0..5).map(|_| pool.send(addr, get("/slow"), cluster(&unlimited, 1000)));
        for answer in futures::future::join_all(sent).await {
            assert_eq!(text(answer.expect("an answer")).await, "one two");
        }
        assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn past_max_connections_requests_wait_in_the_pending_queue_then_overflow() {
        let (addr, seen) = server().await;
        let pool = pool();
        // Two streams per connection, one place beyond the endpoint's first
        // connection, and two requests may wait.
        let cluster = cluster(
            &PoolLimits {
                max_concurrent_streams: Some(2),
                max_pending_requests: 2,
                ..PoolLimits::default()
            },
            1,
        );
        // Four answers stream on the two connections, two requests wait for
        // their streams to end, the seventh finds the queue full.
        let sent = (0..7).map(|_| {
            pool.send(addr, get("/slow"), cluster)
                .then(|sent| async move {
                    match sent {
                        Ok(answer) => Ok(text(answer).await),
                        Err(error) => Err(error),
                    }
                })
        });
        // Sampled until the queue has filled and emptied: how many waited at
        // most, and the most streams any connection carried meanwhile.
        let watch = async {
            let (mut waited, mut busiest) = (0, 0);
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                waited = waited.max(cluster.pending());
                let now_busiest = lock(&pool.endpoints)
                    .values()
                    .flat_map(|e| e.open.iter())
                    .map(|o| o.connection.streams.active.load(Ordering::Acquire))
                    .max()
                    .unwrap_or(0);
                busiest = busiest.max(now_busiest);
                if (waited >= 2 && cluster.pending() == 0) || Instant::now() > deadline {
                    return (waited, busiest);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        let (results, (waiting, busiest)) = futures::join!(futures::future::join_all(sent), watch);
        assert_eq!((waiting, busiest), (2, 2));
        let answered = results
            .iter()
            .filter(|r| matches!(r, Ok(body) if body == "one two"))
            .count();
        let overflowed = results
            .iter()
            .filter(|r| matches!(r, Err(SendError::Overflow)))
            .count();
        assert_eq!((answered, overflowed), (6, 1), "{results:?}");
        assert_eq!(cluster.pending(), 0, "the queue is empty again");
        assert_eq!(cluster.overflows(), 1);
        assert_eq!(
            seen.connections.load(Ordering::SeqCst),
            2,
            "the first connection and one more; the waiting requests took their streams"
        );
    }

    #[tokio::test]
    async fn a_connection_carrying_a_stream_is_not_idle() {
        let (addr, seen) = server().await;
        let pool = pool();
        let limits = PoolLimits::default();
        let streaming = pool
            .send(addr, get("/slow"), cluster(&limits, 1000))
            .await
            .expect("an answer");
        // Far past the idle timeout, but with a stream open: kept.
        pool.evict(Instant::now() + limits.idle_timeout * 2, &|_| true);
        assert_eq!(pool.connections(), 1, "a busy connection is not idle");
        assert_eq!(text(streaming).await, "one two");
        // Its idle time counts from the end of that stream.
        pool.evict(Instant::now() + limits.idle_timeout / 2, &|_| true);
        assert_eq!(pool.connections(), 1);
        pool.evict(Instant::now() + limits.idle_timeout, &|_| true);
        assert!(pool.is_empty());
        assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_burst_with_one_request_per_connection_opens_them_side_by_side() {
        let (addr, seen) = server().await;
        let pool = pool();
        let limits = per_connection(1);
        let sent = (0..8).map(|_| pool.send(addr, get("/"), cluster(&limits, 1000)));
        for answer in futures::future::join_all(sent).await {
            assert_eq!(text(answer.expect("an answer, not UF")).await, "ok");
        }
        assert_eq!(seen.connections.load(Ordering::SeqCst), 8);
    }

    #[tokio::test]
    async fn a_failed_extra_connection_shares_the_ones_open() {
        // A server that takes one connection, then stops listening: the
        // second connection is refused.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            drop(listener);
            let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                if request.uri().path() == "/slow" {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Ok::<_, Infallible>(Response::new(http_body_util::Full::new(
                    Bytes::from_static(b"ok"),
                )))
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                .await;
        });
        let pool = pool();
        let limits = PoolLimits {
            max_concurrent_streams: Some(1),
            ..PoolLimits::default()
        };
        let busy = pool
            .send(addr, get("/slow"), cluster(&limits, 1000))
            .await
            .expect("the first connection");
        // The first connection is full, so the next request opens another,
        // which is refused: it shares the first instead of failing.
        let shared = pool
            .send(addr, get("/"), cluster(&limits, 1000))
            .await
            .expect("shared, not a connect failure");
        assert_eq!(text(shared).await, "ok");
        assert_eq!(text(busy).await, "ok");
    }
}
