//! `gateway.networking.k8s.io` ReferenceGrant: a namespace's consent to
//! being routed to from another one. A route may send to a Service of
//! another namespace only when a ReferenceGrant in that namespace names the
//! route's kind and namespace (`from`) and the Service, or every Service
//! (`to`). Without one the backend is not routed to, as the Gateway API
//! asks: an owner of one namespace cannot aim another's traffic at yours,
//! nor read it by mirroring.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::FieldError;

/// The API group of every route kind (the `from` side).
pub const ROUTE_GROUP: &str = "gateway.networking.k8s.io";

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1beta1",
    kind = "ReferenceGrant",
    namespaced,
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReferenceGrantSpec {
    /// Who may refer: a kind of route in a namespace.
    #[serde(default)]
    pub from: Vec<GrantFrom>,
    /// To what in this namespace.
    #[serde(default)]
    pub to: Vec<GrantTo>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrantFrom {
    pub group: String,
    pub kind: String,
    pub namespace: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrantTo {
    /// `""` (core) for a Service.
    #[serde(default)]
    pub group: String,
    pub kind: String,
    /// One object; every object of the kind when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Checks a ReferenceGrant: at least one of each side, every field given.
pub fn validate(grant: &ReferenceGrant) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (field, empty) in [
        ("from", grant.spec.from.is_empty()),
        ("to", grant.spec.to.is_empty()),
    ] {
        if empty {
            errors.push(FieldError::new(
                format!("spec.{field}"),
                "at least one entry: a grant of nothing grants nothing",
            ));
        }
    }
    for (i, from) in grant.spec.from.iter().enumerate() {
        for (field, value) in [("kind", &from.kind), ("namespace", &from.namespace)] {
            if value.is_empty() {
                errors.push(FieldError::new(
                    format!("spec.from[{i}].{field}"),
                    "required",
                ));
            }
        }
    }
    for (i, to) in grant.spec.to.iter().enumerate() {
        if to.kind.is_empty() {
            errors.push(FieldError::new(format!("spec.to[{i}].kind"), "required"));
        }
    }
    errors
}

/// Every ReferenceGrant in force, asked whether a reference is permitted.
#[derive(Clone, Debug, Default)]
pub struct Grants {
    /// (the grant's namespace, its spec).
    grants: Vec<(String, ReferenceGrantSpec)>,
    /// Every reference permitted: for checking what a route would make
    /// whatever the grants.
    all: bool,
}

impl Grants {
    pub fn new<'a>(grants: impl IntoIterator<Item = &'a ReferenceGrant>) -> Grants {
        Grants {
            grants: grants
                .into_iter()
                .map(|g| {
                    let namespace = g.metadata.namespace.clone().unwrap_or_default();
                    (namespace, g.spec.clone())
                })
                .collect(),
            all: false,
        }
    }

    /// Grants that permit every reference.
    pub fn all() -> Grants {
        Grants {
            grants: Vec::new(),
            all: true,
        }
    }

    /// Whether a route of `route_kind` (`HTTPRoute`, …) in `from_namespace`
    /// may send to Service `service` of `to_namespace`: always within one
    /// namespace.
    pub fn permits_service(
        &self,
        route_kind: &str,
        from_namespace: &str,
        to_namespace: &str,
        service: &str,
    ) -> bool {
        if self.all || from_namespace == to_namespace {
            return true;
        }
        self.grants
            .iter()
            .filter(|(namespace, _)| namespace == to_namespace)
            .any(|(_, spec)| {
                spec.from.iter().any(|f| {
                    f.group == ROUTE_GROUP && f.kind == route_kind && f.namespace == from_namespace
                }) && spec.to.iter().any(|t| {
                    matches!(t.group.as_str(), "" | "core")
                        && t.kind == "Service"
                        && t.name.as_deref().is_none_or(|name| name == service)
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn grant(namespace: &str, spec: serde_json::Value) -> ReferenceGrant {
        let mut g = ReferenceGrant::new("g", serde_json::from_value(spec).expect("a grant spec"));
        g.metadata.namespace = Some(namespace.into());
        g
    }

    #[test]
    fn a_grant_permits_what_it_names_and_nothing_else() {
        let db = grant(
            "data",
            json!({
                "from": [{ "group": ROUTE_GROUP, "kind": "HTTPRoute", "namespace": "shop" }],
                "to": [{ "group": "", "kind": "Service", "name": "db" }],
            }),
        );
        let any = grant(
            "cache",
            json!({
                "from": [{ "group": ROUTE_GROUP, "kind": "TCPRoute", "namespace": "shop" }],
                "to": [{ "group": "", "kind": "Service" }],
            }),
        );
        let grants = Grants::new([&db, &any]);
        assert!(grants.permits_service("HTTPRoute", "shop", "data", "db"));
        // Another Service, kind of route, or namespace: not permitted.
        assert!(!grants.permits_service("HTTPRoute", "shop", "data", "users"));
        assert!(!grants.permits_service("GRPCRoute", "shop", "data", "db"));
        assert!(!grants.permits_service("HTTPRoute", "web", "data", "db"));
        // A grant in one namespace says nothing of another's.
        assert!(!grants.permits_service("HTTPRoute", "shop", "cache", "db"));
        // No name: every Service of the namespace.
        assert!(grants.permits_service("TCPRoute", "shop", "cache", "redis"));
        // Within a namespace there is nothing to grant.
        assert!(Grants::default().permits_service("HTTPRoute", "shop", "shop", "db"));
        assert!(!Grants::default().permits_service("HTTPRoute", "shop", "data", "db"));
        assert!(Grants::all().permits_service("HTTPRoute", "shop", "data", "db"));
    }

    #[test]
    fn an_empty_grant_is_refused() {
        let errors: Vec<String> = validate(&grant(
            "data",
            json!({ "from": [{ "group": ROUTE_GROUP, "kind": "", "namespace": "shop" }] }),
        ))
        .into_iter()
        .map(|e| e.path)
        .collect();
        assert_eq!(errors, ["spec.to", "spec.from[0].kind"]);
    }
}
