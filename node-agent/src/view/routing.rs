//! VirtualServices and DestinationRules as the waypoints receive them:
//! validated Istio specs with every host made fully qualified.
//!
//! Istio reads a short host (`reviews`) in the namespace of the object that
//! names it. Warren also reads `reviews.shop` as Service `reviews` of
//! namespace `shop`, as Kubernetes' DNS does (Istio reads any name with a
//! dot as written): unless a ServiceEntry names that host and namespace
//! `shop` has no Service `reviews`; then it is the entry's host
//! (`httpbin.org`). Resolving here, once, means a waypoint in another
//! namespace never has to guess.

use std::collections::BTreeSet;

use warren_api::config::{DestinationRule, VirtualService};

use super::Mesh;
use crate::{
    model::{
        Kind, Object, ObjectKey,
        istio::{
            Destination, DestinationRule as IstioDestinationRule,
            VirtualService as IstioVirtualService, VirtualServiceSpec,
        },
    },
    store::Store,
};

/// The hosts of two labels that ServiceEntries (of any namespace) name and
/// that are no Service's `<name>.<namespace>`, lowercase: [`qualify`] keeps
/// them as written.
pub fn entry_hosts(store: &Store) -> BTreeSet<String> {
    let is_service = |host: &str| {
        host.split_once('.').is_some_and(|(name, namespace)| {
            store
                .get(&ObjectKey::new(Kind::Service, Some(namespace), name))
                .is_some()
        })
    };
    store
        .of_kind(Kind::ServiceEntry)
        .filter_map(|o| match o {
            Object::ServiceEntry(entry) => Some(entry.spec.hosts.iter()),
            _ => None,
        })
        .flatten()
        .map(|host| host.trim_end_matches('.').to_ascii_lowercase())
        .filter(|host| !host.starts_with('*') && host.split('.').count() == 2)
        .filter(|host| !is_service(host))
        .collect()
}

/// `host` as a fully qualified name, read in `namespace`; `entry_hosts` are
/// [`entry_hosts`].
pub fn qualify(mesh: &Mesh, namespace: &str, host: &str, entry_hosts: &BTreeSet<String>) -> String {
    qualify_in(&mesh.cluster_domain, namespace, host, entry_hosts)
}

/// [`qualify`] in the cluster domain `domain`.
pub fn qualify_in(
    domain: &str,
    namespace: &str,
    host: &str,
    entry_hosts: &BTreeSet<String>,
) -> String {
    let suffix = format!("svc.{domain}");
    if host.starts_with('*') || host.ends_with(&suffix) || host.parse::<std::net::IpAddr>().is_ok()
    {
        return host.to_owned();
    }
    match host.split('.').count() {
        1 => format!("{host}.{namespace}.{suffix}"),
        2 if entry_hosts.contains(&host.trim_end_matches('.').to_ascii_lowercase()) => {
            host.to_owned()
        }
        2 => format!("{host}.{suffix}"),
        // Three labels or more and not under the cluster domain: an external
        // name (a ServiceEntry host), kept as written.
        _ => host.to_owned(),
    }
}

fn qualify_destination(
    mesh: &Mesh,
    namespace: &str,
    destination: &mut Destination,
    entry_hosts: &BTreeSet<String>,
) {
    destination.host = qualify(mesh, namespace, &destination.host, entry_hosts);
}

pub fn virtual_service(
    mesh: &Mesh,
    vs: &IstioVirtualService,
    entry_hosts: &BTreeSet<String>,
) -> Option<VirtualService> {
    let namespace = vs
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut spec = vs.spec.clone();
    // Only the mesh's routes are a waypoint's business; a VirtualService bound
    // to ingress gateways alone is some other proxy's.
    if !spec.gateways.is_empty() && !spec.gateways.iter().any(|g| g == "mesh") {
        return None;
    }
    spec.hosts = spec
        .hosts
        .iter()
        .map(|h| qualify(mesh, &namespace, h, entry_hosts))
        .collect();
    for rule in &mut spec.http {
        for route in &mut rule.route {
            qualify_destination(mesh, &namespace, &mut route.destination, entry_hosts);
        }
        if let Some(mirror) = &mut rule.mirror {
            qualify_destination(mesh, &namespace, mirror, entry_hosts);
        }
        for mirror in &mut rule.mirrors {
            qualify_destination(mesh, &namespace, &mut mirror.destination, entry_hosts);
        }
    }
    for rule in &mut spec.tcp {
        for route in &mut rule.route {
            qualify_destination(mesh, &namespace, &mut route.destination, entry_hosts);
        }
    }
    for rule in &mut spec.tls {
        for route in &mut rule.route {
            qualify_destination(mesh, &namespace, &mut route.destination, entry_hosts);
        }
    }
    Some(published(vs, &spec))
}

/// `vs` with `spec` (its hosts already fully qualified) as the waypoints
/// receive it.
pub fn published(vs: &IstioVirtualService, spec: &VirtualServiceSpec) -> VirtualService {
    VirtualService {
        name: vs.metadata.name.clone().unwrap_or_default(),
        created: vs
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
        namespace: vs
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        hosts: spec.hosts.clone(),
        // Serializing a validated model type cannot fail; an empty spec would
        // be refused by the waypoint rather than taken for "no routes".
        spec_json: serde_json::to_string(spec).unwrap_or_default(),
    }
}

pub fn destination_rule(
    mesh: &Mesh,
    dr: &IstioDestinationRule,
    entry_hosts: &BTreeSet<String>,
) -> DestinationRule {
    let namespace = dr
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut spec = dr.spec.clone();
    spec.host = qualify(mesh, &namespace, &spec.host, entry_hosts);
    DestinationRule {
        name: dr.metadata.name.clone().unwrap_or_default(),
        created: dr
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
        namespace,
        host: spec.host.clone(),
        spec_json: serde_json::to_string(&spec).unwrap_or_default(),
    }
}
