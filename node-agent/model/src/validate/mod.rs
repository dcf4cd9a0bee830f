//! Checks of one Istio object at a time. Each problem is a [`FieldError`]
//! naming the field by its YAML path (`spec.http[0].route[1].weight`) and
//! saying what is wrong in words an operator can act on.
//!
//! The rules follow Istio's own validation (istio/istio,
//! `pkg/config/validation`), so YAML that Istio accepts is accepted here.
//! Where Warren is deliberately stricter it says so at the check: HTTP, TCP
//! and TLS route weights must sum to 100 (Istio normalises them), and a
//! STATIC ServiceEntry needs something to send traffic to.
//!
//! Checks that need other objects (a subset named in a VirtualService and
//! defined by a DestinationRule) take the other objects' facts as
//! arguments, see [`unknown_subsets`]; the store that holds every object
//! calls them.
//!
//! One file per kind holds its entry point and the checks only that kind
//! needs: `virtual_service.rs` (with the cross-object [`unknown_subsets`]),
//! `destination_rule.rs`, `service_entry.rs`, `authorization_policy.rs` and
//! `peer_authentication.rs`, `request_authentication.rs` and `telemetry.rs`
//! (with the CEL [`telemetry::expression`] the waypoint compiles too). Checks
//! several kinds share live here.

mod authorization_policy;
mod destination_rule;
mod mesh_config;
mod peer_authentication;
mod request_authentication;
mod service_entry;
pub mod telemetry;
mod virtual_service;
mod workload_entry;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::net::IpAddr;
use std::time::Duration;

use super::error::FieldError;
use super::istio::WorkloadSelector;

// ---------------------------------------------------------------------------
// Public entry points, one per kind
// ---------------------------------------------------------------------------

pub use authorization_policy::authorization_policy;
pub use destination_rule::destination_rule;
pub use mesh_config::{mesh_config, status_code};
pub use peer_authentication::peer_authentication;
pub use request_authentication::{key_set, request_authentication, signing_key};
pub use service_entry::service_entry;
pub use telemetry::telemetry;
pub use virtual_service::{grpc_code, unknown_subsets, virtual_service};
pub use workload_entry::workload_entry;

/// Turns a deserialization error into a [`FieldError`] at the path where it
/// happened (`spec.http[0].routes` for an unknown field). The root is the
/// empty path.
pub fn from_serde<E: Display>(err: serde_path_to_error::Error<E>) -> FieldError {
    let path = err.path().to_string();
    let path = if path == "." { String::new() } else { path };
    let reason = err.into_inner().to_string();
    // serde_yaml, reading text, starts its message with its own path: the
    // field's, or for an unknown field its parent's. Say the path once.
    let reason = match reason.split_once(": ") {
        Some((head, rest))
            if !head.is_empty()
                && !head.contains(char::is_whitespace)
                && path.starts_with(head) =>
        {
            rest.to_owned()
        }
        _ => reason,
    };
    FieldError::new(path, reason)
}

/// Parses an Istio (protobuf / Go) duration: a sequence of numbers with
/// units, `ns`, `us`, `ms`, `s`, `m`, `h`, e.g. `"10s"`, `"1.5s"`,
/// `"100ms"`, `"1h30m"`. Zero (`"0s"`, `"0"`) parses; negative durations do
/// not. Fields where Istio wants at least a millisecond check that apart.
pub fn duration(path: &str, value: &str) -> Result<Duration, FieldError> {
    let bad = |why: &str| {
        FieldError::new(
            path,
            format!(
                "{value:?} is not a duration ({why}; e.g. \"10s\", \"1.5s\", \"100ms\", \"2m\", \"1h\")"
            ),
        )
    };
    if value.starts_with('-') {
        return Err(FieldError::new(
            path,
            format!("{value:?}: a duration cannot be negative"),
        ));
    }
    let text = value.strip_prefix('+').unwrap_or(value);
    if text.is_empty() {
        return Err(bad("empty"));
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut nanos: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits_end = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (whole, after) = rest.split_at(digits_end(rest));
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after) => after.split_at(digits_end(after)),
            None => ("", after),
        };
        if whole.is_empty() && fraction.is_empty() {
            return Err(bad("expected a number"));
        }
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "" => return Err(bad("missing unit")),
            other => return Err(bad(&format!("unknown unit {other:?}"))),
        };
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad("too large"))?
        };
        // Digits beyond nanosecond resolution of an hour do not matter.
        let fraction = &fraction[..fraction.len().min(18)];
        let fraction_nanos = if fraction.is_empty() {
            0
        } else {
            let f: u128 = fraction.parse().map_err(|_| bad("expected a number"))?;
            f * per_unit / 10u128.pow(fraction.len() as u32)
        };
        nanos = whole
            .checked_mul(per_unit)
            .and_then(|n| n.checked_add(fraction_nanos))
            .and_then(|n| n.checked_add(nanos))
            .ok_or_else(|| bad("too large"))?;
        rest = after;
    }
    let nanos = u64::try_from(nanos).map_err(|_| bad("too large"))?;
    Ok(Duration::from_nanos(nanos))
}

/// Checks Kubernetes label syntax: each key an optional DNS-1123 subdomain
/// prefix and `/`, then a name of at most 63 letters, digits, `-`, `_`, `.`
/// beginning and ending alphanumeric; each value empty or a name of the
/// same form. Errors are at `<path>.<key>`.
pub fn label_selector(path: &str, labels: &BTreeMap<String, String>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (key, value) in labels {
        if let Some(reason) = label_key_problem(key) {
            errors.push(FieldError::new(
                format!("{path}.{key}"),
                format!("invalid label key {key:?}: {reason}"),
            ));
        }
        if let Some(reason) = label_value_problem(value) {
            errors.push(FieldError::new(
                format!("{path}.{key}"),
                format!("invalid label value {value:?}: {reason}"),
            ));
        }
    }
    errors
}

// ---------------------------------------------------------------------------
// Shared checks
// ---------------------------------------------------------------------------

/// Collects problems as the checks walk an object.
#[derive(Default)]
struct Report {
    errors: Vec<FieldError>,
}

impl Report {
    fn error(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(FieldError::new(path, reason));
    }

    fn push(&mut self, error: FieldError) {
        self.errors.push(error);
    }

    fn extend(&mut self, errors: impl IntoIterator<Item = FieldError>) {
        self.errors.extend(errors);
    }

    fn into_errors(self) -> Vec<FieldError> {
        self.errors
    }
}

fn port(r: &mut Report, path: &str, number: u32) {
    if !(1..=65535).contains(&number) {
        r.error(path, format!("port {number} is out of range 1-65535"));
    }
}

/// A duration Istio wants to be at least 1ms and in whole milliseconds.
/// Returns it when it is.
fn positive_duration(r: &mut Report, path: &str, value: &str) -> Option<Duration> {
    match duration(path, value) {
        Err(e) => {
            r.push(e);
            None
        }
        Ok(d) if d < Duration::from_millis(1) => {
            r.error(path, format!("{value:?} is too short: the minimum is 1ms"));
            None
        }
        Ok(d) if d.subsec_nanos() % 1_000_000 != 0 => {
            r.error(
                path,
                format!("{value:?}: only whole milliseconds are supported"),
            );
            None
        }
        Ok(d) => Some(d),
    }
}

fn workload_selector(r: &mut Report, path: &str, selector: &WorkloadSelector) {
    r.extend(label_selector(
        &format!("{path}.matchLabels"),
        &selector.match_labels,
    ));
}

/// The key's problem, if any; see [`label_selector`].
fn label_key_problem(key: &str) -> Option<String> {
    if key.is_empty() {
        return Some("must not be empty".into());
    }
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && (prefix.is_empty() || prefix.len() > 253 || !prefix.split('.').all(is_dns1123_label))
    {
        return Some(format!(
            "the prefix {prefix:?} must be a DNS subdomain (dot-separated {DNS1123_LABEL}; at most 253 characters)"
        ));
    }
    if name.is_empty() {
        return Some("the name after the prefix must not be empty".into());
    }
    name_problem(name)
}

fn label_value_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        return None;
    }
    name_problem(value)
}

/// Kubernetes' "qualified name" part: `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`,
/// at most 63 characters.
fn name_problem(name: &str) -> Option<String> {
    if name.len() > 63 {
        return Some(format!("{} characters, the limit is 63", name.len()));
    }
    let bytes = name.as_bytes();
    let inner_ok = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let ends_ok = bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
    if !(inner_ok && ends_ok) {
        return Some(
            "use letters, digits, '-', '_' and '.', beginning and ending with a letter or digit"
                .into(),
        );
    }
    None
}

const DNS1123_LABEL: &str =
    "lowercase letters, digits and '-', beginning and ending alphanumeric, at most 63 characters";

pub fn is_dns1123_label(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

/// A host as Istio accepts it: DNS labels, optionally with a wildcard
/// first label (`*`, `*.example.com`, `*-svc.example.com`) and a trailing
/// dot. Case is not significant in DNS, so upper case is allowed.
fn host_name(r: &mut Report, path: &str, host: &str) {
    if host.len() > 255 {
        r.error(
            path,
            format!(
                "host name is {} characters long, the limit is 255",
                host.len()
            ),
        );
        return;
    }
    let (first, rest) = match host.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (host, None),
    };
    let first_ok = match first.strip_prefix('*') {
        Some(after) => after.is_empty() || host_label(after.strip_prefix('-').unwrap_or(after)),
        None => host_label(first),
    };
    if !first_ok {
        r.error(
            path,
            format!("{host:?} is not a valid host name (label {first:?})"),
        );
        return;
    }
    if let Some(rest) = rest
        && let Some(reason) = domain_problem(rest)
    {
        r.error(
            path,
            format!("{host:?} is not a valid host name ({reason})"),
        );
    }
}

fn host_label(label: &str) -> bool {
    let lower = label.to_ascii_lowercase();
    is_dns1123_label(&lower)
}

/// Dot-separated labels; the last may be empty (`example.com.`), but not
/// all digits.
fn domain_problem(domain: &str) -> Option<String> {
    let labels: Vec<&str> = domain.split('.').collect();
    let last = labels.last().copied().unwrap_or_default();
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return Some(format!(
            "the top-level domain {last:?} cannot be all digits"
        ));
    }
    for (i, label) in labels.iter().enumerate() {
        if i == labels.len() - 1 && label.is_empty() && labels.len() > 1 {
            break;
        }
        if !host_label(label) {
            return Some(format!("label {label:?}"));
        }
    }
    None
}

/// A fully qualified name: no wildcard.
fn fqdn_problem(name: &str) -> Option<String> {
    if name.contains('*') {
        return Some("wildcards are not allowed".into());
    }
    if name.len() > 255 {
        return Some("longer than 255 characters".into());
    }
    domain_problem(name)
}

/// Visibility: `.` (own namespace), `*` (all), `~` (none, ServiceEntry
/// only) or namespace names.
fn export_to(r: &mut Report, path: &str, entries: &[String], allow_none: bool) {
    let mut seen = BTreeSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let valid = match entry.as_str() {
            "." | "*" => true,
            "~" => allow_none,
            ns => is_dns1123_label(ns),
        };
        if !valid {
            let expected = if allow_none {
                "\".\", \"*\", \"~\" or a namespace"
            } else {
                "\".\", \"*\" or a namespace"
            };
            r.error(
                &p,
                format!("{entry:?} is not a visibility (expected {expected})"),
            );
        }
        if !seen.insert(entry.as_str()) {
            r.error(&p, format!("duplicate entry {entry:?}"));
        }
    }
    if entries.len() > 1 {
        if entries.iter().any(|e| e == "*") {
            r.error(
                path,
                "\"*\" (everyone) cannot be combined with other entries",
            );
        }
        if entries.iter().any(|e| e == "~") {
            r.error(path, "\"~\" (no one) cannot be combined with other entries");
        }
    }
}

/// An IP address or a CIDR block.
fn ip_or_cidr(value: &str) -> Result<(), String> {
    let invalid = || format!("{value:?} is not an IP address or CIDR block");
    match value.split_once('/') {
        None => value.parse::<IpAddr>().map(|_| ()).map_err(|_| invalid()),
        Some((address, length)) => {
            let ip: IpAddr = address.parse().map_err(|_| invalid())?;
            let length: u8 = length.parse().map_err(|_| invalid())?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            if length > max {
                return Err(format!("{value:?}: prefix length {length} is over {max}"));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(value: &str) -> Duration {
        match duration("d", value) {
            Ok(d) => d,
            Err(e) => panic!("{value:?} should parse: {e}"),
        }
    }

    fn reason(value: &str) -> String {
        match duration("spec.x", value) {
            Ok(d) => panic!("{value:?} should not parse, got {d:?}"),
            Err(e) => {
                assert_eq!(e.path, "spec.x");
                e.reason
            }
        }
    }

    #[test]
    fn durations_istio_writes() {
        assert_eq!(ok("10s"), Duration::from_secs(10));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("100ms"), Duration::from_millis(100));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("0.5h"), Duration::from_secs(1800));
        assert_eq!(ok("250us"), Duration::from_micros(250));
        assert_eq!(ok("250µs"), Duration::from_micros(250));
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0.000000001s"), Duration::from_nanos(1));
    }

    #[test]
    fn durations_refused_with_reason() {
        assert!(reason("").contains("empty"));
        assert!(reason("10").contains("missing unit"));
        assert!(reason("10 s").contains("unknown unit"));
        assert!(reason("10sec").contains("unknown unit \"sec\""));
        assert!(reason("s").contains("expected a number"));
        assert!(
            reason("1.2.3s").contains("expected a number")
                || reason("1.2.3s").contains("missing unit")
        );
        assert!(reason("-1s").contains("negative"));
        assert!(reason("99999999999999999999999999999h").contains("too large"));
        assert!(reason("1d").contains("unknown unit \"d\""));
    }

    #[test]
    fn positive_durations_are_whole_milliseconds() {
        let check = |value: &str| {
            let mut r = Report::default();
            positive_duration(&mut r, "p", value);
            r.into_errors()
        };
        assert!(check("1ms").is_empty());
        assert!(check("1.5s").is_empty());
        assert!(check("0s")[0].reason.contains("minimum is 1ms"));
        assert!(check("500us")[0].reason.contains("minimum is 1ms"));
        assert!(check("1.0005s")[0].reason.contains("whole milliseconds"));
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_syntax_accepted() {
        let good = labels(&[
            ("app", "reviews"),
            ("version", "v1.2_3-rc"),
            ("app.kubernetes.io/name", "Reviews"),
            ("example.com/empty", ""),
            ("A_b.c-D", "x"),
            (&"k".repeat(63), &"v".repeat(63)),
        ]);
        assert_eq!(label_selector("spec.selector.matchLabels", &good), vec![]);
    }

    #[test]
    fn label_syntax_refused_with_path() {
        let cases = [
            ("", "v", "must not be empty"),
            ("bad key", "v", "invalid label key"),
            ("-app", "v", "beginning and ending"),
            ("app-", "v", "beginning and ending"),
            ("Example.com/app", "v", "DNS subdomain"),
            ("/app", "v", "DNS subdomain"),
            ("example.com/", "v", "must not be empty"),
            ("a/b/c", "v", "use letters"),
            ("app", "has space", "invalid label value"),
            ("app", "*", "invalid label value"),
            ("app", "-v", "invalid label value"),
        ];
        for (key, value, expected) in cases {
            let errors = label_selector("spec.selector.matchLabels", &labels(&[(key, value)]));
            assert!(
                errors
                    .iter()
                    .any(|e| e.path == format!("spec.selector.matchLabels.{key}")
                        && e.reason.contains(expected)),
                "{key:?}={value:?}: expected {expected:?} in {errors:?}"
            );
        }
        let long = labels(&[(&"k".repeat(64), "v")]);
        assert!(label_selector("l", &long)[0].reason.contains("limit is 63"));
        let long_value = labels(&[("k", &"v".repeat(64))]);
        assert!(
            label_selector("l", &long_value)[0]
                .reason
                .contains("limit is 63")
        );
    }

    #[test]
    fn hosts_and_ips() {
        let check = |host: &str| {
            let mut r = Report::default();
            host_name(&mut r, "h", host);
            r.into_errors()
        };
        for good in [
            "reviews",
            "reviews.default.svc.cluster.local",
            "*.example.com",
            "*",
            "api.Example.com.",
            "*-svc.x.io",
        ] {
            assert!(check(good).is_empty(), "{good}: {:?}", check(good));
        }
        for bad in ["re_views", "a..b", "example.123", "-a.com", "a.*.com"] {
            assert!(!check(bad).is_empty(), "{bad} should be refused");
        }
        assert!(ip_or_cidr("10.0.0.0/8").is_ok());
        assert!(ip_or_cidr("::1").is_ok());
        assert!(ip_or_cidr("10.0.0.0/33").is_err());
        assert!(ip_or_cidr("10.0.0/8").is_err());
    }
}
