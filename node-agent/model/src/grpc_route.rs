//! `gateway.networking.k8s.io` GRPCRoute for Services (GAMMA), as Istio's
//! ambient mode takes it: a gRPC call is an HTTP/2 `POST` to
//! `/<service>/<method>`, so a GRPCRoute is read as the HTTPRoute it amounts
//! to ([`GRPCRoute::as_http_route`]) and goes the same way from there (the
//! same checks, a VirtualService), but for the order of its rules, which is
//! gRPC's own ([`virtual_service`]). A Service with GRPCRoutes is routed by
//! them alone: the Gateway API gives them precedence over its HTTPRoutes.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    FieldError,
    http_route::{
        self, Backends, HTTPRoute, HttpBackendRef, HttpPathMatch, HttpRouteFilter, HttpRouteMatch,
        HttpRouteRule, HttpRouteSpec, HttpValueMatch, MatchRank, ParentReference, RouteStatus,
    },
    istio::VirtualService,
    reference_grant::Grants,
};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "GRPCRoute",
    namespaced,
    status = "RouteStatus",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<ParentReference>,
    /// Ignored for Service parents, as for an HTTPRoute.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<GrpcRouteRule>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Alternatives; none means every call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<GrpcRouteMatch>,
    /// `RequestHeaderModifier`, `ResponseHeaderModifier` and
    /// `RequestMirror`, as on an HTTPRoute.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HttpRouteFilter>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<HttpBackendRef>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<GrpcMethodMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HttpValueMatch>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcMethodMatch {
    /// `Exact` (the default) or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The fully qualified service, `package.Service`; any when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The method; any when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// The filters a GRPCRoute may have that Warren applies (`ExtensionRef`
/// is refused when read).
const FILTERS: [&str; 3] = [
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
];

/// The VirtualService of Service `service` in `namespace` made of its
/// GRPCRoutes `routes` (see [`http_route::virtual_service`]), their matches
/// in the Gateway API's order for gRPC: the longer service name first, then
/// the longer method name, then more header matches; then the older route,
/// its name, and the order written.
pub fn virtual_service(
    namespace: &str,
    target: &http_route::Target,
    cluster_domain: &str,
    routes: &[&GRPCRoute],
    grants: &Grants,
) -> Option<VirtualService> {
    let http: Vec<HTTPRoute> = routes.iter().map(|r| r.as_http_route()).collect();
    let http: Vec<&HTTPRoute> = http.iter().collect();
    let backends = Backends {
        kind: "GRPCRoute",
        namespace,
        cluster_domain,
        grants,
    };
    http_route::assemble(&backends, target, &http, &|k, i, j| {
        let route = routes[k];
        let created = route
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second());
        let m = route.spec.rules[i].matches.get(j);
        let method = m.and_then(|m| m.method.as_ref());
        let length = |part: Option<&String>| part.map_or(0, String::len);
        MatchRank::grpc(
            length(method.and_then(|m| m.service.as_ref())),
            length(method.and_then(|m| m.method.as_ref())),
            m.map_or(0, |m| m.headers.len()),
            created,
            route.metadata.name.as_deref().unwrap_or_default(),
            (i, j),
        )
    })
}

impl http_route::Parents for GRPCRoute {
    fn parent_refs(&self) -> &[ParentReference] {
        &self.spec.parent_refs
    }
    fn parent_refs_mut(&mut self) -> &mut Vec<ParentReference> {
        &mut self.spec.parent_refs
    }
}

impl GRPCRoute {
    /// The HTTPRoute this route amounts to, named `grpcroute:<name>` so that
    /// its rules never share a name with an HTTPRoute's.
    pub fn as_http_route(&self) -> HTTPRoute {
        let rules = self
            .spec
            .rules
            .iter()
            .map(|rule| HttpRouteRule {
                name: rule.name.clone(),
                matches: rule
                    .matches
                    .iter()
                    .map(|m| HttpRouteMatch {
                        path: m.method.as_ref().and_then(path_of),
                        headers: m.headers.clone(),
                        ..HttpRouteMatch::default()
                    })
                    .collect(),
                filters: rule.filters.clone(),
                backend_refs: rule.backend_refs.clone(),
                timeouts: None,
                retry: None,
            })
            .collect();
        let name = self.metadata.name.as_deref().unwrap_or_default();
        let mut route = HTTPRoute::new(
            &format!("grpcroute:{name}"),
            HttpRouteSpec {
                parent_refs: self.spec.parent_refs.clone(),
                hostnames: self.spec.hostnames.clone(),
                rules,
            },
        );
        route
            .metadata
            .namespace
            .clone_from(&self.metadata.namespace);
        route
            .metadata
            .creation_timestamp
            .clone_from(&self.metadata.creation_timestamp);
        route
    }
}

/// A method match as a path match: `/<service>/<method>` exactly, else a
/// regular expression with each part given (escaped, or a group of its own
/// when it is one) or any name.
fn path_of(m: &GrpcMethodMatch) -> Option<HttpPathMatch> {
    let regex = m.kind.as_deref() == Some("RegularExpression");
    let path = |kind: &str, value: String| HttpPathMatch {
        kind: Some(kind.to_owned()),
        value: Some(value),
    };
    match (m.service.as_deref(), m.method.as_deref(), regex) {
        (None, None, _) => None,
        (Some(service), Some(method), false) => Some(path("Exact", format!("/{service}/{method}"))),
        (service, method, _) => {
            let part = |p: Option<&str>| match p {
                None => "[^/]+".to_owned(),
                Some(p) if regex => format!("(?:{p})"),
                Some(p) => regex::escape(p),
            };
            Some(path(
                "RegularExpression",
                format!("/{}/{}", part(service), part(method)),
            ))
        }
    }
}

/// Checks a GRPCRoute: its method matches here, the rest as the HTTPRoute it
/// amounts to (whose field paths are the same but for `method`).
pub fn validate(route: &GRPCRoute) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (i, rule) in route.spec.rules.iter().enumerate() {
        for (j, m) in rule.matches.iter().enumerate() {
            let Some(method) = &m.method else { continue };
            let path = format!("spec.rules[{i}].matches[{j}].method");
            let kind = method.kind.as_deref().unwrap_or("Exact");
            if method.service.is_none() && method.method.is_none() {
                errors.push(FieldError::new(&path, "give a service, a method or both"));
            }
            if !matches!(kind, "Exact" | "RegularExpression") {
                errors.push(FieldError::new(
                    format!("{path}.type"),
                    format!("{kind:?} is not Exact or RegularExpression"),
                ));
                continue;
            }
            for (field, value) in [("service", &method.service), ("method", &method.method)] {
                let Some(value) = value else { continue };
                let path = format!("{path}.{field}");
                if value.len() > 1024 {
                    errors.push(FieldError::new(path, "longer than 1024 characters"));
                } else if kind == "RegularExpression" {
                    if let Err(e) = regex::Regex::new(value) {
                        errors.push(FieldError::new(
                            path,
                            format!("not a regular expression: {e}"),
                        ));
                    }
                } else if !is_name(value, field == "service") {
                    errors.push(FieldError::new(
                        path,
                        format!("{value:?} is not a gRPC {field} name"),
                    ));
                }
            }
        }
        let backend_filters = rule.backend_refs.iter().enumerate().flat_map(|(k, b)| {
            b.filters
                .iter()
                .enumerate()
                .map(move |(j, f)| (format!("spec.rules[{i}].backendRefs[{k}].filters[{j}]"), f))
        });
        let rule_filters = rule
            .filters
            .iter()
            .enumerate()
            .map(|(j, f)| (format!("spec.rules[{i}].filters[{j}]"), f));
        for (path, filter) in rule_filters.chain(backend_filters) {
            if !FILTERS.contains(&filter.kind.as_str()) {
                errors.push(FieldError::new(
                    format!("{path}.type"),
                    format!(
                        "{:?} is not supported on a GRPCRoute (supported: {})",
                        filter.kind,
                        FILTERS.join(", ")
                    ),
                ));
            }
        }
    }
    if errors.is_empty() {
        errors.extend(crate::http_route::validate(&route.as_http_route()));
    }
    errors
}

/// A gRPC service (`package.Service`, dots allowed, a leading one too) or
/// method name.
fn is_name(value: &str, dotted: bool) -> bool {
    let value = if dotted {
        value.strip_prefix('.').unwrap_or(value)
    } else {
        value
    };
    let part = |p: &str| {
        p.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if dotted {
        value.split('.').all(part)
    } else {
        part(value)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn grpc_route(rules: serde_json::Value) -> GRPCRoute {
        let spec = json!({
            "parentRefs": [{ "group": "", "kind": "Service", "name": "grpc", "port": 9090 }],
            "rules": rules,
        });
        let mut route = GRPCRoute::new("api", serde_json::from_value(spec).expect("a spec"));
        route.metadata.namespace = Some("shop".into());
        route
    }

    #[test]
    fn calls_no_backend_takes_are_unavailable() {
        let route = grpc_route(json!([
            { "matches": [{ "method": { "method": "Check" } }],
              "backendRefs": [
                { "name": "grpc", "port": 9090 },
                { "name": "grpc", "namespace": "data", "port": 9090, "weight": 3 },
              ] },
            { "backendRefs": [] },
        ]));
        assert_eq!(validate(&route), Vec::new());
        let vs = virtual_service(
            "shop",
            &crate::http_route::Target::service("shop", "grpc", "cluster.local"),
            "cluster.local",
            &[&route],
            &Grants::default(),
        )
        .expect("a VirtualService");
        assert!(crate::validate::virtual_service(&vs).is_empty());
        let abort = |i: usize| {
            vs.spec.http[i]
                .fault
                .as_ref()
                .and_then(|f| f.abort.clone())
                .expect("an abort")
        };
        // The share of a backend without a grant, as gRPC says it.
        assert_eq!(abort(0).grpc_status.as_deref(), Some("UNAVAILABLE"));
        assert_eq!(abort(0).http_status, None);
        assert_eq!(abort(0).percentage.map(|p| p.value), Some(75.0));
        // No backend at all: every call.
        assert_eq!(abort(1).grpc_status.as_deref(), Some("UNAVAILABLE"));
        assert_eq!(abort(1).percentage.map(|p| p.value), Some(100.0));
    }

    #[test]
    fn method_matches_become_paths() {
        let route = grpc_route(json!([
            { "matches": [{ "method": { "service": "grpc.health.v1.Health", "method": "Check" } }],
              "backendRefs": [{ "name": "health", "port": 9090 }] },
            { "matches": [{ "method": { "service": "shop.Cart" } }],
              "backendRefs": [{ "name": "cart", "port": 9090 }] },
            { "matches": [{ "method": { "method": "Watch" }, "headers": [{ "name": "x-v", "value": "2" }] }],
              "backendRefs": [{ "name": "watch", "port": 9090 }] },
            { "matches": [{ "method": { "type": "RegularExpression", "service": "shop\\..*" } }],
              "backendRefs": [{ "name": "shop", "port": 9090 }] },
            { "backendRefs": [{ "name": "grpc", "port": 9090 }] },
        ]));
        assert_eq!(validate(&route), Vec::new());
        let vs = virtual_service(
            "shop",
            &crate::http_route::Target::service("shop", "grpc", "cluster.local"),
            "cluster.local",
            &[&route],
            &Grants::default(),
        )
        .expect("a VirtualService");
        let uris: Vec<(String, String)> = vs
            .spec
            .http
            .iter()
            .map(|rule| {
                let uri = rule.r#match[0].uri.clone().unwrap_or_default();
                let host = &rule.route[0].destination.host;
                let target = host.split('.').next().unwrap_or_default().to_owned();
                let form = match (uri.exact, uri.prefix, uri.regex) {
                    (Some(e), _, _) => format!("exact {e}"),
                    (_, Some(p), _) => format!("prefix {p}"),
                    (_, _, Some(r)) => format!("regex {r}"),
                    _ => "any".into(),
                };
                (target, form)
            })
            .collect();
        let uris: Vec<(&str, &str)> = uris.iter().map(|(t, f)| (t.as_str(), f.as_str())).collect();
        assert_eq!(
            uris,
            [
                // The longest service name first (`shop.Cart` has 9
                // characters, the pattern `shop\..*` 8); a method before
                // none.
                ("health", "exact /grpc.health.v1.Health/Check"),
                ("cart", "regex /shop\\.Cart/[^/]+"),
                ("shop", "regex /(?:shop\\..*)/[^/]+"),
                ("watch", "regex /[^/]+/Watch"),
                ("grpc", "prefix /"),
            ]
        );
        assert!(vs.spec.http[0].name.starts_with("grpcroute:api."));
    }

    #[test]
    fn bad_method_matches_and_http_only_filters_are_refused() {
        let route = grpc_route(json!([{
            "matches": [
                { "method": {} },
                { "method": { "service": "not a service" } },
                { "method": { "type": "RegularExpression", "method": "(" } },
            ],
            "filters": [{ "type": "URLRewrite", "urlRewrite": { "hostname": "x" } }],
            "backendRefs": [{ "name": "grpc", "port": 9090 }],
        }]));
        let found: Vec<String> = validate(&route)
            .into_iter()
            .map(|e| format!("{}: {}", e.path, e.reason))
            .collect();
        for expected in [
            "spec.rules[0].matches[0].method: give a service",
            "spec.rules[0].matches[1].method.service: \"not a service\" is not a gRPC service name",
            "spec.rules[0].matches[2].method.method: not a regular expression",
            "spec.rules[0].filters[0].type: \"URLRewrite\" is not supported on a GRPCRoute",
        ] {
            assert!(
                found.iter().any(|f| f.starts_with(expected)),
                "missing {expected:?} in {found:#?}"
            );
        }
    }
}
