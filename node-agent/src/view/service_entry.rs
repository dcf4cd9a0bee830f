//! A ServiceEntry as ztunnel sees it: one Service per host, as Istio's
//! workload API publishes them, so that its addresses resolve like a
//! Service's cluster IPs (and count as registered under `REGISTRY_ONLY`).
//!
//! - `addresses` are the VIPs: single IPs (a CIDR of one address counts as
//!   that address; wider CIDRs need a DNS proxy or per-prefix matching
//!   Warren does not have, and are left out).
//! - `resolution: STATIC`: the endpoints with an IP address (names and
//!   `unix://` paths are left out), or, with a `workloadSelector`, the
//!   namespace's running pods it selects, reached as mesh workloads.
//! - `resolution: NONE` (the default): no endpoints; connections go to the
//!   address the client dialled.
//! - `DNS` and `DNS_ROUND_ROBIN`: ztunnel resolves no names, so these are
//!   taken as `NONE`: the client has resolved the host itself.
//!
//! An entry never takes over a Kubernetes Service's address or hostname, nor
//! a pod's address (ztunnel's precedence), and one without a port leaves the
//! address's other ports to the rest of the registry.
//!
//! Two entries of a namespace naming the same host: the first by name
//! publishes it (Istio merges them; Warren keeps one, predictably).

use std::{collections::BTreeMap, net::IpAddr};

use warren_api::{
    addr,
    config::{Endpoint, Service, ServicePort},
    key,
};

use super::service::{overrides, settle};
use crate::model::{
    cluster::{Pod, PodPhase},
    istio::{Resolution, ServiceEntry},
};

/// The Services `entry` (of `namespace`) publishes, one per host, given the
/// pods of its namespace (for a `workloadSelector`). Their keys are
/// [`key::service_entry`].
pub fn services<'a>(
    namespace: &str,
    entry: &ServiceEntry,
    pods: impl Iterator<Item = &'a Pod>,
) -> Vec<Service> {
    let spec = &entry.spec;
    let vips: Vec<Vec<u8>> = spec
        .addresses
        .iter()
        .filter_map(|a| single_address(a))
        .map(addr::to_bytes)
        .collect();
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
    let mut endpoints = match (resolution, &spec.workload_selector) {
        (Resolution::Static, Some(selector)) => pods
            .filter(|pod| !pod.finished() && pod.labels.matches(&selector.labels))
            .filter_map(|pod| {
                Some(Endpoint {
                    workload: key::workload(namespace, &pod.name),
                    address: addr::to_bytes(pod.addresses().first().copied()?),
                    ready: pod.phase == Some(PodPhase::Running),
                    ports: BTreeMap::new(),
                })
            })
            .collect(),
        (Resolution::Static, None) => spec
            .endpoints
            .iter()
            .filter_map(|e| {
                let ip: IpAddr = e.address.parse().ok()?;
                // Service port → this endpoint's port, by port name.
                let ports = overrides(
                    &ports,
                    ports
                        .iter()
                        .filter_map(|p| Some((p.port, *e.ports.get(&p.name)?))),
                );
                Some(Endpoint {
                    workload: String::new(),
                    address: addr::to_bytes(ip),
                    ready: true,
                    ports,
                })
            })
            .collect(),
        _ => Vec::new(),
    };
    settle(&mut endpoints);
    spec.hosts
        .iter()
        .map(|host| Service {
            name: host.clone(),
            namespace: namespace.to_owned(),
            hostname: host.clone(),
            vips: vips.clone(),
            ports: ports.clone(),
            endpoints: endpoints.clone(),
            waypoint: None,
            load_balancing: None,
            // NONE, and DNS that ztunnel cannot resolve: the client has found
            // the address already.
            passthrough: resolution != Resolution::Static,
        })
        .collect()
}

/// An address, or a CIDR that holds exactly one.
fn single_address(text: &str) -> Option<IpAddr> {
    match text.split_once('/') {
        None => text.parse().ok(),
        Some((ip, bits)) => {
            let ip: IpAddr = ip.parse().ok()?;
            let full = if ip.is_ipv4() { "32" } else { "128" };
            (bits == full).then_some(ip)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cidrs_of_one_address_are_vips() {
        assert_eq!(single_address("10.9.0.1"), "10.9.0.1".parse().ok());
        assert_eq!(single_address("10.9.0.1/32"), "10.9.0.1".parse().ok());
        assert_eq!(single_address("fd00::1/128"), "fd00::1".parse().ok());
        assert_eq!(single_address("10.9.0.0/24"), None);
        assert_eq!(single_address("api.example.com"), None);
    }
}
