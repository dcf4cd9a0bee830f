//! L7 telemetry with Istio's metric names and labels (`istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes`,
//! `istio_response_bytes`), plus the waypoint's own counters.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use http::HeaderValue;
use prometheus_client::{
    encoding::{EncodeLabelSet, LabelSetEncoder},
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use warren_ztunnel::{metrics::Metrics as L4Metrics, state::Workload};

use crate::telemetry::{Attributes, MetricsPlan, RequestMetric, TagChange};

/// `value` as a Prometheus label value may hold it: the text encoder writes
/// values as they are, and a `"` or `\` from a peer (a header, a
/// `grpc-status`) would make the whole scrape unreadable.
pub fn escaped(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Istio's standard request labels, as a waypoint reports them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_canonical_service: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_canonical_service: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub request_protocol: &'static str,
    pub response_code: u16,
    pub grpc_response_status: String,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

impl RequestLabels {
    /// Every label, by name, in the order Istio lists them.
    pub fn pairs(&self) -> Vec<(String, String)> {
        let fields: [(&str, String); 18] = [
            ("reporter", self.reporter.to_owned()),
            ("source_workload", self.source_workload.clone()),
            (
                "source_workload_namespace",
                self.source_workload_namespace.clone(),
            ),
            ("source_principal", self.source_principal.clone()),
            (
                "source_canonical_service",
                self.source_canonical_service.clone(),
            ),
            ("destination_workload", self.destination_workload.clone()),
            (
                "destination_workload_namespace",
                self.destination_workload_namespace.clone(),
            ),
            ("destination_principal", self.destination_principal.clone()),
            (
                "destination_canonical_service",
                self.destination_canonical_service.clone(),
            ),
            ("destination_version", self.destination_version.clone()),
            ("destination_service", self.destination_service.clone()),
            (
                "destination_service_name",
                self.destination_service_name.clone(),
            ),
            (
                "destination_service_namespace",
                self.destination_service_namespace.clone(),
            ),
            ("request_protocol", self.request_protocol.to_owned()),
            ("response_code", self.response_code.to_string()),
            ("grpc_response_status", self.grpc_response_status.clone()),
            ("response_flags", self.response_flags.to_owned()),
            (
                "connection_security_policy",
                self.connection_security_policy.to_owned(),
            ),
        ];
        fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }
}

/// A request series' labels: Istio's standard set, or one a Telemetry's
/// `tagOverrides` changed (labels removed or added).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every series is Standard: boxing it would cost an allocation per lookup to save nothing"
)]
pub enum SeriesLabels {
    Standard(RequestLabels),
    Changed(Vec<(String, String)>),
}

impl EncodeLabelSet for SeriesLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        match self {
            SeriesLabels::Standard(labels) => labels.encode(encoder),
            SeriesLabels::Changed(pairs) => pairs.encode(encoder),
        }
    }
}

/// What one request's metrics observe.
#[derive(Clone, Copy, Debug)]
pub struct Observed {
    pub duration_ms: f64,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

impl RequestMetrics {
    pub fn record(&self, observed: Observed) {
        self.requests.inc();
        self.duration.observe(observed.duration_ms);
        self.request_bytes.observe(observed.request_bytes as f64);
        self.response_bytes.observe(observed.response_bytes as f64);
    }
}

/// The four request metrics of one label set.
#[derive(Clone)]
pub struct RequestMetrics {
    pub requests: Counter,
    pub duration: Histogram,
    pub request_bytes: Histogram,
    pub response_bytes: Histogram,
}

/// What varies between the requests of one downstream connection (its
/// source, peer and service are fixed): the label sets it has reported, so
/// that a request after the first neither builds its labels nor hashes them
/// four times.
#[derive(Default)]
pub struct RequestMetricsCache {
    entries: Mutex<Vec<(CacheKey, RequestMetrics)>>,
}

struct CacheKey {
    /// Held, so that the address compared stays this workload's.
    destination: Option<Arc<Workload>>,
    grpc: bool,
    response_code: u16,
    grpc_response_status: Option<HeaderValue>,
    response_flags: &'static str,
}

/// The labels that vary between one connection's requests.
pub struct Varying<'a> {
    pub destination: Option<&'a Arc<Workload>>,
    pub grpc: bool,
    pub response_code: u16,
    pub grpc_response_status: Option<&'a HeaderValue>,
    pub response_flags: &'static str,
}

impl CacheKey {
    fn is(&self, v: &Varying<'_>) -> bool {
        self.response_code == v.response_code
            && self.grpc == v.grpc
            && self.response_flags == v.response_flags
            && match (&self.destination, v.destination) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
            && self.grpc_response_status.as_ref() == v.grpc_response_status
    }
}

/// Label sets one connection keeps; past that, the cache starts over.
const CACHED_LABEL_SETS: usize = 16;

impl RequestMetricsCache {
    /// The metrics for these varying labels; `labels` builds the full label
    /// set the first time.
    pub fn get(
        &self,
        metrics: &Metrics,
        varying: Varying<'_>,
        labels: impl FnOnce() -> RequestLabels,
    ) -> RequestMetrics {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, found)) = entries.iter().find(|(key, _)| key.is(&varying)) {
            return found.clone();
        }
        let found = metrics.for_labels(labels());
        if entries.len() >= CACHED_LABEL_SETS {
            entries.clear();
        }
        entries.push((
            CacheKey {
                destination: varying.destination.cloned(),
                grpc: varying.grpc,
                response_code: varying.response_code,
                grpc_response_status: varying.grpc_response_status.cloned(),
                response_flags: varying.response_flags,
            },
            found.clone(),
        ));
        found
    }
}

/// A tracing provider's spans: `sent`, `failed`, `dropped`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpanLabels {
    pub provider: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub destination_service: String,
    pub subset: String,
}

/// An external authorizer's answers: `ok`, `denied`, `error` (refused with
/// `statusOnError`), `failure_mode_allowed` (let through by `failOpen`),
/// `undefined` (a policy named a provider the mesh config lacks).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExtAuthzLabels {
    pub provider: String,
    pub result: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    pub requests: Family<SeriesLabels, Counter>,
    pub duration: Family<SeriesLabels, Histogram>,
    pub request_bytes: Family<SeriesLabels, Histogram>,
    pub response_bytes: Family<SeriesLabels, Histogram>,
    /// Requests answered 503 because a connection pool limit was reached.
    pub overflows: Family<ClusterLabels, Counter>,
    /// Endpoints ejected by outlier detection.
    pub ejections: Family<ClusterLabels, Counter>,
    /// Retries sent.
    pub retries: Family<ClusterLabels, Counter>,
    /// Retries not made because `http.maxRetries` (or the retry budget's
    /// limit) were already in flight.
    pub retry_overflows: Family<ClusterLabels, Counter>,
    /// Copies sent to mirrors.
    pub mirrored: Family<ClusterLabels, Counter>,
    /// Checks of CUSTOM policies' providers, by result.
    pub ext_authz: Family<ExtAuthzLabels, Counter>,
    /// Spans of sampled requests, by what became of them.
    pub spans: Family<SpanLabels, Counter>,
}

/// Istio's duration buckets (milliseconds).
fn duration_histogram() -> Histogram {
    Histogram::new([
        0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
        30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
    ])
}

/// Istio's size buckets (bytes): 1 to 10^7.
fn size_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 10.0, 8))
}

impl Metrics {
    /// The request metrics of one label set (handles on the families' series).
    pub fn for_labels(&self, labels: RequestLabels) -> RequestMetrics {
        let labels = SeriesLabels::Standard(labels);
        RequestMetrics {
            requests: self.requests.get_or_create(&labels).clone(),
            duration: self.duration.get_or_create(&labels).clone(),
            request_bytes: self.request_bytes.get_or_create(&labels).clone(),
            response_bytes: self.response_bytes.get_or_create(&labels).clone(),
        }
    }

    /// Records one request as a Telemetry's `plan` shapes it: metrics it
    /// disables are left alone (no series is made for them), labels its
    /// `tagOverrides` name are removed or set from `facts`.
    pub fn record_planned(
        &self,
        plan: &MetricsPlan,
        labels: &RequestLabels,
        attributes: &Attributes<'_, '_>,
        observed: Observed,
    ) {
        let standard = labels.pairs();
        // Each label's new value, worked out once for the four metrics.
        let mut values: BTreeMap<&str, String> = BTreeMap::new();
        for metric in RequestMetric::EACH {
            let planned = plan.get(metric);
            if planned.disabled {
                continue;
            }
            let mut pairs = standard.clone();
            for (tag, change) in &planned.tags {
                pairs.retain(|(name, _)| name != tag);
                if let TagChange::Upsert(expr) = change {
                    let value = values
                        .entry(tag)
                        .or_insert_with(|| escaped(&expr.label(attributes)));
                    pairs.push((tag.clone(), value.clone()));
                }
            }
            // Unchanged after all (a label set to the value it had): the
            // standard series, not a twin of it.
            let labels = if pairs == standard {
                SeriesLabels::Standard(labels.clone())
            } else {
                SeriesLabels::Changed(pairs)
            };
            match metric {
                RequestMetric::Count => {
                    self.requests.get_or_create(&labels).inc();
                }
                RequestMetric::Duration => {
                    self.duration
                        .get_or_create(&labels)
                        .observe(observed.duration_ms);
                }
                RequestMetric::RequestSize => {
                    self.request_bytes
                        .get_or_create(&labels)
                        .observe(observed.request_bytes as f64);
                }
                RequestMetric::ResponseSize => {
                    self.response_bytes
                        .get_or_create(&labels)
                        .observe(observed.response_bytes as f64);
                }
            }
        }
    }

    /// Registers the L7 metrics beside ztunnel's L4 ones in one registry.
    pub fn register(l4: &L4Metrics) -> Metrics {
        let metrics = Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            request_bytes: Family::new_with_constructor(size_histogram),
            response_bytes: Family::new_with_constructor(size_histogram),
            overflows: Family::default(),
            ejections: Family::default(),
            retries: Family::default(),
            retry_overflows: Family::default(),
            mirrored: Family::default(),
            ext_authz: Family::default(),
            spans: Family::default(),
        };
        l4.register(|r: &mut Registry| {
            r.register(
                "istio_requests",
                "Requests handled",
                metrics.requests.clone(),
            );
            r.register(
                "istio_request_duration_milliseconds",
                "Request duration",
                metrics.duration.clone(),
            );
            r.register(
                "istio_request_bytes",
                "Request body sizes",
                metrics.request_bytes.clone(),
            );
            r.register(
                "istio_response_bytes",
                "Response body sizes",
                metrics.response_bytes.clone(),
            );
            r.register(
                "warren_waypoint_upstream_overflow",
                "Requests refused with 503 by a connection pool limit",
                metrics.overflows.clone(),
            );
            r.register(
                "warren_waypoint_outlier_ejections",
                "Endpoints ejected by outlier detection",
                metrics.ejections.clone(),
            );
            r.register(
                "warren_waypoint_retries",
                "Retries sent upstream",
                metrics.retries.clone(),
            );
            r.register(
                "warren_waypoint_retry_overflow",
                "Retries not made because http.maxRetries (or the retry budget) were already in flight",
                metrics.retry_overflows.clone(),
            );
            r.register(
                "warren_waypoint_mirrored_requests",
                "Request copies sent to mirrors",
                metrics.mirrored.clone(),
            );
            r.register(
                "warren_waypoint_ext_authz_checks",
                "Requests a CUSTOM policy's external authorizer was asked about, by result",
                metrics.ext_authz.clone(),
            );
            r.register(
                "warren_waypoint_spans",
                "Spans of sampled requests, by what became of them: sent to the collector, failed (not taken), dropped (queue full)",
                metrics.spans.clone(),
            );
        });
        metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(code: u16) -> RequestLabels {
        RequestLabels {
            reporter: "waypoint",
            source_workload: "a".into(),
            source_workload_namespace: "ns".into(),
            source_principal: "p".into(),
            source_canonical_service: "a".into(),
            destination_workload: "unknown".into(),
            destination_workload_namespace: "unknown".into(),
            destination_principal: "unknown".into(),
            destination_canonical_service: "unknown".into(),
            destination_version: "unknown".into(),
            destination_service: "b.ns.svc.cluster.local".into(),
            destination_service_name: "b".into(),
            destination_service_namespace: "ns".into(),
            request_protocol: "http",
            response_code: code,
            grpc_response_status: String::new(),
            response_flags: "-",
            connection_security_policy: "mutual_tls",
        }
    }

    fn varying(code: u16) -> Varying<'static> {
        Varying {
            destination: None,
            grpc: false,
            response_code: code,
            grpc_response_status: None,
            response_flags: "-",
        }
    }

    #[test]
    fn cached_label_sets_count_in_the_families() {
        let metrics = Metrics::register(&L4Metrics::new());
        let cache = RequestMetricsCache::default();
        let mut built = 0;
        for code in [200, 200, 503, 200] {
            cache
                .get(&metrics, varying(code), || {
                    built += 1;
                    labels(code)
                })
                .requests
                .inc();
        }
        assert_eq!(built, 2, "one label set per code");
        let count = |code| {
            metrics
                .requests
                .get_or_create(&SeriesLabels::Standard(labels(code)))
                .get()
        };
        assert_eq!(count(200), 3);
        assert_eq!(count(503), 1);
    }
}
