//! Which waypoint a Service's traffic goes through, and a pod's.
//!
//! A namespace gets waypoints from Gateways of a waypoint class; each one's
//! pods (labelled with the Gateway's name, as a Gateway controller labels the
//! Deployment it makes) are where its traffic goes. A Service chooses, in
//! this order:
//!
//! 1. its own `istio.io/use-waypoint` label: `none`, or a Gateway's name
//!    (in the namespace `istio.io/use-waypoint-namespace` names, its own by
//!    default);
//! 2. the same labels on its namespace;
//! 3. otherwise its namespace's waypoint: the first waypoint Gateway there
//!    by name, if any.
//!
//! A ServiceEntry chooses by 1. and 2. only: traffic to a destination outside
//! the cluster goes through a waypoint when asked, as in Istio.
//!
//! Only Gateways that take Service traffic count (`istio.io/waypoint-for`
//! unset, `service` or `all`); a label naming one for `workload` or `none`
//! leaves the traffic direct, as Istio does. A waypoint that is named but
//! cannot serve (no such Gateway, another class, a namespace its listeners
//! do not admit, or no running pod) still claims the traffic: ztunnel
//! refuses it rather than bypass the L7 policy the operator asked for.
//!
//! A pod of the mesh chooses by 1. and 2. only (as in Istio: no label, no
//! waypoint) for traffic addressed to the pod itself (its own address: a
//! headless Service's clients, a StatefulSet's peers), among Gateways for
//! `workload` or `all`. A label names one waypoint for whatever traffic it
//! takes, so a waypoint for Services only leaves the pod's own traffic
//! direct; a name that is no waypoint, or one that cannot serve, claims it
//! (refused, as above). Waypoint pods never go through a waypoint.

use std::collections::BTreeMap;

use warren_api::{Identity, addr, config::GatewayAddress, key};

use super::Mesh;
use crate::{
    model::{
        Kind, Labels, Object, ObjectKey,
        cluster::{Pod, Service},
        gateway::{
            GATEWAY_NAME_LABEL, Gateway, USE_WAYPOINT_LABEL, USE_WAYPOINT_NAMESPACE_LABEL,
            WAYPOINT_HBONE_PORT,
        },
        istio::ServiceEntry,
    },
    store::Store,
};

/// The waypoints of one namespace by Gateway name.
pub type Waypoints = BTreeMap<String, GatewayAddress>;

/// Which traffic a waypoint is chosen for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Traffic {
    /// Addressed to a Service (or ServiceEntry host).
    Services,
    /// Addressed to a pod itself.
    Workloads,
}

impl Traffic {
    fn taken_by(self, gateway: &Gateway) -> bool {
        match self {
            Traffic::Services => gateway.serves_services(),
            Traffic::Workloads => gateway.serves_workloads(),
        }
    }
}

/// Gateway `name` of `namespace`, if there is one.
fn gateway<'a>(store: &'a Store, namespace: &str, name: &str) -> Option<&'a Gateway> {
    match store.get(&ObjectKey::new(Kind::Gateway, Some(namespace), name)) {
        Some(Object::Gateway(g)) => Some(g),
        _ => None,
    }
}

/// The waypoint Gateways of `namespace` with where each is reached (no
/// address while no pod runs it).
pub fn in_namespace(mesh: &Mesh, store: &Store, namespace: &str) -> Waypoints {
    store
        .of_kind_in(Kind::Gateway, namespace)
        .filter_map(|o| match o {
            Object::Gateway(g) if g.serves_services() || g.serves_workloads() => {
                g.metadata.name.clone()
            }
            _ => None,
        })
        .map(|gateway| {
            let address = address(mesh, store, namespace, &gateway);
            (gateway, address)
        })
        .collect()
}

/// Where the waypoint `gateway` of `namespace` is reached: its first pod by
/// name with an address.
fn address(mesh: &Mesh, store: &Store, namespace: &str, gateway: &str) -> GatewayAddress {
    let pod = store
        .of_kind_in(Kind::Pod, namespace)
        .filter_map(|o| match o {
            Object::Pod(p) => Some(p),
            _ => None,
        })
        .filter(|p| p.labels.get(GATEWAY_NAME_LABEL) == Some(gateway))
        .filter_map(|p| Some((p, p.addresses().first().copied()?)))
        .min_by(|a, b| a.0.name.cmp(&b.0.name));
    match pod {
        Some((pod, ip)) => GatewayAddress {
            workload: key::workload(namespace, &pod.name),
            address: addr::to_bytes(ip),
            hbone_port: u32::from(WAYPOINT_HBONE_PORT),
            identity: Identity::new(&mesh.trust_domain, namespace, pod.service_account())
                .to_string(),
        },
        None => unavailable(),
    }
}

/// A waypoint that claims traffic but cannot take it: ztunnel fails closed.
fn unavailable() -> GatewayAddress {
    GatewayAddress {
        workload: String::new(),
        address: Vec::new(),
        hbone_port: u32::from(WAYPOINT_HBONE_PORT),
        identity: String::new(),
    }
}

/// What an object's labels say about its waypoint.
#[derive(Debug, PartialEq, Eq)]
enum Choice<'a> {
    /// `istio.io/use-waypoint: none`.
    OptOut,
    Named {
        namespace: &'a str,
        name: &'a str,
    },
}

fn choice<'a>(labels: &'a Labels, own_namespace: &'a str) -> Option<Choice<'a>> {
    match labels.get(USE_WAYPOINT_LABEL)? {
        "none" => Some(Choice::OptOut),
        name => Some(Choice::Named {
            namespace: labels
                .get(USE_WAYPOINT_NAMESPACE_LABEL)
                .unwrap_or(own_namespace),
            name,
        }),
    }
}

fn namespace_labels<'a>(store: &'a Store, namespace: &str) -> Option<&'a Labels> {
    match store.get(&ObjectKey::new(Kind::Namespace, None, namespace)) {
        Some(Object::Namespace(ns)) => Some(&ns.labels),
        _ => None,
    }
}

/// The waypoint `svc` (of `namespace`) sends its traffic through, from the
/// namespaces' waypoints as [`in_namespace`] found them.
pub fn of_service(
    store: &Store,
    waypoints: &BTreeMap<String, Waypoints>,
    namespace: &str,
    svc: &Service,
) -> Option<GatewayAddress> {
    let choices = Choices {
        own: &svc.labels,
        namespace_default: true,
    };
    chosen(
        store,
        waypoints,
        namespace,
        &svc.name,
        choices,
        Traffic::Services,
    )
}

/// The waypoint Gateway (`namespace/name`) that serves Service `svc` of
/// `namespace`, whether or not a pod runs it yet; `None` when none does
/// (none chosen, or the one its labels name missing or not admitting it).
/// For a route's status, which has no node's view at hand.
pub fn serving_service(store: &Store, namespace: &str, svc: &Service) -> Option<String> {
    of_service(store, &named_waypoints(store), namespace, svc)
        .map(|address| address.workload)
        .filter(|workload| !workload.is_empty())
}

/// The waypoint (`<namespace>/<gateway>`) a ServiceEntry's hosts go through,
/// as [`serving_service`] tells a Service's.
pub fn serving_entry(store: &Store, namespace: &str, entry: &ServiceEntry) -> Option<String> {
    of_entry(store, &named_waypoints(store), namespace, entry)
        .map(|address| address.workload)
        .filter(|workload| !workload.is_empty())
}

/// Every Gateway that asks for a waypoint, by name, its address naming it
/// alone (whether it runs does not matter to which one traffic is meant for).
fn named_waypoints(store: &Store) -> BTreeMap<String, Waypoints> {
    let mut waypoints: BTreeMap<String, Waypoints> = BTreeMap::new();
    for object in store.of_kind(Kind::Gateway) {
        let Object::Gateway(g) = object else { continue };
        if !(g.serves_services() || g.serves_workloads()) {
            continue;
        }
        let (Some(at), Some(name)) = (&g.metadata.namespace, &g.metadata.name) else {
            continue;
        };
        // Named in the address's workload, which `unavailable` leaves empty.
        let address = GatewayAddress {
            workload: format!("{at}/{name}"),
            ..unavailable()
        };
        waypoints
            .entry(at.clone())
            .or_default()
            .insert(name.clone(), address);
    }
    waypoints
}

/// The waypoint a ServiceEntry's hosts send their traffic through: only one
/// its own or its namespace's `istio.io/use-waypoint` label names (as in
/// Istio: traffic leaving the mesh goes through a waypoint only when asked,
/// never by the namespace's default).
pub fn of_entry(
    store: &Store,
    waypoints: &BTreeMap<String, Waypoints>,
    namespace: &str,
    entry: &ServiceEntry,
) -> Option<GatewayAddress> {
    let labels = Labels::from_map(entry.metadata.labels.as_ref());
    let name = entry.metadata.name.as_deref().unwrap_or_default();
    let choices = Choices {
        own: &labels,
        namespace_default: false,
    };
    chosen(
        store,
        waypoints,
        namespace,
        name,
        choices,
        Traffic::Services,
    )
}

/// The waypoint traffic addressed to `pod` itself goes through (see the
/// module's notes): only one its own or its namespace's label names, as in
/// Istio, so that a Gateway applied for pods reroutes nothing (and refuses
/// nothing while it starts) until they are labelled.
pub fn of_pod(
    store: &Store,
    waypoints: &BTreeMap<String, Waypoints>,
    pod: &Pod,
) -> Option<GatewayAddress> {
    of_workload(store, waypoints, &pod.namespace, &pod.name, &pod.labels)
}

/// The waypoint of a workload `name` of `namespace` with `labels` (a pod
/// or a WorkloadEntry), as [`of_pod`].
pub fn of_workload(
    store: &Store,
    waypoints: &BTreeMap<String, Waypoints>,
    namespace: &str,
    name: &str,
    labels: &Labels,
) -> Option<GatewayAddress> {
    let choices = Choices {
        own: labels,
        namespace_default: false,
    };
    chosen(
        store,
        waypoints,
        namespace,
        name,
        choices,
        Traffic::Workloads,
    )
}

/// Where an object looks for its waypoint besides its namespace's label.
#[derive(Clone, Copy)]
struct Choices<'a> {
    /// Its own labels.
    own: &'a Labels,
    /// Whether, named nowhere, it takes its namespace's first waypoint.
    namespace_default: bool,
}

/// The waypoint an object of `namespace` chooses for `traffic`: by its own
/// label, its namespace's, else (with `namespace_default`) the namespace's
/// first waypoint for that traffic.
fn chosen(
    store: &Store,
    waypoints: &BTreeMap<String, Waypoints>,
    namespace: &str,
    name: &str,
    choices: Choices<'_>,
    traffic: Traffic,
) -> Option<GatewayAddress> {
    let empty = Labels::default();
    let ns_labels = namespace_labels(store, namespace).unwrap_or(&empty);
    let chosen = choice(choices.own, namespace).or_else(|| choice(ns_labels, namespace));
    match chosen {
        Some(Choice::OptOut) => None,
        None if choices.namespace_default => waypoints
            .get(namespace)?
            .iter()
            .find(|(name, _)| gateway(store, namespace, name).is_some_and(|g| traffic.taken_by(g)))
            .map(|(_, address)| address.clone()),
        None => None,
        Some(Choice::Named {
            namespace: at,
            name: named,
        }) => {
            let found = gateway(store, at, named);
            // A waypoint that does not take this kind of traffic (one for
            // Services named for a pod, as a namespace's label names one
            // waypoint for both) leaves it direct, as Istio does; one
            // missing, or unable to serve, still claims it.
            if found.is_some_and(|g| g.is_waypoint() && !traffic.taken_by(g)) {
                return None;
            }
            let admitted =
                found.is_some_and(|g| traffic.taken_by(g) && g.admits(namespace, ns_labels));
            let address = waypoints.get(at).and_then(|w| w.get(named));
            Some(match address {
                Some(address) if admitted => address.clone(),
                _ => {
                    tracing::debug!(
                        object = %format!("{namespace}/{name}"),
                        ?traffic,
                        waypoint = %format!("{at}/{named}"),
                        admitted,
                        "the named waypoint cannot take this traffic: it is refused"
                    );
                    unavailable()
                }
            })
        }
    }
}

/// Namespaces other than `namespace` with ServiceEntries that may name a
/// waypoint in it (by their own or their namespace's
/// `istio.io/use-waypoint-namespace`).
pub fn entry_namespaces_naming(store: &Store, namespace: &str) -> Vec<String> {
    let names_it = |labels: Option<&BTreeMap<String, String>>| {
        labels
            .and_then(|l| l.get(USE_WAYPOINT_NAMESPACE_LABEL))
            .map(String::as_str)
            == Some(namespace)
    };
    let mut found: Vec<String> = store
        .of_kind(Kind::ServiceEntry)
        .filter_map(|o| match o {
            Object::ServiceEntry(entry) => Some(entry),
            _ => None,
        })
        .filter_map(|entry| {
            let ns = entry.metadata.namespace.as_deref()?;
            let by_namespace = namespace_labels(store, ns)
                .is_some_and(|l| l.get(USE_WAYPOINT_NAMESPACE_LABEL) == Some(namespace));
            (ns != namespace && (names_it(entry.metadata.labels.as_ref()) || by_namespace))
                .then(|| ns.to_owned())
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

/// Workloads (pods, WorkloadEntries) outside `namespace` that may name a
/// waypoint in it (by their own or their namespace's
/// `istio.io/use-waypoint-namespace`): recomputed when that namespace's
/// waypoints change.
pub fn workloads_naming(store: &Store, namespace: &str) -> Vec<ObjectKey> {
    let pods = store.of_kind(Kind::Pod).filter_map(|o| match o {
        Object::Pod(pod) => Some((o, pod.namespace.as_ref(), pod.labels.clone())),
        _ => None,
    });
    let entries = store.of_kind(Kind::WorkloadEntry).filter_map(|o| match o {
        Object::WorkloadEntry(entry) => Some((o, o.namespace()?, entry.labels())),
        _ => None,
    });
    pods.chain(entries)
        .filter(|(_, own, labels)| names_namespace(store, namespace, own, labels))
        .map(|(o, _, _)| o.key())
        .collect()
}

/// Whether an object of `own` namespace with `labels` may name a waypoint in
/// `namespace`, another one: by its own or its namespace's
/// `istio.io/use-waypoint-namespace`.
fn names_namespace(store: &Store, namespace: &str, own: &str, labels: &Labels) -> bool {
    let names_it = |labels: &Labels| labels.get(USE_WAYPOINT_NAMESPACE_LABEL) == Some(namespace);
    own != namespace && (names_it(labels) || namespace_labels(store, own).is_some_and(names_it))
}

/// Services outside `namespace` that name a waypoint in it (by their own or
/// their namespace's `istio.io/use-waypoint-namespace`): recomputed when
/// that namespace's waypoints change.
pub fn services_naming(store: &Store, namespace: &str) -> Vec<(String, String)> {
    store
        .of_kind(Kind::Service)
        .filter_map(|o| match o {
            Object::Service(svc) => Some(svc),
            _ => None,
        })
        .filter(|svc| names_namespace(store, namespace, &svc.namespace, &svc.labels))
        .map(|svc| (svc.namespace.to_string(), svc.name.to_string()))
        .collect()
}
