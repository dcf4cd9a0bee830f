//! DestinationRules compiled per host, and the settings one (host, subset,
//! port) ends up with.
//!
//! Lookup follows Istio: an exact host beats a wildcard, a longer wildcard
//! beats a shorter one (`*` matches every host). Several rules for the same
//! host are merged as Istio merges them (`pilot/pkg/model/destination_rule.go`,
//! `mergeDestinationRule`): the subsets of later rules are appended unless a
//! subset of that name already exists, and the top-level traffic policy of
//! the first rule that has one wins. Which rules are visible to this waypoint
//! and which of them apply to a host (exportTo, namespace precedence,
//! workloadSelector) is `lookup.rs`'s business.
//!
//! Merging follows Istio's `MergeSubsetTrafficPolicy`
//! (`pilot/pkg/networking/core/cluster_traffic_policy.go`), each of load
//! balancer, connection pool and outlier detection taken whole, never field
//! by field (`tls` too, and `retryBudget`, which has no port-level form):
//!
//! 1. the rule's top-level policy;
//! 2. replaced by its `portLevelSettings` entry for the port, if any: a part
//!    the entry omits falls back to the default, not to the top level;
//! 3. overridden by the parts the subset's policy sets;
//! 4. or, if the subset's policy has a `portLevelSettings` entry for the
//!    port, replaced by that entry (again, omitted parts are defaults).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use warren_model::istio::{
    self, ClientTlsSettings, ConnectionPoolSettings, DestinationRuleSpec, H2UpgradePolicy,
    LoadBalancerSettings, LocalityLbSetting, OutlierDetection, SimpleLb, TrafficPolicy,
};
use warren_ztunnel::state::service::DeclaredHttp;

use super::backend_tls::BackendTlsTable;
use super::locality::{LocalityLb, PriorityLabel};
use super::lookup::{Lookup, Placed, Scope};
use super::tls::{Credentials, Origination, TlsMode, TlsSettings};
use crate::route::ExportTo;

// ---------------------------------------------------------------------------
// Defaults (Istio's, and Envoy's where Istio leaves a field to Envoy)
// ---------------------------------------------------------------------------

/// Istio's connection pool limits default to 2^32-1: in effect unlimited.
pub const UNLIMITED: u32 = u32::MAX;
/// `tcp.connectTimeout` (Istio: 10s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// `http.idleTimeout` and `tcp.idleTimeout` (Istio: 1 hour each).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// `consecutive5xxErrors` when unset (Istio: 5; `0` turns it off).
pub const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
/// `consecutiveLocalOriginFailures` when unset (Istio and Envoy: 5).
pub const DEFAULT_CONSECUTIVE_LOCAL_ORIGIN: u32 = 5;
/// `outlierDetection.interval` (Istio: 10s).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// `outlierDetection.baseEjectionTime` (Istio: 30s).
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
/// Envoy caps the growing ejection time at `max_ejection_time`, which Istio
/// does not expose: 300s, or the base ejection time if that is longer.
pub const DEFAULT_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
/// `maxEjectionPercent` (Istio: 10%).
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;
/// `ringHash.minimumRingSize` (Istio and Envoy: 1024).
pub const DEFAULT_RING_SIZE: usize = 1024;
/// A larger `minimumRingSize` is lowered to this. Rounding (see the ring in
/// `balance.rs`) makes a ring at most twice this: 2M points, 24 MB for one
/// cluster. (Envoy's own cap, `maximum_ring_size`, is 8M.)
pub const MAX_RING_SIZE: usize = 1 << 20;
/// `maglev.tableSize` (Istio and Envoy: 65537).
pub const DEFAULT_MAGLEV_TABLE_SIZE: usize = 65537;
/// Istio refuses maglev tables of this size or more.
const MAGLEV_TABLE_LIMIT: u64 = 5_000_011;

// ---------------------------------------------------------------------------
// Input and errors
// ---------------------------------------------------------------------------

/// One DestinationRule as the waypoint sees it.
#[derive(Clone, Debug)]
pub struct DrInput {
    pub namespace: String,
    pub name: String,
    /// Seconds since the epoch it was created at (0 when not known): rules
    /// for one host merge oldest first.
    pub created: i64,
    /// `spec.host` resolved to a fully qualified name
    /// (`reviews.default.svc.cluster.local`); may be a wildcard
    /// (`*.default.svc.cluster.local`, `*`).
    pub host: String,
    pub spec: DestinationRuleSpec,
}

/// A part of a rule that could not be used. The rest of the rule still
/// applies; the part falls back to its default.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("DestinationRule {namespace}/{name}: {path}: {reason}")]
pub struct PolicyError {
    pub namespace: String,
    pub name: String,
    /// YAML path inside the object, e.g. `spec.subsets[1].name`.
    pub path: String,
    pub reason: String,
}

/// A route named a subset that no DestinationRule for the host defines.
/// Envoy has no cluster for it, so the proxy answers 503 (`NC`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("host {host} has no subset {subset:?} (DestinationRule: {})", rules.as_deref().unwrap_or("none"))]
pub struct UnknownSubset {
    pub host: String,
    pub subset: String,
    /// The rules (`namespace/name`, comma separated) searched, if any.
    pub rules: Option<String>,
}

// ---------------------------------------------------------------------------
// Effective settings
// ---------------------------------------------------------------------------

/// What the waypoint applies to one (host, subset, port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub host: String,
    pub subset: Option<String>,
    pub port: u16,
    /// The rules that applied (`namespace/name`), oldest first; empty when
    /// no rule matched the host.
    pub rules: Vec<String>,
    /// Labels an endpoint must carry (see [`super::selects`]); empty means
    /// every endpoint of the host.
    pub selector: BTreeMap<String, String>,
    pub load_balancer: LoadBalancer,
    /// `loadBalancer.localityLbSetting`; `None` is the mesh default.
    pub locality: Option<LocalityLb>,
    /// `loadBalancer.warmup` (or `warmupDurationSecs`): a new endpoint's
    /// share ramps up (ROUND_ROBIN and LEAST_REQUEST only).
    pub warmup: Option<Warmup>,
    pub pool: PoolLimits,
    /// `retryBudget`, which replaces `pool.max_retries` when set.
    pub retry_budget: Option<RetryBudget>,
    /// `None`: outlier detection is off (no `outlierDetection` applies).
    pub outlier: Option<OutlierSettings>,
}

impl Resolved {
    /// The settings of a host no rule speaks about.
    pub fn defaults(host: &str, port: u16) -> Self {
        Self {
            host: host.to_owned(),
            subset: None,
            port,
            rules: Vec::new(),
            selector: BTreeMap::new(),
            load_balancer: LoadBalancer::default(),
            locality: None,
            warmup: None,
            pool: PoolLimits::default(),
            retry_budget: None,
            outlier: None,
        }
    }
}

/// How an endpoint is chosen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LoadBalancer {
    RoundRobin,
    /// Power of two choices over active requests. Istio's default
    /// (`UNSPECIFIED` and unset mean this since Istio 1.14; `LEAST_CONN` is
    /// its deprecated alias).
    #[default]
    LeastRequest,
    Random,
    /// No balancing: the request goes to the address the client asked for.
    Passthrough,
    ConsistentHash(ConsistentHash),
}

/// Sticky balancing on a hash of one request attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsistentHash {
    pub key: HashKey,
    pub table: HashTable,
}

/// What a request is hashed on. A request without it (no such header,
/// cookie or parameter) goes to a random endpoint, as in Envoy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    Header(HeaderName),
    Cookie(HashCookie),
    SourceIp,
    QueryParameter(String),
}

/// `consistentHash.httpCookie`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashCookie {
    pub name: String,
    /// `Path` of a generated cookie.
    pub path: Option<String>,
    /// With a ttl the proxy generates the cookie when a request lacks it;
    /// a zero ttl makes it a session cookie.
    pub ttl: Option<Duration>,
}

/// The table a hash is looked up in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashTable {
    /// Envoy's ring hash (Istio's default algorithm).
    Ring { minimum_size: usize },
    /// Maglev; `table_size` is prime.
    Maglev { table_size: usize },
}

/// `connectionPool`, as limits of one upstream cluster (Envoy's circuit
/// breakers are per cluster, not per endpoint).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolLimits {
    /// `tcp.maxConnections`.
    pub max_connections: u32,
    /// `http.http1MaxPendingRequests`: requests that may wait for a
    /// connection; one more is refused.
    pub max_pending_requests: u32,
    /// `http.http2MaxRequests`: concurrent requests (both protocols).
    pub max_requests: u32,
    /// `http.maxRequestsPerConnection`; `None` is unlimited. `1` turns
    /// keep-alive off.
    pub max_requests_per_connection: Option<u32>,
    /// `http.maxConcurrentStreams`: streams on one HTTP/2 upstream
    /// connection; more open another connection. `None` is unlimited.
    pub max_concurrent_streams: Option<u32>,
    /// `http.maxRetries`: retries in flight at once.
    pub max_retries: u32,
    /// `tcp.connectTimeout`.
    pub connect_timeout: Duration,
    /// `http.idleTimeout`: an upstream connection without requests for this
    /// long is closed.
    pub idle_timeout: Duration,
    /// `tcp.maxConnectionDuration`; `None` is unlimited.
    pub max_connection_duration: Option<Duration>,
    /// `tcp.idleTimeout`: a connection to a TCP port that moves no byte
    /// either way for this long is closed; `None` (`0s`) is never.
    pub tcp_idle_timeout: Option<Duration>,
    /// `tcp.tcpKeepalive`: TCP keepalive on connections to endpoints outside
    /// the mesh. Meshed endpoints are reached over pooled HBONE connections,
    /// shared by every cluster, which ztunnel's HTTP/2 pings watch instead
    /// (in Istio's waypoint the setting likewise reaches no HBONE socket).
    pub tcp_keepalive: Option<Keepalive>,
    /// `http.h2UpgradePolicy: UPGRADE`.
    pub h2_upgrade: bool,
    /// `http.useClientProtocol`.
    pub use_client_protocol: bool,
    /// The rule's `tls` (a part of its own, set here once merged): TLS to
    /// start on each connection; `None` starts none.
    pub tls: Option<Origination>,
    /// `tls.mode: ISTIO_MUTUAL`: only the mesh's mutual TLS (HBONE) may carry
    /// the connections; an endpoint outside the mesh is refused.
    pub mesh_tls_only: bool,
}

/// Linux's bounds on `TCP_KEEPIDLE`/`TCP_KEEPINTVL` (seconds) and `TCP_KEEPCNT`.
const KEEPALIVE_MAX_SECONDS: u64 = 32_767;
const KEEPALIVE_MAX_PROBES: u32 = 127;

/// `tcp.tcpKeepalive`: each unset field keeps the system's default
/// (`net.ipv4.tcp_keepalive_*`), as Istio documents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe.
    pub time: Option<Duration>,
    /// Between probes.
    pub interval: Option<Duration>,
    /// Unanswered probes before the connection is dropped.
    pub probes: Option<u32>,
}

/// The HTTP version requests go to the endpoints with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamHttp {
    Http1,
    Http2,
    /// The version the client spoke.
    Client,
}

impl PoolLimits {
    /// These limits for a request to `host` (its own, without the port):
    /// a wildcard host's TLS takes its server name from the request
    /// ([`super::Origination::for_request`]); any other is as it is.
    pub fn for_request(&self, host: &str) -> std::borrow::Cow<'_, PoolLimits> {
        match self.tls.as_ref().and_then(|tls| tls.for_request(host)) {
            Some(tls) => std::borrow::Cow::Owned(PoolLimits {
                tls: Some(tls),
                ..self.clone()
            }),
            None => std::borrow::Cow::Borrowed(self),
        }
    }

    /// As istiod picks a cluster's protocol: the client's when
    /// `useClientProtocol` says so; HTTP/2 for a port declaring it or with
    /// `h2UpgradePolicy: UPGRADE`; HTTP/1.1 for a port declaring `http`
    /// (the mesh default is not to upgrade). A port declaring neither gets
    /// the client's version, as a sidecar's protocol sniffing gives.
    pub fn upstream_http(&self, declared: DeclaredHttp) -> UpstreamHttp {
        match declared {
            _ if self.use_client_protocol => UpstreamHttp::Client,
            DeclaredHttp::Http2 => UpstreamHttp::Http2,
            _ if self.h2_upgrade => UpstreamHttp::Http2,
            DeclaredHttp::Http1 => UpstreamHttp::Http1,
            DeclaredHttp::Undeclared => UpstreamHttp::Client,
        }
    }
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self {
            max_connections: UNLIMITED,
            max_pending_requests: UNLIMITED,
            max_requests: UNLIMITED,
            max_requests_per_connection: None,
            max_concurrent_streams: None,
            max_retries: UNLIMITED,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connection_duration: None,
            tcp_idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            tcp_keepalive: None,
            h2_upgrade: false,
            use_client_protocol: false,
            tls: None,
            mesh_tls_only: false,
        }
    }
}

/// `outlierDetection` with Istio's defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierSettings {
    /// Consecutive 5xx (and, unless split, local failures) before
    /// ejection; `None` is off.
    pub consecutive_5xx: Option<u32>,
    /// Consecutive 502/503/504 (and, unless split, local failures);
    /// `None` is off (Istio's default).
    pub consecutive_gateway: Option<u32>,
    /// `splitExternalLocalOriginErrors`: count connect failures, resets and
    /// timeouts apart, in `consecutive_local_origin`.
    pub split_local_origin: bool,
    pub consecutive_local_origin: u32,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
    /// Below this share of healthy endpoints every endpoint is used.
    pub min_health_percent: u32,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        Self {
            consecutive_5xx: Some(DEFAULT_CONSECUTIVE_5XX),
            consecutive_gateway: None,
            split_local_origin: false,
            consecutive_local_origin: DEFAULT_CONSECUTIVE_LOCAL_ORIGIN,
            interval: DEFAULT_INTERVAL,
            base_ejection_time: DEFAULT_BASE_EJECTION_TIME,
            max_ejection_time: DEFAULT_MAX_EJECTION_TIME,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
            min_health_percent: 0,
        }
    }
}

// ---------------------------------------------------------------------------
// Compiled rules
// ---------------------------------------------------------------------------

/// Every DestinationRule visible to the waypoint, compiled and merged, and
/// the BackendTLSPolicies that speak where no rule's `tls` does.
#[derive(Debug, Default)]
pub struct Policies {
    rules: Lookup<Rule>,
    /// Every `tls` that starts TLS, for [`Policies::tls_files_changed`].
    tls: Vec<Arc<TlsSettings>>,
    backend_tls: BackendTlsTable,
}

/// The rules of one host, merged.
#[derive(Debug)]
struct Rule {
    from: Vec<String>,
    /// For a wildcard host (`*.local`): its `tls` gives way to a
    /// BackendTLSPolicy of the host (see `backend_tls.rs`).
    wildcard: bool,
    top: Option<Compiled>,
    subsets: Vec<CompiledSubset>,
}

#[derive(Debug)]
struct CompiledSubset {
    name: String,
    labels: BTreeMap<String, String>,
    policy: Option<Compiled>,
}

/// One traffic policy: its own parts and its port-level entries.
#[derive(Debug, Default)]
struct Compiled {
    parts: Parts,
    /// First entry for a port wins, as in Istio.
    ports: Vec<(u16, Parts)>,
    /// `retryBudget` has no port-level form: it holds for every port.
    retry_budget: Option<RetryBudget>,
}

impl Compiled {
    /// The parts for `port`, and whether a port-level entry supplied them.
    fn for_port(&self, port: u16) -> (&Parts, bool) {
        match self.ports.iter().find(|(p, _)| *p == port) {
            Some((_, parts)) => (parts, true),
            None => (&self.parts, false),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Parts {
    load_balancer: Option<LoadBalancer>,
    /// Set with `load_balancer` (both come from `loadBalancer`, taken
    /// whole); the inner `None` when it has no `localityLbSetting`.
    locality: Option<Option<LocalityLb>>,
    /// Likewise `warmup` (or `warmupDurationSecs`).
    warmup: Option<Option<Warmup>>,
    pool: Option<PoolLimits>,
    outlier: Option<OutlierSettings>,
    tls: Option<TlsMode>,
}

impl Policies {
    /// Compiles the rules for a waypoint of `scope`, given in any order
    /// (they merge oldest first, then by namespace and name, as in Istio).
    /// Parts that cannot be used are reported and fall back to their
    /// defaults; the rest applies.
    pub fn build(
        rules: impl IntoIterator<Item = DrInput>,
        scope: Scope,
    ) -> (Policies, Vec<PolicyError>) {
        Policies::build_with(rules, scope, &Credentials::new())
    }

    /// [`Policies::build`], with the Secrets `credentialName`s may name.
    pub fn build_with(
        rules: impl IntoIterator<Item = DrInput>,
        scope: Scope,
        credentials: &Credentials,
    ) -> (Policies, Vec<PolicyError>) {
        let mut rules: Vec<DrInput> = rules.into_iter().collect();
        rules.sort_by(|a, b| {
            (a.created, &a.namespace, &a.name).cmp(&(b.created, &b.namespace, &b.name))
        });
        let mut errors = Vec::new();
        let mut tls = Vec::new();
        let mut lookup = Lookup::new(scope);
        for input in rules {
            let mut cx = Ctx {
                namespace: &input.namespace,
                name: &input.name,
                errors: &mut errors,
                tls: &mut tls,
                credentials,
            };
            let mut rule = compile_rule(&mut cx, &input.spec);
            rule.wildcard = input.host.starts_with('*');
            let export_to = ExportTo::new(&input.spec.export_to);
            let selector = input
                .spec
                .workload_selector
                .as_ref()
                .map(|s| &s.match_labels);
            if let Placed::Merge { older, later } =
                lookup.insert(&input.namespace, &input.host, selector, &export_to, rule)
            {
                merge(&mut cx, older, later, &input.spec);
            }
        }
        (
            Policies {
                rules: lookup,
                tls,
                backend_tls: BackendTlsTable::default(),
            },
            errors,
        )
    }

    /// With `table`'s BackendTLSPolicies.
    #[must_use]
    pub fn with_backend_tls(mut self, table: BackendTlsTable) -> Policies {
        self.backend_tls = table;
        self
    }

    /// Whether a file a `tls` reads (a certificate, a key, a CA) holds
    /// something else now than when the rules were compiled: rotated in
    /// place, or there at last. The rules are then compiled again, so that
    /// new connections use it (`tables.rs`).
    pub fn tls_files_changed(&self) -> bool {
        self.tls.iter().any(|settings| settings.files_changed())
    }

    /// Whether connections started with `settings` are still what some rule
    /// or BackendTLSPolicy asks for. Pooled connections of settings that are
    /// no longer (a renewed CA bundle, a changed rule) are closed rather than
    /// left idle until their timeout: nothing would take them again.
    pub fn starts(&self, settings: &TlsSettings) -> bool {
        self.tls
            .iter()
            .chain(self.backend_tls.settings())
            .any(|held| held.same_as(settings))
    }

    /// The effective settings for traffic to `host` (a fully qualified
    /// name) of a service in `namespace`, the route's `subset` and the
    /// destination `port`.
    pub fn resolve(
        &self,
        host: &str,
        namespace: &str,
        subset: Option<&str>,
        port: u16,
    ) -> Result<Resolved, UnknownSubset> {
        let subset = subset.filter(|s| !s.is_empty());
        // A BackendTLSPolicy's TLS, where no rule's `tls` speaks.
        let policy_tls = self.backend_tls.get(host, namespace, port);
        let Some(rule) = self.rules.get(host, namespace) else {
            return match subset {
                None => {
                    let mut resolved = Resolved::defaults(host, port);
                    resolved.pool.tls = policy_tls.map(|settings| settings.for_host(host));
                    Ok(resolved)
                }
                Some(subset) => Err(UnknownSubset {
                    host: host.to_owned(),
                    subset: subset.to_owned(),
                    rules: None,
                }),
            };
        };
        let (selector, subset_policy) = match subset {
            None => (BTreeMap::new(), None),
            Some(name) => match rule.subsets.iter().find(|s| s.name == name) {
                Some(s) => (s.labels.clone(), s.policy.as_ref()),
                None => {
                    return Err(UnknownSubset {
                        host: host.to_owned(),
                        subset: name.to_owned(),
                        rules: Some(rule.from.join(", ")),
                    });
                }
            },
        };
        let mut parts = merge_parts(rule.top.as_ref(), subset_policy, port);
        let mut pool = parts.pool.take().unwrap_or_default();
        // A rule of this very host speaks first; a wildcard rule's `tls`
        // gives way to a policy of the host.
        let rule_tls = parts
            .tls
            .take()
            .filter(|_| !rule.wildcard || policy_tls.is_none());
        match rule_tls {
            Some(TlsMode::Originate(settings)) => pool.tls = Some(settings.for_host(host)),
            Some(TlsMode::MeshOnly) => pool.mesh_tls_only = true,
            Some(TlsMode::Disable) => {}
            None => pool.tls = policy_tls.map(|settings| settings.for_host(host)),
        }
        // Like the other parts, a subset's budget replaces the top level's.
        let retry_budget = subset_policy
            .and_then(|s| s.retry_budget)
            .or_else(|| rule.top.as_ref().and_then(|t| t.retry_budget));
        Ok(Resolved {
            host: host.to_owned(),
            subset: subset.map(str::to_owned),
            port,
            rules: rule.from.clone(),
            selector,
            load_balancer: parts.load_balancer.unwrap_or_default(),
            locality: parts.locality.flatten(),
            warmup: parts.warmup.flatten(),
            pool,
            retry_budget,
            outlier: parts.outlier,
        })
    }
}

/// Istio's `MergeSubsetTrafficPolicy`, see the module documentation.
fn merge_parts(top: Option<&Compiled>, subset: Option<&Compiled>, port: u16) -> Parts {
    let base = top.map(|t| t.for_port(port).0.clone()).unwrap_or_default();
    let Some(subset) = subset else {
        return base;
    };
    let (own, port_level) = subset.for_port(port);
    if port_level {
        return own.clone();
    }
    Parts {
        load_balancer: own.load_balancer.clone().or(base.load_balancer),
        locality: own.locality.clone().or(base.locality),
        warmup: own.warmup.or(base.warmup),
        pool: own.pool.clone().or(base.pool),
        outlier: own.outlier.clone().or(base.outlier),
        tls: own.tls.clone().or(base.tls),
    }
}

/// Adds a later rule for the same host to the one already there.
fn merge(cx: &mut Ctx<'_>, existing: &mut Rule, later: Rule, spec: &DestinationRuleSpec) {
    existing.from.extend(later.from);
    for subset in later.subsets {
        if existing.subsets.iter().any(|s| s.name == subset.name) {
            let i = spec
                .subsets
                .iter()
                .position(|s| s.name == subset.name)
                .unwrap_or_default();
            cx.error(
                format!("spec.subsets[{i}].name"),
                format!(
                    "subset {:?} is already defined by an older DestinationRule for host {}; this one is ignored",
                    subset.name, spec.host
                ),
            );
        } else {
            existing.subsets.push(subset);
        }
    }
    match (&existing.top, later.top) {
        (None, later_top) => existing.top = later_top,
        (Some(_), Some(_)) => cx.error(
            "spec.trafficPolicy",
            format!(
                "ignored: an older DestinationRule for host {} already sets the top-level trafficPolicy",
                spec.host
            ),
        ),
        (Some(_), None) => {}
    }
}

// ---------------------------------------------------------------------------
// Compiling one rule
// ---------------------------------------------------------------------------

struct Ctx<'a> {
    namespace: &'a str,
    name: &'a str,
    errors: &'a mut Vec<PolicyError>,
    tls: &'a mut Vec<Arc<TlsSettings>>,
    credentials: &'a Credentials,
}

impl Ctx<'_> {
    fn error(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(PolicyError {
            namespace: self.namespace.to_owned(),
            name: self.name.to_owned(),
            path: path.into(),
            reason: reason.into(),
        });
    }

    /// A duration, or the default (reported) when it does not parse.
    fn duration(&mut self, path: &str, value: &str, default: Duration) -> Duration {
        match warren_model::validate::duration(path, value) {
            Ok(d) => d,
            Err(e) => {
                self.error(e.path, format!("{}; using the default", e.reason));
                default
            }
        }
    }
}

fn compile_rule(cx: &mut Ctx<'_>, spec: &DestinationRuleSpec) -> Rule {
    let top = spec
        .traffic_policy
        .as_ref()
        .map(|p| compile_policy(cx, "spec.trafficPolicy", p));
    let mut subsets: Vec<CompiledSubset> = Vec::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        let path = format!("spec.subsets[{i}]");
        if subset.name.is_empty() {
            cx.error(format!("{path}.name"), "required; subset ignored");
            continue;
        }
        if subsets.iter().any(|s| s.name == subset.name) {
            cx.error(
                format!("{path}.name"),
                format!("duplicate subset {:?}; the first one is used", subset.name),
            );
            continue;
        }
        subsets.push(CompiledSubset {
            name: subset.name.clone(),
            labels: subset.labels.clone(),
            policy: subset
                .traffic_policy
                .as_ref()
                .map(|p| compile_policy(cx, &format!("{path}.trafficPolicy"), p)),
        });
    }
    Rule {
        from: vec![format!("{}/{}", cx.namespace, cx.name)],
        wildcard: false,
        top,
        subsets,
    }
}

fn compile_policy(cx: &mut Ctx<'_>, path: &str, policy: &TrafficPolicy) -> Compiled {
    let parts = compile_parts(
        cx,
        path,
        policy.load_balancer.as_ref(),
        policy.connection_pool.as_ref(),
        policy.outlier_detection.as_ref(),
        policy.tls.as_ref(),
    );
    let mut ports: Vec<(u16, Parts)> = Vec::new();
    for (k, entry) in policy.port_level_settings.iter().enumerate() {
        let p = format!("{path}.portLevelSettings[{k}]");
        let Some(selector) = &entry.port else {
            cx.error(format!("{p}.port"), "required; entry ignored");
            continue;
        };
        let port = match u16::try_from(selector.number) {
            Ok(port) if port > 0 => port,
            _ => {
                cx.error(
                    format!("{p}.port.number"),
                    format!(
                        "port {} is out of range 1-65535; entry ignored",
                        selector.number
                    ),
                );
                continue;
            }
        };
        if ports.iter().any(|(q, _)| *q == port) {
            cx.error(
                format!("{p}.port.number"),
                format!("port {port} already has an earlier entry, which is used"),
            );
            continue;
        }
        let parts = compile_parts(
            cx,
            &p,
            entry.load_balancer.as_ref(),
            entry.connection_pool.as_ref(),
            entry.outlier_detection.as_ref(),
            entry.tls.as_ref(),
        );
        ports.push((port, parts));
    }
    let retry_budget = policy
        .retry_budget
        .as_ref()
        .map(|b| compile_retry_budget(cx, &format!("{path}.retryBudget"), b));
    Compiled {
        parts,
        ports,
        retry_budget,
    }
}

/// `retryBudget`, Istio's defaults filled in; a value out of range is
/// reported and its default used.
fn compile_retry_budget(cx: &mut Ctx<'_>, path: &str, budget: &istio::RetryBudget) -> RetryBudget {
    let mut compiled = RetryBudget::default();
    match budget.percent {
        Some(percent) if (0.0..=100.0).contains(&percent) => compiled.percent = percent,
        Some(percent) => cx.error(
            format!("{path}.percent"),
            format!("{percent} is not within 0-100; using {}", compiled.percent),
        ),
        None => {}
    }
    if let Some(min) = budget.min_retry_concurrency {
        compiled.min_concurrency = min;
    }
    if let Some(interval) = &budget.budget_interval {
        let interval = cx.duration(&format!("{path}.budgetInterval"), interval, Duration::ZERO);
        compiled.interval = (!interval.is_zero()).then_some(interval);
    }
    compiled
}

/// `retryBudget` (Envoy's `retry_budget` circuit breaker): at most
/// `max(percent % of the base, min_concurrency)` retries in flight at once,
/// the base being the cluster's active and pending requests or, with an
/// `interval`, the requests made over the last `interval`. Envoy lets it
/// replace `maxRetries`, and so does the waypoint.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudget {
    /// 0-100 (Istio's default: 20).
    pub percent: f64,
    /// Istio's default: 3.
    pub min_concurrency: u32,
    /// `budgetInterval`; `None` (`0s`, the default) counts requests active now.
    pub interval: Option<Duration>,
}

// The percentage is within 0-100 (checked when compiled): equality is total.
impl Eq for RetryBudget {}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            percent: 20.0,
            min_concurrency: 3,
            interval: None,
        }
    }
}

impl RetryBudget {
    /// Retries that may be in flight with `base` requests counted.
    pub fn limit(&self, base: u64) -> u64 {
        // Rounded down, as Envoy converts the share to a count.
        let share = (self.percent / 100.0 * base as f64) as u64;
        share.max(u64::from(self.min_concurrency))
    }
}

fn compile_parts(
    cx: &mut Ctx<'_>,
    path: &str,
    load_balancer: Option<&LoadBalancerSettings>,
    pool: Option<&ConnectionPoolSettings>,
    outlier: Option<&OutlierDetection>,
    tls: Option<&ClientTlsSettings>,
) -> Parts {
    let tls = tls.map(|spec| {
        let (mode, error) = TlsSettings::compile(spec, cx.credentials);
        if let TlsMode::Originate(settings) = &mode {
            cx.tls.push(Arc::clone(settings));
        }
        if let Some(error) = error {
            cx.error(
                format!("{path}.tls"),
                format!("{error}; connections to the destination are refused"),
            );
        }
        mode
    });
    Parts {
        load_balancer: load_balancer.map(|lb| compile_lb(cx, &format!("{path}.loadBalancer"), lb)),
        locality: load_balancer.map(|lb| lb.locality_lb_setting.as_ref().map(compile_locality)),
        warmup: load_balancer.map(|lb| compile_warmup(cx, &format!("{path}.loadBalancer"), lb)),
        pool: pool.map(|p| compile_pool(cx, &format!("{path}.connectionPool"), p)),
        outlier: outlier.map(|o| compile_outlier(cx, &format!("{path}.outlierDetection"), o)),
        tls,
    }
}

/// Slow start: `warmup`, which wins over the deprecated
/// `warmupDurationSecs` (Envoy's linear ramp from 10 %).
fn compile_warmup(cx: &mut Ctx<'_>, path: &str, lb: &LoadBalancerSettings) -> Option<Warmup> {
    let (field, duration) = match &lb.warmup {
        Some(w) => ("warmup.duration", w.duration.as_deref()?),
        None => ("warmupDurationSecs", lb.warmup_duration_secs.as_deref()?),
    };
    let window = cx.duration(&format!("{path}.{field}"), duration, Duration::ZERO);
    if window.is_zero() {
        return None;
    }
    let mut warmup = Warmup::linear(window);
    if let Some(w) = &lb.warmup {
        if let Some(percent) = w.minimum_percent.filter(|p| (0.0..=100.0).contains(p)) {
            warmup.min_factor = percent / 100.0;
        }
        if let Some(aggression) = w.aggression.filter(|a| a.is_finite() && *a > 0.0) {
            warmup.aggression = aggression;
        }
    }
    Some(warmup)
}

/// How a new endpoint's share grows (Envoy's slow start): its weight is
/// multiplied by `max(min_factor, (age / window) ^ (1 / aggression))`,
/// the age counted as one second at least, until it is `window` old.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Warmup {
    pub window: Duration,
    /// `minimumPercent` / 100 (Envoy's default 10 %).
    pub min_factor: f64,
    /// 1: linear (the default).
    pub aggression: f64,
}

// Both factors are finite (checked when compiled): equality is total.
impl Eq for Warmup {}

impl Warmup {
    /// `warmupDurationSecs`: linear, from 10 %.
    pub fn linear(window: Duration) -> Warmup {
        Warmup {
            window,
            min_factor: 0.1,
            aggression: 1.0,
        }
    }

    /// The weight factor of an endpoint `age` old.
    pub fn factor(&self, age: Duration) -> f64 {
        if age >= self.window {
            return 1.0;
        }
        let time = age.max(Duration::from_secs(1)).as_secs_f64() / self.window.as_secs_f64();
        // Never 0: a tiny aggression with no floor must not leave a Service
        // whose endpoints are all new with nowhere to send.
        time.powf(1.0 / self.aggression)
            .max(self.min_factor)
            .clamp(f64::MIN_POSITIVE, 1.0)
    }
}

fn compile_lb(cx: &mut Ctx<'_>, path: &str, lb: &LoadBalancerSettings) -> LoadBalancer {
    if let Some(hash) = &lb.consistent_hash {
        let p = format!("{path}.consistentHash");
        let key = if let Some(name) = &hash.http_header_name {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(header) => Some(HashKey::Header(header)),
                Err(_) => {
                    cx.error(
                        format!("{p}.httpHeaderName"),
                        format!("{name:?} is not a valid header name"),
                    );
                    None
                }
            }
        } else if let Some(cookie) = &hash.http_cookie {
            if cookie.name.is_empty() {
                cx.error(format!("{p}.httpCookie.name"), "required");
                None
            } else {
                let ttl = cookie
                    .ttl
                    .as_deref()
                    .map(|ttl| cx.duration(&format!("{p}.httpCookie.ttl"), ttl, Duration::ZERO));
                Some(HashKey::Cookie(HashCookie {
                    name: cookie.name.clone(),
                    path: (!cookie.path.is_empty()).then(|| cookie.path.clone()),
                    ttl,
                }))
            }
        } else if hash.use_source_ip == Some(true) {
            Some(HashKey::SourceIp)
        } else if let Some(name) = hash
            .http_query_parameter_name
            .as_ref()
            .filter(|n| !n.is_empty())
        {
            Some(HashKey::QueryParameter(name.clone()))
        } else {
            cx.error(
                &p,
                "no hash key (httpHeaderName, httpCookie, useSourceIp: true or httpQueryParameterName)",
            );
            None
        };
        let table = if let Some(maglev) = &hash.maglev {
            match maglev.table_size {
                None | Some(0) => HashTable::Maglev {
                    table_size: DEFAULT_MAGLEV_TABLE_SIZE,
                },
                Some(size) if size < MAGLEV_TABLE_LIMIT && is_prime(size) => HashTable::Maglev {
                    // Below 5000011, so it fits any usize Warren runs on.
                    table_size: usize::try_from(size).unwrap_or(DEFAULT_MAGLEV_TABLE_SIZE),
                },
                Some(size) => {
                    cx.error(
                        format!("{p}.maglev.tableSize"),
                        format!(
                            "{size} is not a prime below {MAGLEV_TABLE_LIMIT}; using {DEFAULT_MAGLEV_TABLE_SIZE}"
                        ),
                    );
                    HashTable::Maglev {
                        table_size: DEFAULT_MAGLEV_TABLE_SIZE,
                    }
                }
            }
        } else {
            let requested = hash
                .ring_hash
                .as_ref()
                .and_then(|r| r.minimum_ring_size)
                .or(hash.minimum_ring_size)
                .filter(|size| *size > 0);
            let minimum_size = match requested {
                None => DEFAULT_RING_SIZE,
                Some(size) => match usize::try_from(size) {
                    Ok(size) if size <= MAX_RING_SIZE => size,
                    _ => {
                        cx.error(
                            format!("{p}.ringHash.minimumRingSize"),
                            format!("{size} is above Warren's limit; using {MAX_RING_SIZE}"),
                        );
                        MAX_RING_SIZE
                    }
                },
            };
            HashTable::Ring { minimum_size }
        };
        return match key {
            Some(key) => LoadBalancer::ConsistentHash(ConsistentHash { key, table }),
            // Without a key the rule cannot hash; Envoy would reject the
            // cluster. Fall back to the default balancer.
            None => LoadBalancer::default(),
        };
    }
    match lb.simple {
        None | Some(SimpleLb::Unspecified | SimpleLb::LeastConn | SimpleLb::LeastRequest) => {
            LoadBalancer::LeastRequest
        }
        Some(SimpleLb::RoundRobin) => LoadBalancer::RoundRobin,
        Some(SimpleLb::Random) => LoadBalancer::Random,
        Some(SimpleLb::Passthrough) => LoadBalancer::Passthrough,
    }
}

/// `localityLbSetting` (validated when the rule was read).
fn compile_locality(setting: &LocalityLbSetting) -> LocalityLb {
    LocalityLb {
        enabled: setting.enabled != Some(false),
        distribute: setting
            .distribute
            .iter()
            .map(|d| {
                let to = d.to.iter().map(|(k, w)| (k.clone(), *w)).collect();
                (d.from.clone(), to)
            })
            .collect(),
        failover: setting
            .failover
            .iter()
            .map(|f| (f.from.clone(), f.to.clone()))
            .collect(),
        failover_priority: setting
            .failover_priority
            .iter()
            .map(|l| PriorityLabel::parse(l))
            .collect(),
        forced: false,
    }
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// Istio's integer limits are proto3 ints: `0` (and, invalid, below) means
/// unset.
fn limit(value: Option<i32>) -> Option<u32> {
    value.and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0)
}

fn compile_pool(cx: &mut Ctx<'_>, path: &str, pool: &ConnectionPoolSettings) -> PoolLimits {
    let mut limits = PoolLimits::default();
    if let Some(tcp) = &pool.tcp {
        let p = format!("{path}.tcp");
        limits.max_connections = limit(tcp.max_connections).unwrap_or(UNLIMITED);
        if let Some(d) = &tcp.connect_timeout {
            limits.connect_timeout =
                cx.duration(&format!("{p}.connectTimeout"), d, DEFAULT_CONNECT_TIMEOUT);
        }
        if let Some(d) = &tcp.max_connection_duration {
            let d = cx.duration(&format!("{p}.maxConnectionDuration"), d, Duration::ZERO);
            limits.max_connection_duration = (!d.is_zero()).then_some(d);
        }
        if let Some(d) = &tcp.idle_timeout {
            let d = cx.duration(&format!("{p}.idleTimeout"), d, DEFAULT_IDLE_TIMEOUT);
            limits.tcp_idle_timeout = (!d.is_zero()).then_some(d);
        }
        if let Some(keepalive) = &tcp.tcp_keepalive {
            let p = format!("{p}.tcpKeepalive");
            // Linux takes whole seconds from 1 to 32767 and at most 127 probes;
            // a value outside is brought within (and reported) rather than
            // failing every connection. One that does not parse keeps the
            // system's default.
            let mut seconds = |field: &str, value: &Option<String>| {
                let path = format!("{p}.{field}");
                let d = cx.duration(&path, value.as_deref()?, Duration::ZERO);
                if d.is_zero() {
                    return None;
                }
                let kept = d.as_secs().clamp(1, KEEPALIVE_MAX_SECONDS);
                if Duration::from_secs(kept) != d {
                    cx.error(path, format!("TCP keepalive takes whole seconds from 1 to {KEEPALIVE_MAX_SECONDS}; using {kept}s"));
                }
                Some(Duration::from_secs(kept))
            };
            let time = seconds("time", &keepalive.time);
            let interval = seconds("interval", &keepalive.interval);
            let probes = keepalive.probes.filter(|p| *p > 0).map(|probes| {
                if probes > KEEPALIVE_MAX_PROBES {
                    cx.error(
                        format!("{p}.probes"),
                        format!("at most {KEEPALIVE_MAX_PROBES}; using {KEEPALIVE_MAX_PROBES}"),
                    );
                }
                probes.min(KEEPALIVE_MAX_PROBES)
            });
            limits.tcp_keepalive = Some(Keepalive {
                time,
                interval,
                probes,
            });
        }
    }
    if let Some(http) = &pool.http {
        let p = format!("{path}.http");
        limits.max_pending_requests = limit(http.http1_max_pending_requests).unwrap_or(UNLIMITED);
        limits.max_requests = limit(http.http2_max_requests).unwrap_or(UNLIMITED);
        limits.max_requests_per_connection = limit(http.max_requests_per_connection);
        limits.max_concurrent_streams = limit(http.max_concurrent_streams);
        limits.max_retries = limit(http.max_retries).unwrap_or(UNLIMITED);
        if let Some(d) = &http.idle_timeout {
            let d = cx.duration(&format!("{p}.idleTimeout"), d, DEFAULT_IDLE_TIMEOUT);
            // `0s` turns it off, as in Envoy.
            limits.idle_timeout = if d.is_zero() { Duration::MAX } else { d };
        }
        limits.h2_upgrade = http.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade);
        limits.use_client_protocol = http.use_client_protocol == Some(true);
    }
    limits
}

fn compile_outlier(cx: &mut Ctx<'_>, path: &str, outlier: &OutlierDetection) -> OutlierSettings {
    let mut s = OutlierSettings::default();
    // Set means set, and 0 turns the check off (Istio sets Envoy's
    // enforcing_consecutive_* to 0).
    if let Some(n) = outlier.consecutive_5xx_errors {
        s.consecutive_5xx = (n > 0).then_some(n);
    }
    s.consecutive_gateway = outlier.consecutive_gateway_errors.filter(|n| *n > 0);
    s.split_local_origin = outlier.split_external_local_origin_errors == Some(true);
    if let Some(n) = outlier.consecutive_local_origin_failures.filter(|n| *n > 0) {
        s.consecutive_local_origin = n;
    }
    if let Some(d) = &outlier.interval {
        let d = cx.duration(&format!("{path}.interval"), d, DEFAULT_INTERVAL);
        // The sweep arithmetic divides by the interval.
        s.interval = if d.is_zero() { DEFAULT_INTERVAL } else { d };
    }
    if let Some(d) = &outlier.base_ejection_time {
        let d = cx.duration(
            &format!("{path}.baseEjectionTime"),
            d,
            DEFAULT_BASE_EJECTION_TIME,
        );
        s.base_ejection_time = if d.is_zero() {
            DEFAULT_BASE_EJECTION_TIME
        } else {
            d
        };
    }
    s.max_ejection_time = DEFAULT_MAX_EJECTION_TIME.max(s.base_ejection_time);
    // Istio passes maxEjectionPercent to Envoy only when above 0, so 0
    // means Envoy's default of 10%.
    if let Some(p) = outlier.max_ejection_percent.filter(|p| *p > 0) {
        s.max_ejection_percent = u32::try_from(p.min(100)).unwrap_or(100);
    }
    if let Some(p) = outlier.min_health_percent {
        s.min_health_percent = u32::try_from(p.clamp(0, 100)).unwrap_or(0);
    }
    s
}
