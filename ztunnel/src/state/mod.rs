//! What ztunnel knows of the mesh: workloads, services, policies, mesh settings,
//! certificates and roots, as the agent last sent them (see [`crate::subscription`]).
//!
//! The proxy asks questions here (who is this cookie, where does this address lead, may
//! this connection pass); state never calls into the proxy.

mod cidr;
pub mod policy;
pub mod service;
mod waypoint;
pub mod workload;

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::Duration,
};

use rustls::sign::CertifiedKey;
use serde::Serialize;
use tokio::sync::watch;
use warren_api::{Identity, config::OutboundPolicy, identity::TrustDomains};

use crate::{
    rbac,
    tls::{self, TrustBundle, WorkloadCertificate},
};
pub use cidr::Cidr;
pub use policy::Authorization;
pub use service::{Pick, Service};
pub use waypoint::Waypoint;
pub use workload::Workload;

/// A resource the agent sent that ztunnel cannot take: names the object, the field and
/// the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {field}: {reason}")]
pub struct ResourceError {
    pub key: String,
    pub field: &'static str,
    pub reason: String,
}

impl ResourceError {
    pub fn new(key: &str, field: &'static str, reason: String) -> Self {
        ResourceError {
            key: key.to_owned(),
            field,
            reason,
        }
    }
}

/// Serializes what has a `Display` (identities) as its string, for `/config_dump`.
pub(crate) fn serialize_display<T: ShowAs, S: serde::Serializer>(
    value: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value.show() {
        Some(text) => s.serialize_str(&text),
        None => s.serialize_none(),
    }
}

pub(crate) trait ShowAs {
    fn show(&self) -> Option<String>;
}

impl ShowAs for Identity {
    fn show(&self) -> Option<String> {
        Some(self.to_string())
    }
}

impl ShowAs for warren_api::Locality {
    fn show(&self) -> Option<String> {
        Some(self.to_string())
    }
}

impl ShowAs for Option<Identity> {
    fn show(&self) -> Option<String> {
        self.as_ref().map(ToString::to_string)
    }
}

/// The node-wide settings (`mesh` resource).
#[derive(Clone, Debug, Serialize)]
pub struct Mesh {
    pub trust_domain: String,
    pub trust_domain_aliases: Vec<String>,
    pub root_namespace: String,
    pub registry_only: bool,
    pub node: String,
    pub node_addresses: Vec<IpAddr>,
    /// Where the plaintext inbound listeners go (`MeshSettings.inbound_listeners`).
    pub inbound_listeners: Option<std::path::PathBuf>,
}

impl Default for Mesh {
    fn default() -> Self {
        Mesh {
            trust_domain: warren_api::identity::DEFAULT_TRUST_DOMAIN.to_owned(),
            trust_domain_aliases: Vec::new(),
            root_namespace: String::new(),
            registry_only: false,
            node: String::new(),
            node_addresses: Vec::new(),
            inbound_listeners: None,
        }
    }
}

impl Mesh {
    pub fn trust_domains(&self) -> TrustDomains {
        TrustDomains {
            trust_domain: self.trust_domain.clone(),
            aliases: self.trust_domain_aliases.clone(),
        }
    }

    pub fn from_proto(m: &warren_api::config::MeshSettings) -> Result<Mesh, ResourceError> {
        let registry_only = match OutboundPolicy::try_from(m.outbound_policy) {
            Ok(OutboundPolicy::AllowAny) => false,
            Ok(OutboundPolicy::RegistryOnly) => true,
            Err(_) => {
                return Err(ResourceError::new(
                    warren_api::key::MESH,
                    "outbound_policy",
                    format!("unknown outbound policy {}", m.outbound_policy),
                ));
            }
        };
        let node_addresses = m
            .node_addresses
            .iter()
            .map(|b| {
                warren_api::addr::from_bytes(b).ok_or_else(|| {
                    ResourceError::new(
                        warren_api::key::MESH,
                        "node_addresses",
                        format!("{} bytes is not an address", b.len()),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Mesh {
            trust_domain: if m.trust_domain.is_empty() {
                warren_api::identity::DEFAULT_TRUST_DOMAIN.to_owned()
            } else {
                m.trust_domain.clone()
            },
            trust_domain_aliases: m.trust_domain_aliases.clone(),
            root_namespace: m.root_namespace.clone(),
            registry_only,
            node: m.node.clone(),
            node_addresses,
            inbound_listeners: (!m.inbound_listeners.is_empty())
                .then(|| std::path::PathBuf::from(&m.inbound_listeners)),
        })
    }
}

/// Everything, behind one lock: updates replace entries, readers take `Arc`s out.
#[derive(Default)]
pub struct Inner {
    pub(crate) mesh: Option<Mesh>,
    pub(crate) workloads: HashMap<String, Arc<Workload>>,
    by_address: HashMap<IpAddr, String>,
    /// WorkloadEntries' workloads by address: where no pod holds an
    /// address, the first key of its set does ([`claims_before`]).
    entries_at: HashMap<IpAddr, BTreeSet<String>>,
    by_cookie: HashMap<u64, String>,
    pub(crate) services: HashMap<String, Arc<Service>>,
    /// Every Service with the address; [`Inner::service_at`] picks one.
    by_vip: HashMap<IpAddr, BTreeSet<String>>,
    /// ServiceEntries' address blocks, longest prefix first (then by
    /// [`precedence`]); [`Inner::claimed`] looks here for an address no
    /// Service has exactly.
    by_range: Vec<(Cidr, String)>,
    /// The services each workload is an endpoint of (keys both ways), for the
    /// destination side's telemetry, which sees a pod address and not the VIP.
    services_by_workload: HashMap<String, Vec<String>>,
    pub(crate) policies: HashMap<String, Arc<Authorization>>,
    /// Keyed by resource key (`certificate/<spiffe id>`).
    pub(crate) certificates: HashMap<String, Arc<WorkloadCertificate>>,
    pub(crate) trust: Option<Arc<TrustBundle>>,
    /// Changes whenever the trust bundle or the trust domain does.
    trust_generation: u64,
    pub(crate) synced: bool,
    pub(crate) version: u64,
}

/// A resource ztunnel holds, by kind.
pub enum Resource {
    Mesh(Mesh),
    TrustBundle(Arc<TrustBundle>),
    Certificate(Arc<WorkloadCertificate>),
    Authorization(Arc<Authorization>),
    Workload(Arc<Workload>),
    Service(Arc<Service>),
}

/// Which of several Services claiming one address or hostname counts: a
/// Kubernetes Service before a ServiceEntry host (an entry must not take
/// over a Service's traffic, its waypoint and its mTLS), then the first key,
/// so every node picks the same one whatever order updates came in.
fn precedence(key: &str) -> (bool, &str) {
    (warren_api::key::is_service_entry(key), key)
}

/// Whether the workload `key` takes an address from the one `held` that has
/// it too. A pod's address is the pod's: a WorkloadEntry (an address someone
/// typed) never takes it, so another namespace's entry cannot shadow a pod.
/// Between pods the newer one takes it (an address reused after a pod went);
/// between entries the first key, whatever order they arrived in.
fn claims_before(key: &str, held: &str) -> bool {
    match (
        warren_api::key::is_workload_entry(key),
        warren_api::key::is_workload_entry(held),
    ) {
        (false, _) => true,
        (true, false) => false,
        (true, true) => key < held,
    }
}

impl Inner {
    /// The hop to `waypoint`, asking it for `authority`, for the traffic of
    /// `owner` (a Service's or pod's key): refused while it is not running,
    /// never sent around it.
    fn through(
        &self,
        waypoint: &Waypoint,
        authority: SocketAddr,
        owner: &str,
    ) -> Result<Upstream, ResolveError> {
        let address = waypoint
            .address
            .ok_or_else(|| ResolveError::WaypointUnavailable(owner.to_owned()))?;
        Ok(Upstream::Hbone {
            gateway: SocketAddr::new(address, waypoint.hbone_port),
            authority,
            identity: waypoint.identity.clone(),
            workload: self.workloads.get(&waypoint.workload).cloned(),
            waypoint: true,
        })
    }

    /// The Service a connection to `dst` (canonical) from a client of
    /// `namespace` goes to: one at the address exactly, else a ServiceEntry
    /// whose address block holds it on one of its ports, the longest prefix
    /// first (a block is a subnet's declared ports, as Istio listens on
    /// them, never the whole subnet). A ServiceEntry never takes a pod's
    /// address, and one resolved `NONE` without the port leaves the address
    /// to the rest of the registry (a pod there, another entry, or the
    /// outbound policy). Only what the client's namespace sees counts (a
    /// ServiceEntry's `exportTo`).
    fn claimed(&self, dst: SocketAddr, namespace: Option<&str>) -> Option<&Arc<Service>> {
        let claims = |s: &&Arc<Service>| {
            !warren_api::key::is_service_entry(&s.key)
                || (!self.by_address.contains_key(&dst.ip())
                    && (!s.passthrough || s.port(dst.port()).is_some()))
        };
        let exact = self.service_at_for(dst.ip(), namespace).filter(claims);
        if exact.is_some() || self.by_range.is_empty() || self.by_address.contains_key(&dst.ip()) {
            return exact;
        }
        self.by_range
            .iter()
            .filter(|(cidr, _)| cidr.contains(dst.ip()))
            .filter_map(|(_, key)| self.services.get(key))
            .filter(|s| namespace.is_none_or(|ns| s.visible_to(ns)))
            .find(|s| s.port(dst.port()).is_some())
    }

    /// The service at `ip` (canonical), by [`precedence`].
    fn service_at(&self, ip: IpAddr) -> Option<&Arc<Service>> {
        self.service_at_for(ip, None)
    }

    /// The service at `ip` (canonical) that clients of `namespace` see
    /// (any, without one), by [`precedence`].
    fn service_at_for(&self, ip: IpAddr, namespace: Option<&str>) -> Option<&Arc<Service>> {
        let mut keys: Vec<&String> = self.by_vip.get(&ip)?.iter().collect();
        if keys.len() > 1 {
            keys.sort_by_key(|key| precedence(key));
        }
        keys.into_iter()
            .filter_map(|key| self.services.get(key))
            .find(|s| namespace.is_none_or(|ns| s.visible_to(ns)))
    }

    /// Whether a resource with this key is held, of any kind.
    pub fn contains(&self, key: &str) -> bool {
        (key == warren_api::key::MESH && self.mesh.is_some())
            || (key == warren_api::key::TRUST_BUNDLE && self.trust.is_some())
            || self.workloads.contains_key(key)
            || self.services.contains_key(key)
            || self.policies.contains_key(key)
            || self.certificates.contains_key(key)
    }

    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        if self.mesh.is_some() {
            keys.push(warren_api::key::MESH.to_owned());
        }
        if self.trust.is_some() {
            keys.push(warren_api::key::TRUST_BUNDLE.to_owned());
        }
        keys.extend(self.workloads.keys().cloned());
        keys.extend(self.services.keys().cloned());
        keys.extend(self.policies.keys().cloned());
        keys.extend(self.certificates.keys().cloned());
        keys
    }

    fn trust_domains(&self) -> TrustDomains {
        self.mesh
            .as_ref()
            .map_or_else(TrustDomains::default, Mesh::trust_domains)
    }

    pub fn trust_domain(&self) -> &str {
        self.mesh
            .as_ref()
            .map_or(warren_api::identity::DEFAULT_TRUST_DOMAIN, |m| {
                &m.trust_domain
            })
    }

    pub fn remove(&mut self, key: &str) {
        if key == warren_api::key::MESH {
            if self.mesh.take().is_some() {
                self.trust_generation += 1;
            }
        } else if key == warren_api::key::TRUST_BUNDLE {
            self.trust = None;
            self.trust_generation += 1;
        } else if let Some(old) = self.workloads.remove(key) {
            self.unindex_workload(&old);
        } else if let Some(old) = self.services.remove(key) {
            if !old.vip_ranges.is_empty() {
                self.by_range.retain(|(_, k)| k != key);
            }
            for vip in &old.vips {
                if let Some(keys) = self.by_vip.get_mut(vip) {
                    keys.remove(key);
                    if keys.is_empty() {
                        self.by_vip.remove(vip);
                    }
                }
            }
            for workload in old.endpoints.iter().filter_map(|e| e.workload.as_ref()) {
                if let Some(services) = self.services_by_workload.get_mut(workload) {
                    services.retain(|k| k != key);
                    if services.is_empty() {
                        self.services_by_workload.remove(workload);
                    }
                }
            }
        } else if self.policies.remove(key).is_none() {
            self.certificates.remove(key);
        }
    }

    fn unindex_workload(&mut self, old: &Workload) {
        let entry = warren_api::key::is_workload_entry(&old.key);
        for ip in &old.addresses {
            if entry && let Some(keys) = self.entries_at.get_mut(ip) {
                keys.remove(&old.key);
                if keys.is_empty() {
                    self.entries_at.remove(ip);
                }
            }
            if self.by_address.get(ip).is_some_and(|k| *k == old.key) {
                self.by_address.remove(ip);
                // The WorkloadEntry a pod (or a first entry) had shadowed
                // takes the address back.
                if let Some(next) = self.entries_at.get(ip).and_then(BTreeSet::first) {
                    self.by_address.insert(*ip, next.clone());
                }
            }
        }
        if old.netns_cookie != 0
            && self
                .by_cookie
                .get(&old.netns_cookie)
                .is_some_and(|k| *k == old.key)
        {
            self.by_cookie.remove(&old.netns_cookie);
        }
    }

    pub fn upsert(&mut self, key: String, resource: Resource) {
        match resource {
            Resource::Mesh(mesh) => {
                if self
                    .mesh
                    .as_ref()
                    .is_none_or(|m| m.trust_domains() != mesh.trust_domains())
                {
                    self.trust_generation += 1;
                }
                self.mesh = Some(mesh);
            }
            Resource::TrustBundle(bundle) => {
                self.trust = Some(bundle);
                self.trust_generation += 1;
            }
            Resource::Certificate(cert) => {
                self.certificates.insert(key, cert);
            }
            Resource::Authorization(policy) => {
                self.policies.insert(key, policy);
            }
            Resource::Workload(workload) => {
                if let Some(old) = self.workloads.remove(&key) {
                    self.unindex_workload(&old);
                }
                let entry = warren_api::key::is_workload_entry(&key);
                for ip in &workload.addresses {
                    if entry {
                        self.entries_at.entry(*ip).or_default().insert(key.clone());
                    }
                    match self.by_address.get(ip) {
                        Some(held) if *held != key && !claims_before(&key, held) => {}
                        _ => {
                            self.by_address.insert(*ip, key.clone());
                        }
                    }
                }
                if workload.netns_cookie != 0 {
                    self.by_cookie.insert(workload.netns_cookie, key.clone());
                }
                self.workloads.insert(key, workload);
            }
            Resource::Service(mut service) => {
                // An endpoint ready before keeps the time it became so.
                if let (Some(old), Some(new)) =
                    (self.services.get(&key), Arc::get_mut(&mut service))
                {
                    let before: HashMap<(&service::Address, Option<&str>), std::time::Instant> =
                        old.endpoints
                            .iter()
                            .filter_map(|o| {
                                Some(((&o.address, o.workload.as_deref()), o.ready_since?))
                            })
                            .collect();
                    for endpoint in new.endpoints.iter_mut().filter(|e| e.ready) {
                        let id = (&endpoint.address, endpoint.workload.as_deref());
                        if let Some(since) = before.get(&id).copied() {
                            endpoint.ready_since = Some(since);
                        }
                    }
                }
                self.remove(&key);
                for vip in &service.vips {
                    self.by_vip.entry(*vip).or_default().insert(key.clone());
                }
                if !service.vip_ranges.is_empty() {
                    self.by_range
                        .extend(service.vip_ranges.iter().map(|c| (*c, key.clone())));
                    self.by_range.sort_by(|(a, ka), (b, kb)| {
                        b.prefix_len
                            .cmp(&a.prefix_len)
                            .then_with(|| precedence(ka).cmp(&precedence(kb)))
                    });
                }
                for workload in service.endpoints.iter().filter_map(|e| e.workload.as_ref()) {
                    let services = self
                        .services_by_workload
                        .entry(workload.clone())
                        .or_default();
                    if !services.contains(&key) {
                        services.push(key.clone());
                    }
                }
                self.services.insert(key, service);
            }
        }
    }

    /// References that must resolve before a resource is taken: a workload's policies.
    /// (Endpoints and waypoints are looked up when used: an endpoint whose workload is
    /// gone is skipped.)
    pub fn check_references(&self, resource: &Resource) -> Result<(), String> {
        if let Resource::Workload(w) = resource {
            let missing: Vec<&str> = w
                .authorization_policies
                .iter()
                .filter(|k| !self.policies.contains_key(*k))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "authorization_policies: unknown policy {}",
                    missing.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// Where an outbound connection goes.
#[derive(Clone, Debug)]
pub enum Upstream {
    /// HBONE to a peer ztunnel (or waypoint) at `gateway`, CONNECT to `authority`,
    /// accepting only `identity`.
    Hbone {
        gateway: SocketAddr,
        authority: SocketAddr,
        identity: Identity,
        workload: Option<Arc<Workload>>,
        /// The waypoint's workload key when the hop is a waypoint.
        waypoint: bool,
    },
    /// A mesh workload of this node: straight to the pod, after its policy.
    SameNode {
        addr: SocketAddr,
        workload: Arc<Workload>,
    },
    /// Plain TCP: a destination outside the mesh (or unknown, under ALLOW_ANY).
    Plain {
        addr: SocketAddr,
        workload: Option<Arc<Workload>>,
    },
}

/// What [`State::resolve`] found: where to go, or a name to resolve first.
#[derive(Clone, Debug)]
pub enum Target {
    Upstream(Upstream),
    /// An endpoint known by name: resolve `host` (outside the state's lock, per
    /// connection), then go to `port` on the first address (`first_address`) or
    /// on any of them, as [`State::to_address`] says.
    Named {
        host: String,
        port: u16,
        first_address: bool,
    },
}

/// Why no upstream could be chosen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("{0} is not a known destination and the outbound policy is REGISTRY_ONLY")]
    RegistryOnly(SocketAddr),
    #[error("service {service} has no port {port}")]
    UnknownServicePort { service: String, port: u16 },
    #[error("service {0} has no ready endpoint")]
    NoEndpoint(String),
    #[error("workload {0} has no address of the destination's family")]
    NoAddress(String),
    /// The key of the Service (or pod) whose traffic its waypoint must take.
    #[error("{0} sends its traffic through a waypoint that is not running")]
    WaypointUnavailable(String),
    /// An endpoint's name resolved to a Service's VIP: reaching it as a
    /// plain address would skip that Service's waypoint and mutual TLS.
    #[error("{host} resolves to {ip}, the address of service {service}: name that service instead")]
    NameIsServiceAddress {
        host: String,
        ip: IpAddr,
        service: String,
    },
}

impl ResolveError {
    pub fn reason(&self) -> &'static str {
        match self {
            ResolveError::RegistryOnly(_) => "registry_only",
            ResolveError::UnknownServicePort { .. } => "unknown_service_port",
            ResolveError::NoEndpoint(_) => "no_healthy_endpoint",
            ResolveError::NoAddress(_) => "no_address",
            ResolveError::WaypointUnavailable(_) => "waypoint_unavailable",
            ResolveError::NameIsServiceAddress { .. } => "dns_service_address",
        }
    }
}

/// The resolved destination with what telemetry reports of it.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub target: Target,
    /// The service when the destination was its VIP.
    pub service: Option<Arc<Service>>,
}

pub struct State {
    inner: RwLock<Inner>,
    /// Bumped after every applied update, so readiness can wait for changes.
    changed: watch::Sender<u64>,
    /// `--node-name`, when given: overrides the mesh settings' node.
    node_override: Option<String>,
    hbone_port: u16,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

impl State {
    pub fn new(node_override: Option<String>, hbone_port: u16) -> Arc<State> {
        Arc::new(State {
            inner: RwLock::new(Inner::default()),
            changed: watch::Sender::new(0),
            node_override,
            hbone_port,
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied map (each update
        // replaces whole entries), so a poisoned lock is still usable.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs an update under the write lock, then tells watchers.
    pub fn update<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let result = {
            let mut inner: RwLockWriteGuard<'_, Inner> =
                self.inner.write().unwrap_or_else(|p| p.into_inner());
            f(&mut inner)
        };
        self.changed.send_modify(|n| *n += 1);
        result
    }

    /// Follows updates (for readiness).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// What `look` finds now, or after one of the updates applied within `wait`.
    pub async fn wait_for<T>(
        &self,
        wait: Duration,
        look: impl Fn(&State) -> Option<T>,
    ) -> Option<T> {
        // Subscribed before the first look: an update in between is not missed.
        let mut changes = self.changes();
        if let Some(found) = look(self) {
            return Some(found);
        }
        let again = async {
            // The sender lives as long as `self`.
            while changes.changed().await.is_ok() {
                if let Some(found) = look(self) {
                    return Some(found);
                }
            }
            None
        };
        tokio::time::timeout(wait, again).await.ok().flatten()
    }

    pub fn mesh(&self) -> Mesh {
        self.read().mesh.clone().unwrap_or_default()
    }

    /// This node's name: `--node-name`, else the mesh settings'.
    pub fn node(&self) -> String {
        match &self.node_override {
            Some(node) => node.clone(),
            None => self
                .read()
                .mesh
                .as_ref()
                .map(|m| m.node.clone())
                .unwrap_or_default(),
        }
    }

    pub fn workload(&self, key: &str) -> Option<Arc<Workload>> {
        self.read().workloads.get(key).cloned()
    }

    /// The first workload `wanted` accepts (a scan: for rare lookups, such
    /// as a waypoint finding its own pod).
    pub fn find_workload(&self, wanted: impl Fn(&Workload) -> bool) -> Option<Arc<Workload>> {
        self.read().workloads.values().find(|w| wanted(w)).cloned()
    }

    /// This node's workloads (a scan: for what follows the node's pods as a
    /// whole, on a config change).
    pub fn local_workloads(&self) -> Vec<Arc<Workload>> {
        let node = self.node();
        if node.is_empty() {
            return Vec::new();
        }
        self.read()
            .workloads
            .values()
            .filter(|w| w.node == node)
            .cloned()
            .collect()
    }

    /// A pod by `namespace/name`, as people name pods.
    pub fn pod(&self, qualified: &str) -> Option<Arc<Workload>> {
        let (namespace, name) = qualified.split_once('/')?;
        self.workload(&warren_api::key::workload(namespace, name))
    }

    pub fn workload_by_cookie(&self, cookie: u64) -> Option<Arc<Workload>> {
        let inner = self.read();
        inner
            .by_cookie
            .get(&cookie)
            .and_then(|k| inner.workloads.get(k))
            .cloned()
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<Arc<Workload>> {
        let inner = self.read();
        inner
            .by_address
            .get(&ip.to_canonical())
            .and_then(|k| inner.workloads.get(k))
            .cloned()
    }

    /// The workload of this node at `ip`: who a connection or a query from a
    /// pod of this node comes from, or where one for a pod of it goes.
    pub fn local_workload_by_ip(&self, ip: IpAddr) -> Option<Arc<Workload>> {
        self.workload_by_ip(ip).filter(|w| self.is_local(w))
    }

    /// The service of this resource key, as it is now.
    pub fn service(&self, key: &str) -> Option<Arc<Service>> {
        self.read().services.get(key).cloned()
    }

    /// The service with this cluster IP.
    pub fn service_by_vip(&self, ip: IpAddr) -> Option<Arc<Service>> {
        self.read().service_at(ip.to_canonical()).cloned()
    }

    /// The Service a connection to `dst` from a client of `namespace` goes
    /// to, as [`State::resolve`] chooses it (an address block included):
    /// the one the client's ztunnel sent it for.
    pub fn service_for_connection(&self, dst: SocketAddr, namespace: &str) -> Option<Arc<Service>> {
        let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
        self.read().claimed(dst, Some(namespace)).cloned()
    }

    /// The service with this hostname (`name.namespace.svc.<domain>`, or a
    /// ServiceEntry host) that clients of `namespace` see (any, without one), by
    /// [`precedence`] when several claim it. Names compare as DNS does: in
    /// any case, with or without the trailing dot (a ServiceEntry may write
    /// its host either way, and a route another). A scan: the waypoint caches
    /// what it finds per upstream cluster.
    pub fn service_by_hostname(
        &self,
        hostname: &str,
        namespace: Option<&str>,
    ) -> Option<Arc<Service>> {
        let hostname = hostname.trim_end_matches('.');
        self.service_named(
            |name| name.trim_end_matches('.').eq_ignore_ascii_case(hostname),
            namespace,
        )
    }

    /// Whether a workload of this node has the identity a TLS client asks for by
    /// `server_name` (whose certificate may still be on its way).
    pub fn serves_server_name(&self, server_name: &str) -> bool {
        let node = self.node();
        self.read().workloads.values().any(|w| {
            !node.is_empty()
                && w.node == node
                && w.identity
                    .as_ref()
                    .is_some_and(|id| tls::server_name_string(id) == server_name)
        })
    }

    /// [`State::service_by_hostname`] for a name as DNS asks it.
    pub fn service_by_dns_name(&self, name: &str, namespace: &str) -> Option<Arc<Service>> {
        self.service_by_hostname(name, Some(namespace))
    }

    /// The service whose hostname `matches` that clients of `namespace` see (any,
    /// without one), by [`precedence`].
    fn service_named(
        &self,
        matches: impl Fn(&str) -> bool,
        namespace: Option<&str>,
    ) -> Option<Arc<Service>> {
        self.read()
            .services
            .iter()
            .filter(|(_, s)| matches(&s.hostname))
            .filter(|(_, s)| namespace.is_none_or(|ns| s.visible_to(ns)))
            .min_by_key(|(key, _)| precedence(key))
            .map(|(_, s)| Arc::clone(s))
    }

    pub fn certificate(&self, identity: &Identity) -> Option<Arc<WorkloadCertificate>> {
        self.read()
            .certificates
            .get(&warren_api::key::certificate(identity))
            .cloned()
    }

    pub fn trust_bundle(&self) -> Option<Arc<TrustBundle>> {
        self.read().trust.clone()
    }

    /// Whether the workload is on this node.
    pub fn is_local(&self, workload: &Workload) -> bool {
        let node = self.node();
        !node.is_empty() && workload.node == node
    }

    /// The service a connection to `workload` on `port` most likely came through, for
    /// telemetry on the destination side (which sees the pod's address, not the VIP the
    /// client dialled): of the services the workload is an endpoint of, the first by key
    /// with a port that targets `port` on it. A guess, as Istio's ztunnel makes it: a pod
    /// behind two services on one port is reported under one of them.
    pub fn inbound_service(&self, workload: &Workload, port: u16) -> Option<Arc<Service>> {
        self.inbound_port(workload, port)
            .map(|(service, _)| service)
    }

    /// The port of a Service in front of `workload` that targets `port` on it
    /// (of [`State::inbound_service`]'s choice): what that port speaks.
    pub fn declared_port(&self, workload: &Workload, port: u16) -> Option<service::ServicePort> {
        self.inbound_port(workload, port)
            .map(|(_, declared)| declared)
    }

    /// [`State::inbound_service`] with its port that targets `port`.
    fn inbound_port(
        &self,
        workload: &Workload,
        port: u16,
    ) -> Option<(Arc<Service>, service::ServicePort)> {
        let inner = self.read();
        let mut keys: Vec<&String> = inner
            .services_by_workload
            .get(&workload.key)?
            .iter()
            .collect();
        keys.sort_by_key(|key| precedence(key));
        keys.into_iter()
            .filter_map(|k| inner.services.get(k))
            .find_map(|service| {
                let targets = |p: &&service::ServicePort| {
                    service
                        .endpoints
                        .iter()
                        .filter(|e| e.workload.as_deref() == Some(workload.key.as_str()))
                        .any(|e| Service::target_port(e, p) == port)
                };
                let declared = service.ports.iter().find(targets)?;
                Some((Arc::clone(service), declared.clone()))
            })
    }

    /// The destination workload's L4 policies applied to `conn`.
    /// The mesh's trust domain and aliases.
    pub fn trust_domains(&self) -> TrustDomains {
        self.read().trust_domains()
    }

    pub fn authorize(
        &self,
        workload: &Workload,
        conn: &rbac::Connection<'_>,
    ) -> Result<(), rbac::Denied> {
        // Most workloads have no policy: nothing to look up or allocate.
        if workload.authorization_policies.is_empty() {
            return Ok(());
        }
        let inner = self.read();
        rbac::authorize(
            conn,
            &inner.trust_domains(),
            workload
                .authorization_policies
                .iter()
                .map(|key| (key.as_str(), inner.policies.get(key).map(|p| p.as_ref()))),
        )
    }

    /// Where a connection to `dst` goes: a service VIP picks an endpoint (or its
    /// waypoint), a pod address its workload, anything else passes through or is
    /// refused, per the outbound policy.
    /// `source`, the connecting workload, is where closeness is measured
    /// from (a Service's `trafficDistribution`); `pick` whether choosing an
    /// endpoint takes the balancer's turn.
    pub fn resolve(
        &self,
        dst: SocketAddr,
        source: Option<&Workload>,
        prefer_same_node: bool,
        pick: Pick,
    ) -> Result<Resolved, ResolveError> {
        let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
        let node = self.node();
        let inner = self.read();
        // A ServiceEntry naming a pod's address does not take over the pod's
        // traffic, and one without this port leaves the address to the
        // rest of the registry (a pod there, or the outbound policy).
        // Only what the client's namespace sees (a ServiceEntry's `exportTo`).
        let namespace = source.map(|w| w.namespace.as_str());
        if let Some(service) = inner.claimed(dst, namespace) {
            let found = Some(Arc::clone(service));
            let port =
                service
                    .port(dst.port())
                    .ok_or_else(|| ResolveError::UnknownServicePort {
                        service: service.key.clone(),
                        port: dst.port(),
                    })?;
            if let Some(waypoint) = &service.waypoint {
                return Ok(Resolved {
                    target: Target::Upstream(inner.through(waypoint, dst, &service.key)?),
                    service: found,
                });
            }
            // Registered, with no endpoints of its own: to the address dialled, as
            // for a pod address or a passthrough.
            if service.passthrough {
                // (Not a pod's address: that one would not have been claimed.)
                return Ok(Resolved {
                    target: Target::Upstream(Upstream::Plain {
                        addr: dst,
                        workload: None,
                    }),
                    service: found,
                });
            }
            // An endpoint naming a workload ztunnel does not hold cannot be reached
            // safely (its identity is unknown): skip it.
            let usable = |e: &service::Endpoint| match &e.workload {
                Some(key) => inner.workloads.contains_key(key),
                None => true,
            };
            let endpoint_workload =
                |e: &service::Endpoint| e.workload.as_ref().and_then(|k| inner.workloads.get(k));
            let nowhere = warren_api::Locality::default();
            let client = service::Place {
                locality: source.map_or(&nowhere, |w| &w.locality),
                node: &node,
            };
            // The node-wide `--prefer-same-node` is the preference of a
            // Service that asks for none.
            let same_node = prefer_same_node.then(service::LoadBalancing::same_node);
            let preference = service.load_balancing.as_ref().or(same_node.as_ref());
            let closeness = |e: &service::Endpoint| -> Option<usize> {
                let place = endpoint_workload(e).map(|w| service::Place {
                    locality: &w.locality,
                    node: &w.node,
                });
                preference.map_or(Some(0), |lb| lb.closeness(&client, place.as_ref()))
            };
            let endpoint = service
                .pick(usable, closeness, pick)
                .ok_or_else(|| ResolveError::NoEndpoint(service.key.clone()))?;
            let target_port = Service::target_port(endpoint, port);
            let ip = match &endpoint.address {
                service::Address::Ip(ip) => *ip,
                // Resolved by the caller, outside this lock and per connection.
                service::Address::Hostname(host) => {
                    return Ok(Resolved {
                        target: Target::Named {
                            host: host.clone(),
                            port: target_port,
                            first_address: service.dns_first_address,
                        },
                        service: found,
                    });
                }
            };
            let addr = SocketAddr::new(ip, target_port);
            // An endpoint given by address alone (a ServiceEntry's) that is a
            // pod is reached as that pod: over HBONE when it is in the mesh.
            let workload = match &endpoint.workload {
                Some(key) => inner.workloads.get(key),
                None => inner
                    .by_address
                    .get(&ip)
                    .and_then(|k| inner.workloads.get(k)),
            }
            .cloned();
            let upstream = match workload {
                Some(w) => Self::to_workload(&inner, self.hbone_port, addr, w, &node)?,
                None => Upstream::Plain {
                    addr,
                    workload: None,
                },
            };
            return Ok(Resolved {
                target: Target::Upstream(upstream),
                service: found,
            });
        }
        if let Some(workload) = inner
            .by_address
            .get(&dst.ip())
            .and_then(|k| inner.workloads.get(k))
        {
            let upstream =
                Self::to_workload(&inner, self.hbone_port, dst, Arc::clone(workload), &node)?;
            return Ok(Resolved {
                target: Target::Upstream(upstream),
                service: None,
            });
        }
        if inner.mesh.as_ref().is_some_and(|m| m.registry_only) {
            return Err(ResolveError::RegistryOnly(dst));
        }
        Ok(Resolved {
            target: Target::Upstream(Upstream::Plain {
                addr: dst,
                workload: None,
            }),
            service: None,
        })
    }

    /// Where a connection to `addr`, an address the named endpoint `host`
    /// resolved to, goes: as to the pod there (over HBONE when it is in the
    /// mesh), else plain TCP. Never to an address of a Service that
    /// [`Service::fronts_mesh`]: that would skip its waypoint and mutual TLS,
    /// so it is refused.
    pub fn to_address(&self, host: &str, addr: SocketAddr) -> Result<Upstream, ResolveError> {
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        let node = self.node();
        let inner = self.read();
        // Any service there, not only the first by precedence: entries
        // sharing an address may be seen by different namespaces.
        let fronting = inner
            .by_vip
            .get(&addr.ip())
            .into_iter()
            .flatten()
            .filter_map(|key| inner.services.get(key))
            .find(|s| s.fronts_mesh());
        if let Some(service) = fronting {
            return Err(ResolveError::NameIsServiceAddress {
                host: host.to_owned(),
                ip: addr.ip(),
                service: service.key.clone(),
            });
        }
        match inner
            .by_address
            .get(&addr.ip())
            .and_then(|k| inner.workloads.get(k))
        {
            Some(workload) => {
                Self::to_workload(&inner, self.hbone_port, addr, Arc::clone(workload), &node)
            }
            None => Ok(Upstream::Plain {
                addr,
                workload: None,
            }),
        }
    }

    /// Where a connection to `addr`, an address of `workload`, goes: through
    /// the pod's waypoint when it has one (refused while that waypoint is not
    /// running), else to the pod: over HBONE to its node, straight to it on
    /// this node, or plain TCP outside the mesh.
    fn to_workload(
        inner: &Inner,
        hbone_port: u16,
        addr: SocketAddr,
        workload: Arc<Workload>,
        node: &str,
    ) -> Result<Upstream, ResolveError> {
        if let Some(waypoint) = &workload.waypoint {
            return inner.through(waypoint, addr, &workload.key);
        }
        Ok(match (&workload.identity, workload.node_address) {
            (Some(identity), Some(node_address)) if workload.hbone => {
                if !node.is_empty() && workload.node == node {
                    Upstream::SameNode { addr, workload }
                } else {
                    Upstream::Hbone {
                        gateway: SocketAddr::new(node_address, hbone_port),
                        authority: addr,
                        identity: identity.clone(),
                        workload: Some(workload),
                        waypoint: false,
                    }
                }
            }
            _ => Upstream::Plain {
                addr,
                workload: Some(workload),
            },
        })
    }

    /// Ready: [`State::configured`], and every mesh workload of this node has its
    /// certificate. The error says what is missing.
    pub fn ready(&self) -> Result<(), String> {
        self.configured()?;
        let node = self.node();
        let inner = self.read();
        let missing: Vec<String> = inner
            .workloads
            .values()
            .filter(|w| w.hbone && !node.is_empty() && w.node == node)
            .filter_map(|w| w.identity.as_ref())
            .filter(|id| {
                !inner
                    .certificates
                    .contains_key(&warren_api::key::certificate(id))
            })
            .map(ToString::to_string)
            .collect();
        if !missing.is_empty() {
            return Err(format!("no certificate yet for {}", missing.join(", ")));
        }
        Ok(())
    }

    /// A snapshot was applied and the roots are here: enough for a proxy that needs
    /// only its own certificate (a waypoint holds no keys of the node's workloads).
    pub fn configured(&self) -> Result<(), String> {
        let inner = self.read();
        if !inner.synced {
            return Err("no config snapshot applied yet".into());
        }
        if inner.trust.is_none() {
            return Err("no trust bundle".into());
        }
        Ok(())
    }

    /// `/config_dump`: everything held, certificates by identity and validity only.
    pub fn dump(&self) -> serde_json::Value {
        let inner = self.read();
        let mut workloads: Vec<&Workload> = inner.workloads.values().map(|w| w.as_ref()).collect();
        workloads.sort_by(|a, b| a.key.cmp(&b.key));
        let mut services: Vec<&Service> = inner.services.values().map(|s| s.as_ref()).collect();
        services.sort_by(|a, b| a.key.cmp(&b.key));
        let mut policies: Vec<&Authorization> =
            inner.policies.values().map(|p| p.as_ref()).collect();
        policies.sort_by(|a, b| a.key.cmp(&b.key));
        let mut certificates: Vec<_> = inner.certificates.values().map(|c| c.summary()).collect();
        certificates.sort_by(|a, b| a.identity.cmp(&b.identity));
        serde_json::json!({
            "version": inner.version,
            "synced": inner.synced,
            "node": self.node_override.clone().or_else(|| inner.mesh.as_ref().map(|m| m.node.clone())),
            "mesh": inner.mesh,
            "workloads": workloads,
            "services": services,
            "policies": policies,
            "certificates": certificates,
            "trust_bundle": inner.trust.as_ref().map(|t| serde_json::json!({ "roots": t.count })),
        })
    }
}

impl tls::CertificateSource for State {
    fn server_certificate(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let inner = self.read();
        match server_name {
            Some(name) => inner
                .certificates
                .values()
                .find(|c| tls::server_name_string(&c.identity) == name)
                .map(|c| Arc::clone(&c.certified)),
            None if inner.certificates.len() == 1 => inner
                .certificates
                .values()
                .next()
                .map(|c| Arc::clone(&c.certified)),
            None => None,
        }
    }

    fn trust(&self) -> Option<(u64, Arc<TrustBundle>, TrustDomains)> {
        let inner = self.read();
        let trust = inner.trust.clone()?;
        Some((inner.trust_generation, trust, inner.trust_domains()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_api::config;

    fn service(ready: &[(&str, bool)]) -> Arc<Service> {
        let endpoints = ready
            .iter()
            .map(|(ip, ready)| config::Endpoint {
                workload: format!("workload/ns/{ip}"),
                address: warren_api::addr::to_bytes(ip.parse().expect("an address")),
                ready: *ready,
                ..Default::default()
            })
            .collect();
        let proto = config::Service {
            name: "svc".into(),
            namespace: "ns".into(),
            endpoints,
            ..Default::default()
        };
        Arc::new(Service::from_proto("service/ns/svc", proto).expect("a service"))
    }

    fn since(inner: &Inner, ip: &str) -> Option<std::time::Instant> {
        let ip: IpAddr = ip.parse().expect("an address");
        inner.services["service/ns/svc"]
            .endpoints
            .iter()
            .find(|e| e.address == service::Address::Ip(ip))
            .and_then(|e| e.ready_since)
    }

    #[test]
    fn an_endpoint_keeps_the_time_it_became_ready_across_updates() {
        let mut inner = Inner::default();
        let key = "service/ns/svc".to_owned();
        inner.upsert(
            key.clone(),
            Resource::Service(service(&[("10.0.0.1", true), ("10.0.0.2", false)])),
        );
        let first = since(&inner, "10.0.0.1").expect("ready");
        assert_eq!(since(&inner, "10.0.0.2"), None, "not ready yet");
        std::thread::sleep(std::time::Duration::from_millis(5));
        inner.upsert(
            key,
            Resource::Service(service(&[("10.0.0.1", true), ("10.0.0.2", true)])),
        );
        assert_eq!(since(&inner, "10.0.0.1"), Some(first), "unchanged endpoint");
        let second = since(&inner, "10.0.0.2").expect("ready now");
        assert!(second > first, "newly ready: since this update");
    }

    fn at_vip(key: &str, vip: &str, hostname: &str) -> Resource {
        let proto = config::Service {
            name: hostname.into(),
            namespace: "ns".into(),
            hostname: hostname.into(),
            vips: vec![warren_api::addr::to_bytes(vip.parse().expect("an address"))],
            ..Default::default()
        };
        Resource::Service(Arc::new(
            Service::from_proto(key, proto).expect("a service"),
        ))
    }

    #[test]
    fn an_ipv4_mapped_vip_is_found_at_its_ipv4_address() {
        let key = warren_api::key::service_entry("egress", "partner.example");
        let state = State::new(None, 15008);
        state.update(|inner| {
            inner.upsert(
                key.clone(),
                at_vip(&key, "::ffff:10.96.0.20", "partner.example"),
            );
        });
        for dialled in ["10.96.0.20", "::ffff:10.96.0.20"] {
            let found = state.service_by_vip(dialled.parse().expect("an address"));
            assert_eq!(found.map(|s| s.key.clone()), Some(key.clone()), "{dialled}");
        }
    }

    #[test]
    fn a_service_entry_never_takes_over_a_services_address_or_hostname() {
        let vip: IpAddr = "10.96.0.10".parse().expect("an address");
        let svc = "service/ns/web".to_owned();
        let entry = warren_api::key::service_entry("evil", "web.ns.svc.cluster.local");
        let other = warren_api::key::service_entry("evil", "a.example");
        for order in [[&svc, &entry, &other], [&other, &entry, &svc]] {
            let mut inner = Inner::default();
            for key in order {
                let host = if *key == other {
                    "a.example"
                } else {
                    "web.ns.svc.cluster.local"
                };
                inner.upsert(key.clone(), at_vip(key, "10.96.0.10", host));
            }
            // Whatever the order, the Kubernetes Service holds its address.
            assert_eq!(
                inner.service_at(vip).map(|s| s.key.as_str()),
                Some(svc.as_str())
            );
            // An entry going away leaves the others' claims as they were.
            inner.remove(&entry);
            assert_eq!(
                inner.service_at(vip).map(|s| s.key.as_str()),
                Some(svc.as_str())
            );
            inner.remove(&svc);
            assert_eq!(
                inner.service_at(vip).map(|s| s.key.as_str()),
                Some(other.as_str())
            );
        }
        // The same for a hostname, as the waypoint looks routes up.
        let state = State::new(None, 15008);
        state.update(|inner| {
            inner.upsert(
                entry.clone(),
                at_vip(&entry, "10.1.0.1", "web.ns.svc.cluster.local"),
            );
            inner.upsert(
                svc.clone(),
                at_vip(&svc, "10.96.0.10", "web.ns.svc.cluster.local"),
            );
        });
        let found = state
            .service_by_hostname("web.ns.svc.cluster.local", None)
            .expect("a service");
        assert_eq!(found.key, svc);
    }

    #[test]
    fn a_name_resolving_to_an_address_any_service_there_fronts_is_refused() {
        let vip: IpAddr = "10.70.0.2".parse().expect("an address");
        let entry = |host: &str, waypoint: bool| {
            let key = warren_api::key::service_entry("ns", host);
            let proto = config::Service {
                name: host.into(),
                namespace: "ns".into(),
                hostname: host.into(),
                vips: vec![warren_api::addr::to_bytes(vip)],
                waypoint: waypoint.then(|| config::GatewayAddress {
                    workload: "ns/waypoint".into(),
                    address: warren_api::addr::to_bytes("10.0.0.9".parse().expect("an address")),
                    hbone_port: 15008,
                    identity: "spiffe://cluster.local/ns/ns/sa/waypoint".into(),
                }),
                ..Default::default()
            };
            let service = Service::from_proto(&key, proto).expect("a service");
            (key, Resource::Service(Arc::new(service)))
        };
        let state = State::new(None, 15008);
        let dialled = SocketAddr::new(vip, 443);
        let (plain, plain_entry) = entry("a.example", false);
        state.update(|inner| inner.upsert(plain, plain_entry));
        // Another entry's address is its destination itself.
        assert!(state.to_address("name.example", dialled).is_ok());
        // One behind a waypoint at the same address (second by precedence).
        let (fronting, fronting_entry) = entry("b.example", true);
        state.update(|inner| inner.upsert(fronting.clone(), fronting_entry));
        match state.to_address("name.example", dialled) {
            Err(ResolveError::NameIsServiceAddress { service, .. }) => {
                assert_eq!(service, fronting);
            }
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_pod_with_a_waypoint_is_reached_through_it_directly_or_as_an_endpoint() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("an address");
        let pod = |waypoint: Option<&str>| {
            let proto = config::Workload {
                name: "db-0".into(),
                namespace: "ns".into(),
                service_account: "db".into(),
                node: "node-b".into(),
                addresses: vec![warren_api::addr::to_bytes(ip("10.0.1.5"))],
                node_address: warren_api::addr::to_bytes(ip("172.30.0.2")),
                protocol: config::TunnelProtocol::Hbone as i32,
                trust_domain: "cluster.local".into(),
                waypoint: waypoint.map(|at| config::GatewayAddress {
                    workload: "workload/ns/waypoint-0".into(),
                    address: if at.is_empty() {
                        Vec::new()
                    } else {
                        warren_api::addr::to_bytes(ip(at))
                    },
                    hbone_port: 15008,
                    identity: if at.is_empty() {
                        String::new()
                    } else {
                        "spiffe://cluster.local/ns/ns/sa/waypoint".into()
                    },
                }),
                ..Default::default()
            };
            Resource::Workload(Arc::new(
                Workload::from_proto("workload/ns/db-0", proto, "cluster.local")
                    .expect("a workload"),
            ))
        };
        let state = State::new(Some("node-a".into()), 15008);
        state.update(|inner| {
            inner.upsert("workload/ns/db-0".into(), pod(Some("10.0.0.9")));
            let proto = config::Service {
                name: "db".into(),
                namespace: "ns".into(),
                vips: vec![warren_api::addr::to_bytes(ip("10.96.0.20"))],
                ports: vec![config::ServicePort {
                    port: 80,
                    target_port: 8080,
                    ..Default::default()
                }],
                endpoints: vec![config::Endpoint {
                    workload: "workload/ns/db-0".into(),
                    address: warren_api::addr::to_bytes(ip("10.0.1.5")),
                    ready: true,
                    ..Default::default()
                }],
                ..Default::default()
            };
            let service = Service::from_proto("service/ns/db", proto).expect("a service");
            inner.upsert("service/ns/db".into(), Resource::Service(Arc::new(service)));
        });
        let hop =
            |dst: &str| match state.resolve(dst.parse().expect("ip:port"), None, false, Pick::Take)
            {
                Ok(Resolved {
                    target:
                        Target::Upstream(Upstream::Hbone {
                            gateway,
                            authority,
                            waypoint,
                            ..
                        }),
                    ..
                }) => Ok((gateway.to_string(), authority.to_string(), waypoint)),
                Ok(other) => panic!("not over HBONE: {other:?}"),
                Err(error) => Err(error),
            };
        // By its address, and through its Service (which has no waypoint of
        // its own): to its waypoint, asking for the pod.
        let through = Ok(("10.0.0.9:15008".into(), "10.0.1.5:8080".into(), true));
        assert_eq!(hop("10.0.1.5:8080"), through);
        assert_eq!(hop("10.96.0.20:80"), through);
        // Its waypoint not running: refused, never around it.
        state.update(|inner| inner.upsert("workload/ns/db-0".into(), pod(Some(""))));
        assert_eq!(
            hop("10.0.1.5:8080"),
            Err(ResolveError::WaypointUnavailable("workload/ns/db-0".into()))
        );
        // No waypoint: to its node.
        state.update(|inner| inner.upsert("workload/ns/db-0".into(), pod(None)));
        assert_eq!(
            hop("10.0.1.5:8080"),
            Ok(("172.30.0.2:15008".into(), "10.0.1.5:8080".into(), false))
        );
    }

    #[test]
    fn an_entry_is_seen_only_by_the_namespaces_it_is_exported_to() {
        let vip: IpAddr = "10.70.0.1".parse().expect("an address");
        let entry = |key: &str, export_to: &[&str]| {
            let proto = config::Service {
                name: "api.example".into(),
                namespace: "team-a".into(),
                hostname: "api.example".into(),
                vips: vec![warren_api::addr::to_bytes(vip)],
                export_to: export_to.iter().map(|ns| (*ns).to_owned()).collect(),
                ..Default::default()
            };
            Resource::Service(Arc::new(
                Service::from_proto(key, proto).expect("a service"),
            ))
        };
        let private = warren_api::key::service_entry("team-a", "api.example");
        let shared = warren_api::key::service_entry("team-b", "api.example");
        let state = State::new(None, 15008);
        state.update(|inner| inner.upsert(private.clone(), entry(&private, &["team-a"])));
        let seen_by = |ns: &str| {
            let inner = state.read();
            inner.service_at_for(vip, Some(ns)).map(|s| s.key.clone())
        };
        assert_eq!(seen_by("team-a"), Some(private.clone()));
        assert_eq!(seen_by("team-b"), None);
        let to = SocketAddr::new(vip, 80);
        assert_eq!(
            state
                .service_for_connection(to, "team-a")
                .map(|s| s.key.clone()),
            Some(private.clone())
        );
        assert!(state.service_for_connection(to, "team-b").is_none());
        assert_eq!(
            state
                .service_by_hostname("api.example", Some("team-b"))
                .map(|s| s.key.clone()),
            None
        );
        // Another entry for everyone: team-b sees that one, team-a still its own
        // (first by precedence).
        state.update(|inner| inner.upsert(shared.clone(), entry(&shared, &["*"])));
        assert_eq!(seen_by("team-a"), Some(private.clone()));
        assert_eq!(seen_by("team-b"), Some(shared.clone()));
        // `~`: nobody.
        state.update(|inner| inner.upsert(shared.clone(), entry(&shared, &["~"])));
        assert_eq!(seen_by("team-b"), None);
    }

    /// A ServiceEntry's address block claims an address no Service has
    /// exactly and no pod has, on the entry's ports, the longest prefix
    /// first, for the namespaces it is exported to.
    #[test]
    fn an_entrys_address_block_claims_what_no_service_or_pod_has() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("an address");
        let dst = |s: &str| s.parse::<SocketAddr>().expect("ip:port");
        let block = |address: &str, prefix_len: u32| config::Cidr {
            address: warren_api::addr::to_bytes(ip(address)),
            prefix_len,
        };
        let entry_resolved =
            |key: &str, host: &str, range: config::Cidr, export_to: &[&str], passthrough: bool| {
                let proto = config::Service {
                    name: host.into(),
                    namespace: "team-a".into(),
                    hostname: host.into(),
                    vip_ranges: vec![range],
                    ports: vec![config::ServicePort {
                        port: 5432,
                        target_port: 5432,
                        ..Default::default()
                    }],
                    passthrough,
                    export_to: export_to.iter().map(|ns| (*ns).to_owned()).collect(),
                    ..Default::default()
                };
                Resource::Service(Arc::new(
                    Service::from_proto(key, proto).expect("a service"),
                ))
            };
        let entry = |key: &str, host: &str, range: config::Cidr, export_to: &[&str]| {
            entry_resolved(key, host, range, export_to, true)
        };
        let wide = warren_api::key::service_entry("team-a", "db.example");
        let narrow = warren_api::key::service_entry("team-a", "replica.example");
        let fixed = warren_api::key::service_entry("team-a", "fixed.example");
        let mapped = warren_api::key::service_entry("team-a", "mapped.example");
        let state = State::new(None, 15008);
        state.update(|inner| {
            inner.upsert(
                wide.clone(),
                entry(&wide, "db.example", block("10.70.0.0", 16), &[]),
            );
            inner.upsert(
                narrow.clone(),
                entry(
                    &narrow,
                    "replica.example",
                    block("10.70.1.0", 24),
                    &["team-a"],
                ),
            );
            // STATIC (its endpoints would be listed): a block of its own.
            inner.upsert(
                fixed.clone(),
                entry_resolved(&fixed, "fixed.example", block("10.70.4.0", 24), &[], false),
            );
            // An IPv4 /8 written IPv4-mapped: as wide as it is, not /104.
            inner.upsert(
                mapped.clone(),
                entry(
                    &mapped,
                    "mapped.example",
                    block("::ffff:10.0.0.0", 104),
                    &[],
                ),
            );
            inner.upsert(
                "service/ns/web".into(),
                at_vip("service/ns/web", "10.70.0.10", "web.ns.svc.cluster.local"),
            );
            let pod = config::Workload {
                name: "db-0".into(),
                namespace: "ns".into(),
                service_account: "db".into(),
                addresses: vec![warren_api::addr::to_bytes(ip("10.70.2.7"))],
                trust_domain: "cluster.local".into(),
                ..Default::default()
            };
            inner.upsert(
                "workload/ns/db-0".into(),
                Resource::Workload(Arc::new(
                    Workload::from_proto("workload/ns/db-0", pod, "cluster.local")
                        .expect("a workload"),
                )),
            );
        });
        let claimed = |to: &str, ns: &str| {
            state
                .service_for_connection(dst(to), ns)
                .map(|s| s.key.clone())
        };
        assert_eq!(claimed("10.70.3.3:5432", "team-a"), Some(wide.clone()));
        assert_eq!(
            claimed("10.70.1.3:5432", "team-a"),
            Some(narrow.clone()),
            "the longest prefix"
        );
        assert_eq!(
            claimed("10.70.1.3:5432", "team-b"),
            Some(wide.clone()),
            "the narrow block is team-a's only"
        );
        assert_eq!(
            claimed("10.70.0.10:80", "team-a").as_deref(),
            Some("service/ns/web"),
            "a Service's own address"
        );
        assert_eq!(claimed("10.70.2.7:5432", "team-a"), None, "a pod's address");
        assert_eq!(
            claimed("10.70.3.3:9999", "team-a"),
            None,
            "not the entry's port"
        );
        assert_eq!(claimed("10.70.4.4:5432", "team-a"), Some(fixed.clone()));
        assert_eq!(
            claimed("10.70.4.4:9999", "team-a"),
            None,
            "a STATIC entry's block is its ports too"
        );
        assert_eq!(claimed("10.9.9.9:5432", "team-a"), Some(mapped.clone()));
        assert_eq!(
            claimed("172.16.0.1:5432", "team-a"),
            None,
            "outside the blocks"
        );
        assert_eq!(
            claimed("[::ffff:10.70.3.3]:5432", "team-a"),
            Some(wide.clone()),
            "an IPv4-mapped address is the IPv4 one"
        );
        // Resolved NONE: to the address dialled.
        match state.resolve(dst("10.70.3.3:5432"), None, false, Pick::Take) {
            Ok(Resolved {
                target: Target::Upstream(Upstream::Plain { addr, .. }),
                service: Some(service),
            }) => {
                assert_eq!(addr, dst("10.70.3.3:5432"));
                assert_eq!(service.key, wide);
            }
            other => panic!("not passed through as the entry's: {other:?}"),
        }
        // The narrow entry gone: its block is gone with it.
        state.update(|inner| inner.remove(&narrow));
        assert_eq!(claimed("10.70.1.3:5432", "team-a"), Some(wide.clone()));
        state.update(|inner| inner.remove(&wide));
        assert_eq!(
            claimed("10.70.1.3:5432", "team-a"),
            Some(mapped.clone()),
            "the widest block left"
        );
        state.update(|inner| inner.remove(&mapped));
        assert_eq!(claimed("10.70.1.3:5432", "team-a"), None);
    }

    /// A pod's address stays the pod's whatever WorkloadEntry also names it
    /// and in whatever order they arrive; the entry takes it only once the
    /// pod has gone. Between entries the first key holds it.
    #[test]
    fn a_pods_address_is_never_a_workload_entrys() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("an address");
        let at = |key: &str, address: &str| {
            let (namespace, name) = key
                .trim_start_matches("workload/")
                .split_once('/')
                .expect("ns/name");
            let proto = config::Workload {
                name: name.into(),
                namespace: namespace.into(),
                addresses: vec![warren_api::addr::to_bytes(ip(address))],
                ..Default::default()
            };
            Resource::Workload(Arc::new(
                Workload::from_proto(key, proto, "cluster.local").expect("a workload"),
            ))
        };
        let pod = warren_api::key::workload("ns", "db-0");
        let vm = warren_api::key::workload_entry("other", "vm");
        let vm2 = warren_api::key::workload_entry("other", "a-vm");
        let holder = |state: &State| state.workload_by_ip(ip("10.0.1.5")).map(|w| w.key.clone());
        for entry_first in [false, true] {
            let state = State::new(Some("node-a".into()), 15008);
            state.update(|inner| {
                if entry_first {
                    inner.upsert(vm.clone(), at(&vm, "10.0.1.5"));
                    inner.upsert(pod.clone(), at(&pod, "10.0.1.5"));
                } else {
                    inner.upsert(pod.clone(), at(&pod, "10.0.1.5"));
                    inner.upsert(vm.clone(), at(&vm, "10.0.1.5"));
                }
            });
            assert_eq!(
                holder(&state).as_ref(),
                Some(&pod),
                "entry first: {entry_first}"
            );
            // An update of the entry changes nothing; the pod going hands it over.
            state.update(|inner| inner.upsert(vm.clone(), at(&vm, "10.0.1.5")));
            assert_eq!(holder(&state).as_ref(), Some(&pod));
            state.update(|inner| inner.remove(&pod));
            assert_eq!(holder(&state).as_ref(), Some(&vm));
            // A second entry: the first key wins, either way round.
            state.update(|inner| inner.upsert(vm2.clone(), at(&vm2, "10.0.1.5")));
            assert_eq!(holder(&state).as_ref(), Some(&vm2));
            state.update(|inner| inner.upsert(vm.clone(), at(&vm, "10.0.1.5")));
            assert_eq!(holder(&state).as_ref(), Some(&vm2));
            state.update(|inner| inner.remove(&vm2));
            assert_eq!(holder(&state).as_ref(), Some(&vm));
            state.update(|inner| inner.remove(&vm));
            assert_eq!(holder(&state), None);
        }
    }
}
