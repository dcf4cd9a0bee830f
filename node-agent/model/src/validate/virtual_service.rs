//! VirtualService checks: hosts and gateways, HTTP, TCP and TLS routes,
//! and the cross-object [`unknown_subsets`].

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::error::FieldError;
use crate::istio::{
    CorsPolicy, Destination, Headers, HttpFaultInjection, HttpMatchRequest, HttpRedirect,
    HttpRetry, HttpRoute, L4MatchAttributes, Percent, RouteDestination, StringMatch, TcpRoute,
    TlsRoute, VirtualService,
};

use super::{
    DNS1123_LABEL, Report, export_to, fqdn_problem, host_name, ip_or_cidr, is_dns1123_label,
    label_selector, port, positive_duration,
};

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
            && grpc_code(status).is_none()
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

/// gRPC status names as Istio accepts them, in code order (`OK` is 0).
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

/// The numeric gRPC code of a status name (`UNAVAILABLE` is 14); the
/// validator and the waypoint read names the same way.
pub fn grpc_code(name: &str) -> Option<u32> {
    GRPC_STATUS
        .iter()
        .position(|n| *n == name)
        .and_then(|i| u32::try_from(i).ok())
}

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

/// The destinations of a TCP or TLS route: at least one, each valid, and
/// weights that add up.
fn l4_destinations(r: &mut Report, path: &str, route: &[RouteDestination]) {
    if route.is_empty() {
        r.error(
            format!("{path}.route"),
            "at least one destination is required",
        );
    }
    for (j, dest) in route.iter().enumerate() {
        destination(
            r,
            &format!("{path}.route[{j}].destination"),
            &dest.destination,
        );
    }
    weights(
        r,
        &format!("{path}.route"),
        &route.iter().map(|d| d.weight).collect::<Vec<_>>(),
    );
}

fn tcp_route(r: &mut Report, path: &str, route: &TcpRoute) {
    for (k, m) in route.r#match.iter().enumerate() {
        l4_match(r, &format!("{path}.match[{k}]"), m);
    }
    l4_destinations(r, path, &route.route);
}

fn l4_match(r: &mut Report, path: &str, m: &L4MatchAttributes) {
    connection_match(
        r,
        path,
        ConnectionMatch {
            destination_subnets: &m.destination_subnets,
            port: m.port,
            source_labels: &m.source_labels,
            source_namespace: &m.source_namespace,
            gateways: &m.gateways,
        },
    );
}

/// The connection attributes TCP and TLS matches share.
struct ConnectionMatch<'a> {
    destination_subnets: &'a [String],
    port: Option<u32>,
    source_labels: &'a BTreeMap<String, String>,
    source_namespace: &'a str,
    gateways: &'a [String],
}

fn connection_match(r: &mut Report, path: &str, m: ConnectionMatch<'_>) {
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
        m.source_labels,
    ));
    namespace_name(r, &format!("{path}.sourceNamespace"), m.source_namespace);
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
            // Stricter than Istio: a client sends no server name for an
            // address, so such a host could never match.
            if sni.parse::<IpAddr>().is_ok() {
                r.error(
                    format!("{p}.sniHosts[{h}]"),
                    format!("{sni:?} is an address: TLS clients send no server name for one"),
                );
            } else {
                host_name(r, &format!("{p}.sniHosts[{h}]"), sni);
            }
        }
        connection_match(
            r,
            &p,
            ConnectionMatch {
                destination_subnets: &m.destination_subnets,
                port: m.port,
                source_labels: &m.source_labels,
                source_namespace: &m.source_namespace,
                gateways: &m.gateways,
            },
        );
    }
    l4_destinations(r, path, &route.route);
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

fn percentage(r: &mut Report, path: &str, share: &Percent) {
    if !(0.0..=100.0).contains(&share.value) {
        r.error(
            format!("{path}.value"),
            format!("percentage {} is out of range 0-100", share.value),
        );
    }
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

/// RFC 7230 token characters.
fn is_header_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
