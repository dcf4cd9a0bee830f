//! RequestAuthentication: the JSON Web Tokens a request may carry, verified
//! before AuthorizationPolicy looks at it (Envoy's `jwt_authn` runs ahead of
//! its RBAC filter, and so does this).
//!
//! Istio's semantics: a request without a token passes, unauthenticated
//! (whether that is enough is for an AuthorizationPolicy to say, with
//! `requestPrincipals` or `request.auth.*`); a request whose token fails any
//! check (signature, expiry, issuer, audience, keys not to be had) is
//! refused with 401. Rules are attached by `targetRef(s)` to the waypoint
//! or to Services, like the policies of [`crate::authz`].
//!
//! - [`keys`]: key sets, inline or fetched and refreshed.
//! - [`token`]: finding tokens in a request and checking one.

pub mod keys;
mod token;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header, request::Parts};
use serde_json::{Map, Value};
use tracing::warn;
use warren_model::istio::{JwtRule, RequestAuthenticationSpec};

use keys::{Fetcher, KeyStore, Keys, Remote};
use token::Location;

/// How long a first fetch of a key set may take when the rule sets no
/// `timeout` (Istio's default).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A RequestAuthentication as the agent sent it.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthnInput {
    pub namespace: String,
    pub name: String,
    /// Attached to this waypoint: applies to every request it serves.
    pub waypoint: bool,
    /// Attached to these Services of `namespace`.
    pub services: Vec<String>,
    pub spec: RequestAuthenticationSpec,
}

/// Where a rule's keys are.
enum KeySource {
    Inline(Arc<Keys>),
    Remote(Arc<Fetcher>),
}

/// One `jwtRules` entry, ready to check tokens.
pub struct Rule {
    /// `namespace/name` of its RequestAuthentication, for logs.
    policy: String,
    issuer: String,
    audiences: Vec<String>,
    keys: KeySource,
    locations: Vec<Location>,
    forward: bool,
    payload_header: Option<HeaderName>,
    claim_headers: Vec<(HeaderName, String)>,
    timeout: Duration,
    space_delimited: Vec<String>,
}

impl Rule {
    /// `prefetch`: fetch a remote key set now rather than when a token
    /// first needs it (for rules attached to this waypoint, which see its
    /// every request).
    fn compile(
        policy: &str,
        rule: &JwtRule,
        store: &KeyStore,
        prefetch: bool,
    ) -> Result<Rule, String> {
        let timeout = match &rule.timeout {
            Some(t) => warren_model::validate::duration("timeout", t).map_err(|e| e.to_string())?,
            None => FETCH_TIMEOUT,
        };
        let remote = |remote: Remote| {
            let fetcher = store.fetcher(remote, timeout);
            if prefetch {
                fetcher.start();
            }
            KeySource::Remote(fetcher)
        };
        let keys = if !rule.jwks.is_empty() {
            KeySource::Inline(Arc::new(Keys::inline(&rule.jwks)?))
        } else if !rule.jwks_uri.is_empty() {
            remote(Remote::Uri(rule.jwks_uri.clone()))
        } else {
            remote(Remote::Discovery(rule.issuer.clone()))
        };
        let header = |name: &str| {
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("{name:?}: bad header"))
        };
        Ok(Rule {
            policy: policy.to_owned(),
            issuer: rule.issuer.clone(),
            audiences: rule.audiences.clone(),
            keys,
            locations: token::locations(rule)?,
            forward: rule.forward_original_token,
            payload_header: match rule.output_payload_to_header.as_str() {
                "" => None,
                name => Some(header(name)?),
            },
            claim_headers: rule
                .output_claim_to_headers
                .iter()
                .map(|o| Ok((header(&o.header)?, o.claim.clone())))
                .collect::<Result<_, String>>()?,
            timeout,
            space_delimited: rule.space_delimited_claims.clone(),
        })
    }

    async fn keys(&self) -> Result<Arc<Keys>, Rejection> {
        match &self.keys {
            KeySource::Inline(keys) => Ok(Arc::clone(keys)),
            KeySource::Remote(fetcher) => fetcher.keys(self.timeout).await.map_err(|error| {
                warn!(policy = %self.policy, jwks = %fetcher.remote(), %error, "no JWT key set: token refused");
                Rejection::KeysUnavailable
            }),
        }
    }

    /// Headers this rule writes: a client must not be able to send them.
    fn output_headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.payload_header
            .iter()
            .chain(self.claim_headers.iter().map(|(h, _)| h))
    }
}

struct Policy {
    namespace: String,
    waypoint: bool,
    services: Vec<String>,
    rules: Vec<Rule>,
}

/// The compiled RequestAuthentications of one generation.
#[derive(Default)]
pub struct Authenticator {
    policies: Vec<Policy>,
}

impl Authenticator {
    /// Compiles `inputs`; a rule that cannot be compiled (the agent checked
    /// it, so only a key set this build cannot use) is logged and kept as
    /// one that refuses its issuer's tokens.
    pub fn build(inputs: impl IntoIterator<Item = AuthnInput>, store: &KeyStore) -> Authenticator {
        let policies = inputs
            .into_iter()
            .map(|input| {
                let name = format!("{}/{}", input.namespace, input.name);
                let rules = input
                    .spec
                    .jwt_rules
                    .iter()
                    .map(
                        |rule| match Rule::compile(&name, rule, store, input.waypoint) {
                            Ok(rule) => rule,
                            Err(error) => {
                                warn!(policy = %name, issuer = %rule.issuer, %error,
                                "JWT rule not usable: its issuer's tokens are refused");
                                Rule::refusing(&name, rule)
                            }
                        },
                    )
                    .collect();
                Policy {
                    namespace: input.namespace,
                    waypoint: input.waypoint,
                    services: input.services,
                    rules,
                }
            })
            .collect();
        Authenticator { policies }
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Whether any rule applies to requests to `service` of `namespace`.
    pub fn applies(&self, namespace: &str, service: &str) -> bool {
        self.rules_for(namespace, service).next().is_some()
    }

    /// The rules for a request to `service` of `namespace`.
    fn rules_for<'a>(
        &'a self,
        namespace: &'a str,
        service: &'a str,
    ) -> impl Iterator<Item = &'a Rule> {
        self.policies
            .iter()
            .filter(move |p| {
                crate::attachment::applies(
                    p.waypoint,
                    &p.namespace,
                    &p.services,
                    namespace,
                    service,
                )
            })
            .flat_map(|p| &p.rules)
    }

    /// Checks the tokens of a request to `service` of `namespace`: `Ok(None)`
    /// when it carries none (or no rule applies), its identity when every
    /// token is good, the reason when one is not. A good token is removed
    /// (unless forwarded) and its outputs are written to `parts`.
    pub async fn authenticate(
        &self,
        namespace: &str,
        service: &str,
        parts: &mut Parts,
    ) -> Result<Option<Arc<Verified>>, Rejection> {
        if self.policies.is_empty() {
            return Ok(None);
        }
        let rules: Vec<&Rule> = self.rules_for(namespace, service).collect();
        if rules.is_empty() {
            return Ok(None);
        }
        for rule in &rules {
            for name in rule.output_headers() {
                parts.headers.remove(name);
            }
        }
        if is_cors_preflight(parts) {
            // A browser sends no credentials with it (Istio lets it pass).
            return Ok(None);
        }
        let found = token::find(&rules, parts);
        let mut checked = Vec::with_capacity(found.len());
        for token in &found {
            checked.push((token::verify(token).await?, token.payload()));
        }
        // Each token's outputs follow the rule that accepted it.
        for (token, payload) in &checked {
            let rule = token.rule;
            if !rule.forward
                && let Some(Location::Header { name, .. }) = rule.locations.get(token.location)
            {
                parts.headers.remove(name);
            }
            token::write_outputs(rule, &token.claims, payload, parts);
        }
        // More than one token: the first found names the caller.
        Ok(checked
            .into_iter()
            .next()
            .map(|(token, _)| Arc::new(Verified::new(token.rule, token.claims))))
    }
}

impl Rule {
    /// A rule whose keys cannot be had: every token of its issuer is
    /// refused (fail closed), none other is taken for it.
    fn refusing(policy: &str, rule: &JwtRule) -> Rule {
        Rule {
            policy: policy.to_owned(),
            issuer: rule.issuer.clone(),
            audiences: Vec::new(),
            keys: KeySource::Inline(Arc::new(Keys::empty())),
            locations: token::locations(rule).unwrap_or_else(|_| token::default_locations()),
            forward: true,
            payload_header: None,
            claim_headers: Vec::new(),
            timeout: FETCH_TIMEOUT,
            space_delimited: Vec::new(),
        }
    }
}

/// A CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`.
fn is_cors_preflight(parts: &Parts) -> bool {
    parts.method == http::Method::OPTIONS
        && parts.headers.contains_key(header::ORIGIN)
        && parts
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Who a good token says the caller is.
#[derive(Debug)]
pub struct Verified {
    pub issuer: String,
    /// `sub`, when it is a string.
    pub subject: Option<String>,
    /// `<iss>/<sub>`, for logs and `warrenctl`; none without a subject.
    pub principal: Option<String>,
    claims: Map<String, Value>,
    /// Claims whose string values are space-separated words.
    space_delimited: Vec<String>,
}

impl Verified {
    /// A caller with `claims` (for tests of what reads them).
    pub fn from_claims(claims: Map<String, Value>) -> Verified {
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        let issuer = text("iss").unwrap_or_default();
        let subject = text("sub").filter(|s| !s.is_empty());
        Verified {
            principal: subject.as_ref().map(|sub| format!("{issuer}/{sub}")),
            issuer,
            subject,
            space_delimited: Vec::new(),
            claims,
        }
    }

    fn new(rule: &Rule, claims: Map<String, Value>) -> Verified {
        Verified {
            space_delimited: rule.space_delimited.clone(),
            ..Verified::from_claims(claims)
        }
    }

    /// The values of the claim at `path` (nested objects by name), as
    /// Istio's `request.auth.claims[a][b]` reads them: a string, each string
    /// of a list, each word of a space-delimited claim. Numbers and booleans
    /// match nothing, as in Istio.
    pub fn claim(&self, path: &[String]) -> Vec<String> {
        let Some((first, rest)) = path.split_first() else {
            return Vec::new();
        };
        let mut value = self.claims.get(first);
        for name in rest {
            value = value.and_then(|v| v.get(name));
        }
        let words = path.len() == 1
            && (matches!(first.as_str(), "scope" | "permission")
                || self.space_delimited.iter().any(|c| c == first));
        let mut out = Vec::new();
        let mut push = |v: &Value| match v {
            Value::String(s) if words => {
                out.extend(s.split(' ').filter(|w| !w.is_empty()).map(str::to_owned))
            }
            Value::String(s) => out.push(s.clone()),
            _ => {}
        };
        match value {
            Some(Value::Array(items)) => items.iter().for_each(&mut push),
            Some(v) => push(v),
            None => {}
        }
        out
    }
}

/// Why a token was refused; the text is Envoy's, which operators search for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    Malformed,
    BadHeader,
    UnknownIssuer,
    NoMatchingKey,
    BadSignature,
    Expired,
    NotYetValid,
    Audience,
    KeysUnavailable,
}

impl Rejection {
    pub fn message(self) -> &'static str {
        match self {
            Rejection::Malformed => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            Rejection::BadHeader => "Jwt header is an invalid JSON",
            Rejection::UnknownIssuer => "Jwt issuer is not configured",
            Rejection::NoMatchingKey => "Jwks doesn't have key to match kid or alg from Jwt",
            Rejection::BadSignature => "Jwt verification fails",
            Rejection::Expired => "Jwt is expired",
            Rejection::NotYetValid => "Jwt not yet valid",
            Rejection::Audience => "Audiences in Jwt are not allowed",
            Rejection::KeysUnavailable => "Jwks remote fetch is failed",
        }
    }

    /// Envoy's `RESPONSE_CODE_DETAILS`, for the access log.
    pub fn details(self) -> String {
        format!(
            "jwt_authn_access_denied{{{}}}",
            self.message().replace(' ', "_")
        )
    }

    /// The 401 a refused request gets.
    pub fn response(self, parts: &Parts) -> Response<Bytes> {
        let mut response = Response::new(Bytes::from_static(self.message().as_bytes()));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        let host = parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| parts.headers.get(header::HOST)?.to_str().ok())
            .unwrap_or_default();
        let challenge = format!(
            "Bearer realm=\"http://{host}{}\", error=\"invalid_token\"",
            parts.uri.path()
        );
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        response
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

#[cfg(test)]
mod tests;
