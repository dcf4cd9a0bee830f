//! One compiled `http` rule: its matches, its action (forward, redirect or
//! answer directly), and what it does to requests and responses.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Uri};
use rand::Rng;
use regex::Regex;
use warren_model::istio::{
    Destination, HeaderOperations, Headers, HttpDirectResponse, HttpMatchRequest, HttpRedirect,
    HttpRewrite, HttpRoute, HttpRouteDestination, RedirectPortSelection,
};
use warren_model::{http_route::REDIRECT_PREFIX_MARKER as PREFIX_MARKER, validate};

use super::cors::Cors;
use super::fault::Fault;
use super::matching::{Matched, RequestInfo, RequestMatch, UriMatched, regex_error};
use super::retry::RetryPolicy;
use super::{CompileError, chance, per_million};

/// One `http` rule of a VirtualService, compiled.
///
/// `timeout`, `retries`, `mirrors`, `rewrite` and `corsPolicy` only matter
/// when the action is [`Action::Forward`], as in Istio.
#[derive(Clone, Debug)]
pub struct HttpRule {
    name: String,
    /// Route name per alternative of `match` (see [`HttpRule::route_name`]).
    names: Vec<String>,
    matches: Vec<RequestMatch>,
    pub action: Action,
    /// Whether `route` listed several destinations, even ones that take no
    /// traffic (weight 0): their header changes then belong to weighted
    /// clusters, as istiod decides before dropping those, so a 100/0 canary
    /// orders them as a 50/50 one does.
    split: bool,
    path_rewrite: Option<PathRewrite>,
    /// `rewrite.authority`, else an authority set in `headers.request`.
    authority: Option<RewrittenAuthority>,
    headers: HeaderChanges,
    /// Timeout of the whole exchange, retries included. `None`: no timeout
    /// (Istio's default for HTTP routes).
    pub timeout: Option<Duration>,
    pub retries: RetryPolicy,
    pub fault: Option<Fault>,
    /// `corsPolicy`.
    pub cors: Option<Cors>,
    /// `mirror` (with `mirrorPercentage`) then `mirrors`, each with its
    /// share; targets whose share is 0 are left out.
    pub mirrors: Vec<MirrorTarget>,
}

/// What a rule does with a matching request.
#[derive(Clone, Debug)]
pub enum Action {
    /// Forward to one of these, picked by weight
    /// ([`HttpRule::pick_destination`]).
    Forward(Vec<RouteDestination>),
    Redirect(Redirect),
    DirectResponse(DirectResponse),
}

/// A weighted destination of a rule.
#[derive(Clone, Debug)]
pub struct RouteDestination {
    pub host: String,
    /// A subset of the host's DestinationRule.
    pub subset: Option<String>,
    /// The service port; `None`: the caller picks (Istio: the service's only
    /// port, or the port the request came in on).
    pub port: Option<u16>,
    /// Relative weight. A rule's only destination weighs 100 whatever was
    /// written; with several, destinations weighing 0 are left out.
    pub weight: u32,
    /// Header changes made only when this destination is chosen.
    headers: HeaderChanges,
}

impl RouteDestination {
    /// All of `host`, no header changes: where a request goes when no
    /// VirtualService claims its host.
    pub fn to_host(host: &str) -> Self {
        RouteDestination {
            host: host.to_owned(),
            subset: None,
            port: None,
            weight: 100,
            headers: HeaderChanges::default(),
        }
    }
}

/// A copy of the request sent to another destination, response ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorTarget {
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<u16>,
    /// Share of requests mirrored, in parts per million (Istio's default
    /// when no percentage is given: all of them).
    pub per_million: u32,
}

impl MirrorTarget {
    /// The authority of a mirrored request: Envoy marks shadows by adding
    /// `-shadow` to the host (before any port).
    pub fn shadow_authority(authority: &str) -> String {
        match split_port(authority) {
            (host, Some(_)) => {
                let port = &authority[host.len()..];
                format!("{host}-shadow{port}")
            }
            (host, None) => format!("{host}-shadow"),
        }
    }
}

/// Answer with a redirect (`HTTPRedirect`), as Envoy builds the
/// `Location`: each part given replaces the request's, the rest is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// The new path, `None` to keep the request's; the request's query
    /// string is kept unless a whole new path has its own.
    pub path: Option<RedirectPath>,
    /// Replaces the host (and drops the request's port).
    pub authority: Option<String>,
    /// `http` or `https`.
    pub scheme: Option<String>,
    pub port: RedirectPort,
    /// `redirectCode`, 301 by default.
    pub status: StatusCode,
}

/// What a redirect does to the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedirectPath {
    /// Replaces the whole path (`uri`).
    Full(String),
    /// Replaces the path prefix the rule matched, whole segments (Gateway
    /// API `ReplacePrefixMatch`): with `/api` matched and `/v2` given,
    /// `/api/items` is `/v2/items`; with `/` given, `/items`.
    Prefix {
        matched: String,
        replacement: String,
    },
}

impl RedirectPath {
    /// The path a request's `path` is sent to.
    fn apply<'a>(&'a self, path: &str) -> Cow<'a, str> {
        match self {
            RedirectPath::Full(uri) => Cow::Borrowed(uri),
            RedirectPath::Prefix {
                matched,
                replacement,
            } => {
                // What follows the matched segments: `/rest`, or nothing.
                let rest = match path.strip_prefix(matched.as_str()) {
                    Some("/") if matched.is_empty() => "",
                    Some(rest) => rest,
                    None => path,
                };
                match (replacement.trim_end_matches('/'), rest) {
                    ("", "") => Cow::Borrowed("/"),
                    ("", rest) => Cow::Owned(rest.to_owned()),
                    (replacement, rest) => Cow::Owned(format!("{replacement}{rest}")),
                }
            }
        }
    }

    /// For `explain`.
    pub fn describe(&self) -> String {
        match self {
            RedirectPath::Full(uri) => uri.clone(),
            RedirectPath::Prefix {
                matched,
                replacement,
            } => format!(
                "{replacement} in place of the prefix {}",
                if matched.is_empty() { "/" } else { matched }
            ),
        }
    }
}

/// The path prefix a rule made from a Gateway API `PathPrefix` matches (the
/// agent writes it as the path itself and the path with a `/` after it, or
/// as the prefix `/`), without its trailing `/` (empty for `/`).
fn matched_prefix(path: &str, matches: &[HttpMatchRequest]) -> Result<String, CompileError> {
    let refused = || {
        CompileError::new(
            path,
            format!("{PREFIX_MARKER} needs every match of the rule to be one path prefix"),
        )
    };
    let mut prefixes = matches.iter().map(|m| {
        let uri = m.uri.as_ref()?;
        let value = uri.prefix.as_deref().or(uri.exact.as_deref())?;
        Some(value.trim_end_matches('/').to_owned())
    });
    let first = prefixes.next().flatten().ok_or_else(refused)?;
    if prefixes.all(|p| p.as_deref() == Some(first.as_str())) {
        Ok(first)
    } else {
        Err(refused())
    }
}

/// The port of a redirect's `Location`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedirectPort {
    /// Keep the request's, unless the scheme changes away from its default
    /// port (`http://a:80` → `https://a`).
    Keep,
    /// This one (`port`).
    Port(u16),
    /// The port the request came in on (`derivePort: FROM_REQUEST_PORT`).
    FromRequest,
    /// The scheme's default: no port (`derivePort: FROM_PROTOCOL_DEFAULT`).
    ProtocolDefault,
}

/// Answer with a fixed status and body (`HTTPDirectResponse`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectResponse {
    pub status: StatusCode,
    /// `body.string`, or `body.bytes` decoded from base64.
    pub body: Bytes,
}

impl DirectResponse {
    /// The response; `content-type: text/plain` when there is a body, as
    /// Envoy sends.
    pub fn response(&self) -> Response<Bytes> {
        let mut response = Response::new(self.body.clone());
        *response.status_mut() = self.status;
        if !self.body.is_empty() {
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain"),
            );
        }
        response
    }
}

/// A rewritten path that is not a valid URI path: the configuration and
/// the request together produced something no upstream can be sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rewriting the request gave an invalid URI {value:?}")]
pub struct InvalidRewrite {
    pub value: String,
}

/// `rewrite.uri` or `rewrite.uriRegexRewrite`.
#[derive(Clone, Debug)]
enum PathRewrite {
    /// Replaces what the `uri` match covered ([`UriMatched`]).
    Prefix(String),
    /// Replaces every match of `regex` in the path (RE2's `GlobalReplace`,
    /// as Envoy); `replacement` is in the `regex` crate's syntax.
    Regex { regex: Regex, replacement: String },
}

/// An authority to send upstream, checked once.
#[derive(Clone, Debug)]
struct RewrittenAuthority {
    header: HeaderValue,
    uri: Authority,
}

impl RewrittenAuthority {
    fn compile(path: &str, value: &str) -> Result<Self, CompileError> {
        let invalid = || CompileError::new(path, format!("{value:?} is not a valid authority"));
        Ok(Self {
            header: HeaderValue::from_str(value).map_err(|_| invalid())?,
            uri: Authority::try_from(value).map_err(|_| invalid())?,
        })
    }
}

/// `set`, `add` and `remove` of one side (request or response). Names are
/// lowercase; `:`-pseudo-headers and `Host` are left out, as Istio does
/// (the authority is handled apart).
#[derive(Clone, Debug, Default)]
struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Also returns the authority it sets, if any (`set` wins over `add`).
    fn compile(path: &str, ops: &HeaderOperations) -> Result<(Self, Option<String>), CompileError> {
        let mut out = HeaderOps::default();
        let mut authority = [None, None];
        for (slot, (op, map)) in [("set", &ops.set), ("add", &ops.add)]
            .into_iter()
            .enumerate()
        {
            for (name, value) in map {
                if is_authority_header(name) {
                    authority[slot] = Some(value.clone());
                    continue;
                }
                if is_internal_header(name) {
                    continue;
                }
                let p = format!("{path}.{op}.{name}");
                let pair = (
                    header_name(&p, name)?,
                    HeaderValue::from_str(value).map_err(|_| {
                        CompileError::new(&p, format!("{value:?} is not a valid header value"))
                    })?,
                );
                if slot == 0 {
                    out.set.push(pair);
                } else {
                    out.add.push(pair);
                }
            }
        }
        for (k, name) in ops.remove.iter().enumerate() {
            if !is_internal_header(name) {
                out.remove
                    .push(header_name(&format!("{path}.remove[{k}]"), name)?);
            }
        }
        let [set, add] = authority;
        Ok((out, set.or(add)))
    }

    fn apply_set_add(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// Istio's `Headers`: changes to the request and to the response.
#[derive(Clone, Debug, Default)]
struct HeaderChanges {
    request: HeaderOps,
    response: HeaderOps,
    /// `:authority` or `host` in `request.set`/`request.add`.
    authority: Option<RewrittenAuthority>,
}

impl HeaderChanges {
    fn compile(path: &str, headers: Option<&Headers>) -> Result<Self, CompileError> {
        let Some(headers) = headers else {
            return Ok(Self::default());
        };
        let mut out = Self::default();
        if let Some(ops) = &headers.request {
            let p = format!("{path}.request");
            let (request, authority) = HeaderOps::compile(&p, ops)?;
            out.request = request;
            out.authority = authority
                .map(|a| RewrittenAuthority::compile(&format!("{p}.set.:authority"), &a))
                .transpose()?;
        }
        if let Some(ops) = &headers.response {
            // The response has no authority to set: Istio drops it.
            out.response = HeaderOps::compile(&format!("{path}.response"), ops)?.0;
        }
        Ok(out)
    }
}

fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

fn is_internal_header(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

fn header_name(path: &str, name: &str) -> Result<HeaderName, CompileError> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| CompileError::new(path, format!("{name:?} is not a valid header name")))
}

impl HttpRule {
    /// `from_routes`: made by the agent from Gateway API routes.
    pub(super) fn compile(
        path: &str,
        route: &HttpRoute,
        from_routes: bool,
    ) -> Result<Self, CompileError> {
        let matches = route
            .r#match
            .iter()
            .enumerate()
            .map(|(k, m)| RequestMatch::compile(&format!("{path}.match[{k}]"), m))
            .collect::<Result<Vec<_>, _>>()?;
        // Istio names the route `<rule>.<match>` when the match has a name.
        let names = route
            .r#match
            .iter()
            .map(|m| {
                if m.name.is_empty() {
                    route.name.clone()
                } else {
                    format!("{}.{}", route.name, m.name)
                }
            })
            .collect();

        let action = match (
            route.route.is_empty(),
            &route.redirect,
            &route.direct_response,
        ) {
            (false, None, None) => Action::Forward(compile_destinations(path, &route.route)?),
            (true, Some(redirect), None) => {
                let path = format!("{path}.redirect");
                let prefix = match redirect.uri.starts_with(PREFIX_MARKER) {
                    true if from_routes => Some(matched_prefix(&path, &route.r#match)?),
                    _ => None,
                };
                Action::Redirect(Redirect::compile(&path, redirect, prefix)?)
            }
            (true, None, Some(direct)) => Action::DirectResponse(DirectResponse::compile(
                &format!("{path}.directResponse"),
                direct,
            )?),
            (true, None, None) => {
                return Err(CompileError::new(
                    path,
                    "one of route, redirect or directResponse is required",
                ));
            }
            _ => {
                return Err(CompileError::new(
                    path,
                    "only one of route, redirect and directResponse may be set",
                ));
            }
        };

        let headers = HeaderChanges::compile(&format!("{path}.headers"), route.headers.as_ref())?;
        let (path_rewrite, rewrite_authority) = match &route.rewrite {
            Some(rewrite) => compile_rewrite(&format!("{path}.rewrite"), rewrite)?,
            None => (None, None),
        };
        let authority = rewrite_authority.or_else(|| headers.authority.clone());

        let timeout = match &route.timeout {
            Some(t) => {
                let t = validate::duration(&format!("{path}.timeout"), t)
                    .map_err(|e| CompileError::new(e.path, e.reason))?;
                // Istio's "0s" is "no timeout".
                (!t.is_zero()).then_some(t)
            }
            None => None,
        };
        let retries = RetryPolicy::compile(&format!("{path}.retries"), route.retries.as_ref())?;
        let fault = match &route.fault {
            Some(f) => Fault::compile(&format!("{path}.fault"), f)?,
            None => None,
        };
        let cors = route
            .cors_policy
            .as_ref()
            .map(|c| Cors::compile(&format!("{path}.corsPolicy"), c))
            .transpose()?;

        let mut mirrors = Vec::new();
        if let Some(mirror) = &route.mirror {
            // Istio: no percentage mirrors everything, an explicit 0 nothing.
            let share = route
                .mirror_percentage
                .as_ref()
                .map_or(1_000_000, |p| per_million(p.value));
            if share > 0 {
                mirrors.push(MirrorTarget::compile(
                    &format!("{path}.mirror"),
                    mirror,
                    share,
                )?);
            }
        }
        for (k, mirror) in route.mirrors.iter().enumerate() {
            let share = mirror
                .percentage
                .as_ref()
                .map_or(1_000_000, |p| per_million(p.value));
            if share > 0 {
                mirrors.push(MirrorTarget::compile(
                    &format!("{path}.mirrors[{k}].destination"),
                    &mirror.destination,
                    share,
                )?);
            }
        }

        Ok(Self {
            name: route.name.clone(),
            names,
            matches,
            action,
            split: route.route.len() > 1,
            path_rewrite,
            authority,
            headers,
            timeout,
            retries,
            fault,
            cors,
            mirrors,
        })
    }

    /// The rule's `name` (may be empty).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Istio's route name for a match: `<rule name>.<match name>`, or the
    /// rule's name when the alternative has no name.
    pub fn route_name(&self, matched: &Matched) -> &str {
        matched
            .alternative
            .and_then(|i| self.names.get(i))
            .map_or(self.name.as_str(), String::as_str)
    }

    /// Whether some request on `port` could match (a rule of other ports'
    /// or of gateways only cannot).
    pub(super) fn may_match_port(&self, port: u16) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.may_match_port(port))
    }

    /// Whether the request matches, and how: the first matching
    /// alternative of `match`. A rule without `match` matches every request
    /// (Envoy's prefix `/`).
    pub fn matches(&self, req: &RequestInfo<'_>) -> Option<Matched> {
        if self.matches.is_empty() {
            return req.path.starts_with('/').then_some(Matched {
                alternative: None,
                uri: UriMatched::Prefix(1),
            });
        }
        self.matches.iter().enumerate().find_map(|(i, m)| {
            m.matches(req).map(|uri| Matched {
                alternative: Some(i),
                uri,
            })
        })
    }

    /// A destination picked at random by weight; `None` when the rule does
    /// not forward.
    pub fn pick_destination<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<&RouteDestination> {
        let Action::Forward(destinations) = &self.action else {
            return None;
        };
        if let [only] = destinations.as_slice() {
            return Some(only);
        }
        let total: u64 = destinations.iter().map(|d| u64::from(d.weight)).sum();
        if total == 0 {
            return destinations.first();
        }
        let mut point = rng.random_range(0..total);
        for destination in destinations {
            let weight = u64::from(destination.weight);
            if point < weight {
                return Some(destination);
            }
            point -= weight;
        }
        destinations.last()
    }

    /// The mirrors this request is copied to, each drawn independently.
    pub fn mirrors_for<R: Rng + ?Sized>(&self, rng: &mut R) -> Vec<&MirrorTarget> {
        self.mirrors
            .iter()
            .filter(|m| chance(rng, m.per_million))
            .collect()
    }

    /// Prepares a request for `destination`: rewrites the path
    /// (`rewrite.uri` replaces what the `uri` match covered;
    /// `uriRegexRewrite` replaces every match; the query string is kept),
    /// applies the header changes, then the authority (`rewrite.authority`,
    /// else one set in the rule's headers, else one set in the
    /// destination's), to both `Host` and the URI.
    ///
    /// Header changes run as Istio orders them for Envoy: every `remove`
    /// (rule, then destination), then the rule's `set` and `add`, then the
    /// destination's — so a destination's `set` wins over the rule's.
    /// The host a request routed to `destination` leaves with when the rule
    /// (or the destination) rewrites its authority ([`HttpRule::apply_request`]).
    pub fn rewritten_host<'a>(&'a self, destination: &'a RouteDestination) -> Option<&'a str> {
        let authority = self
            .authority
            .as_ref()
            .or(destination.headers.authority.as_ref())?;
        Some(authority.uri.host())
    }

    pub fn apply_request(
        &self,
        destination: &RouteDestination,
        parts: &mut http::request::Parts,
        matched: &Matched,
    ) -> Result<(), InvalidRewrite> {
        if let Some(rewrite) = &self.path_rewrite {
            let path = parts.uri.path();
            let new_path: Cow<'_, str> = match rewrite {
                PathRewrite::Prefix(replacement) => match matched.uri {
                    UriMatched::Whole => Cow::Borrowed(replacement),
                    UriMatched::Prefix(n) => {
                        Cow::Owned(format!("{replacement}{}", path.get(n..).unwrap_or("")))
                    }
                },
                PathRewrite::Regex { regex, replacement } => {
                    regex.replace_all(path, replacement.as_str())
                }
            };
            let path_and_query = match parts.uri.query() {
                Some(query) => format!("{new_path}?{query}"),
                None => new_path.into_owned(),
            };
            set_path_and_query(&mut parts.uri, path_and_query)?;
        }

        apply_header_ops(
            &self.headers.request,
            &destination.headers.request,
            self.has_several_destinations(),
            &mut parts.headers,
        );

        let authority = self
            .authority
            .as_ref()
            .or(destination.headers.authority.as_ref());
        if let Some(authority) = authority {
            parts
                .headers
                .insert(http::header::HOST, authority.header.clone());
            // An origin-form URI has no authority to change; from_parts
            // refuses an authority without a scheme.
            if parts.uri.authority().is_some() {
                let mut uri = parts.uri.clone().into_parts();
                uri.authority = Some(authority.uri.clone());
                parts.uri = Uri::from_parts(uri).map_err(|_| InvalidRewrite {
                    value: authority.uri.to_string(),
                })?;
            }
        }
        Ok(())
    }

    /// Applies the response header changes, in the order of
    /// [`HttpRule::apply_request`]. `destination` is `None` for a
    /// redirect, a direct response or an abort, which Envoy also passes
    /// through the rule's response headers.
    pub fn apply_response(&self, destination: Option<&RouteDestination>, headers: &mut HeaderMap) {
        match destination {
            Some(destination) => apply_header_ops(
                &self.headers.response,
                &destination.headers.response,
                self.has_several_destinations(),
                headers,
            ),
            None => {
                let rule = &self.headers.response;
                for name in &rule.remove {
                    headers.remove(name);
                }
                rule.apply_set_add(headers);
            }
        }
    }

    fn has_several_destinations(&self) -> bool {
        self.split
    }
}

/// A rule's and its destination's header changes, in Envoy's order as
/// Istio configures it. With one destination, Istio appends the
/// destination's changes to the route's: every `remove` (rule, then
/// destination), then the rule's `set` and `add`, then the destination's, so
/// the destination's `set` wins. With several, each destination's changes
/// belong to its weighted cluster, which Envoy applies before the route's:
/// the rule's win.
fn apply_header_ops(
    rule: &HeaderOps,
    destination: &HeaderOps,
    several: bool,
    headers: &mut HeaderMap,
) {
    if several {
        for ops in [destination, rule] {
            for name in &ops.remove {
                headers.remove(name);
            }
            ops.apply_set_add(headers);
        }
    } else {
        for ops in [rule, destination] {
            for name in &ops.remove {
                headers.remove(name);
            }
        }
        for ops in [rule, destination] {
            ops.apply_set_add(headers);
        }
    }
}

fn set_path_and_query(uri: &mut Uri, path_and_query: String) -> Result<(), InvalidRewrite> {
    let invalid = |value: &str| InvalidRewrite {
        value: value.to_owned(),
    };
    let pq =
        PathAndQuery::try_from(path_and_query.as_str()).map_err(|_| invalid(&path_and_query))?;
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq);
    *uri = Uri::from_parts(parts).map_err(|_| invalid(&path_and_query))?;
    Ok(())
}

fn compile_destinations(
    path: &str,
    route: &[HttpRouteDestination],
) -> Result<Vec<RouteDestination>, CompileError> {
    let only = route.len() == 1;
    let mut out = Vec::with_capacity(route.len());
    for (j, dest) in route.iter().enumerate() {
        let p = format!("{path}.route[{j}]");
        let weight = match dest.weight {
            None => 0,
            Some(w) => u32::try_from(w).map_err(|_| {
                CompileError::new(format!("{p}.weight"), format!("{w}: cannot be negative"))
            })?,
        };
        // Istio: a lone destination takes all the traffic whatever its
        // weight; among several, a weight of 0 (or none) takes none.
        let weight = if only { 100 } else { weight };
        if weight == 0 {
            continue;
        }
        let (host, subset, port) = destination(&format!("{p}.destination"), &dest.destination)?;
        out.push(RouteDestination {
            host,
            subset,
            port,
            weight,
            headers: HeaderChanges::compile(&format!("{p}.headers"), dest.headers.as_ref())?,
        });
    }
    if out.is_empty() {
        return Err(CompileError::new(
            format!("{path}.route"),
            "every destination has weight 0: no traffic can be routed",
        ));
    }
    Ok(out)
}

fn destination(
    path: &str,
    d: &Destination,
) -> Result<(String, Option<String>, Option<u16>), CompileError> {
    if d.host.is_empty() {
        return Err(CompileError::new(format!("{path}.host"), "required"));
    }
    let port = d
        .port
        .as_ref()
        .map(|p| {
            u16::try_from(p.number)
                .ok()
                .filter(|n| *n != 0)
                .ok_or_else(|| {
                    CompileError::new(
                        format!("{path}.port.number"),
                        format!("port {} is out of range 1-65535", p.number),
                    )
                })
        })
        .transpose()?;
    let subset = (!d.subset.is_empty()).then(|| d.subset.clone());
    Ok((d.host.to_ascii_lowercase(), subset, port))
}

impl MirrorTarget {
    fn compile(path: &str, d: &Destination, per_million: u32) -> Result<Self, CompileError> {
        let (host, subset, port) = destination(path, d)?;
        Ok(Self {
            host,
            subset,
            port,
            per_million,
        })
    }
}

/// The path rewrite and the authority of `rewrite`.
fn compile_rewrite(
    path: &str,
    rewrite: &HttpRewrite,
) -> Result<(Option<PathRewrite>, Option<RewrittenAuthority>), CompileError> {
    let path_rewrite = match (rewrite.uri.is_empty(), &rewrite.uri_regex_rewrite) {
        (true, None) => None,
        (false, None) => {
            let p = format!("{path}.uri");
            PathAndQuery::try_from(rewrite.uri.as_str()).map_err(|_| {
                CompileError::new(&p, format!("{:?} is not a valid URI path", rewrite.uri))
            })?;
            Some(PathRewrite::Prefix(rewrite.uri.clone()))
        }
        (true, Some(regex_rewrite)) => {
            let p = format!("{path}.uriRegexRewrite");
            let pattern = &regex_rewrite.r#match;
            let regex =
                Regex::new(pattern).map_err(|e| regex_error(&format!("{p}.match"), pattern, &e))?;
            let replacement = re2_substitution(&regex_rewrite.rewrite, regex.captures_len())
                .map_err(|reason| CompileError::new(format!("{p}.rewrite"), reason))?;
            Some(PathRewrite::Regex { regex, replacement })
        }
        (false, Some(_)) => {
            return Err(CompileError::new(
                path,
                "only one of uri and uriRegexRewrite may be set",
            ));
        }
    };
    let authority = (!rewrite.authority.is_empty())
        .then(|| RewrittenAuthority::compile(&format!("{path}.authority"), &rewrite.authority))
        .transpose()?;
    Ok((path_rewrite, authority))
}

/// Turns an RE2 substitution (`\1` for a group, `\0` for the whole match,
/// `\\` for a backslash) into the `regex` crate's (`${1}`, `$$`).
/// `groups` counts the pattern's groups, the whole match included.
fn re2_substitution(rewrite: &str, groups: usize) -> Result<String, String> {
    let mut out = String::with_capacity(rewrite.len());
    let mut chars = rewrite.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(d @ '0'..='9') => {
                    let group = d as usize - '0' as usize;
                    if group >= groups {
                        return Err(format!(
                            "\\{group} refers to a group the pattern does not have (it has {})",
                            groups.saturating_sub(1)
                        ));
                    }
                    out.push_str("${");
                    out.push(d);
                    out.push('}');
                }
                Some('\\') => out.push('\\'),
                _ => {
                    return Err(
                        "a backslash must be followed by a group number or another backslash"
                            .into(),
                    );
                }
            },
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    Ok(out)
}

impl Redirect {
    /// `matched`: the rule's path prefix, when `uri` replaces it.
    fn compile(
        path: &str,
        r: &HttpRedirect,
        matched: Option<String>,
    ) -> Result<Self, CompileError> {
        // The codes Istio translates; it drops the route for any other.
        let code = r.redirect_code.unwrap_or(301);
        let status = match code {
            301 | 302 | 303 | 307 | 308 => u16::try_from(code)
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok()),
            _ => None,
        }
        .ok_or_else(|| {
            CompileError::new(
                format!("{path}.redirectCode"),
                format!("{code} is not supported (Istio supports 301, 302, 303, 307 and 308)"),
            )
        })?;
        // In prefix mode an empty replacement strips the prefix.
        let uri = match &matched {
            Some(_) => r.uri.strip_prefix(PREFIX_MARKER),
            None => Some(r.uri.as_str()).filter(|uri| !uri.is_empty()),
        };
        if matched.is_some() && uri.is_some_and(|uri| uri.contains(['?', '#'])) {
            return Err(CompileError::new(
                format!("{path}.uri"),
                "a prefix replacement is a path: no query or fragment",
            ));
        }
        if let Some(uri) = uri {
            let absolute = if uri.starts_with('/') {
                Cow::Borrowed(uri)
            } else {
                Cow::Owned(format!("/{uri}"))
            };
            PathAndQuery::try_from(absolute.as_ref()).map_err(|_| {
                CompileError::new(
                    format!("{path}.uri"),
                    format!("{uri:?} is not a valid URI path"),
                )
            })?;
        }
        let authority = (!r.authority.is_empty()).then(|| r.authority.clone());
        if let Some(authority) = &authority {
            Authority::try_from(authority.as_str()).map_err(|_| {
                CompileError::new(
                    format!("{path}.authority"),
                    format!("{authority:?} is not a valid authority"),
                )
            })?;
        }
        let scheme = match r.scheme.as_str() {
            "" => None,
            s @ ("http" | "https") => Some(s.to_owned()),
            other => {
                return Err(CompileError::new(
                    format!("{path}.scheme"),
                    format!("{other:?}: must be \"http\" or \"https\""),
                ));
            }
        };
        let port = match (r.port, r.derive_port) {
            (None, None) => RedirectPort::Keep,
            (Some(number), None) => {
                RedirectPort::Port(u16::try_from(number).ok().filter(|n| *n != 0).ok_or_else(
                    || {
                        CompileError::new(
                            format!("{path}.port"),
                            format!("port {number} is out of range 1-65535"),
                        )
                    },
                )?)
            }
            (None, Some(RedirectPortSelection::FromRequestPort)) => RedirectPort::FromRequest,
            (None, Some(RedirectPortSelection::FromProtocolDefault)) => {
                RedirectPort::ProtocolDefault
            }
            (Some(_), Some(_)) => {
                return Err(CompileError::new(
                    path,
                    "only one of port and derivePort may be set",
                ));
            }
        };
        let path = uri.map(|uri| match matched {
            Some(matched) => RedirectPath::Prefix {
                matched,
                replacement: uri.to_owned(),
            },
            None => RedirectPath::Full(uri.to_owned()),
        });
        Ok(Self {
            path,
            authority,
            scheme,
            port,
            status,
        })
    }

    /// The `Location` for this request. A port equal to the scheme's
    /// default is left out.
    pub fn location(&self, req: &RequestInfo<'_>) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(req.scheme);
        let port = match self.port {
            RedirectPort::Keep | RedirectPort::ProtocolDefault => None,
            RedirectPort::Port(p) => Some(p),
            RedirectPort::FromRequest => Some(req.port),
        }
        .filter(|p| Some(*p) != default_port(scheme));
        let host = match &self.authority {
            Some(authority) => authority.as_str(),
            None => {
                let (host, request_port) = split_port(req.authority);
                let drop_port = match self.port {
                    RedirectPort::Keep => {
                        // Envoy: a scheme change drops the old scheme's
                        // default port.
                        scheme != req.scheme
                            && request_port.is_some()
                            && request_port == default_port(req.scheme)
                    }
                    _ => true,
                };
                if drop_port { host } else { req.authority }
            }
        };
        let new_path = self.path.as_ref().map(|p| p.apply(req.path));
        let path: Cow<'_, str> = match (new_path, req.query) {
            (Some(uri), _) if uri.contains('?') => uri,
            (Some(uri), Some(query)) => Cow::Owned(format!("{uri}?{query}")),
            (Some(uri), None) => uri,
            (None, Some(query)) => Cow::Owned(format!("{}?{query}", req.path)),
            (None, None) => Cow::Borrowed(req.path),
        };
        let slash = if path.starts_with('/') { "" } else { "/" };
        match port {
            Some(port) => format!("{scheme}://{host}:{port}{slash}{path}"),
            None => format!("{scheme}://{host}{slash}{path}"),
        }
    }

    /// The redirect response: the status and `Location`, no body.
    pub fn response(&self, req: &RequestInfo<'_>) -> Response<Bytes> {
        let mut response = Response::new(Bytes::new());
        match HeaderValue::try_from(self.location(req)) {
            Ok(location) => {
                *response.status_mut() = self.status;
                response
                    .headers_mut()
                    .insert(http::header::LOCATION, location);
            }
            // Every part was checked at build time or comes from the
            // request's own URI and authority, so this is not expected; a
            // redirect without a target would be worse than an error.
            Err(_) => *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR,
        }
        response
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// `host:port` → (`host`, port); `[v6]:port` keeps its brackets.
fn split_port(authority: &str) -> (&str, Option<u16>) {
    let split = if authority.starts_with('[') {
        authority.rfind("]:").map(|i| i + 1)
    } else {
        authority.rfind(':')
    };
    match split {
        Some(i) => match authority[i + 1..].parse() {
            Ok(port) => (&authority[..i], Some(port)),
            Err(_) => (authority, None),
        },
        None => (authority, None),
    }
}

impl DirectResponse {
    fn compile(path: &str, d: &HttpDirectResponse) -> Result<Self, CompileError> {
        let status = u16::try_from(d.status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or_else(|| {
                CompileError::new(
                    format!("{path}.status"),
                    format!("{} is not an HTTP status", d.status),
                )
            })?;
        let body = match d.body.as_ref().map(|b| (&b.string, &b.bytes)) {
            None | Some((None, None)) => Bytes::new(),
            Some((Some(text), None)) => Bytes::from(text.clone()),
            Some((None, Some(encoded))) => {
                decode_base64(encoded).map(Bytes::from).ok_or_else(|| {
                    CompileError::new(format!("{path}.body.bytes"), "not valid base64")
                })?
            }
            Some((Some(_), Some(_))) => {
                return Err(CompileError::new(
                    format!("{path}.body"),
                    "only one of string and bytes may be set",
                ));
            }
        };
        Ok(Self { status, body })
    }
}

/// Protobuf JSON's `bytes`: standard or URL-safe base64, padded or not.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for c in text.bytes() {
        let sextet = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(sextet);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            // The mask below keeps `acc` under 2^(bits+8), so this is a byte.
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // One character alone (6 bits) cannot end a byte.
    (bits < 6).then_some(out)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn base64_both_alphabets_with_or_without_padding() {
        assert_eq!(decode_base64("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_base64("aGVsbG8").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_base64("").as_deref(), Some(&b""[..]));
        assert_eq!(decode_base64("-_8=").as_deref(), Some(&[0xfb, 0xff][..]));
        assert_eq!(decode_base64("+/8=").as_deref(), Some(&[0xfb, 0xff][..]));
        assert_eq!(decode_base64("a"), None);
        assert_eq!(decode_base64("a*b="), None);
    }

    #[test]
    fn re2_substitutions_become_regex_crate_syntax() {
        assert_eq!(re2_substitution(r"/v2/\1", 2).as_deref(), Ok("/v2/${1}"));
        assert_eq!(re2_substitution(r"\0-$x", 1).as_deref(), Ok("${0}-$$x"));
        assert_eq!(re2_substitution(r"a\\b", 1).as_deref(), Ok(r"a\b"));
        assert!(re2_substitution(r"\2", 2).is_err());
        assert!(re2_substitution(r"\q", 2).is_err());
    }

    #[test]
    fn ports_split_from_hosts_and_ipv6() {
        assert_eq!(split_port("a.b:8080"), ("a.b", Some(8080)));
        assert_eq!(split_port("a.b"), ("a.b", None));
        assert_eq!(split_port("[::1]:80"), ("[::1]", Some(80)));
        assert_eq!(split_port("[::1]"), ("[::1]", None));
    }

    #[test]
    fn shadow_authority_keeps_the_port() {
        assert_eq!(
            MirrorTarget::shadow_authority("reviews:9080"),
            "reviews-shadow:9080"
        );
        assert_eq!(MirrorTarget::shadow_authority("reviews"), "reviews-shadow");
    }
}
