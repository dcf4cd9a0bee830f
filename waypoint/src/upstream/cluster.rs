//! The live state of one upstream cluster, a (host, subset, port) with its
//! [`Resolved`] settings: its endpoints, the balancer's state, the pool
//! limits and outlier detection. Shared by concurrent requests through an
//! `Arc`; a short std `Mutex` guards the endpoint list, atomics count
//! requests.
//!
//! Which endpoints a pick considers: those not ejected, unless that leaves
//! none, or fewer than `minHealthPercent` of them; then all of them (Envoy's
//! panic mode). Istio sets Envoy's panic threshold to `minHealthPercent`,
//! 0% by default, which makes Envoy answer "no healthy upstream" when every
//! endpoint is ejected; Warren uses them all instead, since a request to an
//! endpoint that failed recently beats a certain 503 (only reachable with
//! `maxEjectionPercent: 100`).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::balance::{
    HashInput, Population, SetCookie, Table, hash_request, random_index, two_choices,
    weighted_index,
};
use super::locality::{self, Health, Member, Proximity, levels_in_panic, loads_in_total_panic};
use super::outlier::{Detector, HostOutlier, Outcome};
use super::policy::{LoadBalancer, PoolLimits, Resolved, UpstreamHttp};
use super::pool::{Overflow, Permit, Pool, RetryPermit};
use warren_api::Locality;
use warren_ztunnel::state::{Service, service::DeclaredHttp};

/// One endpoint of the cluster, as the proxy knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Stable identity across updates (e.g. the workload's uid); state is
    /// kept by it.
    pub id: String,
    pub address: SocketAddr,
    pub labels: BTreeMap<String, String>,
    pub locality: Locality,
    /// The node it runs on (`failoverPriority: [kubernetes.io/hostname]`).
    pub node: String,
    /// Since when the mesh has known it ready; slow start counts from here
    /// (else from when the cluster first sees it).
    pub ready_since: Option<Instant>,
    /// Its share of the picks relative to the others' (a ServiceEntry
    /// endpoint's `weight`; 1 for every other).
    pub weight: u32,
}

/// The chosen endpoint. Counts as an active request of the endpoint (for
/// LEAST_REQUEST) until dropped.
#[derive(Debug)]
pub struct Picked {
    pub endpoint: Arc<Endpoint>,
    /// A consistent-hash cookie the proxy must set on the response.
    pub set_cookie: Option<SetCookie>,
    _active: ActiveRequest,
}

#[derive(Debug)]
struct ActiveRequest(Arc<AtomicU64>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct Cluster {
    resolved: Resolved,
    /// What the service port declares (see [`Cluster::upstream_http`]).
    declared: DeclaredHttp,
    /// The service port it reaches: the destination's, or a service's only one.
    port: u16,
    pool: Pool,
    /// ROUND_ROBIN's position.
    next: AtomicUsize,
    state: Mutex<State>,
    /// Whether endpoints came from names (ServiceEntry `resolution: DNS`):
    /// checked on every request, so the lock below is taken only then.
    has_names: std::sync::atomic::AtomicBool,
    /// Those names, and when the first of their answers expires.
    names: Mutex<(Arc<[String]>, Option<Instant>)>,
    /// The names' generation (`Names::generation`) the endpoints were
    /// built from: only clusters with names are rebuilt when it moves.
    names_generation: AtomicU64,
    /// Envoy's ORIGINAL_DST, for a ServiceEntry resolved `NONE`: no
    /// endpoints of its own; a request goes to the address its client
    /// dialled ([`Cluster::pick_original`]).
    original: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
struct State {
    endpoints: Vec<Slot>,
    /// Parallel to `endpoints`.
    outliers: Vec<HostOutlier>,
    by_id: HashMap<String, usize>,
    /// Where the waypoint is, for locality-aware balancing; `None` until it
    /// knows its own pod.
    proximity: Option<Proximity>,
    /// The endpoints by locality priority and weight (one group without
    /// locality balancing; see `locality.rs`). A pick first chooses a
    /// group by its load, then an endpoint of it.
    groups: Vec<Group>,
    detector: Option<Detector>,
    /// When the newest endpoint joined: slow start is over for every one a
    /// window after it, and picks skip weighing them.
    newest_join: Option<Instant>,
}

#[derive(Debug, Default)]
struct Group {
    priority: u32,
    weight: u64,
    /// ROUND_ROBIN's position in this group (Envoy keeps a schedule per
    /// priority and locality).
    next: AtomicUsize,
    /// Positions in `endpoints`.
    members: Vec<usize>,
    /// Members a pick chooses among.
    eligible: Vec<usize>,
    /// Whether their weights differ (else picks need not weigh them).
    weighted: bool,
    /// Consistent hash over `eligible`'s addresses.
    table: Option<Table>,
    /// Share of the picks, parts per 10 000.
    load: u64,
}

#[derive(Debug)]
struct Slot {
    endpoint: Arc<Endpoint>,
    active: Arc<AtomicU64>,
    /// When it joined the cluster (slow start counts from here).
    joined: Instant,
}

impl Slot {
    /// The endpoint, counted as active until the pick is dropped.
    fn picked(&self, set_cookie: Option<SetCookie>) -> Picked {
        self.active.fetch_add(1, Ordering::AcqRel);
        Picked {
            endpoint: self.endpoint.clone(),
            set_cookie,
            _active: ActiveRequest(self.active.clone()),
        }
    }
}

/// Why [`Cluster::pick_for`] found nowhere to send a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Unpicked {
    /// No endpoint is eligible ("no healthy upstream").
    NoEndpoint,
    /// An original-destination cluster's request was not dialled to its
    /// entry (or is the waypoint's own call): why.
    NotDialled(String),
}

impl Cluster {
    /// A cluster created at `now` (outlier detection's interval ticks count
    /// from it). `endpoints` are already filtered by the subset's selector.
    pub fn new(resolved: Resolved, endpoints: Vec<Endpoint>, now: Instant) -> Self {
        // PASSTHROUGH has no hosts of its own to eject.
        let detector = resolved
            .outlier
            .clone()
            .filter(|_| resolved.load_balancer != LoadBalancer::Passthrough)
            .map(|settings| Detector::new(settings, now));
        let mut state = State {
            endpoints: Vec::new(),
            outliers: Vec::new(),
            by_id: HashMap::new(),
            proximity: None,
            groups: Vec::new(),
            detector,
            newest_join: None,
        };
        state.replace(endpoints, &resolved, now);
        Self {
            pool: Pool::new(resolved.pool.clone(), resolved.retry_budget),
            resolved,
            declared: DeclaredHttp::Undeclared,
            port: 0,
            next: AtomicUsize::new(0),
            state: Mutex::new(state),
            has_names: std::sync::atomic::AtomicBool::new(false),
            names: Mutex::new((Arc::from([]), None)),
            names_generation: AtomicU64::new(0),
            original: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Makes it an original-destination cluster (its host is a ServiceEntry
    /// resolved `NONE`), or one with endpoints of its own.
    pub fn set_original_destination(&self, original: bool) {
        self.original.store(original, Ordering::Release);
    }

    pub fn is_original_destination(&self) -> bool {
        self.original.load(Ordering::Acquire)
    }

    /// Where a request goes: for an original-destination cluster, where its
    /// client dialled ([`Cluster::pick_original`]; `dialled` is asked only
    /// then); else one of its endpoints ([`Cluster::pick_avoiding`]). A
    /// cluster switching to `NONE` sets its flag before its endpoints go, and
    /// one switching back takes its endpoints before clearing it, so the flag
    /// is read again when no endpoint is left: a request meeting the switch
    /// always has a way to go.
    pub fn pick_for(
        &self,
        dialled: impl FnOnce() -> Option<(SocketAddr, Arc<Service>)>,
        input: &HashInput<'_>,
        avoid: &[String],
        leave: &[String],
        now: Instant,
    ) -> Result<Picked, Unpicked> {
        if !self.is_original_destination() {
            if let Some(picked) = self.pick_avoiding(input, avoid, leave, now) {
                return Ok(picked);
            }
            if !self.is_original_destination() {
                return Err(Unpicked::NoEndpoint);
            }
        }
        let dialled = dialled();
        // The entry has endpoints again (STATIC) while this cluster is not
        // rebuilt yet, or is between its endpoints coming and its flag
        // going: those endpoints.
        if dialled
            .as_ref()
            .is_some_and(|(_, entry)| !entry.passthrough)
            && let Some(picked) = self.pick_avoiding(input, avoid, leave, now)
        {
            return Ok(picked);
        }
        self.pick_original(
            dialled
                .as_ref()
                .map(|(addr, entry)| (*addr, entry.as_ref())),
        )
        .map_err(Unpicked::NotDialled)
    }

    /// For an original-destination cluster: where a request goes, from what
    /// its client `dialled` (the address, and the Service its ztunnel sent
    /// it for, as it is now). The dialled address, on the cluster's port (the
    /// route's, which is the dialled one unless a route names another),
    /// counted active while the pick lives, when the request is for the very
    /// entry it was dialled to: not a route or mirror from another host
    /// (whose address is not the entry's to dial), nor the waypoint's own
    /// calls (nothing dialled); the address is one of the entry's, the port
    /// one of its ports, and the address one the waypoint dials. Else why
    /// not.
    fn pick_original(&self, dialled: Option<(SocketAddr, &Service)>) -> Result<Picked, String> {
        let host = &self.resolved.host;
        let Some((addr, entry)) = dialled else {
            return Err(format!(
                "{host} is resolved NONE: it has no endpoints for the waypoint's own calls, nor for a connection whose entry is gone"
            ));
        };
        let same_host = entry
            .hostname
            .trim_end_matches('.')
            .eq_ignore_ascii_case(host.trim_end_matches('.'));
        // The entry itself, as it is now (its key and host): it may have
        // just turned STATIC, which a request picking from this cluster
        // before it is rebuilt with endpoints meets.
        if !same_host {
            return Err(format!(
                "{host} is resolved NONE: only requests dialled to it go where they were dialled (this one was dialled to {})",
                entry.hostname
            ));
        }
        let ip = addr.ip().to_canonical();
        let port = self.resolved.port;
        if !entry.has_address(ip) || entry.port(port).is_none() {
            return Err(format!(
                "{host} is resolved NONE, and {ip} port {port} is none of its addresses and ports"
            ));
        }
        if !super::dialable(ip) {
            return Err(format!(
                "{host} is resolved NONE, and {ip} is an address the waypoint never dials (its own host's)"
            ));
        }
        let target = SocketAddr::new(ip, port);
        Ok(Picked {
            endpoint: Arc::new(Endpoint {
                id: target.to_string(),
                address: target,
                labels: BTreeMap::new(),
                locality: Locality::default(),
                node: String::new(),
                ready_since: None,
                weight: 1,
            }),
            set_cookie: None,
            _active: ActiveRequest(Arc::new(AtomicU64::new(1))),
        })
    }

    /// Whether its endpoints, built from names at `generation` of their
    /// answers, are out of date at `now_generation` (never, without names).
    pub fn names_outdated(&self, now_generation: u64) -> bool {
        self.has_names.load(Ordering::Acquire)
            && self.names_generation.load(Ordering::Acquire) != now_generation
    }

    /// The names its endpoints were resolved from, and when the first of
    /// their answers expires (`None`: no names).
    pub fn named(&self, names: Vec<String>, valid_until: Option<Instant>, generation: u64) {
        self.names_generation.store(generation, Ordering::Release);
        let named = !names.is_empty();
        *self.names.lock().unwrap_or_else(|p| p.into_inner()) = (names.into(), valid_until);
        self.has_names.store(named, Ordering::Release);
    }

    /// When the answers for `names` expire now, if the cluster still has
    /// endpoints from exactly those names (not rebuilt from others since).
    pub fn renew_names(&self, names: &[String], valid_until: Option<Instant>) {
        let mut current = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if *current.0 == *names {
            current.1 = valid_until;
        }
    }

    /// The names to resolve again before the next pick, when any answer
    /// has expired by `now` (or never came).
    pub fn stale_names(&self, now: Instant) -> Option<Arc<[String]>> {
        if !self.has_names.load(Ordering::Acquire) {
            return None;
        }
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let (hosts, valid_until) = &*names;
        valid_until
            .is_some_and(|until| until <= now)
            .then(|| Arc::clone(hosts))
    }

    /// Seen from a waypoint at `proximity` (a builder form of
    /// [`Cluster::place`]).
    pub fn near(self, proximity: Proximity) -> Self {
        self.place(Some(proximity));
        self
    }

    /// Where the waypoint is now (`None`: not known), for locality-aware
    /// balancing. A change regroups the endpoints in place, keeping their
    /// outlier state, active requests and slow start.
    pub fn place(&self, proximity: Option<Proximity>) {
        let mut state = self.lock();
        if state.proximity != proximity {
            state.proximity = proximity;
            state.regroup(&self.resolved);
        }
    }

    /// For service port `port`, which declares `declared` (a cluster is
    /// made anew when that changes).
    pub fn for_port(mut self, port: u16, declared: DeclaredHttp) -> Self {
        self.port = port;
        self.declared = declared;
        self
    }

    /// The service port it reaches (0 before [`Cluster::for_port`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn resolved(&self) -> &Resolved {
        &self.resolved
    }

    pub fn declared_http(&self) -> DeclaredHttp {
        self.declared
    }

    /// The HTTP version requests go to the endpoints with.
    pub fn upstream_http(&self) -> UpstreamHttp {
        self.resolved.pool.upstream_http(self.declared)
    }

    /// Replaces the endpoints. An endpoint whose id stays keeps its active
    /// requests and outlier state (an ejected one stays ejected); a repeated
    /// id is ignored after its first entry.
    pub fn update(&self, endpoints: Vec<Endpoint>) {
        self.update_at(endpoints, Instant::now());
    }

    /// [`Cluster::update`] at `now` (new endpoints' slow start counts from
    /// it).
    pub fn update_at(&self, endpoints: Vec<Endpoint>, now: Instant) {
        self.lock().replace(endpoints, &self.resolved, now);
    }

    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.lock()
            .endpoints
            .iter()
            .map(|s| s.endpoint.clone())
            .collect()
    }

    /// Chooses where the request goes, or `None` when the cluster has no
    /// endpoint (the proxy answers 503, "no healthy upstream").
    pub fn pick(&self, input: &HashInput<'_>, now: Instant) -> Option<Picked> {
        self.pick_avoiding(input, &[], &[], now)
    }

    /// [`Cluster::pick`] for a retry: an endpoint whose id is in `avoid`
    /// (tried already) is chosen only when every eligible endpoint is in it
    /// (Envoy's previous-hosts retry predicate, as Istio's
    /// `retryIgnorePreviousHosts` sets it).
    pub fn pick_avoiding(
        &self,
        input: &HashInput<'_>,
        avoid: &[String],
        leave: &[String],
        now: Instant,
    ) -> Option<Picked> {
        let lb = &self.resolved.load_balancer;
        let (hash, set_cookie) = match lb {
            LoadBalancer::ConsistentHash(ch) => hash_request(&ch.key, input),
            _ => (None, None),
        };
        let mut state = self.lock();
        if matches!(lb, LoadBalancer::Passthrough) {
            return self.pass_through(&state);
        }
        state.refresh(now, &self.resolved);
        let avoided = |i: &usize| {
            state
                .endpoints
                .get(*i)
                .is_some_and(|s| avoid.contains(&s.endpoint.id))
        };
        let mut chosen = match state.remote_group(leave) {
            Some(remote) => remote,
            None => state.choose_group(hash)?,
        };
        // A retry whose drawn group has only tried endpoints goes to another
        // loaded group that has untried ones, as Envoy's previous-hosts
        // predicate redraws the whole choice, priority and locality included.
        let untried = |g: &Group| g.eligible.iter().any(|i| !avoided(i));
        if !avoid.is_empty() && state.groups.get(chosen).is_some_and(|g| !untried(g)) {
            let others: Vec<(usize, u64)> = state
                .groups
                .iter()
                .enumerate()
                .filter(|(_, g)| g.load > 0 && untried(g))
                .map(|(i, g)| (i, g.load))
                .collect();
            let weights: Vec<f64> = others.iter().map(|(_, load)| *load as f64).collect();
            if let Some((i, _)) = weighted_index(&weights).and_then(|w| others.get(w)) {
                chosen = *i;
            }
        }
        let group = state.groups.get(chosen)?;
        // Positions in `eligible` this pick may take: all, or those not tried
        // yet when some are left.
        let fresh: Vec<usize> = if avoid.is_empty() {
            Vec::new()
        } else {
            group
                .eligible
                .iter()
                .enumerate()
                .filter(|(_, i)| !avoided(i))
                .map(|(p, _)| p)
                .collect()
        };
        let candidates: Option<&[usize]> = (!fresh.is_empty()).then_some(&fresh);
        let n = candidates.map_or(group.eligible.len(), <[usize]>::len);
        if n == 0 {
            return None;
        }
        // A choice among the candidates, as a position in `eligible`.
        let over = |c: usize| candidates.map_or(Some(c), |cs| cs.get(c).copied());
        let slot_at = |c: usize| {
            over(c)
                .and_then(|p| group.eligible.get(p))
                .and_then(|i| state.endpoints.get(*i))
        };
        // ROUND_ROBIN and LEAST_REQUEST weigh an endpoint by its weight and,
        // while it is younger than the warmup window, by its age (slow
        // start): Envoy's EDF weights, drawn at random here, which gives the
        // same shares. RANDOM ignores weights, as Envoy's does.
        let warmup = self
            .resolved
            .warmup
            .filter(|w| state.newest_join.is_some_and(|j| now < j + w.window));
        let warming: Option<Vec<f64>> = match lb {
            LoadBalancer::RoundRobin | LoadBalancer::LeastRequest
                if group.weighted || warmup.is_some() =>
            {
                let mut young = false;
                let factors: Vec<f64> = (0..n)
                    .map(|c| {
                        slot_at(c).map_or(0.0, |s| {
                            let age = warmup
                                .map_or(1.0, |w| w.factor(now.saturating_duration_since(s.joined)));
                            young |= age < 1.0;
                            f64::from(s.endpoint.weight.max(1)) * age
                        })
                    })
                    .collect();
                (group.weighted || young).then_some(factors)
            }
            _ => None,
        };
        let position = match (lb, warming) {
            (LoadBalancer::RoundRobin, Some(factors)) => over(weighted_index(&factors)?)?,
            (LoadBalancer::LeastRequest, Some(factors)) => {
                // Envoy divides a weighted endpoint's weight by its active
                // requests + 1.
                let weights: Vec<f64> = factors
                    .iter()
                    .enumerate()
                    .map(|(c, f)| {
                        let active = slot_at(c).map_or(0, |s| s.active.load(Ordering::Acquire));
                        f / (active as f64 + 1.0)
                    })
                    .collect();
                over(weighted_index(&weights)?)?
            }
            // Returned above; here for the match to be whole.
            (LoadBalancer::Passthrough, _) => return self.pass_through(&state),
            (LoadBalancer::RoundRobin, None) => {
                over(group.next.fetch_add(1, Ordering::Relaxed) % n)?
            }
            (LoadBalancer::Random, _) => over(random_index(n))?,
            (LoadBalancer::LeastRequest, None) => over(two_choices(n, |c| {
                slot_at(c).map_or(u64::MAX, |s| s.active.load(Ordering::Acquire))
            }))?,
            (LoadBalancer::ConsistentHash(_), _) => {
                let total = group.eligible.len();
                let home = hash
                    .and_then(|h| group.table.as_ref()?.lookup(h))
                    .filter(|p| *p < total);
                match (home, candidates) {
                    (Some(p), None) => p,
                    // The key's endpoint, or when it was tried, the next
                    // one along the table that was not.
                    (Some(p), Some(cs)) => (0..total)
                        .map(|step| (p + step) % total)
                        .find(|q| cs.contains(q))
                        .or_else(|| over(0))?,
                    (None, _) => over(random_index(n))?,
                }
            }
        };
        let slot = group
            .eligible
            .get(position)
            .and_then(|i| state.endpoints.get(*i))?;
        Some(slot.picked(set_cookie))
    }

    /// PASSTHROUGH: the waypoint does not balance; the Service's L4 routing
    /// does, as for a client whose ztunnel sends it straight to an endpoint.
    /// (Istio's ORIGINAL_DST leaves the choice to whatever routes the address
    /// the client dialled, and what a waypoint is asked for is the VIP.) So:
    /// round robin over every ready endpoint, as ztunnel picks, with no
    /// outlier ejection (an original-destination cluster has no hosts to
    /// eject), no hashing and no retry avoidance.
    fn pass_through(&self, state: &State) -> Option<Picked> {
        let n = state.endpoints.len();
        if n == 0 {
            return None;
        }
        let position = self.next.fetch_add(1, Ordering::Relaxed) % n;
        Some(state.endpoints.get(position)?.picked(None))
    }

    /// Counts how a request to `endpoint_id` ended, for outlier detection;
    /// true when this report ejected the endpoint. Unknown ids (an endpoint
    /// removed meanwhile) are ignored.
    pub fn report(&self, endpoint_id: &str, outcome: Outcome, now: Instant) -> bool {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(i) = state.by_id.get(endpoint_id).copied() else {
            return false;
        };
        let Some(detector) = state.detector.as_mut() else {
            return false;
        };
        let was_ejected = state.outliers.get(i).is_some_and(HostOutlier::is_ejected);
        if detector.report(&mut state.outliers, i, outcome, now) {
            state.recompute(&self.resolved);
        }
        if let Some(returns_at) = state.outliers.get(i).and_then(HostOutlier::returns_at)
            && !was_ejected
        {
            tracing::info!(
                host = %self.resolved.host,
                subset = self.resolved.subset.as_deref().unwrap_or(""),
                port = self.resolved.port,
                endpoint = endpoint_id,
                out_for = ?returns_at.saturating_duration_since(now),
                "outlier detection ejected an endpoint"
            );
            return true;
        }
        false
    }

    /// A slot for an HTTP/1.1 request; see [`super::pool`].
    pub async fn admit(&self) -> Result<Permit, Overflow> {
        self.pool.admit().await
    }

    /// A slot for an HTTP/2 request; see [`super::pool`].
    pub fn admit_multiplexed(&self) -> Result<Permit, Overflow> {
        self.pool.admit_multiplexed()
    }

    /// Its connection pool limits, as the HTTP/2 pool takes places from them
    /// (`maxConnections`, the pending queue).
    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A place for a connection to a TCP port; see [`super::pool`].
    pub fn admit_connection(&self) -> Result<Permit, Overflow> {
        self.pool.admit_connection()
    }

    /// A retry may start (`http.maxRetries` in flight at once, or what the
    /// retry budget allows).
    pub fn try_retry(&self) -> Option<RetryPermit> {
        self.pool.try_retry()
    }

    /// The connection settings for the proxy's connection pools
    /// (timeouts, requests per connection, maximum duration).
    pub fn limits(&self) -> &PoolLimits {
        self.pool.limits()
    }

    /// Requests waiting for a slot now.
    pub fn pending(&self) -> u64 {
        self.pool.pending()
    }

    /// Requests refused by the pool so far.
    pub fn overflows(&self) -> u64 {
        self.pool.overflows()
    }

    /// Retries refused by `maxRetries` so far.
    pub fn retry_overflows(&self) -> u64 {
        self.pool.retry_overflows()
    }

    /// Active requests of an endpoint (picked and not yet dropped).
    pub fn active(&self, endpoint_id: &str) -> Option<u64> {
        let state = self.lock();
        let i = *state.by_id.get(endpoint_id)?;
        state
            .endpoints
            .get(i)
            .map(|s| s.active.load(Ordering::Acquire))
    }

    /// The ids of the endpoints ejected at `now`.
    pub fn ejected(&self, now: Instant) -> Vec<String> {
        let mut state = self.lock();
        state.refresh(now, &self.resolved);
        state
            .endpoints
            .iter()
            .zip(&state.outliers)
            .filter(|(_, o)| o.is_ejected())
            .map(|(s, _)| s.endpoint.id.clone())
            .collect()
    }

    /// Ejections so far.
    pub fn ejections(&self) -> u64 {
        self.lock().detector.as_ref().map_or(0, Detector::ejections)
    }

    /// Ejections `maxEjectionPercent` prevented so far.
    pub fn ejection_overflows(&self) -> u64 {
        self.lock().detector.as_ref().map_or(0, Detector::overflows)
    }

    /// What the cluster applies and how its endpoints stand at `now`, for
    /// the admin endpoint (`/clusters`): which DestinationRules made it,
    /// and why a request went where it went or was refused.
    pub fn dump(&self, now: Instant) -> serde_json::Value {
        let resolved = &self.resolved;
        let pool = &resolved.pool;
        let limit = |n: u32| -> serde_json::Value {
            if n == super::policy::UNLIMITED {
                "unlimited".into()
            } else {
                n.into()
            }
        };
        let (endpoints, groups, proximity) = {
            let mut state = self.lock();
            state.refresh(now, resolved);
            let priority = |i: usize| {
                state
                    .groups
                    .iter()
                    .find(|g| g.members.contains(&i))
                    .map(|g| g.priority)
            };
            let endpoints: Vec<serde_json::Value> = state
                .endpoints
                .iter()
                .zip(&state.outliers)
                .enumerate()
                .map(|(i, (slot, outlier))| {
                    serde_json::json!({
                        "id": slot.endpoint.id,
                        "address": slot.endpoint.address.to_string(),
                        "locality": slot.endpoint.locality.to_string(),
                        "weight": slot.endpoint.weight,
                        // `null`: locality balancing gives it no traffic.
                        "priority": priority(i),
                        "active_requests": slot.active.load(Ordering::Acquire),
                        "ejected": outlier.is_ejected(),
                    })
                })
                .collect();
            let groups: Vec<serde_json::Value> = state
                .groups
                .iter()
                .map(|g| {
                    let mut localities: Vec<String> = g
                        .members
                        .iter()
                        .filter_map(|i| state.endpoints.get(*i))
                        .map(|s| s.endpoint.locality.to_string())
                        .collect();
                    localities.sort();
                    localities.dedup();
                    serde_json::json!({
                        "priority": g.priority,
                        "localities": localities,
                        "weight": g.weight,
                        "endpoints": g.members.len(),
                        "eligible": g.eligible.len(),
                        "load_percent": g.load as f64 / 100.0,
                    })
                })
                .collect();
            let proximity = state.proximity.as_ref().map(|p| p.locality.to_string());
            (endpoints, groups, proximity)
        };
        serde_json::json!({
            // Endpoints are then the addresses clients dial.
            "original_destination": self.is_original_destination(),
            "rules": resolved.rules,
            "subset_selector": resolved.selector,
            "load_balancer": format!("{:?}", resolved.load_balancer),
            "warmup": resolved.warmup.map(|w| serde_json::json!({
                "window": format!("{:?}", w.window),
                "minimum_percent": (w.min_factor * 1e8).round() / 1e6,
                "aggression": w.aggression,
            })),
            "upstream_http": format!("{:?}", self.upstream_http()),
            "connection_pool": {
                "max_connections": limit(pool.max_connections),
                "http1_max_pending_requests": limit(pool.max_pending_requests),
                "http2_max_requests": limit(pool.max_requests),
                "max_requests_per_connection": pool.max_requests_per_connection,
                "max_concurrent_streams": pool.max_concurrent_streams,
                "max_retries": limit(pool.max_retries),
                "connect_timeout": format!("{:?}", pool.connect_timeout),
                "idle_timeout": (pool.idle_timeout != std::time::Duration::MAX)
                    .then(|| format!("{:?}", pool.idle_timeout)),
                "max_connection_duration": pool.max_connection_duration.map(|d| format!("{d:?}")),
                "tcp_idle_timeout": pool.tcp_idle_timeout.map(|d| format!("{d:?}")),
            },
            "tls": pool.tls.as_ref().map(super::Origination::describe),
            // Replaces `max_retries` when set; `retry_limit` is what it allows now.
            "retry_budget": resolved.retry_budget.map(|b| serde_json::json!({
                "percent": b.percent,
                "min_retry_concurrency": b.min_concurrency,
                "budget_interval": b.interval.map(|d| format!("{d:?}")),
            })),
            "retry_limit": u32::try_from(self.pool.retry_limit()).map_or_else(|_| "unlimited".into(), limit),
            "outlier_detection": resolved.outlier.is_some(),
            "locality": proximity,
            "locality_groups": groups,
            "pending": self.pending(),
            "overflows": self.overflows(),
            "retry_overflows": self.retry_overflows(),
            "ejections": self.ejections(),
            "endpoints": endpoints,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing under this lock panics on input; a poisoned lock means a
        // bug already reported by the panic that poisoned it.
        self.state
            .lock()
            .expect("upstream cluster state lock poisoned by an earlier panic")
    }
}

// Shared by concurrent requests through an `Arc`, picks held across awaits.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Cluster>();
    shared::<Picked>();
    shared::<Permit>();
};

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("host", &self.resolved.host)
            .field("subset", &self.resolved.subset)
            .field("port", &self.resolved.port)
            .finish_non_exhaustive()
    }
}

impl State {
    fn replace(&mut self, endpoints: Vec<Endpoint>, resolved: &Resolved, now: Instant) {
        let mut old: HashMap<String, (Slot, HostOutlier)> = self
            .endpoints
            .drain(..)
            .zip(self.outliers.drain(..))
            .map(|(slot, outlier)| (slot.endpoint.id.clone(), (slot, outlier)))
            .collect();
        self.by_id.clear();
        for endpoint in endpoints {
            if self.by_id.contains_key(&endpoint.id) {
                continue;
            }
            let (active, outlier, joined) = match old.remove(&endpoint.id) {
                Some((slot, outlier)) => (slot.active, outlier, slot.joined),
                None => (
                    Arc::new(AtomicU64::new(0)),
                    HostOutlier::default(),
                    endpoint.ready_since.map_or(now, |since| since.min(now)),
                ),
            };
            self.by_id.insert(endpoint.id.clone(), self.endpoints.len());
            self.endpoints.push(Slot {
                endpoint: Arc::new(endpoint),
                active,
                joined,
            });
            self.outliers.push(outlier);
        }
        self.newest_join = self.endpoints.iter().map(|s| s.joined).max();
        if let Some(detector) = self.detector.as_mut() {
            detector.rearm(&self.outliers);
        }
        self.regroup(resolved);
    }

    /// Puts the endpoints in locality groups anew (endpoints or the
    /// waypoint's place changed). Addresses may have changed under the same
    /// positions, so every table is rebuilt.
    fn regroup(&mut self, resolved: &Resolved) {
        let members: Vec<Member<'_>> = self
            .endpoints
            .iter()
            .map(|s| Member {
                locality: &s.endpoint.locality,
                node: &s.endpoint.node,
                labels: &s.endpoint.labels,
            })
            .collect();
        self.groups = locality::groups(
            resolved.locality.as_ref(),
            resolved.outlier.is_some(),
            self.proximity.as_ref(),
            &members,
        )
        .into_iter()
        .map(|g| Group {
            priority: g.priority,
            weight: g.weight,
            members: g.members,
            // Regrouping happens on any mesh change; starting every cursor
            // at 0 would favour each group's first endpoints.
            next: AtomicUsize::new(rand::random_range(0..usize::MAX / 2)),
            ..Group::default()
        })
        .collect();
        self.recompute(resolved);
    }

    /// Each group's standing for [`locality::loads`], with `healthy` saying
    /// how many of its endpoints count as healthy.
    fn health(&self, healthy: impl Fn(&Group) -> u64) -> Vec<Health> {
        self.groups
            .iter()
            .map(|g| Health {
                priority: g.priority,
                weight: g.weight,
                healthy: healthy(g),
                total: g.members.len() as u64,
            })
            .collect()
    }

    /// A group's endpoints not ejected now (a level in panic makes ejected
    /// ones eligible, not healthy).
    fn healthy_in(&self, group: &Group) -> u64 {
        group
            .members
            .iter()
            .filter(|i| !self.outliers.get(**i).is_some_and(HostOutlier::is_ejected))
            .count() as u64
    }

    /// For a retry with `retryRemoteLocalities`: a group of another
    /// priority than those of the endpoints in `leave` (the tries so far),
    /// by the loads the levels would have with those levels out of the way
    /// (Envoy's `previous_priorities` retry priority, as Istio sets it).
    /// `None` when nothing is left elsewhere, or `leave` is empty.
    fn remote_group(&self, leave: &[String]) -> Option<usize> {
        if leave.is_empty() || self.groups.len() < 2 {
            return None;
        }
        let tried: Vec<u32> = leave
            .iter()
            .filter_map(|id| self.by_id.get(id))
            .filter_map(|i| self.groups.iter().find(|g| g.members.contains(i)))
            .map(|g| g.priority)
            .collect();
        // The tried levels count as unavailable.
        let health = self.health(|g| {
            if tried.contains(&g.priority) {
                0
            } else {
                self.healthy_in(g)
            }
        });
        let loads = locality::loads(&health);
        let weights: Vec<f64> = loads.iter().map(|l| *l as f64).collect();
        weighted_index(&weights)
    }

    /// The group a pick goes to, by the groups' loads (which sum to 100 %),
    /// drawn from the request's hash when it has one (so a key keeps its
    /// group while the loads stay), else at random. With no load anywhere
    /// (no endpoint at all) the first group, whose empty list then gives
    /// "no healthy upstream".
    fn choose_group(&self, hash: Option<u64>) -> Option<usize> {
        if self.groups.len() == 1 {
            return Some(0);
        }
        let total: u64 = self.groups.iter().map(|g| g.load).sum();
        if total == 0 {
            return (!self.groups.is_empty()).then_some(0);
        }
        let mut draw = match hash {
            Some(h) => h % total,
            None => rand::random_range(0..total),
        };
        for (i, group) in self.groups.iter().enumerate() {
            if draw < group.load {
                return Some(i);
            }
            draw -= group.load;
        }
        Some(self.groups.len() - 1)
    }

    /// Returns endpoints whose ejection ended.
    fn refresh(&mut self, now: Instant, resolved: &Resolved) {
        let Some(detector) = self.detector.as_mut() else {
            return;
        };
        if detector.sweep(&mut self.outliers, now) {
            self.recompute(resolved);
        }
    }

    /// Recomputes each group's eligible endpoints and load, and its hash
    /// table if its endpoints changed. Panic as Envoy decides it, per
    /// priority level (a level short of healthy endpoints uses all of them);
    /// with no healthy endpoint anywhere, every group uses all of its own,
    /// loaded by endpoint count — Warren's choice over "no healthy upstream".
    fn recompute(&mut self, resolved: &Resolved) {
        let is_healthy = |i: &usize| !self.outliers.get(*i).is_some_and(HostOutlier::is_ejected);
        let min_health = resolved
            .outlier
            .as_ref()
            .map_or(0, |o| u64::from(o.min_health_percent));
        let health = self.health(|g| self.healthy_in(g));
        let total_panic = health.iter().all(|h| h.healthy == 0);
        let loads = if total_panic {
            loads_in_total_panic(&health)
        } else {
            locality::loads(&health)
        };
        let in_panic = levels_in_panic(&health, min_health);
        let mut eligible_sets = Vec::with_capacity(self.groups.len());
        for group in &self.groups {
            let panic = total_panic
                || in_panic
                    .get(group.priority as usize)
                    .copied()
                    .unwrap_or(false);
            eligible_sets.push(if panic {
                group.members.clone()
            } else {
                group.members.iter().copied().filter(is_healthy).collect()
            });
        }
        for ((group, eligible), load) in self.groups.iter_mut().zip(eligible_sets).zip(loads) {
            group.load = load;
            // Members change only in `regroup`, which makes fresh groups, so
            // an unchanged eligible list means an up-to-date table. (Groups
            // without one, not hashing, just take the same list again.)
            if eligible == group.eligible && (group.table.is_some() || eligible.is_empty()) {
                continue;
            }
            let slots: Vec<&Slot> = eligible
                .iter()
                .filter_map(|i| self.endpoints.get(*i))
                .collect();
            group.weighted = slots
                .windows(2)
                .any(|pair| pair[0].endpoint.weight != pair[1].endpoint.weight);
            group.table = match &resolved.load_balancer {
                LoadBalancer::ConsistentHash(ch) if !eligible.is_empty() => {
                    let keys: Vec<(String, u32)> = slots
                        .iter()
                        .map(|s| (s.endpoint.address.to_string(), s.endpoint.weight))
                        .collect();
                    let population = Population::of(
                        group
                            .members
                            .iter()
                            .filter_map(|i| self.endpoints.get(*i))
                            .map(|s| s.endpoint.weight),
                    );
                    Some(Table::build(&ch.table, &keys, population))
                }
                _ => None,
            };
            group.eligible = eligible;
        }
    }
}
