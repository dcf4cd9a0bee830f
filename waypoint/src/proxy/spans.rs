//! Sending sampled spans to their Zipkin collector, off the request path:
//! reports queue spans (a bounded queue: when the collector cannot keep up,
//! spans are dropped and counted, requests never wait), and one task posts
//! them in batches, through the collector's upstream cluster as any request
//! the waypoint sends (HBONE to a collector in the mesh).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Method, header};
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::debug;

use super::http::{Attempt, Outgoing, Tries, attempt};
use crate::{
    app::{ClusterKey, Context},
    metrics::SpanLabels,
    telemetry::TracingPlan,
};

/// Spans waiting to be sent; past this, new ones are dropped.
const QUEUE: usize = 8192;

/// Spans per post at most.
const BATCH: usize = 256;

/// How long a span waits for others to share its post.
const LINGER: Duration = Duration::from_secs(1);

/// How long a post may take.
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// A collector: host, port, path.
type Collector = (String, u16, String);

struct Queued {
    plan: Arc<TracingPlan>,
    span: Value,
}

/// The reports' end of the queue.
pub struct Spans {
    tx: mpsc::Sender<Queued>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<Queued>>>,
}

impl Default for Spans {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Spans {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
        }
    }
}

impl Spans {
    /// Queues `span` for `plan`'s collector; a full queue drops it.
    pub fn submit(&self, ctx: &Context, plan: &Arc<TracingPlan>, span: Value) {
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

/// Posts queued spans until the waypoint stops; started once.
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
        let Some(first) = rx.recv().await else {
            return;
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
        // One post per collector.
        let mut by_collector: BTreeMap<Collector, (Arc<TracingPlan>, Vec<Value>)> = BTreeMap::new();
        for queued in batch {
            let key = (
                queued.plan.host.clone(),
                queued.plan.port,
                queued.plan.path.clone(),
            );
            by_collector
                .entry(key)
                .or_insert_with(|| (Arc::clone(&queued.plan), Vec::new()))
                .1
                .push(queued.span);
        }
        for (plan, spans) in by_collector.into_values() {
            let n = spans.len() as u64;
            match post(&ctx, &plan, spans).await {
                Ok(()) => count(&ctx, &plan.provider, "sent", n),
                Err(reason) => {
                    debug!(provider = %plan.provider, %reason, spans = n, "spans not sent");
                    count(&ctx, &plan.provider, "failed", n);
                }
            }
        }
    }
}

async fn post(ctx: &Arc<Context>, plan: &TracingPlan, spans: Vec<Value>) -> Result<(), String> {
    let body = serde_json::to_vec(&Value::Array(spans)).map_err(|e| e.to_string())?;
    let (mut parts, ()) = http::Request::builder()
        .method(Method::POST)
        .uri(plan.path.as_str())
        .body(())
        .map_err(|e| format!("{}: {e}", plan.path))?
        .into_parts();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(host) = HeaderValue::from_str(&format!("{}:{}", plan.host, plan.port)) {
        parts.headers.insert(header::HOST, host);
    }
    let key = ClusterKey {
        host: plan.host.clone(),
        subset: None,
        port: plan.port,
    };
    let compiled = ctx.tables.current();
    let client = super::Client {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        connection: 0,
    };
    let mut once = Tries::mirror(client);
    let sent = attempt(
        ctx,
        &compiled,
        &key,
        &parts,
        Outgoing::Fixed(Bytes::from(body)),
        &mut once,
    );
    match tokio::time::timeout(POST_TIMEOUT, sent).await {
        Err(_) => Err(format!("no answer within {POST_TIMEOUT:?}")),
        Ok(Attempt::Answered { response, .. }) if response.status().is_success() => Ok(()),
        Ok(Attempt::Answered { response, .. }) => {
            Err(format!("the collector answered {}", response.status()))
        }
        Ok(Attempt::Failed { detail, .. }) => Err(detail),
        Ok(Attempt::Local(done)) => Err(format!(
            "no way to {}:{} ({} {})",
            plan.host,
            plan.port,
            done.response.status(),
            done.flags
        )),
    }
}
