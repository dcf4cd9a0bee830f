//! Envoy's raw HTTP authorization protocol: the check is a copy of the
//! request's head (method, the path under `pathPrefix`, the host, its
//! `authorization` and the headers the provider names), and the answer's
//! status decides: 200 allows, a 5xx is an error, anything else denies, and
//! the client gets that answer.

use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header, request::Parts};

use bytes::Bytes;
use warren_model::istio::mesh::ExtAuthzHttp;

use super::{Changes, Mode, Pattern, Verdict, any_matches, protected};

/// The answer header naming request headers an allowing authorizer removes.
const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// Headers of the authorizer's own connection and message, which are not
/// the client's to receive.
pub(super) fn framing(name: &HeaderName) -> bool {
    [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONNECTION,
        header::UPGRADE,
        header::TE,
        header::TRAILER,
        header::PROXY_AUTHENTICATE,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Says whether the check carries the whole body or its first bytes.
pub const PARTIAL_BODY: &str = "x-envoy-auth-partial-body";

#[derive(Debug)]
pub struct Settings {
    path_prefix: String,
    /// Request headers the check carries, besides the host and
    /// `authorization`.
    include: Vec<Pattern>,
    /// Fixed headers the check carries, replacing the request's.
    additional: Vec<(HeaderName, HeaderValue)>,
    to_upstream: Vec<Pattern>,
    /// Empty: every header of a denying answer.
    to_client_on_deny: Vec<Pattern>,
    to_client_on_allow: Vec<Pattern>,
}

impl Settings {
    pub fn compile(http: &ExtAuthzHttp) -> Result<Settings, String> {
        let patterns = |texts: &[String]| texts.iter().map(|t| Pattern::new(t)).collect();
        // The deprecated field counts only when the new one is empty.
        let include = if http.include_request_headers_in_check.is_empty() {
            &http.include_headers_in_check
        } else {
            &http.include_request_headers_in_check
        };
        let additional = http
            .include_additional_headers_in_check
            .iter()
            .map(|(name, value)| {
                Ok((
                    HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("{name:?} is not a header name"))?,
                    HeaderValue::from_str(value)
                        .map_err(|_| format!("{value:?} is not a header value"))?,
                ))
            })
            .collect::<Result<_, String>>()?;
        Ok(Settings {
            path_prefix: http.path_prefix.clone().unwrap_or_default(),
            include: patterns(include),
            additional,
            to_upstream: patterns(&http.headers_to_upstream_on_allow),
            to_client_on_deny: patterns(&http.headers_to_downstream_on_deny),
            to_client_on_allow: patterns(&http.headers_to_downstream_on_allow),
        })
    }

    /// The head of the check for the request `parts` (its path already
    /// normalized, as the policies saw it). `body`: the length of the body
    /// the check carries, and whether that is only the body's first bytes.
    /// `Err` when the check cannot name the request's path: it is then not
    /// asked about another.
    pub fn check(
        &self,
        parts: &Parts,
        host: &str,
        body: Option<(usize, bool)>,
    ) -> Result<Parts, String> {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let target = format!("{}{path}", self.path_prefix);
        let mut headers = HeaderMap::new();
        for (name, value) in &parts.headers {
            if name == header::AUTHORIZATION || any_matches(&self.include, name.as_str()) {
                headers.append(name.clone(), value.clone());
            }
        }
        // What says how the check is framed is the check's own.
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::TRANSFER_ENCODING);
        if let Ok(host) = HeaderValue::from_str(host) {
            headers.insert(header::HOST, host);
        }
        let length = body.map_or(0, |(length, _)| length);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        if let Some((_, partial)) = body {
            headers.insert(
                PARTIAL_BODY,
                HeaderValue::from_static(if partial { "true" } else { "false" }),
            );
        }
        for (name, value) in &self.additional {
            headers.insert(name.clone(), value.clone());
        }
        let uri = target
            .parse::<http::Uri>()
            .map_err(|e| format!("the check's path {target:?}: {e}"))?;
        let (mut check, ()) = http::Request::builder()
            .method(parts.method.clone())
            .version(http::Version::HTTP_11)
            .uri(uri)
            .body(())
            .map_err(|e| format!("the check: {e}"))?
            .into_parts();
        check.headers = headers;
        Ok(check)
    }

    /// Reads the authorizer's answer.
    pub fn verdict(&self, answer: Response<Bytes>) -> Verdict {
        let status = answer.status();
        if status.is_server_error() {
            return Verdict::Error(format!("the authorizer answered {status}"));
        }
        let (parts, body) = answer.into_parts();
        if status == StatusCode::OK {
            return Verdict::Allow(self.allowed(&parts.headers));
        }
        Verdict::Deny(self.denied(parts.status, &parts.headers, body))
    }

    fn allowed(&self, answer: &HeaderMap) -> Changes {
        let mut changes = Changes::default();
        for value in answer.get_all(HEADERS_TO_REMOVE) {
            let Ok(names) = value.to_str() else { continue };
            for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if let Ok(name) = HeaderName::from_bytes(name.as_bytes())
                    && !protected(&name)
                {
                    changes.remove.push(name);
                }
            }
        }
        for (name, value) in answer {
            if name == HEADERS_TO_REMOVE {
                continue;
            }
            if any_matches(&self.to_upstream, name.as_str()) && !protected(name) {
                changes.set.push((name.clone(), value.clone()));
            }
            if any_matches(&self.to_client_on_allow, name.as_str()) {
                changes
                    .response
                    .push((name.clone(), value.clone(), Mode::Add));
            }
        }
        changes
    }

    fn denied(&self, status: StatusCode, answer: &HeaderMap, body: Bytes) -> Response<Bytes> {
        // Always passed on when a list is given: what a client needs to
        // act on a denial (log in, go elsewhere).
        let always = [header::WWW_AUTHENTICATE, header::LOCATION];
        let mut headers = HeaderMap::new();
        for (name, value) in answer {
            let wanted = if self.to_client_on_deny.is_empty() {
                name != header::HOST
            } else {
                always.contains(name) || any_matches(&self.to_client_on_deny, name.as_str())
            };
            if wanted && !framing(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }
}
