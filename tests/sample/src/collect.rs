//! `warren-sample collect`: a stand-in for a tracing collector. It keeps the
//! spans it is sent, in any of the forms a waypoint sends them:
//!
//! - Zipkin's JSON (v2) posted to `/api/v2/spans`;
//! - OTLP's export request (protobuf) posted to `/v1/traces`;
//! - OTLP over gRPC (`--grpc`, `TraceService/Export`);
//!
//! and gives them all back, in Zipkin's form with `"received"` saying how
//! each came, on `GET /api/v2/spans` (`?traceId=X`: one trace's), so tests
//! can see what a waypoint reported. As Zipkin does, a body that is not
//! spans, or a span whose ids are not hex or are all zeros, is refused (400
//! for the whole post). With `--reject-tag KEY=VALUE`, OTLP spans with that
//! tag are not kept and the answer is OTLP's partial success naming them.
//! Each span kept says which `x-` headers came with its post
//! (`"postedWith"`).

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
use prost::Message as _;
use serde_json::{Value, json};
use tracing::{debug, info};
use warren_api::otlp::{
    collector::{
        ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::{KeyValue, any_value},
};

use crate::shutdown::Shutdown;

/// Where Zipkin's spans are posted, and all spans read.
pub const PATH: &str = "/api/v2/spans";

/// Where OTLP over HTTP posts.
pub const OTLP_PATH: &str = "/v1/traces";

/// Spans kept at most; older ones go first.
const KEPT: usize = 100_000;

/// The biggest post read.
const MAX_POST: usize = 16 << 20;

type Kept = Arc<Mutex<Vec<Value>>>;

/// A tag whose OTLP spans are rejected: key and value.
pub type Reject = Option<(String, String)>;

pub async fn serve(listen: SocketAddr, grpc: Option<SocketAddr>, reject: Reject) -> Result<()> {
    let mut shutdown = Shutdown::install()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the collector to {listen}"))?;
    info!(%listen, ?grpc, "span collector listening");
    let kept: Kept = Arc::default();
    let reject = Arc::new(reject);
    let grpc_server = match grpc {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the OTLP gRPC collector to {addr}"))?;
            let service = TraceServiceServer::new(Otlp {
                kept: Arc::clone(&kept),
                reject: Arc::clone(&reject),
            });
            Some(
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
            )
        }
        None => None,
    };
    let grpc_server = async move {
        match grpc_server {
            Some(server) => server.await.context("serving OTLP over gRPC"),
            None => std::future::pending().await,
        }
    };
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
            let reject = Arc::clone(&reject);
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    answer(Arc::clone(&kept), Arc::clone(&reject), request)
                });
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
        served = grpc_server => served,
        signal = shutdown.recv() => {
            info!(signal, "collector stopping");
            Ok(())
        }
    }
}

/// OTLP over gRPC.
struct Otlp {
    kept: Kept,
    reject: Arc<Reject>,
}

#[tonic::async_trait]
impl TraceService for Otlp {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let posted_with: serde_json::Map<String, Value> = request
            .metadata()
            .iter()
            .filter_map(|entry| match entry {
                tonic::metadata::KeyAndValueRef::Ascii(key, value) => Some((
                    key.as_str().to_owned(),
                    Value::String(value.to_str().ok()?.to_owned()),
                )),
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .filter(|(key, _)| key.starts_with("x-"))
            .collect();
        let mut spans = from_otlp(&request.into_inner(), "otlp/grpc")
            .map_err(tonic::Status::invalid_argument)?;
        for span in &mut spans {
            span["postedWith"] = Value::Object(posted_with.clone());
        }
        Ok(tonic::Response::new(keep_otlp(
            &self.kept,
            &self.reject,
            spans,
        )))
    }
}

/// Keeps the spans not rejected; the answer names those rejected.
fn keep_otlp(kept: &Kept, reject: &Reject, spans: Vec<Value>) -> ExportTraceServiceResponse {
    let (rejected, taken): (Vec<Value>, Vec<Value>) = spans.into_iter().partition(|span| {
        reject
            .as_ref()
            .is_some_and(|(key, value)| span["tags"][key] == value.as_str())
    });
    keep(kept, taken);
    let partial_success = reject
        .as_ref()
        .filter(|_| !rejected.is_empty())
        .map(|(key, value)| ExportTracePartialSuccess {
            rejected_spans: i64::try_from(rejected.len()).unwrap_or(i64::MAX),
            error_message: format!("spans tagged {key}={value} are not taken here"),
        });
    ExportTraceServiceResponse { partial_success }
}

fn keep(kept: &Kept, spans: Vec<Value>) {
    debug!(spans = spans.len(), "spans received");
    let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
    kept.extend(spans);
    let excess = kept.len().saturating_sub(KEPT);
    kept.drain(..excess);
}

/// Hex of one of `lengths` digits, not all zeros: an id Zipkin takes.
fn valid_id(id: &str, lengths: &[usize]) -> bool {
    lengths.contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && id.bytes().any(|b| b != b'0')
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(kv: &KeyValue) -> Option<(String, Value)> {
    match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some((kv.key.clone(), Value::String(s.clone()))),
        _ => None,
    }
}

/// OTLP's spans in Zipkin's form.
fn from_otlp(request: &ExportTraceServiceRequest, received: &str) -> Result<Vec<Value>, String> {
    let mut spans = Vec::new();
    for resource in &request.resource_spans {
        let service = resource
            .resource
            .as_ref()
            .and_then(|r| {
                r.attributes
                    .iter()
                    .filter_map(text)
                    .find(|(k, _)| k == "service.name")
            })
            .map_or(Value::Null, |(_, v)| v);
        for scope in &resource.scope_spans {
            for span in &scope.spans {
                let (trace_id, id) = (hex(&span.trace_id), hex(&span.span_id));
                if !valid_id(&trace_id, &[32]) || !valid_id(&id, &[16]) {
                    return Err(format!("bad ids: trace {trace_id:?}, span {id:?}"));
                }
                let tags: serde_json::Map<String, Value> =
                    span.attributes.iter().filter_map(text).collect();
                let mut zipkin = json!({
                    "traceId": trace_id,
                    "id": id,
                    "name": span.name,
                    "kind": if span.kind == 2 { "SERVER" } else { "OTHER" },
                    "localEndpoint": { "serviceName": service },
                    "tags": tags,
                    "duration": span.end_time_unix_nano.saturating_sub(span.start_time_unix_nano) / 1000,
                    "error": span.status.as_ref().is_some_and(|s| s.code == 2),
                    "received": received,
                });
                if !span.parent_span_id.is_empty() {
                    zipkin["parentId"] = Value::String(hex(&span.parent_span_id));
                }
                spans.push(zipkin);
            }
        }
    }
    Ok(spans)
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

fn refuse(why: &str) -> Response<Full<Bytes>> {
    reply(StatusCode::BAD_REQUEST, json!({ "error": why }).to_string())
}

async fn answer(
    kept: Kept,
    reject: Arc<Reject>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    if path != PATH && path != OTLP_PATH {
        return Ok(reply(StatusCode::NOT_FOUND, "{\"error\":\"not found\"}"));
    }
    if request.method() == Method::GET && path == PATH {
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
    let posted_with: serde_json::Map<String, Value> = request
        .headers()
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-"))
        .filter_map(|(name, value)| {
            Some((
                name.as_str().to_owned(),
                Value::String(value.to_str().ok()?.to_owned()),
            ))
        })
        .collect();
    let body = match http_body_util::Limited::new(request.into_body(), MAX_POST)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) => return Ok(refuse(&error.to_string())),
    };
    if path == OTLP_PATH {
        return Ok(match ExportTraceServiceRequest::decode(body.as_ref()) {
            Ok(request) => match from_otlp(&request, "otlp/http") {
                Ok(mut spans) => {
                    for span in &mut spans {
                        span["postedWith"] = Value::Object(posted_with.clone());
                    }
                    let answer = keep_otlp(&kept, &reject, spans);
                    let mut response = reply(StatusCode::OK, answer.encode_to_vec());
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/x-protobuf"),
                    );
                    response
                }
                Err(why) => refuse(&why),
            },
            Err(error) => refuse(&format!("not an OTLP export request: {error}")),
        });
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(mut spans)) => {
            for span in &mut spans {
                let ids = (span["traceId"].as_str(), span["id"].as_str());
                let valid = matches!(ids, (Some(t), Some(i)) if valid_id(t, &[16, 32]) && valid_id(i, &[16]));
                if !valid {
                    return Ok(refuse(&format!("bad ids in {span}")));
                }
                span["received"] = Value::String("zipkin".into());
                span["postedWith"] = Value::Object(posted_with.clone());
            }
            keep(&kept, spans);
            Ok(reply(StatusCode::ACCEPTED, ""))
        }
        _ => Ok(refuse("a JSON array of spans is expected")),
    }
}
