//! Request matching: Istio's `HTTPMatchRequest`, compiled.
//!
//! Alternatives in a rule's `match` are OR'ed, the fields of one are AND'ed,
//! and an empty list matches every request. String matches follow Envoy:
//! `exact` and `prefix` are case-sensitive byte comparisons, `regex` is RE2
//! and must match the whole value. The `uri` is matched against the path
//! without its query string.

use std::borrow::Cow;
use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;
use warren_model::istio::{HttpMatchRequest, StringMatch, StringMatchKind};

use super::CompileError;

/// What routing reads from a request. It borrows everything, so building one
/// per request costs nothing.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'a> {
    pub method: &'a Method,
    /// `http` or `https`: the `:scheme` the client used.
    pub scheme: &'a str,
    /// The path, without the query string.
    pub path: &'a str,
    /// The query string, without `?`.
    pub query: Option<&'a str>,
    /// `:authority` (or `Host`), with the port when the client sent one.
    pub authority: &'a str,
    pub headers: &'a HeaderMap,
    /// The service port the request was addressed to (`match.port`).
    pub port: u16,
    /// Labels of the calling workload; empty when unknown.
    pub source_labels: &'a BTreeMap<String, String>,
    /// Namespace of the calling workload; empty when unknown.
    pub source_namespace: &'a str,
}

impl<'a> RequestInfo<'a> {
    /// Reads method, scheme (`http` when the URI has none), path, query and
    /// authority (the URI's, else the `Host` header) from a request.
    pub fn from_parts(
        parts: &'a http::request::Parts,
        port: u16,
        source_labels: &'a BTreeMap<String, String>,
        source_namespace: &'a str,
    ) -> Self {
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                parts
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or("");
        Self {
            method: &parts.method,
            scheme: parts.uri.scheme_str().unwrap_or("http"),
            path: parts.uri.path(),
            query: parts.uri.query(),
            authority,
            headers: &parts.headers,
            port,
            source_labels,
            source_namespace,
        }
    }
}

/// How a request matched a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Matched {
    /// Index of the alternative in the rule's `match`; `None` when the rule
    /// has no `match` (it matches everything).
    pub alternative: Option<usize>,
    /// What part of the path the `uri` match covered.
    pub uri: UriMatched,
}

/// What part of the path a `uri` match covered: the part a
/// `rewrite.uri` replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UriMatched {
    /// The first `n` bytes: a `prefix` match — or no `uri` match at all,
    /// which Istio turns into the prefix `/` (so `rewrite.uri: /v2` makes
    /// `/a` into `/v2a`, as in Istio).
    Prefix(usize),
    /// The whole path: an `exact` or `regex` match.
    Whole,
}

/// A compiled `StringMatch`.
#[derive(Clone, Debug)]
pub(super) enum StringMatcher {
    /// `{}`: any value, as long as there is one.
    Present,
    Exact(String),
    Prefix(String),
    /// Anchored at both ends.
    Regex(Regex),
}

impl StringMatcher {
    /// `star_is_present`: Istio reads the regex `*` (not valid RE2) as
    /// "present" in header and query parameter matches.
    pub(super) fn compile(
        path: &str,
        m: &StringMatch,
        star_is_present: bool,
    ) -> Result<Self, CompileError> {
        if m.kinds_set() > 1 {
            return Err(CompileError::new(
                path,
                "only one of exact, prefix and regex may be set",
            ));
        }
        Ok(match m.kind() {
            StringMatchKind::Present => Self::Present,
            StringMatchKind::Exact(e) => Self::Exact(e.to_owned()),
            StringMatchKind::Prefix(p) => Self::Prefix(p.to_owned()),
            StringMatchKind::Regex("*") if star_is_present => Self::Present,
            StringMatchKind::Regex(r) => {
                Self::Regex(full_match_regex(&format!("{path}.regex"), r)?)
            }
        })
    }

    pub(super) fn matches(&self, value: &str) -> bool {
        match self {
            Self::Present => true,
            Self::Exact(e) => value == e,
            Self::Prefix(p) => value.starts_with(p.as_str()),
            Self::Regex(r) => r.is_match(value),
        }
    }
}

/// Compiles an RE2 pattern so that it must match the whole input, as Envoy's
/// `safe_regex` does.
pub(super) fn full_match_regex(path: &str, pattern: &str) -> Result<Regex, CompileError> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| regex_error(path, pattern, &e))
}

pub(super) fn regex_error(path: &str, pattern: &str, err: &regex::Error) -> CompileError {
    let detail = err.to_string();
    let detail = detail.lines().last().unwrap_or_default().trim();
    CompileError::new(
        path,
        format!("invalid regex {pattern:?} (RE2 syntax): {detail}"),
    )
}

#[derive(Clone, Debug)]
enum UriMatcher {
    Prefix {
        prefix: String,
        ignore_case: bool,
    },
    Exact {
        path: String,
        ignore_case: bool,
    },
    /// `ignoreUriCase` does not apply to regexes (Istio's reference says so).
    Regex(Regex),
}

impl UriMatcher {
    fn matches(&self, path: &str) -> Option<UriMatched> {
        match self {
            Self::Prefix {
                prefix,
                ignore_case,
            } => {
                let head = path.as_bytes().get(..prefix.len())?;
                let hit = if *ignore_case {
                    head.eq_ignore_ascii_case(prefix.as_bytes())
                } else {
                    head == prefix.as_bytes()
                };
                hit.then_some(UriMatched::Prefix(prefix.len()))
            }
            Self::Exact {
                path: exact,
                ignore_case,
            } => {
                let hit = if *ignore_case {
                    path.eq_ignore_ascii_case(exact)
                } else {
                    path == exact
                };
                hit.then_some(UriMatched::Whole)
            }
            Self::Regex(r) => r.is_match(path).then_some(UriMatched::Whole),
        }
    }
}

/// One compiled alternative of a rule's `match`.
#[derive(Clone, Debug)]
pub(super) struct RequestMatch {
    uri: UriMatcher,
    scheme: Option<StringMatcher>,
    method: Option<StringMatcher>,
    authority: Option<StringMatcher>,
    headers: Vec<(HeaderName, StringMatcher)>,
    without_headers: Vec<(HeaderName, StringMatcher)>,
    query_params: Vec<(String, StringMatcher)>,
    port: Option<u32>,
    source: SourceMatch,
}

/// Istio checks the caller apart from the request: `gateways` in a match,
/// when given, replace `sourceLabels` and `sourceNamespace` entirely.
#[derive(Clone, Debug)]
enum SourceMatch {
    /// `gateways` names `mesh`: every caller in the mesh.
    AnyInMesh,
    /// `gateways` names only gateways: never the waypoint's traffic.
    Never,
    Workload {
        labels: BTreeMap<String, String>,
        namespace: Option<String>,
    },
}

impl RequestMatch {
    pub(super) fn compile(path: &str, m: &HttpMatchRequest) -> Result<Self, CompileError> {
        let ignore_case = m.ignore_uri_case.unwrap_or(false);
        let uri = match &m.uri {
            None => None,
            Some(sm) => {
                let p = format!("{path}.uri");
                if sm.kinds_set() > 1 {
                    return Err(CompileError::new(
                        p,
                        "only one of exact, prefix and regex may be set",
                    ));
                }
                match sm.kind() {
                    StringMatchKind::Present => None,
                    StringMatchKind::Exact(e) => Some(UriMatcher::Exact {
                        path: e.to_owned(),
                        ignore_case,
                    }),
                    StringMatchKind::Prefix(prefix) => Some(UriMatcher::Prefix {
                        prefix: prefix.to_owned(),
                        ignore_case,
                    }),
                    StringMatchKind::Regex(r) => Some(UriMatcher::Regex(full_match_regex(
                        &format!("{p}.regex"),
                        r,
                    )?)),
                }
            }
        };
        let uri = uri.unwrap_or(UriMatcher::Prefix {
            prefix: "/".into(),
            ignore_case: false,
        });
        let pseudo = |field: &str, sm: &Option<StringMatch>| {
            sm.as_ref()
                .map(|sm| StringMatcher::compile(&format!("{path}.{field}"), sm, true))
                .transpose()
        };
        let header_list = |field: &str, map: &BTreeMap<String, StringMatch>| {
            map.iter()
                .map(|(name, sm)| {
                    let p = format!("{path}.{field}.{name}");
                    let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                        CompileError::new(&p, format!("{name:?} is not a valid header name"))
                    })?;
                    Ok((header, StringMatcher::compile(&p, sm, true)?))
                })
                .collect::<Result<Vec<_>, CompileError>>()
        };
        let query_params = m
            .query_params
            .iter()
            .map(|(name, sm)| {
                let p = format!("{path}.queryParams.{name}");
                Ok((name.clone(), StringMatcher::compile(&p, sm, true)?))
            })
            .collect::<Result<Vec<_>, CompileError>>()?;
        let source = if m.gateways.is_empty() {
            SourceMatch::Workload {
                labels: m.source_labels.clone(),
                namespace: (!m.source_namespace.is_empty()).then(|| m.source_namespace.clone()),
            }
        } else if m.gateways.iter().any(|g| g == "mesh") {
            SourceMatch::AnyInMesh
        } else {
            SourceMatch::Never
        };
        Ok(Self {
            uri,
            scheme: pseudo("scheme", &m.scheme)?,
            method: pseudo("method", &m.method)?,
            authority: pseudo("authority", &m.authority)?,
            headers: header_list("headers", &m.headers)?,
            without_headers: header_list("withoutHeaders", &m.without_headers)?,
            query_params,
            port: m.port,
            source,
        })
    }

    /// Whether a request on `port` from the mesh could match.
    pub(super) fn may_match_port(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == u32::from(port)) && !matches!(self.source, SourceMatch::Never)
    }

    /// `None` when the request does not match; otherwise what the `uri`
    /// match covered.
    pub(super) fn matches(&self, req: &RequestInfo<'_>) -> Option<UriMatched> {
        if self.port.is_some_and(|p| p != u32::from(req.port)) {
            return None;
        }
        match &self.source {
            SourceMatch::AnyInMesh => {}
            SourceMatch::Never => return None,
            SourceMatch::Workload { labels, namespace } => {
                let labels_ok = labels
                    .iter()
                    .all(|(k, v)| req.source_labels.get(k) == Some(v));
                let namespace_ok = namespace
                    .as_deref()
                    .is_none_or(|ns| ns == req.source_namespace);
                if !(labels_ok && namespace_ok) {
                    return None;
                }
            }
        }
        let pseudo_ok = |m: &Option<StringMatcher>, value: &str| match m {
            None => true,
            // A pseudo-header is always there, except an authority never sent.
            Some(m) => !value.is_empty() && m.matches(value),
        };
        if !pseudo_ok(&self.method, req.method.as_str())
            || !pseudo_ok(&self.authority, req.authority)
            || !pseudo_ok(&self.scheme, req.scheme)
        {
            return None;
        }
        let uri = self.uri.matches(req.path)?;
        let headers_ok = self.headers.iter().all(|(name, m)| {
            header_value(req.headers, name).is_some_and(|value| m.matches(&value))
        });
        // Envoy inverts the match and reads a missing header as "" (except
        // for `{}`, which then means "absent").
        let without_ok = self.without_headers.iter().all(|(name, m)| {
            match (header_value(req.headers, name), m) {
                (None, StringMatcher::Present) => true,
                (None, m) => !m.matches(""),
                (Some(value), m) => !m.matches(&value),
            }
        });
        let query_ok = self
            .query_params
            .iter()
            .all(|(name, m)| query_value(req.query, name).is_some_and(|value| m.matches(value)));
        (headers_ok && without_ok && query_ok).then_some(uri)
    }
}

/// A header's value as Envoy matches it: several values joined with `,`.
/// Bytes that are not UTF-8 are replaced, so they match nothing literal.
fn header_value<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<Cow<'h, str>> {
    let mut values = headers.get_all(name).iter();
    let first = String::from_utf8_lossy(values.next()?.as_bytes());
    let mut rest = values.peekable();
    if rest.peek().is_none() {
        return Some(first);
    }
    let mut joined = first.into_owned();
    for value in rest {
        joined.push(',');
        joined.push_str(&String::from_utf8_lossy(value.as_bytes()));
    }
    Some(Cow::Owned(joined))
}

/// The first value of a query parameter, undecoded as Envoy reads it;
/// `a` alone has the value "".
fn query_value<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn query_values_are_first_and_undecoded() {
        assert_eq!(query_value(Some("a=1&b=2&a=3"), "a"), Some("1"));
        assert_eq!(query_value(Some("flag&b=2"), "flag"), Some(""));
        assert_eq!(query_value(Some("q=a%20b"), "q"), Some("a%20b"));
        assert_eq!(query_value(Some("a=1"), "b"), None);
        assert_eq!(query_value(None, "a"), None);
    }

    #[test]
    fn repeated_headers_are_joined_with_commas() {
        let mut headers = HeaderMap::new();
        headers.append("x-a", "1".parse().expect("static value"));
        headers.append("x-a", "2".parse().expect("static value"));
        let name = HeaderName::from_static("x-a");
        assert_eq!(header_value(&headers, &name).as_deref(), Some("1,2"));
        assert_eq!(
            header_value(&headers, &HeaderName::from_static("x-b")),
            None
        );
    }

    #[test]
    fn regexes_match_the_whole_value() {
        let re = full_match_regex("p", "v[12]").expect("valid regex");
        assert!(re.is_match("v1"));
        assert!(!re.is_match("v1-beta"));
        assert!(!re.is_match("xv2"));
        // Alternation stays inside the anchors.
        let re = full_match_regex("p", "a|b").expect("valid regex");
        assert!(!re.is_match("ab"));
    }
}
