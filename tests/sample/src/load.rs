//! `warren-sample load`: sends a bounded number of requests (or requests for a bounded
//! time) from a few concurrent workers and tallies what came back, so a test can assert
//! e.g. "90% of answers came from v1" or "no connection was refused".

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::Full;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use thiserror::Error;
use tokio::task::JoinSet;
use tracing::{debug, info};

use crate::{
    body::{self, BodyError},
    error_chain::describe,
    http_server::VERSION_HEADER,
    tally::{ErrorKind, Tally},
};

/// When a run ends.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    AfterRequests(u64),
    /// No request starts after this long; those in flight finish (within the timeout).
    AfterDuration(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

pub struct Config {
    pub url: Uri,
    pub stop: Stop,
    pub concurrency: usize,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Prior-knowledge HTTP/2 over cleartext (h2c) instead of HTTP/1.1.
    pub http2: bool,
    pub timeout: Duration,
    /// `Some(n)`: POST n bytes instead of a GET.
    pub body_bytes: Option<usize>,
    pub output: Output,
}

#[derive(Debug, Error, PartialEq)]
pub enum HeaderError {
    #[error("`{0}` is not a header: write it as `name: value`")]
    NoColon(String),
    #[error("`{0}` is not a valid header name")]
    BadName(String),
    #[error("the value of header `{0}` is not a valid header value")]
    BadValue(String),
}

/// Parses `-H "name: value"`.
pub fn parse_header(input: &str) -> Result<(HeaderName, HeaderValue), HeaderError> {
    let (name, value) = input
        .split_once(':')
        .ok_or_else(|| HeaderError::NoColon(input.to_owned()))?;
    let name = name.trim();
    let header_name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| HeaderError::BadName(name.to_owned()))?;
    let header_value =
        HeaderValue::from_str(value.trim()).map_err(|_| HeaderError::BadValue(name.to_owned()))?;
    Ok((header_name, header_value))
}

pub async fn run(config: Config) -> Result<()> {
    let plan = Arc::new(RequestPlan::new(&config));
    let client = client(config.http2);
    info!(
        url = %config.url,
        stop = ?config.stop,
        concurrency = config.concurrency,
        http2 = config.http2,
        "load starting"
    );

    let started = Instant::now();
    let budget = Arc::new(Budget::new(config.stop, started));
    let mut workers = JoinSet::new();
    for _ in 0..config.concurrency {
        workers.spawn(worker(
            client.clone(),
            Arc::clone(&plan),
            Arc::clone(&budget),
            config.timeout,
        ));
    }
    let mut tally = Tally::new();
    while let Some(finished) = workers.join_next().await {
        let worker_tally = finished.context("a load worker failed")?;
        tally.merge(&worker_tally)?;
    }
    let report = tally.report(started.elapsed());

    match config.output {
        Output::Json => {
            println!(
                "{}",
                serde_json::to_string(&report).context("encoding the report")?
            );
        }
        Output::Table => print!("{}", report.to_table()),
    }
    Ok(())
}

fn client(http2: bool) -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    // Small requests: waiting for Nagle would add delayed-ACK latency to every one.
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build(connector)
}

/// The request every worker sends, built once.
struct RequestPlan {
    method: Method,
    url: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl RequestPlan {
    fn new(config: &Config) -> Self {
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            headers.append(name.clone(), value.clone());
        }
        let (method, body) = match config.body_bytes {
            Some(n) => (Method::POST, Bytes::from(vec![b'x'; n])),
            None => (Method::GET, Bytes::new()),
        };
        Self {
            method,
            url: config.url.clone(),
            headers,
            body,
        }
    }

    fn request(&self) -> Request<Full<Bytes>> {
        // `Bytes` clones share the buffer: a large --body-bytes is not copied per request.
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.url.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// What is left of the run, shared by the workers.
enum Budget {
    Requests(AtomicU64),
    Until(Instant),
}

impl Budget {
    fn new(stop: Stop, started: Instant) -> Self {
        match stop {
            Stop::AfterRequests(n) => Self::Requests(AtomicU64::new(n)),
            Stop::AfterDuration(d) => Self::Until(started + d),
        }
    }

    /// Claims one more request, or says the run is over.
    fn take(&self) -> bool {
        match self {
            Self::Requests(left) => left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
            Self::Until(deadline) => Instant::now() < *deadline,
        }
    }
}

async fn worker(
    client: Client<HttpConnector, Full<Bytes>>,
    plan: Arc<RequestPlan>,
    budget: Arc<Budget>,
    timeout: Duration,
) -> Tally {
    let mut tally = Tally::new();
    while budget.take() {
        let started = Instant::now();
        match tokio::time::timeout(timeout, exchange(&client, plan.request())).await {
            Ok(Ok(answer)) => {
                tally.record_answer(answer.version.as_deref(), answer.status, started.elapsed());
            }
            Ok(Err(error)) => {
                let kind = error.kind();
                debug!(?kind, error = %describe(&error), "request failed");
                tally.record_error(kind);
            }
            Err(_) => tally.record_error(ErrorKind::Timeout),
        }
    }
    tally
}

struct Answered {
    status: u16,
    version: Option<String>,
}

#[derive(Debug, Error)]
enum ExchangeError {
    #[error("sending the request failed")]
    Request(#[source] hyper_util::client::legacy::Error),
    #[error("reading the answer failed")]
    Body(#[source] BodyError),
}

impl ExchangeError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Request(error) if error.is_connect() => ErrorKind::Connect,
            _ => classify(self),
        }
    }
}

/// Sends one request and reads the whole answer, so the latency covers the body and the
/// connection can be reused.
async fn exchange(
    client: &Client<HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<Answered, ExchangeError> {
    let answer = client
        .request(request)
        .await
        .map_err(ExchangeError::Request)?;
    let (parts, body) = answer.into_parts();
    body::count(body, body::LIMIT)
        .await
        .map_err(ExchangeError::Body)?;
    Ok(Answered {
        status: parts.status.as_u16(),
        version: parts
            .headers
            .get(VERSION_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
    })
}

/// Finds the first cause in the chain that says what happened to the connection.
fn classify(error: &(dyn std::error::Error + 'static)) -> ErrorKind {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::ConnectionRefused => return ErrorKind::Connect,
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof => return ErrorKind::Reset,
                io::ErrorKind::TimedOut => return ErrorKind::Timeout,
                _ => {}
            }
        }
        // An HTTP/2 stream reset or GOAWAY is the HTTP/2 form of a reset connection.
        if current
            .downcast_ref::<h2::Error>()
            .is_some_and(|h2| h2.is_reset() || h2.is_go_away())
        {
            return ErrorKind::Reset;
        }
        if let Some(hyper) = current.downcast_ref::<hyper::Error>() {
            // Incomplete: the peer closed mid-answer. Canceled: a pooled connection
            // closed before the request could go out.
            if hyper.is_incomplete_message() || hyper.is_canceled() {
                return ErrorKind::Reset;
            }
            if hyper.is_timeout() {
                return ErrorKind::Timeout;
            }
        }
        cause = current.source();
    }
    ErrorKind::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_headers() {
        let (name, value) = parse_header("X-Lane-Id:  canary ").unwrap();
        assert_eq!(name, "x-lane-id");
        assert_eq!(value, "canary");
        let (name, value) = parse_header("traceparent: 00-abc:def-01").unwrap();
        assert_eq!(name, "traceparent");
        assert_eq!(value, "00-abc:def-01", "only the first colon separates");
    }

    #[test]
    fn refuses_malformed_headers() {
        assert_eq!(
            parse_header("no-colon"),
            Err(HeaderError::NoColon("no-colon".into()))
        );
        assert_eq!(
            parse_header("bad name: x"),
            Err(HeaderError::BadName("bad name".into()))
        );
        assert_eq!(
            parse_header("x-ok: a\nb"),
            Err(HeaderError::BadValue("x-ok".into()))
        );
    }

    #[test]
    fn a_request_budget_runs_out() {
        let budget = Budget::new(Stop::AfterRequests(3), Instant::now());
        assert_eq!((0..5).filter(|_| budget.take()).count(), 3);
    }

    #[test]
    fn a_time_budget_runs_out() {
        let budget = Budget::new(Stop::AfterDuration(Duration::ZERO), Instant::now());
        assert!(!budget.take());
        let budget = Budget::new(Stop::AfterDuration(Duration::from_secs(60)), Instant::now());
        assert!(budget.take());
    }

    #[test]
    fn classifies_io_causes() {
        #[derive(Debug, Error)]
        #[error("wrapper")]
        struct Wrapper(#[source] io::Error);
        let wrapped = |kind| Wrapper(io::Error::from(kind));
        assert_eq!(
            classify(&wrapped(io::ErrorKind::ConnectionRefused)),
            ErrorKind::Connect
        );
        assert_eq!(
            classify(&wrapped(io::ErrorKind::ConnectionReset)),
            ErrorKind::Reset
        );
        assert_eq!(
            classify(&wrapped(io::ErrorKind::BrokenPipe)),
            ErrorKind::Reset
        );
        assert_eq!(
            classify(&wrapped(io::ErrorKind::TimedOut)),
            ErrorKind::Timeout
        );
        assert_eq!(
            classify(&wrapped(io::ErrorKind::InvalidData)),
            ErrorKind::Other
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = format!("http://127.0.0.1:{port}/").parse().unwrap();
        let error = exchange(&client(false), request).await.err().unwrap();
        assert_eq!(error.kind(), ErrorKind::Connect);
    }
}
