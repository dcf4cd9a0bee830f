//! L7 AuthorizationPolicy: the policies attached by `targetRef(s)` to this
//! namespace's waypoint Gateway or to its Services, decided per request.
//!
//! Istio's order: the providers of the CUSTOM policies whose rules match are
//! asked first ([`Authorizer::custom`]; `proxy::external` asks them, about a
//! request or, at its CONNECT, a TCP connection); then a matching DENY
//! denies; else, if ALLOW policies apply, one must match; else the request
//! is allowed. AUDIT changes nothing.
//!
//! - [`matcher`]: Istio's string patterns and IP blocks.
//! - [`compile`]: rules as tests on a request, failing closed.
//! - [`path`]: the path normalization a decision and the upstream share.

mod compile;
pub mod matcher;
pub mod path;

use std::{fmt, net::IpAddr};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};
use tracing::{debug, warn};
use warren_api::Identity;
use warren_model::istio::{Action, AuthorizationPolicySpec};

use crate::authn::Verified;
use compile::CompiledRule;

/// Envoy's RBAC filter's answer, which operators and tests recognize.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// A policy as the agent sent it, before compiling.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyInput {
    pub namespace: String,
    pub name: String,
    /// Attached to the waypoint: applies to every request it serves.
    pub waypoint: bool,
    /// Attached to these Services of `namespace`.
    pub services: Vec<String>,
    pub spec: AuthorizationPolicySpec,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Policy {
    namespace: String,
    name: String,
    action: Action,
    /// The extension provider a CUSTOM policy names.
    provider: String,
    waypoint: bool,
    services: Vec<String>,
    rules: Vec<CompiledRule>,
}

impl Policy {
    fn compile(input: PolicyInput) -> Policy {
        let rules: Vec<CompiledRule> = input.spec.rules.iter().map(compile::rule).collect();
        let action = input.spec.action();
        for (i, rule) in rules.iter().enumerate() {
            if !rule.unsupported.is_empty() {
                // Said once per compile, not per request.
                warn!(
                    policy = %format!("{}/{}", input.namespace, input.name),
                    rule = i,
                    unsupported = %rule.unsupported.join(", "),
                    effect = if allows(action) { "the rule never matches" } else { "those conditions are left out: the rule matches more" },
                    "AuthorizationPolicy asks what the waypoint cannot evaluate; failing closed"
                );
            }
        }
        Policy {
            namespace: input.namespace,
            name: input.name,
            action,
            provider: input
                .spec
                .provider
                .as_ref()
                .map(|p| p.name.clone())
                .unwrap_or_default(),
            waypoint: input.waypoint,
            services: input.services,
            rules,
        }
    }

    fn applies_to(&self, service_namespace: &str, service: &str) -> bool {
        crate::attachment::applies(
            self.waypoint,
            &self.namespace,
            &self.services,
            service_namespace,
            service,
        )
    }

    /// The index of the first rule that matches.
    fn matching_rule(&self, request: &Request<'_>) -> Option<usize> {
        let allowing = allows(self.action);
        self.rules.iter().position(|r| r.matches(request, allowing))
    }
}

/// Actions whose rules grant access: an unsupported field must make their
/// rules match less, not more.
fn allows(action: Action) -> bool {
    matches!(action, Action::Allow | Action::Audit)
}

/// The compiled policies of one generation.
#[derive(Debug, Default)]
pub struct Authorizer {
    /// In key order, so which policy a denial names is stable.
    policies: Vec<Policy>,
    /// Whether any is CUSTOM: a request is looked at for them only then.
    has_custom: bool,
}

impl Authorizer {
    pub fn build(inputs: impl IntoIterator<Item = PolicyInput>) -> Authorizer {
        let policies: Vec<Policy> = inputs.into_iter().map(Policy::compile).collect();
        Authorizer {
            has_custom: policies.iter().any(|p| p.action == Action::Custom),
            policies,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// `(namespace/name, provider)` of each CUSTOM policy.
    pub fn custom_providers(&self) -> impl Iterator<Item = (String, &str)> {
        self.policies
            .iter()
            .filter(|p| p.action == Action::Custom)
            .map(|p| (format!("{}/{}", p.namespace, p.name), p.provider.as_str()))
    }

    /// The providers to ask about an HTTP request: one per provider whose
    /// CUSTOM policies have a matching rule (the first such rule names it),
    /// in policy order.
    pub fn custom(&self, request: &Request<'_>) -> Vec<Custom> {
        let mut found: Vec<Custom> = Vec::new();
        let applies = |p: &&Policy| p.applies_to(request.service_namespace, request.service);
        for policy in self.policies.iter().filter(applies) {
            if policy.action != Action::Custom
                || found.iter().any(|c| c.provider == policy.provider)
            {
                continue;
            }
            if let Some(rule) = policy.matching_rule(request) {
                found.push(Custom {
                    provider: policy.provider.clone(),
                    namespace: policy.namespace.clone(),
                    name: policy.name.clone(),
                    rule,
                });
            }
        }
        found
    }

    /// DENY and ALLOW; CUSTOM policies are [`Authorizer::custom`]'s.
    pub fn decide(&self, request: &Request<'_>) -> Decision {
        let mut allow_policies = false;
        let mut allowed = false;
        let applies = |p: &&Policy| p.applies_to(request.service_namespace, request.service);
        for policy in self.policies.iter().filter(applies) {
            match policy.action {
                Action::Custom => {}
                Action::Deny => {
                    if let Some(rule) = policy.matching_rule(request) {
                        return Decision::Deny(Denial::Matched {
                            namespace: policy.namespace.clone(),
                            name: policy.name.clone(),
                            rule,
                        });
                    }
                }
                Action::Allow => {
                    allow_policies = true;
                    allowed = allowed || policy.matching_rule(request).is_some();
                }
                Action::Audit => {
                    if let Some(rule) = policy.matching_rule(request) {
                        debug!(policy = %format!("{}/{}", policy.namespace, policy.name), rule, "AUDIT policy matched");
                    }
                }
            }
        }
        if allow_policies && !allowed {
            Decision::Deny(Denial::NoAllowMatched)
        } else {
            Decision::Allow
        }
    }
}

/// A CUSTOM policy's rule that matched a request: its provider must be
/// asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Custom {
    pub provider: String,
    pub namespace: String,
    pub name: String,
    pub rule: usize,
}

impl fmt::Display for Custom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ns[{}]-policy[{}]-rule[{}]",
            self.namespace, self.name, self.rule
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(Denial),
}

/// Why a request was denied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// A DENY policy's rule matched.
    Matched {
        namespace: String,
        name: String,
        rule: usize,
    },
    /// ALLOW policies apply and none matched.
    NoAllowMatched,
}

/// Envoy's `RESPONSE_CODE_DETAILS` for an RBAC denial, so access logs read
/// as Istio's do.
impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::Matched {
                namespace,
                name,
                rule,
            } => write!(
                f,
                "rbac_access_denied_matched_policy[ns[{namespace}]-policy[{name}]-rule[{rule}]]"
            ),
            Denial::NoAllowMatched => f.write_str("rbac_access_denied_matched_policy[none]"),
        }
    }
}

/// What a decision looks at.
pub struct Request<'a> {
    /// `<trust domain>/ns/<ns>/sa/<sa>`: the HBONE peer, which the source's
    /// ztunnel connects as (it holds the source workload's certificate),
    /// under each of the mesh's trust domains (its own first).
    pub principals: &'a [String],
    pub namespace: &'a str,
    pub source_ip: IpAddr,
    /// `destination.ip`: the address the client dialled.
    pub destination_ip: IpAddr,
    /// The destination Service's name and namespace.
    pub service: &'a str,
    pub service_namespace: &'a str,
    /// The destination (service) port.
    pub port: u16,
    /// `connection.sni`.
    pub server_name: ServerName<'a>,
    /// `None` for a TCP connection.
    pub http: Option<HttpRequest<'a>>,
}

/// What an HTTP request adds to a decision.
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// Normalized ([`path::normalize_uri`]), without the query.
    pub path: &'a str,
    /// The authority, lower-cased.
    pub host: String,
    pub headers: &'a HeaderMap,
    /// The caller a verified JWT names, if the request carried one.
    pub auth: Option<&'a Verified>,
}

/// `connection.sni` as a decision knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerName<'a> {
    /// From the client's whole TLS hello; `None` when it names no server.
    /// An HTTP request has none: it arrives in plaintext inside HBONE.
    Read(Option<&'a str>),
    /// Not read (a port not declared TLS): a rule on it fails closed, so an
    /// ALLOW rule never matches and a DENY rule matches on its other
    /// conditions alone.
    NotRead,
    /// Not read yet, and taken as whatever name suits the caller best: an
    /// ALLOW rule's condition on it holds, a DENY rule's does not. Denied
    /// even so, a connection is denied whatever its hello says.
    Any,
}

/// Who sent a request and where it goes, as the CONNECT stream told.
pub struct Peer<'a> {
    pub identity: &'a Identity,
    /// [`warren_api::identity::TrustDomains::principals`] of `identity`.
    pub principals: &'a [String],
    pub source_ip: IpAddr,
    /// The address the client dialled, as the CONNECT names it: a
    /// Service's, or a pod's own.
    pub destination_ip: IpAddr,
    pub service: &'a str,
    pub service_namespace: &'a str,
    pub port: u16,
}

impl<'a> Request<'a> {
    pub fn new(
        peer: &Peer<'a>,
        parts: &'a http::request::Parts,
        auth: Option<&'a Verified>,
    ) -> Request<'a> {
        let host = parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| parts.headers.get(header::HOST)?.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        Request {
            http: Some(HttpRequest {
                method: parts.method.as_str(),
                path: parts.uri.path(),
                host,
                headers: &parts.headers,
                auth,
            }),
            ..Request::connection(peer, ServerName::Read(None))
        }
    }

    /// A TCP connection: who, from where, to which port, and the server
    /// name its hello asked for, if read; no request.
    pub fn connection(peer: &Peer<'a>, server_name: ServerName<'a>) -> Request<'a> {
        Request {
            principals: peer.principals,
            namespace: &peer.identity.namespace,
            source_ip: peer.source_ip,
            destination_ip: peer.destination_ip,
            service: peer.service,
            service_namespace: peer.service_namespace,
            port: peer.port,
            server_name,
            http: None,
        }
    }
}

impl HttpRequest<'_> {
    /// A header's values joined with `,`, as Envoy's matcher reads a
    /// repeated header.
    fn header(&self, name: &HeaderName) -> Option<String> {
        let mut values = self.headers.get_all(name).iter().peekable();
        values.peek()?;
        let joined: Vec<String> = values
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        Some(joined.join(","))
    }
}

/// The CUSTOM policies' providers to ask about a request, after normalizing
/// its path (so what is decided is what is sent on). Without CUSTOM
/// policies, nothing is done here ([`authorize`] normalizes the path).
pub fn custom(
    authorizer: &Authorizer,
    peer: &Peer<'_>,
    parts: &mut http::request::Parts,
    auth: Option<&Verified>,
) -> Vec<Custom> {
    if !authorizer.has_custom {
        return Vec::new();
    }
    path::normalize_uri(&mut parts.uri);
    authorizer.custom(&Request::new(peer, parts, auth))
}

/// The CUSTOM policies' providers to ask about a TCP connection at its
/// CONNECT. Their rules are read as Istio reads them for TCP, as a DENY's:
/// what a connection cannot tell (HTTP fields, its server name) is left
/// out, so a rule asks about more connections, never fewer.
pub fn custom_connection(authorizer: &Authorizer, peer: &Peer<'_>) -> Vec<Custom> {
    if !authorizer.has_custom {
        return Vec::new();
    }
    authorizer.custom(&Request::connection(peer, ServerName::NotRead))
}

/// Normalizes the request's path (so what is decided is what is sent on)
/// and decides; `Some` when it is denied.
pub fn authorize(
    authorizer: &Authorizer,
    peer: &Peer<'_>,
    parts: &mut http::request::Parts,
    auth: Option<&Verified>,
) -> Option<Denial> {
    path::normalize_uri(&mut parts.uri);
    if authorizer.is_empty() {
        return None;
    }
    match authorizer.decide(&Request::new(peer, parts, auth)) {
        Decision::Allow => None,
        Decision::Deny(denial) => Some(denial),
    }
}

/// Decides a TCP connection (Istio's rules for TCP: see
/// [`Request::connection`]) with what is known of its server name; `Some`
/// when it is denied.
pub fn authorize_connection(
    authorizer: &Authorizer,
    peer: &Peer<'_>,
    server_name: ServerName<'_>,
) -> Option<Denial> {
    if authorizer.is_empty() {
        return None;
    }
    match authorizer.decide(&Request::connection(peer, server_name)) {
        Decision::Allow => None,
        Decision::Deny(denial) => Some(denial),
    }
}

/// How a TCP connection stands at its CONNECT, before any byte of it is
/// read.
#[derive(Debug, PartialEq, Eq)]
pub enum AtConnect {
    /// Allowed, whatever its hello says.
    Allowed,
    /// Denied, whatever its hello says.
    Denied(Denial),
    /// Its server name decides (`connection.sni` on a TLS port): decide
    /// once the hello is read.
    AfterHello,
}

/// Decides a TCP connection at its CONNECT where its server name cannot
/// change the outcome: allowed even if the name fails every `connection.sni`
/// condition, or denied even if it passes them. `tls_port`: whether its
/// port carries TLS, so that a hello will tell the name; elsewhere rules on
/// the name fail closed.
pub fn at_connect(authorizer: &Authorizer, peer: &Peer<'_>, tls_port: bool) -> AtConnect {
    let Some(strict) = authorize_connection(authorizer, peer, ServerName::NotRead) else {
        return AtConnect::Allowed;
    };
    if !tls_port {
        return AtConnect::Denied(strict);
    }
    match authorize_connection(authorizer, peer, ServerName::Any) {
        Some(denial) => AtConnect::Denied(denial),
        None => AtConnect::AfterHello,
    }
}

/// The 403 a denied request gets.
pub fn forbidden() -> Response<Bytes> {
    let mut response = Response::new(Bytes::from_static(DENIED_BODY.as_bytes()));
    *response.status_mut() = StatusCode::FORBIDDEN;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

#[cfg(test)]
mod tests;
