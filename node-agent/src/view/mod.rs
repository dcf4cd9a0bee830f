//! The per-node view: from the store's objects, what this node's proxies
//! need — workloads, services with their endpoints, L4 policies, mesh
//! settings and the certificates of the node's workloads — published for
//! the distribution server with a version per change.
//!
//! It is computed incrementally: a changed object recomputes only the
//! resources that depend on it (a pod its workload; a Service or one of its
//! EndpointSlices that service; a policy its own resource, and the
//! workloads of its namespace only when whom it selects changed).

mod authorization;
mod auto_vip;
pub mod backend_tls;
mod credential;
mod node_pods;
pub mod published;
pub mod routing;
mod service;
mod service_entry;
mod telemetry;
mod waypoint;
mod workload;

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use warren_api::{
    Identity, addr,
    config::{
        Certificate, ExtensionProvider, MeshSettings, OutboundPolicy, Refusal, Resource,
        TelemetryDefaults, TrustBundle, TunnelProtocol, resource::Kind as ResourceKind,
    },
    key,
};

use tracing::warn;

use crate::{
    enrollment::PodNetns,
    model::{
        Kind, Labels, Object, ObjectKey, grpc_route,
        http_route::{self, ParentKind, Parents, Target, resolve_sections},
        l4_route,
        reference_grant::Grants,
        validate,
    },
    store::Store,
};
pub use authorization::Selection;
pub use node_pods::{LocalPod, NodePods};
pub use published::{Audience, Form, Pending, Published, Publisher};
pub use waypoint::{serving_entry, serving_service};

/// The ReferenceGrants in force: those of `store` but the ones whose last
/// update was refused. A grant's last good version must not outlive an
/// update meant to narrow it: a grant refused grants nothing.
pub fn grants_in_force(store: &Store) -> Grants {
    let refused: BTreeSet<&ObjectKey> = store
        .refusals()
        .filter_map(|(key, _)| key)
        .filter(|key| key.kind == Kind::ReferenceGrant)
        .collect();
    Grants::new(
        store
            .of_kind(Kind::ReferenceGrant)
            .filter(|o| !refused.contains(&o.key()))
            .filter_map(|o| match o {
                Object::ReferenceGrant(grant) => Some(&**grant),
                _ => None,
            }),
    )
}

/// The port named `section` of the Service (or ServiceEntry) `name` of
/// `namespace`: what a route's parentRef `sectionName` means.
pub fn section_port(
    store: &Store,
    namespace: &str,
    kind: ParentKind,
    name: &str,
    section: &str,
) -> Option<u16> {
    match kind {
        ParentKind::Service => {
            let key = ObjectKey::new(Kind::Service, Some(namespace), name);
            let Some(Object::Service(service)) = store.get(&key) else {
                return None;
            };
            service
                .ports
                .iter()
                .find(|p| p.name.as_deref() == Some(section))
                .and_then(|p| u16::try_from(p.port).ok())
        }
        ParentKind::ServiceEntry => {
            let key = ObjectKey::new(Kind::ServiceEntry, Some(namespace), name);
            let Some(Object::ServiceEntry(entry)) = store.get(&key) else {
                return None;
            };
            entry
                .spec
                .ports
                .iter()
                .find(|p| p.name == section)
                .and_then(|p| u16::try_from(p.number).ok())
        }
    }
}

/// Whether a ServiceEntry host is, or covers, a Kubernetes Service's name
/// (`*.svc.<cluster domain>`): `reviews.shop.svc.cluster.local`,
/// `*.shop.svc.cluster.local`, `*.cluster.local`, `*`.
pub fn names_cluster_services(host: &str, cluster_domain: &str) -> bool {
    let services = format!("svc.{cluster_domain}");
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host == services || host.ends_with(&format!(".{services}")) {
        return true;
    }
    match host.strip_prefix('*') {
        Some("") => true,
        Some(suffix) => {
            let suffix = suffix.trim_start_matches('.');
            services == suffix || services.ends_with(&format!(".{suffix}"))
        }
        None => false,
    }
}

/// What [`key::certificate`] keys begin with.
const CERTIFICATE_PREFIX: &str = "certificate/";

/// Mesh-wide settings the view needs.
#[derive(Clone, Debug)]
pub struct Mesh {
    pub node: String,
    pub node_addresses: Vec<IpAddr>,
    pub root_namespace: String,
    /// The root namespace's ConfigMap holding Istio's mesh config.
    pub mesh_config: String,
    pub trust_domain: String,
    pub trust_domain_aliases: Vec<String>,
    pub cluster_domain: String,
    pub outbound_policy: OutboundPolicy,
    /// Whether this node captures IPv6 connections (`--ztunnel6`): only then
    /// does an allocated host get its IPv6 address, which nothing else routes.
    pub captures_ipv6: bool,
    /// The pinned map where ztunnel puts its plaintext inbound listeners, when
    /// this node captures inbound (its datapath is installed).
    pub inbound_listeners: Option<std::path::PathBuf>,
}

pub struct View {
    mesh: Mesh,
    publisher: Publisher,
    /// Policies ztunnel enforces, by (namespace, name), with whom they select.
    policies: BTreeMap<(String, String), Selection>,
    /// EndpointSlice → the Service it belongs to (same namespace).
    slices: HashMap<ObjectKey, String>,
    /// Network namespaces of this node's enrolled pods.
    namespaces: BTreeMap<ObjectKey, PodNetns>,
    /// Identities of the workloads this node's ztunnel serves, and of the
    /// waypoints running on this node.
    local_identities: BTreeMap<String, Identity>,
    /// Each namespace's waypoints by Gateway name, where any is asked for.
    waypoints: BTreeMap<String, waypoint::Waypoints>,
    /// The Service keys each namespace's ServiceEntries publish.
    entries: BTreeMap<String, BTreeSet<String>>,
    /// The VirtualService keys each namespace's Gateway API routes publish.
    service_routes: BTreeMap<String, BTreeSet<String>>,
    /// The BackendTLSPolicy keys each namespace's policies publish.
    backend_tls: BTreeMap<String, BTreeSet<String>>,
    /// Addresses of ServiceEntry hosts that have none of their own.
    auto_vips: auto_vip::AutoVips,
    /// ServiceEntry hosts of two labels, which routing reads as written
    /// ([`routing::entry_hosts`]).
    entry_hosts: BTreeSet<String>,
    /// The extension provider keys (and the telemetry defaults' key) the
    /// mesh config publishes.
    providers: BTreeSet<String>,
    /// The `credentialName`s each DestinationRule names, each with
    /// whether a `MUTUAL` part names it (its key is needed).
    credential_names: BTreeMap<ObjectKey, BTreeMap<String, bool>>,
    /// This node's pods that have not finished, by workload key. Its
    /// waypoint pods' namespaces receive their credentials, and only
    /// processes of its pods may subscribe (`distribution::Peers`).
    local_pods: BTreeMap<String, LocalPod>,
    /// The same, for readers outside the view.
    node_pods: NodePods,
}

/// Publishes `computed`, the resources one namespace's objects of a kind
/// make together, and withdraws those of `published[namespace]` it no longer
/// has; `published` then holds its keys.
fn replace_set(
    publisher: &Publisher,
    published: &mut BTreeMap<String, BTreeSet<String>>,
    namespace: &str,
    computed: impl Iterator<Item = (String, ResourceKind)>,
) {
    let before = published.remove(namespace).unwrap_or_default();
    let computed: Vec<(String, ResourceKind)> = computed.collect();
    let now: BTreeSet<String> = computed.iter().map(|(key, _)| key.clone()).collect();
    publisher.write(|p| {
        for gone in before.difference(&now) {
            p.remove(gone);
        }
        for (key, kind) in computed {
            p.upsert(Resource {
                key,
                kind: Some(kind),
            });
        }
    });
    if !now.is_empty() {
        published.insert(namespace.to_owned(), now);
    }
}

impl View {
    pub fn new(mesh: Mesh, publisher: Publisher) -> Self {
        Self {
            mesh,
            publisher,
            policies: BTreeMap::new(),
            slices: HashMap::new(),
            namespaces: BTreeMap::new(),
            local_identities: BTreeMap::new(),
            waypoints: BTreeMap::new(),
            entries: BTreeMap::new(),
            service_routes: BTreeMap::new(),
            backend_tls: BTreeMap::new(),
            auto_vips: auto_vip::AutoVips::new(),
            entry_hosts: BTreeSet::new(),
            providers: BTreeSet::new(),
            credential_names: BTreeMap::new(),
            local_pods: BTreeMap::new(),
            node_pods: NodePods::default(),
        }
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Computes everything from the store (at the first sync).
    pub fn rebuild(&mut self, store: &Store) {
        self.publisher.write(|p| {
            p.upsert(Resource {
                key: key::MESH.into(),
                kind: Some(ResourceKind::Mesh(MeshSettings {
                    trust_domain: self.mesh.trust_domain.clone(),
                    trust_domain_aliases: self.mesh.trust_domain_aliases.clone(),
                    root_namespace: self.mesh.root_namespace.clone(),
                    outbound_policy: self.mesh.outbound_policy as i32,
                    node: self.mesh.node.clone(),
                    node_addresses: self
                        .mesh
                        .node_addresses
                        .iter()
                        .map(|ip| addr::to_bytes(*ip))
                        .collect(),
                    inbound_listeners: self
                        .mesh
                        .inbound_listeners
                        .as_ref()
                        .map(|path| path.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                })),
            });
        });
        let keys: Vec<ObjectKey> = [
            Kind::AuthorizationPolicy,
            Kind::RequestAuthentication,
            Kind::Telemetry,
            Kind::Gateway,
            Kind::EndpointSlice,
            Kind::Service,
            Kind::Pod,
            Kind::WorkloadEntry,
            Kind::VirtualService,
            Kind::HttpRoute,
            Kind::GrpcRoute,
            Kind::TcpRoute,
            Kind::TlsRoute,
            Kind::DestinationRule,
            Kind::Secret,
            Kind::ServiceEntry,
            Kind::ConfigMap,
            Kind::BackendTlsPolicy,
        ]
        .into_iter()
        .flat_map(|kind| store.of_kind(kind).map(Object::key))
        .collect();
        self.changed(store, &keys);
        self.refusals(store);
    }

    /// Recomputes what depends on the objects `keys` (changed, added or
    /// removed in `store`).
    pub fn changed(&mut self, store: &Store, keys: &[ObjectKey]) {
        // Before the routing below reads them: a new two-label entry host
        // changes what every VirtualService and DestinationRule naming it
        // means.
        let mut reroute = false;
        if keys
            .iter()
            .any(|k| matches!(k.kind, Kind::ServiceEntry | Kind::Service))
        {
            let now = routing::entry_hosts(store);
            if now != self.entry_hosts {
                self.entry_hosts = now;
                reroute = true;
            }
        }
        let mut workloads: BTreeSet<ObjectKey> = BTreeSet::new();
        let mut services: BTreeSet<(String, String)> = BTreeSet::new();
        // Namespaces whose every workload must be recomputed; `None` for all.
        let mut namespaces: BTreeSet<Option<String>> = BTreeSet::new();
        // Namespaces whose waypoint may have moved (a Gateway or a pod).
        let mut waypoint_namespaces: BTreeSet<String> = BTreeSet::new();
        // Namespaces with a changed Gateway: whom it admits may have changed.
        let mut gateway_namespaces: BTreeSet<String> = BTreeSet::new();
        // Namespaces whose ServiceEntries' Services must be recomputed.
        let mut entry_namespaces: BTreeSet<String> = BTreeSet::new();
        // A ServiceEntry changed: hosts' allocated addresses may have too.
        let mut entries_changed = false;
        // Namespaces whose HTTPRoutes must be converted again.
        let mut route_namespaces: BTreeSet<String> = BTreeSet::new();
        // Namespaces whose BackendTLSPolicies must be resolved again.
        let mut tls_namespaces: BTreeSet<String> = BTreeSet::new();
        for key in keys {
            let ns = key.namespace.as_deref().unwrap_or_default().to_owned();
            if backend_tls::depends_on(store, key) {
                tls_namespaces.insert(ns.clone());
            }
            match key.kind {
                Kind::Pod => {
                    workloads.insert(key.clone());
                    // A workloadSelector may select it (or did).
                    if has_selecting_entry(store, &ns) {
                        entry_namespaces.insert(ns.clone());
                    }
                    waypoint_namespaces.insert(ns);
                }
                Kind::WorkloadEntry => {
                    workloads.insert(key.clone());
                    // A workloadSelector may select it (or did), and so may
                    // a Service's selector.
                    if has_selecting_entry(store, &ns) {
                        entry_namespaces.insert(ns.clone());
                    }
                    services.extend(
                        store
                            .of_kind_in(Kind::Service, &ns)
                            .filter(|o| matches!(o, Object::Service(s) if s.selector.is_some()))
                            .map(|o| (ns.clone(), o.key().name.to_string())),
                    );
                }
                Kind::Gateway => {
                    // Whether a policy's targetRef names a waypoint may have changed.
                    self.l7_policies_in(store, &ns);
                    gateway_namespaces.insert(ns.clone());
                    waypoint_namespaces.insert(ns);
                }
                Kind::Namespace => {
                    namespaces.insert(Some(key.name.to_string()));
                    // Its `istio.io/use-waypoint` labels, for its ServiceEntries too.
                    entry_namespaces.insert(key.name.to_string());
                    // Its `istio.io/use-waypoint` labels may have changed, and
                    // whether a waypoint's Selector admits its Services.
                    services.extend(
                        store
                            .of_kind_in(Kind::Service, &key.name)
                            .map(|o| (key.name.to_string(), o.key().name.to_string())),
                    );
                }
                Kind::PeerAuthentication => {
                    namespaces.insert((ns != self.mesh.root_namespace).then_some(ns));
                }
                Kind::RequestAuthentication | Kind::Telemetry => self.l7_policy(store, key),
                Kind::AuthorizationPolicy => {
                    self.l7_policy(store, key);
                    if self.policy_changed(store, key) {
                        namespaces.insert((ns != self.mesh.root_namespace).then_some(ns));
                    }
                }
                Kind::Service => {
                    // A route may name one of its ports by name: its
                    // ports may have changed.
                    let names_ports = |o: &Object| {
                        o.route_parents()
                            .unwrap_or_default()
                            .iter()
                            .any(|p| p.section_name.is_some() && *p.name == *key.name)
                    };
                    if Kind::GATEWAY_ROUTES
                        .iter()
                        .any(|&kind| store.of_kind_in(kind, &ns).any(names_ports))
                    {
                        route_namespaces.insert(ns.clone());
                    }
                    services.insert((ns, key.name.to_string()));
                }
                Kind::EndpointSlice => {
                    let before = self.slices.remove(key);
                    let now = match store.get(key) {
                        Some(Object::EndpointSlice(slice)) => {
                            service::service_of(slice).map(str::to_owned)
                        }
                        _ => None,
                    };
                    if let Some(svc) = &now {
                        self.slices.insert(key.clone(), svc.clone());
                    }
                    for svc in before.into_iter().chain(now) {
                        services.insert((ns.clone(), svc));
                    }
                }
                Kind::Node => {
                    // Its pods' locality may have changed.
                    workloads.extend(
                        store
                            .of_kind(Kind::Pod)
                            .filter(|o| {
                                matches!(o, Object::Pod(p) if p.node_name.as_deref() == Some(&*key.name))
                            })
                            .map(Object::key),
                    );
                }
                Kind::VirtualService => self.routing(store, key),
                Kind::DestinationRule => {
                    self.routing(store, key);
                    self.credential_names(store, key);
                }
                Kind::Secret => self.credential(store, &ns, &key.name),
                Kind::HttpRoute | Kind::GrpcRoute | Kind::TcpRoute | Kind::TlsRoute => {
                    route_namespaces.insert(ns);
                }
                Kind::ReferenceGrant => {
                    // A grant may let routes of any namespace in, or shut
                    // them out: every namespace with routes again.
                    route_namespaces.extend(Kind::GATEWAY_ROUTES.iter().flat_map(|&kind| {
                        store
                            .of_kind(kind)
                            .filter_map(|o| o.key().namespace.map(|ns| ns.to_string()))
                    }));
                }
                Kind::ConfigMap => self.extension_providers(store, key),
                // Resolved below, with what they read.
                Kind::BackendTlsPolicy => {}
                Kind::ServiceEntry => {
                    // Routes may attach to it: they route its hosts.
                    route_namespaces.insert(ns.clone());
                    // A policy may target the entry (its hosts).
                    self.l7_policies_in(store, &ns);
                    entry_namespaces.insert(ns);
                    entries_changed = true;
                }
            }
        }
        for ns in waypoint_namespaces {
            let now = waypoint::in_namespace(&self.mesh, store, &ns);
            let before = if now.is_empty() {
                self.waypoints.remove(&ns)
            } else {
                self.waypoints.insert(ns.clone(), now.clone())
            };
            if before.unwrap_or_default() != now || gateway_namespaces.contains(&ns) {
                services.extend(
                    store
                        .of_kind_in(Kind::Service, &ns)
                        .map(|o| (ns.clone(), o.key().name.to_string())),
                );
                services.extend(waypoint::services_naming(store, &ns));
                entry_namespaces.extend(waypoint::entry_namespaces_naming(store, &ns));
                // Workloads addressed directly may go through it too.
                workloads.extend(workload_keys(store, Some(&ns)));
                workloads.extend(waypoint::workloads_naming(store, &ns));
                entry_namespaces.insert(ns);
            }
        }
        if entries_changed {
            let now = auto_vip::allocate(store);
            entry_namespaces.extend(auto_vip::namespaces_changed(&self.auto_vips, &now));
            self.auto_vips = now;
        }
        // After the waypoints: an entry may name one.
        for ns in &entry_namespaces {
            self.service_entries(store, ns);
        }
        for ns in &route_namespaces {
            self.service_routes(store, ns);
        }
        for ns in &tls_namespaces {
            let computed = backend_tls::in_namespace(store, ns, &self.mesh.cluster_domain);
            let computed = computed
                .into_iter()
                .map(|(key, tls)| (key, ResourceKind::BackendTls(tls)));
            replace_set(&self.publisher, &mut self.backend_tls, ns, computed);
        }
        if namespaces.contains(&None) {
            workloads.extend(workload_keys(store, None));
        } else {
            for ns in namespaces.into_iter().flatten() {
                workloads.extend(workload_keys(store, Some(&ns)));
            }
        }
        for key in &workloads {
            self.workload(store, key);
        }
        for (ns, name) in &services {
            self.service(store, ns, name);
        }
        if reroute {
            let routing: Vec<ObjectKey> = [Kind::VirtualService, Kind::DestinationRule]
                .into_iter()
                .flat_map(|kind| store.of_kind(kind).map(Object::key))
                .collect();
            for key in &routing {
                self.routing(store, key);
            }
        }
    }

    /// Records the store's refusals for dumps.
    pub fn refusals(&mut self, store: &Store) {
        let refusals = store
            .refusals()
            .map(|(key, error)| Refusal {
                object: key.map_or_else(|| error.object.clone(), ToString::to_string),
                error: error.to_string(),
            })
            .collect();
        self.publisher.write(|p| p.set_refusals(refusals));
    }

    /// Records this node's pods that should be captured and are not, for dumps.
    pub fn set_uncaptured(&mut self, pods: &BTreeMap<ObjectKey, String>) {
        let uncaptured = pods
            .iter()
            .map(|(key, why)| Refusal {
                object: key.to_string(),
                error: why.clone(),
            })
            .collect();
        self.publisher.write(|p| p.set_uncaptured(uncaptured));
    }

    /// Takes the enrolled pods' namespaces, recomputing pods whose namespace moved.
    pub fn set_namespaces(&mut self, store: &Store, namespaces: BTreeMap<ObjectKey, PodNetns>) {
        let moved: Vec<ObjectKey> = namespaces
            .iter()
            .filter(|(k, n)| self.namespaces.get(*k) != Some(*n))
            .map(|(k, _)| k.clone())
            .chain(
                self.namespaces
                    .keys()
                    .filter(|k| !namespaces.contains_key(*k))
                    .cloned(),
            )
            .collect();
        self.namespaces = namespaces;
        for key in &moved {
            self.workload(store, key);
        }
    }

    /// Identities the node's ztunnel needs certificates for.
    pub fn local_identities(&self) -> BTreeSet<Identity> {
        self.local_identities.values().cloned().collect()
    }

    /// Publishes the certificates of this node's identities and the roots.
    pub fn set_certificates(
        &mut self,
        certificates: &BTreeMap<Identity, std::sync::Arc<Certificate>>,
        roots_pem: &[String],
    ) {
        self.publisher.write(|p| {
            let wanted: BTreeSet<String> = certificates.keys().map(key::certificate).collect();
            let stale: Vec<String> = p
                .keys()
                .filter(|k| k.starts_with(CERTIFICATE_PREFIX) && !wanted.contains(*k))
                .map(str::to_owned)
                .collect();
            for key in stale {
                p.remove(&key);
            }
            for (identity, cert) in certificates {
                p.upsert(Resource {
                    key: key::certificate(identity),
                    kind: Some(ResourceKind::Certificate((**cert).clone())),
                });
            }
            if roots_pem.is_empty() {
                p.remove(key::TRUST_BUNDLE);
            } else {
                p.upsert(Resource {
                    key: key::TRUST_BUNDLE.into(),
                    kind: Some(ResourceKind::TrustBundle(TrustBundle {
                        roots_pem: roots_pem.to_vec(),
                    })),
                });
            }
        });
    }

    /// Publishes `kind` as resource `key`, or withdraws `key` when `None`.
    fn publish(&self, key: String, kind: Option<ResourceKind>) {
        self.publisher.write(|p| match kind {
            Some(kind) => {
                p.upsert(Resource {
                    key,
                    kind: Some(kind),
                });
            }
            None => {
                p.remove(&key);
            }
        });
    }

    /// Recomputes the policy resource; true if whom it selects changed.
    fn policy_changed(&mut self, store: &Store, key: &ObjectKey) -> bool {
        let id = (
            key.namespace.as_deref().unwrap_or_default().to_owned(),
            key.name.to_string(),
        );
        let resource_key = key::authorization(&id.0, &id.1);
        let now = match store.get(key) {
            Some(Object::AuthorizationPolicy(policy)) => {
                authorization::authorization(policy, &self.mesh.root_namespace)
            }
            _ => None,
        };
        let before = match &now {
            Some((auth, selection)) => {
                self.publisher.write(|p| {
                    p.upsert(Resource {
                        key: resource_key,
                        kind: Some(ResourceKind::Authorization(auth.clone())),
                    })
                });
                self.policies.insert(id, selection.clone())
            }
            None => {
                self.publisher.write(|p| p.remove(&resource_key));
                self.policies.remove(&id)
            }
        };
        before.as_ref() != now.as_ref().map(|(_, s)| s)
    }

    /// Publishes (or withdraws) the AuthorizationPolicy,
    /// RequestAuthentication or Telemetry `key` for the waypoints it binds.
    fn l7_policy(&mut self, store: &Store, key: &ObjectKey) {
        let ns = key.namespace.as_deref().unwrap_or("default");
        let is_waypoint = |gateway: &str| is_waypoint_gateway(store, ns, gateway);
        let entry_hosts =
            |entry: &str| match store.get(&ObjectKey::new(Kind::ServiceEntry, Some(ns), entry)) {
                Some(Object::ServiceEntry(e)) => e.spec.hosts.clone(),
                _ => Vec::new(),
            };
        let (resource_key, computed) = if key.kind == Kind::RequestAuthentication {
            let computed = match store.get(key) {
                Some(Object::RequestAuthentication(ra)) => {
                    authorization::l7_authentication(ra, is_waypoint, entry_hosts)
                }
                _ => None,
            };
            (
                key::l7_authentication(ns, &key.name),
                computed.map(ResourceKind::L7Authentication),
            )
        } else if key.kind == Kind::Telemetry {
            let computed = match store.get(key) {
                Some(Object::Telemetry(t)) => {
                    telemetry::for_waypoints(t, &self.mesh.root_namespace, is_waypoint, entry_hosts)
                }
                _ => None,
            };
            (
                key::telemetry(ns, &key.name),
                computed.map(ResourceKind::Telemetry),
            )
        } else {
            let computed = match store.get(key) {
                Some(Object::AuthorizationPolicy(policy)) => {
                    authorization::l7_authorization(policy, is_waypoint, entry_hosts)
                }
                _ => None,
            };
            (
                key::l7_authorization(ns, &key.name),
                computed.map(ResourceKind::L7Authorization),
            )
        };
        self.publish(resource_key, computed);
    }

    /// Publishes the extension providers of the mesh config to waypoints
    /// (external authorizers; access logs and Prometheus, which Telemetry
    /// objects name; the other kinds by name, so that naming them is not
    /// naming nothing) and its default telemetry providers, when `key` is its ConfigMap. A refused update
    /// leaves the last good ones in force (the store keeps the last good
    /// object).
    fn extension_providers(&mut self, store: &Store, key: &ObjectKey) {
        if key.namespace.as_deref() != Some(self.mesh.root_namespace.as_str())
            || *key.name != *self.mesh.mesh_config
        {
            return;
        }
        let mesh = match store.get(key) {
            Some(Object::ConfigMap(map)) => map.mesh.as_ref(),
            _ => None,
        };
        let providers = mesh
            .map(|mesh| mesh.extension_providers.as_slice())
            .unwrap_or_default();
        let defaults = mesh
            .filter(|mesh| {
                mesh.default_providers.is_some()
                    || mesh.access_log_file.is_some()
                    || !mesh.access_log_format.is_empty()
                    || !mesh.access_log_encoding.is_empty()
            })
            .map(|mesh| {
                let d = mesh.default_providers.clone().unwrap_or_default();
                (
                    key::TELEMETRY_DEFAULTS.to_owned(),
                    ResourceKind::TelemetryDefaults(TelemetryDefaults {
                        metrics: d.metrics,
                        access_logging: d.access_logging,
                        tracing: d.tracing,
                        access_log_file: mesh.access_log_file.clone(),
                        access_log_format: mesh.access_log_format.clone(),
                        access_log_encoding: mesh.access_log_encoding.clone(),
                    }),
                )
            });
        let computed: Vec<(String, ResourceKind)> = providers
            .iter()
            .filter_map(|provider| {
                let spec_json = serde_json::to_string(provider)
                    .map_err(|error| warn!(provider = %provider.name, %error, "cannot encode an extension provider"))
                    .ok()?;
                Some((
                    key::extension_provider(&provider.name),
                    ResourceKind::ExtensionProvider(ExtensionProvider {
                        name: provider.name.clone(),
                        spec_json,
                    }),
                ))
            })
            .chain(defaults)
            .collect();
        let mut published = BTreeMap::from([(String::new(), std::mem::take(&mut self.providers))]);
        replace_set(&self.publisher, &mut published, "", computed.into_iter());
        self.providers = published.remove("").unwrap_or_default();
    }

    /// Recomputes the waypoint policies of `namespace` (a Gateway or a
    /// ServiceEntry changed).
    fn l7_policies_in(&mut self, store: &Store, namespace: &str) {
        let keys: Vec<ObjectKey> = store
            .of_kind_in(Kind::AuthorizationPolicy, namespace)
            .chain(store.of_kind_in(Kind::RequestAuthentication, namespace))
            .chain(store.of_kind_in(Kind::Telemetry, namespace))
            .map(Object::key)
            .collect();
        for key in &keys {
            self.l7_policy(store, key);
        }
    }

    /// Keys of the policies that apply to a pod of `namespace` with `labels`.
    fn policies_for(&self, namespace: &str, labels: &Labels) -> Vec<String> {
        let selects = |selection: &Selection| match selection {
            Selection::Mesh | Selection::Namespace => true,
            Selection::Labels(want) => labels.includes(want),
        };
        let root = &self.mesh.root_namespace;
        let mut found: Vec<String> = self
            .policies_in(namespace)
            .filter(|(_, s)| selects(s))
            .map(|((ns, name), _)| key::authorization(ns, name))
            .collect();
        if namespace != root {
            found.extend(
                self.policies_in(root)
                    .filter(|(_, s)| selects(s))
                    .map(|((ns, name), _)| key::authorization(ns, name)),
            );
        }
        found
    }

    fn policies_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = (&'a (String, String), &'a Selection)> + 'a {
        self.policies
            .range((namespace.to_owned(), String::new())..)
            .take_while(move |((ns, _), _)| ns == namespace)
    }

    /// Recomputes the workload of the Pod or WorkloadEntry `key`.
    fn workload(&mut self, store: &Store, key: &ObjectKey) {
        let namespace = key.namespace.as_deref().unwrap_or("default");
        if key.kind == Kind::WorkloadEntry {
            let resource_key = key::workload_entry(namespace, &key.name);
            let computed = match store.get(key) {
                Some(Object::WorkloadEntry(entry)) => {
                    let policies = self.policies_for(namespace, &entry.labels());
                    workload::workload_entry(&self.mesh, store, entry, policies, &self.waypoints)
                }
                _ => None,
            };
            // Never this node's: no identity of it is served here.
            self.publish(resource_key, computed.map(ResourceKind::Workload));
            return;
        }
        let resource_key = key::workload(namespace, &key.name);
        let computed = match store.get(key) {
            Some(Object::Pod(pod)) => {
                let policies = self.policies_for(namespace, &pod.labels);
                let netns = self.namespaces.get(key);
                workload::workload(&self.mesh, store, pod, netns, policies, &self.waypoints)
            }
            _ => None,
        };
        // From the Pod itself: a waypoint's container may run (and
        // subscribe) before its address is published, and its workload made.
        let local = self.local_pod(store, key, namespace);
        self.local_pod_changed(store, namespace, &resource_key, local);
        match computed {
            Some(w) => {
                // A waypoint pod is outside the capture (it must not loop back
                // through ztunnel) but speaks mTLS: it needs its certificate.
                let local = w.node == self.mesh.node
                    && (w.protocol == TunnelProtocol::Hbone as i32 || w.is_waypoint);
                if local {
                    self.local_identities.insert(
                        resource_key.clone(),
                        Identity::new(&w.trust_domain, &w.namespace, &w.service_account),
                    );
                } else {
                    self.local_identities.remove(&resource_key);
                }
                self.publisher.write(|p| {
                    p.upsert(Resource {
                        key: resource_key,
                        kind: Some(ResourceKind::Workload(w)),
                    })
                });
            }
            None => {
                self.local_identities.remove(&resource_key);
                self.publisher.write(|p| p.remove(&resource_key));
            }
        }
    }

    /// Publishes (or withdraws) a VirtualService or DestinationRule for the
    /// waypoints.
    fn routing(&mut self, store: &Store, key: &ObjectKey) {
        let ns = key.namespace.as_deref().unwrap_or("default");
        let (resource_key, computed) = match key.kind {
            Kind::VirtualService => (
                key::virtual_service(ns, &key.name),
                match store.get(key) {
                    Some(Object::VirtualService(vs)) => {
                        routing::virtual_service(&self.mesh, vs, &self.entry_hosts)
                            .map(ResourceKind::VirtualService)
                    }
                    _ => None,
                },
            ),
            _ => (
                key::destination_rule(ns, &key.name),
                match store.get(key) {
                    Some(Object::DestinationRule(dr)) => Some(ResourceKind::DestinationRule(
                        routing::destination_rule(&self.mesh, dr, &self.entry_hosts),
                    )),
                    _ => None,
                },
            ),
        };
        self.publish(resource_key, computed);
    }

    /// Notes the local pod of workload `resource_key` of `namespace` (none
    /// when it is not one); when that makes the namespace gain its first
    /// waypoint on this node or lose its last, its credentials are published
    /// or withdrawn.
    fn local_pod_changed(
        &mut self,
        store: &Store,
        namespace: &str,
        resource_key: &str,
        now: Option<LocalPod>,
    ) {
        let had = self.has_local_waypoint(namespace);
        let before = match now.clone() {
            Some(pod) => self.local_pods.insert(resource_key.to_owned(), pod),
            None => self.local_pods.remove(resource_key),
        };
        // Shared before anything that follows is published: a subscriber
        // whose pod this was is checked again before its next update.
        if before != now {
            self.node_pods
                .set(self.local_pods.values().cloned().collect());
        }
        if had != self.has_local_waypoint(namespace) {
            let secrets: Vec<ObjectKey> = store
                .of_kind_in(Kind::Secret, namespace)
                .map(Object::key)
                .collect();
            for secret in secrets {
                self.credential(store, namespace, &secret.name);
            }
        }
    }

    /// The pod `key` of `namespace`, if it is on this node and has not
    /// finished.
    fn local_pod(&self, store: &Store, key: &ObjectKey, namespace: &str) -> Option<LocalPod> {
        let Some(Object::Pod(pod)) = store.get(key) else {
            return None;
        };
        let finished = matches!(
            pod.phase,
            Some(
                crate::model::cluster::PodPhase::Succeeded
                    | crate::model::cluster::PodPhase::Failed
            )
        );
        if pod.node_name.as_deref() != Some(self.mesh.node.as_str()) || finished {
            return None;
        }
        let waypoint = pod
            .labels
            .get(crate::model::gateway::GATEWAY_NAME_LABEL)
            .is_some_and(|gateway| {
                self.waypoints
                    .get(namespace)
                    .is_some_and(|w| w.contains_key(gateway))
            });
        Some(LocalPod {
            namespace: namespace.to_owned(),
            uid: pod.uid.as_deref().map(str::to_owned),
            netns: pod
                .annotation(crate::enrollment::NETNS_ANNOTATION)
                .map(str::to_owned),
            waypoint,
        })
    }

    fn has_local_waypoint(&self, namespace: &str) -> bool {
        self.local_pods
            .values()
            .any(|p| p.waypoint && p.namespace == namespace)
    }

    /// This node's pods that have not finished, as they change (a handle
    /// the view keeps writing).
    pub fn node_pods(&self) -> NodePods {
        self.node_pods.clone()
    }

    /// Notes the `credentialName`s of the DestinationRule `key`, and
    /// publishes (or withdraws) the Secrets of the names it starts (or
    /// stops) naming.
    fn credential_names(&mut self, store: &Store, key: &ObjectKey) {
        let now = match store.get(key) {
            Some(Object::DestinationRule(dr)) => credential::names_of(dr),
            _ => BTreeMap::new(),
        };
        let before = if now.is_empty() {
            self.credential_names.remove(key)
        } else {
            self.credential_names.insert(key.clone(), now.clone())
        }
        .unwrap_or_default();
        // Names added, dropped, or whose need of a key changed.
        let changed: BTreeSet<&String> = before
            .iter()
            .chain(&now)
            .filter(|(name, _)| before.get(*name) != now.get(*name))
            .map(|(name, _)| name)
            .collect();
        if changed.is_empty() {
            return;
        }
        let secrets: Vec<ObjectKey> = store
            .of_kind(Kind::Secret)
            .map(Object::key)
            .filter(|k| credential::is_named(&k.name, |name| changed.iter().any(|c| *c == name)))
            .collect();
        for secret in secrets {
            let ns = secret.namespace.as_deref().unwrap_or_default();
            self.credential(store, ns, &secret.name);
        }
    }

    /// Publishes the Secret `name` of `namespace` for that namespace's
    /// waypoints if a DestinationRule names it (or it is the CA companion of
    /// a name) and one of them runs on this node, with its certificate and
    /// key only if a `MUTUAL` part names it; withdraws it otherwise.
    fn credential(&mut self, store: &Store, namespace: &str, name: &str) {
        let resource_key = key::credential(namespace, name);
        // `Some(whether the key is needed)` if named itself.
        let named = self
            .credential_names
            .values()
            .filter_map(|names| names.get(name))
            .copied()
            .reduce(|a, b| a || b);
        let companion = credential::is_companion_of(name, |n| {
            self.credential_names
                .values()
                .any(|names| names.contains_key(n))
        });
        let secret = match store.get(&ObjectKey::new(Kind::Secret, Some(namespace), name)) {
            Some(Object::Secret(secret))
                if (named.is_some() || companion)
                    && self.has_local_waypoint(namespace)
                    && !secret.credential.is_empty() =>
            {
                Some(credential::resource(secret, named == Some(true)))
            }
            _ => None,
        };
        self.publish(resource_key, secret.map(ResourceKind::Credential));
    }

    /// Publishes the VirtualService that `namespace`'s Gateway API routes
    /// (HTTP, gRPC, TCP, TLS) make for each Service they attach to, and
    /// withdraws those no route makes any more. All of a namespace's at
    /// once: a Service's routes are one.
    fn service_routes(&mut self, store: &Store, namespace: &str) {
        // A parent's `sectionName` names one of its ports.
        let port_of =
            |kind, name: &str, section: &str| section_port(store, namespace, kind, name, section);
        // The routes of a kind, their sections resolved (copied only then).
        fn of<'a, T: Clone + Parents>(
            store: &'a Store,
            kind: Kind,
            namespace: &'a str,
            pick: impl Fn(&'a Object) -> Option<&'a T>,
            port_of: &dyn Fn(ParentKind, &str, &str) -> Option<u16>,
        ) -> Vec<Cow<'a, T>> {
            store
                .of_kind_in(kind, namespace)
                .filter_map(pick)
                .map(|route| {
                    let mut route = Cow::Borrowed(route);
                    if route.parent_refs().iter().any(|p| p.section_name.is_some()) {
                        resolve_sections(route.to_mut().parent_refs_mut(), port_of);
                    }
                    route
                })
                .collect()
        }
        let grants = grants_in_force(store);
        let grpc = of(
            store,
            Kind::GrpcRoute,
            namespace,
            |o| match o {
                Object::GrpcRoute(route) => Some(&**route),
                _ => None,
            },
            &port_of,
        );
        let http = of(
            store,
            Kind::HttpRoute,
            namespace,
            |o| match o {
                Object::HttpRoute(route) => Some(&**route),
                _ => None,
            },
            &port_of,
        );
        let tcp = of(
            store,
            Kind::TcpRoute,
            namespace,
            |o| match o {
                Object::TcpRoute(route) => Some(&**route),
                _ => None,
            },
            &port_of,
        );
        let tls = of(
            store,
            Kind::TlsRoute,
            namespace,
            |o| match o {
                Object::TlsRoute(route) => Some(&**route),
                _ => None,
            },
            &port_of,
        );
        let (grpc, http, tcp, tls): (Vec<&_>, Vec<&_>, Vec<&_>, Vec<&_>) = (
            grpc.iter().map(AsRef::as_ref).collect(),
            http.iter().map(AsRef::as_ref).collect(),
            tcp.iter().map(AsRef::as_ref).collect(),
            tls.iter().map(AsRef::as_ref).collect(),
        );
        fn services_of<T: Parents>(routes: &[&T]) -> BTreeSet<(ParentKind, String)> {
            let parents = routes.iter().flat_map(|r| r.service_parents());
            parents.map(|p| (p.kind, p.service)).collect()
        }
        let grpc_services = services_of(&grpc);
        let http_services = services_of(&http);
        let mut l4_services = services_of(&tcp);
        l4_services.extend(services_of(&tls));
        let mut computed = BTreeMap::new();
        let domain = &self.mesh.cluster_domain;
        let services: BTreeSet<&(ParentKind, String)> = grpc_services
            .iter()
            .chain(&http_services)
            .chain(&l4_services)
            .collect();
        for parent in services {
            let (kind, service) = (parent.0, parent.1.as_str());
            let target = match kind {
                ParentKind::Service => Target::service(namespace, service, domain),
                // Its hosts, as its Services carry them; routes of an entry
                // that is not there route nothing.
                ParentKind::ServiceEntry => {
                    let key = ObjectKey::new(Kind::ServiceEntry, Some(namespace), service);
                    let Some(Object::ServiceEntry(entry)) = store.get(&key) else {
                        continue;
                    };
                    // An entry never takes over a Kubernetes Service's name:
                    // its routes route none of the cluster's.
                    let (hosts, cluster): (Vec<String>, Vec<String>) = entry
                        .spec
                        .hosts
                        .iter()
                        .cloned()
                        .partition(|h| !names_cluster_services(h, domain));
                    if !cluster.is_empty() {
                        warn!(
                            namespace,
                            entry = service,
                            hosts = %cluster.join(", "),
                            "routes attached to a ServiceEntry do not route its hosts that name the cluster's Services"
                        );
                    }
                    if hosts.is_empty() {
                        continue;
                    }
                    Target::service_entry(service, hosts)
                }
            };
            // The Gateway API gives a Service's GRPCRoutes precedence over
            // its HTTPRoutes, which are then not in force.
            let http_vs = if grpc_services.contains(parent) {
                if http_services.contains(parent) {
                    warn!(
                        namespace,
                        service,
                        "a Service with GRPCRoutes is routed by them: its HTTPRoutes are left out"
                    );
                }
                grpc_route::virtual_service(namespace, &target, domain, &grpc, &grants)
            } else {
                http_route::virtual_service(namespace, &target, domain, &http, &grants)
            };
            let l4_vs = l4_route::virtual_service(namespace, &target, domain, &tcp, &tls, &grants);
            let made = match kind {
                ParentKind::Service => [
                    (key::service_routes(namespace, service), http_vs),
                    (key::service_l4_routes(namespace, service), l4_vs),
                ],
                ParentKind::ServiceEntry => [
                    (key::service_entry_routes(namespace, service), http_vs),
                    (key::service_entry_l4_routes(namespace, service), l4_vs),
                ],
            };
            for (key, vs) in made {
                let Some(vs) = vs else {
                    continue;
                };
                // Each route alone was checked to make a VirtualService that
                // passes; together they could still clash (two naming a
                // rule alike). Then they stay out rather than reach the
                // waypoints half-understood.
                let problems = validate::virtual_service(&vs);
                if !problems.is_empty() {
                    let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
                    warn!(
                        namespace,
                        service,
                        virtual_service = vs.metadata.name.as_deref().unwrap_or_default(),
                        problems = %problems.join("; "),
                        "the Gateway API routes of a Service make no valid VirtualService together; they are left out"
                    );
                    continue;
                }
                // Hosts are fully qualified already: a two-label Hostname
                // backend is a name outside the cluster, not `<svc>.<ns>`.
                computed.insert(key, routing::published(&vs, &vs.spec));
            }
        }
        let computed = computed
            .into_iter()
            .map(|(key, vs)| (key, ResourceKind::VirtualService(vs)));
        replace_set(
            &self.publisher,
            &mut self.service_routes,
            namespace,
            computed,
        );
    }

    /// Publishes the Services of `namespace`'s ServiceEntries, and removes
    /// those no entry publishes any more. All of a namespace's at once: when
    /// two name the same host, the first by name keeps it, whichever changed.
    fn service_entries(&mut self, store: &Store, namespace: &str) {
        let pods: Vec<_> = store
            .of_kind_in(Kind::Pod, namespace)
            .filter_map(|o| match o {
                Object::Pod(p) => Some(p.as_ref()),
                _ => None,
            })
            .collect();
        let workload_entries: Vec<_> = store
            .of_kind_in(Kind::WorkloadEntry, namespace)
            .filter_map(|o| match o {
                Object::WorkloadEntry(e) => Some(e.as_ref()),
                _ => None,
            })
            .collect();
        let trust_domains: Vec<&str> = std::iter::once(&self.mesh.trust_domain)
            .chain(&self.mesh.trust_domain_aliases)
            .map(String::as_str)
            .collect();
        let mut computed: BTreeMap<String, warren_api::config::Service> = BTreeMap::new();
        for object in store.of_kind_in(Kind::ServiceEntry, namespace) {
            let Object::ServiceEntry(entry) = object else {
                continue;
            };
            let waypoint = waypoint::of_entry(store, &self.waypoints, namespace, entry);
            let auto_vip = |host: &str| {
                self.auto_vips
                    .get(&(namespace.to_owned(), auto_vip::normal(host)))
                    .map_or_else(Vec::new, |slot| {
                        if self.mesh.captures_ipv6 {
                            slot.addresses().to_vec()
                        } else {
                            vec![IpAddr::V4(slot.v4())]
                        }
                    })
            };
            for mut service in service_entry::services(
                namespace,
                entry,
                &pods,
                &workload_entries,
                &trust_domains,
                auto_vip,
            ) {
                service.waypoint.clone_from(&waypoint);
                computed
                    .entry(key::service_entry(namespace, &service.hostname))
                    .or_insert(service);
            }
        }
        let computed = computed
            .into_iter()
            .map(|(key, service)| (key, ResourceKind::Service(service)));
        replace_set(&self.publisher, &mut self.entries, namespace, computed);
    }

    fn service(&mut self, store: &Store, namespace: &str, name: &str) {
        let resource_key = key::service(namespace, name);
        let svc_key = ObjectKey::new(Kind::Service, Some(namespace), name);
        let Some(Object::Service(svc)) = store.get(&svc_key) else {
            self.publisher.write(|p| p.remove(&resource_key));
            return;
        };
        let slices: Vec<_> = store
            .of_kind_in(Kind::EndpointSlice, namespace)
            .filter_map(|o| match o {
                Object::EndpointSlice(s) if service::service_of(s) == Some(name) => {
                    Some(s.as_ref())
                }
                _ => None,
            })
            .collect();
        // istiod's addition to Kubernetes: the WorkloadEntries the
        // Service's selector picks are its endpoints too.
        let entries: Vec<_> = svc.selector.as_ref().map_or_else(Vec::new, |selector| {
            store
                .of_kind_in(Kind::WorkloadEntry, namespace)
                .filter_map(|o| match o {
                    Object::WorkloadEntry(e) if e.labels().matches(selector) => Some(e.as_ref()),
                    _ => None,
                })
                .collect()
        });
        let mut computed = service::service(&self.mesh, svc, &slices, &entries);
        computed.waypoint = waypoint::of_service(store, &self.waypoints, namespace, svc);
        self.publisher.write(|p| {
            p.upsert(Resource {
                key: resource_key,
                kind: Some(ResourceKind::Service(computed)),
            })
        });
    }
}

/// The keys of the Pods and WorkloadEntries of `namespace` (`None`: of
/// every namespace): each makes a workload.
fn workload_keys(store: &Store, namespace: Option<&str>) -> Vec<ObjectKey> {
    [Kind::Pod, Kind::WorkloadEntry]
        .into_iter()
        .flat_map(|kind| match namespace {
            Some(ns) => store
                .of_kind_in(kind, ns)
                .map(Object::key)
                .collect::<Vec<_>>(),
            None => store.of_kind(kind).map(Object::key).collect(),
        })
        .collect()
}

/// Whether a ServiceEntry of `namespace` picks workloads by labels: its
/// endpoints (any resolution but `NONE`, as `service_entry::services` reads
/// it) and, whatever its resolution, the names of their service accounts.
fn has_selecting_entry(store: &Store, namespace: &str) -> bool {
    store
        .of_kind_in(Kind::ServiceEntry, namespace)
        .any(|o| matches!(o, Object::ServiceEntry(e) if e.spec.workload_selector.is_some()))
}

/// Whether `name` is a Gateway of a waypoint class in `namespace`.
fn is_waypoint_gateway(store: &Store, namespace: &str, name: &str) -> bool {
    let key = ObjectKey::new(Kind::Gateway, Some(namespace), name);
    matches!(store.get(&key), Some(Object::Gateway(g)) if g.is_waypoint())
}

#[cfg(test)]
mod tests;
