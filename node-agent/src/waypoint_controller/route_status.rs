//! Route and policy status: every Gateway API route attached to a Service
//! is told, in
//! its `status.parents`, whether Warren took it (`Accepted`) and whether its
//! backends resolve (`ResolvedRefs`), as a Gateway API controller reports
//! to `kubectl get httproute -o yaml`. A refused route says why, with the
//! same errors the node agents log; one naming another namespace's Service
//! without a ReferenceGrant says so.
//!
//! The controller keeps its own [`Store`] of what a status depends on (the
//! routes, Services and ReferenceGrants), fed by the same [`KubeSource`] as
//! the node agents', and after each batch of changes works out every
//! route's status ([`parents`]). It writes only what differs from what the
//! route shows ([`merged`]): a JSON merge patch of `status.parents` with the
//! route's `resourceVersion`, so other controllers' entries are kept and a
//! write racing another fails, to be redone from the version the watch
//! brings next. BackendTLSPolicies are told likewise, in `status.ancestors`
//! ([`policy_status`]).

use std::collections::HashMap;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::ObjectMeta, jiff::Timestamp};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{
    model::{
        Kind, Object, ObjectKey,
        http_route::{
            BackendReference, ParentKind, ParentReference, RouteStatus, is_service_entry_parent,
            is_service_parent, parent_kind, rule_backends,
        },
        l4_route::{BackendRef, L4RouteRule},
        reference_grant::Grants,
    },
    source::kube::{KubeSource, api_resource, resource_of},
    store::{Applied, Store},
    view::{grants_in_force, section_port, serving_entry, serving_service},
};

use super::policy_status;

/// Who writes these entries (a Gateway API controller name: a domain,
/// then a path).
pub const CONTROLLER_NAME: &str = "warren.io/waypoint-controller";

/// How often writes that failed are tried again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// The kinds a route's or a policy's status depends on (and ConfigMaps of
/// the namespaces given, [`Settings::bundle_namespaces`]).
const WATCHED: [Kind; 11] = [
    Kind::Namespace,
    Kind::Service,
    Kind::ServiceEntry,
    Kind::Gateway,
    Kind::ReferenceGrant,
    Kind::HttpRoute,
    Kind::GrpcRoute,
    Kind::TcpRoute,
    Kind::TlsRoute,
    Kind::BackendTlsPolicy,
    // A VirtualService may take a Service's host ahead of its routes.
    Kind::VirtualService,
];

/// What this controller writes the status of.
const WRITTEN: [Kind; 5] = [
    Kind::HttpRoute,
    Kind::GrpcRoute,
    Kind::TcpRoute,
    Kind::TlsRoute,
    Kind::BackendTlsPolicy,
];

/// Where the status of an object of `kind` lists its entries, and the
/// field naming each entry's object: a route's parents, a policy's
/// ancestors.
fn status_list(kind: Kind) -> (&'static str, &'static str) {
    match kind {
        Kind::BackendTlsPolicy => ("ancestors", "ancestorRef"),
        _ => ("parents", "parentRef"),
    }
}

/// What the writer needs besides the API server.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// The cluster's DNS domain, as the node agents have it.
    pub cluster_domain: String,
    /// The namespaces whose ConfigMaps the node agents read CA bundles from
    /// (their `--secret-namespace`): a policy's reference elsewhere does not
    /// resolve for them, nor here.
    pub bundle_namespaces: Vec<String>,
}

/// What the writer needs of RBAC, as it names resources: (API group,
/// resource).
pub struct Access {
    /// To get, list and watch.
    pub read: Vec<(&'static str, &'static str)>,
    /// The routes' and policies' `<resource>/status`, to get and patch.
    pub status: Vec<(&'static str, String)>,
}

pub fn needed_access() -> Access {
    Access {
        read: WATCHED.iter().filter_map(|&k| resource_of(k)).collect(),
        status: WRITTEN
            .iter()
            .filter_map(|&k| resource_of(k))
            .map(|(group, plural)| (group, format!("{plural}/status")))
            .collect(),
    }
}

/// One condition of a parent's status, without its transition time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub kind: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Condition {
    pub(super) fn accepted(message: String) -> Condition {
        Condition {
            kind: "Accepted",
            status: true,
            reason: "Accepted",
            message,
        }
    }

    pub(super) fn not_accepted(reason: &'static str, message: String) -> Condition {
        Condition {
            kind: "Accepted",
            status: false,
            reason,
            message,
        }
    }
}

/// What a route says about one of its Service parents (or a policy about
/// one of its ancestors).
#[derive(Clone, Debug, PartialEq)]
pub struct Parent {
    pub parent_ref: ParentReference,
    pub conditions: Vec<Condition>,
}

/// What a route's status is worked out from.
struct Route<'a> {
    kind: &'static str,
    meta: &'a ObjectMeta,
    parent_refs: &'a [ParentReference],
    backends: Vec<BackendReference>,
    /// What its `status.parents` shows now.
    observed: &'a [Value],
}

fn route_of(object: &Object) -> Option<Route<'_>> {
    let l4 = |rules: &[L4RouteRule]| -> Vec<BackendReference> {
        rules
            .iter()
            .flat_map(|rule| rule.backend_refs.iter().map(BackendRef::reference))
            .collect()
    };
    Some(match object {
        Object::HttpRoute(r) => Route {
            kind: "HTTPRoute",
            meta: &r.metadata,
            parent_refs: &r.spec.parent_refs,
            observed: observed(r.status.as_ref()),
            backends: (r.spec.rules.iter())
                .flat_map(|rule| rule_backends(&rule.backend_refs, &rule.filters))
                .collect(),
        },
        Object::GrpcRoute(r) => Route {
            kind: "GRPCRoute",
            meta: &r.metadata,
            parent_refs: &r.spec.parent_refs,
            observed: observed(r.status.as_ref()),
            backends: (r.spec.rules.iter())
                .flat_map(|rule| rule_backends(&rule.backend_refs, &rule.filters))
                .collect(),
        },
        Object::TcpRoute(r) => Route {
            kind: "TCPRoute",
            meta: &r.metadata,
            parent_refs: &r.spec.parent_refs,
            observed: observed(r.status.as_ref()),
            backends: l4(&r.spec.rules),
        },
        Object::TlsRoute(r) => Route {
            kind: "TLSRoute",
            meta: &r.metadata,
            parent_refs: &r.spec.parent_refs,
            observed: observed(r.status.as_ref()),
            backends: l4(&r.spec.rules),
        },
        _ => return None,
    })
}

/// What a route's `status.parents` shows.
fn observed(status: Option<&RouteStatus>) -> &[Value] {
    status.map_or(&[], |s| &s.parents)
}

fn service_exists(store: &Store, namespace: &str, name: &str) -> bool {
    store
        .get(&ObjectKey::new(Kind::Service, Some(namespace), name))
        .is_some()
}

/// The status a route in force should show for each of its Service
/// parents.
fn parents(store: &Store, grants: &Grants, route: &Route<'_>, cluster_domain: &str) -> Vec<Parent> {
    let namespace = route.meta.namespace.as_deref().unwrap_or("default");
    let resolved = resolved_refs(store, grants, route, namespace);
    let entries = route
        .parent_refs
        .iter()
        .filter(|p| is_service_entry_parent(p))
        .map(|parent| {
            let grpc = (route.kind == "HTTPRoute")
                .then(|| {
                    grpc_route_naming(store, namespace, ParentKind::ServiceEntry, &parent.name)
                })
                .flatten();
            let accepted = match grpc {
                Some(grpc) => conflicted(namespace, ParentKind::ServiceEntry, &parent.name, &grpc),
                None => entry_accepted(store, namespace, parent),
            };
            Parent {
                parent_ref: parent.clone(),
                conditions: vec![accepted, resolved.clone()],
            }
        });
    route
        .parent_refs
        .iter()
        .filter(|p| is_service_parent(p))
        .map(|parent| {
            let service = match store.get(&ObjectKey::new(Kind::Service, Some(namespace), &parent.name)) {
                Some(Object::Service(service)) => Some(service),
                _ => None,
            };
            // The port (by number, or by name with `sectionName`) that the
            // parent narrows the route to, when the Service has none such.
            let missing = |service: &crate::model::cluster::Service| -> Option<String> {
                let fits = |p: &crate::model::cluster::ServicePort| {
                    parent.port.is_none_or(|port| p.port == port)
                        && parent
                            .section_name
                            .as_deref()
                            .is_none_or(|name| p.name.as_deref() == Some(name))
                };
                let narrowed = parent.port.is_some() || parent.section_name.is_some();
                (narrowed && !service.ports.iter().any(fits)).then(|| {
                    match (&parent.section_name, parent.port) {
                        (Some(name), Some(port)) => format!("no port {port} named {name:?}"),
                        (Some(name), None) => format!("no port named {name:?}"),
                        (None, port) => format!("no port {}", port.unwrap_or_default()),
                    }
                })
            };
            let accepted = if let Some(why) = service.and_then(|s| missing(s)) {
                Condition::not_accepted("NoMatchingParent", format!("Service {namespace}/{} has {why}", parent.name))
            } else if let Some(grpc) = (route.kind == "HTTPRoute")
                .then(|| grpc_route_naming(store, namespace, ParentKind::Service, &parent.name))
                .flatten()
            {
                conflicted(namespace, ParentKind::Service, &parent.name, &grpc)
            } else if let Some(service) = service {
                // Attached either way; whether it routes anything yet is
                // the waypoint's, and an older VirtualService may take its
                // host there first.
                let waypoint = serving_service(store, namespace, service);
                let shadowed = match (&waypoint, route.kind) {
                    (Some(waypoint), "HTTPRoute" | "GRPCRoute") => {
                        shadowed_by(store, namespace, &parent.name, waypoint, cluster_domain)
                    }
                    _ => None,
                };
                match (shadowed, waypoint) {
                    (Some(vs), _) => Condition::not_accepted(
                        "Conflicted",
                        format!(
                            "not in force: VirtualService {vs}, older, routes the host of Service {namespace}/{} at its waypoint first (as Istio, the oldest VirtualService of a host wins); delete it, or move its rules into routes",
                            parent.name
                        ),
                    ),
                    (None, Some(waypoint)) => Condition::accepted(format!(
                        "routes Service {namespace}/{} at its waypoint {waypoint}",
                        parent.name
                    )),
                    (None, None) => Condition::accepted(format!(
                        "attached to Service {namespace}/{}, which no waypoint serves yet: it routes nothing until one does",
                        parent.name
                    )),
                }
            } else {
                Condition::not_accepted("NoMatchingParent", format!("no Service {namespace}/{}", parent.name))
            };
            Parent {
                parent_ref: parent.clone(),
                conditions: vec![accepted, resolved.clone()],
            }
        })
        .chain(entries)
        .collect()
}

/// `Accepted` for a ServiceEntry parent (Istio's routes for egress): the
/// entry (and the port the parentRef names) exists; the message says
/// whether a waypoint serves its hosts, which it must for them to be
/// routed.
fn entry_accepted(store: &Store, namespace: &str, parent: &ParentReference) -> Condition {
    let key = ObjectKey::new(Kind::ServiceEntry, Some(namespace), &parent.name);
    let Some(Object::ServiceEntry(entry)) = store.get(&key) else {
        return Condition::not_accepted(
            "NoMatchingParent",
            format!("no ServiceEntry {namespace}/{}", parent.name),
        );
    };
    let fits = |p: &crate::model::istio::ServicePort| {
        parent
            .port
            .is_none_or(|port| i64::from(p.number) == i64::from(port))
            && parent
                .section_name
                .as_deref()
                .is_none_or(|name| p.name == name)
    };
    if (parent.port.is_some() || parent.section_name.is_some())
        && !entry.spec.ports.iter().any(fits)
    {
        return Condition::not_accepted(
            "NoMatchingParent",
            format!("ServiceEntry {namespace}/{} has no such port", parent.name),
        );
    }
    let hosts = entry.spec.hosts.join(", ");
    let message = match serving_entry(store, namespace, entry) {
        Some(waypoint) => format!(
            "routes the hosts of ServiceEntry {namespace}/{} ({hosts}) at its waypoint {waypoint}",
            parent.name
        ),
        None => format!(
            "attached to ServiceEntry {namespace}/{} ({hosts}), which no waypoint serves: it routes nothing until one does (label it istio.io/use-waypoint)",
            parent.name
        ),
    };
    Condition::accepted(message)
}

/// A VirtualService that takes the Service's host ahead of its Gateway API
/// routes at the waypoint that serves it, as the waypoint ranks them: those
/// of the Service's namespace and of the waypoint's, visible to the
/// waypoint's, claiming the host exactly (an exact claim wins over any
/// wildcard), with `http` rules, for the mesh; the oldest first, then by
/// namespace and name. The routes make one of their own, as old as the
/// oldest of them (GRPCRoutes where any attach, else HTTPRoutes), named
/// `<service>-routes`. `namespace/name` of the one ahead, if any.
fn shadowed_by(
    store: &Store,
    namespace: &str,
    name: &str,
    waypoint: &str,
    cluster_domain: &str,
) -> Option<String> {
    let waypoint_namespace = waypoint.split_once('/').map_or(namespace, |(ns, _)| ns);
    let created = |meta: &ObjectMeta| {
        meta.creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second())
    };
    let oldest = |kind: Kind| {
        store
            .of_kind_in(kind, namespace)
            .filter(|o| {
                o.route_parents()
                    .unwrap_or_default()
                    .iter()
                    .any(|p| parent_kind(p) == Some(ParentKind::Service) && p.name == name)
            })
            .filter_map(|o| match o {
                Object::HttpRoute(r) => Some(created(&r.metadata)),
                Object::GrpcRoute(r) => Some(created(&r.metadata)),
                _ => None,
            })
            .min()
    };
    let routes_created = oldest(Kind::GrpcRoute).or_else(|| oldest(Kind::HttpRoute))?;
    let routes = (
        routes_created,
        namespace.to_owned(),
        format!("{name}-routes"),
    );
    let host = format!("{name}.{namespace}.svc.{cluster_domain}");
    let entry_hosts = crate::view::routing::entry_hosts(store);
    let mut namespaces = vec![namespace];
    if waypoint_namespace != namespace {
        namespaces.push(waypoint_namespace);
    }
    namespaces
        .into_iter()
        .flat_map(|ns| store.of_kind_in(Kind::VirtualService, ns))
        .filter_map(|o| match o {
            Object::VirtualService(vs) => Some(vs),
            _ => None,
        })
        .filter_map(|vs| {
            let own = vs.metadata.namespace.as_deref().unwrap_or("default");
            let spec = &vs.spec;
            let for_mesh = spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == "mesh");
            let visible = spec.export_to.is_empty()
                || spec.export_to.iter().any(|e| {
                    e == "*" || e == waypoint_namespace || (e == "." && own == waypoint_namespace)
                });
            let claims = spec.hosts.iter().any(|written| {
                let qualified =
                    crate::view::routing::qualify_in(cluster_domain, own, written, &entry_hosts);
                qualified.trim_end_matches('.').eq_ignore_ascii_case(&host)
            });
            (for_mesh && visible && claims && !spec.http.is_empty()).then(|| {
                let name = vs.metadata.name.clone().unwrap_or_default();
                (created(&vs.metadata), own.to_owned(), name)
            })
        })
        .filter(|vs| *vs < routes)
        .min()
        .map(|(_, ns, name)| format!("{ns}/{name}"))
}

/// GEP-1426: where both attach, GRPCRoutes win and the HTTPRoutes are not
/// in force (the view leaves them out).
fn conflicted(namespace: &str, kind: ParentKind, name: &str, grpc: &str) -> Condition {
    let kind = kind.name();
    Condition::not_accepted(
        "Conflicted",
        format!(
            "not in force: GRPCRoute {namespace}/{grpc} also attaches to {kind} {namespace}/{name}, and GRPCRoutes take precedence over HTTPRoutes"
        ),
    )
}

/// A GRPCRoute of `namespace` attached to its Service (or ServiceEntry)
/// `name`, as the view counts them: its `sectionName`, if any, resolved
/// from the parent's ports.
fn grpc_route_naming(
    store: &Store,
    namespace: &str,
    kind: ParentKind,
    name: &str,
) -> Option<String> {
    store
        .of_kind_in(Kind::GrpcRoute, namespace)
        .find(|o| {
            o.route_parents().unwrap_or_default().iter().any(|p| {
                parent_kind(p) == Some(kind)
                    && p.name == name
                    // As the view resolves it: a name the parent has, of the
                    // port also given, if any.
                    && p.section_name.as_deref().is_none_or(|section| {
                        section_port(store, namespace, kind, name, section)
                            .is_some_and(|port| p.port.is_none_or(|given| given == i32::from(port)))
                    })
            })
        })
        .map(|o| o.name().to_owned())
}

/// Whether every backend of a route resolves: a Service that exists, in
/// the route's namespace or one whose ReferenceGrant lets it in.
fn resolved_refs(store: &Store, grants: &Grants, route: &Route<'_>, namespace: &str) -> Condition {
    let mut not_permitted = Vec::new();
    let mut not_found = Vec::new();
    for backend in &route.backends {
        // A ServiceEntry host is in no namespace: nothing to grant.
        let Some((to, service)) = backend.service(namespace) else {
            continue;
        };
        let name = format!("{to}/{service}");
        if !grants.permits_service(route.kind, namespace, &to, &service) {
            not_permitted.push(name);
        } else if !service_exists(store, &to, &service) {
            not_found.push(name);
        }
    }
    not_permitted.dedup();
    not_found.dedup();
    if !not_permitted.is_empty() {
        Condition {
            kind: "ResolvedRefs",
            status: false,
            reason: "RefNotPermitted",
            message: format!(
                "no ReferenceGrant lets {}s of {namespace} send to {}: nothing is sent there",
                route.kind,
                not_permitted.join(", ")
            ),
        }
    } else if !not_found.is_empty() {
        Condition {
            kind: "ResolvedRefs",
            status: false,
            reason: "BackendNotFound",
            message: format!("no Service {}", not_found.join(", ")),
        }
    } else {
        Condition {
            kind: "ResolvedRefs",
            status: true,
            reason: "ResolvedRefs",
            message: "every backend resolves".into(),
        }
    }
}

/// The status of a refused route, read from its raw object: each Service
/// parent not accepted, with why.
fn refused_parents(object: &Value, why: &str) -> Vec<Parent> {
    let parent_refs: Vec<ParentReference> = object
        .pointer("/spec/parentRefs")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .filter_map(|p| serde_json::from_value(p.clone()).ok())
        .collect();
    // Every parent meant to be a Service (or ServiceEntry), its group
    // written or not: a missing `group: ""` is the commonest reason for the
    // refusal.
    parent_refs
        .into_iter()
        .filter(|p| matches!(p.kind.as_deref(), Some("Service" | "ServiceEntry")))
        .map(|parent_ref| Parent {
            parent_ref,
            conditions: vec![Condition::not_accepted(
                "UnsupportedValue",
                format!("refused, its last good version (if any) stays in force: {why}"),
            )],
        })
        .collect()
}

/// Whether a `status.parents` (or `ancestors`) entry is this controller's.
fn is_ours(entry: &Value) -> bool {
    entry["controllerName"] == CONTROLLER_NAME
}

/// `observed` (a route's `status.parents`, a policy's `status.ancestors`:
/// entries whose object is named by `field`) with this controller's entries
/// replaced by `ours` at `generation`; `None` when that changes nothing.
/// A condition keeps its transition time while its status stays.
fn merged(
    observed: &[Value],
    field: &str,
    ours: &[Parent],
    generation: i64,
    now: &str,
) -> Option<Vec<Value>> {
    let previous: Vec<&Value> = observed.iter().filter(|e| is_ours(e)).collect();
    let entries: Vec<Value> = ours
        .iter()
        .map(|parent| {
            let parent_ref = serde_json::to_value(&parent.parent_ref).unwrap_or(Value::Null);
            let before = previous.iter().find(|e| e[field] == parent_ref);
            let conditions: Vec<Value> = parent
                .conditions
                .iter()
                .map(|c| {
                    let status = if c.status { "True" } else { "False" };
                    let since = before
                        .and_then(|e| e["conditions"].as_array())
                        .into_iter()
                        .flatten()
                        .find(|old| old["type"] == c.kind && old["status"] == status)
                        .and_then(|old| old["lastTransitionTime"].as_str())
                        .unwrap_or(now);
                    json!({
                        "type": c.kind,
                        "status": status,
                        "reason": c.reason,
                        "message": c.message,
                        "observedGeneration": generation,
                        "lastTransitionTime": since,
                    })
                })
                .collect();
            json!({
                field: parent_ref,
                "controllerName": CONTROLLER_NAME,
                "conditions": conditions,
            })
        })
        .collect();
    let unchanged =
        entries.len() == previous.len() && entries.iter().all(|e| previous.contains(&e));
    if unchanged {
        return None;
    }
    let mut all: Vec<Value> = observed.iter().filter(|e| !is_ours(e)).cloned().collect();
    all.extend(entries);
    Some(all)
}

/// The statuses to write: (route or policy, its resourceVersion, the whole
/// new `status.parents` or `status.ancestors`), for every one in force in
/// `store` that is not refused.
fn to_write(
    store: &Store,
    now: &str,
    cluster_domain: &str,
) -> Vec<(ObjectKey, Option<String>, Vec<Value>)> {
    let grants = grants_in_force(store);
    let refused: Vec<&ObjectKey> = store.refusals().filter_map(|(key, _)| key).collect();
    let mut out = Vec::new();
    for kind in Kind::GATEWAY_ROUTES {
        for object in store.of_kind(kind) {
            let key = object.key();
            // Its last good version is in the store; the refused one
            // speaks for it ([`refused_parents`]).
            if refused.contains(&&key) {
                continue;
            }
            let Some(route) = route_of(object) else {
                continue;
            };
            let ours = parents(store, &grants, &route, cluster_domain);
            // No Service parent now: still our entries to take away.
            if ours.is_empty() && !route.observed.iter().any(is_ours) {
                continue;
            }
            let generation = route.meta.generation.unwrap_or_default();
            if let Some(parents) = merged(route.observed, "parentRef", &ours, generation, now) {
                out.push((key, route.meta.resource_version.clone(), parents));
            }
        }
    }
    // What each namespace's policies hold, worked out once for all of them.
    let mut held: std::collections::BTreeMap<String, policy_status::Held> = Default::default();
    for object in store.of_kind(Kind::BackendTlsPolicy) {
        let Object::BackendTlsPolicy(policy) = object else {
            continue;
        };
        let key = object.key();
        if refused.contains(&&key) {
            continue;
        }
        let namespace = key.namespace.as_deref().unwrap_or_default();
        let held = held
            .entry(namespace.to_owned())
            .or_insert_with(|| policy_status::held(store, namespace, cluster_domain));
        let ours = policy_status::ancestors(store, held, policy);
        let observed = policy.status.as_ref().map_or(&[][..], |s| &s.ancestors);
        if ours.is_empty() && !observed.iter().any(is_ours) {
            continue;
        }
        let generation = policy.metadata.generation.unwrap_or_default();
        if let Some(ancestors) = merged(observed, "ancestorRef", &ours, generation, now) {
            out.push((key, policy.metadata.resource_version.clone(), ancestors));
        }
    }
    out
}

/// Writes route and policy statuses until the source ends.
pub async fn run(client: Client, settings: Settings) {
    let (tx, mut events) = mpsc::channel(1024);
    // A ClusterRole from before BackendTLSPolicy status (an upgrade in
    // progress) leaves the policies without status, the routes' written; a
    // cluster without Istio's VirtualServices (or leave to read them) has
    // routes no VirtualService shadows.
    let source = KubeSource::with_kinds(client.clone(), WATCHED.to_vec())
        .with_bundle_namespaces(settings.bundle_namespaces.clone())
        .with_optional_kinds(&[Kind::BackendTlsPolicy, Kind::VirtualService]);
    tokio::spawn(async move {
        if let Err(err) = source.run(tx).await {
            warn!(error = %err, "route status: watching the API server");
        }
    });
    let mut store = Store::default();
    let mut resources: HashMap<Kind, ApiResource> = HashMap::new();
    // Writes that failed, by route, with the version and the status they
    // were: not tried again as they were (a 403 or a 422 would fail the same
    // way on every batch) but on the next retry tick, or when either
    // changes.
    let mut failed: HashMap<ObjectKey, (Option<String>, Vec<Value>)> = HashMap::new();
    // Refused routes to read and write: each version the source refuses
    // (every refused route at the first sync), and those whose reading or
    // writing failed, again at the next retry tick.
    let mut refused_changed: Vec<ObjectKey> = Vec::new();
    let mut refused_retry: Vec<ObjectKey> = Vec::new();
    let mut synced_once = false;
    let mut retry = tokio::time::interval_at(tokio::time::Instant::now() + RETRY, RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!("route status writer starting");
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => batch.push(event),
                None => break,
            },
            _ = retry.tick(), if !failed.is_empty() || !refused_retry.is_empty() => {
                failed.clear();
                refused_changed.append(&mut refused_retry);
            }
        }
        while let Ok(event) = events.try_recv() {
            batch.push(event);
        }
        for event in batch {
            if let Applied::Refused(key) = store.apply(event)
                && WRITTEN.contains(&key.kind)
            {
                refused_changed.push(key);
            }
        }
        if !store.synced() {
            continue;
        }
        if !synced_once {
            synced_once = true;
            refused_changed.extend(
                store
                    .refusals()
                    .filter_map(|(key, _)| key.cloned())
                    .filter(|key| WRITTEN.contains(&key.kind)),
            );
        }
        let now = Timestamp::now().to_string();
        // A route gone needs no retry.
        failed.retain(|key, _| store.get(key).is_some());
        for (key, resource_version, parents) in to_write(&store, &now, &settings.cluster_domain) {
            // What was tried, its times aside (they are new every batch).
            let attempt = (resource_version.clone(), without_times(&parents));
            if failed.get(&key) == Some(&attempt) {
                continue;
            }
            let Some(api) = api_of(&client, &mut resources, &key).await else {
                failed.insert(key, attempt);
                continue;
            };
            if write(&api, &key, resource_version, parents).await {
                failed.remove(&key);
            } else {
                failed.insert(key, attempt);
            }
        }
        refused_changed.sort();
        refused_changed.dedup();
        for key in std::mem::take(&mut refused_changed) {
            // Still refused (not fixed or deleted since)?
            let Some(why) = store
                .refusals()
                .find(|(k, _)| *k == Some(&key))
                .map(|(_, error)| error.to_string())
            else {
                continue;
            };
            let Some(api) = api_of(&client, &mut resources, &key).await else {
                refused_retry.push(key);
                continue;
            };
            // The refused version itself: the store has only its last good
            // one, if any.
            let object = match api.get_status(&key.name).await {
                Ok(object) => object,
                Err(kube::Error::Api(status)) if status.code == 404 => continue,
                Err(err) => {
                    debug!(route = %key, error = %err, "route status: reading a refused route");
                    refused_retry.push(key);
                    continue;
                }
            };
            let raw = serde_json::to_value(&object).unwrap_or(Value::Null);
            let (list, field) = status_list(key.kind);
            let observed: Vec<Value> = raw
                .pointer(&format!("/status/{list}"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let ours = match key.kind {
                Kind::BackendTlsPolicy => policy_status::refused_ancestors(&raw, &why),
                _ => refused_parents(&raw, &why),
            };
            let generation = object.metadata.generation.unwrap_or_default();
            if let Some(parents) = merged(&observed, field, &ours, generation, &now) {
                let version = object.metadata.resource_version.clone();
                if !write(&api, &key, version, parents).await {
                    refused_retry.push(key);
                }
            }
        }
    }
    info!("route status writer stopped");
}

/// `parents` without their conditions' transition times.
fn without_times(parents: &[Value]) -> Vec<Value> {
    let mut parents = parents.to_vec();
    for parent in &mut parents {
        if let Some(conditions) = parent["conditions"].as_array_mut() {
            for condition in conditions {
                if let Some(c) = condition.as_object_mut() {
                    c.remove("lastTransitionTime");
                }
            }
        }
    }
    parents
}

/// The API of `key`'s kind in its namespace, at the version served.
async fn api_of(
    client: &Client,
    resources: &mut HashMap<Kind, ApiResource>,
    key: &ObjectKey,
) -> Option<Api<DynamicObject>> {
    let resource = match resources.get(&key.kind) {
        Some(resource) => resource.clone(),
        None => {
            let (resource, discovered) = api_resource(client, key.kind).await?;
            // A fallback is asked about again next time.
            if discovered {
                resources.insert(key.kind, resource.clone());
            }
            resource
        }
    };
    let namespace = key.namespace.as_deref()?;
    Some(Api::namespaced_with(client.clone(), namespace, &resource))
}

/// Whether the write was done (or found nothing to do against a newer
/// version).
async fn write(
    api: &Api<DynamicObject>,
    key: &ObjectKey,
    resource_version: Option<String>,
    parents: Vec<Value>,
) -> bool {
    let Some(resource_version) = resource_version else {
        // Without one the write could not be conditional.
        debug!(route = %key, "route status: no resourceVersion, not written");
        return false;
    };
    // The resourceVersion makes the write fail rather than drop what
    // another controller wrote meanwhile.
    let (list, _) = status_list(key.kind);
    let patch = json!({
        "metadata": { "resourceVersion": resource_version },
        "status": { list: parents },
    });
    match api
        .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            debug!(route = %key, "route status written");
            true
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            debug!(route = %key, "route status: changed meanwhile, written again from its next version");
            true
        }
        Err(err) => {
            warn!(route = %key, error = %err, "route status: writing");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = r#"
apiVersion: v1
kind: Service
metadata: { name: app, namespace: shop }
spec: { ports: [{ name: http, port: 80 }] }
---
apiVersion: v1
kind: Service
metadata: { name: app-v1, namespace: shop }
spec: { ports: [{ name: http, port: 80 }] }
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: r, namespace: shop, generation: 3, resourceVersion: "41" }
spec:
  parentRefs:
  - { group: "", kind: Service, name: app }
  - { group: "", kind: Service, name: gone }
  - { name: public }
  rules:
  - backendRefs:
    - { name: app-v1, port: 80 }
    - { name: ratings, namespace: data, port: 80 }
"#;

    /// The first status written for an object of `kind`.
    fn status_of(
        writes: &[(ObjectKey, Option<String>, Vec<Value>)],
        kind: Kind,
    ) -> &(ObjectKey, Option<String>, Vec<Value>) {
        writes
            .iter()
            .find(|(key, _, _)| key.kind == kind)
            .unwrap_or_else(|| panic!("no status written for a {}", kind.name()))
    }

    fn conditions(parent: &Value) -> Vec<(String, String, String)> {
        parent["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["type"].as_str().unwrap_or_default().to_owned(),
                    c["status"].as_str().unwrap_or_default().to_owned(),
                    c["reason"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn a_route_is_told_what_was_taken_and_what_does_not_resolve() {
        let store = Store::from_yaml(ROUTE);
        let writes = to_write(&store, "2026-12-06T00:00:00Z", "cluster.local");
        assert_eq!(writes.len(), 1);
        let (key, resource_version, parents) = &writes[0];
        assert_eq!(key.name.as_ref(), "r");
        assert_eq!(resource_version.as_deref(), Some("41"));
        // The Service parents only: the Gateway is another controller's.
        assert_eq!(parents.len(), 2, "{parents:#?}");
        assert_eq!(parents[0]["parentRef"]["name"], "app");
        assert_eq!(parents[0]["controllerName"], CONTROLLER_NAME);
        assert_eq!(
            conditions(&parents[0]),
            [
                ("Accepted".into(), "True".into(), "Accepted".into()),
                (
                    "ResolvedRefs".into(),
                    "False".into(),
                    "RefNotPermitted".into()
                ),
            ]
        );
        assert_eq!(parents[0]["conditions"][0]["observedGeneration"], 3);
        let message = parents[0]["conditions"][1]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(message.contains("data/ratings"), "{message}");
        assert_eq!(
            conditions(&parents[1])[0],
            ("Accepted".into(), "False".into(), "NoMatchingParent".into())
        );

        // With a grant the other namespace's Service is let in, but it does
        // not exist.
        let granted = format!(
            "{ROUTE}---\n{}",
            r#"
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: { name: g, namespace: data }
spec:
  from: [{ group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop }]
  to: [{ group: "", kind: Service }]
"#
        );
        let store = Store::from_yaml(&granted);
        let writes = to_write(&store, "2026-12-06T00:00:00Z", "cluster.local");
        assert_eq!(
            conditions(&writes[0].2[0])[1],
            (
                "ResolvedRefs".into(),
                "False".into(),
                "BackendNotFound".into()
            )
        );
    }

    #[test]
    fn a_service_entry_parent_is_accepted_when_it_exists() {
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: httpbin, namespace: shop, labels: { istio.io/use-waypoint: waypoint } }
spec:
  hosts: [httpbin.org]
  ports: [{ number: 80, name: http, protocol: HTTP }]
  resolution: DNS
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: egress, namespace: shop, generation: 2, resourceVersion: "7" }
spec:
  parentRefs:
  - { group: networking.istio.io, kind: ServiceEntry, name: httpbin }
  - { group: networking.istio.io, kind: ServiceEntry, name: httpbin, port: 8080 }
  - { group: networking.istio.io, kind: ServiceEntry, name: missing }
  rules: [{ backendRefs: [{ kind: Hostname, group: networking.istio.io, name: httpbin.org, port: 80 }] }]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: waypoint, namespace: shop }
spec:
  gatewayClassName: warren-waypoint
  listeners: [{ name: mesh, port: 15008, protocol: HBONE }]
"#;
        let store = Store::from_yaml(yaml);
        let writes = to_write(&store, "2026-12-06T00:00:00Z", "cluster.local");
        assert_eq!(writes.len(), 1, "{writes:#?}");
        let parents = &writes[0].2;
        assert_eq!(parents.len(), 3, "{parents:#?}");
        let accepted = |i: usize| {
            (
                conditions(&parents[i])[0].clone(),
                parents[i]["conditions"][0]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        };
        let (condition, message) = accepted(0);
        assert_eq!(
            condition,
            ("Accepted".into(), "True".into(), "Accepted".into())
        );
        assert!(
            message.contains("httpbin.org") && message.contains("at its waypoint shop/waypoint"),
            "{message}"
        );
        assert_eq!(accepted(1).0.2, "NoMatchingParent", "{}", accepted(1).1);
        assert_eq!(accepted(2).0.2, "NoMatchingParent", "{}", accepted(2).1);

        // A GRPCRoute on the same entry is in force instead.
        let grpc = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: { name: calls, namespace: shop }
spec:
  parentRefs: [{ group: networking.istio.io, kind: ServiceEntry, name: httpbin, sectionName: http }]
  rules: [{ backendRefs: [{ kind: Hostname, group: networking.istio.io, name: httpbin.org, port: 80 }] }]
"#;
        let store = Store::from_yaml(&format!("{yaml}{grpc}"));
        let writes = to_write(&store, "2026-12-06T00:00:00Z", "cluster.local");
        let http = status_of(&writes, Kind::HttpRoute);
        assert_eq!(
            conditions(&http.2[0])[0],
            ("Accepted".into(), "False".into(), "Conflicted".into())
        );
    }

    /// An older VirtualService claiming the Service's host exactly (for the
    /// mesh, visible to its waypoint, of the Service's namespace or the
    /// waypoint's) takes it ahead of the Service's routes, which the status
    /// says, as the waypoint ranks them; a younger one, a wildcard (an exact
    /// claim wins), one bound to gateways only, one not visible, or one of
    /// another namespace does not; nor does another Service's older route
    /// make this one's older.
    #[test]
    fn a_route_an_older_virtual_service_shadows_is_conflicted() {
        let route = ROUTE.replace(
            "metadata: { name: r, namespace: shop, generation: 3, resourceVersion: \"41\" }",
            "metadata: { name: r, namespace: shop, generation: 3, resourceVersion: \"41\", creationTimestamp: \"2026-01-02T00:00:00Z\" }",
        );
        let waypoint = |namespace: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{ name: waypoint, namespace: {namespace} }}\n\
                 spec:\n  gatewayClassName: warren-waypoint\n  listeners: [{{ name: mesh, port: 15008, protocol: HBONE, allowedRoutes: {{ namespaces: {{ from: All }} }} }}]\n"
            )
        };
        let accepted = |extra: &str| {
            let store = Store::from_yaml(&format!("{route}---\n{extra}"));
            let writes = to_write(&store, "2026-12-07T00:00:00Z", "cluster.local");
            let (_, _, parents) = writes
                .iter()
                .find(|(key, _, _)| key.kind == Kind::HttpRoute && &*key.name == "r")
                .expect("route r's status");
            let first = parents[0].clone();
            assert_eq!(first["parentRef"]["name"], "app");
            (
                conditions(&first)[0].2.clone(),
                first["conditions"][0]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        };
        let vs = |meta: &str, spec: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ {meta} }}\nspec: {{ {spec}, http: [{{ route: [{{ destination: {{ host: app }} }}] }}] }}\n"
            )
        };
        let here = waypoint("shop");
        let older = "name: legacy, namespace: shop, creationTimestamp: \"2026-01-01T00:00:00Z\"";
        for hosts in ["hosts: [app]", "hosts: [app.shop.svc.cluster.local]"] {
            let (reason, message) = accepted(&format!("{here}---\n{}", vs(older, hosts)));
            assert_eq!(reason, "Conflicted", "{hosts}: {message}");
            assert!(message.contains("VirtualService shop/legacy"), "{message}");
        }
        // Not served by a waypoint: the routes route nothing yet anyway.
        let (reason, _) = accepted(&vs(older, "hosts: [app]"));
        assert_eq!(reason, "Accepted");
        let younger = "name: legacy, namespace: shop, creationTimestamp: \"2026-01-03T00:00:00Z\"";
        let elsewhere =
            "name: legacy, namespace: data, creationTimestamp: \"2026-01-01T00:00:00Z\"";
        for (meta, spec) in [
            (younger, "hosts: [app]"),
            (older, "hosts: [\"*.shop.svc.cluster.local\"]"),
            (older, "hosts: [app], gateways: [shop/ingress]"),
            (older, "hosts: [app], exportTo: [data]"),
            (older, "hosts: [other]"),
            (elsewhere, "hosts: [app.shop.svc.cluster.local]"),
        ] {
            let (reason, message) = accepted(&format!("{here}---\n{}", vs(meta, spec)));
            assert_eq!(reason, "Accepted", "{meta} {spec}: {message}");
        }
        // Another Service's older route does not make this Service's routes
        // older.
        let other_route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: { name: old, namespace: shop, creationTimestamp: \"2025-01-01T00:00:00Z\" }\n\
             spec: { parentRefs: [{ group: \"\", kind: Service, name: app-v1 }], rules: [{ backendRefs: [{ name: app-v1, port: 80 }] }] }\n";
        let (reason, _) = accepted(&format!(
            "{here}---\n{other_route}---\n{}",
            vs(older, "hosts: [app]")
        ));
        assert_eq!(reason, "Conflicted");
        // A waypoint of another namespace: its namespace's VirtualServices
        // count, visible to it.
        let labelled = route.replace(
            "metadata: { name: app, namespace: shop }",
            "metadata: { name: app, namespace: shop, labels: { istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: mesh } }",
        );
        let accepted_there = |extra: &str| {
            let store =
                Store::from_yaml(&format!("{labelled}---\n{}---\n{extra}", waypoint("mesh")));
            let writes = to_write(&store, "2026-12-07T00:00:00Z", "cluster.local");
            let first = status_of(&writes, Kind::HttpRoute).2[0].clone();
            conditions(&first)[0].2.clone()
        };
        let in_mesh = "name: legacy, namespace: mesh, creationTimestamp: \"2026-01-01T00:00:00Z\"";
        assert_eq!(
            accepted_there(&vs(in_mesh, "hosts: [app.shop.svc.cluster.local]")),
            "Conflicted"
        );
        // Private to its own namespace, which is not the waypoint's.
        assert_eq!(
            accepted_there(&vs(older, "hosts: [app], exportTo: [\".\"]")),
            "Accepted"
        );
        assert_eq!(accepted_there(&vs(older, "hosts: [app]")), "Conflicted");
    }

    #[test]
    fn an_http_route_beside_a_grpc_route_is_conflicted() {
        let grpc = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: { name: calls, namespace: shop, generation: 1 }
spec:
  parentRefs: [{ group: "", kind: Service, name: app }]
  rules: [{ backendRefs: [{ name: app-v1, port: 80 }] }]
"#;
        let store = Store::from_yaml(&format!("{ROUTE}{grpc}"));
        let writes = to_write(&store, "2026-12-06T00:00:00Z", "cluster.local");
        let http = status_of(&writes, Kind::HttpRoute);
        assert_eq!(
            conditions(&http.2[0])[0],
            ("Accepted".into(), "False".into(), "Conflicted".into())
        );
        let message = http.2[0]["conditions"][0]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(message.contains("GRPCRoute shop/calls"), "{message}");
        // The GRPCRoute itself is in force.
        let grpc = status_of(&writes, Kind::GrpcRoute);
        assert_eq!(
            conditions(&grpc.2[0])[0],
            ("Accepted".into(), "True".into(), "Accepted".into())
        );
        // The other parent (a Service that does not exist) stays as it was.
        assert_eq!(
            conditions(&http.2[1])[0],
            ("Accepted".into(), "False".into(), "NoMatchingParent".into())
        );
    }

    #[test]
    fn accepted_says_which_waypoint_routes_by_it() {
        let message = |yaml: &str| {
            let store = Store::from_yaml(yaml);
            let writes = to_write(&store, "2026-12-06T00:00:00Z", "cluster.local");
            writes[0].2[0]["conditions"][0]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        let without = message(ROUTE);
        assert!(without.contains("no waypoint serves"), "{without}");
        let with = message(&format!(
            "{ROUTE}---\n{}",
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: waypoint, namespace: shop }
spec:
  gatewayClassName: warren-waypoint
  listeners: [{ name: mesh, port: 15008, protocol: HBONE }]
"#
        ));
        assert!(with.contains("at its waypoint shop/waypoint"), "{with}");
    }

    #[test]
    fn what_the_route_shows_already_is_not_written_again_and_others_stay() {
        let store = Store::from_yaml(ROUTE);
        let object = store
            .get(&ObjectKey::new(Kind::HttpRoute, Some("shop"), "r"))
            .expect("the route");
        let route = route_of(object).expect("a route");
        let ours = parents(&store, &Grants::default(), &route, "cluster.local");
        let other = json!({
            "parentRef": { "name": "public" },
            "controllerName": "example.com/ingress",
            "conditions": [],
        });
        let first = merged(
            std::slice::from_ref(&other),
            "parentRef",
            &ours,
            3,
            "2026-12-06T00:00:00Z",
        )
        .expect("a first write");
        assert_eq!(first[0], other, "another controller's entry is kept");
        assert_eq!(first.len(), 3);
        // Shown already: nothing to write, even later.
        assert_eq!(
            merged(&first, "parentRef", &ours, 3, "2026-12-07T00:00:00Z"),
            None
        );
        // A new generation is written; a condition whose status stayed
        // keeps its transition time.
        let next = merged(&first, "parentRef", &ours, 4, "2026-12-07T00:00:00Z")
            .expect("a new generation");
        assert_eq!(
            next[1]["conditions"][0]["lastTransitionTime"],
            "2026-12-06T00:00:00Z"
        );
        assert_eq!(next[1]["conditions"][0]["observedGeneration"], 4);
    }

    /// An API server with Service `shop/app` and HTTPRoute `shop/r` (whose
    /// backend in `data` has no grant), no experimental route CRDs, and
    /// every watch held; each status patch is sent to `patches`.
    async fn api_server(
        mut handle: tower_test::mock::Handle<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >,
        patches: mpsc::UnboundedSender<(String, String, Value)>,
    ) {
        use kube::client::Body;
        let list = |kind: &str, items: Vec<Value>| json!({ "apiVersion": "v1", "kind": kind, "metadata": { "resourceVersion": "50" }, "items": items });
        let route = json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": { "name": "r", "namespace": "shop", "generation": 2, "resourceVersion": "41" },
            "spec": {
                "parentRefs": [{ "group": "", "kind": "Service", "name": "app" }],
                "rules": [{ "backendRefs": [{ "name": "ratings", "namespace": "data", "port": 80 }] }],
            },
        });
        // Refused by the node agents' model (a Service parent without its
        // group), read back by the writer.
        let bad = json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": { "name": "bad", "namespace": "shop", "generation": 1, "resourceVersion": "43" },
            "spec": {
                "parentRefs": [{ "group": "gateway.networking.k8s.io", "kind": "Service", "name": "app" }],
                "rules": [{ "backendRefs": [{ "name": "app", "port": 80 }] }],
            },
        });
        // A BackendTLSPolicy whose bundle is in a namespace the writer was
        // given, and one the agents refuse (two kinds of CA at once).
        let policy = json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
            "metadata": { "name": "tls", "namespace": "shop", "generation": 5, "resourceVersion": "44" },
            "spec": {
                "targetRefs": [{ "group": "", "kind": "Service", "name": "app" }],
                "validation": {
                    "caCertificateRefs": [{ "group": "", "kind": "ConfigMap", "name": "app-ca" }],
                    "hostname": "app.shop.example",
                },
            },
        });
        let bad_policy = json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
            "metadata": { "name": "bad-tls", "namespace": "shop", "generation": 1, "resourceVersion": "45" },
            "spec": {
                "targetRefs": [{ "group": "", "kind": "Service", "name": "app" }],
                "validation": {
                    "caCertificateRefs": [{ "group": "", "kind": "ConfigMap", "name": "app-ca" }],
                    "wellKnownCACertificates": "System",
                    "hostname": "app.shop.example",
                },
            },
        });
        let bundle = json!({
            "metadata": { "name": "app-ca", "namespace": "shop" },
            "data": { "ca.crt": crate::test_pki::ca_pem("shop") },
        });
        let mut held = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            let query = request.uri().query().unwrap_or_default().to_owned();
            if query.contains("watch=true") {
                held.push(send);
                continue;
            }
            let content_type = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let bytes = request.into_body().collect_bytes().await.expect("a body");
            let gateway = "/apis/gateway.networking.k8s.io";
            let (code, body) = match (method.as_str(), path.as_str()) {
                ("PATCH", _) => {
                    let body: Value = serde_json::from_slice(&bytes).expect("JSON");
                    let _ = patches.send((path.clone(), content_type, body.clone()));
                    (200, route.clone())
                }
                (_, "/api/v1/namespaces") => (200, list("NamespaceList", vec![])),
                (_, "/apis/networking.istio.io/v1/serviceentries") => {
                    (200, list("ServiceEntryList", vec![]))
                }
                (_, "/api/v1/services") => (
                    200,
                    list(
                        "ServiceList",
                        vec![
                            json!({ "metadata": { "name": "app", "namespace": "shop" }, "spec": {} }),
                        ],
                    ),
                ),
                (_, p) if p == format!("{gateway}/v1") => {
                    let resources: Vec<Value> = ["httproutes", "grpcroutes", "referencegrants", "backendtlspolicies"]
                        .iter()
                        .map(|n| json!({ "name": n, "singularName": "", "namespaced": true, "kind": "", "verbs": ["list"] }))
                        .collect();
                    (
                        200,
                        json!({ "kind": "APIResourceList", "apiVersion": "v1",
                            "groupVersion": "gateway.networking.k8s.io/v1", "resources": resources }),
                    )
                }
                (_, p) if p == format!("{gateway}/v1/httproutes") => {
                    (200, list("HTTPRouteList", vec![route.clone(), bad.clone()]))
                }
                ("GET", p)
                    if p == format!("{gateway}/v1/namespaces/shop/httproutes/bad/status") =>
                {
                    (200, bad.clone())
                }
                (_, p) if p == format!("{gateway}/v1/gateways") => {
                    (200, list("GatewayList", vec![]))
                }
                (_, p) if p == format!("{gateway}/v1/grpcroutes") => {
                    (200, list("GRPCRouteList", vec![]))
                }
                (_, p) if p == format!("{gateway}/v1/referencegrants") => {
                    (200, list("ReferenceGrantList", vec![]))
                }
                (_, p) if p == format!("{gateway}/v1/backendtlspolicies") => (
                    200,
                    list(
                        "BackendTLSPolicyList",
                        vec![policy.clone(), bad_policy.clone()],
                    ),
                ),
                ("GET", p)
                    if p == format!(
                        "{gateway}/v1/namespaces/shop/backendtlspolicies/bad-tls/status"
                    ) =>
                {
                    (200, bad_policy.clone())
                }
                // The namespace given, and no other; never a Secret (a
                // panic here stops the server, and no patch arrives).
                (_, "/api/v1/namespaces/shop/configmaps") => {
                    (200, list("ConfigMapList", vec![bundle.clone()]))
                }
                (_, p) if p.ends_with("/secrets") => panic!("the writer asked for Secrets: {p}"),
                _ => (
                    404,
                    json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404 }),
                ),
            };
            let mut response =
                http::Response::new(Body::from(serde_json::to_vec(&body).expect("JSON")));
            *response.status_mut() = http::StatusCode::from_u16(code).expect("a status");
            send.send_response(response);
        }
    }

    #[tokio::test]
    async fn the_writer_patches_a_routes_status_with_its_resource_version() {
        let (service, handle) = tower_test::mock::pair();
        let (patches, mut seen) = mpsc::unbounded_channel();
        tokio::spawn(api_server(handle, patches));
        let settings = Settings {
            cluster_domain: "cluster.local".into(),
            bundle_namespaces: vec!["shop".into()],
        };
        let writer = tokio::spawn(run(Client::new(service, "default"), settings));
        let mut next = async || {
            tokio::time::timeout(std::time::Duration::from_secs(10), seen.recv())
                .await
                .expect("a status patch within 10 s")
                .expect("a patch")
        };
        let mut patches = vec![next().await, next().await, next().await, next().await];
        writer.abort();
        patches.sort_by(|a, b| a.0.cmp(&b.0));
        // The policies: the one refused, not accepted, and why; the other
        // holding its Service, its ConfigMap read.
        let (path, _, body) = patches.remove(0);
        assert_eq!(
            path,
            "/apis/gateway.networking.k8s.io/v1/namespaces/shop/backendtlspolicies/bad-tls/status"
        );
        assert_eq!(body["metadata"]["resourceVersion"], "45");
        let ancestor = &body["status"]["ancestors"][0];
        assert_eq!(
            ancestor["ancestorRef"],
            json!({ "group": "", "kind": "Service", "name": "app" })
        );
        assert_eq!(
            conditions(ancestor),
            [("Accepted".into(), "False".into(), "Invalid".into())]
        );
        let (path, _, body) = patches.remove(0);
        assert_eq!(
            path,
            "/apis/gateway.networking.k8s.io/v1/namespaces/shop/backendtlspolicies/tls/status"
        );
        assert_eq!(body["metadata"]["resourceVersion"], "44");
        let ancestor = &body["status"]["ancestors"][0];
        assert_eq!(ancestor["controllerName"], CONTROLLER_NAME);
        assert_eq!(
            conditions(ancestor),
            [
                ("Accepted".into(), "True".into(), "Accepted".into()),
                ("ResolvedRefs".into(), "True".into(), "ResolvedRefs".into()),
            ]
        );
        assert_eq!(ancestor["conditions"][0]["observedGeneration"], 5);
        // The refused route: not accepted, and why.
        let (path, _, body) = patches.remove(0);
        assert_eq!(
            path,
            "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/bad/status"
        );
        assert_eq!(body["metadata"]["resourceVersion"], "43");
        let parent = &body["status"]["parents"][0];
        assert_eq!(
            conditions(parent),
            [("Accepted".into(), "False".into(), "UnsupportedValue".into())]
        );
        let message = parent["conditions"][0]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(message.contains("spec.parentRefs[0].group"), "{message}");
        let (path, content_type, body) = patches.remove(0);
        assert_eq!(
            path,
            "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/r/status"
        );
        assert_eq!(content_type, "application/merge-patch+json");
        assert_eq!(body["metadata"]["resourceVersion"], "41");
        let parent = &body["status"]["parents"][0];
        assert_eq!(parent["parentRef"]["name"], "app");
        assert_eq!(
            conditions(parent),
            [
                ("Accepted".into(), "True".into(), "Accepted".into()),
                (
                    "ResolvedRefs".into(),
                    "False".into(),
                    "RefNotPermitted".into()
                ),
            ]
        );
        assert_eq!(parent["conditions"][1]["observedGeneration"], 2);
    }

    #[test]
    fn a_refused_route_says_why_on_each_service_parent() {
        let raw = json!({
            "spec": { "parentRefs": [
                { "group": "", "kind": "Service", "name": "app", "port": 80 },
                { "name": "public" },
            ]},
        });
        let parents = refused_parents(&raw, "spec.rules[0].filters[0].type: not supported");
        assert_eq!(parents.len(), 1);
        assert_eq!(parents[0].parent_ref.port, Some(80));
        let accepted = &parents[0].conditions[0];
        assert!(!accepted.status);
        assert_eq!(accepted.reason, "UnsupportedValue");
        assert!(accepted.message.contains("filters[0].type: not supported"));

        // Refused for the commonest slip, a Service parent without
        // `group: ""` (the API server wrote its default group): still told.
        let raw = json!({
            "spec": { "parentRefs": [
                { "group": "gateway.networking.k8s.io", "kind": "Service", "name": "app" },
            ]},
        });
        assert_eq!(refused_parents(&raw, "spec.parentRefs[0].group").len(), 1);
    }

    #[test]
    fn a_route_that_no_longer_names_a_service_loses_our_entries() {
        let with_ours = |yaml: &str| -> Store {
            Store::from_yaml(&yaml.replace(
                "metadata: { name: r, namespace: shop, generation: 3, resourceVersion: \"41\" }",
                "metadata: { name: r, namespace: shop, generation: 4, resourceVersion: \"42\" }",
            ))
        };
        // First written with both parents…
        let store = Store::from_yaml(ROUTE);
        let written = to_write(&store, "2026-12-06T00:00:00Z", "cluster.local")
            .remove(0)
            .2;
        // …then the route names only the Gateway, its status showing ours.
        let gateway_only = format!(
            "{}\nstatus: {}",
            ROUTE.replace(
                "  - { group: \"\", kind: Service, name: app }\n  - { group: \"\", kind: Service, name: gone }\n",
                "",
            ),
            json!({ "parents": written })
        );
        let store = with_ours(&gateway_only);
        let writes = to_write(&store, "2026-12-07T00:00:00Z", "cluster.local");
        assert_eq!(writes.len(), 1, "{writes:?}");
        assert_eq!(writes[0].2, Vec::<Value>::new());
        // Once they are gone, nothing more.
        let done = gateway_only.replace(&json!({ "parents": written }).to_string(), "{}");
        assert!(to_write(&with_ours(&done), "2026-12-08T00:00:00Z", "cluster.local").is_empty());
    }

    #[test]
    fn a_port_the_service_lacks_is_no_matching_parent() {
        let store = Store::from_yaml(&ROUTE.replace(
            "  - { group: \"\", kind: Service, name: app }\n",
            "  - { group: \"\", kind: Service, name: app, port: 8080 }\n",
        ));
        let writes = to_write(&store, "2026-12-06T00:00:00Z", "cluster.local");
        let parent = &writes[0].2[0];
        assert_eq!(
            conditions(parent)[0],
            ("Accepted".into(), "False".into(), "NoMatchingParent".into())
        );
        let message = parent["conditions"][0]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(message.contains("no port 8080"), "{message}");
    }

    #[test]
    fn a_section_name_the_service_lacks_is_no_matching_parent() {
        let store = Store::from_yaml(&ROUTE.replace(
            "  - { group: \"\", kind: Service, name: app }\n",
            "  - { group: \"\", kind: Service, name: app, sectionName: http }\n  - { group: \"\", kind: Service, name: app, sectionName: admin }\n",
        ));
        let writes = to_write(&store, "2026-12-06T00:00:00Z", "cluster.local");
        let parents = &writes[0].2;
        assert_eq!(conditions(&parents[0])[0].1, "True", "{parents:#?}");
        assert_eq!(
            conditions(&parents[1])[0],
            ("Accepted".into(), "False".into(), "NoMatchingParent".into())
        );
        let message = parents[1]["conditions"][0]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(message.contains("no port named \"admin\""), "{message}");
    }
}
