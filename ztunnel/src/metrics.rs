//! L4 telemetry with Istio's metric names and labels, so existing dashboards work, plus
//! counters of refused connections by reason.

use std::sync::Mutex;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use crate::state::{Service, Workload};

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Reporter {
    source,
    destination,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum SecurityPolicy {
    mutual_tls,
    unknown,
}

/// Istio's TCP labels, as Istio's ztunnel reports them: dashboards and Kiali group by
/// the `*_app`, `*_version` and `destination_service_*` ones as much as by workloads.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: &'static str,
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_cluster: &'static str,
    pub request_protocol: &'static str,
    pub response_flags: &'static str,
    pub connection_security_policy: SecurityPolicy,
}

const UNKNOWN: &str = "unknown";

/// The cluster of every known workload: Warren runs one cluster, and Istio names an
/// unnamed one `Kubernetes`.
const CLUSTER: &str = "Kubernetes";

impl ConnectionLabels {
    pub fn new(
        reporter: Reporter,
        source: Option<&Workload>,
        source_identity: Option<&warren_api::Identity>,
        destination: Option<&Workload>,
        destination_service: Option<&Service>,
        security: SecurityPolicy,
    ) -> Self {
        let name = |w: Option<&Workload>| w.map_or(UNKNOWN, Workload::telemetry_name).to_owned();
        let namespace =
            |w: Option<&Workload>| w.map_or(UNKNOWN, |w| w.namespace.as_str()).to_owned();
        let canonical = |w: Option<&Workload>| {
            w.map(|w| {
                if w.canonical_name.is_empty() {
                    w.telemetry_name()
                } else {
                    &w.canonical_name
                }
            })
            .unwrap_or(UNKNOWN)
            .to_owned()
        };
        let revision = |w: Option<&Workload>| {
            w.map(|w| {
                if w.canonical_revision.is_empty() {
                    "latest"
                } else {
                    &w.canonical_revision
                }
            })
            .unwrap_or(UNKNOWN)
            .to_owned()
        };
        let cluster = |w: Option<&Workload>| if w.is_some() { CLUSTER } else { UNKNOWN };
        let principal = |id: Option<&warren_api::Identity>| {
            id.map_or_else(|| UNKNOWN.to_owned(), ToString::to_string)
        };
        let service = |f: fn(&Service) -> &str| {
            destination_service
                .map(f)
                .filter(|v| !v.is_empty())
                .unwrap_or(UNKNOWN)
                .to_owned()
        };
        ConnectionLabels {
            reporter,
            source_workload: name(source),
            source_canonical_service: canonical(source),
            source_canonical_revision: revision(source),
            source_workload_namespace: namespace(source),
            // The source side knows its pod from the kernel; the destination side only
            // knows what mutual TLS proved: a plaintext peer's address names no one.
            source_principal: principal(source_identity.or(match reporter {
                Reporter::source => source.and_then(|w| w.identity.as_ref()),
                Reporter::destination => None,
            })),
            source_app: canonical(source),
            source_version: revision(source),
            source_cluster: cluster(source),
            destination_service: service(Service::telemetry_host),
            destination_service_namespace: service(|s| &s.namespace),
            destination_service_name: service(|s| &s.name),
            destination_workload: name(destination),
            destination_canonical_service: canonical(destination),
            destination_canonical_revision: revision(destination),
            destination_workload_namespace: namespace(destination),
            destination_principal: principal(destination.and_then(|w| w.identity.as_ref())),
            destination_app: canonical(destination),
            destination_version: revision(destination),
            destination_cluster: cluster(destination),
            request_protocol: "tcp",
            response_flags: "-",
            connection_security_policy: security,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// The listener: outbound, inbound (HBONE), inbound_passthrough.
    pub direction: &'static str,
    pub reason: &'static str,
}

/// What the DNS proxy did with a query: `mesh` (answered from the mesh's names),
/// `forwarded`, `dropped` (not a DNS query).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    /// `udp` or `tcp`.
    pub transport: &'static str,
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub opened: Family<ConnectionLabels, Counter>,
    pub closed: Family<ConnectionLabels, Counter>,
    pub sent: Family<ConnectionLabels, Counter>,
    pub received: Family<ConnectionLabels, Counter>,
    pub refused: Family<RefusalLabels, Counter>,
    /// Early-sending CONNECTs a peer refused unprocessed (it went away, e.g.
    /// handing its node over), opened again on another connection.
    pub sent_again: Counter,
    pub dns_queries: Family<DnsLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let opened = Family::<ConnectionLabels, Counter>::default();
        let closed = Family::<ConnectionLabels, Counter>::default();
        let sent = Family::<ConnectionLabels, Counter>::default();
        let received = Family::<ConnectionLabels, Counter>::default();
        let refused = Family::<RefusalLabels, Counter>::default();
        let sent_again = Counter::default();
        let dns_queries = Family::<DnsLabels, Counter>::default();
        // The registry adds `_total` to counters.
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent by the client (to the destination)",
            sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received by the client (from the destination)",
            received.clone(),
        );
        registry.register(
            "warren_ztunnel_refused_connections",
            "Connections ztunnel refused or reset, by listener and reason",
            refused.clone(),
        );
        registry.register(
            "warren_ztunnel_hbone_streams_sent_again",
            "Early-sending CONNECTs a peer refused unprocessed (it went away), opened again on another connection",
            sent_again.clone(),
        );
        registry.register(
            "warren_ztunnel_dns_queries",
            "Pods' DNS queries the DNS proxy answered from the mesh's names, forwarded, or dropped",
            dns_queries.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            opened,
            closed,
            sent,
            received,
            refused,
            sent_again,
            dns_queries,
        }
    }

    pub fn refuse(&self, direction: &'static str, reason: &'static str) {
        self.refused
            .get_or_create(&RefusalLabels { direction, reason })
            .inc();
    }

    pub fn dns_query(&self, transport: &'static str, outcome: &'static str) {
        self.dns_queries
            .get_or_create(&DnsLabels { transport, outcome })
            .inc();
    }

    /// Adds metrics of another component to the same registry (the waypoint's
    /// L7 metrics), so one scrape returns them all.
    pub fn register(&self, register: impl FnOnce(&mut Registry)) {
        register(&mut self.registry.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
