//! An AuthorizationPolicy's rules as tests on a request.
//!
//! Istio's structure is kept: a rule holds when any of its `from` sources,
//! any of its `to` operations and all of its `when` conditions hold; within
//! a source or operation every field must hold; a field holds when any of
//! its values matches (`not…` fields: when none does).
//!
//! JWT principals and claims (`requestPrincipals`, `request.auth.*`) are
//! those of the token [`crate::authn`] verified; a request without one has
//! none, so an ALLOW rule that asks for them does not match it.
//!
//! What the waypoint cannot evaluate (path templates, attributes it does
//! not know) fails closed, as Istio does: the field is recorded as unsupported, which makes an ALLOW rule
//! never match and is ignored in a DENY rule (so that it denies more, never
//! less).

use http::HeaderName;
use warren_model::istio::{Condition, Operation, Rule, Source};

use super::{
    Request, ServerName,
    matcher::{Cidr, PathTemplate, Pattern},
};
use crate::authn::Verified;

/// What one field tests, with the values it accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Test {
    /// The peer's SPIFFE identity without `spiffe://`.
    Principal(Vec<Pattern>),
    /// The namespace of the peer's identity.
    Namespace(Vec<Pattern>),
    SourceIp(Vec<Cidr>),
    /// The address the client dialled (a Service's, or a pod's own).
    DestinationIp(Vec<Cidr>),
    /// The destination (service) port.
    Port(Vec<u16>),
    Method(Vec<Pattern>),
    /// The normalized path, without the query.
    Path(Vec<Pattern>),
    /// The authority, without case.
    Host(Vec<Pattern>),
    Header(HeaderName, Vec<Pattern>),
    /// The verified JWT's issuer and subject.
    RequestPrincipal(Vec<RequestPrincipal>),
    /// A verified JWT's claim, by its path of names (`aud`, `groups`,
    /// `realm_access`/`roles`).
    Claim(Vec<String>, Vec<Pattern>),
    /// `connection.sni`: the server name of the client's TLS hello, without
    /// case.
    ServerName(Vec<Pattern>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Field {
    test: Test,
    negated: bool,
}

impl Test {
    /// Whether it reads the HTTP request (a TCP connection has none).
    fn is_http(&self) -> bool {
        matches!(
            self,
            Test::Method(_)
                | Test::Path(_)
                | Test::Host(_)
                | Test::Header(..)
                | Test::RequestPrincipal(_)
                | Test::Claim(..)
        )
    }
}

impl Field {
    fn holds(&self, request: &Request<'_>, allowing: bool) -> bool {
        if request.http.is_none() && self.test.is_http() {
            // A TCP connection, as Istio decides it: an HTTP field makes an
            // ALLOW rule match nothing, and is left out of a DENY rule (so
            // that it denies more, never less).
            return !allowing;
        }
        if let Test::ServerName(_) = self.test {
            match request.server_name {
                // Fail closed, as for an HTTP field on a connection.
                ServerName::NotRead => return !allowing,
                // The most lenient reading (see `ServerName::Any`).
                ServerName::Any => return allowing,
                ServerName::Read(_) => {}
            }
        }
        let any = |patterns: &[Pattern], value: &str| patterns.iter().any(|p| p.matches(value));
        let hit = match &self.test {
            Test::Principal(p) => request.principals.iter().any(|n| any(p, n)),
            Test::Namespace(p) => any(p, request.namespace),
            Test::SourceIp(blocks) => blocks.iter().any(|b| b.contains(request.source_ip)),
            Test::DestinationIp(blocks) => {
                blocks.iter().any(|b| b.contains(request.destination_ip))
            }
            Test::Port(ports) => ports.contains(&request.port),
            Test::Method(p) => request.http.as_ref().is_some_and(|h| any(p, h.method)),
            Test::Path(p) => request.http.as_ref().is_some_and(|h| any(p, h.path)),
            Test::Host(p) => request.http.as_ref().is_some_and(|h| {
                let host = h.host.as_str();
                let bare = strip_port(host);
                p.iter().any(|p| p.matches(host) || p.matches(bare))
            }),
            // An absent header matches no value: a `values` condition fails
            // and a `notValues` one holds, as Envoy's header matcher does.
            Test::Header(name, p) => request
                .http
                .as_ref()
                .and_then(|h| h.header(name))
                .is_some_and(|v| any(p, &v)),
            // No token, no principal: `values` fail, `notValues` hold.
            Test::RequestPrincipal(p) => request
                .http
                .as_ref()
                .and_then(|h| h.auth)
                .is_some_and(|a| p.iter().any(|p| p.matches(a))),
            Test::Claim(path, p) => request
                .http
                .as_ref()
                .and_then(|h| h.auth)
                .is_some_and(|a| a.claim(path).iter().any(|v| any(p, v))),
            // No hello, no name: `values` fail, `notValues` hold, as
            // Envoy's `requested_server_name` matcher does on an empty name.
            Test::ServerName(p) => match request.server_name {
                ServerName::Read(Some(name)) => any(p, &name.to_ascii_lowercase()),
                _ => false,
            },
        };
        hit != self.negated
    }
}

/// A `requestPrincipals` value as Istio reads it: `*`, any caller with an
/// issuer and a subject; `<issuer>/<subject>`, split at the last `/`, each
/// side a pattern of its own (so `https://idp.example/*` is that issuer
/// exactly, any subject); without a `/`, a pattern of the whole
/// `<iss>/<sub>`. A token without a subject names no principal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestPrincipal {
    Any,
    Parts(Pattern, Pattern),
    Whole(Pattern),
}

impl RequestPrincipal {
    fn parse(value: &str) -> RequestPrincipal {
        if value == "*" {
            return RequestPrincipal::Any;
        }
        match value.rsplit_once('/') {
            Some((issuer, subject)) => {
                RequestPrincipal::Parts(Pattern::parse(issuer), Pattern::parse(subject))
            }
            None => RequestPrincipal::Whole(Pattern::parse(value)),
        }
    }

    fn matches(&self, caller: &Verified) -> bool {
        let (Some(subject), Some(principal)) = (&caller.subject, &caller.principal) else {
            return false;
        };
        if caller.issuer.is_empty() {
            return false;
        }
        match self {
            RequestPrincipal::Any => true,
            RequestPrincipal::Parts(issuer, sub) => {
                issuer.matches(&caller.issuer) && sub.matches(subject)
            }
            RequestPrincipal::Whole(p) => p.matches(principal),
        }
    }
}

fn request_principals(values: &[String]) -> Option<Test> {
    (!values.is_empty()).then(|| {
        Test::RequestPrincipal(values.iter().map(|v| RequestPrincipal::parse(v)).collect())
    })
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`.
fn strip_port(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((host, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.contains(':') || host.ends_with(']')) =>
        {
            host
        }
        _ => authority,
    }
}

/// One compiled rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledRule {
    /// Alternatives: any must hold (none given: no constraint).
    from: Vec<Vec<Field>>,
    to: Vec<Vec<Field>>,
    /// All must hold.
    when: Vec<Field>,
    /// Fields the waypoint cannot evaluate, by their YAML path.
    pub unsupported: Vec<String>,
}

impl CompiledRule {
    /// Whether the rule matches. `allowing` rules with an unsupported field
    /// never do; in the others that field was left out (it matches).
    pub fn matches(&self, request: &Request<'_>, allowing: bool) -> bool {
        if allowing && !self.unsupported.is_empty() {
            return false;
        }
        let all = |fields: &[Field]| fields.iter().all(|f| f.holds(request, allowing));
        let any_of = |alternatives: &[Vec<Field>]| {
            alternatives.is_empty() || alternatives.iter().any(|fields| all(fields))
        };
        any_of(&self.from) && any_of(&self.to) && all(&self.when)
    }
}

pub fn rule(rule: &Rule) -> CompiledRule {
    let mut unsupported = Vec::new();
    let from = rule
        .from
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let path = format!("from[{i}].source");
            f.source
                .as_ref()
                .map_or_else(Vec::new, |s| source(s, &path, &mut unsupported))
        })
        .collect();
    let to = rule
        .to
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let path = format!("to[{i}].operation");
            t.operation
                .as_ref()
                .map_or_else(Vec::new, |o| operation(o, &path, &mut unsupported))
        })
        .collect();
    let mut when = Vec::new();
    for (i, c) in rule.when.iter().enumerate() {
        condition(c, &format!("when[{i}]"), &mut when, &mut unsupported);
    }
    CompiledRule {
        from,
        to,
        when,
        unsupported,
    }
}

/// Pushes `test(values)` (and its negation for `not_values`) when non-empty.
fn push(fields: &mut Vec<Field>, values: Option<Test>, negated: bool) {
    if let Some(test) = values {
        fields.push(Field { test, negated });
    }
}

fn patterns(values: &[String]) -> Option<Vec<Pattern>> {
    (!values.is_empty()).then(|| values.iter().map(|v| Pattern::parse(v)).collect())
}

/// `ns/sa` (serviceAccounts, source.serviceAccount) as principals of any
/// trust domain.
fn accounts(values: &[String]) -> Option<Vec<Pattern>> {
    (!values.is_empty()).then(|| {
        values
            .iter()
            .map(|v| {
                let (ns, sa) = v.split_once('/').unwrap_or(("", v));
                Pattern::Suffix(format!("/ns/{ns}/sa/{sa}"))
            })
            .collect()
    })
}

/// Address blocks, as `make` of them (a source's or the destination's).
fn blocks(
    values: &[String],
    path: &str,
    unsupported: &mut Vec<String>,
    make: fn(Vec<Cidr>) -> Test,
) -> Option<Test> {
    if values.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for v in values {
        match Cidr::parse(v) {
            Some(cidr) => out.push(cidr),
            // Dropping it would widen a `not` field: fail closed instead.
            None => unsupported.push(format!("{path} {v:?} (not an address)")),
        }
    }
    Some(make(out))
}

fn ports(values: &[String], path: &str, unsupported: &mut Vec<String>) -> Option<Test> {
    if values.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for v in values {
        match v.parse::<u16>() {
            Ok(p) => out.push(p),
            Err(_) => unsupported.push(format!("{path} {v:?} (not a port)")),
        }
    }
    Some(Test::Port(out))
}

fn source(s: &Source, path: &str, unsupported: &mut Vec<String>) -> Vec<Field> {
    let mut fields = Vec::new();
    push(
        &mut fields,
        request_principals(&s.request_principals),
        false,
    );
    push(
        &mut fields,
        request_principals(&s.not_request_principals),
        true,
    );
    push(
        &mut fields,
        patterns(&s.principals).map(Test::Principal),
        false,
    );
    push(
        &mut fields,
        patterns(&s.not_principals).map(Test::Principal),
        true,
    );
    push(
        &mut fields,
        accounts(&s.service_accounts).map(Test::Principal),
        false,
    );
    push(
        &mut fields,
        accounts(&s.not_service_accounts).map(Test::Principal),
        true,
    );
    push(
        &mut fields,
        patterns(&s.namespaces).map(Test::Namespace),
        false,
    );
    push(
        &mut fields,
        patterns(&s.not_namespaces).map(Test::Namespace),
        true,
    );
    // No forwarding hop is trusted, so the remote address is the source's
    // own (Envoy with xff_num_trusted_hops 0).
    for (name, values, negated) in [
        ("ipBlocks", &s.ip_blocks, false),
        ("notIpBlocks", &s.not_ip_blocks, true),
        ("remoteIpBlocks", &s.remote_ip_blocks, false),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks, true),
    ] {
        let test = blocks(
            values,
            &format!("{path}.{name}"),
            unsupported,
            Test::SourceIp,
        );
        push(&mut fields, test, negated);
    }
    fields
}

fn operation(o: &Operation, path: &str, unsupported: &mut Vec<String>) -> Vec<Field> {
    let mut fields = Vec::new();
    let hosts = |values: &[String]| {
        (!values.is_empty()).then(|| {
            Test::Host(
                values
                    .iter()
                    .map(|v| Pattern::parse(v).lowercase())
                    .collect(),
            )
        })
    };
    push(&mut fields, hosts(&o.hosts), false);
    push(&mut fields, hosts(&o.not_hosts), true);
    let test = ports(&o.ports, &format!("{path}.ports"), unsupported);
    push(&mut fields, test, false);
    let test = ports(&o.not_ports, &format!("{path}.notPorts"), unsupported);
    push(&mut fields, test, true);
    push(&mut fields, patterns(&o.methods).map(Test::Method), false);
    push(
        &mut fields,
        patterns(&o.not_methods).map(Test::Method),
        true,
    );
    for (name, values, negated) in [("paths", &o.paths, false), ("notPaths", &o.not_paths, true)] {
        match path_patterns(values) {
            Ok(patterns) => push(&mut fields, patterns.map(Test::Path), negated),
            // A template Istio would not read: the field is left out, so
            // that the rule fails closed (an ALLOW rule never matches, any
            // other matches on its other conditions) rather than compare it
            // as literal text.
            Err(why) => unsupported.push(format!("{path}.{name}: {why}")),
        }
    }
    fields
}

/// `paths` or `notPaths`: Istio's string patterns, and path templates.
fn path_patterns(values: &[String]) -> Result<Option<Vec<Pattern>>, String> {
    if values.is_empty() {
        return Ok(None);
    }
    values
        .iter()
        .map(|v| {
            if PathTemplate::is_template(v) {
                PathTemplate::parse(v).map(Pattern::Template)
            } else {
                Ok(Pattern::parse(v))
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn condition(c: &Condition, path: &str, fields: &mut Vec<Field>, unsupported: &mut Vec<String>) {
    let key = c.key.as_str();
    let strings = |make: fn(Vec<Pattern>) -> Test, fields: &mut Vec<Field>| {
        push(fields, patterns(&c.values).map(make), false);
        push(fields, patterns(&c.not_values).map(make), true);
    };
    if let Some(name) = key
        .strip_prefix("request.headers[")
        .and_then(|k| k.strip_suffix(']'))
    {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => {
                let header =
                    |values: &[String]| patterns(values).map(|p| Test::Header(name.clone(), p));
                push(fields, header(&c.values), false);
                push(fields, header(&c.not_values), true);
            }
            Err(_) => unsupported.push(format!("{path} {key:?} (not a header name)")),
        }
        return;
    }
    match key {
        "source.ip" | "remote.ip" | "destination.ip" => {
            let make = if key == "destination.ip" {
                Test::DestinationIp
            } else {
                Test::SourceIp
            };
            let test = blocks(&c.values, path, unsupported, make);
            push(fields, test, false);
            let test = blocks(&c.not_values, path, unsupported, make);
            push(fields, test, true);
        }
        "source.namespace" => strings(Test::Namespace, fields),
        "source.principal" => strings(Test::Principal, fields),
        "source.serviceAccount" => {
            push(fields, accounts(&c.values).map(Test::Principal), false);
            push(fields, accounts(&c.not_values).map(Test::Principal), true);
        }
        "request.auth.principal" => {
            push(fields, request_principals(&c.values), false);
            push(fields, request_principals(&c.not_values), true);
        }
        "request.auth.audiences" => {
            strings_of(c, fields, |p| Test::Claim(vec!["aud".into()], p));
        }
        "request.auth.presenter" => {
            strings_of(c, fields, |p| Test::Claim(vec!["azp".into()], p));
        }
        "connection.sni" => {
            let names = |values: &[String]| {
                patterns(values)
                    .map(|p| Test::ServerName(p.into_iter().map(Pattern::lowercase).collect()))
            };
            push(fields, names(&c.values), false);
            push(fields, names(&c.not_values), true);
        }
        "destination.port" => {
            let test = ports(&c.values, path, unsupported);
            push(fields, test, false);
            let test = ports(&c.not_values, path, unsupported);
            push(fields, test, true);
        }
        other => match claim_path(other) {
            Some(names) => strings_of(c, fields, |p| Test::Claim(names.clone(), p)),
            // request.auth.claims with a bad path, experimental.*: not
            // known to this waypoint.
            None => unsupported.push(format!("{path} {other:?}")),
        },
    }
}

/// Pushes `make(values)` (and its negation for `not_values`) of a condition.
fn strings_of(c: &Condition, fields: &mut Vec<Field>, make: impl Fn(Vec<Pattern>) -> Test) {
    push(fields, patterns(&c.values).map(&make), false);
    push(fields, patterns(&c.not_values).map(&make), true);
}

/// `request.auth.claims[a][b]` → `[a, b]`.
fn claim_path(key: &str) -> Option<Vec<String>> {
    let mut rest = key.strip_prefix("request.auth.claims")?;
    let mut names = Vec::new();
    while !rest.is_empty() {
        let (name, after) = rest.strip_prefix('[')?.split_once(']')?;
        if name.is_empty() {
            return None;
        }
        names.push(name.to_owned());
        rest = after;
    }
    (!names.is_empty()).then_some(names)
}
