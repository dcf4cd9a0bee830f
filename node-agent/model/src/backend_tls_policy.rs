//! `gateway.networking.k8s.io` BackendTLSPolicy: TLS the waypoint starts to
//! the endpoints of a Service (or of an Istio ServiceEntry), for workloads
//! that serve HTTPS themselves while their clients speak plain HTTP to the
//! mesh. It is the Gateway API's form of a DestinationRule's `tls.mode:
//! SIMPLE`: the server is asked for `hostname` (SNI) and its certificate
//! must chain to the CA bundle of the named ConfigMaps (or to the system's
//! trust anchors) and carry `hostname`, or one of `subjectAltNames`.
//!
//! Refusing a policy would send its targets' traffic without TLS, so only
//! what the Gateway API's CRD itself refuses makes the object invalid
//! ([`validate`]). What is valid there but Warren cannot honour (a CA bundle
//! of another kind, an option, a field it does not know, an IP address as
//! the server name: [`cannot_honour`]) keeps the policy in force on its
//! ports, failing their connections closed with the reason. Targets of
//! other kinds are left to whoever implements them. Which policy applies to
//! which port, and the CA bundles, are the view's business
//! (`node-agent/src/view/backend_tls.rs`).

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
#[serde(rename_all = "camelCase")]
pub struct BackendTlsPolicySpec {
    /// The Services (or ServiceEntries) of the policy's namespace it applies
    /// to, each whole or one port by name (`sectionName`).
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
    pub validation: Validation,
    /// Implementation-specific settings; Warren has none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// Fields of a newer Gateway API than Warren knows, kept to fail the
    /// policy closed rather than ignore what they ask.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, serde_json::Value>,
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
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// `""` (core) for a Service, `networking.istio.io` for a ServiceEntry.
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    /// A port of the target, by name; every port when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// As [`BackendTlsPolicySpec::unknown`].
    #[serde(flatten)]
    pub unknown: BTreeMap<String, serde_json::Value>,
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

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Validation {
    /// ConfigMaps of the policy's namespace whose `ca.crt` holds the CA
    /// bundle the server must chain to; all of them together.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca_certificate_refs: Vec<LocalObjectReference>,
    /// `System`: the trust anchors of the system the waypoint runs on,
    /// instead of `caCertificateRefs` (the one value the Gateway API
    /// defines).
    #[serde(
        default,
        rename = "wellKnownCACertificates",
        skip_serializing_if = "Option::is_none"
    )]
    pub well_known_ca_certificates: Option<String>,
    /// The server name asked for (SNI), and the name the certificate must
    /// carry when `subjectAltNames` lists none.
    pub hostname: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<SubjectAltName>,
    /// As [`BackendTlsPolicySpec::unknown`].
    #[serde(flatten)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectReference {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    /// As [`BackendTlsPolicySpec::unknown`].
    #[serde(flatten)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

impl LocalObjectReference {
    pub fn is_config_map(&self) -> bool {
        matches!(self.group.as_str(), "" | "core") && self.kind == "ConfigMap"
    }
}

/// The `wellKnownCACertificates` value for the system's trust anchors.
pub const SYSTEM_CAS: &str = "System";

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubjectAltName {
    /// `Hostname` or `URI` (read as text: a type of a newer Gateway API
    /// fails the policy closed rather than the object to parse).
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uri: String,
    /// As [`BackendTlsPolicySpec::unknown`].
    #[serde(flatten)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SanType {
    Hostname,
    Uri,
}

impl SubjectAltName {
    /// Its type, if one Warren knows.
    pub fn san_type(&self) -> Option<SanType> {
        match self.kind.as_str() {
            "Hostname" => Some(SanType::Hostname),
            "URI" => Some(SanType::Uri),
            _ => None,
        }
    }

    /// The name as the waypoint matches it: a DNS name, or a URI compared
    /// as written.
    pub fn value(&self) -> &str {
        match self.san_type() {
            Some(SanType::Uri) => &self.uri,
            _ => &self.hostname,
        }
    }
}

/// Checks a BackendTLSPolicy as the Gateway API's CRD does: what fails
/// here is refused (its last good version, if any, stays in force).
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
        if target.kind.is_empty() {
            error(format!("{path}.kind"), "required".into());
        }
        if !is_object_name(&target.name) {
            error(format!("{path}.name"), "1 to 253 characters".into());
        }
        if let Some(section) = &target.section_name
            && !is_subdomain(section)
        {
            error(
                format!("{path}.sectionName"),
                format!("{section:?} is not a section name (lowercase DNS labels, dot-separated)"),
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
    } else if !is_subdomain(hostname) {
        error(
            "spec.validation.hostname".into(),
            format!("{hostname:?} is not a precise host name (lowercase DNS labels, no wildcard)"),
        );
    }
    match (
        validation.ca_certificate_refs.is_empty(),
        &validation.well_known_ca_certificates,
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
        if !is_object_name(&reference.name) {
            error(
                format!("spec.validation.caCertificateRefs[{i}].name"),
                "1 to 253 characters".into(),
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
        match san.san_type() {
            Some(SanType::Hostname) if san.hostname.is_empty() || !san.uri.is_empty() => {
                error(path, "type Hostname takes hostname, and no uri".into())
            }
            Some(SanType::Uri) if san.uri.is_empty() || !san.hostname.is_empty() => {
                error(path, "type URI takes uri, and no hostname".into())
            }
            _ => {}
        }
    }
    errors
}

/// What a valid policy asks that Warren cannot do, each with its field: the
/// policy then refuses its ports' connections with these reasons (it is
/// never dropped, which would send them without TLS). Targets of kinds
/// other than Services and ServiceEntries are not among them: the policy
/// does not apply to those here.
pub fn cannot_honour(policy: &BackendTLSPolicy) -> Vec<String> {
    let mut reasons = unsupported_ca_kinds(policy);
    reasons.extend(unsupported(policy));
    reasons
}

/// The `caCertificateRefs` Warren cannot read, being of another kind than a
/// ConfigMap (the Gateway API's `InvalidKind`).
pub fn unsupported_ca_kinds(policy: &BackendTLSPolicy) -> Vec<String> {
    let refs = policy
        .spec
        .validation
        .ca_certificate_refs
        .iter()
        .enumerate();
    refs.filter(|(_, reference)| !reference.is_config_map())
        .map(|(i, reference)| {
            format!(
                "validation.caCertificateRefs[{i}]: {:?} of group {:?}; Warren reads CA bundles from ConfigMaps (key {CA_KEY})",
                reference.kind, reference.group
            )
        })
        .collect()
}

/// What [`cannot_honour`] holds besides [`unsupported_ca_kinds`]: the
/// settings themselves (the Gateway API's `Invalid`).
pub fn unsupported(policy: &BackendTLSPolicy) -> Vec<String> {
    let spec = &policy.spec;
    let validation = &spec.validation;
    let mut reasons = Vec::new();
    if validation.hostname.parse::<std::net::IpAddr>().is_ok() {
        reasons.push(format!(
            "validation.hostname {:?} is an IP address, which cannot be a TLS server name",
            validation.hostname
        ));
    }
    if let Some(known) = &validation.well_known_ca_certificates
        && known != SYSTEM_CAS
    {
        reasons.push(format!(
            "validation.wellKnownCACertificates {known:?}: Warren knows {SYSTEM_CAS:?} only"
        ));
    }
    for (i, reference) in validation.ca_certificate_refs.iter().enumerate() {
        for field in reference.unknown.keys() {
            reasons.push(format!(
                "validation.caCertificateRefs[{i}].{field}: a field Warren does not know"
            ));
        }
    }
    for (i, san) in validation.subject_alt_names.iter().enumerate() {
        for field in san.unknown.keys() {
            reasons.push(format!(
                "validation.subjectAltNames[{i}].{field}: a field Warren does not know"
            ));
        }
        match san.san_type() {
            Some(SanType::Hostname) if !is_san_hostname(&san.hostname) => reasons.push(format!(
                "validation.subjectAltNames[{i}].hostname {:?} is not a DNS name",
                san.hostname
            )),
            Some(SanType::Uri) if !is_absolute_uri(&san.uri) => reasons.push(format!(
                "validation.subjectAltNames[{i}].uri {:?} is not an absolute URI",
                san.uri
            )),
            None => reasons.push(format!(
                "validation.subjectAltNames[{i}].type {:?}: Warren knows Hostname and URI",
                san.kind
            )),
            _ => {}
        }
    }
    // Fields of a target it applies to; another kind's are not its business.
    for (i, target) in spec.target_refs.iter().enumerate() {
        if target.target_kind().is_some() {
            for field in target.unknown.keys() {
                reasons.push(format!(
                    "targetRefs[{i}].{field}: a field Warren does not know"
                ));
            }
        }
    }
    for option in spec.options.keys() {
        reasons.push(format!(
            "options.{option}: Warren knows no BackendTLSPolicy option, and starts no TLS other than the policy asks"
        ));
    }
    let unknown = (spec.unknown.keys().map(|k| format!("spec.{k}")))
        .chain(validation.unknown.keys().map(|k| format!("validation.{k}")));
    for field in unknown {
        reasons.push(format!("{field}: a field Warren does not know"));
    }
    reasons
}

/// The Gateway API's `ObjectName`: only its length is checked there.
fn is_object_name(name: &str) -> bool {
    (1..=253).contains(&name.len())
}

fn is_subdomain(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.split('.').all(is_dns1123_label)
}

/// A certificate's DNS name as a policy may expect it: a precise name (not
/// an IP address), or one whose first label is `*`.
fn is_san_hostname(name: &str) -> bool {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    rest.parse::<std::net::IpAddr>().is_err() && is_subdomain(rest)
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

    fn policy(spec: serde_json::Value) -> BackendTLSPolicy {
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "BackendTLSPolicy",
            "metadata": { "name": "tls", "namespace": "shop" },
            "spec": spec,
        }))
        .expect("parses")
    }

    fn errors(spec: serde_json::Value) -> Vec<String> {
        validate(&policy(spec))
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
                // Another implementation's kind: not Warren's to apply.
                { "group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "llm" },
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
        let parsed = policy(spec);
        assert_eq!(cannot_honour(&parsed), Vec::<String>::new());
        let kinds: Vec<_> = parsed
            .spec
            .target_refs
            .iter()
            .map(TargetRef::target_kind)
            .collect();
        assert_eq!(
            kinds,
            [
                Some(ParentKind::Service),
                Some(ParentKind::ServiceEntry),
                None
            ]
        );
        assert_eq!(
            parsed.spec.validation.subject_alt_names[1].value(),
            "spiffe://cluster.local/ns/shop/sa/api"
        );
        let system = json!({
            "targetRefs": [{ "group": "", "kind": "Service", "name": "api" }],
            "validation": { "wellKnownCACertificates": "System", "hostname": "api.example" },
        });
        assert_eq!(errors(system.clone()), Vec::<String>::new());
        assert_eq!(cannot_honour(&policy(system)), Vec::<String>::new());
    }

    #[test]
    fn what_the_crd_refuses_is_refused_by_path() {
        let found = errors(json!({
            "targetRefs": [
                { "group": "", "kind": "Service", "name": "api", "sectionName": "HTTPS" },
                { "group": "", "kind": "Service", "name": "api", "sectionName": "HTTPS" },
            ],
            "validation": {
                "caCertificateRefs": [{ "group": "", "kind": "ConfigMap", "name": "Api CA" }],
                "wellKnownCACertificates": "System",
                "hostname": "*.shop.example",
                "subjectAltNames": [
                    { "type": "URI", "hostname": "a.example" },
                    { "type": "Hostname", "hostname": "a.example", "uri": "spiffe://x/y" },
                ],
            },
        }));
        let paths: Vec<&str> = found
            .iter()
            .map(|e| e.split(": ").next().unwrap_or_default())
            .collect();
        assert_eq!(
            paths,
            [
                "spec.targetRefs[0].sectionName",
                "spec.targetRefs[1].sectionName",
                "spec.targetRefs[1]",
                "spec.validation.hostname",
                "spec.validation",
                "spec.validation.subjectAltNames[0]",
                "spec.validation.subjectAltNames[1]",
            ],
            "{found:#?}"
        );
        // No target, no CA.
        let found = errors(json!({ "targetRefs": [], "validation": { "hostname": "a.example" } }));
        assert_eq!(found.len(), 2, "{found:#?}");
    }

    #[test]
    fn what_warren_cannot_do_keeps_the_policy_to_fail_closed() {
        let asked = policy(json!({
            "targetRefs": [
                { "group": "", "kind": "Service", "name": "api", "weight": 1 },
                // Not Warren's target: its fields are not Warren's either.
                { "group": "x.example", "kind": "Pool", "name": "p", "extra": true },
            ],
            "validation": {
                "caCertificateRefs": [{ "group": "", "kind": "Secret", "name": "api-ca" }],
                "hostname": "10.0.0.1",
                "subjectAltNames": [
                    { "type": "URI", "uri": "not a uri" },
                    { "type": "Hostname", "hostname": "10.0.0.2" },
                    { "type": "IPAddress", "ipAddress": "10.0.0.3" },
                ],
                "crlRefs": [{ "name": "revoked" }],
            },
            "options": { "example.com/min-version": "1.3" },
            "futureField": true,
        }));
        assert_eq!(validate(&asked), Vec::new(), "valid as the CRD sees it");
        let reasons = cannot_honour(&asked);
        let fields: Vec<&str> = reasons
            .iter()
            .map(|e| e.split([' ', ':']).next().unwrap_or_default())
            .collect();
        assert_eq!(
            fields,
            [
                "validation.caCertificateRefs[0]",
                "validation.hostname",
                "validation.subjectAltNames[0].uri",
                "validation.subjectAltNames[1].hostname",
                "validation.subjectAltNames[2].ipAddress",
                "validation.subjectAltNames[2].type",
                "targetRefs[0].weight",
                "options.example.com/min-version",
                "spec.futureField",
                "validation.crlRefs",
            ],
            "{reasons:#?}"
        );
        let other_cas = policy(json!({
            "targetRefs": [{ "group": "", "kind": "Service", "name": "api" }],
            "validation": { "hostname": "a.example", "wellKnownCACertificates": "Mozilla" },
        }));
        assert_eq!(cannot_honour(&other_cas).len(), 1);
    }
}
