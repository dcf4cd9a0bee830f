//! A ServiceEntry as ztunnel sees it: one Service per host, as Istio's
//! workload API publishes them, so that its addresses resolve like a
//! Service's cluster IPs (and count as registered under `REGISTRY_ONLY`).
//!
//! - `addresses` are the VIPs: single IPs (a CIDR of one address counts as
//!   that address), and blocks (wider CIDRs), which ztunnel matches by
//!   prefix for an address no Service has exactly. Without any address, each
//!   host has the address [`super::auto_vip`] allocated it, which ztunnel's
//!   DNS proxy answers.
//! - With a `workloadSelector` (any resolution but `NONE`): the namespace's
//!   running pods and WorkloadEntries it selects, each reached as its
//!   workload says (a WorkloadEntry with an IP address is a workload; one
//!   with a name is an endpoint by name for `DNS` and `DNS_ROUND_ROBIN`
//!   entries, and left out of `STATIC` ones).
//! - `resolution: STATIC`: the endpoints with an IP address (names and
//!   `unix://` paths are left out).
//! - `DNS` and `DNS_ROUND_ROBIN`: the endpoints, by address or by name, or
//!   without endpoints the host itself; ztunnel resolves a name when a
//!   connection picks it, and goes to one of its addresses (`DNS`) or the
//!   first (`DNS_ROUND_ROBIN`). Hosts resolving themselves cannot share the
//!   entry's addresses at L4: the first host keeps them.
//! - `resolution: NONE` (the default): no endpoints; connections go to the
//!   address the client dialled.
//!
//! An entry never takes over a Kubernetes Service's address or hostname, nor
//! a pod's address (ztunnel's precedence), and one without a port leaves the
//! address's other ports to the rest of the registry.
//!
//! `exportTo` says which namespaces' clients see the entry (ztunnel and the
//! waypoint leave it out for the others).
//!
//! An entry labelled `istio.io/use-waypoint` (or in a namespace so labelled)
//! sends its hosts' traffic through that waypoint, which the caller sets
//! ([`super::waypoint::of_entry`]).
//!
//! Two entries of a namespace naming the same host: the first by name
//! publishes it (Istio merges them; Warren keeps one, predictably).

use std::net::IpAddr;

use warren_api::{
    addr,
    config::{Cidr, Endpoint, Service, ServicePort},
    key,
};

use super::service::{overrides, settle, workload_entry_endpoint};
use crate::model::{
    cluster::{Pod, PodPhase},
    istio::{Resolution, ServiceEntry, WorkloadEntry},
};

/// The Services `entry` (of `namespace`) publishes, one per host, given the
/// pods and WorkloadEntries of its namespace (for a `workloadSelector`) and
/// the addresses allocated to hosts without any. Their keys are
/// [`key::service_entry`].
pub fn services(
    namespace: &str,
    entry: &ServiceEntry,
    pods: &[&Pod],
    workload_entries: &[&WorkloadEntry],
    auto_vip: impl Fn(&str) -> Vec<IpAddr>,
) -> Vec<Service> {
    let spec = &entry.spec;
    // A block of one address is a VIP; a wider one stays a block.
    let (vips, vip_ranges): (Vec<Cidr>, Vec<Cidr>) = spec
        .addresses
        .iter()
        .filter_map(|a| block(a))
        .partition(|c| c.prefix_len as usize == c.address.len() * 8);
    let vips: Vec<Vec<u8>> = vips.into_iter().map(|c| c.address).collect();
    // Istio allocates addresses only to entries that give none.
    let allocate = spec.addresses.is_empty();
    let ports: Vec<ServicePort> = spec
        .ports
        .iter()
        .map(|p| ServicePort {
            port: p.number,
            target_port: p.target_port.unwrap_or(p.number),
            name: p.name.clone(),
            app_protocol: p.protocol.to_ascii_lowercase(),
        })
        .collect();
    let resolution = spec.resolution.unwrap_or(Resolution::None);
    // `.` is the entry's own namespace; `*`, `~` and names stay.
    let export_to: Vec<String> = spec
        .export_to
        .iter()
        .map(|ns| if ns == "." { namespace } else { ns.as_str() }.to_owned())
        .collect();
    let by_name = matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin);
    // Endpoints shared by every host: selected pods, or listed endpoints
    // (`None`: each host resolves itself).
    let mut shared = match (resolution, &spec.workload_selector) {
        (Resolution::None, _) => Some(Vec::new()),
        (_, Some(selector)) => {
            let pods = pods
                .iter()
                .filter(|pod| !pod.finished() && pod.labels.matches(&selector.labels))
                .filter_map(|pod| {
                    Some(Endpoint {
                        workload: key::workload(namespace, &pod.name),
                        address: addr::to_bytes(pod.addresses().first().copied()?),
                        ready: pod.phase == Some(PodPhase::Running),
                        ..Endpoint::default()
                    })
                });
            let entries = workload_entries
                .iter()
                .filter(|e| e.labels().matches(&selector.labels))
                .filter_map(|e| {
                    // Service port → the entry's port, by port name.
                    let ports = overrides(
                        &ports,
                        ports
                            .iter()
                            .filter_map(|p| Some((p.port, *e.spec.ports.get(&p.name)?))),
                    );
                    if e.ip().is_some() {
                        return workload_entry_endpoint(namespace, e, ports);
                    }
                    // A name: resolved where the entry asks for it, and
                    // then it has no workload (no address to key one by).
                    let name = &e.spec.address;
                    (by_name && !name.is_empty() && !name.starts_with("unix://")).then(|| {
                        Endpoint {
                            hostname: name.clone(),
                            ready: true,
                            ports,
                            labels: e.labels().to_map().into_iter().collect(),
                            locality: e.spec.locality.clone(),
                            weight: e.spec.weight.unwrap_or(0),
                            ..Endpoint::default()
                        }
                    })
                });
            Some(pods.chain(entries).collect())
        }
        (_, None) if by_name && spec.endpoints.is_empty() => None,
        (_, None) => Some(
            spec.endpoints
                .iter()
                .filter_map(|e| {
                    // An endpoint on another network has no address here.
                    if e.address.is_empty() {
                        return None;
                    }
                    let mut endpoint = match e.address.parse::<IpAddr>() {
                        Ok(ip) => Endpoint {
                            address: addr::to_bytes(ip),
                            ..Endpoint::default()
                        },
                        // Names only where the entry asks for resolution;
                        // `unix://` paths are no TCP destination.
                        Err(_) if by_name && !e.address.starts_with("unix://") => Endpoint {
                            hostname: e.address.clone(),
                            ..Endpoint::default()
                        },
                        Err(_) => return None,
                    };
                    endpoint.ready = true;
                    endpoint.labels = e.labels.clone().into_iter().collect();
                    endpoint.locality = e.locality.clone();
                    endpoint.weight = e.weight.unwrap_or(0);
                    // Service port → this endpoint's port, by port name.
                    endpoint.ports = overrides(
                        &ports,
                        ports
                            .iter()
                            .filter_map(|p| Some((p.port, *e.ports.get(&p.name)?))),
                    );
                    Some(endpoint)
                })
                .collect(),
        ),
    };
    if let Some(endpoints) = &mut shared {
        settle(endpoints);
    }
    spec.hosts
        .iter()
        .enumerate()
        .map(|(i, host)| Service {
            name: host.clone(),
            namespace: namespace.to_owned(),
            hostname: host.clone(),
            // Hosts that each resolve themselves cannot share addresses at
            // L4 (Envoy tells them apart by Host or SNI; ztunnel and the
            // waypoint pick a Service by address): the first keeps them,
            // the others get none (give each its own entry).
            vips_allocated: allocate,
            vips: if allocate {
                auto_vip(host).into_iter().map(addr::to_bytes).collect()
            } else if shared.is_none() && i > 0 {
                Vec::new()
            } else {
                vips.clone()
            },
            // Blocks are only with `NONE` and `STATIC` resolution, where the
            // hosts share the endpoints: every host has them.
            vip_ranges: vip_ranges.clone(),
            ports: ports.clone(),
            endpoints: shared.clone().unwrap_or_else(|| {
                vec![Endpoint {
                    hostname: host.clone(),
                    ready: true,
                    ..Endpoint::default()
                }]
            }),
            waypoint: None,
            load_balancing: None,
            passthrough: resolution == Resolution::None,
            dns_first_address: resolution == Resolution::DnsRoundRobin,
            export_to: export_to.clone(),
            subject_alt_names: spec.subject_alt_names.clone(),
        })
        .collect()
}

/// An address or a CIDR, as a block (an address is a block of one).
fn block(text: &str) -> Option<Cidr> {
    let (ip, bits) = match text.split_once('/') {
        Some((ip, bits)) => (ip, Some(bits)),
        None => (text, None),
    };
    let ip: IpAddr = ip.parse().ok()?;
    let full = if ip.is_ipv4() { 32 } else { 128 };
    let prefix_len = match bits {
        Some(bits) => bits.parse().ok().filter(|b| *b <= full)?,
        None => full,
    };
    Some(Cidr {
        address: addr::to_bytes(ip),
        prefix_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cidr_of_one_address_is_a_vip_and_a_wider_one_a_block() {
        let one = |ip: &str| {
            let ip: IpAddr = ip.parse().expect("an address");
            Some(Cidr {
                address: addr::to_bytes(ip),
                prefix_len: if ip.is_ipv4() { 32 } else { 128 },
            })
        };
        assert_eq!(block("10.9.0.1"), one("10.9.0.1"));
        assert_eq!(block("10.9.0.1/32"), one("10.9.0.1"));
        assert_eq!(block("fd00::1/128"), one("fd00::1"));
        assert_eq!(block("api.example.com"), None);
        assert_eq!(block("10.9.0.0/33"), None);
        assert_eq!(
            block("10.9.0.0/24"),
            Some(Cidr {
                address: vec![10, 9, 0, 0],
                prefix_len: 24
            })
        );
        assert_eq!(block("fd00::/8").map(|c| c.prefix_len), Some(8));
    }
}
