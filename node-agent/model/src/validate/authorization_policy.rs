//! AuthorizationPolicy checks: attachment (selector or target references),
//! action and provider, and the rules' sources, operations and conditions.

use crate::error::FieldError;
use crate::istio::{
    Action, AuthorizationPolicy, Operation, PolicyTargetReference, Rule, Source, WorkloadSelector,
};

use super::{Report, ip_or_cidr, workload_selector};

/// Checks an AuthorizationPolicy on its own.
pub fn authorization_policy(ap: &AuthorizationPolicy) -> Vec<FieldError> {
    let mut r = Report::default();
    let spec = &ap.spec;
    let action = spec.action();

    attachment(
        &mut r,
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
    );

    match (action, &spec.provider) {
        (Action::Custom, provider) => {
            if spec.rules.is_empty() {
                r.error(
                    "spec.rules",
                    "a CUSTOM policy without rules never applies; add an empty rule `{}` to apply it to every request",
                );
            }
            if provider.as_ref().is_none_or(|p| p.name.is_empty()) {
                r.error(
                    "spec.provider.name",
                    "required with action CUSTOM: the extension provider to ask",
                );
            }
        }
        (_, Some(_)) => r.error(
            "spec.provider",
            format!(
                "only used with action CUSTOM, this policy's action is {}",
                action_name(action)
            ),
        ),
        (_, None) => {}
    }
    if action == Action::Deny && spec.rules.is_empty() {
        r.error(
            "spec.rules",
            "a DENY policy without rules never applies; add an empty rule `{}` to deny every request",
        );
    }

    for (i, rule) in spec.rules.iter().enumerate() {
        authorization_rule(&mut r, &format!("spec.rules[{i}]"), rule, action);
    }
    r.into_errors()
}

/// A policy's attachment, shared by AuthorizationPolicy and
/// RequestAuthentication: at most one of a selector and target references,
/// each valid.
pub(super) fn attachment(
    r: &mut Report,
    selector: Option<&WorkloadSelector>,
    target: Option<&PolicyTargetReference>,
    targets: &[PolicyTargetReference],
) {
    let set = [selector.is_some(), target.is_some(), !targets.is_empty()];
    if set.iter().filter(|set| **set).count() > 1 {
        r.error(
            "spec",
            "only one of selector, targetRef and targetRefs may be set",
        );
    }
    if let Some(selector) = selector {
        workload_selector(r, "spec.selector", selector);
    }
    if let Some(target) = target {
        target_ref(r, "spec.targetRef", target);
    }
    for (i, target) in targets.iter().enumerate() {
        target_ref(r, &format!("spec.targetRefs[{i}]"), target);
    }
}

fn target_ref(r: &mut Report, path: &str, target: &PolicyTargetReference) {
    if target.name.is_empty() {
        r.error(format!("{path}.name"), "required");
    }
    if !target.namespace.is_empty() {
        r.error(
            format!("{path}.namespace"),
            "must not be set: cross-namespace references are not supported",
        );
    }
    let group = if target.group.is_empty() {
        "core"
    } else {
        target.group.as_str()
    };
    let allowed = matches!(
        (group, target.kind.as_str()),
        ("core", "Service")
            | ("networking.istio.io", "ServiceEntry")
            | ("gateway.networking.k8s.io", "Gateway" | "GatewayClass")
    );
    if !allowed {
        r.error(
            format!("{path}.kind"),
            format!(
                "{}/{} cannot be a target: use a Service, ServiceEntry (networking.istio.io), Gateway or GatewayClass (gateway.networking.k8s.io)",
                target.group, target.kind
            ),
        );
    }
}

fn authorization_rule(r: &mut Report, path: &str, rule: &Rule, action: Action) {
    for (j, from) in rule.from.iter().enumerate() {
        let p = format!("{path}.from[{j}].source");
        match &from.source {
            None => r.error(&p, "required"),
            Some(source) => authorization_source(r, &p, source, action),
        }
    }
    for (j, to) in rule.to.iter().enumerate() {
        let p = format!("{path}.to[{j}].operation");
        match &to.operation {
            None => r.error(&p, "required"),
            Some(operation) => authorization_operation(r, &p, operation),
        }
    }
    for (k, condition) in rule.when.iter().enumerate() {
        let p = format!("{path}.when[{k}]");
        let key = condition.key.as_str();
        if key.is_empty() {
            r.error(format!("{p}.key"), "required");
            continue;
        }
        if condition.values.is_empty() && condition.not_values.is_empty() {
            r.error(
                &p,
                format!("at least one of values or notValues is required for key {key:?}"),
            );
        }
        match condition_key(key) {
            Err(reason) => r.error(format!("{p}.key"), reason),
            Ok(kind) => {
                if action == Action::Custom && kind.needs_identity() {
                    r.error(
                        format!("{p}.key"),
                        format!("{key:?} is not supported with action CUSTOM"),
                    );
                }
                for (field, values) in [
                    ("values", &condition.values),
                    ("notValues", &condition.not_values),
                ] {
                    for (v, value) in values.iter().enumerate() {
                        let value_path = format!("{p}.{field}[{v}]");
                        match kind {
                            ConditionKey::Ip => {
                                if let Err(reason) = ip_or_cidr(value) {
                                    r.error(&value_path, reason);
                                }
                            }
                            ConditionKey::Port => {
                                if let Err(reason) = port_string(value) {
                                    r.error(&value_path, reason);
                                }
                            }
                            ConditionKey::Identity if key == "source.serviceAccount" => {
                                if let Err(reason) = service_account(value) {
                                    r.error(&value_path, reason);
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
    }
}

fn authorization_source(r: &mut Report, path: &str, source: &Source, action: Action) {
    let lists: [(&str, &Vec<String>); 12] = [
        ("principals", &source.principals),
        ("notPrincipals", &source.not_principals),
        ("requestPrincipals", &source.request_principals),
        ("notRequestPrincipals", &source.not_request_principals),
        ("namespaces", &source.namespaces),
        ("notNamespaces", &source.not_namespaces),
        ("serviceAccounts", &source.service_accounts),
        ("notServiceAccounts", &source.not_service_accounts),
        ("ipBlocks", &source.ip_blocks),
        ("notIpBlocks", &source.not_ip_blocks),
        ("remoteIpBlocks", &source.remote_ip_blocks),
        ("notRemoteIpBlocks", &source.not_remote_ip_blocks),
    ];
    if lists.iter().all(|(_, values)| values.is_empty()) {
        r.error(
            path,
            "must set at least one field (principals, namespaces, ipBlocks, …)",
        );
    }
    for (field, values) in lists {
        for (k, value) in values.iter().enumerate() {
            let p = format!("{path}.{field}[{k}]");
            if value.is_empty() {
                r.error(&p, "must not be empty");
                continue;
            }
            if field.ends_with("pBlocks") {
                if let Err(reason) = ip_or_cidr(value) {
                    r.error(&p, reason);
                }
            } else if field.ends_with("erviceAccounts")
                && let Err(reason) = service_account(value)
            {
                r.error(&p, reason);
            }
        }
        // An external authorizer sees the request, not the mesh identity.
        let identity = !field.ends_with("pBlocks");
        if action == Action::Custom && identity && !values.is_empty() {
            r.error(
                format!("{path}.{field}"),
                "not supported with action CUSTOM",
            );
        }
    }
    let identities = [
        &source.principals,
        &source.not_principals,
        &source.namespaces,
        &source.not_namespaces,
    ];
    let accounts = !source.service_accounts.is_empty() || !source.not_service_accounts.is_empty();
    if accounts && identities.iter().any(|v| !v.is_empty()) {
        r.error(
            path,
            "serviceAccounts cannot be combined with principals or namespaces",
        );
    }
}

fn authorization_operation(r: &mut Report, path: &str, operation: &Operation) {
    let lists: [(&str, &Vec<String>); 8] = [
        ("hosts", &operation.hosts),
        ("notHosts", &operation.not_hosts),
        ("ports", &operation.ports),
        ("notPorts", &operation.not_ports),
        ("methods", &operation.methods),
        ("notMethods", &operation.not_methods),
        ("paths", &operation.paths),
        ("notPaths", &operation.not_paths),
    ];
    if lists.iter().all(|(_, values)| values.is_empty()) {
        r.error(
            path,
            "must set at least one field (ports, methods, paths, hosts, …)",
        );
    }
    for (field, values) in lists {
        for (k, value) in values.iter().enumerate() {
            let p = format!("{path}.{field}[{k}]");
            if value.is_empty() {
                r.error(&p, "must not be empty");
            } else if (field == "ports" || field == "notPorts")
                && let Err(reason) = port_string(value)
            {
                r.error(&p, reason);
            }
        }
    }
}

/// The attribute families a `when` key may name (Istio's list).
#[derive(Clone, Copy, PartialEq, Eq)]
enum ConditionKey {
    Ip,
    Port,
    /// source.namespace, source.principal, source.serviceAccount,
    /// request.auth.*: need the mesh identity or a JWT.
    Identity,
    Other,
}

impl ConditionKey {
    fn needs_identity(self) -> bool {
        self == ConditionKey::Identity
    }
}

fn condition_key(key: &str) -> Result<ConditionKey, String> {
    let bracketed = |prefix: &str| -> Option<Result<(), String>> {
        let inner = key.strip_prefix(prefix)?;
        Some(match inner.strip_suffix(']') {
            Some(name) if !name.is_empty() => Ok(()),
            _ => Err(format!("{key:?}: expected {prefix}<name>]")),
        })
    };
    if let Some(check) = bracketed("request.headers[") {
        return check.map(|()| ConditionKey::Other);
    }
    if let Some(check) = bracketed("request.auth.claims[") {
        return check.map(|()| ConditionKey::Identity);
    }
    match key {
        "source.ip" | "remote.ip" | "destination.ip" => Ok(ConditionKey::Ip),
        "destination.port" => Ok(ConditionKey::Port),
        "source.namespace"
        | "source.principal"
        | "source.serviceAccount"
        | "request.auth.principal"
        | "request.auth.audiences"
        | "request.auth.presenter" => Ok(ConditionKey::Identity),
        "connection.sni" => Ok(ConditionKey::Other),
        _ if key.starts_with("experimental.envoy.filters.") => Ok(ConditionKey::Other),
        _ => Err(format!(
            "unknown attribute {key:?} (expected source.ip, remote.ip, source.namespace, source.principal, source.serviceAccount, request.headers[…], request.auth.…, destination.ip, destination.port or connection.sni)"
        )),
    }
}

/// `<namespace>/<service account>`, as `serviceAccounts` and
/// `source.serviceAccount` name one.
fn service_account(value: &str) -> Result<(), String> {
    let well_formed = value
        .split_once('/')
        .is_some_and(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains('/'));
    if well_formed {
        Ok(())
    } else {
        Err(format!("{value:?} is not <namespace>/<service account>"))
    }
}

/// A port written as a string (AuthorizationPolicy's type).
fn port_string(value: &str) -> Result<u16, String> {
    match value.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        Ok(n) => Err(format!("port {n} is out of range 1-65535")),
        Err(_) => Err(format!("{value:?} is not a port number")),
    }
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::Allow => "ALLOW",
        Action::Deny => "DENY",
        Action::Audit => "AUDIT",
        Action::Custom => "CUSTOM",
    }
}
