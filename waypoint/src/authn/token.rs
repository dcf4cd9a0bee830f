//! Finding a request's tokens where the rules say to look, and checking
//! one: its form, its issuer, its signature against the issuer's keys, its
//! time limits and its audience.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::{HeaderName, HeaderValue, header, request::Parts};
use jsonwebtoken::Validation;
use serde_json::{Map, Value};
use warren_model::istio::JwtRule;

use super::{Rejection, Rule};

/// Envoy's allowance for clocks that disagree, on `exp` and `nbf`.
const CLOCK_SKEW_SECS: f64 = 60.0;

/// Where a rule looks for its tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// The header's value after `prefix` (compared without case).
    Header {
        name: HeaderName,
        prefix: String,
    },
    /// A query parameter.
    Param(String),
    Cookie(String),
}

/// Where a rule that names no location looks: `Authorization: Bearer …`
/// and the `access_token` parameter.
pub fn default_locations() -> Vec<Location> {
    vec![
        Location::Header {
            name: header::AUTHORIZATION,
            prefix: "Bearer ".into(),
        },
        Location::Param("access_token".into()),
    ]
}

/// A rule's locations; Istio's default when it names none.
pub fn locations(rule: &JwtRule) -> Result<Vec<Location>, String> {
    let mut out = Vec::new();
    for h in &rule.from_headers {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("{:?} is not a header name", h.name))?;
        out.push(Location::Header {
            name,
            prefix: h.prefix.clone(),
        });
    }
    out.extend(rule.from_params.iter().cloned().map(Location::Param));
    out.extend(rule.from_cookies.iter().cloned().map(Location::Cookie));
    if out.is_empty() {
        out = default_locations();
    }
    Ok(out)
}

/// One token in a request, with the rules that looked where it was (and
/// at which of their locations).
pub struct Found<'a> {
    token: String,
    seen_by: Vec<(&'a Rule, usize)>,
}

impl Found<'_> {
    /// The payload part, as sent (base64url).
    pub fn payload(&self) -> &str {
        self.token.split('.').nth(1).unwrap_or_default()
    }
}

/// The distinct tokens of a request, in the order the rules look.
pub fn find<'a>(rules: &[&'a Rule], parts: &Parts) -> Vec<Found<'a>> {
    let mut found: Vec<Found<'a>> = Vec::new();
    for rule in rules {
        for (i, location) in rule.locations.iter().enumerate() {
            for token in read(location, parts) {
                match found.iter_mut().find(|f| f.token == token) {
                    Some(f) => f.seen_by.push((rule, i)),
                    None => found.push(Found {
                        token,
                        seen_by: vec![(rule, i)],
                    }),
                }
            }
        }
    }
    found
}

fn read(location: &Location, parts: &Parts) -> Vec<String> {
    let mut out = Vec::new();
    match location {
        Location::Header { name, prefix } => {
            for value in parts.headers.get_all(name) {
                let Ok(value) = value.to_str() else { continue };
                let value = value.trim();
                if value.len() >= prefix.len()
                    && value.is_char_boundary(prefix.len())
                    && value[..prefix.len()].eq_ignore_ascii_case(prefix)
                {
                    let token = value[prefix.len()..].trim();
                    if !token.is_empty() {
                        out.push(token.to_owned());
                    }
                }
            }
        }
        Location::Param(name) => {
            if let Some(query) = parts.uri.query() {
                out.extend(
                    form_urlencoded::parse(query.as_bytes())
                        .filter(|(k, v)| k == name && !v.is_empty())
                        .map(|(_, v)| v.into_owned()),
                );
            }
        }
        Location::Cookie(name) => {
            for value in parts.headers.get_all(header::COOKIE) {
                let Ok(value) = value.to_str() else { continue };
                out.extend(
                    value
                        .split(';')
                        .filter_map(|c| c.trim().split_once('='))
                        .filter(|(k, v)| k == name && !v.is_empty())
                        .map(|(_, v)| v.to_owned()),
                );
            }
        }
    }
    out
}

/// A token that passed every check.
pub struct Checked<'a> {
    pub rule: &'a Rule,
    /// Which of the rule's locations it was found at.
    pub location: usize,
    pub claims: Map<String, Value>,
}

/// Checks `found` against the rule of its issuer.
pub async fn verify<'a>(found: &Found<'a>) -> Result<Checked<'a>, Rejection> {
    let token = found.token.as_str();
    let mut sections = token.split('.');
    let (Some(_), Some(payload), Some(_), None) = (
        sections.next(),
        sections.next(),
        sections.next(),
        sections.next(),
    ) else {
        return Err(Rejection::Malformed);
    };
    // Read before the signature is checked only to pick the issuer's rule.
    let claims: Map<String, Value> = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(Rejection::Malformed)?;
    let issuer = claims.get("iss").and_then(Value::as_str);
    // An unknown `alg` (`none` among them) fails here.
    let head = jsonwebtoken::decode_header(token).map_err(|_| Rejection::BadHeader)?;
    // Each rule of the issuer that looked where the token was (two
    // RequestAuthentications may name one issuer): the first to accept it.
    let mut first_refusal = None;
    for (rule, location) in found
        .seen_by
        .iter()
        .filter(|(rule, _)| Some(rule.issuer.as_str()) == issuer)
    {
        match check(token, &head, &claims, rule).await {
            Ok(()) => {
                return Ok(Checked {
                    rule,
                    location: *location,
                    claims,
                });
            }
            Err(refusal) => {
                first_refusal.get_or_insert(refusal);
            }
        }
    }
    Err(first_refusal.unwrap_or(Rejection::UnknownIssuer))
}

/// Checks a token (whose issuer is `rule`'s) against `rule`: signature,
/// time limits, audience.
async fn check(
    token: &str,
    head: &jsonwebtoken::Header,
    claims: &Map<String, Value>,
    rule: &Rule,
) -> Result<(), Rejection> {
    let keys = rule.keys().await?;
    let mut validation = Validation::new(head.alg);
    // Time and audience are checked below, as Envoy checks them.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let mut candidates = keys.candidates(head.kid.as_deref(), head.alg).peekable();
    if candidates.peek().is_none() {
        return Err(Rejection::NoMatchingKey);
    }
    // The key's type must suit `alg` (the library refuses an RSA or EC key
    // for HMAC), so a public key can never serve as a shared secret.
    if !candidates.any(|key| jsonwebtoken::decode::<Value>(token, &key.key, &validation).is_ok()) {
        return Err(Rejection::BadSignature);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let time = |name: &str| match claims.get(name) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or(Rejection::Malformed),
    };
    if time("exp")?.is_some_and(|exp| now > exp + CLOCK_SKEW_SECS) {
        return Err(Rejection::Expired);
    }
    if time("nbf")?.is_some_and(|nbf| now + CLOCK_SKEW_SECS < nbf) {
        return Err(Rejection::NotYetValid);
    }
    if !rule.audiences.is_empty() {
        let allowed = |v: &Value| {
            v.as_str()
                .is_some_and(|a| rule.audiences.iter().any(|r| same_audience(r, a)))
        };
        let ok = match claims.get("aud") {
            Some(Value::Array(items)) => items.iter().any(allowed),
            Some(v) => allowed(v),
            None => false,
        };
        if !ok {
            return Err(Rejection::Audience);
        }
    }
    Ok(())
}

/// Audiences compare as Envoy compares them: without an `http://` or
/// `https://` scheme and without one trailing `/`.
fn same_audience(a: &str, b: &str) -> bool {
    let bare = |s: &str| -> String {
        let s = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"))
            .unwrap_or(s);
        s.strip_suffix('/').unwrap_or(s).to_owned()
    };
    bare(a) == bare(b)
}

/// Writes what `rule` outputs of a good token: its payload and claims.
pub fn write_outputs(rule: &Rule, claims: &Map<String, Value>, payload: &str, parts: &mut Parts) {
    if let Some(name) = &rule.payload_header
        && let Ok(value) = HeaderValue::from_str(payload)
    {
        parts.headers.insert(name.clone(), value);
    }
    for (name, claim) in &rule.claim_headers {
        // A nested claim is named with dots (`a.b`), as Envoy reads it.
        let value = claims.get(claim).or_else(|| {
            let mut parts = claim.split('.');
            let first = claims.get(parts.next()?)?;
            parts.try_fold(first, |v, p| v.get(p))
        });
        let text = match value {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::Bool(b)) => b.to_string(),
            _ => continue,
        };
        if let Ok(value) = HeaderValue::from_str(&text) {
            parts.headers.insert(name.clone(), value);
        }
    }
}
