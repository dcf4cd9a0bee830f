//! VirtualService `http` rules, compiled: where a request goes and what
//! happens to it on the way.
//!
//! [`RouteTable::build`] compiles every VirtualService once — regexes,
//! durations, header names and values — so that routing a request is only
//! comparisons. A VirtualService that does not compile is reported as a
//! [`RouteError`] and left out; the others still route.
//!
//! For one request the waypoint asks, in this order:
//! 1. [`RouteTable::route`]: the first rule of the host's VirtualService
//!    (of the service's namespace or the waypoint's) whose `match` fits
//!    ([`Lookup::Routed`]); none fitting is a 404, no VirtualService the
//!    service itself.
//! 2. [`HttpRule::fault`]: a delay and/or an abort to inject
//!    ([`Fault::decide`]).
//! 3. [`HttpRule::action`]: answer directly ([`Redirect`],
//!    [`DirectResponse`]) or forward to a destination picked by weight
//!    ([`HttpRule::pick_destination`]).
//! 4. [`HttpRule::apply_request`]: rewrite the path and authority, change
//!    headers; [`HttpRule::apply_response`] on the way back.
//! 5. [`HttpRule::timeout`] for the whole exchange, [`HttpRule::retries`]
//!    per attempt, [`HttpRule::mirrors_for`] for shadow copies.
//!
//! Semantics are Istio's (its API reference, and where that is silent what
//! istiod generates for Envoy); each type says which fields it honours. One
//! deliberate extension: `sourceLabels` and `sourceNamespace` are matched
//! against the calling workload (known from its mTLS identity and
//! ztunnel's `Forwarded`), as a sidecar would; Istio's waypoint drops such
//! matches.
//! `tcp` and `tls` routes are [`tcp`]'s. Not implemented: `delegate` (the
//! model refuses it), Envoy `%COMMAND%` substitutions in header values (values are
//! literal), and JWT-claim header matches (`@request.auth.claims.*`, which
//! the model refuses).

mod cors;
mod fault;
mod host;
mod matching;
mod retry;
mod rule;
pub mod tcp;
#[cfg(test)]
mod tests;

use std::{collections::HashMap, fmt};

use host::{HostIndex, normalize_host};

use rand::Rng;
use warren_model::istio::VirtualServiceSpec;

pub use cors::{Cors, CorsCheck};
pub use fault::{Abort, Fault, FaultAbort, FaultDecision, FaultDelay};
pub use matching::{Matched, RequestInfo, UriMatched};
pub use retry::{Backoff, FailureKind, RetryOn, RetryPolicy};
pub use rule::{
    Action, DirectResponse, HttpRule, InvalidRewrite, MirrorTarget, Redirect, RedirectPort,
    RouteDestination,
};

/// One VirtualService as the waypoint receives it.
#[derive(Clone, Debug)]
pub struct VsInput {
    pub namespace: String,
    pub name: String,
    /// Seconds since the epoch it was created at (0 when not known): the
    /// oldest VirtualService of a namespace keeps a host two claim.
    pub created: i64,
    /// The hosts the VirtualService claims, already fully qualified
    /// (`reviews.demo.svc.cluster.local`, or `*.demo.svc.cluster.local`).
    /// `spec.hosts` is not read: it may hold short names.
    pub hosts: Vec<String>,
    pub spec: VirtualServiceSpec,
    /// Made by the agent from Gateway API routes: the Gateway API's
    /// semantics apply where Istio gives them (a redirect's `%PREFIX()%`).
    pub from_routes: bool,
}

/// Names a VirtualService: `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VsId {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for VsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A VirtualService (or one of its hosts) the table does not use, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("VirtualService {virtual_service}: {field}: {reason}")]
pub struct RouteError {
    pub virtual_service: VsId,
    /// The field at fault, by its YAML path (`spec.http[0].match[1].uri.regex`);
    /// `hosts[i]` for the resolved host list of [`VsInput`].
    pub field: String,
    pub reason: String,
    pub effect: ErrorEffect,
}

/// What a [`RouteError`] costs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorEffect {
    /// The whole VirtualService is left out.
    Skipped,
    /// This host is routed by an earlier VirtualService; the rest of this
    /// one is in use.
    HostIgnored { host: String },
}

/// A problem found while compiling, before it is tied to its object.
#[derive(Debug)]
struct CompileError {
    path: String,
    reason: String,
}

impl CompileError {
    fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// The compiled `http` rules of one VirtualService.
#[derive(Debug)]
pub struct VirtualServiceRoutes {
    id: VsId,
    export_to: ExportTo,
    rules: Vec<HttpRule>,
}

impl VirtualServiceRoutes {
    pub fn id(&self) -> &VsId {
        &self.id
    }

    pub fn rules(&self) -> &[HttpRule] {
        &self.rules
    }

    /// Whether any rule can match a request on `port`. One with none is not
    /// this port's: Istio builds no routes from it and the port's traffic
    /// goes straight to the service.
    pub fn serves_port(&self, port: u16) -> bool {
        self.rules.iter().any(|rule| rule.may_match_port(port))
    }

    /// The first rule that matches, as Istio: rules in order, and within a
    /// rule the first matching alternative. `None` means the host has routes
    /// but none fits — Istio (Envoy) answers 404 then.
    pub fn route(&self, req: &RequestInfo<'_>) -> Option<Routed<'_>> {
        self.rules.iter().find_map(|rule| {
            rule.matches(req).map(|matched| Routed {
                virtual_service: &self.id,
                rule,
                matched,
            })
        })
    }
}

/// The rule that handles a request, and how it matched (a prefix rewrite
/// needs to know what was matched).
#[derive(Clone, Copy, Debug)]
pub struct Routed<'a> {
    pub virtual_service: &'a VsId,
    pub rule: &'a HttpRule,
    pub matched: Matched,
}

impl<'a> Routed<'a> {
    /// Istio's route name: the rule's `name`, then `.` and the matching
    /// alternative's `name` when it has one.
    pub fn route_name(&self) -> &'a str {
        self.rule.route_name(&self.matched)
    }
}

/// Which waypoint's VirtualServices route a request: Istio's waypoint takes
/// those of the destination service's namespace (when exported to the
/// waypoint's) and of its own, so one namespace cannot reroute another's
/// services.
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    pub service_namespace: &'a str,
    pub waypoint_namespace: &'a str,
}

/// `spec.exportTo`: the namespaces that see a VirtualService (empty: all,
/// Istio's default).
#[derive(Clone, Debug, Default)]
pub struct ExportTo(Vec<String>);

impl ExportTo {
    pub fn new(entries: &[String]) -> Self {
        Self(entries.to_vec())
    }

    /// Whether an object of `own` namespace is visible in `namespace`.
    pub fn reaches(&self, own: &str, namespace: &str) -> bool {
        self.0.is_empty()
            || self
                .0
                .iter()
                .any(|e| e == "*" || e == namespace || (e == "." && own == namespace))
    }

    /// Whether an object of `own` namespace is visible there only.
    pub fn private(&self, own: &str) -> bool {
        !self.0.is_empty() && self.0.iter().all(|e| e == "." || e == own)
    }
}

impl Scope<'_> {
    fn admits(&self, id: &VsId, export_to: &ExportTo) -> bool {
        (id.namespace == self.service_namespace || id.namespace == self.waypoint_namespace)
            && export_to.reaches(&id.namespace, self.waypoint_namespace)
    }
}

/// What the route table says about a request.
#[derive(Clone, Copy, Debug)]
pub enum Lookup<'a> {
    /// No VirtualService routes the host on this port: straight to the
    /// service (Istio's default route).
    Default,
    /// One does, and none of its rules fits: 404 (Envoy's `NR`).
    NoMatch(&'a VsId),
    Routed(Routed<'a>),
}

impl<'a> Lookup<'a> {
    pub fn routed(self) -> Option<Routed<'a>> {
        match self {
            Lookup::Routed(routed) => Some(routed),
            _ => None,
        }
    }
}

/// Every host's routes.
///
/// Host lookup is case-insensitive and ignores a trailing dot. An exact
/// host wins over wildcards, and a longer wildcard (`*.demo.svc.cluster.local`)
/// over a shorter one (`*.svc.cluster.local`); `*.x` matches `a.x` and
/// `a.b.x` but not `x`.
///
/// Only VirtualServices of the destination service's namespace and of the
/// waypoint's own route a request (Istio's waypoint does the same): another
/// namespace cannot reroute a service it does not own. Within a namespace,
/// when several claim the same host, the first one given to
/// [`RouteTable::build`] keeps it (Istio: the oldest; the caller orders its
/// input that way) and the later ones are reported with
/// [`ErrorEffect::HostIgnored`]. Istio merges VirtualServices only on
/// gateways, so this matches what a sidecar or waypoint does.
#[derive(Debug, Default)]
pub struct RouteTable {
    virtual_services: Vec<VirtualServiceRoutes>,
    /// At most one VirtualService per namespace and host.
    hosts: HostIndex,
}

impl RouteTable {
    /// Compiles `virtual_services`, in precedence order (oldest first).
    /// Returns the table and what was left out.
    pub fn build(
        virtual_services: impl IntoIterator<Item = VsInput>,
    ) -> (RouteTable, Vec<RouteError>) {
        let mut table = RouteTable::default();
        // By (namespace, host): one VirtualService per namespace keeps a host.
        let mut claims: HashMap<(String, String), usize> = HashMap::new();
        let mut errors = Vec::new();

        for input in virtual_services {
            let id = VsId {
                namespace: input.namespace,
                name: input.name,
            };
            let skipped = |e: CompileError| RouteError {
                virtual_service: id.clone(),
                field: e.path,
                reason: e.reason,
                effect: ErrorEffect::Skipped,
            };
            // TCP and TLS only: the [`tcp::TcpTable`]'s, nothing for HTTP
            // to report.
            if input.spec.http.is_empty()
                && (!input.spec.tcp.is_empty() || !input.spec.tls.is_empty())
            {
                continue;
            }
            let rules = match compile_rules(&input.spec, input.from_routes) {
                Ok(rules) => rules,
                Err(e) => {
                    errors.push(skipped(e));
                    continue;
                }
            };
            if input.hosts.is_empty() {
                errors.push(skipped(CompileError::new(
                    "hosts",
                    "no hosts: no request would reach these routes",
                )));
                continue;
            }
            let index = table.virtual_services.len();
            let mut claimed = false;
            for (i, host) in input.hosts.iter().enumerate() {
                let key = (id.namespace.clone(), normalize_host(host));
                match claims.get(&key) {
                    Some(&owner) if owner == index => {}
                    // Every index in `claims` is of a VirtualService
                    // already pushed (the current one is handled above).
                    Some(&owner) => errors.push(RouteError {
                        virtual_service: id.clone(),
                        field: format!("hosts[{i}]"),
                        reason: format!(
                            "host {host:?} is already routed by VirtualService {}, which comes first",
                            table.virtual_services[owner].id
                        ),
                        effect: ErrorEffect::HostIgnored { host: host.clone() },
                    }),
                    None => {
                        claims.insert(key, index);
                        // In precedence order: indexes only grow.
                        table.hosts.claim(host, index);
                        claimed = true;
                    }
                }
            }
            if claimed {
                table.virtual_services.push(VirtualServiceRoutes {
                    id,
                    export_to: ExportTo::new(&input.spec.export_to),
                    rules,
                });
            }
        }

        table.hosts.finish();
        (table, errors)
    }

    /// The routes for `host` (a hostname without port) that a request may
    /// take: the first VirtualService claiming it that `scope` admits.
    pub fn for_host(&self, host: &str, scope: Scope<'_>) -> Option<&VirtualServiceRoutes> {
        self.hosts
            .claims(host)
            .filter_map(|i| self.virtual_services.get(i))
            .find(|vs| scope.admits(&vs.id, &vs.export_to))
    }

    /// Where a request to `host` on `port` goes, with the VirtualServices
    /// `scope` admits (see [`RouteTable::for_host`]).
    pub fn route(&self, host: &str, scope: Scope<'_>, req: &RequestInfo<'_>) -> Lookup<'_> {
        match self.for_host(host, scope) {
            Some(vs) if vs.serves_port(req.port) => match vs.route(req) {
                Some(routed) => Lookup::Routed(routed),
                None => Lookup::NoMatch(&vs.id),
            },
            _ => Lookup::Default,
        }
    }

    /// The VirtualServices in use, in precedence order.
    pub fn virtual_services(&self) -> &[VirtualServiceRoutes] {
        &self.virtual_services
    }

    pub fn is_empty(&self) -> bool {
        self.virtual_services.is_empty()
    }
}

fn compile_rules(
    spec: &VirtualServiceSpec,
    from_routes: bool,
) -> Result<Vec<HttpRule>, CompileError> {
    // Only the mesh's rules are the waypoint's; a VirtualService bound to
    // gateways alone belongs to those gateways.
    if !spec.gateways.is_empty() && !spec.gateways.iter().any(|g| g == "mesh") {
        return Err(CompileError::new(
            "spec.gateways",
            format!(
                "bound to gateways {} only, not to the mesh (add \"mesh\" for the waypoint to use it)",
                spec.gateways.join(", ")
            ),
        ));
    }
    if spec.http.is_empty() {
        return Err(CompileError::new("spec.http", "no http routes"));
    }
    spec.http
        .iter()
        .enumerate()
        .map(|(i, route)| HttpRule::compile(&format!("spec.http[{i}]"), route, from_routes))
        .collect()
}

/// Envoy's fractional percent: Istio turns `Percent.value` into parts per
/// million (`value * 10000`, truncated).
fn per_million(percent: f64) -> u32 {
    // `as` saturates (NaN → 0), and the clamp keeps "over 100%" at 100%.
    ((percent * 10_000.0) as u32).min(1_000_000)
}

/// One draw for a share given in parts per million.
fn chance<R: Rng + ?Sized>(rng: &mut R, per_million: u32) -> bool {
    match per_million {
        0 => false,
        1_000_000.. => true,
        share => rng.random_range(0..1_000_000) < share,
    }
}
