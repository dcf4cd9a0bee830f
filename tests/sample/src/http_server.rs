//! `warren-sample http`: an HTTP/1.1 and h2c server that answers with who it is and what
//! it received, so a test can see which pod and version served a request, which headers
//! reached it, and (with `--upstream`) which hops the request took. `/echo-stream`
//! answers at once with the request's own body, chunk by chunk as it arrives: a test sees
//! whether a proxy carries both directions of a request at the same time.

use std::{collections::BTreeMap, convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::{
    HeaderMap, HeaderValue, Request, Response, StatusCode, Uri,
    header::{CONTENT_LENGTH, CONTENT_TYPE},
    request::Parts,
};
use http_body_util::{Either, Full};
use hyper::{body::Body, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
};
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::{
    body::{self, BodyError, BoxError},
    error_chain::describe,
    fault::{self, FailRate},
    shutdown::{GRACE, Shutdown},
    tls::{ServerTls, Session},
    upstream::{Upstream, UpstreamAnswer},
};

pub const VERSION_HEADER: &str = "x-sample-version";
pub const POD_HEADER: &str = "x-sample-pod";
/// The path answered with the request's own body, as it arrives.
pub const ECHO_STREAM: &str = "/echo-stream";

/// Who this server says it is, in headers and answers.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub namespace: String,
    pub version: String,
}

impl Identity {
    /// This server's entry in a call chain.
    fn hop(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

pub struct Config {
    pub listen: SocketAddr,
    pub identity: Identity,
    /// Added before answering each request (not `/healthz`).
    pub latency: Duration,
    /// Waited before reading a request's body: a slow reader.
    pub read_after: Duration,
    pub fail_rate: FailRate,
    pub fail_status: StatusCode,
    pub upstream: Option<Uri>,
    pub upstream_timeout: Duration,
    /// Log a line per request served.
    pub access_log: bool,
    /// Serve HTTPS instead of plain HTTP.
    pub tls: Option<ServerTls>,
}

pub async fn run(config: Config) -> Result<()> {
    let mut shutdown = Shutdown::install()?;
    let listen = config.listen;
    let tls = config.tls.clone();
    let handler = Arc::new(Handler::new(config)?);
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the HTTP server to {listen}"))?;
    info!(
        addr = %listen,
        pod = %handler.identity.name,
        version = %handler.identity.version,
        upstream = ?handler.upstream.as_ref().map(|u| u.url().to_string()),
        tls = tls.is_some(),
        "http server listening (HTTP/1.1 and h2c, or over TLS)"
    );

    // `auto` tells HTTP/1.1 from prior-knowledge HTTP/2 by the connection's first bytes.
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let signal = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Usually out of file descriptors: pausing beats spinning on it.
                        warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if let Err(error) = stream.set_nodelay(true) {
                    debug!(%peer, %error, "setting TCP_NODELAY failed");
                }
                if handler.access_log {
                    // Lets a test count the connections a proxy opened.
                    info!(%peer, "connection accepted");
                }
                let handler = Arc::clone(&handler);
                let service = move |session: Option<Session>| {
                    service_fn(move |mut request: Request<hyper::body::Incoming>| {
                        let handler = Arc::clone(&handler);
                        if let Some(session) = &session {
                            request.extensions_mut().insert(session.clone());
                        }
                        async move {
                            if request.uri().path() == ECHO_STREAM {
                                return Ok::<_, Infallible>(handler.echo_stream(request));
                            }
                            Ok(handler.handle(request).await.map(Either::Left))
                        }
                    })
                };
                let builder = builder.clone();
                let watcher = graceful.watcher();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let ended = match tls {
                        None => {
                            let connection = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service(None));
                            watcher.watch(connection.into_owned()).await
                        }
                        Some(tls) => match tls.accept(stream).await {
                            Ok((stream, session)) => {
                                let connection = builder.serve_connection_with_upgrades(
                                    TokioIo::new(stream),
                                    service(Some(session)),
                                );
                                watcher.watch(connection.into_owned()).await
                            }
                            Err(error) => {
                                info!(%peer, %error, "TLS handshake failed");
                                return;
                            }
                        },
                    };
                    if let Err(error) = ended {
                        debug!(%peer, error = %describe(&*error), "HTTP connection ended with an error");
                    }
                });
            }
            signal = shutdown.recv() => break signal,
        }
    };

    drop(listener);
    info!(signal, "http server stopping: finishing in-flight requests");
    if tokio::time::timeout(GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(grace = ?GRACE, "in-flight requests did not finish within the grace period");
    }
    Ok(())
}

/// Answers requests; shared by every connection.
struct Handler {
    identity: Identity,
    /// Built once, so a name that cannot be a header value fails at start-up, not per
    /// request.
    version_header: HeaderValue,
    pod_header: HeaderValue,
    latency: Duration,
    read_after: Duration,
    fail_rate: FailRate,
    fail_status: StatusCode,
    upstream: Option<Upstream>,
    access_log: bool,
}

/// The JSON answer to a request.
#[derive(Debug, Serialize)]
struct Answer<'a> {
    pod: &'a str,
    namespace: &'a str,
    version: &'a str,
    method: &'a str,
    /// The request's authority: HTTP/2's `:authority`, else `Host`.
    #[serde(skip_serializing_if = "Option::is_none")]
    authority: Option<&'a str>,
    /// The HTTP version the request came with (`HTTP/1.1`, `HTTP/2.0`).
    protocol: String,
    path: &'a str,
    headers: BTreeMap<String, String>,
    body_bytes: u64,
    /// `<name>@<version>` of this server, then of each upstream in turn.
    chain: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<UpstreamAnswer>,
    /// The TLS handshake of the connection the request came on, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<Session>,
}

/// The JSON answer when the request could not be served (400, 413, 502).
#[derive(Debug, Serialize)]
struct Refusal<'a> {
    pod: &'a str,
    namespace: &'a str,
    version: &'a str,
    chain: Vec<String>,
    error: Problem,
}

#[derive(Debug, Serialize)]
struct Problem {
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<String>,
    reason: String,
}

impl Handler {
    fn new(config: Config) -> Result<Self> {
        let identity = config.identity;
        let version_header = HeaderValue::from_str(&identity.version).with_context(|| {
            format!(
                "the version `{}` cannot be sent in a header",
                identity.version
            )
        })?;
        let pod_header = HeaderValue::from_str(&identity.name).with_context(|| {
            format!(
                "the pod name `{}` cannot be sent in a header",
                identity.name
            )
        })?;
        Ok(Self {
            identity,
            version_header,
            pod_header,
            latency: config.latency,
            read_after: config.read_after,
            fail_rate: config.fail_rate,
            fail_status: config.fail_status,
            upstream: config
                .upstream
                .map(|url| Upstream::new(url, config.upstream_timeout)),
            access_log: config.access_log,
        })
    }

    async fn handle<B>(&self, mut request: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        if let Some(protocol) = upgrade_requested(&request) {
            return self.switch_to_echo(&mut request, protocol);
        }
        let (parts, body) = request.into_parts();
        // Probes must see the process, not the faults it is told to inject.
        if parts.uri.path() == "/healthz" {
            return self.respond(StatusCode::OK, "text/plain", Bytes::from_static(b"ok"));
        }
        if self.access_log {
            let authority = authority(&parts).unwrap_or("-");
            info!(method = %parts.method, path = %parts.uri.path(), authority, "served");
        }

        if !self.read_after.is_zero() && !body.is_end_stream() {
            tokio::time::sleep(self.read_after).await;
        }
        let body_bytes = match read_body(&parts.headers, body).await {
            Ok(n) => n,
            Err(error @ BodyError::TooLarge { .. }) => {
                return self.refuse(StatusCode::PAYLOAD_TOO_LARGE, None, describe(&error));
            }
            Err(error) => return self.refuse(StatusCode::BAD_REQUEST, None, describe(&error)),
        };
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let status = match parts.uri.path().strip_prefix("/status/") {
            None => StatusCode::OK,
            Some(code) => match fault::parse_status(code) {
                Ok(status) => status,
                Err(error) => return self.refuse(StatusCode::BAD_REQUEST, None, error.to_string()),
            },
        };

        let mut answer = self.answer(&parts, body_bytes);
        if self.fail_rate.hits() {
            debug!(path = %parts.uri.path(), status = %self.fail_status, "injecting a failure");
            return self.json(self.fail_status, &answer);
        }
        if let Some(upstream) = &self.upstream {
            match upstream.call(&parts.headers).await {
                Ok(reply) => {
                    answer.chain.extend(reply.chain());
                    answer.upstream = Some(reply);
                }
                Err(error) => {
                    let reason = describe(&error);
                    warn!(upstream = %upstream.url(), %reason, "calling the upstream failed");
                    let url = Some(upstream.url().to_string());
                    return self.refuse(StatusCode::BAD_GATEWAY, url, reason);
                }
            }
        }
        self.json(status, &answer)
    }

    /// Answers an HTTP/1.1 upgrade, whatever the protocol asked, with `101
    /// Switching Protocols`, then echoes every byte on the connection until
    /// the client closes: enough to see an upgrade cross a proxy intact.
    fn switch_to_echo<B>(
        &self,
        request: &mut Request<B>,
        protocol: HeaderValue,
    ) -> Response<Full<Bytes>> {
        let on_upgrade = hyper::upgrade::on(request);
        let pod = self.identity.name.clone();
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
                    match tokio::io::copy(&mut reader, &mut writer).await {
                        Ok(bytes) => debug!(%pod, bytes, "upgraded echo closed"),
                        Err(error) => debug!(%pod, %error, "upgraded echo ended with an error"),
                    }
                }
                Err(error) => warn!(%pod, %error, "the upgrade did not complete"),
            }
        });
        if self.access_log {
            info!(protocol = ?protocol, "switched protocols (echo)");
        }
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
        headers.insert(http::header::UPGRADE, protocol);
        headers.insert(VERSION_HEADER, self.version_header.clone());
        headers.insert(POD_HEADER, self.pod_header.clone());
        response
    }

    /// The request's body as the response's, frame by frame.
    fn echo_stream(
        &self,
        request: Request<hyper::body::Incoming>,
    ) -> Response<Either<Full<Bytes>, hyper::body::Incoming>> {
        if self.access_log {
            info!(path = ECHO_STREAM, "echoing the body as it arrives");
        }
        let mut response = Response::new(Either::Right(request.into_body()));
        let headers = response.headers_mut();
        headers.insert(VERSION_HEADER, self.version_header.clone());
        headers.insert(POD_HEADER, self.pod_header.clone());
        response
    }

    fn answer<'a>(&'a self, parts: &'a Parts, body_bytes: u64) -> Answer<'a> {
        Answer {
            pod: &self.identity.name,
            namespace: &self.identity.namespace,
            version: &self.identity.version,
            method: parts.method.as_str(),
            authority: authority(parts),
            protocol: format!("{:?}", parts.version),
            path: parts.uri.path(),
            headers: header_map(&parts.headers),
            body_bytes,
            chain: vec![self.identity.hop()],
            upstream: None,
            tls: parts.extensions.get::<Session>().cloned(),
        }
    }

    fn refuse(
        &self,
        status: StatusCode,
        upstream: Option<String>,
        reason: String,
    ) -> Response<Full<Bytes>> {
        let refusal = Refusal {
            pod: &self.identity.name,
            namespace: &self.identity.namespace,
            version: &self.identity.version,
            chain: vec![self.identity.hop()],
            error: Problem { upstream, reason },
        };
        self.json(status, &refusal)
    }

    fn json(&self, status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
        match serde_json::to_vec(value) {
            Ok(json) => self.respond(status, "application/json", Bytes::from(json)),
            // Cannot happen for these types (string keys only), but must not panic either.
            Err(error) => self.respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                Bytes::from(format!("encoding the answer failed: {error}")),
            ),
        }
    }

    fn respond(
        &self,
        status: StatusCode,
        content_type: &'static str,
        body: Bytes,
    ) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(VERSION_HEADER, self.version_header.clone());
        headers.insert(POD_HEADER, self.pod_header.clone());
        response
    }
}

/// Reads and counts the body, refusing one whose declared length is already too large
/// without reading it.
/// The protocol an HTTP/1.1 request asks to switch to (`Connection:
/// upgrade` and `Upgrade: <protocol>`), if it asks.
fn upgrade_requested<B>(request: &Request<B>) -> Option<HeaderValue> {
    if request.version() != http::Version::HTTP_11 {
        return None;
    }
    let headers = request.headers();
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
        .then(|| headers.get(http::header::UPGRADE).cloned())
        .flatten()
}

async fn read_body<B>(headers: &HeaderMap, body: B) -> Result<u64, BodyError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > body::LIMIT) {
        return Err(BodyError::TooLarge { limit: body::LIMIT });
    }
    body::count(body, body::LIMIT).await
}

/// The authority a request names: HTTP/2's `:authority`, else `Host`.
fn authority(parts: &Parts) -> Option<&str> {
    parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get(http::header::HOST)?.to_str().ok())
}

/// Request headers as a JSON object; repeated headers are joined with ", " as HTTP allows.
fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut map = BTreeMap::<String, String>::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        map.entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    map
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;
    use serde_json::{Value, json};

    use super::*;

    fn handler(fail_rate: &str) -> Handler {
        Handler::new(Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            identity: Identity {
                name: "reviews-1".into(),
                namespace: "shop".into(),
                version: "v2".into(),
            },
            latency: Duration::ZERO,
            read_after: Duration::ZERO,
            fail_rate: FailRate::parse(fail_rate).unwrap(),
            fail_status: StatusCode::SERVICE_UNAVAILABLE,
            upstream: None,
            upstream_timeout: Duration::from_secs(1),
            access_log: false,
            tls: None,
        })
        .unwrap()
    }

    fn request(path: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(Bytes::from_static(body)));
        *request.uri_mut() = path.parse().unwrap();
        request
    }

    async fn json_of(response: Response<Full<Bytes>>) -> Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn answers_with_identity_and_what_it_received() {
        let mut request = request("/api/items?page=2", b"12345");
        *request.method_mut() = http::Method::POST;
        request
            .headers_mut()
            .insert("X-Request-Id", HeaderValue::from_static("abc"));
        request
            .headers_mut()
            .append("accept", HeaderValue::from_static("a/b"));
        request
            .headers_mut()
            .append("accept", HeaderValue::from_static("c/d"));

        let response = handler("0").handle(request).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[VERSION_HEADER], "v2");
        assert_eq!(response.headers()[POD_HEADER], "reviews-1");
        assert_eq!(
            json_of(response).await,
            json!({
                "pod": "reviews-1",
                "namespace": "shop",
                "version": "v2",
                "method": "POST",
                "protocol": "HTTP/1.1",
                "path": "/api/items",
                "headers": {"x-request-id": "abc", "accept": "a/b, c/d"},
                "body_bytes": 5,
                "chain": ["reviews-1@v2"],
            })
        );
    }

    #[tokio::test]
    async fn healthz_ignores_injected_failures() {
        let response = handler("1").handle(request("/healthz", b"")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "ok");
    }

    #[tokio::test]
    async fn a_full_fail_rate_fails_every_request() {
        let server = handler("1");
        for _ in 0..20 {
            let response = server.handle(request("/", b"")).await;
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()[VERSION_HEADER], "v2");
        }
    }

    #[tokio::test]
    async fn status_path_picks_the_status() {
        let server = handler("0");
        let response = server.handle(request("/status/504", b"")).await;
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        let response = server.handle(request("/status/teapot", b"")).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(
            json_of(response).await["error"]["reason"]
                .as_str()
                .unwrap()
                .contains("teapot")
        );
    }

    #[tokio::test]
    async fn refuses_bodies_over_the_limit() {
        let server = handler("0");
        let mut declared = request("/", b"");
        declared
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(body::LIMIT + 1));
        let response = server.handle(declared).await;
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

        let big = vec![0u8; body::LIMIT as usize + 1];
        let mut streamed = Request::new(Full::new(Bytes::from(big)));
        *streamed.uri_mut() = "/".parse().unwrap();
        let response = server.handle(streamed).await;
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_a_502_naming_it() {
        // A port that was just free: connecting to it is refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = handler("0");
        let url_text = format!("http://127.0.0.1:{port}/");
        let url: Uri = url_text.parse().unwrap();
        server.upstream = Some(Upstream::new(url, Duration::from_secs(2)));
        let response = server.handle(request("/", b"")).await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let body = json_of(response).await;
        assert_eq!(body["error"]["upstream"], url_text);
        assert!(!body["error"]["reason"].as_str().unwrap().is_empty());
    }

    #[test]
    fn a_name_that_cannot_be_a_header_is_refused_at_start() {
        let result = Handler::new(Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            identity: Identity {
                name: "bad\nname".into(),
                namespace: "ns".into(),
                version: "v1".into(),
            },
            latency: Duration::ZERO,
            read_after: Duration::ZERO,
            fail_rate: FailRate::default(),
            fail_status: StatusCode::SERVICE_UNAVAILABLE,
            upstream: None,
            upstream_timeout: Duration::from_secs(1),
            access_log: false,
            tls: None,
        });
        let error = result.err().unwrap();
        assert!(error.to_string().contains("pod name"), "{error:#}");
    }
}
