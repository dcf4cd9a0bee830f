//! Sending sampled spans to their collector (Zipkin's JSON, or OTLP over
//! gRPC or HTTP), off the request path: reports queue spans (a bounded
//! queue: when a collector cannot keep up, its spans are dropped and
//! counted, requests never wait), and each collector has a task of its own
//! that posts them in batches, through the collector's upstream cluster as
//! any request the waypoint sends (HBONE to a collector in the mesh). A
//! slow collector holds up only its own spans.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Version, header};
use prost::Message as _;
use serde_json::Value;
use tokio::{sync::mpsc, task::JoinSet};
use tracing::debug;
use warren_api::otlp::collector::ExportTraceServiceResponse;

use super::http::{Attempt, Outgoing, Tries, attempt};
use crate::{
    app::{ClusterKey, Context},
    metrics::SpanLabels,
    telemetry::{TraceProtocol, TracingPlan, otlp, span::Record, zipkin},
};

/// Spans waiting to be handed to their collector's task; past this, new
/// ones are dropped.
const QUEUE: usize = 8192;

/// Spans waiting for one collector; past this, its new ones are dropped.
const PER_COLLECTOR: usize = 4 * BATCH;

/// Spans per post at most.
const BATCH: usize = 256;

/// How long a span waits for others to share its post.
const LINGER: Duration = Duration::from_secs(1);

/// How long a collector's task waits for spans before it ends (a provider
/// no longer in use leaves no task behind).
const IDLE: Duration = Duration::from_secs(60);

/// The most of a collector's answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// A collector, as one provider reaches it: provider, host, port,
/// protocol, path.
type Collector = (String, String, u16, TraceProtocol, String);

struct Queued {
    plan: Arc<TracingPlan>,
    span: Record,
}

impl Queued {
    fn collector(&self) -> Collector {
        let plan = &self.plan;
        (
            plan.provider.clone(),
            plan.host.clone(),
            plan.port,
            plan.protocol,
            plan.path.clone(),
        )
    }
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
    if n == 0 {
        return;
    }
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

/// Hands queued spans to their collectors' tasks until [`Spans::flush`];
/// then lets each send what it holds (within [`FLUSH`]). Started once.
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
    let mut collectors: BTreeMap<Collector, mpsc::Sender<Queued>> = BTreeMap::new();
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = ctx.spans.flushing.notified() => {
                while let Ok(queued) = rx.try_recv() {
                    dispatch(&ctx, &mut collectors, &mut tasks, queued);
                }
                // Closed queues: each task posts what it holds, at once, and ends.
                collectors.clear();
                let all_ended = async { while tasks.join_next().await.is_some() {} };
                let _ = tokio::time::timeout(FLUSH, all_ended).await;
                return;
            }
            next = rx.recv() => match next {
                Some(queued) => dispatch(&ctx, &mut collectors, &mut tasks, queued),
                None => return,
            },
            // A task that ended idle leaves its entry behind: gone too.
            Some(ended) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(key) = ended
                    && collectors.get(&key).is_some_and(mpsc::Sender::is_closed)
                {
                    collectors.remove(&key);
                }
            }
        }
    }
}

/// Hands `queued` to its collector's task, starting one when there is none
/// (or the last one ended idle); a full queue drops it.
fn dispatch(
    ctx: &Arc<Context>,
    collectors: &mut BTreeMap<Collector, mpsc::Sender<Queued>>,
    tasks: &mut JoinSet<Collector>,
    queued: Queued,
) {
    let key = queued.collector();
    let queued = match collectors.get(&key) {
        None => queued,
        Some(tx) => match tx.try_send(queued) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(queued)) => {
                count(ctx, &queued.plan.provider, "dropped", 1);
                return;
            }
            Err(mpsc::error::TrySendError::Closed(queued)) => queued,
        },
    };
    let (tx, rx) = mpsc::channel(PER_COLLECTOR);
    // A new channel has room for one.
    let _ = tx.try_send(queued);
    collectors.insert(key.clone(), tx);
    tasks.spawn(collector(Arc::clone(ctx), key, rx));
}

/// One collector's task: posts its spans in batches of up to [`BATCH`], a
/// span waiting up to [`LINGER`] for others; ends once idle for [`IDLE`],
/// or when its queue is closed and what it held is posted. Returns whose
/// task it was.
async fn collector(ctx: Arc<Context>, key: Collector, mut rx: mpsc::Receiver<Queued>) -> Collector {
    loop {
        let first = match tokio::time::timeout(IDLE, rx.recv()).await {
            Ok(Some(first)) => first,
            Ok(None) => return key,
            Err(_) => {
                // Nothing more comes in; what came since (a send that had
                // its place before the close included) is still posted.
                rx.close();
                let mut left = Vec::new();
                while let Some(queued) = rx.recv().await {
                    left.push(queued);
                }
                for batch in left.chunks(BATCH) {
                    post_batch(&ctx, batch).await;
                }
                return key;
            }
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
        post_batch(&ctx, &batch).await;
    }
}

/// Posts one collector's batch, and counts how it went.
async fn post_batch(ctx: &Arc<Context>, batch: &[Queued]) {
    let Some(first) = batch.first() else {
        return;
    };
    // The newest plan speaks for the batch (its timeout, say).
    let plan = batch.last().map_or(&first.plan, |q| &q.plan);
    let spans: Vec<Record> = batch.iter().map(|q| q.span.clone()).collect();
    let n = spans.len() as u64;
    match post(ctx, plan, &spans).await {
        Ok(Taken::All) => count(ctx, &plan.provider, "sent", n),
        Ok(Taken::Partly { rejected, why }) => {
            let rejected = rejected.min(n);
            debug!(provider = %plan.provider, rejected, %why, "the collector rejected spans");
            count(ctx, &plan.provider, "sent", n - rejected);
            count(ctx, &plan.provider, "rejected", rejected);
        }
        Err(reason) => {
            debug!(provider = %plan.provider, %reason, spans = n, "spans not sent");
            count(ctx, &plan.provider, "failed", n);
        }
    }
}

/// What a collector took of a post it answered.
#[derive(Debug, PartialEq, Eq)]
enum Taken {
    All,
    /// OTLP's partial success: some spans rejected, and why.
    Partly {
        rejected: u64,
        why: String,
    },
}

/// OTLP's answer to an export: a partial success names spans rejected. No
/// answer, or one that does not decode, is taken as a success (the
/// collector said OK; only a partial success says otherwise).
fn otlp_taken(answer: Option<ExportTraceServiceResponse>) -> Taken {
    match answer {
        Some(ExportTraceServiceResponse {
            partial_success: Some(partial),
        }) if partial.rejected_spans > 0 => Taken::Partly {
            rejected: u64::try_from(partial.rejected_spans).unwrap_or(0),
            why: partial.error_message,
        },
        _ => Taken::All,
    }
}

/// One post of `spans` in the plan's protocol, within its timeout.
async fn post(ctx: &Arc<Context>, plan: &TracingPlan, spans: &[Record]) -> Result<Taken, String> {
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
    for (name, value) in &plan.headers {
        parts.headers.append(name.clone(), value.clone());
    }
    let key = ClusterKey::new(&plan.host, None, Some(plan.port), plan.port);
    let compiled = ctx.tables.current();
    // The waypoint itself is the client: no caller to balance or hash by.
    let client = super::Client {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        connection: 0,
        dialled: None,
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
                let (body, trailers) = super::read_whole(body, MAX_ANSWER).await?;
                match plan.protocol {
                    TraceProtocol::OtlpGrpc => {
                        grpc_ok(&head.headers, trailers.as_ref())?;
                        // A trailers-only answer has no message.
                        Ok(otlp_taken(
                            crate::grpc::unframe(&body, "ExportTraceServiceResponse").ok(),
                        ))
                    }
                    TraceProtocol::OtlpHttp => Ok(otlp_taken(
                        ExportTraceServiceResponse::decode(&body[..]).ok(),
                    )),
                    TraceProtocol::Zipkin => Ok(Taken::All),
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

#[cfg(test)]
mod tests {
    use warren_api::otlp::collector::ExportTracePartialSuccess;

    use super::*;

    #[test]
    fn only_a_partial_success_with_rejected_spans_says_some_were_not_taken() {
        let answer = |rejected_spans, why: &str| ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans,
                error_message: why.into(),
            }),
        };
        assert_eq!(otlp_taken(None), Taken::All);
        assert_eq!(
            otlp_taken(Some(ExportTraceServiceResponse::default())),
            Taken::All
        );
        // OTLP: a partial success without rejections is a warning only.
        assert_eq!(otlp_taken(Some(answer(0, "slow down"))), Taken::All);
        assert_eq!(
            otlp_taken(Some(answer(3, "bad tags"))),
            Taken::Partly {
                rejected: 3,
                why: "bad tags".into()
            }
        );
        assert_eq!(otlp_taken(Some(answer(-1, "?"))), Taken::All);
    }
}
