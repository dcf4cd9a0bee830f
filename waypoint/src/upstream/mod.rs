//! DestinationRule policies and upstream clusters.
//!
//! Two halves, data flowing one way:
//!
//! - [`Policies`] (`policy.rs`): every DestinationRule visible to the
//!   waypoint, compiled once per configuration change and filed by
//!   namespace tier, host and workload selector (`lookup.rs`). [`Policies::resolve`] answers
//!   the effective settings of a (host, subset, port) as a [`Resolved`], or
//!   [`UnknownSubset`], which the proxy answers with a 503.
//! - [`Cluster`] (`cluster.rs`): the live state of one (host, subset, port),
//!   created from a [`Resolved`] and shared by concurrent requests: the
//!   balancer ([`Cluster::pick`], helpers in `balance.rs`), the connection
//!   pool limits ([`Cluster::admit`], `pool.rs`) and outlier detection
//!   ([`Cluster::report`], `outlier.rs`).
//!
//! Everything that depends on time takes `now`, so the proxy passes its
//! clock and tests pass theirs.
//!
//! # Defaults
//!
//! Istio's API reference (`networking/v1alpha3/destination_rule.proto`) and
//! what istiod programs into Envoy (`cluster_traffic_policy.go`):
//!
//! | setting | default |
//! |---|---|
//! | load balancer | LEAST_REQUEST (istiod's `defaultLBAlgorithm`; ROUND_ROBIN only behind its legacy flag) |
//! | `ringHash.minimumRingSize` | 1024; `maglev.tableSize` 65537 |
//! | `tcp.maxConnections`, `http.http1MaxPendingRequests`, `http.http2MaxRequests`, `http.maxRetries` | 2^32-1 (0 means unset) |
//! | `http.maxRequestsPerConnection` | unlimited |
//! | `tcp.connectTimeout` | 10s; `http.idleTimeout` 1h |
//! | `consecutive5xxErrors` | 5 (0 turns it off) |
//! | `consecutiveGatewayErrors` | off |
//! | `consecutiveLocalOriginFailures` | 5, counted only with `splitExternalLocalOriginErrors` |
//! | `interval` | 10s; `baseEjectionTime` 30s, growing to at most max(300s, base) (Envoy's `max_ejection_time`) |
//! | `maxEjectionPercent` | 10% (0 means unset); no ejection may exceed it, so with fewer than 10 endpoints the default ejects none (Envoy ≥ 1.31) |
//! | `minHealthPercent` | 0% |
//! | `retryBudget` | off; when set, `percent` 20, `minRetryConcurrency` 3, `budgetInterval` 0s (the active and pending requests are the base), and `maxRetries` no longer applies |
//!
//! Outlier detection is on only where an `outlierDetection` applies.
//!
//! # Where Warren differs from Envoy
//!
//! - With every endpoint ejected, all are used (Envoy, with Istio's 0% panic
//!   threshold, answers "no healthy upstream"); see `cluster.rs`.
//! - The ring hash gives each endpoint a power-of-two number of points,
//!   counted over all endpoints rather than the healthy ones, so that
//!   ejecting or removing one moves only its keys; see `balance.rs`.
//! - Keys are hashed with FNV-1a/fmix64, not xxHash: a key lands on the same
//!   endpoint on every Warren waypoint, not on the one Envoy would choose.
//!
//! # Not covered
//!
//! `tls` with `ISTIO_MUTUAL` (the mesh's own mTLS, HBONE, carries traffic to
//! meshed endpoints; `tls.rs` starts SIMPLE and MUTUAL TLS), Envoy's
//! success-rate and failure-percentage detectors (Istio turns them off), and
//! `tcpKeepalive` on HBONE connections (it applies to endpoints outside the
//! mesh). The mesh-wide `h2UpgradePolicy` and
//! `localityLbSetting` are taken as their defaults (`DO_NOT_UPGRADE`;
//! locality failover on).

mod backend_tls;
mod balance;
mod cluster;
mod locality;
mod lookup;
mod outlier;
mod policy;
mod pool;
#[cfg(test)]
mod tests;
mod tls;

use std::collections::BTreeMap;

pub use backend_tls::{BackendTlsError, BackendTlsTable};
pub use balance::{HashInput, SetCookie};
pub use cluster::{Cluster, Endpoint, Picked, Unpicked};
pub use locality::{HOSTNAME_LABEL, LocalityLb, PriorityLabel, Proximity};
pub use lookup::Scope;
pub use outlier::Outcome;
pub use policy::{
    ConsistentHash, DrInput, HashCookie, HashKey, HashTable, Keepalive, LoadBalancer,
    OutlierSettings, Policies, PolicyError, PoolLimits, Resolved, RetryBudget, UnknownSubset,
    UpstreamHttp, Warmup,
};
pub(crate) use pool::Pool;
pub use pool::{Overflow, Permit, RetryPermit};
pub use tls::{Credentials, Origination, Speaks, TlsSettings};

/// Whether an endpoint with `labels` belongs to a subset selecting
/// `selector`: every selector label present with the same value. The empty
/// selector takes every endpoint.
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

/// Whether the waypoint may dial `ip` for an endpoint: not an address of its
/// own host (loopback, unspecified, link-local: its admin port listens on
/// loopback, a cloud's metadata service on link-local), nor multicast. A
/// ServiceEntry is tenant input, and the waypoint may be shared: an entry
/// naming one of these would reach the waypoint's host, not a destination.
pub fn dialable(ip: std::net::IpAddr) -> bool {
    let ip = ip.to_canonical();
    let link_local = match ip {
        std::net::IpAddr::V4(v4) => v4.is_link_local() || v4.is_broadcast(),
        std::net::IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || link_local)
}
