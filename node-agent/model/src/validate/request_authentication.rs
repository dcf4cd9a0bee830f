//! RequestAuthentication checks: attachment, and each JWT rule's issuer,
//! key set, token locations and output headers.

use std::collections::BTreeSet;

use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse},
};

use crate::error::FieldError;
use crate::istio::{JwtRule, RequestAuthentication};

use super::{Report, authorization_policy::attachment, positive_duration};

/// Checks a RequestAuthentication on its own.
pub fn request_authentication(ra: &RequestAuthentication) -> Vec<FieldError> {
    let mut r = Report::default();
    let spec = &ra.spec;
    attachment(
        &mut r,
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
    );
    let mut issuers = BTreeSet::new();
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        let path = format!("spec.jwtRules[{i}]");
        jwt_rule(&mut r, &path, rule);
        if !rule.issuer.is_empty() && !issuers.insert(rule.issuer.as_str()) {
            // Two rules for one issuer: which keys and locations would apply
            // to its tokens is ambiguous.
            r.error(
                format!("{path}.issuer"),
                format!("{:?} is already the issuer of an earlier rule", rule.issuer),
            );
        }
    }
    r.into_errors()
}

fn jwt_rule(r: &mut Report, path: &str, rule: &JwtRule) {
    if rule.issuer.is_empty() {
        r.error(format!("{path}.issuer"), "required");
    }
    for (i, audience) in rule.audiences.iter().enumerate() {
        if audience.is_empty() {
            r.error(format!("{path}.audiences[{i}]"), "must not be empty");
        }
    }
    if !rule.jwks.is_empty() {
        if let Err(reason) = key_set(&rule.jwks) {
            r.error(format!("{path}.jwks"), reason);
        }
    } else if !rule.jwks_uri.is_empty() {
        if let Err(reason) = http_url(&rule.jwks_uri) {
            r.error(format!("{path}.jwksUri"), reason);
        }
    } else if !rule.issuer.is_empty() && http_url(&rule.issuer).is_err() {
        r.error(
            format!("{path}.jwksUri"),
            format!(
                "required: the issuer {:?} is not an http(s) URL, so OpenID discovery cannot find its keys; give jwksUri or jwks",
                rule.issuer
            ),
        );
    }
    for (i, header) in rule.from_headers.iter().enumerate() {
        header_name(r, &format!("{path}.fromHeaders[{i}].name"), &header.name);
    }
    for (field, names) in [
        ("fromParams", &rule.from_params),
        ("fromCookies", &rule.from_cookies),
    ] {
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() {
                r.error(format!("{path}.{field}[{i}]"), "must not be empty");
            }
        }
    }
    if !rule.output_payload_to_header.is_empty() {
        header_name(
            r,
            &format!("{path}.outputPayloadToHeader"),
            &rule.output_payload_to_header,
        );
    }
    for (i, output) in rule.output_claim_to_headers.iter().enumerate() {
        let p = format!("{path}.outputClaimToHeaders[{i}]");
        header_name(r, &format!("{p}.header"), &output.header);
        if output.claim.is_empty() {
            r.error(format!("{p}.claim"), "required");
        }
    }
    if let Some(timeout) = &rule.timeout {
        positive_duration(r, &format!("{path}.timeout"), timeout);
    }
    for (i, claim) in rule.space_delimited_claims.iter().enumerate() {
        if claim.is_empty() {
            r.error(
                format!("{path}.spaceDelimitedClaims[{i}]"),
                "must not be empty",
            );
        }
    }
}

/// A JSON Web Key Set whose every key is readable, with at least one that
/// verifies signatures (see [`signing_key`]).
pub fn key_set(text: &str) -> Result<JwkSet, String> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
    if set.keys.is_empty() {
        return Err("the key set has no keys".into());
    }
    let mut signing = 0;
    for (i, key) in set.keys.iter().enumerate() {
        if signing_key(key)
            .map_err(|e| format!("key {i} cannot verify tokens: {e}"))?
            .is_some()
        {
            signing += 1;
        }
    }
    if signing == 0 {
        return Err("no key of the set verifies signatures (only encryption keys)".into());
    }
    Ok(set)
}

/// What a key verifies signatures with, and for which algorithm if it says:
/// `None` for an encryption key (`use: enc`, or an encryption `alg`), which
/// signs nothing; an error for a key that cannot be used.
pub fn signing_key(jwk: &Jwk) -> Result<Option<(DecodingKey, Option<Algorithm>)>, String> {
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return Ok(None);
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => match a.to_string().parse::<Algorithm>() {
            Ok(alg) => Some(alg),
            Err(_) => return Ok(None),
        },
    };
    match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P521 => {
            return Err("P-521 (ES512) keys are not supported".into());
        }
        // base64url, unpadded: four characters carry three bytes.
        AlgorithmParameters::OctetKey(oct)
            if oct.value.trim_end_matches('=').len() * 3 / 4 < 32 =>
        {
            return Err("an HMAC key needs at least 32 bytes".into());
        }
        _ => {}
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    Ok(Some((key, alg)))
}

fn http_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("{url:?} is not an http:// or https:// URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("{url:?} has no host (or carries credentials)"));
    }
    url.parse::<http::Uri>()
        .map(|_| ())
        .map_err(|e| format!("{url:?} is not a valid URL: {e}"))
}

fn header_name(r: &mut Report, path: &str, name: &str) {
    if name.is_empty() {
        r.error(path, "required");
    } else if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
        r.error(
            path,
            format!("{name:?}: pseudo-headers and host cannot be set"),
        );
    } else if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        r.error(path, format!("{name:?} is not a valid header name"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(spec: serde_json::Value) -> Vec<String> {
        let ra: RequestAuthentication = serde_json::from_value(serde_json::json!({
            "apiVersion": "security.istio.io/v1",
            "kind": "RequestAuthentication",
            "metadata": {"name": "jwt", "namespace": "demo"},
            "spec": spec,
        }))
        .expect("parses");
        request_authentication(&ra)
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","alg":"ES256","kid":"k1",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

    #[test]
    fn a_good_rule_passes() {
        let errors = check(serde_json::json!({
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}],
            "jwtRules": [
                {"issuer": "https://issuer.example", "jwks": JWKS, "audiences": ["shop"],
                 "fromHeaders": [{"name": "x-jwt", "prefix": "Bearer "}],
                 "outputClaimToHeaders": [{"header": "x-user", "claim": "sub"}],
                 "timeout": "2s"},
                {"issuer": "https://other.example"},
                {"issuer": "corp", "jwksUri": "http://keys.corp:8080/jwks.json"}
            ]
        }));
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn each_problem_is_named_by_its_field() {
        let errors = check(serde_json::json!({
            "selector": {"matchLabels": {"app": "a"}},
            "targetRef": {"kind": "Service", "name": "a"},
            "jwtRules": [
                {"jwks": "{\"keys\": []}"},
                {"issuer": "corp"},
                {"issuer": "x", "jwksUri": "ftp://keys"},
                {"issuer": "x", "jwks": JWKS},
                {"issuer": "y", "jwks": "{\"keys\":[{\"kty\":\"RSA\",\"n\":\"!\",\"e\":\"AQAB\"}]}"},
                {"issuer": "w", "jwks": "{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2hvcnQ\"}]}"},
                {"issuer": "v", "jwks": "{\"keys\":[{\"kty\":\"RSA\",\"use\":\"enc\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}"},
                {"issuer": "z", "jwks": JWKS, "fromHeaders": [{"name": ":path"}],
                 "outputClaimToHeaders": [{"header": "x-a"}], "timeout": "0s"}
            ]
        }));
        let expect = [
            "spec: only one of selector",
            "spec.jwtRules[0].issuer: required",
            "spec.jwtRules[0].jwks: the key set has no keys",
            "spec.jwtRules[1].jwksUri: required: the issuer \"corp\"",
            "spec.jwtRules[2].jwksUri: \"ftp://keys\" is not an http",
            "spec.jwtRules[3].issuer: \"x\" is already the issuer",
            "spec.jwtRules[4].jwks: key 0 cannot verify tokens",
            "spec.jwtRules[5].jwks: key 0 cannot verify tokens: an HMAC key needs at least 32 bytes",
            "spec.jwtRules[6].jwks: no key of the set verifies signatures",
            "spec.jwtRules[7].fromHeaders[0].name: \":path\": pseudo-headers",
            "spec.jwtRules[7].outputClaimToHeaders[0].claim: required",
            "spec.jwtRules[7].timeout:",
        ];
        for want in expect {
            assert!(
                errors.iter().any(|e| e.starts_with(want)),
                "{want:?} not in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), expect.len(), "{errors:#?}");
    }
}
