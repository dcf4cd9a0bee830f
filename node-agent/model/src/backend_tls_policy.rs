//! `gateway.networking.k8s.io` BackendTLSPolicy: TLS the waypoint starts to
//! the endpoints of a Service (or of an Istio ServiceEntry), for workloads
//! that serve HTTPS themselves while their clients speak plain HTTP to the
//! mesh. It is the Gateway API's form of a DestinationRule's `tls.mode:
//! SIMPLE`: the server is asked for `hostname` (SNI) and its certificate
//! must chain to the CA bundle of the named ConfigMaps (or to the system's
//! trust anchors) and carry `hostname`, or one of `subjectAltNames`.
//!
//! The fields are typed and refuse unknown ones, and `options` are refused
//! (Warren knows none): TLS weaker than the policy asks is never started in
//! its name. Which policy applies to which port, and the CA bundles, are
//! the view's business (`node-agent/src/view/backend_tls.rs`).

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{FieldError, http_route::ParentKind, validate::is_dns1123_label};

/// The ConfigMap key a CA bundle is read from, as the Gateway API names it.
pub const CA_KEY: &str = "ca.crt";

/// The most `targetRefs`, `caCertificateRefs` and `subjectAltNames` the
/// Gateway API's CRD allows: larger lists are refused there too.
const MAX_TARGETS: usize = 16;
const MAX_CA_REFS: usize = 8;
const MAX_ALT_NAMES: usize = 5;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "BackendTLSPolicy",
    namespaced,
    status = "PolicyStatus",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendTlsPolicySpec {
    /// The Services (or ServiceEntries) of the policy's namespace it applies
    /// to, each whole or one port by name (`sectionName`).
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
    pub validation: Validation,
    /// Implementation-specific settings; Warren has none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// A policy's status, written by its controllers; read only so that an
/// object with a status parses.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<serde_json::Value>,
}

/// `LocalPolicyTargetReferenceWithSectionName`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRef {
    /// `""` (core) for a Service, `networking.istio.io` for a ServiceEntry.
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    /// A port of the target, by name; every port when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

impl TargetRef {
    /// What the target is (the kinds a route's parent may be, too); `None`
    /// for a kind Warren does not apply policies to.
    pub fn target_kind(&self) -> Option<ParentKind> {
        match (self.group.as_str(), self.kind.as_str()) {
            ("" | "core", "Service") => Some(ParentKind::Service),
            ("networking.istio.io", "ServiceEntry") => Some(ParentKind::ServiceEntry),
            _ => None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Validation {
    /// ConfigMaps of the policy's namespace whose `ca.crt` holds the CA
    /// bundle the server must chain to; all of them together.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca_certificate_refs: Vec<LocalObjectReference>,
    /// `System`: the trust anchors of the system the waypoint runs on,
    /// instead of `caCertificateRefs`.
    #[serde(
        default,
        rename = "wellKnownCACertificates",
        skip_serializing_if = "Option::is_none"
    )]
    pub well_known_ca_certificates: Option<WellKnownCaCertificates>,
    /// The server name asked for (SNI), and the name the certificate must
    /// carry when `subjectAltNames` lists none.
    pub hostname: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<SubjectAltName>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalObjectReference {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum WellKnownCaCertificates {
    System,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubjectAltName {
    #[serde(rename = "type")]
    pub kind: SanType,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uri: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SanType {
    #[default]
    Hostname,
    #[serde(rename = "URI")]
    Uri,
}

impl SubjectAltName {
    /// The name as the waypoint matches it: a DNS name, or a URI compared
    /// as written.
    pub fn value(&self) -> &str {
        match self.kind {
            SanType::Hostname => &self.hostname,
            SanType::Uri => &self.uri,
        }
    }
}

/// Checks a BackendTLSPolicy as the Gateway API's CRD and webhook would,
/// and refuses what Warren cannot honour (targets other than Services and
/// ServiceEntries, CA bundles other than ConfigMaps, any option).
pub fn validate(policy: &BackendTLSPolicy) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let spec = &policy.spec;
    let mut error = |path: String, reason: String| errors.push(FieldError::new(path, reason));
    match spec.target_refs.len() {
        0 => error(
            "spec.targetRefs".into(),
            "at least one target: a policy for nothing applies nowhere".into(),
        ),
        n if n > MAX_TARGETS => error(
            "spec.targetRefs".into(),
            format!("{n} targets; at most {MAX_TARGETS}"),
        ),
        _ => {}
    }
    for (i, target) in spec.target_refs.iter().enumerate() {
        let path = format!("spec.targetRefs[{i}]");
        if target.target_kind().is_none() {
            error(
                format!("{path}.kind"),
                format!(
                    "{:?} of group {:?}: Warren applies BackendTLSPolicies to Services (group \"\") and ServiceEntries (group networking.istio.io)",
                    target.kind, target.group
                ),
            );
        }
        if !is_subdomain(&target.name) {
            error(
                format!("{path}.name"),
                format!("{:?} is not a valid object name", target.name),
            );
        }
        if let Some(section) = &target.section_name
            && !is_dns1123_label(section)
        {
            error(
                format!("{path}.sectionName"),
                format!("{section:?} is not a port name (a DNS label)"),
            );
        }
        if spec.target_refs[..i].contains(target) {
            error(path, "the same target twice".into());
        }
    }
    let validation = &spec.validation;
    let hostname = &validation.hostname;
    if hostname.is_empty() {
        error(
            "spec.validation.hostname".into(),
            "required: the server name to ask for and check".into(),
        );
    } else if !is_precise_hostname(hostname) {
        error(
            "spec.validation.hostname".into(),
            format!(
                "{hostname:?} is not a precise host name (lowercase DNS labels, no wildcard, not an IP address)"
            ),
        );
    }
    match (
        validation.ca_certificate_refs.is_empty(),
        validation.well_known_ca_certificates,
    ) {
        (true, None) => error(
            "spec.validation".into(),
            "caCertificateRefs or wellKnownCACertificates is required: the CA the server must chain to".into(),
        ),
        (false, Some(_)) => error(
            "spec.validation".into(),
            "caCertificateRefs and wellKnownCACertificates exclude each other".into(),
        ),
        _ => {}
    }
    if validation.ca_certificate_refs.len() > MAX_CA_REFS {
        error(
            "spec.validation.caCertificateRefs".into(),
            format!(
                "{} references; at most {MAX_CA_REFS}",
                validation.ca_certificate_refs.len()
            ),
        );
    }
    for (i, reference) in validation.ca_certificate_refs.iter().enumerate() {
        let path = format!("spec.validation.caCertificateRefs[{i}]");
        if !(matches!(reference.group.as_str(), "" | "core") && reference.kind == "ConfigMap") {
            error(
                format!("{path}.kind"),
                format!(
                    "{:?} of group {:?}: Warren reads CA bundles from ConfigMaps (group \"\", key {CA_KEY})",
                    reference.kind, reference.group
                ),
            );
        }
        if !is_subdomain(&reference.name) {
            error(
                format!("{path}.name"),
                format!("{:?} is not a valid object name", reference.name),
            );
        }
    }
    if validation.subject_alt_names.len() > MAX_ALT_NAMES {
        error(
            "spec.validation.subjectAltNames".into(),
            format!(
                "{} names; at most {MAX_ALT_NAMES}",
                validation.subject_alt_names.len()
            ),
        );
    }
    for (i, san) in validation.subject_alt_names.iter().enumerate() {
        let path = format!("spec.validation.subjectAltNames[{i}]");
        match san.kind {
            SanType::Hostname if !san.uri.is_empty() => {
                error(format!("{path}.uri"), "only with type URI".into())
            }
            SanType::Hostname if !is_san_hostname(&san.hostname) => error(
                format!("{path}.hostname"),
                format!(
                    "{:?} is not a host name (DNS labels, a wildcard first label allowed)",
                    san.hostname
                ),
            ),
            SanType::Uri if !san.hostname.is_empty() => {
                error(format!("{path}.hostname"), "only with type Hostname".into())
            }
            SanType::Uri if !is_absolute_uri(&san.uri) => error(
                format!("{path}.uri"),
                format!(
                    "{:?} is not an absolute URI (scheme://…, e.g. spiffe://trust.domain/ns/x/sa/y)",
                    san.uri
                ),
            ),
            _ => {}
        }
    }
    for option in spec.options.keys() {
        error(
            format!("spec.options.{option}"),
            "Warren knows no BackendTLSPolicy option; it refuses the policy rather than start TLS other than it asks".into(),
        );
    }
    errors
}

fn is_subdomain(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.split('.').all(is_dns1123_label)
}

/// The Gateway API's `PreciseHostname`: no wildcard, no IP address.
fn is_precise_hostname(name: &str) -> bool {
    name.parse::<std::net::IpAddr>().is_err() && is_subdomain(name)
}

/// A certificate's DNS name as a policy may expect it: a precise name, or
/// one whose first label is `*`.
fn is_san_hostname(name: &str) -> bool {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    is_precise_hostname(rest)
}

fn is_absolute_uri(uri: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
        && !uri.chars().any(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn policy(spec: serde_json::Value) -> Result<BackendTLSPolicy, String> {
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "BackendTLSPolicy",
            "metadata": { "name": "tls", "namespace": "shop" },
            "spec": spec,
        }))
        .map_err(|e| e.to_string())
    }

    fn errors(spec: serde_json::Value) -> Vec<String> {
        validate(&policy(spec).expect("parses"))
            .into_iter()
            .map(|e| format!("{}: {}", e.path, e.reason))
            .collect()
    }

    #[test]
    fn a_policy_for_a_service_port_with_a_config_map_is_valid() {
        let spec = json!({
            "targetRefs": [
                { "group": "", "kind": "Service", "name": "api", "sectionName": "https" },
                { "group": "networking.istio.io", "kind": "ServiceEntry", "name": "partner" },
            ],
            "validation": {
                "caCertificateRefs": [{ "group": "", "kind": "ConfigMap", "name": "api-ca" }],
                "hostname": "api.shop.example",
                "subjectAltNames": [
                    { "type": "Hostname", "hostname": "*.shop.example" },
                    { "type": "URI", "uri": "spiffe://cluster.local/ns/shop/sa/api" },
                ],
            },
        });
        assert_eq!(errors(spec.clone()), Vec::<String>::new());
        let parsed = policy(spec).unwrap();
        assert_eq!(
            parsed.spec.target_refs[1].target_kind(),
            Some(ParentKind::ServiceEntry)
        );
        assert_eq!(
            parsed.spec.validation.subject_alt_names[1].value(),
            "spiffe://cluster.local/ns/shop/sa/api"
        );
        assert_eq!(
            errors(json!({
                "targetRefs": [{ "group": "", "kind": "Service", "name": "api" }],
                "validation": { "wellKnownCACertificates": "System", "hostname": "api.example" },
            })),
            Vec::<String>::new()
        );
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_path() {
        let found = errors(json!({
            "targetRefs": [
                { "group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint" },
                { "group": "", "kind": "Service", "name": "api", "sectionName": "HTTPS" },
                { "group": "", "kind": "Service", "name": "api", "sectionName": "HTTPS" },
            ],
            "validation": {
                "caCertificateRefs": [{ "group": "", "kind": "Secret", "name": "api-ca" }],
                "wellKnownCACertificates": "System",
                "hostname": "*.shop.example",
                "subjectAltNames": [
                    { "type": "URI", "uri": "not a uri" },
                    { "type": "Hostname", "hostname": "a.example", "uri": "spiffe://x/y" },
                ],
            },
            "options": { "example.com/min-version": "1.3" },
        }));
        let paths: Vec<&str> = found
            .iter()
            .map(|e| e.split(':').next().unwrap_or_default())
            .collect();
        assert_eq!(
            paths,
            [
                "spec.targetRefs[0].kind",
                "spec.targetRefs[1].sectionName",
                "spec.targetRefs[2].sectionName",
                "spec.targetRefs[2]",
                "spec.validation.hostname",
                "spec.validation",
                "spec.validation.caCertificateRefs[0].kind",
                "spec.validation.subjectAltNames[0].uri",
                "spec.validation.subjectAltNames[1].uri",
                "spec.options.example.com/min-version",
            ],
            "{found:#?}"
        );
        // No target, no CA, an IP address for a host name.
        let found = errors(json!({
            "targetRefs": [],
            "validation": { "hostname": "10.0.0.1" },
        }));
        assert_eq!(found.len(), 3, "{found:#?}");
        // A field Warren does not know is refused when read.
        assert!(
            policy(json!({
                "targetRefs": [{ "group": "", "kind": "Service", "name": "api" }],
                "validation": { "hostname": "a.example", "wellKnownCACertificates": "System", "ocsp": true },
            }))
            .is_err()
        );
        assert!(
            policy(json!({
                "targetRefs": [{ "group": "", "kind": "Service", "name": "api" }],
                "validation": { "hostname": "a.example", "wellKnownCACertificates": "Mozilla" },
            }))
            .is_err()
        );
    }
}
