//! What a request through the waypoint reports (its `istio_*` metrics and its
//! access line), once its answer's body has been sent downstream: the
//! duration, the response size and a gRPC status sent in trailers are then
//! the real ones, as Envoy reports them.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context as TaskContext, Poll},
    time::{Instant, SystemTime},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use hyper::body::{Body as _, Frame, SizeHint};
use tracing::info;
use warren_ztunnel::state::Workload;

use super::{
    Downstream,
    replay::{BoxError, ReadCount},
    trace::Span,
};
use crate::{
    app::{Body, Context},
    metrics::{Observed, RequestLabels, Varying},
    telemetry::{
        Attributes, Facts, Resolved, TracingPlan,
        attributes::RequestFacts,
        span::{self, Record},
    },
};

pub(super) const GRPC_STATUS: &str = "grpc-status";

/// What was known of a request when it arrived, for its report.
pub(super) struct Arrived {
    pub(super) start: Instant,
    pub(super) request_id: HeaderValue,
    pub(super) method: http::Method,
    /// Empty unless access lines are written.
    pub(super) path: String,
    pub(super) grpc: bool,
    pub(super) request_bytes: u64,
    /// What Telemetry expressions may read of it, kept only when one reads
    /// `request.*`.
    pub(super) facts: Option<Box<RequestFacts>>,
    /// The waypoint's span, when a tracing provider is in force.
    pub(super) span: Option<Span>,
}

/// A request whose answer is on its way downstream: reported (metrics and
/// access line) once the answer's body has been sent, so the duration, the
/// response size and a gRPC status sent in trailers are the real ones, as
/// Envoy reports them.
pub(super) struct Finished {
    pub(super) ctx: Arc<Context>,
    pub(super) down: Arc<Downstream>,
    pub(super) request: Arrived,
    /// The answer's status; 0 when the client went away before it (as Envoy
    /// reports it).
    pub(super) response_code: u16,
    /// From the headers (a trailers-only gRPC answer), else the trailers.
    pub(super) grpc_status: Option<HeaderValue>,
    pub(super) flags: &'static str,
    pub(super) route: String,
    pub(super) upstream: Option<SocketAddr>,
    pub(super) destination: Option<Arc<Workload>>,
    pub(super) attempts: u32,
    /// Why an AuthorizationPolicy denied it.
    pub(super) details: Option<String>,
    /// The bytes read of the client's body, when it was sent on.
    pub(super) request_body: Option<ReadCount>,
    /// The Telemetry in force for the request's Service.
    pub(super) telemetry: Arc<Resolved>,
    /// The answer's headers, kept only when a Telemetry expression or an
    /// access-line format reads them.
    pub(super) response_headers: Option<HeaderMap>,
    /// The answer's trailers, kept only when an access-line format reads
    /// them.
    pub(super) response_trailers: Option<HeaderMap>,
}

/// How the answer's body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    Complete,
    /// The upstream failed mid-body (Envoy's `UC`).
    UpstreamFailed,
    /// The route's timeout cut the answer short (Envoy's `UT`).
    TimedOut,
    /// The client went away first (Envoy's `DC`).
    DownstreamGone,
}

impl Finished {
    fn report(self, response_bytes: u64, ending: Ending) {
        let flags = match (ending, self.flags) {
            (Ending::UpstreamFailed, "-") => "UC",
            (Ending::TimedOut, _) => "UT",
            (Ending::DownstreamGone, "-") => "DC",
            (_, flags) => flags,
        };
        let down = &self.down;
        let request = &self.request;
        let request_bytes = self
            .request_body
            .as_ref()
            .map_or(request.request_bytes, ReadCount::get);
        let elapsed = request.start.elapsed();
        let observed = Observed {
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            request_bytes,
            response_bytes,
        };
        let telemetry = &self.telemetry;
        let plan = &telemetry.metrics;
        let logging = tracing::enabled!(target: "access", tracing::Level::INFO);
        // What expressions and formats read, built only for them.
        let reads =
            (!plan.off && !plan.is_plain()) || (logging && telemetry.access_log.reads_attributes());
        let facts = reads.then(|| Facts {
            request: request.facts.as_deref(),
            request_id: request.request_id.to_str().ok(),
            request_bytes,
            response_code: Some(self.response_code),
            response_headers: self.response_headers.as_ref(),
            response_bytes,
            grpc_status: self.grpc_status.as_ref(),
            flags,
            source: Some(down.source_ip),
            principal: Some(format!("spiffe://{}", down.peer.identity.principal())),
            destination: Some(SocketAddr::new(down.vip, down.port)),
            upstream: self.upstream,
            server_name: None,
            start: SystemTime::now().checked_sub(elapsed),
            duration: Some(elapsed),
            route: Some(&self.route),
            // Envoy's details of an answer the upstream gave.
            details: self
                .details
                .as_deref()
                .or((self.upstream.is_some() && matches!(flags, "-" | "URX"))
                    .then_some("via_upstream")),
            attempts: Some(self.attempts),
            service: Some(&down.service.hostname),
            upstream_principal: self
                .destination
                .as_ref()
                .and_then(|w| w.identity.as_ref())
                .map(|id| format!("spiffe://{}", id.principal())),
            response_trailers: self.response_trailers.as_ref(),
        });
        let attributes = facts.as_ref().map(Attributes::of);
        if plan.is_plain() {
            // Istio's labels, as the connection's earlier requests had them.
            down.metrics
                .get(
                    &self.ctx.metrics,
                    Varying {
                        destination: self.destination.as_ref(),
                        grpc: request.grpc,
                        response_code: self.response_code,
                        grpc_response_status: self.grpc_status.as_ref(),
                        response_flags: flags,
                    },
                    || self.labels(flags),
                )
                .record(observed);
        } else if let (false, Some(attributes)) = (plan.off, &attributes) {
            self.ctx
                .metrics
                .record_planned(plan, &self.labels(flags), attributes, observed);
        }
        if let (Some(plan), Some(span)) = (&telemetry.tracing, &request.span)
            && span.sampled
        {
            self.send_span(plan, span, flags, request_bytes, response_bytes);
        }
        if !logging {
            return;
        }
        telemetry.access_log.write(facts.as_ref(), attributes.as_ref(), || {
            info!(
                target: "access",
                request_id = %request.request_id.to_str().unwrap_or_default(),
                src = %down.source_ip,
                src_identity = %down.peer.identity,
                service = %down.service.hostname,
                method = %request.method,
                path = request.path,
                route = %self.route,
                status = self.response_code,
                grpc_status = self.grpc_status.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"),
                flags,
                details = self.details.as_deref().unwrap_or("-"),
                upstream = ?self.upstream,
                attempts = self.attempts,
                request_bytes,
                response_bytes,
                duration_ms = observed.duration_ms,
                "request"
            );
        });
    }

    /// Queues the waypoint's span of this request for its collector.
    fn send_span(
        &self,
        plan: &Arc<TracingPlan>,
        span: &Span,
        flags: &'static str,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        let down = &self.down;
        let request = &self.request;
        let config = &self.ctx.config;
        let gateway = config.gateway.as_deref().unwrap_or("waypoint");
        let local_service = format!("{gateway}.{}", config.namespace);
        let mut tags = vec![
            ("component", "proxy".to_owned()),
            ("http.method", request.method.to_string()),
            (
                "http.url",
                span::cut(
                    &format!(
                        "http://{}:{}{}",
                        down.service.hostname, down.port, request.path
                    ),
                    plan.max_tag_length,
                ),
            ),
            ("http.status_code", self.response_code.to_string()),
            ("response_flags", flags.to_owned()),
            ("request_size", request_bytes.to_string()),
            ("response_size", response_bytes.to_string()),
            (
                "guid:x-request-id",
                request.request_id.to_str().unwrap_or_default().to_owned(),
            ),
            ("peer.address", down.source_ip.to_string()),
            ("istio.canonical_service", gateway.to_owned()),
            ("istio.namespace", config.namespace.clone()),
        ];
        if let Some(upstream) = self.upstream {
            tags.push(("upstream.address", upstream.to_string()));
        }
        if let Some(status) = self.grpc_status.as_ref().and_then(|v| v.to_str().ok()) {
            tags.push(("grpc.status_code", status.to_owned()));
        }
        if self.response_code == 0 || self.response_code >= 500 {
            tags.push(("error", "true".to_owned()));
        }
        let record = Record {
            trace_id: span.trace_id.clone(),
            id: span.id,
            parent: span.parent,
            start: span.start,
            duration: request.start.elapsed(),
            name: format!("{}:{}/*", down.service.hostname, down.port),
            local_service,
            source: down.source_ip,
            tags: tags
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .chain(span.tags.iter().cloned())
                .collect(),
            error: self.response_code == 0 || self.response_code >= 500,
        };
        self.ctx.spans.submit(&self.ctx, plan, record);
    }

    fn labels(&self, flags: &'static str) -> RequestLabels {
        request_labels(
            &self.down,
            self.destination.as_deref(),
            self.response_code,
            self.grpc_status.as_ref(),
            flags,
            self.request.grpc,
        )
    }
}

/// A request still waiting for its answer. Dropped so (the client reset the
/// stream or closed its connection first), it is reported with response
/// code 0 and `DC`, as Envoy reports it: a client giving up on a slow
/// service shows in the metrics and the access log.
pub(super) struct Unanswered(Option<Finished>);

impl Unanswered {
    /// `finished` says what is known before the answer; the rest is filled
    /// in by [`Unanswered::answered`]'s caller.
    pub(super) fn new(finished: Finished) -> Self {
        Self(Some(finished))
    }

    /// The answer's headers are ready: the request is reported with its body.
    pub(super) fn answered(mut self) -> Option<Finished> {
        self.0.take()
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(mut finished) = self.0.take() {
            finished.response_code = 0;
            finished.flags = "DC";
            finished.report(0, Ending::DownstreamGone);
        }
    }
}

/// The answer's body on its way downstream, counted; its end (or its drop
/// before the end) reports the request.
pub(super) struct Measured {
    inner: Body,
    bytes: u64,
    finished: Option<Finished>,
}

impl Measured {
    pub(super) fn new(inner: Body, finished: Finished) -> Self {
        Self {
            inner,
            bytes: 0,
            finished: Some(finished),
        }
    }

    fn finish(&mut self, ending: Ending) {
        if let Some(finished) = self.finished.take() {
            finished.report(self.bytes, ending);
        }
    }
}

impl hyper::body::Body for Measured {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                } else if let (Some(trailers), Some(finished)) =
                    (frame.trailers_ref(), this.finished.as_mut())
                {
                    if let Some(status) = trailers.get(GRPC_STATUS) {
                        finished.grpc_status = Some(status.clone());
                    }
                    if finished.telemetry.reads_response_trailers {
                        finished.response_trailers = Some(trailers.clone());
                    }
                }
                if this.inner.is_end_stream() {
                    this.finish(Ending::Complete);
                }
            }
            Poll::Ready(Some(Err(error))) => {
                this.finish(if error.is::<super::http::RouteTimeout>() {
                    Ending::TimedOut
                } else {
                    Ending::UpstreamFailed
                })
            }
            Poll::Ready(None) => this.finish(Ending::Complete),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        // An empty body may never be polled: dropped at its end, it is whole.
        let ending = if self.inner.is_end_stream() {
            Ending::Complete
        } else {
            Ending::DownstreamGone
        };
        self.finish(ending);
    }
}

/// Istio's labels for one request.
fn request_labels(
    down: &Downstream,
    destination: Option<&Workload>,
    response_code: u16,
    grpc_status: Option<&HeaderValue>,
    flags: &'static str,
    grpc: bool,
) -> RequestLabels {
    let unknown = || "unknown".to_owned();
    let source = down.source.as_deref();
    let service = &down.service;
    // A pod addressed directly has no Service (`Service::of_pod`): its
    // address is no label (one series per pod address would churn).
    let (destination_service, destination_service_name, destination_service_namespace) =
        if warren_api::key::is_workload(&service.key) {
            (unknown(), unknown(), unknown())
        } else {
            (
                service.hostname.clone(),
                service.name.clone(),
                service.namespace.clone(),
            )
        };
    RequestLabels {
        reporter: "waypoint",
        source_workload: source.map_or_else(unknown, |w| w.telemetry_name().to_owned()),
        source_workload_namespace: source.map_or_else(unknown, |w| w.namespace.clone()),
        source_principal: format!("spiffe://{}", down.peer.identity.principal()),
        source_canonical_service: source.map_or_else(unknown, |w| w.canonical_name.clone()),
        destination_workload: destination.map_or_else(unknown, |w| w.telemetry_name().to_owned()),
        destination_workload_namespace: destination.map_or_else(unknown, |w| w.namespace.clone()),
        destination_principal: destination
            .and_then(|w| w.identity.as_ref())
            .map_or_else(unknown, |id| format!("spiffe://{}", id.principal())),
        destination_canonical_service: destination
            .map_or_else(unknown, |w| w.canonical_name.clone()),
        destination_version: destination.map_or_else(unknown, |w| w.canonical_revision.clone()),
        destination_service,
        destination_service_name,
        destination_service_namespace,
        request_protocol: if grpc { "grpc" } else { "http" },
        response_code,
        grpc_response_status: crate::metrics::escaped(
            grpc_status
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default(),
        ),
        response_flags: flags,
        connection_security_policy: "mutual_tls",
    }
}
