//! A rule's `corsPolicy`, as Envoy's CORS filter applies the policy Istio
//! gives it. A request is a CORS request when it has an `Origin`. A
//! preflight (`OPTIONS` with `Access-Control-Request-Method`) is answered
//! here, 200 with what the policy allows, unless its origin is not allowed
//! and the policy forwards such preflights (Istio's default,
//! `unmatchedPreflights: FORWARD`). Any other request from an allowed origin
//! goes on, and its answer, whoever gives it, says the origin is allowed.
//! Runs after the faults (Istio puts Envoy's fault filter first), and only
//! on rules that forward: Envoy's filter leaves redirects and direct
//! responses alone.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use warren_model::istio::{CorsPolicy, UnmatchedPreflights};

use super::CompileError;
use super::matching::StringMatcher;

/// A compiled `corsPolicy`.
#[derive(Clone, Debug)]
pub struct Cors {
    origins: Vec<StringMatcher>,
    /// The lists as Istio joins them for Envoy (`,`); `None` when empty.
    allow_methods: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    /// Whole seconds.
    max_age: Option<HeaderValue>,
    allow_credentials: bool,
    /// Whether a preflight from an origin not allowed goes to the upstream.
    forward_unmatched_preflights: bool,
}

/// What a request's CORS check asks of the waypoint.
#[derive(Debug)]
pub enum CorsCheck {
    /// A preflight answered here, never forwarded.
    Answer(Response<Bytes>),
    /// Forward it; the answer says the origin (this value) is allowed.
    Allowed(HeaderValue),
    /// Forward it untouched: not a CORS request, or one from an origin not
    /// allowed.
    Untouched,
}

impl Cors {
    pub(super) fn compile(path: &str, policy: &CorsPolicy) -> Result<Self, CompileError> {
        let origins = policy
            .allow_origins
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let path = format!("{path}.allowOrigins[{i}]");
                // An empty match would take `*`, so every origin: the model
                // refuses it, and so does this, should one come through.
                if [&m.exact, &m.prefix, &m.regex]
                    .iter()
                    .all(|v| v.as_deref().unwrap_or_default().is_empty())
                {
                    return Err(CompileError::new(path, "an empty origin match"));
                }
                StringMatcher::compile(&path, m, false)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let joined = |field: &str, items: &[String]| -> Result<Option<HeaderValue>, CompileError> {
            if items.is_empty() {
                return Ok(None);
            }
            HeaderValue::from_str(&items.join(","))
                .map(Some)
                .map_err(|_| CompileError::new(format!("{path}.{field}"), "not a header value"))
        };
        let max_age = match &policy.max_age {
            None => None,
            Some(text) => {
                let age = warren_model::validate::duration(&format!("{path}.maxAge"), text)
                    .map_err(|e| CompileError::new(e.path, e.reason))?;
                Some(HeaderValue::from(age.as_secs()))
            }
        };
        Ok(Self {
            origins,
            allow_methods: joined("allowMethods", &policy.allow_methods)?,
            allow_headers: joined("allowHeaders", &policy.allow_headers)?,
            expose_headers: joined("exposeHeaders", &policy.expose_headers)?,
            max_age,
            allow_credentials: policy.allow_credentials == Some(true),
            forward_unmatched_preflights: policy.unmatched_preflights
                != Some(UnmatchedPreflights::Ignore),
        })
    }

    /// Whether `origin` is allowed: a match of `*` allows every origin, as
    /// in Envoy.
    fn allows(&self, origin: &str) -> bool {
        self.origins
            .iter()
            .any(|m| m.matches("*") || m.matches(origin))
    }

    /// What to do with a request of `method` and `headers`.
    pub fn check(&self, method: &Method, headers: &HeaderMap) -> CorsCheck {
        let Some(origin) = headers.get(header::ORIGIN).filter(|o| !o.is_empty()) else {
            return CorsCheck::Untouched;
        };
        let allowed = origin.to_str().is_ok_and(|o| self.allows(o));
        let asked_method = headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .filter(|m| !m.is_empty());
        let preflight = *method == Method::OPTIONS && asked_method.is_some();
        if !preflight || (!allowed && self.forward_unmatched_preflights) {
            return match allowed {
                true => CorsCheck::Allowed(origin.clone()),
                false => CorsCheck::Untouched,
            };
        }
        let mut response = Response::new(Bytes::new());
        *response.status_mut() = StatusCode::OK;
        let out = response.headers_mut();
        // Envoy's answer passes through its own marking of answers: an
        // allowed origin's gets what any answer to it gets.
        if allowed {
            self.allow(origin.clone(), out);
        } else if self.allow_credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        // `*` alone allows what the preflight asks for (Envoy echoes it).
        let star_or = |list: &Option<HeaderValue>, asked: Option<&HeaderValue>| match list {
            Some(v) if v == "*" => asked.cloned(),
            other => other.clone(),
        };
        let asked_headers = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS);
        if let Some(v) = star_or(&self.allow_methods, asked_method) {
            out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
        }
        if let Some(v) = star_or(&self.allow_headers, asked_headers) {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if let Some(v) = &self.max_age {
            out.insert(header::ACCESS_CONTROL_MAX_AGE, v.clone());
        }
        CorsCheck::Answer(response)
    }

    /// Marks the answer to a request from the allowed `origin`.
    pub fn allow(&self, origin: HeaderValue, headers: &mut HeaderMap) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if self.allow_credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(expose) = &self.expose_headers {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}
