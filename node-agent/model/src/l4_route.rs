//! `gateway.networking.k8s.io` TCPRoute and TLSRoute for Services (the
//! Gateway API's mesh profile, as Istio's ambient mode takes them): a
//! Service's connections shared out by weight between backends, on every
//! port or one (TCPRoute), or by the server name a TLS client asks for
//! (TLSRoute), the bytes passed through untouched.
//!
//! Each route becomes the VirtualService `tcp` or `tls` rule it amounts to,
//! in one VirtualService for the Service's TCP and TLS routes
//! ([`virtual_service`]): the waypoint routes them as a written one's.
//!
//! A connection carries nothing to choose between a route's rules by (no
//! path, no header), so a route has exactly one rule. Between routes the
//! Gateway API's precedence holds: for TLSRoutes the more specific server
//! name first (an exact name, then wildcards with the longer suffix first,
//! then a route for any name); then the older route, then its name.

use std::cmp::Reverse;

use crate::http_route::Target;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    FieldError,
    http_route::{
        self, BackendReference, Backends, ParentReference, Parents, RouteStatus, backend_errors,
        percentages,
    },
    istio::{
        Destination, L4MatchAttributes, RouteDestination, TcpRoute, TlsMatchAttributes, TlsRoute,
        VirtualService,
    },
    reference_grant::Grants,
};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1alpha2",
    kind = "TCPRoute",
    namespaced,
    status = "RouteStatus",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRouteSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<ParentReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<L4RouteRule>,
}

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1alpha2",
    kind = "TLSRoute",
    namespaced,
    status = "RouteStatus",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRouteSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<ParentReference>,
    /// Server names (`*.` first for every name under a domain); none means
    /// any name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<L4RouteRule>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4RouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<BackendRef>,
}

/// A backend and its share of connections (no filters: there is nothing
/// to change in a byte stream). Its fields are spelt out, as
/// `HttpBackendRef`'s are: serde's `flatten` and `deny_unknown_fields` do
/// not go together.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// Relative share of connections (1 when not given; 0 sends none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
}

impl BackendRef {
    pub fn reference(&self) -> BackendReference {
        BackendReference {
            group: self.group.clone(),
            kind: self.kind.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            port: self.port,
        }
    }
}

/// What TCPRoutes and TLSRoutes share: where they attach and their rules.
trait L4Route: Parents + Clone {
    /// The kind, as a ReferenceGrant names it.
    const KIND: &'static str;
    fn meta(&self) -> &ObjectMeta;
    fn rules(&self) -> &[L4RouteRule];
    /// Its server names, for a TLSRoute; `None` for a TCPRoute.
    fn hostnames(&self) -> Option<&[String]>;

    fn namespace(&self) -> &str {
        self.meta().namespace.as_deref().unwrap_or("default")
    }
}

impl L4Route for TCPRoute {
    const KIND: &'static str = "TCPRoute";
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn rules(&self) -> &[L4RouteRule] {
        &self.spec.rules
    }
    fn hostnames(&self) -> Option<&[String]> {
        None
    }
}

impl L4Route for TLSRoute {
    const KIND: &'static str = "TLSRoute";
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn rules(&self) -> &[L4RouteRule] {
        &self.spec.rules
    }
    fn hostnames(&self) -> Option<&[String]> {
        Some(&self.spec.hostnames)
    }
}

impl Parents for TCPRoute {
    fn parent_refs(&self) -> &[ParentReference] {
        &self.spec.parent_refs
    }
    fn parent_refs_mut(&mut self) -> &mut Vec<ParentReference> {
        &mut self.spec.parent_refs
    }
}

impl Parents for TLSRoute {
    fn parent_refs(&self) -> &[ParentReference] {
        &self.spec.parent_refs
    }
    fn parent_refs_mut(&mut self) -> &mut Vec<ParentReference> {
        &mut self.spec.parent_refs
    }
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

/// Checks a TCPRoute. One whose parents are all Gateways is not checked:
/// it is an ingress controller's.
pub fn validate_tcp(route: &TCPRoute) -> Vec<FieldError> {
    check(route, |vs, converted| vs.spec.tcp.extend(converted.tcp))
}

/// Checks a TLSRoute, as [`validate_tcp`] and its server names.
pub fn validate_tls(route: &TLSRoute) -> Vec<FieldError> {
    check(route, |vs, converted| vs.spec.tls.extend(converted.tls))
}

fn check<R: L4Route>(route: &R, add: impl Fn(&mut VirtualService, Rules)) -> Vec<FieldError> {
    if !http_route::meant_for_services(route.parent_refs()) {
        return Vec::new();
    }
    let mut errors = Vec::new();
    let mut error = |path: String, reason: String| errors.push(FieldError::new(path, reason));
    let namespace = route.namespace();
    http_route::parent_errors(&mut error, route.parent_refs(), namespace);
    for (i, host) in route.hostnames().unwrap_or_default().iter().enumerate() {
        if let Some(problem) = server_name_problem(host) {
            error(format!("spec.hostnames[{i}]"), problem);
        }
    }
    match route.rules() {
        [] => error(
            "spec.rules".into(),
            "a route needs its rule: where connections go".into(),
        ),
        [_] => {}
        [_, _, ..] => error(
            "spec.rules".into(),
            "only one rule: a connection carries nothing (no path, no header) to choose between rules by; split connections with backend weights".into(),
        ),
    }
    for (i, rule) in route.rules().iter().enumerate() {
        let path = format!("spec.rules[{i}]");
        if rule.backend_refs.is_empty() {
            error(format!("{path}.backendRefs"), "at least one backend".into());
        }
        for (j, backend) in rule.backend_refs.iter().enumerate() {
            let path = format!("{path}.backendRefs[{j}]");
            backend_errors(&mut error, &path, namespace, &backend.reference());
            if let Some(weight) = backend.weight
                && !(0..=1_000_000).contains(&weight)
            {
                error(
                    format!("{path}.weight"),
                    format!("{weight} is not within 0-1000000"),
                );
            }
        }
    }
    if errors.is_empty() {
        errors.extend(conversion_errors(route, add));
    }
    errors
}

/// A server name as a TLSRoute may give it: DNS labels, the first of which
/// may be `*` alone; not an address (no client sends one).
fn server_name_problem(host: &str) -> Option<String> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Some(format!(
            "{host:?} is an address: TLS clients send no server name for one"
        ));
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    (host.len() > 253 || !name.split('.').all(label_ok))
        .then(|| format!("{host:?} is not a host name (DNS labels, the first may be a lone `*`)"))
}

/// What the VirtualService made of this route alone would be refused for
/// (see `http_route`'s own).
fn conversion_errors<R: L4Route>(
    route: &R,
    add: impl Fn(&mut VirtualService, Rules),
) -> Vec<FieldError> {
    let namespace = route.namespace();
    let route = http_route::with_placeholder_sections(route);
    let route = route.as_ref();
    http_route::unroutable(route.parent_refs(), namespace, |target| {
        let mut vs = http_route::routes_virtual_service(
            SUFFIX,
            namespace,
            target,
            std::iter::once(route.meta()),
        );
        let backends = Backends {
            kind: R::KIND,
            namespace,
            cluster_domain: "cluster.local",
            grants: &Grants::all(),
        };
        add(&mut vs, rules(&backends, target, &[route]));
        Some(vs)
    })
}

// ---------------------------------------------------------------------------
// Conversion
// ---------------------------------------------------------------------------

/// The VirtualService of Service `service` in `namespace` made of the
/// `tcp` rules of `tcp` and the `tls` rules of `tls` (the routes attached to
/// it, each validated), named `<service>-routes-l4`; `None` when no route
/// has a rule for it.
///
/// It is apart from the one the Service's HTTP routes make: the waypoint
/// routes connections and requests by different VirtualServices anyway, and
/// so each has its own age (which decides against a written VirtualService
/// of the Service) and a problem in one leaves the other in force.
///
/// A backend in another namespace is connected to only when `grants`
/// permit it: its share of connections is rejected ([`REJECTED`]).
pub fn virtual_service(
    namespace: &str,
    target: &Target,
    cluster_domain: &str,
    tcp: &[&TCPRoute],
    tls: &[&TLSRoute],
    grants: &Grants,
) -> Option<VirtualService> {
    let backends = |kind| Backends {
        kind,
        namespace,
        cluster_domain,
        grants,
    };
    let tcp_rules = rules(&backends(TCPRoute::KIND), target, tcp).tcp;
    let tls_rules = rules(&backends(TLSRoute::KIND), target, tls).tls;
    if tcp_rules.is_empty() && tls_rules.is_empty() {
        return None;
    }
    let metas = http_route::attached(tcp, target)
        .map(|r| &r.metadata)
        .chain(http_route::attached(tls, target).map(|r| &r.metadata));
    let mut vs = http_route::routes_virtual_service(SUFFIX, namespace, target, metas);
    vs.spec.tcp = tcp_rules;
    vs.spec.tls = tls_rules;
    Some(vs)
}

/// The rules of `routes` for one Service, in precedence order.
#[derive(Default)]
struct Rules {
    tcp: Vec<TcpRoute>,
    tls: Vec<TlsRoute>,
}

/// Orders routes for one port: the more specific server name first (a
/// TLSRoute's), then the older route, then its name.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    /// 0 an exact name, 1 a wildcard, 2 any name (and every TCPRoute).
    name_kind: u8,
    name_length: Reverse<usize>,
    created: i64,
    route: String,
}

fn rules<R: L4Route>(backends: &Backends<'_>, target: &Target, routes: &[&R]) -> Rules {
    let mut tcp: Vec<(Rank, TcpRoute)> = Vec::new();
    let mut tls: Vec<(Rank, TlsRoute)> = Vec::new();
    for route in routes {
        let Some(rule) = route.rules().first() else {
            continue;
        };
        let ports = ports(route.parent_refs(), target);
        if ports.is_empty() {
            continue;
        }
        // Each backend with its share, a backend not permitted as the
        // rejecting host ([`REJECTED`]): the Gateway API rejects that share
        // of connections, and all of them when every weight is 0.
        let mut shares: Vec<(i64, Option<BackendReference>)> = rule
            .backend_refs
            .iter()
            .map(|b| {
                let reference = b.reference();
                let permitted = backends.permitted(&reference);
                (i64::from(weight(b)), permitted.then_some(reference))
            })
            .collect();
        if shares.iter().all(|(w, _)| *w == 0) {
            shares = vec![(1, None)];
        }
        let weights: Vec<i64> = shares.iter().map(|(w, _)| *w).collect();
        let several = weights.iter().filter(|w| **w > 0).count() > 1;
        let mut destinations: Vec<RouteDestination> = Vec::new();
        for (share, (_, backend)) in percentages(&weights).into_iter().zip(&shares) {
            if share == 0 {
                continue;
            }
            let destination = match backend {
                Some(backend) => backends.destination(backend),
                None => Destination {
                    host: REJECTED.to_owned(),
                    ..Destination::default()
                },
            };
            // The rejected shares of several backends go as one.
            match destinations
                .iter_mut()
                .find(|d| backend.is_none() && d.destination.host == REJECTED)
            {
                Some(d) => d.weight = d.weight.map(|w| w + share),
                None => destinations.push(RouteDestination {
                    destination,
                    weight: several.then_some(share),
                }),
            }
        }
        let created = route
            .meta()
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second());
        let name = route.meta().name.clone().unwrap_or_default();
        let rank = |host: Option<&str>| {
            let (name_kind, length) = match host {
                None | Some("*") => (2, 0),
                Some(h) => match h.strip_prefix("*.") {
                    Some(suffix) => (1, suffix.len()),
                    None => (0, h.len()),
                },
            };
            Rank {
                name_kind,
                name_length: Reverse(length),
                created,
                route: name.clone(),
            }
        };
        match route.hostnames() {
            None => tcp.push((
                rank(None),
                TcpRoute {
                    r#match: ports
                        .iter()
                        .flatten()
                        .map(|&port| L4MatchAttributes {
                            port: Some(u32::from(port)),
                            ..L4MatchAttributes::default()
                        })
                        .collect(),
                    route: destinations,
                },
            )),
            Some(hostnames) => {
                let any = ["*".to_owned()];
                let hostnames = if hostnames.is_empty() {
                    &any[..]
                } else {
                    hostnames
                };
                // One rule per name, so that each takes its own place in
                // the order.
                for host in hostnames {
                    let host = host.to_ascii_lowercase();
                    tls.push((
                        rank(Some(&host)),
                        TlsRoute {
                            r#match: ports
                                .iter()
                                .map(|port| TlsMatchAttributes {
                                    sni_hosts: vec![host.clone()],
                                    port: port.map(u32::from),
                                    ..TlsMatchAttributes::default()
                                })
                                .collect(),
                            route: destinations.clone(),
                        },
                    ));
                }
            }
        }
    }
    tcp.sort_by(|a, b| a.0.cmp(&b.0));
    tls.sort_by(|a, b| a.0.cmp(&b.0));
    Rules {
        tcp: tcp.into_iter().map(|(_, r)| r).collect(),
        tls: tls.into_iter().map(|(_, r)| r).collect(),
    }
}

/// The ports of `target` that `parent_refs` attach to: `[None]` for every
/// port, empty when none of them is the target's.
fn ports(parent_refs: &[ParentReference], target: &Target) -> Vec<Option<u16>> {
    let mut ports: Vec<Option<u16>> = http_route::service_parents(parent_refs)
        .into_iter()
        .filter(|p| target.is(p))
        .map(|p| p.port)
        .collect();
    if ports.contains(&None) {
        return vec![None];
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

fn weight(backend: &BackendRef) -> i32 {
    backend.weight.unwrap_or(1).max(0)
}

/// The host a connection route sends the connections it rejects to: a name
/// under `.invalid`, which never resolves (RFC 2606), so the waypoint
/// refuses them, its access log naming this host. The Gateway API rejects
/// the share of a backend a route may not send to, and every connection of
/// a route whose backends all weigh 0.
pub const REJECTED: &str = "rejected-by-route.invalid";

/// What a Service's VirtualService of TCP and TLS routes is named after.
const SUFFIX: &str = "routes-l4";

#[cfg(test)]
mod tests;
