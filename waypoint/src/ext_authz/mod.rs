//! External authorizers: the mesh config's `envoyExtAuthzHttp` and
//! `envoyExtAuthzGrpc` providers, which CUSTOM AuthorizationPolicies send
//! matching requests to (OPA, oauth2-proxy, Istio's sample ext-authz…).
//!
//! This module knows the two protocols and nothing of the network: it turns
//! a request into the check to send and the authorizer's answer into a
//! [`Verdict`]. `proxy::external` sends the check through the waypoint's
//! own upstream clusters, as it sends any request.
//!
//! - [`http`]: a copy of the request's head (Envoy's raw HTTP protocol);
//!   200 allows, 5xx is an error, anything else denies.
//! - [`grpc`]: Envoy's `Authorization/Check` service.

pub mod grpc;
pub mod http;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use ::http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use bytes::Bytes;
use warren_model::istio::mesh::{BodyInCheck, ExtensionProvider, split_service};
use warren_model::validate;

/// Istio's timeout when a provider sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// The longest answer read from an authorizer: a denial's body goes to the
/// client, and an authorizer is no reason to hold unbounded memory.
pub const MAX_ANSWER: usize = 64 * 1024;

/// One provider, ready to ask.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    /// The authorizer's host (a Service's or ServiceEntry's) and port.
    pub host: String,
    pub port: u16,
    pub timeout: Duration,
    /// Allow the request when the authorizer cannot be asked.
    pub fail_open: bool,
    /// Else answer with this.
    pub status_on_error: StatusCode,
    pub body: Option<BodyInCheck>,
    pub protocol: Protocol,
}

#[derive(Debug)]
pub enum Protocol {
    Http(http::Settings),
    Grpc,
}

impl Provider {
    /// Reads a provider the node agent validated; `Err` names what this
    /// build cannot use.
    pub fn compile(provider: &ExtensionProvider) -> Result<Provider, String> {
        let (protocol, service, port, timeout, fail_open, status_on_error, body) = match (
            &provider.envoy_ext_authz_http,
            &provider.envoy_ext_authz_grpc,
        ) {
            (Some(h), _) => (
                Protocol::Http(http::Settings::compile(h)?),
                &h.service,
                h.port,
                &h.timeout,
                h.fail_open,
                &h.status_on_error,
                &h.include_request_body_in_check,
            ),
            (None, Some(g)) => (
                Protocol::Grpc,
                &g.service,
                g.port,
                &g.timeout,
                g.fail_open,
                &g.status_on_error,
                &g.include_request_body_in_check,
            ),
            (None, None) => return Err("not an external authorizer".into()),
        };
        let (_, host) = split_service(service);
        let port = u16::try_from(port).map_err(|_| format!("port {port} is out of range"))?;
        let timeout = match timeout {
            Some(text) => validate::duration("timeout", text).map_err(|e| e.to_string())?,
            None => DEFAULT_TIMEOUT,
        };
        let status_on_error = match status_on_error {
            Some(text) => validate::status_code(text)
                .and_then(|code| StatusCode::from_u16(code).ok())
                .ok_or_else(|| format!("statusOnError {text:?} is not a status"))?,
            None => StatusCode::FORBIDDEN,
        };
        Ok(Provider {
            name: provider.name.clone(),
            host: host.trim_end_matches('.').to_ascii_lowercase(),
            port,
            timeout,
            fail_open,
            status_on_error,
            body: body.clone(),
            protocol,
        })
    }

    /// Whether it can be asked about a TCP connection (which has no request
    /// to copy): only over gRPC, as Envoy's network ext_authz filter.
    pub fn asks_about_connections(&self) -> bool {
        matches!(self.protocol, Protocol::Grpc)
    }

    /// `http` or `grpc`, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self.protocol {
            Protocol::Http(_) => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

/// The providers of one generation, by name.
#[derive(Debug, Default)]
pub struct Providers {
    by_name: BTreeMap<String, Arc<Provider>>,
}

impl Providers {
    pub fn new(providers: impl IntoIterator<Item = Arc<Provider>>) -> Providers {
        Providers {
            by_name: providers.into_iter().map(|p| (p.name.clone(), p)).collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

/// What an authorizer decided.
#[derive(Debug)]
pub enum Verdict {
    /// Go on, with these changes.
    Allow(Changes),
    /// The client gets this answer.
    Deny(Response<Bytes>),
    /// The authorizer could not decide (unreachable, too slow, a 5xx, an
    /// answer that is not one): `failOpen` or `statusOnError` decides.
    Error(String),
}

/// How an allowing authorizer changes the request and its response.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Set on the request sent on, replacing what it had.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Joined (`,`) to a header the request already has; not added
    /// otherwise (Envoy's `append` for an allowing gRPC answer).
    pub append: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
    /// Applied to the response the client gets.
    pub response: Vec<(HeaderName, HeaderValue, Mode)>,
    /// Query parameters set on the request (replacing those of the name),
    /// then those removed.
    pub query_set: Vec<(String, String)>,
    pub query_remove: Vec<String>,
}

/// How a header is put on the client's response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Another value beside any the response has.
    Add,
    /// Replacing any the response has.
    Set,
    /// Only when the response has none.
    AddIfAbsent,
    /// Only replacing one the response has.
    OverwriteIfExists,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self == &Changes::default()
    }

    /// Applies the request's changes: removals first, then what is set,
    /// then what is joined; then the query's.
    pub fn apply_to_request(&self, parts: &mut ::http::request::Parts) {
        let headers = &mut parts.headers;
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.append {
            let Some(existing) = headers.get(name) else {
                continue;
            };
            let mut joined = existing.as_bytes().to_vec();
            joined.push(b',');
            joined.extend_from_slice(value.as_bytes());
            if let Ok(joined) = HeaderValue::from_bytes(&joined) {
                headers.insert(name.clone(), joined);
            }
        }
        if !self.query_set.is_empty() || !self.query_remove.is_empty() {
            self.apply_to_query(&mut parts.uri);
        }
    }

    /// Edits only the parameters named: every other one is sent on byte
    /// for byte, as the client wrote it.
    fn apply_to_query(&self, uri: &mut ::http::Uri) {
        let named = |pair: &str| -> String {
            let key = pair.split('=').next().unwrap_or_default();
            form_urlencoded::parse(key.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default()
        };
        let mut pairs: Vec<String> = uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| {
                let key = named(p);
                !self.query_remove.contains(&key) && !self.query_set.iter().any(|(k, _)| *k == key)
            })
            .map(str::to_owned)
            .collect();
        for (i, (key, value)) in self.query_set.iter().enumerate() {
            // A key set twice takes its last value.
            if self.query_set[i + 1..].iter().any(|(k, _)| k == key) {
                continue;
            }
            pairs.push(
                form_urlencoded::Serializer::new(String::new())
                    .append_pair(key, value)
                    .finish(),
            );
        }
        let path_and_query = if pairs.is_empty() {
            uri.path().to_owned()
        } else {
            format!("{}?{}", uri.path(), pairs.join("&"))
        };
        let mut parts = uri.clone().into_parts();
        match path_and_query.parse() {
            Ok(pq) => parts.path_and_query = Some(pq),
            Err(_) => return,
        }
        if let Ok(changed) = ::http::Uri::from_parts(parts) {
            *uri = changed;
        }
    }

    pub fn apply_to_response(&self, headers: &mut HeaderMap) {
        for (name, value, mode) in &self.response {
            match mode {
                Mode::Add => {
                    headers.append(name.clone(), value.clone());
                }
                Mode::Set => {
                    headers.insert(name.clone(), value.clone());
                }
                Mode::AddIfAbsent => {
                    headers.entry(name.clone()).or_insert_with(|| value.clone());
                }
                Mode::OverwriteIfExists => {
                    if headers.contains_key(name) {
                        headers.insert(name.clone(), value.clone());
                    }
                }
            }
        }
    }
}

/// Headers the waypoint never lets an authorizer set or remove on the
/// request: how it is framed and where it goes.
fn protected(name: &HeaderName) -> bool {
    name == ::http::header::HOST
        || name == ::http::header::CONTENT_LENGTH
        || name == ::http::header::TRANSFER_ENCODING
}

/// A header name pattern of a provider's lists: exact, `prefix*` or
/// `*suffix`, without case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl Pattern {
    pub fn new(text: &str) -> Pattern {
        let text = text.to_ascii_lowercase();
        // A leading `*` is read first, as Istio does.
        if let Some(suffix) = text.strip_prefix('*') {
            Pattern::Suffix(suffix.to_owned())
        } else if let Some(prefix) = text.strip_suffix('*') {
            Pattern::Prefix(prefix.to_owned())
        } else {
            Pattern::Exact(text)
        }
    }

    /// `name` is lower case, as `HeaderName`s are.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Exact(exact) => name == exact,
            Pattern::Prefix(prefix) => name.starts_with(prefix.as_str()),
            Pattern::Suffix(suffix) => name.ends_with(suffix.as_str()),
        }
    }
}

pub fn any_matches(patterns: &[Pattern], name: &str) -> bool {
    patterns.iter().any(|p| p.matches(name))
}

#[cfg(test)]
mod tests;
