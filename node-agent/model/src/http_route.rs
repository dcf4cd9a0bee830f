//! `gateway.networking.k8s.io` HTTPRoute, as the Gateway API's mesh profile
//! (GAMMA) reads it: routes attached to a Service by `parentRefs`, which the
//! Service's waypoint applies to every request for it. Istio's ambient mode
//! takes these in place of VirtualServices, so its YAML carries over.
//!
//! A route for a Gateway (an ingress) is some other controller's business
//! and is left alone. The fields are typed and refuse unknown ones, so a
//! setting Warren does not act on (`sessionPersistence`, `cors`, an
//! `ExtensionRef` filter…) is an error naming its path rather than a rule
//! silently weakened.
//!
//! [`virtual_service`] turns the routes of one Service into the
//! VirtualService the waypoints already route with, rules ordered by the
//! Gateway API's precedence. Istio does the same conversion.

use std::{cmp::Reverse, collections::BTreeMap};

use http::HeaderName;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    FieldError,
    istio::{
        CorsPolicy, Destination, FaultAbort, HeaderOperations, Headers, HttpDirectResponse,
        HttpFaultInjection, HttpMatchRequest, HttpMirrorPolicy, HttpRedirect, HttpRetry,
        HttpRewrite, HttpRoute as IstioHttpRoute, HttpRouteDestination, Percent, PortSelector,
        RedirectPortSelection, RegexRewrite, StringMatch, VirtualService, VirtualServiceSpec,
    },
    reference_grant::Grants,
    validate,
};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "HTTPRoute",
    namespaced,
    status = "RouteStatus",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<ParentReference>,
    /// Ignored for Service parents, as GAMMA asks: the Service names the
    /// traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<HttpRouteRule>,
}

/// A route's status (any kind of route), written by its controllers; read
/// only so that an object with a status parses.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<serde_json::Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParentReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Alternatives; none means every request (a `/` prefix).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpRouteMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HttpRouteFilter>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<HttpBackendRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<HttpRouteTimeouts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<HttpRouteRetry>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HttpValueMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<HttpValueMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPathMatch {
    /// `Exact`, `PathPrefix` (the default) or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `/` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A header or query parameter match.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpValueMatch {
    /// `Exact` (the default) or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    pub value: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteFilter {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<MirrorFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RedirectFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_rewrite: Option<UrlRewriteFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsFilter>,
}

/// `type: CORS` (Gateway API's `HTTPCORSFilter`): made the rule's
/// VirtualService `corsPolicy`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsFilter {
    /// `*`, or `scheme://host[:port]`, the host possibly `*.`-wildcarded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// Seconds a preflight's answer may be cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderFilter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HttpHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HttpHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorFilter {
    pub backend_ref: BackendReference,
    /// Share of requests copied, 0 to 100 (all when neither this nor
    /// `fraction` is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<Fraction>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fraction {
    pub numerator: i32,
    /// 100 when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedirectFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// 301 or 302 (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UrlRewriteFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

/// Where requests (or their copies) go.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `Service` (the default), or Istio's `Hostname` (group
    /// `networking.istio.io`) for a ServiceEntry host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

/// A [`BackendReference`] with a weight and filters. Its fields are spelt
/// out: serde's `flatten` and `deny_unknown_fields` do not go together.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBackendRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// Relative share of requests (1 when not given; 0 sends none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
    /// Header changes for requests sent to this backend only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HttpRouteFilter>,
}

impl BackendReference {
    /// Istio's `networking.istio.io` `Hostname`: a ServiceEntry host, taken
    /// as written.
    pub fn is_hostname(&self) -> bool {
        self.group.as_deref() == Some("networking.istio.io")
            && self.kind.as_deref() == Some("Hostname")
    }

    /// The Kubernetes Service this backend reaches, as (namespace, name),
    /// for a route of `namespace`: a Service backend's, or the one a
    /// Hostname names by its cluster name (`<svc>.<ns>.svc…`, which the
    /// waypoint resolves to that Service). `None` for other Hostnames
    /// (ServiceEntry hosts, which are in no namespace).
    pub fn service(&self, namespace: &str) -> Option<(String, String)> {
        if !self.is_hostname() {
            let to = self.namespace.as_deref().unwrap_or(namespace);
            return Some((to.to_owned(), self.name.clone()));
        }
        let name = self.name.trim_end_matches('.').to_ascii_lowercase();
        let mut labels = name.split('.');
        match (labels.next(), labels.next(), labels.next()) {
            (Some(service), Some(to), Some("svc")) => Some((to.to_owned(), service.to_owned())),
            _ => None,
        }
    }
}

/// Every backend `backend_refs` and `filters` (a rule's) send to, its
/// mirrors' included: what a route's status reports on.
pub fn rule_backends<'a>(
    backend_refs: &'a [HttpBackendRef],
    filters: &'a [HttpRouteFilter],
) -> impl Iterator<Item = BackendReference> + 'a {
    let mirrors = filters
        .iter()
        .filter_map(|f| f.request_mirror.as_ref())
        .map(|m| m.backend_ref.clone());
    backend_refs
        .iter()
        .map(HttpBackendRef::reference)
        .chain(mirrors)
}

impl HttpBackendRef {
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

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteTimeouts {
    /// The whole request, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// Each try.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRetry {
    /// Status codes that are retried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
}

// ---------------------------------------------------------------------------
// Which Services a route attaches to
// ---------------------------------------------------------------------------

/// What a mesh route attaches to: a Service of its own namespace, or (as
/// Istio reads routes for egress) a ServiceEntry of it, whose hosts it
/// then routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ParentKind {
    Service,
    ServiceEntry,
}

impl ParentKind {
    pub fn name(self) -> &'static str {
        match self {
            ParentKind::Service => "Service",
            ParentKind::ServiceEntry => "ServiceEntry",
        }
    }
}

/// A Service (or ServiceEntry) of the route's own namespace that a route
/// attaches to, and the port its parentRef narrows it to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceParent {
    pub kind: ParentKind,
    /// The Service's or ServiceEntry's name.
    pub service: String,
    pub port: Option<u16>,
}

/// A parent a VirtualService is made for, with the hosts it routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub kind: ParentKind,
    pub name: String,
    pub hosts: Vec<String>,
}

impl Target {
    /// A Service: its fully qualified host.
    pub fn service(namespace: &str, name: &str, cluster_domain: &str) -> Target {
        Target {
            kind: ParentKind::Service,
            name: name.to_owned(),
            hosts: vec![format!("{name}.{namespace}.svc.{cluster_domain}")],
        }
    }

    /// A ServiceEntry: its hosts (each once).
    pub fn service_entry(name: &str, mut hosts: Vec<String>) -> Target {
        let mut seen = std::collections::BTreeSet::new();
        hosts.retain(|h| seen.insert(h.to_ascii_lowercase()));
        Target {
            kind: ParentKind::ServiceEntry,
            name: name.to_owned(),
            hosts,
        }
    }

    /// Whether a route's parent is this target.
    pub(crate) fn is(&self, parent: &ServiceParent) -> bool {
        parent.kind == self.kind && parent.service == self.name
    }

    /// The name of the VirtualService its routes of one layer make:
    /// `<service>-<suffix>`, `<entry>.entry-<suffix>` (a Service's name has
    /// no dot, so the two never meet).
    fn virtual_service_name(&self, suffix: &str) -> String {
        match self.kind {
            ParentKind::Service => format!("{}-{suffix}", self.name),
            ParentKind::ServiceEntry => format!("{}.entry-{suffix}", self.name),
        }
    }
}

/// A backend's group: core when omitted (the API's default for a
/// BackendObjectReference).
fn is_core(group: Option<&str>) -> bool {
    matches!(group, None | Some("" | "core"))
}

/// A parentRef naming a core Service. Its group must be written (`""`): the
/// API server fills an omitted one with `gateway.networking.k8s.io`, so a
/// route read from a folder means what it would in a cluster.
pub fn is_service_parent(parent: &ParentReference) -> bool {
    matches!(parent.group.as_deref(), Some("" | "core"))
        && parent.kind.as_deref() == Some("Service")
}

/// A parentRef naming an Istio ServiceEntry.
pub fn is_service_entry_parent(parent: &ParentReference) -> bool {
    parent.group.as_deref() == Some("networking.istio.io")
        && parent.kind.as_deref() == Some("ServiceEntry")
}

/// What a mesh route's parentRef attaches to, if it is one.
pub fn parent_kind(parent: &ParentReference) -> Option<ParentKind> {
    if is_service_parent(parent) {
        Some(ParentKind::Service)
    } else if is_service_entry_parent(parent) {
        Some(ParentKind::ServiceEntry)
    } else {
        None
    }
}

impl HTTPRoute {
    fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }
}

/// The Services among a route's `parentRefs`, of any kind of route. A
/// parent whose `sectionName` [`resolve_sections`] did not turn into a port
/// attaches to nothing.
pub(crate) fn service_parents(parent_refs: &[ParentReference]) -> Vec<ServiceParent> {
    parent_refs
        .iter()
        .filter(|p| p.section_name.is_none())
        .filter_map(|p| {
            Some(ServiceParent {
                kind: parent_kind(p)?,
                service: p.name.clone(),
                port: p.port.and_then(|port| u16::try_from(port).ok()),
            })
        })
        .collect()
}

/// The routes of `routes` attached to `target`: those whose VirtualService
/// it makes, and whose age it takes (the waypoint ranks VirtualServices by
/// age; another Service's routes are not this one's).
pub(crate) fn attached<'a, R: Parents>(
    routes: &'a [&'a R],
    target: &'a Target,
) -> impl Iterator<Item = &'a R> + 'a {
    routes
        .iter()
        .copied()
        .filter(|r| r.service_parents().iter().any(|p| target.is(p)))
}

/// Where a route of any Gateway API kind attaches.
pub trait Parents {
    fn parent_refs(&self) -> &[ParentReference];
    fn parent_refs_mut(&mut self) -> &mut Vec<ParentReference>;

    /// The Services this route attaches to (mesh routes). Empty for a route
    /// of ingress Gateways only, which is not Warren's.
    fn service_parents(&self) -> Vec<ServiceParent> {
        service_parents(self.parent_refs())
    }
}

impl Parents for HTTPRoute {
    fn parent_refs(&self) -> &[ParentReference] {
        &self.spec.parent_refs
    }
    fn parent_refs_mut(&mut self) -> &mut Vec<ParentReference> {
        &mut self.spec.parent_refs
    }
}

/// Turns the `sectionName` of each Service (or ServiceEntry) parent, which
/// names one of its ports, into that port (`port_of(kind, name, section)`),
/// as the Gateway API reads it for a Service. A name the parent has no port
/// of, or one whose port is not the `port` also given, is left: the parent
/// then attaches to nothing.
pub fn resolve_sections(
    parent_refs: &mut [ParentReference],
    port_of: impl Fn(ParentKind, &str, &str) -> Option<u16>,
) {
    for parent in parent_refs.iter_mut() {
        let Some(kind) = parent_kind(parent) else {
            continue;
        };
        let Some(section) = &parent.section_name else {
            continue;
        };
        let Some(port) = port_of(kind, &parent.name, section) else {
            continue;
        };
        if parent.port.is_none_or(|p| p == i32::from(port)) {
            parent.port = Some(i32::from(port));
            parent.section_name = None;
        }
    }
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

const PATH_TYPES: [&str; 3] = ["Exact", "PathPrefix", "RegularExpression"];
const VALUE_TYPES: [&str; 2] = ["Exact", "RegularExpression"];

/// Checks an HTTPRoute on its own. A route without Service parents is not
/// checked further: it is some ingress controller's.
pub fn validate(route: &HTTPRoute) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut error = |path: String, reason: String| errors.push(FieldError::new(path, reason));
    if !meant_for_services(&route.spec.parent_refs) {
        return Vec::new();
    }
    let namespace = route.namespace();
    parent_errors(&mut error, &route.spec.parent_refs, namespace);
    for (i, rule) in route.spec.rules.iter().enumerate() {
        rule_errors(&mut error, &format!("spec.rules[{i}]"), namespace, rule);
    }
    if errors.is_empty() {
        errors.extend(conversion_errors(route));
    }
    errors
}

/// Whether a route names a Service among its parents (well or badly): a
/// mesh route, Warren's to check. One for Gateways only is an ingress
/// controller's.
pub(crate) fn meant_for_services(parent_refs: &[ParentReference]) -> bool {
    parent_refs
        .iter()
        .any(|p| matches!(p.kind.as_deref(), Some("Service" | "ServiceEntry")))
}

/// The problems of a mesh route's `parentRefs` (any kind of route).
pub(crate) fn parent_errors(
    error: &mut impl FnMut(String, String),
    parent_refs: &[ParentReference],
    namespace: &str,
) {
    for (i, parent) in parent_refs.iter().enumerate() {
        let path = format!("spec.parentRefs[{i}]");
        if parent.kind.as_deref() == Some("Service") && !is_service_parent(parent) {
            error(
                format!("{path}.group"),
                format!(
                    "{:?} is not the core group of a Service: write group: \"\" (an omitted group is gateway.networking.k8s.io)",
                    parent.group.as_deref().unwrap_or("")
                ),
            );
        }
        if parent.kind.as_deref() == Some("ServiceEntry") && !is_service_entry_parent(parent) {
            error(
                format!("{path}.group"),
                format!(
                    "{:?} is not the group of a ServiceEntry: write group: networking.istio.io",
                    parent.group.as_deref().unwrap_or("")
                ),
            );
        }
        let Some(kind) = parent_kind(parent) else {
            continue;
        };
        if parent
            .namespace
            .as_deref()
            .is_some_and(|ns| ns != namespace)
        {
            error(
                format!("{path}.namespace"),
                format!(
                    "a route for another namespace's {} (a consumer route) is not supported: put the route in its namespace",
                    kind.name()
                ),
            );
        }
        if let Some(section) = &parent.section_name
            && !validate::is_dns1123_label(section)
        {
            error(
                format!("{path}.sectionName"),
                format!("{section:?} is not a port name (a DNS label)"),
            );
        }
        if let Some(port) = parent.port {
            port_in_range(error, format!("{path}.port"), port);
        }
    }
}

pub(crate) fn port_in_range(error: &mut impl FnMut(String, String), path: String, port: i32) {
    if !(1..=65535).contains(&port) {
        error(path, format!("{port} is not a port (1-65535)"));
    }
}

fn rule_errors(
    error: &mut impl FnMut(String, String),
    path: &str,
    namespace: &str,
    rule: &HttpRouteRule,
) {
    for (j, m) in rule.matches.iter().enumerate() {
        let path = format!("{path}.matches[{j}]");
        if m.path.is_some() {
            let (kind, value) = path_of(m);
            if !PATH_TYPES.contains(&kind) {
                error(
                    format!("{path}.path.type"),
                    format!("{kind:?} is not one of {}", PATH_TYPES.join(", ")),
                );
            } else if kind == "RegularExpression" {
                regex(error, format!("{path}.path.value"), value);
            } else if !value.starts_with('/') {
                error(
                    format!("{path}.path.value"),
                    format!("{value:?} does not start with /"),
                );
            }
        }
        for (field, values) in [("headers", &m.headers), ("queryParams", &m.query_params)] {
            for (k, v) in values.iter().enumerate() {
                let path = format!("{path}.{field}[{k}]");
                let kind = v.kind.as_deref().unwrap_or("Exact");
                if !VALUE_TYPES.contains(&kind) {
                    error(
                        format!("{path}.type"),
                        format!("{kind:?} is not one of {}", VALUE_TYPES.join(", ")),
                    );
                } else if kind == "RegularExpression" {
                    regex(error, format!("{path}.value"), &v.value);
                }
                if field == "headers" && HeaderName::from_bytes(v.name.as_bytes()).is_err() {
                    error(
                        format!("{path}.name"),
                        format!("{:?} is not a header name", v.name),
                    );
                } else if v.name.is_empty() {
                    error(format!("{path}.name"), "empty".into());
                }
            }
        }
        if let Some(method) = &m.method
            && !is_method(method)
        {
            error(
                format!("{path}.method"),
                format!("{method:?} is not an HTTP method"),
            );
        }
    }
    let redirect = rule.filters.iter().any(|f| f.request_redirect.is_some());
    let rewrite = rule.filters.iter().any(|f| f.url_rewrite.is_some());
    if redirect && rewrite {
        error(
            format!("{path}.filters"),
            "RequestRedirect and URLRewrite cannot be used together".into(),
        );
    }
    if redirect && !rule.backend_refs.is_empty() {
        error(
            format!("{path}.backendRefs"),
            "a rule that redirects sends nothing to backends: remove them or the redirect".into(),
        );
    }
    let prefix_only = rule.matches.iter().all(|m| path_of(m).0 == "PathPrefix");
    for (j, filter) in rule.filters.iter().enumerate() {
        filter_errors(
            error,
            &format!("{path}.filters[{j}]"),
            namespace,
            filter,
            prefix_only,
            false,
        );
    }
    for (j, backend) in rule.backend_refs.iter().enumerate() {
        let path = format!("{path}.backendRefs[{j}]");
        backend_errors(error, &path, namespace, &backend.reference());
        if let Some(weight) = backend.weight
            && !(0..=1_000_000).contains(&weight)
        {
            error(
                format!("{path}.weight"),
                format!("{weight} is not within 0-1000000"),
            );
        }
        for (k, filter) in backend.filters.iter().enumerate() {
            filter_errors(
                error,
                &format!("{path}.filters[{k}]"),
                namespace,
                filter,
                prefix_only,
                true,
            );
        }
    }
    if let Some(timeouts) = &rule.timeouts {
        for (field, value) in [
            ("request", &timeouts.request),
            ("backendRequest", &timeouts.backend_request),
        ] {
            if let Some(value) = value
                && let Err(e) = validate::duration(&format!("{path}.timeouts.{field}"), value)
            {
                error(e.path, e.reason);
            }
        }
    }
    if let Some(retry) = &rule.retry {
        if retry.attempts.is_some_and(|a| a < 0) {
            error(
                format!("{path}.retry.attempts"),
                "cannot be negative".into(),
            );
        }
        for (k, code) in retry.codes.iter().enumerate() {
            if !(400..=599).contains(code) {
                error(
                    format!("{path}.retry.codes[{k}]"),
                    format!("{code} is not an HTTP error status (400-599)"),
                );
            }
        }
        if let Some(backoff) = &retry.backoff
            && let Err(e) = validate::duration(&format!("{path}.retry.backoff"), backoff)
        {
            error(e.path, e.reason);
        }
    }
}

fn filter_errors(
    error: &mut impl FnMut(String, String),
    path: &str,
    namespace: &str,
    filter: &HttpRouteFilter,
    prefix_only: bool,
    on_backend: bool,
) {
    let set = [
        (
            "RequestHeaderModifier",
            filter.request_header_modifier.is_some(),
        ),
        (
            "ResponseHeaderModifier",
            filter.response_header_modifier.is_some(),
        ),
        ("RequestMirror", filter.request_mirror.is_some()),
        ("RequestRedirect", filter.request_redirect.is_some()),
        ("URLRewrite", filter.url_rewrite.is_some()),
        ("CORS", filter.cors.is_some()),
    ];
    let Some(&(_, present)) = set.iter().find(|(kind, _)| *kind == filter.kind) else {
        error(
            format!("{path}.type"),
            format!(
                "{:?} is not supported (supported: RequestHeaderModifier, ResponseHeaderModifier, RequestMirror, RequestRedirect, URLRewrite, CORS)",
                filter.kind
            ),
        );
        return;
    };
    if !present || set.iter().filter(|(_, p)| *p).count() != 1 {
        error(
            path.to_owned(),
            format!("a {} filter sets exactly its own field", filter.kind),
        );
        return;
    }
    if on_backend && !filter.kind.ends_with("HeaderModifier") {
        error(
            format!("{path}.type"),
            format!(
                "{} is not supported on a backend: put it on the rule",
                filter.kind
            ),
        );
    }
    for (field, headers) in [
        ("requestHeaderModifier", &filter.request_header_modifier),
        ("responseHeaderModifier", &filter.response_header_modifier),
    ] {
        let Some(headers) = headers else { continue };
        let names = headers
            .set
            .iter()
            .map(|h| ("set", h.name.as_str()))
            .chain(headers.add.iter().map(|h| ("add", h.name.as_str())))
            .chain(headers.remove.iter().map(|n| ("remove", n.as_str())));
        for (op, name) in names {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                error(
                    format!("{path}.{field}.{op}"),
                    format!("{name:?} is not a header name"),
                );
            }
        }
    }
    if let Some(cors) = &filter.cors {
        cors_errors(error, &format!("{path}.cors"), cors);
    }
    if let Some(mirror) = &filter.request_mirror {
        backend_errors(
            error,
            &format!("{path}.requestMirror.backendRef"),
            namespace,
            &mirror.backend_ref,
        );
        if mirror.percent.is_some_and(|p| !(0..=100).contains(&p)) {
            error(
                format!("{path}.requestMirror.percent"),
                "not within 0-100".into(),
            );
        }
        if let Some(f) = &mirror.fraction {
            let denominator = f.denominator.unwrap_or(100);
            if denominator < 1 || f.numerator < 0 || f.numerator > denominator {
                error(
                    format!("{path}.requestMirror.fraction"),
                    "needs 0 <= numerator <= denominator and denominator >= 1".into(),
                );
            }
            if mirror.percent.is_some() {
                error(
                    format!("{path}.requestMirror"),
                    "percent and fraction cannot both be set".into(),
                );
            }
        }
    }
    if let Some(redirect) = &filter.request_redirect {
        let path = format!("{path}.requestRedirect");
        if let Some(scheme) = &redirect.scheme
            && !matches!(scheme.as_str(), "http" | "https")
        {
            error(
                format!("{path}.scheme"),
                format!("{scheme:?} is not http or https"),
            );
        }
        if let Some(code) = redirect.status_code
            && !matches!(code, 301 | 302)
        {
            error(
                format!("{path}.statusCode"),
                format!("{code} is not 301 or 302"),
            );
        }
        if let Some(port) = redirect.port {
            port_in_range(error, format!("{path}.port"), port);
        }
        if let Some(modifier) = &redirect.path {
            path_modifier(error, &format!("{path}.path"), modifier, prefix_only);
        }
    }
    if let Some(rewrite) = &filter.url_rewrite
        && let Some(modifier) = &rewrite.path
    {
        path_modifier(
            error,
            &format!("{path}.urlRewrite.path"),
            modifier,
            prefix_only,
        );
    }
}

fn path_modifier(
    error: &mut impl FnMut(String, String),
    path: &str,
    modifier: &PathModifier,
    prefix_only: bool,
) {
    let value = match modifier.kind.as_str() {
        "ReplaceFullPath" => modifier.replace_full_path.as_deref(),
        "ReplacePrefixMatch" => {
            if !prefix_only {
                error(
                    format!("{path}.type"),
                    "ReplacePrefixMatch needs every match of the rule to be a PathPrefix".into(),
                );
            }
            modifier.replace_prefix_match.as_deref()
        }
        other => {
            error(
                format!("{path}.type"),
                format!("{other:?} is not ReplaceFullPath or ReplacePrefixMatch"),
            );
            return;
        }
    };
    match value {
        Some(v) if v.contains(['?', '#']) => error(
            path.to_owned(),
            format!("{v:?} is a path: no query or fragment"),
        ),
        // `""` strips the matched prefix, as `/` does.
        Some("") if modifier.kind == "ReplacePrefixMatch" => {}
        Some(v) if v.starts_with('/') => {}
        Some(v) => error(path.to_owned(), format!("{v:?} does not start with /")),
        None => error(
            path.to_owned(),
            format!("{} needs its value", modifier.kind),
        ),
    }
}

pub(crate) fn backend_errors(
    error: &mut impl FnMut(String, String),
    path: &str,
    namespace: &str,
    backend: &BackendReference,
) {
    let service =
        is_core(backend.group.as_deref()) && backend.kind.as_deref().is_none_or(|k| k == "Service");
    if !service && !backend.is_hostname() {
        error(
            format!("{path}.kind"),
            format!(
                "{}/{} is not a backend Warren sends to (a Service, or networking.istio.io Hostname)",
                backend.group.as_deref().unwrap_or(""),
                backend.kind.as_deref().unwrap_or("Service")
            ),
        );
    }
    // Another namespace's Service is fine here: whether a ReferenceGrant
    // lets the route send to it is decided as routes are converted, since
    // grants come and go on their own.
    if backend.is_hostname() && backend.name.parse::<std::net::IpAddr>().is_ok() {
        // The waypoint would send to the pod of that address: a way round
        // the grants, and not a host.
        error(
            format!("{path}.name"),
            format!(
                "{:?} is an address: a Hostname backend is a host name",
                backend.name
            ),
        );
    }
    if backend.is_hostname()
        && backend
            .namespace
            .as_deref()
            .is_some_and(|ns| ns != namespace)
    {
        error(
            format!("{path}.namespace"),
            "a Hostname is not in a namespace: leave namespace out".into(),
        );
    }
    match backend.port {
        Some(port) => port_in_range(error, format!("{path}.port"), port),
        None if service => error(
            format!("{path}.port"),
            "required for a Service backend".into(),
        ),
        None => {}
    }
}

fn regex(error: &mut impl FnMut(String, String), path: String, value: &str) {
    if let Err(e) = regex::Regex::new(value) {
        error(path, format!("not a regular expression: {e}"));
    }
}

fn cors_errors(error: &mut impl FnMut(String, String), path: &str, cors: &CorsFilter) {
    for (i, origin) in cors.allow_origins.iter().enumerate() {
        if origin != "*" && origin_pattern(origin).is_none() {
            error(
                format!("{path}.allowOrigins[{i}]"),
                format!(
                    "{origin:?} is not `*` nor scheme://host[:port] (the host may begin with `*.`)"
                ),
            );
        }
    }
    for (i, method) in cors.allow_methods.iter().enumerate() {
        if method != "*" && !is_method(method) {
            error(
                format!("{path}.allowMethods[{i}]"),
                format!("{method:?} is not an HTTP method nor `*`"),
            );
        }
    }
    for (field, names) in [
        ("allowHeaders", &cors.allow_headers),
        ("exposeHeaders", &cors.expose_headers),
    ] {
        for (i, name) in names.iter().enumerate() {
            if name != "*" && HeaderName::from_bytes(name.as_bytes()).is_err() {
                error(
                    format!("{path}.{field}[{i}]"),
                    format!("{name:?} is not a header name nor `*`"),
                );
            }
        }
    }
    if cors.max_age.is_some_and(|age| age < 1) {
        error(format!("{path}.maxAge"), "at least 1 (seconds)".into());
    }
}

/// An allowed origin as a full-match regular expression: `scheme://host`
/// with an optional port, a leading `*.` standing for one or more labels;
/// `None` when it is no such origin.
fn origin_pattern(origin: &str) -> Option<String> {
    let (scheme, rest) = origin.split_once("://")?;
    let scheme_ok = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()) => {
            (host, Some(port))
        }
        _ => (rest, None),
    };
    let (wildcard, name) = match host.strip_prefix("*.") {
        Some(name) => (true, name),
        None => (false, host),
    };
    let name_ok = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !scheme_ok || !name_ok {
        return None;
    }
    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
    // One or more labels in place of `*`.
    let wildcard = if wildcard {
        r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\."
    } else {
        ""
    };
    Some(format!(
        "{}://{wildcard}{}{}",
        regex::escape(scheme),
        regex::escape(name),
        regex::escape(&port)
    ))
}

/// The CORS filter as a VirtualService `corsPolicy`: an origin with a
/// wildcard as a regular expression, any other as written (`*` allows
/// every origin, as Envoy reads it).
fn cors_policy(cors: &CorsFilter) -> CorsPolicy {
    CorsPolicy {
        // An origin that is no pattern (refused when checked) allows nothing.
        allow_origins: cors
            .allow_origins
            .iter()
            .filter_map(|origin| match origin.contains('*') && origin != "*" {
                true => Some(StringMatch {
                    regex: Some(origin_pattern(origin)?),
                    ..StringMatch::default()
                }),
                false => Some(StringMatch {
                    exact: Some(origin.clone()),
                    ..StringMatch::default()
                }),
            })
            .collect(),
        allow_methods: cors.allow_methods.clone(),
        allow_headers: cors.allow_headers.clone(),
        expose_headers: cors.expose_headers.clone(),
        max_age: cors
            .max_age
            .filter(|age| *age > 0)
            .map(|age| format!("{age}s")),
        allow_credentials: cors.allow_credentials.filter(|c| *c),
        unmatched_preflights: None,
    }
}

/// The methods the Gateway API's `HTTPMethod` allows.
fn is_method(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "CONNECT" | "OPTIONS" | "TRACE" | "PATCH"
    )
}

// ---------------------------------------------------------------------------
// Conversion
// ---------------------------------------------------------------------------

/// What a route that passed [`validate`] would still be refused for: the
/// VirtualService it makes must pass a written one's checks, or the route
/// is refused here (named, the last good version kept) rather than its
/// Service losing every route at the waypoints.
fn conversion_errors(route: &HTTPRoute) -> Vec<FieldError> {
    let namespace = route.namespace();
    let route = with_placeholder_sections(route);
    unroutable(&route.spec.parent_refs, namespace, |target| {
        virtual_service(
            namespace,
            target,
            "cluster.local",
            &[&route],
            &Grants::all(),
        )
    })
}

/// `route` with each Service parent's `sectionName` taken as a port
/// (the `port` it gives, else one number per name), as the view resolves
/// it from the Service: what it makes can be checked before any Service is
/// known, rather than only found wrong once attached.
pub(crate) fn with_placeholder_sections<T: Parents + Clone>(route: &T) -> std::borrow::Cow<'_, T> {
    if route.parent_refs().iter().all(|p| p.section_name.is_none()) {
        return std::borrow::Cow::Borrowed(route);
    }
    let mut names: Vec<(String, Option<i32>)> = Vec::new();
    for parent in route.parent_refs() {
        if let Some(name) = &parent.section_name
            && !names.iter().any(|(n, _)| n == name)
        {
            names.push((name.clone(), parent.port));
        }
    }
    let mut copy = route.clone();
    resolve_sections(copy.parent_refs_mut(), |_, _, section| {
        let i = names.iter().position(|(n, _)| n == section)?;
        let given = names[i].1.and_then(|p| u16::try_from(p).ok());
        Some(given.unwrap_or_else(|| u16::try_from(i + 1).unwrap_or(u16::MAX)))
    });
    std::borrow::Cow::Owned(copy)
}

/// The problems of the VirtualServices `make` makes of one route for each
/// Service among its `parent_refs`, as errors of the route (any kind of
/// route: what passed its own checks must still make a VirtualService the
/// waypoints route with). Every backend is taken as permitted: grants come
/// and go on their own.
pub(crate) fn unroutable(
    parent_refs: &[ParentReference],
    namespace: &str,
    make: impl Fn(&Target) -> Option<VirtualService>,
) -> Vec<FieldError> {
    let mut parents: Vec<(ParentKind, String)> = service_parents(parent_refs)
        .into_iter()
        .map(|p| (p.kind, p.service))
        .collect();
    parents.sort_unstable();
    parents.dedup();
    parents
        .iter()
        .map(|(kind, name)| match kind {
            ParentKind::Service => Target::service(namespace, name, "cluster.local"),
            // Its hosts are not known here: a name of the right form.
            ParentKind::ServiceEntry => Target::service_entry(name, vec!["entry.example".into()]),
        })
        .filter_map(|target| make(&target))
        .flat_map(|vs| validate::virtual_service(&vs))
        .map(|e| {
            FieldError::new(
                "spec",
                format!(
                    "makes a VirtualService Warren cannot route with ({}: {})",
                    e.path, e.reason
                ),
            )
        })
        .collect()
}

/// The VirtualService of Service `service` in `namespace` made of `routes`
/// (the HTTPRoutes attached to it, each validated; see
/// [`routes_virtual_service`]), every host fully qualified
/// (`cluster_domain`); `None` when no route has a rule for it.
///
/// Each match of each rule becomes one VirtualService rule, ordered as the
/// Gateway API orders matches and Istio breaks its ties: an exact path
/// first, then prefixes longest first, then regular expressions; then a
/// method before none, more headers first, more query parameters first;
/// then the older route, the route's `namespace/name`, and the order written.
/// A backend in another namespace is sent to only when `grants` permit it
/// (see [`Backends`]).
pub fn virtual_service(
    namespace: &str,
    target: &Target,
    cluster_domain: &str,
    routes: &[&HTTPRoute],
    grants: &Grants,
) -> Option<VirtualService> {
    let backends = Backends {
        kind: "HTTPRoute",
        namespace,
        cluster_domain,
        grants,
    };
    assemble(&backends, target, routes, &|k, i, j| {
        let route = routes[k];
        let created = route
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second());
        let default_match = HttpRouteMatch::default();
        let m = route.spec.rules[i].matches.get(j).unwrap_or(&default_match);
        let name = route.metadata.name.as_deref().unwrap_or_default();
        MatchRank::of(m, created, name, (i, j))
    })
}

/// Where the backends of routes of one kind and namespace are, and which
/// of them the routes may send to.
pub(crate) struct Backends<'a> {
    /// The routes' kind, as a ReferenceGrant names it (`HTTPRoute`, …).
    pub kind: &'a str,
    /// The routes' namespace.
    pub namespace: &'a str,
    pub cluster_domain: &'a str,
    pub grants: &'a Grants,
}

impl Backends<'_> {
    /// Whether a route may send to `backend`: a Service of another
    /// namespace only with a ReferenceGrant there.
    /// A Hostname naming a Service by its cluster name counts as that
    /// Service: otherwise it would reach any namespace without a grant.
    pub(crate) fn permitted(&self, backend: &BackendReference) -> bool {
        match backend.service(self.namespace) {
            Some((to, service)) => {
                self.grants
                    .permits_service(self.kind, self.namespace, &to, &service)
            }
            None => true,
        }
    }

    /// A backend's host: a Service's fully qualified name, in its own
    /// namespace, or a Hostname as written.
    pub(crate) fn destination(&self, backend: &BackendReference) -> Destination {
        Destination {
            host: if backend.is_hostname() {
                backend.name.clone()
            } else {
                let namespace = backend.namespace.as_deref().unwrap_or(self.namespace);
                format!("{}.{namespace}.svc.{}", backend.name, self.cluster_domain)
            },
            port: backend
                .port
                .and_then(|p| u32::try_from(p).ok())
                .map(|number| PortSelector { number }),
            ..Destination::default()
        }
    }
}

/// [`virtual_service`] with the order of its rules given by `rank(route,
/// rule, match)` (indexes into `routes`; a rule without matches has one, 0).
pub(crate) fn assemble(
    backends: &Backends<'_>,
    target: &Target,
    routes: &[&HTTPRoute],
    rank: &dyn Fn(usize, usize, usize) -> MatchRank,
) -> Option<VirtualService> {
    let mut ordered: Vec<(MatchRank, IstioHttpRoute)> = Vec::new();
    for (k, route) in routes.iter().enumerate() {
        let name = route.metadata.name.clone().unwrap_or_default();
        // The ports its parentRefs to this Service narrow it to; none
        // narrowed means every port.
        let parents: Vec<Option<u16>> = route
            .service_parents()
            .into_iter()
            .filter(|p| target.is(p))
            .map(|p| p.port)
            .collect();
        let ports: Vec<Option<u16>> = if parents.is_empty() {
            continue;
        } else if parents.contains(&None) {
            vec![None]
        } else {
            let mut ports = parents;
            ports.sort_unstable();
            ports.dedup();
            ports
        };
        for port in &ports {
            for (i, rule) in route.spec.rules.iter().enumerate() {
                let rule_name = rule.name.clone().unwrap_or_else(|| format!("rules[{i}]"));
                let default_match = [HttpRouteMatch::default()];
                let matches: &[HttpRouteMatch] = if rule.matches.is_empty() {
                    &default_match
                } else {
                    &rule.matches
                };
                for (j, m) in matches.iter().enumerate() {
                    let rank = rank(k, i, j);
                    let mut converted = convert_rule(backends, rule, m, *port);
                    converted.name = match (port, ports.len()) {
                        (Some(port), 2..) => {
                            format!("{name}.{rule_name}.matches[{j}].port[{port}]")
                        }
                        _ => format!("{name}.{rule_name}.matches[{j}]"),
                    };
                    ordered.push((rank, converted));
                }
            }
        }
    }
    if ordered.is_empty() {
        return None;
    }
    ordered.sort_by(|a, b| a.0.cmp(&b.0));
    let mut vs = routes_virtual_service(
        "routes",
        backends.namespace,
        target,
        attached(routes, target).map(|r| &r.metadata),
    );
    vs.spec.http = ordered.into_iter().map(|(_, rule)| rule).collect();
    Some(vs)
}

/// The VirtualService, with no rules yet, that a Service's (or
/// ServiceEntry's) Gateway API routes of one layer make together: named
/// after it and `suffix` (apart from a written VirtualService of its name),
/// for its hosts, as old as the oldest of `routes`.
pub(crate) fn routes_virtual_service<'a>(
    suffix: &str,
    namespace: &str,
    target: &Target,
    routes: impl Iterator<Item = &'a ObjectMeta>,
) -> VirtualService {
    let mut vs = VirtualService::new(
        &target.virtual_service_name(suffix),
        VirtualServiceSpec {
            hosts: target.hosts.clone(),
            ..VirtualServiceSpec::default()
        },
    );
    vs.metadata.namespace = Some(namespace.to_owned());
    vs.metadata.creation_timestamp = routes
        .filter_map(|m| m.creation_timestamp.clone())
        .min_by_key(|t| t.0);
    vs
}

/// Sorts matches by precedence (see [`virtual_service`]; a GRPCRoute's,
/// [`MatchRank::grpc`], are never sorted with an HTTPRoute's).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct MatchRank {
    /// 0 exact, 1 prefix, 2 regular expression (Istio's order).
    path_kind: u8,
    path_length: Reverse<usize>,
    /// A GRPCRoute's method name's length.
    method_length: Reverse<usize>,
    no_method: bool,
    headers: Reverse<usize>,
    query_params: Reverse<usize>,
    created: i64,
    route: String,
    position: (usize, usize),
}

impl MatchRank {
    /// A GRPCRoute match, as the Gateway API orders them: the longer
    /// service name first, then the longer method name, then more header
    /// matches; then as for an HTTPRoute.
    pub(crate) fn grpc(
        service: usize,
        method: usize,
        headers: usize,
        created: i64,
        route: &str,
        position: (usize, usize),
    ) -> MatchRank {
        MatchRank {
            path_kind: 0,
            path_length: Reverse(service),
            method_length: Reverse(method),
            no_method: false,
            headers: Reverse(headers),
            query_params: Reverse(0),
            created,
            route: route.to_owned(),
            position,
        }
    }

    fn of(m: &HttpRouteMatch, created: i64, route: &str, position: (usize, usize)) -> MatchRank {
        let (kind, value) = path_of(m);
        let path_kind = match kind {
            "Exact" => 0,
            "RegularExpression" => 2,
            _ => 1,
        };
        MatchRank {
            path_kind,
            path_length: Reverse(if path_kind == 1 {
                prefix_of(value).len()
            } else {
                value.len()
            }),
            method_length: Reverse(0),
            no_method: m.method.is_none(),
            headers: Reverse(m.headers.len()),
            query_params: Reverse(m.query_params.len()),
            created,
            route: route.to_owned(),
            position,
        }
    }
}

fn path_of(m: &HttpRouteMatch) -> (&str, &str) {
    let kind = m
        .path
        .as_ref()
        .and_then(|p| p.kind.as_deref())
        .unwrap_or("PathPrefix");
    let value = m
        .path
        .as_ref()
        .and_then(|p| p.value.as_deref())
        .unwrap_or("/");
    (kind, value)
}

/// A `PathPrefix` value as Gateway API compares it: a trailing `/` does
/// not count (`/foo/` is `/foo`), and `/` stays `/`.
fn prefix_of(value: &str) -> &str {
    match value.trim_end_matches('/') {
        "" => "/",
        trimmed => trimmed,
    }
}

fn exact(value: &str) -> StringMatch {
    StringMatch {
        exact: Some(value.to_owned()),
        ..StringMatch::default()
    }
}

fn value_match(v: &HttpValueMatch) -> StringMatch {
    match v.kind.as_deref() {
        Some("RegularExpression") => StringMatch {
            regex: Some(v.value.clone()),
            ..StringMatch::default()
        },
        _ => exact(&v.value),
    }
}

/// Header or query matches by name, the first of a name counting (as the
/// Gateway API says), header names without case.
fn by_name(values: &[HttpValueMatch], lowercase: bool) -> BTreeMap<String, StringMatch> {
    let mut out = BTreeMap::new();
    for v in values {
        let name = if lowercase {
            v.name.to_ascii_lowercase()
        } else {
            v.name.clone()
        };
        out.entry(name).or_insert_with(|| value_match(v));
    }
    out
}

/// A duration the Gateway API may write as `0s`, which disables a timeout:
/// left out, as a VirtualService without one has none.
fn nonzero(duration: Option<&String>) -> Option<String> {
    duration
        .filter(|d| validate::duration("", d).is_ok_and(|d| !d.is_zero()))
        .cloned()
}

/// One match of `rule` as a VirtualService rule. A `PathPrefix` matches
/// whole path segments (`/foo` takes `/foo` and `/foo/bar`, not
/// `/foobar`), so it becomes two alternatives: the path itself, and the
/// prefix with a `/` after it.
///
/// A backend the route may not send to (another namespace's without a
/// ReferenceGrant) is not sent to: its share of requests is answered `500`,
/// as the Gateway API asks (a fault abort of that share), and a mirror to
/// one is left out.
fn convert_rule(
    backends: &Backends<'_>,
    rule: &HttpRouteRule,
    m: &HttpRouteMatch,
    port: Option<u16>,
) -> IstioHttpRoute {
    let base = HttpMatchRequest {
        method: m.method.as_deref().map(exact),
        headers: by_name(&m.headers, true),
        query_params: by_name(&m.query_params, false),
        port: port.map(u32::from),
        ..HttpMatchRequest::default()
    };
    let (kind, value) = path_of(m);
    let with_uri = |uri: StringMatch| HttpMatchRequest {
        uri: Some(uri),
        ..base.clone()
    };
    let prefix = |p: String| StringMatch {
        prefix: Some(p),
        ..StringMatch::default()
    };
    let matches = match kind {
        "Exact" => vec![with_uri(exact(value))],
        "RegularExpression" => vec![with_uri(StringMatch {
            regex: Some(value.to_owned()),
            ..StringMatch::default()
        })],
        _ => match prefix_of(value) {
            "/" => vec![with_uri(prefix("/".into()))],
            path => vec![with_uri(exact(path)), with_uri(prefix(format!("{path}/")))],
        },
    };
    let mut out = IstioHttpRoute {
        r#match: matches,
        ..IstioHttpRoute::default()
    };
    for filter in &rule.filters {
        if let Some(mirror) = &filter.request_mirror
            && backends.permitted(&mirror.backend_ref)
        {
            let share = match (&mirror.percent, &mirror.fraction) {
                (Some(p), _) => Some(f64::from(*p)),
                (None, Some(f)) => Some(
                    f64::from(f.numerator) * 100.0 / f64::from(f.denominator.unwrap_or(100).max(1)),
                ),
                (None, None) => None,
            };
            out.mirrors.push(HttpMirrorPolicy {
                destination: backends.destination(&mirror.backend_ref),
                percentage: share.map(|value| Percent { value }),
            });
        }
        if let Some(redirect) = &filter.request_redirect {
            out.redirect = Some(redirect_of(redirect));
        }
        if let Some(rewrite) = &filter.url_rewrite {
            out.rewrite = url_rewrite(rewrite, kind, value);
        }
        if let Some(cors) = &filter.cors {
            out.cors_policy = Some(cors_policy(cors));
        }
    }
    out.headers = headers(&rule.filters);
    if out.redirect.is_none() {
        let weights: Vec<i64> = rule
            .backend_refs
            .iter()
            .map(|b| i64::from(b.weight.unwrap_or(1).max(0)))
            .collect();
        let total: i64 = weights.iter().sum();
        let permitted: Vec<i64> = weights
            .iter()
            .zip(&rule.backend_refs)
            .map(|(w, b)| {
                if backends.permitted(&b.reference()) {
                    *w
                } else {
                    0
                }
            })
            .collect();
        let refused = total - permitted.iter().sum::<i64>();
        // A call that no backend takes: a GRPCRoute answers UNAVAILABLE (a
        // gRPC client reads a 500 as INTERNAL), an HTTPRoute 500.
        let unavailable = |share: f64| HttpFaultInjection {
            delay: None,
            abort: Some(FaultAbort {
                http_status: (backends.kind != "GRPCRoute").then_some(500),
                grpc_status: (backends.kind == "GRPCRoute").then(|| "UNAVAILABLE".to_owned()),
                percentage: Some(Percent { value: share }),
            }),
        };
        if refused == total {
            // No backend, all at weight 0, or none permitted: Gateway API
            // answers 500 (the fault answers first, for gRPC's status).
            out.direct_response = Some(HttpDirectResponse {
                status: 500,
                body: None,
            });
            if backends.kind == "GRPCRoute" {
                out.fault = Some(unavailable(100.0));
            }
        } else {
            out.route = percentages(&permitted)
                .into_iter()
                .zip(&rule.backend_refs)
                .filter(|(weight, _)| *weight > 0)
                .map(|(weight, backend)| HttpRouteDestination {
                    destination: backends.destination(&backend.reference()),
                    weight: Some(weight),
                    headers: headers(&backend.filters),
                })
                .collect();
            if refused > 0 {
                out.fault = Some(unavailable(refused as f64 * 100.0 / total as f64));
            }
        }
    }
    let timeouts = rule.timeouts.clone().unwrap_or_default();
    let request_timeout = nonzero(timeouts.request.as_ref());
    let backend_timeout = nonzero(timeouts.backend_request.as_ref());
    out.timeout = request_timeout.clone();
    match &rule.retry {
        // Retries disabled: one try, which the backend timeout bounds too.
        Some(retry) if retry.attempts == Some(0) => {
            out.retries = Some(HttpRetry {
                attempts: Some(0),
                ..HttpRetry::default()
            });
            out.timeout = shorter(request_timeout, backend_timeout);
        }
        Some(retry) => {
            // Gateway API retries no status unless told, but connection
            // failures always.
            let mut on = vec!["connect-failure".to_owned(), "refused-stream".to_owned()];
            on.extend(retry.codes.iter().map(ToString::to_string));
            out.retries = Some(HttpRetry {
                attempts: Some(retry.attempts.unwrap_or(1)),
                per_try_timeout: backend_timeout,
                retry_on: on.join(","),
                backoff: nonzero(retry.backoff.as_ref()),
                ..HttpRetry::default()
            });
        }
        // Istio's default retries apply, as for a VirtualService without
        // `retries`; a backend timeout then bounds the request, as Istio
        // writes it.
        None => out.timeout = shorter(request_timeout, backend_timeout),
    }
    out
}

/// The shorter of two optional durations (either alone when one is `None`).
fn shorter(a: Option<String>, b: Option<String>) -> Option<String> {
    let length = |d: &String| validate::duration("", d).unwrap_or_default();
    match (a, b) {
        (Some(a), Some(b)) => Some(if length(&b) < length(&a) { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// What Istio writes at the start of a redirect's `uri` for a Gateway API
/// `ReplacePrefixMatch`: the rest replaces the path prefix the rule matched
/// (the waypoint reads it so only in the VirtualServices made from routes,
/// as Istio does).
pub const REDIRECT_PREFIX_MARKER: &str = "%PREFIX()%";

/// A redirect's port as the Gateway API asks: the one given; else the
/// scheme's default when the scheme changes; else the request's own. A
/// prefix replacement is written with [`REDIRECT_PREFIX_MARKER`].
fn redirect_of(redirect: &RedirectFilter) -> HttpRedirect {
    let port = redirect.port.and_then(|p| u32::try_from(p).ok());
    let derive_port = match (port, &redirect.scheme) {
        (Some(_), _) => None,
        (None, Some(_)) => Some(RedirectPortSelection::FromProtocolDefault),
        (None, None) => Some(RedirectPortSelection::FromRequestPort),
    };
    let uri = match redirect.path.as_ref().map(|p| {
        (
            p.kind.as_str(),
            &p.replace_full_path,
            &p.replace_prefix_match,
        )
    }) {
        Some(("ReplaceFullPath", Some(full), _)) => full.clone(),
        Some(("ReplacePrefixMatch", _, Some(replacement))) => {
            format!("{REDIRECT_PREFIX_MARKER}{replacement}")
        }
        _ => String::new(),
    };
    HttpRedirect {
        uri,
        authority: redirect.hostname.clone().unwrap_or_default(),
        port,
        derive_port,
        scheme: redirect.scheme.clone().unwrap_or_default(),
        // Gateway API's default is 302, Istio's 301.
        redirect_code: Some(
            redirect
                .status_code
                .and_then(|c| u32::try_from(c).ok())
                .unwrap_or(302),
        ),
    }
}

/// Relative weights (not all 0) as percentages summing to 100: rounded
/// down, the rest given to the largest remainders, and every positive
/// weight at least 1 % (taken from the largest share), so that a small
/// backend is not dropped: 1 % is a VirtualService's step.
pub(crate) fn percentages(weights: &[i64]) -> Vec<i32> {
    let total: i64 = weights.iter().sum();
    let mut shares: Vec<i64> = weights.iter().map(|w| w * 100 / total).collect();
    let left = usize::try_from(100 - shares.iter().sum::<i64>()).unwrap_or(0);
    let mut by_remainder: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] > 0).collect();
    by_remainder.sort_by_key(|&i| Reverse(weights[i] * 100 % total));
    for &i in by_remainder.iter().cycle().take(left) {
        shares[i] += 1;
    }
    for i in 0..shares.len() {
        if weights[i] > 0
            && shares[i] == 0
            && let Some(largest) = (0..shares.len()).max_by_key(|&j| shares[j])
        {
            shares[largest] -= 1;
            shares[i] = 1;
        }
    }
    shares
        .into_iter()
        .map(|s| i32::try_from(s).unwrap_or(0))
        .collect()
}

fn header_operations(into: &mut HeaderOperations, filter: &HeaderFilter) {
    for h in &filter.set {
        into.set
            .insert(h.name.to_ascii_lowercase(), h.value.clone());
    }
    for h in &filter.add {
        into.add
            .insert(h.name.to_ascii_lowercase(), h.value.clone());
    }
    into.remove
        .extend(filter.remove.iter().map(|n| n.to_ascii_lowercase()));
}

/// The header changes of `filters` (a rule's, or a backend's), `None` when
/// they change none.
fn headers(filters: &[HttpRouteFilter]) -> Option<Headers> {
    let mut request = HeaderOperations::default();
    let mut response = HeaderOperations::default();
    for filter in filters {
        if let Some(h) = &filter.request_header_modifier {
            header_operations(&mut request, h);
        }
        if let Some(h) = &filter.response_header_modifier {
            header_operations(&mut response, h);
        }
    }
    let empty = |h: &HeaderOperations| h.set.is_empty() && h.add.is_empty() && h.remove.is_empty();
    (!empty(&request) || !empty(&response)).then(|| Headers {
        request: (!empty(&request)).then_some(request),
        response: (!empty(&response)).then_some(response),
    })
}

/// `urlRewrite` on a rule matched by `kind`/`value`; `None` when it changes
/// nothing. A prefix replacement keeps what follows the matched segments
/// (`/foo/x` with `/foo` replaced by `/bar` is `/bar/x`, by `/` is `/x`),
/// written as a regular expression rewrite since a VirtualService's `uri`
/// rewrite replaces characters, not segments.
fn url_rewrite(rewrite: &UrlRewriteFilter, kind: &str, value: &str) -> Option<HttpRewrite> {
    let mut out = HttpRewrite {
        authority: rewrite.hostname.clone().unwrap_or_default(),
        ..HttpRewrite::default()
    };
    // A substitution reads `\\` as one backslash.
    let escape = |text: &str| text.replace('\\', "\\\\");
    let path = rewrite.path.as_ref().map(|m| {
        (
            m.kind.as_str(),
            &m.replace_full_path,
            &m.replace_prefix_match,
        )
    });
    match path {
        Some(("ReplaceFullPath", Some(full), _)) => {
            out.uri_regex_rewrite = Some(RegexRewrite {
                r#match: "^.*$".into(),
                rewrite: escape(full),
            });
        }
        Some(("ReplacePrefixMatch", _, Some(replacement))) if kind == "PathPrefix" => {
            let prefix = prefix_of(value);
            let escaped = regex::escape(if prefix == "/" { "" } else { prefix });
            let replacement = escape(replacement.trim_end_matches('/'));
            out.uri_regex_rewrite = Some(if replacement.is_empty() {
                // `/` for the matched segments: what follows them, or `/`.
                RegexRewrite {
                    r#match: format!("^{escaped}/?(.*)$"),
                    rewrite: "/\\1".into(),
                }
            } else {
                // The matched segments, then `/rest` or nothing.
                RegexRewrite {
                    r#match: format!("^{escaped}(/.*)?$"),
                    rewrite: format!("{replacement}\\1"),
                }
            });
        }
        _ => {}
    }
    (!out.authority.is_empty() || out.uri_regex_rewrite.is_some()).then_some(out)
}

#[cfg(test)]
mod tests;
