//! `security.istio.io`: AuthorizationPolicy, RequestAuthentication and
//! PeerAuthentication.
//!
//! Same conventions as [`super::networking`]: Istio's field names, unknown
//! fields refused, empty fields skipped so a round trip reproduces the input.

use std::collections::BTreeMap;
use std::fmt;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::common::{PolicyTargetReference, WorkloadSelector};

// ---------------------------------------------------------------------------
// AuthorizationPolicy
// ---------------------------------------------------------------------------

/// Allows, denies, audits or delegates (CUSTOM) requests to the selected
/// workloads.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "AuthorizationPolicy",
    namespaced,
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Workloads the policy applies to; absent means the whole namespace
    /// (or the mesh, in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// A request matches the policy if it matches any rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// Absent means ALLOW; kept optional so the YAML round-trips. Use
    /// [`AuthorizationPolicySpec::action`] to read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// The external authorizer of a CUSTOM policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ExtensionProvider>,
}

impl AuthorizationPolicySpec {
    /// The action, with Istio's default (ALLOW) when absent.
    pub fn action(&self) -> Action {
        self.action.unwrap_or_default()
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    #[default]
    Allow,
    Deny,
    /// Log matching requests; does not change the verdict.
    Audit,
    /// Ask the extension provider named in `provider`.
    Custom,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    #[serde(default)]
    pub name: String,
}

/// Matches a request when every present part matches: any `from`, any
/// `to`, and all `when` conditions.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<RuleFrom>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<RuleTo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

/// Who sent the request. Within a field values are ORed; fields are ANDed;
/// `not…` fields exclude.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer identities from mTLS: `<trust-domain>/ns/<ns>/sa/<sa>`, with
    /// `*` as prefix, suffix or whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// JWT identities (`iss/sub`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    /// Namespaces of the peer identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// `<namespace>/<service account>` of the peer identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<String>,
    /// IPs or CIDRs of the peer (the connection's source address).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    /// IPs or CIDRs of the original client (from X-Forwarded-For or PROXY).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

/// What the request does. Everything but `ports` needs an L7 proxy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    /// Destination ports, as strings (Istio's type).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// An extra condition on a request attribute (`source.ip`,
/// `request.headers[x-foo]`, `destination.port`, …).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    #[serde(default)]
    pub key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

// ---------------------------------------------------------------------------
// RequestAuthentication
// ---------------------------------------------------------------------------

/// Which JSON Web Tokens a workload (or, by `targetRef(s)`, a waypoint)
/// accepts. A request without a token passes unauthenticated; one with a
/// token that fails any check is refused (401). Who may do what with which
/// token is AuthorizationPolicy's business (`requestPrincipals`,
/// `request.auth.*`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "RequestAuthentication",
    namespaced,
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// One per accepted issuer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_rules: Vec<JwtRule>,
}

/// An issuer whose tokens are accepted, where to find its keys, and where
/// to look for its tokens in a request.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// The token's `iss` must equal it.
    #[serde(default)]
    pub issuer: String,
    /// The token's `aud` must hold one of them; empty: `aud` not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Where the issuer publishes its JSON Web Key Set. Without it (and
    /// without `jwks`), OpenID discovery on `issuer` tells.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jwks_uri: String,
    /// The key set itself, as JSON text; wins over `jwksUri`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jwks: String,
    /// Default (with `fromParams` and `fromCookies` empty too):
    /// `Authorization: Bearer <token>` and the `access_token` parameter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    /// A header to carry the verified payload (base64url) upstream.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output_payload_to_header: String,
    /// Keep the token in the request sent upstream (default: removed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward_original_token: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// How long fetching the key set may take (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Claims holding space-separated words, each matched on its own
    /// (`scope` and `permission` always are).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub space_delimited_claims: Vec<String>,
}

/// A header a token is read from, after `prefix` (e.g. `"Bearer "`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
}

/// Copies a verified token's claim into a request header.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    #[serde(default)]
    pub header: String,
    #[serde(default)]
    pub claim: String,
}

// ---------------------------------------------------------------------------
// PeerAuthentication
// ---------------------------------------------------------------------------

/// Whether the selected workloads accept plaintext, mTLS, or both.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "PeerAuthentication",
    namespaced,
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// Workloads the policy applies to; absent means the namespace (or the
    /// mesh, in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<PeerAuthenticationMtls>,
    /// Per-port overrides, keyed by the workload's port. YAML writes the
    /// keys as numbers, Kubernetes' JSON as strings; both are read.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "port_keyed"
    )]
    pub port_level_mtls: BTreeMap<u32, PeerAuthenticationMtls>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationMtls {
    #[serde(default, skip_serializing_if = "MtlsMode::is_unset")]
    pub mode: MtlsMode,
}

/// UNSET inherits from the parent policy (namespace, then mesh); the mesh
/// default is PERMISSIVE.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    #[default]
    Unset,
    /// Plaintext only.
    Disable,
    /// mTLS and plaintext.
    Permissive,
    /// mTLS only.
    Strict,
}

impl MtlsMode {
    pub fn is_unset(&self) -> bool {
        *self == MtlsMode::Unset
    }
}

/// Reads a map whose keys are port numbers written either as integers
/// (`8080:` in YAML) or as strings (`"8080":`, which is how JSON and the
/// Kubernetes API carry them).
fn port_keyed<'de, D, V>(deserializer: D) -> Result<BTreeMap<u32, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    let by_key: BTreeMap<PortKey, V> = BTreeMap::deserialize(deserializer)?;
    Ok(by_key.into_iter().map(|(k, v)| (k.0, v)).collect())
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct PortKey(u32);

impl<'de> Deserialize<'de> for PortKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PortKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortKey, E> {
                u32::try_from(v)
                    .map(PortKey)
                    .map_err(|_| E::custom(format_args!("port {v} is out of range 1-65535")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortKey, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format_args!("port {v} is out of range 1-65535")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortKey, E> {
                v.parse::<u32>()
                    .map(PortKey)
                    .map_err(|_| E::custom(format_args!("{v:?} is not a port number")))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}
