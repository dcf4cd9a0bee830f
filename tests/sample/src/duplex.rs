//! `warren-sample duplex`: one h2c request to a sample server's `/echo-stream` that
//! sends its body a chunk at a time and waits for each chunk to come back before
//! sending the next. It completes only if every proxy on the way carries both
//! directions of one request at once, as a bidirectional gRPC stream needs; a
//! proxy that holds the request body until its end shows as no echo at all.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::{net::TcpStream, sync::mpsc};

use crate::http_server::ECHO_STREAM;

#[derive(Debug, Serialize)]
pub struct Report {
    pub sent: u32,
    /// Chunks that came back, each before the next was sent.
    pub echoed: u32,
    /// How long each took to come back.
    pub round_trips_ms: Vec<f64>,
    /// Why it stopped early, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A request body the caller feeds chunk by chunk.
struct Fed(mpsc::Receiver<Bytes>);

impl Body for Fed {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

pub async fn run(url: &Uri, chunks: u32, timeout: Duration) -> Result<Report> {
    let authority = url
        .authority()
        .with_context(|| format!("`{url}` has no host:port"))?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::time::timeout(timeout, TcpStream::connect((authority.host(), port)))
        .await
        .with_context(|| format!("connecting to {authority}: timed out"))?
        .with_context(|| format!("connecting to {authority}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .context("the HTTP/2 handshake")?;
    tokio::spawn(connection);
    let (feed, fed) = mpsc::channel(1);
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{authority}{ECHO_STREAM}"))
        .body(Fed(fed))
        .context("building the request")?;
    let mut report = Report {
        sent: 0,
        echoed: 0,
        round_trips_ms: Vec::new(),
        error: None,
    };
    let response = match tokio::time::timeout(timeout, sender.send_request(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => bail!("the request failed: {error}"),
        Err(_) => {
            report.error = Some(format!("no answer's headers within {timeout:?}"));
            return Ok(report);
        }
    };
    let mut echoed = response.into_body();
    for i in 0..chunks {
        let chunk = Bytes::from(format!("chunk-{i}\n"));
        let started = Instant::now();
        if feed.send(chunk.clone()).await.is_err() {
            report.error = Some("the request body was closed".into());
            return Ok(report);
        }
        report.sent += 1;
        match tokio::time::timeout(timeout, read_exactly(&mut echoed, chunk.len())).await {
            Ok(Ok(back)) if back == chunk => {
                report.echoed += 1;
                report
                    .round_trips_ms
                    .push(started.elapsed().as_secs_f64() * 1000.0);
            }
            Ok(Ok(back)) => {
                report.error = Some(format!("sent {chunk:?}, got back {back:?}"));
                return Ok(report);
            }
            Ok(Err(error)) => {
                report.error = Some(format!("reading the echo: {error}"));
                return Ok(report);
            }
            Err(_) => {
                report.error = Some(format!(
                    "chunk {i} did not come back within {timeout:?} (is the request body held?)"
                ));
                return Ok(report);
            }
        }
    }
    Ok(report)
}

/// The next `len` bytes of the answer (frames may split or join chunks).
async fn read_exactly(body: &mut Incoming, len: usize) -> Result<Bytes> {
    let mut got = Vec::with_capacity(len);
    while got.len() < len {
        let frame = body
            .frame()
            .await
            .context("the answer ended early")?
            .context("reading the answer")?;
        if let Ok(data) = frame.into_data() {
            got.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(got))
}
