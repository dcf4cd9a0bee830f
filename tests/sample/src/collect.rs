//! `warren-sample collect`: a stand-in for a Zipkin collector. It keeps the
//! spans posted to `/api/v2/spans` (Zipkin's JSON, v2: an array of spans)
//! and gives them all back on `GET /api/v2/spans`, so tests can see what a
//! waypoint reported. `GET /api/v2/spans?traceId=X` gives one trace's.
//! A body that is not a JSON array is refused with 400.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use serde_json::Value;
use tracing::{debug, info};

use crate::shutdown::Shutdown;

/// Where spans are posted and read.
pub const PATH: &str = "/api/v2/spans";

/// Spans kept at most; older ones go first.
const KEPT: usize = 100_000;

/// The biggest post read.
const MAX_POST: usize = 16 << 20;

type Kept = Arc<Mutex<Vec<Value>>>;

pub async fn serve(listen: SocketAddr) -> Result<()> {
    let mut shutdown = Shutdown::install()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the collector to {listen}"))?;
    info!(%listen, "span collector listening");
    let kept: Kept = Arc::default();
    let server = async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    debug!(%error, "accept");
                    continue;
                }
            };
            let kept = Arc::clone(&kept);
            tokio::spawn(async move {
                let service = service_fn(move |request| answer(Arc::clone(&kept), request));
                let served = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(error) = served {
                    debug!(%error, "collector connection");
                }
            });
        }
    };
    tokio::select! {
        () = server => Ok(()),
        signal = shutdown.recv() => {
            info!(signal, "collector stopping");
            Ok(())
        }
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

async fn answer(
    kept: Kept,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() != PATH {
        return Ok(reply(StatusCode::NOT_FOUND, "{\"error\":\"not found\"}"));
    }
    if request.method() == Method::GET {
        let trace = request.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("traceId="))
                .map(str::to_owned)
        });
        let spans: Vec<Value> = kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|s| trace.as_deref().is_none_or(|t| s["traceId"] == t))
            .cloned()
            .collect();
        let body = serde_json::to_vec(&spans).unwrap_or_default();
        return Ok(reply(StatusCode::OK, body));
    }
    if request.method() != Method::POST {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "{}"));
    }
    let body = match http_body_util::Limited::new(request.into_body(), MAX_POST)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return Ok(reply(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": error.to_string() }).to_string(),
            ));
        }
    };
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(spans)) => {
            debug!(spans = spans.len(), "spans received");
            let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
            kept.extend(spans);
            let excess = kept.len().saturating_sub(KEPT);
            kept.drain(..excess);
            Ok(reply(StatusCode::ACCEPTED, ""))
        }
        _ => Ok(reply(
            StatusCode::BAD_REQUEST,
            "{\"error\":\"a JSON array of spans is expected\"}",
        )),
    }
}
