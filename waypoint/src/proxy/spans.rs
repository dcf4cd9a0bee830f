//! Sending sampled spans to their collector (Zipkin's JSON, or OTLP over
//! gRPC or HTTP), off the request path: reports queue spans (a bounded
//! queue: when the collector cannot keep up, spans are dropped and counted,
//! requests never wait), and one task posts them in batches, through the
//! collector's upstream cluster as any request the waypoint sends (HBONE to
//! a collector in the mesh).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Version, header};
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::debug;

use super::http::{Attempt, Outgoing, Tries, attempt};
use crate::{
    app::{ClusterKey, Context},
    metrics::SpanLabels,
    telemetry::{TraceProtocol, TracingPlan, otlp, span::Record, zipkin},
};

/// Spans waiting to be sent; past this, new ones are dropped.
const QUEUE: usize = 8192;

/// Spans per post at most.
const BATCH: usize = 256;

/// How long a span waits for others to share its post.
const LINGER: Duration = Duration::from_secs(1);

/// The most of a collector's answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// A collector, as one provider reaches it: provider, host, port,
/// protocol, path.
type Collector = (String, String, u16, TraceProtocol, String);

struct Queued {
    plan: Arc<TracingPlan>,
    span: Record,
}

/// The reports' end of the queue.
pub struct Spans {
    tx: mpsc::Sender<Queued>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<Queued>>>,
    /// Told when the waypoint has drained: send what is queued, and stop.
    flushing: tokio::sync::Notify,
}

impl Default for Spans {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Spans {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            flushing: tokio::sync::Notify::new(),
        }
    }
}

impl Spans {
    /// Sends what is queued, then stops (the waypoint has drained).
    pub fn flush(&self) {
        self.flushing.notify_one();
    }

    /// Queues `span` for `plan`'s collector; a full queue drops it.
    pub fn submit(&self, ctx: &Context, plan: &Arc<TracingPlan>, span: Record) {
        let queued = Queued {
            plan: Arc::clone(plan),
            span,
        };
        if self.tx.try_send(queued).is_err() {
            count(ctx, &plan.provider, "dropped", 1);
        }
    }
}

fn count(ctx: &Context, provider: &str, result: &'static str, n: u64) {
    ctx.metrics
        .spans
        .get_or_create(&SpanLabels {
            provider: provider.to_owned(),
            result,
        })
        .inc_by(n);
}

/// How long the spans still queued when the waypoint has drained may take
/// to go.
pub const FLUSH: Duration = Duration::from_secs(2);

/// Posts queued spans until [`Spans::flush`], then what is queued then
/// (within [`FLUSH`]); started once.
pub async fn run(ctx: Arc<Context>) {
    let taken = ctx
        .spans
        .rx
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let Some(mut rx) = taken else {
        return;
    };
    loop {
        let first = tokio::select! {
            biased;
            () = ctx.spans.flushing.notified() => {
                let mut left = Vec::new();
                while let Ok(queued) = rx.try_recv() {
                    left.push(queued);
                }
                let flush = async {
                    while !left.is_empty() {
                        let rest = left.split_off(left.len().min(BATCH));
                        post_all(&ctx, std::mem::replace(&mut left, rest)).await;
                    }
                };
                let _ = tokio::time::timeout(FLUSH, flush).await;
                return;
            }
            next = rx.recv() => match next {
                Some(first) => first,
                None => return,
            },
        };
        let mut batch = vec![first];
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        while batch.len() < BATCH {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(next) => batch.push(next),
                    None => break,
                },
                () = &mut linger => break,
            }
        }
        post_all(&ctx, batch).await;
    }
}

/// One post per collector, all at once: a slow collector holds up no other
/// within a batch (the next batch waits for the slowest, up to its timeout).
async fn post_all(ctx: &Arc<Context>, batch: Vec<Queued>) {
    let mut by_collector: BTreeMap<Collector, (Arc<TracingPlan>, Vec<Record>)> = BTreeMap::new();
    for queued in batch {
        let plan = &queued.plan;
        let key = (
            plan.provider.clone(),
            plan.host.clone(),
            plan.port,
            plan.protocol,
            plan.path.clone(),
        );
        by_collector
            .entry(key)
            .or_insert_with(|| (Arc::clone(plan), Vec::new()))
            .1
            .push(queued.span);
    }
    let posts = by_collector.into_values().map(|(plan, spans)| async move {
        let n = spans.len() as u64;
        match post(ctx, &plan, &spans).await {
            Ok(()) => count(ctx, &plan.provider, "sent", n),
            Err(reason) => {
                debug!(provider = %plan.provider, %reason, spans = n, "spans not sent");
                count(ctx, &plan.provider, "failed", n);
            }
        }
    });
    futures::future::join_all(posts).await;
}

/// One post of `spans` in the plan's protocol, within its timeout.
async fn post(ctx: &Arc<Context>, plan: &TracingPlan, spans: &[Record]) -> Result<(), String> {
    let (content_type, body) = match plan.protocol {
        TraceProtocol::Zipkin => {
            let json = Value::Array(spans.iter().map(zipkin::encode).collect());
            let body = serde_json::to_vec(&json).map_err(|e| e.to_string())?;
            ("application/json", Outgoing::Fixed(Bytes::from(body)))
        }
        TraceProtocol::OtlpHttp => (
            "application/x-protobuf",
            Outgoing::Fixed(Bytes::from(otlp::encode(spans))),
        ),
        TraceProtocol::OtlpGrpc => (
            "application/grpc",
            Outgoing::Grpc(crate::grpc::frame(&otlp::request(spans))),
        ),
    };
    let mut request = http::Request::builder()
        .method(Method::POST)
        .uri(plan.path.as_str());
    if plan.protocol == TraceProtocol::OtlpGrpc {
        request = request
            .version(Version::HTTP_2)
            .header(header::TE, "trailers");
    }
    let (mut parts, ()) = request
        .body(())
        .map_err(|e| format!("{}: {e}", plan.path))?
        .into_parts();
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(host) = HeaderValue::from_str(&format!("{}:{}", plan.host, plan.port)) {
        parts.headers.insert(header::HOST, host);
    }
    let key = ClusterKey {
        host: plan.host.clone(),
        subset: None,
        port: plan.port,
    };
    let compiled = ctx.tables.current();
    // The waypoint itself is the client: no caller to balance or hash by.
    let client = super::Client {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        connection: 0,
    };
    let mut once = Tries::mirror(client);
    let sent = async {
        match attempt(ctx, &compiled, &key, &parts, body, &mut once).await {
            Attempt::Answered { response, .. } if !response.status().is_success() => {
                Err(format!("the collector answered {}", response.status()))
            }
            Attempt::Answered { response, .. } => {
                let (head, body) = response.into_parts();
                // Read whole (a few bytes): over gRPC the status comes last.
                let (_, trailers) = super::read_whole(body, MAX_ANSWER).await?;
                match plan.protocol {
                    TraceProtocol::OtlpGrpc => grpc_ok(&head.headers, trailers.as_ref()),
                    TraceProtocol::Zipkin | TraceProtocol::OtlpHttp => Ok(()),
                }
            }
            Attempt::Failed { detail, .. } => Err(detail),
            Attempt::Local(done) => Err(format!(
                "no way to {}:{} ({} {})",
                plan.host,
                plan.port,
                done.response.status(),
                done.flags
            )),
        }
    };
    match tokio::time::timeout(plan.timeout, sent).await {
        Err(_) => Err(format!("no answer within {:?}", plan.timeout)),
        Ok(answered) => answered,
    }
}

/// A gRPC answer's status (in the trailers, or in the headers of a
/// trailers-only answer): 0, or why not.
fn grpc_ok(headers: &HeaderMap, trailers: Option<&HeaderMap>) -> Result<(), String> {
    let field = |name: &str| {
        trailers
            .and_then(|t| t.get(name))
            .or_else(|| headers.get(name))
            .and_then(|v| v.to_str().ok())
    };
    match field("grpc-status") {
        Some("0") => Ok(()),
        Some(code) => Err(format!(
            "the collector answered grpc-status {code}: {}",
            field("grpc-message").unwrap_or_default()
        )),
        None => Err("the collector's answer has no grpc-status".to_owned()),
    }
}
