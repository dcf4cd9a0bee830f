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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::net::IpAddr;
use std::time::Duration;

use super::error::FieldError;
use super::istio::{Action, ClientTlsMode, TcpRoute};
use super::istio::{
    AuthorizationPolicy, ClientTlsSettings, ConnectionPoolSettings, ConsistentHashLb, CorsPolicy,
    Destination, DestinationRule, H2UpgradePolicy, Headers, HttpFaultInjection, HttpMatchRequest,
    HttpRedirect, HttpRetry, HttpRoute, L4MatchAttributes, LoadBalancerSettings, LocalityLbSetting,
    Operation, OutlierDetection, PeerAuthentication, Percent, PolicyTargetReference, Resolution,
    Rule, ServiceEntry, Source, StringMatch, TlsRoute, TrafficPolicy, VirtualService,
    WorkloadSelector,
};

// ---------------------------------------------------------------------------
// Public entry points, one per kind
// ---------------------------------------------------------------------------

/// Checks a VirtualService on its own.
pub fn virtual_service(vs: &VirtualService) -> Vec<FieldError> {
    let mut r = Report::default();
    let spec = &vs.spec;
    // A VirtualService with no gateways, or with `mesh` among them, routes
    // traffic inside the mesh, where "*" would capture every host.
    let for_mesh = spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == "mesh");

    if spec.hosts.is_empty() {
        r.error(
            "spec.hosts",
            "at least one host is required (a VirtualService without hosts is a delegate, which Warren does not support)",
        );
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        if host == "*" && for_mesh {
            r.error(
                &path,
                "the wildcard host \"*\" is not allowed for mesh traffic: name the services",
            );
        } else if host.parse::<IpAddr>().is_err() {
            host_name(&mut r, &path, host);
        }
        if let Some(first) = spec.hosts[..i].iter().position(|h| h == host) {
            r.error(
                &path,
                format!("duplicate host {host:?} (also spec.hosts[{first}])"),
            );
        }
    }
    for (i, gateway) in spec.gateways.iter().enumerate() {
        gateway_name(&mut r, &format!("spec.gateways[{i}]"), gateway);
    }
    if spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_empty() {
        r.error(
            "spec",
            "at least one of http, tcp or tls routes is required",
        );
    }

    let mut route_names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, route) in spec.http.iter().enumerate() {
        let path = format!("spec.http[{i}]");
        if !route.name.is_empty() {
            if let Some(first) = route_names.get(route.name.as_str()) {
                r.error(
                    format!("{path}.name"),
                    format!(
                        "duplicate route name {:?} (also spec.http[{first}])",
                        route.name
                    ),
                );
            } else {
                route_names.insert(&route.name, i);
            }
        }
        http_route(&mut r, &path, route);
    }
    for (i, route) in spec.tcp.iter().enumerate() {
        tcp_route(&mut r, &format!("spec.tcp[{i}]"), route);
    }
    for (i, route) in spec.tls.iter().enumerate() {
        tls_route(&mut r, &format!("spec.tls[{i}]"), route);
    }
    export_to(&mut r, "spec.exportTo", &spec.export_to, false);
    r.into_errors()
}

/// Checks a DestinationRule on its own.
pub fn destination_rule(dr: &DestinationRule) -> Vec<FieldError> {
    let mut r = Report::default();
    let spec = &dr.spec;
    if spec.host.is_empty() {
        r.error("spec.host", "required: the service the rule applies to");
    } else {
        host_name(&mut r, "spec.host", &spec.host);
    }
    if let Some(policy) = &spec.traffic_policy {
        traffic_policy(&mut r, "spec.trafficPolicy", policy);
    }

    let mut subset_names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        let path = format!("spec.subsets[{i}]");
        if subset.name.is_empty() {
            r.error(format!("{path}.name"), "required");
        } else if !is_dns1123_label(&subset.name) {
            r.error(
                format!("{path}.name"),
                format!(
                    "{:?} is not a valid subset name ({DNS1123_LABEL})",
                    subset.name
                ),
            );
        }
        if !subset.name.is_empty() {
            if let Some(first) = subset_names.get(subset.name.as_str()) {
                r.error(
                    format!("{path}.name"),
                    format!(
                        "duplicate subset name {:?} (also spec.subsets[{first}])",
                        subset.name
                    ),
                );
            } else {
                subset_names.insert(&subset.name, i);
            }
        }
        r.extend(label_selector(&format!("{path}.labels"), &subset.labels));
        if let Some(policy) = &subset.traffic_policy {
            traffic_policy(&mut r, &format!("{path}.trafficPolicy"), policy);
        }
    }

    export_to(&mut r, "spec.exportTo", &spec.export_to, false);
    if let Some(selector) = &spec.workload_selector {
        workload_selector(&mut r, "spec.workloadSelector", selector);
        // A rule for chosen client workloads cannot reach clients in other
        // namespaces: Istio refuses to export it beyond its own.
        let own = dr.metadata.namespace.as_deref();
        for (i, ns) in spec.export_to.iter().enumerate() {
            if ns != "." && Some(ns.as_str()) != own {
                r.error(
                    format!("spec.exportTo[{i}]"),
                    "a DestinationRule with a workloadSelector can only be exported to its own namespace (\".\")",
                );
            }
        }
    }
    r.into_errors()
}

/// Checks a ServiceEntry on its own.
pub fn service_entry(se: &ServiceEntry) -> Vec<FieldError> {
    let mut r = Report::default();
    let spec = &se.spec;
    let resolution = spec.resolution.unwrap_or(Resolution::None);

    if spec.hosts.is_empty() {
        r.error("spec.hosts", "at least one host is required");
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        if host == "*" {
            r.error(&path, "\"*\" is not a service: name the host");
            continue;
        }
        host_name(&mut r, &path, host);
        // Without endpoints, DNS resolution resolves the hosts themselves.
        if matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin)
            && spec.endpoints.is_empty()
            && host.contains('*')
        {
            r.error(
                &path,
                format!("a wildcard host cannot be resolved: resolution {} without endpoints needs exact names", resolution_name(resolution)),
            );
        }
    }

    for (i, address) in spec.addresses.iter().enumerate() {
        let path = format!("spec.addresses[{i}]");
        if let Err(reason) = ip_or_cidr(address) {
            r.error(&path, reason);
        } else if address.contains('/')
            && !matches!(resolution, Resolution::None | Resolution::Static)
        {
            r.error(
                &path,
                format!(
                    "a CIDR is only allowed with resolution NONE or STATIC, not {}",
                    resolution_name(resolution)
                ),
            );
        }
    }

    let mut port_names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut port_numbers: BTreeMap<u32, usize> = BTreeMap::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        port(&mut r, &format!("{path}.number"), p.number);
        if let Some(first) = port_numbers.get(&p.number) {
            r.error(
                format!("{path}.number"),
                format!("duplicate port {} (also spec.ports[{first}])", p.number),
            );
        } else {
            port_numbers.insert(p.number, i);
        }
        if p.name.is_empty() {
            r.error(format!("{path}.name"), "required");
        } else if !is_dns1123_label(&p.name) {
            r.error(
                format!("{path}.name"),
                format!("{:?} is not a valid port name ({DNS1123_LABEL})", p.name),
            );
        }
        if !p.name.is_empty() {
            if let Some(first) = port_names.get(p.name.as_str()) {
                r.error(
                    format!("{path}.name"),
                    format!(
                        "duplicate port name {:?} (also spec.ports[{first}])",
                        p.name
                    ),
                );
            } else {
                port_names.insert(&p.name, i);
            }
        }
        if !p.protocol.is_empty() && protocol_family(&p.protocol).is_none() {
            r.error(
                format!("{path}.protocol"),
                format!(
                    "unknown protocol {:?} (expected one of {})",
                    p.protocol,
                    PROTOCOLS.join(", ")
                ),
            );
        }
        if let Some(target) = p.target_port {
            port(&mut r, &format!("{path}.targetPort"), target);
        }
    }

    // Several hosts on one address can only be told apart by the Host
    // header or SNI, so every port must speak HTTP or TLS.
    if resolution != Resolution::None
        && spec.hosts.len() > 1
        && let Some((i, p)) = spec.ports.iter().enumerate().find(|(_, p)| {
            !matches!(
                protocol_family(&p.protocol),
                Some(ProtocolFamily::Http | ProtocolFamily::Tls)
            )
        })
    {
        r.error(
            format!("spec.ports[{i}].protocol"),
            format!(
                "several hosts need HTTP or TLS ports, to be told apart by Host header or SNI; port {:?} is {}",
                p.name,
                if p.protocol.is_empty() { "unspecified" } else { p.protocol.as_str() }
            ),
        );
    }

    if let Some(selector) = &spec.workload_selector {
        r.extend(label_selector(
            "spec.workloadSelector.labels",
            &selector.labels,
        ));
        if !spec.endpoints.is_empty() {
            r.error(
                "spec.workloadSelector",
                "cannot be combined with endpoints: choose endpoints by label or list them",
            );
        }
    }

    match resolution {
        Resolution::None if !spec.endpoints.is_empty() => r.error(
            "spec.endpoints",
            "endpoints are not used with resolution NONE (traffic goes to the address the caller asked for)",
        ),
        // Stricter than Istio, which accepts it: with nothing to resolve
        // to, every connection would fail.
        Resolution::Static if spec.endpoints.is_empty() && spec.workload_selector.is_none() => r.error(
            "spec.endpoints",
            "resolution STATIC needs endpoints (or a workloadSelector) to send traffic to",
        ),
        Resolution::DnsRoundRobin if spec.endpoints.len() > 1 => r.error(
            "spec.endpoints",
            "resolution DNS_ROUND_ROBIN takes at most one endpoint",
        ),
        _ => {}
    }

    for (i, endpoint) in spec.endpoints.iter().enumerate() {
        let path = format!("spec.endpoints[{i}]");
        let address = endpoint.address.as_str();
        if address.is_empty() {
            if endpoint.network.is_empty() {
                r.error(format!("{path}.address"), "required");
            }
        } else if let Some(socket) = address.strip_prefix("unix://") {
            if !socket.starts_with('/') {
                r.error(
                    format!("{path}.address"),
                    format!("{address:?}: a unix socket address needs an absolute path"),
                );
            }
        } else if address.parse::<IpAddr>().is_err() {
            if resolution == Resolution::Static {
                r.error(
                    format!("{path}.address"),
                    format!("{address:?} is not an IP address, which resolution STATIC needs"),
                );
            } else if let Some(reason) = fqdn_problem(address) {
                r.error(
                    format!("{path}.address"),
                    format!("{address:?} is not an IP address or a DNS name: {reason}"),
                );
            }
        }
        for (name, number) in &endpoint.ports {
            let port_path = format!("{path}.ports.{name}");
            if !port_names.contains_key(name.as_str()) {
                r.error(&port_path, format!("no port named {name:?} in spec.ports"));
            }
            port(&mut r, &port_path, *number);
        }
        r.extend(label_selector(&format!("{path}.labels"), &endpoint.labels));
    }

    export_to(&mut r, "spec.exportTo", &spec.export_to, true);
    r.into_errors()
}

/// Checks an AuthorizationPolicy on its own.
pub fn authorization_policy(ap: &AuthorizationPolicy) -> Vec<FieldError> {
    let mut r = Report::default();
    let spec = &ap.spec;
    let action = spec.action();

    let attachments = [
        spec.selector.is_some(),
        spec.target_ref.is_some(),
        !spec.target_refs.is_empty(),
    ];
    if attachments.iter().filter(|set| **set).count() > 1 {
        r.error(
            "spec",
            "only one of selector, targetRef and targetRefs may be set",
        );
    }
    if let Some(selector) = &spec.selector {
        workload_selector(&mut r, "spec.selector", selector);
    }
    if let Some(target) = &spec.target_ref {
        target_ref(&mut r, "spec.targetRef", target);
    }
    for (i, target) in spec.target_refs.iter().enumerate() {
        target_ref(&mut r, &format!("spec.targetRefs[{i}]"), target);
    }

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

/// Checks a PeerAuthentication on its own.
pub fn peer_authentication(pa: &PeerAuthentication) -> Vec<FieldError> {
    let mut r = Report::default();
    let spec = &pa.spec;
    if let Some(selector) = &spec.selector {
        workload_selector(&mut r, "spec.selector", selector);
    }
    let selects_workloads = spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    if !spec.port_level_mtls.is_empty() && !selects_workloads {
        // Ports belong to workloads: a namespace- or mesh-wide policy has no
        // port to refer to.
        r.error(
            "spec.portLevelMtls",
            "requires a selector with matchLabels: port-level mTLS applies to chosen workloads, not to a whole namespace or mesh",
        );
    }
    for number in spec.port_level_mtls.keys() {
        port(&mut r, &format!("spec.portLevelMtls.{number}"), *number);
    }
    r.into_errors()
}

/// Checks a VirtualService's subsets against DestinationRules.
///
/// `subsets_of_host` answers, for a destination host as written in the
/// VirtualService, the subsets its DestinationRule defines, or `None` when
/// no DestinationRule covers the host (then nothing is reported: the
/// DestinationRule may simply not have arrived yet). Resolving short names
/// and namespaces is the caller's business.
pub fn unknown_subsets(
    vs: &VirtualService,
    subsets_of_host: impl Fn(&str) -> Option<Vec<String>>,
) -> Vec<FieldError> {
    let mut r = Report::default();
    let mut check = |path: String, d: &Destination| {
        if d.subset.is_empty() {
            return;
        }
        let Some(defined) = subsets_of_host(&d.host) else {
            return;
        };
        if !defined.contains(&d.subset) {
            let defines = if defined.is_empty() {
                "defines no subsets".to_owned()
            } else {
                format!("defines: {}", defined.join(", "))
            };
            r.error(
                format!("{path}.subset"),
                format!(
                    "unknown subset {:?} (DestinationRule for host {} {defines})",
                    d.subset, d.host
                ),
            );
        }
    };
    for (i, http) in vs.spec.http.iter().enumerate() {
        for (j, dest) in http.route.iter().enumerate() {
            check(
                format!("spec.http[{i}].route[{j}].destination"),
                &dest.destination,
            );
        }
        if let Some(mirror) = &http.mirror {
            check(format!("spec.http[{i}].mirror"), mirror);
        }
        for (j, mirror) in http.mirrors.iter().enumerate() {
            check(
                format!("spec.http[{i}].mirrors[{j}].destination"),
                &mirror.destination,
            );
        }
    }
    for (i, tcp) in vs.spec.tcp.iter().enumerate() {
        for (j, dest) in tcp.route.iter().enumerate() {
            check(
                format!("spec.tcp[{i}].route[{j}].destination"),
                &dest.destination,
            );
        }
    }
    for (i, tls) in vs.spec.tls.iter().enumerate() {
        for (j, dest) in tls.route.iter().enumerate() {
            check(
                format!("spec.tls[{i}].route[{j}].destination"),
                &dest.destination,
            );
        }
    }
    r.into_errors()
}

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
// VirtualService parts
// ---------------------------------------------------------------------------

fn http_route(r: &mut Report, path: &str, route: &HttpRoute) {
    let mut actions = Vec::new();
    if !route.route.is_empty() {
        actions.push("route");
    }
    if route.redirect.is_some() {
        actions.push("redirect");
    }
    if route.direct_response.is_some() {
        actions.push("directResponse");
    }
    match actions.len() {
        0 => r.error(path, "one of route, redirect or directResponse is required"),
        1 => {}
        _ => r.error(
            path,
            format!(
                "only one of route, redirect and directResponse may be set, found {}",
                actions.join(" and ")
            ),
        ),
    }
    if route.redirect.is_some() {
        if route.fault.is_some() {
            r.error(format!("{path}.fault"), "cannot be combined with redirect");
        }
        if route.rewrite.is_some() {
            r.error(
                format!("{path}.rewrite"),
                "cannot be combined with redirect",
            );
        }
    }

    for (k, m) in route.r#match.iter().enumerate() {
        http_match(r, &format!("{path}.match[{k}]"), m);
    }
    for (j, dest) in route.route.iter().enumerate() {
        let dest_path = format!("{path}.route[{j}]");
        destination(r, &format!("{dest_path}.destination"), &dest.destination);
        if let Some(headers) = &dest.headers {
            header_changes(r, &format!("{dest_path}.headers"), headers);
        }
    }
    weights(
        r,
        &format!("{path}.route"),
        &route.route.iter().map(|d| d.weight).collect::<Vec<_>>(),
    );
    if let Some(redirect) = &route.redirect {
        http_redirect(r, &format!("{path}.redirect"), redirect);
    }
    if let Some(response) = &route.direct_response {
        let p = format!("{path}.directResponse");
        if !(200..=599).contains(&response.status) {
            r.error(
                format!("{p}.status"),
                format!("HTTP status {} is out of range 200-599", response.status),
            );
        }
        if let Some(body) = &response.body {
            if body.string.is_some() && body.bytes.is_some() {
                r.error(
                    format!("{p}.body"),
                    "only one of string and bytes may be set",
                );
            }
            let size = body
                .string
                .as_ref()
                .or(body.bytes.as_ref())
                .map_or(0, String::len);
            if size > 1024 * 1024 {
                r.error(
                    format!("{p}.body"),
                    format!("{size} bytes is too large (the limit is 1 MiB)"),
                );
            }
        }
    }
    if let Some(rewrite) = &route.rewrite {
        let p = format!("{path}.rewrite");
        if !rewrite.uri.is_empty() && rewrite.uri_regex_rewrite.is_some() {
            r.error(&p, "only one of uri and uriRegexRewrite may be set");
        }
        if rewrite.uri.is_empty()
            && rewrite.uri_regex_rewrite.is_none()
            && rewrite.authority.is_empty()
        {
            r.error(&p, "set at least one of uri, uriRegexRewrite or authority");
        }
        if let Some(regex_rewrite) = &rewrite.uri_regex_rewrite {
            let p = format!("{p}.uriRegexRewrite");
            if regex_rewrite.r#match.is_empty() {
                r.error(format!("{p}.match"), "required");
            } else {
                regex(r, &format!("{p}.match"), &regex_rewrite.r#match);
            }
            if regex_rewrite.rewrite.is_empty() {
                r.error(format!("{p}.rewrite"), "required");
            }
        }
        // The authority can be rewritten in one place only.
        let header_authority = route
            .headers
            .as_ref()
            .and_then(|h| h.request.as_ref())
            .is_some_and(|ops| {
                ops.set
                    .keys()
                    .chain(ops.add.keys())
                    .any(|k| is_authority_header(k))
            });
        if !rewrite.authority.is_empty() && header_authority {
            r.error(
                format!("{p}.authority"),
                "the authority is also set in headers.request: set it in one place",
            );
        }
    }
    if let Some(timeout) = &route.timeout {
        positive_duration(r, &format!("{path}.timeout"), timeout);
    }
    if let Some(retries) = &route.retries {
        http_retry(r, &format!("{path}.retries"), retries);
    }
    if let Some(fault) = &route.fault {
        fault_injection(r, &format!("{path}.fault"), fault);
    }
    if let Some(mirror) = &route.mirror {
        destination(r, &format!("{path}.mirror"), mirror);
        if !route.mirrors.is_empty() {
            r.error(
                format!("{path}.mirrors"),
                "mirror and mirrors cannot both be set",
            );
        }
    }
    for (k, mirror) in route.mirrors.iter().enumerate() {
        let p = format!("{path}.mirrors[{k}]");
        destination(r, &format!("{p}.destination"), &mirror.destination);
        if let Some(share) = &mirror.percentage {
            percentage(r, &format!("{p}.percentage"), share);
        }
    }
    if let Some(share) = &route.mirror_percentage {
        percentage(r, &format!("{path}.mirrorPercentage"), share);
    }
    if let Some(cors) = &route.cors_policy {
        cors_policy(r, &format!("{path}.corsPolicy"), cors);
    }
    if let Some(headers) = &route.headers {
        header_changes(r, &format!("{path}.headers"), headers);
    }
}

fn http_match(r: &mut Report, path: &str, m: &HttpMatchRequest) {
    for (field, sm) in [
        ("uri", &m.uri),
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            string_match(r, &format!("{path}.{field}"), sm);
        }
    }
    for (field, map) in [
        ("headers", &m.headers),
        ("withoutHeaders", &m.without_headers),
    ] {
        for (name, sm) in map {
            let p = format!("{path}.{field}.{name}");
            if !is_header_token(name) {
                r.error(&p, format!("{name:?} is not a valid header name"));
            }
            string_match(r, &p, sm);
        }
    }
    for (name, sm) in &m.query_params {
        string_match(r, &format!("{path}.queryParams.{name}"), sm);
    }
    if let Some(number) = m.port {
        port(r, &format!("{path}.port"), number);
    }
    r.extend(label_selector(
        &format!("{path}.sourceLabels"),
        &m.source_labels,
    ));
    namespace_name(r, &format!("{path}.sourceNamespace"), &m.source_namespace);
    for (k, gateway) in m.gateways.iter().enumerate() {
        gateway_name(r, &format!("{path}.gateways[{k}]"), gateway);
    }
}

fn http_redirect(r: &mut Report, path: &str, redirect: &HttpRedirect) {
    if redirect.uri.is_empty()
        && redirect.authority.is_empty()
        && redirect.port.is_none()
        && redirect.derive_port.is_none()
        && redirect.scheme.is_empty()
    {
        r.error(
            path,
            "set at least one of uri, authority, port, derivePort or scheme",
        );
    }
    if let Some(code) = redirect.redirect_code
        && !(300..=399).contains(&code)
    {
        r.error(
            format!("{path}.redirectCode"),
            format!("{code} is not a redirect status (300-399)"),
        );
    }
    if !redirect.scheme.is_empty() && redirect.scheme != "http" && redirect.scheme != "https" {
        r.error(
            format!("{path}.scheme"),
            format!("{:?}: must be \"http\" or \"https\"", redirect.scheme),
        );
    }
    if let Some(number) = redirect.port {
        port(r, &format!("{path}.port"), number);
        if redirect.derive_port.is_some() {
            r.error(path, "only one of port and derivePort may be set");
        }
    }
}

fn http_retry(r: &mut Report, path: &str, retry: &HttpRetry) {
    let attempts = retry.attempts.unwrap_or(0);
    if attempts < 0 {
        r.error(
            format!("{path}.attempts"),
            format!("{attempts}: cannot be negative"),
        );
    }
    if attempts == 0
        && (retry.per_try_timeout.is_some()
            || !retry.retry_on.is_empty()
            || retry.retry_remote_localities.is_some())
    {
        // As Istio: 0 attempts disables retries, so the rest would be ignored.
        r.error(
            format!("{path}.attempts"),
            "retries are disabled (attempts is 0 or absent) but other retry settings are given: set attempts",
        );
    }
    if let Some(timeout) = &retry.per_try_timeout {
        positive_duration(r, &format!("{path}.perTryTimeout"), timeout);
    }
    if let Some(backoff) = &retry.backoff {
        positive_duration(r, &format!("{path}.backoff"), backoff);
    }
    if !retry.retry_on.is_empty() {
        for condition in retry.retry_on.split(',') {
            let is_status = condition
                .parse::<u16>()
                .is_ok_and(|s| (100..=599).contains(&s));
            if !is_status && !RETRY_ON.contains(&condition) {
                r.error(
                    format!("{path}.retryOn"),
                    format!(
                        "{condition:?} is not a retry condition (expected an HTTP status code or one of {})",
                        RETRY_ON.join(", ")
                    ),
                );
            }
        }
    }
}

/// Conditions Istio accepts in `retryOn`: Envoy's `x-envoy-retry-on` and
/// `x-envoy-retry-grpc-on` names.
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

fn fault_injection(r: &mut Report, path: &str, fault: &HttpFaultInjection) {
    if fault.delay.is_none() && fault.abort.is_none() {
        r.error(path, "set delay, abort or both");
    }
    if let Some(delay) = &fault.delay {
        let p = format!("{path}.delay");
        match &delay.fixed_delay {
            Some(d) => {
                positive_duration(r, &format!("{p}.fixedDelay"), d);
            }
            None => r.error(format!("{p}.fixedDelay"), "required"),
        }
        if let Some(share) = &delay.percentage {
            percentage(r, &format!("{p}.percentage"), share);
        }
    }
    if let Some(abort) = &fault.abort {
        let p = format!("{path}.abort");
        match (abort.http_status, &abort.grpc_status) {
            (Some(_), Some(_)) => r.error(&p, "only one of httpStatus and grpcStatus may be set"),
            (None, None) => r.error(&p, "set httpStatus or grpcStatus"),
            _ => {}
        }
        if let Some(status) = abort.http_status
            && !(200..=599).contains(&status)
        {
            r.error(
                format!("{p}.httpStatus"),
                format!("HTTP status {status} is out of range 200-599"),
            );
        }
        if let Some(status) = &abort.grpc_status
            && !GRPC_STATUS.contains(&status.as_str())
        {
            r.error(
                format!("{p}.grpcStatus"),
                format!("{status:?} is not a gRPC status (e.g. UNAVAILABLE, NOT_FOUND)"),
            );
        }
        if let Some(share) = &abort.percentage {
            percentage(r, &format!("{p}.percentage"), share);
        }
    }
}

const GRPC_STATUS: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn cors_policy(r: &mut Report, path: &str, cors: &CorsPolicy) {
    for (k, origin) in cors.allow_origins.iter().enumerate() {
        let p = format!("{path}.allowOrigins[{k}]");
        if origin.kinds_set() == 0
            || [&origin.exact, &origin.prefix, &origin.regex]
                .iter()
                .any(|v| v.as_deref() == Some(""))
        {
            r.error(
                &p,
                "an origin match needs a non-empty exact, prefix or regex",
            );
        }
        string_match(r, &p, origin);
    }
    for (k, method) in cors.allow_methods.iter().enumerate() {
        if !CORS_METHODS.contains(&method.as_str()) {
            r.error(
                format!("{path}.allowMethods[{k}]"),
                format!(
                    "{method:?} is not an HTTP method (expected one of {})",
                    CORS_METHODS.join(", ")
                ),
            );
        }
    }
    for (field, names) in [
        ("allowHeaders", &cors.allow_headers),
        ("exposeHeaders", &cors.expose_headers),
    ] {
        for (k, name) in names.iter().enumerate() {
            if name != "*" && !is_header_token(name) {
                r.error(
                    format!("{path}.{field}[{k}]"),
                    format!("{name:?} is not a valid header name"),
                );
            }
        }
    }
    if let Some(max_age) = &cors.max_age {
        let p = format!("{path}.maxAge");
        if let Some(d) = positive_duration(r, &p, max_age)
            && d.subsec_nanos() != 0
        {
            r.error(&p, format!("{max_age:?}: only whole seconds are supported"));
        }
    }
}

const CORS_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*",
];

fn header_changes(r: &mut Report, path: &str, headers: &Headers) {
    for (side, ops) in [
        ("request", &headers.request),
        ("response", &headers.response),
    ] {
        let Some(ops) = ops else { continue };
        // Only the request's authority may be set, and only by set/add.
        let authority_allowed = side == "request";
        for (op, map) in [("set", &ops.set), ("add", &ops.add)] {
            for name in map.keys() {
                header_change_name(
                    r,
                    &format!("{path}.{side}.{op}.{name}"),
                    name,
                    authority_allowed,
                );
            }
        }
        for (k, name) in ops.remove.iter().enumerate() {
            header_change_name(r, &format!("{path}.{side}.remove[{k}]"), name, false);
        }
    }
}

fn header_change_name(r: &mut Report, path: &str, name: &str, authority_allowed: bool) {
    if authority_allowed && is_authority_header(name) {
        return;
    }
    if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
        r.error(
            path,
            format!("header {name:?} cannot be changed here (pseudo-headers and Host belong to the proxy)"),
        );
    } else if !is_header_token(name) {
        r.error(path, format!("{name:?} is not a valid header name"));
    }
}

fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

fn tcp_route(r: &mut Report, path: &str, route: &TcpRoute) {
    for (k, m) in route.r#match.iter().enumerate() {
        l4_match(r, &format!("{path}.match[{k}]"), m);
    }
    if route.route.is_empty() {
        r.error(
            format!("{path}.route"),
            "at least one destination is required",
        );
    }
    for (j, dest) in route.route.iter().enumerate() {
        destination(
            r,
            &format!("{path}.route[{j}].destination"),
            &dest.destination,
        );
    }
    weights(
        r,
        &format!("{path}.route"),
        &route.route.iter().map(|d| d.weight).collect::<Vec<_>>(),
    );
}

fn l4_match(r: &mut Report, path: &str, m: &L4MatchAttributes) {
    for (k, subnet) in m.destination_subnets.iter().enumerate() {
        if let Err(reason) = ip_or_cidr(subnet) {
            r.error(format!("{path}.destinationSubnets[{k}]"), reason);
        }
    }
    if let Some(number) = m.port {
        port(r, &format!("{path}.port"), number);
    }
    r.extend(label_selector(
        &format!("{path}.sourceLabels"),
        &m.source_labels,
    ));
    namespace_name(r, &format!("{path}.sourceNamespace"), &m.source_namespace);
    for (k, gateway) in m.gateways.iter().enumerate() {
        gateway_name(r, &format!("{path}.gateways[{k}]"), gateway);
    }
}

fn tls_route(r: &mut Report, path: &str, route: &TlsRoute) {
    if route.r#match.is_empty() {
        r.error(
            format!("{path}.match"),
            "at least one match (with sniHosts) is required",
        );
    }
    for (k, m) in route.r#match.iter().enumerate() {
        let p = format!("{path}.match[{k}]");
        if m.sni_hosts.is_empty() {
            r.error(format!("{p}.sniHosts"), "at least one SNI host is required");
        }
        for (h, sni) in m.sni_hosts.iter().enumerate() {
            if sni.parse::<IpAddr>().is_err() {
                host_name(r, &format!("{p}.sniHosts[{h}]"), sni);
            }
        }
        for (s, subnet) in m.destination_subnets.iter().enumerate() {
            if let Err(reason) = ip_or_cidr(subnet) {
                r.error(format!("{p}.destinationSubnets[{s}]"), reason);
            }
        }
        if let Some(number) = m.port {
            port(r, &format!("{p}.port"), number);
        }
        r.extend(label_selector(
            &format!("{p}.sourceLabels"),
            &m.source_labels,
        ));
        namespace_name(r, &format!("{p}.sourceNamespace"), &m.source_namespace);
        for (g, gateway) in m.gateways.iter().enumerate() {
            gateway_name(r, &format!("{p}.gateways[{g}]"), gateway);
        }
    }
    if route.route.is_empty() {
        r.error(
            format!("{path}.route"),
            "at least one destination is required",
        );
    }
    for (j, dest) in route.route.iter().enumerate() {
        destination(
            r,
            &format!("{path}.route[{j}].destination"),
            &dest.destination,
        );
    }
    weights(
        r,
        &format!("{path}.route"),
        &route.route.iter().map(|d| d.weight).collect::<Vec<_>>(),
    );
}

/// Each weight 0-100 and, with several destinations, a sum of exactly 100.
/// Istio only refuses an all-zero sum and scales the rest; Warren asks for
/// the split to be written out, so what runs is what was read.
fn weights(r: &mut Report, route_path: &str, weights: &[Option<i32>]) {
    for (j, weight) in weights.iter().enumerate() {
        if let Some(w) = weight
            && !(0..=100).contains(w)
        {
            r.error(
                format!("{route_path}[{j}].weight"),
                format!("weight {w} is out of range 0-100"),
            );
        }
    }
    if weights.len() > 1 {
        let sum: i64 = weights.iter().map(|w| i64::from(w.unwrap_or(0))).sum();
        if sum != 100 {
            r.error(
                route_path,
                format!(
                    "the weights of the {} destinations must sum to 100, they sum to {sum}",
                    weights.len()
                ),
            );
        }
    }
}

fn destination(r: &mut Report, path: &str, d: &Destination) {
    if d.host.is_empty() {
        r.error(
            format!("{path}.host"),
            "required: the service to send traffic to",
        );
    } else if d.host == "*" {
        r.error(
            format!("{path}.host"),
            "\"*\" is not a destination: name a service",
        );
    } else {
        host_name(r, &format!("{path}.host"), &d.host);
    }
    if !d.subset.is_empty() && !is_dns1123_label(&d.subset) {
        r.error(
            format!("{path}.subset"),
            format!(
                "{:?} is not a valid subset name ({DNS1123_LABEL})",
                d.subset
            ),
        );
    }
    if let Some(selector) = &d.port {
        port(r, &format!("{path}.port.number"), selector.number);
    }
}

fn string_match(r: &mut Report, path: &str, sm: &StringMatch) {
    if sm.kinds_set() > 1 {
        r.error(path, "only one of exact, prefix and regex may be set");
    }
    if let Some(re) = &sm.regex {
        let p = format!("{path}.regex");
        if re.is_empty() {
            r.error(
                &p,
                "an empty regex matches everything: remove the match or give a pattern",
            );
        } else {
            regex(r, &p, re);
        }
    }
}

/// Istio's regexes are RE2; the `regex` crate speaks the same dialect (no
/// look-around, no back-references), so what compiles here runs there.
fn regex(r: &mut Report, path: &str, pattern: &str) {
    // Envoy caps the compiled program size; Istio approximates with length.
    if pattern.len() > 1024 {
        r.error(
            path,
            format!(
                "the regex is {} characters long, the limit is 1024",
                pattern.len()
            ),
        );
        return;
    }
    if let Err(err) = regex::Regex::new(pattern) {
        let detail = err
            .to_string()
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned();
        r.error(
            path,
            format!("invalid regex {pattern:?} (RE2 syntax): {detail}"),
        );
    }
}

// ---------------------------------------------------------------------------
// DestinationRule parts
// ---------------------------------------------------------------------------

fn traffic_policy(r: &mut Report, path: &str, policy: &TrafficPolicy) {
    if policy.load_balancer.is_none()
        && policy.connection_pool.is_none()
        && policy.outlier_detection.is_none()
        && policy.tls.is_none()
        && policy.port_level_settings.is_empty()
    {
        r.error(
            path,
            "set at least one of loadBalancer, connectionPool, outlierDetection, tls or portLevelSettings",
        );
    }
    policy_parts(
        r,
        path,
        policy.load_balancer.as_ref(),
        policy.connection_pool.as_ref(),
        policy.outlier_detection.as_ref(),
        policy.tls.as_ref(),
    );
    for (k, port_policy) in policy.port_level_settings.iter().enumerate() {
        let p = format!("{path}.portLevelSettings[{k}]");
        match &port_policy.port {
            Some(selector) => port(r, &format!("{p}.port.number"), selector.number),
            None => r.error(
                format!("{p}.port"),
                "required: the port these settings are for",
            ),
        }
        if port_policy.load_balancer.is_none()
            && port_policy.connection_pool.is_none()
            && port_policy.outlier_detection.is_none()
            && port_policy.tls.is_none()
        {
            r.error(
                &p,
                "set at least one of loadBalancer, connectionPool, outlierDetection or tls",
            );
        }
        policy_parts(
            r,
            &p,
            port_policy.load_balancer.as_ref(),
            port_policy.connection_pool.as_ref(),
            port_policy.outlier_detection.as_ref(),
            port_policy.tls.as_ref(),
        );
    }
}

fn policy_parts(
    r: &mut Report,
    path: &str,
    load_balancer: Option<&LoadBalancerSettings>,
    connection_pool: Option<&ConnectionPoolSettings>,
    outlier: Option<&OutlierDetection>,
    tls: Option<&ClientTlsSettings>,
) {
    if let Some(lb) = load_balancer {
        load_balancer_settings(r, &format!("{path}.loadBalancer"), lb);
    }
    if let Some(pool) = connection_pool {
        connection_pool_settings(r, &format!("{path}.connectionPool"), pool);
    }
    if let Some(outlier) = outlier {
        outlier_detection(r, &format!("{path}.outlierDetection"), outlier);
    }
    if let Some(tls) = tls {
        client_tls(r, &format!("{path}.tls"), tls);
    }
}

fn load_balancer_settings(r: &mut Report, path: &str, lb: &LoadBalancerSettings) {
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        r.error(path, "only one of simple and consistentHash may be set");
    }
    if let Some(hash) = &lb.consistent_hash {
        consistent_hash(r, &format!("{path}.consistentHash"), hash);
    }
    if let Some(locality) = &lb.locality_lb_setting {
        locality_lb(r, &format!("{path}.localityLbSetting"), locality);
    }
    if let Some(warmup) = &lb.warmup_duration_secs {
        positive_duration(r, &format!("{path}.warmupDurationSecs"), warmup);
    }
}

fn consistent_hash(r: &mut Report, path: &str, hash: &ConsistentHashLb) {
    let keys: Vec<&str> = [
        ("httpHeaderName", hash.http_header_name.is_some()),
        ("httpCookie", hash.http_cookie.is_some()),
        ("useSourceIp", hash.use_source_ip.is_some()),
        (
            "httpQueryParameterName",
            hash.http_query_parameter_name.is_some(),
        ),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    match keys.len() {
        0 => r.error(
            path,
            "a hash key is required: one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName",
        ),
        1 => {}
        _ => r.error(path, format!("only one hash key may be set, found {}", keys.join(" and "))),
    }
    if hash.http_header_name.as_deref() == Some("") {
        r.error(format!("{path}.httpHeaderName"), "must not be empty");
    }
    if hash.http_query_parameter_name.as_deref() == Some("") {
        r.error(
            format!("{path}.httpQueryParameterName"),
            "must not be empty",
        );
    }
    if let Some(cookie) = &hash.http_cookie {
        if cookie.name.is_empty() {
            r.error(format!("{path}.httpCookie.name"), "required");
        }
        if let Some(ttl) = &cookie.ttl
            && let Err(e) = duration(&format!("{path}.httpCookie.ttl"), ttl)
        {
            r.push(e);
        }
    }
    if hash.ring_hash.is_some() && hash.maglev.is_some() {
        r.error(path, "only one of ringHash and maglev may be set");
    }
    if hash.minimum_ring_size.is_some() && (hash.ring_hash.is_some() || hash.maglev.is_some()) {
        r.error(
            format!("{path}.minimumRingSize"),
            "cannot be combined with ringHash or maglev (use ringHash.minimumRingSize)",
        );
    }
    if let Some(maglev) = &hash.maglev {
        let p = format!("{path}.maglev.tableSize");
        match maglev.table_size {
            None | Some(0) => r.error(&p, "required"),
            Some(size) if size >= 5_000_011 => {
                r.error(&p, format!("{size} is too large (must be below 5000011)"))
            }
            Some(size) if !is_prime(size) => r.error(
                &p,
                format!("{size} is not a prime number, which maglev needs"),
            ),
            Some(_) => {}
        }
    }
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

fn locality_lb(r: &mut Report, path: &str, locality: &LocalityLbSetting) {
    if !locality.distribute.is_empty() && !locality.failover.is_empty() {
        r.error(path, "only one of distribute and failover may be set");
    }
    if !locality.failover.is_empty() {
        for (k, label) in locality.failover_priority.iter().enumerate() {
            if TOPOLOGY_LABELS.contains(&label.as_str()) {
                r.error(
                    format!("{path}.failoverPriority[{k}]"),
                    format!("topology label {label:?} cannot be combined with failover"),
                );
            }
        }
    }
    for (k, distribute) in locality.distribute.iter().enumerate() {
        let p = format!("{path}.distribute[{k}]");
        if distribute.from.is_empty() {
            r.error(format!("{p}.from"), "required");
        }
        for (to, weight) in &distribute.to {
            if !(1..=100).contains(weight) {
                r.error(
                    format!("{p}.to.{to}"),
                    format!("weight {weight} is out of range 1-100"),
                );
            }
        }
        let sum: u64 = distribute.to.values().map(|w| u64::from(*w)).sum();
        if sum != 100 {
            r.error(
                format!("{p}.to"),
                format!("the weights must sum to 100, they sum to {sum}"),
            );
        }
    }
    for (k, failover) in locality.failover.iter().enumerate() {
        let p = format!("{path}.failover[{k}]");
        if failover.from == failover.to {
            r.error(&p, "from and to must be different regions");
        }
        for (field, value) in [("from", &failover.from), ("to", &failover.to)] {
            if value.contains('/') || value.contains('*') {
                r.error(
                    format!("{p}.{field}"),
                    format!("{value:?}: failover names a region only (no '/', no '*')"),
                );
            }
        }
    }
}

const TOPOLOGY_LABELS: &[&str] = &[
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
];

fn connection_pool_settings(r: &mut Report, path: &str, pool: &ConnectionPoolSettings) {
    if pool.tcp.is_none() && pool.http.is_none() {
        r.error(path, "set tcp, http or both");
    }
    if let Some(tcp) = &pool.tcp {
        let p = format!("{path}.tcp");
        non_negative(r, &format!("{p}.maxConnections"), tcp.max_connections);
        if let Some(d) = &tcp.connect_timeout {
            positive_duration(r, &format!("{p}.connectTimeout"), d);
        }
        if let Some(d) = &tcp.max_connection_duration {
            positive_duration(r, &format!("{p}.maxConnectionDuration"), d);
        }
        if let Some(d) = &tcp.idle_timeout {
            // 0s turns the idle timeout off.
            let idle_path = format!("{p}.idleTimeout");
            match duration(&idle_path, d) {
                Err(e) => r.push(e),
                Ok(Duration::ZERO) => {}
                Ok(_) => {
                    positive_duration(r, &idle_path, d);
                }
            }
        }
        if let Some(keepalive) = &tcp.tcp_keepalive {
            if let Some(d) = &keepalive.time {
                positive_duration(r, &format!("{p}.tcpKeepalive.time"), d);
            }
            if let Some(d) = &keepalive.interval {
                positive_duration(r, &format!("{p}.tcpKeepalive.interval"), d);
            }
        }
    }
    if let Some(http) = &pool.http {
        let p = format!("{path}.http");
        non_negative(
            r,
            &format!("{p}.http1MaxPendingRequests"),
            http.http1_max_pending_requests,
        );
        non_negative(r, &format!("{p}.http2MaxRequests"), http.http2_max_requests);
        non_negative(
            r,
            &format!("{p}.maxRequestsPerConnection"),
            http.max_requests_per_connection,
        );
        non_negative(r, &format!("{p}.maxRetries"), http.max_retries);
        non_negative(
            r,
            &format!("{p}.maxConcurrentStreams"),
            http.max_concurrent_streams,
        );
        if let Some(d) = &http.idle_timeout {
            positive_duration(r, &format!("{p}.idleTimeout"), d);
        }
        if http.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade)
            && http.use_client_protocol == Some(true)
        {
            r.error(
                format!("{p}.useClientProtocol"),
                "cannot be true with h2UpgradePolicy UPGRADE (the two choose the protocol differently)",
            );
        }
    }
}

fn non_negative(r: &mut Report, path: &str, value: Option<i32>) {
    if let Some(v) = value
        && v < 0
    {
        r.error(path, format!("{v}: cannot be negative"));
    }
}

fn outlier_detection(r: &mut Report, path: &str, outlier: &OutlierDetection) {
    if let Some(d) = &outlier.interval {
        positive_duration(r, &format!("{path}.interval"), d);
    }
    if let Some(d) = &outlier.base_ejection_time {
        positive_duration(r, &format!("{path}.baseEjectionTime"), d);
    }
    if outlier.consecutive_local_origin_failures.unwrap_or(0) > 0
        && outlier.split_external_local_origin_errors != Some(true)
    {
        r.error(
            format!("{path}.consecutiveLocalOriginFailures"),
            "only counted when splitExternalLocalOriginErrors is true",
        );
    }
    for (field, value) in [
        ("maxEjectionPercent", outlier.max_ejection_percent),
        ("minHealthPercent", outlier.min_health_percent),
    ] {
        if let Some(v) = value
            && !(0..=100).contains(&v)
        {
            r.error(
                format!("{path}.{field}"),
                format!("{v} is out of range 0-100"),
            );
        }
    }
}

fn client_tls(r: &mut Report, path: &str, tls: &ClientTlsSettings) {
    let files = [
        ("clientCertificate", &tls.client_certificate),
        ("privateKey", &tls.private_key),
        ("caCertificates", &tls.ca_certificates),
    ];
    let mode = tls.mode;
    if matches!(mode, Some(ClientTlsMode::Simple | ClientTlsMode::Mutual))
        && !tls.credential_name.is_empty()
    {
        for (field, value) in files {
            if !value.is_empty() {
                r.error(
                    format!("{path}.{field}"),
                    "cannot be combined with credentialName (the credential carries the certificates)",
                );
            }
        }
    } else if mode == Some(ClientTlsMode::Mutual) {
        for (field, value) in &files[..2] {
            if value.is_empty() {
                r.error(
                    format!("{path}.{field}"),
                    "required with mode MUTUAL (or set credentialName)",
                );
            }
        }
    }
    if tls.insecure_skip_verify == Some(true) && !tls.subject_alt_names.is_empty() {
        r.error(
            format!("{path}.subjectAltNames"),
            "cannot be checked when insecureSkipVerify is true",
        );
    }
}

// ---------------------------------------------------------------------------
// AuthorizationPolicy parts
// ---------------------------------------------------------------------------

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
            } else if field.ends_with("erviceAccounts") {
                let well_formed = value
                    .split_once('/')
                    .is_some_and(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains('/'));
                if !well_formed {
                    r.error(
                        &p,
                        format!("{value:?} is not <namespace>/<service account>"),
                    );
                }
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

/// A port written as a string (AuthorizationPolicy's type).
fn port_string(value: &str) -> Result<u16, String> {
    match value.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        Ok(n) => Err(format!("port {n} is out of range 1-65535")),
        Err(_) => Err(format!("{value:?} is not a port number")),
    }
}

fn percentage(r: &mut Report, path: &str, share: &Percent) {
    if !(0.0..=100.0).contains(&share.value) {
        r.error(
            format!("{path}.value"),
            format!("percentage {} is out of range 0-100", share.value),
        );
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

fn is_dns1123_label(value: &str) -> bool {
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

fn namespace_name(r: &mut Report, path: &str, namespace: &str) {
    if !namespace.is_empty() && !is_dns1123_label(namespace) {
        r.error(
            path,
            format!("{namespace:?} is not a valid namespace ({DNS1123_LABEL})"),
        );
    }
}

/// `mesh`, `<namespace>/<name>`, or a bare name (Istio's legacy form).
fn gateway_name(r: &mut Report, path: &str, gateway: &str) {
    if gateway.is_empty() {
        r.error(path, "must not be empty");
        return;
    }
    if let Some((namespace, name)) = gateway.split_once('/') {
        if !is_dns1123_label(namespace) || !is_dns1123_label(name) {
            r.error(
                path,
                format!("{gateway:?}: expected <namespace>/<name>, each {DNS1123_LABEL}"),
            );
        }
    } else if gateway != "mesh"
        && let Some(reason) = fqdn_problem(gateway)
    {
        r.error(path, format!("{gateway:?} is not a gateway name: {reason}"));
    }
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

/// RFC 7230 token characters.
fn is_header_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ProtocolFamily {
    Http,
    Tls,
    Other,
}

/// Protocol names Istio knows (case-insensitive).
const PROTOCOLS: &[&str] = &[
    "HTTP",
    "HTTPS",
    "HTTP2",
    "HTTP_PROXY",
    "GRPC",
    "GRPC-WEB",
    "TLS",
    "TCP",
    "UDP",
    "MONGO",
    "MYSQL",
    "REDIS",
];

fn protocol_family(protocol: &str) -> Option<ProtocolFamily> {
    match protocol.to_ascii_uppercase().as_str() {
        "HTTP" | "HTTP2" | "HTTP_PROXY" | "GRPC" | "GRPC-WEB" => Some(ProtocolFamily::Http),
        "HTTPS" | "TLS" => Some(ProtocolFamily::Tls),
        "TCP" | "UDP" | "MONGO" | "MYSQL" | "REDIS" => Some(ProtocolFamily::Other),
        _ => None,
    }
}

fn resolution_name(resolution: Resolution) -> &'static str {
    match resolution {
        Resolution::None => "NONE",
        Resolution::Static => "STATIC",
        Resolution::Dns => "DNS",
        Resolution::DnsRoundRobin => "DNS_ROUND_ROBIN",
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
