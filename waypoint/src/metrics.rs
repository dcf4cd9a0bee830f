//! L7 telemetry with Istio's metric names and labels (`istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes`,
//! `istio_response_bytes`), plus the waypoint's own counters.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use warren_ztunnel::metrics::Metrics as L4Metrics;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub destination_service: String,
    pub subset: String,
}

#[derive(Clone)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RequestLabels, Histogram>,
    pub request_bytes: Family<RequestLabels, Histogram>,
    pub response_bytes: Family<RequestLabels, Histogram>,
    /// Requests answered 503 because a connection pool limit was reached.
    pub overflows: Family<ClusterLabels, Counter>,
    /// Endpoints ejected by outlier detection.
    pub ejections: Family<ClusterLabels, Counter>,
    /// Retries sent.
    pub retries: Family<ClusterLabels, Counter>,
    /// Copies sent to mirrors.
    pub mirrored: Family<ClusterLabels, Counter>,
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
            mirrored: Family::default(),
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
                "warren_waypoint_mirrored_requests",
                "Request copies sent to mirrors",
                metrics.mirrored.clone(),
            );
        });
        metrics
    }
}
