//! AuthorizationPolicy as an L4 proxy enforces it.
//!
//! ztunnel sees connections, not requests. Whatever a policy asks about
//! requests (paths, methods, hosts, JWT principals, headers) is made to fail
//! closed here, once, as Istio ambient does: an ALLOW rule that needs
//! request attributes is dropped (it could only allow more), and a DENY rule
//! loses its request conditions (it denies more, never less). Each change is
//! noted on the resource, so `warrenctl config dump` explains a refusal.
//!
//! Policies attached by `targetRef(s)` (and RequestAuthentications, which
//! only a waypoint can act on) go to the waypoints as they are.

use std::net::IpAddr;

use warren_api::{
    addr,
    config::{
        Action, Authorization, Cidr, Clause, L7Authentication, L7Authorization, Match, Rule, Scope,
        StringMatch, string_match::Kind as StringKind,
    },
};

use crate::model::{
    Labels,
    istio::{
        Action as IstioAction, AuthorizationPolicy, Condition, Operation, PolicyTargetReference,
        RequestAuthentication, Rule as IstioRule, Source,
    },
};

/// Whom a policy applies to, as far as the view's index cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Every workload of the mesh (root namespace, no selector).
    Mesh,
    /// Every workload of its namespace.
    Namespace,
    /// Workloads whose labels include these (in every namespace when the
    /// policy is in the root namespace).
    Labels(Labels),
}

/// The policy for ztunnel and whom it applies to; `None` when ztunnel has
/// nothing to enforce: AUDIT policies, and policies attached to a waypoint
/// or service by `targetRef(s)` (the waypoint enforces those).
pub fn authorization(
    policy: &AuthorizationPolicy,
    root_namespace: &str,
) -> Option<(Authorization, Selection)> {
    let spec = &policy.spec;
    if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
        return None;
    }
    let namespace = policy
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut notes = Vec::new();
    let action = match spec.action() {
        IstioAction::Allow => Action::Allow,
        IstioAction::Deny => Action::Deny,
        IstioAction::Audit => return None,
        IstioAction::Custom => {
            notes.push(
                "CUSTOM (external authorization) is not available at L4: enforced as DENY of \
                 what the rules match at L4"
                    .to_owned(),
            );
            Action::Deny
        }
    };
    let selector = spec
        .selector
        .as_ref()
        .filter(|s| !s.match_labels.is_empty());
    let (scope, selection) = match selector {
        Some(s) => (
            Scope::Workload,
            Selection::Labels(Labels::from_map(Some(&s.match_labels))),
        ),
        None if namespace == root_namespace => (Scope::Global, Selection::Mesh),
        None => (Scope::Namespace, Selection::Namespace),
    };
    let mut rules = Vec::new();
    for (i, rule) in spec.rules.iter().enumerate() {
        let mut l7 = Vec::new();
        let translated = rule_l4(rule, &mut l7);
        match (action, l7.is_empty()) {
            (_, true) => rules.push(translated),
            (Action::Allow, false) => notes.push(format!(
                "rules[{i}] dropped: it needs request attributes ({}) an L4 proxy cannot see, \
                 so it can never allow",
                l7.join(", ")
            )),
            (Action::Deny, false) => {
                notes.push(format!(
                    "rules[{i}]: request attributes ({}) ignored, so it denies every connection \
                     its other conditions match",
                    l7.join(", ")
                ));
                rules.push(translated);
            }
        }
    }
    Some((
        Authorization {
            name: policy.metadata.name.clone().unwrap_or_default(),
            namespace,
            scope: scope as i32,
            action: action as i32,
            rules,
            notes,
        },
        selection,
    ))
}

/// The policy for the waypoint of its namespace, when a `targetRef(s)`
/// attaches it there: to the namespace's waypoint Gateway (by name, as
/// `is_waypoint` tells), to a Service of the namespace, or to a ServiceEntry
/// of the namespace (its hosts, as `entry_hosts` finds them: each is a
/// Service to the waypoint, for egress through it). `None` for selector
/// policies (ztunnel's) and for targets no waypoint serves (an ingress
/// Gateway, a GatewayClass, an entry that does not exist).
pub fn l7_authorization(
    policy: &AuthorizationPolicy,
    is_waypoint: impl Fn(&str) -> bool,
    entry_hosts: impl Fn(&str) -> Vec<String>,
) -> Option<L7Authorization> {
    let spec = &policy.spec;
    let (gateways, services) = attachment(
        spec.target_ref.iter().chain(&spec.target_refs),
        is_waypoint,
        entry_hosts,
    )?;
    Some(L7Authorization {
        name: policy.metadata.name.clone().unwrap_or_default(),
        namespace: policy
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        waypoint: !gateways.is_empty(),
        gateways,
        services,
        // Serializing a validated model type cannot fail; an empty spec is
        // refused by the waypoint, which then keeps the last good one.
        spec_json: serde_json::to_string(spec).unwrap_or_default(),
    })
}

/// Whom `targets` attach a policy to in its namespace: (waypoint Gateways,
/// Services and ServiceEntry hosts); `None` when no waypoint serves any.
pub fn attachment<'a>(
    targets: impl Iterator<Item = &'a PolicyTargetReference>,
    is_waypoint: impl Fn(&str) -> bool,
    entry_hosts: impl Fn(&str) -> Vec<String>,
) -> Option<(Vec<String>, Vec<String>)> {
    let mut gateways = Vec::new();
    let mut services = Vec::new();
    for target in targets {
        match (target.group.as_str(), target.kind.as_str()) {
            ("gateway.networking.k8s.io", "Gateway") if is_waypoint(&target.name) => {
                gateways.push(target.name.clone());
            }
            ("" | "core", "Service") => services.push(target.name.clone()),
            ("networking.istio.io", "ServiceEntry") => services.extend(entry_hosts(&target.name)),
            _ => {}
        }
    }
    if gateways.is_empty() && services.is_empty() {
        return None;
    }
    for names in [&mut gateways, &mut services] {
        names.sort();
        names.dedup();
    }
    Some((gateways, services))
}

/// The JWT rules for the waypoint of their namespace, attached as
/// [`l7_authorization`] attaches a policy. `None` for selector ones: in
/// ambient mode no proxy verifies tokens for a workload itself.
pub fn l7_authentication(
    ra: &RequestAuthentication,
    is_waypoint: impl Fn(&str) -> bool,
    entry_hosts: impl Fn(&str) -> Vec<String>,
) -> Option<L7Authentication> {
    let spec = &ra.spec;
    let (gateways, services) = attachment(
        spec.target_ref.iter().chain(&spec.target_refs),
        is_waypoint,
        entry_hosts,
    )?;
    Some(L7Authentication {
        name: ra.metadata.name.clone().unwrap_or_default(),
        namespace: ra
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        gateways,
        services,
        spec_json: serde_json::to_string(spec).unwrap_or_default(),
    })
}

/// The L4 part of a rule; what it could not express goes to `l7`.
fn rule_l4(rule: &IstioRule, l7: &mut Vec<String>) -> Rule {
    let mut clauses = Vec::new();
    if !rule.from.is_empty() {
        let matches = rule
            .from
            .iter()
            .map(|f| source(f.source.as_ref().unwrap_or(&Source::default()), l7))
            .collect();
        clauses.push(Clause { matches });
    }
    if !rule.to.is_empty() {
        let matches = rule
            .to
            .iter()
            .map(|t| operation(t.operation.as_ref().unwrap_or(&Operation::default()), l7))
            .collect();
        clauses.push(Clause { matches });
    }
    for condition in &rule.when {
        clauses.push(Clause {
            matches: vec![when(condition, l7)],
        });
    }
    Rule { clauses }
}

fn source(s: &Source, l7: &mut Vec<String>) -> Match {
    for (name, values) in [
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ] {
        if !values.is_empty() {
            l7.push(name.to_owned());
        }
    }
    let mut principals: Vec<StringMatch> = s.principals.iter().map(|p| string_match(p)).collect();
    principals.extend(service_accounts(&s.service_accounts));
    let mut not_principals: Vec<StringMatch> =
        s.not_principals.iter().map(|p| string_match(p)).collect();
    not_principals.extend(service_accounts(&s.not_service_accounts));
    Match {
        principals,
        not_principals,
        namespaces: s.namespaces.iter().map(|n| string_match(n)).collect(),
        not_namespaces: s.not_namespaces.iter().map(|n| string_match(n)).collect(),
        source_ips: cidrs(&s.ip_blocks, "ipBlocks", l7),
        not_source_ips: cidrs(&s.not_ip_blocks, "notIpBlocks", l7),
        ..Match::default()
    }
}

fn operation(o: &Operation, l7: &mut Vec<String>) -> Match {
    for (name, values) in [
        ("hosts", &o.hosts),
        ("notHosts", &o.not_hosts),
        ("methods", &o.methods),
        ("notMethods", &o.not_methods),
        ("paths", &o.paths),
        ("notPaths", &o.not_paths),
    ] {
        if !values.is_empty() {
            l7.push(name.to_owned());
        }
    }
    Match {
        destination_ports: ports(&o.ports, "ports", l7),
        not_destination_ports: ports(&o.not_ports, "notPorts", l7),
        ..Match::default()
    }
}

fn when(c: &Condition, l7: &mut Vec<String>) -> Match {
    let strings = |v: &[String]| v.iter().map(|s| string_match(s)).collect::<Vec<_>>();
    match c.key.as_str() {
        "source.ip" => Match {
            source_ips: cidrs(&c.values, "when source.ip", l7),
            not_source_ips: cidrs(&c.not_values, "when source.ip", l7),
            ..Match::default()
        },
        "source.namespace" => Match {
            namespaces: strings(&c.values),
            not_namespaces: strings(&c.not_values),
            ..Match::default()
        },
        "source.principal" => Match {
            principals: strings(&c.values),
            not_principals: strings(&c.not_values),
            ..Match::default()
        },
        "source.serviceAccount" => Match {
            principals: service_accounts(&c.values),
            not_principals: service_accounts(&c.not_values),
            ..Match::default()
        },
        "destination.ip" => Match {
            destination_ips: cidrs(&c.values, "when destination.ip", l7),
            not_destination_ips: cidrs(&c.not_values, "when destination.ip", l7),
            ..Match::default()
        },
        "destination.port" => Match {
            destination_ports: ports(&c.values, "when destination.port", l7),
            not_destination_ports: ports(&c.not_values, "when destination.port", l7),
            ..Match::default()
        },
        other => {
            l7.push(format!("when {other}"));
            Match::default()
        }
    }
}

/// `ns/sa` (`serviceAccounts`, `when source.serviceAccount`) names the
/// principal `<any trust domain>/ns/<ns>/sa/<sa>`; validation made sure each
/// value has both parts.
fn service_accounts(values: &[String]) -> Vec<StringMatch> {
    values
        .iter()
        .map(|sa| {
            let (ns, name) = sa.split_once('/').unwrap_or(("", sa));
            string_match_kind(StringKind::Suffix(format!("/ns/{ns}/sa/{name}")))
        })
        .collect()
}

/// Istio's `*` forms: `*` any, `*x` suffix, `x*` prefix, else exact.
fn string_match(s: &str) -> StringMatch {
    let kind = if s == "*" {
        StringKind::Presence(true)
    } else if let Some(suffix) = s.strip_prefix('*') {
        StringKind::Suffix(suffix.to_owned())
    } else if let Some(prefix) = s.strip_suffix('*') {
        StringKind::Prefix(prefix.to_owned())
    } else {
        StringKind::Exact(s.to_owned())
    };
    string_match_kind(kind)
}

fn string_match_kind(kind: StringKind) -> StringMatch {
    StringMatch { kind: Some(kind) }
}

/// Addresses and CIDRs; validation refused bad ones, but should one get
/// here it is reported as unenforceable (failing closed) rather than
/// silently dropped, which would widen the match of a `not` field.
fn cidrs(values: &[String], field: &str, l7: &mut Vec<String>) -> Vec<Cidr> {
    let mut out = Vec::new();
    for v in values {
        let (ip, len) = match v.split_once('/') {
            Some((ip, len)) => (ip, len.parse::<u32>().ok()),
            None => (v.as_str(), None),
        };
        match ip.parse::<IpAddr>() {
            Ok(ip) => {
                let max = if ip.is_ipv4() { 32 } else { 128 };
                out.push(Cidr {
                    address: addr::to_bytes(ip),
                    prefix_len: len.unwrap_or(max).min(max),
                });
            }
            Err(_) => l7.push(format!("{field} {v:?} (not an address)")),
        }
    }
    out
}

fn ports(values: &[String], field: &str, l7: &mut Vec<String>) -> Vec<u32> {
    let mut out = Vec::new();
    for v in values {
        match v.parse::<u16>() {
            Ok(p) => out.push(u32::from(p)),
            Err(_) => l7.push(format!("{field} {v:?} (not a port)")),
        }
    }
    out
}
