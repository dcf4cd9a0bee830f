//! ServiceEntry checks: hosts, addresses, ports, resolution and endpoints.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::error::FieldError;
use crate::istio::{Resolution, ServiceEntry};

use super::{
    DNS1123_LABEL, Report, export_to, fqdn_problem, host_name, ip_or_cidr, is_dns1123_label,
    label_selector, port, workload_entry,
};

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
        // `.invalid` never resolves (RFC 2606): routes send what they
        // reject to such a name, which nothing may serve.
        let lower = host.trim_end_matches('.').to_ascii_lowercase();
        if lower == "invalid" || lower.ends_with(".invalid") {
            r.error(
                &path,
                format!("{host:?} is under .invalid, which names nothing (RFC 2606)"),
            );
        }
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
            workload_entry::unix_socket(&mut r, &format!("{path}.address"), address, socket);
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
        for name in endpoint.ports.keys() {
            if !port_names.contains_key(name.as_str()) {
                r.error(
                    format!("{path}.ports.{name}"),
                    format!("no port named {name:?} in spec.ports"),
                );
            }
        }
        workload_entry::shared(&mut r, &path, endpoint);
    }

    export_to(&mut r, "spec.exportTo", &spec.export_to, true);
    r.into_errors()
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
