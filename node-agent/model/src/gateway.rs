//! `gateway.networking.k8s.io` Gateway: how a namespace asks for a waypoint.
//!
//! Warren reads only the Gateways of its own classes (`warren-waypoint`, and
//! `istio-waypoint` so Istio's YAML carries over); a Gateway of another class
//! belongs to some other controller and is left alone. The fields are the
//! ones a waypoint uses; Gateway API has many more that describe ingress
//! gateways, and they are refused by name rather than silently ignored.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{FieldError, Labels};

/// The class `warrenctl waypoint apply` writes.
pub const WARREN_WAYPOINT_CLASS: &str = "warren-waypoint";

/// Gateway classes that make a waypoint.
pub const WAYPOINT_CLASSES: [&str; 2] = [WARREN_WAYPOINT_CLASS, "istio-waypoint"];

/// The pod label naming the Gateway a pod implements (set by Kubernetes'
/// Gateway controllers on the Deployment they create).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// Label on a namespace or Service choosing its waypoint by name (`none`
/// opts out of the namespace's waypoint).
pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";

/// Label next to [`USE_WAYPOINT_LABEL`] naming the namespace of that
/// waypoint, when it is not the object's own.
pub const USE_WAYPOINT_NAMESPACE_LABEL: &str = "istio.io/use-waypoint-namespace";

/// Label on a waypoint Gateway saying which traffic it takes: `service` (the
/// default), `workload`, `all` or `none`, as Istio reads it.
pub const WAYPOINT_FOR_LABEL: &str = "istio.io/waypoint-for";

/// The values of [`WAYPOINT_FOR_LABEL`].
pub const WAYPOINT_FOR_VALUES: [&str; 4] = ["service", "workload", "all", "none"];

/// The port a waypoint listens on for HBONE.
pub const WAYPOINT_HBONE_PORT: u16 = 15008;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "Gateway",
    namespaced,
    status = "GatewayStatus",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    pub gateway_class_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Listener>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub port: i32,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Which namespaces' Services may use this waypoint (by
    /// `istio.io/use-waypoint-namespace`); its own namespace when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_routes: Option<AllowedRoutes>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllowedRoutes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<RouteNamespaces>,
    /// Accepted for Istio's YAML; a waypoint is bound by labels, not Routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinds: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteNamespaces {
    /// `Same` (the default), `All` or `Selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<NamespaceSelector>,
}

/// A label selector over namespaces, as Kubernetes defines it: every
/// `matchLabels` pair and every `matchExpressions` requirement must hold.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelRequirement>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelRequirement {
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl NamespaceSelector {
    fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    fn matches(&self, labels: &Labels) -> bool {
        labels.matches(&self.match_labels)
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                let listed = value.is_some_and(|v| r.values.iter().any(|w| w == v));
                match r.operator.as_str() {
                    "In" => listed,
                    "NotIn" => !listed,
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    // Refused when the Gateway is loaded; never admits.
                    _ => false,
                }
            })
    }

    fn errors(&self, path: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (i, r) in self.match_expressions.iter().enumerate() {
            let path = format!("{path}.matchExpressions[{i}]");
            match (r.operator.as_str(), r.values.is_empty()) {
                ("In" | "NotIn", false) | ("Exists" | "DoesNotExist", true) => {}
                ("In" | "NotIn", true) => errors.push(FieldError::new(
                    format!("{path}.values"),
                    format!("`{}` needs at least one value", r.operator),
                )),
                ("Exists" | "DoesNotExist", false) => errors.push(FieldError::new(
                    format!("{path}.values"),
                    format!("`{}` takes no values", r.operator),
                )),
                (other, _) => errors.push(FieldError::new(
                    format!("{path}.operator"),
                    format!("{other:?} is not one of In, NotIn, Exists, DoesNotExist"),
                )),
            }
        }
        errors
    }
}

impl Listener {
    /// Whether Services of `namespace` (labelled `labels`) may use the
    /// waypoint through this listener; `own` is the Gateway's namespace.
    fn admits(&self, own: &str, namespace: &str, labels: &Labels) -> bool {
        let from = self
            .allowed_routes
            .as_ref()
            .and_then(|r| r.namespaces.as_ref());
        match from.and_then(|n| n.from.as_deref()).unwrap_or("Same") {
            "All" => true,
            "Selector" => from
                .and_then(|n| n.selector.as_ref())
                .is_some_and(|s| s.matches(labels)),
            _ => namespace == own,
        }
    }
}

/// What the Gateway's controller reports: in Warren, the waypoint
/// controller (`warren-node-agent waypoint-controller`). Unknown fields are
/// accepted, not refused: the status is written by controllers, not by the
/// operator, and Gateway API adds to it (listener status, for one).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// `Accepted` and `Programmed`, as Gateway API defines them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Where the Gateway is reached, once known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GatewayStatusAddress>,
}

/// One address of a Gateway (`type` is `IPAddress` or `Hostname`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatusAddress {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    pub value: String,
}

/// Gateway API condition types and reasons the waypoint controller sets.
pub mod condition {
    pub const ACCEPTED: &str = "Accepted";
    pub const PROGRAMMED: &str = "Programmed";
    pub const REASON_ACCEPTED: &str = "Accepted";
    pub const REASON_INVALID: &str = "Invalid";
    pub const REASON_PROGRAMMED: &str = "Programmed";
    pub const REASON_PENDING: &str = "Pending";
}

impl Gateway {
    /// Whether this Gateway asks for a Warren waypoint.
    pub fn is_waypoint(&self) -> bool {
        WAYPOINT_CLASSES.contains(&self.spec.gateway_class_name.as_str())
    }

    /// Whether this waypoint takes traffic addressed to Services
    /// (`istio.io/waypoint-for` unset, `service` or `all`).
    pub fn serves_services(&self) -> bool {
        self.is_waypoint() && matches!(self.waypoint_for(), "service" | "all")
    }

    /// Whether this waypoint takes traffic addressed to pods themselves (by
    /// their own address, as clients of a headless Service or a StatefulSet's
    /// members reach them): `istio.io/waypoint-for` `workload` or `all`.
    pub fn serves_workloads(&self) -> bool {
        self.is_waypoint() && matches!(self.waypoint_for(), "workload" | "all")
    }

    /// Its `istio.io/waypoint-for` label, `service` when unset.
    pub fn waypoint_for(&self) -> &str {
        self.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(WAYPOINT_FOR_LABEL))
            .map_or("service", String::as_str)
    }

    /// Whether Services of `namespace` (labelled `labels`) may use this
    /// waypoint: always from its own namespace; from others when a
    /// listener's `allowedRoutes.namespaces` lets them, as Istio reads it.
    pub fn admits(&self, namespace: &str, labels: &Labels) -> bool {
        let own = self.metadata.namespace.as_deref().unwrap_or_default();
        namespace == own
            || self
                .spec
                .listeners
                .iter()
                .any(|l| l.admits(own, namespace, labels))
    }
}

pub fn validate(gateway: &Gateway) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if gateway.spec.gateway_class_name.is_empty() {
        errors.push(FieldError::new("spec.gatewayClassName", "required"));
    }
    // A misspelt value would make a waypoint that silently takes nothing.
    let waypoint_for = gateway.waypoint_for();
    if gateway.is_waypoint() && !WAYPOINT_FOR_VALUES.contains(&waypoint_for) {
        errors.push(FieldError::new(
            format!("metadata.labels[{WAYPOINT_FOR_LABEL}]"),
            format!(
                "{waypoint_for:?} is not one of {}",
                WAYPOINT_FOR_VALUES.join(", ")
            ),
        ));
    }
    for (i, listener) in gateway.spec.listeners.iter().enumerate() {
        if !(1..=65535).contains(&listener.port) {
            errors.push(FieldError::new(
                format!("spec.listeners[{i}].port"),
                format!("{} is not a port (1-65535)", listener.port),
            ));
        }
        let namespaces = listener
            .allowed_routes
            .as_ref()
            .and_then(|r| r.namespaces.as_ref());
        if let Some(namespaces) = namespaces {
            let path = format!("spec.listeners[{i}].allowedRoutes.namespaces");
            match (namespaces.from.as_deref(), &namespaces.selector) {
                (None | Some("Same" | "All"), None) => {}
                (Some("Selector"), Some(selector)) if !selector.is_empty() => {
                    errors.extend(selector.errors(&format!("{path}.selector")));
                }
                (Some("Selector"), _) => errors.push(FieldError::new(
                    format!("{path}.selector"),
                    "`from: Selector` needs a selector with matchLabels or matchExpressions",
                )),
                (None | Some("Same" | "All"), Some(_)) => errors.push(FieldError::new(
                    format!("{path}.selector"),
                    "only read with `from: Selector`",
                )),
                (Some(other), _) => errors.push(FieldError::new(
                    format!("{path}.from"),
                    format!("{other:?} is not one of All, Same, Selector"),
                )),
            }
        }
        if gateway.is_waypoint() && listener.protocol != "HBONE" {
            errors.push(FieldError::new(
                format!("spec.listeners[{i}].protocol"),
                format!("a waypoint listens for HBONE, not {:?}", listener.protocol),
            ));
        }
    }
    errors
}

/// The name a namespace's waypoint Gateway gets unless told otherwise (as
/// `istioctl waypoint apply` names it).
pub const DEFAULT_WAYPOINT_NAME: &str = "waypoint";

impl Gateway {
    /// The Gateway asking for a waypoint in `namespace`: class
    /// `warren-waypoint`, one HBONE listener `mesh` on 15008. The one
    /// definition `warrenctl waypoint apply`, the tests and the benches
    /// share, so they cannot drift apart.
    pub fn waypoint(namespace: &str, name: &str) -> Self {
        let mut gateway = Gateway::new(
            name,
            GatewaySpec {
                gateway_class_name: WARREN_WAYPOINT_CLASS.into(),
                listeners: vec![Listener {
                    name: "mesh".into(),
                    port: i32::from(WAYPOINT_HBONE_PORT),
                    protocol: "HBONE".into(),
                    hostname: None,
                    allowed_routes: None,
                }],
            },
        );
        gateway.metadata.namespace = Some(namespace.into());
        gateway
    }

    /// This Gateway labelled to take `traffic` (one of
    /// [`WAYPOINT_FOR_VALUES`]).
    pub fn taking(mut self, traffic: &str) -> Self {
        self.metadata
            .labels
            .get_or_insert_default()
            .insert(WAYPOINT_FOR_LABEL.to_owned(), traffic.to_owned());
        self
    }

    /// [`Gateway::waypoint`] as YAML, ready for a config folder or
    /// `kubectl apply`.
    pub fn waypoint_yaml(namespace: &str, name: &str) -> Result<String, serde_yaml::Error> {
        Self::waypoint(namespace, name).to_yaml()
    }

    /// This Gateway with every listener admitting Services of `namespaces`.
    pub fn admitting(mut self, namespaces: RouteNamespaces) -> Self {
        for listener in &mut self.spec.listeners {
            listener.allowed_routes = Some(AllowedRoutes {
                namespaces: Some(namespaces.clone()),
                kinds: None,
            });
        }
        self
    }

    pub fn to_yaml(&self) -> Result<String, serde_yaml::Error> {
        serde_yaml::to_string(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Object,
        object::{parse_document, split_documents},
    };

    #[test]
    fn the_waypoint_gateway_parses_back_and_validates() {
        let yaml = Gateway::waypoint_yaml("demo", "waypoint").expect("encodes");
        let docs = split_documents(&yaml).expect("one YAML document");
        assert_eq!(docs.len(), 1, "{yaml}");
        let object = parse_document(docs.into_iter().next().expect("doc"), "test")
            .unwrap_or_else(|err| panic!("{err}\n{yaml}"));
        let Object::Gateway(gateway) = object else {
            panic!("not a Gateway: {yaml}");
        };
        assert!(gateway.is_waypoint());
        assert_eq!(gateway.metadata.namespace.as_deref(), Some("demo"));
        assert_eq!(gateway.metadata.name.as_deref(), Some("waypoint"));
        assert!(validate(&gateway).is_empty(), "{yaml}");
        assert_eq!(*gateway, Gateway::waypoint("demo", "waypoint"));
    }

    fn parsed(yaml: &str) -> Result<Gateway, String> {
        let docs = split_documents(yaml).map_err(|e| e.to_string())?;
        let doc = docs.into_iter().next().ok_or("no document")?;
        match parse_document(doc, "test").map_err(|e| e.to_string())? {
            Object::Gateway(gateway) => Ok((*gateway).clone()),
            _ => Err(format!("not a Gateway: {yaml}")),
        }
    }

    fn gateway(yaml: &str) -> Gateway {
        parsed(yaml).unwrap_or_else(|err| panic!("{err}\n{yaml}"))
    }

    fn with_routes(allowed: &str) -> String {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
             metadata: {{ name: shared, namespace: infra }}\n\
             spec:\n  gatewayClassName: istio-waypoint\n  listeners:\n  \
             - {{ name: mesh, port: 15008, protocol: HBONE, allowedRoutes: {allowed} }}\n"
        )
    }

    #[test]
    fn other_namespaces_use_a_waypoint_only_as_its_listeners_allow() {
        let team = Labels::new([("team", "shop")]);
        let other = Labels::new([("team", "ads")]);
        let own = gateway(&Gateway::waypoint_yaml("infra", "w").expect("encodes"));
        assert!(own.admits("infra", &Labels::default()));
        assert!(!own.admits("shop", &team), "Same by default");

        let all = gateway(&with_routes("{ namespaces: { from: All } }"));
        assert!(all.admits("shop", &team) && all.admits("ads", &other));

        let selected = gateway(&with_routes(
            "{ namespaces: { from: Selector, selector: { matchLabels: { team: shop } } } }",
        ));
        assert!(selected.admits("shop", &team));
        assert!(!selected.admits("ads", &other));
        assert!(selected.admits("infra", &other), "its own namespace always");

        let expressions = gateway(&with_routes(
            "{ namespaces: { from: Selector, selector: { matchExpressions: [\
             { key: team, operator: In, values: [shop, books] }, \
             { key: frozen, operator: DoesNotExist }] } } }",
        ));
        assert!(expressions.admits("shop", &team));
        assert!(!expressions.admits("ads", &other));
        let frozen = Labels::new([("team", "shop"), ("frozen", "yes")]);
        assert!(
            !expressions.admits("shop", &frozen),
            "every requirement must hold"
        );
    }

    #[test]
    fn which_traffic_a_waypoint_takes_is_its_label_and_a_misspelt_one_is_refused() {
        let taking = |traffic: &str| Gateway::waypoint("demo", "w").taking(traffic);
        let unlabelled = Gateway::waypoint("demo", "w");
        assert!(unlabelled.serves_services() && !unlabelled.serves_workloads());
        assert!(taking("service").serves_services() && !taking("service").serves_workloads());
        assert!(!taking("workload").serves_services() && taking("workload").serves_workloads());
        assert!(taking("all").serves_services() && taking("all").serves_workloads());
        assert!(!taking("none").serves_services() && !taking("none").serves_workloads());
        for traffic in WAYPOINT_FOR_VALUES {
            let yaml = taking(traffic).to_yaml().expect("encodes");
            assert_eq!(gateway(&yaml), taking(traffic), "{yaml}");
        }
        let yaml = taking("workloads").to_yaml().expect("encodes");
        let refused = parsed(&yaml);
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("istio.io/waypoint-for") && e.contains("\"workloads\"")),
            "{refused:?}"
        );
    }

    #[test]
    fn allowed_routes_that_cannot_be_honoured_are_refused_by_name() {
        for (allowed, reason) in [
            (
                "{ namespaces: { from: Selector } }",
                "spec.listeners[0].allowedRoutes.namespaces.selector",
            ),
            (
                "{ namespaces: { from: Everyone } }",
                "spec.listeners[0].allowedRoutes.namespaces.from",
            ),
            (
                "{ namespaces: { from: All, selector: { matchLabels: { a: b } } } }",
                "spec.listeners[0].allowedRoutes.namespaces.selector",
            ),
            (
                "{ namespaces: { from: Selector, selector: { matchExpressions: [{ key: team, operator: Near, values: [a] }] } } }",
                "spec.listeners[0].allowedRoutes.namespaces.selector.matchExpressions[0].operator",
            ),
            (
                "{ namespaces: { from: Selector, selector: { matchExpressions: [{ key: team, operator: In }] } } }",
                "spec.listeners[0].allowedRoutes.namespaces.selector.matchExpressions[0].values",
            ),
        ] {
            let refused = parsed(&with_routes(allowed));
            assert!(
                refused.as_ref().is_err_and(|e| e.contains(reason)),
                "{allowed}: {refused:?}"
            );
        }
    }
}
