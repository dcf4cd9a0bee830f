//! HTTP/1.1 upstream connections, kept alive between requests: per
//! endpoint, a stack of idle connections, the most recently used on top so
//! that a light load keeps few of them warm.
//!
//! A connection carries one request at a time. It goes back on the stack
//! once the answer's body has been read to its end (hyper says so by
//! becoming ready again); an answer left unread, or a connection upgraded
//! (WebSocket), never comes back. The DestinationRule's connection settings
//! ([`PoolLimits`]) are taken from the request that opens a connection
//! (idle timeout, maximum duration: its [`Lifetime`]; TCP keepalive) or from
//! each request (connect timeout, requests per connection): connections are pooled per
//! endpoint, so two clusters (subsets) with different settings sharing an
//! endpoint share its connections.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use http::{Request, Response};
use hyper::{body::Incoming, client::conn::http1};
use tokio::time::Instant;
use tracing::debug;

use super::{
    connect::{ConnectError, Connector, Route, SendError},
    lifetime::{InForce, Lifetime, MAX_IDLE_PER_ENDPOINT},
};
use crate::{
    app::Body,
    upstream::{PoolLimits, Speaks},
};

/// HTTP/1.1 connections to upstream endpoints.
pub struct KeepAlive {
    connector: Connector,
    idle: Arc<Mutex<HashMap<SocketAddr, Vec<Idle>>>>,
}

struct Connection {
    send: http1::SendRequest<Body>,
    lifetime: Lifetime,
    /// Requests it has been given.
    served: u32,
}

struct Idle {
    connection: Connection,
    since: Instant,
}

impl Idle {
    /// Whether it may carry another request at `now`.
    fn usable(&self, now: Instant) -> bool {
        !self.connection.send.is_closed() && self.connection.lifetime.fresh(self.since, now)
    }
}

impl KeepAlive {
    pub fn new(connector: Connector) -> Self {
        Self {
            connector,
            idle: Arc::default(),
        }
    }

    /// Sends `request` (origin-form URI, `Host` set) to `endpoint` over a
    /// kept-alive connection, or a new one.
    pub async fn send(
        &self,
        endpoint: SocketAddr,
        request: Request<Body>,
        limits: &PoolLimits,
    ) -> Result<Response<Incoming>, SendError> {
        self.send_once_ready(endpoint, request, limits, || {}).await
    }

    /// [`KeepAlive::send`], calling `ready` once a connection is in hand
    /// (taken from the pool or opened), before the request goes on it: a
    /// try's timeout starts then, as Envoy's starts when its pool is ready.
    pub async fn send_once_ready(
        &self,
        endpoint: SocketAddr,
        mut request: Request<Body>,
        limits: &PoolLimits,
        ready: impl FnOnce(),
    ) -> Result<Response<Incoming>, SendError> {
        let mut ready = Some(ready);
        let mut in_hand = || {
            if let Some(ready) = ready.take() {
                ready();
            }
        };
        // An idle connection may close while taken (the server's own idle
        // timeout); hyper then hands the request back unsent.
        let route = self.connector.route(endpoint, limits);
        while let Some(mut connection) = self.take(endpoint, &route) {
            in_hand();
            match connection.send.try_send_request(request).await {
                Ok(response) => {
                    self.give_back(endpoint, connection, limits);
                    return Ok(response);
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) => {
                        debug!(%endpoint, "kept-alive HTTP/1.1 connection closed; trying another");
                        request = unsent;
                    }
                    None => return Err(SendError::Request(error.into_error())),
                },
            }
        }
        let mut connection = self.open(endpoint, route, limits).await?;
        in_hand();
        let response = connection
            .send
            .send_request(request)
            .await
            .map_err(SendError::Request)?;
        self.give_back(endpoint, connection, limits);
        Ok(response)
    }

    /// The most recently used idle connection to `endpoint` still usable
    /// and reaching it by `route`. Those found on the way that are unusable,
    /// or reach it a way it is no longer reached (a pod that joined the
    /// mesh), are closed; those of another cluster's TLS settings stay.
    fn take(&self, endpoint: SocketAddr, route: &Route) -> Option<Connection> {
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        let stack = idle.get_mut(&endpoint)?;
        let mut found = None;
        let mut others = Vec::new();
        while let Some(top) = stack.pop() {
            let lifetime = &top.connection.lifetime;
            if !top.usable(now) || !lifetime.goes_via(&route.via) {
                continue;
            }
            if lifetime.reaches_by(route) {
                found = Some(top.connection);
                break;
            }
            others.push(top);
        }
        // Back in their order, most recently used on top.
        stack.extend(others.into_iter().rev());
        if stack.is_empty() {
            idle.remove(&endpoint);
        }
        found
    }

    async fn open(
        &self,
        endpoint: SocketAddr,
        route: Route,
        limits: &PoolLimits,
    ) -> Result<Connection, SendError> {
        let io = self
            .connector
            .connect_via(&route, endpoint, limits, Speaks::Http1)
            .await
            .map_err(|error| SendError::Connect(Arc::new(error)))?;
        let carrier = io.carrier();
        let (send, connection) = http1::Builder::new()
            .handshake::<_, Body>(io)
            .await
            .map_err(|source| {
                SendError::Connect(Arc::new(ConnectError::Handshake {
                    addr: endpoint,
                    source,
                }))
            })?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                debug!(%endpoint, %error, "HTTP/1.1 upstream connection ended with an error");
            }
        });
        Ok(Connection {
            send,
            lifetime: Lifetime::new(route, limits, carrier),
            served: 0,
        })
    }

    /// Counts the request just answered on `connection`, and pools the
    /// connection again once the answer is read, unless it has carried
    /// `http.maxRequestsPerConnection` or lived `tcp.maxConnectionDuration`
    /// (dropped, it closes when the answer is done).
    fn give_back(&self, endpoint: SocketAddr, mut connection: Connection, limits: &PoolLimits) {
        connection.served = connection.served.saturating_add(1);
        let spent = limits
            .max_requests_per_connection
            .is_some_and(|limit| connection.served >= limit);
        // (Whether its HBONE connection still takes streams is asked when it
        // is next taken: once per request is enough.)
        if spent || connection.lifetime.expired(Instant::now()) {
            return;
        }
        let idle = Arc::clone(&self.idle);
        tokio::spawn(async move {
            if connection.send.ready().await.is_ok() {
                let mut idle = lock(&idle);
                let stack = idle.entry(endpoint).or_default();
                // The least recently used goes first.
                if stack.len() >= MAX_IDLE_PER_ENDPOINT {
                    stack.remove(0);
                }
                stack.push(Idle {
                    connection,
                    since: Instant::now(),
                });
            }
        });
    }

    pub(super) fn evict(&self, now: Instant, in_force: InForce<'_>) {
        lock(&self.idle).retain(|endpoint, stack| {
            stack.retain(|idle| {
                let keep = idle.usable(now) && idle.connection.lifetime.tls_in_force(in_force);
                if !keep {
                    debug!(%endpoint, "closing an idle HTTP/1.1 upstream connection");
                }
                keep
            });
            !stack.is_empty()
        });
    }

    /// Idle connections pooled now.
    pub fn idle(&self) -> usize {
        lock(&self.idle).values().map(Vec::len).sum()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        net::{IpAddr, Ipv4Addr},
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use bytes::Bytes;
    use http_body_util::BodyExt as _;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;
    use crate::proxy::{http::full, multiplex::tests::connector};

    /// An HTTP/1.1 server on loopback answering each request with the
    /// number of the connection it came on; counts connections.
    async fn server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                let service = hyper::service::service_fn(move |_request| async move {
                    Ok::<_, Infallible>(Response::new(full(Bytes::from(n.to_string()))))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (addr, accepted)
    }

    async fn get(pool: &KeepAlive, endpoint: SocketAddr, limits: &PoolLimits) -> String {
        let request = Request::builder()
            .uri("/")
            .header(http::header::HOST, "reviews")
            .body(full(Bytes::new()))
            .expect("request");
        let response = pool
            .send(endpoint, request, limits)
            .await
            .expect("answered");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    /// Until the connection just used is back on the stack.
    async fn settle(pool: &KeepAlive, idle: usize) {
        for _ in 0..100 {
            if pool.idle() == idle {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{} idle connections, expected {idle}", pool.idle());
    }

    fn pool() -> KeepAlive {
        KeepAlive::new(connector())
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection() {
        let (endpoint, accepted) = server().await;
        let pool = pool();
        let limits = PoolLimits::default();
        for _ in 0..5 {
            assert_eq!(get(&pool, endpoint, &limits).await, "1");
            settle(&pool, 1).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// Many connections opened at once (as many names under a wildcard
    /// open, one each): at most [`MAX_IDLE_PER_ENDPOINT`] stay idle.
    #[tokio::test]
    async fn idle_connections_per_endpoint_are_bounded() {
        let (endpoint, accepted) = server().await;
        let pool = pool();
        let limits = PoolLimits::default();
        let many = MAX_IDLE_PER_ENDPOINT + 20;
        let answers =
            futures::future::join_all((0..many).map(|_| get(&pool, endpoint, &limits))).await;
        assert_eq!(answers.len(), many);
        assert_eq!(accepted.load(Ordering::SeqCst), many, "one connection each");
        settle(&pool, MAX_IDLE_PER_ENDPOINT).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.idle(), MAX_IDLE_PER_ENDPOINT);
    }

    #[tokio::test]
    async fn max_requests_per_connection_opens_a_new_one() {
        let (endpoint, accepted) = server().await;
        let pool = pool();
        let limits = PoolLimits {
            max_requests_per_connection: Some(2),
            ..PoolLimits::default()
        };
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.push(get(&pool, endpoint, &limits).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(seen, ["1", "1", "2", "2", "3"]);
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn idle_timeout_and_max_duration_retire_connections() {
        let (endpoint, _) = server().await;
        let pool = pool();
        let limits = PoolLimits {
            idle_timeout: Duration::from_millis(100),
            ..PoolLimits::default()
        };
        assert_eq!(get(&pool, endpoint, &limits).await, "1");
        settle(&pool, 1).await;
        pool.evict(Instant::now(), &|_| true);
        assert_eq!(pool.idle(), 1, "not idle long enough yet");
        pool.evict(Instant::now() + Duration::from_millis(150), &|_| true);
        assert_eq!(pool.idle(), 0, "idle past idleTimeout");
        // Idle past the timeout when taken: not used, a new one is opened.
        assert_eq!(get(&pool, endpoint, &limits).await, "2");
        settle(&pool, 1).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(get(&pool, endpoint, &limits).await, "3");

        // A connection older than maxConnectionDuration finishes its
        // request and is not reused.
        let limits = PoolLimits {
            max_connection_duration: Some(Duration::from_millis(100)),
            ..PoolLimits::default()
        };
        settle(&pool, 1).await;
        pool.evict(Instant::now() + Duration::from_secs(1), &|_| true);
        assert_eq!(get(&pool, endpoint, &limits).await, "4");
        settle(&pool, 1).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(get(&pool, endpoint, &limits).await, "5");
    }

    #[tokio::test]
    async fn a_connection_closed_by_the_server_is_not_reused() {
        let (endpoint, _) = server().await;
        let pool = pool();
        let limits = PoolLimits::default();
        let request = Request::builder()
            .uri("/")
            .header(http::header::HOST, "reviews")
            .header(http::header::CONNECTION, "close")
            .body(full(Bytes::new()))
            .expect("request");
        let response = pool
            .send(endpoint, request, &limits)
            .await
            .expect("answered");
        drop(response.into_body().collect().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.idle(), 0);
        assert_eq!(get(&pool, endpoint, &limits).await, "2");
    }

    #[tokio::test]
    async fn istio_mutual_never_takes_a_plain_connection() {
        let (endpoint, accepted) = server().await;
        let pool = pool();
        assert_eq!(get(&pool, endpoint, &PoolLimits::default()).await, "1");
        settle(&pool, 1).await;
        // Another cluster of the same endpoint asks for the mesh's mutual
        // TLS only: the plain connection is not for it.
        let mesh_only = PoolLimits {
            mesh_tls_only: true,
            ..PoolLimits::default()
        };
        let request = Request::builder()
            .uri("/")
            .header(http::header::HOST, "reviews")
            .body(full(Bytes::new()))
            .expect("request");
        match pool.send(endpoint, request, &mesh_only).await {
            Err(SendError::Connect(error)) => {
                assert!(
                    matches!(*error, ConnectError::OutsideMesh { .. }),
                    "{error}"
                );
            }
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(
            pool.idle(),
            1,
            "the plain connection stays, for its own cluster"
        );
    }

    #[tokio::test]
    async fn a_connection_is_not_reused_once_the_endpoint_joins_the_mesh() {
        use warren_api::config::{self, TunnelProtocol};
        use warren_ztunnel::state::{Resource, workload::Workload};

        let (endpoint, accepted) = server().await;
        let connector = connector();
        let state = Arc::clone(&connector.inputs.state);
        let pool = KeepAlive::new(connector);
        let limits = PoolLimits::default();
        assert_eq!(get(&pool, endpoint, &limits).await, "1");
        settle(&pool, 1).await;
        // The endpoint's address now belongs to a meshed pod: it must be
        // reached over HBONE (which fails here: the test waypoint has no
        // certificate), not over the plain connection kept from before.
        let pod = config::Workload {
            name: "app-0".into(),
            namespace: "shop".into(),
            service_account: "app".into(),
            addresses: vec![vec![127, 0, 0, 1]],
            node_address: vec![127, 0, 0, 2],
            protocol: TunnelProtocol::Hbone as i32,
            ..Default::default()
        };
        let pod = Workload::from_proto("workload/shop/app-0", pod, "cluster.local")
            .expect("a valid workload");
        state.update(|inner| inner.upsert(pod.key.clone(), Resource::Workload(Arc::new(pod))));
        let request = Request::builder()
            .uri("/")
            .header(http::header::HOST, "reviews")
            .body(full(Bytes::new()))
            .expect("request");
        match pool.send(endpoint, request, &limits).await {
            Err(SendError::Connect(error)) => {
                assert!(matches!(*error, ConnectError::NoCertificate(_)), "{error}");
            }
            other => panic!("expected an HBONE attempt, got {:?}", other.map(|_| ())),
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle(), 0, "the plain connection was closed");
    }

    #[tokio::test]
    async fn a_connect_timeout_is_a_connect_failure() {
        // A listener that never accepts, its queue full: the kernel drops
        // further SYNs, so a connect hangs until its timeout.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0))
            .expect("bind loopback");
        let listener = socket.listen(0).expect("listen");
        let endpoint = listener.local_addr().expect("local address");
        let mut queued = Vec::new();
        for _ in 0..8 {
            let connect = tokio::net::TcpStream::connect(endpoint);
            match tokio::time::timeout(Duration::from_millis(100), connect).await {
                Ok(stream) => queued.push(stream.expect("queued connection")),
                Err(_) => break,
            }
        }
        let pool = pool();
        let limits = PoolLimits {
            connect_timeout: Duration::from_millis(100),
            ..PoolLimits::default()
        };
        let request = Request::builder()
            .uri("/")
            .body(full(Bytes::new()))
            .expect("request");
        match pool.send(endpoint, request, &limits).await {
            Err(SendError::Connect(error)) => {
                assert!(matches!(*error, ConnectError::Timeout { .. }), "{error}");
            }
            other => panic!("expected a connect timeout, got {:?}", other.map(|_| ())),
        }
        drop((listener, queued));
    }
}
